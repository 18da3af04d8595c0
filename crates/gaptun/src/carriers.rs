//! The TLS and QUIC carriers of the daemons (`--carrier tls|quic|all`): made here, then driven
//! by the same endpoint as UDP and fake TCP (see `faketcp_wiring`), so one server accepts every
//! carrier and a connection can move between them.
//!
//! The core adapts per path: on a path over TLS (a reliable carrier) it does no retransmission
//! nor congestion window of its own (see `docs/protocol.md`, "Reliable carriers").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use gaptun_carriers::{
    CertSource, Decoy, Keys, QuicCarrier, QuicClientConfig, QuicServerConfig, TlsCarrier,
    TlsClientConfig, TlsServerConfig, load_or_generate,
};
use gaptun_proto::Psk;
use gaptun_runtime::Carrier;
use tracing::info;

use crate::settings::{ClientWebCarriers, ServerWebCarriers};
use crate::values::CarrierChoice;

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
        CarrierChoice::Udp | CarrierChoice::Faketcp | CarrierChoice::All | CarrierChoice::Auto => {
            None
        }
    })
}
