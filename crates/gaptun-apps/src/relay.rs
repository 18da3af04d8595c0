//! The server side: turns each incoming tunnel stream into a TCP connection or a UDP relay.
//!
//! For every stream the client opens, the server reads the request header
//! ([`crate::request`]), checks the target against the [`TargetPolicy`] *after* resolving it,
//! dials, answers with a reply code the client can pass on to its SOCKS5 client, and then
//! relays. Bytes the client pipelined behind its request simply wait in the stream until the
//! dial completes (the stream's flow control bounds them), so no extra buffer is needed here.

mod udp;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::debug;

use crate::addr::TargetAddr;
use crate::flow::FlowMux;
use crate::policy::{Refused, TargetPolicy};
use crate::pump::{self, ChunkStream};
use crate::request::{Command, ReplyCode, RequestError, TunnelReply, TunnelRequest};

/// Timeouts for the server's outgoing connections and relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialConfig {
    /// How long resolving a name, and separately connecting to its addresses, may take.
    pub connect_timeout: Duration,
    /// How long a new stream may take to deliver its request header.
    pub request_timeout: Duration,
    /// A UDP relay with no datagram in either direction for this long is closed.
    pub udp_idle_timeout: Duration,
}

impl Default for DialConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            udp_idle_timeout: Duration::from_secs(120),
        }
    }
}

/// Why dialling a target failed; each maps to a reply code for the client.
#[derive(Debug, Error)]
pub enum DialError {
    /// The policy refused every address of the target.
    #[error("target refused by policy: {0}")]
    Refused(#[from] Refused),
    /// The name did not resolve.
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, #[source] io::Error),
    /// Resolution took longer than the connect timeout.
    #[error("resolving {0} timed out")]
    ResolveTimeout(String),
    /// The name resolved to no addresses.
    #[error("{0} has no addresses")]
    NoAddresses(String),
    /// Every connection attempt failed; this is the last error.
    #[error("connecting to {0} failed: {1}")]
    Connect(SocketAddr, #[source] io::Error),
    /// Connecting took longer than the connect timeout.
    #[error("connecting timed out")]
    ConnectTimeout,
}

impl DialError {
    /// The reply code that tells the client what went wrong.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            Self::Refused(_) => ReplyCode::NotAllowed,
            Self::Resolve(..) | Self::ResolveTimeout(_) | Self::NoAddresses(_) => {
                ReplyCode::HostUnreachable
            }
            Self::Connect(_, e) => ReplyCode::from_dial_error(e),
            Self::ConnectTimeout => ReplyCode::TtlExpired,
        }
    }
}

/// Why serving a stream ended early (for logs; the client has been told what it needs).
#[derive(Debug, Error)]
pub enum RelayError {
    /// The request header was malformed or the stream ended inside it.
    #[error("bad request: {0}")]
    Request(#[from] RequestError),
    /// The request header did not arrive in time.
    #[error("no request within the timeout")]
    RequestTimeout,
    /// The target could not be dialled.
    #[error("dialling {target} failed: {source}")]
    Dial {
        /// What the client asked for.
        target: TargetAddr,
        /// Why it failed.
        source: DialError,
    },
    /// A UDP flow request named a flow id already in use on its connection.
    #[error("udp flow {0} already in use")]
    FlowInUse(u32),
    /// No UDP socket could be bound for a relay.
    #[error("cannot bind a UDP socket: {0}")]
    UdpBind(#[source] io::Error),
    /// The tunnel stream or the target connection failed while relaying.
    #[error("relay i/o error: {0}")]
    Io(#[from] io::Error),
    /// An expose registration was malformed.
    #[error("bad expose registration: {0}")]
    Expose(#[from] crate::expose::wire::WireError),
}

/// Serves one stream the client opened: request, policy check, dial, reply, relay.
///
/// Returns when the relay is over. Failures are answered on the stream with the matching
/// reply code before the error is returned.
pub async fn serve_stream<S>(
    stream: S,
    policy: &TargetPolicy,
    dial: &DialConfig,
) -> Result<(), RelayError>
where
    S: ChunkStream + Send,
{
    serve_stream_with_flows(stream, policy, dial, None).await
}

/// [`serve_stream`] on a connection whose datagram flows UDP relays may use
/// ([`Command::UdpFlow`]); without `flows` such a request is answered "command not supported".
pub async fn serve_stream_with_flows<S>(
    mut stream: S,
    policy: &TargetPolicy,
    dial: &DialConfig,
    flows: Option<&FlowMux>,
) -> Result<(), RelayError>
where
    S: ChunkStream + Send,
{
    let request = read_request(&mut stream, dial.request_timeout).await?;
    serve_request(stream, request, policy, dial, flows).await
}

/// Serves a stream whose request header has been read already (by a caller that handles some
/// commands itself, such as the expose server).
///
/// [`Command::Expose`] is not served here: without an expose server it is answered with
/// "command not supported".
pub async fn serve_request<S>(
    mut stream: S,
    request: TunnelRequest,
    policy: &TargetPolicy,
    dial: &DialConfig,
    flows: Option<&FlowMux>,
) -> Result<(), RelayError>
where
    S: ChunkStream + Send,
{
    debug!(command = ?request.command, target = %request.target, "tunnel request");
    match request.command {
        Command::Connect => serve_connect(stream, request.target, policy, dial).await,
        Command::UdpRelay => udp::serve_udp_relay(stream, &request.target, policy, dial).await,
        Command::UdpFlow => match flows {
            Some(flows) => udp::serve_udp_flow(stream, &request.target, policy, dial, flows).await,
            None => {
                send_failure(&mut stream, ReplyCode::CommandNotSupported).await;
                Err(RequestError::UnsupportedCommand(Command::UdpFlow.to_byte()).into())
            }
        },
        Command::Expose => {
            send_failure(&mut stream, ReplyCode::CommandNotSupported).await;
            Err(RequestError::UnsupportedCommand(Command::Expose.to_byte()).into())
        }
    }
}

/// Reads the request header, answering malformed ones with their reply code.
pub(crate) async fn read_request<S>(
    stream: &mut S,
    limit: Duration,
) -> Result<TunnelRequest, RelayError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match timeout(limit, TunnelRequest::read_from(stream)).await {
        Err(_) => Err(RelayError::RequestTimeout),
        Ok(Ok(request)) => Ok(request),
        Ok(Err(e)) => {
            if let Some(code) = e.reply_code() {
                send_failure(stream, code).await;
            }
            Err(e.into())
        }
    }
}

/// Best-effort failure reply followed by FIN; the stream is being abandoned anyway.
async fn send_failure<S: AsyncWrite + Unpin>(stream: &mut S, code: ReplyCode) {
    let _ = TunnelReply::failure(code).write_to(stream).await;
    let _ = stream.shutdown().await;
}

async fn serve_connect<S>(
    mut stream: S,
    target: TargetAddr,
    policy: &TargetPolicy,
    dial: &DialConfig,
) -> Result<(), RelayError>
where
    S: ChunkStream + Send,
{
    let tcp = match dial_target(&target, policy, dial.connect_timeout).await {
        Ok(tcp) => tcp,
        Err(source) => {
            send_failure(&mut stream, source.reply_code()).await;
            return Err(RelayError::Dial { target, source });
        }
    };
    let bound = tcp
        .local_addr()
        .map_or_else(|_| TargetAddr::unspecified(), TargetAddr::Ip);
    TunnelReply {
        code: ReplyCode::Succeeded,
        bound,
    }
    .write_to(&mut stream)
    .await?;
    // A cut client stream resets the target connection (and a reset target resets the
    // stream): the target must not take a truncated upload for a complete one.
    let moved = pump::relay_tcp(tcp, stream).await?;
    debug!(%target, up = moved.b_to_a, down = moved.a_to_b, "connect relay finished");
    Ok(())
}

/// Resolves `target`, keeps the addresses the policy allows, and connects to the first that
/// answers.
pub async fn dial_target(
    target: &TargetAddr,
    policy: &TargetPolicy,
    connect_timeout: Duration,
) -> Result<TcpStream, DialError> {
    let addrs = resolve_allowed(target, policy, connect_timeout).await?;
    let deadline = Instant::now() + connect_timeout;
    let mut last_error = None;
    for addr in addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(DialError::ConnectTimeout),
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Ok(Err(e)) => last_error = Some(DialError::Connect(addr, e)),
        }
    }
    Err(last_error.unwrap_or_else(|| DialError::NoAddresses(target.host())))
}

/// Resolves `target` (on this machine: names are resolved server-side) and drops the
/// addresses the policy refuses. Fails with the refusal if nothing is left.
pub async fn resolve_allowed(
    target: &TargetAddr,
    policy: &TargetPolicy,
    limit: Duration,
) -> Result<Vec<SocketAddr>, DialError> {
    let host = target.host();
    let candidates = resolve(target, limit).await?;
    let mut refusal = None;
    let allowed: Vec<SocketAddr> = candidates
        .into_iter()
        .filter(|sa| match policy.check(&host, sa.port(), sa.ip()) {
            Ok(()) => true,
            Err(refused) => {
                refusal.get_or_insert(refused);
                false
            }
        })
        .collect();
    match (allowed.is_empty(), refusal) {
        (true, Some(refused)) => Err(DialError::Refused(refused)),
        (true, None) => Err(DialError::NoAddresses(host)),
        (false, _) => Ok(allowed),
    }
}

/// All addresses for `target`; IP literals are returned as they are.
async fn resolve(target: &TargetAddr, limit: Duration) -> Result<Vec<SocketAddr>, DialError> {
    let (name, port) = match target {
        TargetAddr::Ip(sa) => return Ok(vec![*sa]),
        TargetAddr::Domain(name, port) => (name.as_str(), *port),
    };
    match timeout(limit, tokio::net::lookup_host((name, port))).await {
        Err(_) => Err(DialError::ResolveTimeout(name.to_owned())),
        Ok(Err(e)) => Err(DialError::Resolve(name.to_owned(), e)),
        Ok(Ok(addrs)) => Ok(addrs.collect()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    fn loopback_policy() -> TargetPolicy {
        TargetPolicy {
            allow: vec!["127.0.0.1".parse().unwrap()],
            allow_private: false,
        }
    }

    /// Runs `serve_stream` on one end of a pipe; returns the other end.
    fn spawn_server(policy: TargetPolicy) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let _ = serve_stream(server, &policy, &DialConfig::default()).await;
        });
        client
    }

    async fn request_reply(policy: TargetPolicy, request: &[u8]) -> TunnelReply {
        let mut client = spawn_server(policy);
        client.write_all(request).await.unwrap();
        TunnelReply::read_from(&mut client).await.unwrap()
    }

    fn connect_request(target: TargetAddr) -> Vec<u8> {
        TunnelRequest {
            command: Command::Connect,
            target,
        }
        .encode()
    }

    #[tokio::test]
    async fn pipelined_payload_reaches_the_target() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = spawn_server(loopback_policy());
        let mut bytes = connect_request(TargetAddr::Ip(addr));
        bytes.extend_from_slice(b"early bytes");
        client.write_all(&bytes).await.unwrap();
        client.shutdown().await.unwrap();

        let (mut accepted, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        accepted.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early bytes");
        accepted.write_all(b"answer").await.unwrap();
        drop(accepted);

        let reply = TunnelReply::read_from(&mut client).await.unwrap();
        assert_eq!(reply.code, ReplyCode::Succeeded);
        assert!(matches!(reply.bound, TargetAddr::Ip(sa) if sa.ip().is_loopback()));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"answer");
    }

    #[tokio::test]
    async fn refusals_carry_their_codes() {
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let reply = request_reply(TargetPolicy::new(), &connect_request(closed.into())).await;
        assert_eq!(reply.code, ReplyCode::NotAllowed);
        let reply = request_reply(loopback_policy(), &connect_request(closed.into())).await;
        assert_eq!(reply.code, ReplyCode::ConnectionRefused);
        let reply = request_reply(loopback_policy(), &[1, 2, 1, 1, 2, 3, 4, 0, 80]).await;
        assert_eq!(reply.code, ReplyCode::CommandNotSupported);
        let reply = request_reply(loopback_policy(), &[1, 1, 7, 1, 2, 3, 4, 0, 80]).await;
        assert_eq!(reply.code, ReplyCode::AddressTypeNotSupported);
        let reply = request_reply(loopback_policy(), &[1, 1, 3, 0, 0, 80]).await;
        assert_eq!(reply.code, ReplyCode::GeneralFailure);
    }

    #[tokio::test]
    async fn unresolvable_name_is_host_unreachable() {
        let target = TargetAddr::Domain("no-such-host.invalid".into(), 80);
        let reply = request_reply(TargetPolicy::allow_all(), &connect_request(target)).await;
        assert_eq!(reply.code, ReplyCode::HostUnreachable);
    }

    #[tokio::test]
    async fn name_resolving_to_loopback_is_refused() {
        let target = TargetAddr::Domain("localhost".into(), 9);
        let err = resolve_allowed(&target, &TargetPolicy::new(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, DialError::Refused(_)), "{err:?}");
        assert_eq!(err.reply_code(), ReplyCode::NotAllowed);
    }

    #[tokio::test]
    async fn truncated_request_gets_no_reply() {
        let mut client = spawn_server(loopback_policy());
        client.write_all(&[1, 1, 1, 127]).await.unwrap();
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    fn udp_request(hint: TargetAddr) -> Vec<u8> {
        TunnelRequest {
            command: Command::UdpRelay,
            target: hint,
        }
        .encode()
    }

    async fn udp_echo() -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn udp_relay_refuses_a_named_private_destination_up_front() {
        let echo = udp_echo().await;
        let reply = request_reply(TargetPolicy::new(), &udp_request(echo.into())).await;
        assert_eq!(reply.code, ReplyCode::NotAllowed);
        let reply =
            request_reply(TargetPolicy::new(), &udp_request(TargetAddr::unspecified())).await;
        assert_eq!(reply.code, ReplyCode::Succeeded);
    }

    #[tokio::test]
    async fn udp_relay_frames_both_ways_and_drops_refused_destinations() {
        use crate::request::{encode_udp_frame, read_udp_frame};
        let echo = udp_echo().await;
        let refused = udp_echo().await;
        let policy = TargetPolicy {
            allow: vec![format!("127.0.0.1:{}", echo.port()).parse().unwrap()],
            allow_private: false,
        };
        let mut client = spawn_server(policy);
        let mut wire = udp_request(TargetAddr::unspecified());
        // Pipelined: a refused datagram first, then an allowed one.
        encode_udp_frame(&refused.into(), b"nope", &mut wire).unwrap();
        encode_udp_frame(&echo.into(), b"datagram", &mut wire).unwrap();
        client.write_all(&wire).await.unwrap();
        let reply = TunnelReply::read_from(&mut client).await.unwrap();
        assert_eq!(reply.code, ReplyCode::Succeeded);
        let mut buf = Vec::new();
        let (source, payload) = read_udp_frame(&mut client, &mut buf)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(source, TargetAddr::Ip(echo));
        assert_eq!(payload, b"datagram");
        // Our FIN ends the relay: the server finishes its side too.
        client.shutdown().await.unwrap();
        assert!(
            read_udp_frame(&mut client, &mut buf)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn udp_relay_closes_when_idle() {
        let (mut client, server) = tokio::io::duplex(4096);
        let dial = DialConfig {
            udp_idle_timeout: Duration::from_millis(100),
            ..DialConfig::default()
        };
        tokio::spawn(async move {
            let _ = serve_stream(server, &TargetPolicy::new(), &dial).await;
        });
        client
            .write_all(&udp_request(TargetAddr::unspecified()))
            .await
            .unwrap();
        let reply = TunnelReply::read_from(&mut client).await.unwrap();
        assert_eq!(reply.code, ReplyCode::Succeeded);
        let mut rest = Vec::new();
        let read = timeout(Duration::from_secs(5), client.read_to_end(&mut rest));
        assert_eq!(read.await.unwrap().unwrap(), 0);
    }
}
