//! `treaty`: the command-line entry to Treaty.
//!
//! Every command that prints data takes `--json` and then prints exactly one JSON document on
//! standard output (see `../shared/DESIGN.md` section 6 for the stable surface).

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { json, chain } => demo::run(json, chain),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
