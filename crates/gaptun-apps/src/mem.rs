//! An in-memory tunnel: streams are `tokio::io::duplex` pipes served by [`serve_stream`].
//!
//! It stands in for the real encrypted transport in tests and demos, so the applications
//! (SOCKS5, forwards) and the server relay can be exercised end to end, with real sockets on
//! both ends, without the protocol core. The pipes have a bounded capacity, so back-pressure
//! behaves as it does over a real flow-controlled stream.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::DuplexStream;
use tracing::debug;

use crate::policy::TargetPolicy;
use crate::relay::{DialConfig, serve_stream};
use crate::tunnel::StreamOpener;

/// Default capacity of each in-memory stream (bytes buffered per direction).
pub const MEM_STREAM_BUFFER: usize = 64 * 1024;

/// A [`StreamOpener`] whose streams are served in-process by a server with `policy`.
#[derive(Debug, Clone)]
pub struct MemTunnel {
    server: Arc<MemServer>,
    buffer: usize,
}

#[derive(Debug)]
struct MemServer {
    policy: TargetPolicy,
    dial: DialConfig,
    opened: AtomicUsize,
}

impl MemTunnel {
    /// A tunnel whose server applies `policy` and `dial`.
    pub fn new(policy: TargetPolicy, dial: DialConfig) -> Self {
        let server = MemServer {
            policy,
            dial,
            opened: AtomicUsize::new(0),
        };
        Self {
            server: Arc::new(server),
            buffer: MEM_STREAM_BUFFER,
        }
    }

    /// Sets the capacity of each stream's pipe (at least 1 byte).
    pub fn with_buffer(mut self, bytes: usize) -> Self {
        self.buffer = bytes.max(1);
        self
    }

    /// How many streams have been opened so far.
    pub fn opened(&self) -> usize {
        self.server.opened.load(Ordering::Relaxed)
    }
}

impl StreamOpener for MemTunnel {
    type Stream = DuplexStream;

    fn open(&self) -> impl Future<Output = io::Result<DuplexStream>> + Send {
        let server = self.server.clone();
        let (client_end, server_end) = tokio::io::duplex(self.buffer);
        server.opened.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = serve_stream(server_end, &server.policy, &server.dial).await {
                debug!("in-memory tunnel stream ended: {e}");
            }
        });
        std::future::ready(Ok(client_end))
    }
}
