"""Flow control (slow): 1 GiB up to an origin that reads slowly and 1 GiB
down to a client that reads slowly, sha256 compared end to end, while the
peak RSS (VmHWM) of every ferryd process (master and workers) and of ferry
stays under 64 MiB. The slow side pauses 2 s at the start and halfway, and
otherwise sleeps 1 ms per 64 KiB (origin) or 256 KiB (client), so the tunnel
really has to hold the fast side back. Memory asserts are skipped with
FERRY_SAN=1 (ASan's shadow memory and quarantine)."""

import functools
import hashlib
import time

import pytest

from harness import SAN, MemSampler, wait
from origin import pattern_chunks, pattern_sha256

pytestmark = pytest.mark.slow

SIZE = 1 << 30
LIMIT_KIB = 64 * 1024


@functools.lru_cache()
def expected_sha():
    return pattern_sha256(SIZE)


@pytest.fixture
def flow_tunnel(relay_factory, tunnel_factory):
    relay = relay_factory(limits={"upstream_timeout": "10m", "body_timeout": "5m", "idle_timeout": "5m"})
    return tunnel_factory("flow", relay=relay)


def sampler_for(t):
    return MemSampler(lambda: [p for p in (t.relay.proc.pid, t.agent.pid)])


def check_memory(sampler):
    print("peak RSS: " + sampler.report())
    assert len(sampler.peak) >= 2, sampler.report()  # at least ferryd and ferry were seen
    if SAN:
        return  # ASan inflates RSS; the bound is checked in the plain build
    over = {pid: v for pid, v in sampler.peak.items() if v[0] >= LIMIT_KIB}
    assert not over, "VmHWM over 64 MiB: " + sampler.report()


def test_upload_1gib_to_slow_origin(flow_tunnel):
    t = flow_tunnel
    deadline = time.monotonic() + wait(600)
    with sampler_for(t) as mem, t.raw(timeout=wait(120)) as c:
        c.send("POST /slowupload?pause=2 HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n"
               "Content-Type: application/octet-stream\r\n\r\n" % (t.host, SIZE))
        h = hashlib.sha256()
        for i, block in enumerate(pattern_chunks(SIZE)):
            c.sock.sendall(block)  # each call bounded by the socket timeout
            h.update(block)
            assert time.monotonic() < deadline, "upload still running after %ds" % wait(600)
        r = c.read_response()
    assert r.status == 200, r
    assert r.json() == {"sha256": h.hexdigest(), "length": SIZE}
    assert h.hexdigest() == expected_sha()
    check_memory(mem)
    assert t.get("/echo").status_code == 200


def test_download_1gib_slow_client(flow_tunnel):
    t = flow_tunnel
    deadline = time.monotonic() + wait(600)
    with sampler_for(t) as mem, t.raw(timeout=wait(120)) as c:
        c.send("GET /download?size=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (SIZE, t.host))
        version, status, reason, headers = c.read_head()
        assert status == 200, (status, headers)
        hdr = {k.lower(): v for k, v in headers}
        assert hdr.get("content-length") == str(SIZE), headers
        h = hashlib.sha256()
        got = len(c.buf)
        h.update(c.buf)
        c.buf.clear()
        buf = bytearray(262144)
        view = memoryview(buf)
        time.sleep(2)  # read nothing for a while: the relay must hold the origin back
        mem.sample()
        paused_half = False
        while got < SIZE:
            n = c.sock.recv_into(view, min(len(buf), SIZE - got))
            assert n > 0, "stream ended after %d of %d bytes" % (got, SIZE)
            h.update(view[:n])
            before = got
            got += n
            if got // 262144 != before // 262144:
                time.sleep(0.001)
            if not paused_half and got >= SIZE // 2:
                paused_half = True
                time.sleep(2)
                mem.sample()
            assert time.monotonic() < deadline, "download still running after %ds" % wait(600)
    assert got == SIZE
    assert h.hexdigest() == expected_sha()
    check_memory(mem)
    assert t.get("/echo").status_code == 200
