//! The messaging component: [`MessageStore`] over `treaty_outbox` and `treaty_inbox`.
//!
//! Every batch operation is one transaction of multi-row statements (at most 128 rows each,
//! in a few fixed shapes so their prepared statements are cached and reused). Session ids are
//! `u64`s stored bit-cast as signed 64-bit integers; message ids as their 16 UUID bytes.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::{AssertSqlSafe, Row};
use treaty_core::X500Name;
use treaty_net::messaging::{InboundMessage, MessageId, MessageStore, OutboundMessage, StoreError};

use crate::db::{Database, chunks, in_list_sql, multi_row_sql, with_pool, write_tx};
use crate::error::{Context, StorageError};
use crate::writer::rusqlite::{self, types::Value};
use crate::writer::{numbered, sqlite_error};

/// [`MessageStore`] in the node database. Clone freely.
#[derive(Clone, Debug)]
pub struct SqlMessageStore {
    db: Database,
}

impl Database {
    /// The outbox and inbox.
    pub fn messages(&self) -> SqlMessageStore {
        SqlMessageStore { db: self.clone() }
    }
}

fn session_to_db(session: u64) -> i64 {
    i64::from_ne_bytes(session.to_ne_bytes())
}

fn session_from_db(session: i64) -> u64 {
    u64::from_ne_bytes(session.to_ne_bytes())
}

fn id_from(table: &'static str, bytes: &[u8]) -> Result<MessageId, StorageError> {
    uuid::Uuid::from_slice(bytes).map(MessageId).map_err(|e| StorageError::Corrupt {
        table,
        key: format!("message id of {} bytes", bytes.len()),
        reason: e.to_string(),
    })
}

fn name_from(table: &'static str, id: &MessageId, column: &str, name: &str) -> Result<X500Name, StorageError> {
    name.parse().map_err(|e| StorageError::Corrupt { table, key: format!("message {id}"), reason: format!("{column} {name:?}: {e}") })
}

/// message_id, destination, session_id, topic, payload, attempts.
type OutboxRow = (Vec<u8>, String, i64, String, Vec<u8>, i64);
/// message_id, sender, session_id, topic, payload.
type InboxRow = (Vec<u8>, String, i64, String, Option<Vec<u8>>);

fn clamp_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A value bound to a statement.
enum Bind {
    Bytes(Vec<u8>),
    Text(String),
    Int(i64),
}

/// A statement (`$n` placeholders) and its values.
struct Stmt {
    sql: String,
    binds: Vec<Bind>,
}

impl Database {
    /// Runs `statements` in one write and returns the first column (bytes) of the rows they
    /// return: on SQLite as one job of the writer thread, on PostgreSQL in a transaction.
    async fn write_statements(&self, what: &'static str, statements: Vec<Stmt>) -> Result<Vec<Vec<u8>>, StorageError> {
        if let Some(writer) = self.sqlite_writer() {
            return writer
                .write(what, move |c| {
                    let failed = |e| sqlite_error(what, e);
                    let mut out = Vec::new();
                    for st in statements {
                        let mut prepared = c.prepare_cached(&numbered(&st.sql)).map_err(failed)?;
                        let values = st.binds.into_iter().map(|b| match b {
                            Bind::Bytes(v) => Value::Blob(v),
                            Bind::Text(v) => Value::Text(v),
                            Bind::Int(v) => Value::Integer(v),
                        });
                        let mut rows = prepared.query(rusqlite::params_from_iter(values)).map_err(failed)?;
                        while let Some(row) = rows.next().map_err(failed)? {
                            out.push(row.get::<_, Vec<u8>>(0).map_err(failed)?);
                        }
                    }
                    Ok(out)
                })
                .await;
        }
        Ok(write_tx!(self, what, tx => {
            let mut out = Vec::new();
            for st in &statements {
                let mut q = sqlx::query(AssertSqlSafe(st.sql.clone()));
                for b in &st.binds {
                    q = match b {
                        Bind::Bytes(v) => q.bind(v.as_slice()),
                        Bind::Text(v) => q.bind(v.as_str()),
                        Bind::Int(v) => q.bind(*v),
                    };
                }
                for row in q.fetch_all(&mut *tx).await.ctx(what)? {
                    out.push(row.try_get::<Vec<u8>, _>(0).ctx(what)?);
                }
            }
            out
        }))
    }
}

fn id_bind(id: &MessageId) -> Bind {
    Bind::Bytes(id.0.as_bytes().to_vec())
}

/// An outbox or inbox row: id, the other party, session, topic, payload.
fn message_row(id: &MessageId, party: String, session: u64, topic: &str, payload: &[u8]) -> [Bind; 5] {
    [id_bind(id), Bind::Text(party), Bind::Int(session_to_db(session)), Bind::Text(topic.to_string()), Bind::Bytes(payload.to_vec())]
}

const OUTBOX_INSERT: &str = "INSERT INTO treaty_outbox (message_id, destination, session_id, topic, payload, attempts) VALUES";
const OUTBOX_SELECT: &str = "SELECT message_id, destination, session_id, topic, payload, attempts FROM treaty_outbox \
                             WHERE destination = $1 ORDER BY seq LIMIT $2";
const INBOX_INSERT: &str = "INSERT INTO treaty_inbox (message_id, sender, session_id, topic, payload, processed) VALUES";
const INBOX_SELECT: &str = "SELECT message_id, sender, session_id, topic, payload FROM treaty_inbox \
                            WHERE processed = FALSE ORDER BY seq LIMIT $1";

impl SqlMessageStore {
    async fn enqueue_all(&self, messages: &[OutboundMessage]) -> Result<(), StorageError> {
        self.enqueue_and_mark(messages, &[]).await
    }

    /// Inserts `messages` into the outbox and marks `processed` inbox messages processed, in
    /// one transaction.
    async fn enqueue_and_mark(&self, messages: &[OutboundMessage], processed: &[MessageId]) -> Result<(), StorageError> {
        if messages.is_empty() && processed.is_empty() {
            return Ok(());
        }
        let what = if processed.is_empty() {
            "inserting into treaty_outbox"
        } else {
            "inserting into treaty_outbox and marking treaty_inbox rows processed"
        };
        let mut statements: Vec<Stmt> = chunks(messages)
            .into_iter()
            .map(|chunk| Stmt {
                sql: multi_row_sql(OUTBOX_INSERT, 5, &["0"], chunk.len(), ""),
                binds: chunk.iter().flat_map(|m| message_row(&m.id, m.destination.to_string(), m.session, &m.topic, &m.payload)).collect(),
            })
            .collect();
        statements.extend(processed_statements(processed));
        let result = self.db.write_statements(what, statements).await.map(|_| ());
        match result {
            Err(StorageError::Query { source: sqlx::Error::Database(e), .. }) if e.is_unique_violation() => {
                Err(StorageError::DuplicateOutboxMessage(self.find_duplicate(messages).await?))
            }
            Err(StorageError::Sqlite { source, .. }) if source.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
                Err(StorageError::DuplicateOutboxMessage(self.find_duplicate(messages).await?))
            }
            other => other,
        }
    }

    /// Names a message of `messages` already in the outbox, or repeated within `messages`.
    async fn find_duplicate(&self, messages: &[OutboundMessage]) -> Result<String, StorageError> {
        let mut seen = HashSet::new();
        for m in messages {
            if !seen.insert(m.id) || self.in_outbox(&m.id).await? {
                return Ok(m.id.to_string());
            }
        }
        Ok("(unknown)".into())
    }

    async fn in_outbox(&self, id: &MessageId) -> Result<bool, StorageError> {
        let what = format!("reading treaty_outbox (message {id})");
        with_pool!(self.db, pool => {
            let row = sqlx::query("SELECT 1 FROM treaty_outbox WHERE message_id = $1").bind(id.0.as_bytes().as_slice()).fetch_optional(pool).await.ctx(&what)?;
            Ok(row.is_some())
        })
    }

    async fn outbox_for(&self, destination: &X500Name, limit: usize) -> Result<Vec<OutboundMessage>, StorageError> {
        let what = format!("reading treaty_outbox (destination {destination})");
        let rows: Vec<OutboxRow> = with_pool!(self.db, pool => {
            let rows = sqlx::query(OUTBOX_SELECT).bind(destination.to_string()).bind(clamp_limit(limit)).fetch_all(pool).await.ctx(&what)?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?, r.try_get(5)?)))
                .collect::<Result<_, sqlx::Error>>()
                .ctx(&what)?
        });
        rows.into_iter()
            .map(|(id, destination, session, topic, payload, attempts)| {
                let id = id_from("treaty_outbox", &id)?;
                Ok(OutboundMessage {
                    destination: name_from("treaty_outbox", &id, "destination", &destination)?,
                    id,
                    session: session_from_db(session),
                    topic,
                    payload,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    async fn destinations(&self) -> Result<Vec<X500Name>, StorageError> {
        let what = "reading treaty_outbox destinations";
        let names: Vec<String> = with_pool!(self.db, pool => {
            let rows = sqlx::query("SELECT DISTINCT destination FROM treaty_outbox").fetch_all(pool).await.ctx(what)?;
            rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>().ctx(what)?
        });
        let mut parsed = names
            .iter()
            .map(|n| {
                n.parse().map_err(|e| StorageError::Corrupt {
                    table: "treaty_outbox",
                    key: format!("destination {n:?}"),
                    reason: format!("{e}"),
                })
            })
            .collect::<Result<Vec<X500Name>, _>>()?;
        parsed.sort();
        parsed.dedup();
        Ok(parsed)
    }

    async fn attempted_all(&self, ids: &[MessageId]) -> Result<(), StorageError> {
        if ids.is_empty() {
            return Ok(());
        }
        // An id listed k times counts k attempts: group ids by how often they appear.
        let mut counts: HashMap<MessageId, i64> = HashMap::new();
        for id in ids {
            *counts.entry(*id).or_default() += 1;
        }
        let mut by_count: BTreeMap<i64, Vec<MessageId>> = BTreeMap::new();
        for id in ids {
            if let Some(n) = counts.remove(id) {
                by_count.entry(n).or_default().push(*id);
            }
        }
        let what = "updating treaty_outbox attempts";
        let mut statements = Vec::new();
        for (n, ids) in &by_count {
            for chunk in chunks(ids) {
                let sql = in_list_sql("UPDATE treaty_outbox SET attempts = attempts + $1 WHERE message_id IN", 2, chunk.len(), "");
                statements.push(Stmt { sql, binds: std::iter::once(Bind::Int(*n)).chain(chunk.iter().map(id_bind)).collect() });
            }
        }
        self.db.write_statements(what, statements).await?;
        Ok(())
    }

    async fn acknowledged_all(&self, ids: &[MessageId]) -> Result<(), StorageError> {
        if ids.is_empty() {
            return Ok(());
        }
        let what = "deleting from treaty_outbox";
        let statements = chunks(ids)
            .into_iter()
            .map(|chunk| Stmt {
                sql: in_list_sql("DELETE FROM treaty_outbox WHERE message_id IN", 1, chunk.len(), ""),
                binds: chunk.iter().map(id_bind).collect(),
            })
            .collect();
        self.db.write_statements(what, statements).await?;
        Ok(())
    }

    async fn receive_all(&self, messages: Vec<InboundMessage>) -> Result<Vec<InboundMessage>, StorageError> {
        // Duplicates within the batch: the first occurrence counts.
        let mut seen = HashSet::with_capacity(messages.len());
        let candidates: Vec<InboundMessage> = messages.into_iter().filter(|m| seen.insert(m.id)).collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let what = "inserting into treaty_inbox";
        // Rows are inserted in batch order, so seq (arrival order) follows it; RETURNING
        // names the rows actually inserted (ON CONFLICT DO NOTHING skips ids already held).
        let statements = chunks(&candidates)
            .into_iter()
            .map(|chunk| Stmt {
                sql: multi_row_sql(INBOX_INSERT, 5, &["FALSE"], chunk.len(), "ON CONFLICT (message_id) DO NOTHING RETURNING message_id"),
                binds: chunk.iter().flat_map(|m| message_row(&m.id, m.sender.to_string(), m.session, &m.topic, &m.payload)).collect(),
            })
            .collect();
        let inserted: HashSet<Vec<u8>> = self.db.write_statements(what, statements).await?.into_iter().collect();
        Ok(candidates.into_iter().filter(|m| inserted.contains(m.id.0.as_bytes().as_slice())).collect())
    }

    /// Every message in the inbox on `topic` (all topics with `None`), processed or not, in
    /// arrival order, with whether it has been processed. Processed messages have an empty
    /// payload (it is cleared once processed; the id stays for deduplication). For operators
    /// and tests.
    pub async fn inbox(&self, topic: Option<&str>) -> Result<Vec<(InboundMessage, bool)>, StorageError> {
        let what = "listing treaty_inbox";
        let sql = "SELECT message_id, sender, session_id, topic, payload, processed FROM treaty_inbox \
                   WHERE ($1 IS NULL OR topic = $1) ORDER BY seq";
        let rows: Vec<(InboxRow, bool)> = with_pool!(self.db, pool => {
            let rows = sqlx::query(sql).bind(topic).fetch_all(pool).await.ctx(what)?;
            rows.iter()
                .map(|r| Ok(((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?), r.try_get(5)?)))
                .collect::<Result<_, sqlx::Error>>()
                .ctx(what)?
        });
        rows.into_iter()
            .map(|((id, sender, session, topic, payload), processed)| {
                let id = id_from("treaty_inbox", &id)?;
                let message = InboundMessage {
                    sender: name_from("treaty_inbox", &id, "sender", &sender)?,
                    id,
                    session: session_from_db(session),
                    topic,
                    payload: payload.unwrap_or_default(),
                };
                Ok((message, processed))
            })
            .collect()
    }

    async fn unprocessed_all(&self, limit: usize) -> Result<Vec<InboundMessage>, StorageError> {
        let what = "reading treaty_inbox";
        let rows: Vec<InboxRow> = with_pool!(self.db, pool => {
            let rows = sqlx::query(INBOX_SELECT).bind(clamp_limit(limit)).fetch_all(pool).await.ctx(what)?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?)))
                .collect::<Result<_, sqlx::Error>>()
                .ctx(what)?
        });
        rows.into_iter()
            .map(|(id, sender, session, topic, payload)| {
                let id = id_from("treaty_inbox", &id)?;
                let payload = payload.ok_or_else(|| StorageError::Corrupt {
                    table: "treaty_inbox",
                    key: format!("message {id}"),
                    reason: "unprocessed message without payload".into(),
                })?;
                Ok(InboundMessage {
                    sender: name_from("treaty_inbox", &id, "sender", &sender)?,
                    id,
                    session: session_from_db(session),
                    topic,
                    payload,
                })
            })
            .collect()
    }

    async fn processed_all(&self, ids: &[MessageId]) -> Result<(), StorageError> {
        let statements = processed_statements(ids);
        if statements.is_empty() {
            return Ok(());
        }
        self.db.write_statements("marking treaty_inbox rows processed", statements).await?;
        Ok(())
    }
}

/// The statements that mark inbox messages `ids` processed (each id once). An id not yet
/// received gets a processed placeholder row, so a later delivery of it is dropped (as
/// MemoryMessageStore does). Processed rows keep no payload.
fn processed_statements(ids: &[MessageId]) -> Vec<Stmt> {
    let mut seen = HashSet::with_capacity(ids.len());
    let ids: Vec<MessageId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
    chunks(&ids)
        .into_iter()
        .map(|chunk| Stmt {
            sql: multi_row_sql(
                "INSERT INTO treaty_inbox (message_id, sender, session_id, topic, payload, processed) VALUES",
                1,
                &["''", "0", "''", "NULL", "TRUE"],
                chunk.len(),
                "ON CONFLICT (message_id) DO UPDATE SET processed = TRUE, payload = NULL",
            ),
            binds: chunk.iter().map(id_bind).collect(),
        })
        .collect()
}

impl MessageStore for SqlMessageStore {
    async fn enqueue(&self, messages: Vec<OutboundMessage>) -> Result<(), StoreError> {
        Ok(self.enqueue_all(&messages).await?)
    }

    async fn outbox(&self, destination: &X500Name, limit: usize) -> Result<Vec<OutboundMessage>, StoreError> {
        Ok(self.outbox_for(destination, limit).await?)
    }

    async fn outbox_destinations(&self) -> Result<Vec<X500Name>, StoreError> {
        Ok(self.destinations().await?)
    }

    async fn attempted(&self, ids: &[MessageId]) -> Result<(), StoreError> {
        Ok(self.attempted_all(ids).await?)
    }

    async fn acknowledged(&self, ids: &[MessageId]) -> Result<(), StoreError> {
        Ok(self.acknowledged_all(ids).await?)
    }

    async fn receive(&self, messages: Vec<InboundMessage>) -> Result<Vec<InboundMessage>, StoreError> {
        Ok(self.receive_all(messages).await?)
    }

    async fn unprocessed(&self, limit: usize) -> Result<Vec<InboundMessage>, StoreError> {
        Ok(self.unprocessed_all(limit).await?)
    }

    async fn processed(&self, ids: &[MessageId]) -> Result<(), StoreError> {
        Ok(self.processed_all(ids).await?)
    }

    async fn enqueue_processed(&self, messages: Vec<OutboundMessage>, processed: &[MessageId]) -> Result<(), StoreError> {
        Ok(self.enqueue_and_mark(&messages, processed).await?)
    }
}
