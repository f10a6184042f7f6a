//! Soft locks and coin selection.
//!
//! A soft lock reserves unconsumed states for one flow (its [`LockId`]) so that two flows of
//! this node never build transactions spending the same state. Locks live in the state's row
//! (`lock_id`), are released by [`Vault::release`] when the flow ends or fails, and vanish when
//! the state is consumed. They are the node's own bookkeeping: the notary, not the lock, is
//! what prevents a double spend on the ledger.
//!
//! Coin selection ([`Vault::select_fungible`]) picks unlocked unconsumed states of a token,
//! largest first, until they sum to the amount, and locks them in the same database
//! transaction: all or nothing. On SQLite the selection runs inside the single write
//! transaction, so concurrent selections are serialised. On PostgreSQL candidates are read
//! with `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent selections pass each other by
//! instead of waiting, and each takes states no other has; a selection that came up short only
//! because others held rows for a moment (the committed unlocked balance is enough) retries.

use std::fmt;
use std::time::Duration;

use sqlx::Row;
use treaty_core::{PublicKey, StateRef};

use crate::Vault;
use crate::error::{Unavailable, VaultError};
use crate::exec::{Exec, Kind, STATE_KINDS, Sqlx, Writer, run_now};
use crate::record::{STATE_COLUMNS, StateRow, VaultState, key_text};
use crate::sql::{Arg, Context, Sql, bind_args, chunks, in_write, state_ref_from};

/// Identifies the holder of soft locks: typically the id of the flow that will spend them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockId(pub uuid::Uuid);

impl fmt::Display for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockId({self})")
    }
}

impl From<uuid::Uuid> for LockId {
    fn from(id: uuid::Uuid) -> Self {
        LockId(id)
    }
}

/// Which issuers' tokens a coin selection may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerFilter {
    /// Any issuer (the selection may mix issuers; the states keep their issuers).
    Any,
    /// Only these issuers.
    OneOf(Vec<String>),
}

/// States a coin selection locked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The states, largest first, each now locked by the selection's lock.
    pub states: Vec<VaultState>,
    /// The sum of their quantities: at least the amount asked for.
    pub total: u128,
}

/// How many times a PostgreSQL selection retries when others hold the rows it needs.
const SELECTION_ATTEMPTS: u32 = 30;

/// Candidates read per round: starts small (a selection rarely needs many states, and on
/// PostgreSQL every candidate read is row-locked until the selection commits) and doubles.
const FIRST_CHUNK: usize = 4;
const MAX_CHUNK: usize = 256;

enum Outcome {
    Selected(Vec<VaultState>, u128),
    Short { available: u128, locked: u128 },
}

impl Vault {
    /// Locks the states at `refs` for `lock_id`: all of them, or none (and
    /// [`VaultError::StatesUnavailable`] naming each state not in the vault, consumed, or held
    /// by another lock). States it already holds stay locked.
    pub async fn lock(&self, lock_id: LockId, refs: &[StateRef]) -> Result<(), VaultError> {
        let mut wanted: Vec<StateRef> = refs.to_vec();
        wanted.sort();
        wanted.dedup();
        let what = format!("locking states for {lock_id}");
        in_write!(self.db(), what, tx => {
            let mut locked = std::collections::HashSet::new();
            for chunk in chunks(&wanted) {
                let mut sql = Sql::default();
                let id = sql.arg(Arg::Text(lock_id.to_string()));
                let cond = sql.refs(chunk);
                let text = format!(
                    "UPDATE treaty_vault_states AS s SET lock_id = {id} WHERE s.status = 'unconsumed' AND (s.lock_id IS NULL OR s.lock_id = {id}) \
                     AND ({cond}) RETURNING tx_id, output_index"
                );
                for row in bind_args!(sqlx::query(sqlx::AssertSqlSafe(text)), sql.args).fetch_all(&mut *tx).await.ctx(&what)? {
                    locked.insert(state_ref_from(&row.try_get::<Vec<u8>, _>(0).ctx(&what)?, row.try_get::<i64, _>(1).ctx(&what)?)?);
                }
            }
            let missing: Vec<StateRef> = wanted.iter().filter(|r| !locked.contains(r)).copied().collect();
            if !missing.is_empty() {
                let mut found = std::collections::HashMap::new();
                for chunk in chunks(&missing) {
                    let mut sql = Sql::default();
                    let cond = sql.refs(chunk);
                    let text = format!("SELECT s.tx_id, s.output_index, s.status, s.lock_id FROM treaty_vault_states s WHERE {cond}");
                    for row in bind_args!(sqlx::query(sqlx::AssertSqlSafe(text)), sql.args).fetch_all(&mut *tx).await.ctx(&what)? {
                        let r = state_ref_from(&row.try_get::<Vec<u8>, _>(0).ctx(&what)?, row.try_get::<i64, _>(1).ctx(&what)?)?;
                        let status: String = row.try_get(2).ctx(&what)?;
                        let holder: Option<String> = row.try_get(3).ctx(&what)?;
                        let why = match (status.as_str(), holder) {
                            ("consumed", _) => Unavailable::Consumed,
                            (_, Some(h)) => Unavailable::LockedBy(LockId(h.parse().map_err(|e| VaultError::Corrupt {
                                what: format!("lock_id of state {r}"),
                                reason: format!("{h:?}: {e}"),
                            })?)),
                            _ => Unavailable::NotInVault,
                        };
                        found.insert(r, why);
                    }
                }
                let unavailable = missing.into_iter().map(|r| { let why = found.remove(&r).unwrap_or(Unavailable::NotInVault); (r, why) }).collect();
                // Undoes the locks taken above.
                Err(VaultError::StatesUnavailable { lock_id, unavailable })?;
            }
        });
        Ok(())
    }

    /// Releases every state `lock_id` holds; returns how many.
    pub async fn release(&self, lock_id: LockId) -> Result<u64, VaultError> {
        self.release_some(lock_id, None).await
    }

    /// Releases the states at `refs` that `lock_id` holds; returns how many.
    pub async fn release_states(&self, lock_id: LockId, refs: &[StateRef]) -> Result<u64, VaultError> {
        self.release_some(lock_id, Some(refs.to_vec())).await
    }

    async fn release_some(&self, lock_id: LockId, refs: Option<Vec<StateRef>>) -> Result<u64, VaultError> {
        let what = format!("releasing the states of {lock_id}");
        match self.db().sqlite_writer() {
            // On the writer thread, in its next batch: a write through the pool would take the
            // process's write lock and commit (and fsync) on its own, stalling the writer's
            // batches meanwhile — once per payment, since every payment releases its lock.
            Some(writer) => writer.write(&what, move |c| run_now(release_in(&mut Writer(c), lock_id, refs.as_deref()))).await,
            None => Ok(in_write!(self.db(), what, tx => release_in(&mut Sqlx(tx), lock_id, refs.as_deref()).await?)),
        }
    }

    /// Picks unlocked, unconsumed states of `token` from `issuers`, owned by one of `owners`,
    /// largest first, until they sum to at least `amount`, and locks them for `lock_id` —
    /// atomically: concurrent selections never share a state. Fails with
    /// [`VaultError::InsufficientBalance`] (nothing locked) when the unlocked balance is less
    /// than `amount`; it reports the states other locks hold separately.
    pub async fn select_fungible(
        &self,
        token: &str,
        issuers: &IssuerFilter,
        amount: u64,
        owners: &[PublicKey],
        lock_id: LockId,
    ) -> Result<Selection, VaultError> {
        let invalid = |reason: &str| Err(VaultError::InvalidSelection { reason: reason.to_string() });
        if amount == 0 {
            return invalid("the amount must be positive");
        }
        if owners.is_empty() {
            return invalid("no owner keys: name the keys whose states may be spent");
        }
        if matches!(issuers, IssuerFilter::OneOf(list) if list.is_empty()) {
            return invalid("an empty issuer list matches nothing (use IssuerFilter::Any for every issuer)");
        }
        let postgres = self.db().kind() == treaty_storage::BackendKind::Postgres;
        let target = u128::from(amount);
        let what = format!("selecting {amount} {token} for {lock_id}");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match self.db().sqlite_writer() {
                // On the writer thread: the reads and the locking in one job.
                Some(writer) => {
                    let ask = Ask { token: token.to_string(), issuers: issuers.clone(), owners: owners.to_vec(), target, lock_id };
                    let named = what.clone();
                    writer.write(&what, move |c| run_now(select_in(&mut Writer(c), &ask, false, &named))).await?
                }
                None => {
                    let ask = Ask { token: token.to_string(), issuers: issuers.clone(), owners: owners.to_vec(), target, lock_id };
                    in_write!(self.db(), what, tx => select_in(&mut Sqlx(tx), &ask, postgres, &what).await?)
                }
            };
            match outcome {
                Outcome::Selected(states, total) => return Ok(Selection { states, total }),
                // Others held rows for a moment, but the committed unlocked balance suffices.
                Outcome::Short { available, .. } if postgres && available >= target => {
                    if attempt >= SELECTION_ATTEMPTS {
                        return Err(VaultError::SelectionContended { token: token.to_string(), requested: amount, attempts: attempt });
                    }
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(10)) * 2)).await;
                }
                Outcome::Short { available, locked } => {
                    return Err(VaultError::InsufficientBalance {
                        token: token.to_string(),
                        requested: amount,
                        available_unlocked: available,
                        locked,
                    });
                }
            }
        }
    }
}

/// Clears `lock_id` from the states it holds (only those at `refs` when given); returns how
/// many.
async fn release_in(exec: &mut impl Exec, lock_id: LockId, refs: Option<&[StateRef]>) -> Result<u64, VaultError> {
    let id = Arg::Text(lock_id.to_string());
    let Some(refs) = refs else {
        return exec.run("UPDATE treaty_vault_states SET lock_id = NULL WHERE lock_id = $1", vec![id]).await;
    };
    let mut released = 0;
    for chunk in chunks(refs) {
        let mut sql = Sql::default();
        let id = sql.arg(id.clone());
        let cond = sql.refs(chunk);
        let text = format!("UPDATE treaty_vault_states AS s SET lock_id = NULL WHERE s.lock_id = {id} AND ({cond})");
        released += exec.run(&text, sql.args).await?;
    }
    Ok(released)
}

/// What a coin selection asks for.
struct Ask {
    token: String,
    issuers: IssuerFilter,
    owners: Vec<PublicKey>,
    target: u128,
    lock_id: LockId,
}

/// Matching states of `ask`, whatever their lock (the candidate query adds "unlocked").
fn matching(sql: &mut Sql, ask: &Ask) -> String {
    // `f.consumed = 0` as well as the status: it lets the database read the spendable states
    // through their partial index instead of every fungible state the node ever held.
    let mut cond = format!("s.status = 'unconsumed' AND f.consumed = 0 AND f.token = {}", sql.arg(Arg::Text(ask.token.clone())));
    if let IssuerFilter::OneOf(list) = &ask.issuers {
        cond.push_str(&format!(" AND f.issuer IN ({})", sql.list(list.iter().map(|i| Arg::Text(i.clone())))));
    }
    cond.push_str(&format!(" AND f.owner_key IN ({})", sql.list(ask.owners.iter().map(|k| Arg::Text(key_text(k))))));
    cond
}

/// The query for up to `chunk` unlocked candidates of `ask`, largest first, after the
/// `(quantity, seq)` last read.
fn candidates(ask: &Ask, after: Option<(i64, i64)>, chunk: usize, postgres: bool) -> (String, Sql) {
    let mut sql = Sql::default();
    let mut cond = matching(&mut sql, ask);
    cond.push_str(" AND s.lock_id IS NULL AND f.quantity > 0");
    if let Some((q, seq)) = after {
        let q = sql.arg(Arg::Int(q));
        let seq = sql.arg(Arg::Int(seq));
        cond.push_str(&format!(" AND (f.quantity < {q} OR (f.quantity = {q} AND f.state_seq > {seq}))"));
    }
    // SQLite, without statistics, may prefer the owner or the issuer index, which hold every
    // fungible state ever recorded: the spendable index is named. The order is the index's
    // own (`f.state_seq`, not the equal `s.seq`, which the planner would sort by), so the
    // read stops at the LIMIT instead of sorting every state of the same quantity first.
    let (index, skip) = if postgres { ("", " FOR UPDATE OF s SKIP LOCKED") } else { (" INDEXED BY treaty_vault_fungible_spendable", "") };
    let text = format!(
        "SELECT {STATE_COLUMNS}, f.quantity FROM treaty_vault_states s JOIN treaty_vault_fungible f{index} ON f.state_seq = s.seq \
         WHERE {cond} ORDER BY f.quantity DESC, f.state_seq ASC LIMIT {chunk}{skip}"
    );
    (text, sql)
}

/// One attempt of [`Vault::select_fungible`] in a write transaction: reads candidates largest
/// first until they suffice and locks them, or reports the balances (locking nothing).
/// `postgres`: read candidates `FOR UPDATE SKIP LOCKED`.
async fn select_in<E: Exec>(e: &mut E, ask: &Ask, postgres: bool, what: &str) -> Result<Outcome, VaultError> {
    let mut chosen: Vec<VaultState> = Vec::new();
    let mut total: u128 = 0;
    let mut after: Option<(i64, i64)> = None;
    let mut chunk = FIRST_CHUNK;
    let mut kinds = STATE_KINDS.to_vec();
    kinds.push(Kind::Int);
    'reading: loop {
        let (text, sql) = candidates(ask, after, chunk, postgres);
        let rows = e.rows(&text, sql.args, &kinds).await?;
        let exhausted = rows.len() < chunk;
        for mut row in rows {
            let quantity = row.pop().map_or(Ok(0), |q| q.int(what))?;
            let state = StateRow::from_cells(row, what)?;
            after = Some((quantity, state.seq));
            total += u128::try_from(quantity).unwrap_or(0);
            chosen.push(state.decode()?);
            if total >= ask.target {
                break 'reading;
            }
        }
        if exhausted {
            break;
        }
        chunk = (chunk * 2).min(MAX_CHUNK);
    }
    if total >= ask.target {
        let refs: Vec<StateRef> = chosen.iter().map(|s| s.state_ref).collect();
        for part in chunks(&refs) {
            let mut sql = Sql::default();
            let id = sql.arg(Arg::Text(ask.lock_id.to_string()));
            let cond = sql.refs(part);
            let text = format!("UPDATE treaty_vault_states AS s SET lock_id = {id} WHERE s.lock_id IS NULL AND ({cond})");
            if e.run(&text, sql.args).await? != part.len() as u64 {
                // Cannot happen: the rows were read unlocked in this transaction.
                return Err(VaultError::Corrupt { what: what.to_string(), reason: "a selected state was locked meanwhile".into() });
            }
        }
        for s in &mut chosen {
            s.lock_id = Some(ask.lock_id);
        }
        return Ok(Outcome::Selected(chosen, total));
    }
    // Nothing was locked; report the balances.
    let mut sql = Sql::default();
    let cond = matching(&mut sql, ask);
    let text = format!(
        "SELECT CAST(SUM(CASE WHEN s.lock_id IS NULL THEN f.quantity >> 32 ELSE 0 END) AS BIGINT), \
         CAST(SUM(CASE WHEN s.lock_id IS NULL THEN f.quantity & 4294967295 ELSE 0 END) AS BIGINT), \
         CAST(SUM(CASE WHEN s.lock_id IS NULL THEN 0 ELSE f.quantity >> 32 END) AS BIGINT), \
         CAST(SUM(CASE WHEN s.lock_id IS NULL THEN 0 ELSE f.quantity & 4294967295 END) AS BIGINT) \
         FROM treaty_vault_states s JOIN treaty_vault_fungible f ON f.state_seq = s.seq WHERE {cond}"
    );
    let row = e.rows(&text, sql.args, &[Kind::OptInt; 4]).await?.into_iter().next().unwrap_or_default();
    let part = |i: usize| -> Result<u128, VaultError> {
        let v = row.get(i).map_or(Ok(None), |c| c.opt_int(what))?;
        u128::try_from(v.unwrap_or(0)).map_err(|_| VaultError::Corrupt { what: what.to_string(), reason: "a negative sum".into() })
    };
    Ok(Outcome::Short { available: (part(0)? << 32) + part(1)?, locked: (part(2)? << 32) + part(3)? })
}

#[cfg(test)]
mod tests {
    use treaty_storage::writer::rusqlite;

    use super::*;

    /// Coin selection reads a token's spendable states through their partial index: its cost
    /// must not grow with the consumed states a node has accumulated.
    #[test]
    fn candidates_are_read_through_the_spendable_index() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        for m in crate::VAULT_MIGRATIONS.sqlite {
            db.execute_batch(m.sql).unwrap();
        }
        let owner = treaty_core::KeyPair::from_seed(treaty_core::SignatureScheme::Ed25519, [1; 32]).unwrap().public();
        let issuers = [IssuerFilter::Any, IssuerFilter::OneOf(vec!["O=Bank,L=London,C=GB".into(), "O=Other,L=Paris,C=FR".into()])];
        for (issuers, after) in issuers.into_iter().flat_map(|i| [(i.clone(), None), (i, Some((500, 7)))]) {
            let ask = Ask { token: "USD".into(), issuers, owners: vec![owner.clone()], target: 100, lock_id: LockId(uuid::Uuid::nil()) };
            let (text, _) = candidates(&ask, after, 8, false);
            let mut plan_query = db.prepare(&format!("EXPLAIN QUERY PLAN {text}")).unwrap();
            for i in 1..=plan_query.parameter_count() {
                plan_query.raw_bind_parameter(i, rusqlite::types::Null).unwrap();
            }
            let mut rows = plan_query.raw_query();
            let mut plan = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                plan.push(row.get::<_, String>(3).unwrap());
            }
            assert!(plan.iter().any(|step| step.contains("USING INDEX treaty_vault_fungible_spendable")), "{plan:?}");
            // Read in the index's order: no sort of the candidates before the first comes out.
            assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE")), "{plan:?}");
        }
    }
}
