//! The verification pipeline, rule by rule: each case builds a transaction that breaks exactly
//! one rule and asserts the specific error.

mod common;

use common::*;
use treaty_core::*;

fn move_tx(w: &mut World, amount: u64) -> (StateRef, SignedTransaction) {
    let input = w.issue_to_alice(amount);
    let b = w.move_builder(input, amount);
    let wtx = b.build(w.salt()).unwrap();
    (input, w.sign_all(wtx))
}

#[test]
fn a_valid_move_verifies() {
    let mut w = World::new();
    let (input, stx) = move_tx(&mut w, 100);
    let ltx = w.verify(&stx).unwrap();
    assert_eq!(ltx.inputs[0].r#ref, input);
    let out: Vec<Token> = ltx.outputs_of().unwrap();
    assert_eq!(out, vec![Token { owner: w.bob.clone().into(), amount: 100 }]);
}

#[test]
fn duplicate_input_is_refused() {
    let mut w = World::new();
    let input = w.issue_to_alice(10);
    let wtx = w.move_builder(input, 10).input(input).build(w.salt()).unwrap();
    assert_eq!(w.verify(&w.sign_all(wtx)).unwrap_err(), TransactionError::DuplicateInput(input));
}

#[test]
fn duplicate_reference_and_input_as_reference_are_refused() {
    let mut w = World::new();
    let input = w.issue_to_alice(10);
    let r = w.issue_to_alice(1);
    let wtx = w.move_builder(input, 10).reference(r).reference(r).build(w.salt()).unwrap();
    assert_eq!(w.verify(&w.sign_all(wtx)).unwrap_err(), TransactionError::DuplicateReference(r));
    let wtx = w.move_builder(input, 10).reference(input).build(w.salt()).unwrap();
    assert_eq!(w.verify(&w.sign_all(wtx)).unwrap_err(), TransactionError::InputIsAlsoReference(input));
}

#[test]
fn unresolvable_input_and_attachment_are_named() {
    let mut w = World::new();
    let ghost = StateRef { txhash: SecureHash::sha256(b"nope"), index: 0 };
    let wtx = w.move_builder(ghost, 10).build(w.salt()).unwrap();
    assert_eq!(w.verify(&w.sign_all(wtx)).unwrap_err(), TransactionError::UnresolvedState(ghost));
    let input = w.issue_to_alice(10);
    let missing = SecureHash::sha256(b"no such attachment");
    let wtx = w.move_builder(input, 10).attachment(missing).build(w.salt()).unwrap();
    assert_eq!(w.verify(&w.sign_all(wtx)).unwrap_err(), TransactionError::UnresolvedAttachment(missing));
}

#[test]
fn inputs_on_another_notary_are_refused() {
    let mut w = World::new();
    let input = w.issue_to_alice(10);
    let mut b = w.move_builder(input, 10);
    b.notary = Some(w.other_notary.clone());
    b.outputs[0].notary = w.other_notary.clone();
    let err = w.verify(&w.sign_all(b.build(w.salt()).unwrap())).unwrap_err();
    assert!(matches!(err, TransactionError::WrongNotary { which: "input", state, .. } if state == input), "{err}");
}

#[test]
fn references_on_another_notary_are_refused() {
    let mut w = World::new();
    let input = w.issue_to_alice(10);
    // A reference state guarded by the other notary.
    let mut other = w.token(&w.alice.clone(), 1);
    other.notary = w.other_notary.clone();
    let rtx = TransactionBuilder::new(None)
        .output(other)
        .command(Command::new(&TokenCommand::Issue, vec![w.alice.owning_key.clone()]))
        .attachment(token_attachment().id)
        .build(w.salt())
        .unwrap();
    w.resolver.add_transaction(&rtx);
    let r = StateRef { txhash: rtx.id(), index: 0 };
    let err = w.verify(&w.sign_all(w.move_builder(input, 10).reference(r).build(w.salt()).unwrap())).unwrap_err();
    assert!(matches!(err, TransactionError::WrongNotary { which: "reference", state, .. } if state == r), "{err}");
}

#[test]
fn outputs_must_keep_the_inputs_notary() {
    let mut w = World::new();
    let input = w.issue_to_alice(10);
    let mut b = w.move_builder(input, 10);
    b.outputs[0].notary = w.other_notary.clone();
    let err = w.verify(&w.sign_all(b.build(w.salt()).unwrap())).unwrap_err();
    assert!(matches!(err, TransactionError::OutputNotaryChanged { index: 0, .. }), "{err}");
}

#[test]
fn inputs_or_time_window_without_notary_are_refused() {
    let mut w = World::new();
    let input = w.issue_to_alice(10);
    let mut b = w.move_builder(input, 10);
    b.notary = None;
    assert_eq!(w.verify(&w.sign_all(b.build(w.salt()).unwrap())).unwrap_err(), TransactionError::NotaryMissing("inputs"));
    let b = TransactionBuilder::new(None)
        .output(w.token(&w.alice.clone(), 5))
        .command(Command::new(&TokenCommand::Issue, vec![w.alice.owning_key.clone()]))
        .attachment(token_attachment().id)
        .time_window(TimeWindow::From(Timestamp(0)));
    assert_eq!(w.verify(&w.sign_all(b.build(w.salt()).unwrap())).unwrap_err(), TransactionError::NotaryMissing("a time window"));
}

#[test]
fn encumbrance_rules() {
    let mut w = World::new();
    let issue = |w: &mut World, outputs: Vec<TransactionState>| {
        let mut b = TransactionBuilder::new(Some(w.notary.clone()))
            .command(Command::new(&TokenCommand::Issue, vec![w.alice.owning_key.clone()]))
            .attachment(token_attachment().id);
        b.outputs = outputs;
        let wtx = b.build(w.salt()).unwrap();
        w.resolver.add_transaction(&wtx);
        (wtx.id(), w.sign_all(wtx))
    };
    let t = |w: &World| w.token(&w.alice.clone(), 5);
    // Out of range, self, different notary.
    let (_, stx) = {
        let v = vec![t(&w).with_encumbrance(2), t(&w)];
        issue(&mut w, v)
    };
    assert_eq!(w.verify(&stx).unwrap_err(), TransactionError::EncumbranceOutOfRange { index: 0, encumbrance: 2, outputs: 2 });
    let (_, stx) = {
        let v = vec![t(&w).with_encumbrance(0)];
        issue(&mut w, v)
    };
    assert_eq!(w.verify(&stx).unwrap_err(), TransactionError::EncumbranceSelf(0));
    let mut elsewhere = t(&w);
    elsewhere.notary = w.other_notary.clone();
    let (_, stx) = {
        let v = vec![t(&w).with_encumbrance(1), elsewhere];
        issue(&mut w, v)
    };
    assert_eq!(w.verify(&stx).unwrap_err(), TransactionError::EncumbranceNotaryMismatch { index: 0, encumbrance: 1 });
    // A chain 0 → 1 → 2 is allowed, and consuming 0 requires consuming 1 as well.
    let (id, stx) = {
        let v = vec![t(&w).with_encumbrance(1), t(&w).with_encumbrance(2), t(&w)];
        issue(&mut w, v)
    };
    w.verify(&stx).unwrap();
    let s = |i| StateRef { txhash: id, index: i };
    let spend = |w: &mut World, inputs: &[u32]| {
        let mut b = w.move_builder(s(inputs[0]), 5 * inputs.len() as u64);
        b.summaries = vec![format!("Move {} tokens", 5 * inputs.len())];
        for &i in &inputs[1..] {
            b = b.input(s(i));
        }
        let wtx = b.build(w.salt()).unwrap();
        w.sign_all(wtx)
    };
    let stx = spend(&mut w, &[0]);
    assert_eq!(w.verify(&stx).unwrap_err(), TransactionError::EncumbranceNotConsumed { input: s(0), encumbrance: s(1) });
    let stx = spend(&mut w, &[0, 1]);
    assert_eq!(w.verify(&stx).unwrap_err(), TransactionError::EncumbranceNotConsumed { input: s(1), encumbrance: s(2) });
    let stx = spend(&mut w, &[0, 1, 2]);
    w.verify(&stx).unwrap();
}

#[test]
fn attachment_rules() {
    let mut w = World::new();
    let input = w.issue_to_alice(10);
    let a = token_attachment();
    // Listed twice.
    let wtx = w.move_builder(input, 10).attachment(a.id).build(w.salt()).unwrap();
    assert_eq!(w.verify(&w.sign_all(wtx)).unwrap_err(), TransactionError::DuplicateAttachment(a.id));
    // Another attachment defining the same contract.
    let rival = Attachment {
        id: SecureHash::sha256(b"rival"),
        contracts: vec![TOKEN.into()],
        files: vec![],
        signers: vec![],
        content: a.content.clone(),
    };
    w.resolver.add_attachment(rival.clone());
    let wtx = w.move_builder(input, 10).attachment(rival.id).build(w.salt()).unwrap();
    let err = w.verify(&w.sign_all(wtx)).unwrap_err();
    assert!(matches!(err, TransactionError::AttachmentOverlap { what: "contract", ref name, .. } if name == TOKEN), "{err}");
    // Two attachments with the same data file.
    let f1 = Attachment {
        id: SecureHash::sha256(b"f1"),
        contracts: vec![],
        files: vec!["holidays.csv".into()],
        signers: vec![],
        content: a.content.clone(),
    };
    let f2 = Attachment { id: SecureHash::sha256(b"f2"), ..f1.clone() };
    w.resolver.add_attachment(f1.clone());
    w.resolver.add_attachment(f2.clone());
    let wtx = w.move_builder(input, 10).attachment(f1.id).attachment(f2.id).build(w.salt()).unwrap();
    let err = w.verify(&w.sign_all(wtx)).unwrap_err();
    assert!(matches!(err, TransactionError::AttachmentOverlap { what: "file", ref name, .. } if name == "holidays.csv"), "{err}");
    // No attachment for the contract at all.
    let mut b = w.move_builder(input, 10);
    b.attachments.clear();
    assert_eq!(w.verify(&w.sign_all(b.build(w.salt()).unwrap())).unwrap_err(), TransactionError::MissingContractAttachment(TOKEN.into()));
}

#[test]
fn missing_signatures_are_named_exactly() {
    let mut w = World::new();
    let input = w.issue_to_alice(10);
    let wtx = w.move_builder(input, 10).build(w.salt()).unwrap();
    let id = wtx.id();
    // Only the notary signed: Alice is missing.
    let stx = SignedTransaction::new(wtx.clone(), vec![w.notary_key.sign_transaction(&id, 1)]);
    assert_eq!(w.verify(&stx).unwrap_err(), TransactionError::SignaturesMissing { tx_id: id, missing: vec![w.alice.owning_key.clone()] });
    // Only Alice signed: the notary is missing, unless allowed (before notarisation).
    let stx = SignedTransaction::new(wtx, vec![w.alice_key.sign_transaction(&id, 1)]);
    assert_eq!(w.verify(&stx).unwrap_err(), TransactionError::SignaturesMissing { tx_id: id, missing: vec![w.notary.owning_key.clone()] });
    let opts = VerifyOptions { allowed_missing: vec![w.notary.owning_key.clone()] };
    verify_transaction(&stx, &w.resolver, &w.contracts, &opts).unwrap();
    stx.verify_signatures_except(&[w.notary.owning_key.clone()]).unwrap();
}

#[test]
fn an_invalid_signature_fails_even_if_not_required() {
    let mut w = World::new();
    let (_, stx) = move_tx(&mut w, 10);
    let mut bogus = w.bob_key.sign_transaction(&stx.id(), 1);
    bogus.bytes[0] ^= 0xff;
    let err = w.verify(&stx.with_signature(bogus)).unwrap_err();
    assert!(matches!(err, TransactionError::InvalidSignature { .. }), "{err}");
    assert_eq!(err.code(), "TX-INVALID-SIGNATURE");
}

#[test]
fn composite_signers_are_resolved_against_leaf_signatures() {
    let mut w = World::new();
    let input = w.issue_to_alice(10);
    let (k1, k2, k3) = (keypair(11), p256_keypair(12), keypair(13));
    let board = CompositeKey::build(
        2,
        vec![
            WeightedKey { key: k1.public(), weight: 1 },
            WeightedKey { key: k2.public(), weight: 1 },
            WeightedKey { key: k3.public(), weight: 1 },
        ],
    )
    .unwrap();
    let b = w.move_builder(input, 10).command(Command::new(&TokenCommand::Issue, vec![board.clone()]));
    // The token contract wants exactly one command; register a lenient verifier for this case.
    let wtx = b.build(w.salt()).unwrap();
    let id = wtx.id();
    let base = w.sign_all(wtx);
    assert_eq!(base.missing_keys(&base.tx().command_and_notary_keys(), &[]), vec![board.clone()]);
    let one = base.clone().with_signature(k1.sign_transaction(&id, 1));
    assert_eq!(one.verify_signatures_except(&[]).unwrap_err(), TransactionError::SignaturesMissing { tx_id: id, missing: vec![board] });
    let two = one.with_signature(k2.sign_transaction(&id, 1));
    two.verify_signatures_except(&[]).unwrap();
}

#[test]
fn batch_signatures_from_a_notary_are_accepted() {
    let mut w = World::new();
    let mut stxs = Vec::new();
    for amount in 1..=5 {
        let input = w.issue_to_alice(amount);
        let wtx = w.move_builder(input, amount).build(w.salt()).unwrap();
        let id = wtx.id();
        stxs.push(SignedTransaction::new(wtx, vec![w.alice_key.sign_transaction(&id, 1)]));
    }
    let ids: Vec<SecureHash> = stxs.iter().map(|s| s.id()).collect();
    let (root, proofs) = treaty_core::merkle::batch_root(&ids);
    let root_sig = w.notary_key.sign_batch_root(&root, 1);
    for (stx, proof) in stxs.iter().zip(&proofs) {
        let signed = stx.clone().with_signature(TransactionSignature::for_batch_member(&root_sig, proof.clone()));
        w.verify(&signed).unwrap();
    }
    // A proof for another member does not transfer.
    let wrong = stxs[0].clone().with_signature(TransactionSignature::for_batch_member(&root_sig, proofs[1].clone()));
    assert!(matches!(w.verify(&wrong).unwrap_err(), TransactionError::InvalidSignature { .. }));
}

#[test]
fn contract_rejection_carries_the_contracts_message() {
    let mut w = World::new();
    let input = w.issue_to_alice(10);
    let wtx = w.move_builder(input, 11).build(w.salt()).unwrap();
    let err = w.verify(&w.sign_all(wtx)).unwrap_err();
    assert!(
        matches!(&err, TransactionError::ContractRejected { contract, message, .. } if contract == TOKEN && message == "a move must conserve tokens: 10 in, 11 out"),
        "{err}"
    );
    // A contract with no code installed.
    let empty = NativeContracts::new();
    let (_, stx) = move_tx(&mut w, 3);
    let err = verify_transaction(&stx, &w.resolver, &empty, &VerifyOptions::default()).unwrap_err();
    assert!(matches!(&err, TransactionError::ContractRejected { message, .. } if message.contains("no code is installed")), "{err}");
}

#[test]
fn summaries_must_be_exactly_what_contracts_vouch_for() {
    let mut w = World::new();
    let input = w.issue_to_alice(10);
    let mut b = w.move_builder(input, 10);
    b.summaries = vec!["Move 10 tokens".into(), "Pay Mallory 1,000,000".into()];
    let err = w.verify(&w.sign_all(b.build(w.salt()).unwrap())).unwrap_err();
    assert_eq!(err, TransactionError::SummariesMismatch { unexpected: vec!["Pay Mallory 1,000,000".into()], missing: vec![] });
    let mut b = w.move_builder(input, 10);
    b.summaries.clear();
    let err = w.verify(&w.sign_all(b.build(w.salt()).unwrap())).unwrap_err();
    assert_eq!(err, TransactionError::SummariesMismatch { unexpected: vec![], missing: vec!["Move 10 tokens".into()] });
}

#[test]
fn notary_change_moves_states_unchanged() {
    let mut w = World::new();
    let input = w.issue_to_alice(10);
    let state = w.resolver.state(&input).unwrap();
    let mut moved = state.clone();
    moved.notary = w.other_notary.clone();
    let kind = TransactionKind::NotaryChange { new_notary: w.other_notary.clone() };
    let good =
        TransactionBuilder::new(Some(w.notary.clone())).input(input).output(moved.clone()).kind(kind.clone()).build(w.salt()).unwrap();
    let ltx = w.verify(&w.sign_all(good)).unwrap();
    assert_eq!(ltx.required_signing_keys(), {
        let mut k = vec![w.alice.owning_key.clone(), w.notary.owning_key.clone()];
        k.sort();
        k
    });
    // Changing the data while moving is refused.
    let mut altered = moved.clone();
    altered.data = w.token(&w.bob.clone(), 10).data;
    let bad = TransactionBuilder::new(Some(w.notary.clone())).input(input).output(altered).kind(kind.clone()).build(w.salt()).unwrap();
    let err = w.verify(&w.sign_all(bad)).unwrap_err();
    assert!(matches!(&err, TransactionError::InvalidNotaryChange(m) if m.contains("not input 0 moved unchanged")), "{err}");
    // Moving to the same notary is refused.
    let same = TransactionKind::NotaryChange { new_notary: w.notary.clone() };
    let bad = TransactionBuilder::new(Some(w.notary.clone())).input(input).output(state).kind(same).build(w.salt()).unwrap();
    assert!(matches!(w.verify(&w.sign_all(bad)).unwrap_err(), TransactionError::InvalidNotaryChange(_)));
}

#[test]
fn notary_change_keeps_encumbrances() {
    let mut w = World::new();
    let mut b = TransactionBuilder::new(Some(w.notary.clone()))
        .output(w.token(&w.alice.clone(), 5).with_encumbrance(1))
        .output(w.token(&w.alice.clone(), 5))
        .command(Command::new(&TokenCommand::Issue, vec![w.alice.owning_key.clone()]))
        .attachment(token_attachment().id);
    b = b.summary("unused");
    b.summaries.clear();
    let issued = b.build(w.salt()).unwrap();
    w.resolver.add_transaction(&issued);
    let s = |i| StateRef { txhash: issued.id(), index: i };
    let moved = |i: u32| {
        let mut t = w.resolver.state(&s(i)).unwrap();
        t.notary = w.other_notary.clone();
        t
    };
    let kind = TransactionKind::NotaryChange { new_notary: w.other_notary.clone() };
    // Moving the encumbered state alone is refused; moving both keeps the link.
    let alone = TransactionBuilder::new(Some(w.notary.clone())).input(s(0)).output(moved(0)).kind(kind.clone()).build(w.salt()).unwrap();
    assert_eq!(w.verify(&w.sign_all(alone)).unwrap_err(), TransactionError::EncumbranceNotConsumed { input: s(0), encumbrance: s(1) });
    // Listed in reverse order, the encumbrance index is remapped to the new position.
    let inputs: Vec<StateAndRef> = [1, 0].iter().map(|&i| StateAndRef { state: w.resolver.state(&s(i)).unwrap(), r#ref: s(i) }).collect();
    let outputs = treaty_core::transaction::notary_change_outputs(&inputs, &w.other_notary);
    assert_eq!(outputs[1].encumbrance, Some(0));
    let mut b = TransactionBuilder::new(Some(w.notary.clone())).input(s(1)).input(s(0)).kind(kind.clone());
    b.outputs = outputs;
    let ltx = w.verify(&w.sign_all(b.build(w.salt()).unwrap())).unwrap();
    assert_eq!(ltx.outputs[1].encumbrance, Some(0));
    assert_eq!(ltx.outputs[0].notary, w.other_notary);
    // Copying the old index verbatim makes state 0 (now output 1) point at itself: refused.
    let stale = TransactionBuilder::new(Some(w.notary.clone()))
        .input(s(1))
        .input(s(0))
        .output(moved(1))
        .output(moved(0))
        .kind(kind)
        .build(w.salt())
        .unwrap();
    assert_eq!(w.verify(&w.sign_all(stale)).unwrap_err(), TransactionError::EncumbranceSelf(1));
}

#[test]
fn contract_upgrade_rules() {
    let mut w = World::new();
    let input = w.issue_to_alice(10);
    let v2 = Attachment {
        id: SecureHash::sha256(b"token v2"),
        contracts: vec!["test.TokenV2".into()],
        files: vec![],
        signers: vec![],
        content: token_attachment().content,
    };
    w.resolver.add_attachment(v2.clone());
    w.contracts = w.contracts.clone().with("test.TokenV2", |_| Ok(ContractVerdict::default()));
    let mut upgraded = w.resolver.state(&input).unwrap();
    upgraded.contract = "test.TokenV2".into();
    let kind = TransactionKind::ContractUpgrade { upgraded_contract: "test.TokenV2".into(), upgraded_attachment: v2.id };
    let good = good_upgrade(&w, input, &upgraded, &kind, v2.id);
    w.verify(&w.sign_all(good.clone().build(w.salt()).unwrap())).unwrap();
    // Without the upgraded attachment.
    let mut missing = good.clone();
    missing.attachments.clear();
    assert!(matches!(w.verify(&w.sign_all(missing.build(w.salt()).unwrap())).unwrap_err(), TransactionError::MissingContractAttachment(_)));
    // An output left on the old contract.
    let mut stale = good;
    stale.outputs[0].contract = TOKEN.into();
    let err = w.verify(&w.sign_all(stale.build(w.salt()).unwrap())).unwrap_err();
    assert!(matches!(&err, TransactionError::InvalidContractUpgrade(m) if m.contains("output 0 is governed by test.Token")), "{err}");
    // A command in an upgrade needs its signers' signatures, as anywhere: the upgraded
    // contract reads its signers as keys that signed (an issue "signed" by a bank, say).
    let commanded =
        good_upgrade(&w, input, &upgraded, &kind, v2.id).command(Command::new(&TokenCommand::Issue, vec![w.bob.owning_key.clone()]));
    let err = w.verify(&w.sign_all(commanded.build(w.salt()).unwrap())).unwrap_err();
    assert!(matches!(&err, TransactionError::SignaturesMissing { missing, .. } if missing == &vec![w.bob.owning_key.clone()]), "{err}");
}

fn good_upgrade(w: &World, input: StateRef, upgraded: &TransactionState, kind: &TransactionKind, v2: SecureHash) -> TransactionBuilder {
    TransactionBuilder::new(Some(w.notary.clone())).input(input).output(upgraded.clone()).attachment(v2).kind(kind.clone())
}

#[test]
fn wire_level_rules_are_checked_on_decode() {
    let mut w = World::new();
    // A builder cannot produce a command without signers.
    let b = TransactionBuilder::new(None).output(w.token(&w.alice.clone(), 1)).command(Command::new(&TokenCommand::Issue, vec![]));
    assert_eq!(b.build(w.salt()).unwrap_err(), TransactionError::CommandWithoutSigners(0));
    // Nor use an all-zero salt.
    let b = TransactionBuilder::new(None).output(w.token(&w.alice.clone(), 1));
    assert_eq!(b.build(PrivacySalt([0; 32])).unwrap_err(), TransactionError::ZeroSalt);
    // Nor declare a normal transaction's kind explicitly (checked on the bytes).
    let stx = w.issue(9, 5);
    let mut groups = stx.tx().groups().to_vec();
    groups.push(GroupBytes { group: ComponentGroup::Kind.index(), components: vec![encoding::encode(&TransactionKind::Normal)] });
    let bytes = encoding::encode(&(groups, *stx.tx().privacy_salt()));
    assert_eq!(WireTransaction::from_bytes(&bytes, &Limits::default()).unwrap_err(), TransactionError::NonCanonicalKind);
    // Unknown group numbers and unsorted groups are refused.
    let mut groups = stx.tx().groups().to_vec();
    groups.push(GroupBytes { group: 15, components: vec![vec![1]] });
    let bytes = encoding::encode(&(groups, *stx.tx().privacy_salt()));
    assert_eq!(WireTransaction::from_bytes(&bytes, &Limits::default()).unwrap_err(), TransactionError::UnknownGroup(15));
    let mut groups = stx.tx().groups().to_vec();
    groups.reverse();
    let bytes = encoding::encode(&(groups, *stx.tx().privacy_salt()));
    assert!(matches!(WireTransaction::from_bytes(&bytes, &Limits::default()).unwrap_err(), TransactionError::NonCanonicalGroups(_)));
    // Oversized transactions and too many components are refused before work is done.
    let tight = Limits { max_transaction_bytes: 64, max_components_per_group: 10 };
    assert!(matches!(
        WireTransaction::from_bytes(stx.tx().bytes(), &tight).unwrap_err(),
        TransactionError::Decode(encoding::DecodeError::TooLarge { .. })
    ));
    let few = Limits { max_transaction_bytes: 1 << 20, max_components_per_group: 0 };
    assert!(matches!(WireTransaction::from_bytes(stx.tx().bytes(), &few).unwrap_err(), TransactionError::TooManyComponents { .. }));
    // A transaction built here is held to the same limits, with the same errors, undecoded.
    for limits in [tight, few] {
        assert_eq!(stx.tx().check_limits(&limits).unwrap_err(), WireTransaction::from_bytes(stx.tx().bytes(), &limits).unwrap_err());
    }
    let exact = Limits { max_transaction_bytes: stx.tx().bytes().len(), max_components_per_group: 10 };
    stx.tx().check_limits(&exact).unwrap();
    WireTransaction::from_bytes(stx.tx().bytes(), &exact).unwrap();
}

use treaty_core::encoding;
use treaty_core::transaction::GroupBytes;

#[test]
fn a_state_is_its_type_only_under_its_own_contract() {
    let mut w = World::new();
    // A contract that checks nothing, in an attachment of its own.
    let junk = Attachment {
        id: SecureHash::sha256(b"junk"),
        contracts: vec!["evil.Junk".into()],
        files: vec![],
        signers: vec![],
        content: token_attachment().content,
    };
    w.resolver.add_attachment(junk.clone());
    w.contracts = w.contracts.clone().with("evil.Junk", |_| Ok(ContractVerdict::default()));
    // Alice issues herself a million "tokens" under it, needing nobody: that verifies...
    let mut forged = w.token(&w.alice.clone(), 1_000_000);
    forged.contract = "evil.Junk".into();
    forged.constraint = AttachmentConstraint::Hash(junk.id);
    let issue = TransactionBuilder::new(Some(w.notary.clone())).output(forged).attachment(junk.id).build(w.salt()).unwrap();
    w.verify(&w.sign_all(issue.clone())).unwrap();
    w.resolver.add_transaction(&issue);
    // ...but the token contract does not count them as tokens.
    let spend = w.move_builder(StateRef { txhash: issue.id(), index: 0 }, 1_000_000).attachment(junk.id);
    let err = w.verify(&w.sign_all(spend.build(w.salt()).unwrap())).unwrap_err();
    assert!(
        matches!(&err, TransactionError::ContractRejected { contract, message, .. }
            if contract == TOKEN && message.contains("a test.Token state governed by evil.Junk, not by test.Token")),
        "{err}"
    );
}
