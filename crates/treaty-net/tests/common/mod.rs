//! Shared fixtures: a network (root, doorman) and nodes with their certificates.
#![allow(dead_code, missing_docs)]

use treaty_core::{KeyPair, SignatureScheme, X500Name};
use treaty_net::pki::{self, CertRole, CertifiedKey, RevocationList, Validity};

pub const NOW: i64 = 1_795_000_000; // 2026-11-18

pub fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).unwrap()
}

pub fn p256(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::EcdsaP256Sha256, [seed; 32]).unwrap()
}

pub fn name(s: &str) -> X500Name {
    s.parse().unwrap()
}

/// Valid at [`NOW`] and at the real current time (TLS checks the real clock), for `years`.
pub fn validity(years: i64) -> Validity {
    let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(NOW);
    Validity { not_before: NOW.min(real) - 86_400, not_after: NOW.max(real) + years * 365 * 86_400 }
}

pub fn serial(n: u8) -> [u8; 16] {
    [n; 16]
}

pub struct Network {
    pub root: CertifiedKey,
    pub doorman: CertifiedKey,
}

pub fn network(seed: u8) -> Network {
    let v = validity(10);
    let root = pki::root_ca(name("O=Treaty Root,L=London,C=GB"), key(seed), v, serial(seed)).unwrap();
    let doorman = root.issue(name("O=Treaty Doorman,L=London,C=GB"), key(seed + 1), CertRole::DoormanCa, v, serial(seed + 1)).unwrap();
    Network { root, doorman }
}

pub struct Node {
    pub node_ca: CertifiedKey,
    pub identity: CertifiedKey,
    pub tls: CertifiedKey,
}

pub fn node(net: &Network, legal: &str, seed: u8) -> Node {
    let v = validity(5);
    let node_ca = net.doorman.issue(name(legal), key(seed), CertRole::NodeCa, v, serial(seed)).unwrap();
    let identity = node_ca.issue(name(legal), key(seed + 1), CertRole::LegalIdentity, v, serial(seed + 1)).unwrap();
    let tls = node_ca.issue(name(legal), key(seed + 2), CertRole::Tls, v, serial(seed + 2)).unwrap();
    Node { node_ca, identity, tls }
}

pub fn chain(net: &Network, n: &Node, leaf: &CertifiedKey) -> Vec<Vec<u8>> {
    vec![leaf.cert.clone(), n.node_ca.cert.clone(), net.doorman.cert.clone()]
}

pub fn none() -> RevocationList {
    RevocationList::default()
}
