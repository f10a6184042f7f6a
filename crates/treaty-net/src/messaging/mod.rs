//! Durable messaging between nodes (white paper "Message delivery").

pub mod store;

pub use store::{InboundMessage, MemoryMessageStore, MessageId, MessageStore, OutboundMessage, StoreError};
