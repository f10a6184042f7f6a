//! # treaty-flows
//!
//! Durable flows (white paper "Flow framework"): a flow is an `async fn` over a
//! [`FlowContext`]; every step that touches the world — opening a session, sending, receiving,
//! reading the clock, drawing randomness, sleeping, running a side effect, reporting progress —
//! is journaled in the node database before it counts. After a crash the [`FlowEngine`]
//! replays each unfinished flow against its journal and it carries on live. A flow whose code
//! asks for a different step than its journal holds stops with [`FlowError::CodeChanged`].

mod context;
mod engine;
mod error;
pub mod fetches;
pub mod finality;
pub mod identities;
pub mod journal;
pub mod ledger;
pub mod notary_change;
pub mod protocol;
pub mod resolve;
pub mod signatures;
pub mod sql;
pub mod store;

pub use context::{FlowContext, Session};
pub use engine::{AnswerFn, CounterpartyCheck, EngineOptions, EngineStats, FlowDef, FlowEngine, FlowFn, FlowProgress, Registry, Transport};
pub use error::FlowError;
pub use finality::{
    CLUSTER_MEMBER_MAX_WAIT, CLUSTER_MEMBER_WAIT, NOTARY_PROTOCOL, NotaryRequest, finality, notarise, notary_answer, notary_responder,
    receive_finality,
};
pub use identities::{Identities, SwappedIdentities, swap_identities};
pub use journal::{Entry, FlowId, Received};
pub use ledger::{AttachmentCheck, Ledger, MemoryLedger};
pub use notary_change::{NOTARY_CHANGE, accept_notary_change, change_notary, counterparties, with_encumbrances};
pub use resolve::{ReceiveOptions, ReceivedTransaction, receive_transaction, send_transaction};
pub use signatures::{KeyPairs, Keys, collect_signatures, sign_transaction};
pub use sql::{FLOW_MIGRATIONS, SqlFlowStore};
pub use store::{Created, End, FlowRecord, FlowStatus, FlowStore, MemoryFlowStore, ParkedFlow, Parking};

/// Microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}
