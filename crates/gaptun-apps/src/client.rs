//! The client half of the request protocol, shared by SOCKS5 and the forwards.
//!
//! Opening a tunnel stream and sending the request header are separated from waiting for the
//! reply so that callers can pipeline: a TCP forward starts sending the local client's bytes
//! right behind the request and only waits for the reply before passing bytes back, which
//! saves one round trip per connection on a long-RTT path.

use std::io;
use std::time::Duration;

use thiserror::Error;
use tokio::io::AsyncRead;

use crate::request::{ReplyCode, RequestError, TunnelReply, TunnelRequest};
use crate::tunnel::StreamOpener;

/// How long a client waits for the server's reply by default. Longer than the server's
/// default connect timeout, so that the server's more precise verdict normally arrives first.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a tunnel request did not lead to a usable stream.
#[derive(Debug, Error)]
pub enum TunnelClientError {
    /// No stream could be opened (the tunnel is down) or the request could not be written.
    #[error("cannot open a tunnel stream: {0}")]
    Open(#[source] io::Error),
    /// The server's reply was malformed, or the stream ended before it.
    #[error("bad reply from the server: {0}")]
    Reply(#[from] RequestError),
    /// The server did not reply in time.
    #[error("no reply from the server within the timeout")]
    ReplyTimeout,
    /// The server refused the request with this code.
    #[error("refused by the tunnel server: {0}")]
    Rejected(ReplyCode),
}

impl TunnelClientError {
    /// Whether the server refused the request (policy, unreachable or refusing target), as
    /// opposed to the tunnel itself failing. Refusals are what a user has to act on.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Rejected(_))
    }

    /// The SOCKS5 reply code to give a local client for this failure.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            Self::Open(_) | Self::Reply(_) => ReplyCode::GeneralFailure,
            Self::ReplyTimeout => ReplyCode::TtlExpired,
            Self::Rejected(code) => *code,
        }
    }
}

/// Opens a stream and writes `request` on it, without waiting for the reply.
pub async fn open_with_request<O: StreamOpener>(
    opener: &O,
    request: &TunnelRequest,
) -> Result<O::Stream, TunnelClientError> {
    let mut stream = opener.open().await.map_err(TunnelClientError::Open)?;
    request
        .write_to(&mut stream)
        .await
        .map_err(TunnelClientError::Open)?;
    Ok(stream)
}

/// Waits for the server's reply; a refusal is returned as [`TunnelClientError::Rejected`].
pub async fn await_reply<R: AsyncRead + Unpin>(
    stream: &mut R,
    limit: Duration,
) -> Result<TunnelReply, TunnelClientError> {
    let reply = tokio::time::timeout(limit, TunnelReply::read_from(stream))
        .await
        .map_err(|_| TunnelClientError::ReplyTimeout)??;
    if reply.code == ReplyCode::Succeeded {
        Ok(reply)
    } else {
        Err(TunnelClientError::Rejected(reply.code))
    }
}

/// Opens a stream, sends `request` and waits for a successful reply.
pub async fn request_stream<O: StreamOpener>(
    opener: &O,
    request: &TunnelRequest,
    limit: Duration,
) -> Result<(O::Stream, TunnelReply), TunnelClientError> {
    let mut stream = open_with_request(opener, request).await?;
    let reply = await_reply(&mut stream, limit).await?;
    Ok((stream, reply))
}
