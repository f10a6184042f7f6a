//! The flow engine: starts flows, routes session messages to them, journals their steps,
//! replays them after a restart, and runs the flow hospital.
//!
//! A flow is an async function over a [`FlowContext`]. Every step that touches the world is
//! appended to the flow's journal in the node database before it counts. After a crash the
//! engine runs the function again from the start: each step finds its entry in the journal
//! and returns what it returned then, until the journal runs out and the flow carries on
//! live. Messages a flow sends have ids derived from the flow id and the step, so a step that
//! was sent but not yet journaled when the node died is sent again with the same id and the
//! receiver's inbox drops the copy.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;
use treaty_core::{X500Name, encoding};
use treaty_net::messaging::{Connector, InboundMessage, MessageId, MessageStore, Messenger, Outgoing, StoreError};

use crate::context::{FlowContext, Run, lock};
use crate::error::FlowError;
use crate::journal::{Entry, FlowId, Received};
use crate::protocol::{Envelope, FLOW_TOPIC, SessionMessage};
use crate::store::{Created, FlowRecord, FlowStatus, FlowStore};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a flow body is: a context and JSON arguments in, a JSON result out.
pub type FlowFn = Arc<dyn Fn(FlowContext, Value) -> BoxFuture<'static, Result<Value, FlowError>> + Send + Sync>;

/// A check an application runs on a counterparty before a flow with it goes ahead (the
/// membership service's hook): `Err(reason)` refuses.
pub type CounterpartyCheck = Arc<dyn Fn(&X500Name, &str) -> Result<(), String> + Send + Sync>;

type ArgsCheck = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

/// A running flow and its task.
type Running = (Arc<Run>, Option<AbortHandle>);

/// A registered flow.
pub struct FlowDef {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// Its body.
    pub run: FlowFn,
    check_args: ArgsCheck,
}

/// The flows a node can run: initiating flows by name (started by clients or as sub-flows)
/// and responders by the name of the flow that initiates them.
#[derive(Clone, Default)]
pub struct Registry {
    flows: BTreeMap<String, Arc<FlowDef>>,
    responders: BTreeMap<String, Arc<FlowDef>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers a flow clients can start by `name`, taking `A` and returning `R` as JSON.
    pub fn flow<A, R, F, Fut>(&mut self, name: &str, version: u32, body: F) -> &mut Registry
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(FlowContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, FlowError>> + Send + 'static,
    {
        let flow = name.to_string();
        let body = Arc::new(body);
        let run: FlowFn = Arc::new(move |ctx, args| {
            let body = body.clone();
            let flow = flow.clone();
            Box::pin(async move {
                let args: A =
                    serde_json::from_value(args).map_err(|e| FlowError::InvalidArguments { flow: flow.clone(), reason: e.to_string() })?;
                let result = body(ctx, args).await?;
                serde_json::to_value(result).map_err(|e| FlowError::Invalid(format!("result of flow {flow} is not JSON: {e}")))
            })
        });
        let check_args: ArgsCheck =
            Arc::new(|args: &Value| serde_json::from_value::<A>(args.clone()).map(|_| ()).map_err(|e| e.to_string()));
        self.flows.insert(name.to_string(), Arc::new(FlowDef { name: name.to_string(), version, run, check_args }));
        self
    }

    /// Registers the responder to flow `initiating`, started when its first message arrives.
    pub fn responder<F, Fut>(&mut self, initiating: &str, body: F) -> &mut Registry
    where
        F: Fn(FlowContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), FlowError>> + Send + 'static,
    {
        let body = Arc::new(body);
        let run: FlowFn = Arc::new(move |ctx, _| {
            let body = body.clone();
            Box::pin(async move { body(ctx).await.map(|()| Value::Null) })
        });
        let def = FlowDef { name: initiating.to_string(), version: 1, run, check_args: Arc::new(|_| Ok(())) };
        self.responders.insert(initiating.to_string(), Arc::new(def));
        self
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<FlowDef>> {
        self.flows.get(name).cloned()
    }

    /// The names of the flows clients can start.
    pub fn names(&self) -> Vec<String> {
        self.flows.keys().cloned().collect()
    }
}

/// How flows send session messages and mark received ones processed: the node's messenger.
pub trait Transport: Send + Sync + 'static {
    /// Sends `payload` to `to` on `session` under `id`; sending an id again is harmless.
    fn send(&self, id: MessageId, to: X500Name, session: u64, payload: Vec<u8>) -> BoxFuture<'_, Result<(), FlowError>>;
    /// Marks received messages processed.
    fn processed(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), FlowError>>;
}

impl<S: MessageStore, C: Connector> Transport for Messenger<S, C> {
    fn send(&self, id: MessageId, to: X500Name, session: u64, payload: Vec<u8>) -> BoxFuture<'_, Result<(), FlowError>> {
        Box::pin(async move {
            let message = Outgoing { destination: to.clone(), session, topic: FLOW_TOPIC.into(), payload };
            match self.send_with_ids(vec![(id, message)]).await {
                Ok(_) => Ok(()),
                // Sent before the node died, not yet delivered: it is still in the outbox.
                Err(_) if matches!(self.in_outbox(&to, &id).await, Ok(true)) => Ok(()),
                Err(treaty_net::messaging::MessagingError::Store(e)) => Err(FlowError::Store(e)),
                Err(e) => Err(FlowError::Invalid(e.to_string())),
            }
        })
    }

    fn processed(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), FlowError>> {
        Box::pin(async move { Ok(Messenger::processed(self, &ids).await?) })
    }
}

/// [`FlowStore`] behind a pointer (its methods boxed).
pub(crate) trait DynStore: Send + Sync {
    fn create(&self, record: FlowRecord) -> BoxFuture<'_, Result<Created, StoreError>>;
    fn append<'a>(&'a self, id: FlowId, index: usize, entry: &'a Entry) -> BoxFuture<'a, Result<(), StoreError>>;
    fn journal(&self, id: FlowId) -> BoxFuture<'_, Result<Vec<Entry>, StoreError>>;
    fn set_status(
        &self,
        id: FlowId,
        status: FlowStatus,
        result: Option<Vec<u8>>,
        error: Option<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    fn get(&self, id: FlowId) -> BoxFuture<'_, Result<Option<FlowRecord>, StoreError>>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<FlowRecord>, StoreError>>;
    fn runnable(&self) -> BoxFuture<'_, Result<Vec<FlowRecord>, StoreError>>;
}

impl<T: FlowStore> DynStore for T {
    fn create(&self, record: FlowRecord) -> BoxFuture<'_, Result<Created, StoreError>> {
        Box::pin(FlowStore::create(self, record))
    }
    fn append<'a>(&'a self, id: FlowId, index: usize, entry: &'a Entry) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(FlowStore::append(self, id, index, entry))
    }
    fn journal(&self, id: FlowId) -> BoxFuture<'_, Result<Vec<Entry>, StoreError>> {
        Box::pin(FlowStore::journal(self, id))
    }
    fn set_status(
        &self,
        id: FlowId,
        status: FlowStatus,
        result: Option<Vec<u8>>,
        error: Option<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(FlowStore::set_status(self, id, status, result, error))
    }
    fn get(&self, id: FlowId) -> BoxFuture<'_, Result<Option<FlowRecord>, StoreError>> {
        Box::pin(FlowStore::get(self, id))
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<FlowRecord>, StoreError>> {
        Box::pin(FlowStore::list(self))
    }
    fn runnable(&self) -> BoxFuture<'_, Result<Vec<FlowRecord>, StoreError>> {
        Box::pin(FlowStore::runnable(self))
    }
}

/// Engine settings.
#[derive(Clone)]
pub struct EngineOptions {
    /// Automatic retries of a flow after a transient failure before it is hospitalized.
    pub retries: u32,
    /// First retry delay (doubles each time).
    pub retry_delay: Duration,
    /// The counterparty check, if any.
    pub counterparty_check: Option<CounterpartyCheck>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { retries: 5, retry_delay: Duration::from_millis(200), counterparty_check: None }
    }
}

type SessionKey = (X500Name, u64, bool);

pub(crate) struct Shared {
    pub(crate) me: X500Name,
    pub(crate) store: Arc<dyn DynStore>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) registry: Registry,
    pub(crate) counterparty_check: Option<CounterpartyCheck>,
    pub(crate) progress: broadcast::Sender<(FlowId, usize, String)>,
    runs: Mutex<HashMap<FlowId, Running>>,
    sessions: Mutex<HashMap<SessionKey, FlowId>>,
    changes: watch::Sender<u64>,
    draining: AtomicBool,
    options: EngineOptions,
}

impl Shared {
    pub(crate) fn bind(&self, party: X500Name, session: u64, initiator: bool, flow: FlowId) {
        lock(&self.sessions).insert((party, session, initiator), flow);
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct FlowEngine {
    shared: Arc<Shared>,
}

impl FlowEngine {
    /// An engine for node `me`. Call [`FlowEngine::resume`] before the messenger starts
    /// delivering, so redelivered messages find their flows.
    pub fn new<F: FlowStore>(
        me: X500Name,
        store: Arc<F>,
        transport: Arc<dyn Transport>,
        registry: Registry,
        options: EngineOptions,
    ) -> FlowEngine {
        let shared = Shared {
            me,
            store,
            transport,
            registry,
            counterparty_check: options.counterparty_check.clone(),
            progress: broadcast::channel(1024).0,
            runs: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
            draining: AtomicBool::new(false),
            options,
        };
        FlowEngine { shared: Arc::new(shared) }
    }

    /// Progress steps of every flow as they are reported: flow, journal index, step.
    pub fn progress(&self) -> broadcast::Receiver<(FlowId, usize, String)> {
        self.shared.progress.subscribe()
    }

    /// A flow's journal (for a watcher that joins late: its progress steps so far).
    pub async fn journal(&self, id: FlowId) -> Result<Vec<Entry>, FlowError> {
        Ok(self.shared.store.journal(id).await?)
    }

    /// Refuses new flows (draining for an upgrade) or accepts them again.
    pub fn set_draining(&self, draining: bool) {
        self.shared.draining.store(draining, Ordering::SeqCst);
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// The names of the flows clients can start.
    pub fn flow_names(&self) -> Vec<String> {
        self.shared.registry.names()
    }

    /// Flows still running (for draining: done when this is empty).
    pub fn running(&self) -> usize {
        lock(&self.shared.runs).len()
    }

    /// Restarts every runnable flow from its journal. Returns how many.
    pub async fn resume(&self) -> Result<usize, FlowError> {
        let records = self.shared.store.runnable().await?;
        let mut n = 0;
        for record in records {
            if lock(&self.shared.runs).contains_key(&record.id) {
                continue;
            }
            let journal = self.shared.store.journal(record.id).await?;
            match self.def_for(&record) {
                Some(def) => {
                    self.spawn(record, journal, def);
                    n += 1;
                }
                None => {
                    let error = format!("flow {} is no longer registered on this node", record.name);
                    self.shared.store.set_status(record.id, FlowStatus::Hospitalized, None, Some(error)).await?;
                }
            }
        }
        self.shared.changed();
        Ok(n)
    }

    fn def_for(&self, record: &FlowRecord) -> Option<Arc<FlowDef>> {
        if record.initiator.is_some() {
            self.shared.registry.responders.get(&record.name).cloned()
        } else {
            self.shared.registry.get(&record.name)
        }
    }

    /// Starts flow `name` with JSON `args`. With a `client_id`, a second start with the same
    /// id returns the first flow instead of starting another.
    pub async fn start(&self, name: &str, args: Value, client_id: Option<String>) -> Result<FlowId, FlowError> {
        if self.shared.draining.load(Ordering::SeqCst) {
            return Err(FlowError::Draining);
        }
        let def = self
            .shared
            .registry
            .get(name)
            .ok_or_else(|| FlowError::UnknownFlow { name: name.to_string(), known: self.shared.registry.names() })?;
        (def.check_args)(&args).map_err(|reason| FlowError::InvalidArguments { flow: name.to_string(), reason })?;
        let now = crate::now_micros();
        let record = FlowRecord {
            id: FlowId::random(),
            name: name.to_string(),
            version: def.version,
            args: serde_json::to_vec(&args).map_err(|e| FlowError::Invalid(e.to_string()))?,
            status: FlowStatus::Runnable,
            result: None,
            error: None,
            client_id,
            initiator: None,
            created_at: now,
            updated_at: now,
        };
        match self.shared.store.create(record.clone()).await? {
            Created::Existing(id) => Ok(id),
            Created::New => {
                let id = record.id;
                self.spawn(record, Vec::new(), def);
                self.shared.changed();
                Ok(id)
            }
        }
    }

    fn spawn(&self, record: FlowRecord, journal: Vec<Entry>, def: Arc<FlowDef>) -> Arc<Run> {
        let run = Arc::new(Run::new(record.id, record.name.clone(), record.version, journal, record.initiator.clone()));
        // Route every session the journal opened (and a responder's own) to this flow.
        for (id, s) in lock(&run.sessions).iter() {
            if let Some(p) = &s.party {
                self.shared.bind(p.clone(), *id, s.initiator, record.id);
            }
        }
        let args: Value = serde_json::from_slice(&record.args).unwrap_or(Value::Null);
        lock(&self.shared.runs).insert(record.id, (run.clone(), None));
        let engine = self.clone();
        let task_run = run.clone();
        let task = tokio::spawn(async move { engine.drive(task_run, def, args).await });
        if let Some(entry) = lock(&self.shared.runs).get_mut(&record.id) {
            entry.1 = Some(task.abort_handle());
        }
        run
    }

    async fn drive(&self, run: Arc<Run>, def: Arc<FlowDef>, args: Value) {
        let mut attempt = 0;
        let outcome = loop {
            *lock(&run.cursor) = 0;
            let ctx = FlowContext { run: run.clone(), shared: self.shared.clone() };
            match (def.run)(ctx, args.clone()).await {
                Err(e) if e.is_transient() && attempt < self.shared.options.retries => {
                    let delay = self.shared.options.retry_delay * 2u32.saturating_pow(attempt);
                    tracing::warn!("flow {} ({}) failed transiently, retrying in {delay:?}: {e}", run.id, run.name);
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                other => break other,
            }
        };
        if let Err(e) = self.finish(&run, outcome).await {
            tracing::error!("flow {} ({}): could not record its end: {e}", run.id, run.name);
        }
    }

    async fn tell_sessions(&self, run: &Run, message: SessionMessage, tag: &str) -> Result<(), FlowError> {
        for (session, party, to_initiator) in run.open_sessions() {
            let id = MessageId::derived(&MessageId(run.id.0), &format!("{tag}-{session}"));
            let envelope = Envelope { to_initiator, message: message.clone() };
            self.shared.transport.send(id, party, session, encoding::encode(&envelope)).await?;
        }
        Ok(())
    }

    async fn finish(&self, run: &Run, outcome: Result<Value, FlowError>) -> Result<(), FlowError> {
        let (status, result, error) = match outcome {
            Ok(value) => {
                self.tell_sessions(run, SessionMessage::End, "end").await?;
                (FlowStatus::Completed, Some(serde_json::to_vec(&value).unwrap_or_default()), None)
            }
            Err(e @ FlowError::CodeChanged { .. }) => (FlowStatus::Hospitalized, None, Some(e.to_string())),
            Err(e) if e.is_transient() => (FlowStatus::Hospitalized, None, Some(e.to_string())),
            Err(e) => {
                self.tell_sessions(run, SessionMessage::Error(e.for_counterparty()), "error").await?;
                (FlowStatus::Failed, None, Some(e.to_string()))
            }
        };
        self.shared.store.set_status(run.id, status, result, error).await?;
        self.forget(run.id);
        Ok(())
    }

    fn forget(&self, id: FlowId) {
        lock(&self.shared.runs).remove(&id);
        lock(&self.shared.sessions).retain(|_, f| *f != id);
        self.shared.changed();
    }

    /// Hands the engine a message from the messenger (topic [`FLOW_TOPIC`]).
    pub async fn deliver(&self, message: InboundMessage) -> Result<(), FlowError> {
        let envelope: Envelope = match encoding::decode(&message.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("dropping a malformed flow message from {}: {e}", message.sender);
                return self.shared.transport.processed(vec![message.id]).await;
            }
        };
        match envelope.message {
            SessionMessage::Init { flow, version, payload } => self.open_responder(message, flow, version, payload).await,
            other => {
                let key = (message.sender.clone(), message.session, envelope.to_initiator);
                let flow = lock(&self.shared.sessions).get(&key).copied();
                let run = flow.and_then(|f| lock(&self.shared.runs).get(&f).map(|(r, _)| r.clone()));
                match run {
                    Some(run) => {
                        let received = match other {
                            SessionMessage::Data(bytes) => Received::Data(bytes),
                            SessionMessage::Error(m) => Received::Error(m),
                            _ => Received::Ended,
                        };
                        run.push(message.session, message.id, received);
                        Ok(())
                    }
                    None => {
                        tracing::debug!("message from {} for session {:x} has no running flow; dropped", message.sender, message.session);
                        self.shared.transport.processed(vec![message.id]).await
                    }
                }
            }
        }
    }

    async fn open_responder(&self, message: InboundMessage, flow: String, version: u32, payload: Option<Vec<u8>>) -> Result<(), FlowError> {
        let id = FlowId::responder_for(&message.id);
        let existing = lock(&self.shared.runs).get(&id).map(|(r, _)| r.clone());
        if let Some(run) = existing {
            if let Some(p) = payload {
                run.push(message.session, message.id, Received::Data(p));
            }
            return Ok(());
        }
        if self.shared.store.get(id).await?.is_some() {
            // Started before and ended (or parked): the opening message has done its work.
            return self.shared.transport.processed(vec![message.id]).await;
        }
        if self.shared.draining.load(Ordering::SeqCst) {
            // Left unprocessed in the inbox: delivered again after the restart.
            tracing::info!("draining: not starting a responder to {flow} from {} yet", message.sender);
            return Ok(());
        }
        let Some(def) = self.shared.registry.responders.get(&flow).cloned() else {
            let reason = format!("{} has no responder for flow {flow} (version {version})", self.shared.me);
            return self.refuse(&message, reason).await;
        };
        if let Some(check) = &self.shared.counterparty_check
            && let Err(reason) = check(&message.sender, &flow)
        {
            let reason = format!("{} refuses {} for flow {flow}: {reason}", self.shared.me, message.sender);
            return self.refuse(&message, reason).await;
        }
        let now = crate::now_micros();
        let record = FlowRecord {
            id,
            name: flow,
            version,
            args: b"null".to_vec(),
            status: FlowStatus::Runnable,
            result: None,
            error: None,
            client_id: None,
            initiator: Some((message.sender.clone(), message.session)),
            created_at: now,
            updated_at: now,
        };
        self.shared.store.create(record.clone()).await?;
        let run = self.spawn(record, Vec::new(), def);
        match payload {
            Some(p) => run.push(message.session, message.id, Received::Data(p)),
            None => self.shared.transport.processed(vec![message.id]).await?,
        }
        self.shared.changed();
        Ok(())
    }

    async fn refuse(&self, message: &InboundMessage, reason: String) -> Result<(), FlowError> {
        tracing::warn!("refusing a flow session from {}: {reason}", message.sender);
        let reply = Envelope { to_initiator: true, message: SessionMessage::Error(reason) };
        let reply_id = MessageId::derived(&message.id, "refused");
        self.shared.transport.send(reply_id, message.sender.clone(), message.session, encoding::encode(&reply)).await?;
        self.shared.transport.processed(vec![message.id]).await
    }

    /// One flow.
    pub async fn get(&self, id: FlowId) -> Result<Option<FlowRecord>, FlowError> {
        Ok(self.shared.store.get(id).await?)
    }

    /// Every flow, oldest first.
    pub async fn list(&self) -> Result<Vec<FlowRecord>, FlowError> {
        Ok(self.shared.store.list().await?)
    }

    /// Waits until the flow has ended, or needs the operator (hospitalized, paused).
    pub async fn wait(&self, id: FlowId) -> Result<FlowRecord, FlowError> {
        let mut changes = self.shared.changes.subscribe();
        loop {
            // Running first: a flow leaves `runs` only after its final status is stored, so a
            // record read after seeing it gone is final.
            let running = lock(&self.shared.runs).contains_key(&id);
            let record = self.shared.store.get(id).await?.ok_or_else(|| FlowError::Invalid(format!("no flow {id} on this node")))?;
            if record.status != FlowStatus::Runnable || !running {
                return Ok(record);
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), changes.changed()).await;
        }
    }

    /// Ends a flow: its counterparties are told it was killed.
    pub async fn kill(&self, id: FlowId) -> Result<FlowRecord, FlowError> {
        let record = self.shared.store.get(id).await?.ok_or_else(|| FlowError::Invalid(format!("no flow {id} on this node")))?;
        if record.status.is_final() {
            return Err(FlowError::Invalid(format!("flow {id} has already ended ({})", record.status.as_str())));
        }
        let entry = lock(&self.shared.runs).remove(&id);
        let run = match entry {
            Some((run, task)) => {
                if let Some(t) = task {
                    t.abort();
                }
                run
            }
            None => {
                Arc::new(Run::new(id, record.name.clone(), record.version, self.shared.store.journal(id).await?, record.initiator.clone()))
            }
        };
        self.tell_sessions(&run, SessionMessage::Error(FlowError::Killed.for_counterparty()), "error").await?;
        self.shared.store.set_status(id, FlowStatus::Killed, None, Some(FlowError::Killed.to_string())).await?;
        self.forget(id);
        Ok(self.shared.store.get(id).await?.unwrap_or(record))
    }

    /// Resumes a hospitalized or paused flow from its journal.
    pub async fn retry(&self, id: FlowId) -> Result<(), FlowError> {
        let mut record = self.shared.store.get(id).await?.ok_or_else(|| FlowError::Invalid(format!("no flow {id} on this node")))?;
        if !matches!(record.status, FlowStatus::Hospitalized | FlowStatus::Paused) {
            return Err(FlowError::Invalid(format!(
                "flow {id} is {}, only HOSPITALIZED or PAUSED flows can be retried",
                record.status.as_str()
            )));
        }
        let def = self
            .def_for(&record)
            .ok_or_else(|| FlowError::UnknownFlow { name: record.name.clone(), known: self.shared.registry.names() })?;
        self.shared.store.set_status(id, FlowStatus::Runnable, None, None).await?;
        record.status = FlowStatus::Runnable;
        let journal = self.shared.store.journal(id).await?;
        self.spawn(record, journal, def);
        self.shared.changed();
        Ok(())
    }

    /// Stops every running flow's task (the node is shutting down); they resume from their
    /// journals at the next start.
    pub fn shutdown(&self) {
        for (_, (_, task)) in lock(&self.shared.runs).drain() {
            if let Some(t) = task {
                t.abort();
            }
        }
    }
}
