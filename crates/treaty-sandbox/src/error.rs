//! Sandbox errors, each with a stable code. When a contract is run through the
//! [`treaty_core::ContractVerifier`] seam, these become the rejection message
//! `"[CODE] description"`; a contract's own rejection keeps its message unprefixed.

use treaty_core::SecureHash;

use crate::bundle::BundleError;
use crate::constraints::ConstraintError;

/// Why the sandbox could not accept a contract's verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// The engine itself failed (configuration; should not happen).
    #[error("sandbox engine error: {0}")]
    Engine(String),
    /// The module is larger than the network allows.
    #[error("contract module is {size} bytes, over the limit of {limit}")]
    ModuleTooLarge {
        /// Bytes.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// Not a valid module, or not shaped like a contract module.
    #[error("invalid contract module: {0}")]
    InvalidModule(String),
    /// An import outside the host ABI (refused at load).
    #[error("contract module imports {module}::{name}, which the host does not provide")]
    ForbiddenImport {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
    },
    /// The fuel budget ran out (same point on every machine).
    #[error("contract ran out of fuel (budget {budget})")]
    OutOfFuel {
        /// The budget.
        budget: u64,
    },
    /// The contract tried to grow memory past the limit.
    #[error("contract tried to grow memory to {requested} bytes, over the limit of {limit}")]
    MemoryLimit {
        /// Bytes requested.
        requested: u64,
        /// Limit.
        limit: u64,
    },
    /// The wasm call stack overflowed.
    #[error("contract overflowed its stack")]
    StackOverflow,
    /// The contract panicked.
    #[error("contract panicked: {0}")]
    Panicked(String),
    /// Any other trap.
    #[error("contract trapped: {0}")]
    Trapped(String),
    /// The module returned without a verdict.
    #[error("contract returned no verdict")]
    NoVerdict,
    /// The verdict does not decode.
    #[error("contract verdict is malformed: {0}")]
    MalformedVerdict(String),
    /// The attachment bundle is unacceptable.
    #[error("attachment {id}: {error}")]
    Bundle {
        /// The attachment.
        id: SecureHash,
        /// What is wrong.
        error: BundleError,
    },
    /// The attachment's bytes do not hash to its id.
    #[error("attachment {id} content hashes to {actual}")]
    AttachmentHashMismatch {
        /// Claimed id.
        id: SecureHash,
        /// Actual hash.
        actual: SecureHash,
    },
    /// The resolver's description of an attachment differs from its manifest.
    #[error("attachment {0}: its manifest does not match the contracts and files it was registered with")]
    ManifestMismatch(SecureHash),
    /// No attachment of the transaction defines the contract (or it has no module).
    #[error("no attachment of the transaction holds code for contract {0}")]
    NoCode(String),
    /// A constraint check failed.
    #[error(transparent)]
    Constraint(#[from] ConstraintError),
}

impl SandboxError {
    /// A stable code for operators.
    pub fn code(&self) -> &'static str {
        match self {
            SandboxError::Engine(_) => "SANDBOX-ENGINE",
            SandboxError::ModuleTooLarge { .. } => "SANDBOX-MODULE-TOO-LARGE",
            SandboxError::InvalidModule(_) => "SANDBOX-INVALID-MODULE",
            SandboxError::ForbiddenImport { .. } => "SANDBOX-FORBIDDEN-IMPORT",
            SandboxError::OutOfFuel { .. } => "SANDBOX-OUT-OF-FUEL",
            SandboxError::MemoryLimit { .. } => "SANDBOX-MEMORY-LIMIT",
            SandboxError::StackOverflow => "SANDBOX-STACK-OVERFLOW",
            SandboxError::Panicked(_) => "SANDBOX-PANIC",
            SandboxError::Trapped(_) => "SANDBOX-TRAP",
            SandboxError::NoVerdict => "SANDBOX-NO-VERDICT",
            SandboxError::MalformedVerdict(_) => "SANDBOX-MALFORMED-VERDICT",
            SandboxError::Bundle { error, .. } => error.code(),
            SandboxError::AttachmentHashMismatch { .. } => "SANDBOX-ATTACHMENT-HASH",
            SandboxError::ManifestMismatch(_) => "SANDBOX-MANIFEST-MISMATCH",
            SandboxError::NoCode(_) => "SANDBOX-NO-CODE",
            SandboxError::Constraint(c) => c.code(),
        }
    }
}
