use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, last), 4000))
}

fn datagram(tag: u32, len: usize) -> Datagram {
    let mut data = vec![0u8; len.max(4)];
    data[..4].copy_from_slice(&tag.to_be_bytes());
    Datagram {
        src: addr(1),
        dst: addr(2),
        data,
    }
}

fn tag(d: &Datagram) -> u32 {
    u32::from_be_bytes([d.data[0], d.data[1], d.data[2], d.data[3]])
}

/// Sends `n` datagrams, one every `gap`, and collects all deliveries as (arrival, tag).
fn run(link: &mut Link, t0: Instant, n: u32, gap: Duration, len: usize) -> Vec<(Instant, u32)> {
    let mut out = Vec::new();
    let mut now = t0;
    for i in 0..n {
        now = t0 + gap * i;
        while let Some(d) = link.pop_due(now) {
            out.push((now, tag(&d)));
        }
        link.send(now, datagram(i, len));
    }
    while let Some(t) = link.next_delivery() {
        now = now.max(t);
        while let Some(d) = link.pop_due(now) {
            out.push((now, tag(&d)));
        }
    }
    out
}

#[test]
fn ideal_link_delivers_at_once_in_order() {
    let t0 = Instant::now();
    let mut link = Link::new(LinkConfig::ideal(), 1);
    assert_eq!(link.send(t0, datagram(1, 100)), 1);
    assert_eq!(link.send(t0, datagram(2, 100)), 1);
    assert_eq!(link.next_delivery(), Some(t0));
    assert_eq!(link.pop_due(t0).map(|d| tag(&d)), Some(1));
    assert_eq!(link.pop_due(t0).map(|d| tag(&d)), Some(2));
    assert_eq!(link.pop_due(t0), None);
    assert_eq!(link.stats().delivered, 2);
    assert_eq!(link.stats().bytes_delivered, 200);
}

#[test]
fn delay_is_exact() {
    let t0 = Instant::now();
    let delay = Duration::from_millis(50);
    let mut link = Link::new(LinkConfig::ideal().with_delay(delay), 1);
    link.send(t0, datagram(7, 1200));
    assert_eq!(link.next_delivery(), Some(t0 + delay));
    assert_eq!(link.pop_due(t0 + delay - Duration::from_nanos(1)), None);
    let d = link.pop_due(t0 + delay).expect("due exactly at the delay");
    assert_eq!(tag(&d), 7);
    assert_eq!(d.data.len(), 1200);
    assert_eq!(d.src, addr(1));
    assert_eq!(d.dst, addr(2));
}

#[test]
fn random_loss_matches_configured_rate() {
    let t0 = Instant::now();
    let mut link = Link::new(LinkConfig::ideal().with_loss(0.05), 42);
    let n = 100_000;
    let delivered = run(&mut link, t0, n, Duration::from_micros(10), 100).len();
    let loss = 1.0 - delivered as f64 / f64::from(n);
    // Standard deviation is about 0.0007; allow ~4 sigma.
    assert!((loss - 0.05).abs() < 0.003, "measured loss {loss}");
    assert_eq!(link.stats().lost_random, u64::from(n) - delivered as u64);
    assert_eq!(link.stats().lost_burst, 0);
}

#[test]
fn gilbert_elliott_mean_loss_and_burst_length() {
    let model = GilbertElliott::new(0.01, 0.25);
    let expected = 0.01 / (0.01 + 0.25);
    assert!((model.mean_loss() - expected).abs() < 1e-12);
    let t0 = Instant::now();
    let mut link = Link::new(LinkConfig::ideal().with_burst_loss(model), 7);
    let n = 200_000u32;
    let got: Vec<u32> = run(&mut link, t0, n, Duration::from_micros(10), 64)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let loss = 1.0 - got.len() as f64 / f64::from(n);
    assert!(
        (loss - expected).abs() < 0.005,
        "measured {loss}, expected {expected}"
    );
    // Mean length of runs of consecutive losses is 1 / p_bad_to_good = 4.
    let mut bursts = 0u32;
    let mut prev = None;
    for &t in &got {
        let gap_start = prev.map_or(0, |p| p + 1);
        if t > gap_start {
            bursts += 1;
        }
        prev = Some(t);
    }
    let lost = n - got.len() as u32;
    let mean_burst = f64::from(lost) / f64::from(bursts);
    assert!((mean_burst - 4.0).abs() < 0.3, "mean burst {mean_burst}");
    assert_eq!(link.stats().lost_burst, u64::from(lost));
}

#[test]
fn gilbert_elliott_from_mean_loss() {
    let model = GilbertElliott::with_mean_loss(0.1, 5.0);
    assert!((model.mean_loss() - 0.1).abs() < 1e-12);
    assert!((model.p_bad_to_good - 0.2).abs() < 1e-12);
    // Partial loss in both states.
    let model = GilbertElliott {
        p_good_to_bad: 0.1,
        p_bad_to_good: 0.3,
        loss_in_bad: 0.5,
        loss_in_good: 0.02,
    };
    assert!((model.mean_loss() - (0.25 * 0.5 + 0.75 * 0.02)).abs() < 1e-12);
}

#[test]
fn rate_limit_gives_exact_serialization_times() {
    let t0 = Instant::now();
    // 8 Mbit/s: 1000 bytes take exactly 1 ms.
    let cfg = LinkConfig::ideal()
        .with_rate_bps(8_000_000)
        .with_delay(Duration::from_millis(10));
    let mut link = Link::new(cfg, 1);
    for i in 0..5 {
        link.send(t0, datagram(i, 1000));
    }
    assert_eq!(link.queue_bytes(t0), 5000);
    assert_eq!(link.queue_bytes(t0 + Duration::from_micros(2500)), 2500);
    for i in 0..5u32 {
        let expected = t0 + Duration::from_millis(10) + Duration::from_millis(u64::from(i) + 1);
        assert_eq!(link.next_delivery(), Some(expected));
        assert_eq!(link.pop_due(expected).map(|d| tag(&d)), Some(i));
    }
    // Waits before serialization: 0, 1, 2, 3, 4 ms.
    let stats = link.stats();
    assert_eq!(stats.queued, 5);
    assert_eq!(stats.queue_delay_max, Duration::from_millis(4));
    assert_eq!(stats.queue_delay_avg(), Duration::from_millis(2));
    assert_eq!(stats.max_queue_bytes, 5000);
    // An idle serializer starts at once: no wait after it drained.
    let later = t0 + Duration::from_secs(1);
    link.send(later, datagram(9, 500));
    assert_eq!(
        link.next_delivery(),
        Some(later + Duration::from_millis(10) + Duration::from_micros(500))
    );
}

#[test]
fn rate_limit_caps_throughput() {
    let t0 = Instant::now();
    // 100 Mbit/s, offered 200 Mbit/s of 1250-byte datagrams (one every 50 us) for 1 s.
    let cfg = LinkConfig::ideal()
        .with_rate_mbps(100.0)
        .with_queue_bytes(100_000);
    let mut link = Link::new(cfg, 1);
    let got = run(&mut link, t0, 20_000, Duration::from_micros(50), 1250);
    // 1250 bytes at 100 Mbit/s = 100 us each: 10 000 fit in 1 s, plus what the queue held.
    let last = got.last().map(|(t, _)| *t).expect("some deliveries");
    let bytes = got.len() as u64 * 1250;
    let mbps = bytes as f64 * 8.0 / (last - t0).as_secs_f64() / 1e6;
    assert!((mbps - 100.0).abs() < 0.5, "throughput {mbps}");
    assert!(link.stats().queue_drops > 9_000);
}

#[test]
fn queue_drops_when_overfull() {
    let t0 = Instant::now();
    // 8 Mbit/s, queue of 3000 bytes: a burst of 10 x 1000 bytes keeps exactly 3.
    let cfg = LinkConfig::ideal()
        .with_rate_bps(8_000_000)
        .with_queue_bytes(3000);
    let mut link = Link::new(cfg, 1);
    let kept: usize = (0..10).map(|i| link.send(t0, datagram(i, 1000))).sum();
    assert_eq!(kept, 3);
    assert_eq!(link.stats().queue_drops, 7);
    assert_eq!(link.stats().max_queue_bytes, 3000);
    // After 1 ms one datagram has left: room for exactly one more.
    let t1 = t0 + Duration::from_millis(1);
    assert_eq!(link.send(t1, datagram(10, 1000)), 1);
    assert_eq!(link.send(t1, datagram(11, 1000)), 0);
    let tags: Vec<u32> = run(&mut link, t1, 0, Duration::ZERO, 0)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(tags, vec![0, 1, 2, 10]);
}

#[test]
fn oversized_datagram_passes_an_idle_queue() {
    let t0 = Instant::now();
    let cfg = LinkConfig::ideal()
        .with_rate_bps(8_000_000)
        .with_queue_bytes(100);
    let mut link = Link::new(cfg, 1);
    assert_eq!(link.send(t0, datagram(1, 1000)), 1);
    assert_eq!(link.send(t0, datagram(2, 10)), 0);
}

#[test]
fn jitter_keeps_fifo_order() {
    let t0 = Instant::now();
    let cfg = LinkConfig::ideal()
        .with_delay(Duration::from_millis(20))
        .with_jitter(Duration::from_millis(10));
    let mut link = Link::new(cfg, 3);
    let got = run(&mut link, t0, 5_000, Duration::from_micros(100), 100);
    assert_eq!(got.len(), 5_000);
    assert!(
        got.windows(2).all(|w| w[0].1 < w[1].1),
        "jitter reordered datagrams"
    );
    assert!(got.iter().all(|(t, i)| {
        let sent = t0 + Duration::from_micros(100) * *i;
        *t >= sent + Duration::from_millis(20)
    }));
    // And it actually varies the delay.
    let first_delay = got[0].0 - t0;
    assert!(
        got.iter()
            .any(|(t, i)| *t - (t0 + Duration::from_micros(100) * *i) != first_delay)
    );
}

#[test]
fn reordering_reorders() {
    let t0 = Instant::now();
    let cfg = LinkConfig::ideal()
        .with_delay(Duration::from_millis(10))
        .with_reorder(0.1, Duration::from_millis(5));
    let mut link = Link::new(cfg, 5);
    let got = run(&mut link, t0, 10_000, Duration::from_micros(100), 100);
    assert_eq!(got.len(), 10_000);
    let inversions = got.windows(2).filter(|w| w[0].1 > w[1].1).count();
    let held = link.stats().reordered;
    assert!((800..1200).contains(&held), "held back {held}");
    // Every held-back datagram is overtaken by the ~50 sent in the next 5 ms.
    assert!(
        inversions as u64 >= held * 9 / 10,
        "{inversions} inversions for {held} held"
    );
    // A held-back datagram arrives exactly delay + reorder_delay after sending.
    let mut sorted = got.clone();
    sorted.sort_by_key(|(_, i)| *i);
    let late = sorted
        .iter()
        .filter(|(t, i)| *t - (t0 + Duration::from_micros(100) * *i) == Duration::from_millis(15))
        .count();
    assert_eq!(late as u64, held);
}

#[test]
fn duplication_duplicates() {
    let t0 = Instant::now();
    let mut link = Link::new(LinkConfig::ideal().with_duplicate(0.2), 9);
    let got = run(&mut link, t0, 10_000, Duration::from_micros(100), 100);
    let dups = link.stats().duplicated;
    assert!((1800..2200).contains(&dups), "duplicated {dups}");
    assert_eq!(got.len() as u64, 10_000 + dups);
    let mut tags: Vec<u32> = got.iter().map(|(_, t)| *t).collect();
    tags.dedup();
    assert_eq!(tags, (0..10_000).collect::<Vec<_>>());
}

#[test]
fn corruption_flips_exactly_one_bit() {
    let t0 = Instant::now();
    let mut link = Link::new(LinkConfig::ideal().with_corrupt(1.0), 11);
    let original: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    for _ in 0..1000 {
        link.send(
            t0,
            Datagram {
                src: addr(1),
                dst: addr(2),
                data: original.clone(),
            },
        );
        let d = link.pop_due(t0).expect("delivered");
        let flipped: u32 = d
            .data
            .iter()
            .zip(&original)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert_eq!(flipped, 1);
    }
    assert_eq!(link.stats().corrupted, 1000);
    // Empty datagrams pass untouched and are not counted.
    link.send(
        t0,
        Datagram {
            src: addr(1),
            dst: addr(2),
            data: Vec::new(),
        },
    );
    assert_eq!(link.pop_due(t0).map(|d| d.data.len()), Some(0));
    assert_eq!(link.stats().corrupted, 1000);
}

fn impaired() -> LinkConfig {
    LinkConfig::ideal()
        .with_delay(Duration::from_millis(30))
        .with_jitter(Duration::from_millis(3))
        .with_rate_mbps(30.0)
        .with_queue_bytes(60_000)
        .with_loss(0.03)
        .with_burst_loss(GilbertElliott::with_mean_loss(0.02, 3.0))
        .with_reorder(0.02, Duration::from_millis(4))
        .with_duplicate(0.01)
        .with_corrupt(0.01)
}

fn full_trace(seed: u64) -> (Vec<(Instant, Datagram)>, LinkStats, Instant) {
    let t0 = Instant::now();
    let mut link = Link::new(impaired(), seed);
    let mut out = Vec::new();
    for i in 0..20_000u32 {
        let now = t0 + Duration::from_micros(150) * i;
        while let Some(d) = link.pop_due(now) {
            out.push((now, d));
        }
        link.send(now, datagram(i, 200 + (i as usize * 37) % 1100));
    }
    while let Some(t) = link.next_delivery() {
        while let Some(d) = link.pop_due(t) {
            out.push((t, d));
        }
    }
    (out, *link.stats(), t0)
}

#[test]
fn same_seed_gives_same_trace() {
    let (a, stats_a, t0a) = full_trace(1234);
    let (b, stats_b, t0b) = full_trace(1234);
    assert_eq!(stats_a, stats_b);
    assert_eq!(a.len(), b.len());
    for ((ta, da), (tb, db)) in a.iter().zip(&b) {
        assert_eq!(*ta - t0a, *tb - t0b);
        assert_eq!(da, db);
    }
    // Every impairment actually happened in this trace.
    assert!(stats_a.lost_random > 0 && stats_a.lost_burst > 0 && stats_a.queue_drops > 0);
    assert!(stats_a.duplicated > 0 && stats_a.reordered > 0 && stats_a.corrupted > 0);
    let (c, stats_c, _) = full_trace(1235);
    assert!(stats_c != stats_a || c.iter().zip(&a).any(|(x, y)| x.1 != y.1));
}

#[test]
fn blackhole_drops_at_entry_and_on_arrival() {
    let t0 = Instant::now();
    let mut link = Link::new(LinkConfig::ideal().with_delay(Duration::from_millis(10)), 1);
    link.send(t0, datagram(1, 10)); // arrives at 10 ms, inside the outage: dropped
    let t5 = t0 + Duration::from_millis(5);
    link.blackhole(t5, Some(t0 + Duration::from_millis(20)));
    assert!(link.is_blackholed(t5));
    assert_eq!(link.send(t5, datagram(2, 10)), 0); // sent during the outage
    link.send(t0 + Duration::from_millis(15), datagram(3, 10)); // dropped at entry
    let t20 = t0 + Duration::from_millis(20);
    assert!(!link.is_blackholed(t20));
    link.send(t20, datagram(4, 10)); // after the outage
    assert_eq!(link.pop_due(t0 + Duration::from_millis(29)), None);
    assert_eq!(
        link.pop_due(t0 + Duration::from_millis(30))
            .map(|d| tag(&d)),
        Some(4)
    );
    assert_eq!(link.stats().blackholed, 3);
    // Indefinite outage until cleared.
    link.blackhole(t20, None);
    assert!(link.is_blackholed(t0 + Duration::from_secs(3600)));
    link.clear_blackhole();
    assert!(!link.is_blackholed(t0 + Duration::from_secs(3600)));
}

#[test]
fn nonsense_probabilities_do_not_panic() {
    let t0 = Instant::now();
    let cfg = LinkConfig::ideal()
        .with_loss(f64::NAN)
        .with_duplicate(-1.0)
        .with_corrupt(7.0)
        .with_rate_bps(0)
        .with_burst_loss(GilbertElliott::new(f64::INFINITY, f64::NAN));
    let mut link = Link::new(cfg, 1);
    link.send(t0, datagram(1, 10));
    assert_eq!(link.stats().sent, 1);
}

#[test]
fn bdp_helper() {
    let cfg = LinkConfig::ideal().with_rate_mbps(100.0);
    assert_eq!(cfg.bdp_bytes(Duration::from_millis(100)), 1_250_000);
    assert_eq!(LinkConfig::ideal().bdp_bytes(Duration::from_secs(1)), 0);
}

#[test]
fn datagrams_above_the_size_limit_are_dropped_silently() {
    let t0 = Instant::now();
    let mut link = Link::new(LinkConfig::ideal().with_max_datagram(1400), 5);
    assert_eq!(link.send(t0, datagram(1, 1400)), 1);
    assert_eq!(link.send(t0, datagram(2, 1401)), 0);
    assert_eq!(link.send(t0, datagram(3, 200)), 1);
    let delivered: Vec<u32> = std::iter::from_fn(|| link.pop_due(t0))
        .map(|d| tag(&d))
        .collect();
    assert_eq!(delivered, vec![1, 3]);
    let stats = link.stats();
    assert_eq!(stats.too_big, 1);
    assert_eq!(stats.dropped(), 1);
    assert_eq!(stats.max_datagram_sent, 1401);
}
