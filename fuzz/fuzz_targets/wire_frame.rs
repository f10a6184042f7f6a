//! Decodes arbitrary bytes as a messaging frame (what a node reads from a peer's connection):
//! whatever decodes must re-encode to exactly the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use treaty_core::encoding;
use treaty_net::messaging::wire::Frame;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = encoding::decode::<Frame>(data) else { return };
    assert!(encoding::encode(&frame) == data, "Frame re-encoding differs from the decoded bytes");
});
