//! The benchmark scenarios: link shapes applied symmetrically to both directions.

use std::time::Duration;

use serde::Serialize;

use crate::emulator::LinkConfig;
use crate::emulator::pipeline::{GilbertElliott, ImpairConfig, QueueLimit};

/// Family a scenario belongs to; the goodput-vs-loss chart plots the `LossSweep` family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Family {
    /// No emulated link at all: visitor, tunnel and service share namespace A's loopback
    /// (every system: servers listen on 127.0.0.1 instead of the link address).
    Loopback,
    /// No impairment at all: the emulator's own ceiling.
    Clean,
    /// 100 Mbit/s, 100 ms RTT at increasing random loss.
    LossSweep,
    /// A slow, long link.
    LongFat,
    /// Burst (Gilbert–Elliott) loss.
    Burst,
    /// The system under test shares the bottleneck with a direct cubic TCP flow.
    Competing,
}

/// One link shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    /// Short id used on the command line and in file names.
    pub id: String,
    /// Human title for the report.
    pub title: String,
    /// Which family.
    pub family: Family,
    /// Bottleneck rate in Mbit/s (`None`: unlimited).
    pub rate_mbit: Option<f64>,
    /// Round-trip time (split evenly between the directions).
    pub rtt_ms: u64,
    /// Random loss per direction, in percent.
    pub loss_pct: f64,
    /// Burst loss per direction.
    pub burst: Option<GilbertElliott>,
}

impl Scenario {
    fn new(id: &str, title: &str, family: Family, rate: Option<f64>, rtt: u64, loss: f64) -> Self {
        Self {
            id: id.to_string(),
            title: title.to_string(),
            family,
            rate_mbit: rate,
            rtt_ms: rtt,
            loss_pct: loss,
            burst: None,
        }
    }

    /// Bandwidth-delay product in bytes (the queue size), at least 64 KiB.
    pub fn bdp_bytes(&self) -> u64 {
        let bdp = self
            .rate_mbit
            .map_or(0.0, |r| r * 1e6 / 8.0 * self.rtt_ms as f64 / 1000.0);
        (bdp as u64).max(64 * 1024)
    }

    /// The emulator configuration: half the RTT each way, the same loss both ways, a
    /// drop-tail queue of one BDP.
    pub fn link(&self, seed: u64) -> LinkConfig {
        let dir = ImpairConfig {
            delay: Duration::from_micros(self.rtt_ms * 500),
            jitter: Duration::ZERO,
            loss: self.loss_pct / 100.0,
            burst: self.burst,
            rate_bps: self.rate_mbit.map(|r| (r * 1e6) as u64),
            queue: QueueLimit::Bytes(self.bdp_bytes()),
            reorder: None,
        };
        LinkConfig {
            a_to_b: dir.clone(),
            b_to_a: dir,
            seed,
        }
    }
}

/// Every scenario of the full run.
pub fn all() -> Vec<Scenario> {
    let mut v = vec![Scenario::new(
        "clean",
        "Clean link (no impairment)",
        Family::Clean,
        None,
        0,
        0.0,
    )];
    for loss in [0.0, 1.0, 5.0, 10.0, 20.0] {
        v.push(Scenario::new(
            &format!("100m-100ms-{loss}pct"),
            &format!("100 Mbit/s, 100 ms RTT, {loss} % loss"),
            Family::LossSweep,
            Some(100.0),
            100,
            loss,
        ));
    }
    v.push(Scenario::new(
        "20m-300ms-3pct",
        "20 Mbit/s, 300 ms RTT, 3 % loss",
        Family::LongFat,
        Some(20.0),
        300,
        3.0,
    ));
    let ge = GilbertElliott {
        p_good_to_bad: 0.005,
        p_bad_to_good: 0.25,
        loss_good: 0.0,
        loss_bad: 1.0,
    };
    let mut burst = Scenario::new(
        "100m-100ms-burst",
        &format!(
            "100 Mbit/s, 100 ms RTT, burst loss (Gilbert–Elliott, {:.1} % mean, mean burst {:.0} packets)",
            ge.mean_loss() * 100.0,
            1.0 / ge.p_bad_to_good
        ),
        Family::Burst,
        Some(100.0),
        100,
        0.0,
    );
    burst.burst = Some(ge);
    v.push(burst);
    v.push(Scenario::new(
        "competing",
        "Two competing flows: system under test + direct cubic TCP, 100 Mbit/s, 100 ms RTT, 0.1 % loss",
        Family::Competing,
        Some(100.0),
        100,
        0.1,
    ));
    v
}

/// The scenarios of `--quick`: the loss sweep at 1, 5 and 10 %, where the targets are
/// set.
pub fn quick() -> Vec<Scenario> {
    all()
        .into_iter()
        .filter(|s| s.family == Family::LossSweep && [1.0, 5.0, 10.0].contains(&s.loss_pct))
        .collect()
}

/// Default scenarios of the expose run (`--expose`): loopback (bulk ceiling, idle
/// connections) and the lossy target link.
pub const EXPOSE: &str = "loopback,100m-100ms-5pct";

/// The loopback scenario: no emulated link (the emulator's namespaces exist, but every process
/// runs in namespace A and talks over its loopback): tunnel servers listen on 127.0.0.1 and
/// direct TCP is plain loopback TCP, the ceiling the tunnels are compared with.
pub fn loopback() -> Scenario {
    Scenario::new(
        "loopback",
        "Loopback (no emulated link: visitor, tunnel and service in one namespace)",
        Family::Loopback,
        None,
        0,
        0.0,
    )
}

/// Picks scenarios by id (comma-separated), from the full list and `loopback`.
pub fn select(ids: &str) -> Vec<Scenario> {
    let wanted: Vec<&str> = ids.split(',').map(str::trim).collect();
    std::iter::once(loopback())
        .chain(all())
        .filter(|s| wanted.contains(&s.id.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdp_and_link_shape() {
        let s = all()
            .into_iter()
            .find(|s| s.id == "100m-100ms-1pct")
            .unwrap();
        assert_eq!(s.bdp_bytes(), 1_250_000);
        let l = s.link(1);
        assert_eq!(l.a_to_b.delay, Duration::from_millis(50));
        assert_eq!(l.a_to_b.rate_bps, Some(100_000_000));
        assert_eq!(l.a_to_b.queue, QueueLimit::Bytes(1_250_000));
        assert!((l.b_to_a.loss - 0.01).abs() < 1e-12);
    }

    #[test]
    fn quick_and_select() {
        let q: Vec<String> = quick().into_iter().map(|s| s.id).collect();
        assert_eq!(
            q,
            ["100m-100ms-1pct", "100m-100ms-5pct", "100m-100ms-10pct"]
        );
        assert_eq!(select("clean, competing").len(), 2);
        assert_eq!(
            select(EXPOSE)
                .into_iter()
                .map(|s| s.family)
                .collect::<Vec<_>>(),
            [Family::Loopback, Family::LossSweep]
        );
        assert_eq!(all().len(), 9);
    }
}
