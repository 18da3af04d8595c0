//! Final settings of a daemon: command line over config file over defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use gaptun_proto::{Psk, TransportConfig};

use crate::cli::{ClientArgs, DEFAULT_LISTEN, DEFAULT_SOCKS, ServerArgs};
use crate::config::{FileConfig, OneOrMany, Role};
use crate::ctl::default_socket_path;
use crate::keys::KeySources;
use crate::values::{ForwardSpec, LogFormat, validate_host_port};

/// Logging choices found in the config file (the command line may still override them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileLog {
    pub level: Option<String>,
    pub format: Option<LogFormat>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub keys: Vec<Psk>,
    pub allow: Vec<String>,
    pub allow_private: bool,
    pub control: PathBuf,
    pub transport: TransportConfig,
}

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub server: String,
    pub key: Psk,
    pub socks: Option<SocketAddr>,
    /// SOCKS5 username and password, if clients must authenticate.
    pub socks_auth: Option<(String, String)>,
    pub forwards: Vec<ForwardSpec>,
    pub conns: usize,
    pub control: PathBuf,
    pub transport: TransportConfig,
}

fn load_file(path: Option<&PathBuf>, role: Role) -> Result<FileConfig> {
    Ok(match path {
        Some(p) => FileConfig::load(p, role)?,
        None => FileConfig::default(),
    })
}

fn file_log(f: &FileConfig) -> FileLog {
    FileLog {
        level: f.log.clone(),
        format: f.log_format,
    }
}

/// Server settings from its flags, its config file and `env_key` (the `GAPTUN_KEY` value).
pub fn server(args: &ServerArgs, env_key: Option<String>) -> Result<(ServerSettings, FileLog)> {
    let file = load_file(args.config.as_ref(), Role::Server)?;
    // Cheap checks first: key stretching (argon2) takes a moment.
    let transport = file
        .transport()
        .overridden_by(&args.transport.settings())
        .build()?;
    let keys = KeySources {
        cli_keys: args.keys.clone(),
        cli_key_file: args.key_file.clone(),
        env_key,
        config_keys: file
            .key
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default(),
        config_key_file: file.key_file.clone(),
    }
    .load()?;
    let listen = match (args.listen, file.listen) {
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => DEFAULT_LISTEN.parse().context("default listen address")?,
    };
    let mut allow = file.allow.clone().unwrap_or_default();
    if !args.allow.is_empty() {
        allow = args.allow.clone();
    }
    let settings = ServerSettings {
        listen,
        keys,
        allow,
        allow_private: args.allow_private || file.allow_private.unwrap_or(false),
        control: args
            .control
            .clone()
            .or(file.control.clone())
            .unwrap_or_else(|| default_socket_path(Role::Server)),
        transport,
    };
    Ok((settings, file_log(&file)))
}

/// Client settings from its flags, its config file and `env_key` (the `GAPTUN_KEY` value).
pub fn client(args: &ClientArgs, env_key: Option<String>) -> Result<(ClientSettings, FileLog)> {
    let file = load_file(args.config.as_ref(), Role::Client)?;
    let Some(server) = args.server.clone().or(file.server.clone()) else {
        bail!("no server given: use --server HOST:PORT or `server` in the config file");
    };
    validate_host_port(&server).map_err(|e| anyhow::anyhow!("invalid server `{server}`: {e}"))?;
    let transport = file
        .transport()
        .overridden_by(&args.transport.settings())
        .build()?;
    let keys = KeySources {
        cli_keys: args.key.clone().into_iter().collect(),
        cli_key_file: args.key_file.clone(),
        env_key,
        config_keys: file
            .key
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default(),
        config_key_file: file.key_file.clone(),
    }
    .load()?;
    let Some(key) = keys.into_iter().next() else {
        bail!("no key given");
    };
    let no_socks = args.no_socks || (args.socks.is_none() && file.no_socks.unwrap_or(false));
    let socks = if no_socks {
        None
    } else {
        Some(match (args.socks, file.socks) {
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => DEFAULT_SOCKS.parse().context("default SOCKS address")?,
        })
    };
    let user = args.socks_user.clone().or(file.socks_user.clone());
    let password = args.socks_password.clone().or(file.socks_password.clone());
    let socks_auth = match (user, password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (Some(_), None) => bail!("socks_user is set but socks_password is missing"),
        (None, Some(_)) => bail!("socks_password is set but socks_user is missing"),
    };
    let forwards = if args.forwards.is_empty() {
        file.forward.clone().unwrap_or_default()
    } else {
        args.forwards.clone()
    };
    let conns = args.conns.map(usize::from).or(file.conns).unwrap_or(1);
    if !(1..=64).contains(&conns) {
        bail!("conns must be between 1 and 64, not {conns}");
    }
    let settings = ClientSettings {
        server,
        key,
        socks,
        socks_auth,
        forwards,
        conns,
        control: args
            .control
            .clone()
            .or(file.control.clone())
            .unwrap_or_else(|| default_socket_path(Role::Client)),
        transport,
    };
    Ok((settings, file_log(&file)))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn client_args(args: &[&str]) -> ClientArgs {
        let cli = Cli::try_parse_from(["gaptun", "client"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Client(c) => c,
            _ => panic!(),
        }
    }

    fn server_args(args: &[&str]) -> ServerArgs {
        let cli = Cli::try_parse_from(["gaptun", "server"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Server(s) => s,
            _ => panic!(),
        }
    }

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

    // The key is only parsed (argon2 / base64) by the protocol core, so these tests stop short
    // of `load()` where they would need it, and check the source selection instead.

    #[test]
    fn missing_server_is_a_clear_error() {
        let e = client(&client_args(&["--key", "abcdefghijk"]), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no server given: use --server HOST:PORT or `server` in the config file"
        );
    }

    #[test]
    fn invalid_server_is_rejected() {
        let e = client(&client_args(&["--server", "nohostport"]), None).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid server `nohostport`"),
            "{e}"
        );
    }

    #[test]
    fn missing_key_is_a_clear_error() {
        let e = client(&client_args(&["--server", "h:1"]), None).unwrap_err();
        assert!(e.to_string().starts_with("no key given"), "{e}");
        let e = server(&server_args(&[]), None).unwrap_err();
        assert!(e.to_string().starts_with("no key given"), "{e}");
    }

    #[test]
    fn config_errors_surface_with_line() {
        let path = temp_file("bad.toml", "server = \"h:1\"\nsocks = 5\n");
        let e = client(&client_args(&["--config", path.to_str().unwrap()]), None).unwrap_err();
        assert!(e.to_string().contains("bad.toml line 2: "), "{e}");
    }

    #[test]
    fn transport_errors_surface() {
        let e = client(
            &client_args(&[
                "--server",
                "h:1",
                "--congestion",
                "brutal",
                "--key-file",
                "/nonexistent",
            ]),
            None,
        )
        .unwrap_err();
        // The transport is checked before the key is read.
        assert_eq!(
            e.to_string(),
            "congestion `brutal` needs a rate: set brutal-rate (Mbit/s)"
        );
        let e = client(
            &client_args(&["--server", "h:1", "--key-file", "/nonexistent"]),
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read key file /nonexistent: "),
            "{e}"
        );
    }
}
