//! # treaty-finance
//!
//! Cash on Treaty: the flows `CashIssue`, `CashPayment` and `CashExit` over the cash contract
//! (`treaty.finance.Cash`, in `apps/finance/contract`) and the node's vault. Their names,
//! arguments and results are part of the stable surface (docs/finance.md):
//!
//! - `CashIssue {"amount": "1000.00 USD", "notary": "<name, optional with one notary>"}`
//! - `CashPayment {"amount": "300.00 USD", "recipient": "<name>", "anonymous": false}`
//! - `CashExit {"amount": "100.00 USD"}`
//! - `CashMerge {"currency": "USD", "issuer": "<name, optional>", "max_inputs": 50}` and
//!   `CashSplit {"currency": "USD", "issuer": "<name, optional>", "into": 8}` (`coins.rs`), which
//!   the node's `[coins]` section also runs in the background
//!
//! Each returns JSON with the transaction id. [`register`] installs them (and the cash schema
//! of the vault) in a node: `treaty node run` does so for every node.
//!
//! Durability: each flow builds and signs its transaction inside one journaled side effect
//! (coin selection included), so a replay after a crash finalises exactly the transaction it
//! built before, and the coins it locked stay locked for it. A flow that fails releases its
//! locks.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use treaty_core::{
    AbstractParty, Amount, AttachmentConstraint, Command, Currency, Issued, Party, PartyAndReference, PrivacySalt, PublicKey, SecureHash,
    SignedTransaction, StateRef, TransactionBuilder, TransactionState, X500Name,
};
use treaty_finance_contracts::{CASH, Cash, CashCommand, OBLIGATION, TIME_LOCK, TOKEN_TYPES, TOKENS};

mod coins;
mod obligation;
mod oracle;
mod timelock;
mod tokens;
pub use coins::{CASH_MERGE, CASH_SPLIT};
pub use obligation::{OBLIGATION_DEFAULT, OBLIGATION_ISSUE, OBLIGATION_SETTLE};
pub use oracle::{FX_ORACLE, OracleRequest, RATES_FILE, TOLERANCE_SECS};
pub use timelock::{CASH_LOCK, CASH_UNLOCK};
pub use tokens::{TOKEN_ISSUE, TOKEN_MOVE, TOKEN_REDEEM, TOKEN_TYPE_CREATE, TOKEN_TYPE_UPDATE};
use treaty_flows::{FlowContext, FlowError, Keys, Ledger, Registry, Session, finality, receive_finality, swap_identities};
use treaty_node::identities::NodeIdentities;
use treaty_node::ledger::NodeLedger;
use treaty_node::node::NodeServices;
use treaty_vault::{FungibleColumns, IssuerFilter, LockId, Vault, VaultError, fungible};

/// Issues cash to this node.
pub const CASH_ISSUE: &str = "CashIssue";
/// Pays cash to another party, with change.
pub const CASH_PAYMENT: &str = "CashPayment";
/// Takes cash this node issued off the ledger.
pub const CASH_EXIT: &str = "CashExit";
/// The version of `CashPayment`'s session protocol that opens with the anonymous flag (a
/// `bool`), then swaps identities when it is true: the shape of Corda's `CashPaymentFlow`.
/// Payers use it for anonymous payments.
pub const PAYMENT_SESSION_FLAGGED: u32 = 1;
/// The version of `CashPayment`'s session protocol for a payment to the payee's well-known
/// identity: no flag, the finality messages come first. One message fewer per payment than
/// [`PAYMENT_SESSION_FLAGGED`].
pub const PAYMENT_SESSION_WELL_KNOWN: u32 = 2;
/// The registered version of `CashPayment` and `CashIssueAndPayment`: 2 since open payments
/// open their session at [`PAYMENT_SESSION_WELL_KNOWN`]. A flow that started as an earlier
/// version keeps the flagged session, so its journal replays.
const PAYING_FLOWS_VERSION: u32 = 2;
/// Issues cash to this node, then pays it to another party: one flow for the two
/// transactions (Corda's `CashIssueAndPaymentFlow`, which its issue+pay benchmark runs).
pub const CASH_ISSUE_AND_PAYMENT: &str = "CashIssueAndPayment";

/// The finance contracts (cash and obligations) packed as an attachment bundle (the same bytes, so the same id, on every
/// node running this build).
pub fn cash_bundle() -> Vec<u8> {
    let manifest = treaty_sandbox::bundle::Manifest {
        name: "treaty-finance".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        contracts: vec![CASH.into(), OBLIGATION.into(), TIME_LOCK.into(), TOKENS.into(), TOKEN_TYPES.into()],
        module: Some(treaty_sandbox::bundle::MODULE.into()),
        data_files: vec![],
    };
    treaty_sandbox::bundle::pack(&manifest, Some(treaty_contracts::FINANCE_WASM), &BTreeMap::new(), &[])
}

/// What the flows need from the node.
#[derive(Clone)]
struct Services {
    ledger: Arc<NodeLedger>,
    keys: Arc<NodeIdentities>,
    me: Party,
    vault: Vault,
    view: tokio::sync::watch::Receiver<Arc<treaty_netmap::NetworkView>>,
    notaries: Vec<Party>,
    /// The node's directory (the oracle's rates file).
    dir: std::path::PathBuf,
}

/// Registers the cash schema in the node's vault (so cash is queryable by owner, issuer,
/// currency and quantity, and coin selection works) and the flows with their responders; with
/// a `[coins]` section in the node's configuration, also the task that merges and splits the
/// node's cash in the background (`coins.rs`).
pub fn register(registry: &mut Registry, services: &NodeServices) {
    // A second registration (the same node started twice in one process) changes nothing.
    let view = services.view.clone();
    let _ = services.vault.register(fungible(move |c: &Cash| {
        let mut columns = FungibleColumns::issued(&c.owner, &c.amount);
        columns.issuer = issuer_text(&view.borrow(), &c.amount.token.issuer.party);
        columns
    }));
    let s = Services {
        ledger: services.ledger.clone(),
        keys: services.keys.clone(),
        me: services.identity.clone(),
        vault: services.vault.clone(),
        view: services.view.clone(),
        notaries: services.parameters.notaries.iter().map(|n| n.identity.clone()).collect(),
        dir: services.dir.clone(),
    };
    let s1 = s.clone();
    registry.flow(CASH_ISSUE, 1, move |ctx: FlowContext, args: IssueArgs| {
        let s = s1.clone();
        async move { issue(&ctx, &s, CASH_ISSUE, args).await }
    });
    let s2 = s.clone();
    registry.flow(CASH_PAYMENT, PAYING_FLOWS_VERSION, move |ctx: FlowContext, args: PaymentArgs| {
        let s = s2.clone();
        async move { with_locks_released(&ctx, &s, pay(&ctx, &s, CASH_PAYMENT, args)).await }
    });
    let s5 = s.clone();
    registry.flow(CASH_ISSUE_AND_PAYMENT, PAYING_FLOWS_VERSION, move |ctx: FlowContext, args: IssueAndPaymentArgs| {
        let s = s5.clone();
        async move { with_locks_released(&ctx, &s, issue_and_pay(&ctx, &s, args)).await }
    });
    let s3 = s.clone();
    registry.responder(CASH_PAYMENT, move |ctx: FlowContext| {
        let s = s3.clone();
        async move {
            let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("CashPayment responder without a session".into()))?;
            // Version 1 opens with the anonymous flag (as Corda's `CashPaymentFlow` does);
            // version 2 is a payment to this node's well-known identity, so the transaction
            // comes first.
            match ctx.initiator_version() {
                Some(PAYMENT_SESSION_FLAGGED) => {
                    let anonymous: bool = ctx.receive(&session).await?;
                    if anonymous {
                        swap_identities(&ctx, &session, &s.keys).await?;
                    }
                }
                Some(PAYMENT_SESSION_WELL_KNOWN) => {}
                other => {
                    return Err(FlowError::Invalid(format!(
                        "{CASH_PAYMENT} from {} asks for protocol version {}; this node speaks versions \
                         {PAYMENT_SESSION_FLAGGED} and {PAYMENT_SESSION_WELL_KNOWN}",
                        session.party,
                        other.map_or("none".to_string(), |v| v.to_string())
                    )));
                }
            }
            receive_finality(&ctx, &session, &s.ledger).await.map(|_| ())
        }
    });
    let s4 = s.clone();
    registry.flow(CASH_EXIT, 1, move |ctx: FlowContext, args: ExitArgs| {
        let s = s4.clone();
        async move { with_locks_released(&ctx, &s, exit(&ctx, &s, args)).await }
    });
    obligation::register(registry, &s);
    timelock::register(registry, &s);
    oracle::register(registry, &s);
    tokens::register(registry, &s);
    coins::register(registry, &s);
    if let Some(config) = services.coins.clone() {
        let s = s.clone();
        services.spawn(move |flows| coins::maintain(s, config, flows));
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueArgs {
    amount: String,
    #[serde(default)]
    notary: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentArgs {
    amount: String,
    recipient: String,
    #[serde(default)]
    anonymous: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueAndPaymentArgs {
    amount: String,
    recipient: String,
    #[serde(default)]
    anonymous: bool,
    #[serde(default)]
    notary: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExitArgs {
    amount: String,
}

fn bad(flow: &str, field: &str, reason: impl std::fmt::Display) -> FlowError {
    FlowError::InvalidArguments { flow: flow.into(), reason: format!("{field}: {reason}") }
}

fn amount(flow: &str, text: &str) -> Result<Amount<Currency>, FlowError> {
    let a: Amount<Currency> = text.parse().map_err(|e| bad(flow, "amount", e))?;
    if a.quantity == 0 {
        return Err(bad(flow, "amount", "must be more than zero"));
    }
    Ok(a)
}

fn lock_of(ctx: &FlowContext) -> LockId {
    LockId(ctx.id().0)
}

/// The unconsumed state of type `S` with linear id `id` in this node's vault, decoded: its ref,
/// the state and its notary. What a linear pointer resolves to.
async fn linear_state<S: treaty_core::ContractState>(s: &Services, id: uuid::Uuid) -> Result<Option<(StateRef, S, Party)>, FlowError> {
    // Only a state its type's own contract governs is an `S` (any contract can make states of
    // any type id, under rules of its own).
    let criteria =
        treaty_vault::Criteria::unconsumed().and(treaty_vault::Criteria::of_type::<S>()).and(treaty_vault::Criteria::linear_id(id));
    let page =
        s.vault.query(&criteria, &treaty_vault::Sort::recording_order(), &treaty_vault::PageSpec::first(1)).await.map_err(vault_error)?;
    let Some(v) = page.states.into_iter().next() else { return Ok(None) };
    let state: S = v.state.data.unpack().map_err(|e| FlowError::Invalid(format!("vault state {}: {e}", v.state_ref)))?;
    Ok(Some((v.state_ref, state, v.state.notary)))
}

/// The first output of `stx`, decoded as an `S`.
fn first_output<S: treaty_core::ContractState>(stx: &SignedTransaction) -> Result<S, FlowError> {
    let o = stx.tx().components().outputs.first().ok_or_else(|| FlowError::Invalid("the transaction has no output".into()))?;
    o.data.unpack().map_err(|e| FlowError::Invalid(format!("its first output: {e}")))
}

/// Registers, for each initiating flow in `names`, the responder that verifies and records the
/// transaction the initiator finalises (the counterparty's whole part in most finance flows).
fn finality_responders(registry: &mut Registry, s: &Services, names: &[&'static str]) {
    for &name in names {
        let s = s.clone();
        registry.responder(name, move |ctx: FlowContext| {
            let s = s.clone();
            async move {
                let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid(format!("{name} responder without a session")))?;
                receive_finality(&ctx, &session, &s.ledger).await.map(|_| ())
            }
        });
    }
}

/// Runs a flow body, then releases whatever the flow still holds locked: everything when it
/// failed; when it succeeded, the coins it spent are unlocked by being consumed, and anything
/// left is from a selection whose transaction was never journaled (the node died inside the
/// build step, and the replay selected again) — without this those coins stayed locked until
/// the next restart.
async fn with_locks_released(
    ctx: &FlowContext,
    s: &Services,
    body: impl Future<Output = Result<Value, FlowError>>,
) -> Result<Value, FlowError> {
    let result = body.await;
    match s.vault.release(lock_of(ctx)).await {
        Ok(0) => {}
        Ok(n) if result.is_ok() => tracing::info!("flow {} released {n} coin(s) it selected but did not spend", ctx.id()),
        Ok(_) => {}
        Err(e) => tracing::warn!("flow {} ended and its coins could not be released: {e}", ctx.id()),
    }
    result
}

/// The issuer of cash as the vault files it (balances, coin selection by issuer): its name,
/// when its key is the one the network map has for that name (or the map does not know the
/// name). Anyone can issue cash in their own key under another's name — the contract keeps
/// such cash apart, as another token — and here it is filed apart too, under a name that says
/// so, never with the named party's real cash.
pub(crate) fn issuer_text(view: &treaty_netmap::NetworkView, issuer: &AbstractParty) -> String {
    match issuer {
        AbstractParty::Party(p) => match view.node(&p.name) {
            Some(n) if n.legal_identity.owning_key != p.owning_key => {
                format!("{} (key {}, not the network map's)", p.name, p.owning_key.short())
            }
            _ => p.name.to_string(),
        },
        other => other.to_string(),
    }
}

fn vault_error(e: VaultError) -> FlowError {
    match e {
        VaultError::InsufficientBalance { .. } => FlowError::Exception(format!("{} {e}", e.code())),
        other => FlowError::Invalid(format!("{} {other}", other.code())),
    }
}

/// Builds, signs and journals a transaction once: a replay gets the same bytes back. The salt
/// is drawn inside the side effect: if the node dies before its result is journaled, nobody
/// has seen the transaction, and the replay builds another with a fresh salt. A live run
/// keeps the transaction it built (the bytes journaled are its encoding): decoding them again
/// would hash every component a second time.
async fn built<F, Fut>(ctx: &FlowContext, s: &Services, key: &str, build: F) -> Result<SignedTransaction, FlowError>
where
    F: FnOnce(PrivacySalt) -> Fut,
    Fut: Future<Output = Result<SignedTransaction, FlowError>>,
{
    let invalid = |e: treaty_core::TransactionError| FlowError::Invalid(format!("journaled transaction: {e}"));
    let mut fresh = None;
    let bytes: Vec<u8> = ctx
        .side_effect(key, |_| async {
            let stx = build(PrivacySalt(random_salt())).await?;
            let bytes = stx.to_bytes();
            fresh = Some(stx);
            Ok(bytes)
        })
        .await?;
    match fresh {
        Some(stx) => {
            stx.tx().check_limits(&s.ledger.limits()).map_err(invalid)?;
            Ok(stx)
        }
        None => SignedTransaction::from_bytes(&bytes, &s.ledger.limits()).map_err(invalid),
    }
}

fn random_salt() -> [u8; 32] {
    rand::random()
}

fn sign(s: &Services, stx: SignedTransaction, keys: &[PublicKey]) -> Result<SignedTransaction, FlowError> {
    let id = stx.id();
    let mut sigs = Vec::new();
    for k in keys {
        sigs.push(s.keys.sign(&id, k)?);
    }
    Ok(stx.with_signatures(sigs))
}

/// The cash contract bundle and its id, packed once per process.
fn bundle() -> &'static (Vec<u8>, SecureHash) {
    static BUNDLE: std::sync::OnceLock<(Vec<u8>, SecureHash)> = std::sync::OnceLock::new();
    BUNDLE.get_or_init(|| {
        let bytes = cash_bundle();
        let id = SecureHash::sha256(&bytes);
        (bytes, id)
    })
}

/// The id of the cash contract attachment, stored in this node's ledger (checked and stored
/// the first time only: checking compiles the module).
async fn code(s: &Services) -> Result<SecureHash, FlowError> {
    let (bytes, id) = bundle();
    if let [Some(_)] = s.ledger.attachments(std::slice::from_ref(id)).await?.as_slice() {
        return Ok(*id);
    }
    let (attachment, _) =
        s.ledger.import_attachment(bytes).await.map_err(|e| FlowError::Invalid(format!("the cash contract bundle: {e}")))?;
    Ok(attachment.id)
}

fn cash(amount: Amount<Issued<Currency>>, owner: AbstractParty, notary: &Party, code: SecureHash) -> TransactionState {
    TransactionState::new(&Cash { amount, owner }, CASH, notary.clone(), AttachmentConstraint::Hash(code))
}

/// The notary named in `flow`'s arguments, or the network's only one.
fn notary(s: &Services, flow: &str, named: Option<&str>) -> Result<Party, FlowError> {
    match named {
        Some(n) => {
            let name: X500Name = n.parse().map_err(|e| bad(flow, "notary", e))?;
            s.notaries
                .iter()
                .find(|p| p.name == name)
                .cloned()
                .ok_or_else(|| bad(flow, "notary", format!("{name} is not a notary of this network")))
        }
        None => match s.notaries.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(bad(flow, "notary", "this network has no notary")),
            many => {
                let names: Vec<String> = many.iter().map(|p| p.name.to_string()).collect();
                Err(bad(flow, "notary", format!("this network has several notaries; name one of {}", names.join("; "))))
            }
        },
    }
}

/// `CashIssue`, or its part of a flow named `flow` (which names it in argument errors).
async fn issue(ctx: &FlowContext, s: &Services, flow: &str, args: IssueArgs) -> Result<Value, FlowError> {
    let amount = amount(flow, &args.amount)?;
    let notary = notary(s, flow, args.notary.as_deref())?;
    ctx.progress("building").await?;
    let token = Issued { issuer: PartyAndReference { party: s.me.clone().into(), reference: vec![0] }, product: amount.token.clone() };
    let issued = Amount::new(amount.quantity, token);
    let n = notary.clone();
    let stx = built(ctx, s, "cash-issue", |salt| async move {
        let code = code(s).await?;
        let wtx = TransactionBuilder::new(Some(n.clone()))
            .output(cash(issued, s.me.clone().into(), &n, code))
            .command(Command::new(&CashCommand::Issue, vec![s.me.owning_key.clone()]))
            .attachment(code)
            .build(salt)
            .map_err(|e| FlowError::Invalid(e.to_string()))?;
        sign(s, SignedTransaction::new(wtx, vec![]), std::slice::from_ref(&s.me.owning_key))
    })
    .await?;
    ctx.progress("recording").await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &[]).await?;
    Ok(
        json!({ "transaction": done.id().to_string(), "amount": args.amount, "issuer": s.me.name.to_string(), "notary": notary.name.to_string() }),
    )
}

/// This node's keys that may own cash: the identity key and the confidential keys.
fn owners(s: &Services) -> Vec<PublicKey> {
    let mut keys = vec![s.me.owning_key.clone()];
    keys.extend(s.keys.confidential_public_keys());
    keys
}

/// Selected coins, as the transaction consumes them.
struct Coins {
    refs: Vec<StateRef>,
    states: Vec<Cash>,
    notary: Party,
    owners: Vec<PublicKey>,
}

async fn select(s: &Services, lock: LockId, currency: &Currency, quantity: u64, issuers: &IssuerFilter) -> Result<Coins, FlowError> {
    let selection = s.vault.select_fungible(currency.code(), issuers, quantity, &owners(s), lock).await.map_err(vault_error)?;
    let mut coins = Coins { refs: Vec::new(), states: Vec::new(), notary: s.me.clone(), owners: Vec::new() };
    let mut notaries: Vec<Party> = Vec::new();
    for v in selection.states {
        let c: Cash = v.state.data.unpack().map_err(|e| FlowError::Invalid(format!("vault state {}: {e}", v.state_ref)))?;
        if !notaries.contains(&v.state.notary) {
            notaries.push(v.state.notary.clone());
        }
        let key = c.owner.owning_key().clone();
        if !coins.owners.contains(&key) {
            coins.owners.push(key);
        }
        coins.refs.push(v.state_ref);
        coins.states.push(c);
    }
    coins.notary = match notaries.as_slice() {
        [one] => one.clone(),
        _ => {
            return Err(FlowError::Exception(format!(
                "the cash selected is guarded by {} notaries; move it to one notary first (notary change)",
                notaries.len()
            )));
        }
    };
    Ok(coins)
}

/// Splits `quantity` of the coins' cash (per issuer) between `to` and the change owner.
fn split(coins: &Coins, quantity: u64, to: &AbstractParty, change: &AbstractParty) -> Vec<(Amount<Issued<Currency>>, AbstractParty)> {
    split_marked(coins, quantity, to, change).into_iter().map(|(a, owner, _)| (a, owner)).collect()
}

/// [`split`], each output marked `true` if it is paid to `to` (not change), which tells them
/// apart when `to` is the change owner too.
fn split_marked(
    coins: &Coins,
    quantity: u64,
    to: &AbstractParty,
    change: &AbstractParty,
) -> Vec<(Amount<Issued<Currency>>, AbstractParty, bool)> {
    // Per issued token (issuer party, key included, and reference): what the cash contract
    // conserves. Coins of issuers that only share a name stay apart.
    let mut per_issuer: BTreeMap<&Issued<Currency>, Amount<Issued<Currency>>> = BTreeMap::new();
    for c in &coins.states {
        let next = match per_issuer.get(&c.amount.token) {
            Some(sum) => Amount::new(sum.quantity.saturating_add(c.amount.quantity), c.amount.token.clone()),
            None => c.amount.clone(),
        };
        per_issuer.insert(&c.amount.token, next);
    }
    let mut left = quantity;
    let mut outputs = Vec::new();
    for total in per_issuer.into_values() {
        let paid = left.min(total.quantity);
        left -= paid;
        if paid > 0 {
            outputs.push((Amount::new(paid, total.token.clone()), to.clone(), true));
        }
        if total.quantity > paid {
            outputs.push((Amount::new(total.quantity - paid, total.token), change.clone(), false));
        }
    }
    outputs
}

fn move_summaries(outputs: &[(Amount<Issued<Currency>>, AbstractParty)]) -> Vec<String> {
    let mut totals: BTreeMap<&Issued<Currency>, Amount<Issued<Currency>>> = BTreeMap::new();
    for (a, _) in outputs {
        let next = match totals.get(&a.token) {
            Some(sum) => Amount::new(sum.quantity + a.quantity, a.token.clone()),
            None => a.clone(),
        };
        totals.insert(&a.token, next);
    }
    totals.values().map(|o| format!("Move {o}")).collect()
}

/// A transaction for `notary` consuming `inputs` and creating cash `outputs` (amount, owner,
/// encumbrance), with the move summaries the cash contract vouches for. Callers add the
/// commands and anything else the transaction carries.
fn cash_move(
    notary: &Party,
    inputs: &[StateRef],
    outputs: Vec<(Amount<Issued<Currency>>, AbstractParty, Option<u32>)>,
    code: SecureHash,
) -> TransactionBuilder {
    let mut b = TransactionBuilder::new(Some(notary.clone()));
    for r in inputs {
        b = b.input(*r);
    }
    let plain: Vec<(Amount<Issued<Currency>>, AbstractParty)> = outputs.iter().map(|(a, o, _)| (a.clone(), o.clone())).collect();
    for summary in move_summaries(&plain) {
        b = b.summary(summary);
    }
    for (a, owner, encumbrance) in outputs {
        let state = cash(a, owner, notary, code);
        b = b.output(match encumbrance {
            Some(e) => state.with_encumbrance(e),
            None => state,
        });
    }
    b
}

/// The payee named `text` in `flow`'s arguments: another node on the network map.
fn payee(s: &Services, flow: &str, text: &str) -> Result<Party, FlowError> {
    let recipient: X500Name = text.parse().map_err(|e| bad(flow, "recipient", e))?;
    if recipient == s.me.name {
        return Err(bad(flow, "recipient", "a node cannot pay itself"));
    }
    let well_known = s.view.borrow().node(&recipient).map(|n| n.legal_identity.clone());
    well_known.ok_or_else(|| bad(flow, "recipient", format!("{recipient} is not on the network map")))
}

/// `CashPayment`, or its part of a flow named `flow`: the recipient's side is always
/// `CashPayment`'s responder.
async fn pay(ctx: &FlowContext, s: &Services, flow: &str, args: PaymentArgs) -> Result<Value, FlowError> {
    let amount = amount(flow, &args.amount)?;
    let well_known = payee(s, flow, &args.recipient)?;
    let recipient = well_known.name.clone();
    // A flow started as version 1 (before an upgrade) sends the flag even for an open
    // payment, as it did then, so its journal replays.
    let (to, change, session): (AbstractParty, AbstractParty, Session) = if args.anonymous || ctx.version() < PAYING_FLOWS_VERSION {
        let session = ctx.initiate_as(&recipient, CASH_PAYMENT, PAYMENT_SESSION_FLAGGED).await?;
        ctx.send(&session, &args.anonymous).await?;
        if args.anonymous {
            ctx.progress("swapping identities").await?;
            let swapped = swap_identities(ctx, &session, &s.keys).await?;
            (swapped.theirs.into(), swapped.mine.into(), session)
        } else {
            (well_known.into(), s.me.clone().into(), session)
        }
    } else {
        let session = ctx.initiate_as(&recipient, CASH_PAYMENT, PAYMENT_SESSION_WELL_KNOWN).await?;
        (well_known.into(), s.me.clone().into(), session)
    };
    ctx.progress("selecting coins").await?;
    let lock = lock_of(ctx);
    let stx = built(ctx, s, "cash-payment", |salt| {
        let (to, change, currency) = (to.clone(), change.clone(), amount.token.clone());
        async move {
            let coins = select(s, lock, &currency, amount.quantity, &IssuerFilter::Any).await?;
            let code = code(s).await?;
            let outputs = split(&coins, amount.quantity, &to, &change);
            let wtx = cash_move(&coins.notary, &coins.refs, outputs.into_iter().map(|(a, o)| (a, o, None)).collect(), code)
                .command(Command::new(&CashCommand::Move, coins.owners.clone()))
                .attachment(code)
                .build(salt)
                .map_err(|e| FlowError::Invalid(e.to_string()))?;
            sign(s, SignedTransaction::new(wtx, vec![]), &coins.owners)
        }
    })
    .await?;
    ctx.progress("notarising and sending").await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &[session]).await?;
    Ok(json!({
        "transaction": done.id().to_string(),
        "amount": args.amount,
        "recipient": recipient.to_string(),
        "anonymous": args.anonymous,
    }))
}

/// `CashIssueAndPayment`: [`issue`], then [`pay`] in the same flow (one journal, one start,
/// one end). Every argument is checked before anything is issued, so a mistake in the
/// recipient leaves no issued cash behind. The payment selects coins as `CashPayment` does:
/// it may spend other cash of this node's than what it has just issued.
async fn issue_and_pay(ctx: &FlowContext, s: &Services, args: IssueAndPaymentArgs) -> Result<Value, FlowError> {
    const FLOW: &str = CASH_ISSUE_AND_PAYMENT;
    amount(FLOW, &args.amount)?;
    notary(s, FLOW, args.notary.as_deref())?;
    payee(s, FLOW, &args.recipient)?;
    let issued = issue(ctx, s, FLOW, IssueArgs { amount: args.amount.clone(), notary: args.notary }).await?;
    let mut paid = pay(ctx, s, FLOW, PaymentArgs { amount: args.amount, recipient: args.recipient, anonymous: args.anonymous }).await?;
    paid["issue_transaction"] = issued["transaction"].clone();
    paid["notary"] = issued["notary"].clone();
    Ok(paid)
}

async fn exit(ctx: &FlowContext, s: &Services, args: ExitArgs) -> Result<Value, FlowError> {
    let amount = amount(CASH_EXIT, &args.amount)?;
    let me: AbstractParty = s.me.clone().into();
    ctx.progress("selecting coins").await?;
    let lock = lock_of(ctx);
    let stx = built(ctx, s, "cash-exit", |salt| {
        let (me, currency) = (me.clone(), amount.token.clone());
        async move {
            // Only cash this node issued can be exited by it.
            let coins = select(s, lock, &currency, amount.quantity, &IssuerFilter::OneOf(vec![me.to_string()])).await?;
            let code = code(s).await?;
            let token =
                coins.states.first().map(|c| c.amount.token.clone()).ok_or_else(|| FlowError::Invalid("no coins selected".into()))?;
            let exiting = Amount::new(amount.quantity, token);
            let mut b = TransactionBuilder::new(Some(coins.notary.clone()));
            for r in &coins.refs {
                b = b.input(*r);
            }
            // What is exited leaves the ledger; only the change stays, with this node.
            let total: u64 = coins.states.iter().map(|c| c.amount.quantity).sum();
            if total > amount.quantity {
                b = b.output(cash(Amount::new(total - amount.quantity, exiting.token.clone()), me.clone(), &coins.notary, code));
            }
            let mut signers = coins.owners.clone();
            if !signers.contains(&s.me.owning_key) {
                signers.push(s.me.owning_key.clone());
            }
            let wtx = b
                .command(Command::new(&CashCommand::Exit { amount: Box::new(exiting.clone()) }, signers.clone()))
                .summary(format!("Exit {exiting}"))
                .attachment(code)
                .build(salt)
                .map_err(|e| FlowError::Invalid(e.to_string()))?;
            sign(s, SignedTransaction::new(wtx, vec![]), &signers)
        }
    })
    .await?;
    ctx.progress("notarising").await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &[]).await?;
    Ok(json!({ "transaction": done.id().to_string(), "amount": args.amount }))
}
