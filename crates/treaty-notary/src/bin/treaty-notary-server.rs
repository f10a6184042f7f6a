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

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use treaty_notary::server::ServerFile;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: treaty-notary-server CONFIG.toml");
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
        let started = match ServerFile::load(&path) {
            Ok(file) => file.start().await,
            Err(e) => Err(e),
        };
        let (server, addr) = match started {
            Ok(s) => s,
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
        server.close().await;
        ExitCode::SUCCESS
    })
}
