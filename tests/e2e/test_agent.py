"""The agent: Forwarding line and logs, random ids, target forms, flags and
FERRY_SERVER, reconnect after a relay restart, 409 for a second session,
GOAWAY handling and dead-relay detection (against a python fake relay)."""

import re
import signal

import pytest

from harness import (PING, FakeRelay, Tunnel, echo_headers, poll, session, wait)


@pytest.fixture
def fake_relay_factory():
    made = []

    def make(**kw):
        f = FakeRelay(**kw)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()


def test_forwarding_line_and_logs(relay, agent_factory, origin):
    a = agent_factory(relay, subdomain="named")
    assert a.url == "http://named.localhost:%d" % relay.port
    assert a.local.endswith(":%d" % origin.http_port), a.local
    a.wait_log(r'msg="client session established"')
    m = a.wait_log(r'msg="started tunnel".*\burl=(\S+)')
    assert m.group(1) == a.url
    for line in a.log().splitlines():
        if line.strip():
            assert re.match(r"t=\S+ lvl=(dbug|info|warn|eror|crit) ", line), line
    assert Tunnel(relay, a).get("/echo").status_code == 200


def test_random_id(relay, agent_factory):
    a = agent_factory(relay)
    b = agent_factory(relay)
    for x in (a, b):
        assert re.fullmatch(r"[a-z0-9]{8}", x.id), x.url
        assert x.url == "http://%s.localhost:%d" % (x.id, relay.port)
    assert a.id != b.id
    r = Tunnel(relay, a).get("/echo")
    assert r.status_code == 200, r.text
    assert echo_headers(r.json(), "X-Tunnel-Id") == [a.id]


@pytest.mark.parametrize("form", ["host:port", "url"])
def test_target_forms(relay, agent_factory, origin, form):
    target = {"host:port": "127.0.0.1:%d" % origin.http_port,
              "url": "http://127.0.0.1:%d" % origin.http_port}[form]
    a = agent_factory(relay, target=target, subdomain="form")
    r = Tunnel(relay, a).get("/echo")
    assert r.status_code == 200, r.text


def test_flags_in_equals_form(relay, agent_factory):
    a = agent_factory(relay, subdomain="eqform", flag_style="equals")
    assert a.url == "http://eqform.localhost:%d" % relay.port
    assert Tunnel(relay, a).get("/echo").status_code == 200


@pytest.mark.parametrize("how", ["id", "full-url"])
def test_url_flag(relay, agent_factory, how):
    value = {"id": "byurl", "full-url": "http://byurl.localhost:%d" % relay.port}[how]
    a = agent_factory(relay, args=["--url", value])
    assert a.url == "http://byurl.localhost:%d" % relay.port
    assert Tunnel(relay, a).get("/echo").status_code == 200


def test_ferry_server_env(relay, agent_factory):
    a = agent_factory(None, subdomain="fromenv", env={"FERRY_SERVER": relay.server})
    assert a.url == "http://fromenv.localhost:%d" % relay.port
    assert Tunnel(relay, a).get("/echo").status_code == 200


def test_plain_get_agent_path(relay):
    s = session()
    for path in ("/_ferry/tunnel", "/_ferry/tunnel/freeid"):
        r = s.get(relay.url(path), timeout=wait(10))
        assert r.status_code == 200, (path, r.status_code, r.text)
        assert r.text.strip() == "ok"


def test_second_session_409(relay, agent_factory):
    first = agent_factory(relay, subdomain="dup", name="ferry-first")
    second = agent_factory(relay, subdomain="dup", name="ferry-second", wait=False)
    m = second.wait_log(r"lvl=eror.*status=409.*")
    assert "held by another" in m.group(0), m.group(0)
    # the first keeps serving
    t = Tunnel(relay, first)
    for _ in range(5):
        r = t.get("/echo")
        assert r.status_code == 200, r.text
    assert first.proc.running()
    assert not any(line and "Forwarding" in line for line in second.lines)


def test_plain_get_of_held_id_409(relay, agent_factory):
    # "A plain GET {agent_path}/{id} without Upgrade answers what the upgrade
    # would": another session (none here) asking for a held id gets 409.
    agent_factory(relay, subdomain="held")
    r = session().get(relay.url("/_ferry/tunnel/held"), timeout=wait(10))
    assert r.status_code == 409, r.text
    assert "held by another" in r.text


def test_tunnel_offline_after_agent_stops(relay, agent_factory):
    a = agent_factory(relay, subdomain="leaving")
    t = Tunnel(relay, a)
    assert t.get("/echo").status_code == 200
    assert a.stop(timeout=wait(5)) != -signal.SIGKILL, "agent needed SIGKILL"

    def offline():
        r = t.get("/echo", timeout=wait(5))
        return r.status_code == 404 and r.headers.get("X-Ferry-Error") == "tunnel_offline"
    poll(offline, wait(10), interval=0.1, what="tunnel gone from the relay")


def test_reconnect_after_relay_restart(relay, agent_factory):
    a = agent_factory(relay, subdomain="phoenix")
    t = Tunnel(relay, a)
    assert t.get("/echo").status_code == 200
    relay.stop()
    a.wait_log(r'msg="session closed, starting reconnect loop"')
    relay.start()
    t.wait_up(timeout=wait(15))  # the contract: back within 15 s
    r = t.get("/echo")
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["phoenix"]
    assert a.proc.running()


def test_reconnect_after_two_restarts(relay, agent_factory):
    a = agent_factory(relay, subdomain="twice")
    t = Tunnel(relay, a)
    for _ in range(2):
        relay.restart()
        t.wait_up(timeout=wait(15))


def _check_hello(conn, tunnel_id):
    assert conn.path == "/_ferry/tunnel/%s?tunnelid=%s" % (tunnel_id, tunnel_id), conn.path
    assert conn.protocol == "ferry.1"
    assert conn.session, "no Ferry-Session header"
    assert conn.hello is not None, "no HELLO"
    assert conn.hello.get("session") == conn.session, conn.hello
    assert conn.hello.get("tunnel") == tunnel_id, conn.hello


def test_goaway_moves_to_new_connection(fake_relay_factory, agent_factory):
    fake = fake_relay_factory(ready_delay=1.0)
    a = agent_factory(fake, subdomain="mover")
    assert a.url == "http://mover.localhost:%d" % fake.port
    c1 = fake.conns[-1]
    assert c1.ready.is_set()
    _check_hello(c1, "mover")
    n = len(fake.conns)
    fake.send_goaway(c1)
    fake.wait_conns(n + 1, wait(10))
    c2 = fake.conns[n]
    poll(lambda: c2.hello is not None, wait(10), what="HELLO on the new connection")
    _check_hello(c2, "mover")
    assert c2.session == c1.session, "the new connection must carry the same Ferry-Session"
    assert c1.index in c2.others_open_at_open, "the old connection was closed before the new one opened"
    assert c1.closed.wait(wait(20)), "the old connection was never closed"
    assert c2.index in c1.others_ready_at_close, "the old connection was closed before the new one was READY"
    assert not c2.closed.is_set()
    assert a.proc.running()


def test_agent_answers_plain_relay_checks(fake_relay_factory, agent_factory):
    # The fake relay speaks only what the contract says; the agent comes up.
    fake = fake_relay_factory()
    a = agent_factory(fake, subdomain="basic")
    a.wait_log(r'msg="client session established"')
    assert fake.conns and fake.conns[-1].ready.is_set()


@pytest.mark.slow
def test_dead_relay_detected(fake_relay_factory, agent_factory):
    fake = fake_relay_factory()
    a = agent_factory(fake, subdomain="heartbeat")
    c1 = fake.conns[-1]
    # the agent pings every 10 s; the fake relay answers this one
    poll(lambda: any(t == PING and len(p) == 8 for t, st, p in c1.frames), wait(15),
         interval=0.1, what="a PING from the agent")
    n = len(fake.conns)
    fake.go_silent(c1)  # no PONG, no frame, no read from now on
    fake.wait_conns(n + 1, wait(35))
    c2 = fake.conns[n]
    poll(c2.ready.is_set, wait(10), what="READY on the new connection")
    assert c2.session == c1.session
    a.wait_log(r'msg="session closed, starting reconnect loop"')
