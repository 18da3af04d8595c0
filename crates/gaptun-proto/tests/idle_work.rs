//! The endpoint's work per iteration follows the connections that have something to do: with
//! 10 000 idle connections, a datagram for one of them and the timer of one of them each make
//! the endpoint look at that one connection, not at all of them (counted, not timed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaptun_proto::config::EndpointLimits;
use gaptun_proto::endpoint::Visits;
use gaptun_proto::{
    CarrierId, ConnectionHandle, Endpoint, EndpointConfig, Event, Psk, RngSeed, StreamEvent,
};

const T: Duration = Duration::from_secs(1_700_000_000);
const IDLE: usize = 10_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

/// Limits that admit every handshake of the test (they all come from one address at once).
fn unlimited() -> EndpointLimits {
    EndpointLimits::for_one_source(2 * IDLE)
}

/// Passes datagrams both ways at `now` until neither endpoint has anything to send.
fn exchange(client: &mut Endpoint, server: &mut Endpoint, now: Instant) {
    let (client_addr, server_addr) = (addr("198.51.100.1:5000"), addr("192.0.2.1:443"));
    let mut buf = Vec::new();
    loop {
        let mut moved = false;
        while let Some(t) = client.poll_transmit(now, 1, &mut buf) {
            server.handle_datagram(now, CarrierId(0), client_addr, &mut buf[..t.size]);
            moved = true;
        }
        while let Some(t) = server.poll_transmit(now, 1, &mut buf) {
            client.handle_datagram(now, CarrierId(0), server_addr, &mut buf[..t.size]);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

/// One driver iteration of the server, as the runtime's: due timers, the touched connections'
/// events, everything to send, the next deadline. Returns the touched connections and their
/// events, and what was sent.
fn iteration(server: &mut Endpoint, now: Instant) -> (Vec<Touched>, Vec<Vec<u8>>) {
    if server.poll_timeout().is_some_and(|t| t <= now) {
        server.handle_timeout(now);
    }
    let mut touched = Vec::new();
    server.take_touched(&mut touched);
    let events = touched
        .iter()
        .map(|&h| (h, std::iter::from_fn(|| server.poll_event(h)).collect()))
        .collect();
    let mut sent = Vec::new();
    let mut buf = Vec::new();
    while let Some(t) = server.poll_transmit(now, 1, &mut buf) {
        sent.push(buf[..t.size].to_vec());
    }
    let _ = server.poll_timeout();
    (events, sent)
}

/// A connection the endpoint handed out as touched, with its events.
type Touched = (ConnectionHandle, Vec<Event>);

fn work(before: Visits, after: Visits) -> u64 {
    (after.transmit_polls - before.transmit_polls)
        + (after.timer_updates - before.timer_updates)
        + (after.timers_fired - before.timers_fired)
        + (after.drain_checks - before.drain_checks)
        + (after.touched - before.touched)
}

#[test]
fn one_busy_connection_among_ten_thousand_idle_costs_one_connections_work() {
    let start = Instant::now();
    let psk = Psk::from_bytes([7; 32]);
    let mut config = EndpointConfig::server(vec![psk.clone()]);
    config.limits = unlimited();
    let mut server = Endpoint::new(Arc::new(config), RngSeed::insecure_from_u64(1), start, T);
    let client_config = Arc::new(EndpointConfig::client(psk));
    let mut client = Endpoint::new(client_config, RngSeed::insecure_from_u64(2), start, T);
    let server_addr = addr("192.0.2.1:443");
    let handles: Vec<_> = (0..=IDLE)
        .map(|_| client.connect(start, server_addr).expect("key"))
        .collect();
    exchange(&mut client, &mut server, start);
    while server.accept().is_some() {}
    assert_eq!(server.connection_count(), IDLE + 1);
    let busy = handles[0];

    // Settle what the handshakes left (their events, delayed ACKs, confirmations): virtual
    // time moves on in steps until no timer of either side is due for a while.
    let mut now = start;
    for _ in 0..100 {
        now += Duration::from_millis(10);
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now);
        }
        let _ = iteration(&mut server, now);
        exchange(&mut client, &mut server, now);
        let _ = iteration(&mut server, now);
        let quiet = |t: Option<Instant>| t.is_none_or(|t| t > now + Duration::from_millis(100));
        if quiet(server.poll_timeout()) && quiet(client.poll_timeout()) {
            break;
        }
    }
    let next = server.poll_timeout();
    assert!(
        next.is_none_or(|t| t > now + Duration::from_millis(100)),
        "the server settled: next deadline {:?} after now",
        next.map(|t| t - now)
    );
    // The busy connection opens a stream and sends on it.
    let conn = client.connection(busy).expect("client connection");
    assert!(conn.is_established());
    let id = conn.open_stream().expect("stream");
    conn.write(id, b"ping").expect("write");
    let mut datagrams = Vec::new();
    let mut buf = Vec::new();
    while let Some(t) = client.poll_transmit(now, 1, &mut buf) {
        datagrams.push(buf[..t.size].to_vec());
    }
    assert!(!datagrams.is_empty(), "the client sends");

    let before = server.visits();
    for d in &mut datagrams {
        server.handle_datagram(now, CarrierId(0), addr("198.51.100.1:5000"), d);
    }
    let (events, sent) = iteration(&mut server, now);
    let after = server.visits();
    // The one connection's stream became readable, and it was the only one touched.
    assert_eq!(events.len(), 1, "{} connections touched", events.len());
    let (handle, events) = &events[0];
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Stream(StreamEvent::Opened))),
        "{events:?} after {} datagrams",
        datagrams.len()
    );
    let server_conn = server.peek_connection(*handle).expect("server connection");
    assert!(server_conn.is_established());
    assert!(sent.len() <= 1, "at most an ACK: {} datagrams", sent.len());
    let datagram_work = work(before, after);
    assert!(
        datagram_work <= 16,
        "a datagram for one connection of {} made {datagram_work} visits: {before:?} -> {after:?}",
        IDLE + 1
    );

    // The server answers (not counted); the answer is lost, so the busy connection's
    // retransmission timer is the earliest deadline. Only the connections due then are visited
    // when it fires.
    let handle = *handle;
    let conn = server.connection(handle).expect("server connection");
    let sid = conn.accept_stream().expect("the client's stream");
    conn.write(sid, b"pong").expect("write");
    let (_, sent) = iteration(&mut server, now);
    assert!(!sent.is_empty(), "the answer went out");
    let due_at = server.poll_timeout().expect("a deadline");
    let due = (0..)
        .map(ConnectionHandle)
        .take(IDLE + 1)
        .filter_map(|h| server.peek_connection(h))
        .filter(|c| c.poll_timeout().is_some_and(|t| t <= due_at))
        .count();
    assert!(
        (1..=2).contains(&due),
        "{due} connections due at the earliest deadline"
    );
    let before = server.visits();
    let _ = iteration(&mut server, due_at);
    let after = server.visits();
    assert_eq!(after.timers_fired - before.timers_fired, due as u64);
    let timer_work = work(before, after);
    assert!(
        timer_work <= 16 * due as u64,
        "a timer of {due} connection(s) made {timer_work} visits: {before:?} -> {after:?}"
    );
}
