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

type Totals = BTreeMap<String, Amount<Issued<Currency>>>;

fn totals(states: &[Cash]) -> Result<Totals, ContractRejection> {
    let mut out: Totals = BTreeMap::new();
    for s in states {
        let key = s.amount.token.display_name();
        let next = match out.get(&key) {
            Some(sum) => sum.checked_add(&s.amount).map_err(reject)?,
            None => s.amount.clone(),
        };
        out.insert(key, next);
    }
    Ok(out)
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
            require(ins.keys().eq(outs.keys()), || "a move cannot change which tokens exist".into())?;
            let mut summaries = Vec::new();
            for (token, i) in &ins {
                let o = &outs[token];
                require(i.quantity == o.quantity, || format!("cash is not conserved: {i} in, {o} out"))?;
                summaries.push(format!("Move {o}"));
            }
            owners_signed(&inputs)?;
            Ok(ContractVerdict { summaries })
        }
        CashCommand::Exit { amount } => {
            let key = amount.token.display_name();
            let (ins, outs) = (totals(&inputs)?, totals(&outputs)?);
            let i = ins.get(&key).ok_or_else(|| reject(format!("no {key} is consumed to exit")))?;
            let left = outs.get(&key).map(|a| a.quantity).unwrap_or(0);
            require(i.quantity.checked_sub(amount.quantity) == Some(left), || {
                format!("exiting {amount} from {i} must leave {left} in outputs")
            })?;
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
