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

use crate::apps_wiring::{self, PoolOpener, RelayPolicy, ServerUser};
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

/// One direction's packet counters: what its sender sent, lost and sent again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Direction {
    pub packets_sent: u64,
    pub retransmitted: u64,
    pub lost: u64,
}

impl Direction {
    fn add(&mut self, c: &ConnectionStats) {
        self.packets_sent += c.packets_sent;
        self.retransmitted += c.packets_retransmitted;
        // Losses the peer acknowledged afterwards were not losses (the packet was only late).
        self.lost += c.packets_lost.saturating_sub(c.packets_lost_spurious);
    }

    /// Lost packets as a percentage of those sent.
    fn loss_percent(&self) -> f64 {
        percent(self.lost, self.packets_sent)
    }
}

/// Totals at one moment. Byte rates, RTT and streams come from the client; the packet counters
/// come from each direction's sender, since only a sender knows what it lost: during a download
/// that is the server (the demo runs both ends, so it can ask both).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Client to server.
    pub up: Direction,
    /// Server to client.
    pub down: Direction,
    pub rtt: Duration,
    pub streams: u64,
    /// Datagrams the lossy relay passed on and dropped on purpose (both directions): the loss
    /// the link was set up with, as opposed to what the senders saw (which adds queue drops).
    pub relay_forwarded: u64,
    pub relay_dropped: u64,
}

impl Sample {
    /// Sums the client's connections and the server's.
    pub fn sum(client: &[ConnectionStats], server: &[ConnectionStats]) -> Self {
        let mut s = Self::default();
        for c in client {
            s.bytes_sent += c.bytes_sent;
            s.bytes_received += c.bytes_received;
            s.up.add(c);
            s.rtt = s.rtt.max(c.rtt);
            s.streams += c.streams_open;
        }
        for c in server {
            s.down.add(c);
        }
        s
    }
}

/// `part` as a percentage of `whole` (0 when `whole` is 0).
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// One status line from two samples `elapsed` apart.
pub fn status_line(prev: &Sample, now: &Sample, elapsed: Duration, uptime: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| human_bytes((b.saturating_sub(a) as f64 / secs) as u64);
    format!(
        "[{:>4}s] down {:>7}B/s  up {:>7}B/s  rtt {:>5.1} ms  lost down {:.1}% up {:.1}% (link drops {:.1}%)  retransmitted down {} up {}  streams {}",
        uptime.as_secs(),
        rate(prev.bytes_received, now.bytes_received),
        rate(prev.bytes_sent, now.bytes_sent),
        now.rtt.as_secs_f64() * 1000.0,
        now.down.loss_percent(),
        now.up.loss_percent(),
        percent(now.relay_dropped, now.relay_forwarded + now.relay_dropped),
        now.down.retransmitted,
        now.up.retransmitted,
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
    let users: Arc<[ServerUser]> = vec![ServerUser {
        name: "key 1".into(),
        policy,
        expose_ports: None,
        limit: None,
    }]
    .into();
    let server_task = tokio::spawn(accept_loop(server.clone(), users, None));

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
        () = show_figures(&pool, &server, &relay) => Ok(()),
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

/// Prints the link's figures once a second: one updating line on a terminal, plain lines
/// otherwise. Never returns.
async fn show_figures(pool: &ClientPool, server: &RtEndpoint, relay: &LossyRelay) {
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut prev = Sample::default();
    let mut prev_at = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let client: Vec<ConnectionStats> = pool
            .connections()
            .iter()
            .filter_map(|c| c.stats())
            .collect();
        let served: Vec<ConnectionStats> = server
            .connection_stats()
            .into_iter()
            .map(|c| c.stats)
            .collect();
        let (relay_forwarded, relay_dropped) = relay.counts();
        let now = Sample {
            relay_forwarded,
            relay_dropped,
            ..Sample::sum(&client, &served)
        };
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
            up: Direction {
                packets_sent: 200,
                retransmitted: 1,
                lost: 1,
            },
            down: Direction {
                packets_sent: 1000,
                retransmitted: 25,
                lost: 20,
            },
            rtt: Duration::from_millis(61),
            streams: 3,
            relay_forwarded: 980,
            relay_dropped: 20,
        };
        let line = status_line(&prev, &now, Duration::from_secs(2), Duration::from_secs(7));
        assert_eq!(
            line,
            "[   7s] down    1.0MB/s  up    5.0KB/s  rtt  61.0 ms  lost down 2.0% up 0.5% (link drops 2.0%)  retransmitted down 25 up 1  streams 3"
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
        let server = ConnectionStats {
            packets_sent: 100,
            packets_lost: 5,
            packets_lost_spurious: 3,
            packets_retransmitted: 3,
            bytes_sent: 1000,
            ..Default::default()
        };
        let s = Sample::sum(&[a, b], &[server]);
        assert_eq!(s.bytes_sent, 12, "byte rates are the client's");
        assert_eq!(
            s.down,
            Direction {
                packets_sent: 100,
                retransmitted: 3,
                lost: 2
            },
            "the server's losses are the download's"
        );
        assert_eq!(s.rtt, Duration::from_millis(30));
        assert_eq!(s.streams, 3);
    }
}
