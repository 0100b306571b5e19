//! Plain-text tables of what a run cost.

use std::io::{self, Write};

use serde_json::json;

use crate::bench::harness::peak_rss;
use crate::infer::{ClientResult, Costs, Model};
use secmoe::model::Ranges;
use secmoe::net::{CostModel, Report, StepStats};
use secmoe::proto::layernorm::NormRange;

/// Bytes in human units.
pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

fn row(out: &mut impl Write, name: &str, s: &StepStats) -> io::Result<()> {
    writeln!(
        out,
        "  {:<28} {:>11} {:>11} {:>7} {:>9.3}",
        name,
        human_bytes(s.bytes_sent),
        human_bytes(s.bytes_received),
        s.rounds,
        s.seconds
    )
}

/// Writes a step table with totals and the LAN/WAN estimates.
fn write_report(out: &mut impl Write, report: &Report) -> io::Result<()> {
    writeln!(out, "  {:<28} {:>11} {:>11} {:>7} {:>9}", "step", "sent", "received", "rounds", "time (s)")?;
    // one row per top-level step (embed, norm, attention, ffn, head, setup …)
    let mut tops: Vec<&str> = report.steps.iter().map(|(n, _)| n.split('/').next().unwrap_or(n)).collect();
    tops.dedup();
    for top in tops {
        let only =
            Report { steps: report.steps.iter().filter(|(n, _)| n.split('/').next() == Some(top)).cloned().collect() };
        row(out, top, &only.total())?;
    }
    let t = report.total();
    row(out, "total", &t)?;
    for net in [CostModel::LAN, CostModel::WAN] {
        writeln!(
            out,
            "  estimated {} ({} Gbps, {} ms RTT): {:.3} s",
            net.name,
            net.bandwidth_bps / 1e9,
            net.latency_s * 1e3,
            net.estimate(t.seconds, t.bytes(), t.rounds)
        )?;
    }
    Ok(())
}

/// The argmax of a row (the first among equals).
fn argmax(row: &[f64]) -> usize {
    row.iter().enumerate().fold(0, |b, (i, v)| if *v > row[b] { i } else { b })
}

fn costs_json(c: &Costs) -> serde_json::Value {
    let t = c.report.total();
    json!({
        "wall_s": c.wall_s,
        "bytes": t.bytes(),
        "rounds": t.rounds,
        "lan_s": c.estimate(CostModel::LAN),
        "wan_s": c.estimate(CostModel::WAN),
        "peak_rss_bytes": peak_rss(),
        "flooding_distance_log2": c.flooding.map(|e| e.distance().log2()),
    })
}

fn write_costs(out: &mut impl Write, who: &str, c: &Costs) -> io::Result<()> {
    writeln!(out, "== {who} ({:.2} s wall, peak RSS of this process {})", c.wall_s, human_bytes(peak_rss()))?;
    write_report(out, &c.report)?;
    if let Some(e) = c.flooding.filter(|e| e.coefficients() > 0) {
        writeln!(
            out,
            "  flooding: {} result coefficients returned, their noise within statistical distance 2^{:.1} of noise \
             independent of the weights",
            e.coefficients(),
            e.distance().log2()
        )?;
    }
    Ok(())
}

fn write_generated(out: &mut impl Write, r: &ClientResult) -> io::Result<()> {
    if !r.generated.is_empty() {
        let ids: Vec<String> = r.generated.iter().map(|i| i.to_string()).collect();
        writeln!(out, "generated (greedy): {}", ids.join(","))?;
    }
    if let Some(text) = &r.generated_text {
        writeln!(out, "generated text: {text:?}")?;
    }
    Ok(())
}

fn print(f: impl FnOnce(&mut io::StdoutLock) -> io::Result<()>) -> anyhow::Result<()> {
    // a closed stdout (`secmoe demo | head`) is not an error of the run
    let _ = f(&mut io::stdout().lock());
    Ok(())
}

/// The demo's report: the private output next to the plaintext model's, per position, then
/// the costs of both parties (or one JSON object).
pub fn print_demo(
    model: &Model,
    ids: &[u32],
    c: &ClientResult,
    s: &Costs,
    reference: &[f64],
    as_json: bool,
) -> anyhow::Result<()> {
    let out = &c.outputs[0];
    let err = out.values.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let want: Vec<usize> = reference.chunks_exact(out.width).map(argmax).collect();
    let got = out.argmax();
    if as_json {
        let mut v = costs_json(&c.costs);
        v["model"] = json!(model.config.to_string());
        v["prompt_ids"] = json!(ids);
        v["max_abs_logit_error"] = json!(err);
        v["argmax_match"] = json!(got == want);
        v["argmax"] = json!(got);
        v["generated"] = json!(c.generated);
        v["server_wall_s"] = json!(s.wall_s);
        return print(|o| writeln!(o, "{v}"));
    }
    print(|o| {
        writeln!(
            o,
            "{:>8} {:>8} {:>14} {:>14} {:>12}",
            "position", "token", "argmax (2PC)", "argmax (plain)", "max |Δ|"
        )?;
        for (p, &id) in ids.iter().enumerate() {
            let d = out.row(p).iter().zip(&reference[p * out.width..]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            writeln!(o, "{p:>8} {id:>8} {:>14} {:>14} {d:>12.2e}", got[p], want[p])?;
        }
        let verdict = if got == want { "the same argmax at every position" } else { "ARGMAX DIFFERS" };
        writeln!(o, "max |logit error| {err:.2e} against the plaintext model; {verdict}")?;
        write_generated(o, c)?;
        writeln!(o)?;
        write_costs(o, "client", &c.costs)?;
        writeln!(o)?;
        write_costs(o, "server", s)
    })
}

/// `run`'s report: per position the argmax and the top logits, the costs (or one JSON object
/// with every logit).
pub fn print_run(model: &Model, ids: &[u32], c: &ClientResult, s: &Costs, as_json: bool) -> anyhow::Result<()> {
    print_client_and(model, ids, c, Some(s), as_json)
}

/// The client's report after a run against a remote server.
pub fn print_client(model: &Model, ids: &[u32], c: &ClientResult, as_json: bool) -> anyhow::Result<()> {
    print_client_and(model, ids, c, None, as_json)
}

fn print_client_and(
    model: &Model,
    ids: &[u32],
    c: &ClientResult,
    s: Option<&Costs>,
    as_json: bool,
) -> anyhow::Result<()> {
    let out = &c.outputs[0];
    let key = if model.config.lm_head { "logits" } else { "hidden_states" };
    if as_json {
        let mut v = costs_json(&c.costs);
        v["model"] = json!(model.config.to_string());
        v["prompt_ids"] = json!(ids);
        v[key] = json!(out.values.chunks_exact(out.width).collect::<Vec<_>>());
        v["argmax"] = json!(out.argmax());
        v["generated"] = json!(c.generated);
        if let Some(text) = &c.generated_text {
            v["generated_text"] = json!(text);
        }
        if let Some(s) = s {
            v["server_wall_s"] = json!(s.wall_s);
        }
        return print(|o| writeln!(o, "{v}"));
    }
    print(|o| {
        writeln!(
            o,
            "{}: {} — {key} of {} positions, {} values each",
            model.origin,
            model.config,
            ids.len(),
            out.width
        )?;
        for (p, &id) in ids.iter().enumerate() {
            let row = out.row(p);
            let mut top: Vec<usize> = (0..row.len()).collect();
            top.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let shown: Vec<String> = top.iter().take(3).map(|&i| format!("{i}: {:.3}", row[i])).collect();
            writeln!(o, "  position {p:>4} (token {id:>6}): {}", shown.join(", "))?;
        }
        write_generated(o, c)?;
        writeln!(o)?;
        write_costs(o, "client", &c.costs)?;
        if let Some(s) = s {
            writeln!(o)?;
            write_costs(o, "server", s)?;
        }
        Ok(())
    })
}

/// The server's line after serving one client.
pub fn print_served(forwards: usize, c: &Costs) {
    let _ = (|| -> io::Result<()> {
        let o = &mut io::stdout().lock();
        writeln!(o, "served {forwards} forward(s)")?;
        write_costs(o, "server", c)
    })();
}

/// `ranges`' report: every site with its largest magnitude and its protocol's range (or one
/// JSON object).
pub fn print_ranges(
    model: &Model,
    prompts: usize,
    norms: NormRange,
    ranges: &Ranges,
    as_json: bool,
) -> anyhow::Result<()> {
    if as_json {
        let sites: Vec<serde_json::Value> = ranges
            .sites()
            .iter()
            .map(|r| {
                json!({"site": r.site, "quantity": r.quantity.to_string(), "max_abs": r.max,
                       "limit": r.limit, "exceeded": r.exceeded()})
            })
            .collect();
        let margins: Vec<serde_json::Value> =
            ranges.margins().iter().map(|m| json!({"site": m.site(), "token": m.token, "margin": m.gap})).collect();
        let v = json!({"model": model.config.to_string(), "prompts": prompts, "sites": sites,
                       "exceeded": ranges.exceeded().count(), "norm_range_bits": norms.bits(),
                       "norm_range_bits_needed": ranges.norms_needed().map(|n| n.bits()),
                       "routing_margins": margins});
        return print(|o| writeln!(o, "{v}"));
    }
    print(|o| {
        writeln!(o, "{} — the plaintext model on {prompts} prompt(s)", model.config)?;
        writeln!(o, "{:<24} {:<30} {:>12} {:>8}", "site", "value", "max |x|", "range")?;
        for r in ranges.sites() {
            let verdict = if r.exceeded() { "  BEYOND" } else { "" };
            writeln!(o, "{:<24} {:<30} {:>12.3} {:>8}{verdict}", r.site, r.quantity.to_string(), r.max, r.limit)?;
        }
        match ranges.exceeded().count() {
            0 => writeln!(o, "every value within its protocol's range")?,
            n => writeln!(o, "{n} site(s) beyond their protocol's range: the private output would be wrong")?,
        }
        match ranges.norms_needed() {
            Some(n) if n.bits() > norms.bits() => {
                writeln!(o, "the norms' inputs need --norm-range {} (both parties)", n.bits())?
            }
            None => {
                writeln!(o, "the norms' inputs are beyond the widest range they take, 2^{}", NormRange::BITS.end())?
            }
            _ => {}
        }
        if let Some(m) = ranges.narrowest() {
            writeln!(
                o,
                "narrowest routing choice: {}, token {}, by {:.1e}{}",
                m.site(),
                m.token,
                m.gap,
                if m.near_tie() {
                    " — a near-tie: a private run, its router logits off by the fixed point's error, may route that token to the next expert"
                } else {
                    ""
                }
            )?;
        }
        Ok(())
    })
}

/// Warns on stderr of each site the plaintext model takes beyond its protocol's range.
pub fn warn_ranges(ranges: &Ranges) {
    for r in ranges.exceeded() {
        eprintln!(
            "warning: {} ({}) reaches {:.3} on this prompt, beyond the protocol's |x| < {}: the private output will be wrong (`secmoe ranges`)",
            r.site, r.quantity, r.max, r.limit
        );
    }
}
