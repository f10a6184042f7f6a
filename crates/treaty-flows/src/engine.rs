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
//!
//! Replay is also how the engine keeps many waiting flows without keeping them in memory. A
//! flow that waits (at a receive with nothing queued, or in a long sleep) longer than
//! [`EngineOptions::evict_after`], or that is among the longest-waiting when more than
//! [`EngineOptions::max_in_memory`] flows are in memory, is *parked*: its task writes a
//! [`Parking`] (its sessions, its wake time) to the store and ends, dropping the flow where it
//! waits. A message on one of its sessions, or its wake time, brings it back: its journal is
//! read and it replays to where it waited, exactly as after a restart. At start-up parked
//! flows are only indexed (id and wake time), not loaded. See docs/flows.md, "Parked flows",
//! for why no message is lost or handled twice on the way.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{Notify, broadcast};
use tokio::task::AbortHandle;
use treaty_core::{X500Name, encoding};
use treaty_net::messaging::{Connector, InboundMessage, MessageId, MessageStore, Messenger, Outgoing, StoreError};

use crate::context::{FlowContext, Run, Wait, lock};
use crate::error::FlowError;
use crate::journal::{Entry, FlowId, Received};
use crate::protocol::{Envelope, FLOW_TOPIC, SessionMessage};
use crate::store::{Created, End, FlowRecord, FlowStatus, FlowStore, ParkedFlow, Parking};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a flow body is: a context and JSON arguments in, a JSON result out.
pub type FlowFn = Arc<dyn Fn(FlowContext, Value) -> BoxFuture<'static, Result<Value, FlowError>> + Send + Sync>;

/// A check an application runs on a counterparty before a flow with it goes ahead (the
/// membership service's hook): `Err(reason)` refuses.
pub type CounterpartyCheck = Arc<dyn Fn(&X500Name, &str) -> Result<(), String> + Send + Sync>;

type ArgsCheck = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

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

/// A responder's answer given without a flow ([`Registry::answering`]): from the opening
/// message's sender, the initiator's version and the opening payload, either `None` (run
/// the responder flow as usual) or the work that computes the one answer (`Err` is a reason
/// the initiator receives as the responder's error).
pub type AnswerFn = Arc<dyn Fn(&X500Name, u32, &[u8]) -> Option<BoxFuture<'static, Result<Vec<u8>, String>>> + Send + Sync>;

/// The flows a node can run: initiating flows by name (started by clients or as sub-flows)
/// and responders by the name of the flow that initiates them.
#[derive(Clone, Default)]
pub struct Registry {
    flows: BTreeMap<String, Arc<FlowDef>>,
    responders: BTreeMap<String, Arc<FlowDef>>,
    answers: BTreeMap<String, AnswerFn>,
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
                let args: A = parse_args(args).map_err(|reason| FlowError::InvalidArguments { flow: flow.clone(), reason })?;
                let result = body(ctx, args).await?;
                serde_json::to_value(result).map_err(|e| FlowError::Invalid(format!("result of flow {flow} is not JSON: {e}")))
            })
        });
        let check_args: ArgsCheck = Arc::new(|args: &Value| parse_args::<A>(args.clone()).map(|_| ()));
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

    /// Lets the responder to `initiating` answer some opening messages without running as a
    /// flow: `answer` looks at each opening message that carries a payload and may take it,
    /// returning the work that computes the single answer. The engine then sends that answer
    /// as the session's only and last message, writing it to the outbox in the same
    /// transaction that marks the opening message processed — no flow record, no journal. A
    /// crash before that transaction leaves the message unprocessed, so it is answered again
    /// after the restart: the work must be idempotent (giving the same answer, or an answer
    /// as good, when run again). Messages `answer` does not take go to the responder flow
    /// registered with [`Registry::responder`], which must exist.
    pub fn answering<F, Fut>(&mut self, initiating: &str, answer: F) -> &mut Registry
    where
        F: Fn(&X500Name, u32, &[u8]) -> Option<Fut> + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, String>> + Send + 'static,
    {
        let answer: AnswerFn = Arc::new(move |sender, version, payload| {
            answer(sender, version, payload).map(|work| Box::pin(work) as BoxFuture<'static, Result<Vec<u8>, String>>)
        });
        self.answers.insert(initiating.to_string(), answer);
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
    /// Sends `payload` to `to` on `session` under `id` as the answer to received message
    /// `answered`, and marks that processed; the messenger does both in one transaction
    /// ([`Messenger::answer`]). This default does them one after the other.
    fn answer(
        &self,
        answered: MessageId,
        id: MessageId,
        to: X500Name,
        session: u64,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), FlowError>> {
        Box::pin(async move {
            self.send(id, to, session, payload).await?;
            self.processed(vec![answered]).await
        })
    }
}

impl<S: MessageStore, C: Connector> Transport for Messenger<S, C> {
    fn send(&self, id: MessageId, to: X500Name, session: u64, payload: Vec<u8>) -> BoxFuture<'_, Result<(), FlowError>> {
        Box::pin(async move {
            let message = Outgoing { destination: to.clone(), session, topic: FLOW_TOPIC.into(), payload };
            match self.send_with_ids(vec![(id, message)]).await {
                Ok(_) => Ok(()),
                // Sent before the node died, not yet delivered: it is still in the outbox.
                Err(_) if matches!(self.in_outbox(&to, &id).await, Ok(true)) => Ok(()),
                Err(e) => Err(messaging_error(e)),
            }
        })
    }

    fn processed(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), FlowError>> {
        Box::pin(async move { Ok(Messenger::processed(self, &ids).await?) })
    }

    fn answer(
        &self,
        answered: MessageId,
        id: MessageId,
        to: X500Name,
        session: u64,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), FlowError>> {
        Box::pin(async move {
            let message = Outgoing { destination: to, session, topic: FLOW_TOPIC.into(), payload };
            Messenger::answer(self, answered, id, message).await.map_err(messaging_error)
        })
    }
}

/// A messenger's refusal as a flow error: the store's failure as such (it may be transient),
/// anything else (a message over the size limit) as invalid.
fn messaging_error(e: treaty_net::messaging::MessagingError) -> FlowError {
    match e {
        treaty_net::messaging::MessagingError::Store(e) => FlowError::Store(e),
        e => FlowError::Invalid(e.to_string()),
    }
}

/// [`FlowStore`] behind a pointer (its methods boxed).
pub(crate) trait DynStore: Send + Sync {
    fn create(&self, record: FlowRecord) -> BoxFuture<'_, Result<Created, StoreError>>;
    fn append<'a>(&'a self, id: FlowId, first: usize, entries: &'a [Entry]) -> BoxFuture<'a, Result<(), StoreError>>;
    fn journal(&self, id: FlowId) -> BoxFuture<'_, Result<Vec<Entry>, StoreError>>;
    fn end<'a>(&'a self, id: FlowId, end: End<'a>) -> BoxFuture<'a, Result<(), StoreError>>;
    fn set_status(
        &self,
        id: FlowId,
        status: FlowStatus,
        result: Option<Vec<u8>>,
        error: Option<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    fn get(&self, id: FlowId) -> BoxFuture<'_, Result<Option<FlowRecord>, StoreError>>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<FlowRecord>, StoreError>>;
    fn park<'a>(&'a self, parking: &'a Parking) -> BoxFuture<'a, Result<(), StoreError>>;
    fn parked_session<'a>(
        &'a self,
        party: &'a X500Name,
        session: u64,
        initiator: bool,
    ) -> BoxFuture<'a, Result<Option<FlowId>, StoreError>>;
    fn parked(&self) -> BoxFuture<'_, Result<Vec<ParkedFlow>, StoreError>>;
    fn awake(&self) -> BoxFuture<'_, Result<Vec<FlowRecord>, StoreError>>;
}

impl<T: FlowStore> DynStore for T {
    fn create(&self, record: FlowRecord) -> BoxFuture<'_, Result<Created, StoreError>> {
        Box::pin(FlowStore::create(self, record))
    }
    fn append<'a>(&'a self, id: FlowId, first: usize, entries: &'a [Entry]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(FlowStore::append(self, id, first, entries))
    }
    fn journal(&self, id: FlowId) -> BoxFuture<'_, Result<Vec<Entry>, StoreError>> {
        Box::pin(FlowStore::journal(self, id))
    }
    fn end<'a>(&'a self, id: FlowId, end: End<'a>) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(FlowStore::end(self, id, end))
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
    fn park<'a>(&'a self, parking: &'a Parking) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(FlowStore::park(self, parking))
    }
    fn parked_session<'a>(
        &'a self,
        party: &'a X500Name,
        session: u64,
        initiator: bool,
    ) -> BoxFuture<'a, Result<Option<FlowId>, StoreError>> {
        Box::pin(FlowStore::parked_session(self, party, session, initiator))
    }
    fn parked(&self) -> BoxFuture<'_, Result<Vec<ParkedFlow>, StoreError>> {
        Box::pin(FlowStore::parked(self))
    }
    fn awake(&self) -> BoxFuture<'_, Result<Vec<FlowRecord>, StoreError>> {
        Box::pin(FlowStore::awake(self))
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
    /// A flow waiting this long (for a message, or in a sleep that lasts longer) is parked:
    /// dropped from memory and brought back from its journal when its message or wake time
    /// comes. `None`: only the cap parks flows; zero: parked as soon as it waits.
    pub evict_after: Option<Duration>,
    /// Flows kept in memory at most: beyond this the longest-waiting flows are parked (a flow
    /// that is busy is never parked, so this is exceeded while more flows than this are busy).
    pub max_in_memory: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            retries: 5,
            retry_delay: Duration::from_millis(200),
            counterparty_check: None,
            evict_after: Some(Duration::from_secs(5)),
            max_in_memory: 10_000,
        }
    }
}

type SessionKey = (X500Name, u64, bool);

/// A message for a flow that is not in memory yet: session, id, what it carries.
type Pending = (u64, MessageId, Received);

/// The progress of one flow, as it is reported ([`FlowEngine::progress_of`]).
pub struct FlowProgress {
    shared: Arc<Shared>,
    id: FlowId,
    rx: broadcast::Receiver<(usize, String)>,
}

impl FlowProgress {
    /// The next step (journal index, step); `Lagged` if this watcher fell more than 64 steps
    /// behind, `Closed` never while the engine runs.
    pub async fn recv(&mut self) -> Result<(usize, String), broadcast::error::RecvError> {
        self.rx.recv().await
    }

    /// The next step if one was broadcast and not yet received.
    pub fn try_recv(&mut self) -> Result<(usize, String), broadcast::error::TryRecvError> {
        self.rx.try_recv()
    }
}

impl Drop for FlowProgress {
    fn drop(&mut self) {
        let mut w = lock(&self.shared.watched);
        // This watcher is the flow's last: nobody needs its steps sent any more.
        if w.get(&self.id).is_some_and(|tx| tx.receiver_count() <= 1) {
            w.remove(&self.id);
        }
    }
}

/// A flow the engine holds in memory.
enum Slot {
    /// Running or waiting: its state and its task.
    Live(Arc<Run>, Option<AbortHandle>),
    /// Being brought back from its journal; messages for it wait here meanwhile.
    Reviving(Vec<Pending>),
}

/// What the engine knows about its flows, under one lock: a message is routed, a flow parked
/// or brought back, each as one step under it.
#[derive(Default)]
struct Table {
    /// Flows in memory.
    runs: HashMap<FlowId, Slot>,
    /// How many of `runs` are `Reviving`.
    reviving: usize,
    /// Sessions of flows in memory → the flow.
    sessions: HashMap<SessionKey, FlowId>,
    /// Parked flows (not in `runs`) and their wake times: the whole in-memory cost of a parked
    /// flow. Its sessions are in the store.
    parked: HashMap<FlowId, Option<i64>>,
    /// Parked sleeping flows by wake time.
    sleepers: BTreeSet<(i64, FlowId)>,
    /// Flows in memory that wait, by when they began to (a sequence number): the cap parks
    /// the first ones.
    idle: BTreeSet<(u64, FlowId)>,
    next_idle: u64,
    /// Parkings the cap asked for that have not finished: the flows in `runs` whose
    /// `park_requested` is set. Changed under this lock only, in the same step as the flag, so
    /// a flow that has left `runs` is never still counted here (the cap would count it twice,
    /// ask one flow too few, and nothing would ask again once every flow waits).
    requested: usize,
}

impl Table {
    /// Removes a flow's slot and what routes to it (and the cap's request to park it, if any:
    /// parked, ended or killed, it is no longer in flight).
    fn remove(&mut self, id: FlowId) -> Option<Slot> {
        let slot = self.runs.remove(&id)?;
        match &slot {
            Slot::Live(run, _) => {
                if run.park_requested.swap(false, Ordering::SeqCst) {
                    self.requested = self.requested.saturating_sub(1);
                }
                for (party, session, initiator) in run.session_keys() {
                    if self.sessions.get(&(party.clone(), session, initiator)) == Some(&id) {
                        self.sessions.remove(&(party, session, initiator));
                    }
                }
                let seq = run.idle.swap(0, Ordering::SeqCst);
                if seq != 0 {
                    self.idle.remove(&(seq, id));
                }
            }
            Slot::Reviving(_) => self.reviving -= 1,
        }
        Some(slot)
    }

    /// Removes flow `id`'s `Reviving` slot, if it has one, and returns what waited in it.
    fn take_reviving(&mut self, id: FlowId) -> Vec<Pending> {
        if !matches!(self.runs.get(&id), Some(Slot::Reviving(_))) {
            return Vec::new();
        }
        match self.remove(id) {
            Some(Slot::Reviving(pending)) => pending,
            _ => Vec::new(),
        }
    }

    /// Hands an opening message to responder `id` if it is in memory — its payload queued for
    /// it (dropped there if it journaled it already) — and says whether the message must be
    /// marked processed here (one without a payload has done its work). `None`: not in memory.
    fn hand_to_responder(&mut self, id: FlowId, message: &InboundMessage, payload: &Option<Vec<u8>>) -> Option<bool> {
        match (self.runs.get_mut(&id), payload) {
            (Some(Slot::Live(run, _)), Some(p)) => run.push(message.session, message.id, Received::Data(p.clone())),
            (Some(Slot::Reviving(pending)), Some(p)) => pending.push((message.session, message.id, Received::Data(p.clone()))),
            (Some(_), None) => return Some(true),
            (None, _) => return None,
        }
        Some(false)
    }

    fn unpark(&mut self, id: FlowId) -> Option<Option<i64>> {
        let parked = self.parked.remove(&id)?;
        if let Some(wake) = parked {
            self.sleepers.remove(&(wake, id));
        }
        Some(parked)
    }

    fn park(&mut self, id: FlowId, wake: Option<i64>) {
        self.parked.insert(id, wake);
        if let Some(wake) = wake {
            self.sleepers.insert((wake, id));
        }
    }
}

pub(crate) struct Shared {
    pub(crate) me: X500Name,
    pub(crate) store: Arc<dyn DynStore>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) registry: Registry,
    pub(crate) counterparty_check: Option<CounterpartyCheck>,
    pub(crate) progress: broadcast::Sender<(FlowId, usize, String)>,
    /// Progress of single flows, for their watchers ([`FlowEngine::progress_of`]).
    pub(crate) watched: Mutex<HashMap<FlowId, broadcast::Sender<(usize, String)>>>,
    pub(crate) options: EngineOptions,
    table: Mutex<Table>,
    /// What [`FlowEngine::wait`] callers wait on, per flow: told when the flow leaves memory
    /// or its status changes. Per flow, so an ending flow wakes its own waiters only (with
    /// one shared signal, every waiter re-read its record whenever any flow changed).
    waiters: Mutex<HashMap<FlowId, Arc<Notify>>>,
    /// The ended records of flows that had waiters when they ended, until the last of those
    /// goes: waiters get them from here, not from the store. Changed under `waiters`' lock.
    ended: Mutex<HashMap<FlowId, FlowRecord>>,
    draining: AtomicBool,
    /// Wakes the alarm task when an earlier wake time is parked.
    alarm: Arc<Notify>,
    alarm_task: OnceLock<AbortHandle>,
    /// Received messages to mark processed, and whether a task is writing them: marks that
    /// need not hold anything up go out together, one write for all that came meanwhile.
    processed: Mutex<(Vec<MessageId>, bool)>,
    /// Answers being given without a flow ([`Registry::answering`]), by the message they
    /// answer: stopped by [`FlowEngine::shutdown`], as flows are.
    answering: Mutex<HashMap<MessageId, AbortHandle>>,
    stats: EngineStats,
}

/// Counts of what the engine has done since the node started ([`FlowEngine::stats`]), for
/// monitoring: they only grow.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Flows started by clients (RPC, the scheduler, applications), not counting a start a
    /// client id matched to an existing flow.
    pub started: AtomicU64,
    /// Responder flows started by a counterparty's opening message.
    pub responders: AtomicU64,
    /// Flows that ended completed.
    pub completed: AtomicU64,
    /// Flows that ended failed (their error went to their counterparties).
    pub failed: AtomicU64,
    /// Times a flow was hospitalized (a transient failure after its retries, or a code change):
    /// it waits for an operator's retry.
    pub hospitalized: AtomicU64,
}

impl Shared {
    /// Marks `ids` processed in the background, with any others queued meanwhile. Used where
    /// losing the mark in a crash is harmless: the message comes back at the next start and
    /// is dropped again (journaled already, or for a flow that has ended).
    pub(crate) fn processed_later(self: &Arc<Self>, ids: impl IntoIterator<Item = MessageId>) {
        let mut q = lock(&self.processed);
        q.0.extend(ids);
        if q.1 || q.0.is_empty() {
            return;
        }
        q.1 = true;
        drop(q);
        let shared = self.clone();
        tokio::spawn(async move {
            loop {
                let ids = {
                    let mut q = lock(&shared.processed);
                    if q.0.is_empty() {
                        q.1 = false;
                        return;
                    }
                    std::mem::take(&mut q.0)
                };
                if let Err(e) = shared.transport.processed(ids).await {
                    tracing::debug!("marking received messages processed failed (they will be dropped when redelivered): {e}");
                }
            }
        });
    }

    pub(crate) fn bind(&self, party: X500Name, session: u64, initiator: bool, flow: FlowId) {
        lock(&self.table).sessions.insert((party, session, initiator), flow);
    }

    /// Flow `id` changed: its waiters look again.
    fn changed(&self, id: FlowId) {
        if let Some(n) = lock(&self.waiters).get(&id) {
            n.notify_waiters();
        }
    }

    /// Any flow may have changed (after start-up): every waiter looks again.
    fn all_changed(&self) {
        for n in lock(&self.waiters).values() {
            n.notify_waiters();
        }
    }

    /// The flow has begun to wait (idempotent while it waits).
    pub(crate) fn idle(&self, run: &Arc<Run>) {
        let mut t = lock(&self.table);
        if run.idle.load(Ordering::SeqCst) == 0 && matches!(t.runs.get(&run.id), Some(Slot::Live(r, _)) if Arc::ptr_eq(r, run)) {
            t.next_idle += 1;
            let seq = t.next_idle;
            t.idle.insert((seq, run.id));
            run.idle.store(seq, Ordering::SeqCst);
        }
        self.over_cap(&mut t);
    }

    /// The flow no longer waits.
    pub(crate) fn not_idle(&self, run: &Run) {
        let mut t = lock(&self.table);
        let seq = run.idle.swap(0, Ordering::SeqCst);
        if seq != 0 {
            t.idle.remove(&(seq, run.id));
        }
    }

    /// Over the cap, asks the longest-waiting flows (not asked yet) to park.
    fn over_cap(&self, t: &mut Table) {
        let mut excess = t.runs.len().saturating_sub(self.options.max_in_memory).saturating_sub(t.requested);
        if excess == 0 {
            return;
        }
        let mut asked = Vec::new();
        for (_, id) in &t.idle {
            if excess == 0 {
                break;
            }
            if let Some(Slot::Live(run, _)) = t.runs.get(id)
                && !run.park_requested.swap(true, Ordering::SeqCst)
            {
                asked.push(run.clone());
                excess -= 1;
            }
        }
        t.requested += asked.len();
        for run in asked {
            run.park_now.notify_one();
        }
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
            watched: Mutex::new(HashMap::new()),
            options,
            table: Mutex::new(Table::default()),
            waiters: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            alarm: Arc::new(Notify::new()),
            alarm_task: OnceLock::new(),
            processed: Mutex::new((Vec::new(), false)),
            answering: Mutex::new(HashMap::new()),
            stats: EngineStats::default(),
        };
        FlowEngine { shared: Arc::new(shared) }
    }

    /// What the engine has done since it was created.
    pub fn stats(&self) -> &EngineStats {
        &self.shared.stats
    }

    /// Flows in memory now (running, or waiting and not parked yet), and flows parked (their
    /// state in the store until a message or their wake time brings them back).
    pub fn flow_counts(&self) -> (usize, usize) {
        let t = lock(&self.shared.table);
        (t.runs.len(), t.parked.len())
    }

    /// Progress steps of every flow as they are reported: flow, journal index, step.
    pub fn progress(&self) -> broadcast::Receiver<(FlowId, usize, String)> {
        self.shared.progress.subscribe()
    }

    /// Progress steps of flow `id` from now on (journal index, step): its own only, so a
    /// client watching one flow is not woken by every other flow's progress (with a few
    /// hundred flows watched at once, that was most of a node's CPU).
    pub fn progress_of(&self, id: FlowId) -> FlowProgress {
        let rx = lock(&self.shared.watched).entry(id).or_insert_with(|| broadcast::channel(64).0).subscribe();
        FlowProgress { shared: self.shared.clone(), id, rx }
    }

    /// Whether flow `id` is in flight here (running, waiting or parked): it exists and has
    /// not ended.
    pub fn in_flight(&self, id: FlowId) -> bool {
        let t = lock(&self.shared.table);
        t.runs.contains_key(&id) || t.parked.contains_key(&id)
    }

    /// A flow's journal (for a watcher that joins late: its progress steps so far).
    /// While the flow runs this is its journal in memory, steps not yet written included (a
    /// step is there before its progress is broadcast).
    pub async fn journal(&self, id: FlowId) -> Result<Vec<Entry>, FlowError> {
        let live = match lock(&self.shared.table).runs.get(&id) {
            Some(Slot::Live(run, _)) => Some(lock(&run.journal).clone()),
            _ => None,
        };
        match live {
            Some(journal) => Ok(journal),
            None => Ok(self.shared.store.journal(id).await?),
        }
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

    /// Flows still running, in memory or parked (for draining: done when this is zero).
    pub fn running(&self) -> usize {
        let t = lock(&self.shared.table);
        t.runs.len() + t.parked.len()
    }

    /// Flows in memory now (running, waiting, or being brought back).
    pub fn resident(&self) -> usize {
        lock(&self.shared.table).runs.len()
    }

    /// Flows parked: waiting for a message or a time with nothing of them in memory but their id.
    pub fn parked(&self) -> usize {
        lock(&self.shared.table).parked.len()
    }

    /// Whether flow `id` is in memory now.
    pub fn is_resident(&self, id: FlowId) -> bool {
        lock(&self.shared.table).runs.contains_key(&id)
    }

    /// Restarts every runnable flow that is not parked from its journal, and indexes the
    /// parked ones (they come back when their message or wake time comes). A parked flow whose
    /// registered version differs from the one that parked it, or that is no longer
    /// registered, is restarted instead, so a code change shows at start-up. Returns how many
    /// flows were restarted.
    pub async fn resume(&self) -> Result<usize, FlowError> {
        let mut replay = Vec::new();
        let sleepers = {
            let parked = self.shared.store.parked().await?;
            let mut t = lock(&self.shared.table);
            for p in parked {
                let registered = if p.responder {
                    self.shared.registry.responders.contains_key(&p.name)
                } else {
                    self.shared.registry.get(&p.name).is_some_and(|def| def.version == p.version)
                };
                if !registered {
                    replay.push(p.id);
                } else if !t.runs.contains_key(&p.id) {
                    t.park(p.id, p.wake_at);
                }
            }
            !t.sleepers.is_empty()
        };
        if sleepers {
            self.ensure_alarm();
        }
        let mut records = self.shared.store.awake().await?;
        for id in replay {
            records.extend(self.shared.store.get(id).await?);
        }
        let mut n = 0;
        for record in records {
            if lock(&self.shared.table).runs.contains_key(&record.id) {
                continue;
            }
            let journal = self.shared.store.journal(record.id).await?;
            match self.def_for(&record) {
                Some(def) => {
                    self.install(record, journal, def, None, false);
                    n += 1;
                }
                None => self.unregistered(&record).await?,
            }
        }
        self.shared.all_changed();
        Ok(n)
    }

    fn def_for(&self, record: &FlowRecord) -> Option<Arc<FlowDef>> {
        if record.initiator.is_some() {
            self.shared.registry.responders.get(&record.name).cloned()
        } else {
            self.shared.registry.get(&record.name)
        }
    }

    async fn unregistered(&self, record: &FlowRecord) -> Result<(), FlowError> {
        let error = format!("flow {} is no longer registered on this node", record.name);
        self.shared.store.set_status(record.id, FlowStatus::Hospitalized, None, Some(error)).await?;
        Ok(())
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
            // The same client's retry gets its flow; a start of another flow under the same
            // client id (another client's, or a mistake) is refused rather than answered with
            // a flow the caller did not ask for.
            Created::Existing(id) => match self.shared.store.get(id).await? {
                Some(existing) if existing.name != name => Err(FlowError::ClientIdTaken {
                    client_id: record.client_id.unwrap_or_default(),
                    id: id.to_string(),
                    existing: existing.name,
                    requested: name.to_string(),
                }),
                _ => Ok(id),
            },
            Created::New => {
                self.shared.stats.started.fetch_add(1, Ordering::Relaxed);
                let id = record.id;
                self.install(record, Vec::new(), def, None, false);
                self.shared.changed(id);
                Ok(id)
            }
        }
    }

    /// Puts a flow in memory and starts its task: it runs from the start, replaying `journal`.
    /// `parked_len`: the journal length of a parking of it that holds in the store. When
    /// `reviving`, messages that came while its journal was read are handed to it — and if its
    /// `Reviving` slot is gone (killed meanwhile), nothing is started.
    fn install(
        &self,
        record: FlowRecord,
        journal: Vec<Entry>,
        def: Arc<FlowDef>,
        parked_len: Option<usize>,
        reviving: bool,
    ) -> Option<Arc<Run>> {
        let id = record.id;
        let run = Arc::new(Run::new(&record, journal));
        // A new run: an ended record kept from an earlier one is stale.
        lock(&self.shared.ended).remove(&id);
        *lock(&run.parked_len) = parked_len;
        let args: Value = serde_json::from_slice(&record.args).unwrap_or(Value::Null);
        let mut t = lock(&self.shared.table);
        match t.remove(id) {
            Some(Slot::Reviving(pending)) => {
                for (session, message, received) in pending {
                    run.push(session, message, received);
                }
            }
            None if reviving => return None,
            _ => {}
        }
        t.unpark(id);
        // Route every session the journal opened (and a responder's own) to this flow.
        for key in run.session_keys() {
            t.sessions.insert(key, id);
        }
        let engine = self.clone();
        let task_run = run.clone();
        let task = tokio::spawn(async move { engine.drive(task_run, def, args).await });
        t.runs.insert(id, Slot::Live(run.clone(), Some(task.abort_handle())));
        self.shared.over_cap(&mut t);
        Some(run)
    }

    async fn drive(&self, run: Arc<Run>, def: Arc<FlowDef>, args: Value) {
        let mut attempt = 0;
        let outcome = loop {
            *lock(&run.cursor) = 0;
            let ctx = FlowContext { run: run.clone(), shared: self.shared.clone() };
            let mut flow = (def.run)(ctx, args.clone());
            let result = loop {
                tokio::select! {
                    biased;
                    () = run.park_now.notified() => match self.park(&run).await {
                        // Parked: the flow is dropped where it waits, and comes back by replay.
                        Ok(true) => return,
                        Ok(false) => {}
                        Err(e) => tracing::warn!("flow {} ({}) could not be parked and stays in memory: {e}", run.id, run.name),
                    },
                    result = &mut flow => break result,
                }
            };
            match result {
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

    /// Parks `run` if it waits with nothing queued: writes its parking, then — if still no
    /// message has come for it — drops it from memory. Runs in the flow's own task between two
    /// polls of the flow, so the flow cannot move meanwhile; only messages can arrive, and they
    /// are queued under the table lock, which the last step holds. Returns whether it parked.
    ///
    /// If the cap asked for this parking and it did not happen (a message came meanwhile, or
    /// the parking could not be written), the flow leaves the cap's index of waiting flows until
    /// it waits again, and the cap asks another flow in its place: nothing else would, once
    /// every flow waits. (A parking that happened settled the request as the flow left memory.)
    async fn park(&self, run: &Arc<Run>) -> Result<bool, FlowError> {
        let parked = self.try_park(run).await;
        let mut t = lock(&self.shared.table);
        if run.park_requested.swap(false, Ordering::SeqCst) {
            t.requested = t.requested.saturating_sub(1);
            let seq = run.idle.swap(0, Ordering::SeqCst);
            if seq != 0 {
                t.idle.remove(&(seq, run.id));
            }
            self.shared.over_cap(&mut t);
        }
        parked
    }

    async fn try_park(&self, run: &Arc<Run>) -> Result<bool, FlowError> {
        let Some(wait) = run.parkable() else { return Ok(false) };
        let journal_len = lock(&run.journal).len();
        if *lock(&run.cursor) != journal_len {
            return Ok(false);
        }
        let wake_at = match wait {
            Wait::Message => None,
            Wait::Sleep(until) | Wait::MessageUntil(until) => Some(until),
        };
        // The parking names the journal's length in the store: write what is pending first.
        run.flush(&self.shared).await?;
        if *lock(&run.parked_len) != Some(journal_len) {
            let parking = Parking { id: run.id, journal_len, wake_at, sessions: run.session_keys() };
            self.shared.store.park(&parking).await?;
            *lock(&run.parked_len) = Some(journal_len);
        }
        {
            let mut t = lock(&self.shared.table);
            // A message that came while the parking was written is queued: the flow carries
            // on (and the parking goes stale as soon as it journals that message).
            if run.parkable().is_none() {
                return Ok(false);
            }
            // Killed (or shut down) meanwhile.
            if !matches!(t.runs.get(&run.id), Some(Slot::Live(r, _)) if Arc::ptr_eq(r, run)) {
                return Ok(false);
            }
            t.remove(run.id);
            t.park(run.id, wake_at);
        }
        if wake_at.is_some() {
            self.ensure_alarm();
            self.shared.alarm.notify_one();
        }
        Ok(true)
    }

    /// Brings flow `id` back into memory from its journal (if it is not there already), with
    /// `messages` for it. Parked flows come back this way when a message or their wake time
    /// comes; the flow replays to where it waited and carries on live.
    async fn revive(&self, id: FlowId, messages: Vec<Pending>) -> Result<(), FlowError> {
        let was_parked = {
            let mut t = lock(&self.shared.table);
            match t.runs.get_mut(&id) {
                Some(Slot::Live(run, _)) => {
                    for (session, message, received) in messages {
                        run.push(session, message, received);
                    }
                    return Ok(());
                }
                Some(Slot::Reviving(pending)) => {
                    pending.extend(messages);
                    return Ok(());
                }
                None => {}
            }
            let was_parked = t.unpark(id);
            t.runs.insert(id, Slot::Reviving(messages));
            t.reviving += 1;
            was_parked
        };
        let loaded = async {
            let record = self.shared.store.get(id).await?;
            let journal = match &record {
                Some(r) if r.status == FlowStatus::Runnable => self.shared.store.journal(id).await?,
                _ => Vec::new(),
            };
            Ok::<_, FlowError>((record, journal))
        }
        .await;
        let give_up = |this: &FlowEngine, back: Option<Option<i64>>| {
            let mut t = lock(&this.shared.table);
            let pending = t.take_reviving(id);
            if let Some(wake) = back {
                t.park(id, wake);
            }
            pending
        };
        match loaded {
            Err(e) => {
                // Its messages stay unprocessed in the inbox: they come back at the next start.
                give_up(self, was_parked);
                Err(e)
            }
            Ok((Some(record), journal)) if record.status == FlowStatus::Runnable => match self.def_for(&record) {
                Some(def) => {
                    let parked_len = was_parked.map(|_| journal.len());
                    self.install(record, journal, def, parked_len, true);
                    Ok(())
                }
                None => {
                    give_up(self, None);
                    self.unregistered(&record).await
                }
            },
            Ok(_) => {
                // It has ended (or never existed here): its messages have nothing left to do.
                let pending = give_up(self, None);
                if pending.is_empty() {
                    Ok(())
                } else {
                    self.shared.transport.processed(pending.into_iter().map(|(_, m, _)| m).collect()).await
                }
            }
        }
    }

    /// Starts the task that wakes parked sleeping flows, once.
    fn ensure_alarm(&self) {
        self.shared.alarm_task.get_or_init(|| {
            let shared = Arc::downgrade(&self.shared);
            let alarm = self.shared.alarm.clone();
            tokio::spawn(alarm_clock(shared, alarm)).abort_handle()
        });
    }

    /// Sends `message` on each of `run`'s open sessions but those in `told` (whose last
    /// message carried it already: a `Final`).
    async fn tell_sessions(
        &self,
        run: &Run,
        message: SessionMessage,
        tag: &str,
        told: &HashSet<(u64, X500Name, bool)>,
    ) -> Result<(), FlowError> {
        // A counterparty that has ended (its `End` waits in this flow's queue, or the flow
        // received it) would drop the message: not sending it saves an outbox write, a hop,
        // an inbox write and a delete (a notary's session, for one, has always ended by the
        // time a payer finishes). Only an optimisation: an `End` queued but lost in a restart
        // means the message goes out, and is dropped on arrival.
        let ended = run.ended_sessions();
        for (session, party, to_initiator) in run.open_sessions() {
            if ended.contains(&session) || told.contains(&(session, party.clone(), to_initiator)) {
                continue;
            }
            let id = MessageId::derived(&MessageId(run.id.0), &format!("{tag}-{session}"));
            let envelope = Envelope { to_initiator, message: message.clone() };
            self.shared.transport.send(id, party, session, encoding::encode(&envelope)).await?;
        }
        Ok(())
    }

    async fn finish(&self, run: &Run, outcome: Result<Value, FlowError>) -> Result<(), FlowError> {
        // What it sent goes out first (its journal's `Sent` steps must not be stored before
        // their messages); a session whose last message is data gets the end with it.
        let told = if outcome.is_ok() { run.finalise_outgoing() } else { HashSet::new() };
        run.send_outgoing(&*self.shared.transport).await?;
        let (status, result, error) = match outcome {
            Ok(value) => {
                self.tell_sessions(run, SessionMessage::End, "end", &told).await?;
                (FlowStatus::Completed, Some(serde_json::to_vec(&value).unwrap_or_default()), None)
            }
            Err(e @ FlowError::CodeChanged { .. }) => (FlowStatus::Hospitalized, None, Some(e.to_string())),
            Err(e) if e.is_transient() => (FlowStatus::Hospitalized, None, Some(e.to_string())),
            Err(e) => {
                self.tell_sessions(run, SessionMessage::Error(e.for_counterparty()), "error", &told).await?;
                (FlowStatus::Failed, None, Some(e.to_string()))
            }
        };
        let (journal_from, journal) = run.pending();
        let parked = run.resumed || lock(&run.parked_len).is_some();
        let updated_at = crate::now_micros();
        let ended = FlowRecord { status, result: result.clone(), error: error.clone(), updated_at, ..run.record.clone() };
        self.shared.store.end(run.id, End { journal_from, journal: &journal, status, result, error, parked, updated_at }).await?;
        match status {
            FlowStatus::Completed => &self.shared.stats.completed,
            FlowStatus::Failed => &self.shared.stats.failed,
            _ => &self.shared.stats.hospitalized,
        }
        .fetch_add(1, Ordering::Relaxed);
        crate::context::failpoint();
        {
            // Its waiters (woken by `forget`) take the record from here rather than reading it
            // back from the store.
            let waiters = lock(&self.shared.waiters);
            if waiters.contains_key(&run.id) {
                lock(&self.shared.ended).insert(run.id, ended);
            }
        }
        self.forget(run.id, Some(run));
        if status != FlowStatus::Hospitalized {
            // Messages still queued for it (a counterparty's `End` it never read, say) are for
            // a flow that has ended, as any arriving from now on are: marked processed, or
            // they would wait in the inbox until the next start. Out of the engine's table now,
            // the run's queue takes no more. An id one of whose halves (`Final`) it received
            // is marked already.
            let left: Vec<MessageId> = {
                let seen = lock(&run.seen);
                lock(&run.inbox)
                    .queues
                    .values()
                    .flatten()
                    .map(|(id, _)| *id)
                    .filter(|id| !seen.contains(&(*id, false)) && !seen.contains(&(*id, true)))
                    .collect()
            };
            if !left.is_empty() {
                self.shared.processed_later(left);
            }
        }
        Ok(())
    }

    /// Drops what the engine holds of a flow that has ended — of `run` only, if given: a flow
    /// retried meanwhile runs as a new run that must stay.
    fn forget(&self, id: FlowId, run: Option<&Run>) {
        {
            let mut t = lock(&self.shared.table);
            let ours = match (run, t.runs.get(&id)) {
                (Some(run), Some(Slot::Live(r, _))) => std::ptr::eq(Arc::as_ptr(r), run),
                (Some(_), Some(Slot::Reviving(_))) => false,
                _ => true,
            };
            if ours {
                t.remove(id);
                t.unpark(id);
            }
        }
        self.shared.changed(id);
    }

    /// Hands the engine a message from the messenger (topic [`FLOW_TOPIC`]). A message for a
    /// parked flow brings it back from its journal first.
    pub async fn deliver(&self, message: InboundMessage) -> Result<(), FlowError> {
        let envelope: Envelope = match encoding::decode(&message.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("dropping a malformed flow message from {}: {e}", message.sender);
                return self.shared.transport.processed(vec![message.id]).await;
            }
        };
        let (session, id) = (message.session, message.id);
        let pending: Vec<Pending> = match envelope.message {
            SessionMessage::Init { flow, version, payload } => return self.open_responder(message, flow, version, payload).await,
            SessionMessage::Data(bytes) => vec![(session, id, Received::Data(bytes))],
            SessionMessage::Error(m) => vec![(session, id, Received::Error(m))],
            SessionMessage::End => vec![(session, id, Received::Ended)],
            // Queued as the two it stands for, under one id (the flow's journal tells the
            // halves apart by their outcome).
            SessionMessage::Final(bytes) => vec![(session, id, Received::Data(bytes)), (session, id, Received::Ended)],
        };
        let key = (message.sender.clone(), message.session, envelope.to_initiator);
        let maybe_parked = {
            let mut t = lock(&self.shared.table);
            let flow = t.sessions.get(&key).copied();
            match flow.and_then(|f| t.runs.get_mut(&f)) {
                Some(Slot::Live(run, _)) => {
                    for (session, id, received) in pending {
                        run.push(session, id, received);
                    }
                    return Ok(());
                }
                Some(Slot::Reviving(waiting)) => {
                    waiting.extend(pending);
                    return Ok(());
                }
                None => !t.parked.is_empty() || t.reviving > 0,
            }
        };
        // Not in memory: a parked flow's, or one that has ended.
        let parked = if maybe_parked { self.shared.store.parked_session(&key.0, key.1, key.2).await? } else { None };
        match parked {
            Some(flow) => self.revive(flow, pending).await,
            None => {
                tracing::debug!("message from {} for session {:x} has no running flow; dropped", message.sender, message.session);
                self.shared.processed_later([message.id]);
                Ok(())
            }
        }
    }

    /// Starts the responder an `Init` asks for. Creating its record waits for a commit, so it
    /// runs in a task of its own: the messages of every other flow are not held up behind it
    /// (they were, one commit per new responder, when the node's dispatcher awaited it here).
    /// Meanwhile the responder's slot holds what comes for its session, as for a flow being
    /// revived.
    async fn open_responder(&self, message: InboundMessage, flow: String, version: u32, payload: Option<Vec<u8>>) -> Result<(), FlowError> {
        let id = FlowId::responder_for(&message.id);
        let existing = lock(&self.shared.table).hand_to_responder(id, &message, &payload);
        if let Some(mark) = existing {
            if mark {
                self.shared.processed_later([message.id]);
            }
            return Ok(());
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
        if let Some(answer) = self.shared.registry.answers.get(&flow)
            && let Some(work) = payload.as_deref().and_then(|p| answer(&message.sender, version, p))
        {
            let engine = self.clone();
            let answered = message.id;
            // The handle goes in before the task can take it out: both hold the lock.
            let mut answering = lock(&self.shared.answering);
            let task = tokio::spawn(async move {
                if let Err(e) = engine.answer(message, work).await {
                    tracing::warn!("an answer could not be sent (its opening message stays in the inbox): {e}");
                }
                lock(&engine.shared.answering).remove(&answered);
            });
            answering.insert(answered, task.abort_handle());
            return Ok(());
        }
        let key: SessionKey = (message.sender.clone(), message.session, false);
        {
            let mut t = lock(&self.shared.table);
            // In memory since the look above (brought back meanwhile): handed over as above.
            if let Some(mark) = t.hand_to_responder(id, &message, &payload) {
                drop(t);
                if mark {
                    self.shared.processed_later([message.id]);
                }
                return Ok(());
            }
            let first: Vec<Pending> = payload.iter().map(|p| (message.session, message.id, Received::Data(p.clone()))).collect();
            t.runs.insert(id, Slot::Reviving(first));
            t.reviving += 1;
            t.sessions.insert(key.clone(), id);
        }
        let engine = self.clone();
        tokio::spawn(async move {
            if let Err(e) = engine.create_responder(id, message, flow, version, payload.is_some(), def).await {
                tracing::warn!("a responder could not be started (its opening message stays in the inbox): {e}");
            }
        });
        Ok(())
    }

    /// Records and starts responder `id` whose slot [`Self::open_responder`] holds.
    async fn create_responder(
        &self,
        id: FlowId,
        message: InboundMessage,
        flow: String,
        version: u32,
        had_payload: bool,
        def: Arc<FlowDef>,
    ) -> Result<(), FlowError> {
        let key: SessionKey = (message.sender.clone(), message.session, false);
        // What came for it meanwhile, once it will not run after all.
        let give_up = |this: &FlowEngine| {
            let mut t = lock(&this.shared.table);
            if t.sessions.get(&key) == Some(&id) {
                t.sessions.remove(&key);
            }
            t.take_reviving(id)
        };
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
        // Inserted unless its record exists (no read first: one pooled read per responder
        // fewer, and a redelivered opening message is rare).
        match self.shared.store.create(record.clone()).await {
            Ok(Created::New) => {
                self.shared.stats.responders.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Created::Existing(_)) => {
                // Started before and ended, parked or held: the opening message has done its
                // work (a responder journals its opening payload before it can be parked),
                // and what came with it is for a flow that is not running here.
                let pending = give_up(self);
                self.shared.processed_later(pending.into_iter().map(|(_, m, _)| m).chain([message.id]));
                return Ok(());
            }
            Err(e) => {
                // Its messages stay unprocessed in the inbox: they come back at the next start.
                give_up(self);
                return Err(e.into());
            }
        }
        if self.install(record, Vec::new(), def, None, true).is_none() {
            // Killed meanwhile: nothing runs it.
            return Ok(());
        }
        if !had_payload {
            self.shared.processed_later([message.id]);
        }
        self.shared.changed(id);
        Ok(())
    }

    /// Answers opening message `message` with what `work` computes ([`Registry::answering`]):
    /// the session's only message back, written with the mark that `message` is processed.
    async fn answer(&self, message: InboundMessage, work: BoxFuture<'static, Result<Vec<u8>, String>>) -> Result<(), FlowError> {
        // A responder flow that took this message before (this node ran a version that did not
        // answer such messages at once, and stopped before marking it processed) has answered
        // it or will: it is not answered twice.
        if self.shared.store.get(FlowId::responder_for(&message.id)).await?.is_some() {
            self.shared.processed_later([message.id]);
            return Ok(());
        }
        let reply = match work.await {
            Ok(bytes) => SessionMessage::Final(bytes),
            Err(reason) => SessionMessage::Error(reason),
        };
        let reply = encoding::encode(&Envelope { to_initiator: true, message: reply });
        let id = MessageId::derived(&message.id, "answer");
        self.shared.transport.answer(message.id, id, message.sender, message.session, reply).await
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
        let notify = lock(&self.shared.waiters).entry(id).or_default().clone();
        // The last waiter of a flow removes its signal, however this call ends.
        struct Unregister<'a>(&'a Shared, FlowId, Arc<Notify>);
        impl Drop for Unregister<'_> {
            fn drop(&mut self) {
                let mut w = lock(&self.0.waiters);
                // Held by the map and by this waiter only: nobody else waits on it.
                if Arc::strong_count(&self.2) <= 2 {
                    w.remove(&self.1);
                    lock(&self.0.ended).remove(&self.1);
                }
            }
        }
        let registered = Unregister(&self.shared, id, notify);
        loop {
            let changed = registered.2.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // In flight first: a flow leaves memory (and the parked set) only after its final
            // status is stored — parking moves it from one to the other in one step — so a
            // record read after seeing it gone is final.
            let in_flight = self.in_flight(id);
            // A flow in flight has not ended (its final status is stored before it leaves):
            // the record is read once, when it has.
            if !in_flight {
                if let Some(ended) = lock(&self.shared.ended).get(&id) {
                    return Ok(ended.clone());
                }
                return self.shared.store.get(id).await?.ok_or_else(|| FlowError::Invalid(format!("no flow {id} on this node")));
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), changed).await;
        }
    }

    /// Ends a flow: its counterparties are told it was killed.
    pub async fn kill(&self, id: FlowId) -> Result<FlowRecord, FlowError> {
        let record = self.shared.store.get(id).await?.ok_or_else(|| FlowError::Invalid(format!("no flow {id} on this node")))?;
        if record.status.is_final() {
            return Err(FlowError::Invalid(format!("flow {id} has already ended ({})", record.status.as_str())));
        }
        let slot = lock(&self.shared.table).remove(id);
        let run = match slot {
            Some(Slot::Live(run, task)) => {
                if let Some(t) = task {
                    t.abort();
                }
                run
            }
            // Parked, being brought back, or not running: its sessions are in its journal. One it
            // opened may have been opened on the wire without a journaled step (an initiator
            // that received first), so tell them all: a counterparty that never heard of a
            // session drops the message.
            _ => {
                let journal = self.shared.store.journal(id).await?;
                let run = Run::new(&record, journal);
                run.assume_opened();
                Arc::new(run)
            }
        };
        self.tell_sessions(&run, SessionMessage::Error(FlowError::Killed.for_counterparty()), "error", &HashSet::new()).await?;
        self.shared.store.set_status(id, FlowStatus::Killed, None, Some(FlowError::Killed.to_string())).await?;
        self.forget(id, None);
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
        self.install(record, journal, def, None, false);
        self.shared.changed(id);
        Ok(())
    }

    /// Stops every running flow's task and the alarm of parked sleeping flows (the node is
    /// shutting down); they resume from their journals at the next start.
    pub fn shutdown(&self) {
        let mut t = lock(&self.shared.table);
        for (_, slot) in t.runs.drain() {
            if let Slot::Live(_, Some(task)) = slot {
                task.abort();
            }
        }
        t.reviving = 0;
        t.requested = 0;
        t.sessions.clear();
        t.idle.clear();
        if let Some(alarm) = self.shared.alarm_task.get() {
            alarm.abort();
        }
        drop(t);
        for (_, task) in lock(&self.shared.answering).drain() {
            task.abort();
        }
    }
}

/// Wakes parked sleeping flows at their wake times: one task for all of them, sleeping until
/// the earliest (or until an earlier one is parked). Holds the engine only while it works.
async fn alarm_clock(shared: Weak<Shared>, alarm: Arc<Notify>) {
    loop {
        let notified = alarm.notified();
        let next = {
            let Some(shared) = shared.upgrade() else { return };
            let engine = FlowEngine { shared };
            let now = crate::now_micros();
            let due: Vec<FlowId> = {
                let t = lock(&engine.shared.table);
                t.sleepers.iter().take_while(|(wake, _)| *wake <= now).map(|(_, id)| *id).collect()
            };
            for id in due {
                if let Err(e) = engine.revive(id, Vec::new()).await {
                    tracing::warn!("flow {id} could not be woken, trying again in a second: {e}");
                    let mut t = lock(&engine.shared.table);
                    if let Some(wake) = t.parked.get(&id).copied().flatten() {
                        t.sleepers.remove(&(wake, id));
                        t.park(id, Some(now + 1_000_000));
                    }
                }
            }
            lock(&engine.shared.table).sleepers.first().map(|(wake, _)| *wake)
        };
        match next {
            Some(wake) => {
                let wait = Duration::from_micros(wake.saturating_sub(crate::now_micros()).max(0).unsigned_abs());
                let _ = tokio::time::timeout(wait, notified).await;
            }
            None => notified.await,
        }
    }
}

/// A flow's JSON arguments as an `A`; an error names where in them it is (`anonymous: invalid
/// type: string "yes", expected a boolean`), not only what (serde_json's own error has no path).
fn parse_args<A: DeserializeOwned>(args: Value) -> Result<A, String> {
    serde_path_to_error::deserialize(args).map_err(|e| match e.path().to_string().as_str() {
        "." => e.inner().to_string(),
        path => format!("{path}: {}", e.inner()),
    })
}
