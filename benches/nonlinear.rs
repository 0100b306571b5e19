//! The non-linear protocols between two parties over QUIC + TLS on loopback (silent OT): GeLU by
//! Select-Then-Compute and by the baseline, softmax rows and the 64-bit comparison, per batch of
//! 2^16 values (softmax: 4 rows of 128 × 128); bytes and rounds printed after the timings.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use secmoe::backend::{Backend, CpuBackend};
use secmoe::net::{LinkConfig, PublicParams, loopback};
use secmoe::ot::OtKind;
use secmoe::proto::piecewise::{Piecewise, evaluate, evaluate_baseline};
use secmoe::proto::softmax::softmax;
use secmoe::proto::{Session, SessionConfig};
use secmoe::ring::{Shares, share_matrix};

const N: usize = 1 << 16;

fn bench_nonlinear(c: &mut Criterion) {
    secmoe::ot::configure_extension_threads();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let cfg = LinkConfig { timeout: Duration::from_secs(600), params: PublicParams::new() };
    let (mut client, mut server) = rt.block_on(loopback(cfg)).unwrap();
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new(0).unwrap());
    let config = SessionConfig { ot_kind: Some(OtKind::Silent), seed: None, ..Default::default() };
    let (oc, os) = rt.block_on(async {
        tokio::join!(Session::new(&mut client, be.clone(), config.clone()), Session::new(&mut server, be, config))
    });
    let (mut oc, mut os) = (oc.unwrap(), os.unwrap());
    let mut rng = StdRng::seed_from_u64(3);
    let x: Vec<u64> = (0..N).map(|_| (rng.random_range(-8.0..8.0) * (1u64 << 18) as f64) as i64 as u64).collect();
    let (xc, xs) = share_matrix(&Shares::matrix((N / 128, 128), x, 18).unwrap(), &mut rng).unwrap();
    let gelu = Piecewise::gelu();
    let mut costs = Vec::new();
    let mut group = c.benchmark_group("nonlinear");
    group.sample_size(10).measurement_time(Duration::from_secs(30));
    for name in ["gelu-stc", "gelu-baseline", "softmax"] {
        let run = |os: &mut Session, oc: &mut Session| {
            rt.block_on(async {
                let (a, b) = match name {
                    "gelu-stc" => tokio::join!(evaluate(os, &gelu, &xs), evaluate(oc, &gelu, &xc)),
                    "gelu-baseline" => {
                        tokio::join!(evaluate_baseline(os, &gelu, &xs), evaluate_baseline(oc, &gelu, &xc))
                    }
                    _ => tokio::join!(softmax(os, &xs), softmax(oc, &xc)),
                };
                a.unwrap();
                b.unwrap();
            })
        };
        let before = client.meter().report().total();
        run(&mut os, &mut oc);
        let after = client.meter().report().total();
        costs.push((name, after.bytes() - before.bytes(), after.rounds - before.rounds));
        group.bench_function(name, |b| b.iter(|| run(&mut os, &mut oc)));
    }
    group.finish();
    println!("\nper batch of 2^16 values (both directions):");
    for (name, bytes, rounds) in costs {
        println!(
            "  {name}: {:.2} MB ({:.0} bits per value), {rounds} rounds",
            bytes as f64 / 1e6,
            bytes as f64 * 8.0 / N as f64
        );
    }
}

criterion_group!(benches, bench_nonlinear);
criterion_main!(benches);
