//! Helpers shared by the Raft tests: temporary directories and requests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use treaty_core::{SecureHash, StateRef, Timestamp, X500Name};
use treaty_notary::{CommitRequest, Conflict, ConsumingTx, NotaryError};

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "treaty-raft-test-{}_{nanos}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const NOW: Timestamp = Timestamp(1_800_000_000_000_000);

pub fn alice() -> X500Name {
    "O=Alice,L=London,C=GB".parse().unwrap()
}

pub fn bob() -> X500Name {
    "O=Bob,L=Paris,C=FR".parse().unwrap()
}

/// Output `n` of an issuance transaction.
pub fn state(n: u32) -> StateRef {
    StateRef { txhash: SecureHash::sha256(b"issuance"), index: n }
}

pub fn tx(name: &str) -> SecureHash {
    SecureHash::sha256(name.as_bytes())
}

pub fn request(id: &str, inputs: &[u32], references: &[u32], requester: X500Name) -> CommitRequest {
    CommitRequest {
        tx_id: tx(id),
        inputs: inputs.iter().map(|n| state(*n)).collect(),
        references: references.iter().map(|n| state(*n)).collect(),
        time_window: None,
        requester,
    }
}

/// The conflict of a refusal that must be one.
pub fn conflict_of(result: Result<(), NotaryError>) -> Conflict {
    match result {
        Err(NotaryError::Conflict { conflict, .. }) => conflict,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

pub fn consumer(id: &str, input_index: u32, requesting_party: X500Name) -> ConsumingTx {
    ConsumingTx { tx_id: tx(id), input_index, requesting_party }
}
