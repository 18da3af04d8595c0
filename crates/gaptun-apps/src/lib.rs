//! gaptun's applications: what runs on top of the tunnel's streams.
//!
//! Client side (`gaptun client`):
//! - [`socks5`]: a SOCKS5 server (RFC 1928, RFC 1929) whose CONNECT and UDP ASSOCIATE are
//!   carried through the tunnel;
//! - [`forward`]: fixed TCP and UDP port forwards (`--forward [tcp:|udp:]LISTEN=TARGET`).
//!
//! Server side (`gaptun server`):
//! - [`relay`]: serves each stream a client opens: dials TCP targets or relays UDP, after
//!   checking them against the [`policy`].
//!
//! Both sides: [`expose`] publishes services behind the client on the server's ports (a
//! reverse proxy): the server listens, and opens a stream to the client for each visitor.
//!
//! The two sides speak the small per-stream protocol in [`request`]. This crate does not know
//! the transport: the client reaches it through the [`tunnel::StreamOpener`] trait, the server
//! hands accepted streams to [`relay::serve_stream`]. [`mem::MemTunnel`] wires both together
//! in memory for tests and demos.

pub mod addr;
pub mod client;
pub mod counted;
pub mod expose;
pub mod flow;
pub mod forward;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod mem;
pub mod policy;
pub mod pump;
pub mod relay;
pub mod request;
pub mod socks5;
pub mod tunnel;

mod idle;
mod listen;
mod udp_tunnel;

pub use addr::TargetAddr;
pub use counted::{ByteCounter, Counted};
pub use mem::MemTunnel;
pub use policy::{AllowRule, TargetPolicy};
pub use relay::{DialConfig, serve_stream};
pub use socks5::{SocksConfig, serve_socks};
pub use tunnel::StreamOpener;
