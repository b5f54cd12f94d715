#!/bin/bash
# bench-forward.sh: the cost of a forwarded request (issue 8). Starts a
# redis-server, two ferryd nodes with cluster: (1 worker each), the
# benchmark origin and one agent on node n1, then runs wrk for DURATION
# seconds (default 8) against the tunnel through n1 (the owner) and through
# n2 (which forwards to n1), and prints both rates and their ratio. Every
# process it starts is stopped by its pid. Run after `make`.
#   tools/cluster/bench-forward.sh [DURATION]
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${FERRY_BIN_DIR:-$ROOT/}
BUILD=${FERRY_BUILD:-$ROOT/build}
DUR=${1:-8}
TMP=$(mktemp -d /tmp/ferry-bench-forward.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(port); P1=$(port); P2=$(port); A1=$(port); A2=$(port); OP=$(port)
head -c 48 /dev/urandom | base64 >"$TMP/secret"; chmod 600 "$TMP/secret"
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no >"$TMP/redis.log" 2>&1 & PIDS+=($!)
for n in 1 2; do
    eval "p=\$P$n a=\$A$n"
    cat >"$TMP/n$n.yml" <<EOF
listen: ["127.0.0.1:$p"]
admin: "127.0.0.1:$a"
workers: 1
cluster: {redis: "redis://127.0.0.1:$RP", node: "n$n", advertise: "http://127.0.0.1:$p", secret: "$TMP/secret"}
EOF
    "${BIN}ferryd" -c "$TMP/n$n.yml" >"$TMP/n$n.log" 2>&1 & PIDS+=($!)
done
"$BUILD/tools/origin" -l "127.0.0.1:$OP" >"$TMP/origin.log" 2>&1 & PIDS+=($!)
sleep 1
"${BIN}ferry" http "$OP" --subdomain bench --server "ws://127.0.0.1:$P1" --web-addr false >"$TMP/agent.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Tunnel-Id: bench' "http://127.0.0.1:$P2/1k")" = 200 ] && break
    sleep 0.2
done
rate() { wrk -t1 -c16 -d"${DUR}s" -H 'X-Tunnel-Id: bench' "http://127.0.0.1:$1/1k" | awk '/Requests\/sec/ {print $2}'; }
OWN=$(rate "$P1"); FWD=$(rate "$P2")
echo "1 KiB keep-alive, wrk -t1 -c16 -d${DUR}s, 1 worker per node:"
echo "  owner node n1:      $OWN req/s"
echo "  non-owner node n2:  $FWD req/s (forwarded to n1)"
awk -v a="$FWD" -v b="$OWN" 'BEGIN { printf "  ratio:              %.2fx\n", a / b }'
