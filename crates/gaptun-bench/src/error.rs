//! The harness's error type.

use std::io;

/// Everything that can go wrong while setting up or running a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An external command exited unsuccessfully.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of its standard error.
        stderr: String,
    },
    /// A command did not finish in its time budget.
    #[error("`{0}` timed out")]
    Timeout(String),
    /// Output of a tool could not be understood.
    #[error("could not parse {what}: {detail}")]
    Parse {
        /// Which output.
        what: String,
        /// Why.
        detail: String,
    },
    /// A required tool or binary is missing.
    #[error("missing prerequisite: {0}")]
    Missing(String),
    /// A bad command-line value.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The run was interrupted (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}

/// Result alias used across the harness.
pub type Result<T> = std::result::Result<T, BenchError>;

/// Adds context to an `io::Error`.
pub trait IoContext<T> {
    /// Wraps the error with a description of what was being done.
    fn ctx(self, context: impl Into<String>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| BenchError::Io {
            context: context.into(),
            source,
        })
    }
}
