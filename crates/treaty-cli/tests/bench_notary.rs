//! `treaty bench notary` end to end, over real notary processes: every injected conflict is
//! refused, no state is signed for twice, every signature verifies; and the mistakes a user can
//! make are named.
//!
//! The bench runs `treaty-notary-server` and `treaty-raft-replica` from next to `treaty`; they
//! belong to another package, so this test builds them first. After a workspace test build
//! (`cargo nextest run --workspace`, as `scripts/test.sh` runs) that is a no-op: the build asks
//! for the same units with the same features and settings.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{json, run};
use serde_json::Value;

/// Builds the notary binaries into the directory `treaty` is in (once per test binary).
fn notary_binaries() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let exe = Path::new(env!("CARGO_BIN_EXE_treaty"));
        let profile_dir = exe.parent().ok_or("treaty has no directory")?;
        let target = profile_dir.parent().ok_or("treaty's directory has no parent")?;
        let mut cmd = Command::new(env!("CARGO"));
        // The workspace's tests, not `-p treaty-notary --bins`: features are unified over the
        // packages and targets a build selects, so building the notary package alone resolves
        // other features for shared dependencies and rebuilds them (over five minutes on a
        // clean two-core CI machine, past nextest's limit). This selection is what a workspace
        // test run has just built, so it is fresh then; alone it builds the binaries.
        cmd.args(["build", "--workspace", "--tests"]).current_dir(env!("CARGO_MANIFEST_DIR"));
        // Without what cargo set for this test (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...): build
        // scripts that watch those would make this build, and the next ordinary one, rebuild
        // half the tree. The user's own build settings stay: `CARGO_INCREMENTAL=0` (CI sets
        // it) changes every workspace crate's fingerprint.
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("CARGO_") && !is_build_setting(k)) {
                cmd.env_remove(k);
            }
        }
        cmd.env("CARGO_TARGET_DIR", target);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!("building the notary binaries failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(())
    });
    if let Err(e) = built {
        panic!("{e}");
    }
}

/// Environment variables that configure cargo itself (kept for the nested build), as opposed
/// to those cargo sets for the test it runs.
fn is_build_setting(key: &str) -> bool {
    key == "CARGO_HOME"
        || key == "CARGO_INCREMENTAL"
        || ["CARGO_BUILD_", "CARGO_PROFILE_", "CARGO_TERM_", "CARGO_NET_", "CARGO_HTTP_", "CARGO_REGISTRIES_"]
            .iter()
            .any(|prefix| key.starts_with(prefix))
}

/// Runs `treaty bench notary ARGS --json` and returns its report.
fn bench(args: &[&str]) -> Value {
    notary_binaries();
    let mut all = vec!["bench", "notary"];
    all.extend_from_slice(args);
    all.push("--json");
    let (code, out, err) = run(&all);
    assert_eq!(code, 0, "treaty {}: {err}\n{out}", all.join(" "));
    json(&out)
}

/// The checks every run must pass: what was injected was detected, nothing doubled, every
/// signature good, every request answered.
fn assert_correct(report: &Value, transactions: u64, conflicts: u64) {
    assert_eq!(report["transactions"], transactions, "{report}");
    assert_eq!(report["conflicts_injected"], conflicts, "{report}");
    assert_eq!(report["conflicts_detected"], conflicts, "{report}");
    assert_eq!(report["signed"], transactions - conflicts, "{report}");
    assert_eq!(report["double_commits"], 0, "{report}");
    assert_eq!(report["wrong_winners"], 0, "{report}");
    assert_eq!(report["invalid_signatures"], 0, "{report}");
    assert_eq!(report["unanswered"], 0, "{report}");
    assert_eq!(report["other_refusals"], serde_json::json!({}), "{report}");
    assert!(report["transactions_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["latency_ms_p50"].as_f64().unwrap() <= report["latency_ms_p99"].as_f64().unwrap(), "{report}");
    assert!(report["baseline"]["ed25519_sign_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["baseline"]["ed25519_verify_per_sec"].as_f64().unwrap() > 0.0, "{report}");
}

#[test]
fn single_catches_every_injected_conflict() {
    let report = bench(&["--provider", "single", "--tx", "2000", "--inputs", "1", "--concurrency", "32", "--conflict-rate", "0.1"]);
    assert_correct(&report, 2000, 200);
    assert_eq!(
        (report["provider"].as_str(), report["validating"].as_bool(), report["processes"].as_u64()),
        (Some("single"), Some(false), Some(1))
    );
    assert!(report["batch_signed"].as_u64().unwrap() > 0, "32 in flight: some answers share a batch signature: {report}");
}

#[test]
fn raft_with_three_replica_processes_catches_every_injected_conflict() {
    let report = bench(&["--provider", "raft", "--tx", "500", "--inputs", "2", "--concurrency", "32", "--conflict-rate", "0.1"]);
    assert_correct(&report, 500, 50);
    assert_eq!(report["processes"], 4, "a server and three replicas: {report}");
}

#[test]
fn validating_verifies_and_catches_every_injected_conflict() {
    let report =
        bench(&["--provider", "single", "--validating", "--tx", "300", "--inputs", "2", "--concurrency", "16", "--conflict-rate", "0.2"]);
    assert_correct(&report, 300, 60);
    assert_eq!(report["validating"], true);
}

#[test]
fn postgres_catches_every_injected_conflict() {
    if std::env::var("TREATY_TEST_POSTGRES_URL").is_err() {
        if std::env::var("TREATY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
            panic!("TREATY_REQUIRE_POSTGRES=1 but TREATY_TEST_POSTGRES_URL is not set: eval \"$(scripts/pg.sh start)\"");
        }
        eprintln!("skipped: TREATY_TEST_POSTGRES_URL not set (eval \"$(scripts/pg.sh start)\" to run the PostgreSQL tests)");
        return;
    }
    let report = bench(&["--provider", "postgres", "--tx", "1000", "--inputs", "1", "--concurrency", "32", "--conflict-rate", "0.1"]);
    assert_correct(&report, 1000, 100);
}

#[test]
fn mistakes_are_named() {
    let cases: [(&[&str], &str); 6] = [
        (&["--provider", "paxos", "--tx", "10", "--inputs", "1", "--concurrency", "1"], "unknown provider \"paxos\""),
        (&["--provider", "single", "--tx", "0", "--inputs", "1", "--concurrency", "1"], "--tx must be at least 1"),
        (&["--provider", "single", "--tx", "10", "--inputs", "0", "--concurrency", "1"], "--inputs must be at least 1"),
        (&["--provider", "single", "--tx", "10", "--inputs", "10001", "--concurrency", "1"], "above the notary's limit of 10000"),
        (&["--provider", "single", "--tx", "10", "--inputs", "1", "--concurrency", "1", "--conflict-rate", "1.5"], "outside [0, 1]"),
        (&["--provider", "single", "--tx", "10", "--inputs", "1", "--concurrency", "0"], "--concurrency must be at least 1"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["bench", "notary"];
        all.extend_from_slice(args);
        let (code, _, err) = run(&all);
        assert_ne!(code, 0, "{args:?} must fail");
        assert!(err.contains(expected), "{args:?}: expected {expected:?} in {err:?}");
    }
}

/// A `treaty` without the notary binaries beside it says which file it looked for and how to
/// build it.
#[test]
fn a_missing_notary_binary_is_named_with_the_command_that_builds_it() {
    let dir = std::env::temp_dir().join(format!("treaty-bench-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let alone: PathBuf = dir.join("treaty");
    std::fs::copy(env!("CARGO_BIN_EXE_treaty"), &alone).unwrap();
    let out = Command::new(&alone)
        .args(["bench", "notary", "--provider", "single", "--tx", "10", "--inputs", "1", "--concurrency", "1"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("treaty-notary-server not found at {}", dir.join("treaty-notary-server").display())), "{err}");
    assert!(err.contains("cargo build") && err.contains("-p treaty-notary --bins"), "{err}");
}
