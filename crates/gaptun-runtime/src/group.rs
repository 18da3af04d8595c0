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
use std::time::{Duration, Instant};

use gaptun_proto::{CarrierId, EndpointStats};
use tokio::sync::{mpsc, watch};

use crate::endpoint::{ConnectionList, EndpointSnapshot, ShardFigures};
use crate::figures::ShardRead;

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
    /// Each shard's latest figures and the merged connection list, updated whenever one
    /// shard publishes.
    parts: Mutex<Parts>,
    /// The merged figures of every shard (what `RtEndpoint::snapshot` returns).
    pub(crate) snapshot: watch::Sender<Arc<EndpointSnapshot>>,
}

/// What the shards published last.
#[derive(Debug)]
struct Parts {
    /// Per shard, in shard order.
    shards: Vec<PartFigures>,
    /// Every shard's connections together, kept up to date with each shard's changes (so a
    /// publication costs the connections that changed, not all of them).
    connections: ConnectionList,
}

/// One shard's figures besides its connections.
#[derive(Debug, Clone, Copy)]
struct PartFigures {
    taken: Instant,
    endpoint: EndpointStats,
    connections: usize,
    busy: Duration,
    truncated: u64,
}

impl Group {
    /// A group of `count` shards and, in shard order, the receiving end of each one's inbox.
    pub(crate) fn new(count: usize) -> (Arc<Self>, Vec<mpsc::Receiver<Passed>>) {
        Self::with_inbox_capacity(count, INBOX_CAPACITY)
    }

    /// [`new`](Self::new) with inboxes of `capacity` datagrams each.
    fn with_inbox_capacity(
        count: usize,
        capacity: usize,
    ) -> (Arc<Self>, Vec<mpsc::Receiver<Passed>>) {
        let (inboxes, receivers): (Vec<_>, Vec<_>) =
            (0..count).map(|_| mpsc::channel(capacity)).unzip();
        let taken = Instant::now();
        let empty = Arc::new(EndpointSnapshot {
            taken,
            endpoint: EndpointStats::default(),
            connections: ConnectionList::default(),
            shards: Vec::new(),
        });
        let none = PartFigures {
            taken,
            endpoint: EndpointStats::default(),
            connections: 0,
            busy: Duration::ZERO,
            truncated: 0,
        };
        let group = Self {
            inboxes,
            passed_in: (0..count).map(|_| AtomicU64::new(0)).collect(),
            dropped: (0..count).map(|_| AtomicU64::new(0)).collect(),
            parts: Mutex::new(Parts {
                shards: vec![none; count],
                connections: ConnectionList::default(),
            }),
            snapshot: watch::Sender::new(empty),
        };
        (Arc::new(group), receivers)
    }

    /// Hands `datagram` to shard `to` without waiting; dropped (and counted in the shard's
    /// [`ShardFigures::dropped_passing`]) if its inbox is full or gone.
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

    /// Records shard `index`'s figures (its driver has worked `busy` and dropped `truncated`
    /// datagrams) and publishes the merge of all shards'. The caller holds that shard's lock,
    /// so its reads arrive in order.
    pub(crate) fn publish(
        &self,
        index: usize,
        read: ShardRead,
        busy: Duration,
        truncated: u64,
    ) -> Arc<EndpointSnapshot> {
        let merged = {
            let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot) = parts.shards.get_mut(index) {
                *slot = PartFigures {
                    taken: read.taken,
                    endpoint: read.endpoint,
                    connections: read.listed.len(),
                    busy,
                    truncated,
                };
            }
            if parts.shards.len() == 1 {
                parts.connections = read.listed;
            } else {
                let list = &mut parts.connections.0;
                for (handle, change) in read.changes {
                    match change {
                        Some(info) => {
                            list.insert(handle, info);
                        }
                        None => {
                            list.remove(&handle);
                        }
                    }
                }
            }
            Arc::new(self.merge(&parts))
        };
        self.snapshot.send_replace(Arc::clone(&merged));
        merged
    }

    /// One snapshot of every shard's: counters summed, connections in handle order, one
    /// [`ShardFigures`] per shard.
    fn merge(&self, parts: &Parts) -> EndpointSnapshot {
        let taken = parts
            .shards
            .iter()
            .map(|p| p.taken)
            .max()
            .unwrap_or_else(Instant::now);
        let mut endpoint = EndpointStats::default();
        let mut shards = Vec::with_capacity(parts.shards.len());
        for (index, part) in parts.shards.iter().enumerate() {
            endpoint.merge(&part.endpoint);
            let load =
                |counts: &[AtomicU64]| counts.get(index).map_or(0, |n| n.load(Ordering::Relaxed));
            shards.push(ShardFigures {
                connections: part.connections,
                passed_in: load(&self.passed_in),
                dropped_passing: load(&self.dropped),
                busy: part.busy,
                truncated: part.truncated,
            });
        }
        EndpointSnapshot {
            taken,
            endpoint,
            connections: parts.connections.clone(),
            shards,
        }
    }
}

#[cfg(test)]
mod tests {
    use gaptun_proto::{ConnectionHandle, ConnectionStats};

    use super::*;
    use crate::endpoint::ConnectionInfo;

    fn conn(handle: usize, created: Instant, bytes: u64) -> ConnectionInfo {
        ConnectionInfo {
            handle: ConnectionHandle(handle),
            remote: "127.0.0.1:9".parse().expect("addr"),
            established: true,
            created,
            stats: ConnectionStats {
                bytes_received: bytes,
                ..ConnectionStats::default()
            },
            key_index: 0,
            carrier: "udp",
            paths: Vec::new(),
        }
    }

    /// A shard's read: `listed` after applying `changes` to what it listed before.
    fn read(
        taken: Instant,
        before: &ConnectionList,
        changes: Vec<(usize, Option<ConnectionInfo>)>,
        stats: EndpointStats,
    ) -> ShardRead {
        let mut listed = before.clone();
        let changes: Vec<_> = changes
            .into_iter()
            .map(|(h, c)| (ConnectionHandle(h), c.map(Arc::new)))
            .collect();
        for (h, c) in &changes {
            match c {
                Some(c) => listed.0.insert(*h, Arc::clone(c)),
                None => listed.0.remove(h),
            };
        }
        ShardRead {
            taken,
            endpoint: stats,
            listed,
            changes,
        }
    }

    fn datagram() -> Passed {
        Passed {
            carrier: CarrierId(0),
            from: "127.0.0.1:9".parse().expect("addr"),
            data: vec![1, 2, 3],
        }
    }

    /// Two shards publishing their changes 40 ms apart: counters add up, connections come in
    /// handle order with the creation time their shard read, a removal takes the connection
    /// out, and a later change replaces the earlier figures.
    #[test]
    fn merge_applies_each_shards_changes() {
        let (group, _inboxes) = Group::new(2);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(40);
        let accepted = |n| EndpointStats {
            accepted: n,
            ..EndpointStats::default()
        };
        let a = read(
            t0,
            &ConnectionList::default(),
            vec![(0, Some(conn(0, t0, 5))), (2, Some(conn(2, t0, 6)))],
            accepted(2),
        );
        let a_listed = a.listed.clone();
        group.publish(0, a, Duration::from_millis(7), 0);
        let b = read(
            t1,
            &ConnectionList::default(),
            vec![(1, Some(conn(1, t1, 7))), (3, Some(conn(3, t1, 8)))],
            EndpointStats {
                accepted: 2,
                dropped_unauthenticated: 3,
                ..EndpointStats::default()
            },
        );
        group.pass(1, datagram());
        let merged = group.publish(1, b, Duration::from_millis(9), 1);
        assert_eq!(merged.taken, t1);
        assert_eq!(merged.endpoint.accepted, 4);
        assert_eq!(merged.endpoint.dropped_unauthenticated, 3);
        let handles: Vec<usize> = merged.connections.iter().map(|c| c.handle.0).collect();
        assert_eq!(handles, [0, 1, 2, 3]);
        assert_eq!(
            merged
                .connections
                .get(ConnectionHandle(2))
                .map(|c| c.created),
            Some(t0)
        );
        let shards: Vec<(usize, u64, Duration, u64)> = merged
            .shards
            .iter()
            .map(|s| (s.connections, s.passed_in, s.busy, s.truncated))
            .collect();
        assert_eq!(
            shards,
            [
                (2, 0, Duration::from_millis(7), 0),
                (2, 1, Duration::from_millis(9), 1)
            ]
        );

        // Shard 0: connection 0 gone, connection 2 read again with more bytes.
        let t2 = t1 + Duration::from_millis(250);
        let a = read(
            t2,
            &a_listed,
            vec![(0, None), (2, Some(conn(2, t0, 60)))],
            accepted(2),
        );
        let merged = group.publish(0, a, Duration::from_millis(8), 0);
        let figures: Vec<(usize, u64)> = merged
            .connections
            .iter()
            .map(|c| (c.handle.0, c.stats.bytes_received))
            .collect();
        assert_eq!(figures, [(1, 7), (2, 60), (3, 8)]);
        assert_eq!(merged.shards[0].connections, 1);
        assert_eq!(*group.snapshot.borrow(), merged, "published");
    }

    /// A shard whose driver takes nothing from its inbox: past the inbox's capacity every
    /// datagram passed to it is dropped and counted, none is kept, nothing panics; once the
    /// driver drains the inbox, datagrams are taken again. Passing to a shard that is gone
    /// (its receiver dropped) or does not exist counts or ignores them, never panics.
    #[test]
    fn a_full_inbox_drops_and_counts() {
        let (group, mut inboxes) = Group::with_inbox_capacity(3, 8);
        for _ in 0..20 {
            group.pass(1, datagram());
        }
        let figures = |group: &Group| {
            let snap = group.merge(&group.parts.lock().expect("lock"));
            snap.shards
                .iter()
                .map(|s| (s.passed_in, s.dropped_passing))
                .collect::<Vec<_>>()
        };
        assert_eq!(figures(&group), [(0, 0), (8, 12), (0, 0)]);
        let inbox = &mut inboxes[1];
        let mut held = 0;
        while inbox.try_recv().is_ok() {
            held += 1;
        }
        assert_eq!(held, 8, "the inbox held its capacity, no more");
        for _ in 0..3 {
            group.pass(1, datagram());
        }
        assert_eq!(figures(&group)[1], (11, 12));
        drop(inboxes.remove(2));
        group.pass(2, datagram());
        group.pass(7, datagram());
        assert_eq!(figures(&group), [(0, 0), (11, 12), (0, 1)]);
    }
}
