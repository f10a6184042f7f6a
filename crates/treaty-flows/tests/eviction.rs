//! Parked flows: a flow waiting for a message or a time is dropped from memory and brought
//! back by replaying its journal when the message (or the time) comes — exactly once, with no
//! message lost, however the message and the parking race. Over the simulated network with
//! memory and SQLite stores, and on one engine driven directly (a fake transport, and a store
//! whose parking write the test can hold) for the races.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
mod common;

use common::{ALICE, BOB, Directory, HookedParking, Node, ParkHook, finished, name, result};
use treaty_core::{X500Name, encoding};
use treaty_flows::protocol::{Envelope, FLOW_TOPIC, SessionMessage};
use treaty_flows::*;
use treaty_net::messaging::{InboundMessage, MemoryMessageStore, MessageId, StoreError};
use treaty_net::sim::SimNetwork;
use treaty_storage::Database;

fn parked_at_once() -> EngineOptions {
    EngineOptions { evict_after: Some(Duration::ZERO), ..EngineOptions::default() }
}

/// Waits (up to 20 s) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let began = Instant::now();
    while !done() {
        assert!(began.elapsed() < Duration::from_secs(20), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn received(journal: &[Entry]) -> Vec<MessageId> {
    journal.iter().filter_map(|e| if let Entry::Received { message, .. } = e { Some(*message) } else { None }).collect()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("treaty-flows-eviction-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn sqlite(dir: &std::path::Path) -> (Database, Arc<SqlFlowStore>) {
    let db = Database::open("sqlite://node.db", dir).await.unwrap();
    let store = Arc::new(SqlFlowStore::open(&db).await.unwrap());
    (db, store)
}

// ---------------------------------------------------------------------------------------------
// Two nodes over the simulated network (the shared harness).

/// Flows whose outside effects are counted by journaled side effects, so replays (which every
/// revival is) do not count twice.
#[derive(Default)]
struct Knobs {
    /// Side effects that really ran, by key.
    effects: Mutex<HashMap<String, u32>>,
    /// Bob's "Ask" responder takes a permit before it answers.
    gate: Option<Arc<Semaphore>>,
    /// Calls of a flow body (a replay calls it again).
    bodies: AtomicU32,
}

impl Knobs {
    fn ran(&self, key: &str) -> u32 {
        self.effects.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

async fn effect(ctx: &FlowContext, knobs: &Arc<Knobs>, key: &str) -> Result<u32, FlowError> {
    let k = knobs.clone();
    ctx.side_effect(key, |idempotency| async move {
        let mut effects = k.effects.lock().unwrap();
        let n = effects.entry(idempotency).or_default();
        *n += 1;
        Ok(*n)
    })
    .await
}

fn session_of(ctx: &FlowContext) -> Result<Session, FlowError> {
    ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))
}

fn party(to: &str) -> Result<X500Name, FlowError> {
    to.parse().map_err(|e| FlowError::Exception(format!("{e}")))
}

fn registry(knobs: Arc<Knobs>) -> Registry {
    let mut r = Registry::new();
    // Ask: send a question, wait for the answer (Bob may take his time).
    let k = knobs.clone();
    r.flow("Ask", 1, move |ctx: FlowContext, to: String| {
        let k = k.clone();
        async move {
            k.bodies.fetch_add(1, Ordering::SeqCst);
            let session = ctx.initiate(&party(&to)?).await?;
            let answer: String = ctx.send_and_receive(&session, &"why?".to_string()).await?;
            effect(&ctx, &k, "asked").await?;
            Ok(answer)
        }
    });
    let k = knobs.clone();
    r.responder("Ask", move |ctx: FlowContext| {
        let k = k.clone();
        async move {
            let session = session_of(&ctx)?;
            let question: String = ctx.receive(&session).await?;
            if let Some(gate) = &k.gate {
                gate.acquire().await.map_err(|e| FlowError::Invalid(e.to_string()))?.forget();
            }
            effect(&ctx, &k, "answered").await?;
            ctx.send(&session, &format!("because {question}")).await
        }
    });
    // Ping: `count` round trips, every one of them a wait on each side.
    let k = knobs.clone();
    r.flow("Ping", 1, move |ctx: FlowContext, (to, count): (String, u64)| {
        let k = k.clone();
        async move {
            let session = ctx.initiate(&party(&to)?).await?;
            ctx.send(&session, &count).await?;
            let mut total = 0;
            for i in 0..count {
                let answer: u64 = ctx.send_and_receive(&session, &i).await?;
                total += answer;
            }
            effect(&ctx, &k, "pinged").await?;
            Ok(total)
        }
    });
    let k = knobs.clone();
    r.responder("Ping", move |ctx: FlowContext| {
        let k = k.clone();
        async move {
            let session = session_of(&ctx)?;
            let count: u64 = ctx.receive(&session).await?;
            for _ in 0..count {
                let i: u64 = ctx.receive(&session).await?;
                ctx.send(&session, &(i * 10)).await?;
            }
            effect(&ctx, &k, "ponged").await?;
            Ok(())
        }
    });
    // AskVersion: opens `Versioned` at version 5 and asks twice which version Bob was asked
    // for; parked between the questions, Bob answers from his stored record.
    r.flow("AskVersion", 1, |ctx: FlowContext, to: String| async move {
        let session = ctx.initiate_as(&party(&to)?, "Versioned", 5).await?;
        let first: Option<u32> = ctx.send_and_receive(&session, &1u8).await?;
        let second: Option<u32> = ctx.send_and_receive(&session, &2u8).await?;
        Ok(json!([first, second]))
    });
    r.responder("Versioned", |ctx: FlowContext| async move {
        let session = session_of(&ctx)?;
        for _ in 0..2 {
            let _: u8 = ctx.receive(&session).await?;
            ctx.send(&session, &ctx.initiator_version()).await?;
        }
        Ok(())
    });
    // Listen: the initiator receives first (twice), then answers; Bob naps between his two
    // messages, so each side is parked (Bob asleep) and brought back in between.
    r.flow("Listen", 1, |ctx: FlowContext, to: String| async move {
        let session = ctx.initiate(&party(&to)?).await?;
        let first: String = ctx.receive(&session).await?;
        let second: String = ctx.receive(&session).await?;
        ctx.send(&session, &format!("{first} {second}")).await?;
        Ok(json!([first, second]))
    });
    r.responder("Listen", |ctx: FlowContext| async move {
        let session = session_of(&ctx)?;
        ctx.send(&session, &"hello".to_string()).await?;
        let now = ctx.now().await?;
        ctx.sleep_until(now + 200_000).await?;
        ctx.send(&session, &"again".to_string()).await?;
        let both: String = ctx.receive(&session).await?;
        if both != "hello again" {
            return Err(FlowError::Exception(format!("got {both:?}")));
        }
        Ok(())
    });
    r
}

struct Pair {
    alice: Node,
    bob: Node,
}

async fn pair<A: FlowStore, B: FlowStore>(knobs: &Arc<Knobs>, alice: Arc<A>, bob: Arc<B>, options: EngineOptions) -> Pair {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let (ma, mb) = (Arc::new(MemoryMessageStore::default()), Arc::new(MemoryMessageStore::default()));
    let alice = Node::start_with(&net, &dir, ALICE, &ma, alice, registry(knobs.clone()), options.clone()).await;
    let bob = Node::start_with(&net, &dir, BOB, &mb, bob, registry(knobs.clone()), options).await;
    Pair { alice, bob }
}

/// Alice asks; Bob holds his answer until Alice's flow has been parked, then answers.
async fn late_answer<A: FlowStore, B: FlowStore>(alice: Arc<A>, bob: Arc<B>) {
    let gate = Arc::new(Semaphore::new(0));
    let knobs = Arc::new(Knobs { gate: Some(gate.clone()), ..Knobs::default() });
    let options = EngineOptions { evict_after: Some(Duration::from_millis(50)), ..EngineOptions::default() };
    let p = pair(&knobs, alice.clone(), bob, options).await;
    let id = p.alice.engine.start("Ask", json!(BOB), None).await.unwrap();
    until("Alice's flow is parked", || p.alice.engine.parked() == 1).await;
    assert_eq!(p.alice.engine.resident(), 0);
    assert!(!p.alice.engine.is_resident(id));
    assert_eq!(p.alice.engine.running(), 1, "a parked flow still counts as running (draining waits for it)");
    assert_eq!(p.alice.engine.get(id).await.unwrap().unwrap().status, FlowStatus::Runnable);
    gate.add_permits(1);
    let r = finished(&p.alice.engine, id).await;
    assert_eq!(result(&r), json!("because why?"));
    assert_eq!(knobs.ran(&format!("{id}/asked")), 1);
    let bob_flows = p.bob.engine.list().await.unwrap();
    assert_eq!(bob_flows.len(), 1);
    assert_eq!(finished(&p.bob.engine, bob_flows[0].id).await.status, FlowStatus::Completed);
    assert_eq!(received(&alice.journal(id).await.unwrap()).len(), 1, "the answer was journaled once");
    assert!(knobs.bodies.load(Ordering::SeqCst) >= 2, "the flow was not brought back by replay");
    assert_eq!((p.alice.engine.resident(), p.alice.engine.parked(), p.alice.engine.running()), (0, 0, 0));
    p.alice.crash();
    p.bob.crash();
}

#[tokio::test]
async fn a_parked_flow_completes_once_when_its_late_answer_comes() {
    late_answer(Arc::new(MemoryFlowStore::default()), Arc::new(MemoryFlowStore::default())).await;
}

#[tokio::test]
async fn a_parked_flow_completes_once_when_its_late_answer_comes_sqlite() {
    let (da, db) = (scratch("late-alice"), scratch("late-bob"));
    let ((a, alice), (b, bob)) = (sqlite(&da).await, sqlite(&db).await);
    late_answer(alice, bob).await;
    a.close().await;
    b.close().await;
    let _ = (std::fs::remove_dir_all(da), std::fs::remove_dir_all(db));
}

#[tokio::test]
async fn a_conversation_parked_at_every_wait_on_both_sides_finishes_exactly_once() {
    let (da, db) = (scratch("ping-alice"), scratch("ping-bob"));
    let ((a, alice), (b, bob)) = (sqlite(&da).await, sqlite(&db).await);
    let knobs = Arc::new(Knobs::default());
    let p = pair(&knobs, alice.clone(), bob.clone(), parked_at_once()).await;
    let id = p.alice.engine.start("Ping", json!([BOB, 6]), None).await.unwrap();
    assert_eq!(result(&finished(&p.alice.engine, id).await), json!(150));
    let responder = p.bob.engine.list().await.unwrap();
    assert_eq!(responder.len(), 1);
    assert_eq!(finished(&p.bob.engine, responder[0].id).await.status, FlowStatus::Completed);
    // Each side journaled each message once: Alice 6 answers, Bob the count and 6 pings.
    assert_eq!(received(&alice.journal(id).await.unwrap()).len(), 6);
    assert_eq!(received(&bob.journal(responder[0].id).await.unwrap()).len(), 7);
    assert_eq!(knobs.ran(&format!("{id}/pinged")), 1);
    assert_eq!(knobs.ran(&format!("{}/ponged", responder[0].id)), 1);
    p.alice.crash();
    p.bob.crash();
    a.close().await;
    b.close().await;
    let _ = (std::fs::remove_dir_all(da), std::fs::remove_dir_all(db));
}

#[tokio::test]
async fn a_parked_responder_still_knows_the_version_its_initiator_asked_for() {
    let (da, db) = (scratch("version-alice"), scratch("version-bob"));
    let ((a, alice), (b, bob)) = (sqlite(&da).await, sqlite(&db).await);
    let knobs = Arc::new(Knobs::default());
    let p = pair(&knobs, alice, bob, parked_at_once()).await;
    let id = p.alice.engine.start("AskVersion", json!(BOB), None).await.unwrap();
    assert_eq!(result(&finished(&p.alice.engine, id).await), json!([5, 5]));
    let responder = p.bob.engine.list().await.unwrap();
    assert_eq!(responder.len(), 1);
    assert_eq!(finished(&p.bob.engine, responder[0].id).await.status, FlowStatus::Completed);
    p.alice.crash();
    p.bob.crash();
    a.close().await;
    b.close().await;
    let _ = (std::fs::remove_dir_all(da), std::fs::remove_dir_all(db));
}

#[tokio::test]
async fn a_receive_first_initiator_brought_back_answers_in_the_same_session() {
    // Alice receives twice before she sends, and Bob naps in between: both sides are parked
    // and brought back (Bob by his alarm), and Bob still runs one responder.
    let knobs = Arc::new(Knobs::default());
    let p = pair(&knobs, Arc::new(MemoryFlowStore::default()), Arc::new(MemoryFlowStore::default()), parked_at_once()).await;
    let id = p.alice.engine.start("Listen", json!(BOB), None).await.unwrap();
    assert_eq!(result(&finished(&p.alice.engine, id).await), json!(["hello", "again"]));
    let responders = p.bob.engine.list().await.unwrap();
    assert_eq!(responders.len(), 1, "Bob started a second responder: {responders:?}");
    assert_eq!(finished(&p.bob.engine, responders[0].id).await.status, FlowStatus::Completed);
    p.alice.crash();
    p.bob.crash();
}

// ---------------------------------------------------------------------------------------------
// One engine, driven directly: the test is the counterparty.

type Sent = (MessageId, X500Name, u64, Vec<u8>);

/// A transport that keeps what is sent and marked processed.
#[derive(Default)]
struct Wire {
    sent: Mutex<Vec<Sent>>,
    processed: Mutex<Vec<MessageId>>,
}

impl Transport for Wire {
    fn send(
        &self,
        id: MessageId,
        to: X500Name,
        session: u64,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<(), FlowError>> + Send + '_>> {
        self.sent.lock().unwrap().push((id, to, session, payload));
        Box::pin(async { Ok(()) })
    }
    fn processed(&self, ids: Vec<MessageId>) -> Pin<Box<dyn Future<Output = Result<(), FlowError>> + Send + '_>> {
        self.processed.lock().unwrap().extend(ids);
        Box::pin(async { Ok(()) })
    }
}

/// Parking writes wait for the test: `entered` gets a permit when one starts, and it goes on
/// when `gate` has one.
struct Held {
    entered: Semaphore,
    gate: Semaphore,
}

impl ParkHook for Held {
    async fn before_park(&self, _: &Parking) -> Result<(), StoreError> {
        self.entered.add_permits(1);
        self.gate.acquire().await.map_err(|e| StoreError::permanent(e.to_string()))?.forget();
        Ok(())
    }
}

/// Responders' records wait for the test before they are created: `entered` gets a permit
/// when one starts, and it goes on when `gate` has one. Parkings go through.
struct HeldCreates {
    entered: Semaphore,
    gate: Semaphore,
}

impl ParkHook for HeldCreates {
    async fn before_park(&self, _: &Parking) -> Result<(), StoreError> {
        Ok(())
    }
    async fn before_create(&self, record: &FlowRecord) -> Result<(), StoreError> {
        if record.initiator.is_some() {
            self.entered.add_permits(1);
            self.gate.acquire().await.map_err(|e| StoreError::permanent(e.to_string()))?.forget();
        }
        Ok(())
    }
}

/// Flows for the directly driven engine.
fn solo() -> Registry {
    let mut r = Registry::new();
    // Hello (responder): answers each of two greetings.
    r.responder("Hello", |ctx: FlowContext| async move {
        let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
        for _ in 0..2 {
            let name: String = ctx.receive(&session).await?;
            ctx.send(&session, &format!("hello {name}")).await?;
        }
        Ok(())
    });
    // Wait: open a session with Bob and wait for `n` answers.
    r.flow("Wait", 1, |ctx: FlowContext, n: u32| async move {
        let session = ctx.initiate(&name(BOB)).await?;
        let mut answers = Vec::new();
        for _ in 0..n {
            answers.push(ctx.receive::<String>(&session).await?);
        }
        Ok(answers)
    });
    // Nap: sleep for `ms` milliseconds (from a journaled clock reading).
    r.flow("Nap", 1, |ctx: FlowContext, ms: i64| async move {
        let began = ctx.now().await?;
        ctx.sleep_until(began + ms * 1000).await?;
        Ok(json!({ "began": began }))
    });
    r
}

/// A flow that receives first, then is held (not journaled) before it replies.
fn reply_after(gate: Arc<Semaphore>) -> Registry {
    let mut r = Registry::new();
    r.flow("Reply", 1, move |ctx: FlowContext, (): ()| {
        let gate = gate.clone();
        async move {
            let session = ctx.initiate(&name(BOB)).await?;
            let question: String = ctx.receive(&session).await?;
            gate.acquire().await.map_err(|e| FlowError::Invalid(e.to_string()))?.forget();
            ctx.send(&session, &format!("re: {question}")).await?;
            Ok(())
        }
    });
    r
}

fn engine<F: FlowStore>(store: Arc<F>, wire: &Arc<Wire>, options: EngineOptions) -> FlowEngine {
    FlowEngine::new(name(ALICE), store, wire.clone(), solo(), options)
}

/// The session flow `id` opened with Bob (from its journal: in memory while the flow is
/// there, where a session's opening is until the next durable step, else in the store).
async fn session(engine: &FlowEngine, id: FlowId) -> u64 {
    let began = Instant::now();
    loop {
        if let Some(Entry::Opened { session, .. }) = engine.journal(id).await.unwrap().first() {
            return *session;
        }
        assert!(began.elapsed() < Duration::from_secs(20), "flow {id} opened no session");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until flow `id` has journaled `n` entries.
async fn journaled(store: &impl FlowStore, id: FlowId, n: usize) {
    let began = Instant::now();
    while store.journal(id).await.unwrap().len() < n {
        assert!(began.elapsed() < Duration::from_secs(20), "flow {id} did not journal {n} entries");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Bob's message on `session` for the flow that opened it.
fn from_bob(session: u64, value: &impl Serialize) -> InboundMessage {
    bob_says(session, SessionMessage::Data(encoding::encode(value)))
}

fn bob_says(session: u64, message: SessionMessage) -> InboundMessage {
    let envelope = Envelope { to_initiator: true, message };
    InboundMessage { id: MessageId::random(), sender: name(BOB), session, topic: FLOW_TOPIC.into(), payload: encoding::encode(&envelope) }
}

/// Bob's message on `session`, which he opened, for the responder.
fn bob_opens(session: u64, message: SessionMessage) -> InboundMessage {
    let envelope = Envelope { to_initiator: false, message };
    InboundMessage { id: MessageId::random(), sender: name(BOB), session, topic: FLOW_TOPIC.into(), payload: encoding::encode(&envelope) }
}

/// What the engine sent Bob on `session`, decoded.
fn sent_to_bob(wire: &Wire, session: u64) -> Vec<SessionMessage> {
    wire.sent
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, to, s, _)| *to == name(BOB) && *s == session)
        .map(|(_, _, _, p)| encoding::decode::<Envelope>(p).unwrap().message)
        .collect()
}

#[tokio::test]
async fn a_message_arriving_while_the_flow_is_being_parked_is_not_lost() {
    let store = Arc::new(HookedParking::new(Held { entered: Semaphore::new(0), gate: Semaphore::new(0) }));
    let wire = Arc::new(Wire::default());
    let engine = engine(store.clone(), &wire, parked_at_once());
    let id = engine.start("Wait", json!(1), None).await.unwrap();
    let s = session(&engine, id).await;
    // The flow waits, and its task is writing its parking (held here) ...
    store.hook.entered.acquire().await.unwrap().forget();
    // ... when the answer comes: it is queued for the flow, which is still in memory.
    let answer = from_bob(s, &"now".to_string());
    engine.deliver(answer.clone()).await.unwrap();
    store.hook.gate.add_permits(1);
    let r = finished(&engine, id).await;
    assert_eq!(result(&r), json!(["now"]));
    assert_eq!(received(&store.journal(id).await.unwrap()), vec![answer.id]);
    until("the answer is marked processed", || wire.processed.lock().unwrap().contains(&answer.id)).await;
    assert_eq!((engine.resident(), engine.parked()), (0, 0));
    assert!(store.parked().await.unwrap().is_empty() && store.parked_session(&name(BOB), s, true).await.unwrap().is_none());
}

#[tokio::test]
async fn a_responder_being_recorded_holds_up_no_other_flows_messages() {
    let store = Arc::new(HookedParking::new(HeldCreates { entered: Semaphore::new(0), gate: Semaphore::new(0) }));
    let wire = Arc::new(Wire::default());
    let engine = engine(store.clone(), &wire, EngineOptions::default());
    let id = engine.start("Wait", json!(1), None).await.unwrap();
    let s = session(&engine, id).await;
    // Bob opens a session with a greeting; recording the responder is held ...
    let to_responder = |message: SessionMessage| bob_opens(77, message);
    let init = to_responder(SessionMessage::Init { flow: "Hello".into(), version: 1, payload: Some(encoding::encode(&"one".to_string())) });
    tokio::time::timeout(Duration::from_secs(5), engine.deliver(init)).await.expect("delivering the Init waited for the record").unwrap();
    store.hook.entered.acquire().await.unwrap().forget();
    // ... and meanwhile Alice's own flow gets its answer and finishes, and Bob's second
    // greeting waits for the responder.
    tokio::time::timeout(Duration::from_secs(5), engine.deliver(from_bob(s, &"now".to_string()))).await.unwrap().unwrap();
    assert_eq!(result(&finished(&engine, id).await), json!(["now"]));
    engine.deliver(to_responder(SessionMessage::Data(encoding::encode(&"two".to_string())))).await.unwrap();
    // Once recorded, the responder gets both greetings in order.
    store.hook.gate.add_permits(1);
    let answers = || -> Vec<String> {
        wire.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, to, session, _)| *to == name(BOB) && *session == 77)
            .filter_map(|(_, _, _, p)| match encoding::decode::<Envelope>(p).unwrap().message {
                SessionMessage::Data(bytes) | SessionMessage::Final(bytes) => Some(encoding::decode::<String>(&bytes).unwrap()),
                _ => None,
            })
            .collect()
    };
    until("the responder answered both greetings", || answers().len() == 2).await;
    assert_eq!(answers(), vec!["hello one".to_string(), "hello two".to_string()]);
}

#[tokio::test]
async fn a_message_arriving_just_after_the_parking_brings_the_flow_back() {
    let store = Arc::new(HookedParking::new(Held { entered: Semaphore::new(0), gate: Semaphore::new(1000) }));
    let wire = Arc::new(Wire::default());
    let engine = engine(store.clone(), &wire, parked_at_once());
    let id = engine.start("Wait", json!(2), None).await.unwrap();
    let s = session(&engine, id).await;
    until("the flow is parked", || engine.parked() == 1).await;
    assert_eq!(engine.resident(), 0);
    // Two answers at once, and a redelivered copy of the first: each handled once, in order.
    let (first, second) = (from_bob(s, &"one".to_string()), from_bob(s, &"two".to_string()));
    let (a, b, c) = tokio::join!(engine.deliver(first.clone()), engine.deliver(second.clone()), engine.deliver(first.clone()));
    a.unwrap();
    b.unwrap();
    c.unwrap();
    assert_eq!(result(&finished(&engine, id).await), json!(["one", "two"]));
    assert_eq!(received(&store.journal(id).await.unwrap()), vec![first.id, second.id]);
    assert_eq!((engine.resident(), engine.parked()), (0, 0));
    // A message for the ended flow is dropped (marked processed, in the background), not
    // routed anywhere.
    let late = from_bob(s, &"three".to_string());
    engine.deliver(late.clone()).await.unwrap();
    until("the late message is marked processed", || wire.processed.lock().unwrap().contains(&late.id)).await;
}

#[tokio::test]
async fn the_cap_parks_the_longest_waiting_flows_first() {
    let store = Arc::new(MemoryFlowStore::default());
    let wire = Arc::new(Wire::default());
    // No idle threshold: only the cap parks.
    let engine = engine(store.clone(), &wire, EngineOptions { evict_after: None, max_in_memory: 3, ..EngineOptions::default() });
    let mut ids = Vec::new();
    for _ in 0..7 {
        let id = engine.start("Wait", json!(1), None).await.unwrap();
        session(&engine, id).await;
        ids.push(id);
        // Each waits before the next starts, so the waiting order is the start order.
        until("the flow waits", || engine.resident() <= 3 && engine.resident() + engine.parked() == ids.len()).await;
    }
    until("four flows are parked", || engine.parked() == 4).await;
    assert_eq!(engine.resident(), 3);
    assert_eq!(ids.iter().map(|id| engine.is_resident(*id)).collect::<Vec<_>>(), [false, false, false, false, true, true, true]);
    for (i, id) in ids.iter().enumerate() {
        engine.deliver(from_bob(session(&engine, *id).await, &format!("answer {i}"))).await.unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(result(&finished(&engine, *id).await), json!([format!("answer {i}")]));
    }
    assert_eq!(engine.running(), 0);
}

#[tokio::test]
async fn a_sleeping_flow_is_parked_and_woken_on_time() {
    let store = Arc::new(MemoryFlowStore::default());
    let wire = Arc::new(Wire::default());
    let engine = engine(store.clone(), &wire, parked_at_once());
    let id = engine.start("Nap", json!(300), None).await.unwrap();
    until("the flow is parked", || engine.parked() == 1).await;
    assert_eq!(engine.resident(), 0);
    let r = finished(&engine, id).await;
    let woke = r.updated_at;
    let began = result(&r)["began"].as_i64().unwrap();
    assert!(woke - began >= 300_000, "woke after {} µs", woke - began);
    assert!(woke - began < 5_000_000, "woke late: after {} µs", woke - began);
}

#[tokio::test]
async fn a_restart_indexes_parked_flows_instead_of_loading_them() {
    let dir = scratch("restart");
    let (db, store) = sqlite(&dir).await;
    let wire = Arc::new(Wire::default());
    let first = engine(store.clone(), &wire, parked_at_once());
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(first.start("Wait", json!(1), None).await.unwrap());
    }
    let nap = first.start("Nap", json!(1500), None).await.unwrap();
    until("every flow is parked", || first.parked() == 21).await;
    first.shutdown();
    db.close().await;

    // The node restarts: nothing is loaded, everything is indexed.
    let (db, store) = sqlite(&dir).await;
    let second = engine(store.clone(), &wire, parked_at_once());
    assert_eq!(second.resume().await.unwrap(), 0, "a parked flow was loaded at start-up");
    assert_eq!((second.resident(), second.parked(), second.running()), (0, 21, 21));
    for (i, id) in ids.iter().enumerate() {
        second.deliver(from_bob(session(&second, *id).await, &format!("after restart {i}"))).await.unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(result(&finished(&second, *id).await), json!([format!("after restart {i}")]));
    }
    // The sleeper wakes at the time it chose before the restart.
    let r = finished(&second, nap).await;
    assert!(r.updated_at - result(&r)["began"].as_i64().unwrap() >= 1_500_000);
    assert_eq!(second.running(), 0);
    second.shutdown();
    db.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_parked_flow_whose_code_changed_is_hospitalized_at_start_up() {
    let store = Arc::new(MemoryFlowStore::default());
    let wire = Arc::new(Wire::default());
    let first = engine(store.clone(), &wire, parked_at_once());
    let id = first.start("Wait", json!(1), None).await.unwrap();
    until("the flow is parked", || first.parked() == 1).await;
    first.shutdown();
    // Version 2 reads the clock before it opens the session.
    let mut changed = Registry::new();
    changed.flow("Wait", 2, |ctx: FlowContext, _n: u32| async move {
        ctx.now().await?;
        Ok(0)
    });
    let second = FlowEngine::new(name(ALICE), store.clone(), wire.clone(), changed, parked_at_once());
    assert_eq!(second.resume().await.unwrap(), 1, "a parked flow of another version is replayed at start-up");
    let r = finished(&second, id).await;
    assert_eq!(r.status, FlowStatus::Hospitalized);
    assert!(r.error.as_deref().unwrap().contains("flow code changed"), "{r:?}");
    assert_eq!(second.parked(), 0);
}

#[tokio::test]
async fn a_receive_first_initiator_restarted_after_its_receive_sends_data_not_a_second_init() {
    // Found while adding parking: after a restart, replaying a receive did not count as the
    // session being open, so the next send went out as a second Init (and Bob would have
    // started a second responder).
    let store = Arc::new(MemoryFlowStore::default());
    let wire = Arc::new(Wire::default());
    let first =
        FlowEngine::new(name(ALICE), store.clone(), wire.clone(), reply_after(Arc::new(Semaphore::new(0))), EngineOptions::default());
    let id = first.start("Reply", json!(null), None).await.unwrap();
    let s = session(&first, id).await;
    first.deliver(from_bob(s, &"hello?".to_string())).await.unwrap();
    journaled(&*store, id, 2).await;
    first.shutdown();
    let second =
        FlowEngine::new(name(ALICE), store.clone(), wire.clone(), reply_after(Arc::new(Semaphore::new(1))), EngineOptions::default());
    assert_eq!(second.resume().await.unwrap(), 1);
    assert_eq!(finished(&second, id).await.status, FlowStatus::Completed);
    let sent: Vec<SessionMessage> =
        wire.sent.lock().unwrap().iter().map(|(_, _, _, p)| encoding::decode::<Envelope>(p).unwrap().message).collect();
    assert!(matches!(sent.first(), Some(SessionMessage::Init { payload: None, .. })), "{sent:?}");
    // Its reply was its last act on the session: the reply carries its end.
    assert!(sent.contains(&SessionMessage::Final(encoding::encode(&"re: hello?".to_string()))), "{sent:?}");
    assert!(!sent.contains(&SessionMessage::End), "{sent:?}");
    let inits = sent.iter().filter(|m| matches!(m, SessionMessage::Init { .. })).count();
    assert_eq!(inits, 1, "the session was opened twice: {sent:?}");
}

#[tokio::test]
async fn a_parked_flow_can_be_killed_and_its_counterparty_is_told() {
    let store = Arc::new(MemoryFlowStore::default());
    let wire = Arc::new(Wire::default());
    let engine = engine(store.clone(), &wire, parked_at_once());
    let id = engine.start("Wait", json!(1), None).await.unwrap();
    let s = session(&engine, id).await;
    until("the flow is parked", || engine.parked() == 1).await;
    assert_eq!(engine.kill(id).await.unwrap().status, FlowStatus::Killed);
    assert_eq!((engine.resident(), engine.parked(), engine.running()), (0, 0, 0));
    let told = wire.sent.lock().unwrap().iter().any(|(_, to, session, payload)| {
        *to == name(BOB)
            && *session == s
            && matches!(encoding::decode::<Envelope>(payload).unwrap().message, SessionMessage::Error(ref m) if m.contains("killed"))
    });
    assert!(told, "Bob was not told");
    assert!(store.parked_session(&name(BOB), s, true).await.unwrap().is_none());
    // Bob's late answer finds no flow: dropped, the flow stays killed.
    let late = from_bob(s, &"too late".to_string());
    engine.deliver(late.clone()).await.unwrap();
    until("the late message is marked processed", || wire.processed.lock().unwrap().contains(&late.id)).await;
    assert_eq!(engine.get(id).await.unwrap().unwrap().status, FlowStatus::Killed);
}

// ---------------------------------------------------------------------------------------------
// A last message that carries the end (`SessionMessage::Final`), and sends that wait for the
// flow's next wait or journal write.

#[tokio::test]
async fn a_final_message_is_received_as_the_data_and_then_the_end() {
    for parked in [false, true] {
        let store = Arc::new(MemoryFlowStore::default());
        let wire = Arc::new(Wire::default());
        let options = if parked { parked_at_once() } else { EngineOptions::default() };
        let engine = engine(store.clone(), &wire, options);
        // Waits for two answers; Bob sends one and ends with it.
        let id = engine.start("Wait", json!(2), None).await.unwrap();
        let s = session(&engine, id).await;
        if parked {
            until("the flow is parked", || engine.parked() == 1).await;
        }
        let last = bob_says(s, SessionMessage::Final(encoding::encode(&"only".to_string())));
        engine.deliver(last.clone()).await.unwrap();
        // A copy delivered again (a resend after a lost acknowledgement) changes nothing.
        engine.deliver(last.clone()).await.unwrap();
        let r = finished(&engine, id).await;
        assert_eq!(r.status, FlowStatus::Failed, "parked {parked}: {r:?}");
        let error = r.error.unwrap_or_default();
        assert!(error.contains("session ended") && error.contains(&name(BOB).to_string()), "parked {parked}: {error}");
        // Both halves journaled, under the one message id.
        assert_eq!(received(&store.journal(id).await.unwrap()), vec![last.id, last.id], "parked {parked}");
        // Bob has ended: he is told nothing more (no error, no end).
        let told = sent_to_bob(&wire, s);
        assert!(told.iter().all(|m| matches!(m, SessionMessage::Init { .. })), "parked {parked}: {told:?}");
    }
}

#[tokio::test]
async fn a_flow_that_received_a_final_message_ends_without_telling_the_sender() {
    let store = Arc::new(MemoryFlowStore::default());
    let wire = Arc::new(Wire::default());
    let engine = engine(store.clone(), &wire, EngineOptions::default());
    let id = engine.start("Wait", json!(1), None).await.unwrap();
    let s = session(&engine, id).await;
    engine.deliver(bob_says(s, SessionMessage::Final(encoding::encode(&"done".to_string())))).await.unwrap();
    assert_eq!(result(&finished(&engine, id).await), json!(["done"]));
    let told = sent_to_bob(&wire, s);
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(matches!(told[0], SessionMessage::Init { payload: None, .. }), "{told:?}");
}

#[tokio::test]
async fn a_responder_whose_last_act_is_a_send_ends_with_that_message() {
    let store = Arc::new(MemoryFlowStore::default());
    let wire = Arc::new(Wire::default());
    let engine = engine(store.clone(), &wire, EngineOptions::default());
    let to_responder = |message: SessionMessage| bob_opens(78, message);
    let init = to_responder(SessionMessage::Init { flow: "Hello".into(), version: 1, payload: Some(encoding::encode(&"one".to_string())) });
    engine.deliver(init).await.unwrap();
    until("the first greeting is answered", || !sent_to_bob(&wire, 78).is_empty()).await;
    engine.deliver(to_responder(SessionMessage::Data(encoding::encode(&"two".to_string())))).await.unwrap();
    until("the responder ended", || sent_to_bob(&wire, 78).len() >= 2).await;
    let responder = engine.list().await.unwrap().into_iter().find(|r| r.initiator.is_some()).unwrap();
    assert_eq!(finished(&engine, responder.id).await.status, FlowStatus::Completed);
    // The first answer waits for nothing but the next greeting; the second is its last act.
    assert_eq!(
        sent_to_bob(&wire, 78),
        vec![
            SessionMessage::Data(encoding::encode(&"hello one".to_string())),
            SessionMessage::Final(encoding::encode(&"hello two".to_string()))
        ]
    );
}

#[tokio::test]
async fn a_send_is_on_the_wire_before_the_journal_that_records_it_is_stored() {
    let store = Arc::new(MemoryFlowStore::default());
    let wire = Arc::new(Wire::default());
    let gate = Arc::new(Semaphore::new(0));
    let mut r = Registry::new();
    let held = gate.clone();
    // Sends, reads the clock (a durable step: the send's journal entry is stored with it),
    // then is held without waiting on the engine.
    r.flow("Tell", 1, move |ctx: FlowContext, (): ()| {
        let held = held.clone();
        async move {
            let session = ctx.initiate(&name(BOB)).await?;
            ctx.send(&session, &"news".to_string()).await?;
            ctx.now().await?;
            held.acquire().await.map_err(|e| FlowError::Invalid(e.to_string()))?.forget();
            Ok(())
        }
    });
    let engine = FlowEngine::new(name(ALICE), store.clone(), wire.clone(), r, EngineOptions::default());
    let id = engine.start("Tell", json!(null), None).await.unwrap();
    // Opened, Sent, Now: once the store has the `Sent`, a crash would never send it again.
    journaled(&*store, id, 3).await;
    let s = session(&engine, id).await;
    let told = sent_to_bob(&wire, s);
    assert!(matches!(told.as_slice(), [SessionMessage::Init { payload: Some(_), .. }]), "{told:?}");
    gate.add_permits(1);
    assert_eq!(finished(&engine, id).await.status, FlowStatus::Completed);
    // Its one message opened the session; it ends with an End of its own.
    assert!(matches!(sent_to_bob(&wire, s).as_slice(), [SessionMessage::Init { .. }, SessionMessage::End]));
}

#[tokio::test]
async fn messages_left_queued_for_a_flow_that_ended_are_marked_processed() {
    let store = Arc::new(MemoryFlowStore::default());
    let wire = Arc::new(Wire::default());
    let engine = engine(store.clone(), &wire, EngineOptions::default());
    // Waits for one answer; Bob sends two, both queued before the flow runs again (this
    // runtime has one thread, and delivering to a flow in memory does not yield).
    let id = engine.start("Wait", json!(1), None).await.unwrap();
    let s = session(&engine, id).await;
    let (answer, extra) = (from_bob(s, &"one".to_string()), from_bob(s, &"extra".to_string()));
    engine.deliver(answer.clone()).await.unwrap();
    engine.deliver(extra.clone()).await.unwrap();
    assert_eq!(result(&finished(&engine, id).await), json!(["one"]));
    until("the message it never read is marked processed", || wire.processed.lock().unwrap().contains(&extra.id)).await;

    // A `Final` whose data half it read: the id is marked once, not again for the end half.
    let id = engine.start("Wait", json!(1), None).await.unwrap();
    let s = session(&engine, id).await;
    let last = bob_says(s, SessionMessage::Final(encoding::encode(&"only".to_string())));
    engine.deliver(last.clone()).await.unwrap();
    assert_eq!(result(&finished(&engine, id).await), json!(["only"]));
    until("the final message is marked processed", || wire.processed.lock().unwrap().contains(&last.id)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(wire.processed.lock().unwrap().iter().filter(|m| **m == last.id).count(), 1);
}
