//! Runs a notary server over mutual TLS, configured by a TOML file
//! ([`treaty_notary::server::ServerFile`]):
//!
//! ```text
//! treaty-notary-server CONFIG.toml
//! ```
//!
//! It prints `listening ADDRESS` once it serves, and stops cleanly (answering the requests it
//! is handling, closing its provider) when its standard input closes. `treaty bench notary`
//! runs it; so do the real-process tests.

use std::process::ExitCode;

use treaty_notary::server::ServerFile;

fn main() -> ExitCode {
    treaty_notary::process::run(
        "treaty-notary-server",
        |path| async move {
            match ServerFile::load(&path) {
                Ok(file) => file.start().await,
                Err(e) => Err(e),
            }
            .map_err(|e| (e.code(), e))
        },
        |server| server.close(),
    )
}
