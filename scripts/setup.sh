#!/usr/bin/env bash
# Installs what building and testing gaptun needs on a fresh Debian machine. Idempotent: packages
# already present are left alone, and apt is not touched at all when nothing is missing. Runs
# unattended (CI runs it as root with no stdin); as another user it uses sudo if it can.
#
#   gcc, libc6-dev  a C compiler and C library headers: ring and the daemon's allocator
#                   (mimalloc) compile C sources, and rustc links through cc (needed)
#   curl            the end-to-end tests download through the SOCKS5 port with it (needed)
#   nftables, iproute2  fake TCP installs nftables rules; its tests build network namespaces
#                   (needed: without them those tests skip, and fake TCP cannot start)
#   socat           the port-range test in network namespaces (crates/gaptun/tests/ports_netns.rs)
#   iperf3, kcptun  the daemon benchmark (scripts/bench-daemon.sh) compares against kcptun, and
#                   scripts/faketcp-bench.sh runs kcptun over fake TCP (optional for the tests)
#   prometheus      `promtool check metrics` on the dashboard's /metrics (the test skips the
#                   check, saying so, without it)
#   chromium, chromium-driver
#                   the dashboard's browser test (headless, in a network namespace with only
#                   loopback; skipped, saying so, without them)
#   util-linux      `unshare` for that namespace
#   openssl         the TLS carrier's probe test connects with `openssl s_client` (needed)
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

REQUIRED=(gcc libc6-dev curl ca-certificates nftables iproute2 socat openssl)
OPTIONAL=(iperf3 kcptun prometheus chromium chromium-driver util-linux)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${REQUIRED[@]}" "${OPTIONAL[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  if command -v curl >/dev/null 2>&1; then
    echo "setup: no apt-get here; curl is present, so the tests can run (missing: ${missing[*]})" >&2
    exit 0
  fi
  echo "setup: no apt-get here: install curl by hand (needed by the tests)" >&2
  exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    echo "setup: not root and no sudo: install ${missing[*]} by hand" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
apt() { "${SUDO[@]}" apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" </dev/null; }

echo "setup: installing ${missing[*]}"
apt update
for p in "${REQUIRED[@]}"; do
  installed "$p" || apt install --no-install-recommends "$p"
done
for p in "${OPTIONAL[@]}"; do
  if ! installed "$p" && ! apt install --no-install-recommends "$p"; then
    echo "setup: optional package $p is not available; the daemon benchmark will skip what needs it" >&2
  fi
done
echo "setup: done"
