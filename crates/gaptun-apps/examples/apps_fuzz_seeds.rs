//! Writes valid seed inputs for the gaptun-apps fuzz targets into `fuzz/corpus/<target>/`:
//! `cargo run -p gaptun-apps --example apps_fuzz_seeds`.

use std::path::PathBuf;

use gaptun_apps::fuzzing;

fn main() -> std::io::Result<()> {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, _) in fuzzing::TARGETS {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, bytes) in fuzzing::seeds(target).into_iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), bytes)?;
        }
        println!("wrote {}", dir.display());
    }
    Ok(())
}
