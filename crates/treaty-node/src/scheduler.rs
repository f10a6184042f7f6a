//! The scheduler: starts the flows states ask for when their time comes (white paper "Event
//! scheduling"; the vault side is `treaty_vault::ScheduledActivity`).
//!
//! Exactly once, also across crashes: an activity is started under the client id
//! `scheduled:<state ref>`, and the flow store keeps one flow per client id, so a start
//! repeated after a crash between starting and noting it returns the flow started before.
//! Only then is the activity noted as started in the vault. An activity whose state is
//! consumed before it is due never runs.
//!
//! The scheduler sleeps until the earliest activity is due, or until the vault records a new
//! one, and looks again at least once a minute (the wall clock may jump). An activity that
//! cannot be started (its flow is not registered, its arguments are refused) is logged and
//! tried again a minute later: an upgrade that registers the flow lets it run. While the node
//! is draining, due activities wait.

use std::collections::HashMap;
use std::time::Duration;

use treaty_core::{StateRef, Timestamp};
use treaty_flows::{FlowEngine, FlowError};
use treaty_vault::{Scheduled, Vault};

/// How many due activities one pass starts at most (the next pass takes the rest at once).
const BATCH: usize = 256;
/// The longest sleep between passes.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// When to try again an activity that could not be started.
const RETRY: Duration = Duration::from_secs(60);
/// When to try again while the node drains.
const DRAINING_RETRY: Duration = Duration::from_secs(5);
/// After a database error.
const ERROR_RETRY: Duration = Duration::from_secs(1);

fn now() -> Timestamp {
    Timestamp(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64))
}

fn later(t: Timestamp, d: Duration) -> Timestamp {
    t.plus_micros(d.as_micros() as i64)
}

/// Runs the scheduler until the task is aborted.
pub(crate) async fn run(vault: Vault, flows: FlowEngine) {
    // Activities that could not be started, and when to try each again.
    let mut deferred: HashMap<StateRef, Timestamp> = HashMap::new();
    loop {
        let sleep = match pass(&vault, &flows, &mut deferred).await {
            Ok(next) => {
                let wait = next.map_or(MAX_SLEEP, |t| Duration::from_micros(u64::try_from(t.micros() - now().micros()).unwrap_or(0)));
                wait.min(MAX_SLEEP)
            }
            Err(e) => {
                tracing::warn!("scheduler: reading the vault's scheduled activities failed: {e}");
                ERROR_RETRY
            }
        };
        if sleep.is_zero() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = vault.schedule_changed().notified() => {}
        }
    }
}

/// Starts what is due; returns when the next activity is due (or a deferred one may be tried).
async fn pass(
    vault: &Vault,
    flows: &FlowEngine,
    deferred: &mut HashMap<StateRef, Timestamp>,
) -> Result<Option<Timestamp>, treaty_vault::VaultError> {
    let t = now();
    deferred.retain(|_, retry| *retry > t);
    let due = vault.due_activities(t, BATCH + deferred.len()).await?;
    let full = due.len() == BATCH + deferred.len();
    for activity in due {
        if deferred.contains_key(&activity.state_ref) {
            continue;
        }
        if let Some(pause) = start(vault, flows, &activity).await {
            deferred.insert(activity.state_ref, later(now(), pause));
        }
    }
    if full {
        // More are due than one pass takes.
        return Ok(Some(now()));
    }
    let upcoming = vault.due_activities(Timestamp(i64::MAX), deferred.len() + 1).await?;
    let next = upcoming.iter().filter(|a| !deferred.contains_key(&a.state_ref)).map(|a| a.at).min();
    Ok(next.into_iter().chain(deferred.values().copied()).min())
}

/// Starts one activity and notes it started. `Some(pause)`: it could not be, try again then.
async fn start(vault: &Vault, flows: &FlowEngine, activity: &Scheduled) -> Option<Duration> {
    let Scheduled { state_ref, flow, args, .. } = activity;
    let args: serde_json::Value = match serde_json::from_str(args) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("scheduled activity of {state_ref}: its arguments for flow {flow} are not JSON ({e}); retrying in a minute");
            return Some(RETRY);
        }
    };
    let id = match flows.start(flow, args, Some(activity.client_id())).await {
        Ok(id) => id,
        Err(FlowError::Draining) => return Some(DRAINING_RETRY),
        Err(e) => {
            tracing::error!("scheduled activity of {state_ref}: flow {flow} could not be started: {e}; retrying in a minute");
            return Some(RETRY);
        }
    };
    match vault.mark_started(state_ref, &id.to_string()).await {
        Ok(_) => {
            tracing::info!("scheduled activity of {state_ref}: started flow {flow} as {id}");
            None
        }
        // Started but not noted: the next pass starts it again under the same client id,
        // which returns this flow, and notes it then.
        Err(e) => {
            tracing::warn!("scheduled activity of {state_ref}: flow {id} started but not noted ({e}); noting it again shortly");
            Some(ERROR_RETRY)
        }
    }
}
