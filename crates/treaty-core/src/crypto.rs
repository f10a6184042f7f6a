//! Keys and signatures, tagged by scheme so new schemes can be added (algorithmic agility).
//!
//! A [`PublicKey`] is a leaf key of some scheme (Ed25519 or ECDSA over P-256) or a
//! [`CompositeKey`] (a weighted threshold tree of keys). Leaf keys are validated when built or
//! decoded: an Ed25519 key must be a valid curve point of large order, a P-256 key a valid
//! compressed point, so a key that exists is a key that can verify.
//!
//! Ed25519 signatures are checked with `verify_strict` (no malleable or small-order signatures);
//! ECDSA signatures must be in low-S form. What a transaction signature covers is
//! [`SignableData`]: the transaction id (or a batch root) with the signer's metadata, behind a
//! domain-separation tag.

use core::fmt;
use core::str::FromStr;

use ed25519_dalek::Signer as _;
use p256::ecdsa::signature::Verifier as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::composite::CompositeKey;
use crate::encoding::{self, byte_array};
use crate::hash::SecureHash;
use crate::merkle::PartialMerkleTree;

/// The signature schemes Treaty understands. The discriminants are part of the encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SignatureScheme {
    /// Ed25519 (RFC 8032), verified strictly.
    Ed25519,
    /// ECDSA over NIST P-256 with SHA-256, low-S form.
    EcdsaP256Sha256,
}

impl SignatureScheme {
    /// The scheme's name as shown to users and used in key strings.
    pub fn name(self) -> &'static str {
        match self {
            SignatureScheme::Ed25519 => "ed25519",
            SignatureScheme::EcdsaP256Sha256 => "p256",
        }
    }
}

/// Why a key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Bytes that are not a valid key of the scheme.
    #[error("invalid {scheme:?} public key: {reason}")]
    InvalidKey {
        /// The scheme the key claims.
        scheme: SignatureScheme,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A signature that does not verify.
    #[error("signature by {key} does not verify")]
    BadSignature {
        /// The key that supposedly signed.
        key: String,
    },
    /// A signature whose metadata or bytes do not match its key's scheme.
    #[error("signature scheme mismatch: key is {key:?}, signature says {claimed:?}")]
    SchemeMismatch {
        /// The key's scheme.
        key: SignatureScheme,
        /// The scheme in the signature's metadata.
        claimed: SignatureScheme,
    },
    /// Composite keys sign through their leaves; they cannot sign or be a signature's key.
    #[error("a composite key cannot hold a signature; sign with its leaf keys")]
    CompositeSigner,
    /// A batch signature whose Merkle proof does not include the transaction.
    #[error("batch signature proof does not include transaction {0}")]
    BatchProofMismatch(SecureHash),
    /// A key string that does not parse.
    #[error("cannot parse public key {0:?}: expected 'ed25519:<64 hex>' or 'p256:<66 hex>'")]
    Unparseable(String),
}

/// The encodings of the eight Ed25519 points of small order (the 8-torsion subgroup), plus the
/// non-canonical sign-bit variants of the two with x = 0. A key equal to one of these would let
/// anyone forge signatures under lax verification; they are refused by byte comparison, without
/// decompressing anything. (A unit test checks this table against curve25519-dalek.)
const SMALL_ORDER_ED25519: [[u8; 32]; 10] = {
    const fn key(first: [u8; 16], second: [u8; 16]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut i = 0;
        while i < 16 {
            out[i] = first[i];
            out[i + 16] = second[i];
            i += 1;
        }
        out
    }
    const Z: [u8; 16] = [0; 16];
    const FF: [u8; 16] = [0xff; 16];
    [
        // identity (y = 1) and its sign-bit variant
        key([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Z),
        key([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]),
        // order 2 (y = -1) and its sign-bit variant
        key(
            [0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ),
        key([0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], FF),
        // order 4 (y = 0)
        key(Z, Z),
        key(Z, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]),
        // order 8
        key(
            [0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f],
            [0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a],
        ),
        key(
            [0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f],
            [0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0xfa],
        ),
        key(
            [0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0],
            [0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05],
        ),
        key(
            [0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0],
            [0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x85],
        ),
    ]
};

/// Whether the y coordinate (the encoding without its sign bit) is not reduced mod 2^255 - 19.
fn ed25519_y_non_canonical(b: &[u8; 32]) -> bool {
    b[31] & 0x7f == 0x7f && b[1..31].iter().all(|&x| x == 0xff) && b[0] >= 0xed
}

/// An Ed25519 public key.
///
/// Cheap checks run when the key is built or decoded: the encoding must be canonical and must
/// not be a small-order point. Decompressing the point (≈10 µs) is deferred to the first
/// signature check and cached (in the key, and process-wide by its bytes), so
/// decoding transactions full of keys stays fast; a key that is
/// not on the curve can never verify a signature ([`PublicKey::validate`] checks it eagerly).
#[derive(Clone)]
pub struct Ed25519PublicKey {
    bytes: [u8; 32],
    key: std::sync::OnceLock<Option<Box<ed25519_dalek::VerifyingKey>>>,
}

impl Ed25519PublicKey {
    /// Checks `bytes` as an Ed25519 public key encoding (canonical, not small order).
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, CryptoError> {
        if SMALL_ORDER_ED25519.contains(&bytes) {
            return Err(CryptoError::InvalidKey { scheme: SignatureScheme::Ed25519, reason: "small-order point" });
        }
        if ed25519_y_non_canonical(&bytes) {
            return Err(CryptoError::InvalidKey { scheme: SignatureScheme::Ed25519, reason: "non-canonical encoding" });
        }
        Ok(Ed25519PublicKey { bytes, key: std::sync::OnceLock::new() })
    }

    /// The 32 encoded bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    fn point(&self) -> Option<&ed25519_dalek::VerifyingKey> {
        self.key.get_or_init(|| decompressed(&self.bytes).map(Box::new)).as_deref()
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        verified::check(SignatureScheme::Ed25519, &self.bytes, msg, sig, || self.verify_on_curve(msg, sig))
    }

    fn verify_on_curve(&self, msg: &[u8], sig: &[u8]) -> bool {
        #[cfg(test)]
        verified::CHECKS.with(|c| c.set(c.get() + 1));
        let (Some(key), Ok(sig)) = (self.point(), <[u8; 64]>::try_from(sig)) else { return false };
        key.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig)).is_ok()
    }
}

/// Signatures known to be valid: a process-wide, fixed-size cache of `(scheme, key, message,
/// signature)` digests that verified, or that this process made with its own key.
///
/// A transaction's signatures are checked more than once in a node's life — a flow verifies
/// the transaction it has just signed before it asks the notary, and the notary's signature
/// is checked on arrival and again when the transaction is verified — and each check costs
/// ~50 µs of curve arithmetic. A hit costs one SHA-256 of the triple. (The same idea as
/// Bitcoin Core's signature cache.)
///
/// Only a triple that verified (or was signed here) is ever entered, keyed by a SHA-256
/// over all of it, so a hit means exactly "this key's check of this signature over these
/// bytes succeeded": a different signature, message or key is another digest. A full slot is
/// overwritten (direct-mapped): forgetting only costs a check.
mod verified {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, OnceLock};

    use super::SignatureScheme;
    use crate::hash::SecureHash;

    #[cfg(test)]
    thread_local! {
        /// Ed25519 checks this thread did on the curve (cache misses).
        pub(super) static CHECKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// Slots (32 bytes each: 256 KiB).
    pub(super) const SLOTS: usize = 8192;

    /// The digest of a verified triple.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub(super) struct Entry([u8; 32]);

    impl Entry {
        pub(super) fn of(scheme: SignatureScheme, key: &[u8], msg: &[u8], sig: &[u8]) -> Entry {
            let tag: &[u8] = match scheme {
                SignatureScheme::Ed25519 => b"TREATY/VERIFIED/ed25519\0",
                SignatureScheme::EcdsaP256Sha256 => b"TREATY/VERIFIED/p256\0",
            };
            let lengths = [(key.len() as u64).to_le_bytes(), (msg.len() as u64).to_le_bytes(), (sig.len() as u64).to_le_bytes()];
            Entry(SecureHash::sha256_parts(&[tag, &lengths[0], &lengths[1], &lengths[2], key, msg, sig]).0)
        }

        fn slot(&self) -> usize {
            let mut first = [0u8; 8];
            first.copy_from_slice(&self.0[..8]);
            (u64::from_le_bytes(first) % SLOTS as u64) as usize
        }
    }

    fn slots() -> &'static Mutex<Vec<[u8; 32]>> {
        static SLOTS_: OnceLock<Mutex<Vec<[u8; 32]>>> = OnceLock::new();
        SLOTS_.get_or_init(|| Mutex::new(vec![[0u8; 32]; SLOTS]))
    }

    pub(super) static ENABLED: AtomicBool = AtomicBool::new(true);

    /// `on_curve`'s verdict on `sig` by `key` over `msg`, or a remembered success.
    pub(super) fn check(scheme: SignatureScheme, key: &[u8], msg: &[u8], sig: &[u8], on_curve: impl FnOnce() -> bool) -> bool {
        let known = Entry::of(scheme, key, msg, sig);
        if contains(&known) {
            return true;
        }
        let ok = on_curve();
        if ok {
            insert(known);
        }
        ok
    }

    pub(super) fn contains(entry: &Entry) -> bool {
        if !ENABLED.load(Ordering::Relaxed) {
            return false;
        }
        // A poisoned lock only means another thread panicked mid-copy of 32 bytes; the worst
        // a torn slot can do is miss.
        slots().lock().unwrap_or_else(|e| e.into_inner())[entry.slot()] == entry.0
    }

    pub(super) fn insert(entry: Entry) {
        if !ENABLED.load(Ordering::Relaxed) {
            return;
        }
        slots().lock().unwrap_or_else(|e| e.into_inner())[entry.slot()] = entry.0;
    }
}

/// Checks many signatures, each `(key, message, signature)`, and gives one verdict per item.
///
/// The Ed25519 ones are checked together, as one batch equation with weights derived from all
/// of them (`ed25519_dalek::verify_batch`): about twice as fast per signature as checking
/// each. If the batch fails, each is checked alone with [`PublicKey::verify`] to find which.
/// A signature forged without its key fails the batch (but for a negligible chance), so the
/// verdicts are those of [`PublicKey::verify`] — except that a batch can accept a signature
/// whose key holder built it with small-order components on purpose, which a check on its
/// own refuses. Use it where a signature only authenticates its signer to the checker (a
/// notary's request signatures), never for signatures others must agree on (transactions).
#[cfg(feature = "parallel")]
pub fn verify_many(items: &[(&PublicKey, &[u8], &[u8])]) -> Vec<bool> {
    let mut verdicts = vec![false; items.len()];
    let (mut at, mut keys, mut messages, mut signatures) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, (key, msg, sig)) in items.iter().enumerate() {
        match key {
            PublicKey::Ed25519(k) => {
                // A key off the curve or a signature of the wrong length never verifies.
                if let (Some(point), Ok(sig)) = (k.point(), <[u8; 64]>::try_from(*sig)) {
                    at.push(i);
                    keys.push(*point);
                    messages.push(*msg);
                    signatures.push(ed25519_dalek::Signature::from_bytes(&sig));
                }
            }
            other => verdicts[i] = other.verify(msg, sig).is_ok(),
        }
    }
    let batch_ok = at.len() > 1 && ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok();
    for (j, i) in at.into_iter().enumerate() {
        verdicts[i] = batch_ok || keys[j].verify_strict(messages[j], &signatures[j]).is_ok();
    }
    verdicts
}

/// Turns the process-wide cache of signatures known to verify on or off (on by default). Off,
/// every check is done on the curve: for benchmarks that measure signature checks in a loop.
pub fn set_signature_cache(enabled: bool) {
    verified::ENABLED.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// How many decompressed Ed25519 keys [`decompressed`] keeps (it forgets them all when full).
const DECOMPRESSED_KEYS: usize = 4096;

/// The point of an Ed25519 key encoding (`None` if not on the curve or weak), from a
/// process-wide cache: a back-chain names the same few keys (owners, the notary) in thousands
/// of transactions, each decoded into its own [`Ed25519PublicKey`], and decompressing costs
/// about as much as a third of a signature check. The answer depends only on the bytes.
fn decompressed(bytes: &[u8; 32]) -> Option<ed25519_dalek::VerifyingKey> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Cache = Mutex<HashMap<[u8; 32], Option<ed25519_dalek::VerifyingKey>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    // A poisoned lock only means another thread panicked mid-insert: the map is still valid.
    if let Some(k) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(bytes) {
        return *k;
    }
    let point = ed25519_dalek::VerifyingKey::from_bytes(bytes).ok().filter(|k| !k.is_weak());
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= DECOMPRESSED_KEYS {
        map.clear();
    }
    map.insert(*bytes, point);
    point
}

/// An ECDSA P-256 public key in SEC1 compressed form.
///
/// The form is checked when built or decoded; decompressing the point is deferred to the first
/// signature check and cached (see [`Ed25519PublicKey`] for why).
#[derive(Clone)]
pub struct P256PublicKey {
    bytes: [u8; 33],
    key: std::sync::OnceLock<Option<Box<p256::ecdsa::VerifyingKey>>>,
}

impl P256PublicKey {
    /// Checks `bytes` as a compressed P-256 public key encoding.
    pub fn from_bytes(bytes: [u8; 33]) -> Result<Self, CryptoError> {
        if bytes[0] != 0x02 && bytes[0] != 0x03 {
            return Err(CryptoError::InvalidKey { scheme: SignatureScheme::EcdsaP256Sha256, reason: "not in compressed form" });
        }
        Ok(P256PublicKey { bytes, key: std::sync::OnceLock::new() })
    }

    /// The 33 encoded bytes.
    pub fn as_bytes(&self) -> &[u8; 33] {
        &self.bytes
    }

    fn point(&self) -> Option<&p256::ecdsa::VerifyingKey> {
        self.key.get_or_init(|| p256::ecdsa::VerifyingKey::from_sec1_bytes(&self.bytes).ok().map(Box::new)).as_deref()
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        verified::check(SignatureScheme::EcdsaP256Sha256, &self.bytes, msg, sig, || self.verify_on_curve(msg, sig))
    }

    fn verify_on_curve(&self, msg: &[u8], sig: &[u8]) -> bool {
        let (Some(key), Ok(sig)) = (self.point(), p256::ecdsa::Signature::from_slice(sig)) else { return false };
        // Only the low-S form is accepted, so each signature has one encoding.
        if sig.normalize_s() != sig {
            return false;
        }
        key.verify(msg, &sig).is_ok()
    }
}

macro_rules! key_by_bytes {
    ($t:ty, $n:literal, $scheme:expr) => {
        impl PartialEq for $t {
            fn eq(&self, o: &Self) -> bool {
                self.bytes == o.bytes
            }
        }
        impl Eq for $t {}
        impl PartialOrd for $t {
            fn partial_cmp(&self, o: &Self) -> Option<core::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for $t {
            fn cmp(&self, o: &Self) -> core::cmp::Ordering {
                self.bytes.cmp(&o.bytes)
            }
        }
        impl core::hash::Hash for $t {
            fn hash<H: core::hash::Hasher>(&self, h: &mut H) {
                self.bytes.hash(h)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}:{}", $scheme.name(), hex::encode(self.bytes))
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                byte_array::serialize(&self.bytes, s)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let bytes: [u8; $n] = byte_array::deserialize(d)?;
                <$t>::from_bytes(bytes).map_err(serde::de::Error::custom)
            }
        }
    };
}
key_by_bytes!(Ed25519PublicKey, 32, SignatureScheme::Ed25519);
key_by_bytes!(P256PublicKey, 33, SignatureScheme::EcdsaP256Sha256);

/// A public key: a leaf key of one scheme, or a composite key over other keys.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PublicKey {
    /// An Ed25519 key.
    Ed25519(Ed25519PublicKey),
    /// An ECDSA P-256 key.
    EcdsaP256(P256PublicKey),
    /// A weighted threshold tree of keys.
    Composite(CompositeKey),
}

impl PublicKey {
    /// The leaf key's scheme, or `None` for a composite key.
    pub fn scheme(&self) -> Option<SignatureScheme> {
        match self {
            PublicKey::Ed25519(_) => Some(SignatureScheme::Ed25519),
            PublicKey::EcdsaP256(_) => Some(SignatureScheme::EcdsaP256Sha256),
            PublicKey::Composite(_) => None,
        }
    }

    /// Whether the signatures of `signed` (a set of leaf keys) satisfy this key: a leaf is
    /// satisfied by itself, a composite key when its fulfilled children reach the threshold.
    pub fn is_fulfilled_by(&self, signed: &dyn Fn(&PublicKey) -> bool) -> bool {
        match self {
            PublicKey::Composite(c) => c.is_fulfilled_by(signed),
            leaf => signed(leaf),
        }
    }

    /// Every leaf key in this key (itself, for a leaf).
    pub fn leaf_keys(&self) -> Vec<&PublicKey> {
        let mut out = Vec::new();
        self.collect_leaves(&mut out);
        out
    }

    pub(crate) fn collect_leaves<'a>(&'a self, out: &mut Vec<&'a PublicKey>) {
        match self {
            PublicKey::Composite(c) => c.children().iter().for_each(|ch| ch.key.collect_leaves(out)),
            leaf => out.push(leaf),
        }
    }

    /// Whether `leaf` is this key or one of its leaves.
    pub fn contains_leaf(&self, leaf: &PublicKey) -> bool {
        match self {
            PublicKey::Composite(c) => c.children().iter().any(|ch| ch.key.contains_leaf(leaf)),
            me => me == leaf,
        }
    }

    /// Checks eagerly that every leaf is a valid point on its curve (decoding only checks the
    /// encoding; see [`Ed25519PublicKey`]). Use where a key is registered, not on hot paths.
    pub fn validate(&self) -> Result<(), CryptoError> {
        for leaf in self.leaf_keys() {
            let ok = match leaf {
                PublicKey::Ed25519(k) => k.point().is_some(),
                PublicKey::EcdsaP256(k) => k.point().is_some(),
                PublicKey::Composite(_) => true,
            };
            if !ok {
                let scheme = leaf.scheme().unwrap_or(SignatureScheme::Ed25519);
                return Err(CryptoError::InvalidKey { scheme, reason: "not a point on the curve" });
            }
        }
        Ok(())
    }

    /// [`PublicKey::verify`] on the curve every time, neither asking nor filling the cache of
    /// signatures known to verify: for baselines that measure the arithmetic.
    pub fn verify_uncached(&self, msg: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        self.check(msg, signature, false)
    }

    /// Verifies a raw signature over `msg`. Composite keys never verify a single signature.
    /// A signature this process made or already verified is answered from a cache
    /// ([`set_signature_cache`]).
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        self.check(msg, signature, true)
    }

    fn check(&self, msg: &[u8], signature: &[u8], cached: bool) -> Result<(), CryptoError> {
        let ok = match (self, cached) {
            (PublicKey::Ed25519(k), true) => k.verify(msg, signature),
            (PublicKey::Ed25519(k), false) => k.verify_on_curve(msg, signature),
            (PublicKey::EcdsaP256(k), true) => k.verify(msg, signature),
            (PublicKey::EcdsaP256(k), false) => k.verify_on_curve(msg, signature),
            (PublicKey::Composite(_), _) => return Err(CryptoError::CompositeSigner),
        };
        if ok { Ok(()) } else { Err(CryptoError::BadSignature { key: self.to_string() }) }
    }

    /// A short form for reports: scheme and the first 8 hex digits.
    pub fn short(&self) -> String {
        match self {
            PublicKey::Ed25519(k) => format!("ed25519:{}", hex::encode(&k.bytes[..4])),
            PublicKey::EcdsaP256(k) => format!("p256:{}", hex::encode(&k.bytes[..5])),
            PublicKey::Composite(c) => format!("composite({} of {})", c.threshold(), c.children().len()),
        }
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKey::Ed25519(k) => write!(f, "ed25519:{}", hex::encode(k.bytes)),
            PublicKey::EcdsaP256(k) => write!(f, "p256:{}", hex::encode(k.bytes)),
            PublicKey::Composite(c) => {
                write!(f, "composite:{}", hex::encode(encoding::encode(c)))
            }
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKey::Ed25519(k) => fmt::Debug::fmt(k, f),
            PublicKey::EcdsaP256(k) => fmt::Debug::fmt(k, f),
            PublicKey::Composite(c) => fmt::Debug::fmt(c, f),
        }
    }
}

impl FromStr for PublicKey {
    type Err = CryptoError;
    /// Parses the [`fmt::Display`] form: `ed25519:<hex>`, `p256:<hex>` or `composite:<hex>`.
    fn from_str(s: &str) -> Result<Self, CryptoError> {
        let bad = || CryptoError::Unparseable(s.chars().take(80).collect());
        let (scheme, hexpart) = s.split_once(':').ok_or_else(bad)?;
        let bytes = hex::decode(hexpart).map_err(|_| bad())?;
        match scheme {
            "ed25519" => Ok(PublicKey::Ed25519(Ed25519PublicKey::from_bytes(bytes.try_into().map_err(|_| bad())?)?)),
            "p256" => Ok(PublicKey::EcdsaP256(P256PublicKey::from_bytes(bytes.try_into().map_err(|_| bad())?)?)),
            "composite" => Ok(PublicKey::Composite(encoding::decode(&bytes).map_err(|_| bad())?)),
            _ => Err(bad()),
        }
    }
}

/// A private key able to sign. Built from seed bytes the caller supplies, so this crate never
/// touches a random source.
pub enum KeyPair {
    /// An Ed25519 signing key.
    Ed25519(ed25519_dalek::SigningKey),
    /// An ECDSA P-256 signing key.
    EcdsaP256(p256::ecdsa::SigningKey),
}

impl KeyPair {
    /// Derives a key of `scheme` from 32 seed bytes (for P-256 the seed is the scalar, and must
    /// be non-zero and below the group order; fresh random bytes are, with overwhelming odds).
    pub fn from_seed(scheme: SignatureScheme, seed: [u8; 32]) -> Result<KeyPair, CryptoError> {
        match scheme {
            SignatureScheme::Ed25519 => Ok(KeyPair::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))),
            SignatureScheme::EcdsaP256Sha256 => p256::ecdsa::SigningKey::from_slice(&seed)
                .map(KeyPair::EcdsaP256)
                .map_err(|_| CryptoError::InvalidKey { scheme, reason: "seed is not a valid P-256 scalar" }),
        }
    }

    /// The scheme of this key.
    pub fn scheme(&self) -> SignatureScheme {
        match self {
            KeyPair::Ed25519(_) => SignatureScheme::Ed25519,
            KeyPair::EcdsaP256(_) => SignatureScheme::EcdsaP256Sha256,
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        match self {
            KeyPair::Ed25519(k) => {
                let bytes = k.verifying_key().to_bytes();
                PublicKey::Ed25519(Ed25519PublicKey { bytes, key: std::sync::OnceLock::from(Some(Box::new(k.verifying_key()))) })
            }
            KeyPair::EcdsaP256(k) => {
                let vk = *k.verifying_key();
                let point = vk.to_sec1_point(true);
                let mut bytes = [0u8; 33];
                bytes.copy_from_slice(point.as_bytes());
                PublicKey::EcdsaP256(P256PublicKey { bytes, key: std::sync::OnceLock::from(Some(Box::new(vk))) })
            }
        }
    }

    /// Signs `msg` (deterministically for both schemes).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            KeyPair::Ed25519(k) => {
                let sig = k.sign(msg).to_bytes();
                // It verifies (Ed25519 signing is deterministic and this key's own): a later
                // check of it here — the flow verifying the transaction it signed — is a hit.
                verified::insert(verified::Entry::of(SignatureScheme::Ed25519, k.verifying_key().as_bytes(), msg, &sig));
                sig.to_vec()
            }
            KeyPair::EcdsaP256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(msg);
                sig.normalize_s().to_bytes().to_vec()
            }
        }
    }

    /// Signs a transaction id, producing a [`TransactionSignature`].
    pub fn sign_transaction(&self, tx_id: &SecureHash, platform_version: u32) -> TransactionSignature {
        let metadata = SignatureMetadata { platform_version, scheme: self.scheme() };
        let bytes = self.sign(&SignableData { root: *tx_id, metadata }.signing_bytes());
        TransactionSignature { by: self.public(), bytes, metadata, batch_proof: None }
    }

    /// Signs the root of a batch of transaction ids (see [`crate::merkle::batch_root`]); each
    /// transaction's signature is this one plus its inclusion proof ([`TransactionSignature::for_batch_member`]).
    pub fn sign_batch_root(&self, root: &SecureHash, platform_version: u32) -> TransactionSignature {
        self.sign_transaction(root, platform_version)
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({:?}, private half hidden)", self.public())
    }
}

/// Facts the signer attaches to a signature, covered by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignatureMetadata {
    /// The platform version of the signing node.
    pub platform_version: u32,
    /// The scheme used; must match the key.
    pub scheme: SignatureScheme,
}

/// What a transaction signature covers: a transaction id, or the Merkle root of a batch of
/// them, together with the metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignableData {
    /// The transaction id, or the root of a batch of ids.
    pub root: SecureHash,
    /// The signer's metadata.
    pub metadata: SignatureMetadata,
}

impl SignableData {
    /// Domain-separation tag in front of every signed transaction payload.
    pub const TAG: &'static [u8] = b"TREATY/TX-SIGNATURE/v1\0";

    /// The exact bytes signed.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::TAG.len() + 40);
        out.extend_from_slice(Self::TAG);
        out.extend_from_slice(&encoding::encode(self));
        out
    }
}

/// A signature over a transaction id, with the key that made it and its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TransactionSignature {
    /// The leaf key that signed.
    pub by: PublicKey,
    /// The scheme-specific signature bytes.
    pub bytes: Vec<u8>,
    /// Platform version and scheme, covered by the signature.
    pub metadata: SignatureMetadata,
    /// For a batch signature (a notary signing many transactions at once): the proof that the
    /// transaction id is a leaf of the signed batch root.
    pub batch_proof: Option<PartialMerkleTree>,
}

impl TransactionSignature {
    /// Gives batch member `tx_id` its own copy of a batch-root signature, with its inclusion proof.
    pub fn for_batch_member(root_signature: &TransactionSignature, proof: PartialMerkleTree) -> TransactionSignature {
        TransactionSignature { batch_proof: Some(proof), ..root_signature.clone() }
    }

    /// Verifies this signature over transaction `tx_id`.
    pub fn verify(&self, tx_id: &SecureHash) -> Result<(), CryptoError> {
        let key_scheme = self.by.scheme().ok_or(CryptoError::CompositeSigner)?;
        if key_scheme != self.metadata.scheme {
            return Err(CryptoError::SchemeMismatch { key: key_scheme, claimed: self.metadata.scheme });
        }
        let root = match &self.batch_proof {
            None => *tx_id,
            Some(proof) => crate::merkle::batch_root_from_proof(proof, tx_id).ok_or(CryptoError::BatchProofMismatch(*tx_id))?,
        };
        self.by.verify(&SignableData { root, metadata: self.metadata }.signing_bytes(), &self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scheme: SignatureScheme, n: u8) -> KeyPair {
        KeyPair::from_seed(scheme, [n; 32]).unwrap()
    }

    #[test]
    fn both_schemes_sign_and_verify_and_reject_tampering() {
        for scheme in [SignatureScheme::Ed25519, SignatureScheme::EcdsaP256Sha256] {
            let k = key(scheme, 7);
            let id = SecureHash::sha256(b"tx");
            let sig = k.sign_transaction(&id, 1);
            sig.verify(&id).unwrap();
            assert!(matches!(sig.verify(&SecureHash::sha256(b"other")), Err(CryptoError::BadSignature { .. })));
            let mut bad = sig.clone();
            bad.bytes[3] ^= 1;
            assert!(bad.verify(&id).is_err());
            let mut wrong_meta = sig.clone();
            wrong_meta.metadata.platform_version = 2;
            assert!(wrong_meta.verify(&id).is_err(), "metadata is covered by the signature");
        }
    }

    #[test]
    fn scheme_mismatch_is_named() {
        let k = key(SignatureScheme::Ed25519, 1);
        let id = SecureHash::sha256(b"tx");
        let mut sig = k.sign_transaction(&id, 1);
        sig.metadata.scheme = SignatureScheme::EcdsaP256Sha256;
        assert_eq!(
            sig.verify(&id),
            Err(CryptoError::SchemeMismatch { key: SignatureScheme::Ed25519, claimed: SignatureScheme::EcdsaP256Sha256 })
        );
    }

    #[test]
    fn small_order_and_off_curve_ed25519_keys_are_refused() {
        // The identity point (small order) and a non-canonical encoding.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(Ed25519PublicKey::from_bytes(identity), Err(CryptoError::InvalidKey { reason: "small-order point", .. })));
        // Off-curve encodings decode (cheaply) but never verify, and validate() names them.
        let off_curve = (0u8..=255).map(|b| [b; 32]).find(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_err()).unwrap();
        let k = PublicKey::Ed25519(Ed25519PublicKey::from_bytes(off_curve).unwrap());
        assert!(matches!(k.validate(), Err(CryptoError::InvalidKey { reason: "not a point on the curve", .. })));
        assert!(k.verify(b"m", &[0u8; 64]).is_err());
        // Non-canonical y (>= p) is refused outright.
        let mut non_canonical = [0xff; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        assert!(matches!(
            Ed25519PublicKey::from_bytes(non_canonical),
            Err(CryptoError::InvalidKey { reason: "non-canonical encoding", .. })
        ));
        // Decoding goes through the same check.
        let enc = encoding::encode(&(0u8, identity));
        assert!(encoding::decode::<PublicKey>(&enc).is_err());
    }

    #[test]
    fn many_signatures_checked_together_get_the_verdicts_of_each_checked_alone() {
        let eds: Vec<KeyPair> = (1..=5).map(|n| key(SignatureScheme::Ed25519, n)).collect();
        let p256 = key(SignatureScheme::EcdsaP256Sha256, 9);
        let messages: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1 + i as usize]).collect();
        let mut keys: Vec<PublicKey> = Vec::new();
        let mut sigs: Vec<Vec<u8>> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let signer = if i % 7 == 3 { &p256 } else { &eds[i % eds.len()] };
            keys.push(signer.public());
            sigs.push(signer.sign(m));
        }
        let check = |keys: &[PublicKey], sigs: &[Vec<u8>]| {
            let items: Vec<(&PublicKey, &[u8], &[u8])> =
                keys.iter().zip(&messages).zip(sigs).map(|((k, m), s)| (k, m.as_slice(), s.as_slice())).collect();
            let alone: Vec<bool> = items.iter().map(|(k, m, s)| k.verify(m, s).is_ok()).collect();
            (verify_many(&items), alone)
        };
        let (together, alone) = check(&keys, &sigs);
        assert!(together.iter().all(|v| *v), "all good");
        assert_eq!(together, alone);
        // A tampered signature, one by the wrong key, a short one and a P-256 one made bad: the
        // batch fails and each is judged alone.
        sigs[4][10] ^= 1;
        sigs[11] = eds[0].sign(b"something else");
        sigs[20].truncate(63);
        sigs[3][20] ^= 1;
        keys[30] = eds[4].public(); // signed by eds[0]
        let (together, alone) = check(&keys, &sigs);
        assert_eq!(together, alone);
        let refused: Vec<usize> = together.iter().enumerate().filter(|(_, v)| !**v).map(|(i, _)| i).collect();
        assert_eq!(refused, vec![3, 4, 11, 20, 30]);
        // One alone, and none.
        assert_eq!(verify_many(&[(&keys[0], &messages[0], &sigs[0])]), vec![true]);
        assert!(verify_many(&[]).is_empty());
    }

    #[test]
    fn the_verified_signature_cache_answers_only_for_the_exact_signature() {
        for scheme in [SignatureScheme::Ed25519, SignatureScheme::EcdsaP256Sha256] {
            let (k, other) = (key(scheme, 41), key(scheme, 42));
            let msg = format!("cache {scheme:?}").into_bytes();
            let sig = k.sign(&msg);
            // Twice: the second answer may come from the cache, and must be the same.
            for _ in 0..2 {
                assert!(k.public().verify(&msg, &sig).is_ok());
                let mut tampered = sig.clone();
                tampered[7] ^= 1;
                assert!(k.public().verify(&msg, &tampered).is_err(), "{scheme:?}: a tampered signature verified");
                assert!(k.public().verify(b"another message", &sig).is_err(), "{scheme:?}: another message verified");
                assert!(other.public().verify(&msg, &sig).is_err(), "{scheme:?}: another key verified");
            }
        }
    }

    #[test]
    fn a_signature_made_or_checked_here_is_not_checked_on_the_curve_again() {
        let checks = || verified::CHECKS.with(|c| c.get());
        let k = key(SignatureScheme::Ed25519, 43);
        // Signed here: its first check is a hit.
        let sig = k.sign(b"signed here");
        let before = checks();
        assert!(k.public().verify(b"signed here", &sig).is_ok());
        assert_eq!(checks(), before, "a signature this process made was checked on the curve");
        // Signed elsewhere (by the same key, but not through this process's cache): checked
        // once, then known.
        let PublicKey::Ed25519(public) = k.public() else { panic!("not Ed25519") };
        let signing = ed25519_dalek::SigningKey::from_bytes(&[43; 32]);
        assert_eq!(signing.verifying_key().as_bytes(), public.as_bytes());
        let foreign = signing.sign(b"signed elsewhere").to_bytes();
        let before = checks();
        assert!(k.public().verify(b"signed elsewhere", &foreign).is_ok());
        assert!(k.public().verify(b"signed elsewhere", &foreign).is_ok());
        assert_eq!(checks(), before + 1);
        // A failure is never remembered: each bad signature is checked.
        let mut bad = foreign;
        bad[0] ^= 1;
        let before = checks();
        assert!(k.public().verify(b"signed elsewhere", &bad).is_err());
        assert!(k.public().verify(b"signed elsewhere", &bad).is_err());
        assert_eq!(checks(), before + 2);
    }

    #[test]
    fn decompressed_keys_are_shared_by_bytes_and_keep_their_verdicts() {
        let pair = KeyPair::from_seed(SignatureScheme::Ed25519, [7; 32]).unwrap();
        let sig = pair.sign(b"m");
        let PublicKey::Ed25519(k) = pair.public() else { panic!("not Ed25519") };
        let off_curve = (0u8..=255).map(|b| [b; 32]).find(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_err()).unwrap();
        // Fresh instances (as decoding makes them), twice each: the second comes from the cache.
        for _ in 0..2 {
            let fresh = PublicKey::Ed25519(Ed25519PublicKey::from_bytes(*k.as_bytes()).unwrap());
            assert!(fresh.verify(b"m", &sig).is_ok());
            assert!(fresh.verify(b"n", &sig).is_err());
            let bad = PublicKey::Ed25519(Ed25519PublicKey::from_bytes(off_curve).unwrap());
            assert!(bad.validate().is_err());
            assert!(bad.verify(b"m", &sig).is_err());
        }
        // Filling the cache past its bound forgets, and answers stay right.
        for i in 0..(DECOMPRESSED_KEYS as u64 + 10) {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&i.to_le_bytes());
            let PublicKey::Ed25519(other) = KeyPair::from_seed(SignatureScheme::Ed25519, seed).unwrap().public() else { panic!() };
            assert!(decompressed(other.as_bytes()).is_some());
        }
        let again = PublicKey::Ed25519(Ed25519PublicKey::from_bytes(*k.as_bytes()).unwrap());
        assert!(again.verify(b"m", &sig).is_ok());
    }

    #[test]
    fn small_order_table_matches_the_eight_torsion_points() {
        // Every small-order point dalek knows is in the table, and everything in the table that
        // decompresses is weak.
        for p in curve25519_dalek::constants::EIGHT_TORSION {
            let enc = p.compress().to_bytes();
            assert!(SMALL_ORDER_ED25519.contains(&enc), "missing {}", hex::encode(enc));
        }
        for enc in SMALL_ORDER_ED25519 {
            if let Ok(k) = ed25519_dalek::VerifyingKey::from_bytes(&enc) {
                assert!(k.is_weak(), "{} is not weak", hex::encode(enc));
            }
        }
    }

    #[test]
    fn p256_high_s_signatures_are_refused() {
        let k = key(SignatureScheme::EcdsaP256Sha256, 9);
        let msg = b"hello";
        let sig = p256::ecdsa::Signature::from_slice(&k.sign(msg)).unwrap();
        k.public().verify(msg, &sig.to_bytes()).unwrap();
        // Flip s to n - s: mathematically valid, but not the canonical low-S form.
        let (r, s) = sig.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        assert!(k.public().verify(msg, &high.to_bytes()).is_err());
    }

    #[test]
    fn key_strings_round_trip() {
        for scheme in [SignatureScheme::Ed25519, SignatureScheme::EcdsaP256Sha256] {
            let pk = key(scheme, 3).public();
            assert_eq!(pk.to_string().parse::<PublicKey>().unwrap(), pk);
            assert_eq!(encoding::decode::<PublicKey>(&encoding::encode(&pk)).unwrap(), pk);
        }
        assert!("rsa:00".parse::<PublicKey>().is_err());
    }
}
