//! gaptun-bench: compares gaptun, kcptun and direct TCP through an emulated lossy link that
//! the harness builds itself (two network namespaces joined by TUN devices, impairments in
//! user space). Run as root: `gaptun-bench run --quick`.

mod dashcost;
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
    /// What a dashboard scraped every second costs a server with 200 connections (issue 12):
    /// daemons on loopback, scraped and plain windows in ABBA order, ratios per round.
    DashboardCost {
        /// The gaptun binary (build it with `cargo build --release -p gaptun`).
        #[arg(long, default_value = "target/release/gaptun")]
        gaptun: PathBuf,
        /// Rounds (each one scraped and one plain window).
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Measured seconds per window.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds of transfer before each window's measurement.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Connections besides the bulk one.
        #[arg(long, default_value_t = 199)]
        idle_conns: usize,
        /// Raw results as JSON.
        #[arg(long, default_value = "target/gaptun-bench/dashboard-cost.json")]
        json: PathBuf,
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
        /// A new connection per exchange, timed to the response's first byte.
        #[arg(long)]
        fresh: bool,
    },
    /// (internal) idle-connection sink: greets each connection with one byte, holds it.
    #[command(hide = true)]
    IdleSink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// (internal) opens N idle connections, samples the RSS of the given PIDs; prints JSON.
    #[command(hide = true)]
    IdleConns {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Comma-separated PIDs whose resident set is sampled.
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
        /// Seconds to hold all connections open.
        #[arg(long, default_value_t = 3)]
        hold: u64,
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
    /// A second gaptun binary (say, built from the commit before a change): every gaptun
    /// system selected also runs with it, as `NAME-base`, right after the system itself, so
    /// that before and after are measured side by side in one run.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Don't apt-get install missing tools (nor cargo install rathole).
    #[arg(long)]
    no_install: bool,
    /// Run the expose scenario instead (issue 9): gaptun-expose and rathole publish the
    /// services of namespace B on ports of namespace A; default scenarios `clean` and
    /// `100m-100ms-5pct`, default test `1down` (the visitor's download).
    #[arg(long)]
    expose: bool,
    /// Idle visitor connections held at once in the expose scenario's clean link (default
    /// 10000, quick 2000; 0: skip).
    #[arg(long)]
    idle_conns: Option<usize>,
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
    /// Scheduling priority (nice value, -20 to 19) of the harness and of everything it starts:
    /// the link emulator's threads, the systems under test, iperf3 and the request/response
    /// programs. On a machine shared with other jobs a negative value keeps their CPU use out
    /// of the figures (a CFS task waits for the CPU behind every runnable task of equal
    /// weight, tens of milliseconds at a load of 15 on 2 cores). 0: unchanged.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
    nice: i32,
    /// Markdown file receiving the generated section (default `docs/benchmarks.md`; with
    /// `--expose` `target/gaptun-bench/expose.md`, so that the forward run's section in the
    /// docs is not replaced).
    #[arg(long)]
    md: Option<PathBuf>,
    /// Directory for the PNG charts (default `docs/img`; with `--expose`
    /// `target/gaptun-bench/img`).
    #[arg(long)]
    img_dir: Option<PathBuf>,
    /// Raw results as JSON (default `target/gaptun-bench/results.json`; with `--expose`
    /// `target/gaptun-bench/expose.json`).
    #[arg(long)]
    json: Option<PathBuf>,
}

impl RunArgs {
    fn md(&self) -> PathBuf {
        self.md.clone().unwrap_or_else(|| {
            PathBuf::from(if self.expose {
                "target/gaptun-bench/expose.md"
            } else {
                "docs/benchmarks.md"
            })
        })
    }

    fn img_dir(&self) -> PathBuf {
        self.img_dir.clone().unwrap_or_else(|| {
            PathBuf::from(if self.expose {
                "target/gaptun-bench/img"
            } else {
                "docs/img"
            })
        })
    }

    fn json(&self) -> PathBuf {
        self.json.clone().unwrap_or_else(|| {
            PathBuf::from(if self.expose {
                "target/gaptun-bench/expose.json"
            } else {
                "target/gaptun-bench/results.json"
            })
        })
    }
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
        Cmd::DashboardCost {
            gaptun,
            rounds,
            seconds,
            warmup,
            idle_conns,
            json,
        } => dashboard_cost(
            dashcost::CostPlan {
                gaptun,
                rounds,
                seconds,
                warmup,
                idle_conns,
                logdir: std::env::temp_dir()
                    .join(format!("gaptun-bench-dash-{}", std::process::id())),
            },
            &json,
        ),
        Cmd::RrServer { listen } => measure::latency::serve(listen),
        Cmd::RrClient {
            target,
            socks,
            count,
            conns,
            fresh,
        } => {
            let rep = measure::latency::client_mode(
                target,
                socks,
                count,
                conns,
                Duration::from_secs(10),
                fresh,
            );
            let json = serde_json::to_string(&rep).map_err(|e| BenchError::Parse {
                what: "report".into(),
                detail: e.to_string(),
            })?;
            println!("{json}");
            Ok(())
        }
        Cmd::WaitPort { addr, seconds } => wait_port(addr, seconds),
        Cmd::IdleSink { listen } => measure::idle::sink(listen),
        Cmd::IdleConns {
            target,
            count,
            pids,
            hold,
        } => {
            let rep = measure::idle::load(
                target,
                count,
                Duration::from_secs(hold),
                (Duration::from_secs(180), Duration::from_secs(10)),
                &pids,
            );
            let json = serde_json::to_string(&rep).map_err(|e| BenchError::Parse {
                what: "report".into(),
                detail: e.to_string(),
            })?;
            println!("{json}");
            Ok(())
        }
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
    println!("expose systems (--expose; scenarios clean and 100m-100ms-5pct unless chosen):");
    for s in systems::expose(Some(Path::new("gaptun")), Some(Path::new("rathole"))) {
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

/// `systems`, each gaptun system (forward or expose) followed by the same system on the `base`
/// binary, named `NAME-base`.
fn with_baseline(systems: Vec<systems::System>, base: &Path) -> Vec<systems::System> {
    let mut out = Vec::with_capacity(systems.len() * 2);
    for s in systems {
        let twin = match &s.kind {
            systems::SystemKind::Gaptun {
                congestion,
                fec,
                carrier,
                client_args,
                ..
            } => Some(systems::System {
                name: format!("{}-base", s.name),
                kind: systems::SystemKind::Gaptun {
                    binary: base.to_path_buf(),
                    congestion: congestion.clone(),
                    fec: fec.clone(),
                    carrier: carrier.clone(),
                    client_args: client_args.clone(),
                },
            }),
            systems::SystemKind::GaptunExpose { .. } => Some(systems::System {
                name: format!("{}-base", s.name),
                kind: systems::SystemKind::GaptunExpose {
                    binary: base.to_path_buf(),
                },
            }),
            _ => None,
        };
        out.push(s);
        out.extend(twin);
    }
    out
}

fn run(a: &RunArgs) -> Result<()> {
    setup::require_root()?;
    procs::install_interrupt_handler()?;
    // The daemons and servers started below inherit it: 10 000 idle visitor connections need
    // more open files than the usual soft limit of 1024.
    measure::idle::raise_nofile();
    let progress = Progress::new();
    let mut notes = Vec::new();
    if a.nice != 0 {
        setup::set_nice(a.nice)?;
        notes.push(format!(
            "the harness and everything it started ran at nice {}",
            a.nice
        ));
    }
    let gaptun = match setup::find_gaptun(&a.gaptun, !a.no_build) {
        Ok(p) => Some(p),
        Err(e) => {
            progress.step(&format!("gaptun skipped: {e}"));
            notes.push(format!("gaptun not measured: {e}"));
            None
        }
    };
    let rathole = if a.expose {
        match setup::find_rathole(!a.no_install) {
            Ok(p) => Some(p),
            Err(e) => {
                progress.step(&format!("rathole skipped: {e}"));
                notes.push(format!("rathole not measured: {e}"));
                None
            }
        }
    } else {
        None
    };
    let mut systems = if a.expose {
        systems::expose(gaptun.as_deref(), rathole.as_deref())
    } else {
        systems::all(gaptun.as_deref())
    };
    if a.quick && a.systems.is_none() {
        // The tuned-window kcptun variant is only in the full run, to stay under 3 minutes.
        systems.retain(|s| !s.name.contains("-wnd"));
    }
    if let Some(only) = &a.systems {
        let names: Vec<&str> = only.split(',').map(str::trim).collect();
        systems.retain(|s| names.contains(&s.name.as_str()));
    }
    if let Some(base) = &a.baseline {
        let base = setup::find_gaptun(base, false)?;
        systems = with_baseline(systems, &base);
    }
    let scenarios = match &a.scenarios {
        Some(ids) => scenarios::select(ids),
        None if a.expose => scenarios::select(scenarios::EXPOSE),
        None if a.quick => scenarios::quick(),
        None => scenarios::all(),
    };
    if systems.is_empty() || scenarios.is_empty() {
        return Err(BenchError::Invalid(
            "no system or no scenario selected".into(),
        ));
    }
    setup::ensure_tools(
        !a.no_install,
        systems
            .iter()
            .any(|s| matches!(s.kind, systems::SystemKind::Kcptun { .. })),
    )?;
    let logdir = std::env::temp_dir().join(format!("gaptun-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logdir).ctx(format!("create {}", logdir.display()))?;
    let plan = Plan {
        seconds: a.seconds.unwrap_or(if a.quick { 3 } else { 10 }),
        warmup: a.warmup.unwrap_or(if a.quick { 1 } else { 2 }),
        tests: match &a.tests {
            Some(t) => t.0.clone(),
            None if a.expose => vec![(1, true)],
            None if a.quick => vec![(1, false)],
            None => vec![(1, false), (1, true), (8, false), (8, true)],
        },
        latency_count: a.latency_count.unwrap_or(if a.quick { 100 } else { 500 }),
        // Quick: the same exchanges over more connections, in half the time.
        latency_conns: if a.quick { 20 } else { 10 },
        idle_conns: a.idle_conns.unwrap_or(if a.quick { 2000 } else { 10_000 }),
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
        machine: setup::machine(gaptun.as_deref(), rathole.as_deref()),
        quick: a.quick,
        seconds_per_test: plan.seconds,
        warmup_seconds: plan.warmup,
        latency_count: plan.latency_count,
        scenarios: results,
        notes,
    };
    write_outputs(a, &run, &progress)
}

/// Runs `dashboard-cost` and writes its JSON.
fn dashboard_cost(plan: dashcost::CostPlan, json: &Path) -> Result<()> {
    procs::install_interrupt_handler()?;
    std::fs::create_dir_all(&plan.logdir).ctx(format!("create {}", plan.logdir.display()))?;
    let report = dashcost::run(&plan)?;
    let show = |what: &str, s: &Option<dashcost::RatioSummary>| match s {
        Some(s) => println!(
            "{what}: scraped ÷ plain median {:.4} (rounds {:.4} to {:.4}), of the means {:.4}",
            s.median, s.min, s.max, s.of_means
        ),
        None => println!("{what}: no complete round"),
    };
    show("goodput", &report.goodput);
    show("server CPU s/GB", &report.server_cpu_per_gb);
    show("all daemons CPU s/GB", &report.total_cpu_per_gb);
    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).ctx(format!("create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&report).map_err(|e| BenchError::Parse {
        what: "report".into(),
        detail: e.to_string(),
    })?;
    std::fs::write(json, text).ctx(format!("write {}", json.display()))?;
    println!(
        "raw results: {}; logs in {}",
        json.display(),
        plan.logdir.display()
    );
    Ok(())
}

/// Writes the JSON, the charts and the Markdown section.
fn write_outputs(a: &RunArgs, run: &RunResult, progress: &Progress) -> Result<()> {
    let (json_path, md_path) = (a.json(), a.md());
    if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).ctx(format!("create {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(run).map_err(|e| BenchError::Parse {
        what: "results".into(),
        detail: e.to_string(),
    })?;
    std::fs::write(&json_path, json).ctx(format!("write {}", json_path.display()))?;
    progress.step(&format!("raw results: {}", json_path.display()));
    let charts = write_charts(a, run, progress);
    let generated = report::markdown::render(run, &charts);
    if let Some(dir) = md_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).ctx(format!("create {}", dir.display()))?;
    }
    let existing = std::fs::read_to_string(&md_path).unwrap_or_default();
    std::fs::write(&md_path, report::markdown::splice(&existing, &generated))
        .ctx(format!("write {}", md_path.display()))?;
    progress.step(&format!("report: {}", md_path.display()));
    println!("{generated}");
    Ok(())
}

/// Draws the charts; returns (title, path relative to the Markdown file) for each one drawn.
fn write_charts(a: &RunArgs, run: &RunResult, progress: &Progress) -> Vec<(String, String)> {
    use report::charts;
    let mut out = Vec::new();
    let (img_dir, md_path) = (a.img_dir(), a.md());
    if std::fs::create_dir_all(&img_dir).is_err() {
        return out;
    }
    let rel = |file: &str| -> String {
        let md_dir = md_path.parent().unwrap_or(Path::new(""));
        let img = img_dir.join(file);
        img.strip_prefix(md_dir)
            .map_or_else(|_| img.display().to_string(), |p| p.display().to_string())
    };
    let mut draw = |file: String, title: String, x: &str, y: &str, series: Vec<charts::Series>| {
        if series.is_empty() {
            return;
        }
        match charts::line_chart(&img_dir.join(&file), &title, x, y, &series) {
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
    fn baseline_twins_expose_systems_but_not_rathole() {
        let systems = systems::expose(Some(Path::new("/new/gaptun")), Some(Path::new("/rathole")));
        let out = with_baseline(systems, Path::new("/old/gaptun"));
        let names: Vec<&str> = out.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["gaptun-expose", "gaptun-expose-base", "rathole"]);
        let systems::SystemKind::GaptunExpose { binary } = &out[1].kind else {
            panic!("the twin is not an expose system")
        };
        assert_eq!(binary, Path::new("/old/gaptun"));
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
        assert_eq!(a.md(), PathBuf::from("docs/benchmarks.md"));
        let cli = Cli::try_parse_from(["gaptun-bench", "run", "--expose"]).unwrap();
        let Cmd::Run(a) = cli.command else {
            panic!("expected run")
        };
        // The expose run must not overwrite the forward run's generated section.
        assert_eq!(a.md(), PathBuf::from("target/gaptun-bench/expose.md"));
        assert_eq!(a.json(), PathBuf::from("target/gaptun-bench/expose.json"));
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
