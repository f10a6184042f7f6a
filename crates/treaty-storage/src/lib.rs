//! # treaty-storage
//!
//! The node database: SQLite (embedded, the default) or PostgreSQL, through sqlx, behind one
//! cheap handle, [`Database`].
//!
//! - [`Database::open`] takes a URL (`sqlite://PATH`, `sqlite::memory:`, `postgres://...`),
//!   configures the backend for durability and applies every migration.
//! - [`migrate`]: Treaty's own migrator. Each component owns a [`Migrations`] list per
//!   backend; other crates add theirs with [`Database::migrate`].
//! - The stores this crate owns: [`TransactionStore`], [`AttachmentStore`],
//!   [`IdentityStore`] (the "ledger" component), [`SqlMessageStore`] (the "messaging"
//!   component, a [`treaty_net::messaging::MessageStore`]) and [`SqlMapCache`] (the
//!   "network_map" component, a [`treaty_net::map::MapCache`]).
//!
//! See `docs/storage.md` for the tables, durability settings and the migration scheme.

mod confidential;
mod db;
mod error;
mod ledger;
mod messaging;
pub mod migrate;
mod netmap;
pub mod writer;

pub use confidential::ConfidentialStore;
pub use db::{BackendKind, Database, GroupCommit, GroupWrite, Pool, SQLITE_BUSY_TIMEOUT, SqliteGroup, WriteTransaction};
pub use error::StorageError;
pub use ledger::{AttachmentStore, IdentityRecord, IdentityStore, RecordJob, Recorded, TransactionStore};
pub use messaging::SqlMessageStore;
pub use migrate::{Migration, Migrations};
pub use netmap::{CachedNode, SqlMapCache};
pub use writer::SqliteWriter;
