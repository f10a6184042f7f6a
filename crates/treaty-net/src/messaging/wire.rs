//! The messaging protocol on a link. The connecting side sends [`Frame::Messages`]; the
//! accepting side stores them and answers [`Frame::Ack`] naming every message of the batch
//! (new or duplicate) — only after they are durably in its inbox.

use serde::{Deserialize, Serialize};

use super::MessageId;

/// Protocol version spoken on links; a peer speaking another is refused with a reason.
pub const PROTOCOL_VERSION: u32 = 1;

/// One message on the wire. The sender is the TLS peer, never a field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage {
    /// Sender-chosen unique id.
    pub id: MessageId,
    /// Session.
    pub session: u64,
    /// Topic.
    pub topic: String,
    /// Content.
    pub payload: Vec<u8>,
}

/// A frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// A batch of messages, in order (version first so a future version can be refused cleanly).
    Messages {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u32,
        /// The batch.
        messages: Vec<WireMessage>,
    },
    /// These messages are stored; the sender may forget them.
    Ack(Vec<MessageId>),
    /// The batch was refused and will be refused again (the reason is for the operator).
    Refused(String),
}

/// Bytes a message adds to a batch frame beyond its topic and payload (id, session, lengths).
pub const MESSAGE_OVERHEAD: usize = 16 + 8 + 10 + 10;
/// Bytes a batch frame adds beyond its messages.
pub const FRAME_OVERHEAD: usize = 16;
