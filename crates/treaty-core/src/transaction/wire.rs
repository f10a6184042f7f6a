//! The wire transaction: component groups as canonical bytes, its id, and a builder.
//!
//! A [`WireTransaction`] is decoded once from its canonical bytes (or built from typed parts),
//! and keeps both: the bytes, which are what is hashed, signed and stored, and the decoded
//! components, which are what code reads. The id is the root of a two-level Merkle tree: one
//! tree per group over its components' blinded leaf hashes, and a top tree over the group roots.

use serde::{Deserialize, Serialize};

use crate::crypto::PublicKey;
use crate::encoding::{self, DecodeError};
use crate::hash::SecureHash;
use crate::identity::Party;
use crate::merkle::{leaf_hash, merkle_root};
use crate::state::{StateRef, TransactionState};
use crate::time::TimeWindow;

use super::components::{Command, CommandData, ComponentGroup, GROUP_SLOTS, PrivacySalt, TransactionKind};
use super::error::TransactionError;

/// Size limits applied when decoding a transaction (network parameters set them on a network).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The largest encoded transaction accepted, in bytes.
    pub max_transaction_bytes: usize,
    /// The most components one group may hold.
    pub max_components_per_group: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_transaction_bytes: 10 * 1024 * 1024, max_components_per_group: 10_000 }
    }
}

/// One group's components, as canonical bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupBytes {
    /// The group number ([`ComponentGroup`]).
    pub group: u8,
    /// Each component's canonical encoding.
    pub components: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct WireRepr {
    groups: Vec<GroupBytes>,
    privacy_salt: PrivacySalt,
}

/// The decoded contents of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TransactionComponents {
    /// Consumed states.
    pub inputs: Vec<StateRef>,
    /// Created states.
    pub outputs: Vec<TransactionState>,
    /// Commands with their signers.
    pub commands: Vec<Command>,
    /// Attachment ids.
    pub attachments: Vec<SecureHash>,
    /// The notary, when the transaction needs one.
    pub notary: Option<Party>,
    /// When the transaction happened.
    pub time_window: Option<TimeWindow>,
    /// Referenced (not consumed) states.
    pub references: Vec<StateRef>,
    /// The hash of the network parameters in force.
    pub network_parameters_hash: Option<SecureHash>,
    /// Human-readable summaries, checked by the contracts.
    pub summaries: Vec<String>,
    /// The kind of transaction.
    pub kind: TransactionKind,
}

/// A transaction without its signatures.
#[derive(Clone, Debug)]
pub struct WireTransaction {
    bytes: Vec<u8>,
    groups: Vec<GroupBytes>,
    salt: PrivacySalt,
    id: SecureHash,
    components: TransactionComponents,
}

impl PartialEq for WireTransaction {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for WireTransaction {}

fn decode_all<T: serde::de::DeserializeOwned>(g: &GroupBytes, group: ComponentGroup) -> Result<Vec<T>, TransactionError> {
    g.components
        .iter()
        .enumerate()
        .map(|(index, c)| encoding::decode(c).map_err(|error| TransactionError::Component { group, index, error }))
        .collect()
}

/// The group of `g`, once it is known and within `limits`' component count.
fn counted_group(g: &GroupBytes, limits: &Limits) -> Result<ComponentGroup, TransactionError> {
    let group = ComponentGroup::from_index(g.group).ok_or(TransactionError::UnknownGroup(g.group))?;
    let limit = group.max_components().unwrap_or(limits.max_components_per_group);
    if g.components.len() > limit {
        return Err(TransactionError::TooManyComponents { group, count: g.components.len(), limit });
    }
    Ok(group)
}

impl WireTransaction {
    /// Decodes and validates canonical transaction bytes.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<WireTransaction, TransactionError> {
        let repr: WireRepr = encoding::decode_bounded(bytes, limits.max_transaction_bytes).map_err(TransactionError::Decode)?;
        Self::from_groups(repr.groups, repr.privacy_salt, limits, Some(bytes.to_vec()))
    }

    /// Checks this transaction against `limits` as [`Self::from_bytes`] would, with the same
    /// errors: for one built here, to be held to the network's limits without decoding and
    /// hashing it again.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), TransactionError> {
        if self.bytes.len() > limits.max_transaction_bytes {
            return Err(TransactionError::Decode(DecodeError::TooLarge { size: self.bytes.len(), limit: limits.max_transaction_bytes }));
        }
        for g in &self.groups {
            counted_group(g, limits)?;
        }
        Ok(())
    }

    fn from_groups(
        groups: Vec<GroupBytes>,
        salt: PrivacySalt,
        limits: &Limits,
        bytes: Option<Vec<u8>>,
    ) -> Result<WireTransaction, TransactionError> {
        if salt.0 == [0u8; 32] {
            return Err(TransactionError::ZeroSalt);
        }
        if groups.windows(2).any(|w| w[0].group >= w[1].group) {
            return Err(TransactionError::NonCanonicalGroups("groups must be in ascending order without repeats"));
        }
        let mut c = TransactionComponents::default();
        let mut signers: Vec<Vec<PublicKey>> = Vec::new();
        let mut command_data: Vec<CommandData> = Vec::new();
        for g in &groups {
            if ComponentGroup::from_index(g.group).is_some() && g.components.is_empty() {
                return Err(TransactionError::NonCanonicalGroups("a present group must not be empty"));
            }
            let group = counted_group(g, limits)?;
            match group {
                ComponentGroup::Inputs => c.inputs = decode_all(g, group)?,
                ComponentGroup::Outputs => c.outputs = decode_all(g, group)?,
                ComponentGroup::Commands => command_data = decode_all(g, group)?,
                ComponentGroup::Attachments => c.attachments = decode_all(g, group)?,
                ComponentGroup::Notary => c.notary = decode_all(g, group)?.pop(),
                ComponentGroup::TimeWindow => c.time_window = decode_all(g, group)?.pop(),
                ComponentGroup::Signers => signers = decode_all(g, group)?,
                ComponentGroup::References => c.references = decode_all(g, group)?,
                ComponentGroup::Parameters => c.network_parameters_hash = decode_all(g, group)?.pop(),
                ComponentGroup::Summaries => c.summaries = decode_all(g, group)?,
                ComponentGroup::Kind => {
                    c.kind = decode_all::<TransactionKind>(g, group)?.pop().unwrap_or_default();
                    if c.kind == TransactionKind::Normal {
                        return Err(TransactionError::NonCanonicalKind);
                    }
                }
            }
        }
        if signers.len() != command_data.len() {
            return Err(TransactionError::SignersCountMismatch { commands: command_data.len(), signers: signers.len() });
        }
        if let Some(i) = signers.iter().position(Vec::is_empty) {
            return Err(TransactionError::CommandWithoutSigners(i));
        }
        c.commands = command_data.into_iter().zip(signers).map(|(data, signers)| Command { data, signers }).collect();
        let bytes = bytes.unwrap_or_else(|| encoding::encode(&WireRepr { groups: groups.clone(), privacy_salt: salt }));
        let id = compute_id(&groups, &salt);
        Ok(WireTransaction { bytes, groups, salt, id, components: c })
    }

    /// The transaction id: the Merkle root over all components.
    pub fn id(&self) -> SecureHash {
        self.id
    }

    /// The canonical bytes (what is stored and sent).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The decoded contents.
    pub fn components(&self) -> &TransactionComponents {
        &self.components
    }

    /// The privacy salt.
    pub fn privacy_salt(&self) -> &PrivacySalt {
        &self.salt
    }

    /// The raw bytes of each non-empty group.
    pub fn groups(&self) -> &[GroupBytes] {
        &self.groups
    }

    /// The raw components of `group` (empty if absent).
    pub fn group_components(&self, group: ComponentGroup) -> &[Vec<u8>] {
        self.groups.iter().find(|g| g.group == group.index()).map(|g| g.components.as_slice()).unwrap_or(&[])
    }

    /// The blinded leaf hashes of `group`'s components.
    pub fn leaf_hashes(&self, group: ComponentGroup) -> Vec<SecureHash> {
        group_leaves(self.group_components(group), group.index(), &self.salt)
    }

    /// The roots of all group slots (absent groups are [`SecureHash::ZERO`]).
    pub fn group_roots(&self) -> Vec<SecureHash> {
        group_roots(&self.groups, &self.salt)
    }

    /// The keys that must sign a normal transaction: every command's signers, plus the notary
    /// when the transaction has inputs, references or a time window. (Other kinds need the
    /// resolved inputs: see [`super::LedgerTransaction::required_signing_keys`].)
    pub fn command_and_notary_keys(&self) -> Vec<PublicKey> {
        let c = &self.components;
        let mut keys: Vec<PublicKey> = c.commands.iter().flat_map(|cmd| cmd.signers.iter().cloned()).collect();
        if let Some(n) = &c.notary
            && (!c.inputs.is_empty() || !c.references.is_empty() || c.time_window.is_some())
        {
            keys.push(n.owning_key.clone());
        }
        keys.sort();
        keys.dedup();
        keys
    }
}

impl Serialize for WireTransaction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireRepr { groups: self.groups.clone(), privacy_salt: self.salt }.serialize(s)
    }
}

fn group_leaves(components: &[Vec<u8>], group: u8, salt: &PrivacySalt) -> Vec<SecureHash> {
    components.iter().enumerate().map(|(i, c)| leaf_hash(&salt.nonce(group, i as u32), c)).collect()
}

fn group_roots(groups: &[GroupBytes], salt: &PrivacySalt) -> Vec<SecureHash> {
    let mut roots = vec![SecureHash::ZERO; GROUP_SLOTS];
    for g in groups {
        if let Some(slot) = roots.get_mut(usize::from(g.group)) {
            *slot = merkle_root(&group_leaves(&g.components, g.group, salt));
        }
    }
    roots
}

fn compute_id(groups: &[GroupBytes], salt: &PrivacySalt) -> SecureHash {
    merkle_root(&group_roots(groups, salt))
}

/// Builds a transaction from typed parts. Randomness (the privacy salt) is a parameter.
#[derive(Clone, Debug, Default)]
pub struct TransactionBuilder {
    /// The notary.
    pub notary: Option<Party>,
    /// Inputs to consume.
    pub inputs: Vec<StateRef>,
    /// Outputs to create.
    pub outputs: Vec<TransactionState>,
    /// Commands.
    pub commands: Vec<Command>,
    /// Attachment ids.
    pub attachments: Vec<SecureHash>,
    /// Time window.
    pub time_window: Option<TimeWindow>,
    /// Reference states.
    pub references: Vec<StateRef>,
    /// Network parameters hash.
    pub network_parameters_hash: Option<SecureHash>,
    /// Summaries.
    pub summaries: Vec<String>,
    /// Kind.
    pub kind: TransactionKind,
}

impl TransactionBuilder {
    /// An empty builder for a normal transaction on `notary`.
    pub fn new(notary: Option<Party>) -> Self {
        TransactionBuilder { notary, ..Default::default() }
    }

    /// Adds an input.
    pub fn input(mut self, r: StateRef) -> Self {
        self.inputs.push(r);
        self
    }
    /// Adds an output.
    pub fn output(mut self, s: TransactionState) -> Self {
        self.outputs.push(s);
        self
    }
    /// Adds a command.
    pub fn command(mut self, c: Command) -> Self {
        self.commands.push(c);
        self
    }
    /// Adds an attachment.
    pub fn attachment(mut self, id: SecureHash) -> Self {
        self.attachments.push(id);
        self
    }
    /// Adds a reference state.
    pub fn reference(mut self, r: StateRef) -> Self {
        self.references.push(r);
        self
    }
    /// Sets the time window.
    pub fn time_window(mut self, w: TimeWindow) -> Self {
        self.time_window = Some(w);
        self
    }
    /// Adds a summary line.
    pub fn summary(mut self, s: impl Into<String>) -> Self {
        self.summaries.push(s.into());
        self
    }
    /// Sets the network parameters hash.
    pub fn network_parameters(mut self, h: SecureHash) -> Self {
        self.network_parameters_hash = Some(h);
        self
    }
    /// Sets the kind.
    pub fn kind(mut self, k: TransactionKind) -> Self {
        self.kind = k;
        self
    }

    /// Encodes every component and computes the id, checking the same rules as decoding.
    pub fn build(self, salt: PrivacySalt) -> Result<WireTransaction, TransactionError> {
        fn enc<T: Serialize>(items: &[T]) -> Vec<Vec<u8>> {
            items.iter().map(|i| encoding::encode(i)).collect()
        }
        let mut groups = Vec::new();
        let mut push = |g: ComponentGroup, components: Vec<Vec<u8>>| {
            if !components.is_empty() {
                groups.push(GroupBytes { group: g.index(), components });
            }
        };
        push(ComponentGroup::Inputs, enc(&self.inputs));
        push(ComponentGroup::Outputs, enc(&self.outputs));
        push(ComponentGroup::Commands, enc(&self.commands.iter().map(|c| c.data.clone()).collect::<Vec<_>>()));
        push(ComponentGroup::Attachments, enc(&self.attachments));
        push(ComponentGroup::Notary, enc(self.notary.as_slice()));
        push(ComponentGroup::TimeWindow, enc(self.time_window.as_slice()));
        push(ComponentGroup::Signers, enc(&self.commands.iter().map(|c| c.signers.clone()).collect::<Vec<_>>()));
        push(ComponentGroup::References, enc(&self.references));
        push(ComponentGroup::Parameters, enc(self.network_parameters_hash.as_slice()));
        push(ComponentGroup::Summaries, enc(&self.summaries));
        if self.kind != TransactionKind::Normal {
            push(ComponentGroup::Kind, enc(&[self.kind]));
        }
        WireTransaction::from_groups(groups, salt, &Limits::default(), None)
    }
}

/// Decodes a value of a known group's component type, for filtered transactions.
pub(crate) fn decode_component<T: serde::de::DeserializeOwned>(
    group: ComponentGroup,
    index: usize,
    bytes: &[u8],
) -> Result<T, TransactionError> {
    encoding::decode(bytes).map_err(|error: DecodeError| TransactionError::Component { group, index, error })
}
