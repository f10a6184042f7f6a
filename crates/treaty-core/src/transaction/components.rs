//! The component groups of a transaction and the values they hold.
//!
//! A transaction is a fixed set of component groups. Each group is a list of components, each
//! encoded canonically on its own, so any component can be revealed (or torn off) alone. The
//! group numbers are part of the transaction id's definition and never change; new groups take
//! new numbers, and an empty group contributes the same root as an absent one, so adding a
//! group type later leaves every existing id unchanged.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::crypto::PublicKey;
use crate::encoding::{self, DecodeError};
use crate::hash::SecureHash;
use crate::identity::Party;
use crate::state::{ContractName, UnpackError};

/// The number of group slots in the top-level Merkle tree (room for future groups).
pub const GROUP_SLOTS: usize = 16;

/// A component group. The discriminant is the group's position in the id's Merkle tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum ComponentGroup {
    /// Consumed states ([`crate::state::StateRef`]).
    Inputs = 0,
    /// Created states ([`crate::state::TransactionState`]).
    Outputs = 1,
    /// Command data ([`CommandData`]); signers are in [`ComponentGroup::Signers`].
    Commands = 2,
    /// Attachment ids ([`SecureHash`]).
    Attachments = 3,
    /// The notary ([`Party`]); at most one.
    Notary = 4,
    /// The time window ([`crate::time::TimeWindow`]); at most one.
    TimeWindow = 5,
    /// The signer keys of each command, by command index (`Vec<PublicKey>`).
    Signers = 6,
    /// Referenced, not consumed, states ([`crate::state::StateRef`]).
    References = 7,
    /// The hash of the network parameters in force ([`SecureHash`]); at most one.
    Parameters = 8,
    /// Human-readable summaries that the contracts check (`String`).
    Summaries = 9,
    /// The transaction kind when not normal ([`TransactionKind`]); at most one.
    Kind = 10,
}

impl ComponentGroup {
    /// Every group, in order.
    pub const ALL: [ComponentGroup; 11] = [
        ComponentGroup::Inputs,
        ComponentGroup::Outputs,
        ComponentGroup::Commands,
        ComponentGroup::Attachments,
        ComponentGroup::Notary,
        ComponentGroup::TimeWindow,
        ComponentGroup::Signers,
        ComponentGroup::References,
        ComponentGroup::Parameters,
        ComponentGroup::Summaries,
        ComponentGroup::Kind,
    ];

    /// The group with number `n`, if there is one.
    pub fn from_index(n: u8) -> Option<ComponentGroup> {
        Self::ALL.get(usize::from(n)).copied()
    }

    /// The group's number.
    pub fn index(self) -> u8 {
        self as u8
    }

    /// The most components this group may hold (`None`: bounded only by the limits).
    pub fn max_components(self) -> Option<usize> {
        match self {
            ComponentGroup::Notary | ComponentGroup::TimeWindow | ComponentGroup::Parameters | ComponentGroup::Kind => Some(1),
            _ => None,
        }
    }
}

/// App data of a command that the platform carries without the app's types.
pub trait CommandType: Serialize + DeserializeOwned {
    /// A stable, globally unique type id, like `treaty.finance.Cash.Move`.
    const TYPE_ID: &'static str;
    /// The schema version of this encoding.
    const SCHEMA_VERSION: u32 = 1;
}

/// A command's data: type id, schema version and canonical bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CommandData {
    /// The app type id ([`CommandType::TYPE_ID`]).
    pub type_id: String,
    /// Schema version of `bytes`.
    pub schema_version: u32,
    /// Canonical encoding of the app value.
    pub bytes: Vec<u8>,
}

impl CommandData {
    /// Packs an app command.
    pub fn pack<C: CommandType>(c: &C) -> CommandData {
        CommandData { type_id: C::TYPE_ID.to_string(), schema_version: C::SCHEMA_VERSION, bytes: encoding::encode(c) }
    }

    /// Whether this holds a `C`.
    pub fn is<C: CommandType>(&self) -> bool {
        self.type_id == C::TYPE_ID
    }

    /// Unpacks into `C`, checking type and version.
    pub fn unpack<C: CommandType>(&self) -> Result<C, UnpackError> {
        if self.type_id != C::TYPE_ID {
            return Err(UnpackError::WrongType { expected: C::TYPE_ID, found: self.type_id.clone() });
        }
        if self.schema_version != C::SCHEMA_VERSION {
            return Err(UnpackError::WrongVersion {
                type_id: self.type_id.clone(),
                expected: C::SCHEMA_VERSION,
                found: self.schema_version,
            });
        }
        encoding::decode(&self.bytes).map_err(|error: DecodeError| UnpackError::Decode { type_id: self.type_id.clone(), error })
    }
}

/// A command with the keys that must sign for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Command {
    /// What the command says.
    pub data: CommandData,
    /// Keys whose signatures the transaction needs (possibly composite).
    pub signers: Vec<PublicKey>,
}

impl Command {
    /// A command from app data and signers.
    pub fn new<C: CommandType>(c: &C, signers: Vec<PublicKey>) -> Command {
        Command { data: CommandData::pack(c), signers }
    }
}

/// What kind of transaction this is; each has its own validation rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TransactionKind {
    /// Contracts of all input and output states must accept it. (Encoded as an absent
    /// [`ComponentGroup::Kind`] group, never as a component.)
    #[default]
    Normal,
    /// Moves the inputs, unchanged, to another notary.
    NotaryChange {
        /// The notary the states move to.
        new_notary: Party,
    },
    /// Replaces the inputs' contract with an upgraded one, which must accept the upgrade.
    ContractUpgrade {
        /// The contract the outputs are governed by.
        upgraded_contract: ContractName,
        /// The attachment holding the upgraded contract.
        upgraded_attachment: SecureHash,
    },
}

/// 32 random bytes that seed every component's nonce, so torn-off components cannot be
/// guessed from their hashes. Must not be all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PrivacySalt(pub [u8; 32]);

impl PrivacySalt {
    /// Domain-separation tag for nonces.
    const NONCE_TAG: &'static [u8] = b"TREATY/COMPONENT-NONCE/v1\0";

    /// The nonce of component `index` of `group`.
    pub fn nonce(&self, group: u8, index: u32) -> SecureHash {
        SecureHash::sha256_parts(&[Self::NONCE_TAG, &self.0, &[group], &index.to_le_bytes()])
    }
}

impl core::fmt::Debug for PrivacySalt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PrivacySalt({}…)", hex::encode(&self.0[..4]))
    }
}
