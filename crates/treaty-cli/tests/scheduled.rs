//! Scheduled events over real processes (issue 7): an obligation not paid by its due date is
//! declared defaulted by its beneficiary's node — exactly once, although that node was killed
//! before the due date and started only after it — while one settled in time never is.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{ALICE, BOB, Net, Proc, eventually, json, run, usd};
use serde_json::Value;

const NOTARY: &str = "O=Notary,L=Zurich,C=CH";

/// A network of Alice, Bob and a notary, each a running process, all knowing each other.
struct Running {
    net: Net,
    map: Proc,
    notary: Proc,
    alice: Proc,
    bob: Proc,
}

fn network(test: &str) -> Running {
    let net = Net::with_notary(test, &[ALICE, BOB], NOTARY);
    let map = net.map();
    let notary = net.start(NOTARY);
    let alice = net.start(ALICE);
    let bob = net.start(BOB);
    for (who, whom) in [(ALICE, BOB), (BOB, ALICE), (ALICE, NOTARY), (BOB, NOTARY)] {
        net.await_known(who, whom);
    }
    Running { net, map, notary, alice, bob }
}

/// `treaty flow start --wait --json` of `flow` on `node`: its result, or the failure.
fn flow(net: &Net, node: &str, flow: &str, args: Value) -> Value {
    let (code, out, err) = run(&["flow", "start", "--node", &net.node(node), flow, "--args", &args.to_string(), "--wait", "--json"]);
    assert_eq!(code, 0, "{flow} on {node} failed: {err}{out}");
    let record = json(&out);
    assert_eq!(record["status"], "COMPLETED", "{record}");
    record["result"].clone()
}

/// The flows named `name` on `node`.
fn flows(net: &Net, node: &str, name: &str) -> Vec<Value> {
    let (code, out, err) = run(&["flow", "list", "--node", &net.node(node), "--json"]);
    assert_eq!(code, 0, "{err}");
    json(&out)["flows"].as_array().unwrap().iter().filter(|f| f["name"] == name).cloned().collect()
}

/// The node's vault states of type `type_id` with `status` (unconsumed, consumed, all).
fn states(net: &Net, node: &str, type_id: &str, status: &str) -> Vec<Value> {
    let (code, out, err) = run(&["vault", "query", "--node", &net.node(node), "--state-type", type_id, "--status", status, "--json"]);
    assert_eq!(code, 0, "{err}");
    json(&out).as_array().unwrap().clone()
}

/// A time far enough ahead for the steps a test takes before it (each a CLI process and a
/// flow, about as long as `one_flow` took), so a loaded machine does not reach it first.
fn time_after_setup(one_flow: Duration) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let ahead = (one_flow * 15).max(Duration::from_secs(6));
    treaty_core::Timestamp((now + ahead).as_micros() as i64).to_string()
}

/// Panics, saying so, if `time` has passed: a test's "not yet" checks mean nothing after it.
fn before(time: &str) {
    let at: treaty_core::Timestamp = time.parse().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
    assert!(now < at.micros(), "the set-up took longer than the time it was given ({time}); the checks before it would be void");
}

/// Sleeps until `time` is a second behind: a scheduled activity's wait starts from its time,
/// not from the end of a set-up that may finish well before it.
fn past(time: &str) {
    let at: treaty_core::Timestamp = time.parse().unwrap();
    while (SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64) < at.micros() + 1_000_000 {
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_unpaid_obligation_defaults_once_at_its_due_date_across_a_restart_and_a_paid_one_never() {
    let Running { net, map: _map, notary: _notary, alice, bob } = network("scheduled");
    let started = std::time::Instant::now();
    flow(&net, ALICE, "CashIssue", serde_json::json!({ "amount": "500.00 USD" }));

    // Two obligations of Alice to Bob, due in a few seconds; she pays the second at once.
    let due = time_after_setup(started.elapsed());
    let unpaid = flow(&net, ALICE, "ObligationIssue", serde_json::json!({ "amount": "100.00 USD", "beneficiary": BOB, "due": due }));
    let paid = flow(&net, ALICE, "ObligationIssue", serde_json::json!({ "amount": "70.00 USD", "beneficiary": BOB, "due": due }));
    let (unpaid_id, paid_id) = (unpaid["id"].as_str().unwrap().to_string(), paid["id"].as_str().unwrap().to_string());
    assert_eq!(unpaid["due"], due.as_str());
    let settled = flow(&net, ALICE, "ObligationSettle", serde_json::json!({ "id": paid_id }));
    assert_eq!(settled["paid"], "70.00 USD");
    // Bob holds the unpaid obligation and the 70.00 USD; nothing is defaulted yet.
    let held = states(&net, BOB, "treaty.finance.Obligation", "unconsumed");
    assert_eq!(held.iter().map(|s| s["linear_id"].as_str().unwrap()).collect::<Vec<_>>(), vec![unpaid_id.as_str()]);
    assert!(flows(&net, BOB, "ObligationDefault").is_empty());
    assert_eq!(usd(&net, BOB), 7000, "Bob was paid 70.00 USD");
    before(&due);

    // Settling twice is refused, naming why.
    let (code, out, err) = run(&[
        "flow",
        "start",
        "--node",
        &net.node(ALICE),
        "ObligationSettle",
        "--args",
        &serde_json::json!({ "id": paid_id }).to_string(),
        "--wait",
        "--json",
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(format!("{err}{out}").contains("no unsettled obligation"), "{err}{out}");

    // Bob's node dies before the due date and comes back after it.
    drop(bob);
    before(&due);
    past(&due);
    let bob = net.start(BOB);
    eventually("Bob's node defaults the unpaid obligation", || {
        flows(&net, BOB, "ObligationDefault").iter().any(|f| f["status"] == "COMPLETED")
    });
    let defaults = flows(&net, BOB, "ObligationDefault");
    assert_eq!(defaults.len(), 1, "exactly one default: {defaults:?}");
    let d = &defaults[0];
    assert_eq!(d["args"]["id"], unpaid_id.as_str());
    assert_eq!(d["result"]["defaulted"], true, "{d}");
    assert_eq!(d["client_id"], format!("scheduled:{}", held[0]["state_ref"].as_str().unwrap()).as_str());
    let default_tx = d["result"]["transaction"].as_str().unwrap().to_string();

    // Both vaults hold the defaulted version (same linear id) from that transaction.
    for node in [ALICE, BOB] {
        eventually(&format!("{node} records the default"), || {
            let now = states(&net, node, "treaty.finance.Obligation", "unconsumed");
            now.len() == 1 && now[0]["tx_id"] == default_tx.as_str() && now[0]["linear_id"] == unpaid_id.as_str()
        });
    }

    // A restart later starts nothing again: the activity was noted, and the defaulted
    // obligation asks for none.
    bob.stop();
    let bob = net.start(BOB);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(flows(&net, BOB, "ObligationDefault").len(), 1);
    // Defaulting by hand once more finds nothing to do.
    let again = flow(&net, BOB, "ObligationDefault", serde_json::json!({ "id": unpaid_id }));
    assert_eq!(again["defaulted"], false, "{again}");
    drop((alice, bob));
}

#[test]
fn time_locked_cash_cannot_be_spent_before_its_time_and_unlocks_itself_then() {
    let Running { net, map: _map, notary: _notary, alice: _alice, bob: _bob } = network("timelock");
    let started = std::time::Instant::now();
    flow(&net, ALICE, "CashIssue", serde_json::json!({ "amount": "500.00 USD" }));
    let one_flow = started.elapsed();
    assert_eq!(usd(&net, ALICE), 50000);

    // Alice locks 200.00 of her own until a few seconds from now, and pays Bob 50.00 locked
    // the same way.
    let until = time_after_setup(one_flow);
    let locked = flow(&net, ALICE, "CashLock", serde_json::json!({ "amount": "200.00 USD", "until": until }));
    assert_eq!(locked["until"], until.as_str());
    flow(&net, ALICE, "CashLock", serde_json::json!({ "amount": "50.00 USD", "until": until, "recipient": BOB }));
    // Locked cash is in the vaults but not spendable: Alice has 250.00 she can pay, Bob none.
    assert_eq!(usd(&net, ALICE), 25000);
    assert_eq!(usd(&net, BOB), 0);
    assert_eq!(states(&net, ALICE, "treaty.finance.TimeLock", "unconsumed").len(), 1);
    assert_eq!(states(&net, BOB, "treaty.finance.TimeLock", "unconsumed").len(), 1);
    let (code, out, err) = run(&[
        "flow",
        "start",
        "--node",
        &net.node(ALICE),
        "CashPayment",
        "--args",
        &serde_json::json!({ "amount": "300.00 USD", "recipient": BOB }).to_string(),
        "--wait",
        "--json",
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(
        format!("{err}{out}").contains("VAULT-INSUFFICIENT-BALANCE insufficient balance of USD: requested 30000, available unlocked 25000"),
        "{err}{out}"
    );
    // Unlocking by hand before the time finds nothing due.
    assert_eq!(flow(&net, ALICE, "CashUnlock", serde_json::json!({}))["unlocked"], 0);
    before(&until);

    // At the time, each owner's node unlocks its cash by itself. The lock's time is set
    // further ahead the slower the machine (`time_after_setup`), so the wait starts there.
    past(&until);
    eventually("Alice's 200.00 unlocks", || usd(&net, ALICE) == 45000);
    eventually("Bob's 50.00 unlocks", || usd(&net, BOB) == 5000);
    assert!(states(&net, ALICE, "treaty.finance.TimeLock", "unconsumed").is_empty());
    assert!(states(&net, BOB, "treaty.finance.TimeLock", "unconsumed").is_empty());
    let unlocks = flows(&net, ALICE, "CashUnlock");
    assert!(
        unlocks.iter().any(|f| f["client_id"].as_str().is_some_and(|c| c.starts_with("scheduled:")) && f["result"]["unlocked"] == 1),
        "{unlocks:?}"
    );
    // And it is spendable again.
    flow(&net, ALICE, "CashPayment", serde_json::json!({ "amount": "300.00 USD", "recipient": BOB }));
    assert_eq!(usd(&net, BOB), 35000);
}
