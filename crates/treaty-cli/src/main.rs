//! `treaty`: the command-line entry to Treaty.
//!
//! Every command that prints data takes `--json` and then prints exactly one JSON document on
//! standard output (see `../shared/DESIGN.md` section 6 for the stable surface).

mod attachment;
mod bench;
mod bootstrap;
mod client;
mod demo;
mod flow;
mod network;
mod node;
mod vault;

/// mimalloc (v3) for Rust's allocations and, through its `override` feature, for C's too
/// (SQLite, wasmtime's C parts): glibc's malloc and free took 11–16% of each node's CPU in the
/// cash flow benchmarks, and mimalloc cuts a flow's CPU by 10–13% (docs/BENCHMARKS.md, item
/// 27). Built with `no_thp`: mimalloc would otherwise ask for transparent huge pages, which
/// doubled a node's memory at rest and made back-chain resolution slower (the kernel zeroing
/// 2 MiB pages).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Treaty: a permissioned, decentralised ledger for business networks.
#[derive(Parser)]
#[command(name = "treaty", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates and runs local networks.
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// Starts, lists and kills flows on a running node (client RPC).
    Flow {
        #[command(subcommand)]
        command: FlowCommand,
    },
    /// Uploads attachment bundles to a running node and downloads them (client RPC).
    Attachment {
        #[command(subcommand)]
        command: AttachmentCommand,
    },
    /// Queries a running node's vault: its states and balances (client RPC).
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// Runs and inspects one node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Measures the system as users run it; prints figures with this machine's baselines.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Runs Treaty's demonstration end to end and prints a readable report.
    Demo {
        /// Print one JSON document instead of the report.
        #[arg(long)]
        json: bool,
        /// Length of the payment chain built and verified at the end (shows throughput).
        #[arg(long, default_value_t = 2000)]
        chain: usize,
    },
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Creates a local network: root CA, doorman, network map key, signed network parameters,
    /// and a folder per node with node.toml, keys (mode 0600) and certificates.
    Bootstrap {
        /// The directory to create (must not exist, or be empty).
        #[arg(long)]
        dir: std::path::PathBuf,
        /// A node's X.500 legal name, e.g. "O=Alice,L=London,C=GB" (repeatable).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// A notary's X.500 legal name (repeatable).
        #[arg(long = "notary")]
        notaries: Vec<String>,
        /// Make the notaries validating (they see and verify whole transactions).
        #[arg(long)]
        notary_validating: bool,
        /// Members per notary: 1 for a single node, 3 or 5 for a Raft cluster sharing one service identity.
        #[arg(long, default_value_t = 1)]
        notary_cluster: u32,
        /// Print one JSON document instead of the report.
        #[arg(long)]
        json: bool,
    },
    /// Starts the network map and every node of a bootstrapped network as separate processes;
    /// Ctrl-C or SIGTERM stops them all. Logs go to each node's node.log.
    Run {
        /// The directory `treaty network bootstrap` created.
        #[arg(long)]
        dir: PathBuf,
        /// Print one JSON document (the started processes) once everything is ready.
        #[arg(long)]
        json: bool,
    },
    /// Lists the nodes a node knows (its cached copy of the network map).
    Map {
        /// The node's directory.
        #[arg(long)]
        node: PathBuf,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Revokes a legal name: it goes on the revocation list the network map publishes, and
    /// nodes refuse its connections once they have polled the map.
    Revoke {
        /// The directory `treaty network bootstrap` created.
        #[arg(long)]
        dir: PathBuf,
        /// The X.500 legal name to revoke.
        #[arg(long)]
        name: String,
    },
    /// Serves the network map of a bootstrapped network (`network run` starts it for you).
    #[command(hide = true)]
    ServeMap {
        /// The directory `treaty network bootstrap` created.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum FlowCommand {
    /// Starts a flow by name with JSON arguments.
    Start {
        /// The node's directory (its node.toml names the RPC address).
        #[arg(long)]
        node: PathBuf,
        /// The flow's name (e.g. Echo).
        name: String,
        /// The arguments as JSON, e.g. '{"to": "O=Bob,L=Paris,C=FR", "message": "hi"}'.
        #[arg(long, default_value = "null")]
        args: String,
        /// Wait for the flow to finish, showing its progress steps.
        #[arg(long)]
        wait: bool,
        /// Makes the start idempotent: the same client id returns the same flow.
        #[arg(long)]
        client_id: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Lists the node's flows, oldest first.
    List {
        /// The node's directory.
        #[arg(long)]
        node: PathBuf,
        /// Only flows with this status (RUNNABLE, HOSPITALIZED, FAILED, COMPLETED, KILLED, PAUSED).
        #[arg(long)]
        status: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Kills a flow; its counterparties are told.
    Kill {
        /// The node's directory.
        #[arg(long)]
        node: PathBuf,
        /// The flow's id.
        flow_id: String,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// Which states a vault command reads.
#[derive(Args)]
struct VaultFilter {
    /// The node's directory.
    #[arg(long)]
    node: PathBuf,
    /// Only states of this type id (e.g. test.Token); repeat for several.
    #[arg(long = "state-type", value_name = "NAME")]
    state_type: Vec<String>,
    /// unconsumed (the default), consumed or all.
    #[arg(long)]
    status: Option<String>,
    /// Further conditions as JSON (docs/vault.md, "Criteria as JSON"), e.g.
    /// '{"fungible": {"token": "USD", "min_quantity": 10000}}'.
    #[arg(long = "where", value_name = "JSON")]
    where_json: Option<String>,
}

#[derive(Subcommand)]
enum VaultCommand {
    /// Lists the vault's states (unconsumed by default), in recording order.
    Query {
        #[command(flatten)]
        filter: VaultFilter,
        /// The order: "column [asc|desc], ..." (recorded_at, consumed_at, state_ref, quantity,
        /// type_id or an app column); recording order by default.
        #[arg(long)]
        sort: Option<String>,
        /// Print one JSON document (an array of states).
        #[arg(long)]
        json: bool,
    },
    /// Follows the vault: how many states match now, then each recorded transaction that
    /// produces or consumes matching states, as it happens (until Ctrl-C, or `--updates`).
    Track {
        /// The node's directory.
        #[arg(long)]
        node: PathBuf,
        /// Only states of this type id (e.g. test.Token); repeat for several.
        #[arg(long = "state-type", value_name = "NAME")]
        state_type: Vec<String>,
        /// Further conditions as JSON (docs/vault.md, "Criteria as JSON").
        #[arg(long = "where", value_name = "JSON")]
        where_json: Option<String>,
        /// Stop after this many transactions (default: follow until interrupted).
        #[arg(long)]
        updates: Option<u64>,
        /// Print one JSON object per line: `{"snapshot_count": N}`, then one per transaction.
        #[arg(long)]
        json: bool,
    },
    /// Totals of the unconsumed fungible states per token and issuer.
    Balances {
        /// The node's directory.
        #[arg(long)]
        node: PathBuf,
        /// Print one JSON document (an array of balances).
        #[arg(long)]
        json: bool,
    },
    /// Counts the matching states and sums their fungible quantities, grouped by columns.
    Aggregate {
        #[command(flatten)]
        filter: VaultFilter,
        /// Group by these, comma-separated: token, issuer, owner, type_id, contract, notary,
        /// status, or an app column. None: one total.
        #[arg(long = "group-by", value_delimiter = ',', value_name = "COLUMNS")]
        group_by: Vec<String>,
        /// Print one JSON document (an array of groups).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AttachmentCommand {
    /// Uploads a bundle; prints its id (the SHA-256 of the file: the same file, the same id).
    Upload {
        /// The node's directory.
        #[arg(long)]
        node: PathBuf,
        /// The bundle file.
        file: PathBuf,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Downloads an attachment by id into a file (checked against the id before it is written).
    Download {
        /// The node's directory.
        #[arg(long)]
        node: PathBuf,
        /// The attachment's id.
        id: String,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Flows per second and their latency between two nodes.
    Flows {
        /// pingpong (Echo between two nodes), issue (CashIssue on one node) or pay (CashIssueAndPayment: an issue, then a payment to Bob through the notary).
        #[arg(long, default_value = "pingpong")]
        scenario: String,
        /// Flows to run.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Flows in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Rounds run one at a time before the clock starts, not counted in the figures: they
        /// pay a fresh network's one-time costs (each node compiling the cash contract, the
        /// payee fetching it, connections opening), which the report gives apart as
        /// `warmup_seconds`. 0 times those costs with the rest.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Run the nodes inside the benchmark's process and start flows on their engines
        /// directly, rather than as `treaty node run` processes driven over RPC.
        #[arg(long)]
        in_process: bool,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Back-chain resolution: Alice sends the tip of an N-transaction chain to Bob, who lacks
    /// all of it, downloads, verifies (contracts in the wasm sandbox) and records it.
    Resolve {
        /// Transactions in the chain (the tip's back-chain is one less).
        #[arg(long, default_value_t = 10_000)]
        length: usize,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Notarisations per second from notary processes on this machine (a notary server, and
    /// for raft three replica processes behind it), with latency, conflicts injected and
    /// detected, double commits found (must be 0) and this machine's Ed25519 rates.
    Notary {
        /// The uniqueness provider: single (one redb file), raft (three replica processes) or
        /// postgres (a throw-away PostgreSQL, or a fresh database on TREATY_TEST_POSTGRES_URL).
        #[arg(long)]
        provider: String,
        /// A validating notary: it gets whole transactions with the transactions their inputs
        /// come from, and verifies them (contracts in the wasm sandbox) before it commits.
        #[arg(long)]
        validating: bool,
        /// Transactions to notarise.
        #[arg(long)]
        tx: usize,
        /// Inputs per transaction.
        #[arg(long)]
        inputs: usize,
        /// Requests in flight at once.
        #[arg(long)]
        concurrency: usize,
        /// Fraction of transactions that reuse an input of an earlier one (each must be refused).
        #[arg(long, default_value_t = 0.0)]
        conflict_rate: f64,
        /// Request signatures the server checks in one batch, at most (0: each on its own;
        /// default: the server's, 256).
        #[arg(long)]
        verify_batch: Option<usize>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Durable messages per second between two nodes over mutual TLS (SQLite at both ends).
    Messaging {
        /// Messages to send.
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        /// Messages per send call (each send is one outbox transaction).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 256)]
        payload: usize,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Runs one node until Ctrl-C or SIGTERM.
    Run {
        /// The node's node.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Stops a running node over RPC, as SIGTERM would. With --drain, it first refuses new
    /// flows and stops only once its running flows have finished.
    Shutdown {
        /// The node's directory.
        #[arg(long)]
        node: PathBuf,
        /// Refuse new flows and wait for the running ones before stopping.
        #[arg(long)]
        drain: bool,
        /// With --drain: seconds to wait for running flows; if some remain the node stays up,
        /// draining, and the command fails saying how many.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Sends diagnostic pings from a node (through its durable outbox) and waits until the
    /// receiver has acknowledged them. The node must be running to deliver them.
    Ping {
        /// The sending node's directory.
        #[arg(long)]
        node: PathBuf,
        /// The receiver's X.500 legal name.
        #[arg(long)]
        to: String,
        /// How many pings.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Seconds to wait for delivery.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

fn node_command(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Run { config } => node::run(&config),
        NodeCommand::Shutdown { node, drain, timeout, json } => node::shutdown(&node, drain, std::time::Duration::from_secs(timeout), json),
        NodeCommand::Ping { node, to, count, timeout, json } => {
            node::ping(&node, &to, count, std::time::Duration::from_secs(timeout), json)
        }
    }
}

fn network(command: NetworkCommand) -> anyhow::Result<()> {
    match command {
        NetworkCommand::Bootstrap { dir, nodes, notaries, notary_validating, notary_cluster, json } => {
            let created =
                bootstrap::bootstrap(&bootstrap::Request { dir, nodes, notaries, validating: notary_validating, cluster: notary_cluster })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("Network created in {}", created.dir);
                println!("  network map   {}", created.network_map);
                println!("  parameters    {}", created.parameters_hash);
                for n in &created.nodes {
                    let role = n.notary.as_ref().map(|s| format!("  (notary: {s})")).unwrap_or_default();
                    println!("  {:<40} p2p {}  rpc {}  {}{}", n.name, n.p2p, n.rpc, n.dir, role);
                }
            }
            Ok(())
        }
        NetworkCommand::Run { dir, json } => network::run(&dir, json),
        NetworkCommand::Map { node, json } => network::map(&node, json),
        NetworkCommand::Revoke { dir, name } => network::revoke(&dir, &name),
        NetworkCommand::ServeMap { dir } => network::serve_map(&dir),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { json, chain } => demo::run(json, chain),
        Command::Network { command } => network(command),
        Command::Node { command } => node_command(command),
        Command::Flow { command } => match command {
            FlowCommand::Start { node, name, args, wait, client_id, json } => flow::start(&node, &name, &args, wait, client_id, json),
            FlowCommand::List { node, status, json } => flow::list(&node, status, json),
            FlowCommand::Kill { node, flow_id, json } => flow::kill(&node, &flow_id, json),
        },
        Command::Vault { command: VaultCommand::Query { filter: f, sort, json } } => {
            vault::query(&f.node, f.state_type, f.status, f.where_json, sort, json)
        }
        Command::Vault { command: VaultCommand::Balances { node, json } } => vault::balances(&node, json),
        Command::Vault { command: VaultCommand::Aggregate { filter: f, group_by, json } } => {
            vault::aggregate(&f.node, f.state_type, f.status, f.where_json, group_by, json)
        }
        Command::Vault { command: VaultCommand::Track { node, state_type, where_json, updates, json } } => {
            vault::track(&node, state_type, where_json, updates, json)
        }
        Command::Attachment { command: AttachmentCommand::Upload { node, file, json } } => attachment::upload(&node, &file, json),
        Command::Attachment { command: AttachmentCommand::Download { node, id, out, json } } => {
            attachment::download(&node, &id, &out, json)
        }
        Command::Bench { command: BenchCommand::Messaging { count, batch, payload, json } } => {
            bench::messaging(count, batch, payload, json)
        }
        Command::Bench { command: BenchCommand::Flows { scenario, count, concurrency, warmup, in_process, json } } => {
            bench::flows(&scenario, count, concurrency, warmup, in_process, json)
        }
        Command::Bench { command: BenchCommand::Resolve { length, json } } => bench::resolve(length, json),
        Command::Bench {
            command: BenchCommand::Notary { provider, validating, tx, inputs, concurrency, conflict_rate, verify_batch, json },
        } => bench::notary::notary(&bench::notary::NotaryArgs {
            provider,
            validating,
            tx,
            inputs,
            concurrency,
            conflict_rate,
            verify_batch,
            json,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
