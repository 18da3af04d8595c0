//! `gaptun demo`: server and client in one process, joined through a lossy relay on loopback,
//! with SOCKS5 on 127.0.0.1:1080 and live link figures on the terminal.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use gaptun_proto::{ConnectionStats, EndpointConfig, Psk, TransportConfig};
use gaptun_runtime::lossy_relay::{LossyConfig, LossyRelay};
use gaptun_runtime::{ClientPool, PoolConfig, RtEndpoint};

use crate::apps_wiring::{self, PoolOpener, RelayPolicy};
use crate::ctl::human_bytes;
use crate::daemon::{accept_loop, bind_tcp, shutdown_signal};

/// What the demo was asked for.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    pub socks: SocketAddr,
    /// Loss probability, 0.0..=1.0.
    pub loss: f64,
    pub delay: Duration,
    pub seed: u64,
    pub transport: TransportConfig,
}

/// Totals over the client's connections at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub retransmitted: u64,
    pub lost: u64,
    pub rtt: Duration,
    pub streams: u64,
}

impl Sample {
    pub fn sum(stats: &[ConnectionStats]) -> Self {
        let mut s = Self::default();
        for c in stats {
            s.bytes_sent += c.bytes_sent;
            s.bytes_received += c.bytes_received;
            s.packets_sent += c.packets_sent;
            s.retransmitted += c.packets_retransmitted;
            s.lost += c.packets_lost;
            s.rtt = s.rtt.max(c.rtt);
            s.streams += c.streams_open;
        }
        s
    }
}

/// One status line from two samples `elapsed` apart.
pub fn status_line(prev: &Sample, now: &Sample, elapsed: Duration, uptime: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| human_bytes((b.saturating_sub(a) as f64 / secs) as u64);
    let loss = if now.packets_sent == 0 {
        0.0
    } else {
        now.lost as f64 * 100.0 / now.packets_sent as f64
    };
    format!(
        "[{:>4}s] down {:>7}B/s  up {:>7}B/s  rtt {:>5.1} ms  retransmitted {} ({:.1}% lost)  streams {}",
        uptime.as_secs(),
        rate(prev.bytes_received, now.bytes_received),
        rate(prev.bytes_sent, now.bytes_sent),
        now.rtt.as_secs_f64() * 1000.0,
        now.retransmitted,
        loss,
        now.streams,
    )
}

fn random_key() -> Result<Psk> {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow!("no OS randomness: {e}"))?;
    Ok(Psk::from_bytes(bytes))
}

/// Runs the demo until Ctrl-C.
pub async fn run(d: DemoSettings) -> Result<()> {
    if !(0.0..=0.5).contains(&d.loss) {
        bail!("--loss must be between 0 and 50 percent");
    }
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let socks = bind_tcp(d.socks, "socks").await?;
    let key = random_key()?;

    let server_config = EndpointConfig {
        transport: d.transport.clone(),
        ..EndpointConfig::server(vec![key.clone()])
    };
    let server = RtEndpoint::bind(loopback, server_config)?;
    // The demo lets SOCKS reach local services, which a real server refuses by default.
    let policy = Arc::new(RelayPolicy::build(&[], true)?);
    let server_task = tokio::spawn(accept_loop(server.clone(), policy, None));

    let relay = LossyRelay::spawn(LossyConfig {
        loss: d.loss,
        delay: d.delay,
        seed: d.seed,
        ..LossyConfig::new(loopback, server.local_addr())
    })
    .await?;

    let client_config = EndpointConfig {
        transport: d.transport.clone(),
        ..EndpointConfig::client(key)
    };
    let client = RtEndpoint::bind(loopback, client_config)?;
    let pool = ClientPool::with_endpoint(
        client,
        &relay.local_addr().to_string(),
        PoolConfig::default(),
    )
    .await
    .map_err(|e| anyhow!("demo tunnel did not come up: {e}"))?;

    print_banner(&d, &relay, &server, &socks);
    let mut socks_task = tokio::spawn(apps_wiring::serve_socks(
        socks,
        PoolOpener::new(pool.clone()),
        gaptun_apps::socks5::SocksConfig::default(),
    ));

    let result = tokio::select! {
        signal = shutdown_signal() => {
            println!();
            println!("{signal}: stopping the demo");
            Ok(())
        }
        r = &mut socks_task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow!("SOCKS5 task failed: {e}")),
        },
        () = show_figures(&pool) => Ok(()),
    };
    socks_task.abort();
    pool.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
    server_task.abort();
    result
}

fn print_banner(
    d: &DemoSettings,
    relay: &LossyRelay,
    server: &RtEndpoint,
    socks: &tokio::net::TcpListener,
) {
    let socks_addr = socks
        .local_addr()
        .map_or_else(|_| d.socks.to_string(), |a| a.to_string());
    println!(
        "gaptun demo: client -> lossy relay {} -> server {} (all on loopback)",
        relay.local_addr(),
        server.local_addr()
    );
    println!(
        "link: {:.1}% loss and {} ms delay each way, RTT {} ms",
        d.loss * 100.0,
        d.delay.as_millis(),
        d.delay.as_millis() * 2
    );
    println!("SOCKS5 on {socks_addr}; the demo server also reaches local services (allow_private)");
    println!("try: curl -x socks5h://{socks_addr} http://example.com/   (Ctrl-C to stop)");
}

/// Prints the client's figures once a second: one updating line on a terminal, plain lines
/// otherwise. Never returns.
async fn show_figures(pool: &ClientPool) {
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut prev = Sample::default();
    let mut prev_at = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let stats: Vec<ConnectionStats> = pool
            .connections()
            .iter()
            .filter_map(|c| c.stats())
            .collect();
        let now = Sample::sum(&stats);
        let at = Instant::now();
        let line = status_line(&prev, &now, at - prev_at, at - start);
        let mut out = std::io::stdout().lock();
        let _ = if tty {
            write!(out, "\r{line}\x1b[K")
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
        prev = now;
        prev_at = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_rates() {
        let prev = Sample {
            bytes_received: 0,
            bytes_sent: 0,
            ..Default::default()
        };
        let now = Sample {
            bytes_received: 2 << 20,
            bytes_sent: 10 * 1024,
            packets_sent: 1000,
            retransmitted: 25,
            lost: 20,
            rtt: Duration::from_millis(61),
            streams: 3,
        };
        let line = status_line(&prev, &now, Duration::from_secs(2), Duration::from_secs(7));
        assert_eq!(
            line,
            "[   7s] down    1.0MB/s  up    5.0KB/s  rtt  61.0 ms  retransmitted 25 (2.0% lost)  streams 3"
        );
    }

    #[test]
    fn sums_connections() {
        let a = ConnectionStats {
            bytes_sent: 5,
            rtt: Duration::from_millis(10),
            streams_open: 1,
            ..Default::default()
        };
        let b = ConnectionStats {
            bytes_sent: 7,
            rtt: Duration::from_millis(30),
            streams_open: 2,
            ..Default::default()
        };
        let s = Sample::sum(&[a, b]);
        assert_eq!(s.bytes_sent, 12);
        assert_eq!(s.rtt, Duration::from_millis(30));
        assert_eq!(s.streams, 3);
    }
}
