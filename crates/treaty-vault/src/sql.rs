//! Backend plumbing shared by the vault's modules: SQL text built together with its bound
//! arguments, a body run once per backend, and write transactions.
//!
//! Queries are written once for both backends (`$n` placeholders, `RETURNING`, `ON CONFLICT`
//! work on SQLite and PostgreSQL alike); the macros compile each body twice, once per
//! connection type. Only placeholders, numbers and fixed fragments are ever interpolated into
//! SQL text: every value is a bound argument.

use treaty_core::{SecureHash, StateRef};

use crate::error::VaultError;

/// A bound argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Arg {
    /// A 64-bit integer.
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// Text or NULL.
    OptText(Option<String>),
    /// An integer or NULL.
    OptInt(Option<i64>),
}

/// SQL under construction and its arguments, numbered in the order they are added.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    /// The arguments; `$n` is `args[n - 1]`.
    pub args: Vec<Arg>,
}

impl Sql {
    /// Adds an argument and returns its placeholder (`$n`).
    pub fn arg(&mut self, a: Arg) -> String {
        self.args.push(a);
        format!("${}", self.args.len())
    }

    /// `$a, $b, ...` for a list of arguments.
    pub fn list(&mut self, items: impl IntoIterator<Item = Arg>) -> String {
        items.into_iter().map(|a| self.arg(a)).collect::<Vec<_>>().join(", ")
    }

    /// `(s.tx_id = $a AND s.output_index = $b) OR ...` for a list of state refs (`FALSE` when
    /// empty).
    pub fn refs(&mut self, refs: &[StateRef]) -> String {
        if refs.is_empty() {
            return "FALSE".into();
        }
        refs.iter()
            .map(|r| {
                let tx = self.arg(Arg::Bytes(r.txhash.as_bytes().to_vec()));
                let idx = self.arg(Arg::Int(i64::from(r.index)));
                format!("(s.tx_id = {tx} AND s.output_index = {idx})")
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    }
}

/// Runs `$body` with `$pool` bound to the database's pool (compiled once per backend).
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db.pool() {
            treaty_storage::Pool::Sqlite($pool) => $body,
            treaty_storage::Pool::Postgres($pool) => $body,
        }
    };
}

/// Binds every [`Arg`] of `$args` to the query `$q`.
macro_rules! bind_args {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args.iter() {
            q = match a {
                $crate::sql::Arg::Int(v) => q.bind(*v),
                $crate::sql::Arg::Text(s) => q.bind(s.as_str()),
                $crate::sql::Arg::Bytes(b) => q.bind(b.as_slice()),
                $crate::sql::Arg::OptText(s) => q.bind(s.as_deref()),
                $crate::sql::Arg::OptInt(v) => q.bind(*v),
            };
        }
        q
    }};
}

/// Runs `$body` in a write transaction, `$tx` bound to its connection (use `&mut *$tx`), and
/// commits. On SQLite the write joins the database's group commit (its statements run in a
/// savepoint of the shared transaction, and only one writer of this process is inside at a
/// time); on PostgreSQL it is a transaction of its own. An error from the body (through `?`)
/// undoes everything the body did.
macro_rules! in_write {
    ($db:expr, $what:expr, $tx:ident => $body:expr) => {
        match $db.sqlite_group() {
            Some((pool, writer, group)) => {
                let mut write = group.begin(pool, writer).await?;
                let result: Result<_, $crate::error::VaultError> = async {
                    let $tx: &mut sqlx::SqliteConnection = write.conn()?;
                    Ok($body)
                }
                .await;
                let finished = write.finish(result.is_ok()).await;
                let out = result?;
                finished?;
                out
            }
            None => match $db.begin_write().await? {
                treaty_storage::WriteTransaction::Postgres { tx: mut pgtx } => {
                    let out = {
                        let $tx: &mut sqlx::PgConnection = &mut *pgtx;
                        $body
                    };
                    pgtx.commit().await.map_err(|e| $crate::error::VaultError::query(format!("committing ({})", $what), e))?;
                    out
                }
                treaty_storage::WriteTransaction::Sqlite { .. } => {
                    return Err($crate::error::VaultError::Corrupt {
                        what: "database".into(),
                        reason: "a SQLite database without group commit".into(),
                    });
                }
            },
        }
    };
}

pub(crate) use {bind_args, in_write, on_pool};

/// Attaches what was being done to a driver error.
pub(crate) trait Context<T> {
    /// The error as a [`VaultError`] naming `what`.
    fn ctx(self, what: &str) -> Result<T, VaultError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn ctx(self, what: &str) -> Result<T, VaultError> {
        self.map_err(|e| VaultError::query(what, e))
    }
}

/// A 32-byte id read from `column`.
pub(crate) fn hash_from(column: &str, bytes: &[u8]) -> Result<SecureHash, VaultError> {
    <[u8; 32]>::try_from(bytes)
        .map(SecureHash)
        .map_err(|_| VaultError::Corrupt { what: column.to_string(), reason: format!("{} bytes, expected 32", bytes.len()) })
}

/// A state ref read from `tx_id` and `output_index` columns.
pub(crate) fn state_ref_from(tx: &[u8], index: i64) -> Result<StateRef, VaultError> {
    let txhash = hash_from("treaty_vault_states.tx_id", tx)?;
    let index = u32::try_from(index)
        .map_err(|_| VaultError::Corrupt { what: format!("treaty_vault_states.output_index of {txhash}"), reason: format!("{index}") })?;
    Ok(StateRef { txhash, index })
}

/// Splits `items` into chunks of at most 128, in power-of-two sizes below that, so a
/// statement built per chunk has at most eight shapes (and stays in sqlx's per-connection
/// prepared statement cache).
pub(crate) fn chunks<T>(items: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let size = if rest.len() >= 128 { 128 } else { 1 << (usize::BITS - 1 - rest.len().leading_zeros()) };
        let (head, tail) = rest.split_at(size);
        out.push(head);
        rest = tail;
    }
    out
}

/// `($1, $2, ...), (...)`: `rows` rows of `columns` fresh placeholders, arguments added by
/// `row(i, sql)` which must add exactly `columns` arguments per row and return their
/// placeholders.
pub(crate) fn values<T>(sql: &mut Sql, items: &[T], mut row: impl FnMut(&T, &mut Sql) -> Vec<String>) -> String {
    items.iter().map(|item| format!("({})", row(item, sql).join(", "))).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_have_few_shapes() {
        let items: Vec<u32> = (0..300).collect();
        let sizes: Vec<usize> = chunks(&items).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![128, 128, 32, 8, 4]);
        assert!(chunks::<u32>(&[]).is_empty());
    }

    #[test]
    fn arguments_are_numbered_in_order() {
        let mut sql = Sql::default();
        assert_eq!(sql.arg(Arg::Int(1)), "$1");
        assert_eq!(sql.list([Arg::Text("a".into()), Arg::Text("b".into())]), "$2, $3");
        assert_eq!(sql.refs(&[]), "FALSE");
        let r = StateRef { txhash: SecureHash([7; 32]), index: 3 };
        assert_eq!(sql.refs(&[r]), "(s.tx_id = $4 AND s.output_index = $5)");
        assert_eq!(sql.args.len(), 5);
    }
}
