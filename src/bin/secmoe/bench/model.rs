//! `--preset model`: whole models in 2PC — the built-in default model, one
//! `switch-base-8`-shaped encoder layer (d = 768, 12 heads of 64, 8 ReLU experts of 3072,
//! Switch routing, 128 tokens; vocabulary 512, so that the layer, not the embedding lookup,
//! dominates), and all of `granite-3.1-1b-a400m` (1.3 B parameters; random weights drawn one
//! layer at a time as the server asks, `--only granite-1b-a400m`, not run by default), one
//! DeepSeek-V2-Lite layer (`--only deepseek-v2-lite-layer`: latent attention and a MoE block
//! of 64 experts, vocabulary 512) or all of it (`--only deepseek-v2-lite`, 15.7 B parameters),
//! one gpt-oss-20b layer (`--only gpt-oss-20b-layer`: sinks, a sliding window, 32 biased
//! clamped SwiGLU experts top-4, vocabulary 512) or all of it (`--only gpt-oss-20b`, 21 B
//! parameters) — each checked against the f64 plaintext model: within 0.05 of it, or of it
//! with routing near-ties (margins below [`secmoe::model::NEAR_TIE`]) that the private run broke
//! the other way flipped, which the row then lists.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use secmoe::backend::Backend;
use secmoe::model::{
    CheckedWeights, DEEPSEEK_V2_LITE, Family, Ffn, GPT_OSS_20B, GRANITE_1B_A400M, ModelConfig, ModelWeights, Plan,
    Positions, Progress, Prompt, QkNorm, RandomWeights, Scales, Variant, WeightSource, default_config, finish,
    forward_variants, infer, resolve_near_ties, serve, setup_he,
};
use secmoe::moe::{ExpertKind, MoeConfig, Routing};
use secmoe::net::CostModel;
use secmoe::ot::OtKind;
use secmoe::proto::layernorm::NormRange;

use super::harness::Row;
use super::harness::{reset_peak_rss, row, session_pair};
use super::report::print_row_with_steps;

/// Largest |Δ| of an output against the plaintext model for the row to count as checked.
const CHECK_BOUND: f64 = 0.05;

/// One Switch Transformers (base, 8 experts) encoder layer with its MoE block.
fn switch_base_8_layer() -> ModelConfig {
    let moe = MoeConfig {
        experts: 8,
        top_k: 1,
        d_model: 768,
        d_ff: 3072,
        routing: Routing::Switch,
        expert: ExpertKind::Relu,
        shared: None,
        expert_capacity: Some(64),
        groups: None,
        expert_bias: false,
    };
    ModelConfig {
        family: Family::SwitchEncoder,
        vocab: 512,
        d_model: 768,
        heads: 12,
        kv_heads: 12,
        head_dim: 64,
        causal: false,
        norm_eps: 1e-6,
        positions: Positions::RelativeBias { buckets: 32, max_distance: 128 },
        score_scale: 1.0,
        qkv_bias: false,
        o_bias: false,
        sinks: false,
        windows: Vec::new(),
        qk_norm: QkNorm::None,
        latent: None,
        ffn: vec![Ffn::Moe(moe)],
        tie_embeddings: true,
        lm_head: false,
        scales: Scales::ONE,
    }
}

pub(crate) async fn run(
    backend: Arc<dyn Backend>,
    threads: usize,
    only: Option<&str>,
    tune: CostModel,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let granite = ModelConfig::from_json(GRANITE_1B_A400M)?;
    let lite = ModelConfig::from_json(DEEPSEEK_V2_LITE)?;
    // one of its MoE blocks under its latent attention, the vocabulary cut to 512
    let lite_layer = ModelConfig { vocab: 512, ffn: vec![lite.ffn[1]], ..lite.clone() };
    let gpt_oss = ModelConfig::from_json(GPT_OSS_20B)?;
    // its first layer (a sliding window, which 16 tokens do not reach), the vocabulary cut to 512
    let gpt_oss_layer =
        ModelConfig { vocab: 512, ffn: vec![gpt_oss.ffn[0]], windows: vec![gpt_oss.window(0)], ..gpt_oss.clone() };
    // (name, model, tokens, run without --only)
    let cases: [(&str, ModelConfig, usize, bool); 7] = [
        ("default-model", default_config(), 16, true),
        ("switch-base-8-layer", switch_base_8_layer(), 128, true),
        ("granite-1b-a400m", granite, 16, false),
        ("deepseek-v2-lite-layer", lite_layer, 16, false),
        ("deepseek-v2-lite", lite, 16, false),
        ("gpt-oss-20b-layer", gpt_oss_layer, 16, false),
        ("gpt-oss-20b", gpt_oss, 16, false),
    ];
    for (name, cfg, n, default) in cases {
        if only.map_or(!default, |o| o != name) {
            continue;
        }
        // the router scaled up so that routing depends on the input
        let weights: Box<dyn WeightSource> = if default {
            Box::new(ModelWeights::random(&cfg, 1, 4.0))
        } else {
            Box::new(RandomWeights::new(&cfg, 1, 4.0))
        };
        let row = measure(name, &cfg, n, weights.as_ref(), backend.clone(), threads, tune).await?;
        print_row_with_steps(&row);
        rows.push(row);
    }
    Ok(())
}

/// Prints each layer's end on stderr with the seconds since the start (long models).
struct Elapsed(Instant);

impl Progress for Elapsed {
    fn layer_done(&self, done: usize, layers: usize) {
        eprintln!("  layer {done}/{layers} done at {:.1} s", self.0.elapsed().as_secs_f64());
    }
}

async fn measure(
    name: &str,
    cfg: &ModelConfig,
    n: usize,
    w: &dyn WeightSource,
    backend: Arc<dyn Backend>,
    threads: usize,
    tune: CostModel,
) -> Result<Row> {
    let ids: Vec<u32> = (0..n).map(|i| ((i * 37 + 11) % cfg.vocab) as u32).collect();
    let (c, mut sc, s, mut ss) = session_pair(backend, threads, OtKind::Silent, tune).await?;
    let (a, b) = tokio::join!(setup_he(&mut sc, Plan::default()), setup_he(&mut ss, Plan::default()));
    a?;
    b?;
    // the server's one-time check, as `secmoe serve` makes it before it listens
    let model = CheckedWeights::new(cfg, ss.format(), w)?;
    let before = c.meter().report().total();
    reset_peak_rss();
    let start = Instant::now();
    let client = async {
        let out = infer(&mut sc, cfg, Plan::default(), Prompt::new(&ids), &()).await?;
        finish(&mut sc).await?;
        anyhow::Ok(out)
    };
    let progress = Elapsed(start);
    let (out, served) = tokio::join!(client, serve(&mut ss, &model, Plan::default(), &progress));
    let wall_s = start.elapsed().as_secs_f64();
    let (out, served) = (out?, served?);
    if served != 1 {
        bail!("{name}: the server served {served} forwards");
    }
    let report = c.meter().report();
    let after = report.total();
    let flooding = ss.exposure();
    let (a, b) = tokio::join!(c.close(), s.close());
    a?;
    b?;
    // the plaintext model as is and on the activations' fits, in one pass over the weights
    let (wanted, ranges) =
        forward_variants(cfg, w, &ids, &[Variant::default(), Variant::fitted()], NormRange::DEFAULT)?;
    let errors = distances(&out.values, &wanted[0]);
    let ties = ranges.near_ties().to_vec();
    let (reference, resolved) = resolve_near_ties(cfg, w, &ids, (&out.values, errors.clone()), &ties, CHECK_BOUND)?;
    let shape = format!("{n} tokens, {cfg}");
    let bytes = after.bytes() - before.bytes();
    let within = resolved.iter().all(|&e| e <= CHECK_BOUND);
    let mut r = row(name, shape, threads, wall_s, bytes, after.rounds - before.rounds, within);
    r.method = Some(Plan::default().method.name().into());
    r.tokens = Some(n);
    r.set_errors(&resolved);
    r.set_steps(&report, ["embed", "norm", "attention", "ffn", "head"]);
    r.stat_distance_log2 = flooding.map(|e| e.distance().log2());
    r.routing_margin = ranges.narrowest().map(|m| m.gap);
    r.near_ties = ties.iter().map(|m| format!("{}:{}:{:.1e}", m.layer, m.token, m.gap)).collect();
    r.flipped = reference.flipped.iter().map(|(l, t)| format!("{l}:{t}")).collect();
    let largest = |e: &[f64]| -> Vec<f64> {
        e.chunks(cfg.output_width()).map(|t| t.iter().copied().fold(0.0, f64::max)).collect()
    };
    r.token_errors = largest(&errors);
    r.fit_token_errors = largest(&distances(&wanted[1], &wanted[0]));
    r.fit_error = r.fit_token_errors.iter().copied().reduce(f64::max);
    Ok(r)
}

fn distances(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).collect()
}
