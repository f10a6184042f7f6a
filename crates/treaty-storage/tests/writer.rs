//! The SQLite writer thread: jobs commit durably and together, a failing job is undone alone,
//! sqlx readers see what jobs wrote, and a closed database refuses jobs.

use treaty_storage::writer::{rusqlite, sqlite_error};
use treaty_storage::{Database, StorageError};

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("treaty-writer-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn table(db: &Database) {
    let w = db.sqlite_writer().expect("a file database has a writer thread");
    w.write("creating t", |c: &rusqlite::Connection| {
        c.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)").map_err(|e| sqlite_error("creating t", e))
    })
    .await
    .unwrap();
}

async fn insert(db: &Database, k: i64, v: &str) -> Result<usize, StorageError> {
    let v = v.to_string();
    db.sqlite_writer()
        .unwrap()
        .write("inserting into t", move |c: &rusqlite::Connection| {
            c.prepare_cached("INSERT INTO t (k, v) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(rusqlite::params![k, v]))
                .map_err(|e| sqlite_error("inserting into t", e))
        })
        .await
}

async fn rows(db: &Database) -> Vec<(i64, String)> {
    let treaty_storage::Pool::Sqlite(pool) = db.pool() else { panic!("sqlite") };
    sqlx::query_as("SELECT k, v FROM t ORDER BY k").fetch_all(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_commit_and_a_failing_one_is_undone_alone() {
    let dir = scratch("jobs");
    let db = Database::open("sqlite://node.db", &dir).await.unwrap();
    table(&db).await;
    // 200 writers at once, every fifth one violating the primary key after inserting a row of
    // its own: its own row is undone with it, the others' rows stay.
    insert(&db, 0, "taken").await.unwrap();
    let mut tasks = Vec::new();
    for i in 1..=200i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let bad = i % 5 == 0;
            db.sqlite_writer()
                .unwrap()
                .write("a two-statement job", move |c: &rusqlite::Connection| {
                    c.execute("INSERT INTO t (k, v) VALUES (?1, 'mine')", [i]).map_err(|e| sqlite_error("first insert", e))?;
                    let second = if bad { 0 } else { 1000 + i };
                    c.execute("INSERT INTO t (k, v) VALUES (?1, 'second')", [second]).map_err(|e| sqlite_error("second insert", e))
                })
                .await
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            assert!(e.to_string().contains("second insert") && e.to_string().contains("UNIQUE"), "{e}");
            assert!(!e.is_transient(), "a constraint violation is not worth retrying");
            failed += 1;
        }
    }
    assert_eq!(failed, 40);
    let all = rows(&db).await;
    assert_eq!(all.len(), 1 + 160 * 2, "the 160 good jobs' two rows each, and nothing of the 40 bad ones");
    assert!(all.iter().all(|(k, _)| *k == 0 || k % 5 != 0 || *k > 1000), "a failed job's first row was kept");
    // What jobs wrote survives closing and reopening (it was committed before they returned).
    db.close().await;
    let err = insert(&db, 5000, "late").await.unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
    let db = Database::open("sqlite://node.db", &dir).await.unwrap();
    assert_eq!(rows(&db).await.len(), 321);
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sqlx_writers_and_jobs_take_turns() {
    let dir = scratch("turns");
    let db = Database::open("sqlite://node.db", &dir).await.unwrap();
    table(&db).await;
    // A sqlx write transaction holds the process's writer lock: a job waits for it rather
    // than failing with SQLITE_BUSY.
    let tx = db.begin_write().await.unwrap();
    let job = tokio::spawn({
        let db = db.clone();
        async move { insert(&db, 1, "job").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!job.is_finished(), "the job ran while a sqlx transaction held the write lock");
    let treaty_storage::WriteTransaction::Sqlite { mut tx, guard } = tx else { panic!("sqlite") };
    sqlx::query("INSERT INTO t (k, v) VALUES (2, 'sqlx')").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    drop(guard);
    assert_eq!(job.await.unwrap().unwrap(), 1);
    assert_eq!(rows(&db).await, vec![(1, "job".to_string()), (2, "sqlx".to_string())]);
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn memory_databases_have_no_writer_thread() {
    let db = Database::open("sqlite::memory:", std::path::Path::new(".")).await.unwrap();
    assert!(db.sqlite_writer().is_none());
}

/// The writer thread never checkpoints (automatic checkpoints are off on its connection); the
/// checkpoint thread copies the WAL into the database file behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_thread_copies_the_wal_into_the_database_file() {
    let dir = scratch("checkpoint");
    let db = Database::open("sqlite://node.db", &dir).await.unwrap();
    table(&db).await;
    let before = std::fs::metadata(dir.join("node.db")).unwrap().len();
    // About 8 MiB in 2,000 jobs: 2,000 pages, twice SQLite's automatic checkpoint threshold.
    let value = "x".repeat(4000);
    let jobs: Vec<_> = (0..2000)
        .map(|k| {
            let (db, value) = (db.clone(), value.clone());
            tokio::spawn(async move { insert(&db, k, &value).await })
        })
        .collect();
    for job in jobs {
        assert_eq!(job.await.unwrap().unwrap(), 1);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let size = std::fs::metadata(dir.join("node.db")).unwrap().len();
        if size > before + 7 * 1024 * 1024 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the database file stayed at {size} bytes (from {before}): no checkpoint ran");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(rows(&db).await.len(), 2000);
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
