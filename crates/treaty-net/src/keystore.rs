//! Node keys on disk.
//!
//! One file per key, readable and writable by the owner only (mode 0600; refused on load if
//! group or others can read it). The format is three text lines:
//!
//! ```text
//! treaty-key v1
//! scheme ed25519            (or p256)
//! seed <64 hex digits>      (the Ed25519 seed, or the P-256 scalar)
//! ```
//!
//! Plain text so an operator can back it up and check it; the protection is the file mode and
//! the machine's disk encryption. (An HSM-backed store is future work behind the same calls.)

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use treaty_core::{KeyPair, SignatureScheme};

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// File system error.
    #[error("key file {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// The file is readable by others.
    #[error("key file {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// The file is not a key file.
    #[error("key file {path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
}

fn seed_of(key: &KeyPair) -> [u8; 32] {
    match key {
        KeyPair::Ed25519(k) => k.to_bytes(),
        KeyPair::EcdsaP256(k) => k.to_bytes().into(),
    }
}

/// Writes `key` to `path` with mode 0600 (refusing to overwrite an existing file).
pub fn write_key(path: &Path, key: &KeyPair) -> Result<(), KeyStoreError> {
    let io = |error| KeyStoreError::Io { path: path.display().to_string(), error };
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    let body = format!("treaty-key v1\nscheme {}\nseed {}\n", key.scheme().name(), hex_encode(&seed_of(key)));
    f.write_all(body.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads a key written by [`write_key`], refusing files others can read.
pub fn read_key(path: &Path) -> Result<KeyPair, KeyStoreError> {
    let p = path.display().to_string();
    let io = |error| KeyStoreError::Io { path: p.clone(), error };
    let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyStoreError::Permissions { path: p, mode });
    }
    let text = fs::read_to_string(path).map_err(io)?;
    let bad = |reason| KeyStoreError::Malformed { path: p.clone(), reason };
    let mut lines = text.lines();
    if lines.next() != Some("treaty-key v1") {
        return Err(bad("first line must be 'treaty-key v1'"));
    }
    let scheme = match lines.next().and_then(|l| l.strip_prefix("scheme ")) {
        Some("ed25519") => SignatureScheme::Ed25519,
        Some("p256") => SignatureScheme::EcdsaP256Sha256,
        _ => return Err(bad("second line must be 'scheme ed25519' or 'scheme p256'")),
    };
    let hex = lines.next().and_then(|l| l.strip_prefix("seed ")).ok_or_else(|| bad("third line must be 'seed <64 hex digits>'"))?;
    let mut seed = [0u8; 32];
    if hex.len() != 64 {
        return Err(bad("the seed must be 64 hex digits"));
    }
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| bad("the seed must be hex"))?;
        seed[i] = u8::from_str_radix(s, 16).map_err(|_| bad("the seed must be hex"))?;
    }
    KeyPair::from_seed(scheme, seed).map_err(|_| bad("the seed is not a valid key of its scheme"))
}
