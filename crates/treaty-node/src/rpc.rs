//! The node's client RPC service (`treaty_rpc::v1`, proto/treaty/rpc/v1/node.proto).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status};
use treaty_core::SecureHash;
use treaty_flows::{FlowEngine, FlowError, FlowId, FlowRecord, FlowStatus};
use treaty_netmap::NetworkView;
use treaty_rpc::v1 as pb;

use crate::config::RpcUser;

/// Who may call: the `[[rpc.users]]` of node.toml. A caller sends `treaty-user` and
/// `treaty-password` metadata; the password is checked against its Argon2id hash once and the
/// success remembered (by SHA-256 of user and password) so calls stay cheap.
pub struct RpcUsers {
    users: HashMap<String, RpcUser>,
    verified: Mutex<HashSet<SecureHash>>,
}

/// An authenticated caller (put in the request's extensions by the interceptor).
#[derive(Clone, Debug)]
pub struct Caller {
    name: String,
    permissions: Vec<String>,
}

impl RpcUsers {
    /// The configured users.
    pub fn new(users: &[RpcUser]) -> RpcUsers {
        RpcUsers { users: users.iter().map(|u| (u.name.clone(), u.clone())).collect(), verified: Mutex::new(HashSet::new()) }
    }

    /// Checks a call's credentials.
    pub fn authenticate(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Status> {
        let field = |k: &str| metadata.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (Some(name), Some(password)) = (field("treaty-user"), field("treaty-password")) else {
            return Err(Status::unauthenticated("send treaty-user and treaty-password metadata (an RPC user of the node's node.toml)"));
        };
        let refused = || Status::unauthenticated(format!("wrong user name or password for {name:?}"));
        let user = self.users.get(&name).ok_or_else(refused)?;
        let key = SecureHash::sha256(&[name.as_bytes(), &[0], password.as_bytes(), &[0], user.password_hash.as_bytes()].concat());
        let known = self.verified.lock().map(|v| v.contains(&key)).unwrap_or(false);
        if !known {
            let hash = argon2::PasswordHash::new(&user.password_hash).map_err(|_| refused())?;
            argon2::password_hash::PasswordVerifier::verify_password(&argon2::Argon2::default(), password.as_bytes(), &hash)
                .map_err(|_| refused())?;
            if let Ok(mut v) = self.verified.lock() {
                v.insert(key);
            }
        }
        Ok(Caller { name, permissions: user.permissions.clone() })
    }
}

/// Refuses the call unless its caller holds `permission`.
fn require<T>(request: &Request<T>, permission: &str) -> Result<(), Status> {
    let caller = request.extensions().get::<Caller>().ok_or_else(|| Status::unauthenticated("not authenticated"))?;
    let held =
        caller.permissions.iter().any(|p| p == "ALL" || p == permission || (p == "StartFlow.*" && permission.starts_with("StartFlow.")));
    if held { Ok(()) } else { Err(Status::permission_denied(format!("RPC user {:?} lacks permission {permission}", caller.name))) }
}

/// Serves [`pb::node_server::Node`] for one node.
pub struct RpcService {
    pub(crate) name: String,
    pub(crate) addresses: Vec<String>,
    pub(crate) flows: FlowEngine,
    pub(crate) view: watch::Receiver<Arc<NetworkView>>,
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn status(e: FlowError) -> Status {
    match &e {
        FlowError::UnknownFlow { .. } => Status::not_found(e.to_string()),
        FlowError::InvalidArguments { .. } | FlowError::Invalid(_) => Status::invalid_argument(e.to_string()),
        FlowError::Draining => Status::failed_precondition(e.to_string()),
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
    async fn record(&self, id: FlowId) -> Result<FlowRecord, Status> {
        self.flows.get(id).await.map_err(status)?.ok_or_else(|| Status::not_found(format!("no flow {id} on this node")))
    }
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
        self.record(id).await?;
        let engine = self.flows.clone();
        // Subscribe first, then read the steps already journaled: a step is journaled before
        // it is broadcast, so every step is seen once, by index.
        let mut progress = engine.progress();
        let journal = engine.journal(id).await.map_err(status)?;
        let seen = journal.len();
        let (tx, rx) = mpsc::channel(1024);
        for entry in journal {
            if let treaty_flows::Entry::Progress(step) = entry {
                let _ = tx.send(Ok(pb::FlowEvent { event: Some(pb::flow_event::Event::Progress(step)) })).await;
            }
        }
        tokio::spawn(async move {
            let wait = engine.wait(id);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    done = &mut wait => {
                        let event = match done {
                            Ok(r) => Ok(pb::FlowEvent { event: Some(pb::flow_event::Event::Finished(flow_message(&r))) }),
                            Err(e) => Err(status(e)),
                        };
                        let _ = tx.send(event).await;
                        return;
                    }
                    step = progress.recv() => match step {
                        Ok((flow, index, step)) if flow == id && index >= seen => {
                            if tx.send(Ok(pb::FlowEvent { event: Some(pb::flow_event::Event::Progress(step)) })).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
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
}
