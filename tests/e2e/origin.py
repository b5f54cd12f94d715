#!/usr/bin/python3
"""
origin.py: the local service the e2e tests expose through a ferry tunnel.

A plain HTTP/1.1 server (http.server.ThreadingHTTPServer, protocol_version
"HTTP/1.1", keep-alive, daemon threads) plus a WebSocket echo server on a port
of its own. Run as a script, it binds both on 127.0.0.1 and prints one line
"ORIGIN http=PORT ws=PORT" on stdout once both listen; the test fixture reads
that line and later stops the process by its pid.

HTTP endpoints (any other path answers as /echo):
  /echo              JSON {method, path (raw request target, query included),
                     version, headers: [[name, value], ...] (duplicates kept, in
                     order), body_length, body_sha256}; HEAD answers the same
                     headers without a body
  /upload            reads a Content-Length or chunked body (chunked decoded
                     here, extensions and trailers accepted), answers JSON
                     {sha256, length}
  /slowupload?pause=S&chunk=N&delay=D
                     sleeps S s, then reads the body N bytes at a time (default
                     64 KiB) sleeping D s (default 0.001) after each; answers
                     as /upload
  /slow?s=N          sleeps N s, then answers as /echo
  /sse?id=X[&close=1]
                     text/event-stream: sends "data: first\n\n", then waits until
                     /sse-release?id=X is requested (at most 120 s), then sends
                     "data: second\n\n" and ends the stream (chunked, or
                     close-delimited with close=1)
  /sse-release?id=X  releases the stream /sse?id=X (before or after it started)
  /download?size=N[&chunked=1]
                     N bytes of the deterministic pattern (pattern_chunks),
                     with Content-Length, or chunked
  /status/N          an empty answer with status N (204 and 304 without
                     Content-Length)

WebSocket server: echoes every message (text as text, binary as binary), no
size limit.

The byte pattern is shared with the tests (import origin): block i of
PATTERN_BLOCK bytes is b"FERRYBLK" + i as u64 big-endian + a fixed
pseudo-random tail, so that any lost, duplicated, reordered or altered byte
changes the sha256 of the stream.
"""

import argparse
import asyncio
import hashlib
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATTERN_BLOCK = 1 << 20
_PATTERN_TAIL = hashlib.shake_128(b"ferry-e2e-pattern").digest(PATTERN_BLOCK)[16:]


def pattern_block(i):
    """Block i of the download/upload pattern (PATTERN_BLOCK bytes)."""
    return b"FERRYBLK" + i.to_bytes(8, "big") + _PATTERN_TAIL


def pattern_chunks(size):
    """Yield the first size bytes of the pattern, a block (or less) at a time."""
    i = 0
    left = size
    while left > 0:
        b = pattern_block(i)
        if left < len(b):
            b = b[:left]
        yield b
        left -= len(b)
        i += 1


def pattern_sha256(size):
    h = hashlib.sha256()
    for b in pattern_chunks(size):
        h.update(b)
    return h.hexdigest()


class BadRequest(Exception):
    pass


_sse_lock = threading.Lock()
_sse_events = {}


def sse_event(key):
    with _sse_lock:
        ev = _sse_events.get(key)
        if ev is None:
            ev = _sse_events[key] = threading.Event()
        return ev


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ferry-e2e-origin"

    def version_string(self):
        return self.server_version
    timeout = 300  # idle keep-alive connections end eventually
    disable_nagle_algorithm = True  # head and body are separate writes

    def log_message(self, fmt, *args):
        pass

    def end_headers(self):
        self.send_header("X-Origin", "e2e")  # lets tests see response headers pass back
        super().end_headers()

    # ---- body reading -------------------------------------------------

    def body_chunks(self, piece=65536):
        """Yield the request body (Content-Length or chunked) in pieces."""
        te = self.headers.get("Transfer-Encoding")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise BadRequest("unsupported transfer-encoding %r" % te)
            while True:
                line = self.rfile.readline(4096)
                if not line.endswith(b"\n"):
                    raise BadRequest("truncated chunk size line")
                size_s = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_s, 16)
                except ValueError:
                    raise BadRequest("bad chunk size %r" % size_s)
                if size == 0:
                    while True:  # trailers
                        t = self.rfile.readline(8192)
                        if not t.endswith(b"\n"):
                            raise BadRequest("truncated trailers")
                        if t in (b"\r\n", b"\n"):
                            return
                while size > 0:
                    data = self.rfile.read(min(size, piece))
                    if not data:
                        raise BadRequest("truncated chunk")
                    size -= len(data)
                    yield data
                crlf = self.rfile.readline(4)
                if crlf not in (b"\r\n", b"\n"):
                    raise BadRequest("chunk not followed by CRLF")
        cl = self.headers.get_all("Content-Length") or []
        if not cl:
            return
        if len(set(v.strip() for v in cl)) != 1:
            raise BadRequest("differing Content-Length")
        try:
            left = int(cl[0].strip())
        except ValueError:
            raise BadRequest("bad Content-Length")
        while left > 0:
            data = self.rfile.read(min(left, piece))
            if not data:
                raise BadRequest("truncated body")
            left -= len(data)
            yield data

    def digest_body(self, piece=65536, delay=0.0):
        h = hashlib.sha256()
        n = 0
        for data in self.body_chunks(piece):
            h.update(data)
            n += len(data)
            if delay:
                time.sleep(delay)
        return n, h.hexdigest()

    # ---- responses ----------------------------------------------------

    def send_bytes(self, status, body, ctype="application/octet-stream", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, obj, status=200):
        self.send_bytes(status, json.dumps(obj).encode(), "application/json")

    def write_chunk(self, data):
        self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")

    # ---- dispatch -----------------------------------------------------

    def dispatch(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        p = url.path
        try:
            if p == "/upload":
                n, sha = self.digest_body()
                return self.send_json({"sha256": sha, "length": n})
            if p == "/slowupload":
                time.sleep(float(q.get("pause", "0")))
                n, sha = self.digest_body(int(q.get("chunk", "65536")), float(q.get("delay", "0.001")))
                return self.send_json({"sha256": sha, "length": n})
            if p == "/slow":
                n, sha = self.digest_body()
                time.sleep(float(q.get("s", "1")))
                return self.echo(n, sha)
            if p == "/sse":
                self.digest_body()
                return self.sse(q.get("id", ""), q.get("close") == "1")
            if p == "/sse-release":
                self.digest_body()
                sse_event(q.get("id", "")).set()
                return self.send_bytes(200, b"released\n", "text/plain")
            if p == "/download":
                self.digest_body()
                return self.download(int(q.get("size", "0")), q.get("chunked") == "1")
            if p.startswith("/status/"):
                self.digest_body()
                code = int(p[len("/status/"):])
                self.send_response(code)
                if code == 304:
                    self.send_header("ETag", '"e2e"')
                if code not in (204, 304) and code >= 200:
                    self.send_header("Content-Length", "0")
                self.end_headers()
                return
            n, sha = self.digest_body()
            return self.echo(n, sha)
        except BadRequest as e:
            self.close_connection = True
            self.send_bytes(400, ("origin: %s\n" % e).encode(), "text/plain", [("Connection", "close")])

    def echo(self, n, sha):
        self.send_json({
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_length": n,
            "body_sha256": sha,
        })

    def sse(self, key, close):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        send = self.wfile.write if close else self.write_chunk
        send(b"data: first\n\n")
        self.wfile.flush()
        sse_event(key).wait(120)
        send(b"data: second\n\n")
        if not close:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def download(self, size, chunked):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD":
            return
        for b in pattern_chunks(size):
            if chunked:
                self.write_chunk(b)
            else:
                self.wfile.write(b)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = dispatch


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def start_http(port=0):
    srv = Server(("127.0.0.1", port), Handler)
    t = threading.Thread(target=srv.serve_forever, name="origin-http", daemon=True)
    t.start()
    return srv


def start_ws(port=0):
    """Start the WebSocket echo server in a thread of its own; return its port."""
    import websockets

    async def echo(ws, path=None):
        try:
            async for msg in ws:
                await ws.send(msg)
        except websockets.ConnectionClosed:
            pass

    ready = threading.Event()
    box = {}

    def run():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        srv = loop.run_until_complete(websockets.serve(
            echo, "127.0.0.1", port, max_size=None, max_queue=64,
            ping_interval=None, compression=None))
        box["port"] = srv.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, name="origin-ws", daemon=True).start()
    if not ready.wait(30):
        raise RuntimeError("websocket server did not start")
    return box["port"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--http-port", type=int, default=0)
    ap.add_argument("--ws-port", type=int, default=0)
    a = ap.parse_args()
    http = start_http(a.http_port)
    ws_port = start_ws(a.ws_port)
    print("ORIGIN http=%d ws=%d" % (http.server_address[1], ws_port), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
