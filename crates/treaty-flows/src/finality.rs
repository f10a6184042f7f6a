//! Finality: notarise a transaction, record it, and send it to everyone who must have it
//! (`Finality` / `ReceiveFinality`), with the client side of the notary protocol
//! ([`notarise`]).
//!
//! It is two-phase by construction: the notary's signature arrives as a journaled message, so
//! if the node dies after notarisation the replay gets the same signature from the journal
//! (and a repeated request gets the same answer: notarising is idempotent), records the
//! transaction and carries on sending it. A notarised transaction is never lost.

use std::sync::Arc;

use treaty_core::{
    FilteredTransaction, MapResolver, Party, SignedTransaction, Timestamp, TransactionSignature, VerifyOptions, X500Name,
    verify_transaction,
};
use treaty_notary::{NotarisationRequest, NotaryAnswer, NotaryRefusal, NotaryService, request_signing_bytes};

use crate::context::{FlowContext, Session};
use crate::error::FlowError;
use crate::ledger::Ledger;
use crate::resolve::{ReceiveOptions, ReceivedTransaction, dependencies, receive_transaction, send_transaction};
use crate::signatures::Keys;

/// The protocol name a notary's responder is registered under (see [`notary_responder`]).
pub const NOTARY_PROTOCOL: &str = "treaty.Notarise";

/// Whether `stx` needs a notary: it consumes or references states, or has a time window.
pub fn needs_notary(stx: &SignedTransaction) -> bool {
    let c = stx.tx().components();
    !c.inputs.is_empty() || !c.references.is_empty() || c.time_window.is_some()
}

/// Asks the transaction's (non-validating) notary to notarise `stx` on behalf of `me` (whose
/// identity key signs the request). Returns the notary's signature, checked; a refusal is
/// [`FlowError::Notary`] with the conflicting states and their consumers, or the reason.
pub async fn notarise<K: Keys>(
    ctx: &FlowContext,
    keys: &Arc<K>,
    me: &Party,
    stx: &SignedTransaction,
) -> Result<TransactionSignature, FlowError> {
    let id = stx.id();
    let notary = stx.tx().components().notary.clone().ok_or_else(|| FlowError::Invalid(format!("transaction {id} names no notary")))?;
    let session = ctx.initiate_as(&notary.name, NOTARY_PROTOCOL, 1).await?;
    let transaction = FilteredTransaction::reveal_groups(stx.tx(), &FilteredTransaction::NOTARY_GROUPS);
    let signature = keys.sign_bytes(&me.owning_key, &request_signing_bytes(&id, &notary))?;
    let answer: NotaryAnswer = ctx.send_and_receive(&session, &NotarisationRequest { transaction, signature }).await?;
    let sig = answer.map_err(|refusal| FlowError::Notary(Box::new(refusal)))?;
    if !notary.owning_key.contains_leaf(&sig.by) {
        return Err(FlowError::Exception(format!(
            "notary {} signed transaction {id} with key {}, which is not its key",
            notary.name,
            sig.by.short()
        )));
    }
    sig.verify(&id)
        .map_err(|e| FlowError::Exception(format!("notary {}'s signature over transaction {id} is invalid: {e}", notary.name)))?;
    Ok(sig)
}

/// Verifies `stx` against what this node has recorded (its inputs' and references'
/// transactions and its attachments), allowing the notary's signature to be missing.
pub async fn verify_recorded<L: Ledger>(ledger: &Arc<L>, stx: &SignedTransaction) -> Result<(), FlowError> {
    let id = stx.id();
    let mut resolver = MapResolver::default();
    let deps = dependencies(stx);
    for (d, t) in deps.iter().zip(ledger.transactions(&deps).await?) {
        let t = t.ok_or_else(|| FlowError::Invalid(format!("transaction {id} depends on transaction {d}, which is not recorded here")))?;
        resolver.add_transaction(t.tx());
    }
    let attachments = stx.tx().components().attachments.clone();
    for (a, got) in attachments.iter().zip(ledger.attachments(&attachments).await?) {
        resolver.add_attachment(
            got.ok_or_else(|| FlowError::Invalid(format!("transaction {id} uses attachment {a}, which is not stored here")))?,
        );
    }
    let allowed_missing: Vec<_> = stx.tx().components().notary.iter().map(|n| n.owning_key.clone()).collect();
    let (l, stx) = (ledger.clone(), stx.clone());
    tokio::task::spawn_blocking(move || verify_transaction(&stx, &resolver, l.verifier(), &VerifyOptions { allowed_missing }).map(|_| ()))
        .await
        .map_err(|e| FlowError::Invalid(format!("verification task failed: {e}")))?
        .map_err(|e| FlowError::InvalidTransaction { id: id.to_string(), party: "this node".into(), reason: format!("{} {e}", e.code()) })
}

/// Finalises `stx` (signed by everyone but the notary): verifies it, has its notary sign it
/// if it needs one, records it, and sends it with its back-chain to each of `participants`
/// (who run [`receive_finality`]), returning the notarised transaction once each has
/// acknowledged recording it.
pub async fn finality<L: Ledger, K: Keys>(
    ctx: &FlowContext,
    ledger: &Arc<L>,
    keys: &Arc<K>,
    me: &Party,
    stx: SignedTransaction,
    participants: &[Session],
) -> Result<SignedTransaction, FlowError> {
    verify_recorded(ledger, &stx).await?;
    let notarised = if needs_notary(&stx) {
        let sig = notarise(ctx, keys, me, &stx).await?;
        stx.with_signature(sig)
    } else {
        stx
    };
    // Recorded before anyone else hears of it: whatever happens next, this node has it.
    ledger.record(&[], std::slice::from_ref(&notarised)).await?;
    // Each participant acknowledges once it has verified and recorded it.
    for session in participants {
        send_transaction(ctx, session, ledger, &notarised).await?;
        let _recorded: bool = ctx.receive(session).await?;
    }
    Ok(notarised)
}

/// A notary's side of [`notarise`], for the responder registered under [`NOTARY_PROTOCOL`]:
/// receives the request, looks the requesting party's key up with `identity` (the network
/// map), and answers with the service's signature or its refusal. The notary's time is a
/// journaled step, so a replayed request is judged at the same time.
pub async fn notary_responder(
    ctx: &FlowContext,
    service: &NotaryService,
    identity: impl Fn(&X500Name) -> Option<Party>,
) -> Result<(), FlowError> {
    let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("notary responder without a session".into()))?;
    let request: NotarisationRequest = ctx.receive(&session).await?;
    let now = Timestamp(ctx.now().await?);
    let answer: NotaryAnswer = match identity(&session.party) {
        Some(requester) => service.notarise(&request, &requester, now).await,
        None => Err(NotaryRefusal::RequestSignatureInvalid {
            tx_id: request.transaction.id,
            requester: format!("{} (not on the network map)", session.party),
        }),
    };
    ctx.send(&session, &answer).await
}

/// The participant side of [`finality`]: receives the notarised transaction, resolves and
/// verifies it with its back-chain (every signature required, the notary's included), records
/// it, and acknowledges.
pub async fn receive_finality<L: Ledger>(ctx: &FlowContext, session: &Session, ledger: &Arc<L>) -> Result<ReceivedTransaction, FlowError> {
    let received = receive_transaction(ctx, session, ledger, ReceiveOptions { record: true, ..ReceiveOptions::default() }).await?;
    ctx.send(session, &true).await?;
    Ok(received)
}
