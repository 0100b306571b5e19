//! Secure top-k routing: from shared router logits to XOR-shared one-hot vectors of the chosen
//! experts and arithmetic shares of their gate weights. Neither party learns a choice.
//!
//! Top-k is k rounds of a secure argmax ([`max`], a tree of comparisons; of equal logits the
//! lower expert index wins, as in `torch.topk`/`argmax`), each followed by the one-hot vector of
//! the chosen index ([`one_hot`]) and the removal of that expert: its logit is lowered by
//! 2^(2f+8) (256 in real terms), below every logit still in play. The comparisons run on the
//! router's exact products (2f fractional bits, no truncation yet), so ties are exact and the
//! choice is the plaintext's, bit for bit. Logits must satisfy |l| < 64.
//!
//! Sigmoid routing (DeepSeek-V3's) ranks σ(l) + b instead, and ERNIE-4.5's the softmax
//! probabilities plus b: the scores come from the piecewise σ (or the softmax) at f fractional
//! bits, the server adds its bias b to its own shares (the client never sees it), and the same
//! top-k runs on the sums. The gates are the chosen scores, renormalized by one reciprocal per
//! token; the chosen scores must sum to at least 1/16 when renormalized.
//!
//! Group-limited routing (DeepSeek's, [`GroupLimit`]) first ranks each token's groups: a top-2
//! (sigmoid: the sum of a group's two best σ(l) + b) or an argmax (softmax: its best logit) per
//! group, then the top `chosen` groups by the same top-k; the union of their one-hots, turned
//! arithmetic, lowers every value outside the chosen groups by the removal's 2^(frac+8), so the
//! final top-k picks inside them. The groups chosen stay as secret as the experts.

use super::{GroupLimit, MoeConfig, Routing};
use crate::net::Party;
use crate::proto::arith::{mul_rows_in, truncate, truncate_extend};
use crate::proto::compare::{b2a, max, mux, mux_rows, non_negative, one_hot};
use crate::proto::piecewise::{Piecewise, evaluate};
use crate::proto::softmax::{reciprocal, softmax};
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

/// Comparison width for values at `frac` fractional bits after removals: |a − b| < 2^(frac+9).
fn compare_bits(frac: u32) -> u32 {
    frac + 10
}

/// Most |b| of a selection bias (sigmoid and biased softmax routing): scores plus bias stay
/// below 2^7 in magnitude, inside the top-k's comparisons.
pub const SELECTION_BIAS_BOUND: f64 = 64.0;
/// Renormalized score routing scales each token's sum of chosen scores by 2^this before its
/// reciprocal (whose start covers [1, 128]): with k ≤ 8 scores below 1, sums must be at least
/// [`MIN_SCORE_SUM`].
const SCORE_SUM_SCALE: u32 = 4;
/// The least sum of a token's chosen scores that renormalized sigmoid or biased softmax routing
/// takes, a precondition.
pub const MIN_SCORE_SUM: f64 = 1.0 / (1 << SCORE_SUM_SCALE) as f64;

/// Routes the n tokens of their shared logits (n×E, 2f fractional bits: the router's product).
/// The server passes its selection bias (E values at f fractional bits) when the routing has
/// one ([`Routing::has_selection_bias`]), the client `None`.
#[tracing::instrument(level = "debug", skip_all, fields(n = logits.rows(), experts = cfg.experts, k = cfg.top_k))]
pub async fn route(sess: &mut Session, cfg: &MoeConfig, logits: &Shares, bias: Option<&[i32]>) -> ProtoResult<Routes> {
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
    if bias.is_some_and(|b| b.len() != e) {
        return Err(ProtoError::Input(format!(
            "a selection bias of {} values for {e} experts",
            bias.map_or(0, <[i32]>::len)
        )));
    }
    match cfg.routing {
        Routing::SigmoidTopK { normalize } => {
            let real = truncate(sess, logits, frac).await?;
            let scores = evaluate(sess, &Piecewise::sigmoid(), &real).await?.into_vec();
            return biased_route(sess, cfg, n, scores, bias, normalize).await;
        }
        Routing::BiasedSoftmaxTopK => {
            let real = truncate(sess, logits, frac).await?;
            let p = softmax(sess, &real).await?.into_vec();
            return biased_route(sess, cfg, n, p, bias, true).await;
        }
        Routing::TopKSoftmax | Routing::SoftmaxTopK { .. } | Routing::Switch => {}
    }
    // the comparisons run on the exact products: ties are the plaintext's
    let values = match cfg.groups {
        Some(limit) => within_groups(sess, logits.as_slice().to_vec(), n, e, limit, 1, 2 * frac).await?,
        None => logits.as_slice().to_vec(),
    };
    let (one_hots, chosen) = top_k(sess, &values, n, e, k, 2 * frac).await?;
    let gates = if cfg.unit_gate() {
        unit_gates(sess, n)
    } else if cfg.routing.softmax_over_all() {
        // softmax over all experts, then each slot's probability picked by its one-hot
        let real = truncate(sess, logits, frac).await?;
        let p = softmax(sess, &real).await?.into_vec();
        picked(sess, &one_hots, &p, e).await?
    } else {
        // softmax over each token's k chosen logits (token-major rows of k, back to slot-major)
        let chosen = truncate_extend(sess, &chosen, 64, frac).await?;
        let g = softmax(sess, &sess.shares((n, k), token_major(&chosen, n, k))?).await?.into_vec();
        slot_major(&g, n, k)
    };
    Ok(Routes { one_hot: one_hots, gates })
}

/// Routing by scores in [0, 1] (n×E at f bits: σ(l), or the softmax over all experts): the
/// server's bias added to its shares, top-k of the sums, the chosen scores picked by their
/// one-hots and, when `normalize`, divided by their sum s (one reciprocal per token of
/// 16·s ∈ [1, 128]).
async fn biased_route(
    sess: &mut Session,
    cfg: &MoeConfig,
    n: usize,
    scores: Vec<u64>,
    bias: Option<&[i32]>,
    normalize: bool,
) -> ProtoResult<Routes> {
    let (e, k) = (cfg.experts, cfg.top_k);
    let frac = sess.format().frac_bits();
    let mut choice = scores.clone();
    if let Some(b) = bias {
        for (c, b) in choice.iter_mut().zip(b.iter().cycle()) {
            *c = c.wrapping_add(*b as i64 as u64);
        }
    }
    if let Some(limit) = cfg.groups {
        choice = within_groups(sess, choice, n, e, limit, 2, frac).await?;
    }
    let (one_hots, _) = top_k(sess, &choice, n, e, k, frac).await?;
    if cfg.unit_gate() {
        return Ok(Routes { one_hot: one_hots, gates: unit_gates(sess, n) });
    }
    let gates = picked(sess, &one_hots, &scores, e).await?;
    if !normalize {
        return Ok(Routes { one_hot: one_hots, gates });
    }
    let rows = token_major(&gates, n, k);
    let sums: Vec<u64> = rows.chunks_exact(k).map(|r| r.iter().fold(0u64, |s, v| s.wrapping_add(*v))).collect();
    let scaled: Vec<u64> = sums.iter().map(|s| s << SCORE_SUM_SCALE).collect();
    let r = reciprocal(sess, &Shares::vector(scaled, frac)?).await?.into_vec();
    // g·r < 2^(2f+2) with g < 2 and r ≤ 1; ·16 by truncating 4 bits less
    let bits = 2 * frac + 4;
    let y = mul_rows_in(sess, &rows, &r, frac + 3, bits).await?;
    let g = truncate_extend(sess, &y, bits, frac - SCORE_SUM_SCALE).await?;
    Ok(Routes { one_hot: one_hots, gates: slot_major(&g, n, k) })
}

/// Each token's `values` (n×E at `frac` bits, |v| < 2^7 in real terms) with those outside its
/// chosen groups lowered by 2^(frac+8): a group's score is the sum of its `best` largest values
/// (1 or 2), the top `limit.chosen` scores choose the groups (ranked at frac + 1 bits, where a
/// sum of two values still fits the top-k's range).
async fn within_groups(
    sess: &mut Session,
    mut values: Vec<u64>,
    n: usize,
    e: usize,
    limit: GroupLimit,
    best: usize,
    frac: u32,
) -> ProtoResult<Vec<u64>> {
    let GroupLimit { groups, chosen } = limit;
    let per = e / groups;
    // token-major rows of E are n·groups rows of `per`
    let (_, top) = top_k(sess, &values, n * groups, per, best, frac).await?;
    let scores: Vec<u64> =
        (0..n * groups).map(|i| (0..best).fold(0u64, |s, r| s.wrapping_add(top[r * n * groups + i]))).collect();
    let (slots, _) = top_k(sess, &scores, n, groups, chosen, frac + 1).await?;
    // the chosen groups' one-hots are disjoint: their XOR is their union
    let mut mask = vec![false; n * groups];
    for slot in &slots {
        mask.iter_mut().zip(slot).for_each(|(m, b)| *m ^= b);
    }
    let t = b2a(sess, &Bits::from_bools(&mask)).await?.into_vec();
    // v − 2^(frac+8)·(1 − t): the public part on the server's share
    let removed = 1u64 << (frac + 8);
    let server = sess.is_server();
    for (i, v) in values.iter_mut().enumerate() {
        let lowered = t[i / per].wrapping_mul(removed);
        *v = v.wrapping_add(lowered).wrapping_sub(if server { removed } else { 0 });
    }
    Ok(values)
}

/// k rounds of argmax over each token's row of E `values` (`frac` fractional bits, |v| < 2^7
/// in real terms), each expert chosen lowered by 2^(frac+8) below every one still in play:
/// the slots' one-hot vectors and the chosen values, slot-major.
async fn top_k(
    sess: &mut Session,
    values: &[u64],
    n: usize,
    e: usize,
    k: usize,
    frac: u32,
) -> ProtoResult<(Vec<Vec<bool>>, Vec<u64>)> {
    let removed = 1u64 << (frac + 8);
    let mut live = values.to_vec();
    let (mut one_hots, mut chosen) = (Vec::with_capacity(k), Vec::with_capacity(k * n));
    for r in 0..k {
        let (best, index) = max(sess, &Shares::matrix((n, e), live.clone(), frac)?, compare_bits(frac)).await?;
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
        chosen.extend(best.into_vec());
        one_hots.push(bits);
    }
    Ok((one_hots, chosen))
}

/// Gates of 1 for n tokens: the public 1, held by the server.
fn unit_gates(sess: &Session, n: usize) -> Vec<u64> {
    vec![if sess.is_server() { 1u64 << sess.format().frac_bits() } else { 0 }; n]
}

/// Each slot's value of `values` (n×E) at its chosen expert, slot-major.
async fn picked(sess: &mut Session, one_hots: &[Vec<bool>], values: &[u64], e: usize) -> ProtoResult<Vec<u64>> {
    let mut out = Vec::with_capacity(one_hots.len() * values.len() / e);
    for bits in one_hots {
        let picked = select_rows(sess, bits, values, 1, 64).await?;
        out.extend(picked.chunks_exact(e).map(|row| row.iter().fold(0u64, |s, v| s.wrapping_add(*v))));
    }
    Ok(out)
}

/// Slot-major values (index r·n + j) as token-major rows of k.
fn token_major(v: &[u64], n: usize, k: usize) -> Vec<u64> {
    (0..n * k).map(|i| v[(i % k) * n + i / k]).collect()
}

/// Token-major rows of k back to slot-major.
fn slot_major(v: &[u64], n: usize, k: usize) -> Vec<u64> {
    (0..k * n).map(|i| v[(i % n) * k + i / n]).collect()
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
