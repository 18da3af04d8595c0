//! The UDP socket, with batched I/O through `quinn-udp`.
//!
//! On Linux, receiving uses `recvmmsg` (many datagrams per system call) and GRO (the kernel
//! coalesces datagrams of one flow into a single buffer, split again by `stride`); sending uses
//! GSO (one call sends a buffer of equal-sized datagrams). Where the kernel or NIC lacks support,
//! `quinn-udp` reports one segment and we fall back to one datagram per call.

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

    /// Waits until the socket may have datagrams to read.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
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
