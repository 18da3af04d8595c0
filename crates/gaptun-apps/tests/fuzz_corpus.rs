//! Runs the entry points of the gaptun-apps fuzz targets over their committed corpora in
//! `fuzz/corpus/<target>/`, over valid messages made here, and over deterministic mutations
//! of both, on stable Rust. A panic (a crash, or a broken round-trip invariant) fails the test;
//! a crash found by libFuzzer becomes a regression test by adding its input to the corpus.

use std::path::PathBuf;

use gaptun_apps::fuzzing;

/// A small deterministic generator (xorshift), so the mutations are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut seeds = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                seeds.push(bytes);
            }
        }
    }
    seeds
}

/// Bit flips, byte overwrites (favouring the interesting values 0, 1, 3, 4, 5 and 255),
/// truncations, insertions and extensions of `seed`.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    const INTERESTING: [u8; 7] = [0, 1, 2, 3, 4, 5, 255];
    let mut m = seed.to_vec();
    for _ in 0..=rng.below(3) {
        match rng.below(5) {
            0 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let len = rng.below(m.len() + 1);
                m.truncate(len);
            }
            3 => {
                let i = rng.below(m.len() + 1);
                m.insert(i, rng.next() as u8);
            }
            _ => {
                let extra = rng.below(32) + 1;
                m.extend((0..extra).map(|_| rng.next() as u8));
            }
        }
    }
    m
}

/// Multiplies the mutations per seed: `FUZZ_REPLAY_SCALE=50 cargo test ...` for a longer local
/// run on stable (CI uses 1). A different scale also draws different mutations.
fn scale() -> usize {
    std::env::var("FUZZ_REPLAY_SCALE")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1)
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    let scale = scale();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ scale as u64);
    for (target, entry) in fuzzing::TARGETS {
        let mut seeds = corpus(target);
        assert!(
            !seeds.is_empty(),
            "no committed corpus for {target}: run `cargo run -p gaptun-apps --example apps_fuzz_seeds`"
        );
        seeds.extend(fuzzing::seeds(target));
        seeds.push(Vec::new());
        seeds.push((0..=255u8).collect());
        for seed in &seeds {
            entry(seed);
            for _ in 0..10_000 * scale {
                entry(&mutate(seed, &mut rng));
            }
        }
    }
}

/// The seeds must get past every parser, or the fuzzer starts from nothing.
#[tokio::test]
async fn seeds_are_valid_messages() {
    use gaptun_apps::addr::TargetAddr;
    use gaptun_apps::request::{TunnelReply, TunnelRequest, read_udp_frame};
    use gaptun_apps::socks5::codec;

    for seed in fuzzing::seeds("address").iter().take(3) {
        assert!(TargetAddr::decode(seed).is_ok(), "{seed:?}");
    }
    for seed in fuzzing::seeds("socks5_udp") {
        let (_, payload) = codec::parse_udp_datagram(&seed).expect("valid UDP datagram");
        assert_eq!(payload, b"payload");
    }
    let mut requests = 0;
    for seed in fuzzing::seeds("tunnel_request") {
        let (mut a, mut b) = (&seed[..], &seed[..]);
        let request = TunnelRequest::read_from(&mut a).await.is_ok();
        let reply = TunnelReply::read_from(&mut b).await.is_ok() && b.is_empty();
        assert!(request || reply, "{seed:?}");
        requests += usize::from(request);
    }
    assert_eq!(requests, 6);
    for seed in fuzzing::seeds("socks5_session") {
        let mut r = &seed[..];
        let methods = codec::read_greeting(&mut r).await.expect("greeting");
        if methods.contains(&codec::METHOD_USER_PASS) {
            codec::read_credentials(&mut r).await.expect("login");
        }
        codec::read_request(&mut r).await.expect("request");
        assert!(r.is_empty());
    }
    let frames = fuzzing::seeds("udp_relay_frames");
    let all = frames.last().expect("seeds");
    let mut r = &all[..];
    let mut buf = Vec::new();
    let mut count = 0;
    while read_udp_frame(&mut r, &mut buf)
        .await
        .expect("frame")
        .is_some()
    {
        count += 1;
    }
    assert_eq!(count, 3);
}
