//! Packet protection throughput: sealing and opening full-size (1350-byte) packets, per suite;
//! and what a server spends on a junk datagram (random bytes that match no connection and no key).
//!
//! Run with `cargo bench -p gaptun-proto --bench crypto`. The target is at least 1 GB/s of
//! seal + open on one core with AES-256-GCM on CPUs with AES instructions.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gaptun_proto::crypto::{CipherSuite, HeaderKey, PacketKeys, Psk};
use gaptun_proto::packet::{self, ConnectionId, HEADER_LEN, TAG_LEN};
use gaptun_proto::{Endpoint, EndpointConfig, RngSeed};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

const DATAGRAM_LEN: usize = 1350;
const PAYLOAD_LEN: usize = DATAGRAM_LEN - HEADER_LEN - TAG_LEN;
const CID: ConnectionId = ConnectionId([1, 2, 3, 4, 5, 6, 7, 8]);

fn keys(suite: CipherSuite) -> (HeaderKey, PacketKeys, PacketKeys) {
    let header = HeaderKey::new(&Psk::from_bytes([7; 32]));
    (
        header,
        PacketKeys::new(suite, [1; 32], [2; 32]),
        PacketKeys::new(suite, [2; 32], [1; 32]),
    )
}

fn seal_into(header: &HeaderKey, tx: &mut PacketKeys, pn: u64, buf: &mut Vec<u8>) {
    buf.clear();
    let start = packet::begin(buf);
    buf.resize(start + HEADER_LEN + PAYLOAD_LEN, 0x42);
    packet::seal(header, tx, CID, pn, buf, start);
}

fn bench_suite(c: &mut Criterion, suite: CipherSuite, name: &str) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(DATAGRAM_LEN as u64));

    let (header, mut tx, mut rx) = keys(suite);
    let mut buf = Vec::with_capacity(DATAGRAM_LEN);
    let mut pn = 0u64;
    group.bench_function("seal+open 1350", |b| {
        b.iter(|| {
            seal_into(&header, &mut tx, pn, &mut buf);
            let largest = pn.checked_sub(1);
            let opened = packet::open(&header, &mut rx, largest, &mut buf);
            assert!(opened.is_ok());
            black_box(opened.ok().map(|(n, p)| (n, p.len())));
            pn += 1;
        })
    });

    let (header, mut tx, _) = keys(suite);
    let mut pn = 0u64;
    group.bench_function("seal 1350", |b| {
        b.iter(|| {
            seal_into(&header, &mut tx, pn, &mut buf);
            black_box(&buf);
            pn += 1;
        })
    });
    group.finish();
}

fn packet_protection(c: &mut Criterion) {
    bench_suite(c, CipherSuite::Aes256Gcm, "aes-256-gcm");
    bench_suite(c, CipherSuite::ChaCha20Poly1305, "chacha20-poly1305");
}

/// A server endpoint with `keys` configured keys receiving 1200-byte random datagrams: the
/// cost a flood of junk (or a prober) imposes per datagram.
fn junk_rejection(c: &mut Criterion) {
    let mut group = c.benchmark_group("server endpoint junk");
    group.throughput(Throughput::Elements(1));
    let mut rng = StdRng::seed_from_u64(42);
    let junk: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            let mut d = vec![0u8; 1200];
            rng.fill_bytes(&mut d);
            d
        })
        .collect();
    let from: SocketAddr = "192.0.2.7:4000".parse().expect("address");
    for keys in [1u8, 8] {
        let psks = (0..keys).map(|k| Psk::from_bytes([k + 1; 32])).collect();
        let config = Arc::new(EndpointConfig::server(psks));
        let now = Instant::now();
        let mut server = Endpoint::new(
            config,
            RngSeed::insecure_from_u64(1),
            now,
            Duration::from_secs(1_700_000_000),
        );
        let mut buf = vec![0u8; 1200];
        let mut i = 0usize;
        group.bench_function(format!("{keys} key(s), 1200-byte junk"), |b| {
            b.iter(|| {
                buf.copy_from_slice(&junk[i % junk.len()]);
                server.handle_datagram(now, gaptun_proto::CarrierId(0), from, &mut buf);
                i += 1;
            })
        });
        assert_eq!(server.stats().accepted, 0);
    }
    group.finish();
}

criterion_group!(benches, packet_protection, junk_rejection);
criterion_main!(benches);
