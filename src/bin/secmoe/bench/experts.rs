//! `secmoe bench --preset experts`: one MoE layer per (method, E) — router, top-k, the routed
//! experts, the gate-weighted sum — through the real transport, checked against the plaintext
//! layer. The HE keys are set up before the row starts (the `he-setup` row of `layers` costs
//! them once per session).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use secmoe::backend::Backend;
use secmoe::he::HeParams;
use secmoe::moe::{ExpertKind, GroupLimit, Method, MoeConfig, MoeWeights, Routing, moe_layer, reference};
use secmoe::net::CostModel;
use secmoe::ot::OtKind;
use secmoe::proto::HeUse;
use secmoe::proto::linear::KeySet;
use secmoe::ring::{FixedPoint, Shares, open, share_matrix};

use super::harness::{Row, reset_peak_rss, row, session_pair};
use super::report::print_row_with_steps;

/// What the preset sweeps.
#[derive(Debug, Clone)]
pub struct Options {
    /// Expert counts, one row per method each.
    pub experts: Vec<usize>,
    /// Tokens in the batch.
    pub tokens: usize,
    /// Model width.
    pub d_model: usize,
    /// Expert hidden width.
    pub d_ff: usize,
    /// Expert kind.
    pub expert: ExpertKind,
    /// Experts per token.
    pub top_k: usize,
    /// The router family.
    pub routing: Routing,
    /// Group-limited routing.
    pub groups: Option<GroupLimit>,
    /// Experts with biases (gpt-oss's).
    pub expert_bias: bool,
    /// Methods, in row order.
    pub methods: Vec<Method>,
}

/// Largest error against the plaintext layer a row accepts as checked (outputs of size ~1).
const CHECK_BOUND: f64 = 1e-2;

/// Runs the sweep, printing each row and adding it to `rows`.
pub(crate) async fn run(
    backend: Arc<dyn Backend>,
    threads: usize,
    tune: CostModel,
    opts: &Options,
    rows: &mut Vec<Row>,
) -> Result<()> {
    for &experts in &opts.experts {
        for &method in &opts.methods {
            let cfg = MoeConfig {
                experts,
                top_k: opts.top_k,
                d_model: opts.d_model,
                d_ff: opts.d_ff,
                routing: opts.routing,
                expert: opts.expert,
                shared: None,
                expert_capacity: None,
                groups: opts.groups,
                expert_bias: opts.expert_bias,
            };
            let row = measure(&cfg, method, opts.tokens, backend.clone(), threads, tune)
                .await
                .with_context(|| format!("moe {cfg}, {}", method.name()))?;
            print_row_with_steps(&row);
            rows.push(row);
        }
    }
    Ok(())
}

async fn measure(
    cfg: &MoeConfig,
    method: Method,
    n: usize,
    backend: Arc<dyn Backend>,
    threads: usize,
    tune: CostModel,
) -> Result<Row> {
    let f = FixedPoint::default();
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let w = MoeWeights::random(cfg, f, 4.0, &mut rng);
    let x: Vec<u64> = (0..n * cfg.d_model).map(|_| f.encode(rng.random_range(-1.0..1.0))).collect::<Result<_, _>>()?;
    let secret = Shares::matrix((n, cfg.d_model), x.clone(), f.frac_bits())?;
    let (xc, xs) = share_matrix(&secret, &mut rng)?;
    let (c, mut sc, s, mut ss) = session_pair(backend, threads, OtKind::Silent, tune).await?;
    let p = HeParams::linear()?;
    let (a, b) = tokio::join!(sc.setup_he(p.clone(), KeySet::Linear), ss.setup_he(p, KeySet::Linear));
    a?;
    b?;
    if let Method::Capacity { .. } = method {
        // the dispatch matrix times the shared rows: products of two shared matrices
        let p = HeParams::n8192()?;
        let (a, b) = tokio::join!(
            sc.setup_he_for(HeUse::Shared, p.clone(), KeySet::Linear),
            ss.setup_he_for(HeUse::Shared, p, KeySet::Linear)
        );
        a?;
        b?;
    }
    if let Some(keys) = method.selection_keys() {
        let keys_before = c.meter().report().total().bytes();
        let p = HeParams::select()?;
        let (a, b) =
            tokio::join!(sc.setup_he_for(HeUse::Select, p.clone(), keys), ss.setup_he_for(HeUse::Select, p, keys));
        a?;
        b?;
        let mb = (c.meter().report().total().bytes() - keys_before) as f64 / 1e6;
        println!("  selection keys ({}): {mb:.1} MB, once per session, not in the row", HeParams::select()?.name());
    }
    let before = c.meter().report().total();
    reset_peak_rss();
    let start = Instant::now();
    let (yc, ys) =
        tokio::join!(moe_layer(&mut sc, cfg, method, &xc, None), moe_layer(&mut ss, cfg, method, &xs, Some(&w)));
    let wall_s = start.elapsed().as_secs_f64();
    let report = c.meter().report();
    let after = report.total();
    let flooding = ss.exposure();
    let (yc, ys) = (yc?, ys?);
    let got = f.decode_slice(open(&yc.y, &ys.y)?.as_slice());
    let want = reference(cfg, f, &x, &w, method.capacity(cfg, n))?;
    if want.dropped > 0 || yc.dropped.is_some_and(|v| v > 0) {
        println!("  dropped: {} assignments (plaintext: {})", yc.dropped.unwrap_or(0), want.dropped);
    }
    let want = want.y;
    let errors: Vec<f64> = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).collect();
    let error = errors.iter().copied().fold(0.0, f64::max);
    let (a, b) = tokio::join!(c.close(), s.close());
    a?;
    b?;
    let shape = format!("E={} k={} {}×{}×{} {}", cfg.experts, cfg.top_k, n, cfg.d_model, cfg.d_ff, cfg.expert.name());
    let mut r = row(
        "moe",
        shape,
        threads,
        wall_s,
        after.bytes() - before.bytes(),
        after.rounds - before.rounds,
        error <= CHECK_BOUND,
    );
    r.method = Some(method.name().into());
    r.experts = Some(cfg.experts);
    r.tokens = Some(n);
    r.top_k = Some(cfg.top_k);
    r.set_errors(&errors);
    r.stat_distance_log2 = flooding.map(|e| e.distance().log2());
    // the client's account by step (bytes both ways; the server's seconds are in wall_s)
    let names = [
        "moe/router",
        "moe/route",
        "moe/experts/choice",
        "moe/experts/dispatch",
        "moe/experts/first",
        "moe/experts/activation",
        "moe/experts/second",
    ];
    r.set_steps(
        &report,
        names.into_iter().chain(["moe/experts/select", "moe/experts/combine", "moe/combine", "moe/shared"]),
    );
    Ok(r)
}
