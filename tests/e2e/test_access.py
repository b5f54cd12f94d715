"""End-user access control (SPEC.md `access:`, `trust_forwarded_from`, "What
end users get when it fails"; issue 9 item 4).

Rules are picked by tunnel pattern; deny then allow CIDRs are judged on the
client address (the peer, or, when the peer is in trust_forwarded_from, the
nearest X-Forwarded-For address it did not add); basic auth checks Argon2id
hashes made by `ferryd hash-password` on a verifier thread, off the worker's
loop, with a cache of verified credentials and a bounded queue (full: 503
`busy`). A refusal is 403 `denied`, or 401 `denied` with WWW-Authenticate
when credentials are asked for.

Every client here is on 127.0.0.1 (or 127.0.0.2 / ::1 for the address
rules); every wait is bounded; processes are stopped by pid (conftest.py).
"""

import base64
import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from harness import (FERRYD, SAN, PeerClosed, RawConn, RecordingOrigin, build_request, echo_headers, poll, session, wait,
                     worker_deaths)

USER = "alice"
PASSWORD = "correct horse battery staple"

# ---------------------------------------------------------------------------
# helpers


def run_ferryd(*args, stdin=None):
    env = None
    if SAN and args and args[0] in ("-t", "-c"):
        # As test_auth.py: `-t` returns without freeing the loaded config, which
        # LeakSanitizer would turn into exit status 1.
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    return subprocess.run([FERRYD] + list(args), input=stdin, capture_output=True, text=True,
                          timeout=wait(60), env=env)


_hashes = {}


def hash_password(password):
    """An Argon2id hash from `ferryd hash-password` (the password on stdin);
    one per password for the whole module (each costs ~100 ms)."""
    if password not in _hashes:
        r = run_ferryd("hash-password", stdin=password + "\n")
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
        h = r.stdout.strip()
        assert r.stdout == h + "\n", "the hash alone on stdout: %r" % r.stdout
        assert re.fullmatch(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=1\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+", h), h
        _hashes[password] = h
    return _hashes[password]


def basic(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


class Conn(RawConn):
    """RawConn to ferryd from a chosen source address (127.0.0.2) and/or over
    IPv6 (::1)."""

    def __init__(self, port, host="127.0.0.1", source=None, timeout=None):
        self.timeout = timeout or wait(15)
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout)
            if source is not None:
                s.bind((source, 0))
            s.connect((host, port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            s.close()
            raise
        self.sock = s
        self.buf = bytearray()


def get(relay, tunnel_id, path="/echo", headers=(), source=None, host="127.0.0.1", port=None, timeout=None):
    """One GET for tunnel_id (routed by Host) on a fresh connection."""
    with Conn(port or relay.port, host=host, source=source, timeout=timeout) as c:
        return c.request("GET", path, relay.host(tunnel_id), headers=list(headers))


def xff_seen(resp):
    """X-Forwarded-For values the origin's /echo saw."""
    return echo_headers(resp.json(), "X-Forwarded-For")


def assert_denied(r, status=403):
    assert r.status == status, r
    assert r.header("X-Ferry-Error") == "denied", r
    assert (r.header("Content-Type") or "").startswith("text/plain"), r
    assert len(r.body) < 1024, r
    if status == 401:
        www = r.header("WWW-Authenticate") or ""
        assert re.match(r"(?i)basic\b", www), r
        assert re.search(r'(?i)realm="[^"]*"', www), r
    else:
        assert r.header("WWW-Authenticate") is None, r


def ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port6():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        s.bind(("::1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def log_size(relay):
    try:
        return os.path.getsize(relay.log_path)
    except OSError:
        return 0


def reload(relay):
    """Rewrite relay.cfg, HUP the master, wait for its reload log line."""
    since = log_size(relay)
    relay.write_config()
    os.kill(relay.proc.pid, signal.SIGHUP)

    def done():
        with open(relay.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        return re.search(r"reload: .*(applied|kept the running configuration)", text) and text
    text = poll(done, wait(15), what="the reload log line")
    assert re.search(r"reload: .*applied", text), text


@pytest.fixture
def rec_origin():
    o = RecordingOrigin()
    yield o
    o.stop()


# ---------------------------------------------------------------------------
# allow / deny


@pytest.mark.valgrind
def test_allow_matching_client(relay_factory, tunnel_factory):
    relay = relay_factory(access=[{"tunnels": "app", "allow": ["127.0.0.0/8"]}])
    tunnel_factory("app", relay=relay)
    r = get(relay, "app")
    assert r.status == 200, r
    assert xff_seen(r) == ["127.0.0.1"]


def test_allow_list_without_client_is_403(relay_factory, tunnel_factory):
    relay = relay_factory(access=[{"tunnels": "app", "allow": ["10.0.0.0/8"]}])
    tunnel_factory("app", relay=relay)
    with Conn(relay.port) as c:
        r = c.request("GET", "/echo", relay.host("app"))
        assert_denied(r, 403)
        # a refusal without a body keeps the connection, and is repeated
        r = c.request("GET", "/echo", relay.host("app"))
        assert_denied(r, 403)


def test_denied_request_never_reaches_origin(relay_factory, tunnel_factory, rec_origin):
    relay = relay_factory(access=[{"tunnels": "app", "allow": ["10.0.0.0/8"]}])
    tunnel_factory("app", relay=relay, target=rec_origin.port)
    mark = rec_origin.mark()
    for _ in range(3):
        assert_denied(get(relay, "app", path="/secret-path"), 403)
    with Conn(relay.port) as c:
        r = c.request("POST", "/secret-post", relay.host("app"), body=b"x" * 1000)
        assert_denied(r, 403)
    time.sleep(0.3)
    assert rec_origin.requests(mark) == []
    assert b"secret" not in rec_origin.received(mark)


def test_denied_request_opens_no_origin_connection(relay_factory, tunnel_factory, rec_origin):
    """A refused request should not make the agent dial the private service
    at all (nginx's access/auth_basic refuse before any upstream is chosen):
    the relay must judge before it sends the agent an OPEN."""
    relay = relay_factory(access=[{"tunnels": "app", "allow": ["10.0.0.0/8"]},
                                  {"tunnels": "locked", "basic_auth": ["%s:%s" % (USER, hash_password(PASSWORD))]}])
    tunnel_factory("app", relay=relay, target=rec_origin.port)
    tunnel_factory("locked", relay=relay, target=rec_origin.port)
    mark = rec_origin.mark()
    for _ in range(5):
        assert_denied(get(relay, "app"), 403)
        assert_denied(get(relay, "locked"), 401)
        assert_denied(get(relay, "locked", headers=[("Authorization", basic(USER, "wrong"))]), 401)
    time.sleep(0.5)
    assert rec_origin.mark()[0] == mark[0], (
        "%d connection(s) to the origin for refused requests" % (rec_origin.mark()[0] - mark[0]))


def metric(relay, code):
    r = session().get(relay.admin_url("/metrics"), timeout=wait(10))
    assert r.status_code == 200, r.text
    m = re.search(r'^ferry_errors_total\{code="%s"\} (\d+)$' % re.escape(code), r.text, re.M)
    return int(m.group(1)) if m else 0


def test_refusals_counted_in_metrics(relay_factory, tunnel_factory):
    relay = relay_factory(access=[{"tunnels": "app", "allow": ["10.0.0.0/8"]},
                                  {"tunnels": "locked", "basic_auth": ["%s:%s" % (USER, hash_password(PASSWORD))]}])
    tunnel_factory("app", relay=relay)
    tunnel_factory("locked", relay=relay)
    before = metric(relay, "denied")
    assert_denied(get(relay, "app"), 403)
    assert_denied(get(relay, "locked"), 401)
    poll(lambda: metric(relay, "denied") >= before + 2, wait(10), what="ferry_errors_total{code=denied} += 2")


def test_protected_tunnel_refused_even_when_offline(relay_factory, tunnel_factory):
    """The rules are the relay's own: a client the address rule refuses, or
    one without credentials, gets 403/401 whether or not the tunnel's agent
    is connected (a 404 `tunnel_offline` would tell it the tunnel's state)."""
    relay = relay_factory(access=[{"tunnels": "app", "allow": ["10.0.0.0/8"]},
                                  {"tunnels": "locked", "basic_auth": ["%s:%s" % (USER, hash_password(PASSWORD))]}])
    r = get(relay, "open")
    assert r.status == 404 and r.header("X-Ferry-Error") == "tunnel_offline", r
    assert_denied(get(relay, "app"), 403)
    assert_denied(get(relay, "locked"), 401)


def test_deny_by_source_address(relay_factory, tunnel_factory):
    relay = relay_factory(access=[{"tunnels": "app", "deny": ["127.0.0.2/32"]}])
    tunnel_factory("app", relay=relay)
    r = get(relay, "app", source="127.0.0.2")
    assert_denied(r, 403)
    r = get(relay, "app", source="127.0.0.1")
    assert r.status == 200, r
    assert xff_seen(r) == ["127.0.0.1"]


@pytest.mark.valgrind
def test_deny_wins_over_allow(relay_factory, tunnel_factory):
    relay = relay_factory(access=[{"tunnels": "app", "allow": ["127.0.0.0/8"], "deny": ["127.0.0.2"]}])
    tunnel_factory("app", relay=relay)
    assert_denied(get(relay, "app", source="127.0.0.2"), 403)
    r = get(relay, "app", source="127.0.0.3")
    assert r.status == 200, r
    assert xff_seen(r) == ["127.0.0.3"]
    assert get(relay, "app").status == 200


@pytest.mark.valgrind
def test_rules_hold_on_every_worker(relay_factory, tunnel_factory):
    """With several workers a request may land on one that does not own the
    tunnel and be handed off: the rule still judges the real client."""
    relay = relay_factory(workers=4, access=[{"tunnels": "app", "deny": ["127.0.0.2/32"]}])
    tunnel_factory("app", relay=relay)
    for _ in range(12):
        assert_denied(get(relay, "app", source="127.0.0.2"), 403)
        r = get(relay, "app")
        assert r.status == 200, r
        assert xff_seen(r) == ["127.0.0.1"]


@pytest.mark.skipif(not ipv6_loopback(), reason="no ::1 on this machine")
def test_ipv6_rules(relay_factory, tunnel_factory):
    relay = relay_factory(start=False, access=[{"tunnels": "v6", "allow": ["::1/128"]},
                                               {"tunnels": "v6deny", "deny": ["::1"]}])
    p6 = free_port6()
    relay.cfg["listen"] = ["127.0.0.1:%d" % relay.port, "[::1]:%d" % p6]
    relay.start()
    tunnel_factory("v6", relay=relay)
    tunnel_factory("v6deny", relay=relay)
    r = get(relay, "v6", host="::1", port=p6)
    assert r.status == 200, r
    assert xff_seen(r) == ["::1"]
    # an IPv6 rule does not take in an IPv4 client
    assert_denied(get(relay, "v6"), 403)
    assert_denied(get(relay, "v6deny", host="::1", port=p6), 403)
    r = get(relay, "v6deny")
    assert r.status == 200, r


def test_rules_only_for_matching_tunnels(relay_factory, tunnel_factory):
    relay = relay_factory(access=[{"tunnels": "admin-*", "allow": ["10.0.0.0/8"]}])
    tunnel_factory("admin-db", relay=relay)
    tunnel_factory("web", relay=relay)
    tunnel_factory("administrator", relay=relay)
    assert_denied(get(relay, "admin-db"), 403)
    assert get(relay, "web").status == 200
    assert get(relay, "administrator").status == 200   # "admin-*" wants the dash
    # however the request names the tunnel: path prefix, X-Tunnel-Id, query
    with Conn(relay.port) as c:
        other = "127.0.0.1:%d" % relay.port
        assert_denied(c.request("GET", "/t/admin-db/echo", other), 403)
        assert_denied(c.request("GET", "/echo", other, headers=[("X-Tunnel-Id", "admin-db")]), 403)
        assert_denied(c.request("GET", "/echo?tunnelid=admin-db", other), 403)
        assert_denied(c.request("GET", "/echo", "ADMIN-DB.localhost:%d" % relay.port), 403)
        assert c.request("GET", "/t/web/echo", other).status == 200


# ---------------------------------------------------------------------------
# basic auth


def test_hash_password_output():
    h1 = hash_password(PASSWORD)
    m = re.match(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$", h1)
    assert int(m.group(1)) <= 65536 and int(m.group(2)) <= 4 and m.group(3) == "1", h1
    # a fresh salt each time
    r = run_ferryd("hash-password", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != h1
    # no password: an error, nothing on stdout
    r = run_ferryd("hash-password", stdin="")
    assert r.returncode != 0 and r.stdout == "", (r.returncode, r.stdout, r.stderr)


@pytest.fixture
def locked(relay_factory, tunnel_factory):
    """Relay with tunnel "locked" behind basic auth (alice) and "web" open."""
    relay = relay_factory(access=[{"tunnels": "locked", "basic_auth": [
        "%s:%s" % (USER, hash_password(PASSWORD)), "bob:%s" % hash_password("bobs password")]}])
    tunnel_factory("locked", relay=relay)
    tunnel_factory("web", relay=relay)
    return relay


@pytest.mark.valgrind
def test_basic_auth(locked):
    relay = locked
    assert_denied(get(relay, "locked"), 401)
    assert_denied(get(relay, "locked", headers=[("Authorization", basic(USER, "wrong"))]), 401)
    assert_denied(get(relay, "locked", headers=[("Authorization", basic(USER, "bobs password"))]), 401)
    r = get(relay, "locked", headers=[("Authorization", basic(USER, PASSWORD))])
    assert r.status == 200, r
    # again: from the cache (only its success is asserted, not its speed)
    r = get(relay, "locked", headers=[("Authorization", basic(USER, PASSWORD))])
    assert r.status == 200, r
    r = get(relay, "locked", headers=[("Authorization", basic("bob", "bobs password"))])
    assert r.status == 200, r
    # the open tunnel asks nothing
    assert get(relay, "web").status == 200


def test_basic_auth_unknown_user(locked):
    assert_denied(get(locked, "locked", headers=[("Authorization", basic("mallory", PASSWORD))]), 401)
    assert_denied(get(locked, "locked", headers=[("Authorization", basic("mallory", "x"))]), 401)
    assert_denied(get(locked, "locked", headers=[("Authorization", basic("", PASSWORD))]), 401)
    assert_denied(get(locked, "locked", headers=[("Authorization", basic(USER.upper(), PASSWORD))]), 401)


def test_basic_auth_malformed_credentials(locked):
    bad = [
        "Bearer " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode(),
        "Basic",
        "Basic ",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(USER.encode()).decode(),                       # no colon
        "Basic " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()[:-4],  # cut
        "Basic " + base64.b64encode(("%s:%sX" % (USER, PASSWORD)).encode()).decode(),
        "Basic " + base64.b64encode(b"x" * 600).decode(),                           # long
    ]
    with Conn(locked.port) as c:
        for v in bad:
            r = c.request("GET", "/echo", locked.host("locked"), headers=[("Authorization", v)])
            assert_denied(r, 401)
        # the same connection still works with the right credentials, and the
        # scheme name is case-insensitive (RFC 9110 §11.1)
        r = c.request("GET", "/echo", locked.host("locked"),
                      headers=[("Authorization", "basic " + basic(USER, PASSWORD)[6:])])
        assert r.status == 200, r
    assert worker_deaths(locked) == []


def test_basic_auth_keepalive_and_pipelining(locked):
    host = locked.host("locked")
    good = [("Authorization", basic(USER, PASSWORD))]
    with Conn(locked.port) as c:
        assert_denied(c.request("GET", "/echo", host), 401)
        r = c.request("GET", "/echo?a=1", host, headers=good)
        assert r.status == 200, r
        assert r.json()["path"] == "/echo?a=1"
        # three pipelined: good, bad, good — answered in order
        c.send(build_request("GET", "/echo?p=1", host, good)
               + build_request("GET", "/echo?p=2", host, [("Authorization", basic(USER, "nope"))])
               + build_request("GET", "/echo?p=3", host, good))
        r1 = c.read_response()
        r2 = c.read_response()
        r3 = c.read_response()
        assert r1.status == 200 and r1.json()["path"] == "/echo?p=1", r1
        assert_denied(r2, 401)
        assert r3.status == 200 and r3.json()["path"] == "/echo?p=3", r3


def test_basic_auth_with_request_body(locked):
    body = os.urandom(50000)
    with Conn(locked.port) as c:
        r = c.request("POST", "/upload", locked.host("locked"),
                      headers=[("Authorization", basic(USER, PASSWORD))], body=body)
        assert r.status == 200, r
        assert r.json()["length"] == len(body)
    with Conn(locked.port) as c:
        r = c.request("POST", "/upload", locked.host("locked"),
                      headers=[("Authorization", basic(USER, "wrong"))], body=body)
        assert_denied(r, 401)


def test_basic_auth_with_curl(locked):
    url = "http://127.0.0.1:%d/echo" % locked.port
    host = "Host: " + locked.host("locked")

    def curl(*args):
        p = subprocess.run(["curl", "-s", "--noproxy", "*", "--max-time", str(wait(30)), "-o", "/dev/null",
                            "-w", "%{http_code}", "-H", host] + list(args) + [url],
                           capture_output=True, text=True, timeout=wait(40))
        return p.stdout.strip()
    assert curl() == "401"
    assert curl("-u", "%s:wrong" % USER) == "401"
    assert curl("-u", "%s:%s" % (USER, PASSWORD)) == "200"
    assert curl("-u", "%s:%s" % (USER, PASSWORD)) == "200"
    assert curl("--basic", "-u", "bob:bobs password") == "200"


def test_cached_credentials_do_not_cross_rules(relay_factory, tunnel_factory):
    """The same user name in two rules with different passwords: a password
    verified (and cached) for one does not open the other."""
    relay = relay_factory(access=[
        {"tunnels": "one", "basic_auth": ["%s:%s" % (USER, hash_password(PASSWORD))]},
        {"tunnels": "two", "basic_auth": ["%s:%s" % (USER, hash_password("another one"))]}])
    tunnel_factory("one", relay=relay)
    tunnel_factory("two", relay=relay)
    good1 = [("Authorization", basic(USER, PASSWORD))]
    assert get(relay, "one", headers=good1).status == 200
    assert get(relay, "one", headers=good1).status == 200
    assert_denied(get(relay, "two", headers=good1), 401)
    assert get(relay, "two", headers=[("Authorization", basic(USER, "another one"))]).status == 200


def test_reload_changes_password(relay_factory, tunnel_factory):
    """A verified (cached) password stops working once a reload gives the
    user another hash."""
    relay = relay_factory(access=[{"tunnels": "locked", "basic_auth": ["%s:%s" % (USER, hash_password(PASSWORD))]}])
    tunnel_factory("locked", relay=relay)
    old = [("Authorization", basic(USER, PASSWORD))]
    new = [("Authorization", basic(USER, "the new one"))]
    assert get(relay, "locked", headers=old).status == 200
    assert get(relay, "locked", headers=old).status == 200
    relay.cfg["access"] = [{"tunnels": "locked", "basic_auth": ["%s:%s" % (USER, hash_password("the new one"))]}]
    reload(relay)
    assert_denied(get(relay, "locked", headers=old), 401)
    assert get(relay, "locked", headers=new).status == 200


def test_allow_and_basic_auth_together(relay_factory, tunnel_factory):
    """Both must pass: a client outside allow gets 403 even with the right
    password; inside, it still needs the password."""
    hashed = "%s:%s" % (USER, hash_password(PASSWORD))
    relay = relay_factory(access=[{"tunnels": "app", "allow": ["127.0.0.1/32"], "basic_auth": [hashed]}])
    tunnel_factory("app", relay=relay)
    good = [("Authorization", basic(USER, PASSWORD))]
    assert_denied(get(relay, "app", source="127.0.0.2", headers=good), 403)
    assert_denied(get(relay, "app"), 401)
    assert get(relay, "app", headers=good).status == 200


# ---------------------------------------------------------------------------
# ferryd -t and the Argon2id cap


def hash_with(params, base=None):
    """A hash-password output with its m=,t=,p= replaced (the config checks
    the parameters; the digest need not match)."""
    base = base or hash_password(PASSWORD)
    return re.sub(r"m=\d+,t=\d+,p=\d+", params, base, count=1)


def config_with_hash(relay_factory, h):
    relay = relay_factory(start=False, access=[{"tunnels": "app", "basic_auth": ["%s:%s" % (USER, h)]}])
    relay.write_config()
    return relay


def test_config_accepts_hash_password_output(relay_factory):
    relay = config_with_hash(relay_factory, hash_password(PASSWORD))
    r = run_ferryd("-t", "-c", relay.config_path)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "configuration ok" in r.stdout + r.stderr


@pytest.mark.parametrize("params", ["m=262144,t=2,p=1", "m=65537,t=2,p=1", "m=65536,t=5,p=1",
                                    "m=65536,t=2,p=4"])
def test_config_refuses_costly_hash(relay_factory, params):
    relay = config_with_hash(relay_factory, hash_with(params))
    r = run_ferryd("-t", "-c", relay.config_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, (r.returncode, out)
    assert "configuration ok" not in out
    assert "m<=65536" in out and "t<=4" in out, out   # the message names the cap
    # and ferryd refuses to start with it
    p = subprocess.run([FERRYD, "-c", relay.config_path], capture_output=True, text=True, timeout=wait(15),
                       env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    assert p.returncode != 0, p


@pytest.mark.parametrize("entry", [
    "alice:$argon2i$v=19$m=65536,t=2,p=1$U0K9KlWGtND/pzqx8K6vlw$J3obyP655ZSi9hGdnEFrr7/SENjG92DsMyPv3JThfzI",
    "alice:$2b$12$abcdefghijklmnopqrstuuN6kQ2m0yqb8Pz3nGq5H7n8z1aZ0b1cC",
    "alice:plaintext",
    "alice",
    ":$argon2id$v=19$m=65536,t=2,p=1$U0K9KlWGtND/pzqx8K6vlw$J3obyP655ZSi9hGdnEFrr7/SENjG92DsMyPv3JThfzI",
])
def test_config_refuses_bad_basic_auth_entry(relay_factory, entry):
    relay = relay_factory(start=False, access=[{"tunnels": "app", "basic_auth": [entry]}])
    relay.write_config()
    r = run_ferryd("-t", "-c", relay.config_path)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "basic_auth" in r.stdout + r.stderr


@pytest.mark.parametrize("rule", [
    {"tunnels": "app", "allow": ["10.0.0.0/33"]},
    {"tunnels": "app", "deny": ["not-an-address"]},
    {"tunnels": "app", "allow": ["::1/129"]},
    {"allow": ["10.0.0.0/8"]},
    {"tunnels": "app", "alow": ["10.0.0.0/8"]},
])
def test_config_refuses_bad_rule(relay_factory, rule):
    relay = relay_factory(start=False, access=[rule])
    relay.write_config()
    r = run_ferryd("-t", "-c", relay.config_path)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "access" in r.stdout + r.stderr


def test_reload_with_costly_hash_keeps_running(relay_factory, tunnel_factory):
    relay = relay_factory(access=[{"tunnels": "locked", "basic_auth": ["%s:%s" % (USER, hash_password(PASSWORD))]}])
    tunnel_factory("locked", relay=relay)
    since = log_size(relay)
    relay.cfg["access"] = [{"tunnels": "locked", "basic_auth": ["%s:%s" % (USER, hash_with("m=262144,t=2,p=1"))]}]
    relay.write_config()
    os.kill(relay.proc.pid, signal.SIGHUP)

    def logged():
        with open(relay.log_path, "rb") as f:
            f.seek(since)
            return re.search(r"reload: .*(applied|kept the running configuration).*", f.read().decode("utf-8", "replace"))
    m = poll(logged, wait(15), what="the reload log line")
    assert "kept the running configuration" in m.group(0), m.group(0)
    assert "m<=65536" in m.group(0), m.group(0)
    assert relay.proc.running()
    assert get(relay, "locked", headers=[("Authorization", basic(USER, PASSWORD))]).status == 200


# ---------------------------------------------------------------------------
# X-Forwarded-For and trust_forwarded_from


@pytest.mark.valgrind
def test_spoofed_xff_from_untrusted_client(relay_factory, tunnel_factory):
    relay = relay_factory(trust_forwarded_from=[], access=[{"tunnels": "ten", "allow": ["10.0.0.0/8"]},
                                                           {"tunnels": "noten", "deny": ["10.0.0.0/8"]}])
    tunnel_factory("ten", relay=relay)
    tunnel_factory("noten", relay=relay)
    for v in ("10.1.2.3", "10.1.2.3, 10.4.5.6", "127.0.0.1, 10.1.2.3"):
        assert_denied(get(relay, "ten", headers=[("X-Forwarded-For", v)]), 403)
        # nor is it denied for an address it claims; the origin sees exactly
        # the real client address
        r = get(relay, "noten", headers=[("X-Forwarded-For", v)])
        assert r.status == 200, r
        assert xff_seen(r) == ["127.0.0.1"]
    assert_denied(get(relay, "ten", headers=[("X-Forwarded-For", "10.1.2.3"), ("X-Real-IP", "10.1.2.3"),
                                             ("Forwarded", "for=10.1.2.3")]), 403)


@pytest.mark.valgrind
def test_xff_from_trusted_client(relay_factory, tunnel_factory):
    relay = relay_factory(trust_forwarded_from=["127.0.0.1/32"],
                          access=[{"tunnels": "ten", "allow": ["10.0.0.0/8"]}])
    tunnel_factory("ten", relay=relay)
    r = get(relay, "ten", headers=[("X-Forwarded-For", "10.1.2.3")])
    assert r.status == 200, r
    assert xff_seen(r) == ["10.1.2.3, 127.0.0.1"]
    # no X-Forwarded-For: the trusted peer itself is judged
    assert_denied(get(relay, "ten"), 403)
    # a client that is not trusted (127.0.0.2) cannot use the same header
    assert_denied(get(relay, "ten", source="127.0.0.2", headers=[("X-Forwarded-For", "10.1.2.3")]), 403)


def test_xff_trusted_chain_judges_nearest_untrusted(relay_factory, tunnel_factory):
    relay = relay_factory(trust_forwarded_from=["127.0.0.1/32"],
                          access=[{"tunnels": "ten", "allow": ["10.0.0.0/8"]}])
    tunnel_factory("ten", relay=relay)
    # the load balancer's own hop (127.0.0.1, trusted) is skipped
    r = get(relay, "ten", headers=[("X-Forwarded-For", "10.1.2.3, 127.0.0.1")])
    assert r.status == 200, r
    assert xff_seen(r) == ["10.1.2.3, 127.0.0.1, 127.0.0.1"]
    # the nearest untrusted address decides, not the leftmost (which the
    # client may have made up)
    assert_denied(get(relay, "ten", headers=[("X-Forwarded-For", "10.1.2.3, 192.168.7.7")]), 403)
    assert_denied(get(relay, "ten", headers=[("X-Forwarded-For", "10.1.2.3, 192.168.7.7, 127.0.0.1")]), 403)
    r = get(relay, "ten", headers=[("X-Forwarded-For", "192.168.7.7, 10.1.2.3")])
    assert r.status == 200, r


def test_xff_trusted_deny(relay_factory, tunnel_factory):
    relay = relay_factory(trust_forwarded_from=["127.0.0.1/32"],
                          access=[{"tunnels": "app", "deny": ["10.1.2.3/32"]}])
    tunnel_factory("app", relay=relay)
    assert_denied(get(relay, "app", headers=[("X-Forwarded-For", "10.1.2.3")]), 403)
    r = get(relay, "app", headers=[("X-Forwarded-For", "10.1.2.4")])
    assert r.status == 200, r
    assert get(relay, "app").status == 200


def test_xff_trusted_ipv6_client_address(relay_factory, tunnel_factory):
    relay = relay_factory(trust_forwarded_from=["127.0.0.1/32"],
                          access=[{"tunnels": "app", "allow": ["2001:db8::/32"]}])
    tunnel_factory("app", relay=relay)
    r = get(relay, "app", headers=[("X-Forwarded-For", "2001:db8::7")])
    assert r.status == 200, r
    assert xff_seen(r) == ["2001:db8::7, 127.0.0.1"]
    assert_denied(get(relay, "app", headers=[("X-Forwarded-For", "2001:db9::7")]), 403)


def test_xff_trusted_split_over_header_lines(relay_factory, tunnel_factory):
    """Several X-Forwarded-For lines are one comma-separated list (RFC 9110
    §5.3). A load balancer that adds its own line after the client's must not
    let the client's line decide: "10.1.2.3" (client-made) then "192.168.7.7"
    (added by the trusted hop) judges 192.168.7.7."""
    relay = relay_factory(trust_forwarded_from=["127.0.0.1/32"],
                          access=[{"tunnels": "ten", "allow": ["10.0.0.0/8"]}])
    tunnel_factory("ten", relay=relay)
    tunnel_factory("web", relay=relay)
    lines = [("X-Forwarded-For", "10.1.2.3"), ("X-Forwarded-For", "192.168.7.7")]
    assert_denied(get(relay, "ten", headers=lines), 403)
    r = get(relay, "ten", headers=[("X-Forwarded-For", "192.168.7.7"), ("X-Forwarded-For", "10.1.2.3")])
    assert r.status == 200, r


def test_xff_trusted_split_over_header_lines_forwarded_whole(relay_factory, tunnel_factory):
    """From a trusted hop, every X-Forwarded-For line reaches the origin, in
    order, as one list with the peer appended: the real client (the line the
    load balancer added) is not dropped."""
    relay = relay_factory(trust_forwarded_from=["127.0.0.1/32"])
    tunnel_factory("web", relay=relay)
    r = get(relay, "web", headers=[("X-Forwarded-For", "10.1.2.3"), ("X-Forwarded-For", "192.168.7.7")])
    assert r.status == 200, r
    assert xff_seen(r) == ["10.1.2.3, 192.168.7.7, 127.0.0.1"]


# ---------------------------------------------------------------------------
# many wrong passwords at once


def test_password_storm_never_stalls_other_tunnels(locked):
    """100 wrong-password requests at once: each answer is 401 or 503 `busy`
    (the verifier queue is bounded), none hangs past a generous bound, and
    the open tunnel on the same worker keeps answering meanwhile."""
    relay = locked
    n = 100
    bound = wait(90)
    start = threading.Barrier(n + 1, timeout=wait(30))

    def attempt(i):
        c = Conn(relay.port, timeout=bound)
        try:
            req = build_request("GET", "/echo?i=%d" % i, relay.host("locked"),
                                [("Authorization", basic(USER if i % 3 else "nobody", "wrong-%d" % i))])
            start.wait()
            c.send(req)
            return c.read_response()
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as ex:
        futs = [ex.submit(attempt, i) for i in range(n)]
        start.wait()
        t0 = time.monotonic()
        open_ok = 0
        http = session()
        while not all(f.done() for f in futs) and time.monotonic() - t0 < bound:
            r = http.get(relay.url("/echo"), headers={"Host": relay.host("web")}, timeout=wait(5))
            assert r.status_code == 200, r.text
            open_ok += 1
            time.sleep(0.05)
        done, pending = concurrent.futures.wait(futs, timeout=max(1, bound - (time.monotonic() - t0)))
        assert not pending, "%d protected requests still unanswered after %ds" % (len(pending), bound)
        answers = [f.result() for f in futs]
    statuses = sorted(r.status for r in answers)
    print("storm: %d x 401, %d x 503, open tunnel answered %d times"
          % (statuses.count(401), statuses.count(503), open_ok))
    assert set(statuses) <= {401, 503}, statuses
    for r in answers:
        if r.status == 401:
            assert_denied(r, 401)
        else:
            assert r.header("X-Ferry-Error") == "busy", r
    assert open_ok >= 1
    # afterwards the verifier is free again, and the right password works
    r = get(relay, "locked", headers=[("Authorization", basic(USER, PASSWORD))], timeout=wait(30))
    assert r.status == 200, r
    assert worker_deaths(relay) == []


def test_clients_gone_while_verifying(locked):
    """Clients that close while their credentials are being checked leave
    nothing behind: the worker lives and later requests are answered."""
    relay = locked
    for i in range(20):
        c = Conn(relay.port)
        c.send(build_request("GET", "/echo", relay.host("locked"),
                             [("Authorization", basic(USER, PASSWORD if i % 2 else "wrong"))]))
        c.close()
    r = get(relay, "locked", headers=[("Authorization", basic(USER, PASSWORD))], timeout=wait(30))
    assert r.status == 200, r
    assert get(relay, "web").status == 200
    assert worker_deaths(relay) == []


def test_verdict_not_reused_for_another_request(relay_factory, tunnel_factory):
    """A credential check's verdict belongs to the request it was made for.
    Here the tunnel of a request whose (right) password is being verified
    goes away meanwhile, so that request is answered 404 without the verdict
    being used; the next request on the same connection, for another tunnel
    whose rule has the same user name with another password, must still be
    checked (401 for a wrong password), not let in on the stale verdict."""
    relay = relay_factory(access=[
        {"tunnels": "a", "basic_auth": ["admin:%s" % hash_password("password-a")]},
        {"tunnels": "b", "basic_auth": ["admin:%s" % hash_password("password-b")]}])
    ta = tunnel_factory("a", relay=relay)
    tunnel_factory("b", relay=relay)
    # keep the verifier busy for a while, so that the next check waits
    busy = []
    for i in range(8):
        c = Conn(relay.port, timeout=wait(60))
        c.send(build_request("GET", "/echo", relay.host("b"), [("Authorization", basic("admin", "nope-%d" % i))]))
        busy.append(c)
    try:
        with Conn(relay.port, timeout=wait(60)) as c:
            c.send(build_request("GET", "/echo", relay.host("a"), [("Authorization", basic("admin", "password-a"))]))
            time.sleep(0.05)
            os.kill(ta.agent.pid, signal.SIGKILL)
            poll(lambda: 'disconnected from tunnel "a"' in relay.log(), wait(10), what="tunnel a gone")
            first = c.read_response()
            if first.status == 200:
                pytest.skip("the check finished before the agent was gone (timing)")
            try:
                r = c.request("GET", "/echo", relay.host("b"), headers=[("Authorization", basic("admin", "wrong"))])
            except (PeerClosed, OSError):
                return   # the relay closed the connection: nothing to reuse
            assert r.status == 401, ("admin:wrong let into tunnel b after %s %s on the same connection: %r"
                                     % (first.status, first.header("X-Ferry-Error"), r))
            assert_denied(r, 401)
    finally:
        for c in busy:
            c.close()
