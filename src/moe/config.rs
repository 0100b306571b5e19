//! What a MoE layer is — sizes, router family, expert kind, shared expert — and how it is
//! evaluated. All of it is public: both parties pass the same [`MoeConfig`] and check that they
//! agree before anything secret moves.

use std::fmt;

use super::{MoeError, MoeResult};
use crate::proto::linear::KeySet;
use crate::proto::piecewise::Piecewise;

/// How the router's logits become the chosen experts and their gate weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Switch Transformer: top-1; the gate is the softmax probability of the chosen expert.
    Switch,
    /// Mixtral: top-k of the logits; the gates are the softmax over those k logits.
    TopKSoftmax,
    /// Qwen2-MoE and OLMoE: softmax over all experts, top-k of the probabilities, renormalized
    /// over the k when `normalize` (`norm_topk_prob`; then it equals [`Routing::TopKSoftmax`]).
    SoftmaxTopK {
        /// Renormalize the k probabilities to sum to 1.
        normalize: bool,
    },
    /// DeepSeek-V3, GLM-4.5, dots.llm1: each expert's score is σ(logit); the k chosen are the
    /// top-k of score + b (the server's per-expert selection bias, `e_score_correction_bias`);
    /// the gates are the chosen scores, renormalized over the k when `normalize`
    /// (`norm_topk_prob`). The bias steers the choice only, never a gate.
    SigmoidTopK {
        /// Renormalize the k scores to sum to 1.
        normalize: bool,
    },
    /// ERNIE-4.5: softmax over all experts; the k chosen are the top-k of p + b (the server's
    /// selection bias, `moe_statics.e_score_correction_bias`); the gates are the chosen
    /// probabilities renormalized over the k.
    BiasedSoftmaxTopK,
}

impl Routing {
    /// Whether the gates need the softmax over all experts (else over the chosen k only).
    pub fn softmax_over_all(self) -> bool {
        matches!(self, Routing::Switch | Routing::SoftmaxTopK { normalize: false })
    }

    /// Every routing, in the order of their names' list.
    const ALL: [Routing; 7] = [
        Routing::TopKSoftmax,
        Routing::SoftmaxTopK { normalize: false },
        Routing::SoftmaxTopK { normalize: true },
        Routing::SigmoidTopK { normalize: false },
        Routing::SigmoidTopK { normalize: true },
        Routing::BiasedSoftmaxTopK,
        Routing::Switch,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Routing::TopKSoftmax => "top-k-softmax",
            Routing::SoftmaxTopK { normalize: false } => "softmax-top-k",
            Routing::SoftmaxTopK { normalize: true } => "softmax-top-k-renorm",
            Routing::SigmoidTopK { normalize: false } => "sigmoid-top-k",
            Routing::SigmoidTopK { normalize: true } => "sigmoid-top-k-renorm",
            Routing::BiasedSoftmaxTopK => "biased-softmax-top-k",
            Routing::Switch => "switch",
        }
    }

    /// Whether top-1 routing has gate 1 for every token (the chosen weight renormalized by
    /// itself).
    fn top_1_is_unit(self) -> bool {
        match self {
            Routing::Switch => false,
            Routing::TopKSoftmax | Routing::BiasedSoftmaxTopK => true,
            Routing::SoftmaxTopK { normalize } | Routing::SigmoidTopK { normalize } => normalize,
        }
    }

    /// Whether the server adds a selection bias to the scores it ranks (a weight of its own).
    pub fn has_selection_bias(self) -> bool {
        matches!(self, Routing::SigmoidTopK { .. } | Routing::BiasedSoftmaxTopK)
    }
}

/// The function one expert computes on a token x (d) with its matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertKind {
    /// ReLU(x·W1)·W2 (Switch Transformer, T5).
    Relu,
    /// GeLU(x·W1)·W2.
    Gelu,
    /// (SiLU(x·W1) ⊙ x·W3)·W2 (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE: W1 = gate, W3 = up, W2 = down).
    SwiGlu,
    /// (GeLU(x·W1) ⊙ x·W3)·W2 (the SecMoE paper's expert, with W3 its V).
    GeGlu,
    /// gpt-oss's clamped SwiGLU: ((clamp(x·W3, ±7) + 1) ⊙ g·σ(1.702·g))·W2 with
    /// g = min(x·W1, 7) (its `swiglu_limit` and `swiglu_alpha`).
    ClampedSwiGlu,
}

impl ExpertKind {
    /// Whether the expert has the second input matrix W3.
    pub fn gated(self) -> bool {
        matches!(self, ExpertKind::SwiGlu | ExpertKind::GeGlu | ExpertKind::ClampedSwiGlu)
    }

    /// The piecewise function the protocols evaluate on the (gate) pre-activation x·W1: none
    /// for ReLU (one sign test), GeLU for GeLU and GeGLU, SiLU for SwiGLU, gpt-oss's clamped
    /// gate for its SwiGLU.
    pub fn activation(self) -> Option<Piecewise> {
        match self {
            ExpertKind::Relu => None,
            ExpertKind::Gelu | ExpertKind::GeGlu => Some(Piecewise::gelu()),
            ExpertKind::SwiGlu => Some(Piecewise::silu()),
            ExpertKind::ClampedSwiGlu => Some(Piecewise::clamped_swish()),
        }
    }

    /// The piecewise function on a gated expert's other branch x·W3: gpt-oss's clamp(u, ±7) + 1,
    /// none (u itself) for the others.
    pub fn up_branch(self) -> Option<Piecewise> {
        (self == ExpertKind::ClampedSwiGlu).then(Piecewise::clamped_up)
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ExpertKind::Relu => "relu",
            ExpertKind::Gelu => "gelu",
            ExpertKind::SwiGlu => "swiglu",
            ExpertKind::GeGlu => "geglu",
            ExpertKind::ClampedSwiGlu => "clamped-swiglu",
        }
    }
}

impl std::str::FromStr for ExpertKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [ExpertKind::Relu, ExpertKind::Gelu, ExpertKind::SwiGlu, ExpertKind::GeGlu, ExpertKind::ClampedSwiGlu]
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown expert kind `{s}` (relu, gelu, swiglu, geglu, clamped-swiglu)"))
    }
}

impl std::str::FromStr for Routing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Routing::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Routing::ALL.iter().map(|r| r.name()).collect();
            format!("unknown routing `{s}` ({})", names.join(", "))
        })
    }
}

/// A dense expert every token goes through besides its routed ones (Qwen2-MoE, DeepSeek-MoE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedExpert {
    /// Its hidden width.
    pub d_ff: usize,
    /// Qwen2-MoE's gate: the shared expert's output is scaled by sigmoid(x·w_g).
    pub sigmoid_gate: bool,
}

/// Group-limited routing (DeepSeek's): the E experts in `groups` equal groups of consecutive
/// indices; each token first chooses the `chosen` groups of the highest group scores — the sum
/// of a group's two best σ(l) + b under sigmoid routing (DeepSeek-V3's `noaux_tc`), its best
/// logit under softmax top-k (DeepSeek-V2's `group_limited_greedy`, whose group score is the
/// best probability, ranked alike) — then its k experts among theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimit {
    /// Groups of experts (`n_group`).
    pub groups: usize,
    /// Groups each token chooses (`topk_group`), fewer than `groups`.
    pub chosen: usize,
}

/// One MoE FFN layer: E experts of one kind, each d → d_ff → d, a router d → E choosing k per
/// token, optionally a shared expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeConfig {
    /// E, the number of routed experts.
    pub experts: usize,
    /// k, the experts each token is routed to.
    pub top_k: usize,
    /// d, the model width.
    pub d_model: usize,
    /// d_ff, an expert's hidden width.
    pub d_ff: usize,
    /// The router family.
    pub routing: Routing,
    /// What an expert computes.
    pub expert: ExpertKind,
    /// The shared expert, if the model has one.
    pub shared: Option<SharedExpert>,
    /// Tokens an expert takes per layer call beyond which the model drops the later ones, in
    /// token order (Switch's `expert_capacity`); `None`: never.
    pub expert_capacity: Option<usize>,
    /// Group-limited routing, or `None`: every expert in play.
    pub groups: Option<GroupLimit>,
    /// The routed experts' maps have biases (gpt-oss): x·W + b = [x | 1]·[W; b], so each of
    /// their matrices holds one more row, its bias, and their inputs one more column, the
    /// public 1 ([`MoeConfig::expert_inputs`]).
    pub expert_bias: bool,
}

/// Most routed experts a layer may have (the one-hot vectors of the routing; also the longest
/// softmax row).
pub const MAX_EXPERTS: usize = crate::proto::compare::MAX_ONE_HOT;
const _: () = assert!(MAX_EXPERTS <= crate::proto::softmax::MAX_ROW);
/// Most experts per token.
pub const MAX_TOP_K: usize = 8;

impl MoeConfig {
    /// Checks the sizes against each other and against what the protocols support.
    pub fn validate(&self) -> MoeResult<()> {
        let bad = |what: String| Err(MoeError::Config(what));
        if !(1..=MAX_EXPERTS).contains(&self.experts) {
            return bad(format!("{} experts (1..={MAX_EXPERTS})", self.experts));
        }
        if self.top_k == 0 || self.top_k > self.experts {
            return bad(format!("top-{} of {} experts (1..={})", self.top_k, self.experts, self.experts));
        }
        if self.top_k > MAX_TOP_K {
            return bad(format!("top-{} (at most {MAX_TOP_K})", self.top_k));
        }
        if self.routing == Routing::Switch && self.top_k != 1 {
            return bad(format!("Switch routing takes top-1, not top-{}", self.top_k));
        }
        if self.d_model == 0 || self.d_ff == 0 || self.shared.is_some_and(|s| s.d_ff == 0) {
            return bad(format!("zero width: {self}"));
        }
        if self.expert_capacity == Some(0) {
            return bad("an expert capacity of 0 tokens".into());
        }
        if let Some(GroupLimit { groups, chosen }) = self.groups {
            let sigmoid = matches!(self.routing, Routing::SigmoidTopK { .. });
            if !sigmoid && !matches!(self.routing, Routing::SoftmaxTopK { .. }) {
                return bad(format!("group-limited routing under {:?} (sigmoid or softmax top-k)", self.routing));
            }
            let per = self.experts.checked_div(groups).unwrap_or(0);
            if groups < 2 || per * groups != self.experts || chosen == 0 || chosen >= groups {
                return bad(format!("the top {chosen} of {groups} groups of {} experts", self.experts));
            }
            if self.top_k > chosen * per || (sigmoid && per < 2) {
                return bad(format!("top-{} within {chosen} groups of {per} experts", self.top_k));
            }
        }
        Ok(())
    }

    /// Whether every gate is exactly 1: one expert per token whose weight is renormalized by
    /// itself (Mixtral-style top-1, or a normalized top-1), so the gate needs no protocol.
    pub fn unit_gate(&self) -> bool {
        self.top_k == 1 && self.routing.top_1_is_unit()
    }

    /// The capacity that drops tokens in a call on n tokens: an expert receives each token at
    /// most once, so only a capacity below n can overflow.
    pub fn overflow_capacity(&self, n: usize) -> Option<usize> {
        self.expert_capacity.filter(|&c| c < n)
    }

    /// Rows of a routed expert's first matrices and of its W2: d and d_ff, one more each when
    /// the experts have biases (their last rows).
    pub fn expert_inputs(&self) -> (usize, usize) {
        let b = usize::from(self.expert_bias);
        (self.d_model + b, self.d_ff + b)
    }

    /// The canonical text both parties compare.
    pub fn canonical(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for MoeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "E={} top-{} d={} d_ff={} {:?} {}",
            self.experts,
            self.top_k,
            self.d_model,
            self.d_ff,
            self.routing,
            self.expert.name()
        )?;
        if let Some(s) = self.shared {
            write!(f, " shared d_ff={}{}", s.d_ff, if s.sigmoid_gate { " sigmoid-gated" } else { "" })?;
        }
        if let Some(c) = self.expert_capacity {
            write!(f, " capacity={c}")?;
        }
        if let Some(g) = self.groups {
            write!(f, " groups={}/{}", g.chosen, g.groups)?;
        }
        if self.expert_bias {
            write!(f, " biased")?;
        }
        Ok(())
    }
}

/// How the routed experts are evaluated (the module notes compare them).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Method {
    /// Select-Then-Compute, the design this engine chose for flat communication: each row's
    /// chosen expert's weights selected under HE by the encrypted one-hot,
    /// \[\[W\]\] = Σ_i W_i·\[\[t_i\]\], and that one expert computed on the encrypted row
    /// (ciphertext×ciphertext), in whichever order of the two sums the client's layout
    /// chooser prices cheaper ([`crate::he::selected::SelectOrder`]): the client's bytes do not
    /// grow with E, the server's work does. Needs the session's selection keys
    /// ([`crate::proto::HeUse::Select`] with [`KeySet::WithRelin`]); E ≤ 1024.
    SelectThenCompute,
    /// Every expert's matrices on every token under HE (plaintext weights), the chosen
    /// expert's pre-activation row selected by the secret one-hot (OT multiplexers), the
    /// activation once per chosen expert, the second matrix for every expert on it and the
    /// output row selected again: Select-Then-Compute for the activation only, bytes growing
    /// with E. The default: the fastest on a CPU at today's checkpoints' expert counts, and the
    /// only method without selection keys to set up.
    #[default]
    SelectRows,
    /// Capacity dispatch (CryptoMoE): each expert takes ⌈factor·k·n/E⌉ token slots filled by a
    /// secret dispatch matrix (routed tokens in token order, overflow dropped), runs on its
    /// slots only, and a transposed dispatch matrix brings the gated results back. The capacity
    /// is public; the number of dropped tokens is revealed to the client.
    Capacity {
        /// The capacity factor c ≥ 1.
        factor: f64,
    },
    /// Every expert evaluated in full (activation included) for every token, then multiplexed by
    /// the one-hot (BumbleBee's way).
    Baseline,
    /// The SecMoE paper's Protocol 1 as written: [`Method::SelectThenCompute`] with the weights
    /// always selected first ([`crate::he::selected::SelectOrder::WeightsFirst`]).
    Paper,
    /// [`Method::Paper`] with its ciphertext products left unrelinearized: each output tile
    /// returns as a three-part result the client opens with s²
    /// ([`crate::he::selected::ProductForm::Tensored`]; selection keys with
    /// [`KeySet::WithSquare`]). No relinearization or packing on the server, more bytes down.
    PaperTensored,
}

/// Most experts the selected-weights methods ([`Method::selection_keys`]) select among: the
/// selectors of one row come out of one ciphertext's expansion, at most
/// 2^[`crate::he::matmul::MAX_GALOIS_LEVELS`] of them.
pub const MAX_SELECTED_EXPERTS: usize = 1 << crate::he::matmul::MAX_GALOIS_LEVELS;

/// Most tokens a capacity-dispatched layer takes (the queue positions' one-hot vectors).
pub const MAX_CAPACITY_TOKENS: usize = crate::proto::compare::MAX_ONE_HOT / 2;

impl Method {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::SelectThenCompute => "select-then-compute",
            Method::SelectRows => "select-rows",
            Method::Capacity { .. } => "capacity",
            Method::Baseline => "baseline",
            Method::Paper => "paper",
            Method::PaperTensored => "paper-tensored",
        }
    }

    /// The selection keys the method needs ([`crate::proto::HeUse::Select`]), if any.
    pub fn selection_keys(self) -> Option<KeySet> {
        match self {
            Method::SelectThenCompute | Method::Paper => Some(KeySet::WithRelin),
            Method::PaperTensored => Some(KeySet::WithSquare),
            _ => None,
        }
    }

    /// Slots per expert for n tokens: ⌈c·k·n/E⌉, at most n and at most the model's own
    /// expert capacity.
    pub fn capacity(self, cfg: &MoeConfig, n: usize) -> Option<usize> {
        match self {
            Method::Capacity { factor } => {
                let slots = (factor * (cfg.top_k * n) as f64 / cfg.experts as f64).ceil() as usize;
                Some(slots.clamp(1, n).min(cfg.expert_capacity.unwrap_or(n)))
            }
            _ => None,
        }
    }

    /// Checks the method's own parameters for n tokens.
    pub fn validate(self, cfg: &MoeConfig, n: usize) -> MoeResult<()> {
        if self.selection_keys().is_some() && cfg.experts > MAX_SELECTED_EXPERTS {
            return Err(MoeError::Config(format!(
                "{self} selects among at most {MAX_SELECTED_EXPERTS} experts, not {}",
                cfg.experts
            )));
        }
        if let Method::Capacity { factor } = self {
            if !factor.is_finite() || factor < 1.0 {
                return Err(MoeError::Config(format!(
                    "capacity factor {factor} below 1: experts would get fewer slots than their share k·n/E"
                )));
            }
            if n > MAX_CAPACITY_TOKENS {
                return Err(MoeError::Config(format!(
                    "capacity dispatch of {n} tokens (at most {MAX_CAPACITY_TOKENS} per layer call)"
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Capacity { factor } => write!(f, "capacity({factor})"),
            m => f.write_str(m.name()),
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;

    /// `select-then-compute`, `select-rows`, `baseline`, `paper`, `paper-tensored`, `capacity`
    /// (factor 1.25) or
    /// `capacity:<factor>`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("capacity") {
            let factor = match rest.strip_prefix(':') {
                Some(f) => f.parse::<f64>().map_err(|_| format!("capacity factor `{f}` is not a number"))?,
                None if rest.is_empty() => 1.25,
                None => return Err(format!("unknown MoE method `{s}`")),
            };
            return Ok(Method::Capacity { factor });
        }
        [Method::SelectThenCompute, Method::SelectRows, Method::Baseline, Method::Paper, Method::PaperTensored]
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown MoE method `{s}` (select-then-compute, select-rows, capacity[:factor], baseline, paper, paper-tensored)"
                )
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(experts: usize, top_k: usize) -> MoeConfig {
        MoeConfig {
            experts,
            top_k,
            d_model: 8,
            d_ff: 16,
            routing: Routing::TopKSoftmax,
            expert: ExpertKind::SwiGlu,
            shared: None,
            expert_capacity: None,
            groups: None,
            expert_bias: false,
        }
    }

    #[test]
    fn routings_parse_from_their_names() {
        for r in Routing::ALL {
            assert_eq!(r.name().parse(), Ok(r));
        }
        assert!("sigmoid".parse::<Routing>().unwrap_err().contains("sigmoid-top-k-renorm"));
    }

    #[test]
    fn methods_parse_from_their_names() {
        assert_eq!("select-then-compute".parse(), Ok(Method::SelectThenCompute));
        assert_eq!("select-rows".parse(), Ok(Method::SelectRows));
        assert_eq!("baseline".parse(), Ok(Method::Baseline));
        assert_eq!("paper".parse(), Ok(Method::Paper));
        assert_eq!("paper-tensored".parse(), Ok(Method::PaperTensored));
        assert_eq!("capacity".parse(), Ok(Method::Capacity { factor: 1.25 }));
        assert_eq!("capacity:2".parse(), Ok(Method::Capacity { factor: 2.0 }));
        assert!("capacity:x".parse::<Method>().is_err() && "protocol-1".parse::<Method>().is_err());
        assert_eq!(Method::Capacity { factor: 1.5 }.to_string(), "capacity(1.5)");
    }

    /// ⌈c·k·n/E⌉ slots, at least one, at most n.
    #[test]
    fn capacity_is_the_fair_share_times_the_factor() {
        let m = Method::Capacity { factor: 1.25 };
        assert_eq!(m.capacity(&cfg(8, 2), 16), Some(5));
        assert_eq!(m.capacity(&cfg(64, 1), 16), Some(1));
        assert_eq!(Method::Capacity { factor: 100.0 }.capacity(&cfg(2, 1), 16), Some(16));
        assert_eq!(Method::SelectRows.capacity(&cfg(8, 2), 16), None);
        assert!(Method::Capacity { factor: 0.9 }.validate(&cfg(8, 1), 16).is_err());
        assert!(Method::Paper.validate(&cfg(2048, 1), 16).is_err());
        assert!(Method::SelectThenCompute.validate(&cfg(2048, 1), 16).unwrap_err().to_string().contains("1024"));
        assert!(m.validate(&cfg(8, 1), MAX_CAPACITY_TOKENS + 1).is_err());
    }

    #[test]
    fn configs_out_of_range_are_named() {
        let e = |c: MoeConfig| c.validate().unwrap_err().to_string();
        assert!(e(cfg(4, 5)).contains("top-5 of 4 experts"));
        assert!(e(cfg(0, 1)).contains("0 experts"));
        assert!(e(cfg(16, 9)).contains("top-9"));
        assert!(e(MoeConfig { routing: Routing::Switch, ..cfg(8, 2) }).contains("Switch routing takes top-1"));
        assert!(e(MoeConfig { d_ff: 0, ..cfg(8, 2) }).contains("zero width"));
        assert!(cfg(MAX_EXPERTS, 8).validate().is_ok());
    }
}
