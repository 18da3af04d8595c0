//! Typed values of command-line flags and config keys, parsed from the same text forms.
//!
//! Each type implements `FromStr` (used by clap) and `Deserialize` through that same `FromStr`
//! (used for the config file), so a value is spelled the same way in both places and a bad
//! value in the file is reported with the file's line number.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

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

deserialize_via_from_str!(ByteSize, ForwardSpec, Mode, Congestion, Cipher, LogFormat);

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

/// A listen address: `IP:PORT`, `[IPv6]:PORT`, or a bare port (loopback).
pub fn parse_listen(s: &str) -> Option<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().ok()
}

/// Checks `host:port` (host a name, an IPv4 address or a bracketed IPv6 address).
pub fn validate_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
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

/// Retransmission/ACK timing presets, named like kcptun's modes. See [`crate::transport`] for
/// the parameters each one sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

/// Congestion controller choice (the rate of `brutal` is a separate setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    Auto,
    Aes256Gcm,
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

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
            "1=:80",
        ] {
            assert!(bad.parse::<ForwardSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn enums() {
        assert_eq!("fast3".parse(), Ok(Mode::Fast3));
        assert!("turbo".parse::<Mode>().is_err());
        assert_eq!("brutal".parse(), Ok(Congestion::Brutal));
        assert_eq!("chacha20-poly1305".parse(), Ok(Cipher::ChaCha20Poly1305));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
    }
}
