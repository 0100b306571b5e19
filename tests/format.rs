//! Every protocol computes in the session's fixed-point format: the same functions at fractional
//! bits other than the default 18 match their references at that scale, and a format a protocol
//! cannot run at is refused with an error that names it.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use secmoe::proto::ProtoError;
use secmoe::proto::layernorm::{Affine, layernorm};
use secmoe::proto::piecewise::{Piecewise, evaluate};
use secmoe::proto::softmax::softmax;
use secmoe::ring::{FixedPoint, Shares};

fn format(frac: u32) -> FixedPoint {
    FixedPoint::new(frac).unwrap()
}

fn encode(x: f64, frac: u32) -> u64 {
    (x * (1u64 << frac) as f64).round() as i64 as u64
}

fn decode(y: u64, frac: u32) -> f64 {
    y as i64 as f64 / (1u64 << frac) as f64
}

#[test]
fn gelu_follows_the_reference_at_other_scales() {
    common::runtime().block_on(async {
        let mut rng = StdRng::seed_from_u64(41);
        for frac in [12, 22] {
            let (_c, mut oc, _s, mut os) = common::session_pair_in(format(frac)).await;
            let f = Piecewise::gelu().for_format(format(frac)).unwrap();
            let (lo, hi) = f.input_range();
            let xs: Vec<f64> = (0..3000).map(|_| rng.random_range(lo.max(-9.0)..hi.min(9.0))).collect();
            let raw: Vec<u64> = xs.iter().map(|&x| encode(x, frac)).collect();
            let (s, c) = common::share_rows(&raw, (1, raw.len()), frac, &mut rng);
            let gelu = Piecewise::gelu();
            let (ys, yc) = tokio::join!(evaluate(&mut os, &gelu, &s), evaluate(&mut oc, &gelu, &c));
            let y = common::open_rows(&ys.unwrap(), &yc.unwrap());
            for ((&x, &r), &y) in xs.iter().zip(&raw).zip(&y) {
                let (got, reference) = (decode(y, frac), decode(f.reference(r), frac));
                assert!((got - reference).abs() <= f.protocol_bound(), "f = {frac}, GeLU({x}): {got} vs {reference}");
                assert!(
                    (got - f.exact(x)).abs() <= 1.2e-2 + 2f64.powi(-(frac as i32) + 2),
                    "f = {frac}, GeLU({x}): {got}"
                );
            }
        }
    });
}

#[test]
fn softmax_and_layernorm_hold_their_accuracy_at_other_scales() {
    common::runtime().block_on(async {
        let mut rng = StdRng::seed_from_u64(42);
        for frac in [16, 20] {
            let (_c, mut oc, _s, mut os) = common::session_pair_in(format(frac)).await;
            // softmax, 4 rows of 64
            let len = 64;
            let x: Vec<f64> = (0..4 * len).map(|_| rng.random_range(-6.0..6.0)).collect();
            let raw: Vec<u64> = x.iter().map(|&v| encode(v, frac)).collect();
            let (a, b) = common::share_rows(&raw, (4, len), frac, &mut rng);
            let (ys, yc) = tokio::join!(softmax(&mut os, &a), softmax(&mut oc, &b));
            let y = common::open_rows(&ys.unwrap(), &yc.unwrap());
            for (r, row) in raw.chunks(len).enumerate() {
                let row: Vec<f64> = row.iter().map(|&v| decode(v, frac)).collect();
                let m = row.iter().copied().fold(f64::MIN, f64::max);
                let total: f64 = row.iter().map(|v| (v - m).exp()).sum();
                for (i, v) in row.iter().enumerate() {
                    let (got, want) = (decode(y[r * len + i], frac), (v - m).exp() / total);
                    assert!((got - want).abs() < 3e-3, "f = {frac}, softmax row {r}, {i}: {got} vs {want}");
                }
            }
            // LayerNorm, 3 rows of 256
            let d = 256;
            let x: Vec<f64> = (0..3 * d).map(|_| rng.random_range(-4.0..4.0)).collect();
            let gamma: Vec<f64> = (0..d).map(|_| rng.random_range(-2.0..2.0)).collect();
            let beta: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
            let (g, bt): (Vec<u64>, Vec<u64>) =
                (gamma.iter().map(|&v| encode(v, frac)).collect(), beta.iter().map(|&v| encode(v, frac)).collect());
            let raw: Vec<u64> = x.iter().map(|&v| encode(v, frac)).collect();
            let (a, c) = common::share_rows(&raw, (3, d), frac, &mut rng);
            let eps = encode(1e-5, frac);
            let w = Affine::Weights { gamma: &g, beta: &bt };
            let (ys, yc) = tokio::join!(layernorm(&mut os, &a, w, eps), layernorm(&mut oc, &c, Affine::None, eps));
            let y = common::open_rows(&ys.unwrap(), &yc.unwrap());
            for (r, row) in x.chunks(d).enumerate() {
                let mu = row.iter().sum::<f64>() / d as f64;
                let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / d as f64;
                for i in 0..d {
                    let want = gamma[i] * (row[i] - mu) / (var + 1e-5).sqrt() + beta[i];
                    let got = decode(y[r * d + i], frac);
                    assert!(
                        (got - want).abs() < 3e-3 * (1.0 + want.abs()),
                        "f = {frac}, LayerNorm row {r}, {i}: {got} vs {want}"
                    );
                }
            }
        }
    });
}

#[test]
fn a_format_a_protocol_cannot_run_at_is_refused_by_name() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair_in(format(30)).await;
        let x = Shares::matrix((1, 8), vec![0u64; 8], 30).unwrap();
        let err = evaluate(&mut os, &Piecewise::gelu(), &x).await.unwrap_err();
        assert!(matches!(&err, ProtoError::Input(m) if m.contains("gelu at 30 fractional bits")), "{err}");
        let err = layernorm(&mut oc, &x, Affine::None, 0).await.unwrap_err();
        assert!(matches!(&err, ProtoError::Input(m) if m.contains("at 30 fractional bits")), "{err}");
        // shares at another scale than the session's, or in a smaller ring, are refused by both
        for wrong in [Shares::matrix((1, 8), vec![0; 8], 18).unwrap(), Shares::new((1, 8), vec![0; 8], 40, 30).unwrap()]
        {
            let err = evaluate(&mut os, &Piecewise::gelu(), &wrong).await.unwrap_err().to_string();
            assert!(err.contains(&wrong.describe()) && err.contains("Z_2^64 with 30 fractional bits"), "{err}");
        }
    });
}
