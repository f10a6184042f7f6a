//! Flow sessions on the wire: what flows send each other, as the payload of messages on topic
//! [`FLOW_TOPIC`]. A session is named by the id its initiator chose (the message's session id)
//! and by which side a message is for, so both sides use the same id without a handshake.

use serde::{Deserialize, Serialize};

/// The messaging topic of flow sessions.
pub const FLOW_TOPIC: &str = "treaty.flow";

/// One session message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionMessage {
    /// Opens the session: the receiver starts the responder registered for `flow`.
    Init {
        /// The initiating flow's name.
        flow: String,
        /// Its version.
        version: u32,
        /// The first message, if the initiator sent before it received.
        payload: Option<Vec<u8>>,
    },
    /// A message.
    Data(Vec<u8>),
    /// The sender's flow failed on purpose; the message is for the receiver's flow.
    Error(String),
    /// The sender's flow ended.
    End,
    /// A message, and then the sender's flow ended: a `Data` and an `End` in one message,
    /// sent when a flow's last act on a session was a send (a responder's answer, typically).
    /// Receivers queue it as the two; one outbox write, hop, inbox write and acknowledgement
    /// fewer than sending both.
    Final(Vec<u8>),
}

/// A session message and which side it is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// True when it goes to the side that opened the session.
    pub to_initiator: bool,
    /// The message.
    pub message: SessionMessage,
}
