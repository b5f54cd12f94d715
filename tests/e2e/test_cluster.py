"""
test_cluster.py: several ferryd nodes (issue 8; README "Running several
nodes"). A real redis-server on a free loopback port, three ferryd nodes
with `cluster:`, and a real nginx in front running
tools/cluster/nginx-directory.conf (round-robin) as shipped, its addresses
rewritten to the test's ports. Agents connect through nginx, so they spread
over the nodes; end users reach any node, which forwards (or redirects) to
the owner. Then: a node killed with SIGKILL, Redis stopped for 10 s, node
MACs forged or stale. The no-directory alternative runs two nodes behind
tools/cluster/nginx-hash.conf and tools/cluster/haproxy-url-param.cfg.

Every process is started on 127.0.0.1 and stopped by its pid; every load
loop has a deadline; nothing asserts on timing.
"""

import asyncio
import concurrent.futures
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import time

import pytest
import requests
import websockets

from harness import FERRYD, ROOT, Proc, alive, free_port, poll, session, tcp_open, wait

TOOLS = os.path.join(ROOT, "tools", "cluster")
NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
REDIS = "/usr/bin/redis-server"
NTUNNELS = 20


# ---------------------------------------------------------------------------
# processes

class Redis:
    started = []   # every instance, stopped at the test's end

    def __init__(self, workdir, port=None):
        self.workdir = workdir
        self.port = port or free_port()
        self.proc = None

    def start(self):
        self.proc = Proc("redis", [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--daemonize", "no"], self.workdir)
        Redis.started.append(self)
        poll(lambda: tcp_open(self.port), wait(10), what="redis-server listening")
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port)] + list(args), capture_output=True,
                              text=True, timeout=wait(10)).stdout.strip()


def front_config(src, ports, listen):
    """A shipped example config with its node addresses (127.0.0.1:8181...)
    and its listen port (8080) rewritten."""
    with open(os.path.join(TOOLS, src)) as f:
        text = f.read()
    for i, p in enumerate(ports):
        text = text.replace("127.0.0.1:%d" % (8181 + i), "127.0.0.1:%d" % p)
    text = text.replace("127.0.0.1:8080", "127.0.0.1:%d" % listen)
    # Fewer nodes than the example lists: drop the rest.
    return re.sub(r"(?m)^.*server .*127\.0\.0\.1:818\d\b.*\n", "", text)


class Front:
    """A load balancer in front of the nodes (self.port, self.proc)."""

    @property
    def server(self):
        return "ws://127.0.0.1:%d" % self.port

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stop(self):
        self.proc.stop(sig=self.stop_signal)


class Nginx(Front):
    stop_signal = signal.SIGQUIT

    def __init__(self, workdir, src, ports):
        self.dir = os.path.join(workdir, "nginx")
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(workdir, 0o755)   # workers drop to nobody when run as root
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""daemon off;
master_process on;
worker_processes 1;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %(d)s/client_body;
    proxy_temp_path %(d)s/proxy;
    fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi;
    scgi_temp_path %(d)s/scgi;
%(body)s
}
""" % {"d": self.dir, "body": front_config(src, ports, self.port)})
        self.proc = Proc("nginx", [NGINX, "-p", self.dir, "-e", os.path.join(self.dir, "error.log"), "-c", conf],
                         workdir)
        poll(lambda: tcp_open(self.port), wait(10), what="nginx listening")
        self.proc.note_children()


class Haproxy(Front):
    stop_signal = signal.SIGTERM

    def __init__(self, workdir, src, ports):
        self.port = free_port()
        conf = os.path.join(workdir, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(front_config(src, ports, self.port))
        self.proc = Proc("haproxy", [HAPROXY, "-db", "-f", conf], workdir)
        poll(lambda: tcp_open(self.port), wait(10), what="haproxy listening")


def write_secret(workdir):
    path = os.path.join(workdir, "cluster.secret")
    with open(path, "w") as f:
        f.write("e2e-shared-secret-of-the-ferry-cluster-0123456789\n")
    os.chmod(path, 0o600)
    return path


def node_mac_key(secret_path):
    with open(secret_path, "rb") as f:
        raw = f.read().rstrip(b"\r\n ")
    return hashlib.blake2b(raw, digest_size=32, key=b"ferry.cluster.secret.v1").digest()


def sign(key, node, ts, client, method, target, host, proto="http"):
    msg = b"ferry.node.v1\n%s %s\n%s\n%s\n%d\n%s\n%s" % (method.encode(), target.encode(), host.encode(),
                                                         node.encode(), ts, client.encode(), proto.encode())
    return "%s %d %s %s %s" % (node, ts, client, proto, hashlib.blake2b(msg, digest_size=32, key=key).hexdigest())


@pytest.fixture
def stack(workdir, relay_factory, agent_factory, origin, request):
    """make(mode="proxy", nodes=3) -> Stack: redis, nodes, nginx round-robin."""
    made = {}
    Redis.started.clear()

    def make(mode="proxy", nodes=3, ttl="6s", tls_node=None, pki=None):
        s = Stack()
        s.secret = write_secret(workdir)
        s.redis = Redis(workdir).start()
        request.node.ferry_logs.append(("redis", s.redis.proc.err_path))
        ports = [free_port() for _ in range(nodes)]
        for i in range(nodes):
            r = relay_factory(start=False, workers=2 if i == 0 else 1,
                              limits={"tunnel_wait": "3s"},
                              cluster={"redis": "redis://127.0.0.1:%d" % s.redis.port, "node": "n%d" % (i + 1),
                                       "advertise": "http://127.0.0.1:%d" % ports[i], "secret": s.secret,
                                       "mode": mode, "ttl": ttl})
            r.port = ports[i]
            r.cfg["listen"] = ["127.0.0.1:%d" % ports[i]]
            if i == tls_node:
                r.tls_port = free_port()
                r.cfg["listen_tls"] = ["127.0.0.1:%d" % r.tls_port]
                r.cfg["tls"] = {"cert": pki["server"], "key": pki["server_key"]}
            r.start()
            s.nodes.append(r)
        s.nginx = Nginx(workdir, "nginx-directory.conf", ports)
        request.node.ferry_logs.append(("nginx", os.path.join(s.nginx.dir, "error.log")))
        made["nginx"] = s.nginx
        s.agent_factory = agent_factory
        s.origin = origin
        return s
    yield make
    if "nginx" in made:
        made["nginx"].stop()
    for r in Redis.started:
        r.stop()
    Redis.started.clear()


class Stack:
    def __init__(self):
        self.nodes = []
        self.agents = {}
        self.http = session()

    def connect_agents(self, n=NTUNNELS, prefix="t"):
        ids = ["%s%02d" % (prefix, i) for i in range(n)]
        # Started one by one: nginx's round-robin then spreads them.
        for tid in ids:
            self.agents[tid] = self.agent_factory(self.nginx.server, subdomain=tid)
        poll(lambda: len(self.directory()) >= n, wait(20), what="%d tunnels in the directory" % n)
        return ids

    def directory(self):
        keys = self.redis.cli("--scan", "--pattern", "ferry:tunnel:*").split()
        return {k[len("ferry:tunnel:"):]: self.redis.cli("GET", k) for k in keys}

    def holders(self):
        """tunnel id -> index of the node whose /api/tunnels lists it."""
        out = {}
        for i, n in enumerate(self.nodes):
            if not n.proc.running():
                continue
            j = self.http.get(n.admin_url("/api/tunnels"), timeout=wait(10)).json()
            assert j["node"] == "n%d" % (i + 1)
            for t in j["tunnels"]:
                assert t["local"] is True
                out[t["id"]] = i
        return out

    def get(self, base, tid, path="/echo", **kw):
        kw.setdefault("timeout", wait(30))
        kw.setdefault("allow_redirects", False)
        return self.http.get(base + path, headers={"X-Tunnel-Id": tid}, **kw)

    def metrics(self, i):
        text = self.http.get(self.nodes[i].admin_url("/metrics"), timeout=wait(10)).text
        return {m.group(1): int(m.group(2))
                for m in re.finditer(r'^ferry_cluster_requests_total\{direction="(\w+)"\} (\d+)$', text, re.M)}


def load(fn, n, threads=8, deadline_s=180):
    """Run fn(i) n times on a pool; returns the results. Bounded in time."""
    deadline = time.monotonic() + wait(deadline_s)
    results = []
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futs = [pool.submit(fn, i) for i in range(n)]
        for f in futs:
            left = deadline - time.monotonic()
            assert left > 0, "load did not finish in %ds" % wait(deadline_s)
            results.append(f.result(timeout=left))
    return results


def spread(holders):
    return sorted(set(holders.values()))


# ---------------------------------------------------------------------------
# the directory: proxy mode

def test_proxy_mode_20_agents_5000_requests(stack):
    s = stack("proxy")
    ids = s.connect_agents()
    holders = s.holders()
    assert sorted(holders) == ids
    assert len(spread(holders)) == 3, "round-robin spreads the agents over the three nodes: %r" % holders
    d = s.directory()
    for tid, i in holders.items():
        assert d[tid] == "n%d http://127.0.0.1:%d" % (i + 1, s.nodes[i].port)

    rnd = random.Random(8)
    picks = [rnd.choice(ids) for _ in range(5000)]

    def one(i):
        tid = picks[i]
        r = s.get(s.nginx.url(""), tid, "/echo?n=%d" % i)
        assert r.status_code == 200, (tid, r.status_code, r.headers, r.text)
        seen = [v for k, v in r.json()["headers"] if k.lower() == "x-tunnel-id"]
        assert seen == [tid]
        assert not [k for k, v in r.json()["headers"] if k.lower() == "x-ferry-forwarded"]
        return tid
    assert len(load(one, len(picks))) == 5000

    m = [s.metrics(i) for i in range(3)]
    out = sum(x["forwarded_out"] for x in m)
    inn = sum(x["forwarded_in"] for x in m)
    # nginx picks a node at random with respect to the tunnel: about two
    # thirds of the requests land on a node that does not hold it.
    assert out > 1000 and out == inn, m


def test_proxy_streams_websocket_and_keepalive_across_nodes(stack):
    s = stack("proxy", nodes=2)
    s.agents["ws"] = s.agent_factory(s.nodes[0], subdomain="ws", target=s.origin.ws_port)
    s.agents["up"] = s.agent_factory(s.nodes[0], subdomain="up")
    poll(lambda: len(s.directory()) >= 2, wait(10), what="two tunnels in the directory")
    other = s.nodes[1]

    # A streamed upload (chunked) and a 4 MiB download through the non-owner.
    body = os.urandom(3 << 20)

    def gen():
        for k in range(0, len(body), 100000):
            yield body[k:k + 100000]
    r = s.http.post(other.url("/upload"), data=gen(), headers={"X-Tunnel-Id": "up"}, timeout=wait(60))
    assert r.status_code == 200 and r.json() == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}
    r = s.get(other.url(""), "up", "/download?size=%d&chunked=1" % (4 << 20))
    assert r.status_code == 200 and len(r.content) == 4 << 20

    # WebSocket through the non-owner node: 101, then messages both ways.
    async def ws():
        async with websockets.connect("ws://127.0.0.1:%d/" % other.port, max_size=None,
                                      extra_headers={"X-Tunnel-Id": "ws"}, open_timeout=wait(10)) as c:
            for size in (5, 70000, 1 << 20):
                msg = os.urandom(size)
                await c.send(msg)
                assert await asyncio.wait_for(c.recv(), wait(20)) == msg
    asyncio.run(ws())

    # Keep-alive: after a forwarded request the connection serves the next
    # one, and a request for a tunnel held here is served here.
    s.agents["local"] = s.agent_factory(other, subdomain="local")
    for tid in ("up", "local", "up", "nope"):
        r = s.get(other.url(""), tid)
        assert r.status_code == (404 if tid == "nope" else 200), (tid, r.status_code, r.text)
    assert s.metrics(1)["forwarded_out"] >= 4 and s.metrics(0)["forwarded_in"] >= 4


def test_https_end_user_forwarded_keeps_https(stack, workdir):
    """An HTTPS end user on a node that does not hold the tunnel: the owner
    says X-Forwarded-Proto: https, and the next request on the same TLS
    connection (handed back after the forward) is still https."""
    import tlsca
    pki = tlsca.make_pki(os.path.join(workdir, "pki"), ["sec.localhost"])
    s = stack("proxy", nodes=2, tls_node=1, pki=pki)
    s.agents["sec"] = s.agent_factory(s.nodes[0], subdomain="sec")
    poll(lambda: "sec" in s.directory(), wait(10), what="tunnel in the directory")
    n2 = s.nodes[1]
    url = "https://sec.localhost:%d/echo" % n2.tls_port
    out = subprocess.run(["curl", "-sS", "--noproxy", "*", "--cacert", pki["ca"], "--resolve",
                          "sec.localhost:%d:127.0.0.1" % n2.tls_port, url, "-o", os.path.join(workdir, "a.json"),
                          url, "-o", os.path.join(workdir, "b.json")], capture_output=True, text=True,
                         timeout=wait(30))
    assert out.returncode == 0, out.stderr
    for name in ("a.json", "b.json"):
        with open(os.path.join(workdir, name)) as f:
            j = json.load(f)
        assert [v for k, v in j["headers"] if k.lower() == "x-forwarded-proto"] == ["https"], j
        assert [v for k, v in j["headers"] if k.lower() == "x-tunnel-id"] == ["sec"]
    assert s.metrics(1)["forwarded_out"] >= 2 and s.metrics(0)["forwarded_in"] >= 2


# ---------------------------------------------------------------------------
# redirect mode

def test_redirect_mode_with_curl_L(stack):
    s = stack("redirect")
    ids = s.connect_agents()
    assert len(spread(s.holders())) == 3
    rnd = random.Random(307)
    picks = [rnd.choice(ids) for _ in range(5000)]
    # curl -L follows the 307 to the owner node: 500 URLs per curl process.
    batches = [picks[k:k + 500] for k in range(0, len(picks), 500)]

    def batch(b):
        urls = [s.nginx.url("/echo?tunnelid=%s&n=%d" % (tid, i)) for i, tid in enumerate(batches[b])]
        args = ["curl", "-sS", "-L", "-w", "%{http_code} %{num_redirects}\\n"]
        for u in urls:
            args += ["-o", "/dev/null", u]
        out = subprocess.run(args, capture_output=True, text=True, timeout=wait(170))
        return out.stdout.split("\n")[:-1]
    lines = [x for chunk in load(batch, len(batches), threads=4) for x in chunk]
    assert len(lines) == 5000
    assert all(x.split()[0] == "200" for x in lines), [x for x in lines if not x.startswith("200")][:5]
    redirected = sum(int(x.split()[1]) for x in lines)
    assert redirected > 1000
    assert redirected == sum(s.metrics(i)["redirected"] for i in range(3))

    # Host routing is redirected by path prefix on the owner.
    tid = ids[0]
    owner = s.holders()[tid]
    other = s.nodes[(owner + 1) % 3]
    r = s.http.get(other.url("/a/b?c=1"), headers={"Host": "%s.localhost" % tid}, allow_redirects=False,
                   timeout=wait(10))
    assert r.status_code == 307
    assert r.headers["Location"] == "http://127.0.0.1:%d/t/%s/a/b?c=1" % (s.nodes[owner].port, tid)


# ---------------------------------------------------------------------------
# node death

def test_node_killed_agents_move_and_requests_recover(stack):
    s = stack("proxy", ttl="6s")
    ids = s.connect_agents()
    holders = s.holders()
    victim = 1
    lost = [t for t, i in holders.items() if i == victim]
    assert lost
    pids = s.nodes[victim].pids()
    for p in pids:   # the master and its workers, at once
        os.kill(p, signal.SIGKILL)
    poll(lambda: not any(alive(p) for p in pids), wait(10), what="node n2 gone")

    # Within TTL + reconnect time, every tunnel answers through nginx again.
    def all_ok():
        for tid in ids:
            try:
                if s.get(s.nginx.url(""), tid, timeout=wait(10)).status_code != 200:
                    return False
            except requests.RequestException:
                return False
        return True
    poll(all_ok, wait(6 + 30), interval=0.5, what="every tunnel answering after the node died")
    now = s.holders()
    assert sorted(now) == ids and victim not in now.values()
    d = s.directory()
    for tid in lost:
        assert d[tid].split()[0] != "n2", (tid, d[tid])
    # And they keep answering, through every surviving node.
    for tid in ids:
        for i in (0, 2):
            assert s.get(s.nodes[i].url(""), tid).status_code == 200


# ---------------------------------------------------------------------------
# Redis down

def test_redis_down_local_keeps_working_remote_503_then_recovers(stack):
    s = stack("proxy", nodes=2)
    s.agents["a"] = s.agent_factory(s.nodes[0], subdomain="a")
    s.agents["b"] = s.agent_factory(s.nodes[1], subdomain="b")
    poll(lambda: len(s.directory()) >= 2, wait(10), what="two tunnels in the directory")
    n1, n2 = s.nodes
    assert s.get(n2.url(""), "a").status_code == 200

    s.redis.stop()
    t_end = time.monotonic() + 10
    local_fail, remote = [], []
    while time.monotonic() < t_end:
        for node, tid in ((n1, "a"), (n2, "b")):
            r = s.get(node.url(""), tid)
            if r.status_code != 200:
                local_fail.append((tid, r.status_code, r.text))
        r = s.get(n2.url(""), "a")
        remote.append((r.status_code, r.headers.get("X-Ferry-Error"), r.headers.get("Retry-After")))
        time.sleep(0.1)
    assert not local_fail, local_fail[:5]
    # After the cache (1 s) and the Redis timeout (1 s), remote tunnels get 503.
    assert remote[-1] == (503, "cluster_unavailable", "1"), remote[-5:]
    assert all(x[0] in (200, 503) for x in remote), remote
    assert "ferry_cluster_directory_up 0" in s.http.get(n2.admin_url("/metrics"), timeout=wait(10)).text

    # Back, empty (no persistence): the nodes re-register and requests flow.
    s.redis = Redis(s.redis.workdir, port=s.redis.port).start()
    poll(lambda: set(s.directory()) >= {"a", "b"}, wait(15), what="tunnels registered again")
    poll(lambda: s.get(n2.url(""), "a").status_code == 200, wait(10), what="remote tunnel answering again")
    assert s.get(n1.url(""), "b").status_code == 200
    for n in (n1, n2):
        log = n.log()
        # Loud, and once per change.
        assert log.count("DIRECTORY redis://") == 1, log
        assert "directory redis://127.0.0.1:%d answers" % s.redis.port in log


def test_redis_slow_sigstop_counts_as_down(stack):
    """A stopped (SIGSTOP) Redis still accepts connections but never
    answers: after cluster.timeout it is down, the same as a dead one."""
    s = stack("proxy", nodes=2)
    s.agents["a"] = s.agent_factory(s.nodes[0], subdomain="a")
    poll(lambda: "a" in s.directory(), wait(10), what="tunnel in the directory")
    n1, n2 = s.nodes
    assert s.get(n2.url(""), "a").status_code == 200
    os.kill(s.redis.proc.pid, signal.SIGSTOP)
    try:
        def unavailable():
            r = s.get(n2.url(""), "a")
            return r.status_code == 503 and r.headers.get("X-Ferry-Error") == "cluster_unavailable"
        poll(unavailable, wait(15), interval=0.2, what="503 while Redis does not answer")
        assert s.get(n1.url(""), "a").status_code == 200   # local: served all along
        poll(lambda: "DIRECTORY redis://" in n1.log(), wait(15), what="the master's loud line")
    finally:
        os.kill(s.redis.proc.pid, signal.SIGCONT)
    poll(lambda: s.get(n2.url(""), "a").status_code == 200, wait(15), what="forwarding again")
    for n in (n1, n2):
        assert n.log().count("DIRECTORY redis://") <= 1


# ---------------------------------------------------------------------------
# node MACs

def test_forged_or_stale_node_mac_403(stack):
    s = stack("proxy", nodes=2)
    s.agents["m"] = s.agent_factory(s.nodes[0], subdomain="m")
    poll(lambda: "m" in s.directory(), wait(10), what="tunnel in the directory")
    n1 = s.nodes[0]
    key = node_mac_key(s.secret)
    host = "127.0.0.1:%d" % n1.port

    def req(value):
        return s.http.get(n1.url("/echo"), headers={"X-Tunnel-Id": "m", "X-Ferry-Forwarded": value},
                          timeout=wait(10))
    now = int(time.time())
    r = req(sign(key, "n2", now, "198.51.100.7:4242", "GET", "/echo", host))
    assert r.status_code == 200
    assert [v for k, v in r.json()["headers"] if k.lower() == "x-forwarded-for"] == ["198.51.100.7"]
    assert [v for k, v in r.json()["headers"] if k.lower() == "x-forwarded-proto"] == ["http"]
    assert not [k for k, v in r.json()["headers"] if k.lower() == "x-ferry-forwarded"]
    r = req(sign(key, "n2", now, "198.51.100.7:4242", "GET", "/echo", host, "https"))
    assert r.status_code == 200
    assert [v for k, v in r.json()["headers"] if k.lower() == "x-forwarded-proto"] == ["https"]

    forged = [
        sign(b"\x01" * 32, "n2", now, "198.51.100.7:4242", "GET", "/echo", host),    # another secret
        sign(key, "n2", now, "198.51.100.7:4242", "GET", "/other", host),            # another request line
        sign(key, "n2", now, "198.51.100.7:4242", "GET", "/echo", host).replace("198.51.100.7", "198.51.100.8"),
        sign(key, "n2", now, "198.51.100.7:4242", "GET", "/echo", host).replace(" http ", " https "),
        "n2 %d 1.2.3.4:5 http %s" % (now, "0" * 64),
        "garbage",
    ]
    for v in forged:
        r = req(v)
        assert r.status_code == 403 and r.headers["X-Ferry-Error"] == "node_mac_invalid", (v, r.status_code)
    for ts in (now - 120, now + 120):
        r = req(sign(key, "n2", ts, "198.51.100.7:4242", "GET", "/echo", host))
        assert r.status_code == 403 and r.headers["X-Ferry-Error"] == "node_mac_stale", (ts, r.status_code)
    text = s.http.get(n1.admin_url("/metrics"), timeout=wait(10)).text
    assert 'ferry_errors_total{code="node_mac_invalid"} 6' in text
    assert 'ferry_errors_total{code="node_mac_stale"} 2' in text


def test_cluster_config_errors_name_file_line_key(workdir):
    secret = write_secret(workdir)
    cases = [
        ("cluster:\n  node: n1\n", "cluster.redis is required"),
        ("cluster:\n  redis: redis.example.com:6379\n", "cluster.redis"),
        ("cluster:\n  redis: 127.0.0.1:1\n  node: 'N 1'\n", "cluster.node"),
        ("cluster:\n  redis: 127.0.0.1:1\n  node: n1\n  advertise: http://relay.example.com:8080\n",
         "cluster.advertise"),
        ("cluster:\n  redis: 127.0.0.1:1\n  node: n1\n  advertise: http://127.0.0.1:1\n  secret: /nonexistent\n",
         "cluster.secret"),
        ("cluster:\n  redis: 127.0.0.1:1\n  node: n1\n  advertise: http://127.0.0.1:1\n  secret: %s\n"
         "  mode: teleport\n" % secret, "cluster.mode"),
        ("cluster:\n  redis: 127.0.0.1:1\n  bogus: 1\n", "bogus"),
    ]
    for text, want in cases:
        path = os.path.join(workdir, "bad.yml")
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([FERRYD, "-t", "-c", path], capture_output=True, text=True, timeout=wait(10))
        assert r.returncode == 1 and want in r.stderr and re.search(r"bad\.yml:\d+: ", r.stderr), (text, r.stderr)
    weak = os.path.join(workdir, "weak.secret")
    with open(weak, "w") as f:
        f.write("short\n")
    os.chmod(weak, 0o600)
    path = os.path.join(workdir, "weak.yml")
    with open(path, "w") as f:
        f.write("cluster:\n  redis: redis://:pw@localhost\n  node: n1\n  advertise: http://127.0.0.1:1\n"
                "  secret: %s\n" % weak)
    r = subprocess.run([FERRYD, "-t", "-c", path], capture_output=True, text=True, timeout=wait(10))
    assert r.returncode == 1 and "at least 32 bytes" in r.stderr, r.stderr
    with open(path, "w") as f:
        f.write("cluster:\n  redis: redis://:pw@localhost\n  node: n1\n  advertise: http://127.0.0.1:1\n"
                "  secret: %s\n  mode: redirect\n  ttl: 5s\n  timeout: 300ms\n" % secret)
    r = subprocess.run([FERRYD, "-t", "-c", path], capture_output=True, text=True, timeout=wait(10))
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------
# no directory: load balancers hash the tunnel id

@pytest.mark.parametrize("front", ["nginx-hash.conf", "haproxy-url-param.cfg"])
def test_no_directory_hashing_front(front, workdir, relay_factory, agent_factory, request):
    if front.startswith("haproxy") and not os.access(HAPROXY, os.X_OK):
        pytest.skip("haproxy is not installed (make deps installs it)")
    nodes = [relay_factory(limits={"tunnel_wait": "3s"}) for _ in range(2)]
    ports = [n.port for n in nodes]
    if front.startswith("nginx"):
        lb = Nginx(workdir, front, ports)
        request.node.ferry_logs.append(("nginx", os.path.join(lb.dir, "error.log")))
    else:
        lb = Haproxy(workdir, front, ports)
    try:
        ids = ["h%02d" % i for i in range(8)]
        for tid in ids:
            agent_factory(lb.server, subdomain=tid)
        held = {}
        for i, n in enumerate(nodes):
            for t in session().get(n.admin_url("/api/tunnels"), timeout=wait(10)).json()["tunnels"]:
                held[t["id"]] = i
        assert sorted(held) == ids
        assert len(set(held.values())) == 2, "the hash spreads tunnels over both nodes: %r" % held
        http = session()

        def one(i):
            tid = ids[i % len(ids)]
            if i % 2 == 0 or front.startswith("haproxy"):
                r = http.get(lb.url("/echo?tunnelid=%s" % tid), timeout=wait(30))
            else:
                r = http.get(lb.url("/echo"), headers={"X-Tunnel-Id": tid}, timeout=wait(30))
            assert r.status_code == 200, (tid, r.status_code, r.text)
            return tid
        assert len(load(one, 400)) == 400
    finally:
        lb.stop()
