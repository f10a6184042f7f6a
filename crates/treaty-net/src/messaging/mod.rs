//! Durable messaging between nodes (white paper "Message delivery"): an outbox and an inbox
//! in the node database ([`store`]), a wire protocol of batches and acknowledgements
//! ([`wire`]), links over mutual TLS or the simulated network ([`link`]), and the
//! [`Messenger`] that moves messages from one node's outbox to another's inbox exactly once.

pub mod link;
pub mod messenger;
pub mod store;
pub mod wire;

pub use link::{Connector, FramedLink, Link, TlsConnector, serve_tls};
pub use messenger::{MessagingError, Messenger, MessengerConfig, MessengerStats, Outgoing, PeerDirectory};
pub use store::{InboundMessage, MemoryMessageStore, MessageId, MessageStore, OutboundMessage, StoreError};
