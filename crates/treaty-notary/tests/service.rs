//! The non-validating notary service's checks on a request, before and around the commit:
//! what it may see, whom it answers for, and the distinct refusals a client gets.

use std::sync::Arc;

use treaty_core::*;
use treaty_notary::*;

fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).unwrap()
}

fn party(name: &str, k: &KeyPair) -> Party {
    Party { name: name.parse().unwrap(), owning_key: k.public() }
}

struct Fixture {
    service: NotaryService,
    notary: Party,
    alice: Party,
    alice_key: KeyPair,
}

fn fixture() -> Fixture {
    let (nk, ak) = (key(3), key(1));
    let notary = party("O=Notary,L=Zurich,C=CH", &nk);
    let service = NotaryService::new(notary.clone(), nk, Arc::new(MemoryUniquenessProvider::new(Rules::default()))).unwrap();
    Fixture { service, notary, alice: party("O=Alice,L=London,C=GB", &ak), alice_key: ak }
}

fn spend(notary: &Party, input: u8) -> WireTransaction {
    TransactionBuilder::new(Some(notary.clone()))
        .input(StateRef { txhash: SecureHash::sha256(&[input]), index: 0 })
        .command(Command {
            data: CommandData { type_id: "test".into(), schema_version: 1, bytes: vec![] },
            signers: vec![notary.owning_key.clone()],
        })
        .build(PrivacySalt([input; 32]))
        .unwrap()
}

fn request(f: &Fixture, wtx: &WireTransaction, groups: &[ComponentGroup]) -> NotarisationRequest {
    let transaction = FilteredTransaction::reveal_groups(wtx, groups);
    let signature = f.alice_key.sign(&request_signing_bytes(&wtx.id(), &f.notary));
    NotarisationRequest { transaction, signature }
}

const NOW: Timestamp = Timestamp(1_800_000_000_000_000);

#[tokio::test]
async fn a_proper_request_is_signed_and_a_second_spend_conflicts() {
    let f = fixture();
    let first = spend(&f.notary, 1);
    let sig = f.service.notarise(&request(&f, &first, &FilteredTransaction::NOTARY_GROUPS), &f.alice, NOW).await.unwrap();
    sig.verify(&first.id()).unwrap();
    assert_eq!(sig.by, f.notary.owning_key);
    // The same request again: the same answer (idempotent).
    f.service.notarise(&request(&f, &first, &FilteredTransaction::NOTARY_GROUPS), &f.alice, NOW).await.unwrap();
    let mut second = spend(&f.notary, 1);
    second = TransactionBuilder::new(Some(f.notary.clone()))
        .input(second.components().inputs[0])
        .summary("another spender")
        .command(second.components().commands[0].clone())
        .build(PrivacySalt([9; 32]))
        .unwrap();
    let refusal = f.service.notarise(&request(&f, &second, &FilteredTransaction::NOTARY_GROUPS), &f.alice, NOW).await.unwrap_err();
    assert_eq!(refusal.code(), "NOTARY-CONFLICT");
    let NotaryRefusal::Conflict { conflict, .. } = &refusal else { unreachable!() };
    assert_eq!(conflict.states.values().next().unwrap().consumed_by.tx_id, first.id(), "{refusal}");
}

#[tokio::test]
async fn a_tear_off_showing_more_or_less_than_the_notary_groups_is_refused() {
    let f = fixture();
    let wtx = spend(&f.notary, 2);
    let mut too_much = FilteredTransaction::NOTARY_GROUPS.to_vec();
    too_much.push(ComponentGroup::Commands);
    let refusal = f.service.notarise(&request(&f, &wtx, &too_much), &f.alice, NOW).await.unwrap_err();
    assert_eq!(refusal.code(), "NOTARY-TRANSACTION-INVALID");
    assert!(refusal.to_string().contains("must not see"), "{refusal}");
    let too_little = [ComponentGroup::Notary];
    let refusal = f.service.notarise(&request(&f, &wtx, &too_little), &f.alice, NOW).await.unwrap_err();
    assert_eq!(refusal.code(), "NOTARY-TRANSACTION-INVALID", "{refusal}");
}

#[tokio::test]
async fn wrong_notary_and_bad_request_signature_are_distinct_refusals() {
    let f = fixture();
    let other = party("O=Other Notary,L=Zurich,C=CH", &key(7));
    let wtx = spend(&other, 3);
    let refusal = f.service.notarise(&request(&f, &wtx, &FilteredTransaction::NOTARY_GROUPS), &f.alice, NOW).await.unwrap_err();
    assert_eq!(refusal.code(), "NOTARY-WRONG-NOTARY");
    assert!(refusal.to_string().contains("O=Other Notary"), "{refusal}");
    let wtx = spend(&f.notary, 4);
    let mallory = party("O=Alice,L=London,C=GB", &key(66));
    let refusal = f.service.notarise(&request(&f, &wtx, &FilteredTransaction::NOTARY_GROUPS), &mallory, NOW).await.unwrap_err();
    assert_eq!(refusal.code(), "NOTARY-REQUEST-SIGNATURE");
    // Neither consumed anything: the rightful request goes through.
    f.service.notarise(&request(&f, &wtx, &FilteredTransaction::NOTARY_GROUPS), &f.alice, NOW).await.unwrap();
}
