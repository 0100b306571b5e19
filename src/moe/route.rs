//! Secure top-k routing: from shared router logits to XOR-shared one-hot vectors of the chosen
//! experts and arithmetic shares of their gate weights. Neither party learns a choice.
//!
//! Top-k is k rounds of a secure argmax ([`max`], a tree of comparisons; of equal logits the
//! lower expert index wins, as in `torch.topk`/`argmax`), each followed by the one-hot vector of
//! the chosen index ([`one_hot`]) and the removal of that expert: its logit is lowered by
//! 2^(2f+8) (256 in real terms), below every logit still in play. The comparisons run on the
//! router's exact products (2f fractional bits, no truncation yet), so ties are exact and the
//! choice is the plaintext's, bit for bit. Logits must satisfy |l| < 64.

use super::MoeConfig;
use crate::net::Party;
use crate::proto::arith::{truncate, truncate_extend};
use crate::proto::compare::{b2a, max, mux, mux_rows, non_negative, one_hot};
use crate::proto::softmax::softmax;
use crate::proto::{ProtoError, ProtoResult, Session};
use crate::ring::{Bits, Shares};

/// The routing of n tokens, slot-major: slot r holds every token's r-th choice.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Per slot r, XOR shares of the one-hot vectors of the tokens' r-th experts (n·E bits,
    /// token-major).
    pub one_hot: Vec<Vec<bool>>,
    /// Arithmetic shares of the gate weights at f fractional bits, index r·n + j.
    pub gates: Vec<u64>,
}

/// Comparison width for logits at 2f fractional bits after removals: |a − b| < 2^(2f+9).
fn compare_bits(frac: u32) -> u32 {
    2 * frac + 10
}

/// Routes the n tokens of their shared logits (n×E, 2f fractional bits: the router's product).
#[tracing::instrument(level = "debug", skip_all, fields(n = logits.rows(), experts = cfg.experts, k = cfg.top_k))]
pub async fn route(sess: &mut Session, cfg: &MoeConfig, logits: &Shares) -> ProtoResult<Routes> {
    let (e, k) = (cfg.experts, cfg.top_k);
    let frac = sess.format().frac_bits();
    let n = logits.rows();
    if logits.cols() != e || logits.width() != 64 || logits.frac_bits() != 2 * frac {
        return Err(ProtoError::Input(format!(
            "router logits of {} for {e} experts at {} fractional bits",
            logits.describe(),
            2 * frac
        )));
    }
    let (shares, logits) = (logits, logits.as_slice());
    let removed = 1u64 << (2 * frac + 8);
    let mut live = logits.to_vec();
    let (mut one_hots, mut chosen) = (Vec::with_capacity(k), Vec::with_capacity(k * n));
    for r in 0..k {
        let (best, index) = max(sess, &Shares::matrix((n, e), live.clone(), 2 * frac)?, compare_bits(frac)).await?;
        let best = best.into_vec();
        let bits: Vec<bool> = if e == 1 {
            // one expert: the one-hot is public, held by the server
            vec![sess.is_server(); n]
        } else {
            one_hot(sess, &index, e).await?.iter().flat_map(Bits::iter).collect()
        };
        if r + 1 < k {
            let t = b2a(sess, &Bits::from_bools(&bits)).await?.into_vec();
            for (l, t) in live.iter_mut().zip(t) {
                *l = l.wrapping_sub(t.wrapping_mul(removed));
            }
        }
        chosen.extend(best);
        one_hots.push(bits);
    }
    let gates = if cfg.unit_gate() {
        // softmax over one logit: the public 1, held by the server
        vec![if sess.is_server() { 1u64 << frac } else { 0 }; n]
    } else if cfg.routing.softmax_over_all() {
        // softmax over all experts, then each slot's probability picked by its one-hot
        let real = truncate(sess, shares, frac).await?;
        let p = softmax(sess, &real).await?.into_vec();
        let mut gates = Vec::with_capacity(k * n);
        for bits in &one_hots {
            let picked = select_rows(sess, bits, &p, 1, 64).await?;
            gates.extend(picked.chunks_exact(e).map(|row| row.iter().fold(0u64, |s, v| s.wrapping_add(*v))));
        }
        gates
    } else {
        // softmax over each token's k chosen logits (token-major rows of k, back to slot-major)
        let chosen = truncate_extend(sess, &chosen, 64, frac).await?;
        let rows: Vec<u64> = (0..n * k).map(|i| chosen[(i % k) * n + i / k]).collect();
        let g = softmax(sess, &sess.shares((n, k), rows)?).await?.into_vec();
        (0..k * n).map(|i| g[(i % n) * k + i / n]).collect()
    };
    Ok(Routes { one_hot: one_hots, gates })
}

/// The routing matrix T[j, e] = [token j is routed to expert e] (the XOR of the slots'
/// one-hot vectors: a token's k choices are distinct experts) as arithmetic shares, and each
/// pair's queue position Σ_{j' < j} T[j', e] (local prefix sums), both n×E token-major.
pub async fn queue(sess: &mut Session, routes: &Routes, n: usize, e: usize) -> ProtoResult<(Vec<u64>, Vec<u64>)> {
    let routed: Vec<bool> = (0..n * e).map(|i| routes.one_hot.iter().fold(false, |acc, t| acc ^ t[i])).collect();
    let t = b2a(sess, &Bits::from_bools(&routed)).await?.into_vec();
    let mut position = vec![0u64; n * e];
    for j in 1..n {
        for i in 0..e {
            position[j * e + i] = position[(j - 1) * e + i].wrapping_add(t[(j - 1) * e + i]);
        }
    }
    Ok((t, position))
}

/// Drops the assignments beyond `capacity` tokens of their expert, in token order, as
/// Switch's `expert_capacity` does: each slot's queue position is picked by its one-hot
/// (one multiplexer per (token, expert)), \[position < capacity\] comes from one sign test and
/// the gate is multiplied by it. Nothing is opened: neither party learns what was dropped.
pub async fn drop_overflow(
    sess: &mut Session,
    routes: &mut Routes,
    n: usize,
    e: usize,
    capacity: usize,
) -> ProtoResult<()> {
    let (_, position) = queue(sess, routes, n, e).await?;
    let k = routes.one_hot.len();
    let bits: Vec<bool> = routes.one_hot.concat();
    let spread: Vec<u64> = (0..k).flat_map(|_| position.iter().copied()).collect();
    let picked = select_rows(sess, &bits, &spread, 1, 64).await?;
    // capacity − 1 − position ≥ 0, with |·| ≤ max(n, capacity) < 2^(width − 1)
    let server = sess.party() == Party::Server;
    let margin: Vec<u64> = picked
        .chunks_exact(e)
        .map(|row| {
            let p = row.iter().fold(0u64, |s, v| s.wrapping_add(*v));
            if server { (capacity as u64 - 1).wrapping_sub(p) } else { p.wrapping_neg() }
        })
        .collect();
    let width = usize::BITS - n.max(capacity).leading_zeros() + 2;
    let keep = non_negative(sess, &Shares::vector(margin, 0)?, width).await?;
    let gates = Shares::vector(std::mem::take(&mut routes.gates), sess.format().frac_bits())?;
    routes.gates = mux(sess, &keep, &gates).await?.into_vec();
    Ok(())
}

/// b_r·x_r for each row r of `len` raw shares read mod 2^`width` (the gates and queue positions
/// of the routing, the experts' rows): [`mux_rows`] on typed values.
pub(super) async fn select_rows(
    sess: &mut Session,
    bits: &[bool],
    values: &[u64],
    len: usize,
    width: u32,
) -> ProtoResult<Vec<u64>> {
    let x = Shares::new((bits.len(), len), values.to_vec(), width, 0)?;
    Ok(mux_rows(sess, &Bits::from_bools(bits), &x).await?.into_vec())
}
