//! Frame encode/decode costs: the per-packet work of every sender and receiver.
//!
//! `cargo bench -p gaptun-proto --bench frames`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gaptun_proto::StreamId;
use gaptun_proto::frame::{self, Frame, StreamFrame};
use gaptun_proto::range_set::RangeSet;

/// Received packet numbers with `holes` gaps, as after heavy loss.
fn lossy_received(holes: u64) -> RangeSet {
    let mut set = RangeSet::new();
    for i in 0..holes {
        set.insert(i * 10..i * 10 + 7);
    }
    set
}

fn ack(c: &mut Criterion) {
    let received = lossy_received(200);
    let mut buf = Vec::with_capacity(1500);
    c.bench_function("ack/encode_64_ranges", |b| {
        b.iter(|| {
            buf.clear();
            frame::encode_ack(black_box(&received), 1234, 64, 1200, &mut buf)
        })
    });
    buf.clear();
    frame::encode_ack(&received, 1234, 64, 1200, &mut buf);
    c.bench_function("ack/decode_64_ranges", |b| {
        b.iter(|| match frame::iter(black_box(&buf)).next() {
            Some(Ok(Frame::Ack(a))) => a.ranges.len(),
            _ => 0,
        })
    });
}

fn stream(c: &mut Criterion) {
    let data = vec![0x5a_u8; 1300];
    let frame = StreamFrame {
        id: StreamId(8),
        offset: 123_456_789,
        fin: false,
        data: &data,
    };
    let mut group = c.benchmark_group("stream");
    group.throughput(Throughput::Bytes(data.len() as u64));
    let mut buf = Vec::with_capacity(1500);
    group.bench_function("encode_1300", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&frame).encode(&mut buf);
            buf.len()
        })
    });
    buf.clear();
    frame.encode(&mut buf);
    group.bench_function("decode_1300", |b| {
        b.iter(|| match frame::iter(black_box(&buf)).next() {
            Some(Ok(Frame::Stream(f))) => f.data.len(),
            _ => 0,
        })
    });
    // A packet's worth of small frames: control-heavy payloads.
    let mut mixed = Vec::new();
    for i in 0..40u64 {
        Frame::MaxStreamData {
            id: StreamId(i * 4),
            max: 1 << 24,
        }
        .encode(&mut mixed);
        let small = StreamFrame {
            id: StreamId(i * 4),
            offset: i * 100,
            fin: i % 2 == 0,
            data: &data[..16],
        };
        small.encode(&mut mixed);
    }
    group.throughput(Throughput::Elements(80));
    group.bench_function("decode_80_small_frames", |b| {
        b.iter(|| frame::iter(black_box(&mixed)).filter(Result::is_ok).count())
    });
    group.finish();
}

criterion_group!(benches, ack, stream);
criterion_main!(benches);
