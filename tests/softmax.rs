//! Max/argmax, one-hot, row products, reciprocal and softmax over the real transport against
//! plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::add_share;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use secmoe::ot::OtKind;
use secmoe::proto::arith::mul_rows;
use secmoe::proto::compare::{max, one_hot};
use secmoe::proto::softmax::{reciprocal, reciprocal_wide, softmax};
use secmoe::ring::Shares;

const SCALE: f64 = (1u64 << 18) as f64;

fn fixed(x: f64) -> u64 {
    (x * SCALE).round() as i64 as u64
}

#[test]
fn max_and_argmax_are_exact_and_ties_go_to_the_first() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(21);
        for len in [1usize, 2, 5, 128] {
            let rows = 40;
            let mut x: Vec<i64> = (0..rows * len).map(|_| rng.random_range(-(60i64 << 18)..(60i64 << 18))).collect();
            // a row of equal values, and rows whose maximum is first, last, negative
            x[..len].iter_mut().for_each(|v| *v = -3);
            if len > 1 {
                x[len] = 61 << 18;
                x[3 * len - 1] = 62 << 18;
            }
            let raw: Vec<u64> = x.iter().map(|&v| v as u64).collect();
            let (s, c) = common::share_rows(&raw, (rows, len), 18, &mut rng);
            let (ms, mc) = tokio::join!(max(&mut os, &s, 26), max(&mut oc, &c, 26));
            let ((ms, is), (mc, ic)) = (ms.unwrap(), mc.unwrap());
            // each level's random OTs were prepared exactly
            assert_eq!((os.ot().prepared(OtKind::Iknp), oc.ot().prepared(OtKind::Iknp)), ((0, 0), (0, 0)));
            assert_eq!((ms.shape(), ms.frac_bits(), is.frac_bits()), ((rows, 1), 18, 0));
            let (m, idx) = (common::open_rows(&ms, &mc), common::open_rows(&is, &ic));
            for r in 0..rows {
                let row = &x[r * len..(r + 1) * len];
                let want = *row.iter().max().unwrap();
                assert_eq!(m[r] as i64, want, "row {r} of {len}");
                let first = row.iter().position(|&v| v == want).unwrap();
                assert_eq!(idx[r] as usize, first, "argmax of row {r} of {len}: the first maximum wins");
            }
            // the one-hot vector of the argmax
            if (2..=64).contains(&len) {
                let (hs, hc) = tokio::join!(one_hot(&mut os, &is, len), one_hot(&mut oc, &ic, len));
                let (hs, hc) = (hs.unwrap(), hc.unwrap());
                for r in 0..rows {
                    let bits = (&hs[r] ^ &hc[r]).unwrap().to_bools();
                    assert!(bits.iter().enumerate().all(|(i, &b)| b == (i as u64 == idx[r])), "one-hot of row {r}");
                }
            }
        }
    });
}

/// The one-hot vector of an index whose server share sits at the top of the ring (the shares
/// wrap around 2^64): the table lookup works mod 2^⌈log2 size⌉ and never overflows.
#[test]
fn one_hot_of_an_index_shared_across_the_wrap_around() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let size = 40;
        let index: Vec<u64> = (0..size as u64).collect();
        let server: Vec<u64> = index.iter().map(|&i| u64::MAX - i).collect();
        let client: Vec<u64> = index.iter().zip(&server).map(|(i, s)| i.wrapping_sub(*s)).collect();
        let (server, client) = (Shares::vector(server, 0).unwrap(), Shares::vector(client, 0).unwrap());
        let (hs, hc) = tokio::join!(one_hot(&mut os, &server, size), one_hot(&mut oc, &client, size));
        let (hs, hc) = (hs.unwrap(), hc.unwrap());
        for (i, (s, c)) in hs.iter().zip(&hc).enumerate() {
            let bits = (s ^ c).unwrap().to_bools();
            assert!(bits.iter().enumerate().all(|(j, &b)| b == (j == i)), "one-hot of {i}");
        }
    });
}

#[test]
fn row_products_are_exact_mod_the_ring() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(22);
        let (rows, len, bits) = (7, 33, 40u32);
        let x: Vec<u64> = (0..rows * len).map(|_| rng.random()).collect();
        let r: Vec<u64> = (0..rows).map(|_| rng.random()).collect();
        let ((xs, xc), (rs, rc)) = (add_share(&x, &mut rng), add_share(&r, &mut rng));
        let ring = |v, cols| Shares::new((rows, cols), v, bits, 0).unwrap();
        let ((xs, xc), (rs, rc)) = ((ring(xs, len), ring(xc, len)), (ring(rs, 1), ring(rc, 1)));
        let (a, b) = tokio::join!(mul_rows(&mut os, &xs, &rs), mul_rows(&mut oc, &xc, &rc));
        let got = common::open_rows(&a.unwrap(), &b.unwrap());
        for i in 0..x.len() {
            assert_eq!(got[i] & ((1 << bits) - 1), x[i].wrapping_mul(r[i / len]) & ((1 << bits) - 1));
        }
    });
}

#[test]
fn reciprocal_is_accurate_on_its_range() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(23);
        let mut s: Vec<f64> = vec![1.0, 1.5, 2.0, 127.999, 128.0];
        s.extend((0..500).map(|_| rng.random_range(1.0..128.0)));
        let raw: Vec<u64> = s.iter().map(|&v| fixed(v)).collect();
        let (a, b) = common::share_rows(&raw, (1, raw.len()), 18, &mut rng);
        let (ys, yc) = tokio::join!(reciprocal(&mut os, &a), reciprocal(&mut oc, &b));
        let y = common::open_rows(&ys.unwrap(), &yc.unwrap());
        for (v, y) in s.iter().zip(y) {
            let got = y as i64 as f64 / SCALE;
            assert!((got - 1.0 / v).abs() < 4.0 / SCALE, "1/{v}: {got}");
        }
    });
}

/// The wide reciprocal on [1, 2048], across the switch between its two starts at 64.
#[test]
fn wide_reciprocal_is_accurate_up_to_2048() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(25);
        let mut s: Vec<f64> = vec![1.0, 63.99, 64.0, 64.01, 128.0, 1000.0, 2048.0];
        s.extend((0..300).map(|_| rng.random_range(1.0..2048.0)));
        let raw: Vec<u64> = s.iter().map(|&v| fixed(v)).collect();
        let (a, b) = common::share_rows(&raw, (1, raw.len()), 18, &mut rng);
        let (ys, yc) = tokio::join!(reciprocal_wide(&mut os, &a), reciprocal_wide(&mut oc, &b));
        let y = common::open_rows(&ys.unwrap(), &yc.unwrap());
        for (v, y) in s.iter().zip(y) {
            let got = y as i64 as f64 / SCALE;
            assert!((got - 1.0 / v).abs() < 4.0 / SCALE, "1/{v}: {got}");
        }
    });
}

#[test]
fn softmax_matches_the_real_function() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(24);
        for (len, spread) in [(128usize, 8.0), (16, 31.0), (1, 1.0), (600, 3.0)] {
            let rows = 12;
            let x: Vec<f64> =
                (0..rows * len).map(|_| (rng.random_range(-spread..spread) * SCALE).round() / SCALE).collect();
            let raw: Vec<u64> = x.iter().map(|&v| fixed(v)).collect();
            let (a, b) = common::share_rows(&raw, (rows, len), 18, &mut rng);
            let (ys, yc) = tokio::join!(softmax(&mut os, &a), softmax(&mut oc, &b));
            let y = common::open_rows(&ys.unwrap(), &yc.unwrap());
            for r in 0..rows {
                let row = &x[r * len..(r + 1) * len];
                let m = row.iter().copied().fold(f64::MIN, f64::max);
                let total: f64 = row.iter().map(|v| (v - m).exp()).sum();
                for i in 0..len {
                    let want = (row[i] - m).exp() / total;
                    let got = y[r * len + i] as i64 as f64 / SCALE;
                    assert!((got - want).abs() < 3e-3, "row {r} of {len}, {i}: {got} vs {want}");
                }
            }
        }
    });
}

#[test]
fn rsqrt_is_accurate_over_its_range() {
    use secmoe::proto::layernorm::rsqrt;
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(25);
        let mut v: Vec<f64> = vec![2f64.powi(-14), 0.25, 1.0, 3.999, 4.0, 1000.0, 65535.0];
        v.extend((0..300).map(|_| 2f64.powf(rng.random_range(-14.0..16.0))));
        let raw: Vec<u64> = v.iter().map(|&x| fixed(x)).collect();
        let (a, b) = common::share_rows(&raw, (1, raw.len()), 18, &mut rng);
        let (ys, yc) = tokio::join!(rsqrt(&mut os, &a), rsqrt(&mut oc, &b));
        let y = common::open_rows(&ys.unwrap(), &yc.unwrap());
        for (x, y) in v.iter().zip(y) {
            let (got, want) = (y as i64 as f64 / SCALE, 1.0 / (fixed(*x) as f64 / SCALE).sqrt());
            assert!((got - want).abs() <= 1e-3 * want + 8.0 / SCALE, "1/√{x}: {got} vs {want}");
        }
    });
}

/// Rows of BERT's width and of the widest the norms take (8192: Mixtral's 4096 and
/// DeepSeek-V3's 7168 below it), with the rows at the edges of the stated ranges: all of a row's
/// deviation in one value (|normalized| = √d, the largest, times |γ| near 16) and |x − μ| near
/// 64 everywhere (the largest sum of squares).
#[test]
fn layernorm_and_rmsnorm_match_the_real_functions() {
    use secmoe::proto::layernorm::{Affine, MAX_WIDTH, layernorm, rmsnorm};
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(26);
        for (rows, d) in [(6, 768), (4, MAX_WIDTH)] {
            let mut x: Vec<f64> =
                (0..rows * d).map(|i| rng.random_range(-3.0..3.0) * (1.0 + (i / d) as f64) + (i / d) as f64).collect();
            x[..d].iter_mut().enumerate().for_each(|(i, v)| *v = if i == 5 { 63.0 } else { 0.0 });
            x[d..2 * d].iter_mut().enumerate().for_each(|(i, v)| *v = if i % 2 == 0 { 63.5 } else { -63.5 });
            let mut gamma: Vec<f64> = (0..d).map(|_| rng.random_range(-2.0..2.0)).collect();
            gamma[5] = -15.9;
            let beta: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
            let eps = 1e-5;
            let raw: Vec<u64> = x.iter().map(|&v| fixed(v)).collect();
            let (g, b): (Vec<u64>, Vec<u64>) =
                (gamma.iter().map(|&v| fixed(v)).collect(), beta.iter().map(|&v| fixed(v)).collect());
            let (a, c) = common::share_rows(&raw, (rows, d), 18, &mut rng);
            for centre in [true, false] {
                let w = Affine::Weights { gamma: &g, beta: &b };
                let (ys, yc) = if centre {
                    tokio::join!(
                        layernorm(&mut os, &a, w, fixed(eps)),
                        layernorm(&mut oc, &c, Affine::None, fixed(eps))
                    )
                } else {
                    tokio::join!(rmsnorm(&mut os, &a, w, fixed(eps)), rmsnorm(&mut oc, &c, Affine::None, fixed(eps)))
                };
                let y = common::open_rows(&ys.unwrap(), &yc.unwrap());
                for r in 0..rows {
                    let row = &x[r * d..(r + 1) * d];
                    let mu = if centre { row.iter().sum::<f64>() / d as f64 } else { 0.0 };
                    let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / d as f64;
                    for i in 0..d {
                        let want = gamma[i] * (row[i] - mu) / (var + eps).sqrt() + if centre { beta[i] } else { 0.0 };
                        let got = y[r * d + i] as i64 as f64 / SCALE;
                        assert!(
                            (got - want).abs() < 2e-3 * (1.0 + want.abs()),
                            "width {d}, centre {centre}, row {r}, {i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    });
}

/// A wider input range (|x − μ| < 2^14) takes rows with a "massive activation" (one value in
/// the thousands, as LLMs' residual streams have in a few channels) next to rows of small
/// variance (2^-12) in the same call, LayerNorm and RMSNorm, to the same relative accuracy; a
/// range outside 2^6..=2^14 is refused.
#[test]
fn a_wider_norm_range_takes_massive_activations() {
    use secmoe::proto::layernorm::{Affine, NormRange, layernorm, rmsnorm};
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(28);
        let (rows, d) = (4, 4096);
        let mut x: Vec<f64> = (0..rows * d).map(|_| rng.random_range(-2.0..2.0)).collect();
        x[7] = 16000.0;
        x[d + 100] = -9000.5;
        x[2 * d..3 * d].iter_mut().for_each(|v| *v *= 2f64.powi(-6) * 3f64.sqrt() / 2.0);
        let gamma: Vec<f64> = (0..d).map(|_| rng.random_range(-2.0..2.0)).collect();
        let beta: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let raw: Vec<u64> = x.iter().map(|&v| fixed(v)).collect();
        let (g, b): (Vec<u64>, Vec<u64>) =
            (gamma.iter().map(|&v| fixed(v)).collect(), beta.iter().map(|&v| fixed(v)).collect());
        let (a, c) = common::share_rows(&raw, (rows, d), 18, &mut rng);
        let range = NormRange::new(14).unwrap();
        os.set_norm_range(range);
        oc.set_norm_range(range);
        for centre in [true, false] {
            let w = Affine::Weights { gamma: &g, beta: &b };
            let (ys, yc) = if centre {
                tokio::join!(layernorm(&mut os, &a, w, 0), layernorm(&mut oc, &c, Affine::None, 0))
            } else {
                tokio::join!(rmsnorm(&mut os, &a, w, 0), rmsnorm(&mut oc, &c, Affine::None, 0))
            };
            let y = common::open_rows(&ys.unwrap(), &yc.unwrap());
            for r in 0..rows {
                let row: Vec<f64> = x[r * d..(r + 1) * d].iter().map(|&v| fixed(v) as i64 as f64 / SCALE).collect();
                let mu = if centre { row.iter().sum::<f64>() / d as f64 } else { 0.0 };
                let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / d as f64;
                for i in 0..d {
                    let want = gamma[i] * (row[i] - mu) / var.sqrt() + if centre { beta[i] } else { 0.0 };
                    let got = y[r * d + i] as i64 as f64 / SCALE;
                    assert!(
                        (got - want).abs() < 2e-3 * (1.0 + want.abs()),
                        "centre {centre}, row {r} (σ² {var:.3e}), {i}: {got} vs {want}"
                    );
                }
            }
        }
        for bits in [5, 15] {
            let err = NormRange::new(bits).unwrap_err().to_string();
            assert!(err.contains(&format!("2^{bits}")) && err.contains("2^6..=2^14"), "{err}");
        }
    });
}

/// One-hot vectors beyond 64 entries (MoE routing over up to 2048 experts): two lookups and an
/// outer product, exact for every index, shares anywhere in the ring; larger sizes are refused.
#[test]
fn one_hot_vectors_of_up_to_2048_entries() {
    use secmoe::proto::compare::MAX_ONE_HOT;
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(27);
        for size in [65usize, 100, 128, 1000, 1024, MAX_ONE_HOT] {
            let mut index: Vec<u64> = (0..40).map(|_| rng.random_range(0..size as u64)).collect();
            index.extend([0, size as u64 - 1, 31, 32, 33]);
            let (server, client) = common::share_rows(&index, (1, index.len()), 0, &mut rng);
            let (hs, hc) = tokio::join!(one_hot(&mut os, &server, size), one_hot(&mut oc, &client, size));
            let (hs, hc) = (hs.unwrap(), hc.unwrap());
            for (t, &i) in index.iter().enumerate() {
                assert_eq!(hs[t].len(), size);
                let ones: Vec<usize> = (0..size).filter(|&j| hs[t].get(j) ^ hc[t].get(j)).collect();
                assert_eq!(ones, [i as usize], "one-hot of {i} among {size}");
            }
        }
        let too_many =
            one_hot(&mut os, &Shares::vector(vec![0], 0).unwrap(), MAX_ONE_HOT + 1).await.unwrap_err().to_string();
        assert!(too_many.contains("2049 entries"), "{too_many}");
    });
}
