//! Merkle trees over transaction components, and partial trees that prove some leaves.
//!
//! Hashes are domain-separated: a leaf is `H(0x00 ‖ nonce ‖ bytes)`, an inner node
//! `H(0x01 ‖ left ‖ right)`, a batch leaf `H(0x02 ‖ transaction id)`. The leaf layer is padded
//! with [`SecureHash::ZERO`] to a power of two (no duplication, so no CVE-2012-2459-style
//! ambiguity); the root of an empty tree is `ZERO`.
//!
//! A [`PartialMerkleTree`] proves the revealed leaves at known indices: it carries, in
//! left-to-right order, the hash of every maximal subtree that holds no revealed leaf (subtrees
//! made only of padding are recomputed, not sent).

use serde::{Deserialize, Serialize};

use crate::hash::SecureHash;

/// The most leaves one tree may have (2^20).
pub const MAX_LEAVES: u32 = 1 << 20;

const LEAF: u8 = 0x00;
const NODE: u8 = 0x01;
const BATCH_LEAF: u8 = 0x02;

/// The hash of a component leaf: its nonce blinds it so torn-off components cannot be guessed.
pub fn leaf_hash(nonce: &SecureHash, data: &[u8]) -> SecureHash {
    SecureHash::sha256_parts(&[&[LEAF], nonce.as_bytes(), data])
}

/// The hash of an inner node.
pub fn node_hash(left: &SecureHash, right: &SecureHash) -> SecureHash {
    SecureHash::sha256_parts(&[&[NODE], left.as_bytes(), right.as_bytes()])
}

/// The root of a tree over `leaves` (padded with `ZERO` to a power of two; `ZERO` when empty).
pub fn merkle_root(leaves: &[SecureHash]) -> SecureHash {
    if leaves.is_empty() {
        return SecureHash::ZERO;
    }
    let mut layer: Vec<SecureHash> = leaves.to_vec();
    layer.resize(leaves.len().next_power_of_two(), SecureHash::ZERO);
    while layer.len() > 1 {
        layer = layer.chunks_exact(2).map(|p| node_hash(&p[0], &p[1])).collect();
    }
    layer[0]
}

/// The hash of a subtree of `2^height` padding leaves.
fn padding_hash(height: u32) -> SecureHash {
    let mut h = SecureHash::ZERO;
    for _ in 0..height {
        h = node_hash(&h, &h);
    }
    h
}

/// A proof that some leaves, at the indices in `revealed`, belong to a tree of `leaf_count` leaves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartialMerkleTree {
    /// The number of real (unpadded) leaves in the whole tree.
    pub leaf_count: u32,
    /// The indices of the revealed leaves, strictly ascending.
    pub revealed: Vec<u32>,
    /// Hashes of the maximal subtrees with no revealed leaf, left to right.
    pub hashes: Vec<SecureHash>,
}

impl PartialMerkleTree {
    /// Builds the proof for `reveal` (indices into `leaves`; duplicates and order don't matter).
    /// Returns `None` if an index is out of range.
    pub fn build(leaves: &[SecureHash], reveal: &[u32]) -> Option<PartialMerkleTree> {
        let mut revealed: Vec<u32> = reveal.to_vec();
        revealed.sort_unstable();
        revealed.dedup();
        if revealed.last().is_some_and(|&i| i as usize >= leaves.len()) || leaves.len() > MAX_LEAVES as usize {
            return None;
        }
        let size = leaves.len().next_power_of_two().max(1);
        let mut hashes = Vec::new();
        build_rec(leaves, &revealed, 0, size, &mut hashes);
        Some(PartialMerkleTree { leaf_count: leaves.len() as u32, revealed, hashes })
    }

    /// The root implied by the proof and the revealed leaves' hashes (in the order of
    /// `revealed`), or `None` if the proof is malformed (wrong counts, indices out of order or
    /// out of range, unused or missing hashes).
    pub fn root(&self, revealed_leaves: &[SecureHash]) -> Option<SecureHash> {
        if self.leaf_count == 0 || self.leaf_count > MAX_LEAVES || revealed_leaves.len() != self.revealed.len() {
            return None;
        }
        if self.revealed.windows(2).any(|w| w[0] >= w[1]) || self.revealed.last().is_some_and(|&i| i >= self.leaf_count) {
            return None;
        }
        let size = (self.leaf_count as usize).next_power_of_two();
        let mut cursor = Cursor {
            leaf_count: self.leaf_count as usize,
            revealed: &self.revealed,
            leaves: revealed_leaves,
            next_leaf: 0,
            hashes: &self.hashes,
            next_hash: 0,
        };
        let root = cursor.walk(0, size)?;
        (cursor.next_hash == self.hashes.len() && cursor.next_leaf == revealed_leaves.len()).then_some(root)
    }
}

fn build_rec(leaves: &[SecureHash], revealed: &[u32], lo: usize, size: usize, out: &mut Vec<SecureHash>) -> SecureHash {
    let has_revealed = revealed.iter().any(|&i| (lo..lo + size).contains(&(i as usize)));
    let hash = if size == 1 {
        leaves.get(lo).copied().unwrap_or(SecureHash::ZERO)
    } else {
        let half = size / 2;
        // Build children into a scratch list so subtrees without reveals contribute one hash.
        let mut scratch = Vec::new();
        let l = build_rec(leaves, revealed, lo, half, &mut scratch);
        let r = build_rec(leaves, revealed, lo + half, half, &mut scratch);
        if has_revealed {
            out.extend(scratch);
        }
        node_hash(&l, &r)
    };
    if !has_revealed && lo < leaves.len() {
        out.push(hash);
    }
    hash
}

struct Cursor<'a> {
    leaf_count: usize,
    revealed: &'a [u32],
    leaves: &'a [SecureHash],
    next_leaf: usize,
    hashes: &'a [SecureHash],
    next_hash: usize,
}

impl Cursor<'_> {
    fn walk(&mut self, lo: usize, size: usize) -> Option<SecureHash> {
        if lo >= self.leaf_count {
            return Some(padding_hash(size.trailing_zeros()));
        }
        let has_revealed = self.revealed.get(self.next_leaf).is_some_and(|&i| (i as usize) < lo + size);
        if !has_revealed {
            let h = *self.hashes.get(self.next_hash)?;
            self.next_hash += 1;
            return Some(h);
        }
        if size == 1 {
            let h = *self.leaves.get(self.next_leaf)?;
            self.next_leaf += 1;
            return Some(h);
        }
        let half = size / 2;
        let l = self.walk(lo, half)?;
        let r = self.walk(lo + half, half)?;
        Some(node_hash(&l, &r))
    }
}

/// The hash of one transaction id as a leaf of a notary's signing batch.
pub fn batch_leaf(tx_id: &SecureHash) -> SecureHash {
    SecureHash::sha256_parts(&[&[BATCH_LEAF], tx_id.as_bytes()])
}

/// The root a notary signs for a batch of transaction ids, and each id's inclusion proof.
///
/// The tree is hashed once and each proof read off it (its path's siblings), so a batch of
/// `n` costs `O(n log n)`, not the `O(n²)` of building `n` single-leaf proofs one by one; the
/// proofs are exactly the ones [`PartialMerkleTree::build`] makes.
pub fn batch_root(tx_ids: &[SecureHash]) -> (SecureHash, Vec<PartialMerkleTree>) {
    if tx_ids.is_empty() {
        return (SecureHash::ZERO, Vec::new());
    }
    let n = tx_ids.len();
    // layers[0] are the (padded) leaves, the last layer is the root.
    let mut layers: Vec<Vec<SecureHash>> = vec![tx_ids.iter().map(batch_leaf).collect()];
    layers[0].resize(n.next_power_of_two(), SecureHash::ZERO);
    while layers[layers.len() - 1].len() > 1 {
        let next = layers[layers.len() - 1].chunks_exact(2).map(|p| node_hash(&p[0], &p[1])).collect();
        layers.push(next);
    }
    let root = layers[layers.len() - 1][0];
    let proofs = (0..n)
        .map(|leaf| {
            // The sibling at each height, as (height, index within its layer). Left siblings go
            // first from the top down, then right siblings from the bottom up: left to right.
            let siblings = (0..layers.len() - 1).map(|h| (h, (leaf >> h) ^ 1));
            let (left, right): (Vec<_>, Vec<_>) = siblings.partition(|&(h, i)| i < (leaf >> h));
            let hashes = left
                .into_iter()
                .rev()
                .chain(right)
                // A subtree made only of padding is recomputed by the verifier, not sent.
                .filter(|&(h, i)| (i << h) < n)
                .map(|(h, i)| layers[h][i])
                .collect();
            PartialMerkleTree { leaf_count: n as u32, revealed: vec![leaf as u32], hashes }
        })
        .collect();
    (root, proofs)
}

/// The batch root implied by `proof` for `tx_id`, if the proof reveals exactly one leaf.
pub fn batch_root_from_proof(proof: &PartialMerkleTree, tx_id: &SecureHash) -> Option<SecureHash> {
    if proof.revealed.len() != 1 {
        return None;
    }
    proof.root(&[batch_leaf(tx_id)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<SecureHash> {
        (0..n).map(|i| SecureHash::sha256(&i.to_le_bytes())).collect()
    }

    #[test]
    fn root_shapes() {
        assert_eq!(merkle_root(&[]), SecureHash::ZERO);
        let l = leaves(3);
        assert_eq!(merkle_root(&l[..1]), l[0]);
        assert_eq!(merkle_root(&l), node_hash(&node_hash(&l[0], &l[1]), &node_hash(&l[2], &SecureHash::ZERO)));
    }

    #[test]
    fn proofs_reject_tampering() {
        let l = leaves(5);
        let root = merkle_root(&l);
        let p = PartialMerkleTree::build(&l, &[1, 3]).unwrap();
        assert_eq!(p.root(&[l[1], l[3]]), Some(root));
        assert_ne!(p.root(&[l[3], l[1]]), Some(root));
        let mut extra = p.clone();
        extra.hashes.push(SecureHash::ZERO);
        assert_eq!(extra.root(&[l[1], l[3]]), None, "unused hashes are refused");
        let mut moved = p.clone();
        moved.revealed = vec![1, 2];
        assert_ne!(moved.root(&[l[1], l[3]]), Some(root));
        assert!(PartialMerkleTree::build(&l, &[5]).is_none());
    }

    #[test]
    fn batch_proofs_are_the_single_leaf_proofs() {
        for n in [1usize, 2, 3, 4, 5, 7, 8, 9, 31, 33, 100] {
            let ids = leaves(n);
            let batch: Vec<SecureHash> = ids.iter().map(batch_leaf).collect();
            let (root, proofs) = batch_root(&ids);
            assert_eq!(root, merkle_root(&batch), "{n} ids");
            for (i, proof) in proofs.iter().enumerate() {
                assert_eq!(Some(proof), PartialMerkleTree::build(&batch, &[i as u32]).as_ref(), "leaf {i} of {n}");
            }
        }
        assert_eq!(batch_root(&[]), (SecureHash::ZERO, vec![]));
    }

    #[test]
    fn batch_proofs_verify_each_member() {
        let ids = leaves(7);
        let (root, proofs) = batch_root(&ids);
        for (id, proof) in ids.iter().zip(&proofs) {
            assert_eq!(batch_root_from_proof(proof, id), Some(root));
        }
        assert_ne!(batch_root_from_proof(&proofs[0], &ids[1]), Some(root));
    }

    proptest! {
        #[test]
        fn any_subset_proves_and_any_flip_fails(n in 1usize..40, mask in any::<u64>(), flip in any::<usize>()) {
            let l = leaves(n);
            let root = merkle_root(&l);
            let reveal: Vec<u32> = (0..n as u32).filter(|i| mask & (1 << (i % 64)) != 0).collect();
            let p = PartialMerkleTree::build(&l, &reveal).unwrap();
            let revealed: Vec<SecureHash> = p.revealed.iter().map(|&i| l[i as usize]).collect();
            prop_assert_eq!(p.root(&revealed), Some(root));
            if !p.hashes.is_empty() {
                let mut bad = p.clone();
                let i = flip % bad.hashes.len();
                bad.hashes[i].0[flip % 32] ^= 1;
                prop_assert_ne!(bad.root(&revealed), Some(root));
            }
        }
    }
}
