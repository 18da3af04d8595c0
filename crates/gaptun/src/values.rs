//! Typed values of command-line flags and config keys, parsed from the same text forms.
//!
//! Each type implements `FromStr` (used by clap) and `Deserialize` through that same `FromStr`
//! (used for the config file), so a value is spelled the same way in both places and a bad
//! value in the file is reported with the file's line number.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use clap::ValueEnum;
use serde::{Deserialize, Deserializer};

/// Implements `Deserialize` from a string through `FromStr`.
macro_rules! deserialize_via_from_str {
    ($($t:ty),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

deserialize_via_from_str!(
    ByteSize,
    WindowSize,
    ForwardSpec,
    ExposeArg,
    ExposePorts,
    ListenAddr,
    ListenPorts,
    Mode,
    Congestion,
    Cipher,
    Fec,
    LogFormat,
    CarrierChoice,
    CarrierList,
    CarrierServer
);

/// Implements `Deserialize` for an integer newtype from a TOML/JSON integer or a string, both
/// through `FromStr`, so `mtu = 70000` in a file and `--mtu 70000` fail with the same message.
macro_rules! bounded_integer {
    ($(#[$meta:meta])* $name:ident($int:ty), $what:literal, $range:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name(pub $int);

        impl $name {
            /// The accepted values.
            pub const RANGE: std::ops::RangeInclusive<$int> = $range;
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                let out_of_range = || {
                    format!(
                        "{} must be a number from {} to {}, not `{s}`",
                        $what,
                        Self::RANGE.start(),
                        Self::RANGE.end()
                    )
                };
                let n: $int = s.trim().parse().map_err(|_| out_of_range())?;
                if Self::RANGE.contains(&n) {
                    Ok(Self(n))
                } else {
                    Err(out_of_range())
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(IntOrText)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Reads a number as a file may spell it, `1472` or `"1472"`, as text for `FromStr` (so a
/// negative or huge integer still gets the range check's message).
struct IntOrText;

impl serde::de::Visitor<'_> for IntOrText {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<String, E> {
        Ok(n.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<String, E> {
        Ok(n.to_string())
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<String, E> {
        Ok(s.to_owned())
    }
}

bounded_integer!(
    /// Largest UDP payload in bytes: at least the protocol minimum (a handshake Initial needs
    /// 1200), at most what one IPv4 UDP datagram can hold (65 507, for loopback, whose MTU is
    /// 65 536; a 9000-byte jumbo frame carries 8972).
    Mtu(u16),
    "mtu",
    gaptun_proto::MIN_MTU..=gaptun_proto::MAX_UDP_PAYLOAD
);

bounded_integer!(
    /// TCP connections of the TLS carrier.
    TlsConnections(u16),
    "tls_connections",
    1..=64
);

bounded_integer!(
    /// Connections a client keeps open to its server.
    Conns(u16),
    "conns",
    1..=64
);

bounded_integer!(
    /// Seconds between port hops (a new local UDP socket, and the next server port of a
    /// range); at most an hour.
    HopInterval(u16),
    "hop_interval",
    1..=3600
);

/// The server's listen address: `IP:PORT`, or a port range `IP:FIRST-LAST` (one UDP socket per
/// port, for clients that spread their packets over the range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenPorts(pub gaptun_runtime::ListenRange);

impl FromStr for ListenPorts {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(Self).map_err(|e| {
            format!("invalid listen address `{s}`: {e} (use IP:PORT or IP:FIRST-LAST)")
        })
    }
}

impl fmt::Display for ListenPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<SocketAddr> for ListenPorts {
    fn from(addr: SocketAddr) -> Self {
        Self(gaptun_runtime::ListenRange::single(addr))
    }
}

/// Smallest receive window: a few packets' worth, below which a connection cannot keep data
/// flowing.
pub const MIN_WINDOW: u64 = 64 * 1024;
/// Largest receive window (4 GiB): far above any bandwidth-delay product a tunnel sees, and a
/// bound on what a typo (`999999G`) can make the daemon promise to buffer.
pub const MAX_WINDOW: u64 = 4 << 30;

/// A receive window: a [`ByteSize`] from [`MIN_WINDOW`] to [`MAX_WINDOW`] (`--window`, the
/// `window` key, `gaptun ctl wnd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize(pub u64);

impl FromStr for WindowSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_window(s).map(Self)
    }
}

impl fmt::Display for WindowSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        ByteSize(self.0).fmt(f)
    }
}

/// Parses a window size and checks its bounds; the control socket's `wnd` command should use
/// this too, so that a daemon refuses what the command line refuses.
pub fn parse_window(s: &str) -> Result<u64, String> {
    let ByteSize(n) = s.parse()?;
    if n < MIN_WINDOW {
        return Err(format!("window `{s}` is too small: use at least 64K"));
    }
    if n > MAX_WINDOW {
        return Err(format!("window `{s}` is too large: use at most 4G"));
    }
    Ok(n)
}

/// A local listen address: `IP:PORT`, `[IPv6]:PORT`, or a bare port meaning 127.0.0.1:PORT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_listen(s)
            .map(Self)
            .ok_or_else(|| format!("invalid address `{s}`: use IP:PORT, [IPV6]:PORT or PORT"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Deserializes one string or a list of strings (`key = "..."` or `key = ["...", "..."]`).
pub fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

/// A byte count: plain, or with a K/M/G suffix (powers of 1024), e.g. `512K`, `32M`, `1G`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => t.split_at(i),
            None => (t, ""),
        };
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            _ => {
                return Err(format!(
                    "invalid size `{s}`: use a number with optional K, M or G"
                ));
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size `{s}`: use a number with optional K, M or G"))?;
        n.checked_mul(1 << shift)
            .map(Self)
            .ok_or_else(|| format!("size `{s}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            write!(f, "{}G", n >> 30)
        } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{}M", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            write!(f, "{}K", n >> 10)
        } else {
            write!(f, "{n}")
        }
    }
}

/// Transport protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardProto {
    Tcp,
    Udp,
}

impl fmt::Display for ForwardProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// A port forward: `[tcp:|udp:]LISTEN=TARGET`. LISTEN is a local address (a bare port means
/// 127.0.0.1:PORT); TARGET is `host:port` as seen from the server (a name is resolved there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSpec {
    pub proto: ForwardProto,
    pub listen: SocketAddr,
    pub target: String,
}

impl FromStr for ForwardSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "use [tcp:|udp:]LISTEN=TARGET, e.g. tcp:127.0.0.1:2222=10.0.0.5:22";
        let (proto, rest) = if let Some(r) = s.strip_prefix("tcp:") {
            (ForwardProto::Tcp, r)
        } else if let Some(r) = s.strip_prefix("udp:") {
            (ForwardProto::Udp, r)
        } else {
            (ForwardProto::Tcp, s)
        };
        let Some((listen, target)) = rest.split_once('=') else {
            return Err(format!("invalid forward `{s}`: {usage}"));
        };
        let listen = parse_listen(listen).ok_or_else(|| {
            format!("invalid listen address `{listen}` in forward `{s}`: {usage}")
        })?;
        validate_host_port(target)
            .map_err(|e| format!("invalid target `{target}` in forward `{s}`: {e}"))?;
        Ok(Self {
            proto,
            listen,
            target: target.to_owned(),
        })
    }
}

impl fmt::Display for ForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}={}", self.proto, self.listen, self.target)
    }
}

/// An expose (`--expose`, `expose = [...]`): `[tcp:|udp:]REMOTE=LOCAL[,proxy=v1|v2]`, see
/// [`gaptun_apps::expose::spec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposeArg(pub gaptun_apps::expose::ExposeSpec);

impl FromStr for ExposeArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(Self)
            .map_err(|e| format!("invalid expose `{s}`: {e}"))
    }
}

/// The ports a server lets clients expose (`--expose-ports 8000-9000,2222`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposePorts(pub gaptun_apps::expose::PortSet);

impl FromStr for ExposePorts {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(Self)
            .map_err(|e| format!("invalid expose ports `{s}`: {e}"))
    }
}

/// A listen address: `IP:PORT`, `[IPv6]:PORT`, or a bare port (loopback).
pub fn parse_listen(s: &str) -> Option<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().ok()
}

/// Checks `host:port` (host a name, an IPv4 address or a bracketed IPv6 address).
pub fn validate_host_port(s: &str) -> Result<(), String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err("invalid port `0`".into())
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("missing `:port`".into());
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("invalid port `{port}`"));
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if name_ok {
        Ok(())
    } else {
        Err(format!("invalid host `{host}`"))
    }
}

/// Where `--carrier auto` finds the server's TLS or QUIC carrier (`--tls-server`,
/// `--quic-server`): `HOST:PORT`, or `PORT` alone on the host of `--server`. Checked when
/// the settings are read, so a typo is reported at start-up, not as a failed carrier later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarrierServer {
    /// A port on the host of `--server`.
    Port(u16),
    /// A host (a name, an IPv4 address or a bracketed IPv6 address) and a port, as given;
    /// a name is resolved when the carrier connects.
    HostPort(String),
}

impl FromStr for CarrierServer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            |why: String| format!("invalid carrier address `{s}`: {why}; use HOST:PORT or PORT");
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u16>() {
                Ok(port) if port != 0 => Ok(Self::Port(port)),
                _ => Err(bad(format!("invalid port `{s}`"))),
            };
        }
        validate_host_port(s).map_err(bad)?;
        Ok(Self::HostPort(s.to_owned()))
    }
}

impl fmt::Display for CarrierServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Port(port) => port.fmt(f),
            Self::HostPort(s) => f.write_str(s),
        }
    }
}

/// Retransmission/ACK timing presets, named like kcptun's modes. See [`crate::transport`] for
/// the parameters each one sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Mode {
    Normal,
    #[default]
    Fast,
    Fast2,
    Fast3,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "normal" => Ok(Self::Normal),
            "fast" => Ok(Self::Fast),
            "fast2" => Ok(Self::Fast2),
            "fast3" => Ok(Self::Fast3),
            _ => Err(format!(
                "invalid mode `{s}`: use normal, fast, fast2 or fast3"
            )),
        }
    }
}

/// How datagrams travel between client and server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum CarrierChoice {
    /// UDP datagrams.
    #[default]
    Udp,
    /// TCP-looking segments on a raw socket, for networks that throttle or block UDP.
    Faketcp,
    /// TLS 1.3 over TCP (HTTPS to an observer), for networks that pass only TCP to port 443.
    Tls,
    /// Standard QUIC with ALPN h3 (HTTP/3 to an observer), packets in DATAGRAM frames.
    Quic,
    /// A server accepts every carrier (udp, faketcp, tls, quic) on one endpoint; a client
    /// uses UDP and fake TCP at once.
    All,
    /// A client uses the carriers of `--carriers` (udp, faketcp, quic, tls) one at a time, the
    /// most preferred that works, and moves between them as they fail and recover; a server
    /// accepts UDP and fake TCP (`all` also accepts TLS and QUIC).
    Auto,
    /// A client's default, when neither `--carrier` nor the config file names one: UDP, and
    /// the carriers the server offers in its handshake (or offered last time, remembered in
    /// the state directory) besides, used as with `auto`. Against a server that offers only
    /// UDP it is `udp`. Not a value of the flag: leave `--carrier` out to get it.
    #[value(skip)]
    ByOffer,
}

impl CarrierChoice {
    /// Whether UDP is one of the carriers (a server's, or a client's other than `auto`).
    pub fn udp(self) -> bool {
        matches!(self, Self::Udp | Self::All | Self::Auto | Self::ByOffer)
    }

    /// Whether fake TCP is one of the carriers (as for [`CarrierChoice::udp`]).
    pub fn faketcp(self) -> bool {
        matches!(self, Self::Faketcp | Self::All | Self::Auto)
    }

    /// Whether a server with this choice listens for TLS (a client uses TLS only when it is
    /// `tls`).
    pub fn tls(self) -> bool {
        matches!(self, Self::Tls | Self::All)
    }

    /// Whether a server with this choice listens for QUIC (a client: only `quic`).
    pub fn quic(self) -> bool {
        matches!(self, Self::Quic | Self::All)
    }
}

/// One kind of carrier, as `--carriers` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarrierKind {
    Udp,
    Faketcp,
    Quic,
    Tls,
}

impl CarrierKind {
    /// The name, as the flag spells it and as the runtime's carriers report their kind.
    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Faketcp => "faketcp",
            Self::Quic => "quic",
            Self::Tls => "tls",
        }
    }
}

/// `--carriers`: the carriers `--carrier auto` uses, most preferred first, e.g.
/// `udp,faketcp,quic,tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarrierList(pub Vec<CarrierKind>);

impl FromStr for CarrierList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut kinds = Vec::new();
        for name in s.split(',').map(str::trim) {
            let kind = match name {
                "udp" => CarrierKind::Udp,
                "faketcp" => CarrierKind::Faketcp,
                "quic" => CarrierKind::Quic,
                "tls" => CarrierKind::Tls,
                _ => {
                    return Err(format!(
                        "invalid carrier `{name}` in `{s}`: use udp, faketcp, quic or tls"
                    ));
                }
            };
            if kinds.contains(&kind) {
                return Err(format!("carrier `{name}` given twice in `{s}`"));
            }
            kinds.push(kind);
        }
        Ok(Self(kinds))
    }
}

impl FromStr for CarrierChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(Self::Udp),
            "faketcp" => Ok(Self::Faketcp),
            "tls" => Ok(Self::Tls),
            "quic" => Ok(Self::Quic),
            "all" => Ok(Self::All),
            "auto" => Ok(Self::Auto),
            _ => Err(format!(
                "invalid carrier `{s}`: use udp, faketcp, tls, quic, all or auto"
            )),
        }
    }
}

/// Congestion controller choice (the rate of `brutal` is a separate setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Congestion {
    Bbr,
    None,
    Brutal,
}

impl FromStr for Congestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bbr" => Ok(Self::Bbr),
            "none" => Ok(Self::None),
            "brutal" => Ok(Self::Brutal),
            _ => Err(format!(
                "invalid congestion controller `{s}`: use bbr, none or brutal"
            )),
        }
    }
}

/// Cipher choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cipher {
    Auto,
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    #[value(name = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

impl FromStr for Cipher {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "aes-256-gcm" => Ok(Self::Aes256Gcm),
            "chacha20-poly1305" => Ok(Self::ChaCha20Poly1305),
            _ => Err(format!(
                "invalid cipher `{s}`: use auto, aes-256-gcm or chacha20-poly1305"
            )),
        }
    }
}

/// Forward error correction (`--fec`, the `fec` key): `auto`, `off` or `D/P`, as
/// [`gaptun_proto::FecMode`] parses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fec(pub gaptun_proto::FecMode);

impl FromStr for Fec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(Self).map_err(|e| format!("{e}"))
    }
}

impl fmt::Display for Fec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("invalid log format `{s}`: use text or json")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert_eq!("512K".parse(), Ok(ByteSize(512 * 1024)));
        assert_eq!("32M".parse(), Ok(ByteSize(32 << 20)));
        assert_eq!("32m".parse(), Ok(ByteSize(32 << 20)));
        assert_eq!("1G".parse(), Ok(ByteSize(1 << 30)));
        assert_eq!("2 MiB".parse(), Ok(ByteSize(2 << 20)));
        assert!("".parse::<ByteSize>().is_err());
        assert!("12Q".parse::<ByteSize>().is_err());
        assert!("-1".parse::<ByteSize>().is_err());
        assert!("99999999999999999999G".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(32 << 20).to_string(), "32M");
        assert_eq!(ByteSize(1500).to_string(), "1500");
    }

    #[test]
    fn forward_specs() {
        let f: ForwardSpec = "tcp:127.0.0.1:2222=127.0.0.1:22".parse().unwrap();
        assert_eq!(f.proto, ForwardProto::Tcp);
        assert_eq!(f.listen, "127.0.0.1:2222".parse().unwrap());
        assert_eq!(f.target, "127.0.0.1:22");

        let f: ForwardSpec = "udp:0.0.0.0:5353=dns.example:53".parse().unwrap();
        assert_eq!(f.proto, ForwardProto::Udp);
        assert_eq!(f.listen, "0.0.0.0:5353".parse().unwrap());
        assert_eq!(f.target, "dns.example:53");

        let f: ForwardSpec = "8080=example.com:80".parse().unwrap();
        assert_eq!(f.proto, ForwardProto::Tcp);
        assert_eq!(f.listen, "127.0.0.1:8080".parse().unwrap());

        let f: ForwardSpec = "[::1]:2222=[2001:db8::1]:22".parse().unwrap();
        assert_eq!(f.listen, "[::1]:2222".parse().unwrap());
        assert_eq!(f.to_string(), "tcp:[::1]:2222=[2001:db8::1]:22");

        for bad in [
            "tcp:127.0.0.1:2222",
            "x:1=y:2",
            "127.0.0.1:2222=host",
            "1=host:0",
            "42189=127.0.0.1:0",
            "1=[::1]:0",
            "1=:80",
        ] {
            assert!(bad.parse::<ForwardSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bounded_numbers_share_one_message() {
        let too_big = "70000".parse::<Mtu>().unwrap_err();
        let too_small = "100".parse::<Mtu>().unwrap_err();
        assert_eq!(
            too_big,
            "mtu must be a number from 1200 to 65507, not `70000`"
        );
        assert_eq!(
            too_small,
            "mtu must be a number from 1200 to 65507, not `100`"
        );
        assert_eq!("1200".parse(), Ok(Mtu(1200)));
        assert_eq!("9000".parse(), Ok(Mtu(9000)));
        assert_eq!("65507".parse(), Ok(Mtu(65_507)));
        assert!("65508".parse::<Mtu>().is_err());
        assert!("0".parse::<Conns>().is_err());
        assert_eq!("64".parse(), Ok(Conns(64)));
        // From a file: an integer or a string, checked the same way.
        #[derive(Deserialize)]
        struct F {
            mtu: Mtu,
        }
        let e = toml::from_str::<F>("mtu = 70000").err().unwrap();
        assert!(e.message().contains("not `70000`"), "{e}");
        let e = toml::from_str::<F>("mtu = -5").err().unwrap();
        assert!(e.message().contains("not `-5`"), "{e}");
        assert_eq!(
            toml::from_str::<F>("mtu = \"1400\"").unwrap().mtu,
            Mtu(1400)
        );
    }

    #[test]
    fn windows_are_bounded() {
        assert_eq!("64K".parse(), Ok(WindowSize(64 << 10)));
        assert_eq!("4G".parse(), Ok(WindowSize(4 << 30)));
        let e = "999999G".parse::<WindowSize>().unwrap_err();
        assert_eq!(e, "window `999999G` is too large: use at most 4G");
        let e = "5G".parse::<WindowSize>().unwrap_err();
        assert!(e.contains("too large"), "{e}");
        let e = "1000".parse::<WindowSize>().unwrap_err();
        assert_eq!(e, "window `1000` is too small: use at least 64K");
    }

    #[test]
    fn listen_port_ranges_parse_and_bad_ones_are_clear() {
        let r: ListenPorts = "0.0.0.0:10001-10010".parse().unwrap();
        assert_eq!(r.0.addrs().len(), 10);
        assert_eq!(r.to_string(), "0.0.0.0:10001-10010");
        let e = "0.0.0.0:10010-10001".parse::<ListenPorts>().unwrap_err();
        assert_eq!(
            e,
            "invalid listen address `0.0.0.0:10010-10001`: port range `10010-10001` is reversed: \
             write the lower port first (use IP:PORT or IP:FIRST-LAST)"
        );
        let e = "0.0.0.0:10001-x".parse::<ListenPorts>().unwrap_err();
        assert!(e.contains("invalid port `x`"), "{e}");
        let e = "0.0.0.0".parse::<ListenPorts>().unwrap_err();
        assert!(e.contains("missing `:PORT`"), "{e}");
        assert!("60".parse::<HopInterval>().is_ok());
        assert!("0".parse::<HopInterval>().is_err());
    }

    #[test]
    fn listen_addresses_accept_a_bare_port() {
        assert_eq!(
            "1080".parse(),
            Ok(ListenAddr("127.0.0.1:1080".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:1080".parse(),
            Ok(ListenAddr("[::1]:1080".parse().unwrap()))
        );
        assert!("localhost:1080".parse::<ListenAddr>().is_err());
        assert!("70000".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn enums() {
        assert_eq!("fast3".parse(), Ok(Mode::Fast3));
        assert!("turbo".parse::<Mode>().is_err());
        assert_eq!("faketcp".parse(), Ok(CarrierChoice::Faketcp));
        assert!(
            "all"
                .parse::<CarrierChoice>()
                .is_ok_and(|c| c.udp() && c.faketcp())
        );
        assert!("tcp".parse::<CarrierChoice>().is_err());
        assert_eq!("auto".parse(), Ok(CarrierChoice::Auto));
        assert_eq!(
            "faketcp, udp".parse(),
            Ok(CarrierList(vec![CarrierKind::Faketcp, CarrierKind::Udp]))
        );
        let e = "udp,udp".parse::<CarrierList>().unwrap_err();
        assert!(e.contains("given twice"), "{e}");
        assert_eq!(
            "tls,udp,quic".parse(),
            Ok(CarrierList(vec![
                CarrierKind::Tls,
                CarrierKind::Udp,
                CarrierKind::Quic
            ]))
        );
        let e = "udp,tcp".parse::<CarrierList>().unwrap_err();
        assert!(e.contains("invalid carrier `tcp`"), "{e}");
        assert!("".parse::<CarrierList>().is_err());
        assert_eq!("brutal".parse(), Ok(Congestion::Brutal));
        assert_eq!("chacha20-poly1305".parse(), Ok(Cipher::ChaCha20Poly1305));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
    }

    #[test]
    fn carrier_servers_are_host_port_or_port() {
        let host = |s: &str| CarrierServer::HostPort(s.to_owned());
        assert_eq!("8443".parse(), Ok(CarrierServer::Port(8443)));
        assert_eq!("tls.example:443".parse(), Ok(host("tls.example:443")));
        assert_eq!("192.0.2.7:8443".parse(), Ok(host("192.0.2.7:8443")));
        assert_eq!("[2001:db8::1]:443".parse(), Ok(host("[2001:db8::1]:443")));
        assert_eq!(CarrierServer::Port(8443).to_string(), "8443");
        assert_eq!(host("h:1").to_string(), "h:1");
        for (bad, why) in [
            ("0", "invalid port `0`"),
            ("65536", "invalid port `65536`"),
            ("h:0", "invalid port `0`"),
            ("h:", "invalid port ``"),
            ("h:https", "invalid port `https`"),
            ("tls.example", "missing `:port`"),
            ("", "missing `:port`"),
            ("a b:443", "invalid host `a b`"),
            (":443", "invalid host ``"),
            ("2001:db8::1:443", "invalid host `2001:db8::1`"),
        ] {
            let e = bad.parse::<CarrierServer>().unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.ends_with("use HOST:PORT or PORT"), "{bad:?}: {e}");
        }
    }
}
