//! A two-node harness over the simulated network with in-memory stores: start, crash (memory
//! lost, stores kept), restart.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use treaty_core::X500Name;
use treaty_flows::*;
use treaty_net::messaging::{MemoryMessageStore, Messenger, MessengerConfig, PeerDirectory, StoreError};
use treaty_net::sim::{SimConnector, SimNetwork};

pub const ALICE: &str = "O=Alice,L=London,C=GB";
pub const BOB: &str = "O=Bob,L=Paris,C=FR";

pub fn name(s: &str) -> X500Name {
    s.parse().unwrap()
}

pub fn fast() -> MessengerConfig {
    MessengerConfig {
        ack_timeout: Duration::from_millis(200),
        retry_min: Duration::from_millis(5),
        retry_max: Duration::from_millis(100),
        rescan_interval: Duration::from_millis(100),
        ..MessengerConfig::default()
    }
}

pub type Directory = Arc<RwLock<HashMap<X500Name, Vec<String>>>>;

/// What survives a crash: the stores.
#[derive(Clone, Default)]
pub struct Disk {
    pub messages: Arc<MemoryMessageStore>,
    pub flows: Arc<MemoryFlowStore>,
}

pub struct Node {
    pub engine: FlowEngine,
    pub messenger: Messenger<MemoryMessageStore, SimConnector>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    net: SimNetwork,
    address: String,
}

impl Node {
    pub async fn start(net: &SimNetwork, dir: &Directory, legal: &str, disk: &Disk, registry: Registry, options: EngineOptions) -> Node {
        Node::start_with(net, dir, legal, &disk.messages, disk.flows.clone(), registry, options).await
    }

    /// A node whose flows are kept in `flows` (any store: SQLite too).
    pub async fn start_with<F: FlowStore>(
        net: &SimNetwork,
        dir: &Directory,
        legal: &str,
        messages: &Arc<MemoryMessageStore>,
        flows: Arc<F>,
        registry: Registry,
        options: EngineOptions,
    ) -> Node {
        let me = name(legal);
        let address = format!("sim:{legal}");
        dir.write().unwrap().insert(me.clone(), vec![address.clone()]);
        let d = dir.clone();
        let directory: Arc<dyn PeerDirectory> = Arc::new(move |p: &X500Name| d.read().unwrap().get(p).cloned().unwrap_or_default());
        let config = MessengerConfig { max_message_size: 64 * 1024 * 1024, ..fast() };
        let (messenger, mut inbox) = Messenger::new(me.clone(), messages.clone(), net.connector(&me), directory, config);
        let engine = FlowEngine::new(me.clone(), flows, Arc::new(messenger.clone()), registry, options);
        engine.resume().await.unwrap();
        let mut tasks = Vec::new();
        let e = engine.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = inbox.recv().await {
                if m.topic == protocol::FLOW_TOPIC {
                    e.deliver(m).await.unwrap();
                }
            }
        }));
        messenger.start().await.unwrap();
        let mut incoming = net.listen(&address, &me);
        let server = messenger.clone();
        tasks.push(tokio::spawn(async move {
            // The links die with this task (a crash aborts it): a crashed node must not go on
            // accepting and acknowledging messages that its successor would never see.
            let mut links = tokio::task::JoinSet::new();
            while let Some((link, peer)) = incoming.recv().await {
                let server = server.clone();
                links.spawn(async move { server.serve_link(link, peer).await });
                while links.try_join_next().is_some() {}
            }
        }));
        Node { engine, messenger, tasks, net: net.clone(), address }
    }

    /// Everything in memory is lost; the stores survive.
    pub fn crash(self) {
        self.engine.shutdown();
        self.messenger.shutdown();
        for t in self.tasks {
            t.abort();
        }
        self.net.unlisten(&self.address);
    }
}

pub async fn finished(engine: &FlowEngine, id: FlowId) -> FlowRecord {
    tokio::time::timeout(Duration::from_secs(60), engine.wait(id)).await.expect("flow finished in time").unwrap()
}

pub fn result(r: &FlowRecord) -> serde_json::Value {
    assert_eq!(r.status, FlowStatus::Completed, "{r:?}");
    serde_json::from_slice(r.result.as_ref().unwrap()).unwrap()
}

/// What a [`HookedParking`] store does before it writes a parking (hold it, refuse it, count it).
pub trait ParkHook: Send + Sync + 'static {
    /// Runs before `parking` is written; an error is the store's answer instead.
    fn before_park(&self, parking: &Parking) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
    /// Runs before `record` is created; an error is the store's answer instead.
    fn before_create(&self, _record: &FlowRecord) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
    /// Runs before `entries` are appended to flow `id`'s journal (alone or with its end).
    fn before_append(&self, _id: FlowId, _entries: &[Entry]) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
    /// Runs before flow `id`'s record is read.
    fn before_get(&self, _id: FlowId) {}
}

/// A memory store that runs its hook before writing each parking (tests of parking races and
/// failures); everything else is the memory store's.
pub struct HookedParking<H> {
    pub inner: MemoryFlowStore,
    pub hook: H,
}

impl<H> HookedParking<H> {
    pub fn new(hook: H) -> HookedParking<H> {
        HookedParking { inner: MemoryFlowStore::default(), hook }
    }
}

impl<H: ParkHook> FlowStore for HookedParking<H> {
    async fn create(&self, record: FlowRecord) -> Result<Created, StoreError> {
        self.hook.before_create(&record).await?;
        self.inner.create(record).await
    }
    async fn append(&self, id: FlowId, first: usize, entries: &[Entry]) -> Result<(), StoreError> {
        self.hook.before_append(id, entries).await?;
        self.inner.append(id, first, entries).await
    }
    async fn journal(&self, id: FlowId) -> Result<Vec<Entry>, StoreError> {
        self.inner.journal(id).await
    }
    async fn set_status(&self, id: FlowId, status: FlowStatus, result: Option<Vec<u8>>, error: Option<String>) -> Result<(), StoreError> {
        self.inner.set_status(id, status, result, error).await
    }
    async fn get(&self, id: FlowId) -> Result<Option<FlowRecord>, StoreError> {
        self.hook.before_get(id);
        self.inner.get(id).await
    }
    async fn list(&self) -> Result<Vec<FlowRecord>, StoreError> {
        self.inner.list().await
    }
    async fn runnable(&self) -> Result<Vec<FlowRecord>, StoreError> {
        self.inner.runnable().await
    }
    async fn park(&self, parking: &Parking) -> Result<(), StoreError> {
        self.hook.before_park(parking).await?;
        self.inner.park(parking).await
    }
    async fn parked_session(&self, party: &X500Name, session: u64, initiator: bool) -> Result<Option<FlowId>, StoreError> {
        self.inner.parked_session(party, session, initiator).await
    }
    async fn parked(&self) -> Result<Vec<ParkedFlow>, StoreError> {
        self.inner.parked().await
    }
    async fn awake(&self) -> Result<Vec<FlowRecord>, StoreError> {
        self.inner.awake().await
    }
}
