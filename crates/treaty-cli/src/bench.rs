//! `treaty bench messaging`: durable messages per second between two nodes over mutual TLS,
//! each with its own SQLite database, plus this machine's baselines from the same run.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use treaty_core::{KeyPair, SecureHash, SignatureScheme};
use treaty_net::messaging::Outgoing;
use treaty_node::config::NodeConfig;
use treaty_node::node;

use crate::bootstrap;
use crate::node::runtime;

#[derive(Serialize)]
struct Baseline {
    /// Ed25519 sign + verify pairs per second, one core.
    ed25519_sign_verify_per_sec: f64,
    /// Single-row durable SQLite commits per second (WAL, synchronous=FULL).
    sqlite_commits_per_sec: f64,
}

#[derive(Serialize)]
struct MessagingReport {
    scenario: &'static str,
    messages: usize,
    payload_bytes: usize,
    batch: usize,
    seconds: f64,
    messages_per_sec: f64,
    baseline: Baseline,
}

fn baseline_ed25519() -> Result<f64> {
    let key = KeyPair::from_seed(SignatureScheme::Ed25519, [7; 32])?;
    let public = key.public();
    let n = 2000;
    let began = Instant::now();
    for i in 0..n {
        let msg = (i as u64).to_be_bytes();
        let sig = key.sign(&msg);
        public.verify(&msg, &sig)?;
    }
    Ok(n as f64 / began.elapsed().as_secs_f64())
}

async fn baseline_sqlite(dir: &std::path::Path) -> Result<f64> {
    let db = treaty_storage::Database::open("sqlite://baseline.db", dir).await?;
    let n = 300;
    let began = Instant::now();
    for i in 0..n {
        let id = SecureHash::sha256(&(i as u64).to_be_bytes());
        db.transactions().put(&id, &[0u8; 64]).await?;
    }
    Ok(n as f64 / began.elapsed().as_secs_f64())
}

/// Two nodes of a fresh local network in this process, a network map beside them; Alice
/// sends `count` messages to Bob through her durable outbox, in `batch`-sized sends, and the
/// clock stops when Bob has acknowledged storing the last one.
pub fn messaging(count: usize, batch: usize, payload: usize, json: bool) -> Result<()> {
    if count == 0 || batch == 0 {
        bail!("--count and --batch must be at least 1");
    }
    let scratch = std::env::temp_dir().join(format!("treaty-bench-messaging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let result = runtime()?.block_on(async {
        let req = bootstrap::Request {
            dir: scratch.clone(),
            nodes: vec!["O=Alice,L=London,C=GB".into(), "O=Bob,L=Paris,C=FR".into()],
            notaries: vec![],
            validating: false,
            cluster: 1,
        };
        let created = bootstrap::bootstrap(&req)?;
        let map_server = treaty_netmap::MapServer::load(&scratch.join("network"))?;
        let listen = created.network_map.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let map_task = tokio::spawn(map_server.serve(listener, std::future::pending()));
        let mut nodes = Vec::new();
        for n in &created.nodes {
            let mut config = NodeConfig::load(&std::path::Path::new(&n.dir).join("node.toml"))?;
            config.poll_interval = Duration::from_millis(200);
            nodes.push(node::start(&config).await?);
        }
        let (alice, bob) = (&nodes[0], &nodes[1]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while alice.view.borrow().addresses(&bob.name).is_none() {
            if Instant::now() > deadline {
                bail!("Alice did not learn Bob's address from the network map");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let sqlite = baseline_sqlite(&scratch).await?;
        let began = Instant::now();
        let sender = alice.messenger.clone();
        let to = bob.name.clone();
        let producer = tokio::spawn(async move {
            let mut sent = 0;
            while sent < count {
                let n = batch.min(count - sent);
                let msgs = (0..n)
                    .map(|i| Outgoing {
                        destination: to.clone(),
                        session: (sent + i) as u64 % 64,
                        topic: "bench".into(),
                        payload: vec![7; payload],
                    })
                    .collect();
                sender.send(msgs).await?;
                sent += n;
            }
            Ok::<(), anyhow::Error>(())
        });
        while alice.messenger.stats().acknowledged.load(Ordering::Relaxed) < count as u64 {
            if began.elapsed() > Duration::from_secs(600) {
                bail!("not all messages were acknowledged within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let seconds = began.elapsed().as_secs_f64();
        producer.await??;
        map_task.abort();
        for n in nodes {
            n.stop();
        }
        let ed25519 = baseline_ed25519()?;
        Ok(MessagingReport {
            scenario: "messaging",
            messages: count,
            payload_bytes: payload,
            batch,
            seconds,
            messages_per_sec: count as f64 / seconds,
            baseline: Baseline { ed25519_sign_verify_per_sec: ed25519, sqlite_commits_per_sec: sqlite },
        })
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} durable messages of {} bytes, Alice → Bob over mutual TLS, SQLite both ends: {:.2} s, {:.0} messages/s",
            report.messages, report.payload_bytes, report.seconds, report.messages_per_sec
        );
        println!(
            "baseline on this machine: {:.0} Ed25519 sign+verify/s, {:.0} durable SQLite commits/s",
            report.baseline.ed25519_sign_verify_per_sec, report.baseline.sqlite_commits_per_sec
        );
    }
    Ok(())
}
