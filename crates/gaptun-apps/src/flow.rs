//! UDP flows over the transport's unreliable datagrams.
//!
//! A UDP relay (a UDP forward's session, a SOCKS5 UDP association) used to frame its datagrams
//! on its tunnel stream, so a lost packet was retransmitted and held up every datagram behind
//! it. When the connection's peer accepts datagrams, the relay's stream only carries the
//! request and reply and then stays open as the relay's lifetime; the datagrams themselves go
//! as transport datagrams, each starting with the relay's *flow id*:
//!
//! ```text
//! flow id u32 BE | address (SOCKS5 encoding: the target going out, the source coming back) | payload
//! ```
//!
//! The client picks the flow id and sends it right after the request
//! ([`crate::request::Command::UdpFlow`]); a UDP expose's flow is opened by the server, which
//! names it in the visitor header ([`crate::expose`]) with the top bit set. One [`FlowMux`] per
//! connection hands arriving datagrams to their flow. Lost datagrams stay lost, and nothing queues without bound: each
//! flow's queue holds [`FLOW_QUEUE`] datagrams and drops what comes on top.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::debug;

use crate::addr::TargetAddr;

/// Datagrams waiting for one flow's reader; more are dropped (UDP semantics).
pub const FLOW_QUEUE: usize = 256;

/// The top bit of a flow id: set on flows the server opens (UDP expose visitors), clear on
/// those the client opens (UDP forwards, SOCKS5), so the two sides never pick the same id.
pub const SERVER_FLOW_BIT: u32 = 1 << 31;

/// Bytes of flow id at the start of every datagram.
const FLOW_ID_LEN: usize = 4;

/// Bytes of datagrams kept for flows not attached yet: the client sends its first datagrams
/// right behind the request, and they may arrive before the server has read the request.
const EARLY_BYTES: usize = 256 * 1024;

/// The flows of one connection, and the datagrams that came before their flow was attached.
#[derive(Default)]
struct Table {
    flows: HashMap<u32, mpsc::Sender<Vec<u8>>>,
    early: std::collections::VecDeque<(u32, Vec<u8>)>,
    early_bytes: usize,
}

impl Table {
    /// Keeps a datagram for a flow not attached yet, dropping the oldest beyond
    /// [`EARLY_BYTES`].
    fn keep_early(&mut self, id: u32, datagram: Vec<u8>) {
        self.early_bytes += datagram.len();
        self.early.push_back((id, datagram));
        while self.early_bytes > EARLY_BYTES {
            let Some((_, old)) = self.early.pop_front() else {
                break;
            };
            self.early_bytes -= old.len();
        }
    }

    /// Takes the datagrams kept for `id`, oldest first.
    fn take_early(&mut self, id: u32) -> Vec<Vec<u8>> {
        let (mine, rest): (Vec<_>, Vec<_>) = self.early.drain(..).partition(|(i, _)| *i == id);
        self.early = rest.into();
        let taken: Vec<Vec<u8>> = mine.into_iter().map(|(_, d)| d).collect();
        self.early_bytes -= taken.iter().map(Vec::len).sum::<usize>();
        taken
    }

    fn clear(&mut self) {
        self.flows.clear();
        self.early.clear();
        self.early_bytes = 0;
    }
}

/// A future returned by [`DatagramIo::read_datagram`].
pub type ReadDatagram<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<u8>>> + Send + 'a>>;

/// The unreliable datagrams of one tunnel connection, as the transport provides them.
pub trait DatagramIo: Send + Sync + 'static {
    /// Largest datagram the peer accepts; `None` if it takes none (an older peer).
    fn max_datagram_size(&self) -> Option<usize>;
    /// Queues a datagram; never waits (a full queue drops the oldest).
    fn send_datagram(&self, data: Vec<u8>) -> io::Result<()>;
    /// The next datagram from the peer; an error once the connection has ended.
    fn read_datagram(&self) -> ReadDatagram<'_>;
}

/// The flows of one connection: hands each arriving datagram to its flow.
///
/// Cheap to clone. A task reads the connection's datagrams for as long as a clone exists and the
/// connection lives.
#[derive(Clone)]
pub struct FlowMux {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FlowMux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowMux").finish_non_exhaustive()
    }
}

struct Inner {
    io: Arc<dyn DatagramIo>,
    flows: Arc<Mutex<Table>>,
    next_id: AtomicU32,
    reader: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
        if let Ok(mut flows) = self.flows.lock() {
            flows.clear();
        }
    }
}

impl FlowMux {
    /// Starts reading `io`'s datagrams (on the current tokio runtime).
    pub fn new(io: Arc<dyn DatagramIo>) -> Self {
        let flows: Arc<Mutex<Table>> = Arc::default();
        let reader = tokio::spawn(dispatch(Arc::clone(&io), Arc::clone(&flows)));
        Self {
            inner: Arc::new(Inner {
                io,
                flows,
                next_id: AtomicU32::new(0),
                reader: reader.abort_handle(),
            }),
        }
    }

    /// Whether flows can be used: the peer accepts datagrams and the connection is alive.
    pub fn usable(&self) -> bool {
        !self.inner.reader.is_finished() && self.inner.io.max_datagram_size().is_some()
    }

    /// Client: a new flow with an id not in use on this connection (the top bit clear).
    pub fn open(&self) -> Option<(u32, FlowTx, FlowRx)> {
        self.open_with(0)
    }

    /// Server: a new flow it names itself (a UDP expose's visitor), with the top bit of the id
    /// set, so that it can never collide with an id the client picked.
    pub fn open_from_server(&self) -> Option<(u32, FlowTx, FlowRx)> {
        self.open_with(SERVER_FLOW_BIT)
    }

    fn open_with(&self, side_bit: u32) -> Option<(u32, FlowTx, FlowRx)> {
        for _ in 0..16 {
            let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let id = (n & !SERVER_FLOW_BIT) | side_bit;
            if let Some((tx, rx)) = self.attach(id) {
                return Some((id, tx, rx));
            }
        }
        None
    }

    /// Server: the flow the client named; `None` if that id is taken on this connection.
    pub fn attach(&self, id: u32) -> Option<(FlowTx, FlowRx)> {
        let (sender, receiver) = mpsc::channel(FLOW_QUEUE);
        let own = sender.downgrade();
        {
            let mut table = self.inner.flows.lock().ok()?;
            if table.flows.get(&id).is_some_and(|s| !s.is_closed()) {
                return None;
            }
            for early in table.take_early(id) {
                let _ = sender.try_send(early);
            }
            table.flows.insert(id, sender);
        }
        let tx = FlowTx {
            id,
            io: Arc::clone(&self.inner.io),
        };
        let rx = FlowRx {
            id,
            receiver,
            own,
            flows: Arc::clone(&self.inner.flows),
        };
        Some((tx, rx))
    }
}

/// Reads the connection's datagrams and hands each to its flow, until the connection ends.
async fn dispatch(io: Arc<dyn DatagramIo>, flows: Arc<Mutex<Table>>) {
    while let Ok(datagram) = io.read_datagram().await {
        let Some(id) = datagram
            .get(..FLOW_ID_LEN)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
        else {
            continue;
        };
        let sender = {
            let Ok(mut table) = flows.lock() else {
                break;
            };
            match table.flows.get(&id) {
                Some(s) if !s.is_closed() => s.clone(),
                // Not attached yet (or gone: then it ages out of the early queue).
                _ => {
                    table.keep_early(id, datagram);
                    continue;
                }
            }
        };
        if sender.try_send(datagram).is_err() {
            debug!(flow = id, "udp flow busy, datagram dropped");
        }
    }
    // The connection is gone: every flow's `recv` ends.
    if let Ok(mut flows) = flows.lock() {
        flows.clear();
    }
}

/// Sends one flow's datagrams.
#[derive(Clone)]
pub struct FlowTx {
    id: u32,
    io: Arc<dyn DatagramIo>,
}

impl std::fmt::Debug for FlowTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTx").field("id", &self.id).finish()
    }
}

impl FlowTx {
    /// Sends `payload` tagged with `addr` (the target, from the client; the source, from the
    /// server). Too large for the peer: `InvalidInput`, and nothing is sent.
    pub fn send(&self, addr: &TargetAddr, payload: &[u8]) -> io::Result<()> {
        let mut datagram = Vec::with_capacity(FLOW_ID_LEN + addr.encoded_len() + payload.len());
        datagram.extend_from_slice(&self.id.to_be_bytes());
        addr.encode(&mut datagram);
        datagram.extend_from_slice(payload);
        self.io.send_datagram(datagram)
    }
}

/// Receives one flow's datagrams; dropping it ends the flow on this side.
pub struct FlowRx {
    id: u32,
    receiver: mpsc::Receiver<Vec<u8>>,
    /// The sender the mux holds for us, to recognise our entry without keeping it alive.
    own: mpsc::WeakSender<Vec<u8>>,
    flows: Arc<Mutex<Table>>,
}

impl std::fmt::Debug for FlowRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowRx").field("id", &self.id).finish()
    }
}

impl Drop for FlowRx {
    fn drop(&mut self) {
        // Only our own entry: a newer flow may have taken the id once ours closed.
        if let Ok(mut table) = self.flows.lock()
            && let Some(own) = self.own.upgrade()
            && table
                .flows
                .get(&self.id)
                .is_some_and(|s| s.same_channel(&own))
        {
            table.flows.remove(&self.id);
        }
    }
}

impl FlowRx {
    /// The next datagram: its address and payload. `None` once the connection has ended.
    /// Datagrams whose address does not parse are skipped.
    pub async fn recv(&mut self) -> Option<(TargetAddr, Vec<u8>)> {
        loop {
            let datagram = self.receiver.recv().await?;
            let body = datagram.get(FLOW_ID_LEN..).unwrap_or_default();
            match TargetAddr::decode(body) {
                Ok((addr, used)) => {
                    let payload = body.get(used..).unwrap_or_default().to_vec();
                    return Some((addr, payload));
                }
                Err(e) => debug!(flow = self.id, "udp flow datagram with a bad address: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// Two ends of an in-memory datagram link.
    struct Pipe {
        out: mpsc::UnboundedSender<Vec<u8>>,
        input: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    }

    impl DatagramIo for Pipe {
        fn max_datagram_size(&self) -> Option<usize> {
            Some(2000)
        }
        fn send_datagram(&self, data: Vec<u8>) -> io::Result<()> {
            if data.len() > 2000 {
                return Err(io::ErrorKind::InvalidInput.into());
            }
            self.out
                .send(data)
                .map_err(|_| io::Error::from(io::ErrorKind::NotConnected))
        }
        fn read_datagram(&self) -> ReadDatagram<'_> {
            Box::pin(async move {
                self.input
                    .lock()
                    .await
                    .recv()
                    .await
                    .ok_or_else(|| io::ErrorKind::NotConnected.into())
            })
        }
    }

    fn pipes() -> (Arc<Pipe>, Arc<Pipe>) {
        let (a_out, b_in) = mpsc::unbounded_channel();
        let (b_out, a_in) = mpsc::unbounded_channel();
        let a = Pipe {
            out: a_out,
            input: tokio::sync::Mutex::new(a_in),
        };
        let b = Pipe {
            out: b_out,
            input: tokio::sync::Mutex::new(b_in),
        };
        (Arc::new(a), Arc::new(b))
    }

    #[tokio::test]
    async fn datagrams_sent_before_the_flow_is_attached_are_kept() {
        let (a, b) = pipes();
        let client = FlowMux::new(a);
        let server = FlowMux::new(b);
        let (id, tx, _rx) = client.open().unwrap();
        let target: TargetAddr = "10.0.0.2:9".parse().unwrap();
        tx.send(&target, b"early").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let (_stx, mut srx) = server.attach(id).unwrap();
        assert_eq!(srx.recv().await, Some((target, b"early".to_vec())));
    }

    #[tokio::test]
    async fn flows_are_kept_apart_and_ids_are_exclusive() {
        let (a, b) = pipes();
        let client = FlowMux::new(a);
        let server = FlowMux::new(b);
        assert!(client.usable());
        let (id1, tx1, mut rx1) = client.open().unwrap();
        let (id2, tx2, mut rx2) = client.open().unwrap();
        assert_ne!(id1, id2);
        let (s_tx1, mut s_rx1) = server.attach(id1).unwrap();
        let (s_tx2, mut s_rx2) = server.attach(id2).unwrap();
        assert!(server.attach(id1).is_none(), "id taken twice");
        let target: TargetAddr = "10.0.0.1:53".parse().unwrap();
        tx1.send(&target, b"one").unwrap();
        tx2.send(&target, b"two").unwrap();
        assert_eq!(s_rx1.recv().await, Some((target.clone(), b"one".to_vec())));
        assert_eq!(s_rx2.recv().await, Some((target.clone(), b"two".to_vec())));
        let source = TargetAddr::Ip(SocketAddr::from(([10, 0, 0, 1], 53)));
        s_tx2.send(&source, b"back2").unwrap();
        s_tx1.send(&source, b"back1").unwrap();
        assert_eq!(rx1.recv().await, Some((source.clone(), b"back1".to_vec())));
        assert_eq!(rx2.recv().await, Some((source, b"back2".to_vec())));
        // Too large for the peer: refused, not cut.
        let err = tx1.send(&target, &[0; 2000]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // A finished flow frees its id.
        drop(s_rx1);
        assert!(server.attach(id1).is_some());
    }

    #[tokio::test]
    async fn server_opened_flows_never_take_a_client_id() {
        let (a, b) = pipes();
        let client = FlowMux::new(a);
        let server = FlowMux::new(b);
        let (c_id, _c_tx, _c_rx) = client.open().unwrap();
        let (s_id, s_tx, mut s_rx) = server.open_from_server().unwrap();
        assert_eq!(c_id & SERVER_FLOW_BIT, 0);
        assert_eq!(s_id & SERVER_FLOW_BIT, SERVER_FLOW_BIT);
        // Both counters start at 0: without the bit the ids would be equal.
        assert_eq!(s_id & !SERVER_FLOW_BIT, c_id);
        // The client attaches the server's flow and both ends talk.
        let (c_tx, mut c_rx) = client.attach(s_id).unwrap();
        let source = TargetAddr::Ip(SocketAddr::from(([192, 0, 2, 7], 5000)));
        s_tx.send(&source, b"to client").unwrap();
        assert_eq!(
            c_rx.recv().await,
            Some((source.clone(), b"to client".to_vec()))
        );
        c_tx.send(&source, b"to server").unwrap();
        assert_eq!(s_rx.recv().await, Some((source, b"to server".to_vec())));
    }
}
