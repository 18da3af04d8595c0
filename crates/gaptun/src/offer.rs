//! The carrier offer on the daemons' side (the wire part is `gaptun_proto::handshake::
//! CarrierOffer`): what a server announces, and how a client without `--carrier` uses it.
//!
//! A client remembers the last offer of each server in a small file in its state directory,
//! so that a restart while UDP is blocked finds TLS or QUIC at once: without it a client that
//! never connected could only try UDP.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use gaptun_proto::handshake::{CarrierOffer, PortRange};
use gaptun_runtime::{ListenRange, RtEndpoint};
use tracing::warn;

use crate::values::{CarrierChoice, CarrierKind, CarrierList};

/// The fallback order of a client without `--carrier` (as `--carrier auto`'s default list):
/// UDP first, on which it starts, then what the server offers.
const OFFER_ORDER: [CarrierKind; 4] = [
    CarrierKind::Udp,
    CarrierKind::Faketcp,
    CarrierKind::Quic,
    CarrierKind::Tls,
];

/// What a server with `choice` on `listen` offers, with the TLS and QUIC ports read from the
/// bound `endpoint` (a port 0 in `--tls-listen` becomes the real one).
pub fn server_offer(
    choice: CarrierChoice,
    listen: &ListenRange,
    endpoint: &RtEndpoint,
) -> CarrierOffer {
    let first = listen.first.port();
    let range = PortRange::new(first, listen.last_port.max(first));
    let port_of = |kind: &str| {
        endpoint
            .carriers()
            .into_iter()
            .find(|(_, k, _)| *k == kind)
            .and_then(|(_, _, addr)| addr)
            .map(|a| a.port())
            .filter(|&p| p != 0)
    };
    CarrierOffer {
        udp: if choice.udp() { range } else { None },
        faketcp: if choice.faketcp() { range } else { None },
        tls: if choice.tls() { port_of("tls") } else { None },
        quic: if choice.quic() { port_of("quic") } else { None },
    }
}

/// The offer for the log and `ctl stats`: `udp 4000-4003, tls 8443`.
pub fn describe(offer: &CarrierOffer) -> String {
    let mut parts = Vec::new();
    if let Some(r) = offer.udp {
        parts.push(format!("udp {r}"));
    }
    if let Some(r) = offer.faketcp {
        parts.push(format!("faketcp {r}"));
    }
    if let Some(p) = offer.tls {
        parts.push(format!("tls {p}"));
    }
    if let Some(p) = offer.quic {
        parts.push(format!("quic {p}"));
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The carriers a client without `--carrier` uses against `offer`, in fallback order: UDP
/// always (it starts there), the others when offered and allowed by `allowed`
/// (`--carriers`; `None`: all).
pub fn kinds(offer: Option<&CarrierOffer>, allowed: Option<&CarrierList>) -> Vec<CarrierKind> {
    let order: Vec<CarrierKind> = allowed.map_or_else(|| OFFER_ORDER.to_vec(), |l| l.0.clone());
    let offered = |k: CarrierKind| {
        offer.is_some_and(|o| match k {
            CarrierKind::Udp => true,
            CarrierKind::Faketcp => o.faketcp.is_some(),
            CarrierKind::Tls => o.tls.is_some(),
            CarrierKind::Quic => o.quic.is_some(),
        })
    };
    let mut out = vec![CarrierKind::Udp];
    out.extend(
        order
            .into_iter()
            .filter(|&k| k != CarrierKind::Udp && offered(k)),
    );
    out
}

/// The file that keeps the last offer of `server` (as `--server` names it).
pub fn state_file(dir: &Path, server: &str) -> PathBuf {
    let name: String = server
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("offer-{name}"))
}

/// The remembered offer in `path`; `None` when there is none yet, and (with a warning) when
/// the file cannot be read or makes no sense: the client then goes by the live offer only.
pub fn load(path: &Path) -> Option<CarrierOffer> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), "remembered carrier offer ignored: {e}");
            return None;
        }
    };
    match parse(&text) {
        Ok(offer) => Some(offer),
        Err(e) => {
            warn!(path = %path.display(), "remembered carrier offer ignored: {e:#}");
            None
        }
    }
}

/// Writes `offer` to `path` atomically (a temporary file renamed over it), so that a crash
/// leaves the old offer or the new one, never half of one.
pub fn save(path: &Path, offer: &CarrierOffer) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format(offer))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))
}

/// One `kind = ports` line per offered carrier.
fn format(offer: &CarrierOffer) -> String {
    let mut out = String::new();
    for (kind, range) in [("udp", offer.udp), ("faketcp", offer.faketcp)] {
        if let Some(r) = range {
            out.push_str(&format!("{kind} = {r}\n"));
        }
    }
    for (kind, port) in [("tls", offer.tls), ("quic", offer.quic)] {
        if let Some(p) = port {
            out.push_str(&format!("{kind} = {p}\n"));
        }
    }
    out
}

fn parse(text: &str) -> Result<CarrierOffer> {
    let range = |v: &str| -> Result<PortRange> {
        let (a, b) = v.split_once('-').unwrap_or((v, v));
        let (a, b): (u16, u16) = (a.trim().parse()?, b.trim().parse()?);
        PortRange::new(a, b).with_context(|| format!("bad port range `{v}`"))
    };
    let mut offer = CarrierOffer::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((key, value)) = line.split_once('=') else {
            bail!("no `=` in `{line}`");
        };
        let value = value.trim();
        match key.trim() {
            "udp" => offer.udp = Some(range(value)?),
            "faketcp" => offer.faketcp = Some(range(value)?),
            "tls" => offer.tls = Some(range(value)?.first),
            "quic" => offer.quic = Some(range(value)?.first),
            other => bail!("unknown carrier `{other}`"),
        }
    }
    Ok(offer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> CarrierOffer {
        CarrierOffer {
            udp: PortRange::new(4000, 4003),
            faketcp: None,
            tls: Some(8443),
            quic: None,
        }
    }

    #[test]
    fn the_file_round_trips_and_garbage_is_ignored() {
        let dir = std::env::temp_dir().join(format!("gaptun-offer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = state_file(&dir, "[::1]:4000-4003");
        assert_eq!(path.file_name().unwrap(), "offer-___1__4000-4003");
        assert_eq!(load(&path), None, "nothing remembered yet");
        save(&path, &offer()).unwrap();
        assert_eq!(load(&path), Some(offer()));
        for bad in [
            "udp = 0\n",
            "tls = x\n",
            "smtp = 25\n",
            "udp 4000\n",
            "udp = 9-1\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(load(&path), None, "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kinds_follow_the_offer_and_the_allowed_list() {
        let o = offer();
        assert_eq!(kinds(None, None), vec![CarrierKind::Udp]);
        let udp_only = CarrierOffer {
            udp: PortRange::single(4000),
            ..CarrierOffer::default()
        };
        assert_eq!(kinds(Some(&udp_only), None), vec![CarrierKind::Udp]);
        assert_eq!(
            kinds(Some(&o), None),
            vec![CarrierKind::Udp, CarrierKind::Tls]
        );
        let no_tls = CarrierList(vec![CarrierKind::Udp, CarrierKind::Quic]);
        assert_eq!(kinds(Some(&o), Some(&no_tls)), vec![CarrierKind::Udp]);
        assert_eq!(describe(&o), "udp 4000-4003, tls 8443");
    }
}
