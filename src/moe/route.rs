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
use crate::proto::arith::truncate;
use crate::proto::compare::{b2a, max, mux_rows, one_hot};
use crate::proto::softmax::softmax;
use crate::proto::{ProtoResult, Session};

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

/// Routes `n` tokens from their shared logits (n×E, 2f fractional bits).
#[tracing::instrument(level = "debug", skip_all, fields(n, experts = cfg.experts, k = cfg.top_k))]
pub async fn route(sess: &mut Session, cfg: &MoeConfig, logits: &[u64], n: usize) -> ProtoResult<Routes> {
    let (e, k) = (cfg.experts, cfg.top_k);
    let frac = sess.format().frac_bits();
    let removed = 1u64 << (2 * frac + 8);
    let mut live = logits.to_vec();
    let (mut one_hots, mut chosen) = (Vec::with_capacity(k), Vec::with_capacity(k * n));
    for r in 0..k {
        let (best, index) = max(sess, &live, e, compare_bits(frac)).await?;
        let bits: Vec<bool> = if e == 1 {
            // one expert: the one-hot is public, held by the server
            vec![sess.is_server(); n]
        } else {
            one_hot(sess, &index, e).await?.concat()
        };
        if r + 1 < k {
            let t = b2a(sess, &bits).await?;
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
        let real = truncate(sess, logits, frac).await?;
        let p = softmax(sess, &real, e).await?;
        let mut gates = Vec::with_capacity(k * n);
        for bits in &one_hots {
            let picked = mux_rows(sess, bits, &p, 1).await?;
            gates.extend(picked.chunks_exact(e).map(|row| row.iter().fold(0u64, |s, v| s.wrapping_add(*v))));
        }
        gates
    } else {
        // softmax over each token's k chosen logits (token-major rows of k, back to slot-major)
        let chosen = truncate(sess, &chosen, frac).await?;
        let rows: Vec<u64> = (0..n * k).map(|i| chosen[(i % k) * n + i / k]).collect();
        let g = softmax(sess, &rows, k).await?;
        (0..k * n).map(|i| g[(i % n) * k + i / n]).collect()
    };
    Ok(Routes { one_hot: one_hots, gates })
}
