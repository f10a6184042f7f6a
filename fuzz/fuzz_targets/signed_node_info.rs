//! Decodes arbitrary bytes as what the network map and its followers read: a `Signed`
//! document, its node info, and the certificates in the node info's chain (X.509 parsing).
//! Nothing may panic; what decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use treaty_core::encoding;
use treaty_net::map::NodeInfo;
use treaty_net::pki::{self, RevocationList};
use treaty_net::signed::Signed;

fuzz_target!(|data: &[u8]| {
    let Ok(signed) = encoding::decode::<Signed>(data) else { return };
    assert!(encoding::encode(&signed) == data, "Signed re-encoding differs from the decoded bytes");
    let _ = NodeInfo::hash(&signed);
    if let Ok(info) = encoding::decode::<NodeInfo>(&signed.raw) {
        for cert in &info.identity_chain {
            let _ = pki::certificate_name(cert);
        }
        // Verification against a root that is not a certificate must fail cleanly.
        assert!(NodeInfo::verify(&signed, b"not a root", &RevocationList::default(), 1_795_000_000).is_err());
    }
    let _ = encoding::decode::<RevocationList>(&signed.raw);
});
