//! Treaty's own schema migrator.
//!
//! Each component (a crate, or part of one) owns a [`Migrations`] list per backend. Applied
//! migrations are recorded in `treaty_schema_migrations` with a checksum of their SQL; each is
//! applied in its own transaction, under a lock (SQLite: the write lock of `BEGIN IMMEDIATE`;
//! PostgreSQL: a transaction-scoped advisory lock), and the applied set is re-read under that
//! lock, so two processes opening the same database at once apply each migration exactly once.

use std::collections::BTreeMap;

use sqlx::Row;
use treaty_core::SecureHash;

use crate::db::{Backend, Database, WriteTransaction};
use crate::error::{Context, StorageError};

/// One schema change.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Position in the component's history: 1, 2, 3, ... (strictly increasing).
    pub version: i64,
    /// What it does, in a few words.
    pub description: &'static str,
    /// The SQL (several statements allowed). Never edit it once released: its checksum is
    /// recorded and checked on every open.
    pub sql: &'static str,
}

/// A component's migrations, for each backend.
#[derive(Clone, Copy, Debug)]
pub struct Migrations {
    /// The component's name, unique among components (e.g. `"ledger"`, `"vault"`).
    pub component: &'static str,
    /// Migrations for SQLite, in version order.
    pub sqlite: &'static [Migration],
    /// Migrations for PostgreSQL, in version order.
    pub postgres: &'static [Migration],
}

/// The ledger component: `treaty_transactions`, `treaty_attachments`, `treaty_identities`,
/// `treaty_transaction_dependencies`, `treaty_confidential_identities`.
pub const LEDGER_MIGRATIONS: Migrations = Migrations {
    component: "ledger",
    sqlite: &[
        Migration {
            version: 1,
            description: "transactions, attachments, identities",
            sql: include_str!("../migrations/sqlite/0001_ledger.sql"),
        },
        Migration {
            version: 2,
            description: "transaction dependencies",
            sql: include_str!("../migrations/sqlite/0002_ledger_dependencies.sql"),
        },
        Migration {
            version: 3,
            description: "confidential identities",
            sql: include_str!("../migrations/sqlite/0003_ledger_confidential_identities.sql"),
        },
    ],
    postgres: &[
        Migration {
            version: 1,
            description: "transactions, attachments, identities",
            sql: include_str!("../migrations/postgres/0001_ledger.sql"),
        },
        Migration {
            version: 2,
            description: "transaction dependencies",
            sql: include_str!("../migrations/postgres/0002_ledger_dependencies.sql"),
        },
        Migration {
            version: 3,
            description: "confidential identities",
            sql: include_str!("../migrations/postgres/0003_ledger_confidential_identities.sql"),
        },
    ],
};

/// The messaging component: `treaty_outbox`, `treaty_inbox`.
pub const MESSAGING_MIGRATIONS: Migrations = Migrations {
    component: "messaging",
    sqlite: &[Migration { version: 1, description: "outbox and inbox", sql: include_str!("../migrations/sqlite/0001_messaging.sql") }],
    postgres: &[Migration { version: 1, description: "outbox and inbox", sql: include_str!("../migrations/postgres/0001_messaging.sql") }],
};

/// The network-map component: `treaty_network_map`, `treaty_network_map_nodes`.
pub const NETWORK_MAP_MIGRATIONS: Migrations = Migrations {
    component: "network_map",
    sqlite: &[Migration { version: 1, description: "network map cache", sql: include_str!("../migrations/sqlite/0001_network_map.sql") }],
    postgres: &[Migration {
        version: 1,
        description: "network map cache",
        sql: include_str!("../migrations/postgres/0001_network_map.sql"),
    }],
};

/// The migrator's own table.
pub const MIGRATIONS_TABLE: &str = "treaty_schema_migrations";

const SQLITE_BOOTSTRAP: &str = "CREATE TABLE IF NOT EXISTS treaty_schema_migrations (
    component   TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    description TEXT    NOT NULL,
    checksum    TEXT    NOT NULL,
    applied_at  TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (component, version)
)";

const POSTGRES_BOOTSTRAP: &str = "CREATE TABLE IF NOT EXISTS treaty_schema_migrations (
    component   TEXT        NOT NULL,
    version     BIGINT      NOT NULL,
    description TEXT        NOT NULL,
    checksum    TEXT        NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)";

/// Key of the PostgreSQL advisory lock held while migrating ("treaty" in ASCII).
pub const POSTGRES_MIGRATION_LOCK: i64 = 0x7472_6561_7479;

/// The checksum recorded for a migration: SHA-256 of its SQL, hex.
pub fn checksum(sql: &str) -> String {
    SecureHash::sha256(sql.as_bytes()).to_hex()
}

fn validate(component: &str, list: &[Migration]) -> Result<(), StorageError> {
    let invalid = |reason: String| StorageError::InvalidMigrations { component: component.to_string(), reason };
    if component.is_empty() {
        return Err(invalid("empty component name".into()));
    }
    let mut previous = 0;
    for m in list {
        if m.version <= previous {
            return Err(invalid(format!("version {} follows version {previous}: versions must start at 1 and increase", m.version)));
        }
        previous = m.version;
    }
    Ok(())
}

/// Checks the applied migrations against this binary's list.
fn verify(component: &str, list: &[Migration], applied: &BTreeMap<i64, String>) -> Result<(), StorageError> {
    let known = list.last().map(|m| m.version).unwrap_or(0);
    if let Some((&newest, _)) = applied.last_key_value()
        && newest > known
    {
        return Err(StorageError::MigrationDowngrade { component: component.to_string(), applied: newest, known });
    }
    for m in list {
        if let Some(recorded) = applied.get(&m.version) {
            let expected = checksum(m.sql);
            if *recorded != expected {
                return Err(StorageError::MigrationChecksum {
                    component: component.to_string(),
                    version: m.version,
                    description: m.description.to_string(),
                    applied: recorded.clone(),
                    expected,
                });
            }
        }
    }
    Ok(())
}

const SELECT_APPLIED: &str = "SELECT version, checksum FROM treaty_schema_migrations WHERE component = $1";
const INSERT_APPLIED: &str = "INSERT INTO treaty_schema_migrations (component, version, description, checksum) VALUES ($1, $2, $3, $4)";

impl Database {
    /// Applies `migrations`' pending migrations for this backend, each in its own transaction.
    ///
    /// Fails, changing nothing, if an applied migration's SQL has changed since
    /// ([`StorageError::MigrationChecksum`]) or the database has a version newer than the list
    /// ([`StorageError::MigrationDowngrade`]). Safe to call from several processes at once.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), StorageError> {
        let component = migrations.component;
        let list = match self.backend() {
            Backend::Sqlite { .. } => migrations.sqlite,
            Backend::Postgres { .. } => migrations.postgres,
        };
        validate(component, list)?;
        let context = format!("migrating component {component} ({MIGRATIONS_TABLE})");

        // One bootstrap transaction that also checks what is applied, so a bad database is
        // refused before anything changes.
        let mut pending: Vec<Migration> = Vec::new();
        {
            let tx = self.begin_migration_tx(&context).await?;
            let applied = self.applied_in(tx, component, &context).await?;
            verify(component, list, &applied)?;
            pending.extend(list.iter().filter(|m| !applied.contains_key(&m.version)));
        }

        for m in pending {
            let what = format!("applying migration {component} v{} ({})", m.version, m.description);
            let mut tx = self.begin_migration_tx(&what).await?;
            // Re-read under the lock: another process may have applied it meanwhile.
            let applied = self.applied_on(&mut tx, component, &what).await?;
            verify(component, list, &applied)?;
            if applied.contains_key(&m.version) {
                continue;
            }
            let failed = |source| StorageError::MigrationFailed {
                component: component.to_string(),
                version: m.version,
                description: m.description.to_string(),
                source,
            };
            let sum = checksum(m.sql);
            match &mut tx {
                WriteTransaction::Sqlite { tx, .. } => {
                    sqlx::raw_sql(m.sql).execute(&mut **tx).await.map_err(failed)?;
                    sqlx::query(INSERT_APPLIED)
                        .bind(component)
                        .bind(m.version)
                        .bind(m.description)
                        .bind(&sum)
                        .execute(&mut **tx)
                        .await
                        .ctx(&what)?;
                }
                WriteTransaction::Postgres { tx } => {
                    sqlx::raw_sql(m.sql).execute(&mut **tx).await.map_err(failed)?;
                    sqlx::query(INSERT_APPLIED)
                        .bind(component)
                        .bind(m.version)
                        .bind(m.description)
                        .bind(&sum)
                        .execute(&mut **tx)
                        .await
                        .ctx(&what)?;
                }
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// The versions and checksums applied for `component`.
    pub async fn applied_migrations(&self, component: &str) -> Result<BTreeMap<i64, String>, StorageError> {
        let context = format!("reading {MIGRATIONS_TABLE} for component {component}");
        let tx = self.begin_migration_tx(&context).await?;
        self.applied_in(tx, component, &context).await
    }

    /// A write transaction holding the migration lock, with the migrations table created.
    async fn begin_migration_tx(&self, context: &str) -> Result<WriteTransaction, StorageError> {
        let mut tx = self.begin_write().await?;
        match &mut tx {
            WriteTransaction::Sqlite { tx, .. } => {
                sqlx::query(SQLITE_BOOTSTRAP).execute(&mut **tx).await.ctx(context)?;
            }
            WriteTransaction::Postgres { tx } => {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(POSTGRES_MIGRATION_LOCK).execute(&mut **tx).await.ctx(context)?;
                sqlx::query(POSTGRES_BOOTSTRAP).execute(&mut **tx).await.ctx(context)?;
            }
        }
        Ok(tx)
    }

    async fn applied_in(&self, mut tx: WriteTransaction, component: &str, context: &str) -> Result<BTreeMap<i64, String>, StorageError> {
        let applied = self.applied_on(&mut tx, component, context).await?;
        tx.commit().await?;
        Ok(applied)
    }

    async fn applied_on(&self, tx: &mut WriteTransaction, component: &str, context: &str) -> Result<BTreeMap<i64, String>, StorageError> {
        let mut applied = BTreeMap::new();
        match tx {
            WriteTransaction::Sqlite { tx, .. } => {
                for row in sqlx::query(SELECT_APPLIED).bind(component).fetch_all(&mut **tx).await.ctx(context)? {
                    applied.insert(row.try_get::<i64, _>(0).ctx(context)?, row.try_get::<String, _>(1).ctx(context)?);
                }
            }
            WriteTransaction::Postgres { tx } => {
                for row in sqlx::query(SELECT_APPLIED).bind(component).fetch_all(&mut **tx).await.ctx(context)? {
                    applied.insert(row.try_get::<i64, _>(0).ctx(context)?, row.try_get::<String, _>(1).ctx(context)?);
                }
            }
        }
        Ok(applied)
    }
}
