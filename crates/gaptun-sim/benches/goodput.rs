//! Goodput benchmark, entirely in simulated time.
//!
//! A bulk upload over one stream on a 100 Mbit/s, 100 ms RTT path (50 ms each way, same
//! impairments both ways) with a drop-tail queue of one bandwidth-delay product (1.25 MB), at
//! 0, 1, 5, 10 and 20 % random loss, for each congestion controller; then two BBR flows sharing
//! the bottleneck, the second starting later. Prints Markdown tables.
//!
//! ```text
//! cargo bench -p gaptun-sim --bench goodput                   # everything, 30 s per case
//! cargo bench -p gaptun-sim --bench goodput -- --quick        # 8 s per case
//! cargo bench -p gaptun-sim --bench goodput -- bbr/5% brutal  # only cases whose name contains a filter
//! cargo bench -p gaptun-sim --bench goodput -- --seed 7 --duration 60 competing
//! cargo bench -p gaptun-sim --bench goodput -- --ack-every 16 bbr   # try another ACK policy
//! ```
//!
//! Columns: goodput is measured after a warm-up (5 s, quick: 3 s) from the receiver's progress;
//! "of ideal" divides it by 100 Mbit/s × (1 − loss); "wire/goodput" is every byte the sender put
//! on the link (headers, ACK-less overhead, retransmissions, handshake) over the bytes the
//! application received, for the whole run; "IP both ways" counts every datagram of both
//! directions (ACKs included) with 28 bytes of IPv4 and UDP header each, as a packet capture
//! would, after the warm-up against the goodput after the warm-up (steady state, as the harness
//! in crates/gaptun-bench measures it), and "delivered" leaves out what the link dropped (the share a lossy link takes no
//! protocol can avoid); "retx/lost" is stream bytes retransmitted over
//! stream bytes in packets declared lost (1.0 means exactly what was lost was resent); queueing
//! delay is the wait in the bottleneck queue of the data direction, over the whole run.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use gaptun_proto::CongestionKind;
use gaptun_sim::{BulkTransfer, Direction, LinkConfig, Path, Sim, SimConfig};

const RATE_MBPS: f64 = 100.0;
const ONE_WAY: Duration = Duration::from_millis(50);
const QUEUE_BYTES: usize = 1_250_000;
const LOSSES: [f64; 5] = [0.0, 0.01, 0.05, 0.10, 0.20];
const COMPETING_LOSSES: [f64; 2] = [0.0, 0.01];
/// Effectively endless: the run is bounded by time.
const ENDLESS: u64 = 1 << 50;

struct Args {
    duration: Duration,
    warmup: Duration,
    seed: u64,
    /// Overrides the receiver's ACK threshold (ack-eliciting packets per ACK).
    ack_every: Option<u64>,
    filters: Vec<String>,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Self {
            duration: Duration::from_secs(30),
            warmup: Duration::from_secs(5),
            seed: 1,
            ack_every: None,
            filters: Vec::new(),
        };
        let mut duration = None;
        let mut iter = std::env::args().skip(1);
        while let Some(arg) = iter.next() {
            match arg.as_str() {
                "--quick" => {
                    args.duration = Duration::from_secs(8);
                    args.warmup = Duration::from_secs(3);
                }
                "--seed" => args.seed = number(iter.next(), "--seed")?,
                "--ack-every" => args.ack_every = Some(number(iter.next(), "--ack-every")?),
                "--duration" => duration = Some(number(iter.next(), "--duration")?),
                "--help" | "-h" => return Err(String::new()),
                // cargo passes `--bench`; ignore that and any other libtest flag.
                flag if flag.starts_with('-') => {}
                filter => args.filters.push(filter.to_lowercase()),
            }
        }
        if let Some(secs) = duration {
            args.duration = Duration::from_secs(secs);
        }
        if args.warmup * 2 > args.duration {
            args.warmup = args.duration / 4;
        }
        Ok(args)
    }

    fn selected(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()))
    }
}

fn number(value: Option<String>, flag: &str) -> Result<u64, String> {
    value
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{flag} needs a number"))
}

fn link(loss: f64) -> LinkConfig {
    LinkConfig::ideal()
        .with_delay(ONE_WAY)
        .with_rate_mbps(RATE_MBPS)
        .with_queue_bytes(QUEUE_BYTES)
        .with_loss(loss)
}

fn controller_name(kind: CongestionKind) -> &'static str {
    match kind {
        CongestionKind::Bbr => "bbr",
        CongestionKind::None => "none",
        CongestionKind::Brutal { .. } => "brutal",
    }
}

fn case_name(kind: CongestionKind, loss: f64) -> String {
    format!("{}/{}%", controller_name(kind), (loss * 100.0).round())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn ratio(num: u64, den: u64) -> String {
    if den == 0 {
        "–".to_owned()
    } else {
        format!("{:.3}", num as f64 / den as f64)
    }
}

/// One controller at one loss rate.
/// Bytes of IPv4 and UDP header in front of every datagram on a real link.
const IP_UDP_HEADER: u64 = 28;

/// Every byte a packet capture would see on `stats`' link: offered, or only delivered.
fn ip_bytes(stats: &gaptun_sim::LinkStats, delivered: bool) -> u64 {
    if delivered {
        stats.bytes_delivered + IP_UDP_HEADER * stats.delivered
    } else {
        stats.bytes_sent + IP_UDP_HEADER * stats.sent
    }
}

fn single(args: &Args, kind: CongestionKind, loss: f64) -> String {
    let mut config = SimConfig::new(args.seed)
        .with_link(link(loss))
        .with_congestion(kind);
    if let Some(n) = args.ack_every {
        config = config.with_transport(move |t| t.ack_eliciting_threshold = n);
    }
    let mut sim = Sim::new(config);
    let id = sim.add_workload(BulkTransfer::new(
        0,
        Direction::ToServer,
        ENDLESS,
        args.seed,
    ));
    sim.advance(args.warmup);
    let (up_warm, down_warm) = (sim.link_stats(Path::Uplink), sim.link_stats(Path::Downlink));
    sim.advance(args.duration - args.warmup);
    let (from, to) = (sim.start() + args.warmup, sim.now());
    let uplink = sim.link_stats(Path::Uplink);
    let downlink = sim.link_stats(Path::Downlink);
    // Steady state: link bytes after the warm-up against goodput bytes in the same window.
    let both = |delivered| {
        ip_bytes(&uplink, delivered) + ip_bytes(&downlink, delivered)
            - ip_bytes(&up_warm, delivered)
            - ip_bytes(&down_warm, delivered)
    };
    let stats = sim
        .client_connection(0)
        .map(|c| c.stats())
        .unwrap_or_default();
    let Some(transfer) = sim.workload::<BulkTransfer>(id) else {
        return format!(
            "| {} | {:.0} % | workload missing |",
            controller_name(kind),
            loss * 100.0
        );
    };
    if let Some(e) = transfer.error() {
        eprintln!("  {}: {e}", case_name(kind, loss));
    }
    let goodput = transfer.goodput_bps(from, to) / 1e6;
    let steady_bytes = (goodput * 1e6 / 8.0 * (to - from).as_secs_f64()) as u64;
    let ideal = RATE_MBPS * (1.0 - loss);
    format!(
        "| {} | {:.0} % | {:.2} | {:.3} | {} | {} | {} | {} | {} | {} |",
        controller_name(kind),
        loss * 100.0,
        goodput,
        goodput / ideal,
        ratio(uplink.bytes_sent, transfer.received()),
        ratio(both(false), steady_bytes),
        ratio(both(true), steady_bytes),
        ratio(stats.stream_bytes_retransmitted, stats.stream_bytes_lost),
        ms(uplink.queue_delay_avg()),
        ms(uplink.queue_delay_max),
    )
}

/// Two BBR flows from two clients sharing the uplink; the second starts later.
fn competing(args: &Args, loss: f64) -> String {
    let config = SimConfig::new(args.seed)
        .with_clients(2)
        .with_link(link(loss))
        .with_congestion(CongestionKind::Bbr);
    let mut sim = Sim::new(config);
    let second_start = args.warmup / 2;
    let a = sim.add_workload(BulkTransfer::new(
        0,
        Direction::ToServer,
        ENDLESS,
        args.seed,
    ));
    let b = sim.add_workload(
        BulkTransfer::new(1, Direction::ToServer, ENDLESS, args.seed + 1).starting_at(second_start),
    );
    sim.advance(args.duration);
    let (from, to) = (sim.start() + args.warmup, sim.now());
    let rate = |id| {
        sim.workload::<BulkTransfer>(id)
            .map_or(0.0, |t| t.goodput_bps(from, to) / 1e6)
    };
    let (ra, rb) = (rate(a), rate(b));
    let total = ra + rb;
    let share = |r: f64| if total > 0.0 { r / total } else { 0.0 };
    // Jain's fairness index over the two flows: 1 is a perfectly even split, 0.5 one flow only.
    let jain = if total > 0.0 {
        total * total / (2.0 * (ra * ra + rb * rb))
    } else {
        0.0
    };
    let uplink = sim.link_stats(Path::Uplink);
    format!(
        "| {:.0} % | {:.2} | {:.2} | {:.2} / {:.2} | {:.3} | {:.3} | {} | {} |",
        loss * 100.0,
        ra,
        rb,
        share(ra),
        share(rb),
        jain,
        total / (RATE_MBPS * (1.0 - loss)),
        ms(uplink.queue_delay_avg()),
        ms(uplink.queue_delay_max),
    )
}

fn timed(name: &str, f: impl FnOnce() -> String) -> String {
    let started = Instant::now();
    let row = f();
    eprintln!("  {name}: {:.1} s wall", started.elapsed().as_secs_f64());
    row
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!(
                "usage: cargo bench -p gaptun-sim --bench goodput -- [--quick] [--seed N] \
                 [--duration SECS] [--ack-every N] [FILTER...]\n\
                 filters match case names such as bbr/5%, none/0%, brutal/20%, competing"
            );
            return ExitCode::from(2);
        }
    };
    let controllers = [
        CongestionKind::Bbr,
        CongestionKind::None,
        CongestionKind::Brutal { rate: 12_500_000 },
    ];
    println!(
        "## Bulk upload, 1 stream, {RATE_MBPS} Mbit/s, {} ms RTT, queue {QUEUE_BYTES} B, \
         {} s simulated (goodput after {} s), seed {}\n",
        ONE_WAY.as_millis() * 2,
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64(),
        args.seed
    );
    println!(
        "| controller | loss | goodput Mbit/s | of ideal | wire/goodput | IP both ways | \
         delivered | retx/lost | queue avg ms | queue max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for kind in controllers {
        for loss in LOSSES {
            let name = case_name(kind, loss);
            if args.selected(&name) {
                println!("{}", timed(&name, || single(&args, kind, loss)));
            }
        }
    }
    println!(
        "\n## Two competing BBR uploads (second starts at {} s)\n",
        (args.warmup / 2).as_secs_f64()
    );
    println!(
        "| loss | flow A Mbit/s | flow B Mbit/s | share A / B | Jain | utilization | \
         queue avg ms | queue max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for loss in COMPETING_LOSSES {
        let name = format!("competing/{}%", (loss * 100.0).round());
        if args.selected(&name) {
            println!("{}", timed(&name, || competing(&args, loss)));
        }
    }
    ExitCode::SUCCESS
}
