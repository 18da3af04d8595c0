//! UDP over a port range through a router that blocks two of the ten ports, in network
//! namespaces the test creates and removes: client namespace → router namespace (nftables
//! drops UDP to and from 2 of the server's 10 ports) → server namespace. An 8 MiB transfer
//! through a TCP forward arrives intact (SHA-256) and the client never loses its connection.
//!
//! Needs root, `ip`, `nft` and `socat` (the data source and sink run inside the namespaces);
//! without them the test prints why and passes without running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{KEY, payload, scratch, sha256};

const FIRST_PORT: u16 = 10001;
const LAST_PORT: u16 = 10010;
/// The two ports the router drops.
const DEAD_PORTS: [u16; 2] = [10003, 10007];

/// Runs `args` (the first is the program); true if it succeeded.
fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sh_input(args: &[&str], input: &str) -> bool {
    use std::io::Write;
    let Ok(mut child) = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    child.wait().is_ok_and(|s| s.success())
}

/// The three namespaces; removed (with their interfaces and rules) on drop.
struct Net {
    client: String,
    router: String,
    server: String,
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.client, &self.router, &self.server] {
            sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// Why the test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    for (tool, arg) in [("ip", "-V"), ("nft", "--version"), ("socat", "-V")] {
        if !sh(&[tool, arg]) {
            return Some(format!("`{tool}` not found"));
        }
    }
    None
}

fn setup() -> Result<Net, String> {
    let id = format!("{:x}", std::process::id() & 0xffff);
    let net = Net {
        client: format!("gtpc{id}"),
        router: format!("gtpr{id}"),
        server: format!("gtps{id}"),
    };
    for ns in [&net.client, &net.router, &net.server] {
        sh(&["ip", "netns", "del", ns]);
        if !sh(&["ip", "netns", "add", ns]) {
            return Err(format!("cannot create network namespace {ns} (not root?)"));
        }
    }
    let (c, r, s) = (&net.client, &net.router, &net.server);
    let (vc, vrc, vs, vrs) = (
        format!("pc{id}"),
        format!("prc{id}"),
        format!("ps{id}"),
        format!("prs{id}"),
    );
    let steps: Vec<Vec<&str>> = vec![
        vec![
            "ip", "link", "add", &vc, "netns", c, "type", "veth", "peer", "name", &vrc, "netns", r,
        ],
        vec![
            "ip", "link", "add", &vs, "netns", s, "type", "veth", "peer", "name", &vrs, "netns", r,
        ],
        vec!["ip", "-n", c, "addr", "add", "10.201.1.2/24", "dev", &vc],
        vec!["ip", "-n", r, "addr", "add", "10.201.1.1/24", "dev", &vrc],
        vec!["ip", "-n", r, "addr", "add", "10.201.2.1/24", "dev", &vrs],
        vec!["ip", "-n", s, "addr", "add", "10.201.2.2/24", "dev", &vs],
        vec!["ip", "-n", c, "link", "set", &vc, "up"],
        vec!["ip", "-n", r, "link", "set", &vrc, "up"],
        vec!["ip", "-n", r, "link", "set", &vrs, "up"],
        vec!["ip", "-n", s, "link", "set", &vs, "up"],
        vec!["ip", "-n", c, "link", "set", "lo", "up"],
        vec!["ip", "-n", r, "link", "set", "lo", "up"],
        vec!["ip", "-n", s, "link", "set", "lo", "up"],
        vec![
            "ip",
            "-n",
            c,
            "route",
            "add",
            "default",
            "via",
            "10.201.1.1",
        ],
        vec![
            "ip",
            "-n",
            s,
            "route",
            "add",
            "default",
            "via",
            "10.201.2.1",
        ],
        vec![
            "ip",
            "netns",
            "exec",
            r,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    ];
    for step in &steps {
        if !sh(step) {
            return Err(format!("setup step failed: {}", step.join(" ")));
        }
    }
    let dead = DEAD_PORTS.map(|p| p.to_string()).join(", ");
    let rules = format!(
        "table inet gaptun_ports_test {{\n  chain forward {{\n    type filter hook forward \
         priority 0; policy accept;\n    udp dport {{ {dead} }} counter drop\n    udp sport \
         {{ {dead} }} counter drop\n  }}\n}}\n"
    );
    if !sh_input(&["ip", "netns", "exec", r, "nft", "-f", "-"], &rules) {
        return Err("cannot load the router's nftables rules".into());
    }
    Ok(net)
}

/// `program args` inside namespace `ns`, stderr to `log`.
fn spawn_in(ns: &str, program: &str, args: &[&str], log: &Path) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .env_remove("GAPTUN_KEY")
        .env_remove("RUST_LOG")
        .env(
            "STATE_DIRECTORY",
            std::env::temp_dir().join("gaptun-test-state"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Kills the child by its PID when dropped (`ip netns exec` execs the program, so the PID is
/// the program's).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_port_range_through_a_router_blocking_two_ports() {
    if let Some(reason) = missing_tools() {
        eprintln!("skipped: {reason}");
        return;
    }
    let net = match setup() {
        Ok(net) => net,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let dir = scratch("ports-netns");
    let bin = env!("CARGO_BIN_EXE_gaptun");
    let (input, output) = (dir.join("in"), dir.join("out"));
    let data = payload(8 << 20, 31);
    std::fs::write(&input, &data).unwrap();

    let listen = format!("10.201.2.2:{FIRST_PORT}-{LAST_PORT}");
    let server_ctl = dir.join("server.sock");
    let _server = Killed(spawn_in(
        &net.server,
        bin,
        &[
            "server",
            "--listen",
            &listen,
            "--key",
            KEY,
            "--allow-private",
            "--control",
            server_ctl.to_str().unwrap(),
        ],
        &dir.join("server.log"),
    ));
    let sink_spec = format!("OPEN:{},creat,trunc", output.display());
    let mut sink = Killed(spawn_in(
        &net.server,
        "socat",
        &["-u", "TCP-LISTEN:7000,bind=127.0.0.1,reuseaddr", &sink_spec],
        &dir.join("sink.log"),
    ));
    wait_for(
        "the server's control socket",
        Duration::from_secs(20),
        || server_ctl.exists(),
    );

    let server = format!("10.201.2.2:{FIRST_PORT}-{LAST_PORT}");
    let client_ctl = dir.join("client.sock");
    let client_log = dir.join("client.log");
    let _client = Killed(spawn_in(
        &net.client,
        bin,
        &[
            "client",
            "--server",
            &server,
            "--key",
            KEY,
            "--no-socks",
            "--forward",
            "tcp:127.0.0.1:7100=127.0.0.1:7000",
            "--control",
            client_ctl.to_str().unwrap(),
        ],
        &client_log,
    ));
    wait_for("the client to connect", Duration::from_secs(30), || {
        client_ctl.exists()
    });

    let source_spec = format!("FILE:{}", input.display());
    let mut source = Killed(spawn_in(
        &net.client,
        "socat",
        &["-u", &source_spec, "TCP:127.0.0.1:7100"],
        &dir.join("source.log"),
    ));
    wait_for("the data to be sent", Duration::from_secs(60), || {
        source.0.try_wait().unwrap().is_some()
    });
    wait_for("the data to arrive", Duration::from_secs(30), || {
        sink.0.try_wait().unwrap().is_some()
    });
    let received = std::fs::read(&output).unwrap();
    assert_eq!(received.len(), data.len(), "everything arrived");
    assert_eq!(sha256(&received), sha256(&data), "intact");

    let rules = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.router,
            "nft",
            "list",
            "table",
            "inet",
            "gaptun_ports_test",
        ])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules
            .lines()
            .any(|l| l.contains("counter packets") && !l.contains("packets 0 ")),
        "the router dropped packets on the blocked ports:\n{rules}"
    );
    let drops: Vec<&str> = rules.lines().filter(|l| l.contains("counter")).collect();
    eprintln!("8 MiB intact over the range; router rules: {drops:?}");
    let log = std::fs::read_to_string(&client_log).unwrap_or_default();
    assert!(
        !log.contains("connection lost") && !log.contains("reconnecting"),
        "the client kept its connection:\n{log}"
    );
}
