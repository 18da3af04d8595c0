//! The server side of expose: who may listen where, the listeners, and the visitors.
//!
//! The claim table maps each (transport, port) to its owner, the owner's client instance and
//! the sessions (control streams, one per client connection) that serve it. A port is bound
//! while at least one session holds it and closed as soon as none does.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::datagram;
use super::spec::{ExposeKind, PortRange, PortSet};
use super::stats::{ExposeSnapshot, ExposeStats, Side, counted};
use super::wire::{Entry, Register, Status, Verdict, VisitorHeader, encode_verdicts};
use crate::addr::TargetAddr;
use crate::flow::{FlowMux, FlowRx, FlowTx};
use crate::idle::Activity;
use crate::policy::TargetPolicy;
use crate::pump::{self, ChunkStream};
use crate::relay::{DialConfig, RelayError, read_request, serve_request};
use crate::request::{Command, ReplyCode, TunnelReply};
use crate::tunnel::StreamOpener;

/// Datagrams queued towards one UDP visitor's stream before further ones are dropped.
const UDP_QUEUE: usize = 256;

/// Accept queue of a visitor listener.
const LISTEN_BACKLOG: u32 = 1024;

/// Largest first flight of a TCP visitor carried with the stream header.
const FIRST_FLIGHT: usize = 16 * 1024;

/// Server settings for expose.
#[derive(Debug, Clone)]
pub struct ExposeServerConfig {
    /// Address the visitor listeners bind (`0.0.0.0`, or `::` for dual stack).
    pub bind: IpAddr,
    /// Ports clients may expose; empty: none.
    pub allowed: PortSet,
    /// A UDP visitor with no datagram either way for this long is forgotten.
    pub udp_idle_timeout: Duration,
}

impl Default for ExposeServerConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            allowed: PortSet::none(),
            udp_idle_timeout: Duration::from_secs(120),
        }
    }
}

/// One client connection as the expose server sees it.
#[derive(Debug, Clone)]
pub struct ExposePeer<O> {
    /// Who the client is: the server's name for the key it connected with. Ports belong to
    /// owners; logs name the owner, never the key.
    pub owner: Arc<str>,
    /// Opens streams to this client connection (visitor streams).
    pub opener: O,
    /// The ports this owner may expose, when it has its own rule (a named user's
    /// `expose_ports`); `None`: [`ExposeServerConfig::allowed`].
    pub allowed: Option<Arc<PortSet>>,
    /// The connection's datagram flows, for the UDP relays its client asks for
    /// ([`crate::flow`]); `None`: UDP relays ride on their streams.
    pub flows: Option<FlowMux>,
}

/// The expose server: shared by every client connection of a gaptun server.
#[derive(Debug)]
pub struct ExposeServer<O> {
    inner: Arc<Inner<O>>,
}

impl<O> Clone for ExposeServer<O> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

#[derive(Debug)]
struct Inner<O> {
    config: ExposeServerConfig,
    table: Mutex<Table<O>>,
}

#[derive(Debug)]
struct Table<O> {
    claims: HashMap<(ExposeKind, u16), Claim<O>>,
    next_session: u64,
}

#[derive(Debug)]
struct Claim<O> {
    owner: Arc<str>,
    instance: u64,
    /// The sessions serving the port, oldest first, each with its connection's datagram flows;
    /// visitors go round-robin.
    sessions: Vec<(u64, O, Option<FlowMux>)>,
    turn: usize,
    listener: AbortHandle,
    /// Shared by the ports registered in one entry.
    stats: Arc<ExposeStats>,
    ports: PortRange,
}

/// A socket bound for a port not yet claimed.
enum Bound {
    Tcp(TcpListener),
    Udp(std::net::UdpSocket),
}

impl<O: StreamOpener> ExposeServer<O> {
    /// An expose server with no port claimed yet.
    pub fn new(config: ExposeServerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                table: Mutex::new(Table {
                    claims: HashMap::new(),
                    next_session: 0,
                }),
            }),
        }
    }

    /// Serves one stream a client opened: a registration is handled here, anything else goes
    /// to [`crate::relay`] (connect, UDP relay) with `policy` and `dial`.
    pub async fn serve_stream<S>(
        &self,
        mut stream: S,
        peer: &ExposePeer<O>,
        policy: &TargetPolicy,
        dial: &DialConfig,
    ) -> Result<(), RelayError>
    where
        S: ChunkStream + Send,
    {
        let request = read_request(&mut stream, dial.request_timeout).await?;
        if request.command != Command::Expose {
            return serve_request(stream, request, policy, dial, peer.flows.as_ref()).await;
        }
        let register = match timeout(dial.request_timeout, Register::read_from(&mut stream)).await {
            Err(_) => return Err(RelayError::RequestTimeout),
            Ok(Err(e)) => {
                let _ = TunnelReply::failure(ReplyCode::GeneralFailure)
                    .write_to(&mut stream)
                    .await;
                let _ = stream.shutdown().await;
                return Err(RelayError::Expose(e));
            }
            Ok(Ok(r)) => r,
        };
        self.serve_registration(stream, peer, register).await;
        Ok(())
    }

    /// Claims the ports, answers, and holds the claims until the control stream ends.
    async fn serve_registration<S>(&self, mut stream: S, peer: &ExposePeer<O>, reg: Register)
    where
        S: ChunkStream + Send,
    {
        let (session, verdicts) = self.claim(&reg, peer);
        for (entry, v) in reg.entries.iter().zip(&verdicts) {
            match v.status {
                Status::Ok => {
                    info!(owner = %peer.owner, "expose {}:{} registered", entry.kind, entry.ports)
                }
                // The rule at fault, so that the operator sees which one to change.
                Status::NotAllowed => {
                    let rule = match &peer.allowed {
                        Some(own) => format!("{}'s expose_ports {own}", peer.owner),
                        None => format!("the server's expose_ports {}", self.inner.config.allowed),
                    };
                    info!(
                        owner = %peer.owner,
                        "expose {}:{} refused at port {}: outside {rule}",
                        entry.kind, entry.ports, v.port
                    )
                }
                status => info!(
                    owner = %peer.owner,
                    "expose {}:{} refused at port {}: {status:?}",
                    entry.kind, entry.ports, v.port
                ),
            }
        }
        let mut reply = TunnelReply {
            code: ReplyCode::Succeeded,
            bound: TargetAddr::unspecified(),
        }
        .encode();
        reply.extend_from_slice(&encode_verdicts(&verdicts));
        let granted = verdicts.iter().any(|v| v.status == Status::Ok);
        if stream.write_all(&reply).await.is_ok() && granted {
            // The registration holds until the client finishes the stream or the connection
            // ends; anything the client sends meanwhile is ignored.
            let mut buf = [0u8; 64];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
        let _ = stream.shutdown().await;
        self.release(session);
        debug!(owner = %peer.owner, session, "expose registration ended");
    }

    /// Decides every entry of a registration and commits the granted ones.
    fn claim(&self, reg: &Register, peer: &ExposePeer<O>) -> (u64, Vec<Verdict>) {
        let mut table = self.lock();
        let session = table.next_session;
        table.next_session += 1;
        let verdicts = reg
            .entries
            .iter()
            .map(|entry| self.claim_entry(&mut table, entry, reg.instance, session, peer))
            .collect();
        (session, verdicts)
    }

    /// All of an entry's ports or none: checks first, binds the free ports, then commits.
    fn claim_entry(
        &self,
        table: &mut Table<O>,
        entry: &Entry,
        instance: u64,
        session: u64,
        peer: &ExposePeer<O>,
    ) -> Verdict {
        let refuse = |status, port| Verdict { status, port };
        let allowed = peer
            .allowed
            .as_deref()
            .unwrap_or(&self.inner.config.allowed);
        for port in entry.ports.ports() {
            if !allowed.contains(port) {
                return refuse(Status::NotAllowed, port);
            }
            if let Some(claim) = table.claims.get(&(entry.kind, port))
                && claim.owner != peer.owner
            {
                return refuse(Status::HeldByOther, port);
            }
        }
        let mut bound = Vec::new();
        for port in entry.ports.ports() {
            if table.claims.contains_key(&(entry.kind, port)) {
                continue;
            }
            match self.bind(entry.kind, port) {
                Ok(socket) => bound.push((port, socket)),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    return refuse(Status::InUse, port);
                }
                Err(e) => {
                    warn!(owner = %peer.owner, "cannot listen on {} port {port}: {e}", entry.kind);
                    return refuse(Status::BindFailed, port);
                }
            }
        }
        let stats = Arc::new(ExposeStats::default());
        for port in entry.ports.ports() {
            if let Some(claim) = table.claims.get_mut(&(entry.kind, port)) {
                if claim.instance != instance {
                    info!(owner = %peer.owner, "{} port {port} taken over by a new client instance", entry.kind);
                    claim.sessions.clear();
                    claim.instance = instance;
                }
                claim
                    .sessions
                    .push((session, peer.opener.clone(), peer.flows.clone()));
            }
        }
        for (port, socket) in bound {
            let listener = match self.spawn_listener(entry.kind, port, socket, &stats) {
                Ok(handle) => handle,
                Err(e) => {
                    warn!(owner = %peer.owner, "cannot listen on {} port {port}: {e}", entry.kind);
                    continue;
                }
            };
            table.claims.insert(
                (entry.kind, port),
                Claim {
                    owner: Arc::clone(&peer.owner),
                    instance,
                    sessions: vec![(session, peer.opener.clone(), peer.flows.clone())],
                    turn: 0,
                    listener,
                    stats: Arc::clone(&stats),
                    ports: entry.ports,
                },
            );
        }
        Verdict {
            status: Status::Ok,
            port: entry.ports.first(),
        }
    }

    /// Binds the visitor socket for a port (synchronously, under the table lock, so that two
    /// registrations cannot race for it).
    fn bind(&self, kind: ExposeKind, port: u16) -> io::Result<Bound> {
        let addr = SocketAddr::new(self.inner.config.bind, port);
        Ok(match kind {
            ExposeKind::Tcp => {
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                // Like std's listeners: a port whose last connections linger in TIME_WAIT
                // can be listened on again at once (a client re-registering after a restart).
                socket.set_reuseaddr(true)?;
                socket.bind(addr)?;
                // A burst of visitors must not overflow the accept queue (std's default is
                // 128); the kernel caps this at net.core.somaxconn.
                Bound::Tcp(socket.listen(LISTEN_BACKLOG)?)
            }
            ExposeKind::Udp => {
                let s = std::net::UdpSocket::bind(addr)?;
                s.set_nonblocking(true)?;
                Bound::Udp(s)
            }
        })
    }

    fn spawn_listener(
        &self,
        kind: ExposeKind,
        port: u16,
        socket: Bound,
        stats: &Arc<ExposeStats>,
    ) -> io::Result<AbortHandle> {
        let server = self.clone();
        let stats = Arc::clone(stats);
        let handle = match socket {
            Bound::Tcp(listener) => {
                tokio::spawn(server.accept_tcp(listener, port, stats)).abort_handle()
            }
            Bound::Udp(s) => {
                let socket = UdpSocket::from_std(s)?;
                tokio::spawn(server.relay_udp(socket, port, stats)).abort_handle()
            }
        };
        debug!("listening for {kind} visitors on port {port}");
        Ok(handle)
    }

    /// Drops a session from every port; ports left without a session are closed.
    fn release(&self, session: u64) {
        let mut table = self.lock();
        table.claims.retain(|(kind, port), claim| {
            claim.sessions.retain(|(s, _, _)| *s != session);
            if claim.sessions.is_empty() {
                claim.listener.abort();
                info!(owner = %claim.owner, "{kind} port {port} released: listener closed");
                false
            } else {
                true
            }
        });
    }

    /// The session to send the next visitor of a port to (round-robin): its opener and its
    /// connection's flows.
    fn pick(&self, kind: ExposeKind, port: u16) -> Option<(O, Option<FlowMux>)> {
        let mut table = self.lock();
        let claim = table.claims.get_mut(&(kind, port))?;
        let n = claim.sessions.len();
        if n == 0 {
            return None;
        }
        claim.turn = claim.turn.wrapping_add(1);
        claim
            .sessions
            .get(claim.turn % n)
            .map(|(_, o, f)| (o.clone(), f.clone()))
    }

    /// Per expose entry (ports registered together), its current figures.
    pub fn stats(&self) -> Vec<(Arc<str>, ExposeSnapshot)> {
        let table = self.lock();
        let mut seen: Vec<*const ExposeStats> = Vec::new();
        let mut out = Vec::new();
        let mut claims: Vec<_> = table.claims.iter().collect();
        claims.sort_by_key(|(k, _)| **k);
        for ((kind, _), claim) in claims {
            let ptr = Arc::as_ptr(&claim.stats);
            if seen.contains(&ptr) {
                continue;
            }
            seen.push(ptr);
            out.push((
                Arc::clone(&claim.owner),
                claim.stats.snapshot(*kind, claim.ports),
            ));
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table<O>> {
        self.inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn accept_tcp(self, listener: TcpListener, port: u16, stats: Arc<ExposeStats>) {
        loop {
            let (tcp, visitor) = crate::listen::accept(&listener).await;
            let server = self.clone();
            let stats = Arc::clone(&stats);
            tokio::spawn(async move {
                if let Err(e) = server.serve_tcp_visitor(tcp, visitor, port, stats).await {
                    debug!(%visitor, port, "tcp visitor: {e}");
                }
            });
        }
    }

    /// Opens a stream to the client and sends the header with the visitor's first bytes (as
    /// many as have arrived), then relays.
    async fn serve_tcp_visitor(
        &self,
        tcp: TcpStream,
        visitor: SocketAddr,
        port: u16,
        stats: Arc<ExposeStats>,
    ) -> io::Result<()> {
        let Some((opener, _)) = self.pick(ExposeKind::Tcp, port) else {
            return Ok(());
        };
        let _guard = stats.visitor();
        let destination = tcp.local_addr()?;
        let mut stream = match opener.open().await {
            Ok(stream) => stream,
            Err(e) => {
                // The visitor is turned away: a reset, so that it cannot take the close for
                // an empty answer.
                warn!(%visitor, port, "expose visitor dropped: cannot open a stream to the client: {e}");
                pump::abort_tcp(tcp);
                return Err(e);
            }
        };
        let mut flight = Vec::with_capacity(64 + FIRST_FLIGHT);
        VisitorHeader {
            kind: ExposeKind::Tcp,
            port,
            source: visitor,
            destination,
            flow: None,
        }
        .encode(&mut flight);
        let head = flight.len();
        flight.resize(head + FIRST_FLIGHT, 0);
        let first = match tcp.try_read(flight.get_mut(head..).unwrap_or_default()) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        flight.truncate(head + first);
        stats.add_to_service(first as u64);
        if let Err(e) = stream.write_all(&flight).await {
            pump::abort_tcp(tcp);
            return Err(e);
        }
        drop(flight);
        let mut tcp = counted(tcp, stats, Side::Visitor);
        if let Err(e) = pump::relay_stream(&mut tcp, stream).await {
            // The client reset the stream (it could not reach its service, or lost the
            // connection) or the visitor reset: the visitor gets a reset, never a clean end
            // that would make a cut-off answer look complete.
            if let Err(e) = tcp.get_ref().set_zero_linger() {
                debug!("cannot set SO_LINGER 0 before a reset: {e}");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Receives datagrams on a UDP port and gives each visitor address its own stream.
    async fn relay_udp(self, socket: UdpSocket, port: u16, stats: Arc<ExposeStats>) {
        let destination = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(self.inner.config.bind, port));
        let udp = Arc::new(UdpPort {
            socket,
            destination,
            port,
            stats,
            visitors: Mutex::default(),
        });
        let mut buf = vec![0u8; datagram::MAX_DATAGRAM];
        loop {
            let (n, visitor) = match udp.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some systems.
                    debug!(port, "udp receive: {e}");
                    continue;
                }
            };
            let payload = buf.get(..n).unwrap_or_default().to_vec();
            let known = udp.visitors().get(&visitor).cloned();
            let payload = match known {
                None => payload,
                Some(tx) => match tx.try_send(payload) {
                    // A full queue drops the datagram, as a congested UDP path would.
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => continue,
                    // The visitor's relay just ended: a new one starts with this datagram.
                    Err(mpsc::error::TrySendError::Closed(p)) => p,
                },
            };
            self.start_udp_visitor(&udp, visitor, payload);
        }
    }

    /// Opens a stream for a new UDP visitor and relays its datagrams until it is idle.
    fn start_udp_visitor(&self, udp: &Arc<UdpPort>, visitor: SocketAddr, first: Vec<u8>) {
        let Some((opener, flows)) = self.pick(ExposeKind::Udp, udp.port) else {
            return;
        };
        let (tx, rx) = mpsc::channel(UDP_QUEUE);
        udp.visitors().insert(visitor, tx.clone());
        let udp = Arc::clone(udp);
        let idle = self.inner.config.udp_idle_timeout;
        tokio::spawn(async move {
            let header = VisitorHeader {
                kind: ExposeKind::Udp,
                port: udp.port,
                source: visitor,
                destination: udp.destination,
                flow: None,
            };
            if let Err(e) = udp_visitor(opener, flows, header, first, rx, &udp, idle).await {
                debug!(%visitor, port = udp.port, "udp visitor: {e}");
            }
            let mut map = udp.visitors();
            if map.get(&visitor).is_some_and(|t| t.same_channel(&tx)) {
                map.remove(&visitor);
            }
        });
    }
}

/// A UDP port's socket and its visitors, each with the queue towards its stream.
struct UdpPort {
    socket: UdpSocket,
    destination: SocketAddr,
    port: u16,
    stats: Arc<ExposeStats>,
    visitors: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
}

impl UdpPort {
    fn visitors(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>> {
        self.visitors.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One UDP visitor: its stream to the client, datagrams both ways, ended when idle. When the
/// client's connection takes datagrams, the visitor gets a flow and its datagrams go as
/// transport datagrams (a lost one stays lost); otherwise they are framed on the stream.
async fn udp_visitor<O: StreamOpener>(
    opener: O,
    flows: Option<FlowMux>,
    mut header: VisitorHeader,
    first: Vec<u8>,
    rx: mpsc::Receiver<Vec<u8>>,
    udp: &UdpPort,
    idle: Duration,
) -> io::Result<()> {
    let _guard = udp.stats.visitor();
    let stream = opener.open().await?;
    let flow = flows
        .filter(FlowMux::usable)
        .and_then(|mux| mux.open_from_server());
    match flow {
        Some((id, tx, frx)) => {
            header.flow = Some(id);
            udp_visitor_on_flow(stream, header, first, rx, (tx, frx), udp, idle).await
        }
        None => udp_visitor_on_stream(stream, header, first, rx, udp, idle).await,
    }
}

/// A UDP visitor whose datagrams ride a flow; its stream carries the header and then only
/// marks the visitor's lifetime (the client finishing or resetting it ends the visitor).
async fn udp_visitor_on_flow<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    header: VisitorHeader,
    first: Vec<u8>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    (tx, mut frx): (FlowTx, FlowRx),
    udp: &UdpPort,
    idle: Duration,
) -> io::Result<()> {
    let (socket, stats) = (&udp.socket, &udp.stats);
    let visitor = header.source;
    let tag = TargetAddr::Ip(visitor);
    let (mut r, mut w) = tokio::io::split(stream);
    let mut head = Vec::with_capacity(64);
    header.encode(&mut head);
    w.write_all(&head).await?;
    // Sent right behind the header: the client keeps it until it has attached the flow.
    let send = |d: &[u8]| match tx.send(&tag, d) {
        Ok(()) => {
            stats.add_to_service(d.len() as u64);
            Ok(())
        }
        // Larger than the client accepts: dropped, as a too-large UDP datagram would be.
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        Err(e) => Err(e),
    };
    send(&first)?;
    let activity = Activity::new();
    let up = async {
        while let Some(d) = rx.recv().await {
            activity.touch();
            send(&d)?;
        }
        io::Result::Ok(())
    };
    let down = async {
        // `None`: the connection has ended.
        while let Some((_, payload)) = frx.recv().await {
            activity.touch();
            stats.add_to_visitors(payload.len() as u64);
            // A full socket buffer drops the datagram, as UDP would.
            let _ = socket.send_to(&payload, visitor).await;
        }
        io::Result::Ok(())
    };
    let ended = async {
        let mut sink = [0u8; 64];
        while r.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let result = tokio::select! {
        r = up => r,
        r = down => r,
        r = ended => r,
        () = activity.idle_for(idle) => Ok(()),
    };
    let _ = w.shutdown().await;
    result
}

/// A UDP visitor whose datagrams are framed on its stream (a client connection without
/// datagrams).
async fn udp_visitor_on_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    header: VisitorHeader,
    first: Vec<u8>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    udp: &UdpPort,
    idle: Duration,
) -> io::Result<()> {
    let (socket, stats) = (&udp.socket, &udp.stats);
    let visitor = header.source;
    let (mut r, mut w) = tokio::io::split(stream);
    let mut flight = Vec::with_capacity(64 + first.len());
    header.encode(&mut flight);
    if datagram::frame(&first, &mut flight) {
        stats.add_to_service(first.len() as u64);
    }
    w.write_all(&flight).await?;
    let activity = Activity::new();
    let up = async {
        while let Some(d) = rx.recv().await {
            activity.touch();
            stats.add_to_service(d.len() as u64);
            datagram::send(&mut w, &d).await?;
        }
        io::Result::Ok(())
    };
    let down = async {
        let mut buf = Vec::new();
        while datagram::recv(&mut r, &mut buf).await? {
            activity.touch();
            stats.add_to_visitors(buf.len() as u64);
            // A full socket buffer drops the datagram, as UDP would.
            let _ = socket.send_to(&buf, visitor).await;
        }
        io::Result::Ok(())
    };
    tokio::select! {
        r = up => r,
        r = down => r,
        () = activity.idle_for(idle) => Ok(()),
    }
}
