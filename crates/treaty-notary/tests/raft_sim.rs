//! Deterministic simulation of a 3-replica Raft notary cluster with `turmoil`: each replica is a
//! simulated host running the real provider (real redb files) over simulated TCP, with a
//! simulated clock. The leader is partitioned from the others while clients keep committing,
//! the partition heals, a replica (the leader) is restarted mid-load; then every acknowledged
//! transaction is committed, no state was consumed twice, and the replicas agree.

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use treaty_notary::raft::{
    BoxStream, Handshake, NetFuture, RaftConfig, RaftUniquenessProvider, Remote, RemoteReplica, ReplicaId, ReplicaNetwork,
};
use treaty_notary::{CommitRequest, NotaryError, UniquenessProvider};

const PORT: u16 = 7000;

fn host(id: ReplicaId) -> String {
    format!("r{id}")
}

/// Simulated TCP; the connecting side names itself first (replica id, or 0 for a client).
struct SimNetwork {
    id: ReplicaId,
    listener: turmoil::net::TcpListener,
}

async fn dial(to: ReplicaId, me: ReplicaId) -> io::Result<BoxStream> {
    let mut stream = turmoil::net::TcpStream::connect((host(to), PORT)).await?;
    stream.write_all(&me.to_be_bytes()).await?;
    Ok(Box::new(stream))
}

impl ReplicaNetwork for SimNetwork {
    fn connect(&self, to: ReplicaId) -> NetFuture<'_, BoxStream> {
        Box::pin(dial(to, self.id))
    }

    fn accept(&self) -> NetFuture<'_, Handshake> {
        Box::pin(async move {
            let (mut stream, _) = self.listener.accept().await?;
            let handshake: Handshake = Box::pin(async move {
                let mut id = [0u8; 8];
                stream.read_exact(&mut id).await?;
                let remote = match u64::from_be_bytes(id) {
                    0 => Remote::Client,
                    id => Remote::Replica(id),
                };
                let stream: BoxStream = Box::new(stream);
                Ok((stream, remote))
            });
            Ok(handshake)
        })
    }
}

/// A client's connections to the three replicas, retrying through another replica until a
/// request is answered (so what it reports is the cluster's answer).
struct Client {
    conns: [Option<RemoteReplica>; 3],
    at: usize,
}

impl Client {
    fn new(at: usize) -> Client {
        Client { conns: [None, None, None], at: at % 3 }
    }

    async fn conn(&mut self, i: usize) -> Option<&RemoteReplica> {
        if self.conns[i].as_ref().is_none_or(|c| !c.is_connected()) {
            let stream = tokio::time::timeout(Duration::from_secs(1), dial(i as u64 + 1, 0)).await.ok()?.ok()?;
            self.conns[i] = Some(RemoteReplica::new(stream, Duration::from_secs(20)));
        }
        self.conns[i].as_ref()
    }

    /// Commits through replica `only` (if given) or any replica, until answered.
    async fn commit(&mut self, tx: &CommitRequest, only: Option<usize>) -> Result<(), NotaryError> {
        for _ in 0..200 {
            let i = only.unwrap_or(self.at);
            let answer = match self.conn(i).await {
                Some(c) => c.commit(tx.clone(), NOW).await,
                None => Err(NotaryError::Stopped("cannot connect".into())),
            };
            match answer {
                Ok(()) => return Ok(()),
                Err(e) if e.is_refusal() => return Err(e),
                // Through one replica only: its own retries are what is being tested.
                Err(e) if only.is_some() && e.code() == "NOTARY-UNAVAILABLE" => return Err(e),
                Err(_) => {
                    self.conns[i] = None;
                    if only.is_none() {
                        self.at = (self.at + 1) % 3;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(NotaryError::Stopped(format!("transaction {} never answered", tx.tx_id)))
    }

    async fn leader(&mut self) -> Option<ReplicaId> {
        for i in 0..3 {
            if let Some(c) = self.conn(i).await
                && let Ok(status) = c.status().await
                && status.leader.is_some()
            {
                return status.leader;
            }
        }
        None
    }
}

/// Runs `count` transactions named `prefix{i}` (spending state `base + i`) from 4 concurrent
/// clients; returns each with its answer.
async fn load(prefix: &'static str, base: u32, count: u32, avoid: Option<usize>) -> Vec<(CommitRequest, Result<(), NotaryError>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..4u32 {
        tasks.spawn(async move {
            let mut client = Client::new(c as usize);
            let mut out = Vec::new();
            for i in (c..count).step_by(4) {
                if avoid == Some(client.at) {
                    client.at = (client.at + 1) % 3;
                }
                let tx = request(&format!("{prefix}{i}"), &[base + i], &[], alice());
                let answer = client.commit(&tx, None).await;
                out.push((tx, answer));
            }
            out
        });
    }
    tasks.join_all().await.into_iter().flatten().collect()
}

fn config(id: ReplicaId) -> RaftConfig {
    let members = (1..=3).map(|id| (id, host(id))).collect();
    let mut c = RaftConfig::new(id, members);
    c.snapshot_after_entries = 30;
    c.entries_kept_after_snapshot = 5;
    c.unavailable_after = Duration::from_secs(3);
    c
}

#[test]
fn partitions_and_restarts_lose_nothing_and_double_nothing() {
    let dir = Arc::new(TempDir::new());
    let mut sim = turmoil::Builder::new().simulation_duration(Duration::from_secs(600)).rng_seed(20_260_101).build();
    for id in 1..=3u64 {
        let dir = dir.clone();
        sim.host(host(id), move || {
            let file = dir.path().join(format!("replica-{id}.redb"));
            async move {
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                let replica = RaftUniquenessProvider::start(&file, config(id), Arc::new(SimNetwork { id, listener })).await?;
                std::future::pending::<()>().await;
                drop(replica);
                Ok(())
            }
        });
    }

    // The client asks for a restart by setting `restart` to a replica id; the driver below
    // bounces that host and sets `phase` to 2.
    let phase = Arc::new(AtomicU32::new(0));
    let restart = Arc::new(AtomicU64::new(0));
    let (p, r) = (phase.clone(), restart.clone());
    sim.client("client", async move {
        let mut acked: Vec<(CommitRequest, Result<(), NotaryError>)> = Vec::new();
        acked.extend(load("a", 0, 60, None).await);
        let mut probe = Client::new(0);
        let leader = probe.leader().await.expect("a leader");

        // Cut the leader off from the other two. The majority elects a new leader and commits;
        // a request sent to the old leader is not committed (it cannot reach a majority).
        let others: Vec<ReplicaId> = (1..=3).filter(|id| *id != leader).collect();
        for o in &others {
            turmoil::partition(host(leader), host(*o));
        }
        let isolated = request("isolated", &[500], &[], bob());
        let old = leader as usize - 1;
        let stranded = tokio::spawn(async move { Client::new(old).commit(&isolated, Some(old)).await });
        acked.extend(load("b", 100, 60, Some(old)).await);
        let rival = request("rival", &[500], &[], alice());
        Client::new(others[0] as usize - 1).commit(&rival, None).await.expect("the majority commits while the leader is cut off");
        let stranded = stranded.await.expect("task");
        assert!(stranded.as_ref().is_err_and(|e| e.code() == "NOTARY-UNAVAILABLE"), "the cut-off leader answered {stranded:?}");
        for o in &others {
            turmoil::repair(host(leader), host(*o));
        }

        // Restart the current leader while clients commit.
        let leader = probe.leader().await.expect("a leader after the partition");
        r.store(leader, Ordering::SeqCst);
        let during = tokio::spawn(load("c", 200, 80, None));
        while p.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acked.extend(during.await.expect("task"));
        acked.extend(load("d", 300, 40, None).await);
        // Two clients race for one state through different replicas.
        let (x, y) = (request("x", &[900], &[], alice()), request("y", &[900], &[], bob()));
        let (rx, ry) = tokio::join!(async { Client::new(0).commit(&x, None).await }, async { Client::new(1).commit(&y, None).await });
        assert_eq!(rx.is_ok() as u32 + ry.is_ok() as u32, 1, "one of two spenders wins: {rx:?} {ry:?}");

        // Every acknowledged transaction is committed: a rival spending its state conflicts,
        // naming it. And the isolated request never was: the rival won state 500.
        for (tx, answer) in &acked {
            answer.as_ref().unwrap_or_else(|e| panic!("{}: {e}", tx.tx_id));
            let spoiler = request(&format!("spoil-{}", tx.tx_id), &[tx.inputs[0].index], &[], bob());
            let c = conflict_of(probe.commit(&spoiler, None).await);
            assert_eq!(c.states[&tx.inputs[0]].consumed_by.tx_id, tx.tx_id);
        }
        let c = conflict_of(probe.commit(&request("isolated", &[500], &[], bob()), None).await);
        assert_eq!(c.states[&state(500)].consumed_by.tx_id, tx("rival"));

        // All three replicas converge on the same log.
        for _ in 0..200 {
            let mut applied = Vec::new();
            for i in 0..3 {
                if let Some(c) = probe.conn(i).await
                    && let Ok(s) = c.status().await
                {
                    applied.push(s.last_applied_index);
                }
            }
            if applied.len() == 3 && applied.iter().all(|a| *a == applied[0]) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the replicas did not converge");
    });

    loop {
        let done = sim.step().unwrap_or_else(|e| panic!("simulation failed: {e}"));
        if done {
            break;
        }
        let victim = restart.load(Ordering::SeqCst);
        if victim != 0 && phase.load(Ordering::SeqCst) == 0 {
            // Let the load get going before the restart.
            phase.store(1, Ordering::SeqCst);
            for _ in 0..200 {
                sim.step().unwrap_or_else(|e| panic!("simulation failed: {e}"));
            }
            sim.bounce(host(victim));
            phase.store(2, Ordering::SeqCst);
        }
    }
}

#[test]
fn the_simulated_replicas_commit_across_replicas() {
    // A smoke run: three replicas, one client, commits through each replica.
    let dir = Arc::new(TempDir::new());
    let mut sim = turmoil::Builder::new().simulation_duration(Duration::from_secs(120)).build();
    for id in 1..=3u64 {
        let dir = dir.clone();
        sim.host(host(id), move || {
            let file = dir.path().join(format!("replica-{id}.redb"));
            async move {
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                let replica = RaftUniquenessProvider::start(&file, config(id), Arc::new(SimNetwork { id, listener })).await?;
                std::future::pending::<()>().await;
                drop(replica);
                Ok(())
            }
        });
    }
    sim.client("client", async move {
        let mut client = Client::new(0);
        for i in 0..9u32 {
            client.commit(&request(&format!("t{i}"), &[i], &[], alice()), Some(i as usize % 3)).await.expect("committed");
        }
        let c = conflict_of(client.commit(&request("late", &[4], &[], bob()), Some(2)).await);
        assert_eq!(c.states[&state(4)].consumed_by.tx_id, tx("t4"));
        Ok(())
    });
    sim.run().unwrap_or_else(|e| panic!("simulation failed: {e}"));
}
