//! Final settings of a daemon: command line (and environment) over config file over defaults,
//! key by key and group by group ([`Layer::layered`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::ArgMatches;
use gaptun_apps::expose::{ExposeSpec, PortSet};
use gaptun_proto::{Psk, TransportConfig};

use crate::cli::{ClientArgs, CommonOptions, LogOptions, ServerArgs, UserOptions};
use crate::config::{FileConfig, Notice, Role};
use crate::ctl::default_socket_path;
use crate::keys::{KeySourceError, KeySources};
use crate::layer::Layer;
use crate::values::{CarrierChoice, CarrierKind, CarrierServer, ForwardSpec, LogFormat};

/// The logging choices of the command line and the config file (flag over file); `RUST_LOG`
/// applies only where neither says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileLog {
    pub level: Option<String>,
    pub format: Option<LogFormat>,
    /// Lines about the config file's settings, logged once logging is up.
    pub notices: Vec<Notice>,
}

impl From<LogOptions> for FileLog {
    fn from(l: LogOptions) -> Self {
        Self {
            level: l.log,
            format: l.log_format,
            notices: Vec::new(),
        }
    }
}

/// Who a key belongs to on the server, and that user's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Shown in logs and `ctl stats` in place of the key: the `[users.NAME]` table's name, or
    /// "key N" for the N-th plain key (`key`, `key_file`, `--key`, `GAPTUN_KEY`).
    pub name: Arc<str>,
    /// The user's own `expose_ports`; `None`: the server's.
    pub expose_ports: Option<PortSet>,
    /// The user's own `allow` rules; `None`: the server's.
    pub allow: Option<Vec<String>>,
    /// Mbit/s for all of the user's relay and expose streams together; `None`: no limit.
    pub rate_limit: Option<u32>,
}

/// The HTTP dashboard (`--dashboard`): where it listens and the credentials it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardSettings {
    pub listen: SocketAddr,
    /// Username and password for HTTP basic auth; `None`: open to whoever reaches it.
    pub auth: Option<(String, String)>,
}

/// The dashboard settings of either daemon; a user without a password (or the other way
/// round) is an error, as for SOCKS5.
fn dashboard(common: &CommonOptions) -> Result<Option<DashboardSettings>> {
    let auth = match (&common.dashboard_user, &common.dashboard_password) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (None, None) => None,
        (Some(_), None) => bail!(
            "a dashboard user is set (--dashboard-user or dashboard_user) but no password: set \
             --dashboard-password, GAPTUN_DASHBOARD_PASSWORD or dashboard_password"
        ),
        (None, Some(_)) => {
            bail!("a dashboard password is set but no user: set --dashboard-user or dashboard_user")
        }
    };
    if auth
        .as_ref()
        .is_some_and(|(u, p)| u.is_empty() || p.is_empty() || u.contains(':'))
    {
        bail!("the dashboard user must be non-empty without `:`, and the password non-empty");
    }
    Ok(common.dashboard.map(|listen| DashboardSettings {
        listen: listen.0,
        auth,
    }))
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// One port, or a range (a UDP socket per port).
    pub listen: gaptun_runtime::ListenRange,
    pub keys: Vec<Psk>,
    /// The user of each key, by the key's position in `keys` (what a connection's key index
    /// names).
    pub key_users: Vec<Arc<User>>,
    pub allow: Vec<String>,
    pub allow_private: bool,
    /// Ports clients may expose; empty: exposing is off.
    pub expose_ports: PortSet,
    /// Where exposed ports listen.
    pub expose_bind: IpAddr,
    pub control: PathBuf,
    pub dashboard: Option<DashboardSettings>,
    pub transport: TransportConfig,
    pub carrier: CarrierChoice,
    /// Shards serving the connections (see `ServerOptions::threads`).
    pub threads: usize,
    /// The TLS and QUIC carriers' settings (used when `carrier` includes them).
    pub web: ServerWebCarriers,
}

/// The server's TLS and QUIC carriers (`--tls-listen`, `--quic-listen`, `--tls-cert`,
/// `--tls-key`, `--decoy`).
#[derive(Debug, Clone)]
pub struct ServerWebCarriers {
    pub tls_listen: SocketAddr,
    pub quic_listen: SocketAddr,
    /// Certificate and key files; `None`: self-signed, kept in the state directory.
    pub cert: Option<(PathBuf, PathBuf)>,
    pub decoy: Option<String>,
}

/// The client's TLS and QUIC carrier settings (`--sni`, `--tls-connections`, and for
/// `--carrier auto` `--tls-server`, `--quic-server`).
#[derive(Debug, Clone)]
pub struct ClientWebCarriers {
    pub sni: String,
    pub tls_connections: usize,
    /// `--carrier auto`: the server's TLS carrier, `HOST:PORT` or `PORT`; `None`: port 443
    /// (by offer: the offered port).
    pub tls_server: Option<CarrierServer>,
    /// `--carrier auto`: the server's QUIC carrier, as `tls_server`.
    pub quic_server: Option<CarrierServer>,
}

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub server: String,
    pub key: Psk,
    pub socks: Option<SocketAddr>,
    /// SOCKS5 username and password, if clients must authenticate.
    pub socks_auth: Option<(String, String)>,
    pub forwards: Vec<ForwardSpec>,
    /// Services published on the server's ports.
    pub exposes: Vec<ExposeSpec>,
    pub conns: usize,
    /// Port hopping interval; `None`: off.
    pub hop_interval: Option<std::time::Duration>,
    /// `--carrier auto`'s carriers, most preferred first; `None`: the default list. Without
    /// `--carrier`: the offered carriers that may be used, in this order.
    pub carriers: Option<crate::values::CarrierList>,
    pub control: PathBuf,
    pub dashboard: Option<DashboardSettings>,
    pub transport: TransportConfig,
    pub carrier: CarrierChoice,
    pub web: ClientWebCarriers,
}

fn load_file(path: Option<&PathBuf>, role: Role) -> Result<FileConfig> {
    Ok(match path {
        Some(p) => FileConfig::load(p, role)?,
        None => FileConfig::default(),
    })
}

/// The key sources: the command line's and the file's `key`/`key_file` stay apart, because
/// [`KeySources`] ranks them around `GAPTUN_KEY`.
fn key_sources(
    m: &ArgMatches,
    file: &CommonOptions,
    env_key: Option<String>,
) -> Result<KeySources> {
    let (given, _) = CommonOptions::from_matches(m)?;
    Ok(KeySources {
        cli_keys: given.key.unwrap_or_default(),
        cli_key_file: given.key_file,
        env_key,
        config_keys: file.key.clone().unwrap_or_default(),
        config_key_file: file.key_file.clone(),
    })
}

/// Server settings from its parsed flags `m` (the `server` subcommand's matches, which tell
/// given values from defaults), its config file and `env_key` (the `GAPTUN_KEY` value).
pub fn server(
    args: &ServerArgs,
    m: &ArgMatches,
    env_key: Option<String>,
) -> Result<(ServerSettings, FileLog)> {
    let file = load_file(args.config.as_ref(), Role::Server)?;
    // Cheap checks first: key stretching (argon2) takes a moment.
    let transport = Layer::layered(m, file.transport)?.build()?;
    let own = Layer::layered(m, file.server)?;
    let common = Layer::layered(m, file.common.clone())?;
    let log = Layer::layered(m, file.log)?;
    let users = own.users.clone().unwrap_or_default();
    let plain = match key_sources(m, &file.common, env_key)?.load() {
        // Named users alone are enough.
        Err(KeySourceError::Missing) if !users.is_empty() => Vec::new(),
        other => other?,
    };
    let (keys, key_users) = server_keys(plain, &users)?;
    let settings = ServerSettings {
        listen: own.listen.context("no listen address")?.0,
        keys,
        key_users,
        allow: own.allow.unwrap_or_default(),
        allow_private: own.allow_private.unwrap_or(false),
        expose_ports: own.expose_ports.map(|p| p.0).unwrap_or_default(),
        expose_bind: own
            .expose_bind
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        dashboard: dashboard(&common)?,
        control: common
            .control
            .unwrap_or_else(|| default_socket_path(Role::Server)),
        transport,
        carrier: common.carrier.unwrap_or(CarrierChoice::Udp),
        threads: server_threads(own.threads)?,
        web: ServerWebCarriers {
            tls_listen: own.tls_listen.context("no TLS listen address")?,
            quic_listen: own.quic_listen.context("no QUIC listen address")?,
            cert: match (own.tls_cert, own.tls_key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => bail!("--tls-cert and --tls-key (tls_cert, tls_key) go together"),
            },
            decoy: own.decoy,
        },
    };
    let mut log = FileLog::from(log);
    log.notices = file.notices;
    Ok((settings, log))
}

/// The server's shard count: as given (the command line checks its range, a config file
/// does not), or one per core.
fn server_threads(given: Option<u16>) -> Result<usize> {
    match given {
        Some(n) if (1..=256).contains(&n) => Ok(usize::from(n)),
        Some(n) => bail!("threads = {n}: between 1 and 256 are possible"),
        None => Ok(std::thread::available_parallelism().map_or(1, usize::from)),
    }
}

/// Longest user name: it appears in every log line about the user's connections.
const MAX_USER_NAME: usize = 64;

/// The server's keys in the endpoint's order, each with its user: the plain keys first ("key
/// 1", "key 2", … with the server-wide limits), then each named user's keys. A key given twice
/// is an error: the endpoint would always match the first, so the second user's limits would
/// silently never apply.
fn server_keys(
    plain: Vec<Psk>,
    users: &std::collections::BTreeMap<String, UserOptions>,
) -> Result<(Vec<Psk>, Vec<Arc<User>>)> {
    let mut keys = Vec::new();
    let mut owners: Vec<Arc<User>> = Vec::new();
    for (i, key) in plain.into_iter().enumerate() {
        keys.push(key);
        owners.push(Arc::new(User {
            name: format!("key {}", i + 1).into(),
            expose_ports: None,
            allow: None,
            rate_limit: None,
        }));
    }
    for (name, options) in users {
        let valid = !name.is_empty()
            && name.len() <= MAX_USER_NAME
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
        if !valid {
            bail!(
                "user name `{}` is not allowed: use 1 to {MAX_USER_NAME} letters, digits, \
                 `-`, `_`, `.` or `@`",
                name.escape_debug()
            );
        }
        if options.key.is_some() && options.key_file.is_some() {
            bail!("user {name}: set `key` or `key_file`, not both");
        }
        let sources = KeySources {
            config_keys: options.key.clone().unwrap_or_default(),
            config_key_file: options.key_file.clone(),
            ..KeySources::default()
        };
        let user_keys = match sources.load() {
            Err(KeySourceError::Missing) => {
                bail!("user {name} has no key: set `key` or `key_file`")
            }
            other => other.with_context(|| format!("user {name}"))?,
        };
        if options.rate_limit == Some(0) {
            bail!("user {name}: rate_limit must be at least 1 (Mbit/s); leave it out for none");
        }
        let user = Arc::new(User {
            name: name.as_str().into(),
            expose_ports: options.expose_ports.as_ref().map(|p| p.0.clone()),
            allow: options.allow.clone(),
            rate_limit: options.rate_limit,
        });
        for key in user_keys {
            if let Some(i) = keys.iter().position(|k| *k == key) {
                let other = owners.get(i).map_or("another user", |u| &u.name);
                bail!("user {name} has the same key as {other}: each user needs its own key");
            }
            keys.push(key);
            owners.push(Arc::clone(&user));
        }
    }
    if keys.is_empty() {
        return Err(KeySourceError::Missing.into());
    }
    Ok((keys, owners))
}

/// Client settings from its parsed flags `m` (the `client` subcommand's matches), its config
/// file and `env_key` (the `GAPTUN_KEY` value).
pub fn client(
    args: &ClientArgs,
    m: &ArgMatches,
    env_key: Option<String>,
) -> Result<(ClientSettings, FileLog)> {
    let file = load_file(args.config.as_ref(), Role::Client)?;
    let file_sets_socks = file.client.socks.is_some() || file.client.no_socks.is_some();
    let own = Layer::layered(m, file.client)?;
    let Some(server) = own.server else {
        bail!("no server given: use --server HOST:PORT or `server` in the config file");
    };
    server
        .parse::<gaptun_runtime::ServerTarget>()
        .map_err(|e| anyhow::anyhow!("invalid server `{server}`: {e}"))?;
    let transport = Layer::layered(m, file.transport)?.build()?;
    let common = Layer::layered(m, file.common.clone())?;
    let log = Layer::layered(m, file.log)?;
    let socks_auth = match (own.socks_user, own.socks_password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (Some(_), None) => bail!(
            "a SOCKS5 user is set (--socks-user or socks_user) but no password: set \
             --socks-password, GAPTUN_SOCKS_PASSWORD or socks_password"
        ),
        (None, Some(_)) => {
            bail!("a SOCKS5 password is set but no user: set --socks-user or socks_user")
        }
    };
    let keys = key_sources(m, &file.common, env_key)?.load()?;
    let Some(key) = keys.into_iter().next() else {
        bail!("no key given");
    };
    // `--socks` on the command line wins over `no_socks = true` in the file.
    let (given, _) = crate::cli::ClientOptions::from_matches(m)?;
    let exposes: Vec<ExposeSpec> = own
        .expose
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.0)
        .collect();
    let forwards = own.forward.unwrap_or_default();
    // A client that only exposes needs no SOCKS5 server: `--no-socks` is implied unless
    // SOCKS5 is asked for on the command line or in the file.
    let only_exposes = !exposes.is_empty() && forwards.is_empty() && !file_sets_socks;
    let no_socks = (own.no_socks.unwrap_or(false) || only_exposes) && given.socks.is_none();
    let socks = if no_socks {
        None
    } else {
        Some(own.socks.context("no SOCKS5 address")?.0)
    };
    // Named nowhere: UDP, and what the server offers (see `CarrierChoice::ByOffer`).
    let carrier = common.carrier.unwrap_or(CarrierChoice::ByOffer);
    let adaptive = matches!(carrier, CarrierChoice::Auto | CarrierChoice::ByOffer);
    if own.carriers.is_some() && !adaptive {
        bail!("--carriers only applies with --carrier auto (the carrier is {carrier:?})");
    }
    if let Some(list) = &own.carriers
        && !list
            .0
            .iter()
            .any(|k| matches!(k, CarrierKind::Udp | CarrierKind::Faketcp))
    {
        bail!(
            "--carriers needs udp or faketcp besides tls and quic (the connection starts on \
             them while TLS and QUIC connect); for TLS or QUIC alone use --carrier tls or quic"
        );
    }
    if (own.tls_server.is_some() || own.quic_server.is_some()) && !adaptive {
        bail!(
            "--tls-server and --quic-server only apply with --carrier auto (with --carrier tls \
             or quic, --server names that carrier's port)"
        );
    }
    let settings = ClientSettings {
        server,
        key,
        socks,
        socks_auth,
        forwards,
        exposes,
        conns: own.conns.map_or(1, |c| usize::from(c.0)),
        hop_interval: own
            .hop_interval
            .map(|h| std::time::Duration::from_secs(u64::from(h.0))),
        carriers: own.carriers,
        dashboard: dashboard(&common)?,
        control: common
            .control
            .unwrap_or_else(|| default_socket_path(Role::Client)),
        transport,
        carrier,
        web: ClientWebCarriers {
            sni: own
                .sni
                .unwrap_or_else(|| gaptun_carriers::DEFAULT_SNI.to_owned()),
            tls_connections: own.tls_connections.map_or(2, |c| usize::from(c.0)),
            tls_server: own.tls_server,
            quic_server: own.quic_server,
        },
    };
    let mut log = FileLog::from(log);
    log.notices = file.notices;
    Ok((settings, log))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::cli::{Cli, Command};

    fn client_args(args: &[&str]) -> (ClientArgs, ArgMatches) {
        let (cli, m) =
            Cli::try_parse_with_matches(["gaptun", "client"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Client(c) => (c, m),
            _ => panic!(),
        }
    }

    fn server_args(args: &[&str]) -> (ServerArgs, ArgMatches) {
        let (cli, m) =
            Cli::try_parse_with_matches(["gaptun", "server"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Server(s) => (s, m),
            _ => panic!(),
        }
    }

    fn client_of(args: &[&str]) -> Result<(ClientSettings, FileLog)> {
        let (a, m) = client_args(args);
        client(&a, &m, None)
    }

    fn server_of(args: &[&str]) -> Result<(ServerSettings, FileLog)> {
        let (a, m) = server_args(args);
        server(&a, &m, None)
    }

    /// A generated key, so that tests can load it quickly (a passphrase takes argon2).
    const KEY: &str = "gt1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gaptun-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    #[test]
    fn missing_server_is_a_clear_error() {
        let e = client_of(&["--key", "abcdefghijk"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no server given: use --server HOST:PORT or `server` in the config file"
        );
    }

    #[test]
    fn invalid_server_is_rejected() {
        let e = client_of(&["--server", "nohostport"]).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid server `nohostport`"),
            "{e}"
        );
    }

    #[test]
    fn carrier_auto_takes_an_ordered_list_and_the_list_needs_auto() {
        use crate::values::{CarrierKind, CarrierList};
        let (c, _) = client_of(&[
            "--server",
            "h:1",
            "--key",
            KEY,
            "--carrier",
            "auto",
            "--carriers",
            "faketcp,udp",
        ])
        .unwrap();
        assert_eq!(c.carrier, CarrierChoice::Auto);
        assert_eq!(
            c.carriers,
            Some(CarrierList(vec![CarrierKind::Faketcp, CarrierKind::Udp]))
        );
        let (c, _) = client_of(&["--server", "h:1", "--key", KEY, "--carrier", "auto"]).unwrap();
        assert_eq!(c.carriers, None, "the default list");
        assert_eq!(c.web.tls_server, None, "port 443 of the server's host");
        let (c, _) = client_of(&[
            "--server",
            "h:1",
            "--key",
            KEY,
            "--carrier",
            "auto",
            "--carriers",
            "udp,tls",
            "--tls-server",
            "8443",
        ])
        .unwrap();
        assert_eq!(c.web.tls_server, Some(CarrierServer::Port(8443)));
        let e = client_of(&[
            "--server",
            "h:1",
            "--key",
            KEY,
            "--carrier",
            "auto",
            "--carriers",
            "quic,tls",
        ])
        .unwrap_err();
        assert!(
            e.to_string().contains("--carriers needs udp or faketcp"),
            "{e}"
        );
        let udp = ["--server", "h:1", "--key", KEY, "--carrier", "udp"];
        let e = client_of(&[&udp[..], &["--tls-server", "8443"]].concat()).unwrap_err();
        assert!(
            e.to_string().contains("only apply with --carrier auto"),
            "{e}"
        );
        let e = client_of(&[&udp[..], &["--carriers", "udp"]].concat()).unwrap_err();
        assert!(
            e.to_string()
                .contains("--carriers only applies with --carrier auto"),
            "{e}"
        );
    }

    #[test]
    fn without_a_carrier_a_client_goes_by_the_offer_and_a_server_uses_udp() {
        let (c, _) = client_of(&["--server", "h:1", "--key", KEY]).unwrap();
        assert_eq!(c.carrier, CarrierChoice::ByOffer);
        assert_eq!(c.web.tls_server, None, "the offered port");
        // An explicit udp stays udp, on the command line and in the file.
        let (c, _) = client_of(&["--server", "h:1", "--key", KEY, "--carrier", "udp"]).unwrap();
        assert_eq!(c.carrier, CarrierChoice::Udp);
        let file = temp_file("carrier-udp.toml", "server = \"h:1\"\ncarrier = \"udp\"\n");
        let (c, _) = client_of(&["--key", KEY, "--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(c.carrier, CarrierChoice::Udp);
        // The command line wins over the file.
        let (c, _) = client_of(&[
            "--key",
            KEY,
            "--config",
            file.to_str().unwrap(),
            "--carrier",
            "auto",
        ])
        .unwrap();
        assert_eq!(c.carrier, CarrierChoice::Auto);
        // A file without `carrier`: by offer; the offer's TLS port yields to --tls-server, and
        // --carriers limits what may be used.
        let file = temp_file("no-carrier.toml", "server = \"h:1\"\n");
        let (c, _) = client_of(&[
            "--key",
            KEY,
            "--config",
            file.to_str().unwrap(),
            "--tls-server",
            "8443",
            "--carriers",
            "udp,tls",
        ])
        .unwrap();
        assert_eq!(c.carrier, CarrierChoice::ByOffer);
        assert_eq!(c.web.tls_server, Some(CarrierServer::Port(8443)));
        // "by offer" is no value of the flag.
        let parsed = Cli::try_parse_with_matches([
            "gaptun",
            "client",
            "--server",
            "h:1",
            "--key",
            KEY,
            "--carrier",
            "by-offer",
        ]);
        assert!(parsed.is_err(), "by-offer parsed as a carrier");
        // A server without --carrier: UDP.
        let (s, _) = server_of(&["--listen", "0.0.0.0:4000", "--key", KEY]).unwrap();
        assert_eq!(s.carrier, CarrierChoice::Udp);
    }

    #[test]
    fn port_ranges_and_hopping_from_flags_and_file() {
        let (c, _) = client_of(&[
            "--server",
            "vpn.example.com:10001-10010",
            "--key",
            KEY,
            "--hop-interval",
            "5",
        ])
        .unwrap();
        assert_eq!(c.server, "vpn.example.com:10001-10010");
        assert_eq!(c.hop_interval, Some(std::time::Duration::from_secs(5)));
        let (c, _) = client_of(&["--server", "h:1", "--key", KEY]).unwrap();
        assert_eq!(c.hop_interval, None, "off by default");
        let e = client_of(&["--server", "h:10010-10001", "--key", KEY]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid server `h:10010-10001`: port range `10010-10001` is reversed: write the \
             lower port first"
        );
        let e = client_of(&["--server", "h:1-", "--key", KEY]).unwrap_err();
        assert!(e.to_string().contains("invalid port ``"), "{e}");
        let (s, _) = server_of(&["--key", KEY, "--listen", "0.0.0.0:10001-10010"]).unwrap();
        assert_eq!(s.listen.addrs().len(), 10);

        let path = temp_file(
            "range.toml",
            "listen = \"127.0.0.1:7000-7002\"\nkey = \"abcdefghijklmnop\"\n",
        );
        let (s, _) = server_of(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:7000-7002");
        let path = temp_file("reversed.toml", "listen = \"127.0.0.1:7002-7000\"\n");
        let e = server_of(&["--config", path.to_str().unwrap(), "--key", KEY]).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("is reversed"), "{text}");
        let path = temp_file("hop.toml", "server = \"h:10001-10003\"\nhop_interval = 2\n");
        let (c, _) = client_of(&["--config", path.to_str().unwrap(), "--key", KEY]).unwrap();
        assert_eq!(c.hop_interval, Some(std::time::Duration::from_secs(2)));
    }

    #[test]
    fn missing_key_is_a_clear_error() {
        let e = client_of(&["--server", "h:1"]).unwrap_err();
        assert!(e.to_string().starts_with("no key given"), "{e}");
        let e = server_of(&[]).unwrap_err();
        assert!(e.to_string().starts_with("no key given"), "{e}");
    }

    #[test]
    fn carrier_server_addresses_are_checked_when_read() {
        let file = |name: &str, value: &str| {
            let text = format!("server = \"h:1\"\ncarrier = \"auto\"\nquic_server = \"{value}\"\n");
            temp_file(name, &text)
        };
        let path = file("web-bad.toml", "h:0");
        let e = client_of(&["--config", path.to_str().unwrap(), "--key", KEY]).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("web-bad.toml line 3"), "{e}");
        assert!(
            e.contains("invalid carrier address `h:0`: invalid port `0`"),
            "{e}"
        );
        let path = file("web-ok.toml", "quic.example:8443");
        let (c, _) = client_of(&["--config", path.to_str().unwrap(), "--key", KEY]).unwrap();
        let host = CarrierServer::HostPort("quic.example:8443".to_owned());
        assert_eq!(c.web.quic_server, Some(host));
        let e = Cli::try_parse_with_matches(["gaptun", "client", "--tls-server", "tls.example"])
            .unwrap_err();
        assert!(e.to_string().contains("missing `:port`"), "{e}");
    }

    #[test]
    fn config_errors_surface_with_line() {
        let path = temp_file("bad.toml", "server = \"h:1\"\nsocks = 5\n");
        let e = client_of(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("bad.toml line 2: "), "{e}");
    }

    #[test]
    fn transport_errors_surface() {
        let e = client_of(&[
            "--server",
            "h:1",
            "--congestion",
            "brutal",
            "--key-file",
            "/nonexistent",
        ])
        .unwrap_err();
        // The transport is checked before the key is read.
        assert_eq!(
            e.to_string(),
            "congestion `brutal` needs a rate: set brutal-rate (Mbit/s)"
        );
        let e = client_of(&["--server", "h:1", "--key-file", "/nonexistent"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read key file /nonexistent: "),
            "{e}"
        );
    }

    #[test]
    fn dashboard_needs_user_and_password_together() {
        let (c, _) = client_of(&["--server", "h:1", "--key", KEY]).unwrap();
        assert_eq!(c.dashboard, None, "off by default");
        let (c, _) = client_of(&["--server", "h:1", "--key", KEY, "--dashboard", "7500"]).unwrap();
        assert_eq!(
            c.dashboard,
            Some(DashboardSettings {
                listen: "127.0.0.1:7500".parse().unwrap(),
                auth: None
            })
        );
        let path = temp_file(
            "dash.toml",
            "dashboard = \"0.0.0.0:7500\"\ndashboard_password = \"pw\"\n",
        );
        let (s, _) = server_of(&[
            "--key",
            KEY,
            "--config",
            path.to_str().unwrap(),
            "--dashboard-user",
            "admin",
        ])
        .unwrap();
        let d = s.dashboard.unwrap();
        assert_eq!(d.listen, "0.0.0.0:7500".parse().unwrap());
        assert_eq!(d.auth, Some(("admin".into(), "pw".into())));
        let e = server_of(&[
            "--key",
            KEY,
            "--dashboard",
            "7500",
            "--dashboard-user",
            "admin",
        ])
        .unwrap_err();
        assert!(e.to_string().starts_with("a dashboard user is set"), "{e}");
        let e = server_of(&["--key", KEY, "--dashboard-password", "pw"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("a dashboard password is set but no user"),
            "{e}"
        );
    }

    #[test]
    fn defaults_apply_without_file_or_flags() {
        let (c, log) = client_of(&["--server", "h:1", "--key", KEY]).unwrap();
        assert_eq!(c.socks, Some("127.0.0.1:1080".parse().unwrap()));
        assert_eq!(c.conns, 1);
        assert_eq!(c.socks_auth, None);
        assert!(c.forwards.is_empty());
        assert_eq!(c.transport.max_udp_payload, 1472);
        assert_eq!(
            log,
            FileLog {
                level: None,
                format: Some(LogFormat::Text),
                notices: Vec::new(),
            }
        );
        let (s, _) = server_of(&["--key", KEY]).unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:29900");
        assert!(!s.allow_private);
        assert!(s.allow.is_empty());
    }

    /// Bug 5: the password in the file and the user on the command line make one pair.
    #[test]
    fn file_and_flags_merge_for_every_key() {
        let path = temp_file(
            "merge.toml",
            "server = \"h:1\"\nsocks_password = \"pw-from-file\"\nconns = 3\nmtu = 1300\n\
             mode = \"fast2\"\nsocks = \"127.0.0.1:2000\"\nlog = \"warn\"\n",
        );
        let p = path.to_str().unwrap();
        let (c, log) = client_of(&[
            "--config",
            p,
            "--key",
            KEY,
            "--socks-user",
            "alice",
            "--mtu",
            "1400",
            "--log",
            "debug",
        ])
        .unwrap();
        assert_eq!(
            c.socks_auth,
            Some(("alice".to_string(), "pw-from-file".to_string()))
        );
        // From the file where no flag says otherwise, from the flag where one does.
        assert_eq!(c.conns, 3);
        assert_eq!(c.socks, Some("127.0.0.1:2000".parse().unwrap()));
        assert_eq!(c.transport.max_udp_payload, 1400);
        assert_eq!(c.transport.min_rto, std::time::Duration::from_millis(20));
        assert_eq!(log.level.as_deref(), Some("debug"));
        // A flag's default does not hide the file's value.
        let (c, log) = client_of(&["--config", p, "--key", KEY, "--socks-user", "u"]).unwrap();
        assert_eq!(c.transport.max_udp_payload, 1300);
        assert_eq!(log.level.as_deref(), Some("warn"));

        let e = client_of(&["--server", "h:1", "--key", KEY, "--socks-user", "u"]).unwrap_err();
        assert!(e.to_string().contains("no password"), "{e}");
    }

    #[test]
    fn server_file_and_flags_merge() {
        let path = temp_file(
            "server.toml",
            "listen = \"127.0.0.1:4000\"\nallow = [\"10.0.0.0/8\"]\nallow_private = true\n",
        );
        let p = path.to_str().unwrap();
        let (s, _) = server_of(&["--config", p, "--key", KEY]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:4000");
        assert_eq!(s.allow, ["10.0.0.0/8"]);
        assert!(s.allow_private);
        let (s, _) = server_of(&[
            "--config",
            p,
            "--key",
            KEY,
            "--allow",
            "127.0.0.1:22",
            "--allow-private=false",
            "--listen",
            "127.0.0.1:5000",
        ])
        .unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(s.allow, ["127.0.0.1:22"]);
        assert!(!s.allow_private);
    }

    #[test]
    fn socks_flag_beats_no_socks_in_the_file() {
        let path = temp_file("nosocks.toml", "server = \"h:1\"\nno_socks = true\n");
        let p = path.to_str().unwrap();
        let (c, _) = client_of(&["--config", p, "--key", KEY]).unwrap();
        assert_eq!(c.socks, None);
        let (c, _) = client_of(&["--config", p, "--key", KEY, "--socks", "1081"]).unwrap();
        assert_eq!(c.socks, Some("127.0.0.1:1081".parse().unwrap()));
        let (c, _) = client_of(&["--server", "h:1", "--key", KEY, "--no-socks"]).unwrap();
        assert_eq!(c.socks, None);
    }

    #[test]
    fn expose_flags_and_keys() {
        let base = ["--server", "h:1", "--key", KEY];
        let with = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            client_of(&args).map(|(c, _)| c)
        };
        // Only --expose: no SOCKS5 server.
        let c = with(&[
            "--expose",
            "2222=127.0.0.1:22",
            "--expose",
            "udp:5353=[::1]:53",
        ])
        .unwrap();
        assert_eq!(c.exposes.len(), 2);
        assert_eq!(c.exposes[0].to_string(), "tcp:2222=127.0.0.1:22");
        assert_eq!(c.socks, None);
        // Asked for SOCKS5 as well: it stays.
        let c = with(&["--expose", "2222=127.0.0.1:22", "--socks", "1081"]).unwrap();
        assert_eq!(c.socks, Some("127.0.0.1:1081".parse().unwrap()));
        let args = [
            "gaptun",
            "client",
            "--expose",
            "8000-8005=127.0.0.1:9000-9001",
        ];
        let err = Cli::try_parse_with_matches(args).unwrap_err().to_string();
        assert!(err.contains("has 6 ports but local range has 2"), "{err}");

        let path = temp_file(
            "expose.toml",
            "server = \"h:1\"\nexpose = [\"8000-8001=127.0.0.1:9000,proxy=v2\"]\n",
        );
        let (c, _) = client_of(&["--config", path.to_str().unwrap(), "--key", KEY]).unwrap();
        assert_eq!(c.exposes[0].local_for(8001), Some(("127.0.0.1", 9001)));
        assert_eq!(c.socks, None);

        let (s, _) = server_of(&["--key", KEY]).unwrap();
        assert!(s.expose_ports.is_empty());
        assert_eq!(s.expose_bind.to_string(), "0.0.0.0");
        let (s, _) = server_of(&[
            "--key",
            KEY,
            "--expose-ports",
            "8000-9000,2222",
            "--expose-bind",
            "::",
        ])
        .unwrap();
        assert!(s.expose_ports.contains(2222) && s.expose_ports.contains(8500));
        assert!(!s.expose_ports.contains(22));
        assert_eq!(s.expose_bind.to_string(), "::");
        let path = temp_file("expose-server.toml", "expose_ports = \"80,x\"\n");
        assert!(server_of(&["--config", path.to_str().unwrap(), "--key", KEY]).is_err());
    }

    /// QTRP's seed files through the whole settings path: tokens become keys (passphrases),
    /// proxies exposes without SOCKS5, brutal the controller, and flags override the file.
    #[test]
    fn qtrp_yaml_files_become_settings() {
        let fixture = |name: &str| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/qtrp")
                .join(name)
        };
        let server_yaml = fixture("server.yaml");
        let (s, log) = server_of(&["--config", server_yaml.to_str().unwrap()]).unwrap();
        assert_eq!(s.keys.len(), 1);
        assert_eq!(s.listen.to_string(), "0.0.0.0:6000");
        assert!(s.expose_ports.contains(1024) && !s.expose_ports.contains(80));
        assert_eq!(
            s.transport.congestion,
            gaptun_proto::CongestionKind::Brutal { rate: 12_500_000 }
        );
        assert_eq!(log.notices.len(), 3);
        let (s, _) = server_of(&[
            "--config",
            server_yaml.to_str().unwrap(),
            "--expose-ports",
            "2222",
            "--key",
            KEY,
        ])
        .unwrap();
        assert!(s.expose_ports.contains(2222) && !s.expose_ports.contains(8080));
        assert_eq!(s.keys.len(), 1, "--key replaces the file's tokens");

        let client_yaml = fixture("client.yaml");
        let (c, log) = client_of(&["--config", client_yaml.to_str().unwrap()]).unwrap();
        assert_eq!(c.server, "127.0.0.1:6000");
        assert_eq!(c.socks, None);
        assert_eq!(c.exposes.len(), 3);
        assert_eq!(c.exposes[2].local_for(8003), Some(("127.0.0.1", 8003)));
        assert_eq!(log.notices.len(), 2);
        let (c, _) = client_of(&[
            "--config",
            client_yaml.to_str().unwrap(),
            "--socks",
            "127.0.0.1:1090",
        ])
        .unwrap();
        assert_eq!(c.socks, Some("127.0.0.1:1090".parse().unwrap()));
    }

    /// A second generated key (the same rule as [`KEY`]).
    const KEY2: &str = "gt1:AQECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    const KEY3: &str = "gt1:AgECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    #[test]
    fn named_users_with_their_own_limits() {
        let text = format!(
            "key = \"{KEY}\"\nexpose_ports = \"7000\"\nallow = [\"10.0.0.0/8\"]\n\
             [users.alice]\nkey = \"{KEY2}\"\nexpose_ports = \"9000-9001\"\nrate_limit = 20\n\
             [users.bob]\nkey = [\"{KEY3}\"]\nallow = [\"127.0.0.1:22\"]\n"
        );
        let path = temp_file("users.toml", &text);
        let (s, _) = server_of(&["--config", path.to_str().unwrap()]).unwrap();
        let names: Vec<&str> = s.key_users.iter().map(|u| &*u.name).collect();
        assert_eq!(names, ["key 1", "alice", "bob"]);
        assert_eq!(s.keys.len(), 3);
        assert_eq!(s.keys[1], Psk::parse(KEY2).unwrap());
        let alice = &s.key_users[1];
        assert!(alice.expose_ports.as_ref().unwrap().contains(9001));
        assert_eq!(alice.allow, None);
        assert_eq!(alice.rate_limit, Some(20));
        let bob = &s.key_users[2];
        assert_eq!(bob.expose_ports, None);
        assert_eq!(bob.rate_limit, None);
        assert_eq!(
            bob.allow.as_deref(),
            Some(&["127.0.0.1:22".to_string()][..])
        );
        // The server-wide rules stay for the plain key.
        assert!(s.expose_ports.contains(7000));

        // Named users alone are enough; a plain key on the command line still comes first.
        let text = format!("[users.carol]\nkey = \"{KEY2}\"\n");
        let path = temp_file("users-only.toml", &text);
        let (s, _) = server_of(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(&*s.key_users[0].name, "carol");
        let (s, _) = server_of(&["--config", path.to_str().unwrap(), "--key", KEY]).unwrap();
        let names: Vec<&str> = s.key_users.iter().map(|u| &*u.name).collect();
        assert_eq!(names, ["key 1", "carol"]);
    }

    #[test]
    fn bad_users_are_clear_errors_without_the_key() {
        let cases = [
            (
                format!("[users.alice]\nkey = \"{KEY}\"\n[users.bob]\nkey = \"{KEY}\"\n"),
                "user bob has the same key as alice: each user needs its own key".to_string(),
            ),
            (
                "[users.alice]\nexpose_ports = \"80\"\n".to_string(),
                "user alice has no key: set `key` or `key_file`".to_string(),
            ),
            (
                format!("[users.\"a b\"]\nkey = \"{KEY}\"\n"),
                "user name `a b` is not allowed: use 1 to 64 letters, digits, `-`, `_`, `.` or `@`"
                    .to_string(),
            ),
            (
                "[users.alice]\nkey = \"tiny7\"\n".to_string(),
                "user alice".to_string(),
            ),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let path = temp_file(&format!("bad-users-{i}.toml"), text);
            let e = server_of(&["--config", path.to_str().unwrap()]).unwrap_err();
            let shown = format!("{e:#}");
            assert!(shown.starts_with(want.as_str()), "{shown}");
            assert!(!shown.contains(KEY) && !shown.contains("tiny7"), "{shown}");
        }
        // Unknown keys inside a user's table name their line.
        let path = temp_file("typo-users.toml", "\n[users.alice]\nkeys = \"x\"\n");
        let e = server_of(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(
            e.to_string().contains("line 3: unknown field `keys`"),
            "{e}"
        );
        // A client's file may not have users.
        let path = temp_file("client-users.toml", "[users.alice]\nkey = \"x\"\n");
        let e = client_of(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(
            e.to_string()
                .contains("`users` is a server setting, but this is the client"),
            "{e}"
        );
    }
}
