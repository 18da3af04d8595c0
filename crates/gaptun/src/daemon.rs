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
use tracing::{Instrument, debug, info, warn};

use crate::apps_wiring::{
    self, ConnHandle, CountingOpener, PoolOpener, RelayPolicy, ServerUser, UserConn,
};
use crate::config::Role;
use crate::ctl::{CtlContext, CtlSocket, ExposeSource, handle_line};
use crate::faketcp_wiring;
use crate::ratelimit::Limited;
use crate::settings::{ClientSettings, DashboardSettings, ServerSettings};
use crate::values::{CarrierChoice, CarrierKind, ForwardProto};
use gaptun_apps::expose::{
    ExposeClient, ExposeClientConfig, ExposePeer, ExposeServer, ExposeServerConfig,
};
use gaptun_apps::relay::RelayError;
use gaptun_apps::socks5::SocksConfig;
use gaptun_stats::{
    Collector, Credentials, Dashboard, DashboardError, ForwardStats, Sources,
    open_dashboard_warning,
};

/// How long shutdown waits for CLOSE frames to go out.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(2);

/// Resolves on SIGINT or SIGTERM, with the signal's name. SIGHUP is logged and ignored:
/// reloading keys and allow rules in place is not supported, and the default action (exit at
/// once) would leave the control socket behind and cut every tunnel without a CLOSE.
///
/// The handlers are installed when this is called (not when the future is first polled), so a
/// daemon calls it first thing; it must run inside the tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = &'static str> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    let mut terminate = signal(SignalKind::terminate()).ok();
    let mut hangup = signal(SignalKind::hangup()).ok();
    async move {
        loop {
            tokio::select! {
                Some(()) = recv(&mut interrupt) => return "SIGINT",
                Some(()) = recv(&mut terminate) => return "SIGTERM",
                Some(()) = recv(&mut hangup) => info!(
                    "SIGHUP: reloading is not supported, signal ignored (restart gaptun to apply changes)"
                ),
            }
        }
    }
}

/// The next delivery of `signal`; never resolves when its handler could not be installed.
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// The one-line error for a failed bind: "address 127.0.0.1:1080 already in use (socks)".
pub fn bind_error(e: &io::Error, addr: impl std::fmt::Display, what: &str) -> anyhow::Error {
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
    endpoint: RtEndpoint,
    window: Arc<AtomicU64>,
    collector: Collector,
) -> Result<tokio::task::JoinHandle<()>> {
    let socket = CtlSocket::bind(path)?;
    info!(path = %socket.path().display(), "control socket ready (gaptun ctl)");
    let ctx = CtlContext {
        endpoint,
        window,
        collector,
    };
    Ok(tokio::spawn(
        socket.serve(move |line: &str| handle_line(line, &ctx)),
    ))
}

/// Binds the dashboard's address (when one is set), before anything else starts, so that a
/// taken port fails at once. Warns loudly when it is open to the network without a password.
async fn bind_dashboard(settings: Option<&DashboardSettings>) -> Result<Option<Dashboard>> {
    let Some(d) = settings else {
        return Ok(None);
    };
    let auth = d.auth.as_ref().map(|(u, p)| Credentials::new(u, p));
    let dashboard = Dashboard::bind(d.listen, auth)
        .await
        .map_err(|DashboardError::Bind { addr, source }| bind_error(&source, addr, "dashboard"))?;
    let addr = dashboard.local_addr().unwrap_or(d.listen);
    info!(%addr, auth = d.auth.is_some(), "dashboard on http://{addr}/ (/api/stats, /metrics)");
    if let Some(warning) = open_dashboard_warning(addr, d.auth.is_some()) {
        warn!("{warning}");
    }
    Ok(Some(dashboard))
}

/// The figures of a daemon: collected once a second for `ctl` and the dashboard. Returns the
/// collector and the tasks to stop at shutdown.
fn start_stats(
    sources: Sources,
    dashboard: Option<Dashboard>,
) -> (Collector, Vec<tokio::task::JoinHandle<()>>) {
    let collector = Collector::new(sources);
    let mut tasks = vec![tokio::spawn(collector.clone().run())];
    if let Some(d) = dashboard {
        tasks.push(tokio::spawn(d.serve(collector.clone())));
    }
    (collector, tasks)
}

/// Accepts connections and serves their streams until the endpoint closes. `users` holds the
/// user of each key, by key index. With `expose`, clients may also register exposes.
pub async fn accept_loop(
    endpoint: RtEndpoint,
    users: Arc<[ServerUser]>,
    expose: Option<ExposeServer<UserConn>>,
) {
    while let Some(conn) = endpoint.accept().await {
        tokio::spawn(serve_connection(conn, Arc::clone(&users), expose.clone()));
    }
}

async fn serve_connection(
    conn: RtConnection,
    users: Arc<[ServerUser]>,
    expose: Option<ExposeServer<UserConn>>,
) {
    let remote = conn.remote_address();
    let cipher = conn.stats().map_or("", |s| s.cipher);
    // The connection's key decides who it is; a connection gone before this point has no
    // key index left, and nothing to serve.
    let Some(user) = conn.key_index().and_then(|i| users.get(i)).cloned() else {
        debug!(%remote, "connection ended before it was served");
        return;
    };
    let name = Arc::clone(&user.name);
    info!(%remote, user = %name, %cipher, "client connected");
    let policy = Arc::clone(&user.policy);
    // A client that offered datagrams gets its UDP relays over them.
    let flows = conn
        .max_datagram_size()
        .map(|_| apps_wiring::flow_mux(conn.datagrams()));
    let expose = expose.map(|server| {
        let peer = ExposePeer {
            owner: Arc::clone(&name),
            opener: UserConn {
                conn: conn.clone(),
                limit: user.limit.clone(),
            },
            allowed: user.expose_ports.clone(),
            flows: flows.clone(),
        };
        (server, peer)
    });
    while let Some(stream) = conn.accept_stream().await {
        let policy = Arc::clone(&policy);
        let expose = expose.clone();
        let name = Arc::clone(&name);
        let limit = user.limit.clone();
        let flows = flows.clone();
        tokio::spawn(async move {
            let id = stream.id();
            // The span names the client and its user in what the relay logs itself (refused
            // UDP destinations).
            let stream = Limited::new(stream, limit);
            let served = apps_wiring::serve_relay_stream(stream, policy, expose, flows)
                .instrument(tracing::info_span!("client", %remote, user = %name))
                .await;
            match served {
                Ok(()) => {}
                // What the client asked for and could not get: worth a line at the default level.
                Err(RelayError::Dial { target, source }) => {
                    info!(%remote, user = %name, target = %target, "{target}: {source}");
                }
                // Connections that end abruptly (resets, the peer going away) are routine.
                Err(e) => debug!(%remote, user = %name, %id, "{e}"),
            }
        });
    }
    let reason = conn
        .close_reason()
        .map_or_else(|| "connection ended".to_owned(), |r| disconnect_reason(&r));
    info!(%remote, user = %name, "client disconnected: {reason}");
}

/// Why a connection ended, for the log: a peer that closed without giving a reason gets "no
/// reason given" rather than an empty string.
fn disconnect_reason(e: &gaptun_runtime::RtError) -> String {
    use gaptun_proto::ConnectionError;
    match e {
        gaptun_runtime::RtError::Connection(ConnectionError::ClosedByPeer { code, reason })
            if reason.trim().is_empty() =>
        {
            format!("closed by peer (code {code}, no reason given)")
        }
        other => other.to_string(),
    }
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
/// The state directory (where the replay files and the self-signed certificate live), made
/// if missing; `None` when no environment variable names one.
pub(crate) fn default_state_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    // Any port names a file in the directory; only the directory is wanted.
    let file = state_file_in(
        var("STATE_DIRECTORY"),
        var("XDG_STATE_HOME"),
        var("HOME"),
        1,
    )?;
    let dir = file.parent()?.to_path_buf();
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

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
    let signals = shutdown_signal();
    let window = s.transport.receive_window;
    let config = EndpointConfig {
        transport: s.transport,
        state_file: default_state_file(s.listen.first),
        ..EndpointConfig::server(s.keys)
    };
    let dashboard = bind_dashboard(s.dashboard.as_ref()).await?;
    let endpoint = if s.carrier == CarrierChoice::Udp {
        RtEndpoint::bind_sharded(&s.listen.addrs(), config, s.threads)
            .map_err(|e| bind_error(&e, s.listen, "tunnel"))?
    } else {
        // TLS and QUIC join UDP and fake TCP in the one endpoint.
        let web =
            crate::carriers::server_carriers(s.carrier, &s.web, &config.psks, default_state_dir())
                .await?;
        faketcp_wiring::server_endpoint(s.listen, s.carrier, config, web)?
    };
    // Told to every client inside the encrypted handshake; a client without `--carrier`
    // falls back to these.
    let offer = crate::offer::server_offer(s.carrier, &s.listen, &endpoint);
    info!(carriers = %crate::offer::describe(&offer), "carriers offered to clients");
    endpoint.set_carrier_offer(Some(offer));
    let server_wide = Arc::new(RelayPolicy::build(&s.allow, s.allow_private)?);
    let users: Arc<[ServerUser]> =
        ServerUser::for_keys(&s.key_users, &server_wide, s.allow_private)?.into();
    let names: Vec<Arc<str>> = users.iter().map(|u| Arc::clone(&u.name)).collect();
    endpoint.set_key_names(names.clone());
    let someone_exposes = !s.expose_ports.is_empty()
        || users
            .iter()
            .any(|u| u.expose_ports.as_ref().is_some_and(|p| !p.is_empty()));
    let expose = someone_exposes.then(|| {
        // `server_wide` applies to plain keys and to users without their own ports.
        info!(server_wide = %s.expose_ports, bind = %s.expose_bind, "clients may expose ports");
        for u in users.iter() {
            if let Some(own) = &u.expose_ports {
                info!(user = %u.name, ports = %own, "user's own expose ports");
            }
        }
        ExposeServer::new(ExposeServerConfig {
            bind: s.expose_bind,
            allowed: s.expose_ports.clone(),
            ..ExposeServerConfig::default()
        })
    });
    let source = expose
        .clone()
        .map_or(ExposeSource::None, ExposeSource::Server);
    let window = Arc::new(AtomicU64::new(window));
    let (collector, stats_tasks) = start_stats(
        Sources {
            role: Role::Server.name(),
            version: crate::cli::VERSION.to_owned(),
            endpoint: endpoint.clone(),
            window: Arc::clone(&window),
            key_users: names,
            exposes: Box::new(move || source.rows()),
            forwards: Vec::new(),
            offered_carriers: None,
        },
        dashboard,
    );
    let control = start_control(&s.control, endpoint.clone(), window, collector)?;
    if s.listen.last_port == s.listen.first.port() {
        info!(listen = %endpoint.local_addr(), threads = s.threads, "gaptun server running");
    } else {
        info!(listen = %s.listen, ports = endpoint.carriers().len(), threads = s.threads, "gaptun server running");
    }
    tokio::select! {
        () = accept_loop(endpoint.clone(), users, expose) => {}
        signal = signals => info!("{signal}: shutting down"),
    }
    control.abort();
    stats_tasks.iter().for_each(tokio::task::JoinHandle::abort);
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

/// Starts SOCKS5 and the forwards; returns their tasks and their counters.
fn start_apps(
    listeners: Listeners,
    opener: &PoolOpener,
    socks: SocksConfig,
) -> (JoinSet<Result<()>>, Vec<Arc<ForwardStats>>) {
    let mut apps = JoinSet::new();
    let mut stats = Vec::new();
    let mut counted = |kind, addr: String, target: Option<&String>| {
        let s = ForwardStats::new(kind, addr, target.cloned());
        stats.push(Arc::clone(&s));
        CountingOpener::new(opener.clone(), s)
    };
    let shown =
        |addr: io::Result<SocketAddr>| addr.map_or_else(|e| e.to_string(), |a| a.to_string());
    if let Some(l) = listeners.socks {
        if let Ok(addr) = l.local_addr() {
            info!(%addr, "SOCKS5 listening");
            if let Some(warning) = open_socks_warning(addr, socks.auth.is_some()) {
                warn!("{warning}");
            }
        }
        let opener = counted("socks", shown(l.local_addr()), None);
        apps.spawn(apps_wiring::serve_socks(l, opener, socks));
    }
    for (l, target) in listeners.tcp {
        if let Ok(addr) = l.local_addr() {
            info!(%addr, target = %target, "TCP forward listening");
        }
        let opener = counted("tcp", shown(l.local_addr()), Some(&target));
        apps.spawn(apps_wiring::serve_tcp_forward(l, target, opener));
    }
    for (s, target) in listeners.udp {
        if let Ok(addr) = s.local_addr() {
            info!(%addr, target = %target, "UDP forward listening");
        }
        let opener = counted("udp", shown(s.local_addr()), Some(&target));
        apps.spawn(apps_wiring::serve_udp_forward(s, target, opener));
    }
    (apps, stats)
}

/// The start-up warning for a SOCKS5 proxy anyone on the network can use: listening on a
/// non-loopback address without a password lets every host that reaches the port use the
/// tunnel server's network as its own.
pub fn open_socks_warning(addr: SocketAddr, has_password: bool) -> Option<String> {
    (!addr.ip().is_loopback() && !has_password).then(|| {
        format!(
            "SOCKS5 on {addr} accepts anyone who can reach it (no --socks-password): \
             listen on 127.0.0.1 or set a user and password"
        )
    })
}

/// Connects the pool to the server over the chosen carrier. A UDP server port that is closed
/// answers the first Initial with ICMP port unreachable: that ends the wait at once with a
/// clear message, instead of waiting out the handshake timeout.
async fn connect(
    s: &ClientSettings,
    config: EndpointConfig,
    mut pool: PoolConfig,
) -> Result<(ClientPool, Option<faketcp_wiring::ByOffer>)> {
    let server = s.server.as_str();
    let mut by_offer = None;
    let pool = match s.carrier {
        CarrierChoice::Udp => ClientPool::connect(server, config, pool).await,
        CarrierChoice::Tls | CarrierChoice::Quic => {
            // The pool prefers IPv4 too: the carrier's peer and the pool's must be one address.
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
                .await
                .map_err(|e| anyhow!("cannot connect to {server}: {e}"))?
                .collect();
            let addr = addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or_else(|| addrs.first())
                .copied()
                .ok_or_else(|| anyhow!("cannot connect to {server}: no address"))?;
            let carrier = crate::carriers::client_carrier(s.carrier, addr, &s.web, &s.key)
                .await
                .map_err(|e| anyhow!("cannot connect to {server}: {e}"))?
                .ok_or_else(|| anyhow!("no carrier for {:?}", s.carrier))?;
            let endpoint = RtEndpoint::with_carriers(vec![carrier], config)?;
            ClientPool::with_endpoint(endpoint, server, pool).await
        }
        CarrierChoice::Faketcp
        | CarrierChoice::All
        | CarrierChoice::Auto
        | CarrierChoice::ByOffer => {
            let made = faketcp_wiring::client_endpoint(s, config).await?;
            pool.carrier_order = made.order;
            by_offer = made.by_offer;
            ClientPool::with_late_carriers(made.endpoint, server, pool, made.late).await
        }
    };
    let pool = pool.map_err(|e| anyhow!("cannot connect to {server}: {e}"))?;
    Ok((pool, by_offer))
}

/// A client without `--carrier`, once connected: reads the server's carrier offer, says it
/// once, remembers it for the next start, connects the offered TLS carrier (and QUIC when the
/// client started with it, from a remembered offer: fake TCP and QUIC fix the packet size when
/// the client starts, so they otherwise join from the next start) and from then on moves
/// between the carriers as `--carrier auto` does. Attempts from a remembered offer that the
/// server no longer makes are stopped. Against a server that offers only UDP (or nothing: an
/// older one) it changes nothing. Returns the offer for `ctl stats`.
pub(crate) fn follow_offer(
    s: &ClientSettings,
    pool: &ClientPool,
    by_offer: faketcp_wiring::ByOffer,
) -> Option<String> {
    let faketcp_wiring::ByOffer {
        server,
        started,
        mut attempts,
        remembered,
        state_file,
        ready,
    } = by_offer;
    let offer = pool.connections().iter().find_map(|c| c.carrier_offer());
    let wanted = offer.map_or_else(
        || vec![CarrierKind::Udp],
        |o| crate::offer::kinds(Some(&o), s.carriers.as_ref()),
    );
    let shown = offer.as_ref().map(crate::offer::describe);
    if let (Some(path), Some(o)) = (&state_file, offer)
        && remembered != Some(o)
        && let Err(e) = crate::offer::save(path, &o)
    {
        warn!("cannot remember the server's carriers: {e:#}");
    }
    let mut using: Vec<CarrierKind> = started
        .iter()
        .copied()
        .filter(|k| matches!(k, CarrierKind::Udp | CarrierKind::Faketcp))
        .collect();
    for kind in wanted {
        match kind {
            CarrierKind::Udp | CarrierKind::Faketcp => {
                if !using.contains(&kind) {
                    info!(
                        carrier = kind.name(),
                        "offered; used from the next start (its packet size is set when the \
                         client starts)"
                    );
                }
                continue;
            }
            CarrierKind::Quic if !started.contains(&CarrierKind::Quic) => {
                info!(
                    carrier = kind.name(),
                    "offered; used from the next start (its packet size is set when the client \
                     starts)"
                );
                continue;
            }
            CarrierKind::Tls | CarrierKind::Quic => {}
        }
        let explicit = if kind == CarrierKind::Tls {
            s.web.tls_server.as_ref()
        } else {
            s.web.quic_server.as_ref()
        };
        let current = attempts.iter().position(|a| a.kind == kind);
        let peer = match faketcp_wiring::offered_spec(kind, explicit, offer.as_ref()) {
            Some(crate::values::CarrierServer::Port(port)) => SocketAddr::new(server.ip(), port),
            // A name given with --tls-server / --quic-server was resolved at the start.
            _ => match current {
                Some(i) => attempts[i].peer,
                None => continue,
            },
        };
        using.push(kind);
        if current.is_some_and(|i| attempts[i].peer == peer) {
            continue;
        }
        if let Some(i) = current {
            let old = attempts.remove(i);
            old.handle.abort();
            info!(carrier = kind.name(), old = %old.peer, new = %peer, "the server moved a carrier");
        }
        attempts.extend(faketcp_wiring::Attempt::start(kind, peer, s, &ready));
    }
    for stale in attempts.iter().filter(|a| !using.contains(&a.kind)) {
        stale.handle.abort();
        info!(carrier = stale.kind.name(), peer = %stale.peer, "no longer offered by the server: not tried");
    }
    if using.len() <= 1 {
        if started.len() > 1 {
            // Started on a remembered offer the server no longer makes.
            pool.set_carrier_order(vec![CarrierKind::Udp.name()]);
        }
        debug!(offered = shown.as_deref().unwrap_or("nothing"), "UDP only");
        return shown;
    }
    let order: Vec<&'static str> = [
        CarrierKind::Udp,
        CarrierKind::Faketcp,
        CarrierKind::Quic,
        CarrierKind::Tls,
    ]
    .into_iter()
    .filter(|k| using.contains(k))
    .map(CarrierKind::name)
    .collect();
    info!(
        offered = shown.as_deref().unwrap_or("nothing"),
        carriers = %order.join(","),
        "the server offers several carriers: carrier auto in use, one at a time in this order"
    );
    pool.set_carrier_order(order);
    shown
}

/// Registers the exposes on the first connection: a refusal is an error at start-up (one
/// line per refused expose, naming the port). Then returns the task that registers again on
/// every new connection (after reconnects), logging refusals from then on.
async fn start_exposes(
    pool: &ClientPool,
    opener: &PoolOpener,
    client: ExposeClient,
) -> Result<impl Future<Output = Result<()>> + Send + 'static> {
    let mut feed = pool.connection_feed();
    let first = feed
        .recv()
        .await
        .ok_or_else(|| anyhow!("no connection to register the exposes on"))?;
    let registration = client.register(ConnHandle(first, opener.clone())).await?;
    if !registration.refusals().is_empty() {
        let lines: Vec<String> = registration
            .refusals()
            .iter()
            .map(ToString::to_string)
            .collect();
        bail!("{}", lines.join("\n"));
    }
    tokio::spawn(registration.serve());
    let opener = opener.clone();
    Ok(async move {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let forward = async move {
            while let Some(conn) = feed.recv().await {
                if tx.send(ConnHandle(conn, opener.clone())).is_err() {
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
    let mut signals = std::pin::pin!(shutdown_signal());
    let listeners = bind_listeners(&s).await?;
    let dashboard = bind_dashboard(s.dashboard.as_ref()).await?;
    let window = s.transport.receive_window;
    let config = EndpointConfig {
        transport: s.transport.clone(),
        ..EndpointConfig::client(s.key.clone())
    };
    let pool_config = PoolConfig {
        conns: s.conns,
        hop_interval: s.hop_interval,
        ..PoolConfig::default()
    };
    info!(server = %s.server, conns = s.conns, carrier = ?s.carrier, "connecting");
    let (pool, by_offer) = tokio::select! {
        pool = connect(&s, config, pool_config) => pool?,
        signal = &mut signals => {
            info!("{signal}: stopped while connecting");
            return Ok(());
        }
    };
    let offered = by_offer.and_then(|b| follow_offer(&s, &pool, b));
    let expose_client = if s.exposes.is_empty() {
        None
    } else {
        match ExposeClient::new(s.exposes.clone(), ExposeClientConfig::default()) {
            Ok(c) => Some(c),
            Err(e) => {
                pool.shutdown(SHUTDOWN_LINGER).await;
                return Err(e.into());
            }
        }
    };
    let source = expose_client
        .clone()
        .map_or(ExposeSource::None, ExposeSource::Client);
    let socks = SocksConfig {
        auth: s.socks_auth.clone(),
        ..SocksConfig::default()
    };
    let opener = PoolOpener::new(pool.clone());
    let (mut apps, forwards) = start_apps(listeners, &opener, socks);
    let window = Arc::new(AtomicU64::new(window));
    let (collector, stats_tasks) = start_stats(
        Sources {
            role: Role::Client.name(),
            version: crate::cli::VERSION.to_owned(),
            endpoint: pool.endpoint().clone(),
            window: Arc::clone(&window),
            key_users: Vec::new(),
            exposes: Box::new(move || source.rows()),
            forwards,
            offered_carriers: offered,
        },
        dashboard,
    );
    let stop_stats = move || stats_tasks.iter().for_each(tokio::task::JoinHandle::abort);
    let control = match start_control(&s.control, pool.endpoint().clone(), window, collector) {
        Ok(c) => c,
        Err(e) => {
            apps.abort_all();
            stop_stats();
            pool.shutdown(SHUTDOWN_LINGER).await;
            return Err(e);
        }
    };
    if let Some(client) = expose_client {
        let exposes = start_exposes(&pool, &opener, client).await;
        match exposes {
            Ok(task) => {
                apps.spawn(task);
            }
            Err(e) => {
                apps.abort_all();
                control.abort();
                stop_stats();
                pool.shutdown(SHUTDOWN_LINGER).await;
                return Err(e);
            }
        }
    }
    let result = tokio::select! {
        signal = &mut signals => {
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
    stop_stats();
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

    #[test]
    fn a_close_without_reason_says_so() {
        use gaptun_proto::ConnectionError;
        use gaptun_runtime::RtError;
        let empty = RtError::Connection(ConnectionError::ClosedByPeer {
            code: 0,
            reason: String::new(),
        });
        assert_eq!(
            disconnect_reason(&empty),
            "closed by peer (code 0, no reason given)"
        );
        let given = RtError::Connection(ConnectionError::ClosedByPeer {
            code: 0,
            reason: "shutting down".into(),
        });
        assert_eq!(
            disconnect_reason(&given),
            "closed by peer (code 0): shutting down"
        );
    }

    #[test]
    fn open_socks_is_warned_about() {
        let lan: SocketAddr = "0.0.0.0:1080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:1080".parse().unwrap();
        let local6: SocketAddr = "[::1]:1080".parse().unwrap();
        let w = open_socks_warning(lan, false).unwrap();
        assert!(
            w.starts_with("SOCKS5 on 0.0.0.0:1080 accepts anyone"),
            "{w}"
        );
        assert_eq!(open_socks_warning(lan, true), None);
        assert_eq!(open_socks_warning(local, false), None);
        assert_eq!(open_socks_warning(local6, false), None);
    }

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
