//! Measures durable commits per second of the redb provider: 1-input transactions from 64
//! concurrent callers (override with arguments: `TOTAL CONCURRENCY`). Prints one JSON line,
//! with this machine's baseline measured in the same run: how long a bare redb write
//! transaction of 64 random keys takes to commit durably (the disk's flush latency is what
//! bounds a batch, so compare runs by their ratio to it).
//!
//! cargo run --release -p treaty-notary --example uniqueness_rate [-- 200000 64]

use std::sync::Arc;
use std::time::Instant;

use treaty_core::{SecureHash, StateRef, Timestamp, X500Name};
use treaty_notary::{CommitRequest, RedbUniquenessProvider, UniquenessConfig, UniquenessProvider};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let total: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200_000);
    let concurrency: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let dir = std::env::temp_dir().join(format!("treaty-uniqueness-rate-{}", std::process::id()));
    let provider = Arc::new(RedbUniquenessProvider::open(dir.join("uniqueness.redb"), UniquenessConfig::default()).await?);
    let requester: X500Name = "O=Alice,L=London,C=GB".parse()?;
    let now = Timestamp::from_secs(1_800_000_000);

    let baseline_ms = bare_redb_commit_ms(&dir.join("baseline.redb"))?;

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let (provider, requester) = (provider.clone(), requester.clone());
        tasks.spawn(async move {
            let mut i = worker;
            while i < total {
                let n = i.to_be_bytes();
                let request = CommitRequest {
                    tx_id: SecureHash::sha256_parts(&[b"tx", &n]),
                    inputs: vec![StateRef { txhash: SecureHash::sha256_parts(&[b"issue", &n]), index: 0 }],
                    references: vec![],
                    time_window: None,
                    requester: requester.clone(),
                };
                provider.commit(request, now).await?;
                i += concurrency;
            }
            Ok::<(), treaty_notary::NotaryError>(())
        });
    }
    for result in tasks.join_all().await {
        result?;
    }
    let elapsed = started.elapsed();
    println!(
        "{{\"provider\":\"redb\",\"transactions\":{total},\"inputs\":1,\"concurrency\":{concurrency},\"seconds\":{:.3},\"commits_per_second\":{:.0},\"baseline_bare_redb_commit_of_64_keys_ms\":{baseline_ms:.3}}}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    if let Ok(provider) = Arc::try_unwrap(provider) {
        provider.close().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Average milliseconds of a durable redb commit inserting 64 random keys (200 commits).
fn bare_redb_commit_ms(path: &std::path::Path) -> Result<f64, Box<dyn std::error::Error>> {
    const TABLE: redb::TableDefinition<&[u8; 36], &[u8]> = redb::TableDefinition::new("t");
    let db = redb::Database::create(path)?;
    let started = Instant::now();
    for commit in 0..200u64 {
        let mut tx = db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        {
            let mut table = tx.open_table(TABLE)?;
            for i in 0..64u64 {
                let mut key = [0u8; 36];
                key[..32].copy_from_slice(SecureHash::sha256_parts(&[&commit.to_be_bytes(), &i.to_be_bytes()]).as_bytes());
                table.insert(&key, [7u8; 40].as_slice())?;
            }
        }
        tx.commit()?;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / 200.0)
}
