//! Helpers shared by the notary's tests: temporary directories, requests, and a throw-away
//! network PKI for the tests that run real processes over mutual TLS.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use treaty_core::{KeyPair, SecureHash, SignatureScheme, StateRef, Timestamp, X500Name};
use treaty_net::pki::{self, CertRole, RevocationList, Validity};
use treaty_net::transport::TlsIdentity;
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

/// A deterministic Ed25519 key.
pub fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).unwrap()
}

fn validity() -> Validity {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    Validity::from_now(now, 1)
}

/// A throw-away network: root, doorman, and per party a node CA and TLS certificate.
pub struct Pki {
    pub root: pki::CertifiedKey,
    pub doorman: pki::CertifiedKey,
}

impl Pki {
    pub fn new() -> Pki {
        let root = pki::root_ca("O=Test Root,L=London,C=GB".parse().unwrap(), key(1), validity(), [1; 16]).unwrap();
        let doorman =
            root.issue("O=Test Doorman,L=London,C=GB".parse().unwrap(), key(2), CertRole::DoormanCa, validity(), [2; 16]).unwrap();
        Pki { root, doorman }
    }

    /// The TLS certificate chain and key of `name`.
    pub fn party(&self, name: &X500Name, seed: u8) -> (Vec<Vec<u8>>, KeyPair) {
        let node_ca = self.doorman.issue(name.clone(), key(seed), CertRole::NodeCa, validity(), [seed; 16]).unwrap();
        let tls = node_ca.issue(name.clone(), key(seed + 1), CertRole::Tls, validity(), [seed + 1; 16]).unwrap();
        (vec![tls.cert, node_ca.cert, self.doorman.cert.clone()], tls.key)
    }

    /// `name`'s TLS identity on this network.
    pub fn identity(&self, name: &X500Name, seed: u8) -> TlsIdentity {
        let (chain, key) = self.party(name, seed);
        TlsIdentity {
            chain,
            key: Arc::new(key),
            root: Arc::new(self.root.cert.clone()),
            revoked: Arc::new(RwLock::new(RevocationList::default())),
        }
    }

    /// Writes `name`'s TLS chain (`chain-N.der`) and key (`tls.key`) into `dir`; returns the
    /// chain's file names as a TOML list.
    pub fn write_party(&self, dir: &Path, name: &X500Name, seed: u8) -> String {
        std::fs::create_dir_all(dir).unwrap();
        let (chain, tls_key) = self.party(name, seed);
        let mut files = Vec::new();
        for (i, cert) in chain.iter().enumerate() {
            let f = format!("chain-{i}.der");
            std::fs::write(dir.join(&f), cert).unwrap();
            files.push(format!("\"{f}\""));
        }
        treaty_net::keystore::write_key(&dir.join("tls.key"), &tls_key).unwrap();
        format!("[{}]", files.join(", "))
    }
}

/// The network-map key of [`serve_map`]'s maps.
pub fn map_key() -> KeyPair {
    key(77)
}

/// A `[network_map]` section following the map at `url`, polled every second.
pub fn map_section(url: &str) -> String {
    format!("[network_map]\nurl = \"{url}\"\ntrusted_key = \"{}\"\npoll_seconds = 1\n", map_key().public())
}

/// A network map for `pki`'s network (no revocations yet; `treaty_netmap::revoke(dir, name)`
/// adds one), served from `dir` on `listener` until the returned sender is used or dropped.
pub fn serve_map(dir: &Path, pki: &Pki, listener: tokio::net::TcpListener) -> tokio::sync::oneshot::Sender<()> {
    use treaty_core::encoding;
    use treaty_net::map::kinds;
    use treaty_net::signed::Signed;
    let map_key = map_key();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("root.der"), &pki.root.cert).unwrap();
    treaty_net::keystore::write_key(&dir.join("network-map.key"), &map_key).unwrap();
    let params = Signed::sign(kinds::NETWORK_PARAMETERS, &treaty_core::NetworkParameters::default(), &map_key);
    std::fs::write(dir.join("network-parameters.signed"), encoding::encode(&params)).unwrap();
    let revocations = Signed::sign(kinds::REVOCATION_LIST, &RevocationList::default(), &map_key);
    std::fs::write(dir.join("revocations.signed"), encoding::encode(&revocations)).unwrap();
    let map = treaty_netmap::MapServer::load(dir).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(map.serve(listener, async move {
        let _ = stopped.await;
    }));
    stop
}
