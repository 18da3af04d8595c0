//! `gaptun-runtime`: runs gaptun's sans-IO transport on tokio and real UDP sockets.
//!
//! The model is quinn's: one driver task per endpoint owns the UDP socket and the protocol
//! core's timers; the core itself sits behind a mutex shared with the application-side handles
//! ([`RtConnection`], [`RtStream`]). A handle operation locks, calls the core, registers its waker
//! if it has to wait, and kicks the driver so that whatever the operation produced gets sent.
//! The driver turns core events back into wake-ups.
//!
//! - [`RtEndpoint`]: a socket with its connections (client, server, or both);
//! - [`RtConnection`]: open and accept streams, stats, close;
//! - [`RtStream`]: a stream as tokio `AsyncRead + AsyncWrite`;
//! - [`ClientPool`]: N connections to one server, reconnecting with backoff;
//! - [`lossy_relay`]: a loopback relay with loss and delay, for demos and tests.

pub mod carrier;
mod chunk;
mod connection;
mod datagram;
mod driver;
mod endpoint;
mod error;
mod figures;
mod group;
pub mod lossy_relay;
mod pool;
pub mod ports;
mod replay_state;
mod state;
mod stream;

pub use carrier::{Carrier, CarrierTransmit, RecvMeta, UdpCarrier};
pub use chunk::ChunkStream;
pub use connection::RtConnection;
pub use datagram::RtDatagrams;
pub use endpoint::{
    ConnectionInfo, ConnectionList, EndpointSnapshot, PathState, RtEndpoint, ShardFigures,
};
pub use error::{ConnectError, RtError};
pub use pool::{Backoff, ClientPool, LateCarrier, PoolConfig};
pub use ports::{ListenRange, PortRangeError, ServerTarget};
pub use state::SNAPSHOT_INTERVAL;
pub use stream::{ABANDONED, RtStream};

/// The protocol core, re-exported so users need only this crate for configuration types.
pub use gaptun_proto as proto;
