//! The figures of one daemon at one moment: what `gaptun ctl stats json` prints and
//! `/api/stats` serves, version [`SCHEMA_VERSION`] of the schema in `docs/stats-api.md`.
//!
//! Counters (`bytes_*`, `packets_*`, `*_total`) only grow while the daemon runs; rates
//! (`*_per_sec`, `*_now`) are measured over the last collection interval (about a second).

use serde::{Deserialize, Serialize};

/// The schema version: raised when a field changes meaning or goes away (new fields may be
/// added within a version).
pub const SCHEMA_VERSION: u32 = 1;

/// Everything one daemon reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `server` or `client`.
    pub role: String,
    /// gaptun's version.
    pub version: String,
    /// The tunnel's UDP address.
    pub local_addr: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// When the figures were taken, in milliseconds since the Unix epoch.
    pub unix_time_ms: u64,
    /// The receive window set for new and live connections.
    pub receive_window: u64,
    /// Handshakes accepted (server).
    pub accepted: u64,
    pub dropped_unauthenticated: u64,
    pub dropped_replayed_handshakes: u64,
    /// Every connection since the start, closed ones included.
    pub totals: Traffic,
    /// Established connections.
    pub connections: Vec<ConnSnapshot>,
    /// Connections still in their handshake, or closed and draining.
    pub not_established: u64,
    /// Server: each user's connections and traffic (empty on a client).
    pub users: Vec<UserRow>,
    /// The exposes (server: the ports clients hold; client: its own).
    pub exposes: Vec<ExposeRow>,
    /// Client: SOCKS5 and the port forwards (empty on a server).
    pub forwards: Vec<ForwardRow>,
    /// Client without `--carrier`: the carriers the server offered in its handshake, e.g.
    /// `udp 4000, tls 8443` (left out when it offered none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_carriers: Option<String>,
    /// Server with several threads (`--threads`): each shard's figures, in shard order. Empty
    /// (and left out) with one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardRow>,
}

/// One shard of a server with several threads: its own socket on the port, driver and
/// connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardRow {
    /// Live connections it owns (established or not).
    pub connections: u64,
    /// Seconds its driver spent working since the start (receiving, timers, sending).
    pub busy_secs: f64,
    /// Datagrams that reached another shard's socket and were handed to this one (a client
    /// whose address changed).
    pub passed_in: u64,
    /// Datagrams handed to it that were dropped because its inbox was full (it was not
    /// taking them fast enough); recovered like any loss.
    pub passed_dropped: u64,
    /// Datagrams longer than the receive buffers, dropped.
    pub truncated: u64,
}

/// Traffic counters and current rates of a set of connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// UDP payload bytes, headers and retransmissions included.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub packets_lost: u64,
    pub packets_retransmitted: u64,
    /// Bytes per second sent and received over the last interval.
    pub send_bytes_per_sec: f64,
    pub recv_bytes_per_sec: f64,
}

/// One established connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnSnapshot {
    /// The connection's handle in this daemon: tells apart two connections from one peer.
    pub id: usize,
    pub remote: String,
    /// Server: the user whose key the connection uses (never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub established: bool,
    /// What carries its packets now (`udp`, `faketcp`): its current path's carrier.
    pub carrier: String,
    /// Its paths when it has several (a client over a port range or several carriers): each
    /// one's carrier, address and state. Empty (and left out) with one path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathRow>,
    /// Client with `--carrier auto`: times its data moved to another carrier.
    #[serde(default)]
    pub carrier_switches: u64,
    /// Seconds since the connection was created.
    pub age_secs: u64,
    /// The cipher suite in use.
    pub cipher: String,
    /// Smoothed and minimum RTT; `null` until a first sample, rather than the configured
    /// initial guess passed off as a measurement.
    pub rtt_ms: Option<f64>,
    pub min_rtt_ms: Option<f64>,
    pub cwnd: u64,
    pub bytes_in_flight: u64,
    pub pacing_rate: u64,
    pub congestion: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub packets_lost: u64,
    pub packets_retransmitted: u64,
    /// Stream payload bytes sent, retransmissions included.
    pub stream_bytes_sent: u64,
    /// Stream payload bytes in packets declared lost.
    pub stream_bytes_lost: u64,
    /// Stream payload bytes sent again after a loss.
    pub stream_bytes_retransmitted: u64,
    /// Authenticated packets dropped as duplicates (a repeated packet number).
    pub dropped_duplicate: u64,
    /// Lost packets as a percentage of packets sent, since the start and over the last
    /// interval.
    pub loss_percent: f64,
    pub loss_percent_now: f64,
    /// Retransmitted packets as a percentage of packets sent, over the last interval.
    pub retransmit_percent_now: f64,
    pub send_bytes_per_sec: f64,
    pub recv_bytes_per_sec: f64,
    pub streams_open: u64,
    pub streams_opened_total: u64,
    pub receive_window: u64,
    /// Largest UDP payload data goes in now (path MTU discovery's confirmed size).
    pub mtu: u64,
    /// Path MTU probes sent and lost (lost probes are not counted in `packets_lost`).
    pub mtu_probes_sent: u64,
    pub mtu_probes_lost: u64,
    /// FEC parity packets sent, and their bytes (the wire overhead due to FEC; both also in
    /// the packet and byte totals).
    pub fec_parity_sent: u64,
    pub fec_parity_bytes: u64,
    /// Lost packets rebuilt from the peer's parity.
    pub fec_packets_rebuilt: u64,
    /// Unreliable datagrams (UDP forwards, SOCKS5 UDP and UDP exposes): sent, received, dropped because a
    /// queue was full or a piece never came, and frames lost on the path (never resent).
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub datagrams_dropped: u64,
    pub datagram_frames_lost: u64,
}

/// One path of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRow {
    /// The carrier's kind: `udp`, `faketcp`.
    pub carrier: String,
    /// The peer's address on it.
    pub remote: String,
    /// `active` (data goes out on it), `standby` (a `--carrier auto` client only probes it)
    /// or `dead` (its packets went unacknowledged: left for a while, retried later).
    pub state: String,
    /// Bytes sent on it (a client's `--carrier all` spreads them by what each path delivers).
    #[serde(default)]
    pub bytes_sent: u64,
}

/// One user of a server: the connections made with the user's keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRow {
    pub name: String,
    /// Established connections now.
    pub connections: u64,
    /// Every connection of the user since the start (server's view: sent to the user).
    pub traffic: Traffic,
    /// Smoothed RTT averaged over the user's connections (`null`: no sample yet).
    pub rtt_ms: Option<f64>,
    /// Streams open now.
    pub streams_open: u64,
}

/// One expose's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExposeRow {
    /// `tcp` or `udp`.
    pub kind: String,
    /// The server port(s), e.g. `8000-8005`.
    pub ports: String,
    /// Server: the user holding the ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Client: what it dials for each visitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    pub visitors_now: u64,
    pub visitors_total: u64,
    /// Bytes from visitors to the service.
    pub bytes_to_service: u64,
    /// Bytes from the service back to visitors.
    pub bytes_to_visitors: u64,
    pub to_service_bytes_per_sec: f64,
    pub to_visitors_bytes_per_sec: f64,
}

/// A client's SOCKS5 server or one of its port forwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardRow {
    /// `socks`, `tcp` or `udp`.
    pub kind: String,
    /// The local address it listens on.
    pub listen: String,
    /// Where the server connects to (`null` for SOCKS5: the client names it each time).
    pub target: Option<String>,
    /// Tunnel streams open now and since the start.
    pub streams_open: u64,
    pub streams_total: u64,
    /// Bytes into the tunnel (towards the target) and out of it, request headers included.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub up_bytes_per_sec: f64,
    pub down_bytes_per_sec: f64,
}

/// One point of the history the dashboard draws (`/api/history`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Milliseconds since the Unix epoch.
    pub t: u64,
    pub send_bytes_per_sec: f64,
    pub recv_bytes_per_sec: f64,
    /// Mean smoothed RTT of the connections with a sample (`null`: none).
    pub rtt_ms: Option<f64>,
    /// Lost packets as a percentage of packets sent in the interval.
    pub loss_percent: f64,
    pub connections: u64,
}

/// `/api/history`: the last minutes, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub schema_version: u32,
    /// Seconds between points.
    pub interval_secs: f64,
    pub points: Vec<HistoryPoint>,
}
