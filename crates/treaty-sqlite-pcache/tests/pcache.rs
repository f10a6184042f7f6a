//! The wrapped page cache under the work that triggers it (B-tree splits reusing freed pages,
//! so rebalancing swaps page numbers) and the work that needs real truncations (rollbacks of
//! a growing database): the data read back and SQLite's integrity check must be right.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rusqlite::{Connection, params};

fn scratch(name: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pcache-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tests run one at a time: they read the process's counters.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A writer configured as the node's: WAL, a 64 MiB cache, 4 KiB pages.
fn open(dir: &std::path::Path) -> Connection {
    open_with(dir, "WAL")
}

fn open_with(dir: &std::path::Path, journal: &str) -> Connection {
    assert_eq!(treaty_sqlite_pcache::install(), Ok(()));
    let conn = Connection::open(dir.join("test.db")).unwrap();
    conn.execute_batch(&format!("PRAGMA journal_mode = {journal}; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -65536;")).unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;").unwrap();
    conn
}

/// A deterministic stream of pseudo-random numbers (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn key(&mut self) -> Vec<u8> {
        let mut k = self.next().to_le_bytes().to_vec();
        k.extend_from_slice(&self.next().to_le_bytes());
        k
    }
}

fn check(conn: &Connection, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    let mut stmt = conn.prepare("SELECT k, v FROM t ORDER BY k").unwrap();
    let rows: BTreeMap<Vec<u8>, Vec<u8>> = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(rows.len(), model.len());
    assert!(rows == *model, "the table differs from what was written");
}

#[test]
fn random_inserts_and_deletes_read_back_exactly_and_skip_the_truncations_after_swaps() {
    let _serial = serial();
    let dir = scratch("random");
    let mut conn = open(&dir);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut model = BTreeMap::new();
    let (swaps, skipped) = (treaty_sqlite_pcache::temporary_key_swaps(), treaty_sqlite_pcache::skipped_truncations());
    // Commits of a few hundred random-key rows each, a third of the old rows deleted now and
    // then: splits that reuse freed pages, out of order, as a node's indexes see them.
    for round in 0..60 {
        let tx = conn.transaction().unwrap();
        for _ in 0..300 {
            let (k, v) = (rng.key(), rng.key().repeat(1 + (rng.next() % 12) as usize));
            tx.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", params![k, v]).unwrap();
            model.insert(k, v);
        }
        if round % 5 == 4 {
            let doomed: Vec<Vec<u8>> = model.keys().filter(|_| rng.next().is_multiple_of(3)).cloned().collect();
            for k in doomed {
                tx.execute("DELETE FROM t WHERE k = ?1", params![k]).unwrap();
                model.remove(&k);
            }
        }
        tx.commit().unwrap();
    }
    assert!(treaty_sqlite_pcache::temporary_key_swaps() > swaps, "the workload never swapped pages: it tests nothing");
    assert!(treaty_sqlite_pcache::skipped_truncations() > skipped);
    check(&conn, &model);
    // A fresh connection (an empty cache) reads the same from the file.
    drop(conn);
    check(&open(&dir), &model);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The memory the connection's page cache holds now, in bytes.
fn cache_used(conn: &Connection) -> i32 {
    let (mut now, mut high) = (0, 0);
    // SAFETY: `handle` is the connection's live handle, used on this thread only, and the two
    // pointers are to locals alive for the call.
    let rc = unsafe { rusqlite::ffi::sqlite3_db_status(conn.handle(), rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED, &mut now, &mut high, 0) };
    assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
    now
}

#[test]
fn pages_beyond_a_rolled_back_growth_are_dropped_from_the_cache() {
    let _serial = serial();
    for journal in ["WAL", "DELETE"] {
        let dir = scratch(&format!("rollback-{journal}"));
        let mut conn = open_with(&dir, journal);
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let mut model = BTreeMap::new();
        for round in 0..20 {
            // The database grows by about 100 pages, then the growth is undone: a whole
            // transaction rolled back, and a savepoint inside a committed one. The pages past
            // the database's end must leave the cache (SQLite truncates it to the database's
            // size), not stay there holding memory.
            let before = cache_used(&conn);
            {
                let tx = conn.transaction().unwrap();
                for _ in 0..400 {
                    tx.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", params![rng.key(), vec![round as u8; 900]]).unwrap();
                }
                tx.rollback().unwrap();
            }
            assert!(cache_used(&conn) < before + 16 * 4096, "{journal}: a rolled-back transaction's pages stayed in the cache");
            let mut tx = conn.transaction().unwrap();
            {
                let mut sp = tx.savepoint().unwrap();
                for _ in 0..400 {
                    sp.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", params![rng.key(), vec![0xeeu8; 900]]).unwrap();
                }
                sp.rollback().unwrap();
            }
            for _ in 0..50 {
                let (k, v) = (rng.key(), vec![round as u8; 300]);
                tx.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", params![k, v]).unwrap();
                model.insert(k, v);
            }
            tx.commit().unwrap();
            // Only pages inside the database may stay: each costs its 4 KiB and a header.
            let pages: i32 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
            let used = cache_used(&conn);
            assert!(
                used <= (pages + 8) * 4700,
                "{journal}: a rolled-back savepoint's pages stayed in the cache ({used} bytes for {pages} pages)"
            );
            check(&conn, &model);
        }
        drop(conn);
        check(&open_with(&dir, journal), &model);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn two_connections_writing_in_turn_each_read_the_others_changes() {
    let _serial = serial();
    let dir = scratch("two");
    let (a, b) = (open(&dir), open(&dir));
    let mut rng = Rng(0xfeed_f00d_dead_beef);
    let mut model = BTreeMap::new();
    // Each write by one connection must empty the other's cache of the pages it changed
    // (SQLite truncates the whole cache when it sees the database changed).
    for round in 0..40 {
        let conn = if round % 2 == 0 { &a } else { &b };
        conn.execute_batch("BEGIN").unwrap();
        for _ in 0..100 {
            let (k, v) = (rng.key(), vec![round as u8; 200]);
            conn.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", params![k, v]).unwrap();
            model.insert(k, v);
        }
        let doomed: Vec<Vec<u8>> = model.keys().filter(|_| rng.next().is_multiple_of(4)).cloned().collect();
        for k in doomed {
            conn.execute("DELETE FROM t WHERE k = ?1", params![k]).unwrap();
            model.remove(&k);
        }
        conn.execute_batch("COMMIT").unwrap();
        check(&a, &model);
        check(&b, &model);
    }
    drop((a, b));
    std::fs::remove_dir_all(&dir).unwrap();
}
