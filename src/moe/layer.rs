//! The MoE layer's driver: agreement, router, routing, the routed experts by the chosen
//! [`Method`], the gate-weighted sum and the shared expert.

use std::ops::Range;

use super::route::{Routes, drop_overflow, queue, route, select_rows};
use super::weights::{ExpertWeights, widen};
use super::{ExpertKind, Method, MoeConfig, MoeError, MoeResult, MoeWeights};
use crate::he::selected::SelectOrder;
use crate::he::tiling::MatShape;
use crate::proto::agree::exchange;
use crate::proto::arith::{mul_rows_in, truncate_extend, truncate_within};
use crate::proto::compare::{b2a, one_hot};
use crate::proto::linear::{check_shared_product, linear, linear_in, matmul_shared};
use crate::proto::piecewise::{evaluate, gated, relu};
use crate::proto::selected::{selected_linear, send_choice};
use crate::proto::softmax::softmax;
use crate::proto::{HeKeys, HeUse, OutOfRange, ProtoError, ProtoResult, Session};
use crate::ring::{Bits, Shares, Weights};

/// The router logits' range, a precondition: |l| < ROUTER_LOGIT_BOUND.
pub const ROUTER_LOGIT_BOUND: f64 = 64.0;
/// The experts' pre-activations' range, a precondition: |x·W1|, |x·W3| < PRE_ACTIVATION_BOUND
/// (the ring of 2f + 8 bits they are selected in), and within the activation's input range.
pub const PRE_ACTIVATION_BOUND: f64 = 64.0;

/// Values of one expert chunk's first-matrix results held at once (64 MiB per party): experts
/// are streamed in chunks of this size, so memory does not grow with E.
const CHUNK_VALUES: usize = 8 << 20;

/// One MoE layer on `n` tokens: each party's shares of X (n×d, the session's fixed point) in,
/// its shares of the layer's output (n×d) out. The server passes the weights, the client
/// `None`; both pass the same `cfg` and `method`, checked before anything secret moves.
/// Preconditions on the values (the protocols cannot check them): router logits |l| < 64,
/// expert pre-activations within the activation's input range (|x| < 63) and |W3 branch| < 64.
#[tracing::instrument(level = "debug", skip_all, fields(cfg = %cfg, method = method.name()))]
pub async fn moe_layer(
    sess: &mut Session,
    cfg: &MoeConfig,
    method: Method,
    x: &Shares,
    weights: Option<&MoeWeights>,
) -> MoeResult<MoeOutput> {
    sess.check_format(x, "MoE layer input")?;
    let shares = x;
    let x = x.as_slice();
    let meter = sess.meter().clone();
    let _layer = meter.scope("moe");
    let n = {
        let _s = meter.scope("agree");
        agree(sess, cfg, method, x.len(), weights).await?
    };
    let d = cfg.d_model;
    let logits = {
        let _s = meter.scope("router");
        let router = weights.map(|w| widen(&w.router));
        let router = router
            .as_deref()
            .map(|values| Weights::new((d, cfg.experts), values))
            .transpose()
            .map_err(ProtoError::from)?;
        let logits = linear(sess, MatShape { n, d, m: cfg.experts }, shares, router).await?;
        match weights.and_then(|w| w.logit_bias.as_deref()) {
            // the server's bias on its own shares, at the logits' 2f fractional bits
            Some(b) => {
                let f = sess.format().frac_bits();
                let mut l = logits.as_slice().to_vec();
                for row in l.chunks_exact_mut(cfg.experts) {
                    row.iter_mut().zip(b).for_each(|(l, &b)| *l = l.wrapping_add((b as i64 as u64) << f));
                }
                logits.with_values(l).map_err(ProtoError::from)?
            }
            None => logits,
        }
    };
    let routes = {
        let _s = meter.scope("route");
        let bias = weights.and_then(|w| w.selection_bias.as_deref());
        let mut routes = route(sess, cfg, &logits, bias).await?;
        // the capacity method drops on its own; the others zero the dropped gates
        if let (None, Some(c)) = (method.capacity(cfg, n), cfg.overflow_capacity(n)) {
            drop_overflow(sess, &mut routes, n, cfg.experts, c).await?;
        }
        routes
    };
    let (mut y, dropped) = match method.capacity(cfg, n) {
        Some(slots) => {
            let _s = meter.scope("experts");
            capacity(sess, cfg, x, n, slots, &routes, weights).await?
        }
        // selecting rows weighs the hidden rows by their gates and sums inside
        None if !matches!(
            method,
            Method::Baseline | Method::SelectThenCompute | Method::Paper | Method::PaperTensored
        ) =>
        {
            let _s = meter.scope("experts");
            (selected_rows(sess, cfg, x, n, &routes, weights).await?, None)
        }
        None => {
            let outputs = {
                let _s = meter.scope("experts");
                match method {
                    Method::Baseline => baseline(sess, cfg, x, n, &routes, weights).await?,
                    Method::SelectThenCompute => selected_weights(sess, cfg, x, n, &routes, weights, None).await?,
                    _ => {
                        let order = Some(SelectOrder::WeightsFirst);
                        selected_weights(sess, cfg, x, n, &routes, weights, order).await?
                    }
                }
            };
            let _s = meter.scope("combine");
            let y = if gate_weighted(cfg, n) { combine(sess, &outputs, &routes.gates, n, d).await? } else { outputs };
            (y, None)
        }
    };
    if cfg.shared.is_some() {
        let _s = meter.scope("shared");
        let s = shared_expert(sess, cfg, x, n, weights).await?;
        y.iter_mut().zip(s).for_each(|(y, s)| *y = y.wrapping_add(s));
    }
    Ok(MoeOutput { y: sess.shares((n, d), y)?, dropped })
}

/// A party's result of [`moe_layer`].
#[derive(Debug, Clone)]
pub struct MoeOutput {
    /// This party's shares of the layer's output (n×d).
    pub y: Shares,
    /// Capacity dispatch, client only: the (token, expert) assignments dropped for want of a
    /// slot (the server learns nothing of it).
    pub dropped: Option<usize>,
}

/// Checks this party's side (config, input, keys, weights), tells the peer its statement — the
/// config, the token count and the method, or why it refuses — and compares: both parties fail
/// with the reason before any share or ciphertext moves. Returns n.
async fn agree(
    sess: &mut Session,
    cfg: &MoeConfig,
    method: Method,
    x_len: usize,
    weights: Option<&MoeWeights>,
) -> MoeResult<usize> {
    let server = sess.is_server();
    let local = (|| {
        cfg.validate()?;
        if x_len == 0 || !x_len.is_multiple_of(cfg.d_model) {
            return Err(MoeError::Input(format!("{x_len} input values are not tokens of d = {}", cfg.d_model)));
        }
        method.validate(cfg, x_len / cfg.d_model)?;
        if !sess.has_he() {
            return Err(MoeError::Input("the layer needs the session's HE keys (Session::setup_he) first".into()));
        }
        let n = x_len / cfg.d_model;
        if let Some(slots) = method.capacity(cfg, n) {
            for shape in dispatch_shapes(cfg, n, slots) {
                check_shared_product(sess, shape)?;
            }
        }
        if let Some(keys) = method.selection_keys() {
            let set = sess.he_for(HeUse::Select).map(HeKeys::key_set);
            if set != Some(keys) {
                return Err(MoeError::Input(format!(
                    "the method {method} needs the session's selection keys with {keys:?} (Session::setup_he_for(HeUse::Select, HeParams::select(), KeySet::{keys:?})), the session has {set:?}"
                )));
            }
        }
        match (server, weights) {
            (true, Some(w)) => w.check(cfg, sess.format())?,
            (true, None) => return Err(MoeError::Input("the server must pass the weights".into())),
            (false, Some(_)) => return Err(MoeError::Input("the client holds no weights".into())),
            (false, None) => {}
        }
        Ok(n)
    })();
    let statement = match &local {
        Ok(n) => Ok(format!("moe {} n={n} method={method}", cfg.canonical())),
        Err(e) => Err(e.to_string()),
    };
    let theirs = exchange(sess, &statement).await;
    let n = local?;
    let theirs = match theirs {
        Err(ProtoError::Refused(reason)) => return Err(MoeError::PeerRefused(reason)),
        other => other?,
    };
    let ours = statement.unwrap_or_default();
    if theirs != ours {
        return Err(MoeError::Mismatch { ours, theirs });
    }
    Ok(n)
}

/// Weights of one chunk's experts widened to ring elements at once (1 GiB): bounds the
/// server's memory when few tokens make the results small.
const CHUNK_WEIGHTS: usize = 128 << 20;

/// Experts per chunk so that a chunk's first-matrix results stay within [`CHUNK_VALUES`] and
/// its widened weights within [`CHUNK_WEIGHTS`].
fn chunks(cfg: &MoeConfig, n: usize) -> Vec<Range<usize>> {
    let width = first_width(cfg.expert, cfg.d_ff);
    let per = (CHUNK_VALUES / (n * width).max(1)).min(CHUNK_WEIGHTS / (cfg.d_model * width).max(1));
    let per = per.clamp(1, cfg.experts);
    (0..cfg.experts).step_by(per).map(|s| s..(s + per).min(cfg.experts)).collect()
}

/// The server's matrices of the experts `experts` side by side, d×(c·g·d_ff): row a holds, per
/// expert, W1[a, :] then (gated kinds) W3[a, :].
fn stack_first(experts: &[ExpertWeights], d: usize, d_ff: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(experts.len() * 2 * d * d_ff);
    for a in 0..d {
        for x in experts {
            out.extend(x.w1[a * d_ff..(a + 1) * d_ff].iter().map(|&v| v as i64 as u64));
            if let Some(w3) = &x.w3 {
                out.extend(w3[a * d_ff..(a + 1) * d_ff].iter().map(|&v| v as i64 as u64));
            }
        }
    }
    out
}

/// The server's W2 of the experts side by side, d_ff×(c·d): H·that holds every expert's output.
fn second_side_by_side(experts: &[ExpertWeights], d_ff: usize, d: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(experts.len() * d_ff * d);
    for a in 0..d_ff {
        for x in experts {
            out.extend(x.w2[a * d..(a + 1) * d].iter().map(|&v| v as i64 as u64));
        }
    }
    out
}

/// The server's W2 of the experts stacked, (c·d_ff)×d: [X_1 … X_c]·that = Σ_i X_i·W2_i.
fn second_stacked(experts: &[ExpertWeights]) -> Vec<u64> {
    experts.iter().flat_map(|x| x.w2.iter().map(|&v| v as i64 as u64)).collect()
}

/// Whether the routed outputs are weighed by their gates (all but top-1 routings whose gate is
/// 1 and drops nothing).
fn gate_weighted(cfg: &MoeConfig, n: usize) -> bool {
    !(cfg.unit_gate() && cfg.overflow_capacity(n).is_none())
}

/// Values per row of an expert's first-matrix results: d_ff, twice for gated kinds.
fn first_width(kind: ExpertKind, d_ff: usize) -> usize {
    d_ff * if kind.gated() { 2 } else { 1 }
}

/// Rows of `width` with the public 1 appended, when the experts have biases
/// (x·W + b = [x | 1]·[W; b]): the server's share holds 1 at f fractional bits, the client's 0.
fn expert_input(sess: &Session, cfg: &MoeConfig, rows: Vec<u64>, width: usize) -> Vec<u64> {
    if !cfg.expert_bias {
        return rows;
    }
    let one = if sess.is_server() { 1u64 << sess.format().frac_bits() } else { 0 };
    rows.chunks_exact(width).flat_map(|r| r.iter().copied().chain([one])).collect()
}

/// The first matrices of the routed experts `experts` on the n rows of X: n rows of
/// c·[`first_width`] values at 2f fractional bits (per expert: W1's then W3's results), shared
/// in the ring of the pre-activations ([`pre_activation_bits`]).
async fn first_matrices(
    sess: &mut Session,
    cfg: &MoeConfig,
    x: &[u64],
    n: usize,
    experts: &Range<usize>,
    weights: Option<&MoeWeights>,
) -> ProtoResult<Vec<u64>> {
    let meter = sess.meter().clone();
    let _s = meter.scope("first");
    let ((d_in, _), width) = (cfg.expert_inputs(), first_width(cfg.expert, cfg.d_ff));
    let x = expert_input(sess, cfg, x.to_vec(), cfg.d_model);
    let w = weights.map(|w| stack_first(&w.experts[experts.clone()], d_in, cfg.d_ff));
    let bits = pre_activation_bits(sess);
    product(sess, MatShape { n, d: d_in, m: experts.len() * width }, &x, w.as_deref(), bits).await
}

/// Adds to slot r's rows of `out` (slot-major, n rows of `len` each) the rows of `values`
/// (n tokens × the c experts of `experts`, `len` each) that slot r's one-hot selects.
async fn select_into(
    sess: &mut Session,
    routes: &Routes,
    experts: &Range<usize>,
    (values, width): (&[u64], u32),
    len: usize,
    out: &mut [u64],
) -> ProtoResult<()> {
    let meter = sess.meter().clone();
    let _s = meter.scope("select");
    let n = values.len() / (experts.len() * len);
    let e = routes.one_hot[0].len() / n;
    for (r, slot) in out.chunks_exact_mut(n * len).enumerate() {
        let picked = select_rows(sess, &slot_bits(routes, r, n, e, experts), values, len, width).await?;
        add_groups(slot, &picked, experts.len(), len);
    }
    Ok(())
}

/// One HE linear layer with the server's `values` (d×m), 2f fractional bits out, shared mod
/// 2^`bits`.
async fn product(
    sess: &mut Session,
    shape: MatShape,
    x: &[u64],
    values: Option<&[u64]>,
    bits: u32,
) -> ProtoResult<Vec<u64>> {
    let x = sess.shares((shape.n, shape.d), x.to_vec())?;
    let w = values.map(|values| Weights::new((shape.d, shape.m), values)).transpose()?;
    Ok(linear_in(sess, shape, &x, w, bits).await?.into_vec())
}

/// The one-hot bits of slot `r` for tokens × experts in `experts` (token-major).
fn slot_bits(routes: &Routes, r: usize, n: usize, e: usize, experts: &Range<usize>) -> Vec<bool> {
    (0..n).flat_map(|j| experts.clone().map(move |i| routes.one_hot[r][j * e + i])).collect()
}

/// Adds Σ_i over each group of `per` rows (of `len` values) of `rows` into `acc` (one row per
/// group).
fn add_groups(acc: &mut [u64], rows: &[u64], per: usize, len: usize) {
    for (a, group) in acc.chunks_exact_mut(len).zip(rows.chunks_exact(per * len)) {
        for row in group.chunks_exact(len) {
            a.iter_mut().zip(row).for_each(|(a, v)| *a = a.wrapping_add(*v));
        }
    }
}

/// Ring of the selected pre-activations (at 2f fractional bits): 2f + 8 bits hold |x| < 64, the
/// layer's precondition, so the selection's corrections and the truncation's OT carry 2f + 8 bits
/// instead of 64 (the bits above are never read). A session that saturates out-of-range
/// activations keeps the full ring, so that values beyond the range reach the activation intact.
fn pre_activation_bits(sess: &Session) -> u32 {
    match sess.out_of_range() {
        OutOfRange::Precondition => 2 * sess.format().frac_bits() + 8,
        OutOfRange::Saturate => 64,
    }
}

/// Ring the experts' hidden values (f fractional bits) are selected in: |h| < 2^12 (a gated
/// product's bound, [`gated`]; GeLU and the clamped gate stay below 64), unless the session
/// saturates out-of-range inputs (GeLU's tail is x itself): then all of Z_2^64.
fn hidden_bits(sess: &Session) -> u32 {
    match sess.out_of_range() {
        OutOfRange::Precondition => sess.format().frac_bits() + 14,
        OutOfRange::Saturate => 64,
    }
}

/// The expert's activation on rows of pre-activations at f fractional bits (gated kinds: each
/// row holds the gate's d_ff values, then the linear branch's).
async fn activate(sess: &mut Session, kind: ExpertKind, pre: &[u64], d_ff: usize) -> ProtoResult<Vec<u64>> {
    let frac = sess.format().frac_bits();
    let y = match (kind.activation(), kind.gated()) {
        (None, _) => relu(sess, &sess.shares((1, pre.len()), pre.to_vec())?, frac + 8).await?,
        (Some(f), false) => evaluate(sess, &f, &sess.shares((1, pre.len()), pre.to_vec())?).await?,
        (Some(f), true) => {
            let (gate, up): (Vec<&[u64]>, Vec<&[u64]>) =
                pre.chunks_exact(2 * d_ff).map(|row| row.split_at(d_ff)).unzip();
            let rows = gate.len();
            let (gate, mut up) = (sess.shares((rows, d_ff), gate.concat())?, sess.shares((rows, d_ff), up.concat())?);
            if let Some(u) = kind.up_branch() {
                up = evaluate(sess, &u, &up).await?;
            }
            gated(sess, &f, &gate, &up).await?
        }
    };
    Ok(y.into_vec())
}

/// Rows selected (module notes): returns the gate-weighted sum of the chosen experts' outputs,
/// n rows of d at f fractional bits.
async fn selected_rows(
    sess: &mut Session,
    cfg: &MoeConfig,
    x: &[u64],
    n: usize,
    routes: &Routes,
    weights: Option<&MoeWeights>,
) -> MoeResult<Vec<u64>> {
    let (k, d_ff) = (cfg.top_k, cfg.d_ff);
    let width = first_width(cfg.expert, d_ff);
    let meter = sess.meter().clone();
    // 1. every expert's first matrices, each slot's row selected by its one-hot: the products'
    //    2f fractional bits truncated to f where they stand (each party drops its shares' low f
    //    bits: local within the ring f bits smaller), so the selection moves f fewer bits per
    //    value, in the ring the activation's precondition needs
    let frac = sess.format().frac_bits();
    let pre_bits = pre_activation_bits(sess);
    let selected_bits = pre_bits - frac;
    let mut pre = vec![0u64; k * n * width];
    for experts in chunks(cfg, n) {
        let z = first_matrices(sess, cfg, x, n, &experts, weights).await?;
        let z = truncate_within(&z, pre_bits, frac);
        select_into(sess, routes, &experts, (&z, selected_bits), width, &mut pre).await?;
    }
    // 2. the activation once per chosen expert
    let hidden = {
        let _s = meter.scope("activation");
        let pre = truncate_extend(sess, &pre, selected_bits, 0).await?;
        activate(sess, cfg.expert, &pre, d_ff).await?
    };
    // 3. W2 on the chosen rows, the way that moves fewer bytes
    if scatter_hidden(cfg, n, hidden_bits(sess)) {
        second_by_experts(sess, cfg, hidden, n, routes, weights).await
    } else {
        second_by_rows(sess, cfg, &hidden, n, routes, weights).await
    }
}

/// Which way [`selected_rows`] applies W2 (public: from the shapes alone): by experts (the
/// hidden rows gated, scattered to their experts' inputs in a `hidden_bits` ring and lifted,
/// one product of n rows) when that moves fewer bytes than by rows (every expert's W2 on the
/// k·n hidden rows, the outputs selected, then gated). Bytes per value, measured (silent OT,
/// WAN tilings): a row multiplexer 2·ℓ bits, a lift ≈ 5, an HE product's input ≈ 130 and packed
/// output ≈ 30, a gate product ≈ 300 on an output (64 bits), ≈ 225 on a hidden value (2f + 14
/// bits; each gate read in f + 3 bits, [`gate_scalar_bits`]). By experts wins where experts are narrow and many are
/// chosen: granite-3.1-1b-a400m (d_ff = d/2, top-8 of 32) 322 → 212 MB per layer (before the
/// scatter's narrower ring); by rows where they are wide (Mixtral's d_ff = 3.5·d, top-2; the SPU
/// shape's 4·d, top-1).
fn scatter_hidden(cfg: &MoeConfig, n: usize, hidden_bits: u32) -> bool {
    let (k, e, d, d_ff) = (cfg.top_k as f64, cfg.experts as f64, cfg.d_model as f64, cfg.d_ff as f64);
    let (output_gate, hidden_gate) = if gate_weighted(cfg, n) { (300.0, 225.0) } else { (0.0, 0.0) };
    let n = n as f64;
    let scatter = f64::from(hidden_bits) / 4.0;
    let by_rows = k * n * e * d * (16.0 + 30.0) + k * n * d_ff * 130.0 + k * n * d * output_gate;
    let by_experts =
        k * n * e * d_ff * scatter + n * e * d_ff * (130.0 + 5.0) + n * d * 30.0 + k * n * d_ff * hidden_gate;
    by_experts < by_rows
}

/// W2 by experts: each hidden row (k·n, slot-major) weighed by its gate — W2 is linear,
/// g·(h·W2) = (g·h)·W2 — then scattered to the experts' inputs (X_i's row j is token j's row
/// routed to expert i, of whichever slot, zero if none), and Σ_i X_i·W2_i as one HE product of
/// n rows, already summed over slots and experts. Returns n rows of d at f fractional bits.
async fn second_by_experts(
    sess: &mut Session,
    cfg: &MoeConfig,
    hidden: Vec<u64>,
    n: usize,
    routes: &Routes,
    weights: Option<&MoeWeights>,
) -> MoeResult<Vec<u64>> {
    let (e, k, d, (_, d_ff)) = (cfg.experts, cfg.top_k, cfg.d_model, cfg.expert_inputs());
    let meter = sess.meter().clone();
    let frac = sess.format().frac_bits();
    let hidden = expert_input(sess, cfg, hidden, cfg.d_ff);
    let hidden = if gate_weighted(cfg, n) {
        let _s = meter.scope("gate");
        let bits = gate_bits(frac);
        let weighted = mul_rows_in(sess, &hidden, &routes.gates, gate_scalar_bits(frac), bits).await?;
        truncate_extend(sess, &weighted, bits, frac).await?
    } else {
        hidden
    };
    // the scatter moves the hidden values in the ring their bound needs, lifted after the sum
    let hidden_bits = hidden_bits(sess);
    let mut y = vec![0u64; n * d];
    for experts in chunks(cfg, n) {
        let c = experts.len();
        let x = {
            let _s = meter.scope("select");
            let bits: Vec<bool> = (0..k).flat_map(|r| slot_bits(routes, r, n, e, &experts)).collect();
            // row (r, j, i): slot r's row of token j, once per expert i of the chunk
            let rows: Vec<u64> =
                hidden.chunks_exact(d_ff).flat_map(|row| (0..c).flat_map(move |_| row.iter().copied())).collect();
            let picked = select_rows(sess, &bits, &rows, d_ff, hidden_bits).await?;
            let mut x = vec![0u64; n * c * d_ff];
            for slot in picked.chunks_exact(n * c * d_ff) {
                x.iter_mut().zip(slot).for_each(|(a, v)| *a = a.wrapping_add(*v));
            }
            // at most one slot of a token routes to an expert: each sum is one hidden value
            truncate_extend(sess, &x, hidden_bits, 0).await?
        };
        let w = weights.map(|w| second_stacked(&w.experts[experts.clone()]));
        let _s = meter.scope("second");
        let part = product(sess, MatShape { n, d: c * d_ff, m: d }, &x, w.as_deref(), 64).await?;
        y.iter_mut().zip(part).for_each(|(y, v)| *y = y.wrapping_add(v));
    }
    Ok(truncate_extend(sess, &y, 64, frac).await?)
}

/// W2 by rows: every expert's W2 on the k·n hidden rows, each row's own expert's output
/// selected (truncated to f fractional bits where it stands, [`truncate_within`], so in
/// 64 − f bits), then the gate-weighted sum over slots. Returns n rows of d at f fractional bits.
async fn second_by_rows(
    sess: &mut Session,
    cfg: &MoeConfig,
    hidden: &[u64],
    n: usize,
    routes: &Routes,
    weights: Option<&MoeWeights>,
) -> MoeResult<Vec<u64>> {
    let (e, k, d, (_, d_ff)) = (cfg.experts, cfg.top_k, cfg.d_model, cfg.expert_inputs());
    let meter = sess.meter().clone();
    let frac = sess.format().frac_bits();
    let hidden = &expert_input(sess, cfg, hidden.to_vec(), cfg.d_ff);
    let mut out = vec![0u64; k * n * d];
    for experts in chunks(cfg, n) {
        let c = experts.len();
        let w = weights.map(|w| second_side_by_side(&w.experts[experts.clone()], d_ff, d));
        let u = {
            let _s = meter.scope("second");
            product(sess, MatShape { n: k * n, d: d_ff, m: c * d }, hidden, w.as_deref(), 64).await?
        };
        let _s = meter.scope("select");
        let bits: Vec<bool> = (0..k).flat_map(|r| slot_bits(routes, r, n, e, &experts)).collect();
        let picked = select_rows(sess, &bits, &truncate_within(&u, 64, frac), d, 64 - frac).await?;
        add_groups(&mut out, &picked, c, d);
    }
    let out = truncate_extend(sess, &out, 64 - frac, 0).await?;
    let _s = meter.scope("combine");
    if gate_weighted(cfg, n) { Ok(combine(sess, &out, &routes.gates, n, d).await?) } else { Ok(out) }
}

/// Select-Then-Compute and the paper's Protocol 1 (module notes): each (slot, token) row's
/// expert selected under HE by its encrypted one-hot and multiplied by the encrypted row, for
/// the first matrices and for W2, every product in `order` if given (else the client's pick);
/// returns the chosen experts' outputs, n·k rows of d at f fractional bits, slot-major.
async fn selected_weights(
    sess: &mut Session,
    cfg: &MoeConfig,
    x: &[u64],
    n: usize,
    routes: &Routes,
    weights: Option<&MoeWeights>,
    order: Option<SelectOrder>,
) -> MoeResult<Vec<u64>> {
    let (e, k, d, d_ff) = (cfg.experts, cfg.top_k, cfg.d_model, cfg.d_ff);
    let frac = sess.format().frac_bits();
    let meter = sess.meter().clone();
    let rows = k * n;
    let choice = {
        let _s = meter.scope("choice");
        let bits: Vec<bool> = (0..k).flat_map(|r| slot_bits(routes, r, n, e, &(0..e))).collect();
        let choice = send_choice(sess, &bits, rows, e).await?;
        match order {
            Some(order) => choice.in_order(order),
            None => choice,
        }
    };
    let (d_in, d_ff_in) = cfg.expert_inputs();
    let xs = expert_input(sess, cfg, (0..k).flat_map(|_| x.iter().copied()).collect(), d);
    let width = first_width(cfg.expert, d_ff);
    let pre = {
        let _s = meter.scope("first");
        let first: Option<Vec<Vec<u64>>> =
            weights.map(|w| w.experts.iter().map(|x| stack_first(std::slice::from_ref(x), d_in, d_ff)).collect());
        let args = first.as_deref().map(|m| matrices(m, (d_in, width))).transpose()?;
        let xs = sess.shares((choice.rows(), d_in), xs)?;
        selected_linear(sess, &choice, width, &xs, args.as_deref(), pre_activation_bits(sess)).await?.into_vec()
    };
    let hidden = {
        let _s = meter.scope("activation");
        let pre = truncate_extend(sess, &pre, pre_activation_bits(sess), frac).await?;
        activate(sess, cfg.expert, &pre, d_ff).await?
    };
    let out = {
        let _s = meter.scope("second");
        let second: Option<Vec<Vec<u64>>> = weights.map(|w| w.experts.iter().map(|x| widen(&x.w2)).collect());
        let args = second.as_deref().map(|m| matrices(m, (d_ff_in, d))).transpose()?;
        let hidden = sess.shares((choice.rows(), d_ff_in), expert_input(sess, cfg, hidden, d_ff))?;
        selected_linear(sess, &choice, d, &hidden, args.as_deref(), 64).await?.into_vec()
    };
    Ok(truncate_extend(sess, &out, 64, frac).await?)
}

/// Each expert's `shape` matrix as weights.
fn matrices(m: &[Vec<u64>], shape: (usize, usize)) -> ProtoResult<Vec<Weights<'_>>> {
    Ok(m.iter().map(|w| Weights::new(shape, w)).collect::<Result<_, _>>()?)
}

/// The baseline: every expert in full on every token, then the chosen outputs multiplexed.
async fn baseline(
    sess: &mut Session,
    cfg: &MoeConfig,
    x: &[u64],
    n: usize,
    routes: &Routes,
    weights: Option<&MoeWeights>,
) -> MoeResult<Vec<u64>> {
    let (k, d, d_ff) = (cfg.top_k, cfg.d_model, cfg.d_ff);
    let frac = sess.format().frac_bits();
    let meter = sess.meter().clone();
    let mut out = vec![0u64; k * n * d];
    for experts in chunks(cfg, n) {
        let c = experts.len();
        let z = first_matrices(sess, cfg, x, n, &experts, weights).await?;
        let hidden = {
            let _s = meter.scope("activation");
            let z = truncate_extend(sess, &z, pre_activation_bits(sess), frac).await?;
            activate(sess, cfg.expert, &z, d_ff).await?
        };
        // each expert's W2 on its own hidden rows: u holds n rows of c·d
        let mut u = vec![0u64; n * c * d];
        let second = meter.scope("second");
        for (slot, i) in experts.clone().enumerate() {
            let rows: Vec<u64> = (0..n).flat_map(|j| hidden[(j * c + slot) * d_ff..][..d_ff].to_vec()).collect();
            let rows = expert_input(sess, cfg, rows, d_ff);
            let w2 = weights.map(|w| widen(&w.experts[i].w2));
            let w2 = w2.as_deref();
            let y = product(sess, MatShape { n, d: cfg.expert_inputs().1, m: d }, &rows, w2, 64).await?;
            for j in 0..n {
                u[(j * c + slot) * d..][..d].copy_from_slice(&y[j * d..][..d]);
            }
        }
        drop(second);
        select_into(sess, routes, &experts, (&truncate_within(&u, 64, frac), 64 - frac), d, &mut out).await?;
    }
    Ok(truncate_extend(sess, &out, 64 - frac, 0).await?)
}

/// Capacity dispatch (module notes): returns the gated, combined output (n×d at f bits) and,
/// on the client, the number of dropped (token, expert) assignments.
async fn capacity(
    sess: &mut Session,
    cfg: &MoeConfig,
    x: &[u64],
    n: usize,
    slots: usize,
    routes: &Routes,
    weights: Option<&MoeWeights>,
) -> MoeResult<(Vec<u64>, Option<usize>)> {
    let (e, d, d_ff) = (cfg.experts, cfg.d_model, cfg.d_ff);
    let frac = sess.format().frac_bits();
    let server = sess.is_server();
    let meter = sess.meter().clone();
    let dispatch_scope = meter.scope("dispatch");
    // queue positions; unrouted pairs pushed to n + p, past every slot
    let (t, position) = queue(sess, routes, n, e).await?;
    let index: Vec<u64> = position
        .iter()
        .zip(&t)
        .map(|(&p, &t)| {
            let own = if server {
                (n as u64).wrapping_mul(1u64.wrapping_sub(t))
            } else {
                (n as u64).wrapping_mul(t.wrapping_neg())
            };
            p.wrapping_add(own)
        })
        .collect();
    let positions: Vec<Vec<bool>> = one_hot(sess, &Shares::vector(index, 0).map_err(ProtoError::from)?, 2 * n)
        .await?
        .iter()
        .map(Bits::to_bools)
        .collect();
    // D[(e, c), j] = [token j holds slot c of expert e], XOR-shared, then additively
    let dispatch_bits: Vec<bool> =
        (0..e * slots * n).map(|i| positions[(i % n) * e + i / (slots * n)][(i / n) % slots]).collect();
    let dispatch = b2a(sess, &Bits::from_bools(&dispatch_bits)).await?.into_vec();
    // G[j, e] = Σ_r t_r[j, e]·g_r[j]: each token's gate for every expert (zero where unrouted)
    let mut gate = vec![0u64; n * e];
    for (r, bits) in routes.one_hot.iter().enumerate() {
        let g: Vec<u64> = (0..n * e).map(|i| routes.gates[r * n + i / e]).collect();
        let picked = select_rows(sess, bits, &g, 1, 64).await?;
        gate.iter_mut().zip(picked).for_each(|(a, v)| *a = a.wrapping_add(v));
    }
    // the slots' inputs and gates at once, D·[X | G] (E·C × (d + E)): slot (e, c) takes its own
    // expert's gate, column d + e
    let [into, back] = dispatch_shapes(cfg, n, slots);
    let d_matrix = Shares::matrix((e * slots, n), dispatch.clone(), 0).map_err(ProtoError::from)?;
    let xg: Vec<u64> =
        (0..n).flat_map(|j| x[j * d..(j + 1) * d].iter().chain(&gate[j * e..(j + 1) * e]).copied()).collect();
    let xg = sess.shares((n, d + e), xg)?;
    let slotted = matmul_shared(sess, into, &d_matrix, &xg).await?.into_vec();
    let x_slots: Vec<u64> = slotted.chunks_exact(d + e).flat_map(|row| row[..d].to_vec()).collect();
    let slot_gate: Vec<u64> = slotted.chunks_exact(d + e).enumerate().map(|(s, row)| row[d + s / slots]).collect();
    drop(dispatch_scope);
    // every expert on its own slots, the activation batched over all slots
    let mut pre = Vec::with_capacity(e * slots * first_width(cfg.expert, d_ff));
    for i in 0..e {
        let rows = &x_slots[i * slots * d..(i + 1) * slots * d];
        pre.extend(first_matrices(sess, cfg, rows, slots, &(i..i + 1), weights).await?);
    }
    let hidden = {
        let _s = meter.scope("activation");
        let pre = truncate_extend(sess, &pre, pre_activation_bits(sess), frac).await?;
        activate(sess, cfg.expert, &pre, d_ff).await?
    };
    let mut y_slots = Vec::with_capacity(e * slots * d);
    {
        let _s = meter.scope("second");
        for i in 0..e {
            let w2 = weights.map(|w| widen(&w.experts[i].w2));
            let w2 = w2.as_deref();
            let rows = expert_input(sess, cfg, hidden[i * slots * d_ff..(i + 1) * slots * d_ff].to_vec(), d_ff);
            let shape = MatShape { n: slots, d: cfg.expert_inputs().1, m: d };
            y_slots.extend(product(sess, shape, &rows, w2, 64).await?);
        }
    }
    let _s = meter.scope("combine");
    let y_slots = truncate_extend(sess, &y_slots, 64, frac).await?;
    let gated = mul_rows_in(sess, &y_slots, &slot_gate, gate_scalar_bits(frac), 64).await?;
    let gated = truncate_extend(sess, &gated, 64, frac).await?;
    // back to the tokens: Y = Dᵀ·gated (n × d)
    let d_back = Shares::matrix((n, e * slots), transpose(e * slots, n, &dispatch), 0).map_err(ProtoError::from)?;
    let gated = sess.shares((e * slots, d), gated)?;
    let y = matmul_shared(sess, back, &d_back, &gated).await?.into_vec();
    // the dropped count, opened to the client only: n·k routed minus the slots filled
    let filled = dispatch.iter().fold(0u64, |s, v| s.wrapping_add(*v));
    let ch = sess.channel();
    let dropped = if server {
        ch.send_u64s(&[filled]).await.map_err(ProtoError::from)?;
        None
    } else {
        let theirs = ch.recv_u64s("filled slots", 1).await.map_err(ProtoError::from)?[0];
        let filled = filled.wrapping_add(theirs) as usize;
        Some((n * cfg.top_k).saturating_sub(filled))
    };
    Ok((y, dropped))
}

/// The two products of capacity dispatch with C slots per expert: into the slots, D·[X | G]
/// ((E·C × n)·(n × (d + E))), and back, Dᵀ·Y ((n × E·C)·(E·C × d)).
fn dispatch_shapes(cfg: &MoeConfig, n: usize, slots: usize) -> [MatShape; 2] {
    let (e, d) = (cfg.experts, cfg.d_model);
    [MatShape { n: e * slots, d: n, m: d + e }, MatShape { n, d: e * slots, m: d }]
}

/// The transpose of a rows × cols matrix, row-major.
fn transpose(rows: usize, cols: usize, a: &[u64]) -> Vec<u64> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| a[r * cols + c])).collect()
}

/// Ring of the hidden values' gate products (W2 by experts): |g| < 2 at f bits times |h| < 2^12
/// at f bits (a gated product's bound, [`gated`]; GeLU's and ReLU's below 64). The experts'
/// outputs have no such bound (a checkpoint's massive activations come out of its FFNs): their
/// gate products run in Z_2^64, as cheap with the gate read in f + 3 bits.
fn gate_bits(frac: u32) -> u32 {
    2 * frac + 14
}

/// Bits a gate's shares are read in by the gate products: every gate is below 2 (a softmax's
/// or σ's output, renormalized or not, with the reciprocal's Newton overshoot), so
/// |g| < 2^(f+1) = 2^(m−2) at f fractional bits — m + 1 correlated OTs per row, not 2f + 15.
fn gate_scalar_bits(frac: u32) -> u32 {
    frac + 3
}

/// Σ_r g_r·o_r per token: `outputs` n·k rows of d and `gates` k·n values, both slot-major.
async fn combine(sess: &mut Session, outputs: &[u64], gates: &[u64], n: usize, d: usize) -> ProtoResult<Vec<u64>> {
    let frac = sess.format().frac_bits();
    let weighted = mul_rows_in(sess, outputs, gates, gate_scalar_bits(frac), 64).await?;
    let mut y = vec![0u64; n * d];
    for slot in weighted.chunks_exact(n * d) {
        y.iter_mut().zip(slot).for_each(|(y, v)| *y = y.wrapping_add(*v));
    }
    truncate_extend(sess, &y, 64, frac).await
}

/// The shared expert on every token (n rows of d at f bits), scaled by sigmoid(x·w_g) where
/// the config asks (σ(z) = softmax([z, 0])₀, so the softmax protocol computes it).
async fn shared_expert(
    sess: &mut Session,
    cfg: &MoeConfig,
    x: &[u64],
    n: usize,
    weights: Option<&MoeWeights>,
) -> MoeResult<Vec<u64>> {
    let Some(shape) = cfg.shared else { return Ok(vec![0; n * cfg.d_model]) };
    let d = cfg.d_model;
    let frac = sess.format().frac_bits();
    let shared = weights.and_then(|w| w.shared.as_ref());
    let xs = sess.shares((n, d), x.to_vec())?;
    let y = dense_expert(sess, cfg.expert, shape.d_ff, &xs, shared.map(|s| &s.expert)).await?.into_vec();
    if !shape.sigmoid_gate {
        return Ok(y);
    }
    let wg = shared.and_then(|s| s.gate.as_deref()).map(widen);
    let wg = wg.as_deref();
    let logit = product(sess, MatShape { n, d, m: 1 }, x, wg, 64).await?;
    let logit = truncate_extend(sess, &logit, 64, frac).await?;
    let pairs: Vec<u64> = logit.iter().flat_map(|&l| [l, 0]).collect();
    let pairs = sess.shares((n, 2), pairs)?;
    let sigma: Vec<u64> = softmax(sess, &pairs).await?.into_vec().into_iter().step_by(2).collect();
    let scaled = mul_rows_in(sess, &y, &sigma, gate_scalar_bits(frac), 64).await?;
    Ok(truncate_extend(sess, &scaled, 64, frac).await?)
}

/// A dense expert on every row of X (n×d, each party's shares): the shared expert of a MoE
/// layer, or a dense FFN block — first matrices, activation, W2, in the session's fixed point.
/// The server passes the weights, the client `None`.
pub async fn dense_expert(
    sess: &mut Session,
    kind: ExpertKind,
    d_ff: usize,
    x: &Shares,
    weights: Option<&ExpertWeights>,
) -> ProtoResult<Shares> {
    sess.check_format(x, "dense expert input")?;
    let (n, d) = x.shape();
    let x = x.as_slice();
    let frac = sess.format().frac_bits();
    let width = first_width(kind, d_ff);
    let first = weights.map(|w| stack_first(std::slice::from_ref(w), d, d_ff));
    let bits = pre_activation_bits(sess);
    let z = product(sess, MatShape { n, d, m: width }, x, first.as_deref(), bits).await?;
    let z = truncate_extend(sess, &z, bits, frac).await?;
    let hidden = activate(sess, kind, &z, d_ff).await?;
    let w2 = weights.map(|w| widen(&w.w2));
    let y = product(sess, MatShape { n, d: d_ff, m: d }, &hidden, w2.as_deref(), 64).await?;
    let y = truncate_extend(sess, &y, 64, frac).await?;
    sess.shares((n, d), y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::Routing;

    fn shape(experts: usize, top_k: usize, d_model: usize, d_ff: usize, routing: Routing) -> MoeConfig {
        MoeConfig {
            experts,
            top_k,
            d_model,
            d_ff,
            routing,
            expert: ExpertKind::SwiGlu,
            shared: None,
            expert_capacity: None,
            groups: None,
            expert_bias: false,
        }
    }

    /// W2 by experts for narrow experts of which many are chosen, by rows for wide ones.
    #[test]
    fn w2_goes_by_experts_where_experts_are_narrow() {
        let softmax = Routing::SoftmaxTopK { normalize: true };
        // granite-3.1-1b-a400m, Qwen3-30B-A3B, OLMoE; tests/moe.rs' narrow cases
        assert!(scatter_hidden(&shape(32, 8, 1024, 512, Routing::TopKSoftmax), 16, 32));
        assert!(scatter_hidden(&shape(128, 8, 2048, 768, softmax), 16, 32));
        assert!(scatter_hidden(&shape(64, 8, 2048, 1024, softmax), 128, 32));
        assert!(scatter_hidden(&shape(16, 4, 32, 8, softmax), 4, 32));
        assert!(scatter_hidden(&shape(4, 1, 32, 8, Routing::TopKSoftmax), 3, 32));
        assert!(scatter_hidden(&shape(4, 1, 32, 8, Routing::Switch), 5, 32));
        // Mixtral-8x7B, the SPU shape, the built-in default model
        assert!(!scatter_hidden(&shape(8, 2, 4096, 14336, Routing::TopKSoftmax), 16, 32));
        assert!(!scatter_hidden(&shape(8, 1, 768, 3072, Routing::TopKSoftmax), 16, 32));
        assert!(!scatter_hidden(&shape(8, 2, 64, 128, Routing::TopKSoftmax), 5, 32));
        // saturating sessions scatter 64-bit values
        assert!(scatter_hidden(&shape(32, 8, 1024, 512, Routing::TopKSoftmax), 16, 64));
    }
}
