//! LayerNorm and RMSNorm over rows of shared fixed-point values (the session's format, f = 18 by
//! default; f in [`FRAC_RANGE`]), and the reciprocal square root they need.
//!
//! LayerNorm: y = γ ⊙ (x − μ)/√(σ² + ε) + β per row of d values, γ and β the server's weights;
//! inputs in the session's [`NormRange`], |x − μ| < 2^B (B = 6 by default, up to 14 for the
//! "massive activations" of LLMs' residual streams).
//! 1. μ = Σx · ⌊2^24/d⌉ / 2^24 (local sum, one faithful truncation).
//! 2. σ² from the squares of c = x − μ rounded to s = 12 fractional bits (fewer only where the
//!    sum would not fit 64 bits: 10 at B = 14, d = 8192), in a ring of 2(B + s) + ⌈log2 d⌉ + 2
//!    bits (48 at B = 6, d = 1024), c's shares read in B + s + 2 bits with their top bits known
//!    (SCI's known-MSB square): B + s + 4 correlated OTs per value instead of 128. The row sum
//!    is lifted to Z_2^64 as v' = Σc²/2^p ∈ [σ², 2σ²) (2^p ≤ d < 2^(p+1)) at F_v = f + 12
//!    fractional bits (fewer for B > 10: F_v + 2B + 6 ≤ 64), so that no row's variance loses its
//!    low bits to a division.
//! 3. √(d/2^p)/√(v' + ε·d/2^p) = 1/√(σ² + ε) per row (comparisons at F_v + 2B + 6 bits, see
//!    [`rsqrt`]), at F_r = f + B − 6 fractional bits (10 significant bits at its least, 2^-(B+2)).
//! 4. n = c·r for the whole row by [`super::arith::mul_rows`] in a ring of
//!    f + F_r + ⌈log2 d⌉/2 + 3 bits (|n| ≤ √d), then γ ⊙ n + β by a cross term with the
//!    server's weights at 12 fractional bits, n's shares read in f + 2 + its integer bits
//!    (f + 8 bits at d = 1024, f + 10 at d = 8192; f + 9 and f + 11 correlated OTs per value
//!    instead of 41).
//!
//! RMSNorm: y = γ ⊙ x/√(Σx²/d + ε), the same steps without μ and β.
//!
//! Preconditions: |x − μ| < 2^B (|x| < 2^B for RMSNorm), σ² + ε ≥ 2^-14, |γ| ≤ 16.
//! Error: the squares' rounding biases σ² by ~2^-(2s+1), relative 2^-11 at σ² = 2^-14 (2^-7 at
//! s = 10); the rsqrt to 1e-6 relative, r to 2^-10 relative at its smallest, γ rounded to
//! 2^-12 (so y is off by up to |n|·2^-13 from it: 3.4e-3 for a massive activation's n ≈ 28).

use super::Session;
use super::arith::{mul_in, mul_rows_in, mul_weights, square, truncate_extend};
use super::boolean::Triples;
use super::compare::{at_least, b2a, triples_per_comparison};
use super::piecewise::{Piecewise, evaluate_in};
use super::session::OutOfRange;
use super::{ProtoError, ProtoResult};
use crate::net::Party;
use crate::ring::{Bits, Shares};

/// Fractional bits of the row constant 1/d.
const MEAN_BITS: u32 = 24;
/// Fractional bits c is squared at, at most: the rounding of c to 12 bits biases a row's
/// mean square by ~2^-25, 2^-11 of the smallest σ² (2^-14).
const SQUARE_FRAC: u32 = 12;
/// Fractional bits of γ in the affine step.
const WEIGHT_BITS: u32 = 12;
/// The bound on the server's γ: |γ| ≤ 2^GAMMA_BITS (the affine step's ring has room for it, and
/// a model's weights are checked against it when the server loads them).
pub const GAMMA_BITS: u32 = 4;
/// Fractional bits the norms run at: v ≥ 2^-14 needs f ≥ 14 (the rsqrt thresholds); the
/// rings of the mean square and of 1/√ are sized for f ≤ 20.
pub const FRAC_RANGE: std::ops::RangeInclusive<u32> = 14..=20;
/// Longest row (Mixtral's and Qwen3-MoE-235B's d = 4096, DeepSeek-V3's 7168).
pub const MAX_WIDTH: usize = 8192;
/// The lowest exponent k of the normalization v = 4^k·m, m ∈ [1, 4) (v ≥ 4^(K_MIN+1) = 2^-14);
/// the highest is B + 1 for inputs below 2^B ([`NormRange::k_max`]).
const K_MIN: i32 = -8;

/// The norms' input range, |x − μ| < 2^B (|x| for RMSNorm): a public parameter both parties
/// set alike ([`Session::set_norm_range`]), a precondition of every norm. The default, 2^6,
/// suits activations of order one; a model whose residual stream reaches thousands in a few
/// channels (LLMs' "massive activations") needs up to 2^14, for wider rings in the squares, the
/// rsqrt's comparisons and the normalization (costed in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormRange(u32);

impl NormRange {
    /// |x − μ| < 2^6.
    pub const DEFAULT: NormRange = NormRange(6);
    /// The exponents B a norm takes: at B = 14 the squares of values below 2^B, at 10
    /// fractional bits and summed over 8192, fill 63 bits of the 64.
    pub const BITS: std::ops::RangeInclusive<u32> = 6..=14;

    /// |x − μ| < 2^`bits`, for `bits` in [`NormRange::BITS`].
    pub fn new(bits: u32) -> ProtoResult<NormRange> {
        if Self::BITS.contains(&bits) {
            Ok(NormRange(bits))
        } else {
            Err(ProtoError::Input(format!(
                "a norm input range of 2^{bits} (2^{}..=2^{})",
                Self::BITS.start(),
                Self::BITS.end()
            )))
        }
    }

    /// B.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// 2^B, the bound on |x − μ|.
    pub fn bound(self) -> f64 {
        (1u64 << self.0) as f64
    }

    /// The highest exponent k of v = 4^k·m: v = σ² + ε < 2^(2B) + ε < 4^(B+2).
    fn k_max(self) -> i32 {
        self.0 as i32 + 1
    }

    /// Fractional bits of 1/√v: ≥ 2^-(B+2) keeps 10 significant bits at f + B − 6.
    fn rsqrt_frac(self, frac: u32) -> u32 {
        frac + self.0 - 6
    }

    /// Fractional bits of the mean square v < 2^(2B+2): f + 12 (2^-14 keeps 16 significant
    /// bits at f = 18), as many as the rsqrt's comparisons (v and thresholds below
    /// 2^(2B+4+F), F + 2B + 6 bits) and its product m = v·4^-k (below 2^(F+2B+4)) leave.
    fn variance_frac(self, frac: u32) -> u32 {
        (frac + 12).min(58 - 2 * self.0)
    }
}

impl Default for NormRange {
    fn default() -> Self {
        NormRange::DEFAULT
    }
}

/// ⌈log2 d⌉.
fn log2_width(width: usize) -> u32 {
    width.next_power_of_two().trailing_zeros()
}

/// p with d/2^p ∈ [1, 2): a row's mean square σ² = Σc²/d is known as Σc²/2^p ∈ [σ², 2σ²),
/// whose 1/√ is corrected by √(d/2^p).
fn mean_shift(width: usize) -> u32 {
    width.ilog2()
}

/// The fractional bits s c is squared at: [`SQUARE_FRAC`], or fewer where the sum of squares
/// would not fit 64 bits (10 at B = 14 and d = 8192), and no more than f.
fn square_frac(frac: u32, width: usize, range: NormRange) -> u32 {
    SQUARE_FRAC.min(frac).min((62 - log2_width(width)) / 2 - range.bits())
}

/// The ring of a row's sum of squares at 2s fractional bits: each c² < 2^(2B+2s), so the sum
/// of d < 2^(2B + 2s + ⌈log2 d⌉), with a sign bit and one of margin.
fn square_bits(s: u32, width: usize, range: NormRange) -> u32 {
    2 * (range.bits() + s) + log2_width(width) + 2
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
    let range = sess.norm_range();
    let meter = sess.meter().clone();
    let c: Vec<u64> = if centre {
        let _s = meter.scope("norm/mean");
        // |Σx|·2^24/d < 2^(B + f + 24)
        let inv_d = ((1u64 << MEAN_BITS) as f64 / width as f64).round() as u64;
        let sums: Vec<u64> =
            x.chunks_exact(width).map(|r| r.iter().fold(0u64, |s, v| s.wrapping_add(*v)).wrapping_mul(inv_d)).collect();
        let mu = truncate_extend(sess, &sums, 64, MEAN_BITS).await?;
        x.iter().enumerate().map(|(i, v)| v.wrapping_sub(mu[i / width])).collect()
    } else {
        x.to_vec()
    };
    // σ² (or the mean square): squares of c at s ≤ 12 fractional bits in a small ring
    let var = {
        let _s = meter.scope("norm/variance");
        // c at s fractional bits, below 2^(B+s): its shares read in B + s + 2 bits; rounded (half
        // a unit added before the floor), which more than halves the squares' bias
        let sq = square_frac(frac, width, range);
        let half = if server && sq < frac { 1u64 << (frac - sq - 1) } else { 0 };
        let c_half: Vec<u64> = c.iter().map(|v| v.wrapping_add(half)).collect();
        let coarse = truncate_extend(sess, &c_half, 64, frac - sq).await?;
        let square_bits = square_bits(sq, width, range);
        let squares = square(sess, &coarse, range.bits() + sq + 2, square_bits).await?;
        let sums: Vec<u64> =
            squares.chunks_exact(width).map(|r| r.iter().fold(0u64, |s, v| s.wrapping_add(*v))).collect();
        // v' = Σc²/2^p ∈ [σ², 2σ²) (p = log2 d, or ⌊log2 d⌋ for other d) at F_v fractional bits
        let shift = 2 * sq as i32 + mean_shift(width) as i32 - range.variance_frac(frac) as i32;
        let sums = truncate_extend(sess, &sums, square_bits, shift.max(0) as u32).await?;
        sums.iter().map(|s| s << (-shift).max(0)).collect::<Vec<u64>>()
    };
    // ε·d/2^p at F_v, so that √(d/2^p)/√(v' + ε·d/2^p) = 1/√(σ² + ε)
    let ratio = width as f64 / (1u64 << mean_shift(width)) as f64;
    let eps = (eps as i64 as f64 * ratio * 2f64.powi((range.variance_frac(frac) - frac) as i32)).round() as i64 as u64;
    let var: Vec<u64> = var.iter().map(|v| if server { v.wrapping_add(eps) } else { *v }).collect();
    // r = 1/√(v' + ε) · √(d/2^p) at F = f + B − 6 fractional bits
    let r = {
        let _s = meter.scope("norm/rsqrt");
        rsqrt_values(sess, &var, range, range.variance_frac(frac), ratio.sqrt()).await?
    };
    debug_assert_eq!(r.len(), rows);
    // n = c·r at f + F fractional bits: |n| ≤ √d (all of a row's deviation in one value), so
    // 2^(⌈L/2⌉ + 1) with a bit of margin for the rounding of r; r ≤ 2^7 (σ² + ε ≥ 2^-14)
    let n = {
        let _s = meter.scope("norm/normalize");
        let r_frac = range.rsqrt_frac(frac);
        let normalized_bits = frac + r_frac + log2_width(width).div_ceil(2) + 3;
        let n = mul_rows_in(sess, &c, &r, r_frac + 10, normalized_bits).await?;
        truncate_extend(sess, &n, normalized_bits, r_frac).await?
    };
    let _s = meter.scope("norm/affine");
    let (gamma, beta): (Vec<u64>, Vec<u64>) = match affine {
        Affine::None if server => return Err(ProtoError::Input("the server must pass the weights".into())),
        Affine::None => (Vec::new(), Vec::new()),
        Affine::Weights { gamma, beta } => {
            if gamma.len() != width || beta.len() != width {
                return Err(ProtoError::Input(format!("{} γ and {} β for rows of {width}", gamma.len(), beta.len())));
            }
            // γ rounded to WEIGHT_BITS fractional bits (to nearest: |δγ| ≤ 2^-13)
            let half = 1i64 << (frac - WEIGHT_BITS - 1);
            let g = gamma.iter().map(|&g| ((g as i64 + half) >> (frac - WEIGHT_BITS)) as u64);
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
    let frac = frac_of(sess)?;
    Ok(v.with_values(rsqrt_values(sess, v.as_slice(), NormRange::DEFAULT, frac, 1.0).await?)?)
}

/// c/√v for v ∈ [2^-14, 4^(B+2)) at `v_frac` fractional bits and a public c ∈ [1, 2), the
/// result at f + B − 6.
async fn rsqrt_values(
    sess: &mut Session,
    v: &[u64],
    range: NormRange,
    v_frac: u32,
    correction: f64,
) -> ProtoResult<Vec<u64>> {
    let frac = frac_of(sess)?;
    let server = sess.party() == Party::Server;
    let n = v.len();
    let k_max = range.k_max();
    let thresholds: Vec<u64> = (K_MIN + 1..=k_max).map(|k| 1u64 << (v_frac as i32 + 2 * k)).collect();
    // |v − c| < 2^(bits−1) for v, c < 2^(2B + 4 + F)
    let bits = v_frac + 2 * range.bits() + 6;
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
    let weigh = |weight: &dyn Fn(i32) -> u64| -> Vec<u64> {
        onehot
            .chunks_exact(t + 1)
            .map(|b| {
                b.iter().enumerate().fold(0u64, |s, (i, &b)| s.wrapping_add(b.wrapping_mul(weight(K_MIN + i as i32))))
            })
            .collect()
    };
    // 4^-k at X = 2·k_max fractional bits (m·2^(F+X) < 2^(F+2B+4)), c·2^-k at f + B − 6
    // (rounded: 2^-k ≥ 2^-(B+1) keeps f − 7 bits)
    let x_bits = 2 * k_max;
    let quarter = weigh(&|k| 1u64 << (x_bits - 2 * k));
    let half = weigh(&|k| (correction * 2f64.powi(range.rsqrt_frac(frac) as i32 - k)).round() as u64);
    let m = mul_in(sess, v, &quarter, 64).await?;
    let m = truncate_extend(sess, &m, 64, v_frac + x_bits as u32 - frac).await?;
    let three = if server { 3u64 << frac } else { 0 };
    let mut y = evaluate_in(sess, &Piecewise::rsqrt(), &m, OutOfRange::Precondition).await?;
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
