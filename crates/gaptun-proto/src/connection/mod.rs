//! One connection's state machine.
//!
//! Driven like quinn-proto's: the caller hands in datagrams ([`Connection::handle_datagram`]) and
//! timer expiries ([`Connection::handle_timeout`]), then polls, in this order,
//! [`Connection::poll_transmit`] until it returns `None`, [`Connection::poll_timeout`] and
//! [`Connection::poll`]. Application commands (streams, close, window) can come at any time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::shared::{Side, StreamId, Transmit};
use crate::streams::{ReadError, StreamEvent, WriteError};

/// Something the application should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed; streams can be used.
    Connected,
    /// A stream event.
    Stream(StreamEvent),
    /// The connection ended; no more events follow.
    ConnectionLost(ConnectionError),
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectionError {
    /// The server did not answer the handshake in time (wrong address, port or key look the same
    /// from here: the server stays silent).
    #[error("no answer from server within {0:?}: check address, port and key")]
    HandshakeTimeout(Duration),
    /// Nothing was heard from the peer for the idle timeout.
    #[error("peer silent for {0:?}, connection timed out")]
    TimedOut(Duration),
    /// The peer closed the connection.
    #[error("closed by peer (code {code}): {reason}")]
    ClosedByPeer {
        /// Application or transport code.
        code: u64,
        /// The peer's reason text.
        reason: String,
    },
    /// We closed it.
    #[error("closed locally")]
    LocallyClosed,
    /// The peer broke the protocol.
    #[error("protocol violation by peer: {0}")]
    ProtocolViolation(String),
}

/// Counters and estimates for `stats`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionStats {
    pub rtt: Duration,
    pub min_rtt: Duration,
    pub cwnd: u64,
    pub bytes_in_flight: u64,
    pub pacing_rate: u64,
    pub congestion: &'static str,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_lost: u64,
    pub bytes_lost: u64,
    pub packets_retransmitted: u64,
    /// Stream payload bytes sent again after a loss.
    pub stream_bytes_retransmitted: u64,
    /// Stream payload bytes in packets declared lost.
    pub stream_bytes_lost: u64,
    pub stream_bytes_sent: u64,
    pub dropped_auth: u64,
    pub dropped_replay: u64,
    pub dropped_malformed: u64,
    pub streams_open: u64,
    pub streams_opened_total: u64,
    pub receive_window: u64,
    pub migrations: u64,
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    _private: (),
}

impl Connection {
    /// Which side we are.
    pub fn side(&self) -> Side {
        todo!()
    }

    /// The peer's current address.
    pub fn remote_address(&self) -> SocketAddr {
        todo!()
    }

    /// Whether the handshake completed and the connection is not closing.
    pub fn is_established(&self) -> bool {
        todo!()
    }

    /// Whether the connection is finished and can be dropped.
    pub fn is_drained(&self) -> bool {
        todo!()
    }

    /// A datagram for this connection arrived from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        let _ = (now, from, data);
        todo!()
    }

    /// Writes the next datagram(s) into `buf` (cleared first).
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        let _ = (now, max_datagrams, buf);
        todo!()
    }

    /// When [`Connection::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }

    /// Fires the timers that expired by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
        todo!()
    }

    /// The next application event.
    pub fn poll(&mut self) -> Option<Event> {
        todo!()
    }

    /// Opens a stream; `None` if the peer's limit is reached or the connection is not ready.
    pub fn open_stream(&mut self) -> Option<StreamId> {
        todo!()
    }

    /// A stream the peer opened.
    pub fn accept_stream(&mut self) -> Option<StreamId> {
        todo!()
    }

    /// Queues data on a stream; returns how much was taken.
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, WriteError> {
        let _ = (id, data);
        todo!()
    }

    /// Ends our half of a stream.
    pub fn finish(&mut self, id: StreamId) -> Result<(), WriteError> {
        let _ = id;
        todo!()
    }

    /// Reads from a stream: `Ok(Some(n))`, `Ok(None)` at its end.
    pub fn read(&mut self, id: StreamId, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        let _ = (id, buf);
        todo!()
    }

    /// Abandons our sending half of a stream.
    pub fn reset_stream(&mut self, id: StreamId, error_code: u64) -> Result<(), WriteError> {
        let _ = (id, error_code);
        todo!()
    }

    /// Asks the peer to stop sending on a stream.
    pub fn stop_stream(&mut self, id: StreamId, error_code: u64) -> Result<(), ReadError> {
        let _ = (id, error_code);
        todo!()
    }

    /// Closes the connection: a CLOSE frame is sent, then the connection drains.
    pub fn close(&mut self, now: Instant, error_code: u64, reason: &[u8]) {
        let _ = (now, error_code, reason);
        todo!()
    }

    /// Changes the receive window of this live connection (bytes).
    pub fn set_receive_window(&mut self, bytes: u64) {
        let _ = bytes;
        todo!()
    }

    /// Counters and estimates.
    pub fn stats(&self) -> ConnectionStats {
        todo!()
    }
}
