//! NTT and inverse NTT per degree N and limb count, on the CPU backend.
//!
//! `ntt/one-core/...` runs the serial kernel (the figure to compare with SEAL's per-limb NTT);
//! `ntt/backend/...` runs a batch of limbs through the backend on all cores.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use secmoe::backend::{Backend, CpuBackend, NttTable};
use secmoe::ring::modp::{Modulus, ntt_primes};

fn table(n: usize, bits: u32) -> NttTable {
    NttTable::new(n, Modulus::new(ntt_primes(bits, n, 1).unwrap()[0]).unwrap()).unwrap()
}

fn bench_ntt(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    let mut group = c.benchmark_group("ntt");
    for n in [4096usize, 8192] {
        let t = table(n, 60);
        let p = t.modulus().value();
        let mut a: Vec<u64> = (0..n).map(|_| rng.random_range(0..p)).collect();
        group.bench_with_input(BenchmarkId::new("one-core/forward", format!("N={n},60bit")), &n, |b, _| {
            b.iter(|| t.forward(&mut a))
        });
        group.bench_with_input(BenchmarkId::new("one-core/inverse", format!("N={n},60bit")), &n, |b, _| {
            b.iter(|| t.inverse(&mut a))
        });
        let backend = CpuBackend::new(0).unwrap();
        let tables = std::slice::from_ref(&t);
        for limbs in [4usize, 16] {
            let mut polys: Vec<u64> = (0..n * limbs).map(|_| rng.random_range(0..p)).collect();
            let id = format!("N={n},{limbs}x60bit,{}threads", backend.threads());
            group.bench_with_input(BenchmarkId::new("backend/forward", &id), &n, |b, _| {
                b.iter(|| backend.ntt_forward(tables, &mut polys).unwrap())
            });
        }
    }
    group.finish();
}

/// Our serial kernel against SEAL's, timed back to back in this run (`benches/seal_ref.py ntt`).
fn compare_with_seal(_c: &mut Criterion) {
    let Some(rows) = common::seal_reference("ntt") else { return };
    let mut rng = StdRng::seed_from_u64(1);
    println!("\nNTT, one 60-bit limb, one core: secmoe vs SEAL (tenseal), microseconds");
    println!("{:<8} {:<8} {:>10} {:>10} {:>8}", "N", "dir", "secmoe", "SEAL", "ratio");
    for (dir, n, seal) in rows {
        let n: usize = n.trim_start_matches("N=").parse().unwrap();
        let t = table(n, 60);
        let mut a: Vec<u64> = (0..n).map(|_| rng.random_range(0..t.modulus().value())).collect();
        let reps = 4000;
        let start = std::time::Instant::now();
        for _ in 0..reps {
            if dir == "forward" { t.forward(&mut a) } else { t.inverse(&mut a) }
        }
        let ours = start.elapsed().as_secs_f64() / reps as f64 * 1e6;
        println!("{n:<8} {dir:<8} {ours:>10.2} {seal:>10.2} {:>8.2}", ours / seal);
    }
}

criterion_group!(benches, bench_ntt, compare_with_seal);
criterion_main!(benches);
