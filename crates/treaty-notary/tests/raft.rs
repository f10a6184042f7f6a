//! The Raft provider beyond the shared suite: clusters in this process over in-memory pipes
//! (races across replicas, leader changes, catching up from a snapshot, losing the majority),
//! and three replica processes over mutual TLS whose leader is killed (SIGKILL) under load.
//! The deterministic simulation with partitions and restarts is in `raft_sim.rs`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use treaty_notary::raft::{MemoryNetwork, RaftConfig, RaftUniquenessProvider, ReplicaId, read_replica_file};
use treaty_notary::{NotaryError, RedbUniquenessProvider, UniquenessConfig, UniquenessProvider};

/// Starts replica `id` of a 3-replica cluster whose files are in `dir`.
async fn start(dir: &TempDir, network: &MemoryNetwork, id: ReplicaId, tweak: &dyn Fn(&mut RaftConfig)) -> RaftUniquenessProvider {
    let members: BTreeMap<ReplicaId, String> = (1..=3).map(|id| (id, format!("memory-{id}"))).collect();
    let mut config = RaftConfig::new(id, members);
    config.election_timeout = (Duration::from_millis(150), Duration::from_millis(300));
    tweak(&mut config);
    RaftUniquenessProvider::start(dir.path().join(format!("replica-{id}.redb")), config, Arc::new(network.endpoint(id)))
        .await
        .unwrap_or_else(|e| panic!("start replica {id}: {e}"))
}

/// Starts replicas 1, 2 and 3 and waits for a leader; returns them and the leader's position.
async fn cluster(dir: &TempDir, network: &MemoryNetwork, tweak: &dyn Fn(&mut RaftConfig)) -> (Vec<RaftUniquenessProvider>, usize) {
    let mut replicas = Vec::new();
    for id in 1..=3 {
        replicas.push(start(dir, network, id, tweak).await);
    }
    let leader = replicas[0].wait_for_leader(Duration::from_secs(10)).await.expect("a leader");
    let at = replicas.iter().position(|r| r.id() == leader).expect("the leader is a member");
    (replicas, at)
}

/// Waits until `replica` has applied at least `index`.
async fn applied(replica: &RaftUniquenessProvider, index: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while replica.status().last_applied_index < index {
        assert!(Instant::now() < deadline, "replica {} stuck at {:?}, wanted index {index}", replica.id(), replica.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_across_replicas_has_one_winner() {
    let (dir, network) = (TempDir::new(), MemoryNetwork::new());
    let (replicas, _) = cluster(&dir, &network, &|_| {}).await;
    let replicas: Vec<Arc<RaftUniquenessProvider>> = replicas.into_iter().map(Arc::new).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let replica = replicas[i % 3].clone();
        tasks.spawn(async move {
            let id = format!("spender-{i}");
            (id.clone(), replica.commit(request(&id, &[7], &[], alice()), NOW).await)
        });
    }
    let results = tasks.join_all().await;
    let winners: Vec<&String> = results.iter().filter(|(_, r)| r.is_ok()).map(|(id, _)| id).collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    for (id, result) in results.iter().filter(|(id, _)| id != winners[0]) {
        assert_eq!(conflict_of(result.clone()).states[&state(7)].consumed_by.tx_id, tx(winners[0]), "{id}");
    }
    for replica in replicas {
        let Ok(replica) = Arc::try_unwrap(replica) else { panic!("still shared") };
        replica.close().await;
    }
}

/// A client whose transaction was committed just before the leader went away asks a surviving
/// replica again: same answer, and the state stays consumed by that transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_leader_is_gone_gets_the_same_answer() {
    let (dir, network) = (TempDir::new(), MemoryNetwork::new());
    let (mut replicas, leader) = cluster(&dir, &network, &|_| {}).await;
    let follower = (leader + 1) % 3;
    let pay = request("pay", &[1, 2], &[], alice());
    replicas[follower].commit(pay.clone(), NOW).await.expect("committed through a follower");
    let old = replicas.remove(leader);
    let old_id = old.id();
    old.close().await;
    network.disconnect(old_id);
    let follower = replicas.iter().position(|r| r.id() != old_id).expect("a survivor");
    replicas[follower].commit(pay.clone(), NOW.plus_micros(3_600_000_000)).await.expect("the retry succeeds again");
    let c = conflict_of(replicas[follower].commit(request("late", &[2], &[], bob()), NOW).await);
    assert_eq!(c.states[&state(2)].consumed_by, consumer("pay", 1, alice()));
    // The survivors elected a new leader among themselves.
    let new = replicas[0].wait_for_leader(Duration::from_secs(5)).await.unwrap();
    assert_ne!(new, old_id);
    for r in replicas {
        r.close().await;
    }
}

/// A replica that was down while the others committed (and snapshotted and purged their logs)
/// restarts and catches up by installing the leader's snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_catches_up_from_a_snapshot() {
    let (dir, network) = (TempDir::new(), MemoryNetwork::new());
    let tweak = |c: &mut RaftConfig| {
        c.snapshot_after_entries = 10;
        c.entries_kept_after_snapshot = 2;
        c.uniqueness.max_batch = 4;
    };
    let (mut replicas, leader) = cluster(&dir, &network, &tweak).await;
    let down_at = (leader + 1) % 3;
    for i in 0..20 {
        replicas[leader].commit(request(&format!("t{i}"), &[i], &[], alice()), NOW).await.unwrap();
    }
    let down = replicas.remove(down_at);
    let (down_id, down_applied) = (down.id(), down.status().last_applied_index);
    down.close().await;
    network.disconnect(down_id);

    let entry = Arc::new(replicas.remove(0));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8u32 {
        let entry = entry.clone();
        tasks.spawn(async move {
            for i in (20 + worker..300).step_by(8) {
                entry.commit(request(&format!("t{i}"), &[i], &[], alice()), NOW).await.unwrap();
            }
        });
    }
    tasks.join_all().await;
    let Ok(entry) = Arc::try_unwrap(entry) else { panic!("still shared") };
    replicas.insert(0, entry);
    let target = replicas.iter().map(|r| r.status().last_applied_index).max().unwrap();
    let leader_snapshot = replicas.iter().map(|r| r.status().snapshot_index).max().unwrap();
    assert!(leader_snapshot > down_applied + 2, "the others snapshotted past what the stopped replica has");

    let back = start(&dir, &network, down_id, &tweak).await;
    applied(&back, target, Duration::from_secs(20)).await;
    assert!(back.status().snapshot_index > down_applied, "it caught up by a snapshot: {:?}", back.status());
    // And it takes part again: a commit through it.
    back.commit(request("after", &[1000], &[], bob()), NOW).await.unwrap();
    // An answer means a majority committed it; wait until this replica has applied it too
    // before reading its file.
    let target = replicas.iter().map(|r| r.status().last_applied_index).max().unwrap();
    applied(&back, target, Duration::from_secs(20)).await;
    replicas.push(back);
    for r in replicas {
        r.close().await;
    }
    let contents = read_replica_file(dir.path().join(format!("replica-{down_id}.redb"))).unwrap();
    for i in 0..300u32 {
        assert_eq!(contents.state.consumed.get(&state(i)), Some(&consumer(&format!("t{i}"), 0, alice())), "state {i}");
    }
    assert_eq!(contents.state.consumed.get(&state(1000)), Some(&consumer("after", 0, bob())));
}

/// With two of three replicas gone, a request is answered NOTARY-UNAVAILABLE naming the
/// replicas, after the configured wait; once they are back, the cluster commits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_the_answer_is_unavailable() {
    let (dir, network) = (TempDir::new(), MemoryNetwork::new());
    let tweak = |c: &mut RaftConfig| c.unavailable_after = Duration::from_secs(1);
    let (mut replicas, _) = cluster(&dir, &network, &tweak).await;
    replicas[0].commit(request("before", &[1], &[], alice()), NOW).await.unwrap();
    let survivor = replicas.remove(0);
    for r in replicas {
        let id = r.id();
        r.close().await;
        network.disconnect(id);
    }
    let started = Instant::now();
    let err = survivor.commit(request("lonely", &[2], &[], alice()), NOW).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.code(), "NOTARY-UNAVAILABLE", "{err}");
    assert!(!err.is_refusal());
    let message = err.to_string();
    assert!(message.contains("no majority of replicas 1 (memory-1), 2 (memory-2), 3 (memory-3) committed it"), "{message}");
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(10), "{waited:?}");

    let mut replicas = vec![survivor];
    for id in [2, 3] {
        replicas.push(start(&dir, &network, id, &tweak).await);
    }
    let mut answer = Err(NotaryError::Stopped("not tried".into()));
    for _ in 0..10 {
        answer = replicas[0].commit(request("lonely", &[2], &[], alice()), NOW).await;
        if answer.is_ok() {
            break;
        }
    }
    answer.expect("the cluster commits again once a majority is back");
    for r in replicas {
        r.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_a_single_node_log() {
    let dir = TempDir::new();
    let file = dir.path().join("uniqueness.redb");
    RedbUniquenessProvider::open(&file, UniquenessConfig::default()).await.unwrap().close().await;
    let members: BTreeMap<ReplicaId, String> = (1..=3).map(|id| (id, format!("memory-{id}"))).collect();
    let network = MemoryNetwork::new();
    let err = RaftUniquenessProvider::start(&file, RaftConfig::new(1, members), Arc::new(network.endpoint(1))).await.unwrap_err();
    assert_eq!(err.code(), "NOTARY-OPEN");
    assert!(err.to_string().contains("not a Raft replica's log"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Real processes over mutual TLS

mod processes {
    use std::io::{BufRead, BufReader, Write};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use treaty_core::X500Name;
    use treaty_net::transport::{self, TlsIdentity};
    use treaty_notary::raft::{BoxStream, RemoteReplica};

    use super::*;

    fn replica_name(id: u64) -> X500Name {
        format!("O=Notary Replica {id},L=Zurich,C=CH").parse().unwrap()
    }

    /// One replica process's files.
    struct ReplicaDir {
        id: u64,
        config: PathBuf,
        log: PathBuf,
        address: String,
    }

    /// Writes each replica's certificates, key and configuration under `dir`.
    fn write_cluster(dir: &Path, pki: &Pki) -> Vec<ReplicaDir> {
        write_cluster_with(dir, pki, "")
    }

    /// [`write_cluster`] with `section` (TOML tables) at the end of every replica's file.
    fn write_cluster_with(dir: &Path, pki: &Pki, section: &str) -> Vec<ReplicaDir> {
        let addresses: Vec<String> = (1..=3).map(|_| format!("127.0.0.1:{}", treaty_testkit::free_port())).collect();
        std::fs::write(dir.join("root.der"), &pki.root.cert).unwrap();
        let mut table = String::new();
        for id in 1..=3u64 {
            table.push_str(&format!(
                "[[replicas]]\nid = {id}\naddress = \"{}\"\nname = \"{}\"\n\n",
                addresses[id as usize - 1],
                replica_name(id)
            ));
        }
        (1..=3u64)
            .map(|id| {
                let home = dir.join(format!("replica-{id}"));
                let chain = pki.write_party(&home, &replica_name(id), 10 * id as u8);
                let config = home.join("replica.toml");
                std::fs::write(
                    &config,
                    format!(
                        "id = {id}\nlisten = \"{}\"\nlog = \"replica.redb\"\nroot_cert = \"../root.der\"\ntls_chain = {}\ntls_key = \"tls.key\"\nsnapshot_after_entries = 200\nentries_kept_after_snapshot = 20\nclients = [\"O=Load Client,L=London,C=GB\"]\n\n{table}{section}",
                        addresses[id as usize - 1],
                        chain
                    ),
                )
                .unwrap();
                ReplicaDir { id, config, log: home.join("replica.redb"), address: addresses[id as usize - 1].clone() }
            })
            .collect()
    }

    /// Replicas following the network map: once the map revokes their client, its new
    /// connections are turned away, while other members of the network still read the status.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_the_map_revokes_is_turned_away_by_the_replicas() {
        let dir = TempDir::new();
        let pki = Pki::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let map_dir = dir.path().join("map");
        let _map = serve_map(&map_dir, &pki, listener);
        let replicas = write_cluster_with(dir.path(), &pki, &map_section(&url));
        let children: Vec<Child> = replicas.iter().map(spawn).collect();
        let client_name: X500Name = "O=Load Client,L=London,C=GB".parse().unwrap();
        let identity = pki.identity(&client_name, 90);
        let all: Vec<&ReplicaDir> = replicas.iter().collect();
        let at = leader(&identity, &all).await;
        let at = replicas.iter().find(|r| r.id == at).unwrap();
        client(&identity, at).await.unwrap().commit(request("before", &[1], &[], alice()), NOW).await.unwrap();

        treaty_netmap::revoke(&map_dir, &client_name).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        for r in &replicas {
            // Turned away: the handshake fails, or (TLS 1.3: the client's side of it ends
            // first) the connection dies before an answer.
            while let Ok(c) = client(&identity, r).await
                && c.status().await.is_ok()
            {
                assert!(Instant::now() < deadline, "replica {} still serves the revoked client", r.id);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let other = pki.identity(&"O=Stranger,L=Oslo,C=NO".parse().unwrap(), 91);
        assert!(client(&other, at).await.unwrap().status().await.is_ok(), "the replica serves nobody any more");
        for child in children {
            stop(child);
        }
    }

    /// Starts a replica process and waits until it listens.
    fn spawn(replica: &ReplicaDir) -> Child {
        let mut child = Command::new(env!("CARGO_BIN_EXE_treaty-raft-replica"))
            .arg(&replica.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("listening "), "replica {} did not start: {line:?}", replica.id);
        child
    }

    /// Stops a replica process cleanly (closing its standard input) and waits for it.
    fn stop(mut child: Child) {
        drop(child.stdin.take());
        let status = child.wait().unwrap();
        assert!(status.success(), "{status}");
    }

    /// A client connection to a replica over mutual TLS.
    async fn client(identity: &TlsIdentity, replica: &ReplicaDir) -> std::io::Result<RemoteReplica> {
        let stream = transport::connect(&replica.address, identity, &replica_name(replica.id)).await.map_err(std::io::Error::other)?;
        let stream: BoxStream = Box::new(stream);
        Ok(RemoteReplica::new(stream, Duration::from_secs(30)))
    }

    /// Asks the replicas in turn until one names a leader.
    async fn leader(identity: &TlsIdentity, replicas: &[&ReplicaDir]) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for r in replicas {
                if let Ok(c) = client(identity, r).await
                    && let Ok(status) = c.status().await
                    && let Some(leader) = status.leader
                    && replicas.iter().any(|r| r.id == leader)
                {
                    return leader;
                }
            }
            assert!(Instant::now() < deadline, "no leader among {:?}", replicas.iter().map(|r| r.id).collect::<Vec<_>>());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Transaction `n` of the load: most spend a state of their own; pairs 2k, 2k+1 for
    /// n >= 1600 contest one state between two clients.
    fn load_tx(n: u32) -> treaty_notary::CommitRequest {
        let contested = n >= 1600;
        let input = if contested { 100_000 + (n - 1600) / 2 } else { n };
        request(&format!("load-{n}"), &[input], &[], alice())
    }

    /// Three replica processes over mutual TLS; clients commit 2,000 transactions (400 of
    /// them in contested pairs) through different replicas; the leader is killed (SIGKILL)
    /// mid-load and clients carry on against the survivors, retrying what was in flight.
    /// Then: no state was consumed by two transactions, every transaction answered Ok is
    /// committed on the surviving majority, the cluster commits after the kill, and the killed
    /// replica, restarted, catches up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leader_killed_under_load_loses_nothing_and_doubles_nothing() {
        const TOTAL: u32 = 2000;
        const CLIENTS: u32 = 8;
        let dir = TempDir::new();
        let pki = Pki::new();
        let replicas = Arc::new(write_cluster(dir.path(), &pki));
        let mut children: HashMap<u64, Child> = replicas.iter().map(|r| (r.id, spawn(r))).collect();
        let identity = Arc::new(pki.identity(&"O=Load Client,L=London,C=GB".parse().unwrap(), 90));
        let all: Vec<&ReplicaDir> = replicas.iter().collect();
        let first_leader = leader(&identity, &all).await;

        let acked = Arc::new(AtomicUsize::new(0));
        let killed = Arc::new(std::sync::Mutex::new(None::<u64>));
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..CLIENTS {
            let (replicas, identity, acked, killed) = (replicas.clone(), identity.clone(), acked.clone(), killed.clone());
            tasks.spawn(async move {
                let mut answers = Vec::new();
                let mut at = c as usize % 3;
                let mut conn: Option<RemoteReplica> = None;
                for n in (c..TOTAL).step_by(CLIENTS as usize) {
                    let tx = load_tx(n);
                    let started = Instant::now();
                    // Retry (the same transaction) through another replica until answered.
                    let answer = loop {
                        assert!(started.elapsed() < Duration::from_secs(60), "transaction {n} never answered");
                        if conn.as_ref().is_none_or(|c| !c.is_connected()) {
                            let dead = *killed.lock().unwrap();
                            if Some(replicas[at].id) == dead {
                                at = (at + 1) % 3;
                            }
                            conn = client(&identity, &replicas[at]).await.ok();
                            if conn.is_none() {
                                at = (at + 1) % 3;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                        let Some(c) = conn.as_ref() else { continue };
                        match c.commit(tx.clone(), NOW).await {
                            Ok(()) => break Ok(()),
                            Err(e) if e.is_refusal() => break Err(e),
                            Err(_) => {
                                conn = None;
                                at = (at + 1) % 3;
                            }
                        }
                    };
                    acked.fetch_add(1, Ordering::Relaxed);
                    answers.push((n, answer));
                }
                answers
            });
        }
        // Kill the leader once a third of the load is answered.
        while acked.load(Ordering::Relaxed) < TOTAL as usize / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let victim = first_leader;
        *killed.lock().unwrap() = Some(victim);
        let mut child = children.remove(&victim).unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let killed_at = acked.load(Ordering::Relaxed);
        let answers: Vec<(u32, Result<(), NotaryError>)> = tasks.join_all().await.into_iter().flatten().collect();
        assert_eq!(answers.len(), TOTAL as usize);
        assert!(killed_at < TOTAL as usize * 2 / 3, "the kill came mid-load ({killed_at} answered)");

        // Each contested pair: exactly one winner, the loser told who.
        let ok: HashMap<u32, bool> = answers.iter().map(|(n, a)| (*n, a.is_ok())).collect();
        for n in 0..1600 {
            assert!(ok[&n], "uncontested transaction {n} was refused: {:?}", answers.iter().find(|(m, _)| *m == n));
        }
        for pair in (1600..TOTAL).step_by(2) {
            assert_eq!(ok[&pair] as u32 + ok[&(pair + 1)] as u32, 1, "pair {pair}: exactly one of the two commits");
        }

        // The survivors take new commits after the kill.
        let survivors: Vec<&ReplicaDir> = replicas.iter().filter(|r| r.id != victim).collect();
        let new_leader = leader(&identity, &survivors).await;
        assert_ne!(new_leader, victim);
        for r in &survivors {
            let c = client(&identity, r).await.unwrap();
            c.commit(request(&format!("after-kill-{}", r.id), &[200_000 + r.id as u32], &[], bob()), NOW).await.unwrap();
        }
        // Another member of the network, not a configured client, may read the status but not
        // write to the log: a commit request carries no proof of its own.
        let stranger = pki.identity(&"O=Stranger,L=Oslo,C=NO".parse().unwrap(), 91);
        let c = client(&stranger, survivors[0]).await.unwrap();
        assert!(c.status().await.is_ok());
        let refused = c.commit(request("stranger", &[300_000], &[], bob()), NOW).await.unwrap_err();
        assert!(refused.to_string().contains("only the cluster's replicas and its configured clients"), "{refused}");

        // The killed replica restarts and catches up.
        let victim_dir = replicas.iter().find(|r| r.id == victim).unwrap();
        children.insert(victim, spawn(victim_dir));
        let target = {
            let c = client(&identity, survivors[0]).await.unwrap();
            c.status().await.unwrap().last_applied_index
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = match client(&identity, victim_dir).await {
                Ok(c) => c.status().await.ok(),
                Err(_) => None,
            };
            if status.as_ref().is_some_and(|s| s.last_applied_index >= target) {
                break;
            }
            assert!(Instant::now() < deadline, "the restarted replica did not catch up: {status:?}, target {target}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let c = client(&identity, victim_dir).await.unwrap();
        c.commit(request("after-restart", &[300_000], &[], bob()), NOW).await.expect("the restarted replica commits");
        eprintln!(
            "killed leader {victim} after {killed_at} of {TOTAL} answers; new leader {new_leader}; restarted replica: {:?}",
            c.status().await.unwrap()
        );
        drop(c);
        // An answer means a majority committed it; wait until every replica has applied it
        // before reading the files.
        let mut target = 0;
        for r in replicas.iter() {
            if let Ok(c) = client(&identity, r).await {
                target = target.max(c.status().await.map(|s| s.last_applied_index).unwrap_or(0));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for r in replicas.iter() {
            loop {
                let status = match client(&identity, r).await {
                    Ok(c) => c.status().await.ok(),
                    Err(_) => None,
                };
                if status.as_ref().is_some_and(|s| s.last_applied_index >= target) {
                    break;
                }
                assert!(Instant::now() < deadline, "replica {} did not apply up to {target}: {status:?}", r.id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        // Stop everyone cleanly and read each file.
        for (_, child) in children.drain() {
            stop(child);
        }
        let files: Vec<_> = replicas.iter().map(|r| (r.id, read_replica_file(&r.log).unwrap())).collect();
        for (id, contents) in &files {
            let consumed = &contents.state.consumed;
            for (n, answer) in &answers {
                let tx = load_tx(*n);
                let record = consumed.get(&tx.inputs[0]);
                if answer.is_ok() {
                    assert_eq!(record.map(|c| c.tx_id), Some(tx.tx_id), "replica {id}: acknowledged transaction {n} is committed");
                } else {
                    assert_ne!(record.map(|c| c.tx_id), Some(tx.tx_id), "replica {id}: refused transaction {n} consumed nothing");
                }
            }
            assert!(consumed.contains_key(&state(300_000)), "replica {id} has the commit made after the restart");
        }
        // Every replica holds the same log, the restarted one included.
        for (id, contents) in &files[1..] {
            assert_eq!(contents.state, files[0].1.state, "replica {id} agrees with replica {}", files[0].0);
        }
        let _ = std::io::stdout().flush();
    }
}
