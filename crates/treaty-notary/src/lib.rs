//! # treaty-notary
//!
//! The notary's uniqueness layer: it commits a transaction's input states so that no state is
//! ever consumed twice, or answers with the transactions that consumed them first.
//!
//! - [`UniquenessProvider`] is the seam: `commit(request, now)` consumes the inputs of a
//!   [`CommitRequest`] atomically and checks its reference states and time window, or refuses
//!   with a [`NotaryError`] (`NOTARY-CONFLICT` with a [`Conflict`], `NOTARY-TOO-MANY-INPUTS`,
//!   `NOTARY-TIME-WINDOW`). Committing the same transaction again succeeds again.
//! - [`apply`] holds the rules, once, as pure functions over a [`UniquenessState`]: apply a
//!   batch of requests, in order, to a state. Every provider runs them — on a redb write
//!   transaction, on rows read from PostgreSQL, on a map, on a Raft state machine (with each
//!   request's time and the leader's rules in the log entry).
//! - Providers: [`RedbUniquenessProvider`] (one node, one redb file), [`PostgresUniquenessProvider`]
//!   (a SQL cluster; several notary processes may share the database),
//!   [`RaftUniquenessProvider`] (one replica of a 3- or 5-replica Raft cluster on openraft, see
//!   [`raft`]) and [`MemoryUniquenessProvider`] (tests).
//! - Durable providers batch: concurrent requests queue for one writer, which applies a whole
//!   batch in one storage transaction, commits it (one fsync), and only then answers each
//!   caller. An `Ok` answer is therefore durable (for Raft: on a majority of the replicas).
//! - Time: a provider never reads a clock. The caller passes the notary's time; the window is
//!   checked with [`TimeWindowCheck`] (tolerance [`DEFAULT_TIME_TOLERANCE_MICROS`]).
//! - The notary as a process: [`server`] hosts a [`NotaryService`] over mutual TLS
//!   (`treaty-notary-server CONFIG.toml`), [`client::NotaryClient`] calls it; both speak the
//!   framing of [`mux`], as the Raft replicas do.
//!
//! See `docs/notary.md` for the semantics, the conflict shape and the storage layouts.

pub mod apply;
mod batch;
pub mod client;
mod error;
pub mod mux;
mod postgres;
pub mod process;
mod provider;
pub mod raft;
mod request;
pub mod server;
pub mod service;
pub mod signer;
mod single_node;
mod time_window;
pub mod verifier;

pub use apply::{DEFAULT_MAX_INPUTS, MemoryState, Rules, UniquenessState};
pub use batch::MAX_LINGER;
pub use error::NotaryError;
pub use postgres::{MAX_BATCH_ATTEMPTS, NOTARY_MIGRATIONS, PostgresUniquenessProvider};
pub use provider::{
    CommitFuture, DEFAULT_MAX_BATCH, DEFAULT_QUEUE_CAPACITY, MemoryUniquenessProvider, UniquenessConfig, UniquenessProvider,
};
pub use raft::{RaftConfig, RaftUniquenessProvider, ReplicaId};
pub use request::{CommitRequest, Conflict, ConsumingTx, StateConflict, StateKind};
pub use service::{DEFAULT_MAX_SIGNING_BATCH, NotarisationRequest, NotaryAnswer, NotaryRefusal, NotaryService, request_signing_bytes};
pub use signer::BatchSigner;
pub use single_node::{FORMAT_VERSION, RedbUniquenessProvider};
pub use time_window::{DEFAULT_TIME_TOLERANCE_MICROS, TimeWindowCheck};
