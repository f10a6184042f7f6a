//! One suite for every uniqueness provider, written once as functions over a [`Fixture`] and
//! declared per provider by `suite!`: `memory::NAME`, `redb::NAME`, `postgres::NAME`
//! (a fresh database per test when `TREATY_TEST_POSTGRES_URL` is set; skipped with a message
//! otherwise, unless `TREATY_REQUIRE_POSTGRES=1`), `raft::NAME` (a cluster of three replicas
//! in this process over in-memory pipes, every request sent to a follower so it is forwarded).
//! Provider-specific tests follow the suite.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use treaty_core::{SecureHash, StateRef, TimeWindow, Timestamp, X500Name, encoding};
use treaty_notary::*;
use treaty_storage::Database;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}_{nanos}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("treaty-notary-test-{}", unique_suffix()));
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

/// Where a test's provider keeps its log; `open` may be called again after `close`.
trait Fixture: Sync {
    type P: UniquenessProvider + 'static;
    async fn open(&self, config: UniquenessConfig) -> Self::P;
    async fn close(&self, provider: Self::P);
    /// Whether a reopened provider sees what the previous one committed.
    fn durable(&self) -> bool;
    /// Whether every request goes through one queue, applied in the order queued.
    fn one_queue(&self) -> bool {
        true
    }
}

struct MemoryFixture;

impl Fixture for MemoryFixture {
    type P = MemoryUniquenessProvider;
    async fn open(&self, config: UniquenessConfig) -> MemoryUniquenessProvider {
        MemoryUniquenessProvider::new(config.rules)
    }
    async fn close(&self, _provider: MemoryUniquenessProvider) {}
    fn durable(&self) -> bool {
        false
    }
}

struct RedbFixture {
    dir: TempDir,
}

impl RedbFixture {
    fn new() -> RedbFixture {
        RedbFixture { dir: TempDir::new() }
    }
    fn file(&self) -> PathBuf {
        self.dir.path().join("notary").join("uniqueness.redb")
    }
}

impl Fixture for RedbFixture {
    type P = RedbUniquenessProvider;
    async fn open(&self, config: UniquenessConfig) -> RedbUniquenessProvider {
        RedbUniquenessProvider::open(self.file(), config).await.unwrap_or_else(|e| panic!("open: {e}"))
    }
    async fn close(&self, provider: RedbUniquenessProvider) {
        provider.close().await;
    }
    fn durable(&self) -> bool {
        true
    }
}

/// A fresh PostgreSQL database for one test.
struct PgFixture {
    admin: String,
    name: String,
    url: String,
    dir: TempDir,
}

/// The PostgreSQL provider with the database handle it runs on.
struct PgProvider {
    provider: PostgresUniquenessProvider,
    db: Database,
}

impl UniquenessProvider for PgProvider {
    fn commit(&self, request: CommitRequest, now: Timestamp) -> CommitFuture<'_> {
        self.provider.commit(request, now)
    }
}

impl PgFixture {
    /// A fresh database, or None (after saying so) if no server is configured.
    async fn new() -> Option<PgFixture> {
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
        let name = format!("treaty_notary_test_{}", unique_suffix());
        let pool = sqlx::PgPool::connect(&admin).await.unwrap_or_else(|e| panic!("cannot connect to {admin}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.expect("create test database");
        pool.close().await;
        let (base, _) = admin.rsplit_once('/').expect("URL has a database path");
        let url = format!("{base}/{name}");
        Some(PgFixture { admin, name, url, dir: TempDir::new() })
    }

    async fn database(&self) -> Database {
        Database::open(&self.url, self.dir.path()).await.unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }

    async fn cleanup(self) {
        let pool = sqlx::PgPool::connect(&self.admin).await.expect("connect admin");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&pool)
            .await
            .expect("drop test database");
        pool.close().await;
    }
}

impl Fixture for PgFixture {
    type P = PgProvider;
    async fn open(&self, config: UniquenessConfig) -> PgProvider {
        let db = self.database().await;
        let provider = PostgresUniquenessProvider::open(&db, config).await.unwrap_or_else(|e| panic!("open: {e}"));
        PgProvider { provider, db }
    }
    async fn close(&self, provider: PgProvider) {
        provider.provider.close().await;
        provider.db.close().await;
    }
    fn durable(&self) -> bool {
        true
    }
}

/// A Raft cluster of three replicas over an in-memory network; reopening restarts all three
/// from their files.
struct RaftFixture {
    dir: TempDir,
}

/// The cluster, entered through one follower.
struct RaftCluster {
    replicas: Vec<RaftUniquenessProvider>,
    entry: usize,
}

impl UniquenessProvider for RaftCluster {
    fn commit(&self, request: CommitRequest, now: Timestamp) -> CommitFuture<'_> {
        self.replicas[self.entry].commit(request, now)
    }
}

impl RaftFixture {
    fn new() -> RaftFixture {
        RaftFixture { dir: TempDir::new() }
    }
}

impl Fixture for RaftFixture {
    type P = RaftCluster;
    async fn open(&self, config: UniquenessConfig) -> RaftCluster {
        let network = treaty_notary::raft::MemoryNetwork::new();
        let members: BTreeMap<ReplicaId, String> = (1..=3).map(|id| (id, format!("memory-{id}"))).collect();
        let mut replicas = Vec::new();
        for id in 1..=3 {
            let mut c = RaftConfig::new(id, members.clone());
            c.uniqueness = config;
            c.election_timeout = (std::time::Duration::from_millis(150), std::time::Duration::from_millis(300));
            let file = self.dir.path().join(format!("replica-{id}.redb"));
            let replica =
                RaftUniquenessProvider::start(&file, c, Arc::new(network.endpoint(id))).await.unwrap_or_else(|e| panic!("start: {e}"));
            replicas.push(replica);
        }
        let leader = replicas[0].wait_for_leader(std::time::Duration::from_secs(10)).await.expect("a leader is elected");
        let entry = replicas.iter().position(|r| r.id() != leader).expect("a follower");
        RaftCluster { replicas, entry }
    }
    async fn close(&self, cluster: RaftCluster) {
        for replica in cluster.replicas {
            replica.close().await;
        }
    }
    fn durable(&self) -> bool {
        true
    }
    fn one_queue(&self) -> bool {
        false
    }
}

/// Declares each suite function once per provider.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::MemoryFixture).await;
                }
            )*
        }
        mod redb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::RedbFixture::new()).await;
                }
            )*
        }
        mod raft {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::RaftFixture::new()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(fx) = super::PgFixture::new().await else { return };
                    super::$name(&fx).await;
                    fx.cleanup().await;
                }
            )*
        }
    };
}

suite!(
    conflicting_request_consumes_nothing,
    inputs_commit_all_or_none,
    conflict_names_every_state_its_consumer_and_kind,
    recommitting_succeeds_again,
    references_are_checked_but_not_consumed,
    too_many_inputs_is_refused,
    time_window_is_checked_against_the_notarys_time,
    requests_in_one_batch_are_applied_in_order,
    race_of_100_spenders_has_one_winner,
    committed_states_survive_reopening,
);

// ---------------------------------------------------------------------------------------------
// Helpers

const NOW: Timestamp = Timestamp(1_800_000_000_000_000);

fn alice() -> X500Name {
    "O=Alice,L=London,C=GB".parse().unwrap()
}

fn bob() -> X500Name {
    "O=Bob,L=Paris,C=FR".parse().unwrap()
}

/// Output `n` of an issuance transaction.
fn state(n: u32) -> StateRef {
    StateRef { txhash: SecureHash::sha256(b"issuance"), index: n }
}

fn tx(name: &str) -> SecureHash {
    SecureHash::sha256(name.as_bytes())
}

fn request(id: &str, inputs: &[u32], references: &[u32], requester: X500Name) -> CommitRequest {
    CommitRequest {
        tx_id: tx(id),
        inputs: inputs.iter().map(|n| state(*n)).collect(),
        references: references.iter().map(|n| state(*n)).collect(),
        time_window: None,
        requester,
    }
}

/// The conflict of a refusal that must be one.
fn conflict_of(result: Result<(), NotaryError>) -> Conflict {
    match result {
        Err(NotaryError::Conflict { conflict, .. }) => conflict,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn consumer(id: &str, input_index: u32, requesting_party: X500Name) -> ConsumingTx {
    ConsumingTx { tx_id: tx(id), input_index, requesting_party }
}

// ---------------------------------------------------------------------------------------------
// The suite

async fn conflicting_request_consumes_nothing<F: Fixture>(fx: &F) {
    let p = fx.open(UniquenessConfig::default()).await;
    p.commit(request("t1", &[1], &[], alice()), NOW).await.unwrap();
    // t2 spends 1 (taken) and 2 (free): refused, and 2 stays free.
    let c = conflict_of(p.commit(request("t2", &[2, 1], &[3], bob()), NOW).await);
    assert_eq!(c.states.keys().copied().collect::<Vec<_>>(), vec![state(1)]);
    p.commit(request("t3", &[2, 3], &[], bob()), NOW).await.expect("state 2 and 3 were left unconsumed by the refused request");
    // And t2 now conflicts on all three, consumers named.
    let c = conflict_of(p.commit(request("t2", &[2, 1], &[3], bob()), NOW).await);
    assert_eq!(c.states.len(), 3);
    assert_eq!(c.states[&state(2)].consumed_by, consumer("t3", 0, bob()));
    fx.close(p).await;
}

async fn inputs_commit_all_or_none<F: Fixture>(fx: &F) {
    let p = fx.open(UniquenessConfig::default()).await;
    p.commit(request("wide", &[1, 2, 3, 4, 5], &[], alice()), NOW).await.unwrap();
    // Every one of the five is consumed by "wide", at its own input index.
    for (index, n) in [1u32, 2, 3, 4, 5].iter().enumerate() {
        let c = conflict_of(p.commit(request(&format!("probe{n}"), &[*n], &[], bob()), NOW).await);
        assert_eq!(c.states[&state(*n)].consumed_by, consumer("wide", index as u32, alice()));
    }
    // A request whose last input is taken consumes none of the others.
    let r = p.commit(request("partial", &[10, 11, 12, 5], &[], bob()), NOW).await;
    assert_eq!(conflict_of(r).states.keys().copied().collect::<Vec<_>>(), vec![state(5)]);
    p.commit(request("rest", &[10, 11, 12], &[], bob()), NOW).await.expect("no input of the refused request was consumed");
    fx.close(p).await;
}

async fn conflict_names_every_state_its_consumer_and_kind<F: Fixture>(fx: &F) {
    let p = fx.open(UniquenessConfig::default()).await;
    p.commit(request("first", &[1, 2], &[], alice()), NOW).await.unwrap();
    p.commit(request("second", &[3], &[], bob()), NOW).await.unwrap();
    let refused = p.commit(request("third", &[1, 4], &[2, 3], bob()), NOW).await;
    let err = refused.clone().unwrap_err();
    assert_eq!(err.code(), "NOTARY-CONFLICT");
    assert!(err.is_refusal());
    let NotaryError::Conflict { tx_id, ref conflict } = err else { unreachable!() };
    assert_eq!(tx_id, tx("third"));
    let expected: Vec<(StateRef, StateConflict)> = vec![
        (state(1), StateConflict { kind: StateKind::Input, consumed_by: consumer("first", 0, alice()) }),
        (state(2), StateConflict { kind: StateKind::Reference, consumed_by: consumer("first", 1, alice()) }),
        (state(3), StateConflict { kind: StateKind::Reference, consumed_by: consumer("second", 0, bob()) }),
    ];
    assert_eq!(conflict.states.clone().into_iter().collect::<Vec<_>>(), expected);
    // The conflict crosses the wire: it survives canonical encoding.
    let bytes = encoding::encode(conflict);
    assert_eq!(&encoding::decode::<Conflict>(&bytes).unwrap(), conflict);
    // The message names the consumer, its input index and the requester.
    let message = refused.unwrap_err().to_string();
    assert!(message.contains(&tx("first").to_string()) && message.contains("its input 1") && message.contains("O=Alice"), "{message}");
    fx.close(p).await;
}

async fn recommitting_succeeds_again<F: Fixture>(fx: &F) {
    let p = fx.open(UniquenessConfig::default()).await;
    let mut pay = request("pay", &[1], &[2], alice());
    pay.time_window = Some(TimeWindow::between(NOW, NOW.plus_micros(10_000_000)).unwrap());
    p.commit(pay.clone(), NOW).await.unwrap();
    p.commit(pay.clone(), NOW).await.expect("a retry succeeds");
    // Even once its time window has closed, and its reference state has since been consumed.
    p.commit(request("spend-ref", &[2], &[], bob()), NOW).await.unwrap();
    p.commit(pay.clone(), NOW.plus_micros(3_600_000_000)).await.expect("a retry after the window closed succeeds");
    // A retry by someone else changes no record.
    let mut replay = pay.clone();
    replay.requester = bob();
    p.commit(replay, NOW).await.unwrap();
    let c = conflict_of(p.commit(request("late", &[1], &[], bob()), NOW).await);
    assert_eq!(c.states[&state(1)].consumed_by, consumer("pay", 0, alice()));
    // A transaction without inputs (a time-window-only check) is answered the same again too.
    let mut stamp = request("stamp", &[], &[], alice());
    stamp.time_window = Some(TimeWindow::Until(NOW.plus_micros(1)));
    p.commit(stamp.clone(), NOW).await.unwrap();
    p.commit(stamp, NOW.plus_micros(3_600_000_000)).await.expect("a committed time-window-only transaction succeeds again");
    fx.close(p).await;
}

async fn references_are_checked_but_not_consumed<F: Fixture>(fx: &F) {
    let p = fx.open(UniquenessConfig::default()).await;
    p.commit(request("r1", &[1], &[9], alice()), NOW).await.unwrap();
    p.commit(request("r2", &[2], &[9], bob()), NOW).await.expect("a reference state is not consumed");
    p.commit(request("spend", &[9], &[], bob()), NOW).await.expect("a referenced state can still be spent");
    let c = conflict_of(p.commit(request("r3", &[3], &[9], alice()), NOW).await);
    assert_eq!(c.states[&state(9)], StateConflict { kind: StateKind::Reference, consumed_by: consumer("spend", 0, bob()) });
    p.commit(request("r4", &[3], &[], alice()), NOW).await.expect("the refused request consumed nothing");
    fx.close(p).await;
}

async fn too_many_inputs_is_refused<F: Fixture>(fx: &F) {
    let config = UniquenessConfig { rules: Rules { max_inputs: 3, ..Rules::default() }, ..UniquenessConfig::default() };
    let p = fx.open(config).await;
    let err = p.commit(request("big", &[1, 2, 3, 4], &[], alice()), NOW).await.unwrap_err();
    assert_eq!(err, NotaryError::TooManyInputs { tx_id: tx("big"), inputs: 4, max: 3 });
    assert_eq!(err.code(), "NOTARY-TOO-MANY-INPUTS");
    assert!(err.to_string().contains("has 4 inputs but this notary accepts at most 3"), "{err}");
    p.commit(request("fits", &[1, 2, 3], &[], alice()), NOW).await.expect("the limit itself is accepted, and nothing was consumed");
    fx.close(p).await;
}

async fn time_window_is_checked_against_the_notarys_time<F: Fixture>(fx: &F) {
    let p = fx.open(UniquenessConfig::default()).await;
    let (from, until) = (NOW, NOW.plus_micros(10_000_000));
    let window = TimeWindow::between(from, until).unwrap();
    let mut late = request("late", &[1], &[], alice());
    late.time_window = Some(window);
    let too_late = until.plus_micros(DEFAULT_TIME_TOLERANCE_MICROS);
    let err = p.commit(late.clone(), too_late).await.unwrap_err();
    assert_eq!(
        err,
        NotaryError::TimeWindowInvalid { tx_id: tx("late"), window, now: too_late, tolerance_micros: DEFAULT_TIME_TOLERANCE_MICROS }
    );
    assert_eq!(err.code(), "NOTARY-TIME-WINDOW");
    let too_early = from.plus_micros(-DEFAULT_TIME_TOLERANCE_MICROS - 1);
    assert!(matches!(p.commit(late.clone(), too_early).await, Err(NotaryError::TimeWindowInvalid { .. })));
    // Refused requests consumed nothing; within the tolerance the window is accepted.
    let mut just = late.clone();
    just.tx_id = tx("just-in-time");
    p.commit(just, until.plus_micros(DEFAULT_TIME_TOLERANCE_MICROS - 1)).await.expect("within the tolerance");
    // A conflict is reported before the time window.
    let c = conflict_of(p.commit(late, too_late).await);
    assert_eq!(c.states[&state(1)].consumed_by.tx_id, tx("just-in-time"));
    fx.close(p).await;
}

async fn requests_in_one_batch_are_applied_in_order<F: Fixture>(fx: &F) {
    let p = fx.open(UniquenessConfig::default()).await;
    // Polled in this order by one task, so queued in this order (and batched together by the
    // durable providers): a wins 1, b loses on 1 and consumes nothing, so c gets 2.
    let requests = [request("a", &[1], &[], alice()), request("b", &[2, 1], &[], bob()), request("c", &[2], &[], bob())];
    let (a, b, c) =
        tokio::join!(p.commit(requests[0].clone(), NOW), p.commit(requests[1].clone(), NOW), p.commit(requests[2].clone(), NOW),);
    let outcomes = [a, b, c].map(|r| outcome(&r));
    if fx.one_queue() {
        assert_eq!(outcomes, serial_outcomes(&requests, [0, 1, 2]));
    } else {
        // A Raft batch that fails over to a new leader is sent again and may then be applied
        // after a later one: the answers must still be those of one order of the three.
        let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        assert!(orders.iter().any(|o| outcomes == serial_outcomes(&requests, *o)), "answers of no serial order: {outcomes:?}");
    }
    fx.close(p).await;
}

/// An answer reduced to what the serial model predicts: committed, or the states in conflict
/// with the transactions that consumed them.
fn outcome(result: &Result<(), NotaryError>) -> Option<Vec<(StateRef, SecureHash)>> {
    match result {
        Ok(()) => None,
        other => Some(conflict_of(other.clone()).states.iter().map(|(s, c)| (*s, c.consumed_by.tx_id)).collect()),
    }
}

/// The answers requests of inputs only get when applied one by one in `order`.
fn serial_outcomes(requests: &[CommitRequest; 3], order: [usize; 3]) -> [Option<Vec<(StateRef, SecureHash)>>; 3] {
    let mut consumed: BTreeMap<StateRef, SecureHash> = BTreeMap::new();
    let mut answers: [Option<Vec<(StateRef, SecureHash)>>; 3] = Default::default();
    for i in order {
        let r = &requests[i];
        let mut taken: Vec<(StateRef, SecureHash)> = r.inputs.iter().filter_map(|s| consumed.get(s).map(|by| (*s, *by))).collect();
        taken.sort();
        if taken.is_empty() {
            consumed.extend(r.inputs.iter().map(|s| (*s, r.tx_id)));
        } else {
            answers[i] = Some(taken);
        }
    }
    answers
}

async fn race_of_100_spenders_has_one_winner<F: Fixture>(fx: &F) {
    let p = Arc::new(fx.open(UniquenessConfig::default()).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let p = p.clone();
        tasks.spawn(async move {
            let id = format!("spender-{i}");
            (id.clone(), p.commit(request(&id, &[7], &[], alice()), NOW).await)
        });
    }
    let results = tasks.join_all().await;
    let winners: Vec<&String> = results.iter().filter(|(_, r)| r.is_ok()).map(|(id, _)| id).collect();
    assert_eq!(winners.len(), 1, "exactly one spender commits: {winners:?}");
    let winner = winners[0];
    for (id, result) in &results {
        if id != winner {
            let c = conflict_of(result.clone());
            assert_eq!(c.states[&state(7)], StateConflict { kind: StateKind::Input, consumed_by: consumer(winner, 0, alice()) }, "{id}");
        }
    }
    let Ok(p) = Arc::try_unwrap(p) else { panic!("provider still shared") };
    fx.close(p).await;
}

async fn committed_states_survive_reopening<F: Fixture>(fx: &F) {
    if !fx.durable() {
        return;
    }
    let p = fx.open(UniquenessConfig::default()).await;
    p.commit(request("before", &[1, 2], &[], alice()), NOW).await.unwrap();
    fx.close(p).await;
    let p = fx.open(UniquenessConfig::default()).await;
    let c = conflict_of(p.commit(request("after", &[2], &[], bob()), NOW).await);
    assert_eq!(c.states[&state(2)].consumed_by, consumer("before", 1, alice()));
    p.commit(request("before", &[1, 2], &[], alice()), NOW).await.expect("the retry after reopening succeeds");
    p.commit(request("new", &[3], &[], bob()), NOW).await.expect("the reopened log accepts new commits");
    fx.close(p).await;
    let p = fx.open(UniquenessConfig::default()).await;
    assert!(p.commit(request("again", &[3], &[], alice()), NOW).await.is_err(), "a commit after reopening was durable too");
    fx.close(p).await;
}

// ---------------------------------------------------------------------------------------------
// redb only

#[tokio::test]
async fn redb_refuses_a_file_that_is_not_a_log() {
    let dir = TempDir::new();
    let file = dir.path().join("notes.txt");
    let text = "these are not the states you are looking for\n".repeat(200);
    std::fs::write(&file, &text).unwrap();
    let err = RedbUniquenessProvider::open(&file, UniquenessConfig::default()).await.unwrap_err();
    assert_eq!(err.code(), "NOTARY-OPEN");
    let message = err.to_string();
    assert!(
        message.contains(&file.display().to_string()) && message.contains("Not a redb database"),
        "the error names the file: {message}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "the file was not changed");
}

#[tokio::test]
async fn redb_refuses_another_redb_database_and_leaves_it_alone() {
    const OTHER: ::redb::TableDefinition<&str, &str> = ::redb::TableDefinition::new("accounts");
    let dir = TempDir::new();
    let file = dir.path().join("wallet.redb");
    {
        let db = ::redb::Database::create(&file).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(OTHER).unwrap().insert("alice", "100").unwrap();
        tx.commit().unwrap();
    }
    let err = RedbUniquenessProvider::open(&file, UniquenessConfig::default()).await.unwrap_err();
    assert_eq!(err.code(), "NOTARY-OPEN");
    assert!(err.to_string().contains("not a uniqueness log") && err.to_string().contains("wallet.redb"), "{err}");
    let db = ::redb::Database::open(&file).unwrap();
    let tables: Vec<String> = ::redb::ReadableDatabase::begin_read(&db)
        .unwrap()
        .list_tables()
        .unwrap()
        .map(|t| ::redb::TableHandle::name(&t).to_string())
        .collect();
    assert_eq!(tables, vec!["accounts".to_string()], "nothing was added to the other database");
}

#[tokio::test]
async fn redb_refuses_a_file_already_open() {
    let fx = RedbFixture::new();
    let p = fx.open(UniquenessConfig::default()).await;
    let err = RedbUniquenessProvider::open(fx.file(), UniquenessConfig::default()).await.unwrap_err();
    assert!(err.to_string().contains("already open"), "{err}");
    p.close().await;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL only

#[tokio::test]
async fn postgres_provider_refuses_sqlite() {
    let dir = TempDir::new();
    let db = Database::open("sqlite::memory:", dir.path()).await.unwrap();
    let err = PostgresUniquenessProvider::open(&db, UniquenessConfig::default()).await.unwrap_err();
    assert_eq!(err.code(), "NOTARY-OPEN");
    assert!(err.to_string().contains("needs a postgres:// database"), "{err}");
    db.close().await;
}

/// Two notary processes (two providers, each with its own connection pool) share one database
/// and race for the same states: each state is consumed exactly once, and every loser is told
/// the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_notaries_sharing_a_database() {
    let Some(fx) = PgFixture::new().await else { return };
    let (one, two) = (Arc::new(fx.open(UniquenessConfig::default()).await), Arc::new(fx.open(UniquenessConfig::default()).await));
    const STATES: u32 = 20;
    const SPENDERS: u32 = 10;
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..STATES {
        for i in 0..SPENDERS {
            let p = if (s + i) % 2 == 0 { one.clone() } else { two.clone() };
            tasks.spawn(async move {
                let id = format!("s{s}-spender{i}");
                // Each spender also takes a state of its own, so batches overlap only partly.
                let r = p.commit(request(&id, &[s, 1000 + s * SPENDERS + i], &[], alice()), NOW).await;
                (s, id, r)
            });
        }
    }
    let results = tasks.join_all().await;
    for s in 0..STATES {
        let of_s: Vec<_> = results.iter().filter(|(state, _, _)| *state == s).collect();
        let winners: Vec<&String> = of_s.iter().filter(|(_, _, r)| r.is_ok()).map(|(_, id, _)| id).collect();
        assert_eq!(winners.len(), 1, "state {s}: {winners:?}");
        for (_, id, r) in of_s.iter().filter(|(_, id, _)| id != winners[0]) {
            let c = conflict_of(r.clone());
            assert_eq!(c.states.len(), 1, "{id}: only the contested state conflicts");
            assert_eq!(c.states[&state(s)].consumed_by.tx_id, tx(winners[0]), "{id}");
        }
    }
    for p in [one, two] {
        let Ok(p) = Arc::try_unwrap(p) else { panic!("provider still shared") };
        fx.close(p).await;
    }
    fx.cleanup().await;
}

/// A log damaged outside redb (bytes flipped in its middle) is refused at open with an error
/// naming the file (with `verify_on_open`, the default), rather than trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_refuses_a_damaged_file() {
    let fx = RedbFixture::new();
    let p = Arc::new(fx.open(UniquenessConfig::default()).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2000 {
        let p = p.clone();
        tasks.spawn(async move { p.commit(request(&format!("t{i}"), &[i], &[], alice()), NOW).await });
    }
    assert!(tasks.join_all().await.iter().all(Result::is_ok));
    let Ok(p) = Arc::try_unwrap(p) else { panic!("provider still shared") };
    p.close().await;
    let mut bytes = std::fs::read(fx.file()).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len / 4..len / 2] {
        *b ^= 0x5a;
    }
    std::fs::write(fx.file(), &bytes).unwrap();
    let err = RedbUniquenessProvider::open(fx.file(), UniquenessConfig::default()).await.unwrap_err();
    assert_eq!(err.code(), "NOTARY-OPEN");
    let message = err.to_string();
    assert!(message.contains(&fx.file().display().to_string()) && message.contains("damaged"), "{message}");
}

/// Every commit answered Ok survives the process being killed (SIGKILL) at any moment: this
/// test runs itself as a child process that commits as fast as it can and prints each
/// acknowledged transaction, kills it mid-stream, and checks each acknowledged state is
/// consumed by its transaction in the reopened file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_every_acknowledged_commit_survives_a_kill() {
    const CHILD: &str = "TREATY_NOTARY_KILL_CHILD";
    if let Ok(file) = std::env::var(CHILD) {
        let p = Arc::new(RedbUniquenessProvider::open(&file, UniquenessConfig::default()).await.unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..16u32 {
            let p = p.clone();
            tasks.spawn(async move {
                for i in (worker..1_000_000).step_by(16) {
                    p.commit(request(&format!("t{i}"), &[i], &[], alice()), NOW).await.unwrap();
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {i}").unwrap();
                    out.flush().unwrap();
                }
            });
        }
        tasks.join_all().await;
        return;
    }

    let fx = RedbFixture::new();
    std::fs::create_dir_all(fx.file().parent().unwrap()).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "redb_every_acknowledged_commit_survives_a_kill", "--nocapture", "--test-threads=1"])
        .env(CHILD, fx.file())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let acked = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut acked = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("ACK ") {
                acked.push(n.parse::<u32>().unwrap());
                if acked.len() == 3000 {
                    child.kill().unwrap();
                }
            }
        }
        child.wait().unwrap();
        acked
    })
    .await
    .unwrap();
    assert!(acked.len() >= 3000, "the child acknowledged only {} commits before it ended", acked.len());

    let p = fx.open(UniquenessConfig::default()).await;
    let mut probes = tokio::task::JoinSet::new();
    let p = Arc::new(p);
    for i in acked {
        let p = p.clone();
        probes.spawn(async move { (i, p.commit(request(&format!("probe{i}"), &[i], &[], bob()), NOW).await) });
    }
    for (i, result) in probes.join_all().await {
        assert_eq!(conflict_of(result).states[&state(i)].consumed_by, consumer(&format!("t{i}"), 0, alice()), "state {i}");
    }
    let Ok(p) = Arc::try_unwrap(p) else { panic!("provider still shared") };
    p.close().await;
}
