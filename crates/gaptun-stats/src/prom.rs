//! `/metrics`: a [`StatsSnapshot`] in Prometheus' text format.
//!
//! Labels are bounded by configuration, never by traffic: `user` (a server's users), `expose`
//! and `forward` (what the configs name), `shard` (a server's `--threads`). There is no per-connection or per-stream label; a
//! daemon's connections are summed, and the per-user figures are families of their own
//! (`gaptun_user_*`), so that summing a family never counts a byte twice. Counters come from
//! the collector's totals, which keep the counts of closed connections, so they only grow
//! while the daemon runs (an expose's start again when its client registers it anew).

use prometheus::core::Collector;
use prometheus::{CounterVec, Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use thiserror::Error;

use crate::schema::{ConnSnapshot, StatsSnapshot, Traffic};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// The metrics could not be encoded (a bug: every name here is fixed and valid).
#[derive(Debug, Error)]
#[error("cannot encode the metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// A registry made afresh for one scrape, from one snapshot.
struct Scrape {
    reg: Registry,
}

impl Scrape {
    fn add<C: Collector + Clone + 'static>(&self, c: C) -> Result<C, MetricsError> {
        self.reg.register(Box::new(c.clone()))?;
        Ok(c)
    }

    /// A counter family (`name` ends in `_total`).
    fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, MetricsError> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    /// A counter family of seconds or other fractions (`name` ends in `_total`).
    fn float_counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<CounterVec, MetricsError> {
        self.add(CounterVec::new(Opts::new(name, help), labels)?)
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec, MetricsError> {
        self.add(GaugeVec::new(Opts::new(name, help), labels)?)
    }

    /// A counter without labels, set to `value`.
    fn count(&self, name: &str, help: &str, value: u64) -> Result<(), MetricsError> {
        self.counter(name, help, &[])?
            .with_label_values::<&str>(&[])
            .inc_by(value);
        Ok(())
    }

    /// A gauge without labels, set to `value`.
    fn level(&self, name: &str, help: &str, value: f64) -> Result<(), MetricsError> {
        self.gauge(name, help, &[])?
            .with_label_values::<&str>(&[])
            .set(value);
        Ok(())
    }
}

/// Traffic families under a prefix (`gaptun_` for the daemon, `gaptun_user_` per user).
struct TrafficFamilies {
    sent: IntCounterVec,
    received: IntCounterVec,
    sent_packets: IntCounterVec,
    received_packets: IntCounterVec,
    lost: IntCounterVec,
    retransmitted: IntCounterVec,
    send_rate: GaugeVec,
    receive_rate: GaugeVec,
}

impl TrafficFamilies {
    fn new(s: &Scrape, prefix: &str, whose: &str, labels: &[&str]) -> Result<Self, MetricsError> {
        let name = |n: &str| format!("{prefix}{n}");
        Ok(Self {
            sent: s.counter(
                &name("sent_bytes_total"),
                &format!("UDP payload bytes sent to {whose}, headers and retransmissions included"),
                labels,
            )?,
            received: s.counter(
                &name("received_bytes_total"),
                &format!("UDP payload bytes received from {whose}"),
                labels,
            )?,
            sent_packets: s.counter(
                &name("sent_packets_total"),
                &format!("Packets sent to {whose}"),
                labels,
            )?,
            received_packets: s.counter(
                &name("received_packets_total"),
                &format!("Packets received from {whose}"),
                labels,
            )?,
            lost: s.counter(
                &name("lost_packets_total"),
                &format!("Packets to {whose} declared lost"),
                labels,
            )?,
            retransmitted: s.counter(
                &name("retransmitted_packets_total"),
                &format!("Packets to {whose} that carried retransmitted data"),
                labels,
            )?,
            send_rate: s.gauge(
                &name("send_rate_bytes_per_second"),
                &format!("Bytes sent to {whose} per second over the last second"),
                labels,
            )?,
            receive_rate: s.gauge(
                &name("receive_rate_bytes_per_second"),
                &format!("Bytes received from {whose} per second over the last second"),
                labels,
            )?,
        })
    }

    fn set(&self, labels: &[&str], t: &Traffic) {
        self.sent.with_label_values(labels).inc_by(t.bytes_sent);
        self.received
            .with_label_values(labels)
            .inc_by(t.bytes_received);
        self.sent_packets
            .with_label_values(labels)
            .inc_by(t.packets_sent);
        self.received_packets
            .with_label_values(labels)
            .inc_by(t.packets_received);
        self.lost.with_label_values(labels).inc_by(t.packets_lost);
        self.retransmitted
            .with_label_values(labels)
            .inc_by(t.packets_retransmitted);
        self.send_rate
            .with_label_values(labels)
            .set(t.send_bytes_per_sec);
        self.receive_rate
            .with_label_values(labels)
            .set(t.recv_bytes_per_sec);
    }
}

/// Path figures summed or averaged over a set of connections.
struct PathFamilies {
    rtt: GaugeVec,
    min_rtt: GaugeVec,
    cwnd: GaugeVec,
    in_flight: GaugeVec,
    mtu: GaugeVec,
    streams: GaugeVec,
}

impl PathFamilies {
    fn new(s: &Scrape, prefix: &str, labels: &[&str]) -> Result<Self, MetricsError> {
        let name = |n: &str| format!("{prefix}{n}");
        Ok(Self {
            rtt: s.gauge(
                &name("rtt_seconds"),
                "Smoothed round-trip time, mean over the connections with a sample",
                labels,
            )?,
            min_rtt: s.gauge(
                &name("min_rtt_seconds"),
                "Smallest round-trip time seen, lowest over the connections",
                labels,
            )?,
            cwnd: s.gauge(
                &name("congestion_window_bytes"),
                "Congestion window, summed over the connections",
                labels,
            )?,
            in_flight: s.gauge(
                &name("in_flight_bytes"),
                "Bytes sent and not yet acknowledged, summed over the connections",
                labels,
            )?,
            mtu: s.gauge(
                &name("mtu_bytes"),
                "Largest UDP payload sent now, smallest over the connections",
                labels,
            )?,
            streams: s.gauge(&name("streams_open"), "Streams open now", labels)?,
        })
    }

    fn set(&self, labels: &[&str], conns: &[&ConnSnapshot]) {
        if conns.is_empty() {
            return;
        }
        let rtts: Vec<f64> = conns.iter().filter_map(|c| c.rtt_ms).collect();
        if !rtts.is_empty() {
            self.rtt
                .with_label_values(labels)
                .set(rtts.iter().sum::<f64>() / rtts.len() as f64 / 1000.0);
        }
        if let Some(m) = conns.iter().filter_map(|c| c.min_rtt_ms).reduce(f64::min) {
            self.min_rtt.with_label_values(labels).set(m / 1000.0);
        }
        let sum = |f: fn(&ConnSnapshot) -> u64| conns.iter().map(|c| f(c)).sum::<u64>() as f64;
        self.cwnd.with_label_values(labels).set(sum(|c| c.cwnd));
        self.in_flight
            .with_label_values(labels)
            .set(sum(|c| c.bytes_in_flight));
        self.streams
            .with_label_values(labels)
            .set(sum(|c| c.streams_open));
        if let Some(m) = conns.iter().map(|c| c.mtu).min() {
            self.mtu.with_label_values(labels).set(m as f64);
        }
    }
}

/// The snapshot's metrics as Prometheus text.
pub fn render(s: &StatsSnapshot) -> Result<String, MetricsError> {
    let scrape = Scrape {
        reg: Registry::new(),
    };
    let sc = &scrape;
    sc.gauge(
        "gaptun_build_info",
        "The daemon's role and version (always 1)",
        &["role", "version"],
    )?
    .with_label_values(&[s.role.as_str(), s.version.as_str()])
    .set(1.0);
    sc.level(
        "gaptun_uptime_seconds",
        "Time since the daemon started",
        s.uptime_secs as f64,
    )?;
    sc.level(
        "gaptun_connections",
        "Established tunnel connections",
        s.connections.len() as f64,
    )?;
    sc.level(
        "gaptun_connections_pending",
        "Connections in their handshake, or closed and draining",
        s.not_established as f64,
    )?;
    sc.level(
        "gaptun_receive_window_bytes",
        "Receive window of new and live connections",
        s.receive_window as f64,
    )?;
    sc.count(
        "gaptun_handshakes_accepted_total",
        "Handshakes accepted",
        s.accepted,
    )?;
    sc.count(
        "gaptun_unauthenticated_datagrams_dropped_total",
        "Datagrams that matched no connection and were no valid handshake",
        s.dropped_unauthenticated,
    )?;
    sc.count(
        "gaptun_replayed_handshakes_dropped_total",
        "Handshake Initials refused as replays or out of their time window",
        s.dropped_replayed_handshakes,
    )?;

    TrafficFamilies::new(sc, "gaptun_", "the peers", &[])?.set(&[], &s.totals);
    let all: Vec<&ConnSnapshot> = s.connections.iter().collect();
    PathFamilies::new(sc, "gaptun_", &[])?.set(&[], &all);
    if !s.users.is_empty() {
        let traffic = TrafficFamilies::new(sc, "gaptun_user_", "the user", &["user"])?;
        let path = PathFamilies::new(sc, "gaptun_user_", &["user"])?;
        let conns = sc.gauge(
            "gaptun_user_connections",
            "Established connections of each user",
            &["user"],
        )?;
        for u in &s.users {
            let labels = [u.name.as_str()];
            traffic.set(&labels, &u.traffic);
            conns.with_label_values(&labels).set(u.connections as f64);
            let own: Vec<&ConnSnapshot> = s
                .connections
                .iter()
                .filter(|c| c.user.as_deref() == Some(u.name.as_str()))
                .collect();
            path.set(&labels, &own);
        }
    }

    if !s.exposes.is_empty() {
        let labels = ["expose", "user"];
        let visitors = sc.gauge(
            "gaptun_expose_visitors",
            "Visitors an expose serves now",
            &labels,
        )?;
        let visits = sc.counter(
            "gaptun_expose_visits_total",
            "Visitors an expose served",
            &labels,
        )?;
        let to_service = sc.counter(
            "gaptun_expose_to_service_bytes_total",
            "Bytes from visitors to the exposed service",
            &labels,
        )?;
        let to_visitors = sc.counter(
            "gaptun_expose_to_visitors_bytes_total",
            "Bytes from the exposed service to visitors",
            &labels,
        )?;
        for e in &s.exposes {
            let name = format!("{}:{}", e.kind, e.ports);
            let values = [name.as_str(), e.user.as_deref().unwrap_or("")];
            visitors
                .with_label_values(&values)
                .set(e.visitors_now as f64);
            visits.with_label_values(&values).inc_by(e.visitors_total);
            to_service
                .with_label_values(&values)
                .inc_by(e.bytes_to_service);
            to_visitors
                .with_label_values(&values)
                .inc_by(e.bytes_to_visitors);
        }
    }

    if !s.forwards.is_empty() {
        let labels = ["forward"];
        let open = sc.gauge(
            "gaptun_forward_streams",
            "Tunnel streams a forward (or SOCKS5) has open",
            &labels,
        )?;
        let opened = sc.counter(
            "gaptun_forward_streams_opened_total",
            "Tunnel streams a forward (or SOCKS5) opened",
            &labels,
        )?;
        let up = sc.counter(
            "gaptun_forward_up_bytes_total",
            "Bytes a forward sent into the tunnel",
            &labels,
        )?;
        let down = sc.counter(
            "gaptun_forward_down_bytes_total",
            "Bytes a forward received from the tunnel",
            &labels,
        )?;
        for f in &s.forwards {
            let name = format!("{}:{}", f.kind, f.listen);
            let values = [name.as_str()];
            open.with_label_values(&values).set(f.streams_open as f64);
            opened.with_label_values(&values).inc_by(f.streams_total);
            up.with_label_values(&values).inc_by(f.bytes_up);
            down.with_label_values(&values).inc_by(f.bytes_down);
        }
    }

    if !s.shards.is_empty() {
        let labels = ["shard"];
        let conns = sc.gauge(
            "gaptun_shard_connections",
            "Connections a shard (one of the server's threads) owns",
            &labels,
        )?;
        let busy = sc.float_counter(
            "gaptun_shard_busy_seconds_total",
            "Time a shard's driver spent working (receiving, timers, sending)",
            &labels,
        )?;
        let passed = sc.counter(
            "gaptun_shard_passed_datagrams_total",
            "Datagrams that reached another shard's socket and were handed to this shard",
            &labels,
        )?;
        let passed_dropped = sc.counter(
            "gaptun_shard_passed_dropped_datagrams_total",
            "Datagrams handed to this shard that were dropped because its inbox was full",
            &labels,
        )?;
        let truncated = sc.counter(
            "gaptun_shard_truncated_datagrams_total",
            "Datagrams longer than the shard's receive buffers, dropped",
            &labels,
        )?;
        for (i, shard) in s.shards.iter().enumerate() {
            let index = i.to_string();
            let values = [index.as_str()];
            conns
                .with_label_values(&values)
                .set(shard.connections as f64);
            busy.with_label_values(&values).inc_by(shard.busy_secs);
            passed.with_label_values(&values).inc_by(shard.passed_in);
            passed_dropped
                .with_label_values(&values)
                .inc_by(shard.passed_dropped);
            truncated.with_label_values(&values).inc_by(shard.truncated);
        }
    }

    let mut out = Vec::new();
    TextEncoder::new().encode(&scrape.reg.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| MetricsError(prometheus::Error::Msg(e.to_string())))
}
