//! HE operations the protocols use, on the CPU backend.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use secmoe::backend::CpuBackend;
use secmoe::he::{HeParams, PlainOperand, Plaintext, SecretKey};

fn bench_he(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    let mut group = c.benchmark_group("he");
    for (params, threads) in
        [(HeParams::n4096().unwrap(), 1), (HeParams::n8192().unwrap(), 1), (HeParams::n8192().unwrap(), 0)]
    {
        let be = CpuBackend::new(threads).unwrap();
        let sk = SecretKey::generate(&params, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let pt = Plaintext::new(&params, (0..params.degree()).map(|_| rng.random()).collect()).unwrap();
        let w: Vec<u64> = (0..params.degree()).map(|_| rng.random_range(-4096i64..4096) as u64).collect();
        let op = PlainOperand::new(&params, &w, &be).unwrap();
        let ct = sk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let id = format!("{},{}limbs,{}threads", params.name(), params.moduli().len(), be.threads());
        group.bench_function(format!("ct-x-pt (NTT form)/{id}"), |b| {
            b.iter_batched(
                || ct.clone(),
                |mut x| x.mul_plain_assign(&params, &op, &be).unwrap_or_else(|e| panic!("{e}")),
                criterion::BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("encrypt-sk/{id}"), |b| {
            b.iter(|| sk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}")))
        });
        if params.degree() == 8192 {
            let rlk = sk.relin_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
            group.sample_size(10);
            group
                .bench_function(format!("ct-x-ct+relin/{id}"), |b| b.iter(|| ct.mul(&ct, &params, &rlk, &be).unwrap()));
            group.sample_size(100);
        }
    }
    group.finish();
}

/// Ours against SEAL at N = 8192, one thread, timed back to back (`benches/seal_ref.py mul`).
fn compare_with_seal(_c: &mut Criterion) {
    let Some(rows) = common::seal_reference("mul") else { return };
    let mut rng = StdRng::seed_from_u64(2);
    let params = HeParams::n8192().unwrap();
    let be = CpuBackend::new(1).unwrap();
    let sk = SecretKey::generate(&params, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
    let rlk = sk.relin_key(&be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
    let pt = Plaintext::new(&params, (0..params.degree()).map(|_| rng.random()).collect()).unwrap();
    let w: Vec<u64> = (0..params.degree()).map(|_| rng.random_range(-4096i64..4096) as u64).collect();
    let op = PlainOperand::new(&params, &w, &be).unwrap();
    let ct = sk.encrypt(&pt, &be, &mut rng).unwrap_or_else(|e| panic!("{e}"));
    let time = |reps: u32, f: &mut dyn FnMut()| {
        let start = std::time::Instant::now();
        for _ in 0..reps {
            f();
        }
        start.elapsed().as_secs_f64() / reps as f64 * 1e6
    };
    let mut x = ct.clone();
    let ours_pt = time(400, &mut || x.mul_plain_assign(&params, &op, &be).unwrap_or_else(|e| panic!("{e}")));
    let ours_ct = time(10, &mut || drop(ct.mul(&ct, &params, &rlk, &be).unwrap()));
    println!("\nBFV at N=8192, one thread: secmoe (218-bit q) vs SEAL (default 218-bit q), microseconds");
    println!("{:<22} {:>12} {:>12} {:>8}", "operation", "secmoe", "SEAL", "ratio");
    for (op_name, _, seal) in rows {
        let (name, ours) = match op_name.as_str() {
            "ctxpt" => ("ct x pt (NTT form)", ours_pt),
            "ctxct" => ("ct x ct + relinearize", ours_ct),
            _ => continue,
        };
        println!("{name:<22} {ours:>12.1} {seal:>12.1} {:>8.2}", ours / seal);
    }
}

criterion_group!(benches, bench_he, compare_with_seal);
criterion_main!(benches);
