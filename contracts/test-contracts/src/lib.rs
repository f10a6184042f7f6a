//! Contracts the sandbox is tested with.
//!
//! - `test.Token`: a fungible token (issue, move with conservation, owners sign); the benchmark's
//!   "simple fungible-token transaction".
//! - `test.Panics`: panics with a message.
//! - `test.Float`: a verdict that depends on floating point (NaN bits), identical everywhere
//!   because the sandbox canonicalises NaNs.
//! - `test.DataFile`: reads a limit from a data file attached to the transaction.
//! - `test.Spin`: loops forever (must run out of fuel).
//! - `test.Hog`: allocates without bound (must hit the memory limit).

use serde::{Deserialize, Serialize};
use treaty_contract_sdk::treaty_core::{AbstractParty, CommandType, ContractState};
use treaty_contract_sdk::{ContractRejection, ContractVerdict, LedgerTransaction, require};

/// A token holding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// Owner.
    pub owner: AbstractParty,
    /// Quantity.
    pub amount: u64,
}

impl ContractState for Token {
    const TYPE_ID: &'static str = "test.Token";
    fn participants(&self) -> Vec<AbstractParty> {
        vec![self.owner.clone()]
    }
}

/// Token commands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TokenCommand {
    /// Create tokens.
    Issue,
    /// Transfer tokens.
    Move,
}

impl CommandType for TokenCommand {
    const TYPE_ID: &'static str = "test.Token.Command";
}

fn reject(e: impl ToString) -> ContractRejection {
    ContractRejection::new(e.to_string())
}

/// `test.Token`.
pub fn token(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
    let inputs: Vec<Token> = tx.inputs_of().map_err(reject)?;
    let outputs: Vec<Token> = tx.outputs_of().map_err(reject)?;
    let commands = tx.commands_of::<TokenCommand>().map_err(reject)?;
    let [(command, signers)] = commands.as_slice() else { return Err(reject("exactly one token command required")) };
    require(outputs.iter().all(|o| o.amount > 0), || "outputs must be positive".into())?;
    match command {
        TokenCommand::Issue => {
            require(inputs.is_empty(), || "an issue consumes no tokens".into())?;
            Ok(ContractVerdict::default())
        }
        TokenCommand::Move => {
            let sum = |v: &[Token]| v.iter().try_fold(0u64, |a, t| a.checked_add(t.amount));
            let (i, o) = (sum(&inputs).ok_or_else(|| reject("overflow"))?, sum(&outputs).ok_or_else(|| reject("overflow"))?);
            require(i == o, || format!("a move must conserve tokens: {i} in, {o} out"))?;
            require(inputs.iter().all(|t| signers.contains(t.owner.owning_key())), || "every input owner must sign".into())?;
            Ok(ContractVerdict { summaries: vec![format!("Move {o} tokens")] })
        }
    }
}

/// `test.Panics`.
pub fn panics(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
    let n = tx.outputs.len() + 41;
    panic!("deliberate panic: n = {n}");
}

/// `test.Float`: accepts iff 0/0 yields the canonical NaN; otherwise names the bits it saw.
pub fn float(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
    let numerator = std::hint::black_box(tx.outputs.len() as f64 * 0.0);
    let denominator = std::hint::black_box(0.0f64);
    let nan = std::hint::black_box(numerator / denominator);
    let bits = (nan * std::hint::black_box(-1.0)).to_bits();
    require(bits == 0x7ff8_0000_0000_0000, || format!("non-canonical NaN {bits:#018x}"))?;
    Ok(ContractVerdict { summaries: vec![] })
}

/// `test.DataFile`: every output's amount must be at most the `max=` in `limits.txt`.
pub fn data_file(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
    let text = treaty_contract_sdk::data_file("limits.txt").ok_or_else(|| reject("data file limits.txt is not attached"))?;
    let text = String::from_utf8(text).map_err(reject)?;
    let max: u64 = text.trim().strip_prefix("max=").and_then(|v| v.parse().ok()).ok_or_else(|| reject("limits.txt must say max=N"))?;
    let outputs: Vec<Token> =
        tx.outputs.iter().filter(|o| o.data.is::<Token>()).map(|o| o.data.unpack()).collect::<Result<_, _>>().map_err(reject)?;
    require(outputs.iter().all(|t| t.amount <= max), || format!("amount above the limit of {max}"))?;
    Ok(ContractVerdict::default())
}

/// `test.Spin`: never returns.
pub fn spin(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
    let mut x = tx.outputs.len() as u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// `test.Hog`: allocates until something gives.
pub fn hog(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![tx.outputs.len() as u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

treaty_contract_sdk::export_contracts! {
    "test.Token" => token,
    "test.Panics" => panics,
    "test.Float" => float,
    "test.DataFile" => data_file,
    "test.Spin" => spin,
    "test.Hog" => hog,
}
