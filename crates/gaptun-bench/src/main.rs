//! gaptun-bench: compares gaptun, kcptun and direct TCP through an emulated lossy link that
//! the harness builds itself (two network namespaces joined by TUN devices, impairments in
//! user space). Run as root: `gaptun-bench run --quick`.

mod emulator;
mod error;
mod measure;
mod procs;
mod report;
mod results;
mod runner;
mod scenarios;
mod setup;
mod systems;

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use crate::emulator::{Emulator, netns};
use crate::error::{BenchError, IoContext, Result};
use crate::results::RunResult;
use crate::runner::{Plan, Progress};

/// Benchmark harness: gaptun vs kcptun vs direct TCP through an emulated lossy link.
#[derive(Debug, Parser)]
#[command(name = "gaptun-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the benchmark (as root).
    Run(RunArgs),
    /// Remove namespaces (and processes inside them) left by an interrupted run.
    Cleanup,
    /// Run only the emulated link for a while and print its counters as JSON.
    Emulate {
        /// Scenario id (see `list`).
        #[arg(long, default_value = "100m-100ms-1pct")]
        scenario: String,
        /// How long to keep the link up.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// RNG seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// List scenarios and systems.
    List,
    /// (internal) request/response server.
    #[command(hide = true)]
    RrServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// (internal) request/response client; prints JSON.
    #[command(hide = true)]
    RrClient {
        #[arg(long)]
        target: SocketAddrV4,
        #[arg(long)]
        socks: Option<SocketAddr>,
        #[arg(long, default_value_t = 500)]
        count: usize,
        #[arg(long, default_value_t = 10)]
        conns: usize,
    },
    /// (internal) wait until something listens on a TCP port (without connecting to it).
    #[command(hide = true)]
    WaitPort {
        addr: SocketAddr,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Short run (under 3 minutes): 3 scenarios, one 4-second test per system, 100 exchanges.
    #[arg(long)]
    quick: bool,
    /// The gaptun binary (built with `cargo build --release -p gaptun` if absent).
    #[arg(long, default_value = "target/release/gaptun")]
    gaptun: PathBuf,
    /// Don't build gaptun when the binary is missing.
    #[arg(long)]
    no_build: bool,
    /// Don't apt-get install missing tools.
    #[arg(long)]
    no_install: bool,
    /// Only these systems (comma-separated names, see `list`).
    #[arg(long)]
    systems: Option<String>,
    /// Only these scenarios (comma-separated ids, see `list`).
    #[arg(long)]
    scenarios: Option<String>,
    /// Measured length of each iperf3 test in seconds, after the warm-up (default 10, quick 3).
    #[arg(long)]
    seconds: Option<u64>,
    /// Bulk tests to run, comma-separated STREAMS{up|down}, e.g. `1up,8down` (default
    /// 1up,1down,8up,8down; quick 1up).
    #[arg(long, value_parser = parse_tests)]
    tests: Option<Tests>,
    /// Seconds at the start of each iperf3 test not counted in the goodput (default 2, quick 1).
    #[arg(long)]
    warmup: Option<u64>,
    /// Request/responses per latency measurement (default 500, quick 100).
    #[arg(long)]
    latency_count: Option<usize>,
    /// RNG seed of the link emulator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Markdown file receiving the generated section.
    #[arg(long, default_value = "docs/benchmarks.md")]
    md: PathBuf,
    /// Directory for the PNG charts.
    #[arg(long, default_value = "docs/img")]
    img_dir: PathBuf,
    /// Raw results as JSON.
    #[arg(long, default_value = "target/gaptun-bench/results.json")]
    json: PathBuf,
}

/// Bulk tests as (streams, reverse).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tests(Vec<(u32, bool)>);

/// Parses `1up,8down`.
fn parse_tests(s: &str) -> std::result::Result<Tests, String> {
    s.split(',')
        .map(|t| {
            let t = t.trim();
            let (n, reverse) = if let Some(n) = t.strip_suffix("up") {
                (n, false)
            } else if let Some(n) = t.strip_suffix("down") {
                (n, true)
            } else {
                return Err(format!(
                    "{t:?}: expected STREAMSup or STREAMSdown, e.g. 8down"
                ));
            };
            match n.parse::<u32>() {
                Ok(n) if (1..=128).contains(&n) => Ok((n, reverse)),
                _ => Err(format!("{t:?}: streams must be 1-128")),
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(Tests)
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli.command) {
        eprintln!("gaptun-bench: {e}");
        std::process::exit(1);
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run(a) => run(&a),
        Cmd::Cleanup => cleanup(),
        Cmd::Emulate {
            scenario,
            seconds,
            seed,
        } => emulate(&scenario, seconds, seed),
        Cmd::List => {
            list();
            Ok(())
        }
        Cmd::RrServer { listen } => measure::latency::serve(listen),
        Cmd::RrClient {
            target,
            socks,
            count,
            conns,
        } => {
            let rep =
                measure::latency::client(target, socks, count, conns, Duration::from_secs(10));
            let json = serde_json::to_string(&rep).map_err(|e| BenchError::Parse {
                what: "report".into(),
                detail: e.to_string(),
            })?;
            println!("{json}");
            Ok(())
        }
        Cmd::WaitPort { addr, seconds } => wait_port(addr, seconds),
    }
}

fn list() {
    println!("scenarios (full run; --quick uses the 1, 5 and 10 % loss ones):");
    for s in scenarios::all() {
        println!("  {:<20} {}", s.id, s.title);
    }
    println!("systems:");
    for s in systems::all(Some(Path::new("gaptun"))) {
        println!("  {}", s.name);
    }
}

/// Waits until a socket of this namespace listens on `addr`'s port. It reads
/// `/proc/net/tcp{,6}` instead of connecting: a test connection to a tunnel's forward would be
/// relayed to the target, and iperf3's server takes a stray connection for a test's control
/// connection (then drops the real one: "control socket has closed unexpectedly").
fn wait_port(addr: SocketAddr, seconds: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let listening = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .any(|f| std::fs::read_to_string(f).is_ok_and(|t| listens_on(&t, addr.port())));
        if listening {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "waiting for a listener on {addr}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a `/proc/net/tcp`-format table has a socket in LISTEN state (`0A`) on `port`.
fn listens_on(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        state == Some("0A")
            && local
                .and_then(|l| l.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}

fn cleanup() -> Result<()> {
    setup::require_root()?;
    let left = netns::leftovers()?;
    if left.is_empty() {
        println!("nothing to clean up");
    }
    for ns in left {
        if netns::owner_alive(&ns) {
            println!("kept namespace {ns}: its gaptun-bench run is still going");
            continue;
        }
        netns::delete(&ns)?;
        println!("removed namespace {ns}");
    }
    Ok(())
}

fn emulate(id: &str, seconds: u64, seed: u64) -> Result<()> {
    setup::require_root()?;
    procs::install_interrupt_handler()?;
    let sc = scenarios::select(id)
        .into_iter()
        .next()
        .ok_or_else(|| BenchError::Invalid(format!("unknown scenario {id}")))?;
    let emu = Emulator::start(std::process::id(), &sc.link(seed))?;
    eprintln!(
        "link up: {} ({}) <-> {} ({}) for {seconds} s: {}",
        emu.ns_a(),
        emulator::ADDR_A,
        emu.ns_b(),
        emulator::ADDR_B,
        sc.title
    );
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end && !procs::interrupted() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let json = serde_json::to_string_pretty(&emu.stats()).map_err(|e| BenchError::Parse {
        what: "stats".into(),
        detail: e.to_string(),
    })?;
    println!("{json}");
    Ok(())
}

fn run(a: &RunArgs) -> Result<()> {
    setup::require_root()?;
    procs::install_interrupt_handler()?;
    setup::ensure_tools(!a.no_install)?;
    let progress = Progress::new();
    let mut notes = Vec::new();
    let gaptun = match setup::find_gaptun(&a.gaptun, !a.no_build) {
        Ok(p) => Some(p),
        Err(e) => {
            progress.step(&format!("gaptun skipped: {e}"));
            notes.push(format!("gaptun not measured: {e}"));
            None
        }
    };
    let mut systems = systems::all(gaptun.as_deref());
    if a.quick && a.systems.is_none() {
        // The tuned-window kcptun variant is only in the full run, to stay under 3 minutes.
        systems.retain(|s| !s.name.contains("-wnd"));
    }
    if let Some(only) = &a.systems {
        let names: Vec<&str> = only.split(',').map(str::trim).collect();
        systems.retain(|s| names.contains(&s.name.as_str()));
    }
    let scenarios = match &a.scenarios {
        Some(ids) => scenarios::select(ids),
        None if a.quick => scenarios::quick(),
        None => scenarios::all(),
    };
    if systems.is_empty() || scenarios.is_empty() {
        return Err(BenchError::Invalid(
            "no system or no scenario selected".into(),
        ));
    }
    let logdir = std::env::temp_dir().join(format!("gaptun-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logdir).ctx(format!("create {}", logdir.display()))?;
    let plan = Plan {
        seconds: a.seconds.unwrap_or(if a.quick { 3 } else { 10 }),
        warmup: a.warmup.unwrap_or(if a.quick { 1 } else { 2 }),
        tests: match &a.tests {
            Some(t) => t.0.clone(),
            None if a.quick => vec![(1, false)],
            None => vec![(1, false), (1, true), (8, false), (8, true)],
        },
        latency_count: a.latency_count.unwrap_or(if a.quick { 100 } else { 500 }),
        // Quick: the same exchanges over more connections, in half the time.
        latency_conns: if a.quick { 20 } else { 10 },
        seed: a.seed,
        exe: std::env::current_exe().ctx("locate own binary")?,
        logdir: logdir.clone(),
    };
    progress.step(&format!(
        "{} scenarios × {} systems, logs in {}",
        scenarios.len(),
        systems.len(),
        logdir.display()
    ));
    let mut results = Vec::new();
    for sc in &scenarios {
        procs::check_interrupted()?;
        results.push(runner::run_scenario(&plan, sc, &systems, &progress));
    }
    let run = RunResult {
        date: setup::now_utc(),
        machine: setup::machine(gaptun.as_deref()),
        quick: a.quick,
        seconds_per_test: plan.seconds,
        warmup_seconds: plan.warmup,
        latency_count: plan.latency_count,
        scenarios: results,
        notes,
    };
    write_outputs(a, &run, &progress)
}

/// Writes the JSON, the charts and the Markdown section.
fn write_outputs(a: &RunArgs, run: &RunResult, progress: &Progress) -> Result<()> {
    if let Some(dir) = a.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).ctx(format!("create {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(run).map_err(|e| BenchError::Parse {
        what: "results".into(),
        detail: e.to_string(),
    })?;
    std::fs::write(&a.json, json).ctx(format!("write {}", a.json.display()))?;
    progress.step(&format!("raw results: {}", a.json.display()));
    let charts = write_charts(a, run, progress);
    let generated = report::markdown::render(run, &charts);
    if let Some(dir) = a.md.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).ctx(format!("create {}", dir.display()))?;
    }
    let existing = std::fs::read_to_string(&a.md).unwrap_or_default();
    std::fs::write(&a.md, report::markdown::splice(&existing, &generated))
        .ctx(format!("write {}", a.md.display()))?;
    progress.step(&format!("report: {}", a.md.display()));
    println!("{generated}");
    Ok(())
}

/// Draws the charts; returns (title, path relative to the Markdown file) for each one drawn.
fn write_charts(a: &RunArgs, run: &RunResult, progress: &Progress) -> Vec<(String, String)> {
    use report::charts;
    let mut out = Vec::new();
    if std::fs::create_dir_all(&a.img_dir).is_err() {
        return out;
    }
    let rel = |file: &str| -> String {
        let md_dir = a.md.parent().unwrap_or(Path::new(""));
        let img = a.img_dir.join(file);
        img.strip_prefix(md_dir)
            .map_or_else(|_| img.display().to_string(), |p| p.display().to_string())
    };
    let mut draw = |file: String, title: String, x: &str, y: &str, series: Vec<charts::Series>| {
        if series.is_empty() {
            return;
        }
        match charts::line_chart(&a.img_dir.join(&file), &title, x, y, &series) {
            Ok(()) => out.push((title, rel(&file))),
            Err(e) => progress.step(&format!("chart {file} failed: {e}")),
        }
    };
    draw(
        "goodput-vs-loss.png".into(),
        "Goodput vs loss (100 Mbit/s, 100 ms RTT, 1 stream up)".into(),
        "loss per direction (%)",
        "goodput (Mbit/s)",
        charts::goodput_series(&run.scenarios),
    );
    for sc in &run.scenarios {
        draw(
            format!("latency-cdf-{}.png", sc.scenario.id),
            format!("Latency CDF via forward: {}", sc.scenario.title),
            "round trip (ms)",
            "fraction of requests",
            charts::cdf_series(sc),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3B6F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:1B58 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1
";
        assert!(listens_on(table, 15215));
        // Port 7000 only has an established connection.
        assert!(!listens_on(table, 7000));
        assert!(!listens_on("", 15215));
        assert!(!listens_on("header\ngarbage line\n", 15215));
    }

    #[test]
    fn cli_is_consistent_and_parses_run_options() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["gaptun-bench", "run", "--quick", "--systems", "tcp-bbr"])
            .unwrap();
        let Cmd::Run(a) = cli.command else {
            panic!("expected run")
        };
        assert!(a.quick);
        assert_eq!(a.systems.as_deref(), Some("tcp-bbr"));
        assert_eq!(a.gaptun, PathBuf::from("target/release/gaptun"));
        assert!(Cli::try_parse_from(["gaptun-bench", "run", "--seconds", "x"]).is_err());
        let cli = Cli::try_parse_from(["gaptun-bench", "run", "--tests", "1up, 8down"]).unwrap();
        let Cmd::Run(a) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(a.tests, Some(Tests(vec![(1, false), (8, true)])));
        assert!(Cli::try_parse_from(["gaptun-bench", "run", "--tests", "1sideways"]).is_err());
        assert!(Cli::try_parse_from(["gaptun-bench", "run", "--tests", "0up"]).is_err());
    }
}
