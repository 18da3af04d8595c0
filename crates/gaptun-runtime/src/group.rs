//! What the shards of one endpoint share: the channels that carry a datagram to the shard of
//! its connection, and the figures each shard publishes, merged into one snapshot.
//!
//! A server started with several shards (see [`RtEndpoint::bind_sharded`]) runs one driver
//! per shard, each with its own socket on the shared port (`SO_REUSEPORT`), its own lock and
//! its own `Endpoint`. The kernel spreads clients over the sockets by their address; when a
//! client's address changes, its datagrams may reach another shard, whose core names the
//! right one ([`gaptun_proto::Endpoint::handle_datagram`]); the datagram then travels here.
//! An endpoint on its own is a group of one, and the channels stay unused.
//!
//! [`RtEndpoint::bind_sharded`]: crate::RtEndpoint::bind_sharded

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use gaptun_proto::{CarrierId, EndpointStats};
use tokio::sync::{mpsc, watch};

use crate::endpoint::{EndpointSnapshot, ShardFigures};

/// Datagrams waiting for a shard beyond which more are dropped (they are recovered like any
/// loss): a shard that falls behind must not make the others hold memory for it.
const INBOX_CAPACITY: usize = 4096;

/// A datagram that reached one shard's socket but belongs to another's connection.
#[derive(Debug)]
pub(crate) struct Passed {
    pub(crate) carrier: CarrierId,
    pub(crate) from: SocketAddr,
    pub(crate) data: Vec<u8>,
}

/// Shared by the shards of one endpoint.
#[derive(Debug)]
pub(crate) struct Group {
    inboxes: Vec<mpsc::Sender<Passed>>,
    /// Per shard: datagrams handed to it by the others.
    passed_in: Vec<AtomicU64>,
    /// Per shard: datagrams dropped because its inbox was full.
    dropped: Vec<AtomicU64>,
    /// Each shard's latest figures, merged into `snapshot` whenever one changes.
    parts: Mutex<Vec<Arc<EndpointSnapshot>>>,
    /// The merged figures of every shard (what `RtEndpoint::snapshot` returns).
    pub(crate) snapshot: watch::Sender<Arc<EndpointSnapshot>>,
}

impl Group {
    /// A group of `count` shards and, in shard order, the receiving end of each one's inbox.
    pub(crate) fn new(count: usize) -> (Arc<Self>, Vec<mpsc::Receiver<Passed>>) {
        let (inboxes, receivers): (Vec<_>, Vec<_>) =
            (0..count).map(|_| mpsc::channel(INBOX_CAPACITY)).unzip();
        let empty = Arc::new(EndpointSnapshot {
            taken: Instant::now(),
            endpoint: EndpointStats::default(),
            connections: Vec::new(),
            shards: Vec::new(),
        });
        let group = Self {
            inboxes,
            passed_in: (0..count).map(|_| AtomicU64::new(0)).collect(),
            dropped: (0..count).map(|_| AtomicU64::new(0)).collect(),
            parts: Mutex::new(vec![Arc::clone(&empty); count]),
            snapshot: watch::Sender::new(empty),
        };
        (Arc::new(group), receivers)
    }

    /// Hands `datagram` to shard `to` without waiting; dropped if its inbox is full or gone.
    pub(crate) fn pass(&self, to: usize, datagram: Passed) {
        let Some(inbox) = self.inboxes.get(to) else {
            return;
        };
        match inbox.try_send(datagram) {
            Ok(()) => {
                if let Some(n) = self.passed_in.get(to) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                if let Some(n) = self.dropped.get(to) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Records shard `index`'s figures and publishes the merge of all shards'.
    pub(crate) fn publish(
        &self,
        index: usize,
        part: Arc<EndpointSnapshot>,
    ) -> Arc<EndpointSnapshot> {
        let merged = {
            let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot) = parts.get_mut(index) {
                *slot = part;
            }
            Arc::new(self.merge(&parts))
        };
        self.snapshot.send_replace(Arc::clone(&merged));
        merged
    }

    /// One snapshot of every shard's: counters summed, connections in handle order, one
    /// [`ShardFigures`] per shard (when there are several).
    pub(crate) fn merge(&self, parts: &[Arc<EndpointSnapshot>]) -> EndpointSnapshot {
        if let [only] = parts {
            return EndpointSnapshot::clone(only);
        }
        let taken = parts
            .iter()
            .map(|p| p.taken)
            .max()
            .unwrap_or_else(Instant::now);
        let mut endpoint = EndpointStats::default();
        let mut connections = Vec::new();
        let mut shards = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            endpoint.merge(&part.endpoint);
            // Ages as of the merged snapshot's time, so that `taken - age` (when a connection
            // was created: how readers tell a connection from its successor) stays the same
            // whichever shard published last.
            let later = taken.saturating_duration_since(part.taken);
            connections.extend(part.connections.iter().map(|c| {
                let mut c = c.clone();
                c.age += later;
                c
            }));
            shards.push(ShardFigures {
                connections: part.connections.len(),
                passed_in: self
                    .passed_in
                    .get(index)
                    .map_or(0, |n| n.load(Ordering::Relaxed)),
                dropped_passing: self
                    .dropped
                    .get(index)
                    .map_or(0, |n| n.load(Ordering::Relaxed)),
                busy: part.shards.first().map(|s| s.busy).unwrap_or_default(),
                truncated: part.shards.first().map_or(0, |s| s.truncated),
            });
        }
        connections.sort_by_key(|c| c.handle);
        EndpointSnapshot {
            taken,
            endpoint,
            connections,
            shards,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gaptun_proto::{ConnectionHandle, ConnectionStats};

    use super::*;
    use crate::endpoint::ConnectionInfo;

    fn conn(handle: usize, age_ms: u64, bytes: u64) -> ConnectionInfo {
        ConnectionInfo {
            handle: ConnectionHandle(handle),
            remote: "127.0.0.1:9".parse().expect("addr"),
            established: true,
            age: Duration::from_millis(age_ms),
            stats: ConnectionStats {
                bytes_received: bytes,
                ..ConnectionStats::default()
            },
            key_index: 0,
            carrier: "udp",
            paths: Vec::new(),
        }
    }

    fn part(
        taken: Instant,
        conns: Vec<ConnectionInfo>,
        stats: EndpointStats,
    ) -> Arc<EndpointSnapshot> {
        Arc::new(EndpointSnapshot {
            taken,
            endpoint: stats,
            shards: vec![ShardFigures {
                connections: conns.len(),
                busy: Duration::from_millis(7),
                ..ShardFigures::default()
            }],
            connections: conns,
        })
    }

    /// Two shards that published 40 ms apart: counters add up, connections come in handle
    /// order, and each connection's creation time (`taken - age`, how the stats collector
    /// tells a connection from its successor) is what its own shard said. Merging without
    /// the age correction made the collector count a connection twice.
    #[test]
    fn merge_sums_counters_and_keeps_creation_times() {
        let (group, _inboxes) = Group::new(2);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(40);
        let a = part(
            t0,
            vec![conn(0, 1000, 5), conn(2, 10, 6)],
            EndpointStats {
                accepted: 2,
                ..EndpointStats::default()
            },
        );
        let b = part(
            t1,
            vec![conn(1, 500, 7)],
            EndpointStats {
                accepted: 1,
                dropped_unauthenticated: 3,
                ..EndpointStats::default()
            },
        );
        group.pass(
            1,
            Passed {
                carrier: CarrierId(0),
                from: "127.0.0.1:9".parse().expect("addr"),
                data: vec![1, 2, 3],
            },
        );
        let merged = group.merge(&[Arc::clone(&a), Arc::clone(&b)]);
        assert_eq!(merged.taken, t1);
        assert_eq!(merged.endpoint.accepted, 3);
        assert_eq!(merged.endpoint.dropped_unauthenticated, 3);
        let handles: Vec<usize> = merged.connections.iter().map(|c| c.handle.0).collect();
        assert_eq!(handles, [0, 1, 2]);
        for c in &merged.connections {
            let own = [&a, &b]
                .into_iter()
                .find_map(|p| {
                    p.connections
                        .iter()
                        .find(|o| o.handle == c.handle)
                        .map(|o| p.taken - o.age)
                })
                .expect("from a part");
            assert_eq!(merged.taken - c.age, own, "{:?}", c.handle);
        }
        let shards: Vec<(usize, u64)> = merged
            .shards
            .iter()
            .map(|s| (s.connections, s.passed_in))
            .collect();
        assert_eq!(shards, [(2, 0), (1, 1)]);
        assert!(
            merged
                .shards
                .iter()
                .all(|s| s.busy == Duration::from_millis(7))
        );
    }
}
