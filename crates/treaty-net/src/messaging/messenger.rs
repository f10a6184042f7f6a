//! The messenger: durable, deduplicated, ordered delivery over [`Link`]s.
//!
//! Sending: [`Messenger::send`] writes the messages to the outbox (durable when it returns)
//! and hands them to the destination's sender task. There is one sender task per destination;
//! it opens a link on demand (trying the peer's addresses in order), sends the oldest unsent
//! messages as one batch, waits for the acknowledgement and repeats; on any failure it drops
//! the link and retries with exponential back-off, forever. A link with nothing to send is
//! closed after the idle timeout.
//!
//! The sender works from memory: the messages handed to it since it last read the outbox. It
//! reads the outbox itself when memory may lack some (at start, after a failure, when a
//! rescan finds the outbox non-empty, when memory overflowed). Acknowledged messages are
//! deleted from the outbox in the background: the next batch does not wait for that commit
//! (a crash before it resends them, and the receiver drops the duplicates).
//!
//! Receiving: [`Messenger::serve_link`] reads batches from an accepted link, stores them in the
//! inbox in one transaction, each under its sender's id scoped to the sender
//! ([`MessageId::received_from`]; an id seen before from that sender is dropped there),
//! acknowledges the whole batch, and hands the new messages to the application in arrival
//! order. The application calls [`Messenger::processed`] when it has acted on one; messages not
//! yet processed are handed over again after a restart ([`Messenger::start`]).
//!
//! Order: one sender per destination sends in outbox order and waits for each batch's
//! acknowledgement, and the receiver stores a batch in order, so messages of a session arrive
//! in the order they were sent, across retries and restarts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use treaty_core::{X500Name, encoding};

use super::link::{Connector, Link};
use super::wire::{FRAME_OVERHEAD, Frame, MESSAGE_OVERHEAD, PROTOCOL_VERSION, WireMessage};
use super::{InboundMessage, MessageId, MessageStore, OutboundMessage, StoreError};
use crate::transport::TransportError;

/// Where a peer can be reached.
pub trait PeerDirectory: Send + Sync + 'static {
    /// The peer's addresses in order of preference; empty when it is unknown.
    fn addresses(&self, peer: &X500Name) -> Vec<String>;

    /// Whether `peer` may exchange messages now. A peer revoked while a link to or from it is
    /// open is cut off at its next batch (new links are refused by the TLS verifier).
    fn admits(&self, peer: &X500Name) -> bool {
        let _ = peer;
        true
    }
}

impl PeerDirectory for HashMap<X500Name, Vec<String>> {
    fn addresses(&self, peer: &X500Name) -> Vec<String> {
        self.get(peer).cloned().unwrap_or_default()
    }
}

impl<F: Fn(&X500Name) -> Vec<String> + Send + Sync + 'static> PeerDirectory for F {
    fn addresses(&self, peer: &X500Name) -> Vec<String> {
        self(peer)
    }
}

/// Tuning. The defaults suit a node; tests shorten the timers.
#[derive(Clone, Debug)]
pub struct MessengerConfig {
    /// The largest frame sent or accepted (the network parameters' `max_message_size`).
    pub max_message_size: u64,
    /// The most messages sent in one batch.
    pub max_batch: usize,
    /// How long to wait for an acknowledgement before giving the link up.
    pub ack_timeout: Duration,
    /// An outgoing link with nothing to send is closed after this long; an incoming link
    /// silent for twice as long is closed too.
    pub idle_timeout: Duration,
    /// First retry delay after a failure; doubles up to `retry_max`.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How often the outbox is scanned for destinations without a running sender (messages
    /// written by another process, e.g. an operator tool).
    pub rescan_interval: Duration,
    /// Capacity of the channel to the application (back-pressure beyond it).
    pub delivery_buffer: usize,
}

impl Default for MessengerConfig {
    fn default() -> Self {
        MessengerConfig {
            max_message_size: 10 * 1024 * 1024,
            max_batch: 1024,
            ack_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            rescan_interval: Duration::from_secs(1),
            delivery_buffer: 4096,
        }
    }
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Who it is for.
    pub destination: X500Name,
    /// The session it belongs to.
    pub session: u64,
    /// What it is.
    pub topic: String,
    /// The content.
    pub payload: Vec<u8>,
}

/// Why a message was not accepted for sending.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// Bigger than a frame may be.
    #[error("message to {destination} on topic {topic} is {size} bytes, over the network's maximum message size of {limit} bytes")]
    TooLarge {
        /// Destination.
        destination: String,
        /// Topic.
        topic: String,
        /// Encoded size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// The store failed; nothing was enqueued.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counters, for operators, tests and benchmarks.
#[derive(Debug, Default)]
pub struct MessengerStats {
    /// Outgoing links open now.
    pub links_out: AtomicU64,
    /// Incoming links open now.
    pub links_in: AtomicU64,
    /// Links opened since start (both directions).
    pub links_opened: AtomicU64,
    /// Messages acknowledged by their receivers.
    pub acknowledged: AtomicU64,
    /// New messages stored in the inbox.
    pub received: AtomicU64,
    /// Redelivered messages dropped because the inbox already had them.
    pub duplicates: AtomicU64,
    /// Failed delivery attempts (connect, send, acknowledgement timeout, refusal).
    pub failures: AtomicU64,
}

struct Inner<S, C> {
    me: X500Name,
    store: Arc<S>,
    connector: C,
    directory: Arc<dyn PeerDirectory>,
    config: MessengerConfig,
    senders: Mutex<HashMap<X500Name, Arc<Lane>>>,
    /// One lock per sending peer: its batches are stored and delivered one at a time, even
    /// across links (a sender that gave up on a link resends on a new one while the old
    /// link's batch may still be being stored; interleaving the two would break order).
    receiving: Mutex<HashMap<X500Name, Arc<tokio::sync::Mutex<()>>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    deliver: mpsc::Sender<InboundMessage>,
    /// Whether [`Messenger::start`] has handed the unprocessed inbox to the application. Until
    /// then nothing else is delivered: a message stored and delivered meanwhile would be read
    /// back as unprocessed by `start` and delivered twice. `start` holds it for writing while
    /// it reads and delivers; links wait for it, and messages to this node itself are only
    /// stored (`start` delivers them).
    started: tokio::sync::RwLock<bool>,
    /// Tells links waiting for [`Inner::started`] that it is set.
    started_signal: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    stats: MessengerStats,
}

/// Durable messaging for one node. Cheap to clone.
pub struct Messenger<S, C> {
    inner: Arc<Inner<S, C>>,
}

impl<S, C> Clone for Messenger<S, C> {
    fn clone(&self) -> Self {
        Messenger { inner: self.inner.clone() }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The most messages a sender keeps in memory; beyond it, it reads them from the outbox.
const MEMORY_QUEUE_LIMIT: usize = 8192;

/// What a destination's sender task works from.
struct Lane {
    wake: Notify,
    queue: Mutex<Queue>,
}

/// Messages for a destination not yet handed to its link.
struct Queue {
    /// Messages accepted since the sender last read the outbox, oldest first.
    messages: std::collections::VecDeque<OutboundMessage>,
    /// The outbox may hold unsent messages `messages` lacks: read it next.
    from_store: bool,
}

fn wire_size(topic: &str, payload: &[u8]) -> u64 {
    (topic.len() + payload.len() + MESSAGE_OVERHEAD) as u64
}

impl<S: MessageStore, C: Connector> Messenger<S, C> {
    /// A messenger for `me`. Incoming messages arrive on the returned channel; nothing moves
    /// until [`Messenger::start`].
    pub fn new(
        me: X500Name,
        store: Arc<S>,
        connector: C,
        directory: Arc<dyn PeerDirectory>,
        config: MessengerConfig,
    ) -> (Messenger<S, C>, mpsc::Receiver<InboundMessage>) {
        let (deliver, delivered) = mpsc::channel(config.delivery_buffer.max(1));
        let inner = Inner {
            me,
            store,
            connector,
            directory,
            config,
            senders: Mutex::new(HashMap::new()),
            receiving: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            deliver,
            started: tokio::sync::RwLock::new(false),
            started_signal: watch::Sender::new(false),
            shutdown: watch::Sender::new(false),
            stats: MessengerStats::default(),
        };
        (Messenger { inner: Arc::new(inner) }, delivered)
    }

    /// Who this messenger sends as.
    pub fn me(&self) -> &X500Name {
        &self.inner.me
    }

    /// The counters.
    pub fn stats(&self) -> &MessengerStats {
        &self.inner.stats
    }

    /// Hands unprocessed inbox messages to the application again, then starts a sender for
    /// every destination with messages in the outbox, and rescans the outbox periodically.
    /// Links served before this has handed the inbox over wait for it, so every message
    /// reaches the application once, whichever was called first.
    pub async fn start(&self) -> Result<(), StoreError> {
        {
            let mut started = self.inner.started.write().await;
            if !*started {
                let pending = self.inner.store.unprocessed(usize::MAX).await?;
                for m in pending {
                    if self.inner.deliver.send(m).await.is_err() {
                        break;
                    }
                }
                *started = true;
                self.inner.started_signal.send_replace(true);
            }
        }
        self.rescan().await?;
        let this = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        let rescan = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(this.inner.config.rescan_interval) => {}
                    _ = stop.changed() => return,
                }
                if let Err(e) = this.rescan().await {
                    tracing::warn!("scanning the outbox failed: {e}");
                }
            }
        });
        lock(&self.inner.tasks).push(rescan);
        Ok(())
    }

    async fn rescan(&self) -> Result<(), StoreError> {
        // Messages may have been written by another process, or left by a sender that failed:
        // each destination with an outbox reads it once more.
        for destination in self.inner.store.outbox_destinations().await? {
            if let Some(lane) = self.lane(&destination) {
                lock(&lane.queue).from_store = true;
                lane.wake.notify_one();
            }
        }
        Ok(())
    }

    /// Stops every task of this messenger (senders, rescans, served links). Messages stay in
    /// the outbox and inbox for the next start.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        lock(&self.inner.senders).clear();
    }

    /// Accepts messages for sending: checks their size, writes them to the outbox (all or
    /// none; durable when this returns) and wakes their senders. Messages to this node itself
    /// go straight to its inbox.
    pub async fn send(&self, messages: Vec<Outgoing>) -> Result<Vec<MessageId>, MessagingError> {
        let with_ids = messages.into_iter().map(|m| (MessageId::random(), m)).collect();
        self.send_with_ids(with_ids).await
    }

    /// [`Messenger::send`] with ids chosen by the caller — derived ids
    /// ([`MessageId::derived`]) make a resend after a crash harmless, because the receiver
    /// drops an id it has seen. An id still in the outbox is an error
    /// ([`Messenger::in_outbox`] tells whether that is the case).
    pub async fn send_with_ids(&self, messages: Vec<(MessageId, Outgoing)>) -> Result<Vec<MessageId>, MessagingError> {
        for (_, m) in &messages {
            self.check_size(m)?;
        }
        let (local, remote): (Vec<_>, Vec<_>) = messages.into_iter().partition(|(_, m)| m.destination == self.inner.me);
        let mut ids = Vec::new();
        let mut destinations = Vec::new();
        let outbound: Vec<OutboundMessage> = remote
            .into_iter()
            .map(|(id, m)| {
                ids.push(id);
                if !destinations.contains(&m.destination) {
                    destinations.push(m.destination.clone());
                }
                OutboundMessage { id, destination: m.destination, session: m.session, topic: m.topic, payload: m.payload, attempts: 0 }
            })
            .collect();
        if !outbound.is_empty() {
            self.inner.store.enqueue(outbound.clone()).await?;
        }
        if !local.is_empty() {
            let inbound: Vec<InboundMessage> = local
                .into_iter()
                .map(|(id, m)| {
                    ids.push(id);
                    InboundMessage {
                        id: id.received_from(&self.inner.me),
                        sender: self.inner.me.clone(),
                        session: m.session,
                        topic: m.topic,
                        payload: m.payload,
                    }
                })
                .collect();
            let started = self.inner.started.read().await;
            let new = self.inner.store.receive(inbound).await?;
            // Not started: `start` delivers them with the rest of the unprocessed inbox.
            if *started {
                for m in new {
                    let _ = self.inner.deliver.send(m).await;
                }
            }
        }
        // Durable now: the senders may have them.
        self.hand_to_senders(&destinations, &outbound);
        Ok(ids)
    }

    /// Answers received message `answered` with `message` (under `id`): the answer enters the
    /// outbox and `answered` is marked processed in one transaction
    /// ([`MessageStore::enqueue_processed`]), so a crash leaves the message either answered
    /// or to be handled again, never answered twice. (An answer to this node itself goes to
    /// its inbox, and the two are written one after the other.)
    pub async fn answer(&self, answered: MessageId, id: MessageId, message: Outgoing) -> Result<(), MessagingError> {
        if message.destination == self.inner.me {
            self.send_with_ids(vec![(id, message)]).await?;
            return Ok(self.processed(&[answered]).await?);
        }
        self.check_size(&message)?;
        let destination = message.destination.clone();
        let outbound = vec![OutboundMessage {
            id,
            destination: message.destination,
            session: message.session,
            topic: message.topic,
            payload: message.payload,
            attempts: 0,
        }];
        self.inner.store.enqueue_processed(outbound.clone(), &[answered]).await?;
        self.hand_to_senders(std::slice::from_ref(&destination), &outbound);
        Ok(())
    }

    /// Refuses a message bigger than a frame may be, before anything is stored.
    fn check_size(&self, m: &Outgoing) -> Result<(), MessagingError> {
        let limit = self.inner.config.max_message_size;
        let size = wire_size(&m.topic, &m.payload) + FRAME_OVERHEAD as u64;
        if size > limit {
            return Err(MessagingError::TooLarge { destination: m.destination.to_string(), topic: m.topic.clone(), size, limit });
        }
        Ok(())
    }

    /// Hands messages just written to the outbox to their destinations' senders (in their
    /// memory queues while those are short) and wakes them.
    fn hand_to_senders(&self, destinations: &[X500Name], outbound: &[OutboundMessage]) {
        for d in destinations {
            let Some(lane) = self.lane(d) else { continue };
            {
                let mut q = lock(&lane.queue);
                if !q.from_store {
                    let mine = outbound.iter().filter(|m| &m.destination == d);
                    if q.messages.len() + mine.clone().count() > MEMORY_QUEUE_LIMIT {
                        q.messages.clear();
                        q.from_store = true;
                    } else {
                        q.messages.extend(mine.cloned());
                    }
                }
            }
            lane.wake.notify_one();
        }
    }

    /// Whether message `id` for `destination` is still in the outbox (not yet acknowledged).
    pub async fn in_outbox(&self, destination: &X500Name, id: &MessageId) -> Result<bool, StoreError> {
        Ok(self.inner.store.outbox(destination, usize::MAX).await?.iter().any(|m| &m.id == id))
    }

    /// Marks inbox messages processed: they will not be handed over again.
    pub async fn processed(&self, ids: &[MessageId]) -> Result<(), StoreError> {
        self.inner.store.processed(ids).await
    }

    /// The sender of `destination`, started (to read the outbox first) if it was not running;
    /// `None` once shut down.
    fn lane(&self, destination: &X500Name) -> Option<Arc<Lane>> {
        if *self.inner.shutdown.borrow() {
            return None;
        }
        let mut senders = lock(&self.inner.senders);
        if let Some(lane) = senders.get(destination) {
            return Some(lane.clone());
        }
        let lane = Arc::new(Lane { wake: Notify::new(), queue: Mutex::new(Queue { messages: Default::default(), from_store: true }) });
        senders.insert(destination.clone(), lane.clone());
        drop(senders);
        let task = tokio::spawn(run_sender(self.inner.clone(), destination.clone(), lane.clone()));
        let mut tasks = lock(&self.inner.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        Some(lane)
    }

    /// Serves an accepted link from `peer` (its name comes from its verified certificate)
    /// until it closes, fails, or stays silent for twice the idle timeout.
    pub async fn serve_link<L: Link>(&self, mut link: L, peer: X500Name) {
        let inner = &self.inner;
        let mut stop = inner.shutdown.subscribe();
        if *stop.borrow() {
            return;
        }
        let _open = Gauge::open(&inner.stats.links_in, &inner.stats.links_opened);
        let silence = inner.config.idle_timeout * 2;
        loop {
            let frame = tokio::select! {
                biased;
                _ = stop.changed() => return,
                frame = tokio::time::timeout(silence, link.recv()) => frame,
            };
            // Shut down while the frame arrived: no acknowledgement, the sender retries later.
            if *stop.borrow() {
                return;
            }
            let frame = match frame {
                Ok(Ok(frame)) => frame,
                Ok(Err(TransportError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
                Ok(Err(e)) => {
                    tracing::warn!("link from {peer} dropped: {e}");
                    return;
                }
                Err(_) => return,
            };
            let messages = match encoding::decode::<Frame>(&frame) {
                Ok(Frame::Messages { version: PROTOCOL_VERSION, messages }) => messages,
                Ok(Frame::Messages { version, .. }) => {
                    let reason = format!("protocol version {version} is not spoken here (this node speaks {PROTOCOL_VERSION})");
                    tracing::warn!("link from {peer} refused: {reason}");
                    let _ = link.send(encoding::encode(&Frame::Refused(reason))).await;
                    return;
                }
                Ok(_) | Err(_) => {
                    tracing::warn!("link from {peer} refused: not a batch of messages");
                    let _ = link.send(encoding::encode(&Frame::Refused("expected a batch of messages".into()))).await;
                    return;
                }
            };
            if !inner.directory.admits(&peer) {
                tracing::warn!("link from {peer} closed: it is no longer admitted on the network (revoked)");
                let _ = link.send(encoding::encode(&Frame::Refused("you are not admitted on this network (revoked)".into()))).await;
                return;
            }
            // Nothing is stored or delivered before `start` has handed the unprocessed inbox
            // over: it would be read back as unprocessed and delivered twice. (Once set, it
            // stays set.)
            if !*inner.started_signal.borrow() {
                let mut signal = inner.started_signal.subscribe();
                tokio::select! {
                    biased;
                    _ = stop.changed() => return,
                    started = signal.wait_for(|started| *started) => if started.is_err() { return },
                }
            }
            let turn = lock(&inner.receiving).entry(peer.clone()).or_default().clone();
            let _turn = turn.lock().await;
            let ids: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
            let count = messages.len() as u64;
            let inbound = messages
                .into_iter()
                .map(|m| InboundMessage {
                    id: m.id.received_from(&peer),
                    sender: peer.clone(),
                    session: m.session,
                    topic: m.topic,
                    payload: m.payload,
                })
                .collect();
            let new = match inner.store.receive(inbound).await {
                Ok(new) => new,
                Err(e) => {
                    // No acknowledgement: the sender keeps the batch and retries.
                    tracing::warn!("could not store messages from {peer}: {e}");
                    return;
                }
            };
            inner.stats.received.fetch_add(new.len() as u64, Ordering::Relaxed);
            inner.stats.duplicates.fetch_add(count - new.len() as u64, Ordering::Relaxed);
            let acknowledged = link.send(encoding::encode(&Frame::Ack(ids))).await;
            // Stored, so handed over whether or not the acknowledgement got through: a sender
            // that did not hear it sends the batch again, and the inbox drops that copy, so a
            // message not handed over now would wait in the inbox until the next start.
            for m in new {
                if inner.deliver.send(m).await.is_err() {
                    return;
                }
            }
            if let Err(e) = acknowledged {
                tracing::debug!("acknowledgement to {peer} failed: {e}");
                return;
            }
        }
    }
}

/// Counts a link as open while alive.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn open(gauge: &'a AtomicU64, opened: &AtomicU64) -> Gauge<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        opened.fetch_add(1, Ordering::Relaxed);
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
    #[error("refused by the receiver: {0}")]
    Refused(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("no address known for it (is it on the network map?)")]
    NoAddress,
    #[error("it is not admitted on the network (revoked)")]
    NotAdmitted,
}

async fn connect<S: MessageStore, C: Connector>(inner: &Inner<S, C>, peer: &X500Name) -> Result<C::Link, AttemptError> {
    let addresses = inner.directory.addresses(peer);
    let mut last = AttemptError::NoAddress;
    for address in addresses {
        match inner.connector.connect(&address, peer).await {
            Ok(link) => return Ok(link),
            Err(e) => {
                tracing::debug!("connecting to {peer} at {address} failed: {e}");
                last = AttemptError::Transport(e);
            }
        }
    }
    Err(last)
}

async fn exchange<L: Link>(link: &mut L, batch: &[OutboundMessage], ack_timeout: Duration) -> Result<Vec<MessageId>, AttemptError> {
    let messages =
        batch.iter().map(|m| WireMessage { id: m.id, session: m.session, topic: m.topic.clone(), payload: m.payload.clone() }).collect();
    link.send(encoding::encode(&Frame::Messages { version: PROTOCOL_VERSION, messages })).await?;
    let reply = tokio::time::timeout(ack_timeout, link.recv()).await.map_err(|_| AttemptError::Timeout(ack_timeout))??;
    match encoding::decode::<Frame>(&reply) {
        Ok(Frame::Ack(ids)) => {
            if ids.len() != batch.len() || ids.iter().zip(batch).any(|(a, m)| *a != m.id) {
                return Err(AttemptError::Protocol("acknowledgement does not match the batch".into()));
            }
            Ok(ids)
        }
        Ok(Frame::Refused(reason)) => Err(AttemptError::Refused(reason)),
        Ok(Frame::Messages { .. }) | Err(_) => Err(AttemptError::Protocol("expected an acknowledgement".into())),
    }
}

/// The longest prefix of `batch` that fits in one frame (at least one message: each was
/// checked against the limit when enqueued).
fn fit(mut batch: Vec<OutboundMessage>, limit: u64) -> Vec<OutboundMessage> {
    let mut size = FRAME_OVERHEAD as u64;
    let mut keep = 0;
    for m in &batch {
        size += wire_size(&m.topic, &m.payload);
        if size > limit && keep > 0 {
            break;
        }
        keep += 1;
    }
    batch.truncate(keep);
    batch
}

/// The next batch for `peer`: from memory, or from the outbox when memory may lack messages
/// (then without those acknowledged and still being deleted).
async fn next_batch<S: MessageStore, C: Connector>(
    inner: &Inner<S, C>,
    peer: &X500Name,
    lane: &Lane,
    deleting: &Mutex<std::collections::HashSet<MessageId>>,
) -> Result<Vec<OutboundMessage>, StoreError> {
    let limit = inner.config.max_message_size;
    let max = inner.config.max_batch.max(1);
    let read_store = {
        let mut q = lock(&lane.queue);
        let read = q.from_store;
        if read {
            // From here on, messages accepted go to memory as well: the read below and memory
            // hold every unsent message between them (one in both is sent twice, and the
            // receiver drops the second as a duplicate).
            q.messages.clear();
            q.from_store = false;
        }
        read
    };
    if read_store {
        let skip = lock(deleting).len();
        let stored = match inner.store.outbox(peer, max + skip).await {
            Ok(stored) => stored,
            Err(e) => {
                lock(&lane.queue).from_store = true;
                return Err(e);
            }
        };
        let more = stored.len() == max + skip;
        let unsent: Vec<OutboundMessage> = {
            let d = lock(deleting);
            stored.into_iter().filter(|m| !d.contains(&m.id)).take(max).collect()
        };
        let found = unsent.len();
        let batch = fit(unsent, limit);
        if more || batch.len() < found {
            // The rest is still in the outbox.
            lock(&lane.queue).from_store = true;
        }
        return Ok(batch);
    }
    let mut q = lock(&lane.queue);
    let mut batch = Vec::new();
    let mut size = FRAME_OVERHEAD as u64;
    while let Some(m) = q.messages.front() {
        size += wire_size(&m.topic, &m.payload);
        if batch.len() == max || (size > limit && !batch.is_empty()) {
            break;
        }
        batch.extend(q.messages.pop_front());
    }
    Ok(batch)
}

async fn run_sender<S: MessageStore, C: Connector>(inner: Arc<Inner<S, C>>, peer: X500Name, lane: Arc<Lane>) {
    let config = &inner.config;
    let mut link: Option<(C::Link, Gauge<'_>)> = None;
    let mut backoff = config.retry_min;
    let mut failures_in_a_row = 0u32;
    let deleting: Arc<Mutex<std::collections::HashSet<MessageId>>> = Arc::default();
    loop {
        let batch = match next_batch(&inner, &peer, &lane, &deleting).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!("reading the outbox for {peer} failed: {e}");
                lock(&lane.queue).from_store = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.retry_max);
                continue;
            }
        };
        if batch.is_empty() {
            if link.is_some() {
                tokio::select! {
                    _ = lane.wake.notified() => {}
                    _ = tokio::time::sleep(config.idle_timeout) => link = None,
                }
            } else {
                lane.wake.notified().await;
            }
            continue;
        }
        let attempt = async {
            if !inner.directory.admits(&peer) {
                return Err(AttemptError::NotAdmitted);
            }
            if link.is_none() {
                let opened = connect(&inner, &peer).await?;
                link = Some((opened, Gauge::open(&inner.stats.links_out, &inner.stats.links_opened)));
            }
            let (l, _) = link.as_mut().ok_or(AttemptError::NoAddress)?;
            exchange(l, &batch, config.ack_timeout).await
        };
        match attempt.await {
            Ok(acked) => {
                inner.stats.acknowledged.fetch_add(acked.len() as u64, Ordering::Relaxed);
                backoff = config.retry_min;
                failures_in_a_row = 0;
                // Deleted in the background; until then an outbox read skips them.
                lock(&deleting).extend(acked.iter().copied());
                let (inner, deleting, peer) = (inner.clone(), deleting.clone(), peer.clone());
                tokio::spawn(async move {
                    if let Err(e) = inner.store.acknowledged(&acked).await {
                        // Harmless: the messages are sent again and the receiver drops them.
                        tracing::warn!("recording acknowledgements from {peer} failed: {e}");
                    }
                    let mut d = lock(&deleting);
                    for id in &acked {
                        d.remove(id);
                    }
                });
            }
            Err(e) => {
                link = None;
                inner.stats.failures.fetch_add(1, Ordering::Relaxed);
                failures_in_a_row += 1;
                let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
                let _ = inner.store.attempted(&ids).await;
                // The batch is still in the outbox: read it from there.
                lock(&lane.queue).from_store = true;
                if failures_in_a_row == 1 || failures_in_a_row.is_power_of_two() {
                    tracing::warn!(
                        "cannot deliver {} message(s) to {peer}: {e}; retrying in {backoff:?} (attempt {failures_in_a_row})",
                        batch.len()
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.retry_max);
            }
        }
    }
}
