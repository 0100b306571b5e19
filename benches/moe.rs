//! One MoE layer between two parties over QUIC + TLS on loopback (silent OT, WAN tilings): 16
//! tokens, d = 128, d_ff = 512, GeLU experts, top-1, for E = 8 and 32, by Select-Then-Compute
//! (the weights selected under HE), selecting rows, capacity dispatch and the baseline; bytes
//! and rounds printed after the timings (the selection keys, set up once, not counted). The
//! CLI's `secmoe bench --preset experts` sweeps larger shapes.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use secmoe::backend::{Backend, CpuBackend};
use secmoe::he::HeParams;
use secmoe::moe::{ExpertKind, Method, MoeConfig, MoeWeights, Routing, moe_layer};
use secmoe::net::{CostModel, LinkConfig, PublicParams, loopback};
use secmoe::ot::OtKind;
use secmoe::proto::linear::KeySet;
use secmoe::proto::{HeUse, Session, SessionConfig};
use secmoe::ring::{FixedPoint, Shares, share_matrix};

const TOKENS: usize = 16;

fn bench_moe(c: &mut Criterion) {
    secmoe::ot::configure_extension_threads();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let link = LinkConfig { timeout: Duration::from_secs(600), params: PublicParams::new() };
    let (mut client, mut server) = rt.block_on(loopback(link)).unwrap();
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new(0).unwrap());
    let config = SessionConfig { ot_kind: Some(OtKind::Silent), network: CostModel::WAN, ..Default::default() };
    let (mut sc, mut ss) = rt.block_on(async {
        let (sc, ss) =
            tokio::join!(Session::new(&mut client, be.clone(), config.clone()), Session::new(&mut server, be, config));
        let (mut sc, mut ss) = (sc.unwrap(), ss.unwrap());
        let p = HeParams::linear().unwrap();
        let (a, b) = tokio::join!(sc.setup_he(p.clone(), KeySet::Linear), ss.setup_he(p, KeySet::Linear));
        a.unwrap();
        b.unwrap();
        // capacity dispatch multiplies two shared matrices; Select-Then-Compute selects weights
        for (using, p, keys) in [
            (HeUse::Shared, HeParams::n8192().unwrap(), KeySet::Linear),
            (HeUse::Select, HeParams::select().unwrap(), KeySet::WithRelin),
        ] {
            let (a, b) = tokio::join!(sc.setup_he_for(using, p.clone(), keys), ss.setup_he_for(using, p, keys));
            a.unwrap();
            b.unwrap();
        }
        (sc, ss)
    });
    let f = FixedPoint::default();
    let mut rng = StdRng::seed_from_u64(5);
    let mut costs = Vec::new();
    let mut group = c.benchmark_group("moe");
    group.sample_size(10).measurement_time(Duration::from_secs(40));
    for experts in [8, 32] {
        let cfg = MoeConfig {
            experts,
            top_k: 1,
            d_model: 128,
            d_ff: 512,
            routing: Routing::TopKSoftmax,
            expert: ExpertKind::Gelu,
            shared: None,
            expert_capacity: None,
            groups: None,
            expert_bias: false,
        };
        let w = MoeWeights::random(&cfg, f, 4.0, &mut rng);
        let x: Vec<u64> = (0..TOKENS * cfg.d_model).map(|_| f.encode(rng.random_range(-1.0..1.0)).unwrap()).collect();
        let (xc, xs) =
            share_matrix(&Shares::matrix((TOKENS, cfg.d_model), x, f.frac_bits()).unwrap(), &mut rng).unwrap();
        for method in
            [Method::SelectThenCompute, Method::SelectRows, Method::Capacity { factor: 1.25 }, Method::Baseline]
        {
            let mut run = || {
                rt.block_on(async {
                    let (a, b) = tokio::join!(
                        moe_layer(&mut sc, &cfg, method, &xc, None),
                        moe_layer(&mut ss, &cfg, method, &xs, Some(&w))
                    );
                    a.unwrap();
                    b.unwrap();
                })
            };
            let before = client.meter().report().total();
            run();
            let after = client.meter().report().total();
            let name = format!("{}/E={experts}", method.name());
            costs.push((name.clone(), after.bytes() - before.bytes(), after.rounds - before.rounds));
            group.bench_function(name, |b| b.iter(&mut run));
        }
    }
    group.finish();
    println!("\nper layer of {TOKENS} tokens (both directions):");
    for (name, bytes, rounds) in costs {
        println!("  {name}: {:.2} MB, {rounds} rounds", bytes as f64 / 1e6);
    }
}

criterion_group!(benches, bench_moe);
criterion_main!(benches);
