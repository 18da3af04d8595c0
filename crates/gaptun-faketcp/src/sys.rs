//! The raw socket: IPv4, `IPPROTO_TCP`, `IP_HDRINCL`, with a classic BPF filter so that the
//! kernel hands us only segments of our ports instead of a copy of every TCP packet on the host.
//!
//! Why a raw IPv4 socket and not `AF_PACKET` or a TUN device: the kernel still routes, fills
//! link-layer headers and applies netfilter to what we send (so our own nftables rule and the
//! host's NAT work as for any TCP), it works the same on loopback, on veth pairs and on real
//! NICs, and it needs nothing but CAP_NET_RAW. Receiving, a raw `IPPROTO_TCP` socket gets a
//! copy of each incoming TCP segment after IP reassembly and before TCP; the kernel's own
//! answer (a RST, as no TCP socket exists) is dropped by the rules in [`crate::nft`].
//!
//! `socket2` wraps every call we need, so this crate has no `unsafe` of its own.

use std::io;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use socket2::{Domain, Protocol, SockFilter, Socket, Type};

use crate::error::FakeTcpError;
use crate::nft::OUR_MARK;

/// Kernel buffers we ask for (the kernel may grant less; that only costs throughput).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// What the BPF filter lets through.
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    /// Segments to `ports` (and to `addr` unless unspecified).
    ToPorts {
        addr: Ipv4Addr,
        ports: RangeInclusive<u16>,
    },
    /// Segments from `server`'s `ports`.
    FromPorts {
        server: Ipv4Addr,
        ports: RangeInclusive<u16>,
    },
}

/// Opens the raw socket, non-blocking, with its filter.
pub(crate) fn raw_socket(filter: &Filter) -> Result<Socket, FakeTcpError> {
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP)).map_err(|e| {
        if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
            FakeTcpError::Permission(e)
        } else {
            FakeTcpError::Io(e)
        }
    })?;
    socket.set_header_included_v4(true)?;
    socket.attach_filter(&program(filter))?;
    // Our deliberate RSTs carry the mark the nftables rule lets pass (needs CAP_NET_ADMIN,
    // which installing the rules needs anyway).
    socket.set_mark(OUR_MARK)?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    // Drop what queued before the filter was attached (the socket saw all TCP until then).
    drain(&socket);
    Ok(socket)
}

fn drain(socket: &Socket) {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    while socket.recv(&mut buf).is_ok() {}
}

/// A TCP socket bound to an ephemeral port and never listening: it keeps the port ours, so the
/// kernel gives it to no other connection while our fake flow uses it.
pub(crate) fn reserve_port(ip: Ipv4Addr) -> io::Result<(Socket, u16)> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&std::net::SocketAddrV4::new(ip, 0).into())?;
    let port = socket
        .local_addr()?
        .as_socket_ipv4()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("reserved socket has no IPv4 address"))?;
    Ok((socket, port))
}

/// The source address the kernel would use towards `server` (a routing lookup; a connected
/// UDP socket sends nothing).
pub(crate) fn source_for(server: Ipv4Addr) -> io::Result<Ipv4Addr> {
    let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    probe.connect((server, 9))?;
    match probe.local_addr()?.ip() {
        std::net::IpAddr::V4(ip) => Ok(ip),
        std::net::IpAddr::V6(_) => Err(io::Error::other("no IPv4 route to the server")),
    }
}

// Classic BPF opcodes (linux/filter.h).
const LD_H_ABS: u16 = 0x28;
const LD_W_ABS: u16 = 0x20;
const LDX_B_MSH: u16 = 0xb1;
const LD_H_IND: u16 = 0x48;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JGT_K: u16 = 0x25;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

/// The filter program. Offsets are from the IPv4 header, where a raw socket's data begins.
fn program(filter: &Filter) -> Vec<SockFilter> {
    let (addr_offset, addr, port_offset, ports) = match filter {
        Filter::ToPorts { addr, ports } => (16, *addr, 2, ports),
        Filter::FromPorts { server, ports } => (12, *server, 0, ports),
    };
    // Instructions, with jumps to "drop" patched once the length is known.
    let mut code: Vec<(u16, Option<bool>, u32)> = Vec::new();
    // Fragments other than the first carry no TCP header.
    code.push((LD_H_ABS, None, 6));
    code.push((JSET_K, Some(true), 0x1fff)); // set: drop
    if !addr.is_unspecified() {
        code.push((LD_W_ABS, None, addr_offset));
        code.push((JEQ_K, Some(false), u32::from(addr))); // not equal: drop
    }
    code.push((LDX_B_MSH, None, 0));
    code.push((LD_H_IND, None, port_offset));
    code.push((JGE_K, Some(false), u32::from(*ports.start()))); // below: drop
    code.push((JGT_K, Some(true), u32::from(*ports.end()))); // above: drop
    code.push((RET_K, None, 0x0004_0000));
    let drop_at = code.len();
    let mut program: Vec<SockFilter> = code
        .iter()
        .enumerate()
        .map(|(i, &(op, drop_if, k))| {
            let skip = (drop_at - i - 1) as u8;
            match drop_if {
                None => SockFilter::new(op, 0, 0, k),
                Some(true) => SockFilter::new(op, skip, 0, k),
                Some(false) => SockFilter::new(op, 0, skip, k),
            }
        })
        .collect();
    program.push(SockFilter::new(RET_K, 0, 0, 0));
    program
}
