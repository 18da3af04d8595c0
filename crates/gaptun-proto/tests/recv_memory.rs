//! What a peer can make the receiver hold (issue 8, "Receive memory"), measured with a counting
//! allocator: each STREAM frame used to become its own allocation, so 1-byte frames at every
//! other offset of the window tied up tens of heap bytes per byte of window. Now the gaps a
//! peer may leave are capped by the window (docs/protocol.md section 4, "Receiving"); the
//! flood is refused with a `Fragmented` error before the receiver holds more than one window's
//! worth of heap, and normal transfers are unaffected.
//!
//! This file holds one test so that nothing else allocates while it measures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod counting_alloc;

use counting_alloc::live;

use gaptun_proto::frame::StreamFrame;
use gaptun_proto::streams::{StreamLimits, Streams, StreamsError};
use gaptun_proto::{Side, StreamId};
use sha2::{Digest, Sha256};

const STREAM_WINDOW: u64 = 1 << 20;
const CONN_WINDOW: u64 = 4 << 20;

fn receiver() -> Streams {
    let limits = StreamLimits {
        max_data: CONN_WINDOW,
        max_stream_data: STREAM_WINDOW,
        max_streams: 100,
    };
    Streams::new(Side::Server, limits, limits, CONN_WINDOW)
}

fn frame(id: StreamId, offset: u64, data: &[u8]) -> StreamFrame<'_> {
    StreamFrame {
        id,
        offset,
        fin: false,
        data,
    }
}

/// Sends 1-byte frames at every other offset of stream `index` until the receiver refuses one;
/// returns how many it took and the heap held just before the refusal.
fn flood(streams: &mut Streams, index: u64, limit: u64) -> (u64, Result<(), StreamsError>) {
    let id = StreamId::new(Side::Client, index);
    let mut sent = 0;
    for offset in (1..STREAM_WINDOW).step_by(2).take(limit as usize) {
        if let Err(e) = streams.on_stream_frame(&frame(id, offset, &[0xAA])) {
            return (sent, Err(e));
        }
        sent += 1;
    }
    (sent, Ok(()))
}

#[test]
fn scattered_one_byte_frames_are_bounded_and_normal_transfers_unaffected() {
    // 1. One stream, every other byte of its window: refused at the per-stream cap
    //    (window / 256 gaps), with at most one window of heap held.
    let mut streams = receiver();
    let base = live();
    let (accepted, end) = flood(&mut streams, 0, u64::MAX);
    let held = live() - base;
    assert_eq!(end, Err(StreamsError::Fragmented));
    assert_eq!(
        accepted,
        STREAM_WINDOW / 256,
        "per-stream cap: window / 256 gaps"
    );
    assert!(
        held <= STREAM_WINDOW as i64,
        "{held} heap bytes held for {accepted} scattered bytes (window {STREAM_WINDOW})"
    );
    eprintln!(
        "per-stream flood: {accepted} one-byte fragments accepted, {held} heap bytes held \
         ({:.1} bytes per fragment, {:.2} of the stream window)",
        held as f64 / accepted as f64,
        held as f64 / STREAM_WINDOW as f64
    );
    drop(streams);

    // 2. Many streams, each below its own cap: refused at the connection's cap
    //    (connection window / 256 gaps), with at most one connection window held.
    let mut streams = receiver();
    let base = live();
    let per_stream = STREAM_WINDOW / 256 - 1;
    let mut total = 0;
    let mut refused = None;
    for index in 0..8 {
        let (accepted, end) = flood(&mut streams, index, per_stream);
        total += accepted;
        if let Err(e) = end {
            refused = Some(e);
            break;
        }
    }
    let held = live() - base;
    assert_eq!(refused, Some(StreamsError::Fragmented));
    assert_eq!(
        total,
        CONN_WINDOW / 256,
        "per-connection cap: window / 256 gaps"
    );
    assert!(
        held <= CONN_WINDOW as i64,
        "{held} heap bytes for {total} fragments"
    );
    eprintln!("per-connection flood: {total} fragments accepted, {held} heap bytes held");
    drop(streams);

    // 3. A normal transfer: packet-sized frames, reordered in pairs with a few gaps that are
    //    filled later, arrive intact.
    let mut streams = receiver();
    let id = StreamId::new(Side::Client, 0);
    let data: Vec<u8> = (0..STREAM_WINDOW as usize)
        .map(|i| (i * 31 + i / 977) as u8)
        .collect();
    let chunks: Vec<(u64, &[u8])> = data
        .chunks(1200)
        .enumerate()
        .map(|(i, c)| ((i * 1200) as u64, c))
        .collect();
    let mut late = Vec::new();
    for pair in chunks.chunks(2) {
        for &(offset, bytes) in pair.iter().rev() {
            if offset % (1200 * 50) == 0 {
                late.push((offset, bytes));
                continue;
            }
            streams.on_stream_frame(&frame(id, offset, bytes)).unwrap();
        }
    }
    for (offset, bytes) in late {
        streams.on_stream_frame(&frame(id, offset, bytes)).unwrap();
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(Some(n)) = streams.read(id, &mut buf) {
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got.len(), data.len());
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
}
