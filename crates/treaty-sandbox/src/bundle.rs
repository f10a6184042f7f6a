//! Attachment bundles: the format contract code and data travel in.
//!
//! A bundle is a POSIX ustar archive holding, at most:
//!
//! | path | what |
//! |---|---|
//! | `treaty-manifest.json` | required: `{"name", "version", "contracts": [..], "module": "contract.wasm" or null, "data_files": [..]}` |
//! | `contract.wasm` | the contract module, when `contracts` is not empty |
//! | `data/<path>` | one entry per listed data file |
//! | `signatures/<n>.sig` | BCS `AttachmentSignature { by, bytes }` over the content hash |
//!
//! Nothing else is allowed. The **attachment id** is the SHA-256 of the whole archive. The
//! **content hash** that signers sign is `SHA-256(BCS(sorted [(path, SHA-256(bytes))]))` over
//! every entry except signatures, behind the tag `TREATY/ATTACHMENT-SIGNATURE/v1\0`.
//! [`pack`] writes archives deterministically (sorted entries, zero times and owners, mode
//! 0644), so the same inputs always give the same id.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use treaty_core::{KeyPair, PublicKey, SandboxLimits, SecureHash, encoding};

/// The manifest file's path.
pub const MANIFEST: &str = "treaty-manifest.json";
/// The module's path.
pub const MODULE: &str = "contract.wasm";
const DATA_PREFIX: &str = "data/";
const SIG_PREFIX: &str = "signatures/";
const SIG_TAG: &[u8] = b"TREATY/ATTACHMENT-SIGNATURE/v1\0";
/// The most entries a bundle may hold.
pub const MAX_ENTRIES: usize = 1024;

/// What a bundle declares about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// A human name for the bundle.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Contract names the module defines.
    pub contracts: Vec<String>,
    /// The module's path (`contract.wasm`) when it defines contracts.
    pub module: Option<String>,
    /// Data files, as the paths contracts read them by.
    pub data_files: Vec<String>,
}

/// A signature over a bundle's content hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentSignature {
    /// The signing key (a leaf key).
    pub by: PublicKey,
    /// The signature bytes.
    pub bytes: Vec<u8>,
}

/// Why bytes are not an acceptable attachment bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Over the size limit.
    #[error("attachment is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Bytes offered.
        size: u64,
        /// Bytes allowed.
        limit: u64,
    },
    /// The module is over its size limit.
    #[error("contract module is {size} bytes, over the limit of {limit}")]
    ModuleTooLarge {
        /// Bytes offered.
        size: u64,
        /// Bytes allowed.
        limit: u64,
    },
    /// Not a readable tar archive.
    #[error("attachment is not a tar archive: {0}")]
    NotAnArchive(String),
    /// An entry the format does not allow.
    #[error("attachment entry {path:?} is not allowed: {why}")]
    BadEntry {
        /// The entry path.
        path: String,
        /// Why.
        why: &'static str,
    },
    /// The manifest is missing or malformed.
    #[error("attachment manifest: {0}")]
    Manifest(String),
    /// A signature that does not verify.
    #[error("attachment signature by {0} does not verify")]
    BadSignature(String),
}

impl BundleError {
    /// A stable code for operators.
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::TooLarge { .. } => "ATTACHMENT-TOO-LARGE",
            BundleError::ModuleTooLarge { .. } => "ATTACHMENT-MODULE-TOO-LARGE",
            BundleError::NotAnArchive(_) => "ATTACHMENT-NOT-ARCHIVE",
            BundleError::BadEntry { .. } => "ATTACHMENT-BAD-ENTRY",
            BundleError::Manifest(_) => "ATTACHMENT-MANIFEST",
            BundleError::BadSignature(_) => "ATTACHMENT-BAD-SIGNATURE",
        }
    }
}

/// A parsed, checked bundle.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The attachment id (SHA-256 of the archive).
    pub id: SecureHash,
    /// The manifest.
    pub manifest: Manifest,
    /// The module bytes, if any.
    pub module: Option<Arc<[u8]>>,
    /// Data files by path.
    pub files: BTreeMap<String, Arc<[u8]>>,
    /// Keys whose signatures verified, sorted.
    pub signers: Vec<PublicKey>,
}

fn check_path(path: &str) -> Result<(), BundleError> {
    let bad = |why| Err(BundleError::BadEntry { path: path.chars().take(120).collect(), why });
    if path.is_empty() || path.len() > 255 {
        return bad("path must be 1 to 255 bytes");
    }
    if !path.bytes().all(|b| b.is_ascii_graphic() || b == b' ') || path.contains('\\') {
        return bad("path must be printable ASCII without backslashes");
    }
    if path.starts_with('/') || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("path must be relative and normalised");
    }
    Ok(())
}

fn check_contract_name(name: &str) -> Result<(), BundleError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|seg| !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if ok { Ok(()) } else { Err(BundleError::Manifest(format!("contract name {name:?} must be dot-separated identifiers"))) }
}

/// The hash signers sign: every non-signature entry's path and content hash, sorted by path.
pub fn content_hash(entries: &BTreeMap<String, Vec<u8>>) -> SecureHash {
    let listing: Vec<(&str, SecureHash)> =
        entries.iter().filter(|(p, _)| !p.starts_with(SIG_PREFIX)).map(|(p, b)| (p.as_str(), SecureHash::sha256(b))).collect();
    SecureHash::sha256(&encoding::encode(&listing))
}

fn signing_bytes(content: &SecureHash) -> Vec<u8> {
    [SIG_TAG, content.as_bytes()].concat()
}

/// Reads and checks a bundle against `limits`: format, paths, manifest, module presence and
/// size, data files, signatures.
pub fn parse(bytes: &[u8], limits: &SandboxLimits) -> Result<Bundle, BundleError> {
    if bytes.len() as u64 > limits.max_attachment_bytes {
        return Err(BundleError::TooLarge { size: bytes.len() as u64, limit: limits.max_attachment_bytes });
    }
    let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes);
    let iter = archive.entries().map_err(|e| BundleError::NotAnArchive(e.to_string()))?;
    for entry in iter {
        let mut entry = entry.map_err(|e| BundleError::NotAnArchive(e.to_string()))?;
        let path = entry.path_bytes();
        let path = String::from_utf8(path.into_owned())
            .map_err(|_| BundleError::BadEntry { path: "<non-UTF-8>".into(), why: "path must be UTF-8" })?;
        check_path(&path)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(BundleError::BadEntry { path, why: "only regular files are allowed" });
        }
        if entries.len() >= MAX_ENTRIES {
            return Err(BundleError::BadEntry { path, why: "too many entries" });
        }
        // The entry's size as read (a PAX record overrides the header's): reserving what the
        // header claims let a bundle of many empty entries reserve the archive's size for each.
        let size = entry.size();
        if size > bytes.len() as u64 {
            return Err(BundleError::NotAnArchive(format!("entry {path} claims {size} bytes")));
        }
        let mut content = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut content).map_err(|e| BundleError::NotAnArchive(e.to_string()))?;
        if entries.insert(path.clone(), content).is_some() {
            return Err(BundleError::BadEntry { path, why: "duplicate entry" });
        }
    }
    let manifest_bytes = entries.get(MANIFEST).ok_or_else(|| BundleError::Manifest(format!("{MANIFEST} is missing")))?;
    let manifest: Manifest = serde_json::from_slice(manifest_bytes).map_err(|e| BundleError::Manifest(e.to_string()))?;
    for c in &manifest.contracts {
        check_contract_name(c)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = manifest.contracts.iter().find(|c| !seen.insert(*c)) {
        return Err(BundleError::Manifest(format!("contract {dup} listed twice")));
    }
    match (&manifest.module, manifest.contracts.is_empty()) {
        (Some(m), false) if m == MODULE => {}
        (None, true) => {}
        (Some(m), _) if m != MODULE => return Err(BundleError::Manifest(format!("module must be at {MODULE}, not {m:?}"))),
        (Some(_), true) => return Err(BundleError::Manifest("a module that defines no contracts".into())),
        (None, false) => return Err(BundleError::Manifest("contracts are listed but no module is given".into())),
        _ => {}
    }
    for f in &manifest.data_files {
        check_path(f)?;
    }
    // Every entry must be accounted for by the manifest.
    let mut files = BTreeMap::new();
    let mut module = None;
    let mut signers = Vec::new();
    let content = content_hash(&entries);
    for (path, data) in &entries {
        if path == MANIFEST {
            continue;
        } else if path == MODULE && manifest.module.is_some() {
            if data.len() as u64 > limits.max_module_bytes {
                return Err(BundleError::ModuleTooLarge { size: data.len() as u64, limit: limits.max_module_bytes });
            }
            module = Some(Arc::from(data.as_slice()));
        } else if let Some(name) = path.strip_prefix(DATA_PREFIX).filter(|n| manifest.data_files.iter().any(|f| f == n)) {
            files.insert(name.to_string(), Arc::from(data.as_slice()));
        } else if path.starts_with(SIG_PREFIX) && path.ends_with(".sig") {
            let sig: AttachmentSignature =
                encoding::decode(data).map_err(|_| BundleError::BadEntry { path: path.clone(), why: "signature does not decode" })?;
            sig.by.verify(&signing_bytes(&content), &sig.bytes).map_err(|_| BundleError::BadSignature(sig.by.short()))?;
            signers.push(sig.by);
        } else {
            return Err(BundleError::BadEntry { path: path.clone(), why: "not named by the manifest" });
        }
    }
    if manifest.module.is_some() && module.is_none() {
        return Err(BundleError::Manifest(format!("{MODULE} is missing")));
    }
    if let Some(missing) = manifest.data_files.iter().find(|f| !files.contains_key(*f)) {
        return Err(BundleError::Manifest(format!("data file {missing} is listed but not present")));
    }
    signers.sort();
    signers.dedup();
    Ok(Bundle { id: SecureHash::sha256(bytes), manifest, module, files, signers })
}

/// Writes a bundle deterministically: same inputs, same bytes, same id. `signers` sign the
/// content hash.
pub fn pack(manifest: &Manifest, module: Option<&[u8]>, data_files: &BTreeMap<String, Vec<u8>>, signers: &[&KeyPair]) -> Vec<u8> {
    let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    entries.insert(MANIFEST.to_string(), serde_json::to_vec_pretty(manifest).unwrap_or_default());
    if let Some(m) = module {
        entries.insert(MODULE.to_string(), m.to_vec());
    }
    for (path, data) in data_files {
        entries.insert(format!("{DATA_PREFIX}{path}"), data.clone());
    }
    let content = content_hash(&entries);
    for (i, k) in signers.iter().enumerate() {
        let sig = AttachmentSignature { by: k.public(), bytes: k.sign(&signing_bytes(&content)) };
        entries.insert(format!("{SIG_PREFIX}{i:04}.sig"), encoding::encode(&sig));
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for (path, data) in &entries {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        // Writing to a Vec cannot fail, and paths were built from checked parts.
        let _ = builder.append_data(&mut header, path, data.as_slice());
    }
    builder.into_inner().unwrap_or_default()
}
