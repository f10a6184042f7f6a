//! Confidential identities (white paper "Confidential identities"): fresh keys that only the
//! parties to a deal can link to a well-known identity.
//!
//! - **Keys** come from one backed-up seed by hierarchical deterministic derivation, SLIP-0010
//!   for Ed25519 ([`derive_ed25519`]), hardened at every level, on the path
//!   `m / 7319' / index'` ([`confidential_key`]). Back up the seed once and every confidential
//!   key can be derived again.
//! - **A certificate** ([`IdentityCertificate`]) links a fresh key to its owner's well-known
//!   name: the owner's well-known identity key signs `(key, name)`, domain-separated.
//! - **Proof of possession**: the fresh key signs a nonce both sides contributed to
//!   ([`possession_bytes`]), so a certificate replayed from another session proves nothing.
//!
//! Pure functions: the seed and the nonces come from the caller.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha512;

use crate::crypto::{CryptoError, KeyPair, PublicKey, SignatureScheme};
use crate::hash::SecureHash;
use crate::identity::X500Name;

/// The first path level of confidential keys (hardened): "TREATY" on a phone keypad's
/// first four letters, so the seed can serve other purposes on other branches.
pub const CONFIDENTIAL_PURPOSE: u32 = 7319;

const HARDENED: u32 = 1 << 31;
const CERTIFICATE_TAG: &[u8] = b"treaty.confidential-identity.v1";
const POSSESSION_TAG: &[u8] = b"treaty.confidential-possession.v1";

fn hmac_sha512(key: &[u8], parts: &[&[u8]]) -> [u8; 64] {
    // HMAC accepts keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for p in parts {
        mac.update(p);
    }
    let mut out = [0u8; 64];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// SLIP-0010 Ed25519 derivation: the private key and chain code at `path` (every index is
/// hardened, as Ed25519 requires; pass indices below 2^31).
pub fn derive_ed25519(seed: &[u8], path: &[u32]) -> Result<([u8; 32], [u8; 32]), CryptoError> {
    if let Some(bad) = path.iter().find(|&&i| i >= HARDENED) {
        return Err(CryptoError::InvalidKey { scheme: SignatureScheme::Ed25519, reason: derivation_error(*bad) });
    }
    let split = |i: [u8; 64]| {
        let (mut k, mut c) = ([0u8; 32], [0u8; 32]);
        k.copy_from_slice(&i[..32]);
        c.copy_from_slice(&i[32..]);
        (k, c)
    };
    let (mut key, mut chain) = split(hmac_sha512(b"ed25519 seed", &[seed]));
    for index in path {
        (key, chain) = split(hmac_sha512(&chain, &[&[0], &key, &(index | HARDENED).to_be_bytes()]));
    }
    Ok((key, chain))
}

fn derivation_error(_index: u32) -> &'static str {
    "path indices must be below 2^31 (every level is hardened)"
}

/// The `index`th confidential key of `seed`: `m / 7319' / index'`.
pub fn confidential_key(seed: &[u8], index: u32) -> Result<KeyPair, CryptoError> {
    let (key, _) = derive_ed25519(seed, &[CONFIDENTIAL_PURPOSE, index])?;
    KeyPair::from_seed(SignatureScheme::Ed25519, key)
}

/// Links a confidential key to the well-known identity that owns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityCertificate {
    /// The confidential key.
    pub key: PublicKey,
    /// Its owner's well-known name.
    pub owner: X500Name,
    /// The owner's well-known identity key's signature over [`IdentityCertificate::signing_bytes`].
    pub signature: Vec<u8>,
}

impl IdentityCertificate {
    /// The bytes the owner's well-known key signs.
    pub fn signing_bytes(key: &PublicKey, owner: &X500Name) -> Vec<u8> {
        let mut b = CERTIFICATE_TAG.to_vec();
        b.extend_from_slice(&crate::encoding::encode(key));
        b.extend_from_slice(owner.to_string().as_bytes());
        b
    }

    /// A certificate for `key`, signed by `owner_key` (the owner's well-known identity key).
    pub fn issue(key: PublicKey, owner: X500Name, owner_key: &KeyPair) -> IdentityCertificate {
        let signature = owner_key.sign(&Self::signing_bytes(&key, &owner));
        IdentityCertificate { key, owner, signature }
    }

    /// Checks the certificate against the owner's well-known key (from the network map).
    pub fn verify(&self, owner_key: &PublicKey) -> Result<(), CryptoError> {
        owner_key.verify(&Self::signing_bytes(&self.key, &self.owner), &self.signature)
    }
}

/// What a confidential key signs to prove its holder has it in this exchange: the tag, both
/// sides' nonces (in a fixed order) and the key.
pub fn possession_bytes(initiator_nonce: &SecureHash, responder_nonce: &SecureHash, key: &PublicKey) -> Vec<u8> {
    let mut b = POSSESSION_TAG.to_vec();
    b.extend_from_slice(initiator_nonce.as_bytes());
    b.extend_from_slice(responder_nonce.as_bytes());
    b.extend_from_slice(&crate::encoding::encode(key));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn slip10_ed25519_test_vector_1() {
        let seed = hex::decode("000102030405060708090a0b0c0d0e0f").unwrap();
        let cases: [(&[u32], &str, &str); 5] = [
            (
                &[],
                "2b4be7f19ee27bbf30c667b642d5f4aa69fd169872f8fc3059c08ebae2eb19e7",
                "90046a93de5380a72b5e45010748567d5ea02bbf6522f979e05c0d8d8ca9fffb",
            ),
            (
                &[0],
                "68e0fe46dfb67e368c75379acec591dad19df3cde26e63b93a8e704f1dade7a3",
                "8b59aa11380b624e81507a27fedda59fea6d0b779a778918a2fd3590e16e9c69",
            ),
            (
                &[0, 1],
                "b1d0bad404bf35da785a64ca1ac54b2617211d2777696fbffaf208f746ae84f2",
                "a320425f77d1b5c2505a6b1b27382b37368ee640e3557c315416801243552f14",
            ),
            (
                &[0, 1, 2],
                "92a5b23c0b8a99e37d07df3fb9966917f5d06e02ddbd909c7e184371463e9fc9",
                "2e69929e00b5ab250f49c3fb1c12f252de4fed2c1db88387094a0f8c4c9ccd6c",
            ),
            (
                &[0, 1, 2, 2],
                "30d1dc7e5fc04c31219ab25a27ae00b50f6fd66622f6e9c913253d6511d1e662",
                "8f6d87f93d750e0efccda017d662a1b31a266e4a6f5993b15f5c1f07f74dd5cc",
            ),
        ];
        for (path, key, chain) in cases {
            assert_eq!(derive_ed25519(&seed, path).unwrap(), (hex32(key), hex32(chain)), "path {path:?}");
        }
        assert!(derive_ed25519(&seed, &[HARDENED]).is_err(), "indices are hardened by the function, not the caller");
    }

    #[test]
    fn confidential_keys_are_distinct_and_reproducible() {
        let seed = [9u8; 32];
        let a = confidential_key(&seed, 0).unwrap().public();
        assert_eq!(a, confidential_key(&seed, 0).unwrap().public(), "the same seed and index give the same key");
        assert_ne!(a, confidential_key(&seed, 1).unwrap().public());
        assert_ne!(a, confidential_key(&[8u8; 32], 0).unwrap().public());
    }

    #[test]
    fn a_certificate_verifies_only_for_its_owner_key_and_content() {
        let owner = KeyPair::from_seed(SignatureScheme::Ed25519, [1; 32]).unwrap();
        let other = KeyPair::from_seed(SignatureScheme::Ed25519, [2; 32]).unwrap();
        let fresh = confidential_key(&[3; 32], 0).unwrap().public();
        let name: X500Name = "O=Alice,L=London,C=GB".parse().unwrap();
        let cert = IdentityCertificate::issue(fresh.clone(), name.clone(), &owner);
        cert.verify(&owner.public()).unwrap();
        assert!(cert.verify(&other.public()).is_err(), "signed by someone else's well-known key");
        let renamed = IdentityCertificate { owner: "O=Mallory,L=London,C=GB".parse().unwrap(), ..cert.clone() };
        assert!(renamed.verify(&owner.public()).is_err(), "claims another owner");
        let rekeyed = IdentityCertificate { key: other.public(), ..cert };
        assert!(rekeyed.verify(&owner.public()).is_err(), "claims another key");
    }
}
