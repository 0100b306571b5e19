//! The HE matrix-product protocol between two parties over QUIC + TLS on loopback: wall time
//! per product, and the bytes and rounds of each, printed after the timings.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use secmoe::backend::{Backend, CpuBackend};
use secmoe::he::HeParams;
use secmoe::he::matmul::tiling_for;
use secmoe::he::tiling::MatShape;
use secmoe::net::{Link, LinkConfig, PublicParams, loopback};
use secmoe::proto::linear::{KeySet, linear};
use secmoe::proto::{Session, SessionConfig};
use secmoe::ring::share_matrix;
use secmoe::ring::{Shares, Weights};

struct Pair {
    client: Link,
    /// Kept open for the server's session.
    _server: Link,
    sc: Session,
    ss: Session,
}

async fn sessions(params: Arc<HeParams>) -> Pair {
    let cfg = LinkConfig { timeout: Duration::from_secs(600), params: PublicParams::new() };
    let (mut client, mut server) = loopback(cfg).await.unwrap();
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new(0).unwrap());
    let config = SessionConfig::default();
    let (sc, ss) =
        tokio::join!(Session::new(&mut client, be.clone(), config.clone()), Session::new(&mut server, be, config));
    let (mut sc, mut ss) = (sc.unwrap(), ss.unwrap());
    let (a, b) = tokio::join!(sc.setup_he(params.clone(), KeySet::Linear), ss.setup_he(params, KeySet::Linear));
    a.unwrap();
    b.unwrap();
    Pair { client, _server: server, sc, ss }
}

fn bench_linear(c: &mut Criterion) {
    secmoe::ot::configure_extension_threads();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let params = HeParams::linear().unwrap();
    let mut s = rt.block_on(sessions(params.clone()));
    let mut rng = StdRng::seed_from_u64(2);
    let mut costs = Vec::new();
    let mut group = c.benchmark_group("linear");
    group.sample_size(10).measurement_time(Duration::from_secs(60));
    for shape in [MatShape { n: 128, d: 768, m: 3072 }, MatShape { n: 128, d: 3072, m: 768 }] {
        let x = Shares::matrix((shape.n, shape.d), (0..shape.n * shape.d).map(|_| rng.random()).collect(), 0).unwrap();
        let w: Vec<u64> = (0..shape.d * shape.m).map(|_| rng.random_range(-(1i64 << 18)..1 << 18) as u64).collect();
        let (xc, xs) = share_matrix(&x, &mut rng).unwrap();
        let run = |s: &mut Pair| {
            rt.block_on(async {
                let weights = Weights::bounded((shape.d, shape.m), &w, 20).unwrap();
                let (yc, ys) =
                    tokio::join!(linear(&mut s.sc, shape, &xc, None), linear(&mut s.ss, shape, &xs, Some(weights)));
                yc.unwrap();
                ys.unwrap();
            })
        };
        let before = s.client.meter().report().total();
        run(&mut s);
        let after = s.client.meter().report().total();
        costs.push((shape, after.bytes() - before.bytes(), after.rounds - before.rounds));
        group.bench_function(format!("{shape}"), |b| b.iter(|| run(&mut s)));
    }
    group.finish();
    println!("\nper product (both directions), tiling chosen for WAN:");
    for (shape, bytes, rounds) in costs {
        let threads = match s.sc.he_for(secmoe::proto::HeUse::Linear) {
            Some(secmoe::proto::HeKeys::Client(hc)) => hc.server_threads(),
            _ => unreachable!("the client's session holds the client's keys"),
        };
        let t = tiling_for(&params, shape, &secmoe::net::CostModel::WAN, threads, 64);
        println!(
            "  {shape}: {:.2} MB, {rounds} rounds (tiles {}×{}×{}, {} results per ciphertext)",
            bytes as f64 / 1e6,
            t.n_w,
            t.d_w,
            t.m_w,
            1 << t.pack
        );
    }
}

criterion_group!(benches, bench_linear);
criterion_main!(benches);
