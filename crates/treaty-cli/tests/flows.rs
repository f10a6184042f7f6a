//! Flows between real nodes (SQLite, mutual TLS, the network map) started in this process from
//! a network bootstrapped by the `treaty` binary: the built-in Echo flow, and a flow that
//! outlives its counterparty's downtime and its own node's restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use treaty_flows::FlowStatus;
use treaty_node::config::NodeConfig;
use treaty_node::node::{self, ECHO, RunningNode};

const ALICE: &str = "O=Alice,L=London,C=GB";
const BOB: &str = "O=Bob,L=Paris,C=FR";

fn bootstrap(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("treaty-flows-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_treaty"))
        .args(["network", "bootstrap", "--dir", dir.to_str().unwrap(), "--node", ALICE, "--node", BOB])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

async fn map(dir: &Path) -> tokio::task::JoinHandle<()> {
    let text = std::fs::read_to_string(dir.join("network/network.toml")).unwrap();
    let listen = text.lines().find_map(|l| l.strip_prefix("listen = ")).unwrap().trim_matches('"').to_string();
    let server = treaty_netmap::MapServer::load(&dir.join("network")).unwrap();
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    tokio::spawn(async move {
        server.serve(listener, std::future::pending()).await.unwrap();
    })
}

async fn start(dir: &Path, who: &str) -> RunningNode {
    let mut config = NodeConfig::load(&dir.join(who).join("node.toml")).unwrap();
    config.poll_interval = Duration::from_millis(200);
    node::start(&config).await.unwrap()
}

async fn knows(node: &RunningNode, other: &str) {
    let other = other.parse().unwrap();
    for _ in 0..200 {
        if node.view.borrow().addresses(&other).is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never learned about {other}", node.name);
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
    let _ = std::fs::remove_dir_all(&dir);
}
