//! The flow engine over the simulated network with in-memory stores: sessions, errors,
//! replay after crashes of either side, code changes, client ids, draining, the counterparty
//! check. The same engine runs in nodes over SQLite/PostgreSQL and TLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;
use treaty_core::X500Name;
use treaty_flows::*;
use treaty_net::messaging::MessageStore;
use treaty_net::sim::SimNetwork;

mod common;

use common::*;

#[derive(Serialize, Deserialize)]
struct PingArgs {
    to: String,
    count: u32,
}

/// Test knobs shared with the flow bodies.
#[derive(Default)]
struct Knobs {
    side_effects: AtomicU32,
    responder_received: AtomicU32,
    /// The responder takes a permit before each answer, and `LastWord` one before it ends:
    /// tests hold them back.
    gate: Option<Arc<Semaphore>>,
    /// `Ask` questions answered without a flow (each run of the answer's work counts).
    answered: AtomicU32,
    /// Taken by the work of each answer given without a flow.
    answer_gate: Option<Arc<Semaphore>>,
}

/// `Ping`, version 1: tells the responder how many pings follow, sends them, adds the answers.
async fn ping_v1(ctx: FlowContext, args: PingArgs, k: Arc<Knobs>) -> Result<serde_json::Value, FlowError> {
    let started = ctx.now().await?;
    let nonce = ctx.random().await?;
    let session = ctx.initiate(&args.to.parse().map_err(|e| FlowError::Exception(format!("{e}")))?).await?;
    ctx.send(&session, &args.count).await?;
    let mut total = 0u64;
    for i in 0..args.count {
        ctx.progress(&format!("ping {i}")).await?;
        let answer: u64 = ctx.send_and_receive(&session, &u64::from(i)).await?;
        total += answer;
    }
    let effect = ctx
        .side_effect("count", |_key| {
            let k = k.clone();
            async move { Ok(k.side_effects.fetch_add(1, Ordering::SeqCst) + 1) }
        })
        .await?;
    Ok(json!({ "total": total, "started": started, "nonce": nonce, "effect": effect }))
}

fn registry(knobs: Arc<Knobs>) -> Registry {
    let mut r = Registry::new();
    let k = knobs.clone();
    r.flow("Ping", 1, move |ctx: FlowContext, args: PingArgs| ping_v1(ctx, args, k.clone()));
    let k = knobs.clone();
    r.responder("Ping", move |ctx: FlowContext| {
        let k = k.clone();
        async move {
            let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
            let count: u32 = ctx.receive(&session).await?;
            for _ in 0..count {
                let i: u64 = ctx.receive(&session).await?;
                k.responder_received.fetch_add(1, Ordering::SeqCst);
                if let Some(gate) = &k.gate {
                    gate.acquire().await.map_err(|e| FlowError::Invalid(e.to_string()))?.forget();
                }
                ctx.send(&session, &(i * 10)).await?;
            }
            Ok(())
        }
    });
    r.flow("Refuse", 1, |ctx: FlowContext, to: String| async move {
        let session = ctx.initiate(&to.parse().map_err(|e| FlowError::Exception(format!("{e}")))?).await?;
        let answer: String = ctx.send_and_receive(&session, &"please".to_string()).await?;
        Ok(answer)
    });
    r.responder("Refuse", |ctx: FlowContext| async move {
        let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
        let _: String = ctx.receive(&session).await?;
        Err(FlowError::Exception("no thanks".into()))
    });
    r.flow("Silent", 1, |ctx: FlowContext, to: String| async move {
        let session = ctx.initiate(&to.parse().map_err(|e| FlowError::Exception(format!("{e}")))?).await?;
        let answer: String = ctx.send_and_receive(&session, &"hello?".to_string()).await?;
        Ok(answer)
    });
    r.responder("Silent", |ctx: FlowContext| async move {
        let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
        let _: String = ctx.receive(&session).await?;
        Ok(())
    });
    let k = knobs.clone();
    r.flow("LastWord", 1, move |ctx: FlowContext, to: String| {
        let k = k.clone();
        async move {
            let session = ctx.initiate(&to.parse().map_err(|e| FlowError::Exception(format!("{e}")))?).await?;
            let answer: String = ctx.send_and_receive(&session, &"hi".to_string()).await?;
            // The test lets this flow end once the responder's `End` has arrived.
            if let Some(gate) = &k.gate {
                gate.acquire().await.map_err(|e| FlowError::Exception(e.to_string()))?.forget();
            }
            Ok(answer)
        }
    });
    r.responder("LastWord", |ctx: FlowContext| async move {
        let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
        let _: String = ctx.receive(&session).await?;
        ctx.send(&session, &"bye".to_string()).await
    });
    r.flow("AskVersion", 1, |ctx: FlowContext, (to, version): (String, u32)| async move {
        let to = to.parse().map_err(|e| FlowError::Exception(format!("{e}")))?;
        let session = ctx.initiate_as(&to, "Versioned", version).await?;
        let seen: Option<u32> = ctx.send_and_receive(&session, &ctx.initiator_version()).await?;
        Ok(seen)
    });
    r.responder("Versioned", |ctx: FlowContext| async move {
        let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
        let initiators_own: Option<u32> = ctx.receive(&session).await?;
        if initiators_own.is_some() {
            return Err(FlowError::Exception(format!("an initiator has an initiator version: {initiators_own:?}")));
        }
        ctx.send(&session, &ctx.initiator_version()).await
    });
    // `Ask`: a question whose answer Bob gives without a flow when it starts with "quick"
    // (or fails to, for "fail"), and with the responder flow otherwise.
    r.flow("Ask", 1, |ctx: FlowContext, (to, question): (String, String)| async move {
        let session = ctx.initiate(&to.parse().map_err(|e| FlowError::Exception(format!("{e}")))?).await?;
        let answer: String = ctx.send_and_receive(&session, &question).await?;
        Ok(answer)
    });
    r.responder("Ask", |ctx: FlowContext| async move {
        let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
        let question: String = ctx.receive(&session).await?;
        ctx.send(&session, &format!("the flow answers {question}")).await
    });
    let k = knobs.clone();
    r.answering("Ask", move |sender: &X500Name, version, payload: &[u8]| {
        let question: String = treaty_core::encoding::decode(payload).ok()?;
        let (k, sender) = (k.clone(), sender.clone());
        (question.starts_with("quick") || question == "fail").then_some(async move {
            if let Some(gate) = &k.answer_gate {
                gate.acquire().await.map_err(|e| e.to_string())?.forget();
            }
            k.answered.fetch_add(1, Ordering::SeqCst);
            if question == "fail" {
                return Err("cannot answer that".to_string());
            }
            Ok(treaty_core::encoding::encode(&format!("{sender} (version {version}) asked {question}")))
        })
    });
    r.flow("Orphan", 1, |ctx: FlowContext, to: String| async move {
        let session = ctx.initiate(&to.parse().map_err(|e| FlowError::Exception(format!("{e}")))?).await?;
        let answer: String = ctx.send_and_receive(&session, &"anyone?".to_string()).await?;
        Ok(answer)
    });
    r
}

async fn pair(knobs: Arc<Knobs>) -> (SimNetwork, Directory, Disk, Disk, Node, Node) {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let (da, db) = (Disk::default(), Disk::default());
    let alice = Node::start(&net, &dir, ALICE, &da, registry(knobs.clone()), EngineOptions::default()).await;
    let bob = Node::start(&net, &dir, BOB, &db, registry(knobs), EngineOptions::default()).await;
    (net, dir, da, db, alice, bob)
}

/// Knobs whose gate starts with `permits`: Bob's `Ping` responder answers that many pings,
/// then waits for more.
fn gated(permits: usize) -> (Arc<Semaphore>, Arc<Knobs>) {
    let gate = Arc::new(Semaphore::new(permits));
    (gate.clone(), Arc::new(Knobs { gate: Some(gate), ..Knobs::default() }))
}

/// Waits until Bob's `Ping` responder has received `n` pings.
async fn until_bob_received(knobs: &Knobs, n: u32) {
    while knobs.responder_received.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_parties_converse_and_both_sides_complete() {
    let knobs = Arc::new(Knobs::default());
    let (_n, _d, _da, _db, alice, bob) = pair(knobs.clone()).await;
    let mut progress = alice.engine.progress();
    let id = alice.engine.start("Ping", json!({"to": BOB, "count": 5}), None).await.unwrap();
    let r = finished(&alice.engine, id).await;
    assert_eq!(result(&r)["total"], 100);
    // The ended record a waiter gets (from memory) is the one the store holds.
    assert_eq!(alice.engine.get(id).await.unwrap().as_ref(), Some(&r));
    assert_eq!(progress.recv().await.unwrap(), (id, 4, "ping 0".to_string()));
    // Bob's responder completed too.
    let bob_flows = bob.engine.list().await.unwrap();
    assert_eq!(bob_flows.len(), 1);
    let responder = finished(&bob.engine, bob_flows[0].id).await;
    assert_eq!(responder.status, FlowStatus::Completed);
    assert_eq!(responder.initiator.as_ref().map(|(p, _)| p.clone()), Some(name(ALICE)));
    assert_eq!(knobs.responder_received.load(Ordering::SeqCst), 5);
}

/// A watcher of one flow gets that flow's progress steps, from when it subscribed, and no
/// other flow's.
#[tokio::test]
async fn a_flows_watcher_hears_its_progress_only() {
    let (gate, knobs) = gated(0);
    let (_n, _d, _da, _db, alice, _bob) = pair(knobs).await;
    let a = alice.engine.start("Ping", json!({"to": BOB, "count": 3}), None).await.unwrap();
    let b = alice.engine.start("Ping", json!({"to": BOB, "count": 5}), None).await.unwrap();
    // Both report "ping 0" and wait for Bob's first answer, which the gate holds back.
    for id in [a, b] {
        let began = std::time::Instant::now();
        while !alice.engine.journal(id).await.unwrap().iter().any(|e| matches!(e, Entry::Progress(p) if p == "ping 0")) {
            assert!(began.elapsed() < Duration::from_secs(20), "flow {id} did not report its first step");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut watch = alice.engine.progress_of(a);
    gate.add_permits(8);
    result(&finished(&alice.engine, a).await);
    finished(&alice.engine, b).await;
    let mut heard = Vec::new();
    while let Ok(Ok((_, step))) = tokio::time::timeout(Duration::from_millis(200), watch.recv()).await {
        heard.push(step);
    }
    assert_eq!(heard, vec!["ping 1".to_string(), "ping 2".to_string()], "flow b's steps (ping 3, ping 4) must not reach a's watcher");
}

/// A flow whose counterparty has already ended does not tell it that it ended too: that
/// message would only be dropped.
#[tokio::test]
async fn no_end_message_goes_to_a_counterparty_that_has_ended() {
    let gate = Arc::new(Semaphore::new(0));
    let (_n, _d, _da, _db, alice, bob) = pair(Arc::new(Knobs { gate: Some(gate.clone()), ..Knobs::default() })).await;
    let id = alice.engine.start("LastWord", json!(BOB), None).await.unwrap();
    // Bob's answer reaches Alice's node carrying his end (one `Final` message: his answer was
    // his last act); a moment more hands it to her flow.
    let began = std::time::Instant::now();
    while alice.messenger.stats().received.load(Ordering::SeqCst) < 1 {
        assert!(began.elapsed() < Duration::from_secs(20), "Bob's answer did not arrive");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.add_permits(1);
    assert_eq!(result(&finished(&alice.engine, id).await), "bye");
    let responder = bob.engine.list().await.unwrap()[0].id;
    assert_eq!(finished(&bob.engine, responder).await.status, FlowStatus::Completed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Alice's one message (the opening one, carrying "hi"); no `End` after it.
    assert_eq!(bob.messenger.stats().received.load(Ordering::SeqCst), 1);
    // Bob's answer and his end reached Alice in one message.
    assert_eq!(alice.messenger.stats().received.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_initiator_killed_mid_conversation_finishes_exactly_once_after_restart() {
    let (gate, knobs) = gated(2);
    let (net, dir, da, _db, alice, bob) = pair(knobs.clone()).await;
    let id = alice.engine.start("Ping", json!({"to": BOB, "count": 4}), None).await.unwrap();
    // Bob answers twice, then is held: Alice waits for the third answer when she dies.
    until_bob_received(&knobs, 3).await;
    let before = da.flows.journal(id).await.unwrap();
    alice.crash();
    gate.add_permits(10);
    let alice = Node::start(&net, &dir, ALICE, &da, registry(knobs.clone()), EngineOptions::default()).await;
    let r = finished(&alice.engine, id).await;
    let out = result(&r);
    assert_eq!(out["total"], 60);
    // Replay returned the journaled clock and randomness, not new ones.
    assert_eq!(before[0], Entry::Now(out["started"].as_i64().unwrap()));
    assert_eq!(before[1], Entry::Random(out["nonce"].as_u64().unwrap()));
    assert_eq!(knobs.side_effects.load(Ordering::SeqCst), 1);
    assert_eq!(knobs.responder_received.load(Ordering::SeqCst), 4, "Bob saw a message twice or missed one");
    let responder = bob.engine.list().await.unwrap();
    assert_eq!(finished(&bob.engine, responder[0].id).await.status, FlowStatus::Completed);
}

#[tokio::test]
async fn a_responder_killed_mid_conversation_resumes_and_finishes() {
    let (gate, knobs) = gated(1);
    let (net, dir, _da, db, alice, bob) = pair(knobs.clone()).await;
    let id = alice.engine.start("Ping", json!({"to": BOB, "count": 3}), None).await.unwrap();
    until_bob_received(&knobs, 2).await;
    bob.crash();
    // The replayed responder counts again what it journaled: subtract it.
    knobs.responder_received.store(0, Ordering::SeqCst);
    gate.add_permits(10);
    let bob = Node::start(&net, &dir, BOB, &db, registry(knobs.clone()), EngineOptions::default()).await;
    assert_eq!(result(&finished(&alice.engine, id).await)["total"], 30);
    let responder = bob.engine.list().await.unwrap();
    assert_eq!(responder.len(), 1, "a redelivered opening message started a second responder");
    assert_eq!(finished(&bob.engine, responder[0].id).await.status, FlowStatus::Completed);
}

#[tokio::test]
async fn a_flow_exception_reaches_the_other_side_with_its_message() {
    let (_n, _d, _da, _db, alice, _bob) = pair(Arc::default()).await;
    let id = alice.engine.start("Refuse", json!(BOB), None).await.unwrap();
    let r = finished(&alice.engine, id).await;
    assert_eq!(r.status, FlowStatus::Failed);
    let error = r.error.unwrap();
    assert!(error.contains("O=Bob, L=Paris, C=FR ended flow Refuse with an error: no thanks"), "{error}");
}

#[tokio::test]
async fn a_counterparty_that_ends_early_gives_session_ended() {
    let (_n, _d, _da, _db, alice, _bob) = pair(Arc::default()).await;
    let id = alice.engine.start("Silent", json!(BOB), None).await.unwrap();
    let r = finished(&alice.engine, id).await;
    assert_eq!(r.status, FlowStatus::Failed);
    let error = r.error.unwrap();
    assert!(error.contains("session ended") && error.contains("O=Bob, L=Paris, C=FR") && error.contains("Silent"), "{error}");
}

#[tokio::test]
async fn a_responder_knows_the_protocol_version_its_initiator_asked_for() {
    let (_n, _d, _da, _db, alice, _bob) = pair(Arc::default()).await;
    for version in [1, 2, 7] {
        let id = alice.engine.start("AskVersion", json!([BOB, version]), None).await.unwrap();
        let r = finished(&alice.engine, id).await;
        assert_eq!(r.status, FlowStatus::Completed, "{r:?}");
        assert_eq!(result(&r), json!(version), "the responder saw the version `initiate_as` named");
    }
}

/// Questions the responder answers without a flow get their answer and leave no flow record
/// behind; the others run the responder flow; a failed answer reaches the initiator.
#[tokio::test]
async fn an_answering_responder_answers_without_a_flow_and_hands_the_rest_to_its_flow() {
    let knobs = Arc::new(Knobs::default());
    let (_n, _d, _da, db, alice, bob) = pair(knobs.clone()).await;
    let ask = |question: &str| alice.engine.start("Ask", json!([BOB, question]), None);
    let quick = finished(&alice.engine, ask("quick one").await.unwrap()).await;
    assert_eq!(result(&quick), json!("O=Alice, L=London, C=GB (version 1) asked quick one"));
    assert!(bob.engine.list().await.unwrap().is_empty(), "an answer given without a flow left a flow record");
    let slow = finished(&alice.engine, ask("slow one").await.unwrap()).await;
    assert_eq!(result(&slow), json!("the flow answers slow one"));
    assert_eq!(bob.engine.list().await.unwrap().len(), 1, "the question the answer did not take ran the responder flow");
    let failed = finished(&alice.engine, ask("fail").await.unwrap()).await;
    assert_eq!(failed.status, FlowStatus::Failed);
    let error = failed.error.unwrap();
    assert!(error.contains("O=Bob, L=Paris, C=FR") && error.contains("cannot answer that"), "{error}");
    assert_eq!(knobs.answered.load(Ordering::SeqCst), 2);
    // Every opening message was handled: none waits in Bob's inbox.
    assert!(db.messages.unprocessed(10).await.unwrap().is_empty());
}

/// An answer not yet written when the node died is given after the restart: the opening
/// message is still unprocessed, the work runs again, and the initiator gets one answer.
#[tokio::test]
async fn an_answer_lost_in_a_crash_is_given_after_the_restart() {
    let gate = Arc::new(Semaphore::new(0));
    let knobs = Arc::new(Knobs { answer_gate: Some(gate.clone()), ..Knobs::default() });
    let (net, dir, _da, db, alice, bob) = pair(knobs.clone()).await;
    let id = alice.engine.start("Ask", json!([BOB, "quick, before the crash"]), None).await.unwrap();
    while db.messages.unprocessed(10).await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bob.crash();
    gate.add_permits(10);
    let bob = Node::start(&net, &dir, BOB, &db, registry(knobs.clone()), EngineOptions::default()).await;
    let r = finished(&alice.engine, id).await;
    assert_eq!(result(&r), json!("O=Alice, L=London, C=GB (version 1) asked quick, before the crash"));
    assert_eq!(knobs.answered.load(Ordering::SeqCst), 1, "the crashed node's work never finished; the restarted node's did");
    assert!(bob.engine.list().await.unwrap().is_empty());
    assert!(db.messages.unprocessed(10).await.unwrap().is_empty());
}

/// `Relay` responders: told the next party's name, a responder asks it and answers one more
/// than it said; told nothing, it answers 1.
fn relays() -> Registry {
    let mut r = Registry::new();
    r.responder("Relay", |ctx: FlowContext| async move {
        let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
        let next: String = ctx.receive(&session).await?;
        let answer = if next.is_empty() {
            1u64
        } else {
            let onward = ctx.initiate(&name(&next)).await?;
            ctx.send_and_receive::<_, u64>(&onward, &String::new()).await? + 1
        };
        ctx.send(&session, &answer).await
    });
    r
}

/// Mallory opens a `Relay` session with Bob under message id `init` (on session 9), Bob's
/// responder asks Carol; returns Bob's responder's id and the id of its first message to Carol.
/// Before any of it, if given, Mallory sends Carol a message of her own under `pre_empt`.
async fn relay_through_bob(
    init: treaty_net::messaging::MessageId,
    pre_empt: Option<treaty_net::messaging::MessageId>,
) -> (bool, Option<treaty_net::messaging::MessageId>) {
    use treaty_flows::protocol::{Envelope, SessionMessage};
    use treaty_net::messaging::Outgoing;
    const MALLORY: &str = "O=Mallory,L=Rome,C=IT";
    const CAROL: &str = "O=Carol,L=Madrid,C=ES";
    let net = SimNetwork::new();
    let dir = Directory::default();
    let (dm, db, dc) = (Disk::default(), Disk::default(), Disk::default());
    let mallory = Node::start(&net, &dir, MALLORY, &dm, Registry::new(), EngineOptions::default()).await;
    let bob = Node::start(&net, &dir, BOB, &db, relays(), EngineOptions::default()).await;
    let _carol = Node::start(&net, &dir, CAROL, &dc, relays(), EngineOptions::default()).await;
    let flow_message = |to: &str, message: SessionMessage| Outgoing {
        destination: name(to),
        session: 9,
        topic: protocol::FLOW_TOPIC.into(),
        payload: treaty_core::encoding::encode(&Envelope { to_initiator: false, message }),
    };
    if let Some(id) = pre_empt {
        let decoy = SessionMessage::Data(treaty_core::encoding::encode(&0u64));
        mallory.messenger.send_with_ids(vec![(id, flow_message(CAROL, decoy))]).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !dm.messages.outbox(&name(CAROL), 10).await.unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "Carol never took Mallory's message");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let open = SessionMessage::Init { flow: "Relay".into(), version: 1, payload: Some(treaty_core::encoding::encode(&CAROL.to_string())) };
    mallory.messenger.send_with_ids(vec![(init, flow_message(BOB, open))]).await.unwrap();
    let responder = FlowId::responder_for(&init.received_from(&name(MALLORY)));
    let completed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Some(r)) = bob.engine.get(responder).await
                && r.status == FlowStatus::Completed
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok();
    let to_carol = db.flows.journal(responder).await.unwrap().into_iter().find_map(|e| match e {
        Entry::Sent { session, message } if session != 9 => Some(message),
        _ => None,
    });
    (completed, to_carol)
}

/// A responder's flow id follows from the opening message, whose id its initiator chose, and
/// the ids of the responder's messages follow from its flow id: Mallory can compute the id of
/// the message Bob's responder will send Carol. Sending Carol a message of her own under that
/// id first must not get Bob's dropped as a duplicate (it did until messages were filed under
/// their sender, `MessageId::received_from`): Bob's responder still completes.
#[tokio::test]
async fn an_initiator_cannot_get_its_responders_message_to_a_third_node_dropped() {
    let init = treaty_net::messaging::MessageId::random();
    let (completed, to_carol) = relay_through_bob(init, None).await;
    assert!(completed, "the relay did not complete unhindered");
    let to_carol = to_carol.expect("Bob's responder journaled its message to Carol");
    // The same opening message on a fresh network: the same ids, computed in advance.
    let (completed, again) = relay_through_bob(init, Some(to_carol)).await;
    assert_eq!(again, Some(to_carol), "the ids are not reproducible: the test proves nothing");
    assert!(completed, "Mallory's message made Bob's to Carol a duplicate: Bob's responder never completed");
}

/// An opening message a responder flow took before (the node then ran code that did not
/// answer it without a flow, and stopped before marking it processed) is that flow's: after
/// the upgrade it is marked processed, not answered a second time.
#[tokio::test]
async fn an_opening_message_a_responder_flow_took_is_not_answered_again() {
    use treaty_flows::protocol::{Envelope, SessionMessage};
    use treaty_net::messaging::{InboundMessage, MessageId};
    let knobs = Arc::new(Knobs::default());
    let net = SimNetwork::new();
    let dir = Directory::default();
    let db = Disk::default();
    let question = treaty_core::encoding::encode(&"quick, but taken".to_string());
    let init = Envelope { to_initiator: false, message: SessionMessage::Init { flow: "Ask".into(), version: 1, payload: Some(question) } };
    let init = InboundMessage {
        id: MessageId::random(),
        sender: name(ALICE),
        session: 7,
        topic: protocol::FLOW_TOPIC.into(),
        payload: treaty_core::encoding::encode(&init),
    };
    db.messages.receive(vec![init.clone()]).await.unwrap();
    let record = FlowRecord {
        id: FlowId::responder_for(&init.id),
        name: "Ask".into(),
        version: 1,
        args: b"null".to_vec(),
        status: FlowStatus::Completed,
        result: Some(b"null".to_vec()),
        error: None,
        client_id: None,
        initiator: Some((name(ALICE), 7)),
        created_at: 1,
        updated_at: 1,
    };
    db.flows.create(record).await.unwrap();
    let _bob = Node::start(&net, &dir, BOB, &db, registry(knobs.clone()), EngineOptions::default()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !db.messages.unprocessed(10).await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the opening message was never marked processed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(knobs.answered.load(Ordering::SeqCst), 0, "answered a message its responder flow had taken");
    assert!(db.messages.outbox(&name(ALICE), 10).await.unwrap().is_empty(), "an answer was sent");
}

#[tokio::test]
async fn a_counterparty_without_the_responder_says_so() {
    let (_n, _d, _da, _db, alice, _bob) = pair(Arc::default()).await;
    let id = alice.engine.start("Orphan", json!(BOB), None).await.unwrap();
    let r = finished(&alice.engine, id).await;
    assert_eq!(r.status, FlowStatus::Failed);
    assert!(r.error.as_deref().unwrap().contains("has no responder for flow Orphan"), "{r:?}");
}

#[tokio::test]
async fn bad_requests_are_refused_with_what_is_wrong() {
    let (_n, _d, _da, _db, alice, _bob) = pair(Arc::default()).await;
    let e = alice.engine.start("Pong", json!({}), None).await.unwrap_err().to_string();
    assert!(e.contains("no flow named \"Pong\"") && e.contains("Ping"), "{e}");
    let e = alice.engine.start("Ping", json!({"to": BOB}), None).await.unwrap_err().to_string();
    assert!(e.contains("arguments of flow Ping") && e.contains("count"), "{e}");
    let e = alice.engine.start("Ping", json!({"to": BOB, "count": "three"}), None).await.unwrap_err().to_string();
    assert!(e.contains("arguments of flow Ping"), "{e}");
    assert!(alice.engine.list().await.unwrap().is_empty(), "a refused request left a flow behind");
}

#[tokio::test]
async fn the_same_client_id_returns_the_same_flow() {
    let (_n, _d, _da, _db, alice, _bob) = pair(Arc::default()).await;
    let a = alice.engine.start("Ping", json!({"to": BOB, "count": 1}), Some("order-42".into())).await.unwrap();
    let b = alice.engine.start("Ping", json!({"to": BOB, "count": 1}), Some("order-42".into())).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(result(&finished(&alice.engine, a).await)["total"], 0);
    assert_eq!(alice.engine.list().await.unwrap().len(), 1);
    // Another flow under that client id is refused, not answered with the Ping.
    let other = alice.engine.start("LastWord", json!(BOB), Some("order-42".into())).await.unwrap_err();
    assert!(
        matches!(&other, FlowError::ClientIdTaken { existing, requested, .. } if existing == "Ping" && requested == "LastWord"),
        "{other}"
    );
    assert_eq!(alice.engine.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn changed_flow_code_is_hospitalized_not_run_differently_and_can_be_killed() {
    let (_gate, knobs) = gated(0);
    let (net, dir, da, _db, alice, _bob) = pair(knobs.clone()).await;
    let id = alice.engine.start("Ping", json!({"to": BOB, "count": 2}), None).await.unwrap();
    until_bob_received(&knobs, 1).await;
    alice.crash();
    // The new code reads randomness before the clock.
    let mut changed = Registry::new();
    changed.flow("Ping", 2, |ctx: FlowContext, _args: PingArgs| async move {
        ctx.random().await?;
        ctx.now().await?;
        Ok(0)
    });
    let alice = Node::start(&net, &dir, ALICE, &da, changed, EngineOptions::default()).await;
    let r = finished(&alice.engine, id).await;
    assert_eq!(r.status, FlowStatus::Hospitalized);
    let error = r.error.unwrap();
    assert!(error.contains("flow code changed") && error.contains("draw randomness") && error.contains("read the clock"), "{error}");
    let killed = alice.engine.kill(id).await.unwrap();
    assert_eq!(killed.status, FlowStatus::Killed);
}

#[tokio::test]
async fn an_upgraded_flow_started_as_the_old_version_replays_the_old_steps() {
    let (gate, knobs) = gated(0);
    let (net, dir, da, _db, alice, _bob) = pair(knobs.clone()).await;
    let id = alice.engine.start("Ping", json!({"to": BOB, "count": 2}), None).await.unwrap();
    until_bob_received(&knobs, 1).await;
    alice.crash();
    // Version 2 takes other steps, but keeps version 1's for flows started as version 1.
    let mut upgraded = registry(knobs.clone());
    let k = knobs.clone();
    upgraded.flow("Ping", 2, move |ctx: FlowContext, args: PingArgs| {
        let k = k.clone();
        async move {
            if ctx.version() < 2 {
                return ping_v1(ctx, args, k).await;
            }
            ctx.random().await?;
            Ok(json!({ "version": ctx.version() }))
        }
    });
    let alice = Node::start(&net, &dir, ALICE, &da, upgraded, EngineOptions::default()).await;
    gate.add_permits(10);
    let r = finished(&alice.engine, id).await;
    assert_eq!(r.status, FlowStatus::Completed, "{r:?}");
    assert_eq!(result(&r)["total"], 10, "both pings answered, as version 1 does: {r:?}");
    let fresh = alice.engine.start("Ping", json!({"to": BOB, "count": 1}), None).await.unwrap();
    assert_eq!(result(&finished(&alice.engine, fresh).await), json!({ "version": 2 }), "a new flow runs version 2");
}

#[tokio::test]
async fn a_draining_node_starts_no_new_flows() {
    let (_n, _d, _da, _db, alice, _bob) = pair(Arc::default()).await;
    alice.engine.set_draining(true);
    let e = alice.engine.start("Ping", json!({"to": BOB, "count": 1}), None).await.unwrap_err();
    assert_eq!(e, FlowError::Draining);
    alice.engine.set_draining(false);
    let id = alice.engine.start("Ping", json!({"to": BOB, "count": 1}), None).await.unwrap();
    assert_eq!(finished(&alice.engine, id).await.status, FlowStatus::Completed);
}

#[tokio::test]
async fn the_counterparty_check_refuses_before_anything_is_sent() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let check: CounterpartyCheck =
        Arc::new(
            |party: &X500Name, flow: &str| {
                if party.organisation() == "Bob" { Err(format!("Bob is not a member for {flow}")) } else { Ok(()) }
            },
        );
    let options = EngineOptions { counterparty_check: Some(check), ..EngineOptions::default() };
    let alice = Node::start(&net, &dir, ALICE, &Disk::default(), registry(Arc::default()), options).await;
    let _bob = Node::start(&net, &dir, BOB, &Disk::default(), registry(Arc::default()), EngineOptions::default()).await;
    let id = alice.engine.start("Ping", json!({"to": BOB, "count": 1}), None).await.unwrap();
    let r = finished(&alice.engine, id).await;
    assert_eq!(r.status, FlowStatus::Failed);
    assert!(r.error.as_deref().unwrap().contains("Bob is not a member for Ping"), "{r:?}");
    assert!(_bob.engine.list().await.unwrap().is_empty(), "Bob heard from a refused flow");
}
