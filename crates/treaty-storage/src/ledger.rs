//! The ledger component's tables: transactions, attachments and identities.

use std::collections::{HashMap, HashSet};

use sqlx::Row;
use treaty_core::{PublicKey, SecureHash, X500Name, encoding};

use crate::db::{Database, now_millis, with_pool, write_tx};
use crate::error::{Context, StorageError};
use crate::writer::{numbered, rusqlite, sqlite_error};

fn hash_from(table: &'static str, bytes: &[u8]) -> Result<SecureHash, StorageError> {
    <[u8; 32]>::try_from(bytes).map(SecureHash).map_err(|_| StorageError::Corrupt {
        table,
        key: format!("id of {} bytes", bytes.len()),
        reason: "id is not 32 bytes".into(),
    })
}

/// Transactions, by id, as the exact bytes they were received as (`treaty_transactions`).
#[derive(Clone, Debug)]
pub struct TransactionStore {
    db: Database,
}

/// A transaction to record: its id, its canonical bytes, and the ids of the transactions its
/// inputs and references point into.
#[derive(Clone, Copy, Debug)]
pub struct Recorded<'a> {
    /// The transaction's id.
    pub id: SecureHash,
    /// Its canonical bytes.
    pub bytes: &'a [u8],
    /// The transactions it depends on.
    pub dependencies: &'a [SecureHash],
}

/// Attachments, by id (`treaty_attachments`).
#[derive(Clone, Debug)]
pub struct AttachmentStore {
    db: Database,
}

/// Known identities: legal name, owning key and certificate chain (`treaty_identities`).
#[derive(Clone, Debug)]
pub struct IdentityStore {
    db: Database,
}

/// An identity as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityRecord {
    /// The legal name.
    pub name: X500Name,
    /// The key it owns.
    pub owning_key: PublicKey,
    /// Its certificate chain (DER), identity certificate first.
    pub certificate_chain: Vec<Vec<u8>>,
}

impl Database {
    /// The transaction store.
    pub fn transactions(&self) -> TransactionStore {
        TransactionStore { db: self.clone() }
    }
    /// The attachment store.
    pub fn attachments(&self) -> AttachmentStore {
        AttachmentStore { db: self.clone() }
    }
    /// The identity store.
    pub fn identities(&self) -> IdentityStore {
        IdentityStore { db: self.clone() }
    }
}

/// Ids per `IN (...)` query: well under SQLite's and PostgreSQL's bind-parameter limits.
const IN_CHUNK: usize = 500;

/// Rows per multi-row INSERT (× columns stays under the bind-parameter limits).
const ROWS_PER_INSERT: usize = 200;

/// `($1, $2, $3), ($4, $5, $6), …`: `n` rows of `columns` placeholders.
fn rows(n: usize, columns: usize) -> String {
    (0..n)
        .map(|r| format!("({})", (1..=columns).map(|c| format!("${}", r * columns + c)).collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$1, $2, …, $n`.
fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// A transaction to record, owned (for the writer thread): id, bytes, dependencies.
type OwnedRecord = (Vec<u8>, Vec<u8>, Vec<Vec<u8>>);

/// Statements for the SQLite writer thread's connection, run inside a job of another write
/// (see [`TransactionStore::record_job`]).
pub type RecordJob = Box<dyn FnOnce(&rusqlite::Connection) -> Result<(), StorageError> + Send>;

const INSERT_ATTACHMENT: &str = "INSERT INTO treaty_attachments (id, bytes, uploaded_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING";
const INSERT_TX: &str = "INSERT INTO treaty_transactions (id, bytes, recorded_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING";

impl TransactionStore {
    /// Records a transaction's canonical bytes under `id`. Idempotent: an id already recorded
    /// is left as it is and `false` returned; `true` if it is new.
    pub async fn put(&self, id: &SecureHash, bytes: &[u8]) -> Result<bool, StorageError> {
        Ok(self.put_all(&[(*id, bytes)]).await?.first().copied().unwrap_or(false))
    }

    /// Records several transactions in one database transaction; for each, whether it was new
    /// (the same id twice in `txs`: the first is new, the second not).
    pub async fn put_all(&self, txs: &[(SecureHash, &[u8])]) -> Result<Vec<bool>, StorageError> {
        let now = now_millis();
        let what = "inserting into treaty_transactions";
        Ok(write_tx!(self.db, what, tx => {
            let mut new = Vec::with_capacity(txs.len());
            for (id, bytes) in txs {
                let done = sqlx::query(INSERT_TX).bind(id.as_bytes().as_slice()).bind(*bytes).bind(now).execute(&mut *tx).await.ctx(what)?;
                new.push(done.rows_affected() == 1);
            }
            new
        }))
    }

    /// Records attachments and transactions (in the order given) in one database transaction,
    /// idempotently: what is recorded already stays as it is. Each transaction comes with the
    /// ids it depends on (see [`TransactionStore::ancestors`]). The caller checks every id.
    pub async fn record(&self, attachments: &[(SecureHash, &[u8])], txs: &[Recorded<'_>]) -> Result<(), StorageError> {
        let now = now_millis();
        let what = "recording attachments and transactions";
        if let Some(writer) = self.db.sqlite_writer() {
            let job = Self::record_job(attachments, txs);
            return writer.write(what, job).await;
        }
        write_tx!(self.db, what, tx => {
            for (id, bytes) in attachments {
                sqlx::query(INSERT_ATTACHMENT).bind(id.as_bytes().as_slice()).bind(*bytes).bind(now).execute(&mut *tx).await.ctx(what)?;
            }
            // Many rows per statement: a back-chain of thousands records in a few statements.
            for chunk in txs.chunks(ROWS_PER_INSERT) {
                let sql = format!("INSERT INTO treaty_transactions (id, bytes, recorded_at) VALUES {} ON CONFLICT (id) DO NOTHING", rows(chunk.len(), 3));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for r in chunk {
                    q = q.bind(r.id.as_bytes().as_slice()).bind(r.bytes).bind(now);
                }
                q.execute(&mut *tx).await.ctx(what)?;
            }
            // A transaction's dependencies follow from its bytes, so rows for one recorded
            // before are the same rows: inserting them again changes nothing.
            let edges: Vec<(&SecureHash, &SecureHash)> = txs.iter().flat_map(|r| r.dependencies.iter().map(move |d| (&r.id, d))).collect();
            for chunk in edges.chunks(ROWS_PER_INSERT) {
                let sql = format!("INSERT INTO treaty_transaction_dependencies (tx, dep) VALUES {} ON CONFLICT DO NOTHING", rows(chunk.len(), 2));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (t, d) in chunk {
                    q = q.bind(t.as_bytes().as_slice()).bind(d.as_bytes().as_slice());
                }
                q.execute(&mut *tx).await.ctx(what)?;
            }
        });
        Ok(())
    }

    /// [`TransactionStore::record`] as a job for the SQLite writer thread, to run inside
    /// another write's job (so recording a transaction and applying it to the vault share
    /// one job and one commit; see `Vault::apply_with`). It owns copies of what it records.
    pub fn record_job(attachments: &[(SecureHash, &[u8])], txs: &[Recorded<'_>]) -> RecordJob {
        let now = now_millis();
        let what = "recording attachments and transactions";
        // One statement per row is cheap on the writer thread (no hand-off per statement).
        let atts: Vec<(Vec<u8>, Vec<u8>)> = attachments.iter().map(|(id, b)| (id.as_bytes().to_vec(), b.to_vec())).collect();
        let txs: Vec<OwnedRecord> = txs
            .iter()
            .map(|r| (r.id.as_bytes().to_vec(), r.bytes.to_vec(), r.dependencies.iter().map(|d| d.as_bytes().to_vec()).collect()))
            .collect();
        Box::new(move |c: &rusqlite::Connection| {
            let failed = |e| sqlite_error(what, e);
            let mut insert = c.prepare_cached(&numbered(INSERT_ATTACHMENT)).map_err(failed)?;
            for (id, bytes) in &atts {
                insert.execute(rusqlite::params![id, bytes, now]).map_err(failed)?;
            }
            let mut insert = c.prepare_cached(&numbered(INSERT_TX)).map_err(failed)?;
            let mut edge = c
                .prepare_cached("INSERT INTO treaty_transaction_dependencies (tx, dep) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
                .map_err(failed)?;
            for (id, bytes, deps) in &txs {
                insert.execute(rusqlite::params![id, bytes, now]).map_err(failed)?;
                for d in deps {
                    edge.execute(rusqlite::params![id, d]).map_err(failed)?;
                }
            }
            Ok(())
        })
    }

    /// Up to `limit` ancestors of `ids` (what they depend on, directly or not), nearest first
    /// (breadth first), each once, `ids` themselves excluded unless reached from another.
    /// Walks only transactions recorded with their dependencies ([`TransactionStore::record`]),
    /// from the first 500 of `ids`: a prefetching hint, not a complete answer.
    pub async fn ancestors(&self, ids: &[SecureHash], limit: usize) -> Result<Vec<SecureHash>, StorageError> {
        if ids.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let what = "walking treaty_transaction_dependencies";
        // A hint for prefetching: the walk starts from at most IN_CHUNK ids.
        let start = ids.len().min(IN_CHUNK);
        let sql = format!(
            "WITH RECURSIVE walk(id) AS (SELECT dep FROM treaty_transaction_dependencies WHERE tx IN ({}) \
             UNION SELECT d.dep FROM walk w JOIN treaty_transaction_dependencies d ON d.tx = w.id) SELECT id FROM walk LIMIT {}",
            placeholders(start),
            i64::try_from(limit).unwrap_or(i64::MAX)
        );
        with_pool!(self.db, pool => {
            // Only placeholders and a number are interpolated; every id is a bound parameter.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in ids.iter().take(IN_CHUNK) {
                q = q.bind(id.as_bytes().as_slice());
            }
            q.fetch_all(pool).await.ctx(what)?.iter().map(|r| hash_from("treaty_transaction_dependencies", &r.try_get::<Vec<u8>, _>(0).ctx(what)?)).collect()
        })
    }

    /// The bytes recorded under each of `ids`, in order (`None` where nothing is recorded).
    pub async fn get_many(&self, ids: &[SecureHash]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let what = "reading treaty_transactions";
        let mut found: HashMap<SecureHash, Vec<u8>> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(IN_CHUNK) {
            let sql = format!("SELECT id, bytes FROM treaty_transactions WHERE id IN ({})", placeholders(chunk.len()));
            with_pool!(self.db, pool => {
                // Only placeholders are interpolated; every id is a bound parameter.
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for id in chunk {
                    q = q.bind(id.as_bytes().as_slice());
                }
                for row in q.fetch_all(pool).await.ctx(what)? {
                    let id = hash_from("treaty_transactions", &row.try_get::<Vec<u8>, _>(0).ctx(what)?)?;
                    found.insert(id, row.try_get::<Vec<u8>, _>(1).ctx(what)?);
                }
            });
        }
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    /// For each of `ids`, whether it is recorded.
    pub async fn contains_many(&self, ids: &[SecureHash]) -> Result<Vec<bool>, StorageError> {
        let what = "reading treaty_transactions";
        let mut found: HashSet<SecureHash> = HashSet::with_capacity(ids.len());
        for chunk in ids.chunks(IN_CHUNK) {
            let sql = format!("SELECT id FROM treaty_transactions WHERE id IN ({})", placeholders(chunk.len()));
            with_pool!(self.db, pool => {
                // Only placeholders are interpolated; every id is a bound parameter.
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for id in chunk {
                    q = q.bind(id.as_bytes().as_slice());
                }
                for row in q.fetch_all(pool).await.ctx(what)? {
                    found.insert(hash_from("treaty_transactions", &row.try_get::<Vec<u8>, _>(0).ctx(what)?)?);
                }
            });
        }
        Ok(ids.iter().map(|id| found.contains(id)).collect())
    }

    /// The bytes recorded under `id`.
    pub async fn get(&self, id: &SecureHash) -> Result<Option<Vec<u8>>, StorageError> {
        let what = format!("reading treaty_transactions (id {id})");
        with_pool!(self.db, pool => {
            let row = sqlx::query("SELECT bytes FROM treaty_transactions WHERE id = $1").bind(id.as_bytes().as_slice()).fetch_optional(pool).await.ctx(&what)?;
            row.map(|r| r.try_get::<Vec<u8>, _>(0)).transpose().ctx(&what)
        })
    }

    /// When the transaction was recorded (milliseconds since the Unix epoch).
    pub async fn recorded_at(&self, id: &SecureHash) -> Result<Option<i64>, StorageError> {
        let what = format!("reading treaty_transactions (id {id})");
        with_pool!(self.db, pool => {
            let row = sqlx::query("SELECT recorded_at FROM treaty_transactions WHERE id = $1").bind(id.as_bytes().as_slice()).fetch_optional(pool).await.ctx(&what)?;
            row.map(|r| r.try_get::<i64, _>(0)).transpose().ctx(&what)
        })
    }

    /// Whether `id` is recorded.
    pub async fn contains(&self, id: &SecureHash) -> Result<bool, StorageError> {
        let what = format!("reading treaty_transactions (id {id})");
        with_pool!(self.db, pool => {
            let row = sqlx::query("SELECT 1 FROM treaty_transactions WHERE id = $1").bind(id.as_bytes().as_slice()).fetch_optional(pool).await.ctx(&what)?;
            Ok(row.is_some())
        })
    }

    /// How many transactions are recorded.
    pub async fn count(&self) -> Result<u64, StorageError> {
        let what = "counting treaty_transactions";
        with_pool!(self.db, pool => {
            let row = sqlx::query("SELECT COUNT(*) FROM treaty_transactions").fetch_one(pool).await.ctx(what)?;
            Ok(u64::try_from(row.try_get::<i64, _>(0).ctx(what)?).unwrap_or(0))
        })
    }

    /// Every recorded id, in the order recorded.
    pub async fn ids(&self) -> Result<Vec<SecureHash>, StorageError> {
        let what = "listing treaty_transactions";
        with_pool!(self.db, pool => {
            let rows = sqlx::query("SELECT id FROM treaty_transactions ORDER BY seq").fetch_all(pool).await.ctx(what)?;
            rows.iter().map(|r| hash_from("treaty_transactions", &r.try_get::<Vec<u8>, _>(0).ctx(what)?)).collect()
        })
    }
}

impl AttachmentStore {
    /// Stores an attachment. Idempotent: `false` (and nothing changed) if `id` is already
    /// stored. The caller checks that `id` is the attachment's hash.
    pub async fn put(&self, id: &SecureHash, bytes: &[u8]) -> Result<bool, StorageError> {
        let now = now_millis();
        let what = "inserting into treaty_attachments";
        Ok(write_tx!(self.db, what, tx => {
            let done = sqlx::query(INSERT_ATTACHMENT)
                .bind(id.as_bytes().as_slice())
                .bind(bytes)
                .bind(now)
                .execute(&mut *tx)
                .await
                .ctx(what)?;
            done.rows_affected() == 1
        }))
    }

    /// The attachment's bytes.
    pub async fn get(&self, id: &SecureHash) -> Result<Option<Vec<u8>>, StorageError> {
        let what = format!("reading treaty_attachments (id {id})");
        with_pool!(self.db, pool => {
            let row = sqlx::query("SELECT bytes FROM treaty_attachments WHERE id = $1").bind(id.as_bytes().as_slice()).fetch_optional(pool).await.ctx(&what)?;
            row.map(|r| r.try_get::<Vec<u8>, _>(0)).transpose().ctx(&what)
        })
    }

    /// Whether `id` is stored.
    pub async fn contains(&self, id: &SecureHash) -> Result<bool, StorageError> {
        let what = format!("reading treaty_attachments (id {id})");
        with_pool!(self.db, pool => {
            let row = sqlx::query("SELECT 1 FROM treaty_attachments WHERE id = $1").bind(id.as_bytes().as_slice()).fetch_optional(pool).await.ctx(&what)?;
            Ok(row.is_some())
        })
    }
}

const IDENTITY_COLUMNS: &str = "SELECT name, owning_key, certificate_chain FROM treaty_identities";

fn identity_from(name: String, key: Vec<u8>, chain: Vec<u8>) -> Result<IdentityRecord, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt { table: "treaty_identities", key: name.clone(), reason };
    Ok(IdentityRecord {
        name: name.parse().map_err(|e| corrupt(format!("name: {e}")))?,
        owning_key: encoding::decode(&key).map_err(|e| corrupt(format!("owning_key: {e}")))?,
        certificate_chain: encoding::decode(&chain).map_err(|e| corrupt(format!("certificate_chain: {e}")))?,
    })
}

impl IdentityStore {
    /// Stores (or replaces) the identity with `record.name`.
    pub async fn put(&self, record: &IdentityRecord) -> Result<(), StorageError> {
        let now = now_millis();
        let what = format!("writing treaty_identities (name {})", record.name);
        let key = encoding::encode(&record.owning_key);
        let chain = encoding::encode(&record.certificate_chain);
        write_tx!(self.db, what, tx => {
            sqlx::query(
                "INSERT INTO treaty_identities (name, owning_key, certificate_chain, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET owning_key = excluded.owning_key, certificate_chain = excluded.certificate_chain, \
                 updated_at = excluded.updated_at",
            )
            .bind(record.name.to_string())
            .bind(key.as_slice())
            .bind(chain.as_slice())
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx(&what)?;
        });
        Ok(())
    }

    /// The identity with this legal name.
    pub async fn by_name(&self, name: &X500Name) -> Result<Option<IdentityRecord>, StorageError> {
        let what = format!("reading treaty_identities (name {name})");
        let sql = const_format(IDENTITY_COLUMNS, " WHERE name = $1");
        with_pool!(self.db, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(name.to_string()).fetch_optional(pool).await.ctx(&what)?;
            match row {
                None => Ok(None),
                Some(r) => Ok(Some(identity_from(r.try_get(0).ctx(&what)?, r.try_get(1).ctx(&what)?, r.try_get(2).ctx(&what)?)?)),
            }
        })
    }

    /// The identity owning this key (the most recently stored, if several names claim it).
    pub async fn by_key(&self, key: &PublicKey) -> Result<Option<IdentityRecord>, StorageError> {
        let what = format!("reading treaty_identities (key {})", key.short());
        let sql = const_format(IDENTITY_COLUMNS, " WHERE owning_key = $1 ORDER BY updated_at DESC, name LIMIT 1");
        let encoded = encoding::encode(key);
        with_pool!(self.db, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(encoded.as_slice()).fetch_optional(pool).await.ctx(&what)?;
            match row {
                None => Ok(None),
                Some(r) => Ok(Some(identity_from(r.try_get(0).ctx(&what)?, r.try_get(1).ctx(&what)?, r.try_get(2).ctx(&what)?)?)),
            }
        })
    }

    /// Every stored identity, by name.
    pub async fn all(&self) -> Result<Vec<IdentityRecord>, StorageError> {
        let what = "listing treaty_identities";
        let sql = const_format(IDENTITY_COLUMNS, " ORDER BY name");
        with_pool!(self.db, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.ctx(what)?;
            rows.into_iter().map(|r| identity_from(r.try_get(0).ctx(what)?, r.try_get(1).ctx(what)?, r.try_get(2).ctx(what)?)).collect()
        })
    }
}

fn const_format(a: &str, b: &str) -> String {
    format!("{a}{b}")
}
