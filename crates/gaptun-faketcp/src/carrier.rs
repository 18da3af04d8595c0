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
