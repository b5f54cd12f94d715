#!/usr/bin/env bash
# tools/bench.sh: ferry's benchmark driver (`make bench`, run from the repo root).
#
# Starts, on free loopback ports in a temp dir: the origin (build/tools/origin),
# nginx as a one-hop keep-alive reverse proxy to it, and ferryd (one worker)
# with a ferry agent exposing the origin as tunnel "bench". Then runs wrk
# against each of the three for each load, all in this one run, so the ratios
# compare like with like on the same machine at the same moment:
#
#   1k keep-alive       GET /1k, -c 50, keep-alive
#   1k close            GET /1k, -c 50, "Connection: close" (a TCP connection per request)
#   1m keep-alive       GET /1m, -c 8, bulk throughput
#
# Prints one table: req/s, MB/s (wrk's MB, i.e. MiB), p50/p99 latency, errors
# (socket errors plus non-2xx), and ferry's req/s as a ratio of direct and of
# nginx. If ferry never becomes ready its rows say so and the script exits 1.
#
# Knobs (environment): FERRY_BENCH_DURATION (wrk seconds, default 5),
# FERRY_BENCH_LEAVE=1 (keep the temp dir: configs, logs, raw wrk output),
# FERRYD / FERRY / ORIGIN / NGINX (binaries; defaults ./ferryd, ./ferry,
# $FERRY_BUILD/tools/origin, /usr/sbin/nginx).
set -euo pipefail

DURATION=${FERRY_BENCH_DURATION:-5}
BIN_DIR=${FERRY_BIN_DIR:-.}
FERRYD=${FERRYD:-$BIN_DIR/ferryd}
FERRY=${FERRY:-$BIN_DIR/ferry}
ORIGIN=${ORIGIN:-${FERRY_BUILD:-build}/tools/origin}
NGINX=${NGINX:-/usr/sbin/nginx}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

die() { echo "bench: $*" >&2; exit 1; }

for tool in wrk curl "$PY"; do
    command -v "$tool" >/dev/null || die "$tool not found (make deps installs it)"
done
[ -x "$ORIGIN" ] || die "$ORIGIN not built (make $ORIGIN)"
[ -x "$NGINX" ] || die "$NGINX not found (apt-get install nginx)"

TMP=$(mktemp -d /tmp/ferry-bench.XXXXXX)
# nginx drops its workers to an unprivileged user when started as root; they
# must still reach the temp paths below.
chmod 755 "$TMP"

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
        echo "bench: left $TMP" >&2
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
read -r NGINX_PORT FERRY_PORT ADMIN_PORT FERRY4_PORT ADMIN4_PORT < <("$PY" -c '
import socket
ss = [socket.socket() for _ in range(5)]
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
ORIGIN_PORT=
for i in $(seq 100); do
    ORIGIN_PORT=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/origin.out")
    [ -n "$ORIGIN_PORT" ] && break
    alive || break
    sleep 0.1
done
[ -n "$ORIGIN_PORT" ] || die "origin did not start: $(cat "$TMP/origin.err")"
wait_200 "http://127.0.0.1:$ORIGIN_PORT/1k" || die "origin does not answer /1k"

# --- nginx --------------------------------------------------------------------
# A tuned one-hop proxy: upstream keep-alive, no access log, and for big
# bodies 512 KiB of memory buffers per request and no temp files, so it
# streams them rather than spooling to disk (faster here than both the
# default and proxy_buffering off).
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events {
    worker_connections 4096;
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
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        client_max_body_size 0;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 16k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }
    }
}
EOF
spawn nginx "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf"
wait_200 "http://127.0.0.1:$NGINX_PORT/1k" ||
    die "nginx not ready on :$NGINX_PORT: $(tail -n 5 "$TMP/nginx/error.log" "$TMP/nginx.err" 2>/dev/null)"

# --- ferryd + agent -----------------------------------------------------------
# Two relays: one worker (every request lands on the tunnel's owner), and
# four workers, where most new connections land on a worker that does not
# own the tunnel and are handed to the owner (the handoff path).
FERRY_HDR=(-H "Host: bench.localhost")
declare -A READY WHY
start_ferry() {
    local row=$1 workers=$2 port=$3 admin=$4 code=000 deadline dpid apid
    READY[$row]=0
    printf 'listen: ["127.0.0.1:%s"]\nadmin: "127.0.0.1:%s"\nworkers: %s\n' \
        "$port" "$admin" "$workers" >"$TMP/$row.yml"
    if [ ! -x "$FERRYD" ] || [ ! -x "$FERRY" ]; then
        WHY[$row]="$FERRYD or $FERRY not built"
        return 0
    fi
    spawn "$row-ferryd" "$FERRYD" -c "$TMP/$row.yml"
    dpid=${PIDS[-1]}
    spawn "$row-agent" "$FERRY" http "127.0.0.1:$ORIGIN_PORT" --server "ws://127.0.0.1:$port" \
        --subdomain bench --log stderr
    apid=${PIDS[-1]}
    WHY[$row]="no 200 for Host: bench.localhost on :$port within 10 s"
    deadline=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$deadline" ]; do
        code=$(status "${FERRY_HDR[@]}" "http://127.0.0.1:$port/1k")
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
    echo "bench: $row not ready: ${WHY[$row]}" >&2
    for f in "$row-ferryd.err" "$row-agent.err"; do
        [ -s "$TMP/$f" ] && { echo "--- $f (tail)" >&2; tail -n 5 "$TMP/$f" >&2; }
    done
}
start_ferry ferry 1 "$FERRY_PORT" "$ADMIN_PORT"
FERRYD1_PID=${PIDS[-2]:-0}
AGENT1_PID=${PIDS[-1]:-0}
start_ferry ferry4w 4 "$FERRY4_PORT" "$ADMIN4_PORT"

# --- measure ------------------------------------------------------------------
# wrk prints latency as 730.00us / 1.17ms / 2.00s / 1.50m; -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000
        else if (u == "m") n *= 60000; else if (u == "h") n *= 3600000
        printf "%.2f", n }'
}

# wrk prints Transfer/sec in 1024-based B/KB/MB/GB; -> MB.
to_mb() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "B") n /= 1048576; else if (u == "KB") n /= 1024
        else if (u == "GB") n *= 1024; else if (u == "TB") n *= 1048576
        printf "%.1f", n }'
}

LOADAVG=$(cut -d" " -f1-3 /proc/loadavg)
declare -A RPS
FAILED=0
printf '%-13s %-7s %10s %9s %9s %9s %7s %9s %9s %9s\n' \
    load row 'req/s' 'MB/s' 'p50 ms' 'p99 ms' errors 'vs direct' 'vs nginx' 'vs 1w'

# bench LOAD ROW CONNS PATH [extra wrk args]: one wrk run and one table line.
bench() {
    local load=$1 row=$2 conns=$3 path=$4 out url port rps tr p50 p99 errs vd= vn= vf=
    shift 4
    out="$TMP/wrk.$load.$row.txt"
    case $row in
    direct) port=$ORIGIN_PORT ;;
    nginx) port=$NGINX_PORT ;;
    ferry) port=$FERRY_PORT ;;
    ferry4w) port=$FERRY4_PORT ;;
    esac
    url="http://127.0.0.1:$port$path"
    if [ "${row#ferry}" != "$row" ] && [ "${READY[$row]}" = 0 ]; then
        printf '%-13s %-7s %s\n' "$load" "$row" "$row: not ready"
        return 0
    fi
    # wrk stops itself after -d; the timeout only catches a wedged run.
    if ! timeout $((DURATION + 20)) wrk -t2 -c"$conns" -d"${DURATION}s" --latency "$@" "$url" \
        >"$out" 2>&1 || ! grep -q '^Requests/sec:' "$out"; then
        printf '%-13s %-7s %s\n' "$load" "$row" "wrk failed: $(tail -n 1 "$out")"
        FAILED=1
        return 0
    fi
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
    tr=$(to_mb "$(awk '/^Transfer\/sec:/ { print $2 }' "$out")")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    errs=$(awk '/Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
                /Non-2xx or 3xx responses:/ { n += $5 }
                END { print n + 0 }' "$out")
    RPS[$load.$row]=$rps
    if [ "$row" != direct ] && [ -n "${RPS[$load.direct]:-}" ]; then
        vd=$(awk -v a="$rps" -v b="${RPS[$load.direct]}" 'BEGIN { if (b > 0) printf "%.2fx", a / b }')
    fi
    if [ "${row#ferry}" != "$row" ] && [ -n "${RPS[$load.nginx]:-}" ]; then
        vn=$(awk -v a="$rps" -v b="${RPS[$load.nginx]}" 'BEGIN { if (b > 0) printf "%.2fx", a / b }')
    fi
    if [ "$row" = ferry4w ] && [ -n "${RPS[$load.ferry]:-}" ]; then
        vf=$(awk -v a="$rps" -v b="${RPS[$load.ferry]}" 'BEGIN { if (b > 0) printf "%.2fx", a / b }')
    fi
    printf '%-13s %-7s %10s %9s %9s %9s %7s %9s %9s %9s\n' \
        "$load" "$row" "$rps" "$tr" "$p50" "$p99" "$errs" "$vd" "$vn" "$vf"
}

for row in direct nginx ferry ferry4w; do
    bench 1k-keepalive "$row" 50 /1k "${FERRY_HDR[@]}"
done
for row in direct nginx ferry ferry4w; do
    bench 1k-close "$row" 50 /1k "${FERRY_HDR[@]}" -H "Connection: close"
done
for row in direct nginx ferry ferry4w; do
    bench 1m-keepalive "$row" 8 /1m "${FERRY_HDR[@]}"
done

# Resident memory after the runs (kB), summed over each process group: what
# the relay and the agent hold with one busy tunnel.
rss_group() {
    ps -o rss= -g "$1" 2>/dev/null | awk '{ n += $1 } END { print n + 0 }'
}
if [ "${READY[ferry]}" = 1 ]; then
    echo "memory (RSS after the runs): ferryd $(rss_group "$FERRYD1_PID") kB (master+worker)," \
        "agent $(rss_group "$AGENT1_PID") kB, nginx $(rss_group "${PIDS[1]}") kB"
fi
echo "ferry = 1 worker (the owner takes every connection); ferry4w = 4 workers, where most new" \
    "connections are handed to the owner (vs 1w = ferry4w / ferry)"
if [ "${READY[ferry4w]}" = 1 ]; then
    echo "handoffs (ferry4w): $(curl -s "http://127.0.0.1:$ADMIN4_PORT/metrics" | awk '/^ferry_handoffs_total/ { printf "%s ", $0 }')"
fi
echo "(wrk -t2, ${DURATION}s per run; 1k loads -c50, 1m load -c8; $(nproc) CPUs shared by wrk and the servers; load average before: $LOADAVG)"

for row in ferry ferry4w; do
    if [ "${READY[$row]}" = 0 ]; then
        echo "bench: $row rows missing: ${WHY[$row]}" >&2
        FAILED=1
    fi
done
exit "$FAILED"
