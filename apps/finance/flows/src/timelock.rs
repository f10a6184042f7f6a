//! Time-locked cash: the finance app's encumbrance example (white paper "Encumbrances").
//!
//! - `CashLock {"amount": "50.00 USD", "until": "<RFC 3339>", "recipient": "<name, optional>"}`
//!   moves that much of this node's cash to the recipient (this node when omitted) as cash
//!   *encumbered* by a `treaty.finance.TimeLock` state created in the same transaction. Until
//!   the lock's time nobody can spend it: the platform refuses to consume the cash without its
//!   lock, and the time-lock contract refuses to consume the lock before `until`. Locked cash
//!   is in the vault but not in the spendable balance nor in coin selection.
//! - `CashUnlock {}` consumes every lock of this node whose time has come together with the
//!   cash it guards, and gives the same cash back unencumbered. Nobody needs to run it: each
//!   lock asks its owner's node (through the vault schema registered here) to run it at
//!   `until`.

use serde::Deserialize;
use serde_json::{Value, json};
use treaty_core::{
    AbstractParty, AttachmentConstraint, Command, SecureHash, SignedTransaction, StateRef, TimeWindow, Timestamp, TransactionState,
    X500Name,
};
use treaty_finance_contracts::{Cash, CashCommand, TIME_LOCK, TimeLock, TimeLockCommand};
use treaty_flows::{FlowContext, FlowError, Ledger, Registry, finality};
use treaty_vault::{Criteria, IssuerFilter, MAX_PAGE_SIZE, PageSpec, ScheduledActivity, Sort, Status, TypedSchema, VaultError};

use super::{Services, amount, bad, built, cash_move, code, lock_of, select, sign, split_marked, with_locks_released};

/// Locks cash until a time.
pub const CASH_LOCK: &str = "CashLock";
/// Unlocks the time-locked cash whose time has come.
pub const CASH_UNLOCK: &str = "CashUnlock";

/// Most locks one `CashUnlock` transaction consumes (the next run takes the rest).
const MAX_LOCKS: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockArgs {
    amount: String,
    until: String,
    #[serde(default)]
    recipient: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnlockArgs {}

/// Registers the time-lock schema (the unlock scheduled at the lock's time, for its owner) and
/// the two flows; the recipient of locked cash records it through the responder.
pub(crate) fn register(registry: &mut Registry, s: &Services) {
    let schema = TypedSchema::<TimeLock>::new()
        .scheduled(|l| Some(ScheduledActivity { at: l.until, flow: CASH_UNLOCK.into(), args: "{}".into(), by: l.owner.clone() }));
    // A second registration (the same node started twice in one process) changes nothing.
    let _ = s.vault.register(schema);
    let s1 = s.clone();
    registry.flow(CASH_LOCK, 1, move |ctx: FlowContext, args: LockArgs| {
        let s = s1.clone();
        async move { with_locks_released(&ctx, &s, lock(&ctx, &s, args)).await }
    });
    let s2 = s.clone();
    registry.flow(CASH_UNLOCK, 1, move |ctx: FlowContext, _: UnlockArgs| {
        let s = s2.clone();
        async move { with_locks_released(&ctx, &s, unlock(&ctx, &s)).await }
    });
    super::finality_responders(registry, s, &[CASH_LOCK]);
}

fn time_lock(l: &TimeLock, notary: &treaty_core::Party, code: SecureHash) -> TransactionState {
    TransactionState::new(l, TIME_LOCK, notary.clone(), AttachmentConstraint::Hash(code))
}

async fn lock(ctx: &FlowContext, s: &Services, args: LockArgs) -> Result<Value, FlowError> {
    let amount = amount(CASH_LOCK, &args.amount)?;
    let until: Timestamp = args.until.parse().map_err(|e| bad(CASH_LOCK, "until", e))?;
    let recipient = match &args.recipient {
        None => s.me.clone(),
        Some(text) => {
            let name: X500Name = text.parse().map_err(|e| bad(CASH_LOCK, "recipient", e))?;
            let found = s.view.borrow().node(&name).map(|n| n.legal_identity.clone());
            found.ok_or_else(|| bad(CASH_LOCK, "recipient", format!("{name} is not on the network map")))?
        }
    };
    let sessions = if recipient.name == s.me.name { vec![] } else { vec![ctx.initiate(&recipient.name).await?] };
    ctx.progress("selecting coins").await?;
    let lock = lock_of(ctx);
    let to: AbstractParty = recipient.clone().into();
    let stx = built(ctx, s, "cash-lock", |salt| {
        let (to, currency) = (to.clone(), amount.token.clone());
        async move {
            let coins = select(s, lock, &currency, amount.quantity, &IssuerFilter::Any).await?;
            let code = code(s).await?;
            let outputs = split_marked(&coins, amount.quantity, &to, &s.me.clone().into());
            // The lock goes last; every paid output points at it.
            let lock_index = u32::try_from(outputs.len()).map_err(|_| FlowError::Invalid("too many outputs".into()))?;
            let encumbered = outputs.into_iter().map(|(a, owner, paid)| (a, owner, paid.then_some(lock_index))).collect();
            let b = cash_move(&coins.notary, &coins.refs, encumbered, code);
            let wtx = b
                .output(time_lock(&TimeLock { until, owner: to.clone() }, &coins.notary, code))
                .command(Command::new(&CashCommand::Move, coins.owners.clone()))
                .command(Command::new(&TimeLockCommand::Lock, vec![s.me.owning_key.clone()]))
                .attachment(code)
                .build(salt)
                .map_err(|e| FlowError::Invalid(e.to_string()))?;
            sign(s, SignedTransaction::new(wtx, vec![]), &coins.owners)
        }
    })
    .await?;
    ctx.progress("notarising and sending").await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &sessions).await?;
    Ok(
        json!({ "transaction": done.id().to_string(), "amount": args.amount, "until": until.to_string(), "recipient": recipient.name.to_string() }),
    )
}

/// A lock whose time has come and the cash it guards, locked for this flow in the vault.
#[derive(Clone, Debug, serde::Serialize, Deserialize)]
struct Due {
    lock: StateRef,
    until: Timestamp,
    cash: Vec<(StateRef, Cash)>,
    notary: treaty_core::Party,
}

fn vault_error(e: VaultError) -> FlowError {
    FlowError::Invalid(format!("{} {e}", e.code()))
}

/// This node's locks due at `now` (at most [`MAX_LOCKS`]) guarded by one notary (the first
/// found's), each with the unconsumed cash it encumbers; each group soft-locked for this flow,
/// skipping groups another flow holds.
async fn due(ctx: &FlowContext, s: &Services, now: Timestamp) -> Result<Vec<Due>, FlowError> {
    let criteria = Criteria::unconsumed()
        // A "time lock" of another contract's making is none: taking it into an unlock would
        // make every unlock of this notary's fail.
        .and(Criteria::of_type::<TimeLock>())
        .and(Criteria::participant(&s.me.owning_key));
    let page = s.vault.query(&criteria, &Sort::recording_order(), &PageSpec::first(MAX_PAGE_SIZE)).await.map_err(vault_error)?;
    let mut out = Vec::new();
    for v in page.states {
        if out.len() == MAX_LOCKS {
            break;
        }
        let l: TimeLock = v.state.data.unpack().map_err(|e| FlowError::Invalid(format!("vault state {}: {e}", v.state_ref)))?;
        if l.until > now || l.owner.owning_key() != &s.me.owning_key {
            continue;
        }
        let Some(Some(locking)) = s.ledger.transactions(&[v.state_ref.txhash]).await?.pop() else {
            return Err(FlowError::Invalid(format!("the transaction of lock {} is not recorded here", v.state_ref)));
        };
        let mut cash = Vec::new();
        for (index, o) in locking.tx().components().outputs.iter().enumerate() {
            if o.encumbrance != Some(v.state_ref.index) {
                continue;
            }
            let r = StateRef { txhash: v.state_ref.txhash, index: index as u32 };
            let held = s.vault.state(&r).await.map_err(vault_error)?;
            if held.is_some_and(|h| h.status == Status::Unconsumed) {
                let c: Cash = o.data.unpack().map_err(|e| FlowError::Invalid(format!("locked state {r}: {e}")))?;
                cash.push((r, c));
            }
        }
        if cash.is_empty() {
            continue;
        }
        // One notary per transaction: groups of other notaries are left unlocked for their own
        // activities (which would otherwise find them locked by this flow, end, and never run
        // again).
        if out.first().is_some_and(|d: &Due| d.notary != v.state.notary) {
            continue;
        }
        let mut group: Vec<StateRef> = cash.iter().map(|(r, _)| *r).collect();
        group.push(v.state_ref);
        match s.vault.lock(lock_of(ctx), &group).await {
            Ok(()) => out.push(Due { lock: v.state_ref, until: l.until, cash, notary: v.state.notary }),
            // Another flow is unlocking it.
            Err(VaultError::StatesUnavailable { .. }) => continue,
            Err(e) => return Err(vault_error(e)),
        }
    }
    Ok(out)
}

async fn unlock(ctx: &FlowContext, s: &Services) -> Result<Value, FlowError> {
    let now = Timestamp(ctx.now().await?);
    let found: Vec<Due> = ctx.side_effect("cash-unlock.due", |_| due(ctx, s, now)).await?;
    // One notary per transaction (`due` takes only the first lock's); the others' own
    // activities unlock them.
    let Some(notary) = found.first().map(|d| d.notary.clone()) else {
        return Ok(json!({ "unlocked": 0 }));
    };
    // (A journal from before `due` kept to one notary may hold several: filtered still.)
    let group: Vec<Due> = found.into_iter().filter(|d| d.notary == notary).collect();
    let from = group.iter().map(|d| d.until).max().unwrap_or(now);
    let me: AbstractParty = s.me.clone().into();
    ctx.progress("unlocking").await?;
    let g = group.clone();
    let stx = built(ctx, s, "cash-unlock", |salt| async move {
        let code = code(s).await?;
        let mut inputs = Vec::new();
        let mut owners = Vec::new();
        let mut outputs = Vec::new();
        for d in &g {
            inputs.push(d.lock);
            for (r, c) in &d.cash {
                inputs.push(*r);
                if !owners.contains(c.owner.owning_key()) {
                    owners.push(c.owner.owning_key().clone());
                }
                outputs.push((c.amount.clone(), me.clone(), None));
            }
        }
        let b = cash_move(&notary, &inputs, outputs, code);
        let mut signers = owners.clone();
        if !signers.contains(&s.me.owning_key) {
            signers.push(s.me.owning_key.clone());
        }
        let wtx = b
            .command(Command::new(&CashCommand::Move, owners))
            .command(Command::new(&TimeLockCommand::Unlock, vec![s.me.owning_key.clone()]))
            .time_window(TimeWindow::From(from))
            .attachment(code)
            .build(salt)
            .map_err(|e| FlowError::Invalid(e.to_string()))?;
        sign(s, SignedTransaction::new(wtx, vec![]), &signers)
    })
    .await?;
    ctx.progress("notarising").await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &[]).await?;
    let amounts: Vec<String> = group.iter().flat_map(|d| d.cash.iter().map(|(_, c)| c.amount.to_string())).collect();
    Ok(json!({ "transaction": done.id().to_string(), "unlocked": group.len(), "amounts": amounts }))
}
