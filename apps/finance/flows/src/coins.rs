//! Keeping coins in shape: merging many small cash states into one and splitting a large one
//! into several, by hand or in the background (the node's `[coins]` section).
//!
//! - `CashMerge {"currency": "USD", "issuer": "<name, optional>", "max_inputs": 50}` consumes
//!   up to `max_inputs` of this node's unlocked cash states of one currency and one issuer,
//!   smallest first, all guarded by one notary, and makes one state of their sum.
//! - `CashSplit {"currency": "USD", "issuer": "<name, optional>", "into": 8}` consumes this
//!   node's largest unlocked state of the currency (of that issuer) and makes `into` states
//!   that differ by at most one smallest unit and sum to it exactly.
//!
//! Both work only on cash held on the node's **well-known key**, and keep it there: cash on
//! confidential keys (anonymous payments) is left alone, because merging it would link those
//! keys to the node's name for everyone who later resolves the chain. Like payments, they
//! select and lock their coins, build and sign in one journaled step and are notarised through
//! `finality`; they release their locks when they end.
//!
//! The background task ([`maintain`]) looks at the vault every `interval_seconds`: for each
//! currency and issuer of this node's cash (on its well-known key) it starts `CashMerge` when
//! more than `merge_above` states are unlocked, `CashSplit` when it holds fewer than
//! `split_below` states, locked or not (and the largest unlocked one can be split), through
//! the flow engine — durable flows, listed with client ids `coins:…` — and never a second one
//! for a token whose maintenance flow has not ended. Counting locked states for splits keeps
//! the task from taking the last free coin while payments hold the others. The configuration's
//! check (`treaty_node::config::CoinsConfig`) makes a split that is merged at once, or a merge
//! that is split at once, impossible.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_json::{Value, json};
use treaty_core::{Amount, Command, Currency, Issued, Party, SignedTransaction, StateRef, X500Name};
use treaty_finance_contracts::{Cash, CashCommand};
use treaty_flows::{FlowContext, FlowEngine, FlowError, FlowId, FlowStatus, Registry, finality};
use treaty_node::config::{CoinsConfig, MAX_MERGE_INPUTS, MAX_SPLIT_INTO};
use treaty_vault::{Criteria, FungibleCriteria, LockFilter, LockId, PageSpec, Sort, VaultError, VaultState};

use super::{Services, bad, built, cash_move, code, lock_of, sign, with_locks_released};

/// Merges small cash states of one currency and issuer into one.
pub const CASH_MERGE: &str = "CashMerge";
/// Splits the largest cash state of a currency into several.
pub const CASH_SPLIT: &str = "CashSplit";

/// How many times a flow selects again when a payment locked a coin it had chosen.
const SELECTION_ATTEMPTS: usize = 5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeArgs {
    currency: String,
    #[serde(default)]
    issuer: Option<String>,
    /// A number, checked by [`count`] (so a wrong type is refused naming the field too).
    #[serde(default)]
    max_inputs: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitArgs {
    currency: String,
    #[serde(default)]
    issuer: Option<String>,
    /// A number, checked by [`count`].
    #[serde(default)]
    into: Option<Value>,
}

/// A whole number argument in `min..=max` (`default` when absent), or a refusal naming `field`.
fn count(flow: &str, field: &str, value: Option<&Value>, default: u64, min: u64, max: u64) -> Result<u64, FlowError> {
    let Some(value) = value else { return Ok(default) };
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(bad(flow, field, format!("{value} is not between {min} and {max}"))),
    }
}

/// Registers the two flows (no counterparty takes part: they need no responder).
pub(crate) fn register(registry: &mut Registry, s: &Services) {
    let s1 = s.clone();
    registry.flow(CASH_MERGE, 1, move |ctx: FlowContext, args: MergeArgs| {
        let s = s1.clone();
        async move { with_locks_released(&ctx, &s, merge(&ctx, &s, args)).await }
    });
    let s2 = s.clone();
    registry.flow(CASH_SPLIT, 1, move |ctx: FlowContext, args: SplitArgs| {
        let s = s2.clone();
        async move { with_locks_released(&ctx, &s, split(&ctx, &s, args)).await }
    });
}

fn currency(flow: &str, code: &str) -> Result<Currency, FlowError> {
    Currency::new(code).map_err(|e| bad(flow, "currency", e))
}

/// The issuer as the vault names it (the X.500 name's display form).
fn issuer(flow: &str, name: Option<&str>) -> Result<Option<String>, FlowError> {
    name.map(|n| n.parse::<X500Name>().map(|x| x.to_string()).map_err(|e| bad(flow, "issuer", e))).transpose()
}

/// "USD" or "USD issued by O=…", for messages.
fn token_text(currency: &Currency, issuer: Option<&str>) -> String {
    match issuer {
        Some(i) => format!("{} issued by {i}", currency.code()),
        None => currency.code().to_string(),
    }
}

/// This node's unconsumed, unlocked cash on its well-known key (of `currency`, of `issuer`).
fn mine(s: &Services, currency: Option<&str>, issuer: Option<&str>) -> Criteria {
    held(s, currency, issuer).and(Criteria::Lock(LockFilter::Unlocked))
}

/// This node's unconsumed cash on its well-known key, locked or not (of `currency`, of `issuer`).
fn held(s: &Services, currency: Option<&str>, issuer: Option<&str>) -> Criteria {
    let mut fungible = FungibleCriteria::default().owner(&s.me.owning_key);
    if let Some(c) = currency {
        fungible.tokens = Some(vec![c.to_string()]);
    }
    if let Some(i) = issuer {
        fungible = fungible.issuer(i);
    }
    Criteria::unconsumed().and(Criteria::of_type::<Cash>()).and(Criteria::Fungible(fungible))
}

fn vault_error(e: VaultError) -> FlowError {
    FlowError::Invalid(format!("{} {e}", e.code()))
}

/// Cash states chosen and locked for one transaction.
struct Chosen {
    refs: Vec<StateRef>,
    states: Vec<Cash>,
    notary: Party,
}

/// Decodes the cash of vault states, keeping only those of `notary` and of the first one's
/// issued token (the issuer's reference included: the contract conserves each issued token).
fn same_token(states: Vec<VaultState>, notary: &Party) -> Result<Chosen, FlowError> {
    let mut chosen = Chosen { refs: Vec::new(), states: Vec::new(), notary: notary.clone() };
    for v in states.into_iter().filter(|v| v.state.notary == *notary) {
        let c: Cash = v.state.data.unpack().map_err(|e| FlowError::Invalid(format!("vault state {}: {e}", v.state_ref)))?;
        if chosen.states.first().is_some_and(|first| first.amount.token != c.amount.token) {
            continue;
        }
        chosen.refs.push(v.state_ref);
        chosen.states.push(c);
    }
    Ok(chosen)
}

/// Locks `chosen` for the flow: `Ok(false)` when a payment took one meanwhile (select again).
async fn lock_all(s: &Services, lock: LockId, chosen: &Chosen) -> Result<bool, FlowError> {
    match s.vault.lock(lock, &chosen.refs).await {
        Ok(()) => Ok(true),
        Err(VaultError::StatesUnavailable { .. }) => Ok(false),
        Err(e) => Err(vault_error(e)),
    }
}

/// The issuer of `currency` with the most unlocked states here (at least two), for a merge
/// that names none.
async fn busiest_issuer(s: &Services, currency: &Currency) -> Result<Option<String>, FlowError> {
    let balances = s.vault.balances(&mine(s, Some(currency.code()), None)).await.map_err(vault_error)?;
    Ok(balances.into_iter().filter(|b| b.states >= 2).max_by_key(|b| b.states).map(|b| b.issuer))
}

/// Up to `max` of the smallest unlocked states of the token, of the notary guarding most of
/// them, locked for the flow.
async fn select_smallest(s: &Services, lock: LockId, currency: &Currency, issuer: &str, max: u64) -> Result<Chosen, FlowError> {
    let page = PageSpec::first(u32::try_from(max).unwrap_or(u32::MAX));
    let smallest = Sort::parse("quantity asc").map_err(vault_error)?;
    for _ in 0..SELECTION_ATTEMPTS {
        let criteria = mine(s, Some(currency.code()), Some(issuer));
        let found = s.vault.query(&criteria, &smallest, &page).await.map_err(vault_error)?.states;
        // One notary per transaction: the one guarding most of the smallest states (on a tie,
        // the smallest's); then the smallest of that notary's.
        let mut per_notary: Vec<(&Party, usize)> = Vec::new();
        for v in &found {
            match per_notary.iter_mut().find(|(n, _)| **n == v.state.notary) {
                Some(entry) => entry.1 += 1,
                None => per_notary.push((&v.state.notary, 1)),
            }
        }
        // `max_by_key` keeps the last of equals: reversed, that is the first seen.
        let Some(notary) = per_notary.iter().rev().max_by_key(|(_, n)| *n).map(|(p, _)| (*p).clone()) else {
            return Ok(Chosen { refs: vec![], states: vec![], notary: s.me.clone() });
        };
        let found = if per_notary.len() > 1 {
            let of_notary = criteria.and(Criteria::notary(&notary.name));
            s.vault.query(&of_notary, &smallest, &page).await.map_err(vault_error)?.states
        } else {
            found
        };
        let chosen = same_token(found, &notary)?;
        if chosen.refs.len() < 2 || lock_all(s, lock, &chosen).await? {
            return Ok(chosen);
        }
    }
    Err(FlowError::Exception(format!(
        "could not lock {} coins to merge: payments kept taking them ({SELECTION_ATTEMPTS} attempts); try again",
        currency.code()
    )))
}

/// The transaction that consumes the `chosen` coins (this node's, on its well-known key) and
/// pays `amounts` back to this node, signed.
async fn reshape(
    s: &Services,
    chosen: &Chosen,
    amounts: Vec<Amount<Issued<Currency>>>,
    salt: treaty_core::PrivacySalt,
) -> Result<SignedTransaction, FlowError> {
    let me = &s.me;
    let outputs = amounts.into_iter().map(|a| (a, me.clone().into(), None)).collect();
    let code = code(s).await?;
    let wtx = cash_move(&chosen.notary, &chosen.refs, outputs, code)
        .command(Command::new(&CashCommand::Move, vec![me.owning_key.clone()]))
        .attachment(code)
        .build(salt)
        .map_err(|e| FlowError::Invalid(e.to_string()))?;
    sign(s, SignedTransaction::new(wtx, vec![]), std::slice::from_ref(&me.owning_key))
}

async fn merge(ctx: &FlowContext, s: &Services, args: MergeArgs) -> Result<Value, FlowError> {
    let currency = currency(CASH_MERGE, &args.currency)?;
    let named = issuer(CASH_MERGE, args.issuer.as_deref())?;
    let max_inputs = count(CASH_MERGE, "max_inputs", args.max_inputs.as_ref(), 50, 2, MAX_MERGE_INPUTS)?;
    ctx.progress("selecting coins").await?;
    let lock = lock_of(ctx);
    let stx = built(ctx, s, "cash-merge", |salt| {
        let (named, currency) = (named.clone(), currency.clone());
        async move {
            let Some(issuer) = (match named {
                Some(i) => Some(i),
                None => busiest_issuer(s, &currency).await?,
            }) else {
                return Err(nothing_to_merge(&currency, None, 0));
            };
            let chosen = select_smallest(s, lock, &currency, &issuer, max_inputs).await?;
            if chosen.refs.len() < 2 {
                return Err(nothing_to_merge(&currency, Some(&issuer), chosen.refs.len()));
            }
            let token = chosen.states[0].amount.token.clone();
            let total = Amount::sum(chosen.states.iter().map(|c| &c.amount), token)
                .map_err(|e| FlowError::Exception(format!("the coins to merge do not add up: {e}")))?;
            reshape(s, &chosen, vec![total], salt).await
        }
    })
    .await?;
    ctx.progress("notarising").await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &[]).await?;
    let merged = done.tx().components().inputs.len();
    let amount: Cash = super::first_output(&done)?;
    Ok(json!({
        "transaction": done.id().to_string(),
        "merged": merged,
        "amount": plain(&amount.amount).to_string(),
        "issuer": amount.amount.token.issuer.party.to_string(),
        "notary": done.tx().components().notary.as_ref().map(|n| n.name.to_string()),
    }))
}

fn nothing_to_merge(currency: &Currency, issuer: Option<&str>, found: usize) -> FlowError {
    let states = if found == 1 { "state" } else { "states" };
    FlowError::Exception(format!(
        "nothing to merge: this node holds {found} unlocked {states} of {} (of one notary, on its well-known key); a merge needs at least 2",
        token_text(currency, issuer)
    ))
}

/// An issued amount without its issuer, for results.
fn plain(a: &Amount<Issued<Currency>>) -> Amount<Currency> {
    Amount::new(a.quantity, a.token.product.clone())
}

async fn split(ctx: &FlowContext, s: &Services, args: SplitArgs) -> Result<Value, FlowError> {
    let currency = currency(CASH_SPLIT, &args.currency)?;
    let named = issuer(CASH_SPLIT, args.issuer.as_deref())?;
    let into = count(CASH_SPLIT, "into", args.into.as_ref(), 8, 2, MAX_SPLIT_INTO)?;
    let into = u32::try_from(into).map_err(|e| bad(CASH_SPLIT, "into", e))?;
    ctx.progress("selecting a coin").await?;
    let lock = lock_of(ctx);
    let stx = built(ctx, s, "cash-split", |salt| {
        let (named, currency) = (named.clone(), currency.clone());
        async move {
            let largest = Sort::parse("quantity desc").map_err(vault_error)?;
            let mut coin = None;
            for _ in 0..SELECTION_ATTEMPTS {
                let criteria = mine(s, Some(currency.code()), named.as_deref());
                let Some(v) = s.vault.query(&criteria, &largest, &PageSpec::first(1)).await.map_err(vault_error)?.states.pop() else {
                    return Err(FlowError::Exception(format!(
                        "nothing to split: this node holds no unlocked {} state on its well-known key",
                        token_text(&currency, named.as_deref())
                    )));
                };
                let notary = v.state.notary.clone();
                let chosen = same_token(vec![v], &notary)?;
                let quantity = chosen.states[0].amount.quantity;
                if quantity < u64::from(into) {
                    return Err(FlowError::Exception(format!(
                        "too small to split: the largest unlocked {} state holds {}, less than one smallest unit for each of {into} states",
                        token_text(&currency, named.as_deref()),
                        plain(&chosen.states[0].amount)
                    )));
                }
                if lock_all(s, lock, &chosen).await? {
                    coin = Some(chosen);
                    break;
                }
            }
            let chosen = coin.ok_or_else(|| {
                FlowError::Exception(format!(
                    "could not lock a {} coin to split: payments kept taking it ({SELECTION_ATTEMPTS} attempts); try again",
                    currency.code()
                ))
            })?;
            reshape(s, &chosen, chosen.states[0].amount.split_evenly(into), salt).await
        }
    })
    .await?;
    ctx.progress("notarising").await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &[]).await?;
    let outputs = &done.tx().components().outputs;
    let first: Cash = super::first_output(&done)?;
    let total: u64 = outputs.iter().filter_map(|o| o.data.unpack::<Cash>().ok()).map(|c| c.amount.quantity).sum();
    Ok(json!({
        "transaction": done.id().to_string(),
        "into": outputs.len(),
        "amount": Amount::new(total, first.amount.token.product.clone()).to_string(),
        "issuer": first.amount.token.issuer.party.to_string(),
        "notary": done.tx().components().notary.as_ref().map(|n| n.name.to_string()),
    }))
}

/// A token as the vault's balances name it: currency code and issuer.
type Token = (String, String);

/// The `[coins]` task: looks every `interval_seconds` and starts the maintenance flows due,
/// never a second one for a token whose last has not ended. Runs until the node stops.
pub(crate) async fn maintain(s: Services, config: CoinsConfig, flows: FlowEngine) {
    tracing::info!(
        "coins: every {} s, merging above {} unlocked states per token ({} at a time), splitting below {} (into {})",
        config.interval_seconds,
        config.merge_above.map_or("never".into(), |n| n.to_string()),
        config.max_inputs,
        config.split_below.map_or("never".into(), |n| n.to_string()),
        config.split_into
    );
    let mut task = Task { busy: HashMap::new(), stuck: HashSet::new(), sequence: 0 };
    loop {
        tokio::time::sleep(config.interval()).await;
        if let Err(e) = task.pass(&s, &config, &flows).await {
            tracing::warn!("coins: {e}; looking again in {} s", config.interval_seconds);
        }
    }
}

/// What the task remembers between passes.
struct Task {
    /// Each token's maintenance flow that has not ended (as last seen).
    busy: HashMap<Token, FlowId>,
    /// Flows already reported as waiting for the operator.
    stuck: HashSet<FlowId>,
    /// Makes client ids unique within a run.
    sequence: u64,
}

impl Task {
    async fn pass(&mut self, s: &Services, config: &CoinsConfig, flows: &FlowEngine) -> Result<(), String> {
        self.forget_ended(flows).await?;
        self.find_running(s, flows).await?;
        // Merging counts the unlocked states (those a merge could take); splitting counts the
        // locked ones too, so that coins held by payments in flight (which come back as change or
        // leave) never make the task take the last free coin from under the next payment.
        let unlocked: HashMap<Token, u64> = s
            .vault
            .balances(&mine(s, None, None))
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|b| ((b.token, b.issuer), b.states))
            .collect();
        let all = s.vault.balances(&held(s, None, None)).await.map_err(|e| e.to_string())?;
        for b in all {
            let token: Token = (b.token.clone(), b.issuer.clone());
            if self.busy.contains_key(&token) {
                continue;
            }
            let free = unlocked.get(&token).copied().unwrap_or(0);
            let start = if let Some(above) = config.merge_above.filter(|above| free > *above) {
                let args = json!({ "currency": b.token, "issuer": b.issuer, "max_inputs": config.max_inputs });
                Some((CASH_MERGE, "merge", args, format!("{free} unlocked states, more than merge_above = {above}")))
            } else if let Some(below) = config.split_below.filter(|below| b.states < *below) {
                let largest = largest(s, &b.token, &b.issuer).await?;
                (largest >= config.split_into).then(|| {
                    let args = json!({ "currency": b.token, "issuer": b.issuer, "into": config.split_into });
                    let why = format!("{} state(s) ({free} unlocked), fewer than split_below = {below}", b.states);
                    (CASH_SPLIT, "split", args, why)
                })
            } else {
                None
            };
            let Some((flow, kind, args, why)) = start else { continue };
            self.sequence += 1;
            let client_id = format!("coins:{kind}:{}:{}:{}-{}", b.token, b.issuer, now_micros(), self.sequence);
            match flows.start(flow, args, Some(client_id)).await {
                Ok(id) => {
                    tracing::info!("coins: {} issued by {}: {why}; started {flow} {id}", b.token, b.issuer);
                    self.busy.insert(token, id);
                }
                // The node is draining: it starts nothing new, and neither does this task.
                Err(FlowError::Draining) => return Ok(()),
                Err(e) => tracing::warn!("coins: {} issued by {}: {why}, but {flow} could not be started: {e}", b.token, b.issuer),
            }
        }
        Ok(())
    }

    /// Drops the tokens whose maintenance flow has ended, logging how it ended.
    async fn forget_ended(&mut self, flows: &FlowEngine) -> Result<(), String> {
        let mut ended = Vec::new();
        for (token, id) in &self.busy {
            let record = flows.get(*id).await.map_err(|e| e.to_string())?;
            let Some(r) = record else {
                ended.push(token.clone());
                continue;
            };
            match r.status {
                FlowStatus::Completed => {
                    let result = r.result.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                    tracing::info!("coins: {} {id} for {} issued by {} completed: {result}", r.name, token.0, token.1);
                }
                FlowStatus::Failed | FlowStatus::Killed => tracing::warn!(
                    "coins: {} {id} for {} issued by {} ended {}: {}",
                    r.name,
                    token.0,
                    token.1,
                    r.status.as_str(),
                    r.error.as_deref().unwrap_or("")
                ),
                FlowStatus::Hospitalized | FlowStatus::Paused => {
                    if self.stuck.insert(*id) {
                        tracing::warn!(
                            "coins: {} {id} for {} issued by {} is {}; no other maintenance of that token until it is retried or killed",
                            r.name,
                            token.0,
                            token.1,
                            r.status.as_str()
                        );
                    }
                }
                FlowStatus::Runnable => {}
            }
            if r.status.is_final() {
                self.stuck.remove(id);
                ended.push(token.clone());
            }
        }
        for token in ended {
            self.busy.remove(&token);
        }
        Ok(())
    }

    /// Notes maintenance flows this task did not start in this run — started by hand, or by
    /// the task before the node restarted — from the coins they hold locked.
    async fn find_running(&mut self, s: &Services, flows: &FlowEngine) -> Result<(), String> {
        let locked = Criteria::unconsumed()
            .and(Criteria::of_type::<Cash>())
            .and(Criteria::Lock(LockFilter::Locked))
            .and(Criteria::Fungible(FungibleCriteria { owners: Some(vec![s.me.owning_key.clone()]), ..Default::default() }));
        let mut stream = s.vault.stream(locked, Sort::recording_order(), 1000).map_err(|e| e.to_string())?;
        let ours: HashSet<FlowId> = self.busy.values().copied().collect();
        let mut seen: HashSet<LockId> = HashSet::new();
        while let Some(v) = stream.next().await.map_err(|e| e.to_string())? {
            let Some(lock) = v.lock_id else { continue };
            if !seen.insert(lock) || ours.contains(&FlowId(lock.0)) {
                continue;
            }
            let Some(r) = flows.get(FlowId(lock.0)).await.map_err(|e| e.to_string())? else { continue };
            if (r.name == CASH_MERGE || r.name == CASH_SPLIT) && !r.status.is_final() {
                let c: Cash = v.state.data.unpack().map_err(|e| format!("vault state {}: {e}", v.state_ref))?;
                let token = (c.amount.token.product.code().to_string(), c.amount.token.issuer.party.to_string());
                tracing::info!("coins: {} {} for {} issued by {} is running; waiting for it", r.name, r.id, token.0, token.1);
                self.busy.entry(token).or_insert(r.id);
            }
        }
        Ok(())
    }
}

/// The quantity of the largest unlocked state of the token (0 when there is none).
async fn largest(s: &Services, currency: &str, issuer: &str) -> Result<u64, String> {
    let sort = Sort::parse("quantity desc").map_err(|e| e.to_string())?;
    let page = s.vault.query(&mine(s, Some(currency), Some(issuer)), &sort, &PageSpec::first(1)).await.map_err(|e| e.to_string())?;
    match page.states.first() {
        Some(v) => {
            let c: Cash = v.state.data.unpack().map_err(|e| format!("vault state {}: {e}", v.state_ref))?;
            Ok(c.amount.quantity)
        }
        None => Ok(0),
    }
}

/// Microseconds since the epoch, for client ids.
fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}
