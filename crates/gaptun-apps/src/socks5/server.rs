//! Accepting SOCKS5 clients and serving their CONNECT and UDP ASSOCIATE requests.
//!
//! Each connection goes through method negotiation, optional authentication and one request,
//! all under a handshake timeout so idle or half-open clients do not pile up. Failures are
//! answered with the most precise reply code available before the connection is closed.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, info, warn};

use super::codec::{self, CMD_CONNECT, CMD_UDP_ASSOCIATE, METHOD_NONE_ACCEPTABLE, SocksError};
use crate::addr::TargetAddr;
use crate::client::{DEFAULT_REPLY_TIMEOUT, request_stream};
use crate::policy::canonical_ip;
use crate::pump;
use crate::request::{Command, ReplyCode, TunnelRequest};
use crate::tunnel::StreamOpener;
use crate::udp_tunnel::{UdpDown, UdpTunnel, UdpUp, open_udp};

/// Largest UDP datagram accepted from a SOCKS client.
const MAX_DATAGRAM: usize = 65535;

/// How the SOCKS5 server behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksConfig {
    /// Require this username and password (RFC 1929); `None` allows only "no authentication".
    pub auth: Option<(String, String)>,
    /// Where UDP ASSOCIATE sockets are bound; `None` uses the address the client connected
    /// to, which is the one it can certainly reach.
    pub udp_bind_ip: Option<IpAddr>,
    /// How long a client may take from connecting to a complete request.
    pub handshake_timeout: Duration,
    /// How long to wait for the tunnel server's reply to a request.
    pub reply_timeout: Duration,
}

impl Default for SocksConfig {
    fn default() -> Self {
        Self {
            auth: None,
            udp_bind_ip: None,
            handshake_timeout: Duration::from_secs(10),
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        }
    }
}

/// Serves SOCKS5 clients on `listener`, carrying their traffic through `opener`'s streams.
///
/// Runs until the task is dropped; connections are handled on their own tasks.
pub async fn serve_socks<O: StreamOpener>(
    listener: TcpListener,
    opener: O,
    config: SocksConfig,
) -> io::Result<()> {
    let config = Arc::new(config);
    loop {
        let (tcp, peer) = crate::listen::accept(&listener).await;
        let opener = opener.clone();
        let config = config.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(tcp, peer, opener, &config).await {
                debug!(%peer, "socks5 connection ended: {e}");
            }
        });
    }
}

/// One client connection from greeting to the end of its relay.
pub async fn serve_connection<O: StreamOpener>(
    mut tcp: TcpStream,
    peer: SocketAddr,
    opener: O,
    config: &SocksConfig,
) -> Result<(), SocksError> {
    let request = tokio::time::timeout(config.handshake_timeout, handshake(&mut tcp, peer, config))
        .await
        .map_err(|_| SocksError::HandshakeTimeout)??;
    debug!(%peer, command = request.command, target = %request.target, "socks5 request");
    match request.command {
        CMD_CONNECT => connect(tcp, peer, request.target, &opener, config).await,
        CMD_UDP_ASSOCIATE => udp_associate(tcp, peer, request.target, &opener, config).await,
        _ => {
            write_reply(
                &mut tcp,
                ReplyCode::CommandNotSupported,
                &TargetAddr::unspecified(),
            )
            .await
        }
    }
}

/// Method negotiation, authentication and the request.
async fn handshake(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    config: &SocksConfig,
) -> Result<codec::SocksRequest, SocksError> {
    negotiate_method(tcp, peer, config).await?;
    match codec::read_request(tcp).await {
        Ok(request) => Ok(request),
        Err(e) => {
            if let Some(code) = e.request_reply_code() {
                let _ = write_reply(tcp, code, &TargetAddr::unspecified()).await;
            }
            Err(e)
        }
    }
}

async fn negotiate_method(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    config: &SocksConfig,
) -> Result<(), SocksError> {
    let offered = codec::read_greeting(tcp).await?;
    let method = codec::choose_method(&offered, config.auth.is_some());
    tcp.write_all(&codec::encode_method_choice(method)).await?;
    if method == METHOD_NONE_ACCEPTABLE {
        // Typically a client without the password a configured proxy requires.
        warn!(%peer, ?offered, "socks5 client refused: it offers no acceptable method");
        return Err(SocksError::NoAcceptableMethod);
    }
    match &config.auth {
        Some((user, pass)) => authenticate(tcp, peer, user, pass).await,
        None => Ok(()),
    }
}

/// RFC 1929 login. A failure is logged with the username tried (never the password).
async fn authenticate(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    user: &str,
    pass: &str,
) -> Result<(), SocksError> {
    let credentials = codec::read_credentials(tcp).await?;
    let ok = credentials.matches(user, pass);
    tcp.write_all(&codec::encode_auth_status(ok)).await?;
    if ok {
        Ok(())
    } else {
        let tried = String::from_utf8_lossy(&credentials.username);
        warn!(%peer, user = ?tried, "socks5 login failed");
        Err(SocksError::AuthFailed)
    }
}

async fn write_reply(
    tcp: &mut TcpStream,
    code: ReplyCode,
    bound: &TargetAddr,
) -> Result<(), SocksError> {
    tcp.write_all(&codec::encode_reply(code, bound)).await?;
    Ok(())
}

/// CONNECT: ask the tunnel server to dial, pass its verdict on, then relay.
async fn connect<O: StreamOpener>(
    mut tcp: TcpStream,
    peer: SocketAddr,
    target: TargetAddr,
    opener: &O,
    config: &SocksConfig,
) -> Result<(), SocksError> {
    let request = TunnelRequest {
        command: Command::Connect,
        target,
    };
    let (stream, reply) = match request_stream(opener, &request, config.reply_timeout).await {
        Ok(ok) => ok,
        Err(e) => {
            if e.is_refusal() {
                info!(%peer, target = %request.target, "socks5 CONNECT refused: {e}");
            }
            write_reply(&mut tcp, e.reply_code(), &TargetAddr::unspecified()).await?;
            return Err(e.into());
        }
    };
    write_reply(&mut tcp, ReplyCode::Succeeded, &reply.bound).await?;
    let moved = pump::relay_tcp(tcp, stream).await?;
    debug!(target = %request.target, up = moved.a_to_b, down = moved.b_to_a, "socks5 relay done");
    Ok(())
}

/// UDP ASSOCIATE: a local UDP socket for the client, one tunnel stream for its datagrams,
/// alive as long as the TCP control connection.
async fn udp_associate<O: StreamOpener>(
    mut tcp: TcpStream,
    peer: SocketAddr,
    hint: TargetAddr,
    opener: &O,
    config: &SocksConfig,
) -> Result<(), SocksError> {
    let bind_ip = match config.udp_bind_ip {
        Some(ip) => ip,
        None => tcp.local_addr()?.ip(),
    };
    let udp = match UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await {
        Ok(udp) => udp,
        Err(e) => {
            write_reply(
                &mut tcp,
                ReplyCode::GeneralFailure,
                &TargetAddr::unspecified(),
            )
            .await?;
            return Err(e.into());
        }
    };
    let opened = match open_udp(opener, TargetAddr::unspecified()).await {
        Ok(mut tunnel) => tunnel
            .await_reply(config.reply_timeout)
            .await
            .map(|_| tunnel),
        Err(e) => Err(e),
    };
    let tunnel = match opened {
        Ok(tunnel) => tunnel,
        Err(e) => {
            if e.is_refusal() {
                info!(%peer, "socks5 UDP ASSOCIATE refused: {e}");
            }
            write_reply(&mut tcp, e.reply_code(), &TargetAddr::unspecified()).await?;
            return Err(e.into());
        }
    };
    let bound = TargetAddr::Ip(udp.local_addr()?);
    write_reply(&mut tcp, ReplyCode::Succeeded, &bound).await?;
    let client = ClientFilter::new(peer.ip(), &hint);
    debug!(%peer, datagrams = tunnel.uses_datagrams(), "socks5 udp association");
    run_association(tcp, udp, tunnel, client).await
}

/// Which source may use an association, and where replies go.
///
/// Only the host of the control connection may send (RFC 1928: the relay drops datagrams
/// from other addresses); if the request named a port, only that port. The first accepted
/// datagram fixes the client's address, to which all replies are sent.
struct ClientFilter {
    ip: IpAddr,
    port: Option<u16>,
    locked: Mutex<Option<SocketAddr>>,
}

impl ClientFilter {
    fn new(ip: IpAddr, hint: &TargetAddr) -> Self {
        let port = Some(hint.port()).filter(|p| *p != 0);
        Self {
            ip: canonical_ip(ip),
            port,
            locked: Mutex::new(None),
        }
    }

    /// Whether a datagram from `from` is the client's; locks onto the first such source.
    fn accept(&self, from: SocketAddr) -> bool {
        let Ok(mut locked) = self.locked.lock() else {
            return false;
        };
        match *locked {
            Some(addr) => addr == from,
            None => {
                let ok = canonical_ip(from.ip()) == self.ip
                    && self.port.is_none_or(|port| port == from.port());
                if ok {
                    *locked = Some(from);
                }
                ok
            }
        }
    }

    fn client(&self) -> Option<SocketAddr> {
        self.locked.lock().ok().and_then(|locked| *locked)
    }
}

async fn run_association<S>(
    mut tcp: TcpStream,
    udp: UdpSocket,
    tunnel: UdpTunnel<S>,
    client: ClientFilter,
) -> Result<(), SocksError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut up, down) = tunnel.split();
    let result = tokio::select! {
        r = client_to_tunnel(&udp, &mut up, &client) => r,
        r = tunnel_to_client(down, &udp, &client) => r,
        r = wait_for_close(&mut tcp) => r,
    };
    up.shutdown().await;
    result
}

/// Datagrams from the SOCKS client, unwrapped and sent through the tunnel.
async fn client_to_tunnel<S: tokio::io::AsyncWrite>(
    udp: &UdpSocket,
    tunnel: &mut UdpUp<S>,
    client: &ClientFilter,
) -> Result<(), SocksError> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match udp.recv_from(&mut buf).await {
            Ok(got) => got,
            // Some systems report an earlier send's ICMP error on the next receive.
            Err(e) if is_icmp_echo_error(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        if !client.accept(from) {
            debug!(%from, "udp datagram from a foreign source dropped");
            continue;
        }
        let datagram = buf.get(..n).unwrap_or_default();
        let (target, payload) = match codec::parse_udp_datagram(datagram) {
            Ok(parsed) => parsed,
            Err(e) => {
                debug!("udp datagram dropped: {e}");
                continue;
            }
        };
        tunnel.send(&target, payload).await?;
    }
}

fn is_icmp_echo_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
    )
}

/// Datagrams from the tunnel, wrapped in a SOCKS UDP header and sent to the client.
async fn tunnel_to_client<S: tokio::io::AsyncRead>(
    mut tunnel: UdpDown<S>,
    udp: &UdpSocket,
    client: &ClientFilter,
) -> Result<(), SocksError> {
    let mut datagram = Vec::with_capacity(MAX_DATAGRAM + 32);
    while let Some((source, payload)) = tunnel.recv().await.map_err(tunnel_err)? {
        let Some(to) = client.client() else {
            continue;
        };
        codec::encode_udp_datagram(&source, &payload, &mut datagram);
        if let Err(e) = udp.send_to(&datagram, to).await {
            debug!(%to, "udp send to client failed: {e}");
        }
    }
    Ok(())
}

fn tunnel_err(e: crate::request::RequestError) -> SocksError {
    SocksError::Tunnel(crate::client::TunnelClientError::Reply(e))
}

/// Completes when the control connection closes (anything the client sends is discarded).
async fn wait_for_close(tcp: &mut TcpStream) -> Result<(), SocksError> {
    let mut buf = [0u8; 512];
    loop {
        if tcp.read(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}
