"""Ten thousand tunnels at once (issue 10): tools/swarm connects 10,000
agent connections, each its own tunnel speaking the real protocol (upgrade,
HELLO, READY, PING), to a relay with two workers; a sample of the tunnels
must answer, each with its own id, whichever way the request names it.
Memory is only guarded against a leak (4x the 8 KiB per idle tunnel target,
sum of PSS over the relay's processes; skipped with FERRY_SAN=1): `make
bench-idle` reports the figure.
"""

import os
import resource
import signal
import subprocess
import time

import pytest

from harness import SAN, RawConn, descendants, poll, session, wait, worker_deaths

BUILD = os.environ.get("FERRY_BUILD") or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "build")
SWARM = os.path.join(BUILD, "tools", "swarm")


def pss_kib(root):
    total = 0
    for pid in [root] + descendants(root):
        try:
            with open("/proc/%d/smaps_rollup" % pid) as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except OSError:
            pass
    return total


def get(port, host, target="/"):
    """One GET on a fresh connection: (status, body)."""
    with RawConn(port, timeout=wait(10)) as c:
        r = c.request("GET", target, host)
    return r.status, r.body


def tunnel_count(relay):
    return len(session().get(relay.admin_url("/api/tunnels"), timeout=wait(10)).json()["tunnels"])


def test_ten_thousand_swarm_tunnels(relay_factory, workdir):
    if not os.access(SWARM, os.X_OK):
        pytest.fail("no swarm binary at %s (make builds it)" % SWARM)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    n = min(10000, hard - 1000)
    if n < 2000:
        pytest.skip("RLIMIT_NOFILE hard limit %d is too low for 2,000 tunnels" % hard)
    relay = relay_factory(workers=2, limits={"max_tunnels": 16384})
    base = pss_kib(relay.proc.pid)
    err = open(os.path.join(workdir, "swarm.stderr"), "w")
    sw = subprocess.Popen([SWARM, "agents", "-n", str(n), "-d", str(wait(120)), "127.0.0.1:%d" % relay.port],
                          stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        ready = sw.stdout.readline().split()
        assert ready[:1] == ["ready"], (ready, open(err.name).read()[-2000:])
        got = dict(p.split("=") for p in ready[1:])
        assert got["agents"] == str(n) and got["failed"] == "0", (got, open(err.name).read()[-2000:])
        assert tunnel_count(relay) == n
        per_tunnel = (pss_kib(relay.proc.pid) - base) * 1024.0 / n
        print("%d tunnels up in %ss; relay PSS %.0f bytes per tunnel" % (n, got["seconds"], per_tunnel))

        # A sample, by each way a request names its tunnel; every answer
        # comes from the tunnel named.
        for k, i in enumerate(list(range(0, n, n // 40)) + [n - 1]):
            tid = "sw-%d" % i
            if k % 3 == 0:
                st, body = get(relay.port, relay.host(tid))
            elif k % 3 == 1:
                st, body = get(relay.port, "127.0.0.1:%d" % relay.port, "/t/%s/x" % tid)
            else:
                st, body = get(relay.port, "127.0.0.1:%d" % relay.port, "/x?tunnelid=%s" % tid)
            assert (st, body) == (200, ("swarm %s\n" % tid).encode()), (tid, st, body)
        # A tunnel the swarm does not hold is not connected.
        assert get(relay.port, relay.host("sw-%d" % n))[0] == 404
        if not SAN:
            assert per_tunnel < 4 * 8192, "%.0f bytes of PSS per idle tunnel" % per_tunnel
    finally:
        if sw.poll() is None:
            sw.send_signal(signal.SIGTERM)
        try:
            out, _ = sw.communicate(timeout=wait(30))
        except subprocess.TimeoutExpired:
            sw.kill()
            out, _ = sw.communicate()
        err.close()
    done = out.split()
    assert done[:1] == ["done"], out
    got = dict(p.split("=") for p in done[1:])
    assert got["alive"] == str(n), "the relay closed tunnels it should have kept: %s" % out
    assert got["errors"] == "0", out
    assert sw.returncode == 0, open(err.name).read()[-2000:]
    # Gone agents leave the table.
    poll(lambda: tunnel_count(relay) == 0, wait(20), what="the table to empty")
    assert worker_deaths(relay) == []


def test_thousands_of_kept_alive_clients(relay_factory, workdir):
    """3,000 end users, each served once through a swarm tunnel on a
    keep-alive connection, then idle: all are answered, none is closed
    (their streams stay open: max_streams_per_tunnel allows them), and the
    relay holds no buffer for them (PSS guard at 4x the 4 KiB target)."""
    if not os.access(SWARM, os.X_OK):
        pytest.fail("no swarm binary at %s (make builds it)" % SWARM)
    n = 3000
    relay = relay_factory(workers=2, limits={"max_streams_per_tunnel": 8192, "header_timeout": "120s",
                                             "idle_timeout": "120s"})
    agent = subprocess.Popen([SWARM, "agents", "-n", "1", "-p", "kept", "-d", str(wait(120)),
                              "127.0.0.1:%d" % relay.port], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    clients = None
    try:
        assert agent.stdout.readline().startswith("ready agents=1 failed=0")
        host = relay.host("kept-0")
        assert get(relay.port, host) == (200, b"swarm kept-0\n")
        base = pss_kib(relay.proc.pid)
        clients = subprocess.Popen([SWARM, "clients", "-n", str(n), "-H", host, "-d", str(wait(120)),
                                    "127.0.0.1:%d" % relay.port], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        ready = clients.stdout.readline().split()
        assert ready[:3] == ["ready", "clients=%d" % n, "failed=0"], (ready, clients.stderr.read()
                                                                     if clients.poll() is not None else "")
        per_client = (pss_kib(relay.proc.pid) - base) * 1024.0 / n
        print("%d kept-alive idle clients: relay PSS %.0f bytes each" % (n, per_client))
        if not SAN:
            assert per_client < 4 * 4096, "%.0f bytes of PSS per idle kept-alive client" % per_client
        assert get(relay.port, host) == (200, b"swarm kept-0\n")
    finally:
        for p in (clients, agent):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        out = clients.communicate(timeout=wait(30))[0] if clients is not None else ""
        agent.communicate(timeout=wait(30))
    done = dict(x.split("=") for x in out.split()[1:]) if out.startswith("done") else {}
    assert done.get("alive") == str(n) and done.get("requests") == str(n), out
    assert worker_deaths(relay) == []
