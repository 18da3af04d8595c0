//! [`FakeTcpSocket`]: datagrams in, datagrams out, carried as TCP segments of real-looking flows.
//!
//! To gaptun it behaves like a UDP socket: a client sends to `server:port` for any port of the
//! server's range, a server answers the client address each flow came from. Underneath, a
//! client keeps one flow per server port (its own local port each, reconnecting with a new
//! port and ISN after a RST, a FIN or silence), and a server keeps one flow per client
//! address. Segments of the handshake and ACKs are handled inside [`FakeTcpSocket::poll_recv`]
//! (whoever reads the socket) and in a small timer task (retransmitted SYNs, delayed and
//! keepalive ACKs, reconnections); data goes straight through.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use socket2::Socket;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::error::FakeTcpError;
use crate::flow::{CloseReason, Control, Flow, Timing, reset_for, send_data_batch};
use crate::nft::{RstGuard, Scope};
use crate::packet::{self, ACK, RST, SYN, Segment};
use crate::sys::{self, Filter};

/// Datagrams a client keeps while its flow for that port is (re)connecting; more are dropped,
/// as a full UDP buffer would.
const QUEUE_WHILE_CONNECTING: usize = 256;
/// Most flows a server keeps (SYN floods cost a bounded table).
const MAX_SERVER_FLOWS: usize = 4096;
/// Longest wait between a client's reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Largest packet we read (an IPv6 header and the longest payload its length field allows;
/// an IPv4 packet is shorter).
const RECV_BUFFER: usize = packet::IPV6_HEADER + 65535;

/// A fake-TCP server: the ports it listens on.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to answer on; `0.0.0.0` answers on every IPv4 address, `::` on every IPv6
    /// address (a carrier is of one family: IPv4 or IPv6, after this address).
    pub addr: IpAddr,
    /// Ports to listen on (one or a range).
    pub ports: RangeInclusive<u16>,
    /// Timers of the flows.
    pub timing: Timing,
}

/// A fake-TCP client: the server and its ports (one flow each).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's address (IPv4 or IPv6: the carrier's flows are of its family).
    pub server: IpAddr,
    /// The server's ports.
    pub ports: RangeInclusive<u16>,
    /// Timers of the flows.
    pub timing: Timing,
}

/// Counters of one carrier (cumulative).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FakeTcpStats {
    /// Flows that completed the handshake.
    pub established: u64,
    /// Flows ended by a RST (peer or middlebox).
    pub resets: u64,
    /// Flows ended by a FIN.
    pub fins: u64,
    /// Flows ended because nothing was heard for the idle timeout.
    pub idle_timeouts: u64,
    /// Handshakes that got no answer.
    pub handshake_timeouts: u64,
    /// Data segments sent and received.
    pub data_sent: u64,
    pub data_received: u64,
    /// Empty ACKs sent (delayed ACKs and keepalives; never one per data segment).
    pub acks_sent: u64,
    /// Bytes of whole IP packets sent (headers included), for overhead figures.
    pub wire_bytes_sent: u64,
    /// Datagrams dropped: no flow for the destination, or the reconnect queue full.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    established: AtomicU64,
    resets: AtomicU64,
    fins: AtomicU64,
    idle_timeouts: AtomicU64,
    handshake_timeouts: AtomicU64,
    data_sent: AtomicU64,
    data_received: AtomicU64,
    acks_sent: AtomicU64,
    wire_bytes_sent: AtomicU64,
    dropped: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A fake-TCP carrier (see the module documentation). Cheap to clone; the timer task and the
/// nftables table live until the last clone is dropped.
///
/// Incoming segments, handshake and RSTs included, are handled by whoever receives: keep a
/// receive pending at all times, as the runtime's driver does, or flows will not progress.
#[derive(Debug, Clone)]
pub struct FakeTcpSocket {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The raw IPv4 socket we send on.
    tx: AsyncFd<Socket>,
    /// The packet socket we receive on.
    rx: AsyncFd<Socket>,
    state: Mutex<State>,
    /// Wakes the timer task when a deadline came closer (a delayed ACK, a reconnection).
    /// Shared with the task, which must not keep `Inner` alive while it waits.
    timer: Arc<Notify>,
    counters: Counters,
    local: SocketAddr,
    timer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    _rules: RstGuard,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.timer_task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

#[derive(Debug)]
struct State {
    role: Role,
    timing: Timing,
    rng: StdRng,
    recv: RecvSlots,
    send_buf: Vec<u8>,
    /// One buffer per segment of a batch send, reused.
    batch: Vec<Vec<u8>>,
}

/// Buffers one `recvmmsg` fills: [`sys::BATCH`] packets of up to [`RECV_BUFFER`] bytes.
#[derive(Debug)]
struct RecvSlots {
    storage: Vec<u8>,
    lens: [usize; sys::BATCH],
}

impl RecvSlots {
    fn new() -> Self {
        Self {
            storage: vec![0; RECV_BUFFER * sys::BATCH],
            lens: [0; sys::BATCH],
        }
    }

    /// Reads up to `max` packets (at most [`sys::BATCH`]) in one call.
    fn read(&mut self, socket: &Socket, max: usize) -> io::Result<usize> {
        let mut bufs: Vec<IoSliceMut<'_>> = self
            .storage
            .chunks_mut(RECV_BUFFER)
            .take(max.min(sys::BATCH))
            .map(IoSliceMut::new)
            .collect();
        sys::recv_batch(socket, &mut bufs, &mut self.lens)
    }

    /// Packet `i` of the last read.
    fn packet(&self, i: usize) -> &[u8] {
        let len = self.lens.get(i).copied().unwrap_or(0).min(RECV_BUFFER);
        self.storage
            .get(i * RECV_BUFFER..i * RECV_BUFFER + len)
            .unwrap_or_default()
    }
}

#[derive(Debug)]
enum Role {
    Server {
        addr: IpAddr,
        ports: RangeInclusive<u16>,
        flows: HashMap<SocketAddr, Flow>,
    },
    Client {
        server: IpAddr,
        local_ip: IpAddr,
        slots: HashMap<u16, Slot>,
    },
}

/// A client's flow to one server port, and what it needs to reconnect.
#[derive(Debug)]
struct Slot {
    flow: Option<Flow>,
    /// Keeps the flow's local port ours (see [`sys::reserve_port`]).
    reservation: Option<Socket>,
    queue: VecDeque<Vec<u8>>,
    /// When to open the next flow (none while one exists).
    retry_at: Option<Instant>,
    failures: u32,
}

impl FakeTcpSocket {
    /// Starts a server: opens its sockets and installs its nftables rules. Needs a tokio runtime.
    pub fn server(config: ServerConfig) -> Result<Self, FakeTcpError> {
        // The sockets first: without the privilege they are the one-line error to show.
        let tx = sys::send_socket(config.addr.is_ipv6())?;
        let rx = sys::recv_socket(&Filter::ToPorts {
            addr: config.addr,
            ports: config.ports.clone(),
        })?;
        let rules = RstGuard::install(&Scope::Server {
            addr: config.addr,
            ports: config.ports.clone(),
        })?;
        let local = SocketAddr::new(config.addr, *config.ports.start());
        info!(%local, ports = ?config.ports, table = rules.table(), "fake TCP server listening");
        let role = Role::Server {
            addr: config.addr,
            ports: config.ports,
            flows: HashMap::new(),
        };
        Self::start((tx, rx), rules, role, config.timing, local)
    }

    /// Starts a client: one flow per server port, connecting at once. Needs a tokio runtime.
    pub fn client(config: ClientConfig) -> Result<Self, FakeTcpError> {
        let local_ip = sys::source_for(config.server)?;
        let tx = sys::send_socket(config.server.is_ipv6())?;
        let rx = sys::recv_socket(&Filter::FromPorts {
            server: config.server,
            ports: config.ports.clone(),
        })?;
        let rules = RstGuard::install(&Scope::Client {
            server: config.server,
            local: local_ip,
            ports: config.ports.clone(),
        })?;
        let now = Instant::now();
        let slots = config
            .ports
            .clone()
            .map(|port| {
                let slot = Slot {
                    flow: None,
                    reservation: None,
                    queue: VecDeque::new(),
                    retry_at: Some(now),
                    failures: 0,
                };
                (port, slot)
            })
            .collect();
        let local = SocketAddr::new(local_ip, 0);
        let role = Role::Client {
            server: config.server,
            local_ip,
            slots,
        };
        Self::start((tx, rx), rules, role, config.timing, local)
    }

    fn start(
        (tx, rx): (Socket, Socket),
        rules: RstGuard,
        role: Role,
        timing: Timing,
        local: SocketAddr,
    ) -> Result<Self, FakeTcpError> {
        let inner = Arc::new(Inner {
            tx: register(tx, Interest::WRITABLE)?,
            rx: register(rx, Interest::READABLE)?,
            state: Mutex::new(State {
                role,
                timing,
                rng: StdRng::from_os_rng(),
                recv: RecvSlots::new(),
                send_buf: Vec::with_capacity(RECV_BUFFER),
                batch: Vec::new(),
            }),
            timer: Arc::new(Notify::new()),
            counters: Counters::default(),
            local,
            timer_task: Mutex::new(None),
            _rules: rules,
        });
        let task = tokio::spawn(timer_task(Arc::downgrade(&inner), inner.timer.clone()));
        if let Ok(mut slot) = inner.timer_task.lock() {
            *slot = Some(task);
        }
        Ok(Self { inner })
    }

    /// The server's address and first port; a client's source address with port 0 (each flow
    /// has its own port).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Bytes a fake-TCP datagram costs on the wire beyond what the same datagram costs over UDP
    /// (TCP header with timestamps, 32 bytes, instead of UDP's 8). Subtract it from the UDP
    /// payload size that fits a path to get the largest datagram this carrier takes whole.
    pub const EXTRA_OVERHEAD_VS_UDP: usize = packet::TCP_HEADER + packet::DATA_OPTIONS - 8;

    /// The counters so far.
    pub fn stats(&self) -> FakeTcpStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FakeTcpStats {
            established: get(&c.established),
            resets: get(&c.resets),
            fins: get(&c.fins),
            idle_timeouts: get(&c.idle_timeouts),
            handshake_timeouts: get(&c.handshake_timeouts),
            data_sent: get(&c.data_sent),
            data_received: get(&c.data_received),
            acks_sent: get(&c.acks_sent),
            wire_bytes_sent: get(&c.wire_bytes_sent),
            dropped: get(&c.dropped),
        }
    }

    /// Established flows right now.
    pub fn established_flows(&self) -> usize {
        let state = self.inner.lock();
        match &state.role {
            Role::Server { flows, .. } => flows.values().filter(|f| f.is_established()).count(),
            Role::Client { slots, .. } => slots
                .values()
                .filter(|s| s.flow.as_ref().is_some_and(Flow::is_established))
                .count(),
        }
    }

    /// The (local, remote) addresses of the established flows, for tests and `stats`.
    pub fn flow_addresses(&self) -> Vec<(SocketAddr, SocketAddr)> {
        let state = self.inner.lock();
        let flows: Vec<&Flow> = match &state.role {
            Role::Server { flows, .. } => flows.values().collect(),
            Role::Client { slots, .. } => slots.values().filter_map(|s| s.flow.as_ref()).collect(),
        };
        flows
            .into_iter()
            .filter(|f| f.is_established())
            .map(|f| (f.local(), f.remote()))
            .collect()
    }

    /// Receives datagrams into `bufs`, returning how many arrived and, in `meta`, each one's
    /// length and sender. Handshake and ACK segments are handled here and not returned.
    pub fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [(usize, SocketAddr)],
    ) -> Poll<io::Result<usize>> {
        let capacity = bufs.len().min(meta.len());
        if capacity == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut filled = 0;
        loop {
            let mut guard = match self.inner.rx.poll_read_ready(cx) {
                Poll::Ready(guard) => guard?,
                Poll::Pending if filled > 0 => return Poll::Ready(Ok(filled)),
                Poll::Pending => return Poll::Pending,
            };
            let mut state = self.inner.lock();
            loop {
                let read = guard.try_io(|fd| state.recv.read(fd.get_ref(), capacity - filled));
                let got = match read {
                    Ok(Ok(got)) => got,
                    Ok(Err(e)) => {
                        if filled > 0 {
                            return Poll::Ready(Ok(filled));
                        }
                        return Poll::Ready(Err(e));
                    }
                    // Readiness cleared: poll again (registers the waker).
                    Err(_would_block) => break,
                };
                // At most `capacity - filled` packets were read, so each data segment among
                // them has a buffer left.
                for i in 0..got {
                    if let Some((n, from)) = self.inner.on_packet(&mut state, i, &mut bufs[filled])
                    {
                        meta[filled] = (n, from);
                        filled += 1;
                    }
                }
                if filled == capacity {
                    return Poll::Ready(Ok(filled));
                }
            }
        }
    }

    /// Receives one datagram.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut meta = [(0, self.inner.local)];
        std::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut *buf)];
            self.poll_recv(cx, &mut bufs, &mut meta)
        })
        .await?;
        Ok(meta[0])
    }

    /// Sends one datagram to `destination` without waiting: `WouldBlock` when the kernel buffer
    /// is full (then [`FakeTcpSocket::poll_writable`]). A datagram for a flow that is being
    /// (re)established is queued (a client) or dropped (a server: it has no flow to that
    /// address any more), as UDP loses datagrams.
    pub fn try_send(&self, destination: SocketAddr, payload: &[u8]) -> io::Result<()> {
        self.try_send_segments(destination, payload, payload.len())
            .map(drop)
    }

    /// Sends `contents` as datagrams of `segment_size` bytes (the last may be shorter), as a
    /// GSO batch would be split, with as few system calls as possible (`sendmmsg`, up to
    /// [`FakeTcpSocket::MAX_BATCH`] segments each). Returns how many bytes went.
    ///
    /// Either none go (the error is returned and the flow is as before, so the batch can be
    /// sent again after `WouldBlock`), or all go, or, when the kernel refuses midway, the first
    /// ones go and the rest are dropped and counted, as a full UDP send buffer would drop them.
    /// Datagrams for a flow being (re)established are handled as in
    /// [`FakeTcpSocket::try_send`].
    pub fn try_send_segments(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: usize,
    ) -> io::Result<usize> {
        let size = segment_size.max(1);
        let segments = contents.len().div_ceil(size).max(1) as u64;
        let mut state = self.inner.lock();
        let state = &mut *state;
        let now = Instant::now();
        let flow = match &mut state.role {
            Role::Server { flows, .. } => match flows.get_mut(&destination) {
                Some(flow) if flow.is_established() => flow,
                _ => {
                    bump(&self.inner.counters.dropped, segments);
                    return Ok(0);
                }
            },
            Role::Client { server, slots, .. } => {
                let slot = match slots.get_mut(&destination.port()) {
                    Some(slot) if destination.ip() == *server => slot,
                    _ => {
                        bump(&self.inner.counters.dropped, segments);
                        return Ok(0);
                    }
                };
                match &mut slot.flow {
                    Some(flow) if flow.is_established() => flow,
                    _ => {
                        let mut queued = 0;
                        for chunk in contents.chunks(size) {
                            if slot.queue.len() < QUEUE_WHILE_CONNECTING {
                                slot.queue.push_back(chunk.to_vec());
                                queued += chunk.len();
                            } else {
                                bump(&self.inner.counters.dropped, 1);
                            }
                        }
                        return Ok(queued);
                    }
                }
            }
        };
        let dst = socket2::SockAddr::from(SocketAddr::new(flow.remote().ip(), 0));
        let fd = &self.inner.tx;
        let sent = send_data_batch(flow, contents, size, now, &mut state.batch, |packets| {
            fd.try_io(Interest::WRITABLE, |socket| {
                sys::send_batch(socket, packets, &dst)
            })
        });
        let counters = &self.inner.counters;
        bump(&counters.wire_bytes_sent, sent.wire_bytes as u64);
        bump(&counters.data_sent, sent.segments as u64);
        match sent.error {
            Some(e) if sent.segments == 0 => Err(e),
            Some(e) => {
                let lost = segments.saturating_sub(sent.segments as u64);
                bump(&counters.dropped, lost);
                debug!(remote = %destination, lost, "fake TCP: batch cut short: {e}");
                Ok(sent.payload_bytes)
            }
            None => Ok(sent.payload_bytes),
        }
    }

    /// Most segments one `sendmmsg` or `recvmmsg` call moves.
    pub const MAX_BATCH: usize = sys::BATCH;

    /// Ready when a send may succeed again after `WouldBlock`.
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let guard = ready!(self.inner.tx.poll_write_ready(cx))?;
        drop(guard);
        Poll::Ready(Ok(()))
    }

    /// Sends one datagram, waiting while the kernel buffer is full.
    pub async fn send_to(&self, payload: &[u8], destination: SocketAddr) -> io::Result<()> {
        loop {
            match self.try_send(destination, payload) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| self.poll_writable(cx)).await?;
                }
                other => return other,
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves flow state we can still use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends one whole IP packet to `dst`.
    fn send_packet(&self, packet: &[u8], dst: IpAddr) -> io::Result<()> {
        // Port 0: a raw socket takes the protocol from the socket, not the address.
        let addr = socket2::SockAddr::from(SocketAddr::new(dst, 0));
        let sent = self
            .tx
            .try_io(Interest::WRITABLE, |socket| socket.send_to(packet, &addr));
        match sent {
            // tokio answers `WouldBlock` without a system call until its reactor has seen the
            // socket writable once, which is never the case for the SYNs sent right after the
            // socket is made: they were lost and every flow started a second late. A raw
            // socket's send buffer is almost never full, so try the socket itself.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.tx.get_ref().send_to(packet, &addr)?;
            }
            other => {
                other?;
            }
        }
        bump(&self.counters.wire_bytes_sent, packet.len() as u64);
        Ok(())
    }

    /// Sends a control segment of `flow` (best effort: the peer repeats what it needs).
    fn send_control(&self, flow: &mut Flow, control: Control, now: Instant, buf: &mut Vec<u8>) {
        flow.write_control(control, now, buf);
        if control == Control::Ack {
            bump(&self.counters.acks_sent, 1);
        }
        if let Err(e) = self.send_packet(buf, flow.remote().ip()) {
            debug!(remote = %flow.remote(), "fake TCP: control segment not sent: {e}");
        }
    }

    /// Handles packet `index` of the last batch read into `state.recv`; a data payload is
    /// copied into `out` and returned with its sender.
    fn on_packet(
        &self,
        state: &mut State,
        index: usize,
        out: &mut [u8],
    ) -> Option<(usize, SocketAddr)> {
        let State {
            role,
            timing,
            rng,
            recv,
            send_buf,
            ..
        } = state;
        let seg = packet::parse(recv.packet(index)).ok()?;
        let now = Instant::now();
        match role {
            Role::Server { addr, ports, flows } => {
                if !ports.contains(&seg.dst.port())
                    || (!addr.is_unspecified() && seg.dst.ip() != *addr)
                {
                    return None;
                }
                let wildcard = addr.is_unspecified();
                self.server_segment(flows, &seg, wildcard, *timing, now, rng, send_buf, out)
            }
            Role::Client { slots, .. } => {
                let slot = slots.get_mut(&seg.src.port())?;
                let flow = slot.flow.as_mut()?;
                if flow.local() != seg.dst || flow.remote() != seg.src {
                    return None;
                }
                let outcome = flow.on_segment(&seg, now);
                if let Some(control) = outcome.reply {
                    self.send_control(flow, control, now, send_buf);
                }
                if outcome.established {
                    bump(&self.counters.established, 1);
                    slot.failures = 0;
                    debug!(local = %flow.local(), remote = %flow.remote(), "fake TCP flow established");
                    self.flush_queue(slot, now, send_buf);
                }
                if let Some(reason) = outcome.closed {
                    self.client_flow_closed(slot, reason, now);
                    self.timer.notify_one();
                    return None;
                }
                if outcome.ack_scheduled {
                    self.timer.notify_one();
                }
                outcome.deliver.then(|| self.deliver(&seg, out))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn server_segment(
        &self,
        flows: &mut HashMap<SocketAddr, Flow>,
        seg: &Segment<'_>,
        wildcard: bool,
        timing: Timing,
        now: Instant,
        rng: &mut StdRng,
        send_buf: &mut Vec<u8>,
        out: &mut [u8],
    ) -> Option<(usize, SocketAddr)> {
        let is_syn = seg.flags & (SYN | ACK | RST) == SYN;
        let fresh_syn = is_syn && flows.get(&seg.src).is_none_or(|f| f.irs() != seg.seq);
        // Listening on every address, the packet socket also sees segments this host only
        // forwards (a router with the same port open behind it): those are not ours to answer.
        let unknown = fresh_syn || !flows.contains_key(&seg.src);
        if unknown && wildcard && !sys::is_local(seg.dst.ip()) {
            return None;
        }
        if fresh_syn {
            if flows.len() >= MAX_SERVER_FLOWS && !flows.contains_key(&seg.src) {
                flows.retain(|_, f| f.is_established());
                if flows.len() >= MAX_SERVER_FLOWS {
                    return None;
                }
            }
            let mut flow = Flow::accept(seg, timing, now, rng);
            if let Some(mss) = route_mss(seg.src) {
                flow.set_mss(mss);
            }
            self.send_control(&mut flow, Control::SynAck, now, send_buf);
            if flows.insert(seg.src, flow).is_some() {
                debug!(remote = %seg.src, "fake TCP: client reconnected from the same address");
            }
            self.timer.notify_one();
            return None;
        }
        let Some(flow) = flows.get_mut(&seg.src) else {
            if seg.flags & RST == 0 {
                // Not ours (we restarted, or the flow was forgotten): say so, as the kernel
                // would, so the client starts over at once.
                reset_for(seg, send_buf);
                let _ = self.send_packet(send_buf, seg.src.ip());
            }
            return None;
        };
        if flow.local() != seg.dst {
            return None;
        }
        let outcome = flow.on_segment(seg, now);
        if let Some(control) = outcome.reply {
            self.send_control(flow, control, now, send_buf);
        }
        if outcome.established {
            bump(&self.counters.established, 1);
            debug!(remote = %seg.src, local = %seg.dst, "fake TCP flow accepted");
        }
        if let Some(reason) = outcome.closed {
            self.count_close(reason);
            debug!(remote = %seg.src, ?reason, "fake TCP flow closed");
            flows.remove(&seg.src);
            return None;
        }
        if outcome.ack_scheduled {
            self.timer.notify_one();
        }
        outcome.deliver.then(|| self.deliver(seg, out))
    }

    fn deliver(&self, seg: &Segment<'_>, out: &mut [u8]) -> (usize, SocketAddr) {
        bump(&self.counters.data_received, 1);
        let n = seg.payload.len().min(out.len());
        out[..n].copy_from_slice(&seg.payload[..n]);
        (n, seg.src)
    }

    fn count_close(&self, reason: CloseReason) {
        let counter = match reason {
            CloseReason::Reset => &self.counters.resets,
            CloseReason::Fin => &self.counters.fins,
            CloseReason::Idle => &self.counters.idle_timeouts,
            CloseReason::HandshakeTimeout => &self.counters.handshake_timeouts,
        };
        bump(counter, 1);
    }

    /// A client flow ended: reconnect at once the first time, then back off.
    fn client_flow_closed(&self, slot: &mut Slot, reason: CloseReason, now: Instant) {
        self.count_close(reason);
        let Some(flow) = slot.flow.take() else { return };
        slot.reservation = None;
        let delay = if slot.failures == 0 {
            Duration::ZERO
        } else {
            (Duration::from_millis(500) * (1 << slot.failures.min(6))).min(MAX_BACKOFF)
        };
        slot.failures += 1;
        slot.retry_at = Some(now + delay);
        info!(remote = %flow.remote(), ?reason, ?delay, "fake TCP flow lost; reconnecting");
    }

    fn flush_queue(&self, slot: &mut Slot, now: Instant, send_buf: &mut Vec<u8>) {
        let Some(flow) = slot.flow.as_mut() else {
            return;
        };
        while let Some(payload) = slot.queue.pop_front() {
            flow.write_data(&payload, now, send_buf);
            if self.send_packet(send_buf, flow.remote().ip()).is_err() {
                bump(&self.counters.dropped, 1 + slot.queue.len() as u64);
                slot.queue.clear();
                return;
            }
            flow.commit_data(payload.len(), now);
            bump(&self.counters.data_sent, 1);
        }
    }

    /// Runs every flow's timers and the client's reconnections; returns the next deadline.
    fn on_timers(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.lock();
        let State {
            role,
            timing,
            rng,
            send_buf,
            ..
        } = &mut *state;
        let mut next: Option<Instant> = None;
        let mut note = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n: Instant| n.min(at)));
            }
        };
        match role {
            Role::Server { flows, .. } => {
                flows.retain(|remote, flow| {
                    if flow.next_deadline().is_some_and(|at| at <= now)
                        && let Some(control) = flow.on_timeout(now)
                    {
                        self.send_control(flow, control, now, send_buf);
                    }
                    if let Some(reason) = flow.closed() {
                        self.count_close(reason);
                        debug!(%remote, ?reason, "fake TCP flow forgotten");
                        return false;
                    }
                    note(flow.next_deadline());
                    true
                });
            }
            Role::Client {
                server,
                local_ip,
                slots,
            } => {
                for (&port, slot) in slots.iter_mut() {
                    if let Some(flow) = slot.flow.as_mut() {
                        if flow.next_deadline().is_some_and(|at| at <= now)
                            && let Some(control) = flow.on_timeout(now)
                        {
                            self.send_control(flow, control, now, send_buf);
                        }
                        if let Some(reason) = flow.closed() {
                            self.client_flow_closed(slot, reason, now);
                        }
                    }
                    if slot.flow.is_none() && slot.retry_at.is_some_and(|at| at <= now) {
                        let remote = SocketAddr::new(*server, port);
                        self.open_flow(slot, *local_ip, remote, *timing, now, rng, send_buf);
                    }
                    match &slot.flow {
                        Some(flow) => note(flow.next_deadline()),
                        None => note(slot.retry_at),
                    }
                }
            }
        }
        next
    }

    #[allow(clippy::too_many_arguments)]
    fn open_flow(
        &self,
        slot: &mut Slot,
        local_ip: IpAddr,
        remote: SocketAddr,
        timing: Timing,
        now: Instant,
        rng: &mut StdRng,
        send_buf: &mut Vec<u8>,
    ) {
        // The local port must not fall in the server's range on the same address, or our
        // own filter would take our segments for the server's.
        let reserved = (0..8).find_map(|_| match sys::reserve_port(local_ip) {
            Ok((socket, port)) if !(local_ip == remote.ip() && port == remote.port()) => {
                Some((socket, port))
            }
            Ok(_) => None,
            Err(e) => {
                warn!("fake TCP: no local port for a new flow: {e}");
                None
            }
        });
        let Some((reservation, port)) = reserved else {
            slot.retry_at = Some(now + Duration::from_secs(1));
            return;
        };
        let mut flow = Flow::connect(SocketAddr::new(local_ip, port), remote, timing, now, rng);
        if let Some(mss) = route_mss(remote) {
            flow.set_mss(mss);
        }
        self.send_control(&mut flow, Control::Syn, now, send_buf);
        debug!(local = %flow.local(), %remote, "fake TCP: SYN sent");
        slot.flow = Some(flow);
        slot.reservation = Some(reservation);
        slot.retry_at = None;
    }
}

/// The MSS Linux would announce to `remote`: its route's MTU less the IP and TCP headers
/// (1460 over Ethernet, 65 483 on loopback; IPv6 20 less). `None` when the route is not known
/// (the flow keeps Ethernet's).
fn route_mss(remote: SocketAddr) -> Option<u16> {
    // The route query answers in UDP payload terms over IPv4 (MTU less 28 bytes).
    let udp = usize::from(gaptun_runtime::carrier::route::udp_payload_to(remote)?);
    let headers = packet::ip_header_len(remote.ip()) + packet::TCP_HEADER;
    u16::try_from((udp + 28).saturating_sub(headers)).ok()
}

/// Registers one of the carrier's sockets with tokio's reactor.
///
/// The crate's only `unsafe`: tokio requires the caller to promise that the descriptor stays
/// open and is not replaced while registered (its I/O-safety contract). It holds: the
/// `socket2::Socket` owns the descriptor, the `AsyncFd` owns the `Socket` and hands out only
/// shared references, so the descriptor is closed only when the `AsyncFd` itself is dropped,
/// after deregistration.
#[allow(unsafe_code)]
fn register(socket: Socket, interest: Interest) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: see above; `socket` is moved into the `AsyncFd` and owned by it from here on.
    let registered = unsafe { AsyncFd::register_with_interest(socket, interest) };
    registered.map_err(io::Error::from)
}

/// Runs the timers until the carrier is dropped.
async fn timer_task(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let next = strong.on_timers();
        drop(strong);
        let wait = next.map_or(Duration::from_secs(1), |at| {
            at.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            () = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
            () = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_routes_take_64k_segments_that_an_ip_packet_still_holds() {
        // Loopback's MTU is 65 535 or 65 536: the UDP figure less 24 would make an IPv4
        // packet longer than its length field holds, so the ceiling stops at 65 483.
        let v4 = crate::carrier::datagram_ceiling_to("127.0.0.1:9".parse().expect("address"));
        assert_eq!(v4, Some(65_483));
        assert_eq!(
            usize::from(v4.unwrap_or(0)) + packet::DATA_OVERHEAD,
            usize::from(u16::MAX)
        );
        // Linux announces the route's MTU less 40 bytes of IPv4 and TCP headers (65 495 or
        // 65 496 here), IPv6 20 bytes less.
        let mss = route_mss("127.0.0.1:9".parse().expect("address")).unwrap_or(0);
        assert!((65_495..=65_496).contains(&mss), "loopback MSS {mss}");
        if std::net::UdpSocket::bind("[::1]:0").is_ok() {
            let v6: SocketAddr = "[::1]:9".parse().expect("address");
            // The core takes IPv6's 20 extra bytes off this ceiling itself.
            assert_eq!(crate::carrier::datagram_ceiling_to(v6), Some(65_483));
            let mss6 = route_mss(v6).unwrap_or(0);
            assert!(
                (65_475..=65_476).contains(&mss6),
                "IPv6 loopback MSS {mss6}"
            );
        }
    }

    #[test]
    fn no_route_no_ceiling() {
        // A link-local address without a scope names no interface: the route is unknown and
        // the configured ceiling and Ethernet's MSS stay.
        let nowhere: SocketAddr = "[fe80::1]:9".parse().expect("address");
        assert_eq!(crate::carrier::datagram_ceiling_to(nowhere), None);
        assert_eq!(route_mss(nowhere), None);
    }
}
