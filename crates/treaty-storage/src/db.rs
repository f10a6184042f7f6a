//! Opening the database, the two backends, and write transactions.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Postgres, Sqlite, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::{Context, StorageError};
use crate::migrate::{LEDGER_MIGRATIONS, MESSAGING_MIGRATIONS, NETWORK_MAP_MIGRATIONS};
use crate::writer::SqliteWriter;

/// SQLite's pool, this process's writer lock and its group commit ([`Database::sqlite_group`]).
pub type SqliteGroup<'a> = (&'a SqlitePool, &'a Arc<Mutex<()>>, &'a Arc<GroupCommit>);

/// How long a SQLite connection waits for another process's write lock before failing.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections in a SQLite pool: WAL lets readers run beside the one writer.
const SQLITE_MAX_CONNECTIONS: u32 = 4;

/// Connections in a PostgreSQL pool.
const POSTGRES_MAX_CONNECTIONS: u32 = 10;

/// The backend and its connection pool.
#[derive(Debug)]
pub(crate) enum Backend {
    /// SQLite. Writers in this process take `writer` first, so they queue here instead of
    /// polling SQLite's lock; `BEGIN IMMEDIATE` and the busy timeout cover other processes.
    Sqlite { pool: SqlitePool, writer: Arc<Mutex<()>>, group: Arc<GroupCommit>, jobs: Option<Arc<SqliteWriter>> },
    /// PostgreSQL.
    Postgres { pool: PgPool },
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    /// The URL, password redacted, for messages.
    url: String,
}

/// The node database: a cheap handle (clone freely) on a connection pool to SQLite or
/// PostgreSQL, with every migration Treaty-storage knows applied.
#[derive(Clone, Debug)]
pub struct Database {
    inner: Arc<Inner>,
}

/// Which backend a [`Database`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A borrowed connection pool, for components that write their own queries.
#[derive(Clone, Copy, Debug)]
pub enum Pool<'a> {
    /// SQLite pool. Write through [`Database::begin_write`], never by a transaction of your own.
    Sqlite(&'a SqlitePool),
    /// PostgreSQL pool.
    Postgres(&'a PgPool),
}

/// A write transaction from [`Database::begin_write`]: rolled back if dropped uncommitted.
#[derive(Debug)]
pub enum WriteTransaction {
    /// A SQLite `BEGIN IMMEDIATE` transaction, holding this process's writer lock.
    Sqlite {
        /// The transaction.
        tx: Transaction<'static, Sqlite>,
        /// The writer lock, released after the transaction ends (declared after `tx` so it
        /// drops after it).
        guard: OwnedMutexGuard<()>,
    },
    /// A PostgreSQL transaction (READ COMMITTED).
    Postgres {
        /// The transaction.
        tx: Transaction<'static, Postgres>,
    },
}

impl WriteTransaction {
    /// Commits; durable when it returns Ok.
    pub async fn commit(self) -> Result<(), StorageError> {
        match self {
            WriteTransaction::Sqlite { tx, guard } => {
                let result = tx.commit().await.ctx("committing a transaction");
                drop(guard);
                result
            }
            WriteTransaction::Postgres { tx } => tx.commit().await.ctx("committing a transaction"),
        }
    }
}

/// Runs `$body` once per backend with `$pool` bound to that backend's pool (the body is
/// compiled twice, once per database type).
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db.backend() {
            $crate::db::Backend::Sqlite { pool: $pool, .. } => $body,
            $crate::db::Backend::Postgres { pool: $pool } => $body,
        }
    };
}

/// Runs `$body` in a write transaction bound to `$tx` (use `&mut *$tx` as the executor) and
/// commits it; an early return through `?` rolls it back.
macro_rules! write_tx {
    ($db:expr, $what:expr, $tx:ident => $body:expr) => {
        match $db.backend() {
            $crate::db::Backend::Sqlite { pool, writer, group, .. } => {
                let mut write = group.begin(pool, writer).await?;
                let result: Result<_, $crate::error::StorageError> = async {
                    let $tx: &mut sqlx::SqliteConnection = write.conn()?;
                    Ok($body)
                }
                .await;
                let finished = write.finish(result.is_ok()).await;
                let out = result?;
                finished.map_err(|e| $crate::error::StorageError::GroupCommit(format!("{} ({e})", $what)))?;
                out
            }
            $crate::db::Backend::Postgres { pool } => {
                let mut pgtx = pool.begin().await.ctx("beginning a write transaction")?;
                let out = {
                    let $tx: &mut sqlx::PgConnection = &mut *pgtx;
                    $body
                };
                pgtx.commit().await.map_err(|e| $crate::error::StorageError::query(format!("committing ({})", $what), e))?;
                out
            }
        }
    };
}

pub(crate) use {with_pool, write_tx};

/// Hides the password of `scheme://user:password@host/...`.
pub(crate) fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _password)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

impl Database {
    /// Opens (creating if needed) the database at `url` and applies every migration of the
    /// ledger, messaging and network-map components.
    ///
    /// - `sqlite://PATH`: a SQLite file; a relative PATH is relative to `base_dir`
    ///   (`sqlite:///abs/path` for an absolute one). The file and its parent directories are
    ///   created.
    /// - `sqlite::memory:`: a private in-memory SQLite database (tests).
    /// - `postgres://user@host:port/dbname` (or `postgresql://`): a PostgreSQL database.
    pub async fn open(url: &str, base_dir: &Path) -> Result<Database, StorageError> {
        // Before this process's first SQLite connection: SQLite's page cache without the scan
        // of the whole cache that commits after a B-tree split make (crate treaty-sqlite-pcache).
        if let Err(e) = treaty_sqlite_pcache::install() {
            tracing::debug!(reason = %e, "SQLite keeps its own page cache");
        }
        let shown = redact(url);
        let invalid = |reason: &str| StorageError::InvalidUrl { url: shown.clone(), reason: reason.to_string() };
        let backend = if url == "sqlite::memory:" {
            let options = SqliteConnectOptions::new().in_memory(true).foreign_keys(true);
            // One connection that never closes: each in-memory connection is its own database.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await
                .map_err(|source| StorageError::Connect { url: shown.clone(), source })?;
            // No writer thread: its connection would be another, empty in-memory database.
            Backend::Sqlite { pool, writer: Arc::new(Mutex::new(())), group: Arc::default(), jobs: None }
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid("no file path after sqlite:// (expected sqlite://PATH, e.g. sqlite://node.db)"));
            }
            if path.contains('?') {
                return Err(invalid("query parameters are not supported in sqlite:// URLs (Treaty sets the SQLite options itself)"));
            }
            let file: PathBuf = if Path::new(path).is_absolute() { PathBuf::from(path) } else { base_dir.join(path) };
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
                    url: shown.clone(),
                    dir: dir.display().to_string(),
                    source,
                })?;
            }
            let options = SqliteConnectOptions::new()
                .filename(&file)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
                // 64 MiB page cache per connection (default 2 MiB): the inbox's dedup index
                // grows forever with random UUID keys, and misses dominate `receive`.
                .pragma("cache_size", "-65536");
            // Switching a fresh file to WAL takes a lock the busy handler does not wait for, so
            // two processes opening the same new database at once can see "database is
            // locked" here: retry that for a while instead of failing.
            let mut attempt = 0u32;
            let pool = loop {
                let opened = SqlitePoolOptions::new()
                    .max_connections(SQLITE_MAX_CONNECTIONS)
                    .acquire_timeout(Duration::from_secs(60))
                    .connect_with(options.clone())
                    .await;
                match opened {
                    Ok(pool) => break pool,
                    Err(sqlx::Error::Database(e)) if attempt < 100 && (e.message().contains("locked") || e.message().contains("busy")) => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(20 + 5 * u64::from(attempt))).await;
                    }
                    Err(source) => return Err(StorageError::Connect { url: format!("{shown} (file {})", file.display()), source }),
                }
            };
            Backend::Sqlite { pool, writer: Arc::new(Mutex::new(())), group: Arc::default(), jobs: None }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(|e| invalid(&format!("not a valid PostgreSQL URL: {e}")))?;
            // One direct attempt first: the pool would retry an unreachable server until its
            // acquire timeout; this reports it at once.
            let probe = options.connect().await.map_err(|source| StorageError::Connect { url: shown.clone(), source })?;
            probe.close().await.map_err(|source| StorageError::Connect { url: shown.clone(), source })?;
            let pool = PgPoolOptions::new()
                .max_connections(POSTGRES_MAX_CONNECTIONS)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .map_err(|source| StorageError::Connect { url: shown.clone(), source })?;
            Backend::Postgres { pool }
        } else {
            let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
            return Err(invalid(&format!(
                "unsupported scheme {scheme:?}: expected sqlite://PATH, sqlite::memory: or postgres://user@host:port/database"
            )));
        };
        let mut backend = backend;
        let file =
            url.strip_prefix("sqlite://").map(|path| if Path::new(path).is_absolute() { PathBuf::from(path) } else { base_dir.join(path) });
        if let (Backend::Sqlite { writer, jobs, .. }, Some(file)) = (&mut backend, file) {
            // Created (and switched to WAL) by the pool above; the writer thread opens it too.
            *jobs = Some(Arc::new(SqliteWriter::start(&file, writer.clone())?));
        }
        let db = Database { inner: Arc::new(Inner { backend, url: shown }) };
        for migrations in [&LEDGER_MIGRATIONS, &MESSAGING_MIGRATIONS, &NETWORK_MAP_MIGRATIONS] {
            db.migrate(migrations).await?;
        }
        Ok(db)
    }

    /// SQLite's group commit, for other crates' stores (see [`GroupCommit`]); `None` on
    /// PostgreSQL, whose server groups concurrent commits itself.
    pub fn sqlite_group(&self) -> Option<SqliteGroup<'_>> {
        match self.backend() {
            Backend::Sqlite { pool, writer, group, .. } => Some((pool, writer, group)),
            Backend::Postgres { .. } => None,
        }
    }

    /// The SQLite writer thread (see [`SqliteWriter`]), for the node's hot writes; `None` on
    /// PostgreSQL and for an in-memory SQLite database.
    pub fn sqlite_writer(&self) -> Option<&SqliteWriter> {
        match self.backend() {
            Backend::Sqlite { jobs, .. } => jobs.as_deref(),
            Backend::Postgres { .. } => None,
        }
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// The URL it was opened with (password redacted).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self.backend() {
            Backend::Sqlite { .. } => BackendKind::Sqlite,
            Backend::Postgres { .. } => BackendKind::Postgres,
        }
    }

    /// The connection pool, for components that run their own queries (reads directly; writes
    /// through [`Database::begin_write`]).
    pub fn pool(&self) -> Pool<'_> {
        match self.backend() {
            Backend::Sqlite { pool, .. } => Pool::Sqlite(pool),
            Backend::Postgres { pool } => Pool::Postgres(pool),
        }
    }

    /// Begins a write transaction. On SQLite this first waits for this process's writer lock,
    /// then runs `BEGIN IMMEDIATE` (which takes SQLite's write lock at once, waiting up to
    /// [`SQLITE_BUSY_TIMEOUT`] for other processes), so concurrent writers queue instead of
    /// failing with SQLITE_BUSY halfway through.
    pub async fn begin_write(&self) -> Result<WriteTransaction, StorageError> {
        match self.backend() {
            Backend::Sqlite { pool, writer, .. } => {
                let guard = writer.clone().lock_owned().await;
                let tx = pool.begin_with("BEGIN IMMEDIATE").await.ctx("beginning a write transaction (BEGIN IMMEDIATE)")?;
                Ok(WriteTransaction::Sqlite { tx, guard })
            }
            Backend::Postgres { pool } => Ok(WriteTransaction::Postgres { tx: pool.begin().await.ctx("beginning a write transaction")? }),
        }
    }

    /// Closes every connection (waiting for those in use). Other clones become unusable.
    pub async fn close(&self) {
        match self.backend() {
            Backend::Sqlite { pool, jobs, .. } => {
                if let Some(jobs) = jobs {
                    jobs.close().await;
                }
                pool.close().await
            }
            Backend::Postgres { pool } => pool.close().await,
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Most rows bound in one multi-row statement.
const MAX_CHUNK: usize = 128;

/// Splits `items` into chunks of [`MAX_CHUNK`] and then powers of two, so multi-row statements
/// come in at most eight shapes per kind and their prepared statements are reused from the
/// connection's statement cache.
pub(crate) fn chunks<T>(mut items: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    while !items.is_empty() {
        let n = if items.len() >= MAX_CHUNK { MAX_CHUNK } else { 1 << items.len().ilog2() };
        let (head, tail) = items.split_at(n);
        out.push(head);
        items = tail;
    }
    out
}

/// `prefix (tuple),(tuple),... suffix` with `rows` tuples of `binds` placeholders (numbered
/// `$1`, `$2`, ... across the statement), each followed by the `literals` (e.g. `"0"`).
pub(crate) fn multi_row_sql(prefix: &str, binds: usize, literals: &[&str], rows: usize, suffix: &str) -> String {
    let mut sql = String::with_capacity(prefix.len() + suffix.len() + rows * (binds * 5 + 8));
    sql.push_str(prefix);
    let mut n = 0;
    for row in 0..rows {
        sql.push_str(if row == 0 { " (" } else { ", (" });
        for col in 0..binds {
            n += 1;
            if col > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&n.to_string());
        }
        for lit in literals {
            sql.push_str(", ");
            sql.push_str(lit);
        }
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(suffix);
    sql
}

/// `prefix ($1, $2, ..., $n) suffix` (for `IN` lists), placeholders starting at `$first`.
pub(crate) fn in_list_sql(prefix: &str, first: usize, n: usize, suffix: &str) -> String {
    let list: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
    format!("{prefix} ({}) {suffix}", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_have_few_shapes() {
        let items: Vec<u32> = (0..300).collect();
        let sizes: Vec<usize> = chunks(&items).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![128, 128, 32, 8, 4]);
        assert!(chunks::<u32>(&[]).is_empty());
    }

    #[test]
    fn sql_builders() {
        assert_eq!(
            multi_row_sql("INSERT INTO t (a, b, c) VALUES", 2, &["0"], 2, ""),
            "INSERT INTO t (a, b, c) VALUES ($1, $2, 0), ($3, $4, 0) "
        );
        assert_eq!(in_list_sql("DELETE FROM t WHERE id IN", 2, 3, ""), "DELETE FROM t WHERE id IN ($2, $3, $4) ");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}

/// Group commit for SQLite. Writers of this process run their statements, each inside its own
/// savepoint, in one shared transaction; the first of them to finish commits it for all, so
/// concurrent writers share one fsync instead of queueing for their own. A writer returns only
/// after the transaction holding its statements has committed (or with the commit's error).
/// A writer whose statements fail rolls back to its savepoint and fails alone.
#[derive(Debug, Default)]
pub struct GroupCommit {
    state: Mutex<GroupState>,
    committed: std::sync::Mutex<Committed>,
    notify: tokio::sync::Notify,
}

/// The shared transaction of a [`GroupCommit`].
#[derive(Debug, Default)]
pub(crate) struct GroupState {
    /// The open shared transaction and the process writer lock it holds.
    open: Option<(Transaction<'static, Sqlite>, OwnedMutexGuard<()>)>,
    /// A writer is inside its savepoint. Still set when the next writer (or the committer)
    /// comes, the writer was cancelled half-way: its statements are rolled back first.
    in_body: bool,
    /// The epoch of the open (or next) transaction.
    epoch: u64,
}

#[derive(Debug, Default)]
struct Committed {
    /// Every epoch below this one has been committed (or failed).
    below: u64,
    /// Recent failed commits: epoch → error.
    failed: std::collections::VecDeque<(u64, String)>,
}

impl GroupCommit {
    /// Starts one writer's part: joins the open shared transaction (opening one if needed)
    /// and opens the writer's savepoint. Run the statements on [`GroupWrite::conn`], then call
    /// [`GroupWrite::finish`].
    pub async fn begin(self: &Arc<Self>, pool: &SqlitePool, writer: &Arc<Mutex<()>>) -> Result<GroupWrite<'_>, StorageError> {
        let (state, epoch) = self.join(pool, writer).await?;
        // Armed from here: cancelled even before its savepoint, the writer leaves the shared
        // transaction to be committed (see `Drop`).
        let mut write = GroupWrite { state: Some(state), epoch, group: self.clone(), savepoint: true };
        sqlx::query("SAVEPOINT treaty_write").execute(write.conn()?).await.ctx("SAVEPOINT")?;
        if let Some(state) = write.state.as_mut() {
            state.in_body = true;
        }
        Ok(write)
    }

    /// [`GroupCommit::begin`] for a writer of exactly one statement: no savepoint, since
    /// SQLite undoes a failed statement by itself and leaves the shared transaction as it
    /// was. Saves two round trips to the connection's thread per write.
    pub async fn begin_statement(self: &Arc<Self>, pool: &SqlitePool, writer: &Arc<Mutex<()>>) -> Result<GroupWrite<'_>, StorageError> {
        let (state, epoch) = self.join(pool, writer).await?;
        Ok(GroupWrite { state: Some(state), epoch, group: self.clone(), savepoint: false })
    }

    /// Joins the open transaction (opening one if needed). Returns the locked state, whose
    /// `open` transaction the caller runs its statements on, and the epoch it joined.
    async fn join(
        &self,
        pool: &SqlitePool,
        writer: &Arc<Mutex<()>>,
    ) -> Result<(tokio::sync::MutexGuard<'_, GroupState>, u64), StorageError> {
        let mut state = self.state.lock().await;
        Self::undo_cancelled(&mut state).await?;
        if state.open.is_none() {
            let guard = writer.clone().lock_owned().await;
            let tx = pool.begin_with("BEGIN IMMEDIATE").await.ctx("beginning a write transaction (BEGIN IMMEDIATE)")?;
            state.open = Some((tx, guard));
        }
        let epoch = state.epoch;
        Ok((state, epoch))
    }

    /// Rolls back the savepoint of a writer that was cancelled inside it.
    async fn undo_cancelled(state: &mut GroupState) -> Result<(), StorageError> {
        if state.in_body {
            if let Some((tx, _)) = state.open.as_mut() {
                sqlx::query("ROLLBACK TO treaty_write").execute(&mut **tx).await.ctx("rolling back a cancelled write")?;
                sqlx::query("RELEASE treaty_write").execute(&mut **tx).await.ctx("rolling back a cancelled write")?;
            }
            state.in_body = false;
        }
        Ok(())
    }

    /// Waits until the transaction of `epoch` has committed, committing it if nobody has yet.
    async fn commit(&self, epoch: u64) -> Result<(), StorageError> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let c = self.committed.lock().unwrap_or_else(|p| p.into_inner());
                if c.below > epoch {
                    return match c.failed.iter().find(|(e, _)| *e == epoch) {
                        Some((_, error)) => Err(StorageError::GroupCommit(error.clone())),
                        None => Ok(()),
                    };
                }
            }
            let mut state = self.state.lock().await;
            if state.epoch == epoch {
                Self::undo_cancelled(&mut state).await?;
            }
            if state.epoch == epoch
                && let Some((tx, guard)) = state.open.take()
            {
                state.epoch += 1;
                drop(state);
                let result = tx.commit().await.map_err(|e| e.to_string());
                drop(guard);
                let mut c = self.committed.lock().unwrap_or_else(|p| p.into_inner());
                c.below = epoch + 1;
                if let Err(error) = &result {
                    c.failed.push_back((epoch, error.clone()));
                    if c.failed.len() > 64 {
                        c.failed.pop_front();
                    }
                }
                drop(c);
                self.notify.notify_waiters();
                return result.map_err(StorageError::GroupCommit);
            }
            drop(state);
            notified.await;
        }
    }
}

/// One writer's part of a [`GroupCommit`] transaction, its savepoint open. Holding it keeps
/// other writers of this process waiting, so run the statements and finish.
pub struct GroupWrite<'a> {
    /// `None` once finished.
    state: Option<tokio::sync::MutexGuard<'a, GroupState>>,
    epoch: u64,
    group: Arc<GroupCommit>,
    /// Inside a savepoint of its own (else a single statement: see
    /// [`GroupCommit::begin_statement`]).
    savepoint: bool,
}

impl GroupWrite<'_> {
    /// The connection to run this writer's statements on.
    pub fn conn(&mut self) -> Result<&mut sqlx::SqliteConnection, StorageError> {
        match self.state.as_mut().and_then(|s| s.open.as_mut()) {
            Some((tx, _)) => Ok(&mut **tx),
            None => Err(StorageError::GroupCommit("no open transaction".into())),
        }
    }

    /// Keeps (`keep`) or undoes this writer's statements, then waits until the shared
    /// transaction has committed. The commit runs in a task of its own, so a caller cancelled
    /// while it waits cannot leave the transaction open.
    pub async fn finish(mut self, keep: bool) -> Result<(), StorageError> {
        let Some(mut state) = self.state.take() else { return Err(StorageError::GroupCommit("finished twice".into())) };
        let released = match state.open.as_mut() {
            Some(_) if !self.savepoint => Ok(()),
            Some((tx, _)) if keep => sqlx::query("RELEASE treaty_write").execute(&mut **tx).await.ctx("RELEASE").map(|_| ()),
            Some((tx, _)) => {
                // Only this writer's statements are undone; the others commit.
                let undone = sqlx::query("ROLLBACK TO treaty_write").execute(&mut **tx).await.ctx("ROLLBACK TO");
                undone.and(sqlx::query("RELEASE treaty_write").execute(&mut **tx).await.ctx("RELEASE")).map(|_| ())
            }
            None => Err(StorageError::GroupCommit("no open transaction".into())),
        };
        // If the savepoint could not be closed, the next writer (or the committer) undoes it.
        if released.is_ok() {
            state.in_body = false;
        }
        drop(state);
        let (group, epoch) = (self.group.clone(), self.epoch);
        let committed = tokio::spawn(async move { group.commit(epoch).await }).await;
        released?;
        committed.map_err(|e| StorageError::GroupCommit(e.to_string()))?
    }
}

impl Drop for GroupWrite<'_> {
    /// A writer dropped before [`GroupWrite::finish`] (its task cancelled or aborted, or an
    /// error returned halfway) leaves the shared transaction open, holding SQLite's write lock
    /// until another writer of this process comes and commits it — never, if the node was
    /// stopped. So a task of its own commits it now (undoing the dropped writer's statements
    /// first), as any writer finishing would.
    fn drop(&mut self) {
        let Some(state) = self.state.take() else { return };
        drop(state);
        let (group, epoch) = (self.group.clone(), self.epoch);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // A failed commit is recorded for the epoch's other writers, who wait for it.
            runtime.spawn(async move {
                let _ = group.commit(epoch).await;
            });
        }
    }
}
