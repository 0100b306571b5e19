//! `secmoe bench`: protocol measurements through the real two-party transport (both parties in
//! this process, QUIC + TLS on loopback), printed as a table and optionally written as JSON.
//!
//! [`harness`] measures, [`report`] prints and writes, the presets ([`layers`], [`blocks`], [`he`]) say what.

mod blocks;
mod harness;
mod he;
mod layers;
mod report;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use secmoe::backend::CpuBackend;
use secmoe::net::CostModel;

/// The presets `secmoe bench --preset` knows.
pub const PRESETS: &[&str] = &["layers", "blocks", "he"];

/// Runs a preset; prints the table; writes JSON if asked.
pub async fn run(preset: &str, threads: usize, only: Option<&str>, tune: CostModel, json: Option<&Path>) -> Result<()> {
    if !PRESETS.contains(&preset) {
        bail!("unknown preset `{preset}` (known: {})", PRESETS.join(", "));
    }
    let backend = Arc::new(CpuBackend::new(threads)?);
    let threads = backend.threads();
    let mut rows = Vec::new();
    report::print_header();
    match preset {
        "blocks" => blocks::run(backend, threads, only, &mut rows).await?,
        "he" => he::run(only, &mut rows)?,
        _ => layers::run(backend, threads, only, tune, &mut rows).await?,
    }
    report::write_json(preset, &rows, json)
}
