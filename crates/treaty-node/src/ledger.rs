//! The node's ledger as flows see it ([`treaty_flows::Ledger`]): transactions and attachments
//! in the node database, contracts run in the wasm sandbox under the network's parameters.
//!
//! The sandbox (a wasmtime engine) is created on first use, so a node that never verifies a
//! transaction never pays for it; checked attachments are cached by id, so a bundle's
//! signatures are checked once per process. The transactions this node recorded last are kept
//! decoded ([`Recent`]): a flow reads what it has just recorded (a payment reads the issue it
//! spends to verify itself, then again to push it to the payee) without a database read and a
//! decode each time.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use treaty_core::{
    Attachment, ContractRejection, ContractVerdict, ContractVerifier, LedgerTransaction, Limits, NetworkParameters, PublicKey, SecureHash,
    SignedTransaction, Timestamp, WireTransaction, X500Name,
};
use treaty_flows::resolve::dependencies;
use treaty_flows::{FlowError, Ledger};
use treaty_net::messaging::StoreError;
use treaty_sandbox::Sandbox;
use treaty_storage::{Database, Recorded, StorageError};
use treaty_vault::Vault;

/// Transactions and attachments in the node database; contracts in the sandbox.
pub struct NodeLedger {
    db: Database,
    params: NetworkParameters,
    sandbox: OnceLock<Result<Sandbox, String>>,
    attachments: Mutex<HashMap<SecureHash, Attachment>>,
    recent: Mutex<Recent>,
    vault: OnceLock<(Vault, Ours)>,
    fetches: treaty_flows::fetches::AttachmentFetches,
}

/// The last [`Recent::CAPACITY`] transactions recorded in small batches, decoded, by id. What
/// is recorded never changes, so a hit is what the database would return — with one
/// difference that does not matter: the database keeps a transaction's first recording (a
/// second is ignored), and so does this set while it holds the transaction; one recorded
/// again after it left the set (or first in a large batch) is cached as the later recording
/// had it. Both carry every signature verification required (nothing is recorded before it
/// verifies), over the same id.
#[derive(Default)]
struct Recent {
    by_id: HashMap<SecureHash, SignedTransaction>,
    order: VecDeque<SecureHash>,
}

impl Recent {
    /// Enough for every flow in flight on a busy node to find what it recorded a moment ago;
    /// a few MiB at most.
    const CAPACITY: usize = 1024;
    /// Larger batches (a back-chain being resolved) are not cached: they would only push out
    /// what flows are about to read.
    const BATCH: usize = 8;

    fn insert(&mut self, stx: &SignedTransaction) {
        let id = stx.id();
        if self.by_id.contains_key(&id) {
            return;
        }
        if self.order.len() >= Self::CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.by_id.remove(&old);
        }
        self.order.push_back(id);
        self.by_id.insert(id, stx.clone());
    }
}

/// Which keys are this node's (its identity and confidential keys): what makes a state relevant.
pub type Ours = Arc<dyn Fn(&PublicKey) -> bool + Send + Sync>;

impl NodeLedger {
    /// The ledger of the node with database `db` on a network with `params`.
    pub fn new(db: Database, params: NetworkParameters) -> NodeLedger {
        NodeLedger {
            db,
            params,
            sandbox: OnceLock::new(),
            attachments: Mutex::new(HashMap::new()),
            recent: Mutex::new(Recent::default()),
            vault: OnceLock::new(),
            fetches: Default::default(),
        }
    }

    /// From now on every recorded transaction is applied to `vault` too, its states relevant
    /// when `ours` holds one of their participants' keys. Applying is idempotent, and a flow
    /// that dies between recording and applying records again when it replays, so the vault
    /// catches up.
    pub fn attach_vault(&self, vault: Vault, ours: Ours) {
        let _ = self.vault.set((vault, ours));
    }

    /// The vault, once attached.
    pub fn vault(&self) -> Option<&Vault> {
        self.vault.get().map(|(v, _)| v)
    }

    /// Checks and stores an attachment bundle; returns it (its id is the SHA-256 of the bytes,
    /// so the same bytes give the same id) and whether it was new to this node.
    pub async fn import_attachment(&self, bytes: &[u8]) -> Result<(Attachment, bool), ImportError> {
        let a = self.check_attachment(bytes).map_err(ImportError::Invalid)?;
        let new = self.db.attachments().put(&a.id, bytes).await.map_err(ImportError::Storage)?;
        self.cache().insert(a.id, a.clone());
        Ok((a, new))
    }

    /// A stored attachment's bytes, as uploaded.
    pub async fn attachment_bytes(&self, id: &SecureHash) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.attachments().get(id).await
    }

    /// The largest attachment this network accepts, and the network parameter that sets it:
    /// the sandbox's attachment limit, or the transaction size limit when that is smaller (an
    /// attachment travels with the transactions that use it).
    pub fn attachment_limit(&self) -> (u64, &'static str) {
        let (attachment, transaction) = (self.params.sandbox.max_attachment_bytes, self.params.max_transaction_size);
        if transaction < attachment { (transaction, "max_transaction_size") } else { (attachment, "sandbox.max_attachment_bytes") }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<SecureHash, Attachment>> {
        self.attachments.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why an attachment was not imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The bundle is not acceptable; the message starts with the sandbox's code.
    #[error("{0}")]
    Invalid(String),
    /// The database.
    #[error(transparent)]
    Storage(StorageError),
}

fn storage(e: StorageError) -> FlowError {
    FlowError::Store(e.into())
}

impl Ledger for NodeLedger {
    async fn transactions(&self, ids: &[SecureHash]) -> Result<Vec<Option<SignedTransaction>>, FlowError> {
        if ids.len() <= Recent::BATCH {
            let recent = self.recent();
            let hits: Vec<Option<SignedTransaction>> = ids.iter().map(|id| recent.by_id.get(id).cloned()).collect();
            if hits.iter().all(Option::is_some) {
                return Ok(hits);
            }
        }
        let limits = self.limits();
        let rows = self.db.transactions().get_many(ids).await.map_err(storage)?;
        let n = ids.len();
        let ids = ids.to_vec();
        let decode = move || {
            use rayon::prelude::*;
            ids.par_iter()
                .zip(rows.into_par_iter())
                .map(|(id, bytes)| {
                    bytes
                        .map(|b| {
                            SignedTransaction::from_bytes(&b, &limits)
                                .map_err(|e| FlowError::Invalid(format!("recorded transaction {id} does not decode: {e}")))
                        })
                        .transpose()
                })
                .collect()
        };
        // Decoding hashes every component to compute the id: many at once go to the CPU pool.
        if n > 64 {
            tokio::task::spawn_blocking(decode).await.map_err(|e| FlowError::Invalid(format!("decoding task failed: {e}")))?
        } else {
            decode()
        }
    }

    async fn ancestors(&self, ids: &[SecureHash], limit: usize) -> Result<Vec<SecureHash>, FlowError> {
        self.db.transactions().ancestors(ids, limit).await.map_err(storage)
    }

    async fn recorded(&self, ids: &[SecureHash]) -> Result<Vec<bool>, FlowError> {
        if ids.len() <= Recent::BATCH && {
            let recent = self.recent();
            ids.iter().all(|id| recent.by_id.contains_key(id))
        } {
            return Ok(vec![true; ids.len()]);
        }
        self.db.transactions().contains_many(ids).await.map_err(storage)
    }

    async fn attachments(&self, ids: &[SecureHash]) -> Result<Vec<Option<Attachment>>, FlowError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(a) = self.cache().get(id).cloned() {
                out.push(Some(a));
                continue;
            }
            let Some(bytes) = self.db.attachments().get(id).await.map_err(storage)? else {
                out.push(None);
                continue;
            };
            let a = self.check_attachment(&bytes).map_err(|e| FlowError::Invalid(format!("stored attachment {id}: {e}")))?;
            self.cache().insert(*id, a.clone());
            out.push(Some(a));
        }
        Ok(out)
    }

    fn check_attachment(&self, bytes: &[u8]) -> Result<Attachment, String> {
        treaty_sandbox::check_attachment(bytes, &self.params).map_err(|e| format!("{} {e}", e.code()))
    }

    async fn record(&self, attachments: &[Attachment], transactions: &[SignedTransaction]) -> Result<(), FlowError> {
        let encoded: Vec<(SecureHash, Vec<u8>, Vec<SecureHash>)> =
            transactions.iter().map(|t| (t.id(), t.to_bytes(), dependencies(t))).collect();
        let txs: Vec<Recorded> = encoded.iter().map(|(id, b, d)| Recorded { id: *id, bytes: b, dependencies: d }).collect();
        let atts: Vec<(SecureHash, &[u8])> = attachments.iter().map(|a| (a.id, &a.content[..])).collect();
        let vault = self.vault.get().filter(|_| !transactions.is_empty());
        let vault_failed = |e: treaty_vault::VaultError| match e {
            treaty_vault::VaultError::Storage(e) => storage(e),
            e => {
                let message = format!("applying to the vault: {} {e}", e.code());
                FlowError::Store(if e.is_transient() { StoreError::transient(message) } else { StoreError::permanent(message) })
            }
        };
        let now = || Timestamp(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64));
        let wires: Vec<&WireTransaction> = transactions.iter().map(|t| t.tx()).collect();
        match vault {
            // On SQLite the transactions and their vault states are written by one job: one
            // commit to wait for instead of two.
            Some((vault, ours)) if self.db.sqlite_writer().is_some() => {
                let job = treaty_storage::TransactionStore::record_job(&atts, &txs);
                vault.apply_with(&wires, ours.as_ref(), now(), Some(job)).await.map_err(vault_failed)?;
            }
            // Recorded first, then applied: a flow that dies in between records again when
            // it replays, and applying is idempotent.
            _ => {
                self.db.transactions().record(&atts, &txs).await.map_err(storage)?;
                if let Some((vault, ours)) = vault {
                    vault.apply(&wires, ours.as_ref(), now()).await.map_err(vault_failed)?;
                }
            }
        }
        let mut cache = self.cache();
        for a in attachments {
            cache.insert(a.id, a.clone());
        }
        drop(cache);
        if transactions.len() <= Recent::BATCH {
            let mut recent = self.recent();
            for t in transactions {
                recent.insert(t);
            }
        }
        Ok(())
    }

    fn verifier(&self) -> &dyn ContractVerifier {
        match self.sandbox.get_or_init(|| Sandbox::new(self.params.clone()).map_err(|e| e.to_string())) {
            Ok(sandbox) => sandbox,
            Err(e) => {
                static BROKEN: OnceLock<Broken> = OnceLock::new();
                BROKEN.get_or_init(|| Broken(e.clone()))
            }
        }
    }

    fn limits(&self) -> Limits {
        Limits { max_transaction_bytes: usize::try_from(self.params.max_transaction_size).unwrap_or(usize::MAX), ..Limits::default() }
    }

    fn max_message_size(&self) -> usize {
        usize::try_from(self.params.max_message_size).unwrap_or(usize::MAX)
    }

    fn is_validating_notary(&self, notary: &X500Name) -> bool {
        self.params.notaries.iter().any(|n| n.validating && n.identity.name == *notary)
    }

    fn is_network_notary(&self, notary: &treaty_core::Party) -> bool {
        self.params.notaries.iter().any(|n| n.identity == *notary)
    }

    fn is_ours(&self, party: &treaty_core::AbstractParty) -> bool {
        let Some((_, ours)) = self.vault.get() else { return false };
        treaty_vault::is_ours(party, &**ours)
    }

    fn notary_members(&self, notary: &X500Name) -> Vec<X500Name> {
        self.params.notaries.iter().find(|n| n.identity.name == *notary).map(|n| n.members.clone()).unwrap_or_default()
    }

    fn attachment_fetches(&self) -> &treaty_flows::fetches::AttachmentFetches {
        &self.fetches
    }
}

/// The verifier when the sandbox cannot be created: every contract is refused, saying why.
struct Broken(String);

impl ContractVerifier for Broken {
    fn verify_contract(&self, contract: &str, _tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
        Err(ContractRejection::new(format!("contract {contract} cannot run: the sandbox failed to start: {}", self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use treaty_core::{PrivacySalt, TransactionBuilder};

    /// A distinct transaction for each `n`.
    fn tx(n: usize) -> SignedTransaction {
        let wtx = TransactionBuilder::new(None).summary(format!("transaction {n}")).build(PrivacySalt([1; 32])).expect("builds");
        SignedTransaction::new(wtx, vec![])
    }

    #[test]
    fn the_recent_set_keeps_the_last_capacity_transactions_once_each() {
        let mut recent = Recent::default();
        let (first, second) = (tx(0), tx(1));
        recent.insert(&first);
        recent.insert(&first);
        assert_eq!(recent.order.len(), 1, "a transaction recorded twice is kept once");
        recent.insert(&second);
        for i in 2..Recent::CAPACITY + 1 {
            recent.insert(&tx(i));
        }
        assert_eq!((recent.order.len(), recent.by_id.len()), (Recent::CAPACITY, Recent::CAPACITY));
        assert!(!recent.by_id.contains_key(&first.id()), "the oldest went first");
        assert_eq!(recent.by_id.get(&second.id()), Some(&second));
    }

    /// What is read back is what was recorded, whether it comes from the recent set or (for a
    /// batch too large to cache, or after a restart) from the database.
    #[tokio::test]
    async fn recorded_transactions_read_back_the_same_from_the_recent_set_and_the_database() {
        let db = Database::open("sqlite::memory:", std::path::Path::new(".")).await.expect("database");
        let ledger = NodeLedger::new(db.clone(), NetworkParameters::default());
        let one = tx(1);
        ledger.record(&[], std::slice::from_ref(&one)).await.expect("recorded");
        assert!(ledger.recent().by_id.contains_key(&one.id()));
        let chain: Vec<SignedTransaction> = (10..10 + Recent::BATCH + 1).map(tx).collect();
        ledger.record(&[], &chain).await.expect("recorded");
        assert!(chain.iter().all(|t| !ledger.recent().by_id.contains_key(&t.id())), "a large batch is not cached");

        let unknown = tx(99).id();
        let ids = [one.id(), chain[0].id(), unknown];
        let expected = vec![Some(one.clone()), Some(chain[0].clone()), None];
        assert_eq!(ledger.transactions(&ids).await.expect("read"), expected);
        assert_eq!(ledger.transactions(&[one.id()]).await.expect("read"), vec![Some(one.clone())]);
        assert_eq!(ledger.recorded(&ids).await.expect("read"), vec![true, true, false]);
        // A fresh ledger over the same database (a restart) reads the same from the database.
        let again = NodeLedger::new(db, NetworkParameters::default());
        assert_eq!(again.transactions(&ids).await.expect("read"), expected);
        assert_eq!(again.recorded(&[one.id()]).await.expect("read"), vec![true]);
    }
}
