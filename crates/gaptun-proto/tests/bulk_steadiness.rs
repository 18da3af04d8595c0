//! A bulk transfer on a long lossy path keeps the link busy from the end of its start-up to
//! its last second: no pause while a lost flow-control credit waits for its retransmission
//! timeout, and no ProbeRTT every 10 s for a flow that keeps no standing queue.
//!
//! Both used to cost some 300–500 ms with next to nothing sent at 100 ms RTT (3–5 % of the
//! goodput of a transfer of a few seconds, as the benchmark measures it). The seed below
//! reproduces both: a credit grant lost at about 3 s while the reader had fallen behind on
//! holes, and the min-RTT estimate expiring at about 11 s.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use gaptun_proto::FecMode;
use gaptun_sim::{BulkTransfer, Direction, LinkConfig, Path, Sim, SimConfig, Stage};

/// Bytes delivered by the uplink in each 100 ms of virtual time.
fn uplink_bins(sim: &mut Sim) -> Rc<RefCell<Vec<u64>>> {
    let bins: Rc<RefCell<Vec<u64>>> = Rc::default();
    let tap = Rc::clone(&bins);
    sim.add_tap(move |e| {
        if e.stage == Stage::Delivered && e.path == Path::Uplink {
            let i = usize::try_from(e.at.as_millis() / 100).unwrap_or(usize::MAX);
            let mut b = tap.borrow_mut();
            if b.len() <= i {
                b.resize(i + 1, 0);
            }
            b[i] += e.data.len() as u64;
        }
    });
    bins
}

#[test]
fn a_bulk_transfer_at_ten_percent_loss_never_pauses() {
    let link = LinkConfig::ideal()
        .with_delay(Duration::from_millis(50))
        .with_rate_mbps(100.0)
        .with_loss(0.1);
    let config = SimConfig::new(3)
        .with_link(link)
        .with_transport(|t| t.fec = FecMode::Off);
    let mut sim = Sim::new(config);
    let bins = uplink_bins(&mut sim);
    let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 130_000_000, 3));
    assert!(sim.run_workloads(Duration::from_secs(120)));
    let w = sim.workload::<BulkTransfer>(id).expect("workload");
    assert_eq!(w.verify(), Ok(()));
    let mbit: Vec<u64> = bins.borrow().iter().map(|b| b * 8 / 100_000).collect();
    // From a second after the link first ran full (start-up over) to the last second.
    let full = mbit
        .iter()
        .position(|&m| m >= 95)
        .expect("the link ran full");
    let (from, to) = (full + 10, mbit.len().saturating_sub(10));
    assert!(to > from + 80, "the steady part lasted {} bins", to - from);
    let slow: Vec<String> = (from..to)
        .filter(|&i| mbit[i] < 80)
        .map(|i| format!("{} Mbit/s at {:.1} s", mbit[i], i as f64 / 10.0))
        .collect();
    assert!(slow.is_empty(), "the link idled: {}", slow.join(", "));
}
