//! The built-in default model: a small Mixtral-style MoE decoder with weights from a fixed
//! seed, so that `secmoe demo` runs a private inference with nothing to download.

use super::config::{Family, Ffn, ModelConfig, Positions, QkNorm};
use super::weights::ModelWeights;
use crate::moe::{ExpertKind, MoeConfig, Routing};

/// The seed of the default model's weights.
const SEED: u64 = 0x5ec_304e;

/// The default model's architecture: 2 layers, d = 64, 4 query and 2 key/value heads of 16,
/// 8 SwiGLU experts of 128, top-2, vocabulary 256, RoPE.
pub fn default_config() -> ModelConfig {
    let moe = MoeConfig {
        experts: 8,
        top_k: 2,
        d_model: 64,
        d_ff: 128,
        routing: Routing::TopKSoftmax,
        expert: ExpertKind::SwiGlu,
        shared: None,
        expert_capacity: None,
    };
    ModelConfig {
        family: Family::Mixtral,
        vocab: 256,
        d_model: 64,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        causal: true,
        norm_eps: 1e-5,
        positions: Positions::Rope { theta: 10000.0 },
        score_scale: 0.25,
        qkv_bias: false,
        qk_norm: QkNorm::None,
        ffn: vec![Ffn::Moe(moe); 2],
        tie_embeddings: false,
        lm_head: true,
    }
}

/// The default model's weights (the router scaled up so that routing depends on the input).
pub fn default_weights() -> ModelWeights {
    ModelWeights::random(&default_config(), SEED, 4.0)
}
