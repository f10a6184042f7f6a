//! The exchange-rate oracle (white paper "Oracles and tear-offs").
//!
//! Any node with a file `fx-rates.json` in its directory (`{"USD/EUR": "0.92", ...}`: the
//! price of one unit of the first currency in the second, at most six decimals; read at every
//! request, so the operator updates rates by rewriting it) answers the protocol
//! `treaty.finance.FxOracle` on one session:
//!
//! 1. [`OracleRequest::Rate`] → the current rate, in millionths (`u64`);
//! 2. [`OracleRequest::Sign`] with a tear-off of a transaction → the oracle's signature over
//!    the transaction id, if the tear-off proves its parts, reveals only exchange-rate fixes
//!    ([`FxFix`] commands naming the oracle's key among their signers), the time window and
//!    every command's signers, no command but a revealed fix needs the oracle's key, every
//!    fix states the oracle's current rate, and the time window lies within
//!    [`TOLERANCE_SECS`] of the oracle's clock. Anything else is refused naming what is wrong
//!    (a wrong fix names the right rate).
//!
//! The oracle never sees the transaction's states, other commands or parties; it sees which
//! keys each command needs, so that a command it cannot see cannot borrow its signature (one
//! issuing cash in its name, say: its signature covers the whole transaction).

use serde::{Deserialize, Serialize};
use treaty_core::{ComponentGroup, FilteredTransaction, PublicKey, TransactionSignature, X500Name};
use treaty_finance_contracts::{FxFix, format_rate, parse_rate};
use treaty_flows::{FlowContext, FlowError, Keys, Registry, Session};

use super::Services;

/// The oracle's protocol name (its responder).
pub const FX_ORACLE: &str = "treaty.finance.FxOracle";
/// The rates file in an oracle node's directory.
pub const RATES_FILE: &str = "fx-rates.json";
/// How far from the oracle's clock a signed time window may reach, either side.
pub const TOLERANCE_SECS: i64 = 60;

/// What a client asks the oracle.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum OracleRequest {
    /// The rate of `base` in `quote` now.
    Rate {
        /// From (ISO 4217 code).
        base: String,
        /// To.
        quote: String,
    },
    /// Sign the transaction this tear-off belongs to.
    Sign(FilteredTransaction),
}

pub(crate) fn register(registry: &mut Registry, s: &Services) {
    let s = s.clone();
    registry.responder(FX_ORACLE, move |ctx: FlowContext| {
        let s = s.clone();
        async move {
            let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid(format!("{FX_ORACLE} without a session")))?;
            serve(&ctx, &s, &session).await
        }
    });
}

/// The oracle's rate for `base/quote` from its rates file (journaled: a replay sees the same).
async fn rate(ctx: &FlowContext, s: &Services, base: &str, quote: &str) -> Result<u64, FlowError> {
    let pair = format!("{base}/{quote}");
    let path = s.dir.join(RATES_FILE);
    let looked_up: Result<u64, String> = ctx
        .side_effect(&format!("fx-oracle.rate.{pair}"), |_| {
            let (path, pair) = (path.clone(), pair.clone());
            async move {
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(Err(format!("this node is not an exchange-rate oracle (it has no {RATES_FILE})")));
                    }
                    Err(e) => return Err(FlowError::Invalid(format!("reading {}: {e}", path.display()))),
                };
                let table: std::collections::BTreeMap<String, String> = match serde_json::from_str(&text) {
                    Ok(t) => t,
                    Err(e) => return Ok(Err(format!("the oracle's {RATES_FILE} is not a JSON object of rates: {e}"))),
                };
                Ok(match table.get(&pair) {
                    None => Err(format!("the oracle has no rate for {pair}")),
                    Some(r) => parse_rate(r).map_err(|e| format!("the oracle's rate for {pair}: {e}")),
                })
            }
        })
        .await?;
    looked_up.map_err(FlowError::Exception)
}

async fn serve(ctx: &FlowContext, s: &Services, session: &Session) -> Result<(), FlowError> {
    loop {
        match ctx.receive::<OracleRequest>(session).await? {
            OracleRequest::Rate { base, quote } => {
                let r = rate(ctx, s, &base, &quote).await?;
                ctx.send(session, &r).await?;
            }
            OracleRequest::Sign(ftx) => {
                let signature = check_and_sign(ctx, s, &ftx).await?;
                ctx.send(session, &signature).await?;
                return Ok(());
            }
        }
    }
}

async fn check_and_sign(ctx: &FlowContext, s: &Services, ftx: &FilteredTransaction) -> Result<TransactionSignature, FlowError> {
    let refuse = |why: String| FlowError::Exception(format!("the oracle refuses to sign {}: {why}", ftx.id));
    ftx.verify().map_err(|e| refuse(e.to_string()))?;
    let me: &PublicKey = &s.me.owning_key;
    let commands = ftx.commands().map_err(|e| refuse(e.to_string()))?;
    let signers: Vec<(u32, Vec<PublicKey>)> = ftx.revealed(ComponentGroup::Signers).map_err(|e| refuse(e.to_string()))?;
    if commands.is_empty() {
        return Err(refuse("the tear-off reveals no exchange-rate fix".into()));
    }
    // The signature covers the whole transaction, so any command needing this oracle's key
    // is one it signs for: each must be a fix it can see. Hence every command's signers are
    // revealed (only keys; the commands themselves may stay hidden).
    ftx.check_all_visible(ComponentGroup::Signers).map_err(|e| {
        refuse(format!("the tear-off must reveal every command's signers, so that no hidden command needs this oracle's key ({e})"))
    })?;
    // A notary change or contract upgrade needs its inputs' participants' signatures too,
    // whatever its commands: the oracle signs normal transactions only, shown by the kind
    // group proven empty.
    ftx.check_all_visible(ComponentGroup::Kind)
        .map_err(|e| refuse(format!("the tear-off must prove the transaction's kind (normal: an empty kind group) ({e})")))?;
    if !ftx.revealed::<treaty_core::TransactionKind>(ComponentGroup::Kind).map_err(|e| refuse(e.to_string()))?.is_empty() {
        return Err(refuse(
            "it is not a normal transaction (a notary change or contract upgrade); the oracle signs fixes in normal ones only".into(),
        ));
    }
    for (index, keys) in &signers {
        let fix = commands.iter().any(|(i, data)| i == index && data.is::<FxFix>());
        if !fix && keys.iter().any(|k| k.contains_leaf(me)) {
            return Err(refuse(format!("command {index} needs this oracle's key and is not an exchange-rate fix it can see")));
        }
    }
    for (index, data) in &commands {
        if !data.is::<FxFix>() {
            return Err(refuse(format!("command {index} is not an exchange-rate fix; reveal only the fixes")));
        }
        let fix: FxFix = data.unpack().map_err(|e| refuse(format!("command {index}: {e}")))?;
        let named = signers.iter().any(|(i, keys)| i == index && keys.contains(me));
        if !named {
            return Err(refuse(format!("fix {index} ({}) does not name this oracle's key among its signers", fix.pair())));
        }
        let ours = rate(ctx, s, &fix.base, &fix.quote).await?;
        if ours != fix.rate_ppm {
            return Err(refuse(format!("wrong fix: {} is {} here, not {}", fix.pair(), format_rate(ours), format_rate(fix.rate_ppm))));
        }
    }
    let window = ftx.time_window().map_err(|e| refuse(e.to_string()))?;
    let now = ctx.now().await?;
    let tolerance = TOLERANCE_SECS * 1_000_000;
    let near = window.is_some_and(|w| {
        let (from, until) = (w.from_time(), w.until_time());
        from.is_some_and(|f| f.micros() >= now - tolerance) && until.is_some_and(|u| u.micros() <= now + tolerance)
    });
    if !near {
        return Err(refuse(format!(
            "the time window must be revealed, bounded, and within {TOLERANCE_SECS} s of the oracle's clock (a rate holds now, not at any time)"
        )));
    }
    s.keys.sign(&ftx.id, me)
}

/// Asks `oracle` for its rate of `base` in `quote` on `session` (opened with [`open`]).
pub(crate) async fn ask_rate(ctx: &FlowContext, session: &Session, base: &str, quote: &str) -> Result<u64, FlowError> {
    ctx.send_and_receive(session, &OracleRequest::Rate { base: base.into(), quote: quote.into() }).await
}

/// Opens the oracle protocol with `oracle`.
pub(crate) async fn open(ctx: &FlowContext, oracle: &X500Name) -> Result<Session, FlowError> {
    ctx.initiate_as(oracle, FX_ORACLE, 1).await
}

/// Sends the oracle a tear-off of `wtx` revealing only its fixes, every command's signers, its
/// (empty) kind group and its time window, and returns the oracle's signature, checked.
pub(crate) async fn ask_signature(
    ctx: &FlowContext,
    session: &Session,
    oracle_key: &PublicKey,
    wtx: &treaty_core::WireTransaction,
) -> Result<TransactionSignature, FlowError> {
    let fixes: Vec<usize> = wtx.components().commands.iter().enumerate().filter(|(_, c)| c.data.is::<FxFix>()).map(|(i, _)| i).collect();
    let ftx = FilteredTransaction::build(
        wtx,
        |group, index| match group {
            ComponentGroup::Commands => fixes.contains(&index),
            // Every command's signers: the oracle checks no hidden command needs its key.
            ComponentGroup::Signers => true,
            ComponentGroup::TimeWindow => true,
            _ => false,
        },
        // The kind group, empty for a normal transaction, proven empty; and every signer.
        |group| matches!(group, ComponentGroup::Kind | ComponentGroup::Signers),
    );
    let signature: TransactionSignature = ctx.send_and_receive(session, &OracleRequest::Sign(ftx)).await?;
    if signature.by != *oracle_key {
        return Err(FlowError::Exception(format!("the oracle signed with {} instead of its identity key", signature.by)));
    }
    Ok(signature)
}
