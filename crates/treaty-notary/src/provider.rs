//! The seam every uniqueness provider implements, its configuration, and the in-memory
//! provider.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use treaty_core::Timestamp;

use crate::apply::{MemoryState, Rules, apply};
use crate::error::NotaryError;
use crate::request::CommitRequest;

/// What [`UniquenessProvider::commit`] returns: boxed, so providers can be chosen at run time
/// (`Arc<dyn UniquenessProvider>`); one allocation is nothing beside a commit.
pub type CommitFuture<'a> = Pin<Box<dyn Future<Output = Result<(), NotaryError>> + Send + 'a>>;

/// Commits transactions' input states atomically, or says which states stand in the way.
///
/// `commit` answers `Ok(())` only once the states are consumed durably (for a durable
/// provider: on disk or in the database, surviving a crash). It refuses with
/// [`NotaryError::Conflict`], [`NotaryError::TooManyInputs`] or
/// [`NotaryError::TimeWindowInvalid`] and then has consumed nothing. Committing a transaction
/// that was committed before succeeds again. `now` is the notary's time for this request,
/// read by the caller: providers never read a clock. The rules are those of [`crate::apply`].
pub trait UniquenessProvider: Send + Sync {
    /// Commits `request` at the notary's time `now`.
    fn commit(&self, request: CommitRequest, now: Timestamp) -> CommitFuture<'_>;
}

/// Settings shared by the providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UniquenessConfig {
    /// The rules for each request (input limit, time-window tolerance).
    pub rules: Rules,
    /// The most requests applied in one storage transaction.
    pub max_batch: usize,
    /// How many requests may wait for the writer; callers beyond wait to enqueue.
    pub queue_capacity: usize,
    /// redb only: check every page's checksum when opening the file, so a file damaged
    /// outside redb is refused with an error instead of trusted (reads the whole file once).
    pub verify_on_open: bool,
}

/// The default [`UniquenessConfig::max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 1024;

/// The default [`UniquenessConfig::queue_capacity`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 8192;

impl Default for UniquenessConfig {
    fn default() -> Self {
        UniquenessConfig {
            rules: Rules::default(),
            max_batch: DEFAULT_MAX_BATCH,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            verify_on_open: true,
        }
    }
}

/// A provider that keeps its log in memory: for tests and simulation, never durable.
#[derive(Debug, Default)]
pub struct MemoryUniquenessProvider {
    state: Mutex<MemoryState>,
    rules: Rules,
}

impl MemoryUniquenessProvider {
    /// An empty log applying `rules`.
    pub fn new(rules: Rules) -> MemoryUniquenessProvider {
        MemoryUniquenessProvider { state: Mutex::default(), rules }
    }

    /// A copy of the log.
    pub fn snapshot(&self) -> MemoryState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl UniquenessProvider for MemoryUniquenessProvider {
    fn commit(&self, request: CommitRequest, now: Timestamp) -> CommitFuture<'_> {
        // MemoryState cannot fail, so the outer result is always Ok.
        let Ok(answer) = apply(&mut *self.state.lock().unwrap_or_else(|p| p.into_inner()), &request, now, &self.rules);
        Box::pin(std::future::ready(answer))
    }
}
