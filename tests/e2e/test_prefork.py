"""
test_prefork.py: ferryd's prefork design end to end (issue 4; DESIGN.md
"Processes", "The handoff", "The shared-memory table"): a master and N
workers sharing the tunnel table, connections handed to the owning worker
over SCM_RIGHTS, worker crashes, several agent connections per tunnel, the
max_tunnels limit.

Every tunnel here has an origin of its own (NamedOrigins: one process, one
port per name, each answering JSON {"origin": NAME, ...}), so an answer
proves which agent served it, not only which id the relay resolved.
Everything talks to 127.0.0.1, every wait is bounded, every process is
stopped by its pid.
"""

import concurrent.futures
import json
import os
import re
import signal
import socket
import threading
import time

import pytest

from harness import (PYTHON, Proc, RawConn, alive, build_request, children_of, poll, session,
                     tail, wait)

# ---------------------------------------------------------------------------
# helpers

NAMED_ORIGIN = r'''
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 120
    def log_message(self, *a):
        pass
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        if self.path.startswith("/slow"):
            import time
            time.sleep(float(self.path.split("=", 1)[1]) if "=" in self.path else 1.0)
        body = json.dumps({"origin": self.server.name, "tunnel": self.headers.get("X-Tunnel-Id"),
                           "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer

servers = []
for name in sys.argv[1:]:
    s = Server(("127.0.0.1", 0), H)
    s.name = name
    threading.Thread(target=s.serve_forever, daemon=True).start()
    servers.append(s)
print("NAMED " + " ".join("%s=%d" % (s.name, s.server_address[1]) for s in servers), flush=True)
threading.Event().wait()
'''


class NamedOrigins:
    """One process serving one port per name; each answers its own name."""

    def __init__(self, workdir, names):
        self.proc = Proc("named-origins", [PYTHON, "-c", NAMED_ORIGIN] + list(names), workdir)

        def ready():
            if not self.proc.running():
                raise AssertionError("named origins exited: %s" % tail(self.proc.err_path))
            with open(self.proc.out_path) as f:
                m = re.search(r"^NAMED (.*)$", f.read(), re.M)
            return m
        m = poll(ready, wait(20), what="named origins")
        self.ports = {k: int(v) for k, v in (x.split("=") for x in m.group(1).split())}

    def stop(self):
        self.proc.stop(timeout=wait(5))


@pytest.fixture
def named_origins(workdir):
    made = []

    def make(names):
        o = NamedOrigins(workdir, names)
        made.append(o)
        return o
    yield make
    for o in made:
        o.stop()


class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self):
        return "<Resp %s %r>" % (self.status, self.body[:200])


def parse_response(data):
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ConnectionError("no complete response head (%d bytes)" % len(data))
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        raise ConnectionError("bad status line %r" % lines[0])
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
    r = Resp(int(m.group(1)), headers, body)
    cl = r.header("Content-Length")
    if cl is not None and len(body) < int(cl):
        raise ConnectionError("body cut short: %d of %s bytes" % (len(body), cl))
    return r


def fresh_get(port, host, path="/", timeout=None, headers=()):
    """One request on a new connection (Connection: close), read to EOF.
    Raises OSError/ConnectionError when the connection fails or closes early."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout or wait(20))
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(build_request("GET", path, host, [("Connection", "close")] + list(headers)))
        chunks = []
        while True:
            d = s.recv(65536)
            if not d:
                break
            chunks.append(d)
        return parse_response(b"".join(chunks))
    finally:
        s.close()


def check_answer(r, name):
    """r is a 200 from the origin of tunnel name."""
    assert r.status == 200, "tunnel %s: %r" % (name, r)
    j = r.json()
    assert j["origin"] == name, "asked tunnel %s, answered by origin %s" % (name, j["origin"])
    assert j["tunnel"] == name, j


def worker_pids(relay):
    return sorted(children_of(relay.proc.pid))


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def admin_get(relay, path, timeout=None):
    r = fresh_get(relay.admin_port, "127.0.0.1:%d" % relay.admin_port, path, timeout=timeout or wait(10))
    assert r.status == 200, r
    return r


def api_tunnels(relay):
    return {t["id"]: t for t in admin_get(relay, "/api/tunnels").json()["tunnels"]}


def metrics(relay):
    text = admin_get(relay, "/metrics").body.decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def socket_inodes(pid):
    out = set()
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            t = os.readlink(os.path.join(d, fd))
        except OSError:
            continue
        if t.startswith("socket:["):
            out.add(int(t[8:-1]))
    return out


def tcp_table():
    """inode -> (local port, remote port) for established IPv4 TCP sockets."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            p = line.split()
            if p[3] != "01":  # ESTABLISHED
                continue
            out[int(p[9])] = (int(p[1].split(":")[1], 16), int(p[2].split(":")[1], 16))
    return out


def agent_conns_by_worker(relay, agent):
    """{worker pid: number of the agent's tunnel connections it holds}, from
    the sockets each process holds (/proc)."""
    tcp = tcp_table()
    agent_ports = {tcp[i][0] for i in socket_inodes(agent.pid) if i in tcp and tcp[i][1] == relay.port}
    out = {}
    for w in worker_pids(relay):
        n = sum(1 for i in socket_inodes(w)
                if i in tcp and tcp[i][0] == relay.port and tcp[i][1] in agent_ports)
        if n:
            out[w] = n
    return out


def proc_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class PinnedTo:
    """Only worker pid may accept while inside: the others are SIGSTOPped
    (a stopped worker is not waiting in epoll_wait, so EPOLLEXCLUSIVE wakes
    the one left), then continued. Lets a test choose which worker an agent
    connection lands on (left alone, worker 0 accepts nearly everything)."""

    def __init__(self, relay, pid):
        self.relay = relay
        self.pid = pid
        self.stopped = []

    def __enter__(self):
        for p in worker_pids(self.relay):
            if p != self.pid:
                os.kill(p, signal.SIGSTOP)
                self.stopped.append(p)
        poll(lambda: all(proc_state(p) in ("T", "t", None) for p in self.stopped), wait(5), interval=0.01,
             what="workers stopped")
        return self

    def __exit__(self, *a):
        for p in self.stopped:
            try:
                os.kill(p, signal.SIGCONT)
            except OSError:
                pass


def start_tunnels(relay, agent_factory, origins, names, args=(), pin=None):
    """An agent per name, each to its own origin; pin: {name: worker pid}
    the agent's connection must land on."""
    agents = {}
    for n in names:
        def start():
            return agent_factory(relay, target=origins.ports[n], subdomain=n, name="ferry-" + n, args=args)
        if pin and n in pin:
            with PinnedTo(relay, pin[n]):
                agents[n] = start()
        else:
            agents[n] = start()
    for n in names:
        r = fresh_get(relay.port, relay.host(n), "/warmup")
        check_answer(r, n)
    if pin:
        tunnels = api_tunnels(relay)
        for n, p in pin.items():
            assert tunnels[n]["worker_pid"] == p, (n, tunnels[n], p)
    return agents


def spread(relay, names):
    """{name: worker pid}: names dealt over the workers in turn."""
    ws = worker_pids(relay)
    return {n: ws[i % len(ws)] for i, n in enumerate(names)}


class Sender(threading.Thread):
    """Sends requests for tunnel name on fresh connections, one after the
    other, until stopped; records (start, end, outcome, detail)."""

    def __init__(self, relay, name, timeout=None):
        super().__init__(daemon=True)
        self.relay = relay
        self.name_ = name
        self.timeout = timeout or wait(30)
        self.results = []
        self.stop_ev = threading.Event()

    def run(self):
        i = 0
        while not self.stop_ev.is_set():
            i += 1
            t0 = time.monotonic()
            try:
                r = fresh_get(self.relay.port, self.relay.host(self.name_), "/n%d" % i, timeout=self.timeout)
                try:
                    check_answer(r, self.name_)
                    outcome, detail = "ok", None
                except AssertionError as e:
                    outcome, detail = "bad", str(e)
            except (OSError, ConnectionError) as e:
                outcome, detail = "conn", repr(e)
            self.results.append((t0, time.monotonic(), outcome, detail))
            if outcome != "ok":
                time.sleep(0.01)

    def stop(self):
        self.stop_ev.set()
        self.join(wait(60))
        assert not self.is_alive(), "sender stuck"


def summarize(results, t_kill):
    before = [r for r in results if r[1] < t_kill]
    during = [r for r in results if r[0] < t_kill <= r[1]]
    after = [r for r in results if r[0] >= t_kill]
    return before, during, after


# ---------------------------------------------------------------------------
# 4 workers, 8 tunnels: routing and handoff under load


NAMES8 = ["pf%d" % i for i in range(8)]


def fds_back_to(workers, baseline):
    def settled():
        now = {w: fd_count(w) for w in workers}
        return now if all(now[w] <= baseline[w] for w in workers) else None
    try:
        poll(settled, wait(10), interval=0.2, what="worker fd counts back to baseline")
    except AssertionError:
        raise AssertionError("fd counts: baseline %s, now %s" % (baseline, {w: fd_count(w) for w in workers}))


def eight_tunnels(relay_factory, agent_factory, named_origins, **cfg):
    relay = relay_factory(workers=4, **cfg)
    origins = named_origins(NAMES8)
    start_tunnels(relay, agent_factory, origins, NAMES8, pin=spread(relay, NAMES8))
    workers = worker_pids(relay)
    assert len(workers) == 4, workers
    tunnels = api_tunnels(relay)
    assert sorted(tunnels) == NAMES8, tunnels
    owners = {t["worker"] for t in tunnels.values()}
    assert len(owners) == 4, "tunnels spread over the 4 workers: %s" % tunnels
    time.sleep(0.5)
    baseline = {w: fd_count(w) for w in workers}
    return relay, workers, baseline


def handoff_counts(m1, m0):
    return {k: m1['ferry_handoffs_total{outcome="%s"}' % k] - m0.get('ferry_handoffs_total{outcome="%s"}' % k, 0)
            for k in ("sent", "received", "failed")}


def test_eight_tunnels_four_workers_fresh_connections(relay_factory, agent_factory, named_origins):
    """2,000 requests on new connections over 8 tunnels owned by 4 workers:
    every answer from the right origin, handoffs counted, no fd left."""
    relay, workers, baseline = eight_tunnels(relay_factory, agent_factory, named_origins)
    m0 = metrics(relay)

    def one(i):
        n = NAMES8[i % 8]
        try:
            r = fresh_get(relay.port, relay.host(n), "/f%d" % i)
        except (OSError, ConnectionError) as e:
            return (i, n, "connection error %r" % e)
        try:
            check_answer(r, n)
        except AssertionError as e:
            return (i, n, str(e))
        return None
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        bad = [x for x in ex.map(one, range(2000)) if x is not None]
    took = time.monotonic() - t0
    h = handoff_counts(metrics(relay), m0)
    print("2000 fresh requests in %.1fs; handoffs %s" % (took, h))
    assert not bad, "%d of 2000 fresh requests failed, e.g. %s" % (len(bad), bad[:5])
    # With the tunnels on 4 workers, most requests land on a non-owner.
    assert h["sent"] > 0
    assert h["failed"] == 0
    assert h["received"] == h["sent"]
    assert worker_pids(relay) == workers, "a worker was replaced during the run"
    fds_back_to(workers, baseline)


def test_close_requests_leave_no_socket_behind(relay_factory, agent_factory, named_origins):
    """Clients that ask Connection: close, send nothing more and keep their
    sockets open: each gets its whole answer and then a clean end (EOF, not
    a reset), and the relay holds none of their sockets afterwards, whether
    the worker that accepted it served it or handed it over (nginx closes
    at once too; only a client that may still be sending gets the linger)."""
    relay, workers, baseline = eight_tunnels(relay_factory, agent_factory, named_origins)
    m0 = metrics(relay)
    conns = []
    try:
        for i in range(48):
            n = NAMES8[i % 8]
            c = RawConn(relay.port)
            conns.append((c, n))
            if i % 3 == 2:   # a body read whole before the answer
                c.send(build_request("POST", "/b%d" % i, relay.host(n), [("Connection", "close")],
                                     body=os.urandom(100000)))
            else:
                c.send(build_request("GET", "/g%d" % i, relay.host(n), [("Connection", "close")]))
        for c, n in conns:
            check_answer(c.read_response(), n)
            c.sock.settimeout(wait(5))
            assert c.sock.recv(1) == b"", "bytes after the answer"
        held = {w: fd_count(w) - baseline[w] for w in workers}
        assert sum(max(0, v) for v in held.values()) <= 2, \
            "sockets of closed-by-request clients still held by the workers: %s" % held
    finally:
        for c, _ in conns:
            c.close()
    h = handoff_counts(metrics(relay), m0)
    assert h["sent"] > 0 and h["failed"] == 0, h


@pytest.mark.valgrind
def test_eight_tunnels_keepalive_alternating(relay_factory, agent_factory, named_origins):
    """Keep-alive connections whose every request names another tunnel than
    the one before (a, b, a, b... and one walking all 8): each request moves
    the connection to the owner of its tunnel, as often as it takes."""
    relay, workers, baseline = eight_tunnels(relay_factory, agent_factory, named_origins)
    m0 = metrics(relay)

    def keepalive(k):
        seq = [NAMES8[k % 8], NAMES8[(k + 3) % 8]] if k < 6 else NAMES8
        errors = []
        with RawConn(relay.port, timeout=wait(20)) as c:
            for j in range(48):
                n = seq[j % len(seq)]
                try:
                    r = c.request("GET", "/k%d-%d" % (k, j), relay.host(n))
                except Exception as e:
                    errors.append((k, j, n, "connection: %r" % e))
                    break
                if r.status != 200 or json.loads(r.body).get("origin") != n:
                    errors.append((k, j, n, r.status, r.body[:80]))
                    if r.header("Connection") == "close":
                        break
        return errors
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        errors = [e for errs in ex.map(keepalive, range(8)) for e in errs]
    h = handoff_counts(metrics(relay), m0)
    print("keep-alive: 8 connections x 48 requests; %d failed; handoffs %s" % (len(errors), h))
    try:
        fds_back_to(workers, baseline)
        fd_problem = None
    except AssertionError as e:
        fd_problem = str(e)
    assert not errors, "%d of 384 keep-alive requests failed; first of each connection: %s%s" % (
        len(errors), sorted({e[0]: e for e in reversed(errors)}.values()),
        "; and " + fd_problem if fd_problem else "")
    assert h["sent"] >= 8 * 40, "a connection moves on (nearly) every request: %s" % h
    assert h["failed"] == 0
    assert not fd_problem, fd_problem


def test_api_tunnels_from_any_worker(relay_factory, agent_factory, named_origins):
    relay, workers, _ = eight_tunnels(relay_factory, agent_factory, named_origins)
    pids = set(workers)
    assert {t["worker_pid"] for t in api_tunnels(relay).values()} == pids
    for _ in range(24):
        tunnels = api_tunnels(relay)  # a fresh connection each time: any worker answers
        assert sorted(tunnels) == NAMES8, sorted(tunnels)
        for t in tunnels.values():
            assert t["connections"] == 1, t
            assert t["worker_pid"] in pids, (t, pids)
            assert 0 <= t["worker"] < 4, t
            assert t["agent"].startswith("127.0.0.1:"), t
            assert t["requests"] >= 1, t   # the warm-up request
    m = metrics(relay)
    assert m["ferry_tunnels"] == 8
    assert m["ferry_workers"] == 4


# ---------------------------------------------------------------------------
# a worker killed while requests flow


def test_kill_owner_worker_while_requests_flow(relay_factory, agent_factory, named_origins):
    names = ["kv%d" % i for i in range(4)]
    relay = relay_factory(workers=4, limits={"tunnel_wait": "%ds" % wait(8)})
    origins = named_origins(names)
    agents = start_tunnels(relay, agent_factory, origins, names, pin=spread(relay, names))
    tunnels = api_tunnels(relay)
    victim = names[0]
    vpid = tunnels[victim]["worker_pid"]
    old_workers = worker_pids(relay)
    assert vpid in old_workers
    # every tunnel the victim owns loses its agent connection
    lost = sorted(n for n, t in tunnels.items() if t["worker_pid"] == vpid)
    kept = sorted(set(names) - set(lost))
    m0 = metrics(relay)

    senders = [Sender(relay, victim) for _ in range(4)] + [Sender(relay, n) for n in kept]
    for s in senders:
        s.start()
    time.sleep(1.0)
    t_kill = time.monotonic()
    os.kill(vpid, signal.SIGKILL)

    # The master logs it and replaces it.
    poll(lambda: re.search(r"worker \d+ \(pid %d\) killed by signal 9" % vpid, relay.log()),
         wait(5), what="the master's log of the kill")
    new = poll(lambda: [p for p in worker_pids(relay) if p not in old_workers], wait(3), interval=0.02,
               what="a new worker")
    t_new = time.monotonic() - t_kill
    assert len(new) == 1 and alive(new[0]), new
    assert len(worker_pids(relay)) == 4
    assert not alive(vpid)
    # The table forgets the dead worker at once.
    listed = api_tunnels(relay)
    assert all(t["worker_pid"] != vpid for t in listed.values()), listed
    # The agent reconnects and the tunnel is back.
    back = poll(lambda: (api_tunnels(relay).get(victim) or {}).get("worker_pid") in worker_pids(relay)
                and api_tunnels(relay)[victim], wait(10), interval=0.05, what="tunnel %s back" % victim)
    t_back = time.monotonic() - t_kill
    assert back["worker_pid"] != vpid
    agents[victim].wait_log(r"reconnect|session closed", timeout=wait(5))
    time.sleep(1.5)
    for s in senders:
        s.stop()
    check_answer(fresh_get(relay.port, relay.host(victim), "/after"), victim)

    report = []
    problems = []
    for s in senders:
        before, during, after = summarize(s.results, t_kill)
        counts = {}
        for r in s.results:
            counts[r[2]] = counts.get(r[2], 0) + 1
        gap = [r for r in after if r[0] < t_kill + t_back]
        report.append("%s: %s; in flight at the kill %d (%s); sent in the gap %d, of which ok %d, slowest %.2fs"
                      % (s.name_, counts, len(during), ",".join(r[2] for r in during), len(gap),
                         sum(1 for r in gap if r[2] == "ok"), max([r[1] - r[0] for r in gap] or [0])))
        for r in s.results:
            if r[2] == "ok":
                continue
            # Only requests in flight when the worker died may fail, and only
            # with a connection error (their socket lived in the dead worker).
            if not (r[2] == "conn" and r[0] < t_kill + 0.005):
                problems.append((s.name_, round(r[0] - t_kill, 3), round(r[1] - t_kill, 3), r[2], r[3]))
        assert any(r[2] == "ok" and r[0] > t_kill + t_back for r in s.results), "%s: no success after" % s.name_
    m1 = metrics(relay)
    print("replaced in %.2fs, tunnel back in %.2fs; restarts %d -> %d\n  %s"
          % (t_new, t_back, m0["ferry_worker_restarts_total"], m1["ferry_worker_restarts_total"],
             "\n  ".join(report)))
    assert not problems, "requests that failed but were not in flight on the dead worker: %s" % problems[:10]
    assert t_new < wait(2), "the new worker came %.2fs after the kill" % t_new
    assert m1["ferry_worker_restarts_total"] == m0["ferry_worker_restarts_total"] + 1
    # /health is back to ok with four workers up
    assert session().get(relay.admin_url("/health"), timeout=wait(5)).text.strip() == "ok"


@pytest.mark.valgrind
def test_mailbox_of_a_dead_worker_is_served_by_its_replacement(relay_factory, agent_factory, named_origins):
    """Connections handed to a worker that is stopped, then killed, wait in its
    mailbox (the master keeps it open) and its replacement serves them."""
    relay = relay_factory(workers=4, limits={"tunnel_wait": "%ds" % wait(10)})
    origins = named_origins(["mb"])
    start_tunnels(relay, agent_factory, origins, ["mb"])
    vpid = api_tunnels(relay)["mb"]["worker_pid"]
    m0 = metrics(relay)
    os.kill(vpid, signal.SIGSTOP)
    try:
        results = [None] * 24

        def one(i):
            try:
                r = fresh_get(relay.port, relay.host("mb"), "/q%d" % i, timeout=wait(30))
                check_answer(r, "mb")
                results[i] = "ok"
            except (OSError, ConnectionError, AssertionError) as e:
                results[i] = repr(e)
        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(results))]
        for t in threads:
            t.start()
            time.sleep(0.02)
        time.sleep(1.0)
        assert all(r is None for r in results), "answered while the owner was stopped: %s" % results
    finally:
        os.kill(vpid, signal.SIGKILL)
    for t in threads:
        t.join(wait(40))
    m1 = metrics(relay)
    print("results: %s; handoffs sent %d received %d failed %d" % (
        {r: results.count(r) for r in set(results)},
        m1['ferry_handoffs_total{outcome="sent"}'] - m0['ferry_handoffs_total{outcome="sent"}'],
        m1['ferry_handoffs_total{outcome="received"}'] - m0['ferry_handoffs_total{outcome="received"}'],
        m1['ferry_handoffs_total{outcome="failed"}']))
    # Requests the stopped worker had accepted itself die with it; those
    # queued in its mailbox or in the shared accept queue must not.
    handed = m1['ferry_handoffs_total{outcome="sent"}'] - m0['ferry_handoffs_total{outcome="sent"}']
    assert handed > 0, "no request was handed to the stopped owner"
    bad = [r for r in results if r != "ok"]
    assert not bad, "%d of %d requests queued for the dead worker were lost: %s" % (len(bad), len(results), bad)


# ---------------------------------------------------------------------------
# several agent connections per tunnel


def agent_ports_on(relay, agent, wpid):
    """The agent's local ports of its connections held by worker wpid."""
    tcp = tcp_table()
    agent_ports = {tcp[i][0] for i in socket_inodes(agent.pid) if i in tcp and tcp[i][1] == relay.port}
    return sorted(tcp[i][1] for i in socket_inodes(wpid)
                  if i in tcp and tcp[i][0] == relay.port and tcp[i][1] in agent_ports)


def destroy_socket(local_port, remote_port):
    """Abort one TCP connection from outside (ss -K, sock_destroy): the agent
    sees it fail and reconnects it. False where the kernel or rights lack it."""
    import subprocess
    try:
        p = subprocess.run(["ss", "-K", "-t", "src", "127.0.0.1", "sport", "=", ":%d" % local_port,
                            "dst", "127.0.0.1", "dport", "=", ":%d" % remote_port],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 0 and (":%d" % local_port) in p.stdout


def test_four_connections_per_tunnel(relay_factory, agent_factory, named_origins):
    relay = relay_factory(workers=4, limits={"tunnel_wait": "%ds" % wait(8)})
    origins = named_origins(["mc"])
    ws = worker_pids(relay)
    agents = start_tunnels(relay, agent_factory, origins, ["mc"], args=["--connections", "4"])
    agent = agents["mc"]
    poll(lambda: api_tunnels(relay)["mc"]["connections"] == 4, wait(10), what="4 connections")
    # The agent opens its 4 connections at once and they mostly land on one
    # worker's accept; the relay spreads agent connections over the workers
    # (each upgrade goes to the worker holding the fewest).
    t = api_tunnels(relay)["mc"]
    by_worker = agent_conns_by_worker(relay, agent)
    print("tunnel: %s; agent connections by worker pid: %s" % (t, by_worker))
    assert t["connections"] == 4, t
    assert len(set(t["workers"])) >= 3 and len(by_worker) >= 3, (t, by_worker)

    # All requests succeed, spread over the connections.
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        res = list(ex.map(lambda i: fresh_get(relay.port, relay.host("mc"), "/m%d" % i), range(200)))
    for r in res:
        check_answer(r, "mc")

    # Kill a worker that holds one of the four.
    victim = min(by_worker, key=lambda w: by_worker[w])
    assert by_worker[victim] == 1
    old = worker_pids(relay)
    senders = [Sender(relay, "mc") for _ in range(4)]
    for s in senders:
        s.start()
    time.sleep(1.0)
    t_kill = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    poll(lambda: [p for p in worker_pids(relay) if p not in old], wait(3), interval=0.02, what="a new worker")
    time.sleep(2.0)
    for s in senders:
        s.stop()
    problems = []
    slow = []
    total = 0
    for s in senders:
        for r in s.results:
            total += 1
            if r[2] != "ok" and not (r[2] == "conn" and r[0] < t_kill + 0.005):
                problems.append((round(r[0] - t_kill, 3), r[2], r[3]))
            if r[2] == "ok" and r[0] > t_kill and r[1] - r[0] > 0.5:
                slow.append(round(r[1] - r[0], 2))
    in_flight = [r for s in senders for r in s.results if r[0] < t_kill <= r[1]]
    print("killed %d holding %d of 4; %d requests; in flight at the kill: %s; slow after the kill: %s"
          % (victim, by_worker[victim], total, [r[2] for r in in_flight], slow))
    assert not problems, problems[:10]
    # The other connections carried on: no request after the kill had to
    # wait for the agent to reconnect.
    assert not slow, "requests after the kill waited %s s although other connections were up" % slow
    # The lost connection comes back.
    poll(lambda: api_tunnels(relay)["mc"]["connections"] == 4, wait(10), what="4 connections again")


# ---------------------------------------------------------------------------
# max_tunnels


def test_max_tunnels_full_503(relay_factory, agent_factory, named_origins):
    relay = relay_factory(workers=2, limits={"max_tunnels": 2})
    origins = named_origins(["full1", "full2", "full3"])
    start_tunnels(relay, agent_factory, origins, ["full1", "full2"])
    third = agent_factory(relay, target=origins.ports["full3"], subdomain="full3", name="ferry-full3", wait=False)
    m = third.wait_log(r"status=503.*", timeout=wait(10))
    assert "limit" in m.group(0) and "2 tunnels" in m.group(0), m.group(0)
    # The same by hand: the upgrade answers 503 and says why.
    with RawConn(relay.port) as c:
        r = c.request("GET", "/_ferry/tunnel/full4?tunnelid=full4", "127.0.0.1:%d" % relay.port, headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Protocol", "ferry.1"),
            ("Ferry-Session", "0123456789abcdef")])
    assert r.status == 503, r
    assert "limit of 2 tunnels" in r.text, r.text
    assert r.header("X-Ferry-Error"), r
    assert r.header("Retry-After"), r
    # The two tunnels in the table keep working; the table still holds 2.
    for n in ("full1", "full2"):
        check_answer(fresh_get(relay.port, relay.host(n), "/"), n)
    assert sorted(api_tunnels(relay)) == ["full1", "full2"]
    assert not any(line and "Forwarding" in line for line in third.lines)


# ---------------------------------------------------------------------------
# one worker


def test_single_worker_sanity(relay_factory, agent_factory, named_origins):
    names = ["one-a", "one-b", "one-c"]
    relay = relay_factory(workers=1)
    origins = named_origins(names)
    start_tunnels(relay, agent_factory, origins, names)
    assert len(worker_pids(relay)) == 1
    w = worker_pids(relay)[0]
    base = fd_count(w)
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        res = list(ex.map(lambda i: (names[i % 3], fresh_get(relay.port, relay.host(names[i % 3]), "/s%d" % i)),
                          range(300)))
    for n, r in res:
        check_answer(r, n)
    with RawConn(relay.port) as c:
        for j in range(30):
            n = names[j % 3]
            r = c.request("GET", "/ka%d" % j, relay.host(n))
            assert r.status == 200 and json.loads(r.body)["origin"] == n, r
    m = metrics(relay)
    assert m['ferry_handoffs_total{outcome="sent"}'] == 0
    assert m["ferry_workers"] == 1
    tunnels = api_tunnels(relay)
    assert sorted(tunnels) == sorted(names)
    assert all(t["worker_pid"] == w for t in tunnels.values())
    poll(lambda: fd_count(w) <= base, wait(10), interval=0.2, what="fds back to %d (now %d)" % (base, fd_count(w)))


# ---------------------------------------------------------------------------
# tunnel_wait


def test_tunnel_wait_for_every_request_of_a_keepalive_connection(relay_factory, agent_factory, named_origins):
    """Each request waits up to tunnel_wait for its tunnel, also the second
    request of a keep-alive connection whose first one waited in vain."""
    tw = wait(1.5)
    relay = relay_factory(workers=2, limits={"tunnel_wait": "%dms" % int(tw * 1000)})
    origins = named_origins(["late"])
    with RawConn(relay.port, timeout=wait(20)) as c:
        t0 = time.monotonic()
        r = c.request("GET", "/1", relay.host("ghost"))
        first = time.monotonic() - t0
        assert r.status == 404 and r.header("X-Ferry-Error") == "tunnel_offline", r
        assert first >= tw * 0.9, "the first request waited %.2fs, tunnel_wait is %.2fs" % (first, tw)
        assert r.header("Connection") != "close", "a 404 keeps the connection"
        # The next request on the same connection names a tunnel whose agent
        # connects a moment later: it must wait for it, not fail at once.
        c.send(build_request("GET", "/2", relay.host("late")))
        t1 = time.monotonic()
        time.sleep(0.3)
        agent_factory(relay, target=origins.ports["late"], subdomain="late", name="ferry-late")
        r = c.read_response()
        second = time.monotonic() - t1
        assert r.status == 200 and json.loads(r.body)["origin"] == "late", (
            "second request on the connection: %r after %.2fs (tunnel_wait %.2fs)" % (r, second, tw))
