//! Network parameters: the rules every node of one network agrees on.
//!
//! The network operator signs them with the network-map key and publishes them (see
//! `treaty-net`); transactions name the parameters in force by hash
//! ([`crate::ComponentGroup::Parameters`]). The sandbox takes its limits, the contract whitelist,
//! reserved namespaces and the development flag from here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::PublicKey;
use crate::encoding;
use crate::hash::SecureHash;
use crate::identity::Party;
use crate::state::ContractName;

/// A notary service on the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotaryInfo {
    /// The service identity. A cluster's members share its key (docs/notary.md, "Raft
    /// cluster").
    pub identity: Party,
    /// Whether it sees and verifies whole transactions.
    pub validating: bool,
    /// For a cluster: the legal names of the member nodes that host the service, in the order
    /// clients try them (each client starts at a member chosen by the transaction id and moves
    /// on when one does not answer). Empty for a notary that is a node of its own.
    #[serde(default)]
    pub members: Vec<crate::identity::X500Name>,
}

/// Limits on contract execution (all deterministic: every node enforces the same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxLimits {
    /// Fuel for one contract's verification of one transaction.
    pub fuel_per_verification: u64,
    /// The largest linear memory a contract may grow to, in bytes.
    pub max_memory_bytes: u64,
    /// The largest contract module, in bytes.
    pub max_module_bytes: u64,
    /// The largest attachment, in bytes.
    pub max_attachment_bytes: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            fuel_per_verification: 100_000_000,
            max_memory_bytes: 64 * 1024 * 1024,
            max_module_bytes: 8 * 1024 * 1024,
            max_attachment_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The parameters of one network, at one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkParameters {
    /// Nodes below this platform version may not join.
    pub minimum_platform_version: u32,
    /// The notaries.
    pub notaries: Vec<NotaryInfo>,
    /// The largest peer-to-peer message, in bytes.
    pub max_message_size: u64,
    /// The largest transaction, in bytes.
    pub max_transaction_size: u64,
    /// How long a node may be offline before it is considered gone, in microseconds.
    pub event_horizon_micros: i64,
    /// Attachments allowed per contract, for states with the whitelist constraint.
    pub whitelisted_contracts: BTreeMap<ContractName, Vec<SecureHash>>,
    /// Contract-name prefixes reserved to a key: only attachments signed by it may define them.
    pub package_ownership: BTreeMap<String, PublicKey>,
    /// A development network: allows the always-accept constraint.
    pub development: bool,
    /// Incremented on every change.
    pub epoch: u32,
    /// Contract execution limits.
    pub sandbox: SandboxLimits,
}

impl Default for NetworkParameters {
    fn default() -> Self {
        NetworkParameters {
            minimum_platform_version: 1,
            notaries: Vec::new(),
            max_message_size: 10 * 1024 * 1024,
            max_transaction_size: 10 * 1024 * 1024,
            event_horizon_micros: 30 * 24 * 3600 * 1_000_000,
            whitelisted_contracts: BTreeMap::new(),
            package_ownership: BTreeMap::new(),
            development: false,
            epoch: 1,
            sandbox: SandboxLimits::default(),
        }
    }
}

impl NetworkParameters {
    /// The hash transactions use to name these parameters.
    pub fn hash(&self) -> SecureHash {
        SecureHash::sha256(&encoding::encode(self))
    }

    /// The key owning the namespace `contract` falls in, if any: a prefix owns itself and every
    /// name below it (`com.bank` owns `com.bank` and `com.bank.Cash`, not `com.banker`).
    pub fn namespace_owner(&self, contract: &str) -> Option<(&str, &PublicKey)> {
        self.package_ownership
            .iter()
            .filter(|(prefix, _)| {
                contract == prefix.as_str() || contract.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.starts_with('.'))
            })
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(p, k)| (p.as_str(), k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyPair, SignatureScheme};

    #[test]
    fn namespaces_match_whole_segments() {
        let k = KeyPair::from_seed(SignatureScheme::Ed25519, [1; 32]).unwrap().public();
        let mut p = NetworkParameters::default();
        p.package_ownership.insert("com.bank".into(), k.clone());
        assert_eq!(p.namespace_owner("com.bank.Cash").map(|(n, _)| n), Some("com.bank"));
        assert_eq!(p.namespace_owner("com.bank").map(|(n, _)| n), Some("com.bank"));
        assert!(p.namespace_owner("com.banker.Cash").is_none());
        assert!(p.namespace_owner("org.other").is_none());
        assert_ne!(p.hash(), NetworkParameters::default().hash());
    }
}
