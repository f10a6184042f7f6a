//! SHA-256 hashes: the identity of transactions, attachments and network parameters.
//!
//! A [`SecureHash`] is always SHA-256. Hashes that are part of a protocol are computed over
//! domain-separated input (see [`crate::merkle`]) so a hash from one context can never be
//! replayed in another.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SecureHash(pub [u8; 32]);

impl SecureHash {
    /// The all-zero hash: stands for an empty Merkle group and for padding leaves.
    pub const ZERO: SecureHash = SecureHash([0u8; 32]);

    /// SHA-256 of `data`.
    pub fn sha256(data: &[u8]) -> SecureHash {
        SecureHash(Sha256::digest(data).into())
    }

    /// SHA-256 over the concatenation of `parts`, without allocating.
    pub fn sha256_parts(parts: &[&[u8]]) -> SecureHash {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        SecureHash(h.finalize().into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Upper-case hexadecimal, as shown to users.
    pub fn to_hex(&self) -> String {
        hex::encode_upper(self.0)
    }

    /// The first 8 hex digits, for log lines and reports.
    pub fn short(&self) -> String {
        hex::encode_upper(&self.0[..4])
    }
}

/// Why a string is not a [`SecureHash`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SHA-256 hash: expected 64 hex digits, got {0:?}")]
pub struct ParseHashError(pub String);

impl FromStr for SecureHash {
    type Err = ParseHashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return Err(ParseHashError(s.chars().take(80).collect()));
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseHashError(s.chars().take(80).collect()))?;
        Ok(SecureHash(out))
    }
}

impl fmt::Display for SecureHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SecureHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecureHash({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(SecureHash::sha256(b"abc").to_hex(), "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD");
        assert_eq!(SecureHash::sha256_parts(&[b"a", b"bc"]), SecureHash::sha256(b"abc"));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let h = SecureHash::sha256(b"x");
        assert_eq!(h.to_hex().parse::<SecureHash>().unwrap(), h);
        assert_eq!(h.to_hex().to_lowercase().parse::<SecureHash>().unwrap(), h);
        assert!("abc".parse::<SecureHash>().is_err());
        assert!("zz".repeat(32).parse::<SecureHash>().is_err());
    }
}
