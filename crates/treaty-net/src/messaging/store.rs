//! The durable side of messaging: the outbox (messages accepted for sending, kept until the
//! receiver acknowledges them) and the inbox (messages received, deduplicated by id, kept
//! until the application has processed them).
//!
//! [`MessageStore`] is implemented by `treaty-storage` over SQLite and PostgreSQL (what nodes
//! run) and by [`MemoryMessageStore`] here (unit tests and simulation only: it forgets
//! everything when dropped).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use treaty_core::X500Name;

/// A message's globally unique id (a random UUID, chosen by the sender when it is enqueued).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub uuid::Uuid);

impl MessageId {
    /// A fresh id: a version 7 UUID (48-bit millisecond timestamp, then 74 random bits).
    /// Time-ordered ids keep the receiver's inbox index append-mostly, which makes storing a
    /// batch several times cheaper than with fully random ids once the inbox is large.
    pub fn random() -> MessageId {
        let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        MessageId(uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid())
    }
}

impl MessageId {
    /// An id derived from another message's id and a purpose (a version 8 UUID): the base's
    /// first 6 bytes, then SHA-256 of both. A handler that answers message `m` with id
    /// `derived(m, "reply")` may run twice after a crash and still be processed once: the
    /// receiver's inbox drops the second copy.
    ///
    /// Keeping the base's first bytes keeps the time order of a flow's ids (version 7 UUIDs,
    /// milliseconds first) in every id derived from them — its messages, its counterparties'
    /// responders and their messages — so the outbox, inbox and flow tables' indexes on those
    /// ids take new rows at their end rather than one random page each.
    pub fn derived(base: &MessageId, purpose: &str) -> MessageId {
        let digest =
            treaty_core::SecureHash::sha256(&[b"TREATY/MESSAGE-ID/v2\0".as_slice(), base.0.as_bytes(), purpose.as_bytes()].concat());
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&base.0.as_bytes()[..6]);
        bytes[6..].copy_from_slice(&digest.as_bytes()[..10]);
        MessageId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }
}

impl MessageId {
    /// The id a receiver files message `self` from `sender` under ([`InboundMessage::id`]).
    /// Senders choose their ids, and a peer can compute some of another's (a responder's are
    /// derived from the opening message its initiator chose): filed under the sender's id
    /// alone, a message sent first with such an id would make the other peer's a duplicate,
    /// dropped. Scoped to the sender, two senders' ids never meet, while a copy resent by the
    /// same sender is still the same id. [`MessageId::derived`] keeps the time-ordered prefix.
    pub fn received_from(&self, sender: &X500Name) -> MessageId {
        MessageId::derived(self, &format!("from {sender}"))
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A message accepted for sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Unique id; the receiver deduplicates by it.
    pub id: MessageId,
    /// Who it is for.
    pub destination: X500Name,
    /// The session (conversation) it belongs to; order is kept within a session.
    pub session: u64,
    /// What it is, for the receiving application (e.g. a flow protocol name).
    pub topic: String,
    /// The content.
    pub payload: Vec<u8>,
    /// Delivery attempts so far (maintained by the store).
    pub attempts: u32,
}

/// A message received and stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundMessage {
    /// The id it is filed under here: the sender's id scoped to the sender
    /// ([`MessageId::received_from`]). The inbox de-duplicates by it.
    pub id: MessageId,
    /// Who sent it (from the TLS certificate of the connection it arrived on).
    pub sender: X500Name,
    /// The sender's session.
    pub session: u64,
    /// What it is.
    pub topic: String,
    /// The content.
    pub payload: Vec<u8>,
}

/// A storage failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message store: {message}")]
pub struct StoreError {
    /// What went wrong.
    pub message: String,
    /// Worth retrying (database busy, connection lost) rather than a bug or corruption.
    pub transient: bool,
}

impl StoreError {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> StoreError {
        StoreError { message: message.into(), transient: true }
    }
    /// A failure not worth retrying.
    pub fn permanent(message: impl Into<String>) -> StoreError {
        StoreError { message: message.into(), transient: false }
    }
}

/// The outbox and inbox. Every method that changes something is durable when it returns Ok:
/// a crash afterwards loses nothing.
pub trait MessageStore: Send + Sync + 'static {
    /// Adds messages to the outbox, all or none, in this order. A message id already in the
    /// outbox is an error.
    fn enqueue(&self, messages: Vec<OutboundMessage>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `limit` outbox messages for `destination`, oldest first (enqueue order).
    fn outbox(&self, destination: &X500Name, limit: usize) -> impl Future<Output = Result<Vec<OutboundMessage>, StoreError>> + Send;

    /// Every destination with messages in the outbox.
    fn outbox_destinations(&self) -> impl Future<Output = Result<Vec<X500Name>, StoreError>> + Send;

    /// Counts one more delivery attempt for each of `ids` still in the outbox.
    fn attempted(&self, ids: &[MessageId]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes acknowledged messages from the outbox (unknown ids are ignored).
    fn acknowledged(&self, ids: &[MessageId]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores received messages in the inbox, all in one transaction, and returns those that
    /// were new; a message whose id the inbox already holds (processed or not) is dropped.
    fn receive(&self, messages: Vec<InboundMessage>) -> impl Future<Output = Result<Vec<InboundMessage>, StoreError>> + Send;

    /// Up to `limit` inbox messages not yet processed, in arrival order.
    fn unprocessed(&self, limit: usize) -> impl Future<Output = Result<Vec<InboundMessage>, StoreError>> + Send;

    /// Marks inbox messages processed (their ids stay, so redeliveries are still dropped).
    fn processed(&self, ids: &[MessageId]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// [`MessageStore::enqueue`] and [`MessageStore::processed`] in one transaction: the
    /// answer to a received message and the mark that it was handled become durable together,
    /// so after a crash the message is either answered (and not handed over again) or still
    /// unprocessed (and handled again), never answered twice.
    fn enqueue_processed(
        &self,
        messages: Vec<OutboundMessage>,
        processed: &[MessageId],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[derive(Default)]
struct Memory {
    next: u64,
    outbox: BTreeMap<u64, OutboundMessage>,
    outbox_index: HashMap<MessageId, u64>,
    inbox_seen: HashMap<MessageId, bool>,
    inbox: BTreeMap<u64, InboundMessage>,
}

/// An in-memory [`MessageStore`] for unit tests and simulation. Not durable.
#[derive(Default)]
pub struct MemoryMessageStore {
    inner: Mutex<Memory>,
}

impl Memory {
    fn enqueue(&mut self, messages: Vec<OutboundMessage>) -> Result<(), StoreError> {
        if let Some(dup) = messages.iter().find(|msg| self.outbox_index.contains_key(&msg.id)) {
            return Err(StoreError::permanent(format!("message {} is already in the outbox", dup.id)));
        }
        let mut ids = std::collections::HashSet::new();
        if let Some(dup) = messages.iter().find(|msg| !ids.insert(msg.id)) {
            return Err(StoreError::permanent(format!("message {} appears twice in one batch", dup.id)));
        }
        for msg in messages {
            self.next += 1;
            self.outbox_index.insert(msg.id, self.next);
            self.outbox.insert(self.next, msg);
        }
        Ok(())
    }

    fn processed(&mut self, ids: &[MessageId]) {
        for id in ids {
            self.inbox_seen.insert(*id, true);
        }
        self.inbox.retain(|_, msg| !ids.contains(&msg.id));
    }
}

impl MemoryMessageStore {
    fn with<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

impl MessageStore for MemoryMessageStore {
    async fn enqueue(&self, messages: Vec<OutboundMessage>) -> Result<(), StoreError> {
        self.with(|m| m.enqueue(messages))
    }

    async fn outbox(&self, destination: &X500Name, limit: usize) -> Result<Vec<OutboundMessage>, StoreError> {
        Ok(self.with(|m| m.outbox.values().filter(|msg| &msg.destination == destination).take(limit).cloned().collect()))
    }

    async fn outbox_destinations(&self) -> Result<Vec<X500Name>, StoreError> {
        Ok(self.with(|m| {
            let mut names: Vec<X500Name> = m.outbox.values().map(|msg| msg.destination.clone()).collect();
            names.sort();
            names.dedup();
            names
        }))
    }

    async fn attempted(&self, ids: &[MessageId]) -> Result<(), StoreError> {
        self.with(|m| {
            for id in ids {
                if let Some(seq) = m.outbox_index.get(id).copied()
                    && let Some(msg) = m.outbox.get_mut(&seq)
                {
                    msg.attempts += 1;
                }
            }
        });
        Ok(())
    }

    async fn acknowledged(&self, ids: &[MessageId]) -> Result<(), StoreError> {
        self.with(|m| {
            for id in ids {
                if let Some(seq) = m.outbox_index.remove(id) {
                    m.outbox.remove(&seq);
                }
            }
        });
        Ok(())
    }

    async fn receive(&self, messages: Vec<InboundMessage>) -> Result<Vec<InboundMessage>, StoreError> {
        Ok(self.with(|m| {
            let mut new = Vec::new();
            for msg in messages {
                if m.inbox_seen.contains_key(&msg.id) {
                    continue;
                }
                m.inbox_seen.insert(msg.id, false);
                m.next += 1;
                m.inbox.insert(m.next, msg.clone());
                new.push(msg);
            }
            new
        }))
    }

    async fn unprocessed(&self, limit: usize) -> Result<Vec<InboundMessage>, StoreError> {
        Ok(self.with(|m| m.inbox.values().take(limit).cloned().collect()))
    }

    async fn processed(&self, ids: &[MessageId]) -> Result<(), StoreError> {
        self.with(|m| m.processed(ids));
        Ok(())
    }

    async fn enqueue_processed(&self, messages: Vec<OutboundMessage>, processed: &[MessageId]) -> Result<(), StoreError> {
        self.with(|m| {
            m.enqueue(messages)?;
            m.processed(processed);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Derived ids are deterministic, differ by purpose and base, and keep the base's time
    /// prefix through chains of derivations.
    #[test]
    fn derived_ids_are_stable_distinct_and_keep_the_base_prefix() {
        let base = MessageId(uuid::Uuid::from_bytes([1, 2, 3, 4, 5, 6, 0x70, 8, 9, 10, 11, 12, 13, 14, 15, 16]));
        let step = MessageId::derived(&base, "step-3");
        assert_eq!(step, MessageId::derived(&base, "step-3"));
        assert_ne!(step, MessageId::derived(&base, "step-4"));
        let other = MessageId(uuid::Uuid::from_bytes([1, 2, 3, 4, 5, 6, 0x70, 8, 9, 10, 11, 12, 13, 14, 15, 17]));
        assert_ne!(step, MessageId::derived(&other, "step-3"));
        let responder = MessageId::derived(&step, "responder");
        for id in [step, responder] {
            assert_eq!(id.0.as_bytes()[..6], base.0.as_bytes()[..6]);
            assert_eq!(id.0.get_version_num(), 8);
        }
    }
}
