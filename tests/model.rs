//! Whole models in 2PC: private inference against the f64 plaintext model for every family
//! (Mixtral-style default, Qwen2-MoE with dense layers, biases and a gated shared expert,
//! OLMoE's q/k norms, Qwen3-MoE's per-head q/k norms on heads wider than d/heads, Granite-MoE's
//! multipliers and fused experts, GLM-4.5's sigmoid routing and half-rotary heads, ERNIE-4.5's
//! biased softmax routing and rotary pairs, the Switch
//! encoder's relative position bias and ReLU experts), errors on
//! both sides before anything moves, checkpoints that do not fit their config refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![recursion_limit = "256"]

mod common;

use secmoe::model::{
    CheckedWeights, Checkpoint, Embedding, Family, Ffn, FfnWeights, HfTensor, KvCache, LatentAttention, Margin,
    ModelConfig, ModelError, ModelResult, ModelWeights, Output, Plan, Positions, Prompt, QkNorm, QkvWeights, Quantity,
    Scales, Variant, WeightSource, check_weights, default_config, default_weights, finish, forward, forward_quantized,
    forward_variants, forward_with, infer, infer_cached, ranges, resolve_near_ties, serve, setup_he,
};
use secmoe::moe::{ExpertKind, Method, MoeConfig, Routing, SharedExpert};
use secmoe::net::Frame;
use secmoe::proto::layernorm::NormRange;
use secmoe::ring::FixedPoint;

/// Largest |Δ| of an output (logits of size ≲ 3) against the f64 model: fixed-point weights
/// (2^-19 each), the norms' and softmaxes' relative errors (~1e-3) through a few layers.
const BOUND: f64 = 0.05;

/// What one private run gives: the client's result, the server's count of forwards, and the
/// frames each party received (their views' message sequence).
struct Run {
    client: ModelResult<Output>,
    server: ModelResult<usize>,
    server_received: Vec<Frame>,
    client_received: Vec<Frame>,
}

/// Both parties in one process: the client's config `ccfg` and prompt, the server's `scfg`
/// and weights.
fn private(ccfg: &ModelConfig, scfg: &ModelConfig, plan: Plan, prompt: Prompt<'_>, w: &dyn WeightSource) -> Run {
    private_as((ccfg, plan), (scfg, plan), prompt, w)
}

/// [`private`] with each party's own plan.
fn private_as(
    (ccfg, cplan): (&ModelConfig, Plan),
    (scfg, splan): (&ModelConfig, Plan),
    prompt: Prompt<'_>,
    w: &dyn WeightSource,
) -> Run {
    common::runtime().block_on(async {
        let (c, mut sc, s, mut ss) = common::session_pair().await;
        let (a, b) = tokio::join!(setup_he(&mut sc, cplan), setup_he(&mut ss, splan));
        if let (Err(a), Err(b)) = (&a, &b) {
            let (client, server) = (Err(ModelError::Input(a.to_string())), Err(ModelError::Input(b.to_string())));
            return Run { client, server, server_received: Vec::new(), client_received: Vec::new() };
        }
        a.unwrap();
        b.unwrap();
        ss.channel().record_frames();
        sc.channel().record_frames();
        let client = async {
            let out = infer(&mut sc, ccfg, cplan, prompt, &()).await;
            if out.is_ok() {
                finish(&mut sc).await.unwrap();
            }
            out
        };
        let model = CheckedWeights::new(scfg, ss.format(), w).unwrap();
        let (client, server) = tokio::join!(client, serve(&mut ss, &model, splan, &()));
        let server_received = ss.channel().take_frames().into_iter().filter(|f| !f.sent).collect();
        let client_received = sc.channel().take_frames().into_iter().filter(|f| !f.sent).collect();
        drop((c, s));
        Run { client, server, server_received, client_received }
    })
}

fn check(cfg: &ModelConfig, w: &ModelWeights, ids: &[u32]) -> f64 {
    let want = forward(cfg, w, ids).unwrap();
    let r = private(cfg, cfg, Plan::default(), Prompt::new(ids), w);
    let got = r.client.unwrap();
    assert_eq!(r.server.unwrap(), 1);
    assert_eq!(got.values.len(), want.len());
    let diff = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let err = diff(&got.values, &want);
    // the quantization error (weights rounded to 2^-18) against the protocols' own
    let quantized = forward_quantized(cfg, w, ids, FixedPoint::default()).unwrap();
    let (quantization, protocol) = (diff(&quantized, &want), diff(&got.values, &quantized));
    assert!(quantization < protocol, "rounding the weights alone moves the output by {quantization}");
    // the activations' fits alone, and what the protocols add to them
    let fitted = forward_with(cfg, w, ids, &Variant::fitted()).unwrap();
    let (fit, beyond) = (diff(&fitted, &want), diff(&got.values, &fitted));
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
    eprintln!(
        "{}: max |Δ| {err:.2e} (quantization {quantization:.1e}, protocol {protocol:.2e}; fits {fit:.2e}, beyond them {beyond:.2e}; outputs up to {scale:.2})",
        cfg.family.model_type()
    );
    assert!(err <= BOUND, "{}: max |Δ| {err} > {BOUND}", cfg.family.model_type());
    assert!(beyond <= BOUND / 10.0, "{}: {beyond} beyond the activations' fits", cfg.family.model_type());
    let want = Output { values: want, width: got.width };
    assert_eq!(got.argmax(), want.argmax(), "argmax per position");
    err
}

/// Writes `w` as a checkpoint of `config` whose tensors include `names`, opens it (its config
/// read as `cfg`) and reads every layer back exactly.
fn reads_back(tag: &str, config: &str, cfg: &ModelConfig, w: &ModelWeights, names: &[&str]) {
    let root = std::env::temp_dir().join(format!("secmoe-{tag}-{}", std::process::id()));
    common::write_checkpoint(&root, config, cfg, w, |t| {
        let present: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        for name in names {
            assert!(present.contains(name), "{name} missing from {present:?}");
        }
    });
    let ckpt = Checkpoint::open(&root).unwrap();
    assert_eq!(ckpt.config(), cfg);
    for (i, layer) in w.layers.iter().enumerate() {
        assert_eq!(&ckpt.layer(i).unwrap(), layer, "layer {i} read back");
    }
    std::fs::remove_dir_all(&root).ok();
}

fn moe(experts: usize, top_k: usize, d: usize, d_ff: usize, routing: Routing, expert: ExpertKind) -> MoeConfig {
    MoeConfig {
        experts,
        top_k,
        d_model: d,
        d_ff,
        routing,
        expert,
        shared: None,
        expert_capacity: None,
        groups: None,
        expert_bias: false,
    }
}

#[test]
fn the_default_model_matches_its_plaintext() {
    check(&default_config(), &default_weights(), &[3, 141, 59, 26, 5]);
}

/// Select-Then-Compute (the experts' weights selected under HE) through a whole model: the
/// default model's output within the bound (its first layer's MoE block routes every token
/// through the HE selection); a client and a server that differ on it stop at the key setup,
/// both naming the key sets.
#[test]
fn select_then_compute_runs_the_default_model() {
    let (cfg, w, ids) = (default_config(), default_weights(), [3, 141, 59]);
    let paper = Plan { method: Method::SelectThenCompute, ..Plan::default() };
    let want = forward(&cfg, &w, &ids).unwrap();
    let got = private(&cfg, &cfg, paper, Prompt::new(&ids), &w).client.unwrap();
    let err = got.values.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(err <= BOUND, "max |Δ| {err}");
    let r = private_as((&cfg, paper), (&cfg, Plan::default()), Prompt::new(&ids), &w);
    for e in [r.client.unwrap_err().to_string(), r.server.unwrap_err().to_string()] {
        assert!(e.contains("he-keys linear shared select") && e.contains("he-keys linear shared`"), "{e}");
    }
    // the two forms of the selected products need different keys: named at the key setup too
    let tensored = Plan { method: Method::PaperTensored, ..Plan::default() };
    let r = private_as((&cfg, paper), (&cfg, tensored), Prompt::new(&ids), &w);
    for e in [r.client.unwrap_err().to_string(), r.server.unwrap_err().to_string()] {
        assert!(e.contains("select(WithRelin)") && e.contains("select(WithSquare)"), "{e}");
    }
}

#[test]
fn qwen2_moe_with_dense_layers_biases_and_a_gated_shared_expert() {
    let mut m = moe(4, 2, 32, 24, Routing::SoftmaxTopK { normalize: false }, ExpertKind::SwiGlu);
    m.shared = Some(SharedExpert { d_ff: 40, sigmoid_gate: true });
    let cfg = ModelConfig {
        family: Family::Qwen2Moe,
        vocab: 64,
        d_model: 32,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        causal: true,
        norm_eps: 1e-6,
        positions: Positions::Rope { theta: 10000.0, dims: 8, interleaved: false, yarn: None },
        score_scale: 1.0 / 8f64.sqrt(),
        qkv_bias: true,
        o_bias: false,
        sinks: false,
        windows: Vec::new(),
        qk_norm: QkNorm::None,
        latent: None,
        ffn: vec![Ffn::Moe(m), Ffn::Dense { d_ff: 48, kind: ExpertKind::SwiGlu }],
        tie_embeddings: true,
        lm_head: true,
        scales: Scales::ONE,
    };
    check(&cfg, &ModelWeights::random(&cfg, 7, 4.0), &[1, 2, 3, 60]);
}

#[test]
fn olmoe_with_q_k_norms_and_the_switch_encoder() {
    let olmoe = ModelConfig {
        family: Family::Olmoe,
        vocab: 48,
        d_model: 32,
        heads: 4,
        kv_heads: 4,
        head_dim: 8,
        causal: true,
        norm_eps: 1e-5,
        positions: Positions::Rope { theta: 10000.0, dims: 8, interleaved: false, yarn: None },
        score_scale: 1.0 / 8f64.sqrt(),
        qkv_bias: false,
        o_bias: false,
        sinks: false,
        windows: Vec::new(),
        qk_norm: QkNorm::Full,
        latent: None,
        ffn: vec![Ffn::Moe(moe(8, 2, 32, 16, Routing::SoftmaxTopK { normalize: true }, ExpertKind::SwiGlu))],
        tie_embeddings: false,
        lm_head: true,
        scales: Scales::ONE,
    };
    check(&olmoe, &ModelWeights::random(&olmoe, 8, 4.0), &[7, 0, 47]);
    let switch = ModelConfig {
        family: Family::SwitchEncoder,
        vocab: 40,
        d_model: 32,
        heads: 4,
        kv_heads: 4,
        head_dim: 8,
        causal: false,
        norm_eps: 1e-6,
        positions: Positions::RelativeBias { buckets: 32, max_distance: 128 },
        score_scale: 1.0,
        qkv_bias: false,
        o_bias: false,
        sinks: false,
        windows: Vec::new(),
        qk_norm: QkNorm::None,
        latent: None,
        ffn: vec![
            Ffn::Dense { d_ff: 48, kind: ExpertKind::Relu },
            Ffn::Moe(MoeConfig { expert_capacity: Some(1), ..moe(4, 1, 32, 48, Routing::Switch, ExpertKind::Relu) }),
        ],
        tie_embeddings: true,
        lm_head: false,
        scales: Scales::ONE,
    };
    check(&switch, &ModelWeights::random(&switch, 9, 4.0), &[4, 8, 15, 16, 23]);
}

/// Qwen3-MoE: RMSNorm on each head of q and k (one γ of the head's width), heads wider than
/// d/heads (`head_dim` set apart: q is 48 wide for d = 32), no shared expert, renormalized
/// top-k gates, and a dense layer by `mlp_only_layers`.
#[test]
fn qwen3_moe_with_per_head_q_k_norms_and_wide_heads() {
    let cfg = ModelConfig {
        family: Family::Qwen3Moe,
        vocab: 56,
        d_model: 32,
        heads: 4,
        kv_heads: 2,
        head_dim: 12,
        causal: true,
        norm_eps: 1e-6,
        positions: Positions::Rope { theta: 1_000_000.0, dims: 12, interleaved: false, yarn: None },
        score_scale: 1.0 / 12f64.sqrt(),
        qkv_bias: false,
        o_bias: false,
        sinks: false,
        windows: Vec::new(),
        qk_norm: QkNorm::PerHead,
        latent: None,
        ffn: vec![
            Ffn::Moe(moe(8, 2, 32, 16, Routing::SoftmaxTopK { normalize: true }, ExpertKind::SwiGlu)),
            Ffn::Dense { d_ff: 40, kind: ExpertKind::SwiGlu },
        ],
        tie_embeddings: false,
        lm_head: true,
        scales: Scales::ONE,
    };
    let w = ModelWeights::random(&cfg, 10, 4.0);
    let QkvWeights::Heads(maps) = &w.layers[0].qkv else { panic!("latent maps") };
    assert_eq!(maps.qk_norm.as_ref().map(|g| [g[0].len(), g[1].len()]), Some([12, 12]));
    check(&cfg, &w, &[5, 55, 0, 31]);
}

/// Granite-MoE (`granitemoeshared`): Mixtral's routing, an ungated shared expert and the four
/// scalar multipliers away from 1 (the score scale replaces 1/√head_dim), which the server folds
/// into its weights and the f64 model applies where transformers does: private inference
/// against it, with the private and the public embedding. Written as a checkpoint (each layer's
/// routed experts in two fused tensors, the shared expert's W1|W3 in one) and read back exactly;
/// a bad value inside a fused tensor is named by its index there.
#[test]
fn granite_moe_with_multipliers_fused_experts_and_a_shared_expert() {
    let config = r#"{"model_type": "granitemoeshared", "vocab_size": 48, "hidden_size": 32,
        "intermediate_size": 16, "shared_intermediate_size": 24, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-06,
        "num_local_experts": 6, "num_experts_per_tok": 2, "embedding_multiplier": 4.0,
        "attention_multiplier": 0.2, "residual_multiplier": 0.4, "logits_scaling": 2.0,
        "rope_theta": 10000.0, "tie_word_embeddings": true}"#;
    let cfg = ModelConfig::from_json(config).unwrap();
    assert_eq!((cfg.family, cfg.score_scale, cfg.tie_embeddings), (Family::GraniteMoeShared, 0.2, true));
    assert_eq!(cfg.scales, Scales { embedding: 4.0, residual: 0.4, logits: 0.5, routed: 1.0 });
    let w = ModelWeights::random(&cfg, 11, 4.0);
    let ids = [5, 40, 0, 17];
    check(&cfg, &w, &ids);
    let public = Plan { embedding: Embedding::Public, ..Plan::default() };
    let got = private(&cfg, &cfg, public, Prompt::new(&ids).with_table(Some(&w.embedding)), &w).client.unwrap();
    let want = forward(&cfg, &w, &ids).unwrap();
    let worst = got.values.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    assert!(worst <= BOUND, "public embedding: error {worst:.2e}");

    let root = std::env::temp_dir().join(format!("secmoe-granite-{}", std::process::id()));
    let fused = "model.layers.1.block_sparse_moe.input_linear.weight";
    common::write_checkpoint(&root.join("good"), config, &cfg, &w, |t| {
        let shapes: Vec<(&str, &[usize])> = t.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
        assert!(shapes.contains(&(fused, &[6, 32, 32])), "{shapes:?}");
        assert!(shapes.contains(&("model.layers.0.shared_mlp.input_linear.weight", &[48, 32])), "{shapes:?}");
    });
    let ckpt = Checkpoint::open(&root.join("good")).unwrap();
    assert_eq!(ckpt.config(), &cfg);
    for (i, layer) in w.layers.iter().enumerate() {
        assert_eq!(&ckpt.layer(i).unwrap(), layer, "layer {i} read back");
    }
    // expert 4's W3 (the second half of its block), row 3, column 7
    let index = 4 * 32 * 32 + (16 + 3) * 32 + 7;
    common::write_checkpoint(&root.join("nan"), config, &cfg, &w, |t| {
        t.iter_mut().find(|t| t.name == fused).unwrap().values[index] = f32::NAN
    });
    let ckpt = Checkpoint::open(&root.join("nan")).unwrap();
    let err = check_weights(&cfg, FixedPoint::default(), &ckpt).unwrap_err().to_string();
    assert!(err.contains(&format!("tensor `{fused}`, element {index}: NaN")), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

/// GLM-4.5's layers (`glm4_moe`): DeepSeek-V3's MoE block — σ scores, top-2 of score + the
/// server's selection bias, renormalized and scaled by 2, an ungated shared expert, a dense
/// first layer — under q/k/v biases, per-head q/k norms and rotary embeddings on half of each
/// head: private inference against the f64 model; written as a checkpoint (the bias as
/// `mlp.gate.e_score_correction_bias`, the shared expert as `mlp.shared_experts`) and read
/// back exactly.
#[test]
fn glm4_moe_with_sigmoid_routing_and_half_rotary_heads() {
    let config = r#"{"model_type": "glm4_moe", "vocab_size": 48, "hidden_size": 32, "intermediate_size": 40,
        "moe_intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 12, "hidden_act": "silu", "rms_norm_eps": 1e-05, "n_routed_experts": 8,
        "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1,
        "topk_group": 1, "norm_topk_prob": true, "routed_scaling_factor": 2.0, "attention_bias": true,
        "use_qk_norm": true, "partial_rotary_factor": 0.5, "rope_theta": 10000.0, "tie_word_embeddings": false}"#;
    let cfg = ModelConfig::from_json(config).unwrap();
    assert_eq!(
        (cfg.family, cfg.positions, cfg.qkv_bias),
        (Family::Glm4Moe, Positions::Rope { theta: 1e4, dims: 6, interleaved: false, yarn: None }, true)
    );
    assert_eq!((cfg.qk_norm, cfg.scales.routed), (QkNorm::PerHead, 2.0));
    let moe = MoeConfig {
        shared: Some(SharedExpert { d_ff: 16, sigmoid_gate: false }),
        ..moe(8, 2, 32, 16, Routing::SigmoidTopK { normalize: true }, ExpertKind::SwiGlu)
    };
    assert_eq!(cfg.ffn, vec![Ffn::Dense { d_ff: 40, kind: ExpertKind::SwiGlu }, Ffn::Moe(moe), Ffn::Moe(moe)]);
    let w = ModelWeights::random(&cfg, 12, 4.0);
    let ids = [5, 40, 0, 17, 33];
    check(&cfg, &w, &ids);
    // the renormalization's precondition is among the ranges `secmoe ranges` checks
    let seen = ranges(&cfg, &w, &[&ids], NormRange::DEFAULT).unwrap();
    let sums: Vec<_> = seen.sites().iter().filter(|r| r.quantity == Quantity::ScoreSumReciprocal).collect();
    assert!(sums.len() == 2 && sums.iter().all(|r| !r.exceeded() && r.limit == 16.0), "{sums:?}");

    let names = ["model.layers.1.mlp.gate.e_score_correction_bias", "model.layers.2.mlp.shared_experts.up_proj.weight"];
    reads_back("glm", config, &cfg, &w, &names);
}

/// ERNIE-4.5's layers (`ernie4_5_moe`): the softmax over all experts ranked with the server's
/// selection bias, renormalized, two shared experts as one, a dense first layer, GPT-J-style
/// rotary pairs (frequency i turns entries 2i and 2i + 1).
#[test]
fn ernie4_5_moe_with_biased_softmax_routing_and_rotary_pairs() {
    let config = r#"{"model_type": "ernie4_5_moe", "vocab_size": 48, "hidden_size": 32, "intermediate_size": 40,
        "moe_intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "hidden_act": "silu", "rms_norm_eps": 1e-05, "moe_num_experts": 8, "moe_k": 3,
        "moe_num_shared_experts": 2, "moe_layer_start_index": 1, "rope_theta": 500000, "use_bias": false,
        "tie_word_embeddings": false}"#;
    let cfg = ModelConfig::from_json(config).unwrap();
    assert_eq!(
        (cfg.family, cfg.positions),
        (Family::Ernie45Moe, Positions::Rope { theta: 5e5, dims: 8, interleaved: true, yarn: None })
    );
    let (w, ids) = (ModelWeights::random(&cfg, 13, 4.0), [5, 40, 0, 17]);
    check(&cfg, &w, &ids);
    // the router's softmax over all experts keeps its logits within the exp's window
    let seen = ranges(&cfg, &w, &[&ids], NormRange::DEFAULT).unwrap();
    let router = |q| seen.sites().iter().any(|r| r.site == "layers.1.router" && r.quantity == q && !r.exceeded());
    assert!(router(Quantity::ScoreSpread) && router(Quantity::ScoreSumReciprocal), "{seen:?}");
}

/// DeepSeek-V3's layers (`deepseek_v3`): multi-head latent attention — q through a rank of 24
/// with its RMSNorm, keys and values from one normed latent of rank 16, each head's key 8
/// unrotated entries and 4 rotated ones shared by all heads, values 6 wide — under YaRN
/// (frequencies rescaled, cos and sin times m(4, 0.707)/m(4, 1), the scores times m(4, 1)²),
/// sigmoid routing with the selection bias, two shared experts, a dense first layer: private
/// inference against the f64 model; written as a checkpoint and read back exactly; the latent
/// norms' inputs among the ranges.
#[test]
fn deepseek_v3_with_latent_attention_and_yarn() {
    let config = r#"{"model_type": "deepseek_v3", "vocab_size": 48, "hidden_size": 32, "intermediate_size": 40,
        "moe_intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 6,
        "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 2, "first_k_dense_replace": 1,
        "n_group": 1, "topk_group": 1, "norm_topk_prob": true, "routed_scaling_factor": 1.5,
        "rms_norm_eps": 1e-06, "max_position_embeddings": 64, "rope_theta": 10000.0, "rope_scaling": {"type": "yarn",
        "factor": 4.0, "original_max_position_embeddings": 16, "mscale": 0.707, "mscale_all_dim": 1.0,
        "beta_fast": 32, "beta_slow": 1}, "tie_word_embeddings": false}"#;
    let cfg = ModelConfig::from_json(config).unwrap();
    assert_eq!(cfg.latent, Some(LatentAttention { q_rank: Some(24), kv_rank: 16, rope: 4, v_dim: 6 }));
    let Positions::Rope { dims: 4, interleaved: true, yarn: Some(yarn), .. } = cfg.positions else {
        panic!("{:?}", cfg.positions)
    };
    let m = |s: f64| 0.1 * s * 4f64.ln() + 1.0;
    assert!(
        (yarn.attention - m(0.707) / m(1.0)).abs() < 1e-12
            && (cfg.score_scale - m(1.0).powi(2) / 12f64.sqrt()).abs() < 1e-12
    );
    let (w, ids) = (ModelWeights::random(&cfg, 14, 4.0), [5, 40, 0, 17, 33]);
    check(&cfg, &w, &ids);
    let seen = ranges(&cfg, &w, &[&ids], NormRange::DEFAULT).unwrap();
    for site in ["layers.0.q_a_norm", "layers.1.kv_a_norm"] {
        assert!(seen.sites().iter().any(|r| r.site == site && !r.exceeded()), "{site} missing from {seen:?}");
    }

    let names = [
        "model.layers.0.self_attn.q_a_layernorm.weight",
        "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
        "model.layers.1.self_attn.kv_b_proj.weight",
        "model.layers.1.mlp.gate.e_score_correction_bias",
    ];
    reads_back("deepseek", config, &cfg, &w, &names);
}

/// A tiny DeepSeek-V2-Lite (`deepseek_v2`): two heads of 10 unrotated and 6 rotated key
/// entries, values of 8, a latent of rank 12, q straight from x.
const DEEPSEEK_V2_TINY: &str = r#"{"model_type": "deepseek_v2", "vocab_size": 48, "hidden_size": 32,
    "intermediate_size": 40, "moe_intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 2,
    "q_lora_rank": null, "kv_lora_rank": 12, "qk_nope_head_dim": 10, "qk_rope_head_dim": 6, "v_head_dim": 8,
    "n_routed_experts": 6, "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 0,
    "routed_scaling_factor": 2.0, "topk_method": "greedy", "rope_theta": 10000.0, "tie_word_embeddings": false}"#;

/// DeepSeek-V2-Lite's layers (`deepseek_v2`): latent attention with q straight from x, softmax
/// routing unnormalized and scaled, shared experts.
#[test]
fn deepseek_v2_with_q_straight_from_x() {
    let cfg = ModelConfig::from_json(DEEPSEEK_V2_TINY).unwrap();
    assert_eq!(cfg.latent, Some(LatentAttention { q_rank: None, kv_rank: 12, rope: 6, v_dim: 8 }));
    assert!(cfg.ffn.iter().all(|f| matches!(f, Ffn::Moe(m) if m.routing == Routing::SoftmaxTopK { normalize: false })));
    check(&cfg, &ModelWeights::random(&cfg, 15, 4.0), &[5, 40, 0, 17]);
}

/// A tiny gpt-oss (`gpt_oss`): layers alternating a sliding window of 2 positions and full
/// attention, a sink logit per head, biases on q, k, v and o, YaRN ×32 untruncated, 8 biased
/// clamped SwiGLU experts top-2 under a biased router.
const GPT_OSS_TINY: &str = r#"{"model_type": "gpt_oss", "vocab_size": 48, "hidden_size": 32,
    "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 8, "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": 2,
    "layer_types": ["sliding_attention", "full_attention"], "rms_norm_eps": 1e-05, "attention_bias": true,
    "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
    "truncate": false, "original_max_position_embeddings": 4096}, "rope_theta": 150000,
    "swiglu_limit": 7.0, "tie_word_embeddings": false}"#;

/// gpt-oss's layers against the f64 model — the window, the sinks and the biases each change
/// the output — and written as a checkpoint (the experts fused, gate and up interleaved) and
/// read back exactly.
#[test]
fn gpt_oss_with_sinks_sliding_windows_and_biased_experts() {
    let cfg = ModelConfig::from_json(GPT_OSS_TINY).unwrap();
    assert_eq!(
        (cfg.family, cfg.window(0), cfg.window(1), cfg.sinks, cfg.o_bias),
        (Family::GptOss, Some(2), None, true, true)
    );
    let Ffn::Moe(m) = cfg.ffn[0] else { panic!("{:?}", cfg.ffn[0]) };
    assert_eq!((m.expert, m.expert_bias, m.routing), (ExpertKind::ClampedSwiGlu, true, Routing::TopKSoftmax));
    let (w, ids) = (ModelWeights::random(&cfg, 17, 4.0), [5, 40, 0, 17, 33]);
    check(&cfg, &w, &ids);
    let want = forward(&cfg, &w, &ids).unwrap();
    let differs = |other: &ModelConfig, w: &ModelWeights| {
        let got = forward(other, w, &ids).unwrap();
        got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) > 1e-3
    };
    assert!(differs(&ModelConfig { windows: Vec::new(), ..cfg.clone() }, &w), "the window matters");
    let mut plain = w.clone();
    plain.layers.iter_mut().for_each(|l| l.sinks.as_mut().unwrap().iter_mut().for_each(|s| *s = -30.0));
    assert!(differs(&cfg, &plain), "the sinks matter");
    // weights without what the config asks for are refused by the server's check, named
    let mut sinkless = w.clone();
    sinkless.layers[1].sinks = None;
    let err = check_weights(&cfg, FixedPoint::default(), &sinkless).unwrap_err().to_string();
    assert!(err.contains("layer 1: 0 sink logits and 32 output-bias values, the config asks for 4 and 32"), "{err}");
    let names = [
        "model.layers.0.self_attn.sinks",
        "model.layers.0.self_attn.o_proj.bias",
        "model.layers.1.mlp.router.bias",
        "model.layers.1.mlp.experts.gate_up_proj",
        "model.layers.1.mlp.experts.gate_up_proj_bias",
        "model.layers.1.mlp.experts.down_proj_bias",
    ];
    reads_back("gpt-oss", GPT_OSS_TINY, &cfg, &w, &names);
}

/// `ranges` also records each router's narrowest choice — the margin by which a token's last
/// expert chosen ranks above the next — and calls one that a private run's error may overturn
/// a near-tie.
#[test]
fn ranges_record_each_routers_narrowest_choice() {
    let (cfg, mut w) = (default_config(), default_weights());
    let ids = [3, 141, 59];
    let seen = ranges(&cfg, &w, &[&ids], NormRange::DEFAULT).unwrap();
    let margins: Vec<(usize, bool)> = seen.margins().iter().map(|m| (m.layer, m.gap > 0.0 && m.token < 3)).collect();
    assert_eq!(margins, [(0, true), (1, true)]);
    assert_eq!(seen.narrowest().map(|m| m.gap), seen.margins().iter().map(|m| m.gap).reduce(f64::min));
    // every expert with the same router column: every token's logits tie, and so its choice
    for layer in &mut w.layers {
        if let FfnWeights::Moe { router, .. } = &mut layer.ffn {
            router.chunks_exact_mut(8).for_each(|row| row.fill(row[0]));
        }
    }
    let tied = ranges(&cfg, &w, &[&ids], NormRange::DEFAULT).unwrap();
    assert!(tied.margins().iter().all(|m| m.gap == 0.0 && m.near_tie()), "{:?}", tied.margins());
}

/// A routing choice broken the other way ([`Variant::flipped`]) changes its token's output and,
/// through causal attention, the later tokens' (in the last layer its own only) — never the
/// earlier ones'; the variants of one pass are each what a pass of its own gives.
#[test]
fn a_flipped_routing_choice_moves_its_token_and_the_later_ones() {
    let (cfg, w) = (default_config(), default_weights());
    let ids = [3, 141, 59, 26];
    let flip = Variant { flipped: vec![(0, 1)], ..Variant::default() };
    let (out, _) = forward_variants(&cfg, &w, &ids, &[Variant::default(), flip.clone()], NormRange::DEFAULT).unwrap();
    assert_eq!(out[0], forward(&cfg, &w, &ids).unwrap());
    assert_eq!(out[1], forward_with(&cfg, &w, &ids, &flip).unwrap());
    let (width, out_as_is) = (cfg.output_width(), out[0].clone());
    let moved: Vec<bool> = out[0].chunks(width).zip(out[1].chunks(width)).map(|(a, b)| a != b).collect();
    assert_eq!(moved, [false, true, true, true]);
    // in the last layer, its own token's only
    let last = Variant { flipped: vec![(1, 1)], ..Variant::default() };
    let out = forward_with(&cfg, &w, &ids, &last).unwrap();
    let moved: Vec<bool> = out.chunks(width).zip(out_as_is.chunks(width)).map(|(a, b)| a != b).collect();
    assert_eq!(moved, [false, true, false, false]);
}

/// A run that broke a near-tie the other way is matched by the model with that choice flipped:
/// `resolve_near_ties` tries the near-ties at the first token beyond the bound, keeps the flip
/// that brings it within, and stops (nothing flipped) where no near-tie explains the distance.
#[test]
fn near_ties_broken_the_other_way_are_found_and_nothing_else_is_flipped() {
    let (cfg, w) = (default_config(), default_weights());
    let ids = [3, 141, 59, 26];
    let (want, flip) = (forward(&cfg, &w, &ids).unwrap(), (0, 1));
    let got = forward_with(&cfg, &w, &ids, &Variant { flipped: vec![flip], ..Variant::default() }).unwrap();
    let distances = |a: &[f64]| -> Vec<f64> { a.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect() };
    let bound = 1e-9;
    assert!(distances(&got).iter().any(|&e| e > bound), "the flip moves nothing");
    // near-ties as `ranges` lists them: the flipped choice among others at the same token
    let tie = |layer: usize, token: usize| Margin { layer, token, gap: 1e-3 };
    let ties = [tie(1, 1), tie(0, 1), tie(1, 2)];
    let (variant, errors) = resolve_near_ties(&cfg, &w, &ids, (&got, distances(&got)), &ties, bound).unwrap();
    assert_eq!(variant.flipped, [flip]);
    assert!(errors.iter().all(|&e| e <= bound), "{errors:?}");
    // no near-tie at that token: the model as is, and its distances
    let (variant, errors) = resolve_near_ties(&cfg, &w, &ids, (&got, distances(&got)), &[tie(1, 2)], bound).unwrap();
    assert!(variant.flipped.is_empty());
    assert_eq!(errors, distances(&got));
    // an output of another length is an error naming both, not a panic
    let err = resolve_near_ties(&cfg, &w, &ids, (&got[1..], distances(&got)), &ties, bound).err();
    assert!(err.is_some_and(|e| e.to_string().contains("distances for 4 tokens")));
}

/// `ranges` finds where the plaintext model leaves a protocol's stated range — and such a value
/// does make the private output wrong, with no error from either party (the protocols cannot
/// check secret values), which is why the check exists.
#[test]
fn ranges_flag_the_values_beyond_a_protocols_range() {
    let (cfg, mut w) = (default_config(), default_weights());
    let ids = [3, 141, 59];
    let within = ranges(&cfg, &w, &[&ids, &[7]], NormRange::DEFAULT).unwrap();
    assert_eq!(within.exceeded().count(), 0, "{within:?}");
    let sites: Vec<&str> = within.sites().iter().map(|r| r.site.as_str()).collect();
    for site in ["layers.0.attn_norm", "layers.0.attention", "layers.1.router", "layers.1.experts", "final_norm"] {
        assert!(sites.contains(&site), "{site} missing from {sites:?}");
    }
    // token 141's embedding 300× larger: every norm input of its residual stream is beyond 64
    let d = cfg.d_model;
    w.embedding[141 * d..142 * d].iter_mut().for_each(|v| *v *= 300.0);
    let beyond = ranges(&cfg, &w, &[&ids], NormRange::DEFAULT).unwrap();
    let named: Vec<&str> = beyond.exceeded().map(|r| r.site.as_str()).collect();
    assert!(named.contains(&"layers.0.attn_norm") && named.contains(&"final_norm"), "{named:?}");
    let r = private(&cfg, &cfg, Plan::default(), Prompt::new(&ids), &w);
    let (got, want) = (r.client.unwrap(), forward(&cfg, &w, &ids).unwrap());
    let error = |got: &[f64]| got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    assert!(error(&got.values) > BOUND, "beyond the norms' range the output is still within {}", error(&got.values));
    // the norms' range that takes them: within every range, and the private output right again
    let needed = beyond.norms_needed().unwrap();
    assert!((9..=10).contains(&needed.bits()), "{needed:?}");
    assert_eq!(ranges(&cfg, &w, &[&ids], needed).unwrap().exceeded().count(), 0);
    let wide = Plan { norms: needed, ..Plan::default() };
    let r = private(&cfg, &cfg, wide, Prompt::new(&ids), &w);
    let got = r.client.unwrap();
    assert!(error(&got.values) <= BOUND, "error {:.2e} with the norms' range 2^{}", error(&got.values), needed.bits());
    // both parties must state the same range
    let r = private_as((&cfg, wide), (&cfg, Plan::default()), Prompt::new(&ids), &w);
    assert!(matches!(r.client, Err(ModelError::Mismatch { .. })), "{:?}", r.client.err());
}

/// Greedy generation's steps: a forward of one new token against both parties' key/value
/// caches gives the last row of the whole sequence's forward — for grouped-query attention
/// and for latent attention (whose cached values are narrower than its keys).
#[test]
fn a_cached_step_equals_the_forward_of_the_whole_sequence() {
    // latent attention, and a sliding window that the step's query moves past a cached key
    let latent = ModelConfig::from_json(DEEPSEEK_V2_TINY).unwrap();
    let gpt_oss = ModelConfig::from_json(GPT_OSS_TINY).unwrap();
    let models = [
        (default_config(), default_weights()),
        (latent.clone(), ModelWeights::random(&latent, 16, 4.0)),
        (gpt_oss.clone(), ModelWeights::random(&gpt_oss, 18, 4.0)),
    ];
    for (cfg, w) in models {
        let (first, second, served) = common::runtime().block_on(async {
            let (c, mut sc, s, mut ss) = common::session_pair().await;
            let (a, b) = tokio::join!(setup_he(&mut sc, Plan::default()), setup_he(&mut ss, Plan::default()));
            a.unwrap();
            b.unwrap();
            let client = async {
                let mut cache = KvCache::new();
                let first =
                    infer_cached(&mut sc, &cfg, Plan::default(), Prompt::new(&[5, 6, 7]), &mut cache, &()).await;
                let second = infer_cached(&mut sc, &cfg, Plan::default(), Prompt::new(&[8]), &mut cache, &()).await;
                assert_eq!(cache.len(), 4);
                finish(&mut sc).await.unwrap();
                (first.unwrap(), second.unwrap())
            };
            let model = CheckedWeights::new(&cfg, ss.format(), &w).unwrap();
            let ((first, second), served) = tokio::join!(client, serve(&mut ss, &model, Plan::default(), &()));
            drop((c, s));
            (first, second, served.unwrap())
        });
        assert_eq!(served, 2);
        let want = forward(&cfg, &w, &[5, 6, 7, 8]).unwrap();
        let v = cfg.vocab;
        assert_eq!((first.values.len(), second.values.len()), (3 * v, v));
        let err = |got: &[f64], want: &[f64]| got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
        assert!(err(&first.values, &want[..3 * v]) <= BOUND);
        let second_err = err(&second.values, &want[3 * v..]);
        assert!(second_err <= BOUND, "{}: {second_err}", cfg.family.model_type());
    }
}

#[test]
fn bad_prompts_and_different_models_fail_on_both_sides() {
    let (cfg, w) = (default_config(), default_weights());
    // a token id beyond the vocabulary: the client refuses, the server is told why
    let Run { client: c, server: s, .. } = private(&cfg, &cfg, Plan::default(), Prompt::new(&[1, 256]), &w);
    assert!(matches!(c, Err(ModelError::Input(ref m)) if m.contains("256")), "{c:?}");
    assert!(matches!(s, Err(ModelError::PeerRefused(ref m)) if m.contains("token id 256")), "{s:?}");
    // the server serves another model
    let mut other = cfg.clone();
    other.norm_eps = 1e-6;
    let Run { client: c, server: s, .. } = private(&cfg, &other, Plan::default(), Prompt::new(&[1, 2]), &w);
    assert!(matches!(c, Err(ModelError::Mismatch { .. })), "{c:?}");
    assert!(matches!(s, Err(ModelError::Mismatch { .. })), "{s:?}");
}

/// The server's view — every frame it receives, in order, with its length — is the same for two
/// prompts of one length (other tokens, other routings); the client's is the same for two
/// weight sets. What is in the frames is ciphertexts, OT messages and masked shares (the
/// protocols' own view tests cover their contents).
#[test]
fn each_party_sees_the_same_message_sequence_whatever_the_other_holds() {
    let (cfg, w) = (default_config(), default_weights());
    let a = private(&cfg, &cfg, Plan::default(), Prompt::new(&[1, 2, 3, 4]), &w);
    let b = private(&cfg, &cfg, Plan::default(), Prompt::new(&[200, 17, 17, 90]), &w);
    assert!(a.client.is_ok() && b.client.is_ok());
    assert!(!a.server_received.is_empty());
    assert_eq!(a.server_received, b.server_received, "the server's view depends on the prompt");
    let other = ModelWeights::random(&cfg, 99, 4.0);
    let c = private(&cfg, &cfg, Plan::default(), Prompt::new(&[1, 2, 3, 4]), &other);
    assert_ne!(a.client.unwrap().values, c.client.unwrap().values);
    assert_eq!(a.client_received, c.client_received, "the client's view depends on the weights");
}

#[test]
fn checkpoints_load_and_mismatches_are_named_before_any_party_starts() {
    let root = std::env::temp_dir().join(format!("secmoe-ckpt-{}", std::process::id()));
    let good = root.join("good");
    common::write_default_checkpoint(&good, |_| {});
    let ckpt = Checkpoint::open(&good).unwrap();
    assert_eq!(ckpt.config(), &default_config());
    let ids = [9, 8, 7];
    assert_eq!(
        forward(ckpt.config(), &ckpt, &ids).unwrap(),
        forward(&default_config(), &default_weights(), &ids).unwrap()
    );

    let refused = |name: &str, edit: &dyn Fn(&mut Vec<HfTensor>)| -> String {
        let dir = root.join(name);
        common::write_default_checkpoint(&dir, edit);
        Checkpoint::open(&dir).unwrap_err().to_string()
    };
    let err = refused("missing", &|t| t.retain(|t| t.name != "model.layers.1.block_sparse_moe.experts.7.w3.weight"));
    assert!(err.contains("`model.layers.1.block_sparse_moe.experts.7.w3.weight` is missing"), "{err}");
    let err = refused("extra", &|t| {
        t.push(HfTensor { name: "model.layers.0.mlp.bias".into(), shape: vec![2], values: vec![0.0; 2] })
    });
    assert!(err.contains("`model.layers.0.mlp.bias` is not part of"), "{err}");
    let err = refused("shape", &|t| {
        let e = t.iter_mut().find(|t| t.name == "model.norm.weight").unwrap();
        (e.shape, e.values) = (vec![32], vec![1.0; 32]);
    });
    assert!(err.contains("`model.norm.weight` has shape [32], the config implies [64]"), "{err}");
    std::fs::write(root.join("good/config.json"), r#"{"model_type": "jamba"}"#).unwrap();
    let err = Checkpoint::open(&good).unwrap_err().to_string();
    assert!(err.contains("jamba"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

/// A weight that does not fit the fixed point (not finite, beyond the experts' 32-bit
/// storage, or a norm's γ beyond 16) is found by the server's check before it serves, named by
/// its checkpoint tensor and flat index there (the engine holds `Linear` weights transposed).
#[test]
fn a_weight_that_does_not_fit_is_named_by_its_checkpoint_tensor() {
    let root = std::env::temp_dir().join(format!("secmoe-values-{}", std::process::id()));
    let cases = [
        ("nan", "model.layers.0.self_attn.q_proj.weight", 3 * 64 + 10, f32::NAN, "not finite"),
        ("large", "model.layers.1.block_sparse_moe.experts.3.w2.weight", 5 * 128 + 7, 1e5, "2^31"),
        // a norm's γ beyond the |γ| ≤ 16 the norms take
        ("gamma", "model.layers.1.post_attention_layernorm.weight", 7, -16.5, "±16"),
    ];
    for (dir, name, index, value, reason) in cases {
        let dir = root.join(dir);
        common::write_default_checkpoint(&dir, |t| {
            t.iter_mut().find(|t| t.name == name).unwrap().values[index] = value
        });
        let ckpt = Checkpoint::open(&dir).unwrap();
        let want = format!("tensor `{name}`, element {index}: {value}");
        let err = CheckedWeights::new(ckpt.config(), FixedPoint::default(), &ckpt).err().unwrap();
        assert!(matches!(err, ModelError::Ring(ref e) if e.to_string().contains(&want)), "{err:?}");
        assert!(err.to_string().contains(reason), "{err}");
    }
    std::fs::remove_dir_all(&root).ok();
}

/// Weights checked for one fixed point are not served in a session that agreed on another:
/// the server refuses the first request, and the client is told why.
#[test]
fn weights_checked_for_another_format_are_refused() {
    let (cfg, w) = (default_config(), default_weights());
    let (client, server) = common::runtime().block_on(async {
        let (c, mut sc, s, mut ss) = common::session_pair_in(FixedPoint::new(16).unwrap()).await;
        let model = CheckedWeights::new(&cfg, FixedPoint::default(), &w).unwrap();
        let client = infer(&mut sc, &cfg, Plan::default(), Prompt::new(&[1, 2]), &());
        let out = tokio::join!(client, serve(&mut ss, &model, Plan::default(), &()));
        drop((c, s));
        out
    });
    let want = "checked for 18 fractional bits, the session agreed on 16";
    assert!(matches!(server, Err(ModelError::Input(ref m)) if m.contains(want)), "{server:?}");
    assert!(matches!(client, Err(ModelError::PeerRefused(ref m)) if m.contains(want)), "{client:?}");
}

/// The public-embedding option (BumbleBee's and BOLT's assumption): the client looks its
/// rows up in the public table, the rest of the model is the same private inference; it must
/// hold the table, and a server that keeps its table private refuses the plan.
#[test]
fn a_public_embedding_is_looked_up_by_the_client() {
    let (cfg, w) = (default_config(), default_weights());
    let ids = [3, 1, 4, 1];
    let public = Plan { embedding: Embedding::Public, ..Plan::default() };
    let r = private(&cfg, &cfg, public, Prompt::new(&ids).with_table(Some(&w.embedding)), &w);
    let got = r.client.unwrap();
    let want = forward(&cfg, &w, &ids).unwrap();
    let worst = got.values.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    assert!(worst <= BOUND, "error {worst:.2e}");
    // no table on the client: it refuses, the server is told why
    let Run { client: c, server: s, .. } = private(&cfg, &cfg, public, Prompt::new(&ids), &w);
    assert!(matches!(c, Err(ModelError::Input(ref m)) if m.contains("needs the table")), "{c:?}");
    assert!(matches!(s, Err(ModelError::PeerRefused(ref m)) if m.contains("needs the table")), "{s:?}");
    // the server keeps its embedding private
    let prompt = Prompt::new(&ids).with_table(Some(&w.embedding));
    let Run { client: c, server: s, .. } = private_as((&cfg, public), (&cfg, Plan::default()), prompt, &w);
    assert!(matches!(c, Err(ModelError::Mismatch { ref theirs, .. }) if !theirs.contains("embedding=public")), "{c:?}");
    assert!(matches!(s, Err(ModelError::Mismatch { .. })), "{s:?}");
}

/// Generation wants the last position's logits only: the final norm and the LM head run on
/// that row (the server is told), the output has one row, the plaintext model's last.
#[test]
fn the_last_position_alone_when_asked() {
    let (cfg, w) = (default_config(), default_weights());
    let ids = [11, 12, 13];
    let r = private(&cfg, &cfg, Plan::default(), Prompt::new(&ids).last_only(true), &w);
    let got = r.client.unwrap();
    let want = forward(&cfg, &w, &ids).unwrap();
    assert_eq!(got.values.len(), cfg.vocab, "one row");
    let worst = got.values.iter().zip(&want[2 * cfg.vocab..]).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    assert!(worst <= BOUND, "error {worst:.2e}");
}
