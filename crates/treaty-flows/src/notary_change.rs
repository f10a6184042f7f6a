//! `NotaryChange`: moving states from one notary to another (white paper "Notaries and
//! consensus"; a transaction of kind [`TransactionKind::NotaryChange`]).
//!
//! The instigator builds the transaction — every input reappears unchanged but for its notary,
//! encumbrance indices remapped, and the encumbrances of the states moved are moved with them
//! (an encumbered state cannot be consumed without them) — signs for the participants it holds
//! keys of, collects the other participants' signatures (the acceptors check it is a notary
//! change to a notary of the network, nothing else), has the *old* notary notarise it, and
//! records and shares it. From then on the states are spent through the new notary.

use std::collections::BTreeSet;
use std::sync::Arc;

use treaty_core::{
    AbstractParty, Party, PrivacySalt, PublicKey, SignedTransaction, StateAndRef, StateRef, TransactionBuilder, TransactionKind, X500Name,
    notary_change_outputs,
};

use crate::context::{FlowContext, Session};
use crate::error::FlowError;
use crate::finality::{finality, receive_finality};
use crate::ledger::Ledger;
use crate::signatures::{Keys, collect_signatures, sign_transaction};

/// The flow's registered name.
pub const NOTARY_CHANGE: &str = "NotaryChange";

/// The states at `refs` as recorded on this node, with the encumbrances they need added
/// (transitively), in a stable order: those asked for first, then the encumbrances.
pub async fn with_encumbrances<L: Ledger>(ledger: &Arc<L>, refs: &[StateRef]) -> Result<Vec<StateAndRef>, FlowError> {
    let mut out: Vec<StateAndRef> = Vec::new();
    let mut seen: BTreeSet<StateRef> = BTreeSet::new();
    let mut queue: Vec<StateRef> = refs.to_vec();
    let mut i = 0;
    while i < queue.len() {
        let r = queue[i];
        i += 1;
        if !seen.insert(r) {
            continue;
        }
        let [stx] = <[Option<SignedTransaction>; 1]>::try_from(ledger.transactions(&[r.txhash]).await?).unwrap_or([None]);
        let stx = stx.ok_or_else(|| FlowError::Exception(format!("state {r}: transaction {} is not recorded on this node", r.txhash)))?;
        let state = stx
            .tx()
            .components()
            .outputs
            .get(r.index as usize)
            .cloned()
            .ok_or_else(|| FlowError::Exception(format!("state {r}: transaction {} has no output {}", r.txhash, r.index)))?;
        if let Some(e) = state.encumbrance {
            queue.push(StateRef { txhash: r.txhash, index: e });
        }
        out.push(StateAndRef { state, r#ref: r });
    }
    Ok(out)
}

/// Instigates a notary change of `states` (as [`with_encumbrances`] gives them) to
/// `new_notary`. `sessions` are open with every participant other than this node; `me` is
/// this node's identity. Returns the notarised transaction.
pub async fn change_notary<L: Ledger, K: Keys>(
    ctx: &FlowContext,
    ledger: &Arc<L>,
    keys: &Arc<K>,
    me: &Party,
    states: &[StateAndRef],
    new_notary: &Party,
    sessions: &[Session],
) -> Result<SignedTransaction, FlowError> {
    let old = states.first().map(|s| s.state.notary.clone()).ok_or_else(|| FlowError::Exception("no states to move".into()))?;
    if let Some(other) = states.iter().find(|s| s.state.notary != old) {
        return Err(FlowError::Exception(format!(
            "state {} is guarded by {}, not {}: move the states of one notary at a time",
            other.r#ref, other.state.notary.name, old.name
        )));
    }
    if old == *new_notary {
        return Err(FlowError::Exception(format!("the states are guarded by {} already", old.name)));
    }
    let required = participant_keys(states);
    let ours = keys.owned(&required);
    let (states_c, new_c) = (states.to_vec(), new_notary.clone());
    // Built and signed once: a replay notarises the same transaction.
    let bytes: Vec<u8> = ctx
        .side_effect("notary-change.build", |_| {
            let keys = keys.clone();
            async move {
                let mut b = TransactionBuilder::new(Some(old.clone())).kind(TransactionKind::NotaryChange { new_notary: new_c.clone() });
                for s in &states_c {
                    b = b.input(s.r#ref);
                }
                for o in notary_change_outputs(&states_c, &new_c) {
                    b = b.output(o);
                }
                let wtx = b.build(PrivacySalt(rand::random())).map_err(|e| FlowError::Exception(e.to_string()))?;
                let id = wtx.id();
                let sigs = ours.iter().map(|k| keys.sign(&id, k)).collect::<Result<Vec<_>, _>>()?;
                Ok(SignedTransaction::new(wtx, sigs).to_bytes())
            }
        })
        .await?;
    let stx =
        SignedTransaction::from_bytes(&bytes, &ledger.limits()).map_err(|e| FlowError::Invalid(format!("journaled notary change: {e}")))?;
    ctx.progress("collecting signatures").await?;
    let stx = collect_signatures(ctx, ledger, stx, &required, sessions).await?;
    ctx.progress("notarising").await?;
    finality(ctx, ledger, keys, me, stx, sessions).await
}

/// Every participant key of `states` (each once).
fn participant_keys(states: &[StateAndRef]) -> Vec<PublicKey> {
    let mut keys: Vec<PublicKey> = Vec::new();
    for s in states {
        for p in &s.state.data.participants {
            if !keys.contains(p.owning_key()) {
                keys.push(p.owning_key().clone());
            }
        }
    }
    keys
}

/// The parties the instigator must ask to sign: every participant whose key this node does not
/// hold, by name. An anonymous participant of another node cannot be asked.
pub fn counterparties<K: Keys>(keys: &K, states: &[StateAndRef]) -> Result<Vec<X500Name>, FlowError> {
    let mut names: Vec<X500Name> = Vec::new();
    for s in states {
        for p in &s.state.data.participants {
            if !keys.owned(std::slice::from_ref(p.owning_key())).is_empty() {
                continue;
            }
            match p {
                AbstractParty::Party(party) => {
                    if !names.contains(&party.name) {
                        names.push(party.name.clone());
                    }
                }
                AbstractParty::Anonymous(_) => {
                    return Err(FlowError::Exception(format!(
                        "state {} has an anonymous participant ({}) this node cannot ask to sign",
                        s.r#ref,
                        p.owning_key().short()
                    )));
                }
            }
        }
    }
    Ok(names)
}

/// The acceptor: signs a notary change to one of `notaries` (and nothing else), then records
/// the notarised transaction.
pub async fn accept_notary_change<L: Ledger, K: Keys>(
    ctx: &FlowContext,
    session: &Session,
    ledger: &Arc<L>,
    keys: &Arc<K>,
    notaries: &[Party],
) -> Result<(), FlowError> {
    sign_transaction(ctx, session, ledger, keys, |ltx| match &ltx.kind {
        TransactionKind::NotaryChange { new_notary } if notaries.contains(new_notary) => Ok(()),
        TransactionKind::NotaryChange { new_notary } => Err(format!("{} is not a notary of this network", new_notary.name)),
        _ => Err("it is not a notary change".into()),
    })
    .await?;
    receive_finality(ctx, session, ledger).await.map(|_| ())
}
