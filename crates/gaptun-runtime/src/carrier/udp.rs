//! The UDP carrier: one UDP socket, with batched I/O through `quinn-udp`.
//!
//! On Linux, receiving uses `recvmmsg` (many datagrams per system call) and GRO (the kernel
//! coalesces datagrams of one flow into a single buffer, split again by `stride`); sending uses
//! GSO (one call sends a buffer of equal-sized datagrams). Where the kernel or NIC lacks support,
//! `quinn-udp` reports one segment and we fall back to one datagram per call.
//!
//! ICMP errors: Linux reports "port unreachable" on an unconnected UDP socket only with
//! `IP_RECVERR`, through the socket's error queue, which names the destination that failed. We
//! turn it on so that a client whose first Initial meets a closed server port learns it at once
//! ([`Carrier::take_unreachable`]) instead of waiting out the handshake timeout.

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use quinn_udp::{Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::{Carrier, CarrierTransmit, RecvMeta};

/// Kernel socket buffer we ask for: large enough for a burst at high bandwidth-delay products.
/// The kernel may grant less (`net.core.rmem_max`); that only costs performance.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Waits for the socket to become readable or to queue an error. Boxed and kept between polls
/// because tokio offers the combined readiness (an ICMP error alone sets only `EPOLLERR`, which
/// does not count as readable) only as a future.
type ReadinessFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A bound UDP socket plus `quinn-udp`'s per-socket state (GSO/GRO support).
pub struct UdpCarrier {
    socket: Arc<UdpSocket>,
    state: UdpSocketState,
    /// Port-unreachable reports drained from the error queue, waiting for `take_unreachable`.
    unreachable: Mutex<Vec<SocketAddr>>,
    readiness: Mutex<Option<ReadinessFuture>>,
}

impl std::fmt::Debug for UdpCarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpCarrier")
            .field("local", &self.socket.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl UdpCarrier {
    /// Binds `addr`. Must run inside a tokio runtime.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::from_std(std::net::UdpSocket::bind(addr)?, addr)
    }

    /// Binds `addr` (a real port, not 0) with `SO_REUSEPORT`, as one of several sockets of a
    /// sharded server: the kernel spreads incoming datagrams over them by source address.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) fn bind_shared(addr: SocketAddr) -> io::Result<Self> {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrStorage, bind, setsockopt, socket, sockopt,
        };
        let family = if addr.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
        setsockopt(&fd, sockopt::ReusePort, &true)?;
        if addr.is_ipv6() {
            // As std binds: an IPv6 socket that also takes IPv4 where the system says so is
            // left alone; only the sharing option differs.
            let _ = setsockopt(&fd, sockopt::Ipv6V6Only, &false);
        }
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(addr),
        )?;
        Self::from_std(std::net::UdpSocket::from(fd), addr)
    }

    /// Without `SO_REUSEPORT` support the shards cannot share a port.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(crate) fn bind_shared(_addr: SocketAddr) -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "several server threads need SO_REUSEPORT (Linux)",
        ))
    }

    fn from_std(std_socket: std::net::UdpSocket, addr: SocketAddr) -> io::Result<Self> {
        let state = UdpSocketState::new((&std_socket).into())?;
        // Best effort: refusal only lowers throughput.
        let _ = state.set_recv_buffer_size((&std_socket).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&std_socket).into(), SOCKET_BUFFER);
        enable_icmp_errors(&std_socket, addr.is_ipv6());
        std_socket.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(std_socket)?);
        Ok(Self {
            socket,
            state,
            unreachable: Mutex::new(Vec::new()),
            readiness: Mutex::new(None),
        })
    }

    /// Moves port-unreachable reports from the socket's error queue into `self.unreachable`;
    /// returns whether there were any. Never blocks.
    fn drain_errors(&self) -> bool {
        let mut found = Vec::new();
        // The closure always ends with `WouldBlock` once the queue is empty, which is what makes
        // tokio clear the socket's error readiness (else the readiness future would return at
        // once again).
        let _ = self.socket.try_io(Interest::ERROR, || {
            drain_error_queue(&self.socket, &mut found);
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
        if found.is_empty() {
            return false;
        }
        self.unreachable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(found);
        true
    }
}

impl Carrier for UdpCarrier {
    fn kind(&self) -> &'static str {
        "udp"
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// GSO's segment count (1 without GSO). The kernel also limits a GSO batch to 64 KiB in
    /// all, which [`super::segments_for`] applies.
    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn route_mtu(&self) -> Option<gaptun_proto::RouteMtuQuery> {
        Some(super::route::udp_payload_to)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = bufs.len().min(meta.len()).min(quinn_udp::BATCH_SIZE);
        let mut raw = [quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
        loop {
            let received = self.socket.try_io(Interest::READABLE, || {
                self.state.recv(
                    (&*self.socket).into(),
                    bufs.get_mut(..n).unwrap_or_default(),
                    raw.get_mut(..n).unwrap_or_default(),
                )
            });
            match received {
                Ok(got) => {
                    for (m, r) in meta.iter_mut().zip(&raw).take(got) {
                        *m = RecvMeta {
                            addr: r.addr,
                            len: r.len,
                            stride: r.stride,
                        };
                    }
                    return Poll::Ready(Ok(got));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // A pending ICMP error fails the receive call itself: collect the reports
                    // (which clears it) and let the caller come back.
                    self.drain_errors();
                    return Poll::Ready(Err(e));
                }
            }
            if self.drain_errors() {
                return Poll::Ready(Ok(0));
            }
            let mut slot = self
                .readiness
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let future = slot.get_or_insert_with(|| {
                let socket = Arc::clone(&self.socket);
                Box::pin(async move {
                    socket
                        .ready(Interest::READABLE | Interest::ERROR)
                        .await
                        .map(drop)
                })
            });
            match future.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => {
                    *slot = None;
                    r?;
                }
            }
        }
    }

    fn try_send(&self, transmit: &CarrierTransmit<'_>) -> io::Result<()> {
        let transmit = Transmit {
            destination: transmit.destination,
            ecn: None,
            contents: transmit.contents,
            segment_size: transmit.segment_size,
            src_ip: None,
        };
        self.socket.try_io(Interest::WRITABLE, || {
            self.state.try_send((&*self.socket).into(), &transmit)
        })
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_send_ready(cx)
    }

    fn take_unreachable(&self) -> Vec<SocketAddr> {
        std::mem::take(
            &mut *self
                .unreachable
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
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

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::super::{RecvBuffers, segments_for, try_send};
    use super::*;

    /// Sends as the driver does: tries, and on `WouldBlock` waits for room and tries again.
    async fn send(carrier: &UdpCarrier, transmit: &CarrierTransmit<'_>) {
        loop {
            match try_send(carrier, transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll_fn(|cx| carrier.poll_writable(cx)).await.unwrap();
                }
                other => return other.unwrap(),
            }
        }
    }

    /// Receives until `count` datagrams arrived (bounded by 5 s), each with its sender.
    async fn receive(carrier: &UdpCarrier, count: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut bufs = RecvBuffers::new(carrier, 1350);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), async {
            while got.len() < count {
                let n = poll_fn(|cx| bufs.poll_recv(carrier, cx))
                    .await
                    .expect("recv");
                for i in 0..n {
                    let (from, chunks) = bufs.datagrams(i);
                    got.extend(chunks.map(|c| (from, c.to_vec())));
                }
            }
        })
        .await
        .expect("datagrams within 5 s");
        got
    }

    #[tokio::test]
    async fn send_and_receive_batch_with_segments() {
        let a = UdpCarrier::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = UdpCarrier::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(a.kind(), "udp");
        let to = b.local_addr().unwrap();
        // Three datagrams of 100, 100 and 50 bytes, sent as one GSO buffer (or split).
        let mut payload = vec![1u8; 100];
        payload.extend([2u8; 100]);
        payload.extend([3u8; 50]);
        let transmit = CarrierTransmit {
            destination: to,
            contents: &payload,
            segment_size: Some(100),
        };
        send(&a, &transmit).await;
        let got = receive(&b, 3).await;
        let from = a.local_addr().unwrap();
        assert_eq!(
            got,
            vec![
                (from, vec![1u8; 100]),
                (from, vec![2u8; 100]),
                (from, vec![3u8; 50])
            ]
        );
    }

    /// A UDP carrier that does not coalesce: one datagram per receive buffer, sized exactly.
    #[derive(Debug)]
    struct NoGro(UdpCarrier);

    impl Carrier for NoGro {
        fn kind(&self) -> &'static str {
            "udp"
        }
        fn local_addr(&self) -> io::Result<SocketAddr> {
            self.0.local_addr()
        }
        fn poll_recv(
            &self,
            cx: &mut Context<'_>,
            bufs: &mut [IoSliceMut<'_>],
            meta: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            self.0.poll_recv(cx, bufs, meta)
        }
        fn try_send(&self, transmit: &CarrierTransmit<'_>) -> io::Result<()> {
            self.0.try_send(transmit)
        }
        fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.0.poll_writable(cx)
        }
    }

    /// Receives one batch on `carrier` into `bufs`; returns each buffer's (length, truncated).
    async fn receive_sizes(carrier: &dyn Carrier, bufs: &mut RecvBuffers) -> Vec<(usize, bool)> {
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| bufs.poll_recv(carrier, cx)),
        )
        .await
        .expect("a datagram within 5 s")
        .expect("recv");
        (0..n)
            .map(|i| {
                let truncated = bufs.truncated(i);
                (bufs.datagrams(i).1.map(|d| d.len()).sum(), truncated)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_65507_byte_datagram_arrives_whole_and_a_longer_one_is_flagged() {
        let a = UdpCarrier::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = UdpCarrier::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = b.local_addr().unwrap();
        let big = vec![7u8; usize::from(gaptun_proto::MAX_UDP_PAYLOAD)];
        let one = |contents| CarrierTransmit {
            destination: to,
            contents,
            segment_size: None,
        };
        // Buffers for the largest ceiling take the largest datagram whole.
        let mut bufs = RecvBuffers::new(&b, big.len());
        send(&a, &one(&big)).await;
        assert_eq!(receive_sizes(&b, &mut bufs).await, vec![(big.len(), false)]);
        // Without coalescing, buffers for 2000-byte datagrams: one of 2000 fits, one of 3000
        // fills its buffer and is flagged as cut, one of 2001 too.
        let b = NoGro(b);
        let mut bufs = RecvBuffers::new(&b, 2000);
        for (len, cut) in [(2000, false), (3000, true), (2001, true)] {
            send(&a, &one(&big[..len])).await;
            let got = receive_sizes(&b, &mut bufs).await;
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].1, cut, "{len} bytes: {got:?}");
        }
    }

    #[tokio::test]
    async fn closed_port_is_reported_as_unreachable() {
        let carrier = UdpCarrier::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // A port nobody listens on: bind, note the port, close.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let transmit = CarrierTransmit {
            destination: closed,
            contents: b"hello",
            segment_size: None,
        };
        send(&carrier, &transmit).await;
        let mut bufs = RecvBuffers::new(&carrier, 1350);
        let found = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                // The ICMP report wakes the receive poll, which returns without data.
                let r = poll_fn(|cx| bufs.poll_recv(&carrier, cx)).await;
                assert!(matches!(r, Ok(0) | Err(_)), "no data expected: {r:?}");
                let found = carrier.take_unreachable();
                if !found.is_empty() {
                    return found;
                }
            }
        })
        .await
        .expect("the ICMP error wakes the carrier");
        assert_eq!(found, vec![closed]);
        // The error is consumed: nothing more to report, and receiving waits for data again.
        assert!(carrier.take_unreachable().is_empty());
        let again = tokio::time::timeout(
            Duration::from_millis(100),
            poll_fn(|cx| bufs.poll_recv(&carrier, cx)),
        )
        .await;
        assert!(again.is_err(), "nothing to receive: {again:?}");
    }

    #[test]
    fn segmented_batches_stay_under_64k() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let carrier = UdpCarrier::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(segments_for(&carrier, 9000) * 9000 <= 64 * 1024);
        assert!(segments_for(&carrier, 1350) >= 1);
    }
}
