//! OT throughput and bits on the wire per OT, for each OT kind the engine uses, both parties in
//! this process over QUIC + TLS on loopback. Besides criterion's timings, prints a table of bits
//! sent per OT (both directions together, from the link meter).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use secmoe::backend::CpuBackend;
use secmoe::net::{Link, LinkConfig, loopback};
use secmoe::ot::{Ot, OtKind};

const BATCH: usize = 1 << 20;

struct Parties {
    rt: tokio::runtime::Runtime,
    client: Link,
    server: Link,
    oc: Ot,
    os: Ot,
}

fn parties() -> Parties {
    secmoe::ot::configure_extension_threads();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (client, server, oc, os) = rt.block_on(async {
        let (mut c, mut s) =
            loopback(LinkConfig { timeout: Duration::from_secs(120), ..Default::default() }).await.unwrap();
        let be = || Arc::new(CpuBackend::new(0).unwrap());
        let (oc, os) = tokio::join!(Ot::new(&mut c, be()), Ot::new(&mut s, be()));
        (c, s, oc.unwrap(), os.unwrap())
    });
    Parties { rt, client, server, oc, os }
}

/// One batch of the named operation, client as sender.
async fn run(op: &str, kind: OtKind, oc: &mut Ot, os: &mut Ot) {
    match op {
        "random" => {
            let (a, b) = tokio::join!(oc.random_send(kind, BATCH), os.random_receive(kind, BATCH));
            a.unwrap();
            b.unwrap();
        }
        "cot64" => {
            let deltas = vec![0x1234_5678u64; BATCH];
            let choices = vec![true; BATCH];
            let (a, b) = tokio::join!(oc.cot_send(kind, &deltas, 64), os.cot_receive(kind, &choices, 64));
            a.unwrap();
            b.unwrap();
        }
        "1-of-16x2bit" => {
            let inst = BATCH / 4;
            let msgs = vec![1u64; inst * 16];
            let choices = vec![3u32; inst];
            let (a, b) = tokio::join!(oc.one_of_n_send(kind, 4, 2, &msgs), os.one_of_n_receive(kind, 4, 2, &choices));
            a.unwrap();
            b.unwrap();
        }
        _ => unreachable!(),
    }
}

fn bench_ot(c: &mut Criterion) {
    let mut p = parties();
    let mut table = Vec::new();
    let mut group = c.benchmark_group("ot");
    group.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    for op in ["random", "cot64", "1-of-16x2bit"] {
        for kind in OtKind::ALL {
            // elements: 1-of-16 instances are counted as instances (each uses 4 random OTs)
            let elems = if op == "1-of-16x2bit" { BATCH / 4 } else { BATCH };
            group.throughput(Throughput::Elements(elems as u64));
            // bits per element, measured once on a fresh step
            let before = p.client.meter().report().total().bytes();
            let t0 = Instant::now();
            p.rt.block_on(run(op, kind, &mut p.oc, &mut p.os));
            let secs = t0.elapsed().as_secs_f64();
            // A ping-pong after the batch: every byte of it has then arrived (2 frames of 5 bytes).
            p.rt.block_on(async {
                let (a, b) = tokio::join!(p.client.channel().send(b"s"), p.server.channel().recv());
                a.unwrap();
                b.unwrap();
                let (a, b) = tokio::join!(p.server.channel().send(b"s"), p.client.channel().recv());
                a.unwrap();
                b.unwrap();
            });
            let bytes = p.client.meter().report().total().bytes() - before - 2 * 5;
            table.push((op, kind, elems, bytes as f64 * 8.0 / elems as f64, elems as f64 / secs));
            group.bench_function(format!("{op}/{kind}"), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        p.rt.block_on(run(op, kind, &mut p.oc, &mut p.os));
                    }
                    start.elapsed()
                })
            });
        }
    }
    group.finish();
    println!("\nOT cost per element (batch {BATCH}; both parties on this machine, QUIC loopback):");
    println!("{:<14} {:<8} {:>14} {:>16}", "operation", "kind", "bits/element", "elements/s (1 run)");
    for (op, kind, _n, bits, rate) in table {
        println!("{op:<14} {:<8} {bits:>14.2} {rate:>16.3e}", kind.to_string());
    }
}

criterion_group!(benches, bench_ot);
criterion_main!(benches);
