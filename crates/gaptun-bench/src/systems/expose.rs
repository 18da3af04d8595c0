//! Expose systems (issue 9): the reverse of the forwards. The service (iperf3 server, the
//! request/response server) stays in namespace B next to the tunnel's CLIENT, which is the
//! machine behind NAT; the tunnel's SERVER runs in namespace A and publishes the service on a
//! port of its own, where the visitor (iperf3 client, rr-client, the idle-connection load) in
//! namespace A connects. The measurements are therefore unchanged: they connect to loopback
//! ports of namespace A, which are the server's exposed ports here instead of client forwards.
//!
//! Both compared systems use the same ports: [`FWD_BULK_PORT`] publishes the iperf3 server,
//! [`FWD_RR_PORT`] the request/response server, [`FWD_IDLE_PORT`] the idle-connection sink.

use std::path::Path;

use super::{
    Env, FWD_BULK_PORT, FWD_IDLE_PORT, FWD_RR_PORT, IDLE_PORT, IPERF_PORT, RR_PORT, Running,
    settle, tunnel_endpoints,
};
use crate::emulator::netns;
use crate::error::{IoContext, Result};
use crate::procs::Managed;
use crate::systems::gaptun::{control_socket, controls, keygen};

/// UDP port of the gaptun server (namespace A).
const GAPTUN_PORT: u16 = 4434;
/// TCP control port of the rathole server (namespace A).
const RATHOLE_PORT: u16 = 2333;
/// rathole's per-service token (the benchmark is not about secrecy).
const RATHOLE_TOKEN: &str = "gaptun-bench-token";

/// The published services: (name, port on the server, local target next to the client).
fn services() -> [(&'static str, u16, u16); 3] {
    [
        ("bulk", FWD_BULK_PORT, IPERF_PORT),
        ("rr", FWD_RR_PORT, RR_PORT),
        ("idle", FWD_IDLE_PORT, IDLE_PORT),
    ]
}

/// gaptun: server in A with `--expose-ports` on loopback, client in B exposing both services,
/// default congestion controller.
pub fn start_gaptun(env: &Env, binary: &Path) -> Result<Running> {
    let key = keygen(binary)?;
    let bin = binary.to_string_lossy();
    let listen = format!("{}:{GAPTUN_PORT}", env.a_addr);
    let ports = services()
        .iter()
        .map(|(_, p, _)| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut s = netns::exec(&env.ns_a, &bin);
    s.args(["server", "--listen", &listen, "--key", &key])
        .args(["--expose-ports", &ports, "--expose-bind", "127.0.0.1"])
        .arg("--control")
        .arg(control_socket(env, "server", "expose"));
    let mut procs = vec![Managed::spawn(
        "gaptun server (expose)",
        &mut s,
        &env.log("gaptun-expose-server"),
    )?];
    settle(&mut procs)?;
    let mut c = netns::exec(&env.ns_b, &bin);
    c.args(["client", "--server", &listen, "--key", &key]);
    for (_, remote, local) in services() {
        c.args(["--expose", &format!("tcp:{remote}=127.0.0.1:{local}")]);
    }
    c.arg("--control")
        .arg(control_socket(env, "client", "expose"));
    procs.push(Managed::spawn(
        "gaptun client (expose)",
        &mut c,
        &env.log("gaptun-expose-client"),
    )?);
    settle(&mut procs)?;
    Ok(Running {
        endpoints: tunnel_endpoints(false),
        procs,
        controls: controls(env, binary, "expose"),
    })
}

/// rathole's server configuration: the control port on A's link address, each service bound
/// to loopback of namespace A.
pub fn rathole_server_toml(a_addr: &str) -> String {
    let mut t = format!("[server]\nbind_addr = \"{a_addr}:{RATHOLE_PORT}\"\n");
    for (name, remote, _) in services() {
        t.push_str(&format!(
            "\n[server.services.{name}]\ntoken = \"{RATHOLE_TOKEN}\"\nbind_addr = \"127.0.0.1:{remote}\"\n"
        ));
    }
    t
}

/// rathole's client configuration: the server's control port, each service's local target.
pub fn rathole_client_toml(a_addr: &str) -> String {
    let mut t = format!("[client]\nremote_addr = \"{a_addr}:{RATHOLE_PORT}\"\n");
    for (name, _, local) in services() {
        t.push_str(&format!(
            "\n[client.services.{name}]\ntoken = \"{RATHOLE_TOKEN}\"\nlocal_addr = \"127.0.0.1:{local}\"\n"
        ));
    }
    t
}

/// rathole over its default TCP transport (no TLS, no Noise): server in A, client in B.
pub fn start_rathole(env: &Env, binary: &Path) -> Result<Running> {
    let bin = binary.to_string_lossy();
    let server_toml = env.logdir.join("rathole-server.toml");
    let client_toml = env.logdir.join("rathole-client.toml");
    std::fs::write(&server_toml, rathole_server_toml(&env.a_addr))
        .ctx(format!("write {}", server_toml.display()))?;
    std::fs::write(&client_toml, rathole_client_toml(&env.a_addr))
        .ctx(format!("write {}", client_toml.display()))?;
    let mut s = netns::exec(&env.ns_a, &bin);
    s.arg("--server").arg(&server_toml);
    let mut procs = vec![Managed::spawn(
        "rathole server",
        &mut s,
        &env.log("rathole-server"),
    )?];
    settle(&mut procs)?;
    let mut c = netns::exec(&env.ns_b, &bin);
    c.arg("--client").arg(&client_toml);
    procs.push(Managed::spawn(
        "rathole client",
        &mut c,
        &env.log("rathole-client"),
    )?);
    settle(&mut procs)?;
    Ok(Running {
        endpoints: tunnel_endpoints(false),
        procs,
        controls: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rathole_configs_pair_each_service_with_the_same_token() {
        let s = rathole_server_toml("10.201.0.1");
        let c = rathole_client_toml("10.201.0.1");
        assert!(s.starts_with("[server]\nbind_addr = \"10.201.0.1:2333\""));
        assert!(c.starts_with("[client]\nremote_addr = \"10.201.0.1:2333\""));
        assert!(s.contains("[server.services.bulk]\ntoken = \"gaptun-bench-token\"\nbind_addr = \"127.0.0.1:15201\""));
        assert!(c.contains("[client.services.bulk]\ntoken = \"gaptun-bench-token\"\nlocal_addr = \"127.0.0.1:5201\""));
        assert!(s.contains("[server.services.rr]"));
        assert!(c.contains("local_addr = \"127.0.0.1:7000\""));
        assert!(c.contains("[client.services.idle]"));
    }
}
