//! The harness under every preset: both parties in this process over the real transport, one
//! measured [`Row`] per measurement, the process's peak memory, the machine's description.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use secmoe::backend::Backend;
use secmoe::net::{CostModel, Link, LinkConfig, PublicParams, Report, loopback};
use secmoe::ot::OtKind;
use secmoe::proto::{Session, SessionConfig};
use serde::{Deserialize, Serialize};

/// One measured row.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Row {
    pub(crate) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) method: Option<String>,
    pub(crate) shape: String,
    /// Routed experts, tokens and experts per token, for the MoE rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) experts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) top_k: Option<usize>,
    pub(crate) backend: String,
    pub(crate) threads: usize,
    pub(crate) wall_s: f64,
    /// Both directions together.
    pub(crate) bytes: u64,
    pub(crate) rounds: u64,
    pub(crate) lan_s: f64,
    pub(crate) wan_s: f64,
    /// Peak resident memory of the process (both parties) during the row; in a full run of the
    /// layers preset each row group runs in a process of its own, so this is the row's alone.
    pub(crate) peak_rss_bytes: u64,
    /// Whether the shares reconstructed to the plaintext result.
    pub(crate) checked: bool,
    /// Bits on the wire per element, where the row counts elements (compared values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bits_per_op: Option<f64>,
    /// Largest and mean absolute error against the exact function, where the row computes one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_error: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mean_error: Option<f64>,
    /// Microseconds per element, where the row counts elements.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) us_per_op: Option<f64>,
    /// log2 of the bound on the statistical distance of the noise in what the client decrypted
    /// from a weight-independent one (rows with HE products: linear layers, MoE layers, models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stat_distance_log2: Option<f64>,
    /// The plaintext model's narrowest routing choice on the row's input (model rows): below
    /// [`secmoe::model::NEAR_TIE`] the private run may route a token differently.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) routing_margin: Option<f64>,
    /// Its routing choices by near-ties, `layer:token:margin` (model rows).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub(crate) near_ties: Vec<String>,
    /// Those of its near-ties that the check found broken the other way, `layer:token`: the
    /// row's errors are against the plaintext model with them flipped (model rows).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub(crate) flipped: Vec<String>,
    /// Each token's largest error against the plaintext model as is (model rows): a token
    /// routed differently stands out, and so, through attention, do the tokens after it.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub(crate) token_errors: Vec<f64>,
    /// The same for the plaintext model with the experts' activations on the protocols' fits
    /// (model rows): the fits' share of the error, token by token.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub(crate) fit_token_errors: Vec<f64>,
    /// The largest of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fit_error: Option<f64>,
    /// Bytes (both directions), rounds and seconds of the row's steps, where it reports them.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub(crate) steps: Vec<Step>,
    /// Another implementation timed on the same operation in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reference: Option<Reference>,
}

impl Row {
    /// Sets the largest and mean of the row's absolute errors.
    pub(crate) fn set_errors(&mut self, errors: &[f64]) {
        self.max_error = Some(errors.iter().copied().fold(0.0, f64::max));
        self.mean_error = Some(errors.iter().sum::<f64>() / errors.len().max(1) as f64);
    }

    /// Sets the row's steps: bytes (both ways), rounds and seconds under each name's prefix of
    /// `report`, the steps with no bytes left out.
    pub(crate) fn set_steps<'a>(&mut self, report: &Report, names: impl IntoIterator<Item = &'a str>) {
        self.steps = names
            .into_iter()
            .map(|name| {
                let s = report.prefixed(name);
                Step { name: name.into(), bytes: s.bytes(), rounds: s.rounds, seconds: s.seconds }
            })
            .filter(|s| s.bytes > 0)
            .collect();
    }
}

/// One step of a row.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Step {
    pub(crate) name: String,
    pub(crate) bytes: u64,
    pub(crate) rounds: u64,
    pub(crate) seconds: f64,
}

/// A reference implementation's time for a row's operation.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Reference {
    pub(crate) name: String,
    pub(crate) us_per_op: f64,
}

/// Both parties' links over QUIC + TLS on loopback, with a timeout long enough for any row.
pub(crate) async fn links() -> Result<(Link, Link)> {
    let cfg = LinkConfig { timeout: Duration::from_secs(600), params: PublicParams::new().with("bench", 1) };
    Ok(loopback(cfg).await?)
}

/// Both parties' links and sessions on them with `threads` host workers each, OT extension
/// `kind` and the network the HE tilings are tuned for: (client link, client session, server
/// link, server session).
pub(crate) async fn session_pair(
    backend: Arc<dyn Backend>,
    threads: usize,
    kind: OtKind,
    network: CostModel,
) -> Result<(Link, Session, Link, Session)> {
    let (mut c, mut s) = links().await?;
    let be = backend;
    let config = SessionConfig { ot_kind: Some(kind), network, threads, ..Default::default() };
    let (sc, ss) = tokio::join!(Session::new(&mut c, be.clone(), config.clone()), Session::new(&mut s, be, config));
    Ok((c, sc?, s, ss?))
}

/// A row with the totals every measurement has; the optional fields are set by the caller.
pub(crate) fn row(
    name: &str,
    shape: String,
    threads: usize,
    wall_s: f64,
    bytes: u64,
    rounds: u64,
    checked: bool,
) -> Row {
    Row {
        name: name.into(),
        method: None,
        shape,
        experts: None,
        tokens: None,
        top_k: None,
        backend: String::new(),
        threads,
        wall_s,
        bytes,
        rounds,
        lan_s: CostModel::LAN.estimate(wall_s, bytes, rounds),
        wan_s: CostModel::WAN.estimate(wall_s, bytes, rounds),
        peak_rss_bytes: peak_rss(),
        checked,
        bits_per_op: None,
        max_error: None,
        mean_error: None,
        us_per_op: None,
        stat_distance_log2: None,
        routing_margin: None,
        near_ties: Vec::new(),
        flipped: Vec::new(),
        token_errors: Vec::new(),
        fit_token_errors: Vec::new(),
        fit_error: None,
        steps: Vec::new(),
        reference: None,
    }
}

/// Resets the kernel's peak-RSS mark (Linux: `5` into /proc/self/clear_refs) after returning the
/// heap that earlier rows freed to the OS (glibc's `malloc_trim`), so that a row's peak is its own
/// (plus what stays allocated across rows: the sessions and their keys); best effort.
pub(crate) fn reset_peak_rss() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's arenas; no pointer is
    // touched.
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size (VmHWM) in bytes; 0 where /proc is unavailable.
pub(crate) fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

/// The CPU model and core count, for the JSON report.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

/// A row of one timed operation: no traffic, the time per operation in `us_per_op`.
pub(crate) fn op_row(name: &str, backend: &str, shape: String, us: f64, checked: bool) -> Row {
    let mut r = row(name, shape, 1, us * 1e-6, 0, 0, checked);
    r.backend = backend.into();
    r.us_per_op = Some(us);
    r
}

/// Microseconds per call of `f`: the fastest of five timed batches of `reps / 5` calls, after
/// one warm-up call (`seal_ref.py` times SEAL the same way).
pub(crate) fn time_us(reps: u32, mut f: impl FnMut()) -> f64 {
    f();
    let batch = (reps / 5).max(1);
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / batch as f64
        })
        .fold(f64::INFINITY, f64::min)
}
