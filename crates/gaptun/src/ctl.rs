//! The control socket: `gaptun ctl` talks to a running daemon over a Unix socket.
//!
//! Protocol: the client connects, sends one command line, and reads the answer until the daemon
//! closes the connection. Commands:
//!
//! - `wnd N`: set the receive window (N in bytes, K/M/G suffixes allowed) of every live and
//!   future connection; answers `ok`.
//! - `stats`: a human-readable table; `stats json`: the same figures as one JSON object
//!   (the schema of `docs/stats-api.md`), read fresh from the endpoint;
//! - `top`: the figures with current rates, from the snapshot published once a second
//!   (`gaptun ctl top` asks for it every second).
//!
//! Errors are answered as `error: <message>`. The socket is created with mode 0600 (bound under
//! a temporary name, restricted, then renamed into place, so it is never reachable with looser
//! permissions). A socket file left by a crashed daemon is replaced; one that a live daemon
//! still answers on is not.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gaptun_apps::expose::{ExposeClient, ExposeServer, ExposeSnapshot, ExposeSpec};
use gaptun_runtime::RtEndpoint;
use gaptun_stats::{Collector, ExposeRow, StatsSnapshot};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info};

use crate::apps_wiring::UserConn;
use crate::config::Role;
use crate::values;

/// Longest command line accepted.
const MAX_COMMAND: u64 = 1024;

/// Largest answer `gaptun ctl` reads.
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// A parsed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Wnd(u64),
    Stats {
        json: bool,
    },
    /// The figures with current rates, as `gaptun ctl top` redraws them every second.
    Top,
}

/// Parses one command line.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        // The same bounds as the command line's, so a raw socket client is bounded too.
        ["wnd", n] => values::parse_window(n).map(Command::Wnd),
        ["wnd"] => Err("usage: wnd BYTES (e.g. wnd 64M)".into()),
        ["stats"] => Ok(Command::Stats { json: false }),
        ["stats", "json"] => Ok(Command::Stats { json: true }),
        ["top"] => Ok(Command::Top),
        [] => Err("empty command: use `wnd BYTES`, `stats`, `stats json` or `top`".into()),
        _ => Err(format!(
            "unknown command `{}`: use `wnd BYTES`, `stats`, `stats json` or `top`",
            line.trim()
        )),
    }
}

/// What the control socket acts on.
#[derive(Debug, Clone)]
pub struct CtlContext {
    pub endpoint: RtEndpoint,
    /// The receive window currently configured (for display; the core holds the real one).
    pub window: Arc<AtomicU64>,
    /// The figures `stats` and `top` show (the dashboard's too).
    pub collector: Collector,
}

/// The daemon's exposes, for `stats`.
#[derive(Debug, Clone)]
pub enum ExposeSource {
    /// No expose on this daemon.
    None,
    /// A server's: every port some client holds.
    Server(ExposeServer<UserConn>),
    /// A client's: the exposes it registers.
    Client(ExposeClient),
}

fn expose_row(s: &ExposeSnapshot, user: Option<String>, local: Option<String>) -> ExposeRow {
    ExposeRow {
        kind: s.kind.to_string(),
        ports: s.ports.to_string(),
        user,
        local,
        visitors_now: s.visitors_now,
        visitors_total: s.visitors_total,
        bytes_to_service: s.bytes_to_service,
        bytes_to_visitors: s.bytes_to_visitors,
        to_service_bytes_per_sec: 0.0,
        to_visitors_bytes_per_sec: 0.0,
    }
}

/// The local side of a client's expose: `127.0.0.1:9000`, `[::1]:9000-9005`.
fn local_of(spec: &ExposeSpec) -> String {
    let host = if spec.local_host.contains(':') {
        format!("[{}]", spec.local_host)
    } else {
        spec.local_host.clone()
    };
    let span = u32::from(spec.remote.last()) - u32::from(spec.remote.first());
    match u32::from(spec.local_port) + span {
        last if span > 0 => format!("{host}:{}-{last}", spec.local_port),
        _ => format!("{host}:{}", spec.local_port),
    }
}

impl ExposeSource {
    /// The exposes' figures now (read from their counters, no lock of the data path).
    pub fn rows(&self) -> Vec<ExposeRow> {
        match self {
            Self::None => Vec::new(),
            Self::Server(server) => server
                .stats()
                .iter()
                .map(|(owner, s)| expose_row(s, Some(owner.to_string()), None))
                .collect(),
            Self::Client(client) => client
                .specs()
                .iter()
                .zip(client.stats())
                .map(|(spec, s)| expose_row(&s, None, Some(local_of(spec))))
                .collect(),
        }
    }
}

/// Bytes with a binary unit, e.g. `1.5M`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n}"),
        _ => format!("{v:.1}{}", UNITS.get(unit).copied().unwrap_or("")),
    }
}

/// An RTT for the table: `61.2ms`, or `-` before the first sample.
fn rtt_cell(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}ms"))
}

/// A connection's age for the table: `42s`, `17m05s`, `3h02m`, `2d04h`.
pub fn human_age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// The `stats` table.
pub fn format_table(s: &StatsSnapshot) -> String {
    let pending = match s.not_established {
        0 => String::new(),
        n => format!(" (+{n} handshaking or closing)"),
    };
    let mut out = format!(
        "gaptun {} on {}: {} connection(s){pending}, receive window {}\n",
        s.role,
        s.local_addr,
        s.connections.len(),
        human_bytes(s.receive_window),
    );
    if s.role == "server" {
        out.push_str(&format!(
            "handshakes accepted {}, dropped unauthenticated {}, dropped replays {}\n",
            s.accepted, s.dropped_unauthenticated, s.dropped_replayed_handshakes
        ));
    }
    // Before the tables: scripts read the connection rows up to the end.
    out.push_str(&shards_lines(&s.shards));
    out.push_str(&exposes_table(&s.exposes));
    if !s.connections.is_empty() {
        out.push_str(&connections_table(s));
    }
    // Last, so that the table's layout stays as it was for the scripts that read it.
    if let Some(offered) = &s.offered_carriers {
        out.push_str(&format!("carriers the server offers: {offered}\n"));
    }
    out
}

/// One line per shard of a server with several threads (nothing with one), under the
/// handshake counters: its connections,
/// its driver's working time, and the datagrams other shards handed to it, with those its
/// full inbox dropped.
fn shards_lines(shards: &[gaptun_stats::ShardRow]) -> String {
    shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "shard {i}: {} connection(s), busy {:.1} s, passed in {}, dropped (inbox full) {}, truncated {}\n",
                s.connections, s.busy_secs, s.passed_in, s.passed_dropped, s.truncated
            )
        })
        .collect()
}

/// The connection rows of the `stats` table, under their header.
fn connections_table(s: &StatsSnapshot) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:>4} {:<24} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>9} {:>7} {:>5} {:>11}\n",
        "ID",
        "REMOTE",
        "AGE",
        "RTT",
        "MIN_RTT",
        "CWND",
        "SENT",
        "RECV",
        "LOSS%",
        "RETX",
        "STREAMS",
        "WINDOW",
        "MTU",
        "FEC_PAR/REB"
    ));
    if s.role == "server" {
        out.insert_str(out.len() - 1, " USER");
    }
    for c in &s.connections {
        let remote = &c.remote;
        out.push_str(&format!(
            "{:>4} {:<24} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6.2} {:>7} {:>9} {:>7} {:>5} {:>11}\n",
            c.id,
            remote,
            human_age(c.age_secs),
            rtt_cell(c.rtt_ms),
            rtt_cell(c.min_rtt_ms),
            human_bytes(c.cwnd),
            human_bytes(c.bytes_sent),
            human_bytes(c.bytes_received),
            c.loss_percent,
            c.packets_retransmitted,
            format!("{}/{}", c.streams_open, c.streams_opened_total),
            human_bytes(c.receive_window),
            c.mtu,
            format!("{}/{}", c.fec_parity_sent, c.fec_packets_rebuilt),
        ));
        if let Some(user) = &c.user {
            out.insert_str(out.len() - 1, &format!(" {user}"));
        }
        out.push_str(&paths_line(c));
    }
    out
}

/// `     paths: udp 192.0.2.1:29900 active 5.1M sent, faketcp 192.0.2.1:29900 standby 2.0K sent (1 switch)` for a
/// connection with several paths; empty otherwise.
fn paths_line(c: &gaptun_stats::ConnSnapshot) -> String {
    if c.paths.is_empty() {
        return String::new();
    }
    let paths: Vec<String> = c
        .paths
        .iter()
        .map(|p| {
            format!(
                "{} {} {} {} sent",
                p.carrier,
                p.remote,
                p.state,
                human_bytes(p.bytes_sent)
            )
        })
        .collect();
    let switches = match c.carrier_switches {
        0 => String::new(),
        1 => " (1 carrier switch)".to_owned(),
        n => format!(" ({n} carrier switches)"),
    };
    format!("     paths: {}{switches}\n", paths.join(", "))
}

/// A rate for `top`: `1.5M/s`.
fn human_rate(bytes_per_sec: f64) -> String {
    format!("{}/s", human_bytes(bytes_per_sec.max(0.0) as u64))
}

/// The `top` screen: totals with rates, then each connection, user, expose and forward.
pub fn format_top(s: &StatsSnapshot) -> String {
    let t = &s.totals;
    let rtts: Vec<f64> = s.connections.iter().filter_map(|c| c.rtt_ms).collect();
    let rtt = (!rtts.is_empty()).then(|| rtts.iter().sum::<f64>() / rtts.len() as f64);
    let mut out = format!(
        "gaptun {} on {}, up {}: {} connection(s), down {} up {}, RTT {}\n\
         received {} sent {}, packets lost {} retransmitted {}\n",
        s.role,
        s.local_addr,
        human_age(s.uptime_secs),
        s.connections.len(),
        human_rate(t.recv_bytes_per_sec),
        human_rate(t.send_bytes_per_sec),
        rtt_cell(rtt),
        human_bytes(t.bytes_received),
        human_bytes(t.bytes_sent),
        t.packets_lost,
        t.packets_retransmitted,
    );
    if !s.connections.is_empty() {
        out.push_str(&format!(
            "\n{:>4} {:<24} {:<10} {:>8} {:>10} {:>10} {:>8} {:>8} {:>6} {:>6} {:>9}\n",
            "ID",
            "REMOTE",
            "USER",
            "RTT",
            "DOWN",
            "UP",
            "RECV",
            "SENT",
            "LOSS%",
            "RETX%",
            "STREAMS"
        ));
        for c in &s.connections {
            out.push_str(&format!(
                "{:>4} {:<24} {:<10} {:>8} {:>10} {:>10} {:>8} {:>8} {:>6.2} {:>6.2} {:>9}\n",
                c.id,
                c.remote,
                c.user.as_deref().unwrap_or("-"),
                rtt_cell(c.rtt_ms),
                human_rate(c.recv_bytes_per_sec),
                human_rate(c.send_bytes_per_sec),
                human_bytes(c.bytes_received),
                human_bytes(c.bytes_sent),
                c.loss_percent_now,
                c.retransmit_percent_now,
                format!("{}/{}", c.streams_open, c.streams_opened_total),
            ));
        }
    }
    if !s.users.is_empty() {
        out.push_str(&format!(
            "\n{:<16} {:>5} {:>10} {:>10} {:>8} {:>8}\n",
            "USER", "CONNS", "DOWN", "UP", "RECV", "SENT"
        ));
        for u in &s.users {
            out.push_str(&format!(
                "{:<16} {:>5} {:>10} {:>10} {:>8} {:>8}\n",
                u.name,
                u.connections,
                human_rate(u.traffic.recv_bytes_per_sec),
                human_rate(u.traffic.send_bytes_per_sec),
                human_bytes(u.traffic.bytes_received),
                human_bytes(u.traffic.bytes_sent),
            ));
        }
    }
    if !s.exposes.is_empty() {
        out.push('\n');
        out.push_str(&exposes_table(&s.exposes));
    }
    if !s.forwards.is_empty() {
        out.push_str(&format!(
            "\n{:<28} {:>7} {:>10} {:>10} {:>8} {:>8}\n",
            "FORWARD", "STREAMS", "UP", "DOWN", "UP_TOT", "DOWN_TOT"
        ));
        for f in &s.forwards {
            out.push_str(&format!(
                "{:<28} {:>7} {:>10} {:>10} {:>8} {:>8}\n",
                format!("{} {}", f.kind, f.listen),
                f.streams_open,
                human_rate(f.up_bytes_per_sec),
                human_rate(f.down_bytes_per_sec),
                human_bytes(f.bytes_up),
                human_bytes(f.bytes_down),
            ));
        }
    }
    out
}

/// The exposes part of the `stats` table (nothing when there is no expose).
fn exposes_table(rows: &[ExposeRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "{:<18} {:<24} {:>8} {:>8} {:>10} {:>11}\n",
        "EXPOSE", "USER/LOCAL", "VISITORS", "TOTAL", "TO_SERVICE", "TO_VISITORS"
    );
    for r in rows {
        let who = r.user.as_deref().or(r.local.as_deref()).unwrap_or("-");
        out.push_str(&format!(
            "{:<18} {:<24} {:>8} {:>8} {:>10} {:>11}\n",
            format!("{}:{}", r.kind, r.ports),
            who,
            r.visitors_now,
            r.visitors_total,
            human_bytes(r.bytes_to_service),
            human_bytes(r.bytes_to_visitors),
        ));
    }
    out
}

/// Executes one command line and returns the answer text.
pub fn handle_line(line: &str, ctx: &CtlContext) -> String {
    match parse_command(line) {
        Ok(Command::Wnd(bytes)) => {
            ctx.endpoint.set_receive_window(bytes);
            ctx.window.store(bytes, Ordering::Relaxed);
            info!(
                "receive window set to {} via control socket",
                human_bytes(bytes)
            );
            "ok\n".into()
        }
        Ok(Command::Stats { json: false }) => format_table(&ctx.collector.refresh()),
        Ok(Command::Top) => format_top(&ctx.collector.latest()),
        Ok(Command::Stats { json: true }) => match serde_json::to_string(&*ctx.collector.refresh())
        {
            Ok(mut s) => {
                s.push('\n');
                s
            }
            Err(e) => format!("error: {e}\n"),
        },
        Err(e) => format!("error: {e}\n"),
    }
}

/// Control-socket setup failures.
#[derive(Debug, Error)]
pub enum CtlError {
    #[error(
        "another gaptun is already listening on control socket {0} (stop it, or use --control)"
    )]
    InUse(String),
    #[error("control socket path {0} exists and is not a socket")]
    NotASocket(String),
    /// (The I/O error is part of the message, not a `source`: an error chain printed with
    /// `{:#}` would otherwise show it twice.)
    #[error("cannot create control socket {path}: {reason}")]
    Io { path: String, reason: io::Error },
    #[error("cannot create control socket {path}: directory {dir} does not exist")]
    NoDirectory { path: String, dir: String },
    #[error(
        "refusing control socket {path}: directory {dir} {why}, so another user could replace the socket (use --control with a private directory)"
    )]
    UntrustedDirectory {
        path: String,
        dir: String,
        why: String,
    },
    #[error("no gaptun daemon answers on {path}: {reason} (is it running? see --socket)")]
    NoDaemon { path: String, reason: String },
}

/// The default socket path for `role`: in `$XDG_RUNTIME_DIR` when set (private to the user),
/// else in /tmp with the user ID in the name.
pub fn default_socket_path(role: Role) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => Path::new(&dir).join(format!("gaptun-{}.sock", role.name())),
        None => PathBuf::from(format!("/tmp/gaptun-{}-{}.sock", role.name(), user_id())),
    }
}

/// The current user's ID, read without `unsafe` from the owner of `/proc/self`; falls back to
/// the user name.
fn user_id() -> String {
    match current_uid() {
        Some(uid) => uid.to_string(),
        None => std::env::var("USER").unwrap_or_else(|_| "user".into()),
    }
}

/// Why a directory is not safe for our control socket, or `None` when it is: it must belong to
/// us or to root, and if others may write to it, the sticky bit must stop them from removing or
/// renaming our files (as in /tmp). Otherwise another local user could swap the socket for
/// their own and read what `gaptun ctl` sends and is told.
pub fn untrusted_directory(owner: u32, mode: u32, me: u32) -> Option<String> {
    const STICKY: u32 = 0o1000;
    if owner != me && owner != 0 {
        return Some(format!("belongs to another user (uid {owner})"));
    }
    if mode & 0o022 != 0 && mode & STICKY == 0 {
        return Some(format!(
            "is writable by group or others without the sticky bit (mode {:o})",
            mode & 0o7777
        ));
    }
    None
}

/// Checks the directory the socket goes in (see [`untrusted_directory`]).
fn check_directory(path: &Path) -> Result<(), CtlError> {
    use std::os::unix::fs::MetadataExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let shown = || (path.display().to_string(), dir.display().to_string());
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let (path, dir) = shown();
            return Err(CtlError::NoDirectory { path, dir });
        }
        Err(reason) => {
            return Err(CtlError::Io {
                path: path.display().to_string(),
                reason,
            });
        }
    };
    let Some(me) = current_uid() else {
        return Ok(());
    };
    match untrusted_directory(meta.uid(), meta.mode(), me) {
        None => Ok(()),
        Some(why) => {
            let (path, dir) = shown();
            Err(CtlError::UntrustedDirectory { path, dir, why })
        }
    }
}

/// The current user's ID: the owner of `/proc/self` (read without `unsafe`).
fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// A bound control socket; removes its file when dropped.
#[derive(Debug)]
pub struct CtlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for CtlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl CtlSocket {
    /// Creates the socket at `path` with mode 0600, replacing a stale one.
    pub fn bind(path: &Path) -> Result<Self, CtlError> {
        let shown = path.display().to_string();
        let io_err = |reason| CtlError::Io {
            path: shown.clone(),
            reason,
        };
        check_directory(path)?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => return Err(CtlError::NotASocket(shown)),
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(CtlError::InUse(shown)),
                Err(_) => debug!("removing stale control socket {shown}"),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(io_err)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers commands with `handler` until the task is dropped.
    pub async fn serve<F>(self, handler: F)
    where
        F: Fn(&str) -> String + Clone + Send + Sync + 'static,
    {
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    debug!("control socket accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, handler).await {
                    debug!("control connection: {e}");
                }
            });
        }
    }
}

async fn answer(stream: UnixStream, handler: impl Fn(&str) -> String) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r).take(MAX_COMMAND);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no command within 5 s"))??;
    let reply = handler(&line);
    w.write_all(reply.as_bytes()).await?;
    w.shutdown().await
}

/// Sends one command to the daemon at `path` and returns its answer.
pub async fn request(path: &Path, command: &str) -> Result<String, CtlError> {
    let shown = path.display().to_string();
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|e| CtlError::NoDaemon {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    let io_err = |reason| CtlError::Io {
        path: shown.clone(),
        reason,
    };
    stream
        .write_all(format!("{}\n", command.trim()).as_bytes())
        .await
        .map_err(io_err)?;
    stream.shutdown().await.map_err(io_err)?;
    let mut answer = String::new();
    stream
        .take(MAX_ANSWER)
        .read_to_string(&mut answer)
        .await
        .map_err(io_err)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse_command("wnd 64M\n"), Ok(Command::Wnd(64 << 20)));
        assert_eq!(parse_command("  wnd   1048576 "), Ok(Command::Wnd(1 << 20)));
        assert_eq!(parse_command("stats"), Ok(Command::Stats { json: false }));
        assert_eq!(parse_command("top\n"), Ok(Command::Top));
        assert_eq!(
            parse_command("stats json\n"),
            Ok(Command::Stats { json: true })
        );
        assert!(parse_command("wnd").unwrap_err().contains("usage"));
        assert!(parse_command("wnd 1K").unwrap_err().contains("too small"));
        assert!(
            parse_command("wnd 999999G")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            parse_command("wnd lots")
                .unwrap_err()
                .contains("invalid size")
        );
        assert!(
            parse_command("reboot")
                .unwrap_err()
                .contains("unknown command `reboot`")
        );
        assert!(parse_command("").is_err());
    }

    use gaptun_stats::{ConnSnapshot, ForwardRow, Traffic, UserRow};

    fn sample() -> StatsSnapshot {
        StatsSnapshot {
            schema_version: gaptun_stats::SCHEMA_VERSION,
            role: "client".into(),
            version: "0.1.0".into(),
            uptime_secs: 130,
            unix_time_ms: 0,
            totals: Traffic::default(),
            users: Vec::new(),
            forwards: Vec::new(),
            offered_carriers: None,
            local_addr: "0.0.0.0:40000".into(),
            receive_window: 32 << 20,
            accepted: 0,
            dropped_unauthenticated: 0,
            dropped_replayed_handshakes: 0,
            connections: vec![ConnSnapshot {
                id: 3,
                remote: "192.0.2.1:29900".into(),
                user: None,
                established: true,
                carrier: "udp".into(),
                paths: Vec::new(),
                carrier_switches: 0,
                age_secs: 125,
                cipher: "aes-256-gcm".into(),
                rtt_ms: Some(61.25),
                min_rtt_ms: Some(60.0),
                cwnd: 3 << 20,
                bytes_in_flight: 0,
                pacing_rate: 0,
                congestion: "bbr".into(),
                bytes_sent: 1536,
                bytes_received: 10 << 20,
                packets_sent: 200,
                packets_received: 8000,
                packets_lost: 4,
                packets_retransmitted: 5,
                stream_bytes_sent: 9000,
                stream_bytes_lost: 4000,
                stream_bytes_retransmitted: 4000,
                dropped_duplicate: 1,
                loss_percent: 2.0,
                loss_percent_now: 0.5,
                retransmit_percent_now: 1.0,
                send_bytes_per_sec: 1536.0,
                recv_bytes_per_sec: 3.0 * 1024.0 * 1024.0,
                streams_open: 3,
                streams_opened_total: 17,
                receive_window: 32 << 20,
                mtu: 1472,
                mtu_probes_sent: 1,
                mtu_probes_lost: 0,
                fec_parity_sent: 12,
                fec_parity_bytes: 1500,
                fec_packets_rebuilt: 2,
                datagrams_sent: 0,
                datagrams_received: 0,
                datagrams_dropped: 0,
                datagram_frames_lost: 0,
            }],
            not_established: 0,
            exposes: Vec::new(),
            shards: Vec::new(),
        }
    }

    /// The FEC counters of the first connection in the JSON form.
    fn v_fec(s: &StatsSnapshot) -> (u64, u64, u64) {
        let v: serde_json::Value = serde_json::to_value(s).unwrap();
        let c = &v["connections"][0];
        let n = |k: &str| c[k].as_u64().unwrap();
        (
            n("fec_parity_sent"),
            n("fec_parity_bytes"),
            n("fec_packets_rebuilt"),
        )
    }

    #[test]
    fn server_table_names_users_and_lists_exposes() {
        let mut s = sample();
        s.role = "server".into();
        s.connections[0].user = Some("alice".into());
        s.exposes = vec![ExposeRow {
            kind: "tcp".into(),
            ports: "8000-8005".into(),
            user: Some("alice".into()),
            local: None,
            visitors_now: 2,
            visitors_total: 40,
            bytes_to_service: 1536,
            bytes_to_visitors: 3 << 20,
            to_service_bytes_per_sec: 0.0,
            to_visitors_bytes_per_sec: 0.0,
        }];
        let t = format_table(&s);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[2].starts_with("EXPOSE"), "{t}");
        let row: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            row,
            ["tcp:8000-8005", "alice", "2", "40", "1.5K", "3.0M"],
            "{t}"
        );
        assert!(lines[4].trim_end().ends_with("MTU FEC_PAR/REB USER"), "{t}");
        assert!(
            lines[5].trim_end().ends_with("1472        12/2 alice"),
            "{t}"
        );
        assert_eq!(v_fec(&s), (12, 1500, 2));
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["connections"][0]["user"], "alice");
        assert_eq!(v["exposes"][0]["user"], "alice");
        assert!(v["exposes"][0].get("local").is_none());
        assert_eq!(v["exposes"][0]["bytes_to_visitors"], 3 << 20);
    }

    #[test]
    fn top_shows_rates_users_and_forwards() {
        let mut s = sample();
        s.role = "server".into();
        s.connections[0].user = Some("alice".into());
        s.totals.recv_bytes_per_sec = 2048.0;
        s.users = vec![UserRow {
            name: "alice".into(),
            connections: 1,
            traffic: Traffic {
                bytes_received: 10 << 20,
                recv_bytes_per_sec: 2048.0,
                ..Traffic::default()
            },
            rtt_ms: Some(61.25),
            streams_open: 3,
        }];
        s.forwards = vec![ForwardRow {
            kind: "tcp".into(),
            listen: "127.0.0.1:2222".into(),
            target: Some("10.0.0.5:22".into()),
            streams_open: 1,
            streams_total: 4,
            bytes_up: 1024,
            bytes_down: 5 << 20,
            up_bytes_per_sec: 0.0,
            down_bytes_per_sec: 512.0 * 1024.0,
        }];
        let t = format_top(&s);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "gaptun server on 0.0.0.0:40000, up 2m10s: 1 connection(s), down 2.0K/s up 0/s, RTT 61.2ms"
        );
        let row: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "3",
                "192.0.2.1:29900",
                "alice",
                "61.2ms",
                "3.0M/s",
                "1.5K/s",
                "10.0M",
                "1.5K",
                "0.50",
                "1.00",
                "3/17"
            ],
            "{t}"
        );
        let words = |prefix: &str| -> Vec<String> {
            let line = lines.iter().find(|l| l.starts_with(prefix)).expect(prefix);
            line.split_whitespace().map(str::to_owned).collect()
        };
        assert_eq!(
            words("alice "),
            ["alice", "1", "2.0K/s", "0/s", "10.0M", "0"],
            "{t}"
        );
        assert_eq!(
            words("tcp 127.0.0.1:2222"),
            [
                "tcp",
                "127.0.0.1:2222",
                "1",
                "0/s",
                "512.0K/s",
                "1.0K",
                "5.0M"
            ],
            "{t}"
        );
    }

    #[test]
    fn client_expose_local_side() {
        let spec = |s: &str| s.parse::<ExposeSpec>().unwrap();
        assert_eq!(local_of(&spec("2222=127.0.0.1:22")), "127.0.0.1:22");
        assert_eq!(local_of(&spec("8000-8005=[::1]:9000")), "[::1]:9000-9005");
    }

    #[test]
    fn table_format() {
        let t = format_table(&sample());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "gaptun client on 0.0.0.0:40000: 1 connection(s), receive window 32.0M"
        );
        assert!(lines[1].trim_start().starts_with("ID REMOTE"), "{t}");
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            row,
            vec![
                "3",
                "192.0.2.1:29900",
                "2m05s",
                "61.2ms",
                "60.0ms",
                "3.0M",
                "1.5K",
                "10.0M",
                "2.00",
                "5",
                "3/17",
                "32.0M",
                "1472",
                "12/2"
            ]
        );
    }

    #[test]
    fn table_lists_the_paths_of_a_connection_with_several() {
        let mut s = sample();
        s.connections[0].carrier = "faketcp".into();
        s.connections[0].carrier_switches = 1;
        s.connections[0].paths = vec![
            gaptun_stats::PathRow {
                carrier: "udp".into(),
                remote: "192.0.2.1:29900".into(),
                state: "dead".into(),
                bytes_sent: 2048,
            },
            gaptun_stats::PathRow {
                carrier: "faketcp".into(),
                remote: "192.0.2.1:29900".into(),
                state: "active".into(),
                bytes_sent: 3 << 20,
            },
        ];
        let t = format_table(&s);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[3],
            "     paths: udp 192.0.2.1:29900 dead 2.0K sent, faketcp 192.0.2.1:29900 active 3.0M sent (1 carrier switch)",
            "{t}"
        );
        // One path: no such line.
        assert_eq!(format_table(&sample()).lines().count(), 3);
    }

    #[test]
    fn the_offered_carriers_end_the_table_and_are_in_the_json() {
        let mut s = sample();
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert!(v.get("offered_carriers").is_none(), "left out when none");
        s.offered_carriers = Some("udp 4000, tls 8443".into());
        let t = format_table(&s);
        assert_eq!(
            t.lines().last(),
            Some("carriers the server offers: udp 4000, tls 8443"),
            "{t}"
        );
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["offered_carriers"], "udp 4000, tls 8443");
    }

    /// A server with several threads: one line per shard before the connection table (which
    /// scripts read to its end), with the datagrams its full inbox dropped; `/metrics` has
    /// them per shard; none with one shard.
    #[test]
    fn shards_are_listed_in_the_table_and_the_metrics() {
        let mut s = sample();
        s.role = "server".into();
        assert!(!format_table(&s).contains("shard"));
        s.shards = vec![
            gaptun_stats::ShardRow {
                connections: 1,
                busy_secs: 2.25,
                passed_in: 7,
                passed_dropped: 0,
                truncated: 0,
            },
            gaptun_stats::ShardRow {
                connections: 0,
                busy_secs: 0.5,
                passed_in: 4096,
                passed_dropped: 904,
                truncated: 1,
            },
        ];
        let t = format_table(&s);
        let lines: Vec<&str> = t.lines().filter(|l| l.starts_with("shard ")).collect();
        let table = t.find("  ID REMOTE").expect("connection table");
        assert!(t.find("shard 1:").expect("shard line") < table, "{t}");
        assert_eq!(
            lines,
            [
                "shard 0: 1 connection(s), busy 2.2 s, passed in 7, dropped (inbox full) 0, truncated 0",
                "shard 1: 0 connection(s), busy 0.5 s, passed in 4096, dropped (inbox full) 904, truncated 1",
            ],
            "{t}"
        );
        let m = gaptun_stats::prom::render(&s).unwrap();
        assert!(
            m.contains("gaptun_shard_passed_dropped_datagrams_total{shard=\"1\"} 904"),
            "{m}"
        );
        assert!(
            m.contains("gaptun_shard_busy_seconds_total{shard=\"0\"} 2.25"),
            "{m}"
        );
        let back: StatsSnapshot =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn no_rtt_sample_shows_a_dash() {
        let mut s = sample();
        s.connections[0].rtt_ms = None;
        s.connections[0].min_rtt_ms = None;
        let t = format_table(&s);
        let row: Vec<&str> = t.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(&row[3..5], &["-", "-"], "{t}");
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert!(v["connections"][0]["rtt_ms"].is_null());
    }

    #[test]
    fn two_connections_of_one_client_are_told_apart() {
        let mut s = sample();
        let mut second = s.connections[0].clone();
        second.id = 7;
        second.age_secs = 4;
        s.connections.push(second);
        let t = format_table(&s);
        let rows: Vec<Vec<&str>> = t
            .lines()
            .skip(2)
            .map(|l| l.split_whitespace().take(3).collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec!["3", "192.0.2.1:29900", "2m05s"],
                vec!["7", "192.0.2.1:29900", "4s"]
            ]
        );
    }

    #[test]
    fn ages() {
        assert_eq!(human_age(0), "0s");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(61), "1m01s");
        assert_eq!(human_age(3 * 3600 + 120), "3h02m");
        assert_eq!(human_age(2 * 86400 + 4 * 3600), "2d04h");
    }

    #[test]
    fn directory_trust() {
        let me = 1000;
        assert_eq!(untrusted_directory(me, 0o40700, me), None);
        assert_eq!(untrusted_directory(0, 0o41777, me), None, "/tmp");
        assert_eq!(untrusted_directory(0, 0o40755, me), None, "/run");
        assert!(
            untrusted_directory(1001, 0o40700, me)
                .unwrap()
                .contains("another user (uid 1001)")
        );
        assert!(
            untrusted_directory(1001, 0o41777, me).is_some(),
            "sticky, but someone else's"
        );
        assert!(
            untrusted_directory(me, 0o40777, me)
                .unwrap()
                .contains("without the sticky bit (mode 777)")
        );
        assert!(untrusted_directory(0, 0o40775, me).is_some());
    }

    #[test]
    fn missing_directory_is_said_once() {
        let e = CtlSocket::bind(Path::new("/nonexistent/dir/s.sock")).unwrap_err();
        let shown = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            shown,
            "cannot create control socket /nonexistent/dir/s.sock: directory /nonexistent/dir does not exist"
        );
    }

    #[test]
    fn table_counts_connections_not_established() {
        let mut s = sample();
        s.not_established = 3;
        let t = format_table(&s);
        assert_eq!(
            t.lines().next().unwrap(),
            "gaptun client on 0.0.0.0:40000: 1 connection(s) (+3 handshaking or closing), receive window 32.0M"
        );
    }

    #[test]
    fn json_format_round_trips() {
        let s = serde_json::to_string(&sample()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["role"], "client");
        assert_eq!(v["connections"][0]["packets_retransmitted"], 5);
        assert_eq!(v["connections"][0]["rtt_ms"], 61.25);
        assert_eq!(v["connections"][0]["id"], 3);
        assert_eq!(v["connections"][0]["cipher"], "aes-256-gcm");
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0");
        assert_eq!(human_bytes(1023), "1023");
        assert_eq!(human_bytes(1024), "1.0K");
        assert_eq!(human_bytes(5 << 30), "5.0G");
    }

    #[tokio::test]
    async fn socket_is_private_and_refuses_a_second_daemon() {
        let dir = std::env::temp_dir().join(format!("gaptun-ctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.sock");
        let sock = CtlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(CtlSocket::bind(&path), Err(CtlError::InUse(_))));
        // A listener that goes away without removing its file leaves a stale socket.
        std::mem::forget(sock);
        let stale = CtlSocket::bind(&path);
        // Still answered by the forgotten (live) listener: refused.
        assert!(matches!(stale, Err(CtlError::InUse(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn stale_socket_is_replaced() {
        let dir = std::env::temp_dir().join(format!("gaptun-ctl-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.sock");
        // A socket file with nobody listening.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let sock = CtlSocket::bind(&path).unwrap();
        assert_eq!(sock.path(), path);
        drop(sock);
        assert!(!path.exists());
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            CtlSocket::bind(&path),
            Err(CtlError::NotASocket(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn request_and_answer_over_the_socket() {
        let dir = std::env::temp_dir().join(format!("gaptun-ctl-rr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let sock = CtlSocket::bind(&path).unwrap();
        let server = tokio::spawn(sock.serve(|line: &str| match parse_command(line) {
            Ok(Command::Wnd(n)) => format!("ok {n}\n"),
            Ok(Command::Stats { json }) => format!("stats json={json}\n"),
            Ok(Command::Top) => "top\n".into(),
            Err(e) => format!("error: {e}\n"),
        }));
        assert_eq!(request(&path, "wnd 2M").await.unwrap(), "ok 2097152\n");
        assert_eq!(
            request(&path, "stats json").await.unwrap(),
            "stats json=true\n"
        );
        assert!(
            request(&path, "bogus")
                .await
                .unwrap()
                .starts_with("error: unknown command")
        );
        server.abort();
        let _ = server.await;
        assert!(!path.exists(), "socket file removed when the server stops");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn request_to_missing_daemon_is_clear() {
        let e = request(Path::new("/nonexistent/gaptun.sock"), "stats")
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("no gaptun daemon answers on /nonexistent/gaptun.sock")
        );
    }
}
