//! Truncation, carries and the piecewise activations (GeLU, SiLU) over the real transport:
//! Select-Then-Compute and the baseline against the fixed-point reference and the exact
//! functions, on edge values and random inputs in the working range.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::add_share;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use secmoe::ot::OtKind;
use secmoe::proto::Session;
use secmoe::proto::arith::truncate;
use secmoe::proto::compare::{carry, signs};
use secmoe::proto::piecewise::{BATCH, Piecewise, evaluate, evaluate_baseline};
use secmoe::ring::Bits;
use secmoe::ring::Shares;

const SCALE: f64 = (1u64 << 18) as f64;

#[test]
fn truncation_is_floor_or_one_less_even_for_extreme_shares() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(11);
        let mut values: Vec<i64> = vec![0, 1, -1, (1 << 62) - 1, -(1 << 62), 1 << 18, -(1 << 18)];
        values.extend((0..5000).map(|_| rng.random_range(-(1i64 << 62)..(1i64 << 62))));
        let raw: Vec<u64> = values.iter().map(|&v| v as u64).collect();
        // read at 40 fractional bits, so that every f below is a scale the values carry
        let (s, c) = common::share_rows(&raw, (1, raw.len()), 40, &mut rng);
        for f in [1u32, 18, 40] {
            let (ts, tc) = tokio::join!(truncate(&mut os, &s, f), truncate(&mut oc, &c, f));
            let (ts, tc) = (ts.unwrap(), tc.unwrap());
            assert_eq!(ts.frac_bits(), 40 - f);
            let got = common::open_rows(&ts, &tc);
            for (v, g) in values.iter().zip(got) {
                let floor = v >> f;
                assert!(g as i64 == floor || g as i64 == floor - 1, "{v} >> {f}: {}", g as i64);
            }
        }
        // shares mod 2^40 of |Y| < 2^38, lifted to the full ring while truncating by 16
        let small: Vec<i64> = (0..5000).map(|_| rng.random_range(-(1i64 << 38)..(1i64 << 38))).collect();
        let raw: Vec<u64> = small.iter().map(|&v| v as u64 & ((1 << 40) - 1)).collect();
        let (s, c) = add_share(&raw, &mut rng);
        let ring40 = |v| Shares::new((1, small.len()), v, 40, 16).unwrap();
        let (s, c) = (ring40(s), ring40(c));
        let (ts, tc) = tokio::join!(truncate(&mut os, &s, 16), truncate(&mut oc, &c, 16));
        let (ts, tc) = (ts.unwrap(), tc.unwrap());
        assert_eq!((ts.width(), ts.frac_bits()), (64, 0), "lifted to the full ring");
        let got = common::open_rows(&ts, &tc);
        for (v, g) in small.iter().zip(got) {
            assert!(g as i64 == v >> 16 || g as i64 == (v >> 16) - 1, "{v}: {}", g as i64);
        }
    });
}

#[test]
fn carries_are_exact() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(12);
        for bits in [1u32, 4, 9, 13, 64] {
            let m = if bits == 64 { u64::MAX } else { (1 << bits) - 1 };
            let mut x: Vec<u64> = vec![0, m, m, 1, 0];
            let mut y: Vec<u64> = vec![0, 0, 1, m, m];
            x.extend((0..3000).map(|_| rng.random::<u64>() & m));
            y.extend(
                x[5..]
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| if i % 3 == 0 { (m - v + 1) & m } else { rng.random::<u64>() & m }),
            );
            let (a, b) = tokio::join!(carry(&mut os, &x, bits), carry(&mut oc, &y, bits));
            let (a, b) = (a.unwrap(), b.unwrap());
            for i in 0..x.len() {
                let want = (x[i] as u128 + y[i] as u128) >> bits == 1;
                assert_eq!(a.get(i) ^ b.get(i), want, "{bits} bits: {:#x} + {:#x}", x[i], y[i]);
            }
        }
    });
}

/// The two signs of v = x_s + x_c + c mod 2^bits with a shared carry-in c, for every v the
/// bound admits at 6 bits (every split of it, both carries in, either party holding them)
/// and for random values at 20.
#[test]
fn signs_with_a_carry_in_are_exact() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(13);
        for bits in [6u32, 20] {
            let (m, bound) = ((1u64 << bits) - 1, (1i64 << (bits - 1)) - 1);
            let values: Vec<i64> = if bits == 6 {
                (-bound + 1..bound).flat_map(|v| [v; 16]).collect()
            } else {
                (0..3000)
                    .map(|_| rng.random_range(-bound + 1..bound))
                    .chain([-bound + 1, -1, 0, 1, bound - 1])
                    .collect()
            };
            let c: Vec<bool> = (0..values.len()).map(|_| rng.random()).collect();
            let c_s: Vec<bool> = (0..values.len()).map(|_| rng.random()).collect();
            let c_c: Vec<bool> = c.iter().zip(&c_s).map(|(a, b)| a ^ b).collect();
            let x_s: Vec<u64> = (0..values.len()).map(|_| rng.random::<u64>() & m).collect();
            let x_c: Vec<u64> = values
                .iter()
                .zip(&x_s)
                .zip(&c)
                .map(|((&v, &s), &c)| (v as u64).wrapping_sub(s).wrapping_sub(c as u64) & m)
                .collect();
            let (c_s, c_c) = (Bits::from_bools(&c_s), Bits::from_bools(&c_c));
            let (a, b) = tokio::join!(signs(&mut os, &x_s, bits, &c_s), signs(&mut oc, &x_c, bits, &c_c));
            let ((below_s, above_s), (below_c, above_c)) = (a.unwrap(), b.unwrap());
            for (i, &v) in values.iter().enumerate() {
                assert_eq!(below_s.get(i) ^ below_c.get(i), v < 0, "{bits} bits: [{v} < 0]");
                assert_eq!(above_s.get(i) ^ above_c.get(i), v > 0, "{bits} bits: [{v} > 0]");
            }
        }
    });
}

/// Edge values: every breakpoint ± one unit, the ends of the input range, zero; then random
/// values over the range.
fn inputs(f: &Piecewise, rng: &mut StdRng, random: usize) -> Vec<f64> {
    let (lo, hi) = f.input_range();
    let unit = 1.0 / SCALE;
    let mut xs = vec![lo, hi - unit, 0.0, unit, -unit];
    for b in -8..=8 {
        xs.extend([b as f64 - unit, b as f64, b as f64 + unit]);
        // within the 2^-8 past a boundary where the piece may be read one low
        xs.extend((1..8).map(|j| b as f64 + j as f64 / 2048.0));
    }
    xs.retain(|x| (lo..hi).contains(x));
    xs.extend((0..random).map(|_| rng.random_range(lo..hi)));
    // on the fixed-point grid, so that the references see exactly the shared values
    xs.iter().map(|x| (x * SCALE).round() / SCALE).filter(|x| (lo..hi).contains(x)).collect()
}

async fn run(
    os: &mut Session,
    oc: &mut Session,
    f: &Piecewise,
    xs: &[f64],
    baseline: bool,
    rng: &mut StdRng,
) -> Vec<f64> {
    let raw: Vec<u64> = xs.iter().map(|&x| (x * SCALE).round() as i64 as u64).collect();
    let (s, c) = common::share_rows(&raw, (1, raw.len()), 18, rng);
    let (ys, yc) = if baseline {
        tokio::join!(evaluate_baseline(os, f, &s), evaluate_baseline(oc, f, &c))
    } else {
        tokio::join!(evaluate(os, f, &s), evaluate(oc, f, &c))
    };
    // the random OTs prepared for each batch are used up exactly
    assert_eq!((os.ot().prepared(OtKind::Iknp), oc.ot().prepared(OtKind::Iknp)), ((0, 0), (0, 0)));
    common::open_rows(&ys.unwrap(), &yc.unwrap()).iter().map(|&y| y as i64 as f64 / SCALE).collect()
}

#[test]
fn select_then_compute_matches_the_reference_and_the_function() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(13);
        let functions = [
            Piecewise::gelu(),
            Piecewise::silu(),
            Piecewise::sigmoid(),
            Piecewise::clamped_swish(),
            Piecewise::clamped_up(),
        ];
        for f in functions {
            // GeLU over two batches: the second's random OTs generate in the background while the
            // first is evaluated, and join the pool exactly (`run` checks that none are left)
            let random = match f.name() {
                "gelu" => BATCH + 3000,
                "silu" => 20_000,
                _ => 5000,
            };
            let xs = inputs(&f, &mut rng, random);
            let ys = run(&mut os, &mut oc, &f, &xs, false, &mut rng).await;
            for (&x, &y) in xs.iter().zip(&ys) {
                let reference = f.reference((x * SCALE).round() as i64 as u64) as i64 as f64 / SCALE;
                assert!(
                    (y - reference).abs() <= f.protocol_bound(),
                    "{} at {x}: {y} vs reference {reference}",
                    f.name()
                );
                // the paper's accuracy (max 1.2e-2) holds for the protocol's output too
                assert!((y - f.exact(x)).abs() <= 1.2e-2, "{} at {x}: {y} vs {}", f.name(), f.exact(x));
            }
        }
    });
}

#[test]
fn baseline_agrees_with_select_then_compute() {
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(14);
        for f in [Piecewise::gelu(), Piecewise::silu()] {
            let xs = inputs(&f, &mut rng, 2000);
            let base = run(&mut os, &mut oc, &f, &xs, true, &mut rng).await;
            let stc = run(&mut os, &mut oc, &f, &xs, false, &mut rng).await;
            for ((&x, &b), &s) in xs.iter().zip(&base).zip(&stc) {
                assert!((b - f.approx(x)).abs() <= 1e-4, "{} baseline at {x}: {b} vs {}", f.name(), f.approx(x));
                assert!((b - s).abs() <= f.protocol_bound() + 1e-4, "{} at {x}: baseline {b}, STC {s}", f.name());
            }
        }
    });
}

/// The server's view of Select-Then-Compute: the same message sizes and rounds whatever the
/// client's values (here all in one piece, then spread over all pieces).
#[test]
fn select_then_compute_traffic_does_not_depend_on_the_inputs() {
    common::runtime().block_on(async {
        let (c, mut oc, s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(15);
        let f = Piecewise::gelu();
        let mut seen = Vec::new();
        for run_ in 0..3 {
            let xs: Vec<f64> = (0..512).map(|i| if run_ == 1 { 0.5 } else { -9.0 + 18.0 * i as f64 / 512.0 }).collect();
            let before = (c.meter().report().total(), s.meter().report().total());
            run(&mut os, &mut oc, &f, &xs, false, &mut rng).await;
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

#[test]
fn relu_and_swiglu_match_plaintext() {
    use secmoe::proto::piecewise::{relu, swiglu};
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        let mut rng = StdRng::seed_from_u64(16);
        let mut x: Vec<i64> = vec![0, 1, -1, (1 << 40) - 1, -(1 << 40)];
        x.extend((0..3000).map(|_| rng.random_range(-(1i64 << 40)..(1i64 << 40))));
        let raw: Vec<u64> = x.iter().map(|&v| v as u64).collect();
        let (s, c) = common::share_rows(&raw, (1, raw.len()), 0, &mut rng);
        let (a, b) = tokio::join!(relu(&mut os, &s, 42), relu(&mut oc, &c, 42));
        let got = common::open_rows(&a.unwrap(), &b.unwrap());
        assert!(x.iter().zip(&got).all(|(&v, &g)| g as i64 == v.max(0)));

        let f = Piecewise::silu();
        let g: Vec<f64> = (0..2000).map(|_| (rng.random_range(-10.0..10.0) * SCALE).round() / SCALE).collect();
        let u: Vec<f64> = (0..2000).map(|_| rng.random_range(-8.0..8.0)).collect();
        let (gr, ur): (Vec<u64>, Vec<u64>) = g
            .iter()
            .zip(&u)
            .map(|(a, b)| ((a * SCALE).round() as i64 as u64, (b * SCALE).round() as i64 as u64))
            .unzip();
        let (gs, gc) = common::share_rows(&gr, (40, 50), 18, &mut rng);
        let (us, uc) = common::share_rows(&ur, (40, 50), 18, &mut rng);
        let (a, b) = tokio::join!(swiglu(&mut os, &gs, &us), swiglu(&mut oc, &gc, &uc));
        let got = common::open_rows(&a.unwrap(), &b.unwrap());
        for i in 0..g.len() {
            let (y, want) = (got[i] as i64 as f64 / SCALE, f.exact(g[i]) * u[i]);
            assert!((y - want).abs() <= 1.2e-2 * u[i].abs() + 1e-4, "silu({})·{}: {y} vs {want}", g[i], u[i]);
        }
    });
}

/// With saturation on, inputs outside the input range, as far as the reach 2^24, give the
/// function's limit on their side (GeLU and SiLU: 0 below, x above; e^x: 0 below), while inputs
/// inside stay as accurate.
#[test]
fn out_of_range_inputs_saturate_when_the_session_asks() {
    use secmoe::proto::OutOfRange;
    use secmoe::proto::piecewise::SATURATION_REACH;
    common::runtime().block_on(async {
        let (_c, mut oc, _s, mut os) = common::session_pair().await;
        os.set_out_of_range(OutOfRange::Saturate);
        oc.set_out_of_range(OutOfRange::Saturate);
        let mut rng = StdRng::seed_from_u64(17);
        let reach = 2f64.powi(SATURATION_REACH as i32);
        let functions =
            [Piecewise::gelu(), Piecewise::silu(), Piecewise::sigmoid(), Piecewise::exp(), Piecewise::clamped_up()];
        for f in functions {
            let (lo, hi) = f.input_range();
            let unit = 1.0 / SCALE;
            let mut xs: Vec<f64> =
                vec![lo - unit, lo - 1.0, lo - 1000.0, -reach + unit, hi - unit, hi, hi + 0.5, hi + 1e6, reach - unit];
            // magnitudes spread evenly in log scale out to the reach, on both sides
            xs.extend((0..400).map(|i| {
                let x = 2f64.powf(rng.random_range(0.0..SATURATION_REACH as f64));
                let x = if i % 2 == 0 { x } else { -x };
                (x * SCALE).round() / SCALE
            }));
            xs.extend((0..200).map(|_| (rng.random_range(lo..hi) * SCALE).round() / SCALE));
            let raw: Vec<u64> = xs.iter().map(|&x| (x * SCALE).round() as i64 as u64).collect();
            let (s, c) = common::share_rows(&raw, (1, raw.len()), 18, &mut rng);
            let (ys, yc) = tokio::join!(evaluate(&mut os, &f, &s), evaluate(&mut oc, &f, &c));
            let ys = common::open_rows(&ys.unwrap(), &yc.unwrap());
            for (&x, &y) in xs.iter().zip(&ys) {
                let got = y as i64 as f64 / SCALE;
                // inside: the approximation; outside: its tail on that side (0 below; x above for
                // GeLU and SiLU, 1 for σ, 1 + x for e^x)
                let want = f.approx(x);
                assert!((got - want).abs() <= 1.2e-2 + want.abs() * 1e-9, "{} at {x}: {got} vs {want}", f.name());
            }
        }
    });
}
