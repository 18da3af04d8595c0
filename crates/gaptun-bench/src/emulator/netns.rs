//! Network namespaces through the `ip` tool: create, configure, delete, list leftovers.

use std::process::Command;
use std::time::Duration;

use crate::error::Result;
use crate::procs;

/// Every namespace this harness creates starts with this prefix.
pub const PREFIX: &str = "gtb-";

const IP_LIMIT: Duration = Duration::from_secs(10);

/// Runs `ip ARGS...`.
pub fn ip(args: &[&str]) -> Result<()> {
    procs::run(Command::new("ip").args(args), IP_LIMIT).map(|_| ())
}

/// Creates namespace `name` with its loopback up, registering it for Ctrl-C cleanup.
pub fn create(name: &str) -> Result<()> {
    procs::register_namespace(name);
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Moves interface `dev` into namespace `ns`, gives it a point-to-point address, brings it up.
pub fn configure_p2p(ns: &str, dev: &str, local: &str, peer: &str, mtu: u32) -> Result<()> {
    ip(&["link", "set", "dev", dev, "netns", ns])?;
    let mtu = mtu.to_string();
    ip(&["-n", ns, "link", "set", "dev", dev, "mtu", &mtu])?;
    ip(&["-n", ns, "addr", "add", local, "peer", peer, "dev", dev])?;
    ip(&["-n", ns, "link", "set", "dev", dev, "up"])
}

/// A command that runs `program` inside namespace `ns`.
pub fn exec(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Deletes namespace `ns`, first killing any process still inside it (PIDs from `ip netns pids`).
pub fn delete(ns: &str) -> Result<()> {
    if let Ok(out) = procs::run(Command::new("ip").args(["netns", "pids", ns]), IP_LIMIT) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if pid.parse::<u32>().is_ok() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
    let r = ip(&["netns", "del", ns]);
    procs::unregister_namespace(ns);
    r
}

/// Namespaces left behind by earlier runs (names starting with [`PREFIX`]).
pub fn leftovers() -> Result<Vec<String>> {
    let out = procs::run(Command::new("ip").args(["netns", "list"]), IP_LIMIT)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect())
}

/// True if the namespace's name ends in the PID of a gaptun-bench process that is still
/// running (so `cleanup` leaves a live run alone).
pub fn owner_alive(ns: &str) -> bool {
    let Some(pid) = ns.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("gaptun-bench"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_alive_only_for_live_bench_processes() {
        assert!(!owner_alive("gtb-a-notapid"));
        assert!(!owner_alive("gtb-a-4000000000"));
        // This test binary's name contains "gaptun_bench", not "gaptun-bench".
        assert!(!owner_alive(&format!("gtb-a-{}", std::process::id())));
    }
}
