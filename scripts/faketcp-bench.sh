#!/usr/bin/env bash
# Fake-TCP measurements (issue 10), gaptun over UDP and over fake TCP side by side, with
# iperf3 (one TCP connection) through a gaptun TCP forward. Run as root; uses namespaces only.
#
#   scripts/faketcp-bench.sh loopback   # one namespace, loopback: throughput and wire overhead
#                                       # (64 KB datagrams and segments from loopback's
#                                       # 65 536 MTU, the default; then both carriers again
#                                       # with --route-mtu=false: 1472-byte datagrams)
#   scripts/faketcp-bench.sh loopback6  # the same over IPv6 loopback (::1)
#   scripts/faketcp-bench.sh link       # through gaptun-bench's emulated link (TUN, any IP
#                                       # packet): 100 Mbit/s, 100 ms RTT, 5 % loss each way;
#                                       # UDP, fake TCP, then `--carrier all` (both at once)
#   scripts/faketcp-bench.sh kcptun     # kcptun (client and server) over a gaptun fake-TCP
#                                       # UDP forward, iperf3 through kcptun (clean link)
#   scripts/faketcp-bench.sh bulk       # 256 MiB over fake TCP through the NAT router (strict
#                                       # conntrack): SHA-256 both ends, INVALID count
#   scripts/faketcp-bench.sh phantun    # on the emulated 100 Mbit/s, 100 ms, 5 % link: gaptun
#                                       # over fake TCP, then kcptun fast3 over phantun (the
#                                       # stack people run today), one iperf3 connection each;
#                                       # installs phantun with `cargo install phantun` if
#                                       # absent (PHANTUN_ROOT, default ~/.cargo/phantun);
#                                       # KCPTUN_WND=N gives kcptun N-packet windows
#   scripts/faketcp-bench.sh cleanup    # remove namespaces left by an interrupted run
#
# SECS (default 10) sets each iperf3 run's length; GAPTUN names the gaptun binary (default
# target/release/gaptun); with GAPTUN_BEFORE=path, `loopback` also runs fake TCP with that
# build, in the same run (with --route-mtu=false too). Overhead = wire bytes / iperf3 goodput
# bytes, wire bytes = what both daemons sent (`ctl stats json`: bytes and packets) plus, per
# packet, the IPv4 and UDP (28) or TCP-with-timestamps (52) headers (IPv6: 20 more). (nftables counts one GSO batch of UDP datagrams as one
# packet with one header, which would flatter UDP; fake TCP sends each segment as its own
# packet, even in a `sendmmsg` batch, so its nftables count is printed too, and includes the
# carrier's own empty ACKs.)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E "$0" "$@"
fi
SECS=${SECS:-10}
GAPTUN=${GAPTUN:-target/release/gaptun}
KEY=faketcp-bench-passphrase
NS_C=gfb-client NS_R=gfb-router NS_S=gfb-server NS_L=gfb-loop
PORT=29900
PIDS=()

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for ns in $NS_C $NS_R $NS_S $NS_L; do ip netns del "$ns" 2>/dev/null || true; done
}

start() { # NS NAME ARGS...: runs a daemon in NS, logging to /tmp/gfb-NAME.log
  local ns=$1 name=$2; shift 2
  ip netns exec "$ns" "$@" >"/tmp/gfb-$name.log" 2>&1 &
  PIDS+=($!)
}

iperf_bytes() { # NS PORT: runs iperf3 and prints "bytes bits_per_second"
  ip netns exec "$1" iperf3 -c 127.0.0.1 -p "$2" -t "$SECS" -J | python3 -c '
import json, sys
end = json.load(sys.stdin)["end"]["sum_received"]
print(int(end["bytes"]), end["bits_per_second"])'
}

nft_counters() { # NS...: prints the wire bytes counted on the tunnel port, summed
  local total=0 ns n
  for ns in "$@"; do
    n=$(ip netns exec "$ns" nft list counter inet gfbcount wire | awk '/bytes/ {for (i=1;i<=NF;i++) if ($i=="bytes") print $(i+1)}')
    total=$((total + n))
  done
  echo $total
}

count_wire() { # NS: counts every packet to or from the tunnel port, once (output hook)
  ip netns exec "$1" nft -f - <<EOF
table inet gfbcount {
  counter wire {}
  chain out { type filter hook output priority 0; policy accept;
    udp dport $PORT counter name wire
    udp sport $PORT counter name wire
    tcp dport $PORT counter name wire
    tcp sport $PORT counter name wire
  }
}
EOF
}

count_forwarded() { # NS: the same, counted as the router forwards
  ip netns exec "$1" nft -f - <<EOF
table inet gfbcount {
  counter wire {}
  chain fwd_count { type filter hook forward priority 0; policy accept;
    udp dport $PORT counter name wire
    udp sport $PORT counter name wire
    tcp dport $PORT counter name wire
    tcp sport $PORT counter name wire
  }
}
EOF
}

reset_counter() { # NS...
  local ns
  for ns in "$@"; do ip netns exec "$ns" nft reset counter inet gfbcount wire >/dev/null; done
}

run_pair() { # CARRIER NS_SERVER NS_CLIENT SERVER_ADDR "COUNTING_NS..."
  local carrier=$1 ns_s=$2 ns_c=$3 server=$4 count_ns=$5
  # EXTRA: more daemon options (both ends), e.g. --route-mtu=false; LISTEN: the server's address.
  # shellcheck disable=SC2086
  start "$ns_s" "server-$carrier" $GAPTUN server --listen "${LISTEN:-0.0.0.0}:$PORT" --key "$KEY" \
    --allow-private --carrier "$carrier" --control "/tmp/gfb-s-$carrier.sock" ${EXTRA:-}
  sleep 1
  # shellcheck disable=SC2086
  start "$ns_c" "client-$carrier" $GAPTUN client --server "$server:$PORT" --key "$KEY" \
    --no-socks --forward tcp:127.0.0.1:5202=127.0.0.1:5201 --carrier "$carrier" \
    --control "/tmp/gfb-c-$carrier.sock" ${EXTRA:-}
  sleep 2
  reset_counter $count_ns
  read -r bytes bps < <(iperf_bytes "$ns_c" 5202)
  local wire sent
  wire=$(nft_counters $count_ns)
  sent=$(for sock in "/tmp/gfb-s-$carrier.sock" "/tmp/gfb-c-$carrier.sock"; do
    $GAPTUN ctl --socket "$sock" stats json; echo; done | python3 -c '
import json, sys
total = [0, 0]
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "bytes_sent": total[0] += x
            elif k == "packets_sent": total[1] += x
            else: walk(x)
    elif isinstance(v, list):
        for x in v: walk(x)
for line in sys.stdin:
    if not line.strip(): continue
    snap = json.loads(line)
    # The daemon-wide totals when the snapshot has them (connections repeat the same bytes).
    if isinstance(snap.get("totals"), dict):
        total[0] += snap["totals"]["bytes_sent"]; total[1] += snap["totals"]["packets_sent"]
    else:
        walk(snap)
print(total[0], total[1])')
  python3 -c "
b, w, bps = $bytes, $wire, $bps
sent_bytes, sent_packets = map(int, '$sent'.split())
header = (52 if '$carrier' == 'faketcp' else 28) + (20 if '${LISTEN:-}' == '[::]' else 0)
model = sent_bytes + header * sent_packets
print(f'${LABEL:-$carrier}: {bps/1e6:8.1f} Mbit/s goodput, {b} bytes; {sent_packets} packets, '
      f'wire {model} bytes, overhead {model/b:.4f} (nftables counted {w}, {w/b:.4f})')"
  kill "${PIDS[-1]}" "${PIDS[-2]}" 2>/dev/null || true
  sleep 1
}

loopback() { # [SERVER_ADDR]: 127.0.0.1, or [::1] for loopback6
  local addr=${1:-127.0.0.1}
  ip netns add $NS_L
  ip -n $NS_L link set lo up
  count_wire $NS_L
  start $NS_L iperf3 iperf3 -s -B 127.0.0.1 -p 5201
  local extra
  for extra in "" "--route-mtu=false"; do
    local tag=${extra:+, $extra}
    for carrier in udp faketcp; do
      EXTRA=$extra LABEL="$carrier$tag" run_pair "$carrier" $NS_L $NS_L "$addr" $NS_L
    done
    if [ -n "${GAPTUN_BEFORE:-}" ]; then
      # The same run, with another build (say, before a change) for a side-by-side figure.
      EXTRA=$extra GAPTUN=$GAPTUN_BEFORE LABEL="faketcp ($GAPTUN_BEFORE)$tag" \
        run_pair faketcp $NS_L $NS_L "$addr" $NS_L
    fi
  done
}

loopback6() { # (GAPTUN_BEFORE is ignored: builds before IPv6 support refuse [::])
  GAPTUN_BEFORE="" LISTEN="[::]" loopback "[::1]"
}

three_namespaces() { # client -- NAT router (strict conntrack) -- server, clean links
  for ns in $NS_C $NS_R $NS_S; do ip netns add $ns; ip -n $ns link set lo up; done
  ip -n $NS_C link add eth0 type veth peer name lan netns $NS_R
  ip -n $NS_R link add wan type veth peer name eth0 netns $NS_S
  ip -n $NS_C addr add 10.77.1.2/24 dev eth0
  ip -n $NS_R addr add 10.77.1.1/24 dev lan
  ip -n $NS_R addr add 10.77.2.1/24 dev wan
  ip -n $NS_S addr add 10.77.2.2/24 dev eth0
  for pair in "$NS_C eth0" "$NS_R lan" "$NS_R wan" "$NS_S eth0"; do
    set -- $pair; ip -n "$1" link set "$2" up
  done
  ip -n $NS_C route add default via 10.77.1.1
  ip netns exec $NS_R sysctl -qw net.ipv4.ip_forward=1
  ip netns exec $NS_R nft -f - <<EOF
table ip gfbnat {
  counter invalid {}
  chain forward_check {
    type filter hook forward priority filter; policy accept;
    ct state invalid counter name invalid drop
  }
  chain nat_out {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade
  }
}
EOF
  ip netns exec $NS_R sysctl -qw net.netfilter.nf_conntrack_tcp_be_liberal=0
  count_forwarded $NS_R
  start $NS_S iperf3 iperf3 -s -B 127.0.0.1 -p 5201
}

emulated_link() { # SECONDS: starts the emulated 5 % link; sets NS_A, NS_B, DEV_A, DEV_B
  local bench=target/release/gaptun-bench
  [ -x $bench ] || cargo build --release -p gaptun-bench
  $bench emulate --scenario 100m-100ms-5pct --seconds "$1" \
    >/tmp/gfb-emulate.json 2>/tmp/gfb-emulate.log &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q "link up" /tmp/gfb-emulate.log && break; sleep 0.2; done
  read -r NS_A NS_B < <(sed -n 's/^link up: \([^ ]*\) .* <-> \([^ ]*\) .*/\1 \2/p' /tmp/gfb-emulate.log)
  DEV_A=$(ip -n "$NS_A" -o addr show to 10.201.0.1 | awk '{print $2}')
  DEV_B=$(ip -n "$NS_B" -o addr show to 10.201.0.2 | awk '{print $2}')
  sed -n 's/^link up: //p' /tmp/gfb-emulate.log
}

link() {
  emulated_link $((SECS * 3 + 60))
  count_wire "$NS_A"
  count_wire "$NS_B"
  start "$NS_B" iperf3 iperf3 -s -B 127.0.0.1 -p 5201
  # `all`: the client spreads over both carriers at once (its overhead line counts every
  # packet with UDP's 28-byte header; the nftables figure counts each fake-TCP segment).
  for carrier in udp faketcp all; do
    run_pair "$carrier" "$NS_B" "$NS_A" 10.201.0.2 "$NS_A $NS_B"
  done
}

phantun_dir() { # prints the directory of phantun's client and server, installing them
  # The crate's binaries are named plainly `client` and `server` (its release archives call
  # them phantun_client and phantun_server), so they get a root of their own.
  local root=${PHANTUN_ROOT:-${CARGO_HOME:-$HOME/.cargo}/phantun}
  if ! [ -x "$root/bin/client" ] || ! [ -x "$root/bin/server" ]; then
    echo "phantun not found in $root: cargo install phantun (a few minutes)" >&2
    cargo install phantun --locked --root "$root" >&2 || cargo install phantun --root "$root" >&2
  fi
  echo "$root/bin"
}

phantun() {
  local pdir ns
  pdir=$(phantun_dir)
  emulated_link $((SECS * 2 + 60))
  count_wire "$NS_A"
  count_wire "$NS_B"
  start "$NS_B" iperf3 iperf3 -s -B 127.0.0.1 -p 5201
  run_pair faketcp "$NS_B" "$NS_A" 10.201.0.2 "$NS_A $NS_B"

  # phantun set up as its README says: a TUN device each side, IP forwarding, the client's
  # segments masqueraded out of the link device, the server's port DNATed to its TUN peer.
  # kcptun with the harness's kcptun-fast3 settings (AES, no compression, default windows;
  # KCPTUN_WND=2048 sets both windows, as the harness's kcptun-fast3-wnd2048).
  for ns in "$NS_A" "$NS_B"; do
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
    # phantun's segments are forwarded, not sent locally: count them as they leave its TUN.
    ip netns exec "$ns" nft -f - <<EOF
table inet gfbcount {
  chain fwd_phantun { type filter hook forward priority 0; policy accept;
    iifname "gfbpt" counter name wire
  }
}
EOF
  done
  ip netns exec "$NS_A" nft -f - <<EOF
table ip gfbphantun {
  chain post { type nat hook postrouting priority srcnat; policy accept;
    iifname "gfbpt" oifname "$DEV_A" masquerade
  }
}
EOF
  ip netns exec "$NS_B" nft -f - <<EOF
table ip gfbphantun {
  chain pre { type nat hook prerouting priority dstnat; policy accept;
    iifname "$DEV_B" tcp dport $PORT dnat to 192.168.201.2
  }
}
EOF
  local wnd=()
  [ -n "${KCPTUN_WND:-}" ] && wnd=(--sndwnd "$KCPTUN_WND" --rcvwnd "$KCPTUN_WND")
  start "$NS_B" kcptun-server-pt kcptun-server -l 127.0.0.1:29901 -t 127.0.0.1:5201 \
    --mode fast3 --crypt aes --key "$KEY" --nocomp --quiet "${wnd[@]}"
  start "$NS_B" phantun-server env RUST_LOG=info "$pdir/server" --local "$PORT" \
    --remote 127.0.0.1:29901 --tun gfbpt --ipv4-only
  sleep 1
  start "$NS_A" phantun-client env RUST_LOG=info "$pdir/client" \
    --local 127.0.0.1:30000 --remote "10.201.0.2:$PORT" --tun gfbpt --ipv4-only
  start "$NS_A" kcptun-client-pt kcptun-client -l 127.0.0.1:5203 -r 127.0.0.1:30000 \
    --mode fast3 --crypt aes --key "$KEY" --nocomp --quiet "${wnd[@]}"
  sleep 3
  reset_counter "$NS_A" "$NS_B"
  read -r bytes bps < <(iperf_bytes "$NS_A" 5203)
  local wire
  wire=$(nft_counters "$NS_A" "$NS_B")
  python3 -c "
b, w, bps = $bytes, $wire, $bps
print(f'kcptun fast3 (window ${KCPTUN_WND:-default}) over phantun: {bps/1e6:8.1f} Mbit/s goodput, {b} bytes; '
      f'wire {w} bytes (nftables, both ends), overhead {w/max(b,1):.4f}')"
}

kcptun() {
  three_namespaces
  start $NS_S kcptun-server kcptun-server -l 127.0.0.1:29901 -t 127.0.0.1:5201 --mode fast3 \
    --crypt none --nocomp
  start $NS_S server-kcp $GAPTUN server --listen "0.0.0.0:$PORT" --key "$KEY" --allow-private \
    --carrier faketcp --control /tmp/gfb-s-kcp.sock
  sleep 1
  start $NS_C client-kcp $GAPTUN client --server "10.77.2.2:$PORT" --key "$KEY" --no-socks \
    --forward udp:127.0.0.1:30000=127.0.0.1:29901 --carrier faketcp --control /tmp/gfb-c-kcp.sock
  start $NS_C kcptun-client kcptun-client -l 127.0.0.1:5203 -r 127.0.0.1:30000 --mode fast3 \
    --crypt none --nocomp
  sleep 3
  reset_counter $NS_R
  read -r bytes bps < <(iperf_bytes $NS_C 5203)
  echo "kcptun fast3 over gaptun fake TCP (UDP forward): $(python3 -c "print(f'{$bps/1e6:.1f}')") Mbit/s, $bytes bytes; router saw $(nft_counters $NS_R) wire bytes on TCP/UDP $PORT"
  ip netns exec $NS_R conntrack -L -p tcp 2>/dev/null | grep -c "dport=$PORT" | sed 's/^/conntrack entries for the fake-TCP port: /' || true
}

bulk() {
  three_namespaces
  local mib=${MIB:-256}
  ip netns exec $NS_S python3 -c '
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 5301)); s.listen(1)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    h.update(d); n += len(d)
print(f"server received {n} bytes, sha256 {h.hexdigest()}", flush=True)' >/tmp/gfb-sink.log 2>&1 &
  PIDS+=($!)
  start $NS_S server-bulk $GAPTUN server --listen "0.0.0.0:$PORT" --key "$KEY" --allow-private \
    --carrier faketcp --control /tmp/gfb-s-bulk.sock
  sleep 1
  start $NS_C client-bulk $GAPTUN client --server "10.77.2.2:$PORT" --key "$KEY" --no-socks \
    --forward tcp:127.0.0.1:5302=127.0.0.1:5301 --carrier faketcp --control /tmp/gfb-c-bulk.sock
  sleep 2
  ip netns exec $NS_C python3 -c '
import hashlib, socket, sys, time
mib = int(sys.argv[1]); h = hashlib.sha256(); block = bytearray(1 << 20); x = 0x9e3779b97f4a7c15
s = socket.create_connection(("127.0.0.1", 5302)); start = time.time()
for i in range(mib):
    block[0:8] = i.to_bytes(8, "little"); x = (x * 6364136223846793005 + 1) % (1 << 64)
    block[8:16] = x.to_bytes(8, "little"); h.update(block); s.sendall(block)
s.shutdown(socket.SHUT_WR); s.recv(1); took = time.time() - start
print(f"client sent {mib << 20} bytes in {took:.1f} s ({(mib << 23) / took / 1e6:.0f} Mbit/s), sha256 {h.hexdigest()}")' "$mib"
  sleep 1
  cat /tmp/gfb-sink.log
  echo "router INVALID packets: $(ip netns exec $NS_R nft list counter ip gfbnat invalid | awk '/packets/ {for (i=1;i<=NF;i++) if ($i=="packets") print $(i+1)}')"
}

case "${1:-}" in
  cleanup) cleanup; exit 0 ;;
  loopback|loopback6|link|kcptun|bulk|phantun) ;;
  *) sed -n '2,21p' "$0"; exit 2 ;;
esac
trap cleanup EXIT
cleanup
[ -x $GAPTUN ] || cargo build --release -p gaptun
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r), ${SECS}s per run"
"$1"
