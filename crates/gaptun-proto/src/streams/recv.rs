//! The receiving half of one stream: reassembly, final size and stream-level credit.

use std::collections::BTreeMap;

use bytes::{Buf, Bytes, BytesMut};

use crate::range_set::RangeSet;

use super::{ReadError, StreamsError};

/// Pieces of data that arrive next to a stored chunk are merged into it while the merged chunk
/// stays within this size. Bulk frames (about a packet) are larger and stay as they came, so
/// the common path copies nothing twice; small frames (interactive writes, or a peer trying to
/// make the receiver hold one allocation per byte) are packed into chunks of at least half
/// this size on average (two neighbouring chunks are never both small enough to merge).
pub(super) const COALESCE_LIMIT: usize = 1024;

/// A received piece is kept as a slice of its datagram (no copy) only if it is at least this
/// long and at least half of that datagram. Shorter pieces are copied out, so that a byte
/// stored never pins more than two bytes of datagram, whatever the peer sends: a 1-byte frame
/// does not keep a 1500-byte datagram alive, and small pieces still coalesce.
pub(crate) const SLICE_MIN: usize = COALESCE_LIMIT / 2;

/// Each run of buffered data separated from the next by a gap (a "fragment") must be paid for
/// by this many bytes of receive window: a stream (and a connection) may hold at most
/// `window / WINDOW_PER_FRAGMENT` fragments, but never fewer than [`MIN_FRAGMENTS`]. A gap is
/// what a lost or reordered packet leaves, so an honest peer whose frames fill packets stays
/// far below (about `window / 1200` even if every other packet were lost).
pub(super) const WINDOW_PER_FRAGMENT: u64 = 256;

/// The fragment cap for small windows.
pub(super) const MIN_FRAGMENTS: u64 = 64;

/// How many fragments a window of `window` bytes allows (see [`WINDOW_PER_FRAGMENT`]).
pub(super) fn fragment_cap(window: u64) -> u64 {
    (window / WINDOW_PER_FRAGMENT).max(MIN_FRAGMENTS)
}

/// Where the receiving half is, as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecvState {
    /// Data may still arrive or be read.
    Open,
    /// The peer reset the stream; the next read reports it.
    Reset { code: u64 },
    /// The application read the end, was told of the reset, or stopped the stream.
    Closed,
}

/// Flow-control effects of accepting a frame, for the connection-level counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Ingested {
    /// Bytes stored for the application to read.
    pub(super) stored: u64,
    /// Bytes counted as consumed without the application reading them (discarded after a stop
    /// or a reset); they return connection credit.
    pub(super) consumed: u64,
    /// Bytes dropped from the reassembly buffer (unread data discarded by a reset).
    pub(super) dropped: u64,
}

/// Received, unread bytes at one offset.
#[derive(Debug)]
enum Chunk {
    /// Copied out of the datagrams it came in; small neighbours are appended to it.
    Owned(BytesMut),
    /// A slice of one received datagram, handed to the reader without a copy. `backing` is the
    /// length of the datagram it keeps alive (at most twice `bytes` when stored, see
    /// [`SLICE_MIN`]).
    Shared {
        bytes: Bytes,
        /// Only the memory tests read it; kept so that they measure what is really held.
        #[cfg_attr(not(test), allow(dead_code))]
        backing: usize,
    },
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Self::Owned(b) => b.len(),
            Self::Shared { bytes, .. } => bytes.len(),
        }
    }

    /// Takes the first `n` bytes (at most the chunk's length) as a `Bytes`, without copying.
    fn split_front(&mut self, n: usize) -> Bytes {
        match self {
            Self::Owned(b) => b.split_to(n.min(b.len())).freeze(),
            Self::Shared { bytes, .. } => bytes.split_to(n.min(bytes.len())),
        }
    }

    /// Heap bytes this chunk keeps alive.
    #[cfg(test)]
    fn heap(&self) -> usize {
        match self {
            Self::Owned(b) => b.capacity(),
            Self::Shared { backing, .. } => *backing,
        }
    }
}

/// Where the bytes of a STREAM frame live: only borrowed (copied if stored), or inside a
/// received datagram that stored pieces may share.
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameData<'a> {
    pub(super) data: &'a [u8],
    /// The datagram payload `data` lies in, if it may be shared.
    pub(super) backing: Option<&'a Bytes>,
}

impl<'a> FrameData<'a> {
    /// The piece `from..to` of the frame's data as a chunk: a slice of the datagram when it is
    /// long enough (see [`SLICE_MIN`]), else a copy.
    fn piece(&self, from: usize, to: usize) -> Option<Chunk> {
        let bytes = self.data.get(from..to)?;
        match self.backing {
            Some(backing)
                if bytes.len() >= SLICE_MIN
                    && bytes.len().saturating_mul(2) >= backing.len()
                    && contains(backing, bytes) =>
            {
                Some(Chunk::Shared {
                    bytes: backing.slice_ref(bytes),
                    backing: backing.len(),
                })
            }
            _ => Some(Chunk::Owned(BytesMut::from(bytes))),
        }
    }
}

/// Whether `part` lies inside `whole` (so `Bytes::slice_ref` cannot panic).
fn contains(whole: &Bytes, part: &[u8]) -> bool {
    let w = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    p >= w && p.saturating_add(part.len()) <= w.saturating_add(whole.len())
}

/// Receiving half of a stream.
///
/// `chunks` holds received, unread data keyed by stream offset, never overlapping; `received`
/// says which offsets arrived (including those already read), so retransmitted bytes are
/// neither stored twice nor counted twice. Empty maps allocate nothing.
///
/// What a peer can make us hold is bounded: data by the stream credit; the number of chunks by
/// merging small neighbours ([`COALESCE_LIMIT`]); the number of gaps (`fragments`, which is
/// also what sizes `received`) by a cap the caller enforces ([`fragment_cap`]).
#[derive(Debug)]
pub(super) struct Recv {
    chunks: BTreeMap<u64, Chunk>,
    received: RangeSet,
    /// Next offset the application reads; after a stop or reset, everything below is consumed.
    read: u64,
    /// Highest offset received, which is what connection-level flow control counts.
    highest: u64,
    final_size: Option<u64>,
    /// Stream credit we granted (committed: only grows).
    pub(super) max_data: u64,
    /// Receive-window generation `max_data` was last computed for.
    pub(super) window_gen: u32,
    pub(super) state: RecvState,
    /// We sent (or owe) STOP_SENDING.
    pub(super) stopped: Option<u64>,
    /// `Readable` was reported and no read happened since.
    pub(super) notified: bool,
    /// In the MAX_STREAM_DATA control queue (dedupe).
    pub(super) credit_queued: bool,
    /// In the STOP_SENDING control queue (dedupe).
    pub(super) stop_queued: bool,
    buffered: u64,
    /// Runs of contiguous buffered data (chunks separated by gaps count once per run).
    fragments: u64,
}

impl Recv {
    pub(super) fn new(max_data: u64) -> Self {
        Self {
            chunks: BTreeMap::new(),
            received: RangeSet::new(),
            read: 0,
            highest: 0,
            final_size: None,
            max_data,
            window_gen: 0,
            state: RecvState::Open,
            stopped: None,
            notified: false,
            credit_queued: false,
            stop_queued: false,
            buffered: 0,
            fragments: 0,
        }
    }

    /// Runs of buffered data separated by gaps: what reordering or loss left, and what an
    /// attacker sending scattered bytes would inflate.
    pub(super) fn fragments(&self) -> u64 {
        self.fragments
    }

    /// This half's cap on fragments: [`fragment_cap`] of the stream window currently granted.
    pub(super) fn fragment_cap(&self) -> u64 {
        fragment_cap(self.max_data.saturating_sub(self.read))
    }

    #[cfg(test)]
    /// Heap bytes this half holds for reassembly, as estimated from its own structures: the
    /// chunks' capacities plus a per-entry cost for the chunk map and the received set
    /// (B-tree entries with their share of node overhead and allocator rounding).
    pub(super) fn heap_estimate(&self) -> u64 {
        const CHUNK_ENTRY: u64 = 64;
        const RANGE_ENTRY: u64 = 48;
        let data: u64 = self.chunks.values().map(|c| c.heap() as u64).sum();
        data + self.chunks.len() as u64 * CHUNK_ENTRY + self.received.len() as u64 * RANGE_ENTRY
    }

    /// Bytes received and not yet read.
    pub(super) fn buffered(&self) -> u64 {
        self.buffered
    }

    /// Whether any data arrived.
    pub(super) fn has_data(&self) -> bool {
        self.highest > 0
    }

    /// The half is finished and the stream can go once the sending half is too. A stopped half
    /// waits for the final size so connection-level flow control stays exact.
    pub(super) fn is_done(&self) -> bool {
        self.state == RecvState::Closed && (self.stopped.is_none() || self.final_size.is_some())
    }

    /// Whether more stream credit can matter to the peer.
    pub(super) fn wants_credit(&self) -> bool {
        self.state == RecvState::Open && self.final_size.is_none()
    }

    /// Whether STOP_SENDING is still useful (the peer has not told us the final size yet).
    pub(super) fn wants_stop(&self) -> bool {
        self.stopped.is_some() && self.final_size.is_none()
    }

    /// The stop code, if stopped.
    pub(super) fn stop_code(&self) -> Option<u64> {
        self.stopped
    }

    /// Whether a read would return something other than `Blocked`.
    pub(super) fn is_readable(&self) -> bool {
        match self.state {
            RecvState::Reset { .. } => true,
            RecvState::Closed => false,
            RecvState::Open => {
                self.final_size == Some(self.read) || self.chunks.keys().next() == Some(&self.read)
            }
        }
    }

    /// Validates a STREAM frame against the final size and the stream credit. Returns by how
    /// much it raises the highest received offset (what connection credit must cover).
    pub(super) fn check_data(&self, offset: u64, len: u64, fin: bool) -> Result<u64, StreamsError> {
        let end = offset.checked_add(len).ok_or(StreamsError::FlowControl)?;
        if let Some(size) = self.final_size
            && (end > size || (fin && end != size))
        {
            return Err(StreamsError::FinalSize);
        }
        if fin && end < self.highest {
            return Err(StreamsError::FinalSize);
        }
        if end > self.max_data {
            return Err(StreamsError::FlowControl);
        }
        Ok(end.saturating_sub(self.highest))
    }

    /// Accepts a frame already validated by [`Recv::check_data`].
    pub(super) fn ingest(&mut self, offset: u64, frame: FrameData<'_>, fin: bool) -> Ingested {
        let end = offset + frame.data.len() as u64;
        self.highest = self.highest.max(end);
        if fin {
            self.final_size = Some(end);
        }
        if self.state != RecvState::Open {
            return Ingested {
                consumed: self.consume_all(),
                ..Ingested::default()
            };
        }
        let start = offset.max(self.read);
        let mut stored = 0;
        for gap in self.received.missing_in(start..end) {
            let from = (gap.start - offset) as usize;
            let to = (gap.end - offset) as usize;
            if let Some(piece) = frame.piece(from, to) {
                stored += piece.len() as u64;
                self.store(gap.start, piece);
            }
        }
        self.received.insert(start..end);
        self.buffered += stored;
        Ingested {
            stored,
            ..Ingested::default()
        }
    }

    /// Stores `piece` at `at`, a range not received before. A copied piece is merged into the
    /// copied chunk before and/or after it when they touch and the result stays within
    /// [`COALESCE_LIMIT`]; slices of datagrams stay as they are.
    /// Keeps the fragment count: a piece touching neither neighbour starts a run, one joining
    /// two runs ends one.
    fn store(&mut self, at: u64, piece: Chunk) {
        let end = at + piece.len() as u64;
        let before = self
            .chunks
            .range_mut(..at)
            .next_back()
            .filter(|(key, chunk)| **key + chunk.len() as u64 == at);
        let touches_before = before.is_some();
        let key = match (before, piece) {
            (Some((&key, Chunk::Owned(chunk))), Chunk::Owned(new))
                if chunk.len() + new.len() <= COALESCE_LIMIT =>
            {
                chunk.extend_from_slice(&new);
                key
            }
            (_, piece) => {
                self.chunks.insert(at, piece);
                at
            }
        };
        let touches_after = self.chunks.contains_key(&end);
        let mergeable = match (self.chunks.get(&key), self.chunks.get(&end)) {
            (Some(Chunk::Owned(a)), Some(Chunk::Owned(b))) => a.len() + b.len() <= COALESCE_LIMIT,
            _ => false,
        };
        if mergeable
            && let Some(Chunk::Owned(after)) = self.chunks.remove(&end)
            && let Some(Chunk::Owned(chunk)) = self.chunks.get_mut(&key)
        {
            chunk.extend_from_slice(&after);
        }
        match (touches_before, touches_after) {
            (false, false) => self.fragments += 1,
            (true, true) => self.fragments = self.fragments.saturating_sub(1),
            _ => {}
        }
    }

    /// Counts everything received as consumed (after a stop or reset). Returns the bytes newly
    /// consumed.
    fn consume_all(&mut self) -> u64 {
        let consumed = self.highest.saturating_sub(self.read);
        self.read = self.highest;
        consumed
    }

    /// Validates a RESET_STREAM. Returns by how much it raises the highest received offset.
    pub(super) fn check_reset(&self, final_size: u64) -> Result<u64, StreamsError> {
        if self.final_size.is_some_and(|size| size != final_size) || final_size < self.highest {
            return Err(StreamsError::FinalSize);
        }
        if final_size > self.max_data {
            return Err(StreamsError::FlowControl);
        }
        Ok(final_size - self.highest)
    }

    /// Accepts a RESET_STREAM already validated by [`Recv::check_reset`]. Returns whether the
    /// application must be told (the half was open).
    pub(super) fn on_reset(&mut self, code: u64, final_size: u64) -> (Ingested, bool) {
        self.highest = final_size;
        self.final_size = Some(final_size);
        let dropped = std::mem::take(&mut self.buffered);
        self.chunks = BTreeMap::new();
        self.fragments = 0;
        let consumed = self.consume_all();
        let tell = self.state == RecvState::Open;
        if tell {
            self.state = RecvState::Reset { code };
        }
        (
            Ingested {
                stored: 0,
                consumed,
                dropped,
            },
            tell,
        )
    }

    /// The application stops reading: unread data is dropped and counted as consumed. Returns
    /// what changed and whether a STOP_SENDING frame is useful.
    pub(super) fn stop(&mut self, code: u64) -> Result<(Ingested, bool), ReadError> {
        if self.state == RecvState::Closed {
            return Err(ReadError::ClosedStream);
        }
        let all_received = self
            .final_size
            .is_some_and(|size| self.received.missing_in(self.read..size).is_empty());
        self.stopped = Some(code);
        self.state = RecvState::Closed;
        let dropped = std::mem::take(&mut self.buffered);
        self.chunks = BTreeMap::new();
        self.fragments = 0;
        let consumed = self.consume_all();
        let send_stop = self.final_size.is_none() && !all_received;
        Ok((
            Ingested {
                stored: 0,
                consumed,
                dropped,
            },
            send_stop,
        ))
    }

    /// What a read finds before any data: `Err` for a reset or closed half, `Ok(true)` at the
    /// end of the stream (the half closes), `Ok(false)` when data may follow.
    fn read_prelude(&mut self) -> Result<bool, ReadError> {
        match self.state {
            RecvState::Closed => return Err(ReadError::ClosedStream),
            RecvState::Reset { code } => {
                self.state = RecvState::Closed;
                return Err(ReadError::Reset(code));
            }
            RecvState::Open => {}
        }
        self.notified = false;
        if self.final_size == Some(self.read) {
            self.state = RecvState::Closed;
            return Ok(true);
        }
        Ok(false)
    }

    /// Takes up to `max` bytes (`max` > 0) at the read offset, without copying, or `None` if
    /// nothing is there.
    fn take_front(&mut self, max: usize) -> Option<Bytes> {
        let mut entry = self.chunks.first_entry()?;
        if *entry.key() != self.read {
            return None;
        }
        let chunk = entry.get_mut();
        let out = if max >= chunk.len() {
            match entry.remove() {
                Chunk::Owned(b) => b.freeze(),
                Chunk::Shared { bytes, .. } => bytes,
            }
        } else {
            let front = chunk.split_front(max);
            let rest = entry.remove();
            self.chunks.insert(self.read + front.len() as u64, rest);
            front
        };
        self.read += out.len() as u64;
        self.buffered -= out.len() as u64;
        Some(out)
    }

    /// After taking `n` bytes: the run at the read offset ended if nothing follows directly.
    fn after_take(&mut self, n: usize) {
        if n > 0
            && self
                .chunks
                .first_key_value()
                .is_none_or(|(key, _)| *key != self.read)
        {
            self.fragments = self.fragments.saturating_sub(1);
        }
    }

    /// Reads contiguous data into `out`: `Ok(Some(n))`, `Ok(None)` at the end.
    pub(super) fn read(&mut self, out: &mut [u8]) -> Result<Option<usize>, ReadError> {
        if self.read_prelude()? {
            return Ok(None);
        }
        let mut n = 0;
        while n < out.len() {
            let Some(piece) = self.take_front(out.len() - n) else {
                break;
            };
            out[n..n + piece.len()].copy_from_slice(&piece);
            n += piece.len();
        }
        self.after_take(n);
        if n == 0 && !out.is_empty() {
            return Err(ReadError::Blocked);
        }
        if n == 0 && !self.is_readable() {
            return Err(ReadError::Blocked);
        }
        Ok(Some(n))
    }

    /// Reads the next contiguous piece of at most `max` bytes (`max` > 0) without copying:
    /// `Ok(Some(bytes))` with at least one byte, `Ok(None)` at the end. A piece is what arrived
    /// in one frame (or several small ones merged), so a reader gets about a packet at a time.
    pub(super) fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadError> {
        if self.read_prelude()? {
            return Ok(None);
        }
        let piece = self.take_front(max.max(1)).filter(|b| b.has_remaining());
        let n = piece.as_ref().map_or(0, Bytes::len);
        self.after_take(n);
        piece.map(Some).ok_or(ReadError::Blocked)
    }

    /// Computes new stream credit after reads or a window change: `read + window`, granted once
    /// it grows the limit by at least [`super::CREDIT_UPDATE_DIVISOR`]th of the window (see
    /// there why not later). When `generation` differs from the generation the credit was last
    /// computed for, the window changed: growth is granted at once. Returns true if `max_data`
    /// grew and MAX_STREAM_DATA should be sent.
    pub(super) fn grant(&mut self, window: u64, generation: u32) -> bool {
        if !self.wants_credit() {
            return false;
        }
        let force = self.window_gen != generation;
        self.window_gen = generation;
        let new = self.read.saturating_add(window).min(crate::varint::MAX);
        if new <= self.max_data {
            return false;
        }
        if force || new - self.max_data >= super::credit_step(window) {
            self.max_data = new;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copied(data: &[u8]) -> FrameData<'_> {
        FrameData {
            data,
            backing: None,
        }
    }

    fn read_all(r: &mut Recv) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        while let Ok(Some(n)) = r.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
            if r.final_size == Some(r.read) {
                break;
            }
        }
        out
    }

    #[test]
    fn reassembles_out_of_order_and_dedupes() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut r = Recv::new(1000);
        assert_eq!(r.check_data(50, 50, true), Ok(100));
        assert_eq!(r.ingest(50, copied(&data[50..]), true).stored, 50);
        assert!(!r.is_readable());
        // Overlapping retransmission: only the 20 new bytes are stored, no new credit used.
        assert_eq!(r.check_data(30, 40, false), Ok(0));
        assert_eq!(r.ingest(30, copied(&data[30..70]), false).stored, 20);
        assert_eq!(r.ingest(0, copied(&data[..30]), false).stored, 30);
        assert!(r.is_readable());
        assert_eq!(r.buffered(), 100);
        assert_eq!(read_all(&mut r), data);
        assert_eq!(r.read(&mut [0; 4]), Ok(None));
        assert_eq!(r.state, RecvState::Closed);
        assert_eq!(r.read(&mut [0; 4]), Err(ReadError::ClosedStream));
        assert!(r.is_done());
    }

    /// Feeds `frames` (offset, length) of a known pattern; returns the data the stream carries.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn small_adjacent_frames_are_coalesced_and_read_back_intact() {
        let data = pattern(10_000);
        let mut r = Recv::new(1 << 20);
        // In order but unread: 1-byte frames pile up in chunks, not one allocation each.
        for i in 0..5_000u64 {
            r.ingest(i, copied(&data[i as usize..i as usize + 1]), false);
        }
        assert_eq!(r.fragments(), 1);
        assert!(
            r.chunks.len() <= 5_000 / (COALESCE_LIMIT / 2) + 1,
            "{}",
            r.chunks.len()
        );
        // Backwards 1-byte frames after a gap also coalesce (merging with the chunk after).
        for i in (6_000..10_000u64).rev() {
            r.ingest(i, copied(&data[i as usize..i as usize + 1]), i == 9_999);
        }
        assert_eq!(r.fragments(), 2, "two runs with a gap between");
        assert!(
            r.chunks.len() <= 9_000 / (COALESCE_LIMIT / 2) + 2,
            "{}",
            r.chunks.len()
        );
        // Filling the gap joins the runs.
        r.ingest(5_000, copied(&data[5_000..6_000]), false);
        assert_eq!(r.fragments(), 1);
        assert_eq!(read_all(&mut r), data);
        assert_eq!(r.fragments(), 0);
    }

    #[test]
    fn fragments_count_gaps_and_drop_as_runs_are_read() {
        let mut r = Recv::new(1000);
        r.ingest(10, copied(&[1; 10]), false);
        r.ingest(30, copied(&[1; 10]), false);
        r.ingest(50, copied(&[1; 10]), false);
        assert_eq!(r.fragments(), 3);
        r.ingest(20, copied(&[1; 10]), false); // joins the first two runs
        assert_eq!(r.fragments(), 2);
        r.ingest(0, copied(&[1; 10]), false); // extends the first run at the read offset
        assert_eq!(r.fragments(), 2);
        let mut buf = [0u8; 15];
        assert_eq!(r.read(&mut buf), Ok(Some(15)));
        assert_eq!(r.fragments(), 2, "the first run is only partly read");
        let mut buf = [0u8; 100];
        assert_eq!(r.read(&mut buf), Ok(Some(25)));
        assert_eq!(r.fragments(), 1);
        r.on_reset(0, 60);
        assert_eq!(r.fragments(), 0);
    }

    /// Every other byte of the window in 1-byte frames: below the cap the structure holds a
    /// bounded multiple of the window; the cap is what stops the flood before that grows.
    #[test]
    fn scattered_one_byte_frames_stay_within_a_multiple_of_the_window() {
        let window = 256 * 1024;
        let mut r = Recv::new(window);
        let cap = r.fragment_cap();
        assert_eq!(cap, window / WINDOW_PER_FRAGMENT);
        let mut offset = 1;
        while r.fragments() <= cap {
            r.ingest(offset, copied(&[0xAA]), false);
            offset += 2;
        }
        // The caller refuses the frame that crossed the cap; what was held until then:
        let heap = r.heap_estimate();
        assert!(
            heap <= 4 * window,
            "{heap} bytes held for a {window}-byte window"
        );
    }

    /// A piece at least [`SLICE_MIN`] long and half its datagram shares the datagram's memory;
    /// a shorter one is copied, so that it does not keep the datagram alive.
    #[test]
    fn long_pieces_share_the_datagram_and_short_ones_are_copied() {
        let datagram = Bytes::from(pattern(1200));
        let inside = |b: &Bytes| {
            let (d, p) = (datagram.as_ptr() as usize, b.as_ptr() as usize);
            p >= d && p < d + datagram.len()
        };
        let mut r = Recv::new(1 << 20);
        let long = FrameData {
            data: &datagram[100..1100],
            backing: Some(&datagram),
        };
        r.ingest(0, long, false);
        let short = FrameData {
            data: &datagram[1100..1101],
            backing: Some(&datagram),
        };
        r.ingest(1000, short, false);
        // Half of it (600 of 1200) still shares; less than half (599) is copied.
        let half = FrameData {
            data: &datagram[..600],
            backing: Some(&datagram),
        };
        r.ingest(1001, half, false);
        let under = FrameData {
            data: &datagram[600..1199],
            backing: Some(&datagram),
        };
        r.ingest(1601, under, false);
        let chunks: Vec<Bytes> = std::iter::from_fn(|| r.read_chunk(1 << 20).ok().flatten())
            .take(10)
            .collect();
        let shape: Vec<(usize, bool)> = chunks.iter().map(|c| (c.len(), inside(c))).collect();
        assert_eq!(shape, [(1000, true), (1, false), (600, true), (599, false)]);
        assert_eq!(chunks[0], datagram.slice(100..1100));
        assert_eq!(r.buffered(), 0);
        assert_eq!(r.fragments(), 0);
        // A chunk read in parts keeps the offsets right.
        let mut r = Recv::new(1 << 20);
        r.ingest(0, long, false);
        assert_eq!(r.read_chunk(300), Ok(Some(datagram.slice(100..400))));
        assert_eq!(r.read_chunk(1 << 20), Ok(Some(datagram.slice(400..1100))));
        assert_eq!(r.read_chunk(1 << 20), Err(ReadError::Blocked));
    }

    #[test]
    fn final_size_rules() {
        let mut r = Recv::new(1000);
        r.ingest(0, copied(&[1; 10]), false);
        assert_eq!(r.check_data(0, 5, true), Err(StreamsError::FinalSize));
        r.ingest(0, copied(&[1; 20]), true);
        assert_eq!(r.check_data(20, 1, false), Err(StreamsError::FinalSize));
        assert_eq!(r.check_data(0, 10, true), Err(StreamsError::FinalSize));
        assert_eq!(r.check_data(0, 20, true), Ok(0));
        assert_eq!(r.check_reset(21), Err(StreamsError::FinalSize));
        assert_eq!(r.check_reset(20), Ok(0));
    }

    #[test]
    fn credit_is_enforced_and_regranted_every_eighth_of_the_window() {
        let mut r = Recv::new(100);
        assert_eq!(r.check_data(90, 11, false), Err(StreamsError::FlowControl));
        assert_eq!(r.check_reset(101), Err(StreamsError::FlowControl));
        r.ingest(0, copied(&[0; 100]), false);
        let mut buf = [0u8; 40];
        assert_eq!(r.read(&mut buf[..11]), Ok(Some(11)));
        assert!(
            !r.grant(100, 0),
            "the limit would grow by 11 of 100: no update yet"
        );
        assert_eq!(r.read(&mut buf[..1]), Ok(Some(1)));
        assert!(r.grant(100, 0), "12 of 100, an eighth: granted");
        assert_eq!(r.max_data, 112);
        assert!(!r.grant(100, 0));
        // A grown window (new generation) is granted at once.
        assert!(r.grant(500, 1));
        assert_eq!(r.max_data, 512);
        // A shrunk window grants nothing until reads catch up.
        assert!(!r.grant(10, 2));
    }

    #[test]
    fn reset_discards_unread_data_and_counts_it_consumed() {
        let mut r = Recv::new(1000);
        r.ingest(0, copied(&[1; 10]), false);
        r.ingest(20, copied(&[1; 10]), false);
        assert_eq!(r.check_reset(50), Ok(20));
        let (ing, tell) = r.on_reset(9, 50);
        assert!(tell);
        assert_eq!(
            ing,
            Ingested {
                stored: 0,
                consumed: 50,
                dropped: 20
            }
        );
        assert!(r.is_readable());
        assert_eq!(r.read(&mut [0; 4]), Err(ReadError::Reset(9)));
        assert!(r.is_done());
    }

    #[test]
    fn stop_waits_for_the_final_size() {
        let mut r = Recv::new(1000);
        r.ingest(0, copied(&[1; 10]), false);
        let (ing, send_stop) = r.stop(4).unwrap();
        assert!(send_stop);
        assert_eq!((ing.consumed, ing.dropped), (10, 10));
        assert!(!r.is_done());
        assert_eq!(r.read(&mut [0; 4]), Err(ReadError::ClosedStream));
        // Later data is counted consumed at once.
        assert_eq!(r.check_data(10, 5, false), Ok(5));
        assert_eq!(r.ingest(10, copied(&[1; 5]), false).consumed, 5);
        let (ing, tell) = r.on_reset(4, 30);
        assert!(!tell);
        assert_eq!(ing.consumed, 15);
        assert!(r.is_done());
        assert_eq!(r.stop(4), Err(ReadError::ClosedStream));
    }
}
