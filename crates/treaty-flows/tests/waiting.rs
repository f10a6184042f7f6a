//! Many flows waiting on messages, on one engine with a SQLite store: the engine keeps at most
//! its cap of them in memory, the process stays small, and a sample of them completes when
//! their messages come. Its own test binary, so the memory it measures is its own.
//!
//! `TREATY_WAITING_FLOWS=N` sets how many flows (default 20,000: about 15 s in a debug build;
//! 100,000 take 85 s there); `TREATY_WAITING_CAP` the engine's cap (default 1,000). The figures
//! for 100,000 flows in docs/BENCHMARKS.md ("Waiting flows") come from
//! `TREATY_WAITING_FLOWS=100000 cargo test --release -p treaty-flows --test waiting -- --nocapture`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use treaty_core::{X500Name, encoding};
use treaty_flows::protocol::{Envelope, FLOW_TOPIC, SessionMessage};
use treaty_flows::*;
use treaty_net::messaging::{InboundMessage, MessageId};
use treaty_storage::Database;

const ALICE: &str = "O=Alice,L=London,C=GB";
const BOB: &str = "O=Bob,L=Paris,C=FR";

/// Counts what flows send; the test plays the counterparty.
#[derive(Default)]
struct Counting {
    sent: AtomicU64,
}

impl Transport for Counting {
    fn send(&self, _: MessageId, _: X500Name, _: u64, _: Vec<u8>) -> Pin<Box<dyn Future<Output = Result<(), FlowError>> + Send + '_>> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
    fn processed(&self, _: Vec<MessageId>) -> Pin<Box<dyn Future<Output = Result<(), FlowError>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
}

/// This process's resident set (kB), from /proc/self/status.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

/// This machine's baseline, as `treaty bench` measures it: single-row durable SQLite commits
/// per second (WAL, synchronous=FULL), on a database of its own.
async fn sqlite_commits_per_sec(dir: &std::path::Path) -> f64 {
    let db = Database::open("sqlite://baseline.db", dir).await.unwrap();
    let n = 300;
    let began = Instant::now();
    for i in 0..n {
        let id = treaty_core::SecureHash::sha256(&(i as u64).to_be_bytes());
        db.transactions().put(&id, &[0u8; 64]).await.unwrap();
    }
    let rate = n as f64 / began.elapsed().as_secs_f64();
    db.close().await;
    rate
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_flows_wait_on_disk_not_in_memory() {
    let n = setting("TREATY_WAITING_FLOWS", 20_000);
    let cap = setting("TREATY_WAITING_CAP", 1_000);
    let batch = 500.min(cap.max(1));
    let sample = 1_000.min(n);

    let dir = std::env::temp_dir().join(format!("treaty-flows-waiting-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let baseline = sqlite_commits_per_sec(&dir).await;
    let db = Database::open("sqlite://node.db", &dir).await.unwrap();
    let store = Arc::new(SqlFlowStore::open(&db).await.unwrap());
    let transport = Arc::new(Counting::default());
    let mut registry = Registry::new();
    // Open a session with Bob and wait for his answer.
    registry.flow("Wait", 1, |ctx: FlowContext, (): ()| async move {
        let bob: X500Name = BOB.parse().map_err(|e| FlowError::Exception(format!("{e}")))?;
        let session = ctx.initiate(&bob).await?;
        ctx.receive::<String>(&session).await
    });
    // Only the cap parks flows here (no idle threshold).
    let options = EngineOptions { evict_after: None, max_in_memory: cap, ..EngineOptions::default() };
    let engine = FlowEngine::new(ALICE.parse().unwrap(), store.clone(), transport.clone(), registry, options);
    engine.resume().await.unwrap();
    let rss_before = rss_kb();

    // The most flows in memory at any moment, sampled.
    let most = Arc::new(AtomicUsize::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (engine, most, sampling) = (engine.clone(), most.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                most.fetch_max(engine.resident(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    // Start them in batches; `start` does not wait for room, so the test waits until the
    // engine is back under its cap before it starts the next batch.
    let began = Instant::now();
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..batch.min(n - ids.len()) {
            let engine = engine.clone();
            starts.spawn(async move { engine.start("Wait", json!(null), None).await.unwrap() });
        }
        while let Some(id) = starts.join_next().await {
            ids.push(id.unwrap());
        }
        // Bounded, so that an engine stuck over its cap fails here, saying so, rather than
        // hanging until the test runner kills it.
        let waited = Instant::now();
        while engine.resident() > cap {
            assert!(
                waited.elapsed() < Duration::from_secs(120),
                "{} flows started, all waiting, yet {} in memory (cap {cap}) and {} parked",
                ids.len(),
                engine.resident(),
                engine.parked()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Every flow has reached its receive: each has journaled its session and sent its Init.
    let waited = Instant::now();
    while transport.sent.load(Ordering::Relaxed) < n as u64 || engine.parked() < n.saturating_sub(cap) {
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "{} of {n} flows opened their session; {} in memory (cap {cap}), {} parked",
            transport.sent.load(Ordering::Relaxed),
            engine.resident(),
            engine.parked()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started_in = began.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    let rss_after = rss_kb();
    let (resident, parked, most) = (engine.resident(), engine.parked(), most.load(Ordering::Relaxed));

    // Answer a sample, spread over all of them: each is brought back and completes.
    let began = Instant::now();
    let step = (n / sample.max(1)).max(1);
    let chosen: Vec<(usize, FlowId)> = ids.iter().copied().enumerate().step_by(step).take(sample).collect();
    for (i, id) in &chosen {
        let Some(Entry::Opened { session, .. }) = engine.journal(*id).await.unwrap().first().cloned() else {
            panic!("flow {id} opened no session");
        };
        let answer = Envelope { to_initiator: true, message: SessionMessage::Data(encoding::encode(&format!("answer {i}"))) };
        let message = InboundMessage {
            id: MessageId::random(),
            sender: BOB.parse().unwrap(),
            session,
            topic: FLOW_TOPIC.into(),
            payload: encoding::encode(&answer),
        };
        engine.deliver(message).await.unwrap();
    }
    for (i, id) in &chosen {
        let r = tokio::time::timeout(Duration::from_secs(60), engine.wait(*id)).await.expect("completed in time").unwrap();
        assert_eq!(r.status, FlowStatus::Completed, "{r:?}");
        assert_eq!(serde_json::from_slice::<String>(r.result.as_deref().unwrap()).unwrap(), format!("answer {i}"));
    }
    let answered_in = began.elapsed();
    let rss_end = rss_kb();

    let grew_kb = rss_after.saturating_sub(rss_before);
    eprintln!(
        "waiting flows: {n} started and waiting in {:.1} s ({:.0}/s); cap {cap}: at most {most} in memory, now {resident} in memory, \
         {parked} parked; RSS {} MiB -> {} MiB (+{} MiB, {} bytes per flow); {} sampled flows answered and completed in {:.2} s \
         (RSS then {} MiB); baseline: {baseline:.0} durable SQLite commits/s",
        started_in.as_secs_f64(),
        n as f64 / started_in.as_secs_f64(),
        rss_before / 1024,
        rss_after / 1024,
        grew_kb / 1024,
        grew_kb * 1024 / n.max(1) as u64,
        chosen.len(),
        answered_in.as_secs_f64(),
        rss_end / 1024,
    );
    assert_eq!(resident + parked, n, "every flow is either in memory or parked");
    assert!(resident <= cap, "{resident} flows in memory, over the cap of {cap}");
    assert!(most <= cap + batch, "{most} flows in memory at once (cap {cap}, batches of {batch})");
    // A waiting flow in memory costs about 6 KiB (debug build: its future, its state, its
    // journal); a parked one its id in the engine's index and its rows in SQLite's page cache,
    // about 0.5 KiB. Allow 8 KiB for each flow the cap keeps, 3 KiB for each parked one and
    // 16 MiB besides: at the default 20,000 flows, keeping them all in memory fails this.
    let bound_kb = (cap.min(n) * 8 + n * 3 + 16 * 1024) as u64;
    assert!(grew_kb < bound_kb, "RSS grew by {grew_kb} kB for {n} waiting flows (bound {bound_kb} kB)");
    engine.shutdown();
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
