//! Finality: notarise a transaction, record it, and send it to everyone who must have it
//! (`Finality` / `ReceiveFinality`), with the client side of the notary protocol
//! ([`notarise`]).
//!
//! It is two-phase by construction: the notary's signature arrives as a journaled message, so
//! if the node dies after notarisation the replay gets the same signature from the journal
//! (and a repeated request gets the same answer: notarising is idempotent), records the
//! transaction and carries on sending it. A notarised transaction is never lost.

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use treaty_core::{
    FilteredTransaction, MapResolver, Party, SecureHash, SignedTransaction, Timestamp, TransactionSignature, VerifyOptions, X500Name,
    encoding, verify_transaction,
};
use treaty_notary::{NotarisationRequest, NotaryAnswer, NotaryRefusal, NotaryService, request_signing_bytes};

use crate::context::{FlowContext, Session};
use crate::error::FlowError;
use crate::ledger::Ledger;
use crate::resolve::{
    ReceiveOptions, ReceivedTransaction, dependencies, receive_and_record, receive_transaction, receive_unresolved, send_transaction,
};
use crate::signatures::Keys;

/// The protocol name a notary's responder is registered under (see [`notary_responder`]).
pub const NOTARY_PROTOCOL: &str = "treaty.Notarise";

/// The first message of the notary protocol.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum NotaryRequest {
    /// For a non-validating notary: a tear-off showing only what uniqueness needs.
    Filtered(NotarisationRequest),
    /// For a validating notary: the whole transaction follows ([`send_transaction`]: the
    /// notary resolves its back-chain from the client), then the notary answers.
    Whole {
        /// The transaction's id.
        tx_id: SecureHash,
        /// The requesting party's signature over [`request_signing_bytes`].
        signature: Vec<u8>,
    },
}

/// Whether `stx` needs a notary: it consumes or references states, or has a time window.
pub fn needs_notary(stx: &SignedTransaction) -> bool {
    let c = stx.tx().components();
    !c.inputs.is_empty() || !c.references.is_empty() || c.time_window.is_some()
}

/// How long a client waits for one member of a notary cluster before asking the next; it
/// doubles after every round of the members, up to [`CLUSTER_MEMBER_MAX_WAIT`].
pub const CLUSTER_MEMBER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How many times a client asks again a notary that answered `Overloaded`, waiting the time it
/// estimated (10 ms to 30 s) before each; then the refusal is the flow's error.
pub const NOTARY_BUSY_RETRIES: u32 = 20;
/// The longest a client waits for a notary whose clock has not reached the start of its
/// transaction's time window, as the notary's refusal reports its time: a transaction built
/// for "from now" by a node whose clock runs a little ahead of the notary's (a scheduled
/// activity, due by the node's clock) is asked again once the notary's clock is there,
/// instead of failing. A window starting later than this is refused as before.
pub const NOTARY_EARLY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// The longest wait for one member of a notary cluster.
pub const CLUSTER_MEMBER_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Asks the transaction's notary to notarise `stx` on behalf of `me` (whose identity key signs
/// the request): a non-validating notary gets a tear-off, a validating one (so the network
/// parameters say, through [`Ledger::is_validating_notary`]) the whole transaction with its
/// back-chain from `ledger`. Returns the notary's signature, checked; a refusal is
/// [`FlowError::Notary`] with the conflicting states and their consumers, or the reason.
///
/// A notary cluster (its members listed in the network parameters, [`Ledger::notary_members`])
/// is asked through one member at a time: the first is chosen by the transaction id (spreading
/// clients over the members), and a member that has not answered within
/// [`CLUSTER_MEMBER_WAIT`] is left for the next. Notarising is idempotent, so asking again
/// gets the answer the silent member would have given; the waits are journaled, so a replay
/// asks the same members in the same order.
pub async fn notarise<L: Ledger, K: Keys>(
    ctx: &FlowContext,
    ledger: &Arc<L>,
    keys: &Arc<K>,
    me: &Party,
    stx: &SignedTransaction,
) -> Result<TransactionSignature, FlowError> {
    let id = stx.id();
    let notary = stx.tx().components().notary.clone().ok_or_else(|| FlowError::Invalid(format!("transaction {id} names no notary")))?;
    let signature = keys.sign_bytes(&me.owning_key, &request_signing_bytes(&id, &notary))?;
    let (mut busy, mut early) = (0u32, false);
    let answer = loop {
        match ask_once(ctx, ledger, stx, &notary.name, &signature).await? {
            Err(NotaryRefusal::Overloaded { reason, retry_after_ms }) if busy < NOTARY_BUSY_RETRIES => {
                busy += 1;
                let wait_ms = retry_after_ms.clamp(10, 30_000);
                ctx.progress(&format!("notary {} is busy ({reason}); asking again in {wait_ms} ms", notary.name)).await?;
                let until = ctx.now().await?.saturating_add(i64::try_from(wait_ms).unwrap_or(30_000) * 1000);
                ctx.sleep_until(until).await?;
            }
            Err(refusal) if !early && too_early(&refusal).is_some_and(|gap| gap <= NOTARY_EARLY_WAIT.as_micros() as i64) => {
                // Once: the wait is what the notary's own clock said was left.
                early = true;
                let gap = too_early(&refusal).unwrap_or(0);
                ctx.progress(&format!(
                    "notary {}'s clock is {} ms short of the time window's start; asking again then",
                    notary.name,
                    gap / 1000
                ))
                .await?;
                let until = ctx.now().await?.saturating_add(gap + EARLY_MARGIN_MICROS);
                ctx.sleep_until(until).await?;
            }
            other => break other,
        }
    };
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

/// Waited beyond the notary's reported shortfall before asking again (the request's own
/// travel and the notary's clock reading take some of it).
const EARLY_MARGIN_MICROS: i64 = 200_000;

/// For a refusal because the notary's time was before the time window's start (tolerance
/// included): by how many microseconds.
fn too_early(refusal: &NotaryRefusal) -> Option<i64> {
    let NotaryRefusal::TimeWindowInvalid { window, notary_time, tolerance_micros, .. } = refusal else { return None };
    let gap = window.from_time()?.micros().saturating_sub(*tolerance_micros).saturating_sub(notary_time.micros());
    (gap > 0).then_some(gap)
}

/// Asks the notary once (a cluster through its members in turn) and returns its answer.
async fn ask_once<L: Ledger>(
    ctx: &FlowContext,
    ledger: &Arc<L>,
    stx: &SignedTransaction,
    notary: &X500Name,
    signature: &[u8],
) -> Result<NotaryAnswer, FlowError> {
    let id = stx.id();
    let members = ledger.notary_members(notary);
    let answer: NotaryAnswer = if members.is_empty() {
        let session = ctx.initiate_as(notary, NOTARY_PROTOCOL, 1).await?;
        ask_notary(ctx, ledger, stx, notary, &session, signature.to_vec()).await?;
        ctx.receive(&session).await?
    } else {
        let first = u64::from_le_bytes(id.as_bytes()[..8].try_into().unwrap_or_default()) as usize % members.len();
        let mut attempt = 0usize;
        loop {
            let member = &members[(first + attempt) % members.len()];
            let session = ctx.initiate_as(member, NOTARY_PROTOCOL, 1).await?;
            ask_notary(ctx, ledger, stx, notary, &session, signature.to_vec()).await?;
            let round = u32::try_from(attempt / members.len()).unwrap_or(u32::MAX).min(8);
            let wait = (CLUSTER_MEMBER_WAIT * 2u32.pow(round)).min(CLUSTER_MEMBER_MAX_WAIT);
            let deadline = ctx.now().await?.saturating_add(i64::try_from(wait.as_micros()).unwrap_or(i64::MAX));
            if let Some(answer) = ctx.receive_until(&session, deadline).await? {
                break answer;
            }
            ctx.progress(&format!("{member} (of notary {}) did not answer within {} s; asking the next member", notary, wait.as_secs()))
                .await?;
            attempt += 1;
        }
    };
    Ok(answer)
}

/// Sends the notarisation request on `session`: a tear-off, or for a validating notary the
/// whole transaction (answering the notary's questions for its back-chain).
async fn ask_notary<L: Ledger>(
    ctx: &FlowContext,
    ledger: &Arc<L>,
    stx: &SignedTransaction,
    notary: &X500Name,
    session: &Session,
    signature: Vec<u8>,
) -> Result<(), FlowError> {
    if ledger.is_validating_notary(notary) {
        ctx.send(session, &NotaryRequest::Whole { tx_id: stx.id(), signature }).await?;
        send_transaction(ctx, session, ledger, stx).await.map(|_| ())
    } else {
        let transaction = FilteredTransaction::reveal_groups(stx.tx(), &FilteredTransaction::NOTARY_GROUPS);
        ctx.send(session, &NotaryRequest::Filtered(NotarisationRequest { transaction, signature })).await
    }
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
        let sig = notarise(ctx, ledger, keys, me, &stx).await?;
        stx.with_signature(sig)
    } else {
        stx
    };
    // Recorded before anyone else hears of it: whatever happens next, this node has it.
    ledger.record(&[], std::slice::from_ref(&notarised)).await?;
    // Each participant says it is done with the back-chain once it has verified and recorded
    // the transaction: that `Done` is its acknowledgement.
    for session in participants {
        send_transaction(ctx, session, ledger, &notarised).await?;
    }
    Ok(notarised)
}

/// A notary's side of [`notarise`], for the responder registered under [`NOTARY_PROTOCOL`]:
/// receives the request, looks the requesting party's key up with `identity` (the network
/// map), and answers with the service's signature or its refusal. The notary's time is a
/// journaled step, so a replayed request is judged at the same time. (A node registers
/// [`notary_answer`] too, which answers a non-validating service's tear-offs without this
/// flow.)
///
/// A validating service ([`NotaryService::is_validating`]) refuses tear-offs; for a whole
/// transaction it resolves the back-chain from the client into `ledger`, verifies everything
/// (contracts in `ledger`'s verifier, every signature but its own), and refuses an invalid
/// transaction with `TransactionInvalid` naming why. A non-validating service takes a whole
/// transaction too, but does not resolve or verify it: it checks what it checks of a tear-off.
pub async fn notary_responder<L: Ledger>(
    ctx: &FlowContext,
    service: &NotaryService,
    ledger: &Arc<L>,
    identity: impl Fn(&X500Name) -> Option<Party>,
) -> Result<(), FlowError> {
    let session = ctx.initiating_session().ok_or_else(|| FlowError::Invalid("notary responder without a session".into()))?;
    let request: NotaryRequest = ctx.receive(&session).await?;
    let tx_id = match &request {
        NotaryRequest::Filtered(r) => r.transaction.id,
        NotaryRequest::Whole { tx_id, .. } => *tx_id,
    };
    let requester = identity(&session.party).ok_or_else(|| unknown_requester(tx_id, &session.party));
    let answer: NotaryAnswer = match request {
        NotaryRequest::Filtered(_) if service.is_validating() => Err(NotaryRefusal::TransactionInvalid {
            tx_id,
            reason: format!(
                "{} is a validating notary: it needs the whole transaction with its back-chain, not a tear-off \
                 (the client's network parameters disagree with the notary's)",
                service.identity().name
            ),
        }),
        NotaryRequest::Filtered(request) => match requester {
            Ok(requester) => service.notarise(&request, &requester, Timestamp(ctx.now().await?)).await,
            Err(refusal) => Err(refusal),
        },
        NotaryRequest::Whole { signature, .. } => {
            let options =
                ReceiveOptions { record: false, allowed_missing: vec![service.identity().owning_key.clone()], any_missing: false };
            let received = if service.is_validating() {
                receive_transaction(ctx, &session, ledger, options).await.map(|r| r.transaction)
            } else {
                receive_unresolved(ctx, &session, ledger).await
            };
            match (received, requester) {
                (Ok(_), Err(refusal)) => Err(refusal),
                (Ok(received), Ok(requester)) if received.id() == tx_id => {
                    service.notarise_whole(&received, &signature, &requester, Timestamp(ctx.now().await?)).await
                }
                (Ok(received), Ok(_)) => Err(NotaryRefusal::TransactionInvalid {
                    tx_id,
                    reason: format!("the request names transaction {tx_id} but transaction {} was sent", received.id()),
                }),
                (Err(FlowError::InvalidTransaction { id, reason, .. }), _) => Err(NotaryRefusal::TransactionInvalid {
                    tx_id,
                    reason: if id == tx_id.to_string() { reason } else { format!("in its back-chain, transaction {id}: {reason}") },
                }),
                (Err(e), _) => return Err(e),
            }
        }
    };
    ctx.send(&session, &answer).await
}

/// [`notary_responder`]'s answer to a tear-off, given without a flow
/// ([`crate::Registry::answering`]): a non-validating `service` takes a
/// [`NotaryRequest::Filtered`] opening payload from `sender` (`requester`: its identity from
/// the network map, `None` if it is not there) and returns the work that checks, commits and
/// signs it at the notary's time, giving the encoded [`NotaryAnswer`]. Anything else — a
/// whole transaction, a validating service, a payload that does not decode — is `None`, for
/// the responder flow. Answering again after a crash is safe: a transaction committed before
/// is answered with success whatever the time (the uniqueness rules, `treaty_notary::apply`),
/// and the engine sends only one answer per request.
pub fn notary_answer(
    service: &Arc<NotaryService>,
    requester: Option<Party>,
    sender: &X500Name,
    payload: &[u8],
) -> Option<impl Future<Output = Result<Vec<u8>, String>> + Send + use<>> {
    if service.is_validating() {
        return None;
    }
    let NotaryRequest::Filtered(request) = encoding::decode::<NotaryRequest>(payload).ok()? else {
        return None;
    };
    let requester = requester.ok_or_else(|| unknown_requester(request.transaction.id, sender));
    let service = service.clone();
    Some(async move {
        let answer: NotaryAnswer = match requester {
            Ok(requester) => service.notarise(&request, &requester, Timestamp(crate::now_micros())).await,
            Err(refusal) => Err(refusal),
        };
        Ok(encoding::encode(&answer))
    })
}

/// The notary's refusal of a request from a party the network map does not list.
fn unknown_requester(tx_id: SecureHash, sender: &X500Name) -> NotaryRefusal {
    NotaryRefusal::RequestSignatureInvalid { tx_id, requester: format!("{sender} (not on the network map)") }
}

/// The participant side of [`finality`]: receives the notarised transaction, resolves and
/// verifies it with its back-chain (every signature required, the notary's included), records
/// it, and acknowledges (by ending the back-chain exchange only once it is recorded).
pub async fn receive_finality<L: Ledger>(ctx: &FlowContext, session: &Session, ledger: &Arc<L>) -> Result<ReceivedTransaction, FlowError> {
    receive_and_record(ctx, session, ledger).await
}
