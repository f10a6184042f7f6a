//! Measures streaming a large vault: records N states (default 1,000,000) of a cash-like
//! fungible state, then streams them all with [`Vault::stream`] and reports time and peak
//! resident memory (`VmHWM` from `/proc/self/status`, reset after recording through
//! `/proc/self/clear_refs`, so the streaming peak is its own).
//!
//! ```sh
//! cargo run --release -p treaty-vault --example vault_stream -- [--states N] [--page N] \
//!     [--url sqlite://PATH | postgres://...] [--sort "recorded_at desc"]
//! ```
//!
//! Without `--url` it uses a SQLite file in a temporary directory, removed afterwards.
//! `--sqlite-cache-mib N` sets SQLite's page cache of every pooled connection to N MiB before
//! streaming (treaty-storage sets 64 MiB per connection, four connections): with a small cache
//! the peak shows the stream's own memory rather than the database's cache filling up.

mod common;

use std::time::Instant;

use common::{Cash, Error, Setup, arg};
use treaty_core::{Amount, AttachmentConstraint, PrivacySalt, StateRef, Timestamp, TransactionBuilder, TransactionState};
use treaty_vault::{Criteria, Sort};

/// A line of `/proc/self/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or_else(|| "unknown".into())
}

const OUTPUTS_PER_TX: u64 = 1000;
const TXS_PER_BATCH: u64 = 10;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let states: u64 = arg(&args, "--states").map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    let page: u32 = arg(&args, "--page").map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let sort = match arg(&args, "--sort") {
        Some(spec) => Sort::parse(&spec)?,
        None => Sort::recording_order(),
    };
    let setup = Setup::open("treaty-vault-stream", &args).await?;
    let (db, vault, alice, notary, usd) = (&setup.db, &setup.vault, &setup.alice, &setup.notary, &setup.usd);
    let ours = setup.ours();

    // Record.
    let started = Instant::now();
    let mut recorded = 0u64;
    let mut tx_number = 0u64;
    while recorded < states {
        let mut batch = Vec::new();
        for _ in 0..TXS_PER_BATCH {
            if recorded >= states {
                break;
            }
            let n = OUTPUTS_PER_TX.min(states - recorded);
            let mut b = TransactionBuilder::new(Some(notary.clone()));
            for i in 0..n {
                let cash = Cash { amount: Amount::new(recorded + i + 1, usd.clone()), owner: alice.clone().into() };
                b = b.output(TransactionState::new(&cash, "example.CashContract", notary.clone(), AttachmentConstraint::AlwaysAccept));
            }
            tx_number += 1;
            let mut salt = [0xA5u8; 32];
            salt[..8].copy_from_slice(&tx_number.to_le_bytes());
            batch.push(b.build(PrivacySalt(salt))?);
            recorded += n;
        }
        let refs: Vec<_> = batch.iter().collect();
        vault.apply(&refs, &ours, Timestamp::from_secs(tx_number as i64)).await?;
    }
    let record_secs = started.elapsed().as_secs_f64();
    println!(
        "recorded {states} states in {record_secs:.1} s ({:.0} states/s) on {}; peak RSS so far {}",
        states as f64 / record_secs,
        db.url(),
        mib(status_kib("VmHWM:"))
    );

    if let (Some(mib), treaty_storage::Pool::Sqlite(pool)) = (arg(&args, "--sqlite-cache-mib"), db.pool()) {
        let kib: i64 = mib.parse::<i64>()? * 1024;
        // Hold every connection at once so each gets the setting.
        let mut held = Vec::new();
        for _ in 0..pool.size().max(4) {
            let mut conn = pool.acquire().await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA cache_size = -{kib}"))).execute(&mut *conn).await?;
            held.push(conn);
        }
        println!("SQLite page cache set to {mib} MiB on {} connections", held.len());
    }

    // Reset the peak so the streaming peak is measured alone.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = status_kib("VmRSS:");
    let started = Instant::now();
    let mut stream = vault.stream(Criteria::unconsumed(), sort.clone(), page)?;
    let mut count = 0u64;
    let mut last: Option<StateRef> = None;
    let mut quantity_sum: u128 = 0;
    while let Some(s) = stream.next().await? {
        count += 1;
        if sort == Sort::recording_order()
            && let Some(prev) = last
            && prev.txhash == s.state_ref.txhash
            && prev.index + 1 != s.state_ref.index
        {
            return Err(format!("out of order: {prev} then {}", s.state_ref).into());
        }
        let cash: Cash = s.state.data.unpack()?;
        quantity_sum += u128::from(cash.amount.quantity);
        last = Some(s.state_ref);
    }
    let stream_secs = started.elapsed().as_secs_f64();
    let expected_sum = u128::from(states) * (u128::from(states) + 1) / 2;
    if count != states || quantity_sum != expected_sum {
        return Err(format!("streamed {count} states summing to {quantity_sum}, expected {states} summing to {expected_sum}").into());
    }
    println!(
        "streamed {count} states ({sort:?}, pages of {page}) in {stream_secs:.1} s ({:.0} states/s), each exactly once",
        count as f64 / stream_secs
    );
    println!(
        "RSS before streaming {}, peak RSS while streaming {} ({}), RSS after {}",
        mib(rss_before),
        mib(status_kib("VmHWM:")),
        if reset { "peak reset before streaming" } else { "peak NOT reset: includes recording" },
        mib(status_kib("VmRSS:"))
    );
    let balances = vault.balances(&Criteria::unconsumed()).await?;
    println!("balance: {:?}", balances.iter().map(|b| (b.token.as_str(), b.quantity, b.states)).collect::<Vec<_>>());
    setup.close().await;
    Ok(())
}
