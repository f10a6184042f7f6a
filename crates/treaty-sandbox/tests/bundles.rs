//! The attachment bundle format: what is accepted, what is refused and why.

mod common;

use std::collections::BTreeMap;

use common::*;
use treaty_core::{SandboxLimits, SecureHash};
use treaty_sandbox::bundle::{self, BundleError, Manifest};

fn limits() -> SandboxLimits {
    SandboxLimits::default()
}

fn raw_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        // Bypass the builder's path checks so hostile paths can be written.
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn manifest_json(m: &Manifest) -> Vec<u8> {
    serde_json::to_vec(m).unwrap()
}

#[test]
fn packing_is_deterministic_and_round_trips() {
    let signer = key(60);
    let files: BTreeMap<String, Vec<u8>> = [("rates/fx.csv".to_string(), b"USD,1".to_vec())].into();
    let m = manifest(&[TOKEN], &["rates/fx.csv"]);
    let a = bundle::pack(&m, Some(treaty_contracts::TEST_CONTRACTS_WASM), &files, &[&signer]);
    let b = bundle::pack(&m, Some(treaty_contracts::TEST_CONTRACTS_WASM), &files, &[&signer]);
    assert_eq!(a, b, "same inputs, same bytes");
    let parsed = bundle::parse(&a, &limits()).unwrap();
    assert_eq!(parsed.id, SecureHash::sha256(&a));
    assert_eq!(parsed.manifest, m);
    assert_eq!(parsed.signers, vec![signer.public()]);
    assert_eq!(&*parsed.files["rates/fx.csv"], b"USD,1");
    assert_eq!(parsed.module.as_deref(), Some(treaty_contracts::TEST_CONTRACTS_WASM));
}

#[test]
fn refusals_name_what_is_wrong() {
    let m = manifest(&[], &["a.txt"]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not a tar", b"definitely not a tar archive, just text that goes on for a while.....".repeat(20), "ATTACHMENT-NOT-ARCHIVE"),
        ("no manifest", raw_tar(&[("data/a.txt", b"x")]), "ATTACHMENT-MANIFEST"),
        ("bad manifest json", raw_tar(&[(bundle::MANIFEST, b"{not json")]), "ATTACHMENT-MANIFEST"),
        (
            "unknown manifest field",
            raw_tar(&[(bundle::MANIFEST, br#"{"name":"x","version":"1","contracts":[],"module":null,"data_files":[],"extra":1}"#)]),
            "ATTACHMENT-MANIFEST",
        ),
        ("listed file missing", raw_tar(&[(bundle::MANIFEST, &manifest_json(&m))]), "ATTACHMENT-MANIFEST"),
        (
            "unlisted entry",
            raw_tar(&[(bundle::MANIFEST, &manifest_json(&m)), ("data/a.txt", b"x"), ("data/b.txt", b"y")]),
            "ATTACHMENT-BAD-ENTRY",
        ),
        ("path traversal", raw_tar(&[(bundle::MANIFEST, &manifest_json(&m)), ("data/../../etc/passwd", b"x")]), "ATTACHMENT-BAD-ENTRY"),
        ("absolute path", raw_tar(&[(bundle::MANIFEST, &manifest_json(&m)), ("/data/a.txt", b"x")]), "ATTACHMENT-BAD-ENTRY"),
        ("contracts without module", raw_tar(&[(bundle::MANIFEST, &manifest_json(&manifest(&[TOKEN], &[])))]), "ATTACHMENT-MANIFEST"),
        ("bad contract name", raw_tar(&[(bundle::MANIFEST, &manifest_json(&manifest(&["bad name!"], &[])))]), "ATTACHMENT-MANIFEST"),
    ];
    for (name, bytes, code) in cases {
        let err = bundle::parse(&bytes, &limits()).expect_err(name);
        assert_eq!(err.code(), code, "{name}: {err}");
    }
}

#[test]
fn a_tampered_signature_or_content_is_refused() {
    let signer = key(61);
    let good = bundle::pack(&manifest(&[], &["a.txt"]), None, &[("a.txt".to_string(), b"hello".to_vec())].into(), &[&signer]);
    assert!(bundle::parse(&good, &limits()).is_ok());
    // Change the data file's content but keep the signature: the content hash no longer matches.
    let pos = good.windows(5).position(|w| w == b"hello").unwrap();
    let mut bad = good.clone();
    bad[pos] = b'j';
    // Fix up the tar header checksum is unnecessary: the content is in the data block.
    let err = bundle::parse(&bad, &limits()).unwrap_err();
    assert!(matches!(err, BundleError::BadSignature(_)), "{err}");
}

#[test]
fn an_oversized_attachment_is_refused_before_parsing() {
    let small = SandboxLimits { max_attachment_bytes: 1024, ..limits() };
    let big = data_bundle(&[("big.bin", &[7u8; 4096])]);
    assert_eq!(bundle::parse(&big, &small).unwrap_err(), BundleError::TooLarge { size: big.len() as u64, limit: 1024 });
}
