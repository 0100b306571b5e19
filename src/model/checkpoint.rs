//! Hugging Face checkpoints: `config.json` and `*.safetensors`, memory-mapped. Opening one
//! checks every tensor the architecture needs — present, of the config's shape, F32/F16/BF16,
//! FP8 with block scales (DeepSeek-V3's) or MXFP4 (gpt-oss's experts) — and that no tensor is
//! left over (multi-token prediction layers aside), naming the first that is wrong, before any
//! party starts.
//! Weights are converted (and transposed to the engine's x·W orientation) one layer at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::Dtype as StDtype;

use super::config::{Family, Ffn, ModelConfig, Positions};
use super::weights::{
    FfnWeights, HeadMaps, LatentMaps, LayerWeights, Mlp, MlpBias, ModelWeights, QkvWeights, WeightSource, transpose,
};
use super::{ModelError, ModelResult, fp8, mxfp4};
use crate::ring::Dtype;

/// Where one tensor lies: a file and its byte range, and how its values are stored.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    layout: Layout,
    /// Its shape as the engine reads it (an MXFP4 tensor's once decoded).
    shape: Vec<usize>,
    bytes: (usize, usize),
}

/// How a tensor's values are stored.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// One value per element.
    Plain(Dtype),
    /// gpt-oss's MXFP4 experts: `X_blocks` (E × out × G × 16 bytes, the entry's bytes) with
    /// `X_scales` (E × out × G, in file `scales.0` at bytes `scales.1`), decoded as `X` of
    /// E × in × out (in = 32·G) as `transformers` dequantizes it: each expert's out × in
    /// matrix transposed.
    Mxfp4 { scales: (usize, (usize, usize)) },
    /// FP8 (E4M3) with block scales: the entry's bytes one a value, `X_scale_inv` (in file
    /// `scales.0` at bytes `scales.1`, of `dtype`) one factor per `block` (rows × columns of
    /// the last two axes).
    Fp8 { scales: (usize, (usize, usize)), dtype: Dtype, block: (usize, usize) },
}

/// An opened, checked checkpoint (the server's weights).
pub struct Checkpoint {
    config: ModelConfig,
    files: Vec<Mmap>,
    tensors: BTreeMap<String, Entry>,
    /// Layers stored but not part of the model (DeepSeek-V3's and GLM-4.5's multi-token
    /// prediction layers after the last, `num_nextn_predict_layers`): their tensors' prefixes.
    unread: Vec<String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Checkpoint({}, {} tensors)", self.config, self.tensors.len())
    }
}

/// A tensor's role in the engine: its name in the checkpoint, its PyTorch shape, the engine's
/// name for it (that of [`WeightSource::locate`]) and, when the stored tensor holds several of
/// the engine's, which part is this one.
struct Spec {
    name: String,
    shape: Vec<usize>,
    engine: String,
    part: Option<Part>,
}

/// An engine tensor stored inside a larger one (Granite's and gpt-oss's experts, fused per
/// layer): `rows`×`cols` values from the stored tensor's flat index `offset`, row-major with
/// stored rows of `cols·step` values of which it takes every `step`-th from `phase` (gpt-oss
/// interleaves each expert's gate and up columns); a `Linear` weight (out×in, the engine's
/// transpose) when `linear`, else in the engine's x·W orientation already.
#[derive(Debug, Clone, Copy)]
struct Part {
    offset: usize,
    rows: usize,
    cols: usize,
    step: usize,
    phase: usize,
    linear: bool,
}

impl Part {
    /// A contiguous block of `rows`×`cols` from `offset`.
    fn block(offset: usize, rows: usize, cols: usize, linear: bool) -> Part {
        Part { offset, rows, cols, step: 1, phase: 0, linear }
    }

    /// Values the part's rows span in the stored tensor.
    fn span(&self) -> usize {
        self.rows * self.cols * self.step
    }

    /// The stored tensor's flat index of the part's value `i` (row-major, stored orientation).
    fn stored(&self, i: usize) -> usize {
        self.offset + (i / self.cols) * self.cols * self.step + (i % self.cols) * self.step + self.phase
    }
}

fn spec(name: String, shape: &[usize], engine: impl Into<String>) -> Spec {
    Spec { name, shape: shape.to_vec(), engine: engine.into(), part: None }
}

impl Spec {
    /// The values this spec reads: its part, or all of the stored tensor (rows × the rest).
    fn window(&self) -> Part {
        self.part.unwrap_or_else(|| {
            let rows = self.shape.first().copied().unwrap_or(1);
            Part::block(0, rows, self.shape.iter().skip(1).product(), false)
        })
    }
}

/// A gated expert whose W1|W3 are stacked in one stored `Linear` weight and W2 is another, each
/// the `block`-th of its tensor's leading axis (Granite's `input_linear`, `output_linear`; the
/// shared expert's are 2-D: block 0).
fn fused_mlp(input: (&str, &[usize]), output: (&str, &[usize]), block: usize, engine: &str) -> Vec<Spec> {
    let (rows, d) = (input.1[input.1.len() - 2], input.1[input.1.len() - 1]);
    let d_ff = rows / 2;
    let part = |(name, shape): (&str, &[usize]), w: &str, offset, rows, cols| Spec {
        part: Some(Part::block(offset, rows, cols, true)),
        ..spec(name.to_string(), shape, format!("{engine}.{w}"))
    };
    vec![
        part(input, "w1", block * rows * d, d_ff, d),
        part(input, "w3", block * rows * d + d_ff * d, d_ff, d),
        part(output, "w2", block * d * d_ff, d, d_ff),
    ]
}

/// gpt-oss's routed expert `x` from its layer's fused tensors (`prefix` `mlp.experts.`), in
/// the engine's orientation as stored: W1 and W3 the even and odd columns of `gate_up_proj`
/// (E × d × 2·d_ff), W2 `down_proj` (E × d_ff × d), then their biases likewise.
fn gpt_oss_expert(prefix: &str, (e, d, d_ff): (usize, usize, usize), x: usize, engine: &str) -> Vec<Spec> {
    let part = |name: &str, shape: &[usize], w: &str, part| Spec {
        part: Some(part),
        ..spec(format!("{prefix}{name}"), shape, format!("{engine}.{w}"))
    };
    let interleaved = |offset, rows, phase| Part { offset, rows, cols: d_ff, step: 2, phase, linear: false };
    let (up, down) = ([e, d, 2 * d_ff], [e, d_ff, d]);
    vec![
        part("gate_up_proj", &up, "w1", interleaved(x * d * 2 * d_ff, d, 0)),
        part("gate_up_proj", &up, "w3", interleaved(x * d * 2 * d_ff, d, 1)),
        part("down_proj", &down, "w2", Part::block(x * d_ff * d, d_ff, d, false)),
        part("gate_up_proj_bias", &[e, 2 * d_ff], "b1", interleaved(x * 2 * d_ff, 1, 0)),
        part("gate_up_proj_bias", &[e, 2 * d_ff], "b3", interleaved(x * 2 * d_ff, 1, 1)),
        part("down_proj_bias", &[e, d], "b2", Part::block(x * d, 1, d, false)),
    ]
}

/// The checkpoint names of one family.
struct Names<'a>(&'a ModelConfig);

impl Names<'_> {
    fn embedding(&self) -> Spec {
        let c = self.0;
        let name = match c.family {
            Family::SwitchEncoder => "shared.weight",
            _ => "model.embed_tokens.weight",
        };
        spec(name.into(), &[c.vocab, c.d_model], "embedding")
    }

    /// Names that may also be present and are not read (tied copies).
    fn aliases(&self) -> Vec<String> {
        let c = self.0;
        let mut out = Vec::new();
        if c.family == Family::SwitchEncoder {
            out.push("encoder.embed_tokens.weight".to_string());
        }
        if c.tie_embeddings {
            out.push("lm_head.weight".to_string());
        }
        out
    }

    fn final_norm(&self) -> Spec {
        let name = match self.0.family {
            Family::SwitchEncoder => "encoder.final_layer_norm.weight",
            _ => "model.norm.weight",
        };
        spec(name.into(), &[self.0.d_model], "final_norm")
    }

    fn lm_head(&self) -> Option<Spec> {
        let c = self.0;
        (c.lm_head && !c.tie_embeddings).then(|| spec("lm_head.weight".into(), &[c.vocab, c.d_model], "lm_head"))
    }

    fn position_bias(&self) -> Option<Spec> {
        match self.0.positions {
            Positions::RelativeBias { buckets, .. } => Some(spec(
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight".into(),
                &[buckets, self.0.heads],
                "position_bias",
            )),
            Positions::Rope { .. } => None,
        }
    }

    /// The block's tensors in a fixed order: attn norm, q, k, v, [q/k/v bias], [q/k norm],
    /// [sinks], o, [o bias], ffn norm, then the feed-forward block's (router, [its bias],
    /// experts' (w1, [w3], w2, [their biases]), shared …).
    fn layer(&self, i: usize) -> Vec<Spec> {
        let c = self.0;
        let (d, q, kv) = (c.d_model, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let switch = c.family == Family::SwitchEncoder;
        let (p, attn, proj) = if switch {
            (format!("encoder.block.{i}.layer."), "0.SelfAttention.", ["q", "k", "v", "o"])
        } else {
            (format!("model.layers.{i}."), "self_attn.", ["q_proj", "k_proj", "v_proj", "o_proj"])
        };
        let (attn_norm, ffn_norm) =
            if switch { ("0.layer_norm", "1.layer_norm") } else { ("input_layernorm", "post_attention_layernorm") };
        let e = |name: &str| format!("layers.{i}.{name}");
        let mut out = vec![spec(format!("{p}{attn_norm}.weight"), &[d], e("attn_norm"))];
        if let Some(l) = c.latent {
            let a = format!("{p}{attn}");
            if let Some(r) = l.q_rank {
                out.push(spec(format!("{a}q_a_proj.weight"), &[r, d], e("wq_a")));
                out.push(spec(format!("{a}q_a_layernorm.weight"), &[r], e("q_a_norm")));
                out.push(spec(format!("{a}q_b_proj.weight"), &[q, r], e("wq")));
            } else {
                out.push(spec(format!("{a}q_proj.weight"), &[q, d], e("wq")));
            }
            let per_head = c.head_dim - l.rope + l.v_dim;
            out.extend([
                spec(format!("{a}kv_a_proj_with_mqa.weight"), &[l.kv_rank + l.rope, d], e("wkv_a")),
                spec(format!("{a}kv_a_layernorm.weight"), &[l.kv_rank], e("kv_a_norm")),
                spec(format!("{a}kv_b_proj.weight"), &[c.heads * per_head, l.kv_rank], e("wkv_b")),
            ]);
        } else {
            out.extend([
                spec(format!("{p}{attn}{}.weight", proj[0]), &[q, d], e("wq")),
                spec(format!("{p}{attn}{}.weight", proj[1]), &[kv, d], e("wk")),
                spec(format!("{p}{attn}{}.weight", proj[2]), &[kv, d], e("wv")),
            ]);
        }
        if c.qkv_bias {
            for (n, w, b) in [(proj[0], q, "bq"), (proj[1], kv, "bk"), (proj[2], kv, "bv")] {
                out.push(spec(format!("{p}{attn}{n}.bias"), &[w], e(b)));
            }
        }
        if let Some((qn, kn)) = c.qk_norm_widths() {
            out.push(spec(format!("{p}{attn}q_norm.weight"), &[qn], e("q_norm")));
            out.push(spec(format!("{p}{attn}k_norm.weight"), &[kn], e("k_norm")));
        }
        if c.sinks {
            out.push(spec(format!("{p}{attn}sinks"), &[c.heads], e("sinks")));
        }
        out.push(spec(format!("{p}{attn}{}.weight", proj[3]), &[d, c.heads * c.v_head_dim()], e("wo")));
        if c.o_bias {
            out.push(spec(format!("{p}{attn}{}.bias", proj[3]), &[d], e("bo")));
        }
        out.push(spec(format!("{p}{ffn_norm}.weight"), &[d], e("ffn_norm")));
        let mlp = |prefix: &str, engine: String, d_ff: usize, gated: bool| -> Vec<Spec> {
            let names: &[&str] = match (c.family, gated) {
                (Family::SwitchEncoder, _) => &["wi", "wo"],
                (Family::Mixtral, _) => &["w1", "w3", "w2"],
                _ => &["gate_proj", "up_proj", "down_proj"],
            };
            let engines: &[&str] = if names.len() == 3 { &["w1", "w3", "w2"] } else { &["w1", "w2"] };
            let last = names.len() - 1;
            names
                .iter()
                .zip(engines)
                .enumerate()
                .map(|(j, (n, w))| {
                    let shape = if j == last { [d, d_ff] } else { [d_ff, d] };
                    spec(format!("{prefix}{n}.weight"), &shape, format!("{engine}.{w}"))
                })
                .collect()
        };
        match (&c.ffn[i], c.family) {
            (Ffn::Moe(m), Family::GraniteMoe | Family::GraniteMoeShared) => {
                let (moe, f) = (format!("{p}block_sparse_moe."), m.d_ff);
                out.push(spec(format!("{moe}router.layer.weight"), &[m.experts, d], e("router")));
                let input = (format!("{moe}input_linear.weight"), [m.experts, 2 * f, d]);
                let output = (format!("{moe}output_linear.weight"), [m.experts, d, f]);
                for x in 0..m.experts {
                    let engine = e(&format!("experts.{x}"));
                    out.extend(fused_mlp((&input.0, &input.1), (&output.0, &output.1), x, &engine));
                }
                if let Some(s) = m.shared {
                    let (input, output) =
                        (format!("{p}shared_mlp.input_linear.weight"), format!("{p}shared_mlp.output_linear.weight"));
                    let shapes = ([2 * s.d_ff, d], [d, s.d_ff]);
                    out.extend(fused_mlp((&input, &shapes.0), (&output, &shapes.1), 0, &e("shared_expert")));
                }
            }
            (Ffn::Moe(m), Family::GptOss) => {
                let moe = format!("{p}mlp.");
                out.push(spec(format!("{moe}router.weight"), &[m.experts, d], e("router")));
                out.push(spec(format!("{moe}router.bias"), &[m.experts], e("logit_bias")));
                for x in 0..m.experts {
                    let engine = e(&format!("experts.{x}"));
                    out.extend(gpt_oss_expert(&format!("{moe}experts."), (m.experts, d, m.d_ff), x, &engine));
                }
            }
            (Ffn::Dense { d_ff, kind }, Family::SwitchEncoder) => {
                out.extend(mlp(&format!("{p}1.mlp."), e("mlp"), *d_ff, kind.gated()))
            }
            (Ffn::Dense { d_ff, kind }, _) => out.extend(mlp(&format!("{p}mlp."), e("mlp"), *d_ff, kind.gated())),
            (Ffn::Moe(m), family) => {
                let (router, expert) = match family {
                    Family::SwitchEncoder => {
                        (format!("{p}1.mlp.router.classifier.weight"), format!("{p}1.mlp.experts.expert_"))
                    }
                    Family::Mixtral => {
                        (format!("{p}block_sparse_moe.gate.weight"), format!("{p}block_sparse_moe.experts."))
                    }
                    _ => (format!("{p}mlp.gate.weight"), format!("{p}mlp.experts.")),
                };
                out.push(spec(router, &[m.experts, d], e("router")));
                if m.routing.has_selection_bias() {
                    out.push(match family {
                        Family::Ernie45Moe => spec(
                            format!("{p}mlp.moe_statics.e_score_correction_bias"),
                            &[1, m.experts],
                            e("selection_bias"),
                        ),
                        _ => spec(format!("{p}mlp.gate.e_score_correction_bias"), &[m.experts], e("selection_bias")),
                    });
                }
                for x in 0..m.experts {
                    out.extend(mlp(&format!("{expert}{x}."), e(&format!("experts.{x}")), m.d_ff, m.expert.gated()));
                }
                if let Some(s) = m.shared {
                    // Qwen2-MoE's name, DeepSeek-V3's and ERNIE-4.5's (their shared experts as one)
                    let name = if family == Family::Qwen2Moe { "shared_expert" } else { "shared_experts" };
                    out.extend(mlp(&format!("{p}mlp.{name}."), e("shared_expert"), s.d_ff, m.expert.gated()));
                    if s.sigmoid_gate {
                        out.push(spec(format!("{p}mlp.shared_expert_gate.weight"), &[1, d], e("shared_expert_gate")));
                    }
                }
            }
        }
        out
    }

    fn all(&self) -> Vec<Spec> {
        let mut out = vec![self.embedding(), self.final_norm()];
        out.extend(self.lm_head());
        out.extend(self.position_bias());
        for i in 0..self.0.layers() {
            out.extend(self.layer(i));
        }
        out
    }
}

fn dtype_of(name: &str, d: StDtype) -> ModelResult<Dtype> {
    match d {
        StDtype::F32 => Ok(Dtype::F32),
        StDtype::F16 => Ok(Dtype::F16),
        StDtype::BF16 => Ok(Dtype::BF16),
        other => Err(ModelError::Weights(format!(
            "tensor `{name}` is {other:?} (F32, F16, BF16, F8_E4M3 with its `_scale_inv`, and MXFP4's U8 \
             `_blocks`/`_scales` pairs are supported)"
        ))),
    }
}

/// What `config.json` says of how the tensors are stored, beyond the architecture.
struct Stored {
    /// FP8's `weight_block_size` (rows, columns).
    block: (usize, usize),
    /// Prefixes of the layers stored and not read ([`Checkpoint::unread`]).
    unread: Vec<String>,
}

impl Stored {
    fn from_dir(dir: &Path, config: &ModelConfig) -> ModelResult<Stored> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Io(path.display().to_string(), e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let block = match v.pointer("/quantization_config/weight_block_size") {
            None => (128, 128),
            Some(b) => match b.as_array().map(|a| a.iter().map(serde_json::Value::as_u64).collect::<Vec<_>>()) {
                Some(a) if matches!(a[..], [Some(r), Some(c)] if r > 0 && c > 0) => {
                    (a[0].unwrap_or(1) as usize, a[1].unwrap_or(1) as usize)
                }
                _ => return Err(ModelError::Config(format!("config.json: `weight_block_size` = {b}"))),
            },
        };
        let mtp = v.get("num_nextn_predict_layers").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        let unread = (config.layers()..config.layers() + mtp).map(|i| format!("model.layers.{i}.")).collect();
        Ok(Stored { block, unread })
    }
}

/// The FP8 tensor `name` from its values (E4M3, any shape) and its `_scale_inv` (one factor
/// per `block` of the last two axes), both present and of matching shapes.
fn fp8_entry(name: &str, [values, scales]: [Option<(Half, Dtype)>; 2], block: (usize, usize)) -> ModelResult<Entry> {
    let (Some((values, _)), Some((scales, dtype))) = (values, scales) else {
        return Err(ModelError::Weights(format!("FP8 tensor `{name}` lacks its values or its `{name}_scale_inv`")));
    };
    let want: Vec<usize> = match values.shape[..] {
        [ref lead @ .., r, c] => lead.iter().copied().chain([r.div_ceil(block.0), c.div_ceil(block.1)]).collect(),
        _ => vec![1, 1],
    };
    if scales.shape != want {
        return Err(ModelError::Weights(format!(
            "FP8 tensor `{name}` of shape {:?} has scales of shape {:?}, blocks of {}×{} need {want:?}",
            values.shape, scales.shape, block.0, block.1
        )));
    }
    Ok(Entry {
        file: values.file,
        layout: Layout::Fp8 { scales: (scales.file, scales.bytes), dtype, block },
        shape: values.shape,
        bytes: values.bytes,
    })
}

/// One half of a quantized tensor as stored: its file, shape and bytes.
#[derive(Debug, Clone)]
struct Half {
    file: usize,
    shape: Vec<usize>,
    bytes: (usize, usize),
}

/// The MXFP4 tensor `name` from its `_blocks` (E × out × G × 16) and `_scales` (E × out × G)
/// halves, both present and of matching shapes: shape E × 32·G × out.
fn mxfp4_entry(name: &str, [blocks, scales]: [Option<Half>; 2]) -> ModelResult<Entry> {
    let (Some(blocks), Some(scales)) = (blocks, scales) else {
        return Err(ModelError::Weights(format!("MXFP4 tensor `{name}` lacks its `_blocks` or its `_scales`")));
    };
    match (&blocks.shape[..], &scales.shape[..]) {
        (&[e, out, g, b], &[e2, out2, g2]) if b == mxfp4::BLOCK_BYTES && (e, out, g) == (e2, out2, g2) => Ok(Entry {
            file: blocks.file,
            layout: Layout::Mxfp4 { scales: (scales.file, scales.bytes) },
            shape: vec![e, 32 * g, out],
            bytes: blocks.bytes,
        }),
        (b, s) => Err(ModelError::Weights(format!(
            "MXFP4 tensor `{name}`: blocks of shape {b:?} and scales of shape {s:?} (E × out × G × 16 and E × out × G)"
        ))),
    }
}

fn safetensors_files(dir: &Path) -> ModelResult<Vec<PathBuf>> {
    let io = |e| ModelError::Io(dir.display().to_string(), e);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::Weights(format!("no *.safetensors file in {}", dir.display())));
    }
    Ok(files)
}

impl Checkpoint {
    /// Opens and checks the checkpoint in `dir` (see the module notes).
    pub fn open(dir: &Path) -> ModelResult<Checkpoint> {
        let ckpt = Checkpoint::scan(dir)?;
        ckpt.check()?;
        Ok(ckpt)
    }

    /// Maps every `*.safetensors` file in `dir` and reads the headers, checking nothing yet.
    fn scan(dir: &Path) -> ModelResult<Checkpoint> {
        let config = ModelConfig::from_dir(dir)?;
        let stored = Stored::from_dir(dir, &config)?;
        let mut files = Vec::new();
        let mut tensors = BTreeMap::new();
        // MXFP4 halves by tensor name: (blocks, scales)
        let mut packed: BTreeMap<String, [Option<Half>; 2]> = BTreeMap::new();
        // FP8 values and their block scales by the values' name
        let mut fp8: BTreeMap<String, [Option<(Half, Dtype)>; 2]> = BTreeMap::new();
        for path in safetensors_files(dir)? {
            let shown = path.display().to_string();
            let file = std::fs::File::open(&path).map_err(|e| ModelError::Io(shown.clone(), e))?;
            // SAFETY: the map is read-only; the checkpoint must not be modified while the server
            // runs (as for every memory-mapped model loader).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::Io(shown.clone(), e))?;
            let (header, meta) =
                SafeTensors::read_metadata(&map).map_err(|e| ModelError::Weights(format!("{shown}: {e}")))?;
            for (name, info) in meta.tensors() {
                let start = 8 + header;
                let bytes = (start + info.data_offsets.0, start + info.data_offsets.1);
                let half = ["_blocks", "_scales"].iter().position(|h| name.ends_with(h));
                if let (StDtype::U8, Some(h)) = (info.dtype, half) {
                    let part = Half { file: files.len(), shape: info.shape.clone(), bytes };
                    let slot = &mut packed.entry(name[..name.len() - 7].to_string()).or_default()[h];
                    if slot.replace(part).is_some() {
                        return Err(ModelError::Weights(format!("tensor `{name}` appears in two files")));
                    }
                    continue;
                }
                if info.dtype == StDtype::F8_E4M3 || name.ends_with("_scale_inv") {
                    let (base, h) = match name.strip_suffix("_scale_inv") {
                        Some(base) => (base.to_string(), 1),
                        None => (name.clone(), 0),
                    };
                    let dtype = if h == 0 { Dtype::F32 } else { dtype_of(&name, info.dtype)? };
                    let part = Half { file: files.len(), shape: info.shape.clone(), bytes };
                    if fp8.entry(base).or_default()[h].replace((part, dtype)).is_some() {
                        return Err(ModelError::Weights(format!("tensor `{name}` appears in two files")));
                    }
                    continue;
                }
                let entry = Entry {
                    file: files.len(),
                    layout: Layout::Plain(dtype_of(&name, info.dtype)?),
                    shape: info.shape.clone(),
                    bytes,
                };
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(ModelError::Weights(format!("tensor `{name}` appears in two files")));
                }
            }
            files.push(map);
        }
        let scaled = fp8.into_iter().map(|(name, halves)| (fp8_entry(&name, halves, stored.block), name));
        let packed = packed.into_iter().map(|(name, halves)| (mxfp4_entry(&name, halves), name));
        for (entry, name) in scaled.chain(packed) {
            let entry = entry?;
            if tensors.insert(name.clone(), entry).is_some() {
                return Err(ModelError::Weights(format!("tensor `{name}` is stored both plain and quantized")));
            }
        }
        Ok(Checkpoint { config, files, tensors, unread: stored.unread })
    }

    /// The model's public architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Checks that the tensor of `s` is present with its shape.
    fn check_one(&self, s: &Spec) -> ModelResult<()> {
        let e = self
            .tensors
            .get(&s.name)
            .ok_or_else(|| ModelError::Weights(format!("tensor `{}` is missing (the config asks for it)", s.name)))?;
        if e.shape != s.shape {
            return Err(ModelError::Weights(format!(
                "tensor `{}` has shape {:?}, the config implies {:?}",
                s.name, e.shape, s.shape
            )));
        }
        Ok(())
    }

    fn check(&self) -> ModelResult<()> {
        let names = Names(&self.config);
        let wanted = names.all();
        for s in &wanted {
            self.check_one(s)?;
        }
        let aliases = names.aliases();
        let read = |k: &str| !self.unread.iter().any(|p| k.starts_with(p.as_str()));
        let extra = |k: &&String| !wanted.iter().any(|s| &s.name == *k) && !aliases.contains(k) && read(k);
        if let Some(extra) = self.tensors.keys().find(extra) {
            return Err(ModelError::Weights(format!(
                "tensor `{extra}` is not part of the {} architecture the config describes",
                self.config.family.model_type()
            )));
        }
        Ok(())
    }

    /// The values of `s` (its part of the stored tensor, or all of it).
    fn values(&self, s: &Spec) -> ModelResult<Vec<f32>> {
        let e =
            self.tensors.get(&s.name).ok_or_else(|| ModelError::Weights(format!("tensor `{}` is missing", s.name)))?;
        let Some(p) = s.part else {
            return self.range(&s.name, e, 0, e.shape.iter().product());
        };
        let span = self.range(&s.name, e, p.offset, p.span())?;
        Ok(if p.step == 1 { span } else { (0..p.rows * p.cols).map(|i| span[p.stored(i) - p.offset]).collect() })
    }

    /// Values [start, start + len) of the tensor `e` (row-major in its shape); an MXFP4
    /// tensor's decoded one expert at a time.
    fn range(&self, name: &str, e: &Entry, start: usize, len: usize) -> ModelResult<Vec<f32>> {
        match e.layout {
            Layout::Plain(dtype) => {
                let at = e.bytes.0 + start * dtype.size();
                Ok(dtype.decode(name, &self.files[e.file][at..at + len * dtype.size()])?)
            }
            Layout::Mxfp4 { scales: (scales_file, (scales_at, _)) } => {
                let [_, inputs, outputs] = e.shape[..] else {
                    return Err(ModelError::Weights(format!("MXFP4 tensor `{name}` is not 3-D")));
                };
                let per_expert = inputs * outputs;
                let (groups, mut out) = (inputs / 32, Vec::with_capacity(len));
                for x in start / per_expert..(start + len).div_ceil(per_expert) {
                    let blocks = e.bytes.0 + x * outputs * groups * mxfp4::BLOCK_BYTES;
                    let blocks = &self.files[e.file][blocks..blocks + outputs * groups * mxfp4::BLOCK_BYTES];
                    let scales = &self.files[scales_file][scales_at + x * outputs * groups..][..outputs * groups];
                    let expert = transpose(outputs, inputs, &mxfp4::decode(blocks, scales));
                    let (from, to) = (start.max(x * per_expert), (start + len).min((x + 1) * per_expert));
                    out.extend_from_slice(&expert[from - x * per_expert..to - x * per_expert]);
                }
                Ok(out)
            }
            Layout::Fp8 { scales: (scales_file, (from, to)), dtype, block: (br, bc) } => {
                let (rows, cols) = match e.shape[..] {
                    [.., r, c] => (r, c),
                    [c] => (1, c),
                    [] => (1, 1),
                };
                let (sr, sc) = (rows.div_ceil(br), cols.div_ceil(bc));
                let scale = dtype.decode(name, &self.files[scales_file][from..to])?;
                let values = &self.files[e.file][e.bytes.0 + start..e.bytes.0 + start + len];
                let value = |i: usize, b: u8| {
                    let (matrix, row, col) = (i / (rows * cols), (i / cols) % rows, i % cols);
                    fp8::e4m3(b) * scale[(matrix * sr + row / br) * sc + col / bc]
                };
                Ok(values.iter().enumerate().map(|(k, &b)| value(start + k, b)).collect())
            }
        }
    }

    /// A matrix as the engine's in×out: a `Linear.weight` (out×in) transposed, a part stored
    /// in the engine's orientation as it is.
    fn matrix(&self, s: &Spec) -> ModelResult<Vec<f32>> {
        let w = s.window();
        let values = self.values(s)?;
        Ok(if s.part.is_some_and(|p| !p.linear) { values } else { transpose(w.rows, w.cols, &values) })
    }
}

impl WeightSource for Checkpoint {
    fn embedding(&self) -> ModelResult<Vec<f32>> {
        self.values(&Names(&self.config).embedding())
    }

    fn layer(&self, i: usize) -> ModelResult<LayerWeights> {
        let c = &self.config;
        if i >= c.layers() {
            return Err(ModelError::Weights(format!("no layer {i}")));
        }
        let specs = Names(c).layer(i);
        let mut r = Reader { ckpt: self, specs: specs.iter(), layer: i };
        let attn_norm = r.values()?;
        let qkv = match c.latent {
            None => {
                let (wq, wk, wv) = (r.matrix()?, r.matrix()?, r.matrix()?);
                let bias = if c.qkv_bias { Some([r.values()?, r.values()?, r.values()?]) } else { None };
                let qk_norm = if c.qk_norm_widths().is_some() { Some([r.values()?, r.values()?]) } else { None };
                QkvWeights::Heads(HeadMaps { wq, wk, wv, bias, qk_norm })
            }
            Some(l) => QkvWeights::Latent(LatentMaps {
                q_a: if l.q_rank.is_some() { Some((r.matrix()?, r.values()?)) } else { None },
                wq: r.matrix()?,
                wkv_a: r.matrix()?,
                kv_norm: r.values()?,
                wkv_b: r.matrix()?,
            }),
        };
        let sinks = if c.sinks { Some(r.values()?) } else { None };
        let wo = r.matrix()?;
        let bo = if c.o_bias { Some(r.values()?) } else { None };
        let ffn_norm = r.values()?;
        let ffn = match c.ffn[i] {
            Ffn::Dense { kind, .. } => FfnWeights::Dense(r.mlp(kind.gated(), false)?),
            Ffn::Moe(m) => {
                let router = r.matrix()?;
                let logit_bias = if c.router_bias() { Some(r.values()?) } else { None };
                let selection_bias = if m.routing.has_selection_bias() { Some(r.values()?) } else { None };
                let experts =
                    (0..m.experts).map(|_| r.mlp(m.expert.gated(), m.expert_bias)).collect::<ModelResult<Vec<_>>>()?;
                let shared = match m.shared {
                    None => None,
                    Some(s) => {
                        let expert = r.mlp(m.expert.gated(), false)?;
                        Some((expert, if s.sigmoid_gate { Some(r.matrix()?) } else { None }))
                    }
                };
                FfnWeights::Moe { router, logit_bias, selection_bias, experts, shared }
            }
        };
        Ok(LayerWeights { attn_norm, qkv, wo, bo, sinks, ffn_norm, ffn })
    }

    fn position_bias(&self) -> ModelResult<Option<Vec<f32>>> {
        Names(&self.config).position_bias().map(|s| self.values(&s)).transpose()
    }

    fn final_norm(&self) -> ModelResult<Vec<f32>> {
        self.values(&Names(&self.config).final_norm())
    }

    /// The checkpoint's name and flat index; a `Linear` weight (the engine holds it
    /// transposed, the tied LM head as the embedding's transpose) maps the index back.
    fn locate(&self, engine: &str, index: usize) -> (String, usize) {
        let names = Names(&self.config);
        let tied = engine == "lm_head" && names.lm_head().is_none();
        let wanted = if tied { "embedding" } else { engine };
        match names.all().into_iter().find(|s| s.engine == wanted) {
            None => (engine.to_string(), index),
            Some(s) => {
                let linear = tied
                    || s.part.is_some_and(|p| p.linear)
                    || (s.part.is_none() && s.shape.len() == 2 && !matches!(wanted, "embedding" | "position_bias"));
                let w = s.window();
                let index = if linear { (index % w.rows) * w.cols + index / w.rows } else { index };
                (s.name, w.stored(index))
            }
        }
    }

    fn lm_head(&self) -> ModelResult<Option<Vec<f32>>> {
        let c = &self.config;
        if !c.lm_head {
            return Ok(None);
        }
        match Names(c).lm_head() {
            Some(s) => self.matrix(&s).map(Some),
            None => Ok(Some(transpose(c.vocab, c.d_model, &self.embedding()?))),
        }
    }
}

/// The embedding table (vocab×d, row-major) of the checkpoint in `dir` and nothing else: what
/// a client holding the public table reads for [`super::Embedding::Public`]. Its presence and
/// shape are checked against `config.json`; no other tensor need be there.
pub fn public_embedding(dir: &Path) -> ModelResult<Vec<f32>> {
    let ckpt = Checkpoint::scan(dir)?;
    let spec = Names(&ckpt.config).embedding();
    ckpt.check_one(&spec)?;
    ckpt.values(&spec)
}

/// Reads a layer's tensors in the order of [`Names::layer`].
struct Reader<'a> {
    ckpt: &'a Checkpoint,
    specs: std::slice::Iter<'a, Spec>,
    layer: usize,
}

impl Reader<'_> {
    fn next(&mut self) -> ModelResult<&Spec> {
        let layer = self.layer;
        self.specs.next().ok_or_else(|| ModelError::Weights(format!("layer {layer}: tensor list ended early")))
    }

    fn values(&mut self) -> ModelResult<Vec<f32>> {
        let ckpt = self.ckpt;
        ckpt.values(self.next()?)
    }

    fn matrix(&mut self) -> ModelResult<Vec<f32>> {
        let ckpt = self.ckpt;
        ckpt.matrix(self.next()?)
    }

    fn mlp(&mut self, gated: bool, biased: bool) -> ModelResult<Mlp> {
        let (w1, w3, w2) = (self.matrix()?, if gated { Some(self.matrix()?) } else { None }, self.matrix()?);
        let bias = if biased {
            let (b1, b3) = (self.values()?, if gated { Some(self.values()?) } else { None });
            Some(MlpBias { b1, b3, b2: self.values()? })
        } else {
            None
        };
        Ok(Mlp { w1, w3, w2, bias })
    }
}

/// A layer's values in the order of [`Names::layer`], each flagged when it is a `Linear`
/// weight (stored transposed).
fn layer_values(l: &LayerWeights) -> Vec<(&[f32], bool)> {
    let mut out: Vec<(&[f32], bool)> = vec![(&l.attn_norm, false)];
    match &l.qkv {
        QkvWeights::Heads(h) => {
            out.extend([(h.wq.as_slice(), true), (&h.wk, true), (&h.wv, true)]);
            out.extend(h.bias.iter().flatten().map(|b| (b.as_slice(), false)));
            out.extend(h.qk_norm.iter().flatten().map(|g| (g.as_slice(), false)));
        }
        QkvWeights::Latent(m) => {
            if let Some((w, g)) = &m.q_a {
                out.extend([(w.as_slice(), true), (g, false)]);
            }
            out.extend([(m.wq.as_slice(), true), (&m.wkv_a, true), (&m.kv_norm, false), (&m.wkv_b, true)]);
        }
    }
    out.extend(l.sinks.as_deref().map(|s| (s, false)));
    out.push((l.wo.as_slice(), true));
    out.extend(l.bo.as_deref().map(|b| (b, false)));
    out.push((l.ffn_norm.as_slice(), false));
    match &l.ffn {
        FfnWeights::Dense(m) => out.extend(mlp_values(m)),
        FfnWeights::Moe { router, logit_bias, selection_bias, experts, shared } => {
            out.push((router, true));
            out.extend(logit_bias.as_deref().map(|b| (b, false)));
            out.extend(selection_bias.as_deref().map(|b| (b, false)));
            out.extend(experts.iter().flat_map(mlp_values));
            if let Some((m, gate)) = shared {
                out.extend(mlp_values(m));
                out.extend(gate.as_deref().map(|g| (g, true)));
            }
        }
    }
    out
}

/// One tensor of a checkpoint as stored: its name, PyTorch shape and values.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    /// The checkpoint's name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// The PyTorch shape (out×in for a `Linear` weight).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// An expert's matrices in the order of [`Names::layer`], then its biases.
fn mlp_values(m: &Mlp) -> Vec<(&[f32], bool)> {
    let matrices = std::iter::once(m.w1.as_slice()).chain(m.w3.as_deref()).chain([m.w2.as_slice()]);
    let biases = m.bias.iter().flat_map(|b| std::iter::once(b.b1.as_slice()).chain(b.b3.as_deref()).chain([&b.b2[..]]));
    matrices.map(|w| (w, true)).chain(biases.map(|b| (b, false))).collect()
}

/// The tensors of a model in memory as a Hugging Face checkpoint of its family would hold
/// them, `Linear` weights transposed back to out×in. With
/// `safetensors::serialize_to_file` and a `config.json` this writes a checkpoint.
pub fn hf_tensors(cfg: &ModelConfig, w: &ModelWeights) -> ModelResult<Vec<HfTensor>> {
    let names = Names(cfg);
    let mut values: Vec<(Vec<f32>, bool)> = vec![(w.embedding.clone(), false), (w.final_norm.clone(), false)];
    if names.lm_head().is_some() {
        let head = w.lm_head.clone().ok_or_else(|| ModelError::Weights("the model has no LM head".into()))?;
        values.push((head, true));
    }
    if names.position_bias().is_some() {
        let bias = w.position_bias.clone().ok_or_else(|| ModelError::Weights("no position bias table".into()))?;
        values.push((bias, false));
    }
    for l in &w.layers {
        values.extend(layer_values(l).into_iter().map(|(v, m)| (v.to_vec(), m)));
    }
    let specs = names.all();
    if specs.len() != values.len() {
        return Err(ModelError::Weights(format!(
            "{} tensors for the {} the config implies",
            values.len(),
            specs.len()
        )));
    }
    let mut out: Vec<HfTensor> = Vec::new();
    for (s, (v, matrix)) in specs.into_iter().zip(values) {
        let w = s.window();
        if v.len() != w.rows * w.cols {
            return Err(ModelError::Weights(format!(
                "`{}` has {} values, not {}×{}",
                s.engine,
                v.len(),
                w.rows,
                w.cols
            )));
        }
        let v = if matrix && (w.linear || s.part.is_none()) { transpose(w.cols, w.rows, &v) } else { v };
        if s.part.is_none() {
            out.push(HfTensor { name: s.name, shape: s.shape, values: v });
            continue;
        }
        // a part: into its stored tensor, made on its first part
        let at = match out.iter().position(|t| t.name == s.name) {
            Some(at) => at,
            None => {
                let values = vec![0.0; s.shape.iter().product()];
                out.push(HfTensor { name: s.name, shape: s.shape, values });
                out.len() - 1
            }
        };
        for (i, v) in v.into_iter().enumerate() {
            out[at].values[w.stored(i)] = v;
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn half(shape: &[usize]) -> Option<Half> {
        Some(Half { file: 0, shape: shape.to_vec(), bytes: (0, 0) })
    }

    /// An MXFP4 pair reads as E × in × out; a missing half or shapes that do not match are
    /// named.
    #[test]
    fn mxfp4_halves_pair_up_or_are_named() {
        let e = mxfp4_entry("w", [half(&[8, 64, 3, 16]), half(&[8, 64, 3])]).unwrap();
        assert_eq!(e.shape, [8, 96, 64]);
        let missing = mxfp4_entry("layers.0.down_proj", [half(&[8, 64, 3, 16]), None]).err().unwrap().to_string();
        assert!(missing.contains("`layers.0.down_proj` lacks its `_blocks` or its `_scales`"), "{missing}");
        let uneven = mxfp4_entry("w", [half(&[8, 64, 3, 16]), half(&[8, 64, 2])]).err().unwrap().to_string();
        assert!(uneven.contains("[8, 64, 3, 16]") && uneven.contains("[8, 64, 2]"), "{uneven}");
    }

    /// FP8 values pair with one scale per block of their last two axes (partial blocks at the
    /// edges); a missing scale tensor or one of another shape is named.
    #[test]
    fn fp8_values_pair_with_their_block_scales_or_are_named() {
        let with = |shape: &[usize]| half(shape).map(|h| (h, Dtype::F32));
        let e = fp8_entry("w", [with(&[300, 200]), with(&[3, 2])], (128, 128)).unwrap();
        assert!(matches!(e.layout, Layout::Fp8 { block: (128, 128), .. }) && e.shape == [300, 200]);
        fp8_entry("experts", [with(&[4, 300, 200]), with(&[4, 19, 13])], (16, 16)).unwrap();
        let missing = fp8_entry("q_proj.weight", [with(&[300, 200]), None], (128, 128)).err().unwrap().to_string();
        assert!(missing.contains("`q_proj.weight_scale_inv`"), "{missing}");
        let wrong = fp8_entry("w", [with(&[300, 200]), with(&[2, 2])], (128, 128)).err().unwrap().to_string();
        assert!(wrong.contains("[2, 2]") && wrong.contains("need [3, 2]"), "{wrong}");
    }
}
