//! LayerNorm and RMSNorm over rows of shared fixed-point values (the session's format, f = 18 by
//! default; f in [`FRAC_RANGE`]), and the reciprocal square root they need.
//!
//! LayerNorm: y = γ ⊙ (x − μ)/√(σ² + ε) + β per row of d values, γ and β the server's weights.
//! 1. μ = Σx · ⌊2^24/d⌉ / 2^24 (local sum, one faithful truncation).
//! 2. σ² from the squares of c = x − μ at 10 fractional bits in a ring of 34 + ⌈log2 d⌉ bits
//!    (|c| < 64: Σc² < 2^(32 + ⌈log2 d⌉); 44 bits for d = 1024, 47 for d = 8192), c's shares
//!    read in 18 bits with their top bits known (SCI's known-MSB square):
//!    20 correlated OTs per value instead of 128, the row sum lifted back with
//!    [`super::arith::truncate`].
//! 3. 1/√(σ² + ε) per row ([`rsqrt`]).
//! 4. c·r for the whole row by [`super::arith::mul_rows`] (a 51-bit ring), then γ ⊙ · + β by a
//!    cross term with the server's weights at 12 fractional bits, the normalized value's shares
//!    read in f + 2 + its integer bits (|(x − μ)/σ| ≤ √d: f + 8 bits at d = 1024, f + 10 at
//!    d = 8192; f + 9 and f + 11 correlated OTs per value instead of 41).
//!
//! RMSNorm: y = γ ⊙ x/√(Σx²/d + ε), the same steps without μ and β.
//!
//! Preconditions: |x − μ| < 64 (|x| < 64 for RMSNorm), σ² + ε ∈ [2^-14, 2^16), |γ| ≤ 16.
//! Error: a few units of 2^-12 in c² (relative 2^-9 of σ² at worst for tiny variances), the
//! rsqrt to 1e-6 relative, γ rounded to 2^-12.

use super::Session;
use super::arith::{mul_in, mul_rows_in, mul_weights, square, truncate_extend};
use super::boolean::Triples;
use super::compare::{at_least, b2a, triples_per_comparison};
use super::piecewise::{Piecewise, evaluate_values};
use super::{ProtoError, ProtoResult};
use crate::net::Party;
use crate::ring::{Bits, Shares};

/// Fractional bits of the row constant 1/d.
const MEAN_BITS: u32 = 24;
/// c at 10 fractional bits when squared; the ring c's shares are read in when squared
/// (|c| < 2^6 at 10 fractional bits: below 2^16 = 2^(18−2)).
const SQUARE_FRAC: u32 = 10;
const SQUARE_SMALL: u32 = 18;
/// Fractional bits of γ in the affine step.
const WEIGHT_BITS: u32 = 12;
/// The bound on the server's γ: |γ| ≤ 2^GAMMA_BITS (the affine step's ring has room for it, and
/// a model's weights are checked against it when the server loads them).
pub const GAMMA_BITS: u32 = 4;
/// Fractional bits the norms run at: v ≥ 2^-14 needs f ≥ 14 (the rsqrt thresholds), the
/// squares at 10 fractional bits need f ≤ 20.
pub const FRAC_RANGE: std::ops::RangeInclusive<u32> = 14..=20;
/// The norms' input range: |x − μ| < INPUT_BOUND (|x| for RMSNorm), a precondition.
pub const INPUT_BOUND: f64 = 64.0;
/// Longest row (Mixtral's and Qwen3-MoE-235B's d = 4096, DeepSeek-V3's 7168).
pub const MAX_WIDTH: usize = 8192;
/// Exponents k of the normalization v = 4^k·m, m ∈ [1, 4).
const K_MIN: i32 = -8;
const K_MAX: i32 = 7;

/// ⌈log2 d⌉.
fn log2_width(width: usize) -> u32 {
    width.next_power_of_two().trailing_zeros()
}

/// The ring of a row's sum of squares at 2·SQUARE_FRAC fractional bits: each c² < 2^32, so
/// the sum of d < 2^(32 + ⌈log2 d⌉), with a sign bit and one of margin.
fn square_bits(width: usize) -> u32 {
    32 + log2_width(width) + 2
}

/// Integer bits of the normalized value (x − μ)/σ, whose magnitude is at most √d (all of a
/// row's deviation in one value; √(d − 1) with μ): |n| ≤ 2^(integer − 1), one bit of margin
/// above it for the rounding of 1/σ in every ring that holds n.
fn normalized_integer_bits(width: usize) -> u32 {
    log2_width(width).div_ceil(2) + 1
}

/// The session's fractional bits, if the norms can run at them.
fn frac_of(sess: &Session) -> ProtoResult<u32> {
    let frac = sess.format().frac_bits();
    if FRAC_RANGE.contains(&frac) {
        Ok(frac)
    } else {
        Err(ProtoError::Input(format!(
            "LayerNorm/RMSNorm at {frac} fractional bits (they run at {}..={})",
            FRAC_RANGE.start(),
            FRAC_RANGE.end()
        )))
    }
}

/// The server's LayerNorm weights (the client passes [`Affine::None`]), in the session's fixed
/// point, one per column.
#[derive(Debug, Clone, Copy)]
pub enum Affine<'a> {
    /// The client's side: it holds no weights.
    None,
    /// The server's weights.
    Weights {
        /// γ, length d.
        gamma: &'a [u64],
        /// β, length d.
        beta: &'a [u64],
    },
}

/// Shares of LayerNorm over each row of the shared matrix `x` (module notes; rows of
/// 1..=[`MAX_WIDTH`] values); `eps` in fixed point.
#[tracing::instrument(level = "debug", skip_all, fields(rows = x.rows(), width = x.cols()))]
pub async fn layernorm(sess: &mut Session, x: &Shares, affine: Affine<'_>, eps: u64) -> ProtoResult<Shares> {
    normalize(sess, x, affine, eps, true).await
}

/// Shares of RMSNorm: y = γ ⊙ x/√(Σx²/d + ε) (β in `affine` is not used).
#[tracing::instrument(level = "debug", skip_all, fields(rows = x.rows(), width = x.cols()))]
pub async fn rmsnorm(sess: &mut Session, x: &Shares, affine: Affine<'_>, eps: u64) -> ProtoResult<Shares> {
    normalize(sess, x, affine, eps, false).await
}

async fn normalize(sess: &mut Session, x: &Shares, affine: Affine<'_>, eps: u64, centre: bool) -> ProtoResult<Shares> {
    sess.check_format(x, "norm input")?;
    let frac = frac_of(sess)?;
    let server = sess.party() == Party::Server;
    let width = x.cols();
    if !(1..=MAX_WIDTH).contains(&width) {
        return Err(ProtoError::Input(format!("norm over rows of {width} values (1..={MAX_WIDTH})")));
    }
    let shares = x;
    let x = x.as_slice();
    let rows = x.len() / width;
    let inv_d = ((1u64 << MEAN_BITS) as f64 / width as f64).round() as u64;
    let scale = |sums: Vec<u64>| -> Vec<u64> { sums.iter().map(|s| s.wrapping_mul(inv_d)).collect() };
    let meter = sess.meter().clone();
    let c: Vec<u64> = if centre {
        let _s = meter.scope("norm/mean");
        let sums: Vec<u64> = x.chunks_exact(width).map(|r| r.iter().fold(0u64, |s, v| s.wrapping_add(*v))).collect();
        let mu = truncate_extend(sess, &scale(sums), 64, MEAN_BITS).await?;
        x.iter().enumerate().map(|(i, v)| v.wrapping_sub(mu[i / width])).collect()
    } else {
        x.to_vec()
    };
    // σ² (or the mean square): squares of c at 10 fractional bits in a small ring
    let var = {
        let _s = meter.scope("norm/variance");
        let coarse = truncate_extend(sess, &c, 64, frac - SQUARE_FRAC).await?;
        let square_bits = square_bits(width);
        let squares = square(sess, &coarse, SQUARE_SMALL, square_bits).await?;
        let sums: Vec<u64> =
            squares.chunks_exact(width).map(|r| r.iter().fold(0u64, |s, v| s.wrapping_add(*v))).collect();
        let sums = truncate_extend(sess, &sums, square_bits, 2 * SQUARE_FRAC - frac).await?;
        truncate_extend(sess, &scale(sums), 64, MEAN_BITS).await?
    };
    let var: Vec<u64> = var.iter().map(|v| if server { v.wrapping_add(eps) } else { *v }).collect();
    let r = {
        let _s = meter.scope("norm/rsqrt");
        rsqrt_values(sess, &var).await?
    };
    debug_assert_eq!(r.len(), rows);
    // c·r: |c| < 2^6, r < 2^7, 2f fractional bits
    let n = {
        let _s = meter.scope("norm/normalize");
        let normalized_bits = 2 * frac + 15;
        // r ≤ 2^7 (σ² + ε ≥ 2^-14): below 2^(f+8)
        let n = mul_rows_in(sess, &c, &r, frac + 10, normalized_bits).await?;
        truncate_extend(sess, &n, normalized_bits, frac).await?
    };
    let _s = meter.scope("norm/affine");
    let (gamma, beta): (Vec<u64>, Vec<u64>) = match affine {
        Affine::None if server => return Err(ProtoError::Input("the server must pass the weights".into())),
        Affine::None => (Vec::new(), Vec::new()),
        Affine::Weights { gamma, beta } => {
            if gamma.len() != width || beta.len() != width {
                return Err(ProtoError::Input(format!("{} γ and {} β for rows of {width}", gamma.len(), beta.len())));
            }
            let g = gamma.iter().map(|&g| ((g as i64) >> (frac - WEIGHT_BITS)) as u64);
            (g.cycle().take(x.len()).collect(), beta.iter().copied().cycle().take(x.len()).collect())
        }
    };
    // |n| ≤ 2^(integer − 1) at f fractional bits, |γ·n| < 2^(GAMMA_BITS + integer − 1) at
    // f + WEIGHT_BITS: f + 23 bits at d = 1024
    let integer = normalized_integer_bits(width);
    let scaled_bits = frac + WEIGHT_BITS + GAMMA_BITS + integer + 1;
    let small = frac + integer + 2;
    let scaled = mul_weights(sess, &n, &gamma, small, scaled_bits).await?;
    let y = truncate_extend(sess, &scaled, scaled_bits, WEIGHT_BITS).await?;
    let y = if server && centre { y.iter().zip(&beta).map(|(y, b)| y.wrapping_add(*b)).collect() } else { y };
    Ok(shares.with_values(y)?)
}

/// Shares of 1/√v for shared v ∈ [2^-14, 2^16) (the session's fixed point): v = 4^k·m with m ∈ [1, 4)
/// from 15 threshold comparisons (one-hot of k, converted to arithmetic shares), a piecewise
/// start on m ([`Piecewise::rsqrt`]) refined by two Newton steps y ← y·(3 − m·y²)/2, then
/// times 2^-k.
pub async fn rsqrt(sess: &mut Session, v: &Shares) -> ProtoResult<Shares> {
    sess.check_format(v, "rsqrt input")?;
    Ok(v.with_values(rsqrt_values(sess, v.as_slice()).await?)?)
}

async fn rsqrt_values(sess: &mut Session, v: &[u64]) -> ProtoResult<Vec<u64>> {
    let frac = frac_of(sess)?;
    let server = sess.party() == Party::Server;
    let n = v.len();
    let thresholds: Vec<u64> = (K_MIN + 1..=K_MAX).map(|k| 1u64 << (frac as i32 + 2 * k)).collect();
    // |v − c| < 2^(bits−1) for v, c < 2^34
    let bits = frac + 18;
    let mut triples =
        Triples::generate(sess, n * thresholds.len() * triples_per_comparison(sess.kind, bits - 1)).await?;
    let ge = at_least(sess, &mut triples, &Shares::vector(v.to_vec(), frac)?, &thresholds, bits).await?.to_bools();
    let t = thresholds.len();
    // one-hot of k: bit i (k = K_MIN + i) is ge[i−1] ⊕ ge[i], with ge[−1] = 1 and ge[t] = 0
    let onehot: Vec<bool> = (0..n)
        .flat_map(|j| {
            let ge = &ge[j * t..(j + 1) * t];
            (0..=t).map(move |i| (if i == 0 { server } else { ge[i - 1] }) ^ (i < t && ge[i]))
        })
        .collect();
    let onehot = b2a(sess, &Bits::from_bools(&onehot)).await?.into_vec();
    let weigh = |shift: &dyn Fn(i32) -> i32| -> Vec<u64> {
        onehot
            .chunks_exact(t + 1)
            .map(|b| {
                b.iter()
                    .enumerate()
                    .fold(0u64, |s, (i, &b)| s.wrapping_add(b.wrapping_mul(1u64 << shift(K_MIN + i as i32))))
            })
            .collect()
    };
    let quarter = weigh(&|k| frac as i32 - 2 * k); // 4^-k
    let half = weigh(&|k| frac as i32 - k); // 2^-k
    let m = mul_in(sess, v, &quarter, 64).await?;
    let m = truncate_extend(sess, &m, 64, frac).await?;
    let three = if server { 3u64 << frac } else { 0 };
    let mut y = evaluate_values(sess, &Piecewise::rsqrt(), &m).await?;
    for _ in 0..2 {
        let y2 = mul_in(sess, &y, &y, 64).await?;
        let y2 = truncate_extend(sess, &y2, 64, frac).await?;
        let my2 = mul_in(sess, &m, &y2, 64).await?;
        let my2 = truncate_extend(sess, &my2, 64, frac).await?;
        let step: Vec<u64> = my2.iter().map(|v| three.wrapping_sub(*v)).collect();
        let prod = mul_in(sess, &y, &step, 64).await?;
        y = truncate_extend(sess, &prod, 64, frac + 1).await?;
    }
    let r = mul_in(sess, &y, &half, 64).await?;
    truncate_extend(sess, &r, 64, frac).await
}
