//! Runs the scenarios: for each, build the link, start the servers, then measure each system.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::emulator::{ADDR_A, ADDR_B, Emulator, LinkStats};
use crate::error::Result;
use crate::measure::iperf::{self, IperfSpec};
use crate::measure::stalls::{self, StallProbe};
use crate::measure::{idle, latency, procstat};
use crate::procs::{self, Managed};
use crate::results::{BulkResult, ScenarioResult, SystemResult};
use crate::scenarios::{Family, Scenario};
use crate::systems::{
    COMPETE_PORT, Env, FWD_IDLE_PORT, IDLE_PORT, IPERF_PORT, RR_PORT, Running, System,
};

/// Knobs of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// iperf3 test length measured, after the warm-up.
    pub seconds: u64,
    /// Seconds at the start of each iperf3 test not counted in the goodput.
    pub warmup: u64,
    /// (streams, reverse) of each bulk test.
    pub tests: Vec<(u32, bool)>,
    /// Exchanges per latency measurement.
    pub latency_count: usize,
    /// Parallel connections of the latency client.
    pub latency_conns: usize,
    /// Idle visitor connections held at once (expose systems, clean scenario; 0: skip).
    pub idle_conns: usize,
    /// Seed of the link emulator.
    pub seed: u64,
    /// This binary.
    pub exe: PathBuf,
    /// Where process logs go.
    pub logdir: PathBuf,
}

/// Progress printer: one line per step, with time since the start.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
}

impl Progress {
    /// Starts the clock.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Prints one step.
    pub fn step(&self, msg: &str) {
        eprintln!("[{:>5.0}s] {msg}", self.start.elapsed().as_secs_f64());
    }
}

/// Runs one scenario over all systems.
pub fn run_scenario(
    plan: &Plan,
    scenario: &Scenario,
    systems: &[System],
    p: &Progress,
) -> ScenarioResult {
    p.step(&format!("scenario {}: {}", scenario.id, scenario.title));
    let mut result = ScenarioResult {
        scenario: scenario.clone(),
        systems: Vec::new(),
        link: Default::default(),
        error: None,
    };
    let emu = match Emulator::start(std::process::id(), &scenario.link(plan.seed)) {
        Ok(e) => e,
        Err(e) => {
            p.step(&format!("  link setup failed: {e}"));
            result.error = Some(e.to_string());
            return result;
        }
    };
    // Loopback: everything in namespace A, the emulated link stays unused.
    let loopback = scenario.family == Family::Loopback;
    let env = Env {
        ns_a: emu.ns_a().to_string(),
        ns_b: if loopback { emu.ns_a() } else { emu.ns_b() }.to_string(),
        exe: plan.exe.clone(),
        logdir: plan.logdir.clone(),
        rate_mbit: scenario.rate_mbit,
        a_addr: if loopback { "127.0.0.1" } else { ADDR_A }.to_string(),
        b_addr: if loopback { "127.0.0.1" } else { ADDR_B }.to_string(),
    };
    for system in systems {
        if procs::interrupted() {
            break;
        }
        let r = run_system(plan, scenario, system, &env, &emu, p);
        result.systems.push(r);
    }
    result.link = emu.stats();
    result
}

/// Servers in namespace B for one system's measurements.
fn start_servers(plan: &Plan, env: &Env, competing: bool, expose: bool) -> Result<Vec<Managed>> {
    let mut v = vec![iperf::server(
        &env.ns_b,
        IPERF_PORT,
        &env.log("iperf3-server"),
    )?];
    if competing {
        v.push(iperf::server(
            &env.ns_b,
            COMPETE_PORT,
            &env.log("iperf3-compete"),
        )?);
    }
    let rr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], RR_PORT));
    v.push(latency::spawn_server(
        &env.ns_b,
        &plan.exe,
        rr,
        &env.log("rr-server"),
    )?);
    if expose {
        v.push(idle::spawn_sink(
            &env.ns_b,
            &plan.exe,
            SocketAddr::from(([127, 0, 0, 1], IDLE_PORT)),
            &env.log("idle-sink"),
        )?);
    }
    thread::sleep(Duration::from_millis(150));
    v.iter_mut().try_for_each(Managed::ensure_alive)?;
    Ok(v)
}

/// Measures one system in the current scenario.
fn run_system(
    plan: &Plan,
    scenario: &Scenario,
    system: &System,
    env: &Env,
    emu: &Emulator,
    p: &Progress,
) -> SystemResult {
    let mut res = SystemResult {
        system: system.name.clone(),
        ..Default::default()
    };
    let competing = scenario.family == Family::Competing;
    let servers = match start_servers(plan, env, competing, system.is_expose()) {
        Ok(s) => s,
        Err(e) => {
            p.step(&format!("  {}: servers failed: {e}", system.name));
            res.notes.push(format!("servers failed: {e}"));
            return res;
        }
    };
    let mut running = match system.start(env) {
        Ok(r) => r,
        Err(e) => {
            p.step(&format!("  {}: start failed: {e}", system.name));
            res.notes.push(format!("start failed: {e}"));
            return res;
        }
    };
    let pids = running.pids();
    let cpu0 = procstat::total_cpu_seconds(&pids);
    let tests = if competing {
        vec![(1, false)]
    } else {
        plan.tests.clone()
    };
    for (streams, reverse) in tests {
        if procs::interrupted() {
            return res;
        }
        let mut b = bulk_test(plan, env, emu, &running, streams, reverse, competing);
        if let Some(e) = b.error.clone()
            && running.ensure_alive().is_ok()
        {
            // One more try (a tunnel can drop iperf3's control connection under heavy loss);
            // the note keeps the failure on record.
            p.step(&format!("  {} {}: {e}; again", system.name, b.label()));
            res.notes
                .push(format!("{} failed once ({e}), then ran again", b.label()));
            b = bulk_test(plan, env, emu, &running, streams, reverse, competing);
        }
        p.step(&format!(
            "  {} {}: {}",
            system.name,
            b.label(),
            describe_bulk(&b)
        ));
        res.bulk.push(b);
        if let Err(e) = running.ensure_alive() {
            res.notes.push(format!("tunnel died: {e}"));
            break;
        }
    }
    let cpu = procstat::total_cpu_seconds(&pids) - cpu0;
    let bytes: u64 = res
        .bulk
        .iter()
        .filter(|b| b.mbit.is_some())
        .map(|b| b.bytes)
        .sum();
    if !pids.is_empty() && bytes > 0 {
        res.cpu_s_per_gb = Some(cpu / (bytes as f64 / 1e9));
    }
    if !competing {
        // A tunnel may still be moving the bulk test's buffered data after iperf3 returned;
        // exchanges measured meanwhile would queue behind it, or find the connection still
        // classed as bulk and their tails unprotected.
        let (waited, quiet) = wait_until_quiet(emu);
        p.step(&format!(
            "  {}: link quiet after {:.1} s",
            system.name,
            waited.as_secs_f64()
        ));
        if !quiet {
            res.notes.push(format!(
                "the link was still busy {:.1} s after the bulk tests; latency measured anyway",
                waited.as_secs_f64()
            ));
        }
        let label = format!("{}-{}", scenario.id, system.name);
        measure_latency(plan, env, &running, &label, &mut res, p);
    }
    if system.is_expose() {
        measure_expose(plan, env, scenario, &mut running, &mut res, p);
    }
    let rss: Vec<u64> = pids
        .iter()
        .filter_map(|p| procstat::peak_rss_kib(*p).ok())
        .collect();
    if !rss.is_empty() {
        res.peak_rss_mib = Some(rss.iter().sum::<u64>() as f64 / 1024.0);
    }
    drop(running);
    drop(servers);
    res
}

/// Bytes a quiet link carries at most per [`QUIET_SAMPLE`] (both directions): keepalives and
/// the odd ACK, not a transfer (12.5 KB per 100 ms is 1 Mbit/s).
const QUIET_BYTES: u64 = 12_500;
/// How often the link's counters are read while waiting for quiet.
const QUIET_SAMPLE: Duration = Duration::from_millis(100);
/// Consecutive quiet samples that make the link idle.
const QUIET_SAMPLES: u32 = 5;
/// Longest wait for an idle link.
const QUIET_LIMIT: Duration = Duration::from_secs(15);

/// Waits until the emulated link has carried almost nothing for half a second (or
/// [`QUIET_LIMIT`]); returns how long it waited and whether the link went quiet.
fn wait_until_quiet(emu: &Emulator) -> (Duration, bool) {
    let start = Instant::now();
    let mut last = emu.stats();
    let mut quiet = 0;
    while start.elapsed() < QUIET_LIMIT {
        thread::sleep(QUIET_SAMPLE);
        let now = emu.stats();
        let bytes = now.since(&last).wire_bytes();
        last = now;
        quiet = if bytes <= QUIET_BYTES { quiet + 1 } else { 0 };
        if quiet >= QUIET_SAMPLES {
            return (start.elapsed(), true);
        }
    }
    (start.elapsed(), false)
}

fn describe_bulk(b: &BulkResult) -> String {
    match (&b.error, b.mbit) {
        (Some(e), _) => format!("error: {e}"),
        (None, Some(m)) => {
            let mut s = format!("{m:.1} Mbit/s");
            if let Some(r) = b.wire_ratio {
                s.push_str(&format!(", wire/goodput {r:.3}"));
            }
            if let (Some(r), Some(cc)) = (b.retransmits, &b.sender_congestion) {
                s.push_str(&format!(", {cc} sender retransmits {r}"));
            }
            if let Some(c) = b.competitor_mbit {
                s.push_str(&format!(", competing cubic flow {c:.1} Mbit/s"));
            }
            s
        }
        (None, None) => "no result".into(),
    }
}

/// One iperf3 test (plus, in the competing scenario, a concurrent direct cubic flow).
fn bulk_test(
    plan: &Plan,
    env: &Env,
    emu: &Emulator,
    running: &Running,
    streams: u32,
    reverse: bool,
    competing: bool,
) -> BulkResult {
    let e = &running.endpoints;
    let spec = IperfSpec {
        host: e.bulk_host.clone(),
        port: e.bulk_port,
        seconds: plan.seconds,
        warmup: plan.warmup,
        streams,
        reverse,
        congestion: e.iperf_congestion.clone(),
    };
    let competitor = competing.then(|| {
        let ns = env.ns_a.clone();
        let spec = IperfSpec {
            host: ADDR_B.to_string(),
            port: COMPETE_PORT,
            seconds: plan.seconds,
            warmup: plan.warmup,
            streams: 1,
            reverse,
            congestion: Some("cubic".into()),
        };
        thread::spawn(move || iperf::run(&ns, &spec))
    });
    let before = emu.stats();
    let started = Instant::now();
    let (r, samples) = run_sampling(emu, || iperf::run(&env.ns_a, &spec));
    let link = emu.stats().since(&before);
    let wire = link.wire_bytes();
    let steady = data_start(&samples, reverse, started).and_then(|t0| {
        // The receiver's intervals run from its own test start, about when the data starts to
        // flow (its first data arrives one-way later, and the sender's first data entered the
        // link about one-way earlier), so the same offsets select the same traffic.
        let window = (
            t0 + Duration::from_secs(plan.warmup),
            t0 + Duration::from_secs(plan.warmup + plan.seconds),
        );
        steady_link(&samples, window)
    });
    let competitor_mbit = competitor
        .and_then(|h| h.join().ok())
        .and_then(|r| r.ok())
        .map(|r| r.steady_mbit.unwrap_or(r.mbit));
    match r {
        Ok(r) => BulkResult {
            streams,
            reverse,
            mbit: Some(r.steady_mbit.unwrap_or(r.mbit)),
            whole_mbit: Some(r.mbit),
            wire_ratio: if competing {
                None
            } else {
                r.steady_mbit
                    .and_then(|m| steady_wire_ratio(steady.as_ref(), m))
                    .or_else(|| (r.bytes > 0).then(|| wire as f64 / r.bytes as f64))
            },
            wire_ratio_whole: (r.bytes > 0 && !competing).then(|| wire as f64 / r.bytes as f64),
            bytes: r.bytes,
            wire_bytes: wire,
            link,
            steady_link: steady,
            competitor_mbit,
            // Only direct TCP's sender is on the link; a tunnel's iperf3 sender talks to
            // loopback, where its retransmissions say nothing about the tunnel.
            retransmits: r.retransmits.filter(|_| e.iperf_congestion.is_some()),
            sender_congestion: r.sender_congestion,
            error: None,
        },
        Err(err) => BulkResult {
            streams,
            reverse,
            mbit: None,
            whole_mbit: None,
            wire_ratio: None,
            wire_ratio_whole: None,
            bytes: 0,
            wire_bytes: wire,
            link,
            steady_link: steady,
            competitor_mbit,
            retransmits: None,
            sender_congestion: None,
            error: Some(err.to_string()),
        },
    }
}

/// How often the link counters are sampled during a bulk test.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Runs `f` while sampling the link counters every [`SAMPLE_EVERY`].
fn run_sampling<T: Send>(
    emu: &Emulator,
    f: impl FnOnce() -> T + Send,
) -> (T, Vec<(Instant, LinkStats)>) {
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut v = Vec::new();
            while !done.load(Ordering::Relaxed) {
                v.push((Instant::now(), emu.stats()));
                thread::sleep(SAMPLE_EVERY);
            }
            v
        });
        let r = f();
        done.store(true, Ordering::Relaxed);
        (r, sampler.join().unwrap_or_default())
    })
}

/// Bytes per sampling period in the data direction above which the test's data is flowing
/// (iperf3's control messages stay far below it).
const DATA_FLOWING_BYTES: u64 = 20_000;

/// When the test's data started to flow: the time of the sample before the first one whose
/// data-direction byte count (A→B for uploads, B→A for `reverse`) grew by more than
/// [`DATA_FLOWING_BYTES`]. The receiver's intervals start about then: iperf3 needs a few round
/// trips (more through a tunnel, and more again when a setup packet is lost) before it sends.
pub fn data_start(
    samples: &[(Instant, LinkStats)],
    reverse: bool,
    not_before: Instant,
) -> Option<Instant> {
    let bytes = |l: &LinkStats| {
        if reverse {
            l.b_to_a.counters.bytes_in
        } else {
            l.a_to_b.counters.bytes_in
        }
    };
    samples
        .windows(2)
        .find(|w| w[0].0 >= not_before && bytes(&w[1].1) > bytes(&w[0].1) + DATA_FLOWING_BYTES)
        .map(|w| w[0].0)
}

/// The link counters over the steady part of a test: the difference between the first sample
/// at or after `window.0` and the last one at or before `window.1`, with the seconds between
/// them. `None` if they span less than a second.
///
/// The caller aligns the window with the receiver's intervals that make the steady goodput:
/// from the warm-up to the nominal end, counted from [`data_start`].
pub fn steady_link(
    samples: &[(Instant, LinkStats)],
    window: (Instant, Instant),
) -> Option<(f64, LinkStats)> {
    let (t0, a) = samples.iter().find(|(t, _)| *t >= window.0)?;
    let (t1, b) = samples.iter().rev().find(|(t, _)| *t <= window.1)?;
    let secs = t1.checked_duration_since(*t0)?.as_secs_f64();
    (secs >= 1.0).then(|| (secs, b.since(a)))
}

/// Wire bytes per goodput byte in the steady part of a test: the link's byte rate (both
/// directions) over [`steady_link`]'s window divided by the receiver's goodput after the
/// warm-up (`steady_mbit`).
///
/// Measured on rates rather than totals because a test's totals include what the tunnel still
/// carries after the receiver stopped counting (buffered data drained while iperf3 exchanges
/// its results), which is not overhead of the protocol.
pub fn steady_wire_ratio(steady: Option<&(f64, LinkStats)>, steady_mbit: f64) -> Option<f64> {
    let (secs, link) = steady?;
    (steady_mbit > 0.0).then(|| link.wire_bytes() as f64 / secs / (steady_mbit * 1e6 / 8.0))
}

/// Latency through the forward and, when the system has one, through SOCKS5.
fn measure_latency(
    plan: &Plan,
    env: &Env,
    running: &Running,
    label: &str,
    res: &mut SystemResult,
    p: &Progress,
) {
    let e = &running.endpoints;
    save_stats(env, running, &format!("{label}-before-latency"));
    let probe = StallProbe::start();
    let fwd = latency::measure(
        &env.ns_a,
        &plan.exe,
        e.rr,
        None,
        plan.latency_count,
        plan.latency_conns,
    )
    .map(|l| with_stalls(l, probe));
    report_latency(&res.system, "forward", &fwd, p);
    save_stats(env, running, &format!("{label}-after-forward"));
    match fwd {
        Ok(l) => res.latency_forward = Some(l),
        Err(err) => res.notes.push(format!("forward latency: {err}")),
    }
    if let Some(socks) = e.socks {
        // Through SOCKS5 the target is named as the server side sees it.
        let target = SocketAddrV4::new([127, 0, 0, 1].into(), RR_PORT);
        let probe = StallProbe::start();
        let s = latency::measure(
            &env.ns_a,
            &plan.exe,
            target,
            Some(socks),
            plan.latency_count,
            plan.latency_conns,
        )
        .map(|l| with_stalls(l, probe));
        report_latency(&res.system, "SOCKS5", &s, p);
        save_stats(env, running, &format!("{label}-after-socks"));
        match s {
            Ok(l) => res.latency_socks = Some(l),
            Err(err) => res.notes.push(format!("SOCKS5 latency: {err}")),
        }
    }
}

/// The expose scenario's own measurements: time from a new visitor connection to the first
/// response byte, and (on the clean link) many idle visitor connections with the daemons'
/// resident set while they are held.
fn measure_expose(
    plan: &Plan,
    env: &Env,
    scenario: &Scenario,
    running: &mut Running,
    res: &mut SystemResult,
    p: &Progress,
) {
    let count = (plan.latency_count / 5).max(10);
    let fresh = latency::measure_mode(
        &env.ns_a,
        &plan.exe,
        running.endpoints.rr,
        None,
        count,
        5,
        true,
    );
    report_latency(&res.system, "new connection, first byte", &fresh, p);
    match fresh {
        Ok(l) => res.latency_first_byte = Some(l),
        Err(err) => res.notes.push(format!("first-byte latency: {err}")),
    }
    if !matches!(scenario.family, Family::Loopback | Family::Clean) || plan.idle_conns == 0 {
        return;
    }
    let pids = running.pids();
    let target = SocketAddr::V4(latency::local(FWD_IDLE_PORT));
    match idle::measure(&env.ns_a, &plan.exe, target, plan.idle_conns, &pids) {
        Ok(r) => {
            p.step(&format!(
                "  {} idle: {}/{} held ({} errors{}) in {:.1} s, RSS {:?} KiB before, {:?} KiB held (total {:.1} MiB), {:?} KiB after",
                res.system,
                r.held,
                r.wanted,
                r.errors,
                r.first_error
                    .as_deref()
                    .map_or(String::new(), |e| format!(", first: {e}")),
                r.open_seconds,
                r.rss_before_kib,
                r.rss_held_kib,
                r.held_total_mib(),
                r.rss_after_kib,
            ));
            res.idle = Some(r);
        }
        Err(err) => {
            p.step(&format!("  {} idle: error: {err}", res.system));
            res.notes.push(format!("idle connections: {err}"));
        }
    }
    if let Err(e) = running.ensure_alive() {
        res.notes.push(format!("tunnel died under idle load: {e}"));
    }
}

/// Saves each gaptun daemon's `ctl stats --json` as `stats-LABEL-ROLE.json` in the log
/// directory: the FEC, loss and retransmission counters before and after each latency test
/// tell a tail the protocol caused (parity lost, retransmission) from one it did not.
fn save_stats(env: &Env, running: &Running, label: &str) {
    for c in &running.controls {
        let mut cmd = std::process::Command::new(&c.binary);
        cmd.arg("ctl")
            .arg("--socket")
            .arg(&c.socket)
            .args(["stats", "--json"]);
        let path = env
            .logdir
            .join(format!("stats-{label}-{}.json", c.role).replace('/', "-"));
        // Best effort: a missing file only means less to look at afterwards.
        if let Ok(out) = procs::run(&mut cmd, Duration::from_secs(5)) {
            let _ = std::fs::write(&path, &out.stdout);
        }
    }
}

/// Attaches what the stall probe saw during a latency measurement.
fn with_stalls(mut l: latency::LatencyResult, probe: StallProbe) -> latency::LatencyResult {
    l.stalls = probe.finish();
    l
}

fn report_latency(system: &str, via: &str, r: &Result<latency::LatencyResult>, p: &Progress) {
    match r {
        Ok(l) => p.step(&format!(
            "  {system} latency via {via}: p50 {:.1} ms, p99 {:.1} ms, {} errors{}",
            l.p50_ms,
            l.p99_ms,
            l.errors,
            l.stalls.map_or(String::new(), |s| format!(
                "; machine stalls over {} ms: {} (longest {:.1} ms{})",
                stalls::STALL.as_millis(),
                s.stalls,
                s.max_ms,
                if s.realtime {
                    ""
                } else {
                    ", probe not real-time"
                }
            ))
        )),
        Err(e) => p.step(&format!("  {system} latency via {via}: error: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(bytes_ab: u64, bytes_ba: u64) -> LinkStats {
        let mut l = LinkStats::default();
        l.a_to_b.counters.bytes_in = bytes_ab;
        l.b_to_a.counters.bytes_in = bytes_ba;
        l
    }

    #[test]
    fn steady_ratio_uses_rates_inside_the_window() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        // 1.25 MB/s each 100 ms from the A side plus 50 kB/s back: 13 MB/s on the wire.
        let samples: Vec<(Instant, LinkStats)> = (0..=40)
            .map(|i| (ms(i * 100), at(i * 1_250_000, i * 50_000)))
            .collect();
        let steady = steady_link(&samples, (ms(1000), ms(3050))).unwrap();
        assert!((steady.0 - 2.0).abs() < 1e-9);
        assert_eq!(steady.1.a_to_b.counters.bytes_in, 25_000_000);
        // 96 Mbit/s of goodput = 12 MB/s.
        let r = steady_wire_ratio(Some(&steady), 96.0).unwrap();
        assert!((r - 13.0 / 12.0).abs() < 1e-9, "{r}");
        assert_eq!(steady_wire_ratio(Some(&steady), 0.0), None);
        // Data flows from the first sample on (1.25 MB per 100 ms A→B), not B→A.
        assert_eq!(data_start(&samples, false, ms(0)), Some(ms(0)));
        assert_eq!(data_start(&samples, false, ms(250)), Some(ms(300)));
        assert_eq!(data_start(&samples, true, ms(0)), Some(ms(0)));
        let quiet: Vec<(Instant, LinkStats)> =
            (0..=10).map(|i| (ms(i * 100), at(i * 500, 0))).collect();
        assert_eq!(data_start(&quiet, false, ms(0)), None);
        // A window shorter than a second gives nothing.
        assert_eq!(steady_link(&samples, (ms(1000), ms(1900))), None);
        assert_eq!(steady_link(&[], (ms(0), ms(4000))), None);
    }
}
