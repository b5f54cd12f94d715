"""Upstream failover sets: three upstreams (priorities 2, 1, 1; weights 1, 2,
1), the primary killed and brought back mid-run with every request served,
weighted round-robin between the secondaries, recovery probes, manual
failover and reset through the local API, and a refused stream replayed on
the next upstream with its request body intact."""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import (LocalApi, NamedOrigin, echo_headers, ferry_cmd_factory, free_port, get_via, poll, session,
                     wait)


@pytest.fixture
def ferry(workdir, request):
    yield from ferry_cmd_factory(workdir, request)


@pytest.fixture
def origins():
    made = {}

    def make(name):
        made[name] = NamedOrigin(name).start()
        return made[name]
    yield make
    for o in made.values():
        o.stop()


def start_failover_agent(ferry, relay, workdir, ups, recovery="1s", tunnel_id="fo", extra=""):
    web = free_port()
    lines = "\n".join('      - {url: "%s", priority: %d, weight: %d}' % u for u in ups)
    cfg = os.path.join(workdir, "failover.yml")
    with open(cfg, "w") as f:
        f.write("""version: "2"
server_addr: %s
web_addr: 127.0.0.1:%d
tunnels:
  web:
    subdomain: %s
%s    upstreams:
%s
    health: {failures: 3, recovery_interval: %s, path: /health}
""" % (relay.server, web, tunnel_id, extra, lines, recovery))
    a = ferry(["start", "web", "--config", cfg, "--log", "stdout", "--log-format", "logfmt"])
    api = LocalApi(a.api_port())
    t = api.wait_tunnels(1)[0]
    return a, api, t["public_url"]


def load(url, relay, n, threads=8):
    """n GETs, each on a fresh connection; returns the bodies (names)."""
    def one(_):
        r = get_via(url, relay, "/")
        assert r.status_code == 200, (r.status_code, r.text)
        return r.text
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(one, range(n)))


def upstream(api, url):
    doc = api.get("/api/tunnels/web/upstreams").json()
    return [u for u in doc["upstreams"] if u["url"] == url][0]


def test_failover_three_upstreams(relay, ferry, workdir, origins):
    p, s1, s2 = origins("primary"), origins("secondary1"), origins("secondary2")
    a, api, url = start_failover_agent(ferry, relay, workdir, [(p.url, 2, 1), (s1.url, 1, 2), (s2.url, 1, 1)])
    counts = {"primary": 0, "secondary1": 0, "secondary2": 0}

    # 1: the primary takes everything
    for name in load(url, relay, 1000):
        counts[name] += 1
    assert counts["primary"] == 1000, counts

    # 2: the primary is gone; no end user sees an error
    p.stop()
    before = dict(counts)
    for name in load(url, relay, 1000):
        counts[name] += 1
    assert counts["primary"] == before["primary"], counts
    u = upstream(api, p.url)
    assert u["status"] == "unhealthy" and u["failures"] >= 3, u
    assert "refused" in u["last_error"].lower(), u
    st = api.get("/api/status").json()
    assert [x["status"] for x in st["upstreams"] if x["url"] == p.url] == ["unhealthy"]
    a.wait_stdout(r'msg="upstream marked unhealthy".*url=%s' % p.url, wait(5))

    # 3: it comes back; after a recovery interval it takes the traffic again
    p.start()
    poll(lambda: upstream(api, p.url)["status"] == "healthy", wait(5), what="primary healthy again")
    assert p.probes >= 1
    before = dict(counts)
    for name in load(url, relay, 1000):
        counts[name] += 1
    assert counts["primary"] - before["primary"] >= 990, counts

    assert sum(counts.values()) == 3000
    sec = counts["secondary1"] + counts["secondary2"]
    assert sec >= 900, counts
    share = counts["secondary1"] / float(sec)
    assert abs(share - 2.0 / 3.0) <= 0.05, counts


def test_manual_failover_and_reset(relay, ferry, workdir, origins):
    p, s1, s2 = origins("primary"), origins("secondary1"), origins("secondary2")
    a, api, url = start_failover_agent(ferry, relay, workdir, [(p.url, 2, 1), (s1.url, 1, 2), (s2.url, 1, 1)],
                                       recovery="60s")
    doc = api.get("/api/tunnels/web/upstreams").json()
    assert doc["next"] == p.url and doc["pinned"] is None
    assert [(u["url"], u["priority"], u["weight"]) for u in doc["upstreams"]] == \
        [(p.url, 2, 1), (s1.url, 1, 2), (s2.url, 1, 1)]

    # pin new streams to secondary2
    r = api.post("/api/tunnels/web/upstreams/failover", json={"url": s2.url})
    assert r.status_code == 200, r.text
    assert r.json()["pinned"] == s2.url and r.json()["next"] == s2.url
    assert set(load(url, relay, 40)) == {"secondary2"}
    # released
    assert api.delete("/api/tunnels/web/upstreams/failover").status_code == 204
    assert api.get("/api/tunnels/web/upstreams").json()["pinned"] is None
    assert set(load(url, relay, 20)) == {"primary"}
    r = api.post("/api/tunnels/web/upstreams/failover", json={"url": "http://127.0.0.1:1"})
    assert r.status_code == 404

    # the primary fails, is marked unhealthy, comes back: with a 60 s
    # recovery interval only a reset brings it back at once
    p.stop()
    load(url, relay, 10)
    assert upstream(api, p.url)["status"] == "unhealthy"
    p.start()
    assert "primary" not in load(url, relay, 10)
    r = api.post("/api/tunnels/web/upstreams/reset", json={"url": p.url})
    assert r.status_code == 200, r.text
    u = upstream(api, p.url)
    assert u["status"] == "healthy" and u["failures"] == 0, u
    assert api.get("/api/tunnels/web/upstreams").json()["next"] == p.url
    assert set(load(url, relay, 20)) == {"primary"}


def test_refused_stream_replayed_with_body(relay, ferry, workdir, origin):
    dead = free_port()
    live = "http://127.0.0.1:%d" % origin.http_port
    a, api, url = start_failover_agent(ferry, relay, workdir,
                                       [("http://127.0.0.1:%d" % dead, 2, 1), (live, 1, 1)],
                                       tunnel_id="replay", extra="    host_header: rewrite\n")
    body = os.urandom(300000)
    host = url.split("//")[1]
    for _ in range(5):
        r = session().post(relay.url("/upload"), data=body, headers={"Host": host, "Connection": "close"},
                           timeout=wait(30))
        assert r.status_code == 200, r.text
        assert r.json() == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}
    r = get_via(url, relay, "/echo")
    assert echo_headers(r.json(), "Host") == ["127.0.0.1:%d" % origin.http_port]
    u = upstream(api, "http://127.0.0.1:%d" % dead)
    assert u["status"] == "unhealthy", u


def test_all_upstreams_down_502(relay, ferry, workdir):
    d1, d2 = free_port(), free_port()
    a, api, url = start_failover_agent(ferry, relay, workdir,
                                       [("http://127.0.0.1:%d" % d1, 1, 1), ("http://127.0.0.1:%d" % d2, 1, 1)],
                                       tunnel_id="alldown")
    r = get_via(url, relay, "/")
    assert r.status_code == 502 and r.headers.get("X-Ferry-Error") == "upstream_refused"
    assert ":%d" % d1 in r.text or ":%d" % d2 in r.text, r.text
