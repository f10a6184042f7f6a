//! The ledger transaction — a transaction with its inputs, references and attachments resolved —
//! and the verification pipeline.
//!
//! Verification runs in a fixed order, each stage only if the previous passed:
//! 1. **resolution**: every input, reference and attachment is looked up;
//! 2. **structure**: the platform's rules (duplicates, notaries, encumbrances, attachments, the
//!    rules of the transaction's kind);
//! 3. **signatures**: every signature valid, every required key fulfilled;
//! 4. **contracts**: every contract named by the states accepts, through a [`ContractVerifier`],
//!    and the transaction's summaries are exactly the lines the contracts vouch for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::contract::ContractVerifier;
use crate::crypto::PublicKey;
use crate::hash::SecureHash;
use crate::identity::Party;
use crate::state::{ContractName, ContractState, StateAndRef, StateRef, TransactionState, UnpackError};
use crate::time::TimeWindow;

use super::components::{Command, CommandType, TransactionKind};
use super::error::TransactionError;
use super::signed::SignedTransaction;
use super::wire::WireTransaction;

/// An attachment as verification sees it: its id, what it defines, who signed it, its bytes.
/// (Parsing and checking bundles is the sandbox's job; this is the result.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The attachment's hash.
    pub id: SecureHash,
    /// Contracts whose code it holds.
    pub contracts: Vec<ContractName>,
    /// Data files it holds (paths).
    pub files: Vec<String>,
    /// Keys that signed it.
    pub signers: Vec<PublicKey>,
    /// The raw bundle (not part of what contracts receive through serialization).
    #[serde(skip)]
    pub content: Arc<[u8]>,
}

/// Looks up what a transaction points at. Implemented by node storage; [`MapResolver`] is an
/// in-memory one.
pub trait LedgerResolver {
    /// Output `r.index` of transaction `r.txhash`, if known.
    fn state(&self, r: &StateRef) -> Option<TransactionState>;
    /// The attachment with this id, if known.
    fn attachment(&self, id: &SecureHash) -> Option<Attachment>;
}

/// An in-memory [`LedgerResolver`] over transactions and attachments.
#[derive(Clone, Debug, Default)]
pub struct MapResolver {
    /// Known transactions by id.
    pub transactions: BTreeMap<SecureHash, WireTransaction>,
    /// Known attachments by id.
    pub attachments: BTreeMap<SecureHash, Attachment>,
}

impl MapResolver {
    /// Records a transaction.
    pub fn add_transaction(&mut self, tx: &WireTransaction) {
        self.transactions.insert(tx.id(), tx.clone());
    }
    /// Records an attachment.
    pub fn add_attachment(&mut self, a: Attachment) {
        self.attachments.insert(a.id, a);
    }
}

impl LedgerResolver for MapResolver {
    fn state(&self, r: &StateRef) -> Option<TransactionState> {
        self.transactions.get(&r.txhash)?.components().outputs.get(r.index as usize).cloned()
    }
    fn attachment(&self, id: &SecureHash) -> Option<Attachment> {
        self.attachments.get(id).cloned()
    }
}

/// A transaction with everything it points at resolved: what contracts verify.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerTransaction {
    /// The transaction id.
    pub id: SecureHash,
    /// Consumed states.
    pub inputs: Vec<StateAndRef>,
    /// Created states.
    pub outputs: Vec<TransactionState>,
    /// Commands with signers.
    pub commands: Vec<Command>,
    /// Attachments.
    pub attachments: Vec<Attachment>,
    /// The notary.
    pub notary: Option<Party>,
    /// The time window.
    pub time_window: Option<TimeWindow>,
    /// Referenced states.
    pub references: Vec<StateAndRef>,
    /// The network parameters hash.
    pub network_parameters_hash: Option<SecureHash>,
    /// Summaries.
    pub summaries: Vec<String>,
    /// The kind.
    pub kind: TransactionKind,
}

impl WireTransaction {
    /// Resolves inputs, references and attachments through `resolver`.
    pub fn to_ledger_transaction(&self, resolver: &dyn LedgerResolver) -> Result<LedgerTransaction, TransactionError> {
        let c = self.components();
        let resolve =
            |r: &StateRef| resolver.state(r).map(|state| StateAndRef { state, r#ref: *r }).ok_or(TransactionError::UnresolvedState(*r));
        Ok(LedgerTransaction {
            id: self.id(),
            inputs: c.inputs.iter().map(resolve).collect::<Result<_, _>>()?,
            outputs: c.outputs.clone(),
            commands: c.commands.clone(),
            attachments: c
                .attachments
                .iter()
                .map(|id| resolver.attachment(id).ok_or(TransactionError::UnresolvedAttachment(*id)))
                .collect::<Result<_, _>>()?,
            notary: c.notary.clone(),
            time_window: c.time_window,
            references: c.references.iter().map(resolve).collect::<Result<_, _>>()?,
            network_parameters_hash: c.network_parameters_hash,
            summaries: c.summaries.clone(),
            kind: c.kind.clone(),
        })
    }
}

fn name(p: &Party) -> String {
    p.name.to_string()
}

impl LedgerTransaction {
    /// Checks the platform's structural rules.
    pub fn verify_structure(&self) -> Result<(), TransactionError> {
        self.check_duplicates()?;
        self.check_notaries()?;
        self.check_encumbrances()?;
        self.check_attachments()?;
        match &self.kind {
            TransactionKind::Normal => Ok(()),
            TransactionKind::NotaryChange { new_notary } => self.check_notary_change(new_notary),
            TransactionKind::ContractUpgrade { upgraded_contract, upgraded_attachment } => {
                self.check_contract_upgrade(upgraded_contract, upgraded_attachment)
            }
        }
    }

    fn check_duplicates(&self) -> Result<(), TransactionError> {
        let mut seen = BTreeSet::new();
        for i in &self.inputs {
            if !seen.insert(i.r#ref) {
                return Err(TransactionError::DuplicateInput(i.r#ref));
            }
        }
        let mut seen_refs = BTreeSet::new();
        for r in &self.references {
            if !seen_refs.insert(r.r#ref) {
                return Err(TransactionError::DuplicateReference(r.r#ref));
            }
            if seen.contains(&r.r#ref) {
                return Err(TransactionError::InputIsAlsoReference(r.r#ref));
            }
        }
        Ok(())
    }

    fn check_notaries(&self) -> Result<(), TransactionError> {
        let needs = if !self.inputs.is_empty() {
            Some("inputs")
        } else if !self.references.is_empty() {
            Some("reference states")
        } else if self.time_window.is_some() {
            Some("a time window")
        } else {
            None
        };
        let Some(notary) = &self.notary else {
            return match needs {
                Some(what) => Err(TransactionError::NotaryMissing(what)),
                None => Ok(()),
            };
        };
        for (which, states) in [("input", &self.inputs), ("reference", &self.references)] {
            for s in states.iter() {
                if s.state.notary != *notary {
                    return Err(TransactionError::WrongNotary {
                        which,
                        state: s.r#ref,
                        expected: name(notary),
                        found: name(&s.state.notary),
                    });
                }
            }
        }
        // Outputs keep the inputs' notary; only a notary change moves them (checked there).
        if self.kind == TransactionKind::Normal
            && !self.inputs.is_empty()
            && let Some((index, o)) = self.outputs.iter().enumerate().find(|(_, o)| o.notary != *notary)
        {
            return Err(TransactionError::OutputNotaryChanged { index, expected: name(notary), found: name(&o.notary) });
        }
        Ok(())
    }

    fn check_encumbrances(&self) -> Result<(), TransactionError> {
        // Consuming an encumbered state requires consuming its encumbrance too.
        let consumed: BTreeSet<StateRef> = self.inputs.iter().map(|i| i.r#ref).collect();
        for i in &self.inputs {
            if let Some(e) = i.state.encumbrance {
                let encumbrance = StateRef { txhash: i.r#ref.txhash, index: e };
                if !consumed.contains(&encumbrance) {
                    return Err(TransactionError::EncumbranceNotConsumed { input: i.r#ref, encumbrance });
                }
            }
        }
        for (index, o) in self.outputs.iter().enumerate() {
            let Some(e) = o.encumbrance else { continue };
            let Some(enc) = self.outputs.get(e as usize) else {
                return Err(TransactionError::EncumbranceOutOfRange { index, encumbrance: e, outputs: self.outputs.len() });
            };
            if e as usize == index {
                return Err(TransactionError::EncumbranceSelf(index));
            }
            if enc.notary != o.notary {
                return Err(TransactionError::EncumbranceNotaryMismatch { index, encumbrance: e });
            }
        }
        Ok(())
    }

    fn check_attachments(&self) -> Result<(), TransactionError> {
        let mut ids = BTreeSet::new();
        let mut contracts: BTreeMap<&str, SecureHash> = BTreeMap::new();
        let mut files: BTreeMap<&str, SecureHash> = BTreeMap::new();
        for a in &self.attachments {
            if !ids.insert(a.id) {
                return Err(TransactionError::DuplicateAttachment(a.id));
            }
            for (what, names, map) in [("contract", &a.contracts, &mut contracts), ("file", &a.files, &mut files)] {
                for n in names {
                    if let Some(first) = map.insert(n.as_str(), a.id) {
                        return Err(TransactionError::AttachmentOverlap { what, name: n.clone(), first, second: a.id });
                    }
                }
            }
        }
        for contract in self.contracts_to_run() {
            if !contracts.contains_key(contract.as_str()) {
                return Err(TransactionError::MissingContractAttachment(contract));
            }
        }
        Ok(())
    }

    fn check_notary_change(&self, new_notary: &Party) -> Result<(), TransactionError> {
        let bad = |s: String| Err(TransactionError::InvalidNotaryChange(s));
        let Some(old) = &self.notary else { return bad("no current notary".into()) };
        if old == new_notary {
            return bad(format!("new notary {} is the current notary", name(new_notary)));
        }
        if self.inputs.is_empty() {
            return bad("no states to move".into());
        }
        if !self.commands.is_empty() {
            return bad("a notary change carries no commands".into());
        }
        if self.outputs.len() != self.inputs.len() {
            return bad(format!("{} inputs but {} outputs; each input must reappear once", self.inputs.len(), self.outputs.len()));
        }
        for (i, (output, expected)) in self.outputs.iter().zip(notary_change_outputs(&self.inputs, new_notary)).enumerate() {
            if *output != expected {
                return bad(format!("output {i} is not input {i} moved unchanged to {}", name(new_notary)));
            }
        }
        Ok(())
    }

    fn check_contract_upgrade(&self, upgraded: &ContractName, attachment: &SecureHash) -> Result<(), TransactionError> {
        let bad = |s: String| Err(TransactionError::InvalidContractUpgrade(s));
        if self.inputs.is_empty() || self.outputs.len() != self.inputs.len() {
            return bad(format!(
                "{} inputs and {} outputs; an upgrade maps each input to one output",
                self.inputs.len(),
                self.outputs.len()
            ));
        }
        let legacy = &self.inputs[0].state.contract;
        if let Some(i) = self.inputs.iter().position(|s| &s.state.contract != legacy) {
            return bad(format!("input {i} is governed by {}, not {legacy}", self.inputs[i].state.contract));
        }
        if legacy == upgraded {
            return bad(format!("{upgraded} is already the inputs' contract"));
        }
        for (i, (input, output)) in self.inputs.iter().zip(&self.outputs).enumerate() {
            if &output.contract != upgraded {
                return bad(format!("output {i} is governed by {}, not {upgraded}", output.contract));
            }
            if output.notary != input.state.notary {
                return bad(format!("output {i} changes notary"));
            }
        }
        if !self.attachments.iter().any(|a| &a.id == attachment && a.contracts.contains(upgraded)) {
            return bad(format!("attachment {attachment} defining {upgraded} is not attached"));
        }
        Ok(())
    }

    /// The contracts whose code must accept this transaction, sorted and without repeats:
    /// for a normal transaction those of every input and output; for a contract upgrade the
    /// upgraded contract; none for a notary change (which changes nothing a contract governs).
    pub fn contracts_to_run(&self) -> Vec<ContractName> {
        let set: BTreeSet<ContractName> = match &self.kind {
            TransactionKind::Normal => self.inputs.iter().map(|i| &i.state).chain(&self.outputs).map(|s| s.contract.clone()).collect(),
            TransactionKind::NotaryChange { .. } => BTreeSet::new(),
            TransactionKind::ContractUpgrade { upgraded_contract, .. } => [upgraded_contract.clone()].into(),
        };
        set.into_iter().collect()
    }

    /// The keys that must sign: every command's signers, whatever the kind; for a notary
    /// change or a contract upgrade also the participants of every input; and the notary
    /// (when there are inputs, references or a time window). A command's signers are always
    /// required: a contract reads them as "these keys signed" (an upgraded contract run on an
    /// upgrade's outputs included), so a command no one signed must not verify.
    pub fn required_signing_keys(&self) -> Vec<PublicKey> {
        let mut keys: Vec<PublicKey> = self.commands.iter().flat_map(|c| c.signers.iter().cloned()).collect();
        if !matches!(self.kind, TransactionKind::Normal) {
            keys.extend(self.inputs.iter().flat_map(|i| i.state.data.participants.iter().map(|p| p.owning_key().clone())));
        }
        if let Some(n) = &self.notary
            && (!self.inputs.is_empty() || !self.references.is_empty() || self.time_window.is_some())
        {
            keys.push(n.owning_key.clone());
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// Runs every contract through `verifier` and checks the summaries.
    pub fn verify_contracts(&self, verifier: &dyn ContractVerifier) -> Result<(), TransactionError> {
        let mut vouched: Vec<String> = Vec::new();
        for contract in self.contracts_to_run() {
            let verdict = verifier.verify_contract(&contract, self).map_err(|r| TransactionError::ContractRejected {
                tx_id: self.id,
                contract: contract.clone(),
                message: r.message,
            })?;
            vouched.extend(verdict.summaries);
        }
        let (unexpected, missing) = multiset_difference(&self.summaries, &vouched);
        if unexpected.is_empty() && missing.is_empty() { Ok(()) } else { Err(TransactionError::SummariesMismatch { unexpected, missing }) }
    }

    // --- helpers for contract code -----------------------------------------------------------

    /// The inputs holding a `S`, decoded; an error if one is governed by another contract
    /// than `S::CONTRACT` (see [`ContractState::CONTRACT`]).
    pub fn inputs_of<S: ContractState>(&self) -> Result<Vec<S>, UnpackError> {
        self.inputs.iter().map(|i| &i.state).filter(|s| s.data.is::<S>()).map(own::<S>).collect()
    }

    /// The outputs holding a `S`, decoded; an error if one is governed by another contract
    /// than `S::CONTRACT`.
    pub fn outputs_of<S: ContractState>(&self) -> Result<Vec<S>, UnpackError> {
        self.outputs.iter().filter(|o| o.data.is::<S>()).map(own::<S>).collect()
    }

    /// The reference states holding a `S`, decoded; an error if one is governed by another
    /// contract than `S::CONTRACT`.
    pub fn references_of<S: ContractState>(&self) -> Result<Vec<S>, UnpackError> {
        self.references.iter().map(|i| &i.state).filter(|s| s.data.is::<S>()).map(own::<S>).collect()
    }

    /// The commands of type `C`, decoded, with their signers.
    pub fn commands_of<C: CommandType>(&self) -> Result<Vec<(C, &[PublicKey])>, UnpackError> {
        self.commands.iter().filter(|c| c.data.is::<C>()).map(|c| Ok((c.data.unpack()?, c.signers.as_slice()))).collect()
    }
}

/// The outputs of a notary change moving `inputs` to `new_notary`: each input unchanged but for
/// its notary, in the same order, with encumbrance indices remapped to the positions the
/// encumbering states take among the outputs.
pub fn notary_change_outputs(inputs: &[StateAndRef], new_notary: &Party) -> Vec<TransactionState> {
    inputs
        .iter()
        .map(|i| {
            let mut out = i.state.clone();
            out.notary = new_notary.clone();
            out.encumbrance = i.state.encumbrance.and_then(|e| {
                let target = StateRef { txhash: i.r#ref.txhash, index: e };
                inputs.iter().position(|j| j.r#ref == target).map(|p| p as u32)
            });
            out
        })
        .collect()
}

fn multiset_difference(have: &[String], want: &[String]) -> (Vec<String>, Vec<String>) {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for s in have {
        *counts.entry(s).or_default() += 1;
    }
    for s in want {
        *counts.entry(s).or_default() -= 1;
    }
    let mut unexpected = Vec::new();
    let mut missing = Vec::new();
    for (s, n) in counts {
        for _ in 0..n.max(0) {
            unexpected.push(s.to_string());
        }
        for _ in 0..(-n).max(0) {
            missing.push(s.to_string());
        }
    }
    (unexpected, missing)
}

/// Options for [`verify_transaction`].
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Required keys that may lack signatures (the notary's, before notarisation).
    pub allowed_missing: Vec<PublicKey>,
}

/// Verifies a signed transaction completely: resolution, structure, signatures, contracts.
/// Returns the resolved transaction on success.
pub fn verify_transaction(
    stx: &SignedTransaction,
    resolver: &dyn LedgerResolver,
    verifier: &dyn ContractVerifier,
    options: &VerifyOptions,
) -> Result<LedgerTransaction, TransactionError> {
    let ltx = stx.tx().to_ledger_transaction(resolver)?;
    ltx.verify_structure()?;
    stx.verify_required_signatures(&ltx.required_signing_keys(), &options.allowed_missing)?;
    ltx.verify_contracts(verifier)?;
    Ok(ltx)
}

/// `state` decoded as a `S`, if `S`'s own contract governs it.
fn own<S: ContractState>(state: &TransactionState) -> Result<S, UnpackError> {
    if state.contract != S::CONTRACT {
        return Err(UnpackError::WrongContract { type_id: S::TYPE_ID, contract: state.contract.clone(), expected: S::CONTRACT });
    }
    state.data.unpack()
}
