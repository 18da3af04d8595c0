//! The fake-TCP carrier through a NAT router with strict conntrack (see `common`): datagrams
//! intact, no INVALID packet, the mapping kept across idle time, reconnection after a RST.
//! Needs root; skips with a printed reason otherwise.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::{Topology, topology_or_skip};
use gaptun_faketcp::{ClientConfig, FakeTcpSocket, ServerConfig, Timing};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::time::timeout;

const PORTS: std::ops::RangeInclusive<u16> = 10001..=10003;

/// Runs an echo server in the server namespace until `stop` fires; returns its flows' remote
/// addresses as last seen and the RST-rule table it used.
fn echo_server(
    topo: &Topology,
    timing: Timing,
) -> (
    oneshot::Sender<()>,
    std::thread::JoinHandle<Vec<(SocketAddr, SocketAddr)>>,
) {
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = Topology::spawn_in(&topo.server, move || async move {
        let server = FakeTcpSocket::server(ServerConfig {
            addr: std::net::Ipv4Addr::UNSPECIFIED.into(),
            ports: PORTS,
            timing,
        })
        .expect("fake TCP server starts");
        ready_tx.send(()).expect("test waits");
        let mut buf = vec![0u8; 65536];
        let mut seen = Vec::new();
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                got = server.recv_from(&mut buf) => {
                    let (n, from) = got.expect("receive");
                    server.send_to(&buf[..n], from).await.expect("send");
                    seen = server.flow_addresses();
                }
            }
        }
        seen
    });
    ready_rx.recv().expect("server started");
    (stop_tx, handle)
}

fn client(topo: &Topology, timing: Timing) -> FakeTcpSocket {
    FakeTcpSocket::client(ClientConfig {
        server: topo.server_ip.into(),
        ports: PORTS,
        timing,
    })
    .expect("fake TCP client starts")
}

fn server_port(topo: &Topology, port: u16) -> SocketAddr {
    SocketAddr::new(topo.server_ip.into(), port)
}

/// Sends `count` datagrams round-robin over the server's ports, up to `window` outstanding,
/// and checks every echo: returns the SHA-256 of what was sent and of what came back (in
/// datagram order).
async fn echo_many(
    sock: &FakeTcpSocket,
    topo: &Topology,
    count: u32,
    window: u32,
) -> Result<([u8; 32], [u8; 32]), String> {
    let ports: Vec<u16> = PORTS.collect();
    let datagram = |i: u32| -> Vec<u8> {
        let len = 64 + (i as usize * 97) % 1337;
        let mut d: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect();
        d[..4].copy_from_slice(&i.to_be_bytes());
        d
    };
    let mut sent_hash = Sha256::new();
    let mut echoes: Vec<Option<Vec<u8>>> = vec![None; count as usize];
    let mut next = 0u32;
    let mut received = 0u32;
    let mut buf = vec![0u8; 65536];
    while received < count {
        while next < count && next - received < window {
            let d = datagram(next);
            sent_hash.update(&d);
            let port = ports[next as usize % ports.len()];
            sock.send_to(&d, server_port(topo, port))
                .await
                .map_err(|e| e.to_string())?;
            next += 1;
        }
        let (n, _from) = timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .map_err(|_| format!("echo {received}/{count} not back within 5 s"))?
            .map_err(|e| e.to_string())?;
        let id = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let slot = echoes.get_mut(id).ok_or("echo with an unknown id")?;
        if slot.replace(buf[..n].to_vec()).is_none() {
            received += 1;
        }
    }
    let mut echo_hash = Sha256::new();
    for echo in echoes.into_iter().flatten() {
        echo_hash.update(&echo);
    }
    Ok((sent_hash.finalize().into(), echo_hash.finalize().into()))
}

#[test]
fn datagrams_cross_a_strict_nat_intact_and_valid() {
    let Some(topo) = topology_or_skip("datagrams_cross_a_strict_nat_intact_and_valid") else {
        return;
    };
    // A table left by a gaptun that died (its pid is that of a process that has exited) is
    // removed when the next carrier starts.
    let mut dead = std::process::Command::new("true").spawn().expect("spawn");
    let dead_pid = dead.id();
    dead.wait().expect("wait");
    let stale = format!("gaptun_ft_{dead_pid}_0");
    topo.exec(&topo.server, &["nft", "add", "table", "ip", &stale])
        .expect("stale table");
    let topo = Arc::new(topo);
    let (stop, server) = echo_server(&topo, Timing::default());
    let after_start = topo
        .exec(&topo.server, &["nft", "list", "tables"])
        .unwrap_or_default();
    assert!(
        !after_start.contains(&stale),
        "stale table removed at start: {after_start}"
    );
    let t = Arc::clone(&topo);
    let client_side = Topology::spawn_in(&topo.client, move || async move {
        let sock = client(&t, Timing::default());
        let tables = t
            .exec(&t.client, &["nft", "list", "tables"])
            .unwrap_or_default();
        let hashes = echo_many(&sock, &t, 3000, 64).await;
        (hashes, sock.stats(), sock.established_flows(), tables)
    });
    let (hashes, stats, flows, client_tables) = client_side.join().expect("client thread");
    let server_tables = topo
        .exec(&topo.server, &["nft", "list", "tables"])
        .unwrap_or_default();
    let _ = stop.send(());
    let server_flows = server.join().expect("server thread");

    let (sent, echoed) = hashes.expect("all echoes back");
    assert_eq!(
        sent, echoed,
        "SHA-256 of the echoes equals that of the datagrams sent"
    );
    assert_eq!(flows, 3, "one flow per server port");
    assert_eq!(stats.established, 3);
    assert_eq!(stats.resets + stats.fins + stats.idle_timeouts, 0);
    assert_eq!(
        topo.invalid_packets(),
        0,
        "conntrack found no INVALID segment"
    );
    // ACKs are periodic, not one per data segment.
    assert!(
        stats.acks_sent < stats.data_received / 4,
        "{} empty ACKs for {} segments received",
        stats.acks_sent,
        stats.data_received
    );
    // The server saw the NATed address; both ends had their RST table while running.
    assert!(
        server_flows
            .iter()
            .all(|(_, remote)| remote.ip() == IpAddr::V4(topo.router_wan_ip))
    );
    assert_eq!(server_flows.len(), 3);
    assert!(
        client_tables.contains("gaptun_ft_"),
        "client rules: {client_tables}"
    );
    assert!(
        server_tables.contains("gaptun_ft_"),
        "server rules: {server_tables}"
    );
    // Dropped carriers take their rules with them.
    for ns in [&topo.client, &topo.server] {
        let tables = topo
            .exec(ns, &["nft", "list", "tables"])
            .unwrap_or_default();
        assert!(
            !tables.contains("gaptun_ft_"),
            "left behind in {ns}: {tables}"
        );
    }
}

/// Conntrack forgets established flows after 3 s here (instead of the 5 days default, or the
/// minutes of home routers); keepalive ACKs every second keep the mapping, so data still flows
/// after 7 s of silence. The same silence with keepalives every 30 s loses the mapping, and
/// with `nf_conntrack_tcp_loose = 0` the next segment is INVALID: the check has teeth.
#[test]
fn keepalives_keep_the_nat_mapping_across_idle_time() {
    let Some(topo) = topology_or_skip("keepalives_keep_the_nat_mapping_across_idle_time") else {
        return;
    };
    topo.set_established_timeout(3).expect("conntrack timeout");
    let topo = Arc::new(topo);
    let run = |keepalive: Duration| {
        let timing = Timing {
            keepalive,
            idle_timeout: Duration::from_secs(60),
            ..Timing::default()
        };
        let (stop, server) = echo_server(&topo, timing);
        let t = Arc::clone(&topo);
        let result = Topology::spawn_in(&topo.client, move || async move {
            let sock = client(&t, timing);
            let first = echo_many(&sock, &t, 30, 3).await;
            tokio::time::sleep(Duration::from_secs(7)).await;
            let second = timeout(Duration::from_secs(3), echo_many(&sock, &t, 30, 3)).await;
            (first.is_ok(), matches!(second, Ok(Ok(_))), sock.stats())
        })
        .join()
        .expect("client thread");
        let _ = stop.send(());
        server.join().expect("server thread");
        result
    };

    let (first, second, stats) = run(Duration::from_secs(1));
    assert!(first && second, "data flows before and after the idle time");
    assert_eq!(stats.established, 3, "no reconnection was needed");
    assert_eq!(topo.invalid_packets(), 0);

    let (first, second, _) = run(Duration::from_secs(30));
    assert!(first, "data flows before the idle time");
    assert!(!second, "without keepalives the mapping is gone");
    assert!(
        topo.invalid_packets() > 0,
        "conntrack refused the orphaned flow"
    );
}

/// The router answers the client's data with a RST (nft `reject with tcp reset`, as a
/// middlebox killing the flow would); the client opens a new flow and the echoes resume.
#[test]
fn router_rst_makes_the_client_reconnect() {
    let Some(topo) = topology_or_skip("router_rst_makes_the_client_reconnect") else {
        return;
    };
    let topo = Arc::new(topo);
    let (stop, server) = echo_server(&topo, Timing::default());
    let t = Arc::clone(&topo);
    let outcome = Topology::spawn_in(&topo.client, move || async move {
        let sock = client(&t, Timing::default());
        echo_many(&sock, &t, 30, 3)
            .await
            .expect("echoes before the RST");
        let before = sock.flow_addresses();
        t.router_nft(
            "table ip gfreject {\n\
               chain reject_data { type filter hook forward priority filter - 1; policy accept;\n\
                 tcp dport 10001-10003 tcp flags & (syn | rst) == 0 reject with tcp reset\n\
               }\n\
             }\n",
        )
        .expect("reject rule");
        let port = server_port(&t, 10001);
        // Segments reach the carrier only while someone receives (the runtime's driver always
        // does): receive while waiting for the RST.
        let mut buf = vec![0u8; 65536];
        for _ in 0..50 {
            let _ = sock.send_to(b"doomed", port).await;
            let _ = timeout(Duration::from_millis(20), sock.recv_from(&mut buf)).await;
            if sock.stats().resets >= 3 {
                break;
            }
        }
        t.router(&["nft", "delete", "table", "ip", "gfreject"])
            .expect("rule removed");
        let resets = sock.stats().resets;
        // Reconnection is immediate after the first loss of each flow. Keep receiving meanwhile
        // (handshakes progress in the receive path), and swallow the echoes of the doomed
        // datagrams that were queued during the reconnection.
        let mut waited = 0;
        while waited < 100 {
            let _ = timeout(Duration::from_millis(50), sock.recv_from(&mut buf)).await;
            waited += 1;
            if sock.established_flows() == 3 && waited > 10 {
                break;
            }
        }
        let after = sock.flow_addresses();
        let echoes = echo_many(&sock, &t, 300, 16).await;
        (resets, before, after, echoes, sock.stats())
    })
    .join()
    .expect("client thread");
    let _ = stop.send(());
    server.join().expect("server thread");

    let (resets, before, after, echoes, stats) = outcome;
    assert!(resets >= 1, "the client took the router's RST: {stats:?}");
    assert!(stats.established >= 4, "a new flow was opened: {stats:?}");
    assert_eq!(after.len(), 3);
    let reconnected = after.iter().filter(|flow| !before.contains(flow)).count();
    assert!(
        reconnected >= 1,
        "a flow with a new local port replaced the reset one"
    );
    let (sent, echoed) = echoes.expect("echoes after reconnecting");
    assert_eq!(sent, echoed);
}

/// Segmented sends go out as `sendmmsg` batches (33 datagrams: a full batch and a short one)
/// and come back through `recvmmsg` whole, in the sequence space conntrack expects.
#[test]
fn segmented_batches_arrive_whole_and_valid() {
    let Some(topo) = topology_or_skip("segmented_batches_arrive_whole_and_valid") else {
        return;
    };
    let topo = Arc::new(topo);
    let (stop, server) = echo_server(&topo, Timing::default());
    let t = Arc::clone(&topo);
    let client_side = Topology::spawn_in(&topo.client, move || async move {
        let sock = client(&t, Timing::default());
        let to = server_port(&t, *PORTS.start());
        // One datagram first: receiving its echo drives the handshake (segments of the
        // handshake are handled by whoever receives), so the batches below find the flow up.
        let mut buf = vec![0u8; 65536];
        sock.send_to(b"warm-up", to)
            .await
            .map_err(|e| e.to_string())?;
        let (n, _) = timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
            .await
            .map_err(|_| "no warm-up echo within 10 s".to_string())?
            .map_err(|e| e.to_string())?;
        if &buf[..n] != b"warm-up" {
            return Err("warm-up echo differs".to_string());
        }
        const SEGMENT: usize = 1000;
        let per_batch = FakeTcpSocket::MAX_BATCH + 1;
        let mut sent = Vec::new();
        let mut echoed = Vec::new();
        for round in 0..20u32 {
            // The last datagram of each batch is shorter than the others.
            let len = SEGMENT * (per_batch - 1) + 1 + round as usize;
            let contents: Vec<u8> = (0..len)
                .map(|j| (j as u32 * 13 + round * 101) as u8)
                .collect();
            let went = loop {
                match sock.try_send_segments(to, &contents, SEGMENT) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::future::poll_fn(|cx| sock.poll_writable(cx))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    other => break other.map_err(|e| e.to_string())?,
                }
            };
            if went != len {
                return Err(format!("round {round}: {went} of {len} bytes went"));
            }
            sent.extend(contents.chunks(SEGMENT).map(<[u8]>::to_vec));
            for _ in 0..per_batch {
                let (n, _) = timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
                    .await
                    .map_err(|_| format!("round {round}: an echo missing after 5 s"))?
                    .map_err(|e| e.to_string())?;
                echoed.push(buf[..n].to_vec());
            }
        }
        Ok::<_, String>((sent, echoed, sock.stats()))
    });
    let result = client_side.join().expect("client thread");
    let _ = stop.send(());
    let _ = server.join();
    let (sent, echoed, stats) = result.expect("every echo back");
    // Echoes may be reordered by nothing here (one flow, clean links): same order, same bytes.
    assert_eq!(sent.len(), 20 * (FakeTcpSocket::MAX_BATCH + 1));
    assert_eq!(echoed, sent, "every datagram whole and in order");
    assert_eq!(stats.dropped, 0);
    assert_eq!(
        stats.data_sent,
        sent.len() as u64 + 1,
        "the batches and the warm-up"
    );
    assert_eq!(
        topo.invalid_packets(),
        0,
        "conntrack found no INVALID segment"
    );
}
