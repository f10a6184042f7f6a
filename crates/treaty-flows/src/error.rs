//! Why a flow, or a request about one, failed.

use treaty_net::messaging::StoreError;

/// A flow's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// Thrown on purpose by flow code (a `FlowException`): the counterparty's flow receives it.
    #[error("{0}")]
    Exception(String),
    /// The counterparty's flow threw on purpose.
    #[error("{party} ended flow {flow} with an error: {message}")]
    Counterparty {
        /// Counterparty.
        party: String,
        /// This side's flow.
        flow: String,
        /// Its message.
        message: String,
    },
    /// The counterparty's flow ended while this side waited for a message.
    #[error("session ended: {party} finished its side of flow {flow} while this side was waiting for a message")]
    SessionEnded {
        /// Counterparty.
        party: String,
        /// This side's flow.
        flow: String,
    },
    /// A received message is not the type the flow expected.
    #[error("flow {flow}: message from {party} is not a {expected}: {reason}")]
    BadMessage {
        /// Sender.
        party: String,
        /// This flow.
        flow: String,
        /// Expected type.
        expected: String,
        /// Decoder error.
        reason: String,
    },
    /// Replay found a different step in the journal than the code asks for.
    #[error(
        "flow code changed: flow {flow} asks to {code} at step {step}, but its journal has \"{journal}\" there; run the version that started it, or kill it"
    )]
    CodeChanged {
        /// Flow name.
        flow: String,
        /// Step index.
        step: usize,
        /// What the journal holds.
        journal: String,
        /// What the code asked for.
        code: String,
    },
    /// The application's counterparty check refused the party.
    #[error("{party} may not take part in this flow: {reason}")]
    CounterpartyRefused {
        /// The party.
        party: String,
        /// Why.
        reason: String,
    },
    /// A transaction a counterparty sent (or one in its back-chain) was refused.
    #[error("transaction {id} from {party} is refused: {reason}")]
    InvalidTransaction {
        /// The transaction's id (as the sender named it).
        id: String,
        /// The sender.
        party: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The notary refused the transaction (or could not take it now): which states conflicted
    /// and with what, the time window, the signature, the notary named, or back-pressure.
    #[error("{0}")]
    Notary(Box<treaty_notary::NotaryRefusal>),
    /// No flow of that name is registered.
    #[error("no flow named {name:?} is registered; known flows: {}", known.join(", "))]
    UnknownFlow {
        /// The name asked for.
        name: String,
        /// What is registered.
        known: Vec<String>,
    },
    /// The arguments do not fit the flow.
    #[error("arguments of flow {flow}: {reason}")]
    InvalidArguments {
        /// Flow name.
        flow: String,
        /// What is wrong (serde's message names the field).
        reason: String,
    },
    /// Something else about the request is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The node database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node is draining: no new flows.
    #[error("the node is draining for an upgrade and starts no new flows")]
    Draining,
    /// A client id already names a flow of another name: starting this one under it would
    /// silently hand back that flow.
    #[error("client id {client_id:?} already names flow {id} ({existing}), not a {requested}: use another client id")]
    ClientIdTaken {
        /// The client id.
        client_id: String,
        /// The flow it names.
        id: String,
        /// That flow's name.
        existing: String,
        /// The flow asked for.
        requested: String,
    },
    /// Killed by the operator.
    #[error("killed by the operator")]
    Killed,
}

impl FlowError {
    /// A failure worth retrying automatically (the flow hospital): database busy or lost.
    pub fn is_transient(&self) -> bool {
        matches!(self, FlowError::Store(e) if e.transient)
    }

    /// What the counterparties of a flow that failed with this error are told.
    pub(crate) fn for_counterparty(&self) -> String {
        match self {
            FlowError::Exception(m) => m.clone(),
            other => format!("counterparty flow failed: {other}"),
        }
    }
}
