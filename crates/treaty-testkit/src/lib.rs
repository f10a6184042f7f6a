//! # treaty-testkit
//!
//! Fixtures shared by tests and benchmarks: a chain of token transactions over the project's
//! test contracts (`test.Token` in `contracts/test-contracts`), each spending the previous
//! one's output, signed by its owner and a notary — the shape of a long-lived asset's
//! back-chain. The same chain verifies natively ([`native_contracts`]) and in the wasm sandbox
//! (its attachment is the compiled test-contracts module, [`TokenChain::attachment`]).

use std::collections::BTreeMap;

use treaty_core::{
    AttachmentConstraint, Command, KeyPair, NativeContracts, PLATFORM_VERSION, Party, PrivacySalt, SecureHash, SignatureScheme,
    SignedTransaction, StateRef, TransactionBuilder, TransactionError, TransactionState,
};
use treaty_sandbox::bundle;
pub use treaty_test_contracts::{Token, TokenCommand};

/// The token contract's name.
pub const TOKEN: &str = "test.Token";

/// The test-contracts module packed as an attachment bundle defining [`TOKEN`].
pub fn token_bundle() -> Vec<u8> {
    let manifest = bundle::Manifest {
        name: "test-contracts".into(),
        version: "1.0.0".into(),
        contracts: vec![TOKEN.into()],
        module: Some(bundle::MODULE.into()),
        data_files: vec![],
    };
    bundle::pack(&manifest, Some(treaty_contracts::TEST_CONTRACTS_WASM), &BTreeMap::new(), &[])
}

/// The token contract as a native function (no sandbox), for tests of the flows themselves.
pub fn native_contracts() -> NativeContracts {
    NativeContracts::new().with(TOKEN, treaty_test_contracts::token)
}

/// A deterministic Ed25519 key (test and benchmark identities only).
pub fn key(seed: u8) -> Result<KeyPair, String> {
    KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).map_err(|e| e.to_string())
}

/// A chain of token transactions: an issue, then moves back and forth between two holders.
pub struct TokenChain {
    /// The attachment bundle holding the token contract (see [`token_bundle`]).
    pub attachment: Vec<u8>,
    /// Its id (SHA-256 of the bundle).
    pub attachment_id: SecureHash,
    /// The transactions, oldest (the issue) first; each spends output 0 of the one before.
    pub transactions: Vec<SignedTransaction>,
    /// The notary every transaction names.
    pub notary: Party,
}

impl TokenChain {
    /// The last transaction (the tip).
    pub fn tip(&self) -> &SignedTransaction {
        &self.transactions[self.transactions.len() - 1]
    }
}

/// Builds a chain of `moves + 1` transactions: an issue of 100 tokens, then `moves` moves,
/// each signed by its owner and by the notary (as if notarised). `seed` varies the salts, so
/// two chains with different seeds share no transaction.
pub fn token_chain(moves: usize, seed: u64) -> Result<TokenChain, String> {
    let notary_key = key(3)?;
    let notary = Party { name: "O=Chain Notary,L=Zurich,C=CH".parse().map_err(|e| format!("{e}"))?, owning_key: notary_key.public() };
    token_chain_for(moves, seed, &notary, &notary_key)
}

/// [`token_chain`] under a given notary, signed with its key (a real network's notary).
pub fn token_chain_for(moves: usize, seed: u64, notary: &Party, notary_key: &KeyPair) -> Result<TokenChain, String> {
    let attachment = token_bundle();
    let attachment_id = SecureHash::sha256(&attachment);
    let (a_key, b_key) = (key(1)?, key(2)?);
    let party = |name: &str, k: &KeyPair| -> Result<Party, String> {
        Ok(Party { name: name.parse().map_err(|e| format!("{e}"))?, owning_key: k.public() })
    };
    let notary = notary.clone();
    let holders = [(party("O=Holder A,L=London,C=GB", &a_key)?, a_key), (party("O=Holder B,L=Paris,C=FR", &b_key)?, b_key)];
    let salt = |i: usize| {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        s[8..16].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        PrivacySalt(s)
    };
    let state = |owner: &Party| {
        TransactionState::new(
            &Token { owner: owner.clone().into(), amount: 100 },
            TOKEN,
            notary.clone(),
            AttachmentConstraint::Hash(attachment_id),
        )
    };
    let issue = TransactionBuilder::new(Some(notary.clone()))
        .output(state(&holders[0].0))
        .command(Command::new(&TokenCommand::Issue, vec![holders[0].0.owning_key.clone()]))
        .attachment(attachment_id)
        .build(salt(0))
        .map_err(|e| e.to_string())?;
    let sign = |wtx: treaty_core::WireTransaction, keys: &[&KeyPair]| {
        let id = wtx.id();
        SignedTransaction::new(wtx, keys.iter().map(|k| k.sign_transaction(&id, PLATFORM_VERSION)).collect())
    };
    let mut transactions = Vec::with_capacity(moves + 1);
    transactions.push(sign(issue, &[&holders[0].1]));
    for i in 0..moves {
        let (from, to) = (&holders[i % 2], &holders[(i + 1) % 2]);
        let prev = transactions[transactions.len() - 1].id();
        let wtx = TransactionBuilder::new(Some(notary.clone()))
            .input(StateRef { txhash: prev, index: 0 })
            .output(state(&to.0))
            .command(Command::new(&TokenCommand::Move, vec![from.0.owning_key.clone()]))
            .attachment(attachment_id)
            .summary("Move 100 tokens")
            .build(salt(i + 1))
            .map_err(|e: TransactionError| e.to_string())?;
        transactions.push(sign(wtx, &[&from.1, notary_key]));
    }
    Ok(TokenChain { attachment, attachment_id, transactions, notary })
}

/// A port on 127.0.0.1 nobody listens on now, outside the kernel's ephemeral range: a port
/// the kernel handed out (binding port 0) is handed out again to the next outgoing
/// connection, so a server started on it later can find it taken.
pub fn free_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let (lo, hi) = range
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999));
    let candidates: Vec<u16> = (10_000..=u16::MAX).filter(|p| *p < lo || *p > hi).collect();
    // Spread tests running at once over the candidates: a hash of time, process and a counter.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    for _ in 0..256 {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(
            &(std::time::SystemTime::now(), std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            &mut h,
        );
        let port = candidates[(std::hash::Hasher::finish(&h) % candidates.len() as u64) as usize];
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 outside the ephemeral range {lo}-{hi}")
}

/// A test's scratch directory, emptied when made and removed when the test passes. A failed
/// test's directory is kept for inspection (its path is printed), and the next run of the test
/// replaces it, so failed runs do not pile up either. Made by [`scratch!`] under cargo's
/// `target/tmp` of the calling test.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    /// A fresh, empty directory `ROOT/NAME`; `name` must be unique among the tests that may
    /// run at once.
    pub fn new(root: &std::path::Path, name: &str) -> Scratch {
        let dir = root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot make the scratch directory {}: {e}", dir.display());
        }
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept the failed test's directory {}", self.0.display());
            return;
        }
        // Nodes started in the test process may still be writing while they stop: a file made
        // during the removal makes it fail, so it is tried again.
        for _ in 0..5 {
            if std::fs::remove_dir_all(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// A [`Scratch`] directory named `name` under the calling test's `target/tmp`
/// (`CARGO_TARGET_TMPDIR`, which cargo sets for integration tests and benchmarks).
#[macro_export]
macro_rules! scratch {
    ($name:expr) => {
        $crate::Scratch::new(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")), $name)
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use treaty_core::{MapResolver, NetworkParameters, VerifyOptions, verify_transaction};

    /// The chain verifies in order, natively and in the sandbox.
    #[test]
    fn chain_verifies_natively_and_in_the_sandbox() {
        let chain = token_chain(20, 7).unwrap();
        let params = NetworkParameters::default();
        let sandbox = treaty_sandbox::Sandbox::new(params.clone()).unwrap();
        let mut resolver = MapResolver::default();
        resolver.add_attachment(treaty_sandbox::check_attachment(&chain.attachment, &params).unwrap());
        let native = native_contracts();
        for stx in &chain.transactions {
            verify_transaction(stx, &resolver, &native, &VerifyOptions::default()).unwrap();
            verify_transaction(stx, &resolver, &sandbox, &VerifyOptions::default()).unwrap();
            resolver.add_transaction(stx.tx());
        }
        assert_eq!(chain.transactions.len(), 21);
        assert_ne!(token_chain(1, 8).unwrap().tip().id(), token_chain(1, 7).unwrap().tip().id());
    }

    #[test]
    fn a_scratch_directory_is_removed_after_a_pass_and_kept_after_a_failure() {
        let root = std::env::temp_dir().join(format!("treaty-testkit-{}", std::process::id()));
        let passed = Scratch::new(&root, "passed");
        std::fs::write(passed.join("file"), "x").unwrap();
        let path = passed.to_path_buf();
        drop(passed);
        assert!(!path.exists());

        let failed = std::panic::catch_unwind(|| {
            let s = Scratch::new(&root, "failed");
            std::fs::write(s.join("file"), "x").unwrap();
            panic!("the test fails");
        });
        assert!(failed.is_err());
        assert!(root.join("failed/file").exists());
        // The next run of the failed test starts empty.
        assert!(!Scratch::new(&root, "failed").join("file").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
