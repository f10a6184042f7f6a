//! One suite, written once, run against SQLite (a file in a temp dir) and PostgreSQL (a fresh
//! database per test, when `TREATY_TEST_POSTGRES_URL` is set); the `MessageStore` conformance
//! functions also run against `MemoryMessageStore`, so the in-memory fake provably behaves like
//! the real thing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use treaty_core::{KeyPair, Party, SecureHash, SignatureScheme, X500Name};
use treaty_net::map::{MapCache, MapSnapshot, NodeInfo, kinds};
use treaty_net::messaging::{InboundMessage, MemoryMessageStore, MessageId, MessageStore, OutboundMessage};
use treaty_net::signed::Signed;
use treaty_storage::{BackendKind, Database, IdentityRecord, Migration, Migrations, Recorded, StorageError};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "treaty-storage-test-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where a test's database lives; `open` may be called several times (reopening).
struct Fixture {
    url: String,
    dir: TempDir,
    /// PostgreSQL: the admin URL and the database to drop afterwards.
    pg: Option<(String, String)>,
}

impl Fixture {
    fn sqlite() -> Fixture {
        Fixture { url: "sqlite://data/node.db".into(), dir: TempDir::new(), pg: None }
    }

    /// A fresh PostgreSQL database, or None (after saying so) if no server is configured.
    async fn postgres() -> Option<Fixture> {
        let Ok(admin) = std::env::var("TREATY_TEST_POSTGRES_URL") else {
            if std::env::var("TREATY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!(
                    "TREATY_REQUIRE_POSTGRES=1 but TREATY_TEST_POSTGRES_URL is not set: start PostgreSQL with \
                     `eval \"$(scripts/pg.sh start)\"` (or run scripts/test.sh, which does)"
                );
            }
            eprintln!("skipped: TREATY_TEST_POSTGRES_URL not set (eval \"$(scripts/pg.sh start)\" to run the PostgreSQL tests)");
            return None;
        };
        let name = format!("treaty_test_{}", MessageId::random().0.simple());
        let pool = sqlx::PgPool::connect(&admin).await.unwrap_or_else(|e| panic!("cannot connect to {admin}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.expect("create test database");
        pool.close().await;
        let (base, _) = admin.rsplit_once('/').expect("URL has a database path");
        Some(Fixture { url: format!("{base}/{name}"), dir: TempDir::new(), pg: Some((admin, name)) })
    }

    async fn open(&self) -> Database {
        Database::open(&self.url, self.dir.path()).await.unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }

    async fn cleanup(self) {
        if let Some((admin, name)) = &self.pg {
            let pool = sqlx::PgPool::connect(admin).await.expect("connect admin");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                .execute(&pool)
                .await
                .expect("drop test database");
            pool.close().await;
        }
    }
}

/// Declares each test function once per backend: `sqlite::NAME` and `postgres::NAME`.
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fx = super::Fixture::sqlite();
                    super::$name(&fx).await;
                    fx.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(fx) = super::Fixture::postgres().await else { return };
                    super::$name(&fx).await;
                    fx.cleanup().await;
                }
            )*
        }
    };
}

/// Declares each `MessageStore` conformance function for SQLite, PostgreSQL and memory.
macro_rules! message_store_tests {
    ($($name:ident),* $(,)?) => {
        mod message_store_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fx = super::Fixture::sqlite();
                    let db = fx.open().await;
                    super::$name(&db.messages()).await;
                    db.close().await;
                    fx.cleanup().await;
                }
            )*
        }
        mod message_store_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(fx) = super::Fixture::postgres().await else { return };
                    let db = fx.open().await;
                    super::$name(&db.messages()).await;
                    db.close().await;
                    fx.cleanup().await;
                }
            )*
        }
        mod message_store_memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&treaty_net::messaging::MemoryMessageStore::default()).await;
                }
            )*
        }
    };
}

db_tests!(
    transactions_round_trip,
    transactions_batch_put,
    ledger_record_and_batch_reads,
    ancestors_walk_breadth_first,
    attachments_round_trip,
    identities_round_trip,
    confidential_identities_allocate_and_register,
    network_map_round_trip,
    data_survives_reopening,
    concurrent_writers_all_succeed,
    a_failing_writer_among_concurrent_ones_fails_alone,
    concurrent_opens_migrate_once,
    migrations_record_and_reapply,
    migration_checksum_change_refused,
    migration_downgrade_refused,
    failed_migration_rolls_back,
);

message_store_tests!(
    ms_round_trip,
    ms_outbox_order_per_destination,
    ms_outbox_limit,
    ms_destinations_sorted,
    ms_acknowledged_removes,
    ms_attempts_counted,
    ms_enqueue_existing_id_refused_all_or_none,
    ms_reenqueue_after_ack,
    ms_inbox_dedup_same_batch,
    ms_inbox_dedup_across_batches,
    ms_inbox_dedup_after_processed,
    ms_unprocessed_in_arrival_order,
    ms_processed_before_received_drops_delivery,
    ms_answer_and_processed_mark_are_written_together,
    ms_large_batches,
);

// ---------------------------------------------------------------------------------------------
// Helpers

fn name(org: &str) -> X500Name {
    format!("O={org},L=London,C=GB").parse().expect("name")
}

fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).expect("key")
}

fn out(to: &X500Name, session: u64, payload: &[u8]) -> OutboundMessage {
    OutboundMessage {
        id: MessageId::random(),
        destination: to.clone(),
        session,
        topic: "test.topic".into(),
        payload: payload.to_vec(),
        attempts: 0,
    }
}

fn inbound(from: &X500Name, session: u64, payload: &[u8]) -> InboundMessage {
    InboundMessage { id: MessageId::random(), sender: from.clone(), session, topic: "test.topic".into(), payload: payload.to_vec() }
}

fn ids<'a>(messages: impl IntoIterator<Item = &'a OutboundMessage>) -> Vec<MessageId> {
    messages.into_iter().map(|m| m.id).collect()
}

fn in_ids<'a>(messages: impl IntoIterator<Item = &'a InboundMessage>) -> Vec<MessageId> {
    messages.into_iter().map(|m| m.id).collect()
}

// ---------------------------------------------------------------------------------------------
// Ledger tables

async fn transactions_round_trip(fx: &Fixture) {
    let db = fx.open().await;
    let txs = db.transactions();
    let id = SecureHash::sha256(b"tx1");
    assert!(!txs.contains(&id).await.unwrap());
    assert_eq!(txs.get(&id).await.unwrap(), None);
    assert!(txs.put(&id, b"canonical bytes").await.unwrap(), "first put is new");
    assert!(!txs.put(&id, b"other bytes").await.unwrap(), "second put of the same id is a no-op");
    assert_eq!(txs.get(&id).await.unwrap().as_deref(), Some(b"canonical bytes".as_slice()), "bytes exactly as first received");
    assert!(txs.contains(&id).await.unwrap());
    assert!(txs.recorded_at(&id).await.unwrap().is_some_and(|t| t > 0));
    assert_eq!(txs.count().await.unwrap(), 1);
    assert_eq!(txs.ids().await.unwrap(), vec![id]);
    db.close().await;
}

async fn transactions_batch_put(fx: &Fixture) {
    let db = fx.open().await;
    let txs = db.transactions();
    let a = SecureHash::sha256(b"a");
    let b = SecureHash::sha256(b"b");
    let c = SecureHash::sha256(b"c");
    assert!(txs.put(&b, b"B").await.unwrap());
    let new = txs.put_all(&[(a, b"A".as_slice()), (b, b"B2"), (c, b"C"), (a, b"A2")]).await.unwrap();
    assert_eq!(new, vec![true, false, true, false]);
    assert_eq!(txs.count().await.unwrap(), 3);
    assert_eq!(txs.get(&a).await.unwrap().as_deref(), Some(b"A".as_slice()));
    assert_eq!(txs.get(&b).await.unwrap().as_deref(), Some(b"B".as_slice()));
    assert_eq!(txs.ids().await.unwrap(), vec![b, a, c], "recording order");
    assert_eq!(txs.put_all(&[]).await.unwrap(), Vec::<bool>::new());
    db.close().await;
}

async fn ledger_record_and_batch_reads(fx: &Fixture) {
    let db = fx.open().await;
    let txs = db.transactions();
    let (a, b, c, att) = (SecureHash::sha256(b"a"), SecureHash::sha256(b"b"), SecureHash::sha256(b"c"), SecureHash::sha256(b"att"));
    assert!(txs.put(&b, b"B").await.unwrap());
    let rec = |id, bytes, dependencies| Recorded { id, bytes, dependencies };
    txs.record(&[(att, b"ATT".as_slice())], &[rec(a, b"A".as_slice(), &[c]), rec(b, b"B2", &[])]).await.unwrap();
    txs.record(&[(att, b"ATT2".as_slice())], &[]).await.unwrap();
    assert_eq!(txs.get_many(&[c, a, b]).await.unwrap(), vec![None, Some(b"A".to_vec()), Some(b"B".to_vec())], "first bytes kept");
    assert_eq!(txs.contains_many(&[a, c, b]).await.unwrap(), vec![true, false, true]);
    assert_eq!(db.attachments().get(&att).await.unwrap().as_deref(), Some(b"ATT".as_slice()));
    assert_eq!(txs.ids().await.unwrap(), vec![b, a], "recording order");
    db.close().await;
}

async fn ancestors_walk_breadth_first(fx: &Fixture) {
    let db = fx.open().await;
    let txs = db.transactions();
    // A diamond on a chain: t0 <- t1 <- {t2, t3} <- t4, plus t5 depending on t4 and t0.
    let t: Vec<SecureHash> = (0..6u8).map(|i| SecureHash::sha256(&[i])).collect();
    let deps: Vec<Vec<SecureHash>> = vec![vec![], vec![t[0]], vec![t[1]], vec![t[1]], vec![t[2], t[3]], vec![t[4], t[0]]];
    let recs: Vec<Recorded> = (0..6).map(|i| Recorded { id: t[i], bytes: b"x", dependencies: &deps[i] }).collect();
    txs.record(&[], &recs).await.unwrap();
    let mut walk = txs.ancestors(&[t[5]], 100).await.unwrap();
    assert_eq!(walk.len(), 5, "each ancestor once: {walk:?}");
    assert_eq!(&walk[..2].iter().copied().collect::<std::collections::BTreeSet<_>>(), &[t[4], t[0]].into_iter().collect());
    walk.sort();
    let mut expected = t[..5].to_vec();
    expected.sort();
    assert_eq!(walk, expected);
    assert_eq!(txs.ancestors(&[t[5]], 2).await.unwrap().len(), 2, "limit");
    assert_eq!(txs.ancestors(&[t[0]], 10).await.unwrap(), vec![], "the issue has none");
    assert_eq!(txs.ancestors(&[t[2], t[3]], 10).await.unwrap(), vec![t[1], t[0]]);
    db.close().await;
}

async fn attachments_round_trip(fx: &Fixture) {
    let db = fx.open().await;
    let atts = db.attachments();
    let bytes = vec![7u8; 100_000];
    let id = SecureHash::sha256(&bytes);
    assert!(!atts.contains(&id).await.unwrap());
    assert!(atts.put(&id, &bytes).await.unwrap());
    assert!(!atts.put(&id, b"ignored").await.unwrap());
    assert_eq!(atts.get(&id).await.unwrap(), Some(bytes));
    assert!(atts.contains(&id).await.unwrap());
    assert_eq!(atts.get(&SecureHash::sha256(b"none")).await.unwrap(), None);
    db.close().await;
}

async fn identities_round_trip(fx: &Fixture) {
    let db = fx.open().await;
    let ids = db.identities();
    let alice = IdentityRecord {
        name: "CN=Alice Node, O=Alice Corp, L=London, C=GB".parse().unwrap(),
        owning_key: key(1).public(),
        certificate_chain: vec![vec![0x30, 1, 2], vec![0x30, 3, 4, 5]],
    };
    let bob = IdentityRecord { name: name("Bob Ltd"), owning_key: key(2).public(), certificate_chain: vec![] };
    ids.put(&alice).await.unwrap();
    ids.put(&bob).await.unwrap();
    assert_eq!(ids.by_name(&alice.name).await.unwrap(), Some(alice.clone()));
    assert_eq!(ids.by_key(&bob.owning_key).await.unwrap(), Some(bob.clone()));
    assert_eq!(ids.by_key(&key(3).public()).await.unwrap(), None);
    assert_eq!(ids.by_name(&name("Carol")).await.unwrap(), None);
    // Replacing by name (key rotation).
    let rotated = IdentityRecord { owning_key: key(4).public(), ..alice.clone() };
    ids.put(&rotated).await.unwrap();
    assert_eq!(ids.by_name(&alice.name).await.unwrap(), Some(rotated.clone()));
    assert_eq!(ids.by_key(&alice.owning_key).await.unwrap(), None);
    assert_eq!(ids.all().await.unwrap().len(), 2);
    db.close().await;
}

async fn confidential_identities_allocate_and_register(fx: &Fixture) {
    use treaty_core::confidential::{IdentityCertificate, confidential_key};
    let db = fx.open().await;
    let store = db.confidential_identities();
    let (alice, seed) = (std::sync::Arc::new(key(1)), [7u8; 32]);
    // Concurrent allocations get distinct indices, each stored with its certificate.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (store, alice) = (store.clone(), alice.clone());
        tasks.spawn(async move {
            let issue = |i: u32| Ok(IdentityCertificate::issue(confidential_key(&seed, i).unwrap().public(), name("Alice"), &alice));
            store.allocate(issue).await.unwrap().0
        });
    }
    let mut indices: Vec<u32> = tasks.join_all().await;
    indices.sort_unstable();
    assert_eq!(indices, (0..8).collect::<Vec<_>>());
    let own = store.own_keys().await.unwrap();
    assert_eq!(own.len(), 8);
    for (i, k) in &own {
        assert_eq!(k, &confidential_key(&seed, *i).unwrap().public(), "index {i} holds the key derived at {i}");
        assert_eq!(store.owner_of(k).await.unwrap(), Some(name("Alice")));
    }
    // A counterparty's key: registered once, first owner kept, not one of ours.
    let bob_cert = IdentityCertificate::issue(key(9).public(), name("Bob"), &key(2));
    store.register(&bob_cert).await.unwrap();
    store.register(&IdentityCertificate { owner: name("Mallory"), ..bob_cert.clone() }).await.unwrap();
    assert_eq!(store.certificate(&bob_cert.key).await.unwrap(), Some(bob_cert.clone()));
    assert_eq!(store.own_keys().await.unwrap().len(), 8);
    assert_eq!(store.owner_of(&key(10).public()).await.unwrap(), None);
    db.close().await;
}

fn snapshot(nodes: &[(&str, u8)], etag: Option<&str>, fetched: u64) -> MapSnapshot {
    let map_key = key(100);
    let node_infos = nodes
        .iter()
        .map(|(org, seed)| {
            let k = key(*seed);
            let info = NodeInfo {
                addresses: vec![format!("{org}.example:10002")],
                platform_version: 1,
                legal_identity: Party { name: name(org), owning_key: k.public() },
                identity_chain: vec![vec![0x30, *seed]],
                serial: 1,
            };
            Signed::sign(kinds::NODE_INFO, &info, &k)
        })
        .collect();
    MapSnapshot {
        parameters: Signed::sign(kinds::NETWORK_PARAMETERS, &"parameters stand-in".to_string(), &map_key),
        revocations: Signed::sign(kinds::REVOCATION_LIST, &vec![1u64, 2, 3], &map_key),
        node_infos,
        etag: etag.map(str::to_string),
        fetched_at_secs: fetched,
    }
}

async fn network_map_round_trip(fx: &Fixture) {
    let db = fx.open().await;
    let cache = db.network_map();
    assert_eq!(cache.load().await.unwrap(), None);
    let first = snapshot(&[("Alice", 1), ("Bob", 2), ("Carol", 3)], Some("\"etag-1\""), 1_700_000_000);
    cache.save(&first).await.unwrap();
    assert_eq!(cache.load().await.unwrap(), Some(first.clone()));
    let nodes = cache.nodes().await.unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[1].name.as_deref(), Some("O=Bob, L=London, C=GB"));
    assert_eq!(nodes[1].hash, NodeInfo::hash(&first.node_infos[1]));
    // Replaced wholesale, fewer nodes, no etag.
    let second = snapshot(&[("Dave", 4)], None, 1_700_000_100);
    cache.save(&second).await.unwrap();
    assert_eq!(cache.load().await.unwrap(), Some(second));
    assert_eq!(cache.nodes().await.unwrap().len(), 1);
    let empty = snapshot(&[], None, 0);
    cache.save(&empty).await.unwrap();
    assert_eq!(cache.load().await.unwrap(), Some(empty));
    db.close().await;
}

// ---------------------------------------------------------------------------------------------
// Durability and concurrency

async fn data_survives_reopening(fx: &Fixture) {
    let bob = name("Bob");
    let id = SecureHash::sha256(b"durable");
    let (kept, received) = {
        let db = fx.open().await;
        db.transactions().put(&id, b"tx").await.unwrap();
        let kept = vec![out(&bob, 1, b"one"), out(&bob, 1, b"two")];
        db.messages().enqueue(kept.clone()).await.unwrap();
        db.messages().attempted(&[kept[0].id]).await.unwrap();
        let received = db.messages().receive(vec![inbound(&bob, 9, b"in")]).await.unwrap();
        db.network_map().save(&snapshot(&[("Alice", 1)], Some("e"), 5)).await.unwrap();
        db.close().await;
        (kept, received)
    };
    if fx.pg.is_none() {
        assert!(fx.dir.path().join("data/node.db").is_file(), "SQLite file created relative to base_dir, parents included");
    }
    let db = fx.open().await;
    assert_eq!(db.transactions().get(&id).await.unwrap().as_deref(), Some(b"tx".as_slice()));
    let outbox = db.messages().outbox(&bob, 10).await.unwrap();
    assert_eq!(ids(&outbox), ids(&kept));
    assert_eq!(outbox[0].attempts, 1);
    assert_eq!(db.messages().unprocessed(10).await.unwrap(), received);
    assert_eq!(db.messages().receive(received.clone()).await.unwrap(), vec![], "dedup survives reopening");
    assert_eq!(db.network_map().load().await.unwrap(), Some(snapshot(&[("Alice", 1)], Some("e"), 5)));
    db.close().await;
}

async fn concurrent_writers_all_succeed(fx: &Fixture) {
    let db = fx.open().await;
    let dest = name("Bob");
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let db = db.clone();
        let dest = dest.clone();
        tasks.push(tokio::spawn(async move {
            let store = db.messages();
            for i in 0..25u64 {
                let batch: Vec<OutboundMessage> = (0..4).map(|j| out(&dest, t, &[t as u8, i as u8, j])).collect();
                store.enqueue(batch).await.expect("concurrent enqueue");
                db.transactions().put(&SecureHash::sha256(&[t as u8, i as u8]), b"tx").await.expect("concurrent put");
                store.receive(vec![inbound(&dest, t, b"x")]).await.expect("concurrent receive");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let outbox = db.messages().outbox(&dest, 10_000).await.unwrap();
    assert_eq!(outbox.len(), 8 * 25 * 4);
    // Within each task (session), enqueue order is kept.
    for t in 0..8u64 {
        let mine: Vec<&OutboundMessage> = outbox.iter().filter(|m| m.session == t).collect();
        let expected: Vec<Vec<u8>> = (0..25u8).flat_map(|i| (0..4u8).map(move |j| vec![t as u8, i, j])).collect();
        assert_eq!(mine.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(), expected);
    }
    assert_eq!(db.transactions().count().await.unwrap(), 200);
    assert_eq!(db.messages().unprocessed(10_000).await.unwrap().len(), 200);
    db.close().await;
}

/// Writers that share a (group) commit: the one whose statements fail is undone and told;
/// the others' writes all land.
async fn a_failing_writer_among_concurrent_ones_fails_alone(fx: &Fixture) {
    let db = fx.open().await;
    let dest = name("Bob");
    let taken = out(&dest, 1, b"first");
    db.messages().enqueue(vec![taken.clone()]).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let db = db.clone();
        let dest = dest.clone();
        let taken = taken.clone();
        tasks.push(tokio::spawn(async move {
            // Writer 7 repeats an id already in the outbox, after a good message of its own.
            let batch = if t == 7 { vec![out(&dest, 7, b"mine"), taken] } else { vec![out(&dest, t, b"ok")] };
            db.messages().enqueue(batch).await
        }));
    }
    let mut failures = 0;
    for (t, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(()) => assert_ne!(t, 7, "the duplicate was accepted"),
            Err(e) => {
                assert_eq!(t, 7, "writer {t} failed: {e}");
                failures += 1;
            }
        }
    }
    assert_eq!(failures, 1);
    let outbox = db.messages().outbox(&dest, 100).await.unwrap();
    assert_eq!(outbox.len(), 16, "15 good writes and the first message");
    assert!(!outbox.iter().any(|m| m.payload == b"mine"), "part of the failed write landed");
    db.close().await;
}

async fn concurrent_opens_migrate_once(fx: &Fixture) {
    // Several "processes" (independent pools) open a fresh database at once.
    let mut dbs = Vec::new();
    for _ in 0..4 {
        let (url, dir) = (fx.url.clone(), fx.dir.path().to_path_buf());
        dbs.push(tokio::spawn(async move { Database::open(&url, &dir).await }));
    }
    let mut opened = Vec::new();
    for db in dbs {
        opened.push(db.await.expect("task").expect("concurrent open"));
    }
    let applied = opened[0].applied_migrations("messaging").await.unwrap();
    assert_eq!(applied.keys().copied().collect::<Vec<_>>(), vec![1]);
    for db in opened {
        db.close().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Migrations

const TEST_V1_SQLITE: Migration =
    Migration { version: 1, description: "widgets", sql: "CREATE TABLE test_widgets (id INTEGER PRIMARY KEY)" };
const TEST_V1_PG: Migration = Migration { version: 1, description: "widgets", sql: "CREATE TABLE test_widgets (id BIGINT PRIMARY KEY)" };
const TEST_V2: Migration = Migration {
    version: 2,
    description: "widget names",
    sql: "ALTER TABLE test_widgets ADD COLUMN name TEXT; CREATE INDEX test_widgets_name ON test_widgets (name)",
};

const TEST_V1: Migrations = Migrations { component: "test_component", sqlite: &[TEST_V1_SQLITE], postgres: &[TEST_V1_PG] };
const TEST_V2_LIST: Migrations =
    Migrations { component: "test_component", sqlite: &[TEST_V1_SQLITE, TEST_V2], postgres: &[TEST_V1_PG, TEST_V2] };

async fn migrations_record_and_reapply(fx: &Fixture) {
    let db = fx.open().await;
    for (component, versions) in [("ledger", 3), ("messaging", 1), ("network_map", 1)] {
        assert_eq!(db.applied_migrations(component).await.unwrap().len(), versions, "{component} applied on open");
    }
    db.migrate(&TEST_V1).await.unwrap();
    db.migrate(&TEST_V1).await.unwrap();
    db.migrate(&TEST_V2_LIST).await.unwrap();
    db.migrate(&TEST_V2_LIST).await.unwrap();
    let applied = db.applied_migrations("test_component").await.unwrap();
    assert_eq!(applied.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    let expected = match db.kind() {
        BackendKind::Sqlite => treaty_storage::migrate::checksum(TEST_V1_SQLITE.sql),
        BackendKind::Postgres => treaty_storage::migrate::checksum(TEST_V1_PG.sql),
    };
    assert_eq!(applied[&1], expected);
    let bad = Migrations { component: "test_bad", sqlite: &[TEST_V2, TEST_V1_SQLITE], postgres: &[TEST_V2, TEST_V1_PG] };
    let err = db.migrate(&bad).await.unwrap_err();
    assert!(matches!(err, StorageError::InvalidMigrations { .. }), "{err}");
    db.close().await;
}

async fn migration_checksum_change_refused(fx: &Fixture) {
    let db = fx.open().await;
    db.migrate(&TEST_V1).await.unwrap();
    const EDITED: Migration = Migration { sql: "CREATE TABLE test_widgets (id INTEGER PRIMARY KEY, extra TEXT)", ..TEST_V1_SQLITE };
    const EDITED_PG: Migration = Migration { sql: "CREATE TABLE test_widgets (id BIGINT PRIMARY KEY, extra TEXT)", ..TEST_V1_PG };
    const CHANGED: Migrations = Migrations { component: "test_component", sqlite: &[EDITED], postgres: &[EDITED_PG] };
    let changed = CHANGED;
    let err = db.migrate(&changed).await.unwrap_err();
    assert!(matches!(err, StorageError::MigrationChecksum { version: 1, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("test_component v1") && msg.contains("checksum"), "{msg}");
    db.close().await;
}

async fn migration_downgrade_refused(fx: &Fixture) {
    let db = fx.open().await;
    db.migrate(&TEST_V2_LIST).await.unwrap();
    let err = db.migrate(&TEST_V1).await.unwrap_err();
    assert!(matches!(err, StorageError::MigrationDowngrade { applied: 2, known: 1, .. }), "{err}");
    assert!(err.to_string().contains("newer"), "{err}");
    db.close().await;
    // Opening with a binary that knows fewer of *our* migrations is refused the same way.
    let db = fx.open().await;
    match db.kind() {
        BackendKind::Sqlite => {
            let treaty_storage::Pool::Sqlite(pool) = db.pool() else { unreachable!() };
            sqlx::query(
                "INSERT INTO treaty_schema_migrations (component, version, description, checksum) VALUES ('ledger', 99, 'future', 'x')",
            )
            .execute(pool)
            .await
            .unwrap();
        }
        BackendKind::Postgres => {
            let treaty_storage::Pool::Postgres(pool) = db.pool() else { unreachable!() };
            sqlx::query(
                "INSERT INTO treaty_schema_migrations (component, version, description, checksum) VALUES ('ledger', 99, 'future', 'x')",
            )
            .execute(pool)
            .await
            .unwrap();
        }
    }
    db.close().await;
    let err = Database::open(&fx.url, fx.dir.path()).await.unwrap_err();
    assert!(matches!(&err, StorageError::MigrationDowngrade { component, applied: 99, .. } if component == "ledger"), "{err}");
}

async fn failed_migration_rolls_back(fx: &Fixture) {
    let db = fx.open().await;
    const BROKEN: Migration = Migration { version: 1, description: "broken", sql: "CREATE TABLE test_half (id INTEGER); THIS IS NOT SQL" };
    const LIST: Migrations = Migrations { component: "test_broken", sqlite: &[BROKEN], postgres: &[BROKEN] };
    const FIXED: Migration = Migration { version: 1, description: "fixed", sql: "CREATE TABLE test_half (id INTEGER)" };
    const FIXED_LIST: Migrations = Migrations { component: "test_broken", sqlite: &[FIXED], postgres: &[FIXED] };
    let list = LIST;
    let err = db.migrate(&list).await.unwrap_err();
    assert!(matches!(err, StorageError::MigrationFailed { version: 1, .. }), "{err}");
    assert!(err.to_string().contains("test_broken v1 (broken)"), "{err}");
    assert!(db.applied_migrations("test_broken").await.unwrap().is_empty());
    // The table of the first statement was rolled back with it: a fixed migration applies.
    db.migrate(&FIXED_LIST).await.unwrap();
    db.close().await;
}

// ---------------------------------------------------------------------------------------------
// URLs (backend-independent)

#[tokio::test]
async fn bad_urls_name_the_problem() {
    let dir = TempDir::new();
    let err = Database::open("mysql://localhost/db", dir.path()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("mysql://localhost/db") && msg.contains("unsupported scheme \"mysql\""), "{msg}");

    let err = Database::open("sqlite://", dir.path()).await.unwrap_err();
    assert!(err.to_string().contains("no file path"), "{err}");

    let err = Database::open("sqlite://node.db?mode=ro", dir.path()).await.unwrap_err();
    assert!(err.to_string().contains("query parameters"), "{err}");

    // The directory cannot be created: a file is in the way.
    std::fs::write(dir.path().join("blocker"), b"file").unwrap();
    let err = Database::open("sqlite://blocker/sub/node.db", dir.path()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StorageError::CreateDir { .. }) && msg.contains("cannot create directory") && msg.contains("blocker"), "{msg}");

    let err = Database::open("postgres://user:hunter2@127.0.0.1:1/db", dir.path()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("postgres://user:***@127.0.0.1:1/db") && !msg.contains("hunter2"), "{msg}");
}

#[tokio::test]
async fn in_memory_sqlite_works() {
    let db = Database::open("sqlite::memory:", Path::new(".")).await.unwrap();
    assert_eq!(db.kind(), BackendKind::Sqlite);
    assert!(db.transactions().put(&SecureHash::sha256(b"m"), b"x").await.unwrap());
    assert_eq!(db.transactions().count().await.unwrap(), 1);
}

#[tokio::test]
async fn absolute_sqlite_path() {
    let dir = TempDir::new();
    let file = dir.path().join("abs/deeper/node.db");
    let db = Database::open(&format!("sqlite://{}", file.display()), Path::new("/nonexistent-base")).await.unwrap();
    db.close().await;
    assert!(file.is_file());
}

// ---------------------------------------------------------------------------------------------
// MessageStore conformance (SQLite, PostgreSQL and MemoryMessageStore)

async fn ms_round_trip<S: MessageStore>(s: &S) {
    let bob = name("Bob");
    let msg = OutboundMessage { session: u64::MAX, ..out(&bob, 0, b"\x00\xffpayload") };
    s.enqueue(vec![msg.clone()]).await.unwrap();
    assert_eq!(s.outbox(&bob, 10).await.unwrap(), vec![msg]);
    assert_eq!(s.outbox(&name("Nobody"), 10).await.unwrap(), vec![]);
    let inb = InboundMessage { session: 1 << 63, ..inbound(&bob, 0, b"") };
    assert_eq!(s.receive(vec![inb.clone()]).await.unwrap(), vec![inb.clone()]);
    assert_eq!(s.unprocessed(10).await.unwrap(), vec![inb]);
    s.enqueue(vec![]).await.unwrap();
    assert_eq!(s.receive(vec![]).await.unwrap(), vec![]);
    s.attempted(&[]).await.unwrap();
    s.acknowledged(&[]).await.unwrap();
    s.processed(&[]).await.unwrap();
}

async fn ms_outbox_order_per_destination<S: MessageStore>(s: &S) {
    let (bob, carol) = (name("Bob"), name("Carol"));
    let mut all = Vec::new();
    for i in 0..10u8 {
        all.push(out(if i % 3 == 0 { &carol } else { &bob }, u64::from(i % 2), &[i]));
    }
    s.enqueue(all[..4].to_vec()).await.unwrap();
    s.enqueue(all[4..].to_vec()).await.unwrap();
    let for_bob: Vec<OutboundMessage> = all.iter().filter(|m| m.destination == bob).cloned().collect();
    let for_carol: Vec<OutboundMessage> = all.iter().filter(|m| m.destination == carol).cloned().collect();
    assert_eq!(s.outbox(&bob, 100).await.unwrap(), for_bob);
    assert_eq!(s.outbox(&carol, 100).await.unwrap(), for_carol);
}

async fn ms_outbox_limit<S: MessageStore>(s: &S) {
    let bob = name("Bob");
    let msgs: Vec<OutboundMessage> = (0..5u8).map(|i| out(&bob, 1, &[i])).collect();
    s.enqueue(msgs.clone()).await.unwrap();
    assert_eq!(s.outbox(&bob, 2).await.unwrap(), msgs[..2].to_vec());
    assert_eq!(s.outbox(&bob, 0).await.unwrap(), vec![]);
    assert_eq!(s.outbox(&bob, usize::MAX).await.unwrap(), msgs);
}

async fn ms_destinations_sorted<S: MessageStore>(s: &S) {
    assert_eq!(s.outbox_destinations().await.unwrap(), vec![]);
    let names = [name("Zed"), name("Alice"), name("Mallory")];
    s.enqueue(names.iter().flat_map(|n| [out(n, 1, b"a"), out(n, 2, b"b")]).collect()).await.unwrap();
    let mut expected = names.to_vec();
    expected.sort();
    assert_eq!(s.outbox_destinations().await.unwrap(), expected);
    let zed = s.outbox(&name("Zed"), 10).await.unwrap();
    s.acknowledged(&ids(&zed)).await.unwrap();
    expected.retain(|n| n != &name("Zed"));
    assert_eq!(s.outbox_destinations().await.unwrap(), expected);
}

async fn ms_acknowledged_removes<S: MessageStore>(s: &S) {
    let bob = name("Bob");
    let msgs: Vec<OutboundMessage> = (0..6u8).map(|i| out(&bob, 1, &[i])).collect();
    s.enqueue(msgs.clone()).await.unwrap();
    s.acknowledged(&[msgs[1].id, msgs[4].id, MessageId::random()]).await.unwrap();
    assert_eq!(ids(&s.outbox(&bob, 100).await.unwrap()), ids([&msgs[0], &msgs[2], &msgs[3], &msgs[5]]));
    s.acknowledged(&ids(&msgs)).await.unwrap();
    assert_eq!(s.outbox(&bob, 100).await.unwrap(), vec![]);
    s.acknowledged(&ids(&msgs)).await.unwrap();
}

async fn ms_attempts_counted<S: MessageStore>(s: &S) {
    let bob = name("Bob");
    let msgs: Vec<OutboundMessage> = (0..3u8).map(|i| out(&bob, 1, &[i])).collect();
    s.enqueue(msgs.clone()).await.unwrap();
    s.attempted(&[msgs[0].id, msgs[1].id]).await.unwrap();
    s.attempted(&[msgs[0].id, MessageId::random()]).await.unwrap();
    // An id listed twice counts twice.
    s.attempted(&[msgs[2].id, msgs[2].id, msgs[0].id]).await.unwrap();
    let attempts: Vec<u32> = s.outbox(&bob, 10).await.unwrap().iter().map(|m| m.attempts).collect();
    assert_eq!(attempts, vec![3, 1, 2]);
}

async fn ms_enqueue_existing_id_refused_all_or_none<S: MessageStore>(s: &S) {
    let bob = name("Bob");
    let first = out(&bob, 1, b"first");
    s.enqueue(vec![first.clone()]).await.unwrap();
    let fresh = out(&bob, 1, b"fresh");
    let again = OutboundMessage { payload: b"again".to_vec(), ..first.clone() };
    let err = s.enqueue(vec![fresh.clone(), again]).await.unwrap_err();
    assert!(!err.transient, "{err}");
    assert!(err.message.contains(&first.id.to_string()) && err.message.contains("already in the outbox"), "{err}");
    assert_eq!(s.outbox(&bob, 10).await.unwrap(), vec![first], "all or none: the fresh message was not added");
}

async fn ms_reenqueue_after_ack<S: MessageStore>(s: &S) {
    let bob = name("Bob");
    let m = out(&bob, 1, b"m");
    s.enqueue(vec![m.clone()]).await.unwrap();
    s.acknowledged(&[m.id]).await.unwrap();
    s.enqueue(vec![m.clone()]).await.unwrap();
    assert_eq!(s.outbox(&bob, 10).await.unwrap(), vec![m]);
}

async fn ms_inbox_dedup_same_batch<S: MessageStore>(s: &S) {
    let bob = name("Bob");
    let a = inbound(&bob, 1, b"a");
    let b = inbound(&bob, 1, b"b");
    let a_again = InboundMessage { payload: b"a, redelivered".to_vec(), ..a.clone() };
    let new = s.receive(vec![a.clone(), b.clone(), a_again]).await.unwrap();
    assert_eq!(new, vec![a.clone(), b.clone()], "first occurrence wins");
    assert_eq!(s.unprocessed(10).await.unwrap(), vec![a, b]);
}

async fn ms_inbox_dedup_across_batches<S: MessageStore>(s: &S) {
    let bob = name("Bob");
    let a = inbound(&bob, 1, b"a");
    let b = inbound(&bob, 1, b"b");
    let c = inbound(&bob, 1, b"c");
    assert_eq!(s.receive(vec![a.clone(), b.clone()]).await.unwrap(), vec![a.clone(), b.clone()]);
    assert_eq!(s.receive(vec![b.clone(), c.clone(), a.clone()]).await.unwrap(), vec![c.clone()]);
    assert_eq!(s.unprocessed(10).await.unwrap(), vec![a, b, c]);
}

async fn ms_inbox_dedup_after_processed<S: MessageStore>(s: &S) {
    let bob = name("Bob");
    let a = inbound(&bob, 1, b"a");
    let b = inbound(&bob, 1, b"b");
    s.receive(vec![a.clone(), b.clone()]).await.unwrap();
    s.processed(&[a.id]).await.unwrap();
    assert_eq!(s.unprocessed(10).await.unwrap(), vec![b.clone()]);
    assert_eq!(s.receive(vec![a.clone()]).await.unwrap(), vec![], "a processed message's redelivery is dropped");
    s.processed(&[a.id, b.id, b.id]).await.unwrap();
    assert_eq!(s.unprocessed(10).await.unwrap(), vec![]);
    assert_eq!(s.receive(vec![a, b]).await.unwrap(), vec![]);
}

async fn ms_unprocessed_in_arrival_order<S: MessageStore>(s: &S) {
    let (bob, carol) = (name("Bob"), name("Carol"));
    let msgs: Vec<InboundMessage> = (0..9u8).map(|i| inbound(if i % 2 == 0 { &bob } else { &carol }, u64::from(i), &[i])).collect();
    s.receive(msgs[..3].to_vec()).await.unwrap();
    s.receive(msgs[3..].to_vec()).await.unwrap();
    assert_eq!(s.unprocessed(100).await.unwrap(), msgs);
    assert_eq!(s.unprocessed(4).await.unwrap(), msgs[..4].to_vec());
    s.processed(&in_ids([&msgs[0], &msgs[5]])).await.unwrap();
    let rest: Vec<InboundMessage> = msgs.iter().enumerate().filter(|(i, _)| *i != 0 && *i != 5).map(|(_, m)| m.clone()).collect();
    assert_eq!(s.unprocessed(100).await.unwrap(), rest);
}

async fn ms_answer_and_processed_mark_are_written_together<S: MessageStore>(s: &S) {
    let bob = name("Bob");
    let (question, other) = (inbound(&bob, 1, b"question"), inbound(&bob, 2, b"other"));
    s.receive(vec![question.clone(), other.clone()]).await.unwrap();
    let answer = out(&bob, 1, b"answer");
    s.enqueue_processed(vec![answer.clone()], &[question.id]).await.unwrap();
    assert_eq!(s.outbox(&bob, 10).await.unwrap(), vec![answer.clone()]);
    assert_eq!(s.unprocessed(10).await.unwrap(), vec![other.clone()], "the answered message is processed");
    assert_eq!(s.receive(vec![question]).await.unwrap(), vec![], "and its redelivery dropped");
    // An answer that cannot be written leaves the message it answers unprocessed.
    let again = OutboundMessage { payload: b"answer again".to_vec(), ..answer.clone() };
    let err = s.enqueue_processed(vec![again], &[other.id]).await.unwrap_err();
    assert!(err.message.contains(&answer.id.to_string()) && err.message.contains("already in the outbox"), "{err}");
    assert_eq!(s.unprocessed(10).await.unwrap(), vec![other], "nothing marked processed");
    assert_eq!(s.outbox(&bob, 10).await.unwrap(), vec![answer]);
}

async fn ms_processed_before_received_drops_delivery<S: MessageStore>(s: &S) {
    let bob = name("Bob");
    let early = inbound(&bob, 1, b"early");
    s.processed(&[early.id]).await.unwrap();
    assert_eq!(s.unprocessed(10).await.unwrap(), vec![]);
    assert_eq!(s.receive(vec![early]).await.unwrap(), vec![]);
}

async fn ms_large_batches<S: MessageStore>(s: &S) {
    let bob = name("Bob");
    let msgs: Vec<OutboundMessage> = (0..1_003u32).map(|i| out(&bob, u64::from(i), &i.to_le_bytes())).collect();
    s.enqueue(msgs.clone()).await.unwrap();
    s.attempted(&ids(&msgs)).await.unwrap();
    let outbox = s.outbox(&bob, 5_000).await.unwrap();
    assert_eq!(ids(&outbox), ids(&msgs));
    assert!(outbox.iter().all(|m| m.attempts == 1));
    s.acknowledged(&ids(&msgs[..1_000])).await.unwrap();
    assert_eq!(ids(&s.outbox(&bob, 5_000).await.unwrap()), ids(&msgs[1_000..]));

    let inb: Vec<InboundMessage> = (0..1_003u32).map(|i| inbound(&bob, 7, &i.to_le_bytes())).collect();
    let mut batch = inb[..500].to_vec();
    batch.extend(inb[..10].iter().cloned());
    assert_eq!(s.receive(batch).await.unwrap(), inb[..500].to_vec());
    assert_eq!(s.receive(inb.clone()).await.unwrap(), inb[500..].to_vec());
    assert_eq!(s.unprocessed(5_000).await.unwrap(), inb);
    s.processed(&in_ids(&inb)).await.unwrap();
    assert_eq!(s.unprocessed(5_000).await.unwrap(), vec![]);
}

// Keeps the unused-import lint quiet for the memory-only path.
#[allow(dead_code)]
fn _memory_store_is_a_message_store(s: MemoryMessageStore) -> impl MessageStore {
    s
}

/// Two independent handles on one SQLite file (as two processes would have: separate pools,
/// separate writer mutexes) writing at once: SQLite's own lock, taken by BEGIN IMMEDIATE and
/// waited for up to the busy timeout, keeps both succeeding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_handles_writing_at_once() {
    let fx = Fixture::sqlite();
    let (a, b) = (fx.open().await, fx.open().await);
    let dest = name("Bob");
    let mut tasks = Vec::new();
    for (t, db) in [a.clone(), b.clone(), a.clone(), b.clone()].into_iter().enumerate() {
        let dest = dest.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..30u8 {
                db.messages().enqueue(vec![out(&dest, t as u64, &[i]), out(&dest, t as u64, &[i, i])]).await.expect("enqueue");
                db.messages().receive(vec![inbound(&dest, t as u64, &[i])]).await.expect("receive");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(a.messages().outbox(&dest, 1_000).await.unwrap().len(), 4 * 30 * 2);
    assert_eq!(b.messages().unprocessed(1_000).await.unwrap().len(), 4 * 30);
    a.close().await;
    b.close().await;
}

/// A writer of the group commit cancelled halfway (its task aborted, as stopping a node does)
/// must not leave the shared transaction open: SQLite's write lock would stay taken until the
/// next writer of that process came — never, if the process stopped writing — and another
/// process (or a node restarted in this one) would wait out the busy timeout and fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_group_writer_does_not_keep_the_database_locked() {
    let fx = Fixture::sqlite();
    let db = fx.open().await;
    let (pool, writer, group) = db.sqlite_group().expect("SQLite");
    let mut write = group.begin(pool, writer).await.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS cancelled_test (x INTEGER)").execute(write.conn().unwrap()).await.unwrap();
    drop(write); // cancelled: never finished
    let other = Database::open(&fx.url, fx.dir.path()).await.unwrap();
    let began = std::time::Instant::now();
    let tx = other.begin_write().await.expect("the other handle can write");
    // Well under the 10 s busy timeout a lock never given back would take to fail.
    assert!(began.elapsed() < std::time::Duration::from_secs(8), "waited {:?} for the lock", began.elapsed());
    drop(tx);
    other.close().await;
    db.close().await;
}
