//! The two daemons: `gaptun server` and `gaptun client`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use gaptun_proto::EndpointConfig;
use gaptun_runtime::{ClientPool, PoolConfig, RtConnection, RtEndpoint};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::apps_wiring::{self, ConnHandle, PoolOpener, RelayPolicy};
use crate::config::Role;
use crate::ctl::{CtlContext, CtlSocket, handle_line};
use crate::settings::{ClientSettings, ServerSettings};
use crate::values::ForwardProto;
use gaptun_apps::expose::{
    ExposeClient, ExposeClientConfig, ExposePeer, ExposeServer, ExposeServerConfig, ExposeSpec,
};
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

/// Accepts connections and serves their streams until the endpoint closes. With `expose`,
/// clients may also register exposes.
pub async fn accept_loop(
    endpoint: RtEndpoint,
    policy: Arc<RelayPolicy>,
    expose: Option<ExposeServer<ConnHandle>>,
) {
    while let Some(conn) = endpoint.accept().await {
        tokio::spawn(serve_connection(conn, Arc::clone(&policy), expose.clone()));
    }
}

async fn serve_connection(
    conn: RtConnection,
    policy: Arc<RelayPolicy>,
    expose: Option<ExposeServer<ConnHandle>>,
) {
    let remote = conn.remote_address();
    info!(%remote, "client connected");
    // Keys have no names yet: the owner of exposed ports is the key's position.
    let owner: Arc<str> = match conn.key_index() {
        Some(i) => format!("key {}", i + 1).into(),
        None => "unknown".into(),
    };
    let expose = expose.map(|server| {
        let peer = ExposePeer {
            owner,
            opener: ConnHandle(conn.clone()),
        };
        (server, peer)
    });
    while let Some(stream) = conn.accept_stream().await {
        let policy = Arc::clone(&policy);
        let expose = expose.clone();
        tokio::spawn(async move {
            let id = stream.id();
            match apps_wiring::serve_relay_stream(stream, policy, expose).await {
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

/// `gaptun server`.
pub async fn run_server(s: ServerSettings) -> Result<()> {
    let window = s.transport.receive_window;
    let config = EndpointConfig {
        transport: s.transport,
        ..EndpointConfig::server(s.keys)
    };
    let endpoint =
        RtEndpoint::bind(s.listen, config).map_err(|e| bind_error(&e, s.listen, "tunnel"))?;
    let control = start_control(&s.control, Role::Server, endpoint.clone(), window)?;
    let policy = Arc::new(RelayPolicy::build(&s.allow, s.allow_private)?);
    let expose = (!s.expose_ports.is_empty()).then(|| {
        info!(ports = %s.expose_ports, bind = %s.expose_bind, "clients may expose ports");
        ExposeServer::new(ExposeServerConfig {
            bind: s.expose_bind,
            allowed: s.expose_ports.clone(),
            ..ExposeServerConfig::default()
        })
    });
    info!(listen = %endpoint.local_addr(), "gaptun server running");
    tokio::select! {
        () = accept_loop(endpoint.clone(), policy, expose) => {}
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
    if socks.is_none() && tcp.is_empty() && udp.is_empty() && s.exposes.is_empty() {
        bail!("nothing to do: SOCKS5 is off (--no-socks) and no --forward or --expose is given");
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

/// Registers the exposes on the first connection: a refusal is an error at start-up (one
/// line per refused expose, naming the port). Then returns the task that registers again on
/// every new connection (after reconnects), logging refusals from then on.
async fn start_exposes(
    pool: &ClientPool,
    exposes: Vec<ExposeSpec>,
) -> Result<impl Future<Output = Result<()>> + Send + 'static> {
    let client = ExposeClient::new(exposes, ExposeClientConfig::default())?;
    let mut feed = pool.connection_feed();
    let first = feed
        .recv()
        .await
        .ok_or_else(|| anyhow!("no connection to register the exposes on"))?;
    let registration = client.register(ConnHandle(first)).await?;
    if !registration.refusals().is_empty() {
        let lines: Vec<String> = registration
            .refusals()
            .iter()
            .map(ToString::to_string)
            .collect();
        bail!("{}", lines.join("\n"));
    }
    tokio::spawn(registration.serve());
    Ok(async move {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let forward = async move {
            while let Some(conn) = feed.recv().await {
                if tx.send(ConnHandle(conn)).is_err() {
                    return;
                }
            }
        };
        tokio::join!(forward, client.run(rx));
        Ok(())
    })
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
    if !s.exposes.is_empty() {
        let exposes = start_exposes(&pool, s.exposes.clone()).await;
        match exposes {
            Ok(task) => {
                apps.spawn(task);
            }
            Err(e) => {
                apps.abort_all();
                control.abort();
                pool.shutdown(SHUTDOWN_LINGER).await;
                return Err(e);
            }
        }
    }
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
