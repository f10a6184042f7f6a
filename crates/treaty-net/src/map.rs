//! What the network map publishes: node infos and, alongside, the signed network parameters
//! and revocation list.

use serde::{Deserialize, Serialize};
use treaty_core::{NetworkParameters, Party, PublicKey, SecureHash, encoding};

use crate::messaging::StoreError;
use crate::pki::{self, CertRole, PkiError, RevocationList};
use crate::signed::{Signed, SignedError};

/// Kind tags for [`Signed`] values.
pub mod kinds {
    /// [`treaty_core::NetworkParameters`], signed by the network-map key.
    pub const NETWORK_PARAMETERS: &str = "network-parameters";
    /// [`super::NodeInfo`], signed by the node's identity key.
    pub const NODE_INFO: &str = "node-info";
    /// [`crate::pki::RevocationList`], signed by the network-map key.
    pub const REVOCATION_LIST: &str = "revocation-list";
}

/// How to reach a node and who it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `host:port` addresses, in order of preference (several for failover).
    pub addresses: Vec<String>,
    /// The platform version the node runs.
    pub platform_version: u32,
    /// The legal identity.
    pub legal_identity: Party,
    /// The identity certificate chain: identity, node CA, doorman (DER), up to the root.
    pub identity_chain: Vec<Vec<u8>>,
    /// Incremented whenever the node republishes.
    pub serial: u64,
}

/// Why a published node info was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeInfoError {
    /// The signature or its key is wrong.
    #[error(transparent)]
    Signature(#[from] SignedError),
    /// The certificate chain is not acceptable.
    #[error(transparent)]
    Certificate(#[from] PkiError),
    /// The certificate certifies another name or key than the node info claims.
    #[error("node info claims {claimed} but its certificate is for {certified}")]
    Mismatch {
        /// Claimed identity.
        claimed: String,
        /// Certified identity.
        certified: String,
    },
}

impl NodeInfo {
    /// The hash the map serves this node info under.
    pub fn hash(signed: &Signed) -> SecureHash {
        SecureHash::sha256(&encoding::encode(signed))
    }

    /// Verifies a signed node info: the identity chain leads to `root` (not revoked), certifies
    /// exactly the claimed name and key, and that key signed the node info.
    pub fn verify(signed: &Signed, root: &[u8], revoked: &RevocationList, now_secs: u64) -> Result<NodeInfo, NodeInfoError> {
        // Decode without trusting the signer yet: the signer must be the certified key.
        let claimed: NodeInfo = encoding::decode(&signed.raw).map_err(|e| SignedError::Decode(e.to_string()))?;
        let cert =
            pki::verify(&claimed.identity_chain, root, CertRole::LegalIdentity, Some(&claimed.legal_identity.name), revoked, now_secs)?;
        if cert.key != claimed.legal_identity.owning_key {
            return Err(NodeInfoError::Mismatch { claimed: claimed.legal_identity.owning_key.short(), certified: cert.key.short() });
        }
        Ok(signed.verify(kinds::NODE_INFO, &cert.key)?)
    }
}

/// Verifies network parameters signed by the network-map key the node trusts.
pub fn verify_parameters(signed: &Signed, trusted_map_key: &PublicKey) -> Result<NetworkParameters, SignedError> {
    signed.verify(kinds::NETWORK_PARAMETERS, trusted_map_key)
}

/// What a node last fetched from the network map, each piece as signed by its author. A node
/// keeps it in its database so it can work from it while the map is down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapSnapshot {
    /// The network parameters (kind [`kinds::NETWORK_PARAMETERS`]).
    pub parameters: Signed,
    /// The revocation list (kind [`kinds::REVOCATION_LIST`]).
    pub revocations: Signed,
    /// Every node info on the map (kind [`kinds::NODE_INFO`]).
    pub node_infos: Vec<Signed>,
    /// The map's entity tag, for a conditional re-fetch.
    pub etag: Option<String>,
    /// When it was fetched (seconds since the Unix epoch).
    pub fetched_at_secs: u64,
}

/// Where a node keeps its [`MapSnapshot`]. Implemented by `treaty-storage` (a table in the
/// node database); [`MemoryMapCache`] for tests.
pub trait MapCache: Send + Sync + 'static {
    /// The last snapshot saved, if any.
    fn load(&self) -> impl std::future::Future<Output = Result<Option<MapSnapshot>, StoreError>> + Send;
    /// Replaces the snapshot; durable when it returns Ok.
    fn save(&self, snapshot: &MapSnapshot) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

/// An in-memory [`MapCache`] (tests only).
#[derive(Default)]
pub struct MemoryMapCache(std::sync::Mutex<Option<MapSnapshot>>);

impl MapCache for MemoryMapCache {
    async fn load(&self) -> Result<Option<MapSnapshot>, StoreError> {
        Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
    async fn save(&self, snapshot: &MapSnapshot) -> Result<(), StoreError> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(snapshot.clone());
        Ok(())
    }
}
