//! The plaintext MoE layer the protocols are checked against: the same fixed-point inputs and
//! weights, the same routing decisions (exact integer logits, ties to the lower index), the
//! same piecewise activations; softmax, products and sums in f64.

use super::weights::ExpertWeights;
use super::{ExpertKind, GroupLimit, MoeConfig, MoeResult, MoeWeights, Routing};
use crate::proto::piecewise::Piecewise;
use crate::ring::{FixedPoint, to_signed};

/// x (n×d, fixed point) times W (d×m, fixed point): exact products at 2f fractional bits.
fn matmul(x: &[u64], w: &[i32], d: usize, m: usize) -> Vec<i128> {
    x.chunks_exact(d)
        .flat_map(|row| {
            (0..m).map(move |c| row.iter().enumerate().map(|(a, &v)| to_signed(v) as i128 * w[a * m + c] as i128).sum())
        })
        .collect()
}

/// The indices of the k largest values, largest first, the lower index first among equals.
pub fn top_k(values: &[i128], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Group-limited routing: `values` with those outside the top `limit.chosen` groups (by the
/// sum of each group's `best` largest values, the lower group first among equals) pushed below
/// every other.
fn within_groups(values: &[i128], limit: GroupLimit, best: usize) -> Vec<i128> {
    let per = values.len() / limit.groups;
    let scores: Vec<i128> = values.chunks_exact(per).map(|g| top_k(g, best).iter().map(|&i| g[i]).sum()).collect();
    let kept = top_k(&scores, limit.chosen);
    values.iter().enumerate().map(|(i, &v)| if kept.contains(&(i / per)) { v } else { v - (1 << 100) }).collect()
}

fn softmax(xs: &[f64]) -> Vec<f64> {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = xs.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// One expert on one token: the hidden layer from the exact product truncated to f bits (as
/// the protocol's truncation), the piecewise activation, then W2 in f64; with `bias`, each
/// matrix's last row is its bias (the input's 1).
fn expert(
    kind: ExpertKind,
    w: &ExpertWeights,
    x: &[u64],
    (d, d_ff): (usize, usize),
    bias: bool,
    format: FixedPoint,
) -> Vec<f64> {
    let f = format.frac_bits();
    let x: Vec<u64> = x.iter().copied().chain(bias.then_some(1u64 << f)).collect();
    let rows = x.len();
    let pre = |m: &[i32]| -> Vec<f64> {
        matmul(&x, m, rows, d_ff).into_iter().map(|v| format.decode((v >> f) as i64 as u64)).collect()
    };
    let a = pre(&w.w1);
    // the activation's pieces at this format (NaN outputs if the format has none: never in range)
    let act = |p: Piecewise| -> Box<dyn Fn(f64) -> f64> {
        match p.for_format(format) {
            Ok(p) => Box::new(move |v| p.approx(v)),
            Err(_) => Box::new(|_| f64::NAN),
        }
    };
    let relu: Box<dyn Fn(f64) -> f64> = Box::new(|v| v.max(0.0));
    let f = kind.activation().map_or(relu, act);
    let hidden: Vec<f64> = if kind.gated() {
        let b = pre(w.w3.as_deref().unwrap_or(&[]));
        let identity: Box<dyn Fn(f64) -> f64> = Box::new(|v| v);
        let up = kind.up_branch().map_or(identity, act);
        a.iter().zip(&b).map(|(&a, &b)| f(a) * up(b)).collect()
    } else {
        a.iter().map(|&v| f(v)).collect()
    };
    let hidden: Vec<f64> = hidden.into_iter().chain(bias.then_some(1.0)).collect();
    (0..d).map(|c| hidden.iter().enumerate().map(|(a, h)| h * w.w2[a * d + c] as f64 / format.scale()).sum()).collect()
}

/// What the plaintext layer gives.
#[derive(Debug, Clone)]
pub struct Reference {
    /// The output, n×d, in real terms.
    pub y: Vec<f64>,
    /// Each token's chosen experts, best first.
    pub chosen: Vec<Vec<usize>>,
    /// Assignments dropped for want of a slot (capacity dispatch).
    pub dropped: usize,
}

/// The layer on n tokens of `x` (n×d). With `capacity` = Some(C) (capacity dispatch), or
/// else the model's own `expert_capacity`, each expert keeps the first C tokens routed to it
/// in token order and the later ones contribute nothing.
pub fn reference(
    cfg: &MoeConfig,
    format: FixedPoint,
    x: &[u64],
    w: &MoeWeights,
    capacity: Option<usize>,
) -> MoeResult<Reference> {
    cfg.validate()?;
    w.check(cfg, format)?;
    let capacity = capacity.or(cfg.expert_capacity);
    let (e, d) = (cfg.experts, cfg.d_model);
    let mut logits = matmul(x, &w.router, d, e);
    if let Some(b) = &w.logit_bias {
        let f = format.frac_bits();
        logits.chunks_exact_mut(e).for_each(|row| row.iter_mut().zip(b).for_each(|(l, &b)| *l += (b as i128) << f));
    }
    let scale2 = format.scale() * format.scale();
    let (mut y, mut chosen, mut dropped) = (Vec::new(), Vec::new(), 0);
    let mut queue = vec![0usize; e];
    for (j, token) in x.chunks_exact(d).enumerate() {
        let row = &logits[j * e..(j + 1) * e];
        let real: Vec<f64> = row.iter().map(|&v| v as f64 / scale2).collect();
        let (picks, gates) = match cfg.routing {
            Routing::SigmoidTopK { .. } | Routing::BiasedSoftmaxTopK => {
                // σ of the logits truncated to f bits, as the protocol's piecewise σ (or the
                // softmax, rounded to f bits); ranked with the bias added
                let f = format.frac_bits();
                let (scores, normalize): (Vec<i128>, bool) = match cfg.routing {
                    Routing::SigmoidTopK { normalize } => {
                        let sigmoid = Piecewise::sigmoid().for_format(format)?;
                        let s = row.iter().map(|&v| to_signed(sigmoid.reference((v >> f) as i64 as u64)) as i128);
                        (s.collect(), normalize)
                    }
                    _ => (softmax(&real).iter().map(|p| (p * format.scale()).round() as i128).collect(), true),
                };
                let mut choice: Vec<i128> = match &w.selection_bias {
                    Some(b) => scores.iter().zip(b).map(|(s, &b)| s + b as i128).collect(),
                    None => scores.clone(),
                };
                if let Some(limit) = cfg.groups {
                    choice = within_groups(&choice, limit, 2);
                }
                let picks = top_k(&choice, cfg.top_k);
                let mut g: Vec<f64> = picks.iter().map(|&i| scores[i] as f64 / format.scale()).collect();
                if normalize {
                    let s: f64 = g.iter().sum();
                    g.iter_mut().for_each(|v| *v /= s);
                }
                (picks, g)
            }
            Routing::TopKSoftmax | Routing::SoftmaxTopK { .. } | Routing::Switch => {
                let picks = match cfg.groups {
                    Some(limit) => top_k(&within_groups(row, limit, 1), cfg.top_k),
                    None => top_k(row, cfg.top_k),
                };
                let gates: Vec<f64> = if cfg.routing.softmax_over_all() {
                    let p = softmax(&real);
                    picks.iter().map(|&i| p[i]).collect()
                } else {
                    softmax(&picks.iter().map(|&i| real[i]).collect::<Vec<_>>())
                };
                (picks, gates)
            }
        };
        let mut out = vec![0.0; d];
        for (&i, g) in picks.iter().zip(&gates) {
            queue[i] += 1;
            if capacity.is_some_and(|c| queue[i] > c) {
                dropped += 1;
                continue;
            }
            let o = expert(cfg.expert, &w.experts[i], token, (d, cfg.d_ff), cfg.expert_bias, format);
            out.iter_mut().zip(o).for_each(|(y, o)| *y += g * o);
        }
        if let (Some(shape), Some(s)) = (cfg.shared, &w.shared) {
            let o = expert(cfg.expert, &s.expert, token, (d, shape.d_ff), false, format);
            let scale = match &s.gate {
                Some(g) => 1.0 / (1.0 + (-(matmul(token, g, d, 1)[0] as f64 / scale2)).exp()),
                None => 1.0,
            };
            out.iter_mut().zip(o).for_each(|(y, o)| *y += scale * o);
        }
        y.extend(out);
        chosen.push(picks);
    }
    Ok(Reference { y, chosen, dropped })
}
