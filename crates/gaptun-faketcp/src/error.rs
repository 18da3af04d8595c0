//! Errors of the fake-TCP carrier, each one line an operator can act on.

use std::io;

use thiserror::Error;

/// Why a fake-TCP carrier could not start.
#[derive(Debug, Error)]
pub enum FakeTcpError {
    /// Raw sockets and nftables are Linux-only here.
    #[error("fake TCP is not supported on this system (Linux only)")]
    Unsupported,
    /// The raw socket was refused: not root and no CAP_NET_RAW.
    #[error("fake TCP needs root or CAP_NET_RAW (raw socket refused: {0})")]
    Permission(io::Error),
    /// The RST-suppressing rules could not be installed (no `nft`, no CAP_NET_ADMIN, or a
    /// kernel without nftables).
    #[error("fake TCP needs nftables to stop the kernel's RSTs: {0}")]
    Nftables(String),
    /// Any other system call failure while setting up.
    #[error("fake TCP: {0}")]
    Io(#[from] io::Error),
}
