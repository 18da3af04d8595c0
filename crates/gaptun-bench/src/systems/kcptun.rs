//! Debian's kcptun (`kcptun-client` / `kcptun-server`): one client/server pair per forwarded
//! port, since kcptun forwards to a single target. AES, no compression.

use super::{
    Env, FWD_BULK_PORT, FWD_RR_PORT, IPERF_PORT, RR_PORT, Running, settle, tunnel_endpoints,
};
use crate::emulator::netns;
use crate::error::Result;
use crate::procs::Managed;

/// Pre-shared key (the benchmark is not about secrecy).
const KEY: &str = "gaptun-bench";
/// UDP ports of the two kcptun servers in namespace B.
const SERVER_PORTS: [u16; 2] = [29900, 29901];

/// Starts the two pairs (bulk and request/response).
pub fn start(env: &Env, mode: Option<&str>, window: Option<u32>) -> Result<Running> {
    let pairs = [
        (SERVER_PORTS[0], FWD_BULK_PORT, IPERF_PORT),
        (SERVER_PORTS[1], FWD_RR_PORT, RR_PORT),
    ];
    let mut procs = Vec::new();
    for (server_port, local, target) in pairs {
        let remote = format!("{}:{server_port}", env.b_addr);
        let mut s = netns::exec(&env.ns_b, "kcptun-server");
        s.args(["-l", &remote, "-t", &format!("127.0.0.1:{target}")]);
        common_args(&mut s, mode, window);
        procs.push(Managed::spawn(
            "kcptun-server",
            &mut s,
            &env.log(&format!("kcptun-server-{server_port}")),
        )?);
        let mut c = netns::exec(&env.ns_a, "kcptun-client");
        c.args(["-l", &format!("127.0.0.1:{local}"), "-r", &remote]);
        common_args(&mut c, mode, window);
        procs.push(Managed::spawn(
            "kcptun-client",
            &mut c,
            &env.log(&format!("kcptun-client-{local}")),
        )?);
    }
    settle(&mut procs)?;
    Ok(Running {
        endpoints: tunnel_endpoints(false),
        procs,
        controls: Vec::new(),
    })
}

fn common_args(cmd: &mut std::process::Command, mode: Option<&str>, window: Option<u32>) {
    cmd.args(["--key", KEY, "--crypt", "aes", "--nocomp", "--quiet"]);
    if let Some(m) = mode {
        cmd.args(["--mode", m]);
    }
    if let Some(w) = window {
        let w = w.to_string();
        cmd.args(["--sndwnd", &w, "--rcvwnd", &w]);
    }
}
