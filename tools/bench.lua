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

local n = tonumber(os.getenv("BENCH_BODY") or "")
if n and n > 0 then
    wrk.method = "POST"
    wrk.body = string.rep("x", n)
    wrk.headers["Content-Type"] = "application/octet-stream"
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
