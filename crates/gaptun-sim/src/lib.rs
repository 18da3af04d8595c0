//! Deterministic in-memory network for gaptun-proto.
//!
//! Runs a server [`Endpoint`](gaptun_proto::Endpoint) and any number of client endpoints over
//! simulated links with seeded impairments (loss, burst loss, bottleneck rate and queue, delay,
//! jitter, reordering, duplication, corruption, outages) and a virtual clock that jumps from one
//! event to the next. No sockets, no sleeping, no OS randomness: the same seed always gives the
//! same run, so a failing test can be replayed exactly.
//!
//! - [`link`]: one direction of a path ([`Link`], [`LinkConfig`], [`LinkStats`]);
//! - [`sim`]: the network and the event loop ([`Sim`], [`SimConfig`]);
//! - [`workload`]: application drivers ([`BulkTransfer`], [`RequestResponse`], closures).
//!
//! Randomness: every link and endpoint gets its own seed derived from [`SimConfig::seed`]
//! ([`derive_seed`]); links draw from ChaCha8 (`rand_chacha`), whose output is portable.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use gaptun_sim::{BulkTransfer, Direction, End, LinkConfig, Sim, SimConfig};
//!
//! // 100 Mbit/s each way, 100 ms RTT, 1 BDP of queue, 5 % random loss.
//! let link = LinkConfig::ideal()
//!     .with_delay(Duration::from_millis(50))
//!     .with_rate_mbps(100.0)
//!     .with_queue_bytes(1_250_000)
//!     .with_loss(0.05);
//! let mut sim = Sim::new(SimConfig::new(42).with_link(link));
//!
//! // A 10 MB upload from client 0, checked with SHA-256 on arrival.
//! let id = sim.add_workload(BulkTransfer::new(0, Direction::ToServer, 10_000_000, 1));
//! assert!(sim.run_workloads(Duration::from_secs(60)));
//! let transfer = sim.workload::<BulkTransfer>(id).unwrap();
//! transfer.verify().unwrap();
//! println!("done after {:?}", transfer.completed_at().unwrap() - sim.start());
//!
//! // Custom logic: drive the connection yourself between steps.
//! sim.connect(0).unwrap();
//! let connected = sim.run_for(Duration::from_secs(5), |sim| {
//!     sim.client_connection(0).is_some_and(|c| c.is_established())
//! });
//! assert!(connected);
//! let conn = sim.connection(0, End::Client).unwrap();
//! let stream = conn.open_stream().unwrap();
//! conn.write(stream, b"hello").unwrap();
//! sim.advance(Duration::from_millis(200));
//!
//! // Network events: NAT rebinding, outages, and proof that the server stays silent.
//! sim.rebind_client(0, "10.0.0.99:41000".parse().unwrap());
//! sim.blackhole(gaptun_sim::Path::Downlink, Duration::from_secs(2));
//! sim.set_capture(true);
//! sim.inject_to_server("192.0.2.1:1234".parse().unwrap(), vec![0xff; 1200]);
//! sim.advance(Duration::from_secs(1));
//! assert!(sim.captured_from(gaptun_sim::Node::Server).all(|d| d.dst != "192.0.2.1:1234".parse().unwrap()));
//! ```

pub mod link;
pub mod sim;
pub mod workload;

pub use link::{Datagram, GilbertElliott, Link, LinkConfig, LinkStats};
pub use sim::{
    Accepted, Captured, ClientSetup, Ctx, End, Node, Path, Sim, SimConfig, SimStats, Stage,
    TapEvent, WorkloadId, client_address, default_server_address, derive_seed,
};
pub use workload::{BulkTransfer, Direction, FnWorkload, RequestResponse, TransferError, Workload};
