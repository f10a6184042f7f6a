//! The seam between the platform and contract code.
//!
//! The platform decides *which* contracts must accept a transaction; a [`ContractVerifier`]
//! runs them. `treaty-sandbox` implements it with WebAssembly; [`NativeContracts`] runs plain
//! Rust functions, for unit tests of contract logic and for tools.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::transaction::LedgerTransaction;

/// What the host hands a contract module (BCS-encoded, read through the host ABI; see
/// `docs/sandbox.md`): the contract to run and the resolved transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractInput {
    /// The contract name to verify (a module may define several).
    pub contract: String,
    /// The transaction, resolved.
    pub tx: LedgerTransaction,
}

/// What a contract module hands back (BCS-encoded): the summary lines it vouches for, or its
/// reason for rejecting.
pub type ContractOutput = Result<Vec<String>, String>;

/// What a contract says when it accepts a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContractVerdict {
    /// The summary lines this contract vouches for (white paper "Transaction summaries"): the
    /// transaction's summaries must be exactly the lines all its contracts vouch for.
    pub summaries: Vec<String>,
}

/// Why a contract rejected a transaction.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ContractRejection {
    /// The contract's reason, for people.
    pub message: String,
}

impl ContractRejection {
    /// A rejection with this message.
    pub fn new(message: impl Into<String>) -> Self {
        ContractRejection { message: message.into() }
    }
}

/// Runs contract code against a resolved transaction.
pub trait ContractVerifier: Send + Sync {
    /// Runs `contract`'s verification over `tx`: accept with the summaries it vouches for, or reject.
    fn verify_contract(&self, contract: &str, tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection>;
}

/// A contract written as a native Rust function.
pub type NativeContract = fn(&LedgerTransaction) -> Result<ContractVerdict, ContractRejection>;

/// A [`ContractVerifier`] over native Rust functions, by contract name.
#[derive(Clone, Default)]
pub struct NativeContracts {
    contracts: BTreeMap<String, NativeContract>,
}

impl NativeContracts {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` as the code of `contract`.
    pub fn with(mut self, contract: &str, f: NativeContract) -> Self {
        self.contracts.insert(contract.to_string(), f);
        self
    }
}

impl ContractVerifier for NativeContracts {
    fn verify_contract(&self, contract: &str, tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
        match self.contracts.get(contract) {
            Some(f) => f(tx),
            None => Err(ContractRejection::new(format!("no code is installed for contract {contract}"))),
        }
    }
}

impl core::fmt::Debug for NativeContracts {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.contracts.keys()).finish()
    }
}
