//! Log setup: human-readable or JSON lines on stderr, level from `--log`, the config file's
//! `log`, or `RUST_LOG`, in that order.

use anyhow::{Result, anyhow};
use tracing_subscriber::EnvFilter;

use crate::values::LogFormat;

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

/// Installs the global subscriber.
pub fn init(filter: &str, format: LogFormat) -> Result<()> {
    let filter =
        EnvFilter::try_new(filter).map_err(|e| anyhow!("invalid log level `{filter}`: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow!("cannot set up logging: {e}"))
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
}
