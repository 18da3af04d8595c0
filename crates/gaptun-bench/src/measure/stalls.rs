//! A probe for stalls of the machine itself while a latency test runs.
//!
//! A thread under the real-time FIFO scheduler sleeps 1 ms at a time and records how much
//! longer each sleep took. No process of the benchmark can delay it (they all run under the
//! timesharing scheduler), so what it sees is the machine: interrupts and, on a virtual
//! machine, the hypervisor taking the CPU away. Such a stall delays every packet the link
//! emulator and the tunnels hold at that moment; with the latency client's connections in
//! lockstep it delays ten exchanges at once, 2 % of a 500-exchange sample, which is enough to
//! move a 99th percentile by the stall's length. The probe puts that next to the figures.
#![allow(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The probe's sleep.
const TICK: Duration = Duration::from_millis(1);
/// Oversleep from which a tick counts as a stall.
pub const STALL: Duration = Duration::from_millis(2);

/// What the probe saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StallReport {
    /// Whether the probe ran under the real-time scheduler (otherwise it also saw the
    /// benchmark's own load).
    pub realtime: bool,
    /// Ticks that overslept by more than [`STALL`].
    pub stalls: u64,
    /// Longest oversleep, in ms.
    pub max_ms: f64,
    /// Sum of the oversleeps beyond [`STALL`], in ms.
    pub stalled_ms: f64,
    /// How long the probe ran, in seconds.
    pub seconds: f64,
}

/// A running probe; [`StallProbe::finish`] stops it and returns its report.
#[derive(Debug)]
pub struct StallProbe {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<StallReport>>,
}

impl StallProbe {
    /// Starts the probe thread.
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::Builder::new()
            .name("stall-probe".into())
            .spawn(move || probe(&flag))
            .ok();
        Self { stop, handle }
    }

    /// Stops the probe; `None` if its thread could not be started.
    pub fn finish(mut self) -> Option<StallReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take()?.join().ok()
    }
}

impl Drop for StallProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn probe(stop: &AtomicBool) -> StallReport {
    let mut r = StallReport {
        realtime: set_realtime(),
        ..StallReport::default()
    };
    let begin = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        thread::sleep(TICK);
        let over = t.elapsed().saturating_sub(TICK);
        record(&mut r, over);
    }
    r.seconds = begin.elapsed().as_secs_f64();
    r
}

/// Adds one tick's oversleep to the report.
fn record(r: &mut StallReport, over: Duration) {
    let ms = over.as_secs_f64() * 1e3;
    r.max_ms = r.max_ms.max(ms);
    if over > STALL {
        r.stalls += 1;
        r.stalled_ms += ms;
    }
}

/// Moves the calling thread to the real-time FIFO scheduler (needs root); whether it worked.
fn set_realtime() -> bool {
    let param = libc::sched_param { sched_priority: 50 };
    // SAFETY: a valid sched_param for the calling thread (pid 0).
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversleeps_above_the_threshold_are_stalls() {
        let mut r = StallReport::default();
        record(&mut r, Duration::from_micros(300));
        record(&mut r, Duration::from_millis(7));
        record(&mut r, Duration::from_millis(3));
        assert_eq!(r.stalls, 2);
        assert!((r.max_ms - 7.0).abs() < 1e-9);
        assert!((r.stalled_ms - 10.0).abs() < 1e-9);
    }

    #[test]
    fn the_probe_runs_and_reports() {
        let p = StallProbe::start();
        thread::sleep(Duration::from_millis(30));
        let r = p.finish().expect("probe thread");
        assert!(r.seconds >= 0.02, "{r:?}");
        assert!(r.max_ms >= 0.0);
    }
}
