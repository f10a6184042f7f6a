//! `treaty node run`, `treaty node shutdown` and `treaty node ping`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use treaty_core::X500Name;
use treaty_net::map::MapCache;
use treaty_net::messaging::{MessageId, MessageStore, OutboundMessage};
use treaty_node::config::NodeConfig;
use treaty_node::node;
use treaty_storage::Database;

/// Logs go to standard error; `RUST_LOG` overrides the default (info for Treaty, warnings
/// for dependencies).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,treaty_node=info,treaty_net=info,treaty_netmap=info,treaty_finance=info")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn stop_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// Runs a node until Ctrl-C or SIGTERM.
pub fn run(config: &Path) -> Result<()> {
    init_logging();
    let config = NodeConfig::load(config)?;
    runtime()?.block_on(async {
        let node = node::start_with(&config, treaty_finance::register).await?;
        println!(
            "treaty node {} ready in {} ms (p2p {}, network map {})",
            node.name,
            node.started_in.as_millis(),
            config.p2p,
            config.raw.network_map.url
        );
        // SIGTERM, Ctrl-C and an RPC client's Shutdown all take the same path.
        tokio::select! {
            signal = stop_signal() => signal?,
            () = node.stop_requested() => println!("treaty node {} stopping: an RPC client asked for it", config.legal_name),
        }
        node.shutdown().await;
        println!("treaty node {} stopped", config.legal_name);
        Ok(())
    })
}

/// Asks the node in `dir` to stop over RPC; with `drain`, once its running flows have finished
/// (waiting at most `timeout`). Returns once the node has stopped answering.
pub fn shutdown(dir: &Path, drain: bool, timeout: Duration, json: bool) -> Result<()> {
    let config = NodeConfig::load(&dir.join("node.toml"))?;
    runtime()?.block_on(async {
        let mut client = crate::client::connect(dir).await?;
        let request = treaty_rpc::v1::ShutdownRequest { drain, timeout_seconds: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX) };
        if drain && !json {
            eprintln!("draining {}: new flows are refused; waiting up to {}s for running ones", config.legal_name, timeout.as_secs());
        }
        let status = client.shutdown(request).await.map_err(crate::client::rpc)?.into_inner();
        drop(client);
        // The node finishes its answer, then closes its RPC port as it exits.
        let mut stopped = false;
        if status.stopping {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if tokio::net::TcpStream::connect(config.rpc).await.is_err() {
                    stopped = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if json {
            let doc = serde_json::json!({
                "node": config.legal_name.to_string(),
                "stopping": status.stopping,
                "stopped": stopped,
                "running_flows": status.running_flows,
                "draining": status.draining,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else if stopped {
            println!("treaty node {} stopped", config.legal_name);
        } else if status.stopping {
            println!("treaty node {} is stopping", config.legal_name);
        }
        if !status.stopping {
            bail!(
                "{} flow(s) still running on {} after {}s; it has not stopped and stays draining (refusing new flows). \
                 Run again with a longer --timeout, or without --drain to stop now (flows resume from their journals at the next start)",
                status.running_flows,
                config.legal_name,
                timeout.as_secs()
            );
        }
        if !stopped {
            bail!("{} said it was stopping but its RPC port {} still accepts connections after 15s", config.legal_name, config.rpc);
        }
        Ok(())
    })
}

/// Opens the database of the node in `dir`.
pub async fn open(dir: &Path) -> Result<(treaty_node::config::LoadedConfig, Database)> {
    let path = dir.join("node.toml");
    let config = NodeConfig::load(&path)?;
    let db = Database::open(&config.raw.database.url, &config.dir).await.with_context(|| format!("database of {}", dir.display()))?;
    Ok((config, db))
}

#[derive(Serialize)]
struct PingReport {
    from: String,
    to: String,
    sent: usize,
    delivered: usize,
    elapsed_ms: u128,
    ids: Vec<String>,
}

/// Puts `count` pings for `to` in the outbox of the node in `dir` and waits until the running
/// node has delivered them (the receiver acknowledged storing them).
pub fn ping(dir: &Path, to: &str, count: usize, timeout: Duration, json: bool) -> Result<()> {
    let to: X500Name = to.parse().with_context(|| format!("--to {to:?} is not a valid legal name"))?;
    if count == 0 {
        bail!("--count must be at least 1");
    }
    runtime()?.block_on(async {
        let (config, db) = open(dir).await?;
        let known = db.network_map().load().await?.map(|s| s.node_infos.len()).unwrap_or(0);
        let ids: Vec<MessageId> = (0..count).map(|_| MessageId::random()).collect();
        let messages = ids
            .iter()
            .enumerate()
            .map(|(i, id)| OutboundMessage {
                id: *id,
                destination: to.clone(),
                session: rand::random(),
                topic: node::PING.into(),
                payload: (i as u64).to_be_bytes().to_vec(),
                attempts: 0,
            })
            .collect();
        let began = Instant::now();
        let store = db.messages();
        store.enqueue(messages).await?;
        let mut waiting = count;
        while began.elapsed() < timeout {
            let pending = store.outbox(&to, usize::MAX).await?;
            waiting = pending.iter().filter(|m| ids.contains(&m.id)).count();
            if waiting == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = PingReport {
            from: config.legal_name.to_string(),
            to: to.to_string(),
            sent: count,
            delivered: count - waiting,
            elapsed_ms: began.elapsed().as_millis(),
            ids: ids.iter().map(ToString::to_string).collect(),
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{} of {} ping(s) from {} delivered to {} in {} ms", report.delivered, count, report.from, to, report.elapsed_ms);
        }
        if waiting > 0 {
            bail!(
                "{waiting} ping(s) still in the outbox after {timeout:?} ({known} node(s) on this node's map); they stay there and are \
                 delivered when {} is running and {to} is reachable",
                config.legal_name
            );
        }
        Ok(())
    })
}
