//! Reading one shard's connection figures for the published [`EndpointSnapshot`], at a cost
//! that follows the connections that did something, not all of them.
//!
//! Every [`crate::SNAPSHOT_INTERVAL`] each driver publishes its shard's figures. Reading every
//! connection each time made a server with 10 000 idle connections read 40 000 of them a second
//! for figures that had not changed. Instead the reader keeps each connection's last figures in
//! a persistent map ([`ConnectionList`]) and reads again only the connections the core marked
//! since the last read (a datagram for it, a fired timer, something sent, the application's
//! access: see `Endpoint::take_touched`; a connection the core removed is marked too). Nothing
//! else changes a connection's figures: they are read from its state, which only those
//! operations change, and its age is kept as its creation time.
//!
//! [`EndpointSnapshot`]: crate::EndpointSnapshot

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use gaptun_proto::{CarrierId, Connection, ConnectionHandle, Endpoint};

use crate::endpoint::{ConnectionInfo, ConnectionList, PathState};

/// A connection's new figures (`Some`) or its removal (`None`), for the merge of the shards.
pub(crate) type Change = (ConnectionHandle, Option<Arc<ConnectionInfo>>);

/// One shard's figures as of its last read, and what changed before that read.
#[derive(Debug)]
pub(crate) struct ShardRead {
    pub(crate) taken: Instant,
    pub(crate) endpoint: gaptun_proto::EndpointStats,
    /// The shard's connections (shares its entries with the reader's map).
    pub(crate) listed: ConnectionList,
    /// What changed in `listed` since the previous read.
    pub(crate) changes: Vec<Change>,
}

/// The connection figures of one shard as last read, and which connections to read again.
#[derive(Debug, Default)]
pub(crate) struct FigureReader {
    listed: ConnectionList,
    /// Connections the driver took as touched since the last read.
    dirty: HashSet<ConnectionHandle>,
    /// Everything is read again next time: the carriers changed (their names are in the
    /// figures of every connection on them).
    stale: bool,
    /// Connections read so far (for tests: the work follows the touched connections).
    pub(crate) reads: u64,
}

impl FigureReader {
    /// Records connections the driver took from `Endpoint::take_touched`.
    pub(crate) fn touched(&mut self, handles: &[ConnectionHandle]) {
        self.dirty.extend(handles.iter().copied());
    }

    /// Makes the next read a full one.
    pub(crate) fn invalidate(&mut self) {
        self.stale = true;
    }

    /// Brings the figures up to date with `endpoint` at `now`: reads again the connections
    /// touched since the last read (those the driver took and those still waiting in the core),
    /// or every connection after [`invalidate`](Self::invalidate).
    pub(crate) fn read(
        &mut self,
        endpoint: &Endpoint,
        carriers: &[(CarrierId, &'static str, Option<SocketAddr>)],
        now: Instant,
    ) -> ShardRead {
        let mut changes = Vec::new();
        if std::mem::take(&mut self.stale) {
            self.dirty.clear();
            let live = endpoint.handles();
            let gone: Vec<ConnectionHandle> = self
                .listed
                .0
                .keys()
                .filter(|h| endpoint.peek_connection(**h).is_none())
                .copied()
                .collect();
            for handle in gone {
                self.listed.0.remove(&handle);
                changes.push((handle, None));
            }
            for handle in live {
                self.refresh(endpoint, carriers, now, handle, &mut changes);
            }
        } else {
            let pending = endpoint.pending_touched();
            let mut dirty = std::mem::take(&mut self.dirty);
            dirty.extend(pending.iter().copied());
            for &handle in &dirty {
                self.refresh(endpoint, carriers, now, handle, &mut changes);
            }
            // Keep the allocation for the next interval.
            dirty.clear();
            self.dirty = dirty;
        }
        ShardRead {
            taken: now,
            endpoint: endpoint.stats(),
            listed: self.listed.clone(),
            changes,
        }
    }

    /// Reads connection `handle` again, or drops it if the core no longer has it.
    fn refresh(
        &mut self,
        endpoint: &Endpoint,
        carriers: &[(CarrierId, &'static str, Option<SocketAddr>)],
        now: Instant,
        handle: ConnectionHandle,
        changes: &mut Vec<Change>,
    ) {
        match endpoint.peek_connection(handle) {
            Some(conn) => {
                self.reads += 1;
                let info = Arc::new(read_one(handle, conn, carriers, now));
                self.listed.0.insert(handle, Arc::clone(&info));
                changes.push((handle, Some(info)));
            }
            None => {
                if self.listed.0.remove(&handle).is_some() {
                    changes.push((handle, None));
                }
            }
        }
    }
}

/// One connection's figures.
pub(crate) fn read_one(
    handle: ConnectionHandle,
    conn: &Connection,
    carriers: &[(CarrierId, &'static str, Option<SocketAddr>)],
    now: Instant,
) -> ConnectionInfo {
    let kind_of = |id: CarrierId| {
        carriers
            .iter()
            .find(|(c, _, _)| *c == id)
            .map_or("udp", |(_, kind, _)| *kind)
    };
    ConnectionInfo {
        handle,
        remote: conn.remote_address(),
        established: conn.is_established(),
        // `age` is `now - created` exactly (Instant arithmetic), so this is the creation time.
        created: now.checked_sub(conn.age(now)).unwrap_or(now),
        stats: conn.stats(),
        key_index: conn.key_index(),
        carrier: kind_of(conn.path().carrier),
        paths: conn
            .paths()
            .into_iter()
            .map(|p| PathState {
                carrier: kind_of(p.addr.carrier),
                remote: p.addr.remote,
                alive: p.alive,
                active: p.active,
                bytes_sent: p.bytes_sent,
            })
            .collect(),
    }
}

/// Every connection of `endpoint` read now, as a full read would list them: what the reader's
/// figures must equal at any moment (tests).
#[cfg(test)]
pub(crate) fn read_all(
    endpoint: &Endpoint,
    carriers: &[(CarrierId, &'static str, Option<SocketAddr>)],
    now: Instant,
) -> ConnectionList {
    endpoint
        .handles()
        .into_iter()
        .filter_map(|h| {
            endpoint
                .peek_connection(h)
                .map(|c| read_one(h, c, carriers, now))
        })
        .collect()
}
