//! The `gaptun` binary's error behaviour: one clear line on stderr and a non-zero exit status.
//! These need nothing from the protocol core.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn gaptun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gaptun"))
        .args(args)
        .env_remove("GAPTUN_KEY")
        .env_remove("RUST_LOG")
        .env(
            "STATE_DIRECTORY",
            std::env::temp_dir().join("gaptun-test-state"),
        )
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gaptun-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn unknown_option_exits_2() {
    let o = gaptun(&["client", "--sever", "h:1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unexpected argument '--sever'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_config_key_names_file_and_line() {
    let p = temp(
        "bad.toml",
        "server = \"h:1\"\nmode = \"fast\"\nwindw = \"32M\"\n",
    );
    let o = gaptun(&["client", "--config", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let expected = format!(
        "gaptun: config {} line 3: unknown field `windw`",
        p.display()
    );
    assert!(err.starts_with(&expected), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn bad_config_value_names_line() {
    let p = temp("badval.toml", "listen = \"0.0.0.0:1\"\n\nmtu = 99999999\n");
    let o = gaptun(&["server", "--config", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("line 3: "), "{}", stderr(&o));
}

#[test]
fn missing_key_is_one_line() {
    let o = gaptun(&["client", "--server", "127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("gaptun: no key given: use --key"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn ctl_without_daemon_fails_clearly() {
    let o = gaptun(&["ctl", "--socket", "/nonexistent/gaptun.sock", "stats"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("gaptun: no gaptun daemon answers on /nonexistent/gaptun.sock"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_lists_the_commands() {
    let o = gaptun(&["--help"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for cmd in ["server", "client", "demo", "keygen", "ctl"] {
        assert!(out.contains(cmd), "{out}");
    }
}
