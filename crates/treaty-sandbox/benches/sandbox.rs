//! Criterion benchmarks of the sandbox: a simple fungible-token transaction verified with a
//! warm module cache (target < 50 µs), the cold compile, and native verification for scale.
//!
//! Run: `cargo bench -p treaty-sandbox --bench sandbox` (numbers go in docs/BENCHMARKS.md).
#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use treaty_core::ContractVerifier;
use treaty_sandbox::Sandbox;

fn bench(c: &mut Criterion) {
    let mut f = Fixture::new();
    let input = f.issue(100);
    let ltx = f.move_ltx(input, 100, f.hash_constraint(), f.token_attachment);
    let sandbox = f.sandbox();
    sandbox.run_contract(TOKEN, &ltx).unwrap();
    let native = treaty_test_contracts::native_contracts();

    let mut g = c.benchmark_group("sandbox");
    g.throughput(Throughput::Elements(1));
    g.bench_function("token move, warm module cache (constraints + instantiate + run)", |b| {
        b.iter(|| sandbox.verify_contract(TOKEN, black_box(&ltx)).unwrap())
    });
    g.bench_function("token move, native (same contract code, no sandbox)", |b| {
        b.iter(|| native.verify_contract(TOKEN, black_box(&ltx)).unwrap())
    });
    g.sample_size(10);
    g.bench_function("cold: new sandbox + compile module (144 KB)", |b| {
        b.iter(|| {
            let s = Sandbox::new(f.params.clone()).unwrap();
            s.check_module(treaty_contracts::TEST_CONTRACTS_WASM).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
