//! One FlowStore suite, run against the in-memory store, SQLite and PostgreSQL (a throw-away
//! server from scripts/pg.sh; scripts/test.sh starts it and requires it).

use std::path::PathBuf;

use treaty_core::X500Name;
use treaty_flows::*;
use treaty_storage::Database;

fn record(name: &str, client: Option<&str>) -> FlowRecord {
    FlowRecord {
        id: FlowId::random(),
        name: name.into(),
        version: 3,
        args: br#"{"x":1}"#.to_vec(),
        status: FlowStatus::Runnable,
        result: None,
        error: None,
        client_id: client.map(str::to_string),
        initiator: None,
        created_at: 1,
        updated_at: 1,
    }
}

async fn suite<S: FlowStore>(store: &S) {
    // create, get, list in creation order, client-id and id deduplication
    let a = record("Pay", Some("client-1"));
    let mut b = record("Ping", None);
    let party: X500Name = "O=Bob,L=Paris,C=FR".parse().unwrap();
    b.initiator = Some((party.clone(), u64::MAX - 7));
    assert_eq!(store.create(a.clone()).await.unwrap(), Created::New);
    assert_eq!(store.create(b.clone()).await.unwrap(), Created::New);
    assert_eq!(store.create(a.clone()).await.unwrap(), Created::Existing(a.id));
    assert_eq!(store.create(record("Pay", Some("client-1"))).await.unwrap(), Created::Existing(a.id));
    assert_eq!(store.get(a.id).await.unwrap().unwrap(), a);
    assert_eq!(store.get(b.id).await.unwrap().unwrap().initiator, Some((party.clone(), u64::MAX - 7)));
    assert_eq!(store.list().await.unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), vec![a.id, b.id]);
    assert!(store.get(FlowId::random()).await.unwrap().is_none());

    // the journal: in order, only ever the next index
    let entries = [Entry::Now(5), Entry::Random(u64::MAX), Entry::Progress("step".into())];
    store.append(a.id, 0, &entries[..1]).await.unwrap();
    store.append(a.id, 1, &entries[1..]).await.unwrap(); // several at once
    assert!(store.append(a.id, 1, &[Entry::Now(0)]).await.is_err(), "an index was appended twice");
    assert!(store.append(a.id, 7, &[Entry::Now(0)]).await.is_err(), "a gap was appended");
    assert!(store.append(a.id, 2, &[Entry::Now(0), Entry::Now(1)]).await.is_err(), "an overlapping batch was appended");
    assert_eq!(store.journal(a.id).await.unwrap(), entries.to_vec(), "a refused batch left nothing behind");
    assert!(store.journal(b.id).await.unwrap().is_empty());

    // statuses
    store.set_status(a.id, FlowStatus::Completed, Some(b"42".to_vec()), None).await.unwrap();
    let done = store.get(a.id).await.unwrap().unwrap();
    assert_eq!((done.status, done.result.as_deref()), (FlowStatus::Completed, Some(&b"42"[..])));
    assert_eq!(store.runnable().await.unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), vec![b.id]);
    store.set_status(b.id, FlowStatus::Hospitalized, None, Some("why".into())).await.unwrap();
    assert_eq!(store.get(b.id).await.unwrap().unwrap().error.as_deref(), Some("why"));
    assert!(store.runnable().await.unwrap().is_empty());
    assert!(store.set_status(FlowId::random(), FlowStatus::Killed, None, None).await.is_err());

    // parkings: found by session, listed for start-up while the journal has not grown
    let c = record("Ask", None);
    let mut d = record("Answer", None);
    d.initiator = Some((party.clone(), 9));
    store.create(c.clone()).await.unwrap();
    store.create(d.clone()).await.unwrap();
    store.append(c.id, 0, &[Entry::Opened { session: u64::MAX, party: party.clone() }]).await.unwrap();
    let parking = Parking { id: c.id, journal_len: 1, wake_at: None, sessions: vec![(party.clone(), u64::MAX, true)] };
    store.park(&parking).await.unwrap();
    store.park(&parking).await.unwrap(); // parking again replaces
    assert_eq!(store.parked_session(&party, u64::MAX, true).await.unwrap(), Some(c.id));
    assert_eq!(store.parked_session(&party, u64::MAX, false).await.unwrap(), None, "the side of the session matters");
    let parked = store.parked().await.unwrap();
    assert_eq!(parked, vec![ParkedFlow { id: c.id, name: "Ask".into(), version: 3, responder: false, wake_at: None }]);
    assert_eq!(store.awake().await.unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), vec![d.id]);
    // a journal that grew makes the parking stale: the flow is awake again
    store.append(c.id, 1, &[Entry::Now(1)]).await.unwrap();
    assert!(store.parked().await.unwrap().is_empty());
    assert_eq!(store.awake().await.unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), vec![c.id, d.id]);
    // parked again, asleep, next to a parked responder
    store.park(&Parking { wake_at: Some(77), journal_len: 2, ..parking.clone() }).await.unwrap();
    store.park(&Parking { id: d.id, journal_len: 0, wake_at: None, sessions: vec![(party.clone(), 9, false)] }).await.unwrap();
    let parked = store.parked().await.unwrap();
    assert_eq!(
        parked.iter().map(|p| (p.id, p.wake_at, p.responder)).collect::<Vec<_>>(),
        vec![(c.id, Some(77), false), (d.id, None, true)]
    );
    assert!(store.awake().await.unwrap().is_empty());
    // a flow that ends is parked no more
    store.set_status(c.id, FlowStatus::Completed, None, None).await.unwrap();
    assert_eq!(store.parked_session(&party, u64::MAX, true).await.unwrap(), None);
    assert_eq!(store.parked().await.unwrap().iter().map(|p| p.id).collect::<Vec<_>>(), vec![d.id]);

    // ending a run: its pending journal entries and its status in one write
    let e = record("Issue", None);
    store.create(e.clone()).await.unwrap();
    store.append(e.id, 0, &[Entry::Now(1)]).await.unwrap();
    let pending = [Entry::Progress("recording".into())];
    let end = End {
        journal_from: 1,
        journal: &pending,
        status: FlowStatus::Completed,
        result: Some(b"7".to_vec()),
        error: None,
        parked: false,
        updated_at: 42,
    };
    store.end(e.id, end).await.unwrap();
    assert_eq!(store.journal(e.id).await.unwrap(), vec![Entry::Now(1), Entry::Progress("recording".into())]);
    assert_eq!(store.get(e.id).await.unwrap().unwrap().status, FlowStatus::Completed);
    assert_eq!(store.get(e.id).await.unwrap().unwrap().updated_at, 42, "the store writes the time the engine gave");
    // never parked, nothing pending: the status alone
    let f = record("Issue", None);
    store.create(f.clone()).await.unwrap();
    let end = End {
        journal_from: 0,
        journal: &[],
        status: FlowStatus::Failed,
        result: None,
        error: Some("no".into()),
        parked: false,
        updated_at: 42,
    };
    store.end(f.id, end).await.unwrap();
    assert_eq!(store.get(f.id).await.unwrap().unwrap().error.as_deref(), Some("no"));
    let end = End { journal_from: 0, journal: &[], status: FlowStatus::Failed, result: None, error: None, parked: false, updated_at: 42 };
    assert!(store.end(FlowId::random(), end).await.is_err(), "a flow that does not exist was ended");
    // the parked responder ends, and its parking goes with it
    let end = End { journal_from: 0, journal: &[], status: FlowStatus::Completed, result: None, error: None, parked: true, updated_at: 42 };
    store.end(d.id, end).await.unwrap();
    assert!(store.parked().await.unwrap().is_empty());
}

#[tokio::test]
async fn memory() {
    suite(&MemoryFlowStore::default()).await;
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("treaty-flows-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test]
async fn sqlite_and_it_survives_reopening() {
    let dir = scratch("sqlite");
    let db = Database::open("sqlite://node.db", &dir).await.unwrap();
    let store = SqlFlowStore::open(&db).await.unwrap();
    suite(&store).await;
    let flows = store.list().await.unwrap();
    db.close().await;
    let db = Database::open("sqlite://node.db", &dir).await.unwrap();
    let store = SqlFlowStore::open(&db).await.unwrap();
    assert_eq!(store.list().await.unwrap(), flows);
    assert_eq!(store.journal(flows[0].id).await.unwrap().len(), 3);
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres() {
    let Ok(admin) = std::env::var("TREATY_TEST_POSTGRES_URL") else {
        assert!(
            !std::env::var("TREATY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1"),
            "TREATY_REQUIRE_POSTGRES=1 but TREATY_TEST_POSTGRES_URL is not set: run scripts/test.sh or eval \"$(scripts/pg.sh start)\""
        );
        eprintln!("skipped: TREATY_TEST_POSTGRES_URL not set (eval \"$(scripts/pg.sh start)\" to run the PostgreSQL tests)");
        return;
    };
    let name = format!("treaty_flows_{}", std::process::id());
    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&pool).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let db = Database::open(&format!("{base}/{name}"), &std::env::temp_dir()).await.unwrap();
    suite(&SqlFlowStore::open(&db).await.unwrap()).await;
    db.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&pool).await.unwrap();
}
