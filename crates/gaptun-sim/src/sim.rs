//! The simulated network: one server endpoint, N client endpoints, an uplink and a downlink, and
//! a virtual clock that jumps from event to event.
//!
//! Topology: every client sends through the shared **uplink** (so clients compete for its
//! bottleneck); the server sends through the **downlink**, which routes each datagram by its
//! destination address to the client that currently owns that address. A datagram for an address
//! nobody owns (e.g. a client's address before [`Sim::rebind_client`]) is dropped, like a NAT
//! that forgot the old mapping.
//!
//! One *instant* of the loop ([`Sim::step`]) does, at the current virtual time:
//! 1. deliver every due datagram of the uplink, then of the downlink;
//! 2. call `handle_timeout(now)` on every endpoint whose `poll_timeout()` has passed;
//! 3. take newly accepted server connections (if [`SimConfig::auto_accept`]);
//! 4. let every unfinished [`Workload`] act;
//! 5. drain `poll_transmit` of the server, then of each client in index order, into the links;
//!
//! then moves the clock to the earliest of: next link delivery, next endpoint timeout, next
//! wake-up requested by a workload or [`Sim::wake_at`]. Nothing sleeps: a 30 s transfer takes
//! as long as the CPU needs to process its packets. Everything is ordered deterministically
//! (fixed node order, links ordered by arrival then send order), so the same seed always gives
//! the same run.

use std::any::Any;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaptun_proto::endpoint::ConnectError;
use gaptun_proto::{
    CarrierId, CongestionKind, Connection, ConnectionHandle, Endpoint, EndpointConfig, PathAddr,
    Psk, RngSeed, TransportConfig,
};

use crate::link::{Datagram, Link, LinkConfig, LinkStats};
use crate::workload::{FnWorkload, Workload};

/// UDP port of the simulated server.
pub const SERVER_PORT: u16 = 29900;
/// UDP port of every simulated client (each has its own IP).
pub const CLIENT_PORT: u16 = 40000;
/// Wall-clock time (since the Unix epoch) at virtual time zero: 2023-11-14T22:13:20Z.
pub const UNIX_START: Duration = Duration::from_secs(1_700_000_000);
/// The key [`SimConfig::new`] gives every endpoint.
pub const TEST_PSK: [u8; 32] = [7; 32];
/// Processing more instants than this without the clock moving means the protocol never goes
/// idle at one point in time (a timer that does not re-arm into the future, or a transmit loop
/// that never ends): the simulation panics to make the bug visible.
pub const MAX_ITERATIONS_PER_INSTANT: u64 = 1_000_000;

/// The simulated server address, 10.0.1.1:29900.
pub fn default_server_address() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 1, 1), SERVER_PORT))
}

/// The address client `index` starts with: 10.0.0.(index + 1):40000 for the first 254 clients,
/// then 10.1.x.y (never the server's address).
pub fn client_address(index: usize) -> SocketAddr {
    let ip = match u8::try_from(index + 1) {
        Ok(last) if last < 255 => Ipv4Addr::new(10, 0, 0, last),
        _ => {
            let n = u32::try_from(index).unwrap_or(u32::MAX) & 0xffff;
            Ipv4Addr::from(0x0a01_0000 | n)
        }
    };
    SocketAddr::from((ip, CLIENT_PORT))
}

/// Derives independent seeds for the parts of the simulation from the master seed (SplitMix64
/// finalizer over `seed` and a per-part stream number).
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    mix(seed ^ mix(stream))
}

const SEED_SERVER: u64 = 1;
const SEED_UPLINK: u64 = 2;
const SEED_DOWNLINK: u64 = 3;
const SEED_THROTTLE: u64 = 4;
const SEED_CLIENT_BASE: u64 = 0x100;
const SEED_SERVER_RESTART_BASE: u64 = 0x1_0000_0000;

/// One client of the simulation.
#[derive(Debug, Clone)]
pub struct ClientSetup {
    /// Its endpoint configuration.
    pub config: Arc<EndpointConfig>,
    /// How far its wall clock is ahead of the server's, in milliseconds (negative: behind). Used
    /// to test the handshake timestamp window.
    pub clock_skew_ms: i64,
}

impl ClientSetup {
    /// A client with `config` and an exact clock.
    pub fn new(config: EndpointConfig) -> Self {
        Self {
            config: Arc::new(config),
            clock_skew_ms: 0,
        }
    }
}

/// Everything needed to build a [`Sim`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Master seed: endpoints and links get seeds derived from it.
    pub seed: u64,
    /// The server endpoint's configuration.
    pub server: Arc<EndpointConfig>,
    /// The server's address.
    pub server_address: SocketAddr,
    /// One entry per client; client `i` starts at [`client_address`]`(i)`.
    pub clients: Vec<ClientSetup>,
    /// Clients → server.
    pub uplink: LinkConfig,
    /// Server → clients.
    pub downlink: LinkConfig,
    /// Wall-clock time at virtual time zero.
    pub unix_start: Duration,
    /// `max_datagrams` passed to `poll_transmit` (GSO batch size).
    pub max_datagrams: usize,
    /// Take every new server connection from `Endpoint::accept` and remember it, so workloads can
    /// find the server side of client `i`'s connection. Turn off to test `accept` yourself.
    pub auto_accept: bool,
}

impl SimConfig {
    /// One client and a server sharing [`TEST_PSK`], default transport parameters, 10 ms one-way
    /// delay in each direction and no other impairment.
    pub fn new(seed: u64) -> Self {
        let psk = Psk::from_bytes(TEST_PSK);
        let link = LinkConfig::ideal().with_delay(Duration::from_millis(10));
        Self {
            seed,
            server: Arc::new(EndpointConfig::server(vec![psk.clone()])),
            server_address: default_server_address(),
            clients: vec![ClientSetup::new(EndpointConfig::client(psk))],
            uplink: link.clone(),
            downlink: link,
            unix_start: UNIX_START,
            max_datagrams: 10,
            auto_accept: true,
        }
    }

    /// Sets the number of clients; new ones copy the first client's setup.
    pub fn with_clients(mut self, count: usize) -> Self {
        let template =
            self.clients.first().cloned().unwrap_or_else(|| {
                ClientSetup::new(EndpointConfig::client(Psk::from_bytes(TEST_PSK)))
            });
        self.clients.resize(count, template);
        self
    }

    /// Uses `link` in both directions.
    pub fn with_link(self, link: LinkConfig) -> Self {
        self.with_links(link.clone(), link)
    }

    /// Sets the uplink (clients → server) and downlink (server → clients).
    pub fn with_links(mut self, uplink: LinkConfig, downlink: LinkConfig) -> Self {
        self.uplink = uplink;
        self.downlink = downlink;
        self
    }

    /// Applies `f` to the transport parameters of the server and of every client.
    pub fn with_transport(mut self, f: impl Fn(&mut TransportConfig)) -> Self {
        f(&mut Arc::make_mut(&mut self.server).transport);
        for client in &mut self.clients {
            f(&mut Arc::make_mut(&mut client.config).transport);
        }
        self
    }

    /// Sets the congestion controller of every endpoint.
    pub fn with_congestion(self, kind: CongestionKind) -> Self {
        self.with_transport(|t| t.congestion = kind)
    }
}

/// A node of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// The server endpoint.
    Server,
    /// Client endpoint number `i`.
    Client(usize),
    /// Not an endpoint: a datagram injected by the test.
    External,
}

/// Direction of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// Clients → server.
    Uplink,
    /// Server → clients.
    Downlink,
}

/// Where a tapped datagram was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Emitted by an endpoint (or injected into a link), before any impairment.
    Sent,
    /// Handed to an endpoint's `handle_datagram`.
    Delivered,
}

/// A datagram seen by a tap ([`Sim::add_tap`]).
#[derive(Debug, Clone, Copy)]
pub struct TapEvent<'a> {
    /// Virtual time since the start.
    pub at: Duration,
    /// Which link (for injected datagrams handed straight to a node: the link they would use).
    pub path: Path,
    /// Sent or delivered.
    pub stage: Stage,
    /// The sender for [`Stage::Sent`], the receiver for [`Stage::Delivered`].
    pub node: Node,
    /// Source address.
    pub src: SocketAddr,
    /// Destination address.
    pub dst: SocketAddr,
    /// Payload.
    pub data: &'a [u8],
}

/// An owned record of a datagram an endpoint sent ([`Sim::set_capture`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Virtual time since the start.
    pub at: Duration,
    /// Who sent it.
    pub from: Node,
    /// Source address.
    pub src: SocketAddr,
    /// Destination address.
    pub dst: SocketAddr,
    /// Payload.
    pub data: Vec<u8>,
}

/// A server connection taken from `accept` by the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The server-side handle.
    pub handle: ConnectionHandle,
    /// The client address it came from when accepted.
    pub remote: SocketAddr,
    /// When it was accepted.
    pub at: Instant,
}

/// Which end of client `i`'s connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    /// The client's connection.
    Client,
    /// The server's connection to that client.
    Server,
}

impl End {
    /// The other end.
    pub fn peer(self) -> Self {
        match self {
            Self::Client => Self::Server,
            Self::Server => Self::Client,
        }
    }
}

/// Names a workload added with [`Sim::add_workload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkloadId(pub usize);

/// Simulation-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Instants processed.
    pub instants: u64,
    /// Datagrams the server emitted.
    pub server_sent: u64,
    /// Datagrams the clients emitted.
    pub clients_sent: u64,
    /// Datagrams dropped because no node owns their destination address.
    pub unroutable: u64,
    /// Datagrams injected by the test.
    pub injected: u64,
    /// Datagrams dropped because their source or destination address is blocked
    /// ([`Sim::block_address`]) or throttled ([`Sim::throttle_address`]).
    pub blocked: u64,
}

#[derive(Debug)]
struct ClientNode {
    endpoint: Endpoint,
    address: SocketAddr,
    /// Every address this client has had, oldest first (to find its server connections).
    history: Vec<SocketAddr>,
    /// The connection [`Sim::connect`] opened last.
    primary: Option<ConnectionHandle>,
    clock_skew_ms: i64,
    /// Whether the client has a carrier of its own per server address (see
    /// [`Sim::connect_failover`]): what arrives from server address `a` comes in on the
    /// carrier numbered as the server's carrier for `a`. Otherwise everything is carrier 0.
    carrier_per_server: bool,
    /// Whether each server address sees this client from a source port of its own (see
    /// [`Sim::connect_flows`]).
    flow_per_server_address: bool,
}

impl ClientNode {
    /// The source address of a datagram to `dst`: the client's own, or with
    /// [`Sim::connect_flows`] its port shifted by `dst`'s offset from the main server port.
    fn source_for(&self, dst: SocketAddr, main_server: SocketAddr) -> SocketAddr {
        if !self.flow_per_server_address {
            return self.address;
        }
        let offset = dst.port().wrapping_sub(main_server.port());
        SocketAddr::new(self.address.ip(), self.address.port().wrapping_add(offset))
    }

    /// Whether a datagram from `src` to `dst` is for this client.
    fn receives(&self, src: SocketAddr, dst: SocketAddr, main_server: SocketAddr) -> bool {
        dst == self.address || dst == self.source_for(src, main_server)
    }
}

/// The endpoints and what the simulation knows about their connections.
#[derive(Debug)]
pub struct Nodes {
    server: Endpoint,
    server_address: SocketAddr,
    /// Further server addresses, each its own carrier: `extra_server_addresses[i]` is carrier
    /// `i + 1` (carrier 0 is `server_address`).
    extra_server_addresses: Vec<SocketAddr>,
    clients: Vec<ClientNode>,
    accepted: Vec<Accepted>,
}

impl Nodes {
    fn client_node(&mut self, index: usize) -> &mut ClientNode {
        let count = self.clients.len();
        match self.clients.get_mut(index) {
            Some(node) => node,
            None => panic!("gaptun-sim: no client {index} (the simulation has {count})"),
        }
    }

    fn client_ref(&self, index: usize) -> &ClientNode {
        let count = self.clients.len();
        match self.clients.get(index) {
            Some(node) => node,
            None => panic!("gaptun-sim: no client {index} (the simulation has {count})"),
        }
    }

    /// Connects client `index` to the server, or returns its existing primary connection.
    fn connect(&mut self, now: Instant, index: usize) -> Result<ConnectionHandle, ConnectError> {
        let server = self.server_address;
        self.connect_paths(now, index, &[server])
    }

    /// [`Nodes::connect`] over paths to each of `servers` (the client's one carrier to each).
    fn connect_paths(
        &mut self,
        now: Instant,
        index: usize,
        servers: &[SocketAddr],
    ) -> Result<ConnectionHandle, ConnectError> {
        let node = self.client_node(index);
        if let Some(handle) = node.primary {
            return Ok(handle);
        }
        let paths: Vec<PathAddr> = servers.iter().map(|&s| PathAddr::single(s)).collect();
        let handle = node.endpoint.connect_paths(now, &paths)?;
        node.primary = Some(handle);
        Ok(handle)
    }

    /// The server carrier that owns `address`, if any.
    fn server_carrier(&self, address: SocketAddr) -> Option<CarrierId> {
        if address == self.server_address {
            return Some(CarrierId(0));
        }
        let i = self
            .extra_server_addresses
            .iter()
            .position(|&a| a == address)?;
        u16::try_from(i + 1).ok().map(CarrierId)
    }

    /// The address of server carrier `carrier` (carrier 0's for an unknown one).
    fn server_carrier_address(&self, carrier: CarrierId) -> SocketAddr {
        match usize::from(carrier.0).checked_sub(1) {
            Some(i) => self
                .extra_server_addresses
                .get(i)
                .copied()
                .unwrap_or(self.server_address),
            None => self.server_address,
        }
    }

    /// The server connection most recently accepted from any address client `index` has had.
    fn server_handle(&self, index: usize) -> Option<ConnectionHandle> {
        let history = &self.client_ref(index).history;
        self.accepted
            .iter()
            .rev()
            .find(|a| history.contains(&a.remote))
            .map(|a| a.handle)
    }

    fn handle(&self, index: usize, end: End) -> Option<ConnectionHandle> {
        match end {
            End::Client => self.client_ref(index).primary,
            End::Server => self.server_handle(index),
        }
    }

    fn connection(&mut self, index: usize, end: End) -> Option<&mut Connection> {
        let handle = self.handle(index, end)?;
        match end {
            End::Client => self.client_node(index).endpoint.connection(handle),
            End::Server => self.server.connection(handle),
        }
    }
}

/// What a workload (or a test, through [`Sim::with_ctx`]) can touch during one instant.
pub struct Ctx<'a> {
    now: Instant,
    start: Instant,
    nodes: &'a mut Nodes,
    wakes: &'a mut BTreeSet<Instant>,
}

impl fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("elapsed", &self.elapsed())
            .finish_non_exhaustive()
    }
}

impl Ctx<'_> {
    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the start of the simulation.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Virtual time zero.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Asks to be polled again at `at` even if nothing else happens then.
    pub fn wake_at(&mut self, at: Instant) {
        self.wakes.insert(at);
    }

    /// The server endpoint.
    pub fn server(&mut self) -> &mut Endpoint {
        &mut self.nodes.server
    }

    /// Number of clients.
    pub fn client_count(&self) -> usize {
        self.nodes.clients.len()
    }

    /// Client endpoint `index`.
    ///
    /// # Panics
    /// If there is no such client (a mistake in the test).
    pub fn client(&mut self, index: usize) -> &mut Endpoint {
        &mut self.nodes.client_node(index).endpoint
    }

    /// Client `index`'s connection to the server, opened now if it has none yet.
    pub fn connect(&mut self, index: usize) -> Result<ConnectionHandle, ConnectError> {
        self.nodes.connect(self.now, index)
    }

    /// The handle of one end of client `index`'s connection (the server end once accepted).
    pub fn handle(&self, index: usize, end: End) -> Option<ConnectionHandle> {
        self.nodes.handle(index, end)
    }

    /// One end of client `index`'s connection, while it exists.
    pub fn connection(&mut self, index: usize, end: End) -> Option<&mut Connection> {
        self.nodes.connection(index, end)
    }
}

type Tap = Box<dyn FnMut(&TapEvent<'_>)>;

/// The simulation. See the [module docs](self).
pub struct Sim {
    seed: u64,
    start: Instant,
    now: Instant,
    unix_start: Duration,
    server_config: Arc<EndpointConfig>,
    server_restarts: u64,
    nodes: Nodes,
    uplink: Link,
    downlink: Link,
    workloads: Vec<Box<dyn Workload>>,
    wakes: BTreeSet<Instant>,
    taps: Vec<Tap>,
    capture: Option<Vec<Captured>>,
    stats: SimStats,
    max_datagrams: usize,
    auto_accept: bool,
    buf: Vec<u8>,
    /// Instants processed without the clock moving.
    spins: u64,
    /// Addresses whose datagrams are dropped on delivery ([`Sim::block_address`]).
    blocked: BTreeSet<SocketAddr>,
    /// Addresses whose datagrams are dropped on delivery with a probability
    /// ([`Sim::throttle_address`]), and the generator that draws the drops.
    throttled: std::collections::BTreeMap<SocketAddr, f64>,
    throttle_rng: rand_chacha::ChaCha8Rng,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("elapsed", &self.elapsed())
            .field("clients", &self.nodes.clients.len())
            .field("workloads", &self.workloads.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// Builds the network and its endpoints at virtual time zero.
    pub fn new(config: SimConfig) -> Self {
        let start = Instant::now();
        let server = Endpoint::new(
            config.server.clone(),
            RngSeed::insecure_from_u64(derive_seed(config.seed, SEED_SERVER)),
            start,
            config.unix_start,
        );
        let mut sim = Self {
            seed: config.seed,
            start,
            now: start,
            unix_start: config.unix_start,
            server_config: config.server,
            server_restarts: 0,
            nodes: Nodes {
                server,
                server_address: config.server_address,
                extra_server_addresses: Vec::new(),
                clients: Vec::new(),
                accepted: Vec::new(),
            },
            uplink: Link::new(config.uplink, derive_seed(config.seed, SEED_UPLINK)),
            downlink: Link::new(config.downlink, derive_seed(config.seed, SEED_DOWNLINK)),
            workloads: Vec::new(),
            wakes: BTreeSet::new(),
            taps: Vec::new(),
            capture: None,
            stats: SimStats::default(),
            max_datagrams: config.max_datagrams.max(1),
            auto_accept: config.auto_accept,
            buf: Vec::new(),
            spins: 0,
            blocked: BTreeSet::new(),
            throttled: std::collections::BTreeMap::new(),
            throttle_rng: rand::SeedableRng::seed_from_u64(derive_seed(config.seed, SEED_THROTTLE)),
        };
        for setup in config.clients {
            sim.add_client(setup);
        }
        sim
    }

    // ----- clock -----

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time zero.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The server's wall-clock time now.
    pub fn unix_time(&self) -> Duration {
        self.unix_start + self.elapsed()
    }

    /// Makes sure an instant is processed at `at` (e.g. to look at the state then).
    pub fn wake_at(&mut self, at: Instant) {
        self.wakes.insert(at);
    }

    // ----- nodes -----

    /// The server endpoint.
    pub fn server(&mut self) -> &mut Endpoint {
        &mut self.nodes.server
    }

    /// The server's address.
    pub fn server_address(&self) -> SocketAddr {
        self.nodes.server_address
    }

    /// Number of clients.
    pub fn client_count(&self) -> usize {
        self.nodes.clients.len()
    }

    /// Client endpoint `index`.
    ///
    /// # Panics
    /// If there is no such client (a mistake in the test).
    pub fn client(&mut self, index: usize) -> &mut Endpoint {
        &mut self.nodes.client_node(index).endpoint
    }

    /// Client `index`'s current address.
    ///
    /// # Panics
    /// If there is no such client.
    pub fn client_address(&self, index: usize) -> SocketAddr {
        self.nodes.client_ref(index).address
    }

    /// Adds a client now, at the next free default address; returns its index.
    pub fn add_client(&mut self, setup: ClientSetup) -> usize {
        let index = self.nodes.clients.len();
        let address = client_address(index);
        let unix = skewed(self.unix_time(), setup.clock_skew_ms);
        let seed = derive_seed(self.seed, SEED_CLIENT_BASE + index as u64);
        let endpoint = Endpoint::new(
            setup.config,
            RngSeed::insecure_from_u64(seed),
            self.now,
            unix,
        );
        self.nodes.clients.push(ClientNode {
            endpoint,
            carrier_per_server: false,
            flow_per_server_address: false,
            address,
            history: vec![address],
            primary: None,
            clock_skew_ms: setup.clock_skew_ms,
        });
        index
    }

    /// How far client `index`'s wall clock is ahead of the server's, in milliseconds.
    pub fn client_clock_skew_ms(&self, index: usize) -> i64 {
        self.nodes.client_ref(index).clock_skew_ms
    }

    /// Replaces the server endpoint by a fresh one with the same configuration (a restart that
    /// loses all state); the list of accepted connections is cleared.
    pub fn restart_server(&mut self) {
        self.server_restarts += 1;
        let seed = derive_seed(self.seed, SEED_SERVER_RESTART_BASE + self.server_restarts);
        let unix = self.unix_time();
        self.nodes.server = Endpoint::new(
            self.server_config.clone(),
            RngSeed::insecure_from_u64(seed),
            self.now,
            unix,
        );
        self.nodes.accepted.clear();
    }

    /// Client `index`'s connection to the server, opened now if it has none yet. The handle is
    /// remembered as the client's primary connection (what workloads and
    /// [`Sim::client_connection`] use).
    pub fn connect(&mut self, index: usize) -> Result<ConnectionHandle, ConnectError> {
        self.nodes.connect(self.now, index)
    }

    /// Like [`Sim::connect`], but over paths to each of `servers` (server addresses given by
    /// [`Sim::add_server_address`], or the main one): the client spreads its packets over them.
    pub fn connect_paths(
        &mut self,
        index: usize,
        servers: &[SocketAddr],
    ) -> Result<ConnectionHandle, ConnectError> {
        self.nodes.connect_paths(self.now, index, servers)
    }

    /// Like [`Sim::connect_paths`], but every server address sees the client from a source port
    /// of its own (the client's port shifted by the server port's offset from the main one), as
    /// fake TCP's flows, one per server port, each have their own: to the server each path is
    /// a new peer address that it must validate.
    pub fn connect_flows(
        &mut self,
        index: usize,
        servers: &[SocketAddr],
    ) -> Result<ConnectionHandle, ConnectError> {
        let main = self.nodes.server_address;
        let node = self.nodes.client_node(index);
        node.flow_per_server_address = true;
        for &server in servers {
            let source = node.source_for(server, main);
            if !node.history.contains(&source) {
                node.history.push(source);
            }
        }
        self.nodes.connect_paths(self.now, index, servers)
    }

    /// Like [`Sim::connect_paths`], but the client reaches each server address on a carrier of
    /// its own (numbered as the server's carrier for that address, so `servers` stand for
    /// carriers such as UDP and fake TCP) and uses them one at a time, in the order given,
    /// failing over to the next when the one in use goes silent or lossy
    /// ([`gaptun_proto::Connection::set_carrier_preference`]).
    pub fn connect_failover(
        &mut self,
        index: usize,
        servers: &[SocketAddr],
    ) -> Result<ConnectionHandle, ConnectError> {
        let now = self.now;
        let paths: Vec<PathAddr> = servers
            .iter()
            .map(|&s| PathAddr::new(self.nodes.server_carrier(s).unwrap_or_default(), s))
            .collect();
        let order: Vec<CarrierId> = paths.iter().map(|p| p.carrier).collect();
        let node = self.nodes.client_node(index);
        if let Some(handle) = node.primary {
            return Ok(handle);
        }
        node.carrier_per_server = true;
        let handle = node.endpoint.connect_paths(now, &paths)?;
        if let Some(conn) = node.endpoint.connection(handle) {
            conn.set_carrier_preference(now, &order);
        }
        node.primary = Some(handle);
        Ok(handle)
    }

    /// Like [`Sim::connect_failover`], each server address reached on a carrier of its own
    /// (think UDP and fake TCP), but spreading over all of them at once, as a client with
    /// `--carrier all` does: each path gets a share by what it delivers.
    pub fn connect_carriers(
        &mut self,
        index: usize,
        servers: &[SocketAddr],
    ) -> Result<ConnectionHandle, ConnectError> {
        let now = self.now;
        let paths: Vec<PathAddr> = servers
            .iter()
            .map(|&s| PathAddr::new(self.nodes.server_carrier(s).unwrap_or_default(), s))
            .collect();
        let node = self.nodes.client_node(index);
        if let Some(handle) = node.primary {
            return Ok(handle);
        }
        node.carrier_per_server = true;
        let handle = node.endpoint.connect_paths(now, &paths)?;
        node.primary = Some(handle);
        Ok(handle)
    }

    /// Gives the server one more address (another port, say), as its own carrier; returns the
    /// carrier's number. Uplink datagrams to it reach the server on that carrier, and what the
    /// server sends on the carrier leaves from it.
    pub fn add_server_address(&mut self, address: SocketAddr) -> CarrierId {
        if let Some(c) = self.nodes.server_carrier(address) {
            return c;
        }
        self.nodes.extra_server_addresses.push(address);
        let n = self.nodes.extra_server_addresses.len();
        CarrierId(u16::try_from(n).unwrap_or(u16::MAX))
    }

    /// Drops, from now on, every datagram sent from or to `address` when it is delivered (a
    /// port a middlebox blocks in both directions). Counted in [`SimStats::blocked`].
    pub fn block_address(&mut self, address: SocketAddr) {
        self.blocked.insert(address);
    }

    /// Drops, from now on, each datagram sent from or to `address` with probability `loss`
    /// when it is delivered, on top of the links' own loss (a port a middlebox throttles);
    /// 0 undoes it. Counted in [`SimStats::blocked`].
    pub fn throttle_address(&mut self, address: SocketAddr, loss: f64) {
        if loss > 0.0 {
            self.throttled.insert(address, loss.min(1.0));
        } else {
            self.throttled.remove(&address);
        }
    }

    /// Whether a datagram between `src` and `dst` is dropped by a block or a throttle.
    fn dropped_at(&mut self, src: SocketAddr, dst: SocketAddr) -> bool {
        if self.blocked.contains(&src) || self.blocked.contains(&dst) {
            return true;
        }
        let loss = [src, dst]
            .iter()
            .filter_map(|a| self.throttled.get(a))
            .fold(0.0f64, |acc, &l| acc.max(l));
        loss > 0.0 && rand::Rng::random_bool(&mut self.throttle_rng, loss)
    }

    /// Undoes [`Sim::block_address`].
    pub fn unblock_address(&mut self, address: SocketAddr) {
        self.blocked.remove(&address);
    }

    /// Forgets client `index`'s primary connection, so the next [`Sim::connect`] opens a new one.
    pub fn forget_connection(&mut self, index: usize) {
        self.nodes.client_node(index).primary = None;
    }

    /// One end of client `index`'s primary connection, if known.
    pub fn handle(&self, index: usize, end: End) -> Option<ConnectionHandle> {
        self.nodes.handle(index, end)
    }

    /// One end of client `index`'s primary connection, while it exists.
    pub fn connection(&mut self, index: usize, end: End) -> Option<&mut Connection> {
        self.nodes.connection(index, end)
    }

    /// Client `index`'s primary connection.
    pub fn client_connection(&mut self, index: usize) -> Option<&mut Connection> {
        self.connection(index, End::Client)
    }

    /// The server's connection to client `index` (found by the client's addresses).
    pub fn server_connection(&mut self, index: usize) -> Option<&mut Connection> {
        self.connection(index, End::Server)
    }

    /// Server connections taken by auto-accept, oldest first.
    pub fn accepted(&self) -> &[Accepted] {
        &self.nodes.accepted
    }

    /// Runs `f` with the same view a workload gets, e.g. for custom logic between steps.
    pub fn with_ctx<R>(&mut self, f: impl FnOnce(&mut Ctx<'_>) -> R) -> R {
        let mut ctx = Ctx {
            now: self.now,
            start: self.start,
            nodes: &mut self.nodes,
            wakes: &mut self.wakes,
        };
        f(&mut ctx)
    }

    /// Gives client `index` a new address (NAT rebinding): its next datagrams carry it, and
    /// downlink datagrams to the old address are dropped from now on.
    pub fn rebind_client(&mut self, index: usize, address: SocketAddr) {
        let node = self.nodes.client_node(index);
        node.address = address;
        if !node.history.contains(&address) {
            node.history.push(address);
        }
    }

    // ----- links -----

    /// The uplink (clients → server).
    pub fn uplink(&self) -> &Link {
        &self.uplink
    }

    /// The downlink (server → clients).
    pub fn downlink(&self) -> &Link {
        &self.downlink
    }

    /// One link, to change its configuration or read its stats.
    pub fn link_mut(&mut self, path: Path) -> &mut Link {
        match path {
            Path::Uplink => &mut self.uplink,
            Path::Downlink => &mut self.downlink,
        }
    }

    /// Counters of one link.
    pub fn link_stats(&self, path: Path) -> LinkStats {
        match path {
            Path::Uplink => *self.uplink.stats(),
            Path::Downlink => *self.downlink.stats(),
        }
    }

    /// Drops everything on `path` (sent or arriving) from now for `duration`.
    pub fn blackhole(&mut self, path: Path, duration: Duration) {
        let (now, until) = (self.now, self.now + duration);
        self.link_mut(path).blackhole(now, Some(until));
        // Make sure the end of the outage is a processed instant, so tests can observe it.
        self.wakes.insert(until);
    }

    /// Drops everything on `path` from now until [`Sim::clear_blackhole`].
    pub fn blackhole_indefinitely(&mut self, path: Path) {
        let now = self.now;
        self.link_mut(path).blackhole(now, None);
    }

    /// Ends an outage on `path`.
    pub fn clear_blackhole(&mut self, path: Path) {
        self.link_mut(path).clear_blackhole();
    }

    // ----- observation and injection -----

    /// Calls `tap` for every datagram sent into a link or delivered to an endpoint.
    pub fn add_tap(&mut self, tap: impl FnMut(&TapEvent<'_>) + 'static) {
        self.taps.push(Box::new(tap));
    }

    /// Starts (true) or stops (false) recording every datagram the endpoints send. Stopping
    /// discards the record.
    pub fn set_capture(&mut self, on: bool) {
        self.capture = if on {
            Some(self.capture.take().unwrap_or_default())
        } else {
            None
        };
    }

    /// Datagrams recorded since [`Sim::set_capture`]`(true)`.
    pub fn captured(&self) -> &[Captured] {
        self.capture.as_deref().unwrap_or_default()
    }

    /// Recorded datagrams sent by `node`.
    pub fn captured_from(&self, node: Node) -> impl Iterator<Item = &Captured> {
        self.captured().iter().filter(move |c| c.from == node)
    }

    /// Takes the record, leaving capture on with an empty one.
    pub fn take_captured(&mut self) -> Vec<Captured> {
        match &mut self.capture {
            Some(record) => std::mem::take(record),
            None => Vec::new(),
        }
    }

    /// Hands `data` to the server now, as if it came from `from` (no link involved).
    pub fn inject_to_server(&mut self, from: SocketAddr, mut data: Vec<u8>) {
        self.stats.injected += 1;
        let to = self.nodes.server_address;
        self.tap(
            Path::Uplink,
            Stage::Delivered,
            Node::Server,
            from,
            to,
            &data,
        );
        let now = self.now;
        self.nodes
            .server
            .handle_datagram(now, CarrierId(0), from, &mut data);
    }

    /// Hands `data` to client `index` now, as if it came from `from` (no link involved).
    pub fn inject_to_client(&mut self, index: usize, from: SocketAddr, mut data: Vec<u8>) {
        self.stats.injected += 1;
        let (now, to) = (self.now, self.client_address(index));
        self.tap(
            Path::Downlink,
            Stage::Delivered,
            Node::Client(index),
            from,
            to,
            &data,
        );
        self.nodes
            .client_node(index)
            .endpoint
            .handle_datagram(now, CarrierId(0), from, &mut data);
    }

    /// Sends a raw datagram into a link now, with any source address: it suffers the link's
    /// impairments and is routed by its destination like any other.
    pub fn inject_into_link(&mut self, path: Path, datagram: Datagram) {
        self.stats.injected += 1;
        self.tap(
            path,
            Stage::Sent,
            Node::External,
            datagram.src,
            datagram.dst,
            &datagram.data,
        );
        let now = self.now;
        self.link_mut(path).send(now, datagram);
    }

    /// Simulation-wide counters.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    // ----- workloads -----

    /// Adds an application driver, polled once per instant until it reports done.
    pub fn add_workload(&mut self, workload: impl Workload) -> WorkloadId {
        self.workloads.push(Box::new(workload));
        WorkloadId(self.workloads.len() - 1)
    }

    /// Adds a closure as a workload; it returns true once it is done.
    pub fn add_fn_workload(&mut self, f: impl FnMut(&mut Ctx<'_>) -> bool + 'static) -> WorkloadId {
        self.add_workload(FnWorkload::new(f))
    }

    /// A workload, to read its results.
    pub fn workload<T: Workload>(&self, id: WorkloadId) -> Option<&T> {
        let workload: &dyn Any = self.workloads.get(id.0)?.as_ref();
        workload.downcast_ref::<T>()
    }

    /// A workload, to change it between steps.
    pub fn workload_mut<T: Workload>(&mut self, id: WorkloadId) -> Option<&mut T> {
        let workload: &mut dyn Any = self.workloads.get_mut(id.0)?.as_mut();
        workload.downcast_mut::<T>()
    }

    /// Whether every workload reports done.
    pub fn workloads_done(&self) -> bool {
        self.workloads.iter().all(|w| w.is_done())
    }

    // ----- running -----

    /// Processes the current instant, then moves the clock to the next event. Returns the new
    /// time, or `None` if nothing is scheduled at all (the clock stays put).
    ///
    /// # Panics
    /// After [`MAX_ITERATIONS_PER_INSTANT`] steps without the clock moving (a protocol bug).
    pub fn step(&mut self) -> Option<Instant> {
        self.process_instant();
        let next = self.next_event()?;
        self.advance_to(next);
        Some(self.now)
    }

    /// Runs until `done` returns true (checked after every instant) or the clock would pass
    /// `deadline`; returns whether `done` was reached. On a timeout the clock is left at
    /// `deadline`.
    ///
    /// # Panics
    /// After [`MAX_ITERATIONS_PER_INSTANT`] steps without the clock moving (a protocol bug).
    pub fn run_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> bool {
        loop {
            self.process_instant();
            if done(self) {
                return true;
            }
            match self.next_event() {
                Some(next) if next <= deadline => self.advance_to(next),
                _ => {
                    if deadline > self.now {
                        self.advance_to(deadline);
                    }
                    return false;
                }
            }
        }
    }

    /// [`Sim::run_until`] with a deadline `duration` from now.
    pub fn run_for(&mut self, duration: Duration, done: impl FnMut(&mut Self) -> bool) -> bool {
        let deadline = self.now + duration;
        self.run_until(deadline, done)
    }

    /// Runs for `duration` of virtual time.
    pub fn advance(&mut self, duration: Duration) {
        self.run_for(duration, |_| false);
    }

    /// Runs until every workload is done; false if `duration` passed first.
    pub fn run_workloads(&mut self, duration: Duration) -> bool {
        self.run_for(duration, |sim| sim.workloads_done())
    }

    /// The earliest future event: link delivery, endpoint timer or wake-up.
    pub fn next_event(&mut self) -> Option<Instant> {
        let clients = self
            .nodes
            .clients
            .iter_mut()
            .filter_map(|c| c.endpoint.poll_timeout());
        [
            self.uplink.next_delivery(),
            self.downlink.next_delivery(),
            self.nodes.server.poll_timeout(),
            self.wakes.first().copied(),
        ]
        .into_iter()
        .flatten()
        .chain(clients)
        .min()
    }

    fn advance_to(&mut self, next: Instant) {
        if next > self.now {
            self.now = next;
            self.spins = 0;
            return;
        }
        self.spins += 1;
        if self.spins > MAX_ITERATIONS_PER_INSTANT {
            panic!(
                "gaptun-sim: {MAX_ITERATIONS_PER_INSTANT} iterations at t={:?} without the clock \
                 moving: a timer keeps expiring at or before now, or an endpoint keeps producing \
                 work at this instant (protocol livelock). Pending: {}",
                self.elapsed(),
                self.pending_summary()
            );
        }
    }

    fn pending_summary(&mut self) -> String {
        let start = self.start;
        let rel = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(start));
        let clients: Vec<_> = self
            .nodes
            .clients
            .iter_mut()
            .map(|c| rel(c.endpoint.poll_timeout()))
            .collect();
        format!(
            "uplink {:?}, downlink {:?}, server timeout {:?}, client timeouts {:?}, wake {:?}",
            rel(self.uplink.next_delivery()),
            rel(self.downlink.next_delivery()),
            rel(self.nodes.server.poll_timeout()),
            clients,
            rel(self.wakes.first().copied()),
        )
    }

    fn process_instant(&mut self) {
        self.stats.instants += 1;
        let now = self.now;
        while self.wakes.first().is_some_and(|&t| t <= now) {
            self.wakes.pop_first();
        }
        self.deliver();
        self.fire_timeouts();
        if self.auto_accept {
            self.accept_new();
        }
        self.poll_workloads();
        self.drain_transmits();
    }

    fn deliver(&mut self) {
        let now = self.now;
        while let Some(mut d) = self.uplink.pop_due(now) {
            let Some(carrier) = self.nodes.server_carrier(d.dst) else {
                self.stats.unroutable += 1;
                continue;
            };
            if self.dropped_at(d.src, d.dst) {
                self.stats.blocked += 1;
                continue;
            }
            self.tap(
                Path::Uplink,
                Stage::Delivered,
                Node::Server,
                d.src,
                d.dst,
                &d.data,
            );
            self.nodes
                .server
                .handle_datagram(now, carrier, d.src, &mut d.data);
        }
        while let Some(mut d) = self.downlink.pop_due(now) {
            let main = self.nodes.server_address;
            let Some(index) = self
                .nodes
                .clients
                .iter()
                .position(|c| c.receives(d.src, d.dst, main))
            else {
                self.stats.unroutable += 1;
                continue;
            };
            if self.dropped_at(d.src, d.dst) {
                self.stats.blocked += 1;
                continue;
            }
            self.tap(
                Path::Downlink,
                Stage::Delivered,
                Node::Client(index),
                d.src,
                d.dst,
                &d.data,
            );
            let carrier = if self
                .nodes
                .clients
                .get(index)
                .is_some_and(|c| c.carrier_per_server)
            {
                self.nodes.server_carrier(d.src).unwrap_or_default()
            } else {
                CarrierId(0)
            };
            if let Some(node) = self.nodes.clients.get_mut(index) {
                node.endpoint
                    .handle_datagram(now, carrier, d.src, &mut d.data);
            }
        }
    }

    fn fire_timeouts(&mut self) {
        let now = self.now;
        let server = &mut self.nodes.server;
        if server.poll_timeout().is_some_and(|t| t <= now) {
            server.handle_timeout(now);
        }
        for client in &mut self.nodes.clients {
            if client.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                client.endpoint.handle_timeout(now);
            }
        }
    }

    fn accept_new(&mut self) {
        let now = self.now;
        while let Some(handle) = self.nodes.server.accept() {
            let Some(remote) = self
                .nodes
                .server
                .connection(handle)
                .map(|c| c.remote_address())
            else {
                continue;
            };
            self.nodes.accepted.push(Accepted {
                handle,
                remote,
                at: now,
            });
        }
    }

    fn poll_workloads(&mut self) {
        for workload in &mut self.workloads {
            if workload.is_done() {
                continue;
            }
            let mut ctx = Ctx {
                now: self.now,
                start: self.start,
                nodes: &mut self.nodes,
                wakes: &mut self.wakes,
            };
            workload.poll(&mut ctx);
        }
    }

    fn drain_transmits(&mut self) {
        self.drain_node(Node::Server);
        for index in 0..self.nodes.clients.len() {
            self.drain_node(Node::Client(index));
        }
    }

    /// Moves every datagram `node` wants to send now into its link.
    fn drain_node(&mut self, node: Node) {
        let mut buf = std::mem::take(&mut self.buf);
        let mut polls = 0u64;
        loop {
            buf.clear();
            let now = self.now;
            let (endpoint, src) = match node {
                Node::Server => (&mut self.nodes.server, self.nodes.server_address),
                Node::Client(i) => {
                    let client = self.nodes.client_node(i);
                    (&mut client.endpoint, client.address)
                }
                Node::External => break,
            };
            let Some(transmit) = endpoint.poll_transmit(now, self.max_datagrams, &mut buf) else {
                break;
            };
            // The server sends from the address of the carrier it chose (clients have one).
            let src = match node {
                Node::Server => self.nodes.server_carrier_address(transmit.carrier),
                Node::Client(i) => self
                    .nodes
                    .client_ref(i)
                    .source_for(transmit.destination, self.nodes.server_address),
                Node::External => src,
            };
            polls += 1;
            assert!(
                polls <= MAX_ITERATIONS_PER_INSTANT,
                "gaptun-sim: {node:?} returned more than {MAX_ITERATIONS_PER_INSTANT} transmits \
                 at t={:?} (protocol livelock)",
                self.elapsed()
            );
            let Some(data) = buf.get(..transmit.size) else {
                panic!(
                    "gaptun-sim: {node:?} returned {transmit:?} but wrote only {} bytes \
                     (protocol bug)",
                    buf.len()
                );
            };
            let segment = transmit
                .segment_size
                .filter(|&s| s > 0)
                .unwrap_or(transmit.size);
            // `chunks` needs a non-zero size; an empty transmit yields one empty datagram.
            if data.is_empty() {
                self.emit(node, src, transmit.destination, Vec::new());
            }
            for chunk in data.chunks(segment.max(1)) {
                self.emit(node, src, transmit.destination, chunk.to_vec());
            }
        }
        self.buf = buf;
    }

    /// An endpoint sent a datagram: record it and put it into the right link.
    fn emit(&mut self, node: Node, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        let path = match node {
            Node::Server => {
                self.stats.server_sent += 1;
                Path::Downlink
            }
            _ => {
                self.stats.clients_sent += 1;
                Path::Uplink
            }
        };
        self.tap(path, Stage::Sent, node, src, dst, &data);
        if let Some(record) = &mut self.capture {
            let at = self.now - self.start;
            record.push(Captured {
                at,
                from: node,
                src,
                dst,
                data: data.clone(),
            });
        }
        let now = self.now;
        self.link_mut(path).send(now, Datagram { src, dst, data });
    }

    #[allow(clippy::too_many_arguments)]
    fn tap(
        &mut self,
        path: Path,
        stage: Stage,
        node: Node,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
    ) {
        if self.taps.is_empty() {
            return;
        }
        let event = TapEvent {
            at: self.now - self.start,
            path,
            stage,
            node,
            src,
            dst,
            data,
        };
        for tap in &mut self.taps {
            tap(&event);
        }
    }
}

/// `base` moved by `skew_ms` milliseconds (saturating at zero).
fn skewed(base: Duration, skew_ms: i64) -> Duration {
    let skew = Duration::from_millis(skew_ms.unsigned_abs());
    if skew_ms >= 0 {
        base.saturating_add(skew)
    } else {
        base.saturating_sub(skew)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_are_distinct_and_not_the_server() {
        let server = default_server_address();
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000 {
            let a = client_address(i);
            assert_ne!(a, server);
            assert!(seen.insert(a), "duplicate address for client {i}");
        }
        assert_eq!(
            client_address(0),
            SocketAddr::from(([10, 0, 0, 1], CLIENT_PORT))
        );
        assert_eq!(
            client_address(253),
            SocketAddr::from(([10, 0, 0, 254], CLIENT_PORT))
        );
    }

    #[test]
    fn derived_seeds_differ_per_stream_and_are_stable() {
        assert_eq!(derive_seed(1, 2), derive_seed(1, 2));
        assert_ne!(derive_seed(1, 2), derive_seed(1, 3));
        assert_ne!(derive_seed(1, 2), derive_seed(2, 2));
    }

    #[test]
    fn skew_moves_unix_time_both_ways() {
        let base = Duration::from_secs(100);
        assert_eq!(skewed(base, 1500), Duration::from_millis(101_500));
        assert_eq!(skewed(base, -1500), Duration::from_millis(98_500));
        assert_eq!(skewed(Duration::ZERO, -5), Duration::ZERO);
    }

    #[test]
    fn config_builders_apply_to_every_endpoint() {
        let cfg = SimConfig::new(1)
            .with_clients(3)
            .with_congestion(CongestionKind::Brutal { rate: 1000 })
            .with_transport(|t| t.max_udp_payload = 1200);
        assert_eq!(cfg.clients.len(), 3);
        for client in &cfg.clients {
            assert_eq!(
                client.config.transport.congestion,
                CongestionKind::Brutal { rate: 1000 }
            );
            assert_eq!(client.config.transport.max_udp_payload, 1200);
            assert!(!client.config.server);
        }
        assert!(cfg.server.server);
        assert_eq!(cfg.server.transport.max_udp_payload, 1200);
    }
}
