//! The client side of expose: registration on each connection, and the visitors' streams.
//!
//! The client only ever dials the LOCAL of an expose it registered and the server accepted:
//! the visitor header names a transport and a server port, and a stream naming anything else
//! is dropped (reset) without a dial. LOCAL is the operator's choice on the client host.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::datagram;
use super::proxy_header;
use super::spec::{ExposeKind, ExposeSpec};
use super::stats::{ExposeSnapshot, ExposeStats, Side, counted};
use super::wire::{Entry, MAX_ENTRIES, Register, Status, VisitorHeader, WireError, read_verdicts};
use crate::addr::TargetAddr;
use crate::flow::{FlowMux, FlowRx, FlowTx};
use crate::idle::Activity;
use crate::listen::{self, LogLimiter};
use crate::pump::{self, ChunkStream};
use crate::request::{Command, ReplyCode, RequestError, TunnelReply, TunnelRequest};
use crate::tunnel::{StreamAcceptor, StreamOpener};

/// Client settings for expose.
#[derive(Debug, Clone)]
pub struct ExposeClientConfig {
    /// How long dialling LOCAL may take.
    pub connect_timeout: Duration,
    /// How long the server may take to answer a registration, and a visitor stream to
    /// deliver its header.
    pub reply_timeout: Duration,
    /// A UDP visitor with no datagram either way for this long is forgotten.
    pub udp_idle_timeout: Duration,
}

impl Default for ExposeClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(30),
            udp_idle_timeout: Duration::from_secs(120),
        }
    }
}

/// Why exposing could not start or a registration failed.
#[derive(Debug, Error)]
pub enum ExposeError {
    /// No expose given.
    #[error("no expose given")]
    Empty,
    /// More exposes than one registration carries.
    #[error("{0} exposes given, at most {MAX_ENTRIES} are supported")]
    TooMany(usize),
    /// Two exposes claim the same server port.
    #[error("exposes {0} and {1} both use a server port")]
    Overlap(String, String),
    /// The control stream could not be opened or written.
    #[error("cannot open the expose control stream: {0}")]
    Open(#[source] io::Error),
    /// The server answered the request with a refusal (an older server: "command not
    /// supported").
    #[error("the server refused to register exposes: {0}")]
    Rejected(ReplyCode),
    /// The server's answer was malformed.
    #[error("bad answer from the server: {0}")]
    Reply(String),
    /// The server did not answer in time.
    #[error("no answer from the server to the expose registration")]
    Timeout,
}

impl From<RequestError> for ExposeError {
    fn from(e: RequestError) -> Self {
        Self::Reply(e.to_string())
    }
}

impl From<WireError> for ExposeError {
    fn from(e: WireError) -> Self {
        Self::Reply(e.to_string())
    }
}

/// An expose the server refused, with the port at fault: one line for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The expose as given.
    pub spec: ExposeSpec,
    /// The port the server names.
    pub port: u16,
    /// Why.
    pub status: Status,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, port) = (self.spec.kind, self.port);
        write!(f, "expose {}: ", self.spec)?;
        match self.status {
            Status::NotAllowed => write!(
                f,
                "{kind} port {port} is not allowed by the server (outside its expose_ports)"
            ),
            Status::InUse => write!(
                f,
                "{kind} port {port} is in use on the server by another program"
            ),
            Status::HeldByOther => write!(
                f,
                "{kind} port {port} is held on the server by another user"
            ),
            Status::BindFailed => write!(f, "the server cannot listen on {kind} port {port}"),
            Status::Ok => write!(f, "{kind} port {port} accepted"),
        }
    }
}

/// The client's exposes, registered on every connection it is given.
#[derive(Debug, Clone)]
pub struct ExposeClient {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    specs: Vec<ExposeSpec>,
    stats: Vec<Arc<ExposeStats>>,
    instance: u64,
    config: ExposeClientConfig,
}

impl ExposeClient {
    /// Checks the exposes (at least one, at most [`MAX_ENTRIES`], no server port twice for one
    /// transport) and picks this client's instance number.
    pub fn new(specs: Vec<ExposeSpec>, config: ExposeClientConfig) -> Result<Self, ExposeError> {
        if specs.is_empty() {
            return Err(ExposeError::Empty);
        }
        if specs.len() > MAX_ENTRIES {
            return Err(ExposeError::TooMany(specs.len()));
        }
        for (i, a) in specs.iter().enumerate() {
            for b in specs.iter().skip(i + 1) {
                let overlap = a.kind == b.kind
                    && a.remote.first() <= b.remote.last()
                    && b.remote.first() <= a.remote.last();
                if overlap {
                    return Err(ExposeError::Overlap(a.to_string(), b.to_string()));
                }
            }
        }
        let stats = specs.iter().map(|_| Arc::default()).collect();
        Ok(Self {
            inner: Arc::new(ClientInner {
                specs,
                stats,
                instance: random_instance(),
                config,
            }),
        })
    }

    /// The exposes as given, in the order of [`ExposeClient::stats`].
    pub fn specs(&self) -> &[ExposeSpec] {
        &self.inner.specs
    }

    /// The exposes with their figures.
    pub fn stats(&self) -> Vec<ExposeSnapshot> {
        self.inner
            .specs
            .iter()
            .zip(&self.inner.stats)
            .map(|(spec, stats)| stats.snapshot(spec.kind, spec.remote))
            .collect()
    }

    /// Registers every expose on `conn`. The registration holds while the returned value is
    /// served ([`Registration::serve`]); refused exposes are listed in it.
    pub async fn register<C>(&self, conn: C) -> Result<Registration<C>, ExposeError>
    where
        C: StreamOpener,
    {
        let register = Register {
            instance: self.inner.instance,
            entries: self
                .inner
                .specs
                .iter()
                .map(|s| Entry {
                    kind: s.kind,
                    ports: s.remote,
                    proxy: s.proxy,
                })
                .collect(),
        };
        let mut message = TunnelRequest {
            command: Command::Expose,
            target: TargetAddr::unspecified(),
        }
        .encode();
        message.extend_from_slice(&register.encode()?);
        let mut control = conn.open().await.map_err(ExposeError::Open)?;
        control
            .write_all(&message)
            .await
            .map_err(ExposeError::Open)?;
        let answer = async {
            let reply = TunnelReply::read_from(&mut control).await?;
            if reply.code != ReplyCode::Succeeded {
                return Err(ExposeError::Rejected(reply.code));
            }
            Ok(read_verdicts(&mut control, register.entries.len()).await?)
        };
        let verdicts = timeout(self.inner.config.reply_timeout, answer)
            .await
            .map_err(|_| ExposeError::Timeout)??;
        let granted: Arc<[bool]> = verdicts.iter().map(|v| v.status == Status::Ok).collect();
        let refusals = self
            .inner
            .specs
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| v.status != Status::Ok)
            .map(|(spec, v)| Refusal {
                spec: spec.clone(),
                port: v.port,
                status: v.status,
            })
            .collect();
        Ok(Registration {
            client: self.clone(),
            conn,
            control,
            granted,
            refusals,
        })
    }

    /// Registers on every connection that arrives on `conns` (the first one and each
    /// replacement after a reconnect) and serves it until it ends. Refusals and failures are
    /// logged. Returns when `conns` closes.
    pub async fn run<C>(&self, mut conns: mpsc::UnboundedReceiver<C>)
    where
        C: StreamOpener + StreamAcceptor,
    {
        while let Some(conn) = conns.recv().await {
            let client = self.clone();
            tokio::spawn(async move {
                match client.register(conn).await {
                    Ok(registration) => {
                        for refusal in registration.refusals() {
                            warn!("{refusal}");
                        }
                        registration.serve().await;
                    }
                    Err(e) => warn!("expose registration failed: {e}"),
                }
            });
        }
    }

    /// The expose a visitor header names, if it is one the server accepted from us.
    fn find(&self, granted: &[bool], h: &VisitorHeader) -> Option<usize> {
        self.inner
            .specs
            .iter()
            .enumerate()
            .find(|(i, s)| {
                granted.get(*i).copied().unwrap_or(false)
                    && s.kind == h.kind
                    && s.remote.contains(h.port)
            })
            .map(|(i, _)| i)
    }
}

/// A registration on one connection: serve it to receive visitors.
#[derive(Debug)]
pub struct Registration<C: StreamOpener> {
    client: ExposeClient,
    conn: C,
    control: C::Stream,
    granted: Arc<[bool]>,
    refusals: Vec<Refusal>,
}

impl<C: StreamOpener> Registration<C> {
    /// The exposes the server refused.
    pub fn refusals(&self) -> &[Refusal] {
        &self.refusals
    }

    /// Accepts visitor streams on the connection until it (or the registration) ends.
    pub async fn serve(self)
    where
        C: StreamAcceptor,
    {
        let Self {
            client,
            conn,
            mut control,
            granted,
            ..
        } = self;
        if !granted.iter().any(|g| *g) {
            return;
        }
        // The connection's datagram flows (shared with anything else on it that uses them),
        // for UDP visitors the server puts on a flow.
        let flows = conn.flows(&control);
        info!(
            "exposes registered: {}",
            client
                .inner
                .specs
                .iter()
                .zip(granted.iter())
                .filter(|(_, g)| **g)
                .map(|(s, _)| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let control_ended = async {
            let mut buf = [0u8; 64];
            while let Ok(n) = control.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::pin!(control_ended);
        loop {
            tokio::select! {
                stream = conn.accept() => {
                    let Some(stream) = stream else { break };
                    let client = client.clone();
                    let granted = Arc::clone(&granted);
                    let flows = flows.clone();
                    tokio::spawn(async move {
                        match client.serve_visitor(stream, &granted, flows.as_ref()).await {
                            Ok(()) => {}
                            // The visitor got nothing: the operator must hear of it.
                            Err(e @ VisitorError::Dial(..)) => log_dial_failure(&e),
                            Err(e) => debug!("expose visitor: {e}"),
                        }
                    });
                }
                () = &mut control_ended => {
                    debug!("the server ended the expose registration");
                    break;
                }
            }
        }
    }
}

/// Why a visitor stream was dropped.
#[derive(Debug, Error)]
enum VisitorError {
    #[error("bad visitor header: {0}")]
    Header(#[from] WireError),
    #[error("no visitor header in time")]
    Timeout,
    #[error("{0} port {1} is not one we exposed: stream reset")]
    NotOurs(ExposeKind, u16),
    #[error("the server put a UDP visitor on flow {0}, but this connection has no datagram flows")]
    NoFlows(u32),
    #[error("the server put a UDP visitor on flow {0}, which is already in use")]
    FlowTaken(u32),
    #[error("dialling {0}:{1} failed: {2}")]
    Dial(String, u16, #[source] io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl ExposeClient {
    async fn serve_visitor<S>(
        &self,
        mut stream: S,
        granted: &[bool],
        flows: Option<&FlowMux>,
    ) -> Result<(), VisitorError>
    where
        S: ChunkStream + Send,
    {
        let config = &self.inner.config;
        let header = timeout(config.reply_timeout, VisitorHeader::read_from(&mut stream))
            .await
            .map_err(|_| VisitorError::Timeout)??;
        let index = self
            .find(granted, &header)
            .ok_or(VisitorError::NotOurs(header.kind, header.port))?;
        let (Some(spec), Some(stats)) = (self.inner.specs.get(index), self.inner.stats.get(index))
        else {
            return Err(VisitorError::NotOurs(header.kind, header.port));
        };
        let Some((host, port)) = spec.local_for(header.port) else {
            return Err(VisitorError::NotOurs(header.kind, header.port));
        };
        let _guard = stats.visitor();
        match header.kind {
            ExposeKind::Tcp => {
                let mut local = dial_local(host, port, config.connect_timeout)
                    .await
                    .map_err(|e| VisitorError::Dial(host.to_owned(), port, e))?;
                let _ = local.set_nodelay(true);
                if let Some(version) = spec.proxy {
                    let h = proxy_header::header(version, header.source, header.destination);
                    local.write_all(&h).await?;
                }
                let local = counted(local, Arc::clone(stats), Side::Service);
                pump::relay_stream(local, stream).await?;
            }
            ExposeKind::Udp => {
                let target = resolve(host, port, config.connect_timeout)
                    .await
                    .map_err(|e| VisitorError::Dial(host.to_owned(), port, e))?;
                let bind: SocketAddr = if target.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                let socket = UdpSocket::bind(bind).await?;
                socket
                    .connect(target)
                    .await
                    .map_err(|e| VisitorError::Dial(host.to_owned(), port, e))?;
                let idle = config.udp_idle_timeout;
                match header.flow {
                    Some(id) => {
                        let flow = flows
                            .ok_or(VisitorError::NoFlows(id))?
                            .attach(id)
                            .ok_or(VisitorError::FlowTaken(id))?;
                        let tag = TargetAddr::Ip(header.source);
                        relay_udp_flow(stream, flow, &tag, &socket, stats, idle).await?;
                    }
                    None => relay_udp_visitor(stream, &socket, stats, idle).await?,
                }
            }
        }
        Ok(())
    }
}

/// Dials LOCAL for a TCP visitor, within `limit`. A failure is not tried again: when it is for
/// want of descriptors or ports, waiting to retry holds the visitor's own descriptors longer
/// and turned more visitors away under a burst (measured), and a LOCAL that refuses will
/// refuse again; the visitor gets a reset and can try again itself.
async fn dial_local(host: &str, port: u16, limit: Duration) -> io::Result<TcpStream> {
    timeout(limit, TcpStream::connect((host, port)))
        .await
        .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut)))
}

/// Dial failures: one warning line per [`listen::LOG_INTERVAL`] for the whole process, saying
/// how many it stands for (a service that is down would otherwise log one per visitor).
static DIAL_LOG: Mutex<LogLimiter> = Mutex::new(LogLimiter::new());

fn log_dial_failure(e: &VisitorError) {
    if let Some(held) = listen::limited(&DIAL_LOG) {
        warn!("expose visitor dropped: {e}{held}");
    }
}

/// Datagrams of one UDP visitor between its stream and the socket connected to LOCAL.
async fn relay_udp_visitor<S>(
    stream: S,
    socket: &UdpSocket,
    stats: &ExposeStats,
    idle: Duration,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let activity = Activity::new();
    let to_service = async {
        let mut buf = Vec::new();
        while datagram::recv(&mut r, &mut buf).await? {
            activity.touch();
            stats.add_to_service(buf.len() as u64);
            // LOCAL not listening (ICMP refused) or a full buffer: dropped, as UDP would.
            let _ = socket.send(&buf).await;
        }
        io::Result::Ok(())
    };
    let to_visitor = async {
        let mut buf = vec![0u8; datagram::MAX_DATAGRAM];
        loop {
            let n = recv_from_local(socket, &mut buf).await?;
            activity.touch();
            let payload = buf.get(..n).unwrap_or_default();
            stats.add_to_visitors(n as u64);
            datagram::send(&mut w, payload).await?;
        }
    };
    tokio::select! {
        r = to_service => r,
        r = to_visitor => r,
        () = activity.idle_for(idle) => Ok(()),
    }
}

/// Datagrams of one UDP visitor between its flow and the socket connected to LOCAL; the stream
/// only marks the visitor's lifetime. Ends when the server ends the stream, the connection
/// ends, or nothing moved for `idle` (then the stream is finished, which ends the server's
/// side too).
async fn relay_udp_flow<S>(
    stream: S,
    (tx, mut rx): (FlowTx, FlowRx),
    tag: &TargetAddr,
    socket: &UdpSocket,
    stats: &ExposeStats,
    idle: Duration,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let activity = Activity::new();
    let to_service = async {
        while let Some((_, payload)) = rx.recv().await {
            activity.touch();
            stats.add_to_service(payload.len() as u64);
            // LOCAL not listening (ICMP refused) or a full buffer: dropped, as UDP would.
            let _ = socket.send(&payload).await;
        }
        io::Result::Ok(())
    };
    let to_visitor = async {
        let mut buf = vec![0u8; datagram::MAX_DATAGRAM];
        loop {
            let n = recv_from_local(socket, &mut buf).await?;
            activity.touch();
            let payload = buf.get(..n).unwrap_or_default();
            match tx.send(tag, payload) {
                Ok(()) => stats.add_to_visitors(n as u64),
                // Larger than the server accepts: dropped, as a too-large datagram would be.
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
                Err(e) => return Err(e),
            }
        }
    };
    let ended = async {
        let mut sink = [0u8; 64];
        while r.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let result = tokio::select! {
        r = to_service => r,
        r = to_visitor => r,
        r = ended => r,
        () = activity.idle_for(idle) => Ok(()),
    };
    let _ = w.shutdown().await;
    result
}

/// The next datagram from LOCAL. A refused earlier datagram (ICMP, LOCAL not listening) is
/// reported on the connected socket as an error: skipped, as UDP would.
async fn recv_from_local(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match socket.recv(buf).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            other => return other,
        }
    }
}

/// The first address of `host:port` (names are resolved on the client).
async fn resolve(host: &str, port: u16, limit: Duration) -> io::Result<SocketAddr> {
    let lookup = timeout(limit, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let addrs: Vec<SocketAddr> = lookup.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "name has no address"))
}

/// A number telling this client process apart from an earlier one with the same key, so the
/// server hands the ports of a dead predecessor over at once. Not a secret.
fn random_instance() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(list: &[&str]) -> Vec<ExposeSpec> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn overlapping_exposes_are_refused_up_front() {
        let cfg = ExposeClientConfig::default;
        assert!(matches!(
            ExposeClient::new(vec![], cfg()),
            Err(ExposeError::Empty)
        ));
        let err = ExposeClient::new(specs(&["8000-8005=127.0.0.1:1", "8005=127.0.0.1:2"]), cfg())
            .unwrap_err();
        assert!(matches!(err, ExposeError::Overlap(..)), "{err}");
        // The same port over TCP and over UDP is fine.
        ExposeClient::new(specs(&["53=127.0.0.1:53", "udp:53=127.0.0.1:53"]), cfg()).unwrap();
    }

    #[test]
    fn refusals_read_as_one_line_naming_the_port() {
        let r = |status| {
            Refusal {
                spec: "8000-8001=127.0.0.1:80".parse().unwrap(),
                port: 8001,
                status,
            }
            .to_string()
        };
        assert_eq!(
            r(Status::NotAllowed),
            "expose tcp:8000-8001=127.0.0.1:80-81: tcp port 8001 is not allowed by the server \
             (outside its expose_ports)"
        );
        assert!(
            r(Status::InUse).ends_with("tcp port 8001 is in use on the server by another program")
        );
        assert!(
            r(Status::HeldByOther).ends_with("tcp port 8001 is held on the server by another user")
        );
    }

    #[test]
    fn instances_differ() {
        assert_ne!(random_instance(), random_instance());
    }
}
