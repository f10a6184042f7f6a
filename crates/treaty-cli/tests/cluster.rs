//! A notary cluster hosted by nodes (issue 6), over real processes: three member nodes run one
//! notary service — one identity and key in the network parameters, one Raft log replicated
//! between them over mutual TLS. Payments between Alice and Bob are notarised by it; with a
//! member killed (SIGKILL) they still are, clients moving on from the silent member; the member
//! started again catches up and serves again.

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

/// How many notarisations `member` has answered (its `treaty.Notarise` responder flows).
fn answered(net: &Net, member: &str) -> usize {
    let (code, out, err) = run(&["flow", "list", "--node", &net.node(member), "--json"]);
    assert_eq!(code, 0, "{err}");
    json(&out)["flows"].as_array().unwrap().iter().filter(|f| f["name"] == "treaty.Notarise" && f["status"] == "COMPLETED").count()
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
