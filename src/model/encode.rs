//! The server's weights in the session's fixed point, one block at a time (as a forward needs
//! them, so a checkpoint is expanded per layer and dropped). A value that does not fit — not
//! finite, beyond the format, or beyond 32 bits for the experts' compact storage — is reported
//! under the source's name and index (the checkpoint's tensor, not the engine's).
//! [`check_weights`] runs the conversion over the whole model once, so the server refuses such
//! a checkpoint before it serves anyone. The model's scalar multipliers ([`Scales`]) are folded
//! into the weights here.

use super::config::{Ffn, ModelConfig, Scales};
use super::weights::{FfnWeights, Mlp, QkvWeights, WeightSource};
use super::{ModelError, ModelResult};
use crate::moe::{ExpertWeights, MoeWeights, SharedWeights, narrow};
use crate::proto::layernorm::GAMMA_BITS;
use crate::ring::{FixedPoint, RingError};

/// One block's weights in fixed point, the forward's layout.
pub(super) struct Block {
    /// RMSNorm γ before attention.
    pub attn_norm: Vec<u64>,
    /// The maps to q, k and v.
    pub qkv: BlockQkv,
    /// The output map.
    pub wo: Vec<u64>,
    /// Its bias, at f fractional bits (the server adds it to its share).
    pub bo: Option<Vec<u64>>,
    /// Each head's sink logit, at f fractional bits.
    pub sinks: Option<Vec<u64>>,
    /// RMSNorm γ before the feed-forward block.
    pub ffn_norm: Vec<u64>,
    /// The feed-forward block.
    pub ffn: BlockFfn,
}

/// A block's maps to q, k and v, as the forward applies them.
pub(super) enum BlockQkv {
    /// Multi-head (grouped-query) attention.
    Heads {
        /// q|k|v side by side, d×(q + 2·kv).
        wqkv: Vec<u64>,
        /// Their biases, likewise side by side.
        bias: Option<Vec<u64>>,
        /// RMSNorm γ of q and of k.
        qk_norm: Option<[Vec<u64>; 2]>,
    },
    /// Multi-head latent attention.
    Latent {
        /// The maps from x side by side: q's first (to its rank, or to the heads), then the
        /// latent's with the rotated key part.
        wa: Vec<u64>,
        /// With a q rank: its RMSNorm's γ and its map to the heads.
        q_b: Option<(Vec<u64>, Vec<u64>)>,
        /// The latent's RMSNorm γ.
        kv_norm: Vec<u64>,
        /// The latent's map to the heads' unrotated key entries and values.
        wkv_b: Vec<u64>,
    },
}

/// The rows×(Σ cols) matrix of matrices with `rows` rows side by side.
fn side_by_side(rows: usize, parts: &[(&[u64], usize)]) -> Vec<u64> {
    let mut out = Vec::with_capacity(rows * parts.iter().map(|p| p.1).sum::<usize>());
    for a in 0..rows {
        for (t, cols) in parts {
            out.extend_from_slice(&t[a * cols..(a + 1) * cols]);
        }
    }
    out
}

/// A block's feed-forward weights in the MoE layer's storage.
pub(super) enum BlockFfn {
    Dense(ExpertWeights),
    Moe(MoeWeights),
}

/// Converts the server's weights, naming what does not fit by the source's names.
pub(super) struct Encoder<'a> {
    pub format: FixedPoint,
    pub source: &'a dyn WeightSource,
    /// Folded into the embedding table, the residual branches' last maps and the LM head.
    pub scales: Scales,
}

impl Encoder<'_> {
    /// The engine's tensor `name` (`layers.3.wq`); with `bound_bits`, |w| ≤ 2^bound_bits units.
    fn tensor(&self, name: &str, values: &[f32], bound_bits: Option<u32>) -> ModelResult<Vec<u64>> {
        self.format.encode_named(name, values, bound_bits).map_err(|e| match e {
            RingError::TensorValue { tensor, index, value, reason } => {
                let (tensor, index) = self.source.locate(&tensor, index);
                RingError::TensorValue { tensor, index, value, reason }.into()
            }
            e => e.into(),
        })
    }

    /// A norm's γ, within the bound the norms take (|γ| ≤ 2^GAMMA_BITS).
    fn norm(&self, name: &str, values: &[f32]) -> ModelResult<Vec<u64>> {
        self.tensor(name, values, Some(self.format.frac_bits() + GAMMA_BITS))
    }

    /// A weight in 32 bits (the MoE layer's storage).
    fn compact(&self, name: &str, values: &[f32]) -> ModelResult<Vec<i32>> {
        Ok(narrow(name, &self.tensor(name, values, Some(31))?)?)
    }

    /// An expert (the end of a residual branch: its W2 and b2 take the residual multiplier,
    /// and `routed`, the routed experts' multiplier, or 1); with biases, each matrix gains its
    /// bias as a last row ([`crate::moe::MoeConfig::expert_bias`]).
    fn mlp(&self, name: &str, mut m: Mlp, routed: f64) -> ModelResult<ExpertWeights> {
        Scales::fold(self.scales.residual * routed, &mut m.w2);
        let (b1, b3, b2) = match m.bias.take() {
            Some(mut b) => {
                Scales::fold(self.scales.residual * routed, &mut b.b2);
                (Some(b.b1), b.b3, Some(b.b2))
            }
            None => (None, None, None),
        };
        let with = |w: Vec<f32>, b: Option<Vec<f32>>| -> Vec<f32> {
            match b {
                Some(b) => w.into_iter().chain(b).collect(),
                None => w,
            }
        };
        Ok(ExpertWeights {
            w1: self.compact(&format!("{name}.w1"), &with(m.w1, b1))?,
            w3: m.w3.map(|w| self.compact(&format!("{name}.w3"), &with(w, b3))).transpose()?,
            w2: self.compact(&format!("{name}.w2"), &with(m.w2, b2))?,
        })
    }

    /// The embedding table, vocab×d.
    pub fn embedding(&self) -> ModelResult<Vec<u64>> {
        let mut table = self.source.embedding()?;
        Scales::fold(self.scales.embedding, &mut table);
        self.tensor("embedding", &table, None)
    }

    /// T5's relative position bias table, buckets×heads.
    pub fn position_bias(&self) -> ModelResult<Option<Vec<u64>>> {
        self.source.position_bias()?.map(|t| self.tensor("position_bias", &t, None)).transpose()
    }

    /// The final RMSNorm's γ.
    pub fn final_norm(&self) -> ModelResult<Vec<u64>> {
        self.norm("final_norm", &self.source.final_norm()?)
    }

    /// The LM head, d×vocab, when the model has one.
    pub fn lm_head(&self, cfg: &ModelConfig) -> ModelResult<Option<Vec<u64>>> {
        if !cfg.lm_head {
            return Ok(None);
        }
        let mut head = self.source.lm_head()?.ok_or_else(|| ModelError::Weights("the model has no LM head".into()))?;
        Scales::fold(self.scales.logits, &mut head);
        self.tensor("lm_head", &head, None).map(Some)
    }

    /// Block `i`; the f32 weights are consumed, each expert's freed as it is converted.
    pub fn block(&self, cfg: &ModelConfig, i: usize) -> ModelResult<Block> {
        let mut w = self.source.layer(i)?;
        // the sinks and the output bias the config asks for, each of its width (or none)
        let (sinks, bo) = (w.sinks.as_ref().map_or(0, Vec::len), w.bo.as_ref().map_or(0, Vec::len));
        let want = (if cfg.sinks { cfg.heads } else { 0 }, if cfg.o_bias { cfg.d_model } else { 0 });
        if (sinks, bo) != want {
            return Err(ModelError::Weights(format!(
                "layer {i}: {sinks} sink logits and {bo} output-bias values, the config asks for {} and {}",
                want.0, want.1
            )));
        }
        Scales::fold(self.scales.residual, &mut w.wo);
        if let Some(b) = &mut w.bo {
            Scales::fold(self.scales.residual, b);
        }
        let name = |t: &str| format!("layers.{i}.{t}");
        let (d, qw, kw) = (cfg.d_model, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        let qkv = match w.qkv {
            QkvWeights::Heads(h) => {
                let (q, k, v) = (
                    self.tensor(&name("wq"), &h.wq, None)?,
                    self.tensor(&name("wk"), &h.wk, None)?,
                    self.tensor(&name("wv"), &h.wv, None)?,
                );
                let bias = match &h.bias {
                    Some([bq, bk, bv]) => Some(
                        [
                            self.tensor(&name("bq"), bq, None)?,
                            self.tensor(&name("bk"), bk, None)?,
                            self.tensor(&name("bv"), bv, None)?,
                        ]
                        .concat(),
                    ),
                    None => None,
                };
                let qk_norm = match &h.qk_norm {
                    Some([gq, gk]) => Some([self.norm(&name("q_norm"), gq)?, self.norm(&name("k_norm"), gk)?]),
                    None => None,
                };
                BlockQkv::Heads { wqkv: side_by_side(d, &[(&q, qw), (&k, kw), (&v, kw)]), bias, qk_norm }
            }
            QkvWeights::Latent(m) => {
                let l = cfg.latent.ok_or_else(|| ModelError::Weights(format!("layer {i}: latent maps")))?;
                let wq = self.tensor(&name("wq"), &m.wq, None)?;
                let wkv_a = self.tensor(&name("wkv_a"), &m.wkv_a, None)?;
                let kv_a = (wkv_a.as_slice(), l.kv_rank + l.rope);
                let (wa, q_b) = match (&m.q_a, l.q_rank) {
                    (Some((wq_a, gamma)), Some(r)) => {
                        let wq_a = self.tensor(&name("wq_a"), wq_a, None)?;
                        (side_by_side(d, &[(&wq_a, r), kv_a]), Some((self.norm(&name("q_a_norm"), gamma)?, wq)))
                    }
                    (None, None) => (side_by_side(d, &[(&wq, qw), kv_a]), None),
                    _ => return Err(ModelError::Weights(format!("layer {i}: q's rank differs from the config's"))),
                };
                BlockQkv::Latent {
                    wa,
                    q_b,
                    kv_norm: self.norm(&name("kv_a_norm"), &m.kv_norm)?,
                    wkv_b: self.tensor(&name("wkv_b"), &m.wkv_b, None)?,
                }
            }
        };
        let ffn = match (cfg.ffn[i], w.ffn) {
            (Ffn::Dense { .. }, FfnWeights::Dense(m)) => BlockFfn::Dense(self.mlp(&name("mlp"), m, 1.0)?),
            (Ffn::Moe(_), FfnWeights::Moe { router, logit_bias, selection_bias, experts, shared }) => {
                BlockFfn::Moe(MoeWeights {
                    router: self.compact(&name("router"), &router)?,
                    logit_bias: logit_bias.map(|b| self.compact(&name("logit_bias"), &b)).transpose()?,
                    selection_bias: selection_bias.map(|b| self.compact(&name("selection_bias"), &b)).transpose()?,
                    experts: experts
                        .into_iter()
                        .enumerate()
                        .map(|(e, x)| self.mlp(&name(&format!("experts.{e}")), x, self.scales.routed))
                        .collect::<ModelResult<_>>()?,
                    shared: shared
                        .map(|(x, gate)| -> ModelResult<SharedWeights> {
                            Ok(SharedWeights {
                                expert: self.mlp(&name("shared_expert"), x, 1.0)?,
                                gate: gate
                                    .as_ref()
                                    .map(|g| self.compact(&name("shared_expert_gate"), g))
                                    .transpose()?,
                            })
                        })
                        .transpose()?,
                })
            }
            (Ffn::Dense { .. }, _) => {
                return Err(ModelError::Weights(format!("layer {i}: MoE weights for a dense block")));
            }
            (Ffn::Moe(_), _) => return Err(ModelError::Weights(format!("layer {i}: dense weights for a MoE block"))),
        };
        Ok(Block {
            attn_norm: self.norm(&name("attn_norm"), &w.attn_norm)?,
            qkv,
            wo: self.tensor(&name("wo"), &w.wo, None)?,
            bo: w.bo.map(|b| self.tensor(&name("bo"), &b, None)).transpose()?,
            sinks: w.sinks.map(|s| self.tensor(&name("sinks"), &s, None)).transpose()?,
            ffn_norm: self.norm(&name("ffn_norm"), &w.ffn_norm)?,
            ffn,
        })
    }
}

/// A model's weights known to fit a fixed-point format ([`check_weights`], run once by
/// [`CheckedWeights::new`]): what [`super::serve`] takes, so that a server checks when it starts,
/// before it listens, and never while a client waits (minutes for tens of billions of weights).
pub struct CheckedWeights<'a> {
    cfg: ModelConfig,
    format: FixedPoint,
    source: &'a dyn WeightSource,
}

impl<'a> CheckedWeights<'a> {
    /// Checks `cfg` and every weight of `source` against `format`; the first that does not fit
    /// is an error naming it.
    pub fn new(cfg: &ModelConfig, format: FixedPoint, source: &'a dyn WeightSource) -> ModelResult<CheckedWeights<'a>> {
        cfg.validate()?;
        check_weights(cfg, format, source)?;
        Ok(CheckedWeights { cfg: cfg.clone(), format, source })
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The fixed-point format every weight fits.
    pub fn format(&self) -> FixedPoint {
        self.format
    }

    /// The weights.
    pub fn source(&self) -> &'a dyn WeightSource {
        self.source
    }
}

/// Converts every weight of the model once (one block at a time, nothing kept): the first
/// value that does not fit `format` is an error naming its tensor and index in the source.
pub fn check_weights(cfg: &ModelConfig, format: FixedPoint, source: &dyn WeightSource) -> ModelResult<()> {
    let enc = Encoder { format, source, scales: cfg.scales };
    enc.embedding()?;
    enc.position_bias()?;
    for i in 0..cfg.layers() {
        enc.block(cfg, i)?;
    }
    enc.final_norm()?;
    enc.lm_head(cfg)?;
    Ok(())
}
