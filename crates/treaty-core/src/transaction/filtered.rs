//! Filtered transactions (tear-offs): reveal chosen components with Merkle proofs.
//!
//! A notary or an oracle signs a transaction id having seen only part of the transaction. A
//! [`FilteredTransaction`] carries the revealed components, each with its nonce (the privacy
//! salt itself stays secret, so hidden components cannot be guessed), a partial Merkle tree per
//! revealed group, and a partial tree over the group roots. [`FilteredTransaction::verify`]
//! checks that everything revealed belongs to the id; [`FilteredTransaction::check_all_visible`]
//! checks that *every* component of a group is revealed — what a non-validating notary needs to
//! be sure no input is hidden from it.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::hash::SecureHash;
use crate::identity::Party;
use crate::merkle::{PartialMerkleTree, leaf_hash};
use crate::state::StateRef;
use crate::time::TimeWindow;

use super::components::{CommandData, ComponentGroup, GROUP_SLOTS};
use super::error::TransactionError;
use super::wire::{WireTransaction, decode_component};

/// The revealed part of one component group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilteredGroup {
    /// The group number.
    pub group: u8,
    /// The revealed components' canonical bytes, in the order of `proof.revealed`.
    pub components: Vec<Vec<u8>>,
    /// Each revealed component's nonce.
    pub nonces: Vec<SecureHash>,
    /// The proof linking them to the group root (`leaf_count` 0 for an empty group).
    pub proof: PartialMerkleTree,
}

/// Why a filtered transaction was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilteredTransactionError {
    /// The revealed data does not hash to the claimed id.
    #[error("filtered transaction does not prove id {0}: {1}")]
    ProofInvalid(SecureHash, &'static str),
    /// A group the verifier needs to see whole is not fully revealed.
    #[error("filtered transaction {id} does not reveal all components of group {group:?}")]
    NotAllVisible {
        /// The transaction.
        id: SecureHash,
        /// The group.
        group: ComponentGroup,
    },
    /// A revealed component does not decode.
    #[error(transparent)]
    Component(#[from] TransactionError),
}

/// Part of a transaction, provably belonging to its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilteredTransaction {
    /// The id the revealed parts belong to.
    pub id: SecureHash,
    /// Revealed groups, ascending by group number.
    pub groups: Vec<FilteredGroup>,
    /// Proof of the revealed groups' roots in the top-level tree.
    pub group_proof: PartialMerkleTree,
}

impl FilteredTransaction {
    /// Reveals the components of `wtx` for which `keep(group, index)` is true. A group is
    /// revealed (its root proven) when any component is kept, or when `keep_whole(group)` says
    /// so, which also proves an empty group empty.
    pub fn build(
        wtx: &WireTransaction,
        keep: impl Fn(ComponentGroup, usize) -> bool,
        keep_whole: impl Fn(ComponentGroup) -> bool,
    ) -> FilteredTransaction {
        let mut groups = Vec::new();
        for group in ComponentGroup::ALL {
            let components = wtx.group_components(group);
            let whole = keep_whole(group);
            let indices: Vec<u32> = (0..components.len()).filter(|&i| whole || keep(group, i)).map(|i| i as u32).collect();
            if indices.is_empty() && !whole {
                continue;
            }
            let leaves = wtx.leaf_hashes(group);
            let proof = if leaves.is_empty() {
                PartialMerkleTree { leaf_count: 0, revealed: vec![], hashes: vec![] }
            } else {
                // Indices come from 0..len, so building cannot fail.
                PartialMerkleTree::build(&leaves, &indices).unwrap_or(PartialMerkleTree { leaf_count: 0, revealed: vec![], hashes: vec![] })
            };
            groups.push(FilteredGroup {
                group: group.index(),
                components: indices.iter().map(|&i| components[i as usize].clone()).collect(),
                nonces: indices.iter().map(|&i| wtx.privacy_salt().nonce(group.index(), i)).collect(),
                proof,
            });
        }
        let roots = wtx.group_roots();
        let revealed_groups: Vec<u32> = groups.iter().map(|g| u32::from(g.group)).collect();
        let group_proof = PartialMerkleTree::build(&roots, &revealed_groups).unwrap_or(PartialMerkleTree {
            leaf_count: 0,
            revealed: vec![],
            hashes: vec![],
        });
        FilteredTransaction { id: wtx.id(), groups, group_proof }
    }

    /// Reveals whole groups (and nothing else): what a non-validating notary is sent.
    pub fn reveal_groups(wtx: &WireTransaction, whole: &[ComponentGroup]) -> FilteredTransaction {
        Self::build(wtx, |_, _| false, |g| whole.contains(&g))
    }

    /// The groups a non-validating notary must see in full.
    pub const NOTARY_GROUPS: [ComponentGroup; 5] = [
        ComponentGroup::Inputs,
        ComponentGroup::References,
        ComponentGroup::TimeWindow,
        ComponentGroup::Notary,
        ComponentGroup::Parameters,
    ];

    /// Checks that every revealed component belongs to the transaction with this id.
    pub fn verify(&self) -> Result<(), FilteredTransactionError> {
        let bad = |why| FilteredTransactionError::ProofInvalid(self.id, why);
        if self.groups.windows(2).any(|w| w[0].group >= w[1].group) {
            return Err(bad("groups out of order"));
        }
        let mut roots = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            if ComponentGroup::from_index(g.group).is_none() {
                return Err(bad("unknown group"));
            }
            if g.components.len() != g.nonces.len() || g.components.len() != g.proof.revealed.len() {
                return Err(bad("component, nonce and index counts differ"));
            }
            let root = if g.proof.leaf_count == 0 {
                if !g.components.is_empty() || !g.proof.hashes.is_empty() {
                    return Err(bad("empty group with content"));
                }
                SecureHash::ZERO
            } else {
                let leaves: Vec<SecureHash> = g.components.iter().zip(&g.nonces).map(|(c, n)| leaf_hash(n, c)).collect();
                g.proof.root(&leaves).ok_or_else(|| bad("group proof malformed"))?
            };
            roots.push(root);
        }
        let expected: Vec<u32> = self.groups.iter().map(|g| u32::from(g.group)).collect();
        if self.group_proof.revealed != expected || self.group_proof.leaf_count as usize != GROUP_SLOTS {
            return Err(bad("group proof does not cover the revealed groups"));
        }
        let root = self.group_proof.root(&roots).ok_or_else(|| bad("group proof malformed"))?;
        if root != self.id {
            return Err(bad("root does not match the id"));
        }
        Ok(())
    }

    /// Checks that every component of `group` is revealed (the group may be empty, but then its
    /// emptiness must be proven). Call after [`Self::verify`].
    pub fn check_all_visible(&self, group: ComponentGroup) -> Result<(), FilteredTransactionError> {
        let all = self.groups.iter().find(|g| g.group == group.index()).is_some_and(|g| {
            g.proof.revealed.len() == g.proof.leaf_count as usize && g.proof.revealed.iter().enumerate().all(|(i, &r)| r as usize == i)
        });
        if all { Ok(()) } else { Err(FilteredTransactionError::NotAllVisible { id: self.id, group }) }
    }

    fn group(&self, group: ComponentGroup) -> Option<&FilteredGroup> {
        self.groups.iter().find(|g| g.group == group.index())
    }

    /// The revealed components of `group`, decoded, with their indices in the full transaction.
    pub fn revealed<T: DeserializeOwned>(&self, group: ComponentGroup) -> Result<Vec<(u32, T)>, FilteredTransactionError> {
        let Some(g) = self.group(group) else { return Ok(Vec::new()) };
        g.components.iter().zip(&g.proof.revealed).map(|(c, &i)| Ok((i, decode_component(group, i as usize, c)?))).collect()
    }

    /// Revealed inputs.
    pub fn inputs(&self) -> Result<Vec<StateRef>, FilteredTransactionError> {
        Ok(self.revealed(ComponentGroup::Inputs)?.into_iter().map(|(_, v)| v).collect())
    }
    /// Revealed references.
    pub fn references(&self) -> Result<Vec<StateRef>, FilteredTransactionError> {
        Ok(self.revealed(ComponentGroup::References)?.into_iter().map(|(_, v)| v).collect())
    }
    /// The revealed notary.
    pub fn notary(&self) -> Result<Option<Party>, FilteredTransactionError> {
        Ok(self.revealed(ComponentGroup::Notary)?.into_iter().map(|(_, v)| v).next())
    }
    /// The revealed time window.
    pub fn time_window(&self) -> Result<Option<TimeWindow>, FilteredTransactionError> {
        Ok(self.revealed(ComponentGroup::TimeWindow)?.into_iter().map(|(_, v)| v).next())
    }
    /// Revealed network parameters hash.
    pub fn network_parameters_hash(&self) -> Result<Option<SecureHash>, FilteredTransactionError> {
        Ok(self.revealed(ComponentGroup::Parameters)?.into_iter().map(|(_, v)| v).next())
    }
    /// Revealed command data with their indices.
    pub fn commands(&self) -> Result<Vec<(u32, CommandData)>, FilteredTransactionError> {
        self.revealed(ComponentGroup::Commands)
    }
    /// Revealed summaries.
    pub fn summaries(&self) -> Result<Vec<String>, FilteredTransactionError> {
        Ok(self.revealed(ComponentGroup::Summaries)?.into_iter().map(|(_, v)| v).collect())
    }
}
