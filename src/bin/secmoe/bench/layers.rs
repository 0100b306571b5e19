//! `secmoe bench --preset layers`: the layers' protocols at the sizes of the targets — the HE
//! keys, linear layers and a shared product, comparisons, GeLU/SiLU (Select-Then-Compute and the
//! baseline), LayerNorm, softmax — each result checked whole against the plaintext.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use secmoe::backend::Backend;
use secmoe::he::HeParams;
use secmoe::he::tiling::MatShape;
use secmoe::net::CostModel;
use secmoe::ot::OtKind;
use secmoe::proto::boolean::Triples;
use secmoe::proto::compare::{at_least, greater_than, triples_per_comparison};
use secmoe::proto::layernorm::{Affine, NormRange, layernorm};
use secmoe::proto::linear::{KeySet, linear, matmul_shared};
use secmoe::proto::piecewise::{Piecewise, evaluate, evaluate_baseline};
use secmoe::proto::softmax::softmax;
use secmoe::proto::{HeKeys, HeUse, OutOfRange};
use secmoe::ring::{Shares, Weights, open, share_matrix};

use super::harness::{Row, reset_peak_rss, row, session_pair};
use super::report::{print_row, print_row_with_steps};

/// The names of the preset's row groups, in the order they run (`--only NAME` runs one group).
pub(crate) const ROWS: &[&str] =
    &["he-setup", "linear", "matmul-shared", "compare", "breakpoints", "gelu", "silu", "layernorm", "softmax"];

/// Runs the preset's rows (or those named `only`), printing each and adding it to `rows`.
pub(crate) async fn run(
    backend: Arc<dyn Backend>,
    threads: usize,
    only: Option<&str>,
    tune: CostModel,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let cases: Vec<(&str, MatShape)> = vec![
        ("he-setup", MatShape { n: 0, d: 0, m: 0 }),
        ("linear", MatShape { n: 128, d: 768, m: 3072 }),
        ("linear", MatShape { n: 128, d: 3072, m: 768 }),
        ("matmul-shared", MatShape { n: 128, d: 64, m: 128 }),
    ];
    let compares = [OtKind::Iknp, OtKind::Silent];
    for (name, shape) in cases {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let row =
            measure(name, shape, backend.clone(), threads, tune).await.with_context(|| format!("{name} {shape}"))?;
        print_row(&row);
        rows.push(row);
    }
    for (name, kind) in ["compare", "breakpoints"].into_iter().flat_map(|n| compares.map(|k| (n, k))) {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let row =
            measure_compare(name, kind, backend.clone(), threads).await.with_context(|| format!("{name}, {kind}"))?;
        print_row(&row);
        rows.push(row);
    }
    // Select-Then-Compute with either OT (silent: fewest bytes; IKNP: least compute), the
    // baseline with silent OT; GeLU also saturating out-of-range inputs (the cost of that option)
    let methods = [("stc", OtKind::Silent), ("stc", OtKind::Iknp), ("baseline", OtKind::Silent)];
    for (name, (method, kind)) in ["gelu", "silu"].into_iter().flat_map(|n| methods.map(|m| (n, m))) {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let row = measure_activation(name, method, kind, backend.clone(), threads)
            .await
            .with_context(|| format!("{name}, {method}"))?;
        print_row(&row);
        rows.push(row);
    }
    if only.is_none_or(|o| o == "gelu") {
        let row = measure_activation("gelu", "stc-saturate", OtKind::Silent, backend.clone(), threads)
            .await
            .context("gelu, stc-saturate")?;
        print_row(&row);
        rows.push(row);
    }
    if only.is_none_or(|o| o == "layernorm") {
        for range in [NormRange::DEFAULT, NormRange::new(13)?] {
            let row = measure_layernorm(OtKind::Silent, range, backend.clone(), threads).await.context("layernorm")?;
            print_row_with_steps(&row);
            rows.push(row);
        }
    }
    if only.is_none_or(|o| o == "softmax") {
        let row = measure_softmax(OtKind::Silent, backend.clone(), threads).await.context("softmax")?;
        print_row_with_steps(&row);
        rows.push(row);
    }
    Ok(())
}

async fn measure(
    name: &str,
    shape: MatShape,
    backend: Arc<dyn Backend>,
    threads: usize,
    tune: CostModel,
) -> Result<Row> {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let params = match name {
        "matmul-shared" => HeParams::n8192()?,
        _ => HeParams::linear()?,
    };
    let (c, mut sc, s, mut ss) = session_pair(backend, threads, OtKind::Silent, tune).await?;
    reset_peak_rss();
    let start = Instant::now();
    let (a, b) = tokio::join!(sc.setup_he(params.clone(), KeySet::Linear), ss.setup_he(params.clone(), KeySet::Linear));
    a?;
    b?;
    if name == "he-setup" {
        // the session's keys: public key and Galois keys of the linear layers' parameters
        let wall_s = start.elapsed().as_secs_f64();
        let t = c.meter().report().total();
        let (a, b) = tokio::join!(c.close(), s.close());
        a?;
        b?;
        return Ok(row(name, format!("keys of {}", params.name()), threads, wall_s, t.bytes(), t.rounds, true));
    }
    // uniform ring elements as integers (no fractional bits): the products are exact
    let x = Shares::matrix((shape.n, shape.d), (0..shape.n * shape.d).map(|_| rng.random()).collect(), 0)?;
    let (xc, xs) = share_matrix(&x, &mut rng)?;
    let before = c.meter().report().total();
    reset_peak_rss();
    let start = Instant::now();
    // (the reconstructed result, the right-hand matrix)
    let (z, rhs) = match name {
        "matmul-shared" => {
            let y = Shares::matrix((shape.d, shape.m), (0..shape.d * shape.m).map(|_| rng.random()).collect(), 0)?;
            let (yc, ys) = share_matrix(&y, &mut rng)?;
            let (zc, zs) =
                tokio::join!(matmul_shared(&mut sc, shape, &xc, &yc), matmul_shared(&mut ss, shape, &xs, &ys));
            (open(&zc?, &zs?)?.into_vec(), y.into_vec())
        }
        _ => {
            let w: Vec<u64> = (0..shape.d * shape.m).map(|_| rng.random_range(-(1i64 << 18)..1 << 18) as u64).collect();
            let weights = Weights::bounded((shape.d, shape.m), &w, 20)?;
            let (yc, ys) = tokio::join!(linear(&mut sc, shape, &xc, None), linear(&mut ss, shape, &xs, Some(weights)));
            (open(&yc?, &ys?)?.into_vec(), w)
        }
    };
    let wall_s = start.elapsed().as_secs_f64();
    let checked = z == shape.plain_product(x.as_slice(), &rhs);
    let after = c.meter().report().total();
    let (a, b) = tokio::join!(c.close(), s.close());
    a?;
    b?;
    let mut r = row(
        name,
        shape.to_string(),
        threads,
        wall_s,
        after.bytes() - before.bytes(),
        after.rounds - before.rounds,
        checked,
    );
    if let Some(HeKeys::Server(hs)) = ss.he_for(HeUse::Linear) {
        r.stat_distance_log2 = Some(hs.statistical_distance().log2());
    }
    Ok(r)
}

/// `compare`: 2^16 comparisons of 64-bit values (the server's against the client's).
/// `breakpoints`: 2^16 shared fixed-point values against GeLU's five breakpoints at 32 bits.
/// AND triples included; the OT engines' one-time base OTs are not.
async fn measure_compare(name: &str, kind: OtKind, backend: Arc<dyn Backend>, threads: usize) -> Result<Row> {
    const N: usize = 1 << 16;
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let (c, mut oc, s, mut os) = session_pair(backend, threads, kind, CostModel::WAN).await?;
    let breakpoints: Vec<u64> = [-5i64, -3, -1, 1, 3].iter().map(|t| (t << 18) as u64).collect();
    let per = if name == "breakpoints" { breakpoints.len() } else { 1 };
    let x: Vec<u64> = if per == 1 {
        (0..N).map(|_| rng.random()).collect()
    } else {
        (0..N).map(|_| rng.random_range(-(8i64 << 18)..8i64 << 18) as u64).collect()
    };
    let y: Vec<u64> = (0..N).map(|i| if i % 4 == 0 { x[i] } else { rng.random() }).collect();
    let before = c.meter().report().total();
    reset_peak_rss();
    let start = Instant::now();
    let bits = if per == 1 { 64 } else { 31 };
    let need = triples_per_comparison(os.ot_kind(), bits) * N * per;
    let (ts, tc) = tokio::join!(Triples::generate(&mut os, need), Triples::generate(&mut oc, need));
    let (mut ts, mut tc) = (ts?, tc?);
    let checked = if per == 1 {
        let (gs, gc) = tokio::join!(greater_than(&mut os, &mut ts, &x, 64), greater_than(&mut oc, &mut tc, &y, 64));
        let (gs, gc) = (gs?, gc?);
        (0..N).all(|i| (gs.get(i) ^ gc.get(i)) == (x[i] > y[i]))
    } else {
        // x is shared as (x − y, y)
        let xs: Vec<u64> = x.iter().zip(&y).map(|(a, b)| a.wrapping_sub(*b)).collect();
        let (xs, yc) = (Shares::vector(xs, 0)?, Shares::vector(y.clone(), 0)?);
        let (gs, gc) = tokio::join!(
            at_least(&mut os, &mut ts, &xs, &breakpoints, 32),
            at_least(&mut oc, &mut tc, &yc, &breakpoints, 32)
        );
        let (gs, gc) = (gs?, gc?);
        (0..N * per).all(|c| (gs.get(c) ^ gc.get(c)) == (x[c / per] as i64 >= breakpoints[c % per] as i64))
    };
    let wall_s = start.elapsed().as_secs_f64();
    let after = c.meter().report().total();
    drop((oc, os));
    let (a, b) = tokio::join!(c.close(), s.close());
    a?;
    b?;
    let bytes = after.bytes() - before.bytes();
    let shape = if per == 1 { format!("2^16 × 64-bit, {kind} OT") } else { format!("2^16 × 5 at 32-bit, {kind} OT") };
    let mut row = row(name, shape, threads, wall_s, bytes, after.rounds - before.rounds, checked);
    row.bits_per_op = Some(bytes as f64 * 8.0 / N as f64);
    Ok(row)
}

/// `gelu`, `silu`: 128×3072 shared fixed-point values, uniform in [−8, 8), by
/// Select-Then-Compute (`stc`) or by the baseline; checked against the fixed-point reference
/// (STC: within its stated bound; baseline: within 1e-4 of the real approximation), with the
/// error against the exact function.
async fn measure_activation(
    name: &str,
    method: &str,
    kind: OtKind,
    backend: Arc<dyn Backend>,
    threads: usize,
) -> Result<Row> {
    const N: usize = 128 * 3072;
    const SCALE: f64 = (1u64 << 18) as f64;
    let f = if name == "gelu" { Piecewise::gelu() } else { Piecewise::silu() };
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let (c, mut oc, s, mut os) = session_pair(backend, threads, kind, CostModel::WAN).await?;
    if method == "stc-saturate" {
        os.set_out_of_range(OutOfRange::Saturate);
        oc.set_out_of_range(OutOfRange::Saturate);
    }
    // inputs on the fixed-point grid, so that the references see exactly the shared values
    let xs: Vec<f64> = (0..N).map(|_| (rng.random_range(-8.0..8.0) * SCALE).round() / SCALE).collect();
    let raw: Vec<u64> = xs.iter().map(|&x| (x * SCALE).round() as i64 as u64).collect();
    let (xc, xs_) = share_matrix(&Shares::matrix((128, 3072), raw, 18)?, &mut rng)?;
    let before = c.meter().report().total();
    reset_peak_rss();
    let start = Instant::now();
    let stc = method.starts_with("stc");
    let (ys, yc) = if stc {
        tokio::join!(evaluate(&mut os, &f, &xs_), evaluate(&mut oc, &f, &xc))
    } else {
        tokio::join!(evaluate_baseline(&mut os, &f, &xs_), evaluate_baseline(&mut oc, &f, &xc))
    };
    let wall_s = start.elapsed().as_secs_f64();
    let after = c.meter().report().total();
    let y: Vec<f64> = open(&ys?, &yc?)?.as_slice().iter().map(|&v| v as i64 as f64 / SCALE).collect();
    let checked = xs.iter().zip(&y).all(|(&x, &y)| {
        let reference = f.reference((x * SCALE).round() as i64 as u64) as i64 as f64 / SCALE;
        if stc { (y - reference).abs() <= f.protocol_bound() } else { (y - f.approx(x)).abs() <= 1e-4 }
    });
    let errors: Vec<f64> = xs.iter().zip(&y).map(|(&x, &y)| (y - f.exact(x)).abs()).collect();
    drop((oc, os));
    let (a, b) = tokio::join!(c.close(), s.close());
    a?;
    b?;
    let bytes = after.bytes() - before.bytes();
    let mut row = row(
        name,
        format!("128×3072, {method}, {kind} OT"),
        threads,
        wall_s,
        bytes,
        after.rounds - before.rounds,
        checked,
    );
    row.method = Some(method.into());
    row.bits_per_op = Some(bytes as f64 * 8.0 / N as f64);
    row.max_error = Some(errors.iter().copied().fold(0.0, f64::max));
    row.mean_error = Some(errors.iter().sum::<f64>() / N as f64);
    Ok(row)
}

/// `softmax`: 12 heads × 128 rows of 128 logits, uniform in [−8, 8); checked within 3e-3 of the
/// real softmax (f64), with the error.
async fn measure_softmax(kind: OtKind, backend: Arc<dyn Backend>, threads: usize) -> Result<Row> {
    const LEN: usize = 128;
    const N: usize = 12 * 128 * LEN;
    const SCALE: f64 = (1u64 << 18) as f64;
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let (c, mut oc, s, mut os) = session_pair(backend, threads, kind, CostModel::WAN).await?;
    let xs: Vec<f64> = (0..N).map(|_| (rng.random_range(-8.0..8.0) * SCALE).round() / SCALE).collect();
    let raw: Vec<u64> = xs.iter().map(|&x| (x * SCALE) as i64 as u64).collect();
    let (r, shares) = share_matrix(&Shares::matrix((N / LEN, LEN), raw, 18)?, &mut rng)?;
    let before = c.meter().report().total();
    reset_peak_rss();
    let start = Instant::now();
    let (ys, yc) = tokio::join!(softmax(&mut os, &shares), softmax(&mut oc, &r));
    let wall_s = start.elapsed().as_secs_f64();
    let report = c.meter().report();
    let after = report.total();
    let y: Vec<f64> = open(&ys?, &yc?)?.as_slice().iter().map(|&v| v as i64 as f64 / SCALE).collect();
    let mut errors = Vec::with_capacity(N);
    for (row, got) in xs.chunks_exact(LEN).zip(y.chunks_exact(LEN)) {
        let m = row.iter().copied().fold(f64::MIN, f64::max);
        let total: f64 = row.iter().map(|v| (v - m).exp()).sum();
        errors.extend(row.iter().zip(got).map(|(v, g)| (g - (v - m).exp() / total).abs()));
    }
    drop((oc, os));
    let (a, b) = tokio::join!(c.close(), s.close());
    a?;
    b?;
    let bytes = after.bytes() - before.bytes();
    let max_error = errors.iter().copied().fold(0.0, f64::max);
    let mut row = row(
        "softmax",
        format!("12×128×128, {kind} OT"),
        threads,
        wall_s,
        bytes,
        after.rounds - before.rounds,
        max_error < 3e-3,
    );
    row.bits_per_op = Some(bytes as f64 * 8.0 / N as f64);
    row.set_steps(&report, ["softmax/max", "softmax/exp", "softmax/reciprocal", "softmax/scale"]);
    row.max_error = Some(max_error);
    row.mean_error = Some(errors.iter().sum::<f64>() / N as f64);
    Ok(row)
}

/// `layernorm`: 128 rows of 768 values (row i uniform in ±3·(1 + i/32) around i/16), with
/// random γ ∈ [−2, 2) and β ∈ [−1, 1) held by the server; checked within 2e-3·(1 + |y|) of the
/// real function, plus |n|·2^-13 for the normalized value n = (x − μ)/σ (γ's rounding to 12
/// fractional bits, which a massive activation's n ≈ 28 makes 3.4e-3). With a range wider than
/// the default, every eighth row has a "massive activation" of ±5000 in its column 7.
async fn measure_layernorm(kind: OtKind, range: NormRange, backend: Arc<dyn Backend>, threads: usize) -> Result<Row> {
    const D: usize = 768;
    const N: usize = 128 * D;
    const SCALE: f64 = (1u64 << 18) as f64;
    let fixed = |v: f64| (v * SCALE).round() as i64 as u64;
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let (c, mut oc, s, mut os) = session_pair(backend, threads, kind, CostModel::WAN).await?;
    let mut xs: Vec<f64> =
        (0..N).map(|i| rng.random_range(-3.0..3.0) * (1.0 + (i / D) as f64 / 32.0) + (i / D) as f64 / 16.0).collect();
    if range != NormRange::DEFAULT {
        for (j, row) in xs.chunks_exact_mut(D).step_by(8).enumerate() {
            row[7] = if j % 2 == 0 { 5000.0 } else { -5000.0 };
        }
    }
    os.set_norm_range(range);
    oc.set_norm_range(range);
    let gamma: Vec<f64> = (0..D).map(|_| rng.random_range(-2.0..2.0)).collect();
    let beta: Vec<f64> = (0..D).map(|_| rng.random_range(-1.0..1.0)).collect();
    let (g, b): (Vec<u64>, Vec<u64>) =
        (gamma.iter().map(|&v| fixed(v)).collect(), beta.iter().map(|&v| fixed(v)).collect());
    let raw: Vec<u64> = xs.iter().map(|&x| fixed(x)).collect();
    let (r, shares) = share_matrix(&Shares::matrix((N / D, D), raw, 18)?, &mut rng)?;
    let eps = 1e-5;
    let before = c.meter().report().total();
    reset_peak_rss();
    let start = Instant::now();
    let (ys, yc) = tokio::join!(
        layernorm(&mut os, &shares, Affine::Weights { gamma: &g, beta: &b }, fixed(eps)),
        layernorm(&mut oc, &r, Affine::None, fixed(eps))
    );
    let wall_s = start.elapsed().as_secs_f64();
    let report = c.meter().report();
    let after = report.total();
    let y: Vec<f64> = open(&ys?, &yc?)?.as_slice().iter().map(|&v| v as i64 as f64 / SCALE).collect();
    let mut errors = Vec::with_capacity(N);
    let mut checked = true;
    for (row, got) in xs.chunks_exact(D).zip(y.chunks_exact(D)) {
        let mu = row.iter().sum::<f64>() / D as f64;
        let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / D as f64;
        for i in 0..D {
            let n = (row[i] - mu) / (var + eps).sqrt();
            let want = gamma[i] * n + beta[i];
            errors.push((got[i] - want).abs());
            checked &= (got[i] - want).abs() < 2e-3 * (1.0 + want.abs()) + n.abs() * 2f64.powi(-13);
        }
    }
    drop((oc, os));
    let (a, b) = tokio::join!(c.close(), s.close());
    a?;
    b?;
    let bytes = after.bytes() - before.bytes();
    let shape = match range {
        NormRange::DEFAULT => format!("128×768, {kind} OT"),
        wide => format!("128×768, {kind} OT, |x| < 2^{}", wide.bits()),
    };
    let mut row = row("layernorm", shape, threads, wall_s, bytes, after.rounds - before.rounds, checked);
    row.bits_per_op = Some(bytes as f64 * 8.0 / N as f64);
    row.set_steps(&report, ["norm/mean", "norm/variance", "norm/rsqrt", "norm/normalize", "norm/affine"]);
    row.max_error = Some(errors.iter().copied().fold(0.0, f64::max));
    row.mean_error = Some(errors.iter().sum::<f64>() / N as f64);
    Ok(row)
}
