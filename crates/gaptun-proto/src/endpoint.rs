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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use thiserror::Error;

use crate::config::{EndpointConfig, TransportConfig};
use crate::connection::{Connection, ConnectionInit, MAX_UDP_PAYLOAD, MIN_MTU, UnixClock};
use crate::crypto::HeaderKey;
use crate::handshake::{
    self, Admission, HandshakeKey, ReplayJournal, ReplayRecord, TransportParams,
};
use crate::packet::{self, ConnectionId};
use crate::reset::StatelessReset;
use crate::shared::{CarrierId, PathAddr, Side, Transmit};

mod limits;
mod schedule;
mod seed;
mod shard;

pub use limits::{LimitHit, LimitKind};
pub use schedule::Visits;
pub use seed::{RngSeed, SeedError, SeedOrigin};

use limits::Limits;
use schedule::{ALL, CHECK, EVENTS, RETIME, SEND, Schedule, Slot};
use shard::{Common, ShardPos};
pub use shard::{MAX_SHARDS, ShardError};

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
    /// Server: stateless resets sent for packets of connections we do not know (see
    /// `reset.rs`).
    pub resets_sent: u64,
    /// Client: valid stateless resets received (each ended a connection).
    pub resets_received: u64,
    /// Initials dropped unauthenticated because their source's or the global handshake budget
    /// was spent.
    pub dropped_over_budget: u64,
    /// Authentic Initials dropped because a connection cap was reached.
    pub dropped_at_capacity: u64,
}

impl EndpointStats {
    /// Adds `other`'s counters to ours (the shards of one server, reported as one).
    pub fn merge(&mut self, other: &Self) {
        // Destructured in full, so that a new counter cannot be forgotten here.
        let Self {
            dropped_unauthenticated,
            dropped_replayed_handshakes,
            accepted,
            resets_sent,
            resets_received,
            dropped_over_budget,
            dropped_at_capacity,
        } = *other;
        self.dropped_unauthenticated += dropped_unauthenticated;
        self.dropped_replayed_handshakes += dropped_replayed_handshakes;
        self.accepted += accepted;
        self.resets_sent += resets_sent;
        self.resets_received += resets_received;
        self.dropped_over_budget += dropped_over_budget;
        self.dropped_at_capacity += dropped_at_capacity;
    }
}

/// Why `connect` failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectError {
    /// The endpoint has no key to connect with.
    #[error("no key configured")]
    NoKey,
    /// No path to the server was given.
    #[error("no path to the server")]
    NoPath,
}

/// A connection and its place in the endpoint's [`Schedule`].
#[derive(Debug)]
struct Entry {
    conn: Connection,
    slot: Slot,
    /// Counted in [`Endpoint::half_open`]: a server connection whose client has not confirmed
    /// the handshake, as of the last time the endpoint looked.
    half_open: bool,
}

/// Per-PSK state: its header key (the server may accept several keys).
#[derive(Debug)]
struct KeySlot {
    header_key: Arc<HeaderKey>,
}

/// Asks the system how large a UDP payload the route to a peer carries, in IPv4 terms (the
/// route's MTU less 28 bytes of IP and UDP headers; an IPv6 peer's ceiling is lowered by the
/// extra 20 bytes later, as for any ceiling). `None` when it cannot tell. The runtime provides
/// one per carrier kind that has routes (plain UDP); see [`Endpoint::set_route_mtu`].
pub type RouteMtuQuery = fn(SocketAddr) -> Option<u16>;

/// `query`'s answer for `remote`, within the sizes the protocol works with.
fn ask_route(query: RouteMtuQuery, remote: SocketAddr) -> Option<u16> {
    query(remote).map(|c| c.clamp(MIN_MTU, MAX_UDP_PAYLOAD))
}

/// The route's ceiling to `remote` for a new connection: the smallest that any carrier with a
/// route query answers. A connection's ceiling is decided once, at its start, but it may move
/// to another carrier's path later (`--carrier all` and `auto`), and carriers carry different
/// amounts on the same route (fake TCP 24 bytes less than UDP): the smallest fits them all.
fn route_ceiling_over(
    queries: &HashMap<CarrierId, RouteMtuQuery>,
    remote: SocketAddr,
) -> Option<u16> {
    queries
        .values()
        .filter_map(|&query| ask_route(query, remote))
        .min()
}

/// An endpoint.
#[derive(Debug)]
pub struct Endpoint {
    config: Arc<EndpointConfig>,
    transport: Arc<TransportConfig>,
    keys: Vec<KeySlot>,
    /// Each key's handshake state, derived once here so that a junk datagram costs one AES
    /// block per key, not a key derivation.
    handshake_keys: Vec<HandshakeKey>,
    rng: StdRng,
    /// Where `rng`'s seed came from (checked by the runtime's tests: production uses the OS).
    seed_origin: SeedOrigin,
    clock: UnixClock,
    connections: HashMap<ConnectionHandle, Entry>,
    by_cid: HashMap<ConnectionId, ConnectionHandle>,
    next_handle: usize,
    incoming: VecDeque<ConnectionHandle>,
    /// Replay cache, limits and the live-connection count: shared by every shard of a server
    /// (see [`Endpoint::new_sharded`]), so that an Initial replayed from another address (which
    /// the kernel may hand to another shard) is still refused, and caps count all connections.
    common: Arc<Mutex<Common>>,
    /// Which shard this endpoint is, of how many: the shard is encoded in the connection IDs it
    /// issues, so that a datagram that reached the wrong one can be passed on.
    shard: ShardPos,
    /// Server: connections whose client has not confirmed the handshake yet, by address, so a
    /// retransmitted Initial (its Response was lost) gets the Response again.
    unconfirmed: HashMap<PathAddr, ConnectionHandle>,
    /// `unconfirmed` is swept in full when it grows past this.
    unconfirmed_sweep_at: usize,
    /// This shard's connections marked `half_open`: what handshake admission counts, kept up
    /// to date as connections are checked so that a handshake does not walk them all.
    half_open: usize,
    /// The connections with something to do, and their timers: the work of one call follows
    /// the busy connections, not all of them.
    schedule: Schedule,
    /// Connection IDs, and answering or recognising stateless resets.
    reset: StatelessReset,
    /// Per carrier, how to learn a new connection's ceiling from its route (used when
    /// `TransportConfig::mtu_from_route` is on).
    route_mtu: HashMap<CarrierId, RouteMtuQuery>,
    stats: EndpointStats,
    /// This shard put an Initial through the shared replay cache, or loaded it, since it last
    /// took the journal: only then has it anything to persist. Lets the runtime skip the shared
    /// locks (the cache's and the state file's) on every other iteration of a shard's loop.
    replay_pending: bool,
}

impl Endpoint {
    /// Creates an endpoint. Its RNG (ephemeral keys, connection IDs, padding) starts from `seed`,
    /// which must be [`RngSeed::from_os`] in production (tests and the simulator use
    /// [`RngSeed::insecure_from_u64`] so that runs repeat). `unix_time` is the wall-clock time at
    /// `now`, used for handshake timestamps.
    pub fn new(
        config: Arc<EndpointConfig>,
        seed: RngSeed,
        now: Instant,
        unix_time: Duration,
    ) -> Self {
        let common = Arc::new(Mutex::new(Common::new(&config, unix_time)));
        Self::with_common(config, seed, now, unix_time, common, ShardPos::SOLE)
    }

    /// Creates the shards of one server, one per seed (one per core, each driven on its own):
    /// each owns the connections whose handshake reached it, and issues connection IDs that
    /// name it, so [`handle_datagram`](Self::handle_datagram) can say where a datagram that
    /// arrived at the wrong shard (after the client changed address) belongs. They share the
    /// replay cache and the limits; their connection handles never collide.
    pub fn new_sharded(
        config: Arc<EndpointConfig>,
        seeds: Vec<RngSeed>,
        now: Instant,
        unix_time: Duration,
    ) -> Result<Vec<Self>, ShardError> {
        let count = seeds.len();
        if count == 0 || count > MAX_SHARDS {
            return Err(ShardError::Count(count));
        }
        let common = Arc::new(Mutex::new(Common::new(&config, unix_time)));
        Ok(seeds
            .into_iter()
            .enumerate()
            .map(|(index, seed)| {
                let pos = ShardPos { index, count };
                Self::with_common(
                    Arc::clone(&config),
                    seed,
                    now,
                    unix_time,
                    Arc::clone(&common),
                    pos,
                )
            })
            .collect())
    }

    fn with_common(
        config: Arc<EndpointConfig>,
        seed: RngSeed,
        now: Instant,
        unix_time: Duration,
        common: Arc<Mutex<Common>>,
        shard: ShardPos,
    ) -> Self {
        let seed_origin = seed.origin();
        let keys = config
            .psks
            .iter()
            .map(|psk| KeySlot {
                header_key: Arc::new(HeaderKey::new(psk)),
            })
            .collect();
        let handshake_keys = config.psks.iter().map(HandshakeKey::new).collect();
        Self {
            transport: Arc::new(config.transport.clone()),
            keys,
            handshake_keys,
            rng: seed.into_rng(),
            seed_origin,
            clock: UnixClock {
                at: now,
                unix: unix_time,
            },
            connections: HashMap::new(),
            by_cid: HashMap::new(),
            next_handle: shard.index,
            incoming: VecDeque::new(),
            common,
            shard,
            unconfirmed: HashMap::new(),
            unconfirmed_sweep_at: 64,
            half_open: 0,
            schedule: Schedule::default(),
            reset: StatelessReset::new(&config.psks),
            route_mtu: HashMap::new(),
            stats: EndpointStats::default(),
            replay_pending: false,
            config,
        }
    }

    /// The state shared with the other shards, locked (only on handshakes and when
    /// connections come and go, never per packet).
    fn common(&self) -> MutexGuard<'_, Common> {
        self.common.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection ID no live connection uses, naming this shard (when there are several and
    /// IDs are tagged: about `count` draws).
    fn new_cid(&mut self) -> ConnectionId {
        loop {
            let cid = self.reset.issue_cid(&mut self.rng);
            if self.by_cid.contains_key(&cid) {
                continue;
            }
            if self.shard.count > 1
                && self.reset.is_issued(&cid)
                && shard::shard_of(&cid, self.shard.count) != self.shard.index
            {
                continue;
            }
            return cid;
        }
    }

    /// The ceiling a new connection on `path` gets from its route, when the configuration asks
    /// for that and the path's carrier has a route query that answers (clamped to the sizes
    /// the protocol works with).
    fn route_ceiling(&self, path: PathAddr) -> Option<u16> {
        if !self.transport.mtu_from_route {
            return None;
        }
        self.route_mtu.get(&path.carrier)?;
        route_ceiling_over(&self.route_mtu, path.remote)
    }

    /// The transport configuration of a new connection whose route allows `ceiling` bytes:
    /// the endpoint's, with that ceiling in place of `max_udp_payload`.
    fn transport_for(&self, ceiling: Option<u16>) -> Arc<TransportConfig> {
        match ceiling {
            Some(c) if c != self.transport.max_udp_payload => {
                let mut t = (*self.transport).clone();
                t.max_udp_payload = c;
                t.initial_udp_payload = t.initial_udp_payload.min(c);
                Arc::new(t)
            }
            _ => self.transport.clone(),
        }
    }

    fn init(&mut self, side: Side, key: usize, remote: PathAddr) -> ConnectionInit {
        let local_cid = self.new_cid();
        ConnectionInit {
            side,
            config: self.transport.clone(),
            header_key: self.keys[key].header_key.clone(),
            key_index: key,
            local_cid,
            remote,
            rng: seed::child_rng(&mut self.rng),
            clock: self.clock,
        }
    }

    fn insert(&mut self, conn: Connection) -> ConnectionHandle {
        let handle = ConnectionHandle(self.next_handle);
        // Shards number their connections apart (index, index + count, ...), so a handle names
        // one connection across the whole server (limits and statistics rely on it).
        self.next_handle += self.shard.count;
        self.common().live += 1;
        self.by_cid.insert(conn.local_cid(), handle);
        let mut slot = Slot::default();
        self.schedule.mark(&mut slot, handle, ALL);
        let half_open = conn.is_unconfirmed_server();
        self.half_open += usize::from(half_open);
        self.connections.insert(
            handle,
            Entry {
                conn,
                slot,
                half_open,
            },
        );
        handle
    }

    /// The connection behind `handle`, marked as having taken input (it may now have
    /// something to send, another deadline, events, or have drained).
    fn touch(&mut self, handle: ConnectionHandle) -> Option<&mut Connection> {
        let entry = self.connections.get_mut(&handle)?;
        self.schedule.mark(&mut entry.slot, handle, ALL);
        Some(&mut entry.conn)
    }

    /// Starts connecting to `remote` on carrier 0.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
    ) -> Result<ConnectionHandle, ConnectError> {
        self.connect_paths(now, &[PathAddr::single(remote)])
    }

    /// Starts connecting to a server reachable over `paths` (say, each port of a port range, or
    /// several carriers): the connection spreads its packets over all of them and stops using a
    /// path that goes dark (see [`Connection::paths`]).
    pub fn connect_paths(
        &mut self,
        now: Instant,
        paths: &[PathAddr],
    ) -> Result<ConnectionHandle, ConnectError> {
        let &first = paths.first().ok_or(ConnectError::NoPath)?;
        let psk = self
            .config
            .psks
            .first()
            .cloned()
            .ok_or(ConnectError::NoKey)?;
        let mut init = self.init(Side::Client, 0, first);
        init.config = self.transport_for(self.route_ceiling(first));
        let mut conn = Connection::new_client(init, now, &psk);
        conn.start_paths(now, paths);
        Ok(self.insert(conn))
    }

    /// A datagram arrived on `carrier` from `from`.
    ///
    /// Returns `Some(shard)` when the datagram belongs to a connection of another shard of this
    /// server (see [`new_sharded`](Self::new_sharded)): it was left untouched, and the caller
    /// passes it to that shard's `handle_datagram`. Always `None` for an endpoint on its own.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        carrier: CarrierId,
        from: SocketAddr,
        data: &mut [u8],
    ) -> Option<usize> {
        let from = PathAddr::new(carrier, from);
        if let Some(handle) = self.route(data)
            && let Some(conn) = self.touch(handle)
        {
            conn.handle_datagram(now, from, data);
            return None;
        }
        if let Some(shard) = self.other_shard(data) {
            return Some(shard);
        }
        if self.config.server && self.try_accept(now, from, data) {
            return None;
        }
        if self.stateless_reset(now, from, data) {
            return None;
        }
        self.stats.dropped_unauthenticated += 1;
        None
    }

    /// The other shard whose connection ID `data` carries, under any key. Only IDs with this
    /// server's tag count, so junk is not passed around (it fails the tag but for 2^-32).
    fn other_shard(&self, data: &[u8]) -> Option<usize> {
        if self.shard.count < 2 {
            return None;
        }
        self.keys.iter().find_map(|slot| {
            let cid = packet::peek_cid(&slot.header_key, data)?;
            let shard = shard::shard_of(&cid, self.shard.count);
            (shard != self.shard.index && self.reset.is_issued(&cid)).then_some(shard)
        })
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
            for key in &self.handshake_keys {
                if let Some(cid) = key.peek_response_cid(data)
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
    fn repeat_response(&mut self, from: PathAddr, len: usize) {
        let Some(&handle) = self.unconfirmed.get(&from) else {
            return;
        };
        match self.connections.get_mut(&handle) {
            Some(Entry { conn, slot, .. })
                if conn.is_unconfirmed_server() && conn.path() == from =>
            {
                conn.on_initial_repeated(len);
                self.schedule.mark(slot, handle, ALL);
            }
            _ => {
                self.unconfirmed.remove(&from);
            }
        }
    }

    /// A datagram for no connection we know. Server: if it belongs to a connection we could
    /// have issued (we restarted since), answer with a stateless reset (it still counts as
    /// dropped). Client: if it is the reset of one of our connections, that connection ends.
    /// Returns whether the datagram was a reset we took.
    fn stateless_reset(&mut self, now: Instant, from: PathAddr, data: &[u8]) -> bool {
        if self.config.server {
            let keys = self.keys.iter().map(|slot| &*slot.header_key);
            if self
                .reset
                .answer_unknown(now, from, data, keys, &mut self.rng)
            {
                self.stats.resets_sent += 1;
            }
            return false;
        }
        for (&handle, Entry { conn, slot, .. }) in &mut self.connections {
            if conn.remote_address() == from.remote
                && let Some(cid) = conn.stateless_reset_cid()
                && self.reset.is_reset_for(&cid, data)
            {
                conn.on_stateless_reset(now);
                self.schedule.mark(slot, handle, ALL);
                self.stats.resets_received += 1;
                return true;
            }
        }
        false
    }

    /// Server: tries `data` as a handshake Initial. True if it was one (answered, or dropped on
    /// purpose and counted), false if it is no Initial under any key.
    fn try_accept(&mut self, now: Instant, from: PathAddr, data: &[u8]) -> bool {
        if data.len() < handshake::MIN_INITIAL_LEN {
            return false;
        }
        let server_cid = self.new_cid();
        let params = self.server_params();
        let unix = self.clock.unix_time(now);
        // A connection confirms while it takes input, and every one that took input since the
        // last check is queued for the next: only those can have left the half-open count.
        for i in 0..self.schedule.check.len() {
            if let Some(&handle) = self.schedule.check.get(i) {
                self.recount_half_open(handle);
            }
        }
        let route_mtu = (self.transport.mtu_from_route
            && self.route_mtu.contains_key(&from.carrier))
        .then_some(&self.route_mtu);
        // Held through the Noise work: handshakes of all shards take turns, the data path never
        // waits for this lock.
        let mut common = self.common.lock().unwrap_or_else(PoisonError::into_inner);
        let Common {
            replay,
            limits,
            live,
        } = &mut *common;
        let mut gate = Gate {
            limits,
            live: *live,
            half_open: self.half_open,
            shards: self.shard.count,
            now,
            from: from.remote,
            route_mtu,
            ceiling: None,
        };
        let accepted = handshake::accept_initial(
            &self.handshake_keys,
            replay,
            data,
            server_cid,
            &params,
            self.transport.cipher,
            unix,
            self.config.handshake_window,
            &mut self.rng,
            &mut gate,
        );
        let ceiling = gate.ceiling;
        drop(common);
        // Whatever the outcome, the cache may have recorded this Initial or rotated.
        self.replay_pending = true;
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
            Err(handshake::HandshakeError::OverBudget) => {
                self.stats.dropped_over_budget += 1;
                return true;
            }
            Err(handshake::HandshakeError::AtCapacity) => {
                self.stats.dropped_at_capacity += 1;
                return true;
            }
            Err(_) => return false,
        };
        let mut init = self.init(Side::Server, accepted.psk_index, from);
        init.local_cid = server_cid;
        init.config = self.transport_for(ceiling);
        let conn = Connection::new_server(
            init,
            now,
            accepted.established,
            accepted.response,
            data.len(),
        );
        let handle = self.insert(conn);
        self.common().limits.on_accepted(handle, accepted.psk_index);
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
            fec: t.fec.accepts_parity(),
            max_datagram_size: t.max_datagram_size,
            carrier_offer: t.carrier_offer,
        }
    }

    /// The next datagram(s) to send, from any connection that may have something to send
    /// (round-robin, so one busy connection cannot starve the others). Connections that have
    /// nothing leave the queue until they take input again: the cost follows the busy ones.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        if let Some(t) = self.reset.poll_transmit(buf) {
            return Some(t);
        }
        for _ in 0..self.schedule.send.len() {
            let handle = self.schedule.send.pop_front()?;
            // A connection removed since it was queued is skipped (handles are never reused).
            let Some(Entry { conn, slot, .. }) = self.connections.get_mut(&handle) else {
                continue;
            };
            self.schedule.visits.transmit_polls += 1;
            let sent = conn.poll_transmit(now, max_datagrams, buf);
            // Sending arms timers (loss detection, pacing) and can make streams writable.
            self.schedule.mark(slot, handle, RETIME | EVENTS);
            match sent {
                Some(t) => {
                    self.schedule.send.push_back(handle);
                    return Some(t);
                }
                None => Schedule::unmark(slot, SEND),
            }
        }
        None
    }

    /// The earliest timer of any connection. Takes `&mut self`: the deadlines of connections
    /// that took input since the last call are re-read first (only theirs), and drained
    /// connections whose events were taken are removed.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.remove_drained();
        self.update_deadlines();
        while let Some((t, handle)) = self.schedule.peek_timer() {
            if self.is_valid_timer(t, handle) {
                return Some(t);
            }
            self.schedule.pop_timer();
        }
        None
    }

    /// Whether the heap entry `(t, handle)` is the connection's current deadline.
    fn is_valid_timer(&self, t: Instant, handle: ConnectionHandle) -> bool {
        self.connections
            .get(&handle)
            .is_some_and(|e| e.slot.deadline == Some(t))
    }

    /// Re-reads the deadlines of the connections marked [`RETIME`].
    fn update_deadlines(&mut self) {
        let retime = std::mem::take(&mut self.schedule.retime);
        for &handle in &retime {
            if let Some(Entry { conn, slot, .. }) = self.connections.get_mut(&handle) {
                Schedule::unmark(slot, RETIME);
                let deadline = conn.poll_timeout();
                self.schedule.set_deadline(slot, handle, deadline);
            }
        }
        // Give the (emptied) allocation back.
        let mut retime = retime;
        retime.clear();
        if self.schedule.retime.is_empty() {
            self.schedule.retime = retime;
        }
        if self.schedule.timers_need_rebuild(self.connections.len()) {
            let entries = self
                .connections
                .iter()
                .filter_map(|(&h, e)| e.slot.deadline.map(|t| (t, h)));
            self.schedule.rebuild_timers(entries);
        }
    }

    /// Fires expired timers and removes drained connections (after their last events were
    /// polled). Only connections whose deadline has passed are visited.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.update_deadlines();
        while let Some((t, handle)) = self.schedule.peek_timer() {
            if t > now {
                break;
            }
            self.schedule.pop_timer();
            let Some(Entry { conn, slot, .. }) = self.connections.get_mut(&handle) else {
                continue;
            };
            if slot.deadline != Some(t) {
                continue;
            }
            // Consumed: a duplicate entry for the same instant is stale from now on, and the
            // connection's next deadline is read again below.
            slot.deadline = None;
            self.schedule.visits.timers_fired += 1;
            if conn.poll_timeout().is_some_and(|d| d <= now) {
                conn.handle_timeout(now);
            }
            self.schedule.mark(slot, handle, ALL);
        }
        self.update_deadlines();
        self.remove_drained();
    }

    /// Removes the connections marked [`CHECK`] that have drained and whose events were all
    /// taken; one that drained with events waiting stays marked until they are.
    fn remove_drained(&mut self) {
        if self.schedule.check.is_empty() {
            return;
        }
        self.sweep_unconfirmed();
        let check = std::mem::take(&mut self.schedule.check);
        let mut keep = Vec::new();
        for handle in check {
            self.recount_half_open(handle);
            let Some(Entry { conn, slot, .. }) = self.connections.get_mut(&handle) else {
                continue;
            };
            self.schedule.visits.drain_checks += 1;
            if !conn.is_unconfirmed_server() {
                // Confirmed (or closed): a repeated Initial from its address is a replay now.
                let path = conn.path();
                if self.unconfirmed.get(&path) == Some(&handle) {
                    self.unconfirmed.remove(&path);
                }
            }
            if !conn.is_drained() {
                Schedule::unmark(slot, CHECK);
                continue;
            }
            if conn.has_events() {
                keep.push(handle);
                continue;
            }
            let mut common = self.common.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = self.connections.remove(&handle) {
                self.by_cid.remove(&entry.conn.local_cid());
                common.live = common.live.saturating_sub(1);
                self.half_open -= usize::from(entry.half_open);
            }
            common.limits.on_removed(handle);
            drop(common);
            self.incoming.retain(|h| *h != handle);
            // The application learns that it is gone with its next events.
            self.schedule.touched.push(handle);
        }
        keep.append(&mut self.schedule.check);
        self.schedule.check = keep;
    }

    /// Takes connection `handle` out of the half-open count if it has confirmed since.
    fn recount_half_open(&mut self, handle: ConnectionHandle) {
        if let Some(entry) = self.connections.get_mut(&handle)
            && entry.half_open
            && !entry.conn.is_unconfirmed_server()
        {
            entry.half_open = false;
            self.half_open -= 1;
        }
    }

    /// Drops the entries of `unconfirmed` whose connection confirmed or went away, when the map
    /// has doubled since the last sweep (entries are normally removed one by one as their
    /// connection is checked; this catches one whose client moved before confirming).
    fn sweep_unconfirmed(&mut self) {
        if self.unconfirmed.len() <= self.unconfirmed_sweep_at {
            return;
        }
        self.unconfirmed.retain(|_, h| {
            self.connections
                .get(h)
                .is_some_and(|e| e.conn.is_unconfirmed_server())
        });
        self.unconfirmed_sweep_at = 2 * self.unconfirmed.len() + 64;
    }

    /// Moves into `out` the handles of connections that may have events (or have ended, or
    /// been removed) since the last call: the ones to poll with
    /// [`poll_event`](Self::poll_event). Every handle is in `out` at most once per call.
    pub fn take_touched(&mut self, out: &mut Vec<ConnectionHandle>) {
        out.clear();
        std::mem::swap(out, &mut self.schedule.touched);
        for handle in out.iter() {
            if let Some(entry) = self.connections.get_mut(handle) {
                Schedule::unmark(&mut entry.slot, EVENTS);
            }
        }
        self.schedule.visits.touched += out.len() as u64;
    }

    /// The handles [`take_touched`](Self::take_touched) would hand out now, left in place:
    /// for a reader that must also see the connections that changed since the caller last
    /// took them (the runtime's statistics, read between two of its driver's iterations).
    pub fn pending_touched(&self) -> &[ConnectionHandle] {
        &self.schedule.touched
    }

    /// The next event of connection `handle` (`None` if it has none, or is gone). Unlike
    /// [`connection`](Self::connection), this does not mark it as having taken input, so
    /// polling the events of the touched connections costs nothing afterwards.
    pub fn poll_event(&mut self, handle: ConnectionHandle) -> Option<crate::Event> {
        let Entry { conn, slot, .. } = self.connections.get_mut(&handle)?;
        let event = conn.poll();
        if event.is_none() && conn.is_drained() {
            // Its last event was taken: it can go.
            self.schedule.mark(slot, handle, CHECK);
        }
        event
    }

    /// The next carrier switch of connection `handle` (see [`Connection::poll_path_switch`]),
    /// without marking it.
    pub fn poll_path_switch(
        &mut self,
        handle: ConnectionHandle,
    ) -> Option<crate::connection::PathSwitch> {
        self.connections.get_mut(&handle)?.conn.poll_path_switch()
    }

    /// How many times connections were looked at so far, by reason (see [`Visits`]).
    pub fn visits(&self) -> Visits {
        self.schedule.visits
    }

    /// A connection the server accepted that the application has not taken yet.
    pub fn accept(&mut self) -> Option<ConnectionHandle> {
        self.incoming.pop_front()
    }

    /// The connection behind `handle`, while it exists. It is marked as having taken input
    /// (the caller may write to it, close it...), so the endpoint looks at it again on its
    /// next transmit, timer and event polls.
    pub fn connection(&mut self, handle: ConnectionHandle) -> Option<&mut Connection> {
        self.touch(handle)
    }

    /// Read-only access to a connection (statistics), without marking it.
    pub fn peek_connection(&self, handle: ConnectionHandle) -> Option<&Connection> {
        self.connections.get(&handle).map(|e| &e.conn)
    }

    /// How many connections the endpoint holds.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
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
        for (&handle, Entry { conn, slot, .. }) in &mut self.connections {
            conn.set_receive_window(bytes);
            self.schedule.mark(slot, handle, ALL);
        }
    }

    /// Marks our carrier `carrier` reliable (it delivers every datagram: TLS over TCP) or not,
    /// for every live and future connection. For a carrier added after the endpoint started;
    /// see `TransportConfig::reliable_carriers`.
    pub fn set_carrier_reliable(&mut self, carrier: CarrierId, reliable: bool) {
        let mut t = (*self.transport).clone();
        t.reliable_carriers.retain(|&c| c != carrier);
        if reliable {
            t.reliable_carriers.push(carrier);
        }
        let list = t.reliable_carriers.clone();
        self.transport = Arc::new(t);
        for (&handle, Entry { conn, slot, .. }) in &mut self.connections {
            conn.set_reliable_carriers(&list);
            self.schedule.mark(slot, handle, ALL);
        }
    }

    /// Server: the carriers announced to every client from now on, inside the encrypted
    /// Response (see [`crate::handshake::CarrierOffer`]); `None`: no offer. Set by the runtime
    /// once its carriers are bound and their ports known.
    pub fn set_carrier_offer(&mut self, offer: Option<handshake::CarrierOffer>) {
        let mut t = (*self.transport).clone();
        t.carrier_offer = offer;
        self.transport = Arc::new(t);
    }

    /// Learn the ceiling of new connections over our carrier `carrier` from the route to the
    /// peer with `query` (when `TransportConfig::mtu_from_route` is on), or no longer (`None`).
    /// Set by the runtime for carriers whose datagrams are routed as they are (plain UDP, fake
    /// TCP); other carriers keep `max_udp_payload`.
    pub fn set_route_mtu(&mut self, carrier: CarrierId, query: Option<RouteMtuQuery>) {
        match query {
            Some(q) => self.route_mtu.insert(carrier, q),
            None => self.route_mtu.remove(&carrier),
        };
    }

    /// Where this endpoint's RNG seed came from ([`SeedOrigin::Os`] in production).
    pub fn seed_origin(&self) -> SeedOrigin {
        self.seed_origin
    }

    /// Server: loads the replay records a previous run persisted (see
    /// [`Endpoint::take_replay_journal`]); lifts the refusal of Initials stamped before the
    /// start, since what was accepted before it is now known.
    pub fn load_replay_state(
        &mut self,
        unix_time: Duration,
        records: impl IntoIterator<Item = ReplayRecord>,
    ) {
        self.common().replay.load(unix_time, records);
        self.replay_pending = true;
    }

    /// Server: the handshakes accepted since the last call (to append to persistent storage
    /// before their Responses are sent) and whether the cache dropped a generation (storage can
    /// then be compacted to [`Endpoint::replay_records`]).
    pub fn take_replay_journal(&mut self) -> ReplayJournal {
        self.replay_pending = false;
        self.common().replay.take_journal()
    }

    /// Server: whether this endpoint (shard) put a handshake through the replay cache, or
    /// loaded it, since it last called [`take_replay_journal`](Self::take_replay_journal).
    /// When false there is nothing of its own to persist, and the caller need not take any
    /// lock shared with the other shards: a shard's data path stays free of them. (A record
    /// another shard added is persisted by that shard before its Response goes out.)
    pub fn replay_journal_pending(&self) -> bool {
        self.replay_pending
    }

    /// Server: every replay record still remembered.
    pub fn replay_records(&self) -> Vec<ReplayRecord> {
        self.common().replay.records()
    }

    /// Initials dropped by the handshake budget or a connection cap since the last call, per
    /// bound and key, for a rate-limited log line (the caller maps key indices to names).
    pub fn poll_limit_hits(&mut self) -> Vec<LimitHit> {
        self.common().limits.take_hits()
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }
}

/// The endpoint's [`Admission`]: the handshake budget before Noise work, the caps after.
struct Gate<'a> {
    limits: &'a mut Limits,
    /// Live connections of all shards.
    live: usize,
    /// This shard's half-open connections.
    half_open: usize,
    /// How many shards share the limits.
    shards: usize,
    now: Instant,
    from: SocketAddr,
    /// How to ask for the route's ceiling to `from` (every carrier's query), if the
    /// configuration wants that and `from`'s carrier has a route.
    route_mtu: Option<&'a HashMap<CarrierId, RouteMtuQuery>>,
    /// The route's ceiling, once asked (only for an accepted Initial: the query is a few system
    /// calls, not spent on handshakes that are refused anyway).
    ceiling: Option<u16>,
}

impl Admission for Gate<'_> {
    fn may_authenticate(&mut self) -> bool {
        self.limits.spend_handshake(self.now, self.from.ip())
    }

    fn may_accept(&mut self, key_index: usize) -> bool {
        let (half_open, shards) = (self.half_open, self.shards);
        // Half-open connections are counted in this shard only (they change state inside the
        // connections, out of sight of the shared state) and scaled up: handshakes spread
        // evenly over the shards, so each gets its share of the cap.
        self.limits
            .admit(key_index, self.live, || half_open.saturating_mul(shards))
    }

    fn max_udp_payload(&mut self) -> Option<u16> {
        self.ceiling = route_ceiling_over(self.route_mtu?, self.from);
        self.ceiling
    }
}
