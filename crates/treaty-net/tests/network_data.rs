//! Key files, signed network parameters and node infos.

use std::os::unix::fs::PermissionsExt;

use treaty_core::{KeyPair, NetworkParameters, Party, SignatureScheme};
use treaty_net::keystore::{self, KeyStoreError};
use treaty_net::map::{self, NodeInfo, NodeInfoError, kinds};
use treaty_net::pki::{self, CertRole, RevocationList, Validity};
use treaty_net::signed::{Signed, SignedError};

const NOW: i64 = 1_795_000_000;

fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    // Under cargo's target/tmp, one per test: a failed run's files are replaced by the next run.
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("net-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn key_files_round_trip_with_owner_only_permissions() {
    let dir = scratch("keys");
    for (file, k) in [("ed.key", key(1)), ("p.key", KeyPair::from_seed(SignatureScheme::EcdsaP256Sha256, [2; 32]).unwrap())] {
        let path = dir.join(file);
        keystore::write_key(&path, &k).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(keystore::read_key(&path).unwrap().public(), k.public());
        // Never overwritten.
        assert!(matches!(keystore::write_key(&path, &key(9)), Err(KeyStoreError::Io { .. })));
    }
    // A key file others can read is refused, naming the fix.
    let open = dir.join("ed.key");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = keystore::read_key(&open).unwrap_err();
    assert!(matches!(err, KeyStoreError::Permissions { mode: 0o644, .. }), "{err}");
    assert!(err.to_string().contains("chmod 600"));
    // A malformed file names what is wrong.
    let bad = dir.join("bad.key");
    std::fs::write(&bad, "treaty-key v1\nscheme rsa\nseed 00\n").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(keystore::read_key(&bad).unwrap_err(), KeyStoreError::Malformed { reason, .. } if reason.contains("scheme")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn parameters_are_accepted_only_from_the_trusted_map_key() {
    let map_key = key(3);
    let params = NetworkParameters { epoch: 7, ..Default::default() };
    let signed = Signed::sign(kinds::NETWORK_PARAMETERS, &params, &map_key);
    assert_eq!(map::verify_parameters(&signed, &map_key.public()).unwrap(), params);
    // Signed by someone else.
    let rogue = Signed::sign(kinds::NETWORK_PARAMETERS, &params, &key(4));
    assert!(matches!(map::verify_parameters(&rogue, &map_key.public()), Err(SignedError::WrongSigner { .. })));
    // Tampered after signing.
    let mut tampered = signed.clone();
    let last = tampered.raw.len() - 1;
    tampered.raw[last] ^= 1;
    assert_eq!(map::verify_parameters(&tampered, &map_key.public()), Err(SignedError::BadSignature));
    // A signature over another kind of value does not transfer.
    let mut relabelled = signed.clone();
    relabelled.kind = kinds::REVOCATION_LIST.into();
    assert!(map::verify_parameters(&relabelled, &map_key.public()).is_err());
}

#[test]
fn node_infos_must_be_certified_and_signed_by_the_identity() {
    let v = Validity::from_now(NOW, 5);
    let root = pki::root_ca("O=Root,L=London,C=GB".parse().unwrap(), key(10), v, [1; 16]).unwrap();
    let doorman = root.issue("O=Doorman,L=London,C=GB".parse().unwrap(), key(11), CertRole::DoormanCa, v, [2; 16]).unwrap();
    let name: treaty_core::X500Name = "O=Alice,L=London,C=GB".parse().unwrap();
    let ca = doorman.issue(name.clone(), key(12), CertRole::NodeCa, v, [3; 16]).unwrap();
    let identity = ca.issue(name.clone(), key(13), CertRole::LegalIdentity, v, [4; 16]).unwrap();
    let info = NodeInfo {
        addresses: vec!["127.0.0.1:10001".into()],
        platform_version: 1,
        legal_identity: Party { name, owning_key: identity.key.public() },
        identity_chain: vec![identity.cert.clone(), ca.cert.clone(), doorman.cert.clone()],
        serial: 1,
    };
    let signed = Signed::sign(kinds::NODE_INFO, &info, &identity.key);
    assert_eq!(NodeInfo::verify(&signed, &root.cert, &RevocationList::default(), NOW as u64).unwrap(), info);
    // Claiming another key than the certified one.
    let mut lying = info.clone();
    lying.legal_identity.owning_key = key(99).public();
    let err = NodeInfo::verify(&Signed::sign(kinds::NODE_INFO, &lying, &key(99)), &root.cert, &RevocationList::default(), NOW as u64)
        .unwrap_err();
    assert!(matches!(err, NodeInfoError::Mismatch { .. }), "{err}");
    // Signed by the node CA instead of the identity key.
    let err =
        NodeInfo::verify(&Signed::sign(kinds::NODE_INFO, &info, &ca.key), &root.cert, &RevocationList::default(), NOW as u64).unwrap_err();
    assert!(matches!(err, NodeInfoError::Signature(SignedError::WrongSigner { .. })), "{err}");
    // Against another network's root.
    let other = pki::root_ca("O=Root,L=London,C=GB".parse().unwrap(), key(50), v, [9; 16]).unwrap();
    assert!(matches!(
        NodeInfo::verify(&signed, &other.cert, &RevocationList::default(), NOW as u64).unwrap_err(),
        NodeInfoError::Certificate(_)
    ));
}
