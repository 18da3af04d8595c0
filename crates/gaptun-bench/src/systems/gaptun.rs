//! gaptun: one server in namespace B allowing the iperf3 and request/response targets, one
//! client in namespace A with two forwards and a SOCKS5 listener.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{
    Env, FWD_BULK_PORT, FWD_RR_PORT, IPERF_PORT, RR_PORT, Running, SOCKS_PORT, settle,
    tunnel_endpoints,
};
use crate::emulator::{ADDR_B, netns};
use crate::error::{BenchError, Result};
use crate::procs::{self, Managed};

/// UDP port of the gaptun server.
const SERVER_PORT: u16 = 4433;

/// Keys for the two sides, from `gaptun keygen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Passed to `gaptun server --key`.
    pub server: String,
    /// Passed to `gaptun client --key`.
    pub client: String,
}

/// Understands `gaptun keygen` output: either a single key (shared by both sides), or lines
/// naming a private/secret key (server) and a public key (client), as `name: value` or
/// `name = value`.
pub fn parse_keygen(out: &str) -> Result<Keys> {
    // Keys are base64 or hex: they may end in '=' but never contain ':' or " = ".
    let value = |line: &str| {
        line.split_once(':')
            .or_else(|| line.split_once(" = "))
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let find = |names: &[&str]| {
        lines
            .iter()
            .find(|l| names.iter().any(|n| l.to_ascii_lowercase().starts_with(n)))
            .and_then(|l| value(l))
    };
    if let (Some(server), Some(client)) = (
        find(&["private", "secret", "server"]),
        find(&["public", "client"]),
    ) {
        return Ok(Keys { server, client });
    }
    match lines.as_slice() {
        [one] => {
            let k = value(one).unwrap_or_else(|| (*one).to_string());
            Ok(Keys {
                server: k.clone(),
                client: k,
            })
        }
        _ => Err(BenchError::Parse {
            what: "gaptun keygen output".into(),
            detail: format!("{} lines, no private/public pair", lines.len()),
        }),
    }
}

/// Runs `gaptun keygen`.
pub fn keygen(binary: &Path) -> Result<Keys> {
    let out = procs::run(Command::new(binary).arg("keygen"), Duration::from_secs(10))?;
    parse_keygen(&String::from_utf8_lossy(&out.stdout))
}

/// Starts server and client with the congestion controller `cc`.
pub fn start(env: &Env, binary: &Path, cc: &str) -> Result<Running> {
    let keys = keygen(binary)?;
    let bin = binary.to_string_lossy();
    let listen = format!("{ADDR_B}:{SERVER_PORT}");
    let mut s = netns::exec(&env.ns_b, &bin);
    s.args(["server", "--listen", &listen, "--key", &keys.server])
        .args(["--allow", &format!("127.0.0.1:{IPERF_PORT}")])
        .args(["--allow", &format!("127.0.0.1:{RR_PORT}")]);
    cc_args(&mut s, cc, env.rate_mbit);
    let mut procs = vec![Managed::spawn(
        "gaptun server",
        &mut s,
        &env.log(&format!("gaptun-server-{cc}")),
    )?];
    settle(&mut procs)?;
    let mut c = netns::exec(&env.ns_a, &bin);
    c.args(["client", "--server", &listen, "--key", &keys.client])
        .args([
            "--forward",
            &format!("tcp:127.0.0.1:{FWD_BULK_PORT}=127.0.0.1:{IPERF_PORT}"),
        ])
        .args([
            "--forward",
            &format!("tcp:127.0.0.1:{FWD_RR_PORT}=127.0.0.1:{RR_PORT}"),
        ])
        .args(["--socks", &format!("127.0.0.1:{SOCKS_PORT}")]);
    cc_args(&mut c, cc, env.rate_mbit);
    procs.push(Managed::spawn(
        "gaptun client",
        &mut c,
        &env.log(&format!("gaptun-client-{cc}")),
    )?);
    settle(&mut procs)?;
    Ok(Running {
        endpoints: tunnel_endpoints(true),
        procs,
    })
}

/// `--congestion CC`, plus `--brutal-rate` at the link rate for brutal (100 Mbit/s when the
/// link is unlimited).
fn cc_args(cmd: &mut Command, cc: &str, rate_mbit: Option<f64>) {
    cmd.args(["--congestion", cc]);
    if cc == "brutal" {
        let rate = rate_mbit.unwrap_or(100.0).round() as u64;
        cmd.args(["--brutal-rate", &rate.to_string()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_single_key() {
        let k = parse_keygen("  abcDEF123==\n").unwrap();
        assert_eq!(k.server, "abcDEF123==");
        assert_eq!(k.client, "abcDEF123==");
        let k = parse_keygen("key = xyz\n").unwrap();
        assert_eq!(k.client, "xyz");
    }

    #[test]
    fn keygen_pair() {
        let k = parse_keygen("private key: AAA\npublic key: BBB\n").unwrap();
        assert_eq!(
            k,
            Keys {
                server: "AAA".into(),
                client: "BBB".into()
            }
        );
        assert!(parse_keygen("a\nb\n").is_err());
        assert!(parse_keygen("").is_err());
    }
}
