//! Direct TCP through the emulated link, with a chosen Linux congestion controller.

use std::net::SocketAddrV4;

use super::{Endpoints, Env, IPERF_PORT, RR_PORT, Running, set_congestion};
use crate::emulator::ADDR_B;
use crate::error::Result;

/// Sets the controller in both namespaces and returns endpoints on namespace B's address.
pub fn start(env: &Env, congestion: &str) -> Result<Running> {
    set_congestion(env, congestion)?;
    let b = ADDR_B
        .parse()
        .unwrap_or(std::net::Ipv4Addr::new(10, 201, 0, 2));
    Ok(Running {
        endpoints: Endpoints {
            bulk_host: ADDR_B.to_string(),
            bulk_port: IPERF_PORT,
            rr: SocketAddrV4::new(b, RR_PORT),
            socks: None,
            iperf_congestion: Some(congestion.to_string()),
        },
        procs: Vec::new(),
    })
}
