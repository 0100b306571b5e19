//! A model's public architecture, read from a Hugging Face `config.json`: what both parties
//! know (the client needs nothing else to take part).

use std::fmt;
use std::path::Path;

use serde_json::Value;

use super::{ModelError, ModelResult};
use crate::moe::{ExpertKind, GroupLimit, MoeConfig, Routing, SharedExpert};
use crate::proto::piecewise::{SWIGLU_ALPHA, SWIGLU_LIMIT};

/// The checkpoint families the loader maps (tensor names and router conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `mixtral`: Mixtral's `block_sparse_moe` (top-k softmax over the chosen logits).
    Mixtral,
    /// `qwen2_moe`: q/k/v biases, a sigmoid-gated shared expert, dense layers by
    /// `decoder_sparse_step` and `mlp_only_layers`.
    Qwen2Moe,
    /// `olmoe`: RMSNorm on the full q and k.
    Olmoe,
    /// `qwen3_moe`: RMSNorm on each head of q and k, no shared expert, dense layers by
    /// `decoder_sparse_step` and `mlp_only_layers`.
    Qwen3Moe,
    /// `switch_transformers`, the encoder: T5 relative position bias, no score scaling, ReLU
    /// experts, top-1 Switch routing on every `encoder_sparse_step`-th layer.
    SwitchEncoder,
    /// `granitemoe`: Mixtral's routing with each layer's experts stored as two fused tensors,
    /// and four scalar multipliers ([`Scales`], the score scale).
    GraniteMoe,
    /// `granitemoeshared`: `granitemoe` with an ungated shared expert.
    GraniteMoeShared,
    /// `glm4_moe` (GLM-4.5): DeepSeek-V3's MoE block (sigmoid routing with a selection bias,
    /// ungated shared experts, dense first layers), q/k/v biases, rotary embeddings on part of
    /// each head, optional per-head q/k norms.
    Glm4Moe,
    /// `dots1` (dots.llm1): DeepSeek-V3's MoE block under Qwen3's attention.
    Dots1,
    /// `ernie4_5_moe` (ERNIE-4.5): softmax routing with a selection bias, shared experts, dense
    /// layers outside `moe_layer_start_index..=moe_layer_end_index`, GPT-J-style rotary pairs.
    Ernie45Moe,
    /// `deepseek_v2` (DeepSeek-V2, V2-Lite): multi-head latent attention ([`LatentAttention`]),
    /// softmax routing unnormalized and scaled, ungated shared experts, dense first layers.
    DeepseekV2,
    /// `deepseek_v3` (DeepSeek-V3, Kimi-K2, Moonlight): multi-head latent attention under
    /// DeepSeek-V3's MoE block (sigmoid routing with a selection bias).
    DeepseekV3,
    /// `gpt_oss` (gpt-oss-20b, -120b): biases on every attention map and on the router and
    /// experts, attention sinks, sliding-window layers alternating with full ones, YaRN,
    /// clamped SwiGLU experts stored fused.
    GptOss,
}

impl Family {
    /// The `model_type` of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Mixtral => "mixtral",
            Family::Qwen2Moe => "qwen2_moe",
            Family::Olmoe => "olmoe",
            Family::Qwen3Moe => "qwen3_moe",
            Family::SwitchEncoder => "switch_transformers",
            Family::GraniteMoe => "granitemoe",
            Family::GraniteMoeShared => "granitemoeshared",
            Family::Glm4Moe => "glm4_moe",
            Family::Dots1 => "dots1",
            Family::Ernie45Moe => "ernie4_5_moe",
            Family::DeepseekV2 => "deepseek_v2",
            Family::DeepseekV3 => "deepseek_v3",
            Family::GptOss => "gpt_oss",
        }
    }
}

/// How attention learns positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Positions {
    /// Rotary embeddings with base θ on the first `dims` entries of each head (all of it but
    /// in GLM-4.5, whose `partial_rotary_factor` is ½); the other entries pass unrotated.
    Rope {
        /// The base θ.
        theta: f64,
        /// Entries of each head rotated (even, at most the head's width).
        dims: usize,
        /// Frequency i turns entries (2i, 2i + 1) (ERNIE-4.5's GPT-J-style pairs), not
        /// (i, i + dims/2) (`rotate_half`, Llama's).
        interleaved: bool,
        /// YaRN's rescaled frequencies (a long-context checkpoint's `rope_type: "yarn"`).
        yarn: Option<Yarn>,
    },
    /// T5's bucketed relative position bias, bidirectional (the server's table, added to the
    /// scores of every layer).
    RelativeBias {
        /// Buckets of the table.
        buckets: usize,
        /// Distance from which all positions share the last bucket.
        max_distance: usize,
    },
}

/// YaRN's rotary frequencies (Peng et al. 2023, as `transformers` computes them): frequency i
/// of base θ is divided by `factor` below the correction range of rotations
/// [`beta_slow`, `beta_fast`] over `original_max` positions, kept above it, blended linearly
/// inside; cos and sin are multiplied by `attention`. All public: the tables change, no
/// protocol step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    /// The context extension factor.
    pub factor: f64,
    /// The pretraining context (`original_max_position_embeddings`).
    pub original_max: usize,
    /// Rotations below which a frequency is interpolated (`beta_fast`, 32).
    pub beta_fast: f64,
    /// Rotations above which a frequency is kept (`beta_slow`, 1).
    pub beta_slow: f64,
    /// The correction range rounded outwards to whole entries (`truncate`, true).
    pub truncate: bool,
    /// Multiplies cos and sin (`attention_factor`).
    pub attention: f64,
}

impl Yarn {
    /// YaRN's m(s) = 0.1·m·ln s + 1 for s > 1, else 1.
    pub fn mscale(factor: f64, m: f64) -> f64 {
        if factor <= 1.0 { 1.0 } else { 0.1 * m * factor.ln() + 1.0 }
    }

    /// The `dims / 2` inverse frequencies of base θ (in f32, as `transformers`).
    pub fn inverse_frequencies(&self, theta: f64, dims: usize) -> Vec<f32> {
        let correction = |rotations: f64| {
            dims as f64 * (self.original_max as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * theta.ln())
        };
        let (mut low, mut high) = (correction(self.beta_fast), correction(self.beta_slow));
        if self.truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0) as f32, high.min(dims as f64 - 1.0) as f32);
        if low == high {
            high += 0.001;
        }
        (0..dims / 2)
            .map(|i| {
                let base = (theta as f32).powf((2 * i) as f32 / dims as f32);
                let (kept, divided) = (1.0 / base, 1.0 / (self.factor as f32 * base));
                let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                let keep = 1.0 - ramp;
                divided * (1.0 - keep) + kept * keep
            })
            .collect()
    }
}

/// Multi-head latent attention (DeepSeek-V2/V3): q from x by one map or through a rank
/// `q_rank` with an RMSNorm between; keys and values from one RMSNormed latent of rank
/// `kv_rank`, each head's key `head_dim` = nope + `rope` wide with its last `rope` entries
/// one rotated part for all heads (mapped from x directly), its value `v_dim` wide. The
/// heads are then those of multi-head attention (`kv_heads` = `heads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentAttention {
    /// q's rank (`q_lora_rank`), or q straight from x.
    pub q_rank: Option<usize>,
    /// The keys' and values' latent rank (`kv_lora_rank`).
    pub kv_rank: usize,
    /// Rotated entries at the end of each q and k head (`qk_rope_head_dim`).
    pub rope: usize,
    /// Width of each head's value (`v_head_dim`).
    pub v_dim: usize,
}

/// RMSNorm on q and k after their projections, before the rotary embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    /// None (Mixtral, Qwen2-MoE, Switch).
    None,
    /// Over all of q and all of k, γ as wide as each (OLMoE).
    Full,
    /// Over each head, one γ of the head's width for all query heads and one for all key heads
    /// (Qwen3-MoE).
    PerHead,
}

impl QkNorm {
    /// The rows each norm runs over, as wide as its γ: (q's, k's), for `heads`/`kv_heads`
    /// heads of `head_dim`; None without the norms.
    pub fn widths(self, heads: usize, kv_heads: usize, head_dim: usize) -> Option<(usize, usize)> {
        match self {
            QkNorm::None => None,
            QkNorm::Full => Some((heads * head_dim, kv_heads * head_dim)),
            QkNorm::PerHead => Some((head_dim, head_dim)),
        }
    }
}

/// Public scalar multipliers of a model's residual stream (Granite's, and DeepSeek-V3's routed
/// scale; 1 elsewhere). The server folds them into its weights when it converts them
/// ([`Scales::fold`]): the embedding table, the maps that end each residual branch (attention's
/// output map, every expert's W2) and the LM head, so they cost no protocol step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scales {
    /// Multiplies the embedding rows (`embedding_multiplier`).
    pub embedding: f64,
    /// Multiplies each block's attention and feed-forward outputs before they are added to the
    /// residual stream (`residual_multiplier`).
    pub residual: f64,
    /// Multiplies the logits (1 / `logits_scaling`).
    pub logits: f64,
    /// Multiplies the routed experts' gates (DeepSeek-V3's `routed_scaling_factor`), not the
    /// shared expert's: folded into every routed expert's W2.
    pub routed: f64,
}

impl Scales {
    /// No multipliers.
    pub const ONE: Scales = Scales { embedding: 1.0, residual: 1.0, logits: 1.0, routed: 1.0 };

    /// `values` times `scale` (unchanged at 1).
    pub fn fold(scale: f64, values: &mut [f32]) {
        if scale != 1.0 {
            values.iter_mut().for_each(|v| *v = (*v as f64 * scale) as f32);
        }
    }
}

/// One layer's feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ffn {
    /// A dense expert every token goes through.
    Dense {
        /// Hidden width.
        d_ff: usize,
        /// What it computes.
        kind: ExpertKind,
    },
    /// A Mixture-of-Experts layer.
    Moe(MoeConfig),
}

/// A Transformer's public architecture (pre-norm blocks with RMSNorm, as all supported
/// families use).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The checkpoint family.
    pub family: Family,
    /// Vocabulary size.
    pub vocab: usize,
    /// d, the model width.
    pub d_model: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Causal (decoder) or bidirectional (encoder) attention.
    pub causal: bool,
    /// ε of the RMSNorms.
    pub norm_eps: f64,
    /// Position encoding.
    pub positions: Positions,
    /// Scale of the attention scores: 1/√head_dim, or 1 for T5.
    pub score_scale: f64,
    /// Biases on q, k and v (Qwen2-MoE, GLM-4.5, gpt-oss).
    pub qkv_bias: bool,
    /// A bias on attention's output map (gpt-oss).
    pub o_bias: bool,
    /// A learned logit per head joins every row of that head's scores in the softmax and is
    /// dropped after it (gpt-oss's attention sinks): the server's, on its share.
    pub sinks: bool,
    /// Each layer's sliding window: a position attends to the latest `w` positions, itself
    /// included; `None`, or no entry, for full attention.
    pub windows: Vec<Option<usize>>,
    /// RMSNorm on q and k before the rotary embedding (OLMoE: full, Qwen3-MoE: per head).
    pub qk_norm: QkNorm,
    /// Multi-head latent attention instead of q/k/v maps (DeepSeek-V2/V3).
    pub latent: Option<LatentAttention>,
    /// The feed-forward block of each layer.
    pub ffn: Vec<Ffn>,
    /// The LM head is the embedding table (transposed).
    pub tie_embeddings: bool,
    /// Logits over the vocabulary (a causal LM), or the final hidden states (an encoder).
    pub lm_head: bool,
    /// Scalar multipliers of the residual stream.
    pub scales: Scales,
}

impl ModelConfig {
    /// Layers.
    pub fn layers(&self) -> usize {
        self.ffn.len()
    }

    /// Width of each head's value: `head_dim`, or the latent attention's `v_dim`.
    pub fn v_head_dim(&self) -> usize {
        self.latent.map_or(self.head_dim, |l| l.v_dim)
    }

    /// Where the rotated entries of each q and k head start: at the end with latent
    /// attention, else first.
    pub fn rotary_at(&self) -> usize {
        match (self.latent, self.positions) {
            (Some(_), Positions::Rope { dims, .. }) => self.head_dim - dims,
            _ => 0,
        }
    }

    /// Whether the family's routers add a bias to their logits (gpt-oss's `router.bias`).
    pub fn router_bias(&self) -> bool {
        self.family == Family::GptOss
    }

    /// Layer `i`'s sliding window, if it has one.
    pub fn window(&self, i: usize) -> Option<usize> {
        self.windows.get(i).copied().flatten()
    }

    /// Whether query position `query` attends to key position `key` in layer `i` (causal,
    /// within the layer's window).
    pub fn attends(&self, i: usize, query: usize, key: usize) -> bool {
        !self.causal || (key <= query && self.window(i).is_none_or(|w| query - key < w))
    }

    /// The widths of the q and k norms' rows (and γ), if the model has them.
    pub fn qk_norm_widths(&self) -> Option<(usize, usize)> {
        self.qk_norm.widths(self.heads, self.kv_heads, self.head_dim)
    }

    /// Width of the model's output per position: the vocabulary, or d for an encoder.
    pub fn output_width(&self) -> usize {
        if self.lm_head { self.vocab } else { self.d_model }
    }

    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> ModelResult<ModelConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Io(path.display().to_string(), e))?;
        Self::from_json(&text)
    }

    /// Parses a Hugging Face `config.json`. An unsupported `model_type` or option is an error
    /// naming it.
    pub fn from_json(text: &str) -> ModelResult<ModelConfig> {
        let v: Value = serde_json::from_str(text).map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let c = Json(&v);
        let model_type = c.str("model_type")?;
        // gpt-oss's MXFP4 experts and block-scaled FP8 (E4M3) weights are decoded at load
        c.refuse_unless("quantization_config", |q| {
            let method = q.get("quant_method").and_then(Value::as_str);
            method == Some("mxfp4") || (method == Some("fp8") && q.get("fmt").is_none_or(|f| f == "e4m3"))
        })?;
        let cfg = match model_type.as_str() {
            "mixtral" | "qwen2_moe" | "qwen3_moe" | "olmoe" | "granitemoe" | "granitemoeshared" | "glm4_moe"
            | "dots1" | "ernie4_5_moe" => decoder(&c, &model_type)?,
            "deepseek_v2" | "deepseek_v3" => deepseek(&c, &model_type)?,
            "gpt_oss" => gpt_oss(&c)?,
            "switch_transformers" => switch(&c)?,
            other => {
                return Err(ModelError::Config(format!(
                    "model_type `{other}` is not supported (mixtral, qwen2_moe, qwen3_moe, olmoe, granitemoe, \
                     granitemoeshared, glm4_moe, dots1, ernie4_5_moe, deepseek_v2, deepseek_v3, gpt_oss, \
                     switch_transformers)"
                )));
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the sizes against each other and against what the protocols support.
    pub fn validate(&self) -> ModelResult<()> {
        let bad = |what: String| Err(ModelError::Config(what));
        if self.vocab == 0 || self.d_model == 0 || self.heads == 0 || self.head_dim == 0 || self.ffn.is_empty() {
            return bad(format!("zero size in {self}"));
        }
        let Scales { embedding, residual, logits, routed } = self.scales;
        for (name, s) in [
            ("embedding", embedding),
            ("residual", residual),
            ("logits", logits),
            ("routed", routed),
            ("score", self.score_scale),
        ] {
            if !s.is_finite() || s == 0.0 {
                return bad(format!("the {name} multiplier is {s}"));
            }
        }
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!("{} query heads over {} key/value heads", self.heads, self.kv_heads));
        }
        if let Positions::Rope { dims, .. } = self.positions
            && (dims == 0 || !dims.is_multiple_of(2) || dims > self.head_dim)
        {
            return bad(format!("rotary embeddings on {dims} entries of heads of {}", self.head_dim));
        }
        if let Some(l) = self.latent {
            let rope = match self.positions {
                Positions::Rope { dims, .. } => dims,
                Positions::RelativeBias { .. } => 0,
            };
            if l.kv_rank == 0 || l.q_rank == Some(0) || l.v_dim == 0 || rope != l.rope || rope >= self.head_dim {
                return bad(format!("latent attention {l:?} with heads of {} and {:?}", self.head_dim, self.positions));
            }
            if self.kv_heads != self.heads || self.qkv_bias || self.qk_norm != QkNorm::None {
                return bad("latent attention has one key and value per head, no q/k/v biases or q/k norms".into());
            }
        }
        let norm_max = crate::proto::layernorm::MAX_WIDTH;
        let latent_widths = self.latent.map_or(0, |l| l.kv_rank.max(l.q_rank.unwrap_or(0)));
        let widest = self.qk_norm_widths().map_or(self.d_model, |(q, k)| self.d_model.max(q).max(k)).max(latent_widths);
        if widest > norm_max {
            return bad(format!("width {widest} beyond the norms' {norm_max}"));
        }
        if !(self.windows.is_empty() || self.windows.len() == self.layers()) || self.windows.contains(&Some(0)) {
            return bad(format!("sliding windows {:?} for {} layers", self.windows, self.layers()));
        }
        if self.windows.iter().any(Option::is_some) && !self.causal {
            return bad("sliding windows on bidirectional attention".into());
        }
        for (i, f) in self.ffn.iter().enumerate() {
            if let Ffn::Moe(m) = f {
                m.validate().map_err(|e| ModelError::Config(format!("layer {i}: {e}")))?;
            }
        }
        Ok(())
    }

    /// The canonical text both parties compare before a run: every field, the layers' blocks
    /// as a table of their distinct kinds and each layer's index into it (a few bytes a layer,
    /// so that a 61-layer model's statement stays within [`crate::proto::agree::MAX_STATEMENT`]).
    pub fn canonical(&self) -> String {
        let mut kinds: Vec<Ffn> = Vec::new();
        let layers: Vec<String> = self
            .ffn
            .iter()
            .map(|f| {
                let i = kinds.iter().position(|k| k == f).unwrap_or_else(|| {
                    kinds.push(*f);
                    kinds.len() - 1
                });
                i.to_string()
            })
            .collect();
        let windows: Vec<String> =
            (0..self.layers()).map(|i| self.window(i).map_or("-".to_string(), |w| w.to_string())).collect();
        let windows = if self.windows.is_empty() { String::new() } else { format!(" windows [{}]", windows.join(",")) };
        let rest = ModelConfig { ffn: Vec::new(), windows: Vec::new(), ..self.clone() };
        format!("{rest:?}{windows} blocks {kinds:?} by layer [{}]", layers.join(","))
    }
}

impl fmt::Display for ModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let moe = self.ffn.iter().filter(|f| matches!(f, Ffn::Moe(_))).count();
        write!(
            f,
            "{} ({} layers, {} MoE; d = {}, {}/{} heads of {}, vocab {})",
            self.family.model_type(),
            self.layers(),
            moe,
            self.d_model,
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.vocab
        )
    }
}

/// Typed access to the fields of a `config.json`, each error naming the field.
struct Json<'a>(&'a Value);

impl Json<'_> {
    fn field(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> ModelResult<usize> {
        self.field(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| ModelError::Config(format!("config.json: `{key}` missing or not a count")))
    }

    fn usize_or(&self, key: &str, default: usize) -> ModelResult<usize> {
        if self.field(key).is_some() { self.usize(key) } else { Ok(default) }
    }

    fn f64_or(&self, key: &str, default: f64) -> ModelResult<f64> {
        match self.field(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| ModelError::Config(format!("config.json: `{key}` is not a number"))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> ModelResult<bool> {
        match self.field(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| ModelError::Config(format!("config.json: `{key}` is not a boolean"))),
        }
    }

    fn str(&self, key: &str) -> ModelResult<String> {
        self.field(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ModelError::Config(format!("config.json: `{key}` missing or not a string")))
    }

    /// Refuses an option this engine does not implement, naming it.
    fn refuse_unless(&self, key: &str, ok: impl Fn(&Value) -> bool) -> ModelResult<()> {
        match self.field(key) {
            Some(v) if !ok(v) => Err(ModelError::Config(format!("config.json: `{key}` = {v} is not supported"))),
            _ => Ok(()),
        }
    }
}

fn activation(c: &Json, key: &str, default: &str) -> ModelResult<()> {
    let act = if c.field(key).is_some() { c.str(key)? } else { default.to_string() };
    if act == default {
        Ok(())
    } else {
        Err(ModelError::Config(format!("config.json: `{key}` = \"{act}\" is not supported (\"{default}\")")))
    }
}

/// The rotary fields: `rope_parameters` (transformers 5), or the top level with the scaling in
/// `rope_scaling` (the checkpoints'); the dictionary naming the scaling, if any.
fn rope_fields<'a>(c: &Json<'a>) -> (Json<'a>, Option<Json<'a>>) {
    let top: &'a Value = c.0;
    let field = |key| top.get(key).filter(|v| !v.is_null());
    match field("rope_parameters") {
        Some(p) => (Json(p), Some(Json(p))),
        None => (Json(top), field("rope_scaling").map(Json)),
    }
}

/// Rotary embeddings from [`rope_fields`] on `int(head_dim · partial_rotary_factor)` entries of
/// each head, plain or YaRN-scaled (other scalings are refused by name); a factor other than 1
/// is refused unless the family applies it (`partial`, its default).
fn rope(c: &Json, head_dim: usize, partial: Option<f64>, interleaved: bool) -> ModelResult<Positions> {
    let (fields, scaling) = rope_fields(c);
    let kind = match &scaling {
        None => "default".to_string(),
        Some(s) if s.field("rope_type").is_some() => s.str("rope_type")?,
        Some(s) if s.field("type").is_some() => s.str("type")?,
        Some(_) => "default".to_string(),
    };
    let theta = fields.f64_or("rope_theta", 10000.0)?;
    let factor = match partial {
        Some(default) => fields.f64_or("partial_rotary_factor", c.f64_or("partial_rotary_factor", default)?)?,
        None => {
            fields.refuse_unless("partial_rotary_factor", |v| v.as_f64() == Some(1.0))?;
            1.0
        }
    };
    let yarn = match (kind.as_str(), scaling) {
        ("default", _) => None,
        ("yarn", Some(s)) => Some(yarn(c, &s)?),
        _ => {
            return Err(ModelError::Config(format!(
                "config.json: rotary scaling `{kind}` is not supported (default, yarn)"
            )));
        }
    };
    // Python's int() of the product
    Ok(Positions::Rope { theta, dims: (head_dim as f64 * factor) as usize, interleaved, yarn })
}

/// YaRN's parameters from the scaling dictionary `s` (`transformers`' defaults and its
/// `attention_factor` rule).
fn yarn(c: &Json, s: &Json) -> ModelResult<Yarn> {
    let original_max = s.usize("original_max_position_embeddings")?;
    let factor = match s.field("factor") {
        Some(_) => s.f64_or("factor", 1.0)?,
        None => c.usize("max_position_embeddings")? as f64 / original_max as f64,
    };
    let (mscale, all) = (s.f64_or("mscale", 0.0)?, s.f64_or("mscale_all_dim", 0.0)?);
    let attention = match s.field("attention_factor") {
        Some(_) => s.f64_or("attention_factor", 1.0)?,
        None if mscale != 0.0 && all != 0.0 => Yarn::mscale(factor, mscale) / Yarn::mscale(factor, all),
        None => Yarn::mscale(factor, 1.0),
    };
    // transformers' `or`: 0 takes the default too
    let nonzero = |key: &str, default: f64| -> ModelResult<f64> {
        Ok(Some(s.f64_or(key, default)?).filter(|v| *v != 0.0).unwrap_or(default))
    };
    let yarn = Yarn {
        factor,
        original_max,
        beta_fast: nonzero("beta_fast", 32.0)?,
        beta_slow: nonzero("beta_slow", 1.0)?,
        truncate: s.bool_or("truncate", true)?,
        attention,
    };
    if !(factor >= 1.0 && factor.is_finite() && original_max > 0 && attention.is_finite() && attention > 0.0) {
        return Err(ModelError::Config(format!("config.json: YaRN scaling {yarn:?}")));
    }
    Ok(yarn)
}

/// DeepSeek-V3's MoE block (GLM-4.5, dots.llm1): `n_routed_experts` SwiGLU experts of
/// `moe_intermediate_size`, sigmoid routing, group-limited when `topk_group` < `n_group`,
/// `n_shared_experts` ungated shared experts (one of their summed width), the routed scale.
fn sigmoid_top_k(c: &Json, d: usize, normalize: bool, groups: (usize, usize)) -> ModelResult<MoeConfig> {
    let d_ff = c.usize("moe_intermediate_size")?;
    let shared = c.usize_or("n_shared_experts", 0)?;
    Ok(MoeConfig {
        experts: c.usize("n_routed_experts")?,
        top_k: c.usize("num_experts_per_tok")?,
        d_model: d,
        d_ff,
        routing: Routing::SigmoidTopK { normalize: c.bool_or("norm_topk_prob", normalize)? },
        expert: ExpertKind::SwiGlu,
        shared: (shared > 0).then_some(SharedExpert { d_ff: shared * d_ff, sigmoid_gate: false }),
        expert_capacity: None,
        groups: group_limit(c, groups)?,
        expert_bias: false,
    })
}

/// Group-limited routing from `n_group` and `topk_group` (`defaults`: the family's): `None`
/// when every group is chosen.
fn group_limit(c: &Json, (groups, chosen): (usize, usize)) -> ModelResult<Option<GroupLimit>> {
    let (groups, chosen) = (c.usize_or("n_group", groups)?, c.usize_or("topk_group", chosen)?);
    Ok((chosen < groups).then_some(GroupLimit { groups, chosen }))
}

/// The SwiGLU MoE block of Qwen2-MoE, Qwen3-MoE and OLMoE: softmax over all experts, then top-k,
/// renormalized when `norm_topk_prob` (`intermediate_size` wide; Qwen2-MoE overrides it).
fn softmax_top_k(c: &Json, d: usize) -> ModelResult<MoeConfig> {
    // the checkpoints' name; transformers 5 writes its own name for it
    let experts = if c.field("num_experts").is_some() { "num_experts" } else { "num_local_experts" };
    Ok(MoeConfig {
        experts: c.usize(experts)?,
        top_k: c.usize("num_experts_per_tok")?,
        d_model: d,
        d_ff: c.usize("intermediate_size")?,
        routing: Routing::SoftmaxTopK { normalize: c.bool_or("norm_topk_prob", false)? },
        expert: ExpertKind::SwiGlu,
        shared: None,
        expert_capacity: None,
        groups: None,
        expert_bias: false,
    })
}

/// The layers of Qwen2-MoE and Qwen3-MoE: `moe` on every `decoder_sparse_step`-th layer not
/// in `mlp_only_layers`, `dense` on the others (transformers' rule).
fn sparse_layers(c: &Json, layers: usize, moe: MoeConfig) -> ModelResult<Vec<Ffn>> {
    let step = c.usize_or("decoder_sparse_step", 1)?;
    let dense_only: Vec<usize> = match c.field("mlp_only_layers") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
            .ok_or_else(|| ModelError::Config("config.json: `mlp_only_layers` is not a list of layers".into()))?,
    };
    let dense = Ffn::Dense { d_ff: c.usize("intermediate_size")?, kind: ExpertKind::SwiGlu };
    Ok((0..layers)
        .map(|i| {
            let sparse = !dense_only.contains(&i) && moe.experts > 0 && step > 0 && (i + 1) % step == 0;
            if sparse { Ffn::Moe(moe) } else { dense }
        })
        .collect())
}

/// Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Granite-MoE, GLM-4.5 and dots.llm1: causal decoders
/// with RoPE, RMSNorm and SwiGLU experts.
fn decoder(c: &Json, model_type: &str) -> ModelResult<ModelConfig> {
    let d = c.usize("hidden_size")?;
    let heads = c.usize("num_attention_heads")?;
    let layers = c.usize("num_hidden_layers")?;
    activation(c, "hidden_act", "silu")?;
    let head_dim = c.usize_or("head_dim", d / heads.max(1))?;
    let mut family = Family::Mixtral;
    let (mut qkv_bias, mut qk_norm) = (false, QkNorm::None);
    let (mut score_scale, mut scales) = (1.0 / (head_dim as f64).sqrt(), Scales::ONE);
    // the partial rotary factor's default where the family has one, GPT-J-style rotary pairs,
    // the default of `tie_word_embeddings`
    let (mut partial, mut interleaved, mut tie_default) = (None, false, false);
    // Mixtral's MoE block (top-k, then a softmax over the chosen logits); Granite's too
    let top_k_softmax = || -> ModelResult<MoeConfig> {
        Ok(MoeConfig {
            experts: c.usize("num_local_experts")?,
            top_k: c.usize("num_experts_per_tok")?,
            d_model: d,
            d_ff: c.usize("intermediate_size")?,
            routing: Routing::TopKSoftmax,
            expert: ExpertKind::SwiGlu,
            shared: None,
            expert_capacity: None,
            groups: None,
            expert_bias: false,
        })
    };
    // sliding-window layers (Mixtral's window on every layer, dots.llm1's by `layer_types`)
    let mut windows = Vec::new();
    let ffn: Vec<Ffn> = match model_type {
        "mixtral" => {
            windows = self::windows(c, layers, (|_| "sliding_attention", None))?;
            vec![Ffn::Moe(top_k_softmax()?); layers]
        }
        "granitemoe" | "granitemoeshared" => {
            c.refuse_unless("attention_bias", |v| v == false)?;
            let shared = c.usize_or("shared_intermediate_size", 0)?;
            family = if model_type == "granitemoe" { Family::GraniteMoe } else { Family::GraniteMoeShared };
            if family == Family::GraniteMoe && shared > 0 {
                return Err(ModelError::Config(
                    "config.json: `shared_intermediate_size` needs granitemoeshared".into(),
                ));
            }
            score_scale = c.f64_or("attention_multiplier", 1.0)?;
            scales = Scales {
                embedding: c.f64_or("embedding_multiplier", 1.0)?,
                residual: c.f64_or("residual_multiplier", 1.0)?,
                logits: 1.0 / c.f64_or("logits_scaling", 1.0)?,
                routed: 1.0,
            };
            let moe = MoeConfig {
                shared: (shared > 0).then_some(SharedExpert { d_ff: shared, sigmoid_gate: false }),
                ..top_k_softmax()?
            };
            vec![Ffn::Moe(moe); layers]
        }
        "qwen2_moe" => {
            family = Family::Qwen2Moe;
            qkv_bias = c.bool_or("qkv_bias", true)?;
            c.refuse_unless("use_sliding_window", |v| v == false)?;
            let shared = c.usize_or("shared_expert_intermediate_size", 0)?;
            let moe = MoeConfig {
                d_ff: c.usize("moe_intermediate_size")?,
                shared: (shared > 0).then_some(SharedExpert { d_ff: shared, sigmoid_gate: true }),
                ..softmax_top_k(c, d)?
            };
            sparse_layers(c, layers, moe)?
        }
        "glm4_moe" | "dots1" => {
            let glm = model_type == "glm4_moe";
            family = if glm { Family::Glm4Moe } else { Family::Dots1 };
            if glm {
                // biases on q, k and v only
                qkv_bias = c.bool_or("attention_bias", false)?;
                qk_norm = if c.bool_or("use_qk_norm", false)? { QkNorm::PerHead } else { QkNorm::None };
                partial = Some(0.5);
            } else {
                // Qwen3's attention: its bias would be on the output map too
                qk_norm = QkNorm::PerHead;
                c.refuse_unless("attention_bias", |v| v == false)?;
                if c.field("layer_types").is_none() {
                    c.refuse_unless("use_sliding_window", |v| v == false)?;
                }
                windows = self::windows(c, layers, (|_| "full_attention", None))?;
            }
            scales.routed = c.f64_or("routed_scaling_factor", 1.0)?;
            let moe = sigmoid_top_k(c, d, glm, (1, 1))?;
            let dense = Ffn::Dense { d_ff: c.usize("intermediate_size")?, kind: ExpertKind::SwiGlu };
            let first_dense = c.usize_or("first_k_dense_replace", if glm { 1 } else { 0 })?;
            (0..layers).map(|i| if i < first_dense { dense } else { Ffn::Moe(moe) }).collect()
        }
        "ernie4_5_moe" => {
            family = Family::Ernie45Moe;
            // biases on every linear map, the LM head's included
            c.refuse_unless("use_bias", |v| v == false)?;
            interleaved = true;
            tie_default = true;
            let (d_ff, shared) = (c.usize("moe_intermediate_size")?, c.usize_or("moe_num_shared_experts", 2)?);
            let moe = MoeConfig {
                experts: c.usize("moe_num_experts")?,
                top_k: c.usize("moe_k")?,
                d_model: d,
                d_ff,
                routing: Routing::BiasedSoftmaxTopK,
                expert: ExpertKind::SwiGlu,
                shared: (shared > 0).then_some(SharedExpert { d_ff: shared * d_ff, sigmoid_gate: false }),
                expert_capacity: None,
                groups: None,
                expert_bias: false,
            };
            let dense = Ffn::Dense { d_ff: c.usize("intermediate_size")?, kind: ExpertKind::SwiGlu };
            let (start, interval) = (c.usize_or("moe_layer_start_index", 1)?, c.usize_or("moe_layer_interval", 1)?);
            // −1 (transformers' default) is the last layer
            let end = match c.field("moe_layer_end_index").and_then(Value::as_i64) {
                None | Some(-1) => layers.saturating_sub(1),
                Some(e) => usize::try_from(e)
                    .map_err(|_| ModelError::Config(format!("config.json: `moe_layer_end_index` = {e}")))?,
            };
            (0..layers)
                .map(|i| {
                    let sparse = interval > 0 && (i + 1) % interval == 0 && (start..=end).contains(&i);
                    if sparse { Ffn::Moe(moe) } else { dense }
                })
                .collect()
        }
        "qwen3_moe" => {
            family = Family::Qwen3Moe;
            qk_norm = QkNorm::PerHead;
            // its attention bias would be on the output map too
            c.refuse_unless("attention_bias", |v| v == false)?;
            c.refuse_unless("use_sliding_window", |v| v == false)?;
            let moe = MoeConfig { d_ff: c.usize("moe_intermediate_size")?, ..softmax_top_k(c, d)? };
            sparse_layers(c, layers, moe)?
        }
        _ => {
            family = Family::Olmoe;
            qk_norm = QkNorm::Full;
            c.refuse_unless("clip_qkv", |_| false)?;
            c.refuse_unless("attention_bias", |v| v == false)?;
            vec![Ffn::Moe(softmax_top_k(c, d)?); layers]
        }
    };
    Ok(ModelConfig {
        family,
        vocab: c.usize("vocab_size")?,
        d_model: d,
        heads,
        kv_heads: c.usize_or("num_key_value_heads", heads)?,
        head_dim,
        causal: true,
        norm_eps: c.f64_or("rms_norm_eps", 1e-6)?,
        positions: rope(c, head_dim, partial, interleaved)?,
        score_scale,
        qkv_bias,
        o_bias: false,
        sinks: false,
        windows,
        qk_norm,
        latent: None,
        ffn,
        tie_embeddings: c.bool_or("tie_word_embeddings", tie_default)?,
        lm_head: true,
        scales,
    })
}

/// DeepSeek-V2 and V3 (and V3's descendants, Kimi-K2 and Moonlight): multi-head latent
/// attention with GPT-J-style rotary pairs (V3's `rope_interleave`, V2's always), YaRN's
/// score multiplier m(s, `mscale_all_dim`)² where the scaling names one, dense layers before
/// `first_k_dense_replace`, then MoE blocks with `n_shared_experts` ungated shared experts and
/// the routed scale — V2's softmax top-k unnormalized, V3's sigmoid routing with the selection
/// bias, each group-limited as the checkpoint says.
fn deepseek(c: &Json, model_type: &str) -> ModelResult<ModelConfig> {
    let v3 = model_type == "deepseek_v3";
    let d = c.usize("hidden_size")?;
    let heads = c.usize("num_attention_heads")?;
    let layers = c.usize("num_hidden_layers")?;
    activation(c, "hidden_act", "silu")?;
    c.refuse_unless("attention_bias", |v| v == false)?;
    c.refuse_unless("num_key_value_heads", |v| v.as_u64() == Some(heads as u64))?;
    let (nope, rope_dim) = (c.usize_or("qk_nope_head_dim", 128)?, c.usize_or("qk_rope_head_dim", 64)?);
    let latent = LatentAttention {
        // null: q straight from x (V2-Lite); absent: transformers' default
        q_rank: match c.0.get("q_lora_rank") {
            None => Some(1536),
            Some(Value::Null) => None,
            Some(_) => Some(c.usize("q_lora_rank")?),
        },
        kv_rank: c.usize_or("kv_lora_rank", 512)?,
        rope: rope_dim,
        v_dim: c.usize_or("v_head_dim", 128)?,
    };
    let interleaved = !v3 || c.bool_or("rope_interleave", true)?;
    let positions = rope(c, rope_dim, None, interleaved)?;
    let head_dim = nope + rope_dim;
    let mut score_scale = 1.0 / (head_dim as f64).sqrt();
    if let (Positions::Rope { yarn: Some(y), .. }, (_, Some(s))) = (positions, rope_fields(c)) {
        let all = s.f64_or("mscale_all_dim", 0.0)?;
        if all != 0.0 {
            score_scale *= Yarn::mscale(y.factor, all).powi(2);
        }
    }
    let (d_ff, shared) = (
        c.usize_or("moe_intermediate_size", if v3 { 2048 } else { 1407 })?,
        c.usize_or("n_shared_experts", if v3 { 1 } else { 2 })?,
    );
    let moe = if v3 {
        c.refuse_unless("scoring_func", |v| v == "sigmoid")?;
        sigmoid_top_k(c, d, true, (8, 4))?
    } else {
        c.refuse_unless("scoring_func", |v| v == "softmax")?;
        c.refuse_unless("topk_method", |v| v == "greedy" || v == "group_limited_greedy")?;
        let limited = c.field("topk_method").is_some() && c.str("topk_method")? == "group_limited_greedy";
        // transformers' DeepSeek-V2 router never renormalizes
        c.refuse_unless("norm_topk_prob", |v| v == false)?;
        MoeConfig {
            experts: c.usize_or("n_routed_experts", 64)?,
            top_k: c.usize("num_experts_per_tok")?,
            d_model: d,
            d_ff,
            routing: Routing::SoftmaxTopK { normalize: false },
            expert: ExpertKind::SwiGlu,
            shared: (shared > 0).then_some(SharedExpert { d_ff: shared * d_ff, sigmoid_gate: false }),
            expert_capacity: None,
            groups: if limited { group_limit(c, (1, 1))? } else { None },
            expert_bias: false,
        }
    };
    c.refuse_unless("moe_layer_freq", |v| v.as_u64() == Some(1))?;
    let dense = Ffn::Dense { d_ff: c.usize("intermediate_size")?, kind: ExpertKind::SwiGlu };
    let first_dense = c.usize_or("first_k_dense_replace", if v3 { 3 } else { 0 })?;
    Ok(ModelConfig {
        family: if v3 { Family::DeepseekV3 } else { Family::DeepseekV2 },
        vocab: c.usize("vocab_size")?,
        d_model: d,
        heads,
        kv_heads: heads,
        head_dim,
        causal: true,
        norm_eps: c.f64_or("rms_norm_eps", 1e-6)?,
        positions,
        score_scale,
        qkv_bias: false,
        o_bias: false,
        sinks: false,
        windows: Vec::new(),
        qk_norm: QkNorm::None,
        latent: Some(latent),
        ffn: (0..layers).map(|i| if i < first_dense { dense } else { Ffn::Moe(moe) }).collect(),
        tie_embeddings: c.bool_or("tie_word_embeddings", false)?,
        lm_head: true,
        scales: Scales { routed: c.f64_or("routed_scaling_factor", if v3 { 2.5 } else { 1.0 })?, ..Scales::ONE },
    })
}

/// Each layer's sliding window from `layer_types` (`"sliding_attention"` layers take
/// `sliding_window`, `"full_attention"` ones none), or, where the config leaves them out, the
/// family's defaults: layer i's kind and the window (Mixtral's: a window everywhere when
/// `sliding_window` is set; gpt-oss's: every other layer, 128). Empty when no layer has one.
fn windows(
    c: &Json,
    layers: usize,
    (kind, window): (fn(usize) -> &'static str, Option<usize>),
) -> ModelResult<Vec<Option<usize>>> {
    let window = if c.field("sliding_window").is_some() { Some(c.usize("sliding_window")?) } else { window };
    let kinds: Vec<String> = match c.field("layer_types") {
        None => (0..layers).map(|i| kind(i).to_string()).collect(),
        Some(v) => v
            .as_array()
            .filter(|a| a.len() == layers)
            .and_then(|a| a.iter().map(|t| t.as_str().map(str::to_string)).collect())
            .ok_or_else(|| ModelError::Config(format!("config.json: `layer_types` is not a list of {layers} kinds")))?,
    };
    let windows = kinds
        .iter()
        .map(|k| match k.as_str() {
            "full_attention" => Ok(None),
            "sliding_attention" => Ok(window),
            other => Err(ModelError::Config(format!(
                "config.json: layer type `{other}` is not supported (full_attention, sliding_attention)"
            ))),
        })
        .collect::<ModelResult<Vec<_>>>()?;
    Ok(if windows.iter().any(Option::is_some) { windows } else { Vec::new() })
}

/// gpt-oss: grouped-query attention with biases on all four maps and a sink logit per head,
/// sliding-window layers (`layer_types`, by default every other one from the first) between
/// full ones, YaRN (by default ×32 over 4096 positions, θ = 150 000, untruncated), and MoE
/// blocks of clamped SwiGLU experts with biases under a biased router (top-k of the logits,
/// then the softmax over the k: Mixtral's gates).
fn gpt_oss(c: &Json) -> ModelResult<ModelConfig> {
    let d = c.usize("hidden_size")?;
    let heads = c.usize("num_attention_heads")?;
    let layers = c.usize("num_hidden_layers")?;
    let head_dim = c.usize_or("head_dim", d / heads.max(1))?;
    c.refuse_unless("swiglu_alpha", |v| v.as_f64() == Some(SWIGLU_ALPHA))?;
    c.refuse_unless("swiglu_limit", |v| v.as_f64() == Some(SWIGLU_LIMIT))?;
    let bias = c.bool_or("attention_bias", true)?;
    let positions = if c.field("rope_parameters").is_none() && c.field("rope_scaling").is_none() {
        let yarn = Yarn {
            factor: 32.0,
            original_max: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate: false,
            attention: Yarn::mscale(32.0, 1.0),
        };
        let theta = c.f64_or("rope_theta", 150_000.0)?;
        Positions::Rope { theta, dims: head_dim, interleaved: false, yarn: Some(yarn) }
    } else {
        rope(c, head_dim, None, false)?
    };
    let alternate = |i: usize| if i.is_multiple_of(2) { "sliding_attention" } else { "full_attention" };
    let windows = windows(c, layers, (alternate, Some(128)))?;
    let moe = MoeConfig {
        experts: c.usize("num_local_experts")?,
        top_k: c.usize_or("num_experts_per_tok", 4)?,
        d_model: d,
        d_ff: c.usize("intermediate_size")?,
        routing: Routing::TopKSoftmax,
        expert: ExpertKind::ClampedSwiGlu,
        shared: None,
        expert_capacity: None,
        groups: None,
        expert_bias: true,
    };
    Ok(ModelConfig {
        family: Family::GptOss,
        vocab: c.usize("vocab_size")?,
        d_model: d,
        heads,
        kv_heads: c.usize_or("num_key_value_heads", heads)?,
        head_dim,
        causal: true,
        norm_eps: c.f64_or("rms_norm_eps", 1e-5)?,
        positions,
        score_scale: 1.0 / (head_dim as f64).sqrt(),
        qkv_bias: bias,
        o_bias: bias,
        sinks: true,
        windows,
        qk_norm: QkNorm::None,
        latent: None,
        ffn: vec![Ffn::Moe(moe); layers],
        tie_embeddings: c.bool_or("tie_word_embeddings", false)?,
        lm_head: true,
        scales: Scales::ONE,
    })
}

/// The Switch Transformers encoder (the SecMoE paper's family).
fn switch(c: &Json) -> ModelResult<ModelConfig> {
    let d = c.usize("d_model")?;
    let heads = c.usize("num_heads")?;
    let layers = c.usize("num_layers")?;
    activation(c, "dense_act_fn", "relu")?;
    c.refuse_unless("is_gated_act", |v| v == false)?;
    c.refuse_unless("router_bias", |v| v == false)?;
    let d_ff = c.usize("d_ff")?;
    let sparse_layers = c.usize_or("num_sparse_encoder_layers", 0)?;
    let step = layers.checked_div(sparse_layers).unwrap_or(layers);
    let moe = MoeConfig {
        experts: c.usize("num_experts")?,
        top_k: 1,
        d_model: d,
        d_ff,
        routing: Routing::Switch,
        expert: ExpertKind::Relu,
        shared: None,
        expert_capacity: Some(c.usize_or("expert_capacity", 64)?),
        groups: None,
        expert_bias: false,
    };
    let dense = Ffn::Dense { d_ff, kind: ExpertKind::Relu };
    Ok(ModelConfig {
        family: Family::SwitchEncoder,
        vocab: c.usize("vocab_size")?,
        d_model: d,
        heads,
        kv_heads: heads,
        head_dim: c.usize("d_kv")?,
        causal: false,
        norm_eps: c.f64_or("layer_norm_epsilon", 1e-6)?,
        positions: Positions::RelativeBias {
            buckets: c.usize_or("relative_attention_num_buckets", 32)?,
            max_distance: c.usize_or("relative_attention_max_distance", 128)?,
        },
        score_scale: 1.0,
        qkv_bias: false,
        o_bias: false,
        sinks: false,
        windows: Vec::new(),
        qk_norm: QkNorm::None,
        latent: None,
        ffn: (0..layers)
            .map(|i| if step > 0 && (i % step == 1 || step == 1) { Ffn::Moe(moe) } else { dense })
            .collect(),
        tie_embeddings: true,
        lm_head: false,
        scales: Scales::ONE,
    })
}

/// T5's bucket of the relative position `memory − query`, bidirectional.
pub fn relative_bucket(relative: i64, buckets: usize, max_distance: usize) -> usize {
    let half = (buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let distance = relative.abs();
    let exact = half / 2;
    bucket += if distance < exact {
        distance
    } else {
        let scaled =
            (distance as f32 / exact as f32).ln() / (max_distance as f32 / exact as f32).ln() * (half - exact) as f32;
        (exact + scaled as i64).min(half - 1)
    };
    bucket as usize
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_t5() {
        // values of transformers' _relative_position_bucket(…, bidirectional=True, 32, 128)
        let cases = [(0, 0), (1, 17), (-1, 1), (7, 23), (-8, 8), (20, 26), (-100, 15), (500, 31)];
        for (rel, want) in cases {
            assert_eq!(relative_bucket(rel, 32, 128), want, "relative position {rel}");
        }
    }

    /// Qwen3-30B-A3B's `config.json` (as published, transformers 4.51): 48 MoE layers of 128
    /// experts, top-8 renormalized, heads of 128 on d = 2048, per-head q/k norms; turning on
    /// what the engine does not implement is refused by name.
    const QWEN3_30B_A3B: &str = r#"{"architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false,
        "attention_dropout": 0.0, "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645,
        "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 6144, "max_position_embeddings": 40960, "max_window_layers": 48,
        "mlp_only_layers": [], "model_type": "qwen3_moe", "moe_intermediate_size": 768,
        "norm_topk_prob": true, "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
        "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": false,
        "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001, "sliding_window": null, "tie_word_embeddings": false,
        "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true,
        "use_sliding_window": false, "vocab_size": 151936}"#;

    /// GLM-4.5-Air's `config.json` architecture fields (`zai-org/GLM-4.5-Air`, transformers
    /// 4.54): 46 layers, the first dense, 128 experts of 1408 top-8 renormalized by σ scores
    /// plus bias, one shared expert, heads of 128 rotated on their first 64 entries.
    const GLM_45_AIR: &str = r#"{"architectures": ["Glm4MoeForCausalLM"], "attention_bias": true,
        "attention_dropout": 0.0, "pad_token_id": 151329, "eos_token_id": [151329, 151336, 151338],
        "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "partial_rotary_factor": 0.5,
        "initializer_range": 0.02, "intermediate_size": 10944, "max_position_embeddings": 131072,
        "model_type": "glm4_moe", "moe_intermediate_size": 1408, "norm_topk_prob": true,
        "num_attention_heads": 96, "n_group": 1, "topk_group": 1, "n_routed_experts": 128,
        "n_shared_experts": 1, "routed_scaling_factor": 1.0, "num_experts_per_tok": 8,
        "first_k_dense_replace": 1, "num_hidden_layers": 46, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 1000000, "num_nextn_predict_layers": 1,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.54.0",
        "use_cache": true, "use_qk_norm": false, "vocab_size": 151552}"#;

    #[test]
    fn glm4_moe_configs_are_read() {
        let cfg = ModelConfig::from_json(GLM_45_AIR).unwrap();
        assert_eq!(
            (cfg.family, cfg.d_model, cfg.heads, cfg.kv_heads, cfg.head_dim),
            (Family::Glm4Moe, 4096, 96, 8, 128)
        );
        assert_eq!(
            (cfg.positions, cfg.qkv_bias, cfg.qk_norm),
            (Positions::Rope { theta: 1e6, dims: 64, interleaved: false, yarn: None }, true, QkNorm::None)
        );
        let moe = MoeConfig {
            experts: 128,
            top_k: 8,
            d_model: 4096,
            d_ff: 1408,
            routing: Routing::SigmoidTopK { normalize: true },
            expert: ExpertKind::SwiGlu,
            shared: Some(SharedExpert { d_ff: 1408, sigmoid_gate: false }),
            expert_capacity: None,
            groups: None,
            expert_bias: false,
        };
        assert_eq!(cfg.ffn[0], Ffn::Dense { d_ff: 10944, kind: ExpertKind::SwiGlu });
        assert!(cfg.ffn[1..].iter().all(|f| *f == Ffn::Moe(moe)) && cfg.layers() == 46);
        let refused = |from: &str, to: &str| {
            let text = GLM_45_AIR.replace(from, to);
            ModelConfig::from_json(&text).unwrap_err().to_string()
        };
        // DeepSeek-V3's groups: 8 of 16 experts, the best 4 chosen
        let grouped = GLM_45_AIR.replace(r#""n_group": 1, "topk_group": 1"#, r#""n_group": 8, "topk_group": 4"#);
        let Ffn::Moe(grouped) = ModelConfig::from_json(&grouped).unwrap().ffn[1] else { panic!("dense") };
        assert_eq!(grouped.groups, Some(GroupLimit { groups: 8, chosen: 4 }));
        let uneven = refused(r#""n_group": 1, "topk_group": 1"#, r#""n_group": 6, "topk_group": 4"#);
        assert!(uneven.contains("layer 1") && uneven.contains("the top 4 of 6 groups of 128 experts"), "{uneven}");
        // YaRN needs its pretraining context
        let yarn = refused(r#""rope_scaling": null"#, r#""rope_scaling": {"type": "yarn"}"#);
        assert!(yarn.contains("original_max_position_embeddings"), "{yarn}");
        assert!(
            refused(r#""partial_rotary_factor": 0.5"#, r#""partial_rotary_factor": 0.001"#)
                .contains("rotary embeddings on 0")
        );
        // dots.llm1's sliding-window layers by `layer_types`
        let types: Vec<&str> = (0..46).map(|i| if i < 2 { "sliding_attention" } else { "full_attention" }).collect();
        let dots = GLM_45_AIR
            .replace(r#""attention_bias": true"#, r#""attention_bias": false"#)
            .replace(r#""partial_rotary_factor": 0.5"#, r#""partial_rotary_factor": 1.0"#)
            .replace(
                r#""model_type": "glm4_moe""#,
                &format!(r#""model_type": "dots1", "sliding_window": 64, "layer_types": {types:?}"#),
            );
        let cfg = ModelConfig::from_json(&dots).unwrap();
        assert_eq!((cfg.window(0), cfg.window(1), cfg.window(2)), (Some(64), Some(64), None));
        assert!(cfg.attends(0, 70, 7) && !cfg.attends(0, 70, 6) && cfg.attends(2, 70, 0) && !cfg.attends(2, 7, 8));
        let short = dots.replace(r#""full_attention", "full_attention"]"#, r#""full_attention"]"#);
        assert!(ModelConfig::from_json(&short).unwrap_err().to_string().contains("list of 46"));
    }

    /// ERNIE-4.5-21B-A3B's architecture fields (`baidu/ERNIE-4.5-21B-A3B-PT`, as transformers'
    /// defaults state them): 28 layers, the first dense, 64 experts of 1536 top-6, two shared,
    /// tied embeddings by default.
    const ERNIE_45_21B: &str = r#"{"architectures": ["Ernie4_5_MoeForCausalLM"], "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 2560, "intermediate_size": 12288,
        "max_position_embeddings": 131072, "model_type": "ernie4_5_moe", "num_attention_heads": 20,
        "num_key_value_heads": 4, "num_hidden_layers": 28, "pad_token_id": 0, "rms_norm_eps": 1e-05,
        "use_cache": false, "vocab_size": 103424, "rope_theta": 500000, "use_bias": false,
        "moe_num_experts": 64, "moe_num_shared_experts": 2, "moe_layer_start_index": 1,
        "moe_intermediate_size": 1536, "moe_k": 6, "moe_layer_interval": 1, "torch_dtype": "bfloat16"}"#;

    #[test]
    fn ernie4_5_moe_configs_are_read() {
        let cfg = ModelConfig::from_json(ERNIE_45_21B).unwrap();
        assert_eq!(
            (cfg.family, cfg.d_model, cfg.heads, cfg.kv_heads, cfg.head_dim),
            (Family::Ernie45Moe, 2560, 20, 4, 128)
        );
        assert_eq!(
            (cfg.positions, cfg.tie_embeddings),
            (Positions::Rope { theta: 5e5, dims: 128, interleaved: true, yarn: None }, true)
        );
        let moe = MoeConfig {
            experts: 64,
            top_k: 6,
            d_model: 2560,
            d_ff: 1536,
            routing: Routing::BiasedSoftmaxTopK,
            expert: ExpertKind::SwiGlu,
            shared: Some(SharedExpert { d_ff: 3072, sigmoid_gate: false }),
            expert_capacity: None,
            groups: None,
            expert_bias: false,
        };
        assert_eq!(cfg.ffn[0], Ffn::Dense { d_ff: 12288, kind: ExpertKind::SwiGlu });
        assert!(cfg.ffn[1..].iter().all(|f| *f == Ffn::Moe(moe)) && cfg.layers() == 28);
        let every_other =
            ERNIE_45_21B.replace(r#""moe_layer_interval": 1"#, r#""moe_layer_interval": 2, "moe_layer_end_index": 5"#);
        let cfg = ModelConfig::from_json(&every_other).unwrap();
        let sparse: Vec<usize> = (0..28).filter(|&i| matches!(cfg.ffn[i], Ffn::Moe(_))).collect();
        assert_eq!(sparse, [1, 3, 5]);
        let biased = ERNIE_45_21B.replace(r#""use_bias": false"#, r#""use_bias": true"#);
        assert!(ModelConfig::from_json(&biased).unwrap_err().to_string().contains("use_bias"));
    }

    #[test]
    fn qwen3_moe_configs_are_read() {
        let cfg = ModelConfig::from_json(QWEN3_30B_A3B).unwrap();
        assert_eq!(
            (cfg.family, cfg.vocab, cfg.d_model, cfg.heads, cfg.kv_heads),
            (Family::Qwen3Moe, 151936, 2048, 32, 4)
        );
        assert_eq!((cfg.head_dim, cfg.qk_norm_widths(), cfg.qkv_bias), (128, Some((128, 128)), false));
        assert_eq!(cfg.positions, Positions::Rope { theta: 1e6, dims: 128, interleaved: false, yarn: None });
        let moe = MoeConfig {
            experts: 128,
            top_k: 8,
            d_model: 2048,
            d_ff: 768,
            routing: Routing::SoftmaxTopK { normalize: true },
            expert: ExpertKind::SwiGlu,
            shared: None,
            expert_capacity: None,
            groups: None,
            expert_bias: false,
        };
        assert_eq!(cfg.ffn, vec![Ffn::Moe(moe); 48]);
        // transformers 5 writes `num_local_experts`; dense layers by `mlp_only_layers`
        let v5 = QWEN3_30B_A3B.replace("\"num_experts\"", "\"num_local_experts\"").replace("[]", "[0, 47]");
        let cfg = ModelConfig::from_json(&v5).unwrap();
        assert_eq!(cfg.ffn[0], Ffn::Dense { d_ff: 6144, kind: ExpertKind::SwiGlu });
        assert_eq!((cfg.ffn[1], cfg.ffn[47]), (Ffn::Moe(moe), cfg.ffn[0]));
        for (from, to, named) in [
            ("\"use_sliding_window\": false", "\"use_sliding_window\": true", "use_sliding_window"),
            ("\"attention_bias\": false", "\"attention_bias\": true", "attention_bias"),
            ("\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"longrope\", \"factor\": 4.0}", "longrope"),
            ("\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}", "original_max"),
            ("\"head_dim\": 128", "\"head_dim\": 16384", "width 16384"),
        ] {
            let err = ModelConfig::from_json(&QWEN3_30B_A3B.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains(named), "{named}: {err}");
        }
    }

    /// granite-3.1-1b-a400m's architecture: 24 MoE layers of 32 experts, top-8, tied, its four
    /// multipliers; options it does not take are refused by name.
    #[test]
    fn granite_moe_configs_are_read() {
        use crate::model::GRANITE_1B_A400M;
        let cfg = ModelConfig::from_json(GRANITE_1B_A400M).unwrap();
        assert_eq!(
            (cfg.family, cfg.vocab, cfg.d_model, cfg.heads, cfg.kv_heads, cfg.head_dim),
            (Family::GraniteMoe, 49155, 1024, 16, 8, 64)
        );
        assert_eq!(
            (cfg.score_scale, cfg.tie_embeddings, cfg.positions),
            (0.015625, true, Positions::Rope { theta: 1.5e6, dims: 64, interleaved: false, yarn: None })
        );
        assert_eq!(cfg.scales, Scales { embedding: 12.0, residual: 0.22, logits: 1.0 / 6.0, routed: 1.0 });
        let moe = MoeConfig {
            experts: 32,
            top_k: 8,
            d_model: 1024,
            d_ff: 512,
            routing: Routing::TopKSoftmax,
            expert: ExpertKind::SwiGlu,
            shared: None,
            expert_capacity: None,
            groups: None,
            expert_bias: false,
        };
        assert_eq!(cfg.ffn, vec![Ffn::Moe(moe); 24]);
        let shared =
            GRANITE_1B_A400M.replace("\"granitemoe\"", "\"granitemoeshared\", \"shared_intermediate_size\": 1024");
        let cfg = ModelConfig::from_json(&shared).unwrap();
        let with_shared = MoeConfig { shared: Some(SharedExpert { d_ff: 1024, sigmoid_gate: false }), ..moe };
        assert_eq!((cfg.family, cfg.ffn[23]), (Family::GraniteMoeShared, Ffn::Moe(with_shared)));
        for (from, to, named) in [
            ("\"attention_bias\": false", "\"attention_bias\": true", "attention_bias"),
            ("\"granitemoe\"", "\"granitemoe\", \"shared_intermediate_size\": 64", "granitemoeshared"),
            ("\"logits_scaling\": 6.0", "\"logits_scaling\": 0", "logits multiplier"),
        ] {
            let err = ModelConfig::from_json(&GRANITE_1B_A400M.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains(named), "{named}: {err}");
        }
    }

    #[test]
    fn deepseek_v2_configs_are_read() {
        use crate::model::DEEPSEEK_V2_LITE;
        let cfg = ModelConfig::from_json(DEEPSEEK_V2_LITE).unwrap();
        assert_eq!(
            (cfg.family, cfg.d_model, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.v_head_dim()),
            (Family::DeepseekV2, 2048, 16, 16, 192, 128)
        );
        assert_eq!(cfg.latent, Some(LatentAttention { q_rank: None, kv_rank: 512, rope: 64, v_dim: 128 }));
        let Positions::Rope { theta, dims: 64, interleaved: true, yarn: Some(yarn) } = cfg.positions else {
            panic!("{:?}", cfg.positions)
        };
        assert_eq!((theta, yarn.factor, yarn.original_max, yarn.attention), (1e4, 40.0, 4096, 1.0));
        assert_eq!(cfg.rotary_at(), 128);
        // 1/√192 · m(40, 0.707)²
        let m = 0.1 * 0.707 * 40f64.ln() + 1.0;
        assert!((cfg.score_scale - m * m / 192f64.sqrt()).abs() < 1e-12, "{}", cfg.score_scale);
        let moe = MoeConfig {
            experts: 64,
            top_k: 6,
            d_model: 2048,
            d_ff: 1408,
            routing: Routing::SoftmaxTopK { normalize: false },
            expert: ExpertKind::SwiGlu,
            shared: Some(SharedExpert { d_ff: 2816, sigmoid_gate: false }),
            expert_capacity: None,
            groups: None,
            expert_bias: false,
        };
        assert_eq!(cfg.ffn[0], Ffn::Dense { d_ff: 10944, kind: ExpertKind::SwiGlu });
        assert!(cfg.ffn[1..].iter().all(|f| *f == Ffn::Moe(moe)) && cfg.layers() == 27);
        // the V2 (236B) shape: q through a rank of 1536
        let cfg = ModelConfig::from_json(&DEEPSEEK_V2_LITE.replace("\"q_lora_rank\": null", "\"q_lora_rank\": 1536"))
            .unwrap();
        assert_eq!(cfg.latent.unwrap().q_rank, Some(1536));
        // DeepSeek-V2's routing: the best 3 of 8 groups by their best probability, then top-6
        let grouped = DEEPSEEK_V2_LITE
            .replace("\"topk_method\": \"greedy\"", "\"topk_method\": \"group_limited_greedy\"")
            .replace("\"n_group\": 1", "\"n_group\": 8")
            .replace("\"topk_group\": 1", "\"topk_group\": 3");
        let Ffn::Moe(m) = ModelConfig::from_json(&grouped).unwrap().ffn[1] else { panic!("dense") };
        assert_eq!(m.groups, Some(GroupLimit { groups: 8, chosen: 3 }));
        // greedy ignores the groups
        let Ffn::Moe(m) = ModelConfig::from_json(&grouped.replace("group_limited_greedy", "greedy")).unwrap().ffn[1]
        else {
            panic!("dense")
        };
        assert_eq!(m.groups, None);
        for (from, to, named) in [
            ("\"norm_topk_prob\": false", "\"norm_topk_prob\": true", "norm_topk_prob"),
            ("\"moe_layer_freq\": 1", "\"moe_layer_freq\": 2", "moe_layer_freq"),
            ("\"attention_bias\": false", "\"attention_bias\": true", "attention_bias"),
            ("\"num_key_value_heads\": 16", "\"num_key_value_heads\": 8", "num_key_value_heads"),
            ("\"type\": \"yarn\"", "\"type\": \"dynamic\"", "dynamic"),
        ] {
            let err = ModelConfig::from_json(&DEEPSEEK_V2_LITE.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains(named), "{named}: {err}");
        }
    }

    /// A DeepSeek-V3-architecture checkpoint at Moonlight-16B-A3B's sizes (`deepseek_v3`: 64
    /// experts top-6 by σ scores renormalized and scaled, 2 shared experts, no rotary
    /// scaling), and with DeepSeek-V3's own group-limited routing.
    #[test]
    fn deepseek_v3_configs_are_read() {
        use crate::model::DEEPSEEK_V2_LITE;
        let v3 = DEEPSEEK_V2_LITE
            .replace("deepseek_v2", "deepseek_v3")
            .replace("\"norm_topk_prob\": false", "\"norm_topk_prob\": true")
            .replace("\"routed_scaling_factor\": 1.0", "\"routed_scaling_factor\": 2.446")
            .replace("\"scoring_func\": \"softmax\"", "\"scoring_func\": \"sigmoid\"")
            .replace("\"topk_method\": \"greedy\"", "\"topk_method\": \"noaux_tc\"");
        let (start, end) = (v3.find("\"rope_scaling\"").unwrap(), v3.find("\"rope_theta\"").unwrap());
        let moonlight = format!("{}\"rope_scaling\": null, {}", &v3[..start], &v3[end..]);
        let cfg = ModelConfig::from_json(&moonlight).unwrap();
        assert_eq!((cfg.family, cfg.scales.routed, cfg.score_scale), (Family::DeepseekV3, 2.446, 1.0 / 192f64.sqrt()));
        // 27 layers in a statement of a few hundred bytes: the blocks' kinds once, then an index a layer
        let canonical = cfg.canonical();
        assert!(canonical.len() < 1500 && canonical.ends_with(&format!("[0,{}]", ["1"; 26].join(","))), "{canonical}");
        assert!(matches!(cfg.positions, Positions::Rope { dims: 64, interleaved: true, yarn: None, .. }));
        let Ffn::Moe(moe) = cfg.ffn[1] else { panic!("{:?}", cfg.ffn[1]) };
        assert_eq!((moe.experts, moe.top_k, moe.routing), (64, 6, Routing::SigmoidTopK { normalize: true }));
        // rotate_half pairs when the checkpoint says so; V3's groups (8, top 4) refused
        let halves = moonlight.replace("\"topk_group\": 1", "\"topk_group\": 1, \"rope_interleave\": false");
        assert!(matches!(
            ModelConfig::from_json(&halves).unwrap().positions,
            Positions::Rope { interleaved: false, .. }
        ));
        // DeepSeek-V3's own routing: the best 4 of 8 groups by their two best scores, its
        // defaults when the checkpoint names no groups
        let grouped = moonlight.replace("\"n_group\": 1, ", "").replace("\"topk_group\": 1, ", "");
        let Ffn::Moe(m) = ModelConfig::from_json(&grouped).unwrap().ffn[1] else { panic!("dense") };
        assert_eq!(m.groups, Some(GroupLimit { groups: 8, chosen: 4 }));
        let narrow =
            moonlight.replace("\"n_group\": 1", "\"n_group\": 32").replace("\"topk_group\": 1", "\"topk_group\": 2");
        let err = ModelConfig::from_json(&narrow).unwrap_err().to_string();
        assert!(err.contains("top-6 within 2 groups of 2 experts"), "{err}");
    }

    /// gpt-oss-20b as published: the windows alternate from a sliding first layer, YaRN ×32
    /// untruncated with its attention factor, the MXFP4 quantization taken; gpt-oss-120b's
    /// shape by the defaults; other quantizations and activation constants refused by name.
    #[test]
    fn gpt_oss_configs_are_read() {
        use crate::model::GPT_OSS_20B;
        let cfg = ModelConfig::from_json(GPT_OSS_20B).unwrap();
        assert_eq!(
            (cfg.family, cfg.vocab, cfg.d_model, cfg.heads, cfg.kv_heads, cfg.head_dim),
            (Family::GptOss, 201088, 2880, 64, 8, 64)
        );
        assert_eq!((cfg.qkv_bias, cfg.o_bias, cfg.sinks, cfg.tie_embeddings), (true, true, true, false));
        assert!((0..24).all(|i| cfg.window(i) == (i % 2 == 0).then_some(128)));
        let Positions::Rope { theta, dims: 64, interleaved: false, yarn: Some(y) } = cfg.positions else {
            panic!("{:?}", cfg.positions)
        };
        assert_eq!((theta, y.factor, y.original_max, y.truncate), (150000.0, 32.0, 4096, false));
        assert!((y.attention - (0.1 * 32f64.ln() + 1.0)).abs() < 1e-12);
        let moe = MoeConfig {
            experts: 32,
            top_k: 4,
            d_model: 2880,
            d_ff: 2880,
            routing: Routing::TopKSoftmax,
            expert: ExpertKind::ClampedSwiGlu,
            shared: None,
            expert_capacity: None,
            groups: None,
            expert_bias: true,
        };
        assert_eq!(cfg.ffn, vec![Ffn::Moe(moe); 24]);
        // gpt-oss-120b: 36 layers of 128 experts; transformers' defaults for what is left out
        let (start, end) = (GPT_OSS_20B.find("\"layer_types\"").unwrap(), GPT_OSS_20B.find("\"max_position").unwrap());
        let big = format!("{}{}", &GPT_OSS_20B[..start], &GPT_OSS_20B[end..])
            .replace("\"num_hidden_layers\": 24", "\"num_hidden_layers\": 36")
            .replace("\"num_local_experts\": 32", "\"num_local_experts\": 128");
        let cfg = ModelConfig::from_json(&big).unwrap();
        assert!(cfg.layers() == 36 && cfg.window(34) == Some(128) && cfg.window(35).is_none());
        for (from, to, named) in [
            ("\"quant_method\": \"mxfp4\"", "\"quant_method\": \"gptq\"", "quantization_config"),
            ("\"swiglu_limit\": 7.0", "\"swiglu_limit\": 10.0", "swiglu_limit"),
            (
                "\"sliding_attention\", \"full_attention\"],",
                "\"chunked_attention\", \"full_attention\"],",
                "chunked_attention",
            ),
        ] {
            let err = ModelConfig::from_json(&GPT_OSS_20B.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains(named), "{named}: {err}");
        }
    }

    #[test]
    fn unsupported_options_are_named() {
        let err = ModelConfig::from_json(r#"{"model_type": "llama"}"#).unwrap_err().to_string();
        assert!(err.contains("llama"), "{err}");
        let mixtral = r#"{"model_type": "mixtral", "hidden_size": 32, "num_attention_heads": 4,
            "num_hidden_layers": 1, "vocab_size": 64, "intermediate_size": 48, "num_local_experts": 4,
            "num_experts_per_tok": 2, "hidden_act": "gelu"}"#;
        let err = ModelConfig::from_json(mixtral).unwrap_err().to_string();
        assert!(err.contains("hidden_act"), "{err}");
        let err = ModelConfig::from_json(&mixtral.replace("gelu", "silu").replace("\"vocab_size\": 64,", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vocab_size"), "{err}");
    }
}
