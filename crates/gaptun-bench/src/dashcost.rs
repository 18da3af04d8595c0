//! `gaptun-bench dashboard-cost` (issue 12): what a dashboard scraped every second costs the
//! data path of a server with 200 connections.
//!
//! Each window starts a fresh set of daemons on loopback: a `gaptun server`, one client with a
//! TCP forward that carries an endless bulk upload into a sink in this process, and idle
//! clients whose pools hold the other connections (199 by default). In *scraped* windows the
//! server runs with `--dashboard` and a thread fetches `/metrics` and `/api/stats` once a
//! second; in the others the server has no dashboard. Windows alternate in ABBA order (A B, B A,
//! A B, ...) so that a steady drift of the machine's load favours neither side, and each round's
//! two windows form a pair whose ratio is reported: goodput (what the sink read) and the CPU
//! seconds the server and all the daemons spent per GB moved. On a shared machine the goodput of
//! a CPU-bound loopback transfer follows the neighbours' load; CPU time per byte is what the
//! dashboard could take from a data path that has the machine to itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{BenchError, IoContext, Result};
use crate::measure::procstat;
use crate::procs::{self, Managed};
use crate::systems::gaptun;

/// How a run is laid out.
#[derive(Debug, Clone)]
pub struct CostPlan {
    /// The gaptun binary.
    pub gaptun: PathBuf,
    /// Rounds; each is one scraped and one plain window.
    pub rounds: usize,
    /// Measured seconds per window.
    pub seconds: u64,
    /// Seconds of bulk transfer before a window's measurement starts.
    pub warmup: u64,
    /// Connections besides the bulk one.
    pub idle_conns: usize,
    /// Where logs go.
    pub logdir: PathBuf,
}

/// Most connections one client keeps (the `conns` setting's limit).
const CONNS_PER_CLIENT: usize = 64;
/// How long a window waits for every connection to be up (the server accepts 64 handshakes
/// from one address at once, then 16 a second).
const CONNECT_LIMIT: Duration = Duration::from_secs(60);

/// One window's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub round: usize,
    pub scraped: bool,
    /// Connections the server had established when the window ended.
    pub connections: usize,
    /// Scrapes answered (both URLs) during the window.
    pub scrapes: u64,
    pub seconds: f64,
    pub bytes: u64,
    pub mbit: f64,
    /// CPU seconds of the server process per GB the sink read.
    pub server_cpu_s_per_gb: f64,
    /// CPU seconds of all the daemons per GB.
    pub total_cpu_s_per_gb: f64,
}

/// Scraped ÷ plain over the rounds: median and range of the per-round ratios.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatioSummary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Mean of the scraped windows ÷ mean of the plain ones.
    pub of_means: f64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    pub windows: Vec<Window>,
    pub goodput: Option<RatioSummary>,
    pub server_cpu_per_gb: Option<RatioSummary>,
    pub total_cpu_per_gb: Option<RatioSummary>,
}

/// Median of `v` (the mean of the middle two for an even count); `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Pairs each round's scraped and plain window and summarises `value` scraped ÷ plain.
pub fn summarise(windows: &[Window], value: impl Fn(&Window) -> f64) -> Option<RatioSummary> {
    let rounds = windows.iter().map(|w| w.round).max()?;
    let mut ratios = Vec::new();
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for r in 0..=rounds {
        let pick = |scraped: bool| {
            windows
                .iter()
                .find(|w| w.round == r && w.scraped == scraped)
                .map(&value)
        };
        if let (Some(a), Some(b)) = (pick(true), pick(false))
            && a.is_finite()
            && b.is_finite()
            && b > 0.0
        {
            ratios.push(a / b);
            on.push(a);
            off.push(b);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Some(RatioSummary {
        median: median(&ratios)?,
        min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        max: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        of_means: mean(&on) / mean(&off),
    })
}

/// Scraped first in even rounds, plain first in odd ones (ABBA).
pub fn order(round: usize) -> [bool; 2] {
    if round.is_multiple_of(2) {
        [true, false]
    } else {
        [false, true]
    }
}

/// A port on 127.0.0.1 free a moment ago (the OS's pick).
fn free_tcp_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").ctx("find a free TCP port")?;
    Ok(l.local_addr().ctx("local address")?.port())
}

fn free_udp_port() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").ctx("find a free UDP port")?;
    Ok(s.local_addr().ctx("local address")?.port())
}

/// Counts the bytes every connection to `listener` sends.
fn spawn_sink(listener: TcpListener, counter: Arc<AtomicU64>) {
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let counter = Arc::clone(&counter);
            thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
}

/// Writes to `addr` until `stop`, reconnecting while the forward is not ready yet.
fn spawn_bulk(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let chunk = vec![0x5a_u8; 64 * 1024];
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                thread::sleep(Duration::from_millis(100));
                continue;
            };
            let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
            while !stop.load(Ordering::Relaxed) {
                match s.write(&chunk) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        }
    })
}

/// One HTTP GET; the body's length if the answer is `200 OK`.
fn get(addr: SocketAddr, path: &str) -> Option<usize> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status_ok = answer.starts_with(b"HTTP/1.1 200");
    status_ok.then(|| answer.len() - head_end - 4)
}

/// Scrapes `/metrics` and `/api/stats` once a second until `stop`; counts the rounds where
/// both answered with a plausible body.
fn spawn_scraper(
    dash: SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let metrics = get(dash, "/metrics");
            let api = get(dash, "/api/stats");
            if metrics.is_some_and(|n| n > 1000) && api.is_some_and(|n| n > 10_000) {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            next += Duration::from_secs(1);
            while !stop.load(Ordering::Relaxed) && Instant::now() < next {
                thread::sleep(Duration::from_millis(20));
            }
        }
    })
}

/// Established connections the server reports over its control socket.
fn server_connections(binary: &Path, control: &Path) -> Option<usize> {
    let out = procs::run_unchecked(
        Command::new(binary)
            .args(["ctl", "--socket"])
            .arg(control)
            .args(["stats", "json"]),
        Duration::from_secs(10),
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get("connections")?.as_array().map(Vec::len)
}

/// The daemons of one window.
struct Daemons {
    server: Managed,
    clients: Vec<Managed>,
    control: PathBuf,
}

impl Daemons {
    fn pids(&self) -> Vec<u32> {
        std::iter::once(self.server.pid())
            .chain(self.clients.iter().map(Managed::pid))
            .collect()
    }
}

/// Starts the server (with a dashboard on `dash` if given) and the clients, and waits until
/// the server has every connection.
fn start(
    plan: &CostPlan,
    key: &str,
    tag: &str,
    dash: Option<SocketAddr>,
    sink: SocketAddr,
    forward: SocketAddr,
) -> Result<Daemons> {
    let udp = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
    let control = plan.logdir.join(format!("server-{tag}.sock"));
    let mut s = Command::new(&plan.gaptun);
    s.args(["server", "--listen", &udp.to_string(), "--key", key])
        .args(["--allow", &sink.to_string()])
        .arg("--control")
        .arg(&control);
    if let Some(d) = dash {
        s.args(["--dashboard", &d.to_string()]);
    }
    let server = Managed::spawn(
        "gaptun server",
        &mut s,
        &plan.logdir.join(format!("server-{tag}.log")),
    )?;
    // The clients give up on a closed port: wait until the server answers on its control
    // socket (it binds its UDP socket before that).
    let mut server = server;
    let ready_by = Instant::now() + Duration::from_secs(10);
    while server_connections(&plan.gaptun, &control).is_none() {
        server.ensure_alive()?;
        if Instant::now() > ready_by {
            return Err(BenchError::Invalid("the server did not come up".into()));
        }
        thread::sleep(Duration::from_millis(100));
    }
    let mut clients = Vec::new();
    let mut c = Command::new(&plan.gaptun);
    c.args(["client", "--server", &udp.to_string(), "--key", key])
        .args(["--forward", &format!("tcp:{forward}={sink}")])
        .arg("--no-socks")
        .arg("--control")
        .arg(plan.logdir.join(format!("client-bulk-{tag}.sock")));
    clients.push(Managed::spawn(
        "gaptun client (bulk)",
        &mut c,
        &plan.logdir.join(format!("client-bulk-{tag}.log")),
    )?);
    let mut left = plan.idle_conns;
    let mut i = 0;
    while left > 0 {
        let n = left.min(CONNS_PER_CLIENT);
        left -= n;
        // A forward nobody uses: a client needs something to serve.
        let unused = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
        let mut c = Command::new(&plan.gaptun);
        c.args(["client", "--server", &udp.to_string(), "--key", key])
            .args(["--conns", &n.to_string()])
            .args(["--forward", &format!("tcp:{unused}={sink}")])
            .arg("--no-socks")
            .arg("--control")
            .arg(plan.logdir.join(format!("client-idle{i}-{tag}.sock")));
        clients.push(Managed::spawn(
            "gaptun client (idle)",
            &mut c,
            &plan.logdir.join(format!("client-idle{i}-{tag}.log")),
        )?);
        i += 1;
    }
    let daemons = Daemons {
        server,
        clients,
        control,
    };
    let want = plan.idle_conns + 1;
    let deadline = Instant::now() + CONNECT_LIMIT;
    loop {
        procs::check_interrupted()?;
        let have = server_connections(&plan.gaptun, &daemons.control).unwrap_or(0);
        if have >= want {
            return Ok(daemons);
        }
        if Instant::now() > deadline {
            return Err(BenchError::Invalid(format!(
                "only {have} of {want} connections up after {} s",
                CONNECT_LIMIT.as_secs()
            )));
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Runs one window.
fn window(
    plan: &CostPlan,
    key: &str,
    round: usize,
    scraped: bool,
    sink: SocketAddr,
    received: &Arc<AtomicU64>,
) -> Result<Window> {
    let tag = format!("{round}-{}", if scraped { "scraped" } else { "plain" });
    let dash = if scraped {
        Some(SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?)))
    } else {
        None
    };
    let forward = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
    let mut daemons = start(plan, key, &tag, dash, sink, forward)?;
    let stop = Arc::new(AtomicBool::new(false));
    let bulk = spawn_bulk(forward, Arc::clone(&stop));
    thread::sleep(Duration::from_secs(plan.warmup));
    let scrapes = Arc::new(AtomicU64::new(0));
    let scraper = dash.map(|d| spawn_scraper(d, Arc::clone(&stop), Arc::clone(&scrapes)));
    let pids = daemons.pids();
    let server_pid = [daemons.server.pid()];
    let (cpu0, server0, bytes0) = (
        procstat::total_cpu_seconds(&pids),
        procstat::total_cpu_seconds(&server_pid),
        received.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(plan.seconds));
    let bytes = received.load(Ordering::Relaxed) - bytes0;
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu, server) = (
        procstat::total_cpu_seconds(&pids) - cpu0,
        procstat::total_cpu_seconds(&server_pid) - server0,
    );
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = scraper {
        let _ = s.join();
    }
    let connections = server_connections(&plan.gaptun, &daemons.control).unwrap_or(0);
    daemons.server.ensure_alive()?;
    for c in &mut daemons.clients {
        c.ensure_alive()?;
    }
    drop(daemons);
    let _ = bulk.join();
    let gb = bytes as f64 / 1e9;
    Ok(Window {
        round,
        scraped,
        connections,
        scrapes: scrapes.load(Ordering::Relaxed),
        seconds: elapsed,
        bytes,
        mbit: bytes as f64 * 8.0 / elapsed / 1e6,
        server_cpu_s_per_gb: server / gb,
        total_cpu_s_per_gb: cpu / gb,
    })
}

/// Runs every round and summarises.
pub fn run(plan: &CostPlan) -> Result<CostReport> {
    let key = gaptun::keygen(&plan.gaptun)?;
    let listener = TcpListener::bind("127.0.0.1:0").ctx("bind the sink")?;
    let sink = listener.local_addr().ctx("sink address")?;
    let received = Arc::new(AtomicU64::new(0));
    spawn_sink(listener, Arc::clone(&received));
    let mut windows = Vec::new();
    for round in 0..plan.rounds {
        for scraped in order(round) {
            let w = window(plan, &key, round, scraped, sink, &received)?;
            println!(
                "round {round} {:<8} {:>4} conns {:>2} scrapes {:8.1} Mbit/s  server {:5.2} CPU s/GB  all {:5.2} CPU s/GB",
                if scraped { "scraped" } else { "plain" },
                w.connections,
                w.scrapes,
                w.mbit,
                w.server_cpu_s_per_gb,
                w.total_cpu_s_per_gb
            );
            windows.push(w);
        }
    }
    Ok(CostReport {
        goodput: summarise(&windows, |w| w.mbit),
        server_cpu_per_gb: summarise(&windows, |w| w.server_cpu_s_per_gb),
        total_cpu_per_gb: summarise(&windows, |w| w.total_cpu_s_per_gb),
        windows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(round: usize, scraped: bool, mbit: f64) -> Window {
        Window {
            round,
            scraped,
            connections: 200,
            scrapes: 0,
            seconds: 1.0,
            bytes: 0,
            mbit,
            server_cpu_s_per_gb: 1.0,
            total_cpu_s_per_gb: 2.0,
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn rounds_are_paired_in_abba_order() {
        assert_eq!(order(0), [true, false]);
        assert_eq!(order(1), [false, true]);
        // Round 0: 0.9, round 1: 1.1, round 2: 1.0; round 3 has no plain window.
        let windows = [
            w(0, true, 90.0),
            w(0, false, 100.0),
            w(1, false, 200.0),
            w(1, true, 220.0),
            w(2, true, 50.0),
            w(2, false, 50.0),
            w(3, true, 10.0),
        ];
        let s = summarise(&windows, |w| w.mbit).expect("summary");
        assert!((s.median - 1.0).abs() < 1e-12, "{s:?}");
        assert!((s.min - 0.9).abs() < 1e-12 && (s.max - 1.1).abs() < 1e-12);
        assert!((s.of_means - 360.0 / 350.0).abs() < 1e-12);
        assert_eq!(summarise(&[], |w| w.mbit), None);
    }
}
