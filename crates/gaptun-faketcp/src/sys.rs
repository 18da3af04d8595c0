//! The two sockets of a carrier: a raw IPv4 or IPv6 socket (`IPPROTO_RAW`, the IP header ours)
//! that sends, and an `AF_PACKET` socket with a classic BPF filter that receives only the
//! segments of our ports. A carrier is of one family, that of its server's address.
//!
//! Why a raw IPv4 socket to send, and not `AF_PACKET` or a TUN device: the kernel still routes,
//! fills link-layer headers and applies netfilter to what we send (so our own nftables rule and
//! the host's NAT work as for any TCP), it works the same on loopback, on veth pairs and on real
//! NICs, and it needs nothing but CAP_NET_RAW. An `IPPROTO_RAW` socket never receives, so it
//! queues no copy of anything.
//!
//! Why `AF_PACKET` to receive: a raw `IPPROTO_TCP` socket gets its copy of a segment only on the
//! way into the kernel's TCP, which then looks for a socket, finds none and builds a RST for
//! nftables to drop: about a fifth of the carrier's CPU time at full speed. A packet socket
//! bound to IPv4 (or IPv6) sees each incoming packet as the device hands it up, before netfilter, so the
//! rules in [`crate::nft`] drop our segments in `prerouting` and the kernel's TCP never sees
//! them. Bound to the IPv4 protocol (not to every protocol), it gets only incoming packets, not
//! a copy of what we send. It sees packets before IP reassembly and before the kernel checks
//! the IP header: the filter passes first fragments only and [`crate::packet::parse`] checks
//! the header's checksum, as `ip_rcv` did for the raw socket.
//!
//! `socket2` wraps the set-up calls. The batch calls, `sendmmsg` and `recvmmsg`, are not
//! wrapped by it: [`send_batch`] and [`recv_batch`] call them through `libc` (one datagram per
//! system call was the carrier's bottleneck: a raw socket has no GSO or GRO).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;

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
        addr: IpAddr,
        ports: RangeInclusive<u16>,
    },
    /// Segments from `server`'s `ports`.
    FromPorts {
        server: IpAddr,
        ports: RangeInclusive<u16>,
    },
}

impl Filter {
    fn ipv6(&self) -> bool {
        match self {
            Self::ToPorts { addr, .. } => addr.is_ipv6(),
            Self::FromPorts { server, .. } => server.is_ipv6(),
        }
    }
}

fn privileged(e: io::Error) -> FakeTcpError {
    if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
        FakeTcpError::Permission(e)
    } else {
        FakeTcpError::Io(e)
    }
}

/// Opens the sending socket: raw IPv4 or IPv6 with the IP header ours (an `IPPROTO_RAW`
/// socket of either family writes the whole header, Linux's `IP_HDRINCL` / `IPV6_HDRINCL`),
/// non-blocking.
pub(crate) fn send_socket(ipv6: bool) -> Result<Socket, FakeTcpError> {
    let domain = if ipv6 { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))
        .map_err(privileged)?;
    // Our deliberate RSTs carry the mark the nftables rule lets pass (needs CAP_NET_ADMIN,
    // which installing the rules needs anyway).
    socket.set_mark(OUR_MARK)?;
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Opens the receiving socket: `AF_PACKET`, cooked (data starts at the IP header), incoming
/// IPv4 (or IPv6, after the filter's address) on every interface, non-blocking, with its
/// filter.
pub(crate) fn recv_socket(filter: &Filter) -> Result<Socket, FakeTcpError> {
    let ethertype = if filter.ipv6() {
        libc::ETH_P_IPV6
    } else {
        libc::ETH_P_IP
    };
    let protocol = Protocol::from(i32::from((ethertype as u16).to_be()));
    let socket = Socket::new(Domain::PACKET, Type::DGRAM, Some(protocol)).map_err(privileged)?;
    socket.attach_filter(&program(filter))?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    // Drop what queued before the filter was attached (the socket saw all IPv4 until then).
    drain(&socket);
    Ok(socket)
}

/// Whether `ip` is one of this host's addresses (the kernel lets us bind to it). A server
/// listening on every address asks before it answers a segment of an unknown flow: its packet
/// socket also sees segments the host only forwards.
pub(crate) fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

fn drain(socket: &Socket) {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    while socket.recv(&mut buf).is_ok() {}
}

/// Packets one [`send_batch`] or [`recv_batch`] call moves at most.
pub(crate) const BATCH: usize = 32;

/// Sends `packets` (at most [`BATCH`]) to `dst` with one `sendmmsg`. Returns how many the
/// kernel took: all, or the ones before the first that failed. An error is returned only when
/// the very first packet failed (as `sendmmsg` itself reports it); the caller sends the rest
/// again or gives them up.
#[allow(unsafe_code)]
pub(crate) fn send_batch<P: AsRef<[u8]>>(
    socket: &Socket,
    packets: &[P],
    dst: &socket2::SockAddr,
) -> io::Result<usize> {
    let count = packets.len().min(BATCH);
    if count == 0 {
        return Ok(0);
    }
    let iovecs: [IoSlice<'_>; BATCH] =
        std::array::from_fn(|i| IoSlice::new(packets.get(i).map_or(&[], AsRef::as_ref)));
    // SAFETY: `mmsghdr` is plain data (pointers and integers); all-zero is a valid value.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (header, iov) in headers.iter_mut().zip(&iovecs).take(count) {
        header.msg_hdr.msg_name = dst.as_ptr() as *mut libc::c_void;
        header.msg_hdr.msg_namelen = dst.len();
        // `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix.
        header.msg_hdr.msg_iov = iov as *const IoSlice<'_> as *mut libc::iovec;
        header.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the first `count` headers point at `dst` and at one `iovec` each, all borrowed
    // for this call only; the kernel reads them (it writes only `msg_len`).
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Receives up to `bufs.len()` (at most [`BATCH`]) packets with one `recvmmsg`, writing each
/// one's length into `lens` (same index); returns how many arrived. `WouldBlock` when none
/// was waiting. A packet longer than its buffer is cut to the buffer's length.
#[allow(unsafe_code)]
pub(crate) fn recv_batch(
    socket: &Socket,
    bufs: &mut [IoSliceMut<'_>],
    lens: &mut [usize],
) -> io::Result<usize> {
    let count = bufs.len().min(lens.len()).min(BATCH);
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: as above, all-zero `mmsghdr`s are valid.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (header, buf) in headers.iter_mut().zip(bufs.iter_mut()).take(count) {
        // `IoSliceMut` is guaranteed ABI-compatible with `iovec` on Unix.
        header.msg_hdr.msg_iov = buf as *mut IoSliceMut<'_> as *mut libc::iovec;
        header.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: each of the first `count` headers points at one `iovec` describing a buffer
    // we borrow mutably for this call; no name or control buffers are given. The kernel writes
    // at most each buffer's length and the headers' `msg_len`.
    let got = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = got as usize;
    for ((len, header), buf) in lens.iter_mut().zip(&headers).zip(bufs.iter()).take(got) {
        *len = (header.msg_len as usize).min(buf.len());
    }
    Ok(got)
}

/// A TCP socket bound to an ephemeral port and never listening: it keeps the port ours, so the
/// kernel gives it to no other connection while our fake flow uses it.
pub(crate) fn reserve_port(ip: IpAddr) -> io::Result<(Socket, u16)> {
    let domain = Domain::for_address(SocketAddr::new(ip, 0));
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    let port = socket
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("reserved socket has no IP address"))?;
    Ok((socket, port))
}

/// The source address the kernel would use towards `server` (a routing lookup; a connected
/// UDP socket sends nothing).
pub(crate) fn source_for(server: IpAddr) -> io::Result<IpAddr> {
    let any: IpAddr = if server.is_ipv6() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let probe = std::net::UdpSocket::bind((any, 0))?;
    probe.connect((server, 9))?;
    Ok(probe.local_addr()?.ip())
}

// Classic BPF opcodes (linux/filter.h).
const LD_B_ABS: u16 = 0x30;
const LD_H_ABS: u16 = 0x28;
const LD_W_ABS: u16 = 0x20;
const LDX_B_MSH: u16 = 0xb1;
const LD_H_IND: u16 = 0x48;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JGT_K: u16 = 0x25;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
/// `ld #pkttype` (an ancillary load: `SKF_AD_OFF + SKF_AD_PKTTYPE`).
const AD_PKTTYPE: u32 = (-0x1000i32 + 4) as u32;
/// `PACKET_HOST`: addressed to this host (not broadcast, multicast or another host's).
const PACKET_HOST: u32 = 0;

/// The filter program. Offsets are from the IP header, where a cooked packet socket's data
/// begins. IPv4: the TCP header follows the IPv4 header and its options (`ldx 4*([0]&0xf)`).
/// IPv6: the TCP header must follow the fixed header directly (next header 6): packets with
/// extension headers, fragments included, are not ours.
fn program(filter: &Filter) -> Vec<SockFilter> {
    let (ipv6, to) = match filter {
        Filter::ToPorts { addr, .. } => (addr.is_ipv6(), true),
        Filter::FromPorts { server, .. } => (server.is_ipv6(), false),
    };
    let (addr, ports) = match filter {
        Filter::ToPorts { addr, ports } => (*addr, ports),
        Filter::FromPorts { server, ports } => (*server, ports),
    };
    // Offset of the port (destination for a server, source for a client) in the TCP header.
    let port_offset = if to { 2 } else { 0 };
    // Instructions, with jumps to "drop" patched once the length is known.
    let mut code: Vec<(u16, Option<bool>, u32)> = vec![
        (LD_W_ABS, None, AD_PKTTYPE),
        (JEQ_K, Some(false), PACKET_HOST), // not ours: drop
    ];
    if ipv6 {
        code.push((LD_B_ABS, None, 6));
        code.push((JEQ_K, Some(false), 6)); // next header not TCP: drop
        if let IpAddr::V6(ip) = addr
            && !ip.is_unspecified()
        {
            let at = if to { 24 } else { 8 };
            for (i, word) in ip.octets().chunks_exact(4).enumerate() {
                let word = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
                code.push((LD_W_ABS, None, at + 4 * i as u32));
                code.push((JEQ_K, Some(false), word)); // not equal: drop
            }
        }
        code.push((LD_H_ABS, None, 40 + port_offset));
    } else {
        // Fragments other than the first carry no TCP header.
        code.push((LD_H_ABS, None, 6));
        code.push((JSET_K, Some(true), 0x1fff)); // set: drop
        if let IpAddr::V4(ip) = addr
            && !ip.is_unspecified()
        {
            code.push((LD_W_ABS, None, if to { 16 } else { 12 }));
            code.push((JEQ_K, Some(false), u32::from(ip))); // not equal: drop
        }
        code.push((LDX_B_MSH, None, 0));
        code.push((LD_H_IND, None, port_offset));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, UdpSocket};

    /// A pair of non-blocking UDP sockets on loopback: the batch calls are the same for any
    /// datagram socket, and UDP needs no privilege.
    fn pair() -> (Socket, Socket, SocketAddr) {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("address");
        rx.set_nonblocking(true).expect("non-blocking");
        tx.set_nonblocking(true).expect("non-blocking");
        (Socket::from(tx), Socket::from(rx), to)
    }

    fn recv_all(rx: &Socket, slots: usize) -> Vec<Vec<u8>> {
        let mut storage = vec![0u8; 2048 * slots];
        let mut lens = vec![0usize; slots];
        let mut bufs: Vec<IoSliceMut<'_>> = storage.chunks_mut(2048).map(IoSliceMut::new).collect();
        let got = recv_batch(rx, &mut bufs, &mut lens).expect("datagrams waiting");
        storage
            .chunks(2048)
            .zip(&lens)
            .take(got)
            .map(|(buf, &len)| buf[..len].to_vec())
            .collect()
    }

    #[test]
    fn batch_goes_out_and_comes_back_intact_in_one_call_each() {
        let (tx, rx, to) = pair();
        let packets: Vec<Vec<u8>> = (0..BATCH)
            .map(|i| (0..100 + i * 37).map(|j| (i * 7 + j) as u8).collect())
            .collect();
        assert_eq!(send_batch(&tx, &packets, &to.into()).expect("sent"), BATCH);
        assert_eq!(recv_all(&rx, BATCH), packets);
    }

    #[test]
    fn short_batches_return_what_there_is() {
        let (tx, rx, to) = pair();
        let packets = vec![vec![1u8; 10], vec![2u8; 20], vec![3u8; 30]];
        assert_eq!(send_batch(&tx, &packets, &to.into()).expect("sent"), 3);
        // Room for 32, three waiting: three, then nothing.
        assert_eq!(recv_all(&rx, BATCH), packets);
        let mut buf = [0u8; 64];
        let mut bufs = [IoSliceMut::new(&mut buf)];
        let err = recv_batch(&rx, &mut bufs, &mut [0]).expect_err("nothing waiting");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // An empty batch sends nothing and does not call the kernel.
        assert_eq!(
            send_batch::<Vec<u8>>(&tx, &[], &to.into()).expect("empty"),
            0
        );
    }

    #[test]
    fn error_mid_batch_counts_the_packets_before_it() {
        let (tx, rx, to) = pair();
        // The third datagram is too long for UDP: the kernel sends two and stops there.
        let too_long = vec![0u8; 70_000];
        let packets = vec![vec![1u8; 5], vec![2u8; 6], too_long, vec![4u8; 7]];
        assert_eq!(send_batch(&tx, &packets, &to.into()).expect("partial"), 2);
        // Starting at the bad one, the error itself comes back.
        let err = send_batch(&tx, &packets[2..], &to.into()).expect_err("first refused");
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE));
        // Linux keeps a mid-batch error (other than EAGAIN) as the socket's pending error and
        // may report it once more on the next send; after that the rest goes.
        let rest = match send_batch(&tx, &packets[3..], &to.into()) {
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                send_batch(&tx, &packets[3..], &to.into())
            }
            other => other,
        };
        assert_eq!(rest.expect("rest"), 1);
        assert_eq!(
            recv_all(&rx, BATCH),
            vec![vec![1u8; 5], vec![2u8; 6], vec![4u8; 7]]
        );
    }

    #[test]
    fn a_packet_longer_than_its_buffer_is_cut_to_it() {
        let (tx, rx, to) = pair();
        send_batch(&tx, &[vec![7u8; 3000]], &to.into()).expect("sent");
        let got = recv_all(&rx, 1);
        assert_eq!(got, vec![vec![7u8; 2048]]);
    }
}
