//! Server scaling over cores, measured where the server is the only thing that works:
//! `cargo bench -p gaptun-proto --bench shards` (release build).
//!
//! Why not real client processes: on a small machine the clients do the same AEAD work as the
//! server and share its cores, so the server is never the bottleneck and one vs two server
//! workers cannot differ (see `crates/gaptun/benches/scale.rs` and `docs/benchmarks.md`).
//! Here the clients cost nothing during the measurement, because their traffic is recorded
//! first and replayed:
//!
//! 1. **Recording** (not timed). 8 client endpoints upload `GAPTUN_BENCH_MB` MB each (one
//!    stream per connection) to a server whose shards are made as the runtime makes them for
//!    `--threads N` (`Endpoint::new` for one, `Endpoint::new_sharded` for several; default
//!    transport settings, seeded RNG), over an ideal in-memory network with a virtual clock
//!    (0.1 ms one way, no loss). Client `i`'s datagrams go to shard `i % N`, as the kernel's
//!    `SO_REUSEPORT` spread would place them when it is even (the shard then owns the
//!    connection; its IDs name it). Every time a shard is driven (datagrams arrived or a timer
//!    was due) the call is recorded: its `now` and the datagrams, byte for byte.
//! 2. **Replay** (timed). Fresh server endpoints with the same seeds and configuration are
//!    driven with the same calls at the same `now` values: each datagram copied into a receive
//!    buffer (the kernel's copy) and handed to `handle_datagram`, expired timers fired,
//!    connections and streams accepted, events taken, stream data read as `Bytes` chunks into
//!    a sink, and every transmit the server makes (ACKs, flow-control credit) built and sealed
//!    into a buffer, then dropped. This is the per-datagram work of a runtime shard without
//!    its socket system calls. The core is deterministic (explicit clock, seeded RNG), so the
//!    replay does what the recording did; the bench checks it (every stream read to its end
//!    with the byte count sent, same number of transmits).
//!
//! Reported: aggregate goodput (the streams' bytes per wall second) with 1 shard on 1 worker
//! thread (`--threads 1`) and 2 shards on 2 worker threads (`--threads 2`), side by side, the
//! pair repeated in alternating order; server CPU seconds per GB (thread CPU clocks); and
//! controls that say why the figure carries to more cores: the 2-shard recording on one
//! thread (sharding itself adds no work per byte), 2 workers pinned to different cores, and 4
//! shards on 4 workers.
//!
//! Environment: `GAPTUN_BENCH_MB` (MB per client, default 96), `GAPTUN_BENCH_PAIRS` (default
//! 4), `GAPTUN_BENCH_CLIENTS` (default 8). Prints Markdown. On a machine shared with other jobs
//! run it at a raised priority, or the other jobs decide the ratio: with autogroup scheduling
//! (`/proc/sys/kernel/sched_autogroup_enabled`) a process's nice value only counts inside its
//! session, and a session gets one share of the CPU however many threads it runs, so as root
//! raise the session's own: `echo -15 > /proc/self/autogroup` in the shell that starts it
//! (and `echo 0` after). The "cores used" column says how much CPU the workers got.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use gaptun_bench_support::{env_u64, loadavg, machine_table};
use gaptun_proto::{
    CarrierId, ConnectionHandle, Endpoint, EndpointConfig, Event, Psk, ReadError, RngSeed,
    StreamEvent, StreamId, WriteError,
};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;

/// One-way delay of the recording's network (loopback-like).
const ONE_WAY: Duration = Duration::from_micros(100);
/// Datagrams per `poll_transmit` (the runtime's GSO batch on loopback).
const MAX_DATAGRAMS: usize = 32;
/// Largest chunk the sink takes per read (the runtime relay's read size).
const READ_CHUNK: usize = 64 * 1024;
/// Wall-clock time the endpoints believe it is at the start.
const UNIX_START: Duration = Duration::from_secs(1_800_000_000);
const PSK: [u8; 32] = [7; 32];

fn server_address() -> SocketAddr {
    "10.9.0.1:4000".parse().unwrap()
}

fn client_address(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250 + 1) as u8], 40_000))
}

/// The server's shards, built the same way for the recording and for every replay.
fn server_shards(shards: usize, start: Instant) -> Vec<Endpoint> {
    let config = Arc::new(EndpointConfig::server(vec![Psk::from_bytes(PSK)]));
    let seed = |k: usize| RngSeed::insecure_from_u64(0x5eed_0000 + k as u64);
    if shards == 1 {
        vec![Endpoint::new(config, seed(0), start, UNIX_START)]
    } else {
        Endpoint::new_sharded(config, (0..shards).map(seed).collect(), start, UNIX_START).unwrap()
    }
}

/// One recorded call into a shard: its time and the datagrams handed to it (as offsets into
/// the shard's byte arena, with their sources).
struct Step {
    now: Instant,
    datagrams: std::ops::Range<usize>,
}

/// Everything one shard was fed during the recording.
#[derive(Default)]
struct ShardTape {
    steps: Vec<Step>,
    /// (source, start, len) into `bytes`.
    datagrams: Vec<(SocketAddr, usize, usize)>,
    bytes: Vec<u8>,
    /// Transmits the shard made while recording (the replay must make as many).
    transmits: u64,
}

struct Recording {
    start: Instant,
    tapes: Vec<ShardTape>,
    /// Bytes each client uploaded.
    per_client: u64,
    clients: usize,
}

/// A server shard plus its application: accepts connections and streams and reads every stream
/// into a sink, as the runtime and the relay above it do.
struct Shard {
    endpoint: Endpoint,
    touched: Vec<ConnectionHandle>,
    streams: Vec<(ConnectionHandle, StreamId)>,
    /// Bytes read per stream, and whether its end was read.
    read: HashMap<(ConnectionHandle, StreamId), (u64, bool)>,
    transmits: u64,
    buf: Vec<u8>,
    /// Stands in for the socket the relay writes to: every chunk is summed byte by byte, so the
    /// data is really touched.
    sink_sum: u64,
}

impl Shard {
    fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            touched: Vec::new(),
            streams: Vec::new(),
            read: HashMap::new(),
            transmits: 0,
            buf: Vec::with_capacity(64 * 1024),
            sink_sum: 0,
        }
    }

    fn bytes_read(&self) -> u64 {
        self.read.values().map(|(n, _)| n).sum()
    }

    /// One driver iteration at `now` after `datagrams` were handed in; `out` gets every
    /// datagram the shard sends.
    fn drive(&mut self, now: Instant, out: &mut impl FnMut(SocketAddr, &[u8])) {
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
        }
        while self.endpoint.accept().is_some() {}
        self.dispatch();
        loop {
            self.buf.clear();
            let Some(t) = self
                .endpoint
                .poll_transmit(now, MAX_DATAGRAMS, &mut self.buf)
            else {
                break;
            };
            self.transmits += 1;
            let data = self.buf.get(..t.size).unwrap_or_default();
            match t.segment_size {
                Some(seg) if seg > 0 => data.chunks(seg).for_each(|d| out(t.destination, d)),
                _ => out(t.destination, data),
            }
        }
        self.dispatch();
    }

    fn receive(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        let other = self.endpoint.handle_datagram(now, CarrierId(0), from, data);
        assert!(other.is_none(), "a datagram reached the wrong shard");
    }

    /// Takes the events of the connections that had input and reads what became readable.
    fn dispatch(&mut self) {
        self.endpoint.take_touched(&mut self.touched);
        let touched = std::mem::take(&mut self.touched);
        for &handle in &touched {
            while let Some(event) = self.endpoint.poll_event(handle) {
                match event {
                    Event::Stream(StreamEvent::Opened) => {
                        while let Some(id) = self
                            .endpoint
                            .connection(handle)
                            .and_then(|c| c.accept_stream())
                        {
                            self.streams.push((handle, id));
                            self.read.insert((handle, id), (0, false));
                            self.drain(handle, id);
                        }
                    }
                    Event::Stream(StreamEvent::Readable(id)) => self.drain(handle, id),
                    Event::ConnectionLost(e) => panic!("server connection lost: {e}"),
                    _ => {}
                }
            }
        }
        self.touched = touched;
    }

    fn drain(&mut self, handle: ConnectionHandle, id: StreamId) {
        let Some(conn) = self.endpoint.connection(handle) else {
            return;
        };
        let Some(entry) = self.read.get_mut(&(handle, id)) else {
            return;
        };
        loop {
            match conn.read_chunk(id, READ_CHUNK) {
                Ok(Some(chunk)) if chunk.is_empty() => break,
                Ok(Some(chunk)) => {
                    entry.0 += chunk.len() as u64;
                    self.sink_sum = chunk
                        .iter()
                        .fold(self.sink_sum, |s, &b| s.wrapping_add(u64::from(b)));
                }
                Ok(None) => {
                    entry.1 = true;
                    break;
                }
                Err(ReadError::Blocked) => break,
                Err(e) => panic!("read {id}: {e}"),
            }
        }
    }
}

/// A client: one connection, one stream, `remaining` bytes to write.
struct Client {
    endpoint: Endpoint,
    handle: ConnectionHandle,
    stream: Option<StreamId>,
    remaining: u64,
    finished: bool,
    touched: Vec<ConnectionHandle>,
}

const FILLER: [u8; 16 * 1024] = [0x5a; 16 * 1024];

impl Client {
    fn pump(&mut self) {
        self.endpoint.take_touched(&mut self.touched);
        for &h in &self.touched {
            while let Some(event) = self.endpoint.poll_event(h) {
                if let Event::ConnectionLost(e) = event {
                    panic!("client connection lost: {e}");
                }
            }
        }
        let conn = self.endpoint.connection(self.handle).unwrap();
        if self.stream.is_none() && conn.is_established() {
            self.stream = conn.open_stream();
        }
        let Some(id) = self.stream else { return };
        while self.remaining > 0 {
            let n = (self.remaining as usize).min(FILLER.len());
            match conn.write(id, &FILLER[..n]) {
                Ok(0) | Err(WriteError::Blocked) => return,
                Ok(w) => self.remaining -= w as u64,
                Err(e) => panic!("write: {e}"),
            }
        }
        if !self.finished {
            conn.finish(id).unwrap();
            self.finished = true;
        }
    }
}

/// Runs the upload over the in-memory network and records every call into each shard.
fn record(shards: usize, clients: usize, per_client: u64) -> Recording {
    let start = Instant::now();
    let mut servers: Vec<Shard> = server_shards(shards, start)
        .into_iter()
        .map(Shard::new)
        .collect();
    let mut tapes: Vec<ShardTape> = (0..shards).map(|_| ShardTape::default()).collect();
    let mut nodes: Vec<Client> = (0..clients)
        .map(|i| {
            let config = Arc::new(EndpointConfig::client(Psk::from_bytes(PSK)));
            let mut endpoint = Endpoint::new(
                config,
                RngSeed::insecure_from_u64(0xc11e_0000 + i as u64),
                start,
                UNIX_START,
            );
            let handle = endpoint.connect(start, server_address()).unwrap();
            Client {
                endpoint,
                handle,
                stream: None,
                remaining: per_client,
                finished: false,
                touched: Vec::new(),
            }
        })
        .collect();
    let by_address: HashMap<SocketAddr, usize> =
        (0..clients).map(|i| (client_address(i), i)).collect();
    // In flight, in delivery order (the delay is constant): (due, client, datagram).
    let mut uplink: VecDeque<(Instant, usize, Vec<u8>)> = VecDeque::new();
    let mut downlink: VecDeque<(Instant, usize, Vec<u8>)> = VecDeque::new();
    let mut buf = Vec::new();
    let mut now = start;
    let total = per_client * clients as u64;
    let mut spins = 0u32;
    loop {
        // Clients: what reached them, their timers, their application, their sends.
        while downlink.front().is_some_and(|d| d.0 <= now) {
            let (_, i, mut data) = downlink.pop_front().unwrap();
            nodes[i]
                .endpoint
                .handle_datagram(now, CarrierId(0), server_address(), &mut data);
        }
        for (i, c) in nodes.iter_mut().enumerate() {
            if c.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                c.endpoint.handle_timeout(now);
            }
            c.pump();
            loop {
                buf.clear();
                let Some(t) = c.endpoint.poll_transmit(now, MAX_DATAGRAMS, &mut buf) else {
                    break;
                };
                let data = buf.get(..t.size).unwrap_or_default();
                let seg = t
                    .segment_size
                    .filter(|&s| s > 0)
                    .unwrap_or(data.len().max(1));
                for d in data.chunks(seg) {
                    uplink.push_back((now + ONE_WAY, i, d.to_vec()));
                }
            }
        }
        // Shards: driven (and recorded) when datagrams arrived for them or a timer is due.
        let mut due: Vec<Vec<(usize, Vec<u8>)>> = (0..shards).map(|_| Vec::new()).collect();
        while uplink.front().is_some_and(|d| d.0 <= now) {
            let (_, i, data) = uplink.pop_front().unwrap();
            due[i % shards].push((i, data));
        }
        for (s, (server, tape)) in servers.iter_mut().zip(&mut tapes).enumerate() {
            let timer = server.endpoint.poll_timeout().is_some_and(|t| t <= now);
            if due[s].is_empty() && !timer {
                continue;
            }
            let first = tape.datagrams.len();
            for (i, mut data) in due[s].drain(..) {
                let from = client_address(i);
                tape.datagrams.push((from, tape.bytes.len(), data.len()));
                tape.bytes.extend_from_slice(&data);
                server.receive(now, from, &mut data);
            }
            tape.steps.push(Step {
                now,
                datagrams: first..tape.datagrams.len(),
            });
            server.drive(now, &mut |to, d| {
                let i = by_address[&to];
                downlink.push_back((now + ONE_WAY, i, d.to_vec()));
            });
        }
        let done: u64 = servers.iter().map(Shard::bytes_read).sum();
        let ended = servers
            .iter()
            .map(|s| s.read.values().filter(|r| r.1).count())
            .sum::<usize>();
        if done == total && ended == clients {
            break;
        }
        let next = [uplink.front().map(|d| d.0), downlink.front().map(|d| d.0)]
            .into_iter()
            .flatten()
            .chain(servers.iter_mut().filter_map(|s| s.endpoint.poll_timeout()))
            .chain(nodes.iter_mut().filter_map(|c| c.endpoint.poll_timeout()))
            .min()
            .expect("recording stalled: nothing scheduled");
        if next > now {
            now = next;
            spins = 0;
        } else {
            spins += 1;
            assert!(spins < 100_000, "recording livelocked");
        }
    }
    for (server, tape) in servers.iter().zip(&mut tapes) {
        tape.transmits = server.transmits;
    }
    Recording {
        start,
        tapes,
        per_client,
        clients,
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// What one replay measured.
struct Replay {
    wall: Duration,
    /// CPU time of each worker thread.
    cpu: Vec<Duration>,
    /// Bytes read per worker.
    bytes: Vec<u64>,
}

impl Replay {
    fn gbit(&self) -> f64 {
        self.bytes.iter().sum::<u64>() as f64 * 8.0 / self.wall.as_secs_f64() / 1e9
    }

    /// Cores the workers got, on average: their CPU time over the wall time. On a machine
    /// shared with other jobs this is what bounds the ratio, not the server.
    fn cores(&self) -> f64 {
        self.cpu.iter().map(Duration::as_secs_f64).sum::<f64>() / self.wall.as_secs_f64()
    }

    fn s_per_gb(&self) -> f64 {
        let cpu: f64 = self.cpu.iter().map(Duration::as_secs_f64).sum();
        cpu / (self.bytes.iter().sum::<u64>() as f64 / 1e9)
    }
}

/// Replays `rec` on `workers` threads, worker `w` driving shards `s` with `s % workers == w`;
/// `pin`: worker `w` is bound to core `w`.
fn replay(rec: &Recording, workers: usize, pin: bool) -> Replay {
    let endpoints = server_shards(rec.tapes.len(), rec.start);
    let mut per_worker: Vec<Vec<(usize, Shard)>> = (0..workers).map(|_| Vec::new()).collect();
    for (s, endpoint) in endpoints.into_iter().enumerate() {
        per_worker[s % workers].push((s, Shard::new(endpoint)));
    }
    let barrier = Barrier::new(workers + 1);
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = per_worker
            .into_iter()
            .enumerate()
            .map(|(w, mut shards)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    if pin {
                        let mut set = CpuSet::new();
                        set.set(w).unwrap();
                        sched_setaffinity(Pid::from_raw(0), &set).unwrap();
                    }
                    // The steps of this worker's shards, in time order.
                    let mut order: Vec<(Instant, usize, usize)> = shards
                        .iter()
                        .enumerate()
                        .flat_map(|(k, (s, _))| {
                            rec.tapes[*s]
                                .steps
                                .iter()
                                .enumerate()
                                .map(move |(j, st)| (st.now, k, j))
                        })
                        .collect();
                    order.sort();
                    let mut recv = vec![0u8; 65_536];
                    barrier.wait();
                    let cpu0 = thread_cpu();
                    for (now, k, j) in order {
                        let (s, shard) = &mut shards[k];
                        let tape = &rec.tapes[*s];
                        for &(from, at, len) in &tape.datagrams[tape.steps[j].datagrams.clone()] {
                            let d = &mut recv[..len];
                            d.copy_from_slice(&tape.bytes[at..at + len]);
                            shard.receive(now, from, d);
                        }
                        shard.drive(now, &mut |_, d| {
                            std::hint::black_box(d);
                        });
                    }
                    let done = Instant::now();
                    let cpu = thread_cpu() - cpu0;
                    for (s, shard) in &shards {
                        let tape = &rec.tapes[*s];
                        assert_eq!(
                            shard.transmits, tape.transmits,
                            "replay of shard {s} diverged"
                        );
                        for &(n, end) in shard.read.values() {
                            assert!(
                                end && n == rec.per_client,
                                "replay of shard {s}: stream read {n} bytes"
                            );
                        }
                    }
                    let streams: usize = shards.iter().map(|(_, s)| s.read.len()).sum();
                    let bytes = shards.iter().map(|(_, s)| s.bytes_read()).sum::<u64>();
                    std::hint::black_box(shards.iter().map(|(_, s)| s.sink_sum).sum::<u64>());
                    (done, cpu, bytes, streams)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let out: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (t0, out)
    });
    let (t0, out) = results;
    let streams: usize = out.iter().map(|r| r.3).sum();
    assert_eq!(streams, rec.clients, "every client's stream was replayed");
    Replay {
        wall: out.iter().map(|r| r.0).max().unwrap() - t0,
        cpu: out.iter().map(|r| r.1).collect(),
        bytes: out.iter().map(|r| r.2).collect(),
    }
}

fn fmt_cpu(r: &Replay) -> String {
    r.cpu
        .iter()
        .map(|c| format!("{:.2}", c.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(" + ")
}

fn main() {
    let mb = env_u64("GAPTUN_BENCH_MB", 96);
    let pairs = env_u64("GAPTUN_BENCH_PAIRS", 4);
    let clients = env_u64("GAPTUN_BENCH_CLIENTS", 8) as usize;
    let per_client = mb * 1_000_000;
    eprintln!("recording {clients} uploads of {mb} MB, 1 shard and 2 shards ...");
    let one = record(1, clients, per_client);
    let two = record(2, clients, per_client);
    let split: Vec<usize> = two.tapes.iter().map(|t| t.steps.len()).collect();
    eprintln!(
        "recorded: 1 shard {} datagrams; 2 shards {} + {} datagrams ({split:?} steps)",
        one.tapes[0].datagrams.len(),
        two.tapes[0].datagrams.len(),
        two.tapes[1].datagrams.len()
    );
    // One replay of each before measuring: page in the tapes, warm the allocator.
    replay(&one, 1, false);
    replay(&two, 2, false);
    println!("### Server shards, replayed ({clients} connections, {mb} MB each)\n");
    println!("{}", machine_table());
    println!(
        "| run | 1 shard, 1 worker | 2 shards, 2 workers | ratio | server CPU s/GB 1 / 2 | cores used 1 / 2 | CPU s per worker, 2 workers | load average after |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for pair in 0..pairs {
        // Alternate the order, so a change in the machine's load does not favour one side.
        let (a, b) = if pair % 2 == 0 {
            let a = replay(&one, 1, false);
            (a, replay(&two, 2, false))
        } else {
            let b = replay(&two, 2, false);
            (replay(&one, 1, false), b)
        };
        let ratio = b.gbit() / a.gbit();
        ratios.push(ratio);
        println!(
            "| {}{} | {:.2} Gbit/s | {:.2} Gbit/s | {:.2}× | {:.2} / {:.2} | {:.2} / {:.2} | {} | {} |",
            pair + 1,
            if pair % 2 == 0 { "" } else { " (2 first)" },
            a.gbit(),
            b.gbit(),
            ratio,
            a.s_per_gb(),
            b.s_per_gb(),
            a.cores(),
            b.cores(),
            fmt_cpu(&b),
            loadavg()
        );
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
    println!("\nMean ratio 2 workers / 1 worker: {mean:.2}×\n");
    // Controls: the 2-shard tape on one thread (what sharding costs per byte), and on two
    // threads pinned to cores 0 and 1 (each shard alone on its core).
    // And 4 shards on 4 workers: more shards than cores neither gains nor loses.
    let same = replay(&two, 1, false);
    let pinned = (gaptun_bench_support::cores() >= 2).then(|| replay(&two, 2, true));
    drop(two);
    let four = record(4, clients, per_client);
    let four = replay(&four, 4, false);
    println!("| control | goodput | server CPU s/GB | cores used | CPU s per worker |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, r: &Replay| {
        println!(
            "| {name} | {:.2} Gbit/s | {:.2} | {:.2} | {} |",
            r.gbit(),
            r.s_per_gb(),
            r.cores(),
            fmt_cpu(r)
        );
    };
    row("2 shards on 1 worker", &same);
    if let Some(p) = &pinned {
        row("2 shards on 2 workers pinned to cores 0 and 1", p);
    }
    row("4 shards on 4 workers", &four);
    println!("\nload average after: {}", loadavg());
}
