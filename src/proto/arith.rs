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
//! `square`, `mul_weights`, `mul_rows_in`, `truncate_extend`, and the local `truncate_within`).

use super::Session;
use rand::RngExt;

use super::{ProtoError, ProtoResult};
use crate::net::Party;
use crate::ot::cross_term_widths;
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

/// A shared value known to be small, split at its ring's top bit (SCI's multiplication with a
/// known most significant bit): for |x| < 2^(m−2) shared mod 2^m, the server adds 2^(m−2) so the
/// sum X' = x + 2^(m−2) lies in [0, 2^(m−1)); over the integers its shares then add to
/// X' + w·2^m with the wrap w = a ∨ b = a + b − a·b, a and b the shares' top bits. So
/// x = u + t − w·2^m with u = s − 2^(m−2) the server's and t the client's: a product by x
/// needs only the m choice bits of t and a correlated OT or two for w, not one choice bit per
/// bit of the product's ring.
struct Split {
    /// u (server) or t (client), mod 2^64.
    own: u64,
    /// This party's share's top bit (a or b).
    top: bool,
}

fn split(server: bool, x: u64, m: u32) -> Split {
    let offset = 1u64 << (m - 2);
    let v = if server { x.wrapping_add(offset) } else { x } & mask(m);
    Split { own: if server { v.wrapping_sub(offset) } else { v }, top: v >> (m - 1) == 1 }
}

/// 2^k mod 2^64 (0 from k = 64 on: the term vanishes in every ring).
fn pow2(k: u32) -> u64 {
    if k < 64 { 1 << k } else { 0 }
}

/// Shares mod 2^bits of x² for shared x with |x| < 2^(m−2), m = `small` ≤ `bits` (shares are
/// read mod 2^m). With x = u + t − w·2^m ([`Split`]) and w² = w:
/// x² = u² + t² + 2ut + 2^(m+1)·w·(Z_s + Z_c), Z_s = 2^(m−1) − u, Z_c = −t, and
/// w·Z = a·Z_s + b·Z_c + a·(1 − b)·Z_c + b·(1 − a)·Z_s. Cost per value: the cross term 2u·t
/// (m OTs, the client choosing) and two correlated OTs of bits − m − 1 bits (one each way),
/// against `bits` OTs for a value that fills the ring.
pub(crate) async fn square(sess: &mut Session, x: &[u64], small: u32, bits: u32) -> ProtoResult<Vec<u64>> {
    if !(3..=bits).contains(&small) {
        return Err(ProtoError::Input(format!("square of {small}-bit values in a {bits}-bit ring")));
    }
    let server = sess.is_server();
    let parts: Vec<Split> = x.iter().map(|&v| split(server, v, small)).collect();
    // Z_p, this party's part of the wrap's factor, and the weight 2^(m+1) of the wrap's terms
    let z: Vec<u64> = parts
        .iter()
        .map(|p| if server { (1u64 << (small - 1)).wrapping_sub(p.own) } else { p.own.wrapping_neg() })
        .collect();
    let scale = pow2(small + 1);
    let own: Vec<u64> = parts
        .iter()
        .zip(&z)
        .map(|(p, z)| p.own.wrapping_mul(p.own).wrapping_add(if p.top { scale.wrapping_mul(*z) } else { 0 }))
        .collect();
    let cross = match sess.party() {
        Party::Server => {
            let doubled: Vec<u64> = parts.iter().map(|p| p.own.wrapping_mul(2)).collect();
            cross_send(sess, &doubled, small, bits).await?
        }
        Party::Client => {
            let t: Vec<u64> = parts.iter().map(|p| p.own).collect();
            cross_receive(sess, &t, small, bits).await?
        }
    };
    let wrap = if small + 1 >= bits {
        vec![0; x.len()] // the wrap's terms weigh 2^(m+1) ≡ 0
    } else {
        // a·(1 − b)·Z_c: the server chooses with a; b·(1 − a)·Z_s: the client chooses with b
        let width = bits - small - 1;
        let tops: Vec<bool> = parts.iter().map(|p| p.top).collect();
        let deltas: Vec<u64> = parts.iter().zip(&z).map(|(p, z)| if p.top { 0 } else { *z }).collect();
        let (sent, got) = match sess.party() {
            Party::Server => {
                let got = sess.ot.cot_receive(sess.kind, &tops, width).await?;
                (sess.ot.cot_send(sess.kind, &deltas, width).await?, got)
            }
            Party::Client => {
                let sent = sess.ot.cot_send(sess.kind, &deltas, width).await?;
                (sent, sess.ot.cot_receive(sess.kind, &tops, width).await?)
            }
        };
        sent.iter().zip(got).map(|(s, g)| g.wrapping_sub(*s).wrapping_mul(scale)).collect()
    };
    Ok((0..x.len()).map(|i| own[i].wrapping_add(cross[i]).wrapping_add(wrap[i]) & mask(bits)).collect())
}

/// Shares mod 2^bits of w_i·x_i for the server's own plaintext `weights` (the client passes
/// none) and shared x with |x| < 2^(m−2), m = `small` ≤ `bits` ([`Split`]):
/// w·x = w·u − 2^m·w·a + w·t − 2^m·w·b·(1 − a). The server computes the first two; the last
/// two are one cross term of m + 1 correlated OTs per value, the client choosing with the m
/// bits of t and then b (weight 2^m), against `bits` for a value that fills the ring.
pub(crate) async fn mul_weights(
    sess: &mut Session,
    x: &[u64],
    weights: &[u64],
    small: u32,
    bits: u32,
) -> ProtoResult<Vec<u64>> {
    if !(3..=bits).contains(&small) {
        return Err(ProtoError::Input(format!("weights times {small}-bit values in a {bits}-bit ring")));
    }
    let server = sess.is_server();
    let parts: Vec<Split> = x.iter().map(|&v| split(server, v, small)).collect();
    // the wrap's term is bit m of the cross term (else it weighs 2^m ≡ 0)
    let wrapped = small < bits;
    let widths = cross_term_widths(small + u32::from(wrapped), bits)?;
    let per = widths.len();
    let scale = pow2(small);
    match sess.party() {
        Party::Server => {
            if weights.len() != x.len() {
                return Err(ProtoError::Input(format!("{} weights for {} values", weights.len(), x.len())));
            }
            let deltas: Vec<u64> = parts
                .iter()
                .zip(weights)
                .flat_map(|(p, &w)| {
                    let wrap = if p.top { 0 } else { w.wrapping_neg() };
                    std::iter::repeat_n(w, small as usize).chain(wrapped.then_some(wrap))
                })
                .collect();
            let r = sess.ot.cot_vec_send(sess.kind, &deltas, 1, &widths).await?;
            Ok(parts
                .iter()
                .zip(weights)
                .zip(r.chunks_exact(per))
                .map(|((p, &w), r)| {
                    let own = w.wrapping_mul(p.own).wrapping_sub(if p.top { scale.wrapping_mul(w) } else { 0 });
                    own.wrapping_sub(weighted_sum(r)) & mask(bits)
                })
                .collect())
        }
        Party::Client => {
            let choices: Vec<bool> = parts
                .iter()
                .flat_map(|p| (0..small).map(move |j| (p.own >> j) & 1 == 1).chain(wrapped.then_some(p.top)))
                .collect();
            let got = sess.ot.cot_vec_receive(sess.kind, &choices, 1, &widths).await?;
            Ok(got.chunks_exact(per).map(|g| weighted_sum(g) & mask(bits)).collect())
        }
    }
}

/// The sender's share (−Σ_j r_j·2^j mod 2^width) of a·b, for its own `a` and the other party's
/// `b_bits`-bit `b` ([`cross_receive`]): bit j's correlated OT carries a mod 2^(width − j)
/// ([`cross_term_widths`]).
pub(crate) async fn cross_send(sess: &mut Session, a: &[u64], b_bits: u32, width: u32) -> ProtoResult<Vec<u64>> {
    let widths = cross_term_widths(b_bits, width)?;
    let deltas: Vec<u64> = a.iter().flat_map(|&v| std::iter::repeat_n(v, b_bits as usize)).collect();
    let r = sess.ot.cot_vec_send(sess.kind, &deltas, 1, &widths).await?;
    Ok(r.chunks_exact(b_bits as usize).map(|c| weighted_sum(c).wrapping_neg() & mask(width)).collect())
}

/// The chooser's share (Σ_j (r_j + b_j·a)·2^j mod 2^width) of a·b, for its own `b` (below
/// 2^b_bits).
pub(crate) async fn cross_receive(sess: &mut Session, b: &[u64], b_bits: u32, width: u32) -> ProtoResult<Vec<u64>> {
    let widths = cross_term_widths(b_bits, width)?;
    let choices: Vec<bool> = b.iter().flat_map(|&v| (0..b_bits).map(move |j| (v >> j) & 1 == 1)).collect();
    let got = sess.ot.cot_vec_receive(sess.kind, &choices, 1, &widths).await?;
    Ok(got.chunks_exact(b_bits as usize).map(|c| weighted_sum(c) & mask(width)).collect())
}

/// Σ_j v_j·2^j: the OT results of a cross term's bits, each weighed by its bit.
fn weighted_sum(values: &[u64]) -> u64 {
    values.iter().enumerate().fold(0u64, |s, (j, v)| s.wrapping_add(v << j))
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

/// Shares mod 2^(bits − f) of ⌊x/2^f⌋ or ⌊x/2^f⌋ − 1 for x shared mod 2^bits, by each party
/// dropping its share's low f bits: with s + c = x + w·2^bits (w ∈ {0, 1}) and the low parts'
/// carry κ ∈ {0, 1}, ⌊s/2^f⌋ + ⌊c/2^f⌋ = ⌊x/2^f⌋ + w·2^(bits−f) − κ, and the wrap vanishes
/// in the smaller ring. Local, no message: a truncation that may stay in bits − f bits (a
/// selection that reads fewer bits, then [`truncate_extend`] with f = 0 to lift) costs nothing.
pub(crate) fn truncate_within(shares: &[u64], bits: u32, f: u32) -> Vec<u64> {
    shares.iter().map(|&v| ((v & mask(bits)) >> f) & mask(bits - f)).collect()
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
    let y = mul_rows_in(sess, x.as_slice(), r.as_slice(), x.width(), x.width()).await?;
    Ok(Shares::new(x.shape(), y, x.width(), frac)?)
}

/// Shares mod 2^bits of x_ij·r_i: every value of row i (rows of `x.len() / r.len()` values)
/// times that row's shared scalar, |r_i| < 2^(m−2) for m = `small` ≤ `bits` ([`Split`]; m =
/// `bits` for any r). With r = u + t − w·2^m and x = x_s + x_c:
/// x·r = x_s·u − 2^m·x_s·a (server) + x_c·t − 2^m·x_c·b (client) + x_s·t + x_c·u
/// − 2^m·x_s·b·(1 − a) − 2^m·x_c·a·(1 − b). The last four are two cross terms of m + 1
/// correlated OTs of whole rows per row ([`crate::ot::Ot::cot_vec_send`]; bit j's row in
/// bits − j bits), one each way: the other party chooses with the bits of its part of r and
/// then its top bit (weight 2^m). The server chooses with v = u + 2^(m−2) (its reduced share),
/// the client removes 2^(m−2)·x_c. Random OTs per row, not per value. Rows of one value are
/// the element-wise product by a value known to be small (SwiGLU's gate by its up branch).
pub(crate) async fn mul_rows_in(
    sess: &mut Session,
    x: &[u64],
    r: &[u64],
    small: u32,
    bits: u32,
) -> ProtoResult<Vec<u64>> {
    if r.is_empty() || !x.len().is_multiple_of(r.len()) {
        return Err(ProtoError::Input(format!("{} values in {} rows", x.len(), r.len())));
    }
    if !(3..=bits).contains(&small) {
        return Err(ProtoError::Input(format!("row scalars of {small} bits in a {bits}-bit ring")));
    }
    let len = x.len() / r.len();
    let server = sess.is_server();
    let parts: Vec<Split> = r.iter().map(|&v| split(server, v, small)).collect();
    let offset = 1u64 << (small - 2);
    let wrapped = small < bits; // else the wrap weighs 2^m ≡ 0
    let widths = cross_term_widths(small + u32::from(wrapped), bits)?;
    let per = widths.len();
    // this party's rows once per choice bit of the other, then −x_p·(1 − top_p) for the wrap
    let deltas: Vec<u64> = x
        .chunks_exact(len)
        .zip(&parts)
        .flat_map(|(row, p)| {
            let plain = (0..small).flat_map(move |_| row.iter().copied());
            let wrap = row.iter().map(move |&v| if p.top { 0 } else { v.wrapping_neg() });
            plain.chain(wrap.take(if wrapped { len } else { 0 }))
        })
        .collect();
    // the choice bits of this party's part of r: t (client) or v = u + 2^(m−2) (server)
    let choices: Vec<bool> = parts
        .iter()
        .flat_map(|p| {
            let v = if server { p.own.wrapping_add(offset) } else { p.own };
            (0..small).map(move |j| (v >> j) & 1 == 1).chain(wrapped.then_some(p.top))
        })
        .collect();
    let (sent, got) = match sess.party() {
        Party::Server => {
            let a = sess.ot.cot_vec_send(sess.kind, &deltas, len, &widths).await?;
            (a, sess.ot.cot_vec_receive(sess.kind, &choices, len, &widths).await?)
        }
        Party::Client => {
            let b = sess.ot.cot_vec_receive(sess.kind, &choices, len, &widths).await?;
            (sess.ot.cot_vec_send(sess.kind, &deltas, len, &widths).await?, b)
        }
    };
    let (first, second) = (sum_bits(&sent, len, per, true), sum_bits(&got, len, per, false));
    let scale = pow2(small);
    Ok((0..x.len())
        .map(|i| {
            let p = &parts[i / len];
            let mut own = x[i].wrapping_mul(p.own);
            if p.top {
                own = own.wrapping_sub(scale.wrapping_mul(x[i]));
            }
            if !server {
                own = own.wrapping_sub(offset.wrapping_mul(x[i]));
            }
            own.wrapping_add(first[i]).wrapping_add(second[i]) & mask(bits)
        })
        .collect())
}

/// Σ_j 2^j·v_j over the `per` vectors of each row (negated for the sender's side).
fn sum_bits(values: &[u64], len: usize, per: usize, negate: bool) -> Vec<u64> {
    values
        .chunks_exact(len * per)
        .flat_map(|row| {
            (0..len).map(move |l| {
                let s = (0..per).fold(0u64, |s, j| s.wrapping_add(row[j * len + l] << j));
                if negate { s.wrapping_neg() } else { s }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::proto::SessionConfig;
    use std::sync::Arc;

    /// Runs `f` on both parties of an ideal-OT session pair: (client's, server's) results.
    fn both<T>(f: impl AsyncFn(&mut Session, Party) -> ProtoResult<T>) -> (T, T) {
        let backend = Arc::new(CpuBackend::new(1).unwrap_or_else(|e| panic!("{e}")));
        let config = SessionConfig { seed: Some([9; 32]), ..SessionConfig::default() };
        let (mut c, mut s) = Session::ideal_pair(backend, config).unwrap_or_else(|e| panic!("{e}"));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = rt.block_on(async { tokio::join!(f(&mut c, Party::Client), f(&mut s, Party::Server)) });
        (a.unwrap_or_else(|e| panic!("{e}")), b.unwrap_or_else(|e| panic!("{e}")))
    }

    /// Values up to the edges of |x| < 2^(m−2), each split into a random share pair mod 2^64.
    fn shared(m: u32, n: usize) -> (Vec<i64>, Vec<u64>, Vec<u64>) {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(m));
        let edge = (1i64 << (m - 2)) - 1;
        let x: Vec<i64> = [0, 1, -1, edge, -edge, edge - 1, -edge + 1]
            .into_iter()
            .chain((0..n).map(|_| rng.random_range(-edge..=edge)))
            .collect();
        let client: Vec<u64> = x.iter().map(|_| rng.random()).collect();
        let server = x.iter().zip(&client).map(|(&v, c)| (v as u64).wrapping_sub(*c)).collect();
        (x, client, server)
    }

    /// x² from the shares read in m bits is exact mod 2^bits, at the edges of the range, for
    /// rings where the wrap's terms count and where they vanish.
    #[test]
    fn a_square_of_a_small_value_is_exact() {
        for (m, bits) in [(18, 44), (3, 64), (40, 64), (63, 64), (64, 64), (20, 21), (20, 22)] {
            let (x, client, server) = shared(m, 2000);
            let (c, s) = both(async |sess, party| {
                let mine = if party == Party::Client { &client } else { &server };
                square(sess, mine, m, bits).await
            });
            for i in 0..x.len() {
                let want = (x[i] as u64).wrapping_mul(x[i] as u64) & mask(bits);
                assert_eq!(c[i].wrapping_add(s[i]) & mask(bits), want, "x = {}, m = {m}, ring {bits}", x[i]);
            }
        }
    }

    /// w·x for the server's weights is exact mod 2^bits, the client's result uniform-looking
    /// (it never holds w).
    #[test]
    fn weights_times_a_small_value_are_exact() {
        for (m, bits) in [(26, 41), (3, 41), (41, 41), (64, 64), (30, 31)] {
            let (x, client, server) = shared(m, 2000);
            let weights: Vec<u64> = (0..x.len() as u64).map(|i| (i * 7919) as i64 as u64 ^ (i << 40)).collect();
            let (c, s) = both(async |sess, party| match party {
                Party::Client => mul_weights(sess, &client, &[], m, bits).await,
                Party::Server => mul_weights(sess, &server, &weights, m, bits).await,
            });
            for i in 0..x.len() {
                let want = weights[i].wrapping_mul(x[i] as u64) & mask(bits);
                assert_eq!(c[i].wrapping_add(s[i]) & mask(bits), want, "x = {}, m = {m}, ring {bits}", x[i]);
            }
        }
        let (_, client, server) = shared(10, 5);
        let err = both(async |sess, party| {
            let mine = if party == Party::Client { &client } else { &server };
            Ok(mul_weights(sess, mine, &[1; 12], 42, 41).await.is_err() && square(sess, mine, 2, 41).await.is_err())
        });
        assert!(err.0 && err.1, "a value wider than the ring is refused");
    }

    /// Row products x_ij·r_i with r read in m bits are exact mod 2^bits at the range's edges,
    /// with and without the wrap's terms.
    #[test]
    fn row_products_by_a_small_scalar_are_exact() {
        for (m, bits, len) in [(21, 40, 5), (28, 51, 3), (40, 40, 4), (64, 64, 2), (3, 12, 7), (26, 50, 1), (64, 64, 1)]
        {
            let (r, r_client, r_server) = shared(m, 60);
            let x: Vec<u64> = (0..r.len() * len).map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
            let x_client: Vec<u64> = x.iter().map(|v| v.rotate_left(17) ^ 0x5555).collect();
            let x_server: Vec<u64> = x.iter().zip(&x_client).map(|(v, c)| v.wrapping_sub(*c)).collect();
            let (c, s) = both(async |sess, party| match party {
                Party::Client => mul_rows_in(sess, &x_client, &r_client, m, bits).await,
                Party::Server => mul_rows_in(sess, &x_server, &r_server, m, bits).await,
            });
            for i in 0..x.len() {
                let want = x[i].wrapping_mul(r[i / len] as u64) & mask(bits);
                assert_eq!(c[i].wrapping_add(s[i]) & mask(bits), want, "r = {}, m = {m}, ring {bits}", r[i / len]);
            }
        }
    }

    /// Dropping each share's low f bits gives ⌊x/2^f⌋ or one less in the ring f bits smaller,
    /// for values of either sign up to the ring's edge.
    #[test]
    fn a_truncation_within_a_smaller_ring_is_local_and_faithful() {
        for (bits, f) in [(44, 18), (64, 18), (26, 0), (20, 19)] {
            let (x, client, server) = shared(bits, 2000);
            let (c, s) = (truncate_within(&client, bits, f), truncate_within(&server, bits, f));
            for i in 0..x.len() {
                let got = c[i].wrapping_add(s[i]) & mask(bits - f);
                let floor = ((x[i] >> f) as u64) & mask(bits - f);
                assert!(
                    got == floor || got == floor.wrapping_sub(1) & mask(bits - f),
                    "x = {}, {bits} bits, f = {f}",
                    x[i]
                );
            }
        }
    }

    /// A cross term whose bit j travels in width − j bits gives a·b mod 2^width.
    #[test]
    fn a_cross_term_is_exact_in_its_ring() {
        let a: Vec<u64> = (0..3000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
        let b: Vec<u64> = (0..3000u64).map(|i| i.wrapping_mul(0x2545_f491_4f6c_dd1d) & mask(37)).collect();
        for width in [37, 50, 64] {
            let (c, s) = both(async |sess, party| match party {
                Party::Client => cross_receive(sess, &b, 37, width).await,
                Party::Server => cross_send(sess, &a, 37, width).await,
            });
            for i in 0..a.len() {
                assert_eq!(c[i].wrapping_add(s[i]) & mask(width), a[i].wrapping_mul(b[i]) & mask(width));
            }
        }
    }
}
