//! Why a storage operation failed.

use treaty_net::messaging::StoreError;

/// A storage failure. Every message names what was being done (which URL, table, key or
/// migration) and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database URL is not one Treaty understands.
    #[error("database URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL (password redacted).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory for a SQLite database file could not be created.
    #[error("database URL {url:?}: cannot create directory {dir}: {source}")]
    CreateDir {
        /// The URL (password redacted).
        url: String,
        /// The directory.
        dir: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The database could not be opened or connected to.
    #[error("database URL {url:?}: cannot open: {source}")]
    Connect {
        /// The URL (password redacted).
        url: String,
        /// The driver's reason.
        source: sqlx::Error,
    },
    /// A statement failed.
    #[error("database error while {context}: {source}")]
    Query {
        /// What was being done, naming the table (e.g. "inserting into treaty_outbox").
        context: String,
        /// The driver's reason.
        source: sqlx::Error,
    },
    /// A stored value does not decode: the database was changed behind Treaty's back.
    #[error("corrupt row in {table} (key {key}): {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The row's key.
        key: String,
        /// What does not decode.
        reason: String,
    },
    /// A component's migration list is malformed (a programming error in that component).
    #[error("migrations of component {component:?} are invalid: {reason}")]
    InvalidMigrations {
        /// The component.
        component: String,
        /// What is wrong.
        reason: String,
    },
    /// An applied migration's SQL differs from the SQL this binary has for it.
    #[error(
        "migration {component} v{version} ({description}) was applied with checksum {applied} but this binary has {expected}: \
         applied migrations must never be edited; add a new migration instead"
    )]
    MigrationChecksum {
        /// The component.
        component: String,
        /// The migration's version.
        version: i64,
        /// The migration's description.
        description: String,
        /// Checksum recorded in the database.
        applied: String,
        /// Checksum of this binary's SQL.
        expected: String,
    },
    /// The database has a migration newer than this binary knows (it was opened by a newer
    /// Treaty): refusing to run an older binary against it.
    #[error(
        "database has migration {component} v{applied} but this binary knows only up to v{known}: \
         it was written by a newer version of Treaty (downgrades are not supported)"
    )]
    MigrationDowngrade {
        /// The component.
        component: String,
        /// Newest version in the database.
        applied: i64,
        /// Newest version this binary knows.
        known: i64,
    },
    /// A migration's SQL failed; its transaction was rolled back.
    #[error("migration {component} v{version} ({description}) failed: {source}")]
    MigrationFailed {
        /// The component.
        component: String,
        /// The migration's version.
        version: i64,
        /// The migration's description.
        description: String,
        /// The driver's reason.
        source: sqlx::Error,
    },
    /// A statement of a write job on the SQLite writer thread failed.
    #[error("database error while {context}: {source}")]
    Sqlite {
        /// What was being done, naming the table.
        context: String,
        /// The driver's reason.
        source: rusqlite::Error,
    },
    /// The SQLite writer thread could not run or commit a write.
    #[error("writing to the database: {reason}")]
    Writer {
        /// What failed.
        reason: String,
        /// Worth retrying (the database was busy).
        transient: bool,
    },
    /// The shared (group) transaction a write was part of failed to commit.
    #[error("committing a group of writes failed: {0}")]
    GroupCommit(String),
    /// A message id was enqueued while already in the outbox.
    #[error("message {0} is already in the outbox")]
    DuplicateOutboxMessage(String),
}

impl StorageError {
    /// A failed query, with what was being done (for other crates' stores).
    pub fn query(context: impl Into<String>, source: sqlx::Error) -> StorageError {
        StorageError::Query { context: context.into(), source }
    }

    /// Worth retrying (database busy, connection lost, pool exhausted) rather than a bug,
    /// a constraint violation or corruption.
    pub fn is_transient(&self) -> bool {
        let source = match self {
            StorageError::Query { source, .. } | StorageError::Connect { source, .. } | StorageError::MigrationFailed { source, .. } => {
                source
            }
            StorageError::Sqlite { source, .. } => return crate::writer::is_busy(source),
            StorageError::Writer { transient, .. } => return *transient,
            _ => return false,
        };
        match source {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes.
                // PostgreSQL: serialization failure, deadlock, connection exceptions (08...),
                // admin shutdown / crash (57P..), too many connections (53300).
                let sqlite_busy = code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
                sqlite_busy || matches!(code.as_str(), "40001" | "40P01" | "53300") || code.starts_with("08") || code.starts_with("57P")
            }
            _ => false,
        }
    }
}

/// Helper: attach what was being done to a driver error.
pub(crate) trait Context<T> {
    fn ctx(self, context: &str) -> Result<T, StorageError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn ctx(self, context: &str) -> Result<T, StorageError> {
        self.map_err(|e| StorageError::query(context, e))
    }
}

impl From<StorageError> for StoreError {
    fn from(e: StorageError) -> StoreError {
        if e.is_transient() { StoreError::transient(e.to_string()) } else { StoreError::permanent(e.to_string()) }
    }
}
