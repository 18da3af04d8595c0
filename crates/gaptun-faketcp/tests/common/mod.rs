//! Network namespaces for fake-TCP tests: client → router (NAT, strict conntrack) → server.
//!
//! ```text
//!  client ns                router ns                              server ns
//!  eth0 10.N.1.2 ── lan 10.N.1.1 | wan 10.N.2.1 (MASQUERADE) ── eth0 10.N.2.2
//! ```
//!
//! With [`Topology::with_ipv6`] the same namespaces also get IPv6 addresses (`fd00:N:1::2`,
//! `fd00:N:1::1` | `fd00:N:2::1`, `fd00:N:2::2`, N in hexadecimal), the router forwards IPv6 too and masquerades
//! it (NAT66) under the same strict conntrack.
//!
//! The router runs conntrack with `nf_conntrack_tcp_be_liberal = 0` (window tracking on) and
//! `nf_conntrack_tcp_loose = 0` (a segment of a flow conntrack lost is not picked up again),
//! and counts and drops `ct state invalid` in its forward chain: a fake-TCP flow that a
//! stateful firewall would not believe shows up in that counter. Everything is removed when
//! the [`Topology`] is dropped, also when a test fails.

#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

use nix::sched::{CloneFlags, setns};

static NEXT_NET: AtomicU8 = AtomicU8::new(0);

/// Three namespaces wired as above.
#[derive(Debug)]
pub struct Topology {
    pub client: String,
    pub router: String,
    pub server: String,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
    /// The router's address on the server side (what the server sees clients come from).
    pub router_wan_ip: Ipv4Addr,
    /// The same three addresses over IPv6 (configured by [`Topology::with_ipv6`]).
    pub client_ip6: Ipv6Addr,
    pub server_ip6: Ipv6Addr,
    pub router_wan_ip6: Ipv6Addr,
    net: u8,
}

/// Runs a command; its failure becomes an error naming it.
pub fn run(args: &[&str]) -> Result<String, String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !output.status.success() {
        return Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
}

impl Topology {
    /// Builds the namespaces, or says why this machine cannot (the test then skips).
    pub fn new() -> Result<Self, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("needs root (network namespaces, raw sockets, nftables)".into());
        }
        for tool in ["ip", "nft"] {
            if run(&["which", tool]).is_err() {
                return Err(format!("`{tool}` is not installed"));
            }
        }
        let n = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let net = 200u8.wrapping_add(n);
        let tag = format!("{}-{n}", std::process::id());
        let topo = Self {
            client: format!("gftc-{tag}"),
            router: format!("gftr-{tag}"),
            server: format!("gfts-{tag}"),
            client_ip: Ipv4Addr::new(10, net, 1, 2),
            server_ip: Ipv4Addr::new(10, net, 2, 2),
            router_wan_ip: Ipv4Addr::new(10, net, 2, 1),
            client_ip6: Ipv6Addr::new(0xfd00, u16::from(net), 1, 0, 0, 0, 0, 2),
            server_ip6: Ipv6Addr::new(0xfd00, u16::from(net), 2, 0, 0, 0, 0, 2),
            router_wan_ip6: Ipv6Addr::new(0xfd00, u16::from(net), 2, 0, 0, 0, 0, 1),
            net,
        };
        // From here on, Drop removes whatever was created.
        if let Err(e) = run(&["ip", "netns", "add", &topo.client]) {
            return Err(format!("network namespaces unavailable: {e}"));
        }
        // The kernel has namespaces: any failure from here on is a bug or a missing feature
        // worth seeing, not a reason to skip.
        if let Err(e) = topo.wire(net) {
            panic!("building the test network: {e}");
        }
        Ok(topo)
    }

    fn wire(&self, net: u8) -> Result<(), String> {
        let (c, r, s) = (&self.client, &self.router, &self.server);
        run(&["ip", "netns", "add", r])?;
        run(&["ip", "netns", "add", s])?;
        run(&[
            "ip", "-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "lan", "netns", r,
        ])?;
        run(&[
            "ip", "-n", r, "link", "add", "wan", "type", "veth", "peer", "name", "eth0", "netns", s,
        ])?;
        let lan = format!("10.{net}.1.1/24");
        let wan = format!("10.{net}.2.1/24");
        let client = format!("{}/24", self.client_ip);
        let server = format!("{}/24", self.server_ip);
        run(&["ip", "-n", c, "addr", "add", &client, "dev", "eth0"])?;
        run(&["ip", "-n", r, "addr", "add", &lan, "dev", "lan"])?;
        run(&["ip", "-n", r, "addr", "add", &wan, "dev", "wan"])?;
        run(&["ip", "-n", s, "addr", "add", &server, "dev", "eth0"])?;
        for (ns, dev) in [(c, "eth0"), (r, "lan"), (r, "wan"), (s, "eth0")] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        for ns in [c, r, s] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        let gateway = format!("10.{net}.1.1");
        run(&["ip", "-n", c, "route", "add", "default", "via", &gateway])?;
        in_ns(r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // The NAT table loads conntrack, whose sysctls exist per namespace from then on.
        self.router_nft(
            "table ip gftest {\n\
               counter invalid {}\n\
               chain forward_check { type filter hook forward priority filter; policy accept;\n\
                 ct state invalid counter name invalid drop\n\
               }\n\
               chain nat_out { type nat hook postrouting priority srcnat; policy accept;\n\
                 oifname \"wan\" masquerade\n\
               }\n\
             }\n",
        )?;
        in_ns(
            r,
            &[
                "sysctl",
                "-qw",
                "net.netfilter.nf_conntrack_tcp_be_liberal=0",
            ],
        )?;
        in_ns(
            r,
            &["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"],
        )?;
        Ok(())
    }

    /// Adds the IPv6 half (see the module documentation), or says why this machine cannot
    /// (the test then skips): the router counts INVALID IPv6 packets in `ip6 gftest6`
    /// `invalid` and every TCP RST it forwards in `rst`.
    pub fn with_ipv6(self) -> Result<Self, String> {
        if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
            return Err("the kernel has no IPv6".into());
        }
        // The kernel has IPv6: a failure from here on is worth seeing, not a reason to skip.
        if let Err(e) = self.wire6() {
            panic!("building the IPv6 test network: {e}");
        }
        Ok(self)
    }

    fn wire6(&self) -> Result<(), String> {
        let (c, r, s) = (&self.client, &self.router, &self.server);
        let net = self.net;
        // No duplicate address detection: a tentative address cannot be bound for a while.
        let add = |ns: &str, addr: String, dev: &str| {
            run(&["ip", "-n", ns, "addr", "add", &addr, "dev", dev, "nodad"]).map(drop)
        };
        add(c, format!("{}/64", self.client_ip6), "eth0")?;
        add(r, format!("fd00:{net:x}:1::1/64"), "lan")?;
        add(r, format!("{}/64", self.router_wan_ip6), "wan")?;
        add(s, format!("{}/64", self.server_ip6), "eth0")?;
        let gateway = format!("fd00:{net:x}:1::1");
        run(&[
            "ip", "-n", c, "-6", "route", "add", "default", "via", &gateway,
        ])?;
        in_ns(r, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        self.router_nft(
            "table ip6 gftest6 {\n\
               counter invalid {}\n\
               counter rst {}\n\
               chain forward_check { type filter hook forward priority filter; policy accept;\n\
                 ct state invalid counter name invalid drop\n\
                 tcp flags rst counter name rst\n\
               }\n\
               chain nat_out { type nat hook postrouting priority srcnat; policy accept;\n\
                 oifname \"wan\" masquerade\n\
               }\n\
             }\n",
        )
    }

    /// Packets conntrack called INVALID (and dropped) in the router's IPv6 table so far.
    pub fn invalid6_packets(&self) -> u64 {
        self.router_counter_of("ip6", "gftest6", "invalid", "packets")
            .unwrap_or(u64::MAX)
    }

    /// TCP RSTs the router forwarded over IPv6 so far.
    pub fn rst6_packets(&self) -> u64 {
        self.router_counter_of("ip6", "gftest6", "rst", "packets")
            .unwrap_or(u64::MAX)
    }

    /// Applies an nftables script in the router.
    pub fn router_nft(&self, script: &str) -> Result<(), String> {
        let path = std::env::temp_dir().join(format!("{}.nft", self.router));
        std::fs::write(&path, script).map_err(|e| e.to_string())?;
        let result = in_ns(&self.router, &["nft", "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        result.map(drop)
    }

    /// Runs a command in the router namespace.
    pub fn router(&self, args: &[&str]) -> Result<String, String> {
        in_ns(&self.router, args)
    }

    /// Runs a command in `ns`.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        in_ns(ns, args)
    }

    /// Packets conntrack called INVALID (and dropped) in the router so far.
    pub fn invalid_packets(&self) -> u64 {
        self.router_counter("gftest", "invalid", "packets")
            .unwrap_or(u64::MAX)
    }

    /// A field (`packets` or `bytes`) of the named counter in the router's `ip` table
    /// `table`; `None` if the counter cannot be read.
    pub fn router_counter(&self, table: &str, name: &str, field: &str) -> Option<u64> {
        self.router_counter_of("ip", table, name, field)
    }

    /// [`Topology::router_counter`] of a table of `family` (`ip`, `ip6`).
    pub fn router_counter_of(
        &self,
        family: &str,
        table: &str,
        name: &str,
        field: &str,
    ) -> Option<u64> {
        let listing = self
            .router(&["nft", "list", "counter", family, table, name])
            .ok()?;
        listing
            .split_whitespace()
            .skip_while(|w| *w != field)
            .nth(1)
            .and_then(|n| n.parse().ok())
    }

    /// Sets the router's conntrack timeout for established TCP (seconds).
    pub fn set_established_timeout(&self, secs: u32) -> Result<(), String> {
        let arg = format!("net.netfilter.nf_conntrack_tcp_timeout_established={secs}");
        in_ns(&self.router, &["sysctl", "-qw", &arg]).map(drop)
    }

    /// Runs `f` on a new thread inside `ns`, on its own tokio runtime, and returns its result.
    pub fn spawn_in<F, Fut, R>(ns: &str, f: F) -> std::thread::JoinHandle<R>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = R>,
        R: Send + 'static,
    {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = File::open(&path).expect("namespace file");
            setns(&file, CloneFlags::CLONE_NEWNET).expect("entering the namespace");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(f())
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.client, &self.router, &self.server] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// Builds the topology with IPv6 or prints why the test is skipped.
pub fn ipv6_topology_or_skip(test: &str) -> Option<Topology> {
    match Topology::new().and_then(Topology::with_ipv6) {
        Ok(t) => Some(t),
        Err(reason) => {
            eprintln!("SKIP {test}: {reason}");
            None
        }
    }
}

/// Builds the topology or prints why the test is skipped.
pub fn topology_or_skip(test: &str) -> Option<Topology> {
    match Topology::new() {
        Ok(t) => Some(t),
        Err(reason) => {
            eprintln!("SKIP {test}: {reason}");
            None
        }
    }
}
