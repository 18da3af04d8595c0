//! The route's MTU to a peer, from the kernel: the ceiling of a UDP connection when no `--mtu`
//! was given (see `TransportConfig::mtu_from_route`).
//!
//! A UDP socket `connect`ed to the peer makes the kernel look up the route (no packet is sent);
//! `IP_MTU` / `IPV6_MTU` then report that route's MTU: the outgoing interface's (65 536 on
//! loopback, 1500 on Ethernet), or less where the route says so or an ICMP "fragmentation
//! needed" lowered it. Path MTU discovery still confirms the ceiling with probes, so a hop
//! further on that carries less is found as before.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// Bytes of IPv4 and UDP header in front of a UDP payload. Ceilings are given in IPv4 terms; the
/// core takes another 20 bytes off for an IPv6 peer.
const IPV4_UDP_HEADERS: u32 = 28;

/// The largest UDP payload (IPv4 terms) the route to `remote` carries, or `None` when the kernel
/// cannot tell (no route, an unsupported system). Costs a socket and three system calls: asked
/// once per new connection, never per packet.
pub fn udp_payload_to(remote: SocketAddr) -> Option<u16> {
    match route_mtu(remote) {
        Ok(mtu) => {
            let payload = mtu.saturating_sub(IPV4_UDP_HEADERS);
            Some(u16::try_from(payload).unwrap_or(u16::MAX))
        }
        Err(e) => {
            tracing::debug!(%remote, error = %e, "route MTU unknown; keeping the configured ceiling");
            None
        }
    }
}

/// The MTU of the kernel's route to `remote`.
fn route_mtu(remote: SocketAddr) -> io::Result<u32> {
    let local: SocketAddr = match remote {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(remote)?;
    socket_mtu(&socket, remote.is_ipv6())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn socket_mtu(socket: &UdpSocket, ipv6: bool) -> io::Result<u32> {
    use nix::sys::socket::{getsockopt, sockopt};
    let mtu = if ipv6 {
        ipv6_mtu(socket)?
    } else {
        getsockopt(socket, sockopt::IpMtu).map_err(io::Error::from)?
    };
    u32::try_from(mtu).map_err(|_| io::Error::other(format!("route MTU {mtu}")))
}

/// `IPV6_MTU` of a connected socket (nix has a typed option for `IP_MTU` only).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(unsafe_code)]
fn ipv6_mtu(socket: &UdpSocket) -> io::Result<libc::c_int> {
    use std::os::fd::AsRawFd;
    let mut mtu: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>())
        .map_err(|_| io::Error::other("socklen_t too small"))?;
    // SAFETY: the descriptor is open for the call (borrowed from `socket`); the kernel writes
    // at most `len` bytes (the size of `mtu`) into `mtu` and the actual length into `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU,
            (&raw mut mtu).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(mtu)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn socket_mtu(_socket: &UdpSocket, _ipv6: bool) -> io::Result<u32> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "route MTU is only read on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn loopback_route_carries_about_64k() {
        let v4 = udp_payload_to("127.0.0.1:9".parse().unwrap()).unwrap();
        assert!(v4 > 60_000, "loopback ceiling {v4}");
        assert_eq!(
            v4,
            gaptun_proto::MAX_UDP_PAYLOAD,
            "loopback MTU 65536 less 28"
        );
        // IPv6 loopback may be absent (a container without ::1): then the query says so.
        if UdpSocket::bind("[::1]:0").is_ok() {
            let v6 = udp_payload_to("[::1]:9".parse().unwrap()).unwrap();
            assert!(v6 > 60_000, "IPv6 loopback ceiling {v6}");
        }
    }

    #[test]
    fn a_peer_without_route_gives_no_ceiling() {
        // A link-local address without a scope names no interface: `connect` fails (EINVAL),
        // or binding fails where IPv6 is off; either way no ceiling, and the caller keeps the
        // configured one.
        assert_eq!(udp_payload_to("[fe80::1]:9".parse().unwrap()), None);
    }
}
