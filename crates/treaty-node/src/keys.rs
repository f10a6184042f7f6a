//! The keys and certificates in a node directory, as `treaty network bootstrap` writes them
//! (docs/network.md): `keys/{identity,tls}.key`, `certs/{root,doorman,node-ca,identity,tls}.der`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use treaty_core::KeyPair;
use treaty_net::keystore;
use treaty_net::pki::RevocationList;
use treaty_net::transport::TlsIdentity;

/// Why the node's keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A certificate file is missing or unreadable.
    #[error("{file}: cannot read certificate: {error}")]
    Certificate {
        /// The file.
        file: String,
        /// The error.
        error: std::io::Error,
    },
    /// A key file is missing, unreadable, malformed or readable by others (the error names it).
    #[error(transparent)]
    Key(#[from] keystore::KeyStoreError),
}

/// A node's keys and certificate chains.
pub struct NodeKeys {
    /// The legal-identity key.
    pub identity: KeyPair,
    /// Identity certificate, node CA, doorman (DER).
    pub identity_chain: Vec<Vec<u8>>,
    /// The TLS key and chain, and the network root.
    pub tls: TlsIdentity,
}

fn cert(dir: &Path, stem: &str) -> Result<Vec<u8>, KeysError> {
    let path: PathBuf = dir.join("certs").join(format!("{stem}.der"));
    std::fs::read(&path).map_err(|error| KeysError::Certificate { file: path.display().to_string(), error })
}

fn key(dir: &Path, stem: &str) -> Result<KeyPair, KeysError> {
    let path: PathBuf = dir.join("keys").join(format!("{stem}.key"));
    Ok(keystore::read_key(&path)?)
}

impl NodeKeys {
    /// Loads the keys of the node in `dir`.
    pub fn load(dir: &Path) -> Result<NodeKeys, KeysError> {
        let (root, doorman, node_ca) = (cert(dir, "root")?, cert(dir, "doorman")?, cert(dir, "node-ca")?);
        let identity_chain = vec![cert(dir, "identity")?, node_ca.clone(), doorman.clone()];
        let tls = TlsIdentity {
            chain: vec![cert(dir, "tls")?, node_ca, doorman],
            key: Arc::new(key(dir, "tls")?),
            root: Arc::new(root),
            revoked: Arc::new(RwLock::new(RevocationList::default())),
        };
        Ok(NodeKeys { identity: key(dir, "identity")?, identity_chain, tls })
    }
}

/// The node's identity key, read again from `NODE_DIR/keys` (key pairs are not cloneable: a
/// second holder reads its own copy).
pub fn identity_key(dir: &Path) -> Result<KeyPair, KeysError> {
    key(dir, "identity")
}
