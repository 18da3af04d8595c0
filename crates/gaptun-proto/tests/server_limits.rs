//! A server's handshake budget, connection caps and persisted replay state, driven through the
//! endpoint with real Initials from client endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaptun_proto::config::{EndpointLimits, TokenRate};
use gaptun_proto::endpoint::{LimitHit, LimitKind};
use gaptun_proto::{CarrierId, Endpoint, EndpointConfig, Psk, RngSeed};

const T: Duration = Duration::from_secs(1_700_000_000);

fn psk(n: u8) -> Psk {
    Psk::from_bytes([n; 32])
}

/// A client Initial under `key`, stamped at client time `unix`.
fn initial(key: &Psk, unix: Duration, seed: u64) -> Vec<u8> {
    let now = Instant::now();
    let config = Arc::new(EndpointConfig::client(key.clone()));
    let mut client = Endpoint::new(config, RngSeed::insecure_from_u64(seed), now, unix);
    let server: SocketAddr = "192.0.2.1:443".parse().expect("addr");
    client.connect(now, server).expect("a key is configured");
    let mut buf = Vec::new();
    let t = client.poll_transmit(now, 1, &mut buf).expect("the Initial");
    buf.truncate(t.size);
    buf
}

fn server(config: EndpointConfig, unix: Duration) -> (Endpoint, Instant) {
    let now = Instant::now();
    let ep = Endpoint::new(Arc::new(config), RngSeed::insecure_from_u64(99), now, unix);
    (ep, now)
}

/// Feeds `datagram` from `from`; whether the server has anything to send back.
fn answers(ep: &mut Endpoint, now: Instant, from: &str, datagram: &[u8]) -> bool {
    let mut copy = datagram.to_vec();
    ep.handle_datagram(now, CarrierId(0), from.parse().expect("addr"), &mut copy);
    let mut buf = Vec::new();
    ep.poll_transmit(now, 1, &mut buf).is_some()
}

#[test]
fn persisted_replay_state_refuses_a_recorded_initial() {
    // A client clock 30 s fast: its Initials are stamped after any restart within 30 s.
    let recorded = initial(&psk(1), T + Duration::from_secs(30), 1);
    let config = EndpointConfig::server(vec![psk(1)]);
    let (mut first, now) = server(config.clone(), T);
    assert!(answers(&mut first, now, "198.51.100.1:5000", &recorded));
    let journal = first.take_replay_journal();
    assert_eq!(journal.new.len(), 1);
    assert_eq!(first.replay_records(), journal.new);
    drop(first);

    let restart = T + Duration::from_secs(5);
    let (mut second, now) = server(config.clone(), restart);
    second.load_replay_state(restart, journal.new.clone());
    assert!(!answers(&mut second, now, "203.0.113.9:6000", &recorded));
    assert_eq!(second.stats().dropped_replayed_handshakes, 1);
    assert_eq!(second.stats().accepted, 0);

    // Without the persisted state, the same restart answers the recording: what the file buys.
    let (mut forgetful, now) = server(config, restart);
    assert!(answers(&mut forgetful, now, "203.0.113.9:6000", &recorded));
}

#[test]
fn without_state_initials_stamped_before_the_start_are_refused() {
    let config = EndpointConfig::server(vec![psk(1)]);
    let before = initial(&psk(1), T - Duration::from_millis(1), 2);
    let after = initial(&psk(1), T, 3);
    let (mut ep, now) = server(config, T);
    assert!(!answers(&mut ep, now, "198.51.100.1:5000", &before));
    assert!(answers(&mut ep, now, "198.51.100.1:5001", &after));
    assert_eq!(ep.stats().dropped_replayed_handshakes, 1);
}

fn limits() -> EndpointLimits {
    EndpointLimits {
        handshakes_per_source: TokenRate {
            burst: 2,
            per_second: 1,
        },
        ..EndpointLimits::default()
    }
}

#[test]
fn handshake_budget_per_source_and_junk_costs_none() {
    let config = EndpointConfig {
        limits: limits(),
        ..EndpointConfig::server(vec![psk(1)])
    };
    let (mut ep, now) = server(config, T);
    // Junk fails the header check and spends nothing.
    for i in 0..100u32 {
        let junk: Vec<u8> = (0..1200u32)
            .map(|b| (b.wrapping_mul(31) ^ i) as u8)
            .collect();
        assert!(!answers(&mut ep, now, "198.51.100.1:5000", &junk));
    }
    assert_eq!(ep.stats().dropped_unauthenticated, 100);
    for seed in 10..12 {
        assert!(answers(
            &mut ep,
            now,
            "198.51.100.1:5000",
            &initial(&psk(1), T, seed)
        ));
    }
    let third = initial(&psk(1), T, 12);
    assert!(!answers(&mut ep, now, "198.51.100.1:5002", &third));
    assert_eq!(ep.stats().dropped_over_budget, 1);
    // Another source has its own bucket; the first one's refills with time.
    assert!(answers(
        &mut ep,
        now,
        "198.51.100.2:5000",
        &initial(&psk(1), T, 13)
    ));
    let later = now + Duration::from_secs(1);
    assert!(answers(&mut ep, later, "198.51.100.1:5002", &third));
    assert_eq!(
        ep.poll_limit_hits(),
        vec![LimitHit {
            kind: LimitKind::HandshakeBudget,
            key_index: None,
            count: 1
        }]
    );
}

#[test]
fn connection_caps_drop_authentic_initials() {
    let config = EndpointConfig {
        limits: EndpointLimits {
            max_connections_per_key: 1,
            max_half_open: 2,
            ..EndpointLimits::default()
        },
        ..EndpointConfig::server(vec![psk(1), psk(2)])
    };
    let (mut ep, now) = server(config, T);
    assert!(answers(
        &mut ep,
        now,
        "198.51.100.1:1",
        &initial(&psk(1), T, 20)
    ));
    assert!(!answers(
        &mut ep,
        now,
        "198.51.100.2:1",
        &initial(&psk(1), T, 21)
    ));
    assert!(answers(
        &mut ep,
        now,
        "198.51.100.3:1",
        &initial(&psk(2), T, 22)
    ));
    assert_eq!(ep.stats().dropped_at_capacity, 1);
    // Two half-open handshakes now (no client confirmed): the cap of 2 bites for any key.
    let config3 = EndpointConfig {
        limits: EndpointLimits {
            max_half_open: 2,
            ..EndpointLimits::default()
        },
        ..EndpointConfig::server(vec![psk(3)])
    };
    let (mut ep3, now3) = server(config3, T);
    assert!(answers(
        &mut ep3,
        now3,
        "198.51.100.1:1",
        &initial(&psk(3), T, 30)
    ));
    assert!(answers(
        &mut ep3,
        now3,
        "198.51.100.2:1",
        &initial(&psk(3), T, 31)
    ));
    assert!(!answers(
        &mut ep3,
        now3,
        "198.51.100.3:1",
        &initial(&psk(3), T, 32)
    ));
    let hits: Vec<_> = ep
        .poll_limit_hits()
        .into_iter()
        .chain(ep3.poll_limit_hits())
        .map(|h| (h.kind, h.key_index, h.count))
        .collect();
    assert_eq!(
        hits,
        vec![
            (LimitKind::KeyConnections, Some(0), 1),
            (LimitKind::HalfOpen, Some(0), 1)
        ]
    );
}

/// The half-open count follows handshakes as clients confirm them: a confirmed connection
/// frees its place for the next handshake at once (without waiting for the endpoint's next
/// timer pass), and the cap still holds afterwards.
#[test]
fn a_confirmed_handshake_frees_its_half_open_place() {
    let config = EndpointConfig {
        limits: EndpointLimits {
            max_half_open: 2,
            ..EndpointLimits::default()
        },
        ..EndpointConfig::server(vec![psk(4)])
    };
    let (mut ep, now) = server(config, T);
    let server_addr: SocketAddr = "192.0.2.1:443".parse().expect("addr");
    let client_addr: SocketAddr = "198.51.100.9:5000".parse().expect("addr");
    let mut client = Endpoint::new(
        Arc::new(EndpointConfig::client(psk(4))),
        RngSeed::insecure_from_u64(40),
        now,
        T,
    );
    client
        .connect(now, server_addr)
        .expect("a key is configured");
    let mut buf = Vec::new();
    let t = client.poll_transmit(now, 1, &mut buf).expect("the Initial");
    ep.handle_datagram(now, CarrierId(0), client_addr, &mut buf[..t.size]);
    let t = ep.poll_transmit(now, 1, &mut buf).expect("the Response");
    let mut response = buf[..t.size].to_vec();
    // The client's handshake and one more are half-open: a third is refused.
    assert!(answers(
        &mut ep,
        now,
        "198.51.100.2:1",
        &initial(&psk(4), T, 41)
    ));
    assert!(!answers(
        &mut ep,
        now,
        "198.51.100.3:1",
        &initial(&psk(4), T, 42)
    ));
    // The client gets its Response and confirms.
    client.handle_datagram(now, CarrierId(0), server_addr, &mut response);
    loop {
        let mut moved = false;
        while let Some(t) = client.poll_transmit(now, 1, &mut buf) {
            ep.handle_datagram(now, CarrierId(0), client_addr, &mut buf[..t.size]);
            moved = true;
        }
        while let Some(t) = ep.poll_transmit(now, 1, &mut buf) {
            if t.destination == client_addr {
                client.handle_datagram(now, CarrierId(0), server_addr, &mut buf[..t.size]);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    // One place is free again, and only one.
    assert!(answers(
        &mut ep,
        now,
        "198.51.100.4:1",
        &initial(&psk(4), T, 43)
    ));
    assert!(!answers(
        &mut ep,
        now,
        "198.51.100.5:1",
        &initial(&psk(4), T, 44)
    ));
    let hits: Vec<_> = ep
        .poll_limit_hits()
        .into_iter()
        .map(|h| (h.kind, h.key_index, h.count))
        .collect();
    assert_eq!(hits, vec![(LimitKind::HalfOpen, Some(0), 2)]);
}
