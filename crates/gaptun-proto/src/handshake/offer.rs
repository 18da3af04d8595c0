//! The server's carrier offer: which carriers it runs and on which ports, sent inside the
//! encrypted Response so that only a client that has authenticated the server learns it (a
//! prober gets no Response at all). A client whose default is "auto by offer" uses it to fall
//! back to TLS or QUIC without being told their ports. See `docs/protocol.md`,
//! "Carrier offer".
//!
//! On the wire it is an extension after the fixed transport parameters: `type (u8) = 1,
//! length (u8), body`. Extensions of an unknown type are skipped by their length; an offer
//! that does not parse is dropped (the handshake goes on without it), so a garbled or future
//! offer never costs the connection.

use super::wire::Reader;

/// Extension type of the carrier offer.
pub(super) const EXT_CARRIER_OFFER: u8 = 1;

const HAS_UDP: u8 = 0x01;
const HAS_FAKETCP: u8 = 0x02;
const HAS_TLS: u8 = 0x04;
const HAS_QUIC: u8 = 0x08;

/// An inclusive range of ports (`first..=last`, `first <= last`, no port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port (equal to `first` for a single port).
    pub last: u16,
}

impl PortRange {
    /// The range `first..=last`; `None` when it is empty or includes port 0.
    pub fn new(first: u16, last: u16) -> Option<Self> {
        (first != 0 && first <= last).then_some(Self { first, last })
    }

    /// A range of one port; `None` for port 0.
    pub fn single(port: u16) -> Option<Self> {
        Self::new(port, port)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The carriers a server offers, on its own host: gaptun over UDP and fake TCP on a port
/// range each, TLS and QUIC on one port each. `None`: not offered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CarrierOffer {
    /// UDP ports.
    pub udp: Option<PortRange>,
    /// Fake-TCP ports.
    pub faketcp: Option<PortRange>,
    /// The TLS carrier's TCP port.
    pub tls: Option<u16>,
    /// The QUIC carrier's UDP port.
    pub quic: Option<u16>,
}

impl CarrierOffer {
    /// Whether anything besides UDP is offered.
    pub fn beyond_udp(&self) -> bool {
        self.faketcp.is_some() || self.tls.is_some() || self.quic.is_some()
    }

    /// Appends the extension (type, length, body). Body: a flags byte saying which carriers
    /// follow, then in this order the UDP range (first, last: u16 BE each), the fake-TCP range,
    /// the TLS port, the QUIC port, each only when its flag is set.
    pub(super) fn encode_extension(&self, out: &mut Vec<u8>) {
        let mut body = vec![0u8];
        let mut flags = 0;
        for (flag, range) in [(HAS_UDP, self.udp), (HAS_FAKETCP, self.faketcp)] {
            if let Some(r) = range {
                flags |= flag;
                body.extend_from_slice(&r.first.to_be_bytes());
                body.extend_from_slice(&r.last.to_be_bytes());
            }
        }
        for (flag, port) in [(HAS_TLS, self.tls), (HAS_QUIC, self.quic)] {
            if let Some(p) = port {
                flags |= flag;
                body.extend_from_slice(&p.to_be_bytes());
            }
        }
        body[0] = flags;
        out.push(EXT_CARRIER_OFFER);
        // At most 1 + 4 + 4 + 2 + 2 bytes.
        out.push(body.len() as u8);
        out.extend_from_slice(&body);
    }

    /// Reads an offer's body (the extension's bytes after type and length). `None` when it is
    /// malformed: a bad range, port 0, missing or extra bytes, unknown flags.
    pub(super) fn decode_body(body: &[u8]) -> Option<Self> {
        let mut r = Reader::new(body);
        let flags = r.u8()?;
        if flags & !(HAS_UDP | HAS_FAKETCP | HAS_TLS | HAS_QUIC) != 0 {
            return None;
        }
        let mut range = |flag: u8| -> Option<Option<PortRange>> {
            if flags & flag == 0 {
                return Some(None);
            }
            let first = r.u16()?;
            let last = r.u16()?;
            PortRange::new(first, last).map(Some)
        };
        let udp = range(HAS_UDP)?;
        let faketcp = range(HAS_FAKETCP)?;
        let mut port = |flag: u8| -> Option<Option<u16>> {
            if flags & flag == 0 {
                return Some(None);
            }
            let p = r.u16()?;
            (p != 0).then_some(Some(p))
        };
        let tls = port(HAS_TLS)?;
        let quic = port(HAS_QUIC)?;
        r.is_empty().then_some(Self {
            udp,
            faketcp,
            tls,
            quic,
        })
    }
}

/// Reads the extensions after the fixed parameters: the carrier offer if there is a valid
/// one. Unknown extensions are skipped; a truncated one ends the list.
pub(super) fn decode_extensions(r: &mut Reader<'_>) -> Option<CarrierOffer> {
    let mut offer = None;
    while let (Some(kind), Some(len)) = (r.u8(), r.u8()) {
        let Some(body) = r.bytes(usize::from(len)) else {
            break;
        };
        if kind == EXT_CARRIER_OFFER {
            offer = CarrierOffer::decode_body(body);
        }
    }
    offer
}
