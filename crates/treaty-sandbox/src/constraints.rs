//! Contract constraints: which attachment may verify a state, how constraints may change from
//! inputs to outputs, and who may define contracts in a reserved namespace.
//!
//! For the contract being verified, the transaction's attachment that defines it must satisfy
//! the constraint of every input and output state governed by that contract:
//!
//! | constraint | satisfied when |
//! |---|---|
//! | `Hash(h)` | the attachment's id is `h` |
//! | `Signature(k)` | the attachment's verified signers fulfil `k` (composite keys allowed) |
//! | `WhitelistedByNetwork` | the network parameters list the attachment for the contract |
//! | `AlwaysAccept` | always — but only on a network marked `development` |
//!
//! Propagation, from each input's constraint to each output's (same contract): unchanged is
//! always allowed; from `AlwaysAccept` anything is allowed; to `AlwaysAccept` only from
//! `AlwaysAccept`; `Hash` or `WhitelistedByNetwork` may migrate to `Signature(k)` when the
//! attachment is signed to fulfil `k` (the migration point: the input's old constraint is not
//! re-checked against the new, signed code); every other change is refused.
//!
//! Package ownership: if the network parameters reserve a namespace owning a contract name the
//! attachment defines, the attachment must be signed to fulfil the owner's key.

use treaty_core::{AttachmentConstraint, LedgerTransaction, NetworkParameters, SecureHash};

use crate::bundle::Bundle;

/// Why a constraint check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    /// `AlwaysAccept` on a network not marked development.
    #[error("contract {contract}: the always-accept constraint is only allowed on development networks")]
    AlwaysAcceptOutsideDevelopment {
        /// Contract.
        contract: String,
    },
    /// A hash constraint naming another attachment.
    #[error("contract {contract}: constraint requires attachment {required}, but the transaction uses {attachment}")]
    HashMismatch {
        /// Contract.
        contract: String,
        /// Required attachment.
        required: SecureHash,
        /// Attachment used.
        attachment: SecureHash,
    },
    /// A whitelist constraint, attachment not whitelisted.
    #[error("contract {contract}: attachment {attachment} is not whitelisted by the network parameters")]
    NotWhitelisted {
        /// Contract.
        contract: String,
        /// Attachment.
        attachment: SecureHash,
    },
    /// A signature constraint the attachment's signers do not fulfil.
    #[error("contract {contract}: attachment {attachment} is not signed by keys fulfilling the signature constraint")]
    SignatureNotFulfilled {
        /// Contract.
        contract: String,
        /// Attachment.
        attachment: SecureHash,
    },
    /// A constraint change between input and output that is not allowed.
    #[error("contract {contract}: a state's constraint may not change from {from} to {to}")]
    IllegalTransition {
        /// Contract.
        contract: String,
        /// Input constraint.
        from: String,
        /// Output constraint.
        to: String,
    },
    /// A reserved namespace, attachment not signed by its owner.
    #[error("contract {contract} is in namespace {namespace}, reserved to another key; attachment {attachment} is not signed by it")]
    NamespaceOwnership {
        /// Contract.
        contract: String,
        /// The reserved prefix.
        namespace: String,
        /// Attachment.
        attachment: SecureHash,
    },
}

impl ConstraintError {
    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ConstraintError::AlwaysAcceptOutsideDevelopment { .. } => "CONSTRAINT-ALWAYS-ACCEPT",
            ConstraintError::HashMismatch { .. } => "CONSTRAINT-HASH",
            ConstraintError::NotWhitelisted { .. } => "CONSTRAINT-WHITELIST",
            ConstraintError::SignatureNotFulfilled { .. } => "CONSTRAINT-SIGNATURE",
            ConstraintError::IllegalTransition { .. } => "CONSTRAINT-TRANSITION",
            ConstraintError::NamespaceOwnership { .. } => "CONSTRAINT-NAMESPACE",
        }
    }
}

fn name(c: &AttachmentConstraint) -> String {
    match c {
        AttachmentConstraint::AlwaysAccept => "always-accept".into(),
        AttachmentConstraint::Hash(h) => format!("hash {}", h.short()),
        AttachmentConstraint::WhitelistedByNetwork => "whitelisted-by-network".into(),
        AttachmentConstraint::Signature(k) => format!("signature {}", k.short()),
    }
}

fn signed_by(bundle: &Bundle, key: &treaty_core::PublicKey) -> bool {
    key.is_fulfilled_by(&|k| bundle.signers.contains(k))
}

/// Checks that `bundle` may define its contracts under the network's namespace reservations.
pub fn check_namespaces(bundle: &Bundle, params: &NetworkParameters) -> Result<(), ConstraintError> {
    for contract in &bundle.manifest.contracts {
        if let Some((namespace, owner)) = params.namespace_owner(contract)
            && !signed_by(bundle, owner)
        {
            return Err(ConstraintError::NamespaceOwnership {
                contract: contract.clone(),
                namespace: namespace.to_string(),
                attachment: bundle.id,
            });
        }
    }
    Ok(())
}

/// Whether `bundle` satisfies constraint `c` for `contract`.
pub fn satisfied(c: &AttachmentConstraint, contract: &str, bundle: &Bundle, params: &NetworkParameters) -> Result<(), ConstraintError> {
    let contract_s = || contract.to_string();
    match c {
        AttachmentConstraint::AlwaysAccept if params.development => Ok(()),
        AttachmentConstraint::AlwaysAccept => Err(ConstraintError::AlwaysAcceptOutsideDevelopment { contract: contract_s() }),
        AttachmentConstraint::Hash(h) if *h == bundle.id => Ok(()),
        AttachmentConstraint::Hash(h) => Err(ConstraintError::HashMismatch { contract: contract_s(), required: *h, attachment: bundle.id }),
        AttachmentConstraint::WhitelistedByNetwork => {
            if params.whitelisted_contracts.get(contract).is_some_and(|ids| ids.contains(&bundle.id)) {
                Ok(())
            } else {
                Err(ConstraintError::NotWhitelisted { contract: contract_s(), attachment: bundle.id })
            }
        }
        AttachmentConstraint::Signature(k) if signed_by(bundle, k) => Ok(()),
        AttachmentConstraint::Signature(_) => Err(ConstraintError::SignatureNotFulfilled { contract: contract_s(), attachment: bundle.id }),
    }
}

/// Whether a state may go from constraint `from` (input) to `to` (output).
pub fn transition_allowed(
    from: &AttachmentConstraint,
    to: &AttachmentConstraint,
    contract: &str,
    bundle: &Bundle,
) -> Result<(), ConstraintError> {
    use AttachmentConstraint::*;
    let ok = match (from, to) {
        (a, b) if a == b => true,
        (AlwaysAccept, _) => true,
        (_, AlwaysAccept) => false,
        (Hash(_) | WhitelistedByNetwork, Signature(k)) => signed_by(bundle, k),
        _ => false,
    };
    if ok { Ok(()) } else { Err(ConstraintError::IllegalTransition { contract: contract.to_string(), from: name(from), to: name(to) }) }
}

/// Every constraint rule for `contract` in `tx`, with `bundle` the attachment defining it.
pub fn check(contract: &str, tx: &LedgerTransaction, bundle: &Bundle, params: &NetworkParameters) -> Result<(), ConstraintError> {
    check_namespaces(bundle, params)?;
    let inputs: Vec<&AttachmentConstraint> =
        tx.inputs.iter().filter(|i| i.state.contract == contract).map(|i| &i.state.constraint).collect();
    let outputs: Vec<&AttachmentConstraint> = tx.outputs.iter().filter(|o| o.contract == contract).map(|o| &o.constraint).collect();
    for o in &outputs {
        satisfied(o, contract, bundle, params)?;
    }
    // Whose code may replace an input's: its own constraint's, always — except that where the
    // network reserves the contract's namespace to a key (every bundle defining it then carries
    // the owner's signature, `check_namespaces`), an input migrating to a signature
    // constraint need not match its old hash. Without a reservation anyone can sign a bundle
    // defining any contract name: letting that code replace a hash-constrained state's own
    // would hand the state to whoever signs it.
    let owned = params.namespace_owner(contract).is_some();
    for i in &inputs {
        let migrating = owned
            && !outputs.is_empty()
            && outputs
                .iter()
                .all(|o| matches!(o, AttachmentConstraint::Signature(_)) && transition_allowed(i, o, contract, bundle).is_ok());
        if !migrating {
            satisfied(i, contract, bundle, params)?;
        }
        for o in &outputs {
            transition_allowed(i, o, contract, bundle)?;
        }
    }
    Ok(())
}
