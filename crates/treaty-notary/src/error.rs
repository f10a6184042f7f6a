//! Why a notarisation was refused or failed, with stable codes for operators.

use serde::{Deserialize, Serialize};
use treaty_core::{SecureHash, TimeWindow, Timestamp};

use crate::request::Conflict;

/// A refusal (conflict, too many inputs, time window) or a failure (storage, shutdown) of a
/// uniqueness provider. Refusals are final answers about the transaction; failures say
/// nothing about it and the request may be retried. `Clone`, because one failed batch
/// answers every request in it; serde, because a replica of a Raft cluster answers requests
/// forwarded by another replica.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NotaryError {
    /// Some of the transaction's states were already consumed by other transactions; nothing
    /// was consumed.
    #[error("transaction {tx_id} conflicts: {conflict}")]
    Conflict {
        /// The refused transaction.
        tx_id: SecureHash,
        /// Every conflicting state and the transaction that consumed it.
        conflict: Conflict,
    },
    /// The transaction has more inputs than this notary accepts in one request.
    #[error("transaction {tx_id} has {inputs} inputs but this notary accepts at most {max} per transaction")]
    TooManyInputs {
        /// The refused transaction.
        tx_id: SecureHash,
        /// How many inputs it has.
        inputs: usize,
        /// The configured limit.
        max: usize,
    },
    /// The notary's time is outside the transaction's time window (widened by the tolerance).
    #[error("transaction {tx_id}: the notary's time {now} is outside its time window {window} (tolerance {tolerance_micros} µs)")]
    TimeWindowInvalid {
        /// The refused transaction.
        tx_id: SecureHash,
        /// Its time window.
        window: TimeWindow,
        /// The notary's time when it checked.
        now: Timestamp,
        /// The tolerance the check allowed either side.
        tolerance_micros: i64,
    },
    /// The uniqueness log could not be opened (wrong, corrupt or locked file; bad database).
    #[error("cannot open the uniqueness log {location}: {reason}")]
    Open {
        /// The file or database URL (password redacted).
        location: String,
        /// What went wrong.
        reason: String,
    },
    /// Reading or writing the uniqueness log failed; nothing of the request was committed.
    #[error("uniqueness log storage failed while {context}: {reason}")]
    Storage {
        /// What was being done.
        context: String,
        /// The storage engine's reason.
        reason: String,
    },
    /// The provider has been shut down (or its writer stopped); the request was not committed.
    #[error("the uniqueness provider has stopped: {0}")]
    Stopped(String),
    /// A Raft cluster could not commit the request in time: no majority of its replicas was
    /// reachable, or no leader was elected. The request may or may not have been committed; a
    /// retry gets the same answer it would have had (commits are idempotent).
    #[error("the notary cluster is unavailable ({replicas}; tried for {waited_ms} ms): {reason}")]
    Unavailable {
        /// Which replicas were tried, as the operator knows them (ids and addresses).
        replicas: String,
        /// How long the replica tried.
        waited_ms: u64,
        /// The last thing that went wrong.
        reason: String,
    },
}

impl NotaryError {
    /// The stable code operators search for (`NOTARY-CONFLICT`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            NotaryError::Conflict { .. } => "NOTARY-CONFLICT",
            NotaryError::TooManyInputs { .. } => "NOTARY-TOO-MANY-INPUTS",
            NotaryError::TimeWindowInvalid { .. } => "NOTARY-TIME-WINDOW",
            NotaryError::Open { .. } => "NOTARY-OPEN",
            NotaryError::Storage { .. } => "NOTARY-STORAGE",
            NotaryError::Stopped(_) => "NOTARY-STOPPED",
            NotaryError::Unavailable { .. } => "NOTARY-UNAVAILABLE",
        }
    }

    /// Whether this is the notary's final answer about the transaction (conflict, too many
    /// inputs, time window) rather than a failure worth retrying.
    pub fn is_refusal(&self) -> bool {
        matches!(self, NotaryError::Conflict { .. } | NotaryError::TooManyInputs { .. } | NotaryError::TimeWindowInvalid { .. })
    }

    /// A storage failure while doing `context`.
    pub(crate) fn storage(context: impl Into<String>, reason: impl std::fmt::Display) -> NotaryError {
        NotaryError::Storage { context: context.into(), reason: reason.to_string() }
    }
}
