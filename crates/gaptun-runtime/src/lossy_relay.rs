//! A UDP relay that imitates a bad network: random loss, a fixed one-way delay, and reordering
//! (some datagrams held back a little longer than the rest, so later ones overtake them).
//!
//! Used by `gaptun demo` and by integration tests to put a real (loopback) bad path between a
//! client and a server. Clients send to the relay's address; for each client address the relay
//! opens its own upstream socket (like a NAT), so the server sees one address per client and
//! answers find their way back.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::debug;

/// Client addresses the relay tracks at most; datagrams from further ones are dropped.
const MAX_CLIENTS: usize = 256;

/// Datagrams held in one direction's delay line; when full, new ones are dropped (a router's
/// queue overflowing).
const DELAY_LINE: usize = 16 * 1024;

/// How the relay mistreats traffic. The same figures apply to both directions.
#[derive(Debug, Clone, Copy)]
pub struct LossyConfig {
    /// Where clients send to.
    pub listen: SocketAddr,
    /// The real server.
    pub upstream: SocketAddr,
    /// Probability that a datagram is dropped, 0.0..=1.0.
    pub loss: f64,
    /// One-way delay added to every datagram (the RTT grows by twice this).
    pub delay: Duration,
    /// Seed of the loss decisions, for repeatable runs.
    pub seed: u64,
    /// Probability that a datagram that is not lost is held back by `reorder_delay` on top of
    /// `delay`, 0.0..=1.0: datagrams sent after it during that time overtake it.
    pub reorder: f64,
    /// Extra delay of a reordered datagram.
    pub reorder_delay: Duration,
}

impl LossyConfig {
    /// A relay from `listen` to `upstream` that delivers everything at once, in order; set the
    /// impairment fields to make it worse.
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        Self {
            listen,
            upstream,
            loss: 0.0,
            delay: Duration::ZERO,
            seed: 0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
        }
    }
}

/// Counters, readable while the relay runs.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Datagrams passed on (both directions).
    pub forwarded: AtomicU64,
    /// Datagrams dropped on purpose (both directions).
    pub dropped: AtomicU64,
    /// Datagrams held back so that later ones overtake them (both directions).
    pub reordered: AtomicU64,
    /// Datagrams passed on from clients to the server.
    pub to_server: AtomicU64,
    /// Datagrams passed on from the server to clients.
    pub to_client: AtomicU64,
}

/// A running relay; stops when dropped.
#[derive(Debug)]
pub struct LossyRelay {
    local_addr: SocketAddr,
    counters: Arc<RelayCounters>,
    tasks: JoinSet<()>,
}

impl LossyRelay {
    /// Binds `config.listen` and starts relaying.
    pub async fn spawn(config: LossyConfig) -> io::Result<Self> {
        let front = Arc::new(UdpSocket::bind(config.listen).await?);
        let local_addr = front.local_addr()?;
        let counters = Arc::new(RelayCounters::default());
        let mut tasks = JoinSet::new();
        let (to_client, lane) = mpsc::channel(DELAY_LINE);
        tasks.spawn(delay_line(Arc::clone(&front), lane));
        tasks.spawn(run_front(front, config, to_client, Arc::clone(&counters)));
        Ok(Self {
            local_addr,
            counters,
            tasks,
        })
    }

    /// Where clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Datagrams passed on and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counters.forwarded.load(Ordering::Relaxed),
            self.counters.dropped.load(Ordering::Relaxed),
        )
    }

    /// Datagrams passed on towards the server and towards the clients so far.
    pub fn counts_by_direction(&self) -> (u64, u64) {
        (
            self.counters.to_server.load(Ordering::Relaxed),
            self.counters.to_client.load(Ordering::Relaxed),
        )
    }

    /// Datagrams held back for reordering so far.
    pub fn reordered(&self) -> u64 {
        self.counters.reordered.load(Ordering::Relaxed)
    }

    /// Stops relaying.
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

/// One datagram waiting in a delay line.
struct Delayed {
    due: Instant,
    to: SocketAddr,
    data: Vec<u8>,
}

/// Decides, with a seeded RNG, which datagrams get lost and which get held back.
struct Impairment {
    rng: StdRng,
    loss: f64,
    delay: Duration,
    reorder: f64,
    reorder_delay: Duration,
    counters: Arc<RelayCounters>,
    /// Counts what this direction passes on.
    passed: fn(&RelayCounters) -> &AtomicU64,
}

impl Impairment {
    fn new(
        config: &LossyConfig,
        rng: StdRng,
        counters: Arc<RelayCounters>,
        passed: fn(&RelayCounters) -> &AtomicU64,
    ) -> Self {
        Self {
            passed,
            rng,
            loss: config.loss.clamp(0.0, 1.0),
            delay: config.delay,
            reorder: config.reorder.clamp(0.0, 1.0),
            reorder_delay: config.reorder_delay,
            counters,
        }
    }

    /// The datagram's due time, or `None` if it is lost.
    fn admit(&mut self) -> Option<Instant> {
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        (self.passed)(&self.counters).fetch_add(1, Ordering::Relaxed);
        let mut due = Instant::now() + self.delay;
        if self.reorder > 0.0 && self.rng.random_bool(self.reorder) {
            self.counters.reordered.fetch_add(1, Ordering::Relaxed);
            due += self.reorder_delay;
        }
        Some(due)
    }
}

/// Sends datagrams from `lane` through `socket` once they are due, earliest first (datagrams
/// with the same due time keep their order).
async fn delay_line(socket: Arc<UdpSocket>, mut lane: mpsc::Receiver<Delayed>) {
    let mut queue: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut held: HashMap<u64, Delayed> = HashMap::new();
    let mut seq = 0u64;
    let mut open = true;
    while open || !held.is_empty() {
        let next_due = queue.peek().map(|Reverse((due, _))| *due);
        tokio::select! {
            received = lane.recv(), if open && held.len() < DELAY_LINE => match received {
                Some(d) => {
                    seq += 1;
                    queue.push(Reverse((d.due, seq)));
                    held.insert(seq, d);
                }
                None => open = false,
            },
            () = sleep_until_due(next_due) => {
                let now = Instant::now();
                while let Some(&Reverse((due, id))) = queue.peek() {
                    if due > now {
                        break;
                    }
                    queue.pop();
                    if let Some(d) = held.remove(&id)
                        && let Err(e) = socket.send_to(&d.data, d.to).await
                    {
                        debug!("relay send to {}: {e}", d.to);
                    }
                }
            }
        }
    }
}

/// Sleeps until `due`, or forever when nothing is queued.
async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Reads from clients and hands each datagram to that client's upstream lane.
async fn run_front(
    front: Arc<UdpSocket>,
    config: LossyConfig,
    to_client: mpsc::Sender<Delayed>,
    counters: Arc<RelayCounters>,
) {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut clients: HashMap<SocketAddr, mpsc::Sender<Delayed>> = HashMap::new();
    let mut impair = Impairment::new(
        &config,
        StdRng::seed_from_u64(rng.random()),
        Arc::clone(&counters),
        |c| &c.to_server,
    );
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match front.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                debug!("relay receive: {e}");
                continue;
            }
        };
        let Some(data) = buf.get(..n).map(<[u8]>::to_vec) else {
            continue;
        };
        if !clients.contains_key(&from) {
            if clients.len() >= MAX_CLIENTS {
                continue;
            }
            let Ok(lane) = open_upstream(
                config,
                from,
                to_client.clone(),
                StdRng::seed_from_u64(rng.random()),
                Arc::clone(&counters),
                &mut tasks,
            )
            .await
            else {
                continue;
            };
            clients.insert(from, lane);
        }
        let Some(due) = impair.admit() else { continue };
        if let Some(lane) = clients.get(&from) {
            let _ = lane.try_send(Delayed {
                due,
                to: config.upstream,
                data,
            });
        }
    }
}

/// Opens the upstream socket for client `client` and starts its two tasks: the delay line
/// towards the server and the reader of the server's answers.
async fn open_upstream(
    config: LossyConfig,
    client: SocketAddr,
    to_client: mpsc::Sender<Delayed>,
    rng: StdRng,
    counters: Arc<RelayCounters>,
    tasks: &mut JoinSet<()>,
) -> io::Result<mpsc::Sender<Delayed>> {
    let bind: SocketAddr = if config.upstream.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = Arc::new(UdpSocket::bind(bind).await?);
    let (lane_tx, lane_rx) = mpsc::channel(DELAY_LINE);
    tasks.spawn(delay_line(Arc::clone(&socket), lane_rx));
    let mut impair = Impairment::new(&config, rng, counters, |c| &c.to_client);
    tasks.spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    debug!("relay upstream receive: {e}");
                    continue;
                }
            };
            if from != config.upstream {
                continue;
            }
            let Some(due) = impair.admit() else { continue };
            let data = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
            let _ = to_client.try_send(Delayed {
                due,
                to: client,
                data,
            });
        }
    });
    Ok(lane_tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        (addr, h)
    }

    #[tokio::test]
    async fn relays_with_delay_and_no_loss() {
        let (upstream, _h) = echo_server().await;
        let relay = LossyRelay::spawn(LossyConfig {
            delay: Duration::from_millis(20),
            ..LossyConfig::new("127.0.0.1:0".parse().unwrap(), upstream)
        })
        .await
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let start = std::time::Instant::now();
        client.send_to(b"hello", relay.local_addr()).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, relay.local_addr());
        assert!(
            start.elapsed() >= Duration::from_millis(40),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(relay.counts(), (2, 0));
        assert_eq!(relay.counts_by_direction(), (1, 1));
    }

    #[tokio::test]
    async fn total_loss_drops_everything() {
        let (upstream, _h) = echo_server().await;
        let relay = LossyRelay::spawn(LossyConfig {
            loss: 1.0,
            seed: 1,
            ..LossyConfig::new("127.0.0.1:0".parse().unwrap(), upstream)
        })
        .await
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..5 {
            client.send_to(b"x", relay.local_addr()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(relay.counts(), (0, 5));
    }

    #[tokio::test]
    async fn reordering_lets_later_datagrams_overtake() {
        let (upstream, _h) = echo_server().await;
        let relay = LossyRelay::spawn(LossyConfig {
            reorder: 0.3,
            reorder_delay: Duration::from_millis(30),
            seed: 7,
            ..LossyConfig::new("127.0.0.1:0".parse().unwrap(), upstream)
        })
        .await
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..100u8 {
            client.send_to(&[i], relay.local_addr()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 8];
        while got.len() < 100 {
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n, 1);
            got.push(buf[0]);
        }
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..100).collect::<Vec<u8>>(),
            "nothing lost or duplicated"
        );
        assert_ne!(got, sorted, "some datagrams arrive out of order");
        assert!(relay.reordered() > 0);
    }
}
