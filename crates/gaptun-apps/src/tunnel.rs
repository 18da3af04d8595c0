//! The seam between the applications and the transport.
//!
//! The applications only need "give me a new reliable byte stream to the server" on the client
//! and "here is a stream the client opened" on the server. Keeping that behind a trait means
//! this crate does not depend on the protocol core or its tokio driver, and every application
//! can be tested end to end over an in-memory tunnel ([`crate::mem::MemTunnel`]).
//!
//! Stream semantics the applications rely on:
//! - bytes arrive in order, reliably, with back-pressure (a write waits while the peer is not
//!   reading);
//! - `shutdown()` sends FIN, i.e. closes our sending half only; the peer then reads EOF, and
//!   can keep sending until it shuts down its own half;
//! - dropping a stream before `shutdown()` resets it: the peer's reads fail (an error, not
//!   EOF). The relays rely on this to pass a cut transfer on as a cut one: they drop the stream
//!   unfinished on any error, and treat any read error from a stream as the far side's reset
//!   (the local TCP connection is then reset too, see [`crate::pump::relay_tcp`]);
//! - a stream whose connection is lost reports an error on read, never EOF.

use std::future::Future;
use std::io;

use crate::pump::ChunkStream;

/// Opens new streams to the tunnel server (the client side of the tunnel).
pub trait StreamOpener: Clone + Send + Sync + 'static {
    /// A bidirectional tunnel stream.
    type Stream: ChunkStream + Send + 'static;

    /// Opens a new stream; the server will receive it and run
    /// [`crate::relay::serve_stream`] on it.
    fn open(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// The datagram flows of the connection `stream` was opened on, if UDP relays on it can
    /// use them ([`crate::flow`]). The default: none, UDP rides on its stream.
    fn flows(&self, _stream: &Self::Stream) -> Option<crate::flow::FlowMux> {
        None
    }
}

/// Accepts the streams the other side of one tunnel connection opens.
///
/// Only the expose client needs it: there the server opens a stream per visitor
/// ([`crate::expose`]). It works per connection, because registrations are per connection.
pub trait StreamAcceptor: Send + Sync + 'static {
    /// A bidirectional tunnel stream.
    type Accepted: ChunkStream + Send + 'static;

    /// The next stream the peer opened; `None` once the connection has ended.
    fn accept(&self) -> impl Future<Output = Option<Self::Accepted>> + Send;
}
