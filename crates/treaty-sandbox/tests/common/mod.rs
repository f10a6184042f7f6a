//! Fixtures for the sandbox tests: keys, parties, the test-contracts bundle, and helpers that
//! build token transactions and resolve them.
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;

use treaty_core::*;
use treaty_sandbox::bundle::{self, Manifest};
use treaty_sandbox::{AttachmentStore, MemoryAttachmentStore, Sandbox};
pub use treaty_test_contracts::{Token, TokenCommand};

pub const TOKEN: &str = "test.Token";

pub fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).expect("seed")
}

pub fn party(name: &str, k: &KeyPair) -> Party {
    Party { name: name.parse().expect("name"), owning_key: k.public() }
}

pub fn manifest(contracts: &[&str], data_files: &[&str]) -> Manifest {
    Manifest {
        name: "test-contracts".into(),
        version: "1.0.0".into(),
        contracts: contracts.iter().map(|s| s.to_string()).collect(),
        module: (!contracts.is_empty()).then(|| bundle::MODULE.to_string()),
        data_files: data_files.iter().map(|s| s.to_string()).collect(),
    }
}

/// The test-contracts module packed as an attachment defining `contracts`, signed by `signers`.
pub fn contracts_bundle(contracts: &[&str], signers: &[&KeyPair]) -> Vec<u8> {
    bundle::pack(&manifest(contracts, &[]), Some(treaty_contracts::TEST_CONTRACTS_WASM), &BTreeMap::new(), signers)
}

/// A data-only attachment.
pub fn data_bundle(files: &[(&str, &[u8])]) -> Vec<u8> {
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let data: BTreeMap<String, Vec<u8>> = files.iter().map(|(n, d)| (n.to_string(), d.to_vec())).collect();
    bundle::pack(&manifest(&[], &names), None, &data, &[])
}

pub struct Fixture {
    pub alice_key: KeyPair,
    pub bob_key: KeyPair,
    pub notary_key: KeyPair,
    pub alice: Party,
    pub bob: Party,
    pub notary: Party,
    pub params: NetworkParameters,
    pub store: MemoryAttachmentStore,
    pub resolver: MapResolver,
    pub token_attachment: SecureHash,
    salt: std::cell::Cell<u8>,
}

impl Fixture {
    pub fn new() -> Fixture {
        Self::with_params(NetworkParameters::default())
    }

    pub fn with_params(params: NetworkParameters) -> Fixture {
        let (alice_key, bob_key, notary_key) = (key(1), key(2), key(3));
        let (alice, bob, notary) = (
            party("O=Alice,L=London,C=GB", &alice_key),
            party("O=Bob,L=Paris,C=FR", &bob_key),
            party("O=Notary,L=Zurich,C=CH", &notary_key),
        );
        let store = MemoryAttachmentStore::new(params.clone());
        let token_attachment = store.upload(&contracts_bundle(&[TOKEN], &[])).expect("token bundle uploads");
        let mut f = Fixture {
            alice_key,
            bob_key,
            notary_key,
            alice,
            bob,
            notary,
            params,
            store,
            resolver: MapResolver::default(),
            token_attachment,
            salt: std::cell::Cell::new(0),
        };
        f.add_attachment(token_attachment);
        f
    }

    pub fn upload(&mut self, bytes: &[u8]) -> SecureHash {
        let id = self.store.upload(bytes).expect("upload");
        self.add_attachment(id);
        id
    }

    pub fn add_attachment(&mut self, id: SecureHash) {
        let a = self.store.get(&id).expect("stored");
        self.resolver.add_attachment(a);
    }

    pub fn sandbox(&self) -> Sandbox {
        Sandbox::new(self.params.clone()).expect("sandbox")
    }

    pub fn salt(&self) -> PrivacySalt {
        self.salt.set(self.salt.get() + 1);
        PrivacySalt([self.salt.get(); 32])
    }

    pub fn token(&self, owner: &Party, amount: u64, constraint: AttachmentConstraint) -> TransactionState {
        TransactionState::new(&Token { owner: owner.clone().into(), amount }, TOKEN, self.notary.clone(), constraint)
    }

    pub fn hash_constraint(&self) -> AttachmentConstraint {
        AttachmentConstraint::Hash(self.token_attachment)
    }

    /// Issues `amount` to Alice under `constraint`, with `attachment` as the code, and records it.
    pub fn issue_with(&mut self, amount: u64, constraint: AttachmentConstraint, attachment: SecureHash) -> StateRef {
        let wtx = TransactionBuilder::new(Some(self.notary.clone()))
            .output(self.token(&self.alice.clone(), amount, constraint))
            .command(Command::new(&TokenCommand::Issue, vec![self.alice.owning_key.clone()]))
            .attachment(attachment)
            .build(self.salt())
            .expect("builds");
        self.resolver.add_transaction(&wtx);
        StateRef { txhash: wtx.id(), index: 0 }
    }

    pub fn issue(&mut self, amount: u64) -> StateRef {
        let c = self.hash_constraint();
        self.issue_with(amount, c, self.token_attachment)
    }

    /// A move of Alice's `input` to Bob, as a resolved ledger transaction.
    pub fn move_ltx(
        &self,
        input: StateRef,
        amount_out: u64,
        out_constraint: AttachmentConstraint,
        attachment: SecureHash,
    ) -> LedgerTransaction {
        let wtx = TransactionBuilder::new(Some(self.notary.clone()))
            .input(input)
            .output(self.token(&self.bob.clone(), amount_out, out_constraint))
            .command(Command::new(&TokenCommand::Move, vec![self.alice.owning_key.clone()]))
            .attachment(attachment)
            .summary(format!("Move {amount_out} tokens"))
            .build(self.salt())
            .expect("builds");
        wtx.to_ledger_transaction(&self.resolver).expect("resolves")
    }

    /// An issue transaction running `contract` (any test contract), resolved.
    pub fn ltx_for(&self, contract: &str, attachments: &[SecureHash], amount: u64) -> LedgerTransaction {
        let mut b = TransactionBuilder::new(Some(self.notary.clone()))
            .command(Command::new(&TokenCommand::Issue, vec![self.alice.owning_key.clone()]));
        let mut state = self.token(&self.alice.clone(), amount, AttachmentConstraint::Hash(attachments[0]));
        state.contract = contract.to_string();
        b = b.output(state);
        for a in attachments {
            b = b.attachment(*a);
        }
        b.build(self.salt()).expect("builds").to_ledger_transaction(&self.resolver).expect("resolves")
    }
}
