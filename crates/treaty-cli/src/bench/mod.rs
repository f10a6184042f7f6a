//! `treaty bench`: the system measured as users run it, each figure printed with this
//! machine's baselines from the same run. `flows` runs its nodes as `treaty node run`
//! processes driven over RPC ([`procs`]; `--in-process` keeps them in this process);
//! `messaging` and `resolve` run two nodes in this process; `notary` ([`notary`]) runs notary
//! processes of their own.

pub mod notary;
mod procs;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use treaty_core::{KeyPair, SecureHash, SignatureScheme};
use treaty_flows::Ledger;
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

impl std::fmt::Display for Baseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "baseline on this machine: {:.0} Ed25519 sign+verify/s, {:.0} durable SQLite commits/s",
            self.ed25519_sign_verify_per_sec, self.sqlite_commits_per_sec
        )
    }
}

fn baseline_ed25519() -> Result<f64> {
    let key = KeyPair::from_seed(SignatureScheme::Ed25519, [7; 32])?;
    let public = key.public();
    let n = 2000;
    let began = Instant::now();
    for i in 0..n {
        let msg = (i as u64).to_be_bytes();
        let sig = key.sign(&msg);
        public.verify_uncached(&msg, &sig)?;
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

/// Stops the nodes and the map of [`local_network`].
fn stop(map_task: MapTask, nodes: Vec<node::RunningNode>) {
    map_task.abort();
    for n in nodes {
        n.stop();
    }
}

/// Prints a benchmark's report: one JSON document, or its line and the machine's baseline.
fn emit<R: Serialize>(json: bool, report: &R, baseline: &dyn std::fmt::Display, line: &str) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{line}");
        println!("{baseline}");
    }
    Ok(())
}

/// The network map server's task.
pub(crate) type MapTask = tokio::task::JoinHandle<Result<(), treaty_netmap::NetmapError>>;

/// Bootstraps the benchmarks' network in `scratch` — Alice, Bob and a non-validating notary —
/// and serves its map from this process.
async fn bootstrap_with_map(scratch: &std::path::Path) -> Result<(bootstrap::Created, MapTask)> {
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
    Ok((created, tokio::spawn(map_server.serve(listener, std::future::pending()))))
}

/// Runs `count` rounds, `concurrency` at a time: each round is the flows `round` names, one
/// after the other, each run to its end by `run` (flow name, JSON arguments). Returns each
/// round's latency in milliseconds.
async fn rounds<R, F>(count: usize, concurrency: usize, round: Round, run: R) -> Result<Vec<f64>>
where
    R: Fn(usize, &'static str, String) -> F + Clone + Send + 'static,
    F: Future<Output = Result<()>> + Send,
{
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (next, round, run) = (next.clone(), round.clone(), run.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let t = Instant::now();
                for (flow, args) in round() {
                    run(w, flow, args).await?;
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

/// The flows of one benchmark round, with their JSON arguments.
pub(crate) type Round = std::sync::Arc<dyn Fn() -> Vec<(&'static str, String)> + Send + Sync>;

/// A fresh network — Alice, Bob and a (non-validating) notary, every node running the finance
/// flows — and its map, all in this process; returns when every node knows every other's
/// address. `nodes` are Alice, Bob, the notary.
pub(crate) async fn local_network(scratch: &std::path::Path) -> Result<(MapTask, Vec<node::RunningNode>)> {
    let (created, map_task) = bootstrap_with_map(scratch).await?;
    let mut nodes = Vec::new();
    for n in &created.nodes {
        let mut config = NodeConfig::load(&std::path::Path::new(&n.dir).join("node.toml"))?;
        config.poll_interval = Duration::from_millis(200);
        nodes.push(node::start_with(&config, treaty_finance::register).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for a in &nodes {
        for b in &nodes {
            while a.name != b.name && a.view.borrow().addresses(&b.name).is_none() {
                if Instant::now() > deadline {
                    bail!("{} did not learn {}'s address from the network map", a.name, b.name);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok((map_task, nodes))
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
        let (map_task, nodes) = local_network(&scratch).await?;
        let (alice, bob) = (&nodes[0], &nodes[1]);
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
        stop(map_task, nodes);
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
    let line = format!(
        "{} durable messages of {} bytes, Alice → Bob over mutual TLS, SQLite both ends: {:.2} s, {:.0} messages/s",
        report.messages, report.payload_bytes, report.seconds, report.messages_per_sec
    );
    emit(json, &report, &report.baseline, &line)
}

#[derive(Serialize)]
struct FlowsReport {
    scenario: &'static str,
    /// "processes" (each node a `treaty node run`, flows over RPC) or "in-process".
    nodes: &'static str,
    flows: usize,
    concurrency: usize,
    seconds: f64,
    flows_per_sec: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    /// Rounds run one at a time before the clock started, and how long they took: a fresh
    /// network's one-time costs, outside every other figure.
    warmup_flows: usize,
    warmup_seconds: f64,
    baseline: Baseline,
}

/// `treaty bench flows`: `count` rounds of `scenario` (pingpong: Echo flows from Alice to Bob,
/// a session, a message each way, both sides' journals and statuses in SQLite; issue; pay),
/// `concurrency` at a time, after `warmup` rounds run one at a time and timed apart.
pub fn flows(scenario: &str, count: usize, concurrency: usize, warmup: usize, in_process: bool, json: bool) -> Result<()> {
    let scenario: &'static str = match scenario {
        "pingpong" => "pingpong",
        "issue" => "issue",
        "pay" => "pay",
        other => bail!("unknown scenario {other:?}: pingpong, issue or pay"),
    };
    if count == 0 || concurrency == 0 {
        bail!("--count and --concurrency must be at least 1");
    }
    // Retries and other warnings go to stderr, so a slow run says why.
    crate::node::init_logging();
    let scratch = std::env::temp_dir().join(format!("treaty-bench-flows-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let bob = "O=Bob, L=Paris, C=FR".to_string();
    // The flows of one round, with their JSON arguments.
    let round: Round = {
        let bob = bob.clone();
        std::sync::Arc::new(move || match scenario {
            "pingpong" => vec![(node::ECHO, serde_json::json!({"to": bob, "message": "ping"}).to_string())],
            "issue" => vec![(treaty_finance::CASH_ISSUE, serde_json::json!({"amount": "1.00 USD"}).to_string())],
            // One flow per round, as Corda's issue+pay benchmark runs (`CashIssueAndPaymentFlow`).
            _ => vec![(treaty_finance::CASH_ISSUE_AND_PAYMENT, serde_json::json!({"amount": "1.00 USD", "recipient": bob}).to_string())],
        })
    };
    let result: Result<FlowsReport> = runtime()?.block_on(async {
        let (latencies, seconds, warmup_seconds, sqlite) = if in_process {
            // The nodes share this process's cache of signatures known to verify, so Bob would
            // find Alice's signatures in it: off, every node checks what it receives, as node
            // processes do (and what a node checks of its own signatures is checked too).
            treaty_core::crypto::set_signature_cache(false);
            let (map_task, nodes) = local_network(&scratch).await?;
            let sqlite = baseline_sqlite(&scratch).await?;
            let engine = &nodes[0].flows;
            let timed = warm_then_time(warmup, count, concurrency, round, |n, c, r| in_process_rounds(engine, n, c, r)).await;
            stop(map_task, nodes);
            let (latencies, seconds, warmup_seconds) = timed?;
            (latencies, seconds, warmup_seconds, sqlite)
        } else {
            let network = procs::start(&scratch).await?;
            let alice = network.dir(0);
            let timed = warm_then_time(warmup, count, concurrency, round, |n, c, r| procs::drive(alice, n, c, r)).await;
            network.stop().await;
            let (latencies, seconds, warmup_seconds) = timed?;
            // Measured with the nodes gone, so they take nothing from it.
            (latencies, seconds, warmup_seconds, baseline_sqlite(&scratch).await?)
        };
        let mut latencies = latencies;
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
        Ok(FlowsReport {
            scenario,
            nodes: if in_process { "in-process" } else { "processes" },
            flows: count,
            concurrency,
            seconds,
            flows_per_sec: count as f64 / seconds,
            latency_ms_p50: pct(0.5),
            latency_ms_p99: pct(0.99),
            warmup_flows: warmup,
            warmup_seconds,
            baseline: Baseline { ed25519_sign_verify_per_sec: baseline_ed25519()?, sqlite_commits_per_sec: sqlite },
        })
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    let what = match scenario {
        "pingpong" => "ping-pong flows Alice → Bob, durable at both ends",
        "issue" => "CashIssue flows on Alice (build, sign, record, vault)",
        _ => "issue+pay rounds (CashIssueAndPayment: an issue on Alice, then a payment to Bob through the notary)",
    };
    let how = if in_process { "nodes in this process, flows started on the engine" } else { "node processes, flows started over RPC" };
    let line = format!(
        "{} {what} ({} at a time; {how}): {:.2} s, {:.0}/s, latency p50 {:.1} ms, p99 {:.1} ms (after {} warm-up round(s) in {:.2} s)",
        report.flows,
        report.concurrency,
        report.seconds,
        report.flows_per_sec,
        report.latency_ms_p50,
        report.latency_ms_p99,
        report.warmup_flows,
        report.warmup_seconds
    );
    emit(json, &report, &report.baseline, &line)
}

/// Runs `warmup` rounds one at a time, then `count` rounds `concurrency` at a time, each with
/// `drive` (rounds, concurrency, round): the timed rounds' latencies, their seconds and the
/// warm-up's seconds.
async fn warm_then_time<D, F>(warmup: usize, count: usize, concurrency: usize, round: Round, drive: D) -> Result<(Vec<f64>, f64, f64)>
where
    D: Fn(usize, usize, Round) -> F,
    F: Future<Output = Result<Vec<f64>>>,
{
    let warm = Instant::now();
    drive(warmup, 1, round.clone()).await.context("a warm-up round failed")?;
    let warmup_seconds = warm.elapsed().as_secs_f64();
    let began = Instant::now();
    let latencies = drive(count, concurrency, round).await?;
    Ok((latencies, began.elapsed().as_secs_f64(), warmup_seconds))
}

/// The rounds on Alice's flow engine in this process: each flow started and waited for
/// directly.
async fn in_process_rounds(engine: &treaty_flows::FlowEngine, count: usize, concurrency: usize, round: Round) -> Result<Vec<f64>> {
    let engine = engine.clone();
    rounds(count, concurrency, round, move |_, flow: &'static str, args: String| {
        let engine = engine.clone();
        async move {
            let args: serde_json::Value = serde_json::from_str(&args)?;
            let id = engine.start(flow, args, None).await?;
            let done = engine.wait(id).await?;
            if done.status != treaty_flows::FlowStatus::Completed {
                bail!("{flow} flow {id} ended {}: {:?}", done.status.as_str(), done.error);
            }
            Ok(())
        }
    })
    .await
}

#[derive(Serialize)]
struct ResolveReport {
    scenario: &'static str,
    transactions: usize,
    seconds: f64,
    transactions_per_sec: f64,
    /// Messages Bob's side received (the transaction, then one batch per request).
    batches_received: usize,
    baseline: Baseline,
}

/// `treaty bench resolve`: Alice holds a chain of `length` token transactions (the test
/// contracts' `test.Token`, each signed by its owner and a notary); Bob holds none. The clock
/// runs from starting `SendTransaction` on Alice until it completes: Bob has downloaded the
/// back-chain breadth first, verified every transaction (signatures, and the contract in the
/// wasm sandbox) in dependency order, and recorded them all in SQLite.
pub fn resolve(length: usize, json: bool) -> Result<()> {
    if length < 2 {
        bail!("--length must be at least 2 (an issue and a move)");
    }
    let scratch = std::env::temp_dir().join(format!("treaty-bench-resolve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let result: Result<ResolveReport> = runtime()?.block_on(async {
        // Signed in this process, but for Bob (in it too) the chain's signatures are someone
        // else's: they stay out of the cache of signatures known to verify.
        treaty_core::crypto::set_signature_cache(false);
        let chain = treaty_testkit::token_chain(length - 1, rand::random()).map_err(anyhow::Error::msg)?;
        treaty_core::crypto::set_signature_cache(true);
        let (map_task, nodes) = local_network(&scratch).await?;
        let ledger = &nodes[0].ledger;
        let attachment = ledger.check_attachment(&chain.attachment).map_err(anyhow::Error::msg)?;
        ledger.record(&[attachment], &chain.transactions).await?;
        let sqlite = baseline_sqlite(&scratch).await?;
        let args = serde_json::json!({ "transaction": chain.tip().id().to_string(), "to": nodes[1].name.to_string() });
        let began = Instant::now();
        let id = nodes[0].flows.start(node::SEND_TRANSACTION, args, None).await?;
        let done = nodes[0].flows.wait(id).await?;
        let seconds = began.elapsed().as_secs_f64();
        if done.status != treaty_flows::FlowStatus::Completed {
            bail!("SendTransaction ended {}: {}", done.status.as_str(), done.error.unwrap_or_default());
        }
        let recorded = nodes[1].db.transactions().count().await?;
        if recorded != length as u64 {
            bail!("Bob recorded {recorded} transactions, expected {length}");
        }
        let bob_flow = nodes[1].flows.list().await?.first().map(|f| f.id).context("Bob ran no responder")?;
        let batches_received =
            nodes[1].flows.journal(bob_flow).await?.iter().filter(|e| matches!(e, treaty_flows::Entry::Received { .. })).count();
        stop(map_task, nodes);
        Ok(ResolveReport {
            scenario: "resolve",
            transactions: length,
            seconds,
            transactions_per_sec: length as f64 / seconds,
            batches_received,
            baseline: Baseline { ed25519_sign_verify_per_sec: baseline_ed25519()?, sqlite_commits_per_sec: sqlite },
        })
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    let line = format!(
        "back-chain of {} transactions resolved, verified (wasm contracts) and recorded by Bob in {:.2} s: {:.0} tx/s, {} messages received",
        report.transactions, report.seconds, report.transactions_per_sec, report.batches_received
    );
    emit(json, &report, &report.baseline, &line)
}
