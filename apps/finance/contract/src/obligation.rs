//! `treaty.finance.Obligation`: an obligor owes a beneficiary an amount by a due date.
//!
//! - **Issue** (signed by the obligor): one new obligation, not defaulted, of a positive
//!   amount, between two different parties.
//! - **Settle** (signed by the obligor), before the due date: the obligation is consumed, and
//!   the same transaction pays the beneficiary at least the amount in cash of its currency
//!   (any issuer; the cash contract checks the payment itself). The time window must end by
//!   the due date, so the notary vouches it was on time. An obligation that names an exchange-
//!   rate oracle may instead be paid in another currency: the transaction then carries one
//!   [`FxFix`] from the owed currency to the paid one, signed by that oracle, and pays at
//!   least the amount converted at that rate (rounded up).
//! - **Default** (signed by the beneficiary), from the due date on: the obligation is replaced
//!   by the same obligation marked defaulted. The time window must start at or after the due
//!   date. The finance app schedules this: each obligation asks its beneficiary's node to run
//!   `ObligationDefault` when it falls due (white paper "Event scheduling").

use serde::{Deserialize, Serialize};
use treaty_contract_sdk::treaty_core::{
    AbstractParty, Amount, CommandType, ContractState, Currency, LinearState, Timestamp, UniqueIdentifier,
};
use treaty_contract_sdk::{ContractRejection, ContractVerdict, LedgerTransaction, require};

use crate::Cash;
use crate::fx::FxFix;

/// The obligation contract's name.
pub const OBLIGATION: &str = "treaty.finance.Obligation";

/// An obligation to pay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Obligation {
    /// Who owes.
    pub obligor: AbstractParty,
    /// Who is owed.
    pub beneficiary: AbstractParty,
    /// How much (in cash of any issuer).
    pub amount: Amount<Currency>,
    /// Paid by this time, or it may be defaulted.
    pub due: Timestamp,
    /// Whether the beneficiary has declared it defaulted.
    pub defaulted: bool,
    /// The same in every version of this obligation.
    pub linear_id: UniqueIdentifier,
    /// The exchange-rate oracle whose fixes both parties accept for paying in another
    /// currency (none: only the owed currency settles it).
    pub oracle: Option<AbstractParty>,
}

impl ContractState for Obligation {
    const TYPE_ID: &'static str = "treaty.finance.Obligation";
    fn participants(&self) -> Vec<AbstractParty> {
        vec![self.obligor.clone(), self.beneficiary.clone()]
    }
}

impl LinearState for Obligation {
    fn linear_id(&self) -> &UniqueIdentifier {
        &self.linear_id
    }
}

/// Obligation commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObligationCommand {
    /// Create an obligation (signed by the obligor).
    Issue,
    /// Pay it off in the same transaction, by the due date (signed by the obligor).
    Settle,
    /// Declare it defaulted, from the due date on (signed by the beneficiary).
    Default,
}

impl CommandType for ObligationCommand {
    const TYPE_ID: &'static str = "treaty.finance.Obligation.Command";
}

fn reject(e: impl ToString) -> ContractRejection {
    ContractRejection::new(e.to_string())
}

/// `treaty.finance.Obligation`.
pub fn verify(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
    let inputs: Vec<Obligation> = tx.inputs_of().map_err(reject)?;
    let outputs: Vec<Obligation> = tx.outputs_of().map_err(reject)?;
    let commands = tx.commands_of::<ObligationCommand>().map_err(reject)?;
    let [(command, signers)] = commands.as_slice() else {
        return Err(reject("an obligation transaction needs exactly one obligation command"));
    };
    let signed =
        |party: &AbstractParty, role: &str| require(signers.contains(party.owning_key()), || format!("the {role} {party} must sign"));
    match command {
        ObligationCommand::Issue => {
            require(inputs.is_empty(), || "an issue consumes no obligation".into())?;
            let [o] = outputs.as_slice() else { return Err(reject("an issue creates exactly one obligation")) };
            require(o.amount.quantity > 0, || "the amount owed must be positive".into())?;
            require(!o.defaulted, || "a new obligation cannot be defaulted".into())?;
            require(o.obligor.owning_key() != o.beneficiary.owning_key(), || "obligor and beneficiary must differ".into())?;
            signed(&o.obligor, "obligor")?;
        }
        ObligationCommand::Settle => {
            let [o] = inputs.as_slice() else { return Err(reject("a settlement consumes exactly one obligation")) };
            require(outputs.is_empty(), || "a settled obligation leaves no obligation behind".into())?;
            require(!o.defaulted, || "a defaulted obligation cannot be settled".into())?;
            let until = tx.time_window.and_then(|w| w.until_time());
            require(until.is_some_and(|t| t <= o.due), || format!("a settlement needs a time window ending by the due date {}", o.due))?;
            let fixes = tx.commands_of::<FxFix>().map_err(reject)?;
            let owed = match fixes.as_slice() {
                [] => o.amount.clone(),
                [(fix, fix_signers)] => {
                    let oracle =
                        o.oracle.as_ref().ok_or_else(|| reject("this obligation names no oracle: it settles only in its own currency"))?;
                    require(fix_signers.contains(oracle.owning_key()), || {
                        format!("the fix {} must be signed by the oracle {oracle}", fix.pair())
                    })?;
                    let quote = Currency::new(&fix.quote).map_err(reject)?;
                    fix.convert(&o.amount, &quote).ok_or_else(|| reject(format!("the fix {} does not convert {}", fix.pair(), o.amount)))?
                }
                _ => return Err(reject("a settlement uses at most one exchange-rate fix")),
            };
            let mut paid: u64 = 0;
            for c in tx.outputs_of::<Cash>().map_err(reject)? {
                if c.owner.owning_key() == o.beneficiary.owning_key() && c.amount.token.product == owed.token {
                    paid = paid.saturating_add(c.amount.quantity);
                }
            }
            require(paid >= owed.quantity, || {
                format!("the beneficiary must be paid {owed} in this transaction; {} is paid", Amount::new(paid, owed.token.clone()))
            })?;
            signed(&o.obligor, "obligor")?;
        }
        ObligationCommand::Default => {
            let ([i], [o]) = (inputs.as_slice(), outputs.as_slice()) else {
                return Err(reject("a default replaces exactly one obligation"));
            };
            require(!i.defaulted, || "the obligation is defaulted already".into())?;
            require(o.defaulted && Obligation { defaulted: true, ..i.clone() } == *o, || {
                "a default changes nothing but marking the obligation defaulted".into()
            })?;
            let from = tx.time_window.and_then(|w| w.from_time());
            require(from.is_some_and(|t| t >= i.due), || {
                format!("a default needs a time window starting at or after the due date {}", i.due)
            })?;
            signed(&i.beneficiary, "beneficiary")?;
        }
    }
    Ok(ContractVerdict::default())
}

#[cfg(test)]
mod tests {
    use treaty_contract_sdk::treaty_core::{Command, Party, TimeWindow, TransactionState};

    use super::*;
    use crate::testing::{World, world};

    const DUE: Timestamp = Timestamp(1_000_000_000);

    impl World {
        fn obligation(&self, cents: u64) -> Obligation {
            Obligation {
                obligor: self.alice.clone().into(),
                beneficiary: self.bob.clone().into(),
                amount: Amount::new(cents, Currency::new("USD").unwrap()),
                due: DUE,
                defaulted: false,
                linear_id: UniqueIdentifier::new(None, [9; 16]),
                oracle: Some(self.oracle.clone().into()),
            }
        }
        fn usd(&self, cents: u64, owner: &Party) -> TransactionState {
            self.cash_in(cents, "USD", owner)
        }
        /// An obligation transaction whose inputs come from one earlier transaction, in order.
        fn otx(
            &self,
            inputs: Vec<TransactionState>,
            outputs: Vec<TransactionState>,
            command: ObligationCommand,
            signer: &Party,
            window: Option<TimeWindow>,
        ) -> LedgerTransaction {
            self.tx(inputs.into_iter().zip(0..).collect(), outputs, command, signer, window)
        }
    }

    fn refused(tx: &LedgerTransaction, why: &str) {
        crate::testing::refused(verify, tx, why);
    }

    #[test]
    fn issue_needs_the_obligor_and_a_positive_undefaulted_amount() {
        let w = world();
        let o = w.obligation(10000);
        let out = w.state(&o, OBLIGATION);
        assert!(verify(&w.otx(vec![], vec![out.clone()], ObligationCommand::Issue, &w.alice, None)).is_ok());
        refused(&w.otx(vec![], vec![out], ObligationCommand::Issue, &w.bob, None), "the obligor O=Alice");
        refused(&w.otx(vec![], vec![w.state(&w.obligation(0), OBLIGATION)], ObligationCommand::Issue, &w.alice, None), "positive");
        let defaulted = Obligation { defaulted: true, ..o.clone() };
        refused(&w.otx(vec![], vec![w.state(&defaulted, OBLIGATION)], ObligationCommand::Issue, &w.alice, None), "cannot be defaulted");
        let to_self = Obligation { beneficiary: w.alice.clone().into(), ..o };
        refused(&w.otx(vec![], vec![w.state(&to_self, OBLIGATION)], ObligationCommand::Issue, &w.alice, None), "must differ");
    }

    #[test]
    fn default_only_from_the_due_date_by_the_beneficiary() {
        let w = world();
        let o = w.obligation(10000);
        let (input, output) = (w.state(&o, OBLIGATION), w.state(&Obligation { defaulted: true, ..o.clone() }, OBLIGATION));
        let at_due = Some(TimeWindow::From(DUE));
        assert!(verify(&w.otx(vec![input.clone()], vec![output.clone()], ObligationCommand::Default, &w.bob, at_due)).is_ok());
        let early = Some(TimeWindow::From(DUE.plus_micros(-1)));
        refused(&w.otx(vec![input.clone()], vec![output.clone()], ObligationCommand::Default, &w.bob, early), "at or after the due date");
        refused(&w.otx(vec![input.clone()], vec![output.clone()], ObligationCommand::Default, &w.bob, None), "at or after the due date");
        refused(&w.otx(vec![input.clone()], vec![output.clone()], ObligationCommand::Default, &w.alice, at_due), "the beneficiary O=Bob");
        let changed =
            w.state(&Obligation { defaulted: true, amount: Amount::new(1, Currency::new("USD").unwrap()), ..o.clone() }, OBLIGATION);
        refused(&w.otx(vec![input], vec![changed], ObligationCommand::Default, &w.bob, at_due), "changes nothing but");
        refused(&w.otx(vec![output.clone()], vec![output], ObligationCommand::Default, &w.bob, at_due), "defaulted already");
    }

    #[test]
    fn settlement_pays_the_beneficiary_by_the_due_date() {
        let w = world();
        let o = w.obligation(10000);
        let input = w.state(&o, OBLIGATION);
        let on_time = Some(TimeWindow::Until(DUE));
        let paid = vec![w.usd(6000, &w.bob), w.usd(4000, &w.bob), w.usd(500, &w.alice)];
        assert!(verify(&w.otx(vec![input.clone()], paid.clone(), ObligationCommand::Settle, &w.alice, on_time)).is_ok());
        let short = vec![w.usd(6000, &w.bob), w.usd(4500, &w.alice)];
        refused(&w.otx(vec![input.clone()], short, ObligationCommand::Settle, &w.alice, on_time), "must be paid 100.00 USD");
        let late = Some(TimeWindow::Until(DUE.plus_micros(1)));
        refused(&w.otx(vec![input.clone()], paid.clone(), ObligationCommand::Settle, &w.alice, late), "ending by the due date");
        refused(&w.otx(vec![input.clone()], paid.clone(), ObligationCommand::Settle, &w.bob, on_time), "the obligor O=Alice");
        let defaulted = w.state(&Obligation { defaulted: true, ..o }, OBLIGATION);
        refused(&w.otx(vec![defaulted], paid, ObligationCommand::Settle, &w.alice, on_time), "cannot be settled");
    }

    #[test]
    fn settlement_in_another_currency_needs_the_named_oracles_fix() {
        let w = world();
        let o = w.obligation(10000);
        let input = w.state(&o, OBLIGATION);
        let on_time = Some(TimeWindow::Until(DUE));
        let fix = FxFix { base: "USD".into(), quote: "EUR".into(), rate_ppm: 920_000 };
        let with_fix = |outputs: Vec<TransactionState>, fix: &FxFix, signer: &Party| {
            let mut tx = w.otx(vec![input.clone()], outputs, ObligationCommand::Settle, &w.alice, on_time);
            tx.commands.push(Command::new(fix, vec![signer.owning_key.clone()]));
            tx
        };
        // 100.00 USD at 0.92 is 92.00 EUR.
        assert!(verify(&with_fix(vec![w.cash_in(9200, "EUR", &w.bob)], &fix, &w.oracle)).is_ok());
        refused(&with_fix(vec![w.cash_in(9199, "EUR", &w.bob)], &fix, &w.oracle), "must be paid 92.00 EUR");
        refused(&with_fix(vec![w.cash_in(9200, "EUR", &w.bob)], &fix, &w.bob), "signed by the oracle O=Rates");
        // Without a fix, euros do not count.
        refused(
            &w.otx(vec![input.clone()], vec![w.cash_in(9200, "EUR", &w.bob)], ObligationCommand::Settle, &w.alice, on_time),
            "must be paid 100.00 USD",
        );
        let wrong_pair = FxFix { base: "EUR".into(), quote: "USD".into(), rate_ppm: 1_000_000 };
        refused(&with_fix(vec![w.usd(10000, &w.bob)], &wrong_pair, &w.oracle), "does not convert");
        // An obligation without an oracle settles only in its own currency.
        let plain = w.state(&Obligation { oracle: None, ..o }, OBLIGATION);
        let mut tx = w.otx(vec![plain], vec![w.cash_in(9200, "EUR", &w.bob)], ObligationCommand::Settle, &w.alice, on_time);
        tx.commands.push(Command::new(&fix, vec![w.oracle.owning_key.clone()]));
        refused(&tx, "names no oracle");
    }
}
