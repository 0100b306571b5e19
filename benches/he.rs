//! HE operations the protocols use, on the CPU backend.

#![allow(missing_docs, clippy::unwrap_used)]

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
        let sk = SecretKey::generate(&params, &be, &mut rng);
        let pt = Plaintext::new(&params, (0..params.degree()).map(|_| rng.random()).collect()).unwrap();
        let w: Vec<u64> = (0..params.degree()).map(|_| rng.random_range(-4096i64..4096) as u64).collect();
        let op = PlainOperand::new(&params, &w, &be).unwrap();
        let ct = sk.encrypt(&pt, &be, &mut rng);
        let id = format!("{},{}limbs,{}threads", params.name(), params.moduli().len(), be.threads());
        group.bench_function(format!("ct-x-pt (NTT form)/{id}"), |b| {
            b.iter_batched(
                || ct.clone(),
                |mut x| x.mul_plain_assign(&params, &op, &be),
                criterion::BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("encrypt-sk/{id}"), |b| b.iter(|| sk.encrypt(&pt, &be, &mut rng)));
        if params.degree() == 8192 {
            let rlk = sk.relin_key(&be, &mut rng);
            group.sample_size(10);
            group
                .bench_function(format!("ct-x-ct+relin/{id}"), |b| b.iter(|| ct.mul(&ct, &params, &rlk, &be).unwrap()));
            group.sample_size(100);
        }
    }
    group.finish();
}

criterion_group!(benches, bench_he);
criterion_main!(benches);
