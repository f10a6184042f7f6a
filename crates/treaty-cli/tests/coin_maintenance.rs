//! The `[coins]` background task over real processes: a node restarted with the section merges
//! its many small coins down to `merge_above` and splits its one large coin, one maintenance
//! flow per token at a time (also while the first waits for a notary that is down, and across
//! a restart), each a durable flow listed by `treaty flow list`; then stays still (it never
//! undoes its own work), splits no coin from under payments that hold the others, and
//! concurrent payments find enough coins. The flows themselves are tested in `coins.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{ALICE, BOB, Net, eventually, json, run};
use serde_json::Value;

const NOTARY: &str = "O=Notary,L=Zurich,C=CH";

const COINS: &str = "
[coins]
interval_seconds = 1
merge_above = 12
max_inputs = 10
split_below = 4
split_into = 8
";

/// `treaty flow start --wait --json` of `flow` on `node`: its result, or the failure.
fn flow(net: &Net, node: &str, flow: &str, args: Value) -> Value {
    let (code, out, err) = run(&["flow", "start", "--node", &net.node(node), flow, "--args", &args.to_string(), "--wait", "--json"]);
    assert_eq!(code, 0, "{flow} on {node} failed: {err}{out}");
    json(&out)["result"].clone()
}

/// The maintenance flows on `node` (CashMerge and CashSplit), oldest first.
fn maintenance(net: &Net, node: &str) -> Vec<Value> {
    let (code, out, err) = run(&["flow", "list", "--node", &net.node(node), "--json"]);
    assert_eq!(code, 0, "{err}");
    let mut flows: Vec<Value> =
        json(&out)["flows"].as_array().unwrap().iter().filter(|f| f["name"] == "CashMerge" || f["name"] == "CashSplit").cloned().collect();
    flows.sort_by_key(|f| f["created_at_micros"].as_i64());
    flows
}

/// `node`'s unconsumed `token` (every issuer): quantity in the smallest unit and states.
fn cash(net: &Net, node: &str, token: &str) -> (u64, u64) {
    common::balance(net, node, token)
}

/// Waits up to `secs` until `check` holds.
fn within(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_coins_task_merges_small_coins_and_splits_a_large_one_one_flow_per_token_and_then_stays_still() {
    let net = Net::with_notary("coins", &[ALICE, BOB], NOTARY);
    let _map = net.map();
    let notary = net.start(NOTARY);
    let alice = net.start(ALICE);
    let _bob = net.start(BOB);
    for (who, whom) in [(ALICE, BOB), (BOB, ALICE), (ALICE, NOTARY), (BOB, NOTARY)] {
        net.await_known(who, whom);
    }

    // Without the section nothing happens: thirty coins of 1.00 USD and one of 100.00 EUR stay.
    let node = net.node(ALICE);
    for _ in 0..30 {
        let (code, _, err) = run(&["flow", "start", "--node", &node, "CashIssue", "--args", r#"{"amount": "1.00 USD"}"#]);
        assert_eq!(code, 0, "{err}");
    }
    flow(&net, ALICE, "CashIssue", serde_json::json!({ "amount": "100.00 EUR" }));
    eventually("thirty USD coins are issued", || cash(&net, ALICE, "USD") == (3000, 30));
    assert_eq!(cash(&net, ALICE, "EUR"), (10000, 1));
    assert!(maintenance(&net, ALICE).is_empty());

    // Restarted with [coins]: USD (30 unlocked, above 12) is to be merged ten at a time,
    // 30 → 21 → 12; EUR (one state, below 4) split into eight. The notary is down first, so the
    // first merge and the split wait for it (durably, holding their coins): meanwhile the task
    // starts no second flow for either token, also after Alice's node restarts.
    notary.stop();
    alice.stop();
    net.edit_config(ALICE, |text| text + COINS);
    let alice = net.start(ALICE);
    let waiting = |net: &Net| {
        let flows = maintenance(net, ALICE);
        let mut names: Vec<String> = flows.iter().map(|f| f["name"].as_str().unwrap().to_string()).collect();
        names.sort();
        flows.iter().all(|f| f["status"] == "RUNNABLE").then_some(names)
    };
    within(30, "a merge and a split wait for the notary", || waiting(&net) == Some(vec!["CashMerge".into(), "CashSplit".into()]));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(maintenance(&net, ALICE).len(), 2, "one flow per token while the first waits: {:#?}", maintenance(&net, ALICE));
    alice.stop();
    let alice = net.start(ALICE);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(maintenance(&net, ALICE).len(), 2, "after a restart too: {:#?}", maintenance(&net, ALICE));
    let notary = net.start(NOTARY);
    within(60, "USD is merged down to 12 coins", || cash(&net, ALICE, "USD") == (3000, 12));
    within(60, "EUR is split into 8 coins", || cash(&net, ALICE, "EUR") == (10000, 8));
    within(10, "the maintenance flows have ended", || maintenance(&net, ALICE).iter().all(|f| f["status"] == "COMPLETED"));

    let flows = maintenance(&net, ALICE);
    let merges: Vec<&Value> = flows.iter().filter(|f| f["name"] == "CashMerge").collect();
    let splits: Vec<&Value> = flows.iter().filter(|f| f["name"] == "CashSplit").collect();
    assert_eq!((merges.len(), splits.len()), (2, 1), "{flows:#?}");
    for m in &merges {
        assert!(m["client_id"].as_str().unwrap().starts_with("coins:merge:USD:O=Alice, L=London, C=GB:"), "{m}");
        assert_eq!(m["args"]["max_inputs"], 10);
        assert_eq!((m["result"]["merged"].as_u64(), m["result"]["amount"].as_str()), (Some(10), Some("10.00 USD")), "{m}");
    }
    // One at a time: the second merge started after the first had ended.
    assert!(
        merges[1]["created_at_micros"].as_i64() >= merges[0]["updated_at_micros"].as_i64(),
        "the merges of one token overlapped: {merges:#?}"
    );
    assert!(splits[0]["client_id"].as_str().unwrap().starts_with("coins:split:EUR:"), "{}", splits[0]);
    assert_eq!((splits[0]["result"]["into"].as_u64(), splits[0]["result"]["amount"].as_str()), (Some(8), Some("100.00 EUR")));

    // It stays still: 12 USD coins are not above 12, 8 EUR coins not below 4 — no merge is split
    // and no split merged.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(maintenance(&net, ALICE).len(), 3);

    // Eight payments of 12.00 EUR at once, each needing one of the 12.50 coins, all succeed
    // (from the one 100.00 coin, all but one would have found it locked). The first five start
    // while the notary is down, so they hold five coins: three are free, fewer than
    // split_below, but the task counts the held ones too and splits none of the three from
    // under the next payments.
    let payment = serde_json::json!({ "amount": "12.00 EUR", "recipient": BOB }).to_string();
    notary.stop();
    let mut held = Vec::new();
    for _ in 0..5 {
        let (code, out, err) = run(&["flow", "start", "--node", &node, "CashPayment", "--args", &payment, "--json"]);
        assert_eq!(code, 0, "{err}");
        held.push(json(&out)["flow_id"].as_str().unwrap().to_string());
    }
    within(30, "five coins are held by payments waiting for the notary", || {
        let (code, out, _) = run(&["vault", "query", "--node", &node, "--where", r#"{"lock": "locked"}"#, "--json"]);
        code == 0 && json(&out).as_array().unwrap().len() == 5
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(maintenance(&net, ALICE).len(), 3, "no split while payments hold the coins: {:#?}", maintenance(&net, ALICE));
    let _notary = net.start(NOTARY);
    let payers: Vec<_> = (0..3)
        .map(|_| {
            let (node, payment) = (node.clone(), payment.clone());
            std::thread::spawn(move || run(&["flow", "start", "--node", &node, "CashPayment", "--args", &payment, "--wait", "--json"]))
        })
        .collect();
    for p in payers {
        let (code, out, err) = p.join().unwrap();
        assert_eq!(code, 0, "a payment failed: {err}{out}");
    }
    within(60, "the five held payments complete", || {
        let (code, out, _) = run(&["flow", "list", "--node", &node, "--json"]);
        code == 0
            && json(&out)["flows"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| held.iter().any(|id| f["flow_id"] == id.as_str()))
                .all(|f| f["status"] == "COMPLETED")
    });
    assert_eq!(cash(&net, BOB, "EUR"), (9600, 8));
    assert_eq!(cash(&net, ALICE, "EUR"), (400, 8), "eight coins of 0.50 change");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(maintenance(&net, ALICE).len(), 3, "nothing more to do");
    assert_eq!(cash(&net, ALICE, "USD"), (3000, 12));
    drop(alice);
}
