//! Helpers shared by the carriers' loopback tests: the key, a self-signed certificate, a TLS
//! server and client on loopback.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;

use gaptun_carriers::{
    CertKey, CertSource, Decoy, Keys, TlsCarrier, TlsClientConfig, TlsServerConfig,
    load_or_generate,
};
use gaptun_runtime::Carrier;
use gaptun_runtime::proto::Psk;

/// The gaptun key of every test endpoint and carrier.
pub fn key() -> Psk {
    Psk::from_bytes([42; 32])
}

/// An empty state directory of this process for `name`.
pub fn state_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gaptun-carriers-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A self-signed certificate made in a scratch directory that is removed again.
pub fn cert(name: &str) -> CertKey {
    let dir = state_dir(name);
    let cert = load_or_generate(&CertSource::SelfSigned {
        dir: dir.clone(),
        name: "localhost".into(),
    })
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    cert
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A TLS server carrier on loopback (plain 404 for probers) and a client carrier connected to
/// it over `connections` TCP connections; the server's address last.
pub async fn tls_pair(name: &str, connections: usize) -> (TlsCarrier, TlsCarrier, SocketAddr) {
    let server = TlsCarrier::listen(TlsServerConfig {
        listen: loopback(),
        cert: cert(name),
        keys: Keys::new(&[key()]),
        decoy: Decoy::NotFound,
    })
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let client = TlsCarrier::connect(TlsClientConfig {
        server: addr,
        sni: "www.example.com".into(),
        connections,
        keys: Keys::new(&[key()]),
    })
    .await
    .unwrap();
    (server, client, addr)
}
