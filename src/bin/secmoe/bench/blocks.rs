//! `secmoe bench --preset blocks`: every non-linear building block and function at 2^10 and
//! 2^16 values, per value: time, bits on the wire, rounds (both parties here, silent OT, the
//! engines' one-time base OTs excluded). Each result is checked against plaintext.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use secmoe::backend::Backend;
use secmoe::net::CostModel;
use secmoe::ot::OtKind;
use secmoe::proto::arith::{mul, truncate};
use secmoe::proto::boolean::Triples;
use secmoe::proto::compare::{b2a, greater_than, max, mux, non_negative, one_hot, triples_per_comparison};
use secmoe::proto::layernorm::rsqrt;
use secmoe::proto::piecewise::{Piecewise, evaluate, evaluate_baseline, gated, relu};
use secmoe::proto::softmax::reciprocal;
use secmoe::proto::{ProtoResult, Session};
use secmoe::ring::{Bits, Shares};

use super::harness::{Row, reset_peak_rss, row, session_pair};
use super::report::print_row;

const SCALE: f64 = (1u64 << 18) as f64;

/// The blocks, in table order.
pub const BLOCKS: &[&str] = &[
    "compare",
    "sign",
    "b2a",
    "mux",
    "mul",
    "truncate",
    "max",
    "one-hot",
    "relu",
    "gelu-stc",
    "gelu-baseline",
    "silu-stc",
    "swiglu",
    "clamped-swish-stc",
    "clamped-up-stc",
    "exp",
    "reciprocal",
    "rsqrt",
];

type Run<'a> = Pin<Box<dyn Future<Output = ProtoResult<Vec<u64>>> + 'a>>;

/// A typed protocol's run, its shares as raw values.
fn opened<'a>(run: impl Future<Output = ProtoResult<Shares>> + 'a) -> Run<'a> {
    Box::pin(async move { Ok(run.await?.into_vec()) })
}

/// One block's inputs, both parties' runs, and the check of the opened result.
struct Case {
    /// Plaintext inputs (real or raw, per block) and their shares (server, client).
    x: Vec<f64>,
    raw: Vec<u64>,
    /// Second operand where the block takes two.
    raw2: Vec<u64>,
    server2: Vec<u64>,
    client2: Vec<u64>,
    /// The shares as typed rows: x at 18 fractional bits, the second operand as integers.
    typed: [Shares; 4],
}

fn case(n: usize, rng: &mut StdRng, range: (f64, f64)) -> Result<Case> {
    let x: Vec<f64> = (0..n).map(|_| (rng.random_range(range.0..range.1) * SCALE).round() / SCALE).collect();
    let raw: Vec<u64> = x.iter().map(|v| (v * SCALE) as i64 as u64).collect();
    let raw2: Vec<u64> = (0..n).map(|_| rng.random::<u64>()).collect();
    let split = |v: &[u64], rng: &mut StdRng| -> (Vec<u64>, Vec<u64>) {
        let c: Vec<u64> = v.iter().map(|_| rng.random()).collect();
        (v.iter().zip(&c).map(|(a, b)| a.wrapping_sub(*b)).collect(), c)
    };
    let (server, client) = split(&raw, rng);
    let (server2, client2) = split(&raw2, rng);
    let typed = [
        Shares::vector(server, 18)?,
        Shares::vector(client, 18)?,
        Shares::vector(server2.clone(), 0)?,
        Shares::vector(client2.clone(), 0)?,
    ];
    Ok(Case { x, raw, raw2, server2, client2, typed })
}

fn bits_of(v: &[u64]) -> Vec<bool> {
    v.iter().map(|b| b & 1 == 1).collect()
}

/// Runs the `blocks` preset (or one block with `only`).
pub(crate) async fn run(
    backend: Arc<dyn Backend>,
    threads: usize,
    only: Option<&str>,
    rows: &mut Vec<Row>,
) -> Result<()> {
    for &name in BLOCKS {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        for n in [1usize << 10, 1 << 16] {
            let row = measure(name, n, OtKind::Silent, backend.clone(), threads)
                .await
                .with_context(|| format!("{name} at {n}"))?;
            print_row(&row);
            rows.push(row);
        }
    }
    Ok(())
}

async fn measure(name: &str, n: usize, kind: OtKind, backend: Arc<dyn Backend>, threads: usize) -> Result<Row> {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let (c, mut oc, s, mut os) = session_pair(backend, threads, kind, CostModel::WAN).await?;
    let range = match name {
        "reciprocal" => (1.0, 128.0),
        "rsqrt" => (0.01, 1000.0),
        "exp" => (-20.0, 0.0),
        _ => (-8.0, 8.0),
    };
    let k = case(n, &mut rng, range)?;
    let before = c.meter().report().total();
    reset_peak_rss();
    let start = Instant::now();
    let (ys, yc) = run_block(name, &mut os, &mut oc, &k).await?;
    let wall_s = start.elapsed().as_secs_f64();
    let after = c.meter().report().total();
    let opened: Vec<u64> = ys.iter().zip(&yc).map(|(a, b)| a.wrapping_add(*b)).collect();
    let real = |v: u64| v as i64 as f64 / SCALE;
    let close =
        |f: &dyn Fn(f64) -> f64, tol: f64| k.x.iter().zip(&opened).all(|(&x, &y)| (real(y) - f(x)).abs() <= tol);
    let checked = match name {
        "compare" => opened.iter().enumerate().all(|(i, &b)| (b & 1 == 1) == (k.server2[i] > k.client2[i])),
        "sign" => opened.iter().zip(&k.x).all(|(&b, &x)| (b & 1 == 1) == (x >= 0.0)),
        "b2a" => opened.iter().zip(&k.raw2).all(|(&y, &b)| y == b & 1),
        "mux" => opened.iter().enumerate().all(|(i, &y)| y == if k.raw2[i] & 1 == 1 { k.raw[i] } else { 0 }),
        "mul" => opened.iter().enumerate().all(|(i, &y)| y == k.raw[i].wrapping_mul(k.raw2[i])),
        "truncate" => opened.iter().zip(&k.raw).all(|(&y, &x)| (x as i64 >> 18) - (y as i64) <= 1),
        "max" => opened
            .iter()
            .enumerate()
            .all(|(r, &m)| m == *k.raw[r * 128..(r + 1) * 128].iter().max_by_key(|v| **v as i64).unwrap_or(&0)),
        "one-hot" => opened.iter().zip(&k.raw2).all(|(&h, &i)| h == 1 << (i & 7)),
        "relu" => opened.iter().zip(&k.raw).all(|(&y, &x)| y as i64 == (x as i64).max(0)),
        "gelu-stc" | "gelu-baseline" => {
            let gelu = Piecewise::gelu(); // fitted when built: once, not per value
            close(&|x| gelu.exact(x), 1.2e-2)
        }
        "silu-stc" => {
            let silu = Piecewise::silu();
            close(&|x| silu.exact(x), 1.2e-2)
        }
        // SiLU(x_i)·x_(n−1−i): the fit's error times |u| < 8, plus the truncations
        "swiglu" => {
            let silu = Piecewise::silu();
            let up = k.x.iter().rev();
            k.x.iter().zip(up).zip(&opened).all(|((&g, &u), &y)| (real(y) - silu.exact(g) * u).abs() <= 8.0 * 1.2e-2)
        }
        "clamped-swish-stc" => {
            let swish = Piecewise::clamped_swish();
            close(&|x| swish.exact(x), 1.2e-2)
        }
        // exact pieces: the error is the protocol's own (within 2^-8 past ±7 the piece index
        // may be one low, the line x + 1 read a little beyond the clamp)
        "clamped-up-stc" => {
            let up = Piecewise::clamped_up();
            close(&|x| up.exact(x), up.protocol_bound() + 2.0 / SCALE)
        }
        "exp" => close(&f64::exp, 3e-3),
        "reciprocal" => close(&|x| 1.0 / x, 8.0 / SCALE),
        "rsqrt" => close(&|x| 1.0 / x.sqrt(), 1e-3 * 10.0),
        _ => false,
    };
    drop((oc, os));
    let (a, b) = tokio::join!(c.close(), s.close());
    a?;
    b?;
    let bytes = after.bytes() - before.bytes();
    let shape = format!("2^{} values, {kind} OT", n.trailing_zeros());
    let mut row = row(name, shape, threads, wall_s, bytes, after.rounds - before.rounds, checked);
    row.bits_per_op = Some(bytes as f64 * 8.0 / n as f64);
    row.us_per_op = Some(wall_s * 1e6 / n as f64);
    Ok(row)
}

/// Runs one block with both parties; returns (server, client) output shares, bits as 0/1.
async fn run_block(name: &str, os: &mut Session, oc: &mut Session, k: &Case) -> Result<(Vec<u64>, Vec<u64>)> {
    let widen = |v: Bits| v.iter().map(u64::from).collect::<Vec<u64>>();
    let t = &k.typed;
    let (s, c): (Run<'_>, Run<'_>) = match name {
        "compare" => {
            let need = triples_per_comparison(os.ot_kind(), 64) * k.raw.len();
            let (ts, tc) = tokio::join!(Triples::generate(os, need), Triples::generate(oc, need));
            let (mut ts, mut tc) = (ts?, tc?);
            let (a, b) =
                tokio::join!(greater_than(os, &mut ts, &k.server2, 64), greater_than(oc, &mut tc, &k.client2, 64));
            return Ok((widen(a?), widen(b?)));
        }
        "sign" => {
            let (a, b) = tokio::join!(non_negative(os, &t[0], 32), non_negative(oc, &t[1], 32));
            return Ok((widen(a?), widen(b?)));
        }
        "b2a" | "mux" => {
            // XOR shares of the low bit of raw2: the server holds it, the client zeros
            let (bs, bc) = (Bits::from_bools(&bits_of(&k.raw2)), Bits::zeros(k.raw2.len()));
            let (a, b) = if name == "b2a" {
                tokio::join!(b2a(os, &bs), b2a(oc, &bc))
            } else {
                tokio::join!(mux(os, &bs, &t[0]), mux(oc, &bc, &t[1]))
            };
            return Ok((a?.into_vec(), b?.into_vec()));
        }
        "mul" => (opened(mul(os, &t[0], &t[2])), opened(mul(oc, &t[1], &t[3]))),
        "truncate" => (opened(truncate(os, &t[0], 18)), opened(truncate(oc, &t[1], 18))),
        "max" => {
            let rows = (k.raw.len() / 128, 128);
            let (xs, xc) = (t[0].clone().reshape(rows)?, t[1].clone().reshape(rows)?);
            let (a, b) = tokio::join!(max(os, &xs, 26), max(oc, &xc, 26));
            return Ok((a?.0.into_vec(), b?.0.into_vec()));
        }
        "one-hot" => {
            let (index, zeros) = (Shares::vector(k.raw2.clone(), 0)?, Shares::vector(vec![0; k.raw2.len()], 0)?);
            let (a, b) = tokio::join!(one_hot(os, &index, 8), one_hot(oc, &zeros, 8));
            let pack = |v: Vec<Bits>| v.iter().map(|h| h.words()[0]).collect::<Vec<u64>>();
            let (a, b) = (pack(a?), pack(b?));
            // XOR shares: open by XOR, returned so that the caller's sum is the XOR
            return Ok((a.iter().zip(&b).map(|(x, y)| x ^ y).collect(), vec![0; b.len()]));
        }
        "relu" => (opened(relu(os, &t[0], 32)), opened(relu(oc, &t[1], 32))),
        "swiglu" => {
            // the up branch: the inputs in reverse order (both parties reverse their shares)
            let reversed = |v: &Shares| Shares::vector(v.as_slice().iter().rev().copied().collect(), 18);
            let (us, uc) = (reversed(&t[0])?, reversed(&t[1])?);
            let silu = Piecewise::silu();
            let (a, b) = tokio::join!(gated(os, &silu, &t[0], &us), gated(oc, &silu, &t[1], &uc));
            return Ok((a?.into_vec(), b?.into_vec()));
        }
        "gelu-stc" | "silu-stc" | "clamped-swish-stc" | "clamped-up-stc" | "exp" | "gelu-baseline" => {
            let f = match name {
                "silu-stc" => Piecewise::silu(),
                "clamped-swish-stc" => Piecewise::clamped_swish(),
                "clamped-up-stc" => Piecewise::clamped_up(),
                "exp" => Piecewise::exp(),
                _ => Piecewise::gelu(),
            };
            let (a, b) = if name == "gelu-baseline" {
                tokio::join!(evaluate_baseline(os, &f, &t[0]), evaluate_baseline(oc, &f, &t[1]))
            } else {
                tokio::join!(evaluate(os, &f, &t[0]), evaluate(oc, &f, &t[1]))
            };
            return Ok((a?.into_vec(), b?.into_vec()));
        }
        "reciprocal" => (opened(reciprocal(os, &t[0])), opened(reciprocal(oc, &t[1]))),
        "rsqrt" => (opened(rsqrt(os, &t[0])), opened(rsqrt(oc, &t[1]))),
        other => anyhow::bail!("unknown block `{other}`"),
    };
    let (a, b) = tokio::join!(s, c);
    Ok((a?, b?))
}
