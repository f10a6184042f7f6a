//! The node's client RPC service (`treaty_rpc::v1`, proto/treaty/rpc/v1/node.proto) and the
//! server that runs it ([`serve`]): plain HTTP/2 or TLS ([`crate::rpc_tls`]), each call
//! authenticated by password or client certificate, and a graceful stop.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use treaty_core::SecureHash;
use treaty_flows::{FlowEngine, FlowError, FlowId, FlowRecord, FlowStatus};
use treaty_netmap::NetworkView;
use treaty_rpc::v1 as pb;
use treaty_vault::{Criteria, Vault};

use crate::config::{RpcUser, parse_fingerprint};
use crate::ledger::{ImportError, NodeLedger};
use crate::rpc_tls::RpcPeer;
use crate::rpc_vault;

/// Who may call: the `[[rpc.users]]` of node.toml. A caller proves who it is with a client
/// certificate in the TLS handshake (a user's `certificate_sha256`), or with `treaty-user`
/// and `treaty-password` metadata; the password is checked against its Argon2id hash once and
/// the success remembered (by SHA-256 of user, password and hash) so calls stay cheap.
pub struct RpcUsers {
    users: HashMap<String, RpcUser>,
    by_certificate: HashMap<SecureHash, String>,
    verified: Mutex<HashSet<SecureHash>>,
    /// Held while a password is checked against its Argon2id hash: one check at a time.
    checking: Mutex<()>,
    /// Sign-ins waiting for `checking`.
    waiting: std::sync::atomic::AtomicUsize,
}

/// Sign-ins that may wait for a password check at once; beyond, they are refused at once
/// (`UNAVAILABLE`, retry). A password not seen before costs an Argon2id check (19 MiB, tens of
/// milliseconds of CPU) and anyone who reaches the port can ask for one with any password:
/// unchecked, a few dozen a second took every core of a small node (found in review,
/// 2026-11-24). One at a time, with a short queue, such callers get at most one core's worth,
/// and clients whose password was checked once are never queued again.
pub const MAX_WAITING_SIGN_INS: usize = 16;

/// An authenticated caller (put in the request's extensions by the interceptor).
#[derive(Clone, Debug)]
pub struct Caller {
    name: String,
    permissions: Vec<String>,
}

impl RpcUsers {
    /// The configured users (checked by [`crate::config::NodeConfig::parse`]; a fingerprint
    /// that does not parse matches no certificate).
    pub fn new(users: &[RpcUser]) -> RpcUsers {
        let by_certificate =
            users.iter().filter_map(|u| Some((parse_fingerprint(u.certificate_sha256.as_deref()?).ok()?, u.name.clone()))).collect();
        RpcUsers {
            users: users.iter().map(|u| (u.name.clone(), u.clone())).collect(),
            by_certificate,
            verified: Mutex::new(HashSet::new()),
            checking: Mutex::new(()),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Checks a call's credentials: the connection's client certificate if it presented one
    /// (it must be a user's; `treaty-user`, if sent, must name that user), else the password.
    pub fn authenticate(&self, metadata: &tonic::metadata::MetadataMap, peer: Option<&RpcPeer>) -> Result<Caller, Status> {
        let field = |k: &str| metadata.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        if let Some(fingerprint) = peer.and_then(|p| p.certificate_sha256) {
            let user = self.by_certificate.get(&fingerprint).and_then(|n| self.users.get(n)).ok_or_else(|| {
                Status::unauthenticated(format!(
                    "the client certificate (SHA-256 {fingerprint}) is not an RPC user's: no [[rpc.users]] of this node has that certificate_sha256"
                ))
            })?;
            if let Some(named) = field("treaty-user").filter(|n| *n != user.name) {
                return Err(Status::unauthenticated(format!(
                    "the client certificate is RPC user {:?}'s, but the call names user {named:?}",
                    user.name
                )));
            }
            return Ok(Caller { name: user.name.clone(), permissions: user.permissions.clone() });
        }
        let (Some(name), Some(password)) = (field("treaty-user"), field("treaty-password")) else {
            return Err(Status::unauthenticated(
                "send treaty-user and treaty-password metadata, or a client certificate (an RPC user of the node's node.toml)",
            ));
        };
        let refused = || Status::unauthenticated(format!("wrong user name or password for {name:?}"));
        let user = self.users.get(&name).ok_or_else(refused)?;
        let Some(password_hash) = &user.password_hash else {
            return Err(Status::unauthenticated(format!("RPC user {name:?} signs in with a client certificate only")));
        };
        let key = SecureHash::sha256(&[name.as_bytes(), &[0], password.as_bytes(), &[0], password_hash.as_bytes()].concat());
        if !self.is_verified(&key) {
            let check = || self.check_password(&key, password_hash, &password).map_err(|e| e.unwrap_or_else(refused));
            // Interceptors are synchronous: on the node's multi-thread runtime the check (and
            // the wait for its turn) runs with this worker's other tasks handed to another.
            let multi_thread =
                tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if multi_thread { tokio::task::block_in_place(check)? } else { check()? }
        }
        Ok(Caller { name, permissions: user.permissions.clone() })
    }

    fn is_verified(&self, key: &SecureHash) -> bool {
        self.verified.lock().map(|v| v.contains(key)).unwrap_or(false)
    }

    /// Checks `password` against `password_hash`, one check at a time ([`MAX_WAITING_SIGN_INS`]).
    /// `Err(None)`: the password is wrong.
    fn check_password(&self, key: &SecureHash, password_hash: &str, password: &str) -> Result<(), Option<Status>> {
        use std::sync::atomic::Ordering;
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING_SIGN_INS {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Some(Status::unavailable(format!(
                "{MAX_WAITING_SIGN_INS} sign-ins are waiting for their password check already; retry shortly"
            ))));
        }
        let turn = self.checking.lock().unwrap_or_else(|p| p.into_inner());
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        // Checked while this one waited (the same client's other calls, say).
        if self.is_verified(key) {
            return Ok(());
        }
        let hash = argon2::PasswordHash::new(password_hash).map_err(|_| None)?;
        argon2::password_hash::PasswordVerifier::verify_password(&argon2::Argon2::default(), password.as_bytes(), &hash)
            .map_err(|_| None)?;
        if let Ok(mut v) = self.verified.lock() {
            v.insert(*key);
        }
        drop(turn);
        Ok(())
    }
}

/// Refuses the call unless its caller holds `permission`.
fn require<T>(request: &Request<T>, permission: &str) -> Result<(), Status> {
    let caller = request.extensions().get::<Caller>().ok_or_else(|| Status::unauthenticated("not authenticated"))?;
    let held =
        caller.permissions.iter().any(|p| p == "ALL" || p == permission || (p == "StartFlow.*" && permission.starts_with("StartFlow.")));
    if held { Ok(()) } else { Err(Status::permission_denied(format!("RPC user {:?} lacks permission {permission}", caller.name))) }
}

/// Attachment chunks: what the CLI sends and the node answers downloads with.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Uploads buffered at once (each holds up to the network's attachment limit in memory);
/// further uploads wait their turn.
const CONCURRENT_UPLOADS: usize = 4;

/// Events a flow watch buffers for its client.
const WATCH_BUFFER: usize = 1024;

/// How long an upload may go without a chunk before it is dropped (and its slot freed): four
/// clients that opened uploads and sent nothing held every slot for ever (found in review).
pub const UPLOAD_IDLE: Duration = Duration::from_secs(30);

/// Serves [`pb::node_server::Node`] for one node.
pub struct RpcService {
    name: String,
    addresses: Vec<String>,
    flows: FlowEngine,
    view: watch::Receiver<Arc<NetworkView>>,
    ledger: Arc<NodeLedger>,
    vault: Vault,
    uploads: Semaphore,
    stop: watch::Sender<bool>,
}

impl RpcService {
    /// The service of the node `name` (peer-to-peer `addresses`) with these parts.
    pub fn new(
        name: String,
        addresses: Vec<String>,
        flows: FlowEngine,
        view: watch::Receiver<Arc<NetworkView>>,
        ledger: Arc<NodeLedger>,
        vault: Vault,
    ) -> RpcService {
        RpcService {
            name,
            addresses,
            flows,
            view,
            ledger,
            vault,
            uploads: Semaphore::new(CONCURRENT_UPLOADS),
            stop: watch::channel(false).0,
        }
    }
}

/// A running RPC server: knows when a client asked the node to stop, and stops serving.
pub struct RpcServer {
    stop_requested: watch::Receiver<bool>,
    stop_serving: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RpcServer {
    /// Resolves once a client has called `Shutdown` and been told the node is stopping.
    pub async fn stop_requested(&self) {
        let mut requested = self.stop_requested.clone();
        if requested.wait_for(|r| *r).await.is_err() {
            // The service is gone: no request can come any more.
            std::future::pending::<()>().await;
        }
    }

    /// Stops accepting connections and lets the calls in flight finish (answers are sent),
    /// for at most `grace`; then ends whatever is left (streams such as WatchNetworkMap).
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop_serving.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }

    /// Ends the server at once.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// HTTP/2 streams (calls in progress, flow watches included) one client connection may have
/// open at once; a client past it waits for one to end (tonic's default is no limit).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Serves `service` on `listener` (TLS when given an acceptor), each call authenticated
/// against `users`, at most `max_connections` connections at once.
pub fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
    service: RpcService,
    users: RpcUsers,
) -> RpcServer {
    let stop_requested = service.stop.subscribe();
    let (stop_serving, mut serving) = watch::channel(false);
    let users = Arc::new(users);
    let task = tokio::spawn(async move {
        let incoming = crate::rpc_tls::incoming(listener, tls, max_connections);
        let node = pb::node_server::NodeServer::with_interceptor(service, move |mut request: Request<()>| {
            let caller = users.authenticate(request.metadata(), request.extensions().get::<RpcPeer>())?;
            request.extensions_mut().insert(caller);
            Ok(request)
        });
        let stop = async move {
            let _ = serving.wait_for(|s| *s).await;
        };
        let mut server = tonic::transport::Server::builder().max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
        if let Err(e) = server.add_service(node).serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!("client RPC stopped: {e}");
        }
    });
    RpcServer { stop_requested, stop_serving, task }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Sends a flow's progress step `(journal index, step)` to its watcher unless the watcher read
/// it from the journal already (index below `seen`); false once the watcher has gone.
async fn send_step(tx: &mpsc::Sender<Result<pb::FlowEvent, Status>>, seen: usize, (index, step): (usize, String)) -> bool {
    index < seen || tx.send(Ok(pb::FlowEvent { event: Some(pb::flow_event::Event::Progress(step)) })).await.is_ok()
}

fn status(e: FlowError) -> Status {
    match &e {
        FlowError::UnknownFlow { .. } => Status::not_found(e.to_string()),
        FlowError::InvalidArguments { .. } | FlowError::Invalid(_) => Status::invalid_argument(e.to_string()),
        FlowError::Draining => Status::failed_precondition(e.to_string()),
        FlowError::ClientIdTaken { .. } => Status::already_exists(e.to_string()),
        FlowError::Store(s) if s.transient => Status::unavailable(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn flow_id(s: &str) -> Result<FlowId, Status> {
    s.parse().map_err(|e: String| Status::invalid_argument(e))
}

fn text(bytes: &Option<Vec<u8>>) -> String {
    bytes.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
}

/// A flow record as the protocol shows it.
pub fn flow_message(r: &FlowRecord) -> pb::Flow {
    pb::Flow {
        flow_id: r.id.to_string(),
        name: r.name.clone(),
        version: r.version,
        status: r.status.as_str().into(),
        args_json: String::from_utf8_lossy(&r.args).into_owned(),
        result_json: text(&r.result),
        error: r.error.clone().unwrap_or_default(),
        client_id: r.client_id.clone().unwrap_or_default(),
        initiator: r.initiator.as_ref().map(|(p, _)| p.to_string()).unwrap_or_default(),
        created_at_micros: r.created_at,
        updated_at_micros: r.updated_at,
    }
}

fn map_message(view: &NetworkView) -> pb::NetworkMap {
    pb::NetworkMap {
        nodes: view
            .nodes
            .values()
            .map(|n| pb::MapNode {
                legal_name: n.legal_identity.name.to_string(),
                addresses: n.addresses.clone(),
                platform_version: n.platform_version,
                notary: view.parameters.notaries.iter().any(|x| x.identity.name == n.legal_identity.name),
            })
            .collect(),
        parameters_hash: view.parameters_hash.to_string(),
        from_cache: view.from_cache,
    }
}

impl RpcService {
    /// The well-known key of the party `name` on the network map, for criteria naming parties.
    fn party_key(&self, name: &treaty_core::X500Name) -> Option<treaty_core::PublicKey> {
        self.view.borrow().node(name).map(|n| n.legal_identity.owning_key.clone())
    }

    async fn record(&self, id: FlowId) -> Result<FlowRecord, Status> {
        self.flows.get(id).await.map_err(status)?.ok_or_else(|| Status::not_found(format!("no flow {id} on this node")))
    }

    /// Reads an upload to its end, refusing it as soon as it passes the network's limit.
    async fn receive_upload(&self, mut chunks: Streaming<pb::AttachmentChunk>) -> Result<Vec<u8>, Status> {
        let (limit, parameter) = self.ledger.attachment_limit();
        let too_large = |size: String| {
            Status::invalid_argument(format!(
                "attachment refused: {size} bytes, over the network's limit of {limit} bytes (network parameter {parameter})"
            ))
        };
        let mut bytes = Vec::new();
        let mut announced = None;
        loop {
            // An upload holds one of few slots: a client that stops sending gives it up.
            let next = tokio::time::timeout(UPLOAD_IDLE, chunks.message()).await.map_err(|_| {
                Status::deadline_exceeded(format!(
                    "attachment refused: nothing arrived for {} s after {} bytes; the upload was dropped",
                    UPLOAD_IDLE.as_secs(),
                    bytes.len()
                ))
            })?;
            let Some(chunk) = next? else { break };
            if announced.is_none() {
                announced = Some(chunk.total_size);
                if chunk.total_size > limit {
                    return Err(too_large(chunk.total_size.to_string()));
                }
            }
            if (bytes.len() + chunk.data.len()) as u64 > limit {
                return Err(too_large(format!("more than {limit}")));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        if bytes.is_empty() {
            return Err(Status::invalid_argument("attachment refused: the upload was empty"));
        }
        // A client that announced its size and sent less was cut short: storing part of a
        // file would be worse than refusing it.
        if let Some(total) = announced.filter(|t| *t != 0 && *t != bytes.len() as u64) {
            return Err(Status::invalid_argument(format!(
                "attachment refused: the upload announced {total} bytes but {} arrived",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

fn attachment_id(s: &str) -> Result<SecureHash, Status> {
    s.parse().map_err(|_| Status::invalid_argument(format!("{s:?} is not an attachment id (64 hex digits, the SHA-256 of its bytes)")))
}

#[tonic::async_trait]
impl pb::node_server::Node for RpcService {
    async fn start_flow(&self, request: Request<pb::StartFlowRequest>) -> Result<Response<pb::StartFlowResponse>, Status> {
        require(&request, &format!("StartFlow.{}", request.get_ref().name))?;
        let r = request.into_inner();
        let args: serde_json::Value = if r.args_json.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&r.args_json).map_err(|e| Status::invalid_argument(format!("args_json is not valid JSON: {e}")))?
        };
        let client_id = (!r.client_id.is_empty()).then_some(r.client_id);
        let id = self.flows.start(&r.name, args, client_id).await.map_err(status)?;
        Ok(Response::new(pb::StartFlowResponse { flow_id: id.to_string() }))
    }

    async fn get_flow(&self, request: Request<pb::FlowRef>) -> Result<Response<pb::Flow>, Status> {
        require(&request, "ReadFlows")?;
        let id = flow_id(&request.into_inner().flow_id)?;
        Ok(Response::new(flow_message(&self.record(id).await?)))
    }

    type WatchFlowStream = EventStream<pb::FlowEvent>;

    async fn watch_flow(&self, request: Request<pb::FlowRef>) -> Result<Response<Self::WatchFlowStream>, Status> {
        require(&request, "ReadFlows")?;
        let id = flow_id(&request.into_inner().flow_id)?;
        let engine = self.flows.clone();
        // A flow in flight exists; any other is looked up (unknown ids are refused).
        if !engine.in_flight(id) {
            self.record(id).await?;
        }
        // Subscribe first, then read the steps already journaled: a step is journaled before
        // it is broadcast, so every step is seen once, by index.
        let mut progress = engine.progress_of(id);
        let journal = engine.journal(id).await.map_err(status)?;
        let seen = journal.len();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let mut steps = journal.into_iter().filter_map(|e| match e {
            treaty_flows::Entry::Progress(step) => Some(Ok(pb::FlowEvent { event: Some(pb::flow_event::Event::Progress(step)) })),
            _ => None,
        });
        // The steps so far go in now, so they leave with the response's headers in one write
        // (sent from the task, each was a write of its own: 1.5 more per flow in the issue
        // benchmark); the channel is empty, so as many as it holds fit without waiting.
        for step in steps.by_ref().take(WATCH_BUFFER) {
            let _ = tx.try_send(step);
        }
        tokio::spawn(async move {
            // A longer history is sent from here: waiting for room before returning the
            // stream would block this call before the client could read anything.
            for step in steps {
                if tx.send(step).await.is_err() {
                    return;
                }
            }
            let wait = engine.wait(id);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    biased;
                    // The client went away: stop watching now, not when the flow ends (a
                    // parked flow may wait for days, and each watch polls the engine).
                    _ = tx.closed() => return,
                    step = progress.recv() => match step {
                        Ok(step) => {
                            if !send_step(&tx, seen, step).await {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    done = &mut wait => {
                        // Steps are broadcast before the flow ends: any not received yet are
                        // buffered, and go out before the end.
                        let mut rest = Vec::new();
                        loop {
                            match progress.try_recv() {
                                Ok(step) => rest.push(step),
                                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
                                Err(_) => break,
                            }
                        }
                        for step in rest {
                            if !send_step(&tx, seen, step).await {
                                return;
                            }
                        }
                        let event = match done {
                            Ok(r) => Ok(pb::FlowEvent { event: Some(pb::flow_event::Event::Finished(flow_message(&r))) }),
                            Err(e) => Err(status(e)),
                        };
                        let _ = tx.send(event).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_flows(&self, request: Request<pb::ListFlowsRequest>) -> Result<Response<pb::FlowList>, Status> {
        require(&request, "ReadFlows")?;
        let wanted = request.into_inner().status;
        let only = if wanted.is_empty() {
            None
        } else {
            Some(FlowStatus::parse(&wanted).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "status {wanted:?} is not one of RUNNABLE, HOSPITALIZED, FAILED, COMPLETED, KILLED, PAUSED"
                ))
            })?)
        };
        let flows = self.flows.list().await.map_err(status)?;
        Ok(Response::new(pb::FlowList { flows: flows.iter().filter(|f| only.is_none_or(|s| f.status == s)).map(flow_message).collect() }))
    }

    async fn kill_flow(&self, request: Request<pb::FlowRef>) -> Result<Response<pb::Flow>, Status> {
        require(&request, "KillFlow")?;
        let id = flow_id(&request.into_inner().flow_id)?;
        self.record(id).await?;
        let r = self.flows.kill(id).await.map_err(|e| match e {
            FlowError::Invalid(m) => Status::failed_precondition(m),
            other => status(other),
        })?;
        Ok(Response::new(flow_message(&r)))
    }

    async fn retry_flow(&self, request: Request<pb::FlowRef>) -> Result<Response<pb::Flow>, Status> {
        require(&request, "RetryFlow")?;
        let id = flow_id(&request.into_inner().flow_id)?;
        self.record(id).await?;
        self.flows.retry(id).await.map_err(|e| match e {
            FlowError::Invalid(m) => Status::failed_precondition(m),
            other => status(other),
        })?;
        Ok(Response::new(flow_message(&self.record(id).await?)))
    }

    async fn get_node_info(&self, request: Request<pb::Empty>) -> Result<Response<pb::NodeInfo>, Status> {
        require(&request, "ReadNetwork")?;
        let view = self.view.borrow().clone();
        Ok(Response::new(pb::NodeInfo {
            legal_name: self.name.clone(),
            addresses: self.addresses.clone(),
            platform_version: treaty_core::PLATFORM_VERSION,
            parameters_hash: view.parameters_hash.to_string(),
            flows: self.flows.flow_names(),
            draining: self.flows.is_draining(),
        }))
    }

    async fn get_network_map(&self, request: Request<pb::Empty>) -> Result<Response<pb::NetworkMap>, Status> {
        require(&request, "ReadNetwork")?;
        Ok(Response::new(map_message(&self.view.borrow())))
    }

    type WatchNetworkMapStream = EventStream<pb::NetworkMap>;

    async fn watch_network_map(&self, request: Request<pb::Empty>) -> Result<Response<Self::WatchNetworkMapStream>, Status> {
        require(&request, "ReadNetwork")?;
        let mut view = self.view.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let map = map_message(&view.borrow_and_update());
                if tx.send(Ok(map)).await.is_err() || view.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn set_draining(&self, request: Request<pb::SetDrainingRequest>) -> Result<Response<pb::DrainingStatus>, Status> {
        require(&request, "Drain")?;
        self.flows.set_draining(request.into_inner().draining);
        Ok(Response::new(pb::DrainingStatus { draining: self.flows.is_draining(), running_flows: self.flows.running() as u32 }))
    }

    async fn upload_attachment(
        &self,
        request: Request<Streaming<pb::AttachmentChunk>>,
    ) -> Result<Response<pb::UploadedAttachment>, Status> {
        require(&request, "UploadAttachment")?;
        let _turn = self.uploads.acquire().await.map_err(|_| Status::unavailable("the node is stopping"))?;
        let bytes = self.receive_upload(request.into_inner()).await?;
        let (attachment, newly_stored) = self.ledger.import_attachment(&bytes).await.map_err(|e| match e {
            ImportError::Invalid(m) => Status::invalid_argument(format!("attachment refused: {m}")),
            ImportError::Storage(s) if s.is_transient() => Status::unavailable(s.to_string()),
            ImportError::Storage(s) => Status::internal(s.to_string()),
        })?;
        tracing::info!("attachment {} uploaded ({} bytes, new: {newly_stored})", attachment.id, bytes.len());
        Ok(Response::new(pb::UploadedAttachment {
            attachment_id: attachment.id.to_string(),
            size: bytes.len() as u64,
            newly_stored,
            contracts: attachment.contracts.iter().map(ToString::to_string).collect(),
        }))
    }

    type DownloadAttachmentStream = EventStream<pb::AttachmentChunk>;

    async fn download_attachment(&self, request: Request<pb::AttachmentRef>) -> Result<Response<Self::DownloadAttachmentStream>, Status> {
        require(&request, "DownloadAttachment")?;
        let id = attachment_id(&request.into_inner().attachment_id)?;
        let bytes = self
            .ledger
            .attachment_bytes(&id)
            .await
            .map_err(|e| if e.is_transient() { Status::unavailable(e.to_string()) } else { Status::internal(e.to_string()) })?
            .ok_or_else(|| Status::not_found(format!("no attachment {id} on this node")))?;
        let total = bytes.len() as u64;
        let chunks: Vec<Result<pb::AttachmentChunk, Status>> = bytes
            .chunks(CHUNK_BYTES)
            .enumerate()
            .map(|(i, c)| Ok(pb::AttachmentChunk { data: c.to_vec(), total_size: if i == 0 { total } else { 0 } }))
            .collect();
        Ok(Response::new(Box::pin(tonic::codegen::tokio_stream::iter(chunks))))
    }

    async fn shutdown(&self, request: Request<pb::ShutdownRequest>) -> Result<Response<pb::ShutdownStatus>, Status> {
        require(&request, "Shutdown")?;
        let who = request.extensions().get::<Caller>().map(|c| c.name.clone()).unwrap_or_default();
        let r = request.into_inner();
        if r.drain {
            self.flows.set_draining(true);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(r.timeout_seconds));
            tracing::info!(
                "RPC user {who:?} asked for a drained shutdown: waiting up to {}s for {} flow(s)",
                r.timeout_seconds,
                self.flows.running()
            );
            while self.flows.running() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else {
            tracing::info!("RPC user {who:?} asked for shutdown");
        }
        let running = self.flows.running();
        let stopping = !r.drain || running == 0;
        if stopping {
            self.stop.send_replace(true);
        } else {
            tracing::info!("drained shutdown not done: {running} flow(s) still running; the node stays up, draining");
        }
        Ok(Response::new(pb::ShutdownStatus { stopping, running_flows: running as u32, draining: self.flows.is_draining() }))
    }

    type QueryVaultStream = EventStream<pb::VaultStateMessage>;

    async fn query_vault(&self, request: Request<pb::VaultQueryRequest>) -> Result<Response<Self::QueryVaultStream>, Status> {
        require(&request, "ReadVault")?;
        let (criteria, page_size) = rpc_vault::criteria(request.get_ref(), &|n| self.party_key(n))?;
        let sort = rpc_vault::sort(request.get_ref())?;
        // Checked here so that a bad page size, column or sort is the call's error, not the stream's.
        self.vault.stream(criteria.clone(), sort.clone(), page_size).map_err(rpc_vault::status)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(rpc_vault::stream_states(self.vault.clone(), criteria, sort, page_size, tx));
        Ok(Response::new(Box::pin(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn vault_balances(&self, request: Request<pb::VaultBalancesRequest>) -> Result<Response<pb::VaultBalancesResponse>, Status> {
        require(&request, "ReadVault")?;
        let balances = self.vault.balances(&Criteria::unconsumed()).await.map_err(rpc_vault::status)?;
        Ok(Response::new(pb::VaultBalancesResponse { balances: balances.iter().map(rpc_vault::balance_message).collect() }))
    }

    async fn aggregate_vault(&self, request: Request<pb::VaultAggregateRequest>) -> Result<Response<pb::VaultAggregateResponse>, Status> {
        require(&request, "ReadVault")?;
        let query = request.get_ref().query.clone().unwrap_or_default();
        let (criteria, _) = rpc_vault::criteria(&query, &|n| self.party_key(n))?;
        let group_by = rpc_vault::group_by(&request.get_ref().group_by)?;
        let rows = self.vault.aggregate(&criteria, &group_by).await.map_err(rpc_vault::status)?;
        Ok(Response::new(pb::VaultAggregateResponse { rows: rows.iter().map(rpc_vault::aggregate_message).collect() }))
    }

    type TrackVaultStream = EventStream<pb::VaultUpdateMessage>;

    async fn track_vault(&self, request: Request<pb::VaultQueryRequest>) -> Result<Response<Self::TrackVaultStream>, Status> {
        require(&request, "ReadVault")?;
        let (criteria, _) = rpc_vault::criteria(request.get_ref(), &|n| self.party_key(n))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(rpc_vault::track(self.vault.clone(), criteria, tx));
        Ok(Response::new(Box::pin(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> RpcUsers {
        let hash = crate::config::hash_password("secret").unwrap();
        RpcUsers::new(&[RpcUser {
            name: "ops".into(),
            password_hash: Some(hash),
            certificate_sha256: None,
            permissions: vec!["ALL".into()],
        }])
    }

    fn credentials(user: &str, password: &str) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("treaty-user", user.parse().unwrap());
        m.insert("treaty-password", password.parse().unwrap());
        m
    }

    /// Password checks run one at a time with a short queue: with a check in progress, a
    /// client whose password was checked before signs in at once, guesses wait their turn
    /// (and are refused as wrong), and a guess beyond the queue is refused at once.
    #[test]
    fn password_checks_queue_one_at_a_time_and_refuse_beyond_the_queue() {
        let users = Arc::new(users());
        assert!(users.authenticate(&credentials("ops", "secret"), None).is_ok());
        assert_eq!(users.authenticate(&credentials("ops", "wrong"), None).unwrap_err().code(), tonic::Code::Unauthenticated);

        let turn = users.checking.lock().unwrap();
        assert!(users.authenticate(&credentials("ops", "secret"), None).is_ok(), "a checked password waited for its turn");
        let guesses: Vec<_> = (0..MAX_WAITING_SIGN_INS)
            .map(|i| {
                let users = users.clone();
                std::thread::spawn(move || {
                    users.authenticate(&credentials("ops", &format!("guess {i}")), None).map(|_| ()).map_err(|s| s.code())
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while users.waiting.load(std::sync::atomic::Ordering::SeqCst) < MAX_WAITING_SIGN_INS {
            assert!(std::time::Instant::now() < deadline, "the guesses never queued");
            std::thread::sleep(Duration::from_millis(5));
        }
        let refused = users.authenticate(&credentials("ops", "one more"), None).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        drop(turn);
        for g in guesses {
            assert_eq!(g.join().unwrap(), Err(tonic::Code::Unauthenticated));
        }
        assert_eq!(users.waiting.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
