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

/// A provider whose commits wait for the test's permits.
struct Held {
    inner: MemoryUniquenessProvider,
    gate: tokio::sync::Semaphore,
    /// Commits that have reached the gate.
    entered: std::sync::atomic::AtomicUsize,
}

impl UniquenessProvider for Held {
    fn commit(&self, request: CommitRequest, now: Timestamp) -> CommitFuture<'_> {
        Box::pin(async move {
            self.entered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.gate.acquire().await.map_err(|e| NotaryError::Stopped(e.to_string()))?.forget();
            self.inner.commit(request, now).await
        })
    }
}

#[tokio::test]
async fn a_request_beyond_the_queue_is_refused_as_overloaded_with_an_estimated_wait_and_consumes_nothing() {
    let (nk, ak) = (key(3), key(1));
    let notary = party("O=Notary,L=Zurich,C=CH", &nk);
    let held = Arc::new(Held {
        inner: MemoryUniquenessProvider::new(Rules::default()),
        gate: tokio::sync::Semaphore::new(0),
        entered: Default::default(),
    });
    let service = Arc::new(NotaryService::new(notary.clone(), nk, held.clone()).unwrap().with_max_pending(2));
    let alice = party("O=Alice,L=London,C=GB", &ak);
    let f = Fixture { service: NotaryService::new(notary.clone(), key(3), held.clone()).unwrap(), notary, alice, alice_key: ak };
    // Two requests wait for their commit: the queue is full.
    let mut waiting = Vec::new();
    for input in [1, 2] {
        let (service, req, alice) =
            (service.clone(), request(&f, &spend(&f.notary, input), &FilteredTransaction::NOTARY_GROUPS), f.alice.clone());
        waiting.push(tokio::spawn(async move { service.notarise(&req, &alice, NOW).await }));
    }
    // Both reach the provider, where they wait for a permit.
    let began = std::time::Instant::now();
    while held.entered.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(began.elapsed() < std::time::Duration::from_secs(20), "the two requests did not reach the provider");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let third = spend(&f.notary, 3);
    let third_request = request(&f, &third, &FilteredTransaction::NOTARY_GROUPS);
    let refusal = service.notarise(&third_request, &f.alice, NOW);
    let refused = tokio::time::timeout(std::time::Duration::from_secs(20), refusal)
        .await
        .expect("a request beyond the queue is answered at once, not queued")
        .unwrap_err();
    let NotaryRefusal::Overloaded { reason, retry_after_ms } = &refused else { panic!("{refused:?}") };
    assert!(reason.contains("2 requests are waiting"), "{reason}");
    assert!((10..=60_000).contains(retry_after_ms), "{retry_after_ms}");
    assert_eq!(refused.code(), "NOTARY-OVERLOADED");
    // The queue drains; the refused request consumed nothing and now goes through.
    held.gate.add_permits(3);
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    service.notarise(&request(&f, &third, &FilteredTransaction::NOTARY_GROUPS), &f.alice, NOW).await.unwrap();
}
