//! Writes valid seed inputs into `fuzz/corpus/<target>/` so that libFuzzer starts past the
//! authentication checks: `cargo run -p gaptun-proto --example fuzz_seeds`.

use std::path::PathBuf;

use gaptun_proto::fuzzing;

fn main() -> std::io::Result<()> {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let seeds = [
        ("frames", "seed-all-frames", fuzzing::seed_frames()),
        ("handshake", "seed-initial", fuzzing::seed_initial(1)),
        ("datagram", "seed-initial", fuzzing::seed_initial(2)),
    ];
    for (target, name, bytes) in seeds {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
        println!("wrote {}/{name}", dir.display());
    }
    Ok(())
}
