"""Routing an end-user request to a tunnel: Host, path prefix, X-Tunnel-Id,
?tunnelid=, default_tunnel, route_order, case folding, per-request routing
on a keep-alive connection (SPEC "Routing an end-user request")."""

import pytest

from harness import RawConn, echo_headers


@pytest.mark.valgrind
def test_route_by_host(tunnel):
    r = tunnel.get("/echo?x=1")
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["path"] == "/echo?x=1"
    assert echo_headers(j, "X-Tunnel-Id") == ["app"]
    assert echo_headers(j, "X-Forwarded-Prefix") == []


def test_route_by_host_without_port(tunnel):
    r = tunnel.get("/echo", host="app.localhost")
    assert r.status_code == 200, r.text
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["app"]


@pytest.mark.valgrind
def test_route_by_path_prefix(tunnel):
    r = tunnel.get("/t/app/echo?x=1&y=2", host="127.0.0.1:%d" % tunnel.port)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["path"] == "/echo?x=1&y=2"
    assert echo_headers(j, "X-Forwarded-Prefix") == ["/t/app"]
    assert echo_headers(j, "X-Tunnel-Id") == ["app"]


def test_route_by_path_prefix_alone(tunnel):
    host = "127.0.0.1:%d" % tunnel.port
    r = tunnel.get("/t/app", host=host)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/"
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["app"]
    r = tunnel.get("/t/app?q=1&r=two", host=host)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/?q=1&r=two"


def test_route_by_path_prefix_trailing_slash(tunnel):
    r = tunnel.get("/t/app/", host="127.0.0.1:%d" % tunnel.port)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/"


def test_route_by_custom_path_prefix(relay_factory, tunnel_factory):
    t = tunnel_factory("app", relay=relay_factory(path_prefix="/tun"))
    r = t.get("/tun/app/echo", host="127.0.0.1:%d" % t.port)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/echo"
    assert echo_headers(r.json(), "X-Forwarded-Prefix") == ["/tun/app"]


@pytest.mark.valgrind
def test_route_by_header(tunnel):
    r = tunnel.get("/echo", host="127.0.0.1:%d" % tunnel.port, headers={"X-Tunnel-Id": "app"})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["path"] == "/echo"
    assert echo_headers(j, "X-Tunnel-Id") == ["app"]


@pytest.mark.valgrind
def test_route_by_query(tunnel):
    r = tunnel.get("/echo?a=1&tunnelid=app&b=2", host="127.0.0.1:%d" % tunnel.port)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["path"] == "/echo?a=1&tunnelid=app&b=2"  # query passes unchanged
    assert echo_headers(j, "X-Tunnel-Id") == ["app"]


@pytest.mark.valgrind
def test_default_tunnel(relay_factory, tunnel_factory):
    t = tunnel_factory("app", relay=relay_factory(default_tunnel="app"))
    r = t.get("/echo", host="127.0.0.1:%d" % t.port)
    assert r.status_code == 200, r.text
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["app"]


def test_no_default_tunnel_is_404(tunnel):
    r = tunnel.get("/echo", host="127.0.0.1:%d" % tunnel.port)
    assert r.status_code == 404
    assert r.headers.get("X-Ferry-Error") == "no_tunnel"


def test_default_route_order_host_first(relay_factory, tunnel_factory):
    relay = relay_factory()
    a = tunnel_factory("alpha", relay=relay)
    tunnel_factory("beta", relay=relay)
    # Host names alpha, the path, the header and the query name beta.
    r = a.get("/t/beta/echo?tunnelid=beta", host=relay.host("alpha"), headers={"X-Tunnel-Id": "beta"})
    assert r.status_code == 200, r.text
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["alpha"]
    # Without a tunnel Host, the path comes before the header and the query.
    r = a.get("/t/alpha/echo?tunnelid=beta", host="127.0.0.1:%d" % relay.port,
              headers={"X-Tunnel-Id": "beta"})
    assert r.status_code == 200, r.text
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["alpha"]
    # Then the header before the query.
    r = a.get("/echo?tunnelid=beta", host="127.0.0.1:%d" % relay.port, headers={"X-Tunnel-Id": "alpha"})
    assert r.status_code == 200, r.text
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["alpha"]


def test_route_order_configured(relay_factory, tunnel_factory):
    relay = relay_factory(route_order=["query", "header", "host", "path", "default"])
    a = tunnel_factory("alpha", relay=relay)
    tunnel_factory("beta", relay=relay)
    r = a.get("/echo?tunnelid=beta", host=relay.host("alpha"), headers={"X-Tunnel-Id": "alpha"})
    assert r.status_code == 200, r.text
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["beta"]
    r = a.get("/echo", host=relay.host("beta"), headers={"X-Tunnel-Id": "alpha"})
    assert r.status_code == 200, r.text
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["alpha"]


def test_route_order_leaves_methods_out(relay_factory, tunnel_factory):
    relay = relay_factory(route_order=["host"])
    t = tunnel_factory("app", relay=relay)
    assert t.get("/echo").status_code == 200
    for path, headers in (("/t/app/echo", {}), ("/echo", {"X-Tunnel-Id": "app"}), ("/echo?tunnelid=app", {})):
        r = t.get(path, host="127.0.0.1:%d" % relay.port, headers=headers)
        assert r.status_code == 404, (path, headers, r.text)
        assert r.headers.get("X-Ferry-Error") == "no_tunnel"


def test_id_is_case_folded(tunnel):
    r = tunnel.get("/echo", host="APP.localhost:%d" % tunnel.port)
    assert r.status_code == 200, r.text
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["app"]
    r = tunnel.get("/t/App/echo", host="127.0.0.1:%d" % tunnel.port)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/echo"
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["app"]
    r = tunnel.get("/echo", host="127.0.0.1:%d" % tunnel.port, headers={"X-Tunnel-Id": "APP"})
    assert r.status_code == 200, r.text
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["app"]


@pytest.mark.valgrind
def test_each_keepalive_request_routed_on_its_own(relay_factory, tunnel_factory):
    relay = relay_factory()
    tunnel_factory("alpha", relay=relay)
    tunnel_factory("beta", relay=relay)
    with RawConn(relay.port) as c:
        for i, tid in enumerate(["alpha", "beta", "alpha", "nosuch", "beta"]):
            r = c.request("GET", "/echo?i=%d" % i, relay.host(tid))
            if tid == "nosuch":
                assert r.status == 404, r
                assert r.header("X-Ferry-Error") == "tunnel_offline"
                continue
            assert r.status == 200, r
            assert r.json()["path"] == "/echo?i=%d" % i
            assert echo_headers(r.json(), "X-Tunnel-Id") == [tid]


def test_agent_path_under_tunnel_host_goes_to_tunnel(tunnel):
    # A request is an agent connection only when its Host names no tunnel.
    r = tunnel.get("/_ferry/tunnel/app")
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/_ferry/tunnel/app"


@pytest.mark.valgrind
def test_absolute_form_request_line(tunnel):
    with tunnel.raw() as c:
        r = c.request("GET", "http://%s/echo?abs=1" % tunnel.host, tunnel.host)
        assert r.status == 200, r
        assert echo_headers(r.json(), "X-Tunnel-Id") == ["app"]
        assert r.json()["path"].endswith("/echo?abs=1")
