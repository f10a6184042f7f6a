//! The notary service's protocol and checks (white paper "Notaries and consensus").
//!
//! A client sends a [`NotarisationRequest`]: for a non-validating notary, a tear-off of the
//! transaction revealing exactly its inputs, references, time window, notary and network
//! parameters (all of each group, provably), signed by the requesting party. The service
//! ([`NotaryService::notarise`]) checks the tear-off's proofs and completeness, that it names
//! this notary, and the request signature; commits the inputs through its
//! [`UniquenessProvider`] (which also checks references and the time window against the
//! notary's clock); and signs the transaction id — the signature covers uniqueness and time
//! together. Every refusal is a distinct [`NotaryRefusal`] the client can act on.
//!
//! A validating notary receives the whole transaction with its back-chain instead, verifies it
//! completely, and then runs the same commit-and-sign step ([`NotaryService::commit_and_sign`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use treaty_core::{
    FilteredTransaction, KeyPair, Party, PublicKey, SecureHash, SignedTransaction, StateRef, TimeWindow, Timestamp, TransactionSignature,
};

use crate::error::NotaryError;
use crate::provider::UniquenessProvider;
use crate::request::{CommitRequest, Conflict};
use crate::signer::BatchSigner;

/// Domain separation for request signatures: a request signature can never be mistaken for a
/// transaction signature.
const REQUEST_TAG: &[u8] = b"treaty.notarisation-request.v1";

/// The bytes a requesting party signs: tag, transaction id, the notary asked.
pub fn request_signing_bytes(tx_id: &SecureHash, notary: &Party) -> Vec<u8> {
    let mut b = REQUEST_TAG.to_vec();
    b.extend_from_slice(tx_id.as_bytes());
    b.extend_from_slice(notary.name.to_string().as_bytes());
    b
}

/// A request to a non-validating notary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotarisationRequest {
    /// The transaction's inputs, references, time window, notary and parameters, all revealed.
    pub transaction: FilteredTransaction,
    /// The requesting party's signature over [`request_signing_bytes`].
    pub signature: Vec<u8>,
}

/// Why a notary refused (or could not yet handle) a request. Crosses the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NotaryRefusal {
    /// Some states were consumed by other transactions: which, and by what.
    #[error("notary refused transaction {tx_id}: {conflict}")]
    Conflict {
        /// The refused transaction.
        tx_id: SecureHash,
        /// Every conflicting state and the transaction that consumed it.
        conflict: Conflict,
    },
    /// The notary's time is outside the transaction's time window.
    #[error(
        "notary refused transaction {tx_id}: its time {notary_time} is outside the time window {window} (tolerance {tolerance_micros} µs)"
    )]
    TimeWindowInvalid {
        /// The refused transaction.
        tx_id: SecureHash,
        /// Its window.
        window: TimeWindow,
        /// The notary's time.
        notary_time: Timestamp,
        /// The tolerance allowed either side.
        tolerance_micros: i64,
    },
    /// The transaction (or the tear-off of it) is not acceptable.
    #[error("notary refused transaction {tx_id} as invalid: {reason}")]
    TransactionInvalid {
        /// The refused transaction.
        tx_id: SecureHash,
        /// What is wrong.
        reason: String,
    },
    /// The request signature does not verify with the requesting party's key.
    #[error("notary refused transaction {tx_id}: the request signature of {requester} is invalid")]
    RequestSignatureInvalid {
        /// The refused transaction.
        tx_id: SecureHash,
        /// Who asked.
        requester: String,
    },
    /// The transaction names another notary (or none).
    #[error("notary {this} refused transaction {tx_id}: it names notary {named}")]
    WrongNotary {
        /// The refused transaction.
        tx_id: SecureHash,
        /// The notary it names ("none" if none).
        named: String,
        /// This notary.
        this: String,
    },
    /// The notary cannot take the request now; try again after the estimated wait.
    #[error("notary is busy or unavailable ({reason}); retry in about {retry_after_ms} ms")]
    Overloaded {
        /// Why.
        reason: String,
        /// Estimated wait.
        retry_after_ms: u64,
    },
}

impl NotaryRefusal {
    /// The stable code (`NOTARY-CONFLICT`, …).
    pub fn code(&self) -> &'static str {
        match self {
            NotaryRefusal::Conflict { .. } => "NOTARY-CONFLICT",
            NotaryRefusal::TimeWindowInvalid { .. } => "NOTARY-TIME-WINDOW",
            NotaryRefusal::TransactionInvalid { .. } => "NOTARY-TRANSACTION-INVALID",
            NotaryRefusal::RequestSignatureInvalid { .. } => "NOTARY-REQUEST-SIGNATURE",
            NotaryRefusal::WrongNotary { .. } => "NOTARY-WRONG-NOTARY",
            NotaryRefusal::Overloaded { .. } => "NOTARY-OVERLOADED",
        }
    }
}

/// What a notary answers: its signature over the transaction id, or why not.
pub type NotaryAnswer = Result<TransactionSignature, NotaryRefusal>;

/// A notary service: its identity and signing key, and its uniqueness provider.
pub struct NotaryService {
    identity: Party,
    signer: BatchSigner,
    /// `None`: request signatures are checked on the caller's task, one by one.
    verifier: Option<crate::verifier::RequestVerifier>,
    provider: Arc<dyn UniquenessProvider>,
    validating: bool,
    admission: Arc<Admission>,
}

/// The most requests a service lets wait for their commit at once by default; beyond it,
/// requests are refused as `Overloaded` with an estimated wait.
pub const DEFAULT_MAX_PENDING: usize = 10_000;

/// Requests waiting for their commit, and the recent commit rate (to estimate a wait).
struct Admission {
    max: usize,
    pending: std::sync::atomic::AtomicUsize,
    /// (start of the current window, answers in it, answers per second over the last window).
    rate: std::sync::Mutex<(std::time::Instant, u64, f64)>,
}

impl Admission {
    fn new(max: usize) -> Admission {
        Admission { max, pending: std::sync::atomic::AtomicUsize::new(0), rate: std::sync::Mutex::new((std::time::Instant::now(), 0, 0.0)) }
    }

    /// A place in the queue, or `Overloaded` with the time the queue ahead should take.
    fn admit(self: &Arc<Self>) -> Result<Pending, NotaryRefusal> {
        use std::sync::atomic::Ordering;
        let waiting = self.pending.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.max {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            let rate = self.rate.lock().unwrap_or_else(|p| p.into_inner()).2;
            // At the recent rate the queue ahead takes waiting / rate seconds; with no rate yet
            // (nothing committed lately), a second.
            let retry_after_ms = if rate > 1.0 { ((waiting as f64 / rate) * 1000.0).ceil() as u64 } else { 1000 };
            return Err(NotaryRefusal::Overloaded {
                reason: format!("{waiting} requests are waiting for their commit, the most this notary queues"),
                retry_after_ms: retry_after_ms.clamp(10, 60_000),
            });
        }
        Ok(Pending(self.clone()))
    }

    fn answered(&self) {
        let mut r = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        r.1 += 1;
        let elapsed = r.0.elapsed().as_secs_f64();
        if elapsed >= 0.25 {
            r.2 = r.1 as f64 / elapsed;
            *r = (std::time::Instant::now(), 0, r.2);
        }
    }
}

/// A request's place in the queue, given back when it is answered.
struct Pending(Arc<Admission>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The most transactions one batch signature covers by default.
pub const DEFAULT_MAX_SIGNING_BATCH: usize = 1024;

impl NotaryService {
    /// A service answering as `identity`, signing with `key` (whose public key is
    /// `identity.owning_key`), committing through `provider`. Transactions committed together
    /// are signed together (see [`BatchSigner`]), up to [`DEFAULT_MAX_SIGNING_BATCH`].
    pub fn new(identity: Party, key: KeyPair, provider: Arc<dyn UniquenessProvider>) -> Result<NotaryService, String> {
        if key.public() != identity.owning_key {
            return Err(format!(
                "the notary key {} is not the key of {} ({})",
                key.public().short(),
                identity.name,
                identity.owning_key.short()
            ));
        }
        Ok(NotaryService {
            identity,
            signer: BatchSigner::new(key, DEFAULT_MAX_SIGNING_BATCH),
            verifier: Some(crate::verifier::RequestVerifier::start(crate::verifier::MAX_VERIFY_BATCH)),
            provider,
            validating: false,
            admission: Arc::new(Admission::new(DEFAULT_MAX_PENDING)),
        })
    }

    /// The same service as a validating notary (`true`): it asks for whole transactions with
    /// their back-chains, and its host verifies them before [`NotaryService::notarise_whole`].
    pub fn validating(self, validating: bool) -> NotaryService {
        NotaryService { validating, ..self }
    }

    /// Whether this is a validating notary.
    pub fn is_validating(&self) -> bool {
        self.validating
    }

    /// The same service checking request signatures in batches of at most `max` (default
    /// [`crate::verifier::MAX_VERIFY_BATCH`]); 0 checks each on its caller's task instead.
    pub fn with_request_batch(self, max: usize) -> NotaryService {
        NotaryService { verifier: (max > 0).then(|| crate::verifier::RequestVerifier::start(max)), ..self }
    }

    /// The same service letting at most `max` requests wait for their commit at once (default
    /// [`DEFAULT_MAX_PENDING`]); a request beyond is refused as `Overloaded`, with the time
    /// the queue ahead should take at the recent commit rate.
    pub fn with_max_pending(self, max: usize) -> NotaryService {
        NotaryService { admission: Arc::new(Admission::new(max.max(1))), ..self }
    }

    /// The same service signing at most `max` transactions per signature (1: every transaction
    /// signed alone).
    pub fn with_max_signing_batch(self, max: usize) -> NotaryService {
        NotaryService { signer: self.signer.with_max_batch(max), ..self }
    }

    /// The service's identity.
    pub fn identity(&self) -> &Party {
        &self.identity
    }

    /// Non-validating notarisation of `request` from `requester` (whose key the caller took
    /// from the network map) at the notary's time `now`.
    pub async fn notarise(&self, request: &NotarisationRequest, requester: &Party, now: Timestamp) -> NotaryAnswer {
        let ftx = &request.transaction;
        let tx_id = ftx.id;
        let invalid = |reason: String| NotaryRefusal::TransactionInvalid { tx_id, reason };
        ftx.verify().map_err(|e| invalid(e.to_string()))?;
        for g in FilteredTransaction::NOTARY_GROUPS {
            ftx.check_all_visible(g).map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(hidden) =
            ftx.groups.iter().map(|g| g.group).find(|g| !FilteredTransaction::NOTARY_GROUPS.iter().any(|n| n.index() == *g))
        {
            return Err(invalid(format!("the tear-off reveals component group {hidden}, which a non-validating notary must not see")));
        }
        let named = ftx.notary().map_err(|e| invalid(e.to_string()))?;
        self.check_notary(tx_id, named.as_ref())?;
        // Checked in a batch with the other requests arriving now (see `verifier`).
        let message = request_signing_bytes(&tx_id, &self.identity);
        let ok = match &self.verifier {
            Some(v) => v.verify(&requester.owning_key, &message, &request.signature).await,
            None => requester.owning_key.verify(&message, &request.signature).is_ok(),
        };
        if !ok {
            return Err(NotaryRefusal::RequestSignatureInvalid { tx_id, requester: requester.name.to_string() });
        }
        let inputs = ftx.inputs().map_err(|e| invalid(e.to_string()))?;
        let references = ftx.references().map_err(|e| invalid(e.to_string()))?;
        let time_window = ftx.time_window().map_err(|e| invalid(e.to_string()))?;
        if inputs.is_empty() && references.is_empty() && time_window.is_none() {
            return Err(invalid("it has no inputs, references or time window: there is nothing to notarise".into()));
        }
        self.commit_and_sign(tx_id, inputs, references, time_window, requester, now).await
    }

    /// Notarisation of a whole transaction `stx` from `requester`, which the caller (a
    /// validating notary's host) has already resolved and verified completely — contracts
    /// included, only this notary's signature missing. Checks that it names this notary and the
    /// request signature, then commits and signs.
    pub async fn notarise_whole(&self, stx: &SignedTransaction, signature: &[u8], requester: &Party, now: Timestamp) -> NotaryAnswer {
        self.check_whole(stx, signature, requester)?;
        self.commit_whole(stx, requester, now).await
    }

    /// The checks [`NotaryService::notarise_whole`] makes before it commits: the transaction
    /// names this notary, the request signature is `requester`'s, and there is something to
    /// notarise. A host that verifies the transaction itself runs these first (they are
    /// cheaper), then verifies, then calls [`NotaryService::commit_whole`].
    pub fn check_whole(&self, stx: &SignedTransaction, signature: &[u8], requester: &Party) -> Result<(), NotaryRefusal> {
        let tx_id = stx.id();
        let c = stx.tx().components();
        self.check_notary(tx_id, c.notary.as_ref())?;
        requester
            .owning_key
            .verify(&request_signing_bytes(&tx_id, &self.identity), signature)
            .map_err(|_| NotaryRefusal::RequestSignatureInvalid { tx_id, requester: requester.name.to_string() })?;
        if c.inputs.is_empty() && c.references.is_empty() && c.time_window.is_none() {
            return Err(NotaryRefusal::TransactionInvalid {
                tx_id,
                reason: "it has no inputs, references or time window: there is nothing to notarise".into(),
            });
        }
        Ok(())
    }

    /// Commits a whole transaction that passed [`NotaryService::check_whole`] (and, for a
    /// validating notary, its host's verification) and signs it.
    pub async fn commit_whole(&self, stx: &SignedTransaction, requester: &Party, now: Timestamp) -> NotaryAnswer {
        let c = stx.tx().components();
        self.commit_and_sign(stx.id(), c.inputs.clone(), c.references.clone(), c.time_window, requester, now).await
    }

    /// Checks that `named` is this notary.
    pub fn check_notary(&self, tx_id: SecureHash, named: Option<&Party>) -> Result<(), NotaryRefusal> {
        if named != Some(&self.identity) {
            return Err(NotaryRefusal::WrongNotary {
                tx_id,
                named: named.map_or_else(|| "none".to_string(), |p| p.name.to_string()),
                this: self.identity.name.to_string(),
            });
        }
        Ok(())
    }

    /// Commits the states through the provider and signs the id: the step both kinds of
    /// notary end with.
    pub async fn commit_and_sign(
        &self,
        tx_id: SecureHash,
        inputs: Vec<StateRef>,
        references: Vec<StateRef>,
        time_window: Option<TimeWindow>,
        requester: &Party,
        now: Timestamp,
    ) -> NotaryAnswer {
        let request = CommitRequest { tx_id, inputs, references, time_window, requester: requester.name.clone() };
        let place = self.admission.admit()?;
        let committed = self.provider.commit(request, now).await;
        self.admission.answered();
        drop(place);
        match committed {
            Ok(()) => Ok(self.signer.sign(tx_id).await),
            Err(NotaryError::Conflict { tx_id, conflict }) => Err(NotaryRefusal::Conflict { tx_id, conflict }),
            Err(NotaryError::TimeWindowInvalid { tx_id, window, now, tolerance_micros }) => {
                Err(NotaryRefusal::TimeWindowInvalid { tx_id, window, notary_time: now, tolerance_micros })
            }
            Err(e @ NotaryError::TooManyInputs { .. }) => Err(NotaryRefusal::TransactionInvalid { tx_id, reason: e.to_string() }),
            Err(e) => Err(NotaryRefusal::Overloaded { reason: format!("{} {e}", e.code()), retry_after_ms: 1000 }),
        }
    }

    /// The service's public key (what its signatures verify with).
    pub fn public_key(&self) -> PublicKey {
        self.signer.key().public()
    }
}
