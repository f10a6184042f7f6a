//! `treaty`: the command-line entry to Treaty.
//!
//! Every command that prints data takes `--json` and then prints exactly one JSON document on
//! standard output (see `../shared/DESIGN.md` section 6 for the stable surface).

mod bootstrap;
mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { json, chain } => demo::run(json, chain),
        Command::Network { command } => network(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
