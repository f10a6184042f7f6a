//! Signed transactions: the canonical transaction bytes plus signatures.
//!
//! The bytes are kept exactly as received; the id is derived from them once. Signature checks
//! report precisely which required keys (composite keys resolved against the signing leaves)
//! are unfulfilled, verify every signature present (in parallel with the `parallel` feature),
//! and can allow named keys — typically the notary's, before notarisation — to be missing.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use crate::crypto::{PublicKey, TransactionSignature};
use crate::encoding;
use crate::hash::SecureHash;

use super::error::TransactionError;
use super::wire::{Limits, WireTransaction};

#[derive(Serialize, Deserialize)]
struct SignedRepr {
    tx_bits: Vec<u8>,
    sigs: Vec<TransactionSignature>,
}

/// Signatures on one transaction from which [`SignedTransaction::verify_signatures_present`]
/// checks them on the CPU pool in parallel. Handing work to the pool wakes one of its threads
/// and blocks the caller until it is done — two context switches, and the pool's threads spin
/// a while before sleeping again — which costs more than checking two or three signatures
/// (about 30 µs each) in place, and on a busy node takes CPU from the work around it.
pub const PARALLEL_SIGNATURES: usize = 8;

/// A transaction and the signatures collected over its id.
///
/// The transaction is shared, never changed: a clone (a node's cache of recent transactions,
/// a flow handing one to another task) copies the signatures and a pointer, not every
/// decoded component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTransaction {
    tx: Arc<WireTransaction>,
    sigs: Vec<TransactionSignature>,
}

impl Serialize for SignedTransaction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("SignedRepr", 2)?;
        st.serialize_field("tx_bits", self.tx.bytes())?;
        st.serialize_field("sigs", &self.sigs)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for SignedTransaction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = SignedRepr::deserialize(d)?;
        let tx = WireTransaction::from_bytes(&r.tx_bits, &Limits::default()).map_err(serde::de::Error::custom)?;
        Ok(SignedTransaction { tx: Arc::new(tx), sigs: r.sigs })
    }
}

impl SignedTransaction {
    /// A transaction with the given signatures (none verified yet).
    pub fn new(tx: WireTransaction, sigs: Vec<TransactionSignature>) -> Self {
        SignedTransaction { tx: Arc::new(tx), sigs }
    }

    /// Decodes a signed transaction, applying `limits` to the transaction inside it.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<SignedTransaction, TransactionError> {
        // The envelope may be larger than the transaction by its signatures.
        let envelope_limit = limits.max_transaction_bytes.saturating_add(1024 * 1024);
        let r: SignedRepr = encoding::decode_bounded(bytes, envelope_limit).map_err(TransactionError::Decode)?;
        let tx = WireTransaction::from_bytes(&r.tx_bits, limits)?;
        Ok(SignedTransaction { tx: Arc::new(tx), sigs: r.sigs })
    }

    /// The canonical encoding of this signed transaction.
    pub fn to_bytes(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// The transaction id.
    pub fn id(&self) -> SecureHash {
        self.tx.id()
    }

    /// The transaction.
    pub fn tx(&self) -> &WireTransaction {
        &self.tx
    }

    /// The signatures.
    pub fn sigs(&self) -> &[TransactionSignature] {
        &self.sigs
    }

    /// This transaction with one more signature.
    pub fn with_signature(mut self, sig: TransactionSignature) -> Self {
        self.sigs.push(sig);
        self
    }

    /// This transaction with more signatures.
    pub fn with_signatures(mut self, sigs: impl IntoIterator<Item = TransactionSignature>) -> Self {
        self.sigs.extend(sigs);
        self
    }

    /// Verifies every signature present against the id. Fails on the first invalid one (the
    /// lowest index, whatever order the parallel checks finish in). Only a transaction with
    /// [`PARALLEL_SIGNATURES`] or more is checked in parallel.
    pub fn verify_signatures_present(&self) -> Result<(), TransactionError> {
        let id = self.id();
        let check = |s: &TransactionSignature| s.verify(&id).map_err(|error| TransactionError::InvalidSignature { tx_id: id, error });
        #[cfg(feature = "parallel")]
        {
            use rayon::prelude::*;
            if self.sigs.len() >= PARALLEL_SIGNATURES {
                let results: Vec<Result<(), TransactionError>> = self.sigs.par_iter().map(check).collect();
                return results.into_iter().collect();
            }
        }
        self.sigs.iter().try_for_each(check)
    }

    /// The required keys not fulfilled by the signatures present, ignoring `allowed_missing`.
    /// Does not check the signatures themselves: see [`Self::verify_signatures_present`].
    pub fn missing_keys<'a>(&self, required: impl IntoIterator<Item = &'a PublicKey>, allowed_missing: &[PublicKey]) -> Vec<PublicKey> {
        let signed: std::collections::BTreeSet<&PublicKey> = self.sigs.iter().map(|s| &s.by).collect();
        let by = |k: &PublicKey| signed.contains(k);
        let mut missing: Vec<PublicKey> =
            required.into_iter().filter(|k| !allowed_missing.contains(k) && !k.is_fulfilled_by(&by)).cloned().collect();
        missing.sort();
        missing.dedup();
        missing
    }

    /// Checks that every signature present is valid and every key in `required` is fulfilled,
    /// except those in `allowed_missing`.
    pub fn verify_required_signatures<'a>(
        &self,
        required: impl IntoIterator<Item = &'a PublicKey>,
        allowed_missing: &[PublicKey],
    ) -> Result<(), TransactionError> {
        self.verify_signatures_present()?;
        let missing = self.missing_keys(required, allowed_missing);
        if missing.is_empty() { Ok(()) } else { Err(TransactionError::SignaturesMissing { tx_id: self.id(), missing }) }
    }

    /// For a normal transaction: checks the command signers' and notary's signatures, except
    /// `allowed_missing`. (Other kinds need their inputs resolved: use [`super::verify_transaction`].)
    pub fn verify_signatures_except(&self, allowed_missing: &[PublicKey]) -> Result<(), TransactionError> {
        let required = self.tx.command_and_notary_keys();
        self.verify_required_signatures(&required, allowed_missing)
    }
}
