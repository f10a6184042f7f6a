//! One suite, written once, run against SQLite (a file in a temp dir) and PostgreSQL (a fresh
//! database per test, when `TREATY_TEST_POSTGRES_URL` is set; required when
//! `TREATY_REQUIRE_POSTGRES=1`): `sqlite::NAME` and `postgres::NAME`.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use treaty_core::{
    AbstractParty, Amount, AnonymousParty, AttachmentConstraint, CompositeKey, ContractState, Currency, Issued, KeyPair, Party,
    PartyAndReference, PrivacySalt, PublicKey, SignatureScheme, StateRef, Timestamp, TransactionBuilder, TransactionState,
    UniqueIdentifier, WireTransaction,
};
use treaty_storage::{BackendKind, Database, Pool};
use treaty_vault::{
    ColumnCondition, ColumnValue, Criteria, Cursor, Direction, FungibleColumns, FungibleCriteria, GroupBy, IssuerFilter, LockFilter,
    LockId, MAX_PAGE_SIZE, PageSpec, ScheduledActivity, Sort, SortColumn, Status, TimeRange, TypedSchema, Unavailable, Vault, VaultError,
    VaultState, fungible,
};

// ---------------------------------------------------------------------------------------------
// Fixtures

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}_{nanos}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("treaty-vault-test-{}", unique()));
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

/// Where a test's database lives.
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
        let name = format!("treaty_test_{}", unique());
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

db_tests!(
    relevancy,
    consumed_and_produced_with_as_of,
    apply_is_idempotent,
    a_batch_is_atomic,
    each_criterion,
    and_or,
    in_memory_filter_agrees_with_sql,
    sorting,
    cursor_pagination_over_10000_states,
    aggregates_per_token_and_issuer,
    concurrent_selections_are_disjoint,
    insufficient_balance_only_when_short,
    locks_and_release,
    consumption_releases_locks,
    sql_views,
    track_snapshot_and_updates,
    scheduled_activities,
    bad_input_is_named,
);

// ---------------------------------------------------------------------------------------------
// States of the tests (the vault never sees these types, only their envelopes)

/// Shaped like the finance app's cash.
/// `apply_with`: the node's recording of a transaction and its vault states are one job on
/// the SQLite writer thread, so they commit together or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_and_applying_in_one_job_commit_together() {
    let fx = Fixture::sqlite();
    let w = World::new(&fx).await;
    let issue = tx(&[], vec![w.cash(&w.alice(), 100, "USD", &w.bank)]);
    let bytes = b"the signed transaction".to_vec();
    fn recorded(c: &treaty_storage::writer::rusqlite::Connection) -> Result<i64, treaty_storage::StorageError> {
        c.query_row("SELECT count(*) FROM treaty_transactions", [], |r| r.get(0))
            .map_err(|e| treaty_storage::writer::sqlite_error("counting", e))
    }
    // The recording fails (its statement is invalid): the vault keeps nothing either.
    let failing: treaty_storage::RecordJob = Box::new(|c| {
        c.execute_batch("INSERT INTO no_such_table VALUES (1)").map_err(|e| treaty_storage::writer::sqlite_error("recording", e))
    });
    let err = w.vault.apply_with(&[&issue], &w.ours(), t(1), Some(failing)).await.expect_err("the recording failed");
    assert!(err.to_string().contains("no_such_table"), "{err}");
    assert!(!w.vault.is_applied(&issue.id()).await.unwrap(), "nothing of the failed job is kept");
    assert_eq!(w.vault.count(&Criteria::All).await.unwrap(), 0);
    // Both succeed: the transaction and its state are there.
    let job =
        treaty_storage::TransactionStore::record_job(&[], &[treaty_storage::Recorded { id: issue.id(), bytes: &bytes, dependencies: &[] }]);
    let applied = w.vault.apply_with(&[&issue], &w.ours(), t(2), Some(job)).await.expect("apply");
    assert_eq!(applied.applied, vec![issue.id()]);
    assert_eq!(w.vault.count(&Criteria::All).await.unwrap(), 1);
    let writer = w.db.sqlite_writer().expect("a file database has a writer thread");
    assert_eq!(writer.write("counting", recorded).await.unwrap(), 1);
    // Nothing relevant to apply: the recording still runs.
    let foreign = tx(&[], vec![w.note(vec![w.bob.clone().into()])]);
    let foreign_bytes = b"another signed transaction".to_vec();
    let job = treaty_storage::TransactionStore::record_job(
        &[],
        &[treaty_storage::Recorded { id: foreign.id(), bytes: &foreign_bytes, dependencies: &[] }],
    );
    w.vault.apply_with(&[&foreign], &w.ours(), t(3), Some(job)).await.expect("apply");
    assert_eq!(writer.write("counting", recorded).await.unwrap(), 2);
    fx.cleanup().await;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Cash {
    amount: Amount<Issued<Currency>>,
    owner: AbstractParty,
}

impl ContractState for Cash {
    const TYPE_ID: &'static str = "test.Cash";
    const CONTRACT: &'static str = "test.CashContract";
    fn participants(&self) -> Vec<AbstractParty> {
        vec![self.owner.clone()]
    }
}

/// A linear state with app columns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Deal {
    id: UniqueIdentifier,
    trade_ref: Option<String>,
    notional: i64,
    parties: Vec<AbstractParty>,
}

impl ContractState for Deal {
    const TYPE_ID: &'static str = "test.Deal";
    const CONTRACT: &'static str = "test.DealContract";
    fn participants(&self) -> Vec<AbstractParty> {
        self.parties.clone()
    }
}

/// A state without a schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Note {
    text: String,
    parties: Vec<AbstractParty>,
}

impl ContractState for Note {
    const TYPE_ID: &'static str = "test.Note";
    const CONTRACT: &'static str = "test.NoteContract";
    fn participants(&self) -> Vec<AbstractParty> {
        self.parties.clone()
    }
}

/// A state a database trigger refuses (for the atomicity test).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Poison {
    owner: AbstractParty,
}

impl ContractState for Poison {
    const TYPE_ID: &'static str = "test.Poison";
    const CONTRACT: &'static str = "test.P";
    fn participants(&self) -> Vec<AbstractParty> {
        vec![self.owner.clone()]
    }
}

fn party(name: &str, seed: u8) -> Party {
    Party { name: name.parse().expect("name"), owning_key: key(seed) }
}

fn key(seed: u8) -> PublicKey {
    KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).expect("key").public()
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_secs(secs)
}

/// The parties and a vault.
struct World {
    vault: Vault,
    db: Database,
    alice: Party,
    /// Alice's confidential key (held by her node, known by no name).
    alice_conf: PublicKey,
    bob: Party,
    bank: Party,
    bank2: Party,
    notary: Party,
    notary2: Party,
}

impl World {
    async fn new(fx: &Fixture) -> World {
        let db = fx.open().await;
        let vault = Vault::open(&db).await.expect("open vault");
        vault.register(fungible(|c: &Cash| FungibleColumns::issued(&c.owner, &c.amount))).expect("cash schema");
        vault
            .register(
                TypedSchema::<Deal>::new()
                    .linear(|d| d.id.clone())
                    .text("trade_ref", |d| d.trade_ref.clone())
                    .integer("notional", |d| Some(d.notional)),
            )
            .expect("deal schema");
        World {
            vault,
            db,
            alice: party("O=Alice,L=London,C=GB", 1),
            alice_conf: key(2),
            bob: party("O=Bob,L=Paris,C=FR", 3),
            bank: party("O=Bank,L=Zurich,C=CH", 4),
            bank2: party("O=Second Bank,L=Berlin,C=DE", 5),
            notary: party("O=Notary,L=Zurich,C=CH", 6),
            notary2: party("O=Other Notary,L=Rome,C=IT", 7),
        }
    }

    fn ours(&self) -> impl Fn(&PublicKey) -> bool + Sync + use<> {
        let (a, c) = (self.alice.owning_key.clone(), self.alice_conf.clone());
        move |k: &PublicKey| *k == a || *k == c
    }

    fn alice(&self) -> AbstractParty {
        self.alice.clone().into()
    }

    fn anon(&self) -> AbstractParty {
        AnonymousParty { owning_key: self.alice_conf.clone() }.into()
    }

    fn cash(&self, owner: &AbstractParty, quantity: u64, currency: &str, issuer: &Party) -> TransactionState {
        let token = Issued {
            issuer: PartyAndReference { party: issuer.clone().into(), reference: vec![1] },
            product: Currency::new(currency).expect("currency"),
        };
        let cash = Cash { amount: Amount::new(quantity, token), owner: owner.clone() };
        TransactionState::new(&cash, "test.CashContract", self.notary.clone(), AttachmentConstraint::AlwaysAccept)
    }

    fn deal(
        &self,
        trade_ref: Option<&str>,
        external: Option<&str>,
        notional: i64,
        seed: u8,
        notary: &Party,
    ) -> (TransactionState, uuid::Uuid) {
        let id = UniqueIdentifier::new(external.map(str::to_string), [seed; 16]);
        let deal = Deal {
            id: id.clone(),
            trade_ref: trade_ref.map(str::to_string),
            notional,
            parties: vec![self.alice(), self.bob.clone().into()],
        };
        (TransactionState::new(&deal, "test.DealContract", notary.clone(), AttachmentConstraint::AlwaysAccept), id.id)
    }

    fn note(&self, parties: Vec<AbstractParty>) -> TransactionState {
        TransactionState::new(
            &Note { text: "hello".into(), parties },
            "test.NoteContract",
            self.notary.clone(),
            AttachmentConstraint::AlwaysAccept,
        )
    }

    async fn apply(&self, txs: &[&WireTransaction], at: Timestamp) -> treaty_vault::ApplySummary {
        self.vault.apply(txs, &self.ours(), at).await.expect("apply")
    }

    /// The refs matching `criteria`, in recording order.
    async fn refs(&self, criteria: &Criteria) -> Vec<StateRef> {
        self.ordered(criteria, &Sort::recording_order()).await
    }

    async fn ordered(&self, criteria: &Criteria, sort: &Sort) -> Vec<StateRef> {
        let page = self.vault.query(criteria, sort, &PageSpec::first(MAX_PAGE_SIZE)).await.expect("query");
        assert!(page.next.is_none());
        page.states.iter().map(|s| s.state_ref).collect()
    }

    /// Every page of `size` in turn.
    async fn paged(&self, criteria: &Criteria, sort: &Sort, size: u32) -> Vec<StateRef> {
        let mut out = Vec::new();
        let mut spec = PageSpec::first(size);
        loop {
            let page = self.vault.query(criteria, sort, &spec).await.expect("page");
            assert!(page.states.len() <= size as usize);
            out.extend(page.states.iter().map(|s| s.state_ref));
            match page.next {
                Some(c) => spec = PageSpec::after(size, c),
                None => return out,
            }
        }
    }

    async fn sql_i64(&self, sql: &str) -> i64 {
        use sqlx::Row;
        match self.db.pool() {
            Pool::Sqlite(p) => sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(p).await.expect(sql).get(0),
            Pool::Postgres(p) => sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(p).await.expect(sql).get(0),
        }
    }
}

fn tx(inputs: &[StateRef], outputs: Vec<TransactionState>) -> WireTransaction {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    let mut salt = [0u8; 32];
    salt[..8].copy_from_slice(&n.to_le_bytes());
    salt[8..16].copy_from_slice(&(std::process::id() as u64).to_le_bytes());
    let mut b = TransactionBuilder::new(Some(party("O=Notary,L=Zurich,C=CH", 6)));
    for r in inputs {
        b = b.input(*r);
    }
    for o in outputs {
        b = b.output(o);
    }
    b.build(PrivacySalt(salt)).expect("build transaction")
}

fn at(tx: &WireTransaction, index: u32) -> StateRef {
    StateRef { txhash: tx.id(), index }
}

fn set(refs: &[StateRef]) -> BTreeSet<StateRef> {
    refs.iter().copied().collect()
}

// ---------------------------------------------------------------------------------------------
// Relevancy, consumption, idempotence, atomicity

async fn relevancy(fx: &Fixture) {
    let w = World::new(fx).await;
    let composite = CompositeKey::any_of(vec![w.alice.owning_key.clone(), w.bob.owning_key.clone()]).expect("composite");
    let mut forged = w.cash(&w.alice(), 1_000_000, "USD", &w.bank);
    forged.contract = "evil.Junk".into();
    let tx1 = tx(
        &[],
        vec![
            w.cash(&w.alice(), 100, "USD", &w.bank),                       // 0: ours
            w.cash(&w.bob.clone().into(), 200, "USD", &w.bank),            // 1: Bob's alone
            w.note(vec![w.bob.clone().into(), w.anon()]),                  // 2: ours through the confidential key
            w.note(vec![w.bob.clone().into()]),                            // 3: Bob's alone
            w.note(vec![AnonymousParty { owning_key: composite }.into()]), // 4: a composite key with our leaf
            forged,                                                        // 5: ours, "cash" of another contract
        ],
    );
    let summary = w.apply(&[&tx1], t(10)).await;
    assert_eq!(summary.produced, vec![at(&tx1, 0), at(&tx1, 2), at(&tx1, 4), at(&tx1, 5)]);
    assert_eq!(w.vault.count(&Criteria::All).await.unwrap(), 4);
    // A state of a registered type under another contract than the type's is kept, but is not
    // what the type means: no fungible shape, so no balance and nothing to select.
    let balances = w.vault.balances(&Criteria::unconsumed()).await.unwrap();
    assert_eq!(balances.iter().map(|b| b.quantity).sum::<u128>(), 100, "{balances:?}");
    // Its type id is Cash's, but it is no `Cash`.
    assert_eq!(w.refs(&Criteria::state_type(Cash::TYPE_ID)).await, vec![at(&tx1, 0), at(&tx1, 5)]);
    assert_eq!(w.refs(&Criteria::of_type::<Cash>()).await, vec![at(&tx1, 0)]);
    assert!(w.vault.state(&at(&tx1, 1)).await.unwrap().is_none(), "Bob's cash is not ours");
    assert!(w.vault.state(&at(&tx1, 3)).await.unwrap().is_none());

    let mine = w.vault.state(&at(&tx1, 0)).await.unwrap().expect("stored");
    assert_eq!(mine.status, Status::Unconsumed);
    assert_eq!(mine.recorded_at, t(10));
    assert_eq!(mine.state, tx1.components().outputs[0]);
    assert_eq!(mine.state_bytes, tx1.group_components(treaty_core::ComponentGroup::Outputs)[0], "the exact bytes");
    // Participants are stored by key: Bob's key finds the note we share with him.
    assert_eq!(w.refs(&Criteria::participant(&w.bob.owning_key)).await, vec![at(&tx1, 2)]);
    assert_eq!(w.refs(&Criteria::participant(&w.alice_conf)).await, vec![at(&tx1, 2)]);
    assert_eq!(w.sql_i64("SELECT COUNT(*) FROM treaty_vault_participants").await, 5);
    assert_eq!(w.sql_i64("SELECT COUNT(*) FROM vault_state_participants WHERE name IS NULL").await, 2);
}

async fn consumed_and_produced_with_as_of(fx: &Fixture) {
    let w = World::new(fx).await;
    let issue = tx(&[], vec![w.cash(&w.alice(), 100, "USD", &w.bank), w.cash(&w.alice(), 50, "USD", &w.bank)]);
    w.apply(&[&issue], t(100)).await;
    let pay = tx(&[at(&issue, 0)], vec![w.cash(&w.bob.clone().into(), 70, "USD", &w.bank), w.cash(&w.alice(), 30, "USD", &w.bank)]);
    let summary = w.apply(&[&pay], t(200)).await;
    assert_eq!(summary.consumed, vec![at(&issue, 0)]);
    assert_eq!(summary.produced, vec![at(&pay, 1)]);

    let spent = w.vault.state(&at(&issue, 0)).await.unwrap().expect("kept");
    assert_eq!(spent.status, Status::Consumed);
    assert_eq!(spent.recorded_at, t(100));
    assert_eq!(spent.consumed_at, Some(t(200)));
    assert_eq!(spent.consuming_tx, Some(pay.id()));
    let change = w.vault.state(&at(&pay, 1)).await.unwrap().expect("change");
    assert_eq!((change.status, change.recorded_at, change.consumed_at), (Status::Unconsumed, t(200), None));

    assert_eq!(w.refs(&Criteria::unconsumed()).await, vec![at(&issue, 1), at(&pay, 1)]);
    assert_eq!(w.refs(&Criteria::consumed()).await, vec![at(&issue, 0)]);
    // As of a time: recorded by then and not consumed by then.
    assert_eq!(w.refs(&Criteria::UnconsumedAt(t(99))).await, vec![]);
    assert_eq!(w.refs(&Criteria::UnconsumedAt(t(100))).await, vec![at(&issue, 0), at(&issue, 1)]);
    assert_eq!(w.refs(&Criteria::UnconsumedAt(t(199))).await, vec![at(&issue, 0), at(&issue, 1)]);
    assert_eq!(w.refs(&Criteria::UnconsumedAt(t(200))).await, vec![at(&issue, 1), at(&pay, 1)]);
    assert_eq!(w.refs(&Criteria::Consumed(TimeRange::between(t(200), t(201)))).await, vec![at(&issue, 0)]);
    assert_eq!(w.refs(&Criteria::Consumed(TimeRange::between(t(100), t(200)))).await, vec![]);
    assert_eq!(w.refs(&Criteria::Recorded(TimeRange { from: Some(t(150)), until: None })).await, vec![at(&pay, 1)]);
    assert_eq!(w.refs(&Criteria::Recorded(TimeRange { from: None, until: Some(t(100)) })).await, vec![]);

    // A batch may list the spender before the transaction it spends from.
    let a = tx(&[], vec![w.cash(&w.alice(), 5, "EUR", &w.bank)]);
    let b = tx(&[at(&a, 0)], vec![w.cash(&w.alice(), 5, "EUR", &w.bank)]);
    let summary = w.apply(&[&b, &a], t(300)).await;
    assert_eq!(summary.applied, vec![b.id(), a.id()]);
    assert_eq!(w.vault.state(&at(&a, 0)).await.unwrap().expect("a").consuming_tx, Some(b.id()));
    assert_eq!(w.vault.state(&at(&b, 0)).await.unwrap().expect("b").status, Status::Unconsumed);
}

async fn apply_is_idempotent(fx: &Fixture) {
    let w = World::new(fx).await;
    let issue = tx(&[], vec![w.cash(&w.alice(), 100, "USD", &w.bank)]);
    let spend = tx(&[at(&issue, 0)], vec![w.cash(&w.alice(), 100, "USD", &w.bank)]);
    assert!(!w.vault.is_applied(&issue.id()).await.unwrap());
    let first = w.apply(&[&issue, &issue], t(1)).await;
    assert_eq!((first.applied.clone(), first.skipped.clone()), (vec![issue.id()], vec![issue.id()]));
    assert!(w.vault.is_applied(&issue.id()).await.unwrap());
    let again = w.apply(&[&issue], t(2)).await;
    assert_eq!(again.applied, vec![]);
    assert_eq!(again.skipped, vec![issue.id()]);
    assert!(again.produced.is_empty());
    w.apply(&[&spend], t(3)).await;
    let again = w.apply(&[&spend, &issue], t(4)).await;
    assert_eq!(again.skipped, vec![spend.id(), issue.id()]);
    assert_eq!(w.vault.count(&Criteria::All).await.unwrap(), 2);
    let spent = w.vault.state(&at(&issue, 0)).await.unwrap().expect("kept");
    assert_eq!((spent.recorded_at, spent.consumed_at), (t(1), Some(t(3))), "times of the first application stay");
    // Reopening (migrations already applied) sees the same vault.
    let reopened = Vault::open(&w.db).await.expect("reopen");
    assert!(reopened.is_applied(&spend.id()).await.unwrap());
    assert_eq!(reopened.count(&Criteria::All).await.unwrap(), 2);
    // An irrelevant transaction is remembered as applied too.
    let foreign = tx(&[], vec![w.note(vec![w.bob.clone().into()])]);
    assert_eq!(w.apply(&[&foreign], t(5)).await.applied, vec![foreign.id()]);
    assert_eq!(w.apply(&[&foreign], t(6)).await.skipped, vec![foreign.id()]);
}

async fn a_batch_is_atomic(fx: &Fixture) {
    let w = World::new(fx).await;
    // A trigger refuses one kind of state: the database fails in the middle of the batch.
    let trigger = match w.db.kind() {
        BackendKind::Sqlite => "CREATE TRIGGER poison BEFORE INSERT ON treaty_vault_states WHEN NEW.type_id = 'test.Poison' \
                                BEGIN SELECT RAISE(ABORT, 'poisoned state'); END"
            .to_string(),
        BackendKind::Postgres => "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN IF NEW.type_id = 'test.Poison' THEN \
                                  RAISE EXCEPTION 'poisoned state'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql; \
                                  CREATE TRIGGER poison BEFORE INSERT ON treaty_vault_states FOR EACH ROW EXECUTE FUNCTION poison()"
            .to_string(),
    };
    match w.db.pool() {
        Pool::Sqlite(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(trigger)).execute(p).await.map(|_| ()),
        Pool::Postgres(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(trigger)).execute(p).await.map(|_| ()),
    }
    .expect("trigger");
    let issue = tx(&[], vec![w.cash(&w.alice(), 100, "USD", &w.bank)]);
    w.apply(&[&issue], t(1)).await;
    let spend = tx(&[at(&issue, 0)], vec![w.cash(&w.alice(), 60, "USD", &w.bank), w.cash(&w.alice(), 40, "USD", &w.bank)]);
    let poison =
        tx(&[], vec![TransactionState::new(&Poison { owner: w.alice() }, "test.P", w.notary.clone(), AttachmentConstraint::AlwaysAccept)]);
    let err = w.vault.apply(&[&spend, &poison], &w.ours(), t(2)).await.unwrap_err();
    assert!(err.to_string().contains("poisoned state"), "{err}");
    // Nothing of the batch happened: not the outputs, not the consumption, not the markers.
    assert_eq!(w.vault.count(&Criteria::All).await.unwrap(), 1);
    assert_eq!(w.vault.state(&at(&issue, 0)).await.unwrap().expect("kept").status, Status::Unconsumed);
    assert!(!w.vault.is_applied(&spend.id()).await.unwrap());
    assert_eq!(w.apply(&[&spend], t(3)).await.applied, vec![spend.id()], "applies alone afterwards");

    // A state a schema cannot store refuses the whole batch before the database is touched.
    let ok = tx(&[], vec![w.cash(&w.alice(), 1, "USD", &w.bank)]);
    let huge = tx(&[], vec![w.cash(&w.alice(), u64::MAX, "USD", &w.bank)]);
    let err = w.vault.apply(&[&ok, &huge], &w.ours(), t(4)).await.unwrap_err();
    assert!(matches!(&err, VaultError::Extraction { state_ref, .. } if *state_ref == at(&huge, 0)), "{err}");
    assert!(err.to_string().contains("quantity 18446744073709551615"), "{err}");
    assert!(!w.vault.is_applied(&ok.id()).await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Criteria

/// Cash, deals and a note, with one cash state spent, a deal locked.
struct Data {
    usd_bank: StateRef,
    usd_bank2: StateRef,
    eur: StateRef,
    usd_conf: StateRef,
    deal_a: StateRef,
    deal_b: StateRef,
    deal_c: StateRef,
    note: StateRef,
    spent: StateRef,
    change: StateRef,
    deal_a_id: uuid::Uuid,
    lock: LockId,
}

async fn data(w: &World) -> Data {
    let cash = tx(
        &[],
        vec![
            w.cash(&w.alice(), 100, "USD", &w.bank),
            w.cash(&w.alice(), 250, "USD", &w.bank2),
            w.cash(&w.alice(), 300, "EUR", &w.bank),
            w.cash(&w.anon(), 50, "USD", &w.bank),
            w.cash(&w.alice(), 75, "GBP", &w.bank),
        ],
    );
    w.apply(&[&cash], t(1000)).await;
    let (a, deal_a_id) = w.deal(Some("T-1"), Some("ext-1"), 1000, 1, &w.notary);
    let (b, _) = w.deal(Some("T-2"), None, 5000, 2, &w.notary);
    let (c, _) = w.deal(None, None, 3000, 3, &w.notary2);
    let deals = tx(&[], vec![a, b, c, w.note(vec![w.alice(), w.bob.clone().into()])]);
    w.apply(&[&deals], t(2000)).await;
    let spend = tx(&[at(&cash, 4)], vec![w.cash(&w.alice(), 75, "GBP", &w.bank)]);
    w.apply(&[&spend], t(3000)).await;
    let lock = LockId(uuid::Uuid::from_u128(0xA));
    w.vault.lock(lock, &[at(&deals, 0)]).await.expect("lock deal A");
    Data {
        usd_bank: at(&cash, 0),
        usd_bank2: at(&cash, 1),
        eur: at(&cash, 2),
        usd_conf: at(&cash, 3),
        spent: at(&cash, 4),
        deal_a: at(&deals, 0),
        deal_b: at(&deals, 1),
        deal_c: at(&deals, 2),
        note: at(&deals, 3),
        change: at(&spend, 0),
        deal_a_id,
        lock,
    }
}

async fn each_criterion(fx: &Fixture) {
    let w = World::new(fx).await;
    let d = data(&w).await;
    let q = |c: Criteria| {
        let w = &w;
        async move { w.refs(&c).await }
    };
    assert_eq!(q(Criteria::state_type("test.Deal")).await, vec![d.deal_a, d.deal_b, d.deal_c]);
    assert_eq!(q(Criteria::StateTypes(vec!["test.Note".into(), "nothing".into()])).await, vec![d.note]);
    assert_eq!(q(Criteria::StateTypes(vec![])).await, vec![]);
    assert_eq!(q(Criteria::Contracts(vec!["test.NoteContract".into()])).await, vec![d.note]);
    assert_eq!(q(Criteria::notary(&w.notary2.name)).await, vec![d.deal_c]);
    assert_eq!(q(Criteria::consumed()).await, vec![d.spent]);
    assert_eq!(q(Criteria::Status(treaty_vault::StatusFilter::All)).await.len(), 10);
    assert_eq!(q(Criteria::unconsumed()).await.len(), 9);
    assert_eq!(q(Criteria::participant(&w.bob.owning_key)).await, vec![d.deal_a, d.deal_b, d.deal_c, d.note]);
    assert_eq!(
        q(Criteria::Participants(vec![w.alice_conf.clone(), w.bob.owning_key.clone()])).await,
        vec![d.usd_conf, d.deal_a, d.deal_b, d.deal_c, d.note]
    );
    assert_eq!(q(Criteria::linear_id(d.deal_a_id)).await, vec![d.deal_a]);
    assert_eq!(q(Criteria::external_id("ext-1")).await, vec![d.deal_a]);
    assert_eq!(q(Criteria::external_id("ext-2")).await, vec![]);
    assert_eq!(q(Criteria::Recorded(TimeRange::between(t(2000), t(3000)))).await, vec![d.deal_a, d.deal_b, d.deal_c, d.note]);
    assert_eq!(q(Criteria::Consumed(TimeRange::default())).await, vec![d.spent]);
    assert_eq!(q(Criteria::UnconsumedAt(t(1500))).await, vec![d.usd_bank, d.usd_bank2, d.eur, d.usd_conf, d.spent]);

    // Fungible columns.
    let fung = |f: FungibleCriteria| Criteria::Fungible(f);
    assert_eq!(q(fung(FungibleCriteria::default())).await, vec![d.usd_bank, d.usd_bank2, d.eur, d.usd_conf, d.spent, d.change]);
    assert_eq!(q(fung(FungibleCriteria::token("USD"))).await, vec![d.usd_bank, d.usd_bank2, d.usd_conf]);
    assert_eq!(q(fung(FungibleCriteria::token("USD").issuer(&w.bank2.name.to_string()))).await, vec![d.usd_bank2]);
    assert_eq!(q(fung(FungibleCriteria::default().owner(&w.alice_conf))).await, vec![d.usd_conf]);
    assert_eq!(q(fung(FungibleCriteria::default().quantity(Some(100), Some(260)))).await, vec![d.usd_bank, d.usd_bank2]);
    assert_eq!(q(fung(FungibleCriteria::default().quantity(Some(u64::MAX), None))).await, vec![]);
    assert_eq!(q(fung(FungibleCriteria::default().quantity(None, Some(u64::MAX)))).await.len(), 6);
    assert_eq!(q(fung(FungibleCriteria { tokens: Some(vec![]), ..Default::default() })).await, vec![]);

    // App columns.
    assert_eq!(q(Criteria::column_eq("trade_ref", "T-2")).await, vec![d.deal_b]);
    assert_eq!(q(Criteria::column_eq("notional", 3000)).await, vec![d.deal_c]);
    let either = ColumnCondition::In(vec!["T-1".into(), "T-9".into(), "T-2".into()]);
    assert_eq!(q(Criteria::Column { name: "trade_ref".into(), condition: either }).await, vec![d.deal_a, d.deal_b]);
    assert_eq!(q(Criteria::column_range("notional", Some(1000.into()), Some(3000.into()))).await, vec![d.deal_a, d.deal_c]);
    assert_eq!(q(Criteria::column_range("notional", Some(1001.into()), None)).await, vec![d.deal_b, d.deal_c]);
    assert_eq!(q(Criteria::column_range("trade_ref", Some("T-1".into()), Some("T-1".into()))).await, vec![d.deal_a]);
    assert_eq!(q(Criteria::column_range("trade_ref", None, None)).await, vec![d.deal_a, d.deal_b], "only states with a value");

    // Soft locks.
    assert_eq!(q(Criteria::Lock(LockFilter::Locked)).await, vec![d.deal_a]);
    assert_eq!(q(Criteria::Lock(LockFilter::LockedBy(d.lock))).await, vec![d.deal_a]);
    assert_eq!(q(Criteria::Lock(LockFilter::LockedBy(LockId(uuid::Uuid::from_u128(0xB))))).await, vec![]);
    assert_eq!(q(Criteria::Lock(LockFilter::Unlocked)).await.len(), 9);
    assert_eq!(w.vault.state(&d.deal_a).await.unwrap().expect("deal").lock_id, Some(d.lock));
}

async fn and_or(fx: &Fixture) {
    let w = World::new(fx).await;
    let d = data(&w).await;
    let usd = Criteria::Fungible(FungibleCriteria::token("USD"));
    assert_eq!(w.refs(&usd.clone().and(Criteria::participant(&w.alice.owning_key))).await, vec![d.usd_bank, d.usd_bank2]);
    assert_eq!(w.refs(&Criteria::column_eq("trade_ref", "T-1").or(Criteria::state_type("test.Note"))).await, vec![d.deal_a, d.note]);
    // (USD or EUR) and not consumed and (issued by the bank or a big deal): nesting.
    let nested = Criteria::And(vec![
        Criteria::Or(vec![
            usd,
            Criteria::Fungible(FungibleCriteria::token("EUR")),
            Criteria::column_range("notional", Some(4000.into()), None),
        ]),
        Criteria::unconsumed(),
        Criteria::Or(vec![
            Criteria::Fungible(FungibleCriteria::default().issuer(&w.bank.name.to_string())),
            Criteria::state_type("test.Deal"),
        ]),
    ]);
    assert_eq!(w.refs(&nested).await, vec![d.usd_bank, d.eur, d.usd_conf, d.deal_b]);
    assert_eq!(w.refs(&Criteria::Or(vec![])).await, vec![]);
    assert_eq!(w.refs(&Criteria::And(vec![])).await.len(), 10);
    assert_eq!(w.vault.count(&nested).await.unwrap(), 4);
}

/// The update feed filters in memory; the same criteria must select the same states as SQL.
async fn in_memory_filter_agrees_with_sql(fx: &Fixture) {
    let w = World::new(fx).await;
    let lock = LockId(uuid::Uuid::from_u128(1));
    let (deal, deal_id) = w.deal(Some("T-1"), Some("ext"), 1000, 1, &w.notary2);
    let criteria = vec![
        Criteria::All,
        Criteria::unconsumed(),
        Criteria::consumed(),
        Criteria::state_type("test.Cash"),
        Criteria::Contracts(vec!["test.DealContract".into()]),
        Criteria::notary(&w.notary2.name),
        Criteria::participant(&w.bob.owning_key),
        Criteria::linear_id(deal_id),
        Criteria::external_id("ext"),
        Criteria::Recorded(TimeRange::between(t(5), t(6))),
        Criteria::Recorded(TimeRange::between(t(6), t(7))),
        Criteria::Consumed(TimeRange::default()),
        Criteria::UnconsumedAt(t(5)),
        Criteria::UnconsumedAt(t(4)),
        Criteria::Fungible(FungibleCriteria::default()),
        Criteria::Fungible(FungibleCriteria::token("USD").issuer(&w.bank.name.to_string()).owner(&w.alice.owning_key)),
        Criteria::Fungible(FungibleCriteria::default().quantity(Some(10), Some(20))),
        Criteria::column_eq("trade_ref", "T-1"),
        Criteria::column_range("notional", Some(500.into()), Some(1000.into())),
        Criteria::Column { name: "trade_ref".into(), condition: ColumnCondition::In(vec!["x".into(), "T-1".into()]) },
        Criteria::Lock(LockFilter::Unlocked),
        Criteria::Lock(LockFilter::LockedBy(lock)),
        Criteria::state_type("test.Note").or(Criteria::Fungible(FungibleCriteria::token("EUR"))),
        Criteria::unconsumed().and(Criteria::Or(vec![])),
    ];
    let mut feeds: Vec<_> = criteria.iter().map(|c| w.vault.subscribe(c.clone()).expect("subscribe")).collect();
    let batch = tx(
        &[],
        vec![
            w.cash(&w.alice(), 10, "USD", &w.bank),
            w.cash(&w.anon(), 20, "USD", &w.bank2),
            w.cash(&w.alice(), 30, "EUR", &w.bank),
            deal,
            w.note(vec![w.alice(), w.bob.clone().into()]),
        ],
    );
    w.apply(&[&batch], t(5)).await;
    for (c, feed) in criteria.iter().zip(feeds.iter_mut()) {
        let from_feed: Vec<StateRef> = match feed.try_recv().expect("feed") {
            Some(update) => update.produced.iter().map(|s| s.state_ref).collect(),
            None => vec![],
        };
        assert_eq!(set(&from_feed), set(&w.refs(c).await), "{c:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Sorting and pagination

async fn sorting(fx: &Fixture) {
    let w = World::new(fx).await;
    let d = data(&w).await;
    let all = Criteria::All;
    let by = |c: SortColumn, dir: Direction| Sort::by(c, dir);
    let non_fungible = [d.deal_a, d.deal_b, d.deal_c, d.note];

    let quantity_desc = by(SortColumn::Quantity, Direction::Descending);
    let mut expected = vec![d.eur, d.usd_bank2, d.usd_bank, d.spent, d.change, d.usd_conf];
    expected.extend(non_fungible);
    assert_eq!(w.ordered(&all, &quantity_desc).await, expected, "largest first, equal quantities in recording order, NULLs last");
    let mut expected = vec![d.usd_conf, d.spent, d.change, d.usd_bank, d.usd_bank2, d.eur];
    expected.extend(non_fungible);
    assert_eq!(w.ordered(&all, &by(SortColumn::Quantity, Direction::Ascending)).await, expected);

    let trade_asc = by(SortColumn::named("trade_ref"), Direction::Ascending);
    let trade_desc = Sort::parse("trade_ref desc").unwrap();
    let deals = Criteria::state_type("test.Deal");
    assert_eq!(w.ordered(&deals, &trade_asc).await, vec![d.deal_a, d.deal_b, d.deal_c]);
    assert_eq!(w.ordered(&deals, &trade_desc).await, vec![d.deal_b, d.deal_a, d.deal_c]);
    assert_eq!(w.ordered(&deals, &Sort::parse("notional desc").unwrap()).await, vec![d.deal_b, d.deal_c, d.deal_a]);

    let recorded_desc = by(SortColumn::RecordedAt, Direction::Descending);
    assert_eq!(w.ordered(&all, &recorded_desc).await[0], d.change);
    assert_eq!(
        w.ordered(&all, &Sort::parse("consumed_at desc").unwrap()).await[0],
        d.spent,
        "the one consumed state first, then the unconsumed (NULL) ones"
    );

    let mut by_ref: Vec<StateRef> = w.refs(&all).await;
    by_ref.sort();
    assert_eq!(w.ordered(&all, &by(SortColumn::StateRef, Direction::Ascending)).await, by_ref);
    by_ref.reverse();
    assert_eq!(w.ordered(&all, &by(SortColumn::StateRef, Direction::Descending)).await, by_ref);

    let type_then_quantity = Sort::by(SortColumn::StateType, Direction::Descending).then(SortColumn::Quantity, Direction::Descending);
    let order = w.ordered(&all, &type_then_quantity).await;
    assert_eq!(order[..3], [d.note, d.deal_a, d.deal_b]);
    assert_eq!(order[4], d.eur);

    // Page by page (size 1, 2, 3), every order gives the same sequence as one big page.
    for sort in [quantity_desc, trade_asc, trade_desc, recorded_desc, type_then_quantity, Sort::parse("consumed_at, notional").unwrap()] {
        let whole = w.ordered(&all, &sort).await;
        for size in [1, 2, 3] {
            assert_eq!(w.paged(&all, &sort, size).await, whole, "{sort:?} in pages of {size}");
        }
    }
}

async fn cursor_pagination_over_10000_states(fx: &Fixture) {
    let w = World::new(fx).await;
    let mut expected = Vec::new();
    for batch in 0..10u64 {
        let outputs = (0..1000u64).map(|i| w.cash(&w.alice(), (batch * 1000 + i) % 97 + 1, "USD", &w.bank)).collect();
        let issue = tx(&[], outputs);
        w.apply(&[&issue], t(batch as i64)).await;
        expected.extend((0..1000).map(|i| at(&issue, i)));
    }
    // Recording order, 10,000 states in pages of 333: each exactly once, in order.
    let mut stream = w.vault.stream(Criteria::All, Sort::recording_order(), 333).expect("stream");
    let mut seen = Vec::new();
    while let Some(s) = stream.next().await.expect("next") {
        seen.push(s.state_ref);
    }
    assert_eq!(seen.len(), 10_000);
    assert_eq!(seen, expected);
    assert!(stream.next().await.unwrap().is_none(), "stays at the end");

    // By quantity, largest first, with many ties: each once, quantities never increase.
    let mut stream = w.vault.stream(Criteria::unconsumed(), Sort::parse("quantity desc").unwrap(), 1000).expect("stream");
    let mut seen = HashSet::new();
    let mut last = u64::MAX;
    let mut pages = 0;
    while let Some(page) = stream.next_page().await.expect("page") {
        pages += 1;
        assert!(page.len() <= 1000);
        for s in page {
            let cash: Cash = s.state.data.unpack().expect("cash");
            assert!(cash.amount.quantity <= last);
            last = cash.amount.quantity;
            assert!(seen.insert(s.state_ref), "{} twice", s.state_ref);
        }
    }
    assert_eq!((seen.len(), pages), (10_000, 10));
}

// ---------------------------------------------------------------------------------------------
// Aggregates

async fn aggregates_per_token_and_issuer(fx: &Fixture) {
    let w = World::new(fx).await;
    let d = data(&w).await;
    let balances = w.vault.balances(&Criteria::unconsumed()).await.expect("balances");
    let shown: Vec<(String, String, u128, u64)> =
        balances.iter().map(|b| (b.token.clone(), b.issuer.clone(), b.quantity, b.states)).collect();
    let bank = w.bank.name.to_string();
    let bank2 = w.bank2.name.to_string();
    assert_eq!(
        shown,
        vec![
            ("EUR".into(), bank.clone(), 300, 1),
            ("GBP".into(), bank.clone(), 75, 1),
            ("USD".into(), bank.clone(), 150, 2),
            ("USD".into(), bank2.clone(), 250, 1),
        ]
    );
    // Consumed states count when asked for.
    let all = w.vault.balances(&Criteria::All).await.expect("balances");
    assert_eq!(all[1].quantity, 150);

    // Grouped by owner: Alice's legal key and her confidential key apart.
    let rows = w.vault.aggregate(&Criteria::Fungible(FungibleCriteria::token("USD")), &[GroupBy::Owner]).await.expect("aggregate");
    let mut by_owner: Vec<(Option<ColumnValue>, u128)> = rows.iter().map(|r| (r.group[0].clone(), r.sum)).collect();
    by_owner.sort();
    let mut expected =
        vec![(Some(ColumnValue::Text(w.alice.owning_key.to_string())), 350), (Some(ColumnValue::Text(w.alice_conf.to_string())), 50)];
    expected.sort();
    assert_eq!(by_owner, expected);

    // By an app column and by status; NULL groups last; non-fungible states sum to zero.
    let rows = w.vault.aggregate(&Criteria::state_type("test.Deal"), &[GroupBy::Column("trade_ref".into())]).await.expect("aggregate");
    let groups: Vec<(Option<ColumnValue>, u64, u128)> = rows.iter().map(|r| (r.group[0].clone(), r.count, r.sum)).collect();
    assert_eq!(groups, vec![(Some("T-1".into()), 1, 0), (Some("T-2".into()), 1, 0), (None, 1, 0)]);
    let rows = w.vault.aggregate(&Criteria::All, &[GroupBy::Status, GroupBy::StateType]).await.expect("aggregate");
    let groups: Vec<(Vec<Option<ColumnValue>>, u64)> = rows.iter().map(|r| (r.group.clone(), r.count)).collect();
    assert_eq!(groups[0], (vec![Some("consumed".into()), Some("test.Cash".into())], 1));
    assert_eq!(w.vault.aggregate(&Criteria::All, &[]).await.expect("total")[0].count, 10);
    let _ = d;

    // Sums beyond 64 bits are exact.
    let big = tx(&[], vec![w.cash(&w.alice(), i64::MAX as u64, "XAU", &w.bank), w.cash(&w.alice(), i64::MAX as u64, "XAU", &w.bank)]);
    w.apply(&[&big], t(9000)).await;
    let gold = w.vault.balances(&Criteria::Fungible(FungibleCriteria::token("XAU"))).await.expect("gold");
    assert_eq!(gold.len(), 1);
    assert_eq!(gold[0].quantity, 2 * (i64::MAX as u128));
}

// ---------------------------------------------------------------------------------------------
// Soft locks and coin selection

async fn concurrent_selections_are_disjoint(fx: &Fixture) {
    let w = World::new(fx).await;
    let issue = tx(&[], (0..100).map(|_| w.cash(&w.alice(), 10, "USD", &w.bank)).collect());
    w.apply(&[&issue], t(1)).await;
    let owners = vec![w.alice.owning_key.clone()];
    // 50 selections of 20 need every one of the 100 states: no slack at all.
    let mut tasks = Vec::new();
    for i in 0..50u128 {
        let vault = w.vault.clone();
        let owners = owners.clone();
        tasks.push(tokio::spawn(async move {
            vault.select_fungible("USD", &IssuerFilter::Any, 20, &owners, LockId(uuid::Uuid::from_u128(1000 + i))).await
        }));
    }
    let mut taken = HashSet::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let selection = task.await.expect("task").unwrap_or_else(|e| panic!("selection {i}: {e}"));
        assert_eq!(selection.total, 20);
        assert_eq!(selection.states.len(), 2);
        for s in &selection.states {
            assert_eq!(s.lock_id, Some(LockId(uuid::Uuid::from_u128(1000 + i as u128))));
            assert!(taken.insert(s.state_ref), "{} selected twice", s.state_ref);
        }
    }
    assert_eq!(taken.len(), 100);
    assert_eq!(w.vault.count(&Criteria::Lock(LockFilter::Locked)).await.unwrap(), 100);
    let err = w.vault.select_fungible("USD", &IssuerFilter::Any, 1, &owners, LockId(uuid::Uuid::from_u128(1))).await.unwrap_err();
    assert!(matches!(err, VaultError::InsufficientBalance { requested: 1, available_unlocked: 0, locked: 1000, .. }), "{err}");
}

async fn insufficient_balance_only_when_short(fx: &Fixture) {
    let w = World::new(fx).await;
    let issue = tx(
        &[],
        vec![
            w.cash(&w.alice(), 10, "USD", &w.bank),
            w.cash(&w.alice(), 20, "USD", &w.bank),
            w.cash(&w.alice(), 30, "USD", &w.bank),
            w.cash(&w.alice(), 1000, "USD", &w.bank2),
            w.cash(&w.anon(), 500, "USD", &w.bank),
            w.cash(&w.alice(), 0, "USD", &w.bank),
        ],
    );
    w.apply(&[&issue], t(1)).await;
    let alice = vec![w.alice.owning_key.clone()];
    let bank_only = IssuerFilter::OneOf(vec![w.bank.name.to_string()]);
    let (l1, l2) = (LockId(uuid::Uuid::from_u128(1)), LockId(uuid::Uuid::from_u128(2)));
    w.vault.lock(l1, &[at(&issue, 2)]).await.expect("lock the 30");

    let err = w.vault.select_fungible("USD", &bank_only, 31, &alice, l2).await.unwrap_err();
    match &err {
        VaultError::InsufficientBalance { token, requested, available_unlocked, locked } => {
            assert_eq!((token.as_str(), *requested, *available_unlocked, *locked), ("USD", 31, 30, 30));
        }
        other => panic!("expected InsufficientBalance, got {other}"),
    }
    assert_eq!(err.code(), "VAULT-INSUFFICIENT-BALANCE");
    assert!(err.to_string().contains("requested 31, available unlocked 30, locked by flows 30"), "{err}");
    assert_eq!(w.vault.count(&Criteria::Lock(LockFilter::LockedBy(l2))).await.unwrap(), 0, "a failed selection locks nothing");

    // Exactly the unlocked balance: both states, largest first.
    let s = w.vault.select_fungible("USD", &bank_only, 30, &alice, l2).await.expect("exactly enough");
    assert_eq!(s.states.iter().map(|s| s.state_ref).collect::<Vec<_>>(), vec![at(&issue, 1), at(&issue, 0)]);
    assert_eq!(s.total, 30);
    // Other issuers and owners only when allowed.
    let l3 = LockId(uuid::Uuid::from_u128(3));
    let s = w.vault.select_fungible("USD", &IssuerFilter::Any, 600, &alice, l3).await.expect("any issuer");
    assert_eq!(s.states.iter().map(|s| s.state_ref).collect::<Vec<_>>(), vec![at(&issue, 3)]);
    let both = vec![w.alice.owning_key.clone(), w.alice_conf.clone()];
    let s = w.vault.select_fungible("USD", &bank_only, 400, &both, LockId(uuid::Uuid::from_u128(4))).await.expect("confidential owner");
    assert_eq!(s.states.iter().map(|s| s.state_ref).collect::<Vec<_>>(), vec![at(&issue, 4)]);
    let err = w.vault.select_fungible("EUR", &IssuerFilter::Any, 1, &alice, l3).await.unwrap_err();
    assert!(matches!(err, VaultError::InsufficientBalance { available_unlocked: 0, locked: 0, .. }), "{err}");

    for (amount, owners, issuers) in
        [(0, alice.clone(), IssuerFilter::Any), (1, vec![], IssuerFilter::Any), (1, alice.clone(), IssuerFilter::OneOf(vec![]))]
    {
        let err = w.vault.select_fungible("USD", &issuers, amount, &owners, l3).await.unwrap_err();
        assert!(matches!(err, VaultError::InvalidSelection { .. }), "{err}");
    }
}

async fn locks_and_release(fx: &Fixture) {
    let w = World::new(fx).await;
    let issue = tx(&[], (0..4).map(|i| w.cash(&w.alice(), 10 + i, "USD", &w.bank)).collect());
    w.apply(&[&issue], t(1)).await;
    let spend = tx(&[at(&issue, 3)], vec![w.cash(&w.bob.clone().into(), 13, "USD", &w.bank)]);
    w.apply(&[&spend], t(2)).await;
    let (a, b) = (LockId(uuid::Uuid::from_u128(0xA)), LockId(uuid::Uuid::from_u128(0xB)));
    w.vault.lock(a, &[at(&issue, 0), at(&issue, 1)]).await.expect("lock");
    w.vault.lock(a, &[at(&issue, 0)]).await.expect("locking again for the same lock is fine");

    let unknown = StateRef { txhash: treaty_core::SecureHash([9; 32]), index: 0 };
    let err = w.vault.lock(b, &[at(&issue, 2), at(&issue, 1), at(&issue, 3), unknown]).await.unwrap_err();
    match &err {
        VaultError::StatesUnavailable { lock_id, unavailable } => {
            assert_eq!(*lock_id, b);
            let mut got = unavailable.clone();
            got.sort_by_key(|(r, _)| *r);
            let mut want =
                vec![(at(&issue, 1), Unavailable::LockedBy(a)), (at(&issue, 3), Unavailable::Consumed), (unknown, Unavailable::NotInVault)];
            want.sort_by_key(|(r, _)| *r);
            assert_eq!(got, want);
        }
        other => panic!("expected StatesUnavailable, got {other}"),
    }
    assert!(err.to_string().contains("is consumed") && err.to_string().contains(&format!("locked by {a}")), "{err}");
    assert_eq!(w.vault.state(&at(&issue, 2)).await.unwrap().expect("s").lock_id, None, "all or nothing");

    let owners = vec![w.alice.owning_key.clone()];
    let err = w.vault.select_fungible("USD", &IssuerFilter::Any, 30, &owners, b).await.unwrap_err();
    assert!(matches!(err, VaultError::InsufficientBalance { available_unlocked: 12, locked: 21, .. }), "{err}");
    assert_eq!(w.vault.release_states(a, &[at(&issue, 1), at(&issue, 2)]).await.unwrap(), 1);
    assert_eq!(w.vault.release(a).await.unwrap(), 1);
    assert_eq!(w.vault.release(a).await.unwrap(), 0);
    let s = w.vault.select_fungible("USD", &IssuerFilter::Any, 30, &owners, b).await.expect("released states are free");
    assert_eq!(s.total, 33);
    assert_eq!(w.vault.release(b).await.unwrap(), 3);
    assert_eq!(w.vault.count(&Criteria::Lock(LockFilter::Locked)).await.unwrap(), 0);
}

async fn consumption_releases_locks(fx: &Fixture) {
    let w = World::new(fx).await;
    let issue = tx(&[], vec![w.cash(&w.alice(), 10, "USD", &w.bank), w.cash(&w.alice(), 20, "USD", &w.bank)]);
    w.apply(&[&issue], t(1)).await;
    let flow = LockId(uuid::Uuid::from_u128(7));
    let s = w.vault.select_fungible("USD", &IssuerFilter::Any, 25, std::slice::from_ref(&w.alice.owning_key), flow).await.expect("select");
    let inputs: Vec<StateRef> = s.states.iter().map(|s| s.state_ref).collect();
    let pay = tx(&inputs, vec![w.cash(&w.bob.clone().into(), 25, "USD", &w.bank), w.cash(&w.alice(), 5, "USD", &w.bank)]);
    w.apply(&[&pay], t(2)).await;
    for r in &inputs {
        let st = w.vault.state(r).await.unwrap().expect("kept");
        assert_eq!((st.status, st.lock_id), (Status::Consumed, None));
    }
    assert_eq!(w.vault.count(&Criteria::Lock(LockFilter::LockedBy(flow))).await.unwrap(), 0);
    assert_eq!(w.vault.release(flow).await.unwrap(), 0, "nothing left to release");
    assert_eq!(w.vault.state(&at(&pay, 1)).await.unwrap().expect("change").lock_id, None);
    // Coin selection's `consumed` flag follows each fungible state's status, in the same
    // transaction: the two consumed inputs, not the payment's outputs.
    let flags = "SELECT COUNT(*) FROM treaty_vault_fungible f JOIN treaty_vault_states s ON s.seq = f.state_seq";
    assert_eq!(w.sql_i64(&format!("{flags} WHERE f.consumed = 1")).await, 2);
    assert_eq!(w.sql_i64(&format!("{flags} WHERE (f.consumed = 1) <> (s.status = 'consumed')")).await, 0);
    // A consumed coin is not offered again: 5 of the 30 are left.
    let short = w
        .vault
        .select_fungible("USD", &IssuerFilter::Any, 6, std::slice::from_ref(&w.alice.owning_key), LockId(uuid::Uuid::from_u128(8)))
        .await;
    assert!(short.is_err(), "{short:?}");
}

// ---------------------------------------------------------------------------------------------
// Plain SQL

async fn sql_views(fx: &Fixture) {
    use sqlx::Row;
    let w = World::new(fx).await;
    let d = data(&w).await;
    // Balances with plain SQL, as a reporting tool would.
    let sql = "SELECT token, issuer, CAST(SUM(quantity) AS BIGINT) AS total, COUNT(*) AS n FROM vault_fungible_states \
               WHERE status = 'unconsumed' GROUP BY token, issuer ORDER BY token, issuer";
    let rows: Vec<(String, String, i64, i64)> = match w.db.pool() {
        Pool::Sqlite(p) => {
            sqlx::query(sql).fetch_all(p).await.expect(sql).iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect()
        }
        Pool::Postgres(p) => {
            sqlx::query(sql).fetch_all(p).await.expect(sql).iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect()
        }
    };
    let via_api: Vec<(String, String, i64, i64)> = w
        .vault
        .balances(&Criteria::unconsumed())
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.token, b.issuer, b.quantity as i64, b.states as i64))
        .collect();
    assert_eq!(rows, via_api);

    // Join a table of the user's own, by transaction id (upper-case hex, as Treaty shows ids).
    let setup = format!(
        "CREATE TABLE my_trades (tx_id TEXT NOT NULL, desk TEXT NOT NULL); INSERT INTO my_trades VALUES ('{}', 'rates')",
        d.deal_a.txhash
    );
    let join = "SELECT v.state_ref, v.type_id, m.desk, v.consuming_tx, v.linear_id, v.external_id FROM vault_states v \
                JOIN my_trades m ON m.tx_id = v.tx_id WHERE v.type_id = 'test.Deal' ORDER BY v.output_index";
    type Joined = (String, String, String, Option<String>, Option<String>, Option<String>);
    let joined: Vec<Joined> = match w.db.pool() {
        Pool::Sqlite(p) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(setup)).execute(p).await.expect("setup");
            sqlx::query(join)
                .fetch_all(p)
                .await
                .expect(join)
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
                .collect()
        }
        Pool::Postgres(p) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(setup)).execute(p).await.expect("setup");
            sqlx::query(join)
                .fetch_all(p)
                .await
                .expect(join)
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
                .collect()
        }
    };
    assert_eq!(joined.len(), 3);
    assert_eq!(joined[0].0, d.deal_a.to_string(), "state_ref reads as StateRef displays");
    assert_eq!((joined[0].1.as_str(), joined[0].2.as_str(), joined[0].3.clone()), ("test.Deal", "rates", None));
    assert_eq!(joined[0].4, Some(d.deal_a_id.to_string()));
    assert_eq!(joined[0].5.as_deref(), Some("ext-1"));

    assert_eq!(
        w.sql_i64(&format!("SELECT COUNT(*) FROM vault_states WHERE consuming_tx IS NOT NULL AND state_ref = '{}'", d.spent)).await,
        1
    );
    assert_eq!(w.sql_i64("SELECT COUNT(*) FROM vault_state_columns WHERE name = 'notional' AND int_value >= 3000").await, 2);
    assert_eq!(w.sql_i64(&format!("SELECT COUNT(*) FROM vault_state_participants WHERE owning_key = '{}'", w.bob.owning_key)).await, 4);
    assert_eq!(w.sql_i64(&format!("SELECT COUNT(*) FROM vault_states WHERE lock_id = '{}'", d.lock)).await, 1);
}

// ---------------------------------------------------------------------------------------------
// Tracking

async fn track_snapshot_and_updates(fx: &Fixture) {
    let w = World::new(fx).await;
    let issue = tx(&[], vec![w.cash(&w.alice(), 10, "USD", &w.bank), w.cash(&w.alice(), 20, "USD", &w.bank)]);
    w.apply(&[&issue], t(1)).await;
    let usd = Criteria::unconsumed().and(Criteria::Fungible(FungibleCriteria::token("USD")));
    let mut tracked = w.vault.track(usd, &Sort::recording_order(), 1).await.expect("track");
    assert_eq!(tracked.snapshot.states.iter().map(|s| s.state_ref).collect::<Vec<_>>(), vec![at(&issue, 0)]);
    assert!(tracked.snapshot.next.is_some(), "a snapshot page of one, more to read");
    let mut spent_feed = w.vault.subscribe(Criteria::consumed()).expect("subscribe");

    // Produced: only the USD output concerns the feed.
    let more = tx(&[], vec![w.cash(&w.alice(), 5, "EUR", &w.bank), w.cash(&w.alice(), 7, "USD", &w.bank)]);
    w.apply(&[&more], t(2)).await;
    let u = tracked.updates.recv().await.expect("update");
    assert_eq!(u.tx_id, more.id());
    assert_eq!(u.produced.iter().map(|s| s.state_ref).collect::<Vec<_>>(), vec![at(&more, 1)]);
    assert!(u.consumed.is_empty());

    // Irrelevant to the feed: nothing delivered.
    let notes = tx(&[], vec![w.note(vec![w.alice()])]);
    w.apply(&[&notes], t(3)).await;
    assert!(tracked.updates.try_recv().expect("feed").is_none());

    // Consumed: the state leaves "unconsumed USD" and enters "consumed".
    let pay = tx(&[at(&issue, 0)], vec![w.cash(&w.bob.clone().into(), 10, "USD", &w.bank)]);
    w.apply(&[&pay], t(4)).await;
    let u = tracked.updates.recv().await.expect("update");
    assert_eq!(u.tx_id, pay.id());
    assert!(u.produced.is_empty(), "Bob's output is not ours");
    let VaultState { state_ref, status, consumed_at, consuming_tx, .. } = u.consumed[0].clone();
    assert_eq!((state_ref, status, consumed_at, consuming_tx), (at(&issue, 0), Status::Consumed, Some(t(4)), Some(pay.id())));
    let u = spent_feed.recv().await.expect("update");
    assert_eq!(u.consumed.iter().map(|s| s.state_ref).collect::<Vec<_>>(), vec![at(&issue, 0)]);
    assert!(spent_feed.try_recv().expect("feed").is_none(), "earlier updates produced nothing consumed");

    // Idempotent re-application publishes nothing.
    w.apply(&[&pay], t(5)).await;
    assert!(tracked.updates.try_recv().expect("feed").is_none());
}

// ---------------------------------------------------------------------------------------------
// Scheduled activities

/// A state asking its `by` party to run flow "Remind" at `due`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Reminder {
    due: Timestamp,
    by: AbstractParty,
    parties: Vec<AbstractParty>,
}

impl ContractState for Reminder {
    const TYPE_ID: &'static str = "test.Reminder";
    const CONTRACT: &'static str = "test.ReminderContract";
    fn participants(&self) -> Vec<AbstractParty> {
        self.parties.clone()
    }
}

async fn scheduled_activities(fx: &Fixture) {
    let w = World::new(fx).await;
    w.vault
        .register(TypedSchema::<Reminder>::new().scheduled(|r| {
            Some(ScheduledActivity { at: r.due, flow: "Remind".into(), args: format!("{{\"due\":{}}}", r.due.micros()), by: r.by.clone() })
        }))
        .expect("reminder schema");
    let both = vec![w.alice(), w.bob.clone().into()];
    let reminder = |due: i64, by: AbstractParty| {
        let r = Reminder { due: t(due), by, parties: both.clone() };
        TransactionState::new(&r, "test.ReminderContract", w.notary.clone(), AttachmentConstraint::AlwaysAccept)
    };
    let issue = tx(&[], vec![reminder(200, w.alice()), reminder(50, w.bob.clone().into()), reminder(100, w.anon())]);
    w.apply(&[&issue], t(1)).await;
    // The scheduler is woken (a permit waits for it).
    tokio::time::timeout(std::time::Duration::from_secs(5), w.vault.schedule_changed().notified()).await.expect("woken");

    // Bob's reminder is stored (Alice participates) but is Bob's to run.
    assert_eq!(w.refs(&Criteria::unconsumed()).await.len(), 3);
    assert!(w.vault.due_activities(t(99), 10).await.expect("due").is_empty());
    let due = w.vault.due_activities(t(150), 10).await.expect("due");
    assert_eq!(due.len(), 1);
    let first = &due[0];
    assert_eq!((first.state_ref, first.at, first.flow.as_str()), (at(&issue, 2), t(100), "Remind"));
    assert_eq!(first.args, format!("{{\"due\":{}}}", t(100).micros()));
    assert_eq!(first.client_id(), format!("scheduled:{}", at(&issue, 2)));
    let all = w.vault.due_activities(Timestamp(i64::MAX), 10).await.expect("due");
    assert_eq!(all.iter().map(|d| d.state_ref).collect::<Vec<_>>(), vec![at(&issue, 2), at(&issue, 0)]);
    assert_eq!(w.vault.due_activities(Timestamp(i64::MAX), 1).await.expect("due").len(), 1, "limit");

    // Started once: not due again, and marking it again changes nothing.
    assert!(w.vault.mark_started(&at(&issue, 2), "flow-1").await.expect("mark"));
    assert!(!w.vault.mark_started(&at(&issue, 2), "flow-2").await.expect("mark again"));
    assert_eq!(w.vault.started_activity(&at(&issue, 2)).await.expect("started"), Some("flow-1".to_string()));
    assert_eq!(w.vault.started_activity(&at(&issue, 0)).await.expect("started"), None);
    assert_eq!(
        w.vault.due_activities(Timestamp(i64::MAX), 10).await.expect("due").iter().map(|d| d.state_ref).collect::<Vec<_>>(),
        vec![at(&issue, 0)]
    );

    // A consumed state's activity is never due.
    let spend = tx(&[at(&issue, 0)], vec![]);
    w.apply(&[&spend], t(2)).await;
    assert!(w.vault.due_activities(Timestamp(i64::MAX), 10).await.expect("due").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Bad input

async fn bad_input_is_named(fx: &Fixture) {
    let w = World::new(fx).await;
    data(&w).await;
    let all = Criteria::All;
    let order = Sort::recording_order();
    for size in [0, MAX_PAGE_SIZE + 1] {
        let err = w.vault.query(&all, &order, &PageSpec::first(size)).await.unwrap_err();
        assert!(matches!(err, VaultError::InvalidPageSize { .. }), "{err}");
        assert!(err.to_string().contains(&format!("page size {size}")) && err.to_string().contains("10000"), "{err}");
        assert!(w.vault.stream(all.clone(), order.clone(), size).is_err());
    }
    let err = w.vault.query(&all, &Sort::parse("colour desc").unwrap(), &PageSpec::first(10)).await.unwrap_err();
    assert!(matches!(&err, VaultError::UnknownSortColumn { name, .. } if name == "colour"), "{err}");
    assert!(err.to_string().contains("recorded_at") && err.to_string().contains("trade_ref"), "lists the known columns: {err}");
    assert!(matches!(Sort::parse("quantity sideways"), Err(VaultError::InvalidSort { .. })));
    // A column twice, or more keys than any index serves: each key multiplies the condition
    // every next page is read with.
    let twice = Sort::parse("recorded_at asc, quantity, recorded_at desc").unwrap_err();
    assert!(twice.to_string().contains("recorded_at is sorted on twice"), "{twice}");
    let keys: Vec<String> = (0..=treaty_vault::MAX_SORT_KEYS).map(|i| format!("col{i}")).collect();
    let many = Sort::parse(&keys.join(", ")).unwrap_err();
    assert!(many.to_string().contains("more than 8 sort keys"), "{many}");
    assert_eq!(Sort::parse(&keys[..treaty_vault::MAX_SORT_KEYS].join(", ")).unwrap().keys().len(), treaty_vault::MAX_SORT_KEYS);

    let err = w.vault.query(&Criteria::column_eq("colour", "red"), &order, &PageSpec::first(10)).await.unwrap_err();
    assert!(matches!(&err, VaultError::UnknownColumn { name, .. } if name == "colour"), "{err}");
    assert!(err.to_string().contains("notional, trade_ref"), "{err}");
    assert!(matches!(w.vault.count(&Criteria::column_eq("colour", "red")).await, Err(VaultError::UnknownColumn { .. })));
    assert!(matches!(w.vault.subscribe(Criteria::column_eq("colour", "red")), Err(VaultError::UnknownColumn { .. })));
    assert!(matches!(w.vault.aggregate(&all, &[GroupBy::Column("colour".into())]).await, Err(VaultError::UnknownColumn { .. })));
    let err = w.vault.count(&Criteria::column_eq("notional", "big")).await.unwrap_err();
    assert!(matches!(err, VaultError::ColumnTypeMismatch { expected: "integer", found: "text", .. }), "{err}");

    for bad in ["", "not a cursor", "00ff", "zz"] {
        let err = Cursor::parse(bad).unwrap_err();
        assert!(matches!(err, VaultError::InvalidCursor { .. }), "{bad:?}: {err}");
    }
    // A real cursor, for another sort order.
    let page = w.vault.query(&all, &order, &PageSpec::first(2)).await.expect("page");
    let cursor = page.next.expect("more");
    let err = w.vault.query(&all, &Sort::parse("quantity").unwrap(), &PageSpec::after(2, cursor.clone())).await.unwrap_err();
    assert!(err.to_string().contains("different sort order"), "{err}");
    let round_trip: Cursor = cursor.as_str().parse().expect("parse");
    assert_eq!(w.vault.query(&all, &order, &PageSpec::after(2, round_trip)).await.expect("continues").states.len(), 2);

    // Schemas that cannot be registered.
    let err = w.vault.register(fungible(|c: &Cash| FungibleColumns::issued(&c.owner, &c.amount))).unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");
    let err = w.vault.register(TypedSchema::<Note>::new().integer("quantity", |_| Some(1))).unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    let err = w.vault.register(TypedSchema::<Note>::new().integer("trade_ref", |_| Some(1))).unwrap_err();
    assert!(err.to_string().contains("declared integer here but text"), "{err}");
    let err = w.vault.register(TypedSchema::<Note>::new().text("Bad Name", |_| None)).unwrap_err();
    assert!(matches!(err, VaultError::InvalidSchema { .. }), "{err}");
    w.vault.register(TypedSchema::<Note>::new().text("text", |n| Some(n.text.clone()))).expect("a valid schema still registers");
}

/// The node spawns vault calls on a multi-threaded runtime: every future must be `Send`.
#[allow(dead_code)]
fn futures_are_send(
    vault: &Vault,
    tx: &WireTransaction,
    ours: &(dyn Fn(&PublicKey) -> bool + Sync),
    stream: &mut treaty_vault::StateStream,
) {
    fn send<T: Send>(_: T) {}
    let (c, s, l) = (Criteria::All, Sort::recording_order(), LockId(uuid::Uuid::nil()));
    send(vault.apply(&[tx], ours, Timestamp(0)));
    send(vault.query(&c, &s, &PageSpec::first(1)));
    send(vault.count(&c));
    send(vault.aggregate(&c, &[]));
    send(vault.balances(&c));
    send(vault.track(c.clone(), &s, 1));
    send(vault.lock(l, &[]));
    send(vault.release(l));
    send(vault.select_fungible("USD", &IssuerFilter::Any, 1, &[], l));
    send(vault.state(&StateRef { txhash: treaty_core::SecureHash([0; 32]), index: 0 }));
    send(stream.next());
}
