//! Measures durable commits per second of a provider: 1-input transactions from 64 concurrent
//! callers (override with arguments: `TOTAL CONCURRENCY PROVIDER`, where PROVIDER is `redb`,
//! the default, or `raft`: three replicas in this process talking mutual TLS over loopback,
//! the callers spread over them). Prints one JSON line, with this machine's baseline measured in
//! the same run: how long a bare redb write transaction of 64 random keys takes to commit
//! durably (the disk's flush latency is what bounds a batch, so compare runs by their ratio to it).
//!
//! cargo run --release -p treaty-notary --example uniqueness_rate [-- 200000 64 raft]

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use treaty_core::{KeyPair, SecureHash, SignatureScheme, StateRef, Timestamp, X500Name};
use treaty_net::pki::{self, CertRole, RevocationList, Validity};
use treaty_net::transport::TlsIdentity;
use treaty_notary::raft::{TlsNetwork, TlsPeer};
use treaty_notary::{CommitRequest, RaftConfig, RaftUniquenessProvider, RedbUniquenessProvider, UniquenessConfig, UniquenessProvider};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let total: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200_000);
    let concurrency: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let kind = args.next().unwrap_or_else(|| "redb".into());
    let dir = std::env::temp_dir().join(format!("treaty-uniqueness-rate-{}", std::process::id()));
    let providers: Vec<Arc<dyn UniquenessProvider>> = match kind.as_str() {
        "redb" => vec![Arc::new(RedbUniquenessProvider::open(dir.join("uniqueness.redb"), UniquenessConfig::default()).await?)],
        "raft" => raft_cluster(&dir).await?.into_iter().map(|r| Arc::new(r) as Arc<dyn UniquenessProvider>).collect(),
        other => return Err(format!("unknown provider {other:?} (redb or raft)").into()),
    };
    let requester: X500Name = "O=Alice,L=London,C=GB".parse()?;
    let now = Timestamp::from_secs(1_800_000_000);

    let baseline_ms = bare_redb_commit_ms(&dir.join("baseline.redb"))?;

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let (provider, requester) = (providers[worker as usize % providers.len()].clone(), requester.clone());
        tasks.spawn(async move {
            let mut i = worker;
            while i < total {
                let n = i.to_be_bytes();
                let request = CommitRequest {
                    tx_id: SecureHash::sha256_parts(&[b"tx", &n]),
                    inputs: vec![StateRef { txhash: SecureHash::sha256_parts(&[b"issue", &n]), index: 0 }],
                    references: vec![],
                    time_window: None,
                    requester: requester.clone(),
                };
                provider.commit(request, now).await?;
                i += concurrency;
            }
            Ok::<(), treaty_notary::NotaryError>(())
        });
    }
    for result in tasks.join_all().await {
        result?;
    }
    let elapsed = started.elapsed();
    println!(
        "{{\"provider\":\"{kind}\",\"transactions\":{total},\"inputs\":1,\"concurrency\":{concurrency},\"seconds\":{:.3},\"commits_per_second\":{:.0},\"baseline_bare_redb_commit_of_64_keys_ms\":{baseline_ms:.3}}}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    drop(providers);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Three replicas in this process, each with its own file, listener and TLS certificate from a
/// throw-away network CA, talking mutual TLS over 127.0.0.1; returns once a leader is elected.
async fn raft_cluster(dir: &std::path::Path) -> Result<Vec<RaftUniquenessProvider>, Box<dyn std::error::Error>> {
    let key = |seed: u8| KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let validity = Validity::from_now(now, 1);
    let root = pki::root_ca("O=Bench Root,L=London,C=GB".parse()?, key(1)?, validity, [1; 16])?;
    let doorman = root.issue("O=Bench Doorman,L=London,C=GB".parse()?, key(2)?, CertRole::DoormanCa, validity, [2; 16])?;
    let name = |id: u64| -> Result<X500Name, Box<dyn std::error::Error>> { Ok(format!("O=Replica {id},L=Zurich,C=CH").parse()?) };
    let mut addresses = BTreeMap::new();
    for id in 1..=3u64 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        addresses.insert(id, format!("127.0.0.1:{port}"));
    }
    let mut replicas = Vec::new();
    for id in 1..=3u64 {
        let seed = 10 * id as u8;
        let node_ca = doorman.issue(name(id)?, key(seed)?, CertRole::NodeCa, validity, [seed; 16])?;
        let tls = node_ca.issue(name(id)?, key(seed + 1)?, CertRole::Tls, validity, [seed + 1; 16])?;
        let identity = TlsIdentity {
            chain: vec![tls.cert, node_ca.cert, doorman.cert.clone()],
            key: Arc::new(tls.key),
            root: Arc::new(root.cert.clone()),
            revoked: Arc::new(RwLock::new(RevocationList::default())),
        };
        let mut peers = BTreeMap::new();
        for (peer, address) in addresses.iter().filter(|(p, _)| **p != id) {
            peers.insert(*peer, TlsPeer { address: address.clone(), name: name(*peer)? });
        }
        let network = TlsNetwork::bind(&addresses[&id], identity, peers).await?;
        let config = RaftConfig::new(id, addresses.clone());
        replicas.push(RaftUniquenessProvider::start(dir.join(format!("replica-{id}.redb")), config, Arc::new(network)).await?);
    }
    replicas[0].wait_for_leader(std::time::Duration::from_secs(10)).await?;
    Ok(replicas)
}

/// Average milliseconds of a durable redb commit inserting 64 random keys (200 commits).
fn bare_redb_commit_ms(path: &std::path::Path) -> Result<f64, Box<dyn std::error::Error>> {
    const TABLE: redb::TableDefinition<&[u8; 36], &[u8]> = redb::TableDefinition::new("t");
    let db = redb::Database::create(path)?;
    let started = Instant::now();
    for commit in 0..200u64 {
        let mut tx = db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        {
            let mut table = tx.open_table(TABLE)?;
            for i in 0..64u64 {
                let mut key = [0u8; 36];
                key[..32].copy_from_slice(SecureHash::sha256_parts(&[&commit.to_be_bytes(), &i.to_be_bytes()]).as_bytes());
                table.insert(&key, [7u8; 40].as_slice())?;
            }
        }
        tx.commit()?;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / 200.0)
}
