//! Port ranges: a server listening on `IP:10001-10010`, a client naming it `HOST:10001-10010`.
//!
//! A range spreads a connection over several UDP flows, so that a middlebox that throttles or
//! blocks one flow (one port) costs a share of the packets, not the connection. Parsed here once,
//! for the server's listen address and the client's server alike.

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;

use thiserror::Error;

/// Most ports one range may name: each is a socket on the server and a path on the client.
pub const MAX_RANGE_PORTS: usize = 256;

/// Why a port or port range was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PortRangeError {
    /// No `:PORT` after the host.
    #[error("missing `:PORT` (or `:FIRST-LAST`)")]
    MissingPort,
    /// Not a number from 1 to 65535.
    #[error("invalid port `{0}`")]
    InvalidPort(String),
    /// `FIRST-LAST` with FIRST above LAST.
    #[error("port range `{0}-{1}` is reversed: write the lower port first")]
    Reversed(u16, u16),
    /// More ports than [`MAX_RANGE_PORTS`].
    #[error("port range `{0}-{1}` has more than {MAX_RANGE_PORTS} ports")]
    TooLarge(u16, u16),
    /// The host part is empty or not a name or address.
    #[error("invalid host `{0}`")]
    InvalidHost(String),
}

/// `PORT` or `FIRST-LAST`, as an inclusive range (one port: FIRST = LAST).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), PortRangeError> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| PortRangeError::InvalidPort(p.to_owned()))
    };
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if first > last {
        return Err(PortRangeError::Reversed(first, last));
    }
    if usize::from(last - first) >= MAX_RANGE_PORTS {
        return Err(PortRangeError::TooLarge(first, last));
    }
    Ok((first, last))
}

/// Splits `HOST:PORTS` at its last colon (an IPv6 host is written in brackets).
fn split_host(s: &str) -> Result<(&str, &str), PortRangeError> {
    let (host, ports) = s.rsplit_once(':').ok_or(PortRangeError::MissingPort)?;
    if host.is_empty() {
        return Err(PortRangeError::InvalidHost(host.to_owned()));
    }
    Ok((host, ports))
}

/// A server as a client names it: `HOST:PORT` or `HOST:FIRST-LAST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    /// The host as written (an IPv6 address keeps its brackets).
    pub host: String,
    pub first: u16,
    pub last: u16,
}

impl ServerTarget {
    /// `HOST:FIRST`, for resolving the host.
    pub fn lookup_name(&self) -> String {
        format!("{}:{}", self.host, self.first)
    }

    /// Every port of the range.
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.first..=self.last
    }
}

impl FromStr for ServerTarget {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, PortRangeError> {
        let (host, ports) = split_host(s)?;
        let (first, last) = parse_port_range(ports)?;
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let is_ip = bare.parse::<std::net::IpAddr>().is_ok();
        let is_name = bare.len() <= 253
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !(is_ip || is_name) || bare.is_empty() {
            return Err(PortRangeError::InvalidHost(host.to_owned()));
        }
        Ok(Self {
            host: host.to_owned(),
            first,
            last,
        })
    }
}

impl fmt::Display for ServerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}:{}", self.host, self.first)
        } else {
            write!(f, "{}:{}-{}", self.host, self.first, self.last)
        }
    }
}

/// A local address to listen on, with a port or a port range: `IP:PORT`, `IP:FIRST-LAST`,
/// `[IPV6]:FIRST-LAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenRange {
    /// The address with the first port.
    pub first: SocketAddr,
    /// The last port of the range (the first's for a single port).
    pub last_port: u16,
}

impl ListenRange {
    /// One port.
    pub fn single(addr: SocketAddr) -> Self {
        Self {
            first: addr,
            last_port: addr.port(),
        }
    }

    /// Every address of the range, in port order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        (self.first.port()..=self.last_port.max(self.first.port()))
            .map(|p| SocketAddr::new(self.first.ip(), p))
            .collect()
    }
}

impl FromStr for ListenRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, PortRangeError> {
        let (host, ports) = split_host(s)?;
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<std::net::IpAddr>()
            .map_err(|_| PortRangeError::InvalidHost(host.to_owned()))?;
        // Port 0 (any free port) is fine for a single listen address.
        if ports.trim() == "0" {
            return Ok(Self::single(SocketAddr::new(ip, 0)));
        }
        let (first, last) = parse_port_range(ports)?;
        Ok(Self {
            first: SocketAddr::new(ip, first),
            last_port: last,
        })
    }
}

impl fmt::Display for ListenRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.last_port == self.first.port() {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last_port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_bad_ones_are_named() {
        assert_eq!(parse_port_range("10001-10010"), Ok((10001, 10010)));
        assert_eq!(parse_port_range("443"), Ok((443, 443)));
        assert_eq!(
            parse_port_range("10010-10001"),
            Err(PortRangeError::Reversed(10010, 10001))
        );
        assert_eq!(
            parse_port_range("0-5"),
            Err(PortRangeError::InvalidPort("0".into()))
        );
        assert_eq!(
            parse_port_range("1-x"),
            Err(PortRangeError::InvalidPort("x".into()))
        );
        assert_eq!(
            parse_port_range("1000-2000"),
            Err(PortRangeError::TooLarge(1000, 2000))
        );
        assert_eq!(
            PortRangeError::Reversed(10010, 10001).to_string(),
            "port range `10010-10001` is reversed: write the lower port first"
        );
    }

    #[test]
    fn server_targets_and_listen_ranges() {
        let t: ServerTarget = "vpn.example.com:10001-10010".parse().unwrap();
        assert_eq!(t.lookup_name(), "vpn.example.com:10001");
        assert_eq!(t.ports().count(), 10);
        assert_eq!(t.to_string(), "vpn.example.com:10001-10010");
        let v6: ServerTarget = "[::1]:5000".parse().unwrap();
        assert_eq!(v6.lookup_name(), "[::1]:5000");
        assert_eq!(
            "nohost".parse::<ServerTarget>(),
            Err(PortRangeError::MissingPort)
        );
        assert!(matches!(
            "bad host!:1".parse::<ServerTarget>(),
            Err(PortRangeError::InvalidHost(_))
        ));

        let l: ListenRange = "0.0.0.0:10001-10003".parse().unwrap();
        assert_eq!(
            l.addrs(),
            vec![
                "0.0.0.0:10001".parse().unwrap(),
                "0.0.0.0:10002".parse().unwrap(),
                "0.0.0.0:10003".parse().unwrap()
            ]
        );
        assert_eq!(l.to_string(), "0.0.0.0:10001-10003");
        let one: ListenRange = "[::]:29900".parse().unwrap();
        assert_eq!(one.addrs(), vec!["[::]:29900".parse().unwrap()]);
        assert_eq!(one.to_string(), "[::]:29900");
        assert_eq!(
            "127.0.0.1:0".parse::<ListenRange>().unwrap().addrs().len(),
            1
        );
        assert!(matches!(
            "host:1".parse::<ListenRange>(),
            Err(PortRangeError::InvalidHost(_))
        ));
        assert_eq!(
            "0.0.0.0:9-1".parse::<ListenRange>(),
            Err(PortRangeError::Reversed(9, 1))
        );
    }
}
