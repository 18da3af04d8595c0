//! The link emulator: two network namespaces joined by two TUN devices, with this process
//! forwarding packets between the TUN fds through an impairment [`pipeline::Pipeline`] per
//! direction (one thread each).
//!
//! Layout: namespace A holds `10.201.0.1` (the client side), namespace B holds `10.201.0.2`
//! (the server side). Nothing is configured outside these two namespaces.

pub mod netns;
pub mod pipeline;
pub mod rng;
pub mod tun;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{BenchError, Result};
use pipeline::{Counters, ImpairConfig, Pipeline};
use tun::Tun;

/// Address of the client side (namespace A).
pub const ADDR_A: &str = "10.201.0.1";
/// Address of the server side (namespace B).
pub const ADDR_B: &str = "10.201.0.2";
/// MTU of both TUN devices.
pub const MTU: u32 = 1500;
/// Longest the forwarding loop sleeps, so it notices the stop flag quickly.
const MAX_SLEEP: Duration = Duration::from_millis(20);

/// Impairments of both directions and the RNG seed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkConfig {
    /// Client (A) to server (B).
    pub a_to_b: ImpairConfig,
    /// Server (B) to client (A).
    pub b_to_a: ImpairConfig,
    /// Seed; each direction derives its own stream from it.
    pub seed: u64,
}

/// Counters of one direction plus write failures on the outgoing TUN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DirStats {
    /// Pipeline counters.
    #[serde(flatten)]
    pub counters: Counters,
    /// Packets the pipeline released but the TUN refused.
    pub write_errors: u64,
}

/// Counters of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Client to server.
    pub a_to_b: DirStats,
    /// Server to client.
    pub b_to_a: DirStats,
}

impl LinkStats {
    /// Field-wise difference, to measure one interval.
    pub fn since(&self, earlier: &Self) -> Self {
        let d = |a: &DirStats, b: &DirStats| DirStats {
            counters: a.counters.since(&b.counters),
            write_errors: a.write_errors.saturating_sub(b.write_errors),
        };
        Self {
            a_to_b: d(&self.a_to_b, &earlier.a_to_b),
            b_to_a: d(&self.b_to_a, &earlier.b_to_a),
        }
    }

    /// Bytes offered to the link in both directions (what went "on the wire").
    pub fn wire_bytes(&self) -> u64 {
        self.a_to_b.counters.bytes_in + self.b_to_a.counters.bytes_in
    }
}

/// A running emulated link. Dropping it stops the threads and deletes the namespaces.
#[derive(Debug)]
pub struct Emulator {
    ns_a: String,
    ns_b: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: [Arc<Mutex<DirStats>>; 2],
}

impl Emulator {
    /// Names derived from `id` (normally the harness PID): namespaces `gtb-a-<id>`,
    /// `gtb-b-<id>`, devices `gtba<id>`, `gtbb<id>`.
    pub fn names(id: u32) -> (String, String, String, String) {
        (
            format!("{}a-{id}", netns::PREFIX),
            format!("{}b-{id}", netns::PREFIX),
            format!("gtba{id}"),
            format!("gtbb{id}"),
        )
    }

    /// Builds the namespaces and devices and starts forwarding.
    pub fn start(id: u32, link: &LinkConfig) -> Result<Self> {
        let (ns_a, ns_b, dev_a, dev_b) = Self::names(id);
        let mut emu = Self {
            ns_a,
            ns_b,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            stats: [Arc::default(), Arc::default()],
        };
        // Remove leftovers of a crashed run with the same id before creating.
        for ns in [&emu.ns_a, &emu.ns_b] {
            if netns::leftovers()?.contains(ns) {
                netns::delete(ns)?;
            }
        }
        netns::create(&emu.ns_a)?;
        netns::create(&emu.ns_b)?;
        let tun_a = Arc::new(Tun::create(&dev_a)?);
        let tun_b = Arc::new(Tun::create(&dev_b)?);
        netns::configure_p2p(&emu.ns_a, tun_a.name(), ADDR_A, ADDR_B, MTU)?;
        netns::configure_p2p(&emu.ns_b, tun_b.name(), ADDR_B, ADDR_A, MTU)?;
        let dirs = [
            (tun_a.clone(), tun_b.clone(), link.a_to_b.clone(), link.seed),
            (tun_b, tun_a, link.b_to_a.clone(), link.seed ^ 0x5A5A_5A5A),
        ];
        for (i, (src, dst, cfg, seed)) in dirs.into_iter().enumerate() {
            let stop = emu.stop.clone();
            let stats = emu.stats[i].clone();
            let pipe = Pipeline::new(cfg, seed);
            let handle = thread::Builder::new()
                .name(format!("emu-dir{i}"))
                .spawn(move || forward(&src, &dst, pipe, &stop, &stats))
                .map_err(|e| BenchError::Io {
                    context: "spawn forwarding thread".into(),
                    source: e,
                })?;
            emu.threads.push(handle);
        }
        Ok(emu)
    }

    /// Namespace of the client side.
    pub fn ns_a(&self) -> &str {
        &self.ns_a
    }

    /// Namespace of the server side.
    pub fn ns_b(&self) -> &str {
        &self.ns_b
    }

    /// A snapshot of both directions' counters.
    pub fn stats(&self) -> LinkStats {
        let get = |m: &Mutex<DirStats>| *m.lock().unwrap_or_else(PoisonError::into_inner);
        LinkStats {
            a_to_b: get(&self.stats[0]),
            b_to_a: get(&self.stats[1]),
        }
    }

    /// Stops forwarding and deletes both namespaces (also done on drop).
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = netns::delete(ns);
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The forwarding loop of one direction: release due packets, publish counters, then wait for
/// input until the next release (capped by [`MAX_SLEEP`]) and read everything waiting.
fn forward(src: &Tun, dst: &Tun, mut pipe: Pipeline, stop: &AtomicBool, stats: &Mutex<DirStats>) {
    let mut buf = vec![0u8; 65_536];
    let mut write_errors = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while let Some(pkt) = pipe.pop_due(now) {
            if dst.send(&pkt).is_err() {
                write_errors += 1;
            }
        }
        if let Ok(mut s) = stats.lock() {
            s.counters = *pipe.counters();
            s.write_errors = write_errors;
        }
        let sleep = pipe.next_release().map_or(MAX_SLEEP, |t| {
            t.saturating_duration_since(now).min(MAX_SLEEP)
        });
        match src.wait_readable(sleep) {
            Ok(true) => read_all(src, &mut buf, &mut pipe),
            Ok(false) => {}
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Reads every packet waiting on `src` into the pipeline (bounded per call to stay fair to
/// the release side).
fn read_all(src: &Tun, buf: &mut [u8], pipe: &mut Pipeline) {
    for _ in 0..256 {
        match src.recv(buf) {
            Ok(0) => return,
            Ok(n) => {
                let pkt = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
                pipe.push(Instant::now(), pkt);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => return,
        }
    }
}
