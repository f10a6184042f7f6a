//! Helpers for tests that start real nodes inside the test process (SQLite, mutual TLS, the
//! network map) from a network bootstrapped by the `treaty` binary.

use std::path::Path;
use std::time::Duration;

use treaty_node::node::RunningNode;

/// A network bootstrapped by the `treaty` binary with these `--node`/`--notary` arguments, in
/// a scratch directory named for the test file (`suite`) and the test.
pub fn bootstrap(suite: &str, test: &str, parties: &[&str]) -> super::Scratch {
    let dir = treaty_testkit::scratch!(&format!("{suite}-{test}"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_treaty"))
        .args(["network", "bootstrap", "--dir", dir.to_str().unwrap()])
        .args(parties)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// Serves the network map of the network in `dir` from this process.
pub async fn map(dir: &Path) -> tokio::task::JoinHandle<()> {
    let text = std::fs::read_to_string(dir.join("network/network.toml")).unwrap();
    let listen = text.lines().find_map(|l| l.strip_prefix("listen = ")).unwrap().trim_matches('"').to_string();
    let server = treaty_netmap::MapServer::load(&dir.join("network")).unwrap();
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    tokio::spawn(async move {
        server.serve(listener, std::future::pending()).await.unwrap();
    })
}

/// Waits (10 s at most) until `node` knows `other`'s address.
pub async fn knows(node: &RunningNode, other: &str) {
    let other = other.parse().unwrap();
    for _ in 0..200 {
        if node.view.borrow().addresses(&other).is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never learned about {other}", node.name);
}
