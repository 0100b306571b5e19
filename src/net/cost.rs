//! The network cost model: `time = compute + bytes / bandwidth + rounds · latency`.

/// A network setting used to turn measured (compute, bytes, rounds) into an estimated wall time.
///
/// `rounds` are round trips (see [`super::Meter`]), so `latency` is the round-trip time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Short name used in reports.
    pub name: &'static str,
    /// Bandwidth in bits per second.
    pub bandwidth_bps: f64,
    /// Round-trip latency in seconds.
    pub latency_s: f64,
}

impl CostModel {
    /// LAN as in the SecMoE and BumbleBee papers: 1 Gbps, 0.5 ms.
    pub const LAN: CostModel = CostModel { name: "LAN", bandwidth_bps: 1e9, latency_s: 0.5e-3 };
    /// WAN as in the SecMoE and BumbleBee papers: 400 Mbps, 4 ms.
    pub const WAN: CostModel = CostModel { name: "WAN", bandwidth_bps: 400e6, latency_s: 4e-3 };

    /// Estimated seconds for a run that computed for `compute_s`, moved `bytes` (both directions
    /// together) and needed `rounds` round trips.
    pub fn estimate(&self, compute_s: f64, bytes: u64, rounds: u64) -> f64 {
        compute_s + bytes as f64 * 8.0 / self.bandwidth_bps + rounds as f64 * self.latency_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_adds_compute_transfer_and_latency() {
        // 1 s compute, 125 MB = 1 Gbit, 10 round trips.
        let t = CostModel::LAN.estimate(1.0, 125_000_000, 10);
        assert!((t - (1.0 + 1.0 + 0.005)).abs() < 1e-12);
        let w = CostModel::WAN.estimate(0.0, 50_000_000, 1);
        assert!((w - (1.0 + 0.004)).abs() < 1e-12);
    }
}
