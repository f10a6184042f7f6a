//! What a flow's journal records: one entry per step that touched the world, in order.

use serde::{Deserialize, Serialize};
use treaty_core::X500Name;
use treaty_net::messaging::MessageId;

/// A flow's id: a UUID, time-ordered for flows started here (see [`FlowId::random`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlowId(pub uuid::Uuid);

impl FlowId {
    /// A fresh id: a version 7 UUID (milliseconds since the Unix epoch, then 74 random bits).
    /// Ids that grow with time land at the end of the flow table's and the journal's indexes:
    /// a commit of many new flows dirties a few pages there, where random ids dirtied one
    /// page per flow per index, each written whole to the write-ahead log.
    pub fn random() -> FlowId {
        let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let millis = u64::try_from(millis).unwrap_or(u64::MAX);
        let random: [u8; 10] = rand::random();
        FlowId(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
    }
    /// The id of the responder started by the session-opening message `init`: derived, so a
    /// redelivered opening message finds the flow it already started.
    pub fn responder_for(init: &MessageId) -> FlowId {
        FlowId(MessageId::derived(init, "responder").0)
    }
}

impl std::fmt::Display for FlowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for FlowId {
    type Err = String;
    fn from_str(s: &str) -> Result<FlowId, String> {
        uuid::Uuid::parse_str(s).map(FlowId).map_err(|e| format!("{s:?} is not a flow id: {e}"))
    }
}

/// One journaled step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A session with `party` was opened by this flow (the initiating side).
    Opened {
        /// Session id.
        session: u64,
        /// Counterparty.
        party: X500Name,
    },
    /// A message was sent on a session.
    Sent {
        /// Session id.
        session: u64,
        /// The message's id.
        message: MessageId,
    },
    /// A message was received on a session.
    Received {
        /// Session id.
        session: u64,
        /// The message's id (so a redelivery is recognised).
        message: MessageId,
        /// What was received: the counterparty's payload, or its error.
        outcome: Received,
    },
    /// The clock was read (microseconds since the Unix epoch).
    Now(i64),
    /// Randomness was drawn.
    Random(u64),
    /// The flow slept until this time (microseconds since the Unix epoch).
    Slept(i64),
    /// A side effect ran, with this idempotency key, and returned this.
    SideEffect {
        /// The key.
        key: String,
        /// Its result.
        result: Vec<u8>,
    },
    /// A progress step was reported.
    Progress(String),
    /// Nothing came on a session by a receive's deadline ([`crate::FlowContext::receive_until`]).
    TimedOut {
        /// Session id.
        session: u64,
    },
}

/// What a receive got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Received {
    /// A payload.
    Data(Vec<u8>),
    /// The counterparty's flow failed on purpose with this message.
    Error(String),
    /// The counterparty's flow ended.
    Ended,
}

impl Entry {
    /// The step as the code asks for it, for the "flow code changed" check.
    pub fn describe(&self) -> String {
        match self {
            Entry::Opened { party, .. } => format!("open a session with {party}"),
            Entry::Sent { session, .. } => format!("send on session {session:x}"),
            Entry::Received { session, .. } => format!("receive on session {session:x}"),
            Entry::Now(_) => "read the clock".into(),
            Entry::Random(_) => "draw randomness".into(),
            Entry::Slept(_) => "sleep".into(),
            Entry::SideEffect { key, .. } => format!("run side effect {key:?}"),
            Entry::Progress(step) => format!("report progress {step:?}"),
            Entry::TimedOut { session } => format!("receive on session {session:x} (timed out)"),
        }
    }
}

/// What a step asks for, matched against the journal on replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ask {
    Open(X500Name),
    Send(u64),
    Receive(u64),
    ReceiveUntil(u64),
    Now,
    Random,
    Sleep,
    SideEffect(String),
    Progress(String),
}

impl Ask {
    pub(crate) fn matches(&self, entry: &Entry) -> bool {
        match (self, entry) {
            (Ask::Open(p), Entry::Opened { party, .. }) => p == party,
            (Ask::Send(s), Entry::Sent { session, .. }) => s == session,
            (Ask::Receive(s), Entry::Received { session, .. }) => s == session,
            (Ask::ReceiveUntil(s), Entry::Received { session, .. } | Entry::TimedOut { session }) => s == session,
            (Ask::Now, Entry::Now(_)) | (Ask::Random, Entry::Random(_)) | (Ask::Sleep, Entry::Slept(_)) => true,
            (Ask::SideEffect(k), Entry::SideEffect { key, .. }) => k == key,
            (Ask::Progress(p), Entry::Progress(step)) => p == step,
            _ => false,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Ask::Open(p) => format!("open a session with {p}"),
            Ask::Send(s) => format!("send on session {s:x}"),
            Ask::Receive(s) => format!("receive on session {s:x}"),
            Ask::ReceiveUntil(s) => format!("receive on session {s:x} with a deadline"),
            Ask::Now => "read the clock".into(),
            Ask::Random => "draw randomness".into(),
            Ask::Sleep => "sleep".into(),
            Ask::SideEffect(k) => format!("run side effect {k:?}"),
            Ask::Progress(p) => format!("report progress {p:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// New flows' ids grow with time (so they append to the indexes keyed by them) and stay
    /// unique within a millisecond.
    #[test]
    fn flow_ids_are_time_ordered_and_distinct() {
        let first = FlowId::random();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let batch: Vec<FlowId> = (0..1000).map(|_| FlowId::random()).collect();
        assert_eq!(first.0.get_version_num(), 7);
        assert!(batch.iter().all(|id| *id > first), "an id of 2 ms later sorts after");
        let distinct: std::collections::BTreeSet<FlowId> = batch.iter().copied().collect();
        assert_eq!(distinct.len(), batch.len());
    }
}
