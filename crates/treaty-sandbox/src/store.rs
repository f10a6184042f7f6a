//! Attachment storage: by hash, checked on upload.
//!
//! [`AttachmentStore`] is the seam; the node's database implementation lands with the storage
//! issue. [`MemoryAttachmentStore`] keeps bundles in memory (tests, tools, the demo). Uploading
//! checks the bundle format, manifest and signatures, the size limits, and namespace ownership,
//! and is idempotent: the same bytes give the same id.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use treaty_core::{Attachment, NetworkParameters, SecureHash};

use crate::bundle;
use crate::constraints;
use crate::error::SandboxError;

/// Stores attachments by id.
pub trait AttachmentStore: Send + Sync {
    /// Checks and stores a bundle; returns its id.
    fn upload(&self, bytes: &[u8]) -> Result<SecureHash, SandboxError>;
    /// The attachment with this id, if stored.
    fn get(&self, id: &SecureHash) -> Option<Attachment>;
}

/// Checks an attachment bundle as an upload is checked — format, manifest, signatures, size
/// limits, namespace ownership — and describes it. Its id is the SHA-256 of `bytes`.
pub fn check_attachment(bytes: &[u8], params: &NetworkParameters) -> Result<Attachment, SandboxError> {
    let id = SecureHash::sha256(bytes);
    let b = bundle::parse(bytes, &params.sandbox).map_err(|error| SandboxError::Bundle { id, error })?;
    constraints::check_namespaces(&b, params)?;
    Ok(Attachment {
        id,
        contracts: b.manifest.contracts.clone(),
        files: b.manifest.data_files.clone(),
        signers: b.signers.clone(),
        content: Arc::from(bytes),
    })
}

/// An in-memory [`AttachmentStore`].
pub struct MemoryAttachmentStore {
    params: NetworkParameters,
    items: RwLock<BTreeMap<SecureHash, Attachment>>,
}

impl MemoryAttachmentStore {
    /// An empty store checking uploads against `params`.
    pub fn new(params: NetworkParameters) -> Self {
        MemoryAttachmentStore { params, items: RwLock::new(BTreeMap::new()) }
    }
}

impl AttachmentStore for MemoryAttachmentStore {
    fn upload(&self, bytes: &[u8]) -> Result<SecureHash, SandboxError> {
        let a = check_attachment(bytes, &self.params)?;
        let id = a.id;
        if let Ok(mut items) = self.items.write() {
            items.insert(id, a);
        }
        Ok(id)
    }

    fn get(&self, id: &SecureHash) -> Option<Attachment> {
        self.items.read().ok()?.get(id).cloned()
    }
}
