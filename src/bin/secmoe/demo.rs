//! The demo job: what the engine can do end to end today, run between two parties.
//!
//! 1. *share*: the client secret-shares its fixed-point vector x, the server its vector y; both
//!    add their shares locally and the client alone reconstructs x + y.
//! 2. *ot*: one batch of random OTs and one of correlated OTs over Z_2^64 per extension kind, the
//!    client as sender.
//! 3. *moe*: a private MoE layer — the client's 16 token activations, the server's random
//!    weights (8 SwiGLU experts, top-2, d = 64, d_ff = 256), Select-Then-Compute — and the
//!    client alone learns the output.
//! 4. *verify* (outside the protocol, not counted in the totals): the sender reveals a sample of
//!    its OT outputs so the receiver can check every sampled correlation, and the server
//!    reveals the layer's weights so the client can check its output against the plaintext.

use std::sync::Arc;
use std::time::Instant;

use rand::{RngExt, rngs::StdRng};

use secmoe::backend::Backend;
use secmoe::he::{HeError, HeParams};
use secmoe::moe::{ExpertKind, ExpertWeights, Method, MoeConfig, MoeError, MoeWeights, Routing, moe_layer, reference};
use secmoe::net::{Link, NetError, Party, PublicParams, Report};
use secmoe::ot::{Ot, OtError, OtKind};
use secmoe::proto::linear::KeySet;
use secmoe::proto::{ProtoError, Session, SessionConfig};
use secmoe::ring::{FixedPoint, RingError, Share, mask, reconstruct, share_secret};

/// Errors of the demo job.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Transport failure.
    #[error(transparent)]
    Net(#[from] NetError),
    /// OT failure.
    #[error(transparent)]
    Ot(#[from] OtError),
    /// Ring failure.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// Protocol failure.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// HE parameter failure.
    #[error(transparent)]
    He(#[from] HeError),
    /// MoE layer failure.
    #[error(transparent)]
    Moe(#[from] MoeError),
    /// A result did not check out.
    #[error("check failed: {0}")]
    Check(String),
}

/// Sizes of the demo job; both parties must use the same (the handshake checks).
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Length of the shared vectors.
    pub values: usize,
    /// OTs per batch.
    pub ots: usize,
    /// Extension kinds to run.
    pub kinds: Vec<OtKind>,
    /// Fixed-point format.
    pub fixed: FixedPoint,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self { values: 4096, ots: 1 << 20, kinds: OtKind::ALL.to_vec(), fixed: FixedPoint::default() }
    }
}

impl DemoConfig {
    /// The public parameters both parties must agree on.
    pub fn public_params(&self) -> PublicParams {
        let kinds = self.kinds.iter().fold(0u64, |acc, k| acc | (1 << *k as u64));
        PublicParams::new()
            .with("frac_bits", self.fixed.frac_bits() as u64)
            .with("demo.values", self.values as u64)
            .with("demo.ots", self.ots as u64)
            .with("demo.ot_kinds", kinds)
    }
}

/// The demo's MoE layer (public, both parties).
pub const DEMO_LAYER: MoeConfig = MoeConfig {
    experts: 8,
    top_k: 2,
    d_model: 64,
    d_ff: 256,
    routing: Routing::TopKSoftmax,
    expert: ExpertKind::SwiGlu,
    shared: None,
};
/// Tokens through the demo's layer.
pub const DEMO_TOKENS: usize = 16;
/// Largest error accepted against the plaintext layer (its tests bound it by 2e-3 at this size).
const DEMO_BOUND: f64 = 1e-2;

/// The client's token activations: x_ja = sin(7j + a)·0.8.
pub fn client_tokens() -> Vec<f64> {
    let d = DEMO_LAYER.d_model;
    (0..DEMO_TOKENS * d).map(|i| 0.8 * ((7 * (i / d) + i % d) as f64).sin()).collect()
}

/// Number of OTs per batch whose outputs the verify step reveals.
const VERIFY_SAMPLE: usize = 4096;

/// What one party saw.
#[derive(Debug)]
pub struct DemoOutcome {
    /// This party.
    pub party: Party,
    /// Costs of the protocol steps (the verify step excluded).
    pub report: Report,
    /// Costs of the verification step.
    pub verify: Report,
    /// Human-readable results of the checks this party ran.
    pub checks: Vec<String>,
    /// Wall time of the whole job.
    pub wall_s: f64,
}

/// The client's demo input: x_i = 3·sin(i).
pub fn client_input(n: usize) -> Vec<f64> {
    (0..n).map(|i| 3.0 * (i as f64).sin()).collect()
}

/// The server's demo input: y_i = cos(i) / 2.
pub fn server_input(n: usize) -> Vec<f64> {
    (0..n).map(|i| 0.5 * (i as f64).cos()).collect()
}

/// Runs the demo job as `link.party()`.
#[tracing::instrument(level = "info", skip_all, fields(party = %link.party()))]
pub async fn run(link: &mut Link, backend: Arc<dyn Backend>, cfg: &DemoConfig) -> Result<DemoOutcome, DemoError> {
    let start = Instant::now();
    let party = link.party();
    let mut rng: StdRng = rand::make_rng();
    let mut checks = Vec::new();
    let n = cfg.values;

    // 1. Sharing and a local addition.
    {
        let _s = link.meter().scope("share");
        let mine = match party {
            Party::Client => cfg.fixed.encode_slice(&client_input(n))?,
            Party::Server => cfg.fixed.encode_slice(&server_input(n))?,
        };
        let (keep, give) = share_secret(&mine, &mut rng);
        let raw: Vec<u64> = give.iter().map(|s| s.raw()).collect();
        link.channel().send_u64s(&raw).await?;
        let got: Vec<Share> =
            link.channel().recv_u64s("peer's input shares", n).await?.into_iter().map(Share::from_raw).collect();
        let sum: Vec<Share> = keep.iter().zip(&got).map(|(a, b)| *a + *b).collect();
        // Only the client learns the result: the server sends its share of the sum.
        match party {
            Party::Server => link.channel().send_u64s(&sum.iter().map(|s| s.raw()).collect::<Vec<_>>()).await?,
            Party::Client => {
                let theirs: Vec<Share> = link
                    .channel()
                    .recv_u64s("server's output shares", n)
                    .await?
                    .into_iter()
                    .map(Share::from_raw)
                    .collect();
                let z = cfg.fixed.decode_slice(&reconstruct(&sum, &theirs)?);
                let (x, y) = (client_input(n), server_input(n));
                let max_err = z.iter().zip(x.iter().zip(&y)).map(|(z, (x, y))| (z - (x + y)).abs()).fold(0.0, f64::max);
                if max_err > 1.0 / cfg.fixed.scale() {
                    return Err(DemoError::Check(format!("x + y off by {max_err}")));
                }
                checks.push(format!(
                    "shared sum of {n} fixed-point values: max error {max_err:.2e} (bound 2^-{})",
                    cfg.fixed.frac_bits()
                ));
            }
        }
    }

    // 2. OT batches, client as sender.
    let ot_backend = backend.clone();
    let mut ot = {
        let _s = link.meter().scope("ot");
        Ot::new(link, backend).await?
    };
    let mut verify = Vec::new();
    for &kind in &cfg.kinds {
        let _s = link.meter().scope("ot");
        match party {
            Party::Client => {
                let rot = ot.random_send(kind, cfg.ots).await?;
                let deltas: Vec<u64> = (0..cfg.ots).map(|_| rng.random()).collect();
                let x = ot.cot_send(kind, &deltas, 64).await?;
                verify.push((kind, Sample::Sender { rot: rot.keys, x, deltas }));
            }
            Party::Server => {
                let rot = ot.random_receive(kind, cfg.ots).await?;
                let choices: Vec<bool> = (0..cfg.ots).map(|_| rng.random()).collect();
                let y = ot.cot_receive(kind, &choices, 64).await?;
                verify.push((kind, Sample::Receiver { rot, choices, y }));
            }
        }
    }
    // 3. A private MoE layer: the client's tokens, the server's weights; the client learns y.
    let (layer_weights, layer_output) = {
        let _s = link.meter().scope("layer");
        let session = SessionConfig { format: cfg.fixed, ..Default::default() };
        let mut sess = Session::new(link, ot_backend.clone(), session).await?;
        sess.setup_he(HeParams::linear()?, KeySet::Linear).await?;
        let (x, weights) = match party {
            Party::Client => (cfg.fixed.encode_slice(&client_tokens())?, None),
            Party::Server => {
                let w = MoeWeights::random(&DEMO_LAYER, cfg.fixed, 4.0, &mut rng);
                (vec![0; DEMO_TOKENS * DEMO_LAYER.d_model], Some(w))
            }
        };
        let x: Vec<Share> = x.into_iter().map(Share::from_raw).collect();
        let out = moe_layer(&mut sess, &DEMO_LAYER, Method::SelectThenCompute, &x, weights.as_ref()).await?;
        let mine: Vec<u64> = out.y.iter().map(|s| s.raw()).collect();
        let y = match party {
            Party::Server => {
                link.channel().send_u64s(&mine).await?;
                None
            }
            Party::Client => {
                let theirs = link.channel().recv_u64s("server's layer output shares", mine.len()).await?;
                Some(mine.iter().zip(&theirs).map(|(a, b)| a.wrapping_add(*b)).collect::<Vec<u64>>())
            }
        };
        (weights, y)
    };

    // Both sides confirm the end of the protocol part: after this, all of its bytes have
    // arrived, so the report's totals are exact (see `net::Meter` on per-step attribution).
    {
        let _s = link.meter().scope("sync");
        link.channel().send(b"done").await?;
        link.channel().recv_exact("done", 4).await?;
    }
    let report = link.meter().report();

    // 3. Verification, outside the protocol.
    {
        let _s = link.meter().scope("verify");
        for (kind, sample) in verify {
            let k = VERIFY_SAMPLE.min(cfg.ots);
            match sample {
                Sample::Sender { rot, x, deltas } => {
                    let mut words = Vec::with_capacity(k * 6);
                    for i in 0..k {
                        let [a, b] = rot[i];
                        words.extend(<[u64; 2]>::from(a));
                        words.extend(<[u64; 2]>::from(b));
                        words.push(x[i]);
                        words.push(deltas[i]);
                    }
                    link.channel().send_u64s(&words).await?;
                }
                Sample::Receiver { rot, choices, y } => {
                    let words = link.channel().recv_u64s("verification sample", k * 6).await?;
                    let mut bad = 0usize;
                    for i in 0..k {
                        let w = &words[i * 6..i * 6 + 6];
                        let key = <[u64; 2]>::from(rot.keys[i]);
                        let expect_key = if rot.choices[i] { [w[2], w[3]] } else { [w[0], w[1]] };
                        let expect_y = w[4].wrapping_add(if choices[i] { w[5] } else { 0 }) & mask(64);
                        bad += usize::from(key != expect_key) + usize::from(y[i] != expect_y);
                    }
                    if bad > 0 {
                        return Err(DemoError::Check(format!("{bad} of {k} sampled {kind} OTs are wrong")));
                    }
                    checks.push(format!(
                        "{kind}: {} random + {} correlated OTs; {k} of each checked, all correct",
                        cfg.ots, cfg.ots
                    ));
                }
            }
        }
        // the layer: the server reveals its weights, the client checks y against the plaintext
        let sizes = layer_sizes();
        match (layer_weights, layer_output) {
            (Some(w), _) => {
                let words: Vec<u64> = std::iter::once(&w.router)
                    .chain(w.experts.iter().flat_map(|x| [&x.w1, x.w3.as_ref().unwrap_or(&x.w1), &x.w2]))
                    .flatten()
                    .copied()
                    .collect();
                link.channel().send_u64s(&words).await?;
            }
            (None, Some(y)) => {
                let words = link.channel().recv_u64s("the layer's weights", sizes.iter().sum()).await?;
                let w = layer_weights_from(&words);
                let want = reference(&DEMO_LAYER, cfg.fixed, &cfg.fixed.encode_slice(&client_tokens())?, &w, None)?;
                let got = cfg.fixed.decode_slice(&y);
                let err = got.iter().zip(&want.y).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
                if err > DEMO_BOUND {
                    return Err(DemoError::Check(format!("MoE layer output off by {err:.2e}")));
                }
                checks.push(format!(
                    "private MoE layer ({}, {DEMO_TOKENS} tokens, Select-Then-Compute): max error {err:.2e} \
                     against the plaintext layer, all correct",
                    DEMO_LAYER
                ));
            }
            (None, None) => return Err(DemoError::Check("the client has no layer output".into())),
        }
        link.channel().send(b"checked").await?;
        link.channel().recv_exact("checked", 7).await?;
    }
    let full = link.meter().report();
    let verify = Report { steps: full.steps.into_iter().filter(|(n, _)| n == "verify").collect() };
    Ok(DemoOutcome { party, report, verify, checks, wall_s: start.elapsed().as_secs_f64() })
}

/// Lengths of the layer's tensors in the order the verify step sends them: the router, then
/// W1, W3, W2 of each expert.
fn layer_sizes() -> Vec<usize> {
    let (d, f) = (DEMO_LAYER.d_model, DEMO_LAYER.d_ff);
    std::iter::once(d * DEMO_LAYER.experts).chain((0..DEMO_LAYER.experts).flat_map(|_| [d * f, d * f, f * d])).collect()
}

fn layer_weights_from(words: &[u64]) -> MoeWeights {
    let mut parts = Vec::new();
    let mut at = 0;
    for len in layer_sizes() {
        parts.push(words[at..at + len].to_vec());
        at += len;
    }
    let mut parts = parts.into_iter();
    let router = parts.next().unwrap_or_default();
    let mut experts = Vec::new();
    while let (Some(w1), Some(w3), Some(w2)) = (parts.next(), parts.next(), parts.next()) {
        experts.push(ExpertWeights { w1, w3: Some(w3), w2 });
    }
    MoeWeights { router, experts, shared: None }
}

enum Sample {
    Sender { rot: Vec<[secmoe::backend::Block; 2]>, x: Vec<u64>, deltas: Vec<u64> },
    Receiver { rot: secmoe::ot::RandomOtReceiver, choices: Vec<bool>, y: Vec<u64> },
}
