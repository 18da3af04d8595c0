//! The client end of a UDP relay through the tunnel, for UDP forwards and SOCKS5 UDP ASSOCIATE.
//!
//! When the connection the relay's stream was opened on has usable datagram flows
//! ([`crate::flow`]), the request is [`Command::UdpFlow`] and the datagrams go as transport
//! datagrams (lost ones stay lost); otherwise (an older server) it is [`Command::UdpRelay`] and
//! they are framed on the stream, as before. Both sides choose the same way because a server
//! offers transport datagrams only if it also serves `UdpFlow`.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tracing::debug;

use crate::addr::TargetAddr;
use crate::client::{TunnelClientError, await_reply};
use crate::flow::{FlowMux, FlowRx, FlowTx};
use crate::request::{
    Command, RequestError, TunnelReply, TunnelRequest, encode_udp_frame, read_udp_frame,
};
use crate::tunnel::StreamOpener;

/// Largest UDP datagram.
const MAX_DATAGRAM: usize = 65535;

/// A UDP relay's stream, with its flow when datagrams are used.
pub(crate) struct UdpTunnel<S> {
    stream: S,
    flow: Option<(FlowTx, FlowRx)>,
}

/// Opens a UDP relay: a stream with the request (and flow id) written, the reply not yet read.
pub(crate) async fn open_udp<O: StreamOpener>(
    opener: &O,
    hint: TargetAddr,
) -> Result<UdpTunnel<O::Stream>, TunnelClientError> {
    let mut stream = opener.open().await.map_err(TunnelClientError::Open)?;
    let flow = opener
        .flows(&stream)
        .filter(FlowMux::usable)
        .and_then(|mux| mux.open());
    let command = if flow.is_some() {
        Command::UdpFlow
    } else {
        Command::UdpRelay
    };
    let mut header = TunnelRequest {
        command,
        target: hint,
    }
    .encode();
    if let Some((id, _, _)) = &flow {
        header.extend_from_slice(&id.to_be_bytes());
    }
    stream
        .write_all(&header)
        .await
        .map_err(TunnelClientError::Open)?;
    stream.flush().await.map_err(TunnelClientError::Open)?;
    Ok(UdpTunnel {
        stream,
        flow: flow.map(|(_, tx, rx)| (tx, rx)),
    })
}

impl<S: AsyncRead + AsyncWrite + Unpin> UdpTunnel<S> {
    /// Whether datagrams travel as transport datagrams (not on the stream).
    pub(crate) fn uses_datagrams(&self) -> bool {
        self.flow.is_some()
    }

    /// Waits for the server's reply (a refusal is an error).
    pub(crate) async fn await_reply(
        &mut self,
        limit: Duration,
    ) -> Result<TunnelReply, TunnelClientError> {
        await_reply(&mut self.stream, limit).await
    }

    /// The sending and receiving halves.
    pub(crate) fn split(self) -> (UdpUp<S>, UdpDown<S>) {
        let (read, write) = tokio::io::split(self.stream);
        match self.flow {
            None => (
                UdpUp {
                    write,
                    flow: None,
                    frame: Vec::new(),
                },
                UdpDown {
                    read,
                    flow: None,
                    buf: Vec::new(),
                },
            ),
            Some((tx, rx)) => (
                UdpUp {
                    write,
                    flow: Some(tx),
                    frame: Vec::new(),
                },
                UdpDown {
                    read,
                    flow: Some(rx),
                    buf: Vec::new(),
                },
            ),
        }
    }
}

/// Sends a relay's datagrams.
pub(crate) struct UdpUp<S> {
    write: WriteHalf<S>,
    flow: Option<FlowTx>,
    frame: Vec<u8>,
}

impl<S: AsyncWrite> UdpUp<S> {
    /// Sends `payload` to `target` through the server. A datagram too large for the tunnel is
    /// dropped (logged at debug level), as UDP drops what does not fit.
    pub(crate) async fn send(&mut self, target: &TargetAddr, payload: &[u8]) -> io::Result<()> {
        match &self.flow {
            Some(tx) => match tx.send(target, payload) {
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    debug!(
                        "udp datagram of {} bytes too large for the tunnel, dropped",
                        payload.len()
                    );
                    Ok(())
                }
                other => other,
            },
            None => {
                self.frame.clear();
                if encode_udp_frame(target, payload, &mut self.frame).is_err() {
                    return Ok(());
                }
                self.write.write_all(&self.frame).await?;
                self.write.flush().await
            }
        }
    }

    /// Ends the relay (FIN on its stream).
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.write.shutdown().await;
    }
}

/// Receives a relay's datagrams.
pub(crate) struct UdpDown<S> {
    read: ReadHalf<S>,
    flow: Option<FlowRx>,
    buf: Vec<u8>,
}

impl<S: AsyncRead> UdpDown<S> {
    /// Waits for the server's reply (when the caller pipelined its first datagrams).
    pub(crate) async fn await_reply(
        &mut self,
        limit: Duration,
    ) -> Result<TunnelReply, TunnelClientError> {
        await_reply(&mut self.read, limit).await
    }

    /// The next datagram from the server: its source and payload; `None` when the relay ended
    /// (the server finished the stream, or the connection is gone).
    pub(crate) async fn recv(&mut self) -> Result<Option<(TargetAddr, Vec<u8>)>, RequestError> {
        match &mut self.flow {
            Some(rx) => {
                let mut sink = [0u8; 64];
                tokio::select! {
                    got = rx.recv() => Ok(got),
                    // Nothing is expected on the stream: its end (or reset) ends the relay.
                    r = drain(&mut self.read, &mut sink) => r.map(|()| None),
                }
            }
            None => {
                if self.buf.capacity() == 0 {
                    self.buf.reserve(MAX_DATAGRAM);
                }
                let got = read_udp_frame(&mut self.read, &mut self.buf).await?;
                Ok(got.map(|(source, payload)| (source, payload.to_vec())))
            }
        }
    }
}

/// Reads and discards until the end of the stream.
async fn drain<R: AsyncRead>(read: &mut ReadHalf<R>, sink: &mut [u8]) -> Result<(), RequestError> {
    loop {
        if read.read(sink).await? == 0 {
            return Ok(());
        }
    }
}
