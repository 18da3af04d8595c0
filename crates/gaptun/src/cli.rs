//! Command-line interface (clap derive). The settings of the daemons are defined once, in the
//! groups below and in [`TransportSettings`]: each field is a flag and a config-file key (see
//! [`crate::layer`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::layer::settings_group;
use crate::transport::TransportSettings;
use crate::values::{
    CarrierChoice, CarrierList, CarrierServer, Conns, ExposeArg, ExposePorts, ForwardSpec,
    HopInterval, ListenAddr, ListenPorts, LogFormat, TlsConnections, WindowSize, one_or_many,
};

/// Default SOCKS5 address of the client (and the demo).
pub const DEFAULT_SOCKS: &str = "127.0.0.1:1080";

/// The version with the commit it was built from (see build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GAPTUN_COMMIT"), ")");

/// Fast, secure tunnel and proxy for bad networks.
#[derive(Debug, Parser)]
#[command(name = "gaptun", version = VERSION, propagate_version = true)]
#[command(after_help = "Start with `gaptun demo`, or `gaptun keygen` for a server and a client.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses `args` (program name first) and keeps the subcommand's matches next to the
    /// result: they tell a value given on the command line from a default (see
    /// [`crate::layer::Layer::from_matches`]).
    pub fn try_parse_with_matches<I, T>(args: I) -> Result<(Self, ArgMatches), clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let cli = Self::from_arg_matches(&matches)?;
        let sub = matches
            .subcommand()
            .map_or_else(ArgMatches::default, |(_, m)| m.clone());
        Ok((cli, sub))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: accept tunnel connections and relay their streams to the targets.
    #[command(
        after_help = "Example:\n  GAPTUN_KEY=$(cat key) gaptun server --listen 0.0.0.0:29900\n  \
                            gaptun server --config server.toml"
    )]
    Server(ServerArgs),
    /// Run the client: SOCKS5 and port forwards through the tunnel.
    #[command(
        after_help = "Example:\n  GAPTUN_KEY=$(cat key) gaptun client --server vpn.example.com:29900 \
                            --socks 1080 --forward 2222=127.0.0.1:22\n  \
                            gaptun client --config client.toml"
    )]
    Client(ClientArgs),
    /// A complete tunnel on this machine through a simulated bad link, with SOCKS5.
    #[command(after_help = "Example:\n  gaptun demo --loss 5 --delay 100\n  \
                            curl -x socks5h://127.0.0.1:1080 http://example.com/")]
    Demo(DemoArgs),
    /// Print a new random key.
    #[command(after_help = "Example:\n  gaptun keygen > key && chmod 600 key")]
    Keygen,
    /// Talk to a running daemon: change the receive window, show statistics.
    #[command(
        after_help = "Example:\n  gaptun ctl stats\n  gaptun ctl --socket /run/gaptun/client.sock wnd 64M"
    )]
    Ctl(CtlArgs),
    /// Print a shell completion script to stdout.
    #[command(after_help = "Example:\n  gaptun completions bash > /etc/bash_completion.d/gaptun")]
    Completions {
        /// The shell to complete for.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout.
    #[command(after_help = "Example:\n  gaptun man > gaptun.1 && man ./gaptun.1")]
    Man,
}

settings_group! {
    /// Logging, for the commands that run a daemon.
    #[derive(Eq)]
    pub struct LogOptions {
        /// Log level or filter: error, warn, info, debug, trace, or e.g. "gaptun=debug"
        /// [default: RUST_LOG, else info].
        #[arg(long, value_name = "LEVEL")]
        pub log: Option<String>,
        /// Log format.
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        pub log_format: Option<LogFormat>,
    }
}

settings_group! {
    /// Settings of both daemons besides logging and the transport.
    #[derive(Eq)]
    pub struct CommonOptions {
        /// The key; a server may take several (repeat --key, or a list in the file). Prefer
        /// --key-file or GAPTUN_KEY: command lines are visible to other users.
        #[arg(long, value_name = "KEY")]
        #[serde(default, deserialize_with = "one_or_many")]
        pub key: Option<Vec<String>>,
        /// File with the key(s), one per line.
        #[arg(long, value_name = "PATH", conflicts_with = "key")]
        pub key_file: Option<PathBuf>,
        /// Control socket path for `gaptun ctl`
        /// [default: $XDG_RUNTIME_DIR/gaptun-ROLE.sock, else /tmp/gaptun-ROLE-UID.sock].
        #[arg(long, value_name = "PATH")]
        pub control: Option<PathBuf>,
        /// How datagrams travel: udp; faketcp (TCP-looking segments on the same port number,
        /// for networks that throttle or block UDP; root or CAP_NET_RAW and nftables); tls
        /// (TLS 1.3 over TCP, --tls-listen); quic (HTTP/3-looking QUIC, --quic-listen); all (a
        /// server accepts every one, a client uses udp and faketcp at once); auto (a client
        /// uses one carrier at a time, the first of --carriers that works, moves to the next
        /// when it is blocked or throttled, and back; a server accepts udp and faketcp). A tls
        /// or quic client's --server names the server's TLS or QUIC port; an auto client finds
        /// them with --tls-server and --quic-server [default: udp on a server; a client
        /// without --carrier starts on udp and, as auto, falls back to the carriers the server
        /// offers in its handshake, at the ports it names (remembered in the state directory
        /// for the next start); against a server that offers only udp it is plain udp].
        #[arg(long, value_name = "CARRIER")]
        pub carrier: Option<CarrierChoice>,
        /// Serve the live dashboard, /api/stats and /metrics (Prometheus) over HTTP on this
        /// address, e.g. 127.0.0.1:7500 (PORT alone means 127.0.0.1:PORT) [default: off].
        #[arg(long, value_name = "ADDR")]
        pub dashboard: Option<ListenAddr>,
        /// Require this dashboard username (HTTP basic auth); needs a password too.
        #[arg(long, value_name = "USER")]
        pub dashboard_user: Option<String>,
        /// Dashboard password for the username (or GAPTUN_DASHBOARD_PASSWORD).
        #[arg(long, value_name = "PASS", env = "GAPTUN_DASHBOARD_PASSWORD", hide_env_values = true)]
        pub dashboard_password: Option<String>,
    }
}

settings_group! {
    /// Settings only the server takes.
    #[derive(Eq)]
    pub struct ServerOptions {
        /// UDP address to listen on; a port range IP:FIRST-LAST listens on every port of it
        /// (for clients that spread their packets over the range).
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:29900")]
        pub listen: Option<ListenPorts>,
        /// Let clients reach this loopback/private/link-local target (refused otherwise; public
        /// addresses are always allowed): IP, CIDR, IP:PORT, [IPV6]:PORT or HOST:PORT
        /// (repeatable).
        #[arg(long, value_name = "TARGET")]
        pub allow: Option<Vec<String>>,
        /// Allow every target, private, loopback and link-local ones included.
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "false")]
        pub allow_private: Option<bool>,
        /// Ports clients may expose (publish their services on), e.g. 8000-9000,2222
        /// [default: none].
        #[arg(long, value_name = "PORTS")]
        pub expose_ports: Option<ExposePorts>,
        /// Address the exposed ports listen on (`::` for dual stack).
        #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
        pub expose_bind: Option<IpAddr>,
        /// Threads (shards) that serve the connections, each with its own socket on the
        /// listen port(s), so a busy server uses that many cores; 1 to 256 [default: one per
        /// core]. UDP only: a fake-TCP server runs one.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
        pub threads: Option<u16>,
        /// Named users, each with its own key(s) and limits: `[users.NAME]` tables in the
        /// config file only (keys have no place on a command line). See [`UserOptions`].
        #[arg(skip)]
        pub users: Option<BTreeMap<String, UserOptions>>,
        /// TCP address of the TLS carrier (with --carrier tls or all).
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:443")]
        pub tls_listen: Option<SocketAddr>,
        /// UDP address of the QUIC carrier (with --carrier quic or all).
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:443")]
        pub quic_listen: Option<SocketAddr>,
        /// Certificate chain (PEM) of the TLS and QUIC carriers, e.g. a real one for the
        /// server's domain [default: self-signed, made at first start and kept in the state
        /// directory].
        #[arg(long, value_name = "PATH", requires = "tls_key")]
        pub tls_cert: Option<PathBuf>,
        /// Private key (PEM) of --tls-cert.
        #[arg(long, value_name = "PATH", requires = "tls_cert")]
        pub tls_key: Option<PathBuf>,
        /// Web server (HOST:PORT, plain HTTP) that TLS clients other than gaptun clients are
        /// handed to, so that a prober sees that site [default: a plain 404 page].
        #[arg(long, value_name = "HOST:PORT")]
        pub decoy: Option<String>,
    }
}

/// One named user of a server (`[users.NAME]` in its config file). The name stands for the
/// user's key(s) in logs and `ctl stats`; the key itself is never shown. The limits given here
/// replace the server-wide ones for this user; those not given fall back to them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserOptions {
    /// The user's key, or several (a list).
    #[serde(default, deserialize_with = "one_or_many")]
    pub key: Option<Vec<String>>,
    /// File with the user's key(s), one per line (instead of `key`).
    pub key_file: Option<PathBuf>,
    /// Ports this user may expose, e.g. "8000-8005,2222" [default: the server's expose_ports].
    pub expose_ports: Option<ExposePorts>,
    /// Targets this user may reach through SOCKS5 and forwards, with the syntax of the
    /// server's `allow` [default: the server's allow].
    pub allow: Option<Vec<String>>,
    /// Rate limit in Mbit/s for all of this user's relay and expose streams together, both
    /// directions counted [default: none].
    pub rate_limit: Option<u32>,
}

settings_group! {
    /// Settings only the client takes.
    #[derive(Eq)]
    pub struct ClientOptions {
        /// The server, HOST:PORT; HOST:FIRST-LAST spreads the packets over every port of the
        /// range (the server must listen on it), leaving a port that stops answering for a while.
        #[arg(long, value_name = "HOST:PORT")]
        pub server: Option<String>,
        /// Port hopping: every SECS seconds move to a new local UDP port (and, with a port
        /// range, start at its next port), without a new handshake [default: off].
        #[arg(long, value_name = "SECS")]
        pub hop_interval: Option<HopInterval>,
        /// With --carrier auto: the carriers to use, most preferred first, e.g. udp,tls
        /// [default: udp, faketcp when running with CAP_NET_RAW, quic, tls]. Without
        /// --carrier: which of the offered carriers may be used, in this order.
        #[arg(long, value_name = "LIST")]
        pub carriers: Option<CarrierList>,
        /// With --carrier auto: the server's TLS carrier, HOST:PORT, or PORT on the host of
        /// --server [default: port 443 of that host; without --carrier: the port the server
        /// offers].
        #[arg(long, value_name = "ADDR")]
        pub tls_server: Option<CarrierServer>,
        /// With --carrier auto: the server's QUIC carrier, as for --tls-server [default: port
        /// 443 of the host of --server].
        #[arg(long, value_name = "ADDR")]
        pub quic_server: Option<CarrierServer>,
        /// SOCKS5 listen address (PORT alone means 127.0.0.1:PORT).
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_SOCKS, conflicts_with = "no_socks")]
        pub socks: Option<ListenAddr>,
        /// Run without the SOCKS5 server.
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "false")]
        pub no_socks: Option<bool>,
        /// Require this SOCKS5 username (RFC 1929); needs a password too.
        #[arg(long, value_name = "USER")]
        pub socks_user: Option<String>,
        /// SOCKS5 password for the username (or GAPTUN_SOCKS_PASSWORD).
        #[arg(long, value_name = "PASS", env = "GAPTUN_SOCKS_PASSWORD", hide_env_values = true)]
        pub socks_password: Option<String>,
        /// Port forward [tcp:|udp:]LISTEN=TARGET, e.g. tcp:127.0.0.1:2222=10.0.0.5:22; LISTEN
        /// may be a bare port (repeatable).
        #[arg(long, value_name = "SPEC")]
        pub forward: Option<Vec<ForwardSpec>>,
        /// Publish a local service on the server's port(s) [tcp:|udp:]REMOTE=LOCAL[,proxy=v1|v2],
        /// e.g. 2222=127.0.0.1:22 or 8000-8005=127.0.0.1:9000 (repeatable; the server must
        /// allow the ports with --expose-ports).
        #[arg(long, value_name = "SPEC")]
        pub expose: Option<Vec<ExposeArg>>,
        /// Connections to keep open to the server (1-64).
        #[arg(long, value_name = "N", default_value = "1")]
        pub conns: Option<Conns>,
        /// Name sent as SNI on the TLS and QUIC carriers: an ordinary one, or the server's
        /// domain when it has a real certificate.
        #[arg(long, value_name = "NAME", default_value = gaptun_carriers::DEFAULT_SNI)]
        pub sni: Option<String>,
        /// TCP connections the TLS carrier spreads packets over (1-64), so that one
        /// connection's retransmission stalls only its share (like kcptun's -conn).
        #[arg(long, value_name = "N", default_value = "2")]
        pub tls_connections: Option<TlsConnections>,
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Config file (TOML, see server.example.toml; gap-proxy's config.json also works).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerOptions,
    #[command(flatten)]
    pub common: CommonOptions,
    #[command(flatten)]
    pub log: LogOptions,
    #[command(flatten, next_help_heading = "Transport")]
    pub transport: TransportSettings,
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Config file (TOML, see client.example.toml; gap-proxy's config.json also works).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientOptions,
    #[command(flatten)]
    pub common: CommonOptions,
    #[command(flatten)]
    pub log: LogOptions,
    #[command(flatten, next_help_heading = "Transport")]
    pub transport: TransportSettings,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// SOCKS5 listen address (PORT alone means 127.0.0.1:PORT).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_SOCKS)]
    pub socks: ListenAddr,
    /// Packet loss of the simulated link, in percent (each direction).
    #[arg(long, value_name = "PERCENT", default_value_t = 2.0)]
    pub loss: f64,
    /// One-way delay of the simulated link, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30)]
    pub delay: u64,
    /// Seed of the simulated losses.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub log: LogOptions,
    #[command(flatten, next_help_heading = "Transport")]
    pub transport: TransportSettings,
}

#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The daemon's control socket [default: the client's and/or the server's default path,
    /// whichever answers]. Accepted before or after the command.
    #[arg(long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Set the receive window of every live and future connection of the daemon.
    ///
    /// The window bounds the data in flight per connection and per stream, so throughput is at
    /// most window / RTT: raise it for fast, long paths (like gap-proxy's `wnd`). It lasts
    /// until the daemon restarts; set `window` in the config file to keep it.
    #[command(after_help = "Example:\n  gaptun ctl wnd 64M")]
    Wnd {
        /// Bytes, with K, M or G suffix (powers of 1024), 64K to 4G.
        #[arg(value_name = "BYTES")]
        bytes: WindowSize,
    },
    /// Show connections, RTT, window, throughput counters, loss and retransmissions.
    Stats {
        /// Print JSON instead of a table (also accepted as `stats json`).
        #[arg(long)]
        json: bool,
        #[arg(value_name = "json", value_parser = ["json"], hide = true)]
        format: Option<String>,
    },
    /// Show the figures with current rates (throughput, RTT, loss per connection, user,
    /// expose and forward), refreshed every second until Ctrl-C.
    #[command(after_help = "Example:\n  gaptun ctl top\n  gaptun ctl top --count 1")]
    Top {
        /// Stop after this many screens [default: until interrupted].
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

impl CtlCommand {
    /// The line sent over the control socket.
    pub fn line(&self) -> String {
        match self {
            Self::Wnd { bytes } => format!("wnd {}", bytes.0),
            Self::Stats { json, format } => {
                if *json || format.is_some() {
                    "stats json".into()
                } else {
                    "stats".into()
                }
            }
            Self::Top { .. } => "top".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;
    use crate::values::{ForwardProto, Mode};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("gaptun").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `--log*` only on the commands that log; every subcommand has an example.
    #[test]
    fn help_is_complete() {
        let mut cmd = Cli::command();
        cmd.build();
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = sub.get_name();
            let logs = sub.get_arguments().any(|a| a.get_id() == "log");
            assert_eq!(
                logs,
                matches!(name, "server" | "client" | "demo"),
                "--log on {name}"
            );
            let after = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(after.starts_with("Example:\n  "), "{name}: {after}");
            assert!(after.contains(&format!("gaptun {name}")), "{name}: {after}");
        }
        let help = cmd
            .find_subcommand_mut("client")
            .unwrap()
            .render_long_help()
            .to_string();
        for shown in [
            "[default: 127.0.0.1:1080]",
            "[default: the route's",
            "[default: fast]",
            "[default: 1]",
            "fast2",
            "chacha20-poly1305",
            "[default: 32M",
        ] {
            assert!(help.contains(shown), "client help lacks {shown}:\n{help}");
        }
    }

    #[test]
    fn unknown_option_is_an_error() {
        let e = parse(&["client", "--sever", "x:1"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownArgument);
        let e = parse(&["frobnicate"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn client_flags() {
        let cli = parse(&[
            "client",
            "--server",
            "vpn.example.com:29900",
            "--key",
            "correct horse battery",
            "--forward",
            "tcp:127.0.0.1:2222=127.0.0.1:22",
            "--forward",
            "udp:127.0.0.1:5353=10.0.0.1:53",
            "--forward",
            "8080=example.com:80",
            "--conns",
            "4",
            "--mode",
            "fast2",
            "--window",
            "64M",
            "--log",
            "debug",
            "--socks",
            "1080",
        ])
        .unwrap();
        let Command::Client(c) = cli.command else {
            panic!()
        };
        assert_eq!(c.log.log.as_deref(), Some("debug"));
        let o = &c.client;
        assert_eq!(o.server.as_deref(), Some("vpn.example.com:29900"));
        assert_eq!(o.conns, Some(Conns(4)));
        assert_eq!(o.socks, Some(ListenAddr("127.0.0.1:1080".parse().unwrap())));
        let forwards = o.forward.as_ref().unwrap();
        assert_eq!(forwards.len(), 3);
        assert_eq!(forwards[0].proto, ForwardProto::Tcp);
        assert_eq!(forwards[0].listen, "127.0.0.1:2222".parse().unwrap());
        assert_eq!(forwards[0].target, "127.0.0.1:22");
        assert_eq!(forwards[1].proto, ForwardProto::Udp);
        assert_eq!(forwards[2].proto, ForwardProto::Tcp);
        assert_eq!(c.transport.mode, Some(Mode::Fast2));
        assert_eq!(c.transport.window, Some(WindowSize(64 << 20)));
    }

    #[test]
    fn bad_values_are_rejected() {
        let e = parse(&["client", "--forward", "127.0.0.1:2222"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert!(e.to_string().contains("LISTEN=TARGET"), "{e}");
        let e = parse(&["client", "--conns", "0"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        let e = parse(&["server", "--mode", "turbo"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        assert!(
            e.to_string()
                .contains("[possible values: normal, fast, fast2, fast3]"),
            "{e}"
        );
        let e = parse(&["client", "--socks", "127.0.0.1:1", "--no-socks"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        let e = parse(&["client", "--key", "abcdefghij", "--key-file", "/k"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        let e = parse(&["client", "--forward", "42189=127.0.0.1:0"]).unwrap_err();
        assert!(e.to_string().contains("invalid port `0`"), "{e}");
        // Out of range either way: the same message.
        let big = parse(&["server", "--mtu", "70000"]).unwrap_err();
        let small = parse(&["server", "--mtu", "100"]).unwrap_err();
        assert_eq!(big.kind(), small.kind());
        assert!(
            big.to_string()
                .contains("mtu must be a number from 1200 to 65507, not `70000`")
        );
        assert!(
            small
                .to_string()
                .contains("mtu must be a number from 1200 to 65507, not `100`")
        );
        let e = parse(&["ctl", "wnd", "999999G"]).unwrap_err();
        assert!(e.to_string().contains("too large: use at most 4G"), "{e}");
    }

    #[test]
    fn server_flags() {
        let cli = parse(&[
            "server",
            "--listen",
            "0.0.0.0:4000",
            "--key",
            "first-key-1",
            "--key",
            "second-key-2",
            "--allow",
            "10.0.0.0/8",
            "--allow-private",
            "--congestion",
            "brutal",
            "--brutal-rate",
            "50",
            "--log-format",
            "json",
        ])
        .unwrap();
        let Command::Server(s) = cli.command else {
            panic!()
        };
        assert_eq!(s.log.log_format, Some(LogFormat::Json));
        assert_eq!(s.server.listen, Some("0.0.0.0:4000".parse().unwrap()));
        assert_eq!(
            s.common.key,
            Some(vec!["first-key-1".into(), "second-key-2".into()])
        );
        assert_eq!(s.server.allow, Some(vec!["10.0.0.0/8".into()]));
        assert_eq!(s.server.allow_private, Some(true));
        assert_eq!(s.transport.brutal_rate, Some(50.0));
    }

    #[test]
    fn ctl_commands() {
        let Command::Ctl(c) = parse(&["ctl", "wnd", "8M"]).unwrap().command else {
            panic!()
        };
        assert_eq!(c.command.line(), "wnd 8388608");
        let Command::Ctl(c) = parse(&["ctl", "--socket", "/s", "stats"]).unwrap().command else {
            panic!()
        };
        assert_eq!(c.socket, Some(PathBuf::from("/s")));
        assert_eq!(c.command.line(), "stats");
        let Command::Ctl(c) = parse(&["ctl", "stats", "json"]).unwrap().command else {
            panic!()
        };
        assert_eq!(c.command.line(), "stats json");
        let Command::Ctl(c) = parse(&["ctl", "stats", "--json"]).unwrap().command else {
            panic!()
        };
        assert_eq!(c.command.line(), "stats json");
        assert!(parse(&["ctl", "stats", "yaml"]).is_err());
        let Command::Ctl(c) = parse(&["ctl", "top", "--count", "2"]).unwrap().command else {
            panic!()
        };
        assert_eq!(c.command.line(), "top");
        assert!(matches!(c.command, CtlCommand::Top { count: Some(2) }));
    }

    #[test]
    fn demo_defaults() {
        let Command::Demo(d) = parse(&["demo"]).unwrap().command else {
            panic!()
        };
        assert_eq!(d.socks, DEFAULT_SOCKS.parse().unwrap());
        d.transport.build().unwrap();
        assert_eq!(d.loss, 2.0);
        assert_eq!(d.delay, 30);
    }
}
