//! gaptun: one server in namespace B allowing the iperf3 and request/response targets, one
//! client in namespace A with two forwards and a SOCKS5 listener.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{
    Control, Env, FWD_BULK_PORT, FWD_RR_PORT, IPERF_PORT, RR_PORT, Running, SOCKS_PORT, settle,
    tunnel_endpoints,
};
use crate::emulator::netns;
use crate::error::{BenchError, Result};
use crate::procs::{self, Managed};

/// UDP port of the gaptun server.
const SERVER_PORT: u16 = 4433;

/// Understands `gaptun keygen` output: one line holding a `gt1:` key (the prefix is part of
/// the key), shared by both sides.
pub fn parse_keygen(out: &str) -> Result<String> {
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let key = lines
        .iter()
        .find(|l| l.starts_with("gt1:"))
        .or(match lines.as_slice() {
            [one] => Some(one),
            _ => None,
        })
        .ok_or_else(|| BenchError::Parse {
            what: "gaptun keygen output".into(),
            detail: format!("{} lines, no gt1: key", lines.len()),
        })?;
    Ok((*key).to_string())
}

/// Runs `gaptun keygen`.
pub fn keygen(binary: &Path) -> Result<String> {
    let out = procs::run(Command::new(binary).arg("keygen"), Duration::from_secs(10))?;
    parse_keygen(&String::from_utf8_lossy(&out.stdout))
}

/// Starts server and client with the congestion controller `cc`, if given `--fec`, on `carrier`
/// (`udp`, `tls`, `quic`; all on the same port number), the client with `client_args` too.
pub fn start(
    env: &Env,
    binary: &Path,
    cc: &str,
    fec: Option<&str>,
    carrier: &str,
    client_args: &[String],
) -> Result<Running> {
    let key = keygen(binary)?;
    // Log and socket names tell the FEC variants and the carriers apart.
    let mut tag = match fec {
        Some(f) => format!("{cc}-fec-{}", f.replace('/', "-")),
        None => cc.to_string(),
    };
    if carrier != "udp" {
        tag = format!("{carrier}-{tag}");
    }
    for arg in client_args {
        tag.push('-');
        tag.push_str(arg.trim_start_matches('-'));
    }
    let cc_args = |cmd: &mut Command| {
        cc_args(cmd, cc, env.rate_mbit);
        if let Some(f) = fec {
            cmd.args(["--fec", f]);
        }
    };
    let bin = binary.to_string_lossy();
    let listen = format!("{}:{SERVER_PORT}", env.b_addr);
    let mut s = netns::exec(&env.ns_b, &bin);
    s.args(["server", "--listen", &listen, "--key", &key])
        .args(["--carrier", carrier])
        .args(["--tls-listen", &listen, "--quic-listen", &listen])
        .args(["--allow", &format!("127.0.0.1:{IPERF_PORT}")])
        .args(["--allow", &format!("127.0.0.1:{RR_PORT}")])
        .arg("--control")
        .arg(control_socket(env, "server", &tag));
    cc_args(&mut s);
    let mut procs = vec![Managed::spawn(
        "gaptun server",
        &mut s,
        &env.log(&format!("gaptun-server-{tag}")),
    )?];
    settle(&mut procs)?;
    let mut c = netns::exec(&env.ns_a, &bin);
    c.args(["client", "--server", &listen, "--key", &key])
        .args(["--carrier", carrier])
        .args([
            "--forward",
            &format!("tcp:127.0.0.1:{FWD_BULK_PORT}=127.0.0.1:{IPERF_PORT}"),
        ])
        .args([
            "--forward",
            &format!("tcp:127.0.0.1:{FWD_RR_PORT}=127.0.0.1:{RR_PORT}"),
        ])
        .args(["--socks", &format!("127.0.0.1:{SOCKS_PORT}")])
        .args(client_args)
        .arg("--control")
        .arg(control_socket(env, "client", &tag));
    cc_args(&mut c);
    procs.push(Managed::spawn(
        "gaptun client",
        &mut c,
        &env.log(&format!("gaptun-client-{tag}")),
    )?);
    settle(&mut procs)?;
    Ok(Running {
        endpoints: tunnel_endpoints(true),
        procs,
        controls: controls(env, binary, &tag),
    })
}

/// The client's and the server's control sockets of the run tagged `tag`.
pub fn controls(env: &Env, binary: &Path, tag: &str) -> Vec<Control> {
    ["client", "server"]
        .into_iter()
        .map(|role| Control {
            role,
            binary: binary.to_path_buf(),
            socket: control_socket(env, role, tag),
        })
        .collect()
}

/// A control socket of this run's own (the default path is shared by every gaptun on the
/// machine), usable with `gaptun ctl --socket PATH stats` while the benchmark runs.
pub fn control_socket(env: &Env, role: &str, cc: &str) -> PathBuf {
    env.logdir.join(format!("gaptun-{role}-{cc}.sock"))
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
    fn keygen_gt1_key_is_kept_whole() {
        assert_eq!(
            parse_keygen("gt1:abcDEF123+/xyz\n").unwrap(),
            "gt1:abcDEF123+/xyz"
        );
        assert_eq!(parse_keygen("note\n  gt1:QQ \n").unwrap(), "gt1:QQ");
    }

    #[test]
    fn keygen_without_a_key_is_an_error() {
        assert_eq!(parse_keygen("plainkey\n").unwrap(), "plainkey");
        assert!(parse_keygen("a\nb\n").is_err());
        assert!(parse_keygen("").is_err());
    }
}
