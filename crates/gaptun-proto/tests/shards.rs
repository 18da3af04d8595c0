//! A server split into shards (one endpoint per core): connection IDs name their shard, a
//! datagram that reaches the wrong shard is pointed to the right one, and the shards share
//! the replay cache and the connection caps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaptun_proto::endpoint::ShardError;
use gaptun_proto::{CarrierId, Endpoint, EndpointConfig, Psk, RngSeed};

const T: Duration = Duration::from_secs(1_700_000_000);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn shards(config: EndpointConfig, count: u64, now: Instant) -> Vec<Endpoint> {
    let seeds = (0..count)
        .map(|i| RngSeed::insecure_from_u64(100 + i))
        .collect();
    Endpoint::new_sharded(Arc::new(config), seeds, now, T).expect("shard count")
}

fn client(seed: u64, now: Instant) -> Endpoint {
    let config = Arc::new(EndpointConfig::client(Psk::from_bytes([7; 32])));
    Endpoint::new(config, RngSeed::insecure_from_u64(seed), now, T)
}

/// Everything `ep` wants to send now, one datagram each.
fn drain(ep: &mut Endpoint, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut buf = Vec::new();
        match ep.poll_transmit(now, 1, &mut buf) {
            Some(t) => {
                buf.truncate(t.size);
                out.push(buf);
            }
            None => return out,
        }
    }
}

/// Delivers `datagram` to shard `first`, following the redirect it returns (at most one).
/// Returns the shard that took it.
fn deliver(
    shards: &mut [Endpoint],
    first: usize,
    from: SocketAddr,
    datagram: &[u8],
    now: Instant,
) -> usize {
    let mut copy = datagram.to_vec();
    match shards[first].handle_datagram(now, CarrierId(0), from, &mut copy) {
        None => first,
        Some(other) => {
            assert_ne!(other, first, "a shard never redirects to itself");
            let mut copy = datagram.to_vec();
            let again = shards[other].handle_datagram(now, CarrierId(0), from, &mut copy);
            assert_eq!(again, None, "the named shard takes the datagram");
            other
        }
    }
}

#[test]
fn a_client_that_lands_on_another_shard_is_sent_back_to_its_own() {
    let now = Instant::now();
    let server_addr = addr("192.0.2.1:443");
    let mut server = shards(
        EndpointConfig::server(vec![Psk::from_bytes([7; 32])]),
        3,
        now,
    );
    let mut c = client(1, now);
    let handle = c.connect(now, server_addr).expect("key");
    let from = addr("198.51.100.1:5000");
    // The Initial reaches shard 2 (as the kernel's hash might decide); the connection lives
    // there. Later datagrams reach any shard, as after the hash changed (the client moved, or
    // sockets joined the group).
    let mut redirected = 0;
    let mut stream = None;
    for round in 0..40 {
        // Virtual time moves on, so that pacing and timers let everything out.
        let now = now + Duration::from_millis(20 * round as u64);
        for ep in server.iter_mut().chain([&mut c]) {
            if ep.poll_timeout().is_some_and(|t| t <= now) {
                ep.handle_timeout(now);
            }
        }
        // Once connected, the client sends a little on a stream each round, so it keeps
        // sending from its new address.
        let conn = c.connection(handle).expect("client connection");
        if conn.is_established() {
            let id = *stream.get_or_insert_with(|| conn.open_stream().expect("a stream"));
            conn.write(id, b"hello").expect("write");
        }
        for d in drain(&mut c, now) {
            let first = if round == 0 { 2 } else { round % 3 };
            let took = deliver(&mut server, first, from, &d, now);
            assert_eq!(
                took, 2,
                "round {round}: every datagram ends at the connection's shard"
            );
            if first != 2 {
                redirected += 1;
            }
        }
        for (i, shard) in server.iter_mut().enumerate() {
            for d in drain(shard, now) {
                assert_eq!(i, 2, "only the connection's shard answers");
                c.handle_datagram(now, CarrierId(0), server_addr, &mut d.clone());
            }
        }
    }
    assert!(
        redirected > 0,
        "some datagrams reached the wrong shard first"
    );
    assert!(
        c.connection(handle)
            .expect("client connection")
            .is_established()
    );
    assert!(server[0].handles().is_empty() && server[1].handles().is_empty());
    let handles = server[2].handles();
    assert_eq!(handles.len(), 1);
    // Shard 2 of 3 numbers its connections 2, 5, 8...: no handle collides across shards.
    assert_eq!(handles[0].0 % 3, 2);
    let conn = server[2].connection(handles[0]).expect("server connection");
    assert!(conn.is_established());
    // Every datagram was taken: the stream data sent through the wrong shards arrived.
    let id = conn.accept_stream().expect("the client's stream");
    let mut buf = vec![0u8; 4096];
    let n = conn.read(id, &mut buf).expect("read").expect("data");
    assert!(n >= 5 * 30, "{n} bytes arrived");
    assert!(buf[..n].chunks(5).all(|c| c == b"hello"));
    assert_eq!(server.iter().map(|s| s.stats().accepted).sum::<u64>(), 1);
}

#[test]
fn shards_share_the_replay_cache_and_the_caps() {
    let now = Instant::now();
    let mut config = EndpointConfig::server(vec![Psk::from_bytes([7; 32])]);
    config.limits.max_connections = 2;
    let mut server = shards(config, 2, now);
    let server_addr = addr("192.0.2.1:443");
    let mut first = client(1, now);
    first.connect(now, server_addr).expect("key");
    let initial = drain(&mut first, now).remove(0);
    assert_eq!(
        deliver(&mut server, 0, addr("198.51.100.1:5000"), &initial, now),
        0
    );
    assert_eq!(
        drain(&mut server[0], now).len(),
        1,
        "shard 0 answers the Initial"
    );
    // The same Initial replayed from elsewhere reaches shard 1: refused all the same.
    deliver(&mut server, 1, addr("203.0.113.9:7000"), &initial, now);
    assert!(drain(&mut server[1], now).is_empty());
    assert_eq!(server[1].stats().dropped_replayed_handshakes, 1);
    assert_eq!(server[1].stats().accepted, 0);
    // The cap of 2 counts both shards: a second client on shard 1 fits, a third does not.
    for (seed, expect_accepted) in [(2, true), (3, false)] {
        let mut c = client(seed, now);
        c.connect(now, server_addr).expect("key");
        let initial = drain(&mut c, now).remove(0);
        deliver(&mut server, 1, addr("198.51.100.2:5000"), &initial, now);
        assert_eq!(
            !drain(&mut server[1], now).is_empty(),
            expect_accepted,
            "client {seed}"
        );
    }
    assert_eq!(server[1].stats().accepted, 1);
    assert_eq!(server[1].stats().dropped_at_capacity, 1);
}

/// The shared replay cache is the one lock the shards share; a shard's loop asks
/// `replay_journal_pending` before taking it. Only the shard that took a handshake has
/// something to persist; data on an established connection leaves the flag down.
#[test]
fn only_the_shard_that_took_a_handshake_has_a_journal_to_persist() {
    let now = Instant::now();
    let mut server = shards(
        EndpointConfig::server(vec![Psk::from_bytes([7; 32])]),
        2,
        now,
    );
    let server_addr = addr("192.0.2.1:443");
    let from = addr("198.51.100.1:5000");
    assert!(server.iter().all(|s| !s.replay_journal_pending()));
    let mut c = client(1, now);
    let handle = c.connect(now, server_addr).expect("key");
    let initial = drain(&mut c, now).remove(0);
    assert_eq!(deliver(&mut server, 1, from, &initial, now), 1);
    assert!(
        server[1].replay_journal_pending(),
        "shard 1 recorded the Initial"
    );
    assert!(!server[0].replay_journal_pending(), "shard 0 saw nothing");
    let journal = server[1].take_replay_journal();
    assert_eq!(journal.new.len(), 1, "the Initial's fingerprint");
    assert!(!server[1].replay_journal_pending());
    // The handshake completes and stream data flows: no handshake, so nothing to persist.
    let mut delivered = 0;
    for round in 0..20u64 {
        let now = now + Duration::from_millis(20 * round);
        for ep in server.iter_mut().chain([&mut c]) {
            if ep.poll_timeout().is_some_and(|t| t <= now) {
                ep.handle_timeout(now);
            }
        }
        for d in drain(&mut server[1], now) {
            c.handle_datagram(now, CarrierId(0), server_addr, &mut d.clone());
        }
        let conn = c.connection(handle).expect("client connection");
        if conn.is_established() {
            let id = conn.open_stream().expect("a stream");
            conn.write(id, b"data").expect("write");
        }
        for d in drain(&mut c, now) {
            assert_eq!(deliver(&mut server, 1, from, &d, now), 1);
            delivered += 1;
        }
        assert!(
            server.iter().all(|s| !s.replay_journal_pending()),
            "round {round}: data left a journal pending"
        );
    }
    assert!(delivered > 5, "the client sent after the handshake");
    assert_eq!(server[1].stats().accepted, 1);
}

#[test]
fn shard_counts_are_bounded() {
    let now = Instant::now();
    let config = Arc::new(EndpointConfig::server(vec![Psk::from_bytes([7; 32])]));
    let none = Endpoint::new_sharded(Arc::clone(&config), Vec::new(), now, T);
    assert_eq!(none.err(), Some(ShardError::Count(0)));
}
