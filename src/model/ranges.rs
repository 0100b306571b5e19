//! The value ranges private inference takes, checked on the plaintext model.
//!
//! Where a protocol states an input range — a norm's |x| < 64, attention's and the shared
//! expert's softmax logits, the router's logits and renormalized sigmoid scores, the experts'
//! pre-activations — [`ranges`]
//! records the largest magnitude the f64 model ([`super::forward`]) reaches there on given
//! prompts. The protocols cannot check secret values: a value beyond its range wraps in a
//! reduced ring and the private result is wrong without an error. So whoever serves a
//! checkpoint checks it here first, on prompts like its clients' (`secmoe ranges`); `run`
//! warns of a range its own prompt exceeds.

use std::fmt;

use super::ModelResult;
use super::config::ModelConfig;
use super::reference::{Variant, forward_probed};
use super::weights::WeightSource;
use crate::moe::{ExpertKind, MIN_SCORE_SUM, PRE_ACTIVATION_BOUND, ROUTER_LOGIT_BOUND};
use crate::proto::layernorm::NormRange;
use crate::proto::piecewise::Piecewise;
use crate::proto::softmax::{LOGIT_BOUND, SPREAD_BOUND};

/// What a site's values are, and the bound its protocol takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// A norm's input (RMSNorm: |x| < 2^B, the session's [`NormRange`]; 64 by default).
    NormInput,
    /// An attention score, scaled, with its position bias (softmax: |x| < 64).
    Score,
    /// How far a score lies below its row's largest (softmax's exp window: 63).
    ScoreSpread,
    /// A router logit (top-k and the gates: |l| < 64).
    RouterLogit,
    /// One over the sum of a token's chosen σ scores, when sigmoid routing renormalizes them
    /// (its reciprocal: the sum at least 1/16).
    ScoreSumReciprocal,
    /// The shared expert's gate logit (a softmax of [z, 0]: |z| < 64).
    SharedGateLogit,
    /// The input of an expert's activation (SiLU, GeLU: |x| < 63; ReLU: the ring's 64).
    Activation(ExpertKind),
    /// A gated expert's other branch, x·W3 (|u| < 64; gpt-oss's clamped one: |u| < 63).
    UpBranch(ExpertKind),
}

impl Quantity {
    /// The bound: the protocol takes |x| < limit, the norms with inputs in `norms`.
    pub fn limit(self, norms: NormRange) -> f64 {
        match self {
            Quantity::NormInput => norms.bound(),
            Quantity::Score | Quantity::SharedGateLogit => LOGIT_BOUND,
            Quantity::ScoreSpread => SPREAD_BOUND,
            Quantity::RouterLogit => ROUTER_LOGIT_BOUND,
            Quantity::ScoreSumReciprocal => 1.0 / MIN_SCORE_SUM,
            Quantity::Activation(kind) => kind.activation().map_or(PRE_ACTIVATION_BOUND, symmetric),
            Quantity::UpBranch(kind) => kind.up_branch().map_or(PRE_ACTIVATION_BOUND, symmetric),
        }
    }
}

/// The largest magnitude inside a piecewise function's input range, on both sides.
fn symmetric(f: Piecewise) -> f64 {
    let (lo, hi) = f.input_range();
    (-lo).min(hi)
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quantity::NormInput => f.write_str("norm input"),
            Quantity::Score => f.write_str("attention score"),
            Quantity::ScoreSpread => f.write_str("score below its row's largest"),
            Quantity::RouterLogit => f.write_str("router logit"),
            Quantity::ScoreSumReciprocal => f.write_str("1 / chosen scores' sum"),
            Quantity::SharedGateLogit => f.write_str("shared expert's gate logit"),
            Quantity::Activation(ExpertKind::Relu) => f.write_str("ReLU input"),
            Quantity::Activation(ExpertKind::Gelu | ExpertKind::GeGlu) => f.write_str("GeLU input"),
            Quantity::Activation(ExpertKind::SwiGlu) => f.write_str("SiLU input"),
            Quantity::Activation(ExpertKind::ClampedSwiGlu) => f.write_str("clamped SwiGLU gate input"),
            Quantity::UpBranch(ExpertKind::ClampedSwiGlu) => f.write_str("clamped SwiGLU up branch"),
            Quantity::UpBranch(_) => f.write_str("x·W3 branch"),
        }
    }
}

/// One site: where, what, and the largest magnitude seen there.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    /// The engine's name of the place (`layers.3.ffn_norm`, `layers.3.experts`, `final_norm`).
    pub site: String,
    /// What its values are.
    pub quantity: Quantity,
    /// The largest magnitude seen over the prompts.
    pub max: f64,
    /// The protocol takes |x| < limit.
    pub limit: f64,
}

impl Range {
    /// Whether the largest value is beyond the protocol's range (or not a number).
    pub fn exceeded(&self) -> bool {
        self.max.is_nan() || self.max >= self.limit
    }
}

/// A router's narrowest choice: over the tokens it routed, the least amount by which the last
/// expert chosen ranks above the best one not chosen, in the values its top-k compares (the
/// logits; σ(l) + b or the probabilities plus b under a selection bias; within the chosen groups
/// under group-limited routing).
///
/// Not a range the protocols need: a private run's router values carry the fixed-point error of
/// everything before them, so a margin below [`NEAR_TIE`] may send the token to another expert
/// than the f64 model does — a near-tie the two computations break
/// differently, as bf16 and f32 runs of `transformers` do; the token's output and the later
/// tokens' (through attention) then differ from the reference by more than the protocols' error.
#[derive(Debug, Clone, PartialEq)]
pub struct Margin {
    /// The router's layer.
    pub layer: usize,
    /// The token's position in its prompt.
    pub token: usize,
    /// The margin.
    pub gap: f64,
}

/// A routing margin below which a choice counts as a near-tie ([`Margin::near_tie`]): the
/// order of the fixed-point error a private run's values carry after some layers (its outputs'
/// error against the f64 model is 10^-3 to 10^-2 on the models measured).
pub const NEAR_TIE: f64 = 1e-2;

impl Margin {
    /// The router's site name, `layers.{layer}.router`.
    pub fn site(&self) -> String {
        format!("layers.{}.router", self.layer)
    }

    /// Whether the choice is so narrow that a private run may make it the other way.
    pub fn near_tie(&self) -> bool {
        self.gap < NEAR_TIE
    }
}

/// Every site of a model with the largest magnitude seen there, in the forward's order,
/// against the ranges of a session whose norms take `norms`, and each router's narrowest choice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranges {
    norms: NormRange,
    sites: Vec<Range>,
    margins: Vec<Margin>,
    near_ties: Vec<Margin>,
}

impl Ranges {
    /// No site yet, the norms taking inputs in `norms`.
    pub fn new(norms: NormRange) -> Ranges {
        Ranges { norms, sites: Vec::new(), margins: Vec::new(), near_ties: Vec::new() }
    }

    /// Records a routing choice of layer `layer`'s router for `token` won by `gap`, keeping each
    /// router's least and every near-tie.
    pub(super) fn see_margin(&mut self, layer: usize, token: usize, gap: f64) {
        let margin = Margin { layer, token, gap };
        if margin.near_tie() {
            self.near_ties.push(margin.clone());
        }
        match self.margins.iter_mut().rev().find(|m| m.layer == layer) {
            Some(m) if gap < m.gap => *m = margin,
            Some(_) => {}
            None => self.margins.push(margin),
        }
    }

    /// Each router's narrowest choice, in the forward's order.
    pub fn margins(&self) -> &[Margin] {
        &self.margins
    }

    /// Every routing choice made by a near-tie, in the forward's order.
    pub fn near_ties(&self) -> &[Margin] {
        &self.near_ties
    }

    /// The narrowest routing choice of all.
    pub fn narrowest(&self) -> Option<&Margin> {
        self.margins.iter().min_by(|a, b| a.gap.total_cmp(&b.gap))
    }

    /// Records values seen at `site`, keeping the largest magnitude per (site, quantity) (the
    /// site is most often the last one recorded, so the search starts there).
    pub(super) fn see<'a>(
        &mut self,
        site: impl Into<String>,
        quantity: Quantity,
        values: impl IntoIterator<Item = &'a f64>,
    ) {
        // the largest |v|, NaN once any is (f64::max would drop it)
        let largest = |a: f64, b: f64| if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) };
        let max = values.into_iter().fold(0.0f64, |m, v| largest(m, v.abs()));
        let site = site.into();
        match self.sites.iter_mut().rev().find(|r| r.site == site && r.quantity == quantity) {
            Some(r) => r.max = largest(r.max, max),
            None => self.sites.push(Range { site, quantity, max, limit: quantity.limit(self.norms) }),
        }
    }

    /// Every site, in the forward's order.
    pub fn sites(&self) -> &[Range] {
        &self.sites
    }

    /// The sites whose values went beyond their protocol's range.
    pub fn exceeded(&self) -> impl Iterator<Item = &Range> {
        self.sites.iter().filter(|r| r.exceeded())
    }

    /// The narrowest norm range that takes every norm input seen; None if none does.
    pub fn norms_needed(&self) -> Option<NormRange> {
        let max = self.sites.iter().filter(|r| r.quantity == Quantity::NormInput).fold(0.0, |m: f64, r| m.max(r.max));
        NormRange::BITS.map(NormRange::new).filter_map(Result::ok).find(|n| max < n.bound())
    }
}

/// The ranges the plaintext model reaches on each prompt (token ids), over all of them, against
/// those of a session whose norms take `norms`.
pub fn ranges(
    cfg: &ModelConfig,
    weights: &dyn WeightSource,
    prompts: &[&[u32]],
    norms: NormRange,
) -> ModelResult<Ranges> {
    let mut probe = Ranges::new(norms);
    for ids in prompts {
        forward_probed(cfg, weights, ids, &[Variant::default()], &mut probe)?;
    }
    Ok(probe)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A site keeps its largest magnitude over every call; a NaN stays (and is beyond any range);
    /// the norms' limit follows the range the check is for.
    #[test]
    fn sites_keep_their_largest_magnitude_and_nan() {
        let mut r = Ranges::new(NormRange::new(10).unwrap());
        r.see("a", Quantity::NormInput, &[1.0, -700.0]);
        r.see("a", Quantity::NormInput, &[3.0]);
        r.see("b", Quantity::RouterLogit, &[1.0, f64::NAN, 2.0]);
        r.see("b", Quantity::RouterLogit, &[5.0]);
        assert_eq!((r.sites()[0].max, r.sites()[0].limit), (700.0, 1024.0));
        assert!(r.sites()[1].max.is_nan());
        let beyond: Vec<&str> = r.exceeded().map(|s| s.site.as_str()).collect();
        assert_eq!(beyond, ["b"]);
        assert_eq!(r.norms_needed(), Some(NormRange::new(10).unwrap()));
    }

    /// A router keeps its narrowest choice and the token that made it; the narrowest of all is
    /// found over the routers; every choice below 10^-2 is kept as a near-tie.
    #[test]
    fn routers_keep_their_narrowest_choice() {
        let mut r = Ranges::default();
        r.see_margin(0, 0, 0.5);
        r.see_margin(0, 3, 0.01);
        r.see_margin(0, 4, 0.2);
        r.see_margin(1, 2, 0.1);
        r.see_margin(1, 5, 0.001);
        let m: Vec<(usize, usize, f64)> = r.margins().iter().map(|m| (m.layer, m.token, m.gap)).collect();
        assert_eq!(m, [(0, 3, 0.01), (1, 5, 0.001)]);
        let ties: Vec<(usize, usize)> = r.near_ties().iter().map(|m| (m.layer, m.token)).collect();
        assert_eq!(ties, [(1, 5)]);
        assert_eq!(r.narrowest().map(|m| m.token), Some(5));
    }
}
