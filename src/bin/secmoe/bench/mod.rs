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

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result, bail};
use secmoe::backend::{BackendChoice, Offload};
use secmoe::net::CostModel;

/// Set in the environment of a child process of [`run_in_children`].
const CHILD: &str = "SECMOE_BENCH_CHILD";

/// Whether this process measures rows for a parent ([`run_in_children`]).
fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Runs each row group of `names` in a child process of this binary (the same arguments, with
/// `--only NAME` and a JSON file of its own), printing as the rows come and collecting them:
/// a row's peak memory is then its own, not the heap that earlier rows left fragmented (which
/// `malloc_trim` cannot return) — the issue-14 LayerNorm row read 0.34–0.38 GB alone and
/// 0.69–0.75 GB after the rows before it.
fn run_in_children(names: &[&str], rows: &mut Vec<harness::Row>) -> Result<()> {
    let exe = std::env::current_exe().context("locating this binary for the per-row processes")?;
    for name in names {
        let json = std::env::temp_dir().join(format!("secmoe-bench-{}-{name}.json", std::process::id()));
        let mut args = without_options(std::env::args_os().skip(1), &["--only", "--json"]);
        args.extend(["--only".into(), (*name).into(), "--json".into(), json.clone().into()]);
        let status = std::process::Command::new(&exe)
            .args(&args)
            .env(CHILD, "1")
            .status()
            .with_context(|| format!("starting the process of the `{name}` rows"))?;
        if !status.success() {
            bail!("the `{name}` rows failed ({status})");
        }
        rows.extend(report::read_json(&json)?);
        let _ = std::fs::remove_file(&json);
    }
    Ok(())
}

/// `args` without the options named in `drop` (as `--name value` or `--name=value`).
fn without_options(args: impl Iterator<Item = OsString>, drop: &[&str]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in args {
        let text = arg.to_string_lossy();
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if let Some(name) = drop.iter().find(|d| text == **d || text.starts_with(&format!("{d}="))) {
            skip_value = text == *name;
            continue;
        }
        out.push(arg);
    }
    out
}

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
    // rows name the backend with its offload policy where it is not the default
    let label = match backend {
        BackendChoice::Cuda(offload) if offload != Offload::Held => Some(format!("cuda:{}", offload.name())),
        _ => None,
    };
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
        _ if only.is_none() && !is_child() => run_in_children(layers::ROWS, &mut rows)?,
        _ => layers::run(backend.clone(), threads, only, tune, &mut rows).await?,
    }
    for row in &mut rows {
        if row.backend.is_empty() {
            row.backend = label.clone().unwrap_or_else(|| backend.name().into());
        }
    }
    report::write_json(preset, &rows, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child gets the parent's arguments less the options it sets itself, in either spelling.
    #[test]
    fn child_arguments_drop_only_and_json_in_both_spellings() {
        let args = ["bench", "--preset", "layers", "--json", "out.json", "--tune=20", "--only=gelu", "--threads", "2"];
        let kept = without_options(args.iter().map(OsString::from), &["--only", "--json"]);
        assert_eq!(kept, ["bench", "--preset", "layers", "--tune=20", "--threads", "2"].map(OsString::from));
    }
}
