//! The node's keys as flows use them: its well-known identity key and its confidential keys.
//!
//! Confidential keys are derived from one seed, `NODE_DIR/keys/confidential.key` (the same
//! owner-only file format as the other keys; created at the node's first start — back it up
//! with the identity key). The database keeps which indices are taken and the certificates,
//! so after a restore every key can be derived again from the seed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use treaty_core::confidential::{IdentityCertificate, confidential_key};
use treaty_core::{KeyPair, PLATFORM_VERSION, PublicKey, SecureHash, SignatureScheme, TransactionSignature, X500Name};
use treaty_flows::{FlowError, Identities, Keys};
use treaty_net::keystore;
use treaty_netmap::NetworkView;
use treaty_storage::{ConfidentialStore, Database};

use crate::keys::KeysError;

/// Reads the confidential-identity seed of the node in `dir`, creating it on first use.
fn seed(dir: &Path) -> Result<[u8; 32], KeysError> {
    let path = dir.join("keys").join("confidential.key");
    if !path.exists() {
        let key = KeyPair::from_seed(SignatureScheme::Ed25519, rand::random())
            .map_err(|_| keystore::KeyStoreError::Malformed { path: path.display().to_string(), reason: "bad random seed" })?;
        keystore::write_key(&path, &key)?;
    }
    match keystore::read_key(&path)? {
        KeyPair::Ed25519(k) => Ok(k.to_bytes()),
        KeyPair::EcdsaP256(_) => {
            Err(keystore::KeyStoreError::Malformed { path: path.display().to_string(), reason: "the seed file must hold an Ed25519 seed" }
                .into())
        }
    }
}

/// The node's signing keys: [`Keys`] and [`Identities`] for its flows.
pub struct NodeIdentities {
    name: X500Name,
    identity: KeyPair,
    seed: [u8; 32],
    store: ConfidentialStore,
    /// This node's confidential keys, derived once.
    confidential: RwLock<HashMap<PublicKey, Arc<KeyPair>>>,
    view: watch::Receiver<Arc<NetworkView>>,
}

impl NodeIdentities {
    /// The keys of the node `name` in `dir`, with its confidential keys from `db`.
    pub(crate) async fn load(
        name: X500Name,
        dir: &Path,
        db: &Database,
        view: watch::Receiver<Arc<NetworkView>>,
    ) -> Result<NodeIdentities, crate::node::NodeError> {
        let identity = crate::keys::identity_key(dir)?;
        let seed = seed(dir)?;
        let store = db.confidential_identities();
        let mut confidential = HashMap::new();
        let own =
            store.own_keys().await.map_err(|e| crate::node::NodeError::Database { url: db.url().to_string(), message: e.to_string() })?;
        for (index, public) in own {
            let pair = confidential_key(&seed, index).map_err(|e| {
                crate::node::NodeError::Parameters(format!("cannot derive confidential key {index} from keys/confidential.key: {e}"))
            })?;
            if pair.public() != public {
                return Err(crate::node::NodeError::Parameters(format!(
                    "confidential key {index} in the database ({}) is not the one keys/confidential.key derives: \
                     the seed file does not belong to this database",
                    public.short()
                )));
            }
            confidential.insert(public, Arc::new(pair));
        }
        Ok(NodeIdentities { name, identity, seed, store, confidential: RwLock::new(confidential), view })
    }

    /// Whether `key` is one of this node's keys (identity or confidential).
    pub fn holds(&self, key: &PublicKey) -> bool {
        &self.identity.public() == key || self.confidential.read().is_ok_and(|m| m.contains_key(key))
    }

    /// This node's confidential keys.
    pub fn confidential_public_keys(&self) -> Vec<PublicKey> {
        self.confidential.read().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// How many confidential keys this node holds.
    pub fn confidential_keys(&self) -> usize {
        self.confidential.read().map(|m| m.len()).unwrap_or(0)
    }

    fn with_pair<T>(&self, key: &PublicKey, f: impl FnOnce(&KeyPair) -> T) -> Result<T, FlowError> {
        if &self.identity.public() == key {
            return Ok(f(&self.identity));
        }
        let pair = self.confidential.read().ok().and_then(|m| m.get(key).cloned());
        pair.map(|p| f(&p)).ok_or_else(|| FlowError::Invalid(format!("this node holds no key {}", key.short())))
    }
}

impl Keys for NodeIdentities {
    fn owned(&self, keys: &[PublicKey]) -> Vec<PublicKey> {
        let mut mine = vec![self.identity.public()];
        if let Ok(m) = self.confidential.read() {
            mine.extend(m.keys().cloned());
        }
        mine.into_iter().filter(|k| keys.iter().any(|required| required.contains_leaf(k))).collect()
    }

    fn sign(&self, id: &SecureHash, key: &PublicKey) -> Result<TransactionSignature, FlowError> {
        self.with_pair(key, |p| p.sign_transaction(id, PLATFORM_VERSION))
    }

    fn sign_bytes(&self, key: &PublicKey, bytes: &[u8]) -> Result<Vec<u8>, FlowError> {
        self.with_pair(key, |p| p.sign(bytes))
    }
}

impl Identities for NodeIdentities {
    async fn fresh_identity(&self) -> Result<IdentityCertificate, FlowError> {
        let issue = |index: u32| {
            let pair = confidential_key(&self.seed, index).map_err(|e| e.to_string())?;
            Ok(IdentityCertificate::issue(pair.public(), self.name.clone(), &self.identity))
        };
        let (index, certificate) = self.store.allocate(issue).await.map_err(|e| FlowError::Invalid(e.to_string()))?;
        let pair = confidential_key(&self.seed, index).map_err(|e| FlowError::Invalid(e.to_string()))?;
        if let Ok(mut m) = self.confidential.write() {
            m.insert(pair.public(), Arc::new(pair));
        }
        Ok(certificate)
    }

    async fn register(&self, certificate: &IdentityCertificate) -> Result<(), FlowError> {
        self.store.register(certificate).await.map_err(|e| FlowError::Invalid(e.to_string()))
    }

    async fn owner_of(&self, key: &PublicKey) -> Result<Option<X500Name>, FlowError> {
        if &self.identity.public() == key {
            return Ok(Some(self.name.clone()));
        }
        self.store.owner_of(key).await.map_err(|e| FlowError::Invalid(e.to_string()))
    }

    fn well_known_key(&self, party: &X500Name) -> Option<PublicKey> {
        self.view.borrow().node(party).map(|n| n.legal_identity.owning_key.clone())
    }
}
