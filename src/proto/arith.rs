//! Arithmetic on shares over Z_2^64: element-wise products of two shared vectors, and the
//! truncation that follows a fixed-point product.
//!
//! Products (Gilboa's OT multiplication): x·y = x_s·y_s + x_c·y_c + x_s·y_c + x_c·y_s. Each cross
//! term a·b with a held by one party and b by the other comes from one correlated OT per bit of
//! b: the holder of b chooses with its bits b_j, the holder of a sends Δ_j = a·2^j, and Σ_j of the
//! received values minus Σ_j of the sender's is a·b. A b of fewer bits (a share in a smaller
//! ring) needs fewer OTs.
//!
//! Truncation with a known top bit (Cheetah, Huang et al. USENIX Security 2022): for a value Y
//! shared mod 2^m with |Y| < 2^(m−2), Y' = Y + 2^(m−2) lies in [0, 2^(m−1)), so the shares wrap
//! (Y'_s + Y'_c ≥ 2^m) exactly when either share has its top bit set. Then
//! ⌊Y'/2^f⌋ = (Y'_s ≫ f) + (Y'_c ≫ f) − 2^(m−f)·(a ∨ b) + carry, with a, b the shares' top bits
//! and carry ∈ {0, 1} from the low f bits. Dropping the carry gives ⌊Y/2^f⌋ or one less — never a
//! large error — at the price of one correlated OT for a ∧ b. The same step lifts shares mod
//! 2^m to shares mod 2^64.
//!
//! The public functions take typed [`Shares`] (the ring and scale come with them); the
//! protocols inside the crate call the kernels on raw shares in a ring they name (`mul_in`,
//! `square`, `mul_weights`, `mul_rows_in`, `truncate_extend`).

use super::Session;
use rand::RngExt;

use super::{ProtoError, ProtoResult};
use crate::net::Party;
use crate::ring::{Shares, mask};

/// Shares of x ⊙ y (element-wise) for shared x and y of one shape in one ring Z_2^ℓ: 2ℓ
/// correlated OTs per element. The product carries the sum of the operands' fractional bits
/// (a [`truncate`] brings it back).
pub async fn mul(sess: &mut Session, x: &Shares, y: &Shares) -> ProtoResult<Shares> {
    if x.shape() != y.shape() || x.width() != y.width() {
        return Err(ProtoError::Input(format!("product of {} and {}", x.describe(), y.describe())));
    }
    let frac = x.frac_bits() + y.frac_bits();
    if frac > x.width() {
        return Err(ProtoError::Input(format!(
            "product of {} and {}: the scale overflows the ring",
            x.describe(),
            y.describe()
        )));
    }
    let product = mul_in(sess, x.as_slice(), y.as_slice(), x.width()).await?;
    Ok(Shares::new(x.shape(), product, x.width(), frac)?)
}

/// Shares of x ⊙ y mod 2^bits for x, y shared mod 2^bits (shares are read mod 2^bits): 2·bits
/// correlated OTs per element. Values known to be small multiply in a smaller ring for fewer
/// OTs, then [`truncate_extend`] returns to Z_2^64.
pub(crate) async fn mul_in(sess: &mut Session, x: &[u64], y: &[u64], bits: u32) -> ProtoResult<Vec<u64>> {
    if x.len() != y.len() {
        return Err(ProtoError::Input(format!("product of {} and {} values", x.len(), y.len())));
    }
    let (x, y): (Vec<u64>, Vec<u64>) = x.iter().zip(y).map(|(a, b)| (a & mask(bits), b & mask(bits))).unzip();
    // cross term 1: the server's x times the client's y; cross term 2: the client's x times the
    // server's y. The party sending a term holds `a`, the one choosing holds `b`.
    let (first, second) = match sess.party() {
        Party::Server => (cross_send(sess, &x, bits, bits).await?, cross_receive(sess, &y, bits, bits).await?),
        Party::Client => (cross_receive(sess, &y, bits, bits).await?, cross_send(sess, &x, bits, bits).await?),
    };
    Ok((0..x.len())
        .map(|i| x[i].wrapping_mul(y[i]).wrapping_add(first[i]).wrapping_add(second[i]) & mask(bits))
        .collect())
}

/// Shares of x² mod 2^bits for x shared mod 2^bits (shares are read mod 2^bits; the square of
/// the ring element is exact): x_s² + x_c² + 2·x_s·x_c, one cross term of `bits` correlated OTs
/// per element. At 64 bits that is half of [`mul`]; a value known to be small squares in a
/// smaller ring for fewer OTs.
pub(crate) async fn square(sess: &mut Session, x: &[u64], bits: u32) -> ProtoResult<Vec<u64>> {
    let x: Vec<u64> = x.iter().map(|v| v & mask(bits)).collect();
    let doubled: Vec<u64> = x.iter().map(|v| v.wrapping_mul(2)).collect();
    let cross = match sess.party() {
        Party::Server => cross_send(sess, &doubled, bits, bits).await?,
        Party::Client => cross_receive(sess, &x, bits, bits).await?,
    };
    Ok(x.iter().zip(cross).map(|(v, c)| v.wrapping_mul(*v).wrapping_add(c) & mask(bits)).collect())
}

/// Shares mod 2^bits of w_i·x_i for the server's own plaintext `weights` (the client passes
/// none) and shared x: w·x_s locally, w·x_c as a cross term the client chooses with its share's
/// `bits` bits.
pub(crate) async fn mul_weights(sess: &mut Session, x: &[u64], weights: &[u64], bits: u32) -> ProtoResult<Vec<u64>> {
    let x: Vec<u64> = x.iter().map(|v| v & mask(bits)).collect();
    match sess.party() {
        Party::Server => {
            if weights.len() != x.len() {
                return Err(ProtoError::Input(format!("{} weights for {} values", weights.len(), x.len())));
            }
            let cross = cross_send(sess, weights, bits, bits).await?;
            Ok((0..x.len()).map(|i| weights[i].wrapping_mul(x[i]).wrapping_add(cross[i]) & mask(bits)).collect())
        }
        Party::Client => cross_receive(sess, &x, bits, bits).await,
    }
}

/// The sender's share (−Σ_j r_j mod 2^width) of a·b, for its own `a` and the other party's
/// `b_bits`-bit `b` ([`cross_receive`]).
pub(crate) async fn cross_send(sess: &mut Session, a: &[u64], b_bits: u32, width: u32) -> ProtoResult<Vec<u64>> {
    let deltas: Vec<u64> = a.iter().flat_map(|&v| (0..b_bits).map(move |j| v << j)).collect();
    let r = sess.ot.cot_send(sess.kind, &deltas, width).await?;
    Ok(r.chunks_exact(b_bits as usize).map(|c| c.iter().fold(0u64, |s, v| s.wrapping_sub(*v)) & mask(width)).collect())
}

/// The chooser's share (Σ_j r_j + b_j·a·2^j mod 2^width) of a·b, for its own `b` (below
/// 2^b_bits).
pub(crate) async fn cross_receive(sess: &mut Session, b: &[u64], b_bits: u32, width: u32) -> ProtoResult<Vec<u64>> {
    let choices: Vec<bool> = b.iter().flat_map(|&v| (0..b_bits).map(move |j| (v >> j) & 1 == 1)).collect();
    let got = sess.ot.cot_receive(sess.kind, &choices, width).await?;
    Ok(got
        .chunks_exact(b_bits as usize)
        .map(|c| c.iter().fold(0u64, |s, v| s.wrapping_add(*v)) & mask(width))
        .collect())
}

/// Faithful truncation by `f` bits of shared values over Z_2^ℓ with |x| < 2^(ℓ−2): shares over
/// Z_2^64 of ⌊x/2^f⌋ or ⌊x/2^f⌋ − 1, never more wrong (see the module notes), with f fewer
/// fractional bits; one correlated OT of ℓ − f bits per value. Shares of a smaller ring are
/// lifted to Z_2^64 in the same step.
pub async fn truncate(sess: &mut Session, x: &Shares, f: u32) -> ProtoResult<Shares> {
    if f > x.frac_bits() {
        return Err(ProtoError::Input(format!("truncation by {f} bits of {}", x.describe())));
    }
    let y = truncate_extend(sess, x.as_slice(), x.width(), f).await?;
    Ok(Shares::new(x.shape(), y, 64, x.frac_bits() - f)?)
}

/// Shares mod 2^64 of ⌊Y/2^f⌋ (or one less) for Y shared mod 2^`bits` with |Y| < 2^(bits−2):
/// truncation and extension to the full ring in one step (see the module notes). Shares are
/// read modulo 2^`bits` (higher bits are ignored).
pub(crate) async fn truncate_extend(sess: &mut Session, shares: &[u64], bits: u32, f: u32) -> ProtoResult<Vec<u64>> {
    if !(3..=64).contains(&bits) || f >= bits - 1 {
        return Err(ProtoError::Input(format!("truncation by {f} bits of {bits}-bit values")));
    }
    let server = sess.party() == Party::Server;
    let offset = 1u64 << (bits - 2);
    let high = bits - f; // the wrap weighs 2^high after the shift
    let (tops, own): (Vec<bool>, Vec<u64>) = shares
        .iter()
        .map(|&v| {
            let v = if server { v.wrapping_add(offset) } else { v } & mask(bits);
            let top = v >> (bits - 1) == 1;
            let wrap = if top && high < 64 { 1u64 << high } else { 0 };
            (top, (v >> f).wrapping_sub(wrap))
        })
        .unzip();
    // a ∧ b weighs 2^high, so only its value mod 2^(64 − high) matters
    let both = if high >= 64 {
        vec![0; shares.len()]
    } else {
        let width = 64 - high;
        let and = if server {
            let deltas: Vec<u64> = tops.iter().map(|&a| a as u64).collect();
            sess.ot.cot_send(sess.kind, &deltas, width).await?.iter().map(|x| x.wrapping_neg()).collect::<Vec<_>>()
        } else {
            sess.ot.cot_receive(sess.kind, &tops, width).await?
        };
        and.into_iter().map(|v| v << high).collect()
    };
    let unshift = if server { offset >> f } else { 0 };
    Ok(own.iter().zip(both).map(|(o, b)| o.wrapping_add(b).wrapping_sub(unshift)).collect())
}

/// A fresh uniform mask per value, below 2^bits (the sender's share in table lookups).
pub(crate) fn masks(sess: &mut Session, n: usize, bits: u32) -> Vec<u64> {
    (0..n).map(|_| sess.rng.random::<u64>() & mask(bits)).collect()
}

/// Shares of x_ij·r_i for shared x (rows × len) and one shared scalar per row (r: rows × 1), in
/// their common ring Z_2^ℓ, the scale the sum of theirs.
pub async fn mul_rows(sess: &mut Session, x: &Shares, r: &Shares) -> ProtoResult<Shares> {
    let frac = x.frac_bits() + r.frac_bits();
    if r.shape() != (x.rows(), 1) || x.width() != r.width() || frac > x.width() {
        return Err(ProtoError::Input(format!("row products of {} and {}", x.describe(), r.describe())));
    }
    let y = mul_rows_in(sess, x.as_slice(), r.as_slice(), x.width()).await?;
    Ok(Shares::new(x.shape(), y, x.width(), frac)?)
}

/// Shares mod 2^bits of x_ij·r_i: every value of row i (rows of `x.len() / r.len()` values)
/// times that row's shared scalar. The cross terms use one correlated OT of a whole row per bit
/// of the other party's scalar share ([`crate::ot::Ot::cot_vec_send`]): `bits` random OTs per row and
/// direction instead of per value.
pub(crate) async fn mul_rows_in(sess: &mut Session, x: &[u64], r: &[u64], bits: u32) -> ProtoResult<Vec<u64>> {
    if r.is_empty() || !x.len().is_multiple_of(r.len()) {
        return Err(ProtoError::Input(format!("{} values in {} rows", x.len(), r.len())));
    }
    let len = x.len() / r.len();
    // the holder of x_p sends row vectors x_p·2^j; the other chooses with the bits of its r
    let deltas: Vec<u64> =
        x.chunks_exact(len).flat_map(|row| (0..bits).flat_map(move |j| row.iter().map(move |&v| v << j))).collect();
    let choices: Vec<bool> = r.iter().flat_map(|&v| (0..bits).map(move |j| (v >> j) & 1 == 1)).collect();
    let (sent, got) = match sess.party() {
        Party::Server => {
            let a = sess.ot.cot_vec_send(sess.kind, &deltas, len, bits).await?;
            (a, sess.ot.cot_vec_receive(sess.kind, &choices, len, bits).await?)
        }
        Party::Client => {
            let b = sess.ot.cot_vec_receive(sess.kind, &choices, len, bits).await?;
            (sess.ot.cot_vec_send(sess.kind, &deltas, len, bits).await?, b)
        }
    };
    let (first, second) = (sum_bits(&sent, len, bits, true), sum_bits(&got, len, bits, false));
    Ok((0..x.len())
        .map(|i| x[i].wrapping_mul(r[i / len]).wrapping_add(first[i]).wrapping_add(second[i]) & mask(bits))
        .collect())
}

/// Σ_j over the `bits` vectors of each row (negated for the sender's side).
fn sum_bits(values: &[u64], len: usize, bits: u32, negate: bool) -> Vec<u64> {
    values
        .chunks_exact(len * bits as usize)
        .flat_map(|row| {
            (0..len).map(move |l| {
                let s = (0..bits as usize).fold(0u64, |s, j| s.wrapping_add(row[j * len + l]));
                if negate { s.wrapping_neg() } else { s }
            })
        })
        .collect()
}
