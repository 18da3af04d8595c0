//! `gaptun-proto`: gaptun's transport as a deterministic state machine with no I/O.
//!
//! Nothing in this crate touches a socket or reads a clock, and the only call for OS randomness
//! is [`RngSeed::from_os`], which the caller makes once per endpoint. The
//! caller (the tokio driver in `gaptun-runtime`, or the simulator in `gaptun-sim`) feeds in
//! datagrams and the current time, and pulls out datagrams to send, the next timeout and
//! application events. Randomness comes from an RNG seeded by the caller. The same inputs always
//! give the same outputs, which is what makes the simulation tests reproducible.
//!
//! Layers, bottom up:
//! - [`varint`], [`range_set`]: small building blocks;
//! - [`crypto`]: keys, AEAD packet protection, header masking, replay window;
//! - [`handshake`]: the Noise `NNpsk0` exchange and its obfuscated wire form;
//! - [`packet`]: the layout of protected packets on the wire;
//! - [`fec`]: Reed–Solomon parity over sealed packets, and the rebuilding of lost ones;
//! - [`frame`]: the frames inside a packet's payload;
//! - [`streams`]: multiplexed streams with flow control;
//! - [`rtt`], [`congestion`]: RTT estimation, congestion controllers and the pacer;
//! - [`connection`]: one connection's state machine (reliability, timers, migration);
//! - [`endpoint`]: routes datagrams to connections and accepts new ones.
//!
//! The wire protocol is specified in `docs/protocol.md` at the repository root.

pub mod config;
pub mod congestion;
pub mod connection;
pub mod crypto;
pub mod endpoint;
pub mod fec;
pub mod frame;
pub mod handshake;
pub mod packet;
pub mod range_set;
mod reset;
pub mod rtt;
pub mod streams;
pub mod varint;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod shared;

pub use config::{EndpointConfig, TransportConfig};
pub use congestion::CongestionKind;
pub use connection::{
    Connection, ConnectionError, ConnectionStats, DatagramStats, Event, MAX_TRANSMIT_BYTES,
    MAX_UDP_PAYLOAD, MIN_MTU, PathInfo, PathSwitch, SendDatagramError, SwitchReason,
};
pub use crypto::{CipherSuite, Psk};
pub use endpoint::{
    ConnectionHandle, Endpoint, EndpointStats, RngSeed, RouteMtuQuery, SeedError, SeedOrigin,
};
pub use fec::FecMode;
pub use shared::{CarrierId, PathAddr, Side, StreamId, Transmit};
pub use streams::{ReadError, StreamEvent, WriteError};
