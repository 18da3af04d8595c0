//! The systems under test and how to start them inside the emulator's namespaces.
//!
//! Every system exposes, inside namespace A, a TCP endpoint reaching the iperf3 server and one
//! reaching the request/response server in namespace B (and optionally a SOCKS5 proxy).

pub mod expose;
pub mod gaptun;
pub mod kcptun;
pub mod tcp;

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::emulator::netns;
use crate::error::Result;
use crate::procs::{self, Managed};

/// iperf3 server port in namespace B.
pub const IPERF_PORT: u16 = 5201;
/// Port of the competing flow's iperf3 server in namespace B.
pub const COMPETE_PORT: u16 = 5202;
/// Request/response server port in namespace B.
pub const RR_PORT: u16 = 7000;
/// Idle-connection sink port in namespace B (expose scenario).
pub const IDLE_PORT: u16 = 7001;
/// Tunnel forward listening for the bulk test, in namespace A.
pub const FWD_BULK_PORT: u16 = 15201;
/// Tunnel forward listening for the latency test, in namespace A.
pub const FWD_RR_PORT: u16 = 17000;
/// Exposed port of the idle-connection sink, in namespace A (expose systems only).
pub const FWD_IDLE_PORT: u16 = 17001;
/// SOCKS5 listener, in namespace A.
pub const SOCKS_PORT: u16 = 11080;

/// Where a system runs.
#[derive(Debug, Clone)]
pub struct Env {
    /// Client-side namespace.
    pub ns_a: String,
    /// Server-side namespace.
    pub ns_b: String,
    /// This binary, for the helper subcommands.
    pub exe: PathBuf,
    /// Directory for process logs.
    pub logdir: PathBuf,
    /// Bottleneck rate of the scenario (for gaptun's brutal controller).
    pub rate_mbit: Option<f64>,
    /// Namespace A's address as seen from `ns_b`: where an expose system's server listens
    /// (the link address, or 127.0.0.1 in the loopback scenario, where `ns_b` is `ns_a`).
    pub a_addr: String,
    /// Namespace B's address as seen from `ns_a`: where a forward system's server listens and
    /// direct TCP connects (the link address, or 127.0.0.1 in the loopback scenario).
    pub b_addr: String,
}

impl Env {
    /// Log file path for a process.
    pub fn log(&self, name: &str) -> PathBuf {
        self.logdir.join(format!("{name}.log"))
    }
}

/// How the measurements reach the servers through a running system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// iperf3 host and port, as seen from namespace A.
    pub bulk_host: String,
    /// iperf3 port.
    pub bulk_port: u16,
    /// Request/response endpoint, as seen from namespace A.
    pub rr: SocketAddrV4,
    /// SOCKS5 proxy in namespace A, if the system has one.
    pub socks: Option<SocketAddr>,
    /// Congestion controller to pass to iperf3 (direct TCP only).
    pub iperf_congestion: Option<String>,
}

/// A started system; its processes stop when this is dropped.
#[derive(Debug)]
pub struct Running {
    /// Endpoints to measure through.
    pub endpoints: Endpoints,
    /// Tunnel processes (empty for direct TCP).
    pub procs: Vec<Managed>,
    /// gaptun's control sockets, whose `ctl stats` the runner saves around each latency test.
    pub controls: Vec<Control>,
}

/// A gaptun daemon's control socket.
#[derive(Debug, Clone)]
pub struct Control {
    /// `client` or `server`.
    pub role: &'static str,
    /// The gaptun binary that answers `ctl`.
    pub binary: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
}

impl Running {
    /// PIDs of the tunnel processes.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Managed::pid).collect()
    }

    /// Fails if a tunnel process died.
    pub fn ensure_alive(&mut self) -> Result<()> {
        self.procs.iter_mut().try_for_each(Managed::ensure_alive)
    }
}

/// Which implementation and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemKind {
    /// Plain TCP through the link with the given Linux congestion controller.
    Direct {
        /// `cubic`, `bbr`, ...
        congestion: String,
    },
    /// Debian's kcptun with a mode profile (`None`: its default).
    Kcptun {
        /// `fast3`, ...
        mode: Option<String>,
        /// Send/receive window in packets on both sides (`None`: kcptun's defaults, whose
        /// client send window of 128 packets caps a 100 ms path near 14 Mbit/s).
        window: Option<u32>,
    },
    /// gaptun with a congestion controller, on a carrier.
    Gaptun {
        /// The gaptun binary.
        binary: PathBuf,
        /// `bbr`, `none` or `brutal`.
        congestion: String,
        /// `--fec` value (`None`: gaptun's default, `auto`).
        fec: Option<String>,
        /// `udp`, `tls` or `quic` (`--carrier`).
        carrier: String,
        /// More arguments for the client (`--tls-connections 1`, ...).
        client_args: Vec<String>,
    },
    /// gaptun's expose (server in A publishes services of the client in B), default congestion.
    GaptunExpose {
        /// The gaptun binary.
        binary: PathBuf,
    },
    /// rathole over its TCP transport, server in A, client in B.
    Rathole {
        /// The rathole binary.
        binary: PathBuf,
    },
}

/// A named system under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    /// Name in tables and charts.
    pub name: String,
    /// What it is.
    pub kind: SystemKind,
}

impl System {
    /// Starts the system and waits until its endpoints accept connections.
    pub fn start(&self, env: &Env) -> Result<Running> {
        let mut running = match &self.kind {
            SystemKind::Direct { congestion } => tcp::start(env, congestion)?,
            SystemKind::Kcptun { mode, window } => kcptun::start(env, mode.as_deref(), *window)?,
            SystemKind::Gaptun {
                binary,
                congestion,
                fec,
                carrier,
                client_args,
            } => gaptun::start(
                env,
                binary,
                congestion,
                fec.as_deref(),
                carrier,
                client_args,
            )?,
            SystemKind::GaptunExpose { binary } => expose::start_gaptun(env, binary)?,
            SystemKind::Rathole { binary } => expose::start_rathole(env, binary)?,
        };
        if !running.procs.is_empty() {
            let e = running.endpoints.clone();
            wait_port(
                env,
                SocketAddr::new(
                    e.bulk_host.parse().unwrap_or([127, 0, 0, 1].into()),
                    e.bulk_port,
                ),
            )?;
            wait_port(env, SocketAddr::V4(e.rr))?;
            if self.is_expose() {
                wait_port(
                    env,
                    SocketAddr::V4(crate::measure::latency::local(FWD_IDLE_PORT)),
                )?;
            }
            if let Some(s) = e.socks {
                wait_port(env, s)?;
            }
            running.ensure_alive()?;
        }
        Ok(running)
    }

    /// Whether the system publishes services of namespace B on ports of namespace A (the
    /// expose scenario) rather than forwarding from A.
    pub fn is_expose(&self) -> bool {
        matches!(
            self.kind,
            SystemKind::GaptunExpose { .. } | SystemKind::Rathole { .. }
        )
    }
}

/// The systems of the expose scenario (issue 9): gaptun's expose when a gaptun binary was
/// found, rathole when it is installed.
pub fn expose(gaptun: Option<&Path>, rathole: Option<&Path>) -> Vec<System> {
    let mut v = Vec::new();
    if let Some(bin) = gaptun {
        v.push(System {
            name: "gaptun-expose".into(),
            kind: SystemKind::GaptunExpose {
                binary: bin.to_path_buf(),
            },
        });
    }
    if let Some(bin) = rathole {
        v.push(System {
            name: "rathole".into(),
            kind: SystemKind::Rathole {
                binary: bin.to_path_buf(),
            },
        });
    }
    v
}

/// The full list of systems; gaptun's only when a usable binary was found.
pub fn all(gaptun: Option<&Path>) -> Vec<System> {
    let mut v = vec![
        System {
            name: "tcp-cubic".into(),
            kind: SystemKind::Direct {
                congestion: "cubic".into(),
            },
        },
        System {
            name: "tcp-bbr".into(),
            kind: SystemKind::Direct {
                congestion: "bbr".into(),
            },
        },
        System {
            name: "kcptun-fast3".into(),
            kind: SystemKind::Kcptun {
                mode: Some("fast3".into()),
                window: None,
            },
        },
        System {
            name: "kcptun-default".into(),
            kind: SystemKind::Kcptun {
                mode: None,
                window: None,
            },
        },
        System {
            name: "kcptun-fast3-wnd2048".into(),
            kind: SystemKind::Kcptun {
                mode: Some("fast3".into()),
                window: Some(2048),
            },
        },
    ];
    if let Some(bin) = gaptun {
        for cc in ["bbr", "none", "brutal"] {
            v.push(System {
                name: format!("gaptun-{cc}"),
                kind: SystemKind::Gaptun {
                    binary: bin.to_path_buf(),
                    congestion: cc.into(),
                    fec: None,
                    carrier: "udp".into(),
                    client_args: Vec::new(),
                },
            });
        }
        // The other carriers (issue 11), with the default controller; TLS also over one TCP
        // connection instead of the default two (two BBR flows of one client overfill a
        // bottleneck queue of one bandwidth-delay product together).
        for (name, carrier, client_args) in [
            ("gaptun-tls", "tls", &[][..]),
            ("gaptun-tls-conn1", "tls", &["--tls-connections", "1"][..]),
            ("gaptun-quic", "quic", &[][..]),
        ] {
            v.push(System {
                name: name.into(),
                kind: SystemKind::Gaptun {
                    binary: bin.to_path_buf(),
                    congestion: "bbr".into(),
                    fec: None,
                    carrier: carrier.into(),
                    client_args: client_args.iter().map(|a| a.to_string()).collect(),
                },
            });
        }
        // The default controller without FEC, to weigh what `fec = auto` (the default) costs
        // bulk transfers and gains small requests, side by side.
        v.push(System {
            name: "gaptun-bbr-fec-off".into(),
            kind: SystemKind::Gaptun {
                binary: bin.to_path_buf(),
                congestion: "bbr".into(),
                fec: Some("off".into()),
                carrier: "udp".into(),
                client_args: Vec::new(),
            },
        });
    }
    v
}

/// Waits (up to 10 s) until something listens on `addr` inside namespace A.
fn wait_port(env: &Env, addr: SocketAddr) -> Result<()> {
    let exe = env.exe.to_string_lossy();
    procs::run(
        netns::exec(&env.ns_a, &exe).args(["wait-port", &addr.to_string(), "--seconds", "10"]),
        Duration::from_secs(15),
    )
    .map(|_| ())
}

/// Forward endpoints used by the tunnels (loopback of namespace A).
pub fn tunnel_endpoints(socks: bool) -> Endpoints {
    Endpoints {
        bulk_host: "127.0.0.1".into(),
        bulk_port: FWD_BULK_PORT,
        rr: crate::measure::latency::local(FWD_RR_PORT),
        socks: socks.then(|| SocketAddr::V4(crate::measure::latency::local(SOCKS_PORT))),
        iperf_congestion: None,
    }
}

/// Gives a freshly started tunnel a moment, then checks it is still running.
pub fn settle(procs: &mut [Managed]) -> Result<()> {
    std::thread::sleep(Duration::from_millis(150));
    procs.iter_mut().try_for_each(Managed::ensure_alive)
}
