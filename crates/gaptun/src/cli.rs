//! Command-line interface (clap derive).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::transport::TransportSettings;
use crate::values::{ByteSize, Cipher, Congestion, ForwardSpec, LogFormat, Mode};

/// Default UDP port of the server.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:29900";
/// Default SOCKS5 address of the client.
pub const DEFAULT_SOCKS: &str = "127.0.0.1:1080";

/// Fast, secure tunnel and proxy for bad networks.
#[derive(Debug, Parser)]
#[command(name = "gaptun", version, propagate_version = true)]
pub struct Cli {
    /// Log level or filter: error, warn, info, debug, trace, or e.g. "gaptun=debug"
    /// [default: config `log`, else RUST_LOG, else info].
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log: Option<String>,

    /// Log format: text or json.
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: accept tunnel connections and relay their streams to the targets.
    Server(ServerArgs),
    /// Run the client: SOCKS5 and port forwards through the tunnel.
    Client(ClientArgs),
    /// A complete tunnel on this machine through a simulated bad link, with SOCKS5.
    Demo(DemoArgs),
    /// Print a new random key.
    Keygen,
    /// Talk to a running daemon: change the receive window, show statistics.
    Ctl(CtlArgs),
}

/// Transport tuning, shared by server, client and demo.
#[derive(Debug, Clone, Default, Args)]
pub struct TransportArgs {
    /// Retransmission/ACK timing preset: normal, fast (default), fast2, fast3.
    #[arg(long, value_name = "MODE")]
    pub mode: Option<Mode>,
    /// Receive window per connection and stream, in bytes (K, M, G suffixes) [default: 32M].
    #[arg(long, value_name = "BYTES")]
    pub window: Option<ByteSize>,
    /// Largest UDP payload in bytes, 1200-9000: the ceiling path MTU discovery probes up to
    /// [default: 1472].
    #[arg(long, value_name = "N")]
    pub mtu: Option<u16>,
    /// Congestion control: bbr (default), none, brutal.
    #[arg(long, value_name = "CC")]
    pub congestion: Option<Congestion>,
    /// Target rate of --congestion brutal, in Mbit/s.
    #[arg(long, value_name = "MBIT")]
    pub brutal_rate: Option<f64>,
    /// Seconds between keepalives when idle; 0 disables [default: 10].
    #[arg(long, value_name = "SECS")]
    pub keepalive: Option<u64>,
    /// Seconds of silence before a connection is dropped [default: 40].
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Cipher: auto (default), aes-256-gcm, chacha20-poly1305.
    #[arg(long, value_name = "CIPHER")]
    pub cipher: Option<Cipher>,
    /// Seconds to wait for the server's handshake answer [default: 10].
    #[arg(long, value_name = "SECS")]
    pub handshake_timeout: Option<u64>,
    /// Don't probe for datagrams larger than 1350 bytes (path MTU discovery is on by default).
    #[arg(long)]
    pub no_mtu_discovery: bool,
}

impl TransportArgs {
    pub fn settings(&self) -> TransportSettings {
        TransportSettings {
            mode: self.mode,
            window: self.window,
            mtu: self.mtu,
            congestion: self.congestion,
            brutal_rate: self.brutal_rate,
            keepalive: self.keepalive,
            idle_timeout: self.idle_timeout,
            cipher: self.cipher,
            handshake_timeout: self.handshake_timeout,
            mtu_discovery: self.no_mtu_discovery.then_some(false),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// UDP address to listen on [default: 0.0.0.0:29900].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// A key clients may use (repeatable). Prefer --key-file or GAPTUN_KEY: command lines are
    /// visible to other users.
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,
    /// File with the key(s), one per line.
    #[arg(long, value_name = "PATH", conflicts_with = "keys")]
    pub key_file: Option<PathBuf>,
    /// Let clients reach this loopback/private/link-local target (refused otherwise; public
    /// addresses are always allowed): IP, CIDR, IP:PORT, [IPV6]:PORT or HOST:PORT (repeatable).
    #[arg(long = "allow", value_name = "TARGET")]
    pub allow: Vec<String>,
    /// Allow every target, private, loopback and link-local ones included.
    #[arg(long)]
    pub allow_private: bool,
    /// Config file (TOML, see gaptun.example.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control socket path for `gaptun ctl`.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    #[command(flatten)]
    pub transport: TransportArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// The key. Prefer --key-file or GAPTUN_KEY: command lines are visible to other users.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// File with the key.
    #[arg(long, value_name = "PATH", conflicts_with = "key")]
    pub key_file: Option<PathBuf>,
    /// SOCKS5 listen address [default: 127.0.0.1:1080].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_socks")]
    pub socks: Option<SocketAddr>,
    /// Run without the SOCKS5 server.
    #[arg(long)]
    pub no_socks: bool,
    /// Require this SOCKS5 username (RFC 1929); needs --socks-password.
    #[arg(long, value_name = "USER", requires = "socks_password")]
    pub socks_user: Option<String>,
    /// SOCKS5 password for --socks-user (or GAPTUN_SOCKS_PASSWORD).
    #[arg(
        long,
        value_name = "PASS",
        env = "GAPTUN_SOCKS_PASSWORD",
        hide_env_values = true
    )]
    pub socks_password: Option<String>,
    /// Port forward [tcp:|udp:]LISTEN=TARGET, e.g. tcp:127.0.0.1:2222=10.0.0.5:22 (repeatable).
    #[arg(long = "forward", value_name = "SPEC")]
    pub forwards: Vec<ForwardSpec>,
    /// Connections to keep open to the server, 1-64 [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub conns: Option<u16>,
    /// Config file (TOML, see gaptun.example.toml; gap-proxy's config.json also works).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control socket path for `gaptun ctl`.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    #[command(flatten)]
    pub transport: TransportArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// SOCKS5 listen address.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_SOCKS)]
    pub socks: SocketAddr,
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
    pub transport: TransportArgs,
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
    /// Set the receive window of every live and future connection (K, M, G suffixes).
    Wnd {
        #[arg(value_name = "BYTES")]
        bytes: ByteSize,
    },
    /// Show connections, RTT, window, throughput counters, loss and retransmissions.
    Stats {
        /// Print JSON instead of a table (also accepted as `stats json`).
        #[arg(long)]
        json: bool,
        #[arg(value_name = "json", value_parser = ["json"], hide = true)]
        format: Option<String>,
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
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;
    use crate::values::ForwardProto;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("gaptun").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
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
        ])
        .unwrap();
        assert_eq!(cli.log.as_deref(), Some("debug"));
        let Command::Client(c) = cli.command else {
            panic!()
        };
        assert_eq!(c.server.as_deref(), Some("vpn.example.com:29900"));
        assert_eq!(c.conns, Some(4));
        assert_eq!(c.forwards.len(), 3);
        assert_eq!(c.forwards[0].proto, ForwardProto::Tcp);
        assert_eq!(c.forwards[0].listen, "127.0.0.1:2222".parse().unwrap());
        assert_eq!(c.forwards[0].target, "127.0.0.1:22");
        assert_eq!(c.forwards[1].proto, ForwardProto::Udp);
        assert_eq!(c.forwards[2].proto, ForwardProto::Tcp);
        assert_eq!(c.transport.mode, Some(Mode::Fast2));
        assert_eq!(c.transport.window, Some(ByteSize(64 << 20)));
    }

    #[test]
    fn bad_values_are_rejected() {
        let e = parse(&["client", "--forward", "127.0.0.1:2222"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert!(e.to_string().contains("LISTEN=TARGET"), "{e}");
        let e = parse(&["client", "--conns", "0"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        let e = parse(&["server", "--mode", "turbo"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        let e = parse(&["client", "--socks", "127.0.0.1:1", "--no-socks"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        let e = parse(&["client", "--key", "abcdefghij", "--key-file", "/k"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
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
        assert_eq!(cli.log_format, Some(LogFormat::Json));
        let Command::Server(s) = cli.command else {
            panic!()
        };
        assert_eq!(s.listen, Some("0.0.0.0:4000".parse().unwrap()));
        assert_eq!(s.keys, vec!["first-key-1", "second-key-2"]);
        assert_eq!(s.allow, vec!["10.0.0.0/8"]);
        assert!(s.allow_private);
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
    }

    #[test]
    fn demo_defaults() {
        let Command::Demo(d) = parse(&["demo"]).unwrap().command else {
            panic!()
        };
        assert_eq!(d.socks, DEFAULT_SOCKS.parse().unwrap());
        assert_eq!(d.loss, 2.0);
        assert_eq!(d.delay, 30);
    }
}
