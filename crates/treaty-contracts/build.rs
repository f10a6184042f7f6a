//! Builds the project's contract crates to WebAssembly (see src/wasm_build.rs) and copies the
//! modules into OUT_DIR for `include_bytes!`.

include!("src/wasm_build.rs");

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().and_then(Path::parent).expect("crate lives at crates/treaty-contracts").to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // A target directory of its own, kept between builds, so the nested cargo never waits on
    // the outer build's lock and rebuilds only what changed.
    let target_root = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace.join("target"));
    let target_dir = target_root.join("wasm-contracts");
    for dir in ["contracts", "apps", "crates/treaty-contract-sdk/src", "crates/treaty-core/src", "Cargo.lock", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-changed=src/wasm_build.rs");
    match build_contracts(&workspace, &target_dir) {
        Ok(modules) => {
            for (artifact, path) in modules {
                let dest = out_dir.join(format!("{artifact}.wasm"));
                if let Err(e) = std::fs::copy(&path, &dest) {
                    panic!("cannot copy {} to {}: {e}", path.display(), dest.display());
                }
            }
        }
        Err(e) => panic!("{e}"),
    }
}
