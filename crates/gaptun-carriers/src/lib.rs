//! gaptun carriers that look like ordinary web traffic to an observer: TLS 1.3 over TCP
//! ([`TlsCarrier`], port 443 by default) and QUIC with ALPN `h3` ([`QuicCarrier`], gaptun packets
//! in QUIC DATAGRAM frames). Both implement the runtime's [`Carrier`](gaptun_runtime::Carrier).
//!
//! The outer TLS or QUIC layer only disguises: the client accepts any certificate, because the
//! gaptun handshake inside authenticates the server by its key, as on every carrier. What tells a
//! gaptun client from a browser or a scanner is a [`token`] the client sends first, which only a
//! holder of a gaptun key can make; everyone else is handed to a decoy web server or gets a plain
//! 404 page (see [`probe`]).

mod auth;
mod cert;
mod error;
mod hub;
mod probe;
mod quic;
mod tls;
mod tls_config;

pub use auth::Keys;
pub use cert::{CertKey, CertSource, load_or_generate};
pub use error::CarrierError;
pub use probe::Decoy;
pub use quic::{MAX_GAPTUN_DATAGRAM, QuicCarrier, QuicClientConfig, QuicServerConfig};
pub use tls::{TlsCarrier, TlsClientConfig, TlsServerConfig};

/// The SNI a client sends unless told otherwise: an ordinary name, nothing that says gaptun.
pub const DEFAULT_SNI: &str = "www.example.com";

/// Default port of both carriers: where HTTPS and HTTP/3 live.
pub const DEFAULT_PORT: u16 = 443;

/// The token module, public for its documentation: what a gaptun client sends first.
pub mod token {
    pub use crate::auth::TOKEN_LEN;
}
