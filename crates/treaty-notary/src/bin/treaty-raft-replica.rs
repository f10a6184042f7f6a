//! Runs one replica of a Raft notary cluster over mutual TLS, configured by a TOML file
//! ([`treaty_notary::raft::ReplicaFile`]):
//!
//! ```text
//! treaty-raft-replica CONFIG.toml
//! ```
//!
//! It prints `listening ADDRESS` once it serves, and stops cleanly (answering what it queued,
//! flushing its file) when its standard input closes. The notary service and `treaty` will
//! start replicas themselves; this binary is what the real-process tests run.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use treaty_notary::raft::ReplicaFile;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: treaty-raft-replica CONFIG.toml");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let started = match ReplicaFile::load(&path) {
            Ok(file) => file.start().await,
            Err(e) => Err(e),
        };
        let (replica, addr) = match started {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}: {e}", e.code());
                return ExitCode::FAILURE;
            }
        };
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening {addr}");
            let _ = out.flush();
        }
        let (closed, stdin_closed) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            let _ = closed.send(());
        });
        let _ = stdin_closed.await;
        replica.close().await;
        ExitCode::SUCCESS
    })
}
