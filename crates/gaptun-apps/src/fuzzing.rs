//! Entry points for the cargo-fuzz targets (`fuzz/`) and for the test that replays their
//! corpora on stable (`tests/fuzz_corpus.rs`); compiled only with the `fuzzing` feature.
//!
//! Each takes arbitrary bytes, as they would arrive from a SOCKS5 client, from a tunnel peer
//! or from the network, and must never panic. Besides that, each checks what the wire formats
//! promise: whatever parses re-encodes to something that parses to the same value, and the
//! stream reader and the slice decoder of an address agree.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use crate::addr::TargetAddr;
use crate::request::{self, Command, ReplyCode, TunnelReply, TunnelRequest};
use crate::socks5::codec;

/// Frames read from one input at most (each is at least two bytes, so this only bounds
/// inputs of zero-length frames).
const MAX_FRAMES: usize = 4096;

/// Runs a parser over an in-memory reader to completion. Reading a byte slice never waits,
/// so the first poll finishes; a parser that returns `Pending` anyway is a bug.
fn complete<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a parser waited on an in-memory reader"),
    }
}

/// `addr` as the wire carries it: an IPv6 scope ID and flow label (which text such as
/// `[fe80::1%2]:22` can give) have no place in the SOCKS5 encoding.
fn on_wire(addr: &TargetAddr) -> TargetAddr {
    match addr {
        TargetAddr::Ip(std::net::SocketAddr::V6(sa)) => {
            TargetAddr::Ip(std::net::SocketAddrV6::new(*sa.ip(), sa.port(), 0, 0).into())
        }
        other => other.clone(),
    }
}

/// Checks that `addr` survives an encode/decode round trip through both decoders.
fn check_addr(addr: &TargetAddr) {
    let addr = &on_wire(addr);
    let mut wire = Vec::new();
    addr.encode(&mut wire);
    assert_eq!(wire.len(), addr.encoded_len(), "encoded_len of {addr}");
    match TargetAddr::decode(&wire) {
        Ok((back, used)) => {
            assert_eq!(&back, addr, "decode(encode) differs");
            assert_eq!(used, wire.len(), "decode used a different length");
        }
        Err(e) => panic!("{addr} does not decode after encoding: {e}"),
    }
    let mut r = &wire[..];
    match complete(TargetAddr::read_from(&mut r)) {
        Ok(back) => assert_eq!(&back, addr, "read_from(encode) differs"),
        Err(e) => panic!("{addr} does not read back after encoding: {e}"),
    }
}

/// The SOCKS5 address decoders (slice and stream) and the `HOST:PORT` text parser.
pub fn address(data: &[u8]) {
    let sliced = TargetAddr::decode(data);
    let mut r = data;
    let streamed = complete(TargetAddr::read_from(&mut r));
    match (&sliced, &streamed) {
        (Ok((a, used)), Ok(b)) => {
            assert_eq!(a, b, "the two address decoders disagree");
            assert_eq!(
                *used,
                data.len() - r.len(),
                "decoders used different lengths"
            );
            check_addr(a);
        }
        (Err(_), Err(_)) => {}
        _ => {
            panic!("one address decoder accepted what the other refused: {sliced:?} / {streamed:?}")
        }
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(addr) = text.parse::<TargetAddr>()
    {
        check_addr(&addr);
    }
}

/// A SOCKS5 client's side of a session (greeting, RFC 1929 login, request) read the way the
/// server reads it, then each message parser alone on the same bytes.
pub fn socks5_session(data: &[u8]) {
    let mut r = data;
    if let Ok(methods) = complete(codec::read_greeting(&mut r)) {
        let with_auth = codec::choose_method(&methods, true);
        let without = codec::choose_method(&methods, false);
        assert!(with_auth == codec::METHOD_USER_PASS || with_auth == codec::METHOD_NONE_ACCEPTABLE);
        assert!(without == codec::METHOD_NO_AUTH || without == codec::METHOD_NONE_ACCEPTABLE);
        if with_auth == codec::METHOD_USER_PASS
            && let Ok(creds) = complete(codec::read_credentials(&mut r))
        {
            let user = String::from_utf8_lossy(&creds.username).into_owned();
            let pass = String::from_utf8_lossy(&creds.password).into_owned();
            let exact = std::str::from_utf8(&creds.username).is_ok()
                && std::str::from_utf8(&creds.password).is_ok();
            assert_eq!(creds.matches(&user, &pass), exact);
        }
        socks5_request(&mut r);
    }
    let mut r = data;
    let _ = complete(codec::read_credentials(&mut r));
    let mut r = data;
    socks5_request(&mut r);
}

fn socks5_request(r: &mut &[u8]) {
    match complete(codec::read_request(r)) {
        Ok(req) => {
            check_addr(&req.target);
            let reply = codec::encode_reply(ReplyCode::Succeeded, &req.target);
            assert_eq!(reply.len(), 3 + req.target.encoded_len());
        }
        Err(e) => {
            // Only address errors get a reply; the code must be a defined one.
            if let Some(code) = e.request_reply_code() {
                assert_eq!(ReplyCode::from_byte(code.to_byte()), Some(code));
            }
        }
    }
}

/// A datagram from a SOCKS5 client's UDP ASSOCIATE socket.
pub fn socks5_udp(data: &[u8]) {
    if let Ok((target, payload)) = codec::parse_udp_datagram(data) {
        check_addr(&target);
        let mut out = Vec::new();
        codec::encode_udp_datagram(&target, payload, &mut out);
        match codec::parse_udp_datagram(&out) {
            Ok((t, p)) => {
                assert_eq!(t, target);
                assert_eq!(p, payload);
            }
            Err(e) => panic!("a re-encoded UDP datagram does not parse: {e}"),
        }
    }
}

/// The tunnel request a server reads at the start of a stream, and the reply a client reads.
pub fn tunnel_request(data: &[u8]) {
    let mut r = data;
    match complete(TunnelRequest::read_from(&mut r)) {
        Ok(req) => {
            assert_eq!(Command::from_byte(req.command.to_byte()), Some(req.command));
            let wire = req.encode();
            assert_eq!(wire.len(), data.len() - r.len(), "request length changed");
            let mut again = &wire[..];
            match complete(TunnelRequest::read_from(&mut again)) {
                Ok(back) => assert_eq!(back, req),
                Err(e) => panic!("a re-encoded request does not parse: {e}"),
            }
        }
        Err(e) => {
            if let Some(code) = e.reply_code() {
                assert_eq!(ReplyCode::from_byte(code.to_byte()), Some(code));
            }
        }
    }
    let mut r = data;
    if let Ok(reply) = complete(TunnelReply::read_from(&mut r)) {
        let wire = reply.encode();
        assert_eq!(wire.len(), data.len() - r.len(), "reply length changed");
        let mut again = &wire[..];
        match complete(TunnelReply::read_from(&mut again)) {
            Ok(back) => assert_eq!(back, reply),
            Err(e) => panic!("a re-encoded reply does not parse: {e}"),
        }
    }
}

/// The UDP relay's framing (`len | address | payload`, repeated) as read from a tunnel stream.
pub fn udp_relay_frames(data: &[u8]) {
    let mut r = data;
    let mut buf = Vec::new();
    for _ in 0..MAX_FRAMES {
        let before = r.len();
        match complete(request::read_udp_frame(&mut r, &mut buf)) {
            Ok(Some((addr, payload))) => {
                assert!(2 + addr.encoded_len() + payload.len() <= 2 + request::MAX_UDP_FRAME);
                let mut wire = Vec::new();
                match request::encode_udp_frame(&addr, payload, &mut wire) {
                    Ok(()) => assert_eq!(wire.len(), before - r.len(), "frame length changed"),
                    Err(e) => panic!("a frame that was read cannot be written: {e}"),
                }
                let (addr, payload) = (addr.clone(), payload.to_vec());
                let mut again = &wire[..];
                let mut buf2 = Vec::new();
                match complete(request::read_udp_frame(&mut again, &mut buf2)) {
                    Ok(Some((a, p))) => {
                        assert_eq!(a, addr);
                        assert_eq!(p, &payload[..]);
                    }
                    other => panic!("a re-encoded frame does not read back: {other:?}"),
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// Valid messages for each entry point, to start fuzzing from (written to `fuzz/corpus` by
/// `examples/apps_fuzz_seeds.rs` and replayed by the corpus test).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let v4 = TargetAddr::Ip(SocketAddr::from((Ipv4Addr::new(93, 184, 216, 34), 443)));
    let v6 = TargetAddr::Ip(SocketAddr::from((Ipv6Addr::LOCALHOST, 53)));
    let name = TargetAddr::Domain("example.com".into(), 80);
    let addrs = [v4, v6, name];
    let encoded = |a: &TargetAddr| {
        let mut out = Vec::new();
        a.encode(&mut out);
        out
    };
    match target {
        "address" => {
            let mut out: Vec<Vec<u8>> = addrs.iter().map(encoded).collect();
            out.extend(
                ["127.0.0.1:8080", "[::1]:22", "example.com:443"]
                    .iter()
                    .map(|s| s.as_bytes().to_vec()),
            );
            out
        }
        "socks5_session" => {
            let mut out = Vec::new();
            for a in &addrs {
                let mut no_auth = vec![5, 1, 0, 5, 1, 0];
                no_auth.extend(encoded(a));
                out.push(no_auth);
                let mut login = vec![5, 2, 0, 2, 1, 3, b'b', b'o', b'b', 2, b'p', b'w', 5, 3, 0];
                login.extend(encoded(a));
                out.push(login);
            }
            out
        }
        "socks5_udp" => addrs
            .iter()
            .map(|a| {
                let mut out = Vec::new();
                codec::encode_udp_datagram(a, b"payload", &mut out);
                out
            })
            .collect(),
        "tunnel_request" => {
            let mut out = Vec::new();
            for a in &addrs {
                for command in [Command::Connect, Command::UdpRelay] {
                    let mut wire = TunnelRequest {
                        command,
                        target: a.clone(),
                    }
                    .encode();
                    wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
                    out.push(wire);
                }
                out.push(
                    TunnelReply {
                        code: ReplyCode::Succeeded,
                        bound: a.clone(),
                    }
                    .encode(),
                );
            }
            out.push(TunnelReply::failure(ReplyCode::NotAllowed).encode());
            out
        }
        "udp_relay_frames" => {
            let mut all = Vec::new();
            let mut out = Vec::new();
            for (i, a) in addrs.iter().enumerate() {
                let mut one = Vec::new();
                let payload = vec![i as u8; 10 * i];
                if request::encode_udp_frame(a, &payload, &mut one).is_ok() {
                    all.extend_from_slice(&one);
                    out.push(one);
                }
            }
            out.push(all);
            out
        }
        _ => Vec::new(),
    }
}

/// A fuzz entry point.
pub type Entry = fn(&[u8]);

/// Every entry point by its target name, for the fuzz crate and the corpus test.
pub const TARGETS: [(&str, Entry); 5] = [
    ("address", address),
    ("socks5_session", socks5_session),
    ("socks5_udp", socks5_udp),
    ("tunnel_request", tunnel_request),
    ("udp_relay_frames", udp_relay_frames),
];
