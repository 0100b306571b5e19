//! The plaintext model in f64 on the checkpoint's f32 weights, written after the `transformers`
//! modelling code of each family: what private inference is compared with (and what the
//! `transformers` reference check compares this engine's loader and conventions with).

use super::config::{Ffn, LatentAttention, ModelConfig, Positions, Yarn, relative_bucket};
use super::ranges::{Margin, Quantity, Ranges};
use super::weights::{FfnWeights, HeadMaps, LatentMaps, LayerWeights, Mlp, MlpBias, QkvWeights, WeightSource};
use super::{ModelError, ModelResult};
use crate::moe::{ExpertKind, GroupLimit, MoeConfig, Routing};
use crate::proto::layernorm::NormRange;
use crate::proto::piecewise::Piecewise;
use crate::ring::FixedPoint;

/// x (n×d) · W (d×m), W in f32.
fn matmul(x: &[f64], w: &[f32], d: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len() / d * m];
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(m)) {
        for (a, &v) in row.iter().enumerate() {
            for (o, &w) in o.iter_mut().zip(&w[a * m..(a + 1) * m]) {
                *o += v * w as f64;
            }
        }
    }
    out
}

fn rmsnorm(x: &[f64], gamma: &[f32], eps: f64) -> Vec<f64> {
    let d = gamma.len();
    x.chunks_exact(d)
        .flat_map(|row| {
            let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt();
            row.iter().zip(gamma).map(move |(v, &g)| v * r * g as f64)
        })
        .collect()
}

fn softmax(xs: &[f64]) -> Vec<f64> {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = xs.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// The rotary embedding's (cos, sin) at `position` for each of the `dims / 2` frequencies of
/// a head's `dims` rotated entries, YaRN's when given (its frequencies, cos and sin times its
/// attention factor).
pub(crate) fn rope_table(theta: f64, dims: usize, yarn: Option<Yarn>, position: usize) -> Vec<(f64, f64)> {
    // transformers computes the frequencies and angles in f32
    let inverse: Vec<f32> = match yarn {
        Some(y) => y.inverse_frequencies(theta, dims),
        None => (0..dims / 2).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / dims as f32)).collect(),
    };
    let m = yarn.map_or(1.0, |y| y.attention);
    inverse
        .into_iter()
        .map(|inv| {
            let angle = (position as f32 * inv) as f64;
            (angle.cos() * m, angle.sin() * m)
        })
        .collect()
}

/// Columns [at, at + width) of each row of a matrix with `cols` columns.
pub(crate) fn columns<T: Copy>(x: &[T], cols: usize, at: usize, width: usize) -> Vec<T> {
    x.chunks_exact(cols).flat_map(|r| r[at..at + width].iter().copied()).collect()
}

/// Latent attention's keys and values from the latent's map `kv` (rows of `heads` ×
/// (nope + v_dim): each head's unrotated key entries, then its value) and the rotated key
/// part `k_rot` (rows of `rope`, one for all heads): each head's key is its nope entries then
/// the rotated part, as `transformers` concatenates them.
pub(crate) fn latent_keys_values<T: Copy>(
    kv: &[T],
    k_rot: &[T],
    heads: usize,
    nope: usize,
    v_dim: usize,
) -> (Vec<T>, Vec<T>) {
    let per_head = nope + v_dim;
    let rope = k_rot.len() / (kv.len() / (heads * per_head));
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for (row, rot) in kv.chunks_exact(heads * per_head).zip(k_rot.chunks_exact(rope)) {
        for head in row.chunks_exact(per_head) {
            keys.extend_from_slice(&head[..nope]);
            keys.extend_from_slice(rot);
            values.extend_from_slice(&head[nope..]);
        }
    }
    (keys, values)
}

/// Entry j (< `dims`) of a rotated head becomes x_j·cos + s·x_partner·sin at its frequency:
/// (partner, whether s = −1, frequency index).
pub(crate) fn rotary_pair(j: usize, dims: usize, interleaved: bool) -> (usize, bool, usize) {
    let h = dims / 2;
    match (interleaved, j < h) {
        (true, _) => (j ^ 1, j.is_multiple_of(2), j / 2),
        (false, true) => (j + h, true, j),
        (false, false) => (j - h, false, j - h),
    }
}

/// Rotates entries [at, at + dims) of each head of each row (n rows of heads·dim, positions
/// 0, 1, …); the others pass.
fn rope(x: &mut [f64], (heads, dim, at): (usize, usize, usize), positions: Positions) {
    let Positions::Rope { theta, dims, interleaved, yarn } = positions else { return };
    for (p, row) in x.chunks_exact_mut(heads * dim).enumerate() {
        let table = rope_table(theta, dims, yarn, p);
        for head in row.chunks_exact_mut(dim) {
            let head = &mut head[at..at + dims];
            let old = head.to_vec();
            for (j, v) in head.iter_mut().enumerate() {
                let (partner, negated, i) = rotary_pair(j, dims, interleaved);
                let other = if negated { -old[partner] } else { old[partner] };
                *v = old[j] * table[i].0 + other * table[i].1;
            }
        }
    }
}

/// How the plaintext model computes the experts' activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// Exactly: the model as `transformers` computes it.
    #[default]
    Exact,
    /// On the piecewise quadratics the protocols evaluate ([`ExpertKind::activation`]): the
    /// distance to [`Activations::Exact`] is the fits' share of private inference's error.
    Fitted,
}

/// How the plaintext model departs from the model as `transformers` computes it, to tell the
/// sources of private inference's error apart. The default departs in nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Variant {
    /// How the experts' activations are computed.
    pub activations: Activations,
    /// Routing choices broken the other way, as (layer, token): the token's last expert chosen
    /// there gives way to the next — what a private run whose values differ from the f64
    /// model's by more than a near-tie's margin ([`super::NEAR_TIE`]) may do.
    pub flipped: Vec<(usize, usize)>,
}

impl Variant {
    /// The experts' activations on the protocols' fits, nothing else changed.
    pub fn fitted() -> Variant {
        Variant { activations: Activations::Fitted, ..Variant::default() }
    }
}

impl Activations {
    /// `f` at x, or `otherwise` where the expert has no piecewise function there (ReLU; an
    /// ungated up branch).
    fn apply(self, f: Option<&Piecewise>, otherwise: fn(f64) -> f64, x: f64) -> f64 {
        match (f, self) {
            (None, _) => otherwise(x),
            (Some(f), Activations::Exact) => f.exact(x),
            (Some(f), Activations::Fitted) => f.approx(x),
        }
    }
}

/// Adds `bias` to every row of `y` (rows as wide as it).
fn add_bias(mut y: Vec<f64>, bias: Option<&[f32]>) -> Vec<f64> {
    if let Some(b) = bias {
        y.chunks_exact_mut(b.len()).for_each(|r| r.iter_mut().zip(b).for_each(|(y, b)| *y += *b as f64));
    }
    y
}

/// One expert (d×d_ff) on rows of x, its pre-activations seen at `site`.
fn mlp(
    w: &Mlp,
    (kind, acts): (ExpertKind, Activations),
    x: &[f64],
    d_ff: usize,
    probe: &mut Ranges,
    site: &str,
) -> Vec<f64> {
    let d = w.w1.len() / d_ff;
    let bias = w.bias.as_ref();
    let (gate, up) = (kind.activation(), kind.up_branch());
    let gate = |g: f64| acts.apply(gate.as_ref(), |g| g.max(0.0), g);
    let a = add_bias(matmul(x, &w.w1, d, d_ff), bias.map(|b| b.b1.as_slice()));
    probe.see(site, Quantity::Activation(kind), &a);
    let h: Vec<f64> = match &w.w3 {
        Some(w3) => {
            let u = add_bias(matmul(x, w3, d, d_ff), bias.and_then(|b| b.b3.as_deref()));
            probe.see(site, Quantity::UpBranch(kind), &u);
            a.iter().zip(u).map(|(&g, u)| gate(g) * acts.apply(up.as_ref(), |u| u, u)).collect()
        }
        None => a.iter().map(|&g| gate(g)).collect(),
    };
    add_bias(matmul(&h, &w.w2, d_ff, d), bias.map(|b| b.b2.as_slice()))
}

/// The indices of the k largest values, largest first, the lower index first among equals.
/// Weights divided by their sum.
fn normalized(mut g: Vec<f64>) -> Vec<f64> {
    let s: f64 = g.iter().sum();
    g.iter_mut().for_each(|v| *v /= s);
    g
}

fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Token `token`'s top k of its router `values` (−∞: masked) at layer `layer`, the choice's
/// margin recorded in `probe`; the last chosen and the next swapped where `variant` flips it.
fn choose(
    values: &[f64],
    k: usize,
    variant: &Variant,
    probe: &mut Ranges,
    (layer, token): (usize, usize),
) -> Vec<usize> {
    let mut c = top_k(values, k + 1);
    if let Some(&next) = c.get(k).filter(|&&i| values[i].is_finite()) {
        probe.see_margin(layer, token, values[c[k - 1]] - values[next]);
        if variant.flipped.contains(&(layer, token)) {
            c.swap(k - 1, k);
        }
    }
    c.truncate(k);
    c
}

/// Group-limited routing: `values` with those outside the top `limit.chosen` groups (by the
/// sum of each group's `best` largest) set to −∞, as DeepSeek's routers mask them.
fn within_groups(values: &[f64], limit: GroupLimit, best: usize) -> Vec<f64> {
    let per = values.len() / limit.groups;
    let scores: Vec<f64> = values.chunks_exact(per).map(|g| top_k(g, best).iter().map(|&i| g[i]).sum()).collect();
    let kept = top_k(&scores, limit.chosen);
    values.iter().enumerate().map(|(i, &v)| if kept.contains(&(i / per)) { v } else { f64::NEG_INFINITY }).collect()
}

/// A MoE block on rows of x, the routed experts' gates times `routed`; Switch drops a token
/// beyond `expert_capacity` tokens of its expert (in position order), as `transformers` does.
fn moe(
    m: &MoeConfig,
    w: &FfnWeights,
    x: &[f64],
    routed: f64,
    variant: &Variant,
    probe: &mut Ranges,
    layer: usize,
) -> ModelResult<Vec<f64>> {
    let FfnWeights::Moe { router, logit_bias, selection_bias, experts, shared } = w else {
        return Err(ModelError::Weights("a MoE layer with dense weights".into()));
    };
    let d = m.d_model;
    let logits = add_bias(matmul(x, router, d, m.experts), logit_bias.as_deref());
    probe.see(format!("layers.{layer}.router"), Quantity::RouterLogit, &logits);
    let site = format!("layers.{layer}.experts");
    let mut y = vec![0.0; x.len()];
    let mut load = vec![0usize; m.experts];
    for (t, (row, l)) in x.chunks_exact(d).zip(logits.chunks_exact(m.experts)).enumerate() {
        let probs = softmax(l);
        // a router's softmax takes its logits within the exp's window of their largest: all E,
        // or Mixtral's chosen k
        let top = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let router = format!("layers.{layer}.router");
        let (chosen, gates): (Vec<usize>, Vec<f64>) = match m.routing {
            Routing::TopKSoftmax => {
                let c = choose(l, m.top_k, variant, probe, (layer, t));
                if m.top_k > 1 {
                    probe.see(&router, Quantity::ScoreSpread, &c.iter().map(|&i| top - l[i]).collect::<Vec<_>>());
                }
                let g = softmax(&c.iter().map(|&i| l[i]).collect::<Vec<_>>());
                (c, g)
            }
            Routing::Switch | Routing::SoftmaxTopK { .. } => {
                probe.see(&router, Quantity::ScoreSpread, &l.iter().map(|v| top - v).collect::<Vec<_>>());
                // on the logits, whose order the softmax keeps (a group's best too)
                let kept = m.groups.map(|limit| within_groups(l, limit, 1));
                let c = choose(kept.as_deref().unwrap_or(l), m.top_k, variant, probe, (layer, t));
                let g: Vec<f64> = c.iter().map(|&i| probs[i]).collect();
                let normalize = m.routing == Routing::SoftmaxTopK { normalize: true };
                (c, if normalize { normalized(g) } else { g })
            }
            Routing::SigmoidTopK { .. } | Routing::BiasedSoftmaxTopK => {
                // the bias steers the choice, the scores are the gates
                let (scores, normalize) = match m.routing {
                    Routing::SigmoidTopK { normalize } => {
                        (l.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect(), normalize)
                    }
                    _ => {
                        probe.see(&router, Quantity::ScoreSpread, &l.iter().map(|v| top - v).collect::<Vec<_>>());
                        (probs, true)
                    }
                };
                let mut choice: Vec<f64> = match selection_bias {
                    Some(b) => scores.iter().zip(b).map(|(s, &b)| s + b as f64).collect(),
                    None => scores.clone(),
                };
                if let Some(limit) = m.groups {
                    choice = within_groups(&choice, limit, 2);
                }
                let c = choose(&choice, m.top_k, variant, probe, (layer, t));
                let g: Vec<f64> = c.iter().map(|&i| scores[i]).collect();
                if normalize && m.top_k > 1 {
                    let sum: f64 = g.iter().sum();
                    probe.see(&router, Quantity::ScoreSumReciprocal, &[1.0 / sum]);
                }
                (c, if normalize { normalized(g) } else { g })
            }
        };
        let gates = gates.into_iter().map(|g| g * routed);
        for (&e, g) in chosen.iter().zip(gates) {
            load[e] += 1;
            if m.expert_capacity.is_some_and(|c| load[e] > c) {
                continue;
            }
            let out = mlp(&experts[e], (m.expert, variant.activations), row, m.d_ff, probe, &site);
            y[t * d..(t + 1) * d].iter_mut().zip(out).for_each(|(y, o)| *y += g * o);
        }
    }
    if let (Some((expert, gate)), Some(s)) = (shared, m.shared) {
        let site = format!("layers.{layer}.shared_expert");
        let out = mlp(expert, (m.expert, variant.activations), x, s.d_ff, probe, &site);
        let scale: Vec<f64> = match gate {
            Some(g) => {
                let z = matmul(x, g, d, 1);
                probe.see(site, Quantity::SharedGateLogit, &z);
                z.into_iter().map(|z| 1.0 / (1.0 + (-z).exp())).collect()
            }
            None => vec![1.0; x.len() / d],
        };
        for ((y, o), s) in y.chunks_exact_mut(d).zip(out.chunks_exact(d)).zip(scale) {
            y.iter_mut().zip(o).for_each(|(y, o)| *y += s * o);
        }
    }
    Ok(y)
}

/// q, k and v of multi-head latent attention on the normed rows `a` (n×d), rotated.
fn latent_qkv(
    cfg: &ModelConfig,
    l: LatentAttention,
    m: &LatentMaps,
    a: &[f64],
    probe: &mut Ranges,
    layer: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (d, hd, qw) = (cfg.d_model, cfg.head_dim, cfg.heads * cfg.head_dim);
    let mut q = match &m.q_a {
        Some((wa, gamma)) => {
            let r = gamma.len();
            let x = matmul(a, wa, d, r);
            probe.see(format!("layers.{layer}.q_a_norm"), Quantity::NormInput, &x);
            matmul(&rmsnorm(&x, gamma, cfg.norm_eps), &m.wq, r, qw)
        }
        None => matmul(a, &m.wq, d, qw),
    };
    let width = l.kv_rank + l.rope;
    let x = matmul(a, &m.wkv_a, d, width);
    let (latent, mut k_rot) = (columns(&x, width, 0, l.kv_rank), columns(&x, width, l.kv_rank, l.rope));
    probe.see(format!("layers.{layer}.kv_a_norm"), Quantity::NormInput, &latent);
    let nope = hd - l.rope;
    let kv = matmul(&rmsnorm(&latent, &m.kv_norm, cfg.norm_eps), &m.wkv_b, l.kv_rank, cfg.heads * (nope + l.v_dim));
    rope(&mut q, (cfg.heads, hd, cfg.rotary_at()), cfg.positions);
    rope(&mut k_rot, (1, l.rope, 0), cfg.positions);
    let (k, v) = latent_keys_values(&kv, &k_rot, cfg.heads, nope, l.v_dim);
    (q, k, v)
}

/// Self-attention of one block on the normed rows `a` (n×d).
fn attention(
    cfg: &ModelConfig,
    w: &LayerWeights,
    a: &[f64],
    bias: Option<&[f32]>,
    probe: &mut Ranges,
    layer: usize,
) -> ModelResult<Vec<f64>> {
    let (d, hd, vd, n) = (cfg.d_model, cfg.head_dim, cfg.v_head_dim(), a.len() / cfg.d_model);
    let (qw, kw, vw) = (cfg.heads * hd, cfg.kv_heads * hd, cfg.kv_heads * vd);
    let (q, k, v) = match (&w.qkv, cfg.latent) {
        (QkvWeights::Heads(h), None) => {
            let project = |m: &[f32], width: usize, b: Option<&Vec<f32>>| -> Vec<f64> {
                let mut y = matmul(a, m, d, width);
                if let Some(b) = b {
                    y.chunks_exact_mut(width).for_each(|r| r.iter_mut().zip(b).for_each(|(y, b)| *y += *b as f64));
                }
                y
            };
            let bias_of = |i: usize| h.bias.as_ref().map(|b| &b[i]);
            let (mut q, mut k, v) =
                (project(&h.wq, qw, bias_of(0)), project(&h.wk, kw, bias_of(1)), project(&h.wv, kw, bias_of(2)));
            if let Some([gq, gk]) = &h.qk_norm {
                probe.see(format!("layers.{layer}.q_norm"), Quantity::NormInput, &q);
                probe.see(format!("layers.{layer}.k_norm"), Quantity::NormInput, &k);
                q = rmsnorm(&q, gq, cfg.norm_eps);
                k = rmsnorm(&k, gk, cfg.norm_eps);
            }
            rope(&mut q, (cfg.heads, hd, cfg.rotary_at()), cfg.positions);
            rope(&mut k, (cfg.kv_heads, hd, cfg.rotary_at()), cfg.positions);
            (q, k, v)
        }
        (QkvWeights::Latent(m), Some(l)) => latent_qkv(cfg, l, m, a, probe, layer),
        _ => {
            return Err(ModelError::Weights(format!(
                "layer {layer}: attention maps of another kind than the config's"
            )));
        }
    };
    let site = format!("layers.{layer}.attention");
    let group = cfg.heads / cfg.kv_heads;
    let ow = cfg.heads * vd;
    let mut o = vec![0.0; n * ow];
    for h in 0..cfg.heads {
        let g = h / group;
        for i in 0..n {
            let keys: Vec<usize> = (0..n).filter(|&j| cfg.attends(layer, i, j)).collect();
            let mut scores: Vec<f64> = keys
                .iter()
                .map(|&j| {
                    let dot: f64 = (0..hd).map(|c| q[i * qw + h * hd + c] * k[j * kw + g * hd + c]).sum();
                    let b = match (bias, cfg.positions) {
                        (Some(t), Positions::RelativeBias { buckets, max_distance }) => {
                            t[relative_bucket(j as i64 - i as i64, buckets, max_distance) * cfg.heads + h] as f64
                        }
                        _ => 0.0,
                    };
                    dot * cfg.score_scale + b
                })
                .collect();
            // the head's sink joins the softmax, its probability dropped after
            scores.extend(w.sinks.as_ref().map(|s| s[h] as f64));
            let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            probe.see(&site, Quantity::Score, &scores);
            probe.see(&site, Quantity::ScoreSpread, &scores.iter().map(|s| top - s).collect::<Vec<_>>());
            let p = softmax(&scores);
            for c in 0..vd {
                o[i * ow + h * vd + c] = keys.iter().zip(&p).map(|(&j, p)| p * v[j * vw + g * vd + c]).sum();
            }
        }
    }
    Ok(add_bias(matmul(&o, &w.wo, ow, d), w.bo.as_deref()))
}

/// The model's output for token ids: n rows of [`ModelConfig::output_width`] (logits, or the
/// encoder's final hidden states).
pub fn forward(cfg: &ModelConfig, weights: &dyn WeightSource, ids: &[u32]) -> ModelResult<Vec<f64>> {
    forward_with(cfg, weights, ids, &Variant::default())
}

/// [`forward`] of a [`Variant`] of the model.
pub fn forward_with(
    cfg: &ModelConfig,
    weights: &dyn WeightSource,
    ids: &[u32],
    variant: &Variant,
) -> ModelResult<Vec<f64>> {
    let (mut out, _) = forward_variants(cfg, weights, ids, std::slice::from_ref(variant), NormRange::DEFAULT)?;
    Ok(out.remove(0))
}

/// [`forward_with`] for each variant in one pass over the weights (each layer read, or drawn,
/// once), and the [`Ranges`] the first took, against those of a session whose norms take
/// `norms`.
pub fn forward_variants(
    cfg: &ModelConfig,
    weights: &dyn WeightSource,
    ids: &[u32],
    variants: &[Variant],
    norms: NormRange,
) -> ModelResult<(Vec<Vec<f64>>, Ranges)> {
    let mut probe = Ranges::new(norms);
    let out = forward_probed(cfg, weights, ids, variants, &mut probe)?;
    Ok((out, probe))
}

/// The [`Variant`] with the routing near-ties a private run broke the other way flipped, and the
/// run's distances to it. `got` is the run's output, `errors` its distances to the model as is
/// (per output value) and `ties` the model's near-ties ([`Ranges::near_ties`]). While some
/// token is farther than `bound`, every combination of the near-ties at the first such token
/// (at most three: a flip there moves that token and, through attention, the later ones only)
/// is tried in one pass over the weights, and the closest kept if it brings that token within
/// `bound`; where none does, the search stops, and the distances returned show what is left.
pub fn resolve_near_ties(
    cfg: &ModelConfig,
    weights: &dyn WeightSource,
    ids: &[u32],
    (got, mut errors): (&[f64], Vec<f64>),
    ties: &[Margin],
    bound: f64,
) -> ModelResult<(Variant, Vec<f64>)> {
    let width = cfg.output_width();
    if got.len() != ids.len() * width || errors.len() != got.len() {
        return Err(ModelError::Input(format!(
            "{} outputs and {} distances for {} tokens of {width}",
            got.len(),
            errors.len(),
            ids.len()
        )));
    }
    let mut resolved = Variant::default();
    let token_error = |e: &[f64], t: usize| e[t * width..(t + 1) * width].iter().copied().fold(0.0, f64::max);
    while let Some(token) = (0..ids.len()).find(|&t| token_error(&errors, t) > bound) {
        let at: Vec<(usize, usize)> =
            ties.iter().filter(|m| m.token == token).map(|m| (m.layer, m.token)).take(3).collect();
        let variants: Vec<Variant> = (1..1u32 << at.len())
            .map(|subset| {
                let extra = at.iter().enumerate().filter(|(i, _)| subset >> i & 1 == 1).map(|(_, s)| *s);
                Variant { flipped: resolved.flipped.iter().copied().chain(extra).collect(), ..Variant::default() }
            })
            .collect();
        if variants.is_empty() {
            break;
        }
        let (wanted, _) = forward_variants(cfg, weights, ids, &variants, NormRange::DEFAULT)?;
        let best = wanted
            .iter()
            .map(|want| got.iter().zip(want).map(|(g, w)| (g - w).abs()).collect::<Vec<f64>>())
            .zip(variants)
            .min_by(|(a, _), (b, _)| token_error(a, token).total_cmp(&token_error(b, token)));
        match best {
            Some((e, v)) if token_error(&e, token) <= bound => (errors, resolved) = (e, v),
            _ => break,
        }
    }
    Ok((resolved, errors))
}

/// [`forward_variants`], recording the values of the first at every site with a stated range
/// in `probe`.
pub(super) fn forward_probed(
    cfg: &ModelConfig,
    weights: &dyn WeightSource,
    ids: &[u32],
    variants: &[Variant],
    probe: &mut Ranges,
) -> ModelResult<Vec<Vec<f64>>> {
    let d = cfg.d_model;
    let table = weights.embedding()?;
    let mut x = Vec::with_capacity(ids.len() * d);
    for &id in ids {
        let row = table.get(id as usize * d..(id as usize + 1) * d);
        let row =
            row.ok_or_else(|| ModelError::Input(format!("token id {id} is not below the vocabulary {}", cfg.vocab)))?;
        x.extend(row.iter().map(|&v| v as f64 * cfg.scales.embedding));
    }
    let mut xs = vec![x; variants.len()];
    let bias = weights.position_bias()?;
    let mut unrecorded = Ranges::default();
    for i in 0..cfg.ffn.len() {
        let w = weights.layer(i)?;
        for (j, (x, variant)) in xs.iter_mut().zip(variants).enumerate() {
            let probe = if j == 0 { &mut *probe } else { &mut unrecorded };
            block(cfg, (i, &w), x, bias.as_deref(), variant, probe)?;
        }
    }
    let gamma = weights.final_norm()?;
    let head = weights.lm_head()?.filter(|_| cfg.lm_head);
    let mut out = Vec::with_capacity(xs.len());
    for (j, x) in xs.into_iter().enumerate() {
        if j == 0 {
            probe.see("final_norm", Quantity::NormInput, &x);
        }
        let x = rmsnorm(&x, &gamma, cfg.norm_eps);
        out.push(match &head {
            Some(head) => matmul(&x, head, d, cfg.vocab).into_iter().map(|l| l * cfg.scales.logits).collect(),
            None => x,
        });
    }
    Ok(out)
}

/// Layer `i` (weights `w`) on the residual stream x, in place.
fn block(
    cfg: &ModelConfig,
    (i, w): (usize, &LayerWeights),
    x: &mut [f64],
    bias: Option<&[f32]>,
    variant: &Variant,
    probe: &mut Ranges,
) -> ModelResult<()> {
    let residual = cfg.scales.residual;
    probe.see(format!("layers.{i}.attn_norm"), Quantity::NormInput, &*x);
    let a = rmsnorm(x, &w.attn_norm, cfg.norm_eps);
    let o = attention(cfg, w, &a, bias, probe, i)?;
    x.iter_mut().zip(o).for_each(|(x, o)| *x += residual * o);
    probe.see(format!("layers.{i}.ffn_norm"), Quantity::NormInput, &*x);
    let b = rmsnorm(x, &w.ffn_norm, cfg.norm_eps);
    let y = match (&cfg.ffn[i], &w.ffn) {
        (Ffn::Dense { d_ff, kind }, FfnWeights::Dense(m)) => {
            mlp(m, (*kind, variant.activations), &b, *d_ff, probe, &format!("layers.{i}.mlp"))
        }
        (Ffn::Moe(m), f) => moe(m, f, &b, cfg.scales.routed, variant, probe, i)?,
        (Ffn::Dense { .. }, _) => {
            return Err(ModelError::Weights(format!("layer {i}: MoE weights for a dense block")));
        }
    };
    x.iter_mut().zip(y).for_each(|(x, y)| *x += residual * y);
    Ok(())
}

/// A weight source with every weight rounded to the fixed-point format, as the server's
/// encoding rounds it ([`crate::ring::FixedPoint::encode_named`]).
struct Quantized<'a> {
    inner: &'a dyn WeightSource,
    format: FixedPoint,
}

impl Quantized<'_> {
    fn round(&self, mut v: Vec<f32>) -> Vec<f32> {
        let scale = self.format.scale();
        v.iter_mut().for_each(|x| *x = ((*x as f64 * scale).round() / scale) as f32);
        v
    }

    fn mlp(&self, m: Mlp) -> Mlp {
        Mlp {
            w1: self.round(m.w1),
            w3: m.w3.map(|w| self.round(w)),
            w2: self.round(m.w2),
            bias: m.bias.map(|b| MlpBias {
                b1: self.round(b.b1),
                b3: b.b3.map(|b| self.round(b)),
                b2: self.round(b.b2),
            }),
        }
    }
}

impl WeightSource for Quantized<'_> {
    fn embedding(&self) -> ModelResult<Vec<f32>> {
        Ok(self.round(self.inner.embedding()?))
    }

    fn layer(&self, i: usize) -> ModelResult<LayerWeights> {
        let l = self.inner.layer(i)?;
        Ok(LayerWeights {
            attn_norm: self.round(l.attn_norm),
            qkv: match l.qkv {
                QkvWeights::Heads(h) => QkvWeights::Heads(HeadMaps {
                    wq: self.round(h.wq),
                    wk: self.round(h.wk),
                    wv: self.round(h.wv),
                    bias: h.bias.map(|b| b.map(|b| self.round(b))),
                    qk_norm: h.qk_norm.map(|g| g.map(|g| self.round(g))),
                }),
                QkvWeights::Latent(m) => QkvWeights::Latent(LatentMaps {
                    q_a: m.q_a.map(|(w, g)| (self.round(w), self.round(g))),
                    wq: self.round(m.wq),
                    wkv_a: self.round(m.wkv_a),
                    kv_norm: self.round(m.kv_norm),
                    wkv_b: self.round(m.wkv_b),
                }),
            },
            wo: self.round(l.wo),
            bo: l.bo.map(|b| self.round(b)),
            sinks: l.sinks.map(|s| self.round(s)),
            ffn_norm: self.round(l.ffn_norm),
            ffn: match l.ffn {
                FfnWeights::Dense(m) => FfnWeights::Dense(self.mlp(m)),
                FfnWeights::Moe { router, logit_bias, selection_bias, experts, shared } => FfnWeights::Moe {
                    router: self.round(router),
                    logit_bias: logit_bias.map(|b| self.round(b)),
                    selection_bias: selection_bias.map(|b| self.round(b)),
                    experts: experts.into_iter().map(|m| self.mlp(m)).collect(),
                    shared: shared.map(|(m, g)| (self.mlp(m), g.map(|g| self.round(g)))),
                },
            },
        })
    }

    fn position_bias(&self) -> ModelResult<Option<Vec<f32>>> {
        Ok(self.inner.position_bias()?.map(|b| self.round(b)))
    }

    fn final_norm(&self) -> ModelResult<Vec<f32>> {
        Ok(self.round(self.inner.final_norm()?))
    }

    fn lm_head(&self) -> ModelResult<Option<Vec<f32>>> {
        Ok(self.inner.lm_head()?.map(|h| self.round(h)))
    }
}

/// [`forward`] on the weights as the engine's fixed point holds them (each rounded to 2^-f):
/// its distance to [`forward`] is the quantization error, its distance to private inference
/// the protocols' own (activations' pieces, truncations, softmax and norm approximations).
pub fn forward_quantized(
    cfg: &ModelConfig,
    weights: &dyn WeightSource,
    ids: &[u32],
    format: FixedPoint,
) -> ModelResult<Vec<f64>> {
    forward(cfg, &Quantized { inner: weights, format }, ids)
}
