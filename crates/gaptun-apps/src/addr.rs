//! Target addresses in the SOCKS5 encoding.
//!
//! The same byte layout (RFC 1928 section 5) is used by SOCKS5 requests and replies, the SOCKS5
//! UDP header, and gaptun's own tunnel requests and UDP frames, so it lives here once:
//!
//! ```text
//! atyp = 1: IPv4     | 4 bytes address  | port u16 BE
//! atyp = 3: domain   | len u8 | len bytes | port u16 BE
//! atyp = 4: IPv6     | 16 bytes address | port u16 BE
//! ```
//!
//! Domain names are kept as text and resolved by whoever dials (the gaptun server), so a client
//! behind a censoring resolver never needs to resolve names itself.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Address type byte for an IPv4 address.
pub const ATYP_IPV4: u8 = 1;
/// Address type byte for a domain name.
pub const ATYP_DOMAIN: u8 = 3;
/// Address type byte for an IPv6 address.
pub const ATYP_IPV6: u8 = 4;

/// Longest domain name the encoding can carry (its length is one byte).
pub const MAX_DOMAIN_LEN: usize = 255;

/// Where a stream or datagram should go: an IP socket address or a name still to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetAddr {
    /// A literal IP address and port.
    Ip(SocketAddr),
    /// A domain name (validated by [`validate_domain`]) and port.
    Domain(String, u16),
}

/// Why an address could not be decoded or parsed.
#[derive(Debug, Error)]
pub enum AddrError {
    /// The address type byte is not 1, 3 or 4.
    #[error("address type {0} is not supported")]
    UnsupportedType(u8),
    /// A domain name of length zero.
    #[error("empty domain name")]
    EmptyDomain,
    /// A domain name with bytes other than visible ASCII, or too long.
    #[error("invalid domain name")]
    InvalidDomain,
    /// The bytes ended in the middle of an address.
    #[error("address is truncated")]
    Truncated,
    /// Text that is not `host:port`, `ip:port` or `[v6]:port`.
    #[error("cannot parse address {0:?}: expected HOST:PORT, IP:PORT or [IPV6]:PORT")]
    Syntax(String),
    /// Reading from the stream failed.
    #[error("i/o error while reading an address: {0}")]
    Io(#[from] io::Error),
}

impl TargetAddr {
    /// The port, whatever the kind of address.
    pub fn port(&self) -> u16 {
        match self {
            Self::Ip(sa) => sa.port(),
            Self::Domain(_, port) => *port,
        }
    }

    /// The host part as text (an IP literal without brackets, or the name).
    pub fn host(&self) -> String {
        match self {
            Self::Ip(sa) => sa.ip().to_string(),
            Self::Domain(name, _) => name.clone(),
        }
    }

    /// `0.0.0.0:0`, the conventional "no address" in replies and UDP requests.
    pub fn unspecified() -> Self {
        Self::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
    }

    /// How many bytes [`TargetAddr::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Ip(SocketAddr::V4(_)) => 1 + 4 + 2,
            Self::Ip(SocketAddr::V6(_)) => 1 + 16 + 2,
            Self::Domain(name, _) => 1 + 1 + name.len() + 2,
        }
    }

    /// Appends the SOCKS5 encoding to `out`.
    ///
    /// A domain name longer than [`MAX_DOMAIN_LEN`] cannot be built through [`FromStr`] or
    /// decoding; if one is constructed by hand it is truncated rather than mis-encoded.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ip(SocketAddr::V4(sa)) => {
                out.push(ATYP_IPV4);
                out.extend_from_slice(&sa.ip().octets());
            }
            Self::Ip(SocketAddr::V6(sa)) => {
                out.push(ATYP_IPV6);
                out.extend_from_slice(&sa.ip().octets());
            }
            Self::Domain(name, _) => {
                let bytes = name.as_bytes();
                let len = bytes.len().min(MAX_DOMAIN_LEN);
                out.push(ATYP_DOMAIN);
                out.push(len as u8);
                out.extend_from_slice(bytes.get(..len).unwrap_or_default());
            }
        }
        out.extend_from_slice(&self.port().to_be_bytes());
    }

    /// Decodes an address at the start of `bytes`; returns it and the number of bytes used.
    pub fn decode(bytes: &[u8]) -> Result<(Self, usize), AddrError> {
        let (&atyp, rest) = bytes.split_first().ok_or(AddrError::Truncated)?;
        let (addr, used) = match atyp {
            ATYP_IPV4 => {
                let octets: [u8; 4] = take_array(rest)?;
                (IpAddr::V4(Ipv4Addr::from(octets)).into(), 4)
            }
            ATYP_IPV6 => {
                let octets: [u8; 16] = take_array(rest)?;
                (IpAddr::V6(Ipv6Addr::from(octets)).into(), 16)
            }
            ATYP_DOMAIN => {
                let (&len, rest) = rest.split_first().ok_or(AddrError::Truncated)?;
                let name = rest.get(..usize::from(len)).ok_or(AddrError::Truncated)?;
                (AddrHost::Name(validate_domain(name)?), 1 + usize::from(len))
            }
            other => return Err(AddrError::UnsupportedType(other)),
        };
        let port_bytes: [u8; 2] = take_array(rest.get(used..).ok_or(AddrError::Truncated)?)?;
        let port = u16::from_be_bytes(port_bytes);
        Ok((addr.with_port(port), 1 + used + 2))
    }

    /// Reads exactly one encoded address from a stream, never reading past it.
    ///
    /// Reading no further than the address matters: bytes after a request belong to the
    /// payload (clients may pipeline data right behind the request).
    pub async fn read_from<R: AsyncRead + Unpin>(r: &mut R) -> Result<Self, AddrError> {
        let atyp = r.read_u8().await.map_err(truncated_on_eof)?;
        let host = match atyp {
            ATYP_IPV4 => {
                let mut octets = [0u8; 4];
                r.read_exact(&mut octets).await.map_err(truncated_on_eof)?;
                AddrHost::Ip(IpAddr::V4(Ipv4Addr::from(octets)))
            }
            ATYP_IPV6 => {
                let mut octets = [0u8; 16];
                r.read_exact(&mut octets).await.map_err(truncated_on_eof)?;
                AddrHost::Ip(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            ATYP_DOMAIN => {
                let len = r.read_u8().await.map_err(truncated_on_eof)?;
                let mut name = vec![0u8; usize::from(len)];
                r.read_exact(&mut name).await.map_err(truncated_on_eof)?;
                AddrHost::Name(validate_domain(&name)?)
            }
            other => return Err(AddrError::UnsupportedType(other)),
        };
        let port = r.read_u16().await.map_err(truncated_on_eof)?;
        Ok(host.with_port(port))
    }
}

/// The host half of an address, before the port is known (decoding reads the port last).
enum AddrHost {
    Ip(IpAddr),
    Name(String),
}

impl From<IpAddr> for AddrHost {
    fn from(ip: IpAddr) -> Self {
        Self::Ip(ip)
    }
}

impl AddrHost {
    fn with_port(self, port: u16) -> TargetAddr {
        match self {
            Self::Ip(ip) => TargetAddr::Ip(SocketAddr::new(ip, port)),
            Self::Name(name) => TargetAddr::Domain(name, port),
        }
    }
}

fn take_array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], AddrError> {
    bytes
        .get(..N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(AddrError::Truncated)
}

/// An early EOF means the peer sent half an address: report that as truncation, not I/O.
fn truncated_on_eof(e: io::Error) -> AddrError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        AddrError::Truncated
    } else {
        AddrError::Io(e)
    }
}

/// Checks that `name` is a plausible host name and returns it as text.
///
/// Accepted: 1 to 255 bytes of visible ASCII (0x21..=0x7E). Internationalised names must be
/// sent in their ASCII (punycode) form. Anything else (empty, control bytes, spaces, UTF-8)
/// is refused here so that nothing odd reaches the resolver or the logs.
pub fn validate_domain(name: &[u8]) -> Result<String, AddrError> {
    if name.is_empty() {
        return Err(AddrError::EmptyDomain);
    }
    if name.len() > MAX_DOMAIN_LEN || !name.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(AddrError::InvalidDomain);
    }
    String::from_utf8(name.to_vec()).map_err(|_| AddrError::InvalidDomain)
}

impl From<SocketAddr> for TargetAddr {
    fn from(sa: SocketAddr) -> Self {
        Self::Ip(sa)
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(sa) => write!(f, "{sa}"),
            Self::Domain(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

impl FromStr for TargetAddr {
    type Err = AddrError;

    /// Parses `IP:PORT`, `[IPV6]:PORT` or `HOST:PORT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Self::Ip(sa));
        }
        let syntax = || AddrError::Syntax(s.to_owned());
        let (host, port) = s.rsplit_once(':').ok_or_else(syntax)?;
        let port: u16 = port.parse().map_err(|_| syntax())?;
        if host.contains(':') || host.starts_with('[') {
            return Err(syntax());
        }
        let name = validate_domain(host.as_bytes()).map_err(|_| syntax())?;
        Ok(Self::Domain(name, port))
    }
}

/// Builds a socket address from parts; small helper for IPv6 literals in tests and callers.
pub fn v6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
}

/// Builds an IPv4 socket address from parts.
pub fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(addr: TargetAddr) {
        let mut buf = Vec::new();
        addr.encode(&mut buf);
        assert_eq!(buf.len(), addr.encoded_len());
        buf.extend_from_slice(b"tail");
        let (decoded, used) = TargetAddr::decode(&buf).unwrap();
        assert_eq!(decoded, addr);
        assert_eq!(used, addr.encoded_len());
    }

    #[test]
    fn encodings_round_trip() {
        round_trip(TargetAddr::Ip(v4(Ipv4Addr::new(1, 2, 3, 4), 443)));
        round_trip(TargetAddr::Ip(v6(Ipv6Addr::LOCALHOST, 65535)));
        round_trip(TargetAddr::Domain("example.com".into(), 80));
        round_trip(TargetAddr::Domain("a".repeat(255), 1));
    }

    #[test]
    fn ipv4_encoding_is_exact() {
        let mut buf = Vec::new();
        TargetAddr::Ip(v4(Ipv4Addr::new(10, 0, 0, 1), 0x1234)).encode(&mut buf);
        assert_eq!(buf, [1, 10, 0, 0, 1, 0x12, 0x34]);
        buf.clear();
        TargetAddr::Domain("ab".into(), 80).encode(&mut buf);
        assert_eq!(buf, [3, 2, b'a', b'b', 0, 80]);
    }

    #[test]
    fn decode_rejects_bad_input() {
        assert!(matches!(TargetAddr::decode(&[]), Err(AddrError::Truncated)));
        assert!(matches!(
            TargetAddr::decode(&[1, 1, 2, 3]),
            Err(AddrError::Truncated)
        ));
        assert!(matches!(
            TargetAddr::decode(&[1, 1, 2, 3, 4, 0]),
            Err(AddrError::Truncated)
        ));
        assert!(matches!(
            TargetAddr::decode(&[4; 10]),
            Err(AddrError::Truncated)
        ));
        assert!(matches!(
            TargetAddr::decode(&[3, 5, b'a']),
            Err(AddrError::Truncated)
        ));
        assert!(matches!(
            TargetAddr::decode(&[3, 0, 0, 80]),
            Err(AddrError::EmptyDomain)
        ));
        assert!(matches!(
            TargetAddr::decode(&[3, 2, b'a', b' ', 0, 80]),
            Err(AddrError::InvalidDomain)
        ));
        assert!(matches!(
            TargetAddr::decode(&[3, 2, 0xc3, 0xa9, 0, 80]),
            Err(AddrError::InvalidDomain)
        ));
        assert!(matches!(
            TargetAddr::decode(&[2, 0, 0]),
            Err(AddrError::UnsupportedType(2))
        ));
    }

    #[tokio::test]
    async fn read_from_stops_at_the_port() {
        let bytes = [3u8, 3, b'f', b'o', b'o', 0x01, 0xbb, b'X'];
        let mut r = &bytes[..];
        let addr = TargetAddr::read_from(&mut r).await.unwrap();
        assert_eq!(addr, TargetAddr::Domain("foo".into(), 443));
        assert_eq!(r, b"X");
    }

    #[tokio::test]
    async fn read_from_reports_truncation_and_bad_types() {
        let mut r = &[1u8, 127, 0][..];
        assert!(matches!(
            TargetAddr::read_from(&mut r).await,
            Err(AddrError::Truncated)
        ));
        let mut r = &[9u8][..];
        assert!(matches!(
            TargetAddr::read_from(&mut r).await,
            Err(AddrError::UnsupportedType(9))
        ));
        let mut r = &[3u8, 0, 0, 80][..];
        assert!(matches!(
            TargetAddr::read_from(&mut r).await,
            Err(AddrError::EmptyDomain)
        ));
    }

    #[test]
    fn parses_text_forms() {
        assert_eq!(
            "127.0.0.1:80".parse::<TargetAddr>().unwrap(),
            TargetAddr::Ip(v4(Ipv4Addr::LOCALHOST, 80))
        );
        assert_eq!(
            "[::1]:53".parse::<TargetAddr>().unwrap(),
            TargetAddr::Ip(v6(Ipv6Addr::LOCALHOST, 53))
        );
        assert_eq!(
            "example.org:443".parse::<TargetAddr>().unwrap(),
            TargetAddr::Domain("example.org".into(), 443)
        );
        for bad in [
            "example.org",
            "::1:53",
            "host:99999",
            ":80",
            "[::1]",
            "a b:1",
            "[x]:1",
        ] {
            assert!(bad.parse::<TargetAddr>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn display_matches_parse() {
        for text in ["1.2.3.4:5", "[2001:db8::1]:443", "example.com:80"] {
            assert_eq!(text.parse::<TargetAddr>().unwrap().to_string(), text);
        }
    }
}
