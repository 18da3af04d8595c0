//! `gaptun-faketcp`: gaptun's datagrams carried as TCP segments, for networks that throttle or
//! block UDP (the job of rsock, udp2raw and phantun, without their faults).
//!
//! - [`packet`]: IPv4 or IPv6 and TCP headers, built and parsed;
//! - [`flow`]: one flow's handshake, numbers, ACK policy and timers (sans-IO);
//! - [`nft`]: the nftables table that keeps the kernel's TCP (its lookups and RSTs) out of our
//!   flows;
//! - [`FakeTcpSocket`]: the carrier itself (Linux; elsewhere [`FakeTcpError::Unsupported`]).
//!
//! Needs root, or CAP_NET_RAW and CAP_NET_ADMIN (raw and packet sockets, nftables). IPv4 and
//! IPv6: a carrier is of the family of its server's address.

mod carrier;
mod error;
mod flow;
#[cfg(target_os = "linux")]
mod nft;
mod packet;
#[cfg(target_os = "linux")]
mod socket;
#[cfg(target_os = "linux")]
mod sys;
#[cfg(not(target_os = "linux"))]
mod unsupported;

pub use error::FakeTcpError;
pub use flow::Timing;
#[cfg(target_os = "linux")]
pub use socket::{ClientConfig, FakeTcpSocket, FakeTcpStats, ServerConfig};
#[cfg(not(target_os = "linux"))]
pub use unsupported::{ClientConfig, FakeTcpSocket, FakeTcpStats, ServerConfig};

/// Bytes of IPv4, TCP and timestamp headers in front of each datagram on the wire (IPv6: 20
/// more).
pub const DATA_OVERHEAD: usize = packet::DATA_OVERHEAD;
