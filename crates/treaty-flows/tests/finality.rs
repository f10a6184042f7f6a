//! Finality through a notary, between three flow engines over the simulated network: the
//! payer notarises (non-validating: the notary sees a tear-off), records and shares; a double
//! spend is refused naming the winner; a stale time window is refused; the payer crashing
//! after notarisation still finishes. The notary's uniqueness log is the in-memory provider
//! here; crates/treaty-notary/tests runs the same rules on redb and PostgreSQL.

mod common;

use std::sync::Arc;

use common::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use treaty_core::*;
use treaty_flows::*;
use treaty_net::sim::SimNetwork;
use treaty_notary::{MemoryUniquenessProvider, NotaryService, Rules};
use treaty_testkit::{TOKEN, Token, TokenChain, TokenCommand, key, token_chain};

const NOTARY: &str = "O=Chain Notary,L=Zurich,C=CH";

fn ledger() -> Arc<MemoryLedger> {
    let params = NetworkParameters::default();
    let check: AttachmentCheck = Arc::new(move |bytes: &[u8]| treaty_sandbox::check_attachment(bytes, &params).map_err(|e| e.to_string()));
    Arc::new(MemoryLedger::new(Arc::new(treaty_testkit::native_contracts()), check, 1024 * 1024))
}

fn alice() -> Party {
    Party { name: name(ALICE), owning_key: key(20).unwrap().public() }
}

#[derive(Serialize, Deserialize)]
struct PayArgs {
    to: String,
    salt: u8,
    stale: bool,
    /// Tokens paid (the tip holds 100: more breaks the token contract).
    #[serde(default = "hundred")]
    amount: u64,
    /// Only ask the notary, skipping the payer's own checks (a careless or malicious client).
    #[serde(default)]
    notarise_only: bool,
}

fn hundred() -> u64 {
    100
}

/// Spends the chain's tip (holder B's, key 2) to holder A, optionally with a window long past.
fn payment(chain: &TokenChain, salt: u8, stale: bool, amount: u64) -> SignedTransaction {
    let (a, b) = (key(1).unwrap(), key(2).unwrap());
    let holder_a = Party { name: "O=Holder A,L=London,C=GB".parse().unwrap(), owning_key: a.public() };
    let out = TransactionState::new(
        &Token { owner: holder_a.into(), amount },
        TOKEN,
        chain.notary.clone(),
        AttachmentConstraint::Hash(chain.attachment_id),
    );
    let mut builder = TransactionBuilder::new(Some(chain.notary.clone()))
        .input(StateRef { txhash: chain.tip().id(), index: 0 })
        .output(out)
        .command(Command::new(&TokenCommand::Move, vec![b.public()]))
        .attachment(chain.attachment_id)
        .summary("Move 100 tokens");
    if stale {
        builder = builder.time_window(TimeWindow::between(Timestamp(1_000_000), Timestamp(2_000_000)).unwrap());
    }
    let wtx = builder.build(PrivacySalt([salt; 32])).unwrap();
    let id = wtx.id();
    SignedTransaction::new(wtx, vec![b.sign_transaction(&id, PLATFORM_VERSION)])
}

fn registry(l: Arc<MemoryLedger>, chain: Arc<TokenChain>, notary: Option<Arc<NotaryService>>) -> Registry {
    let mut r = Registry::new();
    let keys = Arc::new(KeyPairs::new(vec![key(2).unwrap(), key(20).unwrap()]));
    let (l1, l2) = (l.clone(), l.clone());
    r.flow("Pay", 1, move |ctx: FlowContext, args: PayArgs| {
        let (l, keys, chain) = (l1.clone(), keys.clone(), chain.clone());
        async move {
            let stx = payment(&chain, args.salt, args.stale, args.amount);
            if args.notarise_only {
                let sig = notarise(&ctx, &l, &keys, &alice(), &stx).await?;
                return Ok(json!({ "tx": stx.id().to_string(), "notary_signed": sig.verify(&stx.id()).is_ok() }));
            }
            let bob = ctx.initiate(&args.to.parse().map_err(|e| FlowError::Exception(format!("{e}")))?).await?;
            let done = finality(&ctx, &l, &keys, &alice(), stx, &[bob]).await?;
            Ok(json!({ "tx": done.id().to_string(), "signatures": done.sigs().len() }))
        }
    });
    r.responder("Pay", move |ctx: FlowContext| {
        let l = l.clone();
        async move {
            let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
            receive_finality(&ctx, &session, &l).await.map(|_| ())
        }
    });
    if let Some(service) = notary {
        r.responder(NOTARY_PROTOCOL, move |ctx: FlowContext| {
            let (service, l) = (service.clone(), l2.clone());
            async move { notary_responder(&ctx, &service, &l, |who: &X500Name| (who == &name(ALICE)).then(alice)).await }
        });
    }
    r
}

struct Net {
    net: SimNetwork,
    notary_ledger: Arc<MemoryLedger>,
    dir: Directory,
    alice: Node,
    alice_disk: Disk,
    alice_ledger: Arc<MemoryLedger>,
    bob_ledger: Arc<MemoryLedger>,
    chain: Arc<TokenChain>,
    _bob: Node,
    _notary: Node,
}

async fn network() -> Net {
    network_with(false).await
}

/// What every network here is made of: the token chain, Alice's ledger holding it, Bob's and
/// the notary's ledgers (empty), and a notary service on the in-memory provider.
struct Parts {
    chain: Arc<TokenChain>,
    alice_ledger: Arc<MemoryLedger>,
    bob_ledger: Arc<MemoryLedger>,
    notary_ledger: Arc<MemoryLedger>,
    service: NotaryService,
}

fn parts() -> Parts {
    let chain = Arc::new(token_chain(3, 21).unwrap());
    let (alice_ledger, bob_ledger, notary_ledger) = (ledger(), ledger(), ledger());
    alice_ledger.insert_attachment(treaty_sandbox::check_attachment(&chain.attachment, &NetworkParameters::default()).unwrap());
    chain.transactions.iter().for_each(|t| alice_ledger.insert(t.clone()));
    let provider = Arc::new(MemoryUniquenessProvider::new(Rules::default()));
    let service = NotaryService::new(chain.notary.clone(), key(3).unwrap(), provider).unwrap();
    Parts { chain, alice_ledger, bob_ledger, notary_ledger, service }
}

/// Alice, Bob and a notary (validating or not; the ledgers' network parameters agree).
async fn network_with(validating: bool) -> Net {
    let (net, dir) = (SimNetwork::new(), Directory::default());
    let Parts { chain, alice_ledger, bob_ledger, notary_ledger, service } = parts();
    let service = Arc::new(service.validating(validating));
    if validating {
        alice_ledger.set_validating_notary(chain.notary.name.clone());
    }
    let alice_disk = Disk::default();
    let alice =
        Node::start(&net, &dir, ALICE, &alice_disk, registry(alice_ledger.clone(), chain.clone(), None), EngineOptions::default()).await;
    let bob =
        Node::start(&net, &dir, BOB, &Disk::default(), registry(bob_ledger.clone(), chain.clone(), None), EngineOptions::default()).await;
    let notary = Node::start(
        &net,
        &dir,
        NOTARY,
        &Disk::default(),
        registry(notary_ledger.clone(), chain.clone(), Some(service)),
        EngineOptions::default(),
    )
    .await;
    Net { net, notary_ledger, dir, alice, alice_disk, alice_ledger, bob_ledger, chain, _bob: bob, _notary: notary }
}

async fn pay(engine: &FlowEngine, salt: u8, stale: bool) -> FlowRecord {
    let id = engine.start("Pay", json!({ "to": BOB, "salt": salt, "stale": stale }), None).await.unwrap();
    finished(engine, id).await
}

#[tokio::test]
async fn a_payment_is_notarised_recorded_and_shared() {
    let n = network().await;
    let r = pay(&n.alice.engine, 1, false).await;
    let out = result(&r);
    assert_eq!(out["signatures"], 2, "the owner's and the notary's");
    let id: SecureHash = out["tx"].as_str().unwrap().parse().unwrap();
    let mine = n.alice_ledger.get(&id).expect("Alice recorded it");
    mine.verify_signatures_except(&[]).expect("fully signed, the notary's signature valid");
    assert_eq!(n.bob_ledger.get(&id).as_ref(), Some(&mine), "Bob recorded the same transaction");
    assert_eq!(n.bob_ledger.len(), 5, "with its back-chain");
}

#[tokio::test]
async fn a_double_spend_is_refused_naming_the_transaction_that_won() {
    let n = network().await;
    let first = result(&pay(&n.alice.engine, 1, false).await);
    let r = pay(&n.alice.engine, 2, false).await;
    assert_eq!(r.status, FlowStatus::Failed);
    let err = r.error.unwrap();
    let tip = StateRef { txhash: n.chain.tip().id(), index: 0 };
    assert!(err.contains(first["tx"].as_str().unwrap()) && err.contains(&tip.to_string()) && err.contains("already consumed"), "{err}");
    assert_eq!(n.bob_ledger.len(), 5, "Bob never heard of the refused one");
}

#[tokio::test]
async fn a_stale_time_window_is_refused() {
    let n = network().await;
    let r = pay(&n.alice.engine, 3, true).await;
    assert_eq!(r.status, FlowStatus::Failed);
    assert!(r.error.as_ref().unwrap().contains("outside the time window"), "{r:?}");
    // Nothing was consumed: a payment with a good window goes through.
    result(&pay(&n.alice.engine, 4, false).await);
}

#[tokio::test]
async fn a_validating_notary_verifies_the_whole_chain_and_keeps_it() {
    let n = network_with(true).await;
    let out = result(&pay(&n.alice.engine, 6, false).await);
    assert_eq!(out["signatures"], 2);
    assert_eq!(n.notary_ledger.len(), 4, "the notary resolved and kept the back-chain (not the transaction itself)");
    assert_eq!(n.bob_ledger.len(), 5);
}

async fn notarise_only(engine: &FlowEngine, amount: u64) -> FlowRecord {
    let args = json!({ "to": BOB, "salt": 7, "stale": false, "amount": amount, "notarise_only": true });
    let id = engine.start("Pay", args, None).await.unwrap();
    finished(engine, id).await
}

#[tokio::test]
async fn a_validating_notary_refuses_a_contract_invalid_transaction() {
    let n = network_with(true).await;
    let r = notarise_only(&n.alice.engine, 200).await;
    assert_eq!(r.status, FlowStatus::Failed);
    let err = r.error.unwrap();
    assert!(
        err.contains("notary refused") && err.contains("as invalid") && err.contains("a move must conserve tokens: 100 in, 200 out"),
        "{err}"
    );
    // Nothing was consumed: the valid payment still goes through.
    result(&pay(&n.alice.engine, 8, false).await);
}

#[tokio::test]
async fn a_non_validating_notary_cannot_see_that_a_transaction_is_invalid() {
    // The documented trade-off: it sees only inputs, references, time window and notary, so it
    // signs a transaction whose contract fails. Participants still refuse to record it.
    let n = network().await;
    let out = result(&notarise_only(&n.alice.engine, 200).await);
    assert_eq!(out["notary_signed"], true);
    assert!(n.notary_ledger.is_empty(), "and it learned nothing of the back-chain");
}

#[tokio::test]
async fn the_payer_crashing_after_notarisation_still_records_and_shares_once() {
    let n = network().await;
    let id = n.alice.engine.start("Pay", json!({ "to": BOB, "salt": 5, "stale": false }), None).await.unwrap();
    // Crash Alice as soon as the notary's answer is journaled.
    loop {
        let journal = n.alice.engine.journal(id).await.unwrap();
        if journal.iter().filter(|e| matches!(e, Entry::Received { .. })).count() >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let Net { alice, alice_disk, net, dir, alice_ledger, bob_ledger, chain, .. } = n;
    alice.crash();
    let alice = Node::start(&net, &dir, ALICE, &alice_disk, registry(alice_ledger.clone(), chain, None), EngineOptions::default()).await;
    let out = result(&finished(&alice.engine, id).await);
    let tx: SecureHash = out["tx"].as_str().unwrap().parse().unwrap();
    assert!(alice_ledger.get(&tx).is_some() && bob_ledger.get(&tx).is_some());
}

#[tokio::test]
async fn a_cluster_member_that_does_not_answer_is_left_for_the_next() {
    cluster_failover(EngineOptions::default()).await;
}

#[tokio::test]
async fn a_flow_parked_while_waiting_for_a_cluster_member_wakes_at_the_deadline() {
    // Parked at once: only the engine's alarm can bring it back to ask the next member.
    cluster_failover(EngineOptions { evict_after: Some(std::time::Duration::ZERO), ..EngineOptions::default() }).await;
}

async fn cluster_failover(alice_options: EngineOptions) {
    // A notary cluster of two members sharing the service (its key, its uniqueness log); the
    // member this transaction's id picks first is down, so Alice must move on to the other.
    let (net, dir) = (SimNetwork::new(), Directory::default());
    let Parts { chain, alice_ledger, bob_ledger, notary_ledger: member_ledger, service } = parts();
    let service = Arc::new(service);
    let (down, up) = ("CN=Replica 1,O=Chain Notary,L=Zurich,C=CH", "CN=Replica 2,O=Chain Notary,L=Zurich,C=CH");
    let id = payment(&chain, 9, false, 100).id();
    let first = u64::from_le_bytes(id.as_bytes()[..8].try_into().unwrap()) as usize % 2;
    let members = if first == 0 { vec![name(down), name(up)] } else { vec![name(up), name(down)] };
    alice_ledger.set_notary_members(chain.notary.name.clone(), members);
    dir.write().unwrap().insert(name(down), vec!["sim:nobody-listens".into()]);
    let alice = Node::start(&net, &dir, ALICE, &Disk::default(), registry(alice_ledger.clone(), chain.clone(), None), alice_options).await;
    let _bob =
        Node::start(&net, &dir, BOB, &Disk::default(), registry(bob_ledger.clone(), chain.clone(), None), EngineOptions::default()).await;
    let _member =
        Node::start(&net, &dir, up, &Disk::default(), registry(member_ledger, chain.clone(), Some(service)), EngineOptions::default())
            .await;

    let began = std::time::Instant::now();
    let flow = alice.engine.start("Pay", json!({ "to": BOB, "salt": 9, "stale": false }), None).await.unwrap();
    let out = result(&finished(&alice.engine, flow).await);
    assert_eq!(out["tx"], id.to_string());
    assert_eq!(out["signatures"], 2, "notarised by the member that answered, with the service key");
    assert!(began.elapsed() >= CLUSTER_MEMBER_WAIT, "it waited for the silent member first ({:?})", began.elapsed());
    let journal = alice.engine.journal(flow).await.unwrap();
    assert_eq!(journal.iter().filter(|e| matches!(e, Entry::TimedOut { .. })).count(), 1, "{journal:?}");
    assert!(bob_ledger.get(&id).is_some());
}

/// Alice, Bob and a notary that answers its first request with `first` (whatever the
/// request), then serves normally. Returns Alice's node and her payment's flow record, journal
/// and how long it took.
async fn pay_through_a_notary_answering_first(first: treaty_notary::NotaryRefusal) -> (FlowRecord, Vec<Entry>, std::time::Duration) {
    let (net, dir) = (SimNetwork::new(), Directory::default());
    let Parts { chain, alice_ledger, bob_ledger, notary_ledger, service } = parts();
    let service = Arc::new(service);
    let first = Arc::new(std::sync::Mutex::new(Some(first)));
    let mut notary_flows = Registry::new();
    notary_flows.responder(NOTARY_PROTOCOL, move |ctx: FlowContext| {
        let (service, l, first) = (service.clone(), notary_ledger.clone(), first.clone());
        async move {
            let scripted = first.lock().unwrap().take();
            if let Some(refusal) = scripted {
                let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
                let _: NotaryRequest = ctx.receive(&session).await?;
                let answer: treaty_notary::NotaryAnswer = Err(refusal);
                return ctx.send(&session, &answer).await;
            }
            notary_responder(&ctx, &service, &l, |who: &X500Name| (who == &name(ALICE)).then(alice)).await
        }
    });
    let alice =
        Node::start(&net, &dir, ALICE, &Disk::default(), registry(alice_ledger.clone(), chain.clone(), None), EngineOptions::default())
            .await;
    let _bob =
        Node::start(&net, &dir, BOB, &Disk::default(), registry(bob_ledger.clone(), chain.clone(), None), EngineOptions::default()).await;
    let _notary = Node::start(&net, &dir, NOTARY, &Disk::default(), notary_flows, EngineOptions::default()).await;

    let began = std::time::Instant::now();
    let flow = alice.engine.start("Pay", json!({ "to": BOB, "salt": 10, "stale": false }), None).await.unwrap();
    let record = finished(&alice.engine, flow).await;
    let took = began.elapsed();
    (record, alice.engine.journal(flow).await.unwrap(), took)
}

#[tokio::test]
async fn a_busy_notary_is_asked_again_after_the_wait_it_estimated() {
    // The notary answers the first request `Overloaded` (as its queue would when full), then
    // serves normally: the payer waits the estimate, journaled, and asks again.
    let busy = treaty_notary::NotaryRefusal::Overloaded { reason: "the queue is full".into(), retry_after_ms: 400 };
    let (record, journal, took) = pay_through_a_notary_answering_first(busy).await;
    assert_eq!(result(&record)["signatures"], 2);
    assert!(took >= std::time::Duration::from_millis(400), "it waited the estimate ({took:?})");
    assert!(
        journal.iter().any(|e| matches!(e, Entry::Progress(p) if p.contains("is busy (the queue is full); asking again in 400 ms"))),
        "{journal:?}"
    );
    assert!(journal.iter().any(|e| matches!(e, Entry::Slept(_))));
}

/// A refusal of a time window starting `early_ms` after the notary's time (past its tolerance).
fn early(early_ms: i64) -> treaty_notary::NotaryRefusal {
    let (notary_time, tolerance_micros) = (Timestamp(10_000_000_000), 1_000_000);
    treaty_notary::NotaryRefusal::TimeWindowInvalid {
        tx_id: SecureHash::sha256(b"any"),
        window: TimeWindow::From(Timestamp(notary_time.micros() + tolerance_micros + early_ms * 1000)),
        notary_time,
        tolerance_micros,
    }
}

#[tokio::test]
async fn a_notary_whose_clock_is_short_of_the_window_is_asked_again_once_it_is_not() {
    // The payer's clock is ahead of the notary's: its "from now" window has not begun by the
    // notary's clock. It waits the shortfall the notary reported, and asks again.
    let (record, journal, took) = pay_through_a_notary_answering_first(early(500)).await;
    assert_eq!(result(&record)["signatures"], 2, "{record:?}");
    assert!(took >= std::time::Duration::from_millis(500), "it waited the shortfall ({took:?})");
    assert!(journal.iter().any(|e| matches!(e, Entry::Progress(p) if p.contains("clock is 500 ms short"))), "{journal:?}");
    // A window far beyond the notary's clock is a refusal, not a reason to wait.
    let (record, _, took) = pay_through_a_notary_answering_first(early(10 * 60 * 1000)).await;
    assert_eq!(record.status, FlowStatus::Failed);
    assert!(record.error.as_deref().unwrap_or_default().contains("outside the time window"), "{record:?}");
    assert!(took < std::time::Duration::from_secs(30), "it did not wait ({took:?})");
}
