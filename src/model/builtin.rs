//! The built-in default model: a small Mixtral-style MoE decoder with weights from a fixed
//! seed, so that `secmoe demo` runs a private inference with nothing to download; and a real
//! checkpoint's architecture for measurements at its size.

use super::config::{Family, Ffn, ModelConfig, Positions, QkNorm, Scales};
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
        groups: None,
        expert_bias: false,
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
        positions: Positions::Rope { theta: 10000.0, dims: 16, interleaved: false, yarn: None },
        score_scale: 0.25,
        qkv_bias: false,
        o_bias: false,
        sinks: false,
        windows: Vec::new(),
        qk_norm: QkNorm::None,
        latent: None,
        ffn: vec![Ffn::Moe(moe); 2],
        tie_embeddings: false,
        lm_head: true,
        scales: Scales::ONE,
    }
}

/// The default model's weights (the router scaled up so that routing depends on the input).
pub fn default_weights() -> ModelWeights {
    ModelWeights::random(&default_config(), SEED, 4.0)
}

/// The `config.json` fields of `ibm-granite/granite-3.1-1b-a400m`: 1.3 B parameters, 24 layers
/// of d = 1024 (16 query and 8 key/value heads of 64), each with 32 SwiGLU experts of 512,
/// top-8, vocabulary 49155, tied embeddings, Granite's four multipliers. The largest real MoE
/// checkpoint family whose expanded weights fit a 24 GiB machine layer by layer many times
/// over; `bench --preset model` runs it on random weights.
pub const GRANITE_1B_A400M: &str = r#"{"architectures": ["GraniteMoeForCausalLM"], "model_type": "granitemoe",
    "vocab_size": 49155, "hidden_size": 1024, "intermediate_size": 512, "num_hidden_layers": 24,
    "num_attention_heads": 16, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-06, "rope_theta": 1500000, "hidden_act": "silu", "attention_bias": false,
    "attention_dropout": 0.0, "attention_multiplier": 0.015625, "embedding_multiplier": 12.0,
    "residual_multiplier": 0.22, "logits_scaling": 6.0, "num_local_experts": 32,
    "num_experts_per_tok": 8, "tie_word_embeddings": true, "torch_dtype": "bfloat16"}"#;

/// DeepSeek-V2-Lite's `config.json` (`deepseek-ai/DeepSeek-V2-Lite`, its architecture
/// fields): 27 layers, the first dense, 64 experts of 1408 top-6 unnormalized with 2 shared,
/// latent attention with q straight from x, YaRN ×40. 15.7 B parameters; `bench --preset model`
/// runs one of its MoE layers, or all of it, on random weights.
pub const DEEPSEEK_V2_LITE: &str = r#"{"architectures": ["DeepseekV2ForCausalLM"], "attention_bias": false,
    "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 10944,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v2",
    "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64,
    "n_shared_experts": 2, "norm_topk_prob": false, "num_attention_heads": 16, "num_experts_per_tok": 6,
    "num_hidden_layers": 27, "num_key_value_heads": 16, "q_lora_rank": null, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06, "rope_scaling": {"beta_fast": 32, "beta_slow": 1,
    "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
    "type": "yarn"}, "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax",
    "tie_word_embeddings": false, "topk_group": 1, "topk_method": "greedy", "v_head_dim": 128,
    "vocab_size": 102400}"#;

/// gpt-oss-20b's `config.json` (`openai/gpt-oss-20b`, its architecture fields): 24 layers of
/// d = 2880 alternating a 128-position window with full attention, 64 query and 8 key/value
/// heads of 64 with sinks and biases, 32 clamped SwiGLU experts of 2880 top-4 with biases
/// (MXFP4 in the published weights), YaRN ×32, vocabulary 201 088. 21 B parameters;
/// `bench --preset model` runs one of its layers, or all of it, on random weights.
pub const GPT_OSS_20B: &str = r#"{"architectures": ["GptOssForCausalLM"], "attention_bias": true,
    "attention_dropout": 0.0, "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64,
    "hidden_act": "silu", "hidden_size": 2880, "initial_context_length": 4096, "initializer_range": 0.02,
    "intermediate_size": 2880, "layer_types": [
        "sliding_attention", "full_attention", "sliding_attention", "full_attention",
        "sliding_attention", "full_attention", "sliding_attention", "full_attention",
        "sliding_attention", "full_attention", "sliding_attention", "full_attention",
        "sliding_attention", "full_attention", "sliding_attention", "full_attention",
        "sliding_attention", "full_attention", "sliding_attention", "full_attention",
        "sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 64,
    "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8, "num_local_experts": 32,
    "output_router_logits": false, "pad_token_id": 199999, "quantization_config": {"modules_to_not_convert":
    ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
    "quant_method": "mxfp4"}, "rms_norm_eps": 1e-05, "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0,
    "factor": 32.0, "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": false},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
    "tie_word_embeddings": false, "transformers_version": "4.55.0.dev0", "use_cache": true,
    "vocab_size": 201088}"#;
