//! [`FakeTcpSocket`] as one of the runtime's [`Carrier`]s.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use gaptun_runtime::{Carrier, CarrierTransmit, RecvMeta};

use crate::FakeTcpSocket;

/// Datagrams one receive call returns at most (the runtime's batches are this size too).
const BATCH: usize = 32;

impl Carrier for FakeTcpSocket {
    fn kind(&self) -> &'static str {
        "faketcp"
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(Self::local_addr(self))
    }

    /// A segmented send becomes one `sendmmsg` of that many segments (raw sockets have no GSO;
    /// batching the system calls is what makes the carrier fast).
    fn max_transmit_segments(&self) -> usize {
        Self::MAX_BATCH
    }

    /// Fake TCP's segments are routed as they are, like UDP datagrams: with `--route-mtu` a
    /// connection's ceiling follows the route (64 KB segments on loopback and veth pairs,
    /// Ethernet-sized ones on a NIC), less the TCP header's extra bytes.
    fn route_mtu(&self) -> Option<gaptun_runtime::proto::RouteMtuQuery> {
        Some(datagram_ceiling_to)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = bufs.len().min(meta.len()).min(BATCH);
        let mut found = [(0, Self::local_addr(self)); BATCH];
        let filled = match Self::poll_recv(self, cx, &mut bufs[..n], &mut found[..n]) {
            Poll::Ready(Ok(filled)) => filled,
            other => return other,
        };
        for (slot, &(len, addr)) in meta.iter_mut().zip(&found[..filled]) {
            *slot = RecvMeta {
                addr,
                len,
                stride: len,
            };
        }
        Poll::Ready(Ok(filled))
    }

    fn try_send(&self, transmit: &CarrierTransmit<'_>) -> io::Result<()> {
        match transmit.segment_size {
            Some(size) => {
                Self::try_send_segments(self, transmit.destination, transmit.contents, size)
                    .map(drop)
            }
            None => Self::try_send(self, transmit.destination, transmit.contents),
        }
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Self::poll_writable(self, cx)
    }
}

/// The largest datagram fake TCP carries whole on the route to `remote`, in the core's terms
/// (a UDP payload over IPv4; the core takes 20 bytes more off for an IPv6 peer): the route's
/// MTU less IPv4, TCP and timestamps, and never more than an IPv4 packet's length field
/// allows. This is [`Carrier::route_mtu`](gaptun_runtime::Carrier::route_mtu) of fake TCP:
/// with `--route-mtu`, a loopback route (MTU 65 536) takes 64 KB segments, each system call
/// moving forty times the data of a 1448-byte one; an Ethernet route still takes 1448-byte
/// ones, and a jumbo-frame route 8940-byte ones.
pub(crate) fn datagram_ceiling_to(remote: SocketAddr) -> Option<u16> {
    let udp = gaptun_runtime::carrier::route::udp_payload_to(remote)?;
    let largest = (usize::from(u16::MAX) - crate::packet::DATA_OVERHEAD) as u16;
    Some(
        udp.saturating_sub(FakeTcpSocket::EXTRA_OVERHEAD_VS_UDP as u16)
            .min(largest),
    )
}
