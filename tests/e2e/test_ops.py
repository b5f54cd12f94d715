"""
test_ops.py: operating ferryd (issue 6; SPEC.md "Signals to the master" and
`log:`): `ferryd -t`, reload (HUP) in place, graceful shutdown (QUIT), binary
upgrade (USR2 + WINCH + QUIT, nginx style), a failed upgrade, USR1 reopening
the log file, and the access log in text and JSON.

The issue's acceptance is that an operator's signals cost users nothing:
under load (fresh connections and keep-alive connections through the
tunnels) no request fails and no socket error happens while the relay
reloads, upgrades its binary and drains; every tunnel is there afterwards.
The load threads here count every failure (a non-2xx answer, a reset, a
connection closed without an answer, a timeout) and the tests print the
counts.

After a binary upgrade the new master is not the fixture's child: the
`masters` fixture reads the pidfiles (PIDFILE and PIDFILE.oldbin) at teardown
and stops every master it finds there, and their workers, by pid (only
processes whose command line names this test's config file).
Everything talks to 127.0.0.1 and every wait is bounded.
"""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

import harness
from harness import (RawConn, alive, descendants, echo_headers, free_port, poll, proc_cmdline, session, tail,
                     wait)
import origin as origin_mod

# ---------------------------------------------------------------------------
# helpers


def run_ferryd(args, cwd, timeout=None, exe=None, leaks_ok=False):
    """Run ferryd ARGS to completion: (exit code, stdout, stderr). leaks_ok:
    LeakSanitizer off (a sanitizer build; `-t` on a bad file returns without
    freeing the config, which is not what these tests are about)."""
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0") if leaks_ok and harness.SAN else None
    p = subprocess.run([exe or harness.FERRYD] + [str(a) for a in args], cwd=cwd, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout or wait(20), env=env)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_from(path, offset=0):
    """The text of a file from byte offset on ('' when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def size_of(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def wait_text(path, regex, timeout, since=0, what=None):
    """Poll until regex matches the file's text from offset since; the match."""
    rx = re.compile(regex, re.M)

    def found():
        return rx.search(read_from(path, since))
    try:
        return poll(found, timeout, interval=0.05, what=what or "/%s/ in %s" % (regex, os.path.basename(path)))
    except AssertionError as e:
        raise AssertionError("%s; the file ends:\n%s" % (e, tail(path, 4000)))


def api_tunnels(relay, timeout=None):
    r = session().get(relay.admin_url("/api/tunnels"), timeout=timeout or wait(10))
    assert r.status_code == 200, r.text
    return {t["id"]: t for t in r.json()["tunnels"]}


def count_lines(path, regex):
    rx = re.compile(regex)
    return sum(1 for line in read_from(path).splitlines() if rx.search(line))


def get(port, host, path="/echo", headers=(), timeout=None):
    """One request on a fresh connection (Connection: close)."""
    with RawConn(port, timeout or wait(15)) as c:
        return c.request("GET", path, host, headers=[("Connection", "close")] + list(headers))


def ours(pid, marker):
    """pid runs ferryd for this test (its command line names our config)."""
    cmd = proc_cmdline(pid)
    return alive(pid) and "ferryd" in cmd and marker in cmd


def stop_pid(pid, marker, timeout=None):
    """Stop a ferryd master that is not our child, and its workers, by pid."""
    if not ours(pid, marker):
        return
    kids = descendants(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        pass
    try:
        poll(lambda: not alive(pid), timeout or wait(10), what="pid %d to exit" % pid)
    except AssertionError:
        if ours(pid, marker):
            os.kill(pid, signal.SIGKILL)
    for k in kids:
        if ours(k, marker):
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def masters(relay_factory):
    """watch(relay): at teardown, every master named by the relay's pidfile
    or its .oldbin (a new master after an upgrade is nobody's child here) is
    stopped by its pid, with its workers. Torn down before relay_factory."""
    watched = []

    class Masters:
        def watch(self, relay, pidfile):
            watched.append((relay, pidfile))

    yield Masters()
    for relay, pidfile in watched:
        for p in (pidfile, pidfile + ".oldbin"):
            pid = read_pid(p)
            if pid and pid != (relay.proc.pid if relay.proc else None):
                stop_pid(pid, relay.config_path)


def ops_relay(relay_factory, masters, workdir, **cfg):
    """A relay with a pidfile (pid: in the config), watched by `masters`."""
    pidfile = os.path.join(workdir, "ferryd.pid")
    cfg.setdefault("pid", pidfile)
    relay = relay_factory(**cfg)
    masters.watch(relay, cfg["pid"])
    poll(lambda: read_pid(cfg["pid"]) == relay.proc.pid, wait(5), what="the pidfile")
    return relay, cfg["pid"]


def reload_and_wait(relay, pidfile, via="-s", since=None, log=None):
    """HUP the master (ferryd -s reload -p PIDFILE, or kill) and wait for its
    "reload: ... applied" line in log (default ferryd's stderr); returns the
    log offset before it."""
    log = log or relay.log_path
    since = size_of(log) if since is None else since
    if via == "-s":
        rc, out, err = run_ferryd(["-s", "reload", "-p", pidfile], relay.workdir)
        assert rc == 0, (rc, out, err)
    else:
        os.kill(read_pid(pidfile), signal.SIGHUP)
    wait_text(log, r"reload: .*(applied|kept the running configuration)", wait(10), since)
    text = read_from(log, since)
    assert re.search(r"reload: %s applied" % re.escape(relay.config_path), text), text
    return since


def agent_sessions(agent):
    return count_lines(agent.log_path, r'msg="client session established"')


def line_of(path, regex):
    """1-based number of the first line of a file matching regex."""
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if re.search(regex, line):
                return i
    raise AssertionError("no /%s/ in %s" % (regex, path))


# ---------------------------------------------------------------------------
# load: fresh connections, keep-alive connections, a long download


class Load:
    """Threads sending GET /echo through tunnels until stop(): per host,
    `fresh` threads with a new connection per request and `keepalive`
    threads reusing one connection (a new one only after the relay said
    Connection: close). Every failure is recorded: a status other than 200,
    an answer from the wrong tunnel, a reset, a connection closed without an
    answer, a timeout."""

    def __init__(self, port, hosts, fresh=1, keepalive=1, pause=0.002, timeout=None):
        self.port = port
        self.pause = pause
        self.timeout = timeout or wait(20)
        self.lock = threading.RLock()
        self.ok = {"fresh": 0, "keepalive": 0}
        self.closes = 0          # Connection: close answers on keep-alive connections
        self.failures = []       # (time, kind, host, what)
        self.stop_ev = threading.Event()
        self.threads = []
        for host in hosts:
            for i in range(fresh):
                self.threads.append(threading.Thread(target=self._fresh, args=(host,), daemon=True))
            for i in range(keepalive):
                self.threads.append(threading.Thread(target=self._keepalive, args=(host,), daemon=True))

    def start(self):
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def _check(self, kind, host, r):
        tid = host.split(".", 1)[0]
        if r.status != 200:
            return "status %d %s: %r" % (r.status, r.header("X-Ferry-Error"), r.body[:200])
        try:
            seen = echo_headers(r.json(), "X-Tunnel-Id")
        except ValueError:
            return "not the origin's JSON: %r" % r.body[:200]
        if seen != [tid]:
            return "answered for tunnel %r, asked %r" % (seen, tid)
        return None

    def _record(self, kind, host, err):
        with self.lock:
            if err is None:
                self.ok[kind] += 1
            else:
                self.failures.append((round(time.monotonic() - self.t0, 3), kind, host, err))

    def _fresh(self, host):
        n = 0
        while not self.stop_ev.is_set():
            n += 1
            try:
                with RawConn(self.port, self.timeout) as c:
                    r = c.request("GET", "/echo?f=%d" % n, host, headers=[("Connection", "close")])
                err = self._check("fresh", host, r)
            except Exception as e:  # noqa: BLE001 - every error counts
                err = "%s: %s" % (type(e).__name__, e)
            self._record("fresh", host, err)
            time.sleep(self.pause if err is None else 0.02)

    def _keepalive(self, host):
        c = None
        n = 0
        on_conn = 0
        while not self.stop_ev.is_set():
            n += 1
            try:
                if c is None:
                    c = RawConn(self.port, self.timeout)
                    on_conn = 0
                on_conn += 1
                r = c.request("GET", "/echo?k=%d" % n, host)
                err = self._check("keepalive", host, r)
                if (r.header("Connection") or "").lower() == "close":
                    with self.lock:
                        self.closes += 1
                    c.close()
                    c = None
            except Exception as e:  # noqa: BLE001 - every error counts
                err = "%s: %s (request %d on its connection)" % (type(e).__name__, e, on_conn)
                if c is not None:
                    c.close()
                c = None
            self._record("keepalive", host, err)
            time.sleep(self.pause if err is None else 0.02)
        if c is not None:
            c.close()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(self.timeout + wait(5))
        assert not any(t.is_alive() for t in self.threads), "a load thread is stuck"
        return self

    def summary(self):
        with self.lock:
            return "ok fresh=%d keepalive=%d, keep-alive closes=%d, failures=%d%s" % (
                self.ok["fresh"], self.ok["keepalive"], self.closes, len(self.failures),
                "".join("\n  %.3fs %s %s: %s" % f for f in self.failures[:30]))

    def assert_clean(self, min_each=20):
        with self.lock:
            assert not self.failures, "requests failed: " + self.summary()
            assert self.ok["fresh"] >= min_each and self.ok["keepalive"] >= min_each, \
                "the load did not run: " + self.summary()


class RcvConn(RawConn):
    """RawConn, optionally with a small SO_RCVBUF set before connecting."""

    def __init__(self, port, timeout=None, rcvbuf=None):
        if not rcvbuf:
            return super().__init__(port, timeout)
        self.timeout = timeout or wait(15)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(self.timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()


class Download(threading.Thread):
    """GET /download?size=N through a tunnel on its own connection, read at
    about `rate` bytes/s; sha256 and length of the body kept."""

    def __init__(self, port, host, size, rate=None, timeout=None, slow_tail=0, slow_rate=None, rcvbuf=None):
        super().__init__(daemon=True)
        self.port, self.host, self.size, self.rate = port, host, size, rate
        # The last slow_tail bytes at slow_rate: the end of the body then
        # waits in the relay (its stream window, 256 KiB) for a while after
        # the agent sent the last byte; with a small rcvbuf less of it waits
        # in the kernel instead.
        self.slow_tail, self.slow_rate, self.rcvbuf = slow_tail, slow_rate, rcvbuf
        self.timeout = timeout or wait(30)
        self.status = None
        self.length = 0
        self.sha = None
        self.error = None
        self.began = threading.Event()   # the head and a first body byte arrived

    def run(self):
        h = hashlib.sha256()
        try:
            with RcvConn(self.port, self.timeout, rcvbuf=self.rcvbuf) as c:
                c.send(harness.build_request("GET", "/download?size=%d" % self.size, self.host))
                _, self.status, _, headers = c.read_head()
                cl = [v for k, v in headers if k.lower() == "content-length"]
                if self.status != 200 or cl != [str(self.size)]:
                    self.error = "head: %s %r" % (self.status, headers)
                    return
                left = self.size
                if c.buf:
                    piece = bytes(c.buf[:left])
                    del c.buf[:len(piece)]
                    h.update(piece)
                    left -= len(piece)
                    self.length += len(piece)
                t0 = time.monotonic()
                rate, base = self.rate, 0
                while left > 0:
                    data = c.sock.recv(min(left, 262144))
                    if not data:
                        self.error = "closed after %d of %d bytes" % (self.length, self.size)
                        return
                    h.update(data)
                    left -= len(data)
                    self.length += len(data)
                    self.began.set()
                    if self.slow_rate and left <= self.slow_tail and rate != self.slow_rate:
                        rate, base, t0 = self.slow_rate, self.length, time.monotonic()
                    if rate:
                        ahead = (self.length - base) / rate - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
        except Exception as e:  # noqa: BLE001
            self.error = "%s: %s after %d bytes" % (type(e).__name__, e, self.length)
        finally:
            self.sha = h.hexdigest()
            self.began.set()

    def check(self, timeout):
        self.join(timeout)
        assert not self.is_alive(), "the download did not finish in %.0fs (%d of %d bytes)" % (
            timeout, self.length, self.size)
        assert self.error is None, self.error
        assert self.length == self.size, (self.length, self.size)
        assert self.sha == origin_mod.pattern_sha256(self.size), "the download's bytes differ from the origin's"


class SSE(threading.Thread):
    """GET /sse?id=KEY through a tunnel: the first event, then (after the
    test releases it at the origin) the second and the end of the stream."""

    def __init__(self, port, host, key, timeout=None):
        super().__init__(daemon=True)
        self.port, self.host, self.key = port, host, key
        self.timeout = timeout or wait(60)
        self.first = threading.Event()
        self.body = b""
        self.status = None
        self.error = None

    def run(self):
        try:
            with RawConn(self.port, self.timeout) as c:
                c.send(harness.build_request("GET", "/sse?id=%s" % self.key, self.host))
                _, self.status, _, headers = c.read_head()
                out = bytearray()
                while True:   # chunked, read by hand to see the first event at once
                    line = c.read_until(b"\r\n", 4096)
                    n = int(line.split(b";", 1)[0].strip(), 16)
                    if n == 0:
                        c.read_until(b"\r\n", 4096)
                        break
                    out += c.read_exact(n)
                    c.read_exact(2)
                    if b"data: first" in out:
                        self.first.set()
                self.body = bytes(out)
        except Exception as e:  # noqa: BLE001
            self.error = "%s: %s" % (type(e).__name__, e)
        finally:
            self.first.set()


def release_sse(origin, key):
    r = session().get("http://127.0.0.1:%d/sse-release?id=%s" % (origin.http_port, key), timeout=wait(10))
    assert r.status_code == 200


# ---------------------------------------------------------------------------
# ferryd -t and -s


def test_config_test_ok(relay_factory, workdir):
    """-t on a good file: "configuration ok", exit 0, nothing started (it
    passes while a relay runs on the very ports the file names)."""
    relay = relay_factory(workers=2, limits={"drain_timeout": "5s"})
    rc, out, err = run_ferryd(["-t", "-c", relay.config_path], workdir)
    assert rc == 0, (rc, out, err)
    assert "configuration ok" in out + err, (out, err)
    assert relay.proc.running()
    assert session().get(relay.admin_url("/health"), timeout=wait(5)).status_code == 200


BAD_CONFIGS = [
    # (name, config text, key named, regex of the line to point at)
    ("bad_duration", "listen: [\"127.0.0.1:{port}\"]\nworkers: 1\nlimits:\n  header_timeout: 10s\n"
                     "  drain_timeout: 5q\n", "limits.drain_timeout", r"drain_timeout"),
    ("unknown_key", "listen: [\"127.0.0.1:{port}\"]\nworkers: 1\nlimits:\n  drain_timeout: 5s\n"
                    "bogus_key: 3\n", "bogus_key", r"bogus_key"),
    ("unknown_limit", "listen: [\"127.0.0.1:{port}\"]\nlimits:\n  drain_timeout: 5s\n  max_bananas: 3\n",
     "max_bananas", r"max_bananas"),
    ("bad_workers", "listen: [\"127.0.0.1:{port}\"]\nworkers: lots\n", "workers", r"workers"),
    ("bad_route", "listen: [\"127.0.0.1:{port}\"]\nroute_order: [host, dns]\n", "route_order", r"route_order"),
    ("bad_yaml", "listen: [\"127.0.0.1:{port}\"\nworkers: 1\n", None, None),
]


@pytest.mark.parametrize("name,text,key,line_rx", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_config_test_bad(workdir, name, text, key, line_rx):
    """-t on a bad file: exit 1, and stderr names the file, the line and the key."""
    path = os.path.join(workdir, "bad-%s.yml" % name)
    with open(path, "w") as f:
        f.write(text.format(port=free_port()))
    rc, out, err = run_ferryd(["-t", "-c", path], workdir, leaks_ok=True)
    assert rc == 1, (rc, out, err)
    assert "configuration ok" not in out + err
    assert path in err, "the error names the file: %r" % err
    if key is not None:
        line = line_of(path, line_rx)
        assert re.search(r"%s:%d: .*%s" % (re.escape(path), line, re.escape(key)), err), \
            "expected %s:%d and %s in %r" % (path, line, key, err)
    else:
        assert re.search(r"%s:\d+: " % re.escape(path), err), err


def test_config_test_refuses_public_listener_without_auth(workdir):
    """-t counts every reason ferryd would refuse to start (SPEC): a public
    listener with agent auth off."""
    path = os.path.join(workdir, "public.yml")
    with open(path, "w") as f:
        f.write("listen: [\"0.0.0.0:%d\"]\nadmin: \"127.0.0.1:%d\"\n" % (free_port(), free_port()))
    rc, out, err = run_ferryd(["-t", "-c", path], workdir, leaks_ok=True)
    assert rc == 1, (rc, out, err)
    assert "listen" in err and "auth" in err, err


def test_signal_without_a_running_master(workdir):
    """-s with no pidfile, a missing pidfile, or a bad verb: exit 1 and why."""
    rc, out, err = run_ferryd(["-s", "reload"], workdir, leaks_ok=True)
    assert rc == 1 and "pid" in err, (rc, err)
    missing = os.path.join(workdir, "nope.pid")
    rc, out, err = run_ferryd(["-s", "reload", "-p", missing], workdir, leaks_ok=True)
    assert rc == 1 and missing in err, (rc, err)
    rc, out, err = run_ferryd(["-s", "dance", "-p", missing], workdir, leaks_ok=True)
    assert rc == 1 and "dance" in err, (rc, err)


# ---------------------------------------------------------------------------
# reload


@pytest.mark.valgrind
def test_reload_applies_new_settings_and_keeps_tunnels(relay_factory, agent_factory, masters, workdir):
    """HUP with valid changes (default_tunnel, a new listener, a smaller
    limits.max_header_bytes, route_order): new requests see them; the
    tunnel stays on the same agent connection (no new session, same
    connected_since, same agent address, same worker), the workers stay."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2)
    agent = agent_factory(relay, subdomain="app")
    host = relay.host("app")
    assert get(relay.port, host).status == 200
    before = api_tunnels(relay)["app"]
    workers = sorted(descendants(relay.proc.pid))
    big = [("X-Big", "b" * 3000)]
    assert get(relay.port, "127.0.0.1:%d" % relay.port).status == 404          # no tunnel named
    assert get(relay.port, host, headers=big).status == 200

    new_port = free_port()
    relay.cfg["listen"] = relay.cfg["listen"] + ["127.0.0.1:%d" % new_port]
    relay.cfg["default_tunnel"] = "app"
    relay.cfg["limits"] = dict(relay.cfg["limits"], max_header_bytes=2048)
    relay.write_config()
    reload_and_wait(relay, pidfile, via="-s")

    r = get(relay.port, "127.0.0.1:%d" % relay.port)
    assert r.status == 200, "default_tunnel after reload: %r" % r
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["app"]
    r = get(new_port, "app.localhost:%d" % new_port)
    assert r.status == 200, "the listener added on reload: %r" % r
    r = get(relay.port, host, headers=big)
    assert r.status == 431, "max_header_bytes 2048 after reload: %r" % r
    assert r.header("X-Ferry-Error") == "header_too_large"

    # route_order without host: the Host no longer names the tunnel, the
    # path prefix still does (default_tunnel off again).
    relay.cfg["route_order"] = ["path", "header", "default"]
    relay.cfg["default_tunnel"] = ""
    relay.write_config()
    reload_and_wait(relay, pidfile, via="kill")
    r = get(relay.port, host)
    assert r.status == 404 and r.header("X-Ferry-Error") == "no_tunnel", r
    r = get(relay.port, "127.0.0.1:%d" % relay.port, path="/t/app/echo")
    assert r.status == 200, r
    r = get(relay.port, "127.0.0.1:%d" % relay.port, headers=[("X-Tunnel-Id", "app")])
    assert r.status == 200, r

    # The original listener removed: it refuses; the added one serves.
    relay.cfg["listen"] = ["127.0.0.1:%d" % new_port]
    relay.cfg["route_order"] = ["host", "path", "header", "query", "default"]
    relay.write_config()
    since = reload_and_wait(relay, pidfile)
    assert re.search(r"no longer listening on 127\.0\.0\.1:%d" % relay.port, relay.log())
    # The port refuses once no process holds it: the master logs "applied"
    # before each worker has closed its copy (slow under valgrind).
    poll(lambda: len(re.findall(r"worker \d+: configuration reloaded", read_from(relay.log_path, since))) >= 2,
         wait(10), what="both workers applied the reload")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", relay.port), timeout=wait(2)).close()
    assert get(new_port, "app.localhost:%d" % new_port).status == 200

    after = api_tunnels(relay)["app"]
    for k in ("connected_since", "agent", "worker", "worker_pid"):
        assert after[k] == before[k], "tunnel %s changed across reloads: %s -> %s" % (k, before, after)
    assert agent_sessions(agent) == 1, "the agent reconnected:\n" + agent.log()
    assert not re.search(r"GOAWAY|reconnect", agent.log()), agent.log()
    assert sorted(descendants(relay.proc.pid)) == workers, "workers were replaced on reload"
    assert len(re.findall(r"worker \d+: configuration reloaded", relay.log())) == 2 * 3


def bad_reload(relay, pidfile, text_edit):
    """Write a config changed by text_edit(text), HUP, and return the
    master's log text written since."""
    relay.write_config()
    with open(relay.config_path) as f:
        text = f.read()
    with open(relay.config_path, "w") as f:
        f.write(text_edit(text))
    since = size_of(relay.log_path)
    rc, out, err = run_ferryd(["-s", "reload", "-p", pidfile], relay.workdir)
    assert rc == 0, (rc, out, err)
    wait_text(relay.log_path, r"reload: .*(kept the running configuration|applied)", wait(10), since)
    return read_from(relay.log_path, since)


INVALID = [
    ("bad_duration", lambda t: t.replace("limits:\n", "limits:\n  drain_timeout: 5q\n"),
     "limits.drain_timeout", r"drain_timeout: 5q"),
    ("unknown_key", lambda t: t + "bogus_key: 1\n", "bogus_key", r"bogus_key"),
    ("bad_yaml", lambda t: t + "listen: [\"127.0.0.1:1\"\n", None, None),
    ("bad_tunnel_id", lambda t: t.replace("default_tunnel: app", "default_tunnel: \"No Way\""),
     "default_tunnel", r"default_tunnel"),
]


@pytest.mark.parametrize("name,edit,key,line_rx", INVALID, ids=[i[0] for i in INVALID])
def test_reload_invalid_config_changes_nothing(relay_factory, agent_factory, masters, workdir,
                                               name, edit, key, line_rx):
    """An invalid config on HUP: the relay keeps running exactly as before
    (the valid change in the same file does not apply, no worker restarts,
    the tunnel stays) and the log says why: file, line, key."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2)
    agent = agent_factory(relay, subdomain="app")
    before = api_tunnels(relay)["app"]
    workers = sorted(descendants(relay.proc.pid))
    nohost = "127.0.0.1:%d" % relay.port
    assert get(relay.port, nohost).status == 404

    relay.cfg["default_tunnel"] = "app"     # valid, but in an invalid file
    text = bad_reload(relay, pidfile, edit)
    with open(relay.config_path) as f:
        written = f.read()
    assert "applied" not in text, text
    m = re.search(r"\[error\] %d: reload: (.*)kept the running configuration" % relay.proc.pid, text)
    assert m, "the master logs why it kept the configuration:\n" + text
    why = m.group(1)
    assert relay.config_path in why, "the log names the file edited (not a /proc path): %r" % why
    assert "/proc/self/fd" not in text, text
    if key is not None:
        line = line_of(relay.config_path, line_rx)
        assert re.search(r"%s:%d: %s" % (re.escape(relay.config_path), line, re.escape(key)), why), \
            "expected %s:%d: %s in %r\nconfig:\n%s" % (relay.config_path, line, key, why, written)
    else:
        assert re.search(r"%s:\d+: " % re.escape(relay.config_path), why), why

    # Nothing changed: default_tunnel did not apply, same workers, same tunnel.
    r = get(relay.port, nohost)
    assert r.status == 404 and r.header("X-Ferry-Error") == "no_tunnel", r
    assert get(relay.port, relay.host("app")).status == 200
    assert sorted(descendants(relay.proc.pid)) == workers
    assert api_tunnels(relay)["app"]["connected_since"] == before["connected_since"]
    assert "configuration reloaded" not in text, text
    assert agent_sessions(agent) == 1

    # Fixed, the same change applies.
    relay.write_config()
    reload_and_wait(relay, pidfile)
    r = get(relay.port, nohost)
    assert r.status == 200, r


def test_reload_refuses_a_change_of_workers(relay_factory, agent_factory, masters, workdir):
    """workers changes only with a restart or an upgrade: the reload is
    refused with a message, and nothing else of the file applies."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2)
    agent_factory(relay, subdomain="app")
    workers = sorted(descendants(relay.proc.pid))
    relay.cfg["workers"] = 3
    relay.cfg["default_tunnel"] = "app"
    text = bad_reload(relay, pidfile, lambda t: t)
    assert re.search(r"reload: %s: workers .*restart.*kept the running configuration" % re.escape(relay.config_path),
                     text), text
    assert sorted(descendants(relay.proc.pid)) == workers
    assert get(relay.port, "127.0.0.1:%d" % relay.port).status == 404
    assert get(relay.port, relay.host("app")).status == 200


def test_reload_refuses_a_listener_it_cannot_bind(relay_factory, masters, workdir):
    """A listener that cannot be opened (port taken): the reload is refused,
    the old listeners stay."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=1)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        relay.cfg["listen"] = relay.cfg["listen"] + ["127.0.0.1:%d" % taken.getsockname()[1]]
        text = bad_reload(relay, pidfile, lambda t: t)
        assert re.search(r"reload: .*127\.0\.0\.1:%d.*kept the running configuration" % taken.getsockname()[1],
                         text), text
    finally:
        taken.close()
    assert socket.create_connection(("127.0.0.1", relay.port), timeout=wait(2))


def test_reload_with_pid_from_config(relay_factory, masters, workdir):
    """-s reload finds the master through pid: in the config (-c FILE)."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=1)
    since = size_of(relay.log_path)
    relay.cfg["default_tunnel"] = "app"
    relay.write_config()
    rc, out, err = run_ferryd(["-s", "reload", "-c", relay.config_path], workdir)
    assert rc == 0, (rc, out, err)
    wait_text(relay.log_path, r"reload: .* applied", wait(10), since)


def test_no_request_fails_during_reloads(relay_factory, agent_factory, masters, workdir):
    """Fresh connections and keep-alive connections through two tunnels on
    two workers while the master is HUPed 5 times (each time with a
    change): zero failures, no agent reconnect, every reload applied."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2)
    agents = [agent_factory(relay, subdomain=n) for n in ("ra", "rb")]
    before = api_tunnels(relay)
    load = Load(relay.port, [relay.host("ra"), relay.host("rb")], fresh=1, keepalive=1).start()
    try:
        time.sleep(0.5)
        for i in range(5):
            relay.cfg["limits"] = dict(relay.cfg["limits"], idle_timeout="%ds" % (70 + i))
            relay.cfg["default_tunnel"] = "ra" if i % 2 == 0 else ""
            relay.write_config()
            reload_and_wait(relay, pidfile, via="kill" if i % 2 else "-s")
            time.sleep(0.3)
        time.sleep(0.5)
    finally:
        load.stop()
    print("reload x5: " + load.summary())
    load.assert_clean()
    assert len(re.findall(r"reload: .* applied", read_from(relay.log_path))) == 5
    after = api_tunnels(relay)
    for n in ("ra", "rb"):
        assert after[n]["connected_since"] == before[n]["connected_since"], (before, after)
        assert after[n]["agent"] == before[n]["agent"], (before, after)
    for a in agents:
        assert agent_sessions(a) == 1, a.log()


def test_reload_access_rule_applies_to_the_next_request(relay_factory, agent_factory, masters, workdir):
    """An access rule added on reload applies to new requests, also to the
    next request of a keep-alive connection opened before; removed again,
    it no longer applies. The tunnel stays."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2)
    agent = agent_factory(relay, subdomain="app")
    before = api_tunnels(relay)["app"]
    with RawConn(relay.port) as c:
        assert c.request("GET", "/echo", relay.host("app")).status == 200
        relay.cfg["access"] = [{"tunnels": "app", "deny": ["127.0.0.0/8"]}]
        relay.write_config()
        reload_and_wait(relay, pidfile)
        r = c.request("GET", "/echo", relay.host("app"))
        assert r.status == 403 and r.header("X-Ferry-Error") == "denied", r
    r = get(relay.port, relay.host("app"))
    assert r.status == 403, r
    del relay.cfg["access"]
    relay.write_config()
    reload_and_wait(relay, pidfile)
    assert get(relay.port, relay.host("app")).status == 200
    assert api_tunnels(relay)["app"]["connected_since"] == before["connected_since"]
    assert agent_sessions(agent) == 1


def mint_token(workdir, key, pattern):
    """(token, jti) signed with key by `ferryd token`."""
    rc, out, err = run_ferryd(["token", "--tunnel", pattern, "--key", key], workdir)
    assert rc == 0, err
    m = re.search(r"token id ([0-9a-f]{16}) ", err)
    assert m, err
    return out.strip(), m.group(1)


def test_reload_rereads_revocations(relay_factory, agent_factory, masters, workdir):
    """auth.revoked is re-read on reload: a token revoked afterwards is
    refused (401 token_revoked) to new agent connections, while the tunnel
    already up goes on serving."""
    key = os.path.join(workdir, "relay.key")
    rc, out, err = run_ferryd(["keygen", "-o", key], workdir)
    assert rc == 0, err
    revoked = os.path.join(workdir, "revoked")
    open(revoked, "w").close()
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2, auth={"key": key, "revoked": revoked})
    token, jti = mint_token(workdir, key, "app*")
    agent = agent_factory(relay, subdomain="app", args=["--authtoken", token])
    assert get(relay.port, relay.host("app")).status == 200

    def plain_get():
        with RawConn(relay.port) as c:
            return c.request("GET", "/_ferry/tunnel/app2", "127.0.0.1:%d" % relay.port,
                             [("Authorization", "Bearer " + token)])
    assert plain_get().status == 200
    with open(revoked, "w") as f:
        f.write(jti + "\n")
    reload_and_wait(relay, pidfile)
    r = plain_get()
    assert r.status == 401 and r.header("X-Ferry-Error") == "token_revoked", r
    assert get(relay.port, relay.host("app")).status == 200
    assert agent_sessions(agent) == 1


def test_reload_switches_the_log_format(relay_factory, agent_factory, masters, workdir):
    """log.format text -> json on reload: the lines after it are JSON."""
    logf = os.path.join(workdir, "ferry.log")
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2, log={"file": logf, "format": "text"})
    agent_factory(relay, subdomain="app")
    assert get(relay.port, relay.host("app"), path="/text-line").status == 200
    wait_text(logf, r'"GET /text-line" 200', wait(5))
    relay.cfg["log"] = {"file": logf, "format": "json"}
    relay.write_config()
    since = size_of(logf)
    reload_and_wait(relay, pidfile, log=logf)
    time.sleep(0.3)
    for i in range(4):
        assert get(relay.port, relay.host("app"), path="/json-line-%d" % i).status == 200
    for i in range(4):
        wait_text(logf, r'"path":"/json-line-%d"' % i, wait(5), since)
    after = read_from(logf, since)
    # The master's own reload line may be the last text line; then JSON only.
    lines = after.splitlines()
    first_json = next(i for i, l in enumerate(lines) if l.startswith("{"))
    for l in lines[first_json:]:
        json.loads(l)


# ---------------------------------------------------------------------------
# graceful shutdown (QUIT)


@pytest.mark.valgrind
def test_quit_drains_in_flight_streams(relay_factory, agent_factory, masters, origin, workdir):
    """QUIT during a long download and a 5-second SSE stream: both complete
    intact; the agent gets GOAWAY; /health answers 503 draining; a new
    connection is refused; ferryd exits 0 once they are done, well within
    drain_timeout, and removes its pidfile."""
    drain = 25
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2,
                               limits={"drain_timeout": "%ds" % wait(drain)})
    agent = agent_factory(relay, subdomain="app")
    host = relay.host("app")
    size = 48 << 20
    dl = Download(relay.port, host, size, rate=8 << 20, timeout=wait(30))
    key = "quit-%d" % os.getpid()
    sse = SSE(relay.port, host, key)
    dl.start()
    sse.start()
    assert dl.began.wait(wait(10)) and dl.error is None, dl.error
    assert sse.first.wait(wait(10)) and sse.error is None, sse.error
    t_stream = time.monotonic()

    t0 = time.monotonic()
    rc, out, err = run_ferryd(["-s", "quit", "-p", pidfile], workdir)
    assert rc == 0, (rc, out, err)
    agent.wait_log(r"relay asked to move \(GOAWAY\)", wait(5))

    # Meanwhile: /health says draining; a new connection is refused.
    def health():
        r = session().get(relay.admin_url("/health"), timeout=wait(2))
        return r.text if r.status_code == 503 else None   # (a 503 Response is falsy)
    text = poll(health, wait(5), what="/health 503 while draining")
    assert "draining" in text, text
    refused = None
    try:
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=wait(2))
    except ConnectionRefusedError:
        refused = "refused"
    else:
        # Accepted by the kernel: it must then not be served as if nothing happened.
        try:
            s.settimeout(wait(3))
            s.sendall(harness.build_request("GET", "/echo", host))
            data = s.recv(65536)
            refused = "answered %r" % data[:80] if data else "closed"
        except socket.timeout:
            refused = "accepted by the kernel, never answered (the listen socket is still open)"
        except OSError as e:
            refused = repr(e)
        finally:
            s.close()
    # The streams are still going; the SSE one ends after 5 s.
    time.sleep(max(0, 5 - (time.monotonic() - t_stream)))
    assert relay.proc.running(), "ferryd exited with streams in flight"
    release_sse(origin, key)
    sse.join(wait(15))
    assert sse.error is None and sse.status == 200, (sse.status, sse.error)
    assert b"data: first" in sse.body and b"data: second" in sse.body, sse.body
    dl.check(wait(30))
    try:
        rc = relay.proc.p.wait(wait(drain))
    except subprocess.TimeoutExpired:
        raise AssertionError("ferryd still running %.1fs after QUIT with nothing in flight" % (time.monotonic() - t0))
    elapsed = time.monotonic() - t0
    assert rc == 0, "exit status %s after QUIT" % rc
    assert elapsed < wait(drain), elapsed
    assert not os.path.exists(pidfile), "the pidfile is left behind"
    assert re.search(r"graceful shutdown", relay.log())
    assert refused == "refused", "a new connection after QUIT: %s" % refused


def test_quit_cuts_streams_at_drain_timeout(relay_factory, agent_factory, masters, origin, workdir):
    """A stream that never ends does not hold QUIT beyond drain_timeout: ferryd
    exits 0 about drain_timeout after QUIT."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=1, limits={"drain_timeout": "2s"})
    agent_factory(relay, subdomain="app")
    key = "cut-%d" % os.getpid()
    sse = SSE(relay.port, relay.host("app"), key, timeout=wait(30))
    sse.start()
    try:
        assert sse.first.wait(wait(10)) and sse.error is None, sse.error
        t0 = time.monotonic()
        os.kill(relay.proc.pid, signal.SIGQUIT)
        rc = relay.proc.p.wait(wait(15))
        elapsed = time.monotonic() - t0
        assert rc == 0, rc
        assert 1.5 <= elapsed <= 2 + wait(3), "exited %.2fs after QUIT; drain_timeout is 2s" % elapsed
        sse.join(wait(10))
        assert b"data: second" not in sse.body
    finally:
        release_sse(origin, key)


def test_stop_is_fast(relay_factory, agent_factory, masters, origin, workdir):
    """-s stop (TERM) does not wait for streams in flight."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2, limits={"drain_timeout": "30s"})
    agent_factory(relay, subdomain="app")
    key = "stop-%d" % os.getpid()
    sse = SSE(relay.port, relay.host("app"), key, timeout=wait(30))
    sse.start()
    try:
        assert sse.first.wait(wait(10))
        t0 = time.monotonic()
        rc, out, err = run_ferryd(["-s", "stop", "-p", pidfile], workdir)
        assert rc == 0, (rc, out, err)
        relay.proc.p.wait(wait(10))
        assert time.monotonic() - t0 < wait(5)
        assert not os.path.exists(pidfile)
    finally:
        release_sse(origin, key)


def relay_send_queue(relay_port, client_port):
    """Bytes in the relay's kernel send queue of its connection to a client
    port (/proc/net/tcp tx_queue), or None."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            p = line.split()
            if int(p[1].split(":")[1], 16) == relay_port and int(p[2].split(":")[1], 16) == client_port:
                return int(p[4].split(":")[0], 16)
    return None


def unread(sock):
    """Bytes waiting in a socket's receive queue."""
    import fcntl
    import struct
    import termios
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def test_quit_flushes_response_bytes_the_relay_holds(relay_factory, agent_factory, masters, workdir):
    """A response the agent has sent whole, whose end still waits in the
    relay because the client reads slowly, is delivered whole after QUIT:
    the worker does not exit with bytes of it in its buffers.

    Set-up: a client that does not read fills the kernel buffers between
    relay and client (measured: relay send queue + client receive queue); a
    download 128 KiB longer than that leaves its last 128 KiB in the
    relay's own buffer (under the 256 KiB stream window, so the agent has
    sent it all, FIN included). QUIT, wait, then read."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=1,
                               limits={"drain_timeout": "%ds" % wait(20)})
    agent_factory(relay, subdomain="app")
    host = relay.host("app")
    rcvbuf = 16384

    def open_download(size):
        c = RcvConn(relay.port, wait(20), rcvbuf=rcvbuf)
        c.send(harness.build_request("GET", "/download?size=%d" % size, host))
        return c

    probe = open_download(256 << 20)
    time.sleep(wait(1.5))
    kernel = relay_send_queue(relay.port, probe.sock.getsockname()[1]) + unread(probe.sock)
    probe.close()
    assert kernel > 0
    size = kernel + (128 << 10)
    c = open_download(size)
    time.sleep(wait(1.5))
    queued = relay_send_queue(relay.port, c.sock.getsockname()[1]) + unread(c.sock)
    t0 = time.monotonic()
    os.kill(relay.proc.pid, signal.SIGQUIT)
    time.sleep(1.0)                       # ten drain checks with nothing read
    h = hashlib.sha256()
    got = 0
    _, status, _, headers = c.read_head()
    assert status == 200, headers
    if c.buf:
        h.update(bytes(c.buf))
        got += len(c.buf)
        c.buf.clear()
    while got < size:
        data = c.sock.recv(1 << 20)
        if not data:
            break
        h.update(data)
        got += len(data)
    c.close()
    assert got == size, ("the body ends after %d of %d bytes: the worker exited with %d bytes of it still in "
                         "its buffer (%d were in the kernel at QUIT)" % (got, size, size - got, queued))
    assert h.hexdigest() == origin_mod.pattern_sha256(size)
    assert relay.proc.p.wait(wait(20)) == 0
    assert time.monotonic() - t0 < wait(20)


def test_request_answered_tunnel_lost_is_over(relay_factory, agent_factory, masters, workdir):
    """An agent that disconnects under a request in flight: the client gets
    502 tunnel_lost with Connection: close, and that request is over: the
    connection closes, the request is not logged a second time (504 at
    upstream_timeout), and a QUIT then is not held until drain_timeout."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=1,
                               limits={"upstream_timeout": "3s", "drain_timeout": "%ds" % wait(8)})
    agent = agent_factory(relay, subdomain="app")
    c = RawConn(relay.port, wait(10))
    try:
        c.send(harness.build_request("GET", "/slow?s=2&lost=1", relay.host("app")))
        time.sleep(0.5)
        os.kill(agent.pid, signal.SIGKILL)
        r = c.read_response()
        assert r.status == 502 and r.header("X-Ferry-Error") == "tunnel_lost", r
        assert (r.header("Connection") or "").lower() == "close", r
        closed = c.closed_by_peer(wait(2))
        time.sleep(3.5)                   # past upstream_timeout
        t0 = time.monotonic()
        os.kill(relay.proc.pid, signal.SIGQUIT)
        rc = relay.proc.p.wait(wait(15))
        quit_took = time.monotonic() - t0
    finally:
        c.close()
    lines = [l for l in read_from(relay.log_path).splitlines() if "lost=1" in l]
    assert rc == 0
    problems = []
    if len(lines) != 1:
        problems.append("the request is logged %d times:\n  %s" % (len(lines), "\n  ".join(lines)))
    if not closed:
        problems.append("the relay said Connection: close but kept the connection open")
    if quit_took >= wait(3):
        problems.append("QUIT took %.1fs (drain_timeout %ds): the answered request still held the worker"
                        % (quit_took, wait(8)))
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# binary upgrade


def assert_no_errors(relay):
    """A clean reload/upgrade run logs no error and no warning."""
    bad = [l for l in read_from(relay.log_path).splitlines() if re.search(r"\[(error|warn)\]", l)]
    assert not bad, "errors logged:\n" + "\n".join(bad[:20])


def start_upgrade(relay, pidfile, via="-s"):
    """USR2 the master in the pidfile; wait until PIDFILE holds the new
    master and PIDFILE.oldbin the old one, and the new workers are known to
    the old master ("both generations serve"). Returns the new pid."""
    old = read_pid(pidfile)
    since = size_of(relay.log_path)
    if via == "-s":
        rc, out, err = run_ferryd(["-s", "upgrade", "-p", pidfile], relay.workdir)
        assert rc == 0, (rc, out, err)
    else:
        os.kill(old, signal.SIGUSR2)
    new = poll(lambda: (read_pid(pidfile) not in (None, old) and read_pid(pidfile + ".oldbin") == old
                        and read_pid(pidfile)), wait(10), what="PIDFILE (new) and PIDFILE.oldbin (old)")
    wait_text(relay.log_path, r"\b%d: upgrade: the new workers are up; both generations serve" % old, wait(10),
              since)
    assert alive(old) and alive(new)
    return new


def finish_upgrade(relay, pidfile, old, new, ids, min_index):
    """WINCH the old master, wait for its workers to leave and the tunnels to
    be on new workers, then QUIT it and wait for it to exit."""
    since = size_of(relay.log_path)
    old_workers = [p for p in descendants(old) if p != new and p not in descendants(new)]
    os.kill(old, signal.SIGWINCH)
    wait_text(relay.log_path, r"\b%d: SIGWINCH" % old, wait(5), since)

    def moved():
        t = api_tunnels(relay)
        return t if all(i in t and t[i]["worker"] >= min_index and t[i]["worker"] < min_index + 32
                        for i in ids) else None
    poll(moved, wait(15), interval=0.1, what="tunnels %s on the new generation's workers (%d..)" % (ids, min_index))
    poll(lambda: not any(alive(p) for p in old_workers), wait(40), what="the old workers to leave after WINCH")
    os.kill(old, signal.SIGQUIT)
    poll(lambda: not alive(old), wait(15), what="the old master to exit after QUIT")
    assert read_pid(pidfile) == new
    assert not os.path.exists(pidfile + ".oldbin"), "PIDFILE.oldbin left behind"


@pytest.mark.valgrind
def test_binary_upgrade_under_load(relay_factory, agent_factory, masters, workdir):
    """USR2 + WINCH + QUIT while fresh and keep-alive requests flow and a
    long download is in flight: zero failed requests, the download intact,
    the tunnel on a new-generation worker (index >= 32), the old master
    gone, the new one serving and reloadable."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2,
                               limits={"drain_timeout": "%ds" % wait(40), "tunnel_wait": "3s"})
    agent = agent_factory(relay, subdomain="app")
    host = relay.host("app")
    old = relay.proc.pid
    size = 96 << 20
    dl = Download(relay.port, host, size, rate=12 << 20, timeout=wait(30))
    load = Load(relay.port, [host], fresh=2, keepalive=1).start()
    dl.start()
    try:
        assert dl.began.wait(wait(10)) and dl.error is None, dl.error
        time.sleep(0.5)
        new = start_upgrade(relay, pidfile, via="-s")
        new_workers = descendants(new)
        assert len(new_workers) == 2, new_workers
        time.sleep(1.0)     # both generations serve
        finish_upgrade(relay, pidfile, old, new, ["app"], 32)
        time.sleep(1.0)
        dl.check(wait(30))
    finally:
        load.stop()
    print("upgrade: " + load.summary())
    load.assert_clean()
    assert_no_errors(relay)
    t = api_tunnels(relay)["app"]
    assert t["worker"] >= 32 and t["worker_pid"] in descendants(new), (t, descendants(new))
    assert not alive(old)
    agent.wait_log(r"relay asked to move \(GOAWAY\)", wait(1))
    # The new master serves, and takes signals through the pidfile.
    assert get(relay.port, host).status == 200
    since = size_of(relay.log_path)
    rc, out, err = run_ferryd(["-s", "reload", "-p", pidfile], workdir)
    assert rc == 0, (rc, out, err)
    wait_text(relay.log_path, r"\b%d: reload: .* applied" % new, wait(10), since)
    assert get(relay.port, host).status == 200


def test_both_generations_accept(relay_factory, agent_factory, masters, workdir):
    """Between USR2 and WINCH both generations serve: new connections are
    accepted by old and new workers alike (the access log names the
    accepting worker of a request that names no tunnel)."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2)
    old = relay.proc.pid
    new = start_upgrade(relay, pidfile, via="kill")
    since = size_of(relay.log_path)
    for i in range(200):
        get(relay.port, "127.0.0.1:%d" % relay.port, path="/gen%d" % i)
    time.sleep(0.3)
    seen = {int(w) for w in re.findall(r'"GET /gen\d+" 404 .*worker=(\d+)', read_from(relay.log_path, since))}
    assert seen, read_from(relay.log_path, since)[-2000:]
    assert any(w < 32 for w in seen) and any(w >= 32 for w in seen), \
        "workers that accepted 200 connections: %s (old 0..1, new 32..33)" % sorted(seen)
    assert alive(old) and alive(new)


@pytest.fixture
def bin_link(workdir):
    """A directory with `ferryd` as a symlink to the real binary; repoint(target)."""
    d = os.path.join(workdir, "bin")
    os.mkdir(d)
    link = os.path.join(d, "ferryd")
    real = os.path.realpath(harness.FERRYD)

    class Link:
        path = link

        def repoint(self, target):
            tmp = link + ".tmp"
            os.symlink(target, tmp)
            os.replace(tmp, link)

    lk = Link()
    lk.real = real
    lk.repoint(real)
    return lk


def start_via(relay, exe):
    """Start relay's ferryd as exe (argv[0], what USR2 execs)."""
    relay.write_config()
    relay.starts += 1
    relay.proc = harness.Proc(relay.name, [exe, "-c", relay.config_path], relay.workdir)
    relay.procs.append(relay.proc)
    relay.wait_ready()
    return relay


FAILED = {
    "exit1": "#!/bin/sh\necho 'this binary is broken' >&2\nexit 1\n",
    "crash": "#!/bin/sh\nkill -SEGV $$\n",
    "bad_config": None,   # the real binary, but the config is now invalid
}


@pytest.mark.parametrize("how", sorted(FAILED))
def test_failed_upgrade_keeps_the_old_master(relay_factory, agent_factory, masters, workdir, bin_link, how):
    """USR2 with a new binary that dies at start: the old master logs it and
    goes on serving (requests never fail), PIDFILE holds the old pid again,
    no PIDFILE.oldbin; the tunnel is untouched. A later upgrade with a good
    binary works."""
    pidfile = os.path.join(workdir, "ferryd.pid")
    relay = relay_factory(start=False, workers=2, pid=pidfile)
    masters.watch(relay, pidfile)
    start_via(relay, bin_link.path)
    old = relay.proc.pid
    poll(lambda: read_pid(pidfile) == old, wait(5), what="the pidfile")
    agent = agent_factory(relay, subdomain="app")
    before = api_tunnels(relay)["app"]
    workers = sorted(descendants(old))

    if FAILED[how] is not None:
        script = os.path.join(workdir, "broken-ferryd")
        with open(script, "w") as f:
            f.write(FAILED[how])
        os.chmod(script, 0o755)
        bin_link.repoint(script)
    else:
        with open(relay.config_path, "a") as f:
            f.write("bogus_key: 1\n")
    load = Load(relay.port, [relay.host("app")], fresh=1, keepalive=1).start()
    try:
        time.sleep(0.3)
        since = size_of(relay.log_path)
        rc, out, err = run_ferryd(["-s", "upgrade", "-p", pidfile], workdir)
        assert rc == 0, (rc, out, err)
        m = wait_text(relay.log_path, r"\b%d: upgrade: the new master \(pid (\d+)\) (exited with status|was killed by"
                      r" signal) (\d+)" % old, wait(10), since)
        if how == "crash":
            assert m.group(2).startswith("was killed") and m.group(3) == "11", m.group(0)
        else:
            assert m.group(2).startswith("exited") and m.group(3) == "1", m.group(0)
        wait_text(relay.log_path, r"\b%d: upgrade: this master goes on serving" % old, wait(5), since)
        poll(lambda: read_pid(pidfile) == old, wait(5), what="PIDFILE back to the old pid")
        assert not os.path.exists(pidfile + ".oldbin")
        time.sleep(1.0)
    finally:
        load.stop()
    print("failed upgrade (%s): %s" % (how, load.summary()))
    load.assert_clean(min_each=5)
    assert relay.proc.running()
    assert sorted(descendants(old)) == workers
    after = api_tunnels(relay)["app"]
    assert (after["connected_since"], after["agent"], after["worker_pid"]) == \
        (before["connected_since"], before["agent"], before["worker_pid"]), (before, after)
    assert agent_sessions(agent) == 1

    # Fixed: the same master can be upgraded now.
    bin_link.repoint(bin_link.real)
    relay.write_config()
    new = start_upgrade(relay, pidfile)
    assert new != old
    assert get(relay.port, relay.host("app")).status == 200


def test_new_master_killed_after_start_leaves_the_old_one(relay_factory, agent_factory, masters, workdir):
    """The new master dies after it started (kill -9 before WINCH): the old
    master takes PIDFILE back, the new workers leave, requests go on."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2)
    agent_factory(relay, subdomain="app")
    old = relay.proc.pid
    new = start_upgrade(relay, pidfile)
    new_workers = descendants(new)
    os.kill(new, signal.SIGKILL)
    wait_text(relay.log_path, r"\b%d: upgrade: the new master \(pid %d\) was killed by signal 9" % (old, new),
              wait(10))
    poll(lambda: read_pid(pidfile) == old, wait(5), what="PIDFILE back to the old pid")
    assert not os.path.exists(pidfile + ".oldbin")
    poll(lambda: not any(alive(p) for p in new_workers), wait(10), what="the new workers to leave")
    for i in range(30):
        r = get(relay.port, relay.host("app"))
        assert r.status == 200, r
    t = api_tunnels(relay)["app"]
    assert t["worker"] < 32, t


# ---------------------------------------------------------------------------
# the acceptance run: 4 tunnels, 4 workers, 10 HUPs, 2 upgrades


def test_acceptance_reloads_and_upgrades_under_load(relay_factory, agent_factory, masters, workdir):
    """Load through 4 tunnels on 4 workers (fresh and keep-alive
    connections) for about 20 s while the master gets 10 HUPs and then 2
    binary upgrades (USR2 + WINCH + QUIT of the old master): zero failed or
    non-2xx answers, zero socket errors, every tunnel listed afterwards."""
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=4,
                               limits={"drain_timeout": "%ds" % wait(30), "tunnel_wait": "3s"})
    ids = ["acc%d" % i for i in range(4)]
    for i in ids:
        agent_factory(relay, subdomain=i)
    load = Load(relay.port, [relay.host(i) for i in ids], fresh=1, keepalive=1).start()
    t0 = time.monotonic()
    try:
        time.sleep(1.0)
        for i in range(10):
            relay.cfg["limits"] = dict(relay.cfg["limits"], idle_timeout="%ds" % (60 + i))
            relay.write_config()
            reload_and_wait(relay, pidfile, via="kill")
            time.sleep(0.3)
        base = 32
        for u in range(2):
            old = read_pid(pidfile)
            new = start_upgrade(relay, pidfile)
            time.sleep(1.0)
            finish_upgrade(relay, pidfile, old, new, ids, base)
            base = 32 - base
            time.sleep(0.5)
        left = 20 - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)
    finally:
        load.stop()
    print("acceptance (10 HUP + 2 upgrades, %.1fs): %s" % (time.monotonic() - t0, load.summary()))
    load.assert_clean()
    assert_no_errors(relay)
    t = api_tunnels(relay)
    assert sorted(t) == ids, t
    assert all(t[i]["worker"] < 32 for i in ids), t   # the third generation uses 0..3 again
    assert len(re.findall(r"reload: .* applied", read_from(relay.log_path))) >= 10


# ---------------------------------------------------------------------------
# logs


def test_usr1_reopens_the_log_file(relay_factory, agent_factory, masters, workdir):
    """logrotate: move the log file away, -s reopen: a new file is created
    and gets the next access lines; the moved file keeps the earlier ones."""
    logf = os.path.join(workdir, "ferry.log")
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2, log={"file": logf, "format": "text"})
    agent_factory(relay, subdomain="app")
    host = relay.host("app")
    for i in range(6):
        assert get(relay.port, host, path="/before-%d" % i).status == 200
    wait_text(logf, r'"GET /before-5"', wait(5))
    moved = logf + ".1"
    os.rename(logf, moved)
    assert get(relay.port, host, path="/between").status == 200
    rc, out, err = run_ferryd(["-s", "reopen", "-p", pidfile], workdir)
    assert rc == 0, (rc, out, err)
    wait_text(logf, r"log file reopened", wait(5))
    time.sleep(0.3)     # the workers reopen on the master's signal
    for i in range(6):
        assert get(relay.port, host, path="/after-%d" % i).status == 200
    for i in range(6):
        wait_text(logf, r'"GET /after-%d" 200' % i, wait(5))
    new_text, old_text = read_from(logf), read_from(moved)
    assert "/before-" not in new_text and "/between" not in new_text, new_text
    assert "/after-" not in old_text, old_text
    for i in range(6):
        assert '"GET /before-%d" 200' % i in old_text
    wait_text(moved, r'"GET /between" 200', wait(5))


ACCESS_TEXT = re.compile(
    r'^(?P<t>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (?P<client>127\.0\.0\.1:\d+) tunnel=(?P<tunnel>\S+) '
    r'"(?P<method>\S+) (?P<path>\S+)" (?P<status>\d{3}) (?P<bytes>\d+) (?P<ms>\d+)ms '
    r'worker=(?P<worker>\d+) handoff=(?P<handoff>[01])(?: error=(?P<error>\S+))?$')


def test_access_log_text(relay_factory, agent_factory, masters, workdir):
    """Text access lines: client (the connection's own address), tunnel,
    method, path, status, bytes, duration, worker (the tunnel's owner),
    handoff; errors carry their code."""
    logf = os.path.join(workdir, "ferry.log")
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2, log={"file": logf, "format": "text"})
    agent_factory(relay, subdomain="app")
    owner = api_tunnels(relay)["app"]["worker"]
    ports = {}
    for i in range(12):
        with RawConn(relay.port) as c:
            ports["/a%d?x=1" % i] = c.sock.getsockname()[1]
            r = c.request("GET", "/a%d?x=1" % i, relay.host("app"))
            assert r.status == 200
            body_len = len(r.body)
    with RawConn(relay.port) as c:
        r = c.request("POST", "/slow?s=0.3", relay.host("app"), body=b"hello")
        assert r.status == 200
    assert get(relay.port, relay.host("nope")).status == 404
    assert get(relay.port, "127.0.0.1:%d" % relay.port, path="/none").status == 404
    wait_text(logf, r'"GET /none" 404', wait(5))
    lines = [m.groupdict() for m in map(ACCESS_TEXT.match, read_from(logf).splitlines()) if m]
    by_path = {l["path"]: l for l in lines}
    for p, port in ports.items():
        l = by_path.get(p)
        assert l, "no access line for %s in:\n%s" % (p, read_from(logf))
        assert l["client"] == "127.0.0.1:%d" % port, l
        assert (l["tunnel"], l["method"], l["status"]) == ("app", "GET", "200"), l
        assert int(l["bytes"]) >= body_len, l
        assert int(l["worker"]) == owner, "served by the owner, worker %d: %s" % (owner, l)
        assert l["error"] is None
    handoffs = {l["handoff"] for p, l in by_path.items() if p in ports}
    assert "1" in handoffs, "12 fresh connections on 2 workers, none handed over? %s" % handoffs
    slow = by_path["/slow?s=0.3"]
    assert slow["method"] == "POST" and int(slow["ms"]) >= 300, slow
    off = by_path["/echo"]
    assert (off["tunnel"], off["status"], off["error"]) == ("nope", "404", "tunnel_offline"), off
    none = by_path["/none"]
    assert (none["tunnel"], none["status"], none["error"]) == ("-", "404", "no_tunnel"), none


def test_access_log_json(relay_factory, agent_factory, masters, workdir):
    """log.format json: every line of the file is one JSON object (event
    lines too); access lines carry the fields; a 404 its error code; odd
    bytes in the path stay valid JSON."""
    logf = os.path.join(workdir, "ferry.log")
    relay, pidfile = ops_relay(relay_factory, masters, workdir, workers=2, log={"file": logf, "format": "json"})
    agent_factory(relay, subdomain="app")
    owner = api_tunnels(relay)["app"]["worker"]
    for i in range(6):
        assert get(relay.port, relay.host("app"), path="/j%d?q=%%22x%%22" % i).status == 200
    odd = '/odd"quote\\back?\x01'
    with RawConn(relay.port) as c:
        c.send(('GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' % (odd, relay.host("app")))
               .encode("latin-1"))
        odd_status = c.read_response().status
    assert get(relay.port, relay.host("nope")).status == 404
    reload_and_wait(relay, pidfile, log=logf)     # event lines
    assert get(relay.port, "127.0.0.1:%d" % relay.port, path="/last").status == 404
    wait_text(logf, r'"/last"', wait(5))
    with open(logf, "rb") as f:
        raw = f.read()
    objs = []
    for n, line in enumerate(raw.split(b"\n")[:-1], 1):
        try:
            objs.append(json.loads(line.decode("utf-8")))   # strict UTF-8, one object a line
        except ValueError:
            raise AssertionError("line %d is not JSON: %r" % (n, line))
    assert raw.endswith(b"\n")
    assert all(isinstance(o, dict) for o in objs)
    access = [o for o in objs if o.get("type") == "access"]
    events = [o for o in objs if o.get("type") != "access"]
    assert events and any("reload" in o.get("msg", "") for o in events), events
    fields = {"t", "client", "tunnel", "method", "path", "status", "bytes", "worker", "handoff"}
    for o in access:
        missing = fields - set(o)
        assert not missing and ("duration_ms" in o or "duration" in o), "fields missing %s: %s" % (missing, o)
    by_path = {o["path"]: o for o in access}
    for i in range(6):
        o = by_path["/j%d?q=%%22x%%22" % i]
        assert (o["tunnel"], o["method"], o["status"], o["worker"]) == ("app", "GET", 200, owner), o
        assert re.fullmatch(r"127\.0\.0\.1:\d+", o["client"]) and o["bytes"] > 0, o
        assert isinstance(o["handoff"], bool)
    o = by_path["/echo"]
    assert (o["tunnel"], o["status"], o.get("error")) == ("nope", 404, "tunnel_offline"), o
    o = by_path["/last"]
    assert (o["status"], o.get("error")) == (404, "no_tunnel"), o
    if odd_status == 400:
        assert any(o["status"] == 400 and o.get("error") == "bad_request" for o in access), access
    else:
        assert odd in by_path, "the odd path logged as is: %s" % sorted(by_path)
