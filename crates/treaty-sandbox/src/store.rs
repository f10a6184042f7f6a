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
        let id = SecureHash::sha256(bytes);
        let b = bundle::parse(bytes, &self.params.sandbox).map_err(|error| SandboxError::Bundle { id, error })?;
        constraints::check_namespaces(&b, &self.params)?;
        let a = Attachment {
            id,
            contracts: b.manifest.contracts.clone(),
            files: b.manifest.data_files.clone(),
            signers: b.signers.clone(),
            content: Arc::from(bytes),
        };
        if let Ok(mut items) = self.items.write() {
            items.insert(id, a);
        }
        Ok(id)
    }

    fn get(&self, id: &SecureHash) -> Option<Attachment> {
        self.items.read().ok()?.get(id).cloned()
    }
}
