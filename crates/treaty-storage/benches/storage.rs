//! Criterion benchmarks of the SQLite node database (WAL, synchronous=FULL: every commit is
//! fsynced): the message store's batch operations and single-row commits.
//!
//! Run: `cargo bench -p treaty-storage --bench storage`. PostgreSQL too when
//! `TREATY_BENCH_POSTGRES_URL` is set (a database of its own: the benchmark creates its tables there).
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use treaty_core::{SecureHash, X500Name};
use treaty_net::messaging::{InboundMessage, MessageId, MessageStore, OutboundMessage};
use treaty_storage::Database;

const BATCH: usize = 1_000;

fn peer() -> X500Name {
    "O=Bob,L=London,C=GB".parse().unwrap()
}

fn outbound(n: usize) -> Vec<OutboundMessage> {
    (0..n)
        .map(|i| OutboundMessage {
            id: MessageId::random(),
            destination: peer(),
            session: i as u64 % 16,
            topic: "bench".into(),
            payload: vec![7; 256],
            attempts: 0,
        })
        .collect()
}

fn inbound(n: usize) -> Vec<InboundMessage> {
    (0..n)
        .map(|i| InboundMessage {
            id: MessageId::random(),
            sender: peer(),
            session: i as u64 % 16,
            topic: "bench".into(),
            payload: vec![7; 256],
        })
        .collect()
}

fn bench_backend(c: &mut Criterion, label: &str, url: &str, dir: &std::path::Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let db = rt.block_on(Database::open(url, dir)).unwrap();
    let store = db.messages();

    let mut g = c.benchmark_group(format!("{label} messages"));
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.bench_function("enqueue + attempted + acknowledged, 1000-message batch (3 commits)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let batch = outbound(BATCH);
                let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
                store.enqueue(batch).await.unwrap();
                store.attempted(&ids).await.unwrap();
                store.acknowledged(&ids).await.unwrap();
            })
        })
    });
    g.bench_function("receive + processed, 1000-message batch (2 commits)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let batch = inbound(BATCH);
                let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
                let new = store.receive(batch).await.unwrap();
                assert_eq!(new.len(), BATCH);
                store.processed(&ids).await.unwrap();
            })
        })
    });
    g.bench_function("receive only, 1000-message batch (1 commit)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let batch = inbound(BATCH);
                    let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
                    let start = std::time::Instant::now();
                    store.receive(batch).await.unwrap();
                    spent += start.elapsed();
                    store.processed(&ids).await.unwrap();
                }
                spent
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group(format!("{label} commits"));
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    let mut n: u64 = 0;
    g.bench_function("single-row commit (transactions.put)", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(db.transactions().put(&SecureHash::sha256(&n.to_le_bytes()), black_box(&[1u8; 512]))).unwrap()
        })
    });
    g.finish();
    rt.block_on(db.close());
}

fn bench_storage(c: &mut Criterion) {
    let dir: PathBuf = std::env::temp_dir().join(format!("treaty-storage-bench-{}", std::process::id()));
    bench_backend(c, "sqlite", "sqlite://bench.db", &dir);
    let _ = std::fs::remove_dir_all(&dir);
    if let Ok(url) = std::env::var("TREATY_BENCH_POSTGRES_URL") {
        bench_backend(c, "postgres", &url, &dir);
    }
}

criterion_group!(benches, bench_storage);
criterion_main!(benches);
