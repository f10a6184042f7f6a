//! The certificate hierarchy: what verifies, and each way a certificate is refused.

use treaty_net::pki::{self, CertRole, PkiError, Validity};

mod common;

use common::*;

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
