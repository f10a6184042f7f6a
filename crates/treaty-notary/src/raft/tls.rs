//! Replicas over mutual TLS ([`treaty_net::transport`]), and the file that configures a
//! replica process.
//!
//! Every connection is TLS 1.3 with certificates on both sides, checked against the network's
//! root. A replica dialling a peer insists that it is the X.500 name configured for that peer;
//! a replica accepting a connection learns the caller's name from its certificate: the name of
//! a configured peer makes it a [`Remote::Replica`], a configured client (a notary service) a
//! [`Remote::Client`] (which may ask for commits but never send Raft messages), and any other
//! member of the network a [`Remote::Stranger`] (status only).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use tokio::net::TcpListener;
use treaty_core::X500Name;
use treaty_net::pki::RevocationList;
use treaty_net::transport::{self, TlsIdentity};

use super::network::{BoxStream, Handshake, NetFuture, Remote, ReplicaNetwork};
use super::{RaftConfig, RaftUniquenessProvider, ReplicaId};
use crate::error::NotaryError;

/// Where a peer replica listens and the name its TLS certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPeer {
    /// `host:port`.
    pub address: String,
    /// Its legal name.
    pub name: X500Name,
}

/// A replica's network over mutual TLS on TCP.
pub struct TlsNetwork {
    identity: TlsIdentity,
    acceptor: tokio_rustls::TlsAcceptor,
    listener: TcpListener,
    peers: Arc<BTreeMap<ReplicaId, TlsPeer>>,
    clients: Arc<BTreeSet<X500Name>>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl TlsNetwork {
    /// Listens on `listen` (`host:port`; port 0 picks one) as `identity`, and reaches `peers`.
    pub async fn bind(listen: &str, identity: TlsIdentity, peers: BTreeMap<ReplicaId, TlsPeer>) -> io::Result<TlsNetwork> {
        let acceptor = transport::acceptor(&identity).map_err(other)?;
        let listener = TcpListener::bind(listen).await?;
        Ok(TlsNetwork { identity, acceptor, listener, peers: Arc::new(peers), clients: Arc::default() })
    }

    /// Lets the parties named `clients` (notary services using the cluster) ask for commits;
    /// other members of the network may only ask for status ([`Remote::Stranger`]). The
    /// replicas themselves always may.
    pub fn with_clients(mut self, clients: impl IntoIterator<Item = X500Name>) -> TlsNetwork {
        self.clients = Arc::new(clients.into_iter().collect());
        self
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl ReplicaNetwork for TlsNetwork {
    fn connect(&self, to: ReplicaId) -> NetFuture<'_, BoxStream> {
        Box::pin(async move {
            let peer = self.peers.get(&to).ok_or_else(|| other(format!("replica {to} is not configured")))?;
            let stream = transport::connect(&peer.address, &self.identity, &peer.name).await.map_err(other)?;
            let stream: BoxStream = Box::new(stream);
            Ok(stream)
        })
    }

    fn accept(&self) -> NetFuture<'_, Handshake> {
        Box::pin(async move {
            let (tcp, _) = self.listener.accept().await?;
            let (acceptor, peers, clients) = (self.acceptor.clone(), self.peers.clone(), self.clients.clone());
            let handshake: Handshake = Box::pin(async move {
                let (stream, name) = transport::accept(&acceptor, tcp).await.map_err(other)?;
                let remote = match peers.iter().find(|(_, p)| p.name == name) {
                    Some((id, _)) => Remote::Replica(*id),
                    None if clients.contains(&name) => Remote::Client,
                    None => Remote::Stranger,
                };
                let stream: BoxStream = Box::new(stream);
                Ok((stream, remote))
            });
            Ok(handshake)
        })
    }
}

/// One peer in a [`ReplicaFile`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaFilePeer {
    /// Its id.
    pub id: ReplicaId,
    /// `host:port` it listens on.
    pub address: String,
    /// The X.500 name on its TLS certificate.
    pub name: String,
}

/// The configuration file of a replica process (TOML), as read by `treaty-raft-replica`:
///
/// ```toml
/// id = 1
/// listen = "127.0.0.1:7101"
/// log = "replica-1/replica.redb"
/// root_cert = "certs/root.der"
/// tls_chain = ["replica-1/tls.der", "replica-1/node-ca.der", "certs/doorman.der"]
/// tls_key = "replica-1/tls.key"            # a treaty key file (mode 0600)
/// # optional: snapshot_after_entries = 5000, entries_kept_after_snapshot = 1000
/// clients = ["O=Notary,L=Zurich,C=CH"]      # who may ask for commits (notary services)
///
/// [network_map]                             # optional: refuse whom the map revokes
/// url = "http://127.0.0.1:10000"
/// trusted_key = "ed25519:…"                 # the network-map key, as in node.toml
/// # poll_seconds = 30, cache = "network-map.snapshot"
///
/// [[replicas]]                              # every replica, this one included
/// id = 1
/// address = "127.0.0.1:7101"
/// name = "O=Notary Replica 1,L=Zurich,C=CH"
/// ```
///
/// Relative paths are relative to the file's directory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaFile {
    /// This replica's id.
    pub id: ReplicaId,
    /// `host:port` to listen on.
    pub listen: String,
    /// Its redb file.
    pub log: PathBuf,
    /// The network root certificate (DER).
    pub root_cert: PathBuf,
    /// Its TLS certificate chain (DER files): TLS certificate, node CA, doorman.
    pub tls_chain: Vec<PathBuf>,
    /// Its TLS key (a treaty key file).
    pub tls_key: PathBuf,
    /// See [`RaftConfig::snapshot_after_entries`].
    #[serde(default)]
    pub snapshot_after_entries: Option<u64>,
    /// See [`RaftConfig::entries_kept_after_snapshot`].
    #[serde(default)]
    pub entries_kept_after_snapshot: Option<u64>,
    /// Every replica of the cluster.
    pub replicas: Vec<ReplicaFilePeer>,
    /// The X.500 names of the notary services that may ask for commits (the notary server
    /// using the cluster). Other members of the network may only ask for status.
    #[serde(default)]
    pub clients: Vec<String>,
    /// The network map to follow for the revocation list (optional): a revoked party's TLS
    /// handshake is refused, whatever its role here. Without it nobody is revoked here.
    #[serde(default)]
    pub network_map: Option<treaty_netmap::MapSection>,
    /// The directory relative paths are relative to (set by [`ReplicaFile::load`]).
    #[serde(skip)]
    pub base: PathBuf,
}

impl ReplicaFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<ReplicaFile, NotaryError> {
        let bad = |reason: String| NotaryError::Open { location: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut file: ReplicaFile = toml::from_str(&text).map_err(|e| bad(format!("not a replica configuration: {e}")))?;
        file.base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(file)
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.base.join(p) }
    }

    /// Loads the certificates and key, binds the listener and starts the replica.
    pub async fn start(&self) -> Result<(RaftUniquenessProvider, SocketAddr), NotaryError> {
        let bad = |what: &Path, reason: String| NotaryError::Open { location: what.display().to_string(), reason };
        let read = |p: &PathBuf| {
            let p = self.resolve(p);
            std::fs::read(&p).map_err(|e| bad(&p, e.to_string()))
        };
        let key_path = self.resolve(&self.tls_key);
        let identity = TlsIdentity {
            chain: self.tls_chain.iter().map(read).collect::<Result<_, _>>()?,
            key: Arc::new(treaty_net::keystore::read_key(&key_path).map_err(|e| bad(&key_path, e.to_string()))?),
            root: Arc::new(read(&self.root_cert)?),
            revoked: Arc::new(RwLock::new(RevocationList::default())),
        };
        if let Some(map) = &self.network_map {
            let follower = map.follower(&self.base, identity.root.as_ref().clone()).map_err(|reason| bad(&self.base, reason))?;
            treaty_netmap::follow_revocations(follower, identity.revoked.clone(), treaty_netmap::revocations::FIRST_LIST_WAIT).await;
        }
        let mut peers = BTreeMap::new();
        let mut members = BTreeMap::new();
        for r in &self.replicas {
            let name: X500Name = r.name.parse().map_err(|e| bad(&self.base, format!("replica {}: bad name {:?}: {e}", r.id, r.name)))?;
            members.insert(r.id, r.address.clone());
            if r.id != self.id {
                peers.insert(r.id, TlsPeer { address: r.address.clone(), name });
            }
        }
        let mut clients = Vec::new();
        for c in &self.clients {
            clients.push(c.parse::<X500Name>().map_err(|e| bad(&self.base, format!("client {c:?}: bad name: {e}")))?);
        }
        let network = TlsNetwork::bind(&self.listen, identity, peers)
            .await
            .map_err(|e| bad(Path::new(&self.listen), e.to_string()))?
            .with_clients(clients);
        let addr = network.local_addr().map_err(|e| bad(Path::new(&self.listen), e.to_string()))?;
        let mut config = RaftConfig::new(self.id, members);
        if let Some(n) = self.snapshot_after_entries {
            config.snapshot_after_entries = n;
        }
        if let Some(n) = self.entries_kept_after_snapshot {
            config.entries_kept_after_snapshot = n;
        }
        let provider = RaftUniquenessProvider::start(self.resolve(&self.log), config, Arc::new(network)).await?;
        Ok((provider, addr))
    }
}
