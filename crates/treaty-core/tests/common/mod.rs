//! Fixtures shared by the integration tests and benchmarks: fixed keys and parties, a small
//! token contract written natively, and helpers to build and sign transactions.
#![allow(dead_code, missing_docs)]

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use treaty_core::*;

pub const TOKEN: &str = "test.Token";

pub fn keypair(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).expect("valid seed")
}

pub fn p256_keypair(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::EcdsaP256Sha256, [seed; 32]).expect("valid seed")
}

pub fn party(name: &str, key: &KeyPair) -> Party {
    Party { name: name.parse().expect("valid name"), owning_key: key.public() }
}

/// A cast of parties with fixed keys.
pub struct World {
    pub alice_key: KeyPair,
    pub bob_key: KeyPair,
    pub notary_key: KeyPair,
    pub other_notary_key: KeyPair,
    pub alice: Party,
    pub bob: Party,
    pub notary: Party,
    pub other_notary: Party,
    pub resolver: MapResolver,
    pub contracts: NativeContracts,
    salt_counter: std::cell::Cell<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub owner: AbstractParty,
    pub amount: u64,
}

impl ContractState for Token {
    const TYPE_ID: &'static str = "test.Token";
    fn participants(&self) -> Vec<AbstractParty> {
        vec![self.owner.clone()]
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TokenCommand {
    Issue,
    Move,
}

impl CommandType for TokenCommand {
    const TYPE_ID: &'static str = "test.Token.Command";
}

/// The token contract: issues need no inputs; moves conserve the amount and are signed by
/// every input owner. A move vouches for the summary "Move N tokens".
pub fn token_contract(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
    let bad = |m: &str| ContractRejection::new(m);
    let inputs: Vec<Token> = tx.inputs_of().map_err(|e| bad(&e.to_string()))?;
    let outputs: Vec<Token> = tx.outputs_of().map_err(|e| bad(&e.to_string()))?;
    let cmds = tx.commands_of::<TokenCommand>().map_err(|e| bad(&e.to_string()))?;
    let [(cmd, signers)] = cmds.as_slice() else { return Err(bad("exactly one token command required")) };
    if outputs.iter().any(|o| o.amount == 0) {
        return Err(bad("outputs must have a positive amount"));
    }
    match cmd {
        TokenCommand::Issue => {
            if !inputs.is_empty() {
                return Err(bad("an issue consumes no tokens"));
            }
            Ok(ContractVerdict::default())
        }
        TokenCommand::Move => {
            let sum = |v: &[Token]| v.iter().map(|t| t.amount).try_fold(0u64, |a, b| a.checked_add(b));
            let (i, o) = (sum(&inputs).ok_or_else(|| bad("overflow"))?, sum(&outputs).ok_or_else(|| bad("overflow"))?);
            if i != o {
                return Err(bad(&format!("a move must conserve tokens: {i} in, {o} out")));
            }
            for t in &inputs {
                if !signers.contains(t.owner.owning_key()) {
                    return Err(bad("every input owner must sign the move"));
                }
            }
            Ok(ContractVerdict { summaries: vec![format!("Move {o} tokens")] })
        }
    }
}

pub fn token_attachment() -> Attachment {
    let content: Arc<[u8]> = Arc::from(&b"token contract code"[..]);
    Attachment { id: SecureHash::sha256(&content), contracts: vec![TOKEN.into()], files: vec![], signers: vec![], content }
}

impl World {
    pub fn new() -> World {
        let (alice_key, bob_key, notary_key, other_notary_key) = (keypair(1), keypair(2), keypair(3), p256_keypair(4));
        let alice = party("O=Alice,L=London,C=GB", &alice_key);
        let bob = party("O=Bob,L=New York,C=US", &bob_key);
        let notary = party("O=Notary,L=Zurich,C=CH", &notary_key);
        let other_notary = party("O=Other Notary,L=Paris,C=FR", &other_notary_key);
        let mut resolver = MapResolver::default();
        resolver.add_attachment(token_attachment());
        let contracts = NativeContracts::new().with(TOKEN, token_contract);
        World {
            alice_key,
            bob_key,
            notary_key,
            other_notary_key,
            alice,
            bob,
            notary,
            other_notary,
            resolver,
            contracts,
            salt_counter: std::cell::Cell::new(0),
        }
    }

    pub fn salt(&self) -> PrivacySalt {
        self.salt_counter.set(self.salt_counter.get() + 1);
        let mut s = [0x5a; 32];
        s[..4].copy_from_slice(&self.salt_counter.get().to_le_bytes());
        PrivacySalt(s)
    }

    pub fn token(&self, owner: &Party, amount: u64) -> TransactionState {
        TransactionState::new(
            &Token { owner: owner.clone().into(), amount },
            TOKEN,
            self.notary.clone(),
            AttachmentConstraint::Hash(token_attachment().id),
        )
    }

    /// Issues `amount` to `owner`, signed by the owner, recorded in the resolver.
    pub fn issue(&mut self, owner_key_seed: u8, amount: u64) -> SignedTransaction {
        let key = keypair(owner_key_seed);
        let owner = party("O=Holder,L=Oslo,C=NO", &key);
        let wtx = TransactionBuilder::new(Some(self.notary.clone()))
            .output(self.token(&owner, amount))
            .command(Command::new(&TokenCommand::Issue, vec![key.public()]))
            .attachment(token_attachment().id)
            .build(self.salt())
            .expect("valid");
        let stx = SignedTransaction::new(wtx.clone(), vec![key.sign_transaction(&wtx.id(), 1)]);
        self.resolver.add_transaction(&wtx);
        stx
    }

    /// Issues to Alice and records it.
    pub fn issue_to_alice(&mut self, amount: u64) -> StateRef {
        let wtx = TransactionBuilder::new(Some(self.notary.clone()))
            .output(self.token(&self.alice.clone(), amount))
            .command(Command::new(&TokenCommand::Issue, vec![self.alice.owning_key.clone()]))
            .attachment(token_attachment().id)
            .build(self.salt())
            .expect("valid");
        self.resolver.add_transaction(&wtx);
        StateRef { txhash: wtx.id(), index: 0 }
    }

    /// A move of `input` (Alice's) to Bob, unsigned.
    pub fn move_builder(&self, input: StateRef, amount: u64) -> TransactionBuilder {
        TransactionBuilder::new(Some(self.notary.clone()))
            .input(input)
            .output(self.token(&self.bob.clone(), amount))
            .command(Command::new(&TokenCommand::Move, vec![self.alice.owning_key.clone()]))
            .attachment(token_attachment().id)
            .summary(format!("Move {amount} tokens"))
    }

    /// Signs by Alice and the notary.
    pub fn sign_all(&self, wtx: WireTransaction) -> SignedTransaction {
        let id = wtx.id();
        SignedTransaction::new(wtx, vec![self.alice_key.sign_transaction(&id, 1), self.notary_key.sign_transaction(&id, 1)])
    }

    pub fn verify(&self, stx: &SignedTransaction) -> Result<LedgerTransaction, TransactionError> {
        verify_transaction(stx, &self.resolver, &self.contracts, &VerifyOptions::default())
    }
}
