//! One replica's redb file: the Raft log and vote, the state machine (the uniqueness log) and
//! the latest snapshot of it.
//!
//! Tables:
//! - `raft_log`: log index → BCS of the openraft entry (a [`Proposal`], a membership or a blank);
//! - `raft_meta`: `format`, `vote`, `last_purged`, `last_applied`, `membership`,
//!   `snapshot_meta`, `snapshot_data`, `closed` → BCS values;
//! - `consumed_states`, `committed_transactions`: the uniqueness log, exactly as the
//!   single-node provider keeps it, written by the same rules ([`apply_batch`]).
//!
//! Durability. The vote and truncations are committed with [`Durability::Immediate`]; appended
//! entries are committed at once without a flush (so they can be read and replicated) and a
//! flusher thread then makes them durable — one flush for every append queued meanwhile — and
//! only then tells openraft they are stored. So a replica never acknowledges an entry it could
//! lose, and the leader's flush overlaps its followers'. The state machine is written with [`Durability::None`]:
//! it is always a function of the durable log, and because log and state machine share one
//! file, the next durable commit (the next append) makes every earlier state machine commit
//! durable too. After a crash the state machine is at some earlier applied index, recorded in
//! the same transaction as the states it consumed, and openraft applies the rest of the log
//! again. A snapshot is written durably, and the log is only purged up to a snapshot.
//!
//! redb is synchronous. On a multi-threaded tokio runtime the calls that flush run under
//! `block_in_place`, so a flush does not stall other tasks; on a current-thread runtime (the
//! deterministic simulation) they run inline, and appends are flushed inline too (a thread
//! would make the simulation depend on real time).

use std::fmt::{Debug, Display};
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Weak};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use treaty_core::{SecureHash, StateRef, encoding};

use super::{Answers, ReplicaId, TypeConfig};
use crate::apply::{MemoryState, apply_batch};
use crate::error::NotaryError;
use crate::request::ConsumingTx;
use crate::single_node::{COMMITTED, CONSUMED, RedbState, create_database, key};

/// The format of a replica's file this version writes and reads.
pub const RAFT_FORMAT_VERSION: u64 = 1;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// The largest value read back from the file (a snapshot holds the whole uniqueness log).
const MAX_VALUE: usize = u32::MAX as usize;

type StoreError = StorageError<ReplicaId>;

/// The last applied log id and the membership it left.
type Applied = (Option<LogId<ReplicaId>>, StoredMembership<ReplicaId, openraft::EmptyNode>);

/// What a snapshot holds: the whole uniqueness log at one applied log index.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SnapshotContents {
    /// Every consumed state and the transaction that consumed it.
    consumed: Vec<(StateRef, ConsumingTx)>,
    /// Every committed transaction without inputs.
    committed: Vec<SecureHash>,
}

/// Runs `f`, which blocks on the disk, without stalling the runtime's other tasks where that is
/// possible (a multi-threaded runtime); inline otherwise (the simulation's current-thread runtime,
/// where inline is what keeps it deterministic).
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn text(e: impl Display) -> String {
    e.to_string()
}

fn io_error(subject: ErrorSubject<ReplicaId>, verb: ErrorVerb, why: String) -> StoreError {
    StorageIOError::new(subject, verb, AnyError::error(why)).into()
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    encoding::decode_bounded(bytes, MAX_VALUE).map_err(|e| format!("{what} does not decode: {e}"))
}

fn get_meta<T: DeserializeOwned>(table: &impl ReadableTable<&'static str, &'static [u8]>, name: &str) -> Result<Option<T>, String> {
    match table.get(name).map_err(text)? {
        None => Ok(None),
        Some(v) => decode(v.value(), name).map(Some),
    }
}

fn put_meta<T: Serialize>(table: &mut Table<'_, &'static str, &'static [u8]>, name: &str, value: &T) -> Result<(), String> {
    table.insert(name, encoding::encode(value).as_slice()).map_err(text)?;
    Ok(())
}

/// The state ref a 36-byte key stands for.
fn state_of(key: &[u8; 36]) -> StateRef {
    let mut txhash = [0u8; 32];
    txhash.copy_from_slice(&key[..32]);
    let mut index = [0u8; 4];
    index.copy_from_slice(&key[32..]);
    StateRef { txhash: SecureHash(txhash), index: u32::from_be_bytes(index) }
}

/// A replica's file, shared by its log storage and its state machine (redb serialises their
/// write transactions).
#[derive(Clone)]
pub(crate) struct Store {
    db: Arc<Database>,
    /// Appends waiting to be flushed by the flusher thread; `None`: appends flush inline.
    flusher: Option<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>>,
}

/// Makes queued appends durable, one flush for all queued, then tells openraft, in order. It
/// holds the file weakly, so closing the replica is not kept waiting by it; it ends when every
/// handle to the store is gone.
fn flush_loop(db: Weak<Database>, queue: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = queue.recv() {
        let mut waiting = vec![first];
        waiting.extend(queue.try_iter());
        let result = match db.upgrade() {
            Some(db) => (|| -> Result<(), String> {
                let mut tx = db.begin_write().map_err(text)?;
                tx.set_durability(Durability::Immediate).map_err(text)?;
                put_meta(&mut tx.open_table(META).map_err(text)?, "flushed", &true)?;
                tx.commit().map_err(text)
            })(),
            None => Err("the replica's file was closed".into()),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "flushing the Raft log failed");
        }
        for callback in waiting {
            callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

impl Store {
    /// Opens or creates a replica's file; refuses one that is not a replica's log of this format.
    pub(crate) fn open(path: &Path, verify: bool) -> Result<Store, NotaryError> {
        let open_error = |reason: String| NotaryError::Open { location: path.display().to_string(), reason };
        let db = create_database(path, verify)?;
        let inspect = || -> Result<(Option<u64>, bool), String> {
            let read = db.begin_read().map_err(text)?;
            let empty = read.list_tables().map_err(text)?.next().is_none();
            let format = match read.open_table(META) {
                Ok(meta) => get_meta::<u64>(&meta, "format")?,
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.to_string()),
            };
            Ok((format, empty))
        };
        let initialise = || -> Result<(), String> {
            let mut tx = db.begin_write().map_err(text)?;
            tx.set_durability(Durability::Immediate).map_err(text)?;
            put_meta(&mut tx.open_table(META).map_err(text)?, "format", &RAFT_FORMAT_VERSION)?;
            tx.open_table(LOG).map_err(text)?;
            tx.open_table(CONSUMED).map_err(text)?;
            tx.open_table(COMMITTED).map_err(text)?;
            tx.commit().map_err(text)
        };
        match inspect().map_err(|e| open_error(format!("not a replica log of this Treaty: {e}")))? {
            (Some(RAFT_FORMAT_VERSION), _) => {}
            (Some(other), _) => {
                return Err(open_error(format!(
                    "it has replica format version {other} but this Treaty reads only version {RAFT_FORMAT_VERSION}"
                )));
            }
            (None, true) => initialise().map_err(|e| open_error(format!("cannot initialise it: {e}")))?,
            (None, false) => {
                return Err(open_error(
                    "a redb database, but not a Raft replica's log (a single-node notary's log, or something else); refusing to change it"
                        .into(),
                ));
            }
        }
        let db = Arc::new(db);
        let multi_threaded =
            tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let flusher = if multi_threaded {
            let (queue, waiting) = std::sync::mpsc::channel();
            let weak = Arc::downgrade(&db);
            std::thread::Builder::new()
                .name("notary-raft-flusher".into())
                .spawn(move || flush_loop(weak, waiting))
                .map_err(|e| open_error(format!("cannot start the flusher thread: {e}")))?;
            Some(queue)
        } else {
            None
        };
        Ok(Store { db, flusher })
    }

    /// One write transaction with `durability`.
    fn write<R>(&self, durability: Durability, f: impl FnOnce(&redb::WriteTransaction) -> Result<R, String>) -> Result<R, String> {
        let mut tx = self.db.begin_write().map_err(text)?;
        tx.set_durability(durability).map_err(text)?;
        let r = f(&tx)?;
        tx.commit().map_err(text)?;
        Ok(r)
    }

    fn read_meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, String> {
        let read = self.db.begin_read().map_err(text)?;
        get_meta(&read.open_table(META).map_err(text)?, name)
    }

    /// How many handles to the file are alive (this one included).
    pub(crate) fn holders(&self) -> usize {
        Arc::strong_count(&self.db)
    }

    /// Makes everything written so far durable (the state machine's last commits included), so
    /// a stopped replica's file holds all it applied.
    pub(crate) fn flush(&self) -> Result<(), String> {
        blocking(|| self.write(Durability::Immediate, |tx| put_meta(&mut tx.open_table(META).map_err(text)?, "closed", &true)))
    }

    fn last_applied(&self) -> Result<Applied, String> {
        let read = self.db.begin_read().map_err(text)?;
        let meta = read.open_table(META).map_err(text)?;
        let applied = get_meta::<Option<LogId<ReplicaId>>>(&meta, "last_applied")?.flatten();
        let membership = get_meta(&meta, "membership")?.unwrap_or_default();
        Ok((applied, membership))
    }

    fn apply_entries(&self, entries: &[Entry<TypeConfig>]) -> Result<Vec<Answers>, String> {
        self.write(Durability::None, |tx| {
            let consumed = tx.open_table(CONSUMED).map_err(text)?;
            let committed = tx.open_table(COMMITTED).map_err(text)?;
            let mut meta = tx.open_table(META).map_err(text)?;
            let mut state = RedbState { consumed, committed, dirty: false };
            let mut answers = Vec::with_capacity(entries.len());
            let mut membership = None;
            for entry in entries {
                match &entry.payload {
                    EntryPayload::Blank => answers.push(Vec::new()),
                    EntryPayload::Normal(proposal) => {
                        let batch = proposal.requests.iter().map(|(request, now)| (request, *now));
                        answers.push(apply_batch(&mut state, batch, &proposal.rules).map_err(text)?);
                    }
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                        answers.push(Vec::new());
                    }
                }
            }
            if let Some(last) = entries.last() {
                put_meta(&mut meta, "last_applied", &Some(last.log_id))?;
            }
            if let Some(m) = membership {
                put_meta(&mut meta, "membership", &m)?;
            }
            Ok(answers)
        })
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, String> {
        // A read transaction is a consistent view: the state machine may go on applying.
        let read = self.db.begin_read().map_err(text)?;
        let meta = read.open_table(META).map_err(text)?;
        let last_log_id = get_meta::<Option<LogId<ReplicaId>>>(&meta, "last_applied")?.flatten();
        let last_membership = get_meta(&meta, "membership")?.unwrap_or_default();
        let mut contents = SnapshotContents::default();
        for item in read.open_table(CONSUMED).map_err(text)?.iter().map_err(text)? {
            let (k, v) = item.map_err(text)?;
            contents.consumed.push((state_of(k.value()), decode(v.value(), "a consumed state's record")?));
        }
        for item in read.open_table(COMMITTED).map_err(text)?.iter().map_err(text)? {
            contents.committed.push(SecureHash(*item.map_err(text)?.0.value()));
        }
        drop((meta, read));
        let snapshot_id = match &last_log_id {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.leader_id.node_id, id.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let data = encoding::try_encode(&contents)?;
        self.write(Durability::Immediate, |tx| {
            let mut table = tx.open_table(META).map_err(text)?;
            put_meta(&mut table, "snapshot_meta", &meta)?;
            table.insert("snapshot_data", data.as_slice()).map_err(text)?;
            Ok(())
        })?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }

    fn install(&self, meta: &SnapshotMeta<ReplicaId, openraft::EmptyNode>, data: Vec<u8>) -> Result<(), String> {
        let contents: SnapshotContents = decode(&data, "the snapshot")?;
        self.write(Durability::Immediate, |tx| {
            tx.delete_table(CONSUMED).map_err(text)?;
            tx.delete_table(COMMITTED).map_err(text)?;
            let mut consumed = tx.open_table(CONSUMED).map_err(text)?;
            for (state, by) in &contents.consumed {
                consumed.insert(&key(state), encoding::encode(by).as_slice()).map_err(text)?;
            }
            let mut committed = tx.open_table(COMMITTED).map_err(text)?;
            for id in &contents.committed {
                committed.insert(id.as_bytes(), ()).map_err(text)?;
            }
            let mut table = tx.open_table(META).map_err(text)?;
            put_meta(&mut table, "last_applied", &meta.last_log_id)?;
            put_meta(&mut table, "membership", &meta.last_membership)?;
            put_meta(&mut table, "snapshot_meta", meta)?;
            table.insert("snapshot_data", data.as_slice()).map_err(text)?;
            Ok(())
        })
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, String> {
        let read = self.db.begin_read().map_err(text)?;
        let table = read.open_table(META).map_err(text)?;
        let Some(meta) = get_meta::<SnapshotMeta<ReplicaId, openraft::EmptyNode>>(&table, "snapshot_meta")? else { return Ok(None) };
        let data = table.get("snapshot_data").map_err(text)?.map(|v| v.value().to_vec()).unwrap_or_default();
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// What a stopped replica's file holds: its uniqueness log and the last log index it applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaContents {
    /// The consumed states and committed input-less transactions.
    pub state: MemoryState,
    /// The index of the last Raft log entry applied to it (0 if none).
    pub last_applied: u64,
}

/// Reads the uniqueness log of a stopped replica from its file (for operators and tests): it
/// must not be open by a running replica.
pub fn read_replica_file(path: impl AsRef<Path>) -> Result<ReplicaContents, NotaryError> {
    let path = path.as_ref();
    let open_error = |reason: String| NotaryError::Open { location: path.display().to_string(), reason };
    let db = Database::builder().open(path).map_err(|e| open_error(e.to_string()))?;
    let read = || -> Result<ReplicaContents, String> {
        let read = db.begin_read().map_err(text)?;
        let meta = read.open_table(META).map_err(text)?;
        if get_meta::<u64>(&meta, "format")? != Some(RAFT_FORMAT_VERSION) {
            return Err("not a Raft replica's log of this format".into());
        }
        let applied = get_meta::<Option<LogId<ReplicaId>>>(&meta, "last_applied")?.flatten();
        let mut contents = ReplicaContents { last_applied: applied.map_or(0, |id| id.index), ..ReplicaContents::default() };
        for item in read.open_table(CONSUMED).map_err(text)?.iter().map_err(text)? {
            let (k, v) = item.map_err(text)?;
            contents.state.consumed.insert(state_of(k.value()), decode(v.value(), "a consumed state's record")?);
        }
        for item in read.open_table(COMMITTED).map_err(text)?.iter().map_err(text)? {
            contents.state.committed.insert(SecureHash(*item.map_err(text)?.0.value()));
        }
        Ok(contents)
    };
    read().map_err(open_error)
}

impl RaftLogReader<TypeConfig> for Store {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let read = || -> Result<Vec<Entry<TypeConfig>>, String> {
            let read = self.db.begin_read().map_err(text)?;
            let table = read.open_table(LOG).map_err(text)?;
            let mut entries = Vec::new();
            for item in table.range::<u64>(range).map_err(text)? {
                entries.push(decode(item.map_err(text)?.1.value(), "a log entry")?);
            }
            Ok(entries)
        };
        read().map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for Store {
    type LogReader = Store;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StoreError> {
        let read = || -> Result<LogState<TypeConfig>, String> {
            let read = self.db.begin_read().map_err(text)?;
            let last_purged_log_id = get_meta::<LogId<ReplicaId>>(&read.open_table(META).map_err(text)?, "last_purged")?;
            let last = match read.open_table(LOG).map_err(text)?.last().map_err(text)? {
                Some((_, v)) => Some(decode::<Entry<TypeConfig>>(v.value(), "the last log entry")?.log_id),
                None => None,
            };
            Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
        };
        read().map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    async fn get_log_reader(&mut self) -> Store {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<ReplicaId>) -> Result<(), StoreError> {
        blocking(|| self.write(Durability::Immediate, |tx| put_meta(&mut tx.open_table(META).map_err(text)?, "vote", vote)))
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<ReplicaId>>, StoreError> {
        self.read_meta("vote").map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let durability = if self.flusher.is_some() { Durability::None } else { Durability::Immediate };
        let result = blocking(|| {
            self.write(durability, |tx| {
                let mut log = tx.open_table(LOG).map_err(text)?;
                for entry in &entries {
                    log.insert(entry.log_id.index, encoding::try_encode(entry)?.as_slice()).map_err(text)?;
                }
                Ok(())
            })
        });
        match result {
            Ok(()) => {
                match &self.flusher {
                    Some(flusher) => {
                        if let Err(unsent) = flusher.send(callback) {
                            unsent.0.log_io_completed(Err(std::io::Error::other("the flusher stopped")));
                        }
                    }
                    None => callback.log_io_completed(Ok(())),
                }
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.clone())));
                Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<ReplicaId>) -> Result<(), StoreError> {
        blocking(|| {
            self.write(Durability::Immediate, |tx| tx.open_table(LOG).map_err(text)?.retain_in(log_id.index.., |_, _| false).map_err(text))
        })
        .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<ReplicaId>) -> Result<(), StoreError> {
        // Not flushed: if a crash loses a purge, the purged entries are simply still there.
        self.write(Durability::None, |tx| {
            put_meta(&mut tx.open_table(META).map_err(text)?, "last_purged", &log_id)?;
            tx.open_table(LOG).map_err(text)?.retain_in(..=log_id.index, |_, _| false).map_err(text)
        })
        .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

impl RaftStateMachine<TypeConfig> for Store {
    type SnapshotBuilder = Store;

    async fn applied_state(&mut self) -> Result<(Option<LogId<ReplicaId>>, StoredMembership<ReplicaId, openraft::EmptyNode>), StoreError> {
        self.last_applied().map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Answers>, StoreError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        blocking(|| self.apply_entries(&entries)).map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e))
    }

    async fn get_snapshot_builder(&mut self) -> Store {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StoreError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<ReplicaId, openraft::EmptyNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        blocking(|| self.install(meta, snapshot.into_inner()))
            .map_err(|e| io_error(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        self.current_snapshot().map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Store {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StoreError> {
        blocking(|| self.build()).map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))
    }
}
