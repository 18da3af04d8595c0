//! Carriers: what moves gaptun's datagrams between two hosts.
//!
//! The protocol core produces and consumes datagrams; it does not care whether they travel as UDP
//! on one port, UDP spread over a port range, or inside fake TCP segments. A [`Carrier`] is one
//! such way of moving datagrams, bound locally (one socket, one raw flow table, ...). An endpoint
//! drives any number of carriers at once; a connection's *path* is (carrier, local address,
//! remote address), and the core may move a connection from one path to another.
//!
//! The trait is modelled on quinn's `AsyncUdpSocket`: datagrams in and out, poll-based so that
//! one driver task can wait on many carriers, and batch friendly (several datagrams per receive
//! call, and GSO-style sends of equal-sized segments where the carrier can do it).

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::task::{Context, Poll};

pub mod route;
mod udp;

pub use udp::UdpCarrier;

/// Where a received buffer came from and how it is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// The sender.
    pub addr: SocketAddr,
    /// Bytes written into the buffer.
    pub len: usize,
    /// Size of each datagram in the buffer when a carrier coalesced several (GRO): the buffer
    /// holds `len / stride` datagrams `stride` bytes apart, the last possibly shorter. Equal to
    /// `len` for a single datagram (0 is read the same way).
    pub stride: usize,
}

impl Default for RecvMeta {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            len: 0,
            stride: 0,
        }
    }
}

/// One send: a datagram, or several of `segment_size` bytes each (the last may be shorter) to
/// one destination, when the carrier's [`Carrier::max_transmit_segments`] allows it.
#[derive(Debug, Clone, Copy)]
pub struct CarrierTransmit<'a> {
    /// The peer's address on this carrier.
    pub destination: SocketAddr,
    /// The datagram(s).
    pub contents: &'a [u8],
    /// `Some(size)`: `contents` is several datagrams of `size` bytes. Only set when the carrier
    /// reported more than one segment per transmit.
    pub segment_size: Option<usize>,
}

/// One way of carrying datagrams, bound locally.
///
/// Every method takes `&self`: the driver task polls receive and send, and statistics read
/// [`kind`](Carrier::kind) and [`local_addr`](Carrier::local_addr) from elsewhere. Errors other
/// than `WouldBlock` are reported to the driver, which logs them and carries on: like UDP, a
/// carrier is unreliable, and the protocol above recovers from lost datagrams.
pub trait Carrier: Send + Sync + fmt::Debug + 'static {
    /// A short name for statistics and log lines: `"udp"`, `"faketcp"`.
    fn kind(&self) -> &'static str;

    /// The local address datagrams are received on (with the real port when 0 was bound).
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Most datagrams one [`try_send`](Carrier::try_send) may carry (1: no segmentation).
    fn max_transmit_segments(&self) -> usize {
        1
    }

    /// Most datagrams one receive buffer may hold (GRO); receive buffers are sized for it.
    fn max_receive_segments(&self) -> usize {
        1
    }

    /// Receives a batch into `bufs`, describing each filled buffer in `meta` (same index), and
    /// returns how many were filled. `Pending` registers `cx` to be woken when more may arrive.
    ///
    /// `Ready(Ok(0))` is allowed: something other than data happened (say, an ICMP error was
    /// queued, see [`take_unreachable`](Carrier::take_unreachable)); the caller just polls again.
    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>>;

    /// Sends without waiting; `WouldBlock` when the carrier has no room now (then wait with
    /// [`poll_writable`](Carrier::poll_writable) and try again).
    fn try_send(&self, transmit: &CarrierTransmit<'_>) -> io::Result<()>;

    /// Ready when a send may succeed.
    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// True when the carrier delivers every datagram it accepts (TLS over TCP): the connection
    /// on it then does no loss detection, retransmission or congestion control of its own,
    /// which would only duplicate TCP's (see `TransportConfig::reliable_carriers`). Such a
    /// carrier never drops: when it has no room, `try_send` says `WouldBlock`.
    fn reliable(&self) -> bool {
        false
    }

    /// How to learn the largest datagram the route to a peer carries, for carriers whose
    /// datagrams are routed as they are (plain UDP): new connections then take their ceiling
    /// from the route (see `TransportConfig::mtu_from_route`). `None`: the configured
    /// ceiling and [`max_datagram_size`](Carrier::max_datagram_size) apply.
    fn route_mtu(&self) -> Option<gaptun_proto::RouteMtuQuery> {
        None
    }

    /// Largest datagram the carrier can take, when it is below the configured UDP payload
    /// (QUIC DATAGRAM frames are smaller than the UDP packets carrying them). `None`: no limit
    /// beyond the configuration's.
    fn max_datagram_size(&self) -> Option<u16> {
        None
    }

    /// Peers that reported our datagrams undeliverable (ICMP port unreachable) since the last
    /// call. Lets a client whose server port is closed fail its handshake at once instead of
    /// after the handshake timeout. Carriers without such reports keep the default.
    fn take_unreachable(&self) -> Vec<SocketAddr> {
        Vec::new()
    }
}

/// Sends `transmit` on `carrier` without waiting. `WouldBlock` means nothing was sent and the
/// carrier has no room now: the caller keeps the transmit, waits with
/// [`Carrier::poll_writable`] and tries again (while it goes on receiving: a driver that
/// stopped reading while it waited for room could deadlock two peers whose carriers both
/// push back, as TCP does).
///
/// A segmented send the carrier refuses (say, a NIC without GSO) is retried one datagram at a
/// time; if the carrier runs out of room part way, the rest is lost, which the protocol
/// recovers from (only carriers without segmented sends get there, and those are lossy
/// anyway). Other errors are returned for the caller to log; the datagrams are then lost.
pub(crate) fn try_send(carrier: &dyn Carrier, transmit: &CarrierTransmit<'_>) -> io::Result<()> {
    let segment_size = transmit
        .segment_size
        .filter(|&s| s > 0 && s < transmit.contents.len());
    let Some(size) = segment_size else {
        return carrier.try_send(&CarrierTransmit {
            segment_size: None,
            ..*transmit
        });
    };
    if carrier.max_transmit_segments() > 1 {
        match carrier.try_send(transmit) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
            Err(e) => tracing::debug!(
                kind = carrier.kind(),
                "segmented send failed ({e}); sending datagrams singly"
            ),
        }
    }
    let mut result = Ok(());
    for (i, chunk) in transmit.contents.chunks(size).enumerate() {
        let single = CarrierTransmit {
            destination: transmit.destination,
            contents: chunk,
            segment_size: None,
        };
        match carrier.try_send(&single) {
            Ok(()) => {}
            // Nothing sent yet: the whole transmit waits for room.
            Err(e) if i == 0 && e.kind() == io::ErrorKind::WouldBlock => return Err(e),
            Err(e) => result = Err(e),
        }
    }
    result
}

/// Datagrams of `max_payload` bytes one send on `carrier` may carry: its segment count, bounded
/// so that the whole batch stays under the kernel's 64 KiB limit.
pub(crate) fn segments_for(carrier: &dyn Carrier, max_payload: usize) -> usize {
    let by_size = gaptun_proto::MAX_TRANSMIT_BYTES / max_payload.max(1);
    carrier.max_transmit_segments().min(by_size).max(1)
}

/// Largest buffer one coalesced (GRO) read can fill.
const MAX_GRO_BUFFER: usize = 64 * 1024;

/// Least room for one datagram: a full Ethernet frame's payload.
const MIN_DATAGRAM_BUFFER: usize = 1500;

/// Datagrams received per batch at most.
const RECV_BATCH: usize = 32;

/// Receive buffers for one carrier, reused across calls.
#[derive(Debug)]
pub(crate) struct RecvBuffers {
    storage: Vec<u8>,
    chunk: usize,
    meta: Vec<RecvMeta>,
}

impl RecvBuffers {
    /// Buffers for `carrier`, each with room for as many datagrams of `max_payload` bytes as the
    /// carrier may coalesce. Each has a byte more than one such datagram needs, so that a
    /// longer one, which the kernel cuts to the buffer, shows by filling it (see
    /// [`truncated`](Self::truncated)).
    pub(crate) fn new(carrier: &dyn Carrier, max_payload: usize) -> Self {
        let one = (max_payload + 1).max(MIN_DATAGRAM_BUFFER);
        let chunk =
            (one * carrier.max_receive_segments().max(1)).clamp(one, MAX_GRO_BUFFER.max(one));
        Self {
            storage: vec![0; chunk * RECV_BATCH],
            chunk,
            meta: vec![RecvMeta::default(); RECV_BATCH],
        }
    }

    /// Polls `carrier` for one batch; returns how many buffers were filled.
    pub(crate) fn poll_recv(
        &mut self,
        carrier: &dyn Carrier,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let mut slices: Vec<IoSliceMut<'_>> = self
            .storage
            .chunks_mut(self.chunk)
            .map(IoSliceMut::new)
            .collect();
        carrier.poll_recv(cx, &mut slices, &mut self.meta)
    }

    /// Whether buffer `i` holds a datagram the kernel cut short: a single datagram that filled
    /// its buffer, which has a byte more than any datagram the core accepts (a coalesced
    /// buffer is never cut: the kernel coalesces only what fits, at most 64 KiB).
    pub(crate) fn truncated(&self, i: usize) -> bool {
        self.meta
            .get(i)
            .is_some_and(|m| m.len >= self.chunk && (m.stride == 0 || m.stride >= m.len))
    }

    /// The datagrams in buffer `i`: a coalescing carrier may have put several there, `stride`
    /// bytes apart.
    pub(crate) fn datagrams(&mut self, i: usize) -> (SocketAddr, std::slice::ChunksMut<'_, u8>) {
        let meta = self.meta.get(i).copied().unwrap_or_default();
        let start = i * self.chunk;
        let end = start + meta.len.min(self.chunk);
        let stride = if meta.stride == 0 {
            meta.len.max(1)
        } else {
            meta.stride
        };
        let buf = self.storage.get_mut(start..end).unwrap_or_default();
        (meta.addr, buf.chunks_mut(stride))
    }
}
