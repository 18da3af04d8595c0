//! Fixed port forwards: `--forward [tcp:]LISTEN=TARGET` and `--forward udp:LISTEN=TARGET`.
//!
//! A TCP forward turns every accepted connection into a tunnel stream to a fixed target
//! (dialled by the server, like kcptun's `-l`). The request is pipelined: the local client's
//! bytes follow the request at once, and the reply is awaited only before bytes flow back.
//! If the server refuses, or the stream is cut, the local connection is reset (RST).
//!
//! A UDP forward (WireGuard, DNS) keeps one tunnel stream per local source address, so
//! replies find their way back to the right client. Sessions end after an idle timeout and
//! their number is bounded; datagrams for a session that cannot keep up are dropped, as UDP
//! allows, rather than queued without bound.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::addr::TargetAddr;
use crate::client::{DEFAULT_REPLY_TIMEOUT, TunnelClientError, await_reply, open_with_request};
use crate::idle::Activity;
use crate::pump::{COPY_BUF, LockedReader, abort_tcp, download, upload};
use crate::request::{Command, TunnelRequest};
use crate::tunnel::StreamOpener;
use crate::udp_tunnel::{UdpDown, UdpUp, open_udp};

/// Most concurrent UDP forward sessions (local source addresses).
pub const MAX_UDP_SESSIONS: usize = 1024;
/// Datagrams queued per UDP session while its tunnel stream is busy; more are dropped.
const SESSION_QUEUE: usize = 64;
/// Largest UDP datagram.
const MAX_DATAGRAM: usize = 65535;
/// Receive errors in a row after which a UDP forward gives up.
const MAX_RECV_ERRORS: u32 = 64;

/// Forwards every connection accepted on `listener` to `target` through the tunnel.
///
/// Runs until the task is dropped; connections are handled on their own tasks.
pub async fn serve_tcp_forward<O: StreamOpener>(
    listener: TcpListener,
    target: TargetAddr,
    opener: O,
) -> io::Result<()> {
    let target = Arc::new(target);
    loop {
        let (tcp, peer) = crate::listen::accept(&listener).await;
        let (opener, target) = (opener.clone(), target.clone());
        tokio::spawn(async move {
            match forward_connection(tcp, &target, &opener).await {
                Err(e) if e.is_refusal() => warn!(%peer, "forward to {target}: {e}"),
                Err(e) => debug!(%peer, %target, "tcp forward ended: {e}"),
                Ok(()) => {}
            }
        });
    }
}

/// Relays one local connection to `target`, pipelining its first bytes behind the request.
///
/// Ends like [`crate::pump::relay_tcp`]: if the server refuses, or the tunnel stream is reset
/// or lost, the local connection is reset (RST), never closed with a FIN that would pass for a
/// complete answer.
pub async fn forward_connection<O: StreamOpener>(
    mut tcp: TcpStream,
    target: &TargetAddr,
    opener: &O,
) -> Result<(), TunnelClientError> {
    let request = TunnelRequest {
        command: Command::Connect,
        target: target.clone(),
    };
    let stream = match open_with_request(opener, &request).await {
        Ok(stream) => stream,
        Err(e) => {
            abort_tcp(tcp);
            return Err(e);
        }
    };
    let stream = Mutex::new(stream);
    let result = {
        let (mut local_read, mut local_write) = tcp.split();
        let upload = async {
            upload(&mut local_read, &stream, COPY_BUF)
                .await
                .map_err(TunnelClientError::Open)
        };
        let download = async {
            await_reply(&mut LockedReader(&stream), DEFAULT_REPLY_TIMEOUT).await?;
            download(&stream, &mut local_write)
                .await
                .map_err(TunnelClientError::Open)
        };
        tokio::try_join!(upload, download)
    };
    if let Err(e) = result {
        abort_tcp(tcp);
        drop(stream);
        return Err(e);
    }
    Ok(())
}

/// The live sessions of a UDP forward, by local source address.
type Sessions = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// Forwards datagrams arriving on `socket` to `target` through the tunnel, one tunnel stream
/// per local source, and sends the target's answers back to that source.
pub async fn serve_udp_forward<O: StreamOpener>(
    socket: UdpSocket,
    target: TargetAddr,
    opener: O,
    idle_timeout: Duration,
) -> io::Result<()> {
    let forward = UdpForward {
        socket: Arc::new(socket),
        target: Arc::new(target),
        opener,
        idle_timeout,
        sessions: Sessions::default(),
    };
    forward.run().await
}

struct UdpForward<O> {
    socket: Arc<UdpSocket>,
    target: Arc<TargetAddr>,
    opener: O,
    idle_timeout: Duration,
    sessions: Sessions,
}

impl<O: StreamOpener> UdpForward<O> {
    async fn run(&self) -> io::Result<()> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut errors = 0;
        loop {
            let (n, from) = match self.socket.recv_from(&mut buf).await {
                Ok(got) => got,
                Err(e) => {
                    errors += 1;
                    debug!("udp forward receive error: {e}");
                    if errors >= MAX_RECV_ERRORS {
                        return Err(e);
                    }
                    continue;
                }
            };
            errors = 0;
            self.dispatch(from, buf.get(..n).unwrap_or_default().to_vec());
        }
    }

    /// Hands a datagram to its source's session, starting one if needed.
    fn dispatch(&self, from: SocketAddr, datagram: Vec<u8>) {
        let Ok(mut sessions) = self.sessions.lock() else {
            return;
        };
        let datagram = match sessions.get(&from) {
            None => datagram,
            Some(tx) => match tx.try_send(datagram) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    debug!(%from, "udp forward session busy, datagram dropped");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(datagram)) => {
                    sessions.remove(&from);
                    datagram
                }
            },
        };
        if sessions.len() >= MAX_UDP_SESSIONS {
            warn!(%from, "too many udp forward sessions, datagram dropped");
            return;
        }
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let _ = tx.try_send(datagram);
        sessions.insert(from, tx.clone());
        drop(sessions);
        self.spawn_session(from, tx, rx);
    }

    fn spawn_session(&self, from: SocketAddr, tx: mpsc::Sender<Vec<u8>>, rx: SessionQueue) {
        let session = UdpSession {
            socket: self.socket.clone(),
            target: self.target.clone(),
            client: from,
            activity: Activity::new(),
        };
        let (opener, sessions, idle) = (
            self.opener.clone(),
            self.sessions.clone(),
            self.idle_timeout,
        );
        tokio::spawn(async move {
            match session.run(&opener, rx, idle).await {
                Err(e) if e.is_refusal() => warn!(%from, "udp forward: {e}"),
                Err(e) => debug!(%from, "udp forward session ended: {e}"),
                Ok(()) => {}
            }
            forget_session(&sessions, from, &tx);
        });
    }
}

type SessionQueue = mpsc::Receiver<Vec<u8>>;

/// Removes a finished session, unless the address already has a newer one.
fn forget_session(sessions: &Sessions, from: SocketAddr, tx: &mpsc::Sender<Vec<u8>>) {
    if let Ok(mut sessions) = sessions.lock()
        && sessions
            .get(&from)
            .is_some_and(|current| current.same_channel(tx))
    {
        sessions.remove(&from);
    }
}

/// One local source's datagrams and the tunnel stream that carries them.
struct UdpSession {
    socket: Arc<UdpSocket>,
    target: Arc<TargetAddr>,
    client: SocketAddr,
    activity: Activity,
}

impl UdpSession {
    async fn run<O: StreamOpener>(
        &self,
        opener: &O,
        queue: SessionQueue,
        idle: Duration,
    ) -> Result<(), TunnelClientError> {
        let tunnel = open_udp(opener, (*self.target).clone()).await?;
        debug!(client = %self.client, datagrams = tunnel.uses_datagrams(), "udp forward session");
        let (mut up, down) = tunnel.split();
        let result = tokio::select! {
            r = self.upload(queue, &mut up) => r,
            r = self.download(down) => r,
            () = self.activity.idle_for(idle) => Ok(()),
        };
        up.shutdown().await;
        result
    }

    /// Local datagrams, to the fixed target. They follow the request at once: the server
    /// keeps what arrives before it has read the request.
    async fn upload<S: AsyncWrite>(
        &self,
        mut queue: SessionQueue,
        tunnel: &mut UdpUp<S>,
    ) -> Result<(), TunnelClientError> {
        while let Some(datagram) = queue.recv().await {
            tunnel
                .send(&self.target, &datagram)
                .await
                .map_err(TunnelClientError::Open)?;
            self.activity.touch();
        }
        Ok(())
    }

    /// The server's reply, then the target's datagrams back to the local client.
    async fn download<S: AsyncRead>(
        &self,
        mut tunnel: UdpDown<S>,
    ) -> Result<(), TunnelClientError> {
        tunnel.await_reply(DEFAULT_REPLY_TIMEOUT).await?;
        while let Some((_source, payload)) = tunnel.recv().await? {
            if let Err(e) = self.socket.send_to(&payload, self.client).await {
                debug!(client = %self.client, "udp forward send failed: {e}");
            }
            self.activity.touch();
        }
        Ok(())
    }
}
