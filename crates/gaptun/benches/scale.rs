//! Server scaling on loopback: `cargo bench -p gaptun --bench scale` (release build).
//!
//! One `gaptun server` process with `--threads 1` and then `--threads 2` (side by side, the
//! pair repeated), 8 `gaptun client` processes each with one TCP forward, and one bulk upload
//! through each forward at once. The sink (and the source) are in this process. Reported: the
//! aggregate rate at the sink, the server's CPU (cores), and its busiest threads' CPU, which
//! shows whether the shards ran on separate cores.
//!
//! Environment: `GAPTUN_BENCH_SECS` (measured seconds per run, default 8),
//! `GAPTUN_BENCH_PAIRS` (repeats of the 1-vs-2 pair, default 2), `GAPTUN_BENCH_CLIENTS`
//! (default 8). Prints a Markdown section on stdout, progress on stderr.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{env_u64, free_port, free_tcp_port, gaptun, pump_in, pump_out, scratch, wait_for};

use gaptun_bench_support::{loadavg, machine_table, process_cpu, thread_cpus};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "benchmark-passphrase";

fn main() {
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
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time so far, of the process and of each of its threads.
    fn cpu(&self) -> (Duration, HashMap<u32, Duration>) {
        let threads = thread_cpus(self.pid()).into_iter().collect();
        (process_cpu(self.pid()), threads)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run's figures.
struct Run {
    mbit: f64,
    /// Server CPU, in cores.
    server_cores: f64,
    /// The server's busiest threads, in cores, busiest first.
    threads: Vec<f64>,
}

async fn run_once(
    dir: &Path,
    threads: usize,
    clients: usize,
    secs: u64,
    sink: SocketAddr,
    count: &AtomicU64,
) -> Run {
    let tag = format!("t{threads}-{}", free_port());
    let udp = free_port();
    let server_sock = dir.join(format!("{tag}-server.sock"));
    let server = Proc::spawn(
        "gaptun server",
        gaptun()
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{udp}"),
                "--key",
                KEY,
                "--allow",
                "127.0.0.1",
                "--log",
                "warn",
                "--threads",
                &threads.to_string(),
                "--control",
                server_sock.to_str().unwrap(),
            ])
            // The replay state file goes to the scratch directory, not the user's.
            .env("STATE_DIRECTORY", dir),
        &dir.join(format!("{tag}-server.log")),
    );
    wait_for(&server_sock, "gaptun server");
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    for i in 0..clients {
        let port = free_tcp_port();
        let sock = dir.join(format!("{tag}-client{i}.sock"));
        procs.push(Proc::spawn(
            "gaptun client",
            gaptun().args([
                "client",
                "--server",
                &format!("127.0.0.1:{udp}"),
                "--key",
                KEY,
                "--conns",
                "1",
                "--no-socks",
                "--forward",
                &format!("127.0.0.1:{port}={sink}"),
                "--log",
                "warn",
                "--control",
                sock.to_str().unwrap(),
            ]),
            &dir.join(format!("{tag}-client{i}.log")),
        ));
        wait_for(&sock, "gaptun client");
        ports.push(port);
    }
    let mut tasks = Vec::new();
    for port in ports {
        let deadline = Instant::now() + Duration::from_secs(20);
        let tcp = loop {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(t) => break t,
                Err(e) => {
                    assert!(Instant::now() < deadline, "forward {port}: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        tasks.push(tokio::spawn(pump_out(tcp)));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (b0, (c0, th0), t0) = (count.load(Ordering::Relaxed), server.cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (b1, (c1, th1), t1) = (count.load(Ordering::Relaxed), server.cpu(), Instant::now());
    for t in tasks {
        t.abort();
    }
    let elapsed = (t1 - t0).as_secs_f64();
    let mut per_thread: Vec<f64> = th1
        .iter()
        .map(|(tid, c)| {
            let before = th0.get(tid).copied().unwrap_or_default();
            c.saturating_sub(before).as_secs_f64() / elapsed
        })
        .collect();
    per_thread.sort_by(|a, b| b.total_cmp(a));
    per_thread.truncate(3);
    drop(procs);
    drop(server);
    Run {
        mbit: (b1 - b0) as f64 * 8.0 / elapsed / 1e6,
        server_cores: c1.saturating_sub(c0).as_secs_f64() / elapsed,
        threads: per_thread,
    }
}

async fn run() {
    let secs = env_u64("GAPTUN_BENCH_SECS", 8);
    let pairs = env_u64("GAPTUN_BENCH_PAIRS", 2);
    let clients = env_u64("GAPTUN_BENCH_CLIENTS", 8) as usize;
    let dir = scratch("scale");
    let count = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink = listener.local_addr().unwrap();
    {
        let count = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(pump_in(tcp, Arc::clone(&count)));
            }
        });
    }
    println!("### Server threads, {clients} clients uploading at once (loopback)\n");
    println!("{}", machine_table());
    println!(
        "| pair | `--threads 1` | `--threads 2` | ratio | server CPU (cores) 1 / 2 | server CPU s/GB 1 / 2 | busiest server threads (cores), `--threads 2` | load average after |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for pair in 0..pairs {
        // Alternate the order, so a change in the machine's load does not favour one side.
        let order: [usize; 2] = if pair % 2 == 0 { [1, 2] } else { [2, 1] };
        let mut runs = HashMap::new();
        for threads in order {
            let r = run_once(&dir, threads, clients, secs, sink, &count).await;
            eprintln!(
                "threads {threads}: {:.0} Mbit/s, server {:.2} cores, threads {:?}",
                r.mbit, r.server_cores, r.threads
            );
            runs.insert(threads, r);
        }
        let (one, two) = (&runs[&1], &runs[&2]);
        let ratio = two.mbit / one.mbit.max(1e-9);
        ratios.push(ratio);
        // Server CPU seconds per GB carried: whether sharding costs extra work per byte (with
        // the clients on the same cores, the rate alone cannot show the server's capacity).
        let s_per_gb = |r: &Run| r.server_cores / (r.mbit / 8000.0).max(1e-9);
        println!(
            "| {} | {:.0} Mbit/s | {:.0} Mbit/s | {:.2}× | {:.2} / {:.2} | {:.2} / {:.2} | {} | {} |",
            pair + 1,
            one.mbit,
            two.mbit,
            ratio,
            one.server_cores,
            two.server_cores,
            s_per_gb(one),
            s_per_gb(two),
            two.threads
                .iter()
                .map(|t| format!("{t:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            loadavg()
        );
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
    println!("\nMean ratio `--threads 2` / `--threads 1`: {mean:.2}×");
    let _ = std::fs::remove_dir_all(&dir);
}
