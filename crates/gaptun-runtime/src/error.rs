//! Errors of the runtime layer.

use std::io;

use gaptun_proto::ConnectionError;
use thiserror::Error;

/// Why a connection is no longer usable.
///
/// Most of the time this is the protocol core's [`ConnectionError`]; the other variants cover
/// what only the runtime can see (the endpoint shutting down, its driver dying).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtError {
    /// The connection ended for a protocol reason.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The endpoint is shutting down (or was dropped) and takes no new work.
    #[error("endpoint is shutting down")]
    EndpointClosed,
    /// The endpoint's driver task stopped unexpectedly (a bug or a fatal socket error).
    #[error("endpoint driver failed: {0}")]
    EndpointFailed(String),
    /// The protocol core dropped the connection without reporting why.
    #[error("connection no longer exists")]
    Gone,
    /// The server's address answered the handshake with ICMP port unreachable: nothing listens
    /// on that UDP port (wrong port, or the server is not running).
    #[error("server port closed (ICMP port unreachable)")]
    PortUnreachable,
}

impl RtError {
    /// The `io::ErrorKind` that best describes this error to code using `AsyncRead`/`AsyncWrite`.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            Self::Connection(ConnectionError::HandshakeTimeout(_))
            | Self::Connection(ConnectionError::TimedOut(_))
            | Self::Connection(ConnectionError::Unresponsive(_)) => io::ErrorKind::TimedOut,
            Self::Connection(ConnectionError::ClosedByPeer { .. })
            | Self::Connection(ConnectionError::Reset) => io::ErrorKind::ConnectionReset,
            Self::Connection(ConnectionError::ProtocolViolation(_)) => io::ErrorKind::InvalidData,
            Self::Connection(ConnectionError::LocallyClosed)
            | Self::EndpointClosed
            | Self::Gone => io::ErrorKind::NotConnected,
            Self::EndpointFailed(_) => io::ErrorKind::Other,
            Self::PortUnreachable => io::ErrorKind::ConnectionRefused,
        }
    }
}

impl From<RtError> for io::Error {
    fn from(e: RtError) -> Self {
        Self::new(e.io_kind(), e)
    }
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectError {
    /// The handshake failed or the connection ended before it completed. A wrong key shows up as
    /// [`ConnectionError::HandshakeTimeout`], since the server stays silent.
    #[error(transparent)]
    Lost(#[from] RtError),
    /// The endpoint has no key to connect with.
    #[error("no key configured")]
    NoKey,
    /// No path to the server was given (an empty list to `connect_paths`).
    #[error("no path to the server")]
    NoPath,
    /// The server is not `HOST:PORT` or `HOST:FIRST-LAST`.
    #[error("invalid server `{server}`: {reason}")]
    InvalidServer {
        /// As given.
        server: String,
        /// What is wrong with it.
        reason: crate::ports::PortRangeError,
    },
    /// The server name did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// What we tried to resolve.
        host: String,
        /// The resolver's message.
        reason: String,
    },
    /// The server name resolved, but to no address of the family our socket uses.
    #[error("{host} has no {family} address")]
    NoAddress {
        /// What we resolved.
        host: String,
        /// "IPv4" or "IPv6".
        family: &'static str,
    },
    /// Binding the local UDP socket failed.
    #[error("cannot bind local UDP socket: {0}")]
    Bind(String),
}

impl From<ConnectionError> for ConnectError {
    fn from(e: ConnectionError) -> Self {
        Self::Lost(RtError::Connection(e))
    }
}

impl From<gaptun_proto::endpoint::ConnectError> for ConnectError {
    fn from(e: gaptun_proto::endpoint::ConnectError) -> Self {
        match e {
            gaptun_proto::endpoint::ConnectError::NoKey => Self::NoKey,
            gaptun_proto::endpoint::ConnectError::NoPath => Self::NoPath,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn handshake_timeout_message_passes_through() {
        let e = ConnectError::from(ConnectionError::HandshakeTimeout(Duration::from_secs(10)));
        assert_eq!(
            e.to_string(),
            "no answer from server within 10 s: check address, port and key"
        );
    }

    #[test]
    fn io_kinds() {
        let e: io::Error = RtError::Connection(ConnectionError::TimedOut(Duration::ZERO)).into();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let e: io::Error = RtError::EndpointClosed.into();
        assert_eq!(e.kind(), io::ErrorKind::NotConnected);
        let e: io::Error = RtError::Connection(ConnectionError::ClosedByPeer {
            code: 1,
            reason: "x".into(),
        })
        .into();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }
}
