//! `treaty bench flows` end to end: its nodes are `treaty node run` processes driven over RPC,
//! every round completes (the report counts them and their latencies), no node process is
//! left behind, and the mistakes a user can make are named.

mod common;

use common::{json, run};

#[test]
fn issue_and_pay_rounds_run_over_node_processes() {
    let (code, out, err) = run(&["bench", "flows", "--scenario", "pay", "--count", "12", "--concurrency", "3", "--json"]);
    assert_eq!(code, 0, "{err}\n{out}");
    let report = json(&out);
    assert_eq!(report["scenario"], "pay", "{report}");
    assert_eq!(report["nodes"], "processes", "{report}");
    assert_eq!(report["flows"], 12, "{report}");
    let (rate, p50, p99) =
        (report["flows_per_sec"].as_f64().unwrap(), report["latency_ms_p50"].as_f64().unwrap(), report["latency_ms_p99"].as_f64().unwrap());
    assert!(rate > 0.0 && p50 > 0.0 && p50 <= p99, "{report}");
    assert!(report["baseline"]["ed25519_sign_verify_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    // One warm-up round ran first, timed apart: it compiled the cash contract on Alice and on
    // Bob, which alone takes longer than 10 ms.
    assert_eq!(report["warmup_flows"], 1, "{report}");
    assert!(report["warmup_seconds"].as_f64().unwrap() > 0.01, "{report}");
    // The nodes were stopped: none still runs from the benchmark's scratch directory.
    let ps = std::process::Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let left: Vec<String> =
        String::from_utf8_lossy(&ps.stdout).lines().filter(|l| l.contains("treaty-bench-flows-")).map(str::to_string).collect();
    assert!(left.is_empty(), "node processes left behind: {left:?}");
}

#[test]
fn the_in_process_mode_says_so() {
    let (code, out, err) =
        run(&["bench", "flows", "--scenario", "issue", "--count", "10", "--concurrency", "2", "--warmup", "0", "--in-process", "--json"]);
    assert_eq!(code, 0, "{err}\n{out}");
    let report = json(&out);
    assert_eq!((report["nodes"].as_str(), report["flows"].as_u64()), (Some("in-process"), Some(10)), "{report}");
    // No warm-up asked for: none ran.
    assert_eq!((report["warmup_flows"].as_u64(), report["warmup_seconds"].as_f64().map(|s| s < 0.01)), (Some(0), Some(true)), "{report}");
}

#[test]
fn bad_arguments_are_named() {
    let (code, _, err) = run(&["bench", "flows", "--scenario", "transfer"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown scenario \"transfer\": pingpong, issue or pay"), "{err}");
    let (code, _, err) = run(&["bench", "flows", "--scenario", "issue", "--count", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--count and --concurrency must be at least 1"), "{err}");
}
