#!/usr/bin/env bash
# The whole test suite, as the README and .ci/run give it: installs what the tests need
# (scripts/setup.sh), then every crate's tests, then the binary's library with its `fuzzing`
# feature (the config parser as the fuzz targets link it).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo test --workspace --locked
cargo test -p gaptun --features fuzzing --lib --locked
