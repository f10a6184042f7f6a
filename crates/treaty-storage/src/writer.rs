//! SQLite writes as whole jobs on one thread.
//!
//! sqlx runs each SQLite statement on its connection's thread and hands the result back to
//! the caller's task: two or more context switches per statement. For the node's hot writes
//! (a flow's journal, a recorded transaction, the vault) that hand-off, not the fsync and not
//! the CPU, bounded throughput (docs/BENCHMARKS.md, "Cash flows"). A [`SqliteWriter`] owns one
//! connection on a thread of its own and runs *jobs* — closures over the connection — there:
//! a job's statements cost function calls. Jobs queued together share one transaction and
//! one fsync (group commit), each in a savepoint of its own so a failing job is undone alone,
//! and each caller hears back only after the commit that holds its job.
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
    /// Opens `file` (an existing database, already migrated) and starts the thread.
    pub(crate) fn start(file: &Path, writer: Arc<tokio::sync::Mutex<()>>) -> Result<SqliteWriter, StorageError> {
        let shown = file.display().to_string();
        let failed = |e: rusqlite::Error| Failure::of(&format!("opening {shown} for the writer thread"), &e).error();
        let conn = rusqlite::Connection::open(file).map_err(failed)?;
        conn.busy_timeout(crate::db::SQLITE_BUSY_TIMEOUT).map_err(failed)?;
        // The same settings as the pool's connections (db.rs): durable commits, foreign keys.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536;")
            .map_err(failed)?;
        conn.set_prepared_statement_cache_capacity(256);
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("treaty-sqlite-writer".into())
            .spawn(move || run(conn, rx, writer))
            .map_err(|e| StorageError::Writer { reason: format!("starting the writer thread: {e}"), transient: false })?;
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

/// The thread: take what is queued, run it in one transaction, commit, complete, repeat.
fn run(conn: rusqlite::Connection, jobs: mpsc::Receiver<Job>, writer: Arc<tokio::sync::Mutex<()>>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let _lock = writer.blocking_lock();
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let failure = Failure::of("beginning a write transaction (BEGIN IMMEDIATE)", &e);
            for job in batch {
                let (_, complete) = job(Err(&failure));
                complete(Err(failure.clone()));
            }
            continue;
        }
        let mut completions = Vec::with_capacity(batch.len());
        for job in batch {
            if let Err(e) = conn.execute_batch("SAVEPOINT treaty_job") {
                let failure = Failure::of("SAVEPOINT", &e);
                let (_, complete) = job(Err(&failure));
                completions.push((complete, Some(failure)));
                continue;
            }
            let (keep, complete) = job(Ok(&conn));
            let closed = if keep {
                conn.execute_batch("RELEASE treaty_job")
            } else {
                conn.execute_batch("ROLLBACK TO treaty_job; RELEASE treaty_job")
            };
            completions.push((complete, closed.err().map(|e| Failure::of("closing a write's savepoint", &e))));
        }
        let committed = conn.execute_batch("COMMIT").map_err(|e| Failure::of("committing", &e));
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        drop(_lock);
        for (complete, savepoint) in completions {
            complete(match (&committed, savepoint) {
                (Err(failure), _) => Err(failure.clone()),
                (Ok(()), Some(failure)) => Err(failure),
                (Ok(()), None) => Ok(()),
            });
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
    #[test]
    fn placeholders_become_numbered() {
        assert_eq!(super::numbered("SELECT $1, $12 WHERE x = '$' AND y = $3"), "SELECT ?1, ?12 WHERE x = '$' AND y = ?3");
    }
}
