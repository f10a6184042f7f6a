//! `SendTransaction` / `ReceiveTransaction` with back-chain resolution, between two flow
//! engines over the simulated network: long chains, partly known chains, tampered
//! transactions named, fishing refused, a crash in the middle of a download. Contracts run
//! natively here; crates/treaty-cli/tests/network.rs runs the same flows between real nodes
//! with the wasm sandbox.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use treaty_core::{NetworkParameters, SecureHash, SignedTransaction, TransactionSignature};
use treaty_flows::*;
use treaty_net::messaging::MemoryMessageStore;
use treaty_net::sim::SimNetwork;
use treaty_testkit::{TokenChain, token_chain};

fn ledger() -> Arc<MemoryLedger> {
    let params = NetworkParameters::default();
    let check: AttachmentCheck = Arc::new(move |bytes: &[u8]| treaty_sandbox::check_attachment(bytes, &params).map_err(|e| e.to_string()));
    Arc::new(MemoryLedger::new(Arc::new(treaty_testkit::native_contracts()), check, 1024 * 1024))
}

/// Alice's ledger holds the whole chain and its attachment.
fn seed(l: &MemoryLedger, chain: &TokenChain) {
    let params = NetworkParameters::default();
    l.insert_attachment(treaty_sandbox::check_attachment(&chain.attachment, &params).unwrap());
    for stx in &chain.transactions {
        l.insert(stx.clone());
    }
}

#[derive(Serialize, Deserialize)]
struct ShareArgs {
    to: String,
    tx: SecureHash,
}

/// The wire shape of the resolution protocol, for a misbehaving receiver.
#[derive(Serialize, Deserialize)]
enum Request {
    Transactions { want: Vec<SecureHash>, prefetch: u32 },
    Attachments(Vec<SecureHash>),
    Done,
}

fn registry(l: Arc<MemoryLedger>) -> Registry {
    let mut r = Registry::new();
    for name in ["Share", "ShareFishing"] {
        let l1 = l.clone();
        r.flow(name, 1, move |ctx: FlowContext, args: ShareArgs| {
            let l = l1.clone();
            async move {
                let stx = l.get(&args.tx).ok_or_else(|| FlowError::Exception(format!("no transaction {}", args.tx)))?;
                let session = ctx.initiate(&args.to.parse().map_err(|e| FlowError::Exception(format!("{e}")))?).await?;
                let served = send_transaction(&ctx, &session, &l, &stx).await?;
                let resolved: u64 = ctx.receive(&session).await?;
                Ok(json!({ "served": served, "resolved": resolved }))
            }
        });
    }
    // Sends the transaction with, unasked, another that it does not depend on.
    let l3 = l.clone();
    r.flow("SharePushingStrangers", 1, move |ctx: FlowContext, args: (ShareArgs, SecureHash)| {
        let l = l3.clone();
        async move {
            let (args, stranger) = args;
            let (stx, other) = l.get(&args.tx).zip(l.get(&stranger)).ok_or_else(|| FlowError::Exception("unknown transaction".into()))?;
            let session = ctx.initiate(&args.to.parse().map_err(|e| FlowError::Exception(format!("{e}")))?).await?;
            let batch = (vec![(stx.id(), stx.to_bytes()), (other.id(), other.to_bytes())],);
            ctx.send(&session, &batch).await?;
            let _: Request = ctx.receive(&session).await?;
            Ok(json!({}))
        }
    });
    for name in ["Share", "SharePushingStrangers"] {
        let l2 = l.clone();
        r.responder(name, move |ctx: FlowContext| {
            let l = l2.clone();
            async move {
                let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
                let got = receive_transaction(&ctx, &session, &l, ReceiveOptions { record: true, ..ReceiveOptions::default() }).await?;
                ctx.send(&session, &(got.resolved as u64)).await
            }
        });
    }
    // Asks for the notary's... no: for a transaction outside what was sent.
    r.responder("ShareFishing", move |ctx: FlowContext| async move {
        let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
        let _top: (Vec<(SecureHash, Vec<u8>)>,) = ctx.receive(&session).await?;
        let secret = SecureHash::sha256(b"some other transaction id");
        ctx.send(&session, &Request::Transactions { want: vec![secret], prefetch: 0 }).await?;
        let _: (Vec<(SecureHash, Vec<u8>)>,) = ctx.receive(&session).await?;
        Ok(())
    });
    r
}

struct Pair {
    _net: SimNetwork,
    alice: Node,
    bob: Node,
    alice_ledger: Arc<MemoryLedger>,
    bob_ledger: Arc<MemoryLedger>,
    net: SimNetwork,
    dir: Directory,
    bob_disk: Disk,
}

async fn pair() -> Pair {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let (alice_ledger, bob_ledger) = (ledger(), ledger());
    let bob_disk = Disk::default();
    let alice = Node::start(&net, &dir, ALICE, &Disk::default(), registry(alice_ledger.clone()), EngineOptions::default()).await;
    let bob = Node::start(&net, &dir, BOB, &bob_disk, registry(bob_ledger.clone()), EngineOptions::default()).await;
    Pair { _net: net.clone(), alice, bob, alice_ledger, bob_ledger, net, dir, bob_disk }
}

async fn share(p: &Pair, flow: &str, tx: SecureHash) -> FlowRecord {
    let id = p.alice.engine.start(flow, json!({ "to": BOB, "tx": tx }), None).await.unwrap();
    finished(&p.alice.engine, id).await
}

#[tokio::test]
async fn a_chain_of_1000_resolves_in_a_few_round_trips() {
    let p = pair().await;
    let chain = token_chain(999, 1).unwrap();
    seed(&p.alice_ledger, &chain);
    let r = share(&p, "Share", chain.tip().id()).await;
    assert_eq!(result(&r), json!({ "served": 999, "resolved": 999 }));
    assert_eq!(p.bob_ledger.len(), 1000, "Bob recorded the tip and its whole back-chain");
    for stx in &chain.transactions {
        assert_eq!(p.bob_ledger.get(&stx.id()).as_ref(), Some(stx));
    }
    // Breadth first with a growing prefetch: ~log2(1000/64) requests, not 1000.
    let journal = p.alice.engine.journal(r.id).await.unwrap();
    let requests = journal.iter().filter(|e| matches!(e, Entry::Received { .. })).count();
    assert!(requests <= 10, "{requests} messages received by the sender");
}

#[tokio::test]
async fn a_missing_parent_comes_with_the_transaction_without_a_request() {
    let p = pair().await;
    let chain = token_chain(5, 7).unwrap();
    seed(&p.alice_ledger, &chain);
    // Bob knows all but the tip and its parent.
    seed(&p.bob_ledger, &TokenChain { transactions: chain.transactions[..4].to_vec(), ..token_chain(0, 7).unwrap() });
    let r = share(&p, "Share", chain.tip().id()).await;
    assert_eq!(result(&r), json!({ "served": 1, "resolved": 1 }));
    assert_eq!(p.bob_ledger.get(&chain.transactions[4].id()).as_ref(), Some(&chain.transactions[4]), "the parent is recorded");
    assert_eq!(p.bob_ledger.len(), 6);
    // Alice heard only Bob's Done and his answer: he asked for nothing.
    let journal = p.alice.engine.journal(r.id).await.unwrap();
    let received = journal.iter().filter(|e| matches!(e, Entry::Received { .. })).count();
    assert_eq!(received, 2, "{journal:?}");
}

#[tokio::test]
async fn a_transaction_pushed_that_is_not_a_dependency_is_refused() {
    let p = pair().await;
    let chain = token_chain(3, 8).unwrap();
    seed(&p.alice_ledger, &chain);
    let stranger = chain.transactions[0].id();
    let id = p.alice.engine.start("SharePushingStrangers", json!([{ "to": BOB, "tx": chain.tip().id() }, stranger]), None).await.unwrap();
    let r = finished(&p.alice.engine, id).await;
    assert_eq!(r.status, FlowStatus::Failed);
    let err = r.error.unwrap();
    assert!(err.contains(&stranger.to_string()) && err.contains("does not depend on it"), "{err}");
    assert_eq!(p.bob_ledger.len(), 0, "nothing recorded");
}

#[tokio::test]
async fn an_attachment_another_flow_records_meanwhile_is_not_lost() {
    // Found by fifty concurrent payments: a responder read the contract attachment as missing,
    // another responder recorded it, and the first then decided it was not missing after all —
    // it was in neither list, and verification failed with TX-UNRESOLVED-ATTACHMENT.
    let p = pair().await;
    let chain = token_chain(3, 7).unwrap();
    seed(&p.alice_ledger, &chain);
    let params = NetworkParameters::default();
    p.bob_ledger.store_after_next_read(treaty_sandbox::check_attachment(&chain.attachment, &params).unwrap());
    let r = share(&p, "Share", chain.tip().id()).await;
    assert_eq!(r.status, FlowStatus::Completed, "{r:?}");
    assert!(p.bob_ledger.get(&chain.tip().id()).is_some());
}

#[tokio::test]
async fn concurrent_flows_needing_the_same_attachment_download_it_once() {
    // A payee's first payments from a payer arrive in a burst, each needing the contract it
    // has never seen: each flow used to ask for it (128 downloads of 255 KB at 128 in flight).
    let p = pair().await;
    let chains: Vec<TokenChain> = (0..8).map(|seed| token_chain(1, 20 + seed).unwrap()).collect();
    for c in &chains {
        seed(&p.alice_ledger, c);
    }
    let mut ids = Vec::new();
    for c in &chains {
        ids.push(p.alice.engine.start("Share", json!({ "to": BOB, "tx": c.tip().id() }), None).await.unwrap());
    }
    let mut asked = 0;
    for id in ids {
        let r = finished(&p.alice.engine, id).await;
        assert_eq!(r.status, FlowStatus::Completed, "{r:?}");
        // What Alice's side received: Bob's requests (for the attachment, then Done) and his answer.
        let journal = p.alice.engine.journal(id).await.unwrap();
        asked += journal.iter().filter(|e| matches!(e, Entry::Received { .. })).count() - 2;
    }
    assert_eq!(asked, 1, "the attachment was asked for {asked} times");
    assert!(p.bob_ledger.attachment_fetches().is_empty(), "every claim was released");
    for c in &chains {
        assert!(p.bob_ledger.get(&c.tip().id()).is_some());
    }
}

#[tokio::test]
async fn only_what_the_receiver_lacks_is_downloaded() {
    let p = pair().await;
    let chain = token_chain(300, 2).unwrap();
    seed(&p.alice_ledger, &chain);
    // Bob knows the first 200 already (and the attachment).
    seed(&p.bob_ledger, &TokenChain { transactions: chain.transactions[..200].to_vec(), ..token_chain(0, 2).unwrap() });
    let r = share(&p, "Share", chain.tip().id()).await;
    let out = result(&r);
    assert_eq!(out["resolved"], 100, "{out}");
    assert!(out["served"].as_u64().unwrap() < 200, "bounded waste: {out}");
    assert_eq!(p.bob_ledger.len(), 301);
}

#[tokio::test]
async fn a_transaction_whose_bytes_were_altered_is_named_and_nothing_recorded() {
    let p = pair().await;
    let chain = token_chain(99, 3).unwrap();
    seed(&p.alice_ledger, &chain);
    let victim = chain.transactions[40].id();
    // Alice's copy of transaction 40 is another transaction's content under its id.
    p.alice_ledger.insert_as(victim, token_chain(0, 99).unwrap().transactions[0].clone());
    let r = share(&p, "Share", chain.tip().id()).await;
    assert_eq!(r.status, FlowStatus::Failed, "{r:?}");
    let err = r.error.unwrap();
    assert!(err.contains(&victim.to_string()) && err.contains("does not match its id"), "{err}");
    assert_eq!(p.bob_ledger.len(), 0, "nothing recorded");
}

#[tokio::test]
async fn a_forged_signature_in_the_back_chain_is_named() {
    let p = pair().await;
    let chain = token_chain(99, 4).unwrap();
    seed(&p.alice_ledger, &chain);
    let victim = &chain.transactions[60];
    // Same content (same id), the owner's signature replaced by one over another id.
    let other = token_chain(0, 98).unwrap();
    let forged: Vec<TransactionSignature> = vec![other.transactions[0].sigs()[0].clone(), victim.sigs()[1].clone()];
    p.alice_ledger.insert(SignedTransaction::new(victim.tx().clone(), forged));
    let r = share(&p, "Share", chain.tip().id()).await;
    assert_eq!(r.status, FlowStatus::Failed, "{r:?}");
    let err = r.error.unwrap();
    assert!(err.contains(&victim.id().to_string()) && err.contains("TX-"), "{err}");
    assert_eq!(p.bob_ledger.len(), 0, "nothing recorded");
}

#[tokio::test]
async fn the_sender_refuses_to_serve_outside_the_dependency_graph() {
    let p = pair().await;
    let chain = token_chain(3, 5).unwrap();
    seed(&p.alice_ledger, &chain);
    let r = share(&p, "ShareFishing", chain.tip().id()).await;
    assert_eq!(r.status, FlowStatus::Failed);
    let err = r.error.unwrap();
    assert!(err.contains("not in the dependency graph"), "{err}");
}

#[tokio::test]
async fn a_receiver_crashing_mid_download_finishes_once_after_restart() {
    let p = pair().await;
    let chain = token_chain(2000, 6).unwrap();
    seed(&p.alice_ledger, &chain);
    let id = p.alice.engine.start("Share", json!({ "to": BOB, "tx": chain.tip().id() }), None).await.unwrap();
    // Wait until Bob's responder has journaled a few rounds, then crash Bob.
    let bob_flow = loop {
        let flows = p.bob.engine.list().await.unwrap();
        if let Some(f) = flows.first()
            && p.bob.engine.journal(f.id).await.unwrap().len() >= 5
        {
            break f.id;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let Pair { bob, bob_disk, net, dir, bob_ledger, alice, .. } = p;
    bob.crash();
    let bob = Node::start(&net, &dir, BOB, &bob_disk, registry(bob_ledger.clone()), EngineOptions::default()).await;
    let r = finished(&alice.engine, id).await;
    assert_eq!(result(&r)["resolved"], 2000);
    assert_eq!(finished(&bob.engine, bob_flow).await.status, FlowStatus::Completed);
    assert_eq!(bob_ledger.len(), 2001);
    assert_eq!(bob.engine.list().await.unwrap().len(), 1, "one responder, replayed");
}

/// Counts the journal writes and record reads of the flows of a node, and can hold the write
/// that carries a side effect's answer.
struct Watched {
    appends: std::sync::Mutex<Vec<Vec<Entry>>>,
    gets: std::sync::atomic::AtomicUsize,
    hold_answers: std::sync::atomic::AtomicBool,
    held: tokio::sync::Semaphore,
}

impl Default for Watched {
    fn default() -> Watched {
        Watched {
            appends: Default::default(),
            gets: Default::default(),
            hold_answers: Default::default(),
            held: tokio::sync::Semaphore::new(0),
        }
    }
}

impl ParkHook for Watched {
    async fn before_park(&self, _: &Parking) -> Result<(), treaty_net::messaging::StoreError> {
        Ok(())
    }
    async fn before_append(&self, _: FlowId, entries: &[Entry]) -> Result<(), treaty_net::messaging::StoreError> {
        self.appends.lock().unwrap().push(entries.to_vec());
        if self.hold_answers.load(std::sync::atomic::Ordering::SeqCst) && entries.iter().any(|e| matches!(e, Entry::SideEffect { .. })) {
            self.held.add_permits(1);
            std::future::pending::<()>().await;
        }
        Ok(())
    }
    fn before_get(&self, _: FlowId) {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Alice, with the whole of `chain`, and Bob, who has all but its tip and whose flows are kept
/// in a watched store.
async fn watched_pair(
    chain: &TokenChain,
) -> (SimNetwork, Directory, Node, Node, Arc<HookedParking<Watched>>, Arc<MemoryLedger>, Arc<MemoryMessageStore>) {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let (alice_ledger, bob_ledger) = (ledger(), ledger());
    seed(&alice_ledger, chain);
    let n = chain.transactions.len();
    seed(&bob_ledger, &TokenChain { transactions: chain.transactions[..n - 1].to_vec(), ..token_chain(0, 7).unwrap() });
    let alice = Node::start(&net, &dir, ALICE, &Disk::default(), registry(alice_ledger), EngineOptions::default()).await;
    let store = Arc::new(HookedParking::new(Watched::default()));
    let messages = Arc::new(MemoryMessageStore::default());
    let bob = Node::start_with(&net, &dir, BOB, &messages, store.clone(), registry(bob_ledger.clone()), EngineOptions::default()).await;
    (net, dir, alice, bob, store, bob_ledger, messages)
}

/// A receiver that has every dependency (the common case for a payment between parties that
/// trade often) asks the database its questions, but their answers ("all recorded", "none
/// missing") cannot change, so they go to the journal with the flow's end: two journal
/// writes in all, the opening message and the end. Starting the responder reads nothing.
#[tokio::test]
async fn settled_answers_cost_the_receiver_no_journal_writes_of_their_own() {
    let chain = token_chain(3, 7).unwrap();
    let (_net, _dir, alice, bob, store, bob_ledger, _m) = watched_pair(&chain).await;
    let id = alice.engine.start("Share", json!({ "to": BOB, "tx": chain.tip().id() }), None).await.unwrap();
    assert_eq!(result(&finished(&alice.engine, id).await), json!({ "served": 1, "resolved": 0 }));
    // (Before waiting on Bob's flow below, which reads its record once it has ended.)
    assert_eq!(store.hook.gets.load(std::sync::atomic::Ordering::SeqCst), 0, "a record was read to start the responder");
    let responder = bob.engine.list().await.unwrap()[0].id;
    assert_eq!(finished(&bob.engine, responder).await.status, FlowStatus::Completed);
    assert_eq!(bob_ledger.len(), 4, "Bob recorded the tip");
    let writes = store.hook.appends.lock().unwrap().clone();
    let shape: Vec<Vec<String>> = writes.iter().map(|w| w.iter().map(Entry::describe).collect()).collect();
    assert_eq!(writes.len(), 2, "{shape:?}");
    assert!(matches!(writes[0][..], [Entry::Received { .. }]), "{shape:?}");
    let answers: Vec<&str> =
        writes[1].iter().filter_map(|e| if let Entry::SideEffect { key, .. } = e { Some(key.as_str()) } else { None }).collect();
    assert_eq!(answers, ["resolve.unrecorded.0", "resolve.attachments.0"]);
}

/// A settled answer lost in a crash (the receiver dies while writing its end, after it
/// recorded the transaction and its messages left) is asked again after the restart: the
/// replay finishes the flow once, with each answer journaled once.
#[tokio::test]
async fn a_settled_answer_lost_in_a_crash_is_asked_again() {
    let chain = token_chain(3, 7).unwrap();
    let (net, dir, alice, bob, store, bob_ledger, messages) = watched_pair(&chain).await;
    store.hook.hold_answers.store(true, std::sync::atomic::Ordering::SeqCst);
    let id = alice.engine.start("Share", json!({ "to": BOB, "tx": chain.tip().id() }), None).await.unwrap();
    store.hook.held.acquire().await.unwrap().forget();
    let responder = bob.engine.list().await.unwrap()[0].id;
    // The end is held: only the opening message is in the journal.
    assert_eq!(store.inner.journal(responder).await.unwrap().len(), 1);
    bob.crash();
    store.hook.hold_answers.store(false, std::sync::atomic::Ordering::SeqCst);
    let bob = Node::start_with(&net, &dir, BOB, &messages, store.clone(), registry(bob_ledger.clone()), EngineOptions::default()).await;
    assert_eq!(finished(&bob.engine, responder).await.status, FlowStatus::Completed);
    assert_eq!(result(&finished(&alice.engine, id).await), json!({ "served": 1, "resolved": 0 }));
    let journal = store.inner.journal(responder).await.unwrap();
    let answers = journal.iter().filter(|e| matches!(e, Entry::SideEffect { .. })).count();
    assert_eq!(answers, 2, "{:?}", journal.iter().map(Entry::describe).collect::<Vec<_>>());
    assert_eq!(bob_ledger.len(), 4);
    assert_eq!(bob.engine.list().await.unwrap().len(), 1, "one responder, replayed");
}
