//! Errors of the TLS and QUIC carriers.

use std::io;
use std::path::PathBuf;

/// What went wrong setting a carrier up.
#[derive(Debug, thiserror::Error)]
pub enum CarrierError {
    /// A socket could not be bound or connected.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The TLS or QUIC configuration was refused (bad certificate or key, for instance).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A certificate or key file could not be read or written.
    #[error("certificate file {path}: {reason}")]
    CertFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The server refused or closed the carrier connection.
    #[error("carrier connection refused: {0}")]
    Refused(String),
}

impl CarrierError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
