//! The harness's TLS and QUIC systems (issue 11) are listed, selected by name, started and
//! measured: one short `gaptun-bench run` of `gaptun-tls` and `gaptun-quic` (with `gaptun-bbr`
//! over UDP beside them) in the loopback scenario, with the workspace's debug `gaptun` binary.
//!
//! Needs root (the harness makes network namespaces), `ip` and `iperf3`, as the other
//! namespace tests of the workspace do (`scripts/setup.sh` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_gaptun-bench");

/// The `gaptun` binary of the same profile (the workspace's target directory holds both);
/// built when missing, as `cargo test -p gaptun-bench` alone does not build it.
fn gaptun_binary() -> PathBuf {
    let dir = Path::new(BENCH).parent().expect("binary directory");
    let bin = dir.join("gaptun");
    if !bin.is_file() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "gaptun", "--bin", "gaptun"])
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build -p gaptun failed");
    }
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

#[test]
fn list_names_the_carrier_systems() {
    let out = Command::new(BENCH).arg("list").output().expect("run list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["gaptun-tls", "gaptun-quic", "gaptun-bbr", "tcp-bbr"] {
        assert!(
            text.lines().any(|l| l.trim() == name),
            "{name} not listed:\n{text}"
        );
    }
}

#[test]
fn tls_and_quic_systems_start_and_carry_a_transfer_on_loopback() {
    let gaptun = gaptun_binary();
    let dir = std::env::temp_dir().join(format!("gaptun-bench-carriers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let json = dir.join("results.json");
    let out = Command::new(BENCH)
        .arg("run")
        .args(["--scenarios", "loopback"])
        .args(["--systems", "gaptun-tls,gaptun-quic,gaptun-bbr"])
        .args(["--tests", "1up", "--seconds", "2", "--warmup", "1"])
        .args(["--latency-count", "20", "--no-install", "--no-build"])
        .arg("--gaptun")
        .arg(&gaptun)
        .arg("--json")
        .arg(&json)
        .arg("--md")
        .arg(dir.join("report.md"))
        .arg("--img-dir")
        .arg(dir.join("img"))
        .output()
        .expect("run gaptun-bench");
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "gaptun-bench run failed:\n{log}");
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("results")).expect("json");
    let scenario = &run["scenarios"][0];
    assert_eq!(scenario["scenario"]["id"], "loopback", "{log}");
    assert!(scenario["error"].is_null(), "{log}");
    let systems = scenario["systems"].as_array().expect("systems");
    let mut names: Vec<&str> = systems
        .iter()
        .map(|s| s["system"].as_str().expect("name"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["gaptun-bbr", "gaptun-quic", "gaptun-tls"], "{log}");
    for s in systems {
        let name = &s["system"];
        assert_eq!(
            s["notes"].as_array().map(Vec::len),
            Some(0),
            "{name}: {log}"
        );
        let bulk = &s["bulk"][0];
        assert!(bulk["error"].is_null(), "{name}: {bulk}\n{log}");
        let mbit = bulk["mbit"].as_f64().expect("goodput");
        assert!(mbit > 1.0, "{name}: {mbit} Mbit/s\n{log}");
        let latency = &s["latency_forward"];
        assert!(
            latency["p50_ms"].as_f64().is_some_and(|p| p > 0.0),
            "{name}: latency {latency}\n{log}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
