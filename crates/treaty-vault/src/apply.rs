//! Applying recorded transactions to the vault.
//!
//! Relevancy: an output is relevant when one of its participants is ours (the caller's
//! predicate accepts its owning key or, for a composite key, one of its leaves). Relevant
//! outputs are stored as unconsumed states with their canonical bytes, participants and the
//! columns the registered schemas extract; every input the vault holds unconsumed becomes
//! consumed (time, consuming transaction) and loses its soft lock. References are not consumed.
//!
//! A batch is one database transaction. Within it every output is stored before any input is
//! consumed, so a batch may list a transaction before the one whose output it spends. Across
//! batches, apply transactions in dependency order (as the node records them): an input whose
//! state arrives later is not consumed retroactively.
//!
//! Idempotence: `treaty_vault_transactions` holds every applied transaction id; the insert
//! into it decides (under the database's unique index, so also between concurrent callers)
//! which transactions of a batch are new, and only those touch states.

use std::collections::{HashMap, HashSet};

use treaty_core::{ComponentGroup, PublicKey, SecureHash, StateRef, Timestamp, TransactionState, WireTransaction};

use crate::Vault;
use crate::error::VaultError;
use crate::exec::{Cell, Exec, Kind, STATE_KINDS, Sqlx, Writer, run_now};
use crate::record::{Derived, StateRow, Status, VaultState, is_ours};
use crate::sql::{Arg, Context, Sql, chunks, hash_from, in_write, state_ref_from, values};
use crate::track::Applied;

/// What [`Vault::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// Transactions applied now, in batch order.
    pub applied: Vec<SecureHash>,
    /// Transactions applied before (or listed twice), which changed nothing.
    pub skipped: Vec<SecureHash>,
    /// States recorded as unconsumed.
    pub produced: Vec<StateRef>,
    /// States recorded as consumed.
    pub consumed: Vec<StateRef>,
}

/// A relevant output about to be recorded.
struct NewState {
    state_ref: StateRef,
    state: TransactionState,
    bytes: Vec<u8>,
    derived: Derived,
}

/// A transaction about to be applied.
struct Prepared {
    id: SecureHash,
    inputs: Vec<StateRef>,
    outputs: Vec<NewState>,
}

/// Which transactions of a batch were new, and the states each consumed.
type Written = (HashSet<SecureHash>, Vec<(SecureHash, Vec<VaultState>)>);

/// `UPDATE ... RETURNING` cannot name the table by alias on every backend: the columns of
/// [`crate::record::STATE_COLUMNS`] unqualified.
const RETURNING_STATE: &str =
    "seq, tx_id, output_index, status, recorded_at, consumed_at, consuming_tx, state_bytes, linear_id, external_id, lock_id";

// Rows per multi-row `INSERT` are at most 128 (`chunks`); with at most 11 columns a statement
// binds fewer than 1,500 values, well under both backends' limits.
impl Vault {
    /// Applies recorded transactions in one database transaction (all or nothing).
    ///
    /// `ours` says whether a key is one of the node's (its legal identity and confidential
    /// keys); `now` is the node's clock, recorded as `recorded_at` of the states produced and
    /// `consumed_at` of those consumed. A transaction applied before is skipped.
    pub async fn apply(
        &self,
        txs: &[&WireTransaction],
        ours: &(dyn Fn(&PublicKey) -> bool + Sync),
        now: Timestamp,
    ) -> Result<ApplySummary, VaultError> {
        self.apply_with(txs, ours, now, None).await
    }

    /// [`Vault::apply`], running `first` (the node recording the same transactions) in the
    /// same job on the SQLite writer thread: one commit, and one wait for it, instead of two.
    /// `first` needs that writer thread (a SQLite file database); elsewhere it is refused.
    pub async fn apply_with(
        &self,
        txs: &[&WireTransaction],
        ours: &(dyn Fn(&PublicKey) -> bool + Sync),
        now: Timestamp,
        first: Option<treaty_storage::RecordJob>,
    ) -> Result<ApplySummary, VaultError> {
        if first.is_some() && self.db().sqlite_writer().is_none() {
            return Err(VaultError::Storage(treaty_storage::StorageError::Writer {
                reason: "recording with the vault in one job needs the SQLite writer thread (a SQLite file database)".into(),
                transient: false,
            }));
        }
        let registry = self.registry();
        let mut summary = ApplySummary::default();
        let mut seen = HashSet::new();
        let mut batch: Vec<Prepared> = Vec::with_capacity(txs.len());
        for tx in txs {
            let id = tx.id();
            if !seen.insert(id) {
                summary.skipped.push(id);
                continue;
            }
            let components = tx.components();
            let bytes = tx.group_components(ComponentGroup::Outputs);
            let mut outputs = Vec::new();
            for (i, state) in components.outputs.iter().enumerate() {
                if !state.data.participants.iter().any(|p| is_ours(p, ours)) {
                    continue;
                }
                let index = u32::try_from(i)
                    .map_err(|_| VaultError::Corrupt { what: format!("transaction {id}"), reason: "too many outputs".into() })?;
                let state_ref = StateRef { txhash: id, index };
                let mut derived = Derived::of(&registry, &state_ref, state)?;
                // Another participant's activity is theirs to run.
                derived.scheduled = derived.scheduled.filter(|a| is_ours(&a.by, ours));
                // The exact bytes the transaction carries (never re-encoded).
                let bytes = bytes.get(i).cloned().ok_or_else(|| VaultError::Corrupt {
                    what: format!("transaction {id}"),
                    reason: format!("output {i} has no component bytes"),
                })?;
                outputs.push(NewState { state_ref, state: state.clone(), bytes, derived });
            }
            batch.push(Prepared { id, inputs: components.inputs.clone(), outputs });
        }
        if batch.is_empty() {
            if let (Some(first), Some(writer)) = (first, self.db().sqlite_writer()) {
                writer.write("recording attachments and transactions", first).await?;
            }
            return Ok(summary);
        }

        let what = "applying transactions to the vault";
        let micros = now.micros();
        let (fresh, consumed_rows) = match self.db().sqlite_writer() {
            // On the writer thread: every statement a function call.
            Some(writer) => {
                let (back, written) = writer
                    .write(what, move |c| {
                        if let Some(first) = first {
                            first(c)?;
                        }
                        let written = run_now(write_batch(&mut Writer(c), &batch, micros))?;
                        Ok::<_, VaultError>((batch, written))
                    })
                    .await?;
                batch = back;
                written
            }
            None => in_write!(self.db(), what, tx => write_batch(&mut Sqlx(tx), &batch, micros).await?),
        };

        if batch.iter().any(|p| fresh.contains(&p.id) && p.outputs.iter().any(|n| n.derived.scheduled.is_some())) {
            self.inner.schedule.notify_one();
        }
        let mut consumed_by: HashMap<SecureHash, Vec<VaultState>> = consumed_rows.into_iter().collect();
        let mut feed = Vec::new();
        let subscribed = self.inner.updates.receiver_count() > 0;
        for p in batch {
            if !fresh.contains(&p.id) {
                summary.skipped.push(p.id);
                continue;
            }
            summary.applied.push(p.id);
            let consumed = consumed_by.remove(&p.id).unwrap_or_default();
            summary.produced.extend(p.outputs.iter().map(|n| n.state_ref));
            summary.consumed.extend(consumed.iter().map(|s| s.state_ref));
            if subscribed {
                let produced = p
                    .outputs
                    .into_iter()
                    .map(|n| {
                        let state = VaultState {
                            state_ref: n.state_ref,
                            state: n.state,
                            state_bytes: n.bytes,
                            status: Status::Unconsumed,
                            recorded_at: now,
                            consumed_at: None,
                            consuming_tx: None,
                            linear_id: n.derived.linear.clone(),
                            lock_id: None,
                        };
                        (state, n.derived)
                    })
                    .collect();
                let consumed = consumed
                    .into_iter()
                    .map(|s| {
                        // Derived again from the stored state; extraction succeeded when it was
                        // recorded, and the participants alone are a fallback.
                        let derived = Derived::of(&registry, &s.state_ref, &s.state).unwrap_or_else(|_| Derived {
                            participants: s
                                .state
                                .data
                                .participants
                                .iter()
                                .map(|p| (crate::record::key_text(p.owning_key()), p.name().map(|n| n.to_string())))
                                .collect(),
                            fungible: None,
                            values: Vec::new(),
                            linear: s.linear_id.clone(),
                            scheduled: None,
                        });
                        (s, derived)
                    })
                    .collect();
                feed.push(Applied { tx_id: p.id, produced, consumed });
            }
        }
        for applied in feed {
            // No subscriber left is not an error.
            let _ = self.inner.updates.send(std::sync::Arc::new(applied));
        }
        Ok(summary)
    }

    /// Whether the transaction `id` has been applied.
    pub async fn is_applied(&self, id: &SecureHash) -> Result<bool, VaultError> {
        let what = format!("reading treaty_vault_transactions ({id})");
        crate::sql::on_pool!(self.db(), pool => {
            let row = sqlx::query("SELECT 1 FROM treaty_vault_transactions WHERE tx_id = $1").bind(id.as_bytes().as_slice()).fetch_optional(pool).await.ctx(&what)?;
            Ok(row.is_some())
        })
    }
}

/// The statements of [`Vault::apply`] for one batch, on either executor.
async fn write_batch<E: Exec>(e: &mut E, batch: &[Prepared], micros: i64) -> Result<Written, VaultError> {
    let what = "applying transactions to the vault";
    // 1. Which transactions are new: the unique index decides.
    let mut fresh: HashSet<SecureHash> = HashSet::new();
    for chunk in chunks(batch) {
        let mut sql = Sql::default();
        let rows = values(&mut sql, chunk, |p, sql| vec![sql.arg(Arg::Bytes(p.id.as_bytes().to_vec())), sql.arg(Arg::Int(micros))]);
        let text = format!(
            "INSERT INTO treaty_vault_transactions (tx_id, applied_at) VALUES {rows} ON CONFLICT (tx_id) DO NOTHING RETURNING tx_id"
        );
        let returned = e.rows(&text, sql.args, &[Kind::Bytes]).await?;
        for row in returned {
            let [id]: [Cell; 1] = cells(row)?;
            fresh.insert(hash_from("treaty_vault_transactions.tx_id", &id.bytes(what)?)?);
        }
    }

    // 2. The relevant outputs of new transactions, then what is derived from them.
    let new_states: Vec<&NewState> = batch.iter().filter(|p| fresh.contains(&p.id)).flat_map(|p| p.outputs.iter()).collect();
    let mut seqs: HashMap<StateRef, i64> = HashMap::with_capacity(new_states.len());
    for chunk in chunks(&new_states) {
        let mut sql = Sql::default();
        let rows = values(&mut sql, chunk, |n, sql| {
            let linear = n.derived.linear.as_ref();
            vec![
                sql.arg(Arg::Bytes(n.state_ref.txhash.as_bytes().to_vec())),
                sql.arg(Arg::Int(i64::from(n.state_ref.index))),
                sql.arg(Arg::Text(n.state.data.type_id.clone())),
                sql.arg(Arg::Int(i64::from(n.state.data.schema_version))),
                sql.arg(Arg::Text(n.state.contract.clone())),
                sql.arg(Arg::Text(n.state.notary.name.to_string())),
                "'unconsumed'".to_string(),
                sql.arg(Arg::Int(micros)),
                sql.arg(Arg::OptText(linear.map(|l| l.id.hyphenated().to_string()))),
                sql.arg(Arg::OptText(linear.and_then(|l| l.external_id.clone()))),
                sql.arg(Arg::Bytes(n.bytes.clone())),
            ]
        });
        let text = format!(
            "INSERT INTO treaty_vault_states (tx_id, output_index, type_id, schema_version, contract, notary, status, recorded_at, \
                 linear_id, external_id, state_bytes) VALUES {rows} ON CONFLICT (tx_id, output_index) DO NOTHING \
                 RETURNING seq, tx_id, output_index"
        );
        let returned = e.rows(&text, sql.args, &[Kind::Int, Kind::Bytes, Kind::Int]).await?;
        for row in returned {
            let [seq, tx_id, index]: [Cell; 3] = cells(row)?;
            let r = state_ref_from(&tx_id.bytes(what)?, index.int(what)?)?;
            seqs.insert(r, seq.int(what)?);
        }
    }
    let stored: Vec<(i64, &NewState)> = new_states.iter().filter_map(|n| seqs.get(&n.state_ref).map(|s| (*s, *n))).collect();

    let participants: Vec<(i64, i64, &String, &Option<String>)> = stored
        .iter()
        .flat_map(|(seq, n)| n.derived.participants.iter().enumerate().map(move |(i, (k, name))| (*seq, i as i64, k, name)))
        .collect();
    for chunk in chunks(&participants) {
        let mut sql = Sql::default();
        let rows = values(&mut sql, chunk, |(seq, pos, key, name), sql| {
            vec![
                sql.arg(Arg::Int(*seq)),
                sql.arg(Arg::Int(*pos)),
                sql.arg(Arg::Text((*key).clone())),
                sql.arg(Arg::OptText((*name).clone())),
            ]
        });
        let text = format!("INSERT INTO treaty_vault_participants (state_seq, position, owning_key, name) VALUES {rows}");
        e.run(&text, sql.args).await?;
    }

    let fungibles: Vec<(i64, &crate::record::FungibleRow)> =
        stored.iter().filter_map(|(seq, n)| n.derived.fungible.as_ref().map(|f| (*seq, f))).collect();
    for chunk in chunks(&fungibles) {
        let mut sql = Sql::default();
        let rows = values(&mut sql, chunk, |(seq, f), sql| {
            vec![
                sql.arg(Arg::Int(*seq)),
                sql.arg(Arg::Text(f.owner_key.clone())),
                sql.arg(Arg::OptText(f.owner_name.clone())),
                sql.arg(Arg::Text(f.issuer.clone())),
                sql.arg(Arg::Text(f.token.clone())),
                sql.arg(Arg::Int(f.quantity)),
            ]
        });
        let text = format!("INSERT INTO treaty_vault_fungible (state_seq, owner_key, owner_name, issuer, token, quantity) VALUES {rows}");
        e.run(&text, sql.args).await?;
    }

    let columns: Vec<(i64, &String, &crate::schema::ColumnValue)> =
        stored.iter().flat_map(|(seq, n)| n.derived.values.iter().map(move |(name, v)| (*seq, name, v))).collect();
    for chunk in chunks(&columns) {
        let mut sql = Sql::default();
        let rows = values(&mut sql, chunk, |(seq, name, v), sql| {
            let (int, text) = match v {
                crate::schema::ColumnValue::Integer(i) => (Some(*i), None),
                crate::schema::ColumnValue::Text(t) => (None, Some(t.clone())),
            };
            vec![sql.arg(Arg::Int(*seq)), sql.arg(Arg::Text((*name).clone())), sql.arg(Arg::OptInt(int)), sql.arg(Arg::OptText(text))]
        });
        let text = format!("INSERT INTO treaty_vault_columns (state_seq, name, int_value, text_value) VALUES {rows}");
        e.run(&text, sql.args).await?;
    }

    let scheduled: Vec<(i64, &crate::schema::ScheduledActivity)> =
        stored.iter().filter_map(|(seq, n)| n.derived.scheduled.as_ref().map(|a| (*seq, a))).collect();
    for chunk in chunks(&scheduled) {
        let mut sql = Sql::default();
        let rows = values(&mut sql, chunk, |(seq, a), sql| {
            vec![
                sql.arg(Arg::Int(*seq)),
                sql.arg(Arg::Int(a.at.micros())),
                sql.arg(Arg::Text(a.flow.clone())),
                sql.arg(Arg::Text(a.args.clone())),
            ]
        });
        let text = format!("INSERT INTO treaty_vault_schedule (state_seq, due_at, flow, args) VALUES {rows}");
        e.run(&text, sql.args).await?;
    }

    // 3. Inputs the vault holds become consumed (after every output of the batch is in).
    let mut consumed_rows: Vec<(SecureHash, Vec<VaultState>)> = Vec::new();
    for p in batch.iter().filter(|p| fresh.contains(&p.id)) {
        let mut gone = Vec::new();
        for chunk in chunks(&p.inputs) {
            let mut sql = Sql::default();
            let at = sql.arg(Arg::Int(micros));
            let by = sql.arg(Arg::Bytes(p.id.as_bytes().to_vec()));
            let refs = sql.refs(chunk);
            let text = format!(
                "UPDATE treaty_vault_states AS s SET status = 'consumed', consumed_at = {at}, consuming_tx = {by}, lock_id = NULL \
                     WHERE s.status = 'unconsumed' AND ({refs}) RETURNING {RETURNING_STATE}"
            );
            let mut seqs = Vec::new();
            for row in e.rows(&text, sql.args, &STATE_KINDS).await? {
                let row = StateRow::from_cells(row, what)?;
                seqs.push(row.seq);
                gone.push(row.decode()?);
            }
            // The fungible ones leave coin selection's index (migration 3).
            if !seqs.is_empty() {
                let mut sql = Sql::default();
                let list = sql.list(seqs.into_iter().map(Arg::Int));
                e.run(&format!("UPDATE treaty_vault_fungible SET consumed = 1 WHERE state_seq IN ({list})"), sql.args).await?;
            }
        }
        consumed_rows.push((p.id, gone));
    }
    Ok((fresh, consumed_rows))
}

/// The cells of a returned row, as many as expected.
fn cells<const N: usize>(row: Vec<Cell>) -> Result<[Cell; N], VaultError> {
    let n = row.len();
    row.try_into()
        .map_err(|_| VaultError::Corrupt { what: "a vault statement".into(), reason: format!("{n} columns returned, {N} expected") })
}
