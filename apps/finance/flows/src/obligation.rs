//! Obligations: a debt due by a date, settled in cash or declared defaulted once due — the
//! finance app's example of scheduled events (white paper "Event scheduling").
//!
//! - `ObligationIssue {"amount": "100.00 USD", "beneficiary": "<name>", "due": "<RFC 3339>",
//!   "notary": "<name, optional with one notary>", "oracle": "<name, optional>"}` — run by the
//!   obligor; `oracle` names the exchange-rate oracle whose fixes settle it in other currencies.
//! - `ObligationSettle {"id": "<linear id>", "currency": "<code, optional>"}` — run by the
//!   obligor before the due date: pays the beneficiary the amount in cash (with change) and
//!   consumes the obligation. In another currency, the amount is converted at the named
//!   oracle's rate, which the oracle signs for (seeing only its fix and the time window).
//! - `ObligationDefault {"id": "<linear id>"}` — run by the beneficiary from the due date on.
//!   Nobody needs to: every unsettled obligation asks its beneficiary's node, through the vault
//!   schema registered here, to run it when it falls due, and the node's scheduler does so
//!   exactly once, also when the node was down at the time.
//!
//! Each returns JSON with the transaction id and the obligation's linear id.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use treaty_core::{
    AbstractParty, AttachmentConstraint, Command, Currency, Party, SignedTransaction, StateRef, TimeWindow, Timestamp, TransactionBuilder,
    TransactionState, UniqueIdentifier, X500Name,
};
use treaty_finance_contracts::{CashCommand, FxFix, OBLIGATION, Obligation, ObligationCommand, format_rate};
use treaty_flows::{FlowContext, FlowError, Registry, finality};
use treaty_vault::{IssuerFilter, ScheduledActivity, TypedSchema};

use super::oracle;
use super::{
    Services, amount, bad, built, cash_move, code, first_output, linear_state, lock_of, notary, select, sign, split, with_locks_released,
};

/// Creates an obligation owed by this node.
pub const OBLIGATION_ISSUE: &str = "ObligationIssue";
/// Pays an obligation off.
pub const OBLIGATION_SETTLE: &str = "ObligationSettle";
/// Declares an obligation defaulted (scheduled at its due date on the beneficiary's node).
pub const OBLIGATION_DEFAULT: &str = "ObligationDefault";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueArgs {
    amount: String,
    beneficiary: String,
    due: String,
    #[serde(default)]
    notary: Option<String>,
    #[serde(default)]
    oracle: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdArgs {
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleArgs {
    id: String,
    #[serde(default)]
    currency: Option<String>,
}

/// Registers the obligation schema (linear id; the default scheduled at the due date for the
/// beneficiary) and the three flows with their responders.
pub(crate) fn register(registry: &mut Registry, s: &Services) {
    let schema = TypedSchema::<Obligation>::new().linear(|o| o.linear_id.clone()).scheduled(|o| {
        (!o.defaulted).then(|| ScheduledActivity {
            at: o.due,
            flow: OBLIGATION_DEFAULT.into(),
            args: json!({ "id": o.linear_id.id.hyphenated().to_string() }).to_string(),
            by: o.beneficiary.clone(),
        })
    });
    // A second registration (the same node started twice in one process) changes nothing.
    let _ = s.vault.register(schema);
    let s1 = s.clone();
    registry.flow(OBLIGATION_ISSUE, 1, move |ctx: FlowContext, args: IssueArgs| {
        let s = s1.clone();
        async move { issue(&ctx, &s, args).await }
    });
    let s2 = s.clone();
    registry.flow(OBLIGATION_SETTLE, 1, move |ctx: FlowContext, args: SettleArgs| {
        let s = s2.clone();
        async move { with_locks_released(&ctx, &s, settle(&ctx, &s, args)).await }
    });
    let s3 = s.clone();
    registry.flow(OBLIGATION_DEFAULT, 1, move |ctx: FlowContext, args: IdArgs| {
        let s = s3.clone();
        async move { default(&ctx, &s, args).await }
    });
    // The counterparty of each records the transaction it is sent.
    super::finality_responders(registry, s, &[OBLIGATION_ISSUE, OBLIGATION_SETTLE, OBLIGATION_DEFAULT]);
}

fn obligation_state(o: &Obligation, notary: &Party, code: treaty_core::SecureHash) -> TransactionState {
    TransactionState::new(o, OBLIGATION, notary.clone(), AttachmentConstraint::Hash(code))
}

/// A well-known party on the network map.
fn party(s: &Services, flow: &str, field: &str, text: &str) -> Result<Party, FlowError> {
    let name: X500Name = text.parse().map_err(|e| bad(flow, field, e))?;
    let found = s.view.borrow().node(&name).map(|n| n.legal_identity.clone());
    found.ok_or_else(|| bad(flow, field, format!("{name} is not on the network map")))
}

fn linear_id(flow: &str, text: &str) -> Result<uuid::Uuid, FlowError> {
    uuid::Uuid::parse_str(text).map_err(|e| bad(flow, "id", format!("{text:?} is not a linear id (a UUID): {e}")))
}

/// The counterparty's name (obligations are between well-known parties).
fn name_of(party: &AbstractParty) -> Result<X500Name, FlowError> {
    party.name().cloned().ok_or_else(|| FlowError::Exception(format!("the counterparty {party} is anonymous")))
}

async fn issue(ctx: &FlowContext, s: &Services, args: IssueArgs) -> Result<Value, FlowError> {
    let owed = amount(OBLIGATION_ISSUE, &args.amount)?;
    let beneficiary = party(s, OBLIGATION_ISSUE, "beneficiary", &args.beneficiary)?;
    if beneficiary.name == s.me.name {
        return Err(bad(OBLIGATION_ISSUE, "beneficiary", "a node cannot owe itself"));
    }
    let due: Timestamp = args.due.parse().map_err(|e| bad(OBLIGATION_ISSUE, "due", e))?;
    let notary = notary(s, OBLIGATION_ISSUE, args.notary.as_deref())?;
    let oracle = args.oracle.as_deref().map(|o| party(s, OBLIGATION_ISSUE, "oracle", o)).transpose()?;
    let session = ctx.initiate(&beneficiary.name).await?;
    ctx.progress("building").await?;
    let (n, b, oracle) = (notary.clone(), beneficiary.clone(), oracle.map(AbstractParty::from));
    let stx = built(ctx, s, "obligation-issue", |salt| async move {
        let code = code(s).await?;
        let o = Obligation {
            obligor: s.me.clone().into(),
            beneficiary: b.into(),
            amount: owed,
            due,
            defaulted: false,
            linear_id: UniqueIdentifier::new(None, rand::random()),
            oracle,
        };
        let wtx = TransactionBuilder::new(Some(n.clone()))
            .output(obligation_state(&o, &n, code))
            .command(Command::new(&ObligationCommand::Issue, vec![s.me.owning_key.clone()]))
            .attachment(code)
            .build(salt)
            .map_err(|e| FlowError::Invalid(e.to_string()))?;
        sign(s, SignedTransaction::new(wtx, vec![]), std::slice::from_ref(&s.me.owning_key))
    })
    .await?;
    let id = first_output::<Obligation>(&stx)?.linear_id.id;
    ctx.progress("notarising and sending").await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &[session]).await?;
    Ok(json!({
        "transaction": done.id().to_string(),
        "id": id.to_string(),
        "amount": args.amount,
        "beneficiary": beneficiary.name.to_string(),
        "due": due.to_string(),
    }))
}

/// An unconsumed obligation in this node's vault.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Found {
    state_ref: StateRef,
    obligation: Obligation,
    notary: Party,
}

async fn find(s: &Services, id: uuid::Uuid) -> Result<Option<Found>, FlowError> {
    Ok(linear_state::<Obligation>(s, id).await?.map(|(state_ref, obligation, notary)| Found { state_ref, obligation, notary }))
}

async fn settle(ctx: &FlowContext, s: &Services, args: SettleArgs) -> Result<Value, FlowError> {
    let id = linear_id(OBLIGATION_SETTLE, &args.id)?;
    let pay_in = args.currency.as_deref().map(|c| Currency::new(c).map_err(|e| bad(OBLIGATION_SETTLE, "currency", e))).transpose()?;
    // What is settled is decided once (journaled): a replay settles the same obligation.
    let found = ctx.side_effect("obligation-settle.find", |_| find(s, id)).await?;
    let Found { state_ref, obligation: o, notary } =
        found.ok_or_else(|| FlowError::Exception(format!("no unsettled obligation {id} is in this node's vault")))?;
    if o.obligor.owning_key() != &s.me.owning_key {
        return Err(FlowError::Exception(format!("obligation {id} is owed by {}, not by this node", o.obligor)));
    }
    if o.defaulted {
        return Err(FlowError::Exception(format!("obligation {id} has been defaulted and can no longer be settled")));
    }
    let beneficiary = name_of(&o.beneficiary)?;
    let session = ctx.initiate(&beneficiary).await?;
    // In another currency: the oracle the obligation names fixes the rate.
    let fx = match pay_in.filter(|c| *c != o.amount.token) {
        None => None,
        Some(quote) => {
            let oracle = o.oracle.clone().ok_or_else(|| {
                bad(
                    OBLIGATION_SETTLE,
                    "currency",
                    format!("obligation {id} names no exchange-rate oracle: it settles only in {}", o.amount.token.code()),
                )
            })?;
            let oracle_session = oracle::open(ctx, &name_of(&oracle)?).await?;
            ctx.progress("fixing the exchange rate").await?;
            let rate_ppm = oracle::ask_rate(ctx, &oracle_session, o.amount.token.code(), quote.code()).await?;
            let fix = FxFix { base: o.amount.token.code().to_string(), quote: quote.code().to_string(), rate_ppm };
            Some((fix, quote, oracle, oracle_session))
        }
    };
    let owed = match &fx {
        None => o.amount.clone(),
        Some((fix, quote, _, _)) => fix
            .convert(&o.amount, quote)
            .ok_or_else(|| FlowError::Exception(format!("{} cannot be converted at {}", o.amount, fix.pair())))?,
    };
    // The window: until the due date, and — when an oracle signs — near now, as it requires.
    let now = Timestamp(ctx.now().await?);
    let window = match fx {
        None => TimeWindow::Until(o.due),
        Some(_) => {
            let half = oracle::TOLERANCE_SECS * 1_000_000 / 2;
            TimeWindow::between(now.plus_micros(-half), o.due.min(now.plus_micros(half)))
                .map_err(|_| FlowError::Exception(format!("obligation {id} fell due at {}: too late to settle", o.due)))?
        }
    };
    ctx.progress("selecting coins").await?;
    let lock = lock_of(ctx);
    let fix_command = fx.as_ref().map(|(fix, _, oracle, _)| (fix.clone(), oracle.owning_key().clone()));
    let stx = built(ctx, s, "obligation-settle", |salt| {
        let (o, owed) = (o.clone(), owed.clone());
        async move {
            let coins = select(s, lock, &owed.token, owed.quantity, &IssuerFilter::Any).await?;
            if coins.notary != notary {
                return Err(FlowError::Exception(format!(
                    "the cash selected is guarded by {} but obligation {id} by {}; move it to one notary first",
                    coins.notary.name, notary.name
                )));
            }
            let code = code(s).await?;
            let outputs = split(&coins, owed.quantity, &o.beneficiary, &s.me.clone().into());
            let mut b =
                cash_move(&notary, &coins.refs, outputs.into_iter().map(|(a, owner)| (a, owner, None)).collect(), code).input(state_ref);
            let mut signers = coins.owners.clone();
            if !signers.contains(&s.me.owning_key) {
                signers.push(s.me.owning_key.clone());
            }
            b = b
                .command(Command::new(&CashCommand::Move, coins.owners.clone()))
                .command(Command::new(&ObligationCommand::Settle, vec![s.me.owning_key.clone()]));
            if let Some((fix, oracle_key)) = fix_command {
                b = b.command(Command::new(&fix, vec![oracle_key]));
            }
            let wtx = b.time_window(window).attachment(code).build(salt).map_err(|e| FlowError::Invalid(e.to_string()))?;
            sign(s, SignedTransaction::new(wtx, vec![]), &signers)
        }
    })
    .await?;
    let stx = match &fx {
        None => stx,
        Some((_, _, oracle, oracle_session)) => {
            ctx.progress("collecting the oracle's signature").await?;
            let signature = oracle::ask_signature(ctx, oracle_session, oracle.owning_key(), stx.tx()).await?;
            stx.with_signatures(vec![signature])
        }
    };
    ctx.progress("notarising and sending").await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &[session]).await?;
    let rate = fx.as_ref().map(|(fix, _, _, _)| format_rate(fix.rate_ppm));
    Ok(json!({
        "transaction": done.id().to_string(),
        "id": id.to_string(),
        "paid": owed.to_string(),
        "beneficiary": beneficiary.to_string(),
        "rate": rate,
    }))
}

async fn default(ctx: &FlowContext, s: &Services, args: IdArgs) -> Result<Value, FlowError> {
    let id = linear_id(OBLIGATION_DEFAULT, &args.id)?;
    let found = ctx.side_effect("obligation-default.find", |_| find(s, id)).await?;
    // Settled in time (or defaulted already): nothing to do. A scheduled default ends here
    // when the obligor paid.
    let Some(Found { state_ref, obligation: o, notary }) = found.filter(|f| !f.obligation.defaulted) else {
        return Ok(
            json!({ "id": id.to_string(), "defaulted": false, "reason": "no unsettled, undefaulted obligation with this id is in this node's vault" }),
        );
    };
    if o.beneficiary.owning_key() != &s.me.owning_key {
        return Err(FlowError::Exception(format!("obligation {id} is owed to {}, who alone can declare it defaulted", o.beneficiary)));
    }
    if ctx.now().await? < o.due.micros() {
        ctx.progress("waiting for the due date").await?;
        ctx.sleep_until(o.due.micros()).await?;
    }
    let obligor = name_of(&o.obligor)?;
    let session = ctx.initiate(&obligor).await?;
    ctx.progress("building").await?;
    let stx = built(ctx, s, "obligation-default", |salt| {
        let o = o.clone();
        async move {
            let code = code(s).await?;
            let defaulted = Obligation { defaulted: true, ..o.clone() };
            let wtx = TransactionBuilder::new(Some(notary.clone()))
                .input(state_ref)
                .output(obligation_state(&defaulted, &notary, code))
                .command(Command::new(&ObligationCommand::Default, vec![s.me.owning_key.clone()]))
                .time_window(TimeWindow::From(o.due))
                .attachment(code)
                .build(salt)
                .map_err(|e| FlowError::Invalid(e.to_string()))?;
            sign(s, SignedTransaction::new(wtx, vec![]), std::slice::from_ref(&s.me.owning_key))
        }
    })
    .await?;
    ctx.progress("notarising and sending").await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &[session]).await?;
    Ok(
        json!({ "transaction": done.id().to_string(), "id": id.to_string(), "defaulted": true, "obligor": obligor.to_string(), "amount": o.amount.to_string() }),
    )
}
