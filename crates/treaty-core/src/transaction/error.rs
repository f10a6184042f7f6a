//! Everything that can be wrong with a transaction, each with a stable code operators can
//! search for.

use crate::crypto::{CryptoError, PublicKey};
use crate::encoding::DecodeError;
use crate::hash::SecureHash;
use crate::state::StateRef;

use super::components::ComponentGroup;

/// Why a transaction was refused. Each variant names exactly what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    // --- encoding ---------------------------------------------------------------------------
    /// The transaction bytes do not decode.
    #[error("transaction does not decode: {0}")]
    Decode(DecodeError),
    /// A group number this version does not know.
    #[error("unknown component group {0}")]
    UnknownGroup(u8),
    /// Groups out of order, repeated, or present but empty.
    #[error("component groups are not canonical: {0}")]
    NonCanonicalGroups(&'static str),
    /// A group holds more components than allowed.
    #[error("group {group:?} has {count} components, more than the limit of {limit}")]
    TooManyComponents {
        /// The group.
        group: ComponentGroup,
        /// Components present.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A component does not decode as its group's type.
    #[error("component {index} of group {group:?} does not decode: {error}")]
    Component {
        /// The group.
        group: ComponentGroup,
        /// The component's index.
        index: usize,
        /// The decoding error.
        error: DecodeError,
    },
    /// The signers group does not have one entry per command.
    #[error("{commands} commands but {signers} signer lists")]
    SignersCountMismatch {
        /// Number of commands.
        commands: usize,
        /// Number of signer lists.
        signers: usize,
    },
    /// A command with no signers.
    #[error("command {0} lists no signers")]
    CommandWithoutSigners(usize),
    /// A `Kind` component saying `Normal` (normal transactions have no kind component).
    #[error("a normal transaction must not carry a kind component")]
    NonCanonicalKind,
    /// The privacy salt is all zero.
    #[error("privacy salt is all zero")]
    ZeroSalt,
    // --- resolution -------------------------------------------------------------------------
    /// An input or reference state that could not be found.
    #[error("state {0} could not be resolved (its transaction is unknown or has no such output)")]
    UnresolvedState(StateRef),
    /// An attachment that could not be found.
    #[error("attachment {0} could not be resolved")]
    UnresolvedAttachment(SecureHash),
    // --- structure --------------------------------------------------------------------------
    /// The same state consumed twice.
    #[error("input {0} is listed twice")]
    DuplicateInput(StateRef),
    /// The same state referenced twice.
    #[error("reference {0} is listed twice")]
    DuplicateReference(StateRef),
    /// A state both consumed and referenced.
    #[error("state {0} is both an input and a reference")]
    InputIsAlsoReference(StateRef),
    /// Inputs, references or a time window without a notary.
    #[error("transaction has {0} but names no notary")]
    NotaryMissing(&'static str),
    /// An input or reference guarded by a different notary than the transaction's.
    #[error("{which} {state} is on notary {found}, but the transaction's notary is {expected}")]
    WrongNotary {
        /// "input" or "reference".
        which: &'static str,
        /// The state.
        state: StateRef,
        /// The transaction's notary.
        expected: String,
        /// The state's notary.
        found: String,
    },
    /// An output moved to another notary in a normal transaction.
    #[error("output {index} is on notary {found}, but its inputs are on {expected}; use a notary-change transaction")]
    OutputNotaryChanged {
        /// The output.
        index: usize,
        /// The inputs' notary.
        expected: String,
        /// The output's notary.
        found: String,
    },
    /// An output encumbered by an output that does not exist.
    #[error("output {index} is encumbered by output {encumbrance}, but there are only {outputs} outputs")]
    EncumbranceOutOfRange {
        /// The encumbered output.
        index: usize,
        /// Its encumbrance index.
        encumbrance: u32,
        /// Number of outputs.
        outputs: usize,
    },
    /// An output encumbered by itself.
    #[error("output {0} is encumbered by itself")]
    EncumbranceSelf(usize),
    /// An encumbered output and its encumbrance on different notaries.
    #[error("output {index} and its encumbrance {encumbrance} are on different notaries")]
    EncumbranceNotaryMismatch {
        /// The encumbered output.
        index: usize,
        /// Its encumbrance.
        encumbrance: u32,
    },
    /// An encumbered input consumed without its encumbrance.
    #[error("input {input} is encumbered by {encumbrance}, which is not consumed by this transaction")]
    EncumbranceNotConsumed {
        /// The encumbered input.
        input: StateRef,
        /// The encumbrance that must be consumed with it.
        encumbrance: StateRef,
    },
    /// The same attachment listed twice.
    #[error("attachment {0} is listed twice")]
    DuplicateAttachment(SecureHash),
    /// Two attachments defining the same contract or data file.
    #[error("attachments {first} and {second} both define {what} {name:?}")]
    AttachmentOverlap {
        /// "contract" or "file".
        what: &'static str,
        /// The contract or file name.
        name: String,
        /// One attachment.
        first: SecureHash,
        /// The other.
        second: SecureHash,
    },
    /// A contract named by a state with no attachment defining it.
    #[error("no attachment of the transaction defines contract {0:?}")]
    MissingContractAttachment(String),
    /// A notary-change transaction that does not just move its inputs.
    #[error("invalid notary change: {0}")]
    InvalidNotaryChange(String),
    /// A contract-upgrade transaction that breaks the upgrade rules.
    #[error("invalid contract upgrade: {0}")]
    InvalidContractUpgrade(String),
    // --- signatures -------------------------------------------------------------------------
    /// A signature that does not verify.
    #[error("transaction {tx_id}: invalid signature: {error}")]
    InvalidSignature {
        /// The transaction.
        tx_id: SecureHash,
        /// What is wrong with it.
        error: CryptoError,
    },
    /// Required keys without signatures.
    #[error("transaction {tx_id} is missing signatures from {}", describe_keys(missing))]
    SignaturesMissing {
        /// The transaction.
        tx_id: SecureHash,
        /// The required keys not fulfilled.
        missing: Vec<PublicKey>,
    },
    // --- contracts --------------------------------------------------------------------------
    /// A contract rejected the transaction.
    #[error("contract {contract} rejected transaction {tx_id}: {message}")]
    ContractRejected {
        /// The transaction.
        tx_id: SecureHash,
        /// The contract.
        contract: String,
        /// Its reason.
        message: String,
    },
    /// Summary lines that no contract vouched for, or that contracts expected but are absent.
    #[error("summaries do not match what the contracts say: unexpected {unexpected:?}, missing {missing:?}")]
    SummariesMismatch {
        /// Lines in the transaction no contract produced.
        unexpected: Vec<String>,
        /// Lines contracts produced that the transaction lacks.
        missing: Vec<String>,
    },
}

fn describe_keys(keys: &[PublicKey]) -> String {
    keys.iter().map(PublicKey::short).collect::<Vec<_>>().join(", ")
}

impl TransactionError {
    /// A stable code for this kind of error, for logs, metrics and operators' searches.
    pub fn code(&self) -> &'static str {
        use TransactionError::*;
        match self {
            Decode(_) => "TX-DECODE",
            UnknownGroup(_) => "TX-UNKNOWN-GROUP",
            NonCanonicalGroups(_) => "TX-NONCANONICAL-GROUPS",
            TooManyComponents { .. } => "TX-TOO-MANY-COMPONENTS",
            Component { .. } => "TX-COMPONENT-DECODE",
            SignersCountMismatch { .. } => "TX-SIGNERS-COUNT",
            CommandWithoutSigners(_) => "TX-COMMAND-NO-SIGNERS",
            NonCanonicalKind => "TX-NONCANONICAL-KIND",
            ZeroSalt => "TX-ZERO-SALT",
            UnresolvedState(_) => "TX-UNRESOLVED-STATE",
            UnresolvedAttachment(_) => "TX-UNRESOLVED-ATTACHMENT",
            DuplicateInput(_) => "TX-DUPLICATE-INPUT",
            DuplicateReference(_) => "TX-DUPLICATE-REFERENCE",
            InputIsAlsoReference(_) => "TX-INPUT-IS-REFERENCE",
            NotaryMissing(_) => "TX-NOTARY-MISSING",
            WrongNotary { .. } => "TX-WRONG-NOTARY",
            OutputNotaryChanged { .. } => "TX-OUTPUT-NOTARY-CHANGED",
            EncumbranceOutOfRange { .. } => "TX-ENCUMBRANCE-RANGE",
            EncumbranceSelf(_) => "TX-ENCUMBRANCE-SELF",
            EncumbranceNotaryMismatch { .. } => "TX-ENCUMBRANCE-NOTARY",
            EncumbranceNotConsumed { .. } => "TX-ENCUMBRANCE-NOT-CONSUMED",
            DuplicateAttachment(_) => "TX-DUPLICATE-ATTACHMENT",
            AttachmentOverlap { .. } => "TX-ATTACHMENT-OVERLAP",
            MissingContractAttachment(_) => "TX-MISSING-CONTRACT-ATTACHMENT",
            InvalidNotaryChange(_) => "TX-INVALID-NOTARY-CHANGE",
            InvalidContractUpgrade(_) => "TX-INVALID-CONTRACT-UPGRADE",
            InvalidSignature { .. } => "TX-INVALID-SIGNATURE",
            SignaturesMissing { .. } => "TX-SIGNATURES-MISSING",
            ContractRejected { .. } => "TX-CONTRACT-REJECTED",
            SummariesMismatch { .. } => "TX-SUMMARIES-MISMATCH",
        }
    }
}
