//! Daemon benchmark on loopback: `cargo bench -p gaptun --bench daemon` (release build).
//!
//! Measures, with the real `gaptun` binary as server and client processes:
//! - bulk throughput of one connection through a TCP forward, both directions, against Debian's
//!   kcptun (`kcptun-server`/`kcptun-client`, `--mode fast3`) in the same run;
//! - resident memory of an idle client plus server;
//! - resident memory with N concurrent idle streams (default 10 000) through a forward, and
//!   the same for kcptun.
//!
//! The traffic source and sink are built in (this process), so both tunnels are measured the
//! same way. Prints a Markdown section for `docs/benchmarks.md` on stdout, progress on stderr.
//!
//! Environment: `GAPTUN_BENCH_SECS` (measured seconds per transfer, default 10),
//! `GAPTUN_BENCH_STREAMS` (idle streams, default 10000), `GAPTUN_BENCH_SKIP_KCPTUN=1`.
//!
//! The process limit on open files (20 000 on the reference machine, not raisable there) is
//! shared by everything in a process, so the target that holds the idle streams' far ends runs
//! as a child process: this same binary with the argument `hold-server`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{env_u64, free_port, free_tcp_port, gaptun, pump_in, pump_out, scratch, wait_for};

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "benchmark-passphrase";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("hold-server") {
        hold_server();
        return;
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

/// A child process, killed by PID when dropped.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            child,
            name: name.into(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// User plus system CPU time so far.
    fn cpu(&self) -> Duration {
        gaptun_bench_support::process_cpu(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.name;
    }
}

async fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A tunnel under test: a server and a client process, and the local port that forwards to
/// `target`.
struct Tunnel {
    server: Proc,
    client: Proc,
    port: u16,
}

impl Tunnel {
    fn rss_kib(&self) -> u64 {
        self.server.rss_kib() + self.client.rss_kib()
    }

    fn cpu(&self) -> Duration {
        self.server.cpu() + self.client.cpu()
    }
}

async fn start_gaptun(dir: &Path, tag: &str, target: SocketAddr) -> Tunnel {
    let udp = free_port();
    let server_sock = dir.join(format!("{tag}-server.sock"));
    let client_sock = dir.join(format!("{tag}-client.sock"));
    let server = Proc::spawn(
        "gaptun server",
        gaptun().args([
            "server",
            "--listen",
            &format!("127.0.0.1:{udp}"),
            "--key",
            KEY,
            "--allow",
            "127.0.0.1",
            "--log",
            "warn",
            "--control",
            server_sock.to_str().unwrap(),
        ]),
        &dir.join(format!("{tag}-server.log")),
    );
    wait_for(&server_sock, "gaptun server");
    let port = free_tcp_port();
    let client = Proc::spawn(
        "gaptun client",
        gaptun().args([
            "client",
            "--server",
            &format!("127.0.0.1:{udp}"),
            "--key",
            KEY,
            "--no-socks",
            "--forward",
            &format!("127.0.0.1:{port}={target}"),
            "--log",
            "warn",
            "--control",
            client_sock.to_str().unwrap(),
        ]),
        &dir.join(format!("{tag}-client.log")),
    );
    wait_for(&client_sock, "gaptun client");
    Tunnel {
        server,
        client,
        port,
    }
}

/// kcptun's flags: its fastest preset; compression off (the payload is random, and gaptun does
/// not compress); everything else at Debian's defaults (AES, FEC 10/3, windows 128/512).
const KCPTUN_FLAGS: &[&str] = &["--mode", "fast3", "--nocomp", "--quiet"];

/// A second kcptun run with larger windows (1024 packets each way, on both ends): Debian's
/// defaults (128 to send on the client) limit its upload on their own, and a comparison should
/// not rest on that alone.
const KCPTUN_WIDE: &[&str] = &["--sndwnd", "1024", "--rcvwnd", "1024"];

/// What is measured: gaptun, or kcptun with extra flags.
#[derive(Clone, Copy)]
enum Subject {
    Gaptun,
    Kcptun(&'static [&'static str]),
}

async fn start(subject: Subject, dir: &Path, tag: &str, target: SocketAddr) -> Tunnel {
    match subject {
        Subject::Gaptun => start_gaptun(dir, tag, target).await,
        Subject::Kcptun(extra) => start_kcptun(dir, tag, target, extra).await,
    }
}

async fn start_kcptun(dir: &Path, tag: &str, target: SocketAddr, extra: &[&str]) -> Tunnel {
    let udp = free_port();
    let server = Proc::spawn(
        "kcptun-server",
        Command::new("kcptun-server")
            .args(["--target", &target.to_string()])
            .args(["--listen", &format!("127.0.0.1:{udp}")])
            .args(["--key", KEY])
            .args(KCPTUN_FLAGS)
            .args(extra),
        &dir.join(format!("{tag}-kcptun-server.log")),
    );
    let port = free_tcp_port();
    let client = Proc::spawn(
        "kcptun-client",
        Command::new("kcptun-client")
            .args(["--remoteaddr", &format!("127.0.0.1:{udp}")])
            .args(["--localaddr", &format!("127.0.0.1:{port}")])
            .args(["--key", KEY])
            .args(KCPTUN_FLAGS)
            .args(extra),
        &dir.join(format!("{tag}-kcptun-client.log")),
    );
    wait_for_port(port, "kcptun-client").await;
    Tunnel {
        server,
        client,
        port,
    }
}

fn kcptun_available() -> bool {
    std::env::var("GAPTUN_BENCH_SKIP_KCPTUN").is_err()
        && Command::new("kcptun-client")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        && Command::new("kcptun-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Direction of a bulk transfer.
#[derive(Clone, Copy, PartialEq)]
enum Dir {
    /// Client side writes, the target reads.
    Upload,
    /// The target writes, the client side reads.
    Download,
}

/// A target for one bulk connection: sinks (upload) or sources (download) data.
async fn bulk_target(dir: Dir, count: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            match dir {
                Dir::Upload => {
                    tokio::spawn(pump_in(tcp, Arc::clone(&count)));
                }
                Dir::Download => {
                    tokio::spawn(pump_out(tcp));
                }
            }
        }
    });
    addr
}

/// Result of one bulk run.
struct Rate {
    mbit: f64,
    /// CPU seconds the tunnel's two processes used per second of transfer (2.0 = both cores).
    cpu_load: f64,
}

/// One connection through `tunnel` for 1 s of warm-up plus `secs` measured seconds.
async fn bulk(tunnel: &Tunnel, dir: Dir, count: Arc<AtomicU64>, secs: u64) -> Rate {
    let tcp = TcpStream::connect(("127.0.0.1", tunnel.port))
        .await
        .unwrap();
    let _ = tcp.set_nodelay(true);
    let task = match dir {
        Dir::Upload => tokio::spawn(pump_out(tcp)),
        Dir::Download => tokio::spawn(pump_in(tcp, Arc::clone(&count))),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (b0, c0, t0) = (count.load(Ordering::Relaxed), tunnel.cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (b1, c1, t1) = (count.load(Ordering::Relaxed), tunnel.cpu(), Instant::now());
    task.abort();
    let elapsed = (t1 - t0).as_secs_f64();
    Rate {
        mbit: (b1 - b0) as f64 * 8.0 / elapsed / 1e6,
        cpu_load: (c1.saturating_sub(c0)).as_secs_f64() / elapsed,
    }
}

async fn measure_bulk(dir_path: &Path, name: &str, dir: Dir, secs: u64, subject: Subject) -> Rate {
    let count = Arc::new(AtomicU64::new(0));
    let target = bulk_target(dir, Arc::clone(&count)).await;
    let tunnel = start(subject, dir_path, name, target).await;
    let rate = bulk(&tunnel, dir, count, secs).await;
    eprintln!(
        "{name}: {:.0} Mbit/s, tunnel CPU {:.2} cores",
        rate.mbit, rate.cpu_load
    );
    rate
}

/// The far end of the idle streams (runs as a child process): accepts, echoes one byte,
/// then holds the connection open. Prints its port on stdout.
fn hold_server() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        std::io::stdout().flush().unwrap();
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut b = [0u8; 1];
            // The first byte may take a moment; hold the connection either way.
            tokio::spawn(async move {
                if tcp.read_exact(&mut b).await.is_ok() {
                    let _ = tcp.write_all(&b).await;
                }
                std::future::pending::<()>().await;
                drop(tcp);
            });
        }
    });
}

fn spawn_hold_server() -> (Child, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("hold-server")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().unwrap();
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Opens `n` streams through `tunnel`, each confirmed end to end by a one-byte echo; returns
/// them (they stay open while held).
async fn open_idle_streams(tunnel: &Tunnel, n: usize) -> Vec<TcpStream> {
    let port = tunnel.port;
    let mut streams = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    let mut next = 0;
    while streams.len() < n {
        while next < n && pending.len() < 256 {
            next += 1;
            pending.spawn(async move {
                let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
                tcp.write_all(b"x").await?;
                let mut b = [0u8; 1];
                tokio::time::timeout(Duration::from_secs(30), tcp.read_exact(&mut b))
                    .await
                    .map_err(|_| std::io::Error::other("no echo within 30 s"))??;
                Ok::<_, std::io::Error>(tcp)
            });
        }
        match pending.join_next().await {
            Some(Ok(Ok(tcp))) => streams.push(tcp),
            Some(Ok(Err(e))) => panic!("stream {} failed: {e}", streams.len()),
            Some(Err(e)) => panic!("{e}"),
            None => break,
        }
    }
    streams
}

struct StreamsResult {
    rss_mib: f64,
    server_mib: f64,
    client_mib: f64,
    per_stream_kib: f64,
    open_secs: f64,
}

impl StreamsResult {
    fn describe(&self) -> String {
        format!(
            "{:.1} MiB (server {:.1}, client {:.1}; {:.2} KiB per stream; opened in {:.1} s)",
            self.rss_mib, self.server_mib, self.client_mib, self.per_stream_kib, self.open_secs
        )
    }
}

async fn measure_idle_streams(dir: &Path, n: usize, kcptun: bool) -> StreamsResult {
    let (mut holder, target) = spawn_hold_server();
    let name = if kcptun {
        "kcptun-streams"
    } else {
        "gaptun-streams"
    };
    let subject = if kcptun {
        Subject::Kcptun(&[])
    } else {
        Subject::Gaptun
    };
    let tunnel = start(subject, dir, name, target).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = tunnel.rss_kib();
    let start = Instant::now();
    let streams = open_idle_streams(&tunnel, n).await;
    let open_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = tunnel.rss_kib();
    let r = StreamsResult {
        rss_mib: rss as f64 / 1024.0,
        server_mib: tunnel.server.rss_kib() as f64 / 1024.0,
        client_mib: tunnel.client.rss_kib() as f64 / 1024.0,
        per_stream_kib: rss.saturating_sub(before) as f64 / n as f64,
        open_secs,
    };
    eprintln!(
        "{name}: {} streams open in {:.1} s, RSS {:.1} MiB (server {:.1}, client {:.1}; {:.2} KiB per stream)",
        streams.len(),
        r.open_secs,
        r.rss_mib,
        r.server_mib,
        r.client_mib,
        r.per_stream_kib
    );
    drop(streams);
    drop(tunnel);
    let _ = holder.kill();
    let _ = holder.wait();
    r
}

fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, m)| m.trim().to_owned());
    let cores = gaptun_bench_support::cores();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let date = gaptun_bench_support::date_utc();
    let load = gaptun_bench_support::loadavg();
    let kcptun = Command::new("kcptun-client")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "not installed".into());
    vec![
        ("date".into(), date),
        ("CPU".into(), model),
        ("cores".into(), cores.to_string()),
        ("kernel".into(), kernel),
        ("load average before the run".into(), load),
        ("kcptun".into(), kcptun),
    ]
}

async fn run() {
    let secs = env_u64("GAPTUN_BENCH_SECS", 10);
    let n_streams = env_u64("GAPTUN_BENCH_STREAMS", 10_000) as usize;
    let with_kcptun = kcptun_available();
    let parts = std::env::var("GAPTUN_BENCH_PARTS").unwrap_or_else(|_| "bulk,idle,streams".into());
    let part = |p: &str| parts.split(',').any(|x| x.trim() == p);
    let dir = scratch("bench");
    let info = machine();
    if !with_kcptun {
        eprintln!("kcptun not found (scripts/setup.sh installs it): measuring gaptun only");
    }

    let mut bulk_rows = Vec::new();
    for (dir_kind, label) in [
        (Dir::Upload, "client → server"),
        (Dir::Download, "server → client"),
    ] {
        let tag = if dir_kind == Dir::Upload {
            "up"
        } else {
            "down"
        };
        let g = measure_bulk(
            &dir,
            &format!("gaptun-{tag}"),
            dir_kind,
            secs,
            Subject::Gaptun,
        )
        .await;
        let k = if with_kcptun {
            let default = Subject::Kcptun(&[]);
            let wide = Subject::Kcptun(KCPTUN_WIDE);
            Some((
                measure_bulk(&dir, &format!("kcptun-{tag}"), dir_kind, secs, default).await,
                measure_bulk(&dir, &format!("kcptun-wide-{tag}"), dir_kind, secs, wide).await,
            ))
        } else {
            None
        };
        bulk_rows.push((label, g, k));
    }

    // Idle: a client with one forward, and its server, with no traffic.
    let mut idle = None;
    let mut idle_kcptun = None;
    if part("idle") {
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let t = start_gaptun(&dir, "idle", target).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (s, c) = (t.server.rss_kib(), t.client.rss_kib());
        eprintln!("idle: server {s} KiB, client {c} KiB");
        idle = Some((s, c));
        if with_kcptun {
            let t = start_kcptun(&dir, "idle", target, &[]).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            idle_kcptun = Some(t.rss_kib());
        }
    }

    let mut streams = None;
    let mut streams_kcptun = None;
    if part("streams") {
        streams = Some(measure_idle_streams(&dir, n_streams, false).await);
        if with_kcptun {
            streams_kcptun = Some(measure_idle_streams(&dir, n_streams, true).await);
        }
    }

    // The report.
    println!("## Daemon on loopback\n");
    println!(
        "Measured with `cargo bench -p gaptun --bench daemon` (release build; source \
         `crates/gaptun/benches/daemon.rs`): the `gaptun` binary as server and client \
         processes on 127.0.0.1, one tunnel connection, encryption on (AES-256-GCM chosen by \
         `cipher = auto`), default settings (`mode = fast`, BBR, window 32M). The traffic \
         source and sink are in the benchmark process and treat both tunnels alike: one TCP \
         connection through a TCP forward, 1 s of warm-up, then {secs} s measured at the \
         receiving end. kcptun is Debian's `kcptun-server`/`kcptun-client` with `{}` \
         (everything else at its defaults: AES, FEC 10/3, windows 128/512), in the same run, \
         and once more with `{}` on both ends. CPU is the tunnel processes' user + system \
         time per second of transfer.\n",
        KCPTUN_FLAGS.join(" "),
        KCPTUN_WIDE.join(" ")
    );
    println!("| | |\n|---|---|");
    for (k, v) in &info {
        println!("| {k} | {v} |");
    }
    println!();
    println!(
        "| transfer | gaptun | kcptun fast3 | ratio | kcptun fast3, windows 1024 | ratio | tunnel CPU (cores): gaptun / kcptun / kcptun 1024 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, g, k) in &bulk_rows {
        match k {
            Some((k, w)) => println!(
                "| {label} | {:.0} Mbit/s | {:.0} Mbit/s | {:.1}× | {:.0} Mbit/s | {:.1}× | {:.2} / {:.2} / {:.2} |",
                g.mbit,
                k.mbit,
                g.mbit / k.mbit.max(1e-9),
                w.mbit,
                g.mbit / w.mbit.max(1e-9),
                g.cpu_load,
                k.cpu_load,
                w.cpu_load
            ),
            None => println!(
                "| {label} | {:.0} Mbit/s | not measured | | | | {:.2} |",
                g.mbit, g.cpu_load
            ),
        }
    }
    println!();
    println!("| memory (RSS) | gaptun | kcptun |\n|---|---|---|");
    if let Some((s, c)) = idle {
        println!(
            "| idle, client + server | {:.1} MiB (server {:.1}, client {:.1}) | {} |",
            (s + c) as f64 / 1024.0,
            s as f64 / 1024.0,
            c as f64 / 1024.0,
            idle_kcptun.map_or("".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        );
    }
    if let Some(streams) = streams {
        println!(
            "| {n_streams} idle streams, client + server | {} | {} |",
            streams.describe(),
            streams_kcptun
                .as_ref()
                .map_or("".into(), StreamsResult::describe)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
