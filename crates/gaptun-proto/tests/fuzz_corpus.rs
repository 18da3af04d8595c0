//! Runs the fuzz targets' entry points over the seed corpus in `fuzz/corpus`, over valid
//! messages made here, and over deterministic mutations of both. A panic anywhere fails the test.

use std::path::PathBuf;
use std::time::Duration;

use gaptun_proto::StreamId;
use gaptun_proto::crypto::Psk;
use gaptun_proto::frame::{self, AckFrame, CloseFrame, Frame, StreamFrame};
use gaptun_proto::fuzzing;
use gaptun_proto::handshake::{ClientHandshake, TransportParams};
use gaptun_proto::packet::ConnectionId;
use gaptun_proto::range_set::RangeSet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut seeds = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                seeds.push(bytes);
            }
        }
    }
    seeds
}

fn params() -> TransportParams {
    TransportParams {
        max_data: 1 << 20,
        max_stream_data: 1 << 19,
        max_streams: 100,
        idle_timeout_ms: 30_000,
        max_udp_payload: 1350,
        ciphers: vec![gaptun_proto::CipherSuite::ChaCha20Poly1305],
    }
}

fn valid_initial(seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let psk = Psk::from_bytes(fuzzing::FUZZ_PSK);
    let (_, initial) = ClientHandshake::start(
        &psk,
        ConnectionId([3; 8]),
        &params(),
        fuzzing::FUZZ_UNIX_TIME + Duration::from_secs(1),
        1350,
        &mut rng,
    );
    initial
}

fn valid_frames() -> Vec<u8> {
    let mut buf = Vec::new();
    let mut ranges = RangeSet::new();
    ranges.insert(0..10);
    ranges.insert(12..40);
    ranges.insert(100..101);
    assert!(frame::encode_ack(&ranges, 250, 64, 1000, &mut buf));
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

/// Bit flips, byte overwrites, truncations and extensions of `seed`.
fn mutations(seed: &[u8], count: usize, rng: &mut StdRng) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut m = seed.to_vec();
        match rng.random_range(0..4) {
            0 if !m.is_empty() => {
                let i = rng.random_range(0..m.len());
                m[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !m.is_empty() => {
                let i = rng.random_range(0..m.len());
                m[i] = rng.random();
            }
            2 => {
                let len = rng.random_range(0..=m.len());
                m.truncate(len);
            }
            _ => {
                let extra = rng.random_range(1..64);
                m.extend((0..extra).map(|_| rng.random::<u8>()));
            }
        }
        out.push(m);
    }
    out
}

fn run(target: &str, entry: fn(&[u8]), generated: Vec<Vec<u8>>, per_seed: usize) {
    let mut rng = StdRng::seed_from_u64(0xf022);
    let mut seeds = corpus(target);
    seeds.extend(generated);
    seeds.push(Vec::new());
    seeds.push((0..=255u8).collect());
    for seed in &seeds {
        entry(seed);
        for m in mutations(seed, per_seed, &mut rng) {
            entry(&m);
        }
    }
}

#[test]
fn frame_decoder_survives_corpus_and_mutations() {
    run("frames", fuzzing::frames, vec![valid_frames()], 3000);
}

#[test]
fn handshake_parsers_survive_corpus_and_mutations() {
    run("handshake", fuzzing::handshake, vec![valid_initial(1)], 300);
}

#[test]
fn server_endpoint_survives_corpus_and_mutations() {
    run("datagram", fuzzing::datagram, vec![valid_initial(2)], 300);
}
