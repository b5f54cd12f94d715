#!/usr/bin/env bash
# tools/bench_callgrind.sh: the noise-free cost figure of `make bench` and
# `make bench-check`: instructions per proxied request, counted by valgrind
# (callgrind counts every instruction a process executes, so the figure is
# the same from run to run, unlike req/s on a shared 2-core box).
#
#   tools/bench_callgrind.sh              measure; print key=value lines
#   tools/bench_callgrind.sh --check      measure; compare with the baseline,
#                                         exit 1 on a regression over 10 %
#   tools/bench_callgrind.sh --update-baseline
#                                         measure; rewrite the baseline file
#
# What is measured: bench_reqs (build/tools/bench_reqs) sends N strictly
# sequential GET /1k requests (1 KiB bodies) over one keep-alive connection,
# then NC requests with "Connection: close" (a TCP connection per request,
# and through ferry a stream and an agent-to-origin connection each), through
#   - ferryd (workers: 1) + the ferry agent to build/tools/origin, both
#     under valgrind --tool=callgrind (--trace-children=yes: the master
#     forks the worker; each process writes its own file, <name>.<pid>, and
#     the worker's is the one whose pid is not the master's), and
#   - nginx (one worker, upstream keep-alive, the one-hop proxy of
#     tools/bench.sh) under callgrind the same way.
# Each setup runs twice, with N and with 2N requests, from a fresh start to
# a stop (SIGTERM); startup, the readiness request, the connection setup and
# the shutdown are the same in both runs, so
#     instructions per request = (total(2N) - total(N)) / N
# for ferryd's worker, the agent and nginx's worker (the master processes
# are reported too: they should be about 0). Readiness is read from the
# listen socket in /proc/net/tcp and the agent's "started tunnel" log line,
# then exactly one curl, so no polling request reaches a measured process a
# variable number of times. The origin runs natively (not measured). Only
# user space is counted: what the kernel does in syscalls is not.
# The ferry half and the nginx half run side by side (this script runs
# itself with --part ferry / --part nginx): about 20 s on an idle 2-core box.
# Repeated runs agree within about 0.3 % (keep-alive) and 2 % (close: the
# agent's share varies most, as FINs and data meet differently run to run).
#
# Knobs (environment): FERRY_BENCH_CG_REQUESTS (N, default 2000),
# FERRY_BENCH_CG_CLOSE_REQUESTS (NC, default N), FERRY_BENCH_CG_CLOSE=0
# (skip the close figures), FERRY_BENCH_BASELINE (default
# tools/bench-baseline.json), FERRY_BENCH_CG_TOLERANCE (percent, default
# 10), FERRY_BENCH_LEAVE=1 (keep the temp dirs with the callgrind files:
# callgrind_annotate them), FERRY_BENCH_FERRYD / _FERRY / _ORIGIN / _NGINX /
# _REQS (binaries), FERRY_BENCH_SOURCE (what the baseline says it measured;
# default the commit, "+dirty" when the relay's or agent's sources differ).
#
# Output: one line of key=value on stdout (instructions per request):
#   cg_requests=2000 cg_close_requests=2000 cg_ferryd=.. cg_ferryd_master=..
#   cg_ferry=.. cg_close_ferryd=.. cg_close_ferry=.. cg_nginx=..
#   cg_nginx_master=.. cg_close_nginx=.. cg_seconds=..
# then, with --check / --update-baseline, the verdict of
# tools/bench_report.py. Progress goes to stderr.
set -euo pipefail

MODE=measure
PART=
case "${1:-}" in
"") ;;
--check) MODE=check ;;
--update-baseline) MODE=update ;;
--part) PART=${2:-} ;; # internal: one half, run by the main invocation
*) echo "usage: $0 [--check | --update-baseline]" >&2; exit 2 ;;
esac
CLOSE=${FERRY_BENCH_CG_CLOSE:-1}
N=${FERRY_BENCH_CG_REQUESTS:-2000}
NC=${FERRY_BENCH_CG_CLOSE_REQUESTS:-$N}
BIN_DIR=${FERRY_BIN_DIR:-.}
BUILD_DIR=${FERRY_BUILD:-build}
FERRYD=${FERRY_BENCH_FERRYD:-$BIN_DIR/ferryd}
FERRY=${FERRY_BENCH_FERRY:-$BIN_DIR/ferry}
ORIGIN=${FERRY_BENCH_ORIGIN:-$BUILD_DIR/tools/origin}
BENCH_REQS=${FERRY_BENCH_REQS:-$BUILD_DIR/tools/bench_reqs}
NGINX=${FERRY_BENCH_NGINX:-/usr/sbin/nginx}
BASELINE=${FERRY_BENCH_BASELINE:-$(cd "$(dirname "$0")" && pwd)/bench-baseline.json}
TOLERANCE=${FERRY_BENCH_CG_TOLERANCE:-10}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
HERE=$(cd "$(dirname "$0")" && pwd)

die() { echo "bench_callgrind: $*" >&2; exit 1; }
say() { echo "bench_callgrind: $*" >&2; }

command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
command -v curl >/dev/null || die "curl not found"
for b in "$FERRYD" "$FERRY" "$ORIGIN" "$BENCH_REQS"; do
    [ -x "$b" ] || die "$b not built (make)"
done
[ -x "$NGINX" ] || die "$NGINX not found (apt-get install nginx)"
case $N$NC in '' | *[!0-9]*) die "FERRY_BENCH_CG_REQUESTS and _CLOSE_REQUESTS must be numbers" ;; esac
[ "$N" -gt 0 ] && [ "$NC" -gt 0 ] || die "FERRY_BENCH_CG_REQUESTS and _CLOSE_REQUESTS must be > 0"

TMP=$(mktemp -d /tmp/ferry-bench-cg.XXXXXX)
chmod 755 "$TMP"
START=$SECONDS

PIDS=()
PARTS=()
# Stop the process group of each pid: TERM, up to 30 s (valgrind writes its
# files on the way out), then KILL.
stop_groups() {
    local pid i
    for pid in "$@"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        for i in $(seq 300); do
            kill -0 -- "-$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
cleanup() {
    local rc=$? p
    # The parts are scripts like this one: TERM runs their own cleanup.
    for p in "${PARTS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PARTS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    [ "${#PIDS[@]}" -gt 0 ] && stop_groups "${PIDS[@]}"
    if [ "${FERRY_BENCH_LEAVE:-0}" = 1 ]; then
        say "left $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

spawn() {
    local name=$1
    shift
    setsid "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null &
    PIDS+=("$!")
}
# Forget pids already stopped.
unspawn() {
    local keep=() p q gone
    for p in "${PIDS[@]}"; do
        gone=0
        for q in "$@"; do [ "$p" = "$q" ] && gone=1; done
        [ "$gone" = 1 ] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# Is something listening on 127.0.0.1:PORT? Read from /proc/net/tcp, so no
# connection reaches (and costs) the measured process.
listening() {
    local hex
    hex=$(printf '0100007F:%04X' "$1")
    awk -v a="$hex" '$2 == a && $4 == "0A" { f = 1 } END { exit !f }' /proc/net/tcp
}
wait_listen() {
    local port=$1 pid=$2 i
    for i in $(seq 600); do
        listening "$port" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# N free loopback ports, held open at once so they are distinct. Taken
# right before each start; another process can still grab one in between,
# so each start is tried up to three times.
free_ports() {
    "$PY" -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))
' "$1"
}

# The origin (each part has its own) picks its own port and prints it.
if [ -n "$PART" ]; then
    spawn origin "$ORIGIN" -l 127.0.0.1:0
    ORIGIN_PORT=
    for i in $(seq 100); do
        ORIGIN_PORT=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/origin.out" 2>/dev/null || true)
        [ -n "$ORIGIN_PORT" ] && break
        kill -0 "${PIDS[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$ORIGIN_PORT" ] || die "origin did not start: $(cat "$TMP/origin.err")"
fi

VG=(valgrind --tool=callgrind --trace-children=yes)

# The "totals:" of a callgrind file (instructions, Ir), into TOTAL.
totals() {
    TOTAL=$(awk '/^(totals|summary):/ { t = $2 } END { print t }' "$1")
    case $TOTAL in '' | *[!0-9]*) die "no totals in $1" ;; esac
}

# cg_ferry N: one run of ferryd (1 worker) + agent under callgrind with N
# requests; sets RES to "worker master agent" totals. (Not run in a
# subshell: its processes must stay in PIDS for the EXIT trap.)
AGENT_FLAGS=()
"$FERRY" --help 2>&1 | grep -q -- '--web-addr' && AGENT_FLAGS+=(--web-addr false)
cg_ferry() {
    local n=$1 flags=${2:-} dir="$TMP/ferry-$1${2:-}" dpid apid i files=() f try
    for try in 1 2 3; do
        rm -rf "$dir"
        mkdir -p "$dir"
        read -r FERRY_PORT ADMIN_PORT < <(free_ports 2)
        printf 'listen: ["127.0.0.1:%s"]\nadmin: "127.0.0.1:%s"\nworkers: 1\n' \
            "$FERRY_PORT" "$ADMIN_PORT" >"$dir/ferryd.yml"
        spawn "ferryd-$n" "${VG[@]}" --callgrind-out-file="$dir/ferryd.%p" "$FERRYD" -c "$dir/ferryd.yml"
        dpid=${PIDS[-1]}
        wait_listen "$FERRY_PORT" "$dpid" && break
        say "ferryd did not listen (try $try): $(grep -v '^==' "$TMP/ferryd-$n.err" | tail -n 2)"
        stop_groups "$dpid"
        unspawn "$dpid"
        [ "$try" = 3 ] && die "ferryd did not start"
    done
    spawn "agent-$n" "${VG[@]}" --callgrind-out-file="$dir/ferry.%p" "$FERRY" http "127.0.0.1:$ORIGIN_PORT" \
        --server "ws://127.0.0.1:$FERRY_PORT" --subdomain bench --log stderr "${AGENT_FLAGS[@]}"
    apid=${PIDS[-1]}
    for i in $(seq 600); do
        grep -q 'started tunnel' "$TMP/agent-$n.err" && break
        kill -0 "$apid" 2>/dev/null || die "the agent exited: $(tail -n 5 "$TMP/agent-$n.err")"
        sleep 0.1
    done
    # One request that waits (ferryd parks it until the tunnel shows up).
    [ "$(curl -s -o /dev/null -m 60 -w '%{http_code}' -H 'Host: bench.localhost' \
        "http://127.0.0.1:$FERRY_PORT/1k" || true)" = 200 ] ||
        die "ferry not ready: $(tail -n 3 "$TMP/agent-$n.err" "$TMP/ferryd-$n.err")"
    timeout 600 "$BENCH_REQS" -n "$n" $flags -H bench.localhost "127.0.0.1:$FERRY_PORT" >"$dir/reqs.out" ||
        die "bench_reqs through ferry failed: $(cat "$dir/reqs.out")"
    stop_groups "$apid" "$dpid"
    unspawn "$apid" "$dpid"
    for f in "$dir"/ferryd.*; do
        case $f in *.yml | "$dir/ferryd.$dpid") ;; *) files+=("$f") ;; esac
    done
    [ "${#files[@]}" = 1 ] || die "expected one ferryd worker profile, got ${#files[@]} in $dir"
    [ -f "$dir/ferryd.$dpid" ] || die "no profile of the ferryd master in $dir"
    [ -f "$dir/ferry.$apid" ] || die "no profile of the agent in $dir"
    totals "${files[0]}"
    RES=$TOTAL
    totals "$dir/ferryd.$dpid"
    RES="$RES $TOTAL"
    totals "$dir/ferry.$apid"
    RES="$RES $TOTAL"
}

# cg_nginx N: nginx (one worker) under callgrind; sets RES to "worker master".
cg_nginx() {
    local n=$1 flags=${2:-} dir="$TMP/nginx-$1${2:-}" pid files=() f try
    for try in 1 2 3; do
    rm -rf "$dir"
    mkdir -p "$dir/tmp"
    chmod 777 "$dir" "$dir/tmp"
    read -r NGINX_PORT < <(free_ports 1)
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 1024;
}
http {
    access_log off;
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 1000000;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    spawn "nginx-$n" "${VG[@]}" --callgrind-out-file="$dir/cg.%p" "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    pid=${PIDS[-1]}
    wait_listen "$NGINX_PORT" "$pid" && break
    say "nginx did not listen (try $try): $(tail -n 2 "$dir/error.log")"
    stop_groups "$pid"
    unspawn "$pid"
    [ "$try" = 3 ] && die "nginx did not start"
    done
    # The master listens before it forks the worker: this one request waits
    # in the backlog until the worker takes it.
    [ "$(curl -s -o /dev/null -m 60 -w '%{http_code}' "http://127.0.0.1:$NGINX_PORT/1k" || true)" = 200 ] ||
        die "nginx not ready: $(tail -n 3 "$dir/error.log")"
    timeout 600 "$BENCH_REQS" -n "$n" $flags "127.0.0.1:$NGINX_PORT" >"$dir/reqs.out" ||
        die "bench_reqs through nginx failed: $(cat "$dir/reqs.out")"
    stop_groups "$pid"
    unspawn "$pid"
    for f in "$dir"/cg.*; do
        [ "$f" = "$dir/cg.$pid" ] || files+=("$f")
    done
    [ "${#files[@]}" = 1 ] || die "expected one nginx worker profile, got ${#files[@]} in $dir"
    totals "${files[0]}"
    RES=$TOTAL
    totals "$dir/cg.$pid"
    RES="$RES $TOTAL"
}

# per TOTAL_N TOTAL_2N [N]: instructions per request, rounded.
per() {
    local n=${3:-$N}
    echo $((($2 - $1 + n / 2) / n))
}

# One part: ferry or nginx, keep-alive then (unless FERRY_BENCH_CG_CLOSE=0)
# close; prints its key=value figures.
if [ "$PART" = ferry ]; then
    cg_ferry "$N"
    read -r FW1 FM1 FA1 <<<"$RES"
    cg_ferry $((2 * N))
    read -r FW2 FM2 FA2 <<<"$RES"
    say "totals (Ir), N / 2N: ferryd worker $FW1 / $FW2, master $FM1 / $FM2; agent $FA1 / $FA2"
    OUT="cg_ferryd=$(per "$FW1" "$FW2") cg_ferryd_master=$(per "$FM1" "$FM2") cg_ferry=$(per "$FA1" "$FA2")"
    if [ "$CLOSE" = 1 ]; then
        cg_ferry "$NC" -C
        read -r FW1 FM1 FA1 <<<"$RES"
        cg_ferry $((2 * NC)) -C
        read -r FW2 FM2 FA2 <<<"$RES"
        say "totals (Ir), Connection: close, N / 2N: ferryd worker $FW1 / $FW2, master $FM1 / $FM2;" \
            "agent $FA1 / $FA2"
        OUT="$OUT cg_close_ferryd=$(per "$FW1" "$FW2" "$NC") cg_close_ferry=$(per "$FA1" "$FA2" "$NC")"
    fi
    echo "$OUT"
    exit 0
fi
if [ "$PART" = nginx ]; then
    cg_nginx "$N"
    read -r NW1 NM1 <<<"$RES"
    cg_nginx $((2 * N))
    read -r NW2 NM2 <<<"$RES"
    say "totals (Ir), N / 2N: nginx worker $NW1 / $NW2, master $NM1 / $NM2"
    OUT="cg_nginx=$(per "$NW1" "$NW2") cg_nginx_master=$(per "$NM1" "$NM2")"
    if [ "$CLOSE" = 1 ]; then
        cg_nginx "$NC" -C
        read -r NW1 NM1 <<<"$RES"
        cg_nginx $((2 * NC)) -C
        read -r NW2 NM2 <<<"$RES"
        say "totals (Ir), Connection: close, N / 2N: nginx worker $NW1 / $NW2, master $NM1 / $NM2"
        OUT="$OUT cg_close_nginx=$(per "$NW1" "$NW2" "$NC")"
    fi
    echo "$OUT"
    exit 0
fi

# The two parts run side by side (each is a chain of sequential requests,
# so each keeps about one core busy); instruction counts do not depend on
# the scheduling.
say "callgrind: $N and $((2 * N)) sequential keep-alive GET /1k$([ "$CLOSE" = 1 ] &&
    echo ", then $NC and $((2 * NC)) with Connection: close,") through ferryd+ferry and through nginx"
"$0" --part ferry >"$TMP/part.ferry" &
PARTS=("$!")
"$0" --part nginx >"$TMP/part.nginx" &
PARTS+=("$!")
RC=0
wait "${PARTS[0]}" || RC=1
wait "${PARTS[1]}" || RC=1
PARTS=()
[ "$RC" = 0 ] || die "a part failed (see above)"
RESULT="cg_requests=$N$([ "$CLOSE" = 1 ] && echo " cg_close_requests=$NC") $(cat "$TMP/part.ferry") $(cat "$TMP/part.nginx") cg_seconds=$((SECONDS - START))"

case $MODE in
measure)
    echo "$RESULT"
    ;;
check)
    echo "$RESULT"
    "$PY" "$HERE/bench_report.py" check --baseline "$BASELINE" --tolerance "$TOLERANCE" $RESULT
    ;;
update)
    echo "$RESULT"
    "$PY" "$HERE/bench_report.py" update --baseline "$BASELINE" $RESULT
    ;;
esac
