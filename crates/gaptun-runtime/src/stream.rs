//! [`RtStream`]: one bidirectional stream as a tokio `AsyncRead + AsyncWrite`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use gaptun_proto::{Connection, ReadError, StreamId, WriteError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connection::ConnRef;

/// Error code sent with RESET_STREAM / STOP_SENDING when a stream handle is dropped before its
/// end: the application abandoned it.
pub const ABANDONED: u64 = 0;

/// A bidirectional stream.
///
/// Reading returns 0 bytes at the end of the peer's data; `shutdown` sends our end (FIN).
/// Dropping the stream before `shutdown` resets our sending half, and dropping it before reading
/// to the end asks the peer to stop sending, so that neither side waits for data that will never
/// be consumed.
#[derive(Debug)]
pub struct RtStream {
    conn: Arc<ConnRef>,
    id: StreamId,
    /// We sent FIN (or the sending half is otherwise over): nothing to reset on drop.
    write_closed: bool,
    /// We read the end of the stream (or the receiving half is otherwise over).
    read_closed: bool,
}

impl RtStream {
    pub(crate) fn new(conn: Arc<ConnRef>, id: StreamId) -> Self {
        Self {
            conn,
            id,
            write_closed: false,
            read_closed: false,
        }
    }

    /// The stream's ID within its connection.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The unreliable datagrams of the connection this stream belongs to (a handle that does
    /// not keep the connection open).
    pub fn datagrams(&self) -> crate::RtDatagrams {
        crate::RtDatagrams::new(Arc::clone(&self.conn.shared), Arc::clone(&self.conn.meta))
    }

    /// Abandons the sending half at once: queued data is dropped, the peer sees a reset.
    pub fn reset(&mut self, error_code: u64) {
        self.write_closed = true;
        let shared = &self.conn.shared;
        if let Ok((conn, _)) = shared.lock().conn(&self.conn.meta) {
            let _ = conn.reset_stream(self.id, error_code);
        }
        shared.kick();
    }

    /// Asks the peer to stop sending; data still arriving is discarded.
    pub fn stop(&mut self, error_code: u64) {
        self.read_closed = true;
        let shared = &self.conn.shared;
        if let Ok((conn, _)) = shared.lock().conn(&self.conn.meta) {
            let _ = conn.stop_stream(self.id, error_code);
        }
        shared.kick();
    }
}

impl RtStream {
    /// Takes the stream's readable pieces, up to `max` bytes in all, without copying them:
    /// they are appended to `out` (a piece is what arrived in one STREAM frame, about a packet).
    /// `Ready(Ok(()))` with nothing appended means the end of the stream. Taking many pieces per
    /// call keeps the lock, the driver wake-up and the caller's write per batch, not per packet.
    pub fn poll_read_chunks(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut Vec<Bytes>,
    ) -> Poll<io::Result<()>> {
        if self.read_closed {
            return Poll::Ready(Ok(()));
        }
        let shared = &self.conn.shared;
        let mut taken = 0;
        let result = {
            let mut state = shared.lock();
            let (conn, cs) = state.conn(&self.conn.meta)?;
            loop {
                match conn.read_chunk(self.id, max.saturating_sub(taken).max(1)) {
                    Ok(Some(chunk)) => {
                        taken += chunk.len();
                        out.push(chunk);
                        if taken >= max {
                            break Ok(());
                        }
                    }
                    Ok(None) => {
                        // The end: reported now if nothing was taken, else by the next call.
                        self.read_closed = true;
                        break Ok(());
                    }
                    Err(ReadError::Blocked) if taken > 0 => break Ok(()),
                    Err(ReadError::Blocked) => {
                        cs.readers.insert(self.id, cx.waker().clone());
                        return Poll::Pending;
                    }
                    Err(e) => break Err(e),
                }
            }
        };
        // Reading frees receive window: the driver may have flow-control credit to send.
        shared.kick();
        match result {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => {
                // A reset or closed half is only found before any data (a reset drops what was
                // buffered), so nothing taken is lost with the error.
                self.read_closed = true;
                Poll::Ready(Err(read_error(e)))
            }
        }
    }

    /// Queues the front of `data` without copying it; returns how many bytes were taken (split
    /// off `data`), at least one unless `data` is empty. Pending while flow control blocks.
    pub fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.poll_write_with(cx, |conn, id| conn.write_chunk(id, data))
    }

    /// One write into the connection under its lock (`write` is the copying or the chunk
    /// form): registers the waker while flow control blocks, wakes the driver when something
    /// was queued, and marks the write side closed on an error.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut Connection, StreamId) -> Result<usize, WriteError>,
    ) -> Poll<io::Result<usize>> {
        let shared = &self.conn.shared;
        let result = {
            let mut state = shared.lock();
            let (conn, cs) = state.conn(&self.conn.meta)?;
            match write(conn, self.id) {
                Ok(0) | Err(WriteError::Blocked) => {
                    cs.writers.insert(self.id, cx.waker().clone());
                    return Poll::Pending;
                }
                other => other,
            }
        };
        match result {
            Ok(n) => {
                shared.kick();
                Poll::Ready(Ok(n))
            }
            Err(e) => {
                self.write_closed = true;
                Poll::Ready(Err(write_error(e)))
            }
        }
    }
}

fn read_error(e: ReadError) -> io::Error {
    match e {
        ReadError::Reset(code) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("stream reset by peer (code {code})"),
        ),
        ReadError::ClosedStream => {
            io::Error::new(io::ErrorKind::NotConnected, "stream closed for reading")
        }
        ReadError::Blocked => io::Error::new(io::ErrorKind::WouldBlock, "stream has no data"),
    }
}

fn write_error(e: WriteError) -> io::Error {
    match e {
        WriteError::Stopped(code) => io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("peer stopped the stream (code {code})"),
        ),
        WriteError::ClosedStream => {
            io::Error::new(io::ErrorKind::BrokenPipe, "stream closed for writing")
        }
        WriteError::Blocked => io::Error::new(io::ErrorKind::WouldBlock, "stream is blocked"),
    }
}

impl AsyncRead for RtStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read_closed || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let this = &mut *self;
        let shared = &this.conn.shared;
        let result = {
            let mut state = shared.lock();
            let (conn, cs) = state.conn(&this.conn.meta)?;
            let result = conn.read(this.id, buf.initialize_unfilled());
            if result == Err(ReadError::Blocked) {
                cs.readers.insert(this.id, cx.waker().clone());
                return Poll::Pending;
            }
            result
        };
        // Reading frees receive window: the driver may have flow-control credit to send.
        shared.kick();
        match result {
            Ok(Some(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Ok(None) => {
                this.read_closed = true;
                Poll::Ready(Ok(()))
            }
            Err(e) => {
                this.read_closed = true;
                Poll::Ready(Err(read_error(e)))
            }
        }
    }
}

impl AsyncWrite for RtStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.poll_write_with(cx, |conn, id| conn.write(id, data))
    }

    /// Data is handed to the transport as soon as it is written; there is nothing to flush.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends FIN after the data written so far.
    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_closed {
            return Poll::Ready(Ok(()));
        }
        let this = &mut *self;
        let shared = &this.conn.shared;
        let result = {
            let mut state = shared.lock();
            let (conn, _) = state.conn(&this.conn.meta)?;
            conn.finish(this.id)
        };
        this.write_closed = true;
        shared.kick();
        match result {
            // Already finished or cleaned up: shutting down twice is not an error.
            Ok(()) | Err(WriteError::ClosedStream) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(write_error(e))),
        }
    }
}

impl Drop for RtStream {
    fn drop(&mut self) {
        let shared = &self.conn.shared;
        {
            let mut state = shared.lock();
            let Ok((conn, cs)) = state.conn(&self.conn.meta) else {
                return;
            };
            cs.readers.remove(&self.id);
            cs.writers.remove(&self.id);
            if !self.write_closed {
                let _ = conn.reset_stream(self.id, ABANDONED);
            }
            if !self.read_closed {
                let _ = conn.stop_stream(self.id, ABANDONED);
            }
        }
        shared.kick();
    }
}
