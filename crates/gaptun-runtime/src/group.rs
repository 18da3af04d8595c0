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
        let mut endpoint = EndpointStats::default();
        let mut connections = Vec::new();
        let mut shards = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            endpoint.merge(&part.endpoint);
            connections.extend(part.connections.iter().cloned());
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
                busy: part.shards.first().map_or(Default::default(), |s| s.busy),
            });
        }
        connections.sort_by_key(|c| c.handle);
        EndpointSnapshot {
            taken: parts
                .iter()
                .map(|p| p.taken)
                .max()
                .unwrap_or_else(Instant::now),
            endpoint,
            connections,
            shards,
        }
    }
}
