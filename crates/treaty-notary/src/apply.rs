//! The uniqueness rules, written once: apply a batch of requests, in order, to a state.
//!
//! Every provider runs this code. The state it runs on is anything that implements
//! [`UniquenessState`]: a redb write transaction (the single-node provider), an in-memory
//! overlay over rows read from PostgreSQL, a plain map ([`MemoryState`]), or — later — a Raft
//! state machine applying committed log entries. The functions here do no IO of their own and
//! read no clock (the notary's time comes with each request), so the same batch applied to the
//! same state gives the same answers and the same new state on every replica.
//!
//! For one request, in this order:
//! 1. More inputs than [`Rules::max_inputs`]: refused ([`NotaryError::TooManyInputs`]).
//! 2. Every input and reference consumed by *another* transaction is a conflict. If there is
//!    any, the answer is [`NotaryError::Conflict`] naming all of them — unless this transaction
//!    was committed before (a retry), which is answered with success again.
//! 3. A time window the notary's time is outside of: [`NotaryError::TimeWindowInvalid`], again
//!    unless the transaction was committed before.
//! 4. Otherwise each input not yet recorded is recorded as consumed by this transaction (with
//!    its input index and the requesting party); a transaction without inputs is recorded as
//!    committed. ("Committed before" means: one of its inputs is recorded as consumed by it —
//!    inputs are consumed all or none — or, without inputs, it is recorded as committed. So the
//!    common case writes one record per input and nothing else.)
//!
//! A refused request changes nothing. Within a batch, later requests see the consumption of
//! earlier ones, so of two requests spending the same state the first wins.
//!
//! States are judged one by one: a state already consumed by the same transaction id is not a
//! conflict. An honest id commits to its inputs, so a second request with the same id has the
//! same inputs; a forged id with different inputs can only consume more states under that id.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use treaty_core::{SecureHash, StateRef, Timestamp};

use crate::error::NotaryError;
use crate::request::{CommitRequest, Conflict, ConsumingTx, StateConflict, StateKind};
use crate::time_window::TimeWindowCheck;

/// The default limit on inputs per transaction: core's default limit on components per group.
pub const DEFAULT_MAX_INPUTS: usize = 10_000;

/// The notary's rules for a request that are not about other transactions. Serde, because a
/// Raft leader puts its rules in every log entry, so replicas apply the same rules to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// The most inputs one transaction may have (at most `u32::MAX` is ever accepted).
    pub max_inputs: usize,
    /// How the time window is checked against the notary's time.
    pub time_window: TimeWindowCheck,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { max_inputs: DEFAULT_MAX_INPUTS, time_window: TimeWindowCheck::default() }
    }
}

impl Rules {
    /// The checks that need no state: refuses a request with too many inputs.
    pub fn check_request(&self, request: &CommitRequest) -> Result<(), NotaryError> {
        let max = self.max_inputs.min(u32::MAX as usize);
        if request.inputs.len() > max {
            return Err(NotaryError::TooManyInputs { tx_id: request.tx_id, inputs: request.inputs.len(), max });
        }
        Ok(())
    }
}

/// What the uniqueness rules read and write: which transaction consumed a state, and which
/// transactions were committed. Implementations see their own writes at once (later requests
/// of a batch must see earlier ones' consumption).
pub trait UniquenessState {
    /// The storage's failure; it aborts the whole batch.
    type Error;

    /// The transaction that consumed `state`, if any.
    fn consumed_by(&mut self, state: &StateRef) -> Result<Option<ConsumingTx>, Self::Error>;
    /// Whether transaction `tx_id` (one without inputs) was committed.
    fn is_committed(&mut self, tx_id: &SecureHash) -> Result<bool, Self::Error>;
    /// Records `state` as consumed by `by` (only called for a state not yet recorded).
    fn consume(&mut self, state: &StateRef, by: &ConsumingTx) -> Result<(), Self::Error>;
    /// Records transaction `tx_id` (one without inputs) as committed (only called for an id not
    /// recorded yet).
    fn record_committed(&mut self, tx_id: &SecureHash) -> Result<(), Self::Error>;
}

/// Applies one request at the notary's time `now`. The outer `Err` is a storage failure (the
/// caller must abandon everything written since its batch began); the inner result is the
/// answer to the request.
pub fn apply<S: UniquenessState>(
    state: &mut S,
    request: &CommitRequest,
    now: Timestamp,
    rules: &Rules,
) -> Result<Result<(), NotaryError>, S::Error> {
    if let Err(refused) = rules.check_request(request) {
        return Ok(Err(refused));
    }
    let tx_id = request.tx_id;

    let mut conflicts = BTreeMap::new();
    let mut fresh = Vec::with_capacity(request.inputs.len());
    // Inputs are consumed all or none, so one input already consumed by this transaction means
    // it was committed before.
    let mut committed_before = false;
    for (index, input) in request.inputs.iter().enumerate() {
        match state.consumed_by(input)? {
            Some(by) if by.tx_id != tx_id => {
                conflicts.insert(*input, StateConflict { kind: StateKind::Input, consumed_by: by });
            }
            Some(_) => committed_before = true,
            // check_request bounded the count by u32::MAX.
            None => fresh.push((*input, u32::try_from(index).unwrap_or(u32::MAX))),
        }
    }
    for reference in &request.references {
        if let Some(by) = state.consumed_by(reference)?
            && by.tx_id != tx_id
        {
            conflicts.entry(*reference).or_insert(StateConflict { kind: StateKind::Reference, consumed_by: by });
        }
    }
    // Only transactions without inputs are recorded as committed: for the others, their
    // consumed inputs are the record.
    let no_inputs = request.inputs.is_empty();
    if !conflicts.is_empty() {
        if committed_before || (no_inputs && state.is_committed(&tx_id)?) {
            return Ok(Ok(()));
        }
        return Ok(Err(NotaryError::Conflict { tx_id, conflict: Conflict { states: conflicts } }));
    }

    if let Some(window) = request.time_window
        && !rules.time_window.accepts(&window, now)
    {
        if committed_before || (no_inputs && state.is_committed(&tx_id)?) {
            return Ok(Ok(()));
        }
        return Ok(Err(NotaryError::TimeWindowInvalid { tx_id, window, now, tolerance_micros: rules.time_window.tolerance_micros() }));
    }

    // A retry finds every input already recorded for this transaction: it consumes nothing.
    // A state listed twice is recorded once, at its first index (the set is only needed when
    // there are two to compare).
    let mut recorded = (fresh.len() > 1).then(|| HashSet::with_capacity(fresh.len()));
    for (input, input_index) in fresh {
        if recorded.as_mut().is_none_or(|r| r.insert(input)) {
            state.consume(&input, &ConsumingTx { tx_id, input_index, requesting_party: request.requester.clone() })?;
        }
    }
    if no_inputs && !state.is_committed(&tx_id)? {
        state.record_committed(&tx_id)?;
    }
    Ok(Ok(()))
}

/// Applies `requests` in order, each with the notary's time it was received at, and returns
/// one answer per request (or the storage failure that aborts the batch).
pub fn apply_batch<'a, S, I>(state: &mut S, requests: I, rules: &Rules) -> Result<Vec<Result<(), NotaryError>>, S::Error>
where
    S: UniquenessState,
    I: IntoIterator<Item = (&'a CommitRequest, Timestamp)>,
{
    let requests = requests.into_iter();
    let mut answers = Vec::with_capacity(requests.size_hint().0);
    for (request, now) in requests {
        answers.push(apply(state, request, now, rules)?);
    }
    Ok(answers)
}

/// A [`UniquenessState`] in memory: for tests, simulation and as the overlay the PostgreSQL
/// provider applies a batch to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryState {
    /// Every consumed state and the transaction that consumed it.
    pub consumed: HashMap<StateRef, ConsumingTx>,
    /// Every committed transaction without inputs.
    pub committed: HashSet<SecureHash>,
}

impl UniquenessState for MemoryState {
    type Error = std::convert::Infallible;

    fn consumed_by(&mut self, state: &StateRef) -> Result<Option<ConsumingTx>, Self::Error> {
        Ok(self.consumed.get(state).cloned())
    }
    fn is_committed(&mut self, tx_id: &SecureHash) -> Result<bool, Self::Error> {
        Ok(self.committed.contains(tx_id))
    }
    fn consume(&mut self, state: &StateRef, by: &ConsumingTx) -> Result<(), Self::Error> {
        self.consumed.insert(*state, by.clone());
        Ok(())
    }
    fn record_committed(&mut self, tx_id: &SecureHash) -> Result<(), Self::Error> {
        self.committed.insert(*tx_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use treaty_core::X500Name;

    use super::*;

    fn state(n: u8) -> StateRef {
        StateRef { txhash: SecureHash([n; 32]), index: 0 }
    }

    fn request(id: u8, inputs: &[u8], references: &[u8]) -> CommitRequest {
        CommitRequest {
            tx_id: SecureHash([id; 32]),
            inputs: inputs.iter().map(|n| state(*n)).collect(),
            references: references.iter().map(|n| state(*n)).collect(),
            time_window: None,
            requester: "O=Alice,L=London,C=GB".parse::<X500Name>().unwrap(),
        }
    }

    fn answer(s: &mut MemoryState, r: &CommitRequest) -> Result<(), NotaryError> {
        let Ok(answer) = apply(s, r, Timestamp(0), &Rules::default());
        answer
    }

    #[test]
    fn first_in_a_batch_wins_and_refused_requests_change_nothing() {
        let mut s = MemoryState::default();
        let (a, b, c) = (request(10, &[1, 2], &[]), request(11, &[2, 3], &[]), request(12, &[3], &[]));
        let Ok(answers) = apply_batch(&mut s, [(&a, Timestamp(0)), (&b, Timestamp(0)), (&c, Timestamp(0))], &Rules::default());
        assert!(answers[0].is_ok());
        let Err(NotaryError::Conflict { conflict, .. }) = &answers[1] else { panic!("{:?}", answers[1]) };
        assert_eq!(conflict.states.keys().copied().collect::<Vec<_>>(), vec![state(2)]);
        assert_eq!(conflict.states[&state(2)].consumed_by.input_index, 1);
        // b was refused, so state 3 is still free for c.
        assert!(answers[2].is_ok());
        assert_eq!(s.consumed.len(), 3);
        assert!(s.committed.is_empty(), "transactions with inputs are recorded by their inputs alone");
    }

    #[test]
    fn a_retry_changes_nothing_and_keeps_the_first_record() {
        let mut s = MemoryState::default();
        let first = request(10, &[1, 1, 2], &[]);
        answer(&mut s, &first).unwrap();
        assert_eq!(s.consumed[&state(1)].input_index, 0);
        let before = s.clone();
        let mut again = first.clone();
        again.requester = "O=Mallory,L=London,C=GB".parse().unwrap();
        answer(&mut s, &again).unwrap();
        assert_eq!(s, before);
    }
}
