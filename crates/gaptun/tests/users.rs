//! Named users on a server, with the real binaries: each user may expose only its own ports
//! (a refusal names the port and the rule), one user's `allow` lets it reach a target the
//! other is refused, `ctl stats json` names the users and gives each expose's figures after a
//! known transfer, a user's rate limit holds, and the logs name the users but never print a
//! key.

mod common;

use std::time::Duration;

use common::{Daemon, bounded, connect, free_tcp_port, free_udp_port, payload, sha256, stats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALICE_KEY: &str = "gt1:EBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi8";
const BOB_KEY: &str = "gt1:SxHBK5fKQw007lbLK8hc2ZBFs7tC071WmFwiBKoll0Y";

/// Bytes sent through the expose (and echoed back).
const SENT: usize = 4 << 20;

/// Alice's rate limit, Mbit/s: both directions of her streams together.
const ALICE_MBIT: u32 = 40;

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_users_have_their_own_ports_targets_and_figures() {
    let dir = common::scratch("users");
    let echo = common::start_echo().await;
    let tunnel = free_udp_port();
    let (alice_port, bob_port) = (free_tcp_port(), free_tcp_port());
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{tunnel}\"\nexpose_bind = \"127.0.0.1\"\n\
             [users.alice]\nkey = \"{ALICE_KEY}\"\nexpose_ports = \"{alice_port}\"\n\
             allow = [\"{echo}\"]\nrate_limit = {ALICE_MBIT}\n\
             [users.bob]\nkey = [\"{BOB_KEY}\"]\nexpose_ports = \"{bob_port}\"\n"
        ),
    )
    .unwrap();
    let server = Daemon::spawn(
        &dir,
        "server",
        &strings(&["server", "--config", config.to_str().unwrap()]),
    );
    let client = |name: &str, key: &str, extra: &[&str]| {
        let mut args = strings(&[
            "client",
            "--server",
            &format!("127.0.0.1:{tunnel}"),
            "--key",
            key,
        ]);
        args.extend(strings(extra));
        Daemon::spawn(&dir, name, &args)
    };
    let alice_socks = free_tcp_port();
    let alice = client(
        "alice",
        ALICE_KEY,
        &[
            "--socks",
            &alice_socks.to_string(),
            "--expose",
            &format!("{alice_port}={echo}"),
        ],
    );
    let bob_socks = free_tcp_port();
    let _bob = client("bob", BOB_KEY, &["--socks", &bob_socks.to_string()]);

    // Bob may not expose Alice's port: the client ends at start-up naming the port, the
    // server's log names the rule.
    let out = common::run(&[
        "client",
        "--server",
        &format!("127.0.0.1:{tunnel}"),
        "--key",
        BOB_KEY,
        "--expose",
        &format!("{alice_port}={echo}"),
        "--control",
        dir.join("bob-expose.sock").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "tcp port {alice_port} is not allowed by the server (outside its expose_ports)"
        )),
        "{stderr}"
    );

    bounded(60, async {
        // Alice's `allow` lets her reach the echo service; Bob has no such rule (and the
        // server-wide rules refuse loopback), so he gets "not allowed by ruleset".
        let (code, mut tcp) = common::socks_connect(
            format!("127.0.0.1:{alice_socks}").parse().unwrap(),
            &echo.to_string(),
        )
        .await;
        assert_eq!(code, 0);
        tcp.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        tcp.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"ping");
        drop(tcp);
        let (code, _) = common::socks_connect(
            format!("127.0.0.1:{bob_socks}").parse().unwrap(),
            &echo.to_string(),
        )
        .await;
        assert_eq!(code, 2, "bob must be refused {echo}");

        // A known transfer through Alice's expose: SENT bytes each way.
        let data = payload(SENT, 9);
        let mut visitor = connect(format!("127.0.0.1:{alice_port}").parse().unwrap()).await;
        let started = std::time::Instant::now();
        let (mut r, mut w) = visitor.split();
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::with_capacity(SENT);
        let recv = async {
            r.read_to_end(&mut back).await.unwrap();
        };
        tokio::join!(send, recv);
        assert_eq!(sha256(&back), sha256(&data));
        // 2 × SENT bytes through a bucket of ALICE_MBIT: at least 90 % of the time that takes
        // (unlimited, loopback moves this in a fraction of it).
        let took = started.elapsed().as_secs_f64();
        let floor = 2.0 * SENT as f64 * 8.0 / (f64::from(ALICE_MBIT) * 1e6);
        println!(
            "{SENT} bytes each way under {ALICE_MBIT} Mbit/s took {took:.2} s (floor {floor:.2} s)"
        );
        assert!(
            took > 0.9 * floor,
            "the rate limit did not hold: {took:.2} s"
        );
    })
    .await;

    let within = |v: &serde_json::Value, what: &str| {
        let n = v.as_u64().unwrap_or_else(|| panic!("{what}: {v}"));
        let off = n.abs_diff(SENT as u64) as f64 / SENT as f64;
        assert!(off < 0.03, "{what}: {n} bytes for {SENT} sent");
        n
    };
    // The figures settle as the visitor's connection winds down.
    let mut s = stats(&server.control);
    for _ in 0..100 {
        if s["exposes"][0]["visitors_now"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        s = stats(&server.control);
    }
    let e = &s["exposes"][0];
    assert_eq!(s["exposes"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(e["user"], "alice", "{s}");
    assert_eq!(e["kind"], "tcp");
    assert_eq!(e["ports"], alice_port.to_string());
    assert_eq!(e["visitors_total"], 1, "{s}");
    assert_eq!(e["visitors_now"], 0, "{s}");
    let up = within(&e["bytes_to_service"], "server to_service");
    let down = within(&e["bytes_to_visitors"], "server to_visitors");
    println!("server counted {up} bytes to the service, {down} to the visitor ({SENT} sent)");
    let mut users: Vec<&str> = s["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user"].as_str().unwrap())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob"], "{s}");

    let c = stats(&alice.control);
    let e = &c["exposes"][0];
    assert_eq!(e["local"], echo.to_string(), "{c}");
    assert!(e.get("user").is_none(), "{c}");
    within(&e["bytes_to_service"], "client to_service");
    within(&e["bytes_to_visitors"], "client to_visitors");
    let table = common::ctl(&server.control, &["stats"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("tcp:{alice_port} ")) && l.contains(" alice ")),
        "{table}"
    );

    // Logs name the users and never print a key.
    let log = server.stderr();
    for user in ["alice", "bob"] {
        assert!(
            log.lines()
                .any(|l| l.contains("client connected") && l.contains(&format!("user={user}"))),
            "{log}"
        );
    }
    assert!(
        log.contains(&format!(
            "refused at port {alice_port}: outside bob's expose_ports {bob_port}"
        )),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("user=bob") && l.contains(&echo.to_string())),
        "the refused target is logged with its user:\n{log}"
    );
    for key in [ALICE_KEY, BOB_KEY] {
        let secret = key.trim_start_matches("gt1:");
        for (who, text) in [("server", &log), ("alice", &alice.stderr())] {
            assert!(!text.contains(secret), "{who}'s log shows a key:\n{text}");
        }
    }
}
