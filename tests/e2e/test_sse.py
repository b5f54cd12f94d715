"""Server-sent events pass through without buffering: the first event
arrives while the origin is still holding the stream open (released only by
a second request), then the rest, then the end of the stream."""

import uuid

import pytest

from harness import PeerClosed, RawConn

# The whole module is in the valgrind subset (make test-valgrind).
pytestmark = pytest.mark.valgrind


class StreamReader:
    """Decodes a response body incrementally (chunked or close-delimited)."""

    def __init__(self, conn, chunked):
        self.c = conn
        self.chunked = chunked
        self.data = bytearray()
        self.done = False

    def step(self):
        if not self.chunked:
            if not self.c.buf:
                try:
                    self.c._fill()  # bounded by the socket timeout
                except PeerClosed:
                    self.done = True
            self.data += self.c.buf
            self.c.buf.clear()
            return
        size = int(self.c.read_until(b"\r\n", 4096).split(b";")[0], 16)
        if size == 0:
            while self.c.read_until(b"\r\n", 65536) != b"\r\n":
                pass
            self.done = True
            return
        self.data += self.c.read_exact(size)
        assert self.c.read_exact(2) == b"\r\n"

    def until(self, marker):
        while marker not in self.data:
            assert not self.done, (marker, bytes(self.data))
            self.step()  # bounded by the socket timeout

    def to_end(self):
        while not self.done:
            self.step()


def _sse(tunnel, c, close):
    key = uuid.uuid4().hex
    q = "/sse?id=%s%s" % (key, "&close=1" if close else "")
    c.send("GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n" % (q, tunnel.host))
    version, status, reason, headers = c.read_head()
    hdr = {k.lower(): v for k, v in headers}
    assert status == 200, (status, headers)
    assert hdr.get("content-type") == "text/event-stream"
    assert "content-length" not in hdr, headers
    chunked = "chunked" in hdr.get("transfer-encoding", "").lower()
    s = StreamReader(c, chunked)
    # the first event, while the origin still holds the stream open
    s.until(b"data: first\n\n")
    assert b"second" not in s.data
    with RawConn(tunnel.port) as c2:
        r = c2.request("GET", "/sse-release?id=%s" % key, tunnel.host)
        assert r.status == 200, r
    s.to_end()
    assert bytes(s.data) == b"data: first\n\ndata: second\n\n"
    return chunked


def test_sse_chunked_stream(tunnel):
    with tunnel.raw() as c:
        assert _sse(tunnel, c, close=False), "expected a chunked stream"
        # the connection goes on after the stream's last chunk
        r = c.request("GET", "/echo?after=sse", tunnel.host)
        assert r.status == 200, r
        assert r.json()["path"] == "/echo?after=sse"


def test_sse_close_delimited_stream(tunnel):
    with tunnel.raw() as c:
        _sse(tunnel, c, close=True)
