//! Why a vault operation failed.
//!
//! One enum, [`VaultError`]; each variant names what is wrong (the column, the cursor, the
//! state, the token) and has a stable code ([`VaultError::code`]) operators can search for.

use treaty_core::StateRef;
use treaty_storage::StorageError;

use crate::locks::LockId;
use crate::query::MAX_PAGE_SIZE;

/// Why a state could not be locked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// The vault does not hold the state.
    NotInVault,
    /// The state is consumed.
    Consumed,
    /// Another lock holds the state.
    LockedBy(LockId),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::NotInVault => f.write_str("not in the vault"),
            Unavailable::Consumed => f.write_str("consumed"),
            Unavailable::LockedBy(id) => write!(f, "locked by {id}"),
        }
    }
}

/// A vault failure.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The database failed (or refused a migration).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored row does not decode: the database was changed behind the vault's back.
    #[error("corrupt vault row ({what}): {reason}")]
    Corrupt {
        /// Which row or column.
        what: String,
        /// What does not decode.
        reason: String,
    },
    /// A page size of zero or above [`MAX_PAGE_SIZE`].
    #[error("page size {size} is out of range: it must be between 1 and {max}", max = MAX_PAGE_SIZE)]
    InvalidPageSize {
        /// The size asked for.
        size: u32,
    },
    /// A cursor that is not one the vault made, or was made for another sort order.
    #[error("invalid cursor: {reason}")]
    InvalidCursor {
        /// What is wrong with it.
        reason: String,
    },
    /// A sort order naming a column the vault does not know.
    #[error("unknown sort column {name:?}: expected one of {known}")]
    UnknownSortColumn {
        /// The name given.
        name: String,
        /// The built-in columns and the registered app columns.
        known: String,
    },
    /// A criterion or grouping naming an app column no registered schema declares.
    #[error("unknown app column {name:?}: registered app columns are {known}")]
    UnknownColumn {
        /// The name given.
        name: String,
        /// The registered app columns (or "none").
        known: String,
    },
    /// A criterion comparing an app column with a value of the other type.
    #[error("app column {name:?} holds {expected} values, but the criterion gives {found}")]
    ColumnTypeMismatch {
        /// The column.
        name: String,
        /// The column's type.
        expected: &'static str,
        /// The type of the value given.
        found: &'static str,
    },
    /// A sort direction other than `asc`/`desc`, or an otherwise malformed sort specification.
    #[error("invalid sort specification {spec:?}: {reason}")]
    InvalidSort {
        /// The specification given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A schema that cannot be registered (type already registered, bad or conflicting column).
    #[error("cannot register the schema for {type_id}: {reason}")]
    InvalidSchema {
        /// The schema's type id.
        type_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A registered schema could not extract its columns from a state being recorded. Nothing
    /// of the batch is applied.
    #[error("state {state_ref} ({type_id}): the registered schema cannot extract its columns: {reason}")]
    Extraction {
        /// The state.
        state_ref: StateRef,
        /// Its type id.
        type_id: String,
        /// What the schema reported (or which value is out of range).
        reason: String,
    },
    /// A coin selection asked for zero, or named no owner key.
    #[error("invalid coin selection: {reason}")]
    InvalidSelection {
        /// What is wrong.
        reason: String,
    },
    /// The unlocked, unconsumed states matching a coin selection sum to less than asked.
    #[error(
        "insufficient balance of {token}: requested {requested}, available unlocked {available_unlocked}, \
         locked by flows {locked}"
    )]
    InsufficientBalance {
        /// The token.
        token: String,
        /// The amount asked for.
        requested: u64,
        /// The sum of matching states no lock holds.
        available_unlocked: u128,
        /// The sum of matching states that locks hold (perhaps released later).
        locked: u128,
    },
    /// PostgreSQL only: concurrent selections kept holding the states this one needed while the
    /// committed unlocked balance was enough; retrying later may succeed.
    #[error("coin selection of {requested} {token} gave up after {attempts} attempts under contention (the balance is sufficient)")]
    SelectionContended {
        /// The token.
        token: String,
        /// The amount asked for.
        requested: u64,
        /// How many times it tried.
        attempts: u32,
    },
    /// Some states asked to be locked are not available; none were locked.
    #[error("cannot lock states for {lock_id}: {}", list_unavailable(.unavailable))]
    StatesUnavailable {
        /// The lock asked for.
        lock_id: LockId,
        /// Each unavailable state and why.
        unavailable: Vec<(StateRef, Unavailable)>,
    },
    /// A subscriber of updates fell behind by this many updates, which are lost for it: read a
    /// fresh snapshot and subscribe again.
    #[error("the update feed lagged: {missed} updates were dropped; take a new snapshot")]
    UpdatesLagged {
        /// Updates it missed.
        missed: u64,
    },
    /// The vault was dropped: no more updates will come.
    #[error("the vault's update feed is closed")]
    UpdatesClosed,
}

fn list_unavailable(list: &[(StateRef, Unavailable)]) -> String {
    list.iter().map(|(r, why)| format!("{r} is {why}")).collect::<Vec<_>>().join("; ")
}

impl VaultError {
    /// A failed query, with what was being done.
    pub(crate) fn query(context: impl Into<String>, source: sqlx::Error) -> VaultError {
        VaultError::Storage(StorageError::query(context, source))
    }

    /// A stable code for operators (`VAULT-...`).
    pub fn code(&self) -> &'static str {
        match self {
            VaultError::Storage(_) => "VAULT-STORAGE",
            VaultError::Corrupt { .. } => "VAULT-CORRUPT",
            VaultError::InvalidPageSize { .. } => "VAULT-PAGE-SIZE",
            VaultError::InvalidCursor { .. } => "VAULT-CURSOR",
            VaultError::UnknownSortColumn { .. } => "VAULT-UNKNOWN-SORT-COLUMN",
            VaultError::UnknownColumn { .. } => "VAULT-UNKNOWN-COLUMN",
            VaultError::ColumnTypeMismatch { .. } => "VAULT-COLUMN-TYPE",
            VaultError::InvalidSort { .. } => "VAULT-SORT",
            VaultError::InvalidSchema { .. } => "VAULT-SCHEMA",
            VaultError::Extraction { .. } => "VAULT-EXTRACTION",
            VaultError::InvalidSelection { .. } => "VAULT-SELECTION",
            VaultError::InsufficientBalance { .. } => "VAULT-INSUFFICIENT-BALANCE",
            VaultError::SelectionContended { .. } => "VAULT-SELECTION-CONTENDED",
            VaultError::StatesUnavailable { .. } => "VAULT-STATES-UNAVAILABLE",
            VaultError::UpdatesLagged { .. } => "VAULT-UPDATES-LAGGED",
            VaultError::UpdatesClosed => "VAULT-UPDATES-CLOSED",
        }
    }

    /// Worth retrying: a transient database failure or a contended selection.
    pub fn is_transient(&self) -> bool {
        match self {
            VaultError::Storage(e) => e.is_transient(),
            VaultError::SelectionContended { .. } => true,
            _ => false,
        }
    }
}
