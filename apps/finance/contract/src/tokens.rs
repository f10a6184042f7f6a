//! Tokens (white paper "Tokens"): fungible and non-fungible tokens of fixed or evolvable types.
//!
//! - A token's type is either **fixed** (an identifier such as `GOLD-GRAM` and its fraction
//!   digits, never changing) or **evolvable**: an [`EvolvableTokenType`], a linear state its
//!   maintainer updates (a building's valuation, a bond's coupon), named by its linear id.
//! - A token of an evolvable type points at *the latest version* of its type: every
//!   transaction creating or moving it carries that version as a **reference input**, which
//!   the builder adds by resolving the pointer in its vault, and which the notary checks is
//!   still current. The contract refuses a transaction without it.
//! - `treaty.finance.Tokens` governs [`FungibleToken`] (an amount held) and [`NonFungibleToken`]
//!   (a unique token, a linear state): **Issue** (no token consumed; every issuer signs) and
//!   **Move** (fungible amounts conserved per issued token; every non-fungible token consumed
//!   reappears with the same id; every holder of what is consumed signs) and **Redeem** (tokens
//!   of one issuer leave the ledger — fungible change may stay — signed by the issuer and the
//!   holders).
//! - `treaty.finance.TokenTypes` governs [`EvolvableTokenType`]: **Create** and **Update** (the
//!   same linear id, maintainer and fraction digits), signed by the maintainer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use treaty_contract_sdk::treaty_core::{AbstractParty, CommandType, ContractState, LinearState, StatePointer, UniqueIdentifier};
use treaty_contract_sdk::{ContractRejection, ContractVerdict, LedgerTransaction, require};

/// The tokens contract's name.
pub const TOKENS: &str = "treaty.finance.Tokens";
/// The token types contract's name.
pub const TOKEN_TYPES: &str = "treaty.finance.TokenTypes";

/// What a token is a token of.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenKind {
    /// A fixed type.
    Fixed {
        /// Its identifier (`GOLD-GRAM`).
        id: String,
        /// Decimal places of one whole unit.
        fraction_digits: u8,
    },
    /// The latest version of the evolvable type with this linear id.
    Evolvable {
        /// The type's linear id.
        type_id: UniqueIdentifier,
        /// Decimal places of one whole unit (the type's).
        fraction_digits: u8,
    },
}

impl TokenKind {
    /// How the vault and people name it: the fixed id, or the evolvable type's linear id.
    pub fn name(&self) -> String {
        match self {
            TokenKind::Fixed { id, .. } => id.clone(),
            TokenKind::Evolvable { type_id, .. } => type_id.id.hyphenated().to_string(),
        }
    }
}

/// A token type and who issued it: tokens of different issuers never mix.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IssuedToken {
    /// The issuer.
    pub issuer: AbstractParty,
    /// The type.
    pub kind: TokenKind,
}

/// An amount of a token held by someone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FungibleToken {
    /// Of what, issued by whom.
    pub token: IssuedToken,
    /// How much, in the smallest unit.
    pub quantity: u64,
    /// Who holds it.
    pub holder: AbstractParty,
}

impl ContractState for FungibleToken {
    const TYPE_ID: &'static str = "treaty.finance.FungibleToken";
    const CONTRACT: &'static str = TOKENS;
    fn participants(&self) -> Vec<AbstractParty> {
        vec![self.holder.clone()]
    }
}

/// A unique token held by someone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonFungibleToken {
    /// Of what, issued by whom.
    pub token: IssuedToken,
    /// Who holds it.
    pub holder: AbstractParty,
    /// The same in every version (every holder).
    pub linear_id: UniqueIdentifier,
}

impl ContractState for NonFungibleToken {
    const TYPE_ID: &'static str = "treaty.finance.NonFungibleToken";
    const CONTRACT: &'static str = TOKENS;
    fn participants(&self) -> Vec<AbstractParty> {
        vec![self.holder.clone()]
    }
}

impl LinearState for NonFungibleToken {
    fn linear_id(&self) -> &UniqueIdentifier {
        &self.linear_id
    }
}

/// A token type its maintainer evolves. Observers keep every version in their vaults, so a
/// holder among them can point its transactions at the latest one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvolvableTokenType {
    /// Who creates and updates it.
    pub maintainer: AbstractParty,
    /// Who else keeps it (typically the holders).
    pub observers: Vec<AbstractParty>,
    /// The type's id, the same in every version.
    pub linear_id: UniqueIdentifier,
    /// Decimal places of one whole unit.
    pub fraction_digits: u8,
    /// What the type says now (a valuation, a coupon, a description).
    pub data: BTreeMap<String, String>,
}

impl ContractState for EvolvableTokenType {
    const TYPE_ID: &'static str = "treaty.finance.EvolvableTokenType";
    const CONTRACT: &'static str = TOKEN_TYPES;
    fn participants(&self) -> Vec<AbstractParty> {
        let mut all = vec![self.maintainer.clone()];
        all.extend(self.observers.iter().filter(|o| o.owning_key() != self.maintainer.owning_key()).cloned());
        all
    }
}

impl LinearState for EvolvableTokenType {
    fn linear_id(&self) -> &UniqueIdentifier {
        &self.linear_id
    }
}

/// Token commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenCommand {
    /// Create tokens (signed by their issuers).
    Issue,
    /// Transfer tokens (signed by the holders of those consumed).
    Move,
    /// Take tokens off the ledger (signed by their issuer and their holders); fungible change
    /// may go back to the holder.
    Redeem,
}

impl CommandType for TokenCommand {
    const TYPE_ID: &'static str = "treaty.finance.Tokens.Command";
}

/// Token type commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenTypeCommand {
    /// Create a type (signed by its maintainer).
    Create,
    /// Replace a type by its next version (signed by its maintainer).
    Update,
}

impl CommandType for TokenTypeCommand {
    const TYPE_ID: &'static str = "treaty.finance.TokenTypes.Command";
}

fn reject(e: impl ToString) -> ContractRejection {
    ContractRejection::new(e.to_string())
}

/// Every evolvable token's type must be a reference input, with the same fraction digits.
fn check_pointers<'a>(tx: &LedgerTransaction, tokens: impl Iterator<Item = &'a IssuedToken>) -> Result<(), ContractRejection> {
    for t in tokens {
        let TokenKind::Evolvable { type_id, fraction_digits } = &t.kind else { continue };
        let found = StatePointer::Linear(type_id.clone())
            .resolve::<EvolvableTokenType>(&tx.references)
            .ok_or_else(|| reject(format!("token type {type_id} must be a reference input of the transaction (its latest version)")))?;
        let ty: EvolvableTokenType = found.state.data.unpack().map_err(reject)?;
        require(ty.fraction_digits == *fraction_digits, || {
            format!("token type {type_id} has {} fraction digits, the token says {fraction_digits}", ty.fraction_digits)
        })?;
    }
    Ok(())
}

/// `treaty.finance.Tokens`.
pub fn verify_tokens(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
    let fin: Vec<FungibleToken> = tx.inputs_of().map_err(reject)?;
    let fout: Vec<FungibleToken> = tx.outputs_of().map_err(reject)?;
    let nin: Vec<NonFungibleToken> = tx.inputs_of().map_err(reject)?;
    let nout: Vec<NonFungibleToken> = tx.outputs_of().map_err(reject)?;
    let commands = tx.commands_of::<TokenCommand>().map_err(reject)?;
    let [(command, signers)] = commands.as_slice() else { return Err(reject("a token transaction needs exactly one token command")) };
    check_pointers(tx, fin.iter().chain(&fout).map(|f| &f.token).chain(nin.iter().chain(&nout).map(|n| &n.token)))?;
    require(fout.iter().all(|f| f.quantity > 0), || "fungible token outputs must be positive".into())?;
    let signed =
        |party: &AbstractParty, role: &str| require(signers.contains(party.owning_key()), || format!("the {role} {party} must sign"));
    match command {
        TokenCommand::Issue => {
            require(fin.is_empty() && nin.is_empty(), || "an issue consumes no token".into())?;
            require(!fout.is_empty() || !nout.is_empty(), || "an issue creates tokens".into())?;
            for t in fout.iter().map(|f| &f.token).chain(nout.iter().map(|n| &n.token)) {
                signed(&t.issuer, "issuer")?;
            }
            for (i, n) in nout.iter().enumerate() {
                require(!nout[..i].iter().any(|m| m.linear_id == n.linear_id), || {
                    format!("non-fungible token {} is issued twice", n.linear_id)
                })?;
            }
        }
        TokenCommand::Redeem => {
            require(!fin.is_empty() || !nin.is_empty(), || "a redemption consumes tokens".into())?;
            require(nout.is_empty(), || "a redemption creates no non-fungible token".into())?;
            let issuer = fin.iter().map(|f| &f.token.issuer).chain(nin.iter().map(|n| &n.token.issuer)).next();
            let issuer = issuer.ok_or_else(|| reject("a redemption consumes tokens"))?;
            require(fin.iter().map(|f| &f.token.issuer).chain(nin.iter().map(|n| &n.token.issuer)).all(|i| i == issuer), || {
                "a redemption takes back the tokens of one issuer".into()
            })?;
            let (mut redeemed, mut kept) = (0u128, 0u128);
            for f in &fout {
                require(fin.iter().any(|i| i.token == f.token), || {
                    format!("change of {} must be of a token consumed", f.token.kind.name())
                })?;
                kept += u128::from(f.quantity);
            }
            for f in &fin {
                redeemed += u128::from(f.quantity);
            }
            require(kept < redeemed || !nin.is_empty(), || "a redemption must take some quantity off the ledger".into())?;
            for t in fin.iter().map(|f| &f.token).collect::<Vec<_>>() {
                let total_in: u128 = fin.iter().filter(|f| f.token == *t).map(|f| u128::from(f.quantity)).sum();
                let total_out: u128 = fout.iter().filter(|f| f.token == *t).map(|f| u128::from(f.quantity)).sum();
                require(total_out <= total_in, || format!("more {} comes out than was redeemed", t.kind.name()))?;
            }
            signed(issuer, "issuer")?;
            for holder in fin.iter().map(|f| &f.holder).chain(nin.iter().map(|n| &n.holder)) {
                signed(holder, "holder")?;
            }
        }
        TokenCommand::Move => {
            require(!fin.is_empty() || !nin.is_empty(), || "a move consumes tokens".into())?;
            // Fungible: per issued token, as much out as in.
            let mut totals: Vec<(&IssuedToken, u128, u128)> = Vec::new();
            for (f, is_input) in fin.iter().map(|f| (f, true)).chain(fout.iter().map(|f| (f, false))) {
                let pos = match totals.iter().position(|(t, _, _)| *t == &f.token) {
                    Some(p) => p,
                    None => {
                        totals.push((&f.token, 0, 0));
                        totals.len() - 1
                    }
                };
                if is_input {
                    totals[pos].1 += u128::from(f.quantity);
                } else {
                    totals[pos].2 += u128::from(f.quantity);
                }
            }
            for (t, i, o) in totals {
                require(i == o, || format!("{} issued by {} is not conserved: {i} in, {o} out", t.kind.name(), t.issuer))?;
            }
            // Non-fungible: each consumed token reappears once, the same token, and nothing
            // else comes out: with distinct ids in, as many out and each found once, the
            // outputs are the inputs rearranged. (Two states of one id, issued apart, must not
            // pass for two tokens, one reappearing twice to cover a forged one.)
            for (i, n) in nin.iter().enumerate() {
                require(!nin[..i].iter().any(|m| m.linear_id == n.linear_id), || {
                    format!("non-fungible token {} is consumed twice", n.linear_id)
                })?;
            }
            require(nin.len() == nout.len(), || "every non-fungible token moved reappears once".into())?;
            for n in &nin {
                require(nout.iter().filter(|m| m.linear_id == n.linear_id && m.token == n.token).count() == 1, || {
                    format!("non-fungible token {} must reappear once, unchanged but for its holder", n.linear_id)
                })?;
            }
            for holder in fin.iter().map(|f| &f.holder).chain(nin.iter().map(|n| &n.holder)) {
                signed(holder, "holder")?;
            }
        }
    }
    Ok(ContractVerdict::default())
}

/// `treaty.finance.TokenTypes`.
pub fn verify_token_types(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection> {
    let ins: Vec<EvolvableTokenType> = tx.inputs_of().map_err(reject)?;
    let outs: Vec<EvolvableTokenType> = tx.outputs_of().map_err(reject)?;
    let commands = tx.commands_of::<TokenTypeCommand>().map_err(reject)?;
    let [(command, signers)] = commands.as_slice() else {
        return Err(reject("a token type transaction needs exactly one token type command"));
    };
    let [out] = outs.as_slice() else { return Err(reject("a token type transaction creates exactly one version")) };
    match command {
        TokenTypeCommand::Create => require(ins.is_empty(), || "creating a token type consumes none".into())?,
        TokenTypeCommand::Update => {
            let [old] = ins.as_slice() else { return Err(reject("an update replaces exactly one version")) };
            require(old.linear_id == out.linear_id, || "an update keeps the type's linear id".into())?;
            require(old.maintainer == out.maintainer, || "an update keeps the maintainer".into())?;
            require(old.fraction_digits == out.fraction_digits, || "an update keeps the fraction digits".into())?;
        }
    }
    require(signers.contains(out.maintainer.owning_key()), || format!("the maintainer {} must sign", out.maintainer))?;
    Ok(ContractVerdict::default())
}

#[cfg(test)]
mod tests {
    use treaty_contract_sdk::treaty_core::{SecureHash, StateAndRef, StateRef, TransactionState};

    use super::*;
    use crate::testing::{World, world};

    impl World {
        fn token_type(&self, version: &str) -> EvolvableTokenType {
            EvolvableTokenType {
                maintainer: self.alice.clone().into(),
                observers: vec![self.bob.clone().into()],
                linear_id: UniqueIdentifier::new(None, [5; 16]),
                fraction_digits: 0,
                data: BTreeMap::from([("valuation".to_string(), version.to_string())]),
            }
        }
        fn evolvable(&self) -> IssuedToken {
            IssuedToken {
                issuer: self.alice.clone().into(),
                kind: TokenKind::Evolvable { type_id: UniqueIdentifier::new(None, [5; 16]), fraction_digits: 0 },
            }
        }
        fn fungible(&self, quantity: u64, holder: &treaty_contract_sdk::treaty_core::Party) -> TransactionState {
            self.state(&FungibleToken { token: self.evolvable(), quantity, holder: holder.clone().into() }, TOKENS)
        }
        fn referencing(&self, mut tx: LedgerTransaction) -> LedgerTransaction {
            let state = self.state(&self.token_type("v2"), TOKEN_TYPES);
            tx.references.push(StateAndRef { state, r#ref: StateRef { txhash: SecureHash::sha256(b"type"), index: 0 } });
            tx
        }
    }

    fn refused(tx: &LedgerTransaction, why: &str) {
        crate::testing::refused(verify_tokens, tx, why);
    }

    #[test]
    fn evolvable_tokens_need_their_type_as_a_reference() {
        let w = world();
        let issue = w.tx(vec![], vec![w.fungible(10, &w.alice)], TokenCommand::Issue, &w.alice, None);
        refused(&issue, "must be a reference input");
        // A "type" of another contract's making, with the same id, is no type.
        let mut forged = issue.clone();
        forged.references.push(StateAndRef {
            state: w.state(&w.token_type("v2"), "evil.Junk"),
            r#ref: StateRef { txhash: SecureHash::sha256(b"junk"), index: 0 },
        });
        refused(&forged, "must be a reference input");
        assert!(verify_tokens(&w.referencing(issue)).is_ok());
        let mv = w.tx(
            vec![(w.fungible(10, &w.alice), 0)],
            vec![w.fungible(4, &w.bob), w.fungible(6, &w.alice)],
            TokenCommand::Move,
            &w.alice,
            None,
        );
        refused(&mv, "must be a reference input");
        assert!(verify_tokens(&w.referencing(mv)).is_ok());
    }

    #[test]
    fn moves_conserve_and_need_the_holders() {
        let w = world();
        let short = w.tx(vec![(w.fungible(10, &w.alice), 0)], vec![w.fungible(9, &w.bob)], TokenCommand::Move, &w.alice, None);
        refused(&w.referencing(short), "is not conserved: 10 in, 9 out");
        let unsigned = w.tx(vec![(w.fungible(10, &w.alice), 0)], vec![w.fungible(10, &w.bob)], TokenCommand::Move, &w.bob, None);
        refused(&w.referencing(unsigned), "the holder O=Alice");
        let forged = w.tx(vec![], vec![w.fungible(10, &w.bob)], TokenCommand::Issue, &w.bob, None);
        refused(&w.referencing(forged), "the issuer O=Alice");
        // A non-fungible token moves whole.
        let fixed = IssuedToken { issuer: w.alice.clone().into(), kind: TokenKind::Fixed { id: "DEED".into(), fraction_digits: 0 } };
        let nft = |holder: &treaty_contract_sdk::treaty_core::Party, seed: u8| {
            w.state(
                &NonFungibleToken {
                    token: fixed.clone(),
                    holder: holder.clone().into(),
                    linear_id: UniqueIdentifier::new(None, [seed; 16]),
                },
                TOKENS,
            )
        };
        assert!(verify_tokens(&w.tx(vec![(nft(&w.alice, 1), 0)], vec![nft(&w.bob, 1)], TokenCommand::Move, &w.alice, None)).is_ok());
        refused(&w.tx(vec![(nft(&w.alice, 1), 0)], vec![nft(&w.bob, 2)], TokenCommand::Move, &w.alice, None), "must reappear once");
        refused(&w.tx(vec![], vec![nft(&w.alice, 1), nft(&w.bob, 1)], TokenCommand::Issue, &w.alice, None), "issued twice");
        // Two states of one id (issued in two transactions) cannot cover a token that was
        // never issued: one reappearing for both, the other coming out of nothing.
        let deed = IssuedToken { issuer: w.bob.clone().into(), kind: TokenKind::Fixed { id: "OTHER".into(), fraction_digits: 0 } };
        let forged = w.state(
            &NonFungibleToken { token: deed, holder: w.alice.clone().into(), linear_id: UniqueIdentifier::new(None, [9; 16]) },
            TOKENS,
        );
        let twice =
            w.tx(vec![(nft(&w.alice, 1), 0), (nft(&w.alice, 1), 1)], vec![nft(&w.bob, 1), forged], TokenCommand::Move, &w.alice, None);
        refused(&twice, "is consumed twice");
    }

    #[test]
    fn types_evolve_only_by_their_maintainer_keeping_their_identity() {
        let w = world();
        let (v1, v2) = (w.state(&w.token_type("v1"), TOKEN_TYPES), w.state(&w.token_type("v2"), TOKEN_TYPES));
        assert!(verify_token_types(&w.tx(vec![], vec![v1.clone()], TokenTypeCommand::Create, &w.alice, None)).is_ok());
        assert!(verify_token_types(&w.tx(vec![(v1.clone(), 0)], vec![v2.clone()], TokenTypeCommand::Update, &w.alice, None)).is_ok());
        let by_bob = w.tx(vec![(v1.clone(), 0)], vec![v2], TokenTypeCommand::Update, &w.bob, None);
        crate::testing::refused(verify_token_types, &by_bob, "the maintainer O=Alice");
        let other = w.state(&EvolvableTokenType { linear_id: UniqueIdentifier::new(None, [6; 16]), ..w.token_type("v2") }, TOKEN_TYPES);
        crate::testing::refused(
            verify_token_types,
            &w.tx(vec![(v1, 0)], vec![other], TokenTypeCommand::Update, &w.alice, None),
            "keeps the type's linear id",
        );
    }

    #[test]
    fn redemptions_need_the_issuer_and_take_something_off() {
        let w = world();
        let both = |mut tx: LedgerTransaction| {
            tx.commands[0].signers.push(w.bob.owning_key.clone());
            w.referencing(tx)
        };
        // Bob redeems 4 of his 10 with Alice, the issuer: 6 come back to him.
        let ok = w.tx(vec![(w.fungible(10, &w.bob), 0)], vec![w.fungible(6, &w.bob)], TokenCommand::Redeem, &w.alice, None);
        assert!(verify_tokens(&both(ok)).is_ok());
        let without_issuer = w.tx(vec![(w.fungible(10, &w.bob), 0)], vec![w.fungible(6, &w.bob)], TokenCommand::Redeem, &w.bob, None);
        refused(&w.referencing(without_issuer), "the issuer O=Alice");
        let nothing = w.tx(vec![(w.fungible(10, &w.bob), 0)], vec![w.fungible(10, &w.bob)], TokenCommand::Redeem, &w.alice, None);
        refused(&both(nothing), "must take some quantity off");
    }
}
