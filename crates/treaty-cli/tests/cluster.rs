//! Notaries hosted by nodes, over real processes. A notary cluster (issue 6): three member
//! nodes run one notary service — one identity and key in the network parameters, one Raft log
//! replicated between them over mutual TLS. Payments between Alice and Bob are notarised by it;
//! with a member killed (SIGKILL) they still are, clients moving on from the silent member; the
//! member started again catches up and serves again. A single notary node killed while
//! payments wait for it answers each of them after its restart, once.

mod common;

use common::{ALICE, BOB, Net, Proc, json, run, usd};
use serde_json::{Value, json};

const NOTARY: &str = "O=Notary,L=Zurich,C=CH";
const MEMBERS: [&str; 3] =
    ["CN=Replica 1,O=Notary,L=Zurich,C=CH", "CN=Replica 2,O=Notary,L=Zurich,C=CH", "CN=Replica 3,O=Notary,L=Zurich,C=CH"];

/// `treaty flow start --wait --json` of `flow` on `node`: the whole record.
fn start(net: &Net, node: &str, flow: &str, args: Value) -> Value {
    let (code, out, err) = run(&["flow", "start", "--node", &net.node(node), flow, "--args", &args.to_string(), "--wait", "--json"]);
    assert!(code == 0 || !out.is_empty(), "{flow} on {node}: {err}");
    json(&out)
}

fn completed(net: &Net, node: &str, flow: &str, args: Value) -> Value {
    let record = start(net, node, flow, args);
    assert_eq!(record["status"], "COMPLETED", "{record}");
    record["result"].clone()
}

/// How many notarisation requests `member` has handled from Alice: the flow-session messages
/// from her in its inbox, which keeps the id of every message it handled. (A member answers a
/// tear-off without running a flow, so its flow list does not show notarisations.)
fn answered(net: &Net, member: &str) -> usize {
    use treaty_storage::writer::rusqlite::{Connection, OpenFlags};
    let db = Connection::open_with_flags(std::path::Path::new(&net.node(member)).join("node.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the member's database");
    let alice: treaty_core::X500Name = ALICE.parse().unwrap();
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM treaty_inbox WHERE sender = ?1 AND topic = 'treaty.flow'", [alice.to_string()], |r| r.get(0))
        .expect("count the member's inbox");
    usize::try_from(n).unwrap()
}

#[test]
fn a_cluster_of_nodes_notarises_as_one_service_through_the_loss_of_a_member() {
    let net = Net::with_notary_cluster("cluster", &[ALICE, BOB], NOTARY, 3);
    let config = net.config(MEMBERS[0]);
    let service: treaty_core::X500Name = config["notary"]["service_name"].as_str().unwrap().parse().unwrap();
    assert_eq!(service, NOTARY.parse().unwrap());
    assert_eq!(config["notary"]["replicas"].as_array().map(Vec::len), Some(3));

    let _map = net.map();
    let mut members: Vec<Option<Proc>> = MEMBERS.iter().map(|m| Some(net.start(m))).collect();
    let (_alice, _bob) = (net.start(ALICE), net.start(BOB));
    for who in [ALICE, BOB] {
        for whom in MEMBERS.iter().copied().chain([ALICE, BOB]).filter(|w| *w != who) {
            net.await_known(who, whom);
        }
    }
    for m in MEMBERS {
        net.await_known(m, ALICE);
        net.await_known(m, BOB);
    }

    completed(&net, ALICE, "CashIssue", json!({ "amount": "1000.00 USD", "notary": NOTARY }));
    let pay = |n: u64| {
        for _ in 0..n {
            completed(&net, ALICE, "CashPayment", json!({ "amount": "10.00 USD", "recipient": BOB, "anonymous": false }));
        }
    };
    pay(6);
    assert_eq!(usd(&net, BOB), 6000);
    let spread: Vec<usize> = MEMBERS.iter().map(|m| answered(&net, m)).collect();
    assert_eq!(spread.iter().sum::<usize>(), 6, "each payment notarised once, by one member: {spread:?}");

    // SIGKILL a member: payments go on (those that ask it first move on after its wait).
    drop(members[0].take());
    pay(6);
    assert_eq!(usd(&net, BOB), 12000, "every payment notarised with a member down");
    assert_eq!(usd(&net, ALICE), 100000 - 12000);

    // It comes back, catches up from the others, and serves again.
    members[0] = Some(net.start(MEMBERS[0]));
    pay(3);
    assert_eq!(usd(&net, BOB), 15000);
}

/// The notary answers a tear-off without a flow, writing its answer with the mark that the
/// request was handled: killed (SIGKILL) with requests in its inbox, in flight or not yet
/// sent, it answers each after its restart, and every payment completes once.
#[test]
fn a_notary_node_killed_while_payments_wait_for_it_answers_them_after_its_restart() {
    let net = Net::with_notary("notary-killed", &[ALICE, BOB], NOTARY);
    let _map = net.map();
    let notary = net.start(NOTARY);
    let (_alice, _bob) = (net.start(ALICE), net.start(BOB));
    for (who, whom) in [(ALICE, BOB), (ALICE, NOTARY), (BOB, ALICE), (NOTARY, ALICE)] {
        net.await_known(who, whom);
    }
    // One coin per payment, so none waits for another's change.
    for _ in 0..13 {
        completed(&net, ALICE, "CashIssue", json!({ "amount": "10.00 USD" }));
    }
    completed(&net, ALICE, "CashPayment", json!({ "amount": "10.00 USD", "recipient": BOB, "anonymous": false }));
    let args = json!({ "amount": "10.00 USD", "recipient": BOB, "anonymous": false }).to_string();
    let started: Vec<String> = (0..12)
        .map(|_| {
            let (code, out, err) = run(&["flow", "start", "--node", &net.node(ALICE), "CashPayment", "--args", &args, "--json"]);
            assert_eq!(code, 0, "{err}");
            json(&out)["flow_id"].as_str().unwrap().to_string()
        })
        .collect();
    drop(notary);
    let _notary = net.start(NOTARY);
    common::eventually("every payment completes after the notary's restart", || {
        let (code, out, _) = run(&["flow", "list", "--node", &net.node(ALICE), "--json"]);
        code == 0
            && started
                .iter()
                .all(|id| json(&out)["flows"].as_array().unwrap().iter().any(|f| f["flow_id"] == id.as_str() && f["status"] == "COMPLETED"))
    });
    assert_eq!(usd(&net, BOB), 13 * 1000);
    assert_eq!(usd(&net, ALICE), 0);
    assert_eq!(answered(&net, NOTARY), 13, "each payment asked the notary once");
}
