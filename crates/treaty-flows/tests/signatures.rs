//! `CollectSignatures` / `SignTransaction` between two flow engines over the simulated
//! network: the counterparty resolves the back-chain, its check may refuse, it signs with the
//! keys it holds, and the initiator checks what comes back.

mod common;

use std::sync::Arc;

use common::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use treaty_core::*;
use treaty_flows::*;
use treaty_net::sim::SimNetwork;
use treaty_testkit::{TOKEN, Token, TokenChain, TokenCommand, key, token_chain};

fn ledger() -> Arc<MemoryLedger> {
    let params = NetworkParameters::default();
    let check: AttachmentCheck = Arc::new(move |bytes: &[u8]| treaty_sandbox::check_attachment(bytes, &params).map_err(|e| e.to_string()));
    Arc::new(MemoryLedger::new(Arc::new(treaty_testkit::native_contracts()), check, 1024 * 1024))
}

#[derive(Serialize, Deserialize)]
struct Args {
    to: String,
    amount: u64,
}

/// Spends the chain's tip (owned by holder B, key 2) back to holder A (key 1); both sign.
fn spend(chain: &TokenChain, amount: u64) -> (SignedTransaction, Vec<PublicKey>) {
    let (a, b) = (key(1).unwrap(), key(2).unwrap());
    let holder_a = Party { name: "O=Holder A,L=London,C=GB".parse().unwrap(), owning_key: a.public() };
    let out = TransactionState::new(
        &Token { owner: holder_a.into(), amount },
        TOKEN,
        chain.notary.clone(),
        AttachmentConstraint::Hash(chain.attachment_id),
    );
    let wtx = TransactionBuilder::new(Some(chain.notary.clone()))
        .input(StateRef { txhash: chain.tip().id(), index: 0 })
        .output(out)
        .command(Command::new(&TokenCommand::Move, vec![b.public(), a.public()]))
        .attachment(chain.attachment_id)
        .summary(format!("Move {amount} tokens"))
        .build(PrivacySalt([amount as u8 + 1; 32]))
        .unwrap();
    let id = wtx.id();
    (SignedTransaction::new(wtx, vec![a.sign_transaction(&id, PLATFORM_VERSION)]), vec![a.public(), b.public()])
}

fn registry(l: Arc<MemoryLedger>, keys: Arc<KeyPairs>, chain: Arc<TokenChain>, refuse: bool) -> Registry {
    let mut r = Registry::new();
    for name in ["Collect", "CollectForged"] {
        let (l, chain) = (l.clone(), chain.clone());
        r.flow(name, 1, move |ctx: FlowContext, args: Args| {
            let (l, chain) = (l.clone(), chain.clone());
            async move {
                let (stx, required) = spend(&chain, args.amount);
                let session = ctx.initiate(&args.to.parse().map_err(|e| FlowError::Exception(format!("{e}")))?).await?;
                let signed = collect_signatures(&ctx, &l, stx, &required, &[session]).await?;
                signed
                    .verify_signatures_except(std::slice::from_ref(&chain.notary.owning_key))
                    .map_err(|e| FlowError::Exception(e.to_string()))?;
                Ok(json!({ "signatures": signed.sigs().len() }))
            }
        });
    }
    let (l1, k1) = (l.clone(), keys.clone());
    r.responder("Collect", move |ctx: FlowContext| {
        let (l, keys) = (l1.clone(), k1.clone());
        async move {
            let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
            sign_transaction(&ctx, &session, &l, &keys, |ltx| {
                let outs: Vec<Token> = ltx.outputs_of().map_err(|e| e.to_string())?;
                if refuse { Err(format!("{} tokens is not what was agreed", outs[0].amount)) } else { Ok(()) }
            })
            .await
            .map(|_| ())
        }
    });
    // Answers with a signature over another transaction.
    r.responder("CollectForged", move |ctx: FlowContext| {
        let l = l.clone();
        async move {
            let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
            let _ = receive_transaction(&ctx, &session, &l, ReceiveOptions { any_missing: true, ..ReceiveOptions::default() }).await?;
            let wrong = key(2).unwrap().sign_transaction(&SecureHash::sha256(b"another transaction"), PLATFORM_VERSION);
            ctx.send(&session, &vec![wrong]).await
        }
    });
    r
}

struct Pair {
    _net: SimNetwork,
    alice: Node,
    _bob: Node,
    bob_ledger: Arc<MemoryLedger>,
    chain: Arc<TokenChain>,
}

/// Alice holds the chain and holder A's key; Bob holds `bob_keys` (and refuses everything if
/// `refuse`).
async fn pair(bob_keys: Vec<KeyPair>, refuse: bool) -> Pair {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let chain = Arc::new(token_chain(3, 11).unwrap());
    let (alice_ledger, bob_ledger) = (ledger(), ledger());
    let params = NetworkParameters::default();
    alice_ledger.insert_attachment(treaty_sandbox::check_attachment(&chain.attachment, &params).unwrap());
    chain.transactions.iter().for_each(|t| alice_ledger.insert(t.clone()));
    let alice_keys = Arc::new(KeyPairs::new(vec![key(1).unwrap()]));
    let alice = Node::start(
        &net,
        &dir,
        ALICE,
        &Disk::default(),
        registry(alice_ledger, alice_keys, chain.clone(), false),
        EngineOptions::default(),
    )
    .await;
    let bob_reg = registry(bob_ledger.clone(), Arc::new(KeyPairs::new(bob_keys)), chain.clone(), refuse);
    let bob = Node::start(&net, &dir, BOB, &Disk::default(), bob_reg, EngineOptions::default()).await;
    Pair { _net: net, alice, _bob: bob, bob_ledger, chain }
}

async fn collect(p: &Pair, flow: &str, amount: u64) -> FlowRecord {
    let id = p.alice.engine.start(flow, json!({ "to": BOB, "amount": amount }), None).await.unwrap();
    finished(&p.alice.engine, id).await
}

#[tokio::test]
async fn the_counterparty_resolves_checks_and_signs() {
    let p = pair(vec![key(2).unwrap()], false).await;
    let r = collect(&p, "Collect", 100).await;
    assert_eq!(result(&r), json!({ "signatures": 2 }));
    assert_eq!(p.bob_ledger.len(), 4, "Bob resolved and recorded the back-chain (not the unsigned transaction)");
    assert!(p.bob_ledger.get(&p.chain.tip().id()).is_some());
}

#[tokio::test]
async fn the_counterpartys_check_can_refuse() {
    let p = pair(vec![key(2).unwrap()], true).await;
    let r = collect(&p, "Collect", 100).await;
    assert_eq!(r.status, FlowStatus::Failed);
    assert!(
        r.error.as_ref().unwrap().contains("refuses to sign") && r.error.as_ref().unwrap().contains("100 tokens is not what was agreed"),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_counterparty_without_a_required_key_says_so() {
    let p = pair(vec![key(9).unwrap()], false).await;
    let r = collect(&p, "Collect", 100).await;
    assert_eq!(r.status, FlowStatus::Failed);
    assert!(r.error.as_ref().unwrap().contains("holds none of the keys"), "{r:?}");
}

#[tokio::test]
async fn a_signature_over_another_transaction_is_refused() {
    let p = pair(vec![key(2).unwrap()], false).await;
    let r = collect(&p, "CollectForged", 100).await;
    assert_eq!(r.status, FlowStatus::Failed);
    assert!(r.error.as_ref().unwrap().contains("signature over transaction") && r.error.as_ref().unwrap().contains("invalid"), "{r:?}");
}

#[tokio::test]
async fn a_contract_violation_is_refused_before_the_check_runs() {
    let p = pair(vec![key(2).unwrap()], false).await;
    let r = collect(&p, "Collect", 13).await;
    assert_eq!(r.status, FlowStatus::Failed);
    assert!(r.error.as_ref().unwrap().contains("TX-CONTRACT-REJECTED") && r.error.as_ref().unwrap().contains("100 in, 13 out"), "{r:?}");
}
