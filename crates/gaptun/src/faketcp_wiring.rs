//! `--carrier`: the endpoint's carriers (UDP, fake TCP, both, and on a server TLS and QUIC
//! beside them) for the daemons.
//!
//! Fake TCP uses the same port number as UDP (TCP ports are a separate space), so `--listen`
//! and `--server` name both. Its segments carry 24 bytes more header than UDP datagrams
//! (TCP with timestamps against UDP), so the largest datagram is made that much smaller and a
//! packet on the wire keeps the size `--mtu` was chosen for. With `--route-mtu`, fake TCP, as
//! UDP, takes each connection's ceiling from its route (64 KB segments on loopback).
//!
//! Fake TCP runs over IPv4 or IPv6, after the address: `--listen [::]:PORT` listens over IPv6
//! (only; `0.0.0.0` over IPv4 only), and a client uses the server's IPv4 address when the name
//! has one, its IPv6 address otherwise (or the IPv6 address given).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use gaptun_faketcp::{ClientConfig, FakeTcpSocket, ServerConfig, Timing};
use gaptun_proto::EndpointConfig;
use gaptun_runtime::{Carrier, LateCarrier, ListenRange, RtEndpoint, ServerTarget, UdpCarrier};
use tokio::sync::mpsc;
use tracing::info;

use crate::settings::ClientSettings;
use crate::values::{CarrierChoice, CarrierKind, CarrierList, CarrierServer};
use gaptun_proto::handshake::CarrierOffer;

/// `--carrier auto` without `--carriers`: the order, most preferred first (fake TCP
/// only where raw sockets may be opened; TLS and QUIC only once they connect).
const DEFAULT_AUTO: [CarrierKind; 4] = [
    CarrierKind::Udp,
    CarrierKind::Faketcp,
    CarrierKind::Quic,
    CarrierKind::Tls,
];

/// The client's endpoint: its carriers, the carrier order of `--carrier auto` (empty
/// otherwise) and, with `auto`, the TLS and QUIC carriers as they connect.
pub struct ClientEndpoint {
    pub endpoint: RtEndpoint,
    pub order: Vec<&'static str>,
    pub late: Option<mpsc::UnboundedReceiver<LateCarrier>>,
    /// Without `--carrier`: what follows the offer once connected (see
    /// [`crate::daemon::follow_offer`]).
    pub by_offer: Option<ByOffer>,
}

/// A client without `--carrier`: what it started with, and how to add carriers later.
pub struct ByOffer {
    /// The server's address (the TLS and QUIC carriers are on its host).
    pub server: SocketAddr,
    /// The carriers opened or connecting, in fallback order.
    pub started: Vec<CarrierKind>,
    /// The TLS and QUIC carriers connecting (or connected) in the background.
    pub attempts: Vec<Attempt>,
    /// The offer remembered from the last run, if any.
    pub remembered: Option<CarrierOffer>,
    /// Where the offer is remembered; `None`: no state directory.
    pub state_file: Option<std::path::PathBuf>,
    /// Hands a carrier connected later to the pool.
    pub ready: mpsc::UnboundedSender<LateCarrier>,
}

/// A TLS or QUIC carrier connecting in the background to `peer`.
pub struct Attempt {
    pub kind: CarrierKind,
    pub peer: SocketAddr,
    pub handle: tokio::task::AbortHandle,
}

impl Attempt {
    /// Starts connecting carrier `kind` to `peer` in the background, handing it to `ready`
    /// once it is up; `None` for a carrier that needs no such attempt (UDP, fake TCP).
    pub fn start(
        kind: CarrierKind,
        peer: SocketAddr,
        s: &ClientSettings,
        ready: &mpsc::UnboundedSender<LateCarrier>,
    ) -> Option<Self> {
        let handle = crate::carriers::connect_in_background(
            kind,
            peer,
            s.web.clone(),
            s.key.clone(),
            ready.clone(),
        )?;
        Some(Self { kind, peer, handle })
    }
}

/// Where the server's TLS (or QUIC) carrier is for a client without `--carrier`: as
/// `--tls-server` says, else the port `offer` names on the server's host.
pub fn offered_spec(
    kind: CarrierKind,
    explicit: Option<&CarrierServer>,
    offer: Option<&CarrierOffer>,
) -> Option<CarrierServer> {
    if let Some(spec) = explicit {
        return Some(spec.clone());
    }
    let port = match kind {
        CarrierKind::Tls => offer?.tls,
        CarrierKind::Quic => offer?.quic,
        CarrierKind::Udp | CarrierKind::Faketcp => None,
    }?;
    Some(CarrierServer::Port(port))
}

/// Shrinks the datagram ceiling for fake TCP (see the module documentation).
fn fit_payload(config: &mut EndpointConfig, choice: CarrierChoice) {
    if choice.faketcp() {
        let extra = FakeTcpSocket::EXTRA_OVERHEAD_VS_UDP as u16;
        let t = &mut config.transport;
        t.max_udp_payload = t.max_udp_payload.saturating_sub(extra).max(1200);
        t.initial_udp_payload = t.initial_udp_payload.min(t.max_udp_payload);
    }
}

/// The server's endpoint on `listen` (a port or a range) with the chosen carriers: a UDP
/// socket per port, and one fake-TCP carrier over the whole range; then `others` (TLS and
/// QUIC, made elsewhere), all on the one endpoint.
pub fn server_endpoint(
    listen: ListenRange,
    choice: CarrierChoice,
    mut config: EndpointConfig,
    others: Vec<Arc<dyn Carrier>>,
) -> Result<RtEndpoint> {
    fit_payload(&mut config, choice);
    let mut carriers: Vec<Arc<dyn Carrier>> = Vec::new();
    if choice.udp() {
        for addr in listen.addrs() {
            let udp = UdpCarrier::bind(addr)
                .map_err(|e| crate::daemon::bind_error(&e, addr, "tunnel"))?;
            carriers.push(Arc::new(udp));
        }
    }
    if choice.faketcp() {
        let first = listen.first;
        let faketcp = FakeTcpSocket::server(ServerConfig {
            addr: first.ip(),
            ports: first.port()..=listen.last_port.max(first.port()),
            timing: Timing::default(),
        })?;
        info!(listen = %listen, "fake TCP carrier listening");
        carriers.push(Arc::new(faketcp));
    }
    carriers.extend(others);
    Ok(RtEndpoint::with_carriers(carriers, config)?)
}

/// The client's endpoint towards `server` (`host:port` or `host:first-last`) with the chosen
/// carriers; the pool then connects through it (fake TCP opens a flow to every port of the
/// range, UDP spreads over them). With `auto`, the carriers are `--carriers` in that order (by
/// default UDP, fake TCP if this process may open raw sockets, QUIC, TLS): UDP and fake TCP
/// are opened here, QUIC and TLS connect in the background (see
/// [`crate::carriers::connect_in_background`]) and join the pool when they are up.
pub async fn client_endpoint(
    s: &ClientSettings,
    mut config: EndpointConfig,
) -> Result<ClientEndpoint> {
    let server = s.server.as_str();
    let choice = s.carrier;
    let carriers: Option<&CarrierList> = s.carriers.as_ref();
    let target: ServerTarget = server
        .parse()
        .map_err(|e| anyhow!("invalid server `{server}`: {e}"))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target.lookup_name())
        .await
        .with_context(|| format!("resolving {server}"))?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("{server} has no address"))?;
    let open_faketcp = || -> Result<Arc<dyn Carrier>> {
        let faketcp = FakeTcpSocket::client(ClientConfig {
            server: addr.ip(),
            ports: target.ports(),
            timing: Timing::default(),
        })?;
        Ok(Arc::new(faketcp))
    };
    let open_udp = || -> Result<Arc<dyn Carrier>> {
        // Of the server address's family, as the fake-TCP carrier beside it.
        let any: IpAddr = if addr.is_ipv6() {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let bind = SocketAddr::new(any, 0);
        let udp =
            UdpCarrier::bind(bind).map_err(|e| crate::daemon::bind_error(&e, bind, "tunnel"))?;
        Ok(Arc::new(udp))
    };
    let mut list: Vec<Arc<dyn Carrier>> = Vec::new();
    let mut order = Vec::new();
    let mut late = None;
    let mut by_offer = None;
    let state_file = if choice == CarrierChoice::ByOffer {
        crate::daemon::default_state_dir().map(|dir| crate::offer::state_file(&dir, server))
    } else {
        None
    };
    let remembered = match (&state_file, choice) {
        (Some(path), CarrierChoice::ByOffer) => crate::offer::load(path),
        _ => None,
    };
    if matches!(choice, CarrierChoice::Auto | CarrierChoice::ByOffer) {
        let kinds = if choice == CarrierChoice::ByOffer {
            crate::offer::kinds(remembered.as_ref(), carriers)
        } else {
            carriers.map_or_else(|| DEFAULT_AUTO.to_vec(), |c| c.0.clone())
        };
        let (ready, arrivals) = mpsc::unbounded_channel();
        let mut started = Vec::new();
        let mut attempts = Vec::new();
        for kind in kinds {
            let carrier = match kind {
                CarrierKind::Udp => open_udp(),
                CarrierKind::Faketcp => open_faketcp(),
                CarrierKind::Quic | CarrierKind::Tls => {
                    let explicit = if kind == CarrierKind::Tls {
                        s.web.tls_server.as_ref()
                    } else {
                        s.web.quic_server.as_ref()
                    };
                    let spec = if choice == CarrierChoice::ByOffer {
                        offered_spec(kind, explicit, remembered.as_ref())
                    } else {
                        explicit.cloned()
                    };
                    let peer = crate::carriers::web_peer(spec.as_ref(), addr).await?;
                    if kind == CarrierKind::Quic {
                        // Its datagrams are smaller than UDP's; the endpoint's size must fit
                        // every carrier from the start, as `with_carriers` would make it.
                        let t = &mut config.transport;
                        let limit = gaptun_carriers::MAX_GAPTUN_DATAGRAM;
                        if limit < t.max_udp_payload {
                            t.max_udp_payload = limit;
                            t.initial_udp_payload = t.initial_udp_payload.min(limit);
                            t.mtu_discovery = false;
                        }
                    }
                    attempts.extend(Attempt::start(kind, peer, s, &ready));
                    order.push(kind.name());
                    started.push(kind);
                    continue;
                }
            };
            match carrier {
                Ok(c) => {
                    list.push(c);
                    order.push(kind.name());
                    started.push(kind);
                }
                // The default list takes fake TCP only where it can be had (root or
                // CAP_NET_RAW, nftables); a list given by the user must be honoured (but an
                // offered carrier is only a chance).
                Err(e) if carriers.is_none() || choice == CarrierChoice::ByOffer => {
                    info!("carrier auto: fake TCP left out: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
        if choice == CarrierChoice::Auto || order.len() > 1 {
            info!(carriers = %order.join(","), "carrier auto: one carrier at a time, in this order");
        } else if choice == CarrierChoice::ByOffer {
            // UDP alone until the server offers more: spread as `--carrier udp` does.
            order.clear();
        }
        if choice == CarrierChoice::ByOffer {
            by_offer = Some(ByOffer {
                server: addr,
                started,
                attempts,
                remembered,
                state_file,
                ready,
            });
        }
        late = Some(arrivals);
    } else {
        if choice.faketcp() {
            list.push(open_faketcp()?);
        }
        if choice.udp() {
            list.push(open_udp()?);
        }
    }
    let kinds: Vec<&str> = list.iter().map(|c| c.kind()).collect();
    fit_payload(
        &mut config,
        if kinds.contains(&"faketcp") {
            CarrierChoice::Faketcp
        } else {
            CarrierChoice::Udp
        },
    );
    Ok(ClientEndpoint {
        endpoint: RtEndpoint::with_carriers(list, config)?,
        order,
        late,
        by_offer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gaptun_proto::Psk;

    #[test]
    fn fake_tcp_datagrams_are_shorter_by_the_extra_header() {
        let mut config = EndpointConfig::client(Psk::from_bytes([1; 32]));
        let udp = config.transport.max_udp_payload;
        fit_payload(&mut config, CarrierChoice::Udp);
        assert_eq!(config.transport.max_udp_payload, udp);
        fit_payload(&mut config, CarrierChoice::Faketcp);
        assert_eq!(config.transport.max_udp_payload, udp - 24);
        assert!(config.transport.initial_udp_payload <= udp - 24);
    }
}
