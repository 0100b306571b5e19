//! Arithmetic on shares over Z_2^64: element-wise products of two shared vectors, and the
//! truncation that follows a fixed-point product.
//!
//! Products (Gilboa's OT multiplication): x·y = x_s·y_s + x_c·y_c + x_s·y_c + x_c·y_s. Each cross
//! term a·b with a held by one party and b by the other comes from 64 correlated OTs: the holder
//! of b chooses with its bits b_j, the holder of a sends Δ_j = a·2^j, and Σ_j of the received
//! values minus Σ_j of the sender's is a·b.
//!
//! Truncation (SecureML, Mohassel–Zhang S&P 2017), local: with shares read as integers in
//! [0, 2^64), the server takes ⌊x_s / 2^f⌋ and the client 2^64 − ⌊(2^64 − x_c) / 2^f⌋. Error
//! model: if |x| < 2^k (x read as signed), the result is ⌊x/2^f⌋ or ⌊x/2^f⌋ + 1, except with
//! probability at most 2^(k+1−64) per value, when it is off by about 2^(64−f). A product of two
//! fixed-point values below 2^8 in real terms (18 fractional bits) has k ≤ 53: 2^-10 per value;
//! products of values below 1 (k ≤ 37) fail with probability 2^-26. The protocols that cannot
//! take that risk truncate exactly with a carry comparison ([`super::compare`]).

use super::ProtoResult;
use crate::net::Party;
use crate::ot::{Ot, OtKind};

/// Shares of x ⊙ y (element-wise, mod 2^64) for shared x and y; 128 correlated OTs per element.
pub async fn mul(ot: &mut Ot, kind: OtKind, x: &[u64], y: &[u64]) -> ProtoResult<Vec<u64>> {
    if x.len() != y.len() {
        return Err(super::ProtoError::Input(format!("product of {} and {} values", x.len(), y.len())));
    }
    // cross term 1: the server's x times the client's y; cross term 2: the client's x times the
    // server's y. The party sending a term holds `a`, the one choosing holds `b`.
    let (first, second) = match ot.party() {
        Party::Server => (cross_send(ot, kind, x).await?, cross_receive(ot, kind, y).await?),
        Party::Client => (cross_receive(ot, kind, y).await?, cross_send(ot, kind, x).await?),
    };
    Ok((0..x.len()).map(|i| x[i].wrapping_mul(y[i]).wrapping_add(first[i]).wrapping_add(second[i])).collect())
}

/// The sender's share (−Σ_j r_j) of a·b, for its own `a`.
async fn cross_send(ot: &mut Ot, kind: OtKind, a: &[u64]) -> ProtoResult<Vec<u64>> {
    let deltas: Vec<u64> = a.iter().flat_map(|&v| (0..64).map(move |j| v << j)).collect();
    let r = ot.cot_send(kind, &deltas, 64).await?;
    Ok(r.chunks_exact(64).map(|c| c.iter().fold(0u64, |s, v| s.wrapping_sub(*v))).collect())
}

/// The chooser's share (Σ_j r_j + b_j·a·2^j) of a·b, for its own `b`.
async fn cross_receive(ot: &mut Ot, kind: OtKind, b: &[u64]) -> ProtoResult<Vec<u64>> {
    let choices: Vec<bool> = b.iter().flat_map(|&v| (0..64).map(move |j| (v >> j) & 1 == 1)).collect();
    let got = ot.cot_receive(kind, &choices, 64).await?;
    Ok(got.chunks_exact(64).map(|c| c.iter().fold(0u64, |s, v| s.wrapping_add(*v))).collect())
}

/// Local truncation by `f` bits (see the module's error model).
pub fn truncate(party: Party, shares: &[u64], f: u32) -> Vec<u64> {
    match party {
        Party::Server => shares.iter().map(|&v| v >> f).collect(),
        Party::Client => shares.iter().map(|&v| (v.wrapping_neg() >> f).wrapping_neg()).collect(),
    }
}
