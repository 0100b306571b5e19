//! Which OT extension to use, chosen through the network cost model.

use crate::net::CostModel;

/// An OT extension protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtKind {
    /// IKNP: cheap to compute, 128 bits on the wire per OT.
    Iknp,
    /// Silent OT (PCG-based): a fraction of a bit per OT, more computation.
    Silent,
}

impl OtKind {
    /// Both kinds.
    pub const ALL: [OtKind; 2] = [OtKind::Iknp, OtKind::Silent];

    /// Name of the meter step an extension call is charged to.
    pub fn step_name(self) -> &'static str {
        match self {
            OtKind::Iknp => "ot-iknp",
            OtKind::Silent => "ot-silent",
        }
    }

    /// Measured cost of one random OT on the reference 2-core machine (both parties in one
    /// process, `benches/ot.rs`): (nanoseconds of compute, bits on the wire).
    pub fn cost_per_ot(self) -> (f64, f64) {
        match self {
            OtKind::Iknp => (IKNP_NS_PER_OT, IKNP_BITS_PER_OT),
            OtKind::Silent => (SILENT_NS_PER_OT, SILENT_BITS_PER_OT),
        }
    }

    /// The kind with the lower estimated time for a large batch on `network`.
    pub fn cheapest_for(network: &CostModel) -> OtKind {
        let time = |k: OtKind| {
            let (ns, bits) = k.cost_per_ot();
            ns * 1e-9 + bits / network.bandwidth_bps
        };
        if time(OtKind::Silent) < time(OtKind::Iknp) { OtKind::Silent } else { OtKind::Iknp }
    }
}

impl std::fmt::Display for OtKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OtKind::Iknp => "IKNP",
            OtKind::Silent => "silent",
        })
    }
}

impl std::str::FromStr for OtKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "iknp" => Ok(OtKind::Iknp),
            "silent" => Ok(OtKind::Silent),
            other => Err(format!("unknown OT kind `{other}` (expected `iknp` or `silent`)")),
        }
    }
}

// Figures from `cargo bench --bench ot` on the reference machine (see README); refresh them
// when the extension, the build or the machine changes.
// Measured 2026-12-02, built at x86-64-v2 (the silent extension's SSE4.1 encoder): IKNP 12.4 M
// random OT/s, 128.03 bits; silent 5.0 M/s, 1.38 bits (batches of 2^20, base OTs included).
const IKNP_NS_PER_OT: f64 = 80.5;
const IKNP_BITS_PER_OT: f64 = 128.0;
const SILENT_NS_PER_OT: f64 = 199.6;
const SILENT_BITS_PER_OT: f64 = 1.4;

#[cfg(test)]
mod tests {
    use super::*;

    /// Silent OT up to about 1.06 Gbit/s (the LAN model's 1 Gbit/s included, by a hair),
    /// IKNP on faster links.
    #[test]
    fn silent_wins_up_to_a_gigabit_and_iknp_beyond() {
        assert_eq!(OtKind::cheapest_for(&CostModel::WAN), OtKind::Silent);
        assert_eq!(OtKind::cheapest_for(&CostModel::LAN), OtKind::Silent);
        let fast = CostModel { name: "10G", bandwidth_bps: 10e9, latency_s: 0.1e-3 };
        assert_eq!(OtKind::cheapest_for(&fast), OtKind::Iknp);
    }

    #[test]
    fn kinds_parse_from_their_names() {
        assert_eq!("IKNP".parse::<OtKind>(), Ok(OtKind::Iknp));
        assert_eq!("silent".parse::<OtKind>(), Ok(OtKind::Silent));
        assert!("kos".parse::<OtKind>().is_err());
    }
}
