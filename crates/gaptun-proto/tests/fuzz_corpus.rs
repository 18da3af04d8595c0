//! Runs the fuzz targets' entry points over the seed corpus in `fuzz/corpus`, over valid
//! messages made here, and over deterministic mutations of both. A panic anywhere fails the test.

use std::path::PathBuf;

use gaptun_proto::fuzzing;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

/// Bit flips, byte overwrites, truncations and extensions of `seed`.
fn mutations(seed: &[u8], count: usize, rng: &mut StdRng) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut m = seed.to_vec();
        match rng.random_range(0..4) {
            0 if !m.is_empty() => {
                let i = rng.random_range(0..m.len());
                m[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !m.is_empty() => {
                let i = rng.random_range(0..m.len());
                m[i] = rng.random();
            }
            2 => {
                let len = rng.random_range(0..=m.len());
                m.truncate(len);
            }
            _ => {
                let extra = rng.random_range(1..64);
                m.extend((0..extra).map(|_| rng.random::<u8>()));
            }
        }
        out.push(m);
    }
    out
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

fn run(target: &str, entry: fn(&[u8]), generated: Vec<Vec<u8>>, per_seed: usize) {
    let scale = scale();
    let per_seed = per_seed * scale;
    let mut rng = StdRng::seed_from_u64(0xf022 + scale as u64 - 1);
    let mut seeds = corpus(target);
    seeds.extend(generated);
    seeds.push(Vec::new());
    seeds.push((0..=255u8).collect());
    for seed in &seeds {
        entry(seed);
        for m in mutations(seed, per_seed, &mut rng) {
            entry(&m);
        }
    }
}

#[test]
fn frame_decoder_survives_corpus_and_mutations() {
    run(
        "frames",
        fuzzing::frames,
        vec![fuzzing::seed_frames()],
        3000,
    );
}

#[test]
fn handshake_parsers_survive_corpus_and_mutations() {
    run(
        "handshake",
        fuzzing::handshake,
        vec![fuzzing::seed_initial(1)],
        300,
    );
}

#[test]
fn server_endpoint_survives_corpus_and_mutations() {
    run(
        "datagram",
        fuzzing::datagram,
        vec![fuzzing::seed_initial(2)],
        300,
    );
}

#[test]
fn established_connection_survives_corpus_and_mutations() {
    run(
        "established",
        fuzzing::established,
        fuzzing::seed_established(),
        60,
    );
}
