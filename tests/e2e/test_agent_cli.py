"""The agent's command line as tools written for ngrok use it: version,
unknown flags, authtoken verbs, `start --none|NAME...|--all` with YAML config
files (repeatable, later wins), flags, env, log formats, --host-header,
--basic-auth and --connections in the HELLO, SIGTERM."""

import json
import os
import re
import signal
import time

import pytest

from harness import (FakeRelay, LocalApi, Tunnel, echo_headers, ferry_cmd_factory, free_port, get_via, poll,
                     run_ferry, wait)


@pytest.fixture
def ferry(workdir, request):
    yield from ferry_cmd_factory(workdir, request)


@pytest.fixture
def fake_relay():
    f = FakeRelay()
    yield f
    f.close()


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


# --- commands that exit ------------------------------------------------------


@pytest.mark.parametrize("argv", [["version"], ["--version"], ["-v"]])
def test_version(workdir, argv):
    rc, out, err = run_ferry(argv, workdir)
    assert rc == 0, err
    assert re.fullmatch(r"ferry version \d+\.\d+\.\d+\n", out), out
    assert err == ""


@pytest.mark.parametrize("argv", [["http", "3000", "--bogus"], ["http", "--nope=1", "3000"],
                                  ["start", "--none", "--what"], ["frobnicate"], []])
def test_unknown_flag_or_command(workdir, argv):
    rc, out, err = run_ferry(argv, workdir)
    assert rc != 0
    assert re.search(r"^ERROR:  ", err, re.M), err
    assert "usage: ferry http" in err, err


def test_flag_needs_value(workdir):
    rc, out, err = run_ferry(["http", "3000", "--subdomain"], workdir)
    assert rc != 0
    assert "ERROR:  --subdomain needs a value" in err, err


def test_http_needs_address(workdir):
    rc, out, err = run_ferry(["http"], workdir)
    assert rc != 0 and "ERROR:  " in err and "PORT" in err, err


def test_start_needs_names(workdir):
    rc, out, err = run_ferry(["start"], workdir)
    assert rc != 0 and "ERROR:  " in err and "--none" in err, err


@pytest.mark.parametrize("verb", [["config", "add-authtoken"], ["authtoken"]])
def test_authtoken_saved(workdir, verb):
    path = os.path.join(workdir, "conf", "ferry.yml")
    write(path, 'version: "2"\nauthtoken: old\ntunnels:\n  web:\n    addr: 8080\n')
    rc, out, err = run_ferry(verb + ["s3cr3t-Tok_en", "--config=%s" % path], workdir)
    assert rc == 0, err
    assert out == "Authtoken saved to configuration file: %s\n" % path
    assert err == ""
    text = open(path).read()
    assert "authtoken: s3cr3t-Tok_en\n" in text
    assert "old" not in text
    assert "tunnels:\n  web:\n    addr: 8080\n" in text, text


def test_authtoken_default_path(workdir):
    rc, out, err = run_ferry(["config", "add-authtoken", "tok123"], workdir)
    assert rc == 0, err
    path = os.path.join(workdir, ".config", "ferry", "ferry.yml")
    assert out == "Authtoken saved to configuration file: %s\n" % path
    assert "authtoken: tok123" in open(path).read()


def test_bad_config_is_fatal(workdir):
    path = write(os.path.join(workdir, "bad.yml"), "tunnels: [1, 2\n")
    rc, out, err = run_ferry(["start", "--none", "--config", path], workdir)
    assert rc != 0
    assert err.startswith("ERROR:  ") and "bad.yml" in err, err


def test_start_unknown_tunnel(workdir):
    path = write(os.path.join(workdir, "c.yml"), "tunnels:\n  web:\n    addr: 8080\n")
    rc, out, err = run_ferry(["start", "nope", "--config", path], workdir)
    assert rc != 0 and 'ERROR:  tunnel "nope" is not defined' in err, err


def test_tunnel_flags_belong_to_http(workdir):
    rc, out, err = run_ferry(["start", "--none", "--subdomain", "x"], workdir)
    assert rc != 0 and "ERROR:  " in err, err


# --- start --none as the npm package runs it --------------------------------------


def test_start_none_as_npm_ngrok(relay, ferry, workdir):
    web = free_port()
    f = ferry(["start", "--none", "--log=stdout", "--config=%s" % os.path.join(workdir, "missing.yml"),
               "--authtoken=whatever", "--region=eu", "--web-addr=127.0.0.1:%d" % web],
              env={"FERRY_SERVER": relay.server})
    # the API listens before the line says so
    assert f.api_port() == web
    api = LocalApi(web)
    assert api.get("/api/tunnels").json() == {"tunnels": [], "uri": "/api/tunnels"}
    f.wait_stdout(r'msg="client session established"', wait(15))
    for line in f.stdout_text().splitlines():
        assert re.match(r"t=\S+ lvl=\w{4} msg=", line), line
    assert f.proc.running()
    assert f.log() == "", "stderr must stay empty during a good start"
    assert f.stop(timeout=wait(5)) == 0


def test_start_none_relay_down_not_fatal(ferry, workdir):
    web = free_port()
    dead = free_port()
    f = ferry(["start", "--none", "--log=stdout", "--web-addr", "127.0.0.1:%d" % web,
               "--server", "ws://127.0.0.1:%d" % dead])
    f.api_port()
    r = LocalApi(web).post("/api/tunnels", json={"addr": 8080, "proto": "http", "name": "x"})
    assert r.status_code == 503, r.text
    assert r.json()["error_code"] == 104
    assert f.proc.running()


# --- config files ----------------------------------------------------------------


def test_start_names_and_all_from_config(relay, ferry, workdir, origin):
    web = free_port()
    cfg = write(os.path.join(workdir, "ferry.yml"), """version: "2"
server_addr: ws://127.0.0.1:1
web_addr: 127.0.0.1:%d
tunnels:
  one:
    proto: http
    addr: %d
    subdomain: cfg-one
  two:
    addr: 127.0.0.1:%d
    subdomain: cfg-two
  three:
    addr: http://127.0.0.1:%d
    subdomain: cfg-three
""" % (web, origin.http_port, origin.http_port, origin.http_port))
    # a second file overrides the first: the relay's address, tunnel two's id
    over = write(os.path.join(workdir, "over.yml"), """server_addr: %s
tunnels:
  two:
    addr: %d
    subdomain: cfg-two-b
""" % (relay.server, origin.http_port))
    f = ferry(["start", "one", "two", "--config", cfg, "--config=%s" % over, "--log", "stdout",
               "--log-format", "logfmt"])
    api = LocalApi(f.api_port())
    tunnels = api.wait_tunnels(2)
    urls = sorted(t["public_url"] for t in tunnels)
    assert urls == ["http://cfg-one.localhost:%d" % relay.port, "http://cfg-two-b.localhost:%d" % relay.port]
    for u in urls:
        assert get_via(u, relay, "/echo").status_code == 200
    names = sorted(t["name"] for t in tunnels)
    assert names == ["one", "two"]
    f.stop()

    g = ferry(["start", "--all", "--config", cfg, "--config", over, "--log", "stdout",
               "--web-addr", "127.0.0.1:%d" % free_port()], name="ferry-all")
    api = LocalApi(g.api_port())
    tunnels = api.wait_tunnels(3)
    assert sorted(t["name"] for t in tunnels) == ["one", "three", "two"]


def test_default_config_file(relay, ferry, workdir, origin):
    write(os.path.join(workdir, ".config", "ferry", "ferry.yml"),
          "server_addr: %s\ntunnels:\n  dflt:\n    addr: %d\n    subdomain: dflt\n" % (relay.server, origin.http_port))
    f = ferry(["start", "dflt", "--log=stdout", "--web-addr=127.0.0.1:%d" % free_port()])
    api = LocalApi(f.api_port())
    t = api.wait_tunnels(1)[0]
    assert t["public_url"] == "http://dflt.localhost:%d" % relay.port


def test_web_addr_falls_back_to_next_port(relay, ferry, workdir):
    # whoever holds 4040 (maybe another agent), ferry takes the next free port
    f = ferry(["start", "--none", "--log=stdout", "--server", relay.server])
    port = f.api_port()
    assert 4040 <= port < 4140
    g = ferry(["start", "--none", "--log=stdout", "--server", relay.server], name="ferry-b")
    assert g.api_port() not in (port,)
    assert 4040 <= g.api_port() < 4140


# --- http flags, env, logs ---------------------------------------------------------


def test_log_formats(relay, ferry, origin):
    f = ferry(["http", origin.http_port, "--server", relay.server, "--log", "stdout", "--log-format", "json",
               "--web-addr", "127.0.0.1:%d" % free_port()])
    f.wait_stdout(r'"msg":"started tunnel"', wait(15))
    lines = f.stdout_text().splitlines()
    objs = [json.loads(line) for line in lines]  # every line is JSON
    started = [o for o in objs if o["msg"] == "started tunnel"][0]
    assert started["obj"] == "tunnels" and started["name"] == "command_line"
    assert started["addr"] == "http://localhost:%d" % origin.http_port
    assert get_via(started["url"], relay, "/echo").status_code == 200
    assert not any("Forwarding" in line for line in lines), "stdout carries the log only"

    g = ferry(["http", origin.http_port, "--server", relay.server, "--log", "stdout",
               "--web-addr", "127.0.0.1:%d" % free_port()], name="ferry-term")
    # term on a pipe is logfmt
    g.wait_stdout(r'msg="started tunnel"', wait(15))
    assert all(not line.startswith("{") and line.startswith("t=") for line in g.stdout_text().splitlines())


def test_log_to_file(relay, ferry, origin, workdir):
    path = os.path.join(workdir, "agent.log")
    f = ferry(["http", origin.http_port, "--server", relay.server, "--log", path, "--log-format=logfmt",
               "--web-addr", "127.0.0.1:%d" % free_port()])
    f.wait_stdout(r"Forwarding\s+http://", wait(15))
    poll(lambda: 'msg="started tunnel"' in open(path).read(), wait(10), what="log file")


def test_authtoken_sources(fake_relay, ferry, origin, workdir):
    cfg = write(os.path.join(workdir, "t.yml"), "authtoken: from-config\n")
    cases = [
        (["--config", cfg], {}, "from-config"),
        (["--config", cfg], {"FERRY_AUTHTOKEN": "from-env"}, "from-env"),
        (["--config", cfg, "--authtoken", "from-flag"], {"FERRY_AUTHTOKEN": "from-env"}, "from-flag"),
    ]
    for i, (args, env, want) in enumerate(cases):
        n = len(fake_relay.conns)
        f = ferry(["http", origin.http_port, "--server", fake_relay.server, "--subdomain", "tok%d" % i,
                   "--log", "stderr", "--web-addr", "127.0.0.1:%d" % free_port()] + args, env=env,
                  name="ferry-tok%d" % i)
        f.wait_stdout(r"Forwarding", wait(15))
        fake_relay.wait_conns(n + 1, wait(10))
        c = [x for x in fake_relay.conns if "/tok%d?" % i in x.path][0]
        assert c.headers.get("Authorization") == "Bearer " + want
        f.stop()


def test_hello_carries_options(fake_relay, ferry, origin):
    f = ferry(["http", origin.http_port, "--server", fake_relay.server, "--subdomain", "opts",
               "--basic-auth", "alice:s3cret", "--connections", "2", "--log", "stderr",
               "--web-addr", "127.0.0.1:%d" % free_port()])
    f.wait_stdout(r"Forwarding", wait(15))
    fake_relay.wait_conns(2, wait(10))
    poll(lambda: all(c.hello is not None for c in fake_relay.conns[:2]), wait(10), what="HELLOs")
    for c in fake_relay.conns[:2]:
        assert c.hello["basic_auth"] == "alice:s3cret"
        assert c.hello["connections"] == "2"
        assert c.hello["tunnel"] == "opts"
        assert c.session == fake_relay.conns[0].session


def test_basic_auth_at_relay(relay, ferry, origin):
    f = ferry(["http", origin.http_port, "--server", relay.server, "--subdomain", "locked",
               "--basic-auth", "alice:s3cret", "--log", "stderr", "--web-addr", "127.0.0.1:%d" % free_port()])
    m = f.wait_stdout(r"Forwarding\s+(\S+)", wait(15))
    r = get_via(m.group(1), relay, "/echo")
    assert r.status_code == 401, r.text
    assert get_via(m.group(1), relay, "/echo", auth=("alice", "s3cret")).status_code == 200
    assert get_via(m.group(1), relay, "/echo", auth=("alice", "wrong")).status_code == 401


@pytest.mark.parametrize("mode", ["rewrite", "preserve", "internal.example:8443"])
def test_host_header(relay, ferry, origin, mode):
    f = ferry(["http", "127.0.0.1:%d" % origin.http_port, "--server", relay.server, "--subdomain", "hh",
               "--host-header=%s" % mode, "--log", "stderr", "--web-addr", "127.0.0.1:%d" % free_port()])
    f.wait_stdout(r"Forwarding", wait(15))
    want = {"rewrite": "127.0.0.1:%d" % origin.http_port, "preserve": relay.host("hh"),
            "internal.example:8443": "internal.example:8443"}[mode]
    t = Tunnel(relay, f)
    t.id = "hh"
    # several requests on one keep-alive connection, with bodies of both framings
    with t.raw() as c:
        for i in range(3):
            r = c.request("GET", "/echo?i=%d" % i, t.host)
            assert r.status == 200
            assert echo_headers(r.json(), "Host") == [want]
            assert echo_headers(r.json(), "X-Forwarded-Host") == [relay.host("hh")]
        r = c.request("POST", "/echo", t.host, body=b"x" * 100000)
        assert r.json()["body_length"] == 100000 and echo_headers(r.json(), "Host") == [want]
        c.send("POST /echo HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n" % t.host)
        r = c.read_response()
        assert r.json()["body_length"] == 11 and echo_headers(r.json(), "Host") == [want]
        r = c.request("GET", "/echo", t.host)
        assert echo_headers(r.json(), "Host") == [want]
    # the requests were counted
    api = LocalApi(int(re.search(r":(\d+)$", f.cmd_args[-1]).group(1)))
    poll(lambda: api.get("/api/tunnels/command_line").json()["metrics"]["http"]["count"] >= 6, wait(10),
         what="http count")


def test_http_tunnel_is_command_line(relay, ferry, origin):
    web = free_port()
    f = ferry(["http", str(origin.http_port), "--server=%s" % relay.server, "--web-addr=127.0.0.1:%d" % web])
    m = f.wait_stdout(r"Forwarding\s+(\S+)\s+->\s+(\S+)", wait(15))
    t = LocalApi(web).wait_tunnels(1)[0]
    assert t["name"] == "command_line"
    assert t["public_url"] == m.group(1)
    assert t["config"]["addr"] == m.group(2) == "http://localhost:%d" % origin.http_port


def test_sigterm_exits_promptly(relay, ferry, origin):
    f = ferry(["http", origin.http_port, "--server", relay.server, "--log", "stderr",
               "--web-addr", "127.0.0.1:%d" % free_port()])
    f.wait_stdout(r"Forwarding", wait(15))
    t0 = time.monotonic()
    f.proc.p.send_signal(signal.SIGTERM)
    assert f.proc.p.wait(wait(5)) == 0
    assert time.monotonic() - t0 < wait(3)



def test_ngrok_config_with_other_kinds(relay, ferry, workdir, origin):
    # an ngrok config may hold tcp tunnels and keys ferry does not know
    cfg = write(os.path.join(workdir, "ngrok.yml"), """version: "2"
authtoken: abc
region: eu
console_ui: false
inspect_db_size: 50000000
server_addr: %s
tunnels:
  ssh:
    proto: tcp
    addr: 22
  site:
    proto: http
    addr: %d
    subdomain: ngsite
    bind_tls: true
    inspect: false
""" % (relay.server, origin.http_port))
    rc, out, err = run_ferry(["start", "ssh", "--config", cfg], workdir)
    assert rc != 0 and "ERROR:  " in err and "tcp" in err, err
    f = ferry(["start", "--all", "--config", cfg, "--log=stdout", "--web-addr=127.0.0.1:%d" % free_port()])
    api = LocalApi(f.api_port())
    t = api.wait_tunnels(1)
    assert [x["name"] for x in t] == ["site"]
    assert get_via(t[0]["public_url"], relay, "/echo").status_code == 200


def test_web_addr_false(relay, ferry, origin):
    f = ferry(["http", origin.http_port, "--server", relay.server, "--web-addr", "false", "--log", "stdout"])
    f.wait_stdout(r'msg="started tunnel"', wait(15))
    assert "starting web service" not in f.stdout_text()


def test_host_header_rewrite_websocket(relay, ferry, origin):
    # after an upgrade request the stream carries raw frames: nothing is rewritten in them
    import asyncio
    from test_websocket import _echo_session
    f = ferry(["http", origin.ws_port, "--server", relay.server, "--subdomain", "wsrw", "--host-header", "rewrite",
               "--log", "stderr", "--web-addr", "127.0.0.1:%d" % free_port()])
    f.wait_stdout(r"Forwarding", wait(15))
    assert asyncio.run(_echo_session("ws://%s/ws" % relay.host("wsrw"), relay.port, count=30)) == 1000


def test_logfmt_started_tunnel_url_works(relay, ferry, origin):
    f = ferry(["http", origin.http_port, "--server", relay.server, "--log", "stdout", "--log-format", "logfmt",
               "--web-addr", "127.0.0.1:%d" % free_port()])
    m = f.wait_stdout(r'^t=\S+ lvl=info msg="started tunnel" obj=tunnels name=command_line '
                      r'addr=http://localhost:%d url=(\S+)$' % origin.http_port, wait(15))
    r = get_via(m.group(1), relay, "/echo")
    assert r.status_code == 200 and r.json()["path"] == "/echo"
    assert not any(line.startswith("{") for line in f.stdout_text().splitlines())
