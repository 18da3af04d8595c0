//! Expose: publish services behind NAT on the server's ports (a reverse proxy, like frp,
//! rathole or QTRP, over gaptun's multiplexed connection).
//!
//! - The client registers its exposes on a control stream it opens (tunnel request command
//!   `0x10`, [`wire`]); the server answers each with "ok" or a refusal naming the port.
//! - The server ([`server::ExposeServer`]) listens on each granted port, on
//!   `ExposeServerConfig::bind`. For each TCP visitor, and each UDP visitor address, it opens a
//!   stream to the client whose header names the port and the visitor, followed at once by the
//!   visitor's first bytes: no round trip before the client dials.
//! - The client ([`client::ExposeClient`]) dials the LOCAL of the expose the stream names, and
//!   only that: a stream naming a port it did not register is reset. It can send a PROXY
//!   protocol header to LOCAL first, so the service sees the visitor's address.
//!
//! Ownership: a port belongs to one owner (the server's name for the client's key). A client
//! registering with the same owner takes the port over (a restarted client gets its port back
//! at once, while the server still holds its dead predecessor's connection); another owner is
//! refused. A registration lives as long as its control stream: when the client closes it or
//! its connection ends, the ports are released, and a port nobody holds has no listener, so a
//! visitor gets "connection refused" instead of a hang.
//!
//! Registrations are per connection: a client with several connections registers on each, and
//! the server spreads visitors over them. After a reconnect the client registers again on the
//! new connection ([`client::ExposeClient::run`]).

pub mod client;
mod datagram;
mod proxy_header;
pub mod server;
pub mod spec;
mod stats;
pub mod wire;

pub use client::{ExposeClient, ExposeClientConfig, ExposeError, Refusal, Registration};
pub use server::{ExposePeer, ExposeServer, ExposeServerConfig};
pub use spec::{ExposeKind, ExposeSpec, PortRange, PortSet, ProxyVersion, SpecError};
pub use stats::ExposeSnapshot;
pub use wire::Status;
