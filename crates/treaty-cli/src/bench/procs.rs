//! `treaty bench flows` over node processes: Alice, Bob and the notary each run as `treaty
//! node run` (SQLite, mutual TLS between them), and the benchmark is their RPC client, as an
//! application would be: it starts each flow with `StartFlow` and waits for it on
//! `WatchFlow`. Only the network map runs in the benchmark's process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use treaty_rpc::v1 as pb;

use crate::client::{Client, connect, rpc};

/// How long a node may take to say it is ready, and the nodes to learn each other.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Flows in flight per RPC connection (each waits on a stream of its own).
const FLOWS_PER_CONNECTION: usize = 64;

/// The node processes of one run, stopped together (and killed if the run is dropped).
pub(super) struct Network {
    pub(super) map_task: super::MapTask,
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
    let (created, map_task) = super::bootstrap_with_map(scratch).await?;
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

/// Runs `count` rounds, `concurrency` at a time, over RPC to Alice (the node in `alice`):
/// each flow started with `StartFlow` and waited for on `WatchFlow`. Returns each round's
/// latency in milliseconds.
pub(super) async fn drive(alice: &Path, count: usize, concurrency: usize, round: super::Round) -> Result<Vec<f64>> {
    let mut clients = Vec::new();
    for _ in 0..concurrency.div_ceil(FLOWS_PER_CONNECTION) {
        clients.push(connect(alice).await?);
    }
    let clients = Arc::new(clients);
    super::rounds(count, concurrency, round, move |worker, flow: &'static str, args: String| {
        let mut client = clients[worker % clients.len()].clone();
        async move { run_flow(&mut client, flow, args).await }
    })
    .await
}

/// Starts `flow` on the node and waits for it to finish; an outcome other than COMPLETED is
/// the error.
async fn run_flow(client: &mut Client, flow: &str, args: String) -> Result<()> {
    let request = pb::StartFlowRequest { name: flow.into(), args_json: args, client_id: String::new() };
    let id = client.start_flow(request).await.map_err(rpc)?.into_inner().flow_id;
    let mut events = client.watch_flow(pb::FlowRef { flow_id: id.clone() }).await.map_err(rpc)?.into_inner();
    // Read to the stream's end (the node ends it after `Finished`): dropping it early resets
    // the HTTP/2 stream, and h2 fails the whole connection after 1,024 of those.
    let mut finished = None;
    while let Some(event) = events.message().await.map_err(rpc)? {
        if let Some(pb::flow_event::Event::Finished(f)) = event.event {
            finished = Some(f);
        }
    }
    match finished {
        Some(f) if f.status == "COMPLETED" => Ok(()),
        Some(f) => bail!("{flow} flow {id} ended {}: {}", f.status, f.error),
        None => bail!("the node closed flow {id}'s progress stream before it finished"),
    }
}
