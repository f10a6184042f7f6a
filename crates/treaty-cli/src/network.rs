//! `treaty network run | map | serve-map | revoke`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use treaty_net::map::{MapCache, NodeInfo};
use treaty_net::pki::RevocationList;

use crate::node::{init_logging, open, runtime, stop_signal};

#[derive(Deserialize)]
struct NetworkToml {
    listen: String,
    nodes: Vec<String>,
}

fn network_toml(dir: &Path) -> Result<NetworkToml> {
    let path = dir.join("network").join("network.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}; is {} a directory made by `treaty network bootstrap`?", path.display(), dir.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid network.toml", path.display()))
}

/// Serves the network map of a bootstrapped network until Ctrl-C or SIGTERM.
pub fn serve_map(dir: &Path) -> Result<()> {
    init_logging();
    let listen = network_toml(dir)?.listen;
    runtime()?.block_on(async {
        let server = treaty_netmap::MapServer::load(&dir.join("network"))?;
        let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        println!("treaty network map ready on http://{listen}");
        server
            .serve(listener, async {
                stop_signal().await.ok();
            })
            .await?;
        println!("treaty network map stopped");
        Ok(())
    })
}

/// Adds a legal name to the network's revocation list.
pub fn revoke(dir: &Path, name: &str) -> Result<()> {
    let name = name.parse().with_context(|| format!("--name {name:?} is not a valid legal name"))?;
    treaty_netmap::revoke(&dir.join("network"), &name)?;
    println!("{name} is revoked; nodes refuse it once they have polled the network map");
    Ok(())
}

struct Process {
    label: String,
    child: Child,
    ready: bool,
}

#[derive(Serialize)]
struct Started {
    label: String,
    pid: u32,
    log: String,
    ready_ms: u128,
}

#[derive(Serialize)]
struct RunReport {
    dir: String,
    network_map: String,
    processes: Vec<Started>,
}

fn spawn(exe: &Path, args: &[&str], log: &Path) -> Result<Child> {
    let log_file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {} {}", exe.display(), args.join(" ")))
}

/// Waits for a child's line containing "ready"; relays its other lines.
async fn wait_ready(p: &mut Process, within: Duration) -> Result<()> {
    let stdout = p.child.stdout.take().context("child has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) if line.contains(" ready ") => {
                p.ready = true;
                // Keep relaying what it prints later.
                let label = p.label.clone();
                tokio::spawn(async move {
                    while let Ok(Some(line)) = lines.next_line().await {
                        println!("[{label}] {line}");
                    }
                });
                return Ok(());
            }
            Ok(Ok(Some(line))) => println!("[{}] {line}", p.label),
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = p.child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                bail!("{} exited before it was ready ({status})", p.label)
            }
            Err(_) => bail!("{} was not ready within {within:?}", p.label),
        }
    }
}

/// Asks a child to stop (SIGTERM), then kills it if it has not stopped within five seconds.
async fn stop(p: &mut Process) {
    if let Some(pid) = p.child.id() {
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        if tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = p.child.kill().await;
}

/// Starts the network map and every node of `dir` as separate processes, and stops them all
/// on Ctrl-C or SIGTERM.
pub fn run(dir: &Path, json: bool) -> Result<()> {
    let net = network_toml(dir)?;
    let exe = std::env::current_exe().context("cannot find the treaty executable")?;
    let dir_s = dir.display().to_string();
    runtime()?.block_on(async {
        let began = Instant::now();
        let mut started = Vec::new();
        let mut processes = Vec::new();
        let map_log = dir.join("network").join("network-map.log");
        let mut map = Process {
            label: "network-map".into(),
            child: spawn(&exe, &["network", "serve-map", "--dir", &dir_s], &map_log)?,
            ready: false,
        };
        let result = async {
            wait_ready(&mut map, Duration::from_secs(10)).await.with_context(|| format!("see {}", map_log.display()))?;
            started.push(Started {
                label: map.label.clone(),
                pid: map.child.id().unwrap_or(0),
                log: map_log.display().to_string(),
                ready_ms: began.elapsed().as_millis(),
            });
            if !json {
                println!("network map ready on http://{} ({} ms)", net.listen, began.elapsed().as_millis());
            }
            for slug in &net.nodes {
                let node_dir: PathBuf = dir.join(slug);
                let config = node_dir.join("node.toml").display().to_string();
                let log = node_dir.join("node.log");
                processes.push(Process {
                    label: slug.clone(),
                    child: spawn(&exe, &["node", "run", "--config", &config], &log)?,
                    ready: false,
                });
            }
            for p in &mut processes {
                let log = dir.join(&p.label).join("node.log");
                wait_ready(p, Duration::from_secs(30)).await.with_context(|| format!("see {}", log.display()))?;
                started.push(Started {
                    label: p.label.clone(),
                    pid: p.child.id().unwrap_or(0),
                    log: log.display().to_string(),
                    ready_ms: began.elapsed().as_millis(),
                });
                if !json {
                    println!("{} ready ({} ms)", p.label, began.elapsed().as_millis());
                }
            }
            Ok::<(), anyhow::Error>(())
        }
        .await;
        if let Err(e) = result {
            for p in processes.iter_mut().chain(std::iter::once(&mut map)) {
                stop(p).await;
            }
            return Err(e);
        }
        if json {
            let report = RunReport { dir: dir_s.clone(), network_map: format!("http://{}", net.listen), processes: started };
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("network {} is running ({} node(s)); Ctrl-C or SIGTERM stops it", dir_s, processes.len());
        }
        // Run until asked to stop or a process dies.
        let mut exited: BTreeMap<String, String> = BTreeMap::new();
        loop {
            tokio::select! {
                r = stop_signal() => { r?; break; }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            for p in processes.iter_mut().chain(std::iter::once(&mut map)) {
                if p.ready
                    && !exited.contains_key(&p.label)
                    && let Ok(Some(status)) = p.child.try_wait()
                {
                    eprintln!("{} exited unexpectedly ({status}); the others keep running", p.label);
                    exited.insert(p.label.clone(), status.to_string());
                }
            }
        }
        for p in processes.iter_mut() {
            stop(p).await;
        }
        stop(&mut map).await;
        if !json {
            println!("network stopped");
        }
        if !exited.is_empty() {
            bail!("{} process(es) had exited unexpectedly: {}", exited.len(), exited.keys().cloned().collect::<Vec<_>>().join(", "));
        }
        Ok(())
    })
}

#[derive(Serialize)]
struct MapEntry {
    name: String,
    addresses: Vec<String>,
    platform_version: u32,
    serial: u64,
    notary: bool,
    revoked: bool,
}

#[derive(Serialize)]
struct MapReport {
    node: String,
    fetched_at_secs: Option<u64>,
    parameters_hash: Option<String>,
    nodes: Vec<MapEntry>,
}

/// Lists the nodes the node in `node_dir` knows (its cached copy of the network map, as the
/// node itself uses it).
pub fn map(node_dir: &Path, json: bool) -> Result<()> {
    runtime()?.block_on(async {
        let (config, db) = open(node_dir).await?;
        let root = std::fs::read(node_dir.join("certs").join("root.der")).context("cannot read certs/root.der")?;
        let snapshot = db.network_map().load().await?;
        let mut report = MapReport { node: config.legal_name.to_string(), fetched_at_secs: None, parameters_hash: None, nodes: Vec::new() };
        if let Some(s) = snapshot {
            let revoked: RevocationList =
                s.revocations.verify(treaty_net::map::kinds::REVOCATION_LIST, &config.network_map_key).unwrap_or_default();
            let params = treaty_net::map::verify_parameters(&s.parameters, &config.network_map_key).ok();
            report.fetched_at_secs = Some(s.fetched_at_secs);
            report.parameters_hash = params.as_ref().map(|p| p.hash().to_string());
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            for signed in &s.node_infos {
                // Verify against an empty list so revoked nodes are listed, marked.
                let Ok(info) = NodeInfo::verify(signed, &root, &RevocationList::default(), now) else { continue };
                let name = info.legal_identity.name.clone();
                let notary = params.as_ref().is_some_and(|p| p.notaries.iter().any(|n| n.identity.name == name));
                report.nodes.push(MapEntry {
                    revoked: revoked.names.contains(&name),
                    name: name.to_string(),
                    addresses: info.addresses,
                    platform_version: info.platform_version,
                    serial: info.serial,
                    notary,
                });
            }
            report.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else if report.fetched_at_secs.is_none() {
            println!("{} has not fetched the network map yet", report.node);
        } else {
            println!("{} knows {} node(s):", report.node, report.nodes.len());
            for n in &report.nodes {
                let tags =
                    [n.notary.then_some("notary"), n.revoked.then_some("REVOKED")].into_iter().flatten().collect::<Vec<_>>().join(", ");
                println!("  {:<44} {:<22} v{}  {}", n.name, n.addresses.join(" "), n.platform_version, tags);
            }
        }
        Ok(())
    })
}
