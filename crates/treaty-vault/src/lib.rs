//! # treaty-vault
//!
//! The node's view of the ledger and its wallet: the states relevant to the node, consumed and
//! unconsumed, in the node database (SQLite or PostgreSQL, through `treaty-storage`).
//!
//! - [`Vault::apply`] records transactions: each output one of whose participants holds a key
//!   of ours becomes an unconsumed state; each input the vault holds becomes consumed. A batch
//!   is one database transaction; applying a transaction again changes nothing.
//! - [`StateSchema`]s registered per type id extract app-defined columns, the fungible shape
//!   (owner, issuer, token, quantity) and linear ids ([`TypedSchema`], [`fungible`]).
//! - [`Vault::query`] / [`Vault::stream`] / [`Vault::count`] answer [`Criteria`] in a
//!   [`Sort`] order with keyset pagination ([`Cursor`]); [`Vault::aggregate`] and
//!   [`Vault::balances`] sum quantities per token and issuer.
//! - [`Vault::track`] gives a snapshot and a feed of [`VaultUpdate`]s filtered by criteria.
//! - Soft locks ([`Vault::lock`], [`Vault::release`]) and coin selection
//!   ([`Vault::select_fungible`]), atomic and safe under concurrency.
//! - Scheduled activities: a schema may name a flow a state wants run at a time
//!   ([`ScheduledActivity`]); the vault keeps those of its node and answers
//!   [`Vault::due_activities`] for the node's scheduler.
//! - Stable SQL views (`vault_states`, `vault_fungible_states`, `vault_state_participants`,
//!   `vault_state_columns`) for plain SQL.
//!
//! The vault never reads a clock: times are parameters. See `docs/vault.md`.

mod aggregate;
mod apply;
mod criteria;
mod error;
mod exec;
mod locks;
mod query;
mod record;
mod schedule;
mod schema;
mod sql;
mod track;

use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;
use treaty_core::StateRef;
use treaty_storage::{Database, Migration, Migrations};

pub use aggregate::{AggregateRow, Balance, GroupBy};
pub use apply::ApplySummary;
pub use criteria::{ColumnCondition, Criteria, FungibleCriteria, LockFilter, StatusFilter, TimeRange};
pub use error::{Unavailable, VaultError};
pub use locks::{IssuerFilter, LockId, Selection};
pub use query::{Cursor, Direction, MAX_PAGE_SIZE, MAX_SORT_KEYS, Page, PageSpec, Sort, SortColumn, StateStream};
pub use record::{Status, VaultState, is_ours};
pub use schedule::Scheduled;
pub use schema::{
    ColumnDef, ColumnType, ColumnValue, FungibleColumns, ScheduledActivity, StateColumns, StateSchema, TypedSchema, fungible,
};
pub use track::{Tracked, Updates, VaultUpdate};

use crate::record::{STATE_COLUMNS, state_row};
use crate::schema::Registry;
use crate::sql::{Context, Sql, bind_args, on_pool};

/// The vault component's migrations (tables `treaty_vault_*` and the `vault_*` views).
pub const VAULT_MIGRATIONS: Migrations = Migrations {
    component: "vault",
    sqlite: &[
        Migration { version: 1, description: "vault states, columns, views", sql: include_str!("../migrations/sqlite/0001_vault.sql") },
        Migration { version: 2, description: "scheduled activities", sql: include_str!("../migrations/sqlite/0002_schedule.sql") },
        Migration { version: 3, description: "spendable fungible states", sql: include_str!("../migrations/sqlite/0003_spendable.sql") },
        Migration {
            version: 4,
            description: "spendable states in selection order",
            sql: include_str!("../migrations/sqlite/0004_spendable_order.sql"),
        },
    ],
    postgres: &[
        Migration { version: 1, description: "vault states, columns, views", sql: include_str!("../migrations/postgres/0001_vault.sql") },
        Migration { version: 2, description: "scheduled activities", sql: include_str!("../migrations/postgres/0002_schedule.sql") },
        Migration { version: 3, description: "spendable fungible states", sql: include_str!("../migrations/postgres/0003_spendable.sql") },
        Migration {
            version: 4,
            description: "spendable states in selection order",
            sql: include_str!("../migrations/postgres/0004_spendable_order.sql"),
        },
    ],
};

/// How many updates a slow subscriber may fall behind before it loses some
/// ([`VaultError::UpdatesLagged`]).
pub const UPDATE_FEED_CAPACITY: usize = 1024;

struct Inner {
    db: Database,
    registry: RwLock<Arc<Registry>>,
    updates: broadcast::Sender<Arc<track::Applied>>,
    schedule: tokio::sync::Notify,
}

/// The vault: a cheap handle (clone freely) over the node database.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("db", &self.inner.db.url()).field("registry", &self.registry()).finish()
    }
}

impl Vault {
    /// Applies the vault's migrations to `db` and returns the vault.
    pub async fn open(db: &Database) -> Result<Vault, VaultError> {
        db.migrate(&VAULT_MIGRATIONS).await?;
        let (updates, _) = broadcast::channel(UPDATE_FEED_CAPACITY);
        Ok(Vault {
            inner: Arc::new(Inner {
                db: db.clone(),
                registry: RwLock::new(Arc::new(Registry::default())),
                updates,
                schedule: tokio::sync::Notify::new(),
            }),
        })
    }

    /// Registers the schema for the states of one type id. Its columns are extracted from
    /// states recorded from now on (not from those already in the vault). Refused if the type
    /// id already has a schema, a column name is invalid or reserved, or a column another
    /// schema declares has the other type.
    pub fn register(&self, schema: impl StateSchema) -> Result<(), VaultError> {
        let mut slot = self.inner.registry.write().unwrap_or_else(|p| p.into_inner());
        let next = slot.with(Arc::new(schema))?;
        *slot = Arc::new(next);
        Ok(())
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    pub(crate) fn db(&self) -> &Database {
        &self.inner.db
    }

    /// The registered schemas as of now.
    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.inner.registry.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The columns the registered schema for `state`'s type reads from it now (linear id,
    /// fungible shape, app columns; empty when no schema is registered for the type). For
    /// showing a state (the node's RPC): queries filter on the columns stored when the state
    /// was recorded, which a schema registered later does not change.
    pub fn columns(&self, state: &VaultState) -> Result<StateColumns, VaultError> {
        self.registry().extract(&state.state_ref, &state.state)
    }

    /// The state at `state_ref`, if the vault holds it.
    pub async fn state(&self, state_ref: &StateRef) -> Result<Option<VaultState>, VaultError> {
        let mut sql = Sql::default();
        let cond = sql.refs(std::slice::from_ref(state_ref));
        let text = format!("SELECT {STATE_COLUMNS} FROM treaty_vault_states s WHERE {cond}");
        let what = format!("reading treaty_vault_states ({state_ref})");
        on_pool!(self.db(), pool => {
            let row = bind_args!(sqlx::query(sqlx::AssertSqlSafe(text)), sql.args).fetch_optional(pool).await.ctx(&what)?;
            row.map(|r| state_row!(r, what.as_str())?.decode()).transpose()
        })
    }
}
