//! The server's weights of a MoE layer, as fixed-point values of the session's format stored in
//! 32 bits (row-major, x·W convention: a d×m matrix maps a d-vector to an m-vector). Half the
//! memory of ring elements — what lets hundreds of experts stay in memory; each chunk of
//! experts is widened to Z_2^64 only while its HE product runs.

use rand::{Rng, RngExt};

use super::route::SELECTION_BIAS_BOUND;
use super::{MoeConfig, MoeError, MoeResult};
use crate::ring::{FixedPoint, to_signed};

/// One expert's (or the shared expert's) matrices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertWeights {
    /// W1, d×d_ff: the activation's input (the gate of gated kinds).
    pub w1: Vec<i32>,
    /// W3, d×d_ff: the gated kinds' linear branch (up); `None` for ReLU/GeLU experts.
    pub w3: Option<Vec<i32>>,
    /// W2, d_ff×d: back to the model width (down).
    pub w2: Vec<i32>,
}

/// The shared expert and its optional sigmoid gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedWeights {
    /// The dense expert.
    pub expert: ExpertWeights,
    /// w_g, d×1 (Qwen2-MoE's `shared_expert_gate`), when the config asks for it.
    pub gate: Option<Vec<i32>>,
}

/// All weights of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoeWeights {
    /// The router, d×E.
    pub router: Vec<i32>,
    /// The router's own bias, E values added to the logits (gpt-oss's `router.bias`; `None`:
    /// zero). The server adds it to its shares of the logits.
    pub logit_bias: Option<Vec<i32>>,
    /// The selection bias of sigmoid or biased softmax routing, E values (DeepSeek-V3's and
    /// ERNIE-4.5's `e_score_correction_bias`; `None`: zero), |b| < 64.
    pub selection_bias: Option<Vec<i32>>,
    /// The E routed experts.
    pub experts: Vec<ExpertWeights>,
    /// The shared expert, when the config has one.
    pub shared: Option<SharedWeights>,
}

fn expect(name: &str, values: &[i32], rows: usize, cols: usize) -> MoeResult<()> {
    if values.len() == rows * cols {
        Ok(())
    } else {
        Err(MoeError::Shape { tensor: name.to_string(), expected: format!("{rows}×{cols}"), values: values.len() })
    }
}

impl ExpertWeights {
    /// Checks W1, W3 of `rows`×d_ff and W2 of `rows2`×d (`rows`, `rows2`: d and d_ff, one more
    /// each with biases, [`MoeConfig::expert_inputs`]).
    fn check(
        &self,
        name: &str,
        gated: bool,
        (rows, d_ff): (usize, usize),
        (rows2, d): (usize, usize),
    ) -> MoeResult<()> {
        expect(&format!("{name}.w1"), &self.w1, rows, d_ff)?;
        expect(&format!("{name}.w2"), &self.w2, rows2, d)?;
        match (&self.w3, gated) {
            (Some(w3), true) => expect(&format!("{name}.w3"), w3, rows, d_ff),
            (None, false) => Ok(()),
            (None, true) => Err(MoeError::Shape {
                tensor: format!("{name}.w3"),
                expected: format!("{rows}×{d_ff} (a gated expert)"),
                values: 0,
            }),
            (Some(w3), false) => Err(MoeError::Shape {
                tensor: format!("{name}.w3"),
                expected: "none (the expert kind has no W3)".into(),
                values: w3.len(),
            }),
        }
    }

    /// Uniform in ±1/√fan_in; with `bias`, one more row each of the same range.
    fn random(gated: bool, (d, d_ff): (usize, usize), bias: bool, format: FixedPoint, rng: &mut impl Rng) -> Self {
        let (a, b) = (1.0 / (d as f64).sqrt(), 1.0 / (d_ff as f64).sqrt());
        let (rows, rows2) = (d + usize::from(bias), d_ff + usize::from(bias));
        ExpertWeights {
            w1: uniform(rows * d_ff, a, format, rng),
            w3: gated.then(|| uniform(rows * d_ff, a, format, rng)),
            w2: uniform(rows2 * d, b, format, rng),
        }
    }
}

impl MoeWeights {
    /// Checks every tensor's size against `cfg`, naming the first that does not fit, and the
    /// selection bias's range at `format`.
    pub fn check(&self, cfg: &MoeConfig, format: FixedPoint) -> MoeResult<()> {
        let (d, e) = (cfg.d_model, cfg.experts);
        expect("router", &self.router, d, e)?;
        if let Some(b) = &self.logit_bias {
            expect("logit_bias", b, 1, e)?;
        }
        if let Some(b) = &self.selection_bias {
            if !cfg.routing.has_selection_bias() {
                return Err(MoeError::Shape {
                    tensor: "selection_bias".into(),
                    expected: format!("none ({:?} routing has no selection bias)", cfg.routing),
                    values: b.len(),
                });
            }
            expect("selection_bias", b, 1, e)?;
            let bound = (SELECTION_BIAS_BOUND * format.scale()) as i64;
            if let Some(i) = b.iter().position(|&v| (v as i64).abs() >= bound) {
                return Err(MoeError::Input(format!("selection_bias[{i}] outside ±{SELECTION_BIAS_BOUND}")));
            }
        }
        if self.experts.len() != e {
            return Err(MoeError::Shape {
                tensor: "experts".into(),
                expected: format!("{e} experts"),
                values: self.experts.len(),
            });
        }
        for (i, x) in self.experts.iter().enumerate() {
            let (rows, rows2) = cfg.expert_inputs();
            x.check(&format!("experts.{i}"), cfg.expert.gated(), (rows, cfg.d_ff), (rows2, d))?;
        }
        match (&self.shared, cfg.shared) {
            (None, None) => Ok(()),
            (Some(s), Some(c)) => {
                s.expert.check("shared", cfg.expert.gated(), (d, c.d_ff), (c.d_ff, d))?;
                match (&s.gate, c.sigmoid_gate) {
                    (Some(g), true) => expect("shared.gate", g, d, 1),
                    (None, false) => Ok(()),
                    (g, _) => Err(MoeError::Shape {
                        tensor: "shared.gate".into(),
                        expected: if c.sigmoid_gate { format!("{d}×1") } else { "none".into() },
                        values: g.as_ref().map_or(0, Vec::len),
                    }),
                }
            }
            (s, _) => Err(MoeError::Shape {
                tensor: "shared".into(),
                expected: if cfg.shared.is_some() { "a shared expert".into() } else { "none".into() },
                values: s.as_ref().map_or(0, |s| s.expert.w1.len()),
            }),
        }
    }

    /// Random weights of `cfg`'s shapes (uniform in ±1/√fan_in, the router's scaled by
    /// `router_scale`; a selection bias in ±½ where the routing has one; no logit bias), for
    /// tests and benchmarks.
    pub fn random(cfg: &MoeConfig, format: FixedPoint, router_scale: f64, rng: &mut impl Rng) -> Self {
        let gated = cfg.expert.gated();
        let (d, d_ff) = (cfg.d_model, cfg.d_ff);
        let mut w = MoeWeights {
            router: uniform(d * cfg.experts, router_scale / (d as f64).sqrt(), format, rng),
            logit_bias: None,
            selection_bias: None,
            experts: (0..cfg.experts)
                .map(|_| ExpertWeights::random(gated, (d, d_ff), cfg.expert_bias, format, rng))
                .collect(),
            shared: cfg.shared.map(|s| SharedWeights {
                expert: ExpertWeights::random(gated, (d, s.d_ff), false, format, rng),
                gate: s.sigmoid_gate.then(|| uniform(d, 1.0 / (d as f64).sqrt(), format, rng)),
            }),
        };
        if cfg.routing.has_selection_bias() {
            w.selection_bias = Some(uniform(cfg.experts, 0.5, format, rng));
        }
        w
    }
}

/// Uniform fixed-point values in ±bound.
fn uniform(count: usize, bound: f64, format: FixedPoint, rng: &mut impl Rng) -> Vec<i32> {
    let m = (bound * format.scale()).min(i32::MAX as f64) as i32;
    (0..count).map(|_| rng.random_range(-m..=m)).collect()
}

/// 32-bit weights as ring elements of Z_2^64 (sign-extended), for an HE product.
pub fn widen(values: &[i32]) -> Vec<u64> {
    values.iter().map(|&v| v as i64 as u64).collect()
}

/// Ring elements (fixed-point weights) narrowed to 32 bits; the name of the tensor and the
/// first element that does not fit are in the error.
pub fn narrow(name: &str, values: &[u64]) -> MoeResult<Vec<i32>> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            i32::try_from(to_signed(v)).map_err(|_| {
                MoeError::Input(format!("weight {name}[{i}] does not fit 32 bits at this fixed-point format"))
            })
        })
        .collect()
}
