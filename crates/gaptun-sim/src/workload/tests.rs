use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::*;

/// Generates the whole stream the way the sender does.
fn generate(stream: &mut SendStream) -> Vec<u8> {
    let mut all = Vec::new();
    while stream.refill() {
        all.extend_from_slice(&stream.pending[stream.offset..]);
        stream.offset = stream.pending.len();
    }
    all
}

#[test]
fn generated_data_has_exact_length_and_matching_hash() {
    let size = 3 * CHUNK as u64 + 1234;
    let mut stream = SendStream::new(99, size);
    let data = generate(&mut stream);
    assert_eq!(data.len() as u64, size);
    let expected: [u8; 32] = Sha256::digest(&data).into();
    let got: [u8; 32] = stream.hasher.clone().finalize().into();
    assert_eq!(got, expected);
    // Not a constant pattern.
    assert!(data.windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn generated_data_is_deterministic_per_seed() {
    let a = generate(&mut SendStream::new(5, 100_000));
    let b = generate(&mut SendStream::new(5, 100_000));
    let c = generate(&mut SendStream::new(6, 100_000));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn empty_stream_generates_nothing() {
    let mut stream = SendStream::new(1, 0);
    assert!(!stream.refill());
    assert!(generate(&mut stream).is_empty());
}

#[test]
fn bytes_are_split_over_streams() {
    let transfer = BulkTransfer::new(0, Direction::ToServer, 10, 1).with_streams(4, 1);
    let sizes: Vec<u64> = transfer.senders.iter().map(|s| s.remaining).collect();
    assert_eq!(sizes, vec![3, 3, 2, 2]);
    let transfer = BulkTransfer::new(0, Direction::ToClient, 10, 1).with_streams(0, 1);
    assert_eq!(transfer.senders.len(), 1);
    assert_eq!(transfer.senders[0].remaining, 10);
}

#[test]
fn streams_get_different_data() {
    let mut transfer = BulkTransfer::new(0, Direction::ToServer, 20_000, 7).with_streams(2, 7);
    let a = generate(&mut transfer.senders[0]);
    let b = generate(&mut transfer.senders[1]);
    assert_eq!(a.len(), 10_000);
    assert_ne!(a, b);
}

#[test]
fn direction_ends() {
    assert_eq!(Direction::ToServer.sender(), End::Client);
    assert_eq!(Direction::ToServer.receiver(), End::Server);
    assert_eq!(Direction::ToClient.sender(), End::Server);
    assert_eq!(Direction::ToClient.receiver(), End::Client);
}

#[test]
fn progress_and_goodput() {
    let t0 = Instant::now();
    let mut transfer = BulkTransfer::new(0, Direction::ToServer, 1_000_000, 1);
    for i in 0..=10u32 {
        transfer.received = u64::from(i) * 1000;
        transfer.record_progress(t0 + Duration::from_millis(10) * i, false);
    }
    assert_eq!(transfer.progress().len(), 11);
    assert_eq!(transfer.received_by(t0 - Duration::from_millis(1)), 0);
    assert_eq!(transfer.received_by(t0 + Duration::from_millis(55)), 5000);
    assert_eq!(transfer.received_by(t0 + Duration::from_secs(1)), 10_000);
    // 10 000 bytes in 100 ms = 800 kbit/s.
    let bps = transfer.goodput_bps(t0, t0 + Duration::from_millis(100));
    assert!((bps - 800_000.0).abs() < 1e-6, "{bps}");
    assert_eq!(transfer.goodput_bps(t0, t0), 0.0);
    // Samples closer than the interval are skipped unless forced.
    transfer.record_progress(t0 + Duration::from_millis(101), false);
    assert_eq!(transfer.progress().len(), 11);
    transfer.record_progress(t0 + Duration::from_millis(101), true);
    assert_eq!(transfer.progress().len(), 12);
}

#[test]
fn unfinished_transfer_does_not_verify() {
    let transfer = BulkTransfer::new(0, Direction::ToServer, 500, 1);
    assert_eq!(
        transfer.verify(),
        Err(TransferError::Incomplete {
            received: 0,
            expected: 500
        })
    );
    assert!(!transfer.is_done());
}

#[test]
fn latency_statistics() {
    let mut rr = RequestResponse::new(0, 5, 100, 1000);
    assert_eq!(rr.quantile(0.5), None);
    assert_eq!(rr.mean(), None);
    rr.latencies = [50, 10, 40, 20, 30]
        .iter()
        .map(|&ms| Duration::from_millis(ms))
        .collect();
    assert_eq!(rr.quantile(0.0), Some(Duration::from_millis(10)));
    assert_eq!(rr.quantile(0.5), Some(Duration::from_millis(30)));
    assert_eq!(rr.quantile(1.0), Some(Duration::from_millis(50)));
    assert_eq!(rr.quantile(f64::NAN), Some(Duration::from_millis(10)));
    assert_eq!(rr.mean(), Some(Duration::from_millis(30)));
    assert_eq!(rr.completed(), 5);
}

#[test]
fn request_schedule() {
    let t0 = Instant::now();
    let mut closed = RequestResponse::new(0, 2, 1, 1);
    assert!(closed.issue_due(t0));
    closed.issued = 2;
    assert!(!closed.issue_due(t0));
    let mut open = RequestResponse::new(0, 3, 1, 1).every(Duration::from_millis(100));
    assert!(open.issue_due(t0));
    open.next_at = Some(t0 + Duration::from_millis(100));
    assert!(!open.issue_due(t0 + Duration::from_millis(99)));
    assert!(open.issue_due(t0 + Duration::from_millis(100)));
}
