//! The config file: TOML (every key documented in `server.example.toml` and
//! `client.example.toml`), or gap-proxy's `config.json` or QTRP's `server.yaml` /
//! `client.yaml` ([`qtrp`]) accepted as they are.
//!
//! Every value is optional in the file; command-line flags override file values key by key.
//! Unknown keys and keys of the other role are errors, and every error names the file and
//! line: a typo must not silently leave a default in place. The keys are the fields of the
//! settings groups ([`crate::layer`]), so the file accepts exactly what the flags do.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

use crate::cli::{ClientOptions, CommonOptions, LogOptions, ServerOptions};
use crate::layer::Layer;
use crate::transport::TransportSettings;
use crate::values::ListenAddr;

mod qtrp;

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

/// The syntax of a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Our own format (see the example files).
    Toml,
    /// gap-proxy's `config.json`.
    GapProxyJson,
    /// QTRP's `server.yaml` or `client.yaml`.
    QtrpYaml,
}

impl Format {
    /// YAML when the name ends in `.yaml` or `.yml`; JSON when it ends in `.json` or the text
    /// starts with `{`; TOML otherwise.
    pub fn detect(file: &str, text: &str) -> Self {
        if file.ends_with(".yaml") || file.ends_with(".yml") {
            Self::QtrpYaml
        } else if file.ends_with(".json") || text.trim_start().starts_with('{') {
            Self::GapProxyJson
        } else {
            Self::Toml
        }
    }
}

/// What a config file sets for one role, group by group; the groups of the other role stay
/// empty. Each group's fields are its keys (see [`crate::layer`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileConfig {
    pub common: CommonOptions,
    pub log: LogOptions,
    pub transport: TransportSettings,
    pub server: ServerOptions,
    pub client: ClientOptions,
    /// What the daemon logs once logging is up: settings of a foreign format that mean
    /// nothing here or were translated (see [`qtrp`]).
    pub notices: Vec<Notice>,
}

/// How loud a [`Notice`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeLevel {
    Info,
    Warn,
}

/// One line about a config file setting, logged at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub level: NoticeLevel,
    pub text: String,
}

/// gap-proxy's `config.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GapProxyConfig {
    local: Option<ListenAddr>,
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

impl ConfigError {
    /// An error at `line` of `file` when the line is known, else about the whole file.
    fn located(file: &str, line: Option<usize>, message: String) -> Self {
        match line {
            Some(line) => Self::At {
                file: file.into(),
                line,
                message,
            },
            None => Self::Whole {
                file: file.into(),
                message,
            },
        }
    }
}

/// Parses config text for `role`: the pure core of [`FileConfig::load`], with no file system
/// access (errors name the file as `<text>`). Every problem is an error, never a panic.
pub fn parse_str(text: &str, format: Format, role: Role) -> Result<FileConfig, ConfigError> {
    let file = UNNAMED;
    match format {
        Format::Toml => parse_toml(text, file, role),
        Format::GapProxyJson => parse_gap_proxy_json(text, file, role),
        Format::QtrpYaml => qtrp::parse(text, file, role),
    }
}

/// The file name in errors from [`parse_str`].
const UNNAMED: &str = "<text>";

impl ConfigError {
    /// The same error, naming `file`.
    fn in_file(self, file: &str) -> Self {
        match self {
            Self::Read { reason, .. } => Self::Read {
                file: file.into(),
                reason,
            },
            Self::At { line, message, .. } => Self::At {
                file: file.into(),
                line,
                message,
            },
            Self::Whole { message, .. } => Self::Whole {
                file: file.into(),
                message,
            },
        }
    }
}

/// The keys `role` accepts.
fn role_keys(role: Role) -> Vec<&'static str> {
    let own = match role {
        Role::Server => ServerOptions::KEYS,
        Role::Client => ClientOptions::KEYS,
    };
    [
        CommonOptions::KEYS,
        LogOptions::KEYS,
        TransportSettings::KEYS,
        own,
    ]
    .concat()
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

    /// Parses config text; `file` names it in errors and, with the text, decides the format
    /// ([`Format::detect`]).
    pub fn parse(text: &str, file: &str, role: Role) -> Result<Self, ConfigError> {
        parse_str(text, Format::detect(file, text), role).map_err(|e| e.in_file(file))
    }
}

fn toml_error(text: &str, file: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_owned();
    let line = e.span().map(|span| line_of(text, span.start));
    ConfigError::located(file, line, message)
}

/// Checks the keys first (unknown and other-role keys, with their lines), then reads each
/// group from the text, so that a bad value's error keeps its position too.
fn parse_toml(text: &str, file: &str, role: Role) -> Result<FileConfig, ConfigError> {
    let table = toml::de::DeTable::parse(text).map_err(|e| toml_error(text, file, &e))?;
    let accepted = role_keys(role);
    let other = match role {
        Role::Server => (Role::Client, ClientOptions::KEYS),
        Role::Client => (Role::Server, ServerOptions::KEYS),
    };
    for key in table.get_ref().keys() {
        let name: &str = key.get_ref();
        if accepted.contains(&name) {
            continue;
        }
        let message = if other.1.contains(&name) {
            format!(
                "`{name}` is a {} setting, but this is the {}",
                other.0.name(),
                role.name()
            )
        } else {
            format!(
                "unknown field `{name}`, expected one of {}",
                accepted
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(ConfigError::At {
            file: file.into(),
            line: line_of(text, key.span().start),
            message,
        });
    }
    fn group<G: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<G, ConfigError> {
        toml::from_str(text).map_err(|e| toml_error(text, file, &e))
    }
    let mut config = FileConfig {
        common: group(text, file)?,
        log: group(text, file)?,
        transport: group(text, file)?,
        ..FileConfig::default()
    };
    match role {
        Role::Server => config.server = group(text, file)?,
        Role::Client => config.client = group(text, file)?,
    }
    Ok(config)
}

/// gap-proxy's README shows its config.json with `#` comments after the values; gap-proxy's
/// own parser would not take them, but a user copying the README would, so they are blanked
/// out (outside strings) before parsing. Line numbers stay the same.
fn strip_hash_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped, mut in_comment) = (false, false, false);
    for c in text.chars() {
        if in_comment {
            if c == '\n' {
                in_comment = false;
                out.push(c);
            }
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if c == '#' {
            in_comment = true;
            continue;
        }
        out.push(c);
    }
    out
}

/// gap-proxy's `{"local", "server", "key"}`, one file for both ends: the client listens for
/// SOCKS5 on `local` and dials `server`; the server listens on every address at `server`'s
/// port (the address clients dial is often not one the server has, behind a cloud's NAT).
fn parse_gap_proxy_json(text: &str, file: &str, role: Role) -> Result<FileConfig, ConfigError> {
    let g: GapProxyConfig = serde_json::from_str(&strip_hash_comments(text)).map_err(|e| {
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
    let mut config = FileConfig {
        common: CommonOptions {
            key: g.key.map(|k| vec![k]),
            ..Default::default()
        },
        ..Default::default()
    };
    match role {
        Role::Client => {
            config.client.socks = g.local;
            config.client.server = g.server;
        }
        Role::Server => {
            let port = g.server.as_deref().map(|s| {
                s.rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .filter(|&p| p != 0)
                    .ok_or_else(|| {
                        let message = format!("`server` must be HOST:PORT, not `{s}`");
                        ConfigError::located(file, key_line(text, "\"server\""), message)
                    })
            });
            if let Some(port) = port.transpose()? {
                config.server.listen = Some(SocketAddr::from(([0, 0, 0, 0], port)).into());
            }
        }
    }
    Ok(config)
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

/// The line on which JSON `key` (quoted) is set, if it can be found.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.trim_start()
                .trim_start_matches('{')
                .trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::{Conns, ForwardProto, Mode, Mtu, WindowSize};

    const SERVER_EXAMPLE: &str = include_str!("../../../server.example.toml");
    const CLIENT_EXAMPLE: &str = include_str!("../../../client.example.toml");

    #[test]
    fn example_files_parse_for_their_roles() {
        let s = FileConfig::parse(SERVER_EXAMPLE, "server.example.toml", Role::Server).unwrap();
        assert_eq!(s.server.listen, Some("0.0.0.0:29900".parse().unwrap()));
        assert_eq!(s.server.allow_private, Some(false));
        assert_eq!(
            s.log.log, None,
            "an uncommented `log` would override RUST_LOG"
        );
        s.transport.build().unwrap();
        let c = FileConfig::parse(CLIENT_EXAMPLE, "client.example.toml", Role::Client).unwrap();
        assert_eq!(c.client.server.as_deref(), Some("vpn.example.com:29900"));
        assert_eq!(
            c.client.socks,
            Some(ListenAddr("127.0.0.1:1080".parse().unwrap()))
        );
        assert_eq!(c.client.conns, Some(Conns(2)));
        let fwd = c.client.forward.clone().unwrap();
        assert_eq!(fwd[0].proto, ForwardProto::Tcp);
        assert_eq!(fwd[1].proto, ForwardProto::Udp);
        assert_eq!(c.transport.mode, Some(Mode::Fast));
        assert_eq!(c.transport.window, Some(WindowSize(32 << 20)));
        assert_eq!(
            c.log.log, None,
            "an uncommented `log` would override RUST_LOG"
        );
        c.transport.build().unwrap();
        // Each is refused by the other role, with the line of the first foreign key.
        let e = FileConfig::parse(SERVER_EXAMPLE, "s", Role::Client).unwrap_err();
        assert!(e.to_string().contains("is a server setting"), "{e}");
        let e = FileConfig::parse(CLIENT_EXAMPLE, "c", Role::Server).unwrap_err();
        assert!(e.to_string().contains("is a client setting"), "{e}");
    }

    /// Every accepted key appears in the example of a role that takes it, and each commented
    /// out example parses once uncommented.
    #[test]
    fn example_files_document_every_key() {
        for (role, text, own) in [
            (Role::Server, SERVER_EXAMPLE, ServerOptions::KEYS),
            (Role::Client, CLIENT_EXAMPLE, ClientOptions::KEYS),
        ] {
            let keys = role_keys(role);
            assert!(keys.len() >= 16 && own.iter().all(|k| keys.contains(k)));
            for key in &keys {
                let shown = text.lines().any(|l| {
                    let l = l.trim_start_matches('#').trim_start();
                    l.strip_prefix(key)
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                });
                assert!(shown, "the {} example does not show `{key}`", role.name());
            }
            for line in text.lines() {
                let Some(setting) = line.strip_prefix("# ") else {
                    continue;
                };
                let Some((key, _)) = setting.split_once(" = ") else {
                    continue;
                };
                if keys.contains(&key.trim()) {
                    let mut toml = format!("{setting}\n");
                    if key.trim() == "brutal_rate" {
                        toml.push_str("congestion = \"brutal\"\n");
                    }
                    let c = FileConfig::parse(&toml, "example", role)
                        .unwrap_or_else(|e| panic!("{setting}: {e}"));
                    c.transport.build().unwrap();
                }
            }
        }
    }

    #[test]
    fn gap_proxy_json_is_accepted_by_both_roles() {
        let text = r#"{"local": "127.0.0.1:1186", "server": "8.8.8.8:2286", "key": "gap-proxy"}"#;
        let c = FileConfig::parse(text, "config.json", Role::Client).unwrap();
        assert_eq!(
            c.client.socks,
            Some(ListenAddr("127.0.0.1:1186".parse().unwrap()))
        );
        assert_eq!(c.client.server.as_deref(), Some("8.8.8.8:2286"));
        assert_eq!(c.common.key, Some(vec!["gap-proxy".to_string()]));
        // Recognised by content too.
        let c = FileConfig::parse(text, "gap.conf", Role::Client).unwrap();
        assert_eq!(c.client.server.as_deref(), Some("8.8.8.8:2286"));
        // The server listens on the server's port, on every address.
        let s = FileConfig::parse(text, "config.json", Role::Server).unwrap();
        assert_eq!(s.server.listen, Some("0.0.0.0:2286".parse().unwrap()));
        assert_eq!(s.common.key, Some(vec!["gap-proxy".to_string()]));
        assert_eq!(s.client, ClientOptions::default());
    }

    #[test]
    fn gap_proxy_readme_comments_are_ignored() {
        // As gap-proxy's README shows it, `#` comments included ("#" in a string stays).
        let text = "{\n\t\"local\":  \"127.0.0.1:1186\", # SOCKS5\n\t\"server\": \
                    \"8.8.8.8:2286\",   # server\n\t\"key\":    \"gap#proxy\"       # key\n}\n";
        let c = parse_str(text, Format::GapProxyJson, Role::Client).unwrap();
        assert_eq!(c.common.key, Some(vec!["gap#proxy".to_string()]));
        assert_eq!(c.client.server.as_deref(), Some("8.8.8.8:2286"));
        let s = parse_str(text, Format::GapProxyJson, Role::Server).unwrap();
        assert_eq!(s.server.listen, Some("0.0.0.0:2286".parse().unwrap()));
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
        let text = "{\n  \"key\": \"k\",\n  \"server\": \"nowhere\"\n}";
        let e = FileConfig::parse(text, "config.json", Role::Server).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config config.json line 3: `server` must be HOST:PORT, not `nowhere`"
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_line() {
        let text = "listen = \"0.0.0.0:1\"\n\nlisten_addr = \"x\"\n";
        let e = FileConfig::parse(text, "s.toml", Role::Server).unwrap_err();
        let ConfigError::At { line, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*line, 3);
        let s = e.to_string();
        assert!(
            s.starts_with("config s.toml line 3: unknown field `listen_addr`, expected one of"),
            "{s}"
        );
        assert!(
            s.contains("`allow_private`") && !s.contains("`socks`"),
            "{s}"
        );
    }

    #[test]
    fn bad_value_names_key_line() {
        let text = "# comment\nmode = \"fast\"\nwindow = \"32Q\"\n";
        let s = FileConfig::parse(text, "c.toml", Role::Client)
            .unwrap_err()
            .to_string();
        assert!(s.starts_with("config c.toml line 3: "), "{s}");
        assert!(s.contains("invalid size `32Q`"), "{s}");

        for (text, line) in [
            ("conns = \"two\"\n", 1),
            ("socks = \"localhost\"\n", 1),
            ("server = \"h:1\"\n\nconns = 65\n", 3),
            ("forward = [\"42189=127.0.0.1:0\"]\n", 1),
        ] {
            let s = FileConfig::parse(text, "c.toml", Role::Client)
                .unwrap_err()
                .to_string();
            assert!(
                s.starts_with(&format!("config c.toml line {line}: ")),
                "{s}"
            );
        }
    }

    #[test]
    fn mtu_errors_name_file_and_line_like_the_flag() {
        for (value, shown) in [("70000", "70000"), ("100", "100"), ("\"big\"", "big")] {
            let text = format!("mode = \"fast\"\nmtu = {value}\n");
            let e = FileConfig::parse(&text, "s.toml", Role::Server).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "config s.toml line 2: mtu must be a number from 1200 to 65507, not `{shown}`"
                )
            );
        }
        let c = FileConfig::parse("mtu = 1400\n", "s.toml", Role::Server).unwrap();
        assert_eq!(c.transport.mtu, Some(Mtu(1400)));
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
        let text = "\n[server]\nlisten = \"0.0.0.0:1\"\n";
        let e = FileConfig::parse(text, "c.toml", Role::Server).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config c.toml line 2: `server` is a client setting, but this is the server"
        );
    }

    #[test]
    fn key_may_be_a_list() {
        let text = "key = [\"first-passphrase\", \"second-passphrase\"]\n";
        let c = FileConfig::parse(text, "s.toml", Role::Server).unwrap();
        assert_eq!(c.common.key.unwrap().len(), 2);
        let c = FileConfig::parse("key = \"one-passphrase\"", "s.toml", Role::Server).unwrap();
        assert_eq!(c.common.key.unwrap(), ["one-passphrase"]);
    }

    #[test]
    fn odd_input_is_an_error_not_a_panic() {
        for text in [
            "",
            "\u{0}",
            "[[",
            "{",
            "{\"key\": 5}",
            "mtu = 1e400",
            "a.b.c = 1",
            "\"\" = 1",
        ] {
            for role in [Role::Server, Role::Client] {
                for format in [Format::Toml, Format::GapProxyJson] {
                    let _ = parse_str(text, format, role);
                }
            }
        }
        assert_eq!(
            parse_str("", Format::Toml, Role::Client).unwrap(),
            FileConfig::default()
        );
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
