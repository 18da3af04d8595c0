//! The replay state file: an Initial answered before a restart gets no answer after it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gaptun_runtime::RtEndpoint;
use gaptun_runtime::proto::handshake::{ClientHandshake, TransportParams};
use gaptun_runtime::proto::packet::ConnectionId;
use gaptun_runtime::proto::{CipherSuite, EndpointConfig, Psk};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;

/// A fresh directory under the system's temporary directory, removed by the test at the end.
fn scratch_dir(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("gaptun-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Sends `initial` to `server` and reports whether `server` sent anything back within a second
/// (datagrams from earlier servers, such as their late retransmissions, do not count).
async fn answered(probe: &UdpSocket, server: SocketAddr, initial: &[u8]) -> bool {
    probe.send_to(initial, server).await.expect("send");
    let mut buf = [0u8; 2048];
    let from_server = async {
        loop {
            match probe.recv_from(&mut buf).await {
                Ok((_, from)) if from == server => return,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(1), from_server)
        .await
        .is_ok()
}

/// A server on an ephemeral loopback port: one socket for `shards` = 1, else a sharded one.
fn server(config: &EndpointConfig, shards: usize) -> RtEndpoint {
    let any = "127.0.0.1:0".parse().expect("addr");
    if shards == 1 {
        RtEndpoint::bind(any, config.clone())
    } else {
        RtEndpoint::bind_sharded(&[any], config.clone(), shards)
    }
    .expect("bind")
}

/// What [`refused_after_a_restart`] recorded, for the checks a test adds.
struct Recorded {
    dir: PathBuf,
    config: EndpointConfig,
    probes: Vec<UdpSocket>,
    initials: Vec<Vec<u8>>,
}

/// A server of `shards` shards with a state file answers `count` Initials (each from its own
/// socket, so the kernel may spread them over the shards), writing a record for each before
/// its Response; restarted, it refuses every one of them. The Initials are stamped 30 s ahead
/// of the server's clock (a client clock running fast, within the window): a restarted server
/// that remembers nothing would accept them.
async fn refused_after_a_restart(name: &str, shards: usize, count: u8) -> Recorded {
    let dir = scratch_dir(name);
    let path = dir.join("replay.state");
    let psk = Psk::from_bytes([0x42; 32]);
    let mut config = EndpointConfig::server(vec![psk.clone()]);
    config.state_file = Some(path.clone());
    let ahead = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        + Duration::from_secs(30);
    let params = TransportParams {
        max_data: 1 << 20,
        max_stream_data: 1 << 19,
        max_streams: 16,
        idle_timeout_ms: 30_000,
        max_udp_payload: 1350,
        ciphers: vec![CipherSuite::ChaCha20Poly1305, CipherSuite::Aes256Gcm],
        fec: true,
        max_datagram_size: 65_535,
        carrier_offer: None,
    };
    let initials: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            ClientHandshake::start(
                &psk,
                ConnectionId([i + 1; 8]),
                &params,
                ahead,
                1200,
                &mut StdRng::seed_from_u64(u64::from(i) + 20),
            )
            .1
        })
        .collect();

    let first = server(&config, shards);
    let mut probes = Vec::new();
    for initial in &initials {
        let probe = UdpSocket::bind("127.0.0.1:0").await.expect("bind probe");
        assert!(answered(&probe, first.local_addr(), initial).await);
        probes.push(probe);
    }
    assert_eq!(first.stats().accepted, u64::from(count));
    first.shutdown(Duration::from_secs(1)).await;
    drop(first);
    let len = std::fs::metadata(&path).expect("state file").len();
    assert_eq!(len, 8 + 40 * u64::from(count), "magic and a record each");

    let restarted = server(&config, shards);
    for (probe, initial) in probes.iter().zip(&initials) {
        assert!(!answered(probe, restarted.local_addr(), initial).await);
    }
    let stats = restarted.stats();
    assert_eq!(
        (stats.accepted, stats.dropped_replayed_handshakes),
        (0, u64::from(count))
    );
    restarted.shutdown(Duration::from_secs(1)).await;
    Recorded {
        dir,
        config,
        probes,
        initials,
    }
}

#[tokio::test]
async fn recorded_initial_is_refused_after_a_restart() {
    let recorded = refused_after_a_restart("replay", 1, 1).await;
    let (probe, initial) = (&recorded.probes[0], &recorded.initials[0]);

    // The control: the same restart without the state file answers the recording.
    let mut stateless = recorded.config.clone();
    stateless.state_file = None;
    let forgetful = server(&stateless, 1);
    assert!(answered(probe, forgetful.local_addr(), initial).await);
    forgetful.shutdown(Duration::from_secs(1)).await;

    // A file that is not ours is refused at bind, not silently replaced.
    let path = recorded.dir.join("replay.state");
    std::fs::write(&path, b"something else").expect("write");
    let err = RtEndpoint::bind("127.0.0.1:0".parse().expect("addr"), recorded.config)
        .expect_err("foreign state file");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let _ = std::fs::remove_dir_all(&recorded.dir);
}

/// A sharded server asks each shard whether it has a journal to persist instead of taking the
/// shared locks on every iteration: the shard that answers an Initial must still write its
/// record before the Response, and a restarted sharded server must refuse the recording.
#[tokio::test]
async fn a_sharded_server_persists_what_its_shards_accept() {
    let recorded = refused_after_a_restart("replay-shards", 2, 4).await;
    let _ = std::fs::remove_dir_all(&recorded.dir);
}
