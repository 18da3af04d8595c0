//! The server's UDP relay: datagrams framed on one tunnel stream, sent from local UDP sockets.
//!
//! One relay owns an IPv4 and (if the host has IPv6) an IPv6 ephemeral socket, so a client can
//! reach targets of both families through a single stream. Every destination is checked
//! against the policy, like TCP targets. Replies are only accepted from addresses the relay has
//! sent to, so the relay cannot be used to inject datagrams from arbitrary hosts (for example
//! from the server's private network) into the tunnel. The relay ends when the client finishes
//! the stream or nothing moved for the idle timeout.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::UdpSocket;
use tracing::{debug, info};

use super::{DialConfig, DialError, RelayError, resolve_allowed};
use crate::addr::TargetAddr;
use crate::flow::{FlowMux, FlowRx, FlowTx};
use crate::idle::Activity;
use crate::policy::TargetPolicy;
use crate::request::{ReplyCode, TunnelReply, encode_udp_frame, read_udp_frame};

/// Most peers a relay remembers as "contacted"; beyond that the set starts over.
const MAX_PEERS: usize = 4096;
/// Most resolved names a relay caches.
const MAX_CACHED_NAMES: usize = 256;
/// Distinct refused destinations a relay logs at INFO; later ones only at DEBUG, so a client
/// spraying datagrams at refused addresses cannot flood the log.
const MAX_LOGGED_REFUSALS: usize = 16;
/// Largest UDP datagram we receive.
const MAX_DATAGRAM: usize = 65535;
/// Receive errors in a row after which the relay gives up (a socket that keeps failing).
const MAX_RECV_ERRORS: u32 = 64;

/// The relay's sockets, one per address family that could be bound.
struct Sockets {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

/// State both directions of a relay touch.
struct Shared {
    sockets: Sockets,
    /// Destinations we sent to; only they may send datagrams back.
    peers: Mutex<HashSet<SocketAddr>>,
    /// When a datagram last moved, for the idle timeout.
    activity: Activity,
}

impl Shared {
    fn touch(&self) {
        self.activity.touch();
    }

    fn remember_peer(&self, peer: SocketAddr) {
        if let Ok(mut peers) = self.peers.lock() {
            if peers.len() >= MAX_PEERS && !peers.contains(&peer) {
                peers.clear();
            }
            peers.insert(peer);
        }
    }

    fn is_peer(&self, peer: &SocketAddr) -> bool {
        self.peers.lock().is_ok_and(|peers| peers.contains(peer))
    }

    /// The next datagram from a contacted peer: its length in `buf` and its source. Datagrams
    /// from anyone else are dropped. Receive errors are skipped (ICMP errors such as port
    /// unreachable surface here on some systems) unless [`MAX_RECV_ERRORS`] come in a row,
    /// which means the socket itself is failing.
    async fn recv_from_peer(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), RelayError> {
        let mut errors = 0;
        loop {
            let (n, from) = match self.sockets.recv(buf).await {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    debug!("udp receive error: {e}");
                    errors += 1;
                    if errors >= MAX_RECV_ERRORS {
                        return Err(RelayError::Io(e));
                    }
                    continue;
                }
            };
            if self.is_peer(&from) {
                return Ok((n, from));
            }
            // A good receive ends a run of errors, even if its datagram is dropped.
            errors = 0;
            debug!(%from, "udp datagram from an uncontacted peer dropped");
        }
    }
}

/// Serves a UDP relay request on `stream` (the request header has been read).
///
/// If the request names a destination (a UDP forward does; SOCKS5 sends `0.0.0.0:0`), it is
/// checked up front so that a refused target gets a refusal reply instead of silence.
pub(super) async fn serve_udp_relay<S>(
    mut stream: S,
    hint: &TargetAddr,
    policy: &TargetPolicy,
    dial: &DialConfig,
) -> Result<(), RelayError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if names_destination(hint)
        && let Err(source) = resolve_allowed(hint, policy, dial.connect_timeout).await
    {
        super::send_failure(&mut stream, source.reply_code()).await;
        return Err(RelayError::Dial {
            target: hint.clone(),
            source,
        });
    }
    let sockets = match bind_sockets().await {
        Ok(sockets) => sockets,
        Err(e) => {
            super::send_failure(&mut stream, ReplyCode::GeneralFailure).await;
            return Err(RelayError::UdpBind(e));
        }
    };
    let bound = sockets.bound_addr();
    TunnelReply {
        code: ReplyCode::Succeeded,
        bound,
    }
    .write_to(&mut stream)
    .await?;
    let shared = Shared {
        sockets,
        peers: Mutex::new(HashSet::new()),
        activity: Activity::new(),
    };
    let (reader, mut writer) = tokio::io::split(stream);
    let result = tokio::select! {
        r = uplink(reader, &shared, policy, dial.connect_timeout) => r,
        r = downlink(&mut writer, &shared) => r,
        () = shared.activity.idle_for(dial.udp_idle_timeout) => {
            debug!("udp relay idle, closing");
            Ok(())
        }
    };
    let _ = writer.shutdown().await;
    result
}

/// Serves a UDP relay over datagram flows ([`crate::flow`]): the request header has been read;
/// the flow id follows it. After the reply the stream carries nothing: the relay lasts until the
/// client finishes or resets it, the connection ends, or nothing moved for the idle timeout.
pub(super) async fn serve_udp_flow<S>(
    mut stream: S,
    hint: &TargetAddr,
    policy: &TargetPolicy,
    dial: &DialConfig,
    flows: &FlowMux,
) -> Result<(), RelayError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let id = match tokio::time::timeout(dial.request_timeout, stream.read_u32()).await {
        Err(_) => return Err(RelayError::RequestTimeout),
        Ok(Err(e)) => return Err(RelayError::Request(e.into())),
        Ok(Ok(id)) => id,
    };
    let Some((tx, rx)) = flows.attach(id) else {
        super::send_failure(&mut stream, ReplyCode::GeneralFailure).await;
        return Err(RelayError::FlowInUse(id));
    };
    if names_destination(hint)
        && let Err(source) = resolve_allowed(hint, policy, dial.connect_timeout).await
    {
        super::send_failure(&mut stream, source.reply_code()).await;
        return Err(RelayError::Dial {
            target: hint.clone(),
            source,
        });
    }
    let sockets = match bind_sockets().await {
        Ok(sockets) => sockets,
        Err(e) => {
            super::send_failure(&mut stream, ReplyCode::GeneralFailure).await;
            return Err(RelayError::UdpBind(e));
        }
    };
    TunnelReply {
        code: ReplyCode::Succeeded,
        bound: sockets.bound_addr(),
    }
    .write_to(&mut stream)
    .await?;
    let shared = Shared {
        sockets,
        peers: Mutex::new(HashSet::new()),
        activity: Activity::new(),
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    let result = tokio::select! {
        r = flow_uplink(rx, &shared, policy, dial.connect_timeout) => r,
        r = flow_downlink(&tx, &shared) => r,
        r = control_ended(&mut reader) => r,
        () = shared.activity.idle_for(dial.udp_idle_timeout) => {
            debug!("udp flow idle, closing");
            Ok(())
        }
    };
    let _ = writer.shutdown().await;
    result
}

/// Resolves when the client ends a flow's control stream (FIN: `Ok`, reset: the error). Bytes
/// on it are not expected and are skipped.
async fn control_ended<R: AsyncRead + Unpin>(reader: &mut R) -> Result<(), RelayError> {
    let mut sink = [0u8; 64];
    loop {
        if reader.read(&mut sink).await? == 0 {
            return Ok(());
        }
    }
}

/// Flow -> UDP: sends each datagram to its (checked) destination.
async fn flow_uplink(
    mut rx: FlowRx,
    shared: &Shared,
    policy: &TargetPolicy,
    resolve_timeout: Duration,
) -> Result<(), RelayError> {
    let mut names = HashMap::new();
    let mut refusals = Refusals::default();
    while let Some((target, payload)) = rx.recv().await {
        send_out(
            &target,
            &payload,
            shared,
            policy,
            resolve_timeout,
            &mut names,
            &mut refusals,
        )
        .await;
    }
    Ok(())
}

/// UDP -> flow: each datagram from a contacted peer, tagged with its source address.
async fn flow_downlink(tx: &FlowTx, shared: &Shared) -> Result<(), RelayError> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = shared.recv_from_peer(&mut buf).await?;
        let payload = buf.get(..n).unwrap_or_default();
        match tx.send(&TargetAddr::Ip(from), payload) {
            Ok(()) => shared.touch(),
            // Larger than the client accepts: dropped, as a too-large datagram would be.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                debug!(%from, "udp datagram of {n} bytes too large for the tunnel, dropped");
            }
            Err(e) => return Err(RelayError::Io(e)),
        }
    }
}

/// Whether a UDP relay request names a real destination rather than "anywhere" (`0.0.0.0:0`
/// or any unspecified address / port 0).
fn names_destination(hint: &TargetAddr) -> bool {
    match hint {
        TargetAddr::Ip(sa) => !sa.ip().is_unspecified() && sa.port() != 0,
        TargetAddr::Domain(_, port) => *port != 0,
    }
}

async fn bind_sockets() -> std::io::Result<Sockets> {
    let v4 = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await;
    let v6 = UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))).await;
    match (v4, v6) {
        (Err(e), Err(_)) => Err(e),
        (v4, v6) => Ok(Sockets {
            v4: v4.ok(),
            v6: v6.ok(),
        }),
    }
}

impl Sockets {
    fn for_addr(&self, addr: &SocketAddr) -> Option<&UdpSocket> {
        if addr.is_ipv4() {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }

    fn bound_addr(&self) -> TargetAddr {
        self.v4
            .as_ref()
            .or(self.v6.as_ref())
            .and_then(|s| s.local_addr().ok())
            .map_or_else(TargetAddr::unspecified, TargetAddr::Ip)
    }

    /// Receives from whichever socket has a datagram first. With two sockets this waits for
    /// readiness and then tries the read, so it may report `WouldBlock` (a spurious wake-up).
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        match (&self.v4, &self.v6) {
            (Some(v4), Some(v6)) => {
                tokio::select! {
                    r = v4.readable() => r.and_then(|()| v4.try_recv_from(buf)),
                    r = v6.readable() => r.and_then(|()| v6.try_recv_from(buf)),
                }
            }
            (Some(only), None) | (None, Some(only)) => only.recv_from(buf).await,
            (None, None) => std::future::pending().await,
        }
    }
}

/// Tunnel -> UDP: sends each framed datagram to its (checked) destination.
async fn uplink<R: AsyncRead + Unpin>(
    mut reader: ReadHalf<R>,
    shared: &Shared,
    policy: &TargetPolicy,
    resolve_timeout: Duration,
) -> Result<(), RelayError> {
    let mut buf = Vec::with_capacity(MAX_DATAGRAM);
    let mut names = HashMap::new();
    let mut refusals = Refusals::default();
    while let Some((target, payload)) = read_udp_frame(&mut reader, &mut buf).await? {
        send_out(
            &target,
            payload,
            shared,
            policy,
            resolve_timeout,
            &mut names,
            &mut refusals,
        )
        .await;
    }
    Ok(())
}

/// Sends one datagram from the client to its destination, if the policy allows it.
async fn send_out(
    target: &TargetAddr,
    payload: &[u8],
    shared: &Shared,
    policy: &TargetPolicy,
    resolve_timeout: Duration,
    names: &mut HashMap<TargetAddr, SocketAddr>,
    refusals: &mut Refusals,
) {
    let dest = match destination(target, policy, resolve_timeout, names, shared).await {
        Ok(Some(dest)) => dest,
        Ok(None) => return,
        Err(e) => {
            refusals.log(target, &e);
            return;
        }
    };
    if let Some(socket) = shared.sockets.for_addr(&dest) {
        shared.remember_peer(dest);
        if let Err(e) = socket.send_to(payload, dest).await {
            debug!(%dest, "udp send failed: {e}");
        }
        shared.touch();
    }
}

/// Which refused destinations a relay has logged at INFO.
#[derive(Default)]
struct Refusals {
    logged: HashSet<TargetAddr>,
}

impl Refusals {
    /// Logs a dropped datagram: a policy refusal at INFO once per destination (up to
    /// [`MAX_LOGGED_REFUSALS`]), anything else and repeats at DEBUG. The client is named by
    /// the span the server runs the stream in.
    fn log(&mut self, target: &TargetAddr, e: &DialError) {
        let first = !self.logged.contains(target);
        if matches!(e, DialError::Refused(_)) && first && self.logged.len() < MAX_LOGGED_REFUSALS {
            self.logged.insert(target.clone());
            info!(%target, "udp relay refused a destination: {e}");
            if self.logged.len() == MAX_LOGGED_REFUSALS {
                info!("further refused destinations of this udp relay are logged at debug level");
            }
        } else {
            debug!(%target, "udp datagram dropped: {e}");
        }
    }
}

/// Resolves and policy-checks a datagram's destination; `Ok(None)` means drop it (no socket
/// of its family), an error that it was refused or could not be resolved.
async fn destination(
    target: &TargetAddr,
    policy: &TargetPolicy,
    limit: Duration,
    names: &mut HashMap<TargetAddr, SocketAddr>,
    shared: &Shared,
) -> Result<Option<SocketAddr>, DialError> {
    if let Some(cached) = names.get(target) {
        return Ok(Some(*cached));
    }
    let allowed = resolve_allowed(target, policy, limit).await?;
    let Some(dest) = allowed
        .into_iter()
        .find(|sa| shared.sockets.for_addr(sa).is_some())
    else {
        return Ok(None);
    };
    if matches!(target, TargetAddr::Domain(..)) {
        if names.len() >= MAX_CACHED_NAMES {
            names.clear();
        }
        names.insert(target.clone(), dest);
    }
    Ok(Some(dest))
}

/// UDP -> tunnel: frames each datagram from a contacted peer with its source address.
async fn downlink<W: AsyncWrite + Unpin>(
    writer: &mut WriteHalf<W>,
    shared: &Shared,
) -> Result<(), RelayError> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut frame = Vec::with_capacity(MAX_DATAGRAM + 32);
    loop {
        let (n, from) = shared.recv_from_peer(&mut buf).await?;
        frame.clear();
        let payload = buf.get(..n).unwrap_or_default();
        if encode_udp_frame(&TargetAddr::Ip(from), payload, &mut frame).is_err() {
            continue;
        }
        writer.write_all(&frame).await?;
        writer.flush().await?;
        shared.touch();
    }
}
