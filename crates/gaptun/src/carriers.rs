//! The daemons' carriers (`--carrier udp|tls|quic`): the endpoints a server listens on, and the
//! endpoint a client's pool connects through.
//!
//! A server runs one endpoint per carrier (each with its own accept loop); the protocol core
//! then adapts to each carrier on its own (on tls: no retransmission nor congestion window of
//! its own, see `docs/protocol.md`, "Reliable carriers").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use gaptun_carriers::{
    CertSource, Decoy, Keys, QuicCarrier, QuicClientConfig, QuicServerConfig, TlsCarrier,
    TlsClientConfig, TlsServerConfig, load_or_generate,
};
use gaptun_proto::EndpointConfig;
use gaptun_runtime::{Carrier, ClientPool, PoolConfig, RtEndpoint};
use tracing::info;

use crate::settings::{ClientSettings, ServerCarriers};
use crate::values::CarrierName;

/// Name in a self-signed certificate: ordinary, and what a local test client expects.
const SELF_SIGNED_NAME: &str = "localhost";

/// Binds every carrier of the server. `udp` binds `listen`; `config_for` gives each
/// endpoint's configuration from its listening address (the replay state file is per port
/// and carrier).
pub async fn listen(
    carriers: &ServerCarriers,
    listen: SocketAddr,
    keys: &[gaptun_proto::Psk],
    state_dir: Option<PathBuf>,
    config_for: impl Fn(SocketAddr, CarrierName) -> EndpointConfig,
) -> Result<Vec<RtEndpoint>> {
    let mut out = Vec::new();
    let needs_cert = carriers
        .kinds
        .iter()
        .any(|k| matches!(k, CarrierName::Tls | CarrierName::Quic));
    let cert = if needs_cert {
        let source = match &carriers.cert {
            Some((cert, key)) => CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            None => CertSource::SelfSigned {
                dir: state_dir.context(
                    "no state directory for the self-signed certificate: give --tls-cert and \
                     --tls-key, or set STATE_DIRECTORY, XDG_STATE_HOME or HOME",
                )?,
                name: SELF_SIGNED_NAME.into(),
            },
        };
        Some(load_or_generate(&source)?)
    } else {
        None
    };
    let decoy = match &carriers.decoy {
        Some(d) => Decoy::Proxy(
            tokio::net::lookup_host(d.as_str())
                .await
                .with_context(|| format!("decoy {d}"))?
                .next()
                .ok_or_else(|| anyhow!("decoy {d}: no address"))?,
        ),
        None => Decoy::NotFound,
    };
    let token_keys = Keys::new(keys);
    for &kind in &carriers.kinds {
        let (carrier, addr): (Option<Arc<dyn Carrier>>, SocketAddr) = match kind {
            CarrierName::Udp => (None, listen),
            CarrierName::Tls => {
                let c = TlsCarrier::listen(TlsServerConfig {
                    listen: carriers.tls_listen,
                    cert: cert.clone().context("certificate")?,
                    keys: token_keys.clone(),
                    decoy: decoy.clone(),
                })
                .await?;
                (Some(Arc::new(c)), carriers.tls_listen)
            }
            CarrierName::Quic => {
                let c = QuicCarrier::listen(QuicServerConfig {
                    listen: carriers.quic_listen,
                    cert: cert.clone().context("certificate")?,
                    keys: token_keys.clone(),
                })
                .await?;
                (Some(Arc::new(c)), carriers.quic_listen)
            }
        };
        let config = config_for(addr, kind);
        let endpoint = match carrier {
            None => RtEndpoint::bind(addr, config)
                .map_err(|e| crate::daemon::bind_error(&e, addr, "tunnel"))?,
            Some(c) => RtEndpoint::with_carriers(vec![c], config)
                .with_context(|| format!("{} endpoint", kind.name()))?,
        };
        info!(carrier = kind.name(), listen = %endpoint.local_addr(), "carrier listening");
        out.push(endpoint);
    }
    Ok(out)
}

/// Connects a client's pool over its carrier.
pub async fn connect(
    s: &ClientSettings,
    config: EndpointConfig,
    pool: PoolConfig,
) -> Result<ClientPool> {
    let failed = |e: &dyn std::fmt::Display| anyhow!("cannot connect to {}: {e}", s.server);
    if s.carrier.kind == CarrierName::Udp {
        return ClientPool::connect(&s.server, config, pool)
            .await
            .map_err(|e| failed(&e));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(s.server.as_str())
        .await
        .map_err(|e| failed(&e))?
        .collect();
    // The pool prefers IPv4 too: the carrier's peer and the pool's must be the same address.
    let server = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| failed(&"no address"))?;
    let keys = Keys::new(&config.psks);
    let carrier: Arc<dyn Carrier> = if s.carrier.kind == CarrierName::Tls {
        Arc::new(
            TlsCarrier::connect(TlsClientConfig {
                server,
                sni: s.carrier.sni.clone(),
                connections: s.carrier.tls_connections,
                keys,
            })
            .await
            .map_err(|e| failed(&e))?,
        )
    } else {
        Arc::new(
            QuicCarrier::connect(QuicClientConfig {
                server,
                sni: s.carrier.sni.clone(),
                keys,
            })
            .await
            .map_err(|e| failed(&e))?,
        )
    };
    let endpoint = RtEndpoint::with_carriers(vec![carrier], config).map_err(|e| failed(&e))?;
    ClientPool::with_endpoint(endpoint, &server.to_string(), pool)
        .await
        .map_err(|e| failed(&e))
}
