//! Request/response latency: a tiny fixed-size request/response server and a client that
//! times each exchange, optionally through a SOCKS5 proxy (CONNECT done here by hand).
//!
//! Both sides run inside the namespaces as hidden subcommands of this binary
//! (`rr-server`, `rr-client`); the client prints a JSON [`RrReport`].

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::emulator::netns;
use crate::error::{BenchError, IoContext, Result};
use crate::procs::{self, Managed};

/// Size of a request and of a response.
pub const MSG_LEN: usize = 64;

/// What the client measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RrReport {
    /// Round-trip time of every successful exchange, in microseconds.
    pub samples_us: Vec<u64>,
    /// Time to open each connection (including the SOCKS5 handshake), in microseconds.
    pub connect_us: Vec<u64>,
    /// Exchanges that failed (connection error, timeout, short read).
    pub errors: u64,
    /// Every successful exchange with its connection and start time, to tell a slow exchange
    /// of its own from a stall that delayed several connections at once.
    #[serde(default)]
    pub exchanges: Vec<Exchange>,
}

/// One timed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    /// Index of its connection.
    pub conn: u16,
    /// When it started, in microseconds since the client began.
    pub start_us: u64,
    /// Its round trip, in microseconds.
    pub us: u64,
}

/// Summary kept in the results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyResult {
    /// Median round trip in ms.
    pub p50_ms: f64,
    /// 99th percentile round trip in ms.
    pub p99_ms: f64,
    /// Failed exchanges.
    pub errors: u64,
    /// All samples in ms, sorted, for the CDF chart.
    pub samples_ms: Vec<f64>,
    /// The exchanges in the order they started.
    pub timeline: Vec<Exchange>,
    /// Stalls of the machine itself during the measurement (see `measure::stalls`).
    pub stalls: Option<crate::measure::stalls::StallReport>,
}

/// Nearest-rank percentile of sorted samples (`q` in 0..=100).
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl LatencyResult {
    /// Summarises a client report.
    pub fn from_report(r: &RrReport) -> Result<Self> {
        let mut ms: Vec<f64> = r.samples_us.iter().map(|u| *u as f64 / 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let none = || BenchError::Parse {
            what: "latency samples".into(),
            detail: format!("no successful exchange ({} errors)", r.errors),
        };
        Ok(Self {
            p50_ms: percentile(&ms, 50.0).ok_or_else(none)?,
            p99_ms: percentile(&ms, 99.0).ok_or_else(none)?,
            errors: r.errors,
            samples_ms: ms,
            timeline: {
                let mut t = r.exchanges.clone();
                t.sort_by_key(|e| e.start_us);
                t
            },
            stalls: None,
        })
    }
}

/// Serves fixed-size request/responses forever (one thread per connection).
pub fn serve(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen).ctx(format!("bind {listen}"))?;
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        thread::spawn(move || {
            let _ = serve_conn(stream);
        });
    }
    Ok(())
}

fn serve_conn(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = [0u8; MSG_LEN];
    loop {
        s.read_exact(&mut buf)?;
        s.write_all(&buf)?;
    }
}

/// Performs a SOCKS5 no-auth CONNECT to `target` over `s`.
pub fn socks5_connect(s: &mut TcpStream, target: SocketAddrV4) -> io::Result<()> {
    s.write_all(&[5, 1, 0])?;
    let mut hello = [0u8; 2];
    s.read_exact(&mut hello)?;
    if hello != [5, 0] {
        return Err(io::Error::other(format!(
            "SOCKS5 method refused: {hello:?}"
        )));
    }
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&target.ip().octets());
    req.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&req)?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    if head[0] != 5 || head[1] != 0 {
        return Err(io::Error::other(format!(
            "SOCKS5 CONNECT failed, reply {}",
            head[1]
        )));
    }
    let addr_len = match head[3] {
        1 => 4,
        4 => 16,
        3 => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l)?;
            usize::from(l[0])
        }
        other => return Err(io::Error::other(format!("SOCKS5 bad address type {other}"))),
    };
    let mut rest = vec![0u8; addr_len + 2];
    s.read_exact(&mut rest)
}

/// Opens one measured connection (direct or through SOCKS5).
fn open(
    target: SocketAddrV4,
    socks: Option<SocketAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let addr = socks.unwrap_or(SocketAddr::V4(target));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    if socks.is_some() {
        socks5_connect(&mut s, target)?;
    }
    Ok(s)
}

/// One connection's share: `count` sequential exchanges.
fn client_conn(
    conn: u16,
    begin: Instant,
    target: SocketAddrV4,
    socks: Option<SocketAddr>,
    count: usize,
    timeout: Duration,
) -> RrReport {
    let mut rep = RrReport::default();
    let t0 = Instant::now();
    let Ok(mut s) = open(target, socks, timeout) else {
        rep.errors = count as u64;
        return rep;
    };
    rep.connect_us.push(t0.elapsed().as_micros() as u64);
    let mut msg = [0u8; MSG_LEN];
    for i in 0..count {
        msg[0] = i as u8;
        let t = Instant::now();
        let ok = s.write_all(&msg).and_then(|()| s.read_exact(&mut msg));
        if ok.is_err() {
            rep.errors += (count - i) as u64;
            break;
        }
        let us = t.elapsed().as_micros() as u64;
        rep.samples_us.push(us);
        rep.exchanges.push(Exchange {
            conn,
            start_us: t.duration_since(begin).as_micros() as u64,
            us,
        });
    }
    rep
}

/// `count` sequential exchanges, each on a new connection: the time from starting the connect
/// to the first byte of the response (what a new visitor waits for), in `samples_us`.
fn client_fresh(target: SocketAddrV4, count: usize, timeout: Duration) -> RrReport {
    let mut rep = RrReport::default();
    let mut msg = [0u8; MSG_LEN];
    for i in 0..count {
        msg[0] = i as u8;
        let t = Instant::now();
        let r = open(target, None, timeout).and_then(|mut s| {
            s.write_all(&msg)?;
            let mut first = [0u8; 1];
            s.read_exact(&mut first)?;
            let us = t.elapsed().as_micros() as u64;
            s.read_exact(&mut msg[1..])?;
            if first[0] != i as u8 {
                return Err(io::Error::other("response does not echo the request"));
            }
            Ok(us)
        });
        match r {
            Ok(us) => rep.samples_us.push(us),
            Err(_) => rep.errors += 1,
        }
    }
    rep
}

/// Runs `count` exchanges spread over `conns` parallel connections (with `fresh`, each
/// exchange on a new connection, timed to the response's first byte).
pub fn client_mode(
    target: SocketAddrV4,
    socks: Option<SocketAddr>,
    count: usize,
    conns: usize,
    timeout: Duration,
    fresh: bool,
) -> RrReport {
    if !fresh {
        return client(target, socks, count, conns, timeout);
    }
    let conns = conns.clamp(1, count.max(1));
    let handles: Vec<_> = (0..conns)
        .map(|i| {
            let share = count / conns + usize::from(i < count % conns);
            thread::spawn(move || client_fresh(target, share, timeout))
        })
        .collect();
    let mut all = RrReport::default();
    for h in handles {
        let r = h.join().unwrap_or_default();
        all.samples_us.extend(r.samples_us);
        all.errors += r.errors;
    }
    all
}

/// Runs `count` exchanges spread over `conns` parallel connections.
pub fn client(
    target: SocketAddrV4,
    socks: Option<SocketAddr>,
    count: usize,
    conns: usize,
    timeout: Duration,
) -> RrReport {
    let conns = conns.clamp(1, count.max(1));
    let begin = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|i| {
            let share = count / conns + usize::from(i < count % conns);
            let conn = u16::try_from(i).unwrap_or(u16::MAX);
            thread::spawn(move || client_conn(conn, begin, target, socks, share, timeout))
        })
        .collect();
    let mut all = RrReport::default();
    for h in handles {
        let r = h.join().unwrap_or_default();
        all.samples_us.extend(r.samples_us);
        all.connect_us.extend(r.connect_us);
        all.exchanges.extend(r.exchanges);
        all.errors += r.errors;
    }
    all
}

/// Starts the request/response server in namespace `ns` (this binary, `rr-server`).
pub fn spawn_server(ns: &str, exe: &Path, listen: SocketAddr, log: &Path) -> Result<Managed> {
    let exe = exe.to_string_lossy();
    Managed::spawn(
        "rr-server",
        netns::exec(ns, &exe).args(["rr-server", "--listen", &listen.to_string()]),
        log,
    )
}

/// Runs the client in namespace `ns` and summarises it.
pub fn measure(
    ns: &str,
    exe: &Path,
    target: SocketAddrV4,
    socks: Option<SocketAddr>,
    count: usize,
    conns: usize,
) -> Result<LatencyResult> {
    measure_mode(ns, exe, target, socks, count, conns, false)
}

/// [`measure`], with `fresh`: a new connection per exchange, timed to the first response byte.
pub fn measure_mode(
    ns: &str,
    exe: &Path,
    target: SocketAddrV4,
    socks: Option<SocketAddr>,
    count: usize,
    conns: usize,
    fresh: bool,
) -> Result<LatencyResult> {
    let exe = exe.to_string_lossy();
    let mut cmd = netns::exec(ns, &exe);
    cmd.args(["rr-client", "--target", &target.to_string()])
        .args(["--count", &count.to_string(), "--conns", &conns.to_string()]);
    if fresh {
        cmd.arg("--fresh");
    }
    if let Some(s) = socks {
        cmd.args(["--socks", &s.to_string()]);
    }
    let out = procs::run(&mut cmd, Duration::from_secs(120))?;
    let rep: RrReport = serde_json::from_slice(&out.stdout).map_err(|e| BenchError::Parse {
        what: "rr-client output".into(),
        detail: e.to_string(),
    })?;
    LatencyResult::from_report(&rep)
}

/// Loopback address helper for tests and defaults.
pub fn local(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 0.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_of_empty_report_is_an_error() {
        let r = RrReport {
            errors: 3,
            ..Default::default()
        };
        assert!(matches!(
            LatencyResult::from_report(&r),
            Err(BenchError::Parse { .. })
        ));
    }

    fn start_server() -> SocketAddrV4 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            panic!("v4 expected")
        };
        thread::spawn(move || {
            for c in l.incoming().flatten() {
                thread::spawn(move || serve_conn(c));
            }
        });
        addr
    }

    #[test]
    fn direct_round_trips_on_loopback() {
        let addr = start_server();
        let rep = client(addr, None, 50, 3, Duration::from_secs(5));
        assert_eq!(rep.samples_us.len(), 50);
        assert_eq!(rep.connect_us.len(), 3);
        assert_eq!(rep.errors, 0);
    }

    #[test]
    fn fresh_mode_opens_a_connection_per_exchange() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            panic!("v4 expected")
        };
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = accepted.clone();
        thread::spawn(move || {
            for c in l.incoming().flatten() {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                thread::spawn(move || serve_conn(c));
            }
        });
        let rep = client_mode(addr, None, 12, 2, Duration::from_secs(5), true);
        assert_eq!((rep.samples_us.len(), rep.errors), (12, 0));
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 12);
    }

    /// A minimal SOCKS5 server for the test: checks the exact bytes, replies with a domain
    /// address type to exercise that parsing path, then relays to the echo server.
    #[test]
    fn socks5_handshake_bytes_and_relay() {
        let echo = start_server();
        let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
        let paddr = proxy.local_addr().unwrap();
        thread::spawn(move || {
            let (mut c, _) = proxy.accept().unwrap();
            let mut hello = [0u8; 3];
            c.read_exact(&mut hello).unwrap();
            assert_eq!(hello, [5, 1, 0]);
            c.write_all(&[5, 0]).unwrap();
            let mut req = [0u8; 10];
            c.read_exact(&mut req).unwrap();
            let mut want = vec![5, 1, 0, 1, 127, 0, 0, 1];
            want.extend_from_slice(&echo.port().to_be_bytes());
            assert_eq!(req.to_vec(), want);
            c.write_all(&[5, 0, 0, 3, 2, b'h', b'i', 0, 80]).unwrap();
            let mut up = TcpStream::connect(echo).unwrap();
            let mut c2 = c.try_clone().unwrap();
            let mut up2 = up.try_clone().unwrap();
            thread::spawn(move || io::copy(&mut c2, &mut up2));
            let _ = io::copy(&mut up, &mut c);
        });
        let rep = client(echo, Some(paddr), 20, 1, Duration::from_secs(5));
        assert_eq!(rep.errors, 0);
        assert_eq!(rep.samples_us.len(), 20);
    }

    #[test]
    fn refused_connection_counts_errors() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            panic!("v4 expected")
        };
        drop(l);
        let rep = client(addr, None, 10, 2, Duration::from_secs(1));
        assert_eq!(rep.errors, 10);
        assert!(rep.samples_us.is_empty());
    }
}
