//! The life of a notary process (`treaty-notary-server`, `treaty-raft-replica`): read the
//! configuration named on the command line, start, print `listening ADDRESS` once serving, and
//! stop cleanly when standard input closes (the parent's handle on the child: a parent that
//! dies closes it too).

use std::fmt::Display;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs a process of `name`: `start(CONFIG)` gives the running service and its address, or an
/// error printed as `CODE: message`; `close` stops the service once standard input closes.
pub fn run<S, E, Start, Started, Close, Closed>(name: &str, start: Start, close: Close) -> ExitCode
where
    E: Display,
    Start: FnOnce(PathBuf) -> Started,
    Started: Future<Output = Result<(S, SocketAddr), (&'static str, E)>>,
    Close: FnOnce(S) -> Closed,
    Closed: Future<Output = ()>,
{
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: {name} CONFIG.toml");
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
        let (service, addr) = match start(path).await {
            Ok(s) => s,
            Err((code, e)) => {
                eprintln!("{code}: {e}");
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
        close(service).await;
        ExitCode::SUCCESS
    })
}
