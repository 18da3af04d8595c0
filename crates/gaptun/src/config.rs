//! The config file: TOML (every key documented in `gaptun.example.toml`), or gap-proxy's
//! `config.json` accepted as is.
//!
//! Every value is optional in the file; command-line flags override file values. Unknown keys
//! are errors, and every error names the file and line: a typo must not silently leave a
//! default in place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::transport::TransportSettings;
use crate::values::{ByteSize, Cipher, Congestion, ForwardSpec, LogFormat, Mode};

/// Which daemon reads the file; decides which keys make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }
}

/// One key or several (`key = "..."` or `key = ["...", "..."]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// Everything the config file may set. Field names are the keys.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    // Both roles.
    pub key: Option<OneOrMany>,
    pub key_file: Option<PathBuf>,
    pub control: Option<PathBuf>,
    pub log: Option<String>,
    pub log_format: Option<LogFormat>,
    // Server.
    pub listen: Option<SocketAddr>,
    pub allow: Option<Vec<String>>,
    pub allow_private: Option<bool>,
    // Client.
    pub server: Option<String>,
    pub socks: Option<SocketAddr>,
    pub no_socks: Option<bool>,
    pub socks_user: Option<String>,
    pub socks_password: Option<String>,
    pub forward: Option<Vec<ForwardSpec>>,
    pub conns: Option<usize>,
    // Transport, both roles.
    pub mode: Option<Mode>,
    pub window: Option<ByteSize>,
    pub mtu: Option<u16>,
    pub congestion: Option<Congestion>,
    pub brutal_rate: Option<f64>,
    pub keepalive: Option<u64>,
    pub idle_timeout: Option<u64>,
    pub cipher: Option<Cipher>,
    pub handshake_timeout: Option<u64>,
    pub mtu_discovery: Option<bool>,
}

/// Keys that only one role uses; the other role refuses them instead of ignoring them.
const SERVER_ONLY: &[&str] = &["listen", "allow", "allow_private"];
const CLIENT_ONLY: &[&str] = &[
    "server",
    "socks",
    "no_socks",
    "socks_user",
    "socks_password",
    "forward",
    "conns",
];

/// gap-proxy's `config.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GapProxyConfig {
    local: Option<SocketAddr>,
    server: Option<String>,
    key: Option<String>,
}

/// A config file problem, printed as `config FILE line N: message`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("config {file}: {reason}")]
    Read { file: String, reason: String },
    #[error("config {file} line {line}: {message}")]
    At {
        file: String,
        line: usize,
        message: String,
    },
    #[error("config {file}: {message}")]
    Whole { file: String, message: String },
}

impl FileConfig {
    /// Reads and parses `path`, checking that every key suits `role`.
    pub fn load(path: &Path, role: Role) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, &file, role)
    }

    /// Parses config text; `file` names it in errors. JSON when the name ends in `.json` or the
    /// text starts with `{`, TOML otherwise.
    pub fn parse(text: &str, file: &str, role: Role) -> Result<Self, ConfigError> {
        let config = if file.ends_with(".json") || text.trim_start().starts_with('{') {
            parse_gap_proxy_json(text, file)?
        } else {
            parse_toml(text, file)?
        };
        config.check_role(text, file, role)?;
        Ok(config)
    }

    fn check_role(&self, text: &str, file: &str, role: Role) -> Result<(), ConfigError> {
        let (foreign, other) = match role {
            Role::Server => (CLIENT_ONLY, Role::Client),
            Role::Client => (SERVER_ONLY, Role::Server),
        };
        for &key in foreign {
            if self.has(key) {
                let message = format!(
                    "`{key}` is a {} setting, but this is the {}",
                    other.name(),
                    role.name()
                );
                return Err(match key_line(text, key) {
                    Some(line) => ConfigError::At {
                        file: file.into(),
                        line,
                        message,
                    },
                    None => ConfigError::Whole {
                        file: file.into(),
                        message,
                    },
                });
            }
        }
        Ok(())
    }

    fn has(&self, key: &str) -> bool {
        match key {
            "listen" => self.listen.is_some(),
            "allow" => self.allow.is_some(),
            "allow_private" => self.allow_private.is_some(),
            "server" => self.server.is_some(),
            "socks" => self.socks.is_some(),
            "no_socks" => self.no_socks.is_some(),
            "forward" => self.forward.is_some(),
            "conns" => self.conns.is_some(),
            "socks_user" => self.socks_user.is_some(),
            "socks_password" => self.socks_password.is_some(),
            _ => false,
        }
    }

    /// The transport knobs set in the file.
    pub fn transport(&self) -> TransportSettings {
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
            mtu_discovery: self.mtu_discovery,
        }
    }
}

fn parse_toml(text: &str, file: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_owned();
        match e.span() {
            Some(span) => ConfigError::At {
                file: file.into(),
                line: line_of(text, span.start),
                message,
            },
            None => ConfigError::Whole {
                file: file.into(),
                message,
            },
        }
    })
}

fn parse_gap_proxy_json(text: &str, file: &str) -> Result<FileConfig, ConfigError> {
    let g: GapProxyConfig = serde_json::from_str(text).map_err(|e| {
        let full = e.to_string();
        // serde_json appends " at line L column C"; we put the line first instead.
        let message = full
            .rfind(" at line ")
            .map_or(full.as_str(), |i| &full[..i])
            .to_owned();
        ConfigError::At {
            file: file.into(),
            line: e.line().max(1),
            message,
        }
    })?;
    Ok(FileConfig {
        socks: g.local,
        server: g.server,
        key: g.key.map(OneOrMany::One),
        ..Default::default()
    })
}

/// 1-based line number of byte offset `pos` in `text`.
fn line_of(text: &str, pos: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(pos)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line on which `key` is assigned, if it can be found.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::ForwardProto;

    #[test]
    fn example_file_parses_for_both_roles() {
        let text = include_str!("../../../gaptun.example.toml");
        // The example documents both roles; split it at the role sections.
        let server_part: String = strip_section(text, "# --- client");
        let client_part: String = strip_section(text, "# --- server");
        let s = FileConfig::parse(&server_part, "gaptun.example.toml", Role::Server).unwrap();
        assert_eq!(s.listen, Some("0.0.0.0:29900".parse().unwrap()));
        assert_eq!(s.allow_private, Some(false));
        let c = FileConfig::parse(&client_part, "gaptun.example.toml", Role::Client).unwrap();
        assert_eq!(c.server.as_deref(), Some("vpn.example.com:29900"));
        assert_eq!(c.socks, Some("127.0.0.1:1080".parse().unwrap()));
        assert_eq!(c.conns, Some(2));
        let fwd = c.forward.clone().unwrap();
        assert_eq!(fwd[0].proto, ForwardProto::Tcp);
        assert_eq!(fwd[1].proto, ForwardProto::Udp);
        assert_eq!(c.mode, Some(Mode::Fast));
        assert_eq!(c.window, Some(ByteSize(32 << 20)));
        c.transport().build().unwrap();
        // The full file, with every key, parses as TOML into the struct.
        let all: FileConfig = toml::from_str(text).unwrap();
        assert!(all.listen.is_some() && all.server.is_some());
    }

    /// Every key the config file accepts, as serde lists them in its unknown-field error.
    fn all_keys() -> Vec<String> {
        let e = toml::from_str::<FileConfig>("no_such_key = 1\n").unwrap_err();
        let message = e.message().to_owned();
        let list = message.split("expected one of ").nth(1).unwrap();
        list.split(", ")
            .map(|k| k.trim().trim_matches('`').to_owned())
            .collect()
    }

    #[test]
    fn example_file_documents_every_key() {
        let text = include_str!("../../../gaptun.example.toml");
        let keys = all_keys();
        assert!(keys.len() >= 20, "{keys:?}");
        for key in &keys {
            let set = text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            });
            assert!(set, "gaptun.example.toml does not show `{key}`");
        }
        // Commented-out examples are valid too: each one parses once uncommented.
        for line in text.lines() {
            let Some(setting) = line.strip_prefix("# ") else {
                continue;
            };
            let Some((key, _)) = setting.split_once(" = ") else {
                continue;
            };
            if keys.iter().any(|k| k == key.trim()) {
                let mut toml = format!("{setting}\n");
                if key.trim() == "brutal_rate" {
                    toml.push_str("congestion = \"brutal\"\n");
                }
                let role = if CLIENT_ONLY.contains(&key.trim()) {
                    Role::Client
                } else {
                    Role::Server
                };
                let c = FileConfig::parse(&toml, "example", role)
                    .unwrap_or_else(|e| panic!("{setting}: {e}"));
                c.transport().build().unwrap();
            }
        }
    }

    /// Removes the lines from the section starting with `marker` up to the next `# ---` marker.
    fn strip_section(text: &str, marker: &str) -> String {
        let mut out = String::new();
        let mut skipping = false;
        for line in text.lines() {
            if line.starts_with("# ---") {
                skipping = line.starts_with(marker);
            }
            if !skipping {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    #[test]
    fn gap_proxy_json_is_accepted() {
        let text = r#"{"local": "127.0.0.1:1186", "server": "8.8.8.8:2286", "key": "gap-proxy"}"#;
        let c = FileConfig::parse(text, "config.json", Role::Client).unwrap();
        assert_eq!(c.socks, Some("127.0.0.1:1186".parse().unwrap()));
        assert_eq!(c.server.as_deref(), Some("8.8.8.8:2286"));
        assert_eq!(c.key, Some(OneOrMany::One("gap-proxy".into())));
        // Recognised by content too.
        let c = FileConfig::parse(text, "gap.conf", Role::Client).unwrap();
        assert_eq!(c.server.as_deref(), Some("8.8.8.8:2286"));
    }

    #[test]
    fn gap_proxy_json_errors_have_lines() {
        let text = "{\n  \"local\": \"127.0.0.1:1186\",\n  \"sever\": \"x\"\n}";
        let e = FileConfig::parse(text, "config.json", Role::Client).unwrap_err();
        let ConfigError::At { line, message, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*line, 3);
        assert!(message.contains("unknown field `sever`"), "{message}");
        assert!(
            e.to_string()
                .starts_with("config config.json line 3: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_line() {
        let text = "listen = \"0.0.0.0:1\"\n\nlisten_addr = \"x\"\n";
        let e = FileConfig::parse(text, "s.toml", Role::Server).unwrap_err();
        assert_eq!(
            e,
            ConfigError::At {
                file: "s.toml".into(),
                line: 3,
                message: e_message(&e),
            }
        );
        assert!(
            e.to_string()
                .starts_with("config s.toml line 3: unknown field `listen_addr`"),
            "{e}"
        );
    }

    fn e_message(e: &ConfigError) -> String {
        match e {
            ConfigError::At { message, .. } => message.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_value_names_key_line() {
        let text = "# comment\nmode = \"fast\"\nwindow = \"32Q\"\n";
        let e = FileConfig::parse(text, "c.toml", Role::Client).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("config c.toml line 3: "), "{s}");
        assert!(s.contains("invalid size `32Q`"), "{s}");

        let text = "conns = \"two\"\n";
        let s = FileConfig::parse(text, "c.toml", Role::Client)
            .unwrap_err()
            .to_string();
        assert!(s.starts_with("config c.toml line 1: "), "{s}");

        let text = "socks = \"localhost\"\n";
        let s = FileConfig::parse(text, "c.toml", Role::Client)
            .unwrap_err()
            .to_string();
        assert!(s.starts_with("config c.toml line 1: "), "{s}");
    }

    #[test]
    fn syntax_error_has_line() {
        let text = "mode = \"fast\"\nmtu = \n";
        let e = FileConfig::parse(text, "c.toml", Role::Client).unwrap_err();
        assert!(e.to_string().starts_with("config c.toml line 2: "), "{e}");
    }

    #[test]
    fn role_mismatch_is_rejected() {
        let text = "key = \"secret-passphrase\"\nsocks = \"127.0.0.1:1080\"\n";
        let e = FileConfig::parse(text, "s.toml", Role::Server).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config s.toml line 2: `socks` is a client setting, but this is the server"
        );
    }

    #[test]
    fn key_may_be_a_list() {
        let text = "key = [\"first-passphrase\", \"second-passphrase\"]\n";
        let c = FileConfig::parse(text, "s.toml", Role::Server).unwrap();
        assert_eq!(c.key.unwrap().into_vec().len(), 2);
    }

    #[test]
    fn missing_file_is_reported() {
        let e = FileConfig::load(Path::new("/nonexistent/gaptun.toml"), Role::Client).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config /nonexistent/gaptun.toml: "),
            "{e}"
        );
    }
}
