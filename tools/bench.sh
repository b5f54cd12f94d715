#!/usr/bin/env bash
# tools/bench.sh: ferry's benchmark suite (`make bench`, `make bench-json`;
# run from the repo root).
#
#   tools/bench.sh           the table on stdout
#   tools/bench.sh --json    the same as JSON on stdout (the table and the
#                            progress go to stderr)
#
# Starts, on free loopback ports in a temp dir: the origin
# (build/tools/origin), nginx as a tuned one-hop reverse proxy to it
# (upstream keep-alive, no access log, WebSocket upgrade on /ws), ferryd with
# one worker and ferryd with four workers, each with a ferry agent exposing
# the origin as tunnel "bench" (and three more agents, tunnels bench1..3, for
# 1k-close-4t). Then runs every load against each row, all
# in this one run, so the ratios compare like with like on the same machine
# at the same moment:
#
#   1k-keepalive   wrk -c50, GET /1k (1 KiB body), keep-alive
#   1k-close       wrk -c50, GET /1k, "Connection: close" (a TCP connection per request)
#   1k-close-4t    the same over four tunnels (bench, bench1..3: Host taken in
#                  turn, tools/bench.lua BENCH_SPREAD=4); with four workers the
#                  tunnels sit on different workers, so about 3 connections in 4
#                  land on a worker that does not hold theirs: the handoff path
#   1m-keepalive   wrk -c8, GET /1m (1 MiB body), bulk download
#   64k-upload     wrk -c16, POST /upload with a 64 KiB body (tools/bench.lua), keep-alive
#   1k-c1000       wrk -c1000, GET /1k, keep-alive: 1,000 concurrent clients
#   ws-echo        build/tools/bench_ws -c50: WebSocket echo of 1 KiB messages
#                  (one in flight per connection); req/s is messages/s
#   https-keepalive  wrk -c50, GET https://.../1k, keep-alive (one handshake per connection)
#   https-close    wrk -c50, GET https://.../1k, "Connection: close": a TLS handshake
#                  (ECDSA P-256, session tickets not used by wrk) per request
#
# The HTTPS loads run against nginx and ferryd with the same certificate
# (made here with openssl), TLS 1.3; wrk names no server (SNI) for an IP
# address, so ferryd routes on the Host header inside: the pump path
# (DESIGN.md "The handoff"). The direct row has no TLS and shows n/a.
#
# Rows: direct (the origin), nginx (one hop), ferry (1 worker: the tunnel's
# owner takes every connection), ferryauto (`workers: auto`, one per CPU:
# with one busy tunnel its owner takes most connections while the others
# pause accepting, worker.c take_turns; in 1k-close-4t the four tunnels sit
# on the workers and a connection lands on a worker that does not hold its
# tunnel about (N-1)/N of the time: the handoff path), ferry4w (4 workers
# whatever the CPUs, only in the loads of FERRY_BENCH_4W_LOADS, default
# 1k-close-4t: on a 2-CPU machine, handoffs with more workers than CPUs).
#
# Columns: req/s; MB/s (MiB: response bytes, for the upload the bodies
# sent); p50/p99/p99.9 latency (ms; wrk's histogram through tools/bench.lua,
# bench_ws's samples); errors (socket errors + non-2xx); CPU seconds per 10k
# requests of the relay (nginx's master+worker, or ferryd's master+workers)
# and of the agent (utime+stime from /proc/PID/stat before and after the
# run, CLK_TCK from getconf); peak RSS (VmHWM, reset through
# /proc/PID/clear_refs before each run) of the relay's processes (summed)
# and of the agent, in MiB; ratios of req/s to direct, to nginx, and
# ferryauto and ferry4w to ferry; handed: the share of requests (for
# Connection: close, of connections) that were handed to another worker
# (ferry_handoffs_total{outcome="sent"} before and after the run).
#
# Then the noise-free figure (tools/bench_callgrind.sh): instructions per
# proxied request of ferryd's worker, the agent and nginx's worker under
# callgrind, compared with the baseline (tools/bench-baseline.json).
#
# Knobs (environment): FERRY_BENCH_DURATION (seconds per run, default 4),
# FERRY_BENCH_CALLGRIND=0 (skip the callgrind figure), FERRY_BENCH_LOADS
# (space-separated subset of the loads above), FERRY_BENCH_4W_LOADS (the
# loads the ferry4w row runs; empty: none), FERRY_BENCH_LEAVE=1 (keep the
# temp dir: configs, logs, raw outputs), FERRY_BENCH_FERRYD / _FERRY /
# _ORIGIN / _NGINX / _WS (binaries; defaults ./ferryd, ./ferry,
# $FERRY_BUILD/tools/origin, /usr/sbin/nginx, $FERRY_BUILD/tools/bench_ws;
# not FERRYD etc.: make exports its own values of those). The callgrind part
# takes FERRY_BENCH_CG_* and FERRY_BENCH_REQS (see tools/bench_callgrind.sh).
#
# Exit status 1 if a row could not start or a run failed.
set -euo pipefail

JSON=0
case "${1:-}" in
"") ;;
--json) JSON=1 ;;
*) echo "usage: $0 [--json]" >&2; exit 2 ;;
esac

DURATION=${FERRY_BENCH_DURATION:-4}
BIN_DIR=${FERRY_BIN_DIR:-.}
BUILD_DIR=${FERRY_BUILD:-build}
FERRYD=${FERRY_BENCH_FERRYD:-$BIN_DIR/ferryd}
FERRY=${FERRY_BENCH_FERRY:-$BIN_DIR/ferry}
ORIGIN=${FERRY_BENCH_ORIGIN:-$BUILD_DIR/tools/origin}
BENCH_WS=${FERRY_BENCH_WS:-$BUILD_DIR/tools/bench_ws}
NGINX=${FERRY_BENCH_NGINX:-/usr/sbin/nginx}
LOADS=${FERRY_BENCH_LOADS:-1k-keepalive 1k-close 1k-close-4t 1m-keepalive 64k-upload 1k-c1000 ws-echo https-keepalive https-close}
ROWS="direct nginx ferry ferryauto ferry4w"
LOADS_4W=${FERRY_BENCH_4W_LOADS-1k-close-4t}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
HERE=$(cd "$(dirname "$0")" && pwd)
START=$SECONDS

die() { echo "bench: $*" >&2; exit 1; }
# Progress and diagnostics: stderr.
say() { echo "bench: $*" >&2; }

for tool in wrk curl "$PY" getconf openssl; do
    command -v "$tool" >/dev/null || die "$tool not found (make deps installs it)"
done
[ -x "$ORIGIN" ] || die "$ORIGIN not built (make)"
[ -x "$BENCH_WS" ] || die "$BENCH_WS not built (make)"
[ -x "$NGINX" ] || die "$NGINX not found (apt-get install nginx)"
case $DURATION in '' | *[!0-9]* | 0) die "FERRY_BENCH_DURATION must be a whole number of seconds" ;; esac
CLK_TCK=$(getconf CLK_TCK)

# 1,000 clients: wrk needs about 1,000 fds, nginx and the origin twice that
# (ferryd raises its own limit). Children inherit the raised soft limit.
HARD_NOFILE=$(ulimit -Hn)
if [ "$HARD_NOFILE" = unlimited ] || [ "$HARD_NOFILE" -ge 16384 ]; then
    ulimit -n 16384
else
    ulimit -n "$HARD_NOFILE"
fi
[ "$(ulimit -n)" -ge 4096 ] || say "fd limit $(ulimit -n): the 1k-c1000 load may fail"

TMP=$(mktemp -d /tmp/ferry-bench.XXXXXX)
# nginx drops its workers to an unprivileged user when started as root; they
# must still reach the temp paths below.
chmod 755 "$TMP"
RESULTS=$TMP/results.tsv
: >"$RESULTS"

PIDS=()
cleanup() {
    local rc=$? pid i
    # Each service runs in its own process group (setsid), so signalling the
    # group also reaches ferryd's workers and nginx's worker.
    for pid in "${PIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for i in $(seq 30); do
            kill -0 -- "-$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "${FERRY_BENCH_LEAVE:-0}" = 1 ]; then
        say "left $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Start "$@" in the background in its own process group, output to $TMP/$name.*.
spawn() {
    local name=$1
    shift
    setsid "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null &
    PIDS+=("$!")
}

alive() { kill -0 "${PIDS[-1]}" 2>/dev/null; }

# Free loopback ports, all held open at once so they are distinct. Another
# process could take one before our server binds it; that shows up as a
# failed start, not a wrong number.
read -r NGINX_PORT FERRY_PORT ADMIN_PORT FERRY4_PORT ADMIN4_PORT NGINX_TLS_PORT FERRY_TLS_PORT FERRY4_TLS_PORT \
    FERRYA_PORT ADMINA_PORT FERRYA_TLS_PORT < <("$PY" -c '
import socket
ss = [socket.socket() for _ in range(11)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))
')

# Status code of GET url with extra curl args; 000 if nothing answered.
status() {
    curl -s -o /dev/null --max-time 1 -w '%{http_code}' "$@" 2>/dev/null || true
}

# Wait up to 10 s for GET to answer 200. Returns 1 on timeout.
wait_200() {
    local deadline=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$deadline" ]; do
        [ "$(status "$@")" = 200 ] && return 0
        sleep 0.1
    done
    return 1
}

# --- origin -------------------------------------------------------------------
spawn origin "$ORIGIN" -l 127.0.0.1:0
ORIGIN_PID=${PIDS[-1]}
ORIGIN_PORT=
for i in $(seq 100); do
    ORIGIN_PORT=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/origin.out" 2>/dev/null || true)
    [ -n "$ORIGIN_PORT" ] && break
    alive || break
    sleep 0.1
done
[ -n "$ORIGIN_PORT" ] || die "origin did not start: $(cat "$TMP/origin.err")"
wait_200 "http://127.0.0.1:$ORIGIN_PORT/1k" || die "origin does not answer /1k"

# --- a certificate for the HTTPS rows -------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.localhost \
    -addext "subjectAltName=DNS:bench.localhost,IP:127.0.0.1" -keyout "$TMP/tls.key" -out "$TMP/tls.pem" \
    >/dev/null 2>&1 || die "openssl could not make a certificate"
chmod 644 "$TMP/tls.key"   # nginx's workers (an unprivileged user) read it too

# --- nginx --------------------------------------------------------------------
# A tuned one-hop proxy: upstream keep-alive (enough idle connections for
# 1,000 clients, so none is closed after its request), no access log, and
# for big bodies 512 KiB of memory buffers per request and no temp files, so
# it streams them rather than spooling to disk (faster here than both the
# default and proxy_buffering off); request bodies up to 128 KiB stay in
# memory (the default 16 KiB spools a 64 KiB upload to a temp file and
# sends it in a second write, which meets the 40 ms delayed ACK). /ws passes
# the WebSocket upgrade on.
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events {
    worker_connections 8192;
}
http {
    access_log off;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_requests 1000000;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 1024;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        client_max_body_size 0;
        client_body_buffer_size 128k;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 16k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }
        location /ws {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }
    }
    server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl backlog=4096;
        ssl_certificate $TMP/tls.pem;
        ssl_certificate_key $TMP/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
spawn nginx "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf"
NGINX_PID=${PIDS[-1]}
wait_200 "http://127.0.0.1:$NGINX_PORT/1k" ||
    die "nginx not ready on :$NGINX_PORT: $(tail -n 5 "$TMP/nginx/error.log" "$TMP/nginx.err" 2>/dev/null)"

# --- ferryd + agent -----------------------------------------------------------
# Two relays: one worker (every request lands on the tunnel's owner), and
# four workers (the handoff path, when a connection lands on a worker that
# does not hold its tunnel: see Rows above).
FERRY_HDR=(-H "Host: bench.localhost")
AGENT_FLAGS=()
# No local agent API: two agents would fight over its default port.
"$FERRY" --help 2>&1 | grep -q -- '--web-addr' && AGENT_FLAGS+=(--web-addr false)
declare -A READY WHY RELAY_PID AGENT_PID EXTRA_AGENTS
start_ferry() {
    local row=$1 workers=$2 port=$3 admin=$4 tls_port=$5 code=000 deadline dpid apid
    READY[$row]=0
    RELAY_PID[$row]=
    AGENT_PID[$row]=
    printf 'listen: ["127.0.0.1:%s"]\nadmin: "127.0.0.1:%s"\nworkers: %s\n' \
        "$port" "$admin" "$workers" >"$TMP/$row.yml"
    printf 'listen_tls: ["127.0.0.1:%s"]\ntls: {cert: %s, key: %s}\n' \
        "$tls_port" "$TMP/tls.pem" "$TMP/tls.key" >>"$TMP/$row.yml"
    if [ ! -x "$FERRYD" ] || [ ! -x "$FERRY" ]; then
        WHY[$row]="$FERRYD or $FERRY not built"
        return 0
    fi
    spawn "$row-ferryd" "$FERRYD" -c "$TMP/$row.yml"
    dpid=${PIDS[-1]}
    spawn "$row-agent" "$FERRY" http "127.0.0.1:$ORIGIN_PORT" --server "ws://127.0.0.1:$port" \
        --subdomain bench --log stderr "${AGENT_FLAGS[@]}"
    apid=${PIDS[-1]}
    RELAY_PID[$row]=$dpid
    AGENT_PID[$row]=$apid
    EXTRA_AGENTS[$row]=
    for t in bench1 bench2 bench3; do
        spawn "$row-agent-$t" "$FERRY" http "127.0.0.1:$ORIGIN_PORT" --server "ws://127.0.0.1:$port" \
            --subdomain "$t" --log stderr "${AGENT_FLAGS[@]}"
        EXTRA_AGENTS[$row]="${EXTRA_AGENTS[$row]} ${PIDS[-1]}"
    done
    WHY[$row]="no 200 for Host: bench.localhost on :$port within 10 s"
    deadline=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$deadline" ]; do
        code=$(status "${FERRY_HDR[@]}" "http://127.0.0.1:$port/1k")
        for t in bench1 bench2 bench3; do
            [ "$code" = 200 ] && code=$(status -H "Host: $t.localhost" "http://127.0.0.1:$port/1k")
        done
        if [ "$code" = 200 ]; then
            READY[$row]=1
            return 0
        fi
        # Fail fast rather than wait out the 10 s for a process that is gone.
        kill -0 "$dpid" 2>/dev/null || { WHY[$row]="ferryd exited"; break; }
        kill -0 "$apid" 2>/dev/null || { WHY[$row]="the agent exited"; break; }
        sleep 0.1
    done
    WHY[$row]="${WHY[$row]} (last status $code)"
    say "$row not ready: ${WHY[$row]}"
    for f in "$row-ferryd.err" "$row-agent.err"; do
        [ -s "$TMP/$f" ] && { echo "--- $f (tail)" >&2; tail -n 5 "$TMP/$f" >&2; }
    done
}
start_ferry ferry 1 "$FERRY_PORT" "$ADMIN_PORT" "$FERRY_TLS_PORT"
start_ferry ferryauto auto "$FERRYA_PORT" "$ADMINA_PORT" "$FERRYA_TLS_PORT"
if [ -n "$LOADS_4W" ]; then
    start_ferry ferry4w 4 "$FERRY4_PORT" "$ADMIN4_PORT" "$FERRY4_TLS_PORT"
else
    READY[ferry4w]=0
fi
declare -A ADMIN=([ferry]=$ADMIN_PORT [ferryauto]=$ADMINA_PORT [ferry4w]=$ADMIN4_PORT)
RELAY_PID[nginx]=$NGINX_PID
AGENT_PID[nginx]=
RELAY_PID[direct]=
AGENT_PID[direct]=
EXTRA_AGENTS[nginx]=
EXTRA_AGENTS[direct]=

# --- process accounting -------------------------------------------------------
# A service is its session (setsid): ferryd's master and workers, nginx's
# master and worker.
group_pids() {
    [ -n "$1" ] && ps -o pid= --sid "$1" 2>/dev/null || true
}
# utime+stime (clock ticks) of every process of the group.
cpu_ticks() {
    local sum=0 p line f
    for p in $(group_pids "$1"); do
        line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        # Fields after "pid (comm) ": state is 1, utime 12, stime 13.
        read -r -a f <<<"${line##*) }"
        sum=$((sum + f[11] + f[12]))
    done
    echo "$sum"
}
# The same over several groups (a row's agents).
cpu_ticks_all() {
    local sum=0 g
    for g in "$@"; do
        sum=$((sum + $(cpu_ticks "$g")))
    done
    echo "$sum"
}
# Reset the peak RSS (VmHWM) of the group's processes to their current RSS.
hwm_reset() {
    local p
    for p in $(group_pids "$1"); do
        echo 5 >"/proc/$p/clear_refs" 2>/dev/null || HWM_NORESET=1
    done
}
# Sum of VmHWM (kB) over the group.
hwm_kb() {
    local p
    for p in $(group_pids "$1"); do
        awk '/^VmHWM:/ { print $2 }' "/proc/$p/status" 2>/dev/null || true
    done | awk '{ n += $1 } END { print n + 0 }'
}
HWM_NORESET=0

# --- measure ------------------------------------------------------------------
# One result per line, tab-separated key=value (values have no tabs).
record() {
    local IFS=$'\t'
    echo "$*" >>"$RESULTS"
}

kv() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" "$2" | tail -n 1; }

# metric ROW NAME: the value of NAME (a series name as /metrics prints it)
# from the row's ferryd; empty when the admin port does not answer.
metric() {
    curl -s --max-time 2 "http://127.0.0.1:${ADMIN[$1]}/metrics" |
        awk -v name="$2" '$1 == name { n = $2 } END { if (n != "") print n }' || true
}
# Connections the row's ferryd has handed to another worker so far.
handoffs_sent() { metric "$1" 'ferry_handoffs_total{outcome="sent"}'; }

# run LOAD ROW: one run, one result line.
run() {
    local load=$1 row=$2 out port url relay agent r0 a0 o0 r1 a1 o1 reqs dur bytes errs serrs
    local p50 p99 p999 rhwm= ahwm= rc=0 h0= h1=
    if [ "$row" = ferry4w ]; then
        case " $LOADS_4W " in *" $load "*) ;; *) return 0 ;; esac
    fi
    out="$TMP/run.$load.$row.txt"
    case $row in
    direct) port=$ORIGIN_PORT ;;
    nginx) port=$NGINX_PORT ;;
    ferry) port=$FERRY_PORT ;;
    ferryauto) port=$FERRYA_PORT ;;
    ferry4w) port=$FERRY4_PORT ;;
    esac
    url="http://127.0.0.1:$port"
    if [ "${load#https-}" != "$load" ]; then
        case $row in
        direct)
            record "load=$load" "row=$row" "status=n/a" "why=the origin speaks plain HTTP"
            return 0 ;;
        nginx) url="https://127.0.0.1:$NGINX_TLS_PORT" ;;
        ferry) url="https://127.0.0.1:$FERRY_TLS_PORT" ;;
        ferryauto) url="https://127.0.0.1:$FERRYA_TLS_PORT" ;;
        ferry4w) url="https://127.0.0.1:$FERRY4_TLS_PORT" ;;
        esac
    fi
    if [ "${row#ferry}" != "$row" ] && [ "${READY[$row]}" = 0 ]; then
        record "load=$load" "row=$row" "status=not ready" "why=${WHY[$row]}"
        return 0
    fi
    relay=${RELAY_PID[$row]}
    agent=${AGENT_PID[$row]}
    hwm_reset "$relay"
    hwm_reset "$agent"
    r0=$(cpu_ticks "$relay")
    # shellcheck disable=SC2086 # a list of pids
    a0=$(cpu_ticks_all "$agent" ${EXTRA_AGENTS[$row]})
    o0=$(cpu_ticks "$ORIGIN_PID")
    case $row in ferryauto | ferry4w) h0=$(handoffs_sent "$row") ;; esac
    # The tools stop themselves after the duration; timeout only catches a
    # wedged run.
    case $load in
    1k-keepalive | https-keepalive)
        timeout $((DURATION + 20)) wrk -t2 -c50 -d"${DURATION}s" -s "$HERE/bench.lua" \
            "${FERRY_HDR[@]}" "$url/1k" >"$out" 2>&1 || rc=$? ;;
    1k-close | https-close)
        timeout $((DURATION + 20)) wrk -t2 -c50 -d"${DURATION}s" -s "$HERE/bench.lua" \
            "${FERRY_HDR[@]}" -H "Connection: close" "$url/1k" >"$out" 2>&1 || rc=$? ;;
    1k-close-4t)
        BENCH_SPREAD=4 timeout $((DURATION + 20)) wrk -t2 -c50 -d"${DURATION}s" -s "$HERE/bench.lua" \
            -H "Connection: close" "$url/1k" >"$out" 2>&1 || rc=$? ;;
    1m-keepalive)
        timeout $((DURATION + 20)) wrk -t2 -c8 -d"${DURATION}s" -s "$HERE/bench.lua" \
            "${FERRY_HDR[@]}" "$url/1m" >"$out" 2>&1 || rc=$? ;;
    64k-upload)
        BENCH_BODY=65536 timeout $((DURATION + 20)) wrk -t2 -c16 -d"${DURATION}s" -s "$HERE/bench.lua" \
            "${FERRY_HDR[@]}" "$url/upload" >"$out" 2>&1 || rc=$? ;;
    1k-c1000)
        timeout $((DURATION + 30)) wrk -t2 -c1000 -d"${DURATION}s" --timeout 10s -s "$HERE/bench.lua" \
            "${FERRY_HDR[@]}" "$url/1k" >"$out" 2>&1 || rc=$? ;;
    ws-echo)
        timeout $((DURATION + 30)) "$BENCH_WS" -c50 -t2 -d"$DURATION" -s 1024 -H bench.localhost \
            "127.0.0.1:$port" >"$out" 2>&1 || rc=$? ;;
    *) die "unknown load $load" ;;
    esac
    r1=$(cpu_ticks "$relay")
    # shellcheck disable=SC2086
    a1=$(cpu_ticks_all "$agent" ${EXTRA_AGENTS[$row]})
    o1=$(cpu_ticks "$ORIGIN_PID")
    [ -n "$h0" ] && h1=$(handoffs_sent "$row")
    [ -n "$relay" ] && rhwm=$(hwm_kb "$relay")
    [ -n "$agent" ] && ahwm=$(hwm_kb "$agent")

    if [ "$load" = ws-echo ]; then
        if ! grep -q '^ws .*messages=' "$out"; then
            record "load=$load" "row=$row" "status=failed" "why=bench_ws: $(tail -n 1 "$out")"
            return 0
        fi
        reqs=$(kv messages "$out")
        dur=$((DURATION * 1000000))
        bytes=$((reqs * 1024))
        errs=$(kv errors "$out")
        serrs=0
        p50=$(kv p50_us "$out")
        p99=$(kv p99_us "$out")
        p999=$(kv p999_us "$out")
    else
        if ! grep -q '^BENCH ' "$out"; then
            record "load=$load" "row=$row" "status=failed" "why=wrk (exit $rc): $(tail -n 1 "$out")"
            return 0
        fi
        reqs=$(kv requests "$out")
        dur=$(kv duration_us "$out")
        bytes=$(kv bytes "$out")
        [ "$load" = 64k-upload ] && bytes=$((reqs * 65536))
        errs=$(kv errors "$out")
        serrs=$(kv status_errors "$out")
        p50=$(kv p50_us "$out")
        p99=$(kv p99_us "$out")
        p999=$(kv p999_us "$out")
    fi
    record "load=$load" "row=$row" "status=ok" "requests=$reqs" "duration_us=$dur" "bytes=$bytes" \
        "errors=$errs" "status_errors=$serrs" "p50_us=$p50" "p99_us=$p99" "p999_us=$p999" \
        "relay_ticks=$([ -n "$relay" ] && echo $((r1 - r0)))" \
        "agent_ticks=$([ -n "$agent" ] && echo $((a1 - a0)))" \
        "origin_ticks=$((o1 - o0))" "relay_hwm_kb=$rhwm" "agent_hwm_kb=$ahwm" \
        "handoffs=$([ -n "$h0" ] && [ -n "$h1" ] && echo $((h1 - h0)))"
    say "$load $row: $(awk -v r="$reqs" -v d="$dur" 'BEGIN { if (d > 0) printf "%.0f/s", r * 1e6 / d }')," \
        "p99 $(awk -v v="$p99" 'BEGIN { printf "%.2f ms", v / 1000 }'), errors $((errs + serrs))"
}

LOADAVG=$(cut -d" " -f1-3 /proc/loadavg)
for load in $LOADS; do
    for row in $ROWS; do
        run "$load" "$row"
    done
done

AUTO_WORKERS=
if [ "${READY[ferryauto]}" = 1 ]; then
    AUTO_WORKERS=$(metric ferryauto ferry_workers)
fi
record "meta" "duration_s=$DURATION" "cpus=$(nproc)" "loadavg_before=$LOADAVG" "clk_tck=$CLK_TCK" \
    "hwm_reset=$([ "$HWM_NORESET" = 1 ] && echo no || echo yes)" "auto_workers=$AUTO_WORKERS" \
    "ferryd=$FERRYD" "ferry=$FERRY" "nginx=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')" \
    "wrk=$(wrk -v 2>&1 | head -n 1 | cut -d' ' -f2)" \
    "commit=${FERRY_BENCH_SOURCE:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(
        [ -z "$(git status --porcelain -- master worker shm agent common GNUmakefile 2>/dev/null)" ] ||
            echo +dirty)}"

# --- the noise-free figure ----------------------------------------------------
CG=$TMP/callgrind.txt
: >"$CG"
if [ "${FERRY_BENCH_CALLGRIND:-1}" = 0 ]; then
    echo "cg_status=skipped (FERRY_BENCH_CALLGRIND=0)" >"$CG"
elif ! command -v valgrind >/dev/null; then
    echo "cg_status=skipped (valgrind not installed: apt-get install valgrind)" >"$CG"
elif [ "${READY[ferry]}" = 0 ]; then
    echo "cg_status=skipped (ferry not ready)" >"$CG"
else
    say "callgrind (tools/bench_callgrind.sh) ..."
    if "$HERE/bench_callgrind.sh" >"$CG.out" 2>"$CG.err"; then
        tr ' ' '\n' <"$CG.out" | grep '^cg_' >"$CG" || true
        echo "cg_status=ok" >>"$CG"
    else
        echo "cg_status=failed: $(tail -n 1 "$CG.err")" >"$CG"
        FAILED_CG=1
    fi
fi
echo "suite_seconds=$((SECONDS - START))" >>"$CG"

REPORT=("$PY" "$HERE/bench_report.py" report --results "$RESULTS" --callgrind "$CG"
    --baseline "$HERE/bench-baseline.json")
if [ "$JSON" = 1 ]; then
    "${REPORT[@]}" --format table >&2
    "${REPORT[@]}" --format json
else
    "${REPORT[@]}" --format table
fi

# Exit 1 if a row never started or a run failed.
! grep -q -P '\tstatus=(failed|not ready)' "$RESULTS" && [ "${FAILED_CG:-0}" = 0 ]
