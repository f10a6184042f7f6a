//! # treaty-core
//!
//! Treaty's ledger data model and its verification rules (white paper "Data model"):
//! hashes, keys and composite keys, identities, states, amounts, time windows, transactions
//! with Merkle-tree ids and tear-offs, signatures, and the verification pipeline.
//!
//! This crate is **pure**: the same input gives the same answer on every machine. It never
//! reads a clock, a file, a socket or a random source — instants and random bytes are
//! parameters — and it builds for `wasm32-unknown-unknown`, because contracts use it.
//!
//! Everything that is hashed or signed is encoded canonically with BCS ([`encoding`]) and kept
//! as those bytes; it is never re-encoded to be checked.

pub mod amount;
pub mod composite;
pub mod confidential;
pub mod contract;
pub mod crypto;
pub mod encoding;
pub mod hash;
pub mod identity;
pub mod merkle;
pub mod params;
pub mod state;
pub mod time;
pub mod transaction;

pub use amount::{Amount, AmountError, Currency, Issued, TokenType};
pub use composite::{CompositeKey, CompositeKeyError, WeightedKey};
pub use contract::{ContractInput, ContractOutput, ContractRejection, ContractVerdict, ContractVerifier, NativeContracts};
#[cfg(feature = "parallel")]
pub use crypto::verify_many;
pub use crypto::{CryptoError, KeyPair, PublicKey, SignatureMetadata, SignatureScheme, TransactionSignature};
pub use hash::SecureHash;
pub use identity::{AbstractParty, AnonymousParty, NameError, Party, PartyAndReference, X500Name};
pub use params::{NetworkParameters, NotaryInfo, SandboxLimits};
pub use state::{
    AttachmentConstraint, ContractName, ContractState, FungibleState, LinearState, OwnableState, StateAndRef, StateData, StatePointer,
    StateRef, TransactionState, UniqueIdentifier, UnpackError,
};
pub use time::{TimeWindow, Timestamp};
pub use transaction::{
    Attachment, Command, CommandData, CommandType, ComponentGroup, FilteredTransaction, LedgerResolver, LedgerTransaction, Limits,
    MapResolver, PrivacySalt, SignedTransaction, TransactionBuilder, TransactionError, TransactionKind, VerifyOptions, WireTransaction,
    notary_change_outputs, verify_transaction,
};

/// The platform version this build of Treaty speaks (recorded in signatures).
pub const PLATFORM_VERSION: u32 = 1;
