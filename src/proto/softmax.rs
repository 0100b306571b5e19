//! Softmax over rows of shared fixed-point values (the session's format, f = 18 by default), with
//! max-subtraction:
//! y_i = e^(x_i − m) / Σ_j e^(x_j − m), m = max_j x_j.
//!
//! 1. m by a tree of pairwise maxima ([`super::compare::max`]) at f + 8 bits: logits |x| < 64.
//! 2. e^(x_i − m) by Select-Then-Compute over 24 quadratic pieces ([`Piecewise::exp`]): a row's
//!    logits must lie within 63 of its maximum (the exp window); below −12 the result is 0.
//! 3. The row sum s ∈ [1, len] (the maximum contributes e^0 = 1), and 1/s: a piecewise
//!    quadratic start ([`Piecewise::reciprocal`], relative error < 1.5e-2) and two Newton steps
//!    y ← y·(2 − s·y) (relative error ε → ε², so < 1e-7 before rounding), on one value per row.
//!    Rows longer than 128 (up to 2048: a router's softmax over many experts) take the start on
//!    s or on s/16, chosen by a sign test ([`reciprocal_wide`]).
//! 4. y_i = e_i · (1/s) for the whole row by one correlated OT of the row per bit of the other
//!    party's share of 1/s ([`super::arith::mul_rows`]), then one truncation back to Z_2^64.
//!
//! Error: the exp pieces (≤ 5.2e-4) plus the protocol's d² rounding ([`Piecewise::protocol_bound`]),
//! scaled by 1/s, plus a few units of 2^-f from the truncations.

use super::Session;
use super::arith::{mul_in, mul_rows_in, truncate_extend};
use super::compare::{max, mux, non_negative};
use super::piecewise::{Piecewise, evaluate_in, evaluate_values};
use super::session::OutOfRange;
use super::{ProtoError, ProtoResult};
use crate::net::Party;
use crate::ring::Shares;

/// Width of the max tree's comparisons at f fractional bits: |a − b| < 2^(f+7) = 128 in real
/// terms.
fn max_bits(frac: u32) -> u32 {
    frac + 8
}

/// Ring of the final row products: e < 2 and 1/s ≤ 1 at f fractional bits each, so the product
/// (2f fractional bits) stays below 2^(2f+2).
fn product_bits(frac: u32) -> u32 {
    2 * frac + 4
}
/// Longest row: the wide reciprocal covers sums up to 2048.
pub const MAX_ROW: usize = 2048;
/// The logits' range, a precondition: |x| < LOGIT_BOUND (the maximum's comparisons at f + 8 bits).
pub const LOGIT_BOUND: f64 = 64.0;
/// How far below its row's maximum a logit may lie (the exp's window), a precondition.
pub const SPREAD_BOUND: f64 = 63.0;
/// Rows up to this length take the one-range reciprocal (sums up to 128).
const SHORT_ROW: usize = 128;
/// Values per batch (whole rows): bounds memory; each batch adds its rounds.
const BATCH: usize = 1 << 17;

/// Shares of softmax over each row of the shared matrix `x` (module notes); rows of 1..=2048
/// values.
#[tracing::instrument(level = "debug", skip_all, fields(rows = x.rows(), len = x.cols()))]
pub async fn softmax(sess: &mut Session, x: &Shares) -> ProtoResult<Shares> {
    softmax_masked(sess, x, None).await
}

/// Softmax over the entries of each row that the public `keep` mask (one flag per value,
/// row-major) keeps; the others come out as 0 (to the last unit of the final truncation): a
/// causal attention mask. Local work only: a masked entry takes the share of its row's first
/// kept entry before the maximum (so the maximum is over kept entries), and both parties zero
/// its share of e^(x − m).
pub async fn softmax_masked(sess: &mut Session, x: &Shares, keep: Option<&[bool]>) -> ProtoResult<Shares> {
    sess.check_format(x, "softmax input")?;
    let len = x.cols();
    if !(1..=MAX_ROW).contains(&len) {
        return Err(ProtoError::Input(format!("softmax over rows of {len} values (1..={MAX_ROW})")));
    }
    if let Some(keep) = keep
        && (keep.len() != x.len() || keep.chunks_exact(len).any(|row| !row.contains(&true)))
    {
        return Err(ProtoError::Input("a softmax mask needs one flag per value and a kept entry per row".into()));
    }
    let mut out = Vec::with_capacity(x.len());
    let rows = BATCH / len * len;
    for (b, batch) in x.as_slice().chunks(rows).enumerate() {
        let keep = keep.map(|k| &k[b * rows..b * rows + batch.len()]);
        out.extend(softmax_batch(sess, batch, len, keep).await?);
    }
    Ok(x.with_values(out)?)
}

async fn softmax_batch(sess: &mut Session, x: &[u64], len: usize, keep: Option<&[bool]>) -> ProtoResult<Vec<u64>> {
    let frac = sess.format().frac_bits();
    let kept = |i: usize| keep.is_none_or(|k| k[i]);
    let x: Vec<u64> = match keep {
        None => x.to_vec(),
        Some(k) => x
            .chunks_exact(len)
            .zip(k.chunks_exact(len))
            .flat_map(|(row, keep)| {
                let first = row[keep.iter().position(|&b| b).unwrap_or(0)];
                row.iter().zip(keep).map(move |(v, &b)| if b { *v } else { first })
            })
            .collect(),
    };
    let meter = sess.meter().clone();
    let m = {
        let _s = meter.scope("softmax/max");
        max(sess, &Shares::matrix((x.len() / len, len), x.clone(), frac)?, max_bits(frac)).await?.0.into_vec()
    };
    let z: Vec<u64> = x.iter().enumerate().map(|(i, v)| v.wrapping_sub(m[i / len])).collect();
    let mut e = {
        let _s = meter.scope("softmax/exp");
        evaluate_values(sess, &Piecewise::exp(), &z).await?
    };
    e.iter_mut().enumerate().filter(|(i, _)| !kept(*i)).for_each(|(_, v)| *v = 0);
    let sums: Vec<u64> = e.chunks_exact(len).map(|row| row.iter().fold(0u64, |s, v| s.wrapping_add(*v))).collect();
    let r = {
        let _s = meter.scope("softmax/reciprocal");
        reciprocal_values(sess, &sums, len > SHORT_ROW).await?
    };
    let _s = meter.scope("softmax/scale");
    // 1/s ≤ 1 (Newton may overshoot it a little): below 2^(f+1)
    let y = mul_rows_in(sess, &e, &r, frac + 3, product_bits(frac)).await?;
    truncate_extend(sess, &y, product_bits(frac), frac).await
}

/// Shares of 1/s for shared s ∈ [1, 128] (module notes, step 3).
pub async fn reciprocal(sess: &mut Session, s: &Shares) -> ProtoResult<Shares> {
    sess.check_format(s, "reciprocal input")?;
    Ok(s.with_values(reciprocal_values(sess, s.as_slice(), false).await?)?)
}

/// Shares of 1/s for shared s ∈ [1, 2048]: the start is the piecewise 1/s of s below 64 and
/// 1/16 of the piecewise 1/(s/16) from 64 on (s/16 ∈ [4, 128], inside the start's range),
/// chosen by one sign test of s − 64; then the same Newton steps. (Both starts are evaluated
/// for every value; the one outside its range is discarded by the multiplexer.)
pub async fn reciprocal_wide(sess: &mut Session, s: &Shares) -> ProtoResult<Shares> {
    sess.check_format(s, "reciprocal input")?;
    Ok(s.with_values(reciprocal_values(sess, s.as_slice(), true).await?)?)
}

/// [`reciprocal`] (or [`reciprocal_wide`] when `wide`) on the session's shares.
async fn reciprocal_values(sess: &mut Session, s: &[u64], wide: bool) -> ProtoResult<Vec<u64>> {
    let f = Piecewise::reciprocal();
    let low = evaluate_in(sess, &f, s, OutOfRange::Precondition).await?;
    if !wide {
        return newton(sess, s, low).await;
    }
    let frac = sess.format().frac_bits();
    let scaled = truncate_extend(sess, s, 64, 4).await?;
    let high = evaluate_in(sess, &f, &scaled, OutOfRange::Precondition).await?;
    let high = truncate_extend(sess, &high, 64, 4).await?;
    let sixty_four = if sess.party() == Party::Server { 64u64 << frac } else { 0 };
    let shifted: Vec<u64> = s.iter().map(|v| v.wrapping_sub(sixty_four)).collect();
    let large = non_negative(sess, &Shares::vector(shifted, frac)?, frac + 13).await?;
    let diff: Vec<u64> = high.iter().zip(&low).map(|(h, l)| h.wrapping_sub(*l)).collect();
    let picked = mux(sess, &large, &Shares::vector(diff, frac)?).await?.into_vec();
    let y = low.iter().zip(&picked).map(|(l, p)| l.wrapping_add(*p)).collect();
    newton(sess, s, y).await
}

/// Two Newton steps y ← y·(2 − s·y) towards 1/s (relative error ε → ε²).
async fn newton(sess: &mut Session, s: &[u64], mut y: Vec<u64>) -> ProtoResult<Vec<u64>> {
    let frac = sess.format().frac_bits();
    let two = if sess.party() == Party::Server { 2u64 << frac } else { 0 };
    for _ in 0..2 {
        let sy = mul_in(sess, s, &y, 64).await?;
        let sy = truncate_extend(sess, &sy, 64, frac).await?;
        let step: Vec<u64> = sy.iter().map(|v| two.wrapping_sub(*v)).collect();
        let prod = mul_in(sess, &y, &step, 64).await?;
        y = truncate_extend(sess, &prod, 64, frac).await?;
    }
    Ok(y)
}
