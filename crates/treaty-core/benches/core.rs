//! Criterion benchmarks of the ledger core: transaction ids, signature checks (single, parallel
//! and batch), decoding, tear-off verification and the full verification pipeline.
//!
//! Run: `cargo bench -p treaty-core --bench core` (numbers go in docs/BENCHMARKS.md).
#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use treaty_core::*;

fn payment(w: &mut World) -> SignedTransaction {
    let input = w.issue_to_alice(100);
    let wtx = w.move_builder(input, 100).time_window(TimeWindow::From(Timestamp(0))).build(w.salt()).unwrap();
    w.sign_all(wtx)
}

fn bench_ids(c: &mut Criterion) {
    // Every check in these loops repeats one: measure the curve, not the cache of known signatures.
    treaty_core::crypto::set_signature_cache(false);
    let mut w = World::new();
    let stx = payment(&mut w);
    let groups = stx.tx().clone();
    let mut g = c.benchmark_group("transaction");
    g.throughput(Throughput::Elements(1));
    g.bench_function("id_from_bytes (decode + Merkle id), 1-in 1-out payment", |b| {
        b.iter(|| WireTransaction::from_bytes(black_box(groups.bytes()), &Limits::default()).unwrap().id())
    });
    let bytes = stx.to_bytes();
    g.bench_function("decode signed transaction", |b| {
        b.iter(|| SignedTransaction::from_bytes(black_box(&bytes), &Limits::default()).unwrap())
    });
    g.bench_function("build (encode + id)", |b| {
        b.iter_batched(
            || w.move_builder(StateRef { txhash: SecureHash::ZERO, index: 0 }, 1),
            |tb| tb.build(PrivacySalt([7; 32])).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("verify full pipeline (resolve, structure, 2 signatures, contract)", |b| {
        b.iter(|| w.verify(black_box(&stx)).unwrap())
    });
    let ftx = FilteredTransaction::reveal_groups(stx.tx(), &FilteredTransaction::NOTARY_GROUPS);
    g.bench_function("filtered transaction verify + all-visible checks (notary view)", |b| {
        b.iter(|| {
            ftx.verify().unwrap();
            for grp in FilteredTransaction::NOTARY_GROUPS {
                ftx.check_all_visible(grp).unwrap();
            }
        })
    });
    g.bench_function("filtered transaction build (notary view)", |b| {
        b.iter(|| FilteredTransaction::reveal_groups(black_box(stx.tx()), &FilteredTransaction::NOTARY_GROUPS))
    });
    g.finish();
}

fn bench_signatures(c: &mut Criterion) {
    // Every check in these loops repeats one: measure the curve, not the cache of known signatures.
    treaty_core::crypto::set_signature_cache(false);
    let id = SecureHash::sha256(b"a transaction");
    let ed = keypair(1);
    let p = p256_keypair(2);
    let ed_sig = ed.sign_transaction(&id, 1);
    let p_sig = p.sign_transaction(&id, 1);
    let mut g = c.benchmark_group("signatures");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ed25519 sign", |b| b.iter(|| ed.sign_transaction(black_box(&id), 1)));
    g.bench_function("ed25519 verify_strict", |b| b.iter(|| ed_sig.verify(black_box(&id)).unwrap()));
    g.bench_function("p256 sign", |b| b.iter(|| p.sign_transaction(black_box(&id), 1)));
    g.bench_function("p256 verify", |b| b.iter(|| p_sig.verify(black_box(&id)).unwrap()));
    treaty_core::crypto::set_signature_cache(true);
    g.bench_function("ed25519 verify, a signature known to verify (cache hit)", |b| b.iter(|| ed_sig.verify(black_box(&id)).unwrap()));
    treaty_core::crypto::set_signature_cache(false);

    // 64 distinct signatures: one by one, in parallel (rayon), and with ed25519 batch verification.
    const N: usize = 64;
    let keys: Vec<KeyPair> = (0..N).map(|i| keypair(i as u8 + 10)).collect();
    let ids: Vec<SecureHash> = (0..N).map(|i| SecureHash::sha256(&i.to_le_bytes())).collect();
    let sigs: Vec<TransactionSignature> = keys.iter().zip(&ids).map(|(k, id)| k.sign_transaction(id, 1)).collect();
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("64 x ed25519 verify_strict, sequential", |b| {
        b.iter(|| sigs.iter().zip(&ids).for_each(|(s, id)| s.verify(id).unwrap()))
    });
    g.bench_function("64 x ed25519 verify_strict, parallel (rayon)", |b| {
        use rayon::prelude::*;
        b.iter(|| sigs.par_iter().zip(ids.par_iter()).for_each(|(s, id)| s.verify(id).unwrap()))
    });
    let msgs: Vec<Vec<u8>> = sigs
        .iter()
        .zip(&ids)
        .map(|(s, id)| treaty_core::crypto::SignableData { root: *id, metadata: s.metadata }.signing_bytes())
        .collect();
    let msg_refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let dalek_sigs: Vec<ed25519_dalek::Signature> = sigs.iter().map(|s| ed25519_dalek::Signature::from_slice(&s.bytes).unwrap()).collect();
    let dalek_keys: Vec<ed25519_dalek::VerifyingKey> = sigs
        .iter()
        .map(|s| match &s.by {
            PublicKey::Ed25519(k) => ed25519_dalek::VerifyingKey::from_bytes(k.as_bytes()).unwrap(),
            _ => unreachable!(),
        })
        .collect();
    g.bench_function("64 x ed25519 batch verify (fast path only, not a verdict)", |b| {
        b.iter(|| ed25519_dalek::verify_batch(&msg_refs, &dalek_sigs, &dalek_keys).unwrap())
    });
    g.finish();
}

fn bench_chain(c: &mut Criterion) {
    // Every check in these loops repeats one: measure the curve, not the cache of known signatures.
    treaty_core::crypto::set_signature_cache(false);
    // Verify a 1,000-transaction payment chain end to end, in dependency order.
    let mut w = World::new();
    let mut prev = w.issue_to_alice(5);
    let mut chain = Vec::new();
    for _ in 0..1000 {
        // Each hop pays Alice to herself, so her signature authorises the next one.
        let mut b = w.move_builder(prev, 5);
        b.outputs[0] = w.token(&w.alice, 5);
        let wtx = b.build(w.salt()).unwrap();
        prev = StateRef { txhash: wtx.id(), index: 0 };
        chain.push(w.sign_all(wtx));
    }
    let mut g = c.benchmark_group("chain");
    g.sample_size(10);
    g.throughput(Throughput::Elements(chain.len() as u64));
    g.bench_function("verify 1000-transaction chain in order", |b| {
        b.iter_batched(
            || {
                let mut r = MapResolver::default();
                r.add_attachment(token_attachment());
                r.transactions.insert(
                    chain[0].tx().components().inputs[0].txhash,
                    w.resolver.transactions[&chain[0].tx().components().inputs[0].txhash].clone(),
                );
                r
            },
            |mut r| {
                for stx in &chain {
                    verify_transaction(stx, &r, &w.contracts, &VerifyOptions::default()).unwrap();
                    r.add_transaction(stx.tx());
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_ids, bench_signatures, bench_chain);
criterion_main!(benches);
