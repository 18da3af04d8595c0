//! Glue between the daemons and `gaptun-apps` (SOCKS5, port forwards, the server-side relay).
//!
//! `gaptun-apps` is developed in parallel and is not a dependency of this branch yet. Everything
//! the daemons need from it goes through the four functions below, marked `WIRING`; each
//! currently fails with [`NOT_WIRED`]. After the merge, the lead replaces each body with the
//! call shown in its comment and adds the `StreamOpener` impl for [`PoolOpener`]; nothing else
//! in the binary has to change.

use std::io;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use gaptun_runtime::{ClientPool, RtStream};
use tokio::net::{TcpListener, UdpSocket};

/// The error every unwired function returns.
pub const NOT_WIRED: &str = "this build has no application layer (gaptun-apps is not wired in)";

/// Opens tunnel streams for the client-side applications: each open goes through the pool
/// (least-loaded connection, waiting during reconnects).
///
/// WIRING (after merging gaptun-apps):
/// ```ignore
/// impl gaptun_apps::tunnel::StreamOpener for PoolOpener {
///     type Stream = RtStream;
///     fn open(&self) -> impl Future<Output = io::Result<RtStream>> + Send {
///         let pool = self.pool.clone();
///         async move { pool.open_stream().await }
///     }
/// }
/// ```
#[derive(Debug, Clone)]
// Read by the StreamOpener impl added when gaptun-apps is wired in; remove the allow then.
#[allow(dead_code)]
pub struct PoolOpener {
    pool: ClientPool,
}

impl PoolOpener {
    pub fn new(pool: ClientPool) -> Self {
        Self { pool }
    }

    /// A new stream to the server.
    // Until gaptun-apps is wired in: called by gaptun-apps once wired in.
    #[allow(dead_code)]
    pub async fn open(&self) -> io::Result<RtStream> {
        self.pool.open_stream().await
    }
}

/// What the server lets clients reach (turned into `gaptun_apps::policy::TargetPolicy`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayPolicy {
    /// `--allow` rules as given (host:port, host, *.domain, IP network).
    pub allow: Vec<String>,
    /// Also allow private, loopback and link-local targets.
    pub allow_private: bool,
}

/// WIRING: serves SOCKS5 on `listener` until an unrecoverable error.
/// After the merge: `gaptun_apps::socks5::serve_socks(listener, opener, SocksConfig::default())`.
pub async fn serve_socks(listener: TcpListener, opener: PoolOpener) -> Result<()> {
    let _ = (listener, opener);
    Err(anyhow!("SOCKS5: {NOT_WIRED}"))
}

/// WIRING: forwards TCP connections accepted on `listener` to `target` (reached from the
/// server). After the merge: `gaptun_apps::forward::serve_tcp_forward(listener, target, opener)`.
pub async fn serve_tcp_forward(
    listener: TcpListener,
    target: String,
    opener: PoolOpener,
) -> Result<()> {
    let _ = (listener, target, opener);
    Err(anyhow!("TCP forward: {NOT_WIRED}"))
}

/// WIRING: forwards UDP datagrams received on `socket` to `target` (reached from the server).
/// After the merge: `gaptun_apps::forward::serve_udp_forward(socket, target, opener)`.
pub async fn serve_udp_forward(
    socket: UdpSocket,
    target: String,
    opener: PoolOpener,
) -> Result<()> {
    let _ = (socket, target, opener);
    Err(anyhow!("UDP forward: {NOT_WIRED}"))
}

/// WIRING: serves one stream a client opened on the server: reads the target request, checks it
/// against `policy`, dials, and relays. After the merge:
/// `gaptun_apps::relay::serve_stream(stream, &target_policy, &DialConfig::default())`, with the
/// `TargetPolicy` built once from `policy` (via `AllowRule` parsing) instead of per stream.
pub async fn serve_relay_stream(stream: RtStream, policy: Arc<RelayPolicy>) -> Result<()> {
    let _ = (stream, policy);
    Err(anyhow!("relay: {NOT_WIRED}"))
}
