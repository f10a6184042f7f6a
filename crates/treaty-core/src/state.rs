//! States: the facts on the ledger, their references, envelopes and standard shapes.
//!
//! A state is app-defined data. On the ledger it travels in a [`TransactionState`] envelope
//! naming the contract that governs it, its notary, an optional encumbrance and the constraint
//! on which contract code may verify it. The data itself is a [`StateData`]: the state's type id,
//! schema version, participants and canonical bytes, so the platform can route and store states
//! without the app's types, and the app decodes them with [`StateData::unpack`].

use core::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::amount::Amount;
use crate::crypto::PublicKey;
use crate::encoding::{self, DecodeError};
use crate::hash::SecureHash;
use crate::identity::{AbstractParty, Party};

/// A contract's name, like `treaty.finance.Cash` (the namespace can be reserved to a key).
pub type ContractName = String;

/// Points at one output of one transaction: a state anywhere in ledger history.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StateRef {
    /// The id of the transaction that created the state.
    pub txhash: SecureHash,
    /// The state's index in that transaction's outputs.
    pub index: u32,
}

impl fmt::Display for StateRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.txhash, self.index)
    }
}

impl core::str::FromStr for StateRef {
    type Err = String;
    /// The form [`fmt::Display`] writes: `<transaction id>(<output index>)`.
    fn from_str(s: &str) -> Result<StateRef, String> {
        let bad = || format!("{s:?} is not a state ref (<transaction id>(<output index>))");
        let (tx, rest) = s.trim().split_once('(').ok_or_else(bad)?;
        let index = rest.strip_suffix(')').ok_or_else(bad)?.parse::<u32>().map_err(|_| bad())?;
        let txhash: SecureHash = tx.parse().map_err(|_| bad())?;
        Ok(StateRef { txhash, index })
    }
}

impl fmt::Debug for StateRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.txhash.short(), self.index)
    }
}

/// App data of a state that the platform can carry without the app's types.
pub trait ContractState: Serialize + DeserializeOwned {
    /// A stable, globally unique type id, like `treaty.finance.Cash`.
    const TYPE_ID: &'static str;
    /// The contract that governs states of this type (`TransactionState::contract`); the type
    /// id unless the type says otherwise. A state is only what its own contract lets it be:
    /// [`crate::LedgerTransaction::inputs_of`] and its kin refuse a state of this type governed
    /// by any other contract, which could have issued it under rules of its own (a "Cash"
    /// state made by a contract that checks nothing, say).
    const CONTRACT: &'static str = Self::TYPE_ID;
    /// The schema version of this encoding.
    const SCHEMA_VERSION: u32 = 1;
    /// The parties for whom this state is relevant (who store it and must be told of it).
    fn participants(&self) -> Vec<AbstractParty>;
}

/// A state that evolves over time, each version sharing one [`UniqueIdentifier`].
pub trait LinearState: ContractState {
    /// The id shared by every version.
    fn linear_id(&self) -> &UniqueIdentifier;
}

/// A state with a single owner who can transfer it.
pub trait OwnableState: ContractState {
    /// The current owner.
    fn owner(&self) -> &AbstractParty;
    /// The same state, owned by `new_owner`.
    fn with_new_owner(&self, new_owner: AbstractParty) -> Self;
}

/// A state holding an amount of a fungible token.
pub trait FungibleState<T>: ContractState {
    /// The amount held.
    fn amount(&self) -> &Amount<T>;
}

/// Why state or command data could not be unpacked into an app type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    /// The data is of another type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// The type asked for.
        expected: &'static str,
        /// The type present.
        found: String,
    },
    /// Same type, different schema version.
    #[error("{type_id}: schema version {found} is not the supported version {expected}")]
    WrongVersion {
        /// The type.
        type_id: String,
        /// Supported version.
        expected: u32,
        /// Version present.
        found: u32,
    },
    /// A state of the type, governed by another contract than the type's own.
    #[error("a {type_id} state governed by {contract}, not by {expected}, the contract of {type_id} states")]
    WrongContract {
        /// The type.
        type_id: &'static str,
        /// The contract governing the state.
        contract: String,
        /// The type's own contract ([`ContractState::CONTRACT`]).
        expected: &'static str,
    },
    /// The bytes do not decode.
    #[error("{type_id}: {error}")]
    Decode {
        /// The type.
        type_id: String,
        /// The decoding error.
        error: DecodeError,
    },
    /// The envelope's participants differ from the ones the data itself names.
    #[error("{type_id}: envelope participants do not match the state's own participants")]
    ParticipantsMismatch {
        /// The type.
        type_id: String,
    },
}

/// A state's data in transit: type, version, participants and canonical bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateData {
    /// The app type id ([`ContractState::TYPE_ID`]).
    pub type_id: String,
    /// The schema version of `bytes`.
    pub schema_version: u32,
    /// The state's participants, as the state itself reports them.
    pub participants: Vec<AbstractParty>,
    /// The canonical encoding of the app value.
    pub bytes: Vec<u8>,
}

impl StateData {
    /// Packs an app state.
    pub fn pack<S: ContractState>(state: &S) -> StateData {
        StateData {
            type_id: S::TYPE_ID.to_string(),
            schema_version: S::SCHEMA_VERSION,
            participants: state.participants(),
            bytes: encoding::encode(state),
        }
    }

    /// Whether this holds a value of `S`.
    pub fn is<S: ContractState>(&self) -> bool {
        self.type_id == S::TYPE_ID
    }

    /// Unpacks into `S`, checking type, version and that the participants agree with the data.
    pub fn unpack<S: ContractState>(&self) -> Result<S, UnpackError> {
        if self.type_id != S::TYPE_ID {
            return Err(UnpackError::WrongType { expected: S::TYPE_ID, found: self.type_id.clone() });
        }
        if self.schema_version != S::SCHEMA_VERSION {
            return Err(UnpackError::WrongVersion {
                type_id: self.type_id.clone(),
                expected: S::SCHEMA_VERSION,
                found: self.schema_version,
            });
        }
        let s: S = encoding::decode(&self.bytes).map_err(|error| UnpackError::Decode { type_id: self.type_id.clone(), error })?;
        if s.participants() != self.participants {
            return Err(UnpackError::ParticipantsMismatch { type_id: self.type_id.clone() });
        }
        Ok(s)
    }
}

/// Which contract code may verify a state (checked by the sandbox; see `treaty-sandbox`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttachmentConstraint {
    /// Any attachment: refused unless the network parameters are marked development.
    AlwaysAccept,
    /// Exactly the attachment with this hash.
    Hash(SecureHash),
    /// Any attachment the network parameters whitelist for the contract.
    WhitelistedByNetwork,
    /// Any attachment signed by keys fulfilling this (possibly composite) key.
    Signature(PublicKey),
}

/// A state as it sits in a transaction's outputs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TransactionState {
    /// The app data.
    pub data: StateData,
    /// The contract that must accept every transaction involving this state.
    pub contract: ContractName,
    /// The notary that guards this state against double spends.
    pub notary: Party,
    /// Index of another output of the same transaction that must be consumed with this one.
    pub encumbrance: Option<u32>,
    /// Which contract code may verify this state.
    pub constraint: AttachmentConstraint,
}

impl TransactionState {
    /// An unencumbered state.
    pub fn new<S: ContractState>(state: &S, contract: &str, notary: Party, constraint: AttachmentConstraint) -> Self {
        TransactionState { data: StateData::pack(state), contract: contract.to_string(), notary, encumbrance: None, constraint }
    }

    /// The same state encumbered by output `index` of its transaction.
    pub fn with_encumbrance(mut self, index: u32) -> Self {
        self.encumbrance = Some(index);
        self
    }
}

/// A state together with the reference that locates it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateAndRef {
    /// The state.
    pub state: TransactionState,
    /// Where it was created.
    pub r#ref: StateRef,
}

/// Identifies every version of a linear state: an optional external id plus a UUID.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UniqueIdentifier {
    /// An id from an outside system (a trade reference, say).
    pub external_id: Option<String>,
    /// The unique part.
    pub id: uuid::Uuid,
}

impl UniqueIdentifier {
    /// A new identifier from 16 random bytes the caller draws (a version-4 UUID).
    pub fn new(external_id: Option<String>, random: [u8; 16]) -> Self {
        UniqueIdentifier { external_id, id: uuid::Builder::from_random_bytes(random).into_uuid() }
    }
}

impl fmt::Display for UniqueIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.external_id {
            Some(e) => write!(f, "{e}_{}", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

impl fmt::Debug for UniqueIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A reference from one state to another: a fixed version, or the latest of a linear state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatePointer {
    /// Exactly this state.
    Static(StateRef),
    /// The latest version of the linear state with this id.
    Linear(UniqueIdentifier),
}

impl StatePointer {
    /// Finds the pointed-to state among `candidates` (typically a transaction's reference
    /// inputs): a static pointer by reference, a linear pointer by the linear id of `S` among
    /// states governed by `S`'s own contract ([`ContractState::CONTRACT`]; one of another
    /// contract's making is not an `S`).
    pub fn resolve<'a, S: LinearState>(&self, candidates: &'a [StateAndRef]) -> Option<&'a StateAndRef> {
        match self {
            StatePointer::Static(r) => candidates.iter().find(|c| c.r#ref == *r),
            StatePointer::Linear(id) => candidates.iter().find(|c| {
                c.state.contract == S::CONTRACT && c.state.data.is::<S>() && c.state.data.unpack::<S>().is_ok_and(|s| s.linear_id() == id)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_refs_parse_what_they_print() {
        let r = StateRef { txhash: SecureHash::sha256(b"tx"), index: 7 };
        assert_eq!(r.to_string().parse::<StateRef>(), Ok(r));
        for bad in
            ["", "abc(1)", &format!("{}", r.txhash), &format!("{}(x)", r.txhash), &format!("{}(1", r.txhash), &format!("{}(-1)", r.txhash)]
        {
            assert!(bad.parse::<StateRef>().is_err(), "{bad}");
        }
    }
}
