//! PROXY protocol headers (HAProxy's v1 text and v2 binary forms) that the client writes to
//! LOCAL before the visitor's bytes, so nginx, HAProxy or sshd behind it see the visitor's
//! address instead of the client's loopback.

use std::net::{IpAddr, SocketAddr};

use super::spec::ProxyVersion;

/// The header for a TCP connection from `source` (the visitor) to `destination` (the
/// server's address the visitor reached). Addresses of different families are both given in
/// IPv6 form (IPv4-mapped), as the formats need one family.
pub(crate) fn header(
    version: ProxyVersion,
    source: SocketAddr,
    destination: SocketAddr,
) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        ProxyVersion::V1 => ppp::v1::Addresses::from((source, destination))
            .to_string()
            .into_bytes(),
        ProxyVersion::V2 => {
            let built = ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                ppp::v2::Protocol::Stream,
                (source, destination),
            )
            .build();
            // Building into a Vec cannot fail for two IP addresses; should it ever, the
            // LOCAL service gets the "local" command (no addresses) rather than nothing.
            built.unwrap_or_else(|_| local_v2())
        }
    }
}

/// A v2 header with the LOCAL command and no addresses.
fn local_v2() -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a.is_ipv4() == b.is_ipv4() {
        return (a, b);
    }
    let v6 = |sa: SocketAddr| match sa.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), sa.port()),
        IpAddr::V6(_) => sa,
    };
    (v6(a), v6(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_text() {
        let h = header(
            ProxyVersion::V1,
            "203.0.113.9:40000".parse().unwrap(),
            "192.0.2.1:8080".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP4 203.0.113.9 192.0.2.1 40000 8080\r\n");
        let mixed = header(
            ProxyVersion::V1,
            "203.0.113.9:40000".parse().unwrap(),
            "[2001:db8::1]:8080".parse().unwrap(),
        );
        assert_eq!(
            mixed,
            b"PROXY TCP6 ::ffff:203.0.113.9 2001:db8::1 40000 8080\r\n"
        );
    }

    #[test]
    fn v2_binary() {
        let h = header(
            ProxyVersion::V2,
            "203.0.113.9:40000".parse().unwrap(),
            "192.0.2.1:8080".parse().unwrap(),
        );
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
        want.extend_from_slice(&[203, 0, 113, 9, 192, 0, 2, 1]);
        want.extend_from_slice(&40000u16.to_be_bytes());
        want.extend_from_slice(&8080u16.to_be_bytes());
        assert_eq!(h, want);
        assert_eq!(local_v2().len(), 16);
    }
}
