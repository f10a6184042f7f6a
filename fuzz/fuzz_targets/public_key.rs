//! Decodes arbitrary bytes as a `PublicKey` (leaf or composite): whatever decodes must
//! re-encode to exactly the same bytes (one encoding per key), round-trip through its text
//! form, and survive the tree walks without panicking.
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
});
