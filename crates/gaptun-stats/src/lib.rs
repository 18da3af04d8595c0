//! `gaptun-stats`: what a gaptun daemon tells about itself.
//!
//! - [`schema`]: the figures (`ctl stats json` and `/api/stats`, versioned, documented in
//!   `docs/stats-api.md`);
//! - [`Collector`]: builds them from the runtime's published snapshot once a second (rates,
//!   totals that survive closed connections, per-user sums, history) and publishes them;
//! - [`ForwardStats`]: counters of a client's SOCKS5 server and forwards;
//! - [`prom`]: the same figures as Prometheus/OpenMetrics text;
//! - [`Dashboard`]: the HTTP server with the live page, the API and `/metrics`.
//!
//! Nothing here takes the data path's lock on a request: the runtime's driver publishes its
//! figures every 250 ms and the collector reads those.

mod collect;
mod forward;
mod http;
pub mod prom;
pub mod schema;

pub use collect::{COLLECT_INTERVAL, Collector, HISTORY_POINTS, Sources};
pub use forward::{Counted, ForwardStats, StreamCounter};
pub use http::{Credentials, Dashboard, DashboardError, open_dashboard_warning};
pub use schema::{
    ConnSnapshot, ExposeRow, ForwardRow, History, HistoryPoint, PathRow, SCHEMA_VERSION, ShardRow,
    StatsSnapshot, Traffic, UserRow,
};
