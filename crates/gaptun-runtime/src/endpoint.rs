//! [`RtEndpoint`]: a UDP socket with its connections, driven by a tokio task.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gaptun_proto::{
    ConnectionHandle, ConnectionStats, Endpoint, EndpointConfig, EndpointStats, RngSeed,
};
use tracing::{debug, error};

use crate::carrier::{Carrier, UdpCarrier};
use crate::connection::RtConnection;
use crate::driver::Driver;
use crate::error::{ConnectError, RtError};
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
    /// How long ago the connection was created (tells apart two connections to one peer).
    pub age: Duration,
    /// The core's counters and estimates.
    pub stats: ConnectionStats,
    /// Which of the endpoint's keys the connection uses (a server names the user by it).
    pub key_index: usize,
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
    pub(crate) shared: Arc<Shared>,
}

impl Drop for EndpointRef {
    fn drop(&mut self) {
        close_all(&self.shared, 0, b"endpoint dropped");
    }
}

/// Adapts `transport` to what `carriers` can do (see [`RtEndpoint::with_carriers`]).
fn fit_to_carriers(transport: &mut gaptun_proto::TransportConfig, carriers: &[Arc<dyn Carrier>]) {
    let limit = carriers.iter().filter_map(|c| c.max_datagram_size()).min();
    if let Some(limit) = limit.filter(|&l| l < transport.max_udp_payload) {
        transport.max_udp_payload = limit;
        transport.initial_udp_payload = transport.initial_udp_payload.min(limit);
        transport.mtu_discovery = false;
    }
    if !carriers.is_empty() && carriers.iter().all(|c| c.reliable()) {
        transport.reliable_carrier = true;
    }
}

impl RtEndpoint {
    /// Binds a UDP socket on `addr` and starts the driver task. Must be called within a tokio
    /// runtime; fails with an `io::Error` otherwise, or when the address is taken
    /// (`ErrorKind::AddrInUse`).
    pub fn bind(addr: SocketAddr, config: EndpointConfig) -> io::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("gaptun endpoint needs a tokio runtime: {e}")))?;
        let _guard = runtime.enter();
        let carrier = UdpCarrier::bind(addr)?;
        Self::with_carriers(vec![Arc::new(carrier)], config)
    }

    /// Starts an endpoint on carriers made elsewhere (fake TCP, several at once); the first
    /// one's address is the endpoint's [`local_addr`](Self::local_addr). Must be called within
    /// a tokio runtime.
    ///
    /// The transport settings follow the carriers: datagrams no larger than the smallest
    /// carrier takes, and, when every carrier is reliable (TLS over TCP), the core's
    /// `reliable_carrier` mode.
    pub fn with_carriers(
        carriers: Vec<Arc<dyn Carrier>>,
        mut config: EndpointConfig,
    ) -> io::Result<Self> {
        fit_to_carriers(&mut config.transport, &carriers);
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("gaptun endpoint needs a tokio runtime: {e}")))?;
        let _guard = runtime.enter();
        let local_addr = carriers
            .first()
            .ok_or_else(|| io::Error::other("an endpoint needs at least one carrier"))?
            .local_addr()?;
        let max_payload = usize::from(config.transport.max_udp_payload);
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let state_file = config.state_file.clone().filter(|_| config.server);
        // 256 bits from the OS: the client's ephemeral keys come from this RNG.
        let seed = RngSeed::from_os().map_err(io::Error::other)?;
        let mut endpoint = Endpoint::new(Arc::new(config), seed, Instant::now(), unix_time);
        let store = match &state_file {
            Some(path) => Some(
                ReplayStore::open(path, &mut endpoint, unix_time).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("replay state file {}: {e}", path.display()),
                    )
                })?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared::new(endpoint, local_addr));
        spawn_driver(
            &runtime,
            Driver::new(Arc::clone(&shared), carriers, max_payload, store),
        );
        debug!(addr = %local_addr, "endpoint bound");
        Ok(Self {
            inner: Arc::new(EndpointRef { shared }),
        })
    }

    pub(crate) fn from_ref(inner: Arc<EndpointRef>) -> Self {
        Self { inner }
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The bound address (with the actual port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared().local_addr
    }

    /// Connects to `remote`, resolving once the handshake completes.
    ///
    /// A server that does not answer (down, wrong port, or a different key: it stays silent on
    /// purpose) makes this fail after the handshake timeout with
    /// [`gaptun_proto::ConnectionError::HandshakeTimeout`].
    pub async fn connect(&self, remote: SocketAddr) -> Result<RtConnection, ConnectError> {
        let meta = {
            let mut wakers = Vec::new();
            let mut state = self.shared().lock();
            if let Some(e) = &state.failed {
                return Err(e.clone().into());
            }
            if state.closing_since.is_some() {
                return Err(RtError::EndpointClosed.into());
            }
            let handle = state.endpoint.connect(Instant::now(), remote)?;
            let meta = state.track(handle, remote, &mut wakers);
            drop(state);
            wake_all(wakers);
            meta
        };
        self.shared().kick();
        // Created before waiting so that cancelling this future closes the half-open connection.
        let conn = RtConnection::new(Arc::clone(&self.inner), meta);
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
        let meta = poll_fn(|cx| {
            let mut state = self.shared().lock();
            if let Some(meta) = state.incoming.pop_front() {
                return Poll::Ready(Some(meta));
            }
            if state.closing_since.is_some() || state.failed.is_some() {
                return Poll::Ready(None);
            }
            register(&mut state.accept_wakers, cx.waker());
            Poll::Pending
        })
        .await?;
        Some(RtConnection::new(Arc::clone(&self.inner), meta))
    }

    /// Changes the receive window of every live connection and of those created later.
    pub fn set_receive_window(&self, bytes: u64) {
        self.shared().lock().endpoint.set_receive_window(bytes);
        self.shared().kick();
    }

    /// Names the server's keys (by index, as in `EndpointConfig::server`) for log lines about
    /// them, such as the WARN for handshakes a per-key cap dropped: the application knows
    /// which user a key belongs to, the core only its position.
    pub fn set_key_names(&self, names: Vec<Arc<str>>) {
        self.shared().lock().key_names = names;
    }

    /// Endpoint-wide counters.
    pub fn stats(&self) -> EndpointStats {
        self.shared().lock().endpoint.stats()
    }

    /// Figures of every live connection, in handle order.
    pub fn connection_stats(&self) -> Vec<ConnectionInfo> {
        let mut state = self.shared().lock();
        let mut handles = state.endpoint.handles();
        handles.sort();
        let now = Instant::now();
        handles
            .into_iter()
            .filter_map(|handle| {
                let conn = state.endpoint.connection(handle)?;
                Some(ConnectionInfo {
                    handle,
                    remote: conn.remote_address(),
                    established: conn.is_established(),
                    age: conn.age(now),
                    stats: conn.stats(),
                    key_index: conn.key_index(),
                })
            })
            .collect()
    }

    /// Closes every connection with `code` and `reason` (sent to the peers) and stops taking new
    /// ones. Returns at once; await [`RtEndpoint::wait_idle`] to let the CLOSE frames go out.
    pub fn close(&self, code: u64, reason: &[u8]) {
        close_all(self.shared(), code, reason);
    }

    /// Waits until the driver task has finished: after [`RtEndpoint::close`], once every
    /// connection drained or a short linger passed.
    pub async fn wait_idle(&self) {
        let mut done = self.shared().driver_done.subscribe();
        // An error means the sender is gone, which only happens with the driver itself.
        let _ = done.wait_for(|d| *d).await;
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
        shared.lock().fail_all(&reason, &mut wakers);
        wake_all(wakers);
        shared.driver_done.send_replace(true);
    });
}

#[cfg(test)]
mod tests {
    use gaptun_proto::{Psk, SeedOrigin};

    use super::*;

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
}
