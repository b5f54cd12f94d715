"""The agent keeps its connection to the service across end-user connections
(docs/PROTOCOL.md §3, RST idle): an end user's `Connection: close` is not
passed on (the relay closes that end user's connection itself), and a
service connection that a kept one turns out to be closed on is replaced
with the request sent again, so the end user sees nothing of it.
"""

import hashlib
import socket
import threading

import pytest

from harness import RawConn, wait, worker_deaths


class ConnOrigin:
    """A raw HTTP/1.1 origin on 127.0.0.1 that answers each request with the
    number of the TCP connection it came on, the Connection header it saw
    and the body's sha256. one_per_conn: after its first answer a connection
    is kept open but closed, unanswered, when a second request arrives (a
    keep-alive connection the server dropped just as it was reused).
    idle_close: an answered connection idle this long is closed (a server's
    keep-alive timeout)."""

    def __init__(self, one_per_conn=False, idle_close=None):
        self.one_per_conn = one_per_conn
        self.idle_close = idle_close   # seconds an answered connection may sit idle
        self.lock = threading.Lock()
        self.conns = 0
        self.dropped = 0
        self.seen = []   # (conn, Connection header or None)
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                n = self.conns
            threading.Thread(target=self._serve, args=(c, n), daemon=True).start()

    def _serve(self, c, n):
        c.settimeout(wait(20))
        buf = b""
        answered = 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    b = c.recv(65536)
                    if not b:
                        return
                    buf += b
                head, _, buf = buf.partition(b"\r\n\r\n")
                if self.one_per_conn and answered:
                    with self.lock:
                        self.dropped += 1
                    return
                lines = head.decode("latin-1").split("\r\n")
                hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                length = int(hdrs.get("content-length", "0"))
                while len(buf) < length:
                    b = c.recv(65536)
                    if not b:
                        return
                    buf += b
                body, buf = buf[:length], buf[length:]
                with self.lock:
                    self.seen.append((n, hdrs.get("connection")))
                out = ("conn=%d connection=%s sha=%s len=%d" % (n, hdrs.get("connection"),
                                                                hashlib.sha256(body).hexdigest(), len(body))).encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(out) + out)
                answered += 1
                if self.idle_close is not None:
                    c.settimeout(self.idle_close)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.stopping = True
        self.ls.close()


@pytest.fixture
def conn_origin():
    made = []

    def make(**kw):
        o = ConnOrigin(**kw)
        made.append(o)
        return o
    yield make
    for o in made:
        o.stop()


def close_request(relay, host, method="GET", body=b""):
    """One request with Connection: close on a fresh end-user connection;
    the relay must close that connection after the response."""
    with RawConn(relay.port, timeout=wait(15)) as c:
        hdrs = [("Connection", "close")]
        if body:
            hdrs.append(("Content-Type", "application/octet-stream"))
        r = c.request(method, "/x", host, headers=hdrs, body=body or None)
        assert c.closed_by_peer(wait(5)), "the relay kept a Connection: close connection open"
    return r


def test_close_requests_share_a_service_connection(relay, agent_factory, conn_origin):
    o = conn_origin()
    agent = agent_factory(relay, target=o.port, subdomain="reuse")
    host = relay.host(agent.id)
    for i in range(20):
        r = close_request(relay, host)
        assert r.status == 200, r
    # The end user's close is the relay's business: the service never saw it.
    assert [hdr for _, hdr in o.seen] == [None] * 20, o.seen
    # One request after another: the kept connection serves them (a few
    # new ones are fine; one per request is what this avoids).
    assert o.conns < 20, "a service connection per request (%d)" % o.conns
    assert worker_deaths(relay) == []


def test_kept_connection_closed_by_the_service_is_replaced(relay, agent_factory, conn_origin):
    o = conn_origin(one_per_conn=True)
    agent = agent_factory(relay, target=o.port, subdomain="dropper")
    host = relay.host(agent.id)
    body = bytes(range(256)) * 40
    sha = hashlib.sha256(body).hexdigest()
    for i in range(8):
        r = close_request(relay, host, "PUT", body)
        assert r.status == 200, r
        assert ("sha=%s len=%d" % (sha, len(body))) in r.text, r.text
    # Every request after the first met a kept connection that the service
    # then closed unanswered, and went again, whole, on a new one (PUT is
    # idempotent; a POST would not be sent twice, as with nginx).
    assert o.dropped >= 1, "no kept connection was reused"
    assert len(o.seen) == 8 and o.conns == 8, (o.seen, o.conns, o.dropped)
    assert worker_deaths(relay) == []


def test_keepalive_client_still_reuses_its_stream(relay, agent_factory, conn_origin):
    """Unchanged: requests of one keep-alive end-user connection go on one
    stream and one service connection; a final Connection: close request is
    answered and the end user's connection closed."""
    o = conn_origin()
    agent = agent_factory(relay, target=o.port, subdomain="ka")
    host = relay.host(agent.id)
    with RawConn(relay.port, timeout=wait(15)) as c:
        for i in range(5):
            r = c.request("GET", "/k%d" % i, host)
            assert r.status == 200, r
        r = c.request("GET", "/last", host, headers=[("Connection", "close")])
        assert r.status == 200, r
        assert c.closed_by_peer(wait(5))
    assert len({n for n, _ in o.seen}) == 1, o.seen


def test_post_is_not_sent_twice(relay, agent_factory, conn_origin):
    """A POST that meets a kept connection the service then closes
    unanswered is not replayed (the service may have acted on it): the end
    user gets the relay's 502, as behind nginx."""
    o = conn_origin(one_per_conn=True)
    agent = agent_factory(relay, target=o.port, subdomain="post")
    host = relay.host(agent.id)
    assert close_request(relay, host, "POST", b"one").status == 200
    r = close_request(relay, host, "POST", b"two")
    assert r.status == 502 and r.header("X-Ferry-Error") == "upstream_closed", r
    assert len(o.seen) == 1 and o.dropped == 1, (o.seen, o.dropped)
    # The next one dials afresh.
    assert close_request(relay, host, "POST", b"three").status == 200


def test_close_is_said_in_the_response(relay, agent_factory, conn_origin):
    """The service was not told the end user asked to close; the relay says
    it in the final response (RFC 9112 §9.6), once, and only in the last
    one of a keep-alive connection."""
    o = conn_origin()
    agent = agent_factory(relay, target=o.port, subdomain="say")
    host = relay.host(agent.id)
    with RawConn(relay.port, timeout=wait(15)) as c:
        r1 = c.request("GET", "/a", host)
        r2 = c.request("GET", "/b", host, headers=[("Connection", "close")])
        assert c.closed_by_peer(wait(5))
    assert r1.status == 200 and r1.header("Connection") is None, r1
    assert r2.status == 200 and r2.header_all("Connection") == ["close"], r2
    assert "connection=None" in r2.text, r2.text


def test_kept_connections_the_service_times_out_are_dropped(relay, agent_factory, conn_origin):
    """Several kept connections, all closed by the service's keep-alive
    timeout while idle: the agent drops them (any order), and the next
    requests dial afresh with no error."""
    from concurrent.futures import ThreadPoolExecutor
    import time
    o = conn_origin(idle_close=0.2)
    agent = agent_factory(relay, target=o.port, subdomain="timeout")
    host = relay.host(agent.id)
    for rnd in range(3):
        with ThreadPoolExecutor(8) as ex:
            got = list(ex.map(lambda _: close_request(relay, host).status, range(24)))
        assert got == [200] * 24, got
        time.sleep(0.5)   # past the service's timeout, under the agent's 1 s
    assert len(o.seen) == 72
    assert worker_deaths(relay) == []
