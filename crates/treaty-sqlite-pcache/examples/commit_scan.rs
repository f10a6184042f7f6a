//! Small write transactions on a database whose pages fill the cache, as a node's writer runs
//! them, with and without the wrapped page cache (each mode in a process of its own, since the
//! page cache is chosen once per process):
//!
//!     cargo run --release -p treaty-sqlite-pcache --example commit_scan -- wrapped
//!     cargo run --release -p treaty-sqlite-pcache --example commit_scan -- sqlite
//!
//! Each transaction inserts 20 rows under random keys and deletes 5, so B-tree pages split and
//! reuse freed pages; it prints transactions per second and CPU time per transaction.

use std::time::Instant;

use rusqlite::{Connection, params};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "wrapped" => treaty_sqlite_pcache::install().expect("installed before the first connection"),
        "sqlite" => {}
        _ => {
            eprintln!("usage: commit_scan wrapped|sqlite");
            std::process::exit(2);
        }
    }
    let dir = std::env::temp_dir().join(format!("treaty-commit-scan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let conn = Connection::open(dir.join("scan.db")).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; PRAGMA cache_size = -65536; \
         CREATE TABLE t (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
    )
    .expect("schema");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // About 48 MiB of rows: 12,000 pages, all in the 64 MiB cache.
    let mut keys: Vec<[u8; 16]> = Vec::new();
    conn.execute_batch("BEGIN").expect("begin");
    for _ in 0..200_000 {
        let k: [u8; 16] = [next().to_le_bytes(), next().to_le_bytes()].concat().try_into().expect("16 bytes");
        conn.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", params![k, vec![7u8; 200]]).expect("insert");
        keys.push(k);
    }
    conn.execute_batch("COMMIT").expect("commit");
    let transactions = 5_000;
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..transactions {
        conn.execute_batch("BEGIN").expect("begin");
        for _ in 0..20 {
            let k: [u8; 16] = [next().to_le_bytes(), next().to_le_bytes()].concat().try_into().expect("16 bytes");
            conn.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", params![k, vec![7u8; 200]]).expect("insert");
            keys.push(k);
        }
        for _ in 0..5 {
            let k = keys.swap_remove((next() % keys.len() as u64) as usize);
            conn.execute("DELETE FROM t WHERE k = ?1", params![k]).expect("delete");
        }
        conn.execute_batch("COMMIT").expect("commit");
    }
    let (wall, cpu) = (wall.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).expect("page count");
    println!(
        "{mode}: {:.0} transactions/s, {:.1} µs CPU each ({pages} pages; {} swaps through the temporary key, {} truncations skipped)",
        transactions as f64 / wall,
        cpu * 1e6 / transactions as f64,
        treaty_sqlite_pcache::temporary_key_swaps(),
        treaty_sqlite_pcache::skipped_truncations(),
    );
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
}

/// This process's user and system CPU time so far, in seconds (Linux: /proc/self/stat).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the ")".
    (ticks(11) + ticks(12)) / 100.0
}
