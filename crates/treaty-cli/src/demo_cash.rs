//! A small cash contract for the demo, written natively against `treaty-core`.
//!
//! It stands in until the finance application (`apps/finance`, built to WebAssembly) lands:
//! cash is an amount of a currency issued by a party; an issue must be signed by the issuer;
//! a move must conserve every issued token and be signed by every input owner, and vouches for
//! one summary line per token moved ("Move 300.00 USD issued by O=Bank, L=London, C=GB").

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use treaty_core::{
    AbstractParty, Amount, Attachment, CommandType, ContractRejection, ContractState, ContractVerdict, Currency, Issued, LedgerTransaction,
    SecureHash, TokenType,
};

/// The contract name.
pub const CASH: &str = "demo.Cash";

/// A cash state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cash {
    /// How much, of what, issued by whom.
    pub amount: Amount<Issued<Currency>>,
    /// Who owns it.
    pub owner: AbstractParty,
}

impl ContractState for Cash {
    const TYPE_ID: &'static str = "demo.Cash";
    fn participants(&self) -> Vec<AbstractParty> {
        vec![self.owner.clone()]
    }
}

/// Cash commands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CashCommand {
    /// Create cash (signed by the issuer).
    Issue,
    /// Transfer cash (signed by the owners of the inputs).
    Move,
}

impl CommandType for CashCommand {
    const TYPE_ID: &'static str = "demo.Cash.Command";
}

/// The contract's attachment (its "code" is native here; the bytes identify it).
pub fn attachment() -> Attachment {
    let content: Arc<[u8]> = Arc::from(&b"treaty demo cash contract v1"[..]);
    Attachment { id: SecureHash::sha256(&content), contracts: vec![CASH.to_string()], files: vec![], signers: vec![], content }
}

fn totals(states: &[Cash]) -> Result<BTreeMap<String, Amount<Issued<Currency>>>, ContractRejection> {
    let mut out: BTreeMap<String, Amount<Issued<Currency>>> = BTreeMap::new();
    for s in states {
        let key = s.amount.token.display_name();
        let next = match out.get(&key) {
            Some(sum) => sum.checked_add(&s.amount).map_err(|e| ContractRejection::new(e.to_string()))?,
            None => s.amount.clone(),
        };
        out.insert(key, next);
    }
    Ok(out)
}

/// The cash contract's verification.
pub fn verify(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
    let err = |e: treaty_core::UnpackError| ContractRejection::new(e.to_string());
    let inputs: Vec<Cash> = tx.inputs_of().map_err(err)?;
    let outputs: Vec<Cash> = tx.outputs_of().map_err(err)?;
    let commands = tx.commands_of::<CashCommand>().map_err(err)?;
    let [(command, signers)] = commands.as_slice() else {
        return Err(ContractRejection::new("a cash transaction needs exactly one cash command"));
    };
    if outputs.iter().any(|o| o.amount.quantity == 0) {
        return Err(ContractRejection::new("cash outputs must be positive"));
    }
    match command {
        CashCommand::Issue => {
            if !inputs.is_empty() {
                return Err(ContractRejection::new("an issue consumes no cash"));
            }
            for o in &outputs {
                if !signers.contains(o.amount.token.issuer.party.owning_key()) {
                    return Err(ContractRejection::new(format!("the issuer {} must sign the issue", o.amount.token.issuer.party)));
                }
            }
            Ok(ContractVerdict::default())
        }
        CashCommand::Move => {
            let (ins, outs) = (totals(&inputs)?, totals(&outputs)?);
            if ins.keys().ne(outs.keys()) {
                return Err(ContractRejection::new("a move cannot change which tokens exist"));
            }
            let mut summaries = Vec::new();
            for (token, i) in &ins {
                let o = &outs[token];
                if i.quantity != o.quantity {
                    return Err(ContractRejection::new(format!("cash is not conserved: {i} in, {o} out")));
                }
                summaries.push(format!("Move {o}"));
            }
            for i in &inputs {
                if !signers.contains(i.owner.owning_key()) {
                    return Err(ContractRejection::new(format!("owner {} must sign the move", i.owner)));
                }
            }
            Ok(ContractVerdict { summaries })
        }
    }
}
