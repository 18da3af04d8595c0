//! Many idle visitor connections (expose scenario): a sink next to the tunnel client that
//! greets every connection with one byte and then keeps it open, and a load tool next to the
//! tunnel server that opens N connections, reads each greeting (so every counted connection
//! really reached the service through the tunnel), holds them while it samples the daemons'
//! resident set from `/proc`, then closes them.
//!
//! Both run inside the namespaces as hidden subcommands of this binary (`idle-sink`,
//! `idle-conns`); the load tool prints a JSON [`IdleReport`]. The sink needs no thread per
//! connection, so 10 000 of them cost it only the sockets.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::emulator::netns;
use crate::error::{BenchError, IoContext, Result};
use crate::procs::{self, Managed};

/// The byte the sink sends first on every connection.
pub const GREETING: u8 = b'k';
/// Connections opened before their greetings are read (a batch is in flight at once).
const BATCH: usize = 256;

/// What the load tool measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdleReport {
    /// Connections asked for.
    pub wanted: usize,
    /// Connections that were open and greeted by the service, all held at once.
    pub held: usize,
    /// Connections that failed (connect error, no greeting within the timeout).
    pub errors: usize,
    /// First error seen, if any.
    pub first_error: Option<String>,
    /// Seconds to open and confirm all of them.
    pub open_seconds: f64,
    /// Resident set (`VmRSS`) of each watched process before opening, KiB.
    pub rss_before_kib: Vec<u64>,
    /// Highest resident set of each watched process while all connections were held, KiB.
    pub rss_held_kib: Vec<u64>,
    /// Resident set of each watched process a second after closing them, KiB.
    pub rss_after_kib: Vec<u64>,
}

impl IdleReport {
    /// Sum over the watched processes of their resident set while the connections were held.
    pub fn held_total_mib(&self) -> f64 {
        self.rss_held_kib.iter().sum::<u64>() as f64 / 1024.0
    }
}

/// Accepts forever; greets each connection with [`GREETING`] and keeps it (never reads).
pub fn sink(listen: SocketAddr) -> Result<()> {
    raise_nofile();
    let listener = TcpListener::bind(listen).ctx(format!("bind {listen}"))?;
    let mut held = Vec::new();
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        // One byte into an empty send buffer does not block.
        // Closed connections are not pruned: a sink lives for one system's measurements only.
        if s.write_all(&[GREETING]).is_ok() {
            held.push(s);
        }
    }
    Ok(())
}

/// Raises this process's open-file soft limit as far as the hard limit allows (10 000 sockets
/// need more than the usual 1024); returns the limit now in force (0 if unknown).
pub fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

/// Current resident set (`VmRSS`) of `pid` in KiB, 0 if it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| parse_vmrss_kib(&t))
        .unwrap_or(0)
}

/// `VmRSS` in KiB from the text of `/proc/<pid>/status`.
pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    super::procstat::parse_status_kib(status, "VmRSS:")
}

fn open_one(target: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&target, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    Ok(s)
}

fn greeted(s: &mut TcpStream) -> io::Result<()> {
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if b[0] == GREETING {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "unexpected greeting byte {}",
            b[0]
        )))
    }
}

/// Opens `count` connections to `target` (within `limit` overall, each connect and greeting
/// within `timeout`), holds them for `hold` while sampling the resident set of `pids`, then
/// closes them.
pub fn load(
    target: SocketAddr,
    count: usize,
    hold: Duration,
    (limit, timeout): (Duration, Duration),
    pids: &[u32],
) -> IdleReport {
    let nofile = raise_nofile();
    let sample = || pids.iter().map(|p| rss_kib(*p)).collect::<Vec<_>>();
    let mut rep = IdleReport {
        wanted: count,
        rss_before_kib: sample(),
        ..Default::default()
    };
    if (nofile as usize) < count + 64 {
        rep.first_error = Some(format!(
            "open-file limit {nofile} is too low for {count} connections"
        ));
    }
    let start = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(count);
    let fail = |rep: &mut IdleReport, e: io::Error| {
        rep.errors += 1;
        rep.first_error.get_or_insert_with(|| e.to_string());
    };
    while held.len() + rep.errors < count && start.elapsed() < limit {
        let n = BATCH.min(count - held.len() - rep.errors);
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            match open_one(target, timeout) {
                Ok(s) => batch.push(s),
                Err(e) => fail(&mut rep, e),
            }
        }
        for mut s in batch {
            match greeted(&mut s) {
                Ok(()) => held.push(s),
                Err(e) => fail(&mut rep, e),
            }
        }
        // Many failures in a row: the system is not coping; stop rather than time out each.
        if rep.errors > 100 && rep.errors * 2 > held.len() {
            break;
        }
    }
    rep.open_seconds = start.elapsed().as_secs_f64();
    rep.held = held.len();
    let mut peak = sample();
    let until = Instant::now() + hold;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
        for (p, v) in peak.iter_mut().zip(sample()) {
            *p = (*p).max(v);
        }
    }
    rep.rss_held_kib = peak;
    drop(held);
    std::thread::sleep(Duration::from_secs(1));
    rep.rss_after_kib = sample();
    rep
}

/// Starts the sink in namespace `ns` (this binary, `idle-sink`).
pub fn spawn_sink(ns: &str, exe: &Path, listen: SocketAddr, log: &Path) -> Result<Managed> {
    let exe = exe.to_string_lossy();
    Managed::spawn(
        "idle-sink",
        netns::exec(ns, &exe).args(["idle-sink", "--listen", &listen.to_string()]),
        log,
    )
}

/// Runs the load tool in namespace `ns` against `target`, watching `pids`.
pub fn measure(
    ns: &str,
    exe: &Path,
    target: SocketAddr,
    count: usize,
    pids: &[u32],
) -> Result<IdleReport> {
    let exe = exe.to_string_lossy();
    let pids = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = netns::exec(ns, &exe);
    cmd.args(["idle-conns", "--target", &target.to_string()])
        .args(["--count", &count.to_string(), "--pids", &pids]);
    let out = procs::run(&mut cmd, Duration::from_secs(240))?;
    serde_json::from_slice(&out.stdout).map_err(|e| BenchError::Parse {
        what: "idle-conns output".into(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss_is_parsed() {
        let status = "Name:\tx\nVmHWM:\t    5120 kB\nVmRSS:\t 4000 kB\n";
        assert_eq!(parse_vmrss_kib(status), Some(4000));
        assert_eq!(parse_vmrss_kib("Name: x\n"), None);
    }

    #[test]
    fn load_holds_greeted_connections_and_counts_silent_ones() {
        // A sink on loopback of this namespace: every connection is greeted and held.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        std::thread::spawn(move || sink(addr));
        std::thread::sleep(Duration::from_millis(100));
        let me = std::process::id();
        let r = load(
            addr,
            300,
            Duration::from_millis(300),
            (Duration::from_secs(20), Duration::from_secs(5)),
            &[me],
        );
        assert_eq!((r.held, r.errors), (300, 0), "{r:?}");
        assert_eq!(r.rss_held_kib.len(), 1);
        assert!(r.rss_held_kib[0] > 0);
        // A listener that never greets: every connection is an error, not a held one.
        let mute = TcpListener::bind("127.0.0.1:0").unwrap();
        let r = load(
            mute.local_addr().unwrap(),
            3,
            Duration::ZERO,
            (Duration::from_secs(1), Duration::from_millis(200)),
            &[],
        );
        assert_eq!(r.held, 0);
        assert!(r.errors >= 1, "{r:?}");
        assert!(r.first_error.is_some());
    }
}
