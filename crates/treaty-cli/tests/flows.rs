//! Flows between real nodes (SQLite, mutual TLS, the network map) started in this process from
//! a network bootstrapped by the `treaty` binary: the built-in Echo flow, a flow that outlives
//! its counterparty's downtime and its own node's restart, and an application flow finalised
//! through the network's notary node.

mod common;

use common::inproc::{knows, map};
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use std::sync::Arc;

use treaty_flows::{FlowContext, FlowError, FlowStatus, Ledger, Registry, finality, receive_finality};
use treaty_node::config::NodeConfig;
use treaty_node::node::{self, ECHO, NodeServices, RunningNode};

const ALICE: &str = "O=Alice,L=London,C=GB";
const BOB: &str = "O=Bob,L=Paris,C=FR";

fn bootstrap(test: &str) -> common::Scratch {
    bootstrap_with(test, &["--node", ALICE, "--node", BOB])
}

fn bootstrap_with(test: &str, parties: &[&str]) -> common::Scratch {
    common::inproc::bootstrap("flows", test, parties)
}

async fn start(dir: &Path, who: &str) -> RunningNode {
    let mut config = NodeConfig::load(&dir.join(who).join("node.toml")).unwrap();
    config.poll_interval = Duration::from_millis(200);
    node::start(&config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_runs_between_two_nodes_and_survives_downtime_and_restart() {
    let dir = bootstrap("echo");
    let _map = map(&dir).await;
    let alice = start(&dir, "alice").await;
    let bob = start(&dir, "bob").await;
    knows(&alice, BOB).await;

    let id = alice.flows.start(ECHO, json!({"to": BOB, "message": "hello"}), None).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), alice.flows.wait(id)).await.unwrap().unwrap();
    assert_eq!(done.status, FlowStatus::Completed, "{done:?}");
    let result: serde_json::Value = serde_json::from_slice(done.result.as_ref().unwrap()).unwrap();
    assert_eq!(result, json!({"echo": "hello", "from": "O=Bob, L=Paris, C=FR"}));

    // Bob is down when the next one starts, and Alice's node restarts while it waits.
    bob.stop();
    let id = alice.flows.start(ECHO, json!({"to": BOB, "message": "still there?"}), Some("retry-safe-1".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(alice.flows.get(id).await.unwrap().unwrap().status, FlowStatus::Runnable);
    alice.stop();
    let alice = start(&dir, "alice").await;
    // The same client id finds the same flow after the restart.
    let again = alice.flows.start(ECHO, json!({"to": BOB, "message": "still there?"}), Some("retry-safe-1".into())).await.unwrap();
    assert_eq!(again, id);
    let _bob = start(&dir, "bob").await;
    let done = tokio::time::timeout(Duration::from_secs(30), alice.flows.wait(id)).await.unwrap().unwrap();
    assert_eq!(done.status, FlowStatus::Completed, "{done:?}");
    let result: serde_json::Value = serde_json::from_slice(done.result.as_ref().unwrap()).unwrap();
    assert_eq!(result["echo"], "still there?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_identities_gives_each_side_a_fresh_key_only_the_other_can_name() {
    use treaty_flows::Identities;
    let dir = bootstrap("swap");
    let _map = map(&dir).await;
    let alice = start(&dir, "alice").await;
    let bob = start(&dir, "bob").await;
    knows(&alice, BOB).await;
    knows(&bob, ALICE).await;

    let id = alice.flows.start(node::SWAP_IDENTITIES, json!({"with": BOB}), None).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), alice.flows.wait(id)).await.unwrap().unwrap();
    assert_eq!(done.status, FlowStatus::Completed, "{done:?}");
    let result: serde_json::Value = serde_json::from_slice(done.result.as_ref().unwrap()).unwrap();
    let key = |field: &str| -> treaty_core::PublicKey { result[field].as_str().unwrap().parse().unwrap() };
    let (mine, theirs) = (key("mine"), key("theirs"));
    let (alice_name, bob_name): (treaty_core::X500Name, treaty_core::X500Name) = (ALICE.parse().unwrap(), BOB.parse().unwrap());
    assert_ne!(mine, alice.view.borrow().node(&alice_name).unwrap().legal_identity.owning_key, "a fresh key, not the well-known one");
    assert_eq!(bob.identities.owner_of(&mine).await.unwrap(), Some(alice_name.clone()), "Bob can name Alice's fresh key");
    assert_eq!(alice.identities.owner_of(&theirs).await.unwrap(), Some(bob_name), "and Alice Bob's");
    assert_eq!((alice.identities.confidential_keys(), bob.identities.confidential_keys()), (1, 1));

    // The key survives a restart: derived again from the seed file, and it can still sign.
    alice.stop();
    let alice = start(&dir, "alice").await;
    assert_eq!(alice.identities.confidential_keys(), 1);
    use treaty_flows::Keys;
    assert_eq!(alice.identities.owned(std::slice::from_ref(&mine)), vec![mine.clone()]);
    let sig = alice.identities.sign_bytes(&mine, b"still mine").unwrap();
    mine.verify(b"still mine", &sig).unwrap();
    assert!(dir.join("alice/keys/confidential.key").exists());
}

const NOTARY: &str = "O=Notary,L=Zurich,C=CH";

/// An application flow on real nodes: pays the chain's tip (holder B's, key 2 of the testkit)
/// to holder A through the network's notary, sharing it with `to`.
fn pay_flow(chain: Arc<treaty_testkit::TokenChain>) -> impl FnOnce(&mut Registry, &NodeServices) {
    move |r: &mut Registry, services: &NodeServices| {
        let s = services.clone();
        r.flow("Pay", 1, move |ctx: FlowContext, args: serde_json::Value| {
            let (s, chain) = (s.clone(), chain.clone());
            async move {
                use treaty_core::*;
                let salt = args["salt"].as_u64().unwrap_or(1) as u8;
                let to: X500Name = args["to"].as_str().unwrap_or_default().parse().map_err(|e| FlowError::Exception(format!("{e}")))?;
                let (a, b) = (treaty_testkit::key(1).map_err(FlowError::Exception)?, treaty_testkit::key(2).map_err(FlowError::Exception)?);
                let holder_a = Party {
                    name: "O=Holder A,L=London,C=GB".parse().map_err(|e| FlowError::Exception(format!("{e}")))?,
                    owning_key: a.public(),
                };
                let out = TransactionState::new(
                    &treaty_testkit::Token { owner: holder_a.into(), amount: 100 },
                    treaty_testkit::TOKEN,
                    chain.notary.clone(),
                    AttachmentConstraint::Hash(chain.attachment_id),
                );
                let wtx = TransactionBuilder::new(Some(chain.notary.clone()))
                    .input(StateRef { txhash: chain.tip().id(), index: 0 })
                    .output(out)
                    .command(Command::new(&treaty_testkit::TokenCommand::Move, vec![b.public()]))
                    .attachment(chain.attachment_id)
                    .summary("Move 100 tokens")
                    .build(PrivacySalt([salt; 32]))
                    .map_err(|e| FlowError::Exception(e.to_string()))?;
                let id = wtx.id();
                let stx = SignedTransaction::new(wtx, vec![b.sign_transaction(&id, PLATFORM_VERSION)]);
                let session = ctx.initiate(&to).await?;
                let done = finality(&ctx, &s.ledger, &s.keys, &s.identity, stx, &[session]).await?;
                Ok(json!({ "tx": done.id().to_string() }))
            }
        });
        let s = services.clone();
        r.responder("Pay", move |ctx: FlowContext| {
            let s = s.clone();
            async move {
                let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("no session".into()))?;
                receive_finality(&ctx, &session, &s.ledger).await.map(|_| ())
            }
        });
    }
}

async fn start_app(dir: &Path, who: &str, chain: Arc<treaty_testkit::TokenChain>) -> RunningNode {
    let mut config = NodeConfig::load(&dir.join(who).join("node.toml")).unwrap();
    config.poll_interval = Duration::from_millis(200);
    node::start_with(&config, pay_flow(chain)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_notary_finalises_a_payment_and_refuses_its_double_spend() {
    let dir = bootstrap_with("notary", &["--node", ALICE, "--node", BOB, "--notary", NOTARY]);
    let _map = map(&dir).await;
    // Alice holds a chain notarised by the network's notary (its own key signed it).
    let notary_key = treaty_node::keys::identity_key(&dir.join("notary")).unwrap();
    let notary_party = treaty_core::Party { name: NOTARY.parse().unwrap(), owning_key: notary_key.public() };
    let chain = Arc::new(treaty_testkit::token_chain_for(3, 77, &notary_party, &notary_key).unwrap());
    let notary = start(&dir, "notary").await;
    let alice = start_app(&dir, "alice", chain.clone()).await;
    let bob = start_app(&dir, "bob", chain.clone()).await;
    let attachment = alice.ledger.check_attachment(&chain.attachment).unwrap();
    alice.ledger.record(&[attachment], &chain.transactions).await.unwrap();
    knows(&alice, BOB).await;
    knows(&alice, NOTARY).await;
    knows(&notary, ALICE).await;

    let pay = |salt: u64| {
        let engine = alice.flows.clone();
        async move {
            let id = engine.start("Pay", json!({ "to": BOB, "salt": salt }), None).await.unwrap();
            tokio::time::timeout(Duration::from_secs(30), engine.wait(id)).await.unwrap().unwrap()
        }
    };
    let done = pay(1).await;
    assert_eq!(done.status, FlowStatus::Completed, "{done:?}");
    let result: serde_json::Value = serde_json::from_slice(done.result.as_ref().unwrap()).unwrap();
    let tx: treaty_core::SecureHash = result["tx"].as_str().unwrap().parse().unwrap();
    let [at_bob] = <[Option<treaty_core::SignedTransaction>; 1]>::try_from(bob.ledger.transactions(&[tx]).await.unwrap()).unwrap();
    let at_bob = at_bob.expect("Bob recorded the payment");
    assert!(at_bob.sigs().iter().any(|s| s.by == notary_party.owning_key), "notarised by the network's notary");
    at_bob.verify_signatures_except(&[]).unwrap();

    let refused = pay(2).await;
    assert_eq!(refused.status, FlowStatus::Failed);
    let err = refused.error.unwrap();
    assert!(err.contains("already consumed") && err.contains(&tx.to_string()), "{err}");
    // The notary's uniqueness log is a file in its node directory.
    assert!(dir.join("notary").join("uniqueness.redb").exists());
}

/// Runs a flow on `node` and waits for it (up to 60 s).
async fn run(node: &RunningNode, flow: &str, args: serde_json::Value) -> treaty_flows::FlowRecord {
    let id = node.flows.start(flow, args, None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), node.flows.wait(id)).await.expect("flow finished in time").unwrap()
}

fn ok(r: &treaty_flows::FlowRecord) -> serde_json::Value {
    assert_eq!(r.status, FlowStatus::Completed, "{r:?}");
    serde_json::from_slice(r.result.as_ref().unwrap()).unwrap()
}

/// USD held by `node`, in cents, whoever issued it; and how many cash states.
async fn usd(node: &RunningNode) -> (u128, u64) {
    let criteria = treaty_vault::Criteria::unconsumed();
    let balances = node.vault.balances(&criteria).await.unwrap();
    balances.iter().filter(|b| b.token == "USD").fold((0, 0), |(q, n), b| (q + b.quantity, n + b.states))
}

async fn start_finance(dir: &Path, who: &str) -> RunningNode {
    let mut config = NodeConfig::load(&dir.join(who).join("node.toml")).unwrap();
    config.poll_interval = Duration::from_millis(200);
    node::start_with(&config, finance_and_newer_payment).await.unwrap()
}

/// The finance flows, `NewerPayment`: a payer that opens `CashPayment`'s session at a
/// version the finance app does not speak (3), as one from a later release would; and
/// `SneakyRedeem` (see [`sneaky_redeem`]).
fn finance_and_newer_payment(r: &mut Registry, services: &NodeServices) {
    treaty_finance::register(r, services);
    let s = services.clone();
    r.flow("ForgedIssue", 1, move |ctx: FlowContext, args: serde_json::Value| {
        let s = s.clone();
        async move { forged_issue(&ctx, &s, args).await }
    });
    let s = services.clone();
    r.flow("FakeNotaryPayment", 1, move |ctx: FlowContext, to: String| {
        let s = s.clone();
        async move { fake_notary_payment(&ctx, &s, &to).await }
    });
    let s = services.clone();
    r.flow("SneakyRedeem", 1, move |ctx: FlowContext, tx: String| {
        let s = s.clone();
        async move { sneaky_redeem(&ctx, &s, &tx).await }
    });
    r.flow("NewerPayment", 1, |ctx: FlowContext, to: String| async move {
        let to: treaty_core::X500Name = to.parse().map_err(|e| FlowError::Exception(format!("{e}")))?;
        let session = ctx.initiate_as(&to, treaty_finance::CASH_PAYMENT, 3).await?;
        let answer: bool = ctx.send_and_receive(&session, &false).await?;
        Ok(answer)
    });
}

/// A transaction issuing `cash` in this node's key, guarded by `notary`, signed by this node.
async fn signed_issue(
    s: &NodeServices,
    cash: &treaty_finance_contracts::Cash,
    notary: treaty_core::Party,
    salt: u8,
) -> Result<treaty_core::SignedTransaction, FlowError> {
    use treaty_core::*;
    let fail = |e: String| FlowError::Exception(e);
    let (code, _) = s.ledger.import_attachment(&treaty_finance::cash_bundle()).await.map_err(|e| fail(e.to_string()))?;
    let wtx = TransactionBuilder::new(Some(notary.clone()))
        .output(TransactionState::new(cash, treaty_finance_contracts::CASH, notary, AttachmentConstraint::Hash(code.id)))
        .command(Command::new(&treaty_finance_contracts::CashCommand::Issue, vec![s.identity.owning_key.clone()]))
        .attachment(code.id)
        .build(PrivacySalt([salt; 32]))
        .map_err(|e| fail(e.to_string()))?;
    let stx = SignedTransaction::new(wtx, vec![]);
    Ok(stx.clone().with_signature(treaty_flows::Keys::sign(&*s.keys, &stx.id(), &s.identity.owning_key)?))
}

/// Issues `{"amount": "50.00 USD", "as": "<X.500 name>"}` of cash to this node under another
/// party's name but in this node's own key (which the cash contract allows: it is the issuer's
/// key that signs). Returns the transaction id.
async fn forged_issue(ctx: &FlowContext, s: &NodeServices, args: serde_json::Value) -> Result<String, FlowError> {
    use treaty_core::*;
    use treaty_finance_contracts::Cash;
    let fail = |e: String| FlowError::Exception(e);
    let amount: Amount<Currency> = args["amount"].as_str().unwrap_or_default().parse().map_err(|e| fail(format!("{e}")))?;
    let name: X500Name = args["as"].as_str().unwrap_or_default().parse().map_err(|e| fail(format!("{e}")))?;
    let forged = Party { name, owning_key: s.identity.owning_key.clone() };
    let token = Issued { issuer: PartyAndReference { party: forged.into(), reference: vec![0] }, product: amount.token.clone() };
    let cash = Cash { amount: Amount::new(amount.quantity, token), owner: s.identity.clone().into() };
    let stx = signed_issue(s, &cash, s.parameters.notaries[0].identity.clone(), 8).await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.identity, stx, &[]).await?;
    Ok(done.id().to_string())
}

/// Issues 10.00 USD of this node's to `to`, guarded by a "notary" named like the network's but
/// holding this node's key (so this node could spend it twice), and sends it to `to` as a
/// payment.
async fn fake_notary_payment(ctx: &FlowContext, s: &NodeServices, to: &str) -> Result<String, FlowError> {
    use treaty_core::*;
    use treaty_finance_contracts::Cash;
    let fail = |e: String| FlowError::Exception(e);
    let to: X500Name = to.parse().map_err(|e| fail(format!("{e}")))?;
    let payee = s.view.borrow().node(&to).map(|n| n.legal_identity.clone()).ok_or_else(|| fail("payee not on the map".into()))?;
    let fake = Party { name: s.parameters.notaries[0].identity.name.clone(), owning_key: s.identity.owning_key.clone() };
    let usd = Issued {
        issuer: PartyAndReference { party: s.identity.clone().into(), reference: vec![0] },
        product: Currency::new("USD").map_err(|e| fail(e.to_string()))?,
    };
    let cash = Cash { amount: Amount::new(1_000, usd), owner: payee.into() };
    let stx = signed_issue(s, &cash, fake, 6).await?;
    let session = ctx.initiate_as(&to, treaty_finance::CASH_PAYMENT, treaty_finance::PAYMENT_SESSION_WELL_KNOWN).await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.identity, stx, &[session]).await?;
    Ok(done.id().to_string())
}

/// Asks the issuer of this node's fungible token output of transaction `tx` to sign its
/// redemption, with a command hidden in it that issues 1,000,000.00 USD of the issuer's cash
/// to this node. Returns `{"signed": true}` or `{"refused": "<why>"}`.
async fn sneaky_redeem(ctx: &FlowContext, s: &NodeServices, tx: &str) -> Result<serde_json::Value, FlowError> {
    use treaty_core::*;
    use treaty_finance_contracts::{CASH, Cash, CashCommand, FungibleToken, TokenCommand};
    let fail = |e: String| FlowError::Exception(e);
    let id: SecureHash = tx.parse().map_err(|e| fail(format!("{e}")))?;
    let moved = s.ledger.transactions(&[id]).await?.pop().flatten().ok_or_else(|| fail(format!("{id} is not recorded")))?;
    let me: AbstractParty = s.identity.clone().into();
    let (index, state, token) = moved
        .tx()
        .components()
        .outputs
        .iter()
        .enumerate()
        .find_map(|(i, o)| o.data.unpack::<FungibleToken>().ok().filter(|t| t.holder == me).map(|t| (i, o.clone(), t)))
        .ok_or_else(|| fail(format!("{id} gives this node no token")))?;
    let AttachmentConstraint::Hash(code) = state.constraint else { return Err(fail("not hash-constrained".into())) };
    let issuer = token.token.issuer.clone();
    let usd = Issued {
        issuer: PartyAndReference { party: issuer.clone(), reference: vec![0] },
        product: Currency::new("USD").map_err(|e| fail(e.to_string()))?,
    };
    let minted = TransactionState::new(
        &Cash { amount: Amount::new(100_000_000, usd), owner: me },
        CASH,
        state.notary.clone(),
        AttachmentConstraint::Hash(code),
    );
    let required = vec![issuer.owning_key().clone(), s.identity.owning_key.clone()];
    let wtx = TransactionBuilder::new(Some(state.notary.clone()))
        .input(StateRef { txhash: id, index: index as u32 })
        .output(minted)
        .command(Command::new(&TokenCommand::Redeem, required.clone()))
        .command(Command::new(&CashCommand::Issue, vec![issuer.owning_key().clone()]))
        .attachment(code)
        .build(PrivacySalt([9; 32]))
        .map_err(|e| fail(e.to_string()))?;
    let stx = SignedTransaction::new(wtx, vec![]);
    let stx = stx.clone().with_signature(treaty_flows::Keys::sign(&*s.keys, &stx.id(), &s.identity.owning_key)?);
    let issuer_name =
        s.view.borrow().nodes.values().find(|n| n.legal_identity.owning_key == *issuer.owning_key()).map(|n| n.legal_identity.name.clone());
    let issuer_name = issuer_name.ok_or_else(|| fail("issuer not on the map".into()))?;
    let session = ctx.initiate_as(&issuer_name, treaty_finance::TOKEN_REDEEM, 1).await?;
    Ok(match treaty_flows::collect_signatures(ctx, &s.ledger, stx, &required, &[session]).await {
        Ok(_) => json!({ "signed": true }),
        Err(e) => json!({ "refused": e.to_string() }),
    })
}

/// Alice and Bob running the finance flows, and the notary, all knowing each other.
async fn cash_network(test: &str) -> (common::Scratch, tokio::task::JoinHandle<()>, RunningNode, RunningNode, RunningNode) {
    let dir = bootstrap_with(test, &["--node", ALICE, "--node", BOB, "--notary", NOTARY]);
    let _map = map(&dir).await;
    let _notary = start(&dir, "notary").await;
    let alice = start_finance(&dir, "alice").await;
    let bob = start_finance(&dir, "bob").await;
    for (n, other) in [(&alice, BOB), (&alice, NOTARY), (&bob, ALICE), (&bob, NOTARY)] {
        knows(n, other).await;
    }
    (dir, _map, _notary, alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cash_is_issued_paid_openly_and_anonymously_and_exited_and_balances_add_up() {
    let (_dir, _map, _notary, alice, bob) = cash_network("cash").await;

    let issued = ok(&run(&alice, treaty_finance::CASH_ISSUE, json!({"amount": "1000.00 USD"})).await);
    assert_eq!(issued["notary"], "O=Notary, L=Zurich, C=CH", "the network's only notary, by default");
    assert_eq!(usd(&alice).await, (100_000, 1));

    let paid = ok(&run(&alice, treaty_finance::CASH_PAYMENT, json!({"amount": "300.00 USD", "recipient": BOB})).await);
    assert!(paid["transaction"].is_string());
    assert_eq!((usd(&alice).await.0, usd(&bob).await.0), (70_000, 30_000), "paid with change");

    // Anonymous: Bob's cash sits on a fresh key only Alice can name; his vault still counts it.
    ok(&run(&alice, treaty_finance::CASH_PAYMENT, json!({"amount": "100.00 USD", "recipient": BOB, "anonymous": true})).await);
    assert_eq!((usd(&alice).await.0, usd(&bob).await.0), (60_000, 40_000));
    assert_eq!(bob.identities.confidential_keys(), 1);

    // Bob pays back from both his keys (well-known and confidential): one transaction signed by both.
    ok(&run(&bob, treaty_finance::CASH_PAYMENT, json!({"amount": "350.00 USD", "recipient": ALICE})).await);
    assert_eq!((usd(&alice).await.0, usd(&bob).await.0), (95_000, 5_000));

    // Alice, the issuer, takes 100.00 off the ledger.
    ok(&run(&alice, treaty_finance::CASH_EXIT, json!({"amount": "100.00 USD"})).await);
    let (a, b) = (usd(&alice).await.0, usd(&bob).await.0);
    assert_eq!(a + b, 100_000 - 10_000, "issued minus exited is what the vaults hold");

    // Asking for more than Bob has fails, naming the shortfall, and locks nothing.
    let short = run(&bob, treaty_finance::CASH_PAYMENT, json!({"amount": "60.00 USD", "recipient": ALICE})).await;
    assert_eq!(short.status, FlowStatus::Failed);
    assert!(short.error.as_ref().unwrap().contains("VAULT-INSUFFICIENT-BALANCE insufficient balance of USD"), "{short:?}");
    ok(&run(&bob, treaty_finance::CASH_PAYMENT, json!({"amount": "50.00 USD", "recipient": ALICE})).await);
    assert_eq!(usd(&bob).await.0, 0);

    // Bad arguments are refused naming the field.
    let bad = run(&alice, treaty_finance::CASH_PAYMENT, json!({"amount": "ten dollars", "recipient": BOB})).await;
    assert_eq!(bad.status, FlowStatus::Failed);
    assert!(bad.error.as_ref().unwrap().contains("amount"), "{bad:?}");

    // A payer speaking a version of the payment session Bob does not know is refused, and
    // told which versions Bob speaks.
    let newer = run(&alice, "NewerPayment", json!(BOB)).await;
    assert_eq!(newer.status, FlowStatus::Failed);
    let error = newer.error.unwrap_or_default();
    assert!(error.contains("protocol version 3") && error.contains("versions 1 and 2"), "{error}");
}

/// Cash a node issues under another party's name (in its own key) is kept apart from that
/// party's, and cash guarded by a notary of its own making is refused by the payee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cash_under_another_name_is_filed_apart_and_a_made_up_notary_is_refused() {
    let (_dir, _map, _notary, alice, bob) = cash_network("forged").await;
    ok(&run(&alice, treaty_finance::CASH_ISSUE, json!({"amount": "100.00 USD"})).await);
    // Bob issues cash under Alice's name in his own key, and pays some of it to Alice.
    ok(&run(&bob, "ForgedIssue", json!({"amount": "50.00 USD", "as": ALICE})).await);
    ok(&run(&bob, treaty_finance::CASH_PAYMENT, json!({"amount": "20.00 USD", "recipient": ALICE})).await);
    let balances = alice.vault.balances(&treaty_vault::Criteria::unconsumed()).await.unwrap();
    let rows: Vec<(String, u128)> = balances.iter().filter(|b| b.token == "USD").map(|b| (b.issuer.clone(), b.quantity)).collect();
    let (real, forged): (Vec<_>, Vec<_>) = rows.iter().partition(|(issuer, _)| issuer == "O=Alice, L=London, C=GB");
    assert_eq!(real.iter().map(|(_, q)| q).sum::<u128>(), 10_000, "Alice's own cash, alone under her name: {rows:?}");
    assert_eq!(forged.len(), 1, "{rows:?}");
    assert!(forged[0].0.starts_with("O=Alice, L=London, C=GB (key ") && forged[0].0.ends_with("not the network map's)"), "{rows:?}");
    assert_eq!(forged[0].1, 2_000);
    // Exiting takes only the cash Alice really issued: all of it, and not a cent more.
    ok(&run(&alice, treaty_finance::CASH_EXIT, json!({"amount": "100.00 USD"})).await);
    let short = run(&alice, treaty_finance::CASH_EXIT, json!({"amount": "0.01 USD"})).await;
    assert!(short.error.as_deref().unwrap_or_default().contains("insufficient balance"), "{short:?}");
    assert_eq!(usd(&alice).await.0, 2_000, "the other cash stays, as it is");

    // Cash guarded by a "notary" of Bob's own making (the network notary's name, Bob's key) is
    // refused by the payee: Bob could spend it twice.
    let fake = run(&bob, "FakeNotaryPayment", json!(ALICE)).await;
    assert_eq!(fake.status, FlowStatus::Failed, "{fake:?}");
    assert!(fake.error.as_deref().unwrap_or_default().contains("that is not a notary of this network"), "{fake:?}");
    assert_eq!(usd(&alice).await.0, 2_000, "Alice recorded none of it");
}

/// `CashIssueAndPayment` (Corda's `CashIssueAndPaymentFlow`): both transactions in one flow,
/// the payee's side `CashPayment`'s responder, and a wrong recipient refused before anything
/// is issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_and_payment_in_one_flow_pays_what_it_issues_and_checks_the_recipient_first() {
    let (_dir, _map, _notary, alice, bob) = cash_network("issue-and-pay").await;

    let done = ok(&run(&alice, treaty_finance::CASH_ISSUE_AND_PAYMENT, json!({"amount": "25.00 USD", "recipient": BOB})).await);
    let (pay, issue) = (done["transaction"].as_str().unwrap(), done["issue_transaction"].as_str().unwrap());
    assert_ne!(pay, issue, "{done}");
    assert_eq!(
        (&done["amount"], &done["recipient"], &done["anonymous"], &done["notary"]),
        (&json!("25.00 USD"), &json!("O=Bob, L=Paris, C=FR"), &json!(false), &json!("O=Notary, L=Zurich, C=CH")),
        "{done}"
    );
    assert_eq!((usd(&alice).await, usd(&bob).await.0), ((0, 0), 2_500), "all of it paid, nothing left with Alice");
    // Bob got the issue with the payment: it is recorded on his node too.
    let ids: Vec<treaty_core::SecureHash> = [pay, issue].iter().map(|t| t.parse().unwrap()).collect();
    assert_eq!(bob.ledger.recorded(&ids).await.unwrap(), vec![true, true]);

    ok(&run(&alice, treaty_finance::CASH_ISSUE_AND_PAYMENT, json!({"amount": "5.00 USD", "recipient": BOB, "anonymous": true})).await);
    assert_eq!(usd(&bob).await.0, 3_000);
    assert_eq!(bob.identities.confidential_keys(), 1);

    // A recipient off the network map, or Alice herself, is refused naming the field, and
    // nothing was issued.
    for recipient in ["O=Nobody,L=Oslo,C=NO", ALICE] {
        let bad = run(&alice, treaty_finance::CASH_ISSUE_AND_PAYMENT, json!({"amount": "7.00 USD", "recipient": recipient})).await;
        assert_eq!(bad.status, FlowStatus::Failed, "{bad:?}");
        let error = bad.error.as_deref().unwrap();
        assert!(error.contains("CashIssueAndPayment") && error.contains("recipient"), "{error}");
    }
    // A misspelt field is refused when the flow is started.
    let unknown = alice.flows.start(treaty_finance::CASH_ISSUE_AND_PAYMENT, json!({"amount": "7.00 USD", "recipent": BOB}), None).await;
    assert!(unknown.as_ref().is_err_and(|e| e.to_string().contains("unknown field `recipent`")), "{unknown:?}");
    // So is a field of the wrong type, named.
    let mistyped = json!({"amount": "7.00 USD", "recipient": BOB, "anonymous": "yes"});
    let mistyped = alice.flows.start(treaty_finance::CASH_ISSUE_AND_PAYMENT, mistyped, None).await;
    assert!(
        mistyped.as_ref().is_err_and(|e| e.to_string().contains("anonymous: invalid type: string \"yes\", expected a boolean")),
        "{mistyped:?}"
    );
    assert_eq!(usd(&alice).await, (0, 0), "no cash issued by the refused flows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coins_locked_by_a_flow_that_is_gone_are_free_again_after_a_restart() {
    use treaty_vault::{Criteria, LockFilter, LockId, PageSpec, Sort};
    let dir = bootstrap_with("locks", &["--node", ALICE, "--notary", NOTARY]);
    let _map = map(&dir).await;
    let alice = start_finance(&dir, "alice").await;
    ok(&run(&alice, treaty_finance::CASH_ISSUE, json!({"amount": "10.00 USD", "notary": NOTARY})).await);
    let page = alice.vault.query(&Criteria::unconsumed(), &Sort::recording_order(), &PageSpec::first(10)).await.unwrap();
    let coin = page.states[0].state_ref;
    // A payment flow that died before the node did would leave this behind: a lock by a flow
    // id the node no longer runs.
    alice.vault.lock(LockId(uuid::Uuid::from_u128(7)), &[coin]).await.unwrap();
    let locked = Criteria::Lock(LockFilter::Locked);
    assert_eq!(alice.vault.count(&locked).await.unwrap(), 1);
    alice.stop();
    let alice = start_finance(&dir, "alice").await;
    assert_eq!(alice.vault.count(&locked).await.unwrap(), 0, "released at start-up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_that_succeeds_leaves_no_coin_of_its_own_locked() {
    use treaty_vault::{Criteria, LockFilter, LockId, PageSpec, Sort};
    let (dir, _map, _notary, alice, bob) = cash_network("leftover").await;
    ok(&run(&alice, treaty_finance::CASH_ISSUE, json!({ "amount": "50.00 USD" })).await);
    ok(&run(&alice, treaty_finance::CASH_ISSUE, json!({ "amount": "20.00 EUR" })).await);
    let eur = Criteria::unconsumed().and(Criteria::Fungible(treaty_vault::FungibleCriteria::token("EUR")));
    let euro = alice.vault.query(&eur, &Sort::recording_order(), &PageSpec::first(10)).await.unwrap().states[0].state_ref;
    // Bob is down: the payment selects its coins, notarises, and waits to hand Bob the result.
    bob.stop();
    let id = alice.flows.start(treaty_finance::CASH_PAYMENT, json!({ "amount": "10.00 USD", "recipient": BOB }), None).await.unwrap();
    let locked = Criteria::Lock(LockFilter::Locked);
    for _ in 0..200 {
        if alice.vault.count(&locked).await.unwrap() > 0 || alice.vault.count(&Criteria::consumed()).await.unwrap() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What a selection the node died in the middle of would leave: a coin locked by this flow
    // that its transaction does not spend.
    alice.vault.lock(LockId(id.0), &[euro]).await.unwrap();
    let bob = start_finance(&dir, "bob").await;
    knows(&bob, ALICE).await;
    let done = tokio::time::timeout(Duration::from_secs(60), alice.flows.wait(id)).await.expect("payment finished").unwrap();
    ok(&done);
    assert_eq!(alice.vault.count(&locked).await.unwrap(), 0, "nothing stays locked by a finished payment");
    assert_eq!(usd(&bob).await.0, 1000);
}

const CAROL: &str = "O=Carol,L=Madrid,C=ES";

/// Runs `flow` on `node` `n` times at once and waits for all of them.
async fn run_many(node: &RunningNode, flow: &str, args: serde_json::Value, n: usize) -> Vec<treaty_flows::FlowRecord> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(node.flows.start(flow, args.clone(), None).await.unwrap());
    }
    let mut out = Vec::new();
    for id in ids {
        out.push(tokio::time::timeout(Duration::from_secs(120), node.flows.wait(id)).await.expect("flow finished in time").unwrap());
    }
    out
}

async fn locked(node: &RunningNode) -> u64 {
    node.vault.count(&treaty_vault::Criteria::Lock(treaty_vault::LockFilter::Locked)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_payments_from_a_vault_of_100_states_all_succeed() {
    let (_dir, _map, _notary, alice, bob) = cash_network("fifty").await;
    for r in run_many(&alice, treaty_finance::CASH_ISSUE, json!({"amount": "1.00 USD"}), 100).await {
        ok(&r);
    }
    assert_eq!(usd(&alice).await, (10_000, 100));
    // Fifty payments at once, each needing one of the hundred coins: soft locks keep their
    // selections apart, so none is refused for a balance that is there.
    let paid = run_many(&alice, treaty_finance::CASH_PAYMENT, json!({"amount": "1.00 USD", "recipient": BOB}), 50).await;
    let failed: Vec<_> = paid.iter().filter(|r| r.status != FlowStatus::Completed).map(|r| r.error.clone()).collect();
    assert!(failed.is_empty(), "{} of 50 payments failed: {failed:?}", failed.len());
    assert_eq!(usd(&alice).await, (5_000, 50));
    assert_eq!(usd(&bob).await, (5_000, 50));
    assert_eq!(locked(&alice).await, 0, "every lock was released when its payment consumed the coin");
}

/// A small deterministic generator (xorshift64*), so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_are_conserved_across_three_nodes_after_1000_random_payments() {
    let payments: usize = std::env::var("TREATY_RANDOM_PAYMENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let dir = bootstrap_with("random", &["--node", ALICE, "--node", BOB, "--node", CAROL, "--notary", NOTARY]);
    let _map = map(&dir).await;
    let _notary = start(&dir, "notary").await;
    let nodes = Arc::new([start_finance(&dir, "alice").await, start_finance(&dir, "bob").await, start_finance(&dir, "carol").await]);
    let names = [ALICE, BOB, CAROL];
    for n in nodes.iter() {
        for other in names.iter().chain([&NOTARY]) {
            if n.name.to_string() != other.parse::<treaty_core::X500Name>().unwrap().to_string() {
                knows(n, other).await;
            }
        }
    }
    // Each issues 1,000.00 USD in ten coins.
    for n in nodes.iter() {
        for r in run_many(n, treaty_finance::CASH_ISSUE, json!({"amount": "100.00 USD"}), 10).await {
            ok(&r);
        }
    }
    // Random payer, recipient and amount (0.01 to 5.00, sometimes anonymous); each payer pays
    // one after another, the three payers at once.
    let seed = 0x7EA7_u64 ^ payments as u64;
    let mut rng = Rng(seed);
    let mut queues: [Vec<(usize, u64, bool)>; 3] = Default::default();
    for _ in 0..payments {
        let payer = rng.below(3) as usize;
        let recipient = (payer + 1 + rng.below(2) as usize) % 3;
        queues[payer].push((recipient, 1 + rng.below(500), rng.below(10) == 0));
    }
    let mut payers = Vec::new();
    for (payer, queue) in queues.into_iter().enumerate() {
        let nodes = nodes.clone();
        payers.push(tokio::spawn(async move {
            for (i, (to, cents, anonymous)) in queue.into_iter().enumerate() {
                let amount = format!("{}.{:02} USD", cents / 100, cents % 100);
                let args = json!({"amount": amount, "recipient": names[to], "anonymous": anonymous});
                let r = run(&nodes[payer], treaty_finance::CASH_PAYMENT, args).await;
                assert_eq!(
                    r.status,
                    FlowStatus::Completed,
                    "payment {i} of {} ({amount} to {}, seed {seed:#x}): {r:?}",
                    names[payer],
                    names[to]
                );
            }
        }));
    }
    for p in payers {
        p.await.unwrap();
    }
    // Nothing made or lost: all cash is still there, and each issuer's is exactly what it issued.
    let mut by_issuer: std::collections::BTreeMap<String, u128> = Default::default();
    let mut total = 0;
    for n in nodes.iter() {
        for b in n.vault.balances(&treaty_vault::Criteria::unconsumed()).await.unwrap() {
            assert_eq!(b.token, "USD");
            *by_issuer.entry(b.issuer.clone()).or_default() += b.quantity;
            total += b.quantity;
        }
        assert_eq!(locked(n).await, 0, "{} holds locked coins after every payment ended", n.name);
    }
    assert_eq!(total, 3 * 100_000, "the sum of the vaults is what was issued (nothing exited)");
    assert_eq!(by_issuer.len(), 3, "{by_issuer:?}");
    assert!(by_issuer.values().all(|q| *q == 100_000), "each issuer's cash adds up to what it issued: {by_issuer:?}");
    // Alice exits 50.00 of her own cash wherever it is in her vault: the total drops by exactly that.
    let alice_own = nodes[0].vault.balances(&treaty_vault::Criteria::unconsumed()).await.unwrap();
    let own: u128 = alice_own.iter().filter(|b| b.issuer.contains("Alice")).map(|b| b.quantity).sum();
    if own >= 5_000 {
        ok(&run(&nodes[0], treaty_finance::CASH_EXIT, json!({"amount": "50.00 USD"})).await);
        let mut after = 0;
        for n in nodes.iter() {
            after += n.vault.balances(&treaty_vault::Criteria::unconsumed()).await.unwrap().iter().map(|b| b.quantity).sum::<u128>();
        }
        assert_eq!(after, 3 * 100_000 - 5_000, "issued minus exited");
    }
}

const RATES: &str = "O=Rates,L=Frankfurt,C=DE";

/// Asks the oracle to sign a made-up transaction carrying one fix, revealing what the
/// arguments say: `{"pair": "USD/EUR", "rate": "0.92", "reveal_other": false, "window": true,
/// "hide_signers": false, "other_needs_oracle": false, "hide_kind": false}` (the other command, a cash move, is
/// signed by the client, or by the oracle with `other_needs_oracle`).
/// Returns `{"signed": true, "valid": <signature checks over the id>}` or `{"refused": "<why>"}`.
fn ask_oracle_flow(r: &mut Registry, services: &NodeServices) {
    treaty_finance::register(r, services);
    let s = services.clone();
    r.flow("TestAskOracle", 1, move |ctx: FlowContext, args: serde_json::Value| {
        let s = s.clone();
        async move {
            use treaty_core::*;
            use treaty_finance_contracts::{CashCommand, FxFix, parse_rate};
            let fail = |e: String| FlowError::Exception(e);
            let oracle: X500Name = RATES.parse().map_err(|e| fail(format!("{e}")))?;
            let oracle_key =
                s.view.borrow().node(&oracle).map(|n| n.legal_identity.owning_key.clone()).ok_or_else(|| fail("no oracle".into()))?;
            let notary = s.parameters.notaries[0].identity.clone();
            let (base, quote) = args["pair"].as_str().unwrap_or("USD/EUR").split_once('/').ok_or_else(|| fail("pair".into()))?;
            let fix = FxFix {
                base: base.into(),
                quote: quote.into(),
                rate_ppm: parse_rate(args["rate"].as_str().unwrap_or("0.92")).map_err(fail)?,
            };
            let now = Timestamp(ctx.now().await?);
            let note = TransactionState::new(
                &treaty_testkit::Token { owner: s.identity.clone().into(), amount: 1 },
                treaty_testkit::TOKEN,
                notary.clone(),
                AttachmentConstraint::AlwaysAccept,
            );
            let mut b = TransactionBuilder::new(Some(notary))
                .output(note)
                .command(Command::new(
                    &CashCommand::Move,
                    vec![if args["other_needs_oracle"].as_bool().unwrap_or(false) { &oracle_key } else { &s.identity.owning_key }.clone()],
                ))
                .command(Command::new(&fix, vec![oracle_key.clone()]));
            if args["window"].as_bool().unwrap_or(true) {
                b = b.time_window(TimeWindow::around(now, 10_000_000).map_err(|e| fail(e.to_string()))?);
            }
            let wtx = b.build(PrivacySalt([7; 32])).map_err(|e| fail(e.to_string()))?;
            let reveal_other = args["reveal_other"].as_bool().unwrap_or(false);
            let hide_signers = args["hide_signers"].as_bool().unwrap_or(false);
            let ftx = FilteredTransaction::build(
                &wtx,
                |g, i| match g {
                    ComponentGroup::Commands => reveal_other || i == 1,
                    ComponentGroup::Signers => !hide_signers || reveal_other || i == 1,
                    ComponentGroup::TimeWindow => true,
                    _ => false,
                },
                |g| g == ComponentGroup::Kind && !args["hide_kind"].as_bool().unwrap_or(false),
            );
            let session = ctx.initiate_as(&oracle, treaty_finance::FX_ORACLE, 1).await?;
            Ok(match ctx.send_and_receive::<_, TransactionSignature>(&session, &treaty_finance::OracleRequest::Sign(ftx)).await {
                Ok(sig) => json!({ "signed": true, "by_oracle": sig.by == oracle_key, "valid": sig.verify(&wtx.id()).is_ok() }),
                Err(e) => json!({ "refused": e.to_string() }),
            })
        }
    });
}

async fn start_oracle_client(dir: &Path, who: &str) -> RunningNode {
    let mut config = NodeConfig::load(&dir.join(who).join("node.toml")).unwrap();
    config.poll_interval = Duration::from_millis(200);
    node::start_with(&config, ask_oracle_flow).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_obligation_settles_in_another_currency_at_the_oracles_signed_rate_and_wrong_fixes_are_refused() {
    let dir = bootstrap_with("oracle", &["--node", ALICE, "--node", BOB, "--node", RATES, "--notary", NOTARY]);
    std::fs::write(dir.join("rates").join(treaty_finance::RATES_FILE), r#"{"USD/EUR": "0.92", "USD/JPY": "151.5"}"#).unwrap();
    let _map = map(&dir).await;
    let _notary = start(&dir, "notary").await;
    let alice = start_oracle_client(&dir, "alice").await;
    let bob = start_finance(&dir, "bob").await;
    let _rates = start_finance(&dir, "rates").await;
    for (n, other) in [(&alice, BOB), (&alice, NOTARY), (&alice, RATES), (&bob, ALICE), (&bob, NOTARY)] {
        knows(n, other).await;
    }
    ok(&run(&alice, "CashIssue", json!({ "amount": "500.00 EUR" })).await);

    // Alice owes Bob 100.00 USD, the Rates oracle named; she pays in euros at its rate.
    let due = treaty_core::Timestamp(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64 + 600_000_000,
    );
    let issued =
        ok(&run(&alice, "ObligationIssue", json!({ "amount": "100.00 USD", "beneficiary": BOB, "due": due.to_string(), "oracle": RATES }))
            .await);
    let id = issued["id"].as_str().unwrap().to_string();
    let settled = ok(&run(&alice, "ObligationSettle", json!({ "id": id, "currency": "EUR" })).await);
    assert_eq!((settled["paid"].as_str(), settled["rate"].as_str()), (Some("92.00 EUR"), Some("0.92")), "{settled}");
    let eur = |b: &[treaty_vault::Balance]| b.iter().filter(|b| b.token == "EUR").map(|b| b.quantity).sum::<u128>();
    assert_eq!(eur(&bob.vault.balances(&treaty_vault::Criteria::unconsumed()).await.unwrap()), 9200);
    assert_eq!(eur(&alice.vault.balances(&treaty_vault::Criteria::unconsumed()).await.unwrap()), 40800);
    // The settlement Bob recorded carries the oracle's signature.
    let tx: treaty_core::SecureHash = settled["transaction"].as_str().unwrap().parse().unwrap();
    let recorded = bob.ledger.transactions(&[tx]).await.unwrap().pop().unwrap().unwrap();
    let rates_key = bob.view.borrow().node(&RATES.parse().unwrap()).unwrap().legal_identity.owning_key.clone();
    assert!(recorded.sigs().iter().any(|s| s.by == rates_key && s.verify(&tx).is_ok()), "oracle signature on the settlement");

    // An obligation naming no oracle cannot be settled in another currency.
    let plain = ok(&run(&alice, "ObligationIssue", json!({ "amount": "10.00 USD", "beneficiary": BOB, "due": due.to_string() })).await);
    let refused = run(&alice, "ObligationSettle", json!({ "id": plain["id"], "currency": "EUR" })).await;
    assert_eq!(refused.status, FlowStatus::Failed);
    assert!(refused.error.as_deref().unwrap_or_default().contains("names no exchange-rate oracle"), "{refused:?}");

    // The oracle signs a right fix it sees alone, and refuses the rest, naming why.
    let ask = |args: serde_json::Value| {
        let alice = &alice;
        async move { ok(&run(alice, "TestAskOracle", args).await) }
    };
    let good = ask(json!({})).await;
    assert_eq!(
        (good["signed"].as_bool(), good["by_oracle"].as_bool(), good["valid"].as_bool()),
        (Some(true), Some(true), Some(true)),
        "{good}"
    );
    let cases = [
        (json!({ "rate": "0.95" }), "wrong fix: USD/EUR is 0.92 here, not 0.95"),
        (json!({ "reveal_other": true }), "is not an exchange-rate fix"),
        (json!({ "window": false }), "time window must be revealed"),
        (json!({ "pair": "EUR/GBP", "rate": "0.87" }), "no rate for EUR/GBP"),
        // A hidden command must not borrow the oracle's signature (here a cash move of the
        // oracle's own coins): it must see every command's signers, and sign for fixes only.
        (json!({ "hide_signers": true }), "must reveal every command's signers"),
        (json!({ "other_needs_oracle": true }), "command 0 needs this oracle's key and is not an exchange-rate fix"),
        // Nor may the transaction be a notary change or upgrade, whose inputs' participants
        // sign whatever its commands say: the kind must be proven normal.
        (json!({ "hide_kind": true }), "must prove the transaction's kind"),
    ];
    for (args, why) in cases {
        let answer = ask(args.clone()).await;
        let refused = answer["refused"].as_str().unwrap_or_else(|| panic!("{args} was signed: {answer}"));
        assert!(refused.contains(why), "{args}: {refused}");
    }
    let _ = dir;
}

const NOTARY2: &str = "O=Backup Notary,L=Rome,C=IT";

/// The unconsumed states on `node` of `type_id`, with their notaries' names.
async fn held(node: &RunningNode, type_id: &str) -> Vec<(treaty_core::StateRef, String)> {
    let criteria = treaty_vault::Criteria::unconsumed().and(treaty_vault::Criteria::state_type(type_id));
    let page = node.vault.query(&criteria, &treaty_vault::Sort::recording_order(), &treaty_vault::PageSpec::first(1000)).await.unwrap();
    page.states.iter().map(|s| (s.state_ref, s.state.notary.name.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_locks_under_two_notaries_falling_due_together_both_unlock() {
    let dir = bootstrap_with("twolocks", &["--node", ALICE, "--node", BOB, "--notary", NOTARY, "--notary", NOTARY2]);
    let _map = map(&dir).await;
    let _notary = start(&dir, "notary").await;
    let _backup = start(&dir, "backup-notary").await;
    let alice = start_finance(&dir, "alice").await;
    for other in [NOTARY, NOTARY2] {
        knows(&alice, other).await;
    }
    ok(&run(&alice, "CashIssue", json!({ "amount": "100.00 USD", "notary": NOTARY })).await);
    ok(&run(&alice, "CashIssue", json!({ "amount": "100.00 USD", "notary": NOTARY2 })).await);
    // Two locks, one on each notary's cash, due at the same moment: their two unlock
    // activities start together. Each unlocks its own notary's (one notary per transaction);
    // neither may hold the other's and leave it locked for good.
    let until =
        treaty_core::Timestamp(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64 + 4_000_000);
    ok(&run(&alice, "CashLock", json!({ "amount": "100.00 USD", "until": until.to_string() })).await);
    ok(&run(&alice, "CashLock", json!({ "amount": "100.00 USD", "until": until.to_string() })).await);
    let locks = held(&alice, "treaty.finance.TimeLock").await;
    assert_eq!(locks.iter().map(|(_, n)| n.clone()).collect::<std::collections::BTreeSet<_>>().len(), 2, "{locks:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while !held(&alice, "treaty.finance.TimeLock").await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "still locked: {:?}", held(&alice, "treaty.finance.TimeLock").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(usd(&alice).await.0, 20_000);
    let _ = dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notary_change_moves_states_with_their_encumbrances_and_later_spends_use_the_new_notary() {
    let dir = bootstrap_with("notarychange", &["--node", ALICE, "--node", BOB, "--notary", NOTARY, "--notary", NOTARY2]);
    let _map = map(&dir).await;
    let _notary = start(&dir, "notary").await;
    let _backup = start(&dir, "backup-notary").await;
    let alice = start_finance(&dir, "alice").await;
    let bob = start_finance(&dir, "bob").await;
    for (n, other) in [(&alice, BOB), (&alice, NOTARY), (&alice, NOTARY2), (&bob, ALICE), (&bob, NOTARY), (&bob, NOTARY2)] {
        knows(n, other).await;
    }
    let (n1, n2) =
        (NOTARY.parse::<treaty_core::X500Name>().unwrap().to_string(), NOTARY2.parse::<treaty_core::X500Name>().unwrap().to_string());
    let later = treaty_core::Timestamp(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64 + 3_600_000_000,
    );
    ok(&run(&alice, "CashIssue", json!({ "amount": "100.00 USD", "notary": NOTARY })).await);
    let ob = ok(&run(
        &alice,
        "ObligationIssue",
        json!({ "amount": "5.00 USD", "beneficiary": BOB, "due": later.to_string(), "notary": NOTARY }),
    )
    .await);
    ok(&run(&alice, "CashLock", json!({ "amount": "30.00 USD", "until": later.to_string() })).await);
    let cash = held(&alice, "treaty.finance.Cash").await;
    let obligation = held(&alice, "treaty.finance.Obligation").await;
    assert_eq!(cash.len(), 2, "the locked 30.00 and the 70.00 change: {cash:?}");
    assert!(cash.iter().chain(&obligation).all(|(_, n)| *n == n1));

    // Move the cash and the obligation; the time lock guarding the 30.00 comes along by itself,
    // and Bob (the obligation's other participant) signs.
    let mut refs: Vec<String> = cash.iter().chain(&obligation).map(|(r, _)| r.to_string()).collect();
    let moved = ok(&run(&alice, "NotaryChange", json!({ "states": refs.clone(), "notary": NOTARY2 })).await);
    assert_eq!(moved["states"].as_array().unwrap().len(), 4, "three states and the lock: {moved}");
    for type_id in ["treaty.finance.Cash", "treaty.finance.Obligation", "treaty.finance.TimeLock"] {
        let now = held(&alice, type_id).await;
        assert!(
            !now.is_empty() && now.iter().all(|(r, n)| *n == n2 && r.txhash.to_string() == moved["transaction"].as_str().unwrap()),
            "{type_id}: {now:?}"
        );
    }
    assert!(held(&bob, "treaty.finance.Obligation").await.iter().all(|(_, n)| *n == n2), "Bob recorded the move");
    let usd_before = usd(&alice).await.0;
    assert_eq!(usd_before, 7000, "the locked 30.00 stays locked after the move");

    // Later spends go through the new notary: a payment, and settling the obligation.
    ok(&run(&alice, "CashPayment", json!({ "amount": "20.00 USD", "recipient": BOB })).await);
    assert!(held(&bob, "treaty.finance.Cash").await.iter().all(|(_, n)| *n == n2));
    ok(&run(&alice, "ObligationSettle", json!({ "id": ob["id"] })).await);
    assert!(held(&bob, "treaty.finance.Obligation").await.is_empty());

    // Refusals: a state already moved (the old notary knows it consumed), an unknown notary,
    // the current notary, a malformed ref.
    refs.truncate(1);
    let again = run(&alice, "NotaryChange", json!({ "states": refs, "notary": NOTARY2 })).await;
    assert_eq!(again.status, FlowStatus::Failed, "{again:?}");
    let unknown = run(&alice, "NotaryChange", json!({ "states": refs, "notary": "O=Nobody,L=Nowhere,C=GB" })).await;
    assert!(unknown.error.as_deref().unwrap_or_default().contains("is not a notary of this network"), "{unknown:?}");
    let current = held(&alice, "treaty.finance.Cash").await[0].0.to_string();
    let same = run(&alice, "NotaryChange", json!({ "states": [current], "notary": NOTARY2 })).await;
    assert!(same.error.as_deref().unwrap_or_default().contains("are guarded by O=Backup Notary"), "{same:?}");
    let malformed = run(&alice, "NotaryChange", json!({ "states": ["nope"], "notary": NOTARY2 })).await;
    assert!(malformed.error.as_deref().unwrap_or_default().contains("is not a state ref"), "{malformed:?}");
    let _ = dir;
}

/// Units of `token` (any issuer) held by `node`, from its vault's balances.
async fn units(node: &RunningNode, token: &str) -> u128 {
    let balances = node.vault.balances(&treaty_vault::Criteria::unconsumed()).await.unwrap();
    balances.iter().filter(|b| b.token == token).map(|b| b.quantity).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_fixed_and_evolvable_types_move_and_reference_the_latest_type_version() {
    let (_dir, _map, _notary, alice, bob) = cash_network("tokens").await;
    // Alice maintains a building's token type; Bob observes it (he will hold its tokens).
    let created = ok(&run(&alice, "TokenTypeCreate", json!({ "data": { "valuation": "100" }, "observers": [BOB] })).await);
    let type_id = created["id"].as_str().unwrap().to_string();
    let type_v1: treaty_core::StateRef = format!("{}(0)", created["transaction"].as_str().unwrap()).parse().unwrap();
    assert_eq!(held(&bob, "treaty.finance.EvolvableTokenType").await.len(), 1, "the observer keeps the type");

    // Fungible shares of the building, a fixed token, and the deed as a non-fungible token.
    let shares = ok(&run(&alice, "TokenIssue", json!({ "token": type_id, "quantity": 10 })).await);
    ok(&run(&alice, "TokenIssue", json!({ "token": "GOLD-GRAM", "quantity": 500 })).await);
    let deed = ok(&run(&alice, "TokenIssue", json!({ "token": type_id })).await);
    let deed_id = deed["id"].as_str().unwrap().to_string();
    let issue_tx: treaty_core::SecureHash = shares["transaction"].as_str().unwrap().parse().unwrap();
    let issued = alice.ledger.transactions(&[issue_tx]).await.unwrap().pop().unwrap().unwrap();
    assert_eq!(issued.tx().components().references, vec![type_v1], "the issue references the type");
    assert_eq!((units(&alice, &type_id).await, units(&alice, "GOLD-GRAM").await), (10, 500));

    // The maintainer evolves the type; moves then reference the new version, not the old.
    let updated = ok(&run(&alice, "TokenTypeUpdate", json!({ "id": type_id, "data": { "valuation": "120" } })).await);
    let type_v2 = format!("{}(0)", updated["transaction"].as_str().unwrap());
    let bob_types = held(&bob, "treaty.finance.EvolvableTokenType").await;
    assert_eq!(bob_types.iter().map(|(r, _)| r.to_string()).collect::<Vec<_>>(), vec![type_v2.clone()], "Bob follows the latest version");
    let moved = ok(&run(&alice, "TokenMove", json!({ "token": type_id, "quantity": 4, "recipient": BOB })).await);
    assert_eq!(moved["references"], json!([type_v2]), "{moved}");
    let gold = ok(&run(&alice, "TokenMove", json!({ "token": "GOLD-GRAM", "quantity": 200, "recipient": BOB })).await);
    // An issuer signs a redemption of its tokens, and nothing else hidden in it.
    let sneaky = ok(&run(&bob, "SneakyRedeem", gold["transaction"].clone()).await);
    let refused = sneaky["refused"].as_str().unwrap_or_else(|| panic!("the issuer signed a hidden cash issue: {sneaky}"));
    assert!(refused.contains("command 1 (treaty.finance.Cash.Command) needs this node's signature"), "{refused}");
    assert_eq!(usd(&bob).await.0, 0, "no cash came of it");
    let deed_moved = ok(&run(&alice, "TokenMove", json!({ "id": deed_id, "recipient": BOB })).await);
    assert_eq!(deed_moved["references"], json!([type_v2]));
    // Bob, an observer, resolves the pointer in his own vault to move some back.
    let back = ok(&run(&bob, "TokenMove", json!({ "token": type_id, "quantity": 1, "recipient": ALICE })).await);
    assert_eq!(back["references"], json!([type_v2]));
    assert_eq!((units(&alice, &type_id).await, units(&bob, &type_id).await), (7, 3));
    assert_eq!((units(&alice, "GOLD-GRAM").await, units(&bob, "GOLD-GRAM").await), (300, 200));
    assert_eq!(held(&bob, "treaty.finance.NonFungibleToken").await.len(), 1);
    assert!(held(&alice, "treaty.finance.NonFungibleToken").await.is_empty());

    // Redemptions: Bob hands 2 shares and the deed back to Alice, who signs; Alice redeems
    // 100 of her own gold alone.
    let redeemed = ok(&run(&bob, "TokenRedeem", json!({ "token": type_id, "quantity": 2, "issuer": ALICE })).await);
    assert_eq!(redeemed["quantity"], 2, "{redeemed}");
    ok(&run(&bob, "TokenRedeem", json!({ "id": deed_id })).await);
    ok(&run(&alice, "TokenRedeem", json!({ "token": "GOLD-GRAM", "quantity": 100 })).await);
    assert_eq!((units(&alice, &type_id).await, units(&bob, &type_id).await), (7, 1));
    assert_eq!(units(&alice, "GOLD-GRAM").await, 200);
    assert!(held(&bob, "treaty.finance.NonFungibleToken").await.is_empty());

    // Refusals, each naming what is wrong.
    let too_much = run(&bob, "TokenMove", json!({ "token": type_id, "quantity": 2, "recipient": ALICE })).await;
    assert!(too_much.error.as_deref().unwrap_or_default().contains("insufficient balance"), "{too_much:?}");
    let not_observer = run(&bob, "TokenIssue", json!({ "token": "00000000-0000-0000-0000-000000000001", "quantity": 1 })).await;
    assert!(not_observer.error.as_deref().unwrap_or_default().contains("is not in this node's vault"), "{not_observer:?}");
    let by_bob = run(&bob, "TokenTypeUpdate", json!({ "id": type_id, "data": {} })).await;
    assert!(by_bob.error.as_deref().unwrap_or_default().contains("maintained by"), "{by_bob:?}");
    let unclear = run(&alice, "TokenMove", json!({ "token": "GOLD-GRAM", "recipient": BOB })).await;
    assert!(unclear.error.as_deref().unwrap_or_default().contains("quantity: needed with \"token\""), "{unclear:?}");
    let nothing = run(&alice, "TokenMove", json!({ "token": "GOLD-GRAM", "quantity": 0, "recipient": BOB })).await;
    assert!(nothing.error.as_deref().unwrap_or_default().contains("quantity: must be more than zero"), "{nothing:?}");
}
