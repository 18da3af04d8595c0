//! Direct TCP through the emulated link, with a chosen Linux congestion controller.

use std::net::SocketAddrV4;

use super::{Endpoints, Env, IPERF_PORT, RR_PORT, Running};
use crate::error::Result;

/// Endpoints on namespace B's address (plain loopback TCP in the loopback scenario); the controller is set per socket with `iperf3 -C`
/// (which the iperf3 server applies too). The namespace default can't be used: outside the
/// initial namespace only controllers in `tcp_allowed_congestion_control` may become default.
pub fn start(env: &Env, congestion: &str) -> Result<Running> {
    let b = env
        .b_addr
        .parse()
        .unwrap_or(std::net::Ipv4Addr::new(10, 201, 0, 2));
    Ok(Running {
        endpoints: Endpoints {
            bulk_host: env.b_addr.clone(),
            bulk_port: IPERF_PORT,
            rr: SocketAddrV4::new(b, RR_PORT),
            socks: None,
            iperf_congestion: Some(congestion.to_string()),
        },
        procs: Vec::new(),
        controls: Vec::new(),
    })
}
