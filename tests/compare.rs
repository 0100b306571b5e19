//! The OT-based building blocks against plaintext, over the real transport: comparison exact on
//! edge values, MSB/DReLU across wrap-around, AND, bit-to-arithmetic and the multiplexers.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use secmoe::ot::OtKind;
use secmoe::proto::boolean::{Triples, and};
use secmoe::proto::compare::{b2a, drelu, greater_than, msb, mux, mux_rows, triples_per_comparison};
use secmoe::ring::{Bits, Shares, mask};

fn xor_share(bits: &[bool], rng: &mut StdRng) -> (Bits, Bits) {
    let r: Vec<bool> = bits.iter().map(|_| rng.random()).collect();
    (bits.iter().zip(&r).map(|(b, r)| b ^ r).collect(), Bits::from_bools(&r))
}

fn open_bits(a: &Bits, b: &Bits) -> Vec<bool> {
    (a ^ b).unwrap().to_bools()
}

#[test]
fn comparison_is_exact_on_edge_values() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(1);
        let edges = [0u64, 1, 2, 15, 16, 17, (1 << 62) - 1, 1 << 62, (1 << 63) - 1, 1 << 63, u64::MAX - 1, u64::MAX];
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for &x in &edges {
            for &y in &edges {
                xs.push(x);
                ys.push(y);
            }
        }
        for _ in 0..1000 {
            let x: u64 = rng.random();
            // neighbours share long prefixes: the equal-prefix path of the tree
            xs.extend([x, x, x]);
            ys.extend([x, x.wrapping_add(1), x ^ 1 << rng.random_range(0..64)]);
        }
        // every block size: 4-bit blocks with IKNP, 3-bit ones (and a narrower top block) with
        // silent OT
        for (kind, bits) in OtKind::ALL.into_iter().flat_map(|k| [64u32, 63, 37, 4, 1].map(|b| (k, b))) {
            os.set_ot_kind(kind);
            oc.set_ot_kind(kind);
            let mask = if bits == 64 { u64::MAX } else { (1 << bits) - 1 };
            let (x, y): (Vec<u64>, Vec<u64>) = xs.iter().zip(&ys).map(|(a, b)| (a & mask, b & mask)).unzip();
            let need = triples_per_comparison(os.ot_kind(), bits) * x.len();
            let (ts, tc) = tokio::join!(Triples::generate(&mut os, need), Triples::generate(&mut oc, need));
            let (mut ts, mut tc) = (ts.unwrap(), tc.unwrap());
            let (gs, gc) =
                tokio::join!(greater_than(&mut os, &mut ts, &x, bits), greater_than(&mut oc, &mut tc, &y, bits));
            let got = open_bits(&gs.unwrap(), &gc.unwrap());
            for i in 0..x.len() {
                assert_eq!(got[i], x[i] > y[i], "{kind}, {bits} bits: {:#x} > {:#x}", x[i], y[i]);
            }
            assert_eq!(ts.remaining(), 0);
        }
    });
}

#[test]
fn msb_and_drelu_hold_across_wrap_around() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(2);
        let mut values: Vec<u64> = [0i64, 1, -1, 2, -2, 1 << 62, -(1 << 62), i64::MAX, i64::MIN, i64::MIN + 1]
            .iter()
            .map(|&v| v as u64)
            .collect();
        values.extend((0..2000).map(|_| rng.random::<u64>()));
        let (sv, cv) = common::share_rows(&values, (1, values.len()), 0, &mut rng);
        // shares that wrap: server share near 2^64 for small values
        let need = triples_per_comparison(os.ot_kind(), 63) * values.len();
        let (ts, tc) = tokio::join!(Triples::generate(&mut os, 2 * need), Triples::generate(&mut oc, 2 * need));
        let (mut ts, mut tc) = (ts.unwrap(), tc.unwrap());
        let (ms, mc) = tokio::join!(msb(&mut os, &mut ts, &sv), msb(&mut oc, &mut tc, &cv));
        let got = open_bits(&ms.unwrap(), &mc.unwrap());
        assert!(values.iter().zip(&got).all(|(v, m)| (v >> 63 == 1) == *m));
        let (ds, dc) = tokio::join!(drelu(&mut os, &mut ts, &sv), drelu(&mut oc, &mut tc, &cv));
        let got = open_bits(&ds.unwrap(), &dc.unwrap());
        assert!(values.iter().zip(&got).all(|(v, d)| (*v as i64 >= 0) == *d));
    });
}

#[test]
fn and_b2a_mux_and_row_mux_match_plaintext() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(3);
        let n = 5000;
        let x: Vec<bool> = (0..n).map(|_| rng.random()).collect();
        let y: Vec<bool> = (0..n).map(|_| rng.random()).collect();
        let ((xs, xc), (ys, yc)) = (xor_share(&x, &mut rng), xor_share(&y, &mut rng));
        let (ts, tc) = tokio::join!(Triples::generate(&mut os, n), Triples::generate(&mut oc, n));
        let (mut ts, mut tc) = (ts.unwrap(), tc.unwrap());
        let (zs, zc) = tokio::join!(and(&mut os, &mut ts, &xs, &ys), and(&mut oc, &mut tc, &xc, &yc));
        let z = open_bits(&zs.unwrap(), &zc.unwrap());
        assert!((0..n).all(|i| z[i] == (x[i] & y[i])));
        let (as_, ac) = tokio::join!(b2a(&mut os, &xs), b2a(&mut oc, &xc));
        let a = common::open_rows(&as_.unwrap(), &ac.unwrap());
        assert!((0..n).all(|i| a[i] == x[i] as u64));
        let v: Vec<u64> = (0..n).map(|_| rng.random()).collect();
        let (vs, vc) = common::share_rows(&v, (1, n), 18, &mut rng);
        let (ms, mc) = tokio::join!(mux(&mut os, &xs, &vs), mux(&mut oc, &xc, &vc));
        let (ms, mc) = (ms.unwrap(), mc.unwrap());
        assert_eq!((ms.shape(), ms.frac_bits()), ((1, n), 18), "the multiplexer keeps shape and scale");
        let m = common::open_rows(&ms, &mc);
        assert!((0..n).all(|i| m[i] == if x[i] { v[i] } else { 0 }));
        // one bit per row of 3 values
        let rows: Vec<u64> = (0..3 * n).map(|_| rng.random()).collect();
        let (rs, rc) = common::share_rows(&rows, (n, 3), 18, &mut rng);
        let (ms, mc) = tokio::join!(mux_rows(&mut os, &xs, &rs), mux_rows(&mut oc, &xc, &rc));
        let m = common::open_rows(&ms.unwrap(), &mc.unwrap());
        assert!((0..3 * n).all(|i| m[i] == if x[i / 3] { rows[i] } else { 0 }));
        // in a narrower ring the corrections are as narrow, and the result stays in that ring
        let narrow = |v: &[u64]| Shares::new((n, 3), v.to_vec(), 20, 0).unwrap();
        let (rs, rc) = (narrow(rs.as_slice()), narrow(rc.as_slice()));
        let (ms, mc) = tokio::join!(mux_rows(&mut os, &xs, &rs), mux_rows(&mut oc, &xc, &rc));
        let (ms, mc) = (ms.unwrap(), mc.unwrap());
        assert_eq!(ms.width(), 20);
        let m = common::open_rows(&ms, &mc);
        assert!((0..3 * n).all(|i| m[i] & mask(20) == if x[i / 3] { rows[i] & mask(20) } else { 0 }));
        // a selector per row that does not fit the rows is this party's input error, named
        let err = mux_rows(&mut os, &xs, &vs).await.unwrap_err().to_string();
        assert!(err.contains(&format!("{n} selector bits")) && err.contains(&vs.describe()), "{err}");
        // running out of triples is an error, not a wrong answer
        let (e1, e2) = tokio::join!(and(&mut os, &mut ts, &xs, &ys), and(&mut oc, &mut tc, &xc, &yc));
        assert!(e1.unwrap_err().to_string().contains("triples left") && e2.is_err());
    });
}

#[test]
fn products_are_exact_in_the_full_ring() {
    use secmoe::proto::arith::mul;
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(4);
        let n = 3000;
        let x: Vec<u64> = (0..n).map(|_| rng.random()).collect();
        let mut y: Vec<u64> = (0..n).map(|_| rng.random()).collect();
        y[..4].copy_from_slice(&[0, 1, u64::MAX, 1 << 63]);
        let ((xs, xc), (ys, yc)) =
            (common::share_rows(&x, (1, n), 0, &mut rng), common::share_rows(&y, (1, n), 0, &mut rng));
        let (zs, zc) = tokio::join!(mul(&mut os, &xs, &ys), mul(&mut oc, &xc, &yc));
        let z = common::open_rows(&zs.unwrap(), &zc.unwrap());
        assert!((0..n).all(|i| z[i] == x[i].wrapping_mul(y[i])));
    });
}

/// What a party sees of the other's inputs: the same number of messages and bytes, whatever
/// the inputs (contents are OT ciphertexts and one-time-padded openings).
#[test]
fn traffic_does_not_depend_on_the_inputs() {
    common::runtime().block_on(async {
        let (c, mut oc, s, mut os) = common::session_pair().await;
        let mut seen = Vec::new();
        // run 0 warms up (the first OTs in each direction add the base OTs); then all-equal
        // inputs, then all-different ones
        for run in [1u64, 0, 1] {
            let x: Vec<u64> =
                (0..512u64).map(|i| if run == 0 { 7 } else { i.wrapping_mul(0x9e37_79b9_7f4a_7c15) }).collect();
            let y: Vec<u64> = (0..512u64).map(|i| if run == 0 { 7 } else { !(i * 31) }).collect();
            let need = triples_per_comparison(os.ot_kind(), 64) * x.len();
            let before = (c.meter().report().total(), s.meter().report().total());
            let (ts, tc) = tokio::join!(Triples::generate(&mut os, need), Triples::generate(&mut oc, need));
            let (mut ts, mut tc) = (ts.unwrap(), tc.unwrap());
            let (gs, gc) = tokio::join!(greater_than(&mut os, &mut ts, &x, 64), greater_than(&mut oc, &mut tc, &y, 64));
            gs.unwrap();
            gc.unwrap();
            let after = (c.meter().report().total(), s.meter().report().total());
            seen.push((
                after.0.bytes_sent - before.0.bytes_sent,
                after.1.bytes_sent - before.1.bytes_sent,
                after.0.rounds - before.0.rounds,
            ));
        }
        assert_eq!(seen[1], seen[2]);
    });
}

/// GeLU's breakpoints −5, −3, −1, 1, 3 in fixed point with 18 fractional bits, all five against
/// each value in one batch, at full width and at a reduced 32-bit width.
#[test]
fn threshold_comparisons_share_one_batch_and_are_exact() {
    use secmoe::proto::compare::at_least;
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(5);
        let thresholds: Vec<i64> = [-5i64, -3, -1, 1, 3].iter().map(|t| t << 18).collect();
        let mut values: Vec<i64> = thresholds.iter().flat_map(|&t| [t - 1, t, t + 1]).collect();
        values.extend([0, 1 << 29, -(1 << 29), (1 << 31) - 1 - (5 << 18)]);
        values.extend((0..3000).map(|_| rng.random_range(-(8i64 << 18)..(8i64 << 18))));
        let raw: Vec<u64> = values.iter().map(|&v| v as u64).collect();
        let (sv, cv) = common::share_rows(&raw, (1, raw.len()), 18, &mut rng);
        let th: Vec<u64> = thresholds.iter().map(|&t| t as u64).collect();
        for (kind, bits) in OtKind::ALL.into_iter().flat_map(|k| [64u32, 32].map(|b| (k, b))) {
            os.set_ot_kind(kind);
            oc.set_ot_kind(kind);
            let need = triples_per_comparison(kind, bits - 1) * values.len() * th.len();
            let (ts, tc) = tokio::join!(Triples::generate(&mut os, need), Triples::generate(&mut oc, need));
            let (mut ts, mut tc) = (ts.unwrap(), tc.unwrap());
            let (a, b) =
                tokio::join!(at_least(&mut os, &mut ts, &sv, &th, bits), at_least(&mut oc, &mut tc, &cv, &th, bits));
            let got = open_bits(&a.unwrap(), &b.unwrap());
            for (i, &v) in values.iter().enumerate() {
                for (k, &t) in thresholds.iter().enumerate() {
                    assert_eq!(got[i * th.len() + k], v >= t, "{kind}, {bits} bits: {v} ≥ {t}");
                }
            }
        }
    });
}
