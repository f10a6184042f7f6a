//! # treaty-sandbox
//!
//! Runs contract code deterministically: every node reaches the same verdict on a
//! transaction, years later, on any machine (white paper "Deterministic JVM", done here with
//! WebAssembly). [`Sandbox`] implements [`treaty_core::ContractVerifier`]:
//!
//! 1. it finds the transaction's attachment that defines the contract, checks the bundle
//!    (format, manifest, signatures; see [`bundle`]) and its hash, and compiles its module once
//!    (cached by attachment id);
//! 2. it checks the contract's constraints and namespace ownership ([`constraints`]);
//! 3. it runs the module's `treaty_verify` with exactly the transaction and the data files of
//!    the transaction's attachments, under the fuel, memory and size limits of the network
//!    parameters ([`host`]).

pub mod bundle;
pub mod constraints;
mod error;
pub mod host;
pub mod store;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};

use serde::Serialize;
use treaty_core::{Attachment, ContractRejection, ContractVerdict, ContractVerifier, LedgerTransaction, NetworkParameters, SecureHash};
use wasmtime::{Engine, Linker};

pub use bundle::{Bundle, BundleError, Manifest};
pub use constraints::ConstraintError;
pub use error::SandboxError;
pub use host::RunOutcome;
pub use store::{AttachmentStore, MemoryAttachmentStore, check_attachment};

/// A bundle whose content matched its id, parsed and checked against its attachment's
/// claims; its module is compiled on first use as a contract's code.
struct Loaded {
    bundle: Bundle,
    module: OnceLock<Result<Option<Arc<host::LoadedModule>>, SandboxError>>,
}

/// Attachments whose outcome the sandbox keeps (parsed bundles, compiled modules, and refusals
/// of content that matched its id); beyond, the oldest is dropped. A network runs a few
/// contract versions; without a bound, every bundle anyone sent stayed in memory, compiled.
pub const MAX_CACHED_ATTACHMENTS: usize = 128;

/// The outcomes kept, by attachment id, and their order of arrival.
#[derive(Default)]
struct Cache {
    by_id: HashMap<SecureHash, Result<Arc<Loaded>, SandboxError>>,
    order: VecDeque<SecureHash>,
}

impl Cache {
    fn insert(&mut self, id: SecureHash, outcome: Result<Arc<Loaded>, SandboxError>) {
        if self.by_id.insert(id, outcome).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > MAX_CACHED_ATTACHMENTS {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }
}

/// The contract sandbox for one set of network parameters.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<host::HostState>,
    params: NetworkParameters,
    cache: RwLock<Cache>,
    /// Held while a bundle is checked or a module compiled, so concurrent first uses of a
    /// contract compile it once (the others wait and find it cached) instead of each paying.
    compiling: Mutex<()>,
    compilations: std::sync::atomic::AtomicU64,
    slots: Slots,
}

/// A counting semaphore over the engine's instance slots.
struct Slots {
    free: Mutex<u32>,
    released: Condvar,
}

impl Slots {
    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.released.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.released.notify_one();
    }
}

/// The input handed to a module, borrowed (encodes exactly as [`treaty_core::ContractInput`]).
#[derive(Serialize)]
struct InputRef<'a> {
    contract: &'a str,
    tx: &'a LedgerTransaction,
}

impl Sandbox {
    /// A sandbox enforcing `params` (limits, whitelist, namespaces, development flag).
    pub fn new(params: NetworkParameters) -> Result<Sandbox, SandboxError> {
        let engine = host::engine(&params.sandbox)?;
        let linker = host::linker(&engine)?;
        let slots = Slots { free: Mutex::new(host::INSTANCE_SLOTS), released: Condvar::new() };
        Ok(Sandbox {
            engine,
            linker,
            params,
            cache: RwLock::new(Cache::default()),
            compiling: Mutex::new(()),
            compilations: Default::default(),
            slots,
        })
    }

    /// The parameters this sandbox enforces.
    pub fn params(&self) -> &NetworkParameters {
        &self.params
    }

    /// How many attachments' outcomes are in the cache (at most [`MAX_CACHED_ATTACHMENTS`]).
    pub fn cached(&self) -> usize {
        self.cache.read().map(|c| c.by_id.len()).unwrap_or(0)
    }

    /// How many modules this sandbox has compiled (each at most once while cached).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The bundle of attachment `a`, parsed and checked against `a`'s claims: cached once its
    /// content matched its id, refusals included (the id names the bytes, so they would be
    /// refused again). A hash mismatch is not cached: a wrong attachment claiming this id must
    /// not keep the right one out.
    fn load(&self, a: &Attachment) -> Result<Arc<Loaded>, SandboxError> {
        let cached = || self.cache.read().ok().and_then(|c| c.by_id.get(&a.id).cloned());
        if let Some(outcome) = cached() {
            return outcome;
        }
        let actual = SecureHash::sha256(&a.content);
        if actual != a.id {
            return Err(SandboxError::AttachmentHashMismatch { id: a.id, actual });
        }
        let _checking = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(outcome) = cached() {
            return outcome;
        }
        let outcome = self.parse(a);
        if let Ok(mut c) = self.cache.write() {
            c.insert(a.id, outcome.clone());
        }
        outcome
    }

    fn parse(&self, a: &Attachment) -> Result<Arc<Loaded>, SandboxError> {
        let bundle = bundle::parse(&a.content, &self.params.sandbox).map_err(|error| SandboxError::Bundle { id: a.id, error })?;
        let same = |x: &[String], y: &[String]| {
            let (mut x, mut y) = (x.to_vec(), y.to_vec());
            x.sort();
            y.sort();
            x == y
        };
        if !same(&bundle.manifest.contracts, &a.contracts) || !same(&bundle.manifest.data_files, &a.files) {
            return Err(SandboxError::ManifestMismatch(a.id));
        }
        Ok(Arc::new(Loaded { bundle, module: OnceLock::new() }))
    }

    /// The compiled module of `loaded`, compiling it on first use (once; a module that does
    /// not compile is refused the same way every time without compiling again).
    fn module(&self, loaded: &Loaded) -> Result<Option<Arc<host::LoadedModule>>, SandboxError> {
        if let Some(outcome) = loaded.module.get() {
            return outcome.clone();
        }
        let _compiling = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        loaded
            .module
            .get_or_init(|| match &loaded.bundle.module {
                Some(bytes) => {
                    self.compilations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    host::load(&self.engine, &self.linker, bytes, &self.params.sandbox).map(|m| Some(Arc::new(m)))
                }
                None => Ok(None),
            })
            .clone()
    }

    /// Checks and compiles a module on its own (no bundle), e.g. to vet an upload early.
    pub fn check_module(&self, wasm: &[u8]) -> Result<(), SandboxError> {
        host::load(&self.engine, &self.linker, wasm, &self.params.sandbox).map(|_| ())
    }

    /// Verifies `contract` over `tx`: constraints, then the module. Returns the contract's own
    /// output (its summaries or its rejection message) and the fuel used.
    pub fn run_contract(&self, contract: &str, tx: &LedgerTransaction) -> Result<RunOutcome, SandboxError> {
        let attachment = tx
            .attachments
            .iter()
            .find(|a| a.contracts.iter().any(|c| c == contract))
            .ok_or_else(|| SandboxError::NoCode(contract.to_string()))?;
        let loaded = self.load(attachment)?;
        // The constraints first: code the transaction's states do not allow is never compiled.
        constraints::check(contract, tx, &loaded.bundle, &self.params)?;
        let module = self.module(&loaded)?.ok_or_else(|| SandboxError::NoCode(contract.to_string()))?;
        let mut files: BTreeMap<String, Arc<[u8]>> = BTreeMap::new();
        for a in &tx.attachments {
            let l = if a.id == attachment.id { loaded.clone() } else { self.load(a)? };
            files.extend(l.bundle.files.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let input = treaty_core::encoding::encode(&InputRef { contract, tx });
        let _slot = self.slots.acquire();
        host::run(&self.engine, &module, Arc::new(input), Arc::new(files), &self.params.sandbox)
    }
}

impl ContractVerifier for Sandbox {
    fn verify_contract(&self, contract: &str, tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
        match self.run_contract(contract, tx) {
            Ok(RunOutcome { output: Ok(summaries), .. }) => Ok(ContractVerdict { summaries }),
            Ok(RunOutcome { output: Err(message), .. }) => Err(ContractRejection::new(message)),
            Err(e) => Err(ContractRejection::new(format!("[{}] {e}", e.code()))),
        }
    }
}
