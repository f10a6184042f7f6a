//! # treaty-netmap
//!
//! Treaty's network map: the HTTP service that publishes the network's signed node infos,
//! network parameters and revocation list ([`server`]), the client nodes talk to it with
//! ([`client`]), and the follower a node runs to keep an up-to-date, verified view of the
//! network ([`follower`]); processes that are not nodes (notary servers, Raft replicas) follow
//! it for its revocation list only ([`revocations`]).
//!
//! Everything the map serves is signed — node infos by their nodes, the parameters, the
//! revocation list and the map document itself by the network-map key — so the service runs
//! over plain HTTP: a reader checks every document against a key it already trusts, and a
//! tampered document is refused (see `docs/network-map.md`).
//!
//! The map document ([`NetworkMap`]) lists documents by hash ([`signed_hash`]): a node fetches
//! the map, then only the documents it does not already hold.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use treaty_core::{SecureHash, encoding};
use treaty_net::keystore::KeyStoreError;
use treaty_net::messaging::StoreError;
use treaty_net::signed::Signed;

pub mod client;
pub mod follower;
pub mod revocations;
pub mod server;

pub use client::{Fetched, MapClient};
pub use follower::{Backoff, MapFollower, NetworkView, publish_until_accepted, publish_until_accepted_with};
pub use revocations::{FileMapCache, MapSection, follow_revocations};
pub use server::{MapServer, revoke, run};

/// The [`Signed`] kind of the [`NetworkMap`] document (signed by the network-map key).
pub const NETWORK_MAP_KIND: &str = "network-map";

/// The network map document: what is on the network, by hash. Served as a [`Signed`] of kind
/// [`NETWORK_MAP_KIND`] by the network-map key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkMap {
    /// The node infos on the network, each as [`signed_hash`] of its signed node info
    /// (equal to `NodeInfo::hash`), in ascending order.
    pub node_infos: Vec<SecureHash>,
    /// [`signed_hash`] of the signed network parameters in force.
    pub parameters: SecureHash,
    /// [`signed_hash`] of the signed revocation list in force.
    pub revocations: SecureHash,
}

/// The hash the map serves a signed document under: SHA-256 of the document's BCS encoding.
/// For a node info this equals `treaty_net::map::NodeInfo::hash`.
pub fn signed_hash(signed: &Signed) -> SecureHash {
    SecureHash::sha256(&encoding::encode(signed))
}

/// A clock: seconds since the Unix epoch. Injectable so tests check validity deterministically.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The real clock.
pub fn system_clock() -> Clock {
    Arc::new(now_secs)
}

/// Seconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Why a network-map operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetmapError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A key file could not be read.
    #[error(transparent)]
    Key(#[from] KeyStoreError),
    /// The network map URL is not one the client supports.
    #[error("network map URL {url:?} is not supported: {reason} (expected http://host:port)")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The map could not be reached (connection refused, timeout, connection lost).
    #[error("network map at {url} is unreachable: {reason}")]
    Unreachable {
        /// The map's base URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The map refused the request (HTTP 4xx); `message` is the map's explanation.
    #[error("network map at {url} refused the request (HTTP {status}): {message}")]
    Refused {
        /// The map's base URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The map's plain-text explanation.
        message: String,
    },
    /// The map does not hold the requested document.
    #[error("network map at {url} has no {what} {hash}")]
    NotFound {
        /// The map's base URL.
        url: String,
        /// What was asked for ("node info", "network parameters", "revocation list").
        what: &'static str,
        /// The hash asked for.
        hash: SecureHash,
    },
    /// The map failed (HTTP 5xx or an unexpected status); worth retrying.
    #[error("network map at {url} failed (HTTP {status}): {message}")]
    ServerError {
        /// The map's base URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The response body, as text.
        message: String,
    },
    /// The map sent something that does not verify or decode.
    #[error("network map at {url} sent an invalid {what}: {reason}")]
    Invalid {
        /// The map's base URL.
        url: String,
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The node's map cache failed.
    #[error("network map cache: {0}")]
    Cache(#[from] StoreError),
    /// The map server could not listen or serve.
    #[error("network map server on {addr}: {error}")]
    Serve {
        /// The address.
        addr: String,
        /// The error.
        error: std::io::Error,
    },
}

impl NetmapError {
    /// Whether retrying later may succeed: the map was unreachable or failed, as opposed to
    /// refusing the request or sending something invalid.
    pub fn is_transient(&self) -> bool {
        matches!(self, NetmapError::Unreachable { .. } | NetmapError::ServerError { .. })
    }

    pub(crate) fn io(path: &Path, error: std::io::Error) -> NetmapError {
        NetmapError::Io { path: path.display().to_string(), error }
    }

    pub(crate) fn malformed(path: &Path, reason: impl Into<String>) -> NetmapError {
        NetmapError::Malformed { path: path.display().to_string(), reason: reason.into() }
    }
}
