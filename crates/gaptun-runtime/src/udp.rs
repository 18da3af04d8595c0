//! The UDP socket, with batched I/O through `quinn-udp`.
//!
//! On Linux, receiving uses `recvmmsg` (many datagrams per system call) and GRO (the kernel
//! coalesces datagrams of one flow into a single buffer, split again by `stride`); sending uses
//! GSO (one call sends a buffer of equal-sized datagrams). Where the kernel or NIC lacks support,
//! `quinn-udp` reports one segment and we fall back to one datagram per call.
//!
//! ICMP errors: Linux reports "port unreachable" on an unconnected UDP socket only with
//! `IP_RECVERR`, through the socket's error queue, which names the destination that failed. We
//! turn it on so that a client whose first Initial meets a closed server port learns it at once
//! ([`UdpIo::take_port_unreachable`]) instead of waiting out the handshake timeout.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Kernel socket buffer we ask for: large enough for a burst at high bandwidth-delay products.
/// The kernel may grant less (`net.core.rmem_max`); that only costs performance.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Largest buffer one GRO read can fill.
const MAX_GRO_BUFFER: usize = 64 * 1024;

/// Least room for one datagram: a full Ethernet frame's payload.
const MIN_DATAGRAM_BUFFER: usize = 1500;

/// Most bytes one GSO send may carry (the kernel's limit is 64 KiB including headers).
const MAX_GSO_BYTES: usize = 60 * 1024;

/// A bound UDP socket plus `quinn-udp`'s per-socket state (GSO/GRO support).
#[derive(Debug)]
pub(crate) struct UdpIo {
    socket: UdpSocket,
    state: UdpSocketState,
}

impl UdpIo {
    /// Binds `addr`. Must run inside a tokio runtime.
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<Self> {
        let std_socket = std::net::UdpSocket::bind(addr)?;
        let state = UdpSocketState::new((&std_socket).into())?;
        // Best effort: refusal only lowers throughput.
        let _ = state.set_recv_buffer_size((&std_socket).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&std_socket).into(), SOCKET_BUFFER);
        enable_icmp_errors(&std_socket, addr.is_ipv6());
        std_socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(std_socket)?;
        Ok(Self { socket, state })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Datagrams one send call may carry (1 without GSO).
    pub(crate) fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Datagrams of `max_payload` bytes one send call may carry: GSO's segment count, bounded so
    /// the whole batch stays under the kernel's 64 KiB limit.
    pub(crate) fn max_segments_for(&self, max_payload: usize) -> usize {
        let by_size = MAX_GSO_BYTES / max_payload.max(1);
        self.max_gso_segments().min(by_size).max(1)
    }

    /// Size of one receive buffer: room for as many datagrams of `max_payload` bytes as GRO may
    /// coalesce. A longer datagram is truncated, and then fails authentication in the core, which
    /// would drop it for its size anyway.
    pub(crate) fn recv_buffer_size(&self, max_payload: usize) -> usize {
        let one = max_payload.max(MIN_DATAGRAM_BUFFER);
        (one * self.state.gro_segments()).clamp(one, MAX_GRO_BUFFER.max(one))
    }

    /// Waits until the socket may have datagrams to read or an ICMP error to report.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.socket
            .ready(Interest::READABLE | Interest::ERROR)
            .await
            .map(drop)
    }

    /// Destinations that answered with ICMP port unreachable since the last call (drains the
    /// socket's error queue; other ICMP errors are dropped). Never blocks.
    pub(crate) fn take_port_unreachable(&self) -> Vec<SocketAddr> {
        let mut found = Vec::new();
        // The closure always ends with `WouldBlock` once the queue is empty, which is what makes
        // tokio clear the socket's error readiness (else `readable` would return at once again).
        let _ = self.socket.try_io(Interest::ERROR, || {
            drain_error_queue(&self.socket, &mut found);
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
        found
    }

    /// Receives a batch without blocking; `WouldBlock` when nothing is queued.
    pub(crate) fn try_recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.socket.try_io(Interest::READABLE, || {
            self.state.recv((&self.socket).into(), bufs, meta)
        })
    }

    /// Sends `contents` to `destination`: one datagram, or several of `segment_size` bytes each
    /// (the last may be shorter). Waits while the kernel buffer is full. Errors other than that
    /// are returned; UDP being unreliable, the caller logs and carries on.
    pub(crate) async fn send(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let segment_size = segment_size.filter(|&s| s > 0 && s < contents.len());
        if segment_size.is_some() && self.max_gso_segments() > 1 {
            match self.send_one(destination, contents, segment_size).await {
                Ok(()) => return Ok(()),
                // A NIC without GSO support (quinn-udp then turns GSO off), or a batch the kernel
                // refuses: send the datagrams one by one instead.
                Err(e) => tracing::debug!("GSO send failed ({e}); sending datagrams singly"),
            }
        }
        match segment_size {
            Some(size) => {
                let mut result = Ok(());
                for chunk in contents.chunks(size) {
                    if let Err(e) = self.send_one(destination, chunk, None).await {
                        result = Err(e);
                    }
                }
                result
            }
            None => self.send_one(destination, contents, None).await,
        }
    }

    async fn send_one(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        loop {
            self.socket.writable().await?;
            let sent = self.socket.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.socket).into(), &transmit)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

/// Asks the kernel to queue ICMP errors for this unconnected socket (best effort: without it we
/// only lose the early "port closed" message).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn enable_icmp_errors(socket: &std::net::UdpSocket, v6: bool) {
    use nix::sys::socket::{setsockopt, sockopt};
    let result = if v6 {
        setsockopt(socket, sockopt::Ipv6RecvErr, &true)
    } else {
        setsockopt(socket, sockopt::Ipv4RecvErr, &true)
    };
    if let Err(e) = result {
        tracing::debug!("cannot enable ICMP error reports on the UDP socket: {e}");
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn enable_icmp_errors(_socket: &std::net::UdpSocket, _v6: bool) {}

/// Reads the error queue until it is empty, collecting the destinations of port-unreachable
/// reports, then clears the socket's pending error.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn drain_error_queue(socket: &UdpSocket, found: &mut Vec<SocketAddr>) {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{
        ControlMessageOwned, MsgFlags, SockaddrStorage, getsockopt, recvmsg, sockopt,
    };
    const CMSG_BUFFER: usize = 512;
    /// Bounds the work per call, should the queue refill as fast as we read.
    const MAX_REPORTS: usize = 64;
    let fd = socket.as_raw_fd();
    for _ in 0..MAX_REPORTS {
        let mut payload = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut payload)];
        // Room for the error report and the other control messages `quinn-udp` turned on for
        // this socket (packet info, ECN, GRO), which the kernel attaches to queued errors too.
        let mut cmsg = vec![0u8; CMSG_BUFFER];
        let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
        let Ok(msg) = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), flags) else {
            break;
        };
        let destination = msg.address.and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(*v4))
                .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6)))
        });
        let Ok(cmsgs) = msg.cmsgs() else { continue };
        for c in cmsgs {
            let (ControlMessageOwned::Ipv4RecvErr(err, _)
            | ControlMessageOwned::Ipv6RecvErr(err, _)) = c
            else {
                continue;
            };
            if err.ee_errno == libc::ECONNREFUSED as u32
                && let Some(d) = destination
            {
                found.push(d);
            }
        }
    }
    // Reading the pending error clears it, so the next receive does not fail with it.
    let _ = getsockopt(socket, sockopt::SocketError);
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn drain_error_queue(_socket: &UdpSocket, _found: &mut Vec<SocketAddr>) {}

/// Receive buffers for one batch, reused across calls.
#[derive(Debug)]
pub(crate) struct RecvBuffers {
    storage: Vec<u8>,
    chunk: usize,
    pub(crate) meta: Vec<RecvMeta>,
}

impl RecvBuffers {
    pub(crate) fn new(io: &UdpIo, max_payload: usize) -> Self {
        let chunk = io.recv_buffer_size(max_payload);
        let batch = quinn_udp::BATCH_SIZE.max(1);
        Self {
            storage: vec![0; chunk * batch],
            chunk,
            meta: vec![RecvMeta::default(); batch],
        }
    }

    /// Receives one batch; returns how many buffers were filled.
    pub(crate) fn recv(&mut self, io: &UdpIo) -> io::Result<usize> {
        let mut slices: Vec<IoSliceMut<'_>> = self
            .storage
            .chunks_mut(self.chunk)
            .map(IoSliceMut::new)
            .collect();
        io.try_recv(&mut slices, &mut self.meta)
    }

    /// The datagrams in buffer `i`: GRO may have put several there, `stride` bytes apart.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn send_and_receive_batch_with_segments() {
        let a = UdpIo::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = UdpIo::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = b.local_addr().unwrap();
        // Three datagrams of 100, 100 and 50 bytes, sent as one GSO buffer (or split).
        let mut payload = vec![1u8; 100];
        payload.extend([2u8; 100]);
        payload.extend([3u8; 50]);
        a.send(to, &payload, Some(100)).await.unwrap();

        let mut bufs = RecvBuffers::new(&b, 1350);
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < 3 {
            b.readable().await.unwrap();
            let n = match bufs.recv(&b) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            };
            for i in 0..n {
                let (from, chunks) = bufs.datagrams(i);
                assert_eq!(from, a.local_addr().unwrap());
                got.extend(chunks.map(|c| c.to_vec()));
            }
        }
        assert_eq!(got, vec![vec![1u8; 100], vec![2u8; 100], vec![3u8; 50]]);
    }

    #[tokio::test]
    async fn closed_port_is_reported_as_unreachable() {
        let io = UdpIo::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // A port nobody listens on: bind, note the port, close.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        io.send(closed, b"hello", None).await.unwrap();
        let found = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            loop {
                io.readable().await.unwrap();
                let found = io.take_port_unreachable();
                if !found.is_empty() {
                    return found;
                }
            }
        })
        .await
        .expect("the ICMP error wakes the socket");
        assert_eq!(found, vec![closed]);
        // The error is consumed: nothing more to report, and receiving is not failed by it.
        assert!(io.take_port_unreachable().is_empty());
        let mut bufs = RecvBuffers::new(&io, 1350);
        assert_eq!(
            bufs.recv(&io).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn gso_batches_stay_under_64k() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let io = UdpIo::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(io.max_segments_for(9000) * 9000 <= MAX_GSO_BYTES);
        assert!(io.max_segments_for(1350) >= 1);
        assert!(io.recv_buffer_size(9000) >= 9000);
        assert!(io.recv_buffer_size(1350) <= MAX_GRO_BUFFER);
    }
}
