//! The performance targets of the benchmark issue, checked against one run's figures.
//!
//! At 100 Mbit/s and 100 ms RTT (the loss-sweep scenarios):
//! - gaptun goodput ≥ 0.90 × rate × (1 − loss) at 1, 5 and 10 % loss;
//! - gaptun goodput ≥ 3 × kcptun fast3's at 10 % loss;
//! - wire bytes ÷ goodput ≤ 1.05 + the loss share, checked two ways: with the share taken as
//!   the loss rate (the literal reading), and as the bytes the link dropped over goodput (what
//!   retransmission must cost: at loss `p` it is about `p / (1 − p)` of the goodput, so the
//!   literal bound at 10 % sits below what any protocol sending 1500-byte packets can reach);
//! - p99 small-request latency at 5 % loss ≤ 2 RTT + server time (server time: the direct TCP
//!   median minus one RTT, i.e. what the far end and the host add to a round trip).
//!
//! Goodput is the single-stream upload (the test every run has). The verdict is given for the
//! default controller (`gaptun-bbr`); the other controllers are listed for comparison.

use std::fmt::Write as _;

use crate::emulator::LinkStats;
use crate::results::{BulkResult, RunResult, ScenarioResult, SystemResult};
use crate::scenarios::Family;

/// The controller the verdict is about.
pub const DEFAULT_SYSTEM: &str = "gaptun-bbr";
/// IPv4 + UDP header bytes per datagram, for the ratio at UDP-payload level.
const IP_UDP_HEADER: u64 = 28;

/// One checked target.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What is checked.
    pub target: String,
    /// Which system.
    pub system: String,
    /// The measured figure, formatted.
    pub figure: String,
    /// The bound, formatted.
    pub bound: String,
    /// Met, missed, or unknown (not measured in this run).
    pub met: Option<bool>,
}

fn loss_sweep(run: &RunResult, loss: f64) -> Option<&ScenarioResult> {
    run.scenarios.iter().find(|s| {
        s.scenario.family == Family::LossSweep
            && (s.scenario.loss_pct - loss).abs() < 1e-9
            && s.scenario.rate_mbit.is_some()
    })
}

fn system<'a>(sc: &'a ScenarioResult, name: &str) -> Option<&'a SystemResult> {
    sc.systems.iter().find(|r| r.system == name)
}

/// The single-stream upload test.
fn upload(r: &SystemResult) -> Option<&BulkResult> {
    r.bulk.iter().find(|b| b.streams == 1 && !b.reverse)
}

fn gaptun_systems(sc: &ScenarioResult) -> impl Iterator<Item = &SystemResult> {
    sc.systems.iter().filter(|r| r.system.starts_with("gaptun"))
}

/// The wire ratio of the steady windows scaled by `part(link)`, a share of the wire bytes,
/// averaged over the bulk tests weighted by goodput like [`SystemResult::wire_ratio`].
fn weighted_wire_share(r: &SystemResult, part: impl Fn(&LinkStats) -> f64) -> Option<f64> {
    let (g, w) = r
        .bulk
        .iter()
        .filter_map(|b| {
            let (_, link) = b.steady_link.as_ref()?;
            let ratio = b.wire_ratio?;
            let mbit = b.mbit?;
            (link.wire_bytes() > 0).then(|| (mbit, mbit * ratio * part(link)))
        })
        .fold((0.0, 0.0), |(g, w), (m, x)| (g + m, w + x));
    (g > 0.0).then(|| w / g)
}

/// The wire ratio of the steady windows without the IPv4/UDP headers: UDP payload bytes ÷
/// goodput.
pub fn udp_level_ratio(r: &SystemResult) -> Option<f64> {
    weighted_wire_share(r, |link| {
        let bytes = link.wire_bytes();
        let packets = link.a_to_b.counters.packets_in + link.b_to_a.counters.packets_in;
        bytes.saturating_sub(IP_UDP_HEADER * packets) as f64 / bytes as f64
    })
}

/// The link's own share of the wire ratio: bytes the emulator dropped by random or burst loss
/// over goodput bytes, in the steady windows. No protocol can avoid putting these on the wire
/// (each lost byte must be sent again); queue drops are not included, since a sender that
/// overfills the queue causes them.
pub fn link_loss_share(r: &SystemResult) -> Option<f64> {
    weighted_wire_share(r, |link| {
        let lost = link.a_to_b.counters.bytes_lost + link.b_to_a.counters.bytes_lost;
        lost as f64 / link.wire_bytes() as f64
    })
}

fn verdict(value: Option<f64>, ok: impl Fn(f64) -> bool) -> Option<bool> {
    value.map(ok)
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "not measured".into(), |x| format!("{x:.digits$}"))
}

/// Every check that this run's scenarios allow.
pub fn checks(run: &RunResult) -> Vec<Check> {
    let mut out = Vec::new();
    for loss in [1.0, 5.0, 10.0] {
        let Some(sc) = loss_sweep(run, loss) else {
            continue;
        };
        let rate = sc.scenario.rate_mbit.unwrap_or(0.0);
        let bound = 0.9 * rate * (1.0 - loss / 100.0);
        for r in gaptun_systems(sc) {
            let g = upload(r).and_then(|b| b.mbit);
            out.push(Check {
                target: format!("goodput ≥ 0.90 × rate × (1 − loss) at {loss} %"),
                system: r.system.clone(),
                figure: format!("{} Mbit/s", fmt(g, 1)),
                bound: format!("{bound:.1} Mbit/s"),
                met: verdict(g, |g| g >= bound),
            });
        }
    }
    if let Some(sc) = loss_sweep(run, 10.0) {
        let k = system(sc, "kcptun-fast3")
            .and_then(upload)
            .and_then(|b| b.mbit);
        for r in gaptun_systems(sc) {
            let g = upload(r).and_then(|b| b.mbit);
            let ratio = g.zip(k).filter(|(_, k)| *k > 0.0).map(|(g, k)| g / k);
            out.push(Check {
                target: "goodput ≥ 3 × kcptun fast3 at 10 %".into(),
                system: r.system.clone(),
                figure: format!("{}× ({} vs {} Mbit/s)", fmt(ratio, 1), fmt(g, 1), fmt(k, 1)),
                bound: "3×".into(),
                met: verdict(ratio, |x| x >= 3.0),
            });
        }
    }
    for loss in [1.0, 5.0, 10.0] {
        let Some(sc) = loss_sweep(run, loss) else {
            continue;
        };
        let bound = 1.05 + loss / 100.0;
        for r in gaptun_systems(sc) {
            let ip = r.wire_ratio();
            let udp = udp_level_ratio(r);
            out.push(Check {
                target: format!("wire ÷ goodput ≤ 1.05 + loss at {loss} %"),
                system: r.system.clone(),
                figure: format!(
                    "{} (IP packets; {} counting UDP payloads)",
                    fmt(ip, 3),
                    fmt(udp, 3)
                ),
                bound: format!("{bound:.2}"),
                met: verdict(ip, |x| x <= bound),
            });
            let share = link_loss_share(r);
            let measured_bound = share.map(|s| 1.05 + s);
            out.push(Check {
                target: format!(
                    "wire ÷ goodput ≤ 1.05 + measured loss share (bytes the link dropped ÷ \
                     goodput) at {loss} %"
                ),
                system: r.system.clone(),
                figure: fmt(ip, 3),
                bound: format!("{} (share {})", fmt(measured_bound, 3), fmt(share, 3)),
                met: ip.zip(measured_bound).map(|(x, bound)| x <= bound),
            });
        }
    }
    if let Some(sc) = loss_sweep(run, 5.0) {
        let rtt = sc.scenario.rtt_ms as f64;
        let server = system(sc, "tcp-cubic")
            .or_else(|| system(sc, "tcp-bbr"))
            .and_then(|r| r.latency_forward.as_ref())
            .map_or(0.0, |l| (l.p50_ms - rtt).max(0.0));
        let bound = 2.0 * rtt + server;
        for r in gaptun_systems(sc) {
            for (via, l) in [
                ("forward", r.latency_forward.as_ref()),
                ("SOCKS5", r.latency_socks.as_ref()),
            ] {
                let p99 = l.map(|l| l.p99_ms);
                out.push(Check {
                    target: format!("p99 request latency at 5 % ≤ 2 RTT + server time ({via})"),
                    system: r.system.clone(),
                    figure: format!("{} ms", fmt(p99, 1)),
                    bound: format!("{bound:.1} ms"),
                    met: verdict(p99, |x| x <= bound),
                });
            }
        }
    }
    out
}

/// The targets table, or an empty string when the run has none of the scenarios.
pub fn render(run: &RunResult) -> String {
    let checks = checks(run);
    if checks.is_empty() {
        return String::new();
    }
    let mut s = String::from("#### Targets (100 Mbit/s, 100 ms RTT)\n\n");
    let _ = writeln!(
        s,
        "The verdict is for the default controller, `{DEFAULT_SYSTEM}`; the others are shown \
         for comparison. Goodput: 1 stream up, after the warm-up. Wire ÷ goodput: all bulk \
         tests, steady state, every IP packet in both directions (the UDP-payload figure leaves \
         out the 28 bytes of IPv4 and UDP header per datagram). Server time: the direct TCP \
         median minus one RTT.\n"
    );
    s.push_str("| target | system | measured | bound | |\n|---|---|---|---|---|\n");
    for c in &checks {
        let mark = match (c.met, c.system == DEFAULT_SYSTEM) {
            (Some(true), true) => "**met**",
            (Some(false), true) => "**missed**",
            (Some(true), false) => "(met)",
            (Some(false), false) => "(missed)",
            (None, _) => "–",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            c.target, c.system, c.figure, c.bound, mark
        );
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::latency::LatencyResult;
    use crate::results::Machine;
    use crate::scenarios;

    fn bulk(mbit: f64, ratio: f64) -> BulkResult {
        let mut link = LinkStats::default();
        link.a_to_b.counters.bytes_in = 1_000_000;
        link.a_to_b.counters.packets_in = 1000;
        BulkResult {
            streams: 1,
            reverse: false,
            mbit: Some(mbit),
            whole_mbit: Some(mbit),
            wire_ratio: Some(ratio),
            wire_ratio_whole: Some(ratio),
            bytes: 1,
            wire_bytes: 1,
            link,
            steady_link: Some((2.0, link)),
            competitor_mbit: None,
            retransmits: None,
            sender_congestion: None,
            error: None,
        }
    }

    fn latency(p50: f64, p99: f64) -> LatencyResult {
        LatencyResult {
            p50_ms: p50,
            p99_ms: p99,
            errors: 0,
            samples_ms: vec![p50, p99],
            timeline: Vec::new(),
            stalls: None,
        }
    }

    fn sys(name: &str, mbit: f64, ratio: f64, lat: Option<(f64, f64)>) -> SystemResult {
        SystemResult {
            system: name.into(),
            bulk: vec![bulk(mbit, ratio)],
            latency_forward: lat.map(|(a, b)| latency(a, b)),
            ..Default::default()
        }
    }

    fn run() -> RunResult {
        let scenario = |loss: f64, systems: Vec<SystemResult>| ScenarioResult {
            scenario: scenarios::all()
                .into_iter()
                .find(|s| s.family == Family::LossSweep && s.loss_pct == loss)
                .unwrap(),
            systems,
            link: LinkStats::default(),
            error: None,
        };
        RunResult {
            date: "d".into(),
            machine: Machine {
                cpu: "c".into(),
                cores: 2,
                kernel: "k".into(),
                tools: vec![],
            },
            quick: true,
            seconds_per_test: 3,
            warmup_seconds: 1,
            scenarios: vec![
                scenario(
                    5.0,
                    vec![
                        sys("tcp-cubic", 10.0, 1.0, Some((100.5, 300.0))),
                        sys("gaptun-bbr", 90.0, 1.12, Some((100.8, 200.4))),
                    ],
                ),
                scenario(
                    10.0,
                    vec![
                        sys("kcptun-fast3", 9.0, 1.7, None),
                        sys("gaptun-bbr", 80.0, 1.2, None),
                    ],
                ),
            ],
            latency_count: 100,
            notes: vec![],
        }
    }

    #[test]
    fn loss_share_is_dropped_bytes_over_goodput() {
        let mut b = bulk(90.0, 1.2);
        if let Some((_, link)) = b.steady_link.as_mut() {
            // 100 000 of the 1 000 000 wire bytes were dropped by the link.
            link.b_to_a.counters.bytes_lost = 100_000;
        }
        let mut r = sys("gaptun-bbr", 90.0, 1.2, None);
        r.bulk = vec![b];
        let share = link_loss_share(&r).unwrap();
        assert!((share - 0.12).abs() < 1e-9, "{share}");
    }

    #[test]
    fn checks_use_the_issue_bounds() {
        let c = checks(&run());
        let find = |t: &str, loss: &str| {
            c.iter()
                .find(|c| c.target.starts_with(t) && c.target.contains(loss))
                .unwrap()
                .clone()
        };
        let g5 = find("goodput ≥ 0.90", "5 %");
        assert_eq!(g5.bound, "85.5 Mbit/s");
        assert_eq!(g5.met, Some(true));
        let g10 = find("goodput ≥ 0.90", "10 %");
        assert_eq!(g10.bound, "81.0 Mbit/s");
        assert_eq!(g10.met, Some(false));
        let k = find("goodput ≥ 3", "10 %");
        assert!(k.figure.starts_with("8.9×"), "{}", k.figure);
        assert_eq!(k.met, Some(true));
        let w5 = find("wire", "5 %");
        assert_eq!(w5.bound, "1.10");
        assert_eq!(w5.met, Some(false));
        // 28 of every 1000 bytes are headers.
        assert!(w5.figure.contains("1.089"), "{}", w5.figure);
        // No bytes dropped by the link in these figures: the measured share is 0.
        let m5 = find("wire ÷ goodput ≤ 1.05 + measured", "5 %");
        assert_eq!(m5.bound, "1.050 (share 0.000)");
        assert_eq!(m5.met, Some(false));
        let l = find("p99", "forward");
        // 2 × 100 ms + (100.5 − 100) ms of server time.
        assert_eq!(l.bound, "200.5 ms");
        assert_eq!(l.met, Some(true));
        assert_eq!(find("p99", "SOCKS5").met, None);
        // No 1 % scenario in this run: no check for it.
        assert!(c.iter().all(|c| !c.target.contains(" 1 %")));
        let table = render(&run());
        assert!(table.contains("| **met** |"));
        assert!(table.contains("| **missed** |"));
    }
}
