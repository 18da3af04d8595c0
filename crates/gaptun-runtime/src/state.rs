//! State shared between the driver task and the application-side handles.
//!
//! Everything lives behind one mutex, next to the protocol core's `Endpoint`: the core is a
//! single state machine, so finer locking would buy nothing. Handles lock, call into the core,
//! register their waker if they must wait, and unlock; the driver does the same around I/O.
//! Wakers are collected while the lock is held and woken after it is released, so that a woken
//! task does not immediately block on the lock.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use gaptun_proto::{CarrierId, Connection, ConnectionHandle, Endpoint, StreamId};
use tokio::sync::{Notify, watch};

use crate::carrier::Carrier;
use crate::endpoint::EndpointSnapshot;
use crate::error::RtError;
use crate::figures::FigureReader;
use crate::group::Group;

/// How often the driver publishes an [`EndpointSnapshot`]: often enough for a live page and
/// a per-second rate, rare enough to cost nothing next to the data path.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(250);

/// Accepted connections waiting for the application; beyond this, new ones are refused.
pub(crate) const MAX_PENDING_ACCEPTS: usize = 1024;

/// What the driver task and every handle of one endpoint share.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the driver: something may need sending (or the endpoint is closing).
    pub(crate) wake_driver: Notify,
    /// Becomes `true` when the driver task has ended.
    pub(crate) driver_done: watch::Sender<bool>,
    /// The bound address.
    pub(crate) local_addr: SocketAddr,
    /// The endpoint's shards (a group of one unless sharded) and their merged figures.
    pub(crate) group: Arc<Group>,
    /// This shard's position in `group`.
    pub(crate) index: usize,
    /// Nanoseconds the driver spent working (see `ShardFigures::busy`).
    pub(crate) busy_ns: AtomicU64,
    /// Datagrams received cut short and dropped (see `ShardFigures::truncated`).
    pub(crate) truncated: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        endpoint: Endpoint,
        local_addr: SocketAddr,
        group: Arc<Group>,
        index: usize,
    ) -> Self {
        let mut state = State::new(endpoint);
        let first = state
            .figures
            .read(&state.endpoint, &state.carriers, Instant::now());
        group.publish(index, first, Duration::ZERO, 0);
        Self {
            group,
            index,
            busy_ns: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            state: Mutex::new(state),
            wake_driver: Notify::new(),
            driver_done: watch::Sender::new(false),
            local_addr,
        }
    }

    /// Locks the state. A poisoned lock (a panic in the core while it was held) is taken over as
    /// is: the driver-failure path marks everything lost, and handles must still be able to see
    /// that and return errors instead of panicking in turn.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long the driver has worked so far.
    pub(crate) fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed))
    }

    /// Datagrams the driver received cut short (and dropped) so far.
    pub(crate) fn truncated(&self) -> u64 {
        self.truncated.load(Ordering::Relaxed)
    }

    /// Reads this shard's figures (only the connections touched since the last read) and
    /// publishes them merged with the other shards'. `state` is this shard's, locked: two
    /// reads of one shard reach the merge in the order they were made, so an older read never
    /// overwrites a newer one.
    pub(crate) fn publish_figures(&self, state: &mut State, now: Instant) -> Arc<EndpointSnapshot> {
        let read = state.figures.read(&state.endpoint, &state.carriers, now);
        self.group
            .publish(self.index, read, self.busy(), self.truncated())
    }

    /// Asks the driver to run an iteration (poll_transmit and friends).
    pub(crate) fn kick(&self) {
        self.wake_driver.notify_one();
    }
}

/// Identity of one connection as seen by its handles.
///
/// The core may reuse a `ConnectionHandle` once the old connection is gone, so handles also carry
/// a generation number that is never reused; `lost` is set exactly once when the connection ends
/// and stays readable after the connection's state is removed.
#[derive(Debug)]
pub(crate) struct ConnMeta {
    pub(crate) handle: ConnectionHandle,
    pub(crate) generation: u64,
    pub(crate) remote: SocketAddr,
    /// Client: the connection was made over several paths (a port range), so one closed port
    /// must not fail its handshake (the others may answer).
    pub(crate) several_paths: bool,
    pub(crate) lost: OnceLock<RtError>,
}

/// Per-connection bookkeeping of the runtime (the core keeps the protocol state).
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) meta: Arc<ConnMeta>,
    /// The handshake completed.
    pub(crate) connected: bool,
    /// Waiting for `Connected` or for the connection to end (`connect`, `closed`).
    pub(crate) state_wakers: Vec<Waker>,
    /// Waiting to open a stream (stream limit, or handshake not complete).
    pub(crate) open_wakers: Vec<Waker>,
    /// Waiting for the peer to open a stream.
    pub(crate) accept_wakers: Vec<Waker>,
    /// One reader per stream.
    pub(crate) readers: HashMap<StreamId, Waker>,
    /// One writer per stream.
    pub(crate) writers: HashMap<StreamId, Waker>,
    /// Waiting for a datagram.
    pub(crate) datagram_wakers: Vec<Waker>,
}

impl ConnState {
    fn new(meta: Arc<ConnMeta>) -> Self {
        Self {
            meta,
            connected: false,
            state_wakers: Vec::new(),
            open_wakers: Vec::new(),
            accept_wakers: Vec::new(),
            readers: HashMap::new(),
            writers: HashMap::new(),
            datagram_wakers: Vec::new(),
        }
    }

    /// Moves every waker of this connection into `out`.
    pub(crate) fn drain_all_wakers(&mut self, out: &mut Vec<Waker>) {
        out.append(&mut self.state_wakers);
        out.append(&mut self.open_wakers);
        out.append(&mut self.accept_wakers);
        out.extend(self.readers.drain().map(|(_, w)| w));
        out.extend(self.writers.drain().map(|(_, w)| w));
        out.append(&mut self.datagram_wakers);
    }
}

/// Adds `waker` to `list` unless an equivalent one is already there (a future polled again
/// without having been woken must not grow the list).
pub(crate) fn register(list: &mut Vec<Waker>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}

/// The endpoint and the runtime's view of its connections.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) endpoint: Endpoint,
    pub(crate) conns: HashMap<ConnectionHandle, ConnState>,
    /// Server side: accepted connections the application has not taken yet.
    pub(crate) incoming: VecDeque<Arc<ConnMeta>>,
    /// Waiting in `RtEndpoint::accept`.
    pub(crate) accept_wakers: Vec<Waker>,
    /// Set when the endpoint shuts down: no new connections, driver exits once they drained.
    pub(crate) closing_since: Option<Instant>,
    /// Set when the driver died; every operation fails with this.
    pub(crate) failed: Option<RtError>,
    /// Server side: what to call each key (by index) in log lines, e.g. the user owning it.
    /// Empty: keys are called by their number.
    pub(crate) key_names: Vec<Arc<str>>,
    /// The carriers the driver polls: number (as the core knows them), kind, local address.
    pub(crate) carriers: Vec<(CarrierId, &'static str, Option<SocketAddr>)>,
    /// Carriers added since the driver last looked, for it to take. The driver owns the
    /// carriers, so that they close when it ends, even if a handle outlives it.
    pub(crate) carriers_added: Vec<(CarrierId, Arc<dyn Carrier>)>,
    /// Carriers removed since the driver last looked.
    pub(crate) carriers_removed: Vec<CarrierId>,
    /// The connection figures published last, and which connections to read again.
    pub(crate) figures: FigureReader,
    next_carrier: u16,
    next_generation: u64,
}

impl State {
    fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            conns: HashMap::new(),
            incoming: VecDeque::new(),
            accept_wakers: Vec::new(),
            closing_since: None,
            failed: None,
            key_names: Vec::new(),
            carriers: Vec::new(),
            carriers_added: Vec::new(),
            carriers_removed: Vec::new(),
            figures: FigureReader::default(),
            next_carrier: 0,
            next_generation: 0,
        }
    }

    /// Adds a carrier for the driver to poll; returns its number. `None` once every number has
    /// been used (65 536 carriers over the endpoint's life).
    pub(crate) fn add_carrier(&mut self, carrier: Arc<dyn Carrier>) -> Option<CarrierId> {
        let id = CarrierId(self.next_carrier);
        self.next_carrier = self.next_carrier.checked_add(1)?;
        self.carriers
            .push((id, carrier.kind(), carrier.local_addr().ok()));
        self.endpoint.set_route_mtu(id, carrier.route_mtu());
        self.carriers_added.push((id, carrier));
        // The figures name each connection's carriers by kind.
        self.figures.invalidate();
        Some(id)
    }

    /// Stops polling carrier `id` (its socket closes once the driver lets go of it).
    pub(crate) fn remove_carrier(&mut self, id: CarrierId) {
        self.carriers.retain(|(c, _, _)| *c != id);
        self.carriers_added.retain(|(c, _)| *c != id);
        self.carriers_removed.push(id);
        self.figures.invalidate();
    }

    /// Starts tracking a connection the core just created. If the core reused the handle of a
    /// connection we still track, that one is finished first.
    pub(crate) fn track(
        &mut self,
        handle: ConnectionHandle,
        remote: SocketAddr,
        several_paths: bool,
        wakers: &mut Vec<Waker>,
    ) -> Arc<ConnMeta> {
        self.forget(handle, RtError::Gone, wakers);
        self.next_generation += 1;
        let meta = Arc::new(ConnMeta {
            handle,
            generation: self.next_generation,
            remote,
            several_paths,
            lost: OnceLock::new(),
        });
        self.conns.insert(handle, ConnState::new(Arc::clone(&meta)));
        meta
    }

    /// Stops tracking a connection: records why it ended (first reason wins) and collects its
    /// wakers so every waiting handle sees the error.
    /// Fails the handshakes in progress to any of `unreachable` (ICMP port unreachable came
    /// back from there). Established connections are left alone: an ICMP message is easy to
    /// forge, and they have their own liveness checks.
    pub(crate) fn fail_handshakes_to(
        &mut self,
        unreachable: &[SocketAddr],
        now: Instant,
        wakers: &mut Vec<Waker>,
    ) {
        let same = |a: SocketAddr, b: SocketAddr| {
            a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
        };
        let failed: Vec<ConnectionHandle> = self
            .conns
            .iter()
            .filter(|(_, cs)| {
                !cs.connected
                    && !cs.meta.several_paths
                    && unreachable.iter().any(|&u| same(u, cs.meta.remote))
            })
            .map(|(&h, _)| h)
            .collect();
        for handle in failed {
            if let Some(conn) = self.endpoint.connection(handle) {
                conn.close(now, 0, b"");
            }
            self.forget(handle, RtError::PortUnreachable, wakers);
        }
    }

    pub(crate) fn forget(
        &mut self,
        handle: ConnectionHandle,
        reason: RtError,
        wakers: &mut Vec<Waker>,
    ) {
        if let Some(mut cs) = self.conns.remove(&handle) {
            let _ = cs.meta.lost.set(reason);
            cs.drain_all_wakers(wakers);
        }
    }

    /// The core connection and our bookkeeping for `meta`, or why it is unusable.
    pub(crate) fn conn(
        &mut self,
        meta: &ConnMeta,
    ) -> Result<(&mut Connection, &mut ConnState), RtError> {
        if let Some(e) = meta.lost.get() {
            return Err(e.clone());
        }
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let cs = match self.conns.get_mut(&meta.handle) {
            Some(cs) if cs.meta.generation == meta.generation => cs,
            _ => return Err(RtError::Gone),
        };
        match self.endpoint.connection(meta.handle) {
            Some(conn) => Ok((conn, cs)),
            None => Err(RtError::Gone),
        }
    }

    /// The driver died: fail every connection and waiter.
    pub(crate) fn fail_all(&mut self, reason: &RtError, wakers: &mut Vec<Waker>) {
        self.failed = Some(reason.clone());
        let handles: Vec<_> = self.conns.keys().copied().collect();
        for h in handles {
            self.forget(h, reason.clone(), wakers);
        }
        self.incoming.clear();
        wakers.append(&mut self.accept_wakers);
    }
}

/// Wakes every waker (after the lock was released).
pub(crate) fn wake_all(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}
