//! `treaty attachment upload | download`: attachment bundles to and from a running node.
//!
//! Uploads stream the file in 64 KiB chunks and announce its size first, so the node refuses
//! an oversized file before its bytes and notices one cut short. Downloads are checked
//! against their id (the SHA-256 of the bytes) before the file is written, and written whole
//! or not at all.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::io::AsyncReadExt;
use treaty_core::SecureHash;
use treaty_rpc::v1 as pb;

use crate::client::{connect, rpc};
use crate::node::runtime;

/// Files at least this large show progress on a terminal.
const PROGRESS_FROM: u64 = 1024 * 1024;

/// Progress on standard error for large transfers, when it is a terminal.
struct Progress {
    verb: &'static str,
    total: u64,
    done: u64,
    shown: u64,
    on: bool,
}

impl Progress {
    fn new(verb: &'static str, total: u64) -> Progress {
        Progress { verb, total, done: 0, shown: 0, on: total >= PROGRESS_FROM && std::io::stderr().is_terminal() }
    }

    fn add(&mut self, bytes: usize) {
        self.done += bytes as u64;
        if self.on && (self.done - self.shown >= self.total / 100 || self.done == self.total) {
            self.shown = self.done;
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            eprint!("\r{} {:.1} / {:.1} MiB ({}%)", self.verb, mib(self.done), mib(self.total), self.done * 100 / self.total.max(1));
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&self) {
        if self.on && self.shown > 0 {
            eprintln!();
        }
    }
}

/// Uploads the bundle in `file`; prints its id.
pub fn upload(node_dir: &Path, file: &Path, json: bool) -> Result<()> {
    let size = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?.len();
    if size == 0 {
        bail!("{} is empty; an attachment is a bundle (treaty-sandbox's format)", file.display());
    }
    runtime()?.block_on(async {
        let mut reader = tokio::fs::File::open(file).await.with_context(|| format!("cannot open {}", file.display()))?;
        let mut client = connect(node_dir).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let path = file.to_path_buf();
        // Reads as the node takes chunks. On a read error the stream ends early; the node then
        // refuses the upload because fewer bytes arrived than announced.
        let reading = tokio::spawn(async move {
            let mut progress = Progress::new("uploading", size);
            let mut first = true;
            loop {
                let mut data = vec![0; treaty_node::rpc::CHUNK_BYTES];
                let n = match reader.read(&mut data).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
                };
                data.truncate(n);
                let chunk = pb::AttachmentChunk { data, total_size: if first { size } else { 0 } };
                first = false;
                if tx.send(chunk).await.is_err() {
                    break; // the node has answered (a refusal)
                }
                progress.add(n);
            }
            progress.finish();
            Ok(())
        });
        let answer = client.upload_attachment(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        let read = reading.await.context("the file reader stopped")?;
        let uploaded = match (answer, read) {
            (Ok(a), _) => a.into_inner(),
            (Err(_), Err(e)) => return Err(e),
            (Err(status), Ok(())) => return Err(rpc(status)),
        };
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "attachment_id": uploaded.attachment_id,
                    "size": uploaded.size,
                    "newly_stored": uploaded.newly_stored,
                    "contracts": uploaded.contracts,
                    "file": file.display().to_string(),
                }))?
            );
        } else {
            println!("{}", uploaded.attachment_id);
            let what = if uploaded.newly_stored { "stored" } else { "already stored" };
            eprintln!("{} ({} bytes, contracts: {}): {what}", file.display(), uploaded.size, uploaded.contracts.join(", "));
        }
        Ok(())
    })
}

/// Downloads attachment `id` into `out`.
pub fn download(node_dir: &Path, id: &str, out: &Path, json: bool) -> Result<()> {
    let expected: SecureHash =
        id.parse().map_err(|_| anyhow::anyhow!("{id:?} is not an attachment id (64 hex digits, the SHA-256 of its bytes)"))?;
    runtime()?.block_on(async {
        let mut client = connect(node_dir).await?;
        let mut chunks = client.download_attachment(pb::AttachmentRef { attachment_id: id.into() }).await.map_err(rpc)?.into_inner();
        let mut bytes = Vec::new();
        let mut progress = None;
        while let Some(chunk) = chunks.message().await.map_err(rpc)? {
            let p = progress.get_or_insert_with(|| Progress::new("downloading", chunk.total_size));
            p.add(chunk.data.len());
            bytes.extend_from_slice(&chunk.data);
        }
        if let Some(p) = &progress {
            p.finish();
        }
        let actual = SecureHash::sha256(&bytes);
        if actual != expected {
            bail!("the node sent {} bytes hashing to {actual}, not {expected}; nothing written", bytes.len());
        }
        // Whole or not at all: write beside the target, then rename over it.
        let name = out.file_name().with_context(|| format!("--out {} is not a file name", out.display()))?;
        let partial = out.with_file_name(format!(".{}.part", name.to_string_lossy()));
        std::fs::write(&partial, &bytes).with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, out).with_context(|| format!("cannot move {} to {}", partial.display(), out.display()))?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "attachment_id": id, "size": bytes.len(), "file": out.display().to_string() }))?
            );
        } else {
            println!("attachment {id} ({} bytes) written to {}", bytes.len(), out.display());
        }
        Ok(())
    })
}
