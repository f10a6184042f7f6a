// Builds contract crates to wasm32-unknown-unknown, reproducibly. Shared by build.rs (which
// `include!`s this file) and the reproducibility test (which builds twice and compares).
//
// Reproducible means: same sources, same toolchain → same bytes, whatever the checkout path,
// target directory or CARGO_HOME. The `wasm` profile (workspace Cargo.toml) fixes codegen
// (LTO, one codegen unit, no debug info, stripped); path prefixes that could leak into panic
// locations are remapped to constants here.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The contract crates built, as (package, artifact name).
pub const CONTRACT_CRATES: &[(&str, &str)] =
    &[("treaty-finance-contracts", "treaty_finance_contracts"), ("treaty-test-contracts", "treaty_test_contracts")];

/// Builds every crate in [`CONTRACT_CRATES`] into `target_dir`; returns (artifact, wasm path).
pub fn build_contracts(workspace: &Path, target_dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|_| PathBuf::from("/nonexistent-cargo-home"));
    let flags = [
        format!("--remap-path-prefix={}=/treaty", workspace.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        format!("--remap-path-prefix={}=/target", target_dir.display()),
    ];
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--locked", "--profile", "wasm", "--target", "wasm32-unknown-unknown"])
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\u{1f}"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    // What cargo told this build script about the host build (its cfgs, e.g. a backend chosen
    // in .cargo/config.toml, and its features) is not true of the wasm build: the nested
    // cargo sets these afresh for its own build scripts, but only those that apply, so any
    // left over would leak into them.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("CARGO_CFG_") || k.starts_with("CARGO_FEATURE_")) {
            cmd.env_remove(key);
        }
    }
    for (package, _) in CONTRACT_CRATES {
        cmd.args(["-p", package]);
    }
    let out = cmd.output().map_err(|e| format!("cannot run cargo to build contracts: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("wasm32-unknown-unknown") && stderr.contains("target may not be installed") {
            "\nThe wasm32-unknown-unknown target is missing: run scripts/setup.sh (or `rustup target add wasm32-unknown-unknown`)."
        } else {
            ""
        };
        return Err(format!("building contract modules failed:\n{stderr}{hint}"));
    }
    Ok(CONTRACT_CRATES
        .iter()
        .map(|(_, artifact)| (artifact.to_string(), target_dir.join("wasm32-unknown-unknown/wasm").join(format!("{artifact}.wasm"))))
        .collect())
}
