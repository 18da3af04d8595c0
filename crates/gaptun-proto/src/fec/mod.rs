//! Forward error correction on sealed packets (Reed–Solomon).
//!
//! FEC sits between packet protection and the socket. The sender groups sealed packets, as they
//! go on the wire, into *groups* and computes parity shards over them; each parity shard travels
//! in a FEC_PARITY frame inside an ordinary protected packet of its own. The receiver keeps a
//! copy of the last sealed datagrams it authenticated and, when a group has lost packets and
//! enough parity arrived, rebuilds the missing sealed datagrams and opens them like any other
//! (so every rebuilt packet is still authenticated by the AEAD).
//!
//! Because parity rides inside a protected packet, an observer cannot tell it from data: same
//! masked header, same AEAD, no flag in clear. Whether a peer accepts parity at all is in the
//! transport parameters; a peer that did not announce it never receives a FEC_PARITY frame.
//!
//! Which packets are protected, with how much parity and when the parity goes out, is the
//! sender's choice ([`FecMode`], see `connection::send` for `auto`).

mod receiver;
mod sender;
mod wire;

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

pub(crate) use receiver::FecReceiver;
pub(crate) use sender::FecSender;
pub use wire::ParityFrame;

/// Most data packets one group protects (a bound on what a receiver must remember and on the
/// parity frame's size).
pub const MAX_GROUP_DATA: usize = 32;
/// Most parity shards one group has.
pub const MAX_GROUP_PARITY: usize = 16;

/// Bytes a packet that may be protected leaves free below the datagram size limit, so that a
/// parity packet over it still fits: the parity packet's header and tag (28), the FEC_PARITY
/// frame's fields (type 1, first packet number 8, data count 1, gaps up to 32 of one byte each,
/// parity count and index 2, shard length 2) and the shard's length prefix and even-size
/// padding (3): 77 bytes.
pub const PARITY_RESERVE: usize = 28 + 1 + 8 + 1 + MAX_GROUP_DATA + 1 + 1 + 2 + 3;

/// How a connection uses FEC (the `fec` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FecMode {
    /// No parity is sent, and none is accepted from the peer.
    Off,
    /// Parity where it pays: the tails of interactive exchanges, sized by the measured loss rate
    /// and burst length and spread in time. Bulk transfers get none.
    #[default]
    Auto,
    /// Every ack-eliciting packet is protected, in groups of `data` packets with `parity`
    /// parity packets each (kcptun's `-datashard`/`-parityshard`).
    Fixed {
        /// Data packets per group.
        data: u8,
        /// Parity packets per group.
        parity: u8,
    },
}

impl FecMode {
    /// Whether this side accepts parity from its peer (announced in the transport parameters).
    pub fn accepts_parity(self) -> bool {
        self != Self::Off
    }
}

/// Why a `fec` setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FecModeError {
    /// Neither `off`, `auto` nor `D/P`.
    #[error("fec must be \"auto\", \"off\" or \"D/P\" (data/parity packets per group), not {0:?}")]
    Syntax(String),
    /// `D/P` outside the supported ranges.
    #[error(
        "fec {data}/{parity}: data must be 1 to {MAX_GROUP_DATA} and parity 1 to {MAX_GROUP_PARITY}"
    )]
    Range {
        /// The data count given.
        data: u64,
        /// The parity count given.
        parity: u64,
    },
}

impl FromStr for FecMode {
    type Err = FecModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "off" => return Ok(Self::Off),
            "auto" => return Ok(Self::Auto),
            _ => {}
        }
        let syntax = || FecModeError::Syntax(s.to_string());
        let (d, p) = t.split_once('/').ok_or_else(syntax)?;
        let data: u64 = d.trim().parse().map_err(|_| syntax())?;
        let parity: u64 = p.trim().parse().map_err(|_| syntax())?;
        let range = FecModeError::Range { data, parity };
        if !(1..=MAX_GROUP_DATA as u64).contains(&data)
            || !(1..=MAX_GROUP_PARITY as u64).contains(&parity)
        {
            return Err(range);
        }
        Ok(Self::Fixed {
            data: data as u8,
            parity: parity as u8,
        })
    }
}

impl fmt::Display for FecMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Auto => f.write_str("auto"),
            Self::Fixed { data, parity } => write!(f, "{data}/{parity}"),
        }
    }
}

/// Length of the shard that carries sealed datagrams of up to `max_len` bytes: a 2-byte length
/// prefix, the datagram, zero padding to an even size (the Reed–Solomon library works on pairs
/// of bytes).
pub(crate) fn shard_len(max_len: usize) -> usize {
    (2 + max_len).next_multiple_of(2)
}

/// Writes `datagram` as a data shard of `len` bytes into `out` (cleared first).
pub(crate) fn fill_shard(datagram: &[u8], len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    out.extend_from_slice(datagram);
    out.resize(len, 0);
}

/// The datagram inside a rebuilt data shard, if its length prefix fits the shard.
pub(crate) fn shard_datagram(shard: &[u8]) -> Option<&[u8]> {
    let prefix: [u8; 2] = shard.get(..2)?.try_into().ok()?;
    let len = usize::from(u16::from_be_bytes(prefix));
    shard.get(2..2 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        assert_eq!("auto".parse(), Ok(FecMode::Auto));
        assert_eq!(" OFF ".parse(), Ok(FecMode::Off));
        assert_eq!(
            "10/3".parse(),
            Ok(FecMode::Fixed {
                data: 10,
                parity: 3
            })
        );
        assert_eq!(FecMode::Fixed { data: 4, parity: 2 }.to_string(), "4/2");
        assert_eq!(FecMode::default(), FecMode::Auto);
        assert!(matches!(
            "0/3".parse::<FecMode>(),
            Err(FecModeError::Range { data: 0, .. })
        ));
        assert!(matches!(
            "10/17".parse::<FecMode>(),
            Err(FecModeError::Range { parity: 17, .. })
        ));
        for bad in ["", "on", "10", "a/b", "10/3/1", "-1/2"] {
            assert!(
                matches!(bad.parse::<FecMode>(), Err(FecModeError::Syntax(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn shards_carry_their_length() {
        let mut out = Vec::new();
        fill_shard(b"abc", shard_len(5), &mut out);
        assert_eq!(out.len(), 8);
        assert_eq!(shard_datagram(&out), Some(&b"abc"[..]));
        // A length prefix beyond the shard is refused, not read past.
        out[0] = 0xff;
        assert_eq!(shard_datagram(&out), None);
        assert_eq!(shard_datagram(&[0]), None);
    }
}
