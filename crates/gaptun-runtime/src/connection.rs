//! [`RtConnection`]: an established connection, opening and accepting streams.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use gaptun_proto::connection::PathInfo;
use gaptun_proto::{ConnectionError, ConnectionStats, PathAddr};

use crate::datagram::RtDatagrams;
use crate::endpoint::{EndpointRef, RtEndpoint};
use crate::error::RtError;
use crate::state::{ConnMeta, Shared, register, wake_all};
use crate::stream::RtStream;

/// A connection to a peer. Cheap to clone; the connection is closed when the last clone and
/// the last of its streams are dropped, or by [`RtConnection::close`].
#[derive(Debug, Clone)]
pub struct RtConnection {
    inner: Arc<ConnRef>,
}

/// Shared by every clone of a connection handle and by its streams; its drop closes the
/// connection.
#[derive(Debug)]
pub(crate) struct ConnRef {
    /// Keeps the endpoint open while the connection is used.
    pub(crate) endpoint: Arc<EndpointRef>,
    /// The shard that owns the connection (the endpoint's only one unless sharded).
    pub(crate) shared: Arc<Shared>,
    pub(crate) meta: Arc<ConnMeta>,
}

impl Drop for ConnRef {
    fn drop(&mut self) {
        close(&self.shared, &self.meta, 0, b"");
    }
}

impl RtConnection {
    pub(crate) fn new(
        endpoint: Arc<EndpointRef>,
        shared: Arc<Shared>,
        meta: Arc<ConnMeta>,
    ) -> Self {
        Self {
            inner: Arc::new(ConnRef {
                endpoint,
                shared,
                meta,
            }),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub(crate) fn meta(&self) -> &ConnMeta {
        &self.inner.meta
    }

    /// The endpoint this connection belongs to.
    pub fn endpoint(&self) -> RtEndpoint {
        RtEndpoint::from_ref(Arc::clone(&self.inner.endpoint))
    }

    /// The peer's address when the connection was made.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.meta.remote
    }

    /// Client: spreads packets over `paths` from now on (see
    /// [`gaptun_proto::Connection::set_paths`]); moving to a new carrier or server port this way
    /// is a migration, validated by the server, with no new handshake. Fails if the connection
    /// has ended.
    pub fn set_paths(&self, paths: &[PathAddr]) -> Result<(), RtError> {
        {
            let mut state = self.shared().lock();
            let (conn, _) = state.conn(self.meta())?;
            conn.set_paths(paths);
        }
        self.shared().kick();
        Ok(())
    }

    /// Client: the carrier preference after the carriers were renumbered (a port hop gives
    /// the UDP carrier a new number); see [`RtEndpoint::connect_preferring`]. The active
    /// carrier's place in the list is kept.
    ///
    /// [`RtEndpoint::connect_preferring`]: crate::RtEndpoint::connect_preferring
    pub fn set_carrier_preference(&self, order: &[gaptun_proto::CarrierId]) -> Result<(), RtError> {
        {
            let mut state = self.shared().lock();
            let (conn, _) = state.conn(self.meta())?;
            conn.set_carrier_preference(Instant::now(), order);
        }
        self.shared().kick();
        Ok(())
    }

    /// Client: the carriers the server offers (learned in the handshake); `None` before it
    /// completed, once the connection has ended, and from a server that offers none.
    pub fn carrier_offer(&self) -> Option<gaptun_proto::handshake::CarrierOffer> {
        let mut state = self.shared().lock();
        state
            .conn(self.meta())
            .ok()
            .and_then(|(conn, _)| conn.peer_carrier_offer())
    }

    /// The connection's paths and their health (empty once it has ended).
    pub fn paths(&self) -> Vec<PathInfo> {
        let mut state = self.shared().lock();
        state
            .conn(self.meta())
            .map(|(conn, _)| conn.paths())
            .unwrap_or_default()
    }

    /// Opens a stream, waiting while the peer's stream limit is reached (or the handshake is
    /// still running).
    pub async fn open_stream(&self) -> io::Result<RtStream> {
        let id = poll_fn(|cx| {
            let mut state = self.shared().lock();
            let (conn, cs) = state.conn(self.meta())?;
            match conn.open_stream() {
                Some(id) => Poll::Ready(Ok::<_, RtError>(id)),
                None => {
                    register(&mut cs.open_wakers, cx.waker());
                    Poll::Pending
                }
            }
        })
        .await?;
        self.shared().kick();
        Ok(RtStream::new(Arc::clone(&self.inner), id))
    }

    /// The next stream the peer opened; `None` once the connection has ended.
    pub async fn accept_stream(&self) -> Option<RtStream> {
        let id = poll_fn(|cx| {
            let mut state = self.shared().lock();
            let Ok((conn, cs)) = state.conn(self.meta()) else {
                return Poll::Ready(None);
            };
            match conn.accept_stream() {
                Some(id) => Poll::Ready(Some(id)),
                None => {
                    register(&mut cs.accept_wakers, cx.waker());
                    Poll::Pending
                }
            }
        })
        .await?;
        Some(RtStream::new(Arc::clone(&self.inner), id))
    }

    /// This connection's unreliable datagrams, as a handle that does not keep the connection
    /// open (see [`RtDatagrams`]).
    pub fn datagrams(&self) -> RtDatagrams {
        RtDatagrams::new(Arc::clone(&self.inner.shared), Arc::clone(&self.inner.meta))
    }

    /// Largest datagram [`RtConnection::send_datagram`] takes; `None` if the peer does not
    /// accept datagrams (an older peer: use a stream instead) or the connection is gone.
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.datagrams().max_size()
    }

    /// Queues an unreliable datagram; see [`RtDatagrams::send`].
    pub fn send_datagram(&self, data: Vec<u8>) -> io::Result<()> {
        self.datagrams().send(data)
    }

    /// The next datagram the peer sent; an error once the connection has ended.
    pub async fn read_datagram(&self) -> Result<Vec<u8>, RtError> {
        self.datagrams().read().await
    }

    /// Resolves when the connection ends, with the reason.
    pub async fn closed(&self) -> RtError {
        poll_fn(|cx| {
            let mut state = self.shared().lock();
            match state.conn(self.meta()) {
                Err(e) => Poll::Ready(e),
                Ok((_, cs)) => {
                    register(&mut cs.state_wakers, cx.waker());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<RtError> {
        if let Some(e) = self.meta().lost.get() {
            return Some(e.clone());
        }
        self.shared().lock().conn(self.meta()).err()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.close_reason().is_some()
    }

    /// Which of the endpoint's keys the connection uses (see `Connection::key_index`); `None`
    /// once the connection is gone. A server tells its clients' owners apart by it.
    pub fn key_index(&self) -> Option<usize> {
        let mut state = self.shared().lock();
        state
            .conn(self.meta())
            .ok()
            .map(|(conn, _)| conn.key_index())
    }

    /// Whether `other` is a handle to the same connection as `self`.
    pub fn same_connection(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner.meta, &other.inner.meta)
    }

    /// Counters and estimates; `None` once the connection is gone.
    pub fn stats(&self) -> Option<ConnectionStats> {
        let mut state = self.shared().lock();
        state.conn(self.meta()).ok().map(|(conn, _)| conn.stats())
    }

    /// Changes this connection's receive window.
    pub fn set_receive_window(&self, bytes: u64) {
        if let Ok((conn, _)) = self.shared().lock().conn(self.meta()) {
            conn.set_receive_window(bytes);
        }
        self.shared().kick();
    }

    /// Closes the connection: the peer gets `code` and `reason`; every stream fails.
    pub fn close(&self, code: u64, reason: &[u8]) {
        close(self.shared(), self.meta(), code, reason);
    }
}

/// Closes the connection behind `meta` unless it already ended.
fn close(shared: &Shared, meta: &ConnMeta, code: u64, reason: &[u8]) {
    let mut wakers = Vec::new();
    {
        let mut state = shared.lock();
        let Ok((conn, _)) = state.conn(meta) else {
            return;
        };
        conn.close(Instant::now(), code, reason);
        state.forget(
            meta.handle,
            RtError::Connection(ConnectionError::LocallyClosed),
            &mut wakers,
        );
    }
    wake_all(wakers);
    shared.kick();
}
