//! Fixtures for the contracts' unit tests: parties, states and ledger transactions built
//! directly (no signing or resolving: the contracts see what verification would hand them).

use treaty_contract_sdk::treaty_core::{
    Amount, AttachmentConstraint, Command, CommandType, ContractState, Currency, Issued, KeyPair, Party, PartyAndReference, SecureHash,
    SignatureScheme, StateAndRef, StateRef, TimeWindow, TransactionKind, TransactionState,
};
use treaty_contract_sdk::{ContractRejection, ContractVerdict, LedgerTransaction};

use crate::{CASH, Cash};

/// The transaction every input of [`World::tx`] comes from.
pub fn earlier_tx() -> SecureHash {
    SecureHash::sha256(b"earlier")
}

pub fn party(name: &str, seed: u8) -> Party {
    Party { name: name.parse().unwrap(), owning_key: KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).unwrap().public() }
}

pub struct World {
    pub alice: Party,
    pub bob: Party,
    pub notary: Party,
    pub oracle: Party,
}

pub fn world() -> World {
    World {
        alice: party("O=Alice,L=London,C=GB", 1),
        bob: party("O=Bob,L=Paris,C=FR", 2),
        notary: party("O=Notary,L=Zurich,C=CH", 3),
        oracle: party("O=Rates,L=Frankfurt,C=DE", 4),
    }
}

impl World {
    pub fn state<S: ContractState>(&self, s: &S, contract: &str) -> TransactionState {
        TransactionState::new(s, contract, self.notary.clone(), AttachmentConstraint::AlwaysAccept)
    }

    /// Cash of `currency` issued by the notary (any issuer will do) owned by `owner`.
    pub fn cash_in(&self, units: u64, currency: &str, owner: &Party) -> TransactionState {
        let token = Issued {
            issuer: PartyAndReference { party: self.notary.clone().into(), reference: vec![0] },
            product: Currency::new(currency).unwrap(),
        };
        self.state(&Cash { amount: Amount::new(units, token), owner: owner.clone().into() }, CASH)
    }

    /// A transaction consuming `inputs` (each at its index of [`earlier_tx`]) with one command
    /// signed by `signer`.
    pub fn tx<C: CommandType>(
        &self,
        inputs: Vec<(TransactionState, u32)>,
        outputs: Vec<TransactionState>,
        command: C,
        signer: &Party,
        window: Option<TimeWindow>,
    ) -> LedgerTransaction {
        LedgerTransaction {
            id: SecureHash::sha256(b"tx"),
            inputs: inputs
                .into_iter()
                .map(|(state, index)| StateAndRef { state, r#ref: StateRef { txhash: earlier_tx(), index } })
                .collect(),
            outputs,
            commands: vec![Command::new(&command, vec![signer.owning_key.clone()])],
            attachments: vec![],
            notary: Some(self.notary.clone()),
            time_window: window,
            references: vec![],
            network_parameters_hash: None,
            summaries: vec![],
            kind: TransactionKind::Normal,
        }
    }
}

/// Asserts `verify` refuses `tx` with a message containing `why`.
pub fn refused(verify: fn(&LedgerTransaction) -> Result<ContractVerdict, ContractRejection>, tx: &LedgerTransaction, why: &str) {
    let e = verify(tx).expect_err(why);
    assert!(e.to_string().contains(why), "{e} should say {why:?}");
}
