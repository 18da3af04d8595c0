//! The nftables rules that keep the kernel's TCP out of our flows.
//!
//! Left alone, the kernel's TCP would receive every segment of our flows, find no socket for
//! it and answer with a RST, which would kill the flow at the peer and at every NAT on the way.
//! Each carrier installs its own table, `ip gaptun_ft_<pid>_<n>` (`ip6` for an IPv6 carrier),
//! with two chains, both scoped to our ports:
//! - `seg_in`, on the prerouting hook after conntrack (`mangle` priority, so a local conntrack
//!   still sees both directions of the flow), drops our incoming segments addressed to this
//!   host. The carrier's packet socket has already taken its copy (see [`crate::sys`]), and
//!   the kernel's TCP never spends time on them: no lookup, no RST built.
//! - `rst_out`, on the output hook at the `raw` priority (before conntrack, so a dropped RST
//!   never moves a local conntrack entry to CLOSE), drops the RSTs that still come from the
//!   kernel, unless they carry our mark (the ones we send on purpose).
//!
//! The table goes with the carrier; a table left by a process that died (SIGKILL, crash) is
//! found by the pid in its name and removed at the next start.
//!
//! We run the `nft` program rather than speak netlink: it is what an administrator reads and
//! types, its absence gives one clear error, and the rules are written once, here.

use std::io::Write;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use tracing::{debug, info, warn};

use crate::error::FakeTcpError;

/// Prefix of every table we create; the pid and a counter follow.
const TABLE_PREFIX: &str = "gaptun_ft_";

/// The mark our raw socket puts on the RSTs it sends on purpose, so our own rule lets them pass.
pub(crate) const OUR_MARK: u32 = 0x6761_7074; // "gapt"

static NEXT_TABLE: AtomicU32 = AtomicU32::new(0);

/// Which RSTs a table drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A server: RSTs from our listening ports (on `addr`, or any address when unspecified).
    Server {
        addr: IpAddr,
        ports: RangeInclusive<u16>,
    },
    /// A client: RSTs towards the server's ports on the server's address.
    Client {
        server: IpAddr,
        /// Our own address towards the server (where its segments come to).
        local: IpAddr,
        ports: RangeInclusive<u16>,
    },
}

impl Scope {
    /// The nftables family of the table: `ip` or `ip6`, after the carrier's addresses.
    fn family(&self) -> &'static str {
        let ip = match self {
            Self::Server { addr, .. } => addr,
            Self::Client { server, .. } => server,
        };
        if ip.is_ipv6() { "ip6" } else { "ip" }
    }

    /// The match part of the drop rule.
    fn matches(&self) -> String {
        match self {
            Self::Server { addr, ports } => {
                let addr = if addr.is_unspecified() {
                    String::new()
                } else {
                    format!("{} saddr {addr} ", self.family())
                };
                format!("{addr}tcp sport {}", port_set(ports))
            }
            Self::Client { server, ports, .. } => {
                format!(
                    "{} daddr {server} tcp dport {}",
                    self.family(),
                    port_set(ports)
                )
            }
        }
    }

    /// The match part of the rule dropping our incoming segments: to this host only, so that a
    /// host forwarding other machines' TCP on the same ports still forwards it.
    fn incoming(&self) -> String {
        match self {
            Self::Server { addr, ports } => {
                let to = if addr.is_unspecified() {
                    "fib daddr type local".to_string()
                } else {
                    format!("{} daddr {addr}", self.family())
                };
                format!("{to} tcp dport {}", port_set(ports))
            }
            Self::Client {
                server,
                local,
                ports,
            } => {
                let family = self.family();
                format!(
                    "{family} saddr {server} {family} daddr {local} tcp sport {}",
                    port_set(ports)
                )
            }
        }
    }
}

fn port_set(ports: &RangeInclusive<u16>) -> String {
    if ports.start() == ports.end() {
        ports.start().to_string()
    } else {
        format!("{}-{}", ports.start(), ports.end())
    }
}

/// An installed table; dropping it deletes the table.
#[derive(Debug)]
pub(crate) struct RstGuard {
    family: &'static str,
    table: String,
}

impl RstGuard {
    /// Removes stale tables of dead processes, then installs ours.
    pub(crate) fn install(scope: &Scope) -> Result<Self, FakeTcpError> {
        remove_stale();
        let table = format!(
            "{TABLE_PREFIX}{}_{}",
            std::process::id(),
            NEXT_TABLE.fetch_add(1, Ordering::Relaxed)
        );
        let family = scope.family();
        let script = format!(
            "table {family} {table} {{\n\
             \tchain rst_out {{\n\
             \t\ttype filter hook output priority raw; policy accept;\n\
             \t\tmeta mark != {OUR_MARK:#x} {} tcp flags rst drop\n\
             \t}}\n\
             \tchain seg_in {{\n\
             \t\ttype filter hook prerouting priority mangle; policy accept;\n\
             \t\t{} drop\n\
             \t}}\n\
             }}\n",
            scope.matches(),
            scope.incoming()
        );
        // Creating an existing table would merge into it: delete any leftover of ours first
        // (a counter reused after a crash of a process that had our pid).
        let _ = run_nft(&["delete", "table", family, &table], None);
        run_nft(&["-f", "-"], Some(&script)).map_err(FakeTcpError::Nftables)?;
        info!(
            table = %table,
            rst = %scope.matches(),
            incoming = %scope.incoming(),
            "fake TCP: kernel TCP kept out of our flows"
        );
        Ok(Self { family, table })
    }

    /// The table's name (for logs and tests).
    pub(crate) fn table(&self) -> &str {
        &self.table
    }
}

impl Drop for RstGuard {
    fn drop(&mut self) {
        match run_nft(&["delete", "table", self.family, &self.table], None) {
            Ok(()) => debug!(table = %self.table, "fake TCP: RST rules removed"),
            Err(e) => warn!(table = %self.table, "fake TCP: could not remove RST rules: {e}"),
        }
    }
}

/// Deletes `gaptun_ft_<pid>_<n>` tables (of both families) whose process is gone.
fn remove_stale() {
    for family in ["ip", "ip6"] {
        let Ok(listing) = nft_output(&["list", "tables", family]) else {
            continue;
        };
        let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
        for table in stale_tables(&listing, family, alive) {
            match run_nft(&["delete", "table", family, &table], None) {
                Ok(()) => {
                    info!(table = %table, "fake TCP: removed RST rules left by a dead process");
                }
                Err(e) => warn!(table = %table, "fake TCP: stale table not removed: {e}"),
            }
        }
    }
}

/// The tables of `family` in `nft list tables` output that belong to no live process.
fn stale_tables(listing: &str, family: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    let prefix = format!("table {family} ");
    listing
        .lines()
        .filter_map(|line| line.trim().strip_prefix(prefix.as_str()))
        .filter_map(|name| {
            let rest = name.strip_prefix(TABLE_PREFIX)?;
            let pid: u32 = rest.split('_').next()?.parse().ok()?;
            (!alive(pid)).then(|| name.to_string())
        })
        .collect()
}

fn run_nft(args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft ({e}); fake TCP needs nftables installed"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn nft_output(args: &[&str]) -> Result<String, String> {
    let output = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn rules_are_scoped_to_our_ports() {
        let server = Scope::Server {
            addr: Ipv4Addr::UNSPECIFIED.into(),
            ports: 10001..=10010,
        };
        assert_eq!(server.matches(), "tcp sport 10001-10010");
        let bound = Scope::Server {
            addr: Ipv4Addr::new(10, 0, 0, 2).into(),
            ports: 443..=443,
        };
        assert_eq!(
            server.incoming(),
            "fib daddr type local tcp dport 10001-10010"
        );
        assert_eq!(bound.matches(), "ip saddr 10.0.0.2 tcp sport 443");
        assert_eq!(bound.incoming(), "ip daddr 10.0.0.2 tcp dport 443");
        let client = Scope::Client {
            server: Ipv4Addr::new(192, 0, 2, 1).into(),
            local: Ipv4Addr::new(10, 0, 0, 5).into(),
            ports: 10001..=10002,
        };
        assert_eq!(client.matches(), "ip daddr 192.0.2.1 tcp dport 10001-10002");
        assert_eq!(
            client.incoming(),
            "ip saddr 192.0.2.1 ip daddr 10.0.0.5 tcp sport 10001-10002"
        );
    }

    #[test]
    fn ipv6_rules_use_the_ip6_family() {
        let server = Scope::Server {
            addr: Ipv6Addr::UNSPECIFIED.into(),
            ports: 10001..=10010,
        };
        assert_eq!(server.family(), "ip6");
        assert_eq!(server.matches(), "tcp sport 10001-10010");
        assert_eq!(
            server.incoming(),
            "fib daddr type local tcp dport 10001-10010"
        );
        let bound = Scope::Server {
            addr: "fd00::2".parse::<Ipv6Addr>().expect("address").into(),
            ports: 443..=443,
        };
        assert_eq!(bound.matches(), "ip6 saddr fd00::2 tcp sport 443");
        assert_eq!(bound.incoming(), "ip6 daddr fd00::2 tcp dport 443");
        let client = Scope::Client {
            server: "fd00::2".parse::<Ipv6Addr>().expect("address").into(),
            local: "fd00::5".parse::<Ipv6Addr>().expect("address").into(),
            ports: 10001..=10002,
        };
        assert_eq!(client.family(), "ip6");
        assert_eq!(client.matches(), "ip6 daddr fd00::2 tcp dport 10001-10002");
        assert_eq!(
            client.incoming(),
            "ip6 saddr fd00::2 ip6 daddr fd00::5 tcp sport 10001-10002"
        );
    }

    #[test]
    fn stale_tables_are_those_of_dead_processes() {
        let listing = "table ip nat\ntable ip gaptun_ft_100_0\ntable ip gaptun_ft_200_3\n\
                       table ip gaptun_ft_x_1\ntable inet gaptun_ft_300_0\n";
        let stale = stale_tables(listing, "ip", |pid| pid == 100);
        assert_eq!(stale, vec!["gaptun_ft_200_3".to_string()]);
        let listing6 = "table ip6 filter\ntable ip6 gaptun_ft_300_0\ntable ip6 gaptun_ft_100_1\n";
        let stale = stale_tables(listing6, "ip6", |pid| pid == 100);
        assert_eq!(stale, vec!["gaptun_ft_300_0".to_string()]);
    }
}
