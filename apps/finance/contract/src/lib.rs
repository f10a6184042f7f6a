//! Treaty's finance contracts.
//!
//! `treaty.finance.Cash`: cash is an amount of a currency issued by a party
//! (`Amount<Issued<Currency>>`); tokens from different issuers never mix. An issue consumes
//! nothing and is signed by the issuer; a move conserves every issued token and is signed by
//! every input owner, and vouches for one summary line per token moved
//! (`"Move 1000.00 USD issued by O=Bank, L=London, C=GB"`); an exit destroys cash and is signed
//! by the issuer and the owners. The finance application's flows (`CashIssue`, `CashPayment`,
//! `CashExit`) build on this contract.
//!
//! `treaty.finance.Obligation` ([`obligation`]): a debt due by a date, settled in cash or
//! declared defaulted once due.
//!
//! `treaty.finance.TimeLock` ([`timelock`]): freezes the states it encumbers (time-locked
//! cash) until a time.
//!
//! `treaty.finance.Tokens` and `treaty.finance.TokenTypes` ([`tokens`]): fungible and
//! non-fungible tokens of fixed or evolvable types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use treaty_contract_sdk::treaty_core::{AbstractParty, Amount, CommandType, ContractState, Currency, Issued, OwnableState, TokenType};
use treaty_contract_sdk::{ContractRejection, ContractVerdict, LedgerTransaction, require};

pub mod fx;
pub mod obligation;
#[cfg(test)]
mod testing;
pub mod timelock;
pub mod tokens;
pub use fx::{FxFix, RATE_SCALE, format_rate, parse_rate};
pub use obligation::{OBLIGATION, Obligation, ObligationCommand};
pub use timelock::{TIME_LOCK, TimeLock, TimeLockCommand};
pub use tokens::{
    EvolvableTokenType, FungibleToken, IssuedToken, NonFungibleToken, TOKEN_TYPES, TOKENS, TokenCommand, TokenKind, TokenTypeCommand,
};

/// The cash contract's name.
pub const CASH: &str = "treaty.finance.Cash";

/// A cash state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cash {
    /// How much, of what, issued by whom.
    pub amount: Amount<Issued<Currency>>,
    /// Who owns it.
    pub owner: AbstractParty,
}

impl ContractState for Cash {
    const TYPE_ID: &'static str = "treaty.finance.Cash";
    fn participants(&self) -> Vec<AbstractParty> {
        vec![self.owner.clone()]
    }
}

impl OwnableState for Cash {
    fn owner(&self) -> &AbstractParty {
        &self.owner
    }
    fn with_new_owner(&self, new_owner: AbstractParty) -> Self {
        Cash { amount: self.amount.clone(), owner: new_owner }
    }
}

/// Cash commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CashCommand {
    /// Create cash (signed by the issuer).
    Issue,
    /// Transfer cash (signed by the owners of the inputs).
    Move,
    /// Destroy cash (signed by the issuer and the owners of the inputs).
    Exit {
        /// The amount leaving the ledger (boxed only to keep the enum small; encodes the same).
        amount: Box<Amount<Issued<Currency>>>,
    },
}

impl CommandType for CashCommand {
    const TYPE_ID: &'static str = "treaty.finance.Cash.Command";
}

fn reject(e: impl ToString) -> ContractRejection {
    ContractRejection::new(e.to_string())
}

/// Amounts per issued token. The key is the whole token — the issuer's party (name *and* key)
/// and reference, and the currency — never its display name: two issuers that share a name
/// (one of them a forgery under another key) hold different tokens.
type Totals = BTreeMap<Issued<Currency>, Amount<Issued<Currency>>>;

fn totals(states: &[Cash]) -> Result<Totals, ContractRejection> {
    let mut out: Totals = BTreeMap::new();
    for s in states {
        let next = match out.get(&s.amount.token) {
            Some(sum) => sum.checked_add(&s.amount).map_err(reject)?,
            None => s.amount.clone(),
        };
        out.insert(s.amount.token.clone(), next);
    }
    Ok(out)
}

/// Every token of `ins` and `outs` but `except` is conserved: as much of it out as in, and
/// no token out that was not in.
fn conserved(ins: &Totals, outs: &Totals, except: Option<&Issued<Currency>>) -> Result<(), ContractRejection> {
    for (token, o) in outs {
        if Some(token) != except && !ins.contains_key(token) {
            return Err(reject(format!("{o} comes out of nothing: no {} is consumed", token.display_name())));
        }
    }
    for (token, i) in ins {
        if Some(token) == except {
            continue;
        }
        let out = outs.get(token).map_or(0, |o| o.quantity);
        require(i.quantity == out, || format!("cash is not conserved: {i} in, {} out", Amount::new(out, token.clone())))?;
    }
    Ok(())
}

/// `treaty.finance.Cash`.
pub fn verify(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
    let inputs: Vec<Cash> = tx.inputs_of().map_err(reject)?;
    let outputs: Vec<Cash> = tx.outputs_of().map_err(reject)?;
    let commands = tx.commands_of::<CashCommand>().map_err(reject)?;
    let [(command, signers)] = commands.as_slice() else { return Err(reject("a cash transaction needs exactly one cash command")) };
    require(outputs.iter().all(|o| o.amount.quantity > 0), || "cash outputs must be positive".into())?;
    let owners_signed = |states: &[Cash]| -> Result<(), ContractRejection> {
        for s in states {
            require(signers.contains(s.owner.owning_key()), || format!("owner {} must sign", s.owner))?;
        }
        Ok(())
    };
    match command {
        CashCommand::Issue => {
            require(inputs.is_empty(), || "an issue consumes no cash".into())?;
            for o in &outputs {
                require(signers.contains(o.amount.token.issuer.party.owning_key()), || {
                    format!("the issuer {} must sign the issue", o.amount.token.issuer.party)
                })?;
            }
            Ok(ContractVerdict::default())
        }
        CashCommand::Move => {
            let (ins, outs) = (totals(&inputs)?, totals(&outputs)?);
            conserved(&ins, &outs, None)?;
            owners_signed(&inputs)?;
            Ok(ContractVerdict { summaries: outs.values().map(|o| format!("Move {o}")).collect() })
        }
        CashCommand::Exit { amount } => {
            let (ins, outs) = (totals(&inputs)?, totals(&outputs)?);
            let i = ins.get(&amount.token).ok_or_else(|| reject(format!("no {} is consumed to exit", amount.token.display_name())))?;
            let left = outs.get(&amount.token).map_or(0, |a| a.quantity);
            require(i.quantity.checked_sub(amount.quantity) == Some(left), || {
                format!("exiting {amount} from {i} must leave {left} in outputs")
            })?;
            // Only the exited token leaves; any other cash in the transaction is moved as is.
            conserved(&ins, &outs, Some(&amount.token))?;
            require(signers.contains(amount.token.issuer.party.owning_key()), || "the issuer must sign an exit".into())?;
            owners_signed(&inputs)?;
            Ok(ContractVerdict { summaries: vec![format!("Exit {amount}")] })
        }
    }
}

treaty_contract_sdk::export_contracts! {
    "treaty.finance.Cash" => verify,
    "treaty.finance.Obligation" => obligation::verify,
    "treaty.finance.TimeLock" => timelock::verify,
    "treaty.finance.Tokens" => tokens::verify_tokens,
    "treaty.finance.TokenTypes" => tokens::verify_token_types,
}

#[cfg(test)]
mod tests {
    use treaty_contract_sdk::treaty_core::{Party, PartyAndReference, TransactionState};

    use super::*;
    use crate::testing::{World, party, refused, world};

    fn usd(issuer: &Party) -> Issued<Currency> {
        Issued { issuer: PartyAndReference { party: issuer.clone().into(), reference: vec![0] }, product: Currency::new("USD").unwrap() }
    }

    fn cash(w: &World, units: u64, issuer: &Party, owner: &Party) -> TransactionState {
        w.state(&Cash { amount: Amount::new(units, usd(issuer)), owner: owner.clone().into() }, CASH)
    }

    fn exit(units: u64, issuer: &Party) -> CashCommand {
        CashCommand::Exit { amount: Box::new(Amount::new(units, usd(issuer))) }
    }

    #[test]
    fn an_exit_moves_other_cash_unchanged_and_creates_none() {
        let w = world();
        let bank = party("O=Bank,L=London,C=GB", 9);
        // Alice exits 1 of her own cash and tries to bring 1,000,000 of the bank's into being.
        let mint =
            w.tx(vec![(cash(&w, 1, &w.alice, &w.alice), 0)], vec![cash(&w, 1_000_000, &bank, &w.alice)], exit(1, &w.alice), &w.alice, None);
        refused(verify, &mint, "comes out of nothing");
        // Other cash may pass through an exit, unchanged.
        let inputs = vec![(cash(&w, 5, &w.alice, &w.alice), 0), (cash(&w, 7, &bank, &w.alice), 1)];
        let through =
            w.tx(inputs.clone(), vec![cash(&w, 2, &w.alice, &w.alice), cash(&w, 7, &bank, &w.alice)], exit(3, &w.alice), &w.alice, None);
        assert!(verify(&through).is_ok());
        let grown =
            w.tx(inputs.clone(), vec![cash(&w, 2, &w.alice, &w.alice), cash(&w, 8, &bank, &w.alice)], exit(3, &w.alice), &w.alice, None);
        refused(verify, &grown, "cash is not conserved");
        let dropped = w.tx(inputs, vec![cash(&w, 2, &w.alice, &w.alice)], exit(3, &w.alice), &w.alice, None);
        refused(verify, &dropped, "cash is not conserved");
    }

    #[test]
    fn issuers_sharing_a_name_hold_different_cash() {
        let w = world();
        let bank = party("O=Bank,L=London,C=GB", 9);
        // Anyone can issue cash in their own key under the bank's name: it is not the bank's.
        let forged = Party { name: bank.name.clone(), owning_key: w.alice.owning_key.clone() };
        assert!(verify(&w.tx(vec![], vec![cash(&w, 100, &forged, &w.alice)], CashCommand::Issue, &w.alice, None)).is_ok());
        // No move turns it into the bank's, in whole or in part...
        let input = vec![(cash(&w, 100, &forged, &w.alice), 0)];
        let relabelled = w.tx(input.clone(), vec![cash(&w, 100, &bank, &w.bob)], CashCommand::Move, &w.alice, None);
        refused(verify, &relabelled, "comes out of nothing");
        let half = w.tx(input.clone(), vec![cash(&w, 50, &forged, &w.bob), cash(&w, 50, &bank, &w.bob)], CashCommand::Move, &w.alice, None);
        refused(verify, &half, "comes out of nothing");
        // ...while moving it as what it is works.
        assert!(verify(&w.tx(input, vec![cash(&w, 100, &forged, &w.bob)], CashCommand::Move, &w.alice, None)).is_ok());
    }
}
