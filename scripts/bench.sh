#!/usr/bin/env bash
# Runs the gaptun benchmark harness (crates/gaptun-bench) as root.
#   scripts/bench.sh --quick          # under 3 minutes
#   scripts/bench.sh                  # full run (about an hour)
#   scripts/bench.sh --expose         # expose (issue 9): gaptun-expose vs rathole (a few minutes)
#   scripts/bench.sh cleanup          # remove namespaces left by an interrupted run
# Extra arguments go to `gaptun-bench run` (see `gaptun-bench run --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E "$0" "$@"
fi
# Both binaries, always: the harness runs target/release/gaptun, which must match the checkout.
cargo build --release -p gaptun-bench -p gaptun
bin=target/release/gaptun-bench
case "${1:-}" in
  cleanup|emulate|list) exec "$bin" "$@" ;;
esac
exec "$bin" run "$@"
