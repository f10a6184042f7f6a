//! The seam between a replica and the wire: [`ReplicaNetwork`] opens and accepts byte streams,
//! and everything above it (the replica protocol, openraft's RPCs, forwarding) is the same
//! whatever carries the bytes.
//!
//! Three carry them: [`TlsNetwork`](super::TlsNetwork) (mutual TLS over TCP: what replicas
//! run), [`MemoryNetwork`] (in-process pipes: tests), and the deterministic simulation's
//! `turmoil` TCP (in `tests/raft_sim.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::ReplicaId;

/// A byte stream between a replica and a peer or client (any [`crate::mux::ByteStream`]).
pub use crate::mux::ByteStream as ReplicaStream;

/// A boxed [`ReplicaStream`].
pub use crate::mux::BoxStream;

/// What the network's methods return.
pub type NetFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// The rest of an accepted connection's handshake (a TLS handshake, say), which the replica
/// runs in a task of its own so that one slow peer does not hold up accepting others.
pub type Handshake = NetFuture<'static, (BoxStream, Remote)>;

/// Who is at the other end of an accepted connection, as far as the network can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remote {
    /// Another replica of the cluster: it may send Raft messages and forward requests.
    Replica(ReplicaId),
    /// A configured client (a notary service using the cluster): it may ask for commits and
    /// status.
    Client,
    /// Any other member of the network: it may only ask for status. A commit request carries
    /// no proof of its own (the notary service checks signatures and tear-offs before it asks),
    /// so taking one from any member would let it consume anyone's states, or commit a
    /// transaction outside its time window, by writing to the log directly.
    Stranger,
}

/// How a replica reaches its peers and is reached by them and by clients.
pub trait ReplicaNetwork: Send + Sync + 'static {
    /// Opens a stream to replica `to`, which must prove to be that replica where the network
    /// can check it.
    fn connect(&self, to: ReplicaId) -> NetFuture<'_, BoxStream>;
    /// Waits for the next incoming connection and returns its handshake, still to be run.
    fn accept(&self) -> NetFuture<'_, Handshake>;
}

/// Capacity of an in-memory pipe, per direction.
const PIPE_BYTES: usize = 1 << 20;

type Inbox = mpsc::UnboundedSender<(BoxStream, Remote)>;

/// An in-process network of replicas joined by in-memory pipes (tests). Each replica takes its
/// [`MemoryNetwork::endpoint`]; clients connect with [`MemoryNetwork::connect_client`].
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inboxes: Arc<Mutex<HashMap<ReplicaId, Inbox>>>,
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    /// Replica `id`'s end of the network (replacing an earlier one: a restarted replica).
    pub fn endpoint(&self, id: ReplicaId) -> MemoryEndpoint {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inboxes.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        MemoryEndpoint { id, network: self.clone(), incoming: tokio::sync::Mutex::new(rx) }
    }

    /// Takes replica `id` off the network: connecting to it fails until it takes a new endpoint.
    pub fn disconnect(&self, id: ReplicaId) {
        self.inboxes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    fn open(&self, to: ReplicaId, from: Remote) -> io::Result<BoxStream> {
        let inboxes = self.inboxes.lock().unwrap_or_else(|p| p.into_inner());
        let inbox = inboxes
            .get(&to)
            .ok_or_else(|| io::Error::new(io::ErrorKind::ConnectionRefused, format!("replica {to} is not on the network")))?;
        let (near, far) = tokio::io::duplex(PIPE_BYTES);
        inbox
            .send((Box::new(far), from))
            .map_err(|_| io::Error::new(io::ErrorKind::ConnectionRefused, format!("replica {to} is not accepting connections")))?;
        Ok(Box::new(near))
    }

    /// A client's stream to replica `to`.
    pub fn connect_client(&self, to: ReplicaId) -> io::Result<BoxStream> {
        self.open(to, Remote::Client)
    }
}

/// One replica's end of a [`MemoryNetwork`].
pub struct MemoryEndpoint {
    id: ReplicaId,
    network: MemoryNetwork,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<(BoxStream, Remote)>>,
}

impl ReplicaNetwork for MemoryEndpoint {
    fn connect(&self, to: ReplicaId) -> NetFuture<'_, BoxStream> {
        let stream = self.network.open(to, Remote::Replica(self.id));
        Box::pin(std::future::ready(stream))
    }

    fn accept(&self) -> NetFuture<'_, Handshake> {
        Box::pin(async move {
            let next = self.incoming.lock().await.recv().await;
            let (stream, remote) = next.ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "taken off the network"))?;
            let handshake: Handshake = Box::pin(std::future::ready(Ok((stream, remote))));
            Ok(handshake)
        })
    }
}
