//! Attachments this node's flows are downloading, so that flows needing the same one at once
//! download it once.
//!
//! A node that receives its first payments from a counterparty in a burst — say 128 at once,
//! each needing the cash contract it has never seen — had every one of those flows ask for the
//! contract: 128 downloads of the same 255 KB, each journaled by its flow. Now the first flow
//! to find an attachment missing claims it; the others wait (at most [`WAIT_FOR_OTHERS`]) until
//! that flow has it stored, or has given up, and look again. A claim ends when its guard is
//! dropped — the download finished, failed, or the flow left memory — so no flow waits on a
//! download nobody is doing; and a flow waits holding no claim, so no two wait on each other.
//!
//! Nothing here is durable, and nothing needs to be: a flow replaying after a restart reads
//! what it decided from its journal, and at worst two flows download the same attachment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use treaty_core::SecureHash;

use crate::context::lock;

/// Longest a flow waits for another flow's download of an attachment before asking for it
/// itself (the other's counterparty may be slow or gone).
pub const WAIT_FOR_OTHERS: Duration = Duration::from_secs(10);

/// The attachments being downloaded on this node, each with the claim that downloads it.
#[derive(Debug, Default)]
pub struct AttachmentFetches {
    fetching: Arc<Mutex<HashMap<SecureHash, Fetch>>>,
}

#[derive(Debug)]
struct Fetch {
    /// Which claim: an attachment claimed again after its first claim ended is not the first
    /// claim's to release.
    claim: u64,
    /// Ends (its sender dropped) when the claim does.
    ended: watch::Receiver<()>,
}

/// A flow's claim on downloading some attachments: released when dropped.
#[derive(Debug)]
pub struct Claim {
    fetching: Arc<Mutex<HashMap<SecureHash, Fetch>>>,
    id: u64,
    ids: Vec<SecureHash>,
    _ended: watch::Sender<()>,
}

impl Claim {
    /// The attachments this claim is downloading.
    pub fn ids(&self) -> &[SecureHash] {
        &self.ids
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut fetching = lock(&self.fetching);
        for id in &self.ids {
            if fetching.get(id).is_some_and(|f| f.claim == self.id) {
                fetching.remove(id);
            }
        }
        // `_ended` drops next: every waiter wakes.
    }
}

impl AttachmentFetches {
    /// How to wait for the downloads other flows are doing of any of `ids`: each future
    /// resolves when that flow's claim ends. Wait holding no claim of your own — a flow holds
    /// one only while it downloads, never while it waits, so no two flows wait on each other.
    pub fn others(&self, ids: &[SecureHash]) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
        let fetching = lock(&self.fetching);
        ids.iter()
            .filter_map(|a| fetching.get(a))
            .map(|other| {
                let mut ended = other.ended.clone();
                // Nothing is ever sent: `changed` fails once the sender is dropped.
                async move { while ended.changed().await.is_ok() {} }
            })
            .collect()
    }

    /// Claims those of `ids` no other flow is downloading (see [`Claim::ids`]).
    pub fn claim(&self, ids: &[SecureHash]) -> Claim {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (ended, receiver) = watch::channel(());
        let mut mine = Vec::new();
        let mut fetching = lock(&self.fetching);
        for a in ids {
            if !fetching.contains_key(a) {
                fetching.insert(*a, Fetch { claim: id, ended: receiver.clone() });
                mine.push(*a);
            }
        }
        drop(fetching);
        Claim { fetching: self.fetching.clone(), id, ids: mine, _ended: ended }
    }

    /// How many attachments are being downloaded.
    pub fn len(&self) -> usize {
        lock(&self.fetching).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> SecureHash {
        SecureHash::sha256(&[n])
    }

    #[tokio::test]
    async fn a_second_claim_takes_only_what_is_free_and_waits_end_with_the_first() {
        let fetches = AttachmentFetches::default();
        let first = fetches.claim(&[h(1), h(2)]);
        assert_eq!(first.ids(), &[h(1), h(2)][..]);
        assert!(fetches.others(&[h(3)]).is_empty());
        let waits = fetches.others(&[h(2), h(3)]);
        assert_eq!(waits.len(), 1);
        let second = fetches.claim(&[h(2), h(3)]);
        assert_eq!(second.ids(), &[h(3)][..]);
        let mut wait = Box::pin(async move {
            for w in waits {
                w.await;
            }
        });
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut wait).await.is_err(), "the first claim still holds h(2)");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), wait).await.expect("released when the first claim ended");
        // h(1) and h(2) are free again; h(3) is still the second's.
        let third = fetches.claim(&[h(1), h(3)]);
        assert_eq!(third.ids(), &[h(1)][..]);
        drop(second);
        assert_eq!(fetches.len(), 1, "only the third's h(1) is left");
        drop(third);
        assert!(fetches.is_empty());
    }
}
