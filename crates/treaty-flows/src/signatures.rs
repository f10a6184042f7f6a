//! Collecting signatures: `CollectSignatures` on the side that built a transaction,
//! `SignTransaction` on each counterparty (white paper "Flow framework": the standard flows).
//!
//! The initiator sends the partly signed transaction to each counterparty with
//! [`send_transaction`](crate::send_transaction), so the counterparty resolves and verifies
//! its back-chain first. The counterparty checks every signature present, runs the
//! application's check (its chance to refuse: "is this the trade I agreed to?"), signs with
//! those of the required keys it holds, and sends the signatures back. The initiator checks
//! each returned signature — valid, over this transaction, by a required key not signed yet —
//! before adding it.

use std::sync::Arc;

use treaty_core::{KeyPair, LedgerTransaction, PLATFORM_VERSION, PublicKey, SecureHash, SignedTransaction, TransactionSignature};

use crate::context::{FlowContext, Session};
use crate::error::FlowError;
use crate::ledger::Ledger;
use crate::resolve::{ReceiveOptions, receive_transaction, send_transaction};

/// The keys a node signs with.
pub trait Keys: Send + Sync + 'static {
    /// Of `keys` (leaves, or composite keys whose leaves are looked at), the leaf keys this node
    /// holds, each once.
    fn owned(&self, keys: &[PublicKey]) -> Vec<PublicKey>;
    /// Signs transaction `id` with `key`, which must be one this node holds.
    fn sign(&self, id: &SecureHash, key: &PublicKey) -> Result<TransactionSignature, FlowError>;
    /// Signs other bytes (a notarisation request) with `key`, which must be one this node holds.
    fn sign_bytes(&self, key: &PublicKey, bytes: &[u8]) -> Result<Vec<u8>, FlowError>;
}

/// [`Keys`] over key pairs in memory (a node's identity key; tests).
pub struct KeyPairs(Vec<KeyPair>);

impl KeyPairs {
    /// Signs with these key pairs.
    pub fn new(keys: Vec<KeyPair>) -> KeyPairs {
        KeyPairs(keys)
    }

    fn pair(&self, key: &PublicKey) -> Result<&KeyPair, FlowError> {
        self.0.iter().find(|k| &k.public() == key).ok_or_else(|| FlowError::Invalid(format!("this node holds no key {}", key.short())))
    }
}

impl Keys for KeyPairs {
    fn owned(&self, keys: &[PublicKey]) -> Vec<PublicKey> {
        let mut out: Vec<PublicKey> = Vec::new();
        for k in &self.0 {
            let public = k.public();
            if keys.iter().any(|required| required.contains_leaf(&public)) && !out.contains(&public) {
                out.push(public);
            }
        }
        out
    }

    fn sign(&self, id: &SecureHash, key: &PublicKey) -> Result<TransactionSignature, FlowError> {
        Ok(self.pair(key)?.sign_transaction(id, PLATFORM_VERSION))
    }

    fn sign_bytes(&self, key: &PublicKey, bytes: &[u8]) -> Result<Vec<u8>, FlowError> {
        Ok(self.pair(key)?.sign(bytes))
    }
}

/// The required signing keys not yet fulfilled by `stx`'s signatures.
fn unsigned(stx: &SignedTransaction, required: &[PublicKey]) -> Vec<PublicKey> {
    stx.missing_keys(required, &[])
}

/// Collects signatures for `stx` from `sessions` (one per counterparty whose keys must sign)
/// and returns it with them added. `required` is every key the transaction needs except the
/// notary's (which comes with notarisation). Fails, naming the keys, if any remain unsigned.
pub async fn collect_signatures<L: Ledger>(
    ctx: &FlowContext,
    ledger: &Arc<L>,
    stx: SignedTransaction,
    required: &[PublicKey],
    sessions: &[Session],
) -> Result<SignedTransaction, FlowError> {
    let id = stx.id();
    let mut stx = stx;
    for session in sessions {
        send_transaction(ctx, session, ledger, &stx).await?;
        let sigs: Vec<TransactionSignature> = ctx.receive(session).await?;
        let still = unsigned(&stx, required);
        for sig in sigs {
            if !still.iter().any(|k| k.contains_leaf(&sig.by)) {
                return Err(FlowError::Exception(format!(
                    "{} signed with key {}, which transaction {id} does not need (or has a signature for already)",
                    session.party,
                    sig.by.short()
                )));
            }
            sig.verify(&id)
                .map_err(|e| FlowError::Exception(format!("{}'s signature over transaction {id} is invalid: {e}", session.party)))?;
            stx = stx.with_signature(sig);
        }
    }
    let missing = unsigned(&stx, required);
    if !missing.is_empty() {
        let keys: Vec<String> = missing.iter().map(PublicKey::short).collect();
        return Err(FlowError::Exception(format!("transaction {id} still lacks signatures for keys {}", keys.join(", "))));
    }
    Ok(stx)
}

/// The counterparty side of [`collect_signatures`]: receives the transaction (resolving its
/// back-chain), checks the signatures present, lets `check` refuse it, and signs with the
/// required keys this node holds. Returns the transaction as signed here.
pub async fn sign_transaction<L, K, F>(
    ctx: &FlowContext,
    session: &Session,
    ledger: &Arc<L>,
    keys: &Arc<K>,
    check: F,
) -> Result<SignedTransaction, FlowError>
where
    L: Ledger,
    K: Keys,
    F: FnOnce(&LedgerTransaction) -> Result<(), String>,
{
    // Every signature present must be valid; missing ones are expected (this node's, other
    // counterparties', the notary's). At least the initiator's must be there.
    let received = receive_transaction(ctx, session, ledger, ReceiveOptions { any_missing: true, ..ReceiveOptions::default() }).await?;
    let stx = received.transaction;
    let id = stx.id();
    if stx.sigs().is_empty() {
        return Err(FlowError::Exception(format!("transaction {id} from {} carries no signature; its builder signs first", session.party)));
    }
    check(&received.ledger_transaction)
        .map_err(|reason| FlowError::Exception(format!("{} refuses to sign transaction {id}: {reason}", ctx.me())))?;
    let required = received.ledger_transaction.required_signing_keys();
    let mine = keys.owned(&unsigned(&stx, &required));
    if mine.is_empty() {
        return Err(FlowError::Exception(format!(
            "{} was asked to sign transaction {id} but holds none of the keys it still needs",
            ctx.me()
        )));
    }
    let sigs = mine.iter().map(|k| keys.sign(&id, k)).collect::<Result<Vec<_>, _>>()?;
    ctx.send(session, &sigs).await?;
    Ok(stx.with_signatures(sigs))
}
