//! The QUIC carrier: gaptun datagrams in QUIC DATAGRAM frames (RFC 9221) of a connection with
//! ALPN `h3`, so that to an observer it is HTTP/3.
//!
//! The client opens one bidirectional stream and sends its token there (a stream, unlike a
//! datagram, cannot be lost); until the server has checked it, the connection carries nothing
//! for gaptun. A client without a valid token is treated as an HTTP/3 client: every request
//! stream gets a 404 page. A client with another ALPN fails the TLS handshake
//! (`no_application_protocol`), and one without DATAGRAM support is closed with `H3_NO_ERROR`.
//!
//! quinn's congestion control is replaced by a controller whose window never limits: gaptun's
//! own controller (BBR by default) paces and limits what it hands to the carrier, and two
//! controllers stacked would each back off on the other's losses. quinn's datagram send buffer
//! stays small, so that gaptun's controller sees the path, not a queue.

use std::any::Any;
use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use gaptun_runtime::{Carrier, CarrierTransmit, RecvMeta};
use quinn::congestion::{Controller, ControllerFactory};
use quinn::crypto::rustls::{QuicClientConfig as RustlsClient, QuicServerConfig as RustlsServer};
use quinn::{Connection, Endpoint, SendDatagramError, VarInt};
use tokio::io::AsyncReadExt;
use tokio::task::{JoinHandle, JoinSet};

use crate::auth::{Keys, TOKEN_LEN, new_session};
use crate::cert::CertKey;
use crate::hub::{Attached, Hub, frames};
use crate::probe::NOT_FOUND_BODY;
use crate::{CarrierError, tls_config};

/// ALPN of HTTP/3.
const ALPN: &[u8] = b"h3";

/// gaptun's largest datagram on this carrier: what fits into a QUIC DATAGRAM frame of a
/// [`QUIC_MTU`]-byte packet (short header: 1 byte, an 8-byte connection id, at most 4 bytes of
/// packet number, 16-byte tag; frame type and length: 3 bytes; 32 in all, 1368 left). It is
/// gaptun's usual starting datagram size, so an endpoint that also serves UDP keeps that size
/// (only its path MTU discovery above it is off, see the runtime's `with_carriers`).
pub const MAX_GAPTUN_DATAGRAM: u16 = 1350;

/// UDP payload size of quinn's packets, from the first one on (quinn never goes below it, so a
/// gaptun datagram always fits).
const QUIC_MTU: u16 = 1400;

/// Bytes of gaptun datagrams queued per session for quinn.
const QUEUE_BYTES: usize = 256 * 1024;

/// Received datagrams waiting for the driver (each is a batch of its own).
const INBOUND_DATAGRAMS: usize = 256;

/// quinn's DATAGRAM send buffer: a few packets, so that datagrams wait in gaptun (which paces
/// them), not in quinn.
const QUINN_SEND_BUFFER: usize = 64 * 1024;

/// quinn's DATAGRAM receive buffer, until the driver reads them.
const QUINN_RECV_BUFFER: usize = 4 * 1024 * 1024;

/// Window of quinn's non-limiting controller: far above any path's bandwidth-delay product.
const UNLIMITED_WINDOW: u64 = 1 << 30;

/// How long the server waits for a token or a request.
const FIRST_STREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Application error codes of HTTP/3 (RFC 9114) used to close.
const H3_NO_ERROR: u32 = 0x100;

/// Waits between reconnection attempts of a client.
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A client of the QUIC carrier.
#[derive(Debug, Clone)]
pub struct QuicClientConfig {
    /// The server's address.
    pub server: SocketAddr,
    /// The name sent as SNI.
    pub sni: String,
    /// The client's gaptun key, for its token.
    pub keys: Keys,
}

/// A server of the QUIC carrier.
#[derive(Debug)]
pub struct QuicServerConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The certificate presented.
    pub cert: CertKey,
    /// The gaptun keys accepted.
    pub keys: Keys,
}

/// gaptun datagrams in QUIC DATAGRAM frames. Its tasks and endpoint end when it is dropped.
#[derive(Debug)]
pub struct QuicCarrier {
    hub: Arc<Hub>,
    endpoint: Endpoint,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for QuicCarrier {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.endpoint.close(VarInt::from_u32(H3_NO_ERROR), b"");
    }
}

/// quinn transport settings of both ends.
fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.congestion_controller_factory(Arc::new(Unlimited))
        .initial_mtu(QUIC_MTU)
        .min_mtu(QUIC_MTU)
        .datagram_send_buffer_size(QUINN_SEND_BUFFER)
        .datagram_receive_buffer_size(Some(QUINN_RECV_BUFFER))
        // gaptun keeps its own liveness; quinn's keeps NAT mappings and closes dead ones.
        .keep_alive_interval(Some(Duration::from_secs(10)));
    t
}

impl QuicCarrier {
    /// Connects to a server; reconnects in the background if the connection drops.
    pub async fn connect(config: QuicClientConfig) -> Result<Self, CarrierError> {
        let bind: SocketAddr = if config.server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint =
            Endpoint::client(bind).map_err(|e| CarrierError::io("QUIC client socket", e))?;
        let rustls = tls_config::client(&[ALPN])?;
        let crypto =
            RustlsClient::try_from(rustls).map_err(|e| CarrierError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(transport()));
        endpoint.set_default_client_config(client);
        let local = endpoint
            .local_addr()
            .map_err(|e| CarrierError::io("local address", e))?;
        let session = new_session();
        let token = config
            .keys
            .token(&session)
            .ok_or_else(|| CarrierError::Tls("a client needs a key".into()))?;
        let first = connect_one(&endpoint, &config, &token).await?;
        let hub = Hub::new("quic", local, QUEUE_BYTES, INBOUND_DATAGRAMS, true);
        // The first connection is attached before we return and hands its attachment to its
        // task, so the first datagrams sent (a handshake Initial, at once) are queued for it.
        // (Attached only in the task, they found the session without a connection whenever
        // the caller sent before the task ran, and were dropped as between connections.)
        let first = (first, hub.attach(session, config.server));
        let task = {
            let hub = Arc::clone(&hub);
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let mut conn = Some(first);
                let mut wait = RECONNECT_FIRST;
                loop {
                    let current = match conn.take() {
                        Some(c) => Ok(c),
                        None => connect_one(&endpoint, &config, &token)
                            .await
                            .map(|c| (c, hub.attach(session, config.server))),
                    };
                    match current {
                        Ok((c, attached)) => {
                            wait = RECONNECT_FIRST;
                            let reason = carry(&hub, &attached, &c).await;
                            tracing::debug!(server = %config.server, "QUIC carrier connection closed: {reason}");
                        }
                        Err(e) => {
                            tracing::debug!(server = %config.server, "QUIC carrier connect: {e}")
                        }
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RECONNECT_MAX);
                }
            })
        };
        Ok(Self {
            hub,
            endpoint,
            tasks: vec![task],
        })
    }

    /// Listens for clients.
    pub async fn listen(config: QuicServerConfig) -> Result<Self, CarrierError> {
        let rustls = tls_config::server(config.cert, &[ALPN])?;
        let crypto =
            RustlsServer::try_from(rustls).map_err(|e| CarrierError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport()));
        let endpoint = Endpoint::server(server, config.listen)
            .map_err(|e| CarrierError::io(format!("QUIC listen on {}", config.listen), e))?;
        let local = endpoint
            .local_addr()
            .map_err(|e| CarrierError::io("local address", e))?;
        let hub = Hub::new("quic", local, QUEUE_BYTES, INBOUND_DATAGRAMS, false);
        let task = tokio::spawn(accept_loop(
            Arc::clone(&hub),
            endpoint.clone(),
            Arc::new(config.keys),
        ));
        Ok(Self {
            hub,
            endpoint,
            tasks: vec![task],
        })
    }

    /// Peers with an open connection now.
    pub fn sessions(&self) -> usize {
        self.hub.session_count()
    }
}

async fn connect_one(
    endpoint: &Endpoint,
    config: &QuicClientConfig,
    token: &[u8; TOKEN_LEN],
) -> Result<Connection, CarrierError> {
    let refused = |e: &dyn std::fmt::Display| CarrierError::Refused(e.to_string());
    let connecting = endpoint
        .connect(config.server, &config.sni)
        .map_err(|e| refused(&e))?;
    let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| CarrierError::io("QUIC handshake", io::ErrorKind::TimedOut.into()))?
        .map_err(|e| refused(&e))?;
    if conn.max_datagram_size().is_none() {
        return Err(CarrierError::Refused(
            "server takes no QUIC datagrams".into(),
        ));
    }
    let (mut send, _recv) = conn.open_bi().await.map_err(|e| refused(&e))?;
    send.write_all(token).await.map_err(|e| refused(&e))?;
    send.finish().map_err(|e| refused(&e))?;
    Ok(conn)
}

async fn accept_loop(hub: Arc<Hub>, endpoint: Endpoint, keys: Arc<Keys>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { return };
                connections.spawn(serve(Arc::clone(&hub), Arc::clone(&keys), incoming));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(hub: Arc<Hub>, keys: Arc<Keys>, incoming: quinn::Incoming) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            // Wrong ALPN and the like: quinn has already sent the TLS alert.
            tracing::debug!("QUIC handshake: {e}");
            return;
        }
    };
    let peer = conn.remote_address();
    if conn.max_datagram_size().is_none() {
        conn.close(VarInt::from_u32(H3_NO_ERROR), b"");
        return;
    }
    let first = tokio::time::timeout(FIRST_STREAM_TIMEOUT, conn.accept_bi()).await;
    let Ok(Ok((send, mut recv))) = first else {
        conn.close(VarInt::from_u32(H3_NO_ERROR), b"");
        return;
    };
    let mut token = Vec::with_capacity(TOKEN_LEN);
    let mut limited = (&mut recv).take(TOKEN_LEN as u64);
    let _ = tokio::time::timeout(FIRST_STREAM_TIMEOUT, limited.read_to_end(&mut token)).await;
    match keys.verify(&token) {
        Some(session) => {
            drop((send, recv));
            let attached = hub.attach(session, peer);
            let reason = carry(&hub, &attached, &conn).await;
            tracing::debug!(%peer, "QUIC carrier connection closed: {reason}");
        }
        None => not_found(&conn, send).await,
    }
}

/// Answers an HTTP/3 client: 404 on its first request stream and every later one, until it
/// closes or stays idle.
async fn not_found(conn: &Connection, first: quinn::SendStream) {
    // The server's control stream with empty SETTINGS, as RFC 9114 wants before anything else.
    // It stays open for the connection's life (closing it is a connection error).
    let mut control = conn.open_uni().await.ok();
    if let Some(c) = control.as_mut() {
        let _ = c.write_all(&[0x00, 0x04, 0x00]).await;
    }
    let mut send = first;
    loop {
        let _ = send.write_all(&h3_not_found()).await;
        let _ = send.finish();
        match tokio::time::timeout(Duration::from_secs(20), conn.accept_bi()).await {
            Ok(Ok((next, _recv))) => send = next,
            _ => break,
        }
    }
    conn.close(VarInt::from_u32(H3_NO_ERROR), b"");
    drop(control);
}

/// An HTTP/3 response: HEADERS with `:status 404` and `content-type: text/html` (QPACK static
/// table entries 27 and 52, no dynamic table), then DATA with the page.
fn h3_not_found() -> Vec<u8> {
    let mut out = Vec::new();
    // HEADERS frame (type 1): required insert count 0, base 0, two indexed static fields.
    let headers = [0x00, 0x00, 0xc0 | 27, 0xc0 | 52];
    out.push(0x01);
    out.push(headers.len() as u8);
    out.extend_from_slice(&headers);
    // DATA frame (type 0) with a varint length.
    out.push(0x00);
    let len = NOT_FOUND_BODY.len() as u64;
    if len < 64 {
        out.push(len as u8);
    } else {
        out.extend_from_slice(&(0x4000 | len as u16).to_be_bytes());
    }
    out.extend_from_slice(NOT_FOUND_BODY.as_bytes());
    out
}

/// Carries a session's datagrams on one QUIC connection until it closes.
async fn carry(hub: &Hub, attached: &Attached, conn: &Connection) -> String {
    let reader = async {
        loop {
            match conn.read_datagram().await {
                Ok(d) => {
                    if !hub.deliver(attached.addr, VecDeque::from([d])).await {
                        return "carrier dropped".to_string();
                    }
                }
                Err(e) => return format!("{e}"),
            }
        }
    };
    let writer = async {
        loop {
            let Some(batch) = attached.queue.pop_batch(QUINN_SEND_BUFFER).await else {
                return "session closed".to_string();
            };
            for datagram in frames(&batch) {
                match conn.send_datagram_wait(datagram).await {
                    Ok(()) => {}
                    Err(SendDatagramError::TooLarge) => {
                        tracing::debug!("datagram larger than QUIC allows, dropped");
                    }
                    Err(e) => return format!("{e}"),
                }
            }
        }
    };
    tokio::select! {
        reason = reader => reason,
        reason = writer => reason,
    }
}

impl Carrier for QuicCarrier {
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

    fn max_datagram_size(&self) -> Option<u16> {
        Some(MAX_GAPTUN_DATAGRAM)
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

/// quinn congestion controller that never limits (see the module doc).
#[derive(Debug, Clone, Copy)]
struct Unlimited;

impl Controller for Unlimited {
    fn on_congestion_event(&mut self, _: Instant, _: Instant, _: bool, _: u64) {}
    fn on_mtu_update(&mut self, _: u16) {}
    fn window(&self) -> u64 {
        UNLIMITED_WINDOW
    }
    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(*self)
    }
    fn initial_window(&self) -> u64 {
        UNLIMITED_WINDOW
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

impl ControllerFactory for Unlimited {
    fn build(self: Arc<Self>, _now: Instant, _mtu: u16) -> Box<dyn Controller> {
        Box::new(Self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cert::{CertSource, load_or_generate};
    use gaptun_runtime::proto::Psk;

    async fn server(name: &str) -> (QuicCarrier, SocketAddr) {
        let dir = std::env::temp_dir().join(format!("gaptun-quic-{name}-{}", std::process::id()));
        let cert = load_or_generate(&CertSource::SelfSigned {
            dir,
            name: "localhost".into(),
        })
        .unwrap();
        let carrier = QuicCarrier::listen(QuicServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert,
            keys: Keys::new(&[Psk::from_bytes([3; 32])]),
        })
        .await
        .unwrap();
        let addr = carrier.hub.local;
        (carrier, addr)
    }

    /// A plain quinn client (not gaptun) offering `alpn`, with or without DATAGRAM support.
    fn client(alpn: &[&[u8]], datagrams: bool) -> Endpoint {
        let mut ep = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let rustls = tls_config::client(alpn).unwrap();
        let mut config =
            quinn::ClientConfig::new(Arc::new(RustlsClient::try_from(rustls).unwrap()));
        let mut t = quinn::TransportConfig::default();
        if !datagrams {
            t.datagram_receive_buffer_size(None);
        }
        config.transport_config(Arc::new(t));
        ep.set_default_client_config(config);
        ep
    }

    #[tokio::test]
    async fn wrong_alpn_is_refused_in_the_handshake() {
        let (_server, addr) = server("alpn").await;
        let ep = client(&[b"hq-interop"], true);
        let err = ep.connect(addr, "localhost").unwrap().await.unwrap_err();
        match err {
            // TLS alert 120, no_application_protocol, as a QUIC CRYPTO_ERROR (0x100 + alert).
            quinn::ConnectionError::ConnectionClosed(c) => {
                assert_eq!(u64::from(c.error_code), 0x178, "{c:?}");
            }
            other => panic!("expected a TLS refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn client_without_datagrams_is_closed_cleanly() {
        let (server, addr) = server("nodgram").await;
        let ep = client(&[ALPN], false);
        let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .unwrap();
        match reason {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, VarInt::from_u32(H3_NO_ERROR));
            }
            other => panic!("expected H3_NO_ERROR, got {other:?}"),
        }
        assert_eq!(server.sessions(), 0);
    }

    #[tokio::test]
    async fn http3_request_gets_a_404() {
        let (server, addr) = server("h3").await;
        let ep = client(&[ALPN], true);
        let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        // HEADERS with `:method GET` (QPACK static entry 17) and `:path /` (entry 1).
        send.write_all(&[0x01, 0x04, 0x00, 0x00, 0xd1, 0xc1])
            .await
            .unwrap();
        send.finish().unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(4096))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response, h3_not_found());
        // A second request on the same connection gets the same.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0x01, 0x04, 0x00, 0x00, 0xd1, 0xc1])
            .await
            .unwrap();
        send.finish().unwrap();
        let again = recv.read_to_end(4096).await.unwrap();
        assert_eq!(again, h3_not_found());
        assert_eq!(server.sessions(), 0);
    }

    #[test]
    fn h3_404_frames_parse() {
        let r = h3_not_found();
        assert_eq!(&r[..6], &[0x01, 0x04, 0x00, 0x00, 0xdb, 0xf4]);
        assert_eq!(r[6], 0x00, "DATA frame");
        let len = usize::from(u16::from_be_bytes([r[7], r[8]]) & 0x3fff);
        assert_eq!(len, NOT_FOUND_BODY.len());
        assert_eq!(&r[9..], NOT_FOUND_BODY.as_bytes());
    }
}
