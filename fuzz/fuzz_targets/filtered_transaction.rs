//! Decodes arbitrary bytes as a `FilteredTransaction` (a tear-off) and runs its checks and
//! accessors: none of them may panic, whatever the proof claims. Whatever decodes must also
//! re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use treaty_core::{ComponentGroup, FilteredTransaction, encoding};

fuzz_target!(|data: &[u8]| {
    let Ok(ftx) = encoding::decode::<FilteredTransaction>(data) else { return };
    assert!(encoding::encode(&ftx) == data, "FilteredTransaction re-encoding differs from the decoded bytes");

    let verified = ftx.verify().is_ok();
    let _ = ftx.check_all_visible(ComponentGroup::Inputs);
    for g in FilteredTransaction::NOTARY_GROUPS {
        let _ = ftx.check_all_visible(g);
    }
    if verified {
        let _ = ftx.inputs();
        let _ = ftx.references();
        let _ = ftx.notary();
        let _ = ftx.time_window();
        let _ = ftx.network_parameters_hash();
        let _ = ftx.commands();
        let _ = ftx.summaries();
    }
});
