//! Outside Linux: the same API, whose constructors say fake TCP is not supported here.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::task::{Context, Poll};

use crate::error::FakeTcpError;
use crate::flow::Timing;

/// See the Linux version.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: IpAddr,
    pub ports: RangeInclusive<u16>,
    pub timing: Timing,
}

/// See the Linux version.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub server: IpAddr,
    pub ports: RangeInclusive<u16>,
    pub timing: Timing,
}

/// See the Linux version.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FakeTcpStats {
    pub established: u64,
    pub resets: u64,
    pub fins: u64,
    pub idle_timeouts: u64,
    pub handshake_timeouts: u64,
    pub data_sent: u64,
    pub data_received: u64,
    pub acks_sent: u64,
    pub wire_bytes_sent: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy)]
enum Never {}

/// Cannot be built outside Linux: every constructor returns [`FakeTcpError::Unsupported`].
#[derive(Debug, Clone)]
pub struct FakeTcpSocket {
    never: Never,
}

impl FakeTcpSocket {
    pub const EXTRA_OVERHEAD_VS_UDP: usize = 24;

    pub fn server(_config: ServerConfig) -> Result<Self, FakeTcpError> {
        Err(FakeTcpError::Unsupported)
    }

    pub fn client(_config: ClientConfig) -> Result<Self, FakeTcpError> {
        Err(FakeTcpError::Unsupported)
    }

    pub fn local_addr(&self) -> SocketAddr {
        match self.never {}
    }

    pub fn stats(&self) -> FakeTcpStats {
        match self.never {}
    }

    pub fn established_flows(&self) -> usize {
        match self.never {}
    }

    pub fn flow_addresses(&self) -> Vec<(SocketAddr, SocketAddr)> {
        match self.never {}
    }

    pub fn poll_recv(
        &self,
        _cx: &mut Context<'_>,
        _bufs: &mut [IoSliceMut<'_>],
        _meta: &mut [(usize, SocketAddr)],
    ) -> Poll<io::Result<usize>> {
        match self.never {}
    }

    pub async fn recv_from(&self, _buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match self.never {}
    }

    pub fn try_send(&self, _destination: SocketAddr, _payload: &[u8]) -> io::Result<()> {
        match self.never {}
    }

    pub fn try_send_segments(
        &self,
        _destination: SocketAddr,
        _contents: &[u8],
        _segment_size: usize,
    ) -> io::Result<usize> {
        match self.never {}
    }

    pub fn poll_writable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.never {}
    }

    pub async fn send_to(&self, _payload: &[u8], _destination: SocketAddr) -> io::Result<()> {
        match self.never {}
    }
}
