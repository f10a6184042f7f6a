//! `treaty.finance.TimeLock`: a state that freezes the states it encumbers until a time (white
//! paper "Encumbrances").
//!
//! Cash is time-locked by creating it with `encumbrance` pointing at a `TimeLock` output of the
//! same transaction. The platform then refuses any transaction that consumes the cash without
//! consuming the lock too, and this contract allows consuming the lock only from its time on:
//!
//! - **Lock**: no lock is consumed; every lock created encumbers at least one other output of
//!   the transaction (a lock guarding nothing would be a trap: whatever later points at it
//!   could never be spent).
//! - **Unlock**, signed by each lock's owner: no lock is created; the time window starts at or
//!   after every consumed lock's `until`; every consumed lock is the encumbrance of another
//!   input of the transaction (consuming a lock alone would strand the states it guards).

use serde::{Deserialize, Serialize};
use treaty_contract_sdk::treaty_core::{AbstractParty, CommandType, ContractState, Timestamp};
use treaty_contract_sdk::{ContractRejection, ContractVerdict, LedgerTransaction, require};

/// The time-lock contract's name.
pub const TIME_LOCK: &str = "treaty.finance.TimeLock";

/// Frozen until `until`; then `owner` may unlock what it encumbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeLock {
    /// The earliest time the lock may be consumed.
    pub until: Timestamp,
    /// Who unlocks it.
    pub owner: AbstractParty,
}

impl ContractState for TimeLock {
    const TYPE_ID: &'static str = "treaty.finance.TimeLock";
    fn participants(&self) -> Vec<AbstractParty> {
        vec![self.owner.clone()]
    }
}

/// Time-lock commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeLockCommand {
    /// Create locks encumbering other outputs.
    Lock,
    /// Consume locks whose time has come, with what they encumber.
    Unlock,
}

impl CommandType for TimeLockCommand {
    const TYPE_ID: &'static str = "treaty.finance.TimeLock.Command";
}

fn reject(e: impl ToString) -> ContractRejection {
    ContractRejection::new(e.to_string())
}

/// `treaty.finance.TimeLock`.
pub fn verify(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
    let commands = tx.commands_of::<TimeLockCommand>().map_err(reject)?;
    let [(command, signers)] = commands.as_slice() else {
        return Err(reject("a time-lock transaction needs exactly one time-lock command"));
    };
    let lock_inputs: Vec<_> = tx.inputs.iter().filter(|i| i.state.data.is::<TimeLock>()).collect();
    let lock_outputs: Vec<usize> = tx.outputs.iter().enumerate().filter(|(_, o)| o.data.is::<TimeLock>()).map(|(i, _)| i).collect();
    match command {
        TimeLockCommand::Lock => {
            require(lock_inputs.is_empty(), || "locking consumes no lock".into())?;
            require(!lock_outputs.is_empty(), || "locking creates a lock".into())?;
            for index in lock_outputs {
                require(tx.outputs.iter().any(|o| o.encumbrance == Some(index as u32)), || {
                    format!("the lock at output {index} encumbers no output")
                })?;
            }
        }
        TimeLockCommand::Unlock => {
            require(lock_outputs.is_empty(), || "unlocking creates no lock".into())?;
            require(!lock_inputs.is_empty(), || "unlocking consumes a lock".into())?;
            let from = tx.time_window.and_then(|w| w.from_time());
            for input in lock_inputs {
                let lock: TimeLock = input.state.data.unpack().map_err(reject)?;
                require(from.is_some_and(|t| t >= lock.until), || {
                    format!("the lock {} holds until {}: the time window must start then or later", input.r#ref, lock.until)
                })?;
                require(signers.contains(lock.owner.owning_key()), || format!("the lock's owner {} must sign", lock.owner))?;
                let guarded =
                    tx.inputs.iter().any(|i| i.r#ref.txhash == input.r#ref.txhash && i.state.encumbrance == Some(input.r#ref.index));
                require(guarded, || format!("the lock {} is consumed without any state it encumbers", input.r#ref))?;
            }
        }
    }
    Ok(ContractVerdict::default())
}

#[cfg(test)]
mod tests {
    use treaty_contract_sdk::treaty_core::{TimeWindow, TransactionState};

    use super::*;
    use crate::testing::{World, world};

    const UNTIL: Timestamp = Timestamp(2_000_000_000);

    impl World {
        fn lock(&self) -> TransactionState {
            self.state(&TimeLock { until: UNTIL, owner: self.alice.clone().into() }, TIME_LOCK)
        }
        fn locked_cash(&self, encumbrance: Option<u32>) -> TransactionState {
            let mut s = self.cash_in(5000, "USD", &self.alice);
            s.encumbrance = encumbrance;
            s
        }
    }

    fn refused(tx: &LedgerTransaction, why: &str) {
        crate::testing::refused(verify, tx, why);
    }

    #[test]
    fn a_lock_must_guard_something() {
        let w = world();
        assert!(verify(&w.tx(vec![], vec![w.locked_cash(Some(1)), w.lock()], TimeLockCommand::Lock, &w.alice, None)).is_ok());
        refused(&w.tx(vec![], vec![w.locked_cash(None), w.lock()], TimeLockCommand::Lock, &w.alice, None), "encumbers no output");
        refused(
            &w.tx(vec![(w.lock(), 1)], vec![w.locked_cash(Some(1)), w.lock()], TimeLockCommand::Lock, &w.alice, None),
            "consumes no lock",
        );
    }

    #[test]
    fn unlocking_only_from_the_time_by_the_owner_with_what_it_guards() {
        let w = world();
        let (cash, lock) = ((w.locked_cash(Some(1)), 0), (w.lock(), 1));
        let at = Some(TimeWindow::From(UNTIL));
        let inputs = vec![cash.clone(), lock.clone()];
        assert!(verify(&w.tx(inputs.clone(), vec![w.locked_cash(None)], TimeLockCommand::Unlock, &w.alice, at)).is_ok());
        let early = Some(TimeWindow::between(UNTIL.plus_micros(-10), UNTIL.plus_micros(10)).unwrap());
        refused(&w.tx(inputs.clone(), vec![w.locked_cash(None)], TimeLockCommand::Unlock, &w.alice, early), "holds until");
        refused(&w.tx(inputs.clone(), vec![w.locked_cash(None)], TimeLockCommand::Unlock, &w.alice, None), "holds until");
        refused(&w.tx(inputs.clone(), vec![w.locked_cash(None)], TimeLockCommand::Unlock, &w.bob, at), "owner O=Alice");
        refused(&w.tx(vec![lock], vec![], TimeLockCommand::Unlock, &w.alice, at), "without any state it encumbers");
        refused(&w.tx(inputs, vec![w.locked_cash(None), w.lock()], TimeLockCommand::Unlock, &w.alice, at), "creates no lock");
    }
}
