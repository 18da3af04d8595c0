//! The endpoint: one UDP socket's worth of connections.
//!
//! It routes each datagram by the (masked) connection ID, hands handshake datagrams to the
//! handshake code, and drops everything it cannot authenticate without answering.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::config::EndpointConfig;
use crate::connection::Connection;
use crate::shared::Transmit;

/// Names a connection within its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(pub usize);

/// Endpoint-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams that matched no connection and were no valid handshake: dropped silently.
    pub dropped_unauthenticated: u64,
    /// Handshake Initials refused as replays or outside the time window.
    pub dropped_replayed_handshakes: u64,
    /// Handshakes accepted.
    pub accepted: u64,
}

/// Why `connect` failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectError {
    /// The endpoint has no key to connect with.
    #[error("no key configured")]
    NoKey,
}

/// An endpoint.
#[derive(Debug)]
pub struct Endpoint {
    _private: (),
}

impl Endpoint {
    /// Creates an endpoint. `seed` feeds its RNG (ephemeral keys, connection IDs, padding);
    /// `unix_time` is the wall-clock time at `now`, used for handshake timestamps.
    pub fn new(config: Arc<EndpointConfig>, seed: u64, now: Instant, unix_time: Duration) -> Self {
        let _ = (config, seed, now, unix_time);
        todo!()
    }

    /// Starts connecting to `remote`.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
    ) -> Result<ConnectionHandle, ConnectError> {
        let _ = (now, remote);
        todo!()
    }

    /// A datagram arrived from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        let _ = (now, from, data);
        todo!()
    }

    /// The next datagram(s) to send, from any connection.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        let _ = (now, max_datagrams, buf);
        todo!()
    }

    /// The earliest timer of any connection.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }

    /// Fires expired timers and removes drained connections.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
        todo!()
    }

    /// A connection the server accepted that the application has not taken yet.
    pub fn accept(&mut self) -> Option<ConnectionHandle> {
        todo!()
    }

    /// The connection behind `handle`, while it exists.
    pub fn connection(&mut self, handle: ConnectionHandle) -> Option<&mut Connection> {
        let _ = handle;
        todo!()
    }

    /// Handles of all live connections.
    pub fn handles(&self) -> Vec<ConnectionHandle> {
        todo!()
    }

    /// Changes the receive window of every live and future connection.
    pub fn set_receive_window(&mut self, bytes: u64) {
        let _ = bytes;
        todo!()
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        todo!()
    }
}
