-- tools/bench.lua: the wrk script of tools/bench.sh (wrk 4.x, LuaJIT).
--
-- BENCH_BODY=N in the environment: every request is a POST of an N-byte
-- body of 'x' (the upload load; wrk adds Content-Length). Otherwise the
-- request is wrk's own (GET, with the -H headers).
--
-- done() prints one line that tools/bench.sh parses, latencies in
-- microseconds (wrk's --latency table stops at 99 %, this adds 99.9 %):
--   BENCH requests=N duration_us=D bytes=B errors=E status_errors=S
--         p50_us=.. p99_us=.. p999_us=.. max_us=..
-- errors = connect + read + write + timeout errors; status_errors = answers
-- that were not 2xx or 3xx.

-- BENCH_SPREAD=N: requests name tunnels bench, bench1, ..., bench(N-1) in
-- turn (Host), each thread starting at its own place.

local n = tonumber(os.getenv("BENCH_BODY") or "")
if n and n > 0 then
    wrk.method = "POST"
    wrk.body = string.rep("x", n)
    wrk.headers["Content-Type"] = "application/octet-stream"
end

local spread = tonumber(os.getenv("BENCH_SPREAD") or "")
if spread and spread > 1 then
    local turn = 0
    function init(args)
        turn = math.random(0, spread - 1)
    end
    function request()
        turn = (turn + 1) % spread
        wrk.headers["Host"] = turn == 0 and "bench.localhost" or ("bench" .. turn .. ".localhost")
        return wrk.format()
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%.0f duration_us=%.0f bytes=%.0f errors=%.0f status_errors=%.0f " ..
        "p50_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f\n",
        summary.requests, summary.duration, summary.bytes,
        e.connect + e.read + e.write + e.timeout, e.status,
        latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
