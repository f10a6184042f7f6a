//! Tracking: a snapshot and a feed of updates filtered by criteria.
//!
//! After each applied batch commits, the vault publishes one update per new transaction (the
//! states it produced and consumed) on a `tokio::sync::broadcast` channel. A subscriber's
//! [`Updates`] keeps, from each update, the states whose membership in its criteria's result
//! may have changed: a produced state that matches as produced, and a consumed state that
//! matched just before (unconsumed) or matches after (consumed). So a feed of unconsumed cash
//! hears of cash arriving and of cash spent; a feed of consumed cash hears of cash spent.
//! Soft-lock criteria see consumed states as unlocked (consumption releases locks).
//!
//! [`Vault::track`] subscribes before it reads the snapshot, so no update is lost between the
//! two; an update may concern states the snapshot already shows (apply it idempotently, by
//! state ref).

use std::sync::Arc;

use tokio::sync::broadcast;
use treaty_core::SecureHash;

use crate::Vault;
use crate::criteria::Criteria;
use crate::error::VaultError;
use crate::query::{Page, PageSpec, Sort, check_page_size};
use crate::record::{Derived, Status, VaultState};

/// One applied transaction as published: states with what was derived from them.
#[derive(Debug)]
pub(crate) struct Applied {
    pub tx_id: SecureHash,
    pub produced: Vec<(VaultState, Derived)>,
    pub consumed: Vec<(VaultState, Derived)>,
}

/// What one applied transaction changed, as far as a subscriber's criteria are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultUpdate {
    /// The transaction.
    pub tx_id: SecureHash,
    /// States it produced (unconsumed as produced).
    pub produced: Vec<VaultState>,
    /// States it consumed (as they are now: consumed, with time and consuming transaction).
    pub consumed: Vec<VaultState>,
}

/// A feed of updates filtered by criteria ([`Vault::subscribe`]).
#[derive(Debug)]
pub struct Updates {
    rx: broadcast::Receiver<Arc<Applied>>,
    criteria: Criteria,
}

/// A snapshot and the updates after it ([`Vault::track`]).
#[derive(Debug)]
pub struct Tracked {
    /// The first page of states matching the criteria (more with [`Vault::query`] and its
    /// cursor).
    pub snapshot: Page,
    /// Updates from the moment before the snapshot was read.
    pub updates: Updates,
}

impl Updates {
    /// The next update concerning the criteria (updates concerning none of its states are
    /// skipped). Fails with [`VaultError::UpdatesLagged`] if this subscriber fell more than
    /// [`crate::UPDATE_FEED_CAPACITY`] updates behind, and [`VaultError::UpdatesClosed`] when the
    /// vault is gone.
    pub async fn recv(&mut self) -> Result<VaultUpdate, VaultError> {
        loop {
            let applied = match self.rx.recv().await {
                Ok(a) => a,
                Err(broadcast::error::RecvError::Lagged(missed)) => return Err(VaultError::UpdatesLagged { missed }),
                Err(broadcast::error::RecvError::Closed) => return Err(VaultError::UpdatesClosed),
            };
            if let Some(update) = self.filter(&applied) {
                return Ok(update);
            }
        }
    }

    /// The next update already published, without waiting (`None` if there is none now).
    pub fn try_recv(&mut self) -> Result<Option<VaultUpdate>, VaultError> {
        loop {
            let applied = match self.rx.try_recv() {
                Ok(a) => a,
                Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => return Err(VaultError::UpdatesLagged { missed }),
                Err(broadcast::error::TryRecvError::Closed) => return Err(VaultError::UpdatesClosed),
            };
            if let Some(update) = self.filter(&applied) {
                return Ok(Some(update));
            }
        }
    }

    fn filter(&self, applied: &Applied) -> Option<VaultUpdate> {
        let produced: Vec<VaultState> =
            applied.produced.iter().filter(|(s, d)| self.criteria.matches(s, d)).map(|(s, _)| s.clone()).collect();
        let consumed: Vec<VaultState> = applied
            .consumed
            .iter()
            .filter(|(after, d)| {
                let before = VaultState { status: Status::Unconsumed, consumed_at: None, consuming_tx: None, ..(*after).clone() };
                self.criteria.matches(&before, d) || self.criteria.matches(after, d)
            })
            .map(|(s, _)| s.clone())
            .collect();
        if produced.is_empty() && consumed.is_empty() {
            return None;
        }
        Some(VaultUpdate { tx_id: applied.tx_id, produced, consumed })
    }
}

impl Vault {
    /// A feed of the updates concerning states that match `criteria`, from now on.
    pub fn subscribe(&self, criteria: Criteria) -> Result<Updates, VaultError> {
        criteria.validate(&self.registry())?;
        Ok(Updates { rx: self.inner.updates.subscribe(), criteria })
    }

    /// The first page of states matching `criteria` (in `sort` order, `page_size` at most)
    /// and the feed of updates concerning them from just before that page was read.
    pub async fn track(&self, criteria: Criteria, sort: &Sort, page_size: u32) -> Result<Tracked, VaultError> {
        check_page_size(page_size)?;
        let updates = self.subscribe(criteria.clone())?;
        let snapshot = self.query(&criteria, sort, &PageSpec::first(page_size)).await?;
        Ok(Tracked { snapshot, updates })
    }
}
