//! QTRP's `server.yaml` and `client.yaml`, accepted as they are (format [`Format::QtrpYaml`]).
//!
//! QTRP is a reverse proxy in Go: a client behind NAT publishes local services on ports of a
//! public server. Its two files map onto gaptun's settings key by key:
//!
//! | QTRP key                       | gaptun                                                     |
//! |--------------------------------|------------------------------------------------------------|
//! | `bind` (server)                | `listen` (UDP: gaptun's transport runs over UDP)           |
//! | `auth.tokens` (server)         | `key` (each token a passphrase, as `--key` takes it)       |
//! | `server` (client)              | `server`                                                   |
//! | `token` (client)               | `key`                                                      |
//! | `proxies[]` (client)           | `expose`, `REMOTE_PORT=LOCAL_ADDR`; no SOCKS5 (`no_socks`) |
//! | `brutal.enabled`/`target_mbps` | `congestion = "brutal"`, `brutal_rate` in Mbit/s           |
//! | `crypto: chacha20`             | `cipher = "chacha20-poly1305"`                             |
//! | `crypto: tls`/`none`           | ignored: gaptun always encrypts with its own handshake     |
//! | `transport: net/gnet/quic`     | ignored: gaptun always runs its own transport over UDP     |
//!
//! A QTRP server lets any client with a token publish any port; gaptun needs an allow-list
//! (`expose_ports`), so a QTRP server file allows 1024-65535 (the ports an unprivileged QTRP
//! server could bind) and says so in a warning; `--expose-ports` narrows it.
//!
//! Every setting that changes nothing here is reported by one line at start-up
//! ([`Notice`]), never dropped silently; every value QTRP documents is accepted. Unknown keys
//! and keys of the other role are errors naming the line, as in a TOML file.
//!
//! The YAML crate is `serde_yaml_ng`: `serde_yaml` is archived (unmaintained since 2024), and
//! `serde_yaml_ng` is a maintained fork of it with the same API, in particular error positions
//! (`Error::location`) that let every error name its line. `serde_norway` is a similar fork
//! (either would do). `serde-saphyr` is pure Rust where these two build on `unsafe-libyaml`, but
//! renders multi-line snippet errors and pulls in several more crates, which a one-screen file
//! does not need; the `config` fuzz target covers the YAML path either way.

use std::fmt;
use std::net::SocketAddr;

use gaptun_apps::expose::PortRange;
use serde::Deserialize;
use serde::de::{self, Visitor};

use super::{ConfigError, FileConfig, Notice, NoticeLevel, Role};
use crate::values::{Cipher, Congestion, ExposeArg, ExposePorts};

/// The ports a QTRP server file lets clients expose: it has no allow-list of its own.
pub(super) const DEFAULT_EXPOSE_PORTS: &str = "1024-65535";

/// QTRP's `transport`: which of its own transports it runs. All three have the same meaning
/// here (none): gaptun has one transport.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Transport {
    Net,
    Gnet,
    Quic,
}

/// QTRP's `crypto`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Crypto {
    Tls,
    Chacha20,
    None,
}

/// QTRP's optional `brutal` section (fixed-rate congestion control, after Hysteria).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Brutal {
    enabled: Option<bool>,
    target_mbps: Option<f64>,
}

/// `auth` of `server.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Auth {
    tokens: Option<Vec<String>>,
}

/// `server.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    bind: Option<String>,
    transport: Option<Transport>,
    crypto: Option<Crypto>,
    auth: Option<Auth>,
    brutal: Option<Brutal>,
}

/// `client.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    server: Option<String>,
    transport: Option<Transport>,
    crypto: Option<Crypto>,
    token: Option<String>,
    proxies: Option<Vec<Proxy>>,
    brutal: Option<Brutal>,
}

/// One of `proxies`: a server port (or range) and the local service behind it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawProxy")]
struct Proxy(ExposeArg);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    remote_port: RemotePort,
    local_addr: String,
}

impl TryFrom<RawProxy> for Proxy {
    type Error = String;

    fn try_from(raw: RawProxy) -> Result<Self, String> {
        // gaptun's expose syntax: a range maps onto consecutive local ports from LOCAL's.
        format!("{}={}", raw.remote_port.0, raw.local_addr)
            .parse()
            .map(Proxy)
    }
}

/// `remote_port`: a number (`8080`) or a range written as text (`8000-8005`).
#[derive(Debug)]
struct RemotePort(PortRange);

impl<'de> Deserialize<'de> for RemotePort {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RemotePort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (8080) or a port range (8000-8005)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RemotePort, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RemotePort, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RemotePort, E> {
                v.parse()
                    .map(RemotePort)
                    .map_err(|e| E::custom(format!("invalid remote_port `{v}`: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// The keys each role's file takes, for the "is a client setting" message.
const SERVER_KEYS: &[&str] = &["bind", "transport", "crypto", "auth", "brutal"];
const CLIENT_KEYS: &[&str] = &[
    "server",
    "transport",
    "crypto",
    "token",
    "proxies",
    "brutal",
];

/// A YAML error as a [`ConfigError`] with its line; an unknown top-level key that belongs to
/// the other role's file says so.
fn yaml_error(file: &str, role: Role, e: &serde_yaml_ng::Error) -> ConfigError {
    let full = e.to_string();
    // serde_yaml_ng appends " at line L column C"; the line goes first instead.
    let mut message = full
        .rfind(" at line ")
        .map_or(full.as_str(), |i| &full[..i])
        .to_owned();
    let (other, other_keys) = match role {
        Role::Server => (Role::Client, CLIENT_KEYS),
        Role::Client => (Role::Server, SERVER_KEYS),
    };
    if let Some(name) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        && other_keys.contains(&name)
    {
        message = format!(
            "`{name}` is a QTRP {} setting, but this is the {}",
            other.name(),
            role.name()
        );
    }
    let line = e.location().map(|at| at.line().max(1));
    ConfigError::located(file, line, message)
}

/// An error about top-level `key`, at its line when it can be found.
fn key_error(text: &str, file: &str, key: &str, message: String) -> ConfigError {
    let line = text
        .lines()
        .position(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|i| i + 1);
    ConfigError::located(file, line, message)
}

fn info(text: String) -> Notice {
    Notice {
        level: NoticeLevel::Info,
        text,
    }
}

/// `transport`: reported, never used.
fn transport_notice(t: Transport, listen: Option<&str>) -> Notice {
    let name = match t {
        Transport::Net => "net",
        Transport::Gnet => "gnet",
        Transport::Quic => "quic",
    };
    let over_udp = match listen {
        Some(port) => format!(" (UDP port {port} must be open)"),
        None => String::new(),
    };
    info(format!(
        "QTRP setting `transport: {name}` ignored: gaptun always runs its own reliable \
         encrypted transport over UDP{over_udp}; both ends must be gaptun"
    ))
}

/// `crypto`: `chacha20` picks the cipher, the others are reported.
fn crypto(c: Crypto, config: &mut FileConfig) {
    let text = match c {
        Crypto::Chacha20 => {
            config.transport.cipher = Some(Cipher::ChaCha20Poly1305);
            "QTRP setting `crypto: chacha20` → cipher chacha20-poly1305".to_owned()
        }
        Crypto::Tls => "QTRP setting `crypto: tls` ignored: gaptun always encrypts with its own \
                        handshake (pre-shared key, AES-256-GCM or ChaCha20-Poly1305), not TLS"
            .to_owned(),
        Crypto::None => "QTRP setting `crypto: none` ignored: gaptun always encrypts".to_owned(),
    };
    config.notices.push(info(text));
}

/// `brutal`: enabled with a rate → congestion `brutal` at that rate; disabled → BBR, and a
/// rate given anyway is reported.
fn brutal(b: Brutal, text: &str, file: &str, config: &mut FileConfig) -> Result<(), ConfigError> {
    match (b.enabled.unwrap_or(false), b.target_mbps) {
        (true, Some(mbps)) if mbps.is_finite() && mbps > 0.0 => {
            config.transport.congestion = Some(Congestion::Brutal);
            config.transport.brutal_rate = Some(mbps);
        }
        (true, Some(mbps)) => {
            return Err(key_error(
                text,
                file,
                "brutal",
                format!("brutal.target_mbps must be a positive number of Mbit/s, not {mbps}"),
            ));
        }
        (true, None) => {
            return Err(key_error(
                text,
                file,
                "brutal",
                "brutal.enabled needs brutal.target_mbps (Mbit/s)".to_owned(),
            ));
        }
        (false, Some(mbps)) => config.notices.push(info(format!(
            "QTRP setting `brutal.target_mbps: {mbps}` ignored: brutal is not enabled, \
             congestion control stays bbr"
        ))),
        (false, None) => {}
    }
    Ok(())
}

/// QTRP's `bind`: `IP:PORT`, or Go's `:PORT` for every address.
fn parse_bind(bind: &str) -> Option<SocketAddr> {
    match bind.strip_prefix(':') {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .map(|p| SocketAddr::from(([0, 0, 0, 0], p))),
        None => bind.parse().ok(),
    }
}

/// Parses QTRP YAML for `role`.
pub(super) fn parse(text: &str, file: &str, role: Role) -> Result<FileConfig, ConfigError> {
    let mut config = FileConfig::default();
    // An empty file (or only comments) sets nothing, as an empty TOML file does.
    let empty = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if empty {
        return Ok(config);
    }
    match role {
        Role::Server => {
            let f: ServerFile =
                serde_yaml_ng::from_str(text).map_err(|e| yaml_error(file, role, &e))?;
            let mut port = None;
            if let Some(bind) = f.bind {
                let addr = parse_bind(&bind).ok_or_else(|| {
                    key_error(
                        text,
                        file,
                        "bind",
                        format!("`bind` must be IP:PORT or :PORT, not `{bind}`"),
                    )
                })?;
                port = Some(addr.port().to_string());
                config.server.listen = Some(addr.into());
            }
            if let Some(t) = f.transport {
                config.notices.push(transport_notice(t, port.as_deref()));
            }
            if let Some(c) = f.crypto {
                crypto(c, &mut config);
            }
            if let Some(tokens) = f.auth.and_then(|a| a.tokens) {
                config.common.key = Some(tokens);
            }
            if let Some(b) = f.brutal {
                brutal(b, text, file, &mut config)?;
            }
            let ports: ExposePorts =
                DEFAULT_EXPOSE_PORTS
                    .parse()
                    .map_err(|e: String| ConfigError::Whole {
                        file: file.into(),
                        message: e,
                    })?;
            config.server.expose_ports = Some(ports);
            config.notices.push(Notice {
                level: NoticeLevel::Warn,
                text: format!(
                    "a QTRP server file has no port allow-list: unless --expose-ports says \
                     otherwise, clients with a token may expose any port {DEFAULT_EXPOSE_PORTS}"
                ),
            });
        }
        Role::Client => {
            let f: ClientFile =
                serde_yaml_ng::from_str(text).map_err(|e| yaml_error(file, role, &e))?;
            config.client.server = f.server;
            if let Some(t) = f.transport {
                config.notices.push(transport_notice(t, None));
            }
            if let Some(c) = f.crypto {
                crypto(c, &mut config);
            }
            if let Some(token) = f.token {
                config.common.key = Some(vec![token]);
            }
            config.client.expose = f.proxies.map(|p| p.into_iter().map(|Proxy(e)| e).collect());
            // A QTRP client only publishes services; it has no SOCKS5 server.
            config.client.no_socks = Some(true);
            if let Some(b) = f.brutal {
                brutal(b, text, file, &mut config)?;
            }
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use gaptun_apps::expose::ExposeSpec;
    use gaptun_proto::{CipherSuite, CongestionKind};

    use super::*;
    use crate::config::Format;

    /// The seed's examples, copied verbatim (comments included).
    const SERVER: &str = include_str!("../../tests/fixtures/qtrp/server.yaml");
    const CLIENT: &str = include_str!("../../tests/fixtures/qtrp/client.yaml");
    const SSH_SERVER: &str = include_str!("../../tests/fixtures/qtrp/ssh-server.yaml");
    const SSH_CLIENT: &str = include_str!("../../tests/fixtures/qtrp/ssh-client.yaml");

    fn server(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(text, "server.yaml", Role::Server)
    }

    fn client(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(text, "client.yaml", Role::Client)
    }

    fn exposes(c: &FileConfig) -> Vec<ExposeSpec> {
        c.client
            .expose
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect()
    }

    fn texts(c: &FileConfig) -> Vec<&str> {
        c.notices.iter().map(|n| n.text.as_str()).collect()
    }

    #[test]
    fn yaml_names_are_detected() {
        assert_eq!(Format::detect("server.yaml", "bind: x"), Format::QtrpYaml);
        assert_eq!(Format::detect("/etc/qtrp/c.yml", ""), Format::QtrpYaml);
        assert_eq!(Format::detect("c.toml", "bind: x"), Format::Toml);
    }

    #[test]
    fn the_seed_server_file_maps_to_server_settings() {
        let s = server(SERVER).unwrap();
        assert_eq!(s.server.listen, Some("0.0.0.0:6000".parse().unwrap()));
        assert_eq!(s.common.key, Some(vec!["your-secret-token".to_string()]));
        assert_eq!(s.transport.congestion, Some(Congestion::Brutal));
        assert_eq!(s.transport.brutal_rate, Some(100.0));
        let t = s.transport.build().unwrap();
        assert_eq!(t.congestion, CongestionKind::Brutal { rate: 12_500_000 });
        let ports = s.server.expose_ports.clone().unwrap().0;
        assert!(ports.contains(1024) && ports.contains(8080) && ports.contains(65535));
        assert!(!ports.contains(1023) && !ports.contains(22));
        assert_eq!(s.client, Default::default());
        let notes = texts(&s);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes[0].starts_with("QTRP setting `transport: net` ignored")
                && notes[0].contains("UDP port 6000 must be open"),
            "{notes:?}"
        );
        assert!(notes[1].starts_with("QTRP setting `crypto: tls` ignored: gaptun always encrypts"));
        assert_eq!(s.notices[2].level, NoticeLevel::Warn);
        assert!(notes[2].contains("expose any port 1024-65535"), "{notes:?}");
        // `crypto: tls` leaves the cipher to gaptun.
        assert_eq!(s.transport.cipher, None);
    }

    #[test]
    fn the_seed_client_file_maps_to_exposes() {
        let c = client(CLIENT).unwrap();
        assert_eq!(c.client.server.as_deref(), Some("127.0.0.1:6000"));
        assert_eq!(c.common.key, Some(vec!["your-secret-token".to_string()]));
        assert_eq!(c.client.no_socks, Some(true));
        let e = exposes(&c);
        let shown: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "tcp:8080=127.0.0.1:80",
                "tcp:2222=127.0.0.1:22",
                "tcp:8000-8005=127.0.0.1:8000-8005"
            ]
        );
        assert_eq!(e[2].local_for(8005), Some(("127.0.0.1", 8005)));
        assert_eq!(e[2].local_for(8006), None);
        assert_eq!(c.transport.congestion, Some(Congestion::Brutal));
        assert_eq!(c.transport.brutal_rate, Some(100.0));
        c.transport.build().unwrap();
        assert_eq!(c.server, Default::default());
        let notes = texts(&c);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("QTRP setting `transport: net` ignored"));
        assert!(notes[1].starts_with("QTRP setting `crypto: tls` ignored"));
    }

    #[test]
    fn the_seed_ssh_example_parses() {
        let s = server(SSH_SERVER).unwrap();
        assert_eq!(s.server.listen, Some("0.0.0.0:6000".parse().unwrap()));
        assert_eq!(s.common.key, Some(vec!["my-secret-token-123".to_string()]));
        assert_eq!(s.transport.congestion, None, "no brutal section: bbr");
        let c = client(SSH_CLIENT).unwrap();
        assert_eq!(c.client.server.as_deref(), Some("your-vps-ip:6000"));
        assert_eq!(c.common.key, s.common.key);
        assert_eq!(exposes(&c)[0].to_string(), "tcp:2222=127.0.0.1:22");
    }

    #[test]
    fn every_documented_value_is_accepted() {
        for t in ["net", "gnet", "quic"] {
            for c in ["tls", "chacha20", "none"] {
                let text = format!("transport: {t}\ncrypto: {c}\n");
                let s = server(&format!("bind: :7000\n{text}")).unwrap();
                assert_eq!(s.server.listen, Some("0.0.0.0:7000".parse().unwrap()));
                let notes = texts(&s);
                assert!(notes[0].contains(&format!("`transport: {t}`")), "{notes:?}");
                assert!(notes[1].contains(&format!("`crypto: {c}`")), "{notes:?}");
                let cl = client(&text).unwrap();
                assert_eq!(cl.notices.len(), 2);
                let cipher = cl.transport.build().unwrap().cipher;
                if c == "chacha20" {
                    assert_eq!(cipher, Some(CipherSuite::ChaCha20Poly1305));
                    assert!(notes[1].contains("→ cipher chacha20-poly1305"));
                } else {
                    assert_eq!(cipher, None);
                    assert!(notes[1].contains("ignored"), "{notes:?}");
                }
            }
        }
        // brutal off with a rate: reported, congestion stays the default.
        let c = client("brutal:\n  enabled: false\n  target_mbps: 50\n").unwrap();
        assert_eq!(c.transport.congestion, None);
        assert_eq!(c.transport.brutal_rate, None);
        assert!(texts(&c)[0].contains("`brutal.target_mbps: 50` ignored"));
        c.transport.build().unwrap();
    }

    fn error(text: &str, role: Role) -> (usize, String) {
        match FileConfig::parse(text, "q.yaml", role).unwrap_err() {
            ConfigError::At { line, message, .. } => (line, message),
            e => panic!("no line: {e:?}"),
        }
    }

    #[test]
    fn unknown_and_foreign_keys_name_their_line() {
        let (line, m) = error("bind: 0.0.0.0:1\n\ntokn: x\n", Role::Server);
        assert_eq!(line, 3);
        assert!(
            m.starts_with("unknown field `tokn`, expected one of"),
            "{m}"
        );
        let (line, m) = error(SERVER, Role::Client);
        assert_eq!(
            (line, m.as_str()),
            (1, "`bind` is a QTRP server setting, but this is the client")
        );
        let (line, m) = error(CLIENT, Role::Server);
        assert_eq!(
            (line, m.as_str()),
            (
                1,
                "`server` is a QTRP client setting, but this is the server"
            )
        );
        let (line, m) = error(
            "token: t\nproxies:\n  - remote_port: 1\n    local_adr: x\n",
            Role::Client,
        );
        assert_eq!(line, 4, "{m}");
        assert!(m.contains("unknown field `local_adr`"), "{m}");
        let e = FileConfig::parse("bind: 1\n\nnope: 2\n", "/etc/q/server.yaml", Role::Server)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config /etc/q/server.yaml line 3: unknown field `nope`"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_errors_with_lines() {
        for (text, role, line, needle) in [
            (
                "bind: 0.0.0.0:6000\ntransport: tcp\n",
                Role::Server,
                2,
                "unknown variant `tcp`",
            ),
            ("crypto: aes\n", Role::Client, 1, "unknown variant `aes`"),
            (
                "bind: here\n",
                Role::Server,
                1,
                "`bind` must be IP:PORT or :PORT, not `here`",
            ),
            (
                "proxies:\n  - remote_port: 70000\n    local_addr: 127.0.0.1:1\n",
                Role::Client,
                2,
                "remote_port",
            ),
            (
                "proxies:\n  - remote_port: 9-3\n    local_addr: 127.0.0.1:1\n",
                Role::Client,
                2,
                "remote_port",
            ),
            (
                "\nproxies:\n  - remote_port: 80\n    local_addr: nowhere\n",
                Role::Client,
                3,
                "invalid expose",
            ),
            (
                "brutal:\n  enabled: true\n",
                Role::Client,
                1,
                "needs brutal.target_mbps",
            ),
            (
                "brutal:\n  enabled: true\n  target_mbps: -5\n",
                Role::Server,
                1,
                "positive number",
            ),
            ("auth:\n  tokens: secret\n", Role::Server, 2, "invalid type"),
            ("- a\n- b\n", Role::Client, 1, "invalid type"),
        ] {
            let (l, m) = error(text, role);
            assert!(m.contains(needle), "{text:?}: {m}");
            assert_eq!(l, line, "{text:?}: {m}");
        }
    }

    #[test]
    fn empty_and_odd_yaml_never_panics() {
        assert_eq!(client("").unwrap(), FileConfig::default());
        assert_eq!(client("# only a comment\n").unwrap(), FileConfig::default());
        for text in [
            "{",
            "[[",
            "a: [",
            "\u{0}",
            "&a [*a]",
            "bind: !!binary AAAA",
            ":",
            "---\n---\n",
            "~",
        ] {
            for role in [Role::Server, Role::Client] {
                let _ = parse(text, "f.yaml", role);
            }
        }
    }
}
