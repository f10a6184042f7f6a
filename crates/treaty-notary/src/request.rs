//! What a notary is asked to commit, and what it answers when a state is already spent.
//!
//! A [`CommitRequest`] is the part of a transaction the uniqueness layer needs: its id, the
//! states it consumes, the states it only references, its time window and who asked. A
//! [`Conflict`] names, for every state that stood in the way, the transaction that consumed it
//! (with the input index and the party that asked for that transaction) and whether the state
//! was an input or a reference of the refused request. Conflicts cross the wire to the
//! requesting node, so they are plain serde types.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use treaty_core::{SecureHash, StateRef, TimeWindow, X500Name};

/// A request to commit one transaction's input states (and check its references).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    /// The transaction's id.
    pub tx_id: SecureHash,
    /// The states it consumes, in the transaction's input order.
    pub inputs: Vec<StateRef>,
    /// The states it references: checked to be unconsumed, never consumed.
    pub references: Vec<StateRef>,
    /// Its time window, if it has one.
    pub time_window: Option<TimeWindow>,
    /// The party that asked the notary (recorded with every state it consumes).
    pub requester: X500Name,
}

/// The transaction that consumed a state: what the uniqueness log records per state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConsumingTx {
    /// The consuming transaction's id.
    pub tx_id: SecureHash,
    /// The state's index among that transaction's inputs.
    pub input_index: u32,
    /// The party that asked the notary to commit that transaction.
    pub requesting_party: X500Name,
}

/// How a conflicting state appeared in the refused request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StateKind {
    /// The request wanted to consume the state.
    Input,
    /// The request only referenced the state (reference states must be unconsumed).
    Reference,
}

/// One state that stood in the way of a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateConflict {
    /// Whether the state was an input or a reference of the refused request.
    pub kind: StateKind,
    /// The transaction that had already consumed it.
    pub consumed_by: ConsumingTx,
}

/// Why a request was refused: every one of its states that was already consumed by another
/// transaction. Nothing of the refused request was consumed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The conflicting states, each with the transaction that consumed it.
    pub states: BTreeMap<StateRef, StateConflict>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.states.len();
        write!(f, "{n} state{} already consumed: ", if n == 1 { "" } else { "s" })?;
        for (i, (state, c)) in self.states.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let kind = match c.kind {
                StateKind::Input => "input",
                StateKind::Reference => "reference",
            };
            write!(
                f,
                "{kind} {state} by transaction {} (its input {}, requested by {})",
                c.consumed_by.tx_id, c.consumed_by.input_index, c.consumed_by.requesting_party
            )?;
        }
        Ok(())
    }
}
