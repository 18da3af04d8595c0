//! The two daemons: `gaptun server` and `gaptun client`.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use gaptun_proto::EndpointConfig;
use gaptun_runtime::{ClientPool, PoolConfig, RtConnection, RtEndpoint};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::apps_wiring::{self, PoolOpener, RelayPolicy};
use crate::config::Role;
use crate::ctl::{CtlContext, CtlSocket, handle_line};
use crate::settings::{ClientSettings, ServerSettings};
use crate::values::ForwardProto;
use gaptun_apps::relay::RelayError;
use gaptun_apps::socks5::SocksConfig;

/// How long shutdown waits for CLOSE frames to go out.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(2);

/// Resolves on SIGINT or SIGTERM, with the signal's name.
pub async fn shutdown_signal() -> &'static str {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => "SIGINT",
        () = terminate => "SIGTERM",
    }
}

/// The one-line error for a failed bind: "address 127.0.0.1:1080 already in use (socks)".
pub fn bind_error(e: &io::Error, addr: SocketAddr, what: &str) -> anyhow::Error {
    match e.kind() {
        io::ErrorKind::AddrInUse => anyhow!("address {addr} already in use ({what})"),
        io::ErrorKind::AddrNotAvailable => anyhow!("address {addr} is not available here ({what})"),
        io::ErrorKind::PermissionDenied => anyhow!("no permission to listen on {addr} ({what})"),
        _ => anyhow!("cannot listen on {addr} ({what}): {e}"),
    }
}

pub async fn bind_tcp(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| bind_error(&e, addr, what))
}

async fn bind_udp(addr: SocketAddr, what: &str) -> Result<UdpSocket> {
    UdpSocket::bind(addr)
        .await
        .map_err(|e| bind_error(&e, addr, what))
}

/// Binds the control socket and starts answering on it.
fn start_control(
    path: &std::path::Path,
    role: Role,
    endpoint: RtEndpoint,
    window: u64,
) -> Result<tokio::task::JoinHandle<()>> {
    let socket = CtlSocket::bind(path)?;
    info!(path = %socket.path().display(), "control socket ready (gaptun ctl)");
    let ctx = CtlContext {
        role,
        endpoint,
        window: Arc::new(AtomicU64::new(window)),
    };
    Ok(tokio::spawn(
        socket.serve(move |line: &str| handle_line(line, &ctx)),
    ))
}

/// Accepts connections and serves their streams until the endpoint closes.
pub async fn accept_loop(endpoint: RtEndpoint, policy: Arc<RelayPolicy>) {
    while let Some(conn) = endpoint.accept().await {
        tokio::spawn(serve_connection(conn, Arc::clone(&policy)));
    }
}

async fn serve_connection(conn: RtConnection, policy: Arc<RelayPolicy>) {
    let remote = conn.remote_address();
    info!(%remote, "client connected");
    while let Some(stream) = conn.accept_stream().await {
        let policy = Arc::clone(&policy);
        tokio::spawn(async move {
            let id = stream.id();
            match apps_wiring::serve_relay_stream(stream, policy).await {
                Ok(()) => {}
                // What the client asked for and could not get: worth a line at the default level.
                Err(RelayError::Dial { target, source }) => info!(%remote, "{target}: {source}"),
                // Connections that end abruptly (resets, the peer going away) are routine.
                Err(e) => debug!(%remote, %id, "{e}"),
            }
        });
    }
    let reason = conn
        .close_reason()
        .map(|r| r.to_string())
        .unwrap_or_default();
    info!(%remote, "client disconnected: {reason}");
}

/// Where a server keeps its replay state (the handshakes it answered, so that a recorded Initial
/// gets no answer after a restart; `docs/protocol.md`, "Replay cache"): a file per listening port
/// in systemd's `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/gaptun`, else `~/.local/state/gaptun`.
/// `None` (with a warning) when none can be created, and for port 0 (no stable name: servers on
/// port 0 would share one file): the server then refuses Initials stamped before its start
/// instead.
fn default_state_file(listen: SocketAddr) -> Option<PathBuf> {
    if listen.port() == 0 {
        return None;
    }
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let path = state_file_in(
        var("STATE_DIRECTORY"),
        var("XDG_STATE_HOME"),
        var("HOME"),
        listen.port(),
    )?;
    let dir = path.parent()?;
    match std::fs::create_dir_all(dir) {
        Ok(()) => Some(path),
        Err(e) => {
            warn!(dir = %dir.display(), "no replay state file ({e}): handshakes recorded before a restart are refused only by their timestamp");
            None
        }
    }
}

/// The state file's path from the directories the environment names (`STATE_DIRECTORY` may
/// list several, separated by `:`; the first is used).
fn state_file_in(
    state_directory: Option<OsString>,
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
    port: u16,
) -> Option<PathBuf> {
    let dir = if let Some(dirs) = state_directory {
        let first = dirs.to_string_lossy().split(':').next()?.to_owned();
        PathBuf::from(first)
    } else if let Some(xdg) = xdg_state_home {
        PathBuf::from(xdg).join("gaptun")
    } else {
        PathBuf::from(home?).join(".local/state/gaptun")
    };
    Some(dir.join(format!("server-{port}.replay")))
}

/// `gaptun server`.
pub async fn run_server(s: ServerSettings) -> Result<()> {
    let window = s.transport.receive_window;
    let config = EndpointConfig {
        transport: s.transport,
        state_file: default_state_file(s.listen),
        ..EndpointConfig::server(s.keys)
    };
    let endpoint =
        RtEndpoint::bind(s.listen, config).map_err(|e| bind_error(&e, s.listen, "tunnel"))?;
    let control = start_control(&s.control, Role::Server, endpoint.clone(), window)?;
    let policy = Arc::new(RelayPolicy::build(&s.allow, s.allow_private)?);
    info!(listen = %endpoint.local_addr(), "gaptun server running");
    tokio::select! {
        () = accept_loop(endpoint.clone(), policy) => {}
        signal = shutdown_signal() => info!("{signal}: shutting down"),
    }
    control.abort();
    endpoint.shutdown(SHUTDOWN_LINGER).await;
    Ok(())
}

/// The client's local listeners, bound before connecting so that a taken port fails at once.
struct Listeners {
    socks: Option<TcpListener>,
    tcp: Vec<(TcpListener, String)>,
    udp: Vec<(UdpSocket, String)>,
}

async fn bind_listeners(s: &ClientSettings) -> Result<Listeners> {
    let socks = match s.socks {
        Some(addr) => Some(bind_tcp(addr, "socks").await?),
        None => None,
    };
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for f in &s.forwards {
        let what = format!("forward {f}");
        match f.proto {
            ForwardProto::Tcp => tcp.push((bind_tcp(f.listen, &what).await?, f.target.clone())),
            ForwardProto::Udp => udp.push((bind_udp(f.listen, &what).await?, f.target.clone())),
        }
    }
    if socks.is_none() && tcp.is_empty() && udp.is_empty() {
        bail!("nothing to do: SOCKS5 is off (--no-socks) and no --forward is given");
    }
    Ok(Listeners { socks, tcp, udp })
}

fn start_apps(
    listeners: Listeners,
    opener: &PoolOpener,
    socks: SocksConfig,
) -> JoinSet<Result<()>> {
    let mut apps = JoinSet::new();
    if let Some(l) = listeners.socks {
        if let Ok(addr) = l.local_addr() {
            info!(%addr, "SOCKS5 listening");
        }
        apps.spawn(apps_wiring::serve_socks(l, opener.clone(), socks));
    }
    for (l, target) in listeners.tcp {
        apps.spawn(apps_wiring::serve_tcp_forward(l, target, opener.clone()));
    }
    for (s, target) in listeners.udp {
        apps.spawn(apps_wiring::serve_udp_forward(s, target, opener.clone()));
    }
    apps
}

/// `gaptun client`.
pub async fn run_client(s: ClientSettings) -> Result<()> {
    let listeners = bind_listeners(&s).await?;
    let window = s.transport.receive_window;
    let config = EndpointConfig {
        transport: s.transport.clone(),
        ..EndpointConfig::client(s.key.clone())
    };
    let pool_config = PoolConfig {
        conns: s.conns,
        ..PoolConfig::default()
    };
    info!(server = %s.server, conns = s.conns, "connecting");
    let pool = ClientPool::connect(&s.server, config, pool_config)
        .await
        .map_err(|e| anyhow!("cannot connect to {}: {e}", s.server))?;
    let control = start_control(&s.control, Role::Client, pool.endpoint().clone(), window)?;
    let socks = SocksConfig {
        auth: s.socks_auth.clone(),
        ..SocksConfig::default()
    };
    let mut apps = start_apps(listeners, &PoolOpener::new(pool.clone()), socks);
    let result = tokio::select! {
        signal = shutdown_signal() => {
            info!("{signal}: shutting down");
            Ok(())
        }
        Some(done) = apps.join_next() => match done {
            Ok(Ok(())) => Err(anyhow!("an application task ended unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow!("an application task failed: {e}")),
        },
    };
    apps.abort_all();
    control.abort();
    debug!("closing tunnel connections");
    pool.shutdown(SHUTDOWN_LINGER).await;
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn state_file_location() {
        use super::{OsString, state_file_in};
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            state_file_in(os("/var/lib/gaptun:/other"), os("/x"), os("/home/u"), 443),
            Some("/var/lib/gaptun/server-443.replay".into())
        );
        assert_eq!(
            state_file_in(None, os("/x/state"), os("/home/u"), 8443),
            Some("/x/state/gaptun/server-8443.replay".into())
        );
        assert_eq!(
            state_file_in(None, None, os("/home/u"), 1),
            Some("/home/u/.local/state/gaptun/server-1.replay".into())
        );
        assert_eq!(state_file_in(None, None, None, 1), None);
    }

    use super::*;

    #[tokio::test]
    async fn port_in_use_is_one_clear_line() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind_tcp(addr, "socks").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("address {addr} already in use (socks)")
        );
    }

    #[tokio::test]
    async fn udp_port_in_use_for_the_tunnel() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind_udp(addr, "forward udp:x=y:1").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("address {addr} already in use (forward udp:x=y:1)")
        );
    }
}
