//! A small packet-level simulation of flows sharing one bottleneck, used by the controller tests.
//!
//! One drop-tail bottleneck of rate `rate` and queue `queue` bytes, a fixed propagation delay,
//! optional random loss (on entry to the bottleneck or after it), and per-packet ACKs over a
//! lossless return path. Each flow is a greedy sender that drives a [`Controller`], a
//! [`DeliveryRate`] and a [`Pacer`] the way the connection does, with loss detected by packet
//! threshold (3) and a retransmission timeout. Time is virtual: nanoseconds since `t0`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use super::{AckSummary, Controller, DeliveryRate, Pacer, PacketRateState};
use crate::rtt::RttEstimator;

/// Where random loss happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LossAt {
    /// Before the bottleneck queue (the lost packet never uses the link).
    Entry,
    /// After the bottleneck (the lost packet used link capacity).
    Exit,
}

/// Path parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Path {
    /// Bottleneck rate, bytes per second.
    pub rate: u64,
    /// Round-trip propagation delay.
    pub rtt: Duration,
    /// Queue size in bytes.
    pub queue: u64,
    /// Random loss probability.
    pub loss: f64,
    pub loss_at: LossAt,
    /// Pacer wake-ups are rounded up to this (the driver's timer granularity).
    pub timer_granularity: Duration,
}

impl Path {
    /// 100 Mbit/s, 100 ms, a one-BDP queue, no loss, 1 ms timers.
    pub fn standard() -> Self {
        Self {
            rate: 12_500_000,
            rtt: Duration::from_millis(100),
            queue: 1_250_000,
            loss: 0.0,
            loss_at: LossAt::Entry,
            timer_granularity: Duration::from_millis(1),
        }
    }
}

pub(crate) const MTU: u64 = 1350;
const REORDER_THRESHOLD: u64 = 3;

#[derive(Debug, Clone, Copy)]
struct Sent {
    st: PacketRateState,
    time: u64,
}

/// One greedy sender.
pub(crate) struct Flow<C: Controller> {
    pub cc: C,
    delivery: DeliveryRate,
    pacer: Pacer,
    pub rtt: RttEstimator,
    /// Outstanding packets; index = packet number - `base`.
    sent: VecDeque<Option<Sent>>,
    base: u64,
    next_pn: u64,
    in_flight: u64,
    /// Earliest pending wake-up event, if any.
    wake: Option<u64>,
    /// When this flow starts sending (ns).
    start: u64,
    /// Bytes acknowledged, as (time ns, total) at every ACK.
    pub acked: u64,
    pub lost: u64,
    /// (time ns, cumulative acked bytes) checkpoints, every 10 ms.
    pub history: Vec<(u64, u64)>,
    last_ack: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Wake(usize),
    Ack(usize, u64),
    Rto(usize),
}

/// Test hook run after every ACK: (time ns, flow index, controller).
pub(crate) type AckHook<C> = Box<dyn FnMut(u64, usize, &C)>;

/// The whole simulation.
pub(crate) struct Sim<C: Controller> {
    pub path: Path,
    pub t0: Instant,
    pub now: u64,
    pub flows: Vec<Flow<C>>,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    link_free_at: u64,
    rng: u64,
    /// Queueing delay seen by each packet entering the queue: (time ns, delay ns).
    pub queue_delays: Vec<(u64, u64)>,
    /// Called after every ACK a flow processes.
    pub on_ack_hook: Option<AckHook<C>>,
}

impl<C: Controller> Sim<C> {
    pub fn new(path: Path, t0: Instant) -> Self {
        Self {
            path,
            t0,
            now: 0,
            flows: Vec::new(),
            events: BinaryHeap::new(),
            seq: 0,
            link_free_at: 0,
            rng: 0x2545_f491_4f6c_dd1d,
            queue_delays: Vec::new(),
            on_ack_hook: None,
        }
    }

    /// Adds a flow that starts sending `start` after t0.
    pub fn add_flow(&mut self, cc: C, start: Duration) -> usize {
        let start_ns = nanos(start);
        let at = self.t0 + start;
        self.flows.push(Flow {
            cc,
            delivery: DeliveryRate::new(at),
            pacer: Pacer::new(at, MTU),
            rtt: RttEstimator::new(Duration::from_millis(300)),
            sent: VecDeque::new(),
            base: 0,
            next_pn: 0,
            in_flight: 0,
            wake: None,
            start: start_ns,
            acked: 0,
            lost: 0,
            history: vec![(start_ns, 0)],
            last_ack: start_ns,
        });
        let i = self.flows.len() - 1;
        self.schedule(start_ns, Ev::Wake(i));
        self.flows[i].wake = Some(start_ns);
        i
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, ev)));
    }

    fn instant(&self, t: u64) -> Instant {
        self.t0 + Duration::from_nanos(t)
    }

    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Runs until `end` after t0.
    pub fn run_until(&mut self, end: Duration) {
        let end = nanos(end);
        while let Some(Reverse((t, _, ev))) = self.events.peek().copied() {
            if t > end {
                break;
            }
            self.events.pop();
            self.now = t;
            match ev {
                Ev::Wake(i) => {
                    if self.flows[i].wake == Some(t) {
                        self.flows[i].wake = None;
                    }
                    self.try_send(i);
                }
                Ev::Ack(i, pn) => {
                    self.on_ack(i, pn);
                    self.try_send(i);
                }
                Ev::Rto(i) => self.on_rto(i),
            }
        }
        self.now = end;
    }

    fn try_send(&mut self, i: usize) {
        let now = self.now;
        let at = self.instant(now);
        loop {
            let f = &mut self.flows[i];
            if now < f.start || f.in_flight + MTU > f.cc.window() {
                return;
            }
            let rate = f.cc.pacing_rate(&f.rtt).unwrap_or(u64::MAX);
            if let Some(t) = f.pacer.delay(at, MTU, rate) {
                let g = nanos(self.path.timer_granularity).max(1);
                let wake = nanos(t.duration_since(self.t0)).div_ceil(g) * g;
                if f.wake.is_none_or(|w| w > wake) {
                    f.wake = Some(wake);
                    self.schedule(wake, Ev::Wake(i));
                }
                return;
            }
            let st = f.delivery.on_sent(at, f.in_flight);
            f.in_flight += MTU;
            f.cc.on_sent(at, MTU, f.in_flight);
            f.pacer.on_sent(MTU);
            let pn = f.next_pn;
            f.next_pn += 1;
            f.sent.push_back(Some(Sent { st, time: now }));
            if f.in_flight == MTU {
                let rto = now + nanos(f.rtt.rto_base() * 2);
                self.schedule(rto, Ev::Rto(i));
            }
            self.transmit(i, pn);
        }
    }

    /// Puts packet `pn` of flow `i` on the path.
    fn transmit(&mut self, i: usize, pn: u64) {
        let now = self.now;
        if self.path.loss_at == LossAt::Entry && self.random() < self.path.loss {
            return;
        }
        let backlog = self.link_free_at.saturating_sub(now);
        let queued = u128::from(backlog) * u128::from(self.path.rate) / 1_000_000_000;
        if queued + u128::from(MTU) > u128::from(self.path.queue + MTU) {
            return;
        }
        self.queue_delays.push((now, backlog));
        let service = MTU * 1_000_000_000 / self.path.rate;
        let departure = self.link_free_at.max(now) + service;
        self.link_free_at = departure;
        if self.path.loss_at == LossAt::Exit && self.random() < self.path.loss {
            return;
        }
        let ack_at = departure + nanos(self.path.rtt);
        self.schedule(ack_at, Ev::Ack(i, pn));
    }

    fn on_ack(&mut self, i: usize, pn: u64) {
        let now = self.now;
        let at = self.instant(now);
        let f = &mut self.flows[i];
        let Some(idx) = pn.checked_sub(f.base) else {
            return;
        };
        let Some(Some(p)) = f.sent.get(usize::try_from(idx).unwrap()).copied() else {
            return;
        };
        f.sent[usize::try_from(idx).unwrap()] = None;
        f.in_flight -= MTU;
        f.delivery.on_acked(at, &p.st, MTU);
        f.rtt
            .update(Duration::ZERO, Duration::from_nanos(now - p.time));
        f.acked += MTU;
        f.last_ack = now;
        if f.history
            .last()
            .is_some_and(|&(t, _)| now >= t + 10_000_000)
        {
            f.history.push((now, f.acked));
        }
        // Packet-threshold loss detection.
        let mut lost = 0;
        let mut largest_lost = 0;
        for j in 0..f.sent.len() {
            let n = f.base + j as u64;
            if n + REORDER_THRESHOLD > pn {
                break;
            }
            if let Some(s) = f.sent[j].take() {
                lost += 1;
                largest_lost = s.time;
            }
        }
        while f.sent.front().is_some_and(Option::is_none) {
            f.sent.pop_front();
            f.base += 1;
        }
        f.in_flight -= lost * MTU;
        f.lost += lost * MTU;
        let sample = f.delivery.take_sample();
        let summary = AckSummary {
            acked_bytes: MTU,
            acked_packets: 1,
            sample,
        };
        f.cc.on_ack(at, &summary, &f.rtt, f.in_flight);
        if lost > 0 {
            f.cc.on_loss(
                at,
                lost * MTU,
                lost,
                self.t0 + Duration::from_nanos(largest_lost),
                f.in_flight,
            );
        }
        if let Some(hook) = &mut self.on_ack_hook {
            hook(now, i, &self.flows[i].cc);
        }
    }

    /// Declares everything outstanding lost when nothing was acknowledged for two RTOs.
    fn on_rto(&mut self, i: usize) {
        let now = self.now;
        let f = &mut self.flows[i];
        if f.in_flight == 0 {
            return;
        }
        let rto = nanos(f.rtt.rto_base() * 2);
        if now < f.last_ack + rto {
            let at = f.last_ack + rto;
            self.schedule(at, Ev::Rto(i));
            return;
        }
        let mut lost = 0;
        for s in f.sent.iter_mut() {
            if s.take().is_some() {
                lost += 1;
            }
        }
        f.base += f.sent.len() as u64;
        f.sent.clear();
        f.in_flight = 0;
        f.lost += lost * MTU;
        f.last_ack = now;
        let at = self.t0 + Duration::from_nanos(now);
        f.cc.on_loss(at, lost * MTU, lost, at, 0);
        self.try_send(i);
    }

    /// Bytes per second flow `i` delivered between `from` and `to` after t0.
    pub fn goodput(&self, i: usize, from: Duration, to: Duration) -> f64 {
        let h = &self.flows[i].history;
        let at = |t: u64| {
            h.iter()
                .take_while(|&&(ht, _)| ht <= t)
                .last()
                .map_or(0, |&(_, b)| b)
        };
        let (from, to) = (nanos(from), nanos(to));
        (at(to) - at(from)) as f64 / ((to - from) as f64 / 1e9)
    }

    /// Mean queueing delay of packets entering the queue between `from` and `to`.
    pub fn mean_queue_delay(&self, from: Duration, to: Duration) -> Duration {
        let (from, to) = (nanos(from), nanos(to));
        let v: Vec<u64> = self
            .queue_delays
            .iter()
            .filter(|&&(t, _)| t >= from && t < to)
            .map(|&(_, d)| d)
            .collect();
        if v.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_nanos(v.iter().sum::<u64>() / v.len() as u64)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
