//! Where flows and their journals are kept. [`FlowStore`] is implemented over the node
//! database by [`crate::sql::SqlFlowStore`] (what nodes run) and in memory by
//! [`MemoryFlowStore`] (unit tests and simulation only).
//!
//! Besides flows and journals the store keeps *parkings*: a flow evicted from memory while it
//! waits (for a message or a time) leaves a [`Parking`] saying how to find it again — its
//! sessions, so a message for it can be routed, and its wake time. A parking holds only while
//! the journal has exactly the length it was written at: once the flow journals another step
//! it is stale and ignored, so a flow is never taken for parked after it moved on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use treaty_core::X500Name;
use treaty_net::messaging::StoreError;

use crate::journal::{Entry, FlowId};

/// Where a flow is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlowStatus {
    /// Running or waiting (for a message, a time); resumed after a restart.
    Runnable,
    /// Stopped by a failure the operator must look at; `retry` resumes it, `kill` ends it.
    Hospitalized,
    /// Ended with an error (its own, or its counterparty's).
    Failed,
    /// Ended with a result.
    Completed,
    /// Ended by the operator.
    Killed,
    /// Held by the operator; not resumed until retried.
    Paused,
}

impl FlowStatus {
    /// Whether the flow has ended for good.
    pub fn is_final(self) -> bool {
        matches!(self, FlowStatus::Failed | FlowStatus::Completed | FlowStatus::Killed)
    }

    /// The name used in JSON, the database and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowStatus::Runnable => "RUNNABLE",
            FlowStatus::Hospitalized => "HOSPITALIZED",
            FlowStatus::Failed => "FAILED",
            FlowStatus::Completed => "COMPLETED",
            FlowStatus::Killed => "KILLED",
            FlowStatus::Paused => "PAUSED",
        }
    }

    /// Parses [`FlowStatus::as_str`].
    pub fn parse(s: &str) -> Option<FlowStatus> {
        [FlowStatus::Runnable, FlowStatus::Hospitalized, FlowStatus::Failed, FlowStatus::Completed, FlowStatus::Killed, FlowStatus::Paused]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// A flow as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    /// Its id.
    pub id: FlowId,
    /// The registered flow name.
    pub name: String,
    /// The flow's version.
    pub version: u32,
    /// Its arguments (JSON).
    pub args: Vec<u8>,
    /// Its status.
    pub status: FlowStatus,
    /// Its result (JSON) once completed.
    pub result: Option<Vec<u8>>,
    /// Why it failed, was hospitalized or killed.
    pub error: Option<String>,
    /// The client id it was started with, if any (unique among flows).
    pub client_id: Option<String>,
    /// For a responder: the initiating party and its session id.
    pub initiator: Option<(X500Name, u64)>,
    /// Created (microseconds since the Unix epoch).
    pub created_at: i64,
    /// Last status change (microseconds since the Unix epoch).
    pub updated_at: i64,
}

/// What [`FlowStore::create`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// A new flow.
    New,
    /// The flow existed already (same id, or same client id): nothing was written.
    Existing(FlowId),
}

/// How to find a parked flow again (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parking {
    /// The flow.
    pub id: FlowId,
    /// Its journal's length when it was parked; the parking holds while the journal has
    /// exactly this many entries.
    pub journal_len: usize,
    /// For a flow sleeping until a time: when it wakes (microseconds since the Unix epoch).
    pub wake_at: Option<i64>,
    /// Its sessions: counterparty, session id, and whether this flow opened the session.
    pub sessions: Vec<(X500Name, u64, bool)>,
}

/// A parked flow as a restart indexes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedFlow {
    /// The flow.
    pub id: FlowId,
    /// Its registered name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// Whether it is a responder.
    pub responder: bool,
    /// When it wakes, if it sleeps.
    pub wake_at: Option<i64>,
}

/// How a run of a flow ends ([`FlowStore::end`]).
#[derive(Clone, Debug)]
pub struct End<'a> {
    /// The index of the first of `journal`.
    pub journal_from: usize,
    /// Journal entries not written yet.
    pub journal: &'a [Entry],
    /// The new status.
    pub status: FlowStatus,
    /// The result (JSON), if completed.
    pub result: Option<Vec<u8>>,
    /// Why it failed, was hospitalized or killed.
    pub error: Option<String>,
    /// Whether the flow may have a parking in the store (it was parked, or resumed from the
    /// store); if not, there is none to remove.
    pub parked: bool,
    /// The record's new `updated_at` (microseconds since the Unix epoch): the engine hands the
    /// ended record to waiters from memory, so the store must write exactly this.
    pub updated_at: i64,
}

/// The flows table and the journal. Every method that writes is durable when it returns Ok.
pub trait FlowStore: Send + Sync + 'static {
    /// Adds a flow, unless one with its id or its client id exists.
    fn create(&self, record: FlowRecord) -> impl Future<Output = Result<Created, StoreError>> + Send;
    /// Appends `entries` as journal entries number `first`, `first + 1`, ... (0-based), all or
    /// none; refuses unless `first` is the journal's length.
    fn append(&self, id: FlowId, first: usize, entries: &[Entry]) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The journal, in order.
    fn journal(&self, id: FlowId) -> impl Future<Output = Result<Vec<Entry>, StoreError>> + Send;
    /// Sets the status (and the result or error with it). Any other status than
    /// [`FlowStatus::Runnable`] also removes the flow's parking.
    fn set_status(
        &self,
        id: FlowId,
        status: FlowStatus,
        result: Option<Vec<u8>>,
        error: Option<String>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Ends a run of flow `id` in one write: appends its pending journal entries (as
    /// [`FlowStore::append`] would) and sets its status (as [`FlowStore::set_status`] would).
    /// With `end.parked` false the flow has no parking to remove.
    /// `end.updated_at` is the record's new `updated_at`; this default, for stores that have
    /// no single write for it, lets `set_status` choose the time.
    fn end(&self, id: FlowId, end: End<'_>) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            if !end.journal.is_empty() {
                self.append(id, end.journal_from, end.journal).await?;
            }
            self.set_status(id, end.status, end.result, end.error).await
        }
    }
    /// One flow.
    fn get(&self, id: FlowId) -> impl Future<Output = Result<Option<FlowRecord>, StoreError>> + Send;
    /// Every flow, oldest first.
    fn list(&self) -> impl Future<Output = Result<Vec<FlowRecord>, StoreError>> + Send;
    /// Flows to resume after a restart: the runnable ones.
    fn runnable(&self) -> impl Future<Output = Result<Vec<FlowRecord>, StoreError>> + Send;
    /// Records that a flow is parked, replacing an earlier parking of it.
    fn park(&self, parking: &Parking) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The flow parked with session (`party`, `session`, `initiator`), if any (its parking may
    /// be stale: the caller checks the flow).
    fn parked_session(
        &self,
        party: &X500Name,
        session: u64,
        initiator: bool,
    ) -> impl Future<Output = Result<Option<FlowId>, StoreError>> + Send;
    /// Runnable flows whose parking holds, with their wake times: a restart indexes these
    /// instead of loading them.
    fn parked(&self) -> impl Future<Output = Result<Vec<ParkedFlow>, StoreError>> + Send;
    /// Runnable flows that are not parked, oldest first: what a restart runs.
    fn awake(&self) -> impl Future<Output = Result<Vec<FlowRecord>, StoreError>> + Send;
}

#[derive(Default)]
struct Memory {
    flows: BTreeMap<FlowId, (u64, FlowRecord)>,
    journals: BTreeMap<FlowId, Vec<Entry>>,
    parkings: BTreeMap<FlowId, Parking>,
    parked_sessions: HashMap<(X500Name, u64, bool), FlowId>,
    next: u64,
}

impl Memory {
    /// Whether `id` is runnable and its parking holds.
    fn parked(&self, id: &FlowId) -> bool {
        let runnable = self.flows.get(id).is_some_and(|(_, r)| r.status == FlowStatus::Runnable);
        let holds = self.parkings.get(id).is_some_and(|p| self.journals.get(id).map_or(0, Vec::len) == p.journal_len);
        runnable && holds
    }

    fn unpark(&mut self, id: &FlowId) {
        if let Some(p) = self.parkings.remove(id) {
            for (party, session, initiator) in p.sessions {
                self.parked_sessions.remove(&(party, session, initiator));
            }
        }
    }
}

/// In-memory [`FlowStore`] (tests and simulation only: not durable).
#[derive(Default)]
pub struct MemoryFlowStore(Mutex<Memory>);

impl MemoryFlowStore {
    fn set_status_at(
        &self,
        id: FlowId,
        status: FlowStatus,
        result: Option<Vec<u8>>,
        error: Option<String>,
        at: i64,
    ) -> Result<(), StoreError> {
        self.with(|m| {
            let (_, r) = m.flows.get_mut(&id).ok_or_else(|| StoreError::permanent(format!("no flow {id}")))?;
            r.status = status;
            r.result = result;
            r.error = error;
            r.updated_at = at;
            if status != FlowStatus::Runnable {
                m.unpark(&id);
            }
            Ok(())
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn by_age(m: &Memory, keep: impl Fn(&FlowRecord) -> bool) -> Vec<FlowRecord> {
    let mut all: Vec<&(u64, FlowRecord)> = m.flows.values().filter(|(_, r)| keep(r)).collect();
    all.sort_by_key(|(n, _)| *n);
    all.into_iter().map(|(_, r)| r.clone()).collect()
}

impl FlowStore for MemoryFlowStore {
    async fn create(&self, record: FlowRecord) -> Result<Created, StoreError> {
        Ok(self.with(|m| {
            if m.flows.contains_key(&record.id) {
                return Created::Existing(record.id);
            }
            if let Some(client) = &record.client_id
                && let Some((_, r)) = m.flows.values().find(|(_, r)| r.client_id.as_ref() == Some(client))
            {
                return Created::Existing(r.id);
            }
            m.next += 1;
            m.journals.insert(record.id, Vec::new());
            m.flows.insert(record.id, (m.next, record));
            Created::New
        }))
    }

    async fn append(&self, id: FlowId, first: usize, entries: &[Entry]) -> Result<(), StoreError> {
        self.with(|m| {
            let journal = m.journals.get_mut(&id).ok_or_else(|| StoreError::permanent(format!("no flow {id}")))?;
            if journal.len() != first {
                return Err(StoreError::permanent(format!(
                    "flow {id}: journal entry {first} appended, but the journal has {}",
                    journal.len()
                )));
            }
            journal.extend(entries.iter().cloned());
            Ok(())
        })
    }

    async fn journal(&self, id: FlowId) -> Result<Vec<Entry>, StoreError> {
        Ok(self.with(|m| m.journals.get(&id).cloned().unwrap_or_default()))
    }

    async fn set_status(&self, id: FlowId, status: FlowStatus, result: Option<Vec<u8>>, error: Option<String>) -> Result<(), StoreError> {
        self.set_status_at(id, status, result, error, crate::now_micros())
    }

    async fn end(&self, id: FlowId, end: End<'_>) -> Result<(), StoreError> {
        if !end.journal.is_empty() {
            self.append(id, end.journal_from, end.journal).await?;
        }
        self.set_status_at(id, end.status, end.result, end.error, end.updated_at)
    }

    async fn get(&self, id: FlowId) -> Result<Option<FlowRecord>, StoreError> {
        Ok(self.with(|m| m.flows.get(&id).map(|(_, r)| r.clone())))
    }

    async fn list(&self) -> Result<Vec<FlowRecord>, StoreError> {
        Ok(self.with(|m| by_age(m, |_| true)))
    }

    async fn runnable(&self) -> Result<Vec<FlowRecord>, StoreError> {
        Ok(self.with(|m| by_age(m, |r| r.status == FlowStatus::Runnable)))
    }

    async fn park(&self, parking: &Parking) -> Result<(), StoreError> {
        self.with(|m| {
            for (party, session, initiator) in &parking.sessions {
                m.parked_sessions.insert((party.clone(), *session, *initiator), parking.id);
            }
            m.parkings.insert(parking.id, parking.clone());
        });
        Ok(())
    }

    async fn parked_session(&self, party: &X500Name, session: u64, initiator: bool) -> Result<Option<FlowId>, StoreError> {
        Ok(self.with(|m| m.parked_sessions.get(&(party.clone(), session, initiator)).copied()))
    }

    async fn parked(&self) -> Result<Vec<ParkedFlow>, StoreError> {
        Ok(self.with(|m| {
            let mut parked: Vec<(u64, ParkedFlow)> = m
                .parkings
                .values()
                .filter(|p| m.parked(&p.id))
                .filter_map(|p| {
                    let (seq, r) = m.flows.get(&p.id)?;
                    let flow = ParkedFlow {
                        id: p.id,
                        name: r.name.clone(),
                        version: r.version,
                        responder: r.initiator.is_some(),
                        wake_at: p.wake_at,
                    };
                    Some((*seq, flow))
                })
                .collect();
            parked.sort_by_key(|(seq, _)| *seq);
            parked.into_iter().map(|(_, p)| p).collect()
        }))
    }

    async fn awake(&self) -> Result<Vec<FlowRecord>, StoreError> {
        Ok(self.with(|m| {
            let parked: HashSet<FlowId> = m.parkings.keys().filter(|id| m.parked(id)).copied().collect();
            by_age(m, |r| r.status == FlowStatus::Runnable && !parked.contains(&r.id))
        }))
    }
}
