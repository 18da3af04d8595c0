//! The expose messages (docs/protocol.md §7.8): REGISTER and its reply on a client-opened
//! control stream, and the header of a server-opened visitor stream.
//!
//! ```text
//! register  (after request VER=1 CMD=0x10 0.0.0.0:0):
//!           instance u64 | count u8 | count × (kind u8 | first u16 | last u16 | proxy u8)
//! reply     (after REP=0x00 0.0.0.0:0): count u8 | count × (status u8 | port u16)
//! visitor:  VER=1 | kind u8 | port u16 | source address | destination address
//!           | (kind 3 only: flow id u32) | payload
//! ```
//!
//! Kind 3 is a UDP visitor whose datagrams travel as transport datagrams on the named flow
//! ([`crate::flow`]); kind 2, a UDP visitor whose datagrams are framed on the stream.
//!
//! Readers never read past what they decode: a visitor header is followed by the visitor's
//! first bytes in the same flight.

use std::io;
use std::net::SocketAddr;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::spec::{ExposeKind, PortRange, ProxyVersion};
use crate::addr::{AddrError, TargetAddr};

/// Version byte of a visitor header.
pub(crate) const VISITOR_VERSION: u8 = 1;

/// Kind byte of a UDP visitor whose datagrams ride a flow (only in visitor headers).
const KIND_UDP_FLOW: u8 = 3;

/// Most entries one REGISTER may carry.
pub(crate) const MAX_ENTRIES: usize = u8::MAX as usize;

/// One expose as registered: which ports, which transport, which PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) kind: ExposeKind,
    pub(crate) ports: PortRange,
    pub(crate) proxy: Option<ProxyVersion>,
}

/// The client's registration: its instance (a random number per client process, so that a
/// restarted client takes its ports over from its own dead predecessor) and its exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Register {
    pub(crate) instance: u64,
    pub(crate) entries: Vec<Entry>,
}

/// Why a message could not be read.
#[derive(Debug, Error)]
pub enum WireError {
    /// A REGISTER with no entries.
    #[error("registration lists no expose")]
    Empty,
    /// More entries than fit.
    #[error("registration lists {0} exposes, at most {MAX_ENTRIES} fit")]
    TooMany(usize),
    /// An unknown transport byte.
    #[error("unknown expose kind {0}")]
    BadKind(u8),
    /// An unknown PROXY protocol byte.
    #[error("unknown PROXY protocol version {0}")]
    BadProxy(u8),
    /// A port range that is empty or contains 0.
    #[error("bad port range {0}-{1}")]
    BadRange(u16, u16),
    /// An unknown status byte in a reply.
    #[error("unknown registration status {0}")]
    BadStatus(u8),
    /// A reply with a different number of results than entries.
    #[error("reply has {got} results for {want} exposes")]
    ReplyCount {
        /// Results in the reply.
        got: usize,
        /// Entries registered.
        want: usize,
    },
    /// A visitor header of another version.
    #[error("unsupported visitor header version {0}")]
    BadVersion(u8),
    /// A visitor address that is not an IP address.
    #[error("bad visitor address: {0}")]
    Addr(#[from] AddrError),
    /// The stream ended inside a message.
    #[error("stream ended inside an expose message")]
    Truncated,
    /// Reading failed.
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Self::Truncated
        } else {
            Self::Io(e)
        }
    }
}

impl Register {
    /// The message bytes (after the tunnel request header).
    pub(crate) fn encode(&self) -> Result<Vec<u8>, WireError> {
        let count =
            u8::try_from(self.entries.len()).map_err(|_| WireError::TooMany(self.entries.len()))?;
        if count == 0 {
            return Err(WireError::Empty);
        }
        let mut out = Vec::with_capacity(9 + 6 * self.entries.len());
        out.extend_from_slice(&self.instance.to_be_bytes());
        out.push(count);
        for e in &self.entries {
            out.push(e.kind.to_byte());
            out.extend_from_slice(&e.ports.first().to_be_bytes());
            out.extend_from_slice(&e.ports.last().to_be_bytes());
            out.push(ProxyVersion::to_byte(e.proxy));
        }
        Ok(out)
    }

    /// Reads one registration and nothing more.
    pub(crate) async fn read_from<R: AsyncRead + Unpin>(r: &mut R) -> Result<Self, WireError> {
        let instance = r.read_u64().await?;
        let count = usize::from(r.read_u8().await?);
        if count == 0 {
            return Err(WireError::Empty);
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = r.read_u8().await?;
            let kind = ExposeKind::from_byte(kind).ok_or(WireError::BadKind(kind))?;
            let first = r.read_u16().await?;
            let last = r.read_u16().await?;
            let ports = PortRange::new(first, last).ok_or(WireError::BadRange(first, last))?;
            let proxy = ProxyVersion::from_byte(r.read_u8().await?).map_err(WireError::BadProxy)?;
            entries.push(Entry { kind, ports, proxy });
        }
        Ok(Self { instance, entries })
    }
}

/// The server's verdict on one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The server listens on every port of the entry.
    Ok,
    /// The port is outside the ports the server lets this client expose.
    NotAllowed,
    /// The port is taken on the server by another program.
    InUse,
    /// Another key (another user) holds the port.
    HeldByOther,
    /// Listening on the port failed for another reason.
    BindFailed,
}

impl Status {
    fn to_byte(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::NotAllowed => 1,
            Self::InUse => 2,
            Self::HeldByOther => 3,
            Self::BindFailed => 4,
        }
    }

    fn from_byte(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            0 => Self::Ok,
            1 => Self::NotAllowed,
            2 => Self::InUse,
            3 => Self::HeldByOther,
            4 => Self::BindFailed,
            other => return Err(WireError::BadStatus(other)),
        })
    }
}

/// The verdict on one entry and the port it is about (the first port when accepted, the
/// port at fault when refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) status: Status,
    pub(crate) port: u16,
}

/// Encodes the per-entry verdicts (after the tunnel reply header).
pub(crate) fn encode_verdicts(verdicts: &[Verdict]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 3 * verdicts.len());
    out.push(u8::try_from(verdicts.len()).unwrap_or(u8::MAX));
    for v in verdicts.iter().take(MAX_ENTRIES) {
        out.push(v.status.to_byte());
        out.extend_from_slice(&v.port.to_be_bytes());
    }
    out
}

/// Reads the verdicts for `want` entries.
pub(crate) async fn read_verdicts<R: AsyncRead + Unpin>(
    r: &mut R,
    want: usize,
) -> Result<Vec<Verdict>, WireError> {
    let got = usize::from(r.read_u8().await?);
    if got != want {
        return Err(WireError::ReplyCount { got, want });
    }
    let mut out = Vec::with_capacity(got);
    for _ in 0..got {
        let status = Status::from_byte(r.read_u8().await?)?;
        let port = r.read_u16().await?;
        out.push(Verdict { status, port });
    }
    Ok(out)
}

/// The header of a visitor stream (server → client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VisitorHeader {
    /// The expose's transport.
    pub(crate) kind: ExposeKind,
    /// The server port the visitor reached.
    pub(crate) port: u16,
    /// The visitor's address.
    pub(crate) source: SocketAddr,
    /// The server's address the visitor connected to (for the PROXY header).
    pub(crate) destination: SocketAddr,
    /// UDP only: the flow (opened by the server) that carries the visitor's datagrams as
    /// transport datagrams; `None`: they are framed on the stream.
    pub(crate) flow: Option<u32>,
}

impl VisitorHeader {
    /// Appends the header to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.push(VISITOR_VERSION);
        let flow = self.flow.filter(|_| self.kind == ExposeKind::Udp);
        out.push(if flow.is_some() {
            KIND_UDP_FLOW
        } else {
            self.kind.to_byte()
        });
        out.extend_from_slice(&self.port.to_be_bytes());
        TargetAddr::Ip(self.source).encode(out);
        TargetAddr::Ip(self.destination).encode(out);
        if let Some(id) = flow {
            out.extend_from_slice(&id.to_be_bytes());
        }
    }

    /// Reads one header and nothing more.
    pub(crate) async fn read_from<R: AsyncRead + Unpin>(r: &mut R) -> Result<Self, WireError> {
        let version = r.read_u8().await?;
        if version != VISITOR_VERSION {
            return Err(WireError::BadVersion(version));
        }
        let byte = r.read_u8().await?;
        let (kind, on_flow) = match byte {
            KIND_UDP_FLOW => (ExposeKind::Udp, true),
            other => (
                ExposeKind::from_byte(other).ok_or(WireError::BadKind(other))?,
                false,
            ),
        };
        let port = r.read_u16().await?;
        let source = read_ip(r).await?;
        let destination = read_ip(r).await?;
        let flow = if on_flow {
            Some(r.read_u32().await?)
        } else {
            None
        };
        Ok(Self {
            kind,
            port,
            source,
            destination,
            flow,
        })
    }
}

/// Reads an address that must be an IP address (visitors have no names).
async fn read_ip<R: AsyncRead + Unpin>(r: &mut R) -> Result<SocketAddr, WireError> {
    match TargetAddr::read_from(r).await {
        Ok(TargetAddr::Ip(sa)) => Ok(sa),
        Ok(TargetAddr::Domain(..)) => Err(WireError::Addr(AddrError::Syntax(
            "a visitor address must be an IP address".into(),
        ))),
        Err(AddrError::Truncated) => Err(WireError::Truncated),
        Err(AddrError::Io(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: ExposeKind, first: u16, last: u16, proxy: Option<ProxyVersion>) -> Entry {
        Entry {
            kind,
            ports: PortRange::new(first, last).unwrap(),
            proxy,
        }
    }

    #[tokio::test]
    async fn register_round_trips_byte_exact() {
        let reg = Register {
            instance: 0x0102_0304_0506_0708,
            entries: vec![
                entry(ExposeKind::Tcp, 8080, 8080, Some(ProxyVersion::V2)),
                entry(ExposeKind::Udp, 5000, 5009, None),
            ],
        };
        let mut bytes = reg.encode().unwrap();
        assert_eq!(
            bytes,
            [
                1, 2, 3, 4, 5, 6, 7, 8, 2, // instance, count
                1, 0x1f, 0x90, 0x1f, 0x90, 2, // tcp 8080-8080 proxy v2
                2, 0x13, 0x88, 0x13, 0x91, 0, // udp 5000-5009
            ]
        );
        bytes.push(0xee);
        let mut r = &bytes[..];
        assert_eq!(Register::read_from(&mut r).await.unwrap(), reg);
        assert_eq!(r, [0xee], "nothing read past the message");
    }

    #[tokio::test]
    async fn bad_registers_are_typed() {
        let read = |b: Vec<u8>| async move { Register::read_from(&mut &b[..]).await };
        let head = [0u8; 8];
        let with = |rest: &[u8]| [&head[..], rest].concat();
        assert!(matches!(read(with(&[0])).await, Err(WireError::Empty)));
        assert!(matches!(
            read(with(&[1, 9, 0, 80, 0, 80, 0])).await,
            Err(WireError::BadKind(9))
        ));
        assert!(matches!(
            read(with(&[1, 1, 0, 90, 0, 80, 0])).await,
            Err(WireError::BadRange(90, 80))
        ));
        assert!(matches!(
            read(with(&[1, 1, 0, 0, 0, 80, 0])).await,
            Err(WireError::BadRange(0, 80))
        ));
        assert!(matches!(
            read(with(&[1, 1, 0, 80, 0, 80, 3])).await,
            Err(WireError::BadProxy(3))
        ));
        assert!(matches!(
            read(with(&[2, 1, 0, 80, 0, 80, 0])).await,
            Err(WireError::Truncated)
        ));
        let empty = Register {
            instance: 1,
            entries: vec![],
        };
        assert!(matches!(empty.encode(), Err(WireError::Empty)));
    }

    #[tokio::test]
    async fn verdicts_round_trip() {
        let v = vec![
            Verdict {
                status: Status::Ok,
                port: 8000,
            },
            Verdict {
                status: Status::HeldByOther,
                port: 8003,
            },
        ];
        let bytes = encode_verdicts(&v);
        assert_eq!(bytes, [2, 0, 0x1f, 0x40, 3, 0x1f, 0x43]);
        assert_eq!(read_verdicts(&mut &bytes[..], 2).await.unwrap(), v);
        assert!(matches!(
            read_verdicts(&mut &bytes[..], 3).await,
            Err(WireError::ReplyCount { got: 2, want: 3 })
        ));
        assert!(matches!(
            read_verdicts(&mut &[1u8, 7, 0, 1][..], 1).await,
            Err(WireError::BadStatus(7))
        ));
    }

    #[tokio::test]
    async fn visitor_header_round_trips_and_leaves_payload() {
        let h = VisitorHeader {
            kind: ExposeKind::Tcp,
            port: 2222,
            source: "203.0.113.9:40000".parse().unwrap(),
            destination: "[2001:db8::1]:2222".parse().unwrap(),
            flow: None,
        };
        let mut bytes = Vec::new();
        h.encode(&mut bytes);
        assert_eq!(&bytes[..4], &[1, 1, 0x08, 0xae]);
        assert_eq!(bytes.len(), 4 + 7 + 19);
        bytes.extend_from_slice(b"SSH-2.0");
        let mut r = &bytes[..];
        assert_eq!(VisitorHeader::read_from(&mut r).await.unwrap(), h);
        assert_eq!(r, b"SSH-2.0");

        let mut bad = bytes.clone();
        bad[0] = 2;
        assert!(matches!(
            VisitorHeader::read_from(&mut &bad[..]).await,
            Err(WireError::BadVersion(2))
        ));
        let mut named = vec![1, 1, 0, 80];
        TargetAddr::Domain("example.com".into(), 1).encode(&mut named);
        assert!(matches!(
            VisitorHeader::read_from(&mut &named[..]).await,
            Err(WireError::Addr(_))
        ));
        assert!(matches!(
            VisitorHeader::read_from(&mut &bytes[..10]).await,
            Err(WireError::Truncated)
        ));
    }

    #[tokio::test]
    async fn udp_visitor_on_a_flow_names_the_flow() {
        let h = VisitorHeader {
            kind: ExposeKind::Udp,
            port: 51820,
            source: "198.51.100.4:6000".parse().unwrap(),
            destination: "192.0.2.1:51820".parse().unwrap(),
            flow: Some(0x8000_0005),
        };
        let mut bytes = Vec::new();
        h.encode(&mut bytes);
        assert_eq!(&bytes[..4], &[1, 3, 0xca, 0x6c]);
        assert_eq!(bytes.len(), 4 + 7 + 7 + 4);
        assert_eq!(&bytes[18..], &[0x80, 0, 0, 5]);
        bytes.push(0xee);
        let mut r = &bytes[..];
        assert_eq!(VisitorHeader::read_from(&mut r).await.unwrap(), h);
        assert_eq!(r, [0xee]);
        assert!(matches!(
            VisitorHeader::read_from(&mut &bytes[..20]).await,
            Err(WireError::Truncated)
        ));
        // A TCP visitor never carries a flow, even if one is set by mistake.
        let tcp = VisitorHeader {
            kind: ExposeKind::Tcp,
            ..h
        };
        let mut bytes = Vec::new();
        tcp.encode(&mut bytes);
        assert_eq!(bytes[1], 1);
        assert_eq!(bytes.len(), 4 + 7 + 7);
    }
}
