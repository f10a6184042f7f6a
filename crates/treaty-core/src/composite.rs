//! Composite keys: weighted threshold trees whose leaves are ordinary keys (white paper
//! "Composite keys").
//!
//! A composite key is fulfilled when the weights of its fulfilled children reach its threshold;
//! a child is itself a leaf key (fulfilled by its signature) or a composite key. Trees are kept
//! in canonical form — children sorted by their encoding, no duplicates, no single-child nodes —
//! so equal policies encode, hash and compare equally. Invalid trees are refused when built and
//! when decoded.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::crypto::PublicKey;
use crate::encoding;

/// The deepest nesting of composite keys accepted (a leaf is depth 0).
pub const MAX_COMPOSITE_DEPTH: usize = 8;
/// The most nodes (composite and leaf) one composite key may hold.
pub const MAX_COMPOSITE_NODES: usize = 1024;

/// A child of a composite key and the weight it contributes when fulfilled.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WeightedKey {
    /// The child key.
    pub key: PublicKey,
    /// Its weight, at least 1.
    pub weight: u32,
}

/// Why a composite key is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompositeKeyError {
    /// The threshold is zero, so the key would be fulfilled by nothing.
    #[error("composite key threshold must be at least 1")]
    ZeroThreshold,
    /// The threshold can never be reached.
    #[error("composite key threshold {threshold} exceeds the total weight {total} of its children")]
    ThresholdAboveTotal {
        /// The threshold.
        threshold: u32,
        /// The sum of the children's weights.
        total: u64,
    },
    /// A child with weight zero.
    #[error("child {index} of a composite key has weight 0")]
    ZeroWeight {
        /// Position of the child.
        index: usize,
    },
    /// The same key appears twice among one node's children.
    #[error("composite key lists child {key} twice")]
    DuplicateChild {
        /// The repeated key, abbreviated.
        key: String,
    },
    /// Fewer than two children (a single-child node is just its child).
    #[error("a composite key needs at least two children, got {0}")]
    TooFewChildren(usize),
    /// The tree is nested too deeply.
    #[error("composite key nesting depth {0} exceeds the limit of {MAX_COMPOSITE_DEPTH}")]
    TooDeep(usize),
    /// The tree has too many nodes.
    #[error("composite key has {0} nodes, more than the limit of {MAX_COMPOSITE_NODES}")]
    TooLarge(usize),
    /// Children are not in canonical order (only raised when decoding).
    #[error("composite key children are not in canonical (sorted) order")]
    NotCanonical,
}

/// A weighted threshold tree of keys.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "CompositeKeyRepr")]
pub struct CompositeKey {
    threshold: u32,
    children: Vec<WeightedKey>,
}

#[derive(Deserialize)]
struct CompositeKeyRepr {
    threshold: u32,
    children: Vec<WeightedKey>,
}

impl TryFrom<CompositeKeyRepr> for CompositeKey {
    type Error = CompositeKeyError;
    fn try_from(r: CompositeKeyRepr) -> Result<Self, Self::Error> {
        let encoded: Vec<Vec<u8>> = r.children.iter().map(encoding::encode).collect();
        validate(r.threshold, &r.children)?;
        if encoded.windows(2).any(|w| w[0] >= w[1]) {
            return Err(CompositeKeyError::NotCanonical);
        }
        Ok(CompositeKey { threshold: r.threshold, children: r.children })
    }
}

fn validate(threshold: u32, children: &[WeightedKey]) -> Result<(), CompositeKeyError> {
    if children.len() < 2 {
        return Err(CompositeKeyError::TooFewChildren(children.len()));
    }
    if threshold == 0 {
        return Err(CompositeKeyError::ZeroThreshold);
    }
    if let Some(index) = children.iter().position(|c| c.weight == 0) {
        return Err(CompositeKeyError::ZeroWeight { index });
    }
    for (i, a) in children.iter().enumerate() {
        if children[i + 1..].iter().any(|b| b.key == a.key) {
            return Err(CompositeKeyError::DuplicateChild { key: a.key.short() });
        }
    }
    let total: u64 = children.iter().map(|c| u64::from(c.weight)).sum();
    if u64::from(threshold) > total {
        return Err(CompositeKeyError::ThresholdAboveTotal { threshold, total });
    }
    let depth = 1 + children.iter().map(|c| key_depth(&c.key)).max().unwrap_or(0);
    if depth > MAX_COMPOSITE_DEPTH {
        return Err(CompositeKeyError::TooDeep(depth));
    }
    let nodes = 1 + children.iter().map(|c| key_nodes(&c.key)).sum::<usize>();
    if nodes > MAX_COMPOSITE_NODES {
        return Err(CompositeKeyError::TooLarge(nodes));
    }
    Ok(())
}

fn key_depth(k: &PublicKey) -> usize {
    match k {
        PublicKey::Composite(c) => 1 + c.children.iter().map(|ch| key_depth(&ch.key)).max().unwrap_or(0),
        _ => 0,
    }
}

fn key_nodes(k: &PublicKey) -> usize {
    match k {
        PublicKey::Composite(c) => 1 + c.children.iter().map(|ch| key_nodes(&ch.key)).sum::<usize>(),
        _ => 1,
    }
}

impl CompositeKey {
    /// Builds a composite key in canonical form: children are sorted by encoding. Returns the
    /// child itself when there is exactly one child whose weight meets the threshold (the
    /// canonical form of that policy), and an error for anything invalid.
    pub fn build(threshold: u32, children: Vec<WeightedKey>) -> Result<PublicKey, CompositeKeyError> {
        if children.len() == 1 && threshold >= 1 && children[0].weight >= threshold {
            return children.into_iter().next().map(|c| c.key).ok_or(CompositeKeyError::TooFewChildren(0));
        }
        let mut keyed: Vec<(Vec<u8>, WeightedKey)> = children.into_iter().map(|c| (encoding::encode(&c), c)).collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let children: Vec<WeightedKey> = keyed.into_iter().map(|(_, c)| c).collect();
        validate(threshold, &children)?;
        Ok(PublicKey::Composite(CompositeKey { threshold, children }))
    }

    /// An n-of-n key over `keys` (all must sign).
    pub fn all_of(keys: Vec<PublicKey>) -> Result<PublicKey, CompositeKeyError> {
        let n = u32::try_from(keys.len()).map_err(|_| CompositeKeyError::TooLarge(keys.len()))?;
        Self::build(n, keys.into_iter().map(|key| WeightedKey { key, weight: 1 }).collect())
    }

    /// A 1-of-n key over `keys` (any one may sign).
    pub fn any_of(keys: Vec<PublicKey>) -> Result<PublicKey, CompositeKeyError> {
        Self::build(1, keys.into_iter().map(|key| WeightedKey { key, weight: 1 }).collect())
    }

    /// The threshold weight.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// The children, in canonical order.
    pub fn children(&self) -> &[WeightedKey] {
        &self.children
    }

    /// Whether the keys for which `signed` is true fulfil this tree.
    pub fn is_fulfilled_by(&self, signed: &dyn Fn(&PublicKey) -> bool) -> bool {
        let mut sum: u64 = 0;
        for c in &self.children {
            if c.key.is_fulfilled_by(signed) {
                sum += u64::from(c.weight);
                if sum >= u64::from(self.threshold) {
                    return true;
                }
            }
        }
        false
    }
}

impl fmt::Debug for CompositeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "composite({}: ", self.threshold)?;
        for (i, c) in self.children.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{:?}*{}", c.key, c.weight)?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyPair, SignatureScheme};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn leaf(n: u8) -> PublicKey {
        KeyPair::from_seed(SignatureScheme::Ed25519, [n; 32]).unwrap().public()
    }

    fn wk(key: PublicKey, weight: u32) -> WeightedKey {
        WeightedKey { key, weight }
    }

    fn fulfilled(k: &PublicKey, signed: &[PublicKey]) -> bool {
        let set: BTreeSet<&PublicKey> = signed.iter().collect();
        k.is_fulfilled_by(&|x| set.contains(x))
    }

    #[test]
    fn two_of_three_and_nesting() {
        let (a, b, c, d) = (leaf(1), leaf(2), leaf(3), leaf(4));
        let two_of_three = CompositeKey::build(2, vec![wk(a.clone(), 1), wk(b.clone(), 1), wk(c.clone(), 1)]).unwrap();
        assert!(!fulfilled(&two_of_three, std::slice::from_ref(&a)));
        assert!(fulfilled(&two_of_three, &[a.clone(), c.clone()]));
        // CFO (weight 2) alone, or two of the subordinates' 2-of-3 plus... : (cfo:2, board:1, d:1) threshold 2
        let nested = CompositeKey::build(2, vec![wk(d.clone(), 2), wk(two_of_three.clone(), 1), wk(leaf(5), 1)]).unwrap();
        assert!(fulfilled(&nested, std::slice::from_ref(&d)));
        assert!(!fulfilled(&nested, &[a.clone(), b.clone()]));
        assert!(fulfilled(&nested, &[a, b, leaf(5)]));
        assert_eq!(nested.leaf_keys().len(), 5);
    }

    #[test]
    fn equal_trees_encode_equally_whatever_the_order() {
        let k1 = CompositeKey::build(2, vec![wk(leaf(1), 1), wk(leaf(2), 1), wk(leaf(3), 1)]).unwrap();
        let k2 = CompositeKey::build(2, vec![wk(leaf(3), 1), wk(leaf(1), 1), wk(leaf(2), 1)]).unwrap();
        assert_eq!(encoding::encode(&k1), encoding::encode(&k2));
        assert_eq!(k1, k2);
    }

    #[test]
    fn invalid_trees_are_refused_with_the_reason() {
        let (a, b) = (leaf(1), leaf(2));
        assert_eq!(CompositeKey::build(0, vec![wk(a.clone(), 1), wk(b.clone(), 1)]), Err(CompositeKeyError::ZeroThreshold));
        assert_eq!(
            CompositeKey::build(3, vec![wk(a.clone(), 1), wk(b.clone(), 1)]),
            Err(CompositeKeyError::ThresholdAboveTotal { threshold: 3, total: 2 })
        );
        assert!(matches!(CompositeKey::build(1, vec![wk(a.clone(), 0), wk(b.clone(), 1)]), Err(CompositeKeyError::ZeroWeight { .. })));
        assert!(matches!(CompositeKey::build(1, vec![wk(a.clone(), 1), wk(a.clone(), 2)]), Err(CompositeKeyError::DuplicateChild { .. })));
        assert_eq!(CompositeKey::build(1, vec![]), Err(CompositeKeyError::TooFewChildren(0)));
        // A single child meeting the threshold is that child.
        assert_eq!(CompositeKey::build(1, vec![wk(a.clone(), 1)]).unwrap(), a);
        // Too deep: nest 2-of-2 nine times.
        let mut k = a.clone();
        let mut err = None;
        for i in 0..(MAX_COMPOSITE_DEPTH + 1) {
            match CompositeKey::build(2, vec![wk(k.clone(), 1), wk(leaf(10 + i as u8), 1)]) {
                Ok(next) => k = next,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert_eq!(err, Some(CompositeKeyError::TooDeep(MAX_COMPOSITE_DEPTH + 1)));
    }

    #[test]
    fn non_canonical_encodings_are_refused_on_decode() {
        let k = CompositeKey::build(1, vec![wk(leaf(1), 1), wk(leaf(2), 1)]).unwrap();
        let PublicKey::Composite(c) = &k else { panic!() };
        let mut swapped = c.children.clone();
        swapped.reverse();
        let bytes = encoding::encode(&(2u8, c.threshold, swapped));
        let err = encoding::decode::<PublicKey>(&bytes).unwrap_err();
        assert!(err.to_string().contains("canonical"), "{err}");
        assert_eq!(encoding::decode::<PublicKey>(&encoding::encode(&k)).unwrap(), k);
    }

    #[test]
    fn too_many_nodes_is_refused() {
        let keys: Vec<PublicKey> = (0..MAX_COMPOSITE_NODES as u32)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..4].copy_from_slice(&i.to_le_bytes());
                KeyPair::from_seed(SignatureScheme::Ed25519, seed).unwrap().public()
            })
            .collect();
        assert_eq!(CompositeKey::any_of(keys), Err(CompositeKeyError::TooLarge(MAX_COMPOSITE_NODES + 1)));
    }

    proptest! {
        /// Fulfilment matches a brute-force sum over the weights of the signing leaves.
        #[test]
        fn fulfilment_matches_brute_force(
            weights in proptest::collection::vec(1u32..5, 2..7),
            threshold_frac in 0.0f64..1.0,
            signed_mask in any::<u8>(),
        ) {
            let total: u32 = weights.iter().sum();
            let threshold = 1 + ((f64::from(total - 1)) * threshold_frac) as u32;
            let leaves: Vec<PublicKey> = (0..weights.len()).map(|i| leaf(i as u8 + 1)).collect();
            let key = CompositeKey::build(threshold, leaves.iter().cloned().zip(weights.iter()).map(|(k, w)| wk(k, *w)).collect()).unwrap();
            let signed: Vec<PublicKey> = leaves.iter().enumerate().filter(|(i, _)| signed_mask & (1 << i) != 0).map(|(_, k)| k.clone()).collect();
            let brute: u32 = leaves.iter().zip(&weights).filter(|(k, _)| signed.contains(k)).map(|(_, w)| *w).sum();
            prop_assert_eq!(fulfilled(&key, &signed), brute >= threshold);
        }
    }
}
