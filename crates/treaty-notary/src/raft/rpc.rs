//! The replica protocol: requests and responses as BCS in length-delimited frames, many in
//! flight on one connection, matched by id.
//!
//! A replica opens one connection to each peer it talks to ([`Peers`]) and carries everything
//! on it: openraft's RPCs (append entries, vote, snapshot chunks) and the batches it forwards
//! to the leader. Requests sent on one connection reach the peer in the order they were sent,
//! which is what keeps a replica's batches in order at the leader. Clients (tests, a notary
//! service in another process) speak the same protocol through [`RemoteReplica`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{EmptyNode, RPCTypes};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};
use treaty_core::{Timestamp, encoding};
use treaty_net::transport::read_frame;

use super::network::{BoxStream, ReplicaNetwork};
use super::{Answers, ReplicaId, TypeConfig};
use crate::error::NotaryError;
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

/// Why a call on a link failed.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// The peer could not be reached.
    #[error("cannot connect: {0}")]
    Unreachable(String),
    /// The connection broke before the answer came.
    #[error("the connection was lost")]
    Lost,
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

/// Aborts the tasks it holds when dropped.
pub(crate) struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Writes queued frames, several per flush when they queue up.
pub(crate) async fn write_frames(
    stream: tokio::io::WriteHalf<BoxStream>,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(64 << 10, stream);
    while let Some(frame) = frames.recv().await {
        let mut next = Some(frame);
        while let Some(frame) = next {
            let len = u32::try_from(frame.len()).map_err(|_| std::io::Error::other("frame over 4 GiB"))?;
            out.write_all(&len.to_be_bytes()).await?;
            out.write_all(&frame).await?;
            next = frames.try_recv().ok();
        }
        out.flush().await?;
    }
    out.shutdown().await
}

/// The calling end of one connection: requests go out in order, answers come back in any order.
pub(crate) struct Link {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    _tasks: Tasks,
}

impl Link {
    /// Starts reading and writing `stream`.
    pub(crate) fn start(stream: BoxStream) -> Link {
        let (read, write) = tokio::io::split(stream);
        let (frames, queued) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let fail = {
            let (pending, alive) = (pending.clone(), alive.clone());
            move || {
                // Mark dead first, then drop the waiters: a sender that registers after this
                // sees the link dead (see `send`).
                alive.store(false, Ordering::SeqCst);
                pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
        };
        let writer = {
            let fail = fail.clone();
            tokio::spawn(async move {
                let _ = write_frames(write, queued).await;
                fail();
            })
        };
        let reader = {
            let pending = pending.clone();
            tokio::spawn(async move {
                let mut read = read;
                while let Ok(bytes) = read_frame(&mut read, MAX_FRAME).await {
                    let Ok((id, response)) = encoding::decode_bounded::<(u64, Response)>(&bytes, MAX_FRAME as usize) else { break };
                    if let Some(waiter) = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
                        let _ = waiter.send(response);
                    }
                }
                fail();
            })
        };
        Link { frames, pending, next_id: AtomicU64::new(0), alive, _tasks: Tasks(vec![writer, reader]) }
    }

    /// Whether the connection still works (as far as is known).
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Queues `request` (requests go out in the order of these calls) and returns where its
    /// answer will arrive.
    pub(crate) fn send(&self, request: &Request) -> Result<oneshot::Receiver<Response>, LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encoding::try_encode(&(id, request)).map_err(|_| LinkError::Lost)?;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        if !self.is_alive() || self.frames.send(frame).is_err() {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(LinkError::Lost);
        }
        Ok(rx)
    }

    /// Sends `request` and waits up to `timeout` for its answer.
    pub(crate) async fn call(&self, request: &Request, timeout: Duration) -> Result<Response, LinkError> {
        let answer = self.send(request)?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(LinkError::Lost),
            Err(_) => Err(LinkError::Timeout(timeout)),
        }
    }
}

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
        let link = Arc::new(Link::start(stream));
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
        RemoteReplica { link: Link::start(stream), timeout }
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
