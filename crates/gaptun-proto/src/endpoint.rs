//! The endpoint: one UDP socket's worth of connections.
//!
//! It routes each datagram by the (masked) connection ID, hands handshake datagrams to the
//! handshake code, and drops everything it cannot authenticate without answering: a probe that
//! does not know the key cannot tell that a gaptun server is listening.
//!
//! The endpoint owns its connections (unlike quinn-proto's, which hands them to the caller):
//! gaptun runs all connections of a socket in one task, and owning them keeps the driver and
//! the simulator simple. Connections are reached through [`Endpoint::connection`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use thiserror::Error;

use crate::config::{EndpointConfig, TransportConfig};
use crate::connection::{Connection, ConnectionInit, UnixClock};
use crate::crypto::HeaderKey;
use crate::handshake::{self, ReplayCache, TransportParams};
use crate::packet::{self, CID_LEN, ConnectionId};
use crate::shared::{Side, Transmit};

/// Names a connection within its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(pub usize);

/// Endpoint-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams that matched no connection and were no valid handshake: dropped silently.
    pub dropped_unauthenticated: u64,
    /// Handshake Initials refused as replays or outside the time window.
    pub dropped_replayed_handshakes: u64,
    /// Handshakes accepted.
    pub accepted: u64,
}

/// Why `connect` failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectError {
    /// The endpoint has no key to connect with.
    #[error("no key configured")]
    NoKey,
}

/// Per-PSK state: its header key (the server may accept several keys).
#[derive(Debug)]
struct KeySlot {
    header_key: Arc<HeaderKey>,
}

/// An endpoint.
#[derive(Debug)]
pub struct Endpoint {
    config: Arc<EndpointConfig>,
    transport: Arc<TransportConfig>,
    keys: Vec<KeySlot>,
    rng: StdRng,
    clock: UnixClock,
    connections: HashMap<ConnectionHandle, Connection>,
    by_cid: HashMap<ConnectionId, ConnectionHandle>,
    next_handle: usize,
    incoming: VecDeque<ConnectionHandle>,
    replay: ReplayCache,
    /// Server: connections whose client has not confirmed the handshake yet, by address, so a
    /// retransmitted Initial (its Response was lost) gets the Response again.
    unconfirmed: HashMap<SocketAddr, ConnectionHandle>,
    /// Round-robin position for `poll_transmit`, so one busy connection cannot starve others.
    transmit_order: VecDeque<ConnectionHandle>,
    stats: EndpointStats,
}

impl Endpoint {
    /// Creates an endpoint whose RNG is expanded from a 64-bit `seed`: for tests and
    /// simulations, where runs must repeat. A real endpoint must use [`Endpoint::with_rng_seed`]
    /// with 32 bytes from the OS, since ephemeral handshake keys come from this RNG.
    /// `unix_time` is the wall-clock time at `now`, used for handshake timestamps.
    pub fn new(config: Arc<EndpointConfig>, seed: u64, now: Instant, unix_time: Duration) -> Self {
        let mut expanded = [0u8; 32];
        StdRng::seed_from_u64(seed).fill_bytes(&mut expanded);
        Self::with_rng_seed(config, expanded, now, unix_time)
    }

    /// Creates an endpoint whose RNG (ephemeral keys, connection IDs, padding) starts from
    /// `seed`, which must be 32 secret random bytes in production.
    pub fn with_rng_seed(
        config: Arc<EndpointConfig>,
        seed: [u8; 32],
        now: Instant,
        unix_time: Duration,
    ) -> Self {
        let keys = config
            .psks
            .iter()
            .map(|psk| KeySlot {
                header_key: Arc::new(HeaderKey::new(psk)),
            })
            .collect();
        Self {
            transport: Arc::new(config.transport.clone()),
            keys,
            rng: StdRng::from_seed(seed),
            clock: UnixClock {
                at: now,
                unix: unix_time,
            },
            connections: HashMap::new(),
            by_cid: HashMap::new(),
            next_handle: 0,
            incoming: VecDeque::new(),
            replay: ReplayCache::new(config.handshake_window),
            unconfirmed: HashMap::new(),
            transmit_order: VecDeque::new(),
            stats: EndpointStats::default(),
            config,
        }
    }

    /// A connection ID no live connection uses.
    fn new_cid(&mut self) -> ConnectionId {
        loop {
            let mut cid = [0u8; CID_LEN];
            self.rng.fill_bytes(&mut cid);
            let cid = ConnectionId(cid);
            if !self.by_cid.contains_key(&cid) {
                return cid;
            }
        }
    }

    fn init(&mut self, side: Side, key: usize, remote: SocketAddr) -> ConnectionInit {
        let local_cid = self.new_cid();
        ConnectionInit {
            side,
            config: self.transport.clone(),
            header_key: self.keys[key].header_key.clone(),
            key_index: key,
            local_cid,
            remote,
            rng: StdRng::seed_from_u64(self.rng.random()),
            clock: self.clock,
        }
    }

    fn insert(&mut self, conn: Connection) -> ConnectionHandle {
        let handle = ConnectionHandle(self.next_handle);
        self.next_handle += 1;
        self.by_cid.insert(conn.local_cid(), handle);
        self.connections.insert(handle, conn);
        self.transmit_order.push_back(handle);
        handle
    }

    /// Starts connecting to `remote`.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
    ) -> Result<ConnectionHandle, ConnectError> {
        let psk = self
            .config
            .psks
            .first()
            .cloned()
            .ok_or(ConnectError::NoKey)?;
        let init = self.init(Side::Client, 0, remote);
        let conn = Connection::new_client(init, now, &psk);
        Ok(self.insert(conn))
    }

    /// A datagram arrived from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        if let Some(handle) = self.route(data)
            && let Some(conn) = self.connections.get_mut(&handle)
        {
            conn.handle_datagram(now, from, data);
            return;
        }
        if self.config.server && self.try_accept(now, from, data) {
            return;
        }
        self.stats.dropped_unauthenticated += 1;
    }

    /// The connection a datagram belongs to: by masked connection ID, or (client) by the
    /// connection ID a handshake Response answers.
    fn route(&self, data: &[u8]) -> Option<ConnectionHandle> {
        for slot in &self.keys {
            if let Some(cid) = packet::peek_cid(&slot.header_key, data)
                && let Some(&h) = self.by_cid.get(&cid)
            {
                return Some(h);
            }
        }
        if !self.config.server {
            for psk in &self.config.psks {
                if let Some(cid) = handshake::peek_response_cid(psk, data)
                    && let Some(&h) = self.by_cid.get(&cid)
                {
                    return Some(h);
                }
            }
        }
        None
    }

    /// Server: an authenticated Initial that the replay cache refused. If it comes from the
    /// address of a connection whose client has not confirmed yet, the client did not get our
    /// Response and sent its Initial again: answer again. From anywhere else it is a replay and
    /// gets silence. (A forged source address only sends the Response to the real client.)
    fn repeat_response(&mut self, from: SocketAddr, len: usize) {
        let Some(&handle) = self.unconfirmed.get(&from) else {
            return;
        };
        match self.connections.get_mut(&handle) {
            Some(conn) if conn.is_unconfirmed_server() && conn.remote_address() == from => {
                conn.on_initial_repeated(len);
            }
            _ => {
                self.unconfirmed.remove(&from);
            }
        }
    }

    /// Server: tries `data` as a handshake Initial.
    fn try_accept(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        let server_cid = self.new_cid();
        let params = self.server_params();
        let unix = self.clock.unix_time(now);
        let accepted = handshake::accept_initial(
            &self.config.psks,
            &mut self.replay,
            data,
            server_cid,
            &params,
            self.transport.cipher,
            unix,
            self.config.handshake_window,
            &mut self.rng,
        );
        let accepted = match accepted {
            Ok(a) => a,
            Err(handshake::HandshakeError::Replayed) => {
                self.stats.dropped_replayed_handshakes += 1;
                self.repeat_response(from, data.len());
                return true;
            }
            Err(handshake::HandshakeError::Stale) => {
                self.stats.dropped_replayed_handshakes += 1;
                return true;
            }
            Err(_) => return false,
        };
        let mut init = self.init(Side::Server, accepted.psk_index, from);
        init.local_cid = server_cid;
        let conn = Connection::new_server(
            init,
            now,
            accepted.established,
            accepted.response,
            data.len(),
        );
        let handle = self.insert(conn);
        self.unconfirmed.insert(from, handle);
        self.incoming.push_back(handle);
        self.stats.accepted += 1;
        true
    }

    /// The transport parameters a server announces.
    fn server_params(&self) -> TransportParams {
        let t = &self.transport;
        TransportParams {
            max_data: t.receive_window,
            max_stream_data: t.stream_receive_window.min(t.receive_window / 2).max(1),
            max_streams: t.max_concurrent_streams,
            idle_timeout_ms: t.idle_timeout.as_millis().try_into().unwrap_or(u64::MAX),
            max_udp_payload: t.max_udp_payload,
            ciphers: Vec::new(),
        }
    }

    /// The next datagram(s) to send, from any connection.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        for _ in 0..self.transmit_order.len() {
            let handle = self.transmit_order.pop_front()?;
            let Some(conn) = self.connections.get_mut(&handle) else {
                continue;
            };
            self.transmit_order.push_back(handle);
            if let Some(t) = conn.poll_transmit(now, max_datagrams, buf) {
                return Some(t);
            }
        }
        None
    }

    /// The earliest timer of any connection.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.connections
            .values()
            .filter_map(Connection::poll_timeout)
            .min()
    }

    /// Fires expired timers and removes drained connections (after their last events were
    /// polled).
    pub fn handle_timeout(&mut self, now: Instant) {
        for conn in self.connections.values_mut() {
            if conn.poll_timeout().is_some_and(|t| t <= now) {
                conn.handle_timeout(now);
            }
        }
        self.remove_drained();
    }

    fn remove_drained(&mut self) {
        self.unconfirmed.retain(|_, h| {
            self.connections
                .get(h)
                .is_some_and(Connection::is_unconfirmed_server)
        });
        let drained: Vec<ConnectionHandle> = self
            .connections
            .iter()
            .filter(|(_, c)| c.is_drained() && !c.has_events())
            .map(|(&h, _)| h)
            .collect();
        for handle in drained {
            if let Some(conn) = self.connections.remove(&handle) {
                self.by_cid.remove(&conn.local_cid());
            }
            self.transmit_order.retain(|h| *h != handle);
            self.unconfirmed.retain(|_, h| *h != handle);
            self.incoming.retain(|h| *h != handle);
        }
    }

    /// A connection the server accepted that the application has not taken yet.
    pub fn accept(&mut self) -> Option<ConnectionHandle> {
        self.incoming.pop_front()
    }

    /// The connection behind `handle`, while it exists.
    pub fn connection(&mut self, handle: ConnectionHandle) -> Option<&mut Connection> {
        self.connections.get_mut(&handle)
    }

    /// Handles of all live connections.
    pub fn handles(&self) -> Vec<ConnectionHandle> {
        let mut v: Vec<_> = self.connections.keys().copied().collect();
        v.sort();
        v
    }

    /// Changes the receive window of every live and future connection.
    pub fn set_receive_window(&mut self, bytes: u64) {
        let mut t = (*self.transport).clone();
        t.receive_window = bytes;
        t.stream_receive_window = t.stream_receive_window.max(bytes / 2);
        self.transport = Arc::new(t);
        for conn in self.connections.values_mut() {
            conn.set_receive_window(bytes);
        }
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }
}
