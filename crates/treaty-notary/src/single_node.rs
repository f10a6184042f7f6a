//! The single-node provider: the uniqueness log in one redb file, written by one thread in
//! batches (group commit).
//!
//! The file holds three tables:
//! - `consumed_states`: state ref (36 bytes: the creating transaction's id, then the output
//!   index big-endian) → the consuming transaction (BCS of [`ConsumingTx`]);
//! - `committed_transactions`: id (32 bytes) of a committed transaction without inputs → nothing;
//! - `meta`: `format` → the file format version ([`FORMAT_VERSION`]).
//!
//! Callers queue their requests; a dedicated thread (redb is synchronous, and fsync must not
//! block the async runtime) takes every queued request, applies them in order inside one redb
//! write transaction with [`Durability::Immediate`], commits (one fsync for the whole batch),
//! and only then answers. A batch whose commit fails answers every request in it with
//! [`NotaryError::Storage`]; nothing of it is consumed. A batch that consumed nothing (all
//! refusals or retries) is not committed at all: its answers rest on data already durable.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use tokio::sync::mpsc;
use treaty_core::{SecureHash, StateRef, Timestamp, encoding};

use crate::apply::{Rules, UniquenessState, apply_batch};
use crate::batch::{BatchResult, Job, Linger, answer, submit};
use crate::error::NotaryError;
use crate::provider::{CommitFuture, UniquenessConfig, UniquenessProvider};
use crate::request::{CommitRequest, ConsumingTx};

/// The file format this version writes and reads.
pub const FORMAT_VERSION: u64 = 1;

pub(crate) const CONSUMED: TableDefinition<&[u8; 36], &[u8]> = TableDefinition::new("consumed_states");
pub(crate) const COMMITTED: TableDefinition<&[u8; 32], ()> = TableDefinition::new("committed_transactions");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A state ref as its 36-byte key.
pub(crate) fn key(state: &StateRef) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(state.txhash.as_bytes());
    k[32..].copy_from_slice(&state.index.to_be_bytes());
    k
}

/// The single-node uniqueness provider over a redb file. Open it with
/// [`RedbUniquenessProvider::open`]; share it behind an `Arc`; [`close`](Self::close) it to
/// release the file.
#[derive(Debug)]
pub struct RedbUniquenessProvider {
    queue: mpsc::Sender<Job>,
    rules: Rules,
    writer: JoinHandle<()>,
    path: PathBuf,
}

impl RedbUniquenessProvider {
    /// Opens (creating if needed, with its parent directories) the log at `path` and starts
    /// its writer. Fails with [`NotaryError::Open`], naming the file, if it is not a redb file
    /// of this format, is damaged (with [`UniquenessConfig::verify_on_open`]) or is open
    /// elsewhere.
    pub async fn open(path: impl AsRef<Path>, config: UniquenessConfig) -> Result<RedbUniquenessProvider, NotaryError> {
        let path = path.as_ref().to_path_buf();
        let file = path.clone();
        let verify = config.verify_on_open;
        let db = tokio::task::spawn_blocking(move || open_file(&file, verify))
            .await
            .map_err(|e| NotaryError::Open { location: path.display().to_string(), reason: format!("opening task failed: {e}") })??;
        let (queue, jobs) = mpsc::channel(config.queue_capacity.max(1));
        let (rules, max_batch) = (config.rules, config.max_batch.max(1));
        let writer =
            std::thread::Builder::new().name("notary-redb-writer".into()).spawn(move || write_loop(db, jobs, rules, max_batch)).map_err(
                |e| NotaryError::Open { location: path.display().to_string(), reason: format!("cannot start the writer thread: {e}") },
            )?;
        Ok(RedbUniquenessProvider { queue, rules, writer, path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting requests, lets the writer finish what is queued, and waits until the
    /// file is closed (so it can be opened again). Dropping the provider stops it too, but
    /// without waiting.
    pub async fn close(self) {
        let RedbUniquenessProvider { queue, writer, .. } = self;
        drop(queue);
        // The writer thread only panics on a bug; there is nothing to add to its message.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
}

impl UniquenessProvider for RedbUniquenessProvider {
    fn commit(&self, request: CommitRequest, now: Timestamp) -> CommitFuture<'_> {
        Box::pin(submit(&self.queue, &self.rules, request, now))
    }
}

/// Opens or creates a redb file (and its parent directories), refusing it with
/// [`NotaryError::Open`] if it is open elsewhere, damaged or not a redb file.
pub(crate) fn create_database(path: &Path, verify: bool) -> Result<Database, NotaryError> {
    let open_error = |reason: String| NotaryError::Open { location: path.display().to_string(), reason };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| open_error(format!("cannot create directory {}: {e}", dir.display())))?;
    }
    Database::builder().set_check_integrity_on_open(verify).create(path).map_err(|e| {
        open_error(match e {
            DatabaseError::DatabaseAlreadyOpen => "the file is already open (by another notary process or provider)".into(),
            DatabaseError::Storage(redb::StorageError::Corrupted(why)) => {
                format!("not a valid redb uniqueness log (damaged, or some other kind of file): {why}")
            }
            other => other.to_string(),
        })
    })
}

/// Opens or creates the file and checks (or writes) its format version.
fn open_file(path: &Path, verify: bool) -> Result<Database, NotaryError> {
    let open_error = |reason: String| NotaryError::Open { location: path.display().to_string(), reason };
    let db = create_database(path, verify)?;
    // Only an empty file (new, or created by an open that did not finish) is initialised: a
    // redb file of something else is refused unchanged.
    let inspect = || -> Result<(Option<u64>, bool), redb::Error> {
        let read = db.begin_read()?;
        let empty = read.list_tables()?.next().is_none();
        let format = match read.open_table(META) {
            Ok(meta) => meta.get("format")?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok((format, empty))
    };
    let initialise = || -> Result<(), redb::Error> {
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.open_table(META)?.insert("format", FORMAT_VERSION)?;
        tx.open_table(CONSUMED)?;
        tx.open_table(COMMITTED)?;
        tx.commit()?;
        Ok(())
    };
    let not_a_log = |e: redb::Error| open_error(format!("not a uniqueness log of this Treaty: {e}"));
    match inspect().map_err(not_a_log)? {
        (Some(FORMAT_VERSION), _) => Ok(db),
        (Some(other), _) => Err(open_error(format!(
            "it has format version {other} but this Treaty reads only version {FORMAT_VERSION} (written by a newer Treaty?)"
        ))),
        (None, true) => {
            initialise().map_err(|e| open_error(format!("cannot initialise it: {e}")))?;
            Ok(db)
        }
        (None, false) => Err(open_error(
            "a redb database, but not a uniqueness log (it has other tables and no format record); refusing to change it".into(),
        )),
    }
}

/// The writer thread: batch (see [`Linger`]), apply, commit, answer, until the queue closes.
fn write_loop(db: Database, mut queue: mpsc::Receiver<Job>, rules: Rules, max_batch: usize) {
    let mut jobs = Vec::with_capacity(max_batch);
    let mut linger = Linger::default();
    while queue.blocking_recv_many(&mut jobs, max_batch) > 0 {
        linger.wait_blocking(&mut queue, &mut jobs, max_batch);
        let started = Instant::now();
        let result = commit_batch(&db, &jobs, &rules);
        linger.committed(jobs.len(), started.elapsed());
        if let Err(e) = &result {
            tracing::error!(requests = jobs.len(), error = %e, "uniqueness log batch failed");
        }
        answer(&mut jobs, result);
    }
    // Dropping `db` closes the file.
}

/// The log as seen from inside one write transaction (also the Raft state machine's).
pub(crate) struct RedbState<'t> {
    /// `consumed_states`.
    pub(crate) consumed: Table<'t, &'static [u8; 36], &'static [u8]>,
    /// `committed_transactions`.
    pub(crate) committed: Table<'t, &'static [u8; 32], ()>,
    /// Whether anything was written (otherwise the transaction is not committed).
    pub(crate) dirty: bool,
}

/// A redb failure, or a record that does not decode.
#[derive(Debug)]
pub(crate) enum StateError {
    Redb(redb::Error),
    Corrupt(String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Redb(e) => write!(f, "{e}"),
            StateError::Corrupt(why) => write!(f, "corrupt log: {why}"),
        }
    }
}

impl From<redb::StorageError> for StateError {
    fn from(e: redb::StorageError) -> StateError {
        StateError::Redb(e.into())
    }
}

impl UniquenessState for RedbState<'_> {
    type Error = StateError;

    fn consumed_by(&mut self, state: &StateRef) -> Result<Option<ConsumingTx>, StateError> {
        match self.consumed.get(&key(state))? {
            None => Ok(None),
            Some(bytes) => encoding::decode::<ConsumingTx>(bytes.value())
                .map(Some)
                .map_err(|e| StateError::Corrupt(format!("record of state {state} in consumed_states: {e}"))),
        }
    }

    fn is_committed(&mut self, tx_id: &SecureHash) -> Result<bool, StateError> {
        Ok(self.committed.get(tx_id.as_bytes())?.is_some())
    }

    fn consume(&mut self, state: &StateRef, by: &ConsumingTx) -> Result<(), StateError> {
        self.dirty = true;
        self.consumed.insert(&key(state), encoding::encode(by).as_slice())?;
        Ok(())
    }

    fn record_committed(&mut self, tx_id: &SecureHash) -> Result<(), StateError> {
        self.dirty = true;
        self.committed.insert(tx_id.as_bytes(), ())?;
        Ok(())
    }
}

/// Applies `jobs` in one write transaction and commits it durably.
fn commit_batch(db: &Database, jobs: &[Job], rules: &Rules) -> BatchResult {
    let failed = |what: &str, e: StateError| match e {
        StateError::Redb(e) => NotaryError::storage(what, e),
        StateError::Corrupt(why) => NotaryError::storage(what, format!("corrupt log: {why}")),
    };
    let mut tx = db.begin_write().map_err(|e| failed("beginning a write transaction", StateError::Redb(e.into())))?;
    tx.set_durability(Durability::Immediate).map_err(|e| failed("setting durability", StateError::Redb(e.into())))?;
    let (answers, dirty) = {
        let consumed = tx.open_table(CONSUMED).map_err(|e| failed("opening consumed_states", StateError::Redb(e.into())))?;
        let committed = tx.open_table(COMMITTED).map_err(|e| failed("opening committed_transactions", StateError::Redb(e.into())))?;
        let mut state = RedbState { consumed, committed, dirty: false };
        let answers = apply_batch(&mut state, jobs.iter().map(|j| (&j.request, j.now)), rules)
            .map_err(|e| failed("applying a batch of requests", e))?;
        (answers, state.dirty)
    };
    if dirty {
        tx.commit().map_err(|e| failed("committing a batch of requests", StateError::Redb(e.into())))?;
    } else {
        tx.abort().map_err(|e| failed("ending a read-only batch", StateError::Redb(e.into())))?;
    }
    Ok(answers)
}
