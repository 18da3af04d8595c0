//! Tunable parameters of an endpoint and its connections.

use std::path::PathBuf;
use std::time::Duration;

use crate::congestion::CongestionKind;
use crate::crypto::{CipherSuite, Psk};
use crate::fec::FecMode;
use crate::shared::CarrierId;

/// Per-connection transport parameters. The defaults suit a 100 Mbit/s, 100 ms path with loss.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Largest UDP payload we send (and accept): the ceiling path MTU discovery may probe up
    /// to. The default, 1472, fills a 1500-byte Ethernet frame over IPv4 (IPv6 peers get 20
    /// bytes less). Every datagram stays within it, and within the peer's.
    pub max_udp_payload: u16,
    /// UDP payload size a connection starts with and falls back to on a new path: one that
    /// practically every path carries, so nothing is lost while discovery looks for more.
    /// Capped by `max_udp_payload`; raised to `MIN_MTU` (1200).
    pub initial_udp_payload: u16,
    /// Probe for datagrams larger than `initial_udp_payload`, up to `max_udp_payload`
    /// (DPLPMTUD, see `docs/protocol.md`). Off: every datagram stays within the initial size.
    pub mtu_discovery: bool,
    /// Take the ceiling from the route instead of `max_udp_payload`: on a path over a carrier
    /// the runtime registered a route query for (plain UDP and fake TCP, see
    /// [`Endpoint::set_route_mtu`](crate::Endpoint::set_route_mtu)), the connection's ceiling
    /// is the largest UDP payload the kernel's route to the peer carries (65 507 on loopback,
    /// 1472 on an Ethernet path), announced to the peer and confirmed by discovery as any
    /// ceiling is. Decided per connection, when it starts. Where the query fails, or on other
    /// carriers, `max_udp_payload` stays the ceiling. Off: `max_udp_payload` always is (an
    /// explicit `--mtu`).
    pub mtu_from_route: bool,
    /// Connection-level receive window in bytes (what the peer may have in flight to us).
    pub receive_window: u64,
    /// Per-stream receive window in bytes.
    pub stream_receive_window: u64,
    /// Bytes we buffer for sending, across all streams, before writes block.
    pub send_buffer: u64,
    /// Streams the peer may have open at once.
    pub max_concurrent_streams: u64,
    /// Congestion controller.
    pub congestion: CongestionKind,
    /// A packet is lost once this many later packets were acknowledged (KCP's `resend`).
    pub reorder_threshold: u64,
    /// Multiplier applied to the retransmission timeout after each timeout in a row: 1.0 keeps
    /// it constant (KCP's fast modes), 2.0 is TCP's doubling.
    pub rto_backoff: f64,
    /// Lower bound of the retransmission timeout.
    pub min_rto: Duration,
    /// Upper bound of the retransmission timeout.
    pub max_rto: Duration,
    /// RTT assumed before the first measurement.
    pub initial_rtt: Duration,
    /// Longest we delay an ACK.
    pub max_ack_delay: Duration,
    /// Acknowledge at once after this many ack-eliciting packets.
    pub ack_eliciting_threshold: u64,
    /// Send twice a packet with stream data that ends a short burst on a nearly idle connection
    /// (a request or a response), so that one loss does not cost a retransmission timeout;
    /// three times on a path losing 2 % or more. Bulk transfers are not affected.
    ///
    /// Used only when FEC is off on either side: otherwise parity protects these tails.
    pub duplicate_tail_packets: bool,
    /// Forward error correction (see `crate::fec`): `Auto` protects the tails of interactive
    /// exchanges with parity sized by the measured loss, `Fixed` every packet, `Off` none (and
    /// refuses the peer's parity). Parity is sent only to a peer that accepts it.
    pub fec: FecMode,
    /// Send a PING when nothing was sent for this long (`None`: never).
    pub keepalive_interval: Option<Duration>,
    /// Close the connection after this long without hearing from the peer.
    pub idle_timeout: Duration,
    /// While we wait on the peer (data unacknowledged, or a stream it was sending on went
    /// quiet), it must answer within this long, or four retransmission timeouts if longer;
    /// otherwise the connection is declared dead long before the idle timeout, so that streams
    /// fail fast and the client reconnects (see `connection::liveness`).
    pub dead_peer_timeout: Duration,
    /// Give up connecting after this long.
    pub handshake_timeout: Duration,
    /// Cipher to insist on, or `None` to choose by CPU support.
    pub cipher: Option<CipherSuite>,
    /// Largest unreliable datagram we accept from the peer (bytes of payload, after
    /// reassembly); announced in the transport parameters. 0 turns datagrams off: the peer
    /// never sends one, and we cannot send either unless the peer offered them.
    pub max_datagram_size: u32,
    /// Bytes of datagrams that may wait to be sent (congestion window full, slow path); beyond
    /// this the oldest are dropped. Also the bound on received datagrams the application has
    /// not read yet, and on partly reassembled ones.
    pub datagram_buffer: usize,
    /// Our carriers that deliver every datagram, in some order (TLS over TCP). A packet sent on
    /// a path over one of them is never declared lost by reordering or time (a retransmission
    /// timeout declares it lost only when older than 1 s: it went down with a broken carrier
    /// connection); while the current path is on one, no congestion window, pacing, FEC parity
    /// or duplicated tail packets apply (TCP's controller decides and the carrier's
    /// backpressure paces sending). A connection that moves to a path on another carrier gets
    /// normal recovery back at once. Set by the runtime from its carriers, not by users; see
    /// `docs/protocol.md`, "Reliable carriers".
    pub reliable_carriers: Vec<CarrierId>,
    /// Server: the carriers announced to clients in the handshake (see
    /// [`CarrierOffer`](crate::handshake::CarrierOffer)); `None`: none announced. Set with
    /// [`Endpoint::set_carrier_offer`](crate::Endpoint::set_carrier_offer) once the ports are
    /// known; a client ignores it.
    pub carrier_offer: Option<crate::handshake::CarrierOffer>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_udp_payload: 1472,
            initial_udp_payload: 1350,
            mtu_discovery: true,
            mtu_from_route: false,
            receive_window: 32 * 1024 * 1024,
            stream_receive_window: 16 * 1024 * 1024,
            send_buffer: 32 * 1024 * 1024,
            max_concurrent_streams: 16_384,
            congestion: CongestionKind::Bbr,
            reorder_threshold: 3,
            rto_backoff: 1.5,
            min_rto: Duration::from_millis(30),
            max_rto: Duration::from_secs(10),
            initial_rtt: Duration::from_millis(300),
            max_ack_delay: Duration::from_millis(10),
            ack_eliciting_threshold: 16,
            duplicate_tail_packets: true,
            fec: FecMode::Auto,
            keepalive_interval: Some(Duration::from_secs(10)),
            idle_timeout: Duration::from_secs(40),
            dead_peer_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
            cipher: None,
            max_datagram_size: 65_535,
            datagram_buffer: 256 * 1024,
            reliable_carriers: Vec::new(),
            carrier_offer: None,
        }
    }
}

/// A token bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRate {
    /// Tokens the bucket holds when full (the largest burst).
    pub burst: u32,
    /// Tokens added per second.
    pub per_second: u32,
}

/// What a server lets strangers and key holders make it do (see `docs/protocol.md`, "Limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointLimits {
    /// Handshake attempts per source (IPv4 address or IPv6 /64) that get past the cheap header
    /// check: what one address can make the server spend on Noise and X25519.
    pub handshakes_per_source: TokenRate,
    /// Handshake attempts across all sources.
    pub handshakes: TokenRate,
    /// Sources whose budget is tracked at once (memory bound of the per-source buckets).
    pub max_sources: usize,
    /// Connections in total.
    pub max_connections: usize,
    /// Connections per key.
    pub max_connections_per_key: usize,
    /// Server connections whose client has not confirmed the handshake yet.
    pub max_half_open: usize,
}

impl Default for EndpointLimits {
    /// A handshake costs the server about 0.1 ms of CPU; 512 a second is a few percent of a
    /// core, and far more than real clients need (each opens a handful of connections).
    fn default() -> Self {
        Self {
            handshakes_per_source: TokenRate {
                burst: 64,
                per_second: 16,
            },
            handshakes: TokenRate {
                burst: 1024,
                per_second: 512,
            },
            max_sources: 4096,
            max_connections: 4096,
            max_connections_per_key: 1024,
            max_half_open: 256,
        }
    }
}

#[cfg(any(test, feature = "test-util"))]
impl EndpointLimits {
    /// Limits under which one client address may open `connections` connections at once,
    /// every handshake admitted: for tests and benchmarks that open thousands from a single
    /// endpoint (the default budget would turn most of them away as a handshake flood).
    pub fn for_one_source(connections: usize) -> Self {
        let lots = TokenRate {
            burst: u32::MAX,
            per_second: u32::MAX,
        };
        Self {
            handshakes_per_source: lots,
            handshakes: lots,
            max_sources: 16,
            max_connections: connections,
            max_connections_per_key: connections,
            max_half_open: connections,
        }
    }
}

/// Settings of an endpoint (one UDP socket, any number of connections).
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Keys accepted from clients (server) or used to connect (client: the first one).
    pub psks: Vec<Psk>,
    /// Parameters for every connection of this endpoint.
    pub transport: TransportConfig,
    /// Whether to accept incoming connections.
    pub server: bool,
    /// Accepted clock difference between client and server for handshake timestamps.
    pub handshake_window: Duration,
    /// Server: handshake budget and connection caps.
    pub limits: EndpointLimits,
    /// Server: where the runtime keeps the fingerprints of accepted handshakes, so that an
    /// Initial recorded before a restart gets no answer after it. `None`: in memory only, and
    /// after a start every Initial stamped before it is refused (see `docs/protocol.md`,
    /// "Replay cache"). Not read by this crate: the runtime opens it.
    pub state_file: Option<PathBuf>,
}

impl EndpointConfig {
    /// A client endpoint using `psk`.
    pub fn client(psk: Psk) -> Self {
        Self {
            psks: vec![psk],
            transport: TransportConfig::default(),
            server: false,
            handshake_window: Duration::from_secs(120),
            limits: EndpointLimits::default(),
            state_file: None,
        }
    }

    /// A server endpoint accepting any of `psks`.
    pub fn server(psks: Vec<Psk>) -> Self {
        Self {
            psks,
            server: true,
            ..Self::client(Psk::from_bytes([0; 32]))
        }
    }
}
