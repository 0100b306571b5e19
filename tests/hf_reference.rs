//! The reference check against `transformers`: tiny random-weight checkpoints of every family,
//! written by `scripts/hf_reference.py` with the outputs `transformers` computes, loaded here
//! and run (1) through the plaintext model, which must agree to float rounding (the loader's
//! names, orientations and conventions), and (2) through private inference: max |Δ| ≤ 0.05 and
//! the same argmax wherever the reference's two best logits differ by more than 0.1 — or, where
//! a routing near-tie was broken the other way, max |Δ| ≤ 0.05 against the f64 model with that
//! choice flipped.
//!
//! Needs the checkpoints (PyTorch and transformers from PyPI, in a venv the script makes):
//!     python3 scripts/hf_reference.py && cargo test --release --test hf_reference -- --ignored

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![recursion_limit = "256"]

mod common;

use std::path::PathBuf;

use secmoe::model::{
    CheckedWeights, Checkpoint, Ffn, FfnWeights, LayerWeights, ModelConfig, ModelResult, Plan, Positions, Prompt,
    Quantity, Scales, Variant, WeightSource, finish, forward, forward_variants, infer, ranges, resolve_near_ties,
    serve, setup_he,
};
use secmoe::moe::{ExpertKind, MoeConfig};
use secmoe::proto::layernorm::NormRange;

/// Largest |Δ| of private inference against `transformers` (the target).
const PRIVATE_BOUND: f64 = 0.05;
/// Largest |Δ| of the f64 plaintext model against `transformers`' f32.
const PLAIN_BOUND: f64 = 2e-3;
/// Positions whose two best reference logits are closer than this may swap their argmax.
const ARGMAX_MARGIN: f64 = 0.1;

fn root() -> PathBuf {
    std::env::var_os("SECMOE_HF_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/hf-reference"))
}

struct Reference {
    ids: Vec<u32>,
    logits: bool,
    output: Vec<Vec<f64>>,
}

fn load(family: &str) -> (Checkpoint, Reference) {
    let dir = root().join(family);
    let ckpt = Checkpoint::open(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run `python3 scripts/hf_reference.py` first)", dir.display()));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let ids = json["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let output = json["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    (ckpt, Reference { ids, logits: json["kind"] == "logits", output })
}

fn max_diff(got: &[f64], want: &[Vec<f64>]) -> f64 {
    got.iter().zip(want.iter().flatten()).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max)
}

fn check(family: &str) {
    let (ckpt, r) = load(family);
    let cfg = ckpt.config().clone();
    let plain = forward(&cfg, &ckpt, &r.ids).unwrap();
    let plain_err = max_diff(&plain, &r.output);
    assert!(plain_err <= PLAIN_BOUND, "{family}: the plaintext model is off transformers by {plain_err}");
    let got = common::runtime().block_on(async {
        let (c, mut sc, s, mut ss) = common::session_pair().await;
        let (a, b) = tokio::join!(setup_he(&mut sc, Plan::default()), setup_he(&mut ss, Plan::default()));
        a.unwrap();
        b.unwrap();
        let model = CheckedWeights::new(&cfg, ss.format(), &ckpt).unwrap();
        let client = async {
            let out = infer(&mut sc, &cfg, Plan::default(), Prompt::new(&r.ids), &()).await.unwrap();
            finish(&mut sc).await.unwrap();
            out
        };
        let (out, served) = tokio::join!(client, serve(&mut ss, &model, Plan::default(), &()));
        assert_eq!(served.unwrap(), 1);
        drop((c, s));
        out
    });
    let err = max_diff(&got.values, &r.output);
    eprintln!("{family}: plaintext max |Δ| {plain_err:.1e}, private max |Δ| {err:.1e} against transformers");
    if err > PRIVATE_BOUND {
        return near_ties_explain(family, &cfg, &ckpt, &r.ids, &got.values, err);
    }
    if r.logits {
        for (p, (want, arg)) in r.output.iter().zip(got.argmax()).enumerate() {
            let mut sorted = want.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let best = want.iter().enumerate().fold(0, |b, (i, v)| if *v > want[b] { i } else { b });
            if sorted[0] - sorted[1] > ARGMAX_MARGIN {
                assert_eq!(arg, best, "{family}: argmax at position {p}");
            }
        }
    }
}

/// Private inference beyond the bound is accepted only as a routing near-tie broken the other
/// way: the private router logits carry the fixed-point error of the layers before, and a token
/// sent to the expert ranked next moves its output, and through attention the later tokens', by
/// more than any protocol's error (`secmoe ranges` lists the margins; four of these checkpoints
/// choose by less than 10^-2). It passes if the f64 model with such choices flipped — the model
/// checked against `transformers` above, one choice changed — is within the bound.
fn near_ties_explain(family: &str, cfg: &ModelConfig, ckpt: &Checkpoint, ids: &[u32], got: &[f64], err: f64) {
    let (want, ranges) = forward_variants(cfg, ckpt, ids, &[Variant::default()], NormRange::DEFAULT).unwrap();
    let errors = got.iter().zip(&want[0]).map(|(g, w)| (g - w).abs()).collect();
    let (variant, resolved) =
        resolve_near_ties(cfg, ckpt, ids, (got, errors), ranges.near_ties(), PRIVATE_BOUND).unwrap();
    let left = resolved.iter().copied().fold(0.0, f64::max);
    eprintln!("{family}: near-ties broken the other way {:?}, max |Δ| {left:.1e} with them flipped", variant.flipped);
    assert!(
        !variant.flipped.is_empty() && left <= PRIVATE_BOUND,
        "{family}: private inference is off transformers by {err}, and no near-tie explains it"
    );
}

#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn mixtral_matches_transformers() {
    check("mixtral");
}

#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn qwen2_moe_matches_transformers() {
    check("qwen2_moe");
}

#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn qwen3_moe_matches_transformers() {
    check("qwen3_moe");
}

#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn olmoe_matches_transformers() {
    check("olmoe");
}

/// Granite-MoE: each layer's experts in two fused tensors, and four scalar multipliers away
/// from 1, each of which must matter: with any one set back to its default the plaintext model
/// is off transformers by ten times its bound or more.
#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn granitemoe_matches_transformers() {
    check("granitemoe");
    let (ckpt, _) = load("granitemoe");
    type Unscale = (&'static str, fn(&mut ModelConfig));
    let unscaled: [Unscale; 4] = [
        ("embedding multiplier", |c| c.scales.embedding = 1.0),
        ("residual multiplier", |c| c.scales.residual = 1.0),
        ("logits scaling", |c| c.scales.logits = 1.0),
        ("attention multiplier", |c| c.score_scale = 1.0 / (c.head_dim as f64).sqrt()),
    ];
    for (part, unscale) in unscaled {
        let mut cfg = ckpt.config().clone();
        unscale(&mut cfg);
        matters("granitemoe", part, &cfg, &ckpt);
    }
}

/// Granite-MoE with its ungated shared expert (stored fused like the routed ones).
#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn granitemoeshared_matches_transformers() {
    check("granitemoeshared");
}

/// The Switch checkpoint has `expert_capacity` = 1 for 8 tokens on 8 experts, so tokens are
/// dropped, and the drop must matter: without it the plaintext model is off transformers.
#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn switch_encoder_matches_transformers() {
    check("switch");
    let (ckpt, r) = load("switch");
    let mut cfg = ckpt.config().clone();
    for f in &mut cfg.ffn {
        if let Ffn::Moe(m) = f {
            m.expert_capacity = None;
        }
    }
    let undropped = max_diff(&forward(&cfg, &ckpt, &r.ids).unwrap(), &r.output);
    assert!(undropped > PRIVATE_BOUND, "no token was dropped (Δ {undropped:.1e} without the capacity)");
}

/// The checkpoint's weights with each layer's edited.
struct Edited<'a>(&'a Checkpoint, fn(&mut LayerWeights));

/// Drops a layer's selection bias.
fn unbiased(l: &mut LayerWeights) {
    if let FfnWeights::Moe { selection_bias, .. } = &mut l.ffn {
        *selection_bias = None;
    }
}

impl WeightSource for Edited<'_> {
    fn embedding(&self) -> ModelResult<Vec<f32>> {
        self.0.embedding()
    }

    fn layer(&self, i: usize) -> ModelResult<LayerWeights> {
        let mut l = self.0.layer(i)?;
        (self.1)(&mut l);
        Ok(l)
    }

    fn position_bias(&self) -> ModelResult<Option<Vec<f32>>> {
        self.0.position_bias()
    }

    fn final_norm(&self) -> ModelResult<Vec<f32>> {
        self.0.final_norm()
    }

    fn lm_head(&self) -> ModelResult<Option<Vec<f32>>> {
        self.0.lm_head()
    }
}

/// The plaintext model is off transformers by ten times its bound or more without `part`.
fn matters(family: &str, part: &str, cfg: &ModelConfig, weights: &dyn WeightSource) {
    let (_, r) = load(family);
    let off = max_diff(&forward(cfg, weights, &r.ids).unwrap(), &r.output);
    assert!(off > 10.0 * PLAIN_BOUND, "{family}: the {part} does not matter (Δ {off:.1e} without it)");
}

/// GLM-4.5's layers: DeepSeek-V3's MoE block (sigmoid routing with a selection bias, renormalized
/// top-2, a shared expert, a dense first layer, routed scale 2.5) under q/k/v biases, per-head
/// q/k norms and rotary embeddings on half of each head — the bias, the routed scale and the
/// partial rotation each matter.
#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn glm4_moe_matches_transformers() {
    check("glm4_moe");
    let (ckpt, _) = load("glm4_moe");
    let cfg = ckpt.config().clone();
    matters("glm4_moe", "selection bias", &cfg, &Edited(&ckpt, unbiased));
    matters(
        "glm4_moe",
        "routed scale",
        &ModelConfig { scales: Scales { routed: 1.0, ..cfg.scales }, ..cfg.clone() },
        &ckpt,
    );
    let Positions::Rope { theta, .. } = cfg.positions else { panic!("{:?}", cfg.positions) };
    let whole = Positions::Rope { theta, dims: cfg.head_dim, interleaved: false, yarn: None };
    assert_ne!(cfg.positions, whole);
    matters("glm4_moe", "partial rotation", &ModelConfig { positions: whole, ..cfg.clone() }, &ckpt);
}

/// dots.llm1: the same MoE block unnormalized (top-3, two shared experts as one, routed scale
/// 1.5) under Qwen3's attention, tied embeddings.
#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn dots1_matches_transformers() {
    check("dots1");
    let (ckpt, _) = load("dots1");
    matters("dots1", "selection bias", ckpt.config(), &Edited(&ckpt, unbiased));
}

/// ERNIE-4.5: softmax over all experts, the top-3 of p + the selection bias, renormalized, two
/// shared experts, a dense first layer, GPT-J-style rotary pairs — the bias and the pairing
/// each matter.
#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn ernie4_5_moe_matches_transformers() {
    check("ernie4_5_moe");
    let (ckpt, _) = load("ernie4_5_moe");
    let cfg = ckpt.config().clone();
    matters("ernie4_5_moe", "selection bias", &cfg, &Edited(&ckpt, unbiased));
    let Positions::Rope { theta, dims, interleaved: true, .. } = cfg.positions else { panic!("{:?}", cfg.positions) };
    let halves = Positions::Rope { theta, dims, interleaved: false, yarn: None };
    matters("ernie4_5_moe", "rotary pairing", &ModelConfig { positions: halves, ..cfg.clone() }, &ckpt);
}

/// The config with every group-limited routing lifted.
fn ungrouped(cfg: &ModelConfig) -> ModelConfig {
    let ffn = cfg
        .ffn
        .iter()
        .map(|f| match f {
            Ffn::Moe(m) => Ffn::Moe(MoeConfig { groups: None, ..*m }),
            dense => *dense,
        })
        .collect();
    ModelConfig { ffn, ..cfg.clone() }
}

/// DeepSeek-V2's layers: multi-head latent attention with q straight from x (V2-Lite's), YaRN
/// (the frequencies rescaled, the scores times m(4, 0.707)²), softmax top-3 unnormalized and
/// scaled by 1.5 within the best 2 of 4 groups, two shared experts, a dense first layer — YaRN
/// and the groups matter.
#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn deepseek_v2_matches_transformers() {
    check("deepseek_v2");
    let (ckpt, _) = load("deepseek_v2");
    let cfg = ckpt.config().clone();
    assert_eq!(cfg.latent.map(|l| l.q_rank), Some(None));
    let Positions::Rope { theta, dims, interleaved, yarn: Some(_) } = cfg.positions else {
        panic!("{:?}", cfg.positions)
    };
    // its frequencies and its score multiplier
    let plain = Positions::Rope { theta, dims, interleaved, yarn: None };
    let score_scale = 1.0 / (cfg.head_dim as f64).sqrt();
    assert!(cfg.score_scale > 1.2 * score_scale, "{}", cfg.score_scale);
    matters("deepseek_v2", "YaRN scaling", &ModelConfig { positions: plain, score_scale, ..cfg.clone() }, &ckpt);
    matters("deepseek_v2", "group limit", &ungrouped(&cfg), &ckpt);
}

/// DeepSeek-V3's layers: latent attention with q through a rank and its norm, YaRN with cos and
/// sin scaled by m(8, 1)/m(8, 0.707), sigmoid routing with the selection bias renormalized and
/// scaled by 2.5, top-3 of 16 within the best 2 of 4 groups, a shared expert — the bias, the
/// groups and the rotary pairing matter.
#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn deepseek_v3_matches_transformers() {
    check("deepseek_v3");
    let (ckpt, _) = load("deepseek_v3");
    let cfg = ckpt.config().clone();
    assert_eq!(cfg.latent.map(|l| l.q_rank), Some(Some(24)));
    matters("deepseek_v3", "selection bias", &cfg, &Edited(&ckpt, unbiased));
    matters("deepseek_v3", "group limit", &ungrouped(&cfg), &ckpt);
    let Positions::Rope { theta, dims, interleaved: true, yarn } = cfg.positions else { panic!("{:?}", cfg.positions) };
    let halves = Positions::Rope { theta, dims, interleaved: false, yarn };
    matters("deepseek_v3", "rotary pairing", &ModelConfig { positions: halves, ..cfg.clone() }, &ckpt);
}

/// The same DeepSeek-V3 with its matrices in FP8 as the published checkpoint ships them (E4M3
/// with a `weight_scale_inv` per block of 16 × 16, `quantization_config`) and a multi-token
/// prediction layer after the last, which the loader skips, against `transformers` on the
/// dequantized weights.
#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn deepseek_v3_in_fp8_matches_transformers() {
    check("deepseek_v3_fp8");
}

/// gpt-oss's layers: sinks, biases on every attention map, a window of 3 on layers 0 and 2,
/// YaRN ×32 untruncated, biased clamped SwiGLU experts under a biased router, stored fused —
/// the window, the sinks and the router's bias matter.
#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn gpt_oss_matches_transformers() {
    check("gpt_oss");
    let (ckpt, _) = load("gpt_oss");
    let cfg = ckpt.config().clone();
    assert_eq!((cfg.window(0), cfg.window(1), cfg.window(2)), (Some(3), None, Some(3)));
    // the experts' pre-activations pass the clamps at ±7
    let (_, r) = load("gpt_oss");
    let seen = ranges(&cfg, &ckpt, &[&r.ids], NormRange::DEFAULT).unwrap();
    for q in [Quantity::Activation(ExpertKind::ClampedSwiGlu), Quantity::UpBranch(ExpertKind::ClampedSwiGlu)] {
        let max = seen.sites().iter().filter(|s| s.quantity == q).map(|s| s.max).fold(0.0, f64::max);
        assert!(max > 7.5, "{q}: at most {max}");
    }
    matters("gpt_oss", "sliding window", &ModelConfig { windows: Vec::new(), ..cfg.clone() }, &ckpt);
    let sinkless = |l: &mut LayerWeights| l.sinks.iter_mut().flatten().for_each(|s| *s = -60.0);
    matters("gpt_oss", "sinks", &cfg, &Edited(&ckpt, sinkless));
    let unrouted = |l: &mut LayerWeights| {
        if let FfnWeights::Moe { logit_bias, .. } = &mut l.ffn {
            *logit_bias = None;
        }
    };
    matters("gpt_oss", "router bias", &cfg, &Edited(&ckpt, unrouted));
}

/// The same gpt-oss with its experts in MXFP4 as the published checkpoints ship them
/// (`_blocks` and `_scales`, out × in, with `quantization_config`), against `transformers`'
/// own dequantization.
#[test]
#[ignore = "needs the checkpoints of scripts/hf_reference.py (PyTorch and transformers)"]
fn gpt_oss_in_mxfp4_matches_transformers() {
    check("gpt_oss_mxfp4");
}
