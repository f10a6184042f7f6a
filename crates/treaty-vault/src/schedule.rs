//! Scheduled activities: the flows states ask the node to run at a time (white paper "Event
//! scheduling").
//!
//! A schema names the activity ([`crate::ScheduledActivity`]); [`Vault::apply`] keeps it in
//! `treaty_vault_schedule` when the node holds the key of the party meant to run it. The
//! node's scheduler asks [`Vault::due_activities`] what is due, starts each flow under the
//! client id [`Scheduled::client_id`] — the flow store keeps one flow per client id, so a
//! start repeated after a crash returns the first flow — and then notes the flow with
//! [`Vault::mark_started`]. An activity whose state has been consumed is never due.

use sqlx::Row;
use treaty_core::{StateRef, Timestamp};

use crate::Vault;
use crate::error::VaultError;
use crate::sql::{Arg, Context, Sql, bind_args, in_write, on_pool, state_ref_from};

/// An activity the vault holds, not started yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduled {
    /// The state asking for it (unconsumed).
    pub state_ref: StateRef,
    /// When it is due.
    pub at: Timestamp,
    /// The flow to start.
    pub flow: String,
    /// Its arguments (JSON text).
    pub args: String,
}

impl Scheduled {
    /// The client id the scheduler starts the flow under: `scheduled:<state ref>`. One state
    /// asks for at most one activity, so this names it.
    pub fn client_id(&self) -> String {
        format!("scheduled:{}", self.state_ref)
    }
}

impl Vault {
    /// Activities of unconsumed states not started yet, earliest first: those due at or
    /// before `until`, at most `limit` of them. Ask with `until` far ahead to learn when the
    /// next one is due.
    pub async fn due_activities(&self, until: Timestamp, limit: usize) -> Result<Vec<Scheduled>, VaultError> {
        let mut sql = Sql::default();
        let until = sql.arg(Arg::Int(until.micros()));
        let limit = sql.arg(Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        let text = format!(
            "SELECT s.tx_id, s.output_index, a.due_at, a.flow, a.args FROM treaty_vault_schedule a \
             JOIN treaty_vault_states s ON s.seq = a.state_seq \
             WHERE a.started IS NULL AND s.status = 'unconsumed' AND a.due_at <= {until} \
             ORDER BY a.due_at, a.state_seq LIMIT {limit}"
        );
        let what = "reading treaty_vault_schedule";
        on_pool!(self.db(), pool => {
            let rows = bind_args!(sqlx::query(sqlx::AssertSqlSafe(text)), sql.args).fetch_all(pool).await.ctx(what)?;
            rows.iter()
                .map(|r| {
                    let tx: Vec<u8> = r.try_get(0).ctx(what)?;
                    let index: i64 = r.try_get(1).ctx(what)?;
                    Ok(Scheduled {
                        state_ref: state_ref_from(&tx, index)?,
                        at: Timestamp(r.try_get(2).ctx(what)?),
                        flow: r.try_get(3).ctx(what)?,
                        args: r.try_get(4).ctx(what)?,
                    })
                })
                .collect()
        })
    }

    /// Notes that the activity of `state_ref` was started as flow `flow_id`: it is not due
    /// again. Returns whether the vault held such an activity not started yet.
    pub async fn mark_started(&self, state_ref: &StateRef, flow_id: &str) -> Result<bool, VaultError> {
        let mut sql = Sql::default();
        let started = sql.arg(Arg::Text(flow_id.to_string()));
        let cond = sql.refs(std::slice::from_ref(state_ref));
        let text = format!(
            "UPDATE treaty_vault_schedule SET started = {started} WHERE started IS NULL AND state_seq IN \
             (SELECT s.seq FROM treaty_vault_states s WHERE {cond})"
        );
        let what = format!("marking the activity of {state_ref} started");
        let n = in_write!(self.db(), what, tx => {
            bind_args!(sqlx::query(sqlx::AssertSqlSafe(text)), sql.args).execute(&mut *tx).await.ctx(&what)?.rows_affected()
        });
        Ok(n > 0)
    }

    /// The flow started for the activity of `state_ref`, if one was.
    pub async fn started_activity(&self, state_ref: &StateRef) -> Result<Option<String>, VaultError> {
        let mut sql = Sql::default();
        let cond = sql.refs(std::slice::from_ref(state_ref));
        let text = format!("SELECT a.started FROM treaty_vault_schedule a JOIN treaty_vault_states s ON s.seq = a.state_seq WHERE {cond}");
        let what = format!("reading the activity of {state_ref}");
        on_pool!(self.db(), pool => {
            let row = bind_args!(sqlx::query(sqlx::AssertSqlSafe(text)), sql.args).fetch_optional(pool).await.ctx(&what)?;
            Ok(match row {
                Some(r) => r.try_get::<Option<String>, _>(0).ctx(&what)?,
                None => None,
            })
        })
    }

    /// Woken when [`Vault::apply`] records a state with an activity for this node: the
    /// scheduler waits on it beside its timer.
    pub fn schedule_changed(&self) -> &tokio::sync::Notify {
        &self.inner.schedule
    }
}
