//! `treaty demo` run as a user runs it: the real binary, its JSON output checked.

use std::process::Command;

use serde_json::Value;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_treaty")).args(args).output().expect("treaty runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn step<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["steps"].as_array().and_then(|s| s.iter().find(|s| s["step"] == name)).unwrap_or_else(|| panic!("no step {name} in {doc}"))
}

#[test]
fn demo_json_reports_every_outcome() {
    let (code, stdout, stderr) = run(&["demo", "--json", "--chain", "20"]);
    assert_eq!(code, 0, "stderr: {stderr}");
    let doc: Value = serde_json::from_str(&stdout).expect("exactly one JSON document on stdout");
    assert_eq!(doc["ok"], true);
    let final_step = step(&doc, "final");
    assert_eq!(final_step["bob"], "300.00");
    assert_eq!(final_step["alice_change"], "700.00");
    assert_eq!(step(&doc, "threshold")["missing"], 1);
    assert_eq!(step(&doc, "double-spend")["refused"], true);
    assert!(step(&doc, "double-spend")["reason"].as_str().unwrap().starts_with("Conflict"));
    assert_eq!(step(&doc, "forgery")["code"], "TX-INVALID-SIGNATURE");
    assert_eq!(step(&doc, "contract")["code"], "TX-CONTRACT-REJECTED");
    assert_eq!(step(&doc, "resolve")["error_without_chain"], "TX-UNRESOLVED-STATE");
    let revealed: Vec<u64> = step(&doc, "tear-off")["revealed_groups"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(!revealed.contains(&1) && !revealed.contains(&2), "the notary must not see outputs (1) or commands (2): {revealed:?}");
    assert_eq!(step(&doc, "chain")["transactions"], 21);
    // The cash contract ran as WebAssembly, compiled once.
    assert!(step(&doc, "sandbox")["fuel"].as_u64().unwrap() > 0);
    assert_eq!(step(&doc, "sandbox")["cached_modules"], 1);
    assert!(step(&doc, "attachment")["module_bytes"].as_u64().unwrap() > 1000);
    // Two real nodes ran a durable flow between them, and the network was removed.
    assert_eq!(step(&doc, "network")["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(step(&doc, "flow")["result"]["echo"], "hello from Alice");
    assert!(step(&doc, "flow")["journal_entries"].as_u64().unwrap() >= 3);
    // And a cash payment through the network's notary, seen in both vaults.
    let cash = step(&doc, "cash");
    assert_eq!((cash["alice_usd"].as_str(), cash["bob_usd"].as_str()), (Some("700.00"), Some("300.00")));
    assert_eq!(cash["notary"], "O=Notary, L=Zurich, C=CH");
    let dir = step(&doc, "network")["dir"].as_str().unwrap();
    assert!(!std::path::Path::new(dir).exists(), "the demo left its temporary network behind in {dir}");
}

#[test]
fn demo_human_report_names_each_stage() {
    let (code, stdout, _) = run(&["demo", "--chain", "5"]);
    assert_eq!(code, 0);
    for needle in [
        "Contract code",
        "WebAssembly sandbox",
        "Identities",
        "issues 1,000.00 USD",
        "notary sees only a tear-off",
        "double spend refused",
        "TX-CONTRACT-REJECTED",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

#[test]
fn unknown_commands_and_flags_fail_with_a_clear_message() {
    let (code, _, stderr) = run(&["demo", "--chain", "many"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("invalid value 'many'"), "{stderr}");
    let (code, _, stderr) = run(&["frobnicate"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("unrecognized subcommand 'frobnicate'"), "{stderr}");
}
