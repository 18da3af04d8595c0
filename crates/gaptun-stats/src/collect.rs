//! The collector: turns the runtime's [`EndpointSnapshot`]s, the expose counters and the
//! forward counters into [`StatsSnapshot`]s, once a second and on request, and publishes
//! them. HTTP requests and `ctl top` read the published one and never touch the data path.
//!
//! Besides copying figures it does what a single snapshot cannot: rates (the change since
//! the previous collection), totals that keep the counters of closed connections (so that
//! Prometheus counters only grow), per-user sums, and the history the dashboard draws.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gaptun_runtime::{ConnectionInfo, EndpointSnapshot, RtEndpoint};
use tokio::sync::watch;

use crate::forward::ForwardStats;
use crate::schema::{
    ConnSnapshot, ExposeRow, History, HistoryPoint, SCHEMA_VERSION, ShardRow, StatsSnapshot,
    Traffic, UserRow,
};

/// How often the collector publishes (and the dashboard's history has a point).
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(1);

/// Points of history kept: ten minutes at one a second.
pub const HISTORY_POINTS: usize = 600;

/// Shortest span a rate is measured over; a collection on request sooner after the last one
/// repeats the last rates rather than divide a few packets by a few milliseconds.
const MIN_RATE_SPAN: Duration = Duration::from_millis(500);

/// Where the figures come from.
pub struct Sources {
    /// `server` or `client`.
    pub role: &'static str,
    /// gaptun's version, as `--version` prints it.
    pub version: String,
    pub endpoint: RtEndpoint,
    /// The receive window currently configured (`ctl wnd` changes it).
    pub window: Arc<AtomicU64>,
    /// Server: the user of each key, by key index (empty on a client).
    pub key_users: Vec<Arc<str>>,
    /// The exposes' rows (their rates are filled in here).
    pub exposes: Box<dyn Fn() -> Vec<ExposeRow> + Send + Sync>,
    /// Client: SOCKS5 and the forwards.
    pub forwards: Vec<Arc<ForwardStats>>,
    /// Client: the carriers the server offered (see `StatsSnapshot::offered_carriers`).
    pub offered_carriers: Option<String>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("role", &self.role)
            .field("endpoint", &self.endpoint.local_addr())
            .finish_non_exhaustive()
    }
}

/// Collects and publishes a daemon's figures. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Collector {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sources: Sources,
    started: Instant,
    state: Mutex<Book>,
    published: watch::Sender<Arc<StatsSnapshot>>,
}

impl Collector {
    /// A collector with a first snapshot taken at once.
    pub fn new(sources: Sources) -> Self {
        let started = Instant::now();
        let mut book = Book::default();
        let first = book.build(&sources, &sources.endpoint.snapshot(), started, false);
        Self {
            inner: Arc::new(Inner {
                sources,
                started,
                state: Mutex::new(book),
                published: watch::Sender::new(Arc::new(first)),
            }),
        }
    }

    /// The figures published last (at most [`COLLECT_INTERVAL`] old while [`Self::run`]
    /// runs). Reads no lock the data path takes.
    pub fn latest(&self) -> Arc<StatsSnapshot> {
        self.inner.published.borrow().clone()
    }

    /// A receiver that sees every publication.
    pub fn subscribe(&self) -> watch::Receiver<Arc<StatsSnapshot>> {
        self.inner.published.subscribe()
    }

    /// The last minutes, one point per [`COLLECT_INTERVAL`], oldest first.
    pub fn history(&self) -> History {
        let book = self.book();
        History {
            schema_version: SCHEMA_VERSION,
            interval_secs: COLLECT_INTERVAL.as_secs_f64(),
            points: book.history.iter().copied().collect(),
        }
    }

    /// Figures read from the endpoint now, published too: for `ctl stats`, which must show
    /// the effect of what was just done (a window change, a new connection). Takes the
    /// endpoint's lock once, as any handle operation does.
    pub fn refresh(&self) -> Arc<StatsSnapshot> {
        let snap = self.inner.sources.endpoint.refresh_snapshot();
        self.collect(&snap, false)
    }

    /// Collects every [`COLLECT_INTERVAL`] until the task is dropped.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(COLLECT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let snap = self.inner.sources.endpoint.snapshot();
            self.collect(&snap, true);
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn collect(&self, snap: &EndpointSnapshot, tick: bool) -> Arc<StatsSnapshot> {
        let stats = {
            let mut book = self.book();
            Arc::new(book.build(&self.inner.sources, snap, self.inner.started, tick))
        };
        self.inner.published.send_replace(Arc::clone(&stats));
        stats
    }
}

/// The counters that closed connections leave to the totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    bytes_sent: u64,
    bytes_received: u64,
    packets_sent: u64,
    packets_received: u64,
    packets_lost: u64,
    packets_retransmitted: u64,
}

impl Counters {
    fn of(c: &ConnectionInfo) -> Self {
        let s = &c.stats;
        Self {
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            packets_sent: s.packets_sent,
            packets_received: s.packets_received,
            packets_lost: s.packets_lost,
            packets_retransmitted: s.packets_retransmitted,
        }
    }

    fn add(&mut self, o: &Self) {
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.packets_sent += o.packets_sent;
        self.packets_received += o.packets_received;
        self.packets_lost += o.packets_lost;
        self.packets_retransmitted += o.packets_retransmitted;
    }

    /// Whether `newer` cannot be a later reading of the same connection.
    fn went_back(&self, newer: &Self) -> bool {
        newer.bytes_sent < self.bytes_sent
            || newer.bytes_received < self.bytes_received
            || newer.packets_sent < self.packets_sent
            || newer.packets_received < self.packets_received
    }

    fn traffic(&self, rates: [f64; 2]) -> Traffic {
        Traffic {
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            packets_sent: self.packets_sent,
            packets_received: self.packets_received,
            packets_lost: self.packets_lost,
            packets_retransmitted: self.packets_retransmitted,
            send_bytes_per_sec: rates[0],
            recv_bytes_per_sec: rates[1],
        }
    }
}

/// A connection seen in the last collection.
#[derive(Debug, Clone)]
struct Live {
    /// When it was created: a handle the core reuses shows up with another creation time.
    created: Instant,
    /// Tells apart successive connections on one handle in rate keys.
    serial: u64,
    user: Option<Arc<str>>,
    counters: Counters,
    /// The collection that last saw it listed.
    seen_in: u64,
}

/// The collector's memory between collections.
#[derive(Debug, Default)]
struct Book {
    live: HashMap<usize, Live>,
    next_serial: u64,
    /// Counts collections (see `Live::seen_in`).
    collections: u64,
    retired: Counters,
    retired_by_user: HashMap<Arc<str>, Counters>,
    rates: RateBook,
    history: VecDeque<HistoryPoint>,
}

impl Book {
    /// Moves a connection's last counters into the totals.
    fn retire(&mut self, gone: &Live) {
        self.retired.add(&gone.counters);
        if let Some(user) = &gone.user {
            self.retired_by_user
                .entry(Arc::clone(user))
                .or_default()
                .add(&gone.counters);
        }
    }

    /// Brings `live` up to date with `snap`: a connection listed for the first time (or a new
    /// one on a reused handle) gets a serial, and the last counters of one no longer listed go
    /// to the totals.
    fn track(&mut self, snap: &EndpointSnapshot, key_users: &[Arc<str>]) {
        self.collections += 1;
        let collection = self.collections;
        for c in &snap.connections {
            let id = c.handle.0;
            let counters = Counters::of(c);
            let created = c.created;
            let same = self
                .live
                .get(&id)
                .is_some_and(|l| l.created == created && !l.counters.went_back(&counters));
            if !same && let Some(old) = self.live.remove(&id) {
                self.retire(&old);
            }
            let next_serial = &mut self.next_serial;
            let live = self.live.entry(id).or_insert_with(|| {
                *next_serial += 1;
                Live {
                    created,
                    serial: *next_serial,
                    user: key_users.get(c.key_index).cloned(),
                    counters,
                    seen_in: collection,
                }
            });
            live.counters = counters;
            live.seen_in = collection;
        }
        let gone: Vec<usize> = self
            .live
            .iter()
            .filter(|(_, l)| l.seen_in != collection)
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            if let Some(old) = self.live.remove(&id) {
                self.retire(&old);
            }
        }
    }

    fn build(
        &mut self,
        sources: &Sources,
        snap: &EndpointSnapshot,
        started: Instant,
        tick: bool,
    ) -> StatsSnapshot {
        let at = snap.taken;
        self.track(snap, &sources.key_users);
        self.rates.begin();
        let mut connections = Vec::new();
        let mut not_established = 0;
        for c in &snap.connections {
            if !c.established {
                not_established += 1;
                continue;
            }
            let serial = self.live.get(&c.handle.0).map_or(0, |l| l.serial);
            let s = &c.stats;
            let [send, recv, sent_pps, lost_pps, retx_pps] = self.rates.rate(
                RateKey::Connection(c.handle.0, serial),
                at,
                [
                    s.bytes_sent,
                    s.bytes_received,
                    s.packets_sent,
                    s.packets_lost,
                    s.packets_retransmitted,
                ],
            );
            let mut row = conn_row(c, sources.key_users.get(c.key_index), at);
            row.send_bytes_per_sec = send;
            row.recv_bytes_per_sec = recv;
            row.loss_percent_now = percent(lost_pps, sent_pps);
            row.retransmit_percent_now = percent(retx_pps, sent_pps);
            connections.push(row);
        }

        let mut totals = self.retired;
        for live in self.live.values() {
            totals.add(&live.counters);
        }
        let [send, recv, sent_pps, lost_pps] = self.rates.rate(
            RateKey::Total,
            at,
            [
                totals.bytes_sent,
                totals.bytes_received,
                totals.packets_sent,
                totals.packets_lost,
            ],
        );
        let totals_row = totals.traffic([send, recv]);

        let users = self.users(sources, &connections, at);
        let exposes = (sources.exposes)()
            .into_iter()
            .map(|mut e| {
                let who = e.user.as_deref().or(e.local.as_deref()).unwrap_or("");
                let key = RateKey::Expose(format!("{}:{}:{who}", e.kind, e.ports));
                let [to_service, to_visitors] =
                    self.rates
                        .rate(key, at, [e.bytes_to_service, e.bytes_to_visitors]);
                e.to_service_bytes_per_sec = to_service;
                e.to_visitors_bytes_per_sec = to_visitors;
                e
            })
            .collect();
        let forwards = sources
            .forwards
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut row = f.row();
                let [up, down] =
                    self.rates
                        .rate(RateKey::Forward(i), at, [row.bytes_up, row.bytes_down]);
                row.up_bytes_per_sec = up;
                row.down_bytes_per_sec = down;
                row
            })
            .collect();
        self.rates.end();

        let unix_time_ms = unix_ms();
        if tick {
            let sampled: Vec<f64> = connections.iter().filter_map(|c| c.rtt_ms).collect();
            self.history.push_back(HistoryPoint {
                t: unix_time_ms,
                send_bytes_per_sec: send,
                recv_bytes_per_sec: recv,
                rtt_ms: mean(&sampled),
                loss_percent: percent(lost_pps, sent_pps),
                connections: connections.len() as u64,
            });
            while self.history.len() > HISTORY_POINTS {
                self.history.pop_front();
            }
        }
        let ep = &snap.endpoint;
        StatsSnapshot {
            schema_version: SCHEMA_VERSION,
            role: sources.role.to_owned(),
            version: sources.version.clone(),
            local_addr: sources.endpoint.local_addr().to_string(),
            uptime_secs: at.saturating_duration_since(started).as_secs(),
            unix_time_ms,
            receive_window: sources.window.load(Ordering::Relaxed),
            accepted: ep.accepted,
            dropped_unauthenticated: ep.dropped_unauthenticated,
            dropped_replayed_handshakes: ep.dropped_replayed_handshakes,
            totals: totals_row,
            connections,
            not_established,
            users,
            exposes,
            forwards,
            offered_carriers: sources.offered_carriers.clone(),
            shards: shard_rows(&snap.shards),
        }
    }

    /// Each user's row, in the order of the server's keys (one row per user).
    fn users(&mut self, sources: &Sources, conns: &[ConnSnapshot], at: Instant) -> Vec<UserRow> {
        let mut names: Vec<&Arc<str>> = Vec::new();
        for name in &sources.key_users {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
            .into_iter()
            .map(|name| {
                let mut counters = self.retired_by_user.get(name).copied().unwrap_or_default();
                for live in self.live.values() {
                    if live.user.as_ref() == Some(name) {
                        counters.add(&live.counters);
                    }
                }
                let rates = self.rates.rate(
                    RateKey::User(Arc::clone(name)),
                    at,
                    [counters.bytes_sent, counters.bytes_received],
                );
                let own: Vec<&ConnSnapshot> = conns
                    .iter()
                    .filter(|c| c.user.as_deref() == Some(&**name))
                    .collect();
                let rtts: Vec<f64> = own.iter().filter_map(|c| c.rtt_ms).collect();
                UserRow {
                    name: name.to_string(),
                    connections: own.len() as u64,
                    traffic: counters.traffic(rates),
                    rtt_ms: mean(&rtts),
                    streams_open: own.iter().map(|c| c.streams_open).sum(),
                }
            })
            .collect()
    }
}

/// The row of one established connection as of `at` (rates left at zero).
fn conn_row(info: &ConnectionInfo, user: Option<&Arc<str>>, at: Instant) -> ConnSnapshot {
    let s = &info.stats;
    let ms = |d: Duration| s.rtt_sampled.then_some(d.as_secs_f64() * 1000.0);
    ConnSnapshot {
        id: info.handle.0,
        remote: info.remote.to_string(),
        user: user.map(|u| u.to_string()),
        established: info.established,
        carrier: info.carrier.to_owned(),
        paths: if info.paths.len() > 1 {
            info.paths
                .iter()
                .map(|p| crate::schema::PathRow {
                    carrier: p.carrier.to_owned(),
                    remote: p.remote.to_string(),
                    state: if !p.alive {
                        "dead"
                    } else if p.active {
                        "active"
                    } else {
                        "standby"
                    }
                    .to_owned(),
                    bytes_sent: p.bytes_sent,
                })
                .collect()
        } else {
            Vec::new()
        },
        carrier_switches: s.carrier_switches,
        age_secs: info.age(at).as_secs(),
        cipher: s.cipher.to_owned(),
        rtt_ms: ms(s.rtt),
        min_rtt_ms: ms(s.min_rtt),
        cwnd: s.cwnd,
        bytes_in_flight: s.bytes_in_flight,
        pacing_rate: s.pacing_rate,
        congestion: s.congestion.to_owned(),
        bytes_sent: s.bytes_sent,
        bytes_received: s.bytes_received,
        packets_sent: s.packets_sent,
        packets_received: s.packets_received,
        packets_lost: s.packets_lost,
        packets_retransmitted: s.packets_retransmitted,
        stream_bytes_sent: s.stream_bytes_sent,
        stream_bytes_lost: s.stream_bytes_lost,
        stream_bytes_retransmitted: s.stream_bytes_retransmitted,
        dropped_duplicate: s.dropped_replay,
        loss_percent: percent(s.packets_lost as f64, s.packets_sent as f64),
        loss_percent_now: 0.0,
        retransmit_percent_now: 0.0,
        send_bytes_per_sec: 0.0,
        recv_bytes_per_sec: 0.0,
        streams_open: s.streams_open,
        streams_opened_total: s.streams_opened_total,
        receive_window: s.receive_window,
        mtu: s.mtu,
        mtu_probes_sent: s.mtu_probes_sent,
        mtu_probes_lost: s.mtu_probes_lost,
        fec_parity_sent: s.fec_parity_sent,
        fec_parity_bytes: s.fec_parity_bytes,
        fec_packets_rebuilt: s.fec_packets_rebuilt,
        datagrams_sent: s.datagrams.sent,
        datagrams_received: s.datagrams.received,
        datagrams_dropped: s.datagrams.dropped_send + s.datagrams.dropped_recv,
        datagram_frames_lost: s.datagrams.frames_lost,
    }
}

/// Each shard's row, when there are several (one shard's figures are the daemon's own).
fn shard_rows(shards: &[gaptun_runtime::ShardFigures]) -> Vec<ShardRow> {
    if shards.len() < 2 {
        return Vec::new();
    }
    shards
        .iter()
        .map(|s| ShardRow {
            connections: s.connections as u64,
            busy_secs: s.busy.as_secs_f64(),
            passed_in: s.passed_in,
            passed_dropped: s.dropped_passing,
            truncated: s.truncated,
        })
        .collect()
}

/// `part` as a percentage of `whole` (0 when there is no whole).
fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part * 100.0 / whole
    } else {
        0.0
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a rate is kept for. A connection's key is its handle and serial, not a formatted name:
/// the collector reads every connection once a second, and a string per connection per
/// collection (made, hashed, copied into the set of keys read) was most of its cost at 10 000
/// idle connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RateKey {
    /// A connection: its handle and the serial that tells successive connections on one
    /// handle apart.
    Connection(usize, u64),
    /// The daemon's totals.
    Total,
    /// A user's sums.
    User(Arc<str>),
    /// An expose: its kind, ports and owner.
    Expose(String),
    /// A forward, by position.
    Forward(usize),
}

/// Most counters one key has rates for.
const MAX_RATES: usize = 5;

/// Rates of counters: the change since the previous reading over the time between.
#[derive(Debug, Default)]
struct RateBook {
    entries: HashMap<RateKey, RateEntry>,
    /// Counts collections; an entry not read in the current one is forgotten at its end.
    generation: u64,
}

#[derive(Debug)]
struct RateEntry {
    at: Instant,
    values: [u64; MAX_RATES],
    rates: [f64; MAX_RATES],
    /// The collection that read it last.
    read_in: u64,
}

impl RateBook {
    fn begin(&mut self) {
        self.generation += 1;
    }

    /// Forgets the counters not read in this collection (closed connections, gone exposes).
    fn end(&mut self) {
        let generation = self.generation;
        self.entries.retain(|_, e| e.read_in == generation);
    }

    /// Per-second rates of `values` (at most [`MAX_RATES`] of them) since the last reading
    /// under `key`. The first reading, and one after a counter went back (a new connection on
    /// a reused key), gives zeros; one less than [`MIN_RATE_SPAN`] after the last repeats the
    /// last rates.
    fn rate<const N: usize>(&mut self, key: RateKey, at: Instant, values: [u64; N]) -> [f64; N] {
        const { assert!(N <= MAX_RATES, "more counters than a rate entry holds") };
        let mut now = [0u64; MAX_RATES];
        for (slot, v) in now.iter_mut().zip(values) {
            *slot = v;
        }
        let generation = self.generation;
        let entry = self.entries.entry(key).or_insert_with(|| RateEntry {
            at,
            values: now,
            rates: [0.0; MAX_RATES],
            read_in: generation,
        });
        entry.read_in = generation;
        let span = at.saturating_duration_since(entry.at);
        let went_back = entry.values.iter().zip(now).any(|(&old, new)| new < old);
        if went_back {
            entry.rates = [0.0; MAX_RATES];
            entry.at = at;
            entry.values = now;
        } else if span >= MIN_RATE_SPAN {
            let secs = span.as_secs_f64();
            for ((rate, old), new) in entry.rates.iter_mut().zip(&entry.values).zip(now) {
                *rate = (new - old) as f64 / secs;
            }
            entry.at = at;
            entry.values = now;
        }
        let mut out = [0.0; N];
        for (o, r) in out.iter_mut().zip(&entry.rates) {
            *o = *r;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_over_the_span_and_after_a_reset() {
        let mut book = RateBook::default();
        let t0 = Instant::now();
        assert_eq!(book.rate(RateKey::Forward(0), t0, [100, 0]), [0.0, 0.0]);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(book.rate(RateKey::Forward(0), t1, [300, 50]), [100.0, 25.0]);
        // Too soon after: the last rates again.
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!(book.rate(RateKey::Forward(0), t2, [400, 50]), [100.0, 25.0]);
        // The counter went back: a new connection, no rate yet.
        let t3 = t1 + Duration::from_secs(1);
        assert_eq!(book.rate(RateKey::Forward(0), t3, [10, 0]), [0.0, 0.0]);
        let t4 = t3 + Duration::from_secs(1);
        assert_eq!(book.rate(RateKey::Forward(0), t4, [1010, 0]), [1000.0, 0.0]);
        book.begin();
        book.end();
        assert!(book.entries.is_empty(), "entries not read are forgotten");
    }

    #[test]
    fn percentages_and_means() {
        assert_eq!(percent(1.0, 0.0), 0.0);
        assert_eq!(percent(5.0, 200.0), 2.5);
        assert_eq!(mean(&[]), None);
        assert_eq!(mean(&[10.0, 20.0]), Some(15.0));
    }

    #[test]
    fn counters_going_back_mean_another_connection() {
        let a = Counters {
            bytes_sent: 10,
            packets_sent: 2,
            ..Counters::default()
        };
        let mut b = a;
        b.bytes_sent = 20;
        assert!(!a.went_back(&b));
        assert!(b.went_back(&a));
    }
}
