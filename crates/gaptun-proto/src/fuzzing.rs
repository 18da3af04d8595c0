//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and by the test that replays the
//! seed corpus in CI (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes and must never panic.

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
    server.handle_datagram(now, peer(), &mut copy);
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
