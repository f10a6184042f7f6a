//! `CashMerge` and `CashSplit` between real nodes started in this process (SQLite, mutual TLS,
//! the network map, notary nodes): which coins each takes, that nothing is made or lost, and
//! how each refuses what it cannot do. The background task that starts them is tested over
//! real processes in `coin_maintenance.rs`.

mod common;

use common::inproc::{knows, map};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use treaty_flows::{FlowRecord, FlowStatus};
use treaty_node::config::NodeConfig;
use treaty_node::node::{self, RunningNode};
use treaty_vault::{Criteria, LockFilter};

const ALICE: &str = "O=Alice,L=London,C=GB";
const BOB: &str = "O=Bob,L=Paris,C=FR";
const NOTARY: &str = "O=Notary,L=Zurich,C=CH";
const NOTARY2: &str = "O=Backup Notary,L=Rome,C=IT";

/// A network bootstrapped by the `treaty` binary with these `--node`/`--notary` arguments.
fn bootstrap(test: &str, parties: &[&str]) -> common::Scratch {
    common::inproc::bootstrap("coins", test, parties)
}

async fn start(dir: &Path, who: &str) -> RunningNode {
    let mut config = NodeConfig::load(&dir.join(who).join("node.toml")).unwrap();
    config.poll_interval = Duration::from_millis(200);
    node::start_with(&config, treaty_finance::register).await.unwrap()
}

/// Runs a flow on `node` and waits for it (up to 60 s).
async fn run(node: &RunningNode, flow: &str, args: Value) -> FlowRecord {
    let id = node.flows.start(flow, args, None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), node.flows.wait(id)).await.expect("flow finished in time").unwrap()
}

fn ok(r: &FlowRecord) -> Value {
    assert_eq!(r.status, FlowStatus::Completed, "{r:?}");
    serde_json::from_slice(r.result.as_ref().unwrap()).unwrap()
}

/// The flow failed, and its error says `why`.
fn refused(r: &FlowRecord, why: &str) {
    assert_eq!(r.status, FlowStatus::Failed, "{r:?}");
    let error = r.error.as_deref().unwrap_or_default();
    assert!(error.contains(why), "expected {why:?} in: {error}");
}

/// `node`'s unconsumed cash per (token, issuer): quantity and how many states.
async fn balances(node: &RunningNode) -> BTreeMap<(String, String), (u128, u64)> {
    let all = node.vault.balances(&Criteria::unconsumed()).await.unwrap();
    all.into_iter().map(|b| ((b.token, b.issuer), (b.quantity, b.states))).collect()
}

/// The quantities alone: what must never change.
fn quantities(b: &BTreeMap<(String, String), (u128, u64)>) -> BTreeMap<(String, String), u128> {
    b.iter().map(|(k, (q, _))| (k.clone(), *q)).collect()
}

fn key(token: &str, issuer: &str) -> (String, String) {
    (token.to_string(), issuer.parse::<treaty_core::X500Name>().unwrap().to_string())
}

async fn locked(node: &RunningNode) -> u64 {
    node.vault.count(&Criteria::Lock(LockFilter::Locked)).await.unwrap()
}

/// The cash outputs of transaction `tx` recorded by `node`: amounts and whether each is owned
/// by the node's well-known key.
async fn outputs(node: &RunningNode, tx: &Value) -> Vec<(u64, bool)> {
    use treaty_flows::Ledger;
    let id: treaty_core::SecureHash = tx.as_str().unwrap().parse().unwrap();
    let stx = node.ledger.transactions(&[id]).await.unwrap().pop().unwrap().unwrap();
    let me = node.view.borrow().node(&node.name).unwrap().legal_identity.owning_key.clone();
    stx.tx()
        .components()
        .outputs
        .iter()
        .map(|o| {
            let c: treaty_finance_contracts::Cash = o.data.unpack().unwrap();
            (c.amount.quantity, c.owner.owning_key() == &me)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cash_merge_takes_the_smallest_coins_of_one_issuer_and_notary_and_conserves_every_balance() {
    let dir = bootstrap("merge", &["--node", ALICE, "--node", BOB, "--notary", NOTARY, "--notary", NOTARY2]);
    let _map = map(&dir).await;
    let _notary = start(&dir, "notary").await;
    let _backup = start(&dir, "backup-notary").await;
    let alice = start(&dir, "alice").await;
    let bob = start(&dir, "bob").await;
    for (n, other) in [(&alice, BOB), (&alice, NOTARY), (&alice, NOTARY2), (&bob, ALICE), (&bob, NOTARY), (&bob, NOTARY2)] {
        knows(n, other).await;
    }
    // Alice's own cash: six coins guarded by the first notary, three smaller ones by the second.
    for amount in ["1.00", "2.00", "3.00", "4.00", "5.00", "6.00"] {
        ok(&run(&alice, "CashIssue", json!({ "amount": format!("{amount} USD"), "notary": NOTARY })).await);
    }
    for amount in ["0.10", "0.20", "0.30"] {
        ok(&run(&alice, "CashIssue", json!({ "amount": format!("{amount} USD"), "notary": NOTARY2 })).await);
    }
    // Bob's cash paid to her: three coins on her well-known key, two on confidential keys.
    ok(&run(&bob, "CashIssue", json!({ "amount": "20.00 USD", "notary": NOTARY })).await);
    for _ in 0..3 {
        ok(&run(&bob, "CashPayment", json!({ "amount": "5.00 USD", "recipient": ALICE })).await);
    }
    for _ in 0..2 {
        ok(&run(&bob, "CashPayment", json!({ "amount": "1.00 USD", "recipient": ALICE, "anonymous": true })).await);
    }
    let before = balances(&alice).await;
    assert_eq!(before[&key("USD", ALICE)], (2160, 9));
    assert_eq!(before[&key("USD", BOB)], (1700, 5));

    // max_inputs 4: the four smallest are three of the second notary's and one of the first's;
    // a merge never mixes notaries, so it takes the notary holding most of them.
    let first = ok(&run(&alice, "CashMerge", json!({ "currency": "USD", "issuer": ALICE, "max_inputs": 4 })).await);
    assert_eq!((first["merged"].as_u64(), first["amount"].as_str()), (Some(3), Some("0.60 USD")), "{first}");
    assert_eq!(first["notary"], "O=Backup Notary, L=Rome, C=IT");
    assert_eq!(outputs(&alice, &first["transaction"]).await, vec![(60, true)], "one state, on Alice's well-known key");
    // Then the first notary's four smallest: 1.00 to 4.00, not 5.00 or 6.00.
    let second = ok(&run(&alice, "CashMerge", json!({ "currency": "USD", "issuer": ALICE, "max_inputs": 4 })).await);
    assert_eq!((second["merged"].as_u64(), second["amount"].as_str()), (Some(4), Some("10.00 USD")), "{second}");
    assert_eq!(second["notary"], "O=Notary, L=Zurich, C=CH");
    // No issuer named: the issuer with most unlocked states (Alice: 4, Bob: 3 on the well-known
    // key), all of one notary's up to the default max_inputs (50).
    let third = ok(&run(&alice, "CashMerge", json!({ "currency": "USD" })).await);
    assert_eq!((third["merged"].as_u64(), third["amount"].as_str()), (Some(3), Some("21.00 USD")), "{third}");
    assert_eq!(third["issuer"], "O=Alice, L=London, C=GB");
    // Bob's: the three on the well-known key; the confidential ones are left alone.
    let bobs = ok(&run(&alice, "CashMerge", json!({ "currency": "USD", "issuer": BOB })).await);
    assert_eq!((bobs["merged"].as_u64(), bobs["amount"].as_str()), (Some(3), Some("15.00 USD")), "{bobs}");
    assert_eq!(bobs["issuer"], "O=Bob, L=Paris, C=FR");

    let after = balances(&alice).await;
    assert_eq!(quantities(&after), quantities(&before), "merging makes and loses nothing");
    assert_eq!(after[&key("USD", ALICE)], (2160, 2), "0.60 with the second notary, 21.00 with the first");
    assert_eq!(after[&key("USD", BOB)], (1700, 3), "15.00, and the two 1.00 on confidential keys");
    assert_eq!(locked(&alice).await, 0, "nothing stays locked");
    assert_eq!(quantities(&balances(&bob).await)[&key("USD", BOB)], 300, "Bob's own vault is untouched");

    // Nothing left to merge: one state per notary of Alice's, one of Bob's on the well-known key.
    let none = run(&alice, "CashMerge", json!({ "currency": "USD", "issuer": ALICE })).await;
    refused(&none, "nothing to merge: this node holds 1 unlocked state of USD issued by O=Alice, L=London, C=GB (of one notary");
    refused(&run(&alice, "CashMerge", json!({ "currency": "USD", "issuer": BOB })).await, "nothing to merge");
    refused(&run(&alice, "CashMerge", json!({ "currency": "GBP" })).await, "nothing to merge: this node holds 0 unlocked states of GBP");

    // Bad arguments, each naming its field.
    let bad = [
        (json!({ "currency": "USD", "max_inputs": 1 }), "arguments of flow CashMerge: max_inputs: 1 is not between 2 and 200"),
        (json!({ "currency": "USD", "max_inputs": 201 }), "max_inputs: 201 is not between 2 and 200"),
        (json!({ "currency": "USD", "max_inputs": 2.5 }), "arguments of flow CashMerge: max_inputs: 2.5 is not between 2 and 200"),
        (json!({ "currency": "usd" }), "arguments of flow CashMerge: currency:"),
        (json!({ "currency": "USD", "issuer": "Alice" }), "arguments of flow CashMerge: issuer:"),
        (json!({ "currency": "USD", "colour": "blue" }), "colour"),
        (json!({ "issuer": ALICE }), "currency"),
    ];
    for (args, why) in bad {
        let e = match alice.flows.start("CashMerge", args.clone(), None).await {
            Err(e) => e.to_string(),
            Ok(id) => alice.flows.wait(id).await.unwrap().error.unwrap_or_default(),
        };
        assert!(e.contains(why), "{args}: {e}");
    }
    assert_eq!(quantities(&balances(&alice).await), quantities(&before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cash_split_makes_nearly_equal_coins_that_add_up_and_refuses_what_it_cannot_split() {
    let dir = bootstrap("split", &["--node", ALICE, "--node", BOB, "--notary", NOTARY]);
    let _map = map(&dir).await;
    let _notary = start(&dir, "notary").await;
    let alice = start(&dir, "alice").await;
    let bob = start(&dir, "bob").await;
    for (n, other) in [(&alice, BOB), (&alice, NOTARY), (&bob, ALICE), (&bob, NOTARY)] {
        knows(n, other).await;
    }
    ok(&run(&alice, "CashIssue", json!({ "amount": "100.00 USD" })).await);
    ok(&run(&alice, "CashIssue", json!({ "amount": "10.05 USD" })).await);
    ok(&run(&alice, "CashIssue", json!({ "amount": "0.05 EUR" })).await);
    let before = balances(&alice).await;

    // The largest (100.00) into eight of 12.50.
    let split = ok(&run(&alice, "CashSplit", json!({ "currency": "USD", "into": 8 })).await);
    assert_eq!((split["into"].as_u64(), split["amount"].as_str()), (Some(8), Some("100.00 USD")), "{split}");
    assert_eq!(outputs(&alice, &split["transaction"]).await, vec![(1250, true); 8], "on Alice's well-known key");
    assert_eq!(quantities(&balances(&alice).await), quantities(&before), "splitting makes and loses nothing");
    assert_eq!(balances(&alice).await[&key("USD", ALICE)], (11_005, 9));

    // Eight payments at once, each needing one of the 12.50 coins, all succeed (with one coin
    // of 100.00, all but one would have found it locked).
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(alice.flows.start("CashPayment", json!({ "amount": "12.00 USD", "recipient": BOB }), None).await.unwrap());
    }
    for id in ids {
        ok(&tokio::time::timeout(Duration::from_secs(60), alice.flows.wait(id)).await.unwrap().unwrap());
    }
    assert_eq!(quantities(&balances(&bob).await)[&key("USD", ALICE)], 9600);

    // Now the largest is 10.05 (the rest is change of 0.50): four parts differing by at most a
    // cent, adding up exactly; then the default, eight, of the largest of those (2.52).
    let before = balances(&alice).await;
    assert_eq!(before[&key("USD", ALICE)], (1405, 9));
    let fourths = ok(&run(&alice, "CashSplit", json!({ "currency": "USD", "issuer": ALICE, "into": 4 })).await);
    let mut parts: Vec<u64> = outputs(&alice, &fourths["transaction"]).await.iter().map(|(q, _)| *q).collect();
    parts.sort();
    assert_eq!(parts, vec![251, 251, 251, 252]);
    let eighths = ok(&run(&alice, "CashSplit", json!({ "currency": "USD" })).await);
    assert_eq!((eighths["into"].as_u64(), eighths["amount"].as_str()), (Some(8), Some("2.52 USD")), "{eighths}");
    let parts: Vec<u64> = outputs(&alice, &eighths["transaction"]).await.iter().map(|(q, _)| *q).collect();
    assert_eq!((parts.iter().sum::<u64>(), parts.iter().min(), parts.iter().max()), (252, Some(&31), Some(&32)));
    let after = balances(&alice).await;
    assert_eq!(quantities(&after), quantities(&before), "splitting makes and loses nothing");
    assert_eq!(after[&key("USD", ALICE)], (1405, 9 - 1 + 4 - 1 + 8));
    assert_eq!(locked(&alice).await, 0);

    // What cannot be split, each refused naming why.
    refused(
        &run(&alice, "CashSplit", json!({ "currency": "EUR", "into": 8 })).await,
        "too small to split: the largest unlocked EUR state holds 0.05 EUR, less than one smallest unit for each of 8 states",
    );
    refused(&run(&alice, "CashSplit", json!({ "currency": "GBP" })).await, "nothing to split: this node holds no unlocked GBP");
    refused(&run(&alice, "CashSplit", json!({ "currency": "USD", "issuer": BOB })).await, "no unlocked USD issued by O=Bob, L=Paris, C=FR");
    let bad = [
        (json!({ "currency": "USD", "into": 1 }), "arguments of flow CashSplit: into: 1 is not between 2 and 100"),
        (json!({ "currency": "USD", "into": 101 }), "arguments of flow CashSplit: into: 101 is not between 2 and 100"),
        (json!({ "currency": "USD", "into": -3 }), "arguments of flow CashSplit: into: -3 is not between 2 and 100"),
        (json!({ "currency": "USD", "into": "8" }), "arguments of flow CashSplit: into: \"8\" is not between 2 and 100"),
        (json!({ "currency": "DOLLARS" }), "arguments of flow CashSplit: currency:"),
        (json!({ "currency": "USD", "issuer": "nobody" }), "arguments of flow CashSplit: issuer:"),
    ];
    for (args, why) in bad {
        let e = match alice.flows.start("CashSplit", args.clone(), None).await {
            Err(e) => e.to_string(),
            Ok(id) => alice.flows.wait(id).await.unwrap().error.unwrap_or_default(),
        };
        assert!(e.contains(why), "{args}: {e}");
    }
    assert_eq!(locked(&alice).await, 0, "refusals lock nothing");
}
