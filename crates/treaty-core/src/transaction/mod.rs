//! Transactions: component groups, ids, tear-offs, signatures and verification.

mod components;
mod error;
mod filtered;
mod ledger;
mod signed;
mod wire;

pub use components::{Command, CommandData, CommandType, ComponentGroup, GROUP_SLOTS, PrivacySalt, TransactionKind};
pub use error::TransactionError;
pub use filtered::{FilteredGroup, FilteredTransaction, FilteredTransactionError};
pub use ledger::{Attachment, LedgerResolver, LedgerTransaction, MapResolver, VerifyOptions, notary_change_outputs, verify_transaction};
pub use signed::{PARALLEL_SIGNATURES, SignedTransaction};
pub use wire::{GroupBytes, Limits, TransactionBuilder, TransactionComponents, WireTransaction};
