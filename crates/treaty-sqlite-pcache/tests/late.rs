//! Installing after SQLite has started is refused, says so, and leaves SQLite working.

#[test]
fn installing_after_a_connection_is_refused_and_sqlite_keeps_working() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let refused = treaty_sqlite_pcache::install().unwrap_err();
    assert_eq!(refused, treaty_sqlite_pcache::Refused::AlreadyStarted);
    assert!(refused.to_string().contains("already started"), "{refused}");
    // The first answer stands.
    assert_eq!(treaty_sqlite_pcache::install(), Err(treaty_sqlite_pcache::Refused::AlreadyStarted));
    conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap();
    let x: i64 = conn.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(x, 1);
    drop(rusqlite::Connection::open_in_memory().unwrap());
}
