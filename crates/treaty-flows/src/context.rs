//! [`FlowContext`]: everything a flow may do to the world, each step journaled before it
//! counts and answered from the journal when the flow is replayed after a restart.
//!
//! A flow that waits — at a receive with nothing queued for it, or in `sleep_until` — says so
//! in its [`Inbox`]; the engine may then park it (drop it from memory, see `engine.rs`) and
//! bring it back by replaying its journal when a message or its wake time comes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use treaty_core::{X500Name, encoding};
use treaty_net::messaging::MessageId;

use crate::engine::{DynStore, Shared, Transport};
use crate::error::FlowError;
use crate::journal::{Ask, Entry, FlowId, Received};
use crate::protocol::{Envelope, SessionMessage};
use crate::store::FlowRecord;

/// A conversation with one counterparty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The id the initiating side chose.
    pub id: u64,
    /// The counterparty.
    pub party: X500Name,
    /// Whether this side opened it.
    pub initiator: bool,
}

#[derive(Default)]
pub(crate) struct SessionState {
    pub(crate) party: Option<X500Name>,
    pub(crate) initiator: bool,
    pub(crate) init_sent: bool,
    /// The protocol the counterparty's responder is chosen by, if not this flow's own name
    /// (sessions opened with [`FlowContext::initiate_as`]).
    pub(crate) protocol: Option<(String, u32)>,
}

/// What a waiting flow waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// A message, at a receive with nothing queued for it.
    Message,
    /// Its wake time (microseconds since the Unix epoch), in `sleep_until`.
    Sleep(i64),
    /// A message, or else the deadline (microseconds since the Unix epoch), in `receive_until`.
    MessageUntil(i64),
}

/// Messages delivered to a flow and not yet journaled, and whether it waits.
#[derive(Default)]
pub(crate) struct Inbox {
    pub(crate) queues: HashMap<u64, VecDeque<(MessageId, Received)>>,
    /// Set while the flow is suspended at a receive or a sleep; cleared before it does anything
    /// else. Kept under the same lock as the queues, so "waiting with nothing queued" is one
    /// observation.
    pub(crate) waiting: Option<Wait>,
}

/// A session message a flow has sent, not yet handed to the messenger.
#[derive(Debug)]
pub(crate) struct OutgoingMessage {
    pub(crate) id: MessageId,
    pub(crate) party: X500Name,
    pub(crate) session: u64,
    pub(crate) to_initiator: bool,
    pub(crate) message: SessionMessage,
}

/// A flow's in-memory state while it runs.
pub(crate) struct Run {
    pub(crate) id: FlowId,
    pub(crate) name: String,
    pub(crate) version: u32,
    /// Its record as the run began (what an ended record is made from for waiters).
    pub(crate) record: FlowRecord,
    pub(crate) journal: Mutex<Vec<Entry>>,
    /// How many entries of `journal` are in the store; the rest are steps whose replay needs
    /// nothing durable of their own (see [`FlowContext::record_later`]), written with the next
    /// step that does.
    pub(crate) durable: Mutex<usize>,
    /// Loaded with a journal from the store (resumed, revived, retried), so the store may
    /// hold a stale parking of it.
    pub(crate) resumed: bool,
    pub(crate) cursor: Mutex<usize>,
    /// Received messages journaled already, by id and whether it was the `End` half of a
    /// `Final` (which shares its id with the `Data` half).
    pub(crate) seen: Mutex<HashSet<(MessageId, bool)>>,
    /// Messages the flow has sent and the messenger has not been handed yet: sends are
    /// deferred to the flow's next wait or journal write (see [`FlowContext::send`]).
    pub(crate) outgoing: Mutex<Vec<OutgoingMessage>>,
    pub(crate) inbox: Mutex<Inbox>,
    pub(crate) sessions: Mutex<HashMap<u64, SessionState>>,
    pub(crate) notify: Notify,
    pub(crate) opened: Mutex<u64>,
    /// Asks the flow's task to park it (idle too long, or the engine is over its cap).
    pub(crate) park_now: Notify,
    /// The engine's cap asked for this flow to be parked and has not heard back.
    pub(crate) park_requested: AtomicBool,
    /// The journal length of a parking of this flow that holds in the store (so parking it
    /// again at that length writes nothing).
    pub(crate) parked_len: Mutex<Option<usize>>,
    /// Its key in the engine's index of waiting flows (0: not in it). Changed under the
    /// engine's table lock.
    pub(crate) idle: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Run {
    pub(crate) fn new(record: &FlowRecord, journal: Vec<Entry>) -> Run {
        let (id, name, version, initiator) = (record.id, record.name.clone(), record.version, record.initiator.clone());
        let mut seen = HashSet::new();
        let mut sessions: HashMap<u64, SessionState> = HashMap::new();
        for e in &journal {
            if let Entry::Received { message, outcome, .. } = e {
                seen.insert((*message, matches!(outcome, Received::Ended)));
            }
            match e {
                Entry::Opened { session, party } => {
                    sessions
                        .insert(*session, SessionState { party: Some(party.clone()), initiator: true, init_sent: false, protocol: None });
                }
                // Receiving on a session the flow opened means it was opened on the wire.
                Entry::Sent { session, .. } | Entry::Received { session, .. } => {
                    if let Some(s) = sessions.get_mut(session) {
                        s.init_sent = true;
                    }
                }
                _ => {}
            }
        }
        if let Some((party, session)) = initiator {
            sessions.insert(session, SessionState { party: Some(party), initiator: false, init_sent: true, protocol: None });
        }
        Run {
            id,
            name,
            version,
            record: record.clone(),
            durable: Mutex::new(journal.len()),
            resumed: !journal.is_empty(),
            journal: Mutex::new(journal),
            cursor: Mutex::new(0),
            seen: Mutex::new(seen),
            outgoing: Mutex::new(Vec::new()),
            inbox: Mutex::new(Inbox::default()),
            sessions: Mutex::new(sessions),
            notify: Notify::new(),
            opened: Mutex::new(0),
            park_now: Notify::new(),
            park_requested: AtomicBool::new(false),
            parked_len: Mutex::new(None),
            idle: AtomicU64::new(0),
        }
    }

    /// The journal entries not in the store yet, and the index of the first.
    pub(crate) fn pending(&self) -> (usize, Vec<Entry>) {
        let journal = lock(&self.journal);
        let durable = (*lock(&self.durable)).min(journal.len());
        (durable, journal[durable..].to_vec())
    }

    /// Hands the messages the flow has sent to the messenger, in the order sent. On an error
    /// the ones not yet handed over stay queued.
    pub(crate) async fn send_outgoing(&self, transport: &dyn Transport) -> Result<(), FlowError> {
        loop {
            let OutgoingMessage { id, party, session, to_initiator, message } = {
                let mut outgoing = lock(&self.outgoing);
                if outgoing.is_empty() {
                    return Ok(());
                }
                outgoing.remove(0)
            };
            let envelope = Envelope { to_initiator, message };
            if let Err(e) = transport.send(id, party.clone(), session, encoding::encode(&envelope)).await {
                // Put back for the retry, still first.
                lock(&self.outgoing).insert(0, OutgoingMessage { id, party, session, to_initiator, message: envelope.message });
                return Err(e);
            }
        }
    }

    /// Turns the last message queued for each session into a `Final` when it is a `Data`:
    /// the flow is ending, and its counterparty learns that with the message. Returns the
    /// sessions so told, as (session id, party, whether it goes to the initiator).
    pub(crate) fn finalise_outgoing(&self) -> HashSet<(u64, X500Name, bool)> {
        let mut outgoing = lock(&self.outgoing);
        let (mut last, mut told) = (HashSet::new(), HashSet::new());
        for m in outgoing.iter_mut().rev() {
            let key = (m.session, m.party.clone(), m.to_initiator);
            if !last.insert(key.clone()) {
                continue;
            }
            if let SessionMessage::Data(bytes) = &mut m.message {
                m.message = SessionMessage::Final(std::mem::take(bytes));
                told.insert(key);
            }
        }
        told
    }

    /// Writes the pending journal entries, with `next` after them (if any), in one write.
    /// Messages sent before them reach the messenger first: a journaled `Sent` is never
    /// replayed, so it must not be in the store before its message is in the outbox.
    async fn write_pending(&self, shared: &Shared, next: Option<&Entry>) -> Result<(), FlowError> {
        self.send_outgoing(&*shared.transport).await?;
        let store: &dyn DynStore = &*shared.store;
        let (first, mut entries) = self.pending();
        entries.extend(next.cloned());
        if entries.is_empty() {
            return Ok(());
        }
        store.append(self.id, first, &entries).await?;
        failpoint();
        *lock(&self.durable) = first + entries.len();
        Ok(())
    }

    /// Makes the whole journal durable (before the flow is parked).
    pub(crate) async fn flush(&self, shared: &Shared) -> Result<(), FlowError> {
        self.write_pending(shared, None).await
    }

    /// Queues a received message for its session and wakes the flow.
    pub(crate) fn push(&self, session: u64, id: MessageId, received: Received) {
        lock(&self.inbox).queues.entry(session).or_default().push_back((id, received));
        self.notify.notify_one();
    }

    /// The next message queued for `session`; with none, the flow is marked waiting.
    fn take(&self, session: u64) -> Option<(MessageId, Received)> {
        let mut inbox = lock(&self.inbox);
        let next = inbox.queues.get_mut(&session).and_then(VecDeque::pop_front);
        inbox.waiting = if next.is_none() { Some(Wait::Message) } else { None };
        next
    }

    fn set_waiting(&self, waiting: Option<Wait>) {
        lock(&self.inbox).waiting = waiting;
    }

    /// What the flow waits for, if it waits with nothing queued on any session: then it can
    /// be parked without losing a delivered message.
    pub(crate) fn parkable(&self) -> Option<Wait> {
        let inbox = lock(&self.inbox);
        if inbox.queues.values().all(VecDeque::is_empty) { inbox.waiting } else { None }
    }

    /// Sessions whose counterparty's flow has ended: its `End` (or error) is queued here or
    /// was received. Such a counterparty drops whatever this flow sends it.
    pub(crate) fn ended_sessions(&self) -> Vec<u64> {
        let ended = |r: &Received| matches!(r, Received::Ended | Received::Error(_));
        let mut sessions: Vec<u64> =
            lock(&self.inbox).queues.iter().filter(|(_, q)| q.iter().any(|(_, r)| ended(r))).map(|(s, _)| *s).collect();
        for e in lock(&self.journal).iter() {
            if let Entry::Received { session, outcome, .. } = e
                && ended(outcome)
            {
                sessions.push(*session);
            }
        }
        sessions
    }

    /// Every session as the engine routes messages: (party, session id, whether this flow opened it).
    pub(crate) fn session_keys(&self) -> Vec<(X500Name, u64, bool)> {
        lock(&self.sessions).iter().filter_map(|(id, s)| s.party.clone().map(|p| (p, *id, s.initiator))).collect()
    }

    /// Counts every session as opened on the wire (for telling them all when killing a flow
    /// rebuilt from its journal).
    pub(crate) fn assume_opened(&self) {
        for s in lock(&self.sessions).values_mut() {
            s.init_sent = true;
        }
    }

    /// Sessions to tell when the flow ends: (session id, party, whether the message goes to the initiator).
    pub(crate) fn open_sessions(&self) -> Vec<(u64, X500Name, bool)> {
        lock(&self.sessions)
            .iter()
            .filter(|(_, s)| !s.initiator || s.init_sent)
            .filter_map(|(id, s)| s.party.clone().map(|p| (*id, p, !s.initiator)))
            .collect()
    }
}

/// The id of the `n`th session a flow opens, at journal step `step`: from the hash part of a
/// derived id (its first 6 bytes are the flow id's time, shared by flows started in the same
/// millisecond).
fn session_id(flow: FlowId, n: u64, step: usize) -> u64 {
    let derived = MessageId::derived(&MessageId(flow.0), &format!("session-{n}-{step}"));
    let mut hash = [0u8; 8];
    hash.copy_from_slice(&derived.0.as_bytes()[8..]);
    u64::from_be_bytes(hash)
}

/// What a flow touches the world through. Cheap to clone.
#[derive(Clone)]
pub struct FlowContext {
    pub(crate) run: Arc<Run>,
    pub(crate) shared: Arc<Shared>,
}

impl FlowContext {
    /// This flow's id.
    pub fn id(&self) -> FlowId {
        self.run.id
    }

    /// The node this flow runs on.
    pub fn me(&self) -> &X500Name {
        &self.shared.me
    }

    /// For a responder: the session its initiator opened.
    pub fn initiating_session(&self) -> Option<Session> {
        lock(&self.run.sessions)
            .iter()
            .find(|(_, s)| !s.initiator)
            .and_then(|(id, s)| s.party.clone().map(|party| Session { id: *id, party, initiator: false }))
    }

    /// The version of this flow's code it started as (kept in its record): after an upgrade
    /// registers a new version, a flow started before it can keep taking the old version's
    /// steps, so its journal replays. For a responder, the same as
    /// [`FlowContext::initiator_version`].
    pub fn version(&self) -> u32 {
        self.run.version
    }

    /// For a responder: the version of the protocol its initiator asked for (its `Init`'s, as
    /// [`FlowContext::initiate_as`] named it), so one responder can speak several versions.
    /// `None` for a flow started on this node.
    pub fn initiator_version(&self) -> Option<u32> {
        self.run.record.initiator.as_ref().map(|_| self.run.version)
    }

    /// The recorded entry for the next step when replaying, or `None` when running live.
    fn replay(&self, ask: &Ask) -> Result<Option<Entry>, FlowError> {
        let journal = lock(&self.run.journal);
        let mut cursor = lock(&self.run.cursor);
        let Some(entry) = journal.get(*cursor) else { return Ok(None) };
        if !ask.matches(entry) {
            return Err(FlowError::CodeChanged {
                flow: self.run.name.clone(),
                step: *cursor,
                journal: entry.describe(),
                code: ask.describe(),
            });
        }
        *cursor += 1;
        Ok(Some(entry.clone()))
    }

    /// Makes a live step durable: appends it (after any pending steps) to the journal in the
    /// store, then in memory. For steps whose value a replay could not reproduce (the clock,
    /// randomness, a side effect's result, a received message), or that the world acts on.
    async fn record(&self, entry: Entry) -> Result<(), FlowError> {
        self.run.write_pending(&self.shared, Some(&entry)).await?;
        lock(&self.run.journal).push(entry);
        *lock(&self.run.cursor) += 1;
        *lock(&self.run.durable) = lock(&self.run.journal).len();
        Ok(())
    }

    /// Appends a live step to the journal in memory only; it reaches the store with the next
    /// durable step (or when the flow parks or ends). For steps a replay repeats identically
    /// from the durable journal before them — opening a session (its id is derived), sending
    /// (the message's id and content are derived; a resend is dropped as a duplicate),
    /// reporting progress — so losing them in a crash loses nothing: the replay runs them
    /// again. Every step the world could see differently (a clock reading, randomness, a
    /// side effect) is durable, and so is everything before it.
    fn record_later(&self, entry: Entry) {
        lock(&self.run.journal).push(entry);
        *lock(&self.run.cursor) += 1;
    }

    fn step_index(&self) -> usize {
        *lock(&self.run.cursor)
    }

    /// Opens a session with `party`; the counterparty's responder starts when the first
    /// message arrives.
    pub async fn initiate(&self, party: &X500Name) -> Result<Session, FlowError> {
        if party == &self.shared.me {
            return Err(FlowError::Invalid(format!("flow {} cannot open a session with its own node", self.run.name)));
        }
        if let Some(check) = &self.shared.counterparty_check {
            check(party, &self.run.name).map_err(|reason| FlowError::CounterpartyRefused { party: party.to_string(), reason })?;
        }
        let ask = Ask::Open(party.clone());
        let session = match self.replay(&ask)? {
            Some(Entry::Opened { session, .. }) => session,
            _ => {
                let n = {
                    let mut opened = lock(&self.run.opened);
                    *opened += 1;
                    *opened
                };
                let session = session_id(self.run.id, n, self.step_index());
                self.record_later(Entry::Opened { session, party: party.clone() });
                session
            }
        };
        lock(&self.run.sessions).entry(session).or_insert(SessionState {
            party: Some(party.clone()),
            initiator: true,
            init_sent: false,
            protocol: None,
        });
        self.shared.bind(party.clone(), session, true, self.run.id);
        Ok(Session { id: session, party: party.clone(), initiator: true })
    }

    /// Opens a session whose counterparty runs the responder registered for `protocol`
    /// (version `version`) rather than for this flow's name: how a standard protocol (the
    /// notary's, say) is spoken from inside any application flow.
    pub async fn initiate_as(&self, party: &X500Name, protocol: &str, version: u32) -> Result<Session, FlowError> {
        let session = self.initiate(party).await?;
        if let Some(s) = lock(&self.run.sessions).get_mut(&session.id) {
            s.protocol = Some((protocol.to_string(), version));
        }
        Ok(session)
    }

    /// The flow name and version the counterparty's responder is chosen by on `session`.
    fn protocol(&self, session: &Session) -> (String, u32) {
        lock(&self.run.sessions)
            .get(&session.id)
            .and_then(|s| s.protocol.clone())
            .unwrap_or_else(|| (self.run.name.clone(), self.run.version))
    }

    /// Queues `message` for the messenger (see [`FlowContext::send`]).
    fn queue(&self, session: &Session, id: MessageId, message: SessionMessage) {
        lock(&self.run.outgoing).push(OutgoingMessage {
            id,
            party: session.party.clone(),
            session: session.id,
            to_initiator: !session.initiator,
            message,
        });
    }

    /// Sends `value` (BCS) on `session`.
    ///
    /// The message reaches the messenger (its outbox, durably) when the flow next waits —
    /// at a receive or a sleep — or writes its journal, or ends, in the order sent. Until
    /// then nobody could have acted on it, and the flow has not depended on an answer. A
    /// flow whose last act on a session is a send has that message carry its end too
    /// ([`SessionMessage::Final`]). An error in handing it over surfaces at that point.
    pub async fn send<T: Serialize>(&self, session: &Session, value: &T) -> Result<(), FlowError> {
        let ask = Ask::Send(session.id);
        if self.replay(&ask)?.is_some() {
            self.mark_init_sent(session);
            return Ok(());
        }
        let id = MessageId::derived(&MessageId(self.run.id.0), &format!("step-{}", self.step_index()));
        let payload = encoding::encode(value);
        let message = if session.initiator && !self.init_sent(session) {
            {
                let (flow, version) = self.protocol(session);
                SessionMessage::Init { flow, version, payload: Some(payload) }
            }
        } else {
            SessionMessage::Data(payload)
        };
        self.queue(session, id, message);
        self.record_later(Entry::Sent { session: session.id, message: id });
        self.mark_init_sent(session);
        Ok(())
    }

    fn init_sent(&self, session: &Session) -> bool {
        lock(&self.run.sessions).get(&session.id).is_some_and(|s| s.init_sent)
    }

    fn mark_init_sent(&self, session: &Session) {
        if let Some(s) = lock(&self.run.sessions).get_mut(&session.id) {
            s.init_sent = true;
        }
    }

    /// Receives the next message on `session` and decodes it as a `T`.
    pub async fn receive<T: DeserializeOwned>(&self, session: &Session) -> Result<T, FlowError> {
        let outcome = match self.replay(&Ask::Receive(session.id))? {
            Some(Entry::Received { outcome, .. }) => {
                // It received, so the session was opened: a later send is Data, not a second Init.
                self.mark_init_sent(session);
                outcome
            }
            // Without a deadline it returns only with a message.
            _ => self.receive_live(session, None).await?.unwrap_or(Received::Ended),
        };
        self.decode::<T>(session, outcome)
    }

    /// Receives the next message on `session`, or `None` if none has come by `deadline`
    /// (microseconds since the Unix epoch). Either outcome is journaled, so a replay after a
    /// restart gives the same answer; a flow waiting here may be parked and is woken by the
    /// message or at the deadline. A message that comes after the deadline stays queued for
    /// the session: a later receive on it gets it.
    pub async fn receive_until<T: DeserializeOwned>(&self, session: &Session, deadline: i64) -> Result<Option<T>, FlowError> {
        let outcome = match self.replay(&Ask::ReceiveUntil(session.id))? {
            Some(Entry::Received { outcome, .. }) => {
                self.mark_init_sent(session);
                outcome
            }
            Some(_) => {
                // Timed out before; the session was opened if the code sent on it.
                self.mark_init_sent(session);
                return Ok(None);
            }
            None => match self.receive_live(session, Some(deadline)).await? {
                Some(outcome) => outcome,
                None => return Ok(None),
            },
        };
        self.decode::<T>(session, outcome).map(Some)
    }

    fn decode<T: DeserializeOwned>(&self, session: &Session, outcome: Received) -> Result<T, FlowError> {
        match outcome {
            Received::Data(bytes) => encoding::decode(&bytes).map_err(|e| FlowError::BadMessage {
                party: session.party.to_string(),
                flow: self.run.name.clone(),
                expected: std::any::type_name::<T>().to_string(),
                reason: e.to_string(),
            }),
            Received::Error(message) => {
                Err(FlowError::Counterparty { party: session.party.to_string(), flow: self.run.name.clone(), message })
            }
            Received::Ended => Err(FlowError::SessionEnded { party: session.party.to_string(), flow: self.run.name.clone() }),
        }
    }

    /// Waits for the next message on `session`; with a `deadline`, `None` (journaled) once it
    /// passes with nothing come.
    async fn receive_live(&self, session: &Session, deadline: Option<i64>) -> Result<Option<Received>, FlowError> {
        if session.initiator && !self.init_sent(session) {
            // Receiving first: open the session with an empty Init (idempotent id).
            let id = MessageId::derived(&MessageId(self.run.id.0), &format!("init-{}", session.id));
            let (flow, version) = self.protocol(session);
            self.queue(session, id, SessionMessage::Init { flow, version, payload: None });
            self.mark_init_sent(session);
        }
        // What it sent goes out before it waits for an answer.
        self.run.send_outgoing(&*self.shared.transport).await?;
        loop {
            let notified = self.run.notify.notified();
            let next = self.run.take(session.id);
            match next {
                Some((id, received)) => {
                    self.shared.not_idle(&self.run);
                    let key = (id, matches!(received, Received::Ended));
                    if lock(&self.run.seen).contains(&key) {
                        self.shared.transport.processed(vec![id]).await?;
                        continue;
                    }
                    if let Err(e) = self.record(Entry::Received { session: session.id, message: id, outcome: received.clone() }).await {
                        // Not journaled: keep it for the retry.
                        lock(&self.run.inbox).queues.entry(session.id).or_default().push_front((id, received));
                        return Err(e);
                    }
                    lock(&self.run.seen).insert(key);
                    // Marking it processed need not hold the flow up: if that write is lost in
                    // a crash, the message comes back and is dropped as already journaled.
                    self.shared.processed_later([id]);
                    return Ok(Some(received));
                }
                None => match deadline {
                    None => {
                        self.shared.idle(&self.run);
                        self.idle_wait(notified, None).await;
                    }
                    Some(deadline) => {
                        let left = deadline.saturating_sub(crate::now_micros());
                        if left <= 0 {
                            self.run.set_waiting(None);
                            self.shared.not_idle(&self.run);
                            self.record(Entry::TimedOut { session: session.id }).await?;
                            return Ok(None);
                        }
                        let left = Duration::from_micros(left.unsigned_abs());
                        self.run.set_waiting(Some(Wait::MessageUntil(deadline)));
                        self.shared.idle(&self.run);
                        let wake = async {
                            tokio::select! {
                                () = notified => {}
                                () = tokio::time::sleep(left) => {}
                            }
                        };
                        self.idle_wait(wake, Some(left)).await;
                    }
                },
            }
        }
    }

    /// Waits for `wake` (a message's notification, or the end of a sleep); if that takes
    /// longer than the engine's eviction threshold, asks for the flow to be parked meanwhile
    /// (the request is the task's to carry out: see `FlowEngine::drive`). `length` is how long
    /// `wake` will take at most, when known.
    async fn idle_wait(&self, wake: impl std::future::Future<Output = ()>, length: Option<Duration>) {
        match self.shared.options.evict_after {
            Some(after) if after.is_zero() => {
                self.run.park_now.notify_one();
                wake.await;
            }
            Some(after) if length.is_none_or(|l| l > after) => {
                tokio::pin!(wake);
                tokio::select! {
                    () = &mut wake => {}
                    () = tokio::time::sleep(after) => {
                        self.run.park_now.notify_one();
                        wake.await;
                    }
                }
            }
            _ => wake.await,
        }
    }

    /// Sends `value`, then receives a `R`.
    pub async fn send_and_receive<T: Serialize, R: DeserializeOwned>(&self, session: &Session, value: &T) -> Result<R, FlowError> {
        self.send(session, value).await?;
        self.receive(session).await
    }

    /// The time (microseconds since the Unix epoch), the same on replay.
    pub async fn now(&self) -> Result<i64, FlowError> {
        if let Some(Entry::Now(t)) = self.replay(&Ask::Now)? {
            return Ok(t);
        }
        let t = crate::now_micros();
        self.record(Entry::Now(t)).await?;
        Ok(t)
    }

    /// A random number, the same on replay.
    pub async fn random(&self) -> Result<u64, FlowError> {
        if let Some(Entry::Random(r)) = self.replay(&Ask::Random)? {
            return Ok(r);
        }
        let r = rand::random();
        self.record(Entry::Random(r)).await?;
        Ok(r)
    }

    /// Sleeps until `until` (microseconds since the Unix epoch); after a restart it wakes at
    /// the same time, not later by the time it was down.
    pub async fn sleep_until(&self, until: i64) -> Result<(), FlowError> {
        if self.replay(&Ask::Sleep)?.is_some() {
            return Ok(());
        }
        self.run.send_outgoing(&*self.shared.transport).await?;
        let wait = until.saturating_sub(crate::now_micros());
        if wait > 0 {
            let wait = Duration::from_micros(wait.unsigned_abs());
            self.run.set_waiting(Some(Wait::Sleep(until)));
            self.shared.idle(&self.run);
            self.idle_wait(tokio::time::sleep(wait), Some(wait)).await;
            self.run.set_waiting(None);
            self.shared.not_idle(&self.run);
        }
        self.record(Entry::Slept(until)).await
    }

    /// Runs `effect` once: its result is journaled under `key` and returned again on replay.
    /// If the node dies while it runs, it runs again after the restart — give the outside
    /// system `key` so it can recognise the repeat.
    pub async fn side_effect<T, F, Fut>(&self, key: &str, effect: F) -> Result<T, FlowError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, FlowError>>,
    {
        let idempotency_key = format!("{}/{key}", self.run.id);
        self.side_effect_settled(key, || effect(idempotency_key), |_| false).await
    }

    /// [`Self::side_effect`] for a question whose answer may be final: when `settled` says
    /// the answer is one no later run could get differently (nothing missing, of what is
    /// never deleted), it is journaled with the flow's next durable step instead of in a
    /// write of its own. A crash before that step loses it; the replay asks again and gets
    /// the same answer. Any other answer is made durable at once, as a side effect's is.
    pub(crate) async fn side_effect_settled<T, F, Fut>(
        &self,
        key: &str,
        effect: F,
        settled: impl FnOnce(&T) -> bool,
    ) -> Result<T, FlowError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, FlowError>>,
    {
        let ask = Ask::SideEffect(key.to_string());
        if let Some(Entry::SideEffect { result, .. }) = self.replay(&ask)? {
            return encoding::decode(&result).map_err(|e| FlowError::Invalid(format!("journaled result of side effect {key:?}: {e}")));
        }
        let value = effect().await?;
        let entry = Entry::SideEffect { key: key.to_string(), result: encoding::encode(&value) };
        if settled(&value) {
            self.record_later(entry);
        } else {
            self.record(entry).await?;
        }
        Ok(value)
    }

    /// Reports a progress step (shown to clients waiting for the flow).
    pub async fn progress(&self, step: &str) -> Result<(), FlowError> {
        if self.replay(&Ask::Progress(step.to_string()))?.is_some() {
            return Ok(());
        }
        let index = self.step_index();
        self.record_later(Entry::Progress(step.to_string()));
        let _ = self.shared.progress.send((self.run.id, index, step.to_string()));
        if let Some(watchers) = lock(&self.shared.watched).get(&self.run.id) {
            let _ = watchers.send((index, step.to_string()));
        }
        Ok(())
    }

    /// Runs the registered flow `name` as part of this one (its steps join this journal).
    pub async fn subflow(&self, name: &str, args: serde_json::Value) -> Result<serde_json::Value, FlowError> {
        let def = self
            .shared
            .registry
            .get(name)
            .ok_or_else(|| FlowError::UnknownFlow { name: name.to_string(), known: self.shared.registry.names() })?;
        (def.run)(self.clone(), args).await
    }
}

/// Crash testing: with `TREATY_FAILPOINT_AFTER_JOURNAL=N` in the environment, the process
/// aborts (no destructors, no flushing — as good as SIGKILL) right after the N-th write to a
/// flow journal (a durable step with the steps pending before it, or a flow's end). For tests
/// only; see crates/treaty-cli/tests/network.rs.
pub(crate) fn failpoint() {
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if let Some(n) = *AT.get_or_init(|| std::env::var("TREATY_FAILPOINT_AFTER_JOURNAL").ok().and_then(|v| v.parse().ok()))
        && COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == n
    {
        eprintln!("failpoint: aborting after journal entry {n}");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flows started in the same millisecond (ids alike but for their random bits) open
    /// sessions of distinct ids: a shared id would route one flow's messages to another.
    #[test]
    fn sessions_of_flows_started_together_are_distinct() {
        let ids: std::collections::BTreeSet<u64> = (0..20_000)
            .map(|_| FlowId(uuid::Builder::from_unix_timestamp_millis(1_800_000_000_000, &rand::random()).into_uuid()))
            .map(|flow| session_id(flow, 1, 0))
            .collect();
        assert_eq!(ids.len(), 20_000);
    }
}
