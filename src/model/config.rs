//! A model's public architecture, read from a Hugging Face `config.json`: what both parties
//! know (the client needs nothing else to take part).

use std::fmt;
use std::path::Path;

use serde_json::Value;

use super::{ModelError, ModelResult};
use crate::moe::{ExpertKind, MoeConfig, Routing, SharedExpert};

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
    /// Biases on q, k and v (Qwen2-MoE).
    pub qkv_bias: bool,
    /// RMSNorm on q and k before the rotary embedding (OLMoE: full, Qwen3-MoE: per head).
    pub qk_norm: QkNorm,
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
        let cfg = match model_type.as_str() {
            "mixtral" | "qwen2_moe" | "qwen3_moe" | "olmoe" | "granitemoe" | "granitemoeshared" | "glm4_moe"
            | "dots1" | "ernie4_5_moe" => decoder(&c, &model_type)?,
            "switch_transformers" => switch(&c)?,
            other => {
                return Err(ModelError::Config(format!(
                    "model_type `{other}` is not supported (mixtral, qwen2_moe, qwen3_moe, olmoe, granitemoe, \
                     granitemoeshared, glm4_moe, dots1, ernie4_5_moe, switch_transformers)"
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
        let norm_max = crate::proto::layernorm::MAX_WIDTH;
        let widest = self.qk_norm_widths().map_or(self.d_model, |(q, k)| self.d_model.max(q).max(k));
        if widest > norm_max {
            return bad(format!("width {widest} beyond the norms' {norm_max}"));
        }
        for (i, f) in self.ffn.iter().enumerate() {
            if let Ffn::Moe(m) = f {
                m.validate().map_err(|e| ModelError::Config(format!("layer {i}: {e}")))?;
            }
        }
        Ok(())
    }

    /// The canonical text both parties compare before a run.
    pub fn canonical(&self) -> String {
        format!("{self:?}")
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

/// Plain rotary embeddings (no scaling) from `rope_parameters` (transformers 5) or the top-level
/// fields (the checkpoints'), on `int(head_dim · partial_rotary_factor)` entries of each head;
/// a factor other than 1 is refused unless the family applies it (`partial`, its default).
fn rope(c: &Json, head_dim: usize, partial: Option<f64>, interleaved: bool) -> ModelResult<Positions> {
    let fields = match c.field("rope_parameters") {
        Some(p) => {
            let p = Json(p);
            p.refuse_unless("rope_type", |v| v == "default")?;
            p
        }
        None => {
            c.refuse_unless("rope_scaling", |_| false)?;
            Json(c.0)
        }
    };
    let theta = fields.f64_or("rope_theta", 10000.0)?;
    let factor = match partial {
        Some(default) => fields.f64_or("partial_rotary_factor", c.f64_or("partial_rotary_factor", default)?)?,
        None => {
            fields.refuse_unless("partial_rotary_factor", |v| v.as_f64() == Some(1.0))?;
            1.0
        }
    };
    // Python's int() of the product
    Ok(Positions::Rope { theta, dims: (head_dim as f64 * factor) as usize, interleaved })
}

/// DeepSeek-V3's MoE block (GLM-4.5, dots.llm1): `n_routed_experts` SwiGLU experts of
/// `moe_intermediate_size`, sigmoid routing, `n_shared_experts` ungated shared experts (one of
/// their summed width), the routed scale; group-limited routing only where it selects every
/// group.
fn sigmoid_top_k(c: &Json, d: usize, normalize: bool) -> ModelResult<MoeConfig> {
    let groups = c.usize_or("n_group", 1)?;
    if c.usize_or("topk_group", groups)? < groups {
        return Err(ModelError::Config(format!(
            "config.json: group-limited routing (`topk_group` {} of `n_group` {groups}) is not supported",
            c.usize_or("topk_group", groups)?
        )));
    }
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
    })
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
        })
    };
    let ffn: Vec<Ffn> = match model_type {
        "mixtral" => vec![Ffn::Moe(top_k_softmax()?); layers],
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
                let sliding = c
                    .field("layer_types")
                    .and_then(Value::as_array)
                    .is_some_and(|t| t.iter().any(|v| v != "full_attention"));
                if sliding {
                    return Err(ModelError::Config(
                        "config.json: sliding-window layers (`layer_types`) are not supported".into(),
                    ));
                }
            }
            scales.routed = c.f64_or("routed_scaling_factor", 1.0)?;
            let moe = sigmoid_top_k(c, d, glm)?;
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
        qk_norm,
        ffn,
        tie_embeddings: c.bool_or("tie_word_embeddings", tie_default)?,
        lm_head: true,
        scales,
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
        qk_norm: QkNorm::None,
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
            (Positions::Rope { theta: 1e6, dims: 64, interleaved: false }, true, QkNorm::None)
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
        };
        assert_eq!(cfg.ffn[0], Ffn::Dense { d_ff: 10944, kind: ExpertKind::SwiGlu });
        assert!(cfg.ffn[1..].iter().all(|f| *f == Ffn::Moe(moe)) && cfg.layers() == 46);
        let refused = |from: &str, to: &str| {
            let text = GLM_45_AIR.replace(from, to);
            ModelConfig::from_json(&text).unwrap_err().to_string()
        };
        assert!(
            refused(r#""n_group": 1, "topk_group": 1"#, r#""n_group": 8, "topk_group": 4"#).contains("group-limited")
        );
        assert!(refused(r#""rope_scaling": null"#, r#""rope_scaling": {"type": "yarn"}"#).contains("rope_scaling"));
        assert!(
            refused(r#""partial_rotary_factor": 0.5"#, r#""partial_rotary_factor": 0.001"#)
                .contains("rotary embeddings on 0")
        );
        let dots = GLM_45_AIR
            .replace(r#""attention_bias": true"#, r#""attention_bias": false"#)
            .replace(r#""model_type": "glm4_moe""#, r#""model_type": "dots1", "layer_types": ["sliding_attention"]"#);
        assert!(ModelConfig::from_json(&dots).unwrap_err().to_string().contains("sliding-window"));
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
            (Positions::Rope { theta: 5e5, dims: 128, interleaved: true }, true)
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
        assert_eq!(cfg.positions, Positions::Rope { theta: 1e6, dims: 128, interleaved: false });
        let moe = MoeConfig {
            experts: 128,
            top_k: 8,
            d_model: 2048,
            d_ff: 768,
            routing: Routing::SoftmaxTopK { normalize: true },
            expert: ExpertKind::SwiGlu,
            shared: None,
            expert_capacity: None,
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
            ("\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}", "rope_scaling"),
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
            (0.015625, true, Positions::Rope { theta: 1.5e6, dims: 64, interleaved: false })
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
