//! Shared helpers for the integration tests: both parties in one process over the real
//! transport (QUIC + TLS on loopback).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use secmoe::backend::CpuBackend;
use secmoe::net::{Link, LinkConfig, PublicParams, loopback};
use secmoe::ot::{Ot, OtKind};
use secmoe::proto::{Session, SessionConfig};
use secmoe::ring::FixedPoint;

pub fn runtime() -> tokio::runtime::Runtime {
    secmoe::ot::configure_extension_threads();
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

pub fn config(timeout_s: u64) -> LinkConfig {
    LinkConfig { timeout: Duration::from_secs(timeout_s), params: PublicParams::new().with("frac_bits", 18) }
}

/// Links with a receive timeout of 120 s: the tests run two at a time, each with both parties,
/// so on a slow 2-core machine a party may wait that long for the other's heaviest step.
pub async fn links() -> (Link, Link) {
    loopback(config(120)).await.expect("loopback links")
}

/// (client link, client OT, server link, server OT).
pub async fn ot_pair() -> (Link, Ot, Link, Ot) {
    let (mut c, mut s) = links().await;
    let (oc, os) = tokio::join!(Ot::new(&mut c, backend()), Ot::new(&mut s, backend()));
    (c, oc.expect("client OT"), s, os.expect("server OT"))
}

/// (client link, client session, server link, server session): IKNP, the default fixed-point
/// format, CSPRNGs from fixed seeds (tests only).
pub async fn session_pair() -> (Link, Session, Link, Session) {
    session_pair_in(FixedPoint::default()).await
}

/// [`session_pair`] with the fixed-point format `format`.
pub async fn session_pair_in(format: FixedPoint) -> (Link, Session, Link, Session) {
    let (mut c, mut s) = links().await;
    let config =
        |seed: u8| SessionConfig { ot_kind: Some(OtKind::Iknp), format, seed: Some([seed; 32]), ..Default::default() };
    let (sc, ss) = tokio::join!(Session::new(&mut c, backend(), config(1)), Session::new(&mut s, backend(), config(2)));
    (c, sc.expect("client session"), s, ss.expect("server session"))
}

pub fn backend() -> Arc<CpuBackend> {
    Arc::new(CpuBackend::new(2).expect("thread pool"))
}

/// Additive shares (server, client) of `values`: the client's uniform from `rng`.
pub fn add_share(values: &[u64], rng: &mut rand::rngs::StdRng) -> (Vec<u64>, Vec<u64>) {
    use rand::RngExt;
    let r: Vec<u64> = values.iter().map(|_| rng.random()).collect();
    (values.iter().zip(&r).map(|(v, r)| v.wrapping_sub(*r)).collect(), r)
}

/// Reconstructs additive shares.
pub fn open(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
}

/// Typed shares (server, client) of a `rows × cols` matrix of ring values over Z_2^64 at `frac`
/// fractional bits: the client's uniform from `rng`.
pub fn share_rows(
    values: &[u64],
    shape: (usize, usize),
    frac: u32,
    rng: &mut rand::rngs::StdRng,
) -> (secmoe::ring::Shares, secmoe::ring::Shares) {
    let (s, c) = add_share(values, rng);
    let typed = |v| secmoe::ring::Shares::matrix(shape, v, frac).expect("shares of the shape");
    (typed(s), typed(c))
}

/// Opens typed shares into their ring values.
pub fn open_rows(a: &secmoe::ring::Shares, b: &secmoe::ring::Shares) -> Vec<u64> {
    secmoe::ring::open(a, b).expect("shares that fit together").into_vec()
}

/// Writes the built-in default model as a Mixtral checkpoint (config.json +
/// model.safetensors) with `edit` applied to the tensor list first.
pub fn write_default_checkpoint(dir: &std::path::Path, edit: impl FnOnce(&mut Vec<secmoe::model::HfTensor>)) {
    let config = r#"{"model_type": "mixtral", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": null,
        "hidden_act": "silu", "rms_norm_eps": 1e-05, "num_local_experts": 8, "num_experts_per_tok": 2,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "tie_word_embeddings": false,
        "sliding_window": null}"#;
    let (cfg, w) = (secmoe::model::default_config(), secmoe::model::default_weights());
    write_checkpoint(dir, config, &cfg, &w, edit);
}

/// Writes `w` as the checkpoint of `cfg` (read from `config`, its config.json) in f32, with
/// `edit` applied to the tensor list first.
pub fn write_checkpoint(
    dir: &std::path::Path,
    config: &str,
    cfg: &secmoe::model::ModelConfig,
    w: &secmoe::model::ModelWeights,
    edit: impl FnOnce(&mut Vec<secmoe::model::HfTensor>),
) {
    let mut tensors = secmoe::model::hf_tensors(cfg, w).unwrap();
    edit(&mut tensors);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|t| {
            let bytes: &[u8] = bytemuck::cast_slice(&t.values);
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), bytes).unwrap();
            (t.name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}
