//! [`FlowStore`] in the node database (SQLite or PostgreSQL): tables `treaty_flows`,
//! `treaty_flow_journal`, and for parked flows `treaty_flow_parked` and
//! `treaty_flow_parked_sessions`, owned by this crate ([`FLOW_MIGRATIONS`]). Journal entries
//! are stored as their BCS bytes; a session id as a bit-cast signed 64-bit integer.

use sqlx::Row;
use treaty_core::{X500Name, encoding};
use treaty_net::messaging::StoreError;
use treaty_storage::writer::rusqlite::{self, types::Value};
use treaty_storage::writer::{numbered, sqlite_error};
use treaty_storage::{Database, Migration, Migrations, Pool, StorageError, WriteTransaction};

use crate::journal::{Entry, FlowId};
use crate::store::{Created, End, FlowRecord, FlowStatus, FlowStore, ParkedFlow, Parking};

/// The flows component's migrations.
pub const FLOW_MIGRATIONS: Migrations = Migrations {
    component: "flows",
    sqlite: &[
        Migration { version: 1, description: "flows and their journals", sql: include_str!("../migrations/sqlite/0001_flows.sql") },
        Migration { version: 2, description: "parked flows", sql: include_str!("../migrations/sqlite/0002_parked.sql") },
    ],
    postgres: &[
        Migration { version: 1, description: "flows and their journals", sql: include_str!("../migrations/postgres/0001_flows.sql") },
        Migration { version: 2, description: "parked flows", sql: include_str!("../migrations/postgres/0002_parked.sql") },
    ],
};

/// A parking holds while the journal has no entry at its length (journals have no gaps).
const PARKING_HOLDS: &str = "NOT EXISTS (SELECT 1 FROM treaty_flow_journal j WHERE j.flow_id = p.flow_id AND j.idx = p.journal_len)";

/// [`FlowStore`] over a [`Database`].
#[derive(Clone, Debug)]
pub struct SqlFlowStore {
    db: Database,
}

impl SqlFlowStore {
    /// Applies the flows migrations and returns the store.
    pub async fn open(db: &Database) -> Result<SqlFlowStore, StorageError> {
        db.migrate(&FLOW_MIGRATIONS).await?;
        Ok(SqlFlowStore { db: db.clone() })
    }
}

fn err(what: &str, e: sqlx::Error) -> StoreError {
    StoreError::from(StorageError::query(what.to_string(), e))
}

macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db.pool() {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// A write: on SQLite through the database's group commit (concurrent flows share a commit;
/// this write's statements run in a savepoint of the shared transaction, or with `single`,
/// for a write of one statement, without one), on PostgreSQL in a transaction of its own.
macro_rules! in_write {
    ($db:expr, $what:expr, $tx:ident => $body:expr) => {
        in_write!($db, $what, false, $tx => $body)
    };
    ($db:expr, $what:expr, $single:expr, $tx:ident => $body:expr) => {
        match $db.sqlite_group() {
            Some((pool, writer, group)) => {
                let mut write = if $single { group.begin_statement(pool, writer).await } else { group.begin(pool, writer).await }
                    .map_err(StoreError::from)?;
                let result: Result<_, StoreError> = async {
                    let $tx: &mut sqlx::SqliteConnection = write.conn().map_err(StoreError::from)?;
                    Ok($body)
                }
                .await;
                let finished = write.finish(result.is_ok()).await;
                let out = result?;
                finished.map_err(StoreError::from)?;
                out
            }
            None => match $db.begin_write().await.map_err(StoreError::from)? {
                WriteTransaction::Postgres { tx: mut pgtx } => {
                    let out = {
                        let $tx: &mut sqlx::PgConnection = &mut *pgtx;
                        $body
                    };
                    pgtx.commit().await.map_err(|e| err($what, e))?;
                    out
                }
                WriteTransaction::Sqlite { .. } => return Err(StoreError::permanent("SQLite without group commit")),
            },
        }
    };
}

/// Appends `rows` journal entries of one flow: `$1` the flow, `$2` the index of the first,
/// then index and bytes of each. Every row is inserted only if the journal has exactly `$2`
/// entries before the statement (journals have no gaps), and the primary key refuses repeats.
fn append_sql(rows: usize) -> String {
    let mut sql = String::from(
        "WITH next AS (SELECT COUNT(*) AS n FROM treaty_flow_journal WHERE flow_id = $1) \
         INSERT INTO treaty_flow_journal (flow_id, idx, entry) ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push_str(" UNION ALL ");
        }
        sql.push_str(&format!("SELECT $1, ${}, ${} FROM next WHERE next.n = $2", 3 + 2 * i, 4 + 2 * i));
    }
    sql
}

fn flow_id(bytes: &[u8], table: &str) -> Result<FlowId, StoreError> {
    uuid::Uuid::from_slice(bytes).map(FlowId).map_err(|e| StoreError::permanent(format!("{table}: flow id: {e}")))
}

fn session_to_db(s: u64) -> i64 {
    i64::from_ne_bytes(s.to_ne_bytes())
}

fn session_from_db(s: i64) -> u64 {
    u64::from_ne_bytes(s.to_ne_bytes())
}

const COLUMNS: &str =
    "flow_id, name, version, args, status, result, error, client_id, initiator_party, initiator_session, created_at, updated_at";

type Row12 =
    (Vec<u8>, String, i64, Vec<u8>, String, Option<Vec<u8>>, Option<String>, Option<String>, Option<String>, Option<i64>, i64, i64);

fn record(row: Row12) -> Result<FlowRecord, StoreError> {
    let (id, name, version, args, status, result, error, client_id, party, session, created_at, updated_at) = row;
    let corrupt = |what: String| StoreError::permanent(format!("treaty_flows: {what}"));
    let id = FlowId(uuid::Uuid::from_slice(&id).map_err(|e| corrupt(format!("flow id: {e}")))?);
    let status = FlowStatus::parse(&status).ok_or_else(|| corrupt(format!("flow {id}: unknown status {status:?}")))?;
    let initiator = match (party, session) {
        (Some(p), Some(s)) => Some((p.parse().map_err(|e| corrupt(format!("flow {id}: initiator {p:?}: {e}")))?, session_from_db(s))),
        _ => None,
    };
    Ok(FlowRecord {
        id,
        name,
        version: u32::try_from(version).map_err(|_| corrupt(format!("flow {id}: version {version}")))?,
        args,
        status,
        result,
        error,
        client_id,
        initiator,
        created_at,
        updated_at,
    })
}

macro_rules! fetch_records {
    ($pool:expr, $sql:expr, $($bind:expr),*) => {{
        let rows = sqlx::query(sqlx::AssertSqlSafe($sql)) $(.bind($bind))* .fetch_all($pool).await.map_err(|e| err("reading treaty_flows", e))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let row: Row12 = (|| Ok::<Row12, sqlx::Error>((
                r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?, r.try_get(5)?,
                r.try_get(6)?, r.try_get(7)?, r.try_get(8)?, r.try_get(9)?, r.try_get(10)?, r.try_get(11)?,
            )))().map_err(|e| err("reading treaty_flows", e))?;
            out.push(record(row)?);
        }
        out
    }};
}

impl SqlFlowStore {
    /// What [`FlowStore::create`] did, from how many rows its insert added.
    async fn created_or_existing(&self, r: &FlowRecord, inserted: u64) -> Result<Created, StoreError> {
        if inserted == 1 {
            return Ok(Created::New);
        }
        let sql = format!("SELECT {COLUMNS} FROM treaty_flows WHERE flow_id = $1 OR client_id = $2 ORDER BY seq LIMIT 1");
        let existing = on_pool!(self.db, pool => fetch_records!(pool, sql.clone(), r.id.0.as_bytes().as_slice(), r.client_id.as_deref()));
        existing
            .first()
            .map(|e| Created::Existing(e.id))
            .ok_or_else(|| StoreError::permanent(format!("flow {} was neither inserted nor found", r.id)))
    }

    /// Appends `journal` (entries from `first`), sets the status (`ending`: status, result,
    /// error, updated_at) and, with `unpark`, removes the flow's parking: one write, and one
    /// statement when only the status changes.
    async fn write_end(
        &self,
        id: FlowId,
        first: usize,
        journal: &[Entry],
        ending: (FlowStatus, Option<Vec<u8>>, Option<String>, i64),
        unpark: bool,
    ) -> Result<(), StoreError> {
        let (status, result, error, updated_at) = ending;
        let what = "updating treaty_flows";
        let sql = "UPDATE treaty_flows SET status = $2, result = $3, error = $4, updated_at = $5 WHERE flow_id = $1";
        let rows = journal_rows(id, first, journal)?;
        let append = append_sql(rows.len());
        let single = rows.is_empty() && !unpark;
        if let Some(writer) = self.db.sqlite_writer() {
            let append = (!rows.is_empty()).then(|| (numbered(&append), append_values(id, &rows), rows.len()));
            let key = Value::Blob(id.0.as_bytes().to_vec());
            let values = vec![
                key.clone(),
                Value::Text(status.as_str().into()),
                result.map_or(Value::Null, Value::Blob),
                error.map_or(Value::Null, Value::Text),
                Value::Integer(updated_at),
            ];
            let updated = writer
                .write(what, move |c| {
                    if let Some((sql, values, n)) = append
                        && execute(c, &sql, values).map_err(|e| sqlite_error("appending to treaty_flow_journal", e))? != n
                    {
                        return Err(StorageError::Corrupt {
                            table: "treaty_flow_journal",
                            key: id.to_string(),
                            reason: format!("journal entry {first} is not the next one"),
                        });
                    }
                    let updated = execute(c, &numbered(sql), values).map_err(|e| sqlite_error(what, e))?;
                    if unpark {
                        for sql in [
                            "DELETE FROM treaty_flow_parked_sessions WHERE flow_id = ?1",
                            "DELETE FROM treaty_flow_parked WHERE flow_id = ?1",
                        ] {
                            execute(c, sql, vec![key.clone()]).map_err(|e| sqlite_error(what, e))?;
                        }
                    }
                    Ok(updated)
                })
                .await?;
            if updated != 1 {
                return Err(StoreError::permanent(format!("no flow {id}")));
            }
            return Ok(());
        }
        let updated = in_write!(self.db, what, single, tx => {
            if !rows.is_empty() {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(append.clone())).bind(id.0.as_bytes().as_slice()).bind(rows[0].0);
                for (idx, bytes) in &rows {
                    q = q.bind(*idx).bind(bytes.as_slice());
                }
                if q.execute(&mut *tx).await.map_err(|e| err("appending to treaty_flow_journal", e))?.rows_affected() != rows.len() as u64 {
                    return Err(StoreError::permanent(format!("flow {id}: journal entry {first} is not the next one")));
                }
            }
            let updated = sqlx::query(sql)
                .bind(id.0.as_bytes().as_slice())
                .bind(status.as_str())
                .bind(result.as_deref())
                .bind(error.as_deref())
                .bind(updated_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| err(what, e))?
                .rows_affected();
            if unpark {
                for sql in ["DELETE FROM treaty_flow_parked_sessions WHERE flow_id = $1", "DELETE FROM treaty_flow_parked WHERE flow_id = $1"] {
                    sqlx::query(sql).bind(id.0.as_bytes().as_slice()).execute(&mut *tx).await.map_err(|e| err(what, e))?;
                }
            }
            updated
        });
        if updated != 1 {
            return Err(StoreError::permanent(format!("no flow {id}")));
        }
        Ok(())
    }
}

/// Runs one statement on the writer thread's connection (cached, bound by number).
fn execute(c: &rusqlite::Connection, sql: &str, values: Vec<Value>) -> Result<usize, rusqlite::Error> {
    c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(values))
}

/// The values [`append_sql`] binds.
fn append_values(id: FlowId, rows: &[(i64, Vec<u8>)]) -> Vec<Value> {
    let mut values = Vec::with_capacity(2 + 2 * rows.len());
    values.push(Value::Blob(id.0.as_bytes().to_vec()));
    values.push(Value::Integer(rows.first().map_or(0, |r| r.0)));
    for (idx, bytes) in rows {
        values.push(Value::Integer(*idx));
        values.push(Value::Blob(bytes.clone()));
    }
    values
}

/// Journal rows: index and encoded entry of each of `entries`, the first at `first`.
fn journal_rows(id: FlowId, first: usize, entries: &[Entry]) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let idx = i64::try_from(first + i).map_err(|_| StoreError::permanent(format!("flow {id}: journal index {}", first + i)))?;
            Ok((idx, encoding::encode(e)))
        })
        .collect()
}

impl FlowStore for SqlFlowStore {
    async fn create(&self, r: FlowRecord) -> Result<Created, StoreError> {
        let what = "inserting into treaty_flows";
        let sql = format!(
            "INSERT INTO treaty_flows ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING"
        );
        let (party, session) = match &r.initiator {
            Some((p, s)) => (Some(p.to_string()), Some(session_to_db(*s))),
            None => (None, None),
        };
        if let Some(writer) = self.db.sqlite_writer() {
            let values = vec![
                Value::Blob(r.id.0.as_bytes().to_vec()),
                Value::Text(r.name.clone()),
                Value::Integer(i64::from(r.version)),
                Value::Blob(r.args.clone()),
                Value::Text(r.status.as_str().into()),
                r.result.clone().map_or(Value::Null, Value::Blob),
                r.error.clone().map_or(Value::Null, Value::Text),
                r.client_id.clone().map_or(Value::Null, Value::Text),
                party.clone().map_or(Value::Null, Value::Text),
                session.map_or(Value::Null, Value::Integer),
                Value::Integer(r.created_at),
                Value::Integer(r.updated_at),
            ];
            let sql = numbered(&sql);
            let inserted = writer.write(what, move |c| execute(c, &sql, values).map_err(|e| sqlite_error(what, e))).await?;
            return self.created_or_existing(&r, inserted as u64).await;
        }
        let inserted = in_write!(self.db, what, true, tx => {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(r.id.0.as_bytes().as_slice())
                .bind(r.name.as_str())
                .bind(i64::from(r.version))
                .bind(r.args.as_slice())
                .bind(r.status.as_str())
                .bind(r.result.as_deref())
                .bind(r.error.as_deref())
                .bind(r.client_id.as_deref())
                .bind(party.as_deref())
                .bind(session)
                .bind(r.created_at)
                .bind(r.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| err(what, e))?
                .rows_affected()
        });
        self.created_or_existing(&r, inserted).await
    }

    async fn append(&self, id: FlowId, first: usize, entries: &[Entry]) -> Result<(), StoreError> {
        let what = "appending to treaty_flow_journal";
        if entries.is_empty() {
            return Ok(());
        }
        let rows = journal_rows(id, first, entries)?;
        let sql = append_sql(rows.len());
        if let Some(writer) = self.db.sqlite_writer() {
            let (sql, values, n) = (numbered(&sql), append_values(id, &rows), rows.len());
            let inserted = writer.write(what, move |c| execute(c, &sql, values).map_err(|e| sqlite_error(what, e))).await?;
            if inserted != n {
                return Err(StoreError::permanent(format!("flow {id}: journal entry {first} is not the next one")));
            }
            return Ok(());
        }
        // One statement, so no savepoint: all of it is appended, or (a gap, a repeat) none.
        let inserted = in_write!(self.db, what, true, tx => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(id.0.as_bytes().as_slice()).bind(rows[0].0);
            for (idx, bytes) in &rows {
                q = q.bind(*idx).bind(bytes.as_slice());
            }
            q.execute(&mut *tx).await.map_err(|e| err(what, e))?.rows_affected()
        });
        if inserted != rows.len() as u64 {
            return Err(StoreError::permanent(format!("flow {id}: journal entry {first} is not the next one")));
        }
        Ok(())
    }

    async fn journal(&self, id: FlowId) -> Result<Vec<Entry>, StoreError> {
        let sql = "SELECT entry FROM treaty_flow_journal WHERE flow_id = $1 ORDER BY idx";
        let rows: Vec<Vec<u8>> = on_pool!(self.db, pool => {
            let rows = sqlx::query(sql).bind(id.0.as_bytes().as_slice()).fetch_all(pool).await.map_err(|e| err("reading treaty_flow_journal", e))?;
            rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().map_err(|e| err("reading treaty_flow_journal", e))?
        });
        rows.iter()
            .enumerate()
            .map(|(i, b)| encoding::decode(b).map_err(|e| StoreError::permanent(format!("treaty_flow_journal: flow {id} entry {i}: {e}"))))
            .collect()
    }

    async fn end(&self, id: FlowId, end: End<'_>) -> Result<(), StoreError> {
        let unpark = end.parked && end.status != FlowStatus::Runnable;
        self.write_end(id, end.journal_from, end.journal, (end.status, end.result, end.error, end.updated_at), unpark).await
    }

    async fn set_status(&self, id: FlowId, status: FlowStatus, result: Option<Vec<u8>>, error: Option<String>) -> Result<(), StoreError> {
        self.write_end(id, 0, &[], (status, result, error, crate::now_micros()), status != FlowStatus::Runnable).await
    }

    async fn get(&self, id: FlowId) -> Result<Option<FlowRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM treaty_flows WHERE flow_id = $1");
        let mut found = on_pool!(self.db, pool => fetch_records!(pool, sql.clone(), id.0.as_bytes().as_slice()));
        Ok(found.pop())
    }

    async fn list(&self) -> Result<Vec<FlowRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM treaty_flows ORDER BY seq");
        Ok(on_pool!(self.db, pool => fetch_records!(pool, sql.clone(),)))
    }

    async fn runnable(&self) -> Result<Vec<FlowRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM treaty_flows WHERE status = $1 ORDER BY seq");
        Ok(on_pool!(self.db, pool => fetch_records!(pool, sql.clone(), FlowStatus::Runnable.as_str())))
    }

    async fn park(&self, parking: &Parking) -> Result<(), StoreError> {
        let what = "parking a flow";
        let id = parking.id;
        let len = i64::try_from(parking.journal_len).map_err(|_| StoreError::permanent(format!("flow {id}: journal length")))?;
        let sessions: Vec<(String, i64, bool)> =
            parking.sessions.iter().map(|(party, session, initiator)| (party.to_string(), session_to_db(*session), *initiator)).collect();
        let park = "INSERT INTO treaty_flow_parked (flow_id, journal_len, wake_at) VALUES ($1, $2, $3) \
                    ON CONFLICT (flow_id) DO UPDATE SET journal_len = excluded.journal_len, wake_at = excluded.wake_at";
        let session = "INSERT INTO treaty_flow_parked_sessions (party, session, initiator, flow_id) VALUES ($1, $2, $3, $4) \
                       ON CONFLICT (party, session, initiator) DO UPDATE SET flow_id = excluded.flow_id";
        in_write!(self.db, what, tx => {
            sqlx::query(park)
                .bind(id.0.as_bytes().as_slice())
                .bind(len)
                .bind(parking.wake_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| err(what, e))?;
            for (party, s, initiator) in &sessions {
                sqlx::query(session)
                    .bind(party.as_str())
                    .bind(*s)
                    .bind(*initiator)
                    .bind(id.0.as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| err(what, e))?;
            }
        });
        Ok(())
    }

    async fn parked_session(&self, party: &X500Name, session: u64, initiator: bool) -> Result<Option<FlowId>, StoreError> {
        let what = "reading treaty_flow_parked_sessions";
        let sql = "SELECT flow_id FROM treaty_flow_parked_sessions WHERE party = $1 AND session = $2 AND initiator = $3";
        let party = party.to_string();
        let found: Option<Vec<u8>> = on_pool!(self.db, pool => {
            let row = sqlx::query(sql).bind(party.as_str()).bind(session_to_db(session)).bind(initiator).fetch_optional(pool).await.map_err(|e| err(what, e))?;
            row.map(|r| r.try_get(0)).transpose().map_err(|e| err(what, e))?
        });
        found.map(|b| flow_id(&b, "treaty_flow_parked_sessions")).transpose()
    }

    async fn parked(&self) -> Result<Vec<ParkedFlow>, StoreError> {
        let what = "reading treaty_flow_parked";
        let sql = format!(
            "SELECT p.flow_id, f.name, f.version, f.initiator_party, p.wake_at FROM treaty_flow_parked p \
             JOIN treaty_flows f ON f.flow_id = p.flow_id WHERE f.status = $1 AND {PARKING_HOLDS} ORDER BY f.seq"
        );
        type Row5 = (Vec<u8>, String, i64, Option<String>, Option<i64>);
        let rows: Vec<Row5> = on_pool!(self.db, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(FlowStatus::Runnable.as_str()).fetch_all(pool).await.map_err(|e| err(what, e))?;
            rows.iter()
                .map(|r| Ok::<Row5, sqlx::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?)))
                .collect::<Result<_, _>>()
                .map_err(|e| err(what, e))?
        });
        rows.into_iter()
            .map(|(id, name, version, party, wake_at)| {
                let id = flow_id(&id, "treaty_flow_parked")?;
                let version =
                    u32::try_from(version).map_err(|_| StoreError::permanent(format!("treaty_flows: flow {id}: version {version}")))?;
                Ok(ParkedFlow { id, name, version, responder: party.is_some(), wake_at })
            })
            .collect()
    }

    async fn awake(&self) -> Result<Vec<FlowRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM treaty_flows f WHERE f.status = $1 AND NOT EXISTS \
             (SELECT 1 FROM treaty_flow_parked p WHERE p.flow_id = f.flow_id AND {PARKING_HOLDS}) ORDER BY f.seq"
        );
        Ok(on_pool!(self.db, pool => fetch_records!(pool, sql.clone(), FlowStatus::Runnable.as_str())))
    }
}
