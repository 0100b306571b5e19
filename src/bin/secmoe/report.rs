//! Plain-text tables of what a run cost.

use std::io::{self, Write};

use crate::demo::DemoOutcome;
use secmoe::net::{CostModel, Report, StepStats};

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
    for (name, s) in &report.steps {
        row(out, name, s)?;
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

fn write_outcome(out: &mut impl Write, o: &DemoOutcome) -> io::Result<()> {
    writeln!(out, "== {} ({:.2} s wall)", o.party, o.wall_s)?;
    write_report(out, &o.report)?;
    let v = o.verify.total();
    writeln!(out, "  (verification outside the protocol: {} moved, not counted above)", human_bytes(v.bytes()))?;
    for c in &o.checks {
        writeln!(out, "  ok: {c}")?;
    }
    writeln!(out)
}

/// Prints one party's outcome of the demo to stdout. A closed stdout (`secmoe demo | head`) is
/// not an error of the run, so write failures are ignored.
pub fn print_outcome(o: &DemoOutcome) {
    let _ = write_outcome(&mut io::stdout().lock(), o);
}
