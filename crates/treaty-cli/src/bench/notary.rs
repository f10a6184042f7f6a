//! `treaty bench notary`: notarisations per second from real notary processes on this machine.
//!
//! The bench makes a throw-away PKI (root, doorman, TLS certificates) in a scratch directory,
//! writes configurations and starts `treaty-notary-server` (and, for `--provider raft`, three
//! `treaty-raft-replica` processes it fronts; for `--provider postgres`, a throw-away
//! PostgreSQL). Before the clock starts it builds every request: N transactions with K inputs
//! each, a fraction R of them reusing an input of an earlier one (injected conflicts), each as
//! the notary will see it — a tear-off of the notary's groups, or (validating) the whole signed
//! transaction with the transactions its inputs come from — signed by the requesting party and
//! encoded. Then C requests are kept in flight over a few mutual-TLS connections, each
//! answer's latency measured, until all N are answered. Afterwards, outside the timed region:
//! every signature is verified over its transaction id, conflicts are counted and their named
//! winners checked, and no state may have been signed for twice. The machine's raw Ed25519
//! sign and verify rates are measured in the same run.
//!
//! The processes are stopped (standard input closed, killed if they do not exit) on success,
//! error and Ctrl-C; they also stop by themselves if this process dies, because their standard
//! input closes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rand::Rng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use treaty_core::{
    AttachmentConstraint, Command as TxCommand, FilteredTransaction, KeyPair, PLATFORM_VERSION, Party, PrivacySalt, PublicKey, SecureHash,
    SignatureScheme, SignedTransaction, StateRef, TransactionBuilder, TransactionSignature, TransactionState, WireTransaction, X500Name,
};
use treaty_net::pki::{self, CertRole, CertifiedKey, RevocationList, Validity};
use treaty_net::transport::TlsIdentity;
use treaty_notary::client::{EncodedRequest, NotaryClient};
use treaty_notary::server::{ServerRequest, WholeTransactionRequest};
use treaty_notary::{DEFAULT_MAX_INPUTS, NotarisationRequest, NotaryRefusal, request_signing_bytes};
use treaty_testkit::{TOKEN, Token, TokenCommand};

use super::emit;
use crate::node::{runtime, stop_signal};

/// The notary server's binary.
const SERVER_BIN: &str = "treaty-notary-server";
/// A Raft replica's binary.
const REPLICA_BIN: &str = "treaty-raft-replica";
/// Replicas of a Raft notary.
const REPLICAS: u64 = 3;
/// Connections the requests are spread over (at most one per request in flight).
const CONNECTIONS: usize = 4;
/// Requests notarised before the clock starts (connections, caches, the sandbox's compiled
/// contract, the Raft leader warm up); counted in no figure but checked like the others.
const WARM_UP: usize = 64;
/// How long a process may take to say it listens (a Raft notary waits for a leader).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one request may wait for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Set on Ctrl-C: the preparation of requests, which runs on blocking threads, gives up.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What `treaty bench notary` was asked to do.
pub struct NotaryArgs {
    /// `single`, `raft` or `postgres`.
    pub provider: String,
    /// Whether the notary verifies whole transactions.
    pub validating: bool,
    /// Transactions to notarise.
    pub tx: usize,
    /// Inputs per transaction.
    pub inputs: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Fraction of transactions that reuse an input of an earlier one.
    pub conflict_rate: f64,
    /// The server's `verify_batch` (request signatures per batch check; 0: one by one);
    /// `None`: its default.
    pub verify_batch: Option<usize>,
    /// Print one JSON document.
    pub json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Provider {
    Single,
    Raft,
    Postgres,
}

impl Provider {
    fn parse(s: &str) -> Result<Provider> {
        match s {
            "single" => Ok(Provider::Single),
            "raft" => Ok(Provider::Raft),
            "postgres" => Ok(Provider::Postgres),
            other => bail!("unknown provider {other:?}: use --provider single (redb), raft (three replica processes) or postgres"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Provider::Single => "single",
            Provider::Raft => "raft",
            Provider::Postgres => "postgres",
        }
    }
}

/// Ed25519 on one core of this machine, measured in the same run.
#[derive(Serialize)]
struct SignatureBaseline {
    ed25519_sign_per_sec: f64,
    ed25519_verify_per_sec: f64,
}

impl std::fmt::Display for SignatureBaseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "baseline on this machine: {:.0} Ed25519 signatures/s, {:.0} Ed25519 verifications/s (one core)",
            self.ed25519_sign_per_sec, self.ed25519_verify_per_sec
        )
    }
}

fn signature_baseline() -> Result<SignatureBaseline> {
    let key = KeyPair::from_seed(SignatureScheme::Ed25519, rand::random())?;
    let public = key.public();
    let n = 3000;
    let messages: Vec<[u8; 32]> = (0..n).map(|_| rand::random()).collect();
    let began = Instant::now();
    let signatures: Vec<Vec<u8>> = messages.iter().map(|m| key.sign(m)).collect();
    let sign = n as f64 / began.elapsed().as_secs_f64();
    let began = Instant::now();
    for (m, s) in messages.iter().zip(&signatures) {
        public.verify_uncached(m, s)?;
    }
    let verify = n as f64 / began.elapsed().as_secs_f64();
    Ok(SignatureBaseline { ed25519_sign_per_sec: sign, ed25519_verify_per_sec: verify })
}

/// What one run measured and found.
#[derive(Serialize)]
struct Measured {
    scenario: &'static str,
    provider: &'static str,
    validating: bool,
    /// Notary processes: the server, and the replicas behind it.
    processes: usize,
    transactions: usize,
    inputs: usize,
    concurrency: usize,
    connections: usize,
    conflict_rate: f64,
    /// Average encoded request, bytes.
    request_bytes: usize,
    seconds: f64,
    transactions_per_sec: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    /// Transactions the notary signed.
    signed: usize,
    /// Of those, signed by a batch signature (one signature over many ids, each with its proof).
    batch_signed: usize,
    conflicts_injected: usize,
    conflicts_detected: usize,
    /// States signed for by two different transactions (must be 0).
    double_commits: usize,
    /// Conflicts naming as the winner a transaction that was not signed for that state (must be 0).
    wrong_winners: usize,
    /// Signatures that do not verify over their transaction id with the notary's key (must be 0).
    invalid_signatures: usize,
    /// Refusals other than conflicts, by code (must be none).
    other_refusals: BTreeMap<String, usize>,
    /// Requests that got no answer (connection lost, timeout; must be 0).
    unanswered: usize,
}

/// The report: what was measured, and this machine's baseline.
#[derive(Serialize)]
struct NotaryReport {
    #[serde(flatten)]
    measured: Measured,
    baseline: SignatureBaseline,
}

impl Measured {
    /// What is wrong with the outcome, if anything.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.conflicts_detected != self.conflicts_injected {
            p.push(format!("{} conflicts injected but {} detected", self.conflicts_injected, self.conflicts_detected));
        }
        if self.double_commits > 0 {
            p.push(format!("{} states were signed for by two transactions", self.double_commits));
        }
        if self.wrong_winners > 0 {
            p.push(format!("{} conflicts named a winner that was not signed for the state", self.wrong_winners));
        }
        if self.invalid_signatures > 0 {
            p.push(format!("{} signatures do not verify", self.invalid_signatures));
        }
        if !self.other_refusals.is_empty() {
            p.push(format!("refusals other than conflicts: {:?}", self.other_refusals));
        }
        if self.unanswered > 0 {
            p.push(format!("{} requests got no answer", self.unanswered));
        }
        p
    }
}

/// `treaty bench notary`.
pub fn notary(args: &NotaryArgs) -> Result<()> {
    let provider = Provider::parse(&args.provider)?;
    if args.tx == 0 {
        bail!("--tx must be at least 1");
    }
    if args.inputs == 0 {
        bail!("--inputs must be at least 1: a transaction without inputs has nothing for the notary to commit");
    }
    if args.inputs > DEFAULT_MAX_INPUTS {
        bail!("--inputs {} is above the notary's limit of {DEFAULT_MAX_INPUTS} inputs per transaction", args.inputs);
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.conflict_rate) {
        bail!(
            "--conflict-rate {} is outside [0, 1]: it is the fraction of transactions that reuse an input of an earlier one",
            args.conflict_rate
        );
    }
    let bins =
        Binaries { server: sibling(SERVER_BIN)?, replica: if provider == Provider::Raft { Some(sibling(REPLICA_BIN)?) } else { None } };
    let scratch = std::env::temp_dir().join(format!("treaty-bench-notary-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    let runtime = runtime()?;
    let result = runtime.block_on(async {
        let mut processes = Processes::default();
        let outcome = tokio::select! {
            r = run(args, provider, &bins, &scratch, &mut processes) => r,
            r = stop_signal() => {
                INTERRUPTED.store(true, Ordering::Relaxed);
                r.and(Err(anyhow!("interrupted; the notary processes were stopped")))
            }
        };
        processes.stop().await;
        let measured = outcome?;
        // Measured with the notary processes gone, so they take nothing from it.
        let baseline = tokio::task::spawn_blocking(signature_baseline).await??;
        Ok::<_, anyhow::Error>(NotaryReport { measured, baseline })
    });
    // Preparing requests (on blocking threads) stops at the next request once interrupted;
    // do not wait for it.
    runtime.shutdown_background();
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    let m = &report.measured;
    let kind = if m.validating { "validating" } else { "non-validating" };
    let line = format!(
        "{} {kind} notary, {} process(es): {} transactions of {} input(s), {} in flight over {} connection(s): {:.2} s, {:.0} tx/s, \
         latency p50 {:.2} ms, p99 {:.2} ms\nconflicts injected {}, detected {}; double commits {}; {} signatures checked \
         ({} batch-signed), {} invalid",
        m.provider,
        m.processes,
        m.transactions,
        m.inputs,
        m.concurrency,
        m.connections,
        m.seconds,
        m.transactions_per_sec,
        m.latency_ms_p50,
        m.latency_ms_p99,
        m.conflicts_injected,
        m.conflicts_detected,
        m.double_commits,
        m.signed,
        m.batch_signed,
        m.invalid_signatures
    );
    emit(args.json, &report, &report.baseline, &line)?;
    let problems = report.measured.problems();
    if !problems.is_empty() {
        bail!("the notary's answers are wrong: {}", problems.join("; "));
    }
    Ok(())
}

/// The notary binaries, found next to `treaty`.
struct Binaries {
    server: PathBuf,
    /// For `--provider raft`.
    replica: Option<PathBuf>,
}

/// A binary that must sit next to `treaty`.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the treaty executable")?;
    let dir = exe.parent().context("the treaty executable has no directory")?;
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        let release = if dir.ends_with("release") { " --release" } else { "" };
        bail!(
            "{name} not found at {}: `treaty bench notary` runs the notary as processes of their own and looks for their \
             binaries next to `treaty`; build them into the same target directory with `cargo build{release} -p treaty-notary --bins`",
            path.display()
        );
    }
    Ok(path)
}

/// The notary processes (and a throw-away database) of one run, stopped together.
#[derive(Default)]
struct Processes {
    children: Vec<(String, Child)>,
    postgres: Option<Postgres>,
}

impl Processes {
    /// Starts `exe CONFIG` and waits until it prints `listening ADDRESS`; returns the address.
    /// Its standard error goes to `log`, quoted in the error if it does not start.
    async fn start(&mut self, label: &str, exe: &Path, config: &Path, log: &Path) -> Result<String> {
        let log_file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(exe)
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C in the terminal reaches only this process, which
            // then stops the notary processes cleanly.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let stdout = child.stdout.take().context("the child has no standard output")?;
        self.children.push((label.to_string(), child));
        let mut lines = BufReader::new(stdout).lines();
        match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) if line.starts_with("listening ") => Ok(line["listening ".len()..].trim().to_string()),
            outcome => {
                // Give it a moment to finish writing why it stopped.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let said = std::fs::read_to_string(log).unwrap_or_default();
                let said = said.trim();
                let why = match outcome {
                    Err(_) => format!("it did not say it listens within {START_TIMEOUT:?}"),
                    _ => "it exited".to_string(),
                };
                if said.contains("in use") {
                    bail!("{label} could not listen: its port is in use by another process ({said})");
                }
                bail!("{label} did not start ({why}): {}", if said.is_empty() { "it printed nothing" } else { said })
            }
        }
    }

    /// Stops every process (closing its standard input; killed if it has not exited within ten
    /// seconds), the server first, then the replicas, then a throw-away database.
    async fn stop(&mut self) {
        for (label, mut child) in self.children.drain(..).rev() {
            drop(child.stdin.take());
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                eprintln!("{label} did not stop within 10 s of being asked; killing it");
                let _ = child.kill().await;
            }
        }
        if let Some(pg) = self.postgres.take() {
            pg.stop().await;
        }
    }
}

/// A PostgreSQL database for one run: a fresh database on the server `TREATY_TEST_POSTGRES_URL`
/// names, or a throw-away server started by `scripts/pg.sh`.
enum Postgres {
    Database { admin: String, name: String },
    Server { script: PathBuf, dir: PathBuf },
}

impl Postgres {
    async fn start(scratch: &Path) -> Result<(Postgres, String)> {
        if let Ok(admin) = std::env::var("TREATY_TEST_POSTGRES_URL") {
            let name = format!("treaty_bench_notary_{}_{}", std::process::id(), rand::random::<u32>());
            let pool = sqlx::PgPool::connect(&admin)
                .await
                .with_context(|| format!("cannot connect to TREATY_TEST_POSTGRES_URL ({admin}) to create the benchmark's database"))?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&pool)
                .await
                .with_context(|| format!("cannot create database {name} on {admin}"))?;
            pool.close().await;
            let (base, _) = admin.rsplit_once('/').context("TREATY_TEST_POSTGRES_URL has no database path")?;
            let url = format!("{base}/{name}");
            return Ok((Postgres::Database { admin, name }, url));
        }
        let how = "set TREATY_TEST_POSTGRES_URL=postgres://USER@HOST:PORT/DATABASE to a server where the benchmark may create a \
                   database, or run it from a Treaty checkout, where it starts a throw-away server with scripts/pg.sh \
                   (needs PostgreSQL 15's initdb and pg_ctl; see that script)";
        let script = pg_script().with_context(|| format!("--provider postgres needs a PostgreSQL server: {how}"))?;
        let dir = scratch.join("pg");
        let out = Command::new(&script)
            .arg("start")
            .env("TREATY_PG_DIR", &dir)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run {}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let url = stdout.lines().find_map(|l| l.strip_prefix("export TREATY_TEST_POSTGRES_URL=")).map(str::to_string);
        let pg = Postgres::Server { script: script.clone(), dir };
        match url {
            Some(url) if out.status.success() => Ok((pg, url)),
            _ => {
                pg.stop().await;
                bail!(
                    "{} start failed: {}\n--provider postgres needs a PostgreSQL server: {how}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            }
        }
    }

    async fn stop(self) {
        match self {
            Postgres::Database { admin, name } => {
                if let Ok(pool) = sqlx::PgPool::connect(&admin).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&pool).await;
                    pool.close().await;
                }
            }
            Postgres::Server { script, dir } => {
                let _ = Command::new(&script).arg("stop").env("TREATY_PG_DIR", &dir).stdin(Stdio::null()).output().await;
            }
        }
    }
}

/// `scripts/pg.sh` of a Treaty checkout: above the current directory, or where this binary
/// was built from.
fn pg_script() -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        candidates.extend(cwd.ancestors().map(|d| d.join("scripts").join("pg.sh")));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg.sh"));
    candidates.into_iter().find(|p| p.is_file()).context("no scripts/pg.sh found above the current directory")
}

/// A throw-away network PKI: root, doorman, and TLS certificates for each process.
struct BenchPki {
    root: CertifiedKey,
    doorman: CertifiedKey,
    validity: Validity,
    serial: u8,
}

fn random_key() -> Result<KeyPair> {
    Ok(KeyPair::from_seed(SignatureScheme::Ed25519, rand::random())?)
}

impl BenchPki {
    fn new() -> Result<BenchPki> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let validity = Validity::from_now(i64::try_from(now)?, 1);
        let root = pki::root_ca("O=Bench Root,L=London,C=GB".parse()?, random_key()?, validity, [1; 16])?;
        let doorman = root.issue("O=Bench Doorman,L=London,C=GB".parse()?, random_key()?, CertRole::DoormanCa, validity, [2; 16])?;
        Ok(BenchPki { root, doorman, validity, serial: 2 })
    }

    /// A node CA and TLS certificate for `name`.
    fn tls(&mut self, name: &X500Name) -> Result<(Vec<Vec<u8>>, KeyPair)> {
        self.serial += 2;
        let node_ca = self.doorman.issue(name.clone(), random_key()?, CertRole::NodeCa, self.validity, [self.serial; 16])?;
        let tls = node_ca.issue(name.clone(), random_key()?, CertRole::Tls, self.validity, [self.serial + 1; 16])?;
        Ok((vec![tls.cert, node_ca.cert, self.doorman.cert.clone()], tls.key))
    }

    /// Writes `name`'s TLS chain and key into `dir`; returns the TOML lines naming them.
    fn write_tls(&mut self, dir: &Path, name: &X500Name) -> Result<String> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (chain, key) = self.tls(name)?;
        let mut files = Vec::new();
        for (i, cert) in chain.iter().enumerate() {
            let file = format!("tls-{i}.der");
            std::fs::write(dir.join(&file), cert)?;
            files.push(format!("{file:?}"));
        }
        treaty_net::keystore::write_key(&dir.join("tls.key"), &key)?;
        Ok(format!("root_cert = \"../root.der\"\ntls_chain = [{}]\ntls_key = \"tls.key\"\n", files.join(", ")))
    }

    /// `name`'s TLS identity, in memory (the bench's own client).
    fn identity(&mut self, name: &X500Name) -> Result<TlsIdentity> {
        let (chain, key) = self.tls(name)?;
        Ok(TlsIdentity {
            chain,
            key: Arc::new(key),
            root: Arc::new(self.root.cert.clone()),
            revoked: Arc::new(std::sync::RwLock::new(RevocationList::default())),
        })
    }
}

/// A TOML string.
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// A port free right now on 127.0.0.1 (a replica must know its peers' ports before they start).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The parties of a run.
struct Cast {
    notary: Party,
    notary_key: KeyPair,
    requester: Party,
    requester_key: KeyPair,
    receiver: Party,
    /// The token contract's attachment (its id: states are hash-constrained to it).
    attachment: SecureHash,
}

/// Everything the server needs: configuration written, processes started. Returns its address.
async fn start_notary(
    args: &NotaryArgs,
    provider: Provider,
    bins: &Binaries,
    scratch: &Path,
    pki: &mut BenchPki,
    cast: &Cast,
    processes: &mut Processes,
) -> Result<String> {
    std::fs::write(scratch.join("root.der"), &pki.root.cert)?;
    let home = scratch.join("notary");
    let tls = pki.write_tls(&home, &cast.notary.name)?;
    treaty_net::keystore::write_key(&home.join("identity.key"), &cast.notary_key)?;
    let provider_toml = match provider {
        Provider::Single => "[provider]\nkind = \"single\"\npath = \"uniqueness.redb\"\n".to_string(),
        Provider::Postgres => {
            let (pg, url) = Postgres::start(scratch).await?;
            processes.postgres = Some(pg);
            format!("[provider]\nkind = \"postgres\"\nurl = {}\n", quoted(&url))
        }
        Provider::Raft => {
            let exe = bins.replica.as_deref().context("no replica binary")?;
            let replicas = start_replicas(exe, scratch, pki, processes, &cast.notary.name).await?;
            let mut t = String::from("[provider]\nkind = \"raft\"\n");
            for (id, address, name) in &replicas {
                t.push_str(&format!(
                    "\n[[provider.replicas]]\nid = {id}\naddress = {}\nname = {}\n",
                    quoted(address),
                    quoted(&name.to_string())
                ));
            }
            t
        }
    };
    let mut config = format!(
        "name = {}\nidentity_key = \"identity.key\"\nlisten = \"127.0.0.1:0\"\n{tls}validating = {}\n",
        quoted(&cast.notary.name.to_string()),
        args.validating
    );
    if let Some(n) = args.verify_batch {
        config.push_str(&format!("verify_batch = {n}\n"));
    }
    if args.validating {
        std::fs::write(home.join("contracts.bundle"), treaty_testkit::token_bundle())?;
        config.push_str("attachments = [\"contracts.bundle\"]\n");
    }
    config.push_str(&format!(
        "\n{provider_toml}\n[[parties]]\nname = {}\nkey = {}\n",
        quoted(&cast.requester.name.to_string()),
        quoted(&cast.requester.owning_key.to_string())
    ));
    let path = home.join("server.toml");
    std::fs::write(&path, config)?;
    processes.start("the notary server", &bins.server, &path, &home.join("server.log")).await
}

/// Writes three replicas' configurations and starts them; returns (id, address, name) of each.
/// A port taken between choosing it and binding it is chosen again (three attempts).
/// `client` is the notary server, the one party that may ask the replicas for commits.
async fn start_replicas(
    exe: &Path,
    scratch: &Path,
    pki: &mut BenchPki,
    processes: &mut Processes,
    client: &X500Name,
) -> Result<Vec<(u64, String, X500Name)>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut replicas = Vec::new();
        for id in 1..=REPLICAS {
            let name: X500Name = format!("O=Notary Replica {id},L=Zurich,C=CH").parse()?;
            replicas.push((id, format!("127.0.0.1:{}", free_port()?), name));
        }
        let table: String = replicas
            .iter()
            .map(|(id, address, name)| {
                format!("\n[[replicas]]\nid = {id}\naddress = {}\nname = {}\n", quoted(address), quoted(&name.to_string()))
            })
            .collect();
        let started = processes.children.len();
        let mut failed = None;
        for (id, address, name) in &replicas {
            let home = scratch.join(format!("replica-{id}"));
            let _ = std::fs::remove_dir_all(&home);
            let tls = pki.write_tls(&home, name)?;
            let config = home.join("replica.toml");
            std::fs::write(
                &config,
                format!(
                    "id = {id}\nlisten = {}\nlog = \"replica.redb\"\nclients = [{}]\n{tls}{table}",
                    quoted(address),
                    quoted(&client.to_string())
                ),
            )?;
            if let Err(e) = processes.start(&format!("replica {id}"), exe, &config, &home.join("replica.log")).await {
                failed = Some(e);
                break;
            }
        }
        match failed {
            None => return Ok(replicas),
            Some(e) if attempt < 3 && e.to_string().contains("in use") => {
                // Another process took a port: stop these replicas and choose new ports.
                let mut these = Processes { children: processes.children.split_off(started), postgres: None };
                these.stop().await;
            }
            Some(e) => return Err(e),
        }
    }
}

/// One request, ready to send.
struct Prepared {
    tx_id: SecureHash,
    inputs: Vec<StateRef>,
    request: EncodedRequest,
}

/// For each transaction, the earlier transaction whose input it reuses (an injected conflict),
/// if any. Transaction 0 never conflicts; a conflicting transaction reuses input 0 of a
/// transaction that conflicts with nothing itself, and its other inputs are its own. So every
/// contested state is wanted by one original and some conflicting transactions, and whatever
/// order the notary sees them in, exactly one of them wins it: one refusal per injected conflict.
fn conflict_plan(n: usize, rate: f64, rng: &mut impl Rng) -> Vec<Option<usize>> {
    let conflicts = ((rate * n as f64).round() as usize).min(n.saturating_sub(1));
    let mut candidates: Vec<usize> = (1..n).collect();
    candidates.shuffle(rng);
    let mut conflicting = vec![false; n];
    for i in candidates.into_iter().take(conflicts) {
        conflicting[i] = true;
    }
    let mut originals = Vec::new();
    let mut plan = Vec::with_capacity(n);
    for (i, c) in conflicting.into_iter().enumerate() {
        if c {
            plan.push(Some(originals[rng.random_range(0..originals.len())]));
        } else {
            originals.push(i);
            plan.push(None);
        }
    }
    plan
}

/// The transactions' own states: input `k` of transaction `i` of this run is output `k` of a
/// made-up issuance (non-validating) or of its own issue transaction (validating).
struct Issues {
    run: [u8; 16],
}

impl Issues {
    fn made_up(&self, tag: &str, i: usize) -> SecureHash {
        SecureHash::sha256_parts(&[tag.as_bytes(), &self.run, &(i as u64).to_be_bytes()])
    }
}

fn salt(run: &[u8; 16], tag: &str, i: usize) -> PrivacySalt {
    PrivacySalt(SecureHash::sha256_parts(&[b"salt", tag.as_bytes(), run, &(i as u64).to_be_bytes()]).as_bytes().to_owned())
}

/// A move of every token in `refs` to the receiver, signed for by the requester.
fn move_all(refs: &[StateRef], cast: &Cast, attachment: SecureHash) -> TransactionBuilder {
    let mut b = TransactionBuilder::new(Some(cast.notary.clone()));
    for r in refs {
        b = b.input(*r);
    }
    b.output(token(&cast.receiver, refs.len() as u64, cast, attachment))
        .command(TxCommand::new(&TokenCommand::Move, vec![cast.requester.owning_key.clone()]))
        .attachment(attachment)
        .summary(format!("Move {} tokens", refs.len()))
}

/// A token move (or issue) under the run's notary.
fn token(owner: &Party, amount: u64, cast: &Cast, attachment: SecureHash) -> TransactionState {
    TransactionState::new(
        &Token { owner: owner.clone().into(), amount },
        TOKEN,
        cast.notary.clone(),
        AttachmentConstraint::Hash(attachment),
    )
}

/// Builds request `i` of `tag` (`plan` says whose input it reuses, if anyone's).
fn prepare(i: usize, tag: &str, donor: Option<usize>, inputs: usize, validating: bool, cast: &Cast, issues: &Issues) -> Result<Prepared> {
    let attachment = cast.attachment;
    let sign_request = |id: &SecureHash| cast.requester_key.sign(&request_signing_bytes(id, &cast.notary));
    if !validating {
        let own = issues.made_up(tag, i);
        let mut refs: Vec<StateRef> = Vec::with_capacity(inputs);
        let first_own = match donor {
            Some(d) => {
                refs.push(StateRef { txhash: issues.made_up(tag, d), index: 0 });
                1
            }
            None => 0,
        };
        refs.extend((first_own..inputs).map(|k| StateRef { txhash: own, index: k as u32 }));
        let wtx = move_all(&refs, cast, attachment).build(salt(&issues.run, tag, i))?;
        let tx_id = wtx.id();
        let transaction = FilteredTransaction::reveal_groups(&wtx, &FilteredTransaction::NOTARY_GROUPS);
        let request = ServerRequest::Notarise(NotarisationRequest { transaction, signature: sign_request(&tx_id) });
        return Ok(Prepared { tx_id, inputs: refs, request: EncodedRequest::new(&request) });
    }
    // Validating: each transaction has its own issue transaction of `inputs` tokens; it moves
    // them (or, conflicting, all but the first, and the first token of its donor's issue).
    let issue = |n: usize| -> Result<SignedTransaction> {
        let mut b = TransactionBuilder::new(Some(cast.notary.clone()));
        for _ in 0..inputs {
            b = b.output(token(&cast.requester, 1, cast, attachment));
        }
        let wtx = b
            .command(TxCommand::new(&TokenCommand::Issue, vec![cast.requester.owning_key.clone()]))
            .attachment(attachment)
            .build(salt(&issues.run, &format!("{tag}-issue"), n))?;
        Ok(signed(wtx, &cast.requester_key))
    };
    let own = issue(i)?;
    let mut refs = Vec::with_capacity(inputs);
    let mut dependencies = vec![own.clone()];
    let first_own = match donor {
        Some(d) => {
            let theirs = issue(d)?;
            refs.push(StateRef { txhash: theirs.id(), index: 0 });
            dependencies.push(theirs);
            1
        }
        None => 0,
    };
    refs.extend((first_own..inputs).map(|k| StateRef { txhash: own.id(), index: k as u32 }));
    let wtx = move_all(&refs, cast, attachment).build(salt(&issues.run, tag, i))?;
    let stx = signed(wtx, &cast.requester_key);
    let tx_id = stx.id();
    let request = WholeTransactionRequest { signature: sign_request(&tx_id), transaction: stx, dependencies };
    Ok(Prepared { tx_id, inputs: refs, request: EncodedRequest::new(&ServerRequest::NotariseWhole(Box::new(request))) })
}

fn signed(wtx: WireTransaction, key: &KeyPair) -> SignedTransaction {
    let id = wtx.id();
    SignedTransaction::new(wtx, vec![key.sign_transaction(&id, PLATFORM_VERSION)])
}

/// Builds `plan.len()` requests on every core.
fn prepare_all(tag: &str, plan: &[Option<usize>], inputs: usize, validating: bool, cast: &Cast, issues: &Issues) -> Result<Vec<Prepared>> {
    plan.par_iter()
        .enumerate()
        .map(|(i, donor)| {
            if INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            prepare(i, tag, *donor, inputs, validating, cast, issues)
        })
        .collect()
}

/// What came back for one request.
enum Outcome {
    Signed(TransactionSignature),
    Refused(NotaryRefusal),
    Unanswered(String),
}

/// Sends every request, `concurrency` in flight, over `clients`; returns each outcome and its
/// latency, in request order, and the seconds it took.
async fn drive(clients: &[Arc<NotaryClient>], requests: Arc<Vec<Prepared>>, concurrency: usize) -> Result<(Vec<(Outcome, f64)>, f64)> {
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency.min(requests.len()) {
        let (client, requests, next) = (clients[w % clients.len()].clone(), requests.clone(), next.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(r) = requests.get(i) else { break };
                let t = Instant::now();
                let outcome = match client.notarise_encoded(&r.request).await {
                    Ok(Ok(sig)) => Outcome::Signed(sig),
                    Ok(Err(refusal)) => Outcome::Refused(refusal),
                    Err(e) => Outcome::Unanswered(e.to_string()),
                };
                done.push((i, outcome, t.elapsed().as_secs_f64() * 1000.0));
            }
            done
        });
    }
    let mut all: Vec<(usize, Outcome, f64)> = Vec::with_capacity(requests.len());
    while let Some(done) = workers.join_next().await {
        all.extend(done?);
    }
    let seconds = began.elapsed().as_secs_f64();
    all.sort_by_key(|(i, _, _)| *i);
    Ok((all.into_iter().map(|(_, o, l)| (o, l)).collect(), seconds))
}

/// The checks made on every answer, outside the timed region.
#[derive(Default)]
struct Checked {
    conflicts: usize,
    double_commits: usize,
    wrong_winners: usize,
    invalid_signatures: usize,
    other_refusals: BTreeMap<String, usize>,
    unanswered: usize,
    first_problem: Option<String>,
}

fn check(requests: &[&Prepared], outcomes: &[&Outcome], notary: &PublicKey) -> Checked {
    // Every signature, verified over its own transaction id, on every core.
    let invalid_signatures = requests
        .par_iter()
        .zip(outcomes.par_iter())
        .filter(|(r, o)| match o {
            Outcome::Signed(sig) => sig.by != *notary || sig.verify(&r.tx_id).is_err(),
            _ => false,
        })
        .count();
    let mut c = Checked { invalid_signatures, ..Checked::default() };
    // Which transaction was signed for each state: two for one state is a double commit.
    let mut winner: HashMap<StateRef, SecureHash> = HashMap::new();
    for (r, o) in requests.iter().zip(outcomes) {
        if let Outcome::Signed(_) = o {
            for s in &r.inputs {
                if let Some(other) = winner.insert(*s, r.tx_id)
                    && other != r.tx_id
                {
                    c.double_commits += 1;
                }
            }
        }
    }
    for (r, o) in requests.iter().zip(outcomes) {
        match o {
            Outcome::Signed(_) => {}
            Outcome::Refused(NotaryRefusal::Conflict { conflict, .. }) => {
                c.conflicts += 1;
                for (state, why) in &conflict.states {
                    if winner.get(state) != Some(&why.consumed_by.tx_id) {
                        c.wrong_winners += 1;
                        c.first_problem.get_or_insert_with(|| format!("transaction {} was refused: {conflict}", r.tx_id));
                    }
                }
            }
            Outcome::Refused(other) => {
                *c.other_refusals.entry(other.code().to_string()).or_default() += 1;
                c.first_problem.get_or_insert_with(|| other.to_string());
            }
            Outcome::Unanswered(why) => {
                c.unanswered += 1;
                c.first_problem.get_or_insert_with(|| why.clone());
            }
        }
    }
    c
}

async fn run(args: &NotaryArgs, provider: Provider, bins: &Binaries, scratch: &Path, processes: &mut Processes) -> Result<Measured> {
    let mut pki = BenchPki::new()?;
    let notary_key = random_key()?;
    let requester_key = random_key()?;
    let cast = Cast {
        notary: Party { name: "O=Bench Notary,L=Zurich,C=CH".parse()?, owning_key: notary_key.public() },
        notary_key,
        requester: Party { name: "O=Bench Client,L=London,C=GB".parse()?, owning_key: requester_key.public() },
        requester_key,
        receiver: Party { name: "O=Bench Receiver,L=Paris,C=FR".parse()?, owning_key: random_key()?.public() },
        attachment: SecureHash::sha256(&treaty_testkit::token_bundle()),
    };
    let address = start_notary(args, provider, bins, scratch, &mut pki, &cast, processes).await?;
    let identity = pki.identity(&cast.requester.name)?;
    let connections = CONNECTIONS.min(args.concurrency);
    let mut clients = Vec::new();
    for _ in 0..connections {
        let client = NotaryClient::connect(&address, &identity, &cast.notary.name, ANSWER_TIMEOUT).await?;
        clients.push(Arc::new(client));
    }
    let status = clients[0].status().await?;
    if status.validating != args.validating || status.identity != cast.notary {
        bail!("the notary server at {address} is not the one configured: {status:?}");
    }

    // Everything sent is built and encoded before the clock starts.
    let mut rng = rand::rng();
    let issues = Issues { run: rng.random() };
    let plan = conflict_plan(args.tx, args.conflict_rate, &mut rng);
    let injected = plan.iter().filter(|d| d.is_some()).count();
    let (inputs, validating) = (args.inputs, args.validating);
    let (cast, plan) = (Arc::new(cast), Arc::new(plan));
    let prepared = {
        let (cast, plan) = (cast.clone(), plan.clone());
        tokio::task::spawn_blocking(move || -> Result<_> {
            let warm = prepare_all("warm-up", &vec![None; WARM_UP], inputs, validating, &cast, &issues)?;
            let timed = prepare_all("timed", &plan, inputs, validating, &cast, &issues)?;
            Ok((warm, timed))
        })
        .await??
    };
    let (warm, timed) = (Arc::new(prepared.0), Arc::new(prepared.1));
    let request_bytes = timed.iter().map(|r| r.request.len()).sum::<usize>() / timed.len();

    let (warm_outcomes, _) = drive(&clients, warm.clone(), args.concurrency).await?;
    let (outcomes, seconds) = drive(&clients, timed.clone(), args.concurrency).await?;
    drop(clients);

    let mut latencies: Vec<f64> = outcomes.iter().map(|(_, l)| *l).collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let (latency_ms_p50, latency_ms_p99) = (pct(0.5), pct(0.99));
    let signed = outcomes.iter().filter(|(o, _)| matches!(o, Outcome::Signed(_))).count();
    let batch_signed = outcomes.iter().filter(|(o, _)| matches!(o, Outcome::Signed(s) if s.batch_proof.is_some())).count();
    let notary_key = cast.notary.owning_key.clone();
    let checked = tokio::task::spawn_blocking(move || {
        // The warm-up requests are checked with the others: their states are in the same log.
        let requests: Vec<&Prepared> = warm.iter().chain(timed.iter()).collect();
        let outcomes: Vec<&Outcome> = warm_outcomes.iter().chain(outcomes.iter()).map(|(o, _)| o).collect();
        check(&requests, &outcomes, &notary_key)
    })
    .await?;
    if let Some(problem) = &checked.first_problem {
        eprintln!("first problem: {problem}");
    }
    Ok(Measured {
        scenario: "notary",
        provider: provider.name(),
        validating: args.validating,
        processes: if provider == Provider::Raft { 1 + REPLICAS as usize } else { 1 },
        transactions: args.tx,
        inputs: args.inputs,
        concurrency: args.concurrency,
        connections,
        conflict_rate: args.conflict_rate,
        request_bytes,
        seconds,
        transactions_per_sec: args.tx as f64 / seconds,
        latency_ms_p50,
        latency_ms_p99,
        signed,
        batch_signed,
        conflicts_injected: injected,
        conflicts_detected: checked.conflicts,
        double_commits: checked.double_commits,
        wrong_winners: checked.wrong_winners,
        invalid_signatures: checked.invalid_signatures,
        other_refusals: checked.other_refusals,
        unanswered: checked.unanswered,
    })
}
