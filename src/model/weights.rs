//! The server's weights in f32, in the engine's orientation: a matrix of a map d_in → d_out is
//! d_in×d_out row-major (x·W), the transpose of a PyTorch `Linear.weight`. They come from a
//! [`WeightSource`] one layer at a time, so a checkpoint is expanded per layer and dropped.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::config::{Ffn, ModelConfig, Positions};
use super::{ModelError, ModelResult};

/// A dense expert's matrices (also the routed experts'), as [`crate::moe::ExpertWeights`] in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    /// W1 (gate), d×d_ff.
    pub w1: Vec<f32>,
    /// W3 (up), d×d_ff, for gated kinds.
    pub w3: Option<Vec<f32>>,
    /// W2 (down), d_ff×d.
    pub w2: Vec<f32>,
    /// Biases of the maps (gpt-oss's routed experts).
    pub bias: Option<MlpBias>,
}

/// An expert's biases: x·W1 + b1, x·W3 + b3, h·W2 + b2.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpBias {
    /// W1's, d_ff.
    pub b1: Vec<f32>,
    /// W3's, d_ff, for gated kinds.
    pub b3: Option<Vec<f32>>,
    /// W2's, d.
    pub b2: Vec<f32>,
}

/// A layer's feed-forward weights.
#[derive(Debug, Clone, PartialEq)]
pub enum FfnWeights {
    /// A dense block.
    Dense(Mlp),
    /// A MoE block.
    Moe {
        /// The router, d×E.
        router: Vec<f32>,
        /// The router's bias, E values added to its logits (gpt-oss).
        logit_bias: Option<Vec<f32>>,
        /// The selection bias of sigmoid or biased softmax routing, E values.
        selection_bias: Option<Vec<f32>>,
        /// The routed experts.
        experts: Vec<Mlp>,
        /// The shared expert and its sigmoid gate (d×1).
        shared: Option<(Mlp, Option<Vec<f32>>)>,
    },
}

/// A block's maps from its normed input to q, k and v.
#[derive(Debug, Clone, PartialEq)]
pub enum QkvWeights {
    /// One map each (multi-head and grouped-query attention).
    Heads(HeadMaps),
    /// Multi-head latent attention (DeepSeek-V2/V3).
    Latent(LatentMaps),
}

/// q, k and v maps of multi-head (grouped-query) attention.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadMaps {
    /// q, k, v maps: d×(heads·hd), d×(kv·hd), d×(kv·hd).
    pub wq: Vec<f32>,
    /// See `wq`.
    pub wk: Vec<f32>,
    /// See `wq`.
    pub wv: Vec<f32>,
    /// Biases of q, k, v (Qwen2-MoE).
    pub bias: Option<[Vec<f32>; 3]>,
    /// RMSNorm γ of q and k (OLMoE: as wide as q and k; Qwen3-MoE: one head wide).
    pub qk_norm: Option<[Vec<f32>; 2]>,
}

/// The maps of multi-head latent attention ([`super::LatentAttention`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LatentMaps {
    /// With a q rank: x's map to it (d×r_q) and the RMSNorm γ after it.
    pub q_a: Option<(Vec<f32>, Vec<f32>)>,
    /// q's map to the heads, (r_q or d)×(heads·head_dim), each head's rotated entries last.
    pub wq: Vec<f32>,
    /// x's map to the latent and the rotated key part, d×(kv_rank + rope).
    pub wkv_a: Vec<f32>,
    /// The latent's RMSNorm γ.
    pub kv_norm: Vec<f32>,
    /// The latent's map to each head's unrotated key entries and value, head by head:
    /// kv_rank×(heads·(head_dim − rope + v_dim)).
    pub wkv_b: Vec<f32>,
}

/// One Transformer block's weights.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// RMSNorm γ before attention.
    pub attn_norm: Vec<f32>,
    /// The maps to q, k and v.
    pub qkv: QkvWeights,
    /// The output map, (heads·v_head_dim)×d.
    pub wo: Vec<f32>,
    /// Its bias, d (gpt-oss).
    pub bo: Option<Vec<f32>>,
    /// Each head's sink logit (gpt-oss).
    pub sinks: Option<Vec<f32>>,
    /// RMSNorm γ before the feed-forward block.
    pub ffn_norm: Vec<f32>,
    /// The feed-forward block.
    pub ffn: FfnWeights,
}

/// Where the server's weights come from: a memory-mapped checkpoint ([`super::Checkpoint`]) or
/// a model in memory ([`ModelWeights`]).
pub trait WeightSource: Send + Sync {
    /// The embedding table, vocab×d.
    fn embedding(&self) -> ModelResult<Vec<f32>>;
    /// Block `i`.
    fn layer(&self, i: usize) -> ModelResult<LayerWeights>;
    /// T5's relative position bias table, buckets×heads (shared by all layers).
    fn position_bias(&self) -> ModelResult<Option<Vec<f32>>>;
    /// The final RMSNorm's γ.
    fn final_norm(&self) -> ModelResult<Vec<f32>>;
    /// The LM head, d×vocab (the embedding's transpose when tied); `None` for an encoder.
    fn lm_head(&self) -> ModelResult<Option<Vec<f32>>>;
    /// Where element `index` of the engine's tensor `engine` (`layers.3.experts.1.w1`, in the
    /// engine's orientation) is stored: the source's name and flat index, for errors.
    fn locate(&self, engine: &str, index: usize) -> (String, usize) {
        (engine.to_string(), index)
    }
}

/// A whole model's weights in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelWeights {
    /// vocab×d.
    pub embedding: Vec<f32>,
    /// The blocks.
    pub layers: Vec<LayerWeights>,
    /// buckets×heads, for relative position bias.
    pub position_bias: Option<Vec<f32>>,
    /// The final norm's γ.
    pub final_norm: Vec<f32>,
    /// d×vocab, when the head is not tied.
    pub lm_head: Option<Vec<f32>>,
    /// The head is the embedding's transpose.
    pub tied: bool,
}

/// The transpose of a rows×cols row-major matrix.
pub fn transpose(rows: usize, cols: usize, a: &[f32]) -> Vec<f32> {
    let mut t = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

impl WeightSource for ModelWeights {
    fn embedding(&self) -> ModelResult<Vec<f32>> {
        Ok(self.embedding.clone())
    }

    fn layer(&self, i: usize) -> ModelResult<LayerWeights> {
        self.layers.get(i).cloned().ok_or_else(|| ModelError::Weights(format!("no layer {i}")))
    }

    fn position_bias(&self) -> ModelResult<Option<Vec<f32>>> {
        Ok(self.position_bias.clone())
    }

    fn final_norm(&self) -> ModelResult<Vec<f32>> {
        Ok(self.final_norm.clone())
    }

    fn lm_head(&self) -> ModelResult<Option<Vec<f32>>> {
        if self.tied {
            let d = self.final_norm.len();
            Ok(Some(transpose(self.embedding.len() / d, d, &self.embedding)))
        } else {
            Ok(self.lm_head.clone())
        }
    }
}

impl ModelWeights {
    /// Random weights for `cfg` from a fixed seed (the built-in default model, tests):
    /// matrices uniform in ±1/√fan-in, embeddings in ±1, norms near 1, the router scaled by
    /// `router_scale` so that routing depends on the input.
    pub fn random(cfg: &ModelConfig, seed: u64, router_scale: f32) -> ModelWeights {
        let mut draw = Draw(StdRng::seed_from_u64(seed));
        let d = cfg.d_model;
        let embedding = draw.uniform(cfg.vocab * d, 1.0);
        let layers = cfg.ffn.iter().map(|ffn| draw.layer(cfg, ffn, router_scale)).collect();
        let position_bias = draw.position_bias(cfg);
        let final_norm = vec![1.0; d];
        let lm_head = (!cfg.tie_embeddings && cfg.lm_head).then(|| draw.uniform(d * cfg.vocab, inv(d)));
        ModelWeights { embedding, layers, position_bias, final_norm, lm_head, tied: cfg.tie_embeddings && cfg.lm_head }
    }
}

fn inv(n: usize) -> f32 {
    1.0 / (n as f32).sqrt()
}

/// Draws the random weights of [`ModelWeights::random`] and [`RandomWeights`].
struct Draw(StdRng);

impl Draw {
    fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        (0..n).map(|_| self.0.random_range(-bound..bound)).collect()
    }

    fn norm(&mut self, n: usize) -> Vec<f32> {
        self.uniform(n, 0.2).into_iter().map(|v| 1.0 + v).collect()
    }

    fn mlp(&mut self, d: usize, d_ff: usize, gated: bool, bias: bool) -> Mlp {
        let mut m = Mlp {
            w1: self.uniform(d * d_ff, inv(d)),
            w3: gated.then(|| self.uniform(d * d_ff, inv(d))),
            w2: self.uniform(d_ff * d, inv(d_ff)),
            bias: None,
        };
        if bias {
            let (b1, b3) = (self.uniform(d_ff, 0.5), gated.then(|| self.uniform(d_ff, 0.5)));
            m.bias = Some(MlpBias { b1, b3, b2: self.uniform(d, 0.1) });
        }
        m
    }

    fn layer(&mut self, cfg: &ModelConfig, ffn: &Ffn, router_scale: f32) -> LayerWeights {
        let d = cfg.d_model;
        let (q, kv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        let attn_norm = self.norm(d);
        let qkv = match cfg.latent {
            None => {
                let (wq, wk, wv) =
                    (self.uniform(d * q, inv(d)), self.uniform(d * kv, inv(d)), self.uniform(d * kv, inv(d)));
                let bias = cfg.qkv_bias.then(|| [self.uniform(q, 0.1), self.uniform(kv, 0.1), self.uniform(kv, 0.1)]);
                let qk_norm = cfg.qk_norm_widths().map(|(qn, kn)| [self.norm(qn), self.norm(kn)]);
                QkvWeights::Heads(HeadMaps { wq, wk, wv, bias, qk_norm })
            }
            Some(l) => {
                let q_a = l.q_rank.map(|r| (self.uniform(d * r, inv(d)), self.norm(r)));
                let into_q = l.q_rank.unwrap_or(d);
                let per_head = cfg.head_dim - l.rope + l.v_dim;
                QkvWeights::Latent(LatentMaps {
                    q_a,
                    wq: self.uniform(into_q * q, inv(into_q)),
                    wkv_a: self.uniform(d * (l.kv_rank + l.rope), inv(d)),
                    kv_norm: self.norm(l.kv_rank),
                    wkv_b: self.uniform(l.kv_rank * cfg.heads * per_head, inv(l.kv_rank)),
                })
            }
        };
        let o = cfg.heads * cfg.v_head_dim();
        let wo = self.uniform(o * d, inv(o));
        let ffn_norm = self.norm(d);
        let ffn = match ffn {
            Ffn::Dense { d_ff, kind } => FfnWeights::Dense(self.mlp(d, *d_ff, kind.gated(), false)),
            Ffn::Moe(m) => FfnWeights::Moe {
                router: self.uniform(d * m.experts, router_scale * inv(d)),
                experts: (0..m.experts).map(|_| self.mlp(d, m.d_ff, m.expert.gated(), m.expert_bias)).collect(),
                shared: m.shared.map(|s| {
                    (self.mlp(d, s.d_ff, m.expert.gated(), false), s.sigmoid_gate.then(|| self.uniform(d, inv(d))))
                }),
                // drawn last (fields evaluate in the order written): the other routings' streams
                // stay as they were
                selection_bias: m.routing.has_selection_bias().then(|| self.uniform(m.experts, 0.5)),
                logit_bias: cfg.router_bias().then(|| self.uniform(m.experts, router_scale * 0.5)),
            },
        };
        // gpt-oss's, drawn after the rest
        let bo = cfg.o_bias.then(|| self.uniform(d, 0.1));
        let sinks = cfg.sinks.then(|| self.uniform(cfg.heads, 1.0));
        LayerWeights { attn_norm, qkv, wo, bo, sinks, ffn_norm, ffn }
    }

    fn position_bias(&mut self, cfg: &ModelConfig) -> Option<Vec<f32>> {
        match cfg.positions {
            Positions::RelativeBias { buckets, .. } => Some(self.uniform(buckets * cfg.heads, 1.0)),
            Positions::Rope { .. } => None,
        }
    }
}

/// Random weights of [`ModelWeights::random`]'s distribution drawn when asked for, each
/// tensor group from its own seed (so the same on every call): a model of any size in the
/// memory of one layer, for measurements at the sizes of real checkpoints.
#[derive(Debug, Clone)]
pub struct RandomWeights {
    cfg: ModelConfig,
    seed: u64,
    router_scale: f32,
}

impl RandomWeights {
    /// The weights of `cfg` drawn from `seed`.
    pub fn new(cfg: &ModelConfig, seed: u64, router_scale: f32) -> RandomWeights {
        RandomWeights { cfg: cfg.clone(), seed, router_scale }
    }

    /// The generator of group `part` (0: embedding, 1: position bias, 2: LM head, 3 + i:
    /// layer i).
    fn draw(&self, part: u64) -> Draw {
        Draw(StdRng::seed_from_u64(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(part)))
    }
}

impl WeightSource for RandomWeights {
    fn embedding(&self) -> ModelResult<Vec<f32>> {
        Ok(self.draw(0).uniform(self.cfg.vocab * self.cfg.d_model, 1.0))
    }

    fn layer(&self, i: usize) -> ModelResult<LayerWeights> {
        let ffn = self.cfg.ffn.get(i).ok_or_else(|| ModelError::Weights(format!("no layer {i}")))?;
        Ok(self.draw(3 + i as u64).layer(&self.cfg, ffn, self.router_scale))
    }

    fn position_bias(&self) -> ModelResult<Option<Vec<f32>>> {
        Ok(self.draw(1).position_bias(&self.cfg))
    }

    fn final_norm(&self) -> ModelResult<Vec<f32>> {
        Ok(vec![1.0; self.cfg.d_model])
    }

    fn lm_head(&self) -> ModelResult<Option<Vec<f32>>> {
        let (c, d) = (&self.cfg, self.cfg.d_model);
        Ok(match (c.lm_head, c.tie_embeddings) {
            (false, _) => None,
            (true, true) => Some(transpose(c.vocab, d, &self.embedding()?)),
            (true, false) => Some(self.draw(2).uniform(d * c.vocab, inv(d))),
        })
    }
}
