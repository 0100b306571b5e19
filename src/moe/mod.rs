//! The Mixture-of-Experts FFN layer in 2PC: the router (an HE linear layer), secure top-k, the
//! routed experts evaluated without either party learning which, the gate-weighted sum, and
//! the shared expert.
//!
//! # The layer
//! [`moe_layer`] on n tokens X (shared, n×d): logits X·W_r at 2f fractional bits → [`route`]:
//! k rounds of secure argmax give XOR-shared one-hot vectors t_r (n×E) and shared gate weights
//! (Switch and Qwen2-MoE/OLMoE: softmax over all E picked by t_r; Mixtral and `norm_topk_prob`:
//! softmax over the k chosen logits; DeepSeek-V3, GLM-4.5, dots.llm1: σ scores ranked with the
//! server's selection bias added to its shares, the chosen scores picked by t_r and
//! renormalized by one reciprocal per token; ERNIE-4.5: the softmax over all experts ranked
//! the same way) → the routed experts by [`Method`] → y = Σ_r g_r·o_r → plus
//! the shared expert (Qwen2-MoE's sigmoid gate as softmax([z, 0])₀). gpt-oss's router adds
//! its own bias to the logits, on the server's share; its experts' biases ride in their
//! matrices (x·W + b = [x | 1]·[W; b]: each party appends its share of the public 1 to every
//! expert input, the server's bias rows are one more row of each matrix), so every method runs
//! them as they are, at one more input row per product. The server stores the
//! weights in 32 bits ([`MoeWeights`]) and streams the experts in chunks (64 MiB of first-matrix
//! results per party, 1 GiB of weights widened to the ring), so E = 1024 fits in memory.
//!
//! # Methods and their costs (per layer; N = 8192 the HE ring degree, g = 2 for gated experts)
//! Select-Then-Compute, as `../shared/DESIGN.md` §5 and the brief define it, selects the chosen
//! entry's *parameters* and computes that one entry: for an expert, its weights selected under
//! HE by the encrypted one-hot. [`Method::SelectThenCompute`] is that design, the one this
//! engine chose among those whose bytes stay flat in E (it and the paper's Protocol 1 as
//! written, its tensored form, and selecting outputs, all priced below); [`Method::SelectRows`]
//! selects only the activation's input (every expert's matrices computed) and is the default
//! for whole models, being the fastest on a CPU at today's checkpoints' expert counts.
//! - [`Method::SelectRows`] (built; named `select-then-compute` until 2026-12-06, the README's
//!   earlier figures under that name are this method's): every expert's first matrices on every token under
//!   HE (Cheetah products, batched over tokens: n·E·g·d·d_ff/N polynomial products), then the
//!   chosen expert's pre-activation *selected* by the one-hot (one correlated OT of a whole row
//!   per expert and direction, [`crate::proto::compare::mux_rows`]), the activation **once per
//!   chosen expert** (n·k·d_ff values), then W2 one of two ways, whichever the shapes say
//!   moves fewer bytes (public): *by rows*, every expert's W2 on those rows (n·k·E·d·d_ff/N
//!   products), the output selected again and the gates applied; or *by experts* (since
//!   2026-12-07), each hidden row weighed by its gate, scattered to its expert's input (X_i's
//!   row j is token j's row routed to i, zero if none: n·k·E·d_ff selected values) and
//!   Σ_i X_i·W2_i as one product of n rows — k times fewer rows, no outputs to select, the
//!   gates on d_ff values instead of d: narrow experts of which many are chosen
//!   (granite-3.1-1b-a400m's top-8 of 32 with d_ff = d/2: 322 → 212 MB and 14.1 → 8–11 s per
//!   layer at 16 tokens) go by experts, wide ones (Mixtral, the SPU shape) by rows. No
//!   ciphertext×ciphertext product. Bytes by rows: the HE results (n·E·g·d_ff + n·k·E·d
//!   values, packed; the pre-activations returned in 2f + 8 bits,
//!   [`crate::proto::linear::linear_in`], then truncated to f fractional bits where they
//!   stand: each party drops its shares' low f bits, local in the ring f bits smaller), the
//!   selections (2·ℓ bits per selected value: n·k·E·g·d_ff pre-activations in ℓ = f + 8 bits,
//!   the ring their precondition |x| < 64 needs, and n·k·E·d outputs, truncated the same way,
//!   in 64 − f), and the
//!   activation on n·k·d_ff values. By experts, the scatter moves the n·k·E·d_ff hidden values
//!   in f + 14 bits (|h| < 2^12, the gated product's own bound) and lifts their n·E·d_ff sums
//!   to Z_2^64 for the product. (Until 2026-12-07 the selections ran at 2f + 8 and 64 bits:
//!   granite's layer 215 → 176 MB, 169 MB with the
//!   gate products reading each gate in f + 3 bits.)
//! - [`Method::Capacity`] (built; CryptoMoE's dispatch): C = ⌈c·k·n/E⌉ slots per expert. A
//!   token's queue position at expert e is the prefix sum of the routing matrix (local on
//!   shares); its one-hot (size 2n, unrouted pairs pushed past every slot) gives the secret
//!   dispatch matrix D (E·C × n bits), made additive by one bit-to-arithmetic conversion per
//!   entry. The slots' inputs and gates are one product of two shared matrices, D·[X | G]
//!   (G[j, e] the gate of token j for expert e; slot (e, c) keeps column e), and the way back
//!   another, Dᵀ·Y ([`crate::proto::linear::matmul_shared`]: HE products with each party's
//!   share as the other factor, exact in Z_2^64): bytes of the order of their inputs and
//!   outputs, E·C·(d + E) + n·d values, where row multiplexers (until 2026-12-04) moved
//!   n·E·C rows of d each way — 783 → 329 MB and 25.8 → 16.6 s at 128 tokens, E = 8,
//!   d = 768, d_ff = 3072. Each expert runs its C slots with its plain weights (2·E HE
//!   products of C rows), the activation on E·C·d_ff = c·k·n·d_ff values. Server work no
//!   longer grows with E; the dispatch's bytes grow with n·E·C = c·k·n², not with E. Leaks the
//!   capacity C (public) and, to the client only, the number of dropped assignments; tokens
//!   beyond an expert's capacity lose that expert. Needs the session's keys for products of
//!   two shared matrices (`HeUse::Shared`), checked by both parties before anything moves.
//! - [`Method::Baseline`] (built; BumbleBee's way): every expert in full — the activation on
//!   n·E·d_ff values — then the outputs multiplexed (n·k·E·d values). The activation is what
//!   grows: ~215 bytes per GeLU value (silent OT) against 16 per selected value.
//! - [`Method::SelectThenCompute`] (built; the SecMoE paper's Protocol 1 with the order of its
//!   sums chosen per product, [`crate::he::selected`]; named `paper` until 2026-12-06): per
//!   (slot, token) row, the client sends its one-hot share in a compact ciphertext (up to 2^10
//!   selectors each, so several rows share one; kept by the server for both matrices) and its
//!   encrypted row; the server expands the selectors
//!   (2^⌈log2 E⌉ − 1 Galois key switches), selects the chosen expert's weight polynomials,
//!   \[\[W\]\] = Σ_i W_i·\[\[t_i\]\] (E·J·K ciphertext×plaintext products, J·K ≈ d·m/N), multiplies
//!   them by the row (J·K ciphertext×ciphertext products), switches each of the K results down
//!   to the lowest level that keeps the flooding margin (relinearized one prime above it: 3 of
//!   5 primes at the SPU shape, [`crate::he::selected::SelectedLayout::lowest_out_level`]),
//!   packs them there and returns them masked and flooded. Where E is small against K the
//!   server takes the same sums the other way round
//!   ([`crate::he::selected::SelectOrder::InputsFirst`], the client's layout choice, priced by
//!   [`crate::he::selected::SelectedLayout::choose`]): each
//!   selector times each input tile (E·J ciphertext products, relinearized), then one product
//!   of those by the stacked experts' weights (the same E·J·K products by plaintexts, on the
//!   products switched down to one prime above the out level: 4 of 5 limbs) — no selected
//!   weight is lifted to the product basis and no output tile is rounded: at the SPU shape 24
//!   ciphertext products per row and matrix instead of 144. It runs at N = 16384
//!   ([`crate::he::HeParams::select`]) with t = 2^74, what 64-bit results need above the
//!   deepest packing ([`crate::he::selected::product_params`]; the client encrypts its one-hot
//!   shares under 2^ℓ·t, so the expansion's factor 2^ℓ lands the selectors on t and costs the
//!   products nothing: [`crate::he::selected::ChoiceLayout`]): the ciphertext products' noise (≈ t·√N times
//!   the selection sum's) must stay 40 bits below the flooding, which N = 8192 (218 bits of q)
//!   cannot hold; each product runs at the fewest of q's six primes that hold its noise (the
//!   server's choice from its weights' bound, [`crate::he::selected::SelectedLayout::with_level`]:
//!   five at the SPU shape for the bench's experts, |w| < 2^-4: −14% bytes and −10 to −15% time
//!   against six).
//!   Bytes per row and matrix: J input ciphertexts (713 kB each at six primes, 479 kB at five
//!   with c0's low 56 bits rounded away, [`crate::he::selected::dropped_bits`]; J = ⌈d/d_w⌉ with
//!   d_w = 2^pack chosen by the client for its network: input bytes against products and
//!   packing) up, one packed result per 2^pack output tiles (≈ 210 kB) down, plus one choice
//!   ciphertext (713 kB) per 2^g rows, as many rows as keep the expansion within 2^10
//!   selectors (16 at E = 8, 8 at E = 128: [`crate::he::selected::ChoiceLayout`]) — **flat in
//!   E**; rounds: one per matrix and one for the selectors.
//!   Measured (16 tokens, d = 256, d_ff = 1024, WAN tuning, 2026-12-05): 51.7 MB and 6.2 s
//!   at E = 8, 54.2 MB (+4.9%, the routing) and 29.6 s at E = 128 (the baseline: 836.5 MB,
//!   30.9 s, 51.3 s under the WAN model; Select-Then-Compute 98.5 MB, 7.5 s); at the SPU shape
//!   (d = 768, d_ff = 3072, E = 8), inputs first (session 34, on a machine where the
//!   weights-first build took 27.5–28.4 s for 120.9 MB, 34.4–35.8 s for 75.0 MB tuned for
//!   100 Mbit/s): 81.1 MB in 19.8–20.6 s, or 72.4 MB in 23.7 s tuned for 20 Mbit/s (16.1×
//!   below SPU's bytes); session 35 (sums on fewer limbs, packings merged as tiles arrive, all
//!   16 rows in one batch): 81.1 MB in 16.1–16.8 s, or 63.8 MB in 23.1 s for 20 Mbit/s;
//!   session 36 (16 rows per choice ciphertext, products at t = 2^74): 69.4 MB at the same
//!   time (11.4 → 0.7 MB of choice), at d = 256: 40.8 MB at E = 8, 43.7 MB (+7.3%) at E = 128;
//!   session 37 (freed memory kept for reuse, rows four at a time): 69.4 MB in 14.7–15.1 s;
//!   session 38, under this name: 69.36 MB in 14.9–15.0 s, 1.83–1.85 GB; at d = 256, E = 8
//!   40.78 MB / 6.1 s, E = 128 43.74 MB (+7.3%) / 29.5 s against the baseline's 836.5 MB
//!   (19.1×) and a WAN estimate of 30.8 s against its 62.0 s; at d = 768, d_ff = 3072,
//!   E = 128 76.55 MB (+10.4%: the routing's 5.3 MB, and the chooser trading 23 MB for 1.4%
//!   of the server time under the WAN model; 53.58 MB, +2.4%, at `--tune 20`) in 273 s and
//!   9.75 GB; E = 256 (d = 256) 45.60 MB, 59.3 s, 6.75 GB; E = 1024 (d = 64, d_ff = 256)
//!   38.96 MB, 172.6 s, 6.42 GB. With the argmax's OTs in one silent batch (routing 4.25 →
//!   2.59 MB at E = 128): d = 768 69.35 → 74.89 MB (+8.0%) from E = 8 to 128, d = 256
//!   40.78 → 42.08 MB (+3.2%).
//!   Server work per row: E key switches for the expansion, once for all
//!   matrices (the selectors are kept, [`crate::he::selected::RowChoice`]); per row and matrix
//!   E·J·K products by weights (one batched multiply-accumulate per expert chunk for all rows),
//!   J·K ciphertext products summed into K results ([`crate::he::ProductSum`]: one rounding and
//!   one relinearization per output tile) or, inputs first, E·J rounded and relinearized,
//!   ~K + log2(d_w/K) key switches for packing — it grows with E, and is what a GPU is for.
//!   The selection keys (10 Galois keys and a relinearization key, 59 MB) are sent once per
//!   session.
//! - [`Method::Paper`] (built): Protocol 1 as written, the weights always selected first
//!   ([`crate::proto::selected::Choice::in_order`]); the same bytes wherever the chooser takes
//!   that order anyway (d = 256, d_ff = 1024: identical rows at E = 8 and 128), at the SPU
//!   shape 109.98 MB in 25.0–25.6 s and 1.73–2.58 GB (session 38): weights first pays a lift
//!   per J·K product and a rounding and relinearization per output tile, so the chooser takes
//!   fewer, larger output tiles and more input tiles (J = 6, K = 24 against inputs first's
//!   J = 3, K = 48) — the inputs-first order saves 37% of the bytes and 40% of the time.
//! - [`Method::PaperTensored`] (built): Protocol 1 with tensoring without relinearization — the
//!   client holds s², so each output tile's sum of products (d0, d1, d2) is returned as it is,
//!   re-randomized with a public key for s² the client sent at setup
//!   ([`crate::he::SquareKey`]; d2 = c1(W)·c1(x) would otherwise show it the selected weights'
//!   c1). It cannot be packed (merging needs two-part ciphertexts, or keys for σ(s²)), so a row
//!   returns K three-part results of 2·N·(log t + 23) bits (≈ 438 kB) instead of ⌈K/2^pack⌉
//!   two-part ones (≈ 200 kB), and the client's layout chooser moves to smaller tiles (more
//!   input ciphertexts, fewer outputs). The server saves K relinearizations and the packing key
//!   switches; bytes stay flat in E. Measured (16 tokens, d = 256, d_ff = 1024): with
//!   `--tune 20`, E = 8, 8.8 s and 163 MB against Protocol 1's 12.3 s and 45 MB; with the WAN
//!   tuning (Protocol 1 then takes larger tiles) 9.5 s / 163 MB against 9.5 s / 113 MB at
//!   E = 8 and 14.3 s / 164 MB against 14.1 s / 114 MB at E = 32. On this CPU it saves no time
//!   where Protocol 1 may spend bytes, so it is a measured alternative, not the default.
//! - Selecting *outputs* with the encrypted one-hot instead (every expert on the encrypted row,
//!   then Σ_i \[\[t_i\]\]·\[\[y_i\]\]) needs one ciphertext product per expert and output
//!   ciphertext (E·K per row, against J·K for Protocol 1), or a repacking of every sparse
//!   result first: more server work than Protocol 1 for E ≥ 2.
//!
//! A model's own `expert_capacity` (Switch) drops, in every method, the tokens beyond an
//! expert's capacity in token order, as `transformers` does: queue positions are prefix sums of
//! the secret routing matrix, each slot's own picked by its one-hot, \[position < capacity\] from
//! one sign test multiplies the gate (capacity dispatch simply takes at most that many slots).
//! Nothing about the drops is opened.
//!
//! When to pick which: Select-Then-Compute when bytes are what costs (a slow network, many
//! experts): flat in E, faster than the baseline under the WAN model at E = 128, its server
//! time the E-proportional selection sums a GPU takes; selecting rows when the network is
//! fast and E moderate — on this CPU 2.5–3× faster than Select-Then-Compute (6.1 against
//! 15.0 s at the SPU shape, 9.7 against 29.5 s at E = 128, d = 256, where it sends 98.5 MB
//! against 43.7), no token dropped, no selection keys (59 MB) to set up — hence the default
//! for whole models; capacity dispatch for many experts or large batches where dropping
//! overflow is acceptable (as in training-time Switch and GShard, and CryptoMoE); the baseline
//! only to measure against.
//!
//! Communication flat in E needs a degree-2 step on two client-side secrets (its share of the
//! one-hot and its share of the activations) under HE: Select-Then-Compute's ciphertext
//! products. Selecting rows trades that for bytes that grow with E at 16 bytes per selected
//! value, against the baseline's activation on every expert.
//!
//! # Why the server learns nothing about the routing
//! Every message either party receives is a function of its own inputs, public sizes and
//! values that are uniform to it: the client's RLWE ciphertexts in the HE products (the server
//! decrypts nothing), OT-extension traffic and correction strings under pads of random OTs it
//! does not choose (comparisons, one-hot lookups, [`crate::proto::compare::b2a`], the row
//! multiplexers, truncations, softmax, activations), and on the client's side results masked by
//! the server's uniform masks. In Select-Then-Compute and the paper's method the server also receives the client's
//! one-hot shares, encrypted; what it computes on them (expansion, selection, products) it
//! never decrypts, and every result it returns is masked and flooded. The sequence and sizes of the messages are fixed by (config, n,
//! method) alone: k argmax rounds of ⌈log2 E⌉ levels, every expert chunk's product, one row
//! selection per (token, slot, expert) whichever expert was chosen; no branch reads a shared
//! value. Hence the server's view can be simulated from the public sizes, for any routing
//! (tested: the frames the server receives for two inputs that route differently are
//! identical in number, order and length). Capacity dispatch adds one message: the server's
//! share of the filled-slot count, sent to the client.

mod config;
mod layer;
mod reference;
mod route;
mod weights;

pub use config::{
    ExpertKind, GroupLimit, MAX_CAPACITY_TOKENS, MAX_EXPERTS, MAX_SELECTED_EXPERTS, MAX_TOP_K, Method, MoeConfig,
    Routing, SharedExpert,
};
pub use layer::{MoeOutput, PRE_ACTIVATION_BOUND, ROUTER_LOGIT_BOUND, dense_expert, moe_layer};
pub use reference::{Reference, reference, top_k};
pub use route::{MIN_SCORE_SUM, Routes, SELECTION_BIAS_BOUND, route};
pub use weights::{ExpertWeights, MoeWeights, SharedWeights, narrow, widen};

use thiserror::Error;

use crate::proto::ProtoError;

/// Errors of the MoE layer.
#[derive(Debug, Error)]
pub enum MoeError {
    /// The layer's configuration is inconsistent or unsupported.
    #[error("MoE config: {0}")]
    Config(String),
    /// A weight tensor has the wrong size.
    #[error("MoE weights: {tensor} should be {expected}, has {values} values")]
    Shape {
        /// The tensor's name (`experts.3.w2`).
        tensor: String,
        /// Its expected shape.
        expected: String,
        /// How many values it has.
        values: usize,
    },
    /// This party's own input does not fit the config.
    #[error("MoE input: {0}")]
    Input(String),
    /// The peer runs a different layer.
    #[error("the peer's MoE layer differs: ours `{ours}`, theirs `{theirs}`")]
    Mismatch {
        /// This party's statement.
        ours: String,
        /// The peer's.
        theirs: String,
    },
    /// The peer refused the layer, with its reason.
    #[error("the peer refused the MoE layer: {0}")]
    PeerRefused(String),
    /// A protocol step failed.
    #[error(transparent)]
    Proto(#[from] ProtoError),
}

/// Result alias of the MoE layer.
pub type MoeResult<T> = Result<T, MoeError>;
