//! Bounds on the work strangers can make a server do and on what key holders can make it hold.
//!
//! - Handshake budget: an Initial that passes the cheap header check under some key costs Noise
//!   work (and, if authentic, two X25519 operations for the Response). That work is paid from a
//!   token bucket of the source (IPv4 address, or IPv6 /64) and from a global bucket; over
//!   either, the datagram is dropped silently. Junk that fails the header check spends nothing.
//! - Caps: connections in total, per key, and half-open (server connections whose client has not
//!   confirmed the handshake yet). An authentic Initial over a cap is dropped silently.
//!
//! Every drop is counted, and collected as a [`LimitHit`] for the caller's rate-limited log.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use crate::config::{EndpointLimits, TokenRate};
use crate::endpoint::ConnectionHandle;

/// Which bound dropped an Initial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitKind {
    /// The source's or the global handshake budget was spent.
    HandshakeBudget,
    /// `max_connections` connections exist.
    TotalConnections,
    /// The key already has `max_connections_per_key` connections.
    KeyConnections,
    /// `max_half_open` handshakes await the client's confirmation.
    HalfOpen,
}

/// Initials dropped by one bound since the last report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitHit {
    /// The bound.
    pub kind: LimitKind,
    /// The key the Initial authenticated under (`None` for the handshake budget, which is
    /// charged before authentication).
    pub key_index: Option<usize>,
    /// How many Initials it dropped.
    pub count: u64,
}

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(rate: TokenRate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            last: now,
        }
    }

    fn refill(&mut self, rate: TokenRate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * f64::from(rate.per_second)).min(f64::from(rate.burst));
        self.last = now;
    }

    fn is_full(&self, rate: TokenRate, now: Instant) -> bool {
        let mut copy = *self;
        copy.refill(rate, now);
        copy.tokens >= f64::from(rate.burst)
    }
}

/// The part of a source address a budget is kept for: IPv4 address, or the IPv6 /64 (one host
/// usually holds a whole /64, so per-address buckets would be free to multiply).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The server's budget, caps and connection-per-key accounting.
#[derive(Debug)]
pub(crate) struct Limits {
    config: EndpointLimits,
    total: Option<Bucket>,
    sources: HashMap<IpAddr, Bucket>,
    key_of: HashMap<ConnectionHandle, usize>,
    per_key: HashMap<usize, usize>,
    hits: BTreeMap<(LimitKind, Option<usize>), u64>,
}

impl Limits {
    pub(crate) fn new(config: EndpointLimits) -> Self {
        Self {
            config,
            total: None,
            sources: HashMap::new(),
            key_of: HashMap::new(),
            per_key: HashMap::new(),
            hits: BTreeMap::new(),
        }
    }

    /// Takes one handshake's worth of tokens from `ip`'s bucket and the global one; false (and
    /// nothing taken) if either is empty.
    pub(crate) fn spend_handshake(&mut self, now: Instant, ip: IpAddr) -> bool {
        let (per_source, global) = (self.config.handshakes_per_source, self.config.handshakes);
        let key = source_key(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= self.config.max_sources {
            // Full buckets hold nothing a fresh one would not; if every tracked source is still
            // paying off a burst, forget them all: the global bucket still bounds the work.
            self.sources.retain(|_, b| !b.is_full(per_source, now));
            if self.sources.len() >= self.config.max_sources {
                self.sources.clear();
            }
        }
        let total = self.total.get_or_insert_with(|| Bucket::full(global, now));
        total.refill(global, now);
        let source = self
            .sources
            .entry(key)
            .or_insert_with(|| Bucket::full(per_source, now));
        source.refill(per_source, now);
        if total.tokens >= 1.0 && source.tokens >= 1.0 {
            total.tokens -= 1.0;
            source.tokens -= 1.0;
            true
        } else {
            self.note(LimitKind::HandshakeBudget, None);
            false
        }
    }

    /// Whether a new connection under `key` fits the caps, given the endpoint's `connections`
    /// and `half_open` counts (computed only when asked: this runs for authentic Initials only).
    pub(crate) fn admit(
        &mut self,
        key: usize,
        connections: usize,
        half_open: impl FnOnce() -> usize,
    ) -> bool {
        let kind = if connections >= self.config.max_connections {
            LimitKind::TotalConnections
        } else if self.per_key.get(&key).copied().unwrap_or(0)
            >= self.config.max_connections_per_key
        {
            LimitKind::KeyConnections
        } else if half_open() >= self.config.max_half_open {
            LimitKind::HalfOpen
        } else {
            return true;
        };
        self.note(kind, Some(key));
        false
    }

    fn note(&mut self, kind: LimitKind, key_index: Option<usize>) {
        *self.hits.entry((kind, key_index)).or_insert(0) += 1;
    }

    /// A server connection under `key` was created.
    pub(crate) fn on_accepted(&mut self, handle: ConnectionHandle, key: usize) {
        self.key_of.insert(handle, key);
        *self.per_key.entry(key).or_insert(0) += 1;
    }

    /// A connection was removed (any side; unknown handles are ignored).
    pub(crate) fn on_removed(&mut self, handle: ConnectionHandle) {
        if let Some(key) = self.key_of.remove(&handle)
            && let Some(n) = self.per_key.get_mut(&key)
        {
            *n = n.saturating_sub(1);
        }
    }

    /// Connections under `key`.
    #[cfg(test)]
    fn connections_of(&self, key: usize) -> usize {
        self.per_key.get(&key).copied().unwrap_or(0)
    }

    /// The drops since the last call, one entry per bound and key.
    pub(crate) fn take_hits(&mut self) -> Vec<LimitHit> {
        std::mem::take(&mut self.hits)
            .into_iter()
            .map(|((kind, key_index), count)| LimitHit {
                kind,
                key_index,
                count,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits() -> Limits {
        Limits::new(EndpointLimits {
            handshakes_per_source: TokenRate {
                burst: 3,
                per_second: 1,
            },
            handshakes: TokenRate {
                burst: 5,
                per_second: 10,
            },
            max_sources: 4,
            max_connections: 10,
            max_connections_per_key: 2,
            max_half_open: 3,
        })
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, n))
    }

    #[test]
    fn per_source_and_global_buckets() {
        let mut l = limits();
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.spend_handshake(t0, ip(1))));
        assert!(!l.spend_handshake(t0, ip(1)), "source burst spent");
        assert!(l.spend_handshake(t0, ip(2)));
        assert!(l.spend_handshake(t0, ip(2)));
        assert!(!l.spend_handshake(t0, ip(3)), "global burst of 5 spent");
        // One second refills one source token and ten global ones.
        let t1 = t0 + Duration::from_secs(1);
        assert!(l.spend_handshake(t1, ip(1)));
        assert!(!l.spend_handshake(t1, ip(1)));
        let hits = l.take_hits();
        assert_eq!(
            hits,
            vec![LimitHit {
                kind: LimitKind::HandshakeBudget,
                key_index: None,
                count: 3
            }]
        );
        assert!(l.take_hits().is_empty());
    }

    #[test]
    fn ipv6_sources_share_a_slash_64() {
        let mut l = limits();
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(l.spend_handshake(t0, a));
        assert!(l.spend_handshake(t0, b));
        assert!(l.spend_handshake(t0, a));
        assert!(!l.spend_handshake(t0, b));
        assert!(l.spend_handshake(t0, c));
    }

    #[test]
    fn source_map_stays_bounded() {
        let mut l = limits();
        let mut now = Instant::now();
        for n in 0..50 {
            now += Duration::from_secs(1);
            assert!(l.spend_handshake(now, ip(n)), "{n}");
            assert!(l.sources.len() <= 4);
        }
    }

    #[test]
    fn caps_in_order_and_per_key_accounting() {
        let mut l = limits();
        assert!(l.admit(0, 0, || 0));
        l.on_accepted(ConnectionHandle(1), 0);
        l.on_accepted(ConnectionHandle(2), 0);
        assert_eq!(l.connections_of(0), 2);
        assert!(!l.admit(0, 2, || 0), "key 0 at its cap of 2");
        assert!(l.admit(1, 2, || 0));
        assert!(!l.admit(1, 2, || 3), "half-open cap");
        assert!(!l.admit(1, 10, || 0), "total cap");
        l.on_removed(ConnectionHandle(1));
        l.on_removed(ConnectionHandle(1));
        assert_eq!(l.connections_of(0), 1);
        assert!(l.admit(0, 1, || 0));
        let kinds: Vec<_> = l
            .take_hits()
            .into_iter()
            .map(|h| (h.kind, h.key_index))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (LimitKind::TotalConnections, Some(1)),
                (LimitKind::KeyConnections, Some(0)),
                (LimitKind::HalfOpen, Some(1)),
            ]
        );
    }
}
