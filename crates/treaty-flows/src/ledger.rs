//! The seam between the standard flows and a node's ledger: recorded transactions and
//! attachments, the contract verifier, and the limits of the network.
//!
//! The node implements [`Ledger`] over its database and the wasm sandbox; tests implement it
//! in memory with native contracts. The standard flows (see [`crate::resolve`] and
//! [`crate::standard`]) touch the ledger only through it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use treaty_core::{AbstractParty, Attachment, ContractVerifier, Limits, Party, SecureHash, SignedTransaction, X500Name};

use crate::error::FlowError;

/// A node's ledger as the standard flows see it.
pub trait Ledger: Send + Sync + 'static {
    /// Recorded transactions by id, in the order asked (`None` for an id not recorded).
    fn transactions(&self, ids: &[SecureHash]) -> impl Future<Output = Result<Vec<Option<SignedTransaction>>, FlowError>> + Send;
    /// Up to `limit` ancestors of `ids` that are recorded, nearest first (a hint for
    /// prefetching: it may stop short, and the walk continues by decoding transactions).
    fn ancestors(&self, ids: &[SecureHash], limit: usize) -> impl Future<Output = Result<Vec<SecureHash>, FlowError>> + Send;
    /// For each of `ids`, whether it is recorded.
    fn recorded(&self, ids: &[SecureHash]) -> impl Future<Output = Result<Vec<bool>, FlowError>> + Send;
    /// Stored attachments by id, checked, in the order asked (`None` for one not stored).
    fn attachments(&self, ids: &[SecureHash]) -> impl Future<Output = Result<Vec<Option<Attachment>>, FlowError>> + Send;
    /// Checks an attachment bundle (format, signatures, namespace ownership) without storing it.
    fn check_attachment(&self, bytes: &[u8]) -> Result<Attachment, String>;
    /// Records attachments, then transactions (dependencies first), all in one database
    /// transaction. Idempotent: what is recorded already stays as it is.
    fn record(&self, attachments: &[Attachment], transactions: &[SignedTransaction]) -> impl Future<Output = Result<(), FlowError>> + Send;
    /// Runs contract code (the wasm sandbox in a node).
    fn verifier(&self) -> &dyn ContractVerifier;
    /// The network's limits on a transaction.
    fn limits(&self) -> Limits;
    /// The largest message the network carries (bytes).
    fn max_message_size(&self) -> usize;
    /// Whether the network parameters list `notary` as a validating notary (which needs whole
    /// transactions with their back-chains, not tear-offs).
    fn is_validating_notary(&self, notary: &X500Name) -> bool;

    /// Whether `notary` (name and key) is one of the network's notaries (the network
    /// parameters' list). A state this node takes must be guarded by no other: one guarded by
    /// a "notary" of someone's own making is a state that party can double-spend.
    fn is_network_notary(&self, notary: &Party) -> bool;

    /// The attachments this node's flows are downloading (one registry per node), so flows
    /// needing the same one at once download it once.
    fn attachment_fetches(&self) -> &crate::fetches::AttachmentFetches;

    /// Whether this node holds `party`'s key (its identity or a confidential key, a leaf of a
    /// composite one): whether a state naming it as a participant is this node's. None here by
    /// default (a ledger without a vault).
    fn is_ours(&self, party: &AbstractParty) -> bool {
        let _ = party;
        false
    }

    /// The member nodes hosting `notary` when it is a cluster (the network parameters'
    /// [`treaty_core::NotaryInfo::members`]); empty for a notary that is a node of its own.
    fn notary_members(&self, notary: &X500Name) -> Vec<X500Name> {
        let _ = notary;
        Vec::new()
    }
}

/// Checks an attachment bundle and describes it (see [`Ledger::check_attachment`]).
pub type AttachmentCheck = Arc<dyn Fn(&[u8]) -> Result<Attachment, String> + Send + Sync>;

/// An in-memory [`Ledger`] (tests and simulation: not durable).
pub struct MemoryLedger {
    transactions: Mutex<HashMap<SecureHash, SignedTransaction>>,
    attachments: Mutex<BTreeMap<SecureHash, Attachment>>,
    verifier: Arc<dyn ContractVerifier>,
    check: AttachmentCheck,
    max_message_size: usize,
    validating_notaries: Mutex<HashSet<X500Name>>,
    /// The network's notaries, once set (until then any notary is taken as one).
    network_notaries: Mutex<Option<Vec<Party>>>,
    notary_members: Mutex<HashMap<X500Name, Vec<X500Name>>>,
    /// Stored right after the next read of attachments (see [`MemoryLedger::store_after_next_read`]).
    after_next_read: Mutex<Option<Attachment>>,
    fetches: crate::fetches::AttachmentFetches,
}

impl MemoryLedger {
    /// Stores `attachment` right after the next read of attachments answers without it: as
    /// if another flow recorded it at that moment (for tests of that race).
    pub fn store_after_next_read(&self, attachment: Attachment) {
        *crate::context::lock(&self.after_next_read) = Some(attachment);
    }

    /// An empty ledger verifying contracts with `verifier` and attachments with `check`.
    pub fn new(verifier: Arc<dyn ContractVerifier>, check: AttachmentCheck, max_message_size: usize) -> MemoryLedger {
        MemoryLedger {
            transactions: Mutex::default(),
            attachments: Mutex::default(),
            verifier,
            check,
            max_message_size,
            validating_notaries: Mutex::default(),
            network_notaries: Mutex::default(),
            notary_members: Mutex::default(),
            after_next_read: Mutex::default(),
            fetches: Default::default(),
        }
    }

    /// Names the member nodes hosting `notary` (a cluster), as network parameters would.
    pub fn set_notary_members(&self, notary: X500Name, members: Vec<X500Name>) {
        crate::context::lock(&self.notary_members).insert(notary, members);
    }

    /// Marks `notary` as validating, as network parameters would.
    pub fn set_validating_notary(&self, notary: X500Name) {
        crate::context::lock(&self.validating_notaries).insert(notary);
    }

    /// Sets the network's notaries, as network parameters would (until then, any notary is
    /// taken as one).
    pub fn set_network_notaries(&self, notaries: Vec<Party>) {
        *crate::context::lock(&self.network_notaries) = Some(notaries);
    }

    /// Records a transaction without checking it (test set-up).
    pub fn insert(&self, stx: SignedTransaction) {
        self.insert_as(stx.id(), stx);
    }

    /// Records `stx` under `id`, even if that is not its id (tests of tampered ledgers).
    pub fn insert_as(&self, id: SecureHash, stx: SignedTransaction) {
        crate::context::lock(&self.transactions).insert(id, stx);
    }

    /// A recorded transaction.
    pub fn get(&self, id: &SecureHash) -> Option<SignedTransaction> {
        crate::context::lock(&self.transactions).get(id).cloned()
    }

    /// Stores an attachment without checking it (test set-up).
    pub fn insert_attachment(&self, a: Attachment) {
        crate::context::lock(&self.attachments).insert(a.id, a);
    }

    /// How many transactions are recorded.
    pub fn len(&self) -> usize {
        crate::context::lock(&self.transactions).len()
    }

    /// Whether no transaction is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Ledger for MemoryLedger {
    async fn transactions(&self, ids: &[SecureHash]) -> Result<Vec<Option<SignedTransaction>>, FlowError> {
        let txs = crate::context::lock(&self.transactions);
        Ok(ids.iter().map(|id| txs.get(id).cloned()).collect())
    }

    async fn ancestors(&self, ids: &[SecureHash], limit: usize) -> Result<Vec<SecureHash>, FlowError> {
        let txs = crate::context::lock(&self.transactions);
        let mut seen: std::collections::HashSet<SecureHash> = std::collections::HashSet::new();
        let mut queue: std::collections::VecDeque<SecureHash> = ids.iter().copied().collect();
        let mut out = Vec::new();
        while let Some(id) = queue.pop_front() {
            for d in txs.get(&id).map(crate::resolve::dependencies).unwrap_or_default() {
                if out.len() >= limit {
                    return Ok(out);
                }
                if seen.insert(d) && txs.contains_key(&d) {
                    out.push(d);
                    queue.push_back(d);
                }
            }
        }
        Ok(out)
    }

    async fn recorded(&self, ids: &[SecureHash]) -> Result<Vec<bool>, FlowError> {
        let txs = crate::context::lock(&self.transactions);
        Ok(ids.iter().map(|id| txs.contains_key(id)).collect())
    }

    async fn attachments(&self, ids: &[SecureHash]) -> Result<Vec<Option<Attachment>>, FlowError> {
        let mut a = crate::context::lock(&self.attachments);
        let read = ids.iter().map(|id| a.get(id).cloned()).collect();
        if let Some(later) = crate::context::lock(&self.after_next_read).take() {
            a.insert(later.id, later);
        }
        Ok(read)
    }

    fn check_attachment(&self, bytes: &[u8]) -> Result<Attachment, String> {
        (self.check)(bytes)
    }

    async fn record(&self, attachments: &[Attachment], transactions: &[SignedTransaction]) -> Result<(), FlowError> {
        let mut a = crate::context::lock(&self.attachments);
        for x in attachments {
            a.entry(x.id).or_insert_with(|| x.clone());
        }
        let mut txs = crate::context::lock(&self.transactions);
        for stx in transactions {
            txs.entry(stx.id()).or_insert_with(|| stx.clone());
        }
        Ok(())
    }

    fn verifier(&self) -> &dyn ContractVerifier {
        self.verifier.as_ref()
    }

    fn limits(&self) -> Limits {
        Limits::default()
    }

    fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    fn is_validating_notary(&self, notary: &X500Name) -> bool {
        crate::context::lock(&self.validating_notaries).contains(notary)
    }

    fn is_network_notary(&self, notary: &Party) -> bool {
        crate::context::lock(&self.network_notaries).as_ref().is_none_or(|list| list.contains(notary))
    }

    fn notary_members(&self, notary: &X500Name) -> Vec<X500Name> {
        crate::context::lock(&self.notary_members).get(notary).cloned().unwrap_or_default()
    }

    fn attachment_fetches(&self) -> &crate::fetches::AttachmentFetches {
        &self.fetches
    }
}
