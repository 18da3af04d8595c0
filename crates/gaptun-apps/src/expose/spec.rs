//! What an operator writes: expose specs (client) and the allowed ports (server).
//!
//! ```text
//! SPEC  = [tcp:|udp:]REMOTE=LOCAL[,proxy=v1|v2]
//! REMOTE = PORT | FIRST-LAST                     ports on the server
//! LOCAL  = HOST:PORT | HOST:FIRST-LAST           what the client dials, HOST an IP or a name
//! ```
//!
//! A range on the server maps port by port onto consecutive local ports from LOCAL's port
//! (`8000-8005=127.0.0.1:9000` sends 8000 to 9000 … 8005 to 9005); a range written on both
//! sides must have the same length. The PROXY protocol is for TCP exposes only (a UDP service
//! would need it in every datagram).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Transport of an expose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExposeKind {
    /// TCP: one tunnel stream per visitor connection.
    Tcp,
    /// UDP: one tunnel stream per visitor address, carrying its datagrams.
    Udp,
}

impl ExposeKind {
    /// The byte used on the wire.
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Self::Tcp => 1,
            Self::Udp => 2,
        }
    }

    /// The kind for a wire byte.
    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Tcp),
            2 => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for ExposeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// Which PROXY protocol header the client sends to LOCAL before the visitor's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl ProxyVersion {
    /// The byte used on the wire (0 is "none").
    pub(crate) fn to_byte(v: Option<Self>) -> u8 {
        match v {
            None => 0,
            Some(Self::V1) => 1,
            Some(Self::V2) => 2,
        }
    }

    /// The version for a wire byte; `Err` for an unknown byte.
    pub(crate) fn from_byte(b: u8) -> Result<Option<Self>, u8> {
        match b {
            0 => Ok(None),
            1 => Ok(Some(Self::V1)),
            2 => Ok(Some(Self::V2)),
            other => Err(other),
        }
    }
}

/// An inclusive range of ports, `first <= last`, never containing port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// The range `first..=last`; `None` if it is empty or contains port 0.
    pub fn new(first: u16, last: u16) -> Option<Self> {
        (first != 0 && first <= last).then_some(Self { first, last })
    }

    /// The first port.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// The last port (equal to `first` for a single port).
    pub fn last(&self) -> u16 {
        self.last
    }

    /// How many ports.
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    /// Always false: a range holds at least one port. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// The ports, in order.
    pub fn ports(&self) -> impl Iterator<Item = u16> + use<> {
        self.first..=self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let port = |p: &str| -> Result<u16, SpecError> {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| SpecError::BadPort(p.trim().to_owned()))
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        Self::new(first, last).ok_or_else(|| SpecError::BadRange(s.trim().to_owned()))
    }
}

/// Why a spec or a port list did not parse; each names the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    /// No `=` between REMOTE and LOCAL.
    #[error("expected [tcp:|udp:]REMOTE=LOCAL, e.g. 8080=127.0.0.1:80")]
    Syntax,
    /// A port that is not a number from 1 to 65535.
    #[error("{0:?} is not a port (1-65535)")]
    BadPort(String),
    /// A range whose end is below its start.
    #[error("{0:?} is not a port range (FIRST-LAST with FIRST <= LAST)")]
    BadRange(String),
    /// LOCAL without a host or without a port.
    #[error("local address {0:?} must be HOST:PORT (an IPv6 address in brackets)")]
    BadLocal(String),
    /// A local range that ends above port 65535.
    #[error("the local ports starting at {first} run past 65535 for {count} remote ports")]
    LocalOverflow {
        /// The first local port.
        first: u16,
        /// How many ports the remote range has.
        count: usize,
    },
    /// Ranges on both sides of different lengths.
    #[error("remote range {remote} has {remote_len} ports but local range has {local_len}")]
    RangeLength {
        /// The remote range as written.
        remote: String,
        /// Its length.
        remote_len: usize,
        /// The local range's length.
        local_len: usize,
    },
    /// An option after LOCAL that is not known.
    #[error("unknown option {0:?} (known: proxy=v1, proxy=v2)")]
    BadOption(String),
    /// `proxy=` on a UDP expose.
    #[error("the PROXY protocol applies to tcp exposes only")]
    ProxyOnUdp,
}

/// One expose, as given to the client: which server ports, which local target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposeSpec {
    /// TCP or UDP.
    pub kind: ExposeKind,
    /// The ports on the server.
    pub remote: PortRange,
    /// The host the client dials (an IP address or a name resolved on the client).
    pub local_host: String,
    /// The local port for `remote.first()`; the next ports follow in order.
    pub local_port: u16,
    /// The PROXY protocol header to send to the local service, if any.
    pub proxy: Option<ProxyVersion>,
}

impl ExposeSpec {
    /// The local `(host, port)` a visitor of server port `port` is sent to, if the port is
    /// part of this expose.
    pub fn local_for(&self, port: u16) -> Option<(&str, u16)> {
        if !self.remote.contains(port) {
            return None;
        }
        let local = self.local_port.checked_add(port - self.remote.first())?;
        Some((&self.local_host, local))
    }
}

impl fmt::Display for ExposeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.local_host.contains(':') {
            format!("[{}]", self.local_host)
        } else {
            self.local_host.clone()
        };
        write!(
            f,
            "{}:{}={host}:{}",
            self.kind, self.remote, self.local_port
        )?;
        if self.remote.len() > 1 {
            let last = usize::from(self.local_port) + self.remote.len() - 1;
            write!(f, "-{last}")?;
        }
        match self.proxy {
            None => Ok(()),
            Some(ProxyVersion::V1) => f.write_str(",proxy=v1"),
            Some(ProxyVersion::V2) => f.write_str(",proxy=v2"),
        }
    }
}

impl FromStr for ExposeSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let s = s.trim();
        let (kind, rest) = if let Some(rest) = s.strip_prefix("tcp:") {
            (ExposeKind::Tcp, rest)
        } else if let Some(rest) = s.strip_prefix("udp:") {
            (ExposeKind::Udp, rest)
        } else {
            (ExposeKind::Tcp, s)
        };
        let (remote, local) = rest.split_once('=').ok_or(SpecError::Syntax)?;
        let remote: PortRange = remote.parse()?;
        let mut parts = local.split(',');
        let local = parts.next().unwrap_or_default().trim();
        let mut proxy = None;
        for option in parts {
            proxy = Some(match option.trim() {
                "proxy=v1" => ProxyVersion::V1,
                "proxy=v2" => ProxyVersion::V2,
                other => return Err(SpecError::BadOption(other.to_owned())),
            });
        }
        if proxy.is_some() && kind == ExposeKind::Udp {
            return Err(SpecError::ProxyOnUdp);
        }
        let (host, ports) = local
            .rsplit_once(':')
            .filter(|(h, p)| !h.is_empty() && !p.is_empty())
            .ok_or_else(|| SpecError::BadLocal(local.to_owned()))?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .ok_or_else(|| SpecError::BadLocal(local.to_owned()))?,
            // An IPv6 address without brackets: its last colon was taken for the port's.
            None if host.contains(':') => return Err(SpecError::BadLocal(local.to_owned())),
            None => host,
        };
        let local_range: PortRange = ports.parse()?;
        if local_range.len() > 1 && local_range.len() != remote.len() {
            return Err(SpecError::RangeLength {
                remote: remote.to_string(),
                remote_len: remote.len(),
                local_len: local_range.len(),
            });
        }
        if usize::from(local_range.first()) + remote.len() - 1 > usize::from(u16::MAX) {
            return Err(SpecError::LocalOverflow {
                first: local_range.first(),
                count: remote.len(),
            });
        }
        Ok(Self {
            kind,
            remote,
            local_host: host.to_owned(),
            local_port: local_range.first(),
            proxy,
        })
    }
}

/// The ports a server lets clients expose (`--expose-ports 8000-9000,2222`). Empty: none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet(Vec<PortRange>);

impl PortSet {
    /// No port at all: exposing is off.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether `port` may be exposed.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }

    /// Whether no port may be exposed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for PortSet {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> ExposeSpec {
        s.parse().unwrap()
    }

    #[test]
    fn specs_parse() {
        let s = spec("8080=127.0.0.1:80");
        assert_eq!(s.kind, ExposeKind::Tcp);
        assert_eq!((s.remote.first(), s.remote.last()), (8080, 8080));
        assert_eq!(s.local_for(8080), Some(("127.0.0.1", 80)));
        assert_eq!(s.local_for(8081), None);
        assert_eq!(s.proxy, None);

        let s = spec("udp:5353=[::1]:53");
        assert_eq!(s.kind, ExposeKind::Udp);
        assert_eq!(s.local_for(5353), Some(("::1", 53)));

        let s = spec("tcp:8000-8005=localhost:9000,proxy=v2");
        assert_eq!(s.local_for(8000), Some(("localhost", 9000)));
        assert_eq!(s.local_for(8005), Some(("localhost", 9005)));
        assert_eq!(s.local_for(8006), None);
        assert_eq!(s.proxy, Some(ProxyVersion::V2));
        assert_eq!(s.to_string(), "tcp:8000-8005=localhost:9000-9005,proxy=v2");

        let s = spec("8000-8002=10.0.0.1:7000-7002");
        assert_eq!(s.local_for(8002), Some(("10.0.0.1", 7002)));
    }

    #[test]
    fn bad_specs_name_their_fault() {
        let err = |s: &str| s.parse::<ExposeSpec>().unwrap_err();
        assert_eq!(err("8080"), SpecError::Syntax);
        assert_eq!(err("0=127.0.0.1:80"), SpecError::BadPort("0".into()));
        assert_eq!(err("x=127.0.0.1:80"), SpecError::BadPort("x".into()));
        assert_eq!(
            err("90-80=127.0.0.1:80"),
            SpecError::BadRange("90-80".into())
        );
        assert_eq!(err("80=127.0.0.1"), SpecError::BadLocal("127.0.0.1".into()));
        assert_eq!(err("80=::1:80"), SpecError::BadLocal("::1:80".into()));
        assert_eq!(err("80=:80"), SpecError::BadLocal(":80".into()));
        assert_eq!(
            err("8000-8005=127.0.0.1:9000-9002"),
            SpecError::RangeLength {
                remote: "8000-8005".into(),
                remote_len: 6,
                local_len: 3
            }
        );
        assert_eq!(
            err("8000-8005=127.0.0.1:65534"),
            SpecError::LocalOverflow {
                first: 65534,
                count: 6
            }
        );
        assert_eq!(
            err("80=127.0.0.1:80,proxy=v3"),
            SpecError::BadOption("proxy=v3".into())
        );
        assert_eq!(err("udp:53=127.0.0.1:53,proxy=v1"), SpecError::ProxyOnUdp);
    }

    #[test]
    fn port_sets() {
        let set: PortSet = "8000-9000, 2222".parse().unwrap();
        assert!(set.contains(8000) && set.contains(9000) && set.contains(2222));
        assert!(!set.contains(7999) && !set.contains(9001) && !set.contains(22));
        assert_eq!(set.to_string(), "8000-9000,2222");
        let none: PortSet = "".parse().unwrap();
        assert!(none.is_empty() && !none.contains(80));
        assert_eq!(none.to_string(), "none");
        assert!("80,abc".parse::<PortSet>().is_err());
    }
}
