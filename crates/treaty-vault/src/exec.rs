//! One body of statements, run either through sqlx (PostgreSQL, or SQLite without a writer
//! thread) or on the SQLite writer thread's connection (`treaty_storage::SqliteWriter`),
//! where a statement is a function call rather than a hand-off between threads.
//!
//! A body is an `async fn` over an [`Exec`]. The writer thread's executor never waits, so its
//! futures are ready at the first poll ([`run_now`]).

use std::future::Future;

use treaty_storage::writer::numbered;
use treaty_storage::writer::rusqlite::{self, types::Value};

use crate::error::VaultError;
use crate::record::StateRow;
use crate::sql::{Arg, Context, bind_args};

/// The type of a column a statement returns.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Int,
    OptInt,
    Bytes,
    OptBytes,
    Text,
    OptText,
}

/// A returned value.
#[derive(Clone, Debug)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Bytes(Vec<u8>),
    Text(String),
}

impl Cell {
    pub fn int(&self, what: &str) -> Result<i64, VaultError> {
        match self {
            Cell::Int(v) => Ok(*v),
            other => Err(mistyped(what, "an integer", other)),
        }
    }
    pub fn opt_int(&self, what: &str) -> Result<Option<i64>, VaultError> {
        match self {
            Cell::Null => Ok(None),
            other => other.int(what).map(Some),
        }
    }
    pub fn bytes(self, what: &str) -> Result<Vec<u8>, VaultError> {
        match self {
            Cell::Bytes(v) => Ok(v),
            other => Err(mistyped(what, "bytes", &other)),
        }
    }
    pub fn opt_bytes(self, what: &str) -> Result<Option<Vec<u8>>, VaultError> {
        match self {
            Cell::Null => Ok(None),
            other => other.bytes(what).map(Some),
        }
    }
    pub fn text(self, what: &str) -> Result<String, VaultError> {
        match self {
            Cell::Text(v) => Ok(v),
            other => Err(mistyped(what, "text", &other)),
        }
    }
    pub fn opt_text(self, what: &str) -> Result<Option<String>, VaultError> {
        match self {
            Cell::Null => Ok(None),
            other => other.text(what).map(Some),
        }
    }
}

fn mistyped(what: &str, expected: &str, got: &Cell) -> VaultError {
    VaultError::Corrupt { what: what.to_string(), reason: format!("expected {expected}, found {got:?}") }
}

/// The kinds of the columns of [`crate::record::STATE_COLUMNS`] (a [`StateRow`]).
pub(crate) const STATE_KINDS: [Kind; 11] = [
    Kind::Int,
    Kind::Bytes,
    Kind::Int,
    Kind::Text,
    Kind::Int,
    Kind::OptInt,
    Kind::OptBytes,
    Kind::Bytes,
    Kind::OptText,
    Kind::OptText,
    Kind::OptText,
];

impl StateRow {
    /// A row of [`STATE_KINDS`] cells.
    pub fn from_cells(row: Vec<Cell>, what: &str) -> Result<StateRow, VaultError> {
        let n = row.len();
        let [seq, tx_id, output_index, status, recorded_at, consumed_at, consuming_tx, state_bytes, linear_id, external_id, lock_id]: [Cell;
            11] = row
            .try_into()
            .map_err(|_| VaultError::Corrupt { what: what.into(), reason: format!("{n} columns for a state, 11 expected") })?;
        Ok(StateRow {
            seq: seq.int(what)?,
            tx_id: tx_id.bytes(what)?,
            output_index: output_index.int(what)?,
            status: status.text(what)?,
            recorded_at: recorded_at.int(what)?,
            consumed_at: consumed_at.opt_int(what)?,
            consuming_tx: consuming_tx.opt_bytes(what)?,
            state_bytes: state_bytes.bytes(what)?,
            linear_id: linear_id.opt_text(what)?,
            external_id: external_id.opt_text(what)?,
            lock_id: lock_id.opt_text(what)?,
        })
    }
}

/// Runs statements (`$n` placeholders, arguments in order). No `Send` bound: the writer
/// thread's executor is not `Send` (and needs not be); the sqlx ones are, and their futures
/// say so to callers that name them.
pub(crate) trait Exec {
    /// Runs `sql` and returns its rows, each as `kinds` says.
    fn rows(&mut self, sql: &str, args: Vec<Arg>, kinds: &[Kind]) -> impl Future<Output = Result<Vec<Vec<Cell>>, VaultError>>;
    /// Runs `sql`; how many rows it changed.
    fn run(&mut self, sql: &str, args: Vec<Arg>) -> impl Future<Output = Result<u64, VaultError>>;
}

/// A sqlx connection (either backend) in a transaction.
pub(crate) struct Sqlx<'c, C>(pub &'c mut C);

macro_rules! sqlx_exec {
    ($conn:ty) => {
        impl Exec for Sqlx<'_, $conn> {
            async fn rows(&mut self, sql: &str, args: Vec<Arg>, kinds: &[Kind]) -> Result<Vec<Vec<Cell>>, VaultError> {
                use sqlx::Row as _;
                let what = "a vault statement";
                let rows = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql.to_string())), args).fetch_all(&mut *self.0).await.ctx(what)?;
                rows.iter()
                    .map(|r| {
                        kinds
                            .iter()
                            .enumerate()
                            .map(|(i, k)| {
                                Ok(match k {
                                    Kind::Int => Cell::Int(r.try_get(i).ctx(what)?),
                                    Kind::OptInt => r.try_get::<Option<i64>, _>(i).ctx(what)?.map_or(Cell::Null, Cell::Int),
                                    Kind::Bytes => Cell::Bytes(r.try_get(i).ctx(what)?),
                                    Kind::OptBytes => r.try_get::<Option<Vec<u8>>, _>(i).ctx(what)?.map_or(Cell::Null, Cell::Bytes),
                                    Kind::Text => Cell::Text(r.try_get(i).ctx(what)?),
                                    Kind::OptText => r.try_get::<Option<String>, _>(i).ctx(what)?.map_or(Cell::Null, Cell::Text),
                                })
                            })
                            .collect()
                    })
                    .collect()
            }

            async fn run(&mut self, sql: &str, args: Vec<Arg>) -> Result<u64, VaultError> {
                let q = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql.to_string())), args);
                Ok(q.execute(&mut *self.0).await.ctx("a vault statement")?.rows_affected())
            }
        }
    };
}

sqlx_exec!(sqlx::SqliteConnection);
sqlx_exec!(sqlx::PgConnection);

/// The SQLite writer thread's connection.
pub(crate) struct Writer<'c>(pub &'c rusqlite::Connection);

fn value(a: Arg) -> Value {
    match a {
        Arg::Int(v) => Value::Integer(v),
        Arg::Text(s) => Value::Text(s),
        Arg::Bytes(b) => Value::Blob(b),
        Arg::OptText(s) => s.map_or(Value::Null, Value::Text),
        Arg::OptInt(v) => v.map_or(Value::Null, Value::Integer),
    }
}

fn sqlite(e: rusqlite::Error) -> VaultError {
    VaultError::from(treaty_storage::writer::sqlite_error("a vault statement", e))
}

fn cell(v: rusqlite::types::ValueRef<'_>) -> Cell {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(i) => Cell::Int(i),
        ValueRef::Real(f) => Cell::Text(f.to_string()),
        ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Cell::Bytes(b.to_vec()),
    }
}

impl Exec for Writer<'_> {
    async fn rows(&mut self, sql: &str, args: Vec<Arg>, kinds: &[Kind]) -> Result<Vec<Vec<Cell>>, VaultError> {
        let mut statement = self.0.prepare_cached(&numbered(sql)).map_err(sqlite)?;
        let mut rows = statement.query(rusqlite::params_from_iter(args.into_iter().map(value))).map_err(sqlite)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite)? {
            out.push((0..kinds.len()).map(|i| row.get_ref(i).map(cell)).collect::<Result<Vec<_>, _>>().map_err(sqlite)?);
        }
        Ok(out)
    }

    async fn run(&mut self, sql: &str, args: Vec<Arg>) -> Result<u64, VaultError> {
        let mut statement = self.0.prepare_cached(&numbered(sql)).map_err(sqlite)?;
        Ok(statement.execute(rusqlite::params_from_iter(args.into_iter().map(value))).map_err(sqlite)? as u64)
    }
}

/// Runs a future that never waits (a body over [`Writer`]) to its end.
pub(crate) fn run_now<T>(body: impl Future<Output = Result<T, VaultError>>) -> Result<T, VaultError> {
    let mut body = std::pin::pin!(body);
    match body.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => {
            Err(VaultError::Corrupt { what: "a vault write".into(), reason: "it waited on the writer thread".into() })
        }
    }
}
