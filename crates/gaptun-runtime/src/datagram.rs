//! [`RtDatagrams`]: a connection's unreliable datagrams.

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::Poll;

use gaptun_proto::SendDatagramError;

use crate::error::RtError;
use crate::state::{ConnMeta, Shared, register};

/// Sends and receives one connection's unreliable datagrams.
///
/// Unlike [`crate::RtConnection`] it does not keep the connection open: a task that waits for
/// datagrams for as long as the connection lives can hold one without becoming the reason the
/// connection never closes. Once the connection has ended every call fails.
#[derive(Debug, Clone)]
pub struct RtDatagrams {
    shared: Arc<Shared>,
    meta: Arc<ConnMeta>,
}

impl RtDatagrams {
    pub(crate) fn new(shared: Arc<Shared>, meta: Arc<ConnMeta>) -> Self {
        Self { shared, meta }
    }

    /// A number that tells this connection apart from every other of its endpoint, for as
    /// long as a handle to it exists.
    pub fn connection_key(&self) -> u64 {
        self.meta.generation
    }

    /// Largest datagram [`RtDatagrams::send`] takes; `None` if the peer does not accept
    /// datagrams (an older peer: use a stream instead) or the connection is gone.
    pub fn max_size(&self) -> Option<usize> {
        let mut state = self.shared.lock();
        let (conn, _) = state.conn(&self.meta).ok()?;
        conn.max_datagram_size()
    }

    /// Queues an unreliable datagram. It never waits: when the path is slower than the
    /// application, the oldest queued datagrams are dropped instead (see
    /// `TransportConfig::datagram_buffer`), as UDP itself would. Errors: the connection is gone,
    /// the peer takes no datagrams (`Unsupported`) or not this large (`InvalidInput`).
    pub fn send(&self, data: Vec<u8>) -> io::Result<()> {
        {
            let mut state = self.shared.lock();
            let (conn, _) = state.conn(&self.meta)?;
            conn.send_datagram(data).map_err(|e| {
                let kind = match e {
                    SendDatagramError::NotConnected => io::ErrorKind::NotConnected,
                    SendDatagramError::Unsupported => io::ErrorKind::Unsupported,
                    SendDatagramError::TooLarge { .. } => io::ErrorKind::InvalidInput,
                };
                io::Error::new(kind, e)
            })?;
        }
        self.shared.kick();
        Ok(())
    }

    /// The next datagram the peer sent; an error once the connection has ended.
    pub async fn read(&self) -> Result<Vec<u8>, RtError> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            let (conn, cs) = match state.conn(&self.meta) {
                Ok(found) => found,
                Err(e) => return Poll::Ready(Err(e)),
            };
            match conn.recv_datagram() {
                Some(d) => Poll::Ready(Ok(d)),
                None => {
                    register(&mut cs.datagram_wakers, cx.waker());
                    Poll::Pending
                }
            }
        })
        .await
    }
}
