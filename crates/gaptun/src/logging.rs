//! Log setup: human-readable or JSON lines on stderr, level from `--log`, the config file's
//! `log`, or `RUST_LOG`, in that order.
//!
//! Two things an operator meets here: stderr may be a pipe that closes (`gaptun client … 2>&1 |
//! head -1`), and it may be a file, a pipe or journald rather than a terminal. Logging must never
//! bring the daemon down in the first case (the write error is dropped, the tunnel keeps running
//! and still shuts down cleanly), and must not put colour codes where nobody renders them in the
//! second.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use anyhow::{Result, anyhow};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::values::LogFormat;

/// Set once JSON logging is installed: fatal errors then go out as a JSON event too.
static JSON: AtomicBool = AtomicBool::new(false);

/// Warnings found while reading settings, before logging exists (its level and format are
/// settings too); [`init`] logs them.
static DEFERRED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Logs `warning` at WARN once logging is set up.
pub fn defer_warning(warning: String) {
    DEFERRED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(warning);
}

/// Picks the filter text: explicit choices first, then `RUST_LOG`, then `fallback`.
pub fn filter_text(
    cli: Option<&str>,
    file: Option<&str>,
    env: Option<&str>,
    fallback: &str,
) -> String {
    cli.or(file)
        .or(env.filter(|e| !e.trim().is_empty()))
        .unwrap_or(fallback)
        .to_owned()
}

/// Whether log lines get ANSI colour: only on a terminal, and not when the user asked for none
/// (`NO_COLOR` set to anything non-empty, see no-color.org) or the terminal cannot show it
/// (`TERM=dumb`).
pub fn use_colour(is_terminal: bool, no_color: Option<&str>, term: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty) && term != Some("dumb")
}

/// stderr as a log sink that swallows write errors: a closed pipe (EPIPE) or a full disk must
/// not panic or abort the daemon, and there is nowhere else to report them.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for QuietStderr {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        Self
    }
}

/// Installs the global subscriber.
pub fn init(filter: &str, format: LogFormat) -> Result<()> {
    let filter =
        EnvFilter::try_new(filter).map_err(|e| anyhow!("invalid log level `{filter}`: {e}"))?;
    let no_color = std::env::var("NO_COLOR").ok();
    let term = std::env::var("TERM").ok();
    let colour = use_colour(
        io::stderr().is_terminal(),
        no_color.as_deref(),
        term.as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(QuietStderr)
        // Its own error reports go to stderr with `eprintln!`, which panics on a closed pipe.
        .log_internal_errors(false);
    let result = match format {
        LogFormat::Text => builder.with_ansi(colour).try_init(),
        LogFormat::Json => builder.with_ansi(false).json().try_init(),
    };
    result.map_err(|e| anyhow!("cannot set up logging: {e}"))?;
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    let deferred = std::mem::take(&mut *DEFERRED.lock().unwrap_or_else(PoisonError::into_inner));
    for warning in deferred {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// Reports the error that ends the program: `gaptun: <message>` on stderr, or with JSON logging
/// one JSON event with the message in an `error` field, so that log collectors see why the
/// daemon stopped. Never panics, even when stderr is closed.
pub fn fatal(e: &anyhow::Error) {
    if JSON.load(Ordering::Relaxed) {
        tracing::error!(error = %format!("{e:#}"), "gaptun stopped");
    } else {
        let _ = writeln!(io::stderr(), "gaptun: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        assert_eq!(
            filter_text(Some("debug"), Some("warn"), Some("trace"), "info"),
            "debug"
        );
        assert_eq!(
            filter_text(None, Some("warn"), Some("trace"), "info"),
            "warn"
        );
        assert_eq!(filter_text(None, None, Some("trace"), "info"), "trace");
        assert_eq!(filter_text(None, None, Some(" "), "info"), "info");
        assert_eq!(filter_text(None, None, None, "info"), "info");
    }

    #[test]
    fn bad_level_is_reported() {
        let e = init("gaptun=[", LogFormat::Text).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid log level `gaptun=[`"),
            "{e}"
        );
    }

    #[test]
    fn colour_only_on_a_capable_terminal() {
        assert!(use_colour(true, None, Some("xterm-256color")));
        assert!(use_colour(true, Some(""), None));
        assert!(
            !use_colour(false, None, Some("xterm")),
            "file, pipe, journald"
        );
        assert!(!use_colour(true, Some("1"), Some("xterm")), "NO_COLOR");
        assert!(!use_colour(true, None, Some("dumb")), "TERM=dumb");
    }
}
