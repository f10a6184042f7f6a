//! One replica: its Raft node, the batcher that turns accepted requests into proposals (or
//! forwards them to the leader), and the server that answers peers and clients.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::Raft;
use openraft::raft::responder::{OneshotResponder, Responder};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use treaty_core::{Timestamp, encoding};
use treaty_net::transport::read_frame;

use super::network::{BoxStream, Remote, ReplicaNetwork};
use super::rpc::{CLIENT_MAX_FRAME, Forwarded, MAX_FRAME, NetworkFactory, Peers, ReplicaStatus, Request, Response};
use super::store::Store;
use super::{Answers, Proposal, RaftConfig, ReplicaId, TypeConfig};
use crate::batch::{Job, Linger, submit};
use crate::error::NotaryError;
use crate::mux::{reply, write_frames};
use crate::provider::{CommitFuture, UniquenessProvider};
use crate::request::CommitRequest;

/// How long a replica waits before trying a failed batch again.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// How long a peer may take to connect or finish its handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a replica waits for its Raft node and connections to let go of its file when closing.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the answer to a proposal will come from.
type WriteReceiver = <OneshotResponder<TypeConfig> as Responder<TypeConfig>>::Receiver;

/// A batch on its way.
enum Sent {
    /// Proposed to this replica's Raft node, which leads.
    Local(WriteReceiver),
    /// Forwarded to the leader.
    Remote(ReplicaId, oneshot::Receiver<Response>),
    /// Not sent, and why.
    Failed(String),
}

/// What a replica's tasks share.
struct Shared {
    id: ReplicaId,
    config: RaftConfig,
    raft: Raft<TypeConfig>,
    peers: Arc<Peers>,
    /// The batcher's queue; `None` once closing.
    queue: RwLock<Option<mpsc::Sender<Job>>>,
    /// Connections being served.
    connections: Mutex<JoinSet<()>>,
}

impl Shared {
    fn leader(&self) -> Option<ReplicaId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The leader, waiting up to `timeout` for one while an election is on. Waiting here, in
    /// the batcher, rather than failing and trying again later keeps batches in their order.
    async fn known_leader(&self, timeout: Duration) -> Option<ReplicaId> {
        let mut metrics = self.raft.metrics();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = metrics.borrow_and_update().current_leader {
                return Some(leader);
            }
            if !matches!(tokio::time::timeout_at(deadline, metrics.changed()).await, Ok(Ok(()))) {
                return None;
            }
        }
    }

    fn status(&self) -> ReplicaStatus {
        let m = self.raft.metrics().borrow().clone();
        ReplicaStatus {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
        }
    }

    fn queue(&self) -> Option<mpsc::Sender<Job>> {
        self.queue.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts a request on this replica's queue and waits for its answer.
    async fn submit(&self, request: CommitRequest, now: Timestamp) -> Result<(), NotaryError> {
        let queue = self.queue().ok_or_else(|| NotaryError::Stopped(format!("replica {} is closing", self.id)))?;
        submit(&queue, &self.config.uniqueness.rules, request, now).await
    }

    /// Proposes a batch (if this replica leads) or forwards it to the leader, waiting up to
    /// `wait` for a leader while none is known. Batches sent by successive calls reach the
    /// leader's log in the order of the calls, unless one fails and is sent again.
    async fn send(&self, requests: &[(CommitRequest, Timestamp)], wait: Duration) -> Sent {
        match self.known_leader(wait).await {
            Some(leader) if leader == self.id => {
                let proposal = Proposal { rules: self.config.uniqueness.rules, requests: requests.to_vec() };
                match self.raft.client_write_ff(proposal).await {
                    Ok(answer) => Sent::Local(answer),
                    Err(e) => Sent::Failed(format!("replica {}: {e}", self.id)),
                }
            }
            Some(leader) => match self.peers.link(leader).await {
                Ok(link) => match link.send(&Request::Forward(requests.to_vec())) {
                    Ok(answer) => Sent::Remote(leader, answer),
                    Err(e) => Sent::Failed(format!("leader {leader}: {e}")),
                },
                Err(e) => Sent::Failed(format!("leader {leader}: {e}")),
            },
            None => Sent::Failed("no leader is elected".into()),
        }
    }

    /// Waits for the answers to a sent batch of `n` requests, or says why there are none.
    async fn outcome(&self, sent: Sent, n: usize) -> Result<Answers, String> {
        let timeout = self.config.attempt_timeout;
        let answers = match sent {
            Sent::Failed(why) => return Err(why),
            Sent::Local(answer) => match tokio::time::timeout(timeout, answer).await {
                Err(_) => return Err(format!("replica {} did not commit it within {timeout:?}", self.id)),
                Ok(Err(_)) => return Err(format!("replica {}'s Raft node stopped", self.id)),
                Ok(Ok(Err(e))) => return Err(format!("replica {}: {e}", self.id)),
                Ok(Ok(Ok(response))) => response.data,
            },
            Sent::Remote(leader, answer) => match tokio::time::timeout(timeout, answer).await {
                Err(_) => return Err(format!("leader {leader} did not answer within {timeout:?}")),
                Ok(Err(_)) => return Err(format!("lost the connection to leader {leader}")),
                Ok(Ok(Response::Forward(Forwarded::Answers(answers)))) => answers,
                Ok(Ok(Response::Forward(Forwarded::NotLeader(_)))) => return Err(format!("replica {leader} is no longer the leader")),
                Ok(Ok(other)) => return Err(format!("unexpected answer from leader {leader}: {other:?}")),
            },
        };
        if answers.len() != n {
            return Err(format!("{} answers to {n} requests", answers.len()));
        }
        // A leader that is closing answers what it had not committed with Stopped: send those
        // again, to the next leader.
        if answers.iter().any(|a| matches!(a, Err(NotaryError::Stopped(_)))) {
            return Err("the leader is stopping".into());
        }
        Ok(answers)
    }

    /// Waits for the first attempt's answers, sending the batch again (to whichever replica
    /// leads then) until [`RaftConfig::unavailable_after`] has passed since `started`.
    async fn finish(&self, started: Instant, first: Sent, requests: &[(CommitRequest, Timestamp)]) -> Result<Answers, NotaryError> {
        let deadline = started + self.config.unavailable_after;
        let mut sent = first;
        loop {
            let why = match self.outcome(sent, requests.len()).await {
                Ok(answers) => return Ok(answers),
                Err(why) => why,
            };
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(replica = self.id, requests = requests.len(), reason = %why, "notary cluster unavailable");
                return Err(NotaryError::Unavailable {
                    replicas: format!("no majority of replicas {} committed it", self.config.member_list()),
                    waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    reason: why,
                });
            }
            tracing::debug!(replica = self.id, reason = %why, "batch not committed yet; sending it again");
            tokio::time::sleep(RETRY_PAUSE.min(deadline - now)).await;
            sent = self.send(requests, deadline.saturating_duration_since(Instant::now())).await;
        }
    }

    /// Answers one request from a peer or client; responses go to `out`.
    async fn handle(self: &Arc<Self>, id: u64, request: Request, remote: Remote, out: &mpsc::UnboundedSender<Vec<u8>>) {
        let respond = move |out: &mpsc::UnboundedSender<Vec<u8>>, response: Response| reply(out, id, &response);
        let from_replica = matches!(remote, Remote::Replica(_));
        let (me, out2) = (self.clone(), out.clone());
        match request {
            Request::AppendEntries(rpc) if from_replica => {
                tokio::spawn(async move { respond(&out2, Response::AppendEntries(me.raft.append_entries(rpc).await)) });
            }
            Request::Vote(rpc) if from_replica => {
                tokio::spawn(async move { respond(&out2, Response::Vote(me.raft.vote(rpc).await)) });
            }
            Request::InstallSnapshot(rpc) if from_replica => {
                tokio::spawn(async move { respond(&out2, Response::InstallSnapshot(me.raft.install_snapshot(rpc).await)) });
            }
            Request::Forward(requests) if from_replica => {
                let queue = self.queue().filter(|_| self.leader() == Some(self.id));
                let Some(queue) = queue else {
                    return respond(out, Response::Forward(Forwarded::NotLeader(self.leader())));
                };
                // Queued here, in the order they came, so they join this leader's batches in
                // the order the forwarding replica accepted them.
                let mut answers = Vec::with_capacity(requests.len());
                for (request, now) in requests {
                    let (reply, answer) = oneshot::channel();
                    if queue.send(Job { request, now, reply }).await.is_err() {
                        return respond(out, Response::Forward(Forwarded::NotLeader(None)));
                    }
                    answers.push(answer);
                }
                tokio::spawn(async move {
                    let mut all = Vec::with_capacity(answers.len());
                    for answer in answers {
                        all.push(answer.await.unwrap_or_else(|_| Err(NotaryError::Stopped("the leader stopped".into()))));
                    }
                    respond(&out2, Response::Forward(Forwarded::Answers(all)));
                });
            }
            Request::Commit(request, now) if !matches!(remote, Remote::Stranger) => {
                tokio::spawn(async move { respond(&out2, Response::Commit(me.submit(request, now).await)) });
            }
            Request::Commit(..) => respond(
                out,
                Response::Refused("only the cluster's replicas and its configured clients (notary services) may ask for commits".into()),
            ),
            Request::Status => respond(out, Response::Status(self.status())),
            other => {
                let kind = match other {
                    Request::AppendEntries(_) => "append-entries",
                    Request::Vote(_) => "vote",
                    Request::InstallSnapshot(_) => "snapshot",
                    _ => "forward",
                };
                respond(out, Response::Refused(format!("only replicas of the cluster may send {kind} messages")));
            }
        }
    }
}

/// Serves one connection until it closes.
async fn serve(shared: Arc<Shared>, stream: BoxStream, remote: Remote) {
    let limit = if matches!(remote, Remote::Replica(_)) { MAX_FRAME } else { CLIENT_MAX_FRAME };
    let (mut read, write) = tokio::io::split(stream);
    let (out, queued) = mpsc::unbounded_channel();
    // Ends once every response is written (all senders gone) or the connection breaks.
    tokio::spawn(write_frames(write, queued));
    while let Ok(bytes) = read_frame(&mut read, limit).await {
        let Ok((id, request)) = encoding::decode_bounded::<(u64, Request)>(&bytes, limit as usize) else {
            tracing::warn!(replica = shared.id, ?remote, "undecodable request; closing the connection");
            break;
        };
        shared.handle(id, request, remote, &out).await;
    }
}

/// Accepts connections until the network says it is gone.
async fn accept_loop(shared: Arc<Shared>, network: Arc<dyn ReplicaNetwork>) {
    loop {
        let handshake = match network.accept().await {
            Ok(h) => h,
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => return,
            Err(e) => {
                tracing::warn!(replica = shared.id, error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let me = shared.clone();
        let mut connections = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
                Ok(Ok((stream, remote))) => serve(me, stream, remote).await,
                Ok(Err(e)) => tracing::info!(replica = me.id, error = %e, "refused a connection"),
                Err(_) => tracing::info!(replica = me.id, "a connection did not complete its handshake in time"),
            }
        });
    }
}

/// Turns queued requests into batches and sends them, up to [`RaftConfig::max_in_flight`]
/// at once; ends when the queue closes and every batch is answered.
async fn batch_loop(shared: Arc<Shared>, mut queue: mpsc::Receiver<Job>) {
    let max_batch = shared.config.uniqueness.max_batch.max(1);
    let in_flight = shared.config.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(in_flight));
    let last_round_micros = Arc::new(AtomicU64::new(0));
    let mut linger = Linger::default();
    let mut jobs = Vec::with_capacity(max_batch);
    loop {
        // Waiting for a permit first lets requests pile up into the next batch meanwhile.
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        if queue.recv_many(&mut jobs, max_batch).await == 0 {
            break;
        }
        linger.wait_async(&mut queue, &mut jobs, max_batch).await;
        let size = jobs.len();
        let (requests, replies): (Vec<_>, Vec<_>) = jobs.drain(..).map(|j| ((j.request, j.now), j.reply)).unzip();
        let started = Instant::now();
        let first = shared.send(&requests, shared.config.attempt_timeout.min(shared.config.unavailable_after)).await;
        let (me, last_round) = (shared.clone(), last_round_micros.clone());
        tokio::spawn(async move {
            let result = me.finish(started, first, &requests).await;
            last_round.store(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
            match result {
                Ok(answers) => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
        linger.committed(size, Duration::from_micros(last_round_micros.load(Ordering::Relaxed)));
    }
    let _ = permits.acquire_many(u32::try_from(in_flight).unwrap_or(u32::MAX)).await;
}

/// A replica of a Raft notary cluster, and a [`UniquenessProvider`]: requests committed through
/// any replica are committed by the cluster. Start it with [`RaftUniquenessProvider::start`];
/// [`close`](Self::close) it to stop and release its file.
pub struct RaftUniquenessProvider {
    shared: Arc<Shared>,
    store: Store,
    batcher: tokio::task::JoinHandle<()>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RaftUniquenessProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RaftUniquenessProvider(replica {})", self.shared.id)
    }
}

impl RaftUniquenessProvider {
    /// Opens (creating if needed) this replica's file at `path`, starts its Raft node on
    /// `network` and starts serving peers and clients. A new cluster forms once a majority of
    /// its replicas has started. Fails with [`NotaryError::Open`] if the file cannot be used or
    /// the configuration is inconsistent.
    pub async fn start(
        path: impl AsRef<Path>,
        config: RaftConfig,
        network: Arc<dyn ReplicaNetwork>,
    ) -> Result<RaftUniquenessProvider, NotaryError> {
        let path = path.as_ref();
        let open_error = |reason: String| NotaryError::Open { location: path.display().to_string(), reason };
        if !config.members.contains_key(&config.id) {
            return Err(open_error(format!("replica {} is not one of the members {}", config.id, config.member_list())));
        }
        let raft_config = config.openraft().map_err(|e| open_error(format!("invalid Raft settings: {e}")))?;
        let verify = config.uniqueness.verify_on_open;
        let store = super::store::blocking(|| Store::open(path, verify))?;
        let peers = Arc::new(Peers::new(network.clone(), config.members.keys().copied().filter(|m| *m != config.id), CONNECT_TIMEOUT));
        let factory = NetworkFactory { id: config.id, peers: peers.clone() };
        let raft = Raft::new(config.id, Arc::new(raft_config), factory, store.clone(), store.clone())
            .await
            .map_err(|e| open_error(format!("cannot start the Raft node: {e}")))?;
        let initialised = raft.is_initialized().await.map_err(|e| open_error(format!("cannot start the Raft node: {e}")))?;
        if !initialised {
            // Every replica initialises with the same static membership; that is safe, and
            // whichever is first forms the cluster.
            let members: std::collections::BTreeMap<ReplicaId, openraft::EmptyNode> =
                config.members.keys().map(|id| (*id, openraft::EmptyNode {})).collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(replica = config.id, error = %e, "initialising the cluster (another replica may have done it)");
            }
        }
        let (queue, jobs) = mpsc::channel(config.uniqueness.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            id: config.id,
            config,
            raft,
            peers,
            queue: RwLock::new(Some(queue)),
            connections: Mutex::new(JoinSet::new()),
        });
        let batcher = tokio::spawn(batch_loop(shared.clone(), jobs));
        let acceptor = tokio::spawn(accept_loop(shared.clone(), network));
        Ok(RaftUniquenessProvider { shared, store, batcher, acceptor })
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.shared.id
    }

    /// How this replica sees the cluster.
    pub fn status(&self) -> ReplicaStatus {
        self.shared.status()
    }

    /// Waits until this replica knows a leader (up to `timeout`) and returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<ReplicaId, NotaryError> {
        self.shared.known_leader(timeout).await.ok_or_else(|| NotaryError::Unavailable {
            replicas: format!("no leader among replicas {}", self.shared.config.member_list()),
            waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            reason: "no leader was elected".into(),
        })
    }

    /// Stops accepting requests, answers those queued, stops the Raft node and the server,
    /// makes the file durable and releases it (so it can be opened again).
    pub async fn close(self) {
        let RaftUniquenessProvider { shared, store, batcher, acceptor } = self;
        shared.queue.write().unwrap_or_else(|p| p.into_inner()).take();
        let _ = batcher.await;
        acceptor.abort();
        let _ = acceptor.await;
        let mut connections = std::mem::take(&mut *shared.connections.lock().unwrap_or_else(|p| p.into_inner()));
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        if let Err(e) = shared.raft.shutdown().await {
            tracing::warn!(replica = shared.id, error = %e, "the Raft node did not stop cleanly");
        }
        shared.peers.clear();
        drop(shared);
        // openraft's state machine worker lets go of the file shortly after the node stops.
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while store.holders() > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Err(e) = store.flush() {
            tracing::error!(error = %e, "flushing the replica's file on close failed");
        }
    }
}

impl UniquenessProvider for RaftUniquenessProvider {
    fn commit(&self, request: CommitRequest, now: Timestamp) -> CommitFuture<'_> {
        Box::pin(self.shared.submit(request, now))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::Vote;
    use openraft::raft::VoteRequest;

    use super::*;
    use crate::raft::network::MemoryNetwork;
    use crate::raft::rpc::Link;

    /// A connection that is not a member's (a client's) may commit and ask for the status, but
    /// every Raft message and every forwarded batch it sends is refused, and the replica's
    /// term is untouched: a client cannot vote, append or install a snapshot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_connection_sending_raft_messages_is_refused() {
        let dir = std::env::temp_dir().join(format!("treaty-raft-client-refused-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let network = MemoryNetwork::new();
        let members: BTreeMap<ReplicaId, String> = [(1, "memory-1".to_string())].into();
        let replica = RaftUniquenessProvider::start(dir.join("replica-1.redb"), RaftConfig::new(1, members), Arc::new(network.endpoint(1)))
            .await
            .unwrap();
        replica.wait_for_leader(Duration::from_secs(10)).await.expect("a one-member cluster elects itself");
        let term_before = replica.status().term;

        let client = Link::start(network.connect_client(1).unwrap(), MAX_FRAME);
        let timeout = Duration::from_secs(5);
        let vote = Request::Vote(VoteRequest::new(Vote::new(term_before + 100, 99), None));
        match client.call(&vote, timeout).await.unwrap() {
            Response::Refused(why) => assert!(why.contains("only replicas of the cluster may send vote messages"), "{why}"),
            other => panic!("a client's vote was answered: {other:?}"),
        }
        match client.call(&Request::Forward(vec![]), timeout).await.unwrap() {
            Response::Refused(why) => assert!(why.contains("forward"), "{why}"),
            other => panic!("a client's forwarded batch was answered: {other:?}"),
        }
        assert_eq!(replica.status().term, term_before, "the client's vote request changed nothing");
        // The same connection may still ask what clients may ask.
        assert!(matches!(client.call(&Request::Status, timeout).await.unwrap(), Response::Status(_)));
        replica.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
