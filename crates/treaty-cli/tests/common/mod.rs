//! Helpers for tests that run real `treaty` processes: a bootstrapped network in a scratch
//! directory, running processes killed when dropped, and the CLI run as a user would.
//! (Copied from `network.rs`'s helpers, which stay where they are.)

#![allow(dead_code)]

pub mod inproc;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Alice's legal name.
pub const ALICE: &str = "O=Alice,L=London,C=GB";
/// Bob's legal name.
pub const BOB: &str = "O=Bob,L=Paris,C=FR";

/// The `treaty` binary.
pub fn treaty() -> Command {
    Command::new(env!("CARGO_BIN_EXE_treaty"))
}

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("treaty runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `treaty ARGS`: exit code, stdout, stderr.
pub fn run(args: &[&str]) -> (i32, String, String) {
    output(treaty().args(args))
}

/// Runs `treaty ARGS` with extra environment variables.
pub fn run_env(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = treaty();
    for (k, v) in env {
        cmd.env(k, v);
    }
    output(cmd.args(args))
}

/// Runs `treaty ARGS` as an RPC user with a password.
pub fn run_as(user: &str, password: &str, args: &[&str]) -> (i32, String, String) {
    run_env(&[("TREATY_RPC_USER", user), ("TREATY_RPC_PASSWORD", password)], args)
}

/// Parses a command's JSON output, saying what it was when it is not JSON.
pub fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

pub use treaty_testkit::Scratch;

/// A bootstrapped network in a scratch directory, removed at the end.
pub struct Net {
    /// The network's directory.
    pub dir: PathBuf,
}

impl Net {
    /// Bootstraps `nodes` into a fresh directory named after `test`.
    pub fn new(test: &str, nodes: &[&str]) -> Net {
        let dir = std::env::temp_dir().join(format!("treaty-rpc-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut args = vec!["network", "bootstrap", "--dir", dir.to_str().unwrap(), "--json"];
        for n in nodes {
            args.extend(["--node", n]);
        }
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "bootstrap failed: {err}");
        Net { dir }
    }

    /// Bootstraps `nodes` and a single notary `notary` into a fresh directory named after `test`.
    pub fn with_notary(test: &str, nodes: &[&str], notary: &str) -> Net {
        Net::with_notary_cluster(test, nodes, notary, 1)
    }

    /// Bootstraps `nodes` and the notary `notary`, hosted by `members` nodes (a cluster when
    /// more than one: their names are `CN=Replica i,` before the notary's).
    pub fn with_notary_cluster(test: &str, nodes: &[&str], notary: &str, members: u32) -> Net {
        let dir = std::env::temp_dir().join(format!("treaty-rpc-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let members = members.to_string();
        let mut args =
            vec!["network", "bootstrap", "--dir", dir.to_str().unwrap(), "--json", "--notary", notary, "--notary-cluster", &members];
        for n in nodes {
            args.extend(["--node", n]);
        }
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "bootstrap failed: {err}");
        Net { dir }
    }

    /// The directory of the node `legal`.
    pub fn node_dir(&self, legal: &str) -> PathBuf {
        // As bootstrap names them: the organisation, then any common name, lower case, with
        // dashes for anything but letters and digits.
        let name: treaty_core::X500Name = legal.parse().unwrap();
        let slug = |s: &str| s.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect::<String>();
        let mut stem = slug(name.organisation());
        if let Some(cn) = name.common_name() {
            stem = format!("{stem}-{}", slug(cn));
        }
        let d = self.dir.join(stem.trim_matches('-'));
        assert!(d.join("node.toml").exists(), "no node directory {}", d.display());
        d
    }

    /// `node_dir` as a string, for command lines.
    pub fn node(&self, legal: &str) -> String {
        self.node_dir(legal).to_str().unwrap().to_string()
    }

    /// The node's node.toml as TOML.
    pub fn config(&self, legal: &str) -> toml::Value {
        toml::from_str(&std::fs::read_to_string(self.node_dir(legal).join("node.toml")).unwrap()).unwrap()
    }

    /// Edits the node's node.toml text.
    pub fn edit_config(&self, legal: &str, edit: impl FnOnce(String) -> String) {
        let path = self.node_dir(legal).join("node.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(text)).unwrap();
    }

    /// Starts the network map.
    pub fn map(&self) -> Proc {
        Proc::start("network map", treaty().args(["network", "serve-map", "--dir", self.dir.to_str().unwrap()]))
    }

    /// Starts the node `legal`.
    pub fn start(&self, legal: &str) -> Proc {
        let config = self.node_dir(legal).join("node.toml");
        Proc::start(legal, treaty().args(["node", "run", "--config", config.to_str().unwrap()]))
    }

    /// Waits until `who` knows `whom` from the network map.
    pub fn await_known(&self, who: &str, whom: &str) {
        let whom: treaty_core::X500Name = whom.parse().unwrap();
        let whom = whom.to_string();
        eventually(&format!("{who} learns about {whom}"), || {
            let (code, out, _) = run(&["network", "map", "--node", &self.node(who), "--json"]);
            code == 0 && json(&out)["nodes"].as_array().is_some_and(|n| n.iter().any(|n| n["name"] == whom.as_str()))
        });
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Adds an RPC user to the node's node.toml.
pub fn add_user(net: &Net, legal: &str, name: &str, password: Option<&str>, certificate_sha256: Option<&str>, permissions: &[&str]) {
    let mut entry = format!("\n[[rpc.users]]\nname = \"{name}\"\npermissions = {permissions:?}\n");
    if let Some(p) = password {
        entry.push_str(&format!("password_hash = \"{}\"\n", treaty_node::config::hash_password(p).unwrap()));
    }
    if let Some(f) = certificate_sha256 {
        entry.push_str(&format!("certificate_sha256 = \"{f}\"\n"));
    }
    net.edit_config(legal, |text| text + &entry);
}

/// A running `treaty` process, killed when dropped.
pub struct Proc {
    label: String,
    child: Child,
}

impl Proc {
    /// Starts it and waits for its "ready" line.
    pub fn start(label: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starts");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains(" ready ") {
                    let _ = tx.send(());
                }
            }
        });
        let label2 = label.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{label2}] {line}");
            }
        });
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = child.kill();
            panic!("{label} did not become ready");
        }
        Proc { label: label.to_string(), child }
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "{} exited with {status} on SIGTERM", self.label);
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to end on its own.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {within:?}", self.label);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 20 s) until `check` holds.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node's spendable USD in cents (`treaty vault balances --json`, every issuer).
pub fn usd(net: &Net, node: &str) -> u64 {
    balance(net, node, "USD").0
}

/// The node's unconsumed `token` (`treaty vault balances --json`, every issuer): quantity in
/// the smallest unit, and states.
pub fn balance(net: &Net, node: &str, token: &str) -> (u64, u64) {
    let (code, out, err) = run(&["vault", "balances", "--node", &net.node(node), "--json"]);
    assert_eq!(code, 0, "{err}");
    json(&out)
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["token"] == token)
        .fold((0, 0), |(q, n), b| (q + b["raw_quantity"].as_str().unwrap().parse::<u64>().unwrap(), n + b["states"].as_u64().unwrap()))
}
