//! `treaty bench flows` over node processes: Alice, Bob and the notary each run as `treaty
//! node run` (SQLite, mutual TLS between them), and the benchmark is their RPC client, as an
//! application would be: it starts each flow with `StartFlow` and waits for it on
//! `WatchFlow`. Only the network map runs in the benchmark's process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use treaty_rpc::v1 as pb;

use crate::bootstrap;
use crate::client::{Client, connect, rpc};

/// How long a node may take to say it is ready, and the nodes to learn each other.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Flows in flight per RPC connection (each waits on a stream of its own).
const FLOWS_PER_CONNECTION: usize = 64;

/// The node processes of one run, stopped together (and killed if the run is dropped).
pub(super) struct Network {
    pub(super) map_task: tokio::task::JoinHandle<Result<(), treaty_netmap::NetmapError>>,
    /// Alice, Bob, the notary: label, node directory, process.
    nodes: Vec<(String, PathBuf, Child)>,
}

impl Network {
    /// The directory of node `i` (0 Alice, 1 Bob, 2 the notary).
    pub(super) fn dir(&self, i: usize) -> &Path {
        &self.nodes[i].1
    }

    /// Asks every node to stop over RPC and waits for the processes (killing any that do not
    /// stop within 10 s), then stops the map.
    pub(super) async fn stop(mut self) {
        for (_, dir, _) in &self.nodes {
            if let Ok(mut client) = connect(dir).await {
                let _ = client.shutdown(pb::ShutdownRequest { drain: false, timeout_seconds: 0 }).await;
            }
        }
        for (label, _, child) in &mut self.nodes {
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                eprintln!("{label} did not stop within 10 s of being asked; killing it");
                let _ = child.kill().await;
            }
        }
        self.map_task.abort();
    }
}

/// A fresh network in `scratch` — Alice, Bob and a non-validating notary, each a `treaty node
/// run` process, and the map in this process — ready once every node lists all three.
pub(super) async fn start(scratch: &Path) -> Result<Network> {
    let req = bootstrap::Request {
        dir: scratch.to_path_buf(),
        nodes: vec!["O=Alice,L=London,C=GB".into(), "O=Bob,L=Paris,C=FR".into()],
        notaries: vec!["O=Notary,L=Zurich,C=CH".into()],
        validating: false,
        cluster: 1,
    };
    let created = bootstrap::bootstrap(&req)?;
    let map_server = treaty_netmap::MapServer::load(&scratch.join("network"))?;
    let listen = created.network_map.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let map_task = tokio::spawn(map_server.serve(listener, std::future::pending()));
    let exe = std::env::current_exe().context("cannot find the treaty executable")?;
    let mut network = Network { map_task, nodes: Vec::new() };
    for n in &created.nodes {
        let dir = PathBuf::from(&n.dir);
        let log = dir.join("bench-node.log");
        let log_file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(&exe)
            .args(["node", "run", "--config"])
            .arg(dir.join("node.toml"))
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C in the terminal reaches the benchmark, whose
            // exit kills the nodes, not the nodes first.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {} node run", exe.display()))?;
        let stdout = child.stdout.take().context("the node process has no standard output")?;
        network.nodes.push((n.name.clone(), dir.clone(), child));
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if line.contains(" ready in ") {
                    return Ok::<bool, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        if !matches!(ready, Ok(Ok(true))) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("node {} did not start within {START_TIMEOUT:?}: {}", n.name, said.trim());
        }
        // Keep reading its standard output, so the node never blocks writing to it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    }
    let deadline = Instant::now() + START_TIMEOUT;
    for (label, dir, _) in &network.nodes {
        let mut client = connect(dir).await?;
        loop {
            let map = client.get_network_map(pb::Empty {}).await.map_err(rpc)?.into_inner();
            if map.nodes.len() >= 3 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{label} lists {} of the 3 nodes after {START_TIMEOUT:?}", map.nodes.len());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(network)
}

/// Runs `count` rounds, `concurrency` at a time, over RPC to Alice (`alice`): each round is the
/// flows `round` names, one after the other, each started and waited for. Returns each round's
/// latency in milliseconds.
pub(super) async fn drive(
    alice: &Path,
    count: usize,
    concurrency: usize,
    round: Arc<dyn Fn() -> Vec<(&'static str, String)> + Send + Sync>,
) -> Result<Vec<f64>> {
    let mut clients = Vec::new();
    for _ in 0..concurrency.div_ceil(FLOWS_PER_CONNECTION) {
        clients.push(connect(alice).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (mut client, next, round) = (clients[w % clients.len()].clone(), next.clone(), round.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let t = Instant::now();
                for (flow, args) in round() {
                    run_flow(&mut client, flow, args).await?;
                }
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<Vec<f64>, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for w in workers {
        latencies.extend(w.await??);
    }
    Ok(latencies)
}

/// Starts `flow` on the node and waits for it to finish; an outcome other than COMPLETED is
/// the error.
async fn run_flow(client: &mut Client, flow: &str, args: String) -> Result<()> {
    let request = pb::StartFlowRequest { name: flow.into(), args_json: args, client_id: String::new() };
    let id = client.start_flow(request).await.map_err(rpc)?.into_inner().flow_id;
    let mut events = client.watch_flow(pb::FlowRef { flow_id: id.clone() }).await.map_err(rpc)?.into_inner();
    while let Some(event) = events.message().await.map_err(rpc)? {
        if let Some(pb::flow_event::Event::Finished(f)) = event.event {
            if f.status != "COMPLETED" {
                bail!("{flow} flow {id} ended {}: {}", f.status, f.error);
            }
            return Ok(());
        }
    }
    bail!("the node closed flow {id}'s progress stream before it finished")
}
