//! IPv4 or IPv6 + TCP headers: building the segments we send and parsing the ones we receive.
//!
//! Pure byte work, no I/O, so it is tested on its own. We write the IP header ourselves
//! (the raw sockets are `IPPROTO_RAW`, which implies `IP_HDRINCL` / `IPV6_HDRINCL`) because a
//! server bound to `0.0.0.0` or `::` must answer from the address the client reached, which
//! only the packet itself can say.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// IPv4 header without options.
pub(crate) const IPV4_HEADER: usize = 20;
/// IPv6 header (we send no extension headers and take none).
pub(crate) const IPV6_HEADER: usize = 40;
/// TCP header without options.
pub(crate) const TCP_HEADER: usize = 20;
/// Options on every segment after the handshake, as Linux lays them out: NOP, NOP, timestamps.
pub(crate) const DATA_OPTIONS: usize = 12;
/// Options of SYN and SYN-ACK, in Linux's order: MSS, SACK-permitted, timestamps, NOP,
/// window scale (20 bytes).
pub(crate) const SYN_OPTIONS: usize = 20;
/// Bytes a data segment adds in front of the payload over IPv4 (IPv4 + TCP + timestamps).
pub(crate) const DATA_OVERHEAD: usize = IPV4_HEADER + TCP_HEADER + DATA_OPTIONS;

/// Length of the IP header we write in front of segments to or from `ip`.
pub(crate) fn ip_header_len(ip: IpAddr) -> usize {
    if ip.is_ipv6() {
        IPV6_HEADER
    } else {
        IPV4_HEADER
    }
}

pub(crate) const FIN: u8 = 0x01;
pub(crate) const SYN: u8 = 0x02;
pub(crate) const RST: u8 = 0x04;
pub(crate) const PSH: u8 = 0x08;
pub(crate) const ACK: u8 = 0x10;

const PROTO_TCP: u8 = 6;
/// IPv6's fragment extension header.
const FRAGMENT_HEADER: u8 = 44;
/// Linux's default TTL (IPv4) and hop limit (IPv6).
const TTL: u8 = 64;
/// Don't-fragment, as Linux sets it on TCP (path MTU discovery).
const DONT_FRAGMENT: u16 = 0x4000;

/// The fields of a segment we send; the builder turns them into bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Both addresses are of one family (a flow's are); it chooses the IP header.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// IPv4 identification; over IPv6 the low 20 bits of it are the flow label (Linux sets a
    /// per-flow label from a hash of the flow, so it is constant for a flow).
    pub ip_id: u32,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The window field as written (already scaled down).
    pub window: u16,
    /// `(TSval, TSecr)`; `None` only for RSTs, which Linux sends without options.
    pub timestamps: Option<(u32, u32)>,
    /// Handshake options: `(MSS, window scale)`, written only on SYN and SYN-ACK.
    pub syn_options: Option<(u16, u8)>,
}

/// A received segment, borrowing its payload from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub tsval: Option<u32>,
    pub tsecr: Option<u32>,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub payload: &'a [u8],
}

/// Why a received packet was not taken as a TCP segment (the caller drops it silently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("packet shorter than its headers")]
    Truncated,
    #[error("not an IPv4 or IPv6 TCP packet")]
    NotTcp,
    #[error("IP fragment")]
    Fragment,
    #[error("IPv4 header checksum wrong")]
    BadHeaderChecksum,
}

/// Writes `header` and `payload` as one IP packet into `out` (cleared first): IPv4 or IPv6
/// after the family of `header.src`.
pub(crate) fn build(header: &Header, payload: &[u8], out: &mut Vec<u8>) {
    let options = if header.syn_options.is_some() {
        SYN_OPTIONS
    } else if header.timestamps.is_some() {
        DATA_OPTIONS
    } else {
        0
    };
    let tcp_len = TCP_HEADER + options + payload.len();
    let (src_ip, dst_ip) = (header.src.ip(), header.dst.ip());
    let ip_len = ip_header_len(src_ip);
    out.clear();
    out.reserve(ip_len + tcp_len);

    match (src_ip, dst_ip) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let total = IPV4_HEADER + tcp_len;
            out.extend_from_slice(&[0x45, 0]);
            out.extend_from_slice(&(total as u16).to_be_bytes());
            out.extend_from_slice(&(header.ip_id as u16).to_be_bytes());
            out.extend_from_slice(&DONT_FRAGMENT.to_be_bytes());
            out.extend_from_slice(&[TTL, PROTO_TCP, 0, 0]);
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
            let ip_sum = finish(sum_words(0, &out[..IPV4_HEADER]));
            out[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        }
        _ => {
            // Version 6, traffic class 0, the flow label; no extension headers.
            let first = (6u32 << 28) | (header.ip_id & 0x000f_ffff);
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            out.extend_from_slice(&[PROTO_TCP, TTL]);
            out.extend_from_slice(&v6(src_ip).octets());
            out.extend_from_slice(&v6(dst_ip).octets());
        }
    }

    // TCP header.
    out.extend_from_slice(&header.src.port().to_be_bytes());
    out.extend_from_slice(&header.dst.port().to_be_bytes());
    out.extend_from_slice(&header.seq.to_be_bytes());
    out.extend_from_slice(&header.ack.to_be_bytes());
    out.push((((TCP_HEADER + options) / 4) as u8) << 4);
    out.push(header.flags);
    out.extend_from_slice(&header.window.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    match (header.syn_options, header.timestamps) {
        (Some((mss, wscale)), timestamps) => {
            let (tsval, tsecr) = timestamps.unwrap_or((0, 0));
            out.extend_from_slice(&[2, 4]);
            out.extend_from_slice(&mss.to_be_bytes());
            out.extend_from_slice(&[4, 2, 8, 10]);
            out.extend_from_slice(&tsval.to_be_bytes());
            out.extend_from_slice(&tsecr.to_be_bytes());
            out.extend_from_slice(&[1, 3, 3, wscale]);
        }
        (None, Some((tsval, tsecr))) => {
            out.extend_from_slice(&[1, 1, 8, 10]);
            out.extend_from_slice(&tsval.to_be_bytes());
            out.extend_from_slice(&tsecr.to_be_bytes());
        }
        (None, None) => {}
    }
    out.extend_from_slice(payload);
    let sum = tcp_checksum(src_ip, dst_ip, &out[ip_len..]);
    out[ip_len + 16..ip_len + 18].copy_from_slice(&sum.to_be_bytes());
}

/// `ip` as IPv6 (an IPv4 address mapped; a flow never mixes families, so only for totality).
fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Parses an IPv4 or IPv6 packet as the packet socket hands it over (IP header included, maybe
/// followed by link-layer padding, which the IP length field leaves out).
///
/// The IPv4 header checksum is checked: the packet socket sees packets before the kernel's
/// `ip_rcv` does, and a damaged address or length must not reach a flow. (IPv6 has no header
/// checksum; an IPv6 packet with extension headers, a fragment header included, is not taken:
/// we send none, and neither does a peer of ours.)
///
/// The TCP checksum is not checked, on purpose: a segment the kernel built with checksum
/// offload (a RST from a local firewall's `reject`, anything crossing a veth or loopback from
/// the same host) reaches packet sockets with only the pseudo-header sum in the field, to be
/// completed by a NIC that never sees it. Refusing those would ignore exactly the RSTs we must
/// react to. Payloads are authenticated by gaptun's AEAD above us, and a checksum would not
/// stop a forged segment anyway.
pub(crate) fn parse(packet: &[u8]) -> Result<Segment<'_>, ParseError> {
    let first = *packet.first().ok_or(ParseError::Truncated)?;
    let (src_ip, dst_ip, tcp) = match first >> 4 {
        4 => parse_ipv4(packet)?,
        6 => parse_ipv6(packet)?,
        _ => return Err(ParseError::NotTcp),
    };
    if tcp.len() < TCP_HEADER {
        return Err(ParseError::Truncated);
    }
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    if data_offset < TCP_HEADER || data_offset > tcp.len() {
        return Err(ParseError::Truncated);
    }
    let mut segment = Segment {
        src: SocketAddr::new(src_ip, u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: SocketAddr::new(dst_ip, u16::from_be_bytes([tcp[2], tcp[3]])),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        flags: tcp[13],
        window: u16::from_be_bytes([tcp[14], tcp[15]]),
        tsval: None,
        tsecr: None,
        mss: None,
        wscale: None,
        payload: &tcp[data_offset..],
    };
    parse_options(&tcp[TCP_HEADER..data_offset], &mut segment);
    Ok(segment)
}

/// The addresses and the TCP part (header and payload) of an IPv4 packet.
fn parse_ipv4(packet: &[u8]) -> Result<(IpAddr, IpAddr, &[u8]), ParseError> {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if ihl < IPV4_HEADER || packet.len() < ihl + TCP_HEADER {
        return Err(ParseError::Truncated);
    }
    if packet[9] != PROTO_TCP {
        return Err(ParseError::NotTcp);
    }
    let frag = u16::from_be_bytes([packet[6], packet[7]]);
    // More-fragments set or a non-zero offset: we never send fragments, so neither should
    // the peer; reassembly is not worth having.
    if frag & 0x3fff != 0 {
        return Err(ParseError::Fragment);
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total < ihl + TCP_HEADER || total > packet.len() {
        return Err(ParseError::Truncated);
    }
    if finish(sum_words(0, &packet[..ihl])) != 0 {
        return Err(ParseError::BadHeaderChecksum);
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Ok((src.into(), dst.into(), &packet[ihl..total]))
}

/// The addresses and the TCP part of an IPv6 packet whose next header is TCP.
fn parse_ipv6(packet: &[u8]) -> Result<(IpAddr, IpAddr, &[u8]), ParseError> {
    if packet.len() < IPV6_HEADER + TCP_HEADER {
        return Err(ParseError::Truncated);
    }
    match packet[6] {
        PROTO_TCP => {}
        FRAGMENT_HEADER => return Err(ParseError::Fragment),
        _ => return Err(ParseError::NotTcp),
    }
    let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    let end = IPV6_HEADER + payload;
    if payload < TCP_HEADER || end > packet.len() {
        return Err(ParseError::Truncated);
    }
    let address = |at: usize| {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&packet[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    Ok((address(8), address(24), &packet[IPV6_HEADER..end]))
}

/// Reads the options we care about; unknown or malformed ones end the walk (the segment is
/// still used: options only refine what we send back).
fn parse_options(mut options: &[u8], segment: &mut Segment<'_>) {
    while let Some((&kind, rest)) = options.split_first() {
        match kind {
            0 => return,
            1 => {
                options = rest;
                continue;
            }
            _ => {}
        }
        let Some(&len) = rest.first() else { return };
        let len = usize::from(len);
        if len < 2 || len > options.len() {
            return;
        }
        let body = &options[2..len];
        match (kind, body.len()) {
            (2, 2) => segment.mss = Some(u16::from_be_bytes([body[0], body[1]])),
            (3, 1) => segment.wscale = Some(body[0]),
            (8, 8) => {
                segment.tsval = Some(u32::from_be_bytes([body[0], body[1], body[2], body[3]]));
                segment.tsecr = Some(u32::from_be_bytes([body[4], body[5], body[6], body[7]]));
            }
            _ => {}
        }
        options = &options[len..];
    }
}

/// The TCP checksum over the pseudo-header and `tcp` (header with its checksum field, and
/// payload). Building: computed with the field zeroed. Checking: 0 when the segment is intact.
///
/// The pseudo-headers of IPv4 (RFC 793) and IPv6 (RFC 8200, 8.1) hold the same fields, the
/// addresses, the protocol and the TCP length, only in different widths and order; in a
/// one's-complement sum of 16-bit words neither matters, so one sum serves both.
fn tcp_checksum(src: IpAddr, dst: IpAddr, tcp: &[u8]) -> u16 {
    let address = |sum: u64, ip: IpAddr| match ip {
        IpAddr::V4(v4) => sum_words(sum, &v4.octets()),
        IpAddr::V6(v6) => sum_words(sum, &v6.octets()),
    };
    let mut sum = address(0, src);
    sum = address(sum, dst);
    sum += u64::from(PROTO_TCP);
    sum += tcp.len() as u64;
    finish(sum_words(sum, tcp))
}

/// One's-complement sum of big-endian 16-bit words, accumulated in 64 bits (eight bytes a step)
/// and folded at the end: fast enough for a gigabit of payload on one core.
fn sum_words(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let value = u64::from_be_bytes(word);
        sum += value >> 32;
        sum += value & 0xffff_ffff;
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for pair in &mut rest {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = rest.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn finish(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `a` comes before `b` in sequence space (RFC 793 comparison, wrapping).
pub(crate) fn seq_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn header(flags: u8) -> Header {
        Header {
            src: addr("10.0.0.1:40000"),
            dst: addr("10.0.0.2:10001"),
            ip_id: 0x1234,
            seq: 0xfffffff0,
            ack: 77,
            flags,
            window: 502,
            timestamps: Some((1000, 2000)),
            syn_options: None,
        }
    }

    #[test]
    fn data_segment_round_trips_with_valid_checksums() {
        let payload: Vec<u8> = (0..1377u32).map(|i| (i * 7) as u8).collect();
        let mut out = Vec::new();
        build(&header(ACK | PSH), &payload, &mut out);
        assert_eq!(out.len(), DATA_OVERHEAD + payload.len());
        // The IPv4 header checksums to zero when intact.
        assert_eq!(finish(sum_words(0, &out[..IPV4_HEADER])), 0);
        let seg = parse(&out).expect("parses");
        assert_eq!(seg.src, addr("10.0.0.1:40000"));
        assert_eq!(seg.dst, addr("10.0.0.2:10001"));
        assert_eq!(
            (seg.seq, seg.ack, seg.flags, seg.window),
            (0xfffffff0, 77, ACK | PSH, 502)
        );
        assert_eq!((seg.tsval, seg.tsecr), (Some(1000), Some(2000)));
        assert_eq!(seg.payload, &payload[..]);
    }

    #[test]
    fn damaged_ip_header_or_trailing_padding() {
        let mut out = Vec::new();
        build(&header(ACK), b"abc", &mut out);
        // Link-layer padding after the packet is not payload.
        let mut padded = out.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(parse(&padded).expect("parses").payload, b"abc");
        // A flipped bit in the source address is caught by the header checksum.
        let mut damaged = out.clone();
        damaged[13] ^= 0x10;
        assert_eq!(parse(&damaged).err(), Some(ParseError::BadHeaderChecksum));
    }

    #[test]
    fn syn_carries_linux_options_in_linux_order() {
        let mut h = header(SYN);
        h.syn_options = Some((1460, 9));
        let mut out = Vec::new();
        build(&h, &[], &mut out);
        let options = &out[IPV4_HEADER + TCP_HEADER..];
        assert_eq!(
            options,
            &[
                2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x03, 0xe8, 0, 0, 0x07, 0xd0, 1, 3, 3, 9
            ]
        );
        let seg = parse(&out).expect("parses");
        assert_eq!(
            (seg.mss, seg.wscale, seg.tsval),
            (Some(1460), Some(9), Some(1000))
        );
    }

    #[test]
    fn malformed_packets_are_refused() {
        let mut out = Vec::new();
        build(&header(ACK), b"hello", &mut out);
        // Our checksum is complete: summing the segment with it gives zero.
        assert_eq!(
            tcp_checksum(
                Ipv4Addr::new(10, 0, 0, 1).into(),
                Ipv4Addr::new(10, 0, 0, 2).into(),
                &out[IPV4_HEADER..]
            ),
            0
        );
        assert_eq!(parse(&out[..30]), Err(ParseError::Truncated));
        let mut fragment = out.clone();
        fragment[7] = 1;
        assert_eq!(parse(&fragment), Err(ParseError::Fragment));
        assert_eq!(parse(&[]), Err(ParseError::Truncated));
        let mut udp = out.clone();
        udp[9] = 17;
        assert_eq!(parse(&udp), Err(ParseError::NotTcp));
    }

    fn header_v6(flags: u8) -> Header {
        Header {
            src: addr("[fd00:77::2]:40000"),
            dst: addr("[fd00:77:2::2]:10001"),
            ip_id: 0xabcde,
            ..header(flags)
        }
    }

    #[test]
    fn ipv6_segment_round_trips_with_the_ipv6_pseudo_header_checksum() {
        let payload: Vec<u8> = (0..1001u32).map(|i| (i * 13) as u8).collect();
        let mut out = Vec::new();
        build(&header_v6(ACK | PSH), &payload, &mut out);
        assert_eq!(
            out.len(),
            IPV6_HEADER + TCP_HEADER + DATA_OPTIONS + payload.len()
        );
        // Version 6, flow label from the id, payload length, next header TCP, hop limit 64.
        assert_eq!(&out[..4], &[0x60, 0x0a, 0xbc, 0xde]);
        assert_eq!(
            usize::from(u16::from_be_bytes([out[4], out[5]])),
            out.len() - IPV6_HEADER
        );
        assert_eq!((out[6], out[7]), (6, 64));
        // The checksum is the one over the IPv6 pseudo-header, worked out here word by word
        // (RFC 8200, 8.1: addresses, 32-bit length, three zero bytes and the next header).
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&out[8..40]);
        pseudo.extend_from_slice(&((out.len() - IPV6_HEADER) as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 6]);
        pseudo.extend_from_slice(&out[IPV6_HEADER..]);
        let mut reference: u64 = 0;
        for pair in pseudo.chunks(2) {
            reference += (u64::from(pair[0]) << 8) + pair.get(1).map_or(0, |&b| u64::from(b));
        }
        assert_eq!(finish(reference), 0, "the segment checksums to zero");
        let seg = parse(&out).expect("parses");
        assert_eq!(seg.src, addr("[fd00:77::2]:40000"));
        assert_eq!(seg.dst, addr("[fd00:77:2::2]:10001"));
        assert_eq!((seg.seq, seg.ack, seg.flags), (0xfffffff0, 77, ACK | PSH));
        assert_eq!((seg.tsval, seg.tsecr), (Some(1000), Some(2000)));
        assert_eq!(seg.payload, &payload[..]);
        // Padding after the packet is not payload.
        let mut padded = out.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(parse(&padded).expect("parses").payload, &payload[..]);
    }

    #[test]
    fn ipv6_syn_options_and_refusals() {
        let mut h = header_v6(SYN);
        h.syn_options = Some((1440, 7));
        let mut out = Vec::new();
        build(&h, &[], &mut out);
        let seg = parse(&out).expect("parses");
        assert_eq!((seg.mss, seg.wscale), (Some(1440), Some(7)));
        let mut fragment = out.clone();
        fragment[6] = FRAGMENT_HEADER;
        assert_eq!(parse(&fragment), Err(ParseError::Fragment));
        let mut udp = out.clone();
        udp[6] = 17;
        assert_eq!(parse(&udp), Err(ParseError::NotTcp));
        // A payload length beyond the bytes we have.
        let mut long = out.clone();
        long[5] = long[5].wrapping_add(1);
        assert_eq!(parse(&long), Err(ParseError::Truncated));
        assert_eq!(parse(&out[..50]), Err(ParseError::Truncated));
        let mut v5 = out.clone();
        v5[0] = 0x50;
        assert_eq!(parse(&v5), Err(ParseError::NotTcp));
    }

    #[test]
    fn odd_length_checksum_matches_reference() {
        // Reference one's-complement sum, two bytes at a time.
        let data: Vec<u8> = (0..101u32).map(|i| (i * 31 + 5) as u8).collect();
        let mut reference: u64 = 0;
        for pair in data.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            reference += hi + pair.get(1).map_or(0, |&b| u64::from(b));
        }
        assert_eq!(finish(sum_words(0, &data)), finish(reference));
    }

    #[test]
    fn sequence_comparison_wraps() {
        assert!(seq_before(0xffff_fff0, 5));
        assert!(!seq_before(5, 0xffff_fff0));
        assert!(!seq_before(7, 7));
    }
}
