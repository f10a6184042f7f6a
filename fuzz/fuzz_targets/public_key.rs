//! Decodes arbitrary bytes as a `PublicKey` (leaf or composite): whatever decodes must
//! re-encode to exactly the same bytes (one encoding per key), round-trip through its text
//! form, and survive the tree walks and the (lazy, cached) point decompression without
//! panicking: leaves are only checked for a canonical encoding when decoded, so off-curve
//! points get here and must fail `validate()`/`verify()` cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use treaty_core::{PublicKey, encoding};

fuzz_target!(|data: &[u8]| {
    let Ok(key) = encoding::decode::<PublicKey>(data) else { return };
    let re = encoding::encode(&key);
    assert!(re == data, "PublicKey re-encoding differs from the decoded bytes");

    let text = key.to_string();
    let parsed: PublicKey = text.parse().expect("a key's Display form must parse");
    assert_eq!(parsed, key, "Display/FromStr round trip changed the key");

    let leaves = key.leaf_keys();
    assert!(!leaves.is_empty());
    assert!(leaves.iter().all(|l| l.scheme().is_some() && key.contains_leaf(l)));
    assert!(key.is_fulfilled_by(&|_| true), "a key signed by all its leaves must be fulfilled");
    assert!(!key.is_fulfilled_by(&|_| false), "a key signed by none of its leaves must not be fulfilled");
    let _ = key.short();

    let valid = key.validate().is_ok();
    // A second call hits the cached decompression and must agree.
    assert_eq!(key.validate().is_ok(), valid, "validate() changed its answer");
    for leaf in leaves {
        let _ = leaf.verify(b"treaty fuzz", &[0u8; 64]);
    }
    assert!(key.verify(b"treaty fuzz", &[]).is_err(), "an empty signature must never verify");
});
