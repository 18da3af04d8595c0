//! Prerequisites: root, tools installed with apt-get when missing, the gaptun binary, and a
//! description of the machine for the report.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{BenchError, Result};
use crate::procs;
use crate::results::Machine;
use crate::systems::gaptun;

/// Fails unless running as root (namespaces and TUN need it).
pub fn require_root() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(str::to_string));
    if uid.as_deref() == Some("0") {
        Ok(())
    } else {
        Err(BenchError::Missing("root (run with sudo)".into()))
    }
}

/// Sets this thread's nice value. Linux keeps the value per thread and hands it down to the
/// threads and processes a thread creates, so calling this from the main thread before anything
/// is started puts the emulator, the daemons and the measuring programs at that priority.
/// `renice -p` on our PID changes exactly the main thread (its thread ID is the PID).
pub fn set_nice(nice: i32) -> Result<()> {
    let pid = std::process::id().to_string();
    procs::run(
        Command::new("renice").args(["-n", &nice.to_string(), "-p", &pid]),
        Duration::from_secs(10),
    )?;
    Ok(())
}

/// True if `program` is on PATH.
pub fn has(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Installs the Debian packages providing missing tools (`iperf3`; `kcptun` when a kcptun
/// system is measured, so a run of other systems does not need it).
pub fn ensure_tools(install: bool, kcptun: bool) -> Result<()> {
    let mut missing = Vec::new();
    if !has("iperf3") {
        missing.push("iperf3");
    }
    if kcptun && (!has("kcptun-client") || !has("kcptun-server")) {
        missing.push("kcptun");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !install {
        return Err(BenchError::Missing(missing.join(", ")));
    }
    eprintln!("installing {} with apt-get", missing.join(", "));
    let limit = Duration::from_secs(600);
    procs::run(Command::new("apt-get").args(["update", "-qq"]), limit)?;
    procs::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args(&missing),
        limit,
    )?;
    Ok(())
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, else `$HOME/.cargo/bin`.
fn cargo_bin_dir() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin"))
}

/// rathole on PATH or in cargo's bin directory.
fn locate_rathole() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("rathole"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        cargo_bin_dir()
            .map(|d| d.join("rathole"))
            .filter(|p| p.is_file())
    })
}

/// rathole for the expose scenario: found on PATH or in cargo's bin directory, else (with
/// `install`) built with `cargo install rathole`, the way kcptun comes from apt-get. Only the
/// TCP transport is compared, so only the `server` and `client` features are built (no TLS
/// library needed). `--locked` is tried first; rathole 0.5.0's lock file pins `time` 0.3.29,
/// which newer compilers reject (E0282 in `format_description`), so on failure the install is
/// retried with freshly resolved dependencies. `Err` says why rathole is skipped.
pub fn find_rathole(install: bool) -> Result<PathBuf> {
    if let Some(p) = locate_rathole() {
        return Ok(p);
    }
    if !install {
        return Err(BenchError::Missing(
            "rathole (cargo install rathole)".into(),
        ));
    }
    let limit = Duration::from_secs(1800);
    let features = ["--no-default-features", "--features", "server,client"];
    eprintln!("rathole not found: cargo install rathole --locked (a few minutes)");
    let locked = procs::run(
        Command::new("cargo")
            .args(["install", "rathole", "--locked"])
            .args(features),
        limit,
    );
    if let Err(e) = locked {
        eprintln!("cargo install rathole --locked failed ({e}); again without --locked");
        procs::run(
            Command::new("cargo")
                .args(["install", "rathole"])
                .args(features),
            limit,
        )?;
    }
    locate_rathole().ok_or_else(|| {
        BenchError::Missing("rathole (cargo install finished but no binary found)".into())
    })
}

/// Finds a usable gaptun binary: `path` (building `-p gaptun` in release mode if it is absent
/// and `build` is set), then checks that `gaptun keygen` works. `Err` says why gaptun is skipped.
pub fn find_gaptun(path: &Path, build: bool) -> Result<PathBuf> {
    if !path.is_file() && build {
        eprintln!(
            "{} not found: cargo build --release -p gaptun",
            path.display()
        );
        procs::run(
            Command::new("cargo").args(["build", "--release", "-p", "gaptun"]),
            Duration::from_secs(1800),
        )?;
    }
    if !path.is_file() {
        return Err(BenchError::Missing(format!(
            "gaptun binary {}",
            path.display()
        )));
    }
    let abs = std::fs::canonicalize(path).map_err(|e| BenchError::Io {
        context: format!("canonicalize {}", path.display()),
        source: e,
    })?;
    gaptun::keygen(&abs)?;
    Ok(abs)
}

fn first_line(cmd: &mut Command) -> String {
    procs::run_unchecked(cmd, Duration::from_secs(5))
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// CPU model, cores, kernel and tool versions.
pub fn machine(gaptun: Option<&Path>, rathole: Option<&Path>) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".to_string(), |(_, v)| v.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string());
    let mut tools = vec![
        first_line(Command::new("iperf3").arg("-v")),
        first_line(Command::new("kcptun-client").arg("-v")),
    ];
    if let Some(g) = gaptun {
        tools.push(format!(
            "gaptun {}",
            first_line(Command::new(g).arg("--version"))
        ));
    }
    if let Some(r) = rathole {
        tools.push(first_line(Command::new(r).arg("--version")));
    }
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        kernel,
        tools: tools.into_iter().filter(|t| !t.is_empty()).collect(),
    }
}

/// Current UTC date and time (via `date`, to avoid a time crate).
pub fn now_utc() -> String {
    first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
}
