"""Keep-alive and message framing through the tunnel: many requests on one
connection, pipelining, HEAD, bodiless statuses, Expect: 100-continue."""

import hashlib
import os
import subprocess
import time

import pytest

from harness import build_request, echo_headers, wait

# The whole module is in the valgrind subset (make test-valgrind).
pytestmark = pytest.mark.valgrind


def test_hundred_requests_one_connection(tunnel):
    with tunnel.raw() as c:
        for i in range(100):
            if i % 3 == 2:
                body = os.urandom(i * 97)
                r = c.request("POST", "/echo?i=%d" % i, tunnel.host, body=body)
                assert r.status == 200, (i, r)
                assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
            else:
                r = c.request("GET", "/echo?i=%d" % i, tunnel.host)
                assert r.status == 200, (i, r)
            assert r.json()["path"] == "/echo?i=%d" % i
            assert (r.header("Connection") or "").lower() != "close", (i, r)
        assert not c.closed_by_peer(0.2)


def test_pipelined_pair_in_one_send(tunnel):
    with tunnel.raw() as c:
        c.send(build_request("GET", "/echo?n=1", tunnel.host) + build_request("GET", "/echo?n=2", tunnel.host))
        r1 = c.read_response()
        r2 = c.read_response()
        assert (r1.status, r2.status) == (200, 200), (r1, r2)
        assert r1.json()["path"] == "/echo?n=1"
        assert r2.json()["path"] == "/echo?n=2"


def test_pipelined_slow_first_keeps_order(tunnel):
    with tunnel.raw() as c:
        c.send(build_request("GET", "/slow?s=0.5", tunnel.host)
               + build_request("POST", "/echo?n=2", tunnel.host, body=b"x" * 1000)
               + build_request("GET", "/echo?n=3", tunnel.host))
        r = [c.read_response() for _ in range(3)]
        assert [x.status for x in r] == [200, 200, 200], r
        assert [x.json()["path"] for x in r] == ["/slow?s=0.5", "/echo?n=2", "/echo?n=3"]
        assert r[1].json()["body_length"] == 1000


def test_head_then_get(tunnel):
    with tunnel.raw() as c:
        r = c.request("HEAD", "/echo", tunnel.host)
        assert r.status == 200, r
        assert int(r.header("Content-Length")) > 0
        assert r.body == b""
        r = c.request("GET", "/echo?after=head", tunnel.host)
        assert r.status == 200, r
        assert r.json()["path"] == "/echo?after=head"
        r = c.request("HEAD", "/download?size=5000000", tunnel.host)
        assert r.status == 200, r
        assert r.header("Content-Length") == "5000000"
        r = c.request("GET", "/echo?after=head2", tunnel.host)
        assert r.json()["path"] == "/echo?after=head2"


def test_204_and_304_then_next_request(tunnel):
    with tunnel.raw() as c:
        for code in (204, 304, 204):
            r = c.request("GET", "/status/%d" % code, tunnel.host)
            assert r.status == code, r
            r = c.request("GET", "/echo?after=%d" % code, tunnel.host)
            assert r.status == 200, r
            assert r.json()["path"] == "/echo?after=%d" % code


def test_connection_close_honoured(tunnel):
    with tunnel.raw() as c:
        r = c.request("GET", "/echo", tunnel.host, headers=[("Connection", "close")])
        assert r.status == 200, r
        assert c.closed_by_peer()


def test_http10_request(tunnel):
    with tunnel.raw() as c:
        c.send("GET /echo?v=10 HTTP/1.0\r\nHost: %s\r\n\r\n" % tunnel.host)
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["path"] == "/echo?v=10"
        assert c.closed_by_peer()


def test_expect_100_continue_raw(tunnel):
    body = os.urandom(300000)
    with tunnel.raw() as c:
        c.send("POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
               % (tunnel.host, len(body)))
        r = c.read_response(interim=True)  # bounded by the socket timeout
        assert r.status == 100, r
        c.send(body)
        r = c.read_response()
        assert r.status == 200, r
        assert r.json() == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}
        r = c.request("GET", "/echo?after=100", tunnel.host)
        assert r.json()["path"] == "/echo?after=100"


def test_expect_100_continue_curl(tunnel, workdir):
    path = os.path.join(workdir, "body.bin")
    body = os.urandom(3 << 20)
    with open(path, "wb") as f:
        f.write(body)
    p = subprocess.run(
        ["curl", "-sS", "-v", "--noproxy", "*", "--max-time", str(wait(60)),
         "-H", "Host: %s" % tunnel.host, "-H", "Expect: 100-continue",
         "--data-binary", "@" + path, "-w", "\n%{http_code}", "http://127.0.0.1:%d/upload" % tunnel.port],
        capture_output=True, timeout=wait(90))
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    text, _, code = out.rpartition("\n")
    assert code == "200", out
    import json
    assert json.loads(text) == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}
    assert "100 Continue" in p.stderr.decode(), p.stderr.decode()[-2000:]


def test_keepalive_through_requests_session(tunnel):
    # a normal client library reusing its pooled connection
    for i in range(20):
        r = tunnel.get("/echo?i=%d" % i)
        assert r.status_code == 200
        assert echo_headers(r.json(), "X-Tunnel-Id") == ["app"]


def test_close_request_with_bytes_behind_it_gets_its_whole_answer(tunnel):
    # A client that asked Connection: close but sends more while its answer
    # is on the way is not closed at once: bytes unread at close() would
    # reset the connection and could destroy the answer in the client's
    # buffer. The relay half-closes and drains instead, so the client reads
    # all 4 MiB late and then sees a clean end.
    with tunnel.raw() as c:
        c.send(build_request("GET", "/download?size=%d" % (4 << 20), tunnel.host, [("Connection", "close")]))
        while b"\r\n\r\n" not in c.buf:   # the answer has begun: the relay read the request
            c._fill()
        c.send(b"EXTRA BYTES THE CLIENT SHOULD NOT HAVE SENT")
        time.sleep(0.3)   # the relay writes until our buffers fill, then waits for us
        r = c.read_response()
        assert r.status == 200, r
        assert len(r.body) == 4 << 20
        c.sock.settimeout(wait(5))
        assert c.sock.recv(1) == b""
