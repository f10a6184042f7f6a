//! The certificate hierarchy: what verifies, and each way a certificate is refused.

use treaty_core::{KeyPair, SignatureScheme, X500Name};
use treaty_net::pki::{self, CertRole, CertifiedKey, PkiError, RevocationList, Validity};

const NOW: i64 = 1_795_000_000; // 2026-11-18

fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).unwrap()
}

fn p256(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::EcdsaP256Sha256, [seed; 32]).unwrap()
}

fn name(s: &str) -> X500Name {
    s.parse().unwrap()
}

fn serial(n: u8) -> [u8; 16] {
    [n; 16]
}

struct Network {
    root: CertifiedKey,
    doorman: CertifiedKey,
}

fn network(seed: u8) -> Network {
    let v = Validity::from_now(NOW, 10);
    let root = pki::root_ca(name("O=Treaty Root,L=London,C=GB"), key(seed), v, serial(seed)).unwrap();
    let doorman = root.issue(name("O=Treaty Doorman,L=London,C=GB"), key(seed + 1), CertRole::DoormanCa, v, serial(seed + 1)).unwrap();
    Network { root, doorman }
}

struct Node {
    node_ca: CertifiedKey,
    identity: CertifiedKey,
    tls: CertifiedKey,
}

fn node(net: &Network, legal: &str, seed: u8) -> Node {
    let v = Validity::from_now(NOW, 5);
    let node_ca = net.doorman.issue(name(legal), key(seed), CertRole::NodeCa, v, serial(seed)).unwrap();
    let identity = node_ca.issue(name(legal), key(seed + 1), CertRole::LegalIdentity, v, serial(seed + 1)).unwrap();
    let tls = node_ca.issue(name(legal), key(seed + 2), CertRole::Tls, v, serial(seed + 2)).unwrap();
    Node { node_ca, identity, tls }
}

fn chain(net: &Network, n: &Node, leaf: &CertifiedKey) -> Vec<Vec<u8>> {
    vec![leaf.cert.clone(), n.node_ca.cert.clone(), net.doorman.cert.clone()]
}

fn none() -> RevocationList {
    RevocationList::default()
}

#[test]
fn a_node_chain_verifies_and_names_its_key() {
    let net = network(10);
    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    let v = pki::verify(
        &chain(&net, &alice, &alice.tls),
        &net.root.cert,
        CertRole::Tls,
        Some(&name("O=Alice,L=London,C=GB")),
        &none(),
        NOW as u64,
    )
    .unwrap();
    assert_eq!(v.key, alice.tls.key.public());
    let v = pki::verify(&chain(&net, &alice, &alice.identity), &net.root.cert, CertRole::LegalIdentity, None, &none(), NOW as u64).unwrap();
    assert_eq!(v.name, name("O=Alice,L=London,C=GB"));
    assert_eq!(v.key, alice.identity.key.public(), "the identity certificate certifies the party's key");
}

#[test]
fn another_networks_certificate_is_untrusted() {
    let ours = network(10);
    let theirs = network(50);
    let mallory = node(&theirs, "O=Alice,L=London,C=GB", 60);
    let err = pki::verify(&chain(&theirs, &mallory, &mallory.tls), &ours.root.cert, CertRole::Tls, None, &none(), NOW as u64).unwrap_err();
    assert!(matches!(err, PkiError::Untrusted(_)), "{err}");
}

#[test]
fn a_certificate_for_someone_else_is_refused() {
    let net = network(10);
    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    let err = pki::verify(
        &chain(&net, &alice, &alice.tls),
        &net.root.cert,
        CertRole::Tls,
        Some(&name("O=Bob,L=Paris,C=FR")),
        &none(),
        NOW as u64,
    )
    .unwrap_err();
    assert_eq!(err, PkiError::WrongName { expected: "O=Bob, L=Paris, C=FR".into(), found: "O=Alice, L=London, C=GB".into() });
}

#[test]
fn the_wrong_role_is_refused() {
    let net = network(10);
    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    let err = pki::verify(&chain(&net, &alice, &alice.identity), &net.root.cert, CertRole::Tls, None, &none(), NOW as u64).unwrap_err();
    assert_eq!(err, PkiError::WrongRole { expected: CertRole::Tls, found: Some(CertRole::LegalIdentity) });
}

#[test]
fn a_node_cannot_certify_another_name() {
    let net = network(10);
    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    let fake_bob = alice.node_ca.issue(name("O=Bob,L=Paris,C=FR"), key(90), CertRole::Tls, Validity::from_now(NOW, 1), serial(90)).unwrap();
    let err =
        pki::verify(&chain(&net, &alice, &fake_bob), &net.root.cert, CertRole::Tls, Some(&name("O=Bob,L=Paris,C=FR")), &none(), NOW as u64)
            .unwrap_err();
    assert!(matches!(err, PkiError::ForeignName { .. }), "{err}");
}

#[test]
fn revoked_names_and_keys_are_refused() {
    let net = network(10);
    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    let c = chain(&net, &alice, &alice.tls);
    let mut by_name = none();
    by_name.names.insert(name("O=Alice,L=London,C=GB"));
    assert_eq!(
        pki::verify(&c, &net.root.cert, CertRole::Tls, None, &by_name, NOW as u64).unwrap_err(),
        PkiError::Revoked("O=Alice, L=London, C=GB".into())
    );
    // Revoking the node CA's key revokes everything it issued.
    let mut by_key = none();
    by_key.keys.insert(pki::spki_hash(&alice.node_ca.cert).unwrap());
    assert!(matches!(pki::verify(&c, &net.root.cert, CertRole::Tls, None, &by_key, NOW as u64).unwrap_err(), PkiError::Revoked(_)));
    // Others are unaffected.
    let bob = node(&net, "O=Bob,L=Paris,C=FR", 30);
    pki::verify(&chain(&net, &bob, &bob.tls), &net.root.cert, CertRole::Tls, None, &by_key, NOW as u64).unwrap();
}

#[test]
fn expired_certificates_are_untrusted() {
    let net = network(10);
    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    let later = (NOW + 6 * 365 * 86_400) as u64;
    let err = pki::verify(&chain(&net, &alice, &alice.tls), &net.root.cert, CertRole::Tls, None, &none(), later).unwrap_err();
    assert!(matches!(&err, PkiError::Untrusted(m) if m.contains("Expired")), "{err}");
}

#[test]
fn p256_keys_are_supported() {
    let net = network(10);
    let v = Validity::from_now(NOW, 5);
    let ca = net.doorman.issue(name("O=Carol,L=Berlin,C=DE"), p256(40), CertRole::NodeCa, v, serial(40)).unwrap();
    let tls = ca.issue(name("O=Carol,L=Berlin,C=DE"), p256(41), CertRole::Tls, v, serial(41)).unwrap();
    let verified = pki::verify(
        &[tls.cert.clone(), ca.cert.clone(), net.doorman.cert.clone()],
        &net.root.cert,
        CertRole::Tls,
        None,
        &none(),
        NOW as u64,
    )
    .unwrap();
    assert_eq!(verified.key, tls.key.public());
}

#[test]
fn the_role_extension_is_present_and_not_critical() {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let net = network(10);
    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    let (_, cert) = X509Certificate::from_der(&alice.tls.cert).unwrap();
    let ext = cert.extensions().iter().find(|e| e.oid.to_id_string() == "1.3.6.1.4.1.50530.1.1").expect("role extension");
    assert!(!ext.critical);
    assert_eq!(ext.value, &[0x02, 0x01, CertRole::Tls as u8]);
}

#[test]
fn end_entity_certificates_cannot_issue() {
    let net = network(10);
    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    let err = alice.tls.issue(name("O=Bob,L=Paris,C=FR"), key(99), CertRole::Tls, Validity::from_now(NOW, 1), serial(99)).err().unwrap();
    assert!(matches!(err, PkiError::Issue(_)), "{err}");
}
