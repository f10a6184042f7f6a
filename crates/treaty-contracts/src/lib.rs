//! # treaty-contracts
//!
//! The project's contract modules, compiled to `wasm32-unknown-unknown` by this crate's build
//! script (reproducibly: see `src/wasm_build.rs`) and embedded here as bytes. Package them as
//! attachments with `treaty_sandbox::bundle`.

/// `apps/finance/contract`: `treaty.finance.Cash`, `treaty.finance.Obligation` and
/// `treaty.finance.TimeLock`.
pub const FINANCE_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/treaty_finance_contracts.wasm"));

/// `contracts/test-contracts`: `test.Token`, `test.Panics`, `test.Float`, `test.DataFile`,
/// `test.Spin`, `test.Hog`.
pub const TEST_CONTRACTS_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/treaty_test_contracts.wasm"));

#[cfg(test)]
#[path = "wasm_build.rs"]
mod wasm_build;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_wasm() {
        assert_eq!(&TEST_CONTRACTS_WASM[..4], b"\0asm");
        assert_eq!(&FINANCE_WASM[..4], b"\0asm");
    }

    /// Two clean builds in different target directories give byte-identical modules.
    #[test]
    fn contract_builds_are_reproducible() {
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
        let scratch = std::env::temp_dir().join(format!("treaty-repro-{}", std::process::id()));
        let (a, b) = (scratch.join("first"), scratch.join("second-with-a-longer-path"));
        let first = wasm_build::build_contracts(&workspace, &a).unwrap();
        let second = wasm_build::build_contracts(&workspace, &b).unwrap();
        for ((name, pa), (_, pb)) in first.iter().zip(&second) {
            let (ba, bb) = (std::fs::read(pa).unwrap(), std::fs::read(pb).unwrap());
            assert!(ba == bb, "{name}: builds differ ({} vs {} bytes)", ba.len(), bb.len());
        }
        let _ = std::fs::remove_dir_all(&scratch);
    }
}
