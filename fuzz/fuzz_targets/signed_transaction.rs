//! Decodes arbitrary bytes as a `SignedTransaction` and checks, for every input that decodes:
//! - the encoding is canonical: re-encoding gives back exactly the input;
//! - the id is stable: decoding the re-encoded bytes gives the same transaction and id;
//! - the wire transaction is canonical all the way down: rebuilding it from its decoded
//!   components (same salt) gives the same bytes and id, so no two byte strings carry the same
//!   transaction under different ids;
//! - checking the signatures present never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use treaty_core::{Limits, SignedTransaction, TransactionBuilder, encoding};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(stx) = SignedTransaction::from_bytes(data, &limits) else { return };

    let re = stx.to_bytes();
    assert!(re == data, "SignedTransaction re-encoding differs from the decoded bytes:\n in  {}\n out {}", hex(data), hex(&re));

    let again = SignedTransaction::from_bytes(&re, &limits).expect("re-encoded SignedTransaction must decode");
    assert_eq!(again.id(), stx.id(), "id changed after a round trip");
    assert_eq!(again, stx, "transaction changed after a round trip");

    let wtx = stx.tx();
    assert!(encoding::encode(wtx) == wtx.bytes(), "WireTransaction re-encoding differs from its stored bytes");
    let c = wtx.components().clone();
    let rebuilt = TransactionBuilder {
        notary: c.notary,
        inputs: c.inputs,
        outputs: c.outputs,
        commands: c.commands,
        attachments: c.attachments,
        time_window: c.time_window,
        references: c.references,
        network_parameters_hash: c.network_parameters_hash,
        summaries: c.summaries,
        kind: c.kind,
    }
    .build(*wtx.privacy_salt())
    .expect("a decoded transaction's components must rebuild");
    assert!(rebuilt.bytes() == wtx.bytes(), "rebuilding from decoded components changed the bytes (a component is not canonical)");
    assert_eq!(rebuilt.id(), wtx.id(), "rebuilding from decoded components changed the id");

    let _ = stx.verify_signatures_present();
    let _ = stx.verify_signatures_except(&[]);
});

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
