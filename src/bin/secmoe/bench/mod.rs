//! `secmoe bench`: protocol measurements through the real two-party transport (both parties in
//! this process, QUIC + TLS on loopback), printed as a table and optionally written as JSON.
//!
//! [`harness`] measures, [`report`] prints and writes, the presets ([`layers`], [`blocks`], [`he`], [`kernels`], [`experts`],
//! [`model`]) say what.

mod blocks;
pub mod experts;
pub(crate) mod harness;
mod he;
mod kernels;
mod layers;
mod model;
mod report;

use std::path::Path;

use anyhow::{Result, bail};
use secmoe::backend::BackendChoice;
use secmoe::net::CostModel;

/// The presets `secmoe bench --preset` knows.
pub const PRESETS: &[&str] = &["layers", "blocks", "he", "kernels", "experts", "model"];

/// Runs a preset; prints the table; writes JSON if asked.
pub async fn run(
    preset: &str,
    backend: BackendChoice,
    threads: usize,
    only: Option<&str>,
    tune: CostModel,
    json: Option<&Path>,
    moe: &experts::Options,
) -> Result<()> {
    if !PRESETS.contains(&preset) {
        bail!("unknown preset `{preset}` (known: {})", PRESETS.join(", "));
    }
    let backend = secmoe::backend::start(backend, threads)?;
    let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    let mut rows = Vec::new();
    report::print_header();
    match preset {
        "blocks" => blocks::run(backend.clone(), threads, only, &mut rows).await?,
        "he" => he::run(only, &mut rows)?,
        "kernels" => kernels::run(backend.as_ref(), threads, only, &mut rows)?,
        "experts" => experts::run(backend.clone(), threads, tune, moe, &mut rows).await?,
        "model" => model::run(backend.clone(), threads, only, tune, &mut rows).await?,
        _ => layers::run(backend.clone(), threads, only, tune, &mut rows).await?,
    }
    for row in &mut rows {
        if row.backend.is_empty() {
            row.backend = backend.name().into();
        }
    }
    report::write_json(preset, &rows, json)
}
