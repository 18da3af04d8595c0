//! SOCKS5 wire formats: method negotiation, RFC 1929 username/password, requests, replies
//! and the UDP request header.
//!
//! Readers take exactly the bytes of the message they parse (never more), so the stream is
//! left at the next message; parse failures are typed so the server can choose between an
//! error reply and closing the connection.

use std::io;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::addr::{AddrError, TargetAddr};
use crate::request::ReplyCode;

/// SOCKS protocol version byte.
pub const SOCKS_VERSION: u8 = 5;
/// Username/password sub-negotiation version byte (RFC 1929).
pub const USER_PASS_VERSION: u8 = 1;
/// Method: no authentication.
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method: username/password.
pub const METHOD_USER_PASS: u8 = 0x02;
/// Method reply: none of the offered methods is acceptable.
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xff;
/// Command: CONNECT.
pub const CMD_CONNECT: u8 = 1;
/// Command: BIND (not supported by gaptun).
pub const CMD_BIND: u8 = 2;
/// Command: UDP ASSOCIATE.
pub const CMD_UDP_ASSOCIATE: u8 = 3;

/// Why a SOCKS5 message could not be parsed or a session could not continue.
#[derive(Debug, Error)]
pub enum SocksError {
    /// The version byte is not 5 (or not 1 in the auth sub-negotiation).
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The client offered no method we accept.
    #[error("no acceptable authentication method offered")]
    NoAcceptableMethod,
    /// Wrong username or password.
    #[error("authentication failed")]
    AuthFailed,
    /// The request's address could not be parsed.
    #[error("bad address: {0}")]
    Addr(AddrError),
    /// A UDP datagram with a non-zero fragment number (fragmentation is not supported).
    #[error("fragmented UDP datagram (frag {0})")]
    Fragmented(u8),
    /// The connection ended in the middle of a message.
    #[error("connection ended in the middle of a message")]
    Truncated,
    /// The client took too long to finish the handshake.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The tunnel could not serve the request (the client got the matching reply).
    #[error("tunnel request failed: {0}")]
    Tunnel(#[from] crate::client::TunnelClientError),
    /// Reading or writing the connection failed.
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
}

impl From<io::Error> for SocksError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Self::Truncated
        } else {
            Self::Io(e)
        }
    }
}

impl From<AddrError> for SocksError {
    fn from(e: AddrError) -> Self {
        match e {
            AddrError::Truncated => Self::Truncated,
            AddrError::Io(io) => io.into(),
            other => Self::Addr(other),
        }
    }
}

impl SocksError {
    /// The reply to send for a request that failed to parse, if one is due (RFC 1928 says
    /// to answer an unknown address type with 8; other malformed requests get a general
    /// failure; a broken or foreign-version connection is just closed).
    pub fn request_reply_code(&self) -> Option<ReplyCode> {
        match self {
            Self::Addr(AddrError::UnsupportedType(_)) => Some(ReplyCode::AddressTypeNotSupported),
            Self::Addr(_) => Some(ReplyCode::GeneralFailure),
            _ => None,
        }
    }
}

/// Reads the client's greeting (`VER NMETHODS METHODS...`) and returns the offered methods.
pub async fn read_greeting<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, SocksError> {
    let version = r.read_u8().await?;
    if version != SOCKS_VERSION {
        return Err(SocksError::UnsupportedVersion(version));
    }
    let count = r.read_u8().await?;
    let mut methods = vec![0u8; usize::from(count)];
    r.read_exact(&mut methods).await?;
    Ok(methods)
}

/// Picks the method to use: username/password when credentials are configured, otherwise
/// no authentication; [`METHOD_NONE_ACCEPTABLE`] if the client did not offer it.
pub fn choose_method(offered: &[u8], auth_required: bool) -> u8 {
    let wanted = if auth_required {
        METHOD_USER_PASS
    } else {
        METHOD_NO_AUTH
    };
    if offered.contains(&wanted) {
        wanted
    } else {
        METHOD_NONE_ACCEPTABLE
    }
}

/// The server's method selection message.
pub fn encode_method_choice(method: u8) -> [u8; 2] {
    [SOCKS_VERSION, method]
}

/// Username and password from the RFC 1929 sub-negotiation (raw bytes, as sent).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username.
    pub username: Vec<u8>,
    /// The password.
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    /// Whether these match the configured pair, compared in constant time so the time taken
    /// does not tell how much of a guess was right.
    pub fn matches(&self, username: &str, password: &str) -> bool {
        let user_ok = constant_time_eq(&self.username, username.as_bytes());
        let pass_ok = constant_time_eq(&self.password, password.as_bytes());
        user_ok & pass_ok
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads an RFC 1929 request: `VER=1 ULEN UNAME PLEN PASSWD`.
pub async fn read_credentials<R: AsyncRead + Unpin>(r: &mut R) -> Result<Credentials, SocksError> {
    let version = r.read_u8().await?;
    if version != USER_PASS_VERSION {
        return Err(SocksError::UnsupportedVersion(version));
    }
    let username = read_short_bytes(r).await?;
    let password = read_short_bytes(r).await?;
    Ok(Credentials { username, password })
}

async fn read_short_bytes<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, SocksError> {
    let len = r.read_u8().await?;
    let mut bytes = vec![0u8; usize::from(len)];
    r.read_exact(&mut bytes).await?;
    Ok(bytes)
}

/// The RFC 1929 status message (`VER=1 STATUS`; 0 is success).
pub fn encode_auth_status(success: bool) -> [u8; 2] {
    [USER_PASS_VERSION, if success { 0 } else { 1 }]
}

/// A SOCKS5 request (`VER CMD RSV ATYP DST.ADDR DST.PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksRequest {
    /// The command byte, as sent (unknown commands are answered by the server, not here).
    pub command: u8,
    /// The destination.
    pub target: TargetAddr,
}

/// Reads one request. The reserved byte is ignored, as RFC 1928 does not say what to do
/// with a non-zero value and some clients send garbage there.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<SocksRequest, SocksError> {
    let mut head = [0u8; 3];
    r.read_exact(&mut head).await?;
    let [version, command, _reserved] = head;
    if version != SOCKS_VERSION {
        return Err(SocksError::UnsupportedVersion(version));
    }
    let target = TargetAddr::read_from(r).await?;
    Ok(SocksRequest { command, target })
}

/// A reply: `VER REP RSV ATYP BND.ADDR BND.PORT`.
pub fn encode_reply(code: ReplyCode, bound: &TargetAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + bound.encoded_len());
    out.extend_from_slice(&[SOCKS_VERSION, code.to_byte(), 0]);
    bound.encode(&mut out);
    out
}

/// Splits a client's UDP datagram (`RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA`) into its
/// destination and payload. Fragments (FRAG != 0) are refused: gaptun does not reassemble.
pub fn parse_udp_datagram(datagram: &[u8]) -> Result<(TargetAddr, &[u8]), SocksError> {
    let header = datagram.get(..3).ok_or(SocksError::Truncated)?;
    if let [_, _, frag] = *header
        && frag != 0
    {
        return Err(SocksError::Fragmented(frag));
    }
    let rest = datagram.get(3..).ok_or(SocksError::Truncated)?;
    let (target, used) = TargetAddr::decode(rest)?;
    let payload = rest.get(used..).ok_or(SocksError::Truncated)?;
    Ok((target, payload))
}

/// Builds a UDP datagram for the client: header with the source address, then the payload.
pub fn encode_udp_datagram(source: &TargetAddr, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(3 + source.encoded_len() + payload.len());
    out.extend_from_slice(&[0, 0, 0]);
    source.encode(out);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::addr::{v4, v6};

    #[tokio::test]
    async fn greeting_parses_and_methods_are_chosen() {
        let mut r = &[5u8, 2, 0, 2, 0xaa][..];
        let methods = read_greeting(&mut r).await.unwrap();
        assert_eq!(methods, [0, 2]);
        assert_eq!(r, [0xaa]);
        assert_eq!(choose_method(&methods, false), METHOD_NO_AUTH);
        assert_eq!(choose_method(&methods, true), METHOD_USER_PASS);
        assert_eq!(choose_method(&[0], true), METHOD_NONE_ACCEPTABLE);
        assert_eq!(choose_method(&[2], false), METHOD_NONE_ACCEPTABLE);
        assert_eq!(choose_method(&[], false), METHOD_NONE_ACCEPTABLE);
        assert_eq!(encode_method_choice(2), [5, 2]);
    }

    #[tokio::test]
    async fn greeting_errors() {
        let mut r = &[4u8, 1, 0][..];
        assert!(matches!(
            read_greeting(&mut r).await,
            Err(SocksError::UnsupportedVersion(4))
        ));
        let mut r = &[5u8, 3, 0][..];
        assert!(matches!(
            read_greeting(&mut r).await,
            Err(SocksError::Truncated)
        ));
        let mut r = &[][..];
        assert!(matches!(
            read_greeting(&mut r).await,
            Err(SocksError::Truncated)
        ));
    }

    #[tokio::test]
    async fn credentials_parse_and_compare() {
        let mut r = &[1u8, 3, b'b', b'o', b'b', 2, b'p', b'w'][..];
        let creds = read_credentials(&mut r).await.unwrap();
        assert_eq!(creds.username, b"bob");
        assert!(creds.matches("bob", "pw"));
        assert!(!creds.matches("bob", "px"));
        assert!(!creds.matches("bo", "pw"));
        assert!(!format!("{creds:?}").contains("pw"));
        let mut r = &[2u8, 0, 0][..];
        assert!(matches!(
            read_credentials(&mut r).await,
            Err(SocksError::UnsupportedVersion(2))
        ));
        let mut r = &[1u8, 5, b'a'][..];
        assert!(matches!(
            read_credentials(&mut r).await,
            Err(SocksError::Truncated)
        ));
        assert_eq!(encode_auth_status(true), [1, 0]);
        assert_eq!(encode_auth_status(false), [1, 1]);
    }

    #[tokio::test]
    async fn requests_parse() {
        let mut r = &[5u8, 1, 0, 1, 10, 0, 0, 1, 0, 80][..];
        let req = read_request(&mut r).await.unwrap();
        assert_eq!(req.command, CMD_CONNECT);
        assert_eq!(
            req.target,
            TargetAddr::Ip(v4(Ipv4Addr::new(10, 0, 0, 1), 80))
        );

        let mut r = &[5u8, 9, 0, 3, 1, b'x', 0, 1][..];
        let req = read_request(&mut r).await.unwrap();
        assert_eq!(req.command, 9);

        let mut r = &[5u8, 1, 0, 7, 0, 0][..];
        let err = read_request(&mut r).await.unwrap_err();
        assert!(matches!(
            err,
            SocksError::Addr(AddrError::UnsupportedType(7))
        ));
        assert_eq!(
            err.request_reply_code(),
            Some(ReplyCode::AddressTypeNotSupported)
        );

        let mut r = &[5u8, 1, 0, 3, 0, 0, 80][..];
        let err = read_request(&mut r).await.unwrap_err();
        assert_eq!(err.request_reply_code(), Some(ReplyCode::GeneralFailure));

        let mut r = &[4u8, 1, 0, 1, 1, 2, 3, 4, 0, 80][..];
        let err = read_request(&mut r).await.unwrap_err();
        assert!(matches!(err, SocksError::UnsupportedVersion(4)));
        assert_eq!(err.request_reply_code(), None);

        let mut r = &[5u8, 1, 0, 4, 0, 0][..];
        let err = read_request(&mut r).await.unwrap_err();
        assert!(matches!(err, SocksError::Truncated));
        assert_eq!(err.request_reply_code(), None);
    }

    #[test]
    fn reply_layout() {
        let bound = TargetAddr::Ip(v4(Ipv4Addr::new(1, 2, 3, 4), 0x0102));
        assert_eq!(
            encode_reply(ReplyCode::ConnectionRefused, &bound),
            [5, 5, 0, 1, 1, 2, 3, 4, 1, 2]
        );
    }

    #[test]
    fn udp_datagrams_round_trip_and_fragments_are_refused() {
        let source = TargetAddr::Ip(v6(Ipv6Addr::LOCALHOST, 53));
        let mut out = Vec::new();
        encode_udp_datagram(&source, b"dns", &mut out);
        assert_eq!(&out[..4], &[0, 0, 0, 4]);
        let (addr, payload) = parse_udp_datagram(&out).unwrap();
        assert_eq!((addr, payload), (source, &b"dns"[..]));

        let mut fragment = out.clone();
        fragment[2] = 1;
        assert!(matches!(
            parse_udp_datagram(&fragment),
            Err(SocksError::Fragmented(1))
        ));
        assert!(matches!(
            parse_udp_datagram(&[0, 0]),
            Err(SocksError::Truncated)
        ));
        assert!(matches!(
            parse_udp_datagram(&[0, 0, 0, 1, 1]),
            Err(SocksError::Truncated)
        ));
        assert!(matches!(
            parse_udp_datagram(&[0, 0, 0, 9, 1]),
            Err(SocksError::Addr(AddrError::UnsupportedType(9)))
        ));
    }
}
