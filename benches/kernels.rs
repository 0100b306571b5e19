//! The backend's kernels per backend: a batch of NTTs (N = 8192, 64 polynomials of one 60-bit
//! limb), the multiply-accumulate of the E = 128 selection sum (8 outputs), and hashing 2^16 OT
//! blocks — on the CPU backend, and on the GPU (every call offloaded, copies included) in a
//! `--features cuda` build where a device starts. `secmoe bench --preset kernels` gives the same
//! operations as a table with resident-buffer rows.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use secmoe::backend::{Backend, Block, CpuBackend, NttTable, Prepared, Tweaks};
use secmoe::ring::modp::{Modulus, ntt_primes};

fn backends() -> Vec<Box<dyn Backend>> {
    let cpu: Box<dyn Backend> = Box::new(CpuBackend::new(0).unwrap());
    #[cfg(feature = "cuda")]
    match secmoe::backend::CudaBackend::new(0, 0) {
        Ok(gpu) => return vec![cpu, Box::new(gpu.with_offload(secmoe::backend::Offload::Everything))],
        Err(why) => println!("GPU rows skipped: {why}"),
    }
    vec![cpu]
}

fn bench_kernels(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let n = 8192;
    let m = Modulus::new(ntt_primes(60, n, 1).unwrap()[0]).unwrap();
    let table = NttTable::new(n, m).unwrap();
    let mut polys: Vec<u64> = (0..64 * n).map(|_| rng.random_range(0..m.value())).collect();
    let (experts, outputs) = (128, 8);
    let x: Vec<u64> = (0..experts * n).map(|_| rng.random_range(0..m.value())).collect();
    let w: Vec<u64> = (0..outputs * experts * n).map(|_| rng.random_range(0..m.value())).collect();
    let ws: Vec<u64> = w.iter().map(|&v| m.shoup(v)).collect();
    let mut out = vec![0u64; outputs * n];
    let blocks: Vec<Block> = (0..1 << 16).map(|_| Block::from([rng.random::<u64>(), rng.random::<u64>()])).collect();
    let mut hashed = blocks.clone();

    let mut group = c.benchmark_group("kernels");
    for be in backends() {
        group.bench_function(BenchmarkId::new("ntt-forward/N=8192x64", be.name()), |b| {
            b.iter(|| be.ntt_forward(std::slice::from_ref(&table), &mut polys).unwrap_or_else(|e| panic!("{e}")))
        });
        group.bench_function(BenchmarkId::new("select/E=128,J=8", be.name()), |b| {
            b.iter(|| {
                be.mul_acc(std::slice::from_ref(&m), n, 1, &x, &w, Prepared::W(&ws), &mut out)
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        });
        group.bench_function(BenchmarkId::new("ot-hash/65536", be.name()), |b| {
            b.iter(|| be.hash_blocks(&blocks, Tweaks::Sequential(0), &mut hashed).unwrap_or_else(|e| panic!("{e}")))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench_kernels
}
criterion_main!(benches);
