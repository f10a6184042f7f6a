//! A notary's uniqueness provider when the Raft cluster runs in other processes: it commits
//! through the replicas as a client ([`RemoteReplica`] over mutual TLS), so an answer means
//! what it means on a replica — stored durably by a majority and applied.
//!
//! It sends to the replica that led when it last looked (no forwarding hop); a follower it
//! reaches instead forwards to the leader, so a stale guess costs a hop, not an error. When a
//! connection breaks it sends the same request again, to the next replica, until
//! [`ClusterClient::unavailable_after`]: committing a transaction again is safe (idempotent),
//! so a retry gets the answer the lost one would have had.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use treaty_core::Timestamp;
use treaty_net::transport::{self, TlsIdentity};

use super::ReplicaId;
use super::network::BoxStream;
use super::rpc::RemoteReplica;
use super::tls::TlsPeer;
use crate::error::NotaryError;
use crate::provider::{CommitFuture, UniquenessProvider};
use crate::request::CommitRequest;

/// How long one call to a replica may take (a replica itself answers `NOTARY-UNAVAILABLE`
/// within its own `unavailable_after`, 5 s by default).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait before trying the next replica.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// A client of a Raft notary cluster in other processes, as a [`UniquenessProvider`].
pub struct ClusterClient {
    identity: TlsIdentity,
    replicas: Vec<(ReplicaId, TlsPeer)>,
    connections: Vec<tokio::sync::Mutex<Option<Arc<RemoteReplica>>>>,
    preferred: AtomicUsize,
    /// How long a request is tried, replica after replica, before `NOTARY-UNAVAILABLE`.
    pub unavailable_after: Duration,
}

impl ClusterClient {
    /// Connects as `identity` to the cluster of `replicas` and waits (up to `wait`) until one
    /// of them names a leader among them; requests go to that leader first.
    pub async fn connect(identity: TlsIdentity, replicas: Vec<(ReplicaId, TlsPeer)>, wait: Duration) -> Result<ClusterClient, NotaryError> {
        if replicas.is_empty() {
            return Err(NotaryError::Open { location: "the Raft provider".into(), reason: "no replicas are configured".into() });
        }
        let connections = replicas.iter().map(|_| tokio::sync::Mutex::new(None)).collect();
        let client =
            ClusterClient { identity, replicas, connections, preferred: AtomicUsize::new(0), unavailable_after: Duration::from_secs(10) };
        let deadline = Instant::now() + wait;
        let mut last = String::from("no replica answered");
        loop {
            for i in 0..client.replicas.len() {
                match client.replica(i).await {
                    Ok(r) => match r.status().await {
                        Ok(status) => match status.leader.and_then(|l| client.replicas.iter().position(|(id, _)| *id == l)) {
                            Some(leader) => {
                                client.preferred.store(leader, Ordering::Relaxed);
                                return Ok(client);
                            }
                            None => last = format!("{} knows no leader yet", client.replicas[i].1.address),
                        },
                        Err(e) => last = e.to_string(),
                    },
                    Err(why) => last = why,
                }
            }
            if Instant::now() >= deadline {
                return Err(NotaryError::Unavailable {
                    replicas: client.list(),
                    waited_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    reason: format!("no leader was elected: {last}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn list(&self) -> String {
        self.replicas.iter().map(|(id, r)| format!("{id} ({}, {})", r.address, r.name)).collect::<Vec<_>>().join(", ")
    }

    /// The connection to replica `i`, opened if there is none that works.
    async fn replica(&self, i: usize) -> Result<Arc<RemoteReplica>, String> {
        let mut slot = self.connections[i].lock().await;
        if let Some(r) = slot.as_ref().filter(|r| r.is_connected()) {
            return Ok(r.clone());
        }
        *slot = None;
        let peer = &self.replicas[i].1;
        let stream = tokio::time::timeout(Duration::from_secs(5), transport::connect(&peer.address, &self.identity, &peer.name))
            .await
            .map_err(|_| format!("{}: no connection within 5 s", peer.address))?
            .map_err(|e| format!("{}: {e}", peer.address))?;
        let stream: BoxStream = Box::new(stream);
        let replica = Arc::new(RemoteReplica::new(stream, CALL_TIMEOUT));
        *slot = Some(replica.clone());
        Ok(replica)
    }
}

impl UniquenessProvider for ClusterClient {
    fn commit(&self, request: CommitRequest, now: Timestamp) -> CommitFuture<'_> {
        Box::pin(async move {
            let started = Instant::now();
            loop {
                let i = self.preferred.load(Ordering::Relaxed) % self.replicas.len();
                let why = match self.replica(i).await {
                    Ok(replica) => match replica.commit(request.clone(), now).await {
                        // The connection broke: whether it was committed is unknown; ask again.
                        Err(NotaryError::Unavailable { reason, .. }) if !replica.is_connected() => {
                            format!("{}: {reason}", self.replicas[i].1.address)
                        }
                        answer => return answer,
                    },
                    Err(why) => why,
                };
                let _ = self.preferred.compare_exchange(i, (i + 1) % self.replicas.len(), Ordering::Relaxed, Ordering::Relaxed);
                if started.elapsed() >= self.unavailable_after {
                    return Err(NotaryError::Unavailable {
                        replicas: self.list(),
                        waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        reason: why,
                    });
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        })
    }
}
