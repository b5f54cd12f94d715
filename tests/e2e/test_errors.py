"""What end users get when it fails (SPEC "What end users get when it
fails"): small text/plain bodies with X-Ferry-Error: CODE."""

import re
import time

import pytest

from harness import RawConn, free_port, wait

# The whole module is in the valgrind subset (make test-valgrind).
pytestmark = pytest.mark.valgrind

UPSTREAM_TIMEOUT = wait(2)


@pytest.fixture
def erelay(relay_factory):
    return relay_factory(limits={"header_timeout": "1s", "upstream_timeout": "%ds" % UPSTREAM_TIMEOUT})


@pytest.fixture
def etunnel(tunnel_factory, erelay):
    return tunnel_factory("app", relay=erelay)


def assert_error(r, status, code):
    """r: a harness.Response."""
    assert r.status == status, r
    assert r.header("X-Ferry-Error") == code, r
    assert (r.header("Content-Type") or "").startswith("text/plain"), r
    assert len(r.body) < 1024, r


def test_unknown_tunnel_404(erelay):
    with RawConn(erelay.port) as c:
        r = c.request("GET", "/echo", erelay.host("nosuch"))
        assert_error(r, 404, "tunnel_offline")
        assert 'tunnel "nosuch" is not connected' in r.text
        # the connection stays usable
        r = c.request("GET", "/", erelay.host("other"))
        assert_error(r, 404, "tunnel_offline")
        assert 'tunnel "other" is not connected' in r.text


def test_unknown_tunnel_by_path_404(erelay):
    with RawConn(erelay.port) as c:
        r = c.request("GET", "/t/nosuch/echo", "127.0.0.1:%d" % erelay.port)
        assert_error(r, 404, "tunnel_offline")
        assert 'tunnel "nosuch" is not connected' in r.text


def test_no_tunnel_named_404(erelay):
    for host in ("127.0.0.1:%d" % erelay.port, "localhost:%d" % erelay.port, "example.com"):
        with RawConn(erelay.port) as c:
            r = c.request("GET", "/echo", host)
            assert_error(r, 404, "no_tunnel")
            assert "no tunnel named in this request" in r.text


def test_origin_down_502(tunnel_factory, erelay):
    dead = free_port()  # nothing listens there
    t = tunnel_factory("down", relay=erelay, target=dead)
    with t.raw() as c:
        r = c.request("GET", "/echo", t.host)
        assert_error(r, 502, "upstream_refused")
        assert ":%d" % dead in r.text, r.text  # names the upstream


def test_origin_down_502_host_port_form(tunnel_factory, erelay):
    dead = free_port()
    t = tunnel_factory("down2", relay=erelay, target="127.0.0.1:%d" % dead)
    with t.raw() as c:
        r = c.request("GET", "/echo", t.host)
        assert_error(r, 502, "upstream_refused")
        assert "127.0.0.1:%d" % dead in r.text, r.text


def test_upstream_timeout_504(etunnel):
    with etunnel.raw(timeout=wait(30)) as c:
        r = c.request("GET", "/slow?s=%d" % (UPSTREAM_TIMEOUT + 3), etunnel.host)
        assert_error(r, 504, "upstream_timeout")
    # the tunnel still works afterwards
    assert etunnel.get("/echo").status_code == 200


def test_cl_and_te_400_then_close(etunnel):
    with etunnel.raw() as c:
        c.send("POST /echo HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\n"
               "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % etunnel.host)
        r = c.read_response()
        assert_error(r, 400, "bad_request")
        assert c.closed_by_peer(), "connection not closed after 400"


def test_differing_content_lengths_400(etunnel):
    with etunnel.raw() as c:
        c.send("POST /echo HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\n"
               "Content-Length: 6\r\n\r\nhello!" % etunnel.host)
        r = c.read_response()
        assert_error(r, 400, "bad_request")
        assert c.closed_by_peer(), "connection not closed after 400"


def test_malformed_request_line_400(erelay):
    with RawConn(erelay.port) as c:
        c.send("GARBAGE\r\nHost: app.localhost\r\n\r\n")
        r = c.read_response()
        assert_error(r, 400, "bad_request")
        assert c.closed_by_peer()


def test_header_too_large_431(etunnel):
    with etunnel.raw() as c:
        c.send("GET /echo HTTP/1.1\r\nHost: %s\r\nX-Big: %s\r\n\r\n" % (etunnel.host, "a" * 10000))
        assert_error(c.read_response(), 431, "header_too_large")


def test_too_many_headers_431(etunnel):
    # Decision: more than limits.max_headers (50) headers answers like an
    # oversized header block (431, header_too_large).
    hdrs = "".join("X-H%d: v\r\n" % i for i in range(60))
    with etunnel.raw() as c:
        c.send("GET /echo HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (etunnel.host, hdrs))
        assert_error(c.read_response(), 431, "header_too_large")


def test_headers_under_limits_pass(etunnel):
    hdrs = [("X-H%d" % i, "v") for i in range(30)] + [("X-Big", "b" * 4000)]
    with etunnel.raw() as c:
        r = c.request("GET", "/echo", etunnel.host, headers=hdrs)
        assert r.status == 200, r


def test_slowloris_408_then_close(etunnel):
    with etunnel.raw(timeout=wait(15)) as c:
        c.send("GET /echo HTTP/1.1\r\nHost: %s\r\nX-Slow: " % etunnel.host)
        r = c.read_response()  # bounded by the socket timeout
        assert_error(r, 408, "header_timeout")
        assert c.closed_by_peer(), "connection not closed after 408"


def test_trickled_header_408(etunnel):
    # One byte every 200 ms never completes the head: the header timeout
    # must count from the first byte, not from the last one.
    with etunnel.raw() as c:
        c.send("GET /echo HTTP/1.1\r\nHost: %s\r\nX-Slow: " % etunnel.host)
        c.sock.settimeout(0.2)
        deadline = time.monotonic() + wait(15)
        got = b""
        while time.monotonic() < deadline:
            try:
                c.sock.send(b"a")
            except OSError:
                break
            try:
                data = c.sock.recv(65536)
            except OSError:  # timeout: nothing yet
                continue
            if not data:
                break
            got += data
            if b"\r\n\r\n" in got:
                break
        assert re.match(rb"HTTP/1\.[01] 408 ", got), got
        assert b"header_timeout" in got, got


def test_bad_version_505(etunnel):
    with etunnel.raw() as c:
        c.send("GET / HTTP/2.0\r\nHost: %s\r\n\r\n" % etunnel.host)
        assert_error(c.read_response(), 505, "bad_version")

