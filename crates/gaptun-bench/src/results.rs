//! What a run measured, serialised to JSON and rendered by `report`.

use serde::Serialize;

use crate::emulator::LinkStats;
use crate::measure::latency::LatencyResult;
use crate::scenarios::Scenario;

/// One bulk (iperf3) test of one system.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BulkResult {
    /// Parallel streams.
    pub streams: u32,
    /// Server to client (download) when true.
    pub reverse: bool,
    /// Goodput in Mbit/s after the warm-up (over the whole test when iperf3 gave no intervals).
    pub mbit: Option<f64>,
    /// Goodput in Mbit/s over the whole test, warm-up included.
    pub whole_mbit: Option<f64>,
    /// Bytes offered to the link (both directions) per goodput byte, in the steady part of the
    /// test (rates after the warm-up; see `runner::steady_wire_ratio`).
    pub wire_ratio: Option<f64>,
    /// The same over the whole test: all link bytes ÷ all bytes the receiver counted, start-up
    /// and the drain after the receiver stopped counting included.
    pub wire_ratio_whole: Option<f64>,
    /// Goodput bytes over the whole test.
    pub bytes: u64,
    /// Link bytes over the whole test.
    pub wire_bytes: u64,
    /// Link counters over the whole test (lost and queue-dropped packets per direction).
    pub link: LinkStats,
    /// Seconds and link counters of the steady window the wire ratio is measured on.
    pub steady_link: Option<(f64, LinkStats)>,
    /// Goodput of the competing direct cubic flow (competing scenario).
    pub competitor_mbit: Option<f64>,
    /// TCP retransmissions of the iperf3 sender (direct TCP: on the link; tunnels: loopback).
    pub retransmits: Option<u64>,
    /// Congestion controller of the iperf3 sender, as iperf3 reports it.
    pub sender_congestion: Option<String>,
    /// Why the test failed.
    pub error: Option<String>,
}

impl BulkResult {
    /// Short column label, e.g. `1×↑`.
    pub fn label(&self) -> String {
        format!("{}×{}", self.streams, if self.reverse { "↓" } else { "↑" })
    }
}

/// Everything measured for one system in one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct SystemResult {
    /// System name.
    pub system: String,
    /// Bulk tests.
    pub bulk: Vec<BulkResult>,
    /// Tunnel CPU seconds per GB of goodput over the bulk tests.
    pub cpu_s_per_gb: Option<f64>,
    /// Peak RSS over the tunnel processes, MiB (sum of client and server).
    pub peak_rss_mib: Option<f64>,
    /// Latency through the forward (or directly for TCP).
    pub latency_forward: Option<LatencyResult>,
    /// Latency through SOCKS5.
    pub latency_socks: Option<LatencyResult>,
    /// Expose systems: a new visitor connection per request, connect to first response byte.
    pub latency_first_byte: Option<LatencyResult>,
    /// Expose systems, clean scenario: many idle visitor connections held at once.
    pub idle: Option<crate::measure::idle::IdleReport>,
    /// Why the system could not be measured (start failure), or latency errors.
    pub notes: Vec<String>,
}

impl SystemResult {
    /// Wire bytes per goodput byte over the successful bulk tests: their steady ratios
    /// weighted by goodput (that is, total wire rate ÷ total goodput rate).
    pub fn wire_ratio(&self) -> Option<f64> {
        let (g, w) = self
            .bulk
            .iter()
            .filter_map(|b| Some((b.mbit?, b.wire_ratio?)))
            .fold((0.0, 0.0), |(g, w), (m, r)| (g + m, w + m * r));
        (g > 0.0).then(|| w / g)
    }
}

/// One scenario's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioResult {
    /// The link shape.
    pub scenario: Scenario,
    /// Per system.
    pub systems: Vec<SystemResult>,
    /// Link counters over the whole scenario.
    pub link: LinkStats,
    /// Setup failure of the scenario itself.
    pub error: Option<String>,
}

/// The machine the run happened on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// Tool versions.
    pub tools: Vec<String>,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    /// UTC date and time.
    pub date: String,
    /// Where.
    pub machine: Machine,
    /// `--quick` or full.
    pub quick: bool,
    /// iperf3 test length measured, after the warm-up.
    pub seconds_per_test: u64,
    /// Seconds at the start of each iperf3 test left out of the goodput.
    pub warmup_seconds: u64,
    /// Latency exchanges per measurement.
    pub latency_count: usize,
    /// Per scenario.
    pub scenarios: Vec<ScenarioResult>,
    /// Remarks (skipped systems ...).
    pub notes: Vec<String>,
}
