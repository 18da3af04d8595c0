//! One connection's state machine.
//!
//! Driven like quinn-proto's: the caller hands in datagrams ([`Connection::handle_datagram`]) and
//! timer expiries ([`Connection::handle_timeout`]), then polls, in this order,
//! [`Connection::poll_transmit`] until it returns `None`, [`Connection::poll_timeout`] and
//! [`Connection::poll`]. Application commands (streams, close, window) can come at any time.

mod ack;
mod datagram;
mod fec;
#[cfg(feature = "fuzzing")]
mod fuzz_hook;
mod liveness;
mod loss_rate;
mod mtu;
mod multipath;
mod path;
mod recovery;
mod recv;
mod send;
mod timer;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use thiserror::Error;

use crate::config::TransportConfig;
use crate::congestion::{self, Controller, DeliveryRate, Pacer};
use crate::crypto::{HeaderKey, PacketKeys, Psk, ReplayWindow};
use crate::handshake::{ClientHandshake, TransportParams};
use crate::packet::ConnectionId;
use crate::rtt::RttEstimator;
use crate::shared::{CarrierId, PathAddr, Side, StreamId};
use crate::streams::{ReadError, StreamEvent, StreamLimits, Streams, WriteError};

use ack::AckState;
use datagram::Datagrams;
pub use datagram::{DatagramStats, SendDatagramError};
use mtu::MtuDiscovery;
use multipath::PathSet;
pub use multipath::{PathInfo, PathSwitch, SwitchReason};
use path::Path;
use recovery::SentPacket;
pub use send::MAX_TRANSMIT_BYTES;
use timer::{Timer, TimerTable};

/// Something the application should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed; streams can be used.
    Connected,
    /// A stream event.
    Stream(StreamEvent),
    /// Datagrams arrived while none were waiting: [`Connection::recv_datagram`] has some.
    DatagramsReadable,
    /// The connection ended; no more events follow.
    ConnectionLost(ConnectionError),
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectionError {
    /// The server did not answer the handshake in time (wrong address, port or key look the same
    /// from here: the server stays silent).
    #[error("no answer from server within {} s: check address, port and key", .0.as_secs_f64())]
    HandshakeTimeout(Duration),
    /// Nothing was heard from the peer for the idle timeout.
    #[error("peer silent for {0:?}, connection timed out")]
    TimedOut(Duration),
    /// The peer stopped answering while we waited on it (unacknowledged data, or a stream it
    /// was sending on): it is taken as gone (crashed, restarted, or the path is cut).
    #[error("peer stopped answering for {:.1} s while data was outstanding", .0.as_secs_f64())]
    Unresponsive(Duration),
    /// The server answered with a stateless reset: it no longer knows this connection (it
    /// restarted).
    #[error("the server reset the connection (it no longer knows it: restarted?)")]
    Reset,
    /// The peer closed the connection.
    #[error("closed by peer (code {code}): {reason}")]
    ClosedByPeer {
        /// Application or transport code.
        code: u64,
        /// The peer's reason text.
        reason: String,
    },
    /// We closed it.
    #[error("closed locally")]
    LocallyClosed,
    /// The peer broke the protocol.
    #[error("protocol violation by peer: {0}")]
    ProtocolViolation(String),
}

/// Counters and estimates for `stats`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionStats {
    pub rtt: Duration,
    pub min_rtt: Duration,
    /// Whether `rtt` and `min_rtt` come from a measurement; before the first sample they are
    /// only the configured initial guess, which displays should not pass off as a figure.
    pub rtt_sampled: bool,
    /// The negotiated cipher suite's name; empty until the handshake completes.
    pub cipher: &'static str,
    pub cwnd: u64,
    pub bytes_in_flight: u64,
    pub pacing_rate: u64,
    pub congestion: &'static str,
    pub packets_sent: u64,
    /// Packets sent that the peer must acknowledge (everything but ACK-only and CLOSE
    /// packets): only these prove, when nothing comes back, that the peer is silent.
    pub packets_ack_eliciting_sent: u64,
    pub packets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_lost: u64,
    pub bytes_lost: u64,
    pub packets_retransmitted: u64,
    /// Tail packets of interactive traffic sent a second time (see
    /// `TransportConfig::duplicate_tail_packets`); also counted in `packets_sent`.
    pub packets_duplicated: u64,
    /// Stream payload bytes sent again after a loss.
    pub stream_bytes_retransmitted: u64,
    /// Stream payload bytes in packets declared lost.
    pub stream_bytes_lost: u64,
    /// Packets declared lost that the peer acknowledged afterwards: losses that were not real
    /// (their data was sent twice). Counted for the last few thousand losses only.
    pub packets_lost_spurious: u64,
    pub stream_bytes_sent: u64,
    pub dropped_auth: u64,
    pub dropped_replay: u64,
    pub dropped_malformed: u64,
    pub streams_open: u64,
    pub streams_opened_total: u64,
    pub receive_window: u64,
    pub migrations: u64,
    /// Server: times the current path changed to another validated one (the client spreads
    /// its packets over several paths).
    pub path_switches: u64,
    /// Client: paths packets go out on now; server: validated paths (current and alternates).
    pub paths_alive: u64,
    /// Client: times a path was declared dead (no acknowledgements) and left for a while.
    pub paths_abandoned: u64,
    /// Client with a carrier preference: times the data moved to another carrier.
    pub carrier_switches: u64,
    /// Server: new peer addresses probed with a PATH_CHALLENGE (a migration, or a copied
    /// packet sent from elsewhere).
    pub path_probes: u64,
    /// Largest UDP payload data is sent in now: the path MTU confirmed by discovery.
    pub mtu: u64,
    /// Path MTU probes sent, acknowledged and lost (lost probes are not congestion losses and
    /// are not counted in `packets_lost`).
    pub mtu_probes_sent: u64,
    pub mtu_probes_acked: u64,
    pub mtu_probes_lost: u64,
    /// Times large packets stopped getting through and the size fell back to the minimum.
    pub mtu_black_holes: u64,
    /// FEC parity packets sent (also counted in `packets_sent`).
    pub fec_parity_sent: u64,
    /// Datagram bytes of those parity packets: the wire overhead due to FEC (also counted in
    /// `bytes_sent`).
    pub fec_parity_bytes: u64,
    /// FEC parity packets received.
    pub fec_parity_received: u64,
    /// Received datagrams kept in their sealed form for rebuilding from parity: those short
    /// enough to have been protected (see `Connection::fec_keeps_sealed`); a bulk transfer's
    /// full-size datagrams are not.
    pub fec_sealed_kept: u64,
    /// Lost packets rebuilt from parity that passed authentication and were processed.
    pub fec_packets_rebuilt: u64,
    /// Rebuilt packets that failed authentication (a wrong or forged shard); also counted in
    /// `dropped_auth`.
    pub fec_rebuilt_failed: u64,
    /// Unreliable datagrams: sent, received, dropped (queues full, reassembly failed), and
    /// frames lost with their packets.
    pub datagrams: DatagramStats,
}

/// Transport error codes carried in CLOSE frames (see `docs/protocol.md`).
pub mod error_code {
    /// Orderly close, no error.
    pub const NO_ERROR: u64 = 0x0;
    /// The peer broke the protocol.
    pub const PROTOCOL_VIOLATION: u64 = 0x1;
    /// A frame could not be decoded.
    pub const FRAME_ENCODING: u64 = 0x2;
    /// Flow-control credit exceeded.
    pub const FLOW_CONTROL: u64 = 0x3;
    /// Stream limit exceeded.
    pub const STREAM_LIMIT: u64 = 0x4;
    /// A stream's final size changed.
    pub const FINAL_SIZE: u64 = 0x5;
    /// A frame for a stream in the wrong state.
    pub const STREAM_STATE: u64 = 0x6;
}

/// Smallest datagram size we work with: every path on the Internet carries 1200-byte UDP
/// payloads (the QUIC minimum), and a full handshake message must fit.
pub const MIN_MTU: u16 = 1200;

/// Largest UDP payload one IPv4 datagram holds (65 535 less 20 bytes of IP and 8 of UDP header):
/// the highest ceiling there is, reached on loopback (MTU 65 536).
pub const MAX_UDP_PAYLOAD: u16 = 65_507;

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Client: Initial sent, waiting for the Response.
    Handshaking,
    /// Keys are set; data flows.
    Established,
    /// We closed: CLOSE frames are sent (again when the peer keeps sending) until the timer ends.
    Closing,
    /// The peer closed, or we gave up: nothing is sent until the timer ends.
    Draining,
    /// Finished; the endpoint can drop the connection.
    Drained,
}

/// A CLOSE frame to send.
#[derive(Debug, Clone)]
struct CloseReason {
    application: bool,
    code: u64,
    reason: Vec<u8>,
}

/// Client-only state while the handshake is running.
struct ClientStart {
    handshake: Option<ClientHandshake>,
    /// The Initial, kept to be sent again byte for byte: the server recognises the copy and
    /// repeats its Response, while a replay of it from anywhere else stays unanswered.
    initial: Vec<u8>,
    /// Where the Initial must go out in the next `poll_transmit` calls (one path, or with
    /// failover one per carrier at once).
    initial_to: Vec<PathAddr>,
    attempts: u32,
}

impl std::fmt::Debug for ClientStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStart")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// Wall-clock anchor: the sans-IO core never reads a clock, so unix time is derived from the
/// caller's `now` and the unix time it gave at one instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnixClock {
    pub(crate) at: Instant,
    pub(crate) unix: Duration,
}

impl UnixClock {
    pub(crate) fn unix_time(&self, now: Instant) -> Duration {
        self.unix + now.saturating_duration_since(self.at)
    }
}

/// Everything a new connection needs from its endpoint.
#[derive(Debug)]
pub(crate) struct ConnectionInit {
    pub(crate) side: Side,
    pub(crate) config: Arc<TransportConfig>,
    pub(crate) header_key: Arc<HeaderKey>,
    /// Which of the endpoint's keys the connection uses (server: the one the client proved).
    pub(crate) key_index: usize,
    pub(crate) local_cid: ConnectionId,
    /// The path the connection starts on (client: the first of `paths`).
    pub(crate) remote: PathAddr,
    pub(crate) rng: StdRng,
    pub(crate) clock: UnixClock,
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    side: Side,
    state: State,
    config: Arc<TransportConfig>,
    header_key: Arc<HeaderKey>,
    key_index: usize,
    keys: Option<PacketKeys>,
    local_cid: ConnectionId,
    peer_cid: ConnectionId,
    peer_params: Option<TransportParams>,
    client: Option<ClientStart>,
    /// Server: the handshake Response, kept until the client confirms the handshake.
    response: Option<Vec<u8>>,
    /// Server: whether the Response must go out in the next `poll_transmit`.
    response_due: bool,
    /// Server: the client has sent an authenticated packet, so it holds our keys.
    confirmed: bool,
    rng: StdRng,
    clock: UnixClock,
    path: Path,
    /// Server: new peer addresses being validated before the connection moves there or uses
    /// them beside the current path (oldest first, at most `path::MAX_CANDIDATES`).
    candidates: Vec<Path>,
    /// Server: validated paths other than the current one (see `connection::path`).
    alternates: Vec<Path>,
    /// Client: the paths packets are spread over (see `connection::multipath`).
    paths: PathSet,
    /// Path MTU discovery: the datagram size in use and the search for a larger one.
    pmtu: MtuDiscovery,
    /// The datagram size the congestion controller and the pacer were last told of (see
    /// [`Connection::sync_mtu`]).
    cc_mtu: u16,
    /// Forward error correction: groups being protected, parity to send, packets to rebuild.
    fec: fec::FecState,

    // Sending.
    next_pn: u64,
    sent: BTreeMap<u64, SentPacket>,
    /// Packet numbers recently declared lost, to notice when an ACK proves a loss spurious.
    recently_lost: BTreeSet<u64>,
    /// The path's loss rate, for the number of copies of interactive tail packets.
    loss_rate: loss_rate::LossRate,
    in_flight: u64,
    largest_acked: Option<u64>,
    last_ack_eliciting_sent: Option<Instant>,
    rto_count: u32,
    /// Probe packets that may ignore the congestion window and pacer (after an RTO).
    probes: u32,
    ping_pending: bool,
    /// PATH_CHALLENGE data to answer, oldest first: several at once when the server challenges
    /// a fake-TCP client's flows side by side (one slot lost all answers but the last, and the
    /// server gave those flows up).
    path_responses: Vec<[u8; 8]>,
    close_reason: Option<CloseReason>,
    close_pending: bool,

    // Receiving.
    replay: ReplayWindow,
    ack: AckState,
    last_received: Instant,
    /// When the peer last sent us stream data: a stream it was sending on that goes quiet
    /// makes us check that it is still there (see `connection::liveness`).
    last_stream_received: Option<Instant>,
    /// When the first ack-eliciting packet sent since we last heard from the peer went out:
    /// where the peer's silence counts from when we wait on an acknowledgement.
    unanswered_since: Option<Instant>,

    rtt: RttEstimator,
    cc: Box<dyn Controller>,
    delivery: DeliveryRate,
    pacer: Pacer,

    streams: Streams,
    datagrams: Datagrams,
    receive_window: u64,
    timers: TimerTable,
    events: VecDeque<Event>,
    stats: ConnectionStats,
    started: Instant,
}

impl Connection {
    fn new(init: ConnectionInit, now: Instant, peer_cid: ConnectionId) -> Self {
        let config = init.config;
        let pmtu = MtuDiscovery::new(
            config.mtu_discovery,
            config.initial_udp_payload,
            config.max_udp_payload,
        );
        // Congestion control and pacing are sized for the starting datagram size.
        let pmtu_start = pmtu.current();
        let mtu = u64::from(pmtu_start);
        // Until the peer's parameters arrive (client side) nothing can be sent on streams.
        let no_credit = StreamLimits {
            max_data: 0,
            max_stream_data: 0,
            max_streams: 0,
        };
        let streams = Streams::new(
            init.side,
            local_limits(&config),
            no_credit,
            config.send_buffer,
        );
        let mut conn = Self {
            side: init.side,
            state: State::Handshaking,
            header_key: init.header_key,
            key_index: init.key_index,
            keys: None,
            local_cid: init.local_cid,
            peer_cid,
            peer_params: None,
            client: None,
            response: None,
            response_due: false,
            confirmed: false,
            rng: init.rng,
            clock: init.clock,
            path: Path::new(init.remote, init.side == Side::Client),
            candidates: Vec::new(),
            alternates: Vec::new(),
            paths: PathSet::new(&[init.remote]),
            pmtu,
            cc_mtu: pmtu_start,
            fec: fec::FecState::default(),
            next_pn: 0,
            sent: BTreeMap::new(),
            recently_lost: BTreeSet::new(),
            loss_rate: loss_rate::LossRate::default(),
            in_flight: 0,
            largest_acked: None,
            last_ack_eliciting_sent: None,
            rto_count: 0,
            probes: 0,
            ping_pending: false,
            path_responses: Vec::new(),
            close_reason: None,
            close_pending: false,
            replay: ReplayWindow::new(),
            ack: AckState::new(),
            last_received: now,
            last_stream_received: None,
            unanswered_since: None,
            rtt: RttEstimator::new(config.initial_rtt),
            cc: congestion::build(config.congestion, now, mtu),
            delivery: DeliveryRate::new(now),
            pacer: Pacer::new(now, mtu),
            streams,
            datagrams: Datagrams::new(config.datagram_buffer, config.max_datagram_size),
            receive_window: config.receive_window,
            timers: TimerTable::default(),
            events: VecDeque::new(),
            stats: ConnectionStats::default(),
            started: now,
            config,
        };
        conn.stats.congestion = conn.cc.name();
        conn.stats.receive_window = conn.receive_window;
        conn.timers
            .set(Timer::HandshakeTimeout, now + conn.config.handshake_timeout);
        conn
    }

    /// A client connection that has its Initial ready to send.
    pub(crate) fn new_client(mut init: ConnectionInit, now: Instant, psk: &Psk) -> Self {
        init.side = Side::Client;
        let mut conn = Self::new(init, now, ConnectionId([0; 8]));
        let params = conn.local_params();
        let unix = conn.clock.unix_time(now);
        // The Initial must get through before anything is known about the path.
        let max_len = usize::from(conn.pmtu.current());
        let (handshake, initial) =
            ClientHandshake::start(psk, conn.local_cid, &params, unix, max_len, &mut conn.rng);
        conn.client = Some(ClientStart {
            handshake: Some(handshake),
            initial,
            initial_to: vec![conn.path.addr],
            attempts: 0,
        });
        conn.schedule_handshake_retry(now);
        conn
    }

    /// Client: the connection reaches the server over `paths` (the caller checked it is not
    /// empty); the Initial goes out on the first, its repeats on the next ones in turn.
    pub(crate) fn start_paths(&mut self, now: Instant, paths: &[PathAddr]) {
        self.paths.replace(paths);
        self.queue_initial(now);
    }

    /// Client: the Initial goes out (again) on the next path, or one per carrier with failover.
    fn queue_initial(&mut self, now: Instant) {
        let targets = self.paths.initial_targets(now);
        if let Some(&first) = targets.first() {
            self.path.addr = first;
        }
        if let Some(client) = self.client.as_mut() {
            client.initial_to = targets;
        }
    }

    /// Client: use one carrier at a time, in the order of `order` (most preferred first), with
    /// the others as standby paths that are probed and moved to when the one in use goes silent
    /// or much lossier than they are (see `connection::multipath`); an empty list spreads over
    /// every path (the default). Carriers of paths not named rank after those named. Set it
    /// before the first `poll_transmit` so that the Initial goes out on every carrier at once.
    /// Ignored on a server.
    pub fn set_carrier_preference(&mut self, now: Instant, order: &[CarrierId]) {
        if self.side != Side::Client {
            return;
        }
        self.paths.set_preference(order);
        if self.state == State::Handshaking {
            self.queue_initial(now);
        }
    }

    /// Client, failover: the oldest move of the data to another carrier not yet taken (at
    /// most a few are kept), for the log.
    pub fn poll_path_switch(&mut self) -> Option<PathSwitch> {
        self.paths.take_switch()
    }

    /// A server connection for an accepted Initial of `initial_len` bytes.
    pub(crate) fn new_server(
        mut init: ConnectionInit,
        now: Instant,
        established: crate::handshake::Established,
        response: Vec<u8>,
        initial_len: usize,
    ) -> Self {
        init.side = Side::Server;
        let mut conn = Self::new(init, now, established.peer_cid);
        conn.path.bytes_received = initial_len as u64;
        conn.response = Some(response);
        conn.response_due = true;
        conn.install_keys(now, established.keys, established.peer_params);
        conn
    }

    /// Arms the timer for sending the Initial again: every 1 s (or 3 initial RTTs, if longer), so
    /// a slow path still gets its answer in.
    fn schedule_handshake_retry(&mut self, now: Instant) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let base = (self.config.initial_rtt * 3).max(Duration::from_secs(1));
        // No backoff: the handshake timeout bounds the total anyway, an Initial is one datagram
        // a second, and on a lossy path more attempts matter more than politeness.
        let backoff = base;
        client.attempts += 1;
        self.timers.set(Timer::HandshakeRetry, now + backoff);
    }

    /// Server: the client sent its Initial again (our Response was lost): answer again, within
    /// the anti-amplification budget that the new copy adds to.
    pub(crate) fn on_initial_repeated(&mut self, initial_len: usize) {
        if self.confirmed || self.response.is_none() {
            return;
        }
        self.path.bytes_received += initial_len as u64;
        self.response_due = true;
    }

    /// Server: whether the client has not yet proven it holds the keys.
    pub(crate) fn is_unconfirmed_server(&self) -> bool {
        self.side == Side::Server && !self.confirmed
    }

    /// Our transport parameters.
    fn local_params(&self) -> TransportParams {
        let limits = local_limits(&self.config);
        let ciphers = match self.config.cipher {
            Some(c) => vec![c],
            None => {
                let first = crate::crypto::CipherSuite::preferred_for_this_cpu();
                let second = match first {
                    crate::crypto::CipherSuite::Aes256Gcm => {
                        crate::crypto::CipherSuite::ChaCha20Poly1305
                    }
                    crate::crypto::CipherSuite::ChaCha20Poly1305 => {
                        crate::crypto::CipherSuite::Aes256Gcm
                    }
                };
                vec![first, second]
            }
        };
        TransportParams {
            max_data: limits.max_data,
            max_stream_data: limits.max_stream_data,
            max_streams: limits.max_streams,
            idle_timeout_ms: self
                .config
                .idle_timeout
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            max_udp_payload: self.config.max_udp_payload,
            ciphers,
            fec: self.config.fec.accepts_parity(),
            max_datagram_size: self.config.max_datagram_size,
            carrier_offer: None,
        }
    }

    /// Keys and peer parameters are known: the connection is established.
    fn install_keys(&mut self, now: Instant, keys: PacketKeys, peer: TransportParams) {
        let peer_limits = StreamLimits {
            max_data: peer.max_data,
            max_stream_data: peer.max_stream_data,
            max_streams: peer.max_streams,
        };
        self.streams = Streams::new(
            self.side,
            local_limits(&self.config),
            peer_limits,
            self.config.send_buffer,
        );
        self.streams
            .set_receive_windows(self.receive_window, self.stream_window());
        self.keys = Some(keys);
        self.pmtu
            .set_peer_ceiling(peer.max_udp_payload, is_ipv6(self.path.addr.remote));
        self.sync_mtu();
        self.peer_params = Some(peer);
        self.state = State::Established;
        self.timers.stop(Timer::HandshakeRetry);
        if self.side == Side::Client {
            self.timers.stop(Timer::HandshakeTimeout);
            self.client = None;
        }
        self.last_received = now;
        self.reset_idle_timer(now);
        if let Some(interval) = self.config.keepalive_interval {
            self.timers.set(Timer::Keepalive, now + interval);
        }
        self.events.push_back(Event::Connected);
    }

    /// The per-stream window that goes with the connection window: half of it, so that one
    /// stalled stream can never take all the connection's credit.
    fn stream_window(&self) -> u64 {
        self.config
            .stream_receive_window
            .min(self.receive_window / 2)
            .max(1)
    }

    /// Idle timeout in force: the smaller of both sides' (0 means "none" for the peer).
    fn idle_timeout(&self) -> Duration {
        let ours = self.config.idle_timeout;
        match self.peer_params.as_ref().map(|p| p.idle_timeout_ms) {
            Some(ms) if ms > 0 => ours.min(Duration::from_millis(ms)),
            _ => ours,
        }
    }

    fn reset_idle_timer(&mut self, now: Instant) {
        if matches!(self.state, State::Established) {
            self.timers.set(Timer::Idle, now + self.idle_timeout());
        }
    }

    /// Largest datagram we send on this connection now (MTU probes aside): the size path MTU
    /// discovery confirmed, never above either side's `max_udp_payload`.
    fn mtu(&self) -> usize {
        usize::from(self.pmtu.current())
    }

    /// Tells the congestion controller and the pacer when the datagram size changed, so that
    /// what they count in packets (window floors, the initial window, send quanta, the pacer's
    /// burst) is in packets of the size actually sent. Called wherever path MTU discovery may
    /// have changed the size, and before each transmit as a catch-all (one comparison).
    pub(super) fn sync_mtu(&mut self) {
        let mtu = self.pmtu.current();
        if mtu != self.cc_mtu {
            self.cc_mtu = mtu;
            self.cc.on_mtu_change(u64::from(mtu));
            self.pacer.set_mtu(u64::from(mtu));
        }
    }

    /// Ends the connection with `error`, sending a CLOSE frame if we still can.
    fn fail(&mut self, now: Instant, code: u64, error: ConnectionError) {
        if matches!(
            self.state,
            State::Closing | State::Draining | State::Drained
        ) {
            return;
        }
        let reason = error.to_string().into_bytes();
        self.close_reason = Some(CloseReason {
            application: false,
            code,
            reason,
        });
        self.enter_closing(now, error);
    }

    fn enter_closing(&mut self, now: Instant, error: ConnectionError) {
        let can_send = self.keys.is_some();
        self.timers.stop_all();
        self.state = if can_send {
            State::Closing
        } else {
            State::Draining
        };
        self.close_pending = can_send;
        self.timers.set(Timer::Close, now + self.rto() * 3);
        self.events.push_back(Event::ConnectionLost(error));
    }

    /// Stops at once: no CLOSE frame (timeouts, peer closed).
    fn drain(&mut self, now: Instant, error: ConnectionError) {
        if matches!(self.state, State::Draining | State::Drained) {
            return;
        }
        let was_closing = self.state == State::Closing;
        self.timers.stop_all();
        self.state = State::Draining;
        self.close_pending = false;
        self.timers.set(Timer::Close, now + self.rto() * 3);
        if !was_closing {
            self.events.push_back(Event::ConnectionLost(error));
        }
    }

    /// Current retransmission timeout, before backoff.
    fn rto(&self) -> Duration {
        (self.rtt.rto_base() + self.config.max_ack_delay)
            .clamp(self.config.min_rto, self.config.max_rto)
    }

    // ---- Public API ----

    /// Which side we are.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The peer's current address.
    pub fn remote_address(&self) -> std::net::SocketAddr {
        self.path.addr.remote
    }

    /// Replaces the set of our reliable carriers (see `Endpoint::set_carrier_reliable`).
    pub(crate) fn set_reliable_carriers(&mut self, carriers: &[CarrierId]) {
        let mut config = (*self.config).clone();
        config.reliable_carriers = carriers.to_vec();
        self.config = Arc::new(config);
    }

    /// Whether `path` runs over one of our reliable carriers (TLS over TCP): what is sent on it
    /// arrives unless the carrier connection breaks. See `TransportConfig::reliable_carriers`.
    pub(super) fn is_reliable(&self, path: PathAddr) -> bool {
        self.config.reliable_carriers.contains(&path.carrier)
    }

    /// Whether the current path is on a reliable carrier: then TCP's congestion control and
    /// the carrier's backpressure pace sending, not ours.
    pub(super) fn on_reliable_path(&self) -> bool {
        self.is_reliable(self.path.addr)
    }

    /// The path the last packets went out on.
    pub fn path(&self) -> PathAddr {
        self.path.addr
    }

    /// Client: spreads packets over `paths` from now on (the first path's carrier and address
    /// first). Paths that stay keep their health; paths left out get no more packets, and
    /// PATH_CHALLENGEs arriving on them are not answered, so that a server still sending there
    /// moves to a path we use. Moving to a new address makes the server validate it (no new
    /// handshake): this is how a client hops ports. Ignored on a server (it follows the client)
    /// and for an empty list.
    pub fn set_paths(&mut self, paths: &[PathAddr]) {
        if self.side != Side::Client || paths.is_empty() {
            return;
        }
        self.paths.replace(paths);
        if !self.paths.contains(self.path.addr)
            && let Some(&first) = paths.first()
        {
            self.path.addr = first;
        }
    }

    /// Client: each path's health and figures, in the order given. Server: the current path and
    /// the validated alternates, all alive.
    pub fn paths(&self) -> Vec<PathInfo> {
        if self.side == Side::Client {
            return self.paths.info();
        }
        std::iter::once(&self.path)
            .chain(&self.alternates)
            .map(|p| PathInfo {
                addr: p.addr,
                alive: p.validated,
                active: p.addr == self.path.addr,
                packets_sent: 0,
                packets_acked: 0,
                packets_lost: 0,
                deaths: 0,
                bytes_sent: p.bytes_sent,
                bytes_acked: 0,
                share: 0.0,
            })
            .collect()
    }

    /// Whether the handshake completed and the connection is not closing.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the connection is finished and can be dropped.
    pub fn is_drained(&self) -> bool {
        self.state == State::Drained
    }

    /// Whether events are waiting to be polled.
    pub(crate) fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The connection ID we receive on.
    pub(crate) fn local_cid(&self) -> ConnectionId {
        self.local_cid
    }

    /// When [`Connection::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Fires the timers that expired by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in self.timers.take_expired(now) {
            self.on_timer(now, timer);
        }
    }

    fn on_timer(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::Idle => {
                let idle = self.idle_timeout();
                self.drain(now, ConnectionError::TimedOut(idle));
            }
            Timer::Ack => self.ack.immediate = true,
            Timer::Loss => self.detect_lost(now),
            Timer::Rto => self.on_rto(now),
            Timer::Keepalive => self.ping_pending = true,
            Timer::Pacing => {}
            Timer::HandshakeRetry => {
                if self.state == State::Handshaking {
                    // Each attempt on the next path: one that is blocked must not keep the
                    // handshake from the others.
                    self.queue_initial(now);
                    self.schedule_handshake_retry(now);
                }
            }
            Timer::HandshakeTimeout => {
                let limit = self.config.handshake_timeout;
                if self.side == Side::Client && self.state == State::Handshaking {
                    self.drain(now, ConnectionError::HandshakeTimeout(limit));
                } else if self.side == Side::Server && !self.confirmed {
                    // The client never used our keys: a lost Response it retried with a new
                    // Initial, or a replay. Forget it silently.
                    self.drain(now, ConnectionError::HandshakeTimeout(limit));
                }
            }
            Timer::Close => {
                self.state = State::Drained;
                self.timers.stop_all();
            }
            Timer::MtuProbe => self.on_mtu_probe_timeout(now),
            Timer::Liveness => self.on_liveness_timer(now),
            Timer::PathChallenge => self.on_path_challenge_timer(now),
            // The parity goes out in the next `poll_transmit`.
            Timer::FecParity => {}
        }
    }

    /// The next application event.
    pub fn poll(&mut self) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if self.state == State::Drained {
            return None;
        }
        self.streams.poll_event().map(Event::Stream)
    }

    /// Opens a stream; `None` if the peer's limit is reached or the connection is not ready.
    pub fn open_stream(&mut self) -> Option<StreamId> {
        if self.state != State::Established {
            return None;
        }
        self.streams.open()
    }

    /// A stream the peer opened.
    pub fn accept_stream(&mut self) -> Option<StreamId> {
        if self.state != State::Established {
            return None;
        }
        self.streams.accept()
    }

    /// Queues data on a stream; returns how much was taken.
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, WriteError> {
        if self.state != State::Established {
            return Err(WriteError::ClosedStream);
        }
        self.streams.write(id, data)
    }

    /// Queues the front of `data` on a stream without copying it; returns how much was taken
    /// (split off `data`).
    pub fn write_chunk(&mut self, id: StreamId, data: &mut Bytes) -> Result<usize, WriteError> {
        if self.state != State::Established {
            return Err(WriteError::ClosedStream);
        }
        self.streams.write_chunk(id, data)
    }

    /// Ends our half of a stream.
    pub fn finish(&mut self, id: StreamId) -> Result<(), WriteError> {
        if self.state != State::Established {
            return Err(WriteError::ClosedStream);
        }
        self.streams.finish(id)
    }

    /// Reads from a stream: `Ok(Some(n))`, `Ok(None)` at its end.
    pub fn read(&mut self, id: StreamId, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        if matches!(self.state, State::Drained | State::Handshaking) {
            return Err(ReadError::ClosedStream);
        }
        self.streams.read(id, buf)
    }

    /// Reads the next piece of a stream (at most `max` bytes) without copying it:
    /// `Ok(Some(bytes))`, `Ok(None)` at its end.
    pub fn read_chunk(&mut self, id: StreamId, max: usize) -> Result<Option<Bytes>, ReadError> {
        if matches!(self.state, State::Drained | State::Handshaking) {
            return Err(ReadError::ClosedStream);
        }
        self.streams.read_chunk(id, max)
    }

    /// Abandons our sending half of a stream.
    pub fn reset_stream(&mut self, id: StreamId, error_code: u64) -> Result<(), WriteError> {
        if self.state != State::Established {
            return Err(WriteError::ClosedStream);
        }
        self.streams.reset(id, error_code)
    }

    /// Asks the peer to stop sending on a stream.
    pub fn stop_stream(&mut self, id: StreamId, error_code: u64) -> Result<(), ReadError> {
        if self.state != State::Established {
            return Err(ReadError::ClosedStream);
        }
        self.streams.stop(id, error_code)
    }

    /// Client: the carriers the server offers (see [`crate::handshake::CarrierOffer`]), once
    /// the handshake has authenticated it; `None` before, and from a server that offers none.
    pub fn peer_carrier_offer(&self) -> Option<crate::handshake::CarrierOffer> {
        self.peer_params.as_ref()?.carrier_offer
    }

    /// Largest datagram [`Connection::send_datagram`] takes now: `None` until the handshake
    /// completes and when the peer did not offer datagrams.
    pub fn max_datagram_size(&self) -> Option<usize> {
        let peer = self.peer_params.as_ref()?.max_datagram_size;
        (peer > 0).then(|| self.datagrams.max_outgoing(peer))
    }

    /// Queues an unreliable datagram. It is sent within the congestion window, split over
    /// several packets if it does not fit in one, and never sent again if lost. When more than
    /// `TransportConfig::datagram_buffer` bytes wait, the oldest queued datagrams are dropped
    /// (counted in `ConnectionStats::datagrams`).
    pub fn send_datagram(&mut self, data: Vec<u8>) -> Result<(), SendDatagramError> {
        if self.state != State::Established {
            return Err(SendDatagramError::NotConnected);
        }
        let max = self
            .max_datagram_size()
            .ok_or(SendDatagramError::Unsupported)?;
        if data.len() > max {
            return Err(SendDatagramError::TooLarge {
                len: data.len(),
                max,
            });
        }
        self.datagrams.push(data);
        Ok(())
    }

    /// The oldest received datagram not yet read.
    pub fn recv_datagram(&mut self) -> Option<Vec<u8>> {
        self.datagrams.recv()
    }

    /// Bytes the connection holds in datagram queues and reassembly now (each bounded by
    /// `TransportConfig::datagram_buffer`).
    pub fn datagram_buffered_bytes(&self) -> usize {
        self.datagrams.buffered_bytes()
    }

    /// Closes the connection: a CLOSE frame is sent, then the connection drains.
    pub fn close(&mut self, now: Instant, error_code: u64, reason: &[u8]) {
        if matches!(
            self.state,
            State::Closing | State::Draining | State::Drained
        ) {
            return;
        }
        let reason = reason[..reason.len().min(crate::frame::MAX_REASON_LEN)].to_vec();
        self.close_reason = Some(CloseReason {
            application: true,
            code: error_code,
            reason,
        });
        self.enter_closing(now, ConnectionError::LocallyClosed);
    }

    /// Changes the receive window of this live connection (bytes). The per-stream window
    /// follows it (half of it, capped by the configured stream window when that is larger).
    pub fn set_receive_window(&mut self, bytes: u64) {
        self.receive_window = bytes.max(u64::from(self.config.max_udp_payload));
        self.stats.receive_window = self.receive_window;
        let stream = (self.receive_window / 2).max(1);
        self.streams
            .set_receive_windows(self.receive_window, stream);
    }

    /// Which of the endpoint's keys this connection uses: on a server, the key the client
    /// proved it holds (its index in `EndpointConfig::psks`), which identifies the client's
    /// owner for per-key rights such as exposed ports.
    pub fn key_index(&self) -> usize {
        self.key_index
    }

    /// Counters and estimates.
    pub fn stats(&self) -> ConnectionStats {
        let mut s = self.stats.clone();
        s.rtt = self.rtt.get();
        s.min_rtt = self.rtt.min();
        s.rtt_sampled = self.rtt.has_sample();
        s.cipher = self.keys.as_ref().map_or("", |k| k.suite().name());
        s.cwnd = self.cc.window();
        s.bytes_in_flight = self.in_flight;
        s.pacing_rate = self.pacing_rate();
        let st = if self.keys.is_some() {
            Some(self.streams.stats())
        } else {
            None
        };
        if let Some(st) = st {
            s.streams_open = st.open;
            s.streams_opened_total = st.opened_total;
            s.stream_bytes_retransmitted = st.bytes_retransmitted;
        }
        s.carrier_switches = self.paths.switch_count();
        s.paths_alive = match self.side {
            Side::Client => self.paths.alive() as u64,
            Side::Server => 1 + self.alternates.len() as u64,
        };
        s.mtu = u64::from(self.pmtu.current());
        s.mtu_probes_sent = self.pmtu.stats.probes_sent;
        s.mtu_probes_acked = self.pmtu.stats.probes_acked;
        s.mtu_probes_lost = self.pmtu.stats.probes_lost;
        s.mtu_black_holes = self.pmtu.stats.black_holes;
        s.datagrams = self.datagrams.stats;
        s
    }

    /// How long ago the connection was created.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

/// Whether `addr` is a real IPv6 address (an IPv4-mapped one travels as IPv4).
fn is_ipv6(addr: std::net::SocketAddr) -> bool {
    match addr {
        std::net::SocketAddr::V4(_) => false,
        std::net::SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_none(),
    }
}

/// What we grant the peer, from our config.
fn local_limits(config: &TransportConfig) -> StreamLimits {
    StreamLimits {
        max_data: config.receive_window,
        max_stream_data: config
            .stream_receive_window
            .min(config.receive_window / 2)
            .max(1),
        max_streams: config.max_concurrent_streams,
    }
}
