"""Bulk bodies by splice(2): the relay moves an agent's DATA payload
socket -> pipe -> end user, and the agent the relay's DATA payload socket ->
pipe -> service, when the payload is not masked (the agent masks with the
all-zero key unless --random-mask). Every combination gives the same bytes:
relay `splice: true|false`, agent with and without --random-mask; slow
readers, end users that vanish mid-body and parallel transfers leave no
pipe behind beyond the small pool; `splice: false` makes no pipe at all.
Two tests are in the valgrind subset (pipes closed at exit, no fd left)."""

import hashlib
import os
import signal
import socket
import threading
import time

import pytest

from harness import DATA, OPEN, FakeAgent, frame, poll, wait
from origin import pattern_sha256

MIB = 1 << 20
POOL_FDS = 2 * 32  # common/pipe: up to 32 empty pipes kept per process


def pipe_fds(pid):
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("pipe:"):
                n += 1
        except OSError:
            pass  # closed while we looked
    return n


def relay_pipe_fds(relay):
    return sum(pipe_fds(p) for p in relay.pids() if p != relay.proc.pid)


def bytes_read(pid):
    """What the process has taken with read(2) and the like (rchar); splice
    moves bytes without it."""
    with open("/proc/%d/io" % pid) as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def download(t, size, read_pause=0.0, block=65536):
    """GET /download?size= over a raw socket; returns (status, sha256, length)."""
    with t.raw(timeout=wait(60)) as c:
        c.send("GET /download?size=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (size, t.host))
        version, status, reason, headers = c.read_head()
        hdr = {k.lower(): v for k, v in headers}
        assert hdr.get("content-length") == str(size), headers
        h = hashlib.sha256(c.buf)
        got = len(c.buf)
        c.buf.clear()
        while got < size:
            chunk = c.sock.recv(min(block, size - got))
            assert chunk, "the relay closed after %d of %d bytes" % (got, size)
            h.update(chunk)
            got += len(chunk)
            if read_pause:
                time.sleep(read_pause)
        return status, h.hexdigest(), got


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
@pytest.mark.parametrize("random_mask", [False, True], ids=["zero-key", "random-mask"])
def test_downloads_same_bytes_every_way(relay_factory, tunnel_factory, splice, random_mask):
    relay = relay_factory(splice=splice)
    t = tunnel_factory("bulk", relay=relay, args=["--random-mask"] if random_mask else [])
    sizes = [1, 4095, 65536 + 7, 3 * MIB + 11, 8 * MIB]
    results = {}

    def one(i, size):
        results[i] = download(t, size)

    threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(sizes * 2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(wait(120))
    for i, size in enumerate(sizes * 2):
        assert results.get(i) == (200, pattern_sha256(size), size), (i, size, results.get(i))
    # keep-alive goes on after spliced bodies, and requests still work
    r = t.get("/echo?after=bulk")
    assert r.status_code == 200 and r.json()["path"] == "/echo?after=bulk"


def test_slow_reader_holds_a_pipe_and_gets_every_byte(relay_factory, tunnel_factory):
    """An end user that stops reading: the relay's pipe for it fills (kernel
    memory, one per such connection) and the agent is held back by credit;
    when it reads again every byte arrives in order. With splice: false no
    pipe is ever made."""
    for splice in (True, False):
        relay = relay_factory(splice=splice)
        t = tunnel_factory("slow%d" % splice, relay=relay)
        base = relay_pipe_fds(relay)
        size = 24 * MIB
        with t.raw(timeout=wait(60)) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.send("GET /download?size=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (size, t.host))
            version, status, reason, headers = c.read_head()
            assert status == 200
            # not reading: the bytes in flight stop in the relay
            if splice:
                poll(lambda: relay_pipe_fds(relay) > base, wait(10), what="a pipe holding the stalled body")
            else:
                time.sleep(1.0)
                assert relay_pipe_fds(relay) == base, "splice: false made a pipe"
            h = hashlib.sha256(c.buf)
            got = len(c.buf)
            c.buf.clear()
            while got < size:
                chunk = c.sock.recv(262144)
                assert chunk
                h.update(chunk)
                got += len(chunk)
        assert (got, h.hexdigest()) == (size, pattern_sha256(size))
        if not splice:
            assert relay_pipe_fds(relay) == base


@pytest.mark.valgrind
def test_vanishing_readers_leave_no_pipes(relay_factory, tunnel_factory):
    """40 end users that close mid-download while their pipe holds bytes:
    those pipes are closed, not pooled; the worker's pipes stay within the
    pool, and the tunnel serves on."""
    relay = relay_factory()
    t = tunnel_factory("vanish", relay=relay)
    assert download(t, 4 * MIB)[0] == 200
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=wait(10))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(("GET /download?size=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (16 * MIB, t.host)).encode())
        s.recv(65536)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # a reset, with bytes still on their way
    poll(lambda: relay_pipe_fds(relay) <= POOL_FDS, wait(20), what="pipes back within the pool")
    assert download(t, 2 * MIB) == (200, pattern_sha256(2 * MIB), 2 * MIB)
    assert relay_pipe_fds(relay) <= POOL_FDS


@pytest.mark.valgrind
def test_uploads_spliced_to_the_service(tunnel_factory):
    """Big uploads reach the service whole, to a fast and to a slow reader
    (the agent's pipe toward it fills and drains), several at once."""
    t = tunnel_factory("up")
    bodies = [os.urandom(n) for n in (5 * MIB + 3, 9 * MIB, 70000)]
    results = {}

    def one(i, body, path):
        r = t.post(path, data=body, headers={"Content-Type": "application/octet-stream"}, timeout=wait(120))
        results[i] = (r.status_code, r.json())

    jobs = [(i, b, p) for i, (b, p) in enumerate(
        [(b, "/upload") for b in bodies] + [(bodies[1], "/slowupload?pause=0.5&chunk=262144&delay=0.002")])]
    threads = [threading.Thread(target=one, args=j) for j in jobs]
    base = pipe_fds(t.agent.pid)
    for th in threads:
        th.start()
    # the slow service pauses first: the agent's pipe toward it holds bytes
    poll(lambda: pipe_fds(t.agent.pid) > base, wait(10), what="the agent splicing toward the service")
    for th in threads:
        th.join(wait(180))
    for i, body, path in jobs:
        assert results.get(i) == (200, {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}), (i, path)


@pytest.mark.parametrize("hello,ready,credit", [
    ("", None, 256 * 1024),                        # an agent that says nothing: 256 KiB, as ever
    ("window=1048576\n", "1048576", 1024 * 1024),  # ferry's agent: 1 MiB both ways
    ("window=2097152\n", "1048576", 2 * 1024 * 1024),
    ("window=4096\n", None, 256 * 1024),           # out of range: as if unsaid
], ids=["unsaid", "1mib", "2mib", "bogus"])
def test_stream_window_negotiated(relay, hello, ready, credit):
    """HELLO's `window` is what the agent grants a stream; the relay sends
    exactly that much of an upload before it waits for WINDOW, and answers
    with its own grant in READY (docs/PROTOCOL.md §4)."""
    fake = FakeAgent(relay.port, "win")
    try:
        got = fake.hello(extra=hello)
        assert got.get("window") == ready, got
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=wait(10))
        size = 6 * MIB

        def upload():
            try:
                s.sendall(("POST /upload HTTP/1.1\r\nHost: win.localhost:%d\r\nContent-Length: %d\r\n\r\n"
                           % (relay.port, size)).encode())
                s.sendall(b"x" * size)
            except OSError:
                pass  # the relay holds it back; the socket closes at the end

        th = threading.Thread(target=upload, daemon=True)
        th.start()
        data, others = fake.drain(3)
        assert [t for t, st, p in others if t == OPEN], others
        assert sum(data.values()) == credit, (data, credit)
        s.close()
    finally:
        fake.close()


def test_reload_to_splice_false_closes_idle_pipes(tunnel_factory, relay_factory):
    """`splice: false` by reload: the workers close their idle pipes and
    make no new ones; `splice: true` again splices again."""
    relay = relay_factory()
    t = tunnel_factory("reload", relay=relay)
    base = relay_pipe_fds(relay)
    assert download(t, 4 * MIB)[0] == 200
    assert relay_pipe_fds(relay) > base, "no pipe was pooled after a spliced download"
    for splice in (False, True):
        since = os.path.getsize(relay.log_path)
        relay.cfg["splice"] = splice
        relay.write_config()
        os.kill(relay.proc.pid, signal.SIGHUP)
        poll(lambda: "configuration reloaded" in open(relay.log_path).read()[since:], wait(10),
             what="the workers' reload")
        if not splice:
            assert relay_pipe_fds(relay) == base
        assert download(t, 4 * MIB) == (200, pattern_sha256(4 * MIB), 4 * MIB)
        assert (relay_pipe_fds(relay) > base) == splice


def test_batched_frames_are_spliced(relay_factory):
    """An agent batches the frames of several streams into one message:
    [a: 64 KiB][b: 64 KiB], a small frame ahead of a big one, a response
    head opening a big frame. The relay still splices each big payload
    (it reads only the headers ahead of it, and a small bite to see a
    head), so it reads few of the body bytes itself: the first message,
    before any splice, and about 4 KiB a head. Every end user gets its
    whole body (about 80 KiB read). The relay that read the frames after a
    message's first one read about 1 MiB here; without the look past a
    small frame, 340 KiB; reading a frame that opens with a head, 260 KiB."""
    relay = relay_factory(workers=1)
    worker = next(p for p in relay.pids() if p != relay.proc.pid)
    fake = FakeAgent(relay.port, "batch")
    names = "abcd"
    clients = {}
    try:
        assert fake.hello(extra="window=1048576\n").get("window") == "1048576"
        K = 64 * 1024
        plan = [[("a", K)], [("a", K)], [("b", K)], [("c", K)], [("d", K)]]   # heads open big frames
        plan += [[("a", K), ("b", K)], [("c", K), ("d", K)]] * 4             # a second big frame
        plan += [[("a", 1000), ("b", K)], [("c", 1000), ("d", K)],
                 [("b", 1000), ("a", K)], [("d", 1000), ("c", K)]]          # small, then big
        size = {n: sum(k for msg in plan for m, k in msg if m == n) for n in names}
        got = {n: bytearray() for n in names}
        for n in names:
            c = socket.create_connection(("127.0.0.1", relay.port), timeout=wait(20))
            c.sendall(("GET /%s HTTP/1.1\r\nHost: batch.localhost\r\n\r\n" % n).encode())
            clients[n] = c
        stream = {}
        while len(stream) < len(names):
            for t, fl, st, payload in fake.read_frames():
                if t == DATA and payload.startswith(b"GET /"):
                    stream[payload[5:6].decode()] = st

        def reader(n):
            while True:
                try:
                    chunk = clients[n].recv(1 << 20)
                except OSError:
                    return
                if not chunk:
                    return
                got[n] += chunk

        for n in names:
            threading.Thread(target=reader, args=(n,), daemon=True).start()
        head = {n: ("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size[n]).encode() for n in names}
        sent = {n: 0 for n in names}
        want = {n: 0 for n in names}
        before = bytes_read(worker)
        for msg in plan:
            frames = []
            for n, k in msg:
                payload = (b"" if sent[n] else head[n]) + n.encode() * k
                frames.append(frame(DATA, stream[n], payload))
                sent[n] += k
                want[n] += len(payload)
            fake.send_frames(*frames, zero_key=True)
            # one message at a time: the relay meets each with empty pipes
            poll(lambda: all(len(got[n]) >= want[n] for n in names), wait(10),
                 what="the message's bytes at the end users")
        read = bytes_read(worker) - before
        for n in names:
            assert bytes(got[n]) == head[n] + n.encode() * size[n], (n, len(got[n]))
        assert read < 160 * 1024, "the relay read %d of %d body bytes instead of splicing them" % (
            read, sum(size.values()))
    finally:
        fake.close()
        for c in clients.values():
            c.close()
