//! Measurements: bulk goodput (iperf3), request/response latency, process CPU and memory.

pub mod idle;
pub mod iperf;
pub mod latency;
pub mod procstat;
pub mod stalls;
