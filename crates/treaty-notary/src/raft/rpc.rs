//! The replica protocol: requests and responses as BCS in length-delimited frames, many in
//! flight on one connection, matched by id (the framing is [`crate::mux`]'s).
//!
//! A replica opens one connection to each peer it talks to ([`Peers`]) and carries everything
//! on it: openraft's RPCs (append entries, vote, snapshot chunks) and the batches it forwards
//! to the leader. Requests sent on one connection reach the peer in the order they were sent,
//! which is what keeps a replica's batches in order at the leader. Clients (tests, a notary
//! service in another process) speak the same protocol through [`RemoteReplica`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{EmptyNode, RPCTypes};
use serde::{Deserialize, Serialize};
use treaty_core::Timestamp;

use super::network::{BoxStream, ReplicaNetwork};
use super::{Answers, ReplicaId, TypeConfig};
use crate::error::NotaryError;
use crate::mux::{self, LinkError};
use crate::provider::{CommitFuture, UniquenessProvider};
use crate::request::CommitRequest;

/// The largest frame a replica reads from another replica (an append-entries message of up
/// to [`MAX_PAYLOAD_ENTRIES`](super::MAX_PAYLOAD_ENTRIES) full batches, or a snapshot chunk).
pub const MAX_FRAME: u64 = 1 << 30;

/// The largest frame a replica reads from a client (one commit request).
pub const CLIENT_MAX_FRAME: u64 = 64 << 20;

/// A request on the replica protocol.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// openraft: replicate entries (or a heartbeat).
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// openraft: a candidate asks for a vote.
    Vote(VoteRequest<ReplicaId>),
    /// openraft: one chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A replica hands requests it accepted to the leader, in order.
    Forward(Vec<(CommitRequest, Timestamp)>),
    /// A client asks this replica to commit one request.
    Commit(CommitRequest, Timestamp),
    /// A client asks how this replica sees the cluster.
    Status,
}

/// A response on the replica protocol.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    /// To [`Request::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<ReplicaId>, RaftError<ReplicaId>>),
    /// To [`Request::Vote`].
    Vote(Result<VoteResponse<ReplicaId>, RaftError<ReplicaId>>),
    /// To [`Request::InstallSnapshot`].
    InstallSnapshot(Result<InstallSnapshotResponse<ReplicaId>, RaftError<ReplicaId, InstallSnapshotError>>),
    /// To [`Request::Forward`].
    Forward(Forwarded),
    /// To [`Request::Commit`].
    Commit(Result<(), NotaryError>),
    /// To [`Request::Status`].
    Status(ReplicaStatus),
    /// The request is not allowed from this peer (a client sending Raft messages).
    Refused(String),
}

/// The leader's answer to forwarded requests.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Forwarded {
    /// One answer per request, in order.
    Answers(Answers),
    /// This replica is not the leader; it believes the leader is the one named, if any.
    NotLeader(Option<ReplicaId>),
}

/// How one replica sees the cluster (for operators and tests).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The replica.
    pub id: ReplicaId,
    /// The leader it follows, if it knows one.
    pub leader: Option<ReplicaId>,
    /// Its current term.
    pub term: u64,
    /// The index of its last log entry.
    pub last_log_index: u64,
    /// The index of the last entry applied to its state machine.
    pub last_applied_index: u64,
    /// The index its latest snapshot covers.
    pub snapshot_index: u64,
}

/// A link to a peer or a replica: [`Request`]s out, [`Response`]s back.
pub(crate) type Link = mux::Link<Request, Response>;

/// One link per peer, opened when first needed and again after it broke.
pub(crate) struct Peers {
    network: Arc<dyn ReplicaNetwork>,
    links: Mutex<HashMap<ReplicaId, Arc<Link>>>,
    /// One dial at a time per peer.
    dialing: BTreeMap<ReplicaId, tokio::sync::Mutex<()>>,
    connect_timeout: Duration,
}

impl Peers {
    /// Links to `members` over `network`.
    pub(crate) fn new(network: Arc<dyn ReplicaNetwork>, members: impl IntoIterator<Item = ReplicaId>, connect_timeout: Duration) -> Peers {
        let dialing = members.into_iter().map(|id| (id, tokio::sync::Mutex::new(()))).collect();
        Peers { network, links: Mutex::default(), dialing, connect_timeout }
    }

    fn live(&self, to: ReplicaId) -> Option<Arc<Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).get(&to).filter(|l| l.is_alive()).cloned()
    }

    /// The link to `to`, dialling it if there is none that works.
    pub(crate) async fn link(&self, to: ReplicaId) -> Result<Arc<Link>, LinkError> {
        if let Some(link) = self.live(to) {
            return Ok(link);
        }
        let dialing = self.dialing.get(&to).ok_or_else(|| LinkError::Unreachable(format!("{to} is not a replica of this cluster")))?;
        let _one_at_a_time = dialing.lock().await;
        if let Some(link) = self.live(to) {
            return Ok(link);
        }
        let stream = match tokio::time::timeout(self.connect_timeout, self.network.connect(to)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(LinkError::Unreachable(e.to_string())),
            Err(_) => return Err(LinkError::Unreachable(format!("no connection within {:?}", self.connect_timeout))),
        };
        let link = Arc::new(Link::start(stream, MAX_FRAME));
        self.links.lock().unwrap_or_else(|p| p.into_inner()).insert(to, link.clone());
        Ok(link)
    }

    /// Calls `to` with `request`, waiting up to `timeout` for the answer.
    pub(crate) async fn call(&self, to: ReplicaId, request: &Request, timeout: Duration) -> Result<Response, LinkError> {
        let link = tokio::time::timeout(timeout, self.link(to)).await.map_err(|_| LinkError::Timeout(timeout))??;
        link.call(request, timeout).await
    }

    /// Drops every link.
    pub(crate) fn clear(&self) {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// openraft's view of the network: a client per target, all over [`Peers`].
pub(crate) struct NetworkFactory {
    /// This replica.
    pub(crate) id: ReplicaId,
    /// The links.
    pub(crate) peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: ReplicaId, _node: &EmptyNode) -> PeerClient {
        PeerClient { id: self.id, target, peers: self.peers.clone() }
    }
}

/// openraft's client for one target.
pub(crate) struct PeerClient {
    id: ReplicaId,
    target: ReplicaId,
    peers: Arc<Peers>,
}

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        request: Request,
        action: RPCTypes,
        option: &RPCOption,
    ) -> Result<Response, RPCError<ReplicaId, EmptyNode, E>> {
        let timeout = option.hard_ttl();
        self.peers.call(self.target, &request, timeout).await.map_err(|e| match e {
            LinkError::Unreachable(why) => RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why))),
            LinkError::Lost => RPCError::Network(NetworkError::new(&std::io::Error::other("the connection was lost"))),
            LinkError::Timeout(timeout) => RPCError::Timeout(Timeout { action, id: self.id, target: self.target, timeout }),
        })
    }

    fn unexpected<E: std::error::Error>(&self, response: Response) -> RPCError<ReplicaId, EmptyNode, E> {
        let why = match response {
            Response::Refused(why) => why,
            other => format!("unexpected answer {other:?}"),
        };
        RPCError::Network(NetworkError::new(&std::io::Error::other(why)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<ReplicaId>, RPCError<ReplicaId, EmptyNode, RaftError<ReplicaId>>> {
        match self.call(Request::AppendEntries(rpc), RPCTypes::AppendEntries, &option).await? {
            Response::AppendEntries(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<ReplicaId>, RPCError<ReplicaId, EmptyNode, RaftError<ReplicaId, InstallSnapshotError>>> {
        match self.call(Request::InstallSnapshot(rpc), RPCTypes::InstallSnapshot, &option).await? {
            Response::InstallSnapshot(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ReplicaId>,
        option: RPCOption,
    ) -> Result<VoteResponse<ReplicaId>, RPCError<ReplicaId, EmptyNode, RaftError<ReplicaId>>> {
        match self.call(Request::Vote(rpc), RPCTypes::Vote, &option).await? {
            Response::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(other)),
        }
    }
}

/// A client's connection to one replica, over any stream (mutual TLS, in-memory): commits go
/// through that replica, which forwards them to the leader. Implements
/// [`UniquenessProvider`], so a notary service can use a cluster in another process.
pub struct RemoteReplica {
    link: Link,
    timeout: Duration,
}

impl RemoteReplica {
    /// A client over `stream`, waiting up to `timeout` for each answer.
    pub fn new(stream: BoxStream, timeout: Duration) -> RemoteReplica {
        RemoteReplica { link: Link::start(stream, MAX_FRAME), timeout }
    }

    /// Whether the connection still works (as far as is known).
    pub fn is_connected(&self) -> bool {
        self.link.is_alive()
    }

    /// How the replica sees the cluster.
    pub async fn status(&self) -> Result<ReplicaStatus, NotaryError> {
        match self.link.call(&Request::Status, self.timeout).await.map_err(|e| self.unanswered(e))? {
            Response::Status(s) => Ok(s),
            other => Err(NotaryError::Stopped(format!("unexpected answer from the replica: {other:?}"))),
        }
    }
}

impl RemoteReplica {
    /// The connection failed or timed out: whether the request was committed is unknown, as
    /// when a cluster is unavailable (a retry gets the answer it would have had).
    fn unanswered(&self, e: LinkError) -> NotaryError {
        NotaryError::Unavailable {
            replicas: "the replica at the other end of this connection did not answer".into(),
            waited_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            reason: e.to_string(),
        }
    }
}

impl UniquenessProvider for RemoteReplica {
    fn commit(&self, request: CommitRequest, now: Timestamp) -> CommitFuture<'_> {
        Box::pin(async move {
            match self.link.call(&Request::Commit(request, now), self.timeout).await.map_err(|e| self.unanswered(e))? {
                Response::Commit(answer) => answer,
                other => Err(NotaryError::Stopped(format!("unexpected answer from the replica: {other:?}"))),
            }
        })
    }
}
