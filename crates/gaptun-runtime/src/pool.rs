//! [`ClientPool`]: a fixed number of connections to one server, kept alive.
//!
//! Several connections spread the load over several congestion controllers and UDP flows
//! (some networks throttle individual flows). Each slot has a supervisor task: it connects,
//! waits for the connection to end, and reconnects. New streams go to the live connection with
//! the fewest open streams (ties broken round-robin); while none is live, `open_stream` waits up
//! to a bound for a reconnect.
//!
//! Reconnecting: the core resends a handshake's Initial only every 2 s, so a single attempt
//! could notice a server that came back up to 2 s late. The supervisor therefore starts a new
//! attempt after each backoff delay (200 ms, doubling up to 1 s) while earlier ones still run,
//! keeping at most [`MAX_ATTEMPTS_IN_FLIGHT`] (the oldest is dropped to make room). The first
//! attempt that completes wins and the others are closed. A server that restarts is thus found
//! within about a second, at the cost of about one Initial per second while it is away.
//!
//! A server that crashes and comes back forgets our connection without closing it. The core
//! notices most such cases itself: a restarted server answers the old connection's packets with
//! a stateless reset, and a peer that stops answering while we wait on it ends the connection
//! within a few seconds (`TransportConfig::dead_peer_timeout`); either way the slot reconnects at
//! once. As a further guard the supervisor also watches for one-sided silence: packets keep going out and nothing has come
//! back for [`PoolConfig::silence_probe`] (or 8 RTTs, if longer); only packets the server must
//! acknowledge count, since an ACK-only packet gets no answer from a healthy server. It then probes with new
//! handshakes, as when reconnecting. If the server answers one, the new connection takes the
//! slot and new streams go there; the old connection is left to the streams it carries, and
//! ends with them: at its idle timeout if it is dead, or normally if it was only a passing
//! outage. If the old connection hears from the server again first, the probe is dropped.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use gaptun_proto::{CarrierId, ConnectionStats, EndpointConfig, PathAddr};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::carrier::{Carrier, UdpCarrier};
use crate::connection::RtConnection;
use crate::endpoint::RtEndpoint;
use crate::error::ConnectError;
use crate::ports::ServerTarget;
use crate::stream::RtStream;

/// Handshake attempts a reconnecting slot runs at once.
pub const MAX_ATTEMPTS_IN_FLIGHT: usize = 3;

/// How often a slot that cannot reconnect says so in the log.
const STILL_RECONNECTING_EVERY: Duration = Duration::from_secs(30);

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Connections kept open (at least 1).
    pub conns: usize,
    /// Delay before the second reconnect attempt (the first starts at once); doubles for each
    /// further one.
    pub backoff_min: Duration,
    /// Largest delay between reconnect attempts: a server that comes back is found within
    /// about this long.
    pub backoff_max: Duration,
    /// How long `open_stream` waits for a connection while none is live.
    pub open_wait: Duration,
    /// How long a connection may send without hearing back before the pool probes the server
    /// with a new handshake (see the module documentation); at least 8 RTTs.
    pub silence_probe: Duration,
    /// Port hopping: every this long, move every connection to a new local UDP socket (a new
    /// source port) and, with a server port range, to the range's next port first, without a
    /// new handshake (the server validates the new path). `None`: no hopping.
    pub hop_interval: Option<Duration>,
    /// Carrier kinds (`"udp"`, `"faketcp"`, ...) to use one at a time, most preferred first,
    /// failing over between them (`--carrier auto`, see
    /// [`RtEndpoint::connect_preferring`]); empty: spread over every carrier's paths.
    pub carrier_order: Vec<&'static str>,
}

/// The `kind()` of UDP carriers: the ones that spread over a port range and hop.
const UDP_KIND: &str = "udp";

/// After a hop, how long the old socket stays open: packets in flight to it, and the server's
/// until it has validated the new path (one round trip), still arrive.
pub const HOP_GRACE: Duration = Duration::from_secs(3);

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            conns: 1,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(1),
            open_wait: Duration::from_secs(15),
            silence_probe: Duration::from_secs(3),
            hop_interval: None,
            carrier_order: Vec::new(),
        }
    }
}

/// Exponential backoff with jitter: each delay is drawn from [d/2, d], then d doubles up to the
/// cap. The jitter keeps many clients from reconnecting in lockstep after a server restart.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `min`, capped at `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self {
            min,
            max: max.max(min),
            current: min,
        }
    }

    /// The next delay, with `unit` in [0, 1) choosing the jitter.
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// The next delay, jittered with the thread RNG.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// A pool of connections to one server.
///
/// Cheap to clone. Dropping the last clone stops reconnecting and closes the connections;
/// [`ClientPool::shutdown`] does the same and waits for the CLOSE frames to go out.
#[derive(Debug, Clone)]
pub struct ClientPool {
    inner: Arc<PoolInner>,
    _stop_on_drop: Arc<StopOnDrop>,
}

#[derive(Debug)]
struct PoolInner {
    endpoint: RtEndpoint,
    server: String,
    /// `server` parsed: host and port range.
    target: ServerTarget,
    /// The carrier new connections use (changes with each hop).
    carrier: Mutex<CarrierId>,
    /// Hops done so far (picks the first server port of the next one).
    hops: AtomicUsize,
    config: PoolConfig,
    slots: Mutex<Vec<Option<RtConnection>>>,
    /// Bumped whenever a slot changes, to wake `open_stream` waiters.
    version: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    next: AtomicUsize,
    last_error: Mutex<Option<String>>,
    /// Carriers connected to one server address of their own (TLS and QUIC: the server's
    /// port 443, not the UDP port of `server`): paths on them go to that address.
    peers: Mutex<Vec<(CarrierId, SocketAddr)>>,
    /// Connections whose handshake is under way, so that a carrier added meanwhile reaches
    /// them too (a client whose UDP is blocked may only get through over a late TLS carrier).
    handshaking: Mutex<Vec<RtConnection>>,
    /// Bumped by every [`PoolInner::add_carrier`] (see [`PoolInner::connect_once`]).
    carriers_added: AtomicU64,
    /// [`PoolConfig::carrier_order`], changed by [`ClientPool::set_carrier_order`] (a client
    /// that learns the server's carriers after connecting).
    order: Mutex<Vec<&'static str>>,
}

/// A carrier that became ready after the pool started (a TLS or QUIC carrier whose connection
/// took a few round trips, or came back after failing): the carrier, and the server's address
/// on it.
pub type LateCarrier = (Arc<dyn Carrier>, SocketAddr);

#[derive(Debug)]
struct StopOnDrop(Arc<PoolInner>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.send_replace(true);
        self.0.endpoint.close(0, b"client stopped");
    }
}

impl ClientPool {
    /// Resolves `server` (`host:port`), binds a UDP socket of the matching address family
    /// (IPv4 when the name has both, like kcptun and gap-proxy: a server listening on the
    /// default `0.0.0.0` is reachable over IPv4 only),
    /// establishes the first connection (failing with its error, e.g. the handshake timeout
    /// when the server is unreachable or the key is wrong), and starts keeping `config.conns`
    /// connections.
    pub async fn connect(
        server: &str,
        endpoint_config: EndpointConfig,
        config: PoolConfig,
    ) -> Result<Self, ConnectError> {
        let target = parse_target(server)?;
        let addrs = resolve(&target.lookup_name()).await?;
        let Some(first) = preferred(&addrs) else {
            return Err(ConnectError::NoAddress {
                host: server.to_owned(),
                family: "IP",
            });
        };
        let bind: SocketAddr = if first.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let endpoint = RtEndpoint::bind(bind, endpoint_config)
            .map_err(|e| ConnectError::Bind(e.to_string()))?;
        Self::with_endpoint(endpoint, server, config).await
    }

    /// Like [`ClientPool::connect`], on an endpoint the caller bound.
    pub async fn with_endpoint(
        endpoint: RtEndpoint,
        server: &str,
        config: PoolConfig,
    ) -> Result<Self, ConnectError> {
        Self::with_late_carriers(endpoint, server, config, None).await
    }

    /// Like [`ClientPool::with_endpoint`], and every carrier that arrives on `late` (even
    /// during the first handshake) is added to the endpoint and becomes a path of every
    /// connection, ranked by [`PoolConfig::carrier_order`]: the carriers that need a
    /// connection of their own (TLS, QUIC) are tried in parallel with the others instead of
    /// holding up the start.
    pub async fn with_late_carriers(
        endpoint: RtEndpoint,
        server: &str,
        config: PoolConfig,
        late: Option<mpsc::UnboundedReceiver<LateCarrier>>,
    ) -> Result<Self, ConnectError> {
        let target = parse_target(server)?;
        let conns = config.conns.max(1);
        // The UDP carrier spreads over the port range and hops; other carriers (fake TCP
        // with `--carrier all`) get one path each besides it.
        let carriers = endpoint.carriers();
        let carrier = carriers
            .iter()
            .find(|(_, kind, _)| *kind == UDP_KIND)
            .or(carriers.first())
            .map_or(CarrierId(0), |(id, _, _)| *id);
        let inner = Arc::new(PoolInner {
            endpoint,
            server: server.to_owned(),
            target,
            carrier: Mutex::new(carrier),
            hops: AtomicUsize::new(0),
            config: PoolConfig {
                conns,
                ..config.clone()
            },
            slots: Mutex::new(vec![None; conns]),
            version: watch::Sender::new(0),
            stop: watch::Sender::new(false),
            next: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            peers: Mutex::new(Vec::new()),
            handshaking: Mutex::new(Vec::new()),
            carriers_added: AtomicU64::new(0),
            order: Mutex::new(config.carrier_order.clone()),
        });
        if let Some(late) = late {
            tokio::spawn(add_late_carriers(Arc::downgrade(&inner), late));
        }
        let first = inner.connect_once().await?;
        info!(server, remote = %first.remote_address(), cipher = %cipher_of(&first), "connected");
        // In the slot before returning, so the caller sees the connection at once.
        inner.set_slot(0, Some(first.clone()));
        tokio::spawn(supervise(Arc::clone(&inner), 0, Some(first)));
        for slot in 1..conns {
            tokio::spawn(supervise(Arc::clone(&inner), slot, None));
        }
        if let Some(interval) = inner.config.hop_interval {
            tokio::spawn(hop(Arc::clone(&inner), interval));
        }
        Ok(Self {
            _stop_on_drop: Arc::new(StopOnDrop(Arc::clone(&inner))),
            inner,
        })
    }

    /// The endpoint the pool's connections live on (for stats and the receive window).
    pub fn endpoint(&self) -> &RtEndpoint {
        &self.inner.endpoint
    }

    /// The server as given.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// The live connections.
    pub fn connections(&self) -> Vec<RtConnection> {
        self.inner.live()
    }

    /// Replaces [`PoolConfig::carrier_order`]: from now on every connection, live or new,
    /// uses one carrier at a time in this order (an empty list affects only new connections:
    /// they spread). For a client that learns which carriers the server offers only once
    /// connected.
    pub fn set_carrier_order(&self, order: Vec<&'static str>) {
        *self
            .inner
            .order
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = order;
        for conn in self.inner.live() {
            self.inner.refresh_paths(&conn);
        }
    }

    /// Each connection of the pool once, as it comes up (the live ones at once, then every
    /// reconnect or replacement), for services that live per connection: an exposing client
    /// registers its exposes on each. Ends when the pool stops; does not keep it running.
    pub fn connection_feed(&self) -> mpsc::UnboundedReceiver<RtConnection> {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let mut version = inner.version.subscribe();
            let mut stop = inner.stop.subscribe();
            let mut known: Vec<RtConnection> = Vec::new();
            loop {
                known.retain(|c| !c.is_closed());
                for conn in inner.live() {
                    if !known.iter().any(|k| k.same_connection(&conn)) {
                        known.push(conn.clone());
                        if tx.send(conn).is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    changed = version.changed() => if changed.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                    () = tx.closed() => return,
                }
            }
        });
        rx
    }

    /// Opens a stream on the least-loaded live connection. While no connection is live (all
    /// reconnecting), waits up to `open_wait` for one.
    pub async fn open_stream(&self) -> io::Result<RtStream> {
        let deadline = tokio::time::Instant::now() + self.inner.config.open_wait;
        let mut version = self.inner.version.subscribe();
        loop {
            if *self.inner.stop.borrow() {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "client is shutting down",
                ));
            }
            if let Some(conn) = self.inner.pick() {
                match tokio::time::timeout_at(deadline, conn.open_stream()).await {
                    Ok(Ok(stream)) => return Ok(stream),
                    // The connection died while we waited: try another one.
                    Ok(Err(_)) if conn.is_closed() => continue,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "timed out waiting for a free stream (the server's stream limit is reached)",
                        ));
                    }
                }
            }
            match tokio::time::timeout_at(deadline, version.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(self.inner.unavailable()),
            }
        }
    }

    /// Stops reconnecting, closes every connection and waits (up to `limit`) for the CLOSE
    /// frames to be sent.
    pub async fn shutdown(&self, limit: Duration) {
        self.inner.stop.send_replace(true);
        self.inner.endpoint.shutdown(limit).await;
    }
}

impl PoolInner {
    fn live(&self) -> Vec<RtConnection> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .iter()
            .flatten()
            .filter(|c| !c.is_closed())
            .cloned()
            .collect()
    }

    /// The live connection with the fewest open streams; round-robin among equals.
    fn pick(&self) -> Option<RtConnection> {
        let live = self.live();
        if live.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % live.len();
        let load = |c: &RtConnection| c.stats().map_or(u64::MAX, |s| s.streams_open);
        (0..live.len())
            .filter_map(|i| live.get((start + i) % live.len()))
            .min_by_key(|c| load(c))
            .cloned()
    }

    fn set_slot(&self, slot: usize, conn: Option<RtConnection>) {
        {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = slots.get_mut(slot) {
                *s = conn;
            }
        }
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn note_error(&self, e: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e);
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn unavailable(&self) -> io::Error {
        let msg = match self.last_error() {
            Some(e) => format!("no connection to {}: {e}", self.server),
            None => format!("no connection to {}", self.server),
        };
        io::Error::new(io::ErrorKind::NotConnected, msg)
    }

    /// The paths to the server at `ip`: on the current UDP carrier one per port of the range,
    /// starting (after hops) at a different port each time; on a carrier with an address of
    /// its own (a late TLS or QUIC carrier) one path there; on every other carrier (fake TCP,
    /// which spreads over ports by itself) one path to the first port.
    fn paths_to(&self, ip: std::net::IpAddr) -> Vec<PathAddr> {
        let carrier = *self.carrier.lock().unwrap_or_else(PoisonError::into_inner);
        let ports: Vec<u16> = self.target.ports().collect();
        let start = self.hops.load(Ordering::Relaxed) % ports.len().max(1);
        let first = ports.first().copied().unwrap_or(0);
        let peers = self
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let others = self
            .endpoint
            .carriers()
            .into_iter()
            .filter(|(id, kind, _)| *id != carrier && *kind != UDP_KIND)
            .map(|(id, _, _)| {
                let remote = peers
                    .iter()
                    .find(|(c, _)| *c == id)
                    .map_or(SocketAddr::new(ip, first), |&(_, a)| a);
                PathAddr::new(id, remote)
            });
        let mut paths: Vec<PathAddr> = others.collect();
        paths.extend(
            ports
                .iter()
                .cycle()
                .skip(start)
                .take(ports.len())
                .map(|&port| PathAddr::new(carrier, SocketAddr::new(ip, port))),
        );
        paths
    }

    /// Whether the connections use one carrier at a time (a carrier order is set).
    fn fails_over(&self) -> bool {
        !self
            .order
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// The carriers in the order of [`PoolConfig::carrier_order`] (empty: no preference).
    fn carrier_order(&self) -> Vec<CarrierId> {
        let carriers = self.endpoint.carriers();
        let udp = *self.carrier.lock().unwrap_or_else(PoisonError::into_inner);
        self.order
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|&kind| {
                if kind == UDP_KIND {
                    // The UDP carrier in use (port hopping replaces it).
                    return Some(udp);
                }
                carriers
                    .iter()
                    .find(|(_, k, _)| *k == kind)
                    .map(|(id, _, _)| *id)
            })
            .collect()
    }

    /// Adds a carrier whose server address is `peer` and gives every connection, live or
    /// still in its handshake, a path over it.
    fn add_carrier(&self, carrier: Arc<dyn Carrier>, peer: SocketAddr) -> io::Result<()> {
        let kind = carrier.kind();
        let id = self.endpoint.add_carrier(carrier)?;
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, peer));
        self.carriers_added.fetch_add(1, Ordering::SeqCst);
        let handshaking = self
            .handshaking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut conns = self.live();
        conns.extend(handshaking.into_iter().filter(|c| !c.is_closed()));
        for conn in &conns {
            self.refresh_paths(conn);
        }
        info!(carrier = kind, %peer, connections = conns.len(), "carrier ready: added as a path");
        Ok(())
    }

    /// Gives `conn` the paths over every carrier now, and the preference over them.
    fn refresh_paths(&self, conn: &RtConnection) {
        let ip = conn.remote_address().ip();
        let _ = conn.set_paths(&self.paths_to(ip));
        if self.fails_over() {
            let _ = conn.set_carrier_preference(&self.carrier_order());
        }
    }

    /// Resolves the server again (its address may have changed) and connects once.
    async fn connect_once(&self) -> Result<RtConnection, ConnectError> {
        let want_v4 = self.endpoint.local_addr().is_ipv4();
        let addrs = resolve(&self.target.lookup_name()).await?;
        let Some(addr) = addrs.into_iter().find(|a| a.is_ipv4() == want_v4) else {
            let family = if want_v4 { "IPv4" } else { "IPv6" };
            return Err(ConnectError::NoAddress {
                host: self.server.clone(),
                family,
            });
        };
        let added = self.carriers_added.load(Ordering::SeqCst);
        let result = self
            .endpoint
            .connect_preferring_seen(&self.paths_to(addr.ip()), &self.carrier_order(), |conn| {
                self.handshaking
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(conn.clone());
                // A carrier added since the paths were chosen, before the connection was
                // listed: `add_carrier` did not see it.
                if self.carriers_added.load(Ordering::SeqCst) != added {
                    self.refresh_paths(conn);
                }
            })
            .await;
        self.handshaking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|c| {
                !c.is_closed() && !result.as_ref().is_ok_and(|done| done.same_connection(c))
            });
        if let Err(e) = &result {
            self.note_error(e.to_string());
        }
        result
    }
}

/// Adds the carriers that arrive on `late` until the pool or the sender goes away.
async fn add_late_carriers(
    inner: std::sync::Weak<PoolInner>,
    mut late: mpsc::UnboundedReceiver<LateCarrier>,
) {
    while let Some((carrier, peer)) = late.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if *inner.stop.borrow() {
            return;
        }
        let kind = carrier.kind();
        if let Err(e) = inner.add_carrier(carrier, peer) {
            warn!(carrier = kind, "cannot add the carrier: {e}");
        }
    }
}

/// `server` as a [`ServerTarget`], or the error that names what is wrong with it.
fn parse_target(server: &str) -> Result<ServerTarget, ConnectError> {
    server
        .parse()
        .map_err(|reason| ConnectError::InvalidServer {
            server: server.to_owned(),
            reason,
        })
}

/// Port hopping (see [`PoolConfig::hop_interval`]): every `interval`, a new local socket
/// becomes the carrier of every live connection and of new ones; the old socket is dropped
/// [`HOP_GRACE`] later.
async fn hop(inner: Arc<PoolInner>, interval: Duration) {
    let mut stop = inner.stop.subscribe();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let local = inner.endpoint.local_addr();
        let unspecified = SocketAddr::new(
            if local.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            },
            0,
        );
        let carrier = match UdpCarrier::bind(unspecified) {
            Ok(c) => c,
            Err(e) => {
                warn!("port hop: cannot bind a new UDP socket: {e}; staying on the current one");
                continue;
            }
        };
        let new_port = carrier.local_addr().map(|a| a.port()).unwrap_or(0);
        let id = match inner.endpoint.add_carrier(Arc::new(carrier)) {
            Ok(id) => id,
            Err(e) => {
                warn!("port hop: {e}; hopping stops");
                return;
            }
        };
        let old = std::mem::replace(
            &mut *inner.carrier.lock().unwrap_or_else(PoisonError::into_inner),
            id,
        );
        inner.hops.fetch_add(1, Ordering::Relaxed);
        let mut moved = 0;
        for conn in inner.live() {
            let ip = conn.remote_address().ip();
            if conn.set_paths(&inner.paths_to(ip)).is_ok() {
                moved += 1;
            }
            if inner.fails_over() {
                let _ = conn.set_carrier_preference(&inner.carrier_order());
            }
        }
        debug!(local_port = new_port, moved, "port hop");
        let endpoint = inner.endpoint.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HOP_GRACE).await;
            endpoint.remove_carrier(old);
        });
    }
}

/// The address to connect to: the first IPv4 one, else the first.
fn preferred(addrs: &[SocketAddr]) -> Option<&SocketAddr> {
    addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first())
}

async fn resolve(server: &str) -> Result<Vec<SocketAddr>, ConnectError> {
    let addrs = tokio::net::lookup_host(server)
        .await
        .map_err(|e| ConnectError::Resolve {
            host: server.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(addrs.collect())
}

/// Keeps slot `slot` connected until the pool stops.
async fn supervise(inner: Arc<PoolInner>, slot: usize, mut conn: Option<RtConnection>) {
    let mut stop = inner.stop.subscribe();
    loop {
        if let Some(c) = conn.take() {
            inner.set_slot(slot, Some(c.clone()));
            match watch(&inner, slot, &c, &mut stop).await {
                Watched::Stopped => return,
                Watched::Replaced(new) => {
                    warn!(
                        server = %inner.server,
                        slot,
                        "the server stopped answering on its connection but accepted a new one \
                         (did it restart?): new streams use the new connection"
                    );
                    conn = Some(new);
                    continue;
                }
                Watched::Lost(reason) => {
                    inner.set_slot(slot, None);
                    warn!(server = %inner.server, slot, "connection lost: {reason}; reconnecting");
                }
            }
        }
        let started = tokio::time::Instant::now();
        conn = tokio::select! {
            c = reconnect(&inner, slot) => Some(c),
            _ = stop.wait_for(|s| *s) => {
                debug!(slot, "pool stopped");
                return;
            }
        };
        info!(
            server = %inner.server,
            slot,
            cipher = %conn.as_ref().map_or("", cipher_of),
            "reconnected after {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// The connection's cipher suite, for its one log line.
fn cipher_of(conn: &RtConnection) -> &'static str {
    conn.stats().map_or("", |s| s.cipher)
}

/// How watching a live connection ended.
enum Watched {
    /// The pool is stopping.
    Stopped,
    /// The connection ended.
    Lost(crate::error::RtError),
    /// The connection went silent and a probe reached the server: this connection replaces it.
    Replaced(RtConnection),
}

/// How often a live connection's counters are checked for silence.
const SILENCE_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Waits for the connection to end, probing the server if it goes silent.
async fn watch(
    inner: &Arc<PoolInner>,
    slot: usize,
    conn: &RtConnection,
    stop: &mut watch::Receiver<bool>,
) -> Watched {
    let mut tick = tokio::time::interval(SILENCE_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silence = conn
        .stats()
        .map(|s| SilenceWatch::new(&s))
        .unwrap_or_default();
    let mut probe: Option<std::pin::Pin<Box<dyn Future<Output = RtConnection> + Send + '_>>> = None;
    loop {
        tokio::select! {
            reason = conn.closed() => {
                // Closed because the pool is shutting down: not a loss to report.
                if *inner.stop.borrow() {
                    return Watched::Stopped;
                }
                return Watched::Lost(reason);
            }
            _ = stop.wait_for(|s| *s) => return Watched::Stopped,
            new = async {
                match probe.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            } => return Watched::Replaced(new),
            _ = tick.tick() => {
                let Some(stats) = conn.stats() else { continue };
                let silent = silence.update(&stats, Instant::now());
                let limit = inner.config.silence_probe.max(stats.rtt * 8);
                if silent >= limit && probe.is_none() {
                    debug!(
                        server = %inner.server,
                        slot,
                        "nothing heard for {:.1} s while sending: probing the server",
                        silent.as_secs_f64()
                    );
                    probe = Some(Box::pin(reconnect(inner, slot)));
                } else if silent.is_zero() && probe.is_some() {
                    debug!(server = %inner.server, slot, "the server answers again: probe dropped");
                    probe = None;
                }
            }
        }
    }
}

/// Tracks one-sided silence from a connection's counters: since when packets the server must
/// answer have been going out without anything coming back.
///
/// Only ack-eliciting packets count: an ACK-only packet (such as the delayed ACK that follows
/// the last response of a burst) gets no answer from a healthy server, and counting it made a
/// quiet, healthy connection look dead a few seconds after traffic stopped.
#[derive(Debug, Default)]
struct SilenceWatch {
    received: u64,
    sent: u64,
    unanswered_since: Option<Instant>,
}

impl SilenceWatch {
    fn new(stats: &ConnectionStats) -> Self {
        Self {
            received: stats.packets_received,
            sent: stats.packets_ack_eliciting_sent,
            unanswered_since: None,
        }
    }

    /// Takes new counters; returns how long we have been sending without hearing anything.
    fn update(&mut self, stats: &ConnectionStats, now: Instant) -> Duration {
        if stats.packets_received != self.received {
            *self = Self::new(stats);
            return Duration::ZERO;
        }
        if stats.packets_ack_eliciting_sent != self.sent && self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
        self.sent = stats.packets_ack_eliciting_sent;
        self.unanswered_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }
}

/// Runs staggered handshake attempts until one succeeds (see the module documentation).
/// Dropping the future drops the attempts still running.
async fn reconnect(inner: &Arc<PoolInner>, slot: usize) -> RtConnection {
    let mut backoff = Backoff::new(inner.config.backoff_min, inner.config.backoff_max);
    let mut attempts: JoinSet<Result<RtConnection, ConnectError>> = JoinSet::new();
    let mut running: VecDeque<AbortHandle> = VecDeque::new();
    let since = tokio::time::Instant::now();
    let mut next_start = since;
    let mut next_report = since + STILL_RECONNECTING_EVERY;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_start) => {
                running.retain(|a| !a.is_finished());
                if running.len() >= MAX_ATTEMPTS_IN_FLIGHT
                    && let Some(oldest) = running.pop_front()
                {
                    oldest.abort();
                    inner.note_error(format!(
                        "no answer from server for {:.0} s: check that it is running, and the address, port and key",
                        since.elapsed().as_secs_f64()
                    ));
                }
                let attempt = Arc::clone(inner);
                running.push_back(attempts.spawn(async move { attempt.connect_once().await }));
                next_start = tokio::time::Instant::now() + backoff.next_delay();
            }
            Some(done) = attempts.join_next() => match done {
                Ok(Ok(conn)) => return conn,
                Ok(Err(e)) => debug!(server = %inner.server, slot, "connect attempt failed: {e}"),
                Err(_) => {} // dropped to make room for a newer attempt
            },
        }
        if tokio::time::Instant::now() >= next_report {
            next_report += STILL_RECONNECTING_EVERY;
            warn!(
                server = %inner.server,
                slot,
                "still reconnecting after {:.0} s: {}",
                since.elapsed().as_secs_f64(),
                inner.last_error().unwrap_or_else(|| "no answer".into())
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_cap_with_jitter_bounds() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let full: Vec<_> = (0..7).map(|_| b.next_with(1.0)).collect();
        let ms: Vec<u128> = full.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_with(0.0), Duration::from_millis(100));
        assert_eq!(b.next_with(0.5), Duration::from_millis(300));
    }

    #[test]
    fn backoff_random_stays_in_range() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_secs(5),
                "{d:?}"
            );
        }
    }

    #[test]
    fn silence_counts_from_the_first_unanswered_packet() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let stats = |sent, received| ConnectionStats {
            packets_sent: sent,
            packets_ack_eliciting_sent: sent,
            packets_received: received,
            ..Default::default()
        };
        let mut w = SilenceWatch::new(&stats(10, 10));
        // Idle: nothing sent, nothing heard, however long.
        assert_eq!(w.update(&stats(10, 10), at(5000)), Duration::ZERO);
        // A keepalive goes out and is answered: still no silence.
        assert_eq!(w.update(&stats(11, 10), at(6000)), Duration::ZERO);
        assert_eq!(w.update(&stats(11, 11), at(6100)), Duration::ZERO);
        // Packets go out and nothing comes back: counted from when the first was seen.
        assert_eq!(w.update(&stats(12, 11), at(7000)), Duration::ZERO);
        assert_eq!(w.update(&stats(15, 11), at(8000)), Duration::from_secs(1));
        assert_eq!(w.update(&stats(15, 11), at(10_000)), Duration::from_secs(3));
        // Anything heard ends it.
        assert_eq!(w.update(&stats(16, 12), at(10_100)), Duration::ZERO);
        assert_eq!(w.update(&stats(16, 12), at(20_000)), Duration::ZERO);
    }

    #[test]
    fn ack_only_packets_are_not_unanswered() {
        // Regression: after the last response of a burst the client sends a delayed ACK, which
        // a healthy server does not answer. That must not start the silence clock.
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let stats = |sent, eliciting, received| ConnectionStats {
            packets_sent: sent,
            packets_ack_eliciting_sent: eliciting,
            packets_received: received,
            ..Default::default()
        };
        let mut w = SilenceWatch::new(&stats(10, 8, 10));
        assert_eq!(w.update(&stats(11, 8, 10), at(100)), Duration::ZERO);
        assert_eq!(w.update(&stats(11, 8, 10), at(4_000)), Duration::ZERO);
        assert_eq!(w.update(&stats(12, 8, 10), at(10_000)), Duration::ZERO);
        // An unanswered PING does.
        assert_eq!(w.update(&stats(13, 9, 10), at(11_000)), Duration::ZERO);
        assert_eq!(
            w.update(&stats(13, 9, 10), at(14_000)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn ipv4_is_preferred() {
        let v6: SocketAddr = "[2001:db8::1]:29900".parse().unwrap();
        let v4: SocketAddr = "192.0.2.1:29900".parse().unwrap();
        assert_eq!(preferred(&[v6, v4]), Some(&v4));
        assert_eq!(preferred(&[v6]), Some(&v6));
        assert_eq!(preferred(&[]), None);
    }

    #[tokio::test]
    async fn resolve_rejects_bad_names() {
        let err = resolve("no-port-here").await.unwrap_err();
        assert!(matches!(err, ConnectError::Resolve { .. }), "{err:?}");
    }
}
