//! A running node: database, keys, network map follower, durable messaging over mutual TLS.
//!
//! Start-up does only local work before the node is ready (open and migrate the database,
//! load keys, verify the network parameters, bind the p2p port); the network map is followed
//! and the node's own info published in the background, so a node starts in well under a
//! second and also starts while the map is down (from its cached copy of the map).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use treaty_core::{NetworkParameters, PLATFORM_VERSION, Party, SecureHash, SignedTransaction, X500Name, encoding};
use treaty_flows::protocol::FLOW_TOPIC;
use treaty_flows::{
    EngineOptions, FlowContext, FlowEngine, FlowError, Ledger, NOTARY_PROTOCOL, ReceiveOptions, Registry, SqlFlowStore, notary_answer,
    notary_responder, receive_transaction, send_transaction, swap_identities,
};
use treaty_net::map::{MapCache, NodeInfo, kinds, verify_parameters};
use treaty_net::messaging::{InboundMessage, MessageId, Messenger, MessengerConfig, Outgoing, PeerDirectory, TlsConnector, serve_tls};
use treaty_net::signed::Signed;
use treaty_netmap::{MapClient, MapFollower, NetworkView};
use treaty_notary::{NotaryService, RedbUniquenessProvider, UniquenessConfig};
use treaty_storage::{Database, IdentityRecord, SqlMessageStore};
use treaty_vault::Vault;

use crate::config::LoadedConfig;
use crate::identities::NodeIdentities;
use crate::keys::{KeysError, NodeKeys};
use crate::ledger::NodeLedger;

/// Topic of the diagnostic ping; the receiver answers with [`PONG`].
pub const PING: &str = "treaty.diagnostics.ping";
/// Topic of the answer to a [`PING`]: the ping's message id (16 bytes) then its payload.
pub const PONG: &str = "treaty.diagnostics.pong";

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Keys or certificates.
    #[error(transparent)]
    Keys(#[from] KeysError),
    /// The database.
    #[error("database {url}: {message}")]
    Database {
        /// The configured URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The network parameters.
    #[error("network parameters: {0}")]
    Parameters(String),
    /// A listening port.
    #[error("cannot listen on {address} ({key}): {error}")]
    Listen {
        /// The configuration key.
        key: &'static str,
        /// The address.
        address: SocketAddr,
        /// The error.
        error: std::io::Error,
    },
    /// The network map.
    #[error("network map: {0}")]
    Map(String),
    /// Client RPC's TLS certificate or key.
    #[error("client RPC (rpc.tls): {0}")]
    RpcTls(#[from] crate::rpc_tls::RpcTlsError),
}

/// The messenger a node runs.
pub type NodeMessenger = Messenger<SqlMessageStore, TlsConnector>;

/// A started node.
pub struct RunningNode {
    /// Its legal name.
    pub name: X500Name,
    /// Its database.
    pub db: Database,
    /// Its messenger.
    pub messenger: NodeMessenger,
    /// The network as the node sees it.
    pub view: watch::Receiver<Arc<NetworkView>>,
    /// The network parameters it runs under.
    pub parameters: NetworkParameters,
    /// Its flow engine.
    pub flows: FlowEngine,
    /// Its ledger: transactions, attachments, contract verification.
    pub ledger: Arc<NodeLedger>,
    /// Its keys: the identity key and its confidential identities.
    pub identities: Arc<NodeIdentities>,
    /// Its vault: the states relevant to it.
    pub vault: Vault,
    /// How long start-up took.
    pub started_in: Duration,
    tasks: Vec<JoinHandle<()>>,
    rpc: Option<crate::rpc::RpcServer>,
}

impl RunningNode {
    /// Resolves when an RPC client has asked the node to stop (`Shutdown`); the process then
    /// stops it as it would on SIGTERM.
    pub async fn stop_requested(&self) {
        match &self.rpc {
            Some(rpc) => rpc.stop_requested().await,
            None => std::future::pending().await,
        }
    }

    /// Stops the node, first letting RPC calls in flight finish (at most two seconds), so a
    /// client that asked for the shutdown gets its answer. Then as [`RunningNode::stop`].
    pub async fn shutdown(mut self) {
        if let Some(rpc) = self.rpc.take() {
            rpc.stop(Duration::from_secs(2)).await;
        }
        self.stop();
    }

    /// Stops the node's tasks. Everything durable stays in the database.
    pub fn stop(self) {
        if let Some(rpc) = self.rpc {
            rpc.abort();
        }
        self.flows.shutdown();
        self.messenger.shutdown();
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Finds peers in the node's view of the network map; revoked peers are not admitted.
struct ViewDirectory(watch::Receiver<Arc<NetworkView>>);

impl PeerDirectory for ViewDirectory {
    fn addresses(&self, peer: &X500Name) -> Vec<String> {
        self.0.borrow().addresses(peer).map(<[String]>::to_vec).unwrap_or_default()
    }
    fn admits(&self, peer: &X500Name) -> bool {
        !self.0.borrow().revocations.names.contains(peer)
    }
}

/// The network parameters: the node directory's copy (written by bootstrap), else the cached
/// map's; either must be signed by the trusted network-map key.
async fn parameters(config: &LoadedConfig, db: &Database) -> Result<(Signed, NetworkParameters), NodeError> {
    let file = config.dir.join("network-parameters.signed");
    let signed = match std::fs::read(&file) {
        Ok(bytes) => encoding::decode::<Signed>(&bytes).map_err(|e| NodeError::Parameters(format!("{}: {e}", file.display())))?,
        Err(_) => match db.network_map().load().await.map_err(|e| NodeError::Parameters(e.to_string()))? {
            Some(snapshot) => snapshot.parameters,
            None => {
                return Err(NodeError::Parameters(format!(
                    "{} is missing and no network map has been cached yet; copy the network's network-parameters.signed there",
                    file.display()
                )));
            }
        },
    };
    let params = verify_parameters(&signed, &config.network_map_key)
        .map_err(|e| NodeError::Parameters(format!("{}: {e} (network_map.trusted_key)", file.display())))?;
    if params.minimum_platform_version > PLATFORM_VERSION {
        return Err(NodeError::Parameters(format!(
            "the network requires platform version {} but this node runs {PLATFORM_VERSION}; upgrade Treaty",
            params.minimum_platform_version
        )));
    }
    Ok((signed, params))
}

/// Starts a node. Returns once it accepts connections; incoming application messages other
/// than diagnostics are left in the inbox for the flow engine.
pub async fn start(config: &LoadedConfig) -> Result<RunningNode, NodeError> {
    start_with(config, |_, _| {}).await
}

/// What flows registered by an application can use: the node's ledger, its keys and its
/// well-known identity.
#[derive(Clone)]
pub struct NodeServices {
    /// Transactions, attachments, contract verification.
    pub ledger: Arc<NodeLedger>,
    /// The keys the node signs with: its identity key and its confidential keys.
    pub keys: Arc<NodeIdentities>,
    /// The node's well-known identity.
    pub identity: Party,
    /// Its vault: register the app's state schemas here; query, lock and select coins.
    pub vault: Vault,
    /// The network as the node sees it (parties, notaries, addresses), kept current.
    pub view: watch::Receiver<Arc<NetworkView>>,
    /// The network parameters the node runs under.
    pub parameters: NetworkParameters,
    /// The node's directory (where apps keep their own configuration files).
    pub dir: std::path::PathBuf,
    /// The node's `[coins]` section (background merging and splitting of fungible states), for
    /// the app whose states they are to act on; `None`: off.
    pub coins: Option<crate::config::CoinsConfig>,
    /// Background tasks apps asked for ([`NodeServices::spawn`]), started once the node is up.
    background: Arc<std::sync::Mutex<Vec<AppTask>>>,
}

/// An app's background task, given the node's flow engine when it starts.
type AppTask = Box<dyn FnOnce(FlowEngine) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

impl NodeServices {
    /// Runs `task` in the background while the node runs, given the node's flow engine (to start
    /// flows, which are durable and listed like any other). It starts once the node is up — its
    /// flows resumed and the locks of flows that are gone released — and is aborted when the
    /// node stops, so it must keep anything that has to survive in flows or the database.
    /// Call it while registering (in `start_with`'s `apps`): a task added after start-up never runs.
    pub fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(FlowEngine) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let boxed: AppTask = Box::new(move |flows| Box::pin(task(flows)));
        self.background.lock().unwrap_or_else(|p| p.into_inner()).push(boxed);
    }
}

/// Starts a node with application flows: `apps` registers them, given the node's services.
pub async fn start_with(config: &LoadedConfig, apps: impl FnOnce(&mut Registry, &NodeServices)) -> Result<RunningNode, NodeError> {
    let began = Instant::now();
    let keys = NodeKeys::load(&config.dir)?;
    let url = config.raw.database.url.clone();
    let db = Database::open(&url, &config.dir).await.map_err(|e| NodeError::Database { url: url.clone(), message: e.to_string() })?;
    let (signed_parameters, parameters) = parameters(config, &db).await?;
    let listener =
        TcpListener::bind(config.p2p).await.map_err(|error| NodeError::Listen { key: "p2p.listen", address: config.p2p, error })?;
    let rpc_listener =
        TcpListener::bind(config.rpc).await.map_err(|error| NodeError::Listen { key: "rpc.listen", address: config.rpc, error })?;
    let metrics_listener = match config.metrics {
        Some(address) => {
            Some(TcpListener::bind(address).await.map_err(|error| NodeError::Listen { key: "metrics.listen", address, error })?)
        }
        None => None,
    };
    let rpc_tls = if config.rpc_tls {
        if crate::rpc_tls::ensure_certificate(&config.dir, &config.legal_name, config.rpc)? {
            tracing::info!("issued the RPC certificate {} from the node CA", config.dir.join(crate::rpc_tls::CERTIFICATE).display());
        }
        Some(crate::rpc_tls::acceptor(&config.dir)?)
    } else {
        None
    };

    let client = MapClient::new(&config.raw.network_map.url).map_err(|e| NodeError::Map(e.to_string()))?;
    let (view, follower) = follow_map(config, &keys, &db, &client, &signed_parameters, &parameters).await;
    *keys.tls.revoked.write().unwrap_or_else(|p| p.into_inner()) = view.borrow().revocations.clone();

    let limit = parameters.max_message_size;
    let config_m = MessengerConfig { max_message_size: limit, ..MessengerConfig::default() };
    let directory: Arc<dyn PeerDirectory> = Arc::new(ViewDirectory(view.clone()));
    let (messenger, inbox) =
        Messenger::new(config.legal_name.clone(), Arc::new(db.messages()), TlsConnector::new(keys.tls.clone(), limit), directory, config_m);

    let mut tasks = vec![follower];
    tasks.push(tokio::spawn(follow_view(view.clone(), keys.tls.revoked.clone(), db.clone())));
    let flow_store = SqlFlowStore::open(&db).await.map_err(|e| NodeError::Database { url: url.clone(), message: e.to_string() })?;
    let ledger = Arc::new(NodeLedger::new(db.clone(), parameters.clone()));
    let identities = Arc::new(NodeIdentities::load(config.legal_name.clone(), &config.dir, &db, view.clone()).await?);
    let vault = Vault::open(&db).await.map_err(|e| NodeError::Database { url: url.clone(), message: e.to_string() })?;
    {
        let ids = identities.clone();
        ledger.attach_vault(vault.clone(), Arc::new(move |k: &treaty_core::PublicKey| ids.holds(k)));
    }
    let background = Arc::new(std::sync::Mutex::new(Vec::new()));
    let flows = FlowEngine::new(
        config.legal_name.clone(),
        Arc::new(flow_store),
        Arc::new(messenger.clone()),
        {
            let services = NodeServices {
                ledger: ledger.clone(),
                keys: identities.clone(),
                identity: Party { name: config.legal_name.clone(), owning_key: keys.identity.public() },
                vault: vault.clone(),
                view: view.clone(),
                parameters: parameters.clone(),
                dir: config.dir.clone(),
                coins: config.raw.coins.clone(),
                background: background.clone(),
            };
            let mut r = registry(ledger.clone(), identities.clone());
            notary_change_flows(&mut r, &services);
            if config.raw.notary.is_some() {
                notary_service(config, &keys, &view, &ledger, &mut r).await?;
            }
            apps(&mut r, &services);
            r
        },
        EngineOptions::default(),
    );
    // Flows resume from their journals before messages are redelivered, so those find them.
    let resumed = flows.resume().await.map_err(|e| NodeError::Database { url: url.clone(), message: e.to_string() })?;
    if resumed > 0 {
        tracing::info!("resumed {resumed} flow(s) from their journals");
    }
    match release_orphan_locks(&vault, &flows).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("released {n} vault state(s) locked by flows that are no longer running"),
        Err(e) => tracing::warn!("could not release the locks of flows that ended: {e}"),
    }
    tasks.push(tokio::spawn(dispatch(messenger.clone(), flows.clone(), inbox)));
    // Messages stored but not processed before a restart are handed over before new ones can
    // arrive: start the messenger, then accept connections.
    messenger.start().await.map_err(|e| NodeError::Database { url, message: e.to_string() })?;
    // Activities that fell due while the node was down start now, exactly once.
    tasks.push(tokio::spawn(crate::scheduler::run(vault.clone(), flows.clone())));
    // Apps' background tasks start now: after the resumed flows took their locks back and the
    // locks of flows that are gone were released, so what they see in the vault is current.
    let apps_tasks: Vec<AppTask> = std::mem::take(&mut *background.lock().unwrap_or_else(|p| p.into_inner()));
    for task in apps_tasks {
        tasks.push(tokio::spawn(task(flows.clone())));
    }
    let server = messenger.clone();
    let tls = keys.tls.clone();
    tasks.push(tokio::spawn(async move {
        let served = serve_tls(listener, &tls, limit, move |link, peer| {
            let server = server.clone();
            async move { server.serve_link(link, peer).await }
        })
        .await;
        if let Err(e) = served {
            tracing::error!("p2p listener stopped: {e}");
        }
    }));

    let service = crate::rpc::RpcService::new(
        config.legal_name.to_string(),
        vec![config.raw.p2p.listen.clone()],
        flows.clone(),
        view.clone(),
        ledger.clone(),
        vault.clone(),
    );
    let rpc =
        crate::rpc::serve(rpc_listener, rpc_tls, config.raw.rpc.max_connections, service, crate::rpc::RpcUsers::new(&config.raw.rpc.users));
    if let Some(listener) = metrics_listener {
        if let Ok(at) = listener.local_addr() {
            tracing::info!("metrics at http://{at}/metrics");
        }
        let sources = crate::metrics::Sources {
            name: config.legal_name.to_string(),
            started: began,
            flows: flows.clone(),
            messenger: messenger.clone(),
        };
        tasks.push(tokio::spawn(crate::metrics::serve(listener, std::sync::Arc::new(sources))));
    }

    let info = NodeInfo {
        addresses: vec![config.raw.p2p.listen.clone()],
        platform_version: PLATFORM_VERSION,
        legal_identity: Party { name: config.legal_name.clone(), owning_key: keys.identity.public() },
        identity_chain: keys.identity_chain.clone(),
        // Later publications must win: milliseconds since the epoch only grow.
        serial: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
    };
    let signed = Signed::sign(kinds::NODE_INFO, &info, &keys.identity);
    let publishing = treaty_netmap::publish_until_accepted(client, signed);
    tasks.push(tokio::spawn(async move {
        match publishing.await {
            Ok(Ok(())) => tracing::info!("node info published to the network map"),
            Ok(Err(e)) => tracing::error!("the network map refused this node's info: {e}"),
            Err(_) => {}
        }
    }));
    Ok(RunningNode {
        name: config.legal_name.clone(),
        db,
        messenger,
        view,
        parameters,
        flows,
        ledger,
        identities,
        vault,
        started_in: began.elapsed(),
        tasks,
        rpc: Some(rpc),
    })
}

/// Follows the network map in the background. The view starts from the node's verified local
/// parameters with no peers; the follower replaces it with the cached map at once when there
/// is one (waited for briefly, so revocations apply before the first connection) and with the
/// map's own when it answers. The node never waits for the map to be up.
async fn follow_map(
    config: &LoadedConfig,
    keys: &NodeKeys,
    db: &Database,
    client: &MapClient,
    signed_parameters: &Signed,
    parameters: &NetworkParameters,
) -> (watch::Receiver<Arc<NetworkView>>, JoinHandle<()>) {
    let cached = matches!(db.network_map().load().await, Ok(Some(_)));
    let initial = NetworkView {
        parameters: parameters.clone(),
        parameters_hash: parameters.hash(),
        parameters_document: treaty_netmap::signed_hash(signed_parameters),
        revocations: Default::default(),
        nodes: Default::default(),
        from_cache: true,
        fetched_at_secs: 0,
    };
    let (tx, mut rx) = watch::channel(Arc::new(initial));
    let follower = MapFollower::new(
        client.clone(),
        config.network_map_key.clone(),
        keys.tls.root.as_ref().clone(),
        Arc::new(db.network_map()),
        config.poll_interval,
    );
    let task = tokio::spawn(async move {
        let mut views = match follower.start().await {
            Ok((views, _task)) => views,
            Err(e) => {
                tracing::error!("cannot follow the network map: {e}");
                return;
            }
        };
        loop {
            let view = views.borrow_and_update().clone();
            if tx.send(view).is_err() {
                return;
            }
            if views.changed().await.is_err() {
                return;
            }
        }
    });
    if cached {
        let _ = tokio::time::timeout(Duration::from_millis(300), rx.changed()).await;
        rx.borrow_and_update();
    }
    (rx, task)
}

/// Keeps the TLS verifiers' revocation list in step with the network map, and the identity
/// table (well-known parties with their certificate chains, for flows to look up) too.
async fn follow_view(
    mut view: watch::Receiver<Arc<NetworkView>>,
    revoked: Arc<std::sync::RwLock<treaty_net::pki::RevocationList>>,
    db: Database,
) {
    let mut known: std::collections::BTreeMap<X500Name, u64> = Default::default();
    loop {
        let current = view.borrow_and_update().clone();
        *revoked.write().unwrap_or_else(|p| p.into_inner()) = current.revocations.clone();
        for (name, info) in &current.nodes {
            if known.get(name) == Some(&info.serial) {
                continue;
            }
            let record = IdentityRecord {
                name: name.clone(),
                owning_key: info.legal_identity.owning_key.clone(),
                certificate_chain: info.identity_chain.clone(),
            };
            match db.identities().put(&record).await {
                Ok(()) => {
                    known.insert(name.clone(), info.serial);
                }
                Err(e) => tracing::warn!("cannot record the identity of {name}: {e}"),
            }
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// Soft locks whose flow is no longer running (it ended while the node was down, or the node
/// died between a flow's end and its releasing them) are released at start-up, after the
/// flows resumed: a lock is a flow id, and a running flow keeps its locks.
async fn release_orphan_locks(vault: &Vault, flows: &FlowEngine) -> Result<u64, String> {
    use treaty_vault::{Criteria, LockFilter, Sort};
    let mut locked = vault.stream(Criteria::Lock(LockFilter::Locked), Sort::recording_order(), 1000).map_err(|e| e.to_string())?;
    let mut owners = std::collections::BTreeSet::new();
    while let Some(state) = locked.next().await.map_err(|e| e.to_string())? {
        if let Some(lock) = state.lock_id {
            owners.insert(lock);
        }
    }
    let mut released = 0;
    for lock in owners {
        let running = flows.get(treaty_flows::FlowId(lock.0)).await.map_err(|e| e.to_string())?.is_some_and(|r| !r.status.is_final());
        if !running {
            released += vault.release(lock).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(released)
}

/// A notary node hosts the notary service (validating when its `[notary]` section says so): a
/// redb uniqueness log in the node directory (`uniqueness.redb`), the node's identity key
/// signing, batches of transactions committed together signed together — or, for a member of
/// a cluster, the cluster's service ([`cluster_notary_service`]). Requesting parties' keys come
/// from the network map; a validating notary resolves back-chains into the node's ledger and
/// verifies them in its sandbox.
async fn notary_service(
    config: &LoadedConfig,
    keys: &NodeKeys,
    view: &watch::Receiver<Arc<NetworkView>>,
    ledger: &Arc<NodeLedger>,
    r: &mut Registry,
) -> Result<(), NodeError> {
    let service = match &config.cluster {
        Some(cluster) => cluster_notary_service(config, cluster, keys, view).await?,
        None => {
            let path = config.dir.join("uniqueness.redb");
            let provider = RedbUniquenessProvider::open(&path, UniquenessConfig::default())
                .await
                .map_err(|e| NodeError::Database { url: path.display().to_string(), message: e.to_string() })?;
            let identity = Party { name: config.legal_name.clone(), owning_key: keys.identity.public() };
            NotaryService::new(identity, crate::keys::identity_key(&config.dir)?, Arc::new(provider)).map_err(NodeError::Parameters)?
        }
    };
    let validating = config.raw.notary.as_ref().is_some_and(|n| n.validating);
    let service = Arc::new(service.validating(validating));
    // A tear-off for a non-validating service is answered without a flow (one write: the
    // answer with the mark that the request was handled); the rest runs the responder flow.
    let (answering, answer_view) = (service.clone(), view.clone());
    r.answering(NOTARY_PROTOCOL, move |sender: &X500Name, _version, payload: &[u8]| {
        let requester = answer_view.borrow().node(sender).map(|n| n.legal_identity.clone());
        notary_answer(&answering, requester, sender, payload)
    });
    let (view, ledger) = (view.clone(), ledger.clone());
    r.responder(NOTARY_PROTOCOL, move |ctx: FlowContext| {
        let (service, view, ledger) = (service.clone(), view.clone(), ledger.clone());
        async move {
            let lookup = |name: &X500Name| view.borrow().node(name).map(|n| n.legal_identity.clone());
            notary_responder(&ctx, &service, &ledger, lookup).await
        }
    });
    Ok(())
}

/// The service a member of a notary cluster hosts: the service identity of the network
/// parameters, signing with the shared service key (`keys/service.key`), committing through
/// its own Raft replica (`uniqueness-raft.redb` in the node directory, the other members
/// reached over mutual TLS at their `raft_listen` addresses). Clients pick a member (the
/// parameters list them) and move on to the next when one does not answer; whichever member
/// answers, the answer is the cluster's: committed by a majority, signed by the service.
async fn cluster_notary_service(
    config: &LoadedConfig,
    cluster: &crate::config::ClusterMember,
    keys: &NodeKeys,
    view: &watch::Receiver<Arc<NetworkView>>,
) -> Result<NotaryService, NodeError> {
    use treaty_notary::raft::{RaftConfig, RaftUniquenessProvider, TlsNetwork, TlsPeer};
    let params = view.borrow().parameters.clone();
    let info = params.notaries.iter().find(|n| n.identity.name == cluster.service).ok_or_else(|| {
        NodeError::Parameters(format!(
            "notary.service_name {} is not a notary in the network parameters (they list: {})",
            cluster.service,
            params.notaries.iter().map(|n| n.identity.name.to_string()).collect::<Vec<_>>().join("; ")
        ))
    })?;
    let key_path = config.dir.join("keys").join("service.key");
    let key = treaty_net::keystore::read_key(&key_path).map_err(|e| NodeError::Keys(e.into()))?;
    // Checked before the replica starts: a member with the wrong key must not join the log.
    let service_key_error = |e: String| NodeError::Parameters(format!("{}: {e}", key_path.display()));
    if key.public() != info.identity.owning_key {
        return Err(service_key_error(format!(
            "holds key {}, but the network parameters give notary {} the key {}",
            key.public().short(),
            cluster.service,
            info.identity.owning_key.short()
        )));
    }
    let peers = cluster
        .replicas
        .iter()
        .filter(|(id, _)| **id != cluster.id)
        .map(|(id, (address, name))| (*id, TlsPeer { address: address.clone(), name: name.clone() }))
        .collect();
    let network = TlsNetwork::bind(&cluster.listen.to_string(), keys.tls.clone(), peers).await.map_err(|error| NodeError::Listen {
        key: "notary.raft_listen",
        address: cluster.listen,
        error,
    })?;
    let members = cluster.replicas.iter().map(|(id, (address, _))| (*id, address.clone())).collect();
    let path = config.dir.join("uniqueness-raft.redb");
    let provider = RaftUniquenessProvider::start(&path, RaftConfig::new(cluster.id, members), Arc::new(network))
        .await
        .map_err(|e| NodeError::Database { url: path.display().to_string(), message: e.to_string() })?;
    tracing::info!(
        "hosting notary {} as replica {} of {} (Raft on {})",
        cluster.service,
        cluster.id,
        cluster.replicas.len(),
        cluster.listen
    );
    NotaryService::new(info.identity.clone(), key, Arc::new(provider)).map_err(service_key_error)
}

/// Registers `NotaryChange {"states": ["<tx id>(<index>)", ...], "notary": "<X.500 name>"}`
/// (and its acceptor): moves the states, with their encumbrances, to another notary of the
/// network (docs/notary.md, "Notary change").
pub fn notary_change_flows(r: &mut Registry, services: &NodeServices) {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Args {
        states: Vec<String>,
        notary: String,
    }
    let notaries: Vec<Party> = services.parameters.notaries.iter().map(|n| n.identity.clone()).collect();
    let s = services.clone();
    let known = notaries.clone();
    r.flow(treaty_flows::NOTARY_CHANGE, 1, move |ctx: FlowContext, args: Args| {
        let (s, notaries) = (s.clone(), known.clone());
        async move {
            let bad = |field: &str, e: String| FlowError::InvalidArguments {
                flow: treaty_flows::NOTARY_CHANGE.into(),
                reason: format!("{field}: {e}"),
            };
            if args.states.is_empty() {
                return Err(bad("states", "name at least one state ref".into()));
            }
            let refs = args
                .states
                .iter()
                .map(|r| r.parse::<treaty_core::StateRef>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("states", e))?;
            let name: X500Name = args.notary.parse().map_err(|e| bad("notary", format!("{e}")))?;
            let new_notary = notaries.iter().find(|n| n.name == name).cloned().ok_or_else(|| {
                let names: Vec<String> = notaries.iter().map(|n| n.name.to_string()).collect();
                bad("notary", format!("{name} is not a notary of this network (its notaries: {})", names.join("; ")))
            })?;
            let states = treaty_flows::with_encumbrances(&s.ledger, &refs).await?;
            let mut sessions = Vec::new();
            for party in treaty_flows::counterparties(s.keys.as_ref(), &states)? {
                sessions.push(ctx.initiate(&party).await?);
            }
            let done = treaty_flows::change_notary(&ctx, &s.ledger, &s.keys, &s.identity, &states, &new_notary, &sessions).await?;
            let moved: Vec<String> = (0..states.len()).map(|i| format!("{}({i})", done.id())).collect();
            Ok(serde_json::json!({ "transaction": done.id().to_string(), "notary": name.to_string(), "states": moved }))
        }
    });
    let s = services.clone();
    r.responder(treaty_flows::NOTARY_CHANGE, move |ctx: FlowContext| {
        let (s, notaries) = (s.clone(), notaries.clone());
        async move {
            let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("NotaryChange acceptor without a session".into()))?;
            treaty_flows::accept_notary_change(&ctx, &session, &s.ledger, &s.keys, &notaries).await
        }
    });
}

/// The flows every node has (documented in docs/flows.md, part of the stable surface):
/// - `Echo {"to": NAME, "message": TEXT}` sends the text to the party's node, whose responder
///   sends it back; it returns `{"echo": TEXT, "from": NAME}`.
/// - `SendTransaction {"transaction": ID, "to": NAME}` sends a recorded transaction to the
///   party, whose node resolves its back-chain from this one, verifies and records it all;
///   it returns `{"transaction": ID, "to": NAME, "resolved": N}` (N back-chain transactions
///   the receiver lacked).
/// - `SwapIdentities {"with": NAME}` exchanges fresh confidential keys with the party: each
///   side derives a new key from its seed, certifies it with its well-known key and proves it
///   holds it; it returns `{"with": NAME, "mine": KEY, "theirs": KEY}`, and each node now knows
///   who owns the other's key.
pub fn registry(ledger: Arc<NodeLedger>, ids: Arc<NodeIdentities>) -> Registry {
    #[derive(serde::Deserialize)]
    struct EchoArgs {
        to: String,
        message: String,
    }
    #[derive(serde::Deserialize)]
    struct SendArgs {
        transaction: String,
        to: String,
    }
    #[derive(serde::Deserialize)]
    struct SwapArgs {
        with: String,
    }
    let mut r = Registry::new();
    let i = ids.clone();
    r.flow(SWAP_IDENTITIES, 1, move |ctx: FlowContext, args: SwapArgs| {
        let ids = i.clone();
        async move {
            let with: X500Name = args
                .with
                .parse()
                .map_err(|e| FlowError::InvalidArguments { flow: SWAP_IDENTITIES.into(), reason: format!("with: {e}") })?;
            let session = ctx.initiate(&with).await?;
            let swapped = swap_identities(&ctx, &session, &ids).await?;
            Ok(serde_json::json!({
                "with": with.to_string(),
                "mine": swapped.mine.owning_key.to_string(),
                "theirs": swapped.theirs.owning_key.to_string(),
            }))
        }
    });
    r.responder(SWAP_IDENTITIES, move |ctx: FlowContext| {
        let ids = ids.clone();
        async move {
            let session =
                ctx.initiating_session().ok_or_else(|| FlowError::Invalid("SwapIdentities responder without a session".into()))?;
            swap_identities(&ctx, &session, &ids).await.map(|_| ())
        }
    });
    let l = ledger.clone();
    r.flow(SEND_TRANSACTION, 1, move |ctx: FlowContext, args: SendArgs| {
        let ledger = l.clone();
        async move {
            let bad =
                |field: &str, e: String| FlowError::InvalidArguments { flow: SEND_TRANSACTION.into(), reason: format!("{field}: {e}") };
            let id: SecureHash = args.transaction.parse().map_err(|e| bad("transaction", format!("{e}")))?;
            let to: X500Name = args.to.parse().map_err(|e| bad("to", format!("{e}")))?;
            let [stx] = <[Option<SignedTransaction>; 1]>::try_from(ledger.transactions(&[id]).await?).unwrap_or([None]);
            let stx = stx.ok_or_else(|| bad("transaction", format!("no transaction {id} is recorded on this node")))?;
            ctx.progress("sending").await?;
            let session = ctx.initiate(&to).await?;
            send_transaction(&ctx, &session, &ledger, &stx).await?;
            let resolved: u64 = ctx.receive(&session).await?;
            ctx.progress("recorded by the receiver").await?;
            Ok(serde_json::json!({ "transaction": id.to_string(), "to": to.to_string(), "resolved": resolved }))
        }
    });
    r.responder(SEND_TRANSACTION, move |ctx: FlowContext| {
        let ledger = ledger.clone();
        async move {
            let session =
                ctx.initiating_session().ok_or_else(|| FlowError::Invalid("SendTransaction responder without a session".into()))?;
            let options = ReceiveOptions { record: true, ..ReceiveOptions::default() };
            let got = receive_transaction(&ctx, &session, &ledger, options).await?;
            ctx.send(&session, &(got.resolved as u64)).await
        }
    });
    r.flow(ECHO, 1, |ctx: FlowContext, args: EchoArgs| async move {
        let to: X500Name = args.to.parse().map_err(|e| FlowError::InvalidArguments { flow: ECHO.into(), reason: format!("to: {e}") })?;
        ctx.progress("sending").await?;
        let session = ctx.initiate(&to).await?;
        let echo: String = ctx.send_and_receive(&session, &args.message).await?;
        ctx.progress("answered").await?;
        Ok(serde_json::json!({ "echo": echo, "from": to.to_string() }))
    });
    r.responder(ECHO, |ctx: FlowContext| async move {
        let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("echo responder without a session".into()))?;
        let text: String = ctx.receive(&session).await?;
        ctx.send(&session, &text).await
    });
    r
}

/// The built-in flow that exchanges fresh confidential keys with a party (see [`registry`]).
pub const SWAP_IDENTITIES: &str = "SwapIdentities";
/// The built-in round-trip flow (see [`registry`]).
pub const ECHO: &str = "Echo";
/// The built-in flow that shares a recorded transaction with its back-chain (see [`registry`]).
pub const SEND_TRANSACTION: &str = "SendTransaction";

/// Routes incoming messages: flow sessions to the flow engine, pings answered, pongs recorded.
async fn dispatch(messenger: NodeMessenger, flows: FlowEngine, mut inbox: mpsc::Receiver<InboundMessage>) {
    while let Some(m) = inbox.recv().await {
        match m.topic.as_str() {
            FLOW_TOPIC => {
                let (sender, id) = (m.sender.clone(), m.id);
                if let Err(e) = flows.deliver(m).await {
                    tracing::warn!("flow message {id} from {sender} not handled (it stays in the inbox): {e}");
                }
            }
            PING => {
                let payload = [m.id.0.as_bytes().as_slice(), &m.payload].concat();
                let pong = Outgoing { destination: m.sender.clone(), session: m.session, topic: PONG.into(), payload };
                // A derived id: if this node dies between answering and marking the ping
                // processed, the ping comes back at start-up and the second answer is dropped
                // by the receiver as a duplicate (or is still in the outbox).
                let id = MessageId::derived(&m.id, PONG);
                let answered = match messenger.send_with_ids(vec![(id, pong)]).await {
                    Ok(_) => true,
                    Err(e) => {
                        matches!(messenger.in_outbox(&m.sender, &id).await, Ok(true)) || {
                            tracing::warn!("cannot answer a ping from {}: {e}", m.sender);
                            false
                        }
                    }
                };
                if answered {
                    let _ = messenger.processed(&[m.id]).await;
                }
            }
            PONG => {
                let _ = messenger.processed(&[m.id]).await;
            }
            other => tracing::debug!("message on topic {other} from {} kept in the inbox", m.sender),
        }
    }
}
