//! Writes valid seed inputs into `fuzz/corpus/<target>/` so that libFuzzer starts past the
//! authentication checks: `cargo run -p gaptun-proto --example fuzz_seeds`.

use std::path::PathBuf;

use gaptun_proto::fuzzing;

fn main() -> std::io::Result<()> {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut seeds = vec![
        (
            "frames",
            "seed-all-frames".to_string(),
            fuzzing::seed_frames(),
        ),
        (
            "handshake",
            "seed-initial".to_string(),
            fuzzing::seed_initial(1),
        ),
        (
            "datagram",
            "seed-initial".to_string(),
            fuzzing::seed_initial(2),
        ),
    ];
    for (i, program) in fuzzing::seed_established().into_iter().enumerate() {
        seeds.push(("established", format!("seed-program-{i}"), program));
    }
    for (target, name, bytes) in seeds {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&name), bytes)?;
        println!("wrote {}/{name}", dir.display());
    }
    Ok(())
}
