//! The replicated uniqueness provider: a cluster of 3 or 5 replicas (static membership) that
//! agree, through Raft ([`openraft`]), on one log of batches of commit requests, and apply each
//! batch with the same rules as every other provider ([`crate::apply::apply_batch`]).
//!
//! - **Any replica accepts requests.** Each replica batches the requests it accepts, exactly as
//!   the single-node provider does (a queue, one batch per round, lingering for callers it just
//!   answered). The leader proposes a batch as one Raft entry; a follower forwards the batch to
//!   the leader over its connection to it, where the requests join the leader's own queue (so
//!   entries stay large). Batches from one replica reach the leader in order.
//! - **Committed means committed by a majority, then applied.** A request is answered with
//!   the leader's state machine's answer, after its entry was stored durably by a majority and
//!   applied. An entry carries each request with the notary's time it was accepted at, and the
//!   leader's rules, so every replica computes the same answers and the same state.
//! - **Leader changes.** A replica whose batch fails (leader gone, deposed, unreachable) sends
//!   it again to whichever replica is leader then, until [`RaftConfig::unavailable_after`];
//!   then it answers `NOTARY-UNAVAILABLE` naming the replicas. Resending is safe: committing a
//!   transaction that was committed before succeeds again and changes nothing.
//! - **Storage**: one redb file per replica holds the log, the vote, the state machine and the
//!   latest snapshot (see the `store` module). A replica that restarts or lags behind the
//!   purged log receives the leader's snapshot (the whole consumed-state set).
//! - **Network**: everything goes through a [`ReplicaNetwork`]: mutual TLS ([`TlsNetwork`]) in
//!   production, in-memory pipes ([`MemoryNetwork`]) in tests, simulated TCP in the
//!   deterministic simulation.

mod client;
mod network;
mod replica;
mod rpc;
mod store;
mod tls;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use treaty_core::Timestamp;

pub use client::ClusterClient;
pub use network::{BoxStream, Handshake, MemoryEndpoint, MemoryNetwork, NetFuture, Remote, ReplicaNetwork, ReplicaStream};
pub use replica::RaftUniquenessProvider;
pub use rpc::{CLIENT_MAX_FRAME, MAX_FRAME, RemoteReplica, ReplicaStatus};
pub use store::{RAFT_FORMAT_VERSION, ReplicaContents, read_replica_file};
pub use tls::{ReplicaFile, ReplicaFilePeer, TlsNetwork, TlsPeer};

use crate::apply::Rules;
use crate::error::NotaryError;
use crate::provider::UniquenessConfig;
use crate::request::CommitRequest;

/// A replica's id in its cluster (1, 2, 3, ...), fixed for its life.
pub type ReplicaId = u64;

/// One answer per request of a batch.
pub(crate) type Answers = Vec<Result<(), NotaryError>>;

/// The most entries in one append-entries message (each entry is a batch of up to
/// [`UniquenessConfig::max_batch`] requests).
pub const MAX_PAYLOAD_ENTRIES: u64 = 8;

/// What a Raft entry proposes: a batch of requests, in order, each with the notary's time it
/// was accepted at, and the rules to judge them by.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Proposal {
    /// The proposing leader's rules: every replica applies these, so replicas configured
    /// differently still agree.
    pub rules: Rules,
    /// The requests.
    pub requests: Vec<(CommitRequest, Timestamp)>,
}

openraft::declare_raft_types!(
    /// openraft's types for the uniqueness cluster.
    pub(crate) TypeConfig:
        D = Proposal,
        R = Answers,
        NodeId = ReplicaId,
        Node = openraft::EmptyNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Settings of one replica. Every replica of a cluster must list the same members.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// This replica's id (one of `members`).
    pub id: ReplicaId,
    /// Every replica of the cluster, this one included, with how operators know it (its
    /// address): named in `NOTARY-UNAVAILABLE`. Static: 3 replicas tolerate one failure, 5 two.
    pub members: BTreeMap<ReplicaId, String>,
    /// Rules, batch size, queue capacity and file verification, as for the other providers.
    pub uniqueness: UniquenessConfig,
    /// How many batches a replica may have on their way to the leader at once.
    pub max_in_flight: usize,
    /// How long a replica keeps trying to commit a batch (through leader changes) before it
    /// answers `NOTARY-UNAVAILABLE`.
    pub unavailable_after: Duration,
    /// How long one attempt (one proposal or forward) may take before it is tried again.
    pub attempt_timeout: Duration,
    /// The leader's heartbeat interval.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in this range stands for election.
    pub election_timeout: (Duration, Duration),
    /// A snapshot is built after this many log entries since the previous one.
    pub snapshot_after_entries: u64,
    /// Log entries kept after a snapshot: a follower lagging by fewer gets entries, not the snapshot.
    pub entries_kept_after_snapshot: u64,
}

impl RaftConfig {
    /// Defaults for replica `id` of a cluster of `members`.
    pub fn new(id: ReplicaId, members: BTreeMap<ReplicaId, String>) -> RaftConfig {
        RaftConfig {
            id,
            members,
            uniqueness: UniquenessConfig::default(),
            max_in_flight: 2,
            unavailable_after: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
            snapshot_after_entries: 5000,
            entries_kept_after_snapshot: 1000,
        }
    }

    /// The replicas as named in errors: "1 (address), 2 (address), ...".
    pub(crate) fn member_list(&self) -> String {
        self.members.iter().map(|(id, name)| format!("{id} ({name})")).collect::<Vec<_>>().join(", ")
    }

    /// openraft's configuration.
    fn openraft(&self) -> Result<openraft::Config, String> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        openraft::Config {
            cluster_name: "treaty-notary".into(),
            heartbeat_interval: ms(self.heartbeat).max(1),
            election_timeout_min: ms(self.election_timeout.0),
            election_timeout_max: ms(self.election_timeout.1),
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_after_entries.max(1)),
            max_in_snapshot_log_to_keep: self.entries_kept_after_snapshot,
            install_snapshot_timeout: 5_000,
            snapshot_max_chunk_size: 4 << 20,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| e.to_string())
    }
}
