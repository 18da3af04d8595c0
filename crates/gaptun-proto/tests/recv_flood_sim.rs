//! What an authenticated peer can make the receiver hold now that received STREAM data is kept
//! as slices of the datagrams it came in (issue 13, "Fewer copies"), measured with a counting
//! allocator on a connection established over the simulated network.
//!
//! A slice keeps its whole datagram alive, so a 1-byte frame kept as a slice would pin about
//! 1200 bytes: a flood of them would hold hundreds of times the window. Pieces shorter than
//! half their datagram are copied out instead (`streams::recv::SLICE_MIN`), and the fragment
//! cap still refuses the flood. Packet-sized frames (shared without a copy) hold little more
//! than their own size, and read back intact through the chunk API.
//!
//! This file holds one test so that nothing else allocates while it measures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod counting_alloc;

use counting_alloc::live;

use std::time::Duration;

use gaptun_proto::frame::StreamFrame;
use gaptun_proto::{Side, StreamId};
use gaptun_sim::{Sim, SimConfig};
use sha2::{Digest, Sha256};

const STREAM_WINDOW: u64 = 256 * 1024;
const CONN_WINDOW: u64 = 1 << 20;
/// Every injected datagram is padded to this payload size, as a real packet would be.
const DATAGRAM_PAYLOAD: usize = 1200;

fn established_sim(seed: u64) -> Sim {
    let mut sim = Sim::new(SimConfig::new(seed).with_transport(|t| {
        t.receive_window = CONN_WINDOW;
        t.stream_receive_window = STREAM_WINDOW;
    }));
    sim.connect(0).expect("client has a key");
    let up = sim.run_for(Duration::from_secs(10), |sim| {
        sim.client_connection(0).is_some_and(|c| c.is_established())
            && sim.server_connection(0).is_some_and(|c| c.is_established())
    });
    assert!(up, "handshake did not complete");
    sim
}

/// Seals one STREAM frame (padded to [`DATAGRAM_PAYLOAD`]) with the client's keys and hands it
/// to the server. Returns whether the server's connection is still established.
fn inject(sim: &mut Sim, id: StreamId, offset: u64, data: &[u8]) -> bool {
    let mut payload = Vec::with_capacity(DATAGRAM_PAYLOAD);
    StreamFrame {
        id,
        offset,
        fin: false,
        data,
    }
    .encode(&mut payload);
    payload.resize(payload.len().max(DATAGRAM_PAYLOAD), 0); // PADDING frames
    let mut datagram = Vec::new();
    let client = sim.client_connection(0).expect("client connection");
    assert!(client.fuzz_seal(&payload, &mut datagram));
    let (now, from) = (sim.now(), sim.client_address(0));
    sim.server()
        .handle_datagram(now, gaptun_proto::CarrierId(0), from, &mut datagram);
    sim.server_connection(0).is_some_and(|c| c.is_established())
}

#[test]
fn one_byte_frame_flood_stays_bounded_and_packet_frames_read_back_intact() {
    // 1. 1-byte frames at every other offset, each in its own 1200-byte datagram: refused at
    //    the per-stream fragment cap, holding less than the stream window all along.
    let mut sim = established_sim(1);
    let id = StreamId::new(Side::Client, 0);
    // The stream's first frame creates its state; count from there.
    assert!(inject(&mut sim, id, 0, &[0xAA]));
    let base = live();
    let mut accepted = 0u64;
    let mut peak = 0i64;
    for offset in (3..STREAM_WINDOW).step_by(2) {
        let before = live();
        if !inject(&mut sim, id, offset, &[0xAA]) {
            break;
        }
        peak = peak.max(before - base).max(live() - base);
        accepted += 1;
    }
    assert!(
        sim.server_connection(0).is_none_or(|c| !c.is_established()),
        "the flood must be refused"
    );
    let cap = STREAM_WINDOW / 256;
    assert_eq!(accepted + 1, cap, "per-stream cap: window / 256 fragments");
    assert!(
        peak <= STREAM_WINDOW as i64,
        "{peak} heap bytes held for {accepted} one-byte fragments (window {STREAM_WINDOW}); \
         as slices of their datagrams they would pin {}",
        accepted as usize * DATAGRAM_PAYLOAD
    );
    eprintln!(
        "one-byte flood: {accepted} fragments accepted, peak {peak} heap bytes \
         ({:.1} per fragment, {:.2} of the stream window)",
        peak as f64 / accepted as f64,
        peak as f64 / STREAM_WINDOW as f64
    );
    drop(sim);

    // 2. Packet-sized frames arriving in reverse order (nothing readable until the first one
    //    arrives): each is kept as a slice of its datagram, which holds little more than the
    //    data itself; then the reader gets it back intact, chunk by chunk.
    let mut sim = established_sim(2);
    let data: Vec<u8> = (0..200 * 1100usize)
        .map(|i| (i * 131 + i / 1009) as u8)
        .collect();
    let frames: Vec<(u64, &[u8])> = data
        .chunks(1100)
        .enumerate()
        .map(|(i, c)| ((i * 1100) as u64, c))
        .collect();
    let (first, rest) = frames.split_first().expect("frames");
    assert!(inject(&mut sim, id, first.0 + 1, &first.1[1..]));
    let base = live();
    for &(offset, bytes) in rest.iter().rev() {
        assert!(inject(&mut sim, id, offset, bytes));
    }
    let held = live() - base;
    let stored = (data.len() - 1100) as i64;
    assert!(
        held >= stored,
        "{held} heap bytes for {stored} bytes stored: less than the data?"
    );
    // Each frame pins its datagram (a little more than the data) plus the per-packet state
    // of receiving it; at most twice the data.
    assert!(
        held <= stored * 2,
        "{held} heap bytes for {stored} bytes in packet-sized frames"
    );
    eprintln!("packet-sized frames: {stored} bytes stored, {held} heap bytes held");
    assert!(inject(&mut sim, id, 0, &first.1[..1]));
    let server = sim.server_connection(0).expect("server connection");
    let mut got = Vec::with_capacity(data.len());
    let mut largest = 0;
    while got.len() < data.len() {
        let chunk = server
            .read_chunk(id, 64 * 1024)
            .expect("readable")
            .expect("not at the end");
        largest = largest.max(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    assert_eq!(largest, 1100, "chunks are the frames as they came");
}
