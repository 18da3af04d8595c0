//! The per-stream request protocol spoken at the start of every tunnel stream.
//!
//! The transport gives us bare reliable byte streams; this tiny header tells the server what a
//! stream is for. It deliberately reuses SOCKS5's address encoding and reply codes, so the
//! client can hand the server's verdict straight to a SOCKS5 client ("connection refused",
//! "not allowed by ruleset", ...). The full specification is `docs/protocol/70-tunnel-requests.md`.
//!
//! ```text
//! client -> server: version u8 = 1 | command u8 | target address
//! server -> client: reply u8      | bound address
//! then: raw bytes (connect) or UDP frames (udp relay), both directions
//! UDP frame:        length u16 BE (of address + payload) | address | payload
//! ```
//!
//! Readers here never read past the structure they decode, because the client may pipeline
//! payload right behind its request.

use std::io;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::addr::{AddrError, TargetAddr};

/// The only request version defined.
pub const REQUEST_VERSION: u8 = 1;

/// Largest value of a UDP frame's length field (address plus payload).
pub const MAX_UDP_FRAME: usize = u16::MAX as usize;

/// What the client wants the stream to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Dial a TCP connection to the target and relay bytes.
    Connect,
    /// Relay UDP datagrams, each framed with its own address.
    UdpRelay,
    /// Relay UDP datagrams as transport datagrams of a flow ([`crate::flow`]): the request is
    /// followed by the flow id (u32 BE); the stream then carries nothing and lasts as long as
    /// the relay. Only sent to a peer whose transport accepts datagrams.
    UdpFlow,
    /// Register exposes: the client asks the server to listen on ports for it
    /// ([`crate::expose`]); the stream stays open as long as the registration holds.
    Expose,
}

impl Command {
    /// The command's byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Connect => 1,
            Self::UdpRelay => 3,
            Self::UdpFlow => 4,
            Self::Expose => 0x10,
        }
    }

    /// The command for a wire byte, if it is one we know.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Connect),
            3 => Some(Self::UdpRelay),
            4 => Some(Self::UdpFlow),
            0x10 => Some(Self::Expose),
            _ => None,
        }
    }
}

/// The server's verdict, using the SOCKS5 REP numbering (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyCode {
    /// The target was reached; payload follows.
    Succeeded = 0,
    /// Anything not covered below (also: malformed requests).
    GeneralFailure = 1,
    /// The target policy refused the destination.
    NotAllowed = 2,
    /// The server's network could not route to the target.
    NetworkUnreachable = 3,
    /// The host could not be reached or its name did not resolve.
    HostUnreachable = 4,
    /// The target actively refused the connection.
    ConnectionRefused = 5,
    /// The connection attempt timed out.
    TtlExpired = 6,
    /// The command byte is unknown.
    CommandNotSupported = 7,
    /// The address type byte is unknown.
    AddressTypeNotSupported = 8,
}

impl std::fmt::Display for ReplyCode {
    /// The meaning, in the words a user reads in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Succeeded => "succeeded",
            Self::GeneralFailure => "general failure",
            Self::NotAllowed => "target not allowed by the server (see --allow)",
            Self::NetworkUnreachable => "network unreachable",
            Self::HostUnreachable => "host unreachable",
            Self::ConnectionRefused => "connection refused",
            Self::TtlExpired => "timed out",
            Self::CommandNotSupported => "command not supported",
            Self::AddressTypeNotSupported => "address type not supported",
        })
    }
}

impl ReplyCode {
    /// The code for a wire byte, if it is one we know.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Succeeded,
            1 => Self::GeneralFailure,
            2 => Self::NotAllowed,
            3 => Self::NetworkUnreachable,
            4 => Self::HostUnreachable,
            5 => Self::ConnectionRefused,
            6 => Self::TtlExpired,
            7 => Self::CommandNotSupported,
            8 => Self::AddressTypeNotSupported,
            _ => return None,
        })
    }

    /// The wire byte.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// Picks the code that best describes a failed dial.
    pub fn from_dial_error(e: &io::Error) -> Self {
        use io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => Self::ConnectionRefused,
            K::TimedOut => Self::TtlExpired,
            K::HostUnreachable | K::AddrNotAvailable => Self::HostUnreachable,
            K::NetworkUnreachable | K::NetworkDown => Self::NetworkUnreachable,
            _ => Self::GeneralFailure,
        }
    }
}

/// Why a request, reply or frame could not be read.
#[derive(Debug, Error)]
pub enum RequestError {
    /// The first byte is not [`REQUEST_VERSION`].
    #[error("unsupported request version {0}")]
    UnsupportedVersion(u8),
    /// The command byte is unknown (answered with [`ReplyCode::CommandNotSupported`]).
    #[error("unsupported command {0}")]
    UnsupportedCommand(u8),
    /// The reply byte is unknown.
    #[error("unknown reply code {0}")]
    UnknownReply(u8),
    /// The target or bound address is malformed.
    #[error("bad address: {0}")]
    Addr(#[from] AddrError),
    /// A UDP frame whose length cannot hold its own address.
    #[error("malformed UDP frame")]
    BadFrame,
    /// A UDP payload too large for one frame.
    #[error("UDP payload of {0} bytes does not fit in a frame")]
    FrameTooLarge(usize),
    /// The stream ended inside a header.
    #[error("stream ended in the middle of a header")]
    Truncated,
    /// Reading or writing the stream failed.
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
}

impl From<io::Error> for RequestError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Self::Truncated
        } else {
            Self::Io(e)
        }
    }
}

impl RequestError {
    /// The reply code to send back for a request that failed to parse, if any reply is due.
    ///
    /// Unknown commands and address types get their specific code; other malformed requests
    /// a general failure; a broken stream gets nothing.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            Self::UnsupportedCommand(_) => Some(ReplyCode::CommandNotSupported),
            Self::Addr(AddrError::UnsupportedType(_)) => Some(ReplyCode::AddressTypeNotSupported),
            Self::Addr(AddrError::EmptyDomain | AddrError::InvalidDomain) => {
                Some(ReplyCode::GeneralFailure)
            }
            Self::UnsupportedVersion(_) => Some(ReplyCode::GeneralFailure),
            _ => None,
        }
    }
}

/// The header a client sends first on a new stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRequest {
    /// What the stream is for.
    pub command: Command,
    /// Where to connect (connect) or a hint for the relay (udp relay; servers ignore it).
    pub target: TargetAddr,
}

impl TunnelRequest {
    /// Encodes the request header.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.target.encoded_len());
        out.push(REQUEST_VERSION);
        out.push(self.command.to_byte());
        self.target.encode(&mut out);
        out
    }

    /// Writes the request header (and flushes, so it leaves even if no payload follows).
    pub async fn write_to<W: AsyncWrite + Unpin>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(&self.encode()).await?;
        w.flush().await
    }

    /// Reads one request header and nothing more.
    ///
    /// The command is checked before the address so that an unknown command is reported as
    /// such even if its address would not parse.
    pub async fn read_from<R: AsyncRead + Unpin>(r: &mut R) -> Result<Self, RequestError> {
        let version = r.read_u8().await?;
        if version != REQUEST_VERSION {
            return Err(RequestError::UnsupportedVersion(version));
        }
        let cmd = r.read_u8().await?;
        let command = Command::from_byte(cmd).ok_or(RequestError::UnsupportedCommand(cmd))?;
        let target = TargetAddr::read_from(r).await.map_err(addr_error)?;
        Ok(Self { command, target })
    }
}

/// The header the server answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelReply {
    /// The verdict.
    pub code: ReplyCode,
    /// The server's local address for the dialled connection (`0.0.0.0:0` when none).
    pub bound: TargetAddr,
}

impl TunnelReply {
    /// A reply carrying only a code (bound address `0.0.0.0:0`), as used for failures.
    pub fn failure(code: ReplyCode) -> Self {
        Self {
            code,
            bound: TargetAddr::unspecified(),
        }
    }

    /// Encodes the reply header.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.bound.encoded_len());
        out.push(self.code.to_byte());
        self.bound.encode(&mut out);
        out
    }

    /// Writes the reply header and flushes it.
    pub async fn write_to<W: AsyncWrite + Unpin>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(&self.encode()).await?;
        w.flush().await
    }

    /// Reads one reply header and nothing more.
    pub async fn read_from<R: AsyncRead + Unpin>(r: &mut R) -> Result<Self, RequestError> {
        let byte = r.read_u8().await?;
        let code = ReplyCode::from_byte(byte).ok_or(RequestError::UnknownReply(byte))?;
        let bound = TargetAddr::read_from(r).await.map_err(addr_error)?;
        Ok(Self { code, bound })
    }
}

/// Folds address I/O errors into the request error's own truncation/I/O variants.
fn addr_error(e: AddrError) -> RequestError {
    match e {
        AddrError::Truncated => RequestError::Truncated,
        AddrError::Io(io) => RequestError::from(io),
        other => RequestError::Addr(other),
    }
}

/// Appends one UDP frame (`len | address | payload`) to `out`.
pub fn encode_udp_frame(
    addr: &TargetAddr,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), RequestError> {
    let len = addr.encoded_len() + payload.len();
    let len16 = u16::try_from(len).map_err(|_| RequestError::FrameTooLarge(payload.len()))?;
    out.reserve(2 + len);
    out.extend_from_slice(&len16.to_be_bytes());
    addr.encode(out);
    out.extend_from_slice(payload);
    Ok(())
}

/// Reads one UDP frame into `buf` and returns its address and payload.
///
/// Returns `Ok(None)` on a clean end of stream between frames. `buf` is reused across calls
/// so a relay holds at most one frame ([`MAX_UDP_FRAME`] bytes) in memory.
pub async fn read_udp_frame<'b, R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &'b mut Vec<u8>,
) -> Result<Option<(TargetAddr, &'b [u8])>, RequestError> {
    let Some(len) = read_frame_len(r).await? else {
        return Ok(None);
    };
    buf.resize(usize::from(len), 0);
    r.read_exact(buf).await?;
    let (addr, used) = TargetAddr::decode(buf).map_err(|e| match e {
        AddrError::Truncated => RequestError::BadFrame,
        other => RequestError::Addr(other),
    })?;
    let payload = buf.get(used..).ok_or(RequestError::BadFrame)?;
    Ok(Some((addr, payload)))
}

/// Reads the 2-byte frame length, telling a clean EOF (no byte) from a truncated one.
async fn read_frame_len<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<u16>, RequestError> {
    let mut len = [0u8; 2];
    let n = r.read(&mut len[..1]).await?;
    if n == 0 {
        return Ok(None);
    }
    r.read_exact(&mut len[1..]).await?;
    Ok(Some(u16::from_be_bytes(len)))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::addr::{v4, v6};

    #[tokio::test]
    async fn request_round_trips_and_leaves_payload() {
        let req = TunnelRequest {
            command: Command::Connect,
            target: TargetAddr::Domain("example.com".into(), 443),
        };
        let mut bytes = req.encode();
        assert_eq!(&bytes[..4], &[1, 1, 3, 11]);
        bytes.extend_from_slice(b"GET /");
        let mut r = &bytes[..];
        assert_eq!(TunnelRequest::read_from(&mut r).await.unwrap(), req);
        assert_eq!(r, b"GET /");
    }

    #[tokio::test]
    async fn request_errors_are_typed() {
        let mut r = &[2u8, 1, 1, 1, 2, 3, 4, 0, 80][..];
        let err = TunnelRequest::read_from(&mut r).await.unwrap_err();
        assert!(matches!(err, RequestError::UnsupportedVersion(2)));

        let mut r = &[1u8, 2, 1, 1, 2, 3, 4, 0, 80][..];
        let err = TunnelRequest::read_from(&mut r).await.unwrap_err();
        assert!(matches!(err, RequestError::UnsupportedCommand(2)));
        assert_eq!(err.reply_code(), Some(ReplyCode::CommandNotSupported));

        let mut r = &[1u8, 1, 5, 0, 0][..];
        let err = TunnelRequest::read_from(&mut r).await.unwrap_err();
        assert!(matches!(
            err,
            RequestError::Addr(AddrError::UnsupportedType(5))
        ));
        assert_eq!(err.reply_code(), Some(ReplyCode::AddressTypeNotSupported));

        let mut r = &[1u8, 1, 3, 0, 0, 80][..];
        let err = TunnelRequest::read_from(&mut r).await.unwrap_err();
        assert!(matches!(err, RequestError::Addr(AddrError::EmptyDomain)));
        assert_eq!(err.reply_code(), Some(ReplyCode::GeneralFailure));

        for cut in 0..9 {
            let full = [1u8, 1, 1, 10, 0, 0, 1, 0, 80];
            let mut r = &full[..cut];
            let err = TunnelRequest::read_from(&mut r).await.unwrap_err();
            assert!(
                matches!(err, RequestError::Truncated),
                "cut at {cut}: {err:?}"
            );
            assert_eq!(err.reply_code(), None);
        }
    }

    #[tokio::test]
    async fn reply_round_trips() {
        for code in 0..=8u8 {
            let reply = TunnelReply {
                code: ReplyCode::from_byte(code).unwrap(),
                bound: TargetAddr::Ip(v6(Ipv6Addr::LOCALHOST, 1234)),
            };
            let bytes = reply.encode();
            assert_eq!(bytes[0], code);
            let mut r = &bytes[..];
            assert_eq!(TunnelReply::read_from(&mut r).await.unwrap(), reply);
        }
        let mut r = &[9u8, 1, 0, 0, 0, 0, 0, 0][..];
        assert!(matches!(
            TunnelReply::read_from(&mut r).await,
            Err(RequestError::UnknownReply(9))
        ));
    }

    #[test]
    fn dial_errors_map_to_codes() {
        use io::ErrorKind as K;
        let code = |k: K| ReplyCode::from_dial_error(&io::Error::from(k));
        assert_eq!(code(K::ConnectionRefused), ReplyCode::ConnectionRefused);
        assert_eq!(code(K::TimedOut), ReplyCode::TtlExpired);
        assert_eq!(code(K::HostUnreachable), ReplyCode::HostUnreachable);
        assert_eq!(code(K::NetworkUnreachable), ReplyCode::NetworkUnreachable);
        assert_eq!(code(K::Other), ReplyCode::GeneralFailure);
    }

    #[tokio::test]
    async fn udp_frames_round_trip() {
        let a = TargetAddr::Ip(v4(Ipv4Addr::new(8, 8, 8, 8), 53));
        let b = TargetAddr::Domain("dns.example".into(), 53);
        let mut wire = Vec::new();
        encode_udp_frame(&a, b"query one", &mut wire).unwrap();
        encode_udp_frame(&b, b"", &mut wire).unwrap();
        assert_eq!(&wire[..2], &[0, 7 + 9]);
        let mut r = &wire[..];
        let mut buf = Vec::new();
        let (addr, payload) = read_udp_frame(&mut r, &mut buf).await.unwrap().unwrap();
        assert_eq!((addr, payload), (a, &b"query one"[..]));
        let (addr, payload) = read_udp_frame(&mut r, &mut buf).await.unwrap().unwrap();
        assert_eq!((addr, payload), (b, &b""[..]));
        assert!(read_udp_frame(&mut r, &mut buf).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn udp_frame_errors() {
        let addr = TargetAddr::Ip(v4(Ipv4Addr::LOCALHOST, 1));
        let mut out = Vec::new();
        assert!(matches!(
            encode_udp_frame(&addr, &vec![0; 65535], &mut out),
            Err(RequestError::FrameTooLarge(65535))
        ));
        let mut buf = Vec::new();
        let mut r = &[0u8, 3, 1, 2, 3][..];
        assert!(matches!(
            read_udp_frame(&mut r, &mut buf).await,
            Err(RequestError::BadFrame)
        ));
        let mut r = &[0u8][..];
        assert!(matches!(
            read_udp_frame(&mut r, &mut buf).await,
            Err(RequestError::Truncated)
        ));
        let mut r = &[0u8, 10, 1][..];
        assert!(matches!(
            read_udp_frame(&mut r, &mut buf).await,
            Err(RequestError::Truncated)
        ));
    }
}
