//! The PostgreSQL provider: the uniqueness log in two tables, so a notary can sit on a highly
//! available SQL cluster, and several notary processes can share one database.
//!
//! Tables (component `notary`, [`NOTARY_MIGRATIONS`], applied by treaty-storage's migrator):
//! - `treaty_notary_states (state_tx, state_index)` → `consuming_tx`, `input_index`,
//!   `requester` (the X.500 name as text): one row per consumed state;
//! - `treaty_notary_transactions (tx_id)`: one row per committed transaction without inputs
//!   (the others are recorded by their consumed states).
//!
//! Rows are only ever inserted, never updated or deleted.
//!
//! **Batching.** As in the redb provider, one writer task takes every queued request and
//! handles the batch in one SQL transaction (READ COMMITTED):
//! 1. one `SELECT` reads every row the batch's states and transaction ids could touch;
//! 2. the batch is applied, in order, by [`crate::apply`] to an in-memory overlay of those rows;
//! 3. the new rows are inserted with `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT DO
//!    NOTHING` (one statement per table, rows sorted by key), and the transaction commits.
//!
//! **Several processes.** Step 1 can be stale: another notary process may consume a state
//! after this one read it as free. The primary key decides: an insert of a row another
//! transaction has inserted waits for that transaction, and if it committed, the row is
//! skipped. So if the number of rows inserted is short of the number the batch recorded,
//! another process won a state this batch thought free: the transaction is rolled back and the
//! whole batch is applied again from a fresh read (where that state now shows as consumed).
//! A state read as consumed stays consumed (rows are never deleted), so conflicts read in step
//! 1 are never stale. Deadlocks between processes inserting the same keys (rare, as rows are
//! inserted in key order) and serialisation or connection failures are retried the same way,
//! a bounded number of times.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use treaty_core::{SecureHash, StateRef, Timestamp, X500Name};
use treaty_storage::{Database, Migration, Migrations, Pool, StorageError};

use crate::apply::{MemoryState, Rules, UniquenessState, apply_batch};
use crate::batch::{BatchResult, Job, Linger, answer, submit};
use crate::error::NotaryError;
use crate::provider::{CommitFuture, UniquenessConfig, UniquenessProvider};
use crate::request::{CommitRequest, ConsumingTx};

/// The notary component's migrations (PostgreSQL only: SQLite has no list, and the provider
/// refuses a SQLite database).
pub const NOTARY_MIGRATIONS: Migrations = Migrations {
    component: "notary",
    sqlite: &[],
    postgres: &[Migration { version: 1, description: "uniqueness log", sql: include_str!("../migrations/postgres/0001_notary.sql") }],
};

/// How often a batch is applied again after losing a race to another process (or a deadlock,
/// or a transient database failure) before its requests fail with [`NotaryError::Storage`].
pub const MAX_BATCH_ATTEMPTS: u32 = 20;

/// The uniqueness provider over PostgreSQL. Open with [`PostgresUniquenessProvider::open`].
#[derive(Debug)]
pub struct PostgresUniquenessProvider {
    queue: mpsc::Sender<Job>,
    rules: Rules,
    writer: JoinHandle<()>,
}

impl PostgresUniquenessProvider {
    /// Applies the notary migrations to `db` (a PostgreSQL database) and starts the writer.
    /// Fails with [`NotaryError::Open`] for a SQLite database or a failed migration.
    pub async fn open(db: &Database, config: UniquenessConfig) -> Result<PostgresUniquenessProvider, NotaryError> {
        let open_error = |reason: String| NotaryError::Open { location: db.url().to_string(), reason };
        let Pool::Postgres(pool) = db.pool() else {
            return Err(open_error(
                "the PostgreSQL uniqueness provider needs a postgres:// database (for one node on a local disk, use the redb provider)"
                    .into(),
            ));
        };
        db.migrate(&NOTARY_MIGRATIONS).await.map_err(|e| open_error(e.to_string()))?;
        let (queue, jobs) = mpsc::channel(config.queue_capacity.max(1));
        let writer = tokio::spawn(write_loop(pool.clone(), jobs, config.rules, config.max_batch.max(1)));
        Ok(PostgresUniquenessProvider { queue, rules: config.rules, writer })
    }

    /// Stops accepting requests and waits until the writer has answered everything queued.
    pub async fn close(self) {
        let PostgresUniquenessProvider { queue, writer, .. } = self;
        drop(queue);
        let _ = writer.await;
    }
}

impl UniquenessProvider for PostgresUniquenessProvider {
    fn commit(&self, request: CommitRequest, now: Timestamp) -> CommitFuture<'_> {
        Box::pin(submit(&self.queue, &self.rules, request, now))
    }
}

/// The writer task: batch (see [`Linger`]), apply, commit, answer, until the queue closes.
async fn write_loop(pool: PgPool, mut queue: mpsc::Receiver<Job>, rules: Rules, max_batch: usize) {
    let mut jobs = Vec::with_capacity(max_batch);
    let mut linger = Linger::default();
    while queue.recv_many(&mut jobs, max_batch).await > 0 {
        linger.wait_async(&mut queue, &mut jobs, max_batch).await;
        let started = Instant::now();
        let result = commit_batch(&pool, &jobs, &rules).await;
        linger.committed(jobs.len(), started.elapsed());
        if let Err(e) = &result {
            tracing::error!(requests = jobs.len(), error = %e, "uniqueness log batch failed");
        }
        answer(&mut jobs, result);
    }
}

/// Why one attempt at a batch did not commit.
enum Attempt {
    /// Another transaction inserted a state this batch read as free: apply it again.
    LostRace,
    /// A database failure (retried if transient).
    Failed(StorageError),
    /// A row that does not decode.
    Corrupt(String),
}

impl From<StorageError> for Attempt {
    fn from(e: StorageError) -> Attempt {
        Attempt::Failed(e)
    }
}

/// Applies `jobs` in one SQL transaction, again from a fresh read if it loses a race.
async fn commit_batch(pool: &PgPool, jobs: &[Job], rules: &Rules) -> BatchResult {
    let mut last = String::new();
    for attempt in 1..=MAX_BATCH_ATTEMPTS {
        match try_batch(pool, jobs, rules).await {
            Ok(answers) => return Ok(answers),
            Err(Attempt::LostRace) => {
                tracing::debug!(attempt, "uniqueness batch lost a race with another notary process; applying it again");
                last = "another notary process kept consuming the same states".into();
            }
            Err(Attempt::Failed(e)) if e.is_transient() => {
                tracing::warn!(attempt, error = %e, "uniqueness batch hit a transient database failure; retrying");
                last = e.to_string();
                tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
            }
            Err(Attempt::Failed(e)) => return Err(NotaryError::storage("committing a batch of requests", e)),
            Err(Attempt::Corrupt(why)) => return Err(NotaryError::storage("reading treaty_notary_states", format!("corrupt row: {why}"))),
        }
    }
    Err(NotaryError::storage("committing a batch of requests", format!("gave up after {MAX_BATCH_ATTEMPTS} attempts: {last}")))
}

/// The rows read for a batch, plus what the batch adds.
struct Overlay {
    read: MemoryState,
    new_states: Vec<(StateRef, ConsumingTx)>,
    new_txs: Vec<SecureHash>,
}

impl UniquenessState for Overlay {
    type Error = std::convert::Infallible;

    fn consumed_by(&mut self, state: &StateRef) -> Result<Option<ConsumingTx>, Self::Error> {
        self.read.consumed_by(state)
    }
    fn is_committed(&mut self, tx_id: &SecureHash) -> Result<bool, Self::Error> {
        self.read.is_committed(tx_id)
    }
    fn consume(&mut self, state: &StateRef, by: &ConsumingTx) -> Result<(), Self::Error> {
        self.new_states.push((*state, by.clone()));
        self.read.consume(state, by)
    }
    fn record_committed(&mut self, tx_id: &SecureHash) -> Result<(), Self::Error> {
        self.new_txs.push(*tx_id);
        self.read.record_committed(tx_id)
    }
}

const SELECT_STATES: &str = "SELECT s.state_tx, s.state_index, s.consuming_tx, s.input_index, s.requester \
     FROM treaty_notary_states s JOIN UNNEST($1::bytea[], $2::bigint[]) AS w(state_tx, state_index) \
     ON s.state_tx = w.state_tx AND s.state_index = w.state_index";
const SELECT_TXS: &str = "SELECT tx_id FROM treaty_notary_transactions WHERE tx_id = ANY($1::bytea[])";
const INSERT_STATES: &str = "INSERT INTO treaty_notary_states (state_tx, state_index, consuming_tx, input_index, requester) \
     SELECT * FROM UNNEST($1::bytea[], $2::bigint[], $3::bytea[], $4::bigint[], $5::text[]) ON CONFLICT DO NOTHING";
const INSERT_TXS: &str = "INSERT INTO treaty_notary_transactions (tx_id) SELECT * FROM UNNEST($1::bytea[]) ON CONFLICT DO NOTHING";

fn hash_from(bytes: &[u8], what: &str) -> Result<SecureHash, Attempt> {
    <[u8; 32]>::try_from(bytes).map(SecureHash).map_err(|_| Attempt::Corrupt(format!("{what} has {} bytes, not 32", bytes.len())))
}

async fn try_batch(pool: &PgPool, jobs: &[Job], rules: &Rules) -> Result<Vec<Result<(), NotaryError>>, Attempt> {
    let q = |what: &'static str| move |e: sqlx::Error| StorageError::query(what, e);
    let mut tx: Transaction<'static, Postgres> = pool.begin().await.map_err(q("beginning a transaction"))?;

    // 1. Everything the batch could read.
    let states: BTreeSet<StateRef> = jobs.iter().flat_map(|j| j.request.inputs.iter().chain(&j.request.references)).copied().collect();
    let tx_ids: BTreeSet<SecureHash> = jobs.iter().filter(|j| j.request.inputs.is_empty()).map(|j| j.request.tx_id).collect();
    let mut read = MemoryState::default();
    let (state_txs, state_indices): (Vec<Vec<u8>>, Vec<i64>) = states.iter().map(|s| (s.txhash.0.to_vec(), i64::from(s.index))).unzip();
    let rows = sqlx::query(SELECT_STATES)
        .bind(&state_txs)
        .bind(&state_indices)
        .fetch_all(&mut *tx)
        .await
        .map_err(q("reading treaty_notary_states"))?;
    for row in rows {
        let get = q("reading treaty_notary_states");
        let (state_tx, state_index, consuming, input_index, requester): (Vec<u8>, i64, Vec<u8>, i64, String) = (
            row.try_get(0).map_err(get)?,
            row.try_get(1).map_err(get)?,
            row.try_get(2).map_err(get)?,
            row.try_get(3).map_err(get)?,
            row.try_get(4).map_err(get)?,
        );
        let state = StateRef {
            txhash: hash_from(&state_tx, "state_tx")?,
            index: u32::try_from(state_index).map_err(|_| Attempt::Corrupt(format!("state_index {state_index}")))?,
        };
        let by = ConsumingTx {
            tx_id: hash_from(&consuming, "consuming_tx")?,
            input_index: u32::try_from(input_index).map_err(|_| Attempt::Corrupt(format!("state {state}: input_index {input_index}")))?,
            requesting_party: requester
                .parse::<X500Name>()
                .map_err(|e| Attempt::Corrupt(format!("state {state}: requester {requester:?}: {e}")))?,
        };
        read.consumed.insert(state, by);
    }
    if !tx_ids.is_empty() {
        let ids: Vec<Vec<u8>> = tx_ids.iter().map(|t| t.0.to_vec()).collect();
        let rows = sqlx::query(SELECT_TXS).bind(&ids).fetch_all(&mut *tx).await.map_err(q("reading treaty_notary_transactions"))?;
        for row in rows {
            let id: Vec<u8> = row.try_get(0).map_err(q("reading treaty_notary_transactions"))?;
            read.committed.insert(hash_from(&id, "tx_id")?);
        }
    }

    // 2. The rules, on the overlay.
    let mut overlay = Overlay { read, new_states: Vec::new(), new_txs: Vec::new() };
    let Ok(answers) = apply_batch(&mut overlay, jobs.iter().map(|j| (&j.request, j.now)), rules);
    let Overlay { mut new_states, mut new_txs, .. } = overlay;
    if new_states.is_empty() && new_txs.is_empty() {
        // Nothing to write: every answer rests on committed rows.
        tx.rollback().await.map_err(q("ending a read-only transaction"))?;
        return Ok(answers);
    }

    // 3. Insert, in key order (so concurrent processes take row locks in the same order).
    new_states.sort_by_key(|(s, _)| *s);
    new_txs.sort();
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (state, by) in &new_states {
        columns.0.push(state.txhash.0.to_vec());
        columns.1.push(i64::from(state.index));
        columns.2.push(by.tx_id.0.to_vec());
        columns.3.push(i64::from(by.input_index));
        columns.4.push(by.requesting_party.to_string());
    }
    let inserted = sqlx::query(INSERT_STATES)
        .bind(&columns.0)
        .bind(&columns.1)
        .bind(&columns.2)
        .bind(&columns.3)
        .bind(&columns.4)
        .execute(&mut *tx)
        .await
        .map_err(q("inserting into treaty_notary_states"))?
        .rows_affected();
    if inserted != new_states.len() as u64 {
        tx.rollback().await.map_err(q("rolling back a batch that lost a race"))?;
        return Err(Attempt::LostRace);
    }
    if !new_txs.is_empty() {
        let ids: Vec<Vec<u8>> = new_txs.iter().map(|t| t.0.to_vec()).collect();
        sqlx::query(INSERT_TXS).bind(&ids).execute(&mut *tx).await.map_err(q("inserting into treaty_notary_transactions"))?;
    }
    tx.commit().await.map_err(q("committing a batch"))?;
    Ok(answers)
}
