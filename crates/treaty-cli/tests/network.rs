//! Real networks: `treaty` processes on 127.0.0.1 with real certificates, mutual TLS and
//! SQLite, as an operator runs them. Each test bootstraps its own network (random ports).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use treaty_core::{X500Name, encoding};
use treaty_net::messaging::wire::{Frame, PROTOCOL_VERSION, WireMessage};
use treaty_net::messaging::{MessageId, MessageStore};
use treaty_net::transport;
use treaty_node::keys::NodeKeys;
use treaty_node::node::{PING, PONG};
use treaty_storage::Database;

const ALICE: &str = "O=Alice,L=London,C=GB";
const BOB: &str = "O=Bob,L=Paris,C=FR";

fn treaty() -> Command {
    Command::new(env!("CARGO_BIN_EXE_treaty"))
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = treaty().args(args).output().expect("treaty runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn name(s: &str) -> X500Name {
    s.parse().unwrap()
}

/// A bootstrapped network in a scratch directory, removed at the end.
struct Net {
    dir: PathBuf,
}

impl Net {
    fn new(test: &str, nodes: &[&str]) -> Net {
        let dir = std::env::temp_dir().join(format!("treaty-net-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut args = vec!["network", "bootstrap", "--dir", dir.to_str().unwrap(), "--json"];
        for n in nodes {
            args.extend(["--node", n]);
        }
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "bootstrap failed: {err}");
        Net { dir }
    }

    fn node_dir(&self, legal: &str) -> PathBuf {
        let org = legal.split(',').next().unwrap().trim_start_matches("O=").to_lowercase();
        let d = self.dir.join(&org);
        assert!(d.join("node.toml").exists(), "no node directory {}", d.display());
        d
    }

    fn p2p(&self, legal: &str) -> String {
        let text = std::fs::read_to_string(self.node_dir(legal).join("node.toml")).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        v["p2p"]["listen"].as_str().unwrap().to_string()
    }

    fn map(&self) -> Proc {
        Proc::start("network map", treaty().args(["network", "serve-map", "--dir", self.dir.to_str().unwrap()]))
    }

    fn node(&self, legal: &str) -> Proc {
        let config = self.node_dir(legal).join("node.toml");
        Proc::start(legal, treaty().args(["node", "run", "--config", config.to_str().unwrap()]))
    }

    /// The node's map, as `treaty network map --json` prints it.
    fn map_of(&self, legal: &str) -> Value {
        let (code, out, err) = run(&["network", "map", "--node", self.node_dir(legal).to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Waits until `who` knows `whom` (optionally: as revoked).
    fn await_known(&self, who: &str, whom: &str, revoked: bool) {
        let whom = name(whom).to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let map = self.map_of(who);
            let entry = map["nodes"].as_array().unwrap().iter().find(|n| n["name"] == whom.as_str()).cloned();
            if entry.is_some_and(|e| e["revoked"] == revoked) {
                return;
            }
            assert!(Instant::now() < deadline, "{who} did not learn about {whom} (revoked: {revoked}): {map}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ping(&self, from: &str, to: &str, count: usize, timeout_secs: u64) -> (i32, Value, String) {
        let count = count.to_string();
        let timeout = timeout_secs.to_string();
        let dir = self.node_dir(from);
        let (code, out, err) =
            run(&["node", "ping", "--node", dir.to_str().unwrap(), "--to", to, "--count", &count, "--timeout", &timeout, "--json"]);
        (code, serde_json::from_str(&out).unwrap_or(Value::Null), err)
    }

    fn db(&self, legal: &str, rt: &tokio::runtime::Runtime) -> Database {
        rt.block_on(Database::open("sqlite://node.db", &self.node_dir(legal))).unwrap()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A running `treaty` process, killed when dropped.
struct Proc {
    label: String,
    child: Child,
}

impl Proc {
    /// Starts it and waits for its "ready" line.
    fn start(label: &str, cmd: &mut Command) -> Proc {
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
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status} on SIGTERM", self.label);
                return;
            }
            assert!(Instant::now() < deadline, "{} did not stop on SIGTERM", self.label);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to flush anything.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Proc {
    /// Starts a node that will abort at a failpoint; returns without waiting for readiness
    /// beyond the ready line.
    fn start_with_env(label: &str, cmd: &mut Command, key: &str, value: &str) -> Proc {
        Proc::start(label, cmd.env(key, value))
    }

    /// Waits for the process to end on its own (a failpoint).
    fn wait_exit(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not stop at its failpoint", self.label);
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

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Pongs `legal` has received (each answers one ping that was processed).
fn pongs(net: &Net, legal: &str, rt: &tokio::runtime::Runtime) -> usize {
    let db = net.db(legal, rt);
    rt.block_on(db.messages().inbox(Some(PONG))).unwrap().len()
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn network_run_starts_everything_and_stops_everything() {
    let net = Net::new("run", &[ALICE, BOB]);
    let mut child = treaty()
        .args(["network", "run", "--dir", net.dir.to_str().unwrap(), "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let report: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).expect("one JSON document when ready");
    let pids: Vec<u64> = report["processes"].as_array().unwrap().iter().map(|p| p["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 3, "{report}");
    net.await_known(ALICE, BOB, false);
    net.await_known(BOB, ALICE, false);
    let (code, ping, err) = net.ping(ALICE, BOB, 20, 20);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ping["delivered"], 20);
    let rt = rt();
    eventually("every ping answered", || pongs(&net, ALICE, &rt) == 20);
    // Alice recorded Bob's well-known identity, certified, from the map.
    let bob = rt.block_on(net.db(ALICE, &rt).identities().by_name(&name(BOB))).unwrap().expect("Bob's identity recorded");
    assert_eq!(bob.certificate_chain.len(), 3);

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "network run exited with {status}");
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid), "process {pid} still running");
    }
}

fn is_zombie(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)
}

#[test]
fn a_message_for_a_stopped_node_is_delivered_when_it_starts_even_if_the_sender_was_killed() {
    let net = Net::new("down", &[ALICE, BOB]);
    let _map = net.map();
    let alice = net.node(ALICE);
    let bob = net.node(BOB);
    net.await_known(ALICE, BOB, false);
    bob.stop();

    let (code, ping, err) = net.ping(ALICE, BOB, 5, 1);
    assert_ne!(code, 0, "delivered to a stopped node?");
    assert!(err.contains("still in the outbox"), "{err}");
    assert_eq!(ping["delivered"], 0);
    // The sender dies without warning with the messages in its outbox.
    alice.kill();

    let _bob = net.node(BOB);
    let rt = rt();
    assert_eq!(pongs(&net, ALICE, &rt), 0);
    let _alice = net.node(ALICE);
    eventually("pings delivered after both restarted", || {
        rt.block_on(net.db(ALICE, &rt).messages().outbox(&name(BOB), 100)).unwrap().is_empty()
    });
    eventually("each ping answered once", || pongs(&net, ALICE, &rt) == 5);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pongs(&net, ALICE, &rt), 5);
}

/// Alice's TLS identity, for a test that talks the wire protocol itself.
fn as_node(net: &Net, legal: &str) -> NodeKeys {
    NodeKeys::load(&net.node_dir(legal)).unwrap()
}

async fn send_batch(addr: &str, keys: &NodeKeys, to: &str, messages: Vec<WireMessage>) -> Result<Frame, String> {
    let mut tls = transport::connect(addr, &keys.tls, &name(to)).await.map_err(|e| e.to_string())?;
    let frame = encoding::encode(&Frame::Messages { version: PROTOCOL_VERSION, messages });
    transport::write_frame(&mut tls, &frame).await.map_err(|e| e.to_string())?;
    let reply = transport::read_frame(&mut tls, 1 << 20).await.map_err(|e| e.to_string())?;
    encoding::decode(&reply).map_err(|e| e.to_string())
}

#[test]
fn a_redelivered_message_is_processed_once_and_an_oversized_frame_only_loses_its_connection() {
    let net = Net::new("dedup", &[ALICE, BOB]);
    let _map = net.map();
    let _bob = net.node(BOB);
    let rt = rt();
    let alice = as_node(&net, ALICE);
    let bob_addr = net.p2p(BOB);
    let ping = WireMessage { id: MessageId::random(), session: 7, topic: PING.into(), payload: b"once".to_vec() };

    rt.block_on(async {
        // An oversized frame: Bob drops that connection without reading it.
        let mut big = transport::connect(&bob_addr, &alice.tls, &name(BOB)).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut big, &(11u32 << 20).to_be_bytes()).await.unwrap();
        let answer = transport::read_frame(&mut big, 1 << 20).await;
        assert!(answer.is_err(), "Bob answered an oversized frame: {answer:?}");

        // The same message twice, on two connections: both acknowledged.
        for _ in 0..2 {
            match send_batch(&bob_addr, &alice, BOB, vec![ping.clone()]).await {
                Ok(Frame::Ack(ids)) => assert_eq!(ids, vec![ping.id]),
                other => panic!("expected an acknowledgement, got {other:?}"),
            }
        }
    });
    // Bob answered it once: one pong waits in Bob's outbox for Alice (who is not running).
    let bob_db = net.db(BOB, &rt);
    eventually("Bob answered the ping", || !rt.block_on(bob_db.messages().outbox(&name(ALICE), 10)).unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let pongs = rt.block_on(bob_db.messages().outbox(&name(ALICE), 10)).unwrap();
    assert_eq!(pongs.len(), 1, "a redelivered message was processed twice");
    assert_eq!(&pongs[0].payload[..16], ping.id.received_from(&name(ALICE)).0.as_bytes());
    let inbox = rt.block_on(bob_db.messages().inbox(Some(PING))).unwrap();
    assert_eq!(inbox.len(), 1);
}

#[test]
fn strangers_impostors_and_revoked_nodes_are_refused() {
    let net = Net::new("refuse", &[ALICE, BOB, "O=Carol,L=Rome,C=IT"]);
    let other = Net::new("refuse-other", &["O=Eve,L=Oslo,C=NO"]);
    let _map = net.map();
    let _bob = net.node(BOB);
    let _alice = net.node(ALICE);
    let _eve_map = other.map();
    let _eve = other.node("O=Eve,L=Oslo,C=NO");
    let rt = rt();
    let bob_addr = net.p2p(BOB);
    let eve_addr = other.p2p("O=Eve,L=Oslo,C=NO");
    let alice = as_node(&net, ALICE);
    let eve = as_node(&other, "O=Eve,L=Oslo,C=NO");
    let hello = || vec![WireMessage { id: MessageId::random(), session: 1, topic: "test".into(), payload: vec![] }];
    rt.block_on(async {
        assert!(matches!(send_batch(&bob_addr, &alice, BOB, hello()).await, Ok(Frame::Ack(_))), "Alice should get through");
        // Another network's node, both ways round.
        let e = send_batch(&bob_addr, &eve, BOB, hello()).await.unwrap_err();
        assert!(!e.is_empty(), "Eve got into Bob's network");
        let e = send_batch(&eve_addr, &alice, "O=Eve,L=Oslo,C=NO", hello()).await.unwrap_err();
        assert!(e.contains("certificate"), "Alice accepted another network's node: {e}");
        // Bob's address, but Alice expects Carol there.
        let e = send_batch(&bob_addr, &alice, "O=Carol,L=Rome,C=IT", hello()).await.unwrap_err();
        assert!(e.contains("Bob") || e.contains("certificate"), "{e}");
    });
    // The operator revokes Alice; once Bob has polled the map he refuses her.
    net.await_known(BOB, ALICE, false);
    net.await_known(ALICE, BOB, false);
    let (code, _, err) = run(&["network", "revoke", "--dir", net.dir.to_str().unwrap(), "--name", ALICE]);
    assert_eq!(code, 0, "{err}");
    net.await_known(BOB, ALICE, true);
    rt.block_on(async {
        let result = send_batch(&bob_addr, &alice, BOB, hello()).await;
        assert!(!matches!(result, Ok(Frame::Ack(_))), "a revoked node got through: {result:?}");
    });
    // Nor does the running Alice node get through any more.
    let (code, ping, _) = net.ping(ALICE, BOB, 1, 3);
    assert_ne!(code, 0, "a revoked node's ping was delivered: {ping}");
}

#[test]
fn with_the_network_map_down_known_nodes_keep_talking_and_restart_from_cache() {
    let net = Net::new("mapdown", &[ALICE, BOB]);
    let map = net.map();
    let _alice = net.node(ALICE);
    let bob = net.node(BOB);
    net.await_known(ALICE, BOB, false);
    net.await_known(BOB, ALICE, false);
    map.kill();

    let (code, _, err) = net.ping(ALICE, BOB, 3, 20);
    assert_eq!(code, 0, "{err}");
    bob.stop();
    let _bob = net.node(BOB);
    let (code, _, err) = net.ping(BOB, ALICE, 3, 20);
    assert_eq!(code, 0, "Bob restarted without the map cannot reach Alice: {err}");
}

#[test]
fn a_node_refuses_network_parameters_not_signed_by_the_key_it_trusts() {
    let net = Net::new("params", &[ALICE]);
    let other = Net::new("params-other", &[BOB]);
    // Alice's directory gets the other network's (validly signed, wrongly signed for her) parameters.
    std::fs::copy(other.node_dir(BOB).join("network-parameters.signed"), net.node_dir(ALICE).join("network-parameters.signed")).unwrap();
    let config = net.node_dir(ALICE).join("node.toml");
    let (code, _, err) = run(&["node", "run", "--config", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("network parameters") && err.contains("only") && err.contains("trusted"), "{err}");
}

#[test]
fn node_run_reports_config_errors_naming_file_and_key() {
    let net = Net::new("badconfig", &[ALICE]);
    let config = net.node_dir(ALICE).join("node.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace("sqlite://node.db", "mysql://nope");
    std::fs::write(&config, text).unwrap();
    let (code, _, err) = run(&["node", "run", "--config", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("node.toml") && err.contains("database.url"), "{err}");
}

/// `GET path` from a node's metrics endpoint: the status code and the body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the metrics endpoint answers");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of the sample `name` (with its labels) in a metrics text, if there.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// With `[metrics] listen` a node serves its counters as Prometheus text: after an Echo flow
/// Alice counts one flow started and completed and her messages acknowledged, Bob one
/// responder and messages received; other paths are 404. A metrics address already in use
/// stops the node with an error naming the key.
#[test]
fn a_node_serves_metrics_that_count_what_it_did() {
    let net = Net::new("metrics", &[ALICE, BOB]);
    let ports = [(ALICE, treaty_testkit::free_port()), (BOB, treaty_testkit::free_port())];
    for (who, port) in ports {
        let config = net.node_dir(who).join("node.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, format!("{text}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
    }
    let _map = net.map();
    let _alice = net.node(ALICE);
    let bob = net.node(BOB);
    net.await_known(ALICE, BOB, false);
    let (status, before) = http_get(ports[0].1, "/metrics");
    assert_eq!(status, 200, "{before}");
    assert_eq!(sample(&before, "treaty_flows_started_total"), Some(0.0), "{before}");
    assert!(before.contains("treaty_node_info{name=\"O=Alice, L=London, C=GB\""), "{before}");
    assert!(sample(&before, "treaty_resident_memory_bytes").is_some_and(|b| b > 1e6), "{before}");

    let args = format!(r#"{{"to": "{BOB}", "message": "counted"}}"#);
    let (code, _, err) =
        run(&["flow", "start", "--node", net.node_dir(ALICE).to_str().unwrap(), "Echo", "--args", &args, "--wait", "--json"]);
    assert_eq!(code, 0, "{err}");
    let (_, alice) = http_get(ports[0].1, "/metrics");
    assert_eq!(sample(&alice, "treaty_flows_started_total"), Some(1.0), "{alice}");
    assert_eq!(sample(&alice, "treaty_flows_ended_total{status=\"completed\"}"), Some(1.0), "{alice}");
    assert_eq!(sample(&alice, "treaty_flows_ended_total{status=\"failed\"}"), Some(0.0), "{alice}");
    assert!(sample(&alice, "treaty_messages_acknowledged_total").is_some_and(|n| n >= 1.0), "{alice}");
    eventually("Bob counts the responder", || {
        let (_, bob) = http_get(ports[1].1, "/metrics");
        sample(&bob, "treaty_flows_responders_total") == Some(1.0)
            && sample(&bob, "treaty_messages_received_total").is_some_and(|n| n >= 1.0)
    });
    let (status, body) = http_get(ports[0].1, "/stats");
    assert_eq!(status, 404, "{body}");

    // Bob, restarted with Alice's metrics address (taken: Alice runs), stops naming the key.
    bob.stop();
    let config = net.node_dir(BOB).join("node.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(&format!("127.0.0.1:{}\"", ports[1].1), &format!("127.0.0.1:{}\"", ports[0].1));
    std::fs::write(&config, text).unwrap();
    let (code, _, err) = run(&["node", "run", "--config", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("metrics.listen"), "{err}");
}

/// A fresh PostgreSQL database on the test server (scripts/pg.sh), dropped at the end; `None`
/// (test skipped, said so) when no server is configured and none is required.
struct PgDatabase {
    admin: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create(rt: &tokio::runtime::Runtime) -> Option<PgDatabase> {
        let Ok(admin) = std::env::var("TREATY_TEST_POSTGRES_URL") else {
            assert!(
                !std::env::var("TREATY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1"),
                "TREATY_REQUIRE_POSTGRES=1 but TREATY_TEST_POSTGRES_URL is not set: run scripts/test.sh or eval \"$(scripts/pg.sh start)\""
            );
            eprintln!("skipped: TREATY_TEST_POSTGRES_URL not set (eval \"$(scripts/pg.sh start)\" to run the PostgreSQL tests)");
            return None;
        };
        let name = format!("treaty_node_{}_{}", std::process::id(), rand_suffix());
        rt.block_on(async {
            let pool = sqlx::PgPool::connect(&admin).await.expect("connect to the test PostgreSQL");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.expect("create database");
            pool.close().await;
        });
        let (base, _) = admin.rsplit_once('/').expect("URL has a database path");
        Some(PgDatabase { url: format!("{base}/{name}"), admin, name })
    }

    fn drop_with(self, rt: &tokio::runtime::Runtime) {
        rt.block_on(async {
            let pool = sqlx::PgPool::connect(&self.admin).await.expect("connect to the test PostgreSQL");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))).execute(&pool).await;
            pool.close().await;
        });
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64
}

#[test]
fn a_node_on_postgresql_receives_what_was_sent_while_it_was_down() {
    let rt = rt();
    let Some(pg) = PgDatabase::create(&rt) else { return };
    let net = Net::new("postgres", &[ALICE, BOB]);
    let config = net.node_dir(BOB).join("node.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace("sqlite://node.db", &pg.url);
    std::fs::write(&config, text).unwrap();
    let _map = net.map();
    let _alice = net.node(ALICE);
    let bob = net.node(BOB);
    net.await_known(ALICE, BOB, false);
    let (code, _, err) = net.ping(ALICE, BOB, 10, 20);
    assert_eq!(code, 0, "{err}");
    bob.stop();
    let (code, _, _) = net.ping(ALICE, BOB, 5, 1);
    assert_ne!(code, 0, "delivered to a stopped node?");
    let _bob = net.node(BOB);
    eventually("pings delivered to Bob on PostgreSQL", || pongs(&net, ALICE, &rt) == 15);
    let bob_db = rt.block_on(Database::open(&pg.url, &net.node_dir(BOB))).unwrap();
    assert_eq!(rt.block_on(bob_db.messages().inbox(Some(PING))).unwrap().len(), 15);
    rt.block_on(bob_db.close());
    drop(_bob);
    pg.drop_with(&rt);
}

#[test]
fn flows_start_list_and_fail_clearly_through_the_cli() {
    let net = Net::new("flows", &[ALICE, BOB]);
    let _map = net.map();
    let _alice = net.node(ALICE);
    let _bob = net.node(BOB);
    net.await_known(ALICE, BOB, false);
    let alice = net.node_dir(ALICE);
    let node = alice.to_str().unwrap();

    let args = format!(r#"{{"to": "{BOB}", "message": "hi Bob"}}"#);
    let (code, out, err) = run(&["flow", "start", "--node", node, "Echo", "--args", &args, "--wait", "--json", "--client-id", "c-1"]);
    assert_eq!(code, 0, "{err}");
    let flow: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(flow["status"], "COMPLETED");
    assert_eq!(flow["result"]["echo"], "hi Bob");
    assert_eq!(flow["progress"], serde_json::json!(["sending", "answered"]));
    // The same client id: the same flow, not a second one.
    let (code, out, _) = run(&["flow", "start", "--node", node, "Echo", "--args", &args, "--json", "--client-id", "c-1"]);
    assert_eq!(code, 0);
    let again: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["flow_id"], flow["flow_id"]);

    // Bad requests: each names what is wrong, and the node carries on.
    let (code, _, err) = run(&["flow", "start", "--node", node, "Ecko", "--args", "{}"]);
    assert_ne!(code, 0);
    assert!(err.contains("no flow named \"Ecko\"") && err.contains("Echo"), "{err}");
    let (code, _, err) = run(&["flow", "start", "--node", node, "Echo", "--args", "{not json"]);
    assert_ne!(code, 0);
    assert!(err.contains("--args is not valid JSON"), "{err}");
    let (code, _, err) = run(&["flow", "start", "--node", node, "Echo", "--args", &format!(r#"{{"to": "{BOB}"}}"#)]);
    assert_ne!(code, 0);
    assert!(err.contains("arguments of flow Echo") && err.contains("message"), "{err}");
    let (code, _, err) = run(&["flow", "kill", "--node", node, flow["flow_id"].as_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("already ended"), "{err}");

    let (code, out, err) = run(&["flow", "list", "--node", node, "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["flows"].as_array().unwrap().len(), 1, "{list}");
    // Bob ran the responder.
    let (code, out, _) = run(&["flow", "list", "--node", net.node_dir(BOB).to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    let bob: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(bob["flows"][0]["initiator"], "O=Alice, L=London, C=GB");
    assert_eq!(bob["flows"][0]["status"], "COMPLETED");
}

fn run_as(user: &str, password: &str, args: &[&str]) -> (i32, String, String) {
    let out = treaty().args(args).env("TREATY_RPC_USER", user).env("TREATY_RPC_PASSWORD", password).output().expect("treaty runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn rpc_users_authenticate_and_hold_only_their_permissions() {
    let net = Net::new("rpcauth", &[ALICE, BOB]);
    // A second user who may only read flows.
    let config = net.node_dir(ALICE).join("node.toml");
    let hash = treaty_node::config::hash_password("viewer-secret").unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[[rpc.users]]\nname = \"viewer\"\npassword_hash = \"{hash}\"\npermissions = [\"ReadFlows\"]\n"));
    std::fs::write(&config, text).unwrap();
    let _map = net.map();
    let _alice = net.node(ALICE);
    let node = net.node_dir(ALICE);
    let node = node.to_str().unwrap();
    let args = format!(r#"{{"to": "{BOB}", "message": "x"}}"#);

    let (code, _, err) = run_as("admin", "not-the-password", &["flow", "list", "--node", node]);
    assert_ne!(code, 0);
    assert!(err.contains("wrong user name or password"), "{err}");
    let (code, _, err) = run_as("viewer", "viewer-secret", &["flow", "start", "--node", node, "Echo", "--args", &args]);
    assert_ne!(code, 0);
    assert!(err.contains("\"viewer\" lacks permission StartFlow.Echo"), "{err}");
    let (code, out, err) = run_as("viewer", "viewer-secret", &["flow", "list", "--node", node, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"flows\": []"), "{out}");
}

#[test]
fn an_unknown_rpc_permission_is_a_config_error_naming_it() {
    let net = Net::new("badperm", &[ALICE]);
    let config = net.node_dir(ALICE).join("node.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace("\"ALL\"", "\"EVERYTHING\"");
    std::fs::write(&config, text).unwrap();
    let (code, _, err) = run(&["node", "run", "--config", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("rpc.users") && err.contains("unknown permission \"EVERYTHING\""), "{err}");
}

#[test]
fn flow_commands_say_when_the_node_is_not_running() {
    let net = Net::new("norpc", &[ALICE]);
    let (code, _, err) = run(&["flow", "list", "--node", net.node_dir(ALICE).to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("is the node running?"), "{err}");
}

#[test]
fn a_python_grpc_client_starts_a_flow_and_streams_its_progress() {
    let Ok(python) = std::env::var("TREATY_PYTHON") else {
        assert!(
            !std::env::var("TREATY_REQUIRE_PYTHON").is_ok_and(|v| v == "1"),
            "TREATY_REQUIRE_PYTHON=1 but TREATY_PYTHON is not set: run scripts/test.sh, or TREATY_PYTHON=$(scripts/python-env.sh)"
        );
        eprintln!("skipped: TREATY_PYTHON not set (TREATY_PYTHON=$(scripts/python-env.sh) to run the Python client test)");
        return;
    };
    let net = Net::new("python", &[ALICE, BOB]);
    let _map = net.map();
    let _alice = net.node(ALICE);
    let _bob = net.node(BOB);
    net.await_known(ALICE, BOB, false);
    let text = std::fs::read_to_string(net.node_dir(ALICE).join("node.toml")).unwrap();
    let config: toml::Value = toml::from_str(&text).unwrap();
    let rpc = config["rpc"]["listen"].as_str().unwrap().to_string();
    let password = std::fs::read_to_string(net.node_dir(ALICE).join("rpc-password")).unwrap().trim().to_string();
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto = here.join("../treaty-rpc/proto");
    let out = Command::new(python)
        .arg(here.join("tests/python/echo_client.py"))
        .args([
            proto.to_str().unwrap(),
            &rpc,
            "admin",
            &password,
            BOB,
            "from Python",
            net.node_dir(ALICE).join("certs/root.der").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["node"], "O=Alice, L=London, C=GB");
    assert_eq!(report["status"], "COMPLETED", "{report}");
    assert_eq!(report["result"]["echo"], "from Python");
    assert_eq!(report["progress"], serde_json::json!(["sending", "answered"]));
    assert_eq!(report["unknown_flow_error"]["code"], "NOT_FOUND", "{report}");
}

/// Kills Alice's node (abort, as SIGKILL) right after each journal write of an Echo flow in
/// turn, and Bob's after each of his responder's: after a restart the flow completes once,
/// and Bob's responder saw Alice's message once.
#[test]
fn a_two_party_flow_killed_at_every_step_finishes_exactly_once() {
    let net = Net::new("failpoints", &[ALICE, BOB]);
    let _map = net.map();
    let args = format!(r#"{{"to": "{BOB}", "message": "once"}}"#);
    let alice_dir = net.node_dir(ALICE);
    let bob_dir = net.node_dir(BOB);
    let (alice_cfg, bob_cfg) = (alice_dir.join("node.toml"), bob_dir.join("node.toml"));
    // Alice writes her Echo's journal twice: at the receive (progress, open and send, pending
    // until then, with it) and at the end (the last progress, with the status). Bob twice: at
    // the receive, and at the end (his send with the status).
    let cases: Vec<(&str, u64)> = (1..=2).map(|n| ("alice", n)).chain((1..=2).map(|n| ("bob", n))).collect();
    let mut bob_flows_before = 0;
    let mut from_alice_before = 0;
    for (round, (who, n)) in cases.into_iter().enumerate() {
        let client_id = format!("round-{round}");
        let node = |dir: &Path, cfg: &Path, victim: bool| {
            let mut cmd = treaty();
            cmd.args(["node", "run", "--config", cfg.to_str().unwrap()]);
            let label = dir.file_name().unwrap().to_string_lossy().into_owned();
            if victim {
                Proc::start_with_env(&label, &mut cmd, "TREATY_FAILPOINT_AFTER_JOURNAL", &n.to_string())
            } else {
                Proc::start(&label, &mut cmd)
            }
        };
        let alice = node(&alice_dir, &alice_cfg, who == "alice");
        let bob = node(&bob_dir, &bob_cfg, who == "bob");
        net.await_known(ALICE, BOB, false);
        let (code, out, err) =
            run(&["flow", "start", "--node", alice_dir.to_str().unwrap(), "Echo", "--args", &args, "--client-id", &client_id, "--json"]);
        // Alice may die at her failpoint before the answer leaves her node: then the client
        // learns the flow's id by starting it again with the same client id after the restart.
        let id = if code == 0 {
            Some(serde_json::from_str::<Value>(&out).unwrap()["flow_id"].as_str().unwrap().to_string())
        } else {
            assert!(who == "alice" && err.contains("transport error"), "{err}");
            None
        };
        // The victim dies at its failpoint; the other is stopped; both come back.
        let (victim, other) = if who == "alice" { (alice, bob) } else { (bob, alice) };
        let status = victim.wait_exit();
        assert!(!status.success(), "{who} should have died at journal write {n}");
        other.stop();
        let _alice = net.node(ALICE);
        let _bob = net.node(BOB);
        let (code, out, err) = run(&[
            "flow",
            "start",
            "--node",
            alice_dir.to_str().unwrap(),
            "Echo",
            "--args",
            &args,
            "--client-id",
            &client_id,
            "--wait",
            "--json",
        ]);
        assert_eq!(code, 0, "{who} killed after journal write {n}: {err}");
        let flow: Value = serde_json::from_str(&out).unwrap();
        if let Some(id) = &id {
            assert_eq!(flow["flow_id"], id.as_str(), "the client id found another flow");
        }
        let (code, out, _) = run(&["flow", "list", "--node", alice_dir.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0);
        let alice_flows: Value = serde_json::from_str(&out).unwrap();
        let same_client: Vec<&Value> =
            alice_flows["flows"].as_array().unwrap().iter().filter(|f| f["client_id"] == client_id.as_str()).collect();
        assert_eq!(same_client.len(), 1, "one flow for client id {client_id}: {alice_flows}");
        assert_eq!(flow["result"]["echo"], "once");
        // Bob ran exactly one more responder, and it received Alice's message once.
        let (code, out, _) = run(&["flow", "list", "--node", bob_dir.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0);
        let bob_flows: Value = serde_json::from_str(&out).unwrap();
        let flows = bob_flows["flows"].as_array().unwrap();
        assert_eq!(
            flows.len(),
            bob_flows_before + 1,
            "{who} killed after entry {n}: Bob ran {} responders",
            flows.len() - bob_flows_before
        );
        bob_flows_before = flows.len();
        let last = flows.last().unwrap();
        eventually("Bob's responder completes", || {
            let (_, out, _) = run(&["flow", "list", "--node", bob_dir.to_str().unwrap(), "--json"]);
            let v: Value = serde_json::from_str(&out).unwrap();
            v["flows"].as_array().unwrap().iter().any(|f| f["flow_id"] == last["flow_id"] && f["status"] == "COMPLETED")
        });
        let rt = rt();
        let db = net.db(BOB, &rt);
        let pings = rt.block_on(db.messages().inbox(Some(treaty_flows::protocol::FLOW_TOPIC))).unwrap();
        let from_alice = pings.iter().filter(|(m, _)| m.sender == name(ALICE)).count();
        // Each round Alice sends Bob exactly one Init (with the message) and at most one End
        // (none when Bob's own End reached her first: docs/flows.md); no copies.
        let this_round = from_alice - from_alice_before;
        assert!(
            (1..=2).contains(&this_round),
            "{who} killed after entry {n}: Bob's inbox got {this_round} flow messages from Alice this round"
        );
        from_alice_before = from_alice;
    }
}

type Encoded = (treaty_core::SecureHash, Vec<u8>, Vec<treaty_core::SecureHash>);

/// Records `txs` (id, bytes, dependencies) and the chain's attachment in a stopped node's
/// database, as if received.
fn seed_ledger(net: &Net, legal: &str, chain: &treaty_testkit::TokenChain, txs: &[Encoded], rt: &tokio::runtime::Runtime) {
    let db = net.db(legal, rt);
    let txs: Vec<treaty_storage::Recorded> =
        txs.iter().map(|(id, b, d)| treaty_storage::Recorded { id: *id, bytes: b, dependencies: d }).collect();
    rt.block_on(db.transactions().record(&[(chain.attachment_id, &chain.attachment)], &txs)).unwrap();
    rt.block_on(db.close());
}

/// A chain's transactions as recorded: the dependencies always the original's, so a tampered
/// copy keeps its place in the graph.
fn encoded(chain: &treaty_testkit::TokenChain) -> Vec<Encoded> {
    chain.transactions.iter().map(|t| (t.id(), t.to_bytes(), treaty_flows::resolve::dependencies(t))).collect()
}

#[test]
fn a_back_chain_of_1000_resolves_between_nodes_and_a_tampered_transaction_is_named() {
    let net = Net::new("backchain", &[ALICE, BOB]);
    let rt = rt();
    // Alice holds three chains: a sound one of 1,001 transactions; one whose transaction 50
    // carries a forged signature; one whose transaction 30 was replaced by other bytes.
    let sound = treaty_testkit::token_chain(1000, 1).unwrap();
    let forged = treaty_testkit::token_chain(100, 2).unwrap();
    let altered = treaty_testkit::token_chain(100, 3).unwrap();
    let mut txs = encoded(&sound);
    let mut f = encoded(&forged);
    let victim = &forged.transactions[50];
    let stranger = treaty_testkit::token_chain(0, 4).unwrap();
    let sigs = vec![stranger.transactions[0].sigs()[0].clone(), victim.sigs()[1].clone()];
    f[50].1 = treaty_core::SignedTransaction::new(victim.tx().clone(), sigs).to_bytes();
    let mut a = encoded(&altered);
    a[30].1 = stranger.transactions[0].to_bytes();
    txs.extend(f);
    txs.extend(a);
    seed_ledger(&net, ALICE, &sound, &txs, &rt);

    let _map = net.map();
    let _alice = net.node(ALICE);
    let _bob = net.node(BOB);
    net.await_known(ALICE, BOB, false);
    let node = net.node_dir(ALICE);
    let send = |tip: &treaty_core::SecureHash| {
        let args = format!(r#"{{"transaction": "{tip}", "to": "{BOB}"}}"#);
        run(&["flow", "start", "--node", node.to_str().unwrap(), "SendTransaction", "--args", &args, "--wait", "--json"])
    };
    let bob_count = || {
        let db = net.db(BOB, &rt);
        let n = rt.block_on(db.transactions().count()).unwrap();
        rt.block_on(db.close());
        n
    };

    let (code, out, err) = send(&sound.tip().id());
    assert_eq!(code, 0, "{err}");
    let flow: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(flow["result"]["resolved"], 1000, "{flow}");
    assert_eq!(flow["progress"], serde_json::json!(["sending", "recorded by the receiver"]));
    assert_eq!(bob_count(), 1001, "Bob recorded the transaction and its whole back-chain");

    let (code, out, _) = send(&forged.tip().id());
    assert_ne!(code, 0);
    let flow: Value = serde_json::from_str(&out).unwrap();
    let error = flow["error"].as_str().unwrap();
    assert!(error.contains(&victim.id().to_string()) && error.contains("TX-"), "{error}");
    let (code, out, _) = send(&altered.tip().id());
    assert_ne!(code, 0);
    let flow: Value = serde_json::from_str(&out).unwrap();
    let error = flow["error"].as_str().unwrap();
    assert!(error.contains(&altered.transactions[30].id().to_string()) && error.contains("does not match its id"), "{error}");
    assert_eq!(bob_count(), 1001, "nothing of a refused chain was recorded");

    // A transaction Alice does not have: a clear error before anything is sent.
    let (code, _, err) = send(&stranger.tip().id());
    assert_ne!(code, 0);
    assert!(err.contains("no transaction") && err.contains("recorded on this node"), "{err}");
}
