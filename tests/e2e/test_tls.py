"""
test_tls.py: HTTPS end to end (issue 5): listen_tls, SNI routing before the
handshake (the raw socket moves to the tunnel's owner), the TLS pump (a
request that names its tunnel only inside is carried as plaintext to the
owner), WebSocket over TLS, agents over wss:// (--ca, --insecure, the
system's CAs), agents_require_tls, session resumption across workers
(shared ticket keys), hostile ClientHellos, 421 for a Host that is not the
SNI's tunnel, X-Forwarded-Proto, certificates re-read on reload, -t on TLS
configs, OCSP stapling, and worker fds back to their baseline afterwards.

The test CAs and certificates are made here (tlsca.py, openssl CLI, EC
P-256): CA 1 signs a server certificate for localhost, 127.0.0.1 and explicit
names t0.localhost ... t9.localhost (curl refuses a *.localhost wildcard);
CA 2, unrelated, signs the same names (the untrusted case, and the
certificate swapped in on reload). Everything talks to 127.0.0.1, every wait
is bounded (harness.wait), every process is stopped by its pid.
"""

import asyncio
import concurrent.futures
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time

import pytest
import websockets

import harness
import origin as origin_mod
import tlsca
from harness import RawConn, children_of, free_port, poll, session, tcp_open, wait
from test_ops import finish_upgrade, masters, start_upgrade  # noqa: F401 (masters is a fixture)

NAMES = ["t%d" % i for i in range(8)]
CERT_NAMES = ["t%d.localhost" % i for i in range(10)]
MIB = 1 << 20
BIG = 10 * MIB


# ---------------------------------------------------------------------------
# certificates, shared by the module


@pytest.fixture(scope="module")
def pki():
    d = tempfile.mkdtemp(prefix="ferry-e2e-pki-")
    try:
        p = tlsca.make_pki(d, CERT_NAMES)
        # a 10 MiB random body for the uploads
        p["upload"] = os.path.join(d, "upload.bin")
        data = os.urandom(BIG)
        with open(p["upload"], "wb") as f:
            f.write(data)
        p["upload_sha256"] = hashlib.sha256(data).hexdigest()
        p["dir"] = d
        yield p
    finally:
        if harness.LEAVE:
            print("ferry e2e: test PKI kept in %s" % d)
        else:
            shutil.rmtree(d, ignore_errors=True)


def client_ctx(cafile):
    """A client context that trusts only cafile (and checks host names)."""
    return ssl.create_default_context(cafile=cafile)


# ---------------------------------------------------------------------------
# relays and agents


def tls_relay(relay_factory, pki, start=True, tls=None, **cfg):
    """A relay with a plain listener (relay.port) and an HTTPS one
    (relay.tls_port)."""
    tls_port = free_port()
    t = {"cert": pki["server"], "key": pki["server_key"]}
    t.update(tls or {})
    relay = relay_factory(start=False, listen_tls=["127.0.0.1:%d" % tls_port], tls=t, **cfg)
    relay.tls_port = tls_port
    if start:
        relay.start()
        poll(lambda: tcp_open(tls_port), wait(10), what="the HTTPS listener")
    return relay


def worker_pids(relay):
    return sorted(children_of(relay.proc.pid))


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def api_tunnels(relay):
    r = session().get(relay.admin_url("/api/tunnels"), timeout=wait(10))
    assert r.status_code == 200, r.text
    return {t["id"]: t for t in r.json()["tunnels"]}


def metrics(relay):
    r = session().get(relay.admin_url("/metrics"), timeout=wait(10))
    assert r.status_code == 200, r.text
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


SENT = 'ferry_handoffs_total{outcome="sent"}'
RECEIVED = 'ferry_handoffs_total{outcome="received"}'
TLS_HELLO_ERRORS = 'ferry_errors_total{code="tls_hello"}'


def start_agents(relay, agent_factory, names, **kw):
    agents = {}
    for n in names:
        agents[n] = agent_factory(relay, subdomain=n, name="ferry-" + n, **kw)
    return agents


def eight_tunnels(relay_factory, agent_factory, pki):
    """4 workers, tunnel_wait at its default, agents t0..t7 over ws:// that
    the relay spreads over every worker (checked in /api/tunnels)."""
    relay = tls_relay(relay_factory, pki, workers=4, limits={"tunnel_wait": "3s"})
    start_agents(relay, agent_factory, NAMES)
    tunnels = api_tunnels(relay)
    assert sorted(tunnels) == NAMES, tunnels
    owners = {t["worker"] for t in tunnels.values()}
    assert owners == {0, 1, 2, 3}, "tunnels spread over the 4 workers: %s" % {
        n: t["worker"] for n, t in tunnels.items()}
    pids = set(worker_pids(relay))
    assert {t["worker_pid"] for t in tunnels.values()} == pids, (tunnels, pids)
    return relay, tunnels


# ---------------------------------------------------------------------------
# clients


def curl(args, timeout=None):
    """Run curl (never through a proxy); the CompletedProcess."""
    timeout = timeout or wait(120)
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", str(int(timeout))] + [str(a) for a in args]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + wait(30))


def resolve(host, port):
    """curl --resolve for host:port (localhost names) to 127.0.0.1."""
    return ["--resolve", "%s:%d:127.0.0.1" % (host, port)]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def curl_download(cafile, host, port, path, out, size):
    """GET https://host:port/path with curl --cacert; checks status, length
    and checksum of the origin's pattern."""
    url = "https://%s:%d%s" % (host, port, path)
    p = curl(["--fail", "--cacert", cafile, "-o", out, "-w", "%{http_code} %{size_download}"]
             + resolve(host, port) + [url])
    assert p.returncode == 0, "curl %s: exit %d: %s" % (url, p.returncode, p.stderr.decode(errors="replace"))
    assert p.stdout.decode().split() == ["200", str(size)], (url, p.stdout)
    got = sha256_file(out)
    os.unlink(out)
    assert got == origin_mod.pattern_sha256(size), "%s: the body's checksum differs" % url
    return url


def curl_upload(cafile, host, port, path, pki):
    """POST the 10 MiB random body with curl --data-binary; the origin's
    checksum of what it received must be ours."""
    url = "https://%s:%d%s" % (host, port, path)
    p = curl(["--fail", "--cacert", cafile, "-H", "Content-Type: application/octet-stream",
              "--data-binary", "@" + pki["upload"]] + resolve(host, port) + [url])
    assert p.returncode == 0, "curl %s: exit %d: %s" % (url, p.returncode, p.stderr.decode(errors="replace"))
    j = json.loads(p.stdout)
    assert j["length"] == BIG, (url, j)
    assert j["sha256"] == pki["upload_sha256"], "%s: the origin received other bytes" % url
    return url


def curl_status(cafile, host, port, path="/echo", extra=()):
    url = "https://%s:%d%s" % (host, port, path)
    p = curl(["--cacert", cafile, "-o", "/dev/null", "-w", "%{http_code}"] + list(extra) + resolve(host, port)
             + [url], timeout=wait(30))
    return p.returncode, p.stdout.decode(), p.stderr.decode(errors="replace")


class TlsConn(RawConn):
    """RawConn over TLS: python's ssl with server_hostname=sni."""

    def __init__(self, port, ctx, sni, timeout=None):
        self.timeout = timeout or wait(15)
        raw = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=sni)
        except BaseException:
            raw.close()
            raise
        self.buf = bytearray()


def https_get(port, ctx, sni, host, path="/echo", headers=()):
    with TlsConn(port, ctx, sni) as c:
        return c.request("GET", path, host, headers=[("Connection", "close")] + list(headers))


def echo_header(resp, name):
    vals = [v for k, v in resp.json()["headers"] if k.lower() == name.lower()]
    return vals


class HostConnection(http.client.HTTPSConnection):
    """HTTPSConnection to 127.0.0.1 with SNI and certificate name `host`."""

    def __init__(self, host, port, ctx, timeout):
        super().__init__(host, port, context=ctx, timeout=timeout)
        self._create_connection = lambda addr, *a, **k: socket.create_connection(("127.0.0.1", addr[1]), *a, **k)


async def ws_echo(uri, port, ctx, sni, count=12):
    """A WebSocket session over TLS: messages of several sizes (one of 1 MiB
    binary, one of 1 MiB text) echoed back unchanged."""
    async with websockets.connect(uri, host="127.0.0.1", port=port, ssl=ctx, server_hostname=sni,
                                  max_size=None, ping_interval=None, open_timeout=wait(15),
                                  close_timeout=wait(5), compression=None) as ws:
        rng = random.Random(5)
        for i in range(count):
            if i == count // 2:
                msg = os.urandom(MIB)
            elif i == count // 2 + 1:
                msg = "y" * MIB
            elif i % 2:
                msg = "text %d %s" % (i, "\u00e9" * rng.randint(0, 500))
            else:
                msg = os.urandom(rng.randint(0, 70000))
            await ws.send(msg)
            got = await asyncio.wait_for(ws.recv(), wait(20))
            assert type(got) is type(msg), (uri, i)
            assert got == msg, (uri, i)
        await ws.close()
        return ws.close_code


def s_client(port, servername, cafile, request, args=(), timeout=None):
    """openssl s_client: send request, read until the relay closes; its
    stdout (the handshake report and the response)."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername", servername,
            "-CAfile", cafile, "-ign_eof"] + list(args)
    p = subprocess.run(argv, input=request, capture_output=True, timeout=timeout or wait(30))
    return p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def closed_by_relay(sock, timeout):
    """Read until the relay closes (EOF or reset): True, or False if bytes
    came or timeout passed."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except socket.timeout:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    return data == b""


def send_all_or_reset(sock, data):
    """Send, tolerating the relay cutting the connection while we do."""
    try:
        sock.sendall(data)
        return True
    except (ConnectionResetError, BrokenPipeError):
        return False


def client_hello(ctx, sni):
    """The ClientHello python's ssl would send (one or more TLS records),
    with the SSLObject and BIOs to finish the handshake by hand."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    assert hello[:1] == b"\x16", hello[:16]
    return obj, inc, out, hello


def finish_by_hand(sock, obj, inc, out, request):
    """Complete a handshake driven through memory BIOs on sock, send request,
    read the response to EOF (Connection: close): the response bytes."""
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = out.read()
            if pending:
                sock.sendall(pending)
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError("the relay closed during the handshake")
            inc.write(chunk)
    pending = out.read()
    if pending:
        sock.sendall(pending)
    obj.write(request)
    sock.sendall(out.read())
    resp = bytearray()
    while True:
        try:
            d = obj.read(65536)
        except ssl.SSLWantReadError:
            chunk = sock.recv(65536)
            if not chunk:
                break
            inc.write(chunk)
            continue
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            break
        if not d:
            break
        resp += d
    return bytes(resp)


def parse_head(resp):
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


def records(hs_payload, sizes):
    """Split a handshake message into TLS records of the given sizes (the
    last takes the rest)."""
    out = b""
    off = 0
    for i, n in enumerate(sizes + [len(hs_payload)]):
        piece = hs_payload[off:off + n] if i < len(sizes) else hs_payload[off:]
        if not piece:
            break
        out += b"\x16\x03\x01" + struct.pack(">H", len(piece)) + piece
        off += len(piece)
    return out


def hello_payload(hello):
    """The handshake bytes of a ClientHello sent as TLS records."""
    out = b""
    off = 0
    while off < len(hello):
        assert hello[off] == 0x16
        n = struct.unpack_from(">H", hello, off + 3)[0]
        out += hello[off + 5:off + 5 + n]
        off += 5 + n
    return out


def log_since(relay, offset):
    with open(relay.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def access_lines(relay, regex):
    rx = re.compile(regex)
    return [line for line in relay.log().splitlines() if rx.search(line)]


# ---------------------------------------------------------------------------
# 1. SNI routing, the raw socket handed to the tunnel's owner


def test_sni_raw_handoff_to_every_worker(relay_factory, agent_factory, pki, workdir):
    """curl --cacert https://tN.localhost:PORT/ for 8 tunnels owned by 4
    workers: 10 MiB down and 10 MiB up each, compared by checksum; the
    connections that land on a non-owner move before the handshake."""
    relay, tunnels = eight_tunnels(relay_factory, agent_factory, pki)
    before = metrics(relay)

    def one(n):
        curl_download(pki["ca"], "%s.localhost" % n, relay.tls_port, "/download?size=%d" % BIG,
                      os.path.join(workdir, "down-%s" % n), BIG)
        curl_upload(pki["ca"], "%s.localhost" % n, relay.tls_port, "/upload", pki)
        return n

    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        done = sorted(ex.map(one, NAMES))
    assert done == NAMES
    after = metrics(relay)
    assert after[SENT] > before[SENT], "no TLS connection was handed to an owner: %s -> %s" % (
        before[SENT], after[SENT])
    assert after[RECEIVED] > before[RECEIVED]
    # Each of the 16 requests was served (and logged) by its tunnel's owner.
    for n in NAMES:
        lines = poll(lambda: len(access_lines(relay, r'tunnel=%s "(GET /download|POST /upload)' % n)) >= 2
                     and access_lines(relay, r'tunnel=%s "(GET /download|POST /upload)' % n),
                     wait(10), what="access lines of %s" % n)
        for line in lines:
            assert re.search(r" 200 .* worker=%d " % tunnels[n]["worker"], line), (n, tunnels[n], line)
    assert worker_pids(relay) == sorted({t["worker_pid"] for t in tunnels.values()}), "a worker was replaced"


# ---------------------------------------------------------------------------
# 2. the pump: the tunnel is named inside the request


def test_pump_path_prefix_bodies(relay_factory, agent_factory, pki, workdir):
    """https://localhost:PORT/t/tN/...: the worker that terminates TLS hands
    the plaintext to the owner; 10 MiB down and up for a tunnel on each
    worker."""
    relay, tunnels = eight_tunnels(relay_factory, agent_factory, pki)
    one_per_worker = {}
    for n in NAMES:
        one_per_worker.setdefault(tunnels[n]["worker"], n)
    chosen = sorted(one_per_worker.values())
    assert len(chosen) == 4
    before = metrics(relay)

    def one(n):
        curl_download(pki["ca"], "localhost", relay.tls_port, "/t/%s/download?size=%d" % (n, BIG),
                      os.path.join(workdir, "down-%s" % n), BIG)
        curl_upload(pki["ca"], "localhost", relay.tls_port, "/t/%s/upload" % n, pki)
        return n

    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        assert sorted(ex.map(one, chosen)) == chosen
    after = metrics(relay)
    assert after[SENT] > before[SENT], "no plaintext end was handed to an owner"


@pytest.mark.valgrind
def test_pump_keepalive_moves_between_tunnels(relay_factory, agent_factory, pki):
    """One HTTPS keep-alive connection to localhost asking /t/t0/, /t/t1/,
    ... in turn: each request reaches its own tunnel (the plaintext end
    moves from owner to owner while the TLS session stays put)."""
    relay, tunnels = eight_tunnels(relay_factory, agent_factory, pki)
    ctx = client_ctx(pki["ca"])
    with TlsConn(relay.tls_port, ctx, "localhost") as c:
        for rnd in range(3):
            for n in NAMES:
                r = c.request("GET", "/t/%s/echo?r=%d" % (n, rnd), "localhost:%d" % relay.tls_port)
                assert r.status == 200, (n, r)
                assert echo_header(r, "X-Tunnel-Id") == [n], (n, r.json()["headers"])
                assert r.json()["path"] == "/echo?r=%d" % rnd
                assert echo_header(r, "X-Forwarded-Prefix") == ["/t/%s" % n]
                assert echo_header(r, "X-Forwarded-Proto") == ["https"]
        # and a 1 MiB download on the same connection at the end
        r = c.request("GET", "/t/t3/download?size=%d" % MIB, "localhost:%d" % relay.tls_port)
        assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == origin_mod.pattern_sha256(MIB)


# ---------------------------------------------------------------------------
# 3. WebSocket over TLS


def test_websocket_over_tls(relay_factory, agent_factory, origin, pki):
    """wss://tN.localhost:PORT/ (SNI path) and wss://localhost:PORT/t/tN/
    (pump path) through tunnels to the origin's WebSocket echo server, on
    two workers: messages echoed unchanged, a 1 MiB one included."""
    relay = tls_relay(relay_factory, pki, workers=2, limits={"tunnel_wait": "3s"})
    start_agents(relay, agent_factory, ["t0", "t1"], target=origin.ws_port)
    tunnels = api_tunnels(relay)
    assert sorted(tunnels) == ["t0", "t1"]
    assert {t["worker"] for t in tunnels.values()} == {0, 1}, tunnels
    ctx = client_ctx(pki["ca"])
    for n in ("t0", "t1"):
        uri = "wss://%s.localhost:%d/" % (n, relay.tls_port)
        assert asyncio.run(ws_echo(uri, relay.tls_port, ctx, "%s.localhost" % n)) == 1000, uri
        uri = "wss://localhost:%d/t/%s/" % (relay.tls_port, n)
        assert asyncio.run(ws_echo(uri, relay.tls_port, ctx, "localhost")) == 1000, uri


# ---------------------------------------------------------------------------
# 4. agents over wss://


def forwarding_lines(agent):
    return [line for line in agent.lines if line and harness.FORWARDING_RE.search(line)]


@pytest.mark.valgrind
def test_agent_over_wss_with_its_ca(relay_factory, agent_factory, pki, workdir):
    """ferry http --server wss://localhost:PORT --ca ca.pem connects: its
    Forwarding line is https://, and requests reach it over the plain
    listener and over HTTPS (10 MiB both ways through its TLS link). An IP
    literal in the URL is checked against the certificate's IP address."""
    relay = tls_relay(relay_factory, pki, workers=2)
    a = agent_factory("wss://localhost:%d" % relay.tls_port, subdomain="t2", args=["--ca", pki["ca"]])
    assert a.url == "https://t2.localhost:%d" % relay.tls_port, a.url
    assert "t2" in api_tunnels(relay)
    # over the plain listener
    with RawConn(relay.port) as c:
        r = c.request("GET", "/echo", relay.host("t2"), headers=[("Connection", "close")])
    assert r.status == 200, r
    assert echo_header(r, "X-Tunnel-Id") == ["t2"]
    assert echo_header(r, "X-Forwarded-Proto") == ["http"]
    # over HTTPS, both routes, with bodies
    rc, code, err = curl_status(pki["ca"], "t2.localhost", relay.tls_port)
    assert (rc, code) == (0, "200"), err
    curl_download(pki["ca"], "t2.localhost", relay.tls_port, "/download?size=%d" % BIG,
                  os.path.join(workdir, "down"), BIG)
    curl_upload(pki["ca"], "localhost", relay.tls_port, "/t/t2/upload", pki)
    # wss://127.0.0.1:PORT: verified against IP:127.0.0.1
    b = agent_factory("wss://127.0.0.1:%d" % relay.tls_port, subdomain="t3", args=["--ca", pki["ca"]])
    assert b.url == "https://t3.localhost:%d" % relay.tls_port, b.url
    rc, code, err = curl_status(pki["ca"], "t3.localhost", relay.tls_port)
    assert (rc, code) == (0, "200"), err
    assert "certificate verify failed" not in a.log() + b.log()


@pytest.mark.parametrize("how", ["other_ca", "system_cas"])
def test_agent_over_wss_refuses_an_untrusted_relay(relay_factory, pki, workdir, request, how):
    """--ca naming another CA, or no --ca (the system's CAs): the agent
    refuses the relay with "certificate verify failed" in its log and never
    forwards anything; stopped, it exits cleanly (no sanitizer report).

    The agent is started here rather than by agent_factory so that the
    sanitizer check of its exit is this test's own assertion."""
    relay = tls_relay(relay_factory, pki, workers=1)
    args = ["--ca", pki["ca2"]] if how == "other_ca" else []
    a = harness.Agent(workdir, harness.free_port(), server="wss://localhost:%d" % relay.tls_port,
                      subdomain="t4", args=args, name="ferry-untrusted")
    request.node.ferry_logs.append((a.name, a.log_path))
    try:
        a.start(wait_forwarding=False)
        line = a.wait_log(r"[^\n]*certificate verify failed[^\n]*", wait(20)).group(0)
        assert "lvl=eror" in line and "TLS handshake" in line and "localhost:%d" % relay.tls_port in line, line
        # it keeps refusing (at least two attempts), and never forwards
        poll(lambda: a.log().count("certificate verify failed") >= 2, wait(20), what="a second refusal")
        assert a.proc.running(), a.log()
        assert forwarding_lines(a) == [], a.lines
        assert "t4" not in api_tunnels(relay)
        assert 'msg="started tunnel"' not in a.log()
    finally:
        a.stop()
    found = harness.sanitizer_reports([a.log_path])
    assert not found, "sanitizer report at the agent's exit:\n%s" % found[0][1][:1500]


def test_agent_over_wss_insecure_connects_and_warns(relay_factory, agent_factory, pki):
    """--insecure: the agent connects to a relay whose CA it does not know,
    and says loudly that it does not verify."""
    relay = tls_relay(relay_factory, pki, workers=1)
    a = agent_factory("wss://localhost:%d" % relay.tls_port, subdomain="t5", args=["--insecure"])
    assert a.url == "https://t5.localhost:%d" % relay.tls_port
    line = a.wait_log(r"[^\n]*--insecure[^\n]*").group(0)
    assert "NOT be verified" in line and "lvl=warn" in line, line
    rc, code, err = curl_status(pki["ca"], "t5.localhost", relay.tls_port)
    assert (rc, code) == (0, "200"), err


def test_agent_ca_flag_needs_a_wss_relay(workdir):
    """--ca with a ws:// relay is a mistake the agent names."""
    p = subprocess.run([harness.FERRY, "http", "9", "--server", "ws://127.0.0.1:9", "--ca", "/nonexistent"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=wait(20), cwd=workdir,
                       env=dict(os.environ, HOME=workdir, XDG_CONFIG_HOME=os.path.join(workdir, ".config")))
    assert p.returncode != 0
    assert "wss://" in p.stderr.decode(), p.stderr


# ---------------------------------------------------------------------------
# 5. agents_require_tls


def test_agents_require_tls(relay_factory, agent_factory, pki):
    """agents_require_tls: true: an agent over ws:// is refused with 403 and
    the relay's reason in its log; one over wss:// connects."""
    relay = tls_relay(relay_factory, pki, workers=2, agents_require_tls=True)
    plain = agent_factory(relay, subdomain="t6", wait=False, name="ferry-plain")
    m = plain.wait_log(r'[^\n]*msg="tunnel refused by the relay"[^\n]*', wait(20))
    assert "status=403" in m.group(0), m.group(0)
    assert "TLS only" in m.group(0) and "wss://" in m.group(0), m.group(0)
    good = agent_factory("wss://localhost:%d" % relay.tls_port, subdomain="t7", args=["--ca", pki["ca"]],
                         name="ferry-tls")
    assert good.url == "https://t7.localhost:%d" % relay.tls_port
    rc, code, err = curl_status(pki["ca"], "t7.localhost", relay.tls_port)
    assert (rc, code) == (0, "200"), err
    # end users over plain HTTP are still served
    with RawConn(relay.port) as c:
        r = c.request("GET", "/echo", relay.host("t7"), headers=[("Connection", "close")])
    assert r.status == 200, r
    assert forwarding_lines(plain) == [], plain.lines
    assert "t6" not in api_tunnels(relay)
    assert metrics(relay)['ferry_errors_total{code="tls_required"}'] >= 1


# ---------------------------------------------------------------------------
# 6. session resumption across workers


@pytest.mark.parametrize("version", ["tls1_3", "tls1_2"])
def test_session_resumption_across_workers(relay_factory, pki, workdir, version):
    """openssl s_client -sess_out/-sess_in 10 times: every run after the
    first resumes ("Reused"), and the runs were terminated by at least 2
    different workers (shared ticket keys)."""
    relay = tls_relay(relay_factory, pki, workers=4)
    sess = os.path.join(workdir, "sess-" + version)
    args = ["-" + version]
    workers = {}
    runs = 10
    for i in range(runs):
        path = "/nothing-%s-%d" % (version, i)
        req = ("GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path).encode()
        extra = args + ["-sess_out", sess] + (["-sess_in", sess] if i > 0 else [])
        out, err = s_client(relay.tls_port, "localhost", pki["ca"], req, extra)
        assert "HTTP/1.1 404" in out, (i, out, err)
        assert "Verify return code: 0 (ok)" in out, out
        proto = "TLSv1.3" if version == "tls1_3" else "TLSv1.2"
        if i == 0:
            assert re.search(r"^New, %s" % proto, out, re.M), out
        else:
            assert re.search(r"^Reused, %s" % proto, out, re.M), (i, out)
        line = poll(lambda: access_lines(relay, r'"GET %s" 404 ' % re.escape(path)), wait(10),
                    what="the access line of %s" % path)[0]
        workers[i] = int(re.search(r" worker=(\d+)", line).group(1))
    assert len(set(workers.values())) >= 2, "every run on one worker: %s" % workers
    assert len(set(w for i, w in workers.items() if i > 0)) >= 1


# ---------------------------------------------------------------------------
# 7. hostile ClientHellos


def test_garbage_and_oversized_hellos_are_closed(relay_factory, agent_factory, pki):
    """With header_timeout at 60 s, so that a close comes from the hello
    check and not the timer: an HTTP request sent to the TLS port, a record
    too long, a ClientHello claiming 1 MiB and one spread over records past
    16 KiB are each closed; a good client is served before and after."""
    relay = tls_relay(relay_factory, pki, workers=2, limits={"header_timeout": "60s"})
    start_agents(relay, agent_factory, ["t0"])
    ctx = client_ctx(pki["ca"])
    assert https_get(relay.tls_port, ctx, "t0.localhost", "t0.localhost:%d" % relay.tls_port).status == 200
    before = metrics(relay)[TLS_HELLO_ERRORS]
    _, _, _, real = client_hello(ctx, "t0.localhost")
    payload = hello_payload(real)
    cases = {
        "http_request": b"GET / HTTP/1.1\r\nHost: t0.localhost\r\n\r\n",
        "not_handshake": b"\x17\x03\x03\x00\x10" + b"\0" * 16,
        "record_too_long": b"\x16\x03\x01\x40\x01" + b"\x01",
        # a whole first record (16 KiB) of a hello that says it is 1 MiB long
        "hello_claims_1MiB": b"\x16\x03\x01\x40\x00" + b"\x01\x10\x00\x00" + b"\x03\x03" + os.urandom(16378),
        # a 16,000-byte hello in 1,000-byte records: the 17th record overflows 16 KiB
        "hello_over_16KiB": records(b"\x01\x00\x3e\x80" + payload[4:] + os.urandom(16000 - len(payload) + 4),
                                    [1000] * 17),
        "not_a_client_hello": b"\x16\x03\x01\x00\x08" + b"\x02\x00\x00\x04" + b"\x03\x03\x00\x00",
    }
    for name, data in cases.items():
        s = socket.create_connection(("127.0.0.1", relay.tls_port), timeout=wait(10))
        try:
            send_all_or_reset(s, data)
            assert closed_by_relay(s, wait(10)), "%s: the relay kept the connection open" % name
        finally:
            s.close()
    after = metrics(relay)[TLS_HELLO_ERRORS]
    assert after - before >= len(cases), (before, after)
    assert https_get(relay.tls_port, ctx, "t0.localhost", "t0.localhost:%d" % relay.tls_port).status == 200
    assert harness.worker_deaths(relay) == []


class Slowloris(threading.Thread):
    """Keeps `n` connections that sent b"\\x16\\x03\\x01" and nothing more
    open until stopped; records (seconds until the relay closed it, or None
    when it did not within `limit`)."""

    def __init__(self, port, n, limit):
        super().__init__(daemon=True)
        self.port = port
        self.n = n
        self.limit = limit
        self.results = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = []

    def _one(self):
        t0 = time.monotonic()
        s = socket.create_connection(("127.0.0.1", self.port), timeout=wait(10))
        try:
            s.sendall(b"\x16\x03\x01")
            closed = closed_by_relay(s, self.limit)
            took = time.monotonic() - t0
        finally:
            s.close()
        with self.lock:
            self.results.append(took if closed else None)

    def run(self):
        while not self.stop_ev.is_set():
            self.threads = [t for t in self.threads if t.is_alive()]
            while len(self.threads) < self.n:
                t = threading.Thread(target=self._one, daemon=True)
                t.start()
                self.threads.append(t)
            self.stop_ev.wait(0.05)

    def stop(self):
        self.stop_ev.set()
        self.join(wait(10))
        for t in list(self.threads):
            t.join(self.limit + wait(10))
        assert not any(t.is_alive() for t in self.threads)


def test_slowloris_hello_closed_at_header_timeout(relay_factory, agent_factory, pki):
    """header_timeout 2s: connections that send 3 bytes of a record header
    and nothing more are closed after header_timeout (not before, and within
    a bounded wait), while 20 curls over HTTPS, by SNI and by path, keep
    succeeding meanwhile."""
    relay = tls_relay(relay_factory, pki, workers=2, limits={"header_timeout": "2s", "tunnel_wait": "3s"})
    start_agents(relay, agent_factory, ["t0", "t1"])
    limit = 2 + wait(10)
    sl = Slowloris(relay.tls_port, 6, limit)
    sl.start()
    try:
        poll(lambda: len(sl.threads) >= 6, wait(5), what="slowloris connections")
        time.sleep(0.2)
        for i in range(20):
            n = "t%d" % (i % 2)
            if i % 4 < 2:
                rc, code, err = curl_status(pki["ca"], "%s.localhost" % n, relay.tls_port, "/echo?i=%d" % i)
            else:
                rc, code, err = curl_status(pki["ca"], "localhost", relay.tls_port, "/t/%s/echo?i=%d" % (n, i))
            assert (rc, code) == (0, "200"), (i, rc, code, err)
    finally:
        sl.stop()
    assert sl.results, "no slowloris connection ended"
    assert None not in sl.results, "a slowloris hello stayed open past %ss: %s" % (limit, sl.results)
    assert min(sl.results) >= 1.9, "closed before header_timeout: %s" % sorted(sl.results)
    assert metrics(relay)[TLS_HELLO_ERRORS] >= len(sl.results)
    assert harness.worker_deaths(relay) == []


@pytest.mark.parametrize("how", ["split_sends", "split_records"])
def test_client_hello_in_pieces(relay_factory, agent_factory, pki, how):
    """A real ClientHello (python's ssl through memory BIOs) that arrives in
    pieces 0.3 s apart (split_sends: the record header itself cut), or as a
    handshake message spread over several TLS records (split_records): the
    relay reads its SNI, routes it to the owner, finishes the handshake and
    answers."""
    relay = tls_relay(relay_factory, pki, workers=2, limits={"header_timeout": "10s"})
    start_agents(relay, agent_factory, ["t0", "t1"])
    ctx = client_ctx(pki["ca"])
    for n in ("t0", "t1"):
        obj, inc, out, hello = client_hello(ctx, "%s.localhost" % n)
        s = socket.create_connection(("127.0.0.1", relay.tls_port), timeout=wait(15))
        try:
            if how == "split_sends":
                cuts = [3, len(hello) // 2]
                pieces = [hello[:cuts[0]], hello[cuts[0]:cuts[1]], hello[cuts[1]:]]
            else:
                payload = hello_payload(hello)
                pieces = [records(payload, [3, 100, 200])]
            for i, p in enumerate(pieces):
                if i:
                    time.sleep(0.3)
                s.sendall(p)
            req = ("GET /echo HTTP/1.1\r\nHost: %s.localhost:%d\r\nConnection: close\r\n\r\n"
                   % (n, relay.tls_port)).encode()
            resp = finish_by_hand(s, obj, inc, out, req)
        finally:
            s.close()
        status, hdrs, body = parse_head(resp)
        assert status == 200, resp[:500]
        j = json.loads(body)
        assert [v for k, v in j["headers"] if k.lower() == "x-tunnel-id"] == [n]
        assert obj.selected_alpn_protocol() in (None, "http/1.1")


# ---------------------------------------------------------------------------
# 8. 421, 9. X-Forwarded-Proto


@pytest.mark.valgrind
def test_host_other_than_sni_gets_421(relay_factory, agent_factory, pki):
    """SNI t0.localhost, Host t1.localhost: 421 with X-Ferry-Error:
    misdirected; the same connection then serves a request for t0; a Host
    that differs only in case is the same tunnel."""
    relay = tls_relay(relay_factory, pki, workers=2, limits={"tunnel_wait": "3s"})
    start_agents(relay, agent_factory, ["t0", "t1"])
    ctx = client_ctx(pki["ca"])
    with TlsConn(relay.tls_port, ctx, "t0.localhost") as c:
        r = c.request("GET", "/echo", "t1.localhost:%d" % relay.tls_port)
        assert r.status == 421, r
        assert r.header("X-Ferry-Error") == "misdirected", r
        assert (r.header("Content-Type") or "").startswith("text/plain"), r
        r = c.request("GET", "/echo", "t0.localhost:%d" % relay.tls_port)
        assert r.status == 200, r
        assert echo_header(r, "X-Tunnel-Id") == ["t0"]
        r = c.request("GET", "/echo", "T0.LOCALHOST:%d" % relay.tls_port)
        assert r.status == 200, r
    # the same with openssl s_client
    req = ("GET /echo HTTP/1.1\r\nHost: t1.localhost:%d\r\nConnection: close\r\n\r\n" % relay.tls_port).encode()
    out, err = s_client(relay.tls_port, "t0.localhost", pki["ca"], req)
    assert "HTTP/1.1 421" in out and "X-Ferry-Error: misdirected" in out, out
    assert metrics(relay)['ferry_errors_total{code="misdirected"}'] >= 2


def test_forwarded_proto(relay_factory, agent_factory, pki):
    """The origin sees X-Forwarded-Proto: https over TLS (SNI and pump
    routes) and http over the plain listener; a client's own value does not
    pass."""
    relay = tls_relay(relay_factory, pki, workers=2, limits={"tunnel_wait": "3s"})
    start_agents(relay, agent_factory, ["t0", "t1"])
    ctx = client_ctx(pki["ca"])
    for n in ("t0", "t1"):
        r = https_get(relay.tls_port, ctx, "%s.localhost" % n, "%s.localhost:%d" % (n, relay.tls_port))
        assert r.status == 200, r
        assert echo_header(r, "X-Forwarded-Proto") == ["https"], r.json()["headers"]
        assert echo_header(r, "X-Forwarded-Host") == ["%s.localhost:%d" % (n, relay.tls_port)]
        r = https_get(relay.tls_port, ctx, "localhost", "localhost:%d" % relay.tls_port, "/t/%s/echo" % n)
        assert r.status == 200, r
        assert echo_header(r, "X-Forwarded-Proto") == ["https"], r.json()["headers"]
        r = https_get(relay.tls_port, ctx, "localhost", "localhost:%d" % relay.tls_port, "/t/%s/echo" % n,
                      headers=[("X-Forwarded-Proto", "http")])
        assert echo_header(r, "X-Forwarded-Proto") == ["https"], r.json()["headers"]
        with RawConn(relay.port) as c:
            r = c.request("GET", "/echo", relay.host(n), headers=[("Connection", "close")])
        assert r.status == 200
        assert echo_header(r, "X-Forwarded-Proto") == ["http"], r.json()["headers"]


# ---------------------------------------------------------------------------
# 10. reload re-reads the certificate


def test_reload_rereads_the_certificate(relay_factory, agent_factory, pki, workdir):
    """Certificate files replaced (CA 1 -> CA 2) and SIGHUP: new connections
    verify with CA 2 and fail with CA 1; a keep-alive connection opened
    before still answers. A broken certificate on a later reload is refused
    and the running one stays."""
    cert = os.path.join(workdir, "live.pem")
    key = os.path.join(workdir, "live.key")
    shutil.copy(pki["server"], cert)
    shutil.copy(pki["server_key"], key)
    relay = tls_relay(relay_factory, pki, workers=2, tls={"cert": cert, "key": key},
                      limits={"tunnel_wait": "3s"})
    start_agents(relay, agent_factory, ["t0"])
    ctx1, ctx2 = client_ctx(pki["ca"]), client_ctx(pki["ca2"])
    old = HostConnection("t0.localhost", relay.tls_port, ctx1, wait(15))
    try:
        old.request("GET", "/echo?n=1")
        r = old.getresponse()
        assert r.status == 200
        assert json.loads(r.read())["path"] == "/echo?n=1"

        def replace(src, dst):
            tmp = dst + ".new"
            shutil.copy(src, tmp)
            os.replace(tmp, dst)
        replace(pki["server2"], cert)
        replace(pki["server2_key"], key)
        since = os.path.getsize(relay.log_path)
        os.kill(relay.proc.pid, signal.SIGHUP)
        for i in range(2):
            poll(lambda: re.search(r"worker %d: configuration reloaded" % i, log_since(relay, since)),
                 wait(10), what="worker %d reloaded" % i)
        assert "kept the TLS certificate" not in log_since(relay, since)
        for i in range(6):   # fresh connections, over both workers
            r = https_get(relay.tls_port, ctx2, "t0.localhost", "t0.localhost:%d" % relay.tls_port)
            assert r.status == 200, (i, r)
            with pytest.raises(ssl.SSLCertVerificationError):
                https_get(relay.tls_port, ctx1, "t0.localhost", "t0.localhost:%d" % relay.tls_port)
        rc, code, err = curl_status(pki["ca2"], "localhost", relay.tls_port, "/t/t0/echo")
        assert (rc, code) == (0, "200"), err
        rc, code, err = curl_status(pki["ca"], "localhost", relay.tls_port, "/t/t0/echo")
        assert rc == 60, (rc, code, err)   # curl: peer certificate cannot be authenticated
        # the connection from before the reload still answers
        old.request("GET", "/echo?n=2")
        r = old.getresponse()
        assert r.status == 200
        assert json.loads(r.read())["path"] == "/echo?n=2"

        # a broken certificate: the reload is refused, CA 2's stays
        with open(cert + ".new", "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        os.replace(cert + ".new", cert)
        since = os.path.getsize(relay.log_path)
        os.kill(relay.proc.pid, signal.SIGHUP)
        poll(lambda: re.search(r"reload: .*tls\.cert.*kept the running configuration", log_since(relay, since)),
             wait(10), what="the refused reload")
        r = https_get(relay.tls_port, ctx2, "t0.localhost", "t0.localhost:%d" % relay.tls_port)
        assert r.status == 200
        old.request("GET", "/echo?n=3")
        r = old.getresponse()
        assert r.status == 200
        r.read()
    finally:
        old.close()
    assert relay.proc.running()


# ---------------------------------------------------------------------------
# 11. ferryd -t on TLS configurations


def run_test_config(workdir, cfg):
    path = os.path.join(workdir, "tls-%d.yml" % free_port())
    with open(path, "w") as f:
        f.write(harness.to_yaml(cfg) + "\n")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0") if harness.SAN else None
    p = subprocess.run([harness.FERRYD, "-t", "-c", path], stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=wait(20), env=env)
    return p.returncode, p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


def base_cfg():
    return {"listen": ["127.0.0.1:%d" % free_port()], "admin": "127.0.0.1:%d" % free_port(), "workers": 1}


TLS_CONFIG_ERRORS = [
    ("listen_tls_without_tls", lambda p: {"listen_tls": ["127.0.0.1:%d" % free_port()]}, ["listen_tls", "tls.cert"]),
    ("missing_cert_file", lambda p: {"listen_tls": ["127.0.0.1:%d" % free_port()],
                                     "tls": {"cert": p["dir"] + "/nonexistent.pem", "key": p["server_key"]}},
     ["tls.cert", "nonexistent.pem"]),
    ("key_not_the_certs", lambda p: {"listen_tls": ["127.0.0.1:%d" % free_port()],
                                     "tls": {"cert": p["server"], "key": p["server2_key"]}}, ["tls.key"]),
    ("key_file_is_a_cert", lambda p: {"listen_tls": ["127.0.0.1:%d" % free_port()],
                                      "tls": {"cert": p["server"], "key": p["server"]}}, ["tls.key"]),
    ("missing_ocsp_file", lambda p: {"listen_tls": ["127.0.0.1:%d" % free_port()],
                                     "tls": {"cert": p["server"], "key": p["server_key"],
                                             "ocsp_staple": p["dir"] + "/nothing.der"}}, ["tls.ocsp_staple"]),
    ("require_tls_without_listen_tls", lambda p: {"agents_require_tls": True}, ["agents_require_tls"]),
    ("public_tls_listener_without_auth", lambda p: {"listen_tls": ["0.0.0.0:%d" % free_port()],
                                                    "tls": {"cert": p["server"], "key": p["server_key"]}},
     ["listen_tls", "auth"]),
]


@pytest.mark.parametrize("name,extra,words", TLS_CONFIG_ERRORS, ids=[c[0] for c in TLS_CONFIG_ERRORS])
def test_config_test_tls_errors(workdir, pki, name, extra, words):
    """ferryd -t exits 1 and names the key at fault."""
    rc, text = run_test_config(workdir, harness.merge(base_cfg(), extra(pki)))
    assert rc == 1, (rc, text)
    assert "configuration ok" not in text
    for w in words:
        assert w in text, "%r not in %r" % (w, text)


def test_config_test_tls_ok(workdir, pki):
    cfg = harness.merge(base_cfg(), {"listen_tls": ["127.0.0.1:%d" % free_port()], "agents_require_tls": True,
                                     "tls": {"cert": pki["server"], "key": pki["server_key"],
                                             "ocsp_staple": pki["ocsp"]}})
    rc, text = run_test_config(workdir, cfg)
    assert rc == 0, text
    assert "configuration ok" in text


# ---------------------------------------------------------------------------
# 12. OCSP stapling


def test_ocsp_staple(relay_factory, pki):
    """tls.ocsp_staple: openssl s_client -status sees the response (a real
    one, made with openssl ocsp); without it, none."""
    relay = tls_relay(relay_factory, pki, workers=1, tls={"ocsp_staple": pki["ocsp"]})
    req = b"GET /nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    for extra in ([], ["-tls1_2"]):
        out, err = s_client(relay.tls_port, "localhost", pki["ca"], req, ["-status"] + extra)
        assert "OCSP Response Status: successful" in out, out + err
        assert "Cert Status: good" in out, out
        assert "HTTP/1.1 404" in out
    plain = tls_relay(relay_factory, pki, workers=1)
    out, err = s_client(plain.tls_port, "localhost", pki["ca"], req, ["-status"])
    assert "OCSP response: no response sent" in out, out
    assert "HTTP/1.1 404" in out


# ---------------------------------------------------------------------------
# 13. everything on one relay, then the workers' fds back to their baseline


def test_worker_fds_return_to_baseline(relay_factory, agent_factory, origin, pki, workdir):
    """One relay with 4 workers: SNI and pump requests with bodies, a
    keep-alive connection over several tunnels, WebSocket over TLS, an agent
    over wss, hostile hellos (garbage, oversized, slowloris), 421 and
    resumed sessions; once the clients are gone, every worker's fd count
    returns to within 2 of its baseline."""
    relay = tls_relay(relay_factory, pki, workers=4, limits={"header_timeout": "2s", "tunnel_wait": "3s"})
    start_agents(relay, agent_factory, ["t0", "t1", "t2", "t3"])
    agent_factory(relay, target=origin.ws_port, subdomain="t4", name="ferry-ws")
    agent_factory("wss://localhost:%d" % relay.tls_port, subdomain="t5", args=["--ca", pki["ca"]],
                  name="ferry-wss")
    tunnels = api_tunnels(relay)
    assert sorted(tunnels) == ["t0", "t1", "t2", "t3", "t4", "t5"]
    ctx = client_ctx(pki["ca"])
    # warm up every worker's lazily made state, then the baseline
    for i in range(8):
        assert https_get(relay.tls_port, ctx, "localhost", "localhost", "/t/t%d/echo" % (i % 4)).status == 200
    workers = worker_pids(relay)
    assert len(workers) == 4
    time.sleep(0.5)
    baseline = {w: fd_count(w) for w in workers}

    # bodies, both routes, including the wss agent's tunnel
    for n in ("t0", "t1", "t5"):
        curl_download(pki["ca"], "%s.localhost" % n, relay.tls_port, "/download?size=%d" % MIB,
                      os.path.join(workdir, "d"), MIB)
        curl_download(pki["ca"], "localhost", relay.tls_port, "/t/%s/download?size=%d" % (n, MIB),
                      os.path.join(workdir, "d"), MIB)
    curl_upload(pki["ca"], "t2.localhost", relay.tls_port, "/upload", pki)
    # keep-alive over every tunnel, then closed by us mid-life
    with TlsConn(relay.tls_port, ctx, "localhost") as c:
        for n in ("t0", "t1", "t2", "t3", "t5", "t0"):
            assert c.request("GET", "/t/%s/echo" % n, "localhost").status == 200
    # WebSocket over TLS
    assert asyncio.run(ws_echo("wss://t4.localhost:%d/" % relay.tls_port, relay.tls_port, ctx,
                               "t4.localhost", count=6)) == 1000
    assert asyncio.run(ws_echo("wss://localhost:%d/t/t4/" % relay.tls_port, relay.tls_port, ctx,
                               "localhost", count=6)) == 1000
    # 421
    with TlsConn(relay.tls_port, ctx, "t0.localhost") as c:
        assert c.request("GET", "/echo", "t1.localhost").status == 421
    # hostile hellos
    hostile = []
    for data in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"\x16\x03\x01\x40\x00\x01\x10\x00\x00" + os.urandom(16380), b"\x16\x03\x01"):
        s = socket.create_connection(("127.0.0.1", relay.tls_port), timeout=wait(10))
        send_all_or_reset(s, data)
        hostile.append(s)
    for s in hostile:
        assert closed_by_relay(s, 2 + wait(10))
        s.close()
    # a handshake abandoned half way: the client sends its hello and leaves
    obj, inc, out, hello = client_hello(ctx, "t1.localhost")
    s = socket.create_connection(("127.0.0.1", relay.tls_port), timeout=wait(10))
    s.sendall(hello)
    s.recv(1)
    s.close()
    # resumed sessions
    sess = os.path.join(workdir, "sess")
    req = b"GET /nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    for i in range(4):
        out_, err = s_client(relay.tls_port, "localhost", pki["ca"], req,
                             ["-sess_out", sess] + (["-sess_in", sess] if i else []))
        assert "HTTP/1.1 404" in out_, out_

    def settled():
        now = {w: fd_count(w) for w in workers}
        return now if all(now[w] <= baseline[w] + 2 for w in workers) else None
    try:
        poll(settled, wait(30), interval=0.25, what="worker fd counts back to baseline")
    except AssertionError:
        raise AssertionError("fd counts: baseline %s, now %s" % (baseline, {w: fd_count(w) for w in workers}))
    assert worker_pids(relay) == workers, "a worker was replaced"
    assert harness.worker_deaths(relay) == []


# ---------------------------------------------------------------------------
# more: pipelining over the pump, no SNI, tunnel_wait on the SNI path, a
# stalled handshake, a silent session, QUIT with HTTPS in flight, a wss agent
# across a relay restart


def test_pump_pipelined_requests_for_tunnels_on_every_worker(relay_factory, agent_factory, pki):
    """8 requests for 8 tunnels on 4 workers sent in one TLS write: 8
    answers, in order, each from its own tunnel (the plaintext end moves with
    the unread requests); then curl to https://127.0.0.1:PORT/t/tN/ (no SNI
    at all) is served too."""
    relay, tunnels = eight_tunnels(relay_factory, agent_factory, pki)
    ctx = client_ctx(pki["ca"])
    with TlsConn(relay.tls_port, ctx, "localhost") as c:
        c.send(b"".join(harness.build_request("GET", "/t/%s/echo?p=%d" % (n, i), "localhost")
                        for i, n in enumerate(NAMES)))
        for i, n in enumerate(NAMES):
            r = c.read_response()
            assert r.status == 200, (n, r)
            assert echo_header(r, "X-Tunnel-Id") == [n], (i, n, r.json())
            assert r.json()["path"] == "/echo?p=%d" % i
    for n in ("t0", "t5"):
        url = "https://127.0.0.1:%d/t/%s/echo" % (relay.tls_port, n)
        p = curl(["--fail", "--cacert", pki["ca"], url], timeout=wait(30))
        assert p.returncode == 0, p.stderr
        assert [v for k, v in json.loads(p.stdout)["headers"] if k == "X-Tunnel-Id"] == [n]


def test_sni_tunnel_wait(relay_factory, agent_factory, pki):
    """SNI names a tunnel that is not connected: after tunnel_wait, 404
    tunnel_offline over TLS; and a request that waits while the agent
    connects (to any worker) is answered by it."""
    relay = tls_relay(relay_factory, pki, workers=2, limits={"tunnel_wait": "%ds" % wait(4)})
    ctx = client_ctx(pki["ca"])
    r = https_get(relay.tls_port, ctx, "t8.localhost", "t8.localhost:%d" % relay.tls_port)
    assert r.status == 404, r
    assert r.header("X-Ferry-Error") == "tunnel_offline", r
    assert 'tunnel "t8" is not connected' in r.text, r
    result = {}

    def ask():
        try:
            result["r"] = https_get(relay.tls_port, ctx, "t9.localhost", "t9.localhost:%d" % relay.tls_port)
        except Exception as e:   # reported below
            result["e"] = e
    t = threading.Thread(target=ask, daemon=True)
    t.start()
    time.sleep(0.3)
    agent_factory(relay, subdomain="t9")
    t.join(wait(15))
    assert not t.is_alive()
    assert "e" not in result, result
    assert result["r"].status == 200, result["r"]
    assert echo_header(result["r"], "X-Tunnel-Id") == ["t9"]


def test_stalled_handshake_and_silent_session(relay_factory, agent_factory, pki):
    """header_timeout 2s: a client that sends a whole ClientHello and then
    never finishes the handshake is closed after header_timeout; one that
    finishes it and sends nothing is closed (an idle connection, as over
    plain HTTP); one that sends half a request head gets 408 header_timeout
    over TLS, then the close."""
    relay = tls_relay(relay_factory, pki, workers=2, limits={"header_timeout": "2s"})
    start_agents(relay, agent_factory, ["t0"])
    ctx = client_ctx(pki["ca"])
    for sni in ("t0.localhost", "localhost"):
        obj, inc, out, hello = client_hello(ctx, sni)
        t0 = time.monotonic()
        s = socket.create_connection(("127.0.0.1", relay.tls_port), timeout=wait(10))
        try:
            s.sendall(hello)
            s.settimeout(2 + wait(10))
            got = b""
            try:
                while True:
                    d = s.recv(65536)   # the server's flight, then the close
                    if not d:
                        break
                    got += d
            except ConnectionResetError:
                pass
            took = time.monotonic() - t0
        finally:
            s.close()
        assert got[:1] == b"\x16", got[:16]   # it did answer the hello
        assert 1.9 <= took <= 2 + wait(10), (sni, took)
    for sni in ("t0.localhost", "localhost"):
        # nothing after the handshake: closed as an idle connection is
        with TlsConn(relay.tls_port, ctx, sni, timeout=2 + wait(10)) as c:
            assert c.closed_by_peer(2 + wait(10)), sni
        # half a request head: 408
        with TlsConn(relay.tls_port, ctx, sni, timeout=2 + wait(10)) as c:
            c.send(b"GET /echo HTTP/1.1\r\nHost: t0.local")
            r = c.read_response()
            assert r.status == 408, r
            assert r.header("X-Ferry-Error") == "header_timeout", r
            assert c.closed_by_peer(wait(10))


def test_quit_finishes_an_https_download(relay_factory, agent_factory, pki):
    """QUIT while a slow reader downloads 10 MiB over HTTPS (SNI path, and
    pump path): both downloads complete intact, then ferryd exits 0."""
    relay = tls_relay(relay_factory, pki, workers=2, limits={"drain_timeout": "%ds" % wait(30),
                                                            "tunnel_wait": "3s"})
    start_agents(relay, agent_factory, ["t0"])
    ctx = client_ctx(pki["ca"])
    results = {}
    started = threading.Barrier(3)

    def download(key, sni, host, path):
        try:
            conn = HostConnection(sni, relay.tls_port, ctx, wait(30))
            conn.request("GET", path, headers={"Host": host})
            r = conn.getresponse()
            h = hashlib.sha256()
            n = 0
            first = True
            while True:
                d = r.read(65536)
                if not d:
                    break
                h.update(d)
                n += len(d)
                if first:
                    first = False
                    started.wait(wait(10))
                time.sleep(0.01)
            conn.close()
            results[key] = (r.status, n, h.hexdigest())
        except Exception as e:
            results[key] = e
    threads = [threading.Thread(target=download, args=a, daemon=True) for a in (
        ("sni", "t0.localhost", "t0.localhost", "/download?size=%d" % BIG),
        ("pump", "localhost", "localhost", "/t/t0/download?size=%d" % BIG))]
    for t in threads:
        t.start()
    started.wait(wait(10))
    os.kill(relay.proc.pid, signal.SIGQUIT)
    for t in threads:
        t.join(wait(60))
    assert not any(t.is_alive() for t in threads)
    want = (200, BIG, origin_mod.pattern_sha256(BIG))
    assert results == {"sni": want, "pump": want}, results
    rc = relay.proc.p.wait(wait(30))
    assert rc == 0, rc


def test_wss_agent_comes_back_after_a_relay_restart(relay_factory, agent_factory, pki):
    """A wss:// agent whose relay restarts (same ports) reconnects over TLS
    and its tunnel answers again."""
    relay = tls_relay(relay_factory, pki, workers=2)
    a = agent_factory("wss://localhost:%d" % relay.tls_port, subdomain="t1", args=["--ca", pki["ca"]])
    rc, code, err = curl_status(pki["ca"], "t1.localhost", relay.tls_port)
    assert (rc, code) == (0, "200"), err
    relay.restart()
    poll(lambda: tcp_open(relay.tls_port), wait(10), what="the HTTPS listener")
    poll(lambda: "t1" in api_tunnels(relay), wait(30), interval=0.2, what="the wss agent back")
    rc, code, err = curl_status(pki["ca"], "t1.localhost", relay.tls_port)
    assert (rc, code) == (0, "200"), err
    with RawConn(relay.port) as c:
        r = c.request("GET", "/echo", relay.host("t1"), headers=[("Connection", "close")])
    assert r.status == 200, r
    assert a.proc.running()


def test_alpn_half_close_and_sni_case(relay_factory, agent_factory, pki):
    """A client offering only h2 is served HTTP/1.1 without ALPN (curl
    --http2 too); one offering http/1.1 gets it; a client that sends its
    request then close_notify and FIN still gets the whole answer (as over
    plain TCP); an upper-case SNI routes like its lower-case form."""
    relay = tls_relay(relay_factory, pki, workers=2, limits={"tunnel_wait": "3s"})
    start_agents(relay, agent_factory, ["t0", "t1"])
    for offer, want in ((["h2"], None), (["h2", "http/1.1"], "http/1.1")):
        ctx = client_ctx(pki["ca"])
        ctx.set_alpn_protocols(offer)
        with TlsConn(relay.tls_port, ctx, "t0.localhost") as c:
            assert c.sock.selected_alpn_protocol() == want, offer
            r = c.request("GET", "/echo", "t0.localhost", headers=[("Connection", "close")])
            assert r.status == 200 and r.version == "HTTP/1.1", r
    p = curl(["--http2", "--fail", "--cacert", pki["ca"], "-o", "/dev/null", "-w", "%{http_version}"]
             + resolve("t1.localhost", relay.tls_port) + ["https://t1.localhost:%d/echo" % relay.tls_port],
             timeout=wait(30))
    assert p.returncode == 0 and p.stdout == b"1.1", (p.stdout, p.stderr)
    # request, close_notify, FIN: the answer still comes, then the relay's close_notify
    ctx = client_ctx(pki["ca"])
    for sni, path in (("t0.localhost", "/download?size=%d" % MIB), ("localhost", "/t/t1/download?size=%d" % MIB)):
        obj, inc, out, hello = client_hello(ctx, sni)
        s = socket.create_connection(("127.0.0.1", relay.tls_port), timeout=wait(15))
        try:
            s.sendall(hello)
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pending = out.read()
                    if pending:
                        s.sendall(pending)
                    inc.write(s.recv(65536))
            obj.write(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, sni)).encode())
            try:
                obj.unwrap()
            except ssl.SSLWantReadError:
                pass
            s.sendall(out.read())
            s.shutdown(socket.SHUT_WR)
            resp = bytearray()
            notify = False
            while True:
                try:
                    d = obj.read(65536)
                except ssl.SSLWantReadError:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    inc.write(chunk)
                    continue
                except ssl.SSLZeroReturnError:
                    notify = True
                    break
                if not d:
                    break
                resp += d
        finally:
            s.close()
        status, hdrs, body = parse_head(bytes(resp))
        assert status == 200, resp[:300]
        assert len(body) == MIB and hashlib.sha256(body).hexdigest() == origin_mod.pattern_sha256(MIB), sni
        assert notify, "the relay ended without close_notify"
    # SNI in capitals
    ctx = client_ctx(pki["ca"])
    with TlsConn(relay.tls_port, ctx, "T1.LOCALHOST") as c:
        r = c.request("GET", "/echo", "t1.localhost:%d" % relay.tls_port, headers=[("Connection", "close")])
    assert r.status == 200, r
    assert echo_header(r, "X-Tunnel-Id") == ["t1"]


def test_wss_agent_carries_parallel_streams(relay_factory, agent_factory, pki, workdir):
    """4 downloads and 2 uploads of 10 MiB at once through one agent's wss
    link (streams multiplexed over the agent's TLS pump): all intact."""
    relay = tls_relay(relay_factory, pki, workers=2)
    agent_factory("wss://localhost:%d" % relay.tls_port, subdomain="t6", args=["--ca", pki["ca"]])
    jobs = [("down", i) for i in range(4)] + [("up", i) for i in range(2)]

    def one(job):
        kind, i = job
        if kind == "down":
            return curl_download(pki["ca"], "t6.localhost", relay.tls_port, "/download?size=%d&i=%d" % (BIG, i),
                                 os.path.join(workdir, "d%d" % i), BIG)
        return curl_upload(pki["ca"], "localhost", relay.tls_port, "/t/t6/upload?i=%d" % i, pki)
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        assert len(list(ex.map(one, jobs))) == 6


def test_reload_adds_and_removes_an_https_listener(relay_factory, agent_factory, pki):
    """A relay started with HTTP only gains listen_tls + tls on reload (HTTPS
    served, by SNI and by path), and loses it on the next one."""
    relay = relay_factory(workers=2, limits={"tunnel_wait": "3s"})
    start_agents(relay, agent_factory, ["t0"])
    tls_port = free_port()

    def reload():
        relay.write_config()
        since = os.path.getsize(relay.log_path)
        os.kill(relay.proc.pid, signal.SIGHUP)
        for i in range(2):
            poll(lambda: re.search(r"worker %d: configuration reloaded" % i, log_since(relay, since)),
                 wait(10), what="worker %d reloaded" % i)
    relay.cfg["listen_tls"] = ["127.0.0.1:%d" % tls_port]
    relay.cfg["tls"] = {"cert": pki["server"], "key": pki["server_key"]}
    reload()
    poll(lambda: tcp_open(tls_port), wait(10), what="the new HTTPS listener")
    for i in range(4):
        rc, code, err = curl_status(pki["ca"], "t0.localhost", tls_port)
        assert (rc, code) == (0, "200"), (i, err)
        rc, code, err = curl_status(pki["ca"], "localhost", tls_port, "/t/t0/echo")
        assert (rc, code) == (0, "200"), (i, err)
    del relay.cfg["listen_tls"]
    del relay.cfg["tls"]
    reload()
    poll(lambda: not tcp_open(tls_port), wait(10), what="the HTTPS listener closed")
    with RawConn(relay.port) as c:
        assert c.request("GET", "/echo", relay.host("t0"), headers=[("Connection", "close")]).status == 200


def test_resumption_survives_worker_restarts_and_reload(relay_factory, pki, workdir):
    """A session ticket issued before every worker was killed (-9) and
    replaced, and before a reload, still resumes: the ticket keys are the
    master's, not a worker's."""
    relay = tls_relay(relay_factory, pki, workers=2)
    sess = os.path.join(workdir, "sess")
    req = b"GET /nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    out, err = s_client(relay.tls_port, "localhost", pki["ca"], req, ["-sess_out", sess])
    assert re.search(r"^New, TLSv1\.3", out, re.M), out
    old = worker_pids(relay)
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    poll(lambda: len(worker_pids(relay)) == 2 and not set(worker_pids(relay)) & set(old), wait(15),
         what="replacement workers")
    relay.wait_ready()
    since = os.path.getsize(relay.log_path)
    os.kill(relay.proc.pid, signal.SIGHUP)
    for i in range(2):
        poll(lambda: re.search(r"worker %d: configuration reloaded" % i, log_since(relay, since)),
             wait(10), what="worker %d reloaded" % i)
    for i in range(4):
        out, err = s_client(relay.tls_port, "localhost", pki["ca"], req, ["-sess_in", sess])
        assert re.search(r"^Reused, TLSv1\.3", out, re.M), (i, out)
        assert "HTTP/1.1 404" in out


def test_binary_upgrade_keeps_https(relay_factory, masters, agent_factory, pki, workdir):  # noqa: F811
    """USR2 + WINCH + QUIT with an HTTPS listener: both generations serve
    HTTPS in between (SNI connections move to the old generation's owners,
    pump plaintext too), and after it the new generation serves HTTPS for a
    ws:// agent and a wss:// agent (which moved)."""
    pidfile = os.path.join(workdir, "ferryd.pid")
    relay = tls_relay(relay_factory, pki, workers=2, pid=pidfile, limits={"tunnel_wait": "%ds" % wait(5)})
    masters.watch(relay, pidfile)
    poll(lambda: os.path.exists(pidfile), wait(5), what="the pidfile")
    start_agents(relay, agent_factory, ["t0"])
    agent_factory("wss://localhost:%d" % relay.tls_port, subdomain="t1", args=["--ca", pki["ca"]],
                  name="ferry-wss")

    def all_ok(tag):
        for i in range(6):
            for n in ("t0", "t1"):
                rc, code, err = curl_status(pki["ca"], "%s.localhost" % n, relay.tls_port, "/echo?%s%d" % (tag, i))
                assert (rc, code) == (0, "200"), (tag, i, n, code, err)
                rc, code, err = curl_status(pki["ca"], "localhost", relay.tls_port, "/t/%s/echo?%s%d" % (n, tag, i))
                assert (rc, code) == (0, "200"), (tag, i, n, code, err)
    all_ok("before")
    old = relay.proc.pid
    new = start_upgrade(relay, pidfile, via="kill")
    all_ok("overlap")
    finish_upgrade(relay, pidfile, old, new, ["t0", "t1"], 32)
    all_ok("after")
