//! SQLite writes as whole jobs on one thread.
//!
//! sqlx runs each SQLite statement on its connection's thread and hands the result back to
//! the caller's task: two or more context switches per statement. For the node's hot writes
//! (a flow's journal, a recorded transaction, the vault) that hand-off, not the fsync and not
//! the CPU, bounded throughput (docs/BENCHMARKS.md, "Cash flows"). A [`SqliteWriter`] owns one
//! connection on a thread of its own and runs *jobs* — closures over the connection — there:
//! a job's statements cost function calls. Jobs queued together share one transaction and
//! one fsync (group commit), each in a savepoint of its own so a failing job is undone alone,
//! and each caller hears back only after the commit that holds its job is on disk. The fsync
//! runs on a second thread, so the writer runs the next batch while the last one is synced
//! (a pipelined group commit).
//!
//! The thread takes the process's SQLite writer lock (the one [`crate::Database::begin_write`]
//! and the sqlx group commit take) for each transaction, so sqlx writers and jobs never hold
//! SQLite's write lock at once.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::error::StorageError;

pub use rusqlite;

/// Why the writer thread could not begin, close or commit a transaction.
#[derive(Clone, Debug)]
struct Failure {
    reason: String,
    transient: bool,
}

impl Failure {
    fn of(what: &str, e: &rusqlite::Error) -> Failure {
        Failure { reason: format!("{what}: {e}"), transient: is_busy(e) }
    }

    fn error(self) -> StorageError {
        StorageError::Writer { reason: self.reason, transient: self.transient }
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED: another process holds the database; worth retrying.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// What a job's caller is told once the transaction holding the job ended: Ok if committed.
type Completion = Box<dyn FnOnce(Result<(), Failure>) + Send>;

/// A job: run on the connection (or be told why it could not run), say whether its
/// statements are kept, and how to complete the caller.
type Job = Box<dyn FnOnce(Result<&rusqlite::Connection, &Failure>) -> (bool, Completion) + Send>;

/// Most jobs in one transaction.
const MAX_JOBS_PER_COMMIT: usize = 512;

/// One thread that owns a SQLite connection and runs write jobs in group-committed
/// transactions.
#[derive(Debug)]
pub struct SqliteWriter {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl SqliteWriter {
    /// Opens `file` (an existing database, already migrated) and starts the thread, with the
    /// thread that makes its commits durable.
    pub(crate) fn start(file: &Path, writer: Arc<tokio::sync::Mutex<()>>) -> Result<SqliteWriter, StorageError> {
        let shown = file.display().to_string();
        let failed = |e: rusqlite::Error| Failure::of(&format!("opening {shown} for the writer thread"), &e).error();
        let conn = rusqlite::Connection::open(file).map_err(failed)?;
        conn.busy_timeout(crate::db::SQLITE_BUSY_TIMEOUT).map_err(failed)?;
        // WAL and foreign keys as on the pool's connections (db.rs). `synchronous = NORMAL`:
        // a commit writes its frames to the WAL without waiting for the disk; the sync thread
        // then fsyncs the WAL and only after that answers the batch's callers, while this
        // thread already runs the next batch (see `sync`). Checkpoints still sync the WAL
        // before copying it and the database after. Statement and savepoint journals stay in
        // memory: on disk, a large batch's savepoint journal was a temporary file created and
        // deleted per commit. No automatic checkpoints on this connection: the checkpoint
        // thread runs them (see `checkpoints`).
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536; \
             PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0;",
        )
        .map_err(failed)?;
        let checkpointer = rusqlite::Connection::open(file).map_err(failed)?;
        checkpointer.busy_timeout(crate::db::SQLITE_BUSY_TIMEOUT).map_err(failed)?;
        checkpointer.execute_batch("PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 0;").map_err(failed)?;
        conn.set_prepared_statement_cache_capacity(256);
        let mut wal = file.as_os_str().to_owned();
        wal.push("-wal");
        let poisoned: Arc<Mutex<Option<Failure>>> = Arc::default();
        let spawn_failed =
            |e: std::io::Error| StorageError::Writer { reason: format!("starting the writer thread: {e}"), transient: false };
        let (stop_checkpoints, stopped) = mpsc::channel::<()>();
        let checkpoints = std::thread::Builder::new()
            .name("treaty-sqlite-checkpoint".into())
            .spawn(move || checkpoints(checkpointer, stopped))
            .map_err(spawn_failed)?;
        let (done, batches) = mpsc::channel::<Batch>();
        let poison = poisoned.clone();
        let syncer = std::thread::Builder::new()
            .name("treaty-sqlite-sync".into())
            .spawn(move || sync(Path::new(&wal), batches, poison))
            .map_err(spawn_failed)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("treaty-sqlite-writer".into())
            .spawn(move || {
                run(conn, rx, writer, done, poisoned);
                // `done` was dropped by `run`: the sync thread finishes what is queued and ends.
                let _ = syncer.join();
                drop(stop_checkpoints);
                let _ = checkpoints.join();
            })
            .map_err(spawn_failed)?;
        Ok(SqliteWriter { jobs: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) })
    }

    /// Runs `job` on the writer's connection inside a savepoint of the current transaction
    /// and returns its result once that transaction has committed (durably). If the job
    /// fails, its statements are rolled back and the others in the transaction commit.
    /// `what` names the write for errors.
    pub async fn write<T, E, F>(&self, what: &str, job: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
    {
        let what = what.to_string();
        let (tx, rx) = oneshot::channel::<Result<T, E>>();
        let job: Job = Box::new(move |conn| {
            let named = move |failure: Failure| E::from(Failure { reason: format!("{what}: {}", failure.reason), ..failure }.error());
            let outcome = match conn {
                Ok(conn) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn))) {
                    Ok(outcome) => outcome,
                    Err(_) => Err(named(Failure { reason: "the write panicked".into(), transient: false })),
                },
                Err(failure) => Err(named(failure.clone())),
            };
            let keep = outcome.is_ok();
            let complete: Completion = Box::new(move |committed| {
                let result = match (outcome, committed) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Ok(_), Err(failure)) => Err(named(failure)),
                    (Err(e), _) => Err(e),
                };
                let _ = tx.send(result);
            });
            (keep, complete)
        });
        let sent = match self.jobs.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        let gone = |why: &str| E::from(StorageError::Writer { reason: why.to_string(), transient: false });
        if !sent {
            return Err(gone("the database is closed"));
        }
        rx.await.unwrap_or_else(|_| Err(gone("the writer thread stopped")))
    }

    /// Stops the thread after the jobs already queued (waiting for it).
    pub(crate) async fn close(&self) {
        drop(self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// A committed (or failed) batch on its way to the sync thread: each caller's completion with
/// how its job ended in the transaction.
type Batch = Vec<(Completion, Result<(), Failure>)>;

/// Runs a cached statement with no parameters (transaction control).
fn control(conn: &rusqlite::Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// The thread: take what is queued, run it in one transaction, commit, hand the callers to
/// the sync thread, repeat. Committing does not wait for the disk (`synchronous = NORMAL`), so
/// the next batch runs while the previous one is being made durable.
fn run(
    conn: rusqlite::Connection,
    jobs: mpsc::Receiver<Job>,
    writer: Arc<tokio::sync::Mutex<()>>,
    done: mpsc::Sender<Batch>,
    poisoned: Arc<Mutex<Option<Failure>>>,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let refused = poisoned.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _lock = writer.blocking_lock();
        let begun = match refused {
            Some(failure) => Err(failure),
            None => control(&conn, "BEGIN IMMEDIATE").map_err(|e| Failure::of("beginning a write transaction (BEGIN IMMEDIATE)", &e)),
        };
        if let Err(failure) = begun {
            drop(_lock);
            let failed: Batch = batch
                .into_iter()
                .map(|job| {
                    let (_, complete) = job(Err(&failure));
                    (complete, Err(failure.clone()))
                })
                .collect();
            let _ = done.send(failed);
            continue;
        }
        let mut completions = Vec::with_capacity(batch.len());
        for job in batch {
            if let Err(e) = control(&conn, "SAVEPOINT treaty_job") {
                let failure = Failure::of("SAVEPOINT", &e);
                let (_, complete) = job(Err(&failure));
                completions.push((complete, Some(failure)));
                continue;
            }
            let (keep, complete) = job(Ok(&conn));
            let closed =
                if keep { control(&conn, "RELEASE treaty_job") } else { conn.execute_batch("ROLLBACK TO treaty_job; RELEASE treaty_job") };
            completions.push((complete, closed.err().map(|e| Failure::of("closing a write's savepoint", &e))));
        }
        let committed = control(&conn, "COMMIT").map_err(|e| Failure::of("committing", &e));
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        drop(_lock);
        let batch: Batch = completions
            .into_iter()
            .map(|(complete, savepoint)| {
                let outcome = match (&committed, savepoint) {
                    (Err(failure), _) => Err(failure.clone()),
                    (Ok(()), Some(failure)) => Err(failure),
                    (Ok(()), None) => Ok(()),
                };
                (complete, outcome)
            })
            .collect();
        if done.send(batch).is_err() {
            // The sync thread is gone (it cannot be: it ends only after this loop); nobody
            // would hear of later commits, so stop taking jobs.
            return;
        }
    }
}

/// The sync thread: takes every committed batch queued, fsyncs the WAL once for all of them,
/// and only then answers their callers, in commit order. A commit is visible to readers of
/// the database from the moment the writer committed it, but nobody is told it happened (so
/// no flow goes on, no message leaves the node) before it is on disk. If an fsync fails,
/// what the kernel still holds is unknown (a failed fsync may have dropped the dirty pages),
/// so every later write is refused too, naming the failure: the node must be restarted,
/// and recovery then starts from what is really on disk.
fn sync(wal: &Path, batches: mpsc::Receiver<Batch>, poisoned: Arc<Mutex<Option<Failure>>>) {
    let mut file = None;
    while let Ok(first) = batches.recv() {
        let mut pending = first;
        while let Ok(more) = batches.try_recv() {
            pending.extend(more);
        }
        let synced = if pending.iter().any(|(_, outcome)| outcome.is_ok()) {
            let before = poisoned.lock().unwrap_or_else(|p| p.into_inner()).clone();
            match before {
                Some(failure) => Err(failure),
                None => fsync(wal, &mut file).inspect_err(|failure| {
                    tracing::error!("{}; refusing every further write until the node is restarted", failure.reason);
                    *poisoned.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure.clone());
                }),
            }
        } else {
            Ok(())
        };
        for (complete, outcome) in pending {
            complete(match (outcome, &synced) {
                (Ok(()), Ok(())) => Ok(()),
                (Ok(()), Err(failure)) => Err(failure.clone()),
                (Err(failure), _) => Err(failure),
            });
        }
    }
}

/// Makes everything written to the WAL file so far durable. No WAL file means its content was
/// checkpointed into the database and the file removed, which syncs the database first.
///
/// The file stays open in `file` from one sync to the next (opening it each time was 1% of a
/// node's CPU under load). That is safe because SQLite removes a WAL file only when the last
/// connection to its database closes, and the writer's own connection stays open for as long
/// as this thread runs: the file opened is the one SQLite keeps writing (a checkpoint that
/// restarts or truncates the log reuses it).
fn fsync(wal: &Path, file: &mut Option<std::fs::File>) -> Result<(), Failure> {
    let failed = |e: std::io::Error| Failure {
        reason: format!("the database's write-ahead log {} could not be synced to disk: {e}", wal.display()),
        transient: false,
    };
    if file.is_none() {
        match std::fs::File::open(wal) {
            Ok(opened) => *file = Some(opened),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(failed(e)),
        }
    }
    match file {
        Some(f) => f.sync_data().map_err(failed),
        None => Ok(()),
    }
}

/// How often the checkpoint thread copies the WAL into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// WAL frames (pages) past which the checkpoint thread makes the writer wait until the whole
/// WAL is copied and can start over (64 MiB): under a load that never pauses, passive
/// checkpoints alone could let it grow without end.
const RESTART_FRAMES: i64 = 16_384;

/// The checkpoint thread: copies committed WAL frames into the database file on its own
/// connection, so the writer thread never does. SQLite's automatic checkpoint runs inside the
/// commit that crosses 1,000 frames — the writer's — and holds every caller of that batch
/// while it writes the pages back and fsyncs the database file. A passive checkpoint here
/// runs beside the writer (WAL lets one checkpointer and one writer work at once); only past
/// [`RESTART_FRAMES`] does it block the writer for a full one. Ends when `stop` is dropped,
/// after a last passive checkpoint.
fn checkpoints(conn: rusqlite::Connection, stop: mpsc::Receiver<()>) {
    let run = |mode: &str| -> rusqlite::Result<(i64, i64, i64)> {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    };
    loop {
        let last = matches!(stop.recv_timeout(CHECKPOINT_EVERY), Err(mpsc::RecvTimeoutError::Disconnected) | Ok(()));
        match run("PASSIVE") {
            Ok((_, frames, _)) if frames >= RESTART_FRAMES && !last => {
                if let Err(e) = run("RESTART") {
                    tracing::warn!("checkpointing the database (RESTART, {frames} WAL frames) failed: {e}");
                }
            }
            Ok(_) => {}
            Err(e) if is_busy(&e) => {}
            Err(e) => tracing::warn!("checkpointing the database failed: {e}"),
        }
        if last {
            return;
        }
    }
}

/// Converts a rusqlite error into a [`StorageError`] naming `what` was being done.
pub fn sqlite_error(what: &str, e: rusqlite::Error) -> StorageError {
    StorageError::Sqlite { context: what.to_string(), source: e }
}

/// `sql` with PostgreSQL-style placeholders (`$1`, `$2`, …) as SQLite numbered ones (`?1`,
/// `?2`, …), so one statement text serves sqlx and the writer thread, binding by number.
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch whose completions report into `seen`.
    fn batch(seen: &Arc<Mutex<Vec<Result<(), String>>>>, outcomes: &[bool]) -> Batch {
        outcomes
            .iter()
            .map(|&ok| {
                let seen = seen.clone();
                let complete: Completion = Box::new(move |r: Result<(), Failure>| seen.lock().unwrap().push(r.map_err(|f| f.reason)));
                (complete, if ok { Ok(()) } else { Err(Failure { reason: "job failed".into(), transient: false }) })
            })
            .collect()
    }

    #[test]
    fn a_failed_fsync_fails_its_batch_and_refuses_every_later_write() {
        let dir = std::env::temp_dir().join(format!("treaty-writer-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A "WAL" under a regular file: opening it fails with ENOTDIR, as an I/O error would.
        std::fs::write(dir.join("file"), b"x").unwrap();
        let wal = dir.join("file").join("node.db-wal");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let poisoned: Arc<Mutex<Option<Failure>>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        tx.send(batch(&seen, &[true, false])).unwrap();
        drop(tx);
        sync(&wal, rx, poisoned.clone());
        let seen = seen.lock().unwrap().clone();
        assert!(seen[0].as_ref().unwrap_err().contains("could not be synced to disk"), "{seen:?}");
        assert!(seen[0].as_ref().unwrap_err().contains("node.db-wal"), "{seen:?}");
        assert_eq!(seen[1], Err("job failed".to_string()), "a job's own failure is kept");
        assert!(poisoned.lock().unwrap().is_some(), "later writes are refused");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn synced_batches_are_answered_in_commit_order() {
        let dir = std::env::temp_dir().join(format!("treaty-writer-order-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let wal = dir.join("node.db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for n in 0..5 {
            let order = order.clone();
            let complete: Completion = Box::new(move |r: Result<(), Failure>| order.lock().unwrap().push((n, r.is_ok())));
            tx.send(vec![(complete, Ok(()))]).unwrap();
        }
        drop(tx);
        sync(&wal, rx, Arc::default());
        assert_eq!(*order.lock().unwrap(), (0..5).map(|n| (n, true)).collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).unwrap();
    }
    #[test]
    fn placeholders_become_numbered() {
        assert_eq!(super::numbered("SELECT $1, $12 WHERE x = '$' AND y = $3"), "SELECT ?1, ?12 WHERE x = '$' AND y = ?3");
    }
}
