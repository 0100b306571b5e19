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
        /// The routed experts.
        experts: Vec<Mlp>,
        /// The shared expert and its sigmoid gate (d×1).
        shared: Option<(Mlp, Option<Vec<f32>>)>,
    },
}

/// One Transformer block's weights.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// RMSNorm γ before attention.
    pub attn_norm: Vec<f32>,
    /// q, k, v maps: d×(heads·hd), d×(kv·hd), d×(kv·hd).
    pub wq: Vec<f32>,
    /// See `wq`.
    pub wk: Vec<f32>,
    /// See `wq`.
    pub wv: Vec<f32>,
    /// Biases of q, k, v (Qwen2-MoE).
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    /// RMSNorm γ of q and k (OLMoE: as wide as q and k; Qwen3-MoE: one head wide).
    pub qk_norm: Option<[Vec<f32>; 2]>,
    /// The output map, (heads·hd)×d.
    pub wo: Vec<f32>,
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
    /// matrices uniform in ±`scale`/√fan-in, norms near 1, the router scaled by `router_scale`
    /// so that routing depends on the input.
    pub fn random(cfg: &ModelConfig, seed: u64, router_scale: f32) -> ModelWeights {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut uniform =
            |n: usize, bound: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
        let d = cfg.d_model;
        let (q, kv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        let inv = |n: usize| 1.0 / (n as f32).sqrt();
        let mlp = |uniform: &mut dyn FnMut(usize, f32) -> Vec<f32>, d_ff: usize, gated: bool| Mlp {
            w1: uniform(d * d_ff, inv(d)),
            w3: gated.then(|| uniform(d * d_ff, inv(d))),
            w2: uniform(d_ff * d, inv(d_ff)),
        };
        let embedding = uniform(cfg.vocab * d, 1.0);
        let layers = cfg
            .ffn
            .iter()
            .map(|ffn| {
                let norm = |u: &mut dyn FnMut(usize, f32) -> Vec<f32>, n: usize| -> Vec<f32> {
                    u(n, 0.2).into_iter().map(|v| 1.0 + v).collect()
                };
                let attn_norm = norm(&mut uniform, d);
                let (wq, wk, wv) = (uniform(d * q, inv(d)), uniform(d * kv, inv(d)), uniform(d * kv, inv(d)));
                let qkv_bias = cfg.qkv_bias.then(|| [uniform(q, 0.1), uniform(kv, 0.1), uniform(kv, 0.1)]);
                let qk_norm = cfg.qk_norm_widths().map(|(qn, kn)| [norm(&mut uniform, qn), norm(&mut uniform, kn)]);
                let wo = uniform(q * d, inv(q));
                let ffn_norm = norm(&mut uniform, d);
                let ffn = match ffn {
                    Ffn::Dense { d_ff, kind } => FfnWeights::Dense(mlp(&mut uniform, *d_ff, kind.gated())),
                    Ffn::Moe(m) => FfnWeights::Moe {
                        router: uniform(d * m.experts, router_scale * inv(d)),
                        experts: (0..m.experts).map(|_| mlp(&mut uniform, m.d_ff, m.expert.gated())).collect(),
                        shared: m.shared.map(|s| {
                            (mlp(&mut uniform, s.d_ff, m.expert.gated()), s.sigmoid_gate.then(|| uniform(d, inv(d))))
                        }),
                    },
                };
                LayerWeights { attn_norm, wq, wk, wv, qkv_bias, qk_norm, wo, ffn_norm, ffn }
            })
            .collect();
        let position_bias = match cfg.positions {
            Positions::RelativeBias { buckets, .. } => Some(uniform(buckets * cfg.heads, 1.0)),
            Positions::Rope { .. } => None,
        };
        let final_norm = (0..d).map(|_| 1.0).collect();
        let lm_head = (!cfg.tie_embeddings && cfg.lm_head).then(|| uniform(d * cfg.vocab, inv(d)));
        ModelWeights { embedding, layers, position_bias, final_norm, lm_head, tied: cfg.tie_embeddings && cfg.lm_head }
    }
}
