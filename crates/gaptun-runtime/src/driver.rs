//! The driver task: the only code that touches the socket and the core's timers.
//!
//! One iteration: receive what the socket has (in batches) and feed it to the core, fire expired
//! timers, take newly accepted connections, turn core events into wake-ups of the handles that
//! wait for them, then send everything the core wants sent. When there is nothing left to do it
//! sleeps until the socket is readable, a handle kicks it, or the core's next timer.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use gaptun_proto::{CarrierId, Event, StreamEvent, Transmit};
use tracing::{debug, trace, warn};

use crate::carrier::{self, Carrier, CarrierTransmit, RecvBuffers};
use crate::error::RtError;
use crate::group::Passed;
use crate::replay_state::ReplayStore;
use crate::state::{ConnState, MAX_PENDING_ACCEPTS, SNAPSHOT_INTERVAL, Shared, State, wake_all};

/// Receive batches handled before the driver turns to sending, so a flood of incoming datagrams
/// cannot starve our own transmissions (ACKs above all).
const RECV_BATCHES_PER_ITERATION: usize = 16;

/// Transmits taken from the core per lock acquisition; the rest wait for the next round.
const TRANSMITS_PER_ITERATION: usize = 64;

/// Most datagrams the core may put into one GSO buffer.
const MAX_GSO_SEGMENTS: usize = 32;

/// After the endpoint starts closing, how long the driver keeps running so that CLOSE frames go
/// out and late packets are answered, unless every connection has drained sooner.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_millis(300);

/// How often Initials dropped by the handshake budget or a connection cap are logged (one WARN
/// line per interval at most, so a flood cannot flood the log).
const LIMIT_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The driver's private data (everything shared with handles is in [`Shared`]).
pub(crate) struct Driver {
    shared: Arc<Shared>,
    /// The carriers (as in `State::carriers`), each with its receive buffers.
    carriers: Vec<CarrierSlot>,
    /// The largest datagram the core sends and accepts, for sizing receive buffers.
    max_payload: usize,
    /// Filled transmit buffers waiting to be sent, oldest first. While the first one waits for
    /// room on its carrier no more are taken from the core (the carrier's backpressure reaches
    /// the core), but receiving goes on.
    outgoing: VecDeque<(Vec<u8>, Transmit)>,
    spare: Vec<Vec<u8>>,
    /// Datagrams the core may put into one transmit: the least any carrier can send at once.
    max_segments: usize,
    /// Server: the replay state file, written before the Responses of the handshakes it records
    /// (shared by the shards, whose replay cache is one).
    store: Option<Arc<Mutex<ReplayStore>>>,
    /// Datagrams other shards received for our connections.
    inbox: tokio::sync::mpsc::Receiver<Passed>,
    /// Datagrams we received for other shards' connections, passed on after the lock.
    to_pass: Vec<(usize, Passed)>,
    /// Reused buffer for taking datagrams out of `inbox`.
    passed: Vec<Passed>,
    /// Reused buffer for the connections the core says may have events.
    touched: Vec<gaptun_proto::ConnectionHandle>,
    /// A failure to write the state file was logged (once is enough until it works again).
    store_failing: bool,
    /// When dropped Initials are reported next.
    next_limit_report: Instant,
    /// When the next [`crate::EndpointSnapshot`] is due.
    next_snapshot: Instant,
}

/// One carrier the driver polls.
struct CarrierSlot {
    id: CarrierId,
    carrier: Arc<dyn Carrier>,
    recv: RecvBuffers,
    /// Receive errors since the last success: past a few, the carrier stops counting as
    /// progress, so that a permanently failing one cannot keep the driver spinning (it is still
    /// polled on every iteration).
    errors_in_row: u32,
}

/// Receive errors in a row after which a carrier's errors no longer wake the driver.
const MAX_RECV_ERRORS_IN_ROW: u32 = 8;

/// What one locked step decided.
struct Step {
    /// The core may have more to send right now.
    more_to_send: bool,
    /// The core's next timer.
    timeout: Option<Instant>,
    /// The endpoint closed and has drained (or lingered long enough).
    exit: bool,
}

/// The carriers close with the driver (when it finishes, or when its runtime drops the task),
/// not when the last handle to the shared state goes: a restarted server must be able to bind
/// the same address at once, and a fake-TCP carrier must remove its nftables rules.
impl Drop for Driver {
    fn drop(&mut self) {
        self.carriers.clear();
        self.shared.lock().carriers.clear();
    }
}

impl Driver {
    /// `max_payload`: the largest datagram the core sends and accepts. The carriers are those
    /// of the shared state, picked up again whenever they change.
    pub(crate) fn new(
        shared: Arc<Shared>,
        max_payload: usize,
        store: Option<Arc<Mutex<ReplayStore>>>,
        inbox: tokio::sync::mpsc::Receiver<Passed>,
    ) -> Self {
        let mut driver = Self {
            inbox,
            to_pass: Vec::new(),
            passed: Vec::new(),
            touched: Vec::new(),
            shared,
            carriers: Vec::new(),
            max_payload,
            outgoing: VecDeque::new(),
            spare: Vec::new(),
            max_segments: 1,
            store,
            store_failing: false,
            next_limit_report: Instant::now() + LIMIT_REPORT_INTERVAL,
            next_snapshot: Instant::now() + SNAPSHOT_INTERVAL,
        };
        driver.sync_carriers();
        driver
    }

    /// Takes up carriers added or removed since the last call, and the batch size all of them
    /// can send.
    fn sync_carriers(&mut self) {
        let (added, removed) = {
            let mut state = self.shared.lock();
            if state.carriers_added.is_empty() && state.carriers_removed.is_empty() {
                return;
            }
            (
                std::mem::take(&mut state.carriers_added),
                std::mem::take(&mut state.carriers_removed),
            )
        };
        self.carriers.retain(|s| !removed.contains(&s.id));
        for (id, carrier) in added {
            self.carriers.push(CarrierSlot {
                id,
                recv: RecvBuffers::new(&*carrier, self.max_payload),
                carrier,
                errors_in_row: 0,
            });
        }
        self.max_segments = self
            .carriers
            .iter()
            // Counted for the smallest datagrams: the core keeps a batch of larger ones under
            // the kernel's 64 KiB GSO limit itself (`MAX_TRANSMIT_BYTES`), since each
            // connection's size is its own (a loopback peer's 65 507 bytes beside 1472).
            .map(|s| carrier::segments_for(&*s.carrier, usize::from(gaptun_proto::MIN_MTU)))
            .min()
            .unwrap_or(1)
            .min(MAX_GSO_SEGMENTS);
        debug!(carriers = self.carriers.len(), "carriers changed");
    }

    /// The state this driver serves.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Runs until the endpoint has closed.
    pub(crate) async fn run(mut self) {
        loop {
            let started = Instant::now();
            self.sync_carriers();
            let recv_busy = match poll_fn(|cx| Poll::Ready(self.poll_receive(cx))).await {
                Poll::Ready(busy) => busy,
                Poll::Pending => false,
            };
            let step = self.step();
            let blocked = self.flush();
            let worked = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.shared.busy_ns.fetch_add(worked, Ordering::Relaxed);
            if step.exit {
                debug!(addr = %self.shared.local_addr, "endpoint driver finished");
                break;
            }
            let room = self.outgoing.len() < TRANSMITS_PER_ITERATION;
            if recv_busy || (step.more_to_send && (blocked.is_none() || room)) {
                tokio::task::yield_now().await;
                continue;
            }
            self.wait(step.timeout, blocked).await;
        }
    }

    /// Sleeps until a carrier has datagrams (which are then fed to the core), a handle kicks
    /// us, `timeout`, or the carrier `blocked` (that has no room for our next transmit) may
    /// take it.
    async fn wait(&mut self, timeout: Option<Instant>, blocked: Option<Arc<dyn Carrier>>) {
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let writable = async {
            match &blocked {
                // An error is no room either: the send is tried again and its error logged.
                Some(c) => {
                    let _ = poll_fn(|cx| c.poll_writable(cx)).await;
                }
                None => std::future::pending().await,
            }
        };
        let shared = Arc::clone(&self.shared);
        tokio::select! {
            _ = shared.wake_driver.notified() => {}
            _ = poll_fn(|cx| self.poll_receive(cx)) => {}
            () = sleep => {}
            () = writable => {}
        }
    }

    /// Reads up to a budget of batches from every carrier and feeds them to the core.
    /// `Ready(busy)` when anything happened, `busy` telling whether a budget ran out (more may be
    /// waiting); `Pending` when no carrier had anything (each will wake the task).
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut progress = false;
        let mut busy = false;
        for index in 0..self.carriers.len() {
            let (p, b) = self.poll_receive_from(index, cx);
            progress |= p;
            busy |= b;
        }
        self.pass_on();
        let (p, b) = self.poll_inbox(cx);
        progress |= p;
        busy |= b;
        if progress {
            Poll::Ready(busy)
        } else {
            Poll::Pending
        }
    }

    /// [`poll_receive`](Self::poll_receive) for one carrier: (anything happened, budget ran out).
    fn poll_receive_from(&mut self, index: usize, cx: &mut Context<'_>) -> (bool, bool) {
        let Some(slot) = self.carriers.get_mut(index) else {
            return (false, false);
        };
        let mut progress = false;
        for _ in 0..RECV_BATCHES_PER_ITERATION {
            let polled = slot.recv.poll_recv(&*slot.carrier, cx);
            let unreachable = slot.carrier.take_unreachable();
            if !unreachable.is_empty() {
                debug!(?unreachable, kind = slot.carrier.kind(), "peer unreachable");
                let mut wakers = Vec::new();
                self.shared
                    .lock()
                    .fail_handshakes_to(&unreachable, Instant::now(), &mut wakers);
                wake_all(wakers);
                progress = true;
            }
            let n = match polled {
                Poll::Pending => return (progress, false),
                Poll::Ready(Ok(n)) => {
                    slot.errors_in_row = 0;
                    n
                }
                Poll::Ready(Err(e)) => {
                    // ICMP errors reported on the socket and the like: not fatal for datagrams.
                    debug!(kind = slot.carrier.kind(), "receive error: {e}");
                    slot.errors_in_row = slot.errors_in_row.saturating_add(1);
                    if slot.errors_in_row > MAX_RECV_ERRORS_IN_ROW {
                        warn!(kind = slot.carrier.kind(), "carrier keeps failing: {e}");
                        return (progress, false);
                    }
                    return (true, false);
                }
            };
            progress = true;
            let mut state = self.shared.lock();
            let now = Instant::now();
            for i in 0..n {
                if slot.recv.truncated(i) {
                    // Cut by the kernel: it could not authenticate, so the core never sees it.
                    let total = self.shared.truncated.fetch_add(1, Ordering::Relaxed) + 1;
                    debug!(
                        carrier = slot.id.0,
                        total, "datagram longer than the receive buffer dropped"
                    );
                    continue;
                }
                let (from, datagrams) = slot.recv.datagrams(i);
                for datagram in datagrams {
                    trace!(%from, carrier = slot.id.0, len = datagram.len(), "datagram in");
                    if let Some(shard) =
                        state.endpoint.handle_datagram(now, slot.id, from, datagram)
                    {
                        // Another shard's connection (its client changed address): copied
                        // once, handed over after the lock.
                        let passed = Passed {
                            carrier: slot.id,
                            from,
                            data: datagram.to_vec(),
                        };
                        self.to_pass.push((shard, passed));
                    }
                }
            }
        }
        (progress, true)
    }

    /// Hands the datagrams collected for other shards to them (and wakes their drivers).
    fn pass_on(&mut self) {
        if self.to_pass.is_empty() {
            return;
        }
        let group = &self.shared.group;
        for (shard, passed) in self.to_pass.drain(..) {
            trace!(to = shard, from = %passed.from, "datagram passed to its shard");
            group.pass(shard, passed);
        }
    }

    /// Feeds the core what other shards passed us (a budget's worth): `(anything happened,
    /// budget ran out)`.
    fn poll_inbox(&mut self, cx: &mut Context<'_>) -> (bool, bool) {
        const BUDGET: usize = 256;
        self.passed.clear();
        let n = match self.inbox.poll_recv_many(cx, &mut self.passed, BUDGET) {
            Poll::Ready(n) => n,
            Poll::Pending => return (false, false),
        };
        if n == 0 {
            // Every sender is gone: the endpoint is being torn down.
            return (false, false);
        }
        let mut state = self.shared.lock();
        let now = Instant::now();
        for passed in &mut self.passed {
            // The datagram's shard is this one; should the core still point elsewhere (the
            // connection went away meanwhile), it is dropped rather than passed around.
            let _ =
                state
                    .endpoint
                    .handle_datagram(now, passed.carrier, passed.from, &mut passed.data);
        }
        (true, n == BUDGET)
    }

    /// Timers, accepts, events and transmit collection, under one lock acquisition.
    fn step(&mut self) -> Step {
        let mut wakers = Vec::new();
        let shared = Arc::clone(&self.shared);
        let step = {
            let mut state = shared.lock();
            // Read the clock before comparing: tokio's timer may fire a little early or late, and
            // the core must see the real time.
            let now = Instant::now();
            if state.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                state.endpoint.handle_timeout(now);
            }
            take_accepted(&mut state, now, &mut wakers);
            dispatch_events(&mut state, &mut self.touched, &mut wakers);
            self.persist_replay_state(&mut state);
            self.report_limits(&mut state, now);
            self.publish_snapshot(&mut state, now);
            let more_to_send = self.collect_transmits(&mut state, now);
            // Sending can make streams writable again (their unsent data went out).
            dispatch_events(&mut state, &mut self.touched, &mut wakers);
            let exit = state.closing_since.is_some_and(|since| {
                state.endpoint.handles().is_empty()
                    || (!more_to_send && now.saturating_duration_since(since) >= CLOSE_LINGER)
            });
            // While closing, wake up when the linger ends even if the core has no timer before
            // then: without this the driver slept until the core's next timer, and a client's
            // shutdown always waited out the caller's whole limit (2 s).
            let linger_end = state.closing_since.map(|since| since + CLOSE_LINGER);
            let timeout = match (state.endpoint.poll_timeout(), linger_end) {
                (Some(t), Some(l)) => Some(t.min(l)),
                (t, l) => t.or(l),
            };
            // Wake up for the next snapshot too, so that an idle endpoint's stay fresh.
            let timeout = Some(timeout.map_or(self.next_snapshot, |t| t.min(self.next_snapshot)));
            Step {
                more_to_send,
                timeout,
                exit,
            }
        };
        wake_all(wakers);
        step
    }

    /// Publishes the figures when the interval has passed: a read of the state the driver
    /// already holds locked (of the connections touched since the last one), so readers of
    /// the snapshot never contend with the data path.
    fn publish_snapshot(&mut self, state: &mut State, now: Instant) {
        if now < self.next_snapshot {
            return;
        }
        self.next_snapshot = now + SNAPSHOT_INTERVAL;
        self.shared.publish_figures(state, now);
    }

    /// Appends the handshakes accepted since the last step to the state file, before their
    /// Responses are collected for sending.
    fn persist_replay_state(&mut self, state: &mut State) {
        let Some(store) = &mut self.store else {
            return;
        };
        // Only after this shard took a handshake: the store and the replay cache are shared
        // by every shard, and taking their locks on every iteration would put a shared lock
        // on the data path.
        if !state.endpoint.replay_journal_pending() {
            return;
        }
        let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
        match store.persist(&mut state.endpoint) {
            Ok(()) => self.store_failing = false,
            Err(e) if !self.store_failing => {
                self.store_failing = true;
                warn!(
                    "cannot write the replay state file: {e} (replays across a restart are not refused until it works)"
                );
            }
            Err(_) => {}
        }
    }

    /// One WARN line per interval for Initials the handshake budget or a cap dropped.
    fn report_limits(&mut self, state: &mut State, now: Instant) {
        if now < self.next_limit_report {
            return;
        }
        self.next_limit_report = now + LIMIT_REPORT_INTERVAL;
        let hits = state.endpoint.poll_limit_hits();
        if hits.is_empty() {
            return;
        }
        warn!(
            interval_s = LIMIT_REPORT_INTERVAL.as_secs(),
            "handshakes dropped by server limits: {}",
            limit_summary(&hits, &state.key_names)
        );
    }

    /// Moves transmits from the core into `outgoing` until it holds a budget of them. Returns
    /// whether the budget ran out. Transmits still waiting for room on their carrier count
    /// against the budget, so a carrier that has no room holds at most a budget's worth.
    fn collect_transmits(&mut self, state: &mut State, now: Instant) -> bool {
        let room = TRANSMITS_PER_ITERATION.saturating_sub(self.outgoing.len());
        if room == 0 {
            return false;
        }
        for _ in 0..room {
            let mut buf = self.spare.pop().unwrap_or_default();
            match state
                .endpoint
                .poll_transmit(now, self.max_segments, &mut buf)
            {
                Some(t) => self.outgoing.push_back((buf, t)),
                None => {
                    self.spare.push(buf);
                    return false;
                }
            }
        }
        true
    }

    /// Sends what `step` collected, outside the lock, without waiting: returns a carrier that
    /// had no room (its transmits stay queued, in order), if one had none.
    fn flush(&mut self) -> Option<Arc<dyn Carrier>> {
        // A carrier without room (a TLS connection's full queue, a fake-TCP flow still in its
        // handshake) keeps its transmits, in order, at the back of the queue (rotated in place,
        // so the queue keeps its allocation); the other carriers' go out past them.
        let mut blocked: Option<Arc<dyn Carrier>> = None;
        let mut blocked_ids: Vec<CarrierId> = Vec::new();
        for _ in 0..self.outgoing.len() {
            let Some((buf, t)) = self.outgoing.pop_front() else {
                break;
            };
            if blocked_ids.contains(&t.carrier) {
                self.outgoing.push_back((buf, t));
                continue;
            }
            let Some(slot) = self.carriers.iter().find(|s| s.id == t.carrier) else {
                // A carrier removed since the core chose it (a hop): the datagram is lost, and
                // recovered like any other loss.
                trace!(
                    carrier = t.carrier.0,
                    "datagram for a removed carrier dropped"
                );
                self.spare.push(buf);
                continue;
            };
            let contents = buf.get(..t.size).unwrap_or(&buf);
            trace!(to = %t.destination, carrier = t.carrier.0, len = t.size, segment = ?t.segment_size, "datagram out");
            let transmit = CarrierTransmit {
                destination: t.destination,
                contents,
                segment_size: t.segment_size,
            };
            match carrier::try_send(&*slot.carrier, &transmit) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    blocked_ids.push(t.carrier);
                    blocked.get_or_insert_with(|| Arc::clone(&slot.carrier));
                    self.outgoing.push_back((buf, t));
                    continue;
                }
                Err(e) => {
                    debug!(to = %t.destination, kind = slot.carrier.kind(), "send error: {e}");
                }
                Ok(()) => {}
            }
            self.spare.push(buf);
        }
        blocked
    }
}

/// Takes the connections the core accepted and queues them for `RtEndpoint::accept`, or refuses
/// them when the endpoint is closing or the application is not keeping up.
fn take_accepted(state: &mut State, now: Instant, wakers: &mut Vec<Waker>) {
    while let Some(handle) = state.endpoint.accept() {
        let refuse = if state.closing_since.is_some() {
            Some(&b"server shutting down"[..])
        } else if state.incoming.len() >= MAX_PENDING_ACCEPTS {
            Some(&b"server busy"[..])
        } else {
            None
        };
        let Some(conn) = state.endpoint.connection(handle) else {
            continue;
        };
        if let Some(reason) = refuse {
            conn.close(now, 0, reason);
            continue;
        }
        let remote = conn.remote_address();
        let established = conn.is_established();
        let meta = state.track(handle, remote, false, wakers);
        if let Some(cs) = state.conns.get_mut(&handle) {
            cs.connected = established;
        }
        debug!(%remote, "connection accepted");
        state.incoming.push_back(meta);
        wakers.append(&mut state.accept_wakers);
    }
}

/// Turns the events of the connections the core touched since the last call (and only theirs:
/// idle connections cost nothing here) into wake-ups; forgets connections that ended or are
/// gone. Events of connections no handle tracks any more (closed through a handle, refused at
/// accept, abandoned handshake attempts of a reconnecting pool) are dropped: the core keeps a
/// drained connection until its last events are polled. Carrier switches are logged on the way.
fn dispatch_events(
    state: &mut State,
    touched: &mut Vec<gaptun_proto::ConnectionHandle>,
    wakers: &mut Vec<Waker>,
) {
    let mut ended = Vec::new();
    let State {
        endpoint,
        conns,
        carriers,
        figures,
        ..
    } = state;
    endpoint.take_touched(touched);
    // Their figures may have changed too: read again for the next snapshot.
    figures.touched(touched);
    for &handle in touched.iter() {
        log_carrier_switches(endpoint, carriers, handle);
        let Some(cs) = conns.get_mut(&handle) else {
            while endpoint.poll_event(handle).is_some() {}
            continue;
        };
        if endpoint.peek_connection(handle).is_none() {
            ended.push((handle, RtError::Gone));
            continue;
        }
        while let Some(event) = endpoint.poll_event(handle) {
            if let Some(reason) = apply_event(cs, event, wakers) {
                ended.push((handle, reason));
                break;
            }
        }
    }
    for (handle, reason) in ended {
        debug!(?handle, "connection ended: {reason}");
        state.forget(handle, reason, wakers);
    }
}

/// One info line per move of connection `handle`'s data to another carrier (a client with
/// `--carrier auto`): from, to and why, with the carriers by name.
fn log_carrier_switches(
    endpoint: &mut gaptun_proto::Endpoint,
    carriers: &[(CarrierId, &'static str, Option<std::net::SocketAddr>)],
    handle: gaptun_proto::ConnectionHandle,
) {
    let kind = |id: CarrierId| {
        carriers
            .iter()
            .find(|(c, _, _)| *c == id)
            .map_or("gone", |(_, k, _)| *k)
    };
    while let Some(switch) = endpoint.poll_path_switch(handle) {
        let to = format!("{} {}", kind(switch.to.carrier), switch.to.remote);
        match switch.from {
            Some(from) => tracing::info!(
                from = %format!("{} {}", kind(from.carrier), from.remote),
                %to,
                reason = %switch.reason,
                "carrier switch"
            ),
            None => tracing::info!(%to, reason = %switch.reason, "carrier chosen"),
        }
    }
}

/// Routes one event to the wakers waiting for it; returns the reason if the connection ended.
fn apply_event(cs: &mut ConnState, event: Event, wakers: &mut Vec<Waker>) -> Option<RtError> {
    match event {
        Event::Connected => {
            cs.connected = true;
            wakers.append(&mut cs.state_wakers);
            wakers.append(&mut cs.open_wakers);
        }
        Event::Stream(StreamEvent::Opened) => wakers.append(&mut cs.accept_wakers),
        Event::Stream(StreamEvent::Available) => wakers.append(&mut cs.open_wakers),
        Event::Stream(StreamEvent::Readable(id)) => wakers.extend(cs.readers.remove(&id)),
        Event::Stream(StreamEvent::Writable(id))
        | Event::Stream(StreamEvent::Stopped { id, .. }) => {
            wakers.extend(cs.writers.remove(&id));
        }
        Event::Stream(StreamEvent::Finished(_)) => {}
        Event::DatagramsReadable => wakers.append(&mut cs.datagram_wakers),
        Event::ConnectionLost(e) => return Some(RtError::Connection(e)),
    }
    None
}

/// The WARN's list of limit hits, each key named by `key_names` (the user it belongs to, set
/// by the application) and by its number where it has no name. The key itself never appears.
fn limit_summary(hits: &[gaptun_proto::endpoint::LimitHit], key_names: &[Arc<str>]) -> String {
    hits.iter()
        .map(|h| match h.key_index {
            Some(key) => match key_names.get(key) {
                Some(name) => format!("{:?} of {name}: {}", h.kind, h.count),
                None => format!("{:?} of key #{key}: {}", h.kind, h.count),
            },
            None => format!("{:?}: {}", h.kind, h.count),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod limit_tests {
    use gaptun_proto::endpoint::{LimitHit, LimitKind};

    use super::*;

    #[test]
    fn limit_warning_names_the_user() {
        let hits = [
            LimitHit {
                kind: LimitKind::KeyConnections,
                key_index: Some(1),
                count: 3,
            },
            LimitHit {
                kind: LimitKind::KeyConnections,
                key_index: Some(2),
                count: 1,
            },
            LimitHit {
                kind: LimitKind::HandshakeBudget,
                key_index: None,
                count: 7,
            },
        ];
        let names: Vec<Arc<str>> = vec!["key 1".into(), "alice".into()];
        assert_eq!(
            limit_summary(&hits, &names),
            "KeyConnections of alice: 3, KeyConnections of key #2: 1, HandshakeBudget: 7"
        );
    }
}
