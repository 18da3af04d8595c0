//! [`RtEndpoint`]: a UDP socket with its connections, driven by a tokio task.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gaptun_proto::{
    CarrierId, ConnectionHandle, ConnectionStats, Endpoint, EndpointConfig, EndpointStats,
    PathAddr, RngSeed,
};
use tracing::{debug, error};

use crate::carrier::{Carrier, UdpCarrier};
use crate::connection::RtConnection;
use crate::driver::Driver;
use crate::error::{ConnectError, RtError};
use crate::group::Group;
use crate::replay_state::ReplayStore;
use crate::state::{Shared, register, wake_all};

/// One connection's figures, for `stats` displays.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionInfo {
    /// The core's handle (stable while the connection lives).
    pub handle: ConnectionHandle,
    /// The peer's current address.
    pub remote: SocketAddr,
    /// Whether the handshake completed and the connection is not closing.
    pub established: bool,
    /// When the connection was created (tells apart two connections to one peer). Kept as a
    /// moment rather than an age so that the figures of a connection that did nothing stay
    /// the same from one snapshot to the next (see [`ConnectionList`]).
    pub created: Instant,
    /// The core's counters and estimates.
    pub stats: ConnectionStats,
    /// Which of the endpoint's keys the connection uses (a server names the user by it).
    pub key_index: usize,
    /// What carries the connection's packets now (its current path's carrier): `"udp"`,
    /// `"faketcp"`.
    pub carrier: &'static str,
    /// Each of its paths: a client's set (with `--carrier auto`, which are active and which
    /// standby), a server's current and alternate paths.
    pub paths: Vec<PathState>,
}

/// One path of a connection, for statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathState {
    /// The carrier's kind (`"udp"`, `"faketcp"`).
    pub carrier: &'static str,
    /// The peer's address on it.
    pub remote: SocketAddr,
    /// Whether it is usable (not left for a while after its packets went unacknowledged).
    pub alive: bool,
    /// Whether data goes out on it (a failover client's standby paths get only probes).
    pub active: bool,
    /// Bytes sent on it (client: every packet; server: since it became a path).
    pub bytes_sent: u64,
}

impl ConnectionInfo {
    /// How long the connection had existed at `at` (a snapshot's [`EndpointSnapshot::taken`]).
    pub fn age(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.created)
    }
}

/// The endpoint's figures at one moment, published by the driver (see
/// [`RtEndpoint::watch_snapshot`]) so that readers such as a stats page never take the lock
/// the data path works under.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSnapshot {
    /// When the figures were read.
    pub taken: Instant,
    /// Endpoint-wide counters.
    pub endpoint: EndpointStats,
    /// Every live connection, in handle order.
    pub connections: ConnectionList,
    /// Each shard's figures, in shard order (one entry for an endpoint that is not sharded):
    /// how evenly the kernel spread the clients, and how much each shard's driver worked.
    pub shards: Vec<ShardFigures>,
}

/// Every live connection's figures, in handle order.
///
/// A persistent map: a snapshot shares the entries of the connections that did nothing with
/// the snapshot before it, so that publishing one costs the connections that changed since,
/// not all of them (a server holding 10 000 idle connections publishes four times a second),
/// and cloning a snapshot costs nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionList(pub(crate) imbl::OrdMap<ConnectionHandle, Arc<ConnectionInfo>>);

impl ConnectionList {
    /// How many connections.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The connections in handle order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &ConnectionInfo> + '_ {
        self.0.values().map(|c| &**c)
    }

    /// The connection with `handle`, if it is listed.
    pub fn get(&self, handle: ConnectionHandle) -> Option<&ConnectionInfo> {
        self.0.get(&handle).map(|c| &**c)
    }

    /// The connection with the lowest handle.
    pub fn first(&self) -> Option<&ConnectionInfo> {
        self.iter().next()
    }
}

impl<'a> IntoIterator for &'a ConnectionList {
    type Item = &'a ConnectionInfo;
    type IntoIter = Box<dyn DoubleEndedIterator<Item = &'a ConnectionInfo> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl FromIterator<ConnectionInfo> for ConnectionList {
    fn from_iter<I: IntoIterator<Item = ConnectionInfo>>(iter: I) -> Self {
        Self(iter.into_iter().map(|c| (c.handle, Arc::new(c))).collect())
    }
}

/// One shard's figures (see [`RtEndpoint::bind_sharded`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardFigures {
    /// Live connections the shard owns.
    pub connections: usize,
    /// Datagrams that reached another shard's socket and were handed to this one (a client
    /// whose address changed, so the kernel's hash now picks another socket).
    pub passed_in: u64,
    /// Datagrams for this shard dropped because its inbox (the datagrams handed to it by the
    /// other shards) was full: it was not taking them fast enough. They are recovered like
    /// any loss.
    pub dropped_passing: u64,
    /// Time the shard's driver spent working (receiving, timers, sending), since it started:
    /// with one shard per core, each figure is close to that core's share of the work.
    pub busy: Duration,
    /// Datagrams that arrived longer than the receive buffers and were dropped uncounted by the
    /// core (the kernel cut them). The buffers have room for the largest datagram any
    /// connection may use, so this stays 0 unless a peer sends above the ceiling it was given.
    pub truncated: u64,
}

/// A gaptun endpoint bound to a UDP socket: a client (connects), a server (accepts), or both.
///
/// Cheap to clone; all clones share one socket and one driver task. The driver keeps running
/// while any clone, connection or stream of this endpoint exists; when the last one is dropped,
/// or after [`RtEndpoint::close`], every connection is closed (CLOSE frames sent) and the driver
/// stops.
#[derive(Debug, Clone)]
pub struct RtEndpoint {
    inner: Arc<EndpointRef>,
}

/// Shared by every user-facing handle; its drop starts the shutdown.
#[derive(Debug)]
pub(crate) struct EndpointRef {
    /// Every shard, the first one first: it makes the client connections and names the
    /// carriers (each shard numbers the same carriers alike).
    pub(crate) shards: Vec<Arc<Shared>>,
}

impl EndpointRef {
    fn primary(&self) -> &Arc<Shared> {
        // Never empty: `start` makes at least one shard.
        &self.shards[0]
    }
}

impl Drop for EndpointRef {
    fn drop(&mut self) {
        for shard in &self.shards {
            close_all(shard, 0, b"endpoint dropped");
        }
    }
}

/// Adapts `transport` to what `carriers` can do (see [`RtEndpoint::with_carriers`]).
fn fit_to_carriers(transport: &mut gaptun_proto::TransportConfig, carriers: &[Arc<dyn Carrier>]) {
    let limit = carriers.iter().filter_map(|c| c.max_datagram_size()).min();
    if let Some(limit) = limit.filter(|&l| l < transport.max_udp_payload) {
        transport.max_udp_payload = limit;
        transport.initial_udp_payload = transport.initial_udp_payload.min(limit);
        transport.mtu_discovery = false;
        // The route's MTU says nothing of what such a carrier takes: its limit stays the
        // ceiling for every connection.
        transport.mtu_from_route = false;
    }
    // Carriers are numbered in order from 0 (see `with_carriers`).
    transport.reliable_carriers = (0..)
        .zip(carriers)
        .filter(|(_, c)| c.reliable())
        .map(|(i, _)| CarrierId(i))
        .collect();
}

/// The largest datagram a driver must receive whole: the configured ceiling, or the largest
/// any route may give a connection when ceilings come from routes (the receive buffers hold
/// 64 KiB each either way once GRO is on, so this costs no memory there).
fn receive_payload(transport: &gaptun_proto::TransportConfig) -> usize {
    let ceiling = if transport.mtu_from_route {
        gaptun_proto::MAX_UDP_PAYLOAD
    } else {
        transport.max_udp_payload
    };
    usize::from(ceiling)
}

impl RtEndpoint {
    /// Binds a UDP socket on `addr` and starts the driver task. Must be called within a tokio
    /// runtime; fails with an `io::Error` otherwise, or when the address is taken
    /// (`ErrorKind::AddrInUse`).
    pub fn bind(addr: SocketAddr, config: EndpointConfig) -> io::Result<Self> {
        Self::bind_all(&[addr], config)
    }

    /// Binds a UDP socket on each of `addrs` (say, every port of a range), each its own carrier
    /// numbered in order from 0, and starts the driver task. Fails if any cannot be bound, with
    /// the address in the message.
    pub fn bind_all(addrs: &[SocketAddr], config: EndpointConfig) -> io::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("gaptun endpoint needs a tokio runtime: {e}")))?;
        let _guard = runtime.enter();
        let mut carriers: Vec<Arc<dyn Carrier>> = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let carrier = UdpCarrier::bind(addr).map_err(|e| {
                if addrs.len() > 1 {
                    io::Error::new(e.kind(), format!("{addr}: {e}"))
                } else {
                    e
                }
            })?;
            carriers.push(Arc::new(carrier));
        }
        Self::with_carriers(carriers, config)
    }

    /// Starts an endpoint on carriers made elsewhere (fake TCP, UDP and fake TCP together),
    /// numbered in order from 0; the first one's address is the endpoint's
    /// [`local_addr`](Self::local_addr). Must be called within a tokio runtime.
    ///
    /// The transport settings follow the carriers: datagrams no larger than the smallest
    /// carrier takes, and the core's reliable-carrier mode on the paths over carriers that
    /// report themselves [reliable](Carrier::reliable).
    pub fn with_carriers(
        carriers: Vec<Arc<dyn Carrier>>,
        mut config: EndpointConfig,
    ) -> io::Result<Self> {
        fit_to_carriers(&mut config.transport, &carriers);
        Self::start(vec![carriers], config)
    }

    /// A server split into `shards` (one per core is the point): each binds its own UDP socket
    /// on each of `addrs` (`SO_REUSEPORT`, so the kernel spreads clients over them by address)
    /// and runs its own driver, lock and connections, so that the shards work in parallel with
    /// nothing shared on the data path. A datagram that reaches the wrong shard (the client's
    /// address changed) is handed to the right one, which the connection ID names. Handshake
    /// admission (replay cache, budget, caps) is shared. `shards` is at least 1 (1 is
    /// [`bind_all`](Self::bind_all)).
    ///
    /// An address already bound by anyone, another sharded server included, fails with
    /// `AddrInUse` as with `bind_all`.
    pub fn bind_sharded(
        addrs: &[SocketAddr],
        config: EndpointConfig,
        shards: usize,
    ) -> io::Result<Self> {
        if shards <= 1 {
            return Self::bind_all(addrs, config);
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("gaptun endpoint needs a tokio runtime: {e}")))?;
        let _guard = runtime.enter();
        let mut per_shard: Vec<Vec<Arc<dyn Carrier>>> = vec![Vec::new(); shards];
        for &addr in addrs {
            let name = |e: io::Error| {
                if addrs.len() > 1 {
                    io::Error::new(e.kind(), format!("{addr}: {e}"))
                } else {
                    e
                }
            };
            // Bound once without SO_REUSEPORT first: fails if anything holds the address
            // (sockets with the option would otherwise share it with us), and picks the port
            // when 0 was asked for.
            let actual = std::net::UdpSocket::bind(addr)
                .and_then(|probe| probe.local_addr())
                .map_err(name)?;
            for carriers in &mut per_shard {
                let carrier = UdpCarrier::bind_shared(actual).map_err(name)?;
                carriers.push(Arc::new(carrier));
            }
        }
        Self::start(per_shard, config)
    }

    /// Starts one driver per entry of `shard_carriers` (each shard's carriers, numbered alike
    /// in every shard).
    fn start(
        shard_carriers: Vec<Vec<Arc<dyn Carrier>>>,
        config: EndpointConfig,
    ) -> io::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("gaptun endpoint needs a tokio runtime: {e}")))?;
        let _guard = runtime.enter();
        let Some(first) = shard_carriers.first().and_then(|c| c.first()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no address to bind",
            ));
        };
        let local_addr = first.local_addr()?;
        let max_payload = receive_payload(&config.transport);
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let state_file = config.state_file.clone().filter(|_| config.server);
        let count = shard_carriers.len();
        // 256 bits from the OS for each shard: the client's ephemeral keys come from this RNG.
        let seeds = (0..count)
            .map(|_| RngSeed::from_os().map_err(io::Error::other))
            .collect::<io::Result<Vec<_>>>()?;
        let config = Arc::new(config);
        let now = Instant::now();
        let mut endpoints = match <[RngSeed; 1]>::try_from(seeds) {
            Ok([seed]) => vec![Endpoint::new(config, seed, now, unix_time)],
            Err(seeds) => {
                Endpoint::new_sharded(config, seeds, now, unix_time).map_err(io::Error::other)?
            }
        };
        // The shards share one replay cache: loading it through the first loads it for all.
        let store = match (&state_file, endpoints.first_mut()) {
            (Some(path), Some(endpoint)) => Some(Arc::new(Mutex::new(
                ReplayStore::open(path, endpoint, unix_time).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("replay state file {}: {e}", path.display()),
                    )
                })?,
            ))),
            _ => None,
        };
        let (group, inboxes) = Group::new(count);
        let mut shards = Vec::with_capacity(count);
        for (index, ((endpoint, carriers), inbox)) in endpoints
            .into_iter()
            .zip(shard_carriers)
            .zip(inboxes)
            .enumerate()
        {
            let shared = Arc::new(Shared::new(endpoint, local_addr, Arc::clone(&group), index));
            {
                let mut state = shared.lock();
                for carrier in carriers {
                    state.add_carrier(carrier);
                }
            }
            spawn_driver(
                &runtime,
                Driver::new(Arc::clone(&shared), max_payload, store.clone(), inbox),
            );
            shards.push(shared);
        }
        debug!(addr = %local_addr, shards = count, "endpoint bound");
        Ok(Self {
            inner: Arc::new(EndpointRef { shards }),
        })
    }

    pub(crate) fn from_ref(inner: Arc<EndpointRef>) -> Self {
        Self { inner }
    }

    /// The first shard (the only one unless sharded).
    fn shared(&self) -> &Shared {
        self.inner.primary()
    }

    fn shards(&self) -> &[Arc<Shared>] {
        &self.inner.shards
    }

    /// The bound address (with the actual port when 0 was asked for); with several carriers,
    /// that of the first.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared().local_addr
    }

    /// Every carrier with its number, kind and local address (for statistics).
    pub fn carriers(&self) -> Vec<(CarrierId, &'static str, Option<SocketAddr>)> {
        self.shared().lock().carriers.clone()
    }

    /// Adds a carrier (another UDP socket, a fake-TCP carrier...) for the driver to poll;
    /// returns its number, which paths name. Fails only once the endpoint has used up all
    /// 65 536 numbers.
    pub fn add_carrier(&self, carrier: Arc<dyn Carrier>) -> io::Result<CarrierId> {
        if self.shards().len() > 1 {
            // Every shard would need its own socket for it, numbered alike.
            return Err(io::Error::other(
                "carriers cannot be added to a sharded endpoint",
            ));
        }
        let reliable = carrier.reliable();
        let id = {
            let mut state = self.shared().lock();
            let id = state
                .add_carrier(carrier)
                .ok_or_else(|| io::Error::other("carrier numbers used up"))?;
            state.endpoint.set_carrier_reliable(id, reliable);
            id
        };
        self.shared().kick();
        Ok(id)
    }

    /// Stops using carrier `id`: the driver drops it (closing its socket) at its next round.
    /// Packets the core still sends on it are lost, and recovered like any loss.
    pub fn remove_carrier(&self, id: CarrierId) {
        for shard in self.shards() {
            shard.lock().remove_carrier(id);
            shard.kick();
        }
    }

    /// Connects to `remote`, resolving once the handshake completes.
    ///
    /// A server that does not answer (down, wrong port, or a different key: it stays silent on
    /// purpose) makes this fail after the handshake timeout with
    /// [`gaptun_proto::ConnectionError::HandshakeTimeout`].
    pub async fn connect(&self, remote: SocketAddr) -> Result<RtConnection, ConnectError> {
        self.connect_paths(&[PathAddr::single(remote)]).await
    }

    /// Connects to a server reachable over several paths (each port of a range, several
    /// carriers): the connection spreads its packets over all of them and leaves for a while
    /// a path whose packets stop being acknowledged. Resolves once the handshake completes.
    pub async fn connect_paths(&self, paths: &[PathAddr]) -> Result<RtConnection, ConnectError> {
        self.connect_preferring(paths, &[]).await
    }

    /// Like [`RtEndpoint::connect_paths`], but with a carrier preference (most preferred
    /// first): the connection sends on one carrier at a time and fails over to the next when
    /// the one in use goes silent or much lossier than the others' probes, and comes back
    /// later ([`gaptun_proto::Connection::set_carrier_preference`]). An empty list spreads.
    pub async fn connect_preferring(
        &self,
        paths: &[PathAddr],
        order: &[CarrierId],
    ) -> Result<RtConnection, ConnectError> {
        self.connect_preferring_seen(paths, order, |_| {}).await
    }

    /// [`RtEndpoint::connect_preferring`], calling `seen` with the connection as soon as it
    /// exists, before its handshake completes (the pool gives it carriers that come up
    /// meanwhile).
    pub(crate) async fn connect_preferring_seen(
        &self,
        paths: &[PathAddr],
        order: &[CarrierId],
        seen: impl FnOnce(&RtConnection),
    ) -> Result<RtConnection, ConnectError> {
        let remote = paths.first().map_or(self.local_addr(), |p| p.remote);
        let meta = {
            let mut wakers = Vec::new();
            let mut state = self.shared().lock();
            if let Some(e) = &state.failed {
                return Err(e.clone().into());
            }
            if state.closing_since.is_some() {
                return Err(RtError::EndpointClosed.into());
            }
            let now = Instant::now();
            let handle = state.endpoint.connect_paths(now, paths)?;
            if !order.is_empty()
                && let Some(conn) = state.endpoint.connection(handle)
            {
                conn.set_carrier_preference(now, order);
            }
            let meta = state.track(handle, remote, paths.len() > 1, &mut wakers);
            drop(state);
            wake_all(wakers);
            meta
        };
        self.shared().kick();
        // Created before waiting so that cancelling this future closes the half-open connection.
        let conn = RtConnection::new(
            Arc::clone(&self.inner),
            Arc::clone(self.inner.primary()),
            meta,
        );
        seen(&conn);
        poll_fn(|cx| {
            let mut state = conn.shared().lock();
            match state.conn(conn.meta()) {
                Err(e) => Poll::Ready(Err(e)),
                Ok((_, cs)) if cs.connected => Poll::Ready(Ok(())),
                Ok((_, cs)) => {
                    register(&mut cs.state_wakers, cx.waker());
                    Poll::Pending
                }
            }
        })
        .await?;
        debug!(%remote, "connected");
        Ok(conn)
    }

    /// The next connection a client opened to us; `None` once the endpoint is closing.
    pub async fn accept(&self) -> Option<RtConnection> {
        let (shard, meta) = poll_fn(|cx| {
            // Each shard is checked and, if it has nothing, waited on under one lock, so a
            // connection it queues after the check still wakes us.
            for shard in self.shards() {
                let mut state = shard.lock();
                if let Some(meta) = state.incoming.pop_front() {
                    return Poll::Ready(Some((Arc::clone(shard), meta)));
                }
                if state.closing_since.is_some() || state.failed.is_some() {
                    return Poll::Ready(None);
                }
                register(&mut state.accept_wakers, cx.waker());
            }
            Poll::Pending
        })
        .await?;
        Some(RtConnection::new(Arc::clone(&self.inner), shard, meta))
    }

    /// Changes the receive window of every live connection and of those created later.
    pub fn set_receive_window(&self, bytes: u64) {
        for shard in self.shards() {
            shard.lock().endpoint.set_receive_window(bytes);
            shard.kick();
        }
    }

    /// Server: the carriers announced to clients that connect from now on (see
    /// [`gaptun_proto::handshake::CarrierOffer`]); `None`: none.
    pub fn set_carrier_offer(&self, offer: Option<gaptun_proto::handshake::CarrierOffer>) {
        for shard in self.shards() {
            shard.lock().endpoint.set_carrier_offer(offer);
        }
    }

    /// Names the server's keys (by index, as in `EndpointConfig::server`) for log lines about
    /// them, such as the WARN for handshakes a per-key cap dropped: the application knows
    /// which user a key belongs to, the core only its position.
    pub fn set_key_names(&self, names: Vec<Arc<str>>) {
        for shard in self.shards() {
            shard.lock().key_names = names.clone();
        }
    }

    /// Endpoint-wide counters (of every shard together).
    pub fn stats(&self) -> EndpointStats {
        let mut total = EndpointStats::default();
        for shard in self.shards() {
            total.merge(&shard.lock().endpoint.stats());
        }
        total
    }

    /// Figures of every live connection, in handle order, read now (under the lock).
    pub fn connection_stats(&self) -> Vec<ConnectionInfo> {
        self.read_now().connections.iter().cloned().collect()
    }

    /// Every shard's figures brought up to date now (each under its lock, one after the other,
    /// reading again only the connections touched since the last read), merged and published.
    fn read_now(&self) -> Arc<EndpointSnapshot> {
        let now = Instant::now();
        let mut merged = None;
        for shard in self.shards() {
            merged = Some(shard.publish_figures(&mut shard.lock(), now));
        }
        merged.unwrap_or_else(|| self.snapshot())
    }

    /// The figures the drivers published last (at most [`crate::SNAPSHOT_INTERVAL`] old while
    /// the endpoint runs), read without touching the locks of the data path.
    pub fn snapshot(&self) -> Arc<EndpointSnapshot> {
        self.shared().group.snapshot.borrow().clone()
    }

    /// Reads the figures now (taking each shard's lock once, like any handle operation) and
    /// publishes them as the latest snapshot: for a display that must show what was just done.
    pub fn refresh_snapshot(&self) -> Arc<EndpointSnapshot> {
        self.read_now()
    }

    /// A receiver of the drivers' snapshots: changes every [`crate::SNAPSHOT_INTERVAL`].
    pub fn watch_snapshot(&self) -> tokio::sync::watch::Receiver<Arc<EndpointSnapshot>> {
        self.shared().group.snapshot.subscribe()
    }

    /// Closes every connection with `code` and `reason` (sent to the peers) and stops taking new
    /// ones. Returns at once; await [`RtEndpoint::wait_idle`] to let the CLOSE frames go out.
    pub fn close(&self, code: u64, reason: &[u8]) {
        for shard in self.shards() {
            close_all(shard, code, reason);
        }
    }

    /// Waits until the driver tasks have finished: after [`RtEndpoint::close`], once every
    /// connection drained or a short linger passed.
    pub async fn wait_idle(&self) {
        for shard in self.shards() {
            let mut done = shard.driver_done.subscribe();
            // An error means the sender is gone, which only happens with the driver itself.
            let _ = done.wait_for(|d| *d).await;
        }
    }

    /// [`close`](Self::close) and [`wait_idle`](Self::wait_idle), bounded by `limit`.
    pub async fn shutdown(&self, limit: Duration) {
        self.close(0, b"shutting down");
        let _ = tokio::time::timeout(limit, self.wait_idle()).await;
    }
}

/// Starts the closing sequence: every connection gets a CLOSE, the driver lingers, then exits.
fn close_all(shared: &Shared, code: u64, reason: &[u8]) {
    let mut wakers = Vec::new();
    {
        let mut state = shared.lock();
        if state.closing_since.is_none() {
            let now = Instant::now();
            state.closing_since = Some(now);
            for handle in state.endpoint.handles() {
                if let Some(conn) = state.endpoint.connection(handle) {
                    conn.close(now, code, reason);
                }
            }
            let handles: Vec<_> = state.conns.keys().copied().collect();
            for handle in handles {
                state.forget(
                    handle,
                    RtError::Connection(gaptun_proto::ConnectionError::LocallyClosed),
                    &mut wakers,
                );
            }
            state.incoming.clear();
            wakers.append(&mut state.accept_wakers);
        }
    }
    wake_all(wakers);
    shared.kick();
}

/// Spawns the driver and a watcher that, when the driver ends for any reason (including a
/// panic in the core), fails every waiting handle so that nothing hangs.
fn spawn_driver(runtime: &tokio::runtime::Handle, driver: Driver) {
    let shared = driver.shared();
    let driver = runtime.spawn(driver.run());
    runtime.spawn(async move {
        let reason = match driver.await {
            Ok(()) => RtError::EndpointClosed,
            Err(e) if e.is_panic() => {
                error!("gaptun endpoint driver panicked; all its connections are lost");
                RtError::EndpointFailed("driver panicked".into())
            }
            Err(_) => RtError::EndpointFailed("driver task cancelled".into()),
        };
        let mut wakers = Vec::new();
        {
            let mut state = shared.lock();
            state.fail_all(&reason, &mut wakers);
            // Carriers added after the driver ended would never be polled (nor closed by it).
            state.carriers.clear();
            state.carriers_added.clear();
        }
        wake_all(wakers);
        shared.driver_done.send_replace(true);
    });
}

#[cfg(test)]
mod tests {
    use gaptun_proto::config::EndpointLimits;
    use gaptun_proto::{Psk, SeedOrigin};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::figures::read_all;
    use crate::group::Passed;

    /// The bind path seeds from the OS with 256 bits. Reverting `bind` to a 64-bit seed
    /// (`RngSeed::insecure_from_u64`, only compiled with the `test-util` feature) or to caller
    /// bytes changes the recorded origin and fails here; and two endpoints' first Initials
    /// (salt, ephemeral key, padding, all from that RNG) differ.
    #[tokio::test]
    async fn bind_seeds_from_the_os() {
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let target = server.local_addr().expect("addr");
        let mut initials = Vec::new();
        for _ in 0..2 {
            let config = EndpointConfig::client(Psk::from_bytes([3; 32]));
            let ep = RtEndpoint::bind("127.0.0.1:0".parse().expect("addr"), config).expect("bind");
            assert_eq!(ep.shared().lock().endpoint.seed_origin(), SeedOrigin::Os);
            let connecting = ep.clone();
            let task = tokio::spawn(async move { connecting.connect(target).await.is_ok() });
            let mut buf = [0u8; 2048];
            let (len, _) = tokio::time::timeout(Duration::from_secs(5), server.recv_from(&mut buf))
                .await
                .expect("an Initial within 5 s")
                .expect("recv");
            initials.push(buf[..len].to_vec());
            task.abort();
            ep.close(0, b"");
        }
        assert!(initials[0].len() >= 1000 && initials[1].len() >= 1000);
        // The 16-byte salt alone: equal only if both RNGs started alike.
        assert_ne!(initials[0][..16], initials[1][..16]);
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().expect("addr")
    }

    /// Accepts connections and echoes each of their streams.
    async fn echo(server: RtEndpoint) {
        while let Some(conn) = server.accept().await {
            tokio::spawn(async move {
                while let Some(mut stream) = conn.accept_stream().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
    }

    /// A server that lets one address open `n` connections at once.
    fn roomy_server(n: usize) -> EndpointConfig {
        let mut config = EndpointConfig::server(vec![Psk::from_bytes([9; 32])]);
        config.limits = EndpointLimits::for_one_source(n + 16);
        config
    }

    /// Under every shard's lock at once: publishes each shard's figures the way the driver
    /// does (only the connections touched since the last read are read again) and checks the
    /// merged snapshot against a full read of every connection at the same moment. Returns
    /// how many connections the publication read, and how many a full read found.
    fn published_equals_full_read(server: &RtEndpoint) -> (u64, usize) {
        let mut guards: Vec<_> = server.shards().iter().map(|s| s.lock()).collect();
        let now = Instant::now();
        let mut merged = None;
        let mut full: Vec<ConnectionInfo> = Vec::new();
        let mut endpoint = EndpointStats::default();
        let mut reads = 0;
        for (shard, state) in server.shards().iter().zip(&mut guards) {
            let before = state.figures.reads;
            merged = Some(shard.publish_figures(state, now));
            reads += state.figures.reads - before;
            full.extend(
                read_all(&state.endpoint, &state.carriers, now)
                    .iter()
                    .cloned(),
            );
            endpoint.merge(&state.endpoint.stats());
        }
        drop(guards);
        let merged = merged.expect("a shard");
        let full: ConnectionList = full.into_iter().collect();
        assert_eq!(merged.connections.len(), full.len());
        for (published, read) in merged.connections.iter().zip(full.iter()) {
            assert_eq!(published, read, "connection {:?}", read.handle);
        }
        assert_eq!(merged.connections, full);
        assert_eq!(merged.endpoint, endpoint);
        assert_eq!(
            merged.shards.iter().map(|s| s.connections).sum::<usize>(),
            full.len()
        );
        (reads, full.len())
    }

    /// 200 connections, of which 3 carry traffic and 2 close, on a server of `shards`: at
    /// every moment checked (during the traffic, after it, while the closed ones drain and
    /// after they are gone) the published figures equal a full read, byte counters and
    /// connection list alike; once things are quiet a publication reads a few connections,
    /// not 200.
    async fn figures_follow_the_touched_connections(shards: usize) {
        const N: usize = 200;
        // No keepalives: the quiet publication below must not meet a burst of them, however
        // long a loaded machine takes to get there.
        let mut config = roomy_server(N);
        config.transport.keepalive_interval = None;
        let mut client = EndpointConfig::client(Psk::from_bytes([9; 32]));
        client.transport.keepalive_interval = None;
        let server = RtEndpoint::bind_sharded(&[loopback()], config, shards).expect("bind server");
        let target = server.local_addr();
        tokio::spawn(echo(server.clone()));
        // Two client sockets, so a sharded server gets connections on more than one shard
        // (the kernel picks the socket by the client's address).
        let clients: Vec<RtEndpoint> = (0..2)
            .map(|_| RtEndpoint::bind(loopback(), client.clone()).expect("bind client"))
            .collect();
        let mut conns = Vec::with_capacity(N);
        for batch in 0..N / 50 {
            let mut tasks = Vec::new();
            for i in 0..50 {
                let c = clients[(batch * 50 + i) % 2].clone();
                tasks.push(tokio::spawn(async move { c.connect(target).await }));
            }
            for t in tasks {
                conns.push(t.await.expect("task").expect("connect"));
            }
        }
        let (_, listed) = published_equals_full_read(&server);
        assert_eq!(listed, N);

        // Traffic on 3 connections, checked while it runs.
        let mut traffic = Vec::new();
        for conn in &conns[..3] {
            let conn = conn.clone();
            traffic.push(tokio::spawn(async move {
                let mut stream = conn.open_stream().await.expect("stream");
                let data = vec![7u8; 64 * 1024];
                let mut back = vec![0u8; data.len()];
                for _ in 0..4 {
                    stream.write_all(&data).await.expect("write");
                    stream.read_exact(&mut back).await.expect("read");
                    assert_eq!(back, data);
                }
            }));
        }
        while !traffic.iter().all(|t| t.is_finished()) {
            published_equals_full_read(&server);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in traffic {
            t.await.expect("traffic");
        }
        // Two others close.
        for conn in &conns[10..12] {
            conn.close(0, b"done");
        }
        published_equals_full_read(&server);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, listed) = published_equals_full_read(&server);
            if listed == N - 2 {
                break;
            }
            assert!(Instant::now() < deadline, "closed connections still listed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let snap = server.snapshot();
        let busy: Vec<&ConnectionInfo> = snap
            .connections
            .iter()
            .filter(|c| c.stats.bytes_received > 200 * 1024)
            .collect();
        assert_eq!(
            busy.len(),
            3,
            "the three connections' traffic is in the figures"
        );
        // Quiet now: a publication reads what was touched since the last one (late
        // acknowledgements here and there), not every connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
        published_equals_full_read(&server);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (reads, listed) = published_equals_full_read(&server);
        assert_eq!(listed, N - 2);
        assert!(
            reads < 20,
            "{reads} connections read for one quiet publication"
        );
        for client in &clients {
            client.close(0, b"");
        }
        server.close(0, b"");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn figures_follow_the_touched_connections_one_shard() {
        tokio::time::timeout(
            Duration::from_secs(60),
            figures_follow_the_touched_connections(1),
        )
        .await
        .expect("within 60 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn figures_follow_the_touched_connections_two_shards() {
        tokio::time::timeout(
            Duration::from_secs(60),
            figures_follow_the_touched_connections(2),
        )
        .await
        .expect("within 60 s");
    }

    /// A shard whose driver is stalled (its lock held) while 5 000 datagrams are handed to it:
    /// its inbox fills, the rest are dropped and counted in its figures, and once the driver
    /// runs again it takes what was kept (garbage here: dropped by the core as
    /// unauthenticated), and the server still serves a client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_shard_counts_the_datagrams_its_full_inbox_dropped() {
        const PASSED: u64 = 5000;
        let psk = Psk::from_bytes([9; 32]);
        let server = RtEndpoint::bind_sharded(&[loopback()], roomy_server(4), 2).expect("bind");
        {
            let stalled = server.shards()[1].lock();
            let group = &server.shards()[0].group;
            for i in 0..PASSED {
                group.pass(
                    1,
                    Passed {
                        carrier: CarrierId(0),
                        from: loopback(),
                        data: vec![u8::try_from(i % 251).unwrap_or(0); 64],
                    },
                );
            }
            drop(stalled);
        }
        server.shards()[1].kick();
        let snap = server.refresh_snapshot();
        let shard = snap.shards[1];
        assert_eq!(shard.passed_in + shard.dropped_passing, PASSED);
        // The driver may have taken one batch (256) out of the inbox before it waited for the
        // lock; the inbox held the rest of its 4 096.
        assert!(
            shard.dropped_passing >= PASSED - 4096 - 256,
            "{:?}",
            snap.shards
        );
        assert_eq!(snap.shards[0].dropped_passing, 0);
        // The kept ones reach the core, which drops them as garbage; the server still works.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.stats().dropped_unauthenticated < shard.passed_in {
            assert!(Instant::now() < deadline, "inbox not drained");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::spawn(echo(server.clone()));
        let client = RtEndpoint::bind(loopback(), EndpointConfig::client(psk)).expect("bind");
        let conn =
            tokio::time::timeout(Duration::from_secs(10), client.connect(server.local_addr()))
                .await
                .expect("in time")
                .expect("connect");
        let mut stream = conn.open_stream().await.expect("stream");
        stream.write_all(b"hello").await.expect("write");
        let mut back = [0u8; 5];
        stream.read_exact(&mut back).await.expect("read");
        assert_eq!(&back, b"hello");
        client.close(0, b"");
        server.close(0, b"");
    }
}
