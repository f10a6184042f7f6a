//! Property tests over the encoding, ids and tear-offs.

mod common;

use common::*;
use proptest::prelude::*;
use treaty_core::*;

/// A transaction with a varying number of inputs, outputs, references, commands and summaries.
fn arbitrary_tx(
    w: &World,
    inputs: usize,
    outputs: usize,
    refs: usize,
    summaries: usize,
    with_window: bool,
    salt: [u8; 32],
) -> WireTransaction {
    let mut b = TransactionBuilder::new(Some(w.notary.clone())).attachment(token_attachment().id);
    for i in 0..inputs {
        b = b.input(StateRef { txhash: SecureHash::sha256(&i.to_le_bytes()), index: i as u32 });
    }
    for i in 0..outputs {
        b = b.output(w.token(&w.bob, 1 + i as u64));
    }
    for i in 0..refs {
        b = b.reference(StateRef { txhash: SecureHash::sha256(b"ref"), index: i as u32 });
    }
    for i in 0..summaries {
        b = b.summary(format!("line {i}"));
    }
    if with_window {
        b = b.time_window(TimeWindow::between(Timestamp(1), Timestamp(2)).unwrap());
    }
    b = b.command(Command::new(&TokenCommand::Move, vec![w.alice.owning_key.clone()]));
    b.network_parameters(SecureHash::sha256(b"params")).build(PrivacySalt(salt)).unwrap()
}

fn salt_strategy() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>().prop_filter("non-zero", |s| s != &[0u8; 32])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any subset of components revealed verifies against the id.
    #[test]
    fn any_revealed_subset_verifies(
        inputs in 0usize..6, outputs in 0usize..6, refs in 0usize..4, summaries in 0usize..3, window in any::<bool>(),
        salt in salt_strategy(), mask in any::<u64>(), whole_mask in any::<u16>(),
    ) {
        let w = World::new();
        let wtx = arbitrary_tx(&w, inputs, outputs, refs, summaries, window, salt);
        let ftx = FilteredTransaction::build(
            &wtx,
            |g, i| mask & (1 << ((g.index() as usize * 7 + i) % 64)) != 0,
            |g| whole_mask & (1 << g.index()) != 0,
        );
        prop_assert_eq!(ftx.id, wtx.id());
        prop_assert!(ftx.verify().is_ok());
        for g in ComponentGroup::ALL {
            if whole_mask & (1 << g.index()) != 0 {
                prop_assert!(ftx.check_all_visible(g).is_ok());
            }
        }
        // Through the wire and back, it still verifies.
        let back: FilteredTransaction = encoding::decode(&encoding::encode(&ftx)).unwrap();
        prop_assert!(back.verify().is_ok());
    }

    /// Flipping any bit of a revealed component, nonce or proof hash breaks verification.
    #[test]
    fn any_flip_breaks_a_filtered_transaction(
        inputs in 1usize..6, outputs in 0usize..4, salt in salt_strategy(), pick in any::<usize>(), bit in 0u8..8,
    ) {
        let w = World::new();
        let wtx = arbitrary_tx(&w, inputs, outputs, 1, 1, true, salt);
        let ftx = FilteredTransaction::reveal_groups(&wtx, &FilteredTransaction::NOTARY_GROUPS);
        prop_assert!(ftx.verify().is_ok());
        // Enumerate every byte position we could flip.
        let mut slots: Vec<(usize, usize, usize, usize)> = Vec::new(); // (group, kind, item, byte)
        for (gi, g) in ftx.groups.iter().enumerate() {
            for (ci, c) in g.components.iter().enumerate() { for b in 0..c.len() { slots.push((gi, 0, ci, b)); } }
            for ni in 0..g.nonces.len() { for b in 0..32 { slots.push((gi, 1, ni, b)); } }
            for hi in 0..g.proof.hashes.len() { for b in 0..32 { slots.push((gi, 2, hi, b)); } }
        }
        for hi in 0..ftx.group_proof.hashes.len() { for b in 0..32 { slots.push((usize::MAX, 3, hi, b)); } }
        let (gi, kind, item, byte) = slots[pick % slots.len()];
        let mut bad = ftx.clone();
        match kind {
            0 => bad.groups[gi].components[item][byte] ^= 1 << bit,
            1 => bad.groups[gi].nonces[item].0[byte] ^= 1 << bit,
            2 => bad.groups[gi].proof.hashes[item].0[byte] ^= 1 << bit,
            _ => bad.group_proof.hashes[item].0[byte] ^= 1 << bit,
        }
        prop_assert!(bad.verify().is_err());
    }

    /// Encoding is canonical: encode → decode → encode gives identical bytes, and the id does
    /// not change through storage.
    #[test]
    fn encode_decode_encode_is_identical(
        inputs in 0usize..5, outputs in 0usize..5, refs in 0usize..3, summaries in 0usize..3, window in any::<bool>(), salt in salt_strategy(),
    ) {
        let w = World::new();
        let wtx = arbitrary_tx(&w, inputs, outputs, refs, summaries, window, salt);
        let stx = w.sign_all(wtx.clone());
        let bytes = stx.to_bytes();
        let back = SignedTransaction::from_bytes(&bytes, &Limits::default()).unwrap();
        prop_assert_eq!(back.to_bytes(), bytes);
        prop_assert_eq!(back.id(), wtx.id());
        prop_assert_eq!(back.tx().bytes(), wtx.bytes());
        let again = WireTransaction::from_bytes(wtx.bytes(), &Limits::default()).unwrap();
        prop_assert_eq!(again.id(), wtx.id());
    }

    /// Hostile bytes never panic the decoder; they decode or are refused.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = SignedTransaction::from_bytes(&bytes, &Limits::default());
        let _ = encoding::decode::<FilteredTransaction>(&bytes).map(|f| f.verify());
        let _ = encoding::decode::<PublicKey>(&bytes);
    }

    /// Mutating one byte of a valid signed transaction never panics, and when the result still
    /// decodes it is either the same transaction or a different id.
    #[test]
    fn mutated_transactions_never_panic(pos in any::<usize>(), val in any::<u8>(), salt in salt_strategy()) {
        let w = World::new();
        let stx = w.sign_all(arbitrary_tx(&w, 2, 2, 1, 1, true, salt));
        let mut bytes = stx.to_bytes();
        let i = pos % bytes.len();
        bytes[i] = val;
        if let Ok(m) = SignedTransaction::from_bytes(&bytes, &Limits::default())
            && m.tx().bytes() != stx.tx().bytes()
        {
            prop_assert_ne!(m.id(), stx.id());
        }
    }
}

#[test]
fn hiding_an_input_from_the_notary_is_detected() {
    let w = World::new();
    let wtx = arbitrary_tx(&w, 3, 1, 0, 0, false, [9; 32]);
    // Reveal inputs 0 and 2 but tear off input 1.
    let ftx = FilteredTransaction::build(&wtx, |g, i| g == ComponentGroup::Inputs && i != 1, |g| g == ComponentGroup::Notary);
    ftx.verify().unwrap();
    let err = ftx.check_all_visible(ComponentGroup::Inputs).unwrap_err();
    assert!(
        matches!(err, treaty_core::transaction::FilteredTransactionError::NotAllVisible { group: ComponentGroup::Inputs, .. }),
        "{err}"
    );
    // Revealing no inputs at all (rather than proving the group empty) is also caught.
    let none = FilteredTransaction::reveal_groups(&wtx, &[ComponentGroup::Notary]);
    none.verify().unwrap();
    assert!(none.check_all_visible(ComponentGroup::Inputs).is_err());
    // An honest notary view sees everything it must, and nothing else.
    let view = FilteredTransaction::reveal_groups(&wtx, &FilteredTransaction::NOTARY_GROUPS);
    view.verify().unwrap();
    for g in FilteredTransaction::NOTARY_GROUPS {
        view.check_all_visible(g).unwrap();
    }
    assert_eq!(view.inputs().unwrap(), wtx.components().inputs);
    assert!(view.groups.iter().all(|g| g.group != ComponentGroup::Outputs.index() && g.group != ComponentGroup::Commands.index()));
    // The empty references group is proven empty.
    assert_eq!(view.references().unwrap(), vec![]);
}

#[test]
fn an_oracle_sees_only_its_command_and_the_time_window() {
    let w = World::new();
    let wtx = arbitrary_tx(&w, 2, 2, 0, 0, true, [3; 32]);
    let ftx = FilteredTransaction::build(&wtx, |g, _| g == ComponentGroup::Commands || g == ComponentGroup::TimeWindow, |_| false);
    ftx.verify().unwrap();
    assert_eq!(ftx.commands().unwrap().len(), 1);
    assert!(ftx.time_window().unwrap().is_some());
    assert!(ftx.inputs().unwrap().is_empty());
    // Claiming a different id fails.
    let mut forged = ftx.clone();
    forged.id = SecureHash::sha256(b"another transaction");
    assert!(forged.verify().is_err());
}

use treaty_core::encoding;
