//! Signed data: network parameters, node infos and revocation lists travel as the canonical
//! bytes of a value plus a signature over them, checked against the key the reader trusts.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use treaty_core::{KeyPair, PublicKey, encoding};

/// Why signed data was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedError {
    /// Signed by a key other than the trusted one.
    #[error("signed by {found}, but only {expected} is trusted for this")]
    WrongSigner {
        /// Trusted key.
        expected: String,
        /// Actual signer.
        found: String,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The content does not decode.
    #[error("content does not decode: {0}")]
    Decode(String),
}

/// A value's canonical bytes and a signature over them by `by`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// What kind of value (domain separation: a signature over one kind is useless for another).
    pub kind: String,
    /// The canonical (BCS) bytes of the value.
    pub raw: Vec<u8>,
    /// The signer.
    pub by: PublicKey,
    /// The signature over `"TREATY/SIGNED/v1\0" ‖ kind ‖ 0 ‖ raw`.
    pub signature: Vec<u8>,
}

fn message(kind: &str, raw: &[u8]) -> Vec<u8> {
    [b"TREATY/SIGNED/v1\0".as_slice(), kind.as_bytes(), &[0], raw].concat()
}

impl Signed {
    /// Signs `value` as a `kind`.
    pub fn sign<T: Serialize>(kind: &str, value: &T, key: &KeyPair) -> Signed {
        let raw = encoding::encode(value);
        let signature = key.sign(&message(kind, &raw));
        Signed { kind: kind.to_string(), raw, by: key.public(), signature }
    }

    /// Checks the signature and the signer against `trusted`, then decodes a `kind`.
    pub fn verify<T: DeserializeOwned>(&self, kind: &str, trusted: &PublicKey) -> Result<T, SignedError> {
        if &self.by != trusted {
            return Err(SignedError::WrongSigner { expected: trusted.short(), found: self.by.short() });
        }
        if self.kind != kind {
            return Err(SignedError::Decode(format!("expected a {kind}, got a {}", self.kind)));
        }
        self.by.verify(&message(&self.kind, &self.raw), &self.signature).map_err(|_| SignedError::BadSignature)?;
        encoding::decode(&self.raw).map_err(|e| SignedError::Decode(e.to_string()))
    }
}
