//! Token flows (docs/finance.md, "Tokens"):
//!
//! - `TokenTypeCreate {"fraction_digits": 0, "data": {...}, "observers": ["<name>", ...]}` and
//!   `TokenTypeUpdate {"id": "<type id>", "data": {...}}` — an evolvable token type this node
//!   maintains; observers (typically holders) keep every version.
//! - `TokenIssue {"token": "<fixed id or type id>", "quantity": N, "holder": "<name>"}` —
//!   `quantity` in the smallest unit; without it, one non-fungible token. A fixed token takes
//!   `"fraction_digits"` (default 0).
//! - `TokenMove {"token": "<fixed id or type id>", "quantity": N, "recipient": "<name>"}` or
//!   `TokenMove {"id": "<non-fungible token id>", "recipient": "<name>"}`.
//! - `TokenRedeem {"token": "<fixed id or type id>", "quantity": N, "issuer": "<name>"}` or
//!   `TokenRedeem {"id": "<non-fungible token id>"}` — the holder hands tokens back to their
//!   issuer, who signs (it checks they are its own tokens being redeemed).
//!
//! For a token of an evolvable type, the builder resolves the type's linear pointer in this
//! node's vault to its latest version and adds it as a reference input.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};
use treaty_core::{
    AttachmentConstraint, Command, Party, PublicKey, SecureHash, SignedTransaction, StateRef, TransactionBuilder, TransactionState,
    UniqueIdentifier, X500Name,
};
use treaty_finance_contracts::{
    EvolvableTokenType, FungibleToken, IssuedToken, NonFungibleToken, TOKEN_TYPES, TOKENS, TokenCommand, TokenKind, TokenTypeCommand,
};
use treaty_flows::{FlowContext, FlowError, Keys, Registry, collect_signatures, finality, receive_finality, sign_transaction};
use treaty_vault::{FungibleColumns, IssuerFilter, TypedSchema, fungible};

use super::{Services, bad, built, code, first_output, linear_state, lock_of, notary, owners, sign, vault_error, with_locks_released};

/// Creates an evolvable token type.
pub const TOKEN_TYPE_CREATE: &str = "TokenTypeCreate";
/// Updates an evolvable token type.
pub const TOKEN_TYPE_UPDATE: &str = "TokenTypeUpdate";
/// Issues tokens.
pub const TOKEN_ISSUE: &str = "TokenIssue";
/// Moves tokens.
pub const TOKEN_MOVE: &str = "TokenMove";
/// Redeems tokens with their issuer.
pub const TOKEN_REDEEM: &str = "TokenRedeem";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateArgs {
    #[serde(default)]
    fraction_digits: u8,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    observers: Vec<String>,
    #[serde(default)]
    notary: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateArgs {
    id: String,
    data: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueArgs {
    token: String,
    #[serde(default)]
    quantity: Option<u64>,
    #[serde(default)]
    fraction_digits: Option<u8>,
    #[serde(default)]
    holder: Option<String>,
    #[serde(default)]
    notary: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveArgs {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    quantity: Option<u64>,
    #[serde(default)]
    id: Option<String>,
    recipient: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemArgs {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    quantity: Option<u64>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

/// Registers the token schemas (fungible tokens are selectable and in balances, named by their
/// type; the others by linear id) and the flows with their responders.
pub(crate) fn register(registry: &mut Registry, s: &Services) {
    // A second registration (the same node started twice in one process) changes nothing.
    let view = s.view.clone();
    let _ = s.vault.register(fungible(move |t: &FungibleToken| FungibleColumns {
        owner: t.holder.clone(),
        // As for cash: a name under a key that is not the network map's is filed apart.
        issuer: super::issuer_text(&view.borrow(), &t.token.issuer),
        token: t.token.kind.name(),
        quantity: t.quantity,
    }));
    let _ = s
        .vault
        .register(TypedSchema::<NonFungibleToken>::new().linear(|n| n.linear_id.clone()).text("token", |n| Some(n.token.kind.name())));
    let _ = s.vault.register(TypedSchema::<EvolvableTokenType>::new().linear(|t| t.linear_id.clone()));
    let s1 = s.clone();
    registry.flow(TOKEN_TYPE_CREATE, 1, move |ctx: FlowContext, args: CreateArgs| {
        let s = s1.clone();
        async move { create(&ctx, &s, args).await }
    });
    let s2 = s.clone();
    registry.flow(TOKEN_TYPE_UPDATE, 1, move |ctx: FlowContext, args: UpdateArgs| {
        let s = s2.clone();
        async move { update(&ctx, &s, args).await }
    });
    let s3 = s.clone();
    registry.flow(TOKEN_ISSUE, 1, move |ctx: FlowContext, args: IssueArgs| {
        let s = s3.clone();
        async move { issue(&ctx, &s, args).await }
    });
    let s4 = s.clone();
    registry.flow(TOKEN_MOVE, 1, move |ctx: FlowContext, args: MoveArgs| {
        let s = s4.clone();
        async move { with_locks_released(&ctx, &s, move_tokens(&ctx, &s, args)).await }
    });
    let s5 = s.clone();
    registry.flow(TOKEN_REDEEM, 1, move |ctx: FlowContext, args: RedeemArgs| {
        let s = s5.clone();
        async move { with_locks_released(&ctx, &s, redeem(&ctx, &s, args)).await }
    });
    let s6 = s.clone();
    registry.responder(TOKEN_REDEEM, move |ctx: FlowContext| {
        let s = s6.clone();
        async move {
            let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("TokenRedeem responder without a session".into()))?;
            sign_transaction(&ctx, &session, &s.ledger, &s.keys, |ltx| redemption_to_sign(ltx, &*s.keys, &s.me.owning_key)).await?;
            receive_finality(&ctx, &session, &s.ledger).await.map(|_| ())
        }
    });
    super::finality_responders(registry, s, &[TOKEN_TYPE_CREATE, TOKEN_TYPE_UPDATE, TOKEN_ISSUE, TOKEN_MOVE]);
}

/// What the issuer checks before signing a redemption `ltx` with the keys of `keys` (its
/// identity key `me` among them). The signature covers the whole transaction, so it must be a
/// normal one (a notary change or contract upgrade needs its inputs' participants' signatures
/// whatever its commands say), no command but the redemption may need one of its keys (an issue
/// of its cash, a move of its coins would be signed with it), and it must redeem tokens this
/// node issued, and only those.
fn redemption_to_sign(ltx: &treaty_core::LedgerTransaction, keys: &impl Keys, me: &PublicKey) -> Result<(), String> {
    let redeems = |c: &treaty_core::Command| c.data.unpack::<TokenCommand>().is_ok_and(|t| t == TokenCommand::Redeem);
    if !ltx.commands.iter().any(redeems) {
        return Err("it is not a redemption".into());
    }
    if !matches!(ltx.kind, treaty_core::TransactionKind::Normal) {
        return Err("it is not a normal transaction (a notary change or contract upgrade)".into());
    }
    if let Some((i, c)) = ltx.commands.iter().enumerate().find(|(_, c)| !redeems(c) && !keys.owned(&c.signers).is_empty()) {
        return Err(format!("command {i} ({}) needs this node's signature, and it signs only for the redemption", c.data.type_id));
    }
    let fungible: Vec<FungibleToken> = ltx.inputs_of().map_err(|e| e.to_string())?;
    let unique: Vec<NonFungibleToken> = ltx.inputs_of().map_err(|e| e.to_string())?;
    if fungible.is_empty() && unique.is_empty() {
        return Err("it redeems no token".into());
    }
    let ours = fungible.iter().map(|f| &f.token.issuer).chain(unique.iter().map(|n| &n.token.issuer)).all(|i| i.owning_key() == me);
    if ours { Ok(()) } else { Err("it redeems tokens this node did not issue".into()) }
}

fn party(s: &Services, flow: &str, field: &str, text: &str) -> Result<Party, FlowError> {
    let name: X500Name = text.parse().map_err(|e| bad(flow, field, e))?;
    if name == s.me.name {
        return Ok(s.me.clone());
    }
    let found = s.view.borrow().node(&name).map(|n| n.legal_identity.clone());
    found.ok_or_else(|| bad(flow, field, format!("{name} is not on the network map")))
}

fn uuid_of(flow: &str, field: &str, text: &str) -> Result<uuid::Uuid, FlowError> {
    uuid::Uuid::parse_str(text).map_err(|e| bad(flow, field, format!("{text:?} is not an id (a UUID): {e}")))
}

/// What a move or a redemption takes: a quantity of a fungible token (`Ok`), or one
/// non-fungible token by id (`Err`). A mistake names the field that is wrong.
fn target(
    flow: &str,
    token: &Option<String>,
    quantity: Option<u64>,
    id: &Option<String>,
) -> Result<Result<(String, u64), uuid::Uuid>, FlowError> {
    match (token, quantity, id) {
        (Some(_), _, Some(_)) => {
            Err(bad(flow, "id", "give a fungible token's \"token\" and \"quantity\", or a non-fungible one's \"id\", not both"))
        }
        (Some(_), Some(0), None) => Err(bad(flow, "quantity", "must be more than zero")),
        (Some(t), Some(q), None) => Ok(Ok((t.clone(), q))),
        (Some(_), None, None) => Err(bad(flow, "quantity", "needed with \"token\" (in the token's smallest unit)")),
        (None, Some(_), _) => Err(bad(flow, "token", "needed with \"quantity\"")),
        (None, None, Some(id)) => Ok(Err(uuid_of(flow, "id", id)?)),
        (None, None, None) => Err(bad(flow, "token", "give \"token\" and a positive \"quantity\", or the \"id\" of a non-fungible token")),
    }
}

/// The latest version of the token type `id` in this node's vault: what a linear pointer to it
/// resolves to.
async fn latest_type(s: &Services, id: uuid::Uuid) -> Result<Option<(StateRef, EvolvableTokenType, Party)>, FlowError> {
    linear_state(s, id).await
}

/// This node's non-fungible token `id`, locked for the flow holding `lock`.
async fn held_nft(s: &Services, id: uuid::Uuid, lock: treaty_vault::LockId) -> Result<(StateRef, NonFungibleToken, Party), FlowError> {
    let (r, n, notary) = linear_state::<NonFungibleToken>(s, id)
        .await?
        .ok_or_else(|| FlowError::Exception(format!("no non-fungible token {id} is in this node's vault")))?;
    s.vault.lock(lock, &[r]).await.map_err(vault_error)?;
    Ok((r, n, notary))
}

/// What `text` names: the evolvable type with that id if it is a UUID whose type this node
/// holds, else a fixed type; with the reference the builder must add for an evolvable one.
async fn kind_of(s: &Services, flow: &str, text: &str, fixed_digits: u8) -> Result<(TokenKind, Option<(StateRef, Party)>), FlowError> {
    if let Ok(id) = uuid::Uuid::parse_str(text) {
        let (r, t, notary) = latest_type(s, id).await?.ok_or_else(|| {
            bad(flow, "token", format!("token type {id} is not in this node's vault: its maintainer must list this node as an observer"))
        })?;
        return Ok((TokenKind::Evolvable { type_id: t.linear_id, fraction_digits: t.fraction_digits }, Some((r, notary))));
    }
    if text.is_empty() {
        return Err(bad(flow, "token", "name a fixed token id or an evolvable type id"));
    }
    Ok((TokenKind::Fixed { id: text.to_string(), fraction_digits: fixed_digits }, None))
}

fn tokens_state<S: treaty_core::ContractState>(state: &S, contract: &str, notary: &Party, code: SecureHash) -> TransactionState {
    TransactionState::new(state, contract, notary.clone(), AttachmentConstraint::Hash(code))
}

async fn create(ctx: &FlowContext, s: &Services, args: CreateArgs) -> Result<Value, FlowError> {
    let notary = notary(s, TOKEN_TYPE_CREATE, args.notary.as_deref())?;
    let observers: Vec<Party> = args.observers.iter().map(|o| party(s, TOKEN_TYPE_CREATE, "observers", o)).collect::<Result<_, _>>()?;
    let mut sessions = Vec::new();
    for o in observers.iter().filter(|o| o.name != s.me.name) {
        sessions.push(ctx.initiate(&o.name).await?);
    }
    let stx = built(ctx, s, "token-type-create", |salt| async move {
        let code = code(s).await?;
        let t = EvolvableTokenType {
            maintainer: s.me.clone().into(),
            observers: observers.into_iter().map(Into::into).collect(),
            linear_id: UniqueIdentifier::new(None, rand::random()),
            fraction_digits: args.fraction_digits,
            data: args.data,
        };
        let wtx = TransactionBuilder::new(Some(notary.clone()))
            .output(tokens_state(&t, TOKEN_TYPES, &notary, code))
            .command(Command::new(&TokenTypeCommand::Create, vec![s.me.owning_key.clone()]))
            .attachment(code)
            .build(salt)
            .map_err(|e| FlowError::Invalid(e.to_string()))?;
        sign(s, SignedTransaction::new(wtx, vec![]), std::slice::from_ref(&s.me.owning_key))
    })
    .await?;
    let t: EvolvableTokenType = first_output(&stx)?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &sessions).await?;
    Ok(json!({ "transaction": done.id().to_string(), "id": t.linear_id.id.to_string() }))
}

async fn update(ctx: &FlowContext, s: &Services, args: UpdateArgs) -> Result<Value, FlowError> {
    let id = uuid_of(TOKEN_TYPE_UPDATE, "id", &args.id)?;
    let found = ctx.side_effect("token-type-update.find", |_| latest_type(s, id)).await?;
    let (r, old, notary) = found.ok_or_else(|| FlowError::Exception(format!("token type {id} is not in this node's vault")))?;
    if old.maintainer.owning_key() != &s.me.owning_key {
        return Err(FlowError::Exception(format!("token type {id} is maintained by {}, not this node", old.maintainer)));
    }
    let mut sessions = Vec::new();
    for o in &old.observers {
        if let Some(name) = o.name().filter(|n| **n != s.me.name) {
            sessions.push(ctx.initiate(name).await?);
        }
    }
    let next = EvolvableTokenType { data: args.data, ..old };
    let stx = built(ctx, s, "token-type-update", |salt| async move {
        let code = code(s).await?;
        let wtx = TransactionBuilder::new(Some(notary.clone()))
            .input(r)
            .output(tokens_state(&next, TOKEN_TYPES, &notary, code))
            .command(Command::new(&TokenTypeCommand::Update, vec![s.me.owning_key.clone()]))
            .attachment(code)
            .build(salt)
            .map_err(|e| FlowError::Invalid(e.to_string()))?;
        sign(s, SignedTransaction::new(wtx, vec![]), std::slice::from_ref(&s.me.owning_key))
    })
    .await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &sessions).await?;
    Ok(json!({ "transaction": done.id().to_string(), "id": id.to_string() }))
}

async fn issue(ctx: &FlowContext, s: &Services, args: IssueArgs) -> Result<Value, FlowError> {
    let holder = match &args.holder {
        Some(h) => party(s, TOKEN_ISSUE, "holder", h)?,
        None => s.me.clone(),
    };
    if args.quantity == Some(0) {
        return Err(bad(TOKEN_ISSUE, "quantity", "must be more than zero"));
    }
    let (kind, reference) = kind_of(s, TOKEN_ISSUE, &args.token, args.fraction_digits.unwrap_or(0)).await?;
    let notary = match &reference {
        Some((_, n)) => n.clone(),
        None => notary(s, TOKEN_ISSUE, args.notary.as_deref())?,
    };
    let sessions = if holder.name == s.me.name { vec![] } else { vec![ctx.initiate(&holder.name).await?] };
    let token = IssuedToken { issuer: s.me.clone().into(), kind };
    let quantity = args.quantity;
    let stx = built(ctx, s, "token-issue", |salt| async move {
        let code = code(s).await?;
        let mut b = TransactionBuilder::new(Some(notary.clone()));
        if let Some((r, _)) = reference {
            b = b.reference(r);
        }
        b = match quantity {
            Some(quantity) => {
                b.output(tokens_state(&FungibleToken { token, quantity, holder: holder.clone().into() }, TOKENS, &notary, code))
            }
            None => b.output(tokens_state(
                &NonFungibleToken { token, holder: holder.clone().into(), linear_id: UniqueIdentifier::new(None, rand::random()) },
                TOKENS,
                &notary,
                code,
            )),
        };
        let wtx = b
            .command(Command::new(&TokenCommand::Issue, vec![s.me.owning_key.clone()]))
            .attachment(code)
            .build(salt)
            .map_err(|e| FlowError::Invalid(e.to_string()))?;
        sign(s, SignedTransaction::new(wtx, vec![]), std::slice::from_ref(&s.me.owning_key))
    })
    .await?;
    let nft = if quantity.is_none() { Some(first_output::<NonFungibleToken>(&stx)?.linear_id.id.to_string()) } else { None };
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &sessions).await?;
    Ok(json!({ "transaction": done.id().to_string(), "token": args.token, "quantity": quantity, "id": nft }))
}

async fn move_tokens(ctx: &FlowContext, s: &Services, args: MoveArgs) -> Result<Value, FlowError> {
    let recipient = party(s, TOKEN_MOVE, "recipient", &args.recipient)?;
    if recipient.name == s.me.name {
        return Err(bad(TOKEN_MOVE, "recipient", "a node cannot move tokens to itself"));
    }
    let what = target(TOKEN_MOVE, &args.token, args.quantity, &args.id)?;
    let session = ctx.initiate(&recipient.name).await?;
    let lock = lock_of(ctx);
    let to: treaty_core::AbstractParty = recipient.clone().into();
    let stx = built(ctx, s, "token-move", |salt| async move {
        let code = code(s).await?;
        // Inputs, outputs and the types to reference, from this node's vault.
        let mut inputs: Vec<(StateRef, Party)> = Vec::new();
        let mut outputs: Vec<TransactionState> = Vec::new();
        let mut holders = Vec::new();
        let mut tokens: Vec<IssuedToken> = Vec::new();
        match what {
            Ok((token, quantity)) => {
                let selection =
                    s.vault.select_fungible(&token, &IssuerFilter::Any, quantity, &owners(s), lock).await.map_err(vault_error)?;
                let mut per_token: Vec<(IssuedToken, u64)> = Vec::new();
                for v in selection.states {
                    let f: FungibleToken = v.state.data.unpack().map_err(|e| FlowError::Invalid(format!("vault state {}: {e}", v.state_ref)))?;
                    inputs.push((v.state_ref, v.state.notary.clone()));
                    if !holders.contains(f.holder.owning_key()) {
                        holders.push(f.holder.owning_key().clone());
                    }
                    match per_token.iter_mut().find(|(t, _)| *t == f.token) {
                        Some((_, q)) => *q += f.quantity,
                        None => per_token.push((f.token, f.quantity)),
                    }
                }
                let mut left = quantity;
                for (token, total) in per_token {
                    let paid = left.min(total);
                    left -= paid;
                    tokens.push(token.clone());
                    let notary = &inputs[0].1;
                    if paid > 0 {
                        outputs.push(tokens_state(&FungibleToken { token: token.clone(), quantity: paid, holder: to.clone() }, TOKENS, notary, code));
                    }
                    if total > paid {
                        let change = FungibleToken { token, quantity: total - paid, holder: s.me.clone().into() };
                        outputs.push(tokens_state(&change, TOKENS, notary, code));
                    }
                }
            }
            Err(id) => {
                let (r, n, notary) = held_nft(s, id, lock).await?;
                inputs.push((r, notary.clone()));
                holders.push(n.holder.owning_key().clone());
                tokens.push(n.token.clone());
                outputs.push(tokens_state(&NonFungibleToken { holder: to.clone(), ..n }, TOKENS, &notary, code));
            }
        }
        let notary = inputs.first().map(|(_, n)| n.clone()).ok_or_else(|| FlowError::Invalid("nothing selected".into()))?;
        if inputs.iter().any(|(_, n)| *n != notary) {
            return Err(FlowError::Exception("the tokens selected are guarded by different notaries; move them to one first".into()));
        }
        let mut b = TransactionBuilder::new(Some(notary.clone()));
        for (r, _) in &inputs {
            b = b.input(*r);
        }
        // Linear pointers resolved to each type's latest version, added as references.
        let mut referenced: Vec<StateRef> = Vec::new();
        for t in &tokens {
            if let TokenKind::Evolvable { type_id, .. } = &t.kind {
                let (r, _, _) = latest_type(s, type_id.id).await?.ok_or_else(|| {
                    FlowError::Exception(format!(
                        "the latest version of token type {type_id} is not in this node's vault: its maintainer must list this node as an observer"
                    ))
                })?;
                if !referenced.contains(&r) {
                    referenced.push(r);
                    b = b.reference(r);
                }
            }
        }
        for o in outputs {
            b = b.output(o);
        }
        let wtx = b
            .command(Command::new(&TokenCommand::Move, holders.clone()))
            .attachment(code)
            .build(salt)
            .map_err(|e| FlowError::Invalid(e.to_string()))?;
        sign(s, SignedTransaction::new(wtx, vec![]), &holders)
    })
    .await?;
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &[session]).await?;
    let references: Vec<String> = done.tx().components().references.iter().map(ToString::to_string).collect();
    Ok(json!({ "transaction": done.id().to_string(), "recipient": recipient.name.to_string(), "references": references }))
}

/// What a redemption consumes, chosen once (journaled).
#[derive(Clone, Debug, serde::Serialize, Deserialize)]
struct Redeemed {
    inputs: Vec<StateRef>,
    notary: Party,
    fungible: Vec<FungibleToken>,
    unique: Vec<NonFungibleToken>,
}

async fn redeem(ctx: &FlowContext, s: &Services, args: RedeemArgs) -> Result<Value, FlowError> {
    let what = target(TOKEN_REDEEM, &args.token, args.quantity, &args.id)?;
    let issuers = match &args.issuer {
        Some(i) => IssuerFilter::OneOf(vec![treaty_core::AbstractParty::from(party(s, TOKEN_REDEEM, "issuer", i)?).to_string()]),
        None => IssuerFilter::Any,
    };
    let lock = lock_of(ctx);
    let chosen: Redeemed = ctx
        .side_effect("token-redeem.select", |_| async move {
            let mut r = Redeemed { inputs: Vec::new(), notary: s.me.clone(), fungible: Vec::new(), unique: Vec::new() };
            match what {
                Ok((token, quantity)) => {
                    let selection = s.vault.select_fungible(&token, &issuers, quantity, &owners(s), lock).await.map_err(vault_error)?;
                    for v in selection.states {
                        r.notary = v.state.notary.clone();
                        r.inputs.push(v.state_ref);
                        r.fungible
                            .push(v.state.data.unpack().map_err(|e| FlowError::Invalid(format!("vault state {}: {e}", v.state_ref)))?);
                    }
                }
                Err(id) => {
                    let (r2, n, notary) = held_nft(s, id, lock).await?;
                    r.notary = notary;
                    r.inputs.push(r2);
                    r.unique.push(n);
                }
            }
            Ok(r)
        })
        .await?;
    let tokens: Vec<IssuedToken> =
        chosen.fungible.iter().map(|f| f.token.clone()).chain(chosen.unique.iter().map(|n| n.token.clone())).collect();
    let issuer = tokens.first().map(|t| t.issuer.clone()).ok_or_else(|| FlowError::Invalid("nothing selected".into()))?;
    if tokens.iter().any(|t| t.issuer != issuer) {
        return Err(bad(TOKEN_REDEEM, "issuer", "the tokens selected come from several issuers; name one"));
    }
    let issuer_key = issuer.owning_key().clone();
    let sessions = if issuer_key == s.me.owning_key {
        vec![]
    } else {
        let name = issuer.name().cloned().ok_or_else(|| FlowError::Exception(format!("the issuer {issuer} is anonymous")))?;
        vec![ctx.initiate(&name).await?]
    };
    let mut holders: Vec<treaty_core::PublicKey> = Vec::new();
    for h in chosen.fungible.iter().map(|f| &f.holder).chain(chosen.unique.iter().map(|n| &n.holder)) {
        if !holders.contains(h.owning_key()) {
            holders.push(h.owning_key().clone());
        }
    }
    let mut required = holders.clone();
    if !required.contains(&issuer_key) {
        required.push(issuer_key);
    }
    let quantity = args.quantity;
    let c = chosen.clone();
    let (req, required_keys) = (required.clone(), required.clone());
    let stx = built(ctx, s, "token-redeem", |salt| async move {
        let code = code(s).await?;
        let mut b = TransactionBuilder::new(Some(c.notary.clone()));
        for r in &c.inputs {
            b = b.input(*r);
        }
        let mut referenced: Vec<StateRef> = Vec::new();
        for t in c.fungible.iter().map(|f| &f.token).chain(c.unique.iter().map(|n| &n.token)) {
            if let TokenKind::Evolvable { type_id, .. } = &t.kind {
                let (r, _, _) = latest_type(s, type_id.id).await?.ok_or_else(|| {
                    FlowError::Exception(format!("the latest version of token type {type_id} is not in this node's vault"))
                })?;
                if !referenced.contains(&r) {
                    referenced.push(r);
                    b = b.reference(r);
                }
            }
        }
        // Fungible change stays with this node.
        if let (Some(first), Some(quantity)) = (c.fungible.first(), quantity) {
            let total: u64 = c.fungible.iter().map(|f| f.quantity).sum();
            if total > quantity {
                let change = FungibleToken { token: first.token.clone(), quantity: total - quantity, holder: s.me.clone().into() };
                b = b.output(tokens_state(&change, TOKENS, &c.notary, code));
            }
        }
        let wtx = b
            .command(Command::new(&TokenCommand::Redeem, req))
            .attachment(code)
            .build(salt)
            .map_err(|e| FlowError::Invalid(e.to_string()))?;
        // This node signs for the keys it holds: the holders', and the issuer's if it issued them.
        let mut stx = SignedTransaction::new(wtx, vec![]);
        let id = stx.id();
        for k in s.keys.owned(&required_keys) {
            stx = stx.with_signature(s.keys.sign(&id, &k)?);
        }
        Ok(stx)
    })
    .await?;
    let stx = if sessions.is_empty() { stx } else { collect_signatures(ctx, &s.ledger, stx, &required, &sessions).await? };
    let done = finality(ctx, &s.ledger, &s.keys, &s.me, stx, &sessions).await?;
    let redeemed: u64 = chosen.fungible.iter().map(|f| f.quantity).sum::<u64>().min(quantity.unwrap_or(0));
    Ok(json!({ "transaction": done.id().to_string(), "issuer": issuer.to_string(), "quantity": quantity.map(|_| redeemed), "id": args.id }))
}

#[cfg(test)]
mod tests {
    use treaty_core::{AbstractParty, KeyPair, LedgerTransaction, SignatureScheme, StateAndRef, TransactionKind, TransactionState};
    use treaty_finance_contracts::{CashCommand, IssuedToken, TOKENS, TokenKind};
    use treaty_flows::KeyPairs;

    use super::*;

    #[test]
    fn a_move_or_redemption_names_the_argument_that_is_wrong() {
        let field = |token: Option<&str>, quantity: Option<u64>, id: Option<&str>| match target(
            TOKEN_MOVE,
            &token.map(String::from),
            quantity,
            &id.map(String::from),
        ) {
            Err(FlowError::InvalidArguments { reason, .. }) => reason.split(':').next().unwrap_or_default().to_string(),
            other => panic!("expected an argument error, got {other:?}"),
        };
        let id = "6f1c2b9e-3d4a-4c5b-8e6f-7a8b9c0d1e2f";
        assert_eq!(field(Some("GOLD"), Some(0), None), "quantity");
        assert_eq!(field(Some("GOLD"), None, None), "quantity");
        assert_eq!(field(None, Some(5), None), "token");
        assert_eq!(field(Some("GOLD"), Some(5), Some(id)), "id");
        assert_eq!(field(None, None, Some("not-a-uuid")), "id");
        assert_eq!(field(None, None, None), "token");
        assert_eq!(target(TOKEN_MOVE, &Some("GOLD".into()), Some(5), &None).unwrap().unwrap(), ("GOLD".to_string(), 5));
        assert_eq!(target(TOKEN_MOVE, &None, None, &Some(id.into())).unwrap().unwrap_err().to_string(), id);
    }

    fn party(name: &str, seed: u8) -> (KeyPair, Party) {
        let key = KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).unwrap();
        let party = Party { name: name.parse().unwrap(), owning_key: key.public() };
        (key, party)
    }

    /// Bob redeems 5 gold of Alice's issue with her; `extra` commands ride along.
    fn redemption(alice: &Party, bob: &Party, notary: &Party, kind: TransactionKind, extra: Vec<Command>) -> LedgerTransaction {
        let gold = FungibleToken {
            token: IssuedToken { issuer: alice.clone().into(), kind: TokenKind::Fixed { id: "GOLD".into(), fraction_digits: 0 } },
            quantity: 5,
            holder: AbstractParty::from(bob.clone()),
        };
        let state = TransactionState::new(&gold, TOKENS, notary.clone(), AttachmentConstraint::AlwaysAccept);
        let mut commands = vec![Command::new(&TokenCommand::Redeem, vec![alice.owning_key.clone(), bob.owning_key.clone()])];
        commands.extend(extra);
        LedgerTransaction {
            id: SecureHash::sha256(b"redeem"),
            inputs: vec![StateAndRef { state, r#ref: StateRef { txhash: SecureHash::sha256(b"earlier"), index: 0 } }],
            outputs: vec![],
            commands,
            attachments: vec![],
            notary: Some(notary.clone()),
            time_window: None,
            references: vec![],
            network_parameters_hash: None,
            summaries: vec![],
            kind,
        }
    }

    #[test]
    fn an_issuer_signs_a_plain_redemption_of_its_tokens_and_nothing_more() {
        let ((alice_key, alice), (_, bob), (_, notary)) =
            (party("O=Alice,L=London,C=GB", 1), party("O=Bob,L=Paris,C=FR", 2), party("O=Notary,L=Zurich,C=CH", 3));
        let keys = KeyPairs::new(vec![alice_key]);
        let check = |ltx: &LedgerTransaction| redemption_to_sign(ltx, &keys, &alice.owning_key);
        assert_eq!(check(&redemption(&alice, &bob, &notary, TransactionKind::Normal, vec![])), Ok(()));
        // A cash issue in Alice's name hidden in it.
        let issue = Command::new(&CashCommand::Issue, vec![alice.owning_key.clone()]);
        let err = check(&redemption(&alice, &bob, &notary, TransactionKind::Normal, vec![issue])).unwrap_err();
        assert!(err.contains("command 1 (treaty.finance.Cash.Command) needs this node's signature"), "{err}");
        // An upgrade (its inputs' participants sign whatever its commands say).
        let upgrade =
            TransactionKind::ContractUpgrade { upgraded_contract: "evil.Junk".into(), upgraded_attachment: SecureHash::sha256(b"junk") };
        let err = check(&redemption(&alice, &bob, &notary, upgrade, vec![])).unwrap_err();
        assert!(err.contains("not a normal transaction"), "{err}");
        // Tokens someone else issued.
        let err = check(&redemption(&bob, &bob, &notary, TransactionKind::Normal, vec![])).unwrap_err();
        assert!(err.contains("did not issue"), "{err}");
    }
}
