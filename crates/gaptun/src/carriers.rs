//! The TLS and QUIC carriers of the daemons (`--carrier tls|quic|all`): made here, then driven
//! by the same endpoint as UDP and fake TCP (see `faketcp_wiring`), so one server accepts every
//! carrier and a connection can move between them.
//!
//! The core adapts per path: on a path over TLS (a reliable carrier) it does no retransmission
//! nor congestion window of its own (see `docs/protocol.md`, "Reliable carriers").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use gaptun_carriers::{
    CertSource, Decoy, Keys, QuicCarrier, QuicClientConfig, QuicServerConfig, TlsCarrier,
    TlsClientConfig, TlsServerConfig, load_or_generate,
};
use gaptun_proto::Psk;
use gaptun_runtime::{Carrier, LateCarrier};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::settings::{ClientWebCarriers, ServerWebCarriers};
use crate::values::{CarrierChoice, CarrierKind, CarrierServer};

/// The port of the server's TLS and QUIC carriers when `--tls-server` / `--quic-server` do
/// not say (the server's `--tls-listen` and `--quic-listen` default to it too).
const WEB_PORT: u16 = 443;

/// `--carrier auto`: first wait after a TLS or QUIC carrier failed to connect, doubling up to
/// [`LATE_RETRY_MAX`]. A carrier blocked at start may open later; one the server does not
/// offer costs a connection attempt every half minute.
const LATE_RETRY_FIRST: Duration = Duration::from_secs(1);
const LATE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Name in a self-signed certificate: ordinary, and what a local test client expects.
const SELF_SIGNED_NAME: &str = "localhost";

/// The server's TLS and QUIC carriers that `choice` asks for (none for udp or faketcp).
/// `state_dir` keeps the self-signed certificate when no `--tls-cert` is given.
pub async fn server_carriers(
    choice: CarrierChoice,
    web: &ServerWebCarriers,
    keys: &[Psk],
    state_dir: Option<PathBuf>,
) -> Result<Vec<Arc<dyn Carrier>>> {
    let mut out: Vec<Arc<dyn Carrier>> = Vec::new();
    if !choice.tls() && !choice.quic() {
        return Ok(out);
    }
    let source = match &web.cert {
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
    let cert = load_or_generate(&source)?;
    let token_keys = Keys::new(keys);
    if choice.tls() {
        let decoy = match &web.decoy {
            Some(d) => Decoy::Proxy(
                tokio::net::lookup_host(d.as_str())
                    .await
                    .with_context(|| format!("decoy {d}"))?
                    .next()
                    .ok_or_else(|| anyhow!("decoy {d}: no address"))?,
            ),
            None => Decoy::NotFound,
        };
        let tls = TlsCarrier::listen(TlsServerConfig {
            listen: web.tls_listen,
            cert: cert.clone(),
            keys: token_keys.clone(),
            decoy,
        })
        .await?;
        info!(listen = %tls.local_addr()?, "TLS carrier listening");
        out.push(Arc::new(tls));
    }
    if choice.quic() {
        let quic = QuicCarrier::listen(QuicServerConfig {
            listen: web.quic_listen,
            cert,
            keys: token_keys,
        })
        .await?;
        info!(listen = %quic.local_addr()?, "QUIC carrier listening");
        out.push(Arc::new(quic));
    }
    Ok(out)
}

/// A client's TLS or QUIC carrier to `server` (the server's TLS or QUIC address), as `choice`
/// says; `None` for the other carriers.
pub async fn client_carrier(
    choice: CarrierChoice,
    server: SocketAddr,
    web: &ClientWebCarriers,
    key: &Psk,
) -> Result<Option<Arc<dyn Carrier>>> {
    let keys = Keys::new(std::slice::from_ref(key));
    Ok(match choice {
        CarrierChoice::Tls => Some(Arc::new(
            TlsCarrier::connect(TlsClientConfig {
                server,
                sni: web.sni.clone(),
                connections: web.tls_connections,
                keys,
            })
            .await?,
        )),
        CarrierChoice::Quic => Some(Arc::new(
            QuicCarrier::connect(QuicClientConfig {
                server,
                sni: web.sni.clone(),
                keys,
            })
            .await?,
        )),
        CarrierChoice::Udp
        | CarrierChoice::Faketcp
        | CarrierChoice::All
        | CarrierChoice::Auto
        | CarrierChoice::ByOffer => None,
    })
}

/// `--carrier auto`: where the server's TLS or QUIC carrier is. `spec` is `--tls-server` or
/// `--quic-server` (a port is on `server`'s host); `None`: port 443 there.
pub async fn web_peer(spec: Option<&CarrierServer>, server: SocketAddr) -> Result<SocketAddr> {
    let spec = match spec {
        None => return Ok(SocketAddr::new(server.ip(), WEB_PORT)),
        Some(CarrierServer::Port(port)) => return Ok(SocketAddr::new(server.ip(), *port)),
        Some(CarrierServer::HostPort(spec)) => spec,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(spec.as_str())
        .await
        .with_context(|| format!("resolving {spec}"))?
        .collect();
    // The same address family as the server's, so the paths share the pool's.
    addrs
        .iter()
        .find(|a| a.is_ipv4() == server.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("{spec}: no address"))
}

/// `--carrier auto`: connects a TLS or QUIC carrier to `peer` in the background, trying again
/// with back-off while it fails, and hands it over on `ready` once it is up; ends then, or when
/// the receiver is gone. The handshake over the other carriers goes on meanwhile, so a carrier
/// that does not answer (a dropped SYN takes the full connect timeout) delays nothing.
/// Aborting the returned handle stops the attempts (a remembered offer the server no longer
/// makes); `None` for a kind that needs no connection.
pub fn connect_in_background(
    kind: CarrierKind,
    peer: SocketAddr,
    web: ClientWebCarriers,
    key: Psk,
    ready: mpsc::UnboundedSender<LateCarrier>,
) -> Option<tokio::task::AbortHandle> {
    let choice = match kind {
        CarrierKind::Tls => CarrierChoice::Tls,
        CarrierKind::Quic => CarrierChoice::Quic,
        CarrierKind::Udp | CarrierKind::Faketcp => return None,
    };
    let task = tokio::spawn(async move {
        let mut wait = LATE_RETRY_FIRST;
        let mut failures = 0u32;
        loop {
            let attempt = tokio::select! {
                a = client_carrier(choice, peer, &web, &key) => a,
                () = ready.closed() => return,
            };
            match attempt {
                Ok(Some(carrier)) => {
                    info!(carrier = kind.name(), %peer, "carrier auto: connected");
                    let _ = ready.send((carrier, peer));
                    return;
                }
                Ok(None) => return,
                Err(e) => {
                    // Said once at info; a server that does not offer it would repeat it
                    // every half minute.
                    if failures == 0 {
                        info!(
                            carrier = kind.name(),
                            %peer,
                            "carrier auto: not reachable yet, trying again in the background: {e:#}"
                        );
                    } else {
                        debug!(carrier = kind.name(), %peer, "carrier auto: {e:#}");
                    }
                    failures += 1;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = ready.closed() => return,
            }
            wait = (wait * 2).min(LATE_RETRY_MAX);
        }
    });
    Some(task.abort_handle())
}
