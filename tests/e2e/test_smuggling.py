"""Request smuggling and protocol abuse, end to end on raw sockets (issue 9,
item 2; SPEC "What end users get when it fails").

A relay (two workers, so the handoff path is exercised too) carries tunnel
"app" to a RecordingOrigin (harness.py) in this process, which keeps every
byte it receives and frames requests leniently, as a naive server would.
Every hostile request must get its status (400, 431, 505, 405 for CONNECT),
a small text/plain body with X-Ferry-Error, `Connection: close`, and the
connection closed; no worker may die; and the origin must see nothing of
the hostile request: after it, a sentinel request on a fresh connection is
the only thing that reaches the origin, and no marker of the hostile bytes
(its path, a smuggled second request) ever shows up there.

Where a request head is valid but its chunked body is not, the head has been
forwarded before the body goes wrong: the origin then sees that head and a
truncated body, and the stream is reset (the origin's connection closes),
so it never completes a request from it, let alone the smuggled one.
"""

import socket
import time
import uuid

import pytest

from harness import RawConn, RecordingOrigin, build_request, wait, worker_deaths

MAX_HEADERS = 20
MAX_HEADER_BYTES = 4096


class Env:
    def __init__(self, relay, agent, origin):
        self.relay = relay
        self.agent = agent
        self.origin = origin
        self.host = relay.host(agent.id)
        self.port = relay.port
        self.pids = sorted(relay.pids())

    def healthy(self):
        """No worker died or was replaced since the start."""
        assert worker_deaths(self.relay) == [], worker_deaths(self.relay)
        assert sorted(self.relay.pids()) == self.pids, "ferryd processes changed: %s -> %s" % (
            self.pids, sorted(self.relay.pids()))

    def sentinel(self):
        """A good request on a fresh connection: it must reach the origin
        and be answered; returns its target."""
        target = "/sentinel-%s" % uuid.uuid4().hex
        with RawConn(self.port, timeout=wait(10)) as c:
            r = c.request("GET", target, self.host)
        assert r.status == 200, r
        assert r.json()["target"] == target, r
        return target


@pytest.fixture
def env(relay_factory, agent_factory):
    origin = RecordingOrigin()
    try:
        relay = relay_factory(workers=2, limits={"header_timeout": "5s", "max_headers": MAX_HEADERS,
                                                 "max_header_bytes": MAX_HEADER_BYTES})
        agent = agent_factory(relay, target=origin.port, subdomain="app")
        e = Env(relay, agent, origin)
        e.sentinel()  # the tunnel answers
        yield e
        e.healthy()
    finally:
        origin.stop()


def assert_error(r, status, code):
    assert r.status == status, r
    assert r.header("X-Ferry-Error") == code, r
    assert (r.header("Content-Type") or "").startswith("text/plain"), r
    assert "close" in (r.header("Connection") or "").lower(), r
    assert len(r.body) < 1024, r


def assert_closed(c):
    """The relay closes the connection (EOF or reset) within a bound."""
    assert c.closed_by_peer(wait(5)), "connection still open (or more bytes) after the error: %r" % bytes(c.buf)


def reject(env, data, status, code, markers=(), head_forwarded=False):
    """Send data on a fresh connection: one error response, then close;
    then nothing of it at the origin. markers: byte strings that must never
    reach the origin. head_forwarded: the request head was valid (only its
    body is bad), so the origin may see the head but must complete no
    request from it."""
    if isinstance(data, str):
        data = data.encode("latin-1")
    mark = env.origin.mark()
    with RawConn(env.port, timeout=wait(10)) as c:
        try:
            c.send(data)
        except OSError:
            pass  # the relay may answer and close before taking it all
        r = c.read_response()
        assert_error(r, status, code)
        assert_closed(c)
    target = env.sentinel()
    time.sleep(0.2)  # anything forwarded before the sentinel has landed by now
    reqs = env.origin.requests(mark)
    assert [q["target"] for q in reqs] == [target], "origin saw: %r" % reqs
    got = env.origin.received(mark)
    for m in markers:
        assert m not in got, "%r reached the origin: %r" % (m, got[:2000])
    if not head_forwarded:
        assert got.startswith(b"GET " + target.encode() + b" HTTP/1.1\r\n"), got[:2000]
        assert got.count(b" HTTP/1.") == 1, got[:2000]
    env.healthy()
    return r


def smuggled(env):
    """A complete second request that must never reach the origin."""
    return "GET /SMUGGLED HTTP/1.1\r\nHost: %s\r\n\r\n" % env.host


SMUG = b"SMUGGLED"


# ---------------------------------------------------------------------------
# body framing: Content-Length and Transfer-Encoding


def test_cl_te_with_smuggled_request(env):
    body = "0\r\n\r\n" + smuggled(env)
    reject(env, "POST /cl-te HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%s"
           % (env.host, len(body), body), 400, "bad_request", [SMUG, b"/cl-te"])


def test_te_cl_with_smuggled_request(env):
    body = "0\r\n\r\n" + smuggled(env)
    reject(env, "POST /te-cl HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n%s"
           % (env.host, body), 400, "bad_request", [SMUG, b"/te-cl"])


def test_te_cl_zero_length(env):
    reject(env, "POST /te-cl0 HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
           "5\r\nhello\r\n0\r\n\r\n" % env.host, 400, "bad_request", [b"/te-cl0"])


def test_duplicate_equal_content_length(env):
    reject(env, "POST /dup-cl HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
           % env.host, 400, "bad_request", [b"/dup-cl"])


def test_differing_content_length_with_smuggled_request(env):
    s = smuggled(env)
    reject(env, "POST /diff-cl HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n%s"
           % (env.host, len(s), s), 400, "bad_request", [SMUG, b"/diff-cl"])


@pytest.mark.parametrize("value", ["5, 5", "5,6", "+5", "-1", "0x5", "5 5", "5.0", "",
                                   "18446744073709551621", "99999999999999999999999"])
def test_invalid_content_length(env, value):
    reject(env, "POST /bad-cl HTTP/1.1\r\nHost: %s\r\nContent-Length: %s\r\n\r\nhello"
           % (env.host, value), 400, "bad_request", [b"/bad-cl"])


@pytest.mark.parametrize("value", ["chunked, identity", "identity", "identity, chunked", "chunked, chunked",
                                   "gzip, chunked", "xchunked", "chunked;q=1", '"chunked"', "\x0bchunked",
                                   "chunk", ""])
def test_transfer_encoding_other_than_chunked(env, value):
    body = "0\r\n\r\n" + smuggled(env)
    reject(env, "POST /bad-te HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: %s\r\n\r\n%s"
           % (env.host, value, body), 400, "bad_request", [SMUG, b"/bad-te"])


def test_transfer_encoding_twice(env):
    body = "0\r\n\r\n" + smuggled(env)
    reject(env, "POST /te2 HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n%s"
           % (env.host, body), 400, "bad_request", [SMUG, b"/te2"])


def test_transfer_encoding_obs_fold(env):
    body = "0\r\n\r\n" + smuggled(env)
    reject(env, "POST /te-fold HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: %d\r\n\r\n%s"
           % (env.host, len(body), body), 400, "bad_request", [SMUG, b"/te-fold"])


def test_transfer_encoding_space_before_colon(env):
    body = "0\r\n\r\n" + smuggled(env)
    reject(env, "POST /te-sp HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding : chunked\r\nContent-Length: %d\r\n\r\n%s"
           % (env.host, len(body), body), 400, "bad_request", [SMUG, b"/te-sp"])


def test_transfer_encoding_in_http10(env):
    body = "0\r\n\r\n" + smuggled(env)
    reject(env, "POST /te10 HTTP/1.0\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n%s"
           % (env.host, body), 400, "bad_request", [SMUG, b"/te10"])


# ---------------------------------------------------------------------------
# head syntax


def test_obs_fold(env):
    reject(env, "GET /fold HTTP/1.1\r\nHost: %s\r\nX-A: one\r\n two\r\n\r\n" % env.host,
           400, "bad_request", [b"/fold"])


def test_obs_fold_tab_continuing_host(env):
    reject(env, "GET /fold-host HTTP/1.1\r\nHost: %s\r\n\tevil.localhost\r\n\r\n" % env.host,
           400, "bad_request", [b"/fold-host"])


def test_whitespace_before_first_header(env):
    reject(env, "GET /ws-first HTTP/1.1\r\n Host: %s\r\n\r\n" % env.host, 400, "bad_request", [b"/ws-first"])


@pytest.mark.parametrize("where", ["request_line", "header", "end_of_head", "everywhere"])
def test_bare_lf(env, where):
    lines = ["GET /bare-lf HTTP/1.1", "Host: %s" % env.host, "X-A: a", "", ""]
    seps = {"request_line": ["\n", "\r\n", "\r\n", "\r\n"],
            "header": ["\r\n", "\r\n", "\n", "\r\n"],
            "end_of_head": ["\r\n", "\r\n", "\r\n", "\n"],
            "everywhere": ["\n", "\n", "\n", "\n"]}[where]
    data = "".join(line + sep for line, sep in zip(lines, seps))
    reject(env, data + smuggled(env), 400, "bad_request", [b"/bare-lf", SMUG])


@pytest.mark.parametrize("where", ["request_line", "header_value", "header_end"])
def test_bare_cr(env, where):
    data = {
        "request_line": "GET /bare-cr HTTP/1.1\rHost: %s\r\n\r\n",
        "header_value": "GET /bare-cr HTTP/1.1\r\nHost: %s\r\nX-A: a\rX-B: b\r\n\r\n",
        "header_end": "GET /bare-cr HTTP/1.1\r\nHost: %s\r\nX-A: a\r\r\n\r\n",
    }[where] % env.host
    reject(env, data, 400, "bad_request", [b"/bare-cr"])


def test_nul_in_header_value(env):
    reject(env, "GET /nul HTTP/1.1\r\nHost: %s\r\nX-A: a\x00b\r\n\r\n" % env.host, 400, "bad_request", [b"/nul"])


def test_nul_in_host(env):
    reject(env, "GET /nul-host HTTP/1.1\r\nHost: %s\x00.evil\r\n\r\n" % env.host, 400, "bad_request", [b"/nul-host"])


@pytest.mark.parametrize("ctl", ["\x01", "\x7f", "\x1b"])
def test_control_char_in_header_value(env, ctl):
    reject(env, "GET /ctl HTTP/1.1\r\nHost: %s\r\nX-A: a%sb\r\n\r\n" % (env.host, ctl), 400, "bad_request", [b"/ctl"])


@pytest.mark.parametrize("line", ["Host : %s", "Host\t: %s", "X A: b\r\nHost: %s", ": x\r\nHost: %s",
                                  "X-A\x00: b\r\nHost: %s", "X-(A): b\r\nHost: %s"])
def test_invalid_header_name(env, line):
    reject(env, ("GET /hname HTTP/1.1\r\n" + line + "\r\n\r\n") % env.host, 400, "bad_request", [b"/hname"])


@pytest.mark.parametrize("line", ["G(ET /m HTTP/1.1", "GET\x00 /m HTTP/1.1", "G\tET /m HTTP/1.1",
                                  " GET /m HTTP/1.1", "GET  /m HTTP/1.1", "GET /m  HTTP/1.1",
                                  "GET /m HTTP/1.1 ", "GET /m\x7f HTTP/1.1", "GET /m#frag HTTP/1.1",
                                  "\r\nGET /m HTTP/1.1", "GET /m http/1.1", "GET /m HTTP/1.10",
                                  "GET /m HTTP/1", "GET m HTTP/1.1", "GET * HTTP/1.1"])
def test_invalid_request_line(env, line):
    reject(env, "%s\r\nHost: %s\r\n\r\n" % (line, env.host), 400, "bad_request", [b"/m"])


# ---------------------------------------------------------------------------
# versions


def test_http09(env):
    reject(env, "GET /h09\r\n", 505, "bad_version", [b"/h09"])


def test_http2_prior_knowledge_preface(env):
    reject(env, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x12\x04\x00\x00\x00\x00\x00",
           505, "bad_version", [b"PRI"])


@pytest.mark.parametrize("version", ["HTTP/1.2", "HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/9.9"])
def test_unsupported_version(env, version):
    reject(env, "GET /ver %s\r\nHost: %s\r\n\r\n" % (version, env.host), 505, "bad_version", [b"/ver"])


# ---------------------------------------------------------------------------
# Host and the request target


def test_host_missing_http11(env):
    reject(env, "GET /nohost HTTP/1.1\r\nX-Tunnel-Id: app\r\n\r\n", 400, "bad_request", [b"/nohost"])


def test_host_duplicated(env):
    reject(env, "GET /duphost HTTP/1.1\r\nHost: %s\r\nHost: other.localhost:%d\r\n\r\n" % (env.host, env.port),
           400, "bad_request", [b"/duphost"])


def test_host_duplicated_same_value(env):
    reject(env, "GET /duphost2 HTTP/1.1\r\nHost: %s\r\nHost: %s\r\n\r\n" % (env.host, env.host),
           400, "bad_request", [b"/duphost2"])


@pytest.mark.parametrize("host", ["app.localhost/evil", "user@app.localhost", "app .localhost", "app.localhost?x",
                                  "app.localhost#x", "app.localhost\\x"])
def test_host_invalid(env, host):
    reject(env, "GET /badhost HTTP/1.1\r\nHost: %s\r\n\r\n" % host, 400, "bad_request", [b"/badhost"])


def test_absolute_form_disagreeing_with_host(env):
    reject(env, "GET http://other.localhost:%d/abs HTTP/1.1\r\nHost: %s\r\n\r\n" % (env.port, env.host),
           400, "bad_request", [b"/abs"])


def test_absolute_form_host_names_another_tunnel(env):
    # The target names the tunnel, Host another one: never route on either.
    reject(env, "GET http://%s/abs2 HTTP/1.1\r\nHost: evil.localhost:%d\r\n\r\n" % (env.host, env.port),
           400, "bad_request", [b"/abs2"])


def test_absolute_form_with_userinfo(env):
    reject(env, "GET http://user@%s/abs3 HTTP/1.1\r\nHost: %s\r\n\r\n" % (env.host, env.host),
           400, "bad_request", [b"/abs3"])


def test_absolute_form_agreeing_with_host_is_served(env):
    mark = env.origin.mark()
    with RawConn(env.port) as c:
        c.send("GET http://%s/abs-ok?q=1 HTTP/1.1\r\nHost: %s\r\n\r\n" % (env.host, env.host))
        r = c.read_response()
        assert r.status == 200, r
        # origin-form towards the service (RFC 9112 §3.2.1)
        assert r.json()["target"] == "/abs-ok?q=1", r
        # and the connection stays usable
        r = c.request("GET", "/abs-next", env.host)
        assert r.status == 200 and r.json()["target"] == "/abs-next", r
    assert [q["target"] for q in env.origin.requests(mark)] == ["/abs-ok?q=1", "/abs-next"]


def test_absolute_form_without_path_is_served(env):
    with RawConn(env.port) as c:
        c.send("GET http://%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (env.host, env.host))
        r = c.read_response()
    assert r.status == 200 and r.json()["target"] == "/", r


def test_connect_method(env):
    reject(env, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (env.host, env.host), 405, "bad_request",
           [b"CONNECT"])


def test_connect_with_path_target(env):
    reject(env, "CONNECT /conn HTTP/1.1\r\nHost: %s\r\n\r\n" % env.host, 400, "bad_request", [b"/conn"])


# ---------------------------------------------------------------------------
# limits


def test_header_count_at_limit_is_served(env):
    # Host plus MAX_HEADERS - 1 fields: exactly at limits.max_headers.
    hdrs = [("X-H%d" % i, "v") for i in range(MAX_HEADERS - 1)]
    with RawConn(env.port) as c:
        r = c.request("GET", "/count-ok", env.host, headers=hdrs)
    assert r.status == 200, r


def test_header_count_over_limit_431(env):
    hdrs = "".join("X-H%d: v\r\n" % i for i in range(MAX_HEADERS))
    reject(env, "GET /count HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (env.host, hdrs), 431, "header_too_large",
           [b"/count"])


def test_many_tiny_headers_431(env):
    hdrs = "a:\r\n" * 5000
    reject(env, "GET /tiny HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (env.host, hdrs), 431, "header_too_large", [b"/tiny"])


def _head_of_size(env, target, size):
    start = "GET %s HTTP/1.1\r\nHost: %s\r\nX-Pad: " % (target, env.host)
    pad = size - len(start) - 4
    return start + "p" * pad + "\r\n\r\n"


def test_head_at_max_header_bytes_is_served(env):
    data = _head_of_size(env, "/size-ok", MAX_HEADER_BYTES)
    assert len(data) == MAX_HEADER_BYTES
    with RawConn(env.port) as c:
        c.send(data)
        r = c.read_response()
    assert r.status == 200 and r.json()["target"] == "/size-ok", r


def test_head_over_max_header_bytes_431(env):
    data = _head_of_size(env, "/size", MAX_HEADER_BYTES + 1)
    reject(env, data, 431, "header_too_large", [b"/size"])


def test_endless_head_431_without_waiting_for_timeout(env):
    # No blank line ever: the relay must answer once the limit is crossed,
    # not at header_timeout (5 s here).
    t0 = time.monotonic()
    data = "GET /endless HTTP/1.1\r\nHost: %s\r\n" % env.host + "X-A: b\r\n" * 5000
    reject(env, data, 431, "header_too_large", [b"/endless"])
    assert time.monotonic() - t0 < wait(4)


def test_endless_request_line_431(env):
    reject(env, "GET /" + "a" * (MAX_HEADER_BYTES * 3), 431, "header_too_large", [b"/aaaa"])


# ---------------------------------------------------------------------------
# chunked bodies: the head is valid and forwarded, the body is not


def chunked_post(env, target, body):
    return "POST %s HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n%s" % (target, env.host, body)


@pytest.mark.parametrize("size", ["10000000000000000", "fffffffffffffffff", "00000000000000005",
                                  "1000000000000000"])
def test_oversized_chunk_size(env, size):
    body = "%s\r\nhello\r\n0\r\n\r\n" % size + smuggled(env)
    reject(env, chunked_post(env, "/bigchunk", body), 400, "bad_request", [SMUG], head_forwarded=True)


def test_chunk_extension_over_4096(env):
    body = "5;" + "e" * 5000 + "\r\nhello\r\n0\r\n\r\n" + smuggled(env)
    reject(env, chunked_post(env, "/ext", body), 400, "bad_request", [SMUG], head_forwarded=True)


def test_chunk_extension_many_small(env):
    body = "5" + ";a=b" * 2000 + "\r\nhello\r\n0\r\n\r\n" + smuggled(env)
    reject(env, chunked_post(env, "/ext2", body), 400, "bad_request", [SMUG], head_forwarded=True)


def test_chunk_extension_under_limit_is_served(env):
    body = "5;" + "e" * 1000 + "\r\nhello\r\n0\r\n\r\n"
    with RawConn(env.port) as c:
        c.send(chunked_post(env, "/ext-ok", body))
        r = c.read_response()
    assert r.status == 200, r
    assert r.json()["body_length"] == 5, r


@pytest.mark.parametrize("size_line", ["5g", "-5", "0x5", " 5", "5 ", "+5", "5\x00", "", "5;a\x00b", "5;a\nb"])
def test_invalid_chunk_size_line(env, size_line):
    body = size_line + "\r\nhello\r\n0\r\n\r\n" + smuggled(env)
    reject(env, chunked_post(env, "/badsize", body), 400, "bad_request", [SMUG], head_forwarded=True)


def test_chunk_size_bare_lf(env):
    body = "5\nhello\r\n0\r\n\r\n" + smuggled(env)
    reject(env, chunked_post(env, "/lfsize", body), 400, "bad_request", [SMUG], head_forwarded=True)


@pytest.mark.parametrize("after", ["XX", "\n", "\r", "\rX", "0\r\n\r\n"])
def test_missing_crlf_after_chunk_data(env, after):
    # "5\r\nhello" then not CRLF: a server that skips two bytes blindly
    # would read the smuggled request as the next one.
    body = "5\r\nhello" + after + "0\r\n\r\n" + smuggled(env)
    reject(env, chunked_post(env, "/nocrlf", body), 400, "bad_request", [SMUG], head_forwarded=True)


def test_chunk_longer_than_its_size(env):
    body = "3\r\nhello\r\n0\r\n\r\n" + smuggled(env)
    reject(env, chunked_post(env, "/long", body), 400, "bad_request", [SMUG], head_forwarded=True)


@pytest.mark.parametrize("trailer", [" folded: x\r\n", "X-A: a\nX-B: b\r\n", "X A: b\r\n", "X-A: a\x00\r\n"])
def test_invalid_trailer(env, trailer):
    body = "5\r\nhello\r\n0\r\n" + trailer + "\r\n" + smuggled(env)
    reject(env, chunked_post(env, "/trailer", body), 400, "bad_request", [SMUG], head_forwarded=True)


def test_bad_chunk_in_a_later_packet(env):
    # The first chunks pass (and are forwarded); the bad one arrives later.
    mark = env.origin.mark()
    with RawConn(env.port) as c:
        c.send(chunked_post(env, "/later", "5\r\nhello\r\n"))
        time.sleep(0.3)
        c.send("zz\r\nhello\r\n0\r\n\r\n" + smuggled(env))
        r = c.read_response()
        assert_error(r, 400, "bad_request")
        assert_closed(c)
    env.sentinel()
    time.sleep(0.2)
    assert SMUG not in env.origin.received(mark)
    assert [q["target"] for q in env.origin.requests(mark)][:-1] == [], env.origin.requests(mark)


# ---------------------------------------------------------------------------
# pipelining: what the relay frames is what the origin frames


def test_valid_then_bad_on_one_connection(env):
    with RawConn(env.port) as c:
        r = c.request("GET", "/first", env.host)
        assert r.status == 200 and r.json()["target"] == "/first", r
        body = "0\r\n\r\n" + smuggled(env)
        c.send("POST /second HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%s"
               % (env.host, len(body), body))
        assert_error(c.read_response(), 400, "bad_request")
        assert_closed(c)
    got = env.origin.received()
    assert SMUG not in got and b"/second" not in got


def test_valid_and_bad_pipelined_in_one_send(env):
    mark = env.origin.mark()
    body = "0\r\n\r\n" + smuggled(env)
    with RawConn(env.port) as c:
        c.send(build_request("GET", "/p1", env.host)
               + ("POST /p2 HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n%s"
                  % (env.host, len(body), body)).encode())
        r1 = c.read_response()
        assert r1.status == 200 and r1.json()["target"] == "/p1", r1
        assert_error(c.read_response(), 400, "bad_request")
        assert_closed(c)
    time.sleep(0.2)
    assert [q["target"] for q in env.origin.requests(mark)] == ["/p1"]
    got = env.origin.received(mark)
    assert SMUG not in got and b"/p2" not in got


def test_bad_version_pipelined_after_valid(env):
    with RawConn(env.port) as c:
        c.send(build_request("GET", "/v1", env.host) + b"GET /v2 HTTP/1.2\r\nHost: " + env.host.encode() + b"\r\n\r\n")
        r1 = c.read_response()
        assert r1.status == 200, r1
        assert_error(c.read_response(), 505, "bad_version")
        assert_closed(c)
    assert b"/v2" not in env.origin.received()


def test_content_length_body_that_looks_like_a_request(env):
    # Control: the same bytes framed by Content-Length are a body, for the
    # relay and the origin alike: one request, no smuggled one.
    mark = env.origin.mark()
    s = smuggled(env).encode()
    with RawConn(env.port) as c:
        r = c.request("POST", "/carrier", env.host, body=s)
        assert r.status == 200 and r.json() == {"n": r.json()["n"], "method": "POST", "target": "/carrier",
                                                "body_length": len(s)}, r
        r = c.request("GET", "/after-carrier", env.host)
        assert r.status == 200 and r.json()["target"] == "/after-carrier", r
    assert [q["target"] for q in env.origin.requests(mark)] == ["/carrier", "/after-carrier"]


def test_chunked_body_that_looks_like_a_request(env):
    mark = env.origin.mark()
    s = smuggled(env).encode()
    with RawConn(env.port) as c:
        c.send(b"POST /carrier2 HTTP/1.1\r\nHost: " + env.host.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % len(s) + s + b"\r\n0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["body_length"] == len(s), r
    assert [q["target"] for q in env.origin.requests(mark)] == ["/carrier2"]


def test_connection_close_stops_the_pipeline(env):
    mark = env.origin.mark()
    with RawConn(env.port) as c:
        c.send(build_request("GET", "/closing", env.host, [("Connection", "close")]) + smuggled(env).encode())
        r = c.read_response()
        assert r.status == 200, r
        assert_closed(c)
    time.sleep(0.2)
    assert [q["target"] for q in env.origin.requests(mark)] == ["/closing"]
    assert SMUG not in env.origin.received(mark)


def test_upgrade_refused_by_origin_then_pipelined_request(env):
    # The origin answers 200, not 101: the bytes after the head are the next
    # request, for the relay as for the origin (no blind tunnel).
    mark = env.origin.mark()
    with RawConn(env.port) as c:
        c.send(build_request("GET", "/upg", env.host, [("Connection", "Upgrade"), ("Upgrade", "websocket"),
                                                       ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                                       ("Sec-WebSocket-Version", "13")])
               + build_request("GET", "/after-upg", env.host))
        r1 = c.read_response()
        r2 = c.read_response()
    assert (r1.status, r2.status) == (200, 200), (r1, r2)
    assert r2.json()["target"] == "/after-upg"
    assert [q["target"] for q in env.origin.requests(mark)] == ["/upg", "/after-upg"]


def test_expect_continue_with_cl_te(env):
    body = "0\r\n\r\n" + smuggled(env)
    r = reject(env, "POST /exp HTTP/1.1\r\nHost: %s\r\nExpect: 100-continue\r\nContent-Length: %d\r\n"
               "Transfer-Encoding: chunked\r\n\r\n%s" % (env.host, len(body), body), 400, "bad_request",
               [SMUG, b"/exp"])
    assert r.status != 100


def test_connection_nominated_forwarding_headers_survive(env):
    # RFC 9110 §7.6.1: an intermediary removes the fields the client's
    # Connection header names, and that header itself, before forwarding.
    # A relay that forwards "Connection: X-Forwarded-For" lets the next
    # proxy (nginx in front of the service, say) drop the X-Forwarded-For
    # and X-Tunnel-Id the relay added, so the service sees neither the
    # client's address nor the tunnel.
    with RawConn(env.port) as c:
        r = c.request("GET", "/hop", env.host, headers=[
            ("Connection", "keep-alive, X-Forwarded-For, X-Tunnel-Id, X-Forwarded-Host, X-Forwarded-Proto")])
        assert r.status == 200, r
    req = [q for q in env.origin.requests() if q["target"] == "/hop"][0]
    names = {k.lower() for k, v in req["headers"]}
    assert {"x-forwarded-for", "x-tunnel-id", "x-forwarded-host", "x-forwarded-proto"} <= names, req["headers"]
    nominated = set()
    for k, v in req["headers"]:
        if k.lower() == "connection":
            nominated |= {t.strip().lower() for t in v.split(",")}
    assert not nominated & {"x-forwarded-for", "x-tunnel-id", "x-forwarded-host", "x-forwarded-proto"}, \
        req["headers"]


def test_many_hostile_connections_at_once(env):
    # A burst of hostile requests on parallel connections: every one is
    # answered, the workers live, and the tunnel still serves.
    import threading
    cases = [
        ("POST /b1 HTTP/1.1\r\nHost: %s\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("GET /b2 HTTP/1.1\nHost: %s\n\n", 400),
        ("GET /b3 HTTP/2.0\r\nHost: %s\r\n\r\n", 505),
        ("GET /b4 HTTP/1.1\r\nHost: %s\r\nX: a\x00\r\n\r\n", 400),
    ]
    results = []
    lock = threading.Lock()

    def one(i):
        data, status = cases[i % len(cases)]
        try:
            with RawConn(env.port, timeout=wait(10)) as c:
                c.send((data % env.host).encode())
                r = c.read_response()
                ok = r.status == status and c.closed_by_peer(wait(5))
        except (OSError, AssertionError) as e:
            ok = repr(e)
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(wait(30))
    assert results.count(True) == 200, [r for r in results if r is not True][:5]
    env.sentinel()
    got = env.origin.received()
    assert [m for m in (b"/b1", b"/b2", b"/b3", b"/b4") if m in got] == []


def test_request_after_linger_does_not_leak(env):
    # After an error the relay half-closes and drains what the client still
    # sends; none of that may be parsed or forwarded.
    mark = env.origin.mark()
    with RawConn(env.port) as c:
        c.send("GET /lin HTTP/1.1\r\nHost: %s\r\nX: a\x00\r\n\r\n" % env.host)
        assert_error(c.read_response(), 400, "bad_request")
        try:
            for _ in range(5):
                c.send(smuggled(env))
                time.sleep(0.05)
        except OSError:
            pass
        c.sock.settimeout(wait(5))
        try:
            rest = c.sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            rest = b""
        assert rest == b"", rest
    time.sleep(0.2)
    assert SMUG not in env.origin.received(mark)


@pytest.mark.parametrize("framing,nominate", [
    ("cl", "Content-Length"), ("cl", "keep-alive, content-length"), ("te", "Transfer-Encoding"),
    ("te", "TRANSFER-ENCODING, close"), ("none", "Host"), ("cl", "Content-Length, Host, Transfer-Encoding")])
def test_connection_cannot_strip_framing_or_host(env, framing, nominate):
    # Dropping what Connection nominates must never touch the fields that
    # frame the message or name its host: a relay that frames the body by
    # Content-Length and then forwards the head without it hands the body
    # to the origin as the next request (here GET /SMUGGLED, with whatever
    # X-Forwarded-For / X-Tunnel-Id the attacker wrote). Either answer 400,
    # or forward the head with its framing and Host intact.
    s = smuggled(env).replace("\r\n\r\n", "\r\nX-Forwarded-For: 6.6.6.6\r\nX-Tunnel-Id: evil\r\n\r\n").encode()
    head = "POST /carrier HTTP/1.1\r\nHost: %s\r\nConnection: %s\r\n" % (env.host, nominate)
    if framing == "cl":
        data = (head + "Content-Length: %d\r\n\r\n" % len(s)).encode() + s
    elif framing == "te":
        data = (head + "Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(s)).encode() + s + b"\r\n0\r\n\r\n"
    else:
        data = (head + "\r\n").encode()
        s = b""
    mark = env.origin.mark()
    with RawConn(env.port, timeout=wait(10)) as c:
        c.send(data)
        r = c.read_response()
    env.sentinel()
    time.sleep(0.2)
    reqs = env.origin.requests(mark)
    assert not [q for q in reqs if "SMUGGLED" in q["target"]], "smuggled request reached the origin: %r" % reqs
    if r.status != 200:
        assert_error(r, 400, "bad_request")
    else:
        assert r.json()["body_length"] == len(s), r
    carriers = [q for q in reqs if q["target"] == "/carrier"]
    if r.status == 200:
        assert len(carriers) == 1 and carriers[0]["body"] == s, reqs
        hosts = [v for k, v in carriers[0]["headers"] if k.lower() == "host"]
        assert hosts == [env.host], carriers[0]["headers"]
    else:
        assert carriers == [], reqs
