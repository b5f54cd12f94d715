"""The agent's local API with ngrok's JSON shapes: what scripts and the npm
`ngrok` package do with it (curl .tunnels[0].public_url, POST and DELETE
/api/tunnels, the 503/104 answer before the session is up), the localhost
Host check, keep-alive, pipelining and several connections at once."""

import json
import re
import subprocess
import threading

import pytest

from harness import (LocalApi, RawConn, ferry_cmd_factory, free_port, get_via, poll, wait)

TUNNEL_KEYS = {"name", "ID", "uri", "public_url", "proto", "config", "metrics"}
CONNS_KEYS = {"count", "gauge", "rate1", "rate5", "rate15", "p50", "p90", "p95", "p99"}
HTTP_KEYS = {"count", "rate1", "rate5", "rate15", "p50", "p90", "p95", "p99"}
SESSION_ERR = "a successful ngrok tunnel session has not yet been established"


@pytest.fixture
def ferry(workdir, request):
    yield from ferry_cmd_factory(workdir, request)


@pytest.fixture
def agent_none(relay, ferry):
    """`ferry start --none` on a relay, its API ready and its session up."""
    web = free_port()
    f = ferry(["start", "--none", "--log=stdout", "--server=%s" % relay.server, "--web-addr=127.0.0.1:%d" % web])
    f.api_port()
    f.wait_stdout(r'msg="client session established"', wait(15))
    return f, LocalApi(web)


def check_tunnel_shape(t, name, addr):
    assert set(t) == TUNNEL_KEYS, t
    assert t["name"] == name
    assert re.fullmatch(r"[0-9a-f]{32}", t["ID"]), t["ID"]
    assert t["uri"] == "/api/tunnels/" + name
    assert t["proto"] == "http"
    assert t["config"] == {"addr": addr, "inspect": True}
    assert set(t["metrics"]) == {"conns", "http"}
    assert set(t["metrics"]["conns"]) == CONNS_KEYS
    assert set(t["metrics"]["http"]) == HTTP_KEYS


def test_curl_script_reads_public_url(relay, ferry, origin):
    web = free_port()
    ferry(["http", origin.http_port, "--server", relay.server, "--web-addr", "127.0.0.1:%d" % web])
    api = LocalApi(web)
    api.wait_tunnels(1)
    # what a shell script does
    out = subprocess.run(["curl", "-s", "--noproxy", "*", "localhost:%d/api/tunnels" % web], capture_output=True,
                         timeout=wait(10)).stdout
    doc = json.loads(out)
    assert doc["uri"] == "/api/tunnels"
    t = doc["tunnels"][0]
    check_tunnel_shape(t, "command_line", "http://localhost:%d" % origin.http_port)
    url = t["public_url"]
    assert re.fullmatch(r"http://[a-z0-9]{8}\.localhost:%d" % relay.port, url), url
    r = get_via(url, relay, "/echo")
    assert r.status_code == 200 and r.json()["path"] == "/echo"


def test_post_get_delete(relay, agent_none, origin):
    f, api = agent_none
    r = api.post("/api/tunnels", json={"addr": origin.http_port, "proto": "http", "name": "web",
                                       "authtoken": "ignored", "configPath": "/nowhere", "region": "us",
                                       "onStatusChange": None})
    assert r.status_code == 201, r.text
    t = r.json()
    check_tunnel_shape(t, "web", "http://localhost:%d" % origin.http_port)
    # reachable as soon as the POST answered
    assert get_via(t["public_url"], relay, "/echo").status_code == 200
    listed = api.get("/api/tunnels").json()["tunnels"]
    assert [x["public_url"] for x in listed] == [t["public_url"]]
    one = api.get("/api/tunnels/web").json()
    assert one["public_url"] == t["public_url"] and one["ID"] == t["ID"]
    # addr as a string, an arbitrary name
    r = api.post("/api/tunnels", json={"addr": "127.0.0.1:%d" % origin.http_port, "name": "second one",
                                       "subdomain": "apisub"})
    assert r.status_code == 201, r.text
    assert r.json()["public_url"] == "http://apisub.localhost:%d" % relay.port
    assert r.json()["uri"] == "/api/tunnels/second%20one"
    assert api.get("/api/tunnels/second%20one").status_code == 200
    assert len(api.tunnels()) == 2
    # DELETE drains its body and answers 204; the tunnel is gone at the relay
    r = api.delete("/api/tunnels/web", json={})
    assert r.status_code == 204 and r.content == b""
    assert [x["name"] for x in api.tunnels()] == ["second one"]
    poll(lambda: get_via(t["public_url"], relay, "/echo").status_code == 404, wait(10), what="tunnel gone")
    r = api.delete("/api/tunnels/web")
    assert r.status_code == 404 and "msg" in r.json()
    assert api.get("/api/tunnels/nosuch").status_code == 404


def test_post_errors(agent_none):
    f, api = agent_none
    cases = [(b"{not json", 400), (b"[1,2]", 400), (json.dumps({"proto": "tcp", "addr": 22}).encode(), 400),
             (json.dumps({"proto": "http"}).encode(), 400),
             (json.dumps({"addr": "no-such-host.invalid:80"}).encode(), 400)]
    for body, status in cases:
        r = api.post("/api/tunnels", data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == status, (body, r.text)
        assert r.json()["msg"], r.text
    assert api.tunnels() == []
    r = api.post("/api/tunnels", data=b"x" * 100000)
    assert r.status_code == 413


def test_post_duplicate_name(agent_none, origin):
    f, api = agent_none
    assert api.post("/api/tunnels", json={"addr": origin.http_port, "name": "dup"}).status_code == 201
    r = api.post("/api/tunnels", json={"addr": origin.http_port, "name": "dup"})
    assert r.status_code == 409 and "msg" in r.json()


def test_post_before_session_503(relay_factory, ferry, origin):
    relay = relay_factory(start=False)
    web = free_port()
    f = ferry(["start", "--none", "--log=stdout", "--server", relay.server, "--web-addr", "127.0.0.1:%d" % web])
    api = LocalApi(f.api_port())
    r = api.post("/api/tunnels", json={"addr": origin.http_port, "proto": "http", "name": "early"})
    assert r.status_code == 503
    assert r.json() == {"error_code": 104, "status_code": 503, "msg": r.json()["msg"],
                        "details": {"err": SESSION_ERR}}
    assert api.tunnels() == []
    assert api.get("/api/status").json()["status"] != "online"
    relay.start()
    f.wait_stdout(r'msg="client session established"', wait(20))
    # the name was not kept
    r = api.post("/api/tunnels", json={"addr": origin.http_port, "proto": "http", "name": "early"})
    assert r.status_code == 201, r.text
    assert get_via(r.json()["public_url"], relay, "/echo").status_code == 200
    assert api.get("/api/status").json()["status"] == "online"


def test_post_refused_by_relay(relay, agent_none, ferry, origin):
    f, api = agent_none
    ferry(["http", origin.http_port, "--server", relay.server, "--subdomain", "taken",
           "--web-addr", "127.0.0.1:%d" % free_port()], name="holder").wait_stdout("Forwarding", wait(15))
    r = api.post("/api/tunnels", json={"addr": origin.http_port, "name": "t", "subdomain": "taken"})
    assert r.status_code == 502, r.text
    assert "409" in r.json()["details"]["err"], r.text
    assert api.tunnels() == [] and api.get("/api/tunnels/t").status_code == 404


@pytest.mark.parametrize("host,ok", [("localhost", True), ("LocalHost:4040", True), ("127.0.0.1", True),
                                     ("127.0.0.1:1234", True), ("[::1]", True), ("[::1]:4040", True),
                                     ("evil.example", False), ("evil.example:4040", False),
                                     ("localhost.evil.example", False), ("127.0.0.2", False),
                                     ("localhost:abc", False)])
def test_host_check(agent_none, host, ok):
    f, api = agent_none
    for path in ("/api/tunnels", "/api/status"):
        r = api.get(path, host=host)
        assert r.status_code == (200 if ok else 403), (host, r.status_code, r.text)
        if not ok:
            assert "msg" in r.json()
    if not ok:
        r = api.post("/api/tunnels", host=host, json={"addr": 1, "name": "x"})
        assert r.status_code == 403
        assert api.tunnels() == []


def test_no_host_refused(agent_none):
    f, api = agent_none
    with RawConn(api.port) as c:
        c.send(b"GET /api/tunnels HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 403


def test_keepalive_pipelining_and_waiting_post(agent_none, origin):
    f, api = agent_none
    host = "localhost:%d" % api.port
    with RawConn(api.port) as c:
        body = json.dumps({"addr": origin.http_port, "name": "piped"})
        # a POST that waits for READY, then two GETs pipelined behind it
        c.send("POST /api/tunnels HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
               "Content-Length: %d\r\n\r\n%s" % (host, len(body), body)
               + "GET /api/tunnels/piped HTTP/1.1\r\nHost: %s\r\n\r\n" % host
               + "DELETE /api/tunnels/piped HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\n\r\n{}" % host)
        r1 = c.read_response()
        assert r1.status == 201, r1
        r2 = c.read_response()
        assert r2.status == 200 and r2.json()["public_url"] == r1.json()["public_url"]
        r3 = c.read_response()
        assert r3.status == 204
        # still open: keep-alive
        r4 = c.request("GET", "/api/tunnels", host)
        assert r4.status == 200 and r4.json()["tunnels"] == []
        # a chunked POST body
        c.send("POST /api/tunnels HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
               % (host, len(body), body))
        r5 = c.read_response()
        assert r5.status == 201, r5
        r6 = c.request("GET", "/api/tunnels", host, headers=[("Connection", "close")])
        assert r6.status == 200 and r6.header("Connection") == "close"
        assert c.closed_by_peer(wait(5))


def test_several_connections(agent_none, origin):
    f, api = agent_none
    errors = []

    def worker(i):
        try:
            a = LocalApi(api.port)
            r = a.post("/api/tunnels", json={"addr": origin.http_port, "name": "par%d" % i})
            assert r.status_code == 201, r.text
            for _ in range(20):
                assert a.get("/api/tunnels/par%d" % i).status_code == 200
                assert a.get("/api/status").status_code == 200
        except Exception as e:  # reported below
            errors.append(repr(e))
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(wait(60))
    assert not errors, errors
    assert len(api.tunnels()) == 8


def test_status(relay, agent_none, origin):
    f, api = agent_none
    api.post("/api/tunnels", json={"addr": origin.http_port, "name": "s"})
    st = api.get("/api/status").json()
    assert st["status"] == "online" and st["uri"] == "/api/status"
    assert st["agent_version"]
    assert st["state"] == "connected"
    for k in ("last_error", "last_error_body", "reconnects", "rtt", "upstreams"):
        assert k in st, st
    assert st["upstreams"][0]["url"] == "http://localhost:%d" % origin.http_port
    assert st["upstreams"][0]["tunnel"] == "s"
    assert st["upstreams"][0]["status"] in ("unknown", "healthy")
    relay.stop()
    f.wait_stdout(r'msg="session closed, starting reconnect loop"', wait(15))
    st = poll(lambda: (lambda s: s if s["status"] != "online" else None)(api.get("/api/status").json()), wait(10),
              what="status offline")
    assert st["state"] in ("disconnected", "error", "connecting")
    assert st["last_error"]


def test_npm_ngrok_flow(relay, ferry, origin, workdir):
    """What the npm package `ngrok` 4.x does with the binary it spawns."""
    import time
    import uuid
    f = ferry(["start", "--none", "--log=stdout", "--config=%s/ngrok.yml" % workdir, "--region=us"],
              env={"FERRY_SERVER": relay.server})
    m = f.wait_stdout(r"starting web service.*addr=(\d+\.\d+\.\d+\.\d+:\d+)", wait(15))
    api_url = "http://" + m.group(1)
    port = int(m.group(1).rsplit(":", 1)[1])
    api = LocalApi(port)
    name = str(uuid.uuid4())
    # connectRetry: POST at once, retry every 200 ms while the session is not up
    for _ in range(100):
        r = api.post("/api/tunnels", json={"addr": origin.http_port, "proto": "http", "name": name})
        if r.status_code == 503 and r.json().get("details", {}).get("err") == SESSION_ERR:
            time.sleep(0.2)
            continue
        break
    assert r.status_code == 201, r.text
    url = r.json()["public_url"]
    assert get_via(url, relay, "/echo").status_code == 200
    # getUrl / disconnect(url): find the tunnel by public_url, DELETE its uri
    tunnels = api.get("/api/tunnels").json()["tunnels"]
    t = [x for x in tunnels if x["public_url"] == url][0]
    assert t["uri"] == "/api/tunnels/" + name
    assert api.delete(t["uri"]).status_code == 204
    assert api.tunnels() == []
    assert f.log() == ""
    assert api_url.startswith("http://127.0.0.1:")


def test_curl_post_large_body_expect_continue(agent_none, origin, workdir):
    import os
    f, api = agent_none
    path = os.path.join(workdir, "big.json")
    with open(path, "w") as fh:
        json.dump({"addr": origin.http_port, "name": "big", "metadata": "m" * 5000}, fh)
    p = subprocess.run(["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                        "-H", "Content-Type: application/json", "--data-binary", "@" + path,
                        "http://localhost:%d/api/tunnels" % api.port], capture_output=True, timeout=wait(20))
    code, took = p.stdout.decode().split()
    assert code == "201", p.stdout
    assert float(took) < 0.9 * wait(1), "curl waited for 100 Continue: %ss" % took
