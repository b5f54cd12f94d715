"""Request and response bodies through the tunnel: chunked and
Content-Length uploads, big downloads; checksums end to end."""

import hashlib
import os
import random

import pytest

from origin import pattern_sha256

# The whole module is in the valgrind subset (make test-valgrind).
pytestmark = pytest.mark.valgrind


def test_chunked_upload_raw_random_chunks(tunnel):
    rng = random.Random(1234)
    data = os.urandom(5 << 20)
    with tunnel.raw() as c:
        c.send("POST /upload HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % tunnel.host)
        i = 0
        first = True
        while i < len(data):
            n = rng.randint(1, 65536)
            piece = data[i:i + n]
            ext = b";note=x" if first else b""
            first = False
            c.send(b"%x%s\r\n" % (len(piece), ext) + piece + b"\r\n")
            i += len(piece)
        c.send(b"0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        assert r.json() == {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}
        # the relay found the end of the chunked body: the connection goes on
        r = c.request("GET", "/echo?after=chunked", tunnel.host)
        assert r.status == 200, r
        assert r.json()["path"] == "/echo?after=chunked"


def test_chunked_upload_tiny_chunks_split_sends(tunnel):
    data = bytes(range(256)) * 40
    with tunnel.raw() as c:
        wire = b"POST /upload HTTP/1.1\r\nHost: " + tunnel.host.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        for i in range(0, len(data), 7):
            piece = data[i:i + 7]
            wire += b"%x\r\n" % len(piece) + piece + b"\r\n"
        wire += b"0\r\nX-Trailer: t\r\n\r\n"
        for i in range(0, len(wire), 1500):  # head and chunk lines split across segments
            c.send(wire[i:i + 1500])
        r = c.read_response()
        assert r.status == 200, r
        assert r.json() == {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}


def test_chunked_upload_requests_generator(tunnel):
    rng = random.Random(99)
    pieces = [os.urandom(rng.randint(1, 200000)) for _ in range(40)]
    h = hashlib.sha256(b"".join(pieces)).hexdigest()
    r = tunnel.post("/upload", data=iter(pieces))
    assert r.status_code == 200, r.text
    assert r.json() == {"sha256": h, "length": sum(map(len, pieces))}


def test_content_length_upload(tunnel):
    data = os.urandom(5 << 20)
    r = tunnel.post("/upload", data=data)
    assert r.status_code == 200, r.text
    assert r.json() == {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}


def test_empty_body_post(tunnel):
    r = tunnel.post("/upload", data=b"")
    assert r.status_code == 200, r.text
    assert r.json()["length"] == 0


def _download(tunnel, path):
    h = hashlib.sha256()
    n = 0
    with tunnel.get(path, stream=True) as r:
        assert r.status_code == 200, r.text
        for piece in r.iter_content(65536):
            h.update(piece)
            n += len(piece)
        return r, n, h.hexdigest()


def test_download_20mib_sha256(tunnel):
    size = 20 << 20
    r, n, sha = _download(tunnel, "/download?size=%d" % size)
    assert r.headers.get("Content-Length") == str(size)
    assert n == size
    assert sha == pattern_sha256(size)


def test_download_chunked_sha256(tunnel):
    size = (8 << 20) + 12345
    r, n, sha = _download(tunnel, "/download?size=%d&chunked=1" % size)
    assert n == size
    assert sha == pattern_sha256(size)


def test_upload_and_download_through_path_route(tunnel):
    data = os.urandom(1 << 20)
    host = "127.0.0.1:%d" % tunnel.port
    r = tunnel.post("/t/app/upload", host=host, data=data)
    assert r.status_code == 200, r.text
    assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()
    r = tunnel.get("/t/app/download?size=3000000", host=host)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == pattern_sha256(3000000)
