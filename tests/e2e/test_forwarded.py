"""Headers the relay adds to forwarded requests, and what a client cannot
spoof: X-Forwarded-For/-Proto/-Host, X-Tunnel-Id, X-Forwarded-Prefix
(SPEC "Routing an end-user request")."""

import hashlib
import os

from harness import echo_headers


def test_forwarded_headers_added(tunnel):
    r = tunnel.get("/echo")
    assert r.status_code == 200, r.text
    j = r.json()
    assert echo_headers(j, "X-Forwarded-For") == ["127.0.0.1"]
    assert echo_headers(j, "X-Forwarded-Proto") == ["http"]
    assert echo_headers(j, "X-Forwarded-Host") == [tunnel.host]
    assert echo_headers(j, "X-Tunnel-Id") == ["app"]


def test_untrusted_x_forwarded_for_replaced(tunnel):
    r = tunnel.get("/echo", headers={"X-Forwarded-For": "1.2.3.4"})
    assert r.status_code == 200, r.text
    assert echo_headers(r.json(), "X-Forwarded-For") == ["127.0.0.1"]


def test_untrusted_x_forwarded_for_list_replaced(tunnel):
    with tunnel.raw() as c:
        r = c.request("GET", "/echo", tunnel.host, headers=[
            ("X-Forwarded-For", "10.0.0.1, 10.0.0.2"), ("x-forwarded-for", "10.9.9.9")])
        assert r.status == 200, r
        assert echo_headers(r.json(), "X-Forwarded-For") == ["127.0.0.1"]


def test_client_x_tunnel_id_never_passes(relay_factory, tunnel_factory):
    relay = relay_factory()
    a = tunnel_factory("alpha", relay=relay)
    tunnel_factory("beta", relay=relay)
    r = a.get("/echo", headers={"X-Tunnel-Id": "beta"})
    assert r.status_code == 200, r.text
    assert echo_headers(r.json(), "X-Tunnel-Id") == ["alpha"]
    # and by path, with a forged header in odd case
    with a.raw() as c:
        r = c.request("GET", "/t/alpha/echo", "127.0.0.1:%d" % relay.port,
                      headers=[("x-TUNNEL-id", "beta"), ("X-Tunnel-Id", "alpha")])
        assert r.status == 200, r
        assert echo_headers(r.json(), "X-Tunnel-Id") == ["alpha"]


def test_client_x_forwarded_host_and_proto_replaced(tunnel):
    # Decision: like X-Forwarded-For, an untrusted client's X-Forwarded-Host
    # and -Proto are replaced (not appended to) so the origin can trust them.
    r = tunnel.get("/echo", headers={"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"})
    assert r.status_code == 200, r.text
    j = r.json()
    assert echo_headers(j, "X-Forwarded-Host") == [tunnel.host]
    assert echo_headers(j, "X-Forwarded-Proto") == ["http"]


def test_forwarded_prefix_only_for_path_routing(tunnel):
    r = tunnel.get("/t/app/echo", host="127.0.0.1:%d" % tunnel.port)
    assert echo_headers(r.json(), "X-Forwarded-Prefix") == ["/t/app"]
    assert echo_headers(r.json(), "X-Forwarded-Host") == ["127.0.0.1:%d" % tunnel.port]
    r = tunnel.get("/echo", headers={"X-Forwarded-Prefix": "/evil"})
    assert r.status_code == 200
    assert "/t/app" not in echo_headers(r.json(), "X-Forwarded-Prefix")


def test_method_headers_and_body_pass_through(tunnel):
    body = os.urandom(100000)
    r = tunnel.request("PUT", "/echo/x?y=1", data=body,
                       headers={"X-Custom": "v1", "Content-Type": "application/x-test"})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["method"] == "PUT"
    assert j["path"] == "/echo/x?y=1"
    assert j["body_length"] == len(body)
    assert j["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echo_headers(j, "X-Custom") == ["v1"]
    assert echo_headers(j, "Content-Type") == ["application/x-test"]


def test_duplicate_headers_kept_in_order(tunnel):
    with tunnel.raw() as c:
        r = c.request("GET", "/echo", tunnel.host, headers=[("X-Dup", "1"), ("X-Other", "z"), ("X-Dup", "2")])
        assert r.status == 200, r
        assert echo_headers(r.json(), "X-Dup") == ["1", "2"]


def test_response_headers_pass_back(tunnel):
    r = tunnel.get("/status/204")
    assert r.status_code == 204
    assert r.headers.get("X-Origin") == "e2e"
    r = tunnel.get("/echo")
    assert r.headers.get("X-Origin") == "e2e"
    assert r.headers.get("Content-Type") == "application/json"
