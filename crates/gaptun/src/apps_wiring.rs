//! Glue between the daemons and `gaptun-apps` (SOCKS5, port forwards, the server-side relay):
//! the runtime's client pool becomes the apps' [`StreamOpener`], and the server's allow list
//! becomes a [`TargetPolicy`].

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use gaptun_apps::addr::TargetAddr;
use gaptun_apps::expose::{ExposePeer, ExposeServer, PortSet};
use gaptun_apps::flow::{DatagramIo, FlowMux, ReadDatagram};
use gaptun_apps::policy::{AllowRule, TargetPolicy};
use gaptun_apps::relay::{DialConfig, RelayError};
use gaptun_apps::socks5::SocksConfig;
use gaptun_apps::tunnel::{StreamAcceptor, StreamOpener};
use gaptun_runtime::{ClientPool, RtConnection, RtDatagrams, RtStream};
use gaptun_stats::{Counted, ForwardStats};
use tokio::net::{TcpListener, UdpSocket};

use crate::ratelimit::{Limited, RateLimit};

/// How long a UDP forward keeps a session to the server without traffic.
const UDP_FORWARD_IDLE: Duration = Duration::from_secs(120);

/// Opens tunnel streams for the client-side applications: each open goes through the pool
/// (least-loaded connection, waiting during reconnects).
#[derive(Debug, Clone)]
pub struct PoolOpener {
    pool: ClientPool,
    /// The datagram flows of each pool connection a UDP relay has used, by connection key.
    flows: Arc<Mutex<HashMap<u64, FlowMux>>>,
}

impl PoolOpener {
    pub fn new(pool: ClientPool) -> Self {
        Self {
            pool,
            flows: Arc::default(),
        }
    }
}

impl StreamOpener for PoolOpener {
    type Stream = RtStream;

    fn open(&self) -> impl Future<Output = io::Result<RtStream>> + Send {
        let pool = self.pool.clone();
        async move { pool.open_stream().await }
    }

    fn flows(&self, stream: &RtStream) -> Option<FlowMux> {
        let datagrams = stream.datagrams();
        datagrams.max_size()?;
        let mut flows = self.flows.lock().ok()?;
        // Connections that ended leave with their flows.
        flows.retain(|_, mux| mux.usable());
        let mux = flows
            .entry(datagrams.connection_key())
            .or_insert_with(|| flow_mux(datagrams));
        Some(mux.clone())
    }
}

/// The runtime's datagrams as the apps' flows see them.
struct Datagrams(RtDatagrams);

impl DatagramIo for Datagrams {
    fn max_datagram_size(&self) -> Option<usize> {
        self.0.max_size()
    }

    fn send_datagram(&self, data: Vec<u8>) -> io::Result<()> {
        self.0.send(data)
    }

    fn read_datagram(&self) -> ReadDatagram<'_> {
        Box::pin(async move { self.0.read().await.map_err(io::Error::from) })
    }
}

/// UDP relay flows over one connection's datagrams.
pub fn flow_mux(datagrams: RtDatagrams) -> FlowMux {
    FlowMux::new(Arc::new(Datagrams(datagrams)))
}

/// The pool as one forward (or SOCKS5) opens streams on it: each stream is counted into the
/// forward's figures (`ctl stats`, the dashboard).
#[derive(Debug, Clone)]
pub struct CountingOpener {
    pool: PoolOpener,
    stats: Arc<ForwardStats>,
}

impl CountingOpener {
    pub fn new(pool: PoolOpener, stats: Arc<ForwardStats>) -> Self {
        Self { pool, stats }
    }
}

impl StreamOpener for CountingOpener {
    type Stream = Counted<RtStream>;

    fn open(&self) -> impl Future<Output = io::Result<Counted<RtStream>>> + Send {
        let open = self.pool.open();
        let stats = Arc::clone(&self.stats);
        async move { Ok(stats.count(open.await?)) }
    }

    /// UDP relays of a counted forward or SOCKS5 use datagrams like uncounted ones.
    fn flows(&self, stream: &Counted<RtStream>) -> Option<FlowMux> {
        self.pool.flows(stream.get_ref())
    }
}

/// One tunnel connection as the expose code sees it: the client registers on it and accepts
/// the server's visitor streams. The pool opener is there for its datagram flows: a UDP
/// visitor's flow must go through the same mux as the forwards' flows of that connection (a
/// second mux would take their datagrams).
#[derive(Debug, Clone)]
pub struct ConnHandle(pub RtConnection, pub PoolOpener);

impl StreamOpener for ConnHandle {
    type Stream = RtStream;

    fn open(&self) -> impl Future<Output = io::Result<RtStream>> + Send {
        let conn = self.0.clone();
        async move { conn.open_stream().await }
    }

    /// UDP exposes carry their visitors' datagrams on flows when the server offers them.
    fn flows(&self, stream: &RtStream) -> Option<FlowMux> {
        self.1.flows(stream)
    }
}

impl StreamAcceptor for ConnHandle {
    type Accepted = RtStream;

    fn accept(&self) -> impl Future<Output = Option<RtStream>> + Send {
        let conn = self.0.clone();
        async move { conn.accept_stream().await }
    }
}

/// A server's connection to one client as its user's streams see it: the visitor streams the
/// expose server opens on it draw from the user's rate limit.
#[derive(Debug, Clone)]
pub struct UserConn {
    pub conn: RtConnection,
    pub limit: Option<Arc<RateLimit>>,
}

impl StreamOpener for UserConn {
    type Stream = Limited<RtStream>;

    fn open(&self) -> impl Future<Output = io::Result<Limited<RtStream>>> + Send {
        let (conn, limit) = (self.conn.clone(), self.limit.clone());
        async move { Ok(Limited::new(conn.open_stream().await?, limit)) }
    }
}

/// What the server lets clients reach, parsed once at start-up.
#[derive(Debug, Clone)]
pub struct RelayPolicy {
    targets: TargetPolicy,
    dial: DialConfig,
}

impl RelayPolicy {
    /// Builds the policy from `--allow` rules (IP, CIDR, IP:PORT, [IPV6]:PORT or HOST:PORT) and
    /// `allow_private`; a rule that does not parse is an error naming it.
    pub fn build(allow: &[String], allow_private: bool) -> Result<Self> {
        let mut targets = TargetPolicy::new();
        targets.allow_private = allow_private;
        for rule in allow {
            let parsed: AllowRule = rule.parse().with_context(|| format!("--allow {rule}"))?;
            targets.allow.push(parsed);
        }
        Ok(Self {
            targets,
            dial: DialConfig::default(),
        })
    }
}

/// A server's user as the connection code needs it: the name logs show, the targets it may
/// reach and the ports it may expose (its own rules, else the server-wide ones).
#[derive(Debug, Clone)]
pub struct ServerUser {
    pub name: Arc<str>,
    pub policy: Arc<RelayPolicy>,
    /// The user's own `expose_ports`; `None`: the server's.
    pub expose_ports: Option<Arc<PortSet>>,
    /// The bucket all of the user's relay and expose streams draw from; `None`: no limit.
    pub limit: Option<Arc<RateLimit>>,
}

impl ServerUser {
    /// One entry per key, in the endpoint's key order. A user with its own `allow` gets its
    /// own policy (built once, shared by its keys); the others share `server_wide`.
    pub fn for_keys(
        key_users: &[Arc<crate::settings::User>],
        server_wide: &Arc<RelayPolicy>,
        allow_private: bool,
    ) -> Result<Vec<Self>> {
        let mut out: Vec<Self> = Vec::with_capacity(key_users.len());
        for (i, user) in key_users.iter().enumerate() {
            // A user with several keys: the same entry again.
            let earlier = key_users
                .get(..i)
                .and_then(|before| before.iter().position(|u| Arc::ptr_eq(u, user)))
                .and_then(|j| out.get(j).cloned());
            if let Some(same) = earlier {
                out.push(same);
                continue;
            }
            let policy = match &user.allow {
                Some(rules) => Arc::new(
                    RelayPolicy::build(rules, allow_private)
                        .with_context(|| format!("user {}", user.name))?,
                ),
                None => Arc::clone(server_wide),
            };
            out.push(Self {
                name: Arc::clone(&user.name),
                policy,
                expose_ports: user.expose_ports.clone().map(Arc::new),
                limit: user.rate_limit.map(|mbit| Arc::new(RateLimit::new(mbit))),
            });
        }
        Ok(out)
    }
}

/// Parses a forward target (`HOST:PORT`, `IP:PORT` or `[IPV6]:PORT`).
fn target(spec: &str) -> Result<TargetAddr> {
    spec.parse()
        .with_context(|| format!("forward target {spec}"))
}

/// Serves SOCKS5 on `listener` until an unrecoverable error.
pub async fn serve_socks(
    listener: TcpListener,
    opener: impl StreamOpener,
    config: SocksConfig,
) -> Result<()> {
    gaptun_apps::socks5::serve_socks(listener, opener, config)
        .await
        .context("SOCKS5 server")
}

/// Forwards TCP connections accepted on `listener` to `target` (reached from the server).
pub async fn serve_tcp_forward(
    listener: TcpListener,
    spec: String,
    opener: impl StreamOpener,
) -> Result<()> {
    let target = target(&spec)?;
    gaptun_apps::forward::serve_tcp_forward(listener, target, opener)
        .await
        .with_context(|| format!("TCP forward to {spec}"))
}

/// Forwards UDP datagrams received on `socket` to `target` (reached from the server).
pub async fn serve_udp_forward(
    socket: UdpSocket,
    spec: String,
    opener: impl StreamOpener,
) -> Result<()> {
    let target = target(&spec)?;
    gaptun_apps::forward::serve_udp_forward(socket, target, opener, UDP_FORWARD_IDLE)
        .await
        .with_context(|| format!("UDP forward to {spec}"))
}

/// Serves one stream a client opened on the server: reads the target request, checks it
/// against the policy, dials, and relays.
pub async fn serve_relay_stream(
    stream: Limited<RtStream>,
    policy: Arc<RelayPolicy>,
    expose: Option<(ExposeServer<UserConn>, ExposePeer<UserConn>)>,
    flows: Option<FlowMux>,
) -> Result<(), RelayError> {
    match expose {
        Some((server, peer)) => {
            server
                .serve_stream(stream, &peer, &policy.targets, &policy.dial)
                .await
        }
        None => {
            gaptun_apps::relay::serve_stream_with_flows(
                stream,
                &policy.targets,
                &policy.dial,
                flows.as_ref(),
            )
            .await
        }
    }
}
