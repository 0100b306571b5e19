//! Plain-text tables of what a run cost.

use secmoe::demo::DemoOutcome;
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

fn row(name: &str, s: &StepStats) {
    println!(
        "  {:<28} {:>11} {:>11} {:>7} {:>9.3}",
        name,
        human_bytes(s.bytes_sent),
        human_bytes(s.bytes_received),
        s.rounds,
        s.seconds
    );
}

/// Prints a step table with totals and the LAN/WAN estimates.
pub fn print_report(report: &Report) {
    println!("  {:<28} {:>11} {:>11} {:>7} {:>9}", "step", "sent", "received", "rounds", "time (s)");
    for (name, s) in &report.steps {
        row(name, s);
    }
    let t = report.total();
    row("total", &t);
    for net in [CostModel::LAN, CostModel::WAN] {
        println!(
            "  estimated {} ({} Gbps, {} ms RTT): {:.3} s",
            net.name,
            net.bandwidth_bps / 1e9,
            net.latency_s * 1e3,
            net.estimate(t.seconds, t.bytes(), t.rounds)
        );
    }
}

/// Prints one party's outcome of the demo.
pub fn print_outcome(out: &DemoOutcome) {
    println!("== {} ({:.2} s wall)", out.party, out.wall_s);
    print_report(&out.report);
    let v = out.verify.total();
    println!("  (verification outside the protocol: {} moved, not counted above)", human_bytes(v.bytes()));
    for c in &out.checks {
        println!("  ok: {c}");
    }
    println!();
}
