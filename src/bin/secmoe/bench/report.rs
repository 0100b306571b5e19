//! The report of a preset: a table on standard output as rows come in, and the JSON file.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::harness::{Row, machine};
use crate::report::human_bytes;

#[derive(Debug, Serialize)]
struct Output<'a> {
    preset: &'a str,
    machine: String,
    rows: &'a [Row],
}

/// The rows of a JSON report this binary wrote.
#[derive(Debug, Deserialize)]
struct Written {
    rows: Vec<Row>,
}

/// Reads back the rows of a JSON report written by [`write_json`].
pub(crate) fn read_json(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str::<Written>(&text).with_context(|| format!("parsing {}", path.display()))?.rows)
}

/// The table's header line (not in a child process: its parent printed it).
pub(crate) fn print_header() {
    if super::is_child() {
        return;
    }
    println!(
        "{:<24} {:<26} {:>8} {:>11} {:>7} {:>8} {:>8} {:>10} {:>6}",
        "name", "shape", "wall s", "bytes", "rounds", "LAN s", "WAN s", "peak RSS", "check"
    );
}

/// One table line (with the per-element and error figures where the row has them).
pub(crate) fn print_row(r: &Row) {
    let mut per_op = r.bits_per_op.map(|b| format!("  ({b:.0} bits each)")).unwrap_or_default();
    if let Some(us) = r.us_per_op {
        per_op += &if us < 0.1 { format!(", {:.2} ns each", us * 1e3) } else { format!(", {us:.2} µs each") };
    }
    if let (Some(us), Some(reference)) = (r.us_per_op, &r.reference) {
        per_op +=
            &format!(" ({}: {:.2} µs, ratio {:.2})", reference.name, reference.us_per_op, us / reference.us_per_op);
    }
    if let (Some(max), Some(mean)) = (r.max_error, r.mean_error) {
        per_op += &format!(", error max {max:.2e} mean {mean:.2e}");
    }
    if let Some(d) = r.stat_distance_log2 {
        per_op += &format!(", flooding distance 2^{d:.1}");
    }
    println!(
        "{:<24} {:<26} {:>8.2} {:>11} {:>7} {:>8.2} {:>8.2} {:>10} {:>6}{per_op}",
        r.method.as_ref().map_or_else(|| r.name.clone(), |m| format!("{} {m}", r.name)),
        r.shape,
        r.wall_s,
        human_bytes(r.bytes),
        r.rounds,
        r.lan_s,
        r.wan_s,
        human_bytes(r.peak_rss_bytes),
        if r.checked { "ok" } else { "WRONG" }
    );
    let _ = std::io::stdout().flush();
}

/// Writes the rows as JSON to `json`, if given.
pub(crate) fn write_json(preset: &str, rows: &[Row], json: Option<&Path>) -> Result<()> {
    if let Some(path) = json {
        let out = Output { preset, machine: machine(), rows };
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
        if !super::is_child() {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// Prints a row, then its steps under it.
pub(crate) fn print_row_with_steps(row: &Row) {
    print_row(row);
    for s in &row.steps {
        println!("  {:<22} {:>11} {:>7} rounds {:>8.2} s", s.name, human_bytes(s.bytes), s.rounds, s.seconds);
    }
    if !row.token_errors.is_empty() {
        let errors: Vec<String> = row.token_errors.iter().map(|e| format!("{e:.1e}")).collect();
        println!("  each token's largest error (the plaintext model as is): {}", errors.join(" "));
    }
    if !row.fit_token_errors.is_empty() {
        let errors: Vec<String> = row.fit_token_errors.iter().map(|e| format!("{e:.1e}")).collect();
        println!("  the same, the activations' fits alone (f64): {}", errors.join(" "));
    }
    if !row.near_ties.is_empty() {
        println!("  routing near-ties in the plaintext model (layer:token:margin): {}", row.near_ties.join(" "));
    }
    if !row.flipped.is_empty() {
        println!("  checked against it with these broken the other way: {}", row.flipped.join(" "));
    }
}
