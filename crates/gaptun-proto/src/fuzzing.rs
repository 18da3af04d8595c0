//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and by the test that replays the
//! seed corpus in CI (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes and must never panic.
//!
//! Compiled only with the `fuzzing` feature, which the fuzz crate and this crate's own tests
//! and examples turn on.

mod established;

pub use established::established;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::EndpointConfig;
use crate::crypto::CipherSuite;
use crate::crypto::Psk;
use crate::endpoint::{Endpoint, RngSeed};
use crate::frame::{self, AckFrame, CloseFrame, Frame, StreamFrame};
use crate::handshake::{self, ReplayCache, TransportParams};
use crate::packet::ConnectionId;
use crate::range_set::RangeSet;
use crate::shared::StreamId;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The key the fuzz targets and the seed corpus use.
pub const FUZZ_PSK: [u8; 32] = [0x5a; 32];

/// Unix time at which the seed corpus' Initials were made.
pub const FUZZ_UNIX_TIME: Duration = Duration::from_secs(1_700_000_000);

fn peer() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 40000))
}

/// Decodes every frame of a payload.
pub fn frames(data: &[u8]) {
    for frame in frame::iter(data) {
        if frame.is_err() {
            break;
        }
    }
}

/// Feeds a datagram to a server endpoint, then drives it: the full receive path (routing,
/// handshake, packet opening) on arbitrary input.
pub fn datagram(data: &[u8]) {
    let now = Instant::now();
    let config = Arc::new(EndpointConfig::server(vec![Psk::from_bytes(FUZZ_PSK)]));
    let mut server = Endpoint::new(config, RngSeed::from_bytes([1; 32]), now, FUZZ_UNIX_TIME);
    let mut copy = data.to_vec();
    server.handle_datagram(now, crate::CarrierId(0), peer(), &mut copy);
    let mut buf = Vec::new();
    while server.poll_transmit(now, 1, &mut buf).is_some() {}
    server.handle_timeout(now + Duration::from_secs(60));
}

/// Offers arbitrary bytes to both handshake parsers.
pub fn handshake(data: &[u8]) {
    let psk = Psk::from_bytes(FUZZ_PSK);
    let mut replay = ReplayCache::new(Duration::from_secs(120));
    let params = TransportParams {
        max_data: 1 << 20,
        max_stream_data: 1 << 19,
        max_streams: 100,
        idle_timeout_ms: 30_000,
        max_udp_payload: 1350,
        ciphers: Vec::new(),
        fec: true,
        max_datagram_size: 65_535,
        carrier_offer: None,
    };
    let mut rng = StdRng::seed_from_u64(7);
    let _ = handshake::accept_initial(
        &[handshake::HandshakeKey::new(&psk)],
        &mut replay,
        data,
        ConnectionId([1; 8]),
        &params,
        None,
        FUZZ_UNIX_TIME,
        Duration::from_secs(120),
        &mut rng,
        &mut handshake::AdmitAll,
    );
    let _ = handshake::peek_response_cid(&psk, data);
    let (client, _initial) = handshake::ClientHandshake::start(
        &psk,
        ConnectionId([2; 8]),
        &params,
        FUZZ_UNIX_TIME,
        1350,
        &mut rng,
    );
    let _ = client.finish(data);
}

fn seed_params() -> TransportParams {
    TransportParams {
        max_data: 1 << 20,
        max_stream_data: 1 << 19,
        max_streams: 100,
        idle_timeout_ms: 30_000,
        max_udp_payload: 1350,
        ciphers: vec![CipherSuite::ChaCha20Poly1305],
        fec: true,
        max_datagram_size: 65_535,
        carrier_offer: None,
    }
}

/// A valid Initial for [`FUZZ_PSK`], stamped one second after [`FUZZ_UNIX_TIME`]: a seed that
/// gets the fuzzer past authentication.
pub fn seed_initial(seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let psk = Psk::from_bytes(FUZZ_PSK);
    let (_, initial) = handshake::ClientHandshake::start(
        &psk,
        ConnectionId([3; 8]),
        &seed_params(),
        FUZZ_UNIX_TIME + Duration::from_secs(1),
        1350,
        &mut rng,
    );
    initial
}

/// A payload holding one frame of every type.
pub fn seed_frames() -> Vec<u8> {
    let mut buf = Vec::new();
    let mut ranges = RangeSet::new();
    ranges.insert(0..10);
    ranges.insert(12..40);
    ranges.insert(100..101);
    frame::encode_ack(&ranges, 250, 64, 1000, &mut buf);
    let frames = [
        Frame::Ping,
        Frame::Stream(StreamFrame {
            id: StreamId(4),
            offset: 77,
            fin: true,
            data: b"hello",
        }),
        Frame::ResetStream {
            id: StreamId(1),
            error_code: 9,
            final_size: 1000,
        },
        Frame::StopSending {
            id: StreamId(5),
            error_code: 2,
        },
        Frame::MaxData(1 << 30),
        Frame::MaxStreamData {
            id: StreamId(8),
            max: 1 << 20,
        },
        Frame::MaxStreams(500),
        Frame::DataBlocked(12),
        Frame::StreamDataBlocked {
            id: StreamId(8),
            limit: 99,
        },
        Frame::PathChallenge([1, 2, 3, 4, 5, 6, 7, 8]),
        Frame::PathResponse([8, 7, 6, 5, 4, 3, 2, 1]),
        Frame::Close(CloseFrame {
            application: true,
            error_code: 3,
            reason: b"bye",
        }),
        Frame::Ack(AckFrame {
            delay_us: 5,
            ranges: vec![10..20, 2..5],
        }),
    ];
    for f in &frames {
        f.encode(&mut buf);
    }
    buf
}

/// Operation programs for [`established`] that reach its main paths: a request and a reply on
/// a stream, injected STREAM and control frames of every kind, lost, replayed, corrupted and
/// re-routed datagrams, flow control at its limit, idle timeout, and closes.
pub fn seed_established() -> Vec<Vec<u8>> {
    const C: u8 = 0;
    const S: u8 = 1;
    const ALL: u8 = 17;
    const NEW: u8 = 0xff;
    let exchange = vec![
        7, C, NEW, 0x03, 0xe8, ALL, 8, S, 0, 7, S, 0, 0x01, 0xf4, 9, S, 0, ALL, 8, C, 0, 9, C, 0,
        ALL, 8, S, 0, 3, 20, ALL,
    ];
    let mut injected = vec![7, C, NEW, 0, 10, ALL, 1, S, 0, 0, 0, 10, 1, 5];
    injected.extend_from_slice(b"abcde");
    injected.extend_from_slice(&[8, S, 0, 1, S, 0xf2, 0, 0, 0, 0, 3, b'x', b'y', b'z', ALL]);
    injected.extend_from_slice(&[8, S, 2, 1, C, 0xf1, 0, 0, 0, 1, 2, b'h', b'i', ALL, 8, C, 0]);
    let mut control = vec![7, C, NEW, 0x40, 0, 7, S, NEW, 0x40, 0];
    for kind in 0..12u8 {
        control.extend_from_slice(&[2, kind % 2, kind, 0, kind % 4, 0, 0x10 + kind, ALL]);
    }
    let lossy = vec![
        7, C, NEW, 0x80, 0, 4, 6, S, 3, 5, S, 2, 14, S, 0, 40, 3, 12, 0, 3, 100, 4, 5, S, 15, 5, C,
        15, 3, 50, ALL, 8, S, 0, 9, C, 0, 3, 60, ALL, 8, S, 0,
    ];
    let migration = vec![
        7, C, NEW, 0x10, 0, 4, 13, 0x9c, 0x41, 3, 4, 5, C, 15, 13, 0x9c, 0x41, 3, 4, 5, C, 15, 5,
        S, 15, ALL, 8, S, 0,
    ];
    let flow = vec![
        16, S, 0, 0x10, 7, C, NEW, 0xff, 0xff, ALL, ALL, 7, C, 0, 0xff, 0xff, ALL, 8, S, 0, ALL, 7,
        C, 0, 0xff, 0xff, ALL, 10, C, 0, 7, ALL, 11, S, 0, 9, ALL,
    ];
    let streams: Vec<u8> = (0..10)
        .flat_map(|i| [7, i % 2, NEW, 0, 20 + i, 9, i % 2, i])
        .chain([ALL, 8, S, 0, 8, C, 1, 8, S, 2, 8, C, 3])
        .collect();
    let idle = vec![7, C, NEW, 0, 5, ALL, 3, 255, 3, 255, 4, 17];
    let mut frames_raw = vec![0, S];
    let all = seed_frames();
    frames_raw.extend_from_slice(&(all.len() as u16).to_be_bytes());
    frames_raw.extend_from_slice(&all);
    frames_raw.push(ALL);
    let closes = vec![7, C, NEW, 0, 5, ALL, 15, C, 3, ALL, 15, S, 4, 12, 0, ALL];
    vec![
        exchange, injected, control, lossy, migration, flow, streams, idle, frames_raw, closes,
    ]
}
