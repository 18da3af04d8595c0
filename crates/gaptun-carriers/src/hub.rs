//! What the TLS and QUIC carriers share: peers ("sessions") behind connections, a queue of
//! outgoing datagrams per session that the session's connections take from, and one queue of
//! received datagrams that the runtime's driver polls.
//!
//! A session appears to the gaptun core as one peer address however many connections carry it
//! (several TCP connections of one client are one session): its first connection's address.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use gaptun_runtime::{CarrierTransmit, RecvMeta};
use tokio::sync::{Notify, mpsc};

use crate::auth::SessionId;

/// Datagrams one transmit may hold: more than any driver batches (it stays under 64 KiB).
pub(crate) const MAX_SEGMENTS: usize = 64;

/// Most bytes of datagrams a connection hands over as one batch: one channel message and one
/// wake-up of the driver for many datagrams, while the channel stays bounded in bytes (TCP
/// then holds back the sender rather than this queue growing).
pub(crate) const MAX_INBOUND_BATCH: usize = 16 * 1024;

/// Datagrams one connection received, for the driver.
pub(crate) type Inbound = (SocketAddr, VecDeque<Bytes>);

/// Locks, carrying on after a panic elsewhere (the data are plain queues, valid either way).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Outgoing datagrams of one session, taken by whichever of its connections is free first (so a
/// TCP connection stalled on a loss takes no more while the others go on).
///
/// The datagrams are kept framed (a 2-byte big-endian length, then the datagram) in one
/// buffer: a transmit is copied once, into it, and a connection takes a run of whole frames as
/// one `Bytes` that TLS writes as it is and QUIC slices into datagrams, with no allocation per
/// datagram.
#[derive(Debug)]
pub(crate) struct OutQueue {
    inner: Mutex<OutInner>,
    /// Wakes a connection's writer when datagrams arrive or the queue closes.
    notify: Notify,
    /// Bytes queued before senders are told to wait.
    limit: usize,
}

#[derive(Debug, Default)]
struct OutInner {
    /// Frames, back to back.
    data: BytesMut,
    /// Each queued frame's length with its 2-byte header, oldest first.
    frames: VecDeque<usize>,
    closed: bool,
    /// The driver waiting for room.
    room: Option<Waker>,
}

/// Why a datagram was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    Full,
    Closed,
}

/// Length of a frame's header.
const FRAME_HEADER: usize = 2;

/// The datagrams of a run of frames taken from an [`OutQueue`], as slices of it.
pub(crate) fn frames(batch: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = batch.get(at..at + FRAME_HEADER)?;
        let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
        let start = at + FRAME_HEADER;
        let end = (start + len).min(batch.len());
        at = end;
        Some(batch.slice(start..end))
    })
}

impl OutQueue {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            inner: Mutex::new(OutInner::default()),
            notify: Notify::new(),
            limit,
        }
    }

    /// Queues the datagrams of one transmit, all or none: all while the queue holds less than
    /// its limit (so it may go over by one transmit), none when it is full. All or none, so
    /// that a transmit refused and tried again is not partly sent twice; and "below the
    /// limit" is exactly what [`poll_room`](Self::poll_room) waits for, so a waiting sender
    /// that is woken always gets in (a test of the transmit's own size could refuse it again
    /// and again while the queue sat just under the limit). A datagram longer than a frame
    /// can say (64 KiB) is left out: no carrier could take it.
    pub(crate) fn push_all<'a>(
        &self,
        datagrams: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), PushError> {
        let mut q = lock(&self.inner);
        if q.closed {
            return Err(PushError::Closed);
        }
        if q.data.len() >= self.limit {
            return Err(PushError::Full);
        }
        for datagram in datagrams {
            let Ok(len) = u16::try_from(datagram.len()) else {
                continue;
            };
            q.data.extend_from_slice(&len.to_be_bytes());
            q.data.extend_from_slice(datagram);
            q.frames.push_back(FRAME_HEADER + datagram.len());
        }
        drop(q);
        self.notify.notify_one();
        Ok(())
    }

    /// [`push_all`](Self::push_all) of one datagram.
    #[cfg(test)]
    pub(crate) fn push(&self, datagram: &[u8]) -> Result<(), PushError> {
        self.push_all(std::iter::once(datagram))
    }

    /// Ready when a transmit may be queued (or the queue is closed: the send then fails at
    /// once).
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut q = lock(&self.inner);
        if q.closed || q.data.len() < self.limit {
            return Poll::Ready(());
        }
        q.room = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Waits for datagrams and takes whole frames of up to `max_bytes` (at least one; read
    /// them with [`frames`]); `None` once the queue is closed.
    pub(crate) async fn pop_batch(&self, max_bytes: usize) -> Option<Bytes> {
        loop {
            {
                let mut q = lock(&self.inner);
                if let Some(first) = q.frames.pop_front() {
                    let mut taken = first;
                    while let Some(&next) = q.frames.front() {
                        if taken + next > max_bytes {
                            break;
                        }
                        taken += next;
                        q.frames.pop_front();
                    }
                    let batch = q.data.split_to(taken).freeze();
                    let room = q.room.take();
                    let more = !q.frames.is_empty();
                    drop(q);
                    if let Some(w) = room {
                        w.wake();
                    }
                    if more {
                        // Another writer of this session may take the rest.
                        self.notify.notify_one();
                    }
                    return Some(batch);
                }
                if q.closed {
                    drop(q);
                    // Pass the news on to the session's other writers.
                    self.notify.notify_one();
                    return None;
                }
            }
            self.notify.notified().await;
        }
    }

    pub(crate) fn close(&self) {
        let mut q = lock(&self.inner);
        q.closed = true;
        q.frames.clear();
        q.data = BytesMut::new();
        let room = q.room.take();
        drop(q);
        if let Some(w) = room {
            w.wake();
        }
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

#[derive(Debug)]
struct Session {
    addr: SocketAddr,
    queue: Arc<OutQueue>,
    connections: usize,
}

#[derive(Debug, Default)]
struct Sessions {
    by_id: HashMap<SessionId, Session>,
    by_addr: HashMap<SocketAddr, SessionId>,
}

/// The state a carrier's driver-facing side and its connection tasks share.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) kind: &'static str,
    pub(crate) local: SocketAddr,
    inbound_tx: mpsc::Sender<Inbound>,
    /// The receiving end, with what is left of the batch being read.
    inbound_rx: Mutex<(mpsc::Receiver<Inbound>, Option<Inbound>)>,
    sessions: Mutex<Sessions>,
    /// The queue a refused send was for: what [`poll_writable`](Self::poll_writable) waits on.
    blocked: Mutex<Option<Arc<OutQueue>>>,
    queue_limit: usize,
    /// A client's session stays when its last connection drops (a new one is being made); a
    /// server's goes with its last connection.
    keep_sessions: bool,
}

/// A connection's handle on its session: detaches when dropped.
#[derive(Debug)]
pub(crate) struct Attached {
    hub: Arc<Hub>,
    id: SessionId,
    /// The peer address the core sees for this session.
    pub(crate) addr: SocketAddr,
    pub(crate) queue: Arc<OutQueue>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.hub.detach(&self.id);
    }
}

impl Hub {
    /// A hub whose sessions queue up to `queue_limit` outgoing bytes each, and whose
    /// connections hand the driver up to `inbound_batches` received batches (all sessions
    /// together) before they wait.
    pub(crate) fn new(
        kind: &'static str,
        local: SocketAddr,
        queue_limit: usize,
        inbound_batches: usize,
        keep_sessions: bool,
    ) -> Arc<Self> {
        let (inbound_tx, inbound_rx) = mpsc::channel(inbound_batches.max(1));
        Arc::new(Self {
            kind,
            local,
            inbound_tx,
            inbound_rx: Mutex::new((inbound_rx, None)),
            sessions: Mutex::new(Sessions::default()),
            blocked: Mutex::new(None),
            queue_limit,
            keep_sessions,
        })
    }

    /// Joins a connection from `peer` to session `id` (made if new, addressed as `peer`).
    pub(crate) fn attach(self: &Arc<Self>, id: SessionId, peer: SocketAddr) -> Attached {
        let mut s = lock(&self.sessions);
        let session = s.by_id.entry(id).or_insert_with(|| Session {
            addr: peer,
            queue: Arc::new(OutQueue::new(self.queue_limit)),
            connections: 0,
        });
        session.connections += 1;
        let addr = session.addr;
        let queue = Arc::clone(&session.queue);
        s.by_addr.insert(addr, id);
        Attached {
            hub: Arc::clone(self),
            id,
            addr,
            queue,
        }
    }

    fn detach(&self, id: &SessionId) {
        let mut s = lock(&self.sessions);
        let Some(session) = s.by_id.get_mut(id) else {
            return;
        };
        session.connections = session.connections.saturating_sub(1);
        if session.connections == 0 && !self.keep_sessions {
            let addr = session.addr;
            let queue = Arc::clone(&session.queue);
            s.by_id.remove(id);
            s.by_addr.remove(&addr);
            drop(s);
            queue.close();
        }
    }

    /// Hands received datagrams to the driver, waiting while it is behind (which, on TCP,
    /// slows the sender down instead of dropping).
    pub(crate) async fn deliver(&self, from: SocketAddr, datagrams: VecDeque<Bytes>) -> bool {
        self.inbound_tx.send((from, datagrams)).await.is_ok()
    }

    /// Sessions alive now.
    pub(crate) fn session_count(&self) -> usize {
        lock(&self.sessions).by_id.len()
    }

    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut guard = lock(&self.inbound_rx);
        let (rx, current) = &mut *guard;
        let n = bufs.len().min(meta.len());
        let mut filled = 0;
        while filled < n {
            let (addr, batch) = match current {
                Some((addr, batch)) if !batch.is_empty() => (*addr, batch),
                _ => {
                    let next = if filled == 0 {
                        match rx.poll_recv(cx) {
                            Poll::Ready(Some(b)) => b,
                            Poll::Ready(None) => {
                                return Poll::Ready(Err(io::Error::new(
                                    io::ErrorKind::BrokenPipe,
                                    "carrier closed",
                                )));
                            }
                            Poll::Pending => return Poll::Pending,
                        }
                    } else {
                        match rx.try_recv() {
                            Ok(b) => b,
                            Err(_) => break,
                        }
                    };
                    *current = Some(next);
                    continue;
                }
            };
            let Some(datagram) = batch.pop_front() else {
                continue;
            };
            let buf = &mut bufs[filled];
            let len = datagram.len().min(buf.len());
            buf[..len].copy_from_slice(&datagram[..len]);
            meta[filled] = RecvMeta {
                addr,
                len,
                stride: len,
            };
            filled += 1;
        }
        Poll::Ready(Ok(filled))
    }

    pub(crate) fn try_send(&self, transmit: &CarrierTransmit<'_>) -> io::Result<()> {
        let queue = {
            let s = lock(&self.sessions);
            let session = s
                .by_addr
                .get(&transmit.destination)
                .and_then(|id| s.by_id.get(id));
            if session.is_some_and(|s| s.connections == 0) {
                // A client between connections: the datagram is lost, as on UDP (the core
                // resends it), instead of holding the driver until a connection is back.
                return Ok(());
            }
            session.map(|session| Arc::clone(&session.queue))
        };
        let Some(queue) = queue else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("no {} connection to {}", self.kind, transmit.destination),
            ));
        };
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        match queue.push_all(transmit.contents.chunks(size)) {
            Ok(()) => Ok(()),
            Err(PushError::Full) => {
                *lock(&self.blocked) = Some(queue);
                Err(io::ErrorKind::WouldBlock.into())
            }
            Err(PushError::Closed) => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "{} connection to {} closed",
                    self.kind, transmit.destination
                ),
            )),
        }
    }

    pub(crate) fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let blocked = lock(&self.blocked).clone();
        match blocked {
            None => Poll::Ready(Ok(())),
            Some(queue) => match queue.poll_room(cx) {
                Poll::Ready(()) => {
                    *lock(&self.blocked) = None;
                    Poll::Ready(Ok(()))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_refuses_past_its_limit_and_batches() {
        let q = OutQueue::new(100);
        assert_eq!(q.push(&[1; 60]), Ok(()));
        // Below the limit a whole transmit goes in, even past the limit.
        assert_eq!(q.push(&[2; 30]), Ok(()));
        assert_eq!(q.push(&[5; 30]), Ok(()));
        assert_eq!(q.push(&[3; 30]), Err(PushError::Full));
        // Framed, 62 + 32 + 32 bytes: the first alone is all that fits in 70.
        let batch = q.pop_batch(70).await.expect("open");
        assert_eq!(frames(&batch).collect::<Vec<_>>(), vec![vec![1u8; 60]]);
        let batch = q.pop_batch(70).await.expect("open");
        assert_eq!(&batch[..3], &[0, 30, 2], "length header, then the datagram");
        assert_eq!(
            frames(&batch).collect::<Vec<_>>(),
            vec![vec![2u8; 30], vec![5u8; 30]]
        );
        q.close();
        assert_eq!(q.pop_batch(70).await, None);
        assert_eq!(q.push(&[4; 1]), Err(PushError::Closed));
    }

    #[test]
    fn sessions_group_connections_and_go_with_the_last() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _g = rt.enter();
        let hub = Hub::new(
            "tls",
            "127.0.0.1:443".parse().expect("addr"),
            1000,
            4,
            false,
        );
        let a: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:5001".parse().expect("addr");
        let first = hub.attach([1; 16], a);
        let second = hub.attach([1; 16], b);
        assert_eq!(second.addr, a, "one peer address per session");
        assert_eq!(hub.session_count(), 1);
        let t = CarrierTransmit {
            destination: a,
            contents: &[9; 10],
            segment_size: None,
        };
        hub.try_send(&t).expect("queued");
        drop(first);
        assert_eq!(hub.session_count(), 1);
        drop(second);
        assert_eq!(hub.session_count(), 0);
        let err = hub.try_send(&t).expect_err("session gone");
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
    }

    #[test]
    fn a_client_between_connections_drops_instead_of_blocking() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _g = rt.enter();
        let server: SocketAddr = "127.0.0.1:443".parse().expect("addr");
        let hub = Hub::new("tls", "127.0.0.1:5000".parse().expect("addr"), 100, 4, true);
        let attached = hub.attach([2; 16], server);
        let queue = Arc::clone(&attached.queue);
        drop(attached);
        let t = CarrierTransmit {
            destination: server,
            contents: &[1; 80],
            segment_size: None,
        };
        for _ in 0..5 {
            hub.try_send(&t).expect("dropped, not refused");
        }
        assert_eq!(queue.push(&[0; 1]), Ok(()), "nothing was queued meanwhile");
        let _again = hub.attach([2; 16], server);
        hub.try_send(&t).expect("queued");
        hub.try_send(&t)
            .expect("queued: the queue was below its limit");
        let err = hub.try_send(&t).expect_err("full");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
