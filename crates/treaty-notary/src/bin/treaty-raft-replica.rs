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

use std::process::ExitCode;

use treaty_notary::raft::ReplicaFile;

fn main() -> ExitCode {
    treaty_notary::process::run(
        "treaty-raft-replica",
        |path| async move {
            match ReplicaFile::load(&path) {
                Ok(file) => file.start().await,
                Err(e) => Err(e),
            }
            .map_err(|e| (e.code(), e))
        },
        |replica| replica.close(),
    )
}
