//! The TLS carrier: gaptun datagrams framed over TLS 1.3 on TCP (port 443 by default).
//!
//! Framing: each datagram is a 2-byte big-endian length and the datagram. A client opens several
//! TCP connections at once (`--tls-connections`, like kcptun's `-conn`) and each sends the
//! client's token first (see [`crate::auth`]); the server groups connections with the same
//! session id into one peer, and every connection of a session takes the next outgoing datagram
//! when it is free, so one connection stalled by a TCP retransmission holds up only what it took.
//!
//! TCP delivers everything, so this carrier reports itself reliable: the gaptun core on it does
//! no loss detection, retransmission or congestion control of its own (see docs/protocol.md),
//! and the carrier never drops a datagram: when its queue is full, the driver waits.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use gaptun_runtime::{Carrier, CarrierTransmit, RecvMeta};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::auth::{Keys, SessionId, TOKEN_LEN, new_session};
use crate::cert::CertKey;
use crate::hub::{Attached, Hub, MAX_INBOUND_BATCH};
use crate::probe::{self, Decoy};
use crate::{CarrierError, tls_config};

/// Bytes of outgoing datagrams queued per session before the driver waits: enough to keep
/// several TCP connections busy between two driver turns.
const QUEUE_BYTES: usize = 1024 * 1024;

/// Most bytes one connection writes in one go (datagrams batched into one TLS write).
const WRITE_BATCH: usize = 64 * 1024;

/// Received batches (each up to `MAX_INBOUND_BATCH` bytes) waiting for the driver: about
/// 512 KiB, so that a driver behind holds up TCP (and so the sender) instead of queueing
/// megabytes here.
const INBOUND_BATCHES: usize = 32;

/// Least free room a read is given: the plaintext of one full TLS record, which is the most
/// one read returns. A frame longer than that gets room for all of it (see `carry`).
///
/// Reserving room for the longest frame (64 KiB) before every read, as before, made the
/// read buffer allocate afresh at nearly every record: the datagrams cut out of it keep the
/// old allocation shared, so a `reserve` that cannot fit in what is left cannot reuse it.
const READ_ROOM: usize = 16 * 1024;

/// Bytes read from the TCP socket at once, below the TLS layer.
///
/// rustls reads its records 4 KiB at a time: at 1 Gbit/s that is 30 000 `read` calls a
/// second per direction, each a system call. A buffer of this size under it turns four to
/// sixteen of them into one, for one more copy of each byte in memory (cheaper than the
/// calls). Costs this much memory per TCP connection.
const SOCKET_READ: usize = 64 * 1024;

/// The carrier's TCP socket, with reads buffered (see [`SOCKET_READ`]); writes go straight
/// through (rustls already hands them over in large vectored batches).
type Tcp = BufReader<TcpStream>;

fn buffered(tcp: TcpStream) -> Tcp {
    BufReader::with_capacity(SOCKET_READ, tcp)
}

/// Unsent bytes a connection's kernel send buffer may hold (`TCP_NOTSENT_LOWAT`); what is
/// sent but not yet acknowledged does not count, so TCP still fills the path.
///
/// Without it the kernel buffers megabytes per connection. Datagrams then wait there instead
/// of in the session's shared queue, and the connections of one session drift apart by up to
/// a buffer's worth: more than the gaptun core's replay window (4096 packets), so datagrams of
/// the connection behind arrived as "too old" and were dropped, each loss costing the
/// reliable carrier's 1 s timeout. Queueing in the kernel also added its delay to every ACK.
const UNSENT_LIMIT: u32 = 128 * 1024;

/// Sets [`UNSENT_LIMIT`] where the system has it (Linux); elsewhere the kernel's default stays.
fn limit_unsent(tcp: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(UNSENT_LIMIT) {
        tracing::debug!("TCP_NOTSENT_LOWAT: {e}");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = tcp;
}

/// TCP congestion controller asked for on the carrier's connections, where the system has it.
///
/// On this carrier TCP's controller is the only one (the gaptun core adds none on a reliable
/// carrier), and the paths gaptun is for lose packets at random: a loss-based controller such
/// as cubic halves its window on each such loss (under 2 Mbit/s at 1 % loss and 100 ms), BBR
/// paces at the measured bottleneck rate.
#[cfg(any(target_os = "linux", target_os = "android"))]
const TCP_CONGESTION: &[u8] = b"bbr";

/// Asks for [`TCP_CONGESTION`] on `tcp` (Linux); without it (module missing, not allowed to
/// an unprivileged process) the system's default controller stays.
fn prefer_bbr(tcp: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_congestion(TCP_CONGESTION) {
        tracing::debug!("TCP_CONGESTION bbr: {e}");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = tcp;
}

/// A TCP connect plus TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server waits for a client's first bytes before treating it as a prober.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits between reconnection attempts of a client connection: from the first, doubling to the
/// last.
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A client of the TLS carrier.
#[derive(Debug, Clone)]
pub struct TlsClientConfig {
    /// The server's address.
    pub server: SocketAddr,
    /// The name sent as SNI.
    pub sni: String,
    /// TCP connections kept open at once (at least 1).
    pub connections: usize,
    /// The client's gaptun key, for its token.
    pub keys: Keys,
}

/// A server of the TLS carrier.
#[derive(Debug)]
pub struct TlsServerConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The certificate presented.
    pub cert: CertKey,
    /// The gaptun keys accepted.
    pub keys: Keys,
    /// Where non-gaptun clients go.
    pub decoy: Decoy,
}

/// gaptun datagrams over TLS 1.3 over TCP. Its tasks end when it is dropped.
#[derive(Debug)]
pub struct TlsCarrier {
    hub: Arc<Hub>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TlsCarrier {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl TlsCarrier {
    /// Connects to a server: the first connection is made here (its failure is returned), the
    /// others, and replacements for any that drop, in the background.
    pub async fn connect(config: TlsClientConfig) -> Result<Self, CarrierError> {
        let connector = TlsConnector::from(Arc::new(tls_config::client(&[b"h2", b"http/1.1"])?));
        let sni = ServerName::try_from(config.sni.clone())
            .map_err(|e| CarrierError::Tls(format!("SNI {}: {e}", config.sni)))?;
        let session = new_session();
        let token = config
            .keys
            .token(&session)
            .ok_or_else(|| CarrierError::Tls("a client needs a key".into()))?;
        let first = connect_one(&connector, &sni, config.server, &token).await?;
        let local = first
            .get_ref()
            .0
            .get_ref()
            .local_addr()
            .map_err(|e| CarrierError::io("local address", e))?;
        let hub = Hub::new("tls", local, QUEUE_BYTES, INBOUND_BATCHES, true);
        // The first connection is attached before we return and hands its attachment to its
        // task: the first datagrams sent (a handshake Initial, at once) are queued for it.
        // Attached only in the task, they found the session without a connection whenever the
        // caller sent before that task ran (a loaded machine), were dropped as between
        // connections, and the handshake waited out its 1 s retransmission timeout.
        let first = (first, hub.attach(session, config.server));
        let slot = Slot {
            hub: Arc::clone(&hub),
            connector,
            sni,
            server: config.server,
            token,
            session,
        };
        let slot = Arc::new(slot);
        let mut tasks = vec![tokio::spawn(Arc::clone(&slot).run(Some(first)))];
        for _ in 1..config.connections.max(1) {
            tasks.push(tokio::spawn(Arc::clone(&slot).run(None)));
        }
        Ok(Self { hub, tasks })
    }

    /// Listens for clients.
    pub async fn listen(config: TlsServerConfig) -> Result<Self, CarrierError> {
        let tls = tls_config::server(config.cert, &[b"http/1.1"])?;
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| CarrierError::io(format!("TLS listen on {}", config.listen), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| CarrierError::io("local address", e))?;
        let hub = Hub::new("tls", local, QUEUE_BYTES, INBOUND_BATCHES, false);
        let server = Arc::new(Server {
            hub: Arc::clone(&hub),
            acceptor,
            keys: config.keys,
            decoy: config.decoy,
        });
        let task = tokio::spawn(server.accept_loop(listener));
        Ok(Self {
            hub,
            tasks: vec![task],
        })
    }

    /// Peers (client sessions, or the server) with at least one open connection now.
    pub fn sessions(&self) -> usize {
        self.hub.session_count()
    }
}

/// One of a client's connections, made again whenever it drops.
struct Slot {
    hub: Arc<Hub>,
    connector: TlsConnector,
    sni: ServerName<'static>,
    server: SocketAddr,
    token: [u8; TOKEN_LEN],
    session: SessionId,
}

type ClientStream = tokio_rustls::client::TlsStream<Tcp>;

impl Slot {
    /// Carries the session on one connection after another; `first`: a connection already
    /// made, with its attachment.
    async fn run(self: Arc<Self>, mut first: Option<(ClientStream, Attached)>) {
        let mut wait = RECONNECT_FIRST;
        loop {
            let current = match first.take() {
                Some(s) => Ok(s),
                None => connect_one(&self.connector, &self.sni, self.server, &self.token)
                    .await
                    .map(|s| (s, self.hub.attach(self.session, self.server))),
            };
            match current {
                Ok((s, attached)) => {
                    wait = RECONNECT_FIRST;
                    let reason = carry(&self.hub, &attached, s).await;
                    tracing::debug!(server = %self.server, "TLS carrier connection closed: {reason}");
                }
                Err(e) => tracing::debug!(server = %self.server, "TLS carrier connect: {e}"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RECONNECT_MAX);
        }
    }
}

async fn connect_one(
    connector: &TlsConnector,
    sni: &ServerName<'static>,
    server: SocketAddr,
    token: &[u8; TOKEN_LEN],
) -> Result<ClientStream, CarrierError> {
    let attempt = async {
        let tcp = TcpStream::connect(server)
            .await
            .map_err(|e| CarrierError::io(format!("TCP connect to {server}"), e))?;
        tcp.set_nodelay(true)
            .map_err(|e| CarrierError::io("TCP_NODELAY", e))?;
        limit_unsent(&tcp);
        prefer_bbr(&tcp);
        let mut tls = connector
            .connect(sni.clone(), buffered(tcp))
            .await
            .map_err(|e| CarrierError::io(format!("TLS handshake with {server}"), e))?;
        tls.write_all(token)
            .await
            .map_err(|e| CarrierError::io("sending the token", e))?;
        tls.flush()
            .await
            .map_err(|e| CarrierError::io("sending the token", e))?;
        Ok(tls)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .map_err(|_| {
            CarrierError::io(
                format!("TLS connect to {server}"),
                io::ErrorKind::TimedOut.into(),
            )
        })?
}

struct Server {
    hub: Arc<Hub>,
    acceptor: TlsAcceptor,
    keys: Keys,
    decoy: Decoy,
}

impl Server {
    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        // Connection tasks live in the set, so they end with the carrier's accept task.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        connections.spawn(Arc::clone(&self).serve(tcp, peer));
                    }
                    Err(e) => {
                        tracing::debug!("TLS carrier accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }

    async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        limit_unsent(&tcp);
        prefer_bbr(&tcp);
        let accept = self.acceptor.accept(buffered(tcp));
        let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake: {e}");
                return;
            }
            Err(_) => return,
        };
        let Some(first) = read_first(&mut tls).await else {
            return;
        };
        match self.keys.verify(&first) {
            Some(session) => {
                let attached = self.hub.attach(session, peer);
                let reason = carry(&self.hub, &attached, tls).await;
                tracing::debug!(%peer, "TLS carrier connection closed: {reason}");
            }
            None => probe::serve(&self.decoy, tls, first).await,
        }
    }
}

/// Reads up to a token's length of a client's first bytes, as many as come before
/// [`FIRST_BYTES_TIMEOUT`]; `None` when it closes first.
pub(crate) async fn read_first<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut first = vec![0u8; TOKEN_LEN];
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + FIRST_BYTES_TIMEOUT;
    while got < TOKEN_LEN {
        match tokio::time::timeout_at(deadline, stream.read(&mut first[got..])).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => got += n,
            Err(_) => break,
        }
    }
    first.truncate(got);
    Some(first)
}

/// Carries a session's datagrams on one connection until it fails; returns why it ended.
async fn carry<S>(hub: &Hub, attached: &Attached, stream: S) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut read, mut write) = tokio::io::split(stream);
    let reader = async {
        // Datagrams are cut out of the read buffer as slices of it (no allocation or copy per
        // datagram), and all those one read completed go to the driver as one batch.
        let mut buf = BytesMut::new();
        loop {
            let mut batch = VecDeque::new();
            let mut batch_bytes = 0;
            while batch_bytes < MAX_INBOUND_BATCH {
                let Some(header) = buf.get(..2) else { break };
                let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
                if buf.len() < 2 + len {
                    break;
                }
                buf.advance(2);
                let datagram = buf.split_to(len).freeze();
                if len > 0 {
                    batch_bytes += len;
                    batch.push_back(datagram);
                }
            }
            if !batch.is_empty() {
                if !hub.deliver(attached.addr, batch).await {
                    return "carrier dropped".to_string();
                }
                continue;
            }
            // Room for the rest of a long frame begun, else for one TLS record.
            let frame_rest = match buf.get(..2) {
                Some(h) => {
                    (2 + usize::from(u16::from_be_bytes([h[0], h[1]]))).saturating_sub(buf.len())
                }
                None => 0,
            };
            buf.reserve(frame_rest.max(READ_ROOM));
            match read.read_buf(&mut buf).await {
                Ok(0) => return "read: closed".to_string(),
                Ok(_) => {}
                Err(e) => return format!("read: {e}"),
            }
        }
    };
    let writer = async {
        loop {
            // Whole frames, already framed: written as they are, one TLS write per batch.
            let Some(batch) = attached.queue.pop_batch(WRITE_BATCH).await else {
                return "session closed".to_string();
            };
            if let Err(e) = write.write_all(&batch).await {
                return format!("write: {e}");
            }
            if let Err(e) = write.flush().await {
                return format!("write: {e}");
            }
        }
    };
    tokio::select! {
        reason = reader => reason,
        reason = writer => reason,
    }
}

/// The largest datagram to any peer over a TLS connection: see `TlsCarrier::route_mtu`.
fn stream_ceiling(_peer: SocketAddr) -> Option<u16> {
    Some(gaptun_runtime::proto::MAX_UDP_PAYLOAD)
}

impl Carrier for TlsCarrier {
    fn kind(&self) -> &'static str {
        self.hub.kind
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.hub.local)
    }

    /// Segmented transmits are queued whole (see `Hub::try_send`), so the driver never splits
    /// one for us, and UDP carriers beside us keep their GSO batches.
    fn max_transmit_segments(&self) -> usize {
        crate::hub::MAX_SEGMENTS
    }

    fn reliable(&self) -> bool {
        true
    }

    /// A datagram on this carrier is one frame in a TCP stream, which TCP cuts into its own
    /// segments: nothing on the route limits its size but the frame's 16-bit length. So the
    /// answer is the protocol's largest payload for every peer, and a connection on TLS
    /// alone grows its datagrams to 64 KB as on loopback UDP (path MTU discovery confirms
    /// them at once over TCP). Each datagram costs a seal, a frame, a queue entry and a pass
    /// through the core: at the 1472-byte ceiling of a carrier without a route these
    /// per-datagram costs made TLS use 2.5 × UDP's CPU per byte on loopback. Beside a UDP or
    /// fake-TCP carrier (`--carrier auto`) their route's answer is the smaller and stays the
    /// ceiling, since a connection may move to them later; the peer's own ceiling (exchanged
    /// in the handshake) bounds it too.
    fn route_mtu(&self) -> Option<gaptun_runtime::proto::RouteMtuQuery> {
        Some(stream_ceiling)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.hub.poll_recv(cx, bufs, meta)
    }

    fn try_send(&self, transmit: &CarrierTransmit<'_>) -> io::Result<()> {
        self.hub.try_send(transmit)
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.hub.poll_writable(cx)
    }
}
