//! Transport tuning: the `--mode` presets and the other knobs, turned into the core's
//! [`TransportConfig`].
//!
//! The modes borrow kcptun's names; what they set is ours. kcptun tunes KCP's `nodelay`,
//! `interval`, `resend` and `nc`; we have no polling interval (the driver is event-driven) and
//! congestion control is chosen separately, so a mode sets how quickly losses are detected and
//! repaired, at the cost of spurious retransmissions and more ACK traffic:
//!
//! | mode   | reorder_threshold | rto_backoff | min_rto | max_ack_delay | ack every  |
//! |--------|-------------------|-------------|---------|---------------|------------|
//! | normal | 3                 | 2.0         | 200 ms  | 25 ms         | 16 packets |
//! | fast   | 3                 | 1.5         | 30 ms   | 10 ms         | 16 packets |
//! | fast2  | 2                 | 1.2         | 20 ms   | 5 ms          | 1 packet   |
//! | fast3  | 2                 | 1.0         | 10 ms   | 2 ms          | 1 packet   |
//!
//! `fast` (the default) equals the core's defaults. `reorder_threshold` is KCP's `resend`: a
//! packet counts as lost once that many later packets were acknowledged. `rto_backoff` 1.0
//! keeps the retransmission timeout constant across consecutive timeouts (KCP's `nodelay`).
//!
//! "ack every" only matters for bulk data: a gap is acknowledged at once (unless an ACK went out
//! within the last eighth of an RTT), and a lone packet within `max_ack_delay`. Every 16 packets
//! keeps the ACKs of a 100 Mbit/s transfer near 0.3 % of the goodput (every 2 cost 3–4 %, every
//! 8 about 0.6 %); fast2 and fast3 trade that bandwidth for acknowledging every packet, like KCP.

use std::time::Duration;

use gaptun_proto::{CipherSuite, CongestionKind, TransportConfig};
use thiserror::Error;

use crate::layer::settings_group;
use crate::values::{Cipher, Congestion, Fec, Mode, Mtu, WindowSize};

pub use crate::values::MIN_WINDOW;

settings_group! {
    /// The transport knobs, as flags and config keys; a knob left unset keeps the mode's or
    /// the core's default. Both roles take them (the two ends need not agree).
    pub struct TransportSettings {
        /// Retransmission/ACK timing preset (see the table in the README).
        #[arg(long, value_name = "MODE", default_value = "fast")]
        pub mode: Option<Mode>,
        /// Receive window per connection and stream, in bytes (K, M, G suffixes), 64K to 4G
        /// [default: 32M per connection, 16M per stream].
        #[arg(long, value_name = "BYTES")]
        pub window: Option<WindowSize>,
        /// Largest UDP payload in bytes, 1200-65507: the ceiling path MTU discovery probes up
        /// to (8972 for jumbo frames, 65507 for loopback; paths that carry less are found)
        /// [default: the route's, see --route-mtu; 1472 where it cannot be read].
        #[arg(long, value_name = "N")]
        pub mtu: Option<Mtu>,
        /// Without --mtu, take each connection's ceiling from the kernel's route to the peer
        /// (its MTU less 28 bytes of headers: 65507 on loopback, 8972 on a jumbo-frame LAN,
        /// 1472 on Ethernet; 1472 where it cannot be read). --route-mtu=false: 1472 always.
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "true")]
        pub route_mtu: Option<bool>,
        /// Probe for datagrams larger than 1350 bytes, up to --mtu (--mtu-discovery=false: never).
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "true")]
        pub mtu_discovery: Option<bool>,
        /// Congestion control.
        #[arg(long, value_name = "CC", default_value = "bbr")]
        pub congestion: Option<Congestion>,
        /// Target rate of --congestion brutal, in Mbit/s.
        #[arg(long, value_name = "MBIT")]
        pub brutal_rate: Option<f64>,
        /// Seconds between keepalives when idle; 0 disables.
        #[arg(long, value_name = "SECS", default_value = "10")]
        pub keepalive: Option<u64>,
        /// Seconds of silence before a connection is dropped.
        #[arg(long, value_name = "SECS", default_value = "40")]
        pub idle_timeout: Option<u64>,
        /// Seconds a peer we wait on (data unacknowledged, or its stream unfinished) may stay
        /// silent before the connection is declared dead and its streams reset (4 RTO if longer).
        #[arg(long, value_name = "SECS", default_value = "3")]
        pub dead_peer_timeout: Option<u64>,
        /// Seconds the client waits for the server's handshake answer.
        #[arg(long, value_name = "SECS", default_value = "10")]
        pub handshake_timeout: Option<u64>,
        /// Cipher; auto picks AES-256-GCM where the CPU accelerates it, else ChaCha20-Poly1305.
        #[arg(long, value_name = "CIPHER", default_value = "auto")]
        pub cipher: Option<Cipher>,
        /// Forward error correction: auto (parity for the tails of interactive exchanges, sized
        /// by the measured loss; none for bulk), off, or D/P (every packet, in groups of D data
        /// and P parity packets, like kcptun's datashard/parityshard). Sent only to a peer that
        /// has FEC on too.
        #[arg(long, value_name = "FEC", default_value = "auto")]
        pub fec: Option<Fec>,
    }
}

/// A combination of settings that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TransportError {
    #[error("congestion `brutal` needs a rate: set brutal-rate (Mbit/s)")]
    BrutalWithoutRate,
    #[error("brutal-rate must be a positive number of Mbit/s")]
    BadRate,
    #[error("brutal-rate is only used with congestion `brutal`")]
    RateWithoutBrutal,
    #[error("idle-timeout must be at least 1 second")]
    IdleTimeout,
    #[error("dead-peer-timeout must be at least 1 second")]
    DeadPeerTimeout,
    #[error("handshake-timeout must be at least 1 second")]
    HandshakeTimeout,
    #[error("keepalive ({keepalive} s) must be shorter than idle-timeout ({idle} s)")]
    KeepaliveTooLong { keepalive: u64, idle: u64 },
}

impl TransportSettings {
    /// The core configuration these settings describe.
    pub fn build(&self) -> Result<TransportConfig, TransportError> {
        let mut c = TransportConfig::default();
        apply_mode(&mut c, self.mode.unwrap_or_default());
        // Mtu and WindowSize were range-checked when parsed.
        // An explicit ceiling is used as given; without one each connection asks its route
        // (the core's 1472 stays the fallback), unless --route-mtu=false.
        match self.mtu {
            Some(Mtu(mtu)) => c.max_udp_payload = mtu,
            None => c.mtu_from_route = self.route_mtu.unwrap_or(true),
        }
        if let Some(on) = self.mtu_discovery {
            c.mtu_discovery = on;
        }
        if let Some(WindowSize(w)) = self.window {
            c.receive_window = w;
            c.stream_receive_window = w;
        }
        c.send_buffer = send_buffer_for(c.receive_window);
        c.congestion = self.congestion_kind()?;
        if let Some(secs) = self.idle_timeout {
            if secs == 0 {
                return Err(TransportError::IdleTimeout);
            }
            c.idle_timeout = Duration::from_secs(secs);
        }
        if let Some(secs) = self.keepalive {
            c.keepalive_interval = (secs > 0).then(|| Duration::from_secs(secs));
        }
        if let Some(k) = c.keepalive_interval
            && k >= c.idle_timeout
        {
            return Err(TransportError::KeepaliveTooLong {
                keepalive: k.as_secs(),
                idle: c.idle_timeout.as_secs(),
            });
        }
        if let Some(secs) = self.dead_peer_timeout {
            if secs == 0 {
                return Err(TransportError::DeadPeerTimeout);
            }
            c.dead_peer_timeout = Duration::from_secs(secs);
        }
        if let Some(secs) = self.handshake_timeout {
            if secs == 0 {
                return Err(TransportError::HandshakeTimeout);
            }
            c.handshake_timeout = Duration::from_secs(secs);
        }
        if let Some(Fec(mode)) = self.fec {
            c.fec = mode;
        }
        c.cipher = match self.cipher {
            None | Some(Cipher::Auto) => None,
            Some(Cipher::Aes256Gcm) => Some(CipherSuite::Aes256Gcm),
            Some(Cipher::ChaCha20Poly1305) => Some(CipherSuite::ChaCha20Poly1305),
        };
        Ok(c)
    }

    fn congestion_kind(&self) -> Result<CongestionKind, TransportError> {
        match (self.congestion, self.brutal_rate) {
            (Some(Congestion::Brutal), None) => Err(TransportError::BrutalWithoutRate),
            (Some(Congestion::Brutal), Some(mbit)) => {
                if !(mbit.is_finite() && mbit > 0.0) {
                    return Err(TransportError::BadRate);
                }
                // Mbit/s to bytes/s; saturates for absurd rates instead of wrapping.
                let rate = (mbit * 1_000_000.0 / 8.0) as u64;
                Ok(CongestionKind::Brutal { rate: rate.max(1) })
            }
            (_, Some(_)) => Err(TransportError::RateWithoutBrutal),
            (Some(Congestion::None), None) => Ok(CongestionKind::None),
            (Some(Congestion::Bbr) | None, None) => Ok(CongestionKind::Bbr),
        }
    }
}

/// Bytes buffered for sending, across all streams: a quarter of the connection receive window
/// (which both sides normally share), at least [`MIN_WINDOW`].
///
/// Written data takes connection flow-control credit as soon as it is buffered, not when it is
/// sent. With a send buffer as large as the peer's window (the core's default), bulk streams
/// fill the buffer and use up all the credit, and a request on another stream waits until the
/// peer has read half a window: 1.3 s behind a 100 Mbit/s download with the 32 MiB default. At a
/// quarter, three quarters of the credit stay free for other streams, while the buffer still
/// holds several bandwidth-delay products (8 MiB: 640 Mbit/s at 100 ms) for the bulk ones.
pub fn send_buffer_for(receive_window: u64) -> u64 {
    (receive_window / 4).max(MIN_WINDOW)
}

/// Sets the timing parameters of `mode` (see the module table).
pub fn apply_mode(c: &mut TransportConfig, mode: Mode) {
    let (reorder, backoff, min_rto_ms, ack_delay_ms, ack_every) = match mode {
        Mode::Normal => (3, 2.0, 200, 25, 16),
        Mode::Fast => (3, 1.5, 30, 10, 16),
        Mode::Fast2 => (2, 1.2, 20, 5, 1),
        Mode::Fast3 => (2, 1.0, 10, 2, 1),
    };
    c.reorder_threshold = reorder;
    c.rto_backoff = backoff;
    c.min_rto = Duration::from_millis(min_rto_ms);
    c.max_ack_delay = Duration::from_millis(ack_delay_ms);
    c.ack_eliciting_threshold = ack_every;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_is_the_core_default() {
        let mut c = TransportConfig::default();
        let d = TransportConfig::default();
        apply_mode(&mut c, Mode::Fast);
        assert_eq!(c.reorder_threshold, d.reorder_threshold);
        assert_eq!(c.rto_backoff, d.rto_backoff);
        assert_eq!(c.min_rto, d.min_rto);
        assert_eq!(c.max_ack_delay, d.max_ack_delay);
        assert_eq!(c.ack_eliciting_threshold, d.ack_eliciting_threshold);
    }

    #[test]
    fn mtu_discovery_and_mtu() {
        let on = TransportSettings::default().build().unwrap();
        assert!(on.mtu_discovery);
        // No --mtu: each connection's route (1472 as the fallback), or with
        // --route-mtu=false always 1472.
        assert!(on.mtu_from_route);
        assert_eq!(on.max_udp_payload, 1472);
        let route = TransportSettings {
            route_mtu: Some(true),
            ..Default::default()
        };
        assert!(route.build().unwrap().mtu_from_route);
        let fixed = TransportSettings {
            route_mtu: Some(false),
            ..Default::default()
        };
        let fixed = fixed.build().unwrap();
        assert!(!fixed.mtu_from_route);
        assert_eq!(fixed.max_udp_payload, 1472);
        let off = TransportSettings {
            mtu_discovery: Some(false),
            ..Default::default()
        };
        assert!(!off.build().unwrap().mtu_discovery);
        let smallest = TransportSettings {
            mtu: Some(Mtu(1200)),
            route_mtu: Some(true),
            ..Default::default()
        };
        let smallest = smallest.build().unwrap();
        assert_eq!(smallest.max_udp_payload, 1200);
        assert!(
            !smallest.mtu_from_route,
            "an explicit --mtu overrides the route"
        );
    }

    #[test]
    fn fec_modes() {
        use gaptun_proto::FecMode;
        assert_eq!(
            TransportSettings::default().build().unwrap().fec,
            FecMode::Auto
        );
        let fixed = TransportSettings {
            fec: Some("10/3".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            fixed.build().unwrap().fec,
            FecMode::Fixed {
                data: 10,
                parity: 3
            }
        );
        let off: Fec = "off".parse().unwrap();
        assert_eq!(off, Fec(FecMode::Off));
        let err = "10/0".parse::<Fec>().unwrap_err();
        assert!(err.contains("parity 1 to 16"), "{err}");
        let err = "lots".parse::<Fec>().unwrap_err();
        assert!(err.contains("\"auto\", \"off\" or \"D/P\""), "{err}");
    }

    /// The defaults shown in the help (clap's `default_value`s) are the core's defaults, so
    /// filling them in changes nothing; only the window is left to the core (its per-stream
    /// window differs from the per-connection one), and the MTU to each connection's route.
    #[test]
    fn help_defaults_are_the_core_defaults() {
        use clap::{Args, Command};

        use crate::layer::Layer;
        let m = TransportSettings::augment_args(Command::new("t"))
            .try_get_matches_from(["t"])
            .unwrap();
        let (given, defaults) = TransportSettings::from_matches(&m).unwrap();
        assert_eq!(given, TransportSettings::default());
        assert!(defaults.mode.is_some() && defaults.mtu.is_none() && defaults.window.is_none());
        let from_defaults = format!("{:?}", defaults.build().unwrap());
        let core = format!("{:?}", TransportSettings::default().build().unwrap());
        assert_eq!(from_defaults, core);
    }

    #[test]
    fn send_buffer_is_a_quarter_of_the_window() {
        assert_eq!(send_buffer_for(32 << 20), 8 << 20);
        assert_eq!(send_buffer_for(MIN_WINDOW), MIN_WINDOW);
        let c = TransportSettings::default().build().unwrap();
        assert_eq!(c.send_buffer, c.receive_window / 4);
    }

    #[test]
    fn presets() {
        let s = TransportSettings {
            mode: Some(Mode::Fast3),
            ..Default::default()
        };
        let c = s.build().unwrap();
        assert_eq!(c.reorder_threshold, 2);
        assert_eq!(c.rto_backoff, 1.0);
        assert_eq!(c.min_rto, Duration::from_millis(10));
        let s = TransportSettings {
            mode: Some(Mode::Normal),
            ..Default::default()
        };
        assert_eq!(s.build().unwrap().min_rto, Duration::from_millis(200));
    }

    #[test]
    fn knobs_apply() {
        let s = TransportSettings {
            window: Some(WindowSize(64 << 20)),
            mtu: Some(Mtu(1200)),
            congestion: Some(Congestion::Brutal),
            brutal_rate: Some(100.0),
            keepalive: Some(0),
            idle_timeout: Some(30),
            cipher: Some(Cipher::ChaCha20Poly1305),
            handshake_timeout: Some(3),
            dead_peer_timeout: Some(20),
            mtu_discovery: Some(false),
            route_mtu: None,
            fec: Some(Fec(gaptun_proto::FecMode::Off)),
            mode: None,
        };
        let c = s.build().unwrap();
        assert_eq!(c.fec, gaptun_proto::FecMode::Off);
        assert_eq!(c.receive_window, 64 << 20);
        assert_eq!(c.stream_receive_window, 64 << 20);
        assert_eq!(c.send_buffer, 16 << 20);
        assert_eq!(c.max_udp_payload, 1200);
        assert!(!c.mtu_discovery);
        assert_eq!(c.congestion, CongestionKind::Brutal { rate: 12_500_000 });
        assert_eq!(c.keepalive_interval, None);
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.cipher, Some(CipherSuite::ChaCha20Poly1305));
        assert_eq!(c.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.dead_peer_timeout, Duration::from_secs(20));
    }

    #[test]
    fn bad_combinations() {
        let err = |s: TransportSettings| s.build().unwrap_err();
        let d = TransportSettings::default();
        assert_eq!(
            err(TransportSettings {
                congestion: Some(Congestion::Brutal),
                ..d.clone()
            }),
            TransportError::BrutalWithoutRate
        );
        assert_eq!(
            err(TransportSettings {
                brutal_rate: Some(5.0),
                ..d.clone()
            }),
            TransportError::RateWithoutBrutal
        );
        assert_eq!(
            err(TransportSettings {
                congestion: Some(Congestion::Brutal),
                brutal_rate: Some(-1.0),
                ..d.clone()
            }),
            TransportError::BadRate
        );
        assert_eq!(
            err(TransportSettings {
                keepalive: Some(50),
                ..d.clone()
            }),
            TransportError::KeepaliveTooLong {
                keepalive: 50,
                idle: 40
            }
        );
        assert_eq!(
            err(TransportSettings {
                dead_peer_timeout: Some(0),
                ..d.clone()
            }),
            TransportError::DeadPeerTimeout
        );
        assert_eq!(
            err(TransportSettings {
                idle_timeout: Some(0),
                ..d
            }),
            TransportError::IdleTimeout
        );
    }
}
