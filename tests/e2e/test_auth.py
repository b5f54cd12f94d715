"""Agent authentication (SPEC.md "Agents connecting", `auth:`): keys and tokens
made by `ferryd keygen` and `ferryd token`, every answer of the relay seen on a
raw WebSocket upgrade, on a plain GET of the agent path, and from a real
`ferry` agent (its refusal log line carries the status and the relay's body);
static tokens; revocation; and the start-up rules (`ferryd -t` refuses a
public listener without agent auth, and a key file others can read)."""

import base64
import json
import os
import re
import stat
import subprocess
import time

import pytest

from harness import FERRYD, SAN, RawConn, Tunnel, free_port, wait

AGENT_PATH = "/_ferry/tunnel"


# ---------------------------------------------------------------------------
# helpers


def run_ferryd(*args, stdin=None):
    env = None
    if SAN and args and args[0] in ("-t", "-c"):
        # master/main.c returns from `-t` and from a refused start without
        # freeing the config it loaded: LeakSanitizer would turn those exits
        # into status 1 and eat stdout. The subcommands are checked for leaks.
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    return subprocess.run([FERRYD] + list(args), input=stdin, capture_output=True, text=True,
                          timeout=wait(30), env=env)


def keygen(workdir, name="relay.key"):
    path = os.path.join(workdir, name)
    r = run_ferryd("keygen", "-o", path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    return path


def mint(pattern, key=None, config=None, expires=None):
    """(token, jti) from `ferryd token`; the token alone on stdout."""
    args = ["token", "--tunnel", pattern]
    if key:
        args += ["--key", key]
    if config:
        args += ["-c", config]
    if expires:
        args += ["--expires", expires]
    r = run_ferryd(*args)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert r.stdout == token + "\n", r.stdout
    assert re.fullmatch(r"[A-Za-z0-9_-]{100,1024}", token), token
    assert token not in r.stderr
    m = re.search(r"token id ([0-9a-f]{16}) ", r.stderr)
    assert m, r.stderr
    return token, m.group(1)


def static_token(pattern):
    """(token, auth.tokens entry as a dict) from `ferryd token --static`."""
    r = run_ferryd("token", "--static", "--tunnel", pattern)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    m = re.search(r'\{hash: "(blake2b:[0-9a-f]{64})", tunnels: "([^"]+)"\}', r.stderr)
    assert m, r.stderr
    assert token not in r.stderr
    return token, {"hash": m.group(1), "tunnels": m.group(2)}


def tamper(token):
    """The same token with one character of its signature changed."""
    i = len(token) - 20
    c = "B" if token[i] == "A" else "A"
    return token[:i] + c + token[i + 1:]


def ws_headers(token=None, session=None):
    h = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
         ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
         ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Protocol", "ferry.1"),
         ("Ferry-Session", session or os.urandom(16).hex())]
    if token is not None:
        h.append(("Authorization", "Bearer " + token))
    return h


def upgrade(relay, tunnel_id, token=None, session=None, keep=False):
    """A raw agent upgrade; returns the response (and the open connection
    when keep=True, else closes it)."""
    c = RawConn(relay.port)
    path = "%s/%s?tunnelid=%s" % (AGENT_PATH, tunnel_id, tunnel_id)
    r = c.request("GET", path, "127.0.0.1:%d" % relay.port, ws_headers(token, session))
    if keep:
        return r, c
    c.close()
    return r


def plain_get(relay, tunnel_id, token=None):
    h = [("Authorization", "Bearer " + token)] if token is not None else []
    with RawConn(relay.port) as c:
        return c.request("GET", "%s/%s" % (AGENT_PATH, tunnel_id), "127.0.0.1:%d" % relay.port, h)


def assert_refused(r, status, code, phrase):
    assert r.status == status, r
    assert r.header("X-Ferry-Error") == code, r
    assert r.header("Content-Type").startswith("text/plain"), r
    assert phrase in r.text, r.text
    assert len(r.body) < 512


def assert_refused_both(relay, tunnel_id, token, status, code, phrase):
    """The upgrade and the plain GET of the agent path answer alike."""
    up = upgrade(relay, tunnel_id, token)
    assert_refused(up, status, code, phrase)
    pg = plain_get(relay, tunnel_id, token)
    assert_refused(pg, status, code, phrase)
    assert pg.body == up.body


REFUSED_RE = r'lvl=eror .*\bstatus=%d\b.*\berr=("(?:[^"\\]|\\.)*"|\S+)'


def agent_refusal(agent, status):
    """The relay's body as the agent logged it on a refusal with status."""
    m = agent.wait_log(REFUSED_RE % status)
    v = m.group(1)
    return json.loads(v) if v.startswith('"') else v


def refused_agent(agent_factory, relay, tunnel_id, token, status, phrase, env=None):
    args = ["--authtoken", token] if token is not None else []
    a = agent_factory(relay, subdomain=tunnel_id, args=args, env=env, wait=False)
    body = agent_refusal(a, status)
    assert phrase in body, body
    assert a.proc.running(), "the agent keeps retrying"
    assert not any(line and "Forwarding" in line for line in a.lines)
    return a


@pytest.fixture
def key(workdir):
    return keygen(workdir)


@pytest.fixture
def auth_relay(relay_factory, key):
    return relay_factory(auth={"key": key})


# ---------------------------------------------------------------------------
# the answers


@pytest.mark.valgrind
def test_covered_id_connects_and_serves(auth_relay, key, agent_factory):
    relay = auth_relay
    token, jti = mint("team-*", key=key)
    r = upgrade(relay, "team-raw", token)
    assert r.status == 101, r
    assert r.header("Sec-WebSocket-Protocol") == "ferry.1"
    pg = plain_get(relay, "team-plain", token)
    assert pg.status == 200 and pg.text.strip() == "ok", pg

    a = agent_factory(relay, subdomain="team-web", args=["--authtoken", token])
    assert a.url == "http://team-web.localhost:%d" % relay.port
    t = Tunnel(relay, a)
    r = t.get("/echo")
    assert r.status_code == 200, r.text
    # The token comes from FERRY_AUTHTOKEN as well.
    b = agent_factory(relay, subdomain="team-env", env={"FERRY_AUTHTOKEN": token})
    assert Tunnel(relay, b).get("/echo").status_code == 200
    assert token not in relay.log(), "the relay logged a token"


def test_token_from_the_relay_config(relay_factory, key, agent_factory):
    relay = relay_factory(auth={"key": key})
    token, _ = mint("cfg", config=relay.config_path)
    a = agent_factory(relay, subdomain="cfg", args=["--authtoken", token])
    assert Tunnel(relay, a).get("/echo").status_code == 200


@pytest.mark.valgrind
def test_missing_token_401(auth_relay, agent_factory):
    assert_refused_both(auth_relay, "team-a", None, 401, "token_missing", "missing token")
    refused_agent(agent_factory, auth_relay, "team-a", None, 401, "missing token")


def test_malformed_token_401(auth_relay, agent_factory):
    assert_refused_both(auth_relay, "team-a", "not-a-token!", 401, "token_malformed",
                        "malformed token: not base64url")
    refused_agent(agent_factory, auth_relay, "team-a", "AAAAAAAAAAAAAAAA", 401, "malformed token")


def test_bad_signature_401(auth_relay, key, workdir, agent_factory):
    relay = auth_relay
    token, _ = mint("team-*", key=key)
    broken = tamper(token)
    assert_refused_both(relay, "team-a", broken, 401, "token_bad_signature", "bad signature")
    refused_agent(agent_factory, relay, "team-a", broken, 401, "bad signature")
    # Re-signed with another relay's key.
    other, _ = mint("team-*", key=keygen(workdir, "other.key"))
    assert_refused_both(relay, "team-b", other, 401, "token_bad_signature", "bad signature")
    refused_agent(agent_factory, relay, "team-b", other, 401, "bad signature")


def test_expired_token_401(auth_relay, key, agent_factory):
    token, _ = mint("team-*", key=key, expires="1s")
    time.sleep(2.2)
    assert_refused_both(auth_relay, "team-a", token, 401, "token_expired", "expired token")
    refused_agent(agent_factory, auth_relay, "team-a", token, 401, "expired token")


@pytest.mark.valgrind
def test_revoked_token_401(relay_factory, key, workdir, agent_factory):
    token, jti = mint("team-*", key=key)
    good, _ = mint("team-*", key=key)
    revoked = os.path.join(workdir, "revoked")
    with open(revoked, "w") as f:
        f.write("# leaked on 2026-01-01\n%s\n" % jti.upper())
    relay = relay_factory(auth={"key": key, "revoked": revoked})
    assert_refused_both(relay, "team-a", token, 401, "token_revoked", "revoked token")
    body = upgrade(relay, "team-a", token).text
    assert jti in body
    refused_agent(agent_factory, relay, "team-a", token, 401, "revoked token")
    # Another token of the same key still works.
    a = agent_factory(relay, subdomain="team-a", args=["--authtoken", good])
    assert Tunnel(relay, a).get("/echo").status_code == 200


def test_uncovered_id_403(auth_relay, key, agent_factory):
    token, _ = mint("team-*", key=key)
    assert_refused_both(auth_relay, "other", token, 403, "tunnel_forbidden",
                        'token does not cover tunnel "other": it covers "team-*"')
    refused_agent(agent_factory, auth_relay, "other", token, 403, 'does not cover tunnel "other"')


@pytest.mark.valgrind
@pytest.mark.parametrize("workers", [1, 2])
def test_second_token_for_a_held_id_409(relay_factory, key, agent_factory, workers):
    relay = relay_factory(auth={"key": key}, workers=workers)
    first_token, _ = mint("team-*", key=key)
    second_token, _ = mint("team-*", key=key)
    first = agent_factory(relay, subdomain="team-held", args=["--authtoken", first_token], name="ferry-first")
    t = Tunnel(relay, first)
    assert t.get("/echo").status_code == 200

    up = upgrade(relay, "team-held", second_token)
    assert_refused(up, 409, "tunnel_taken", "held by another token")
    pg = plain_get(relay, "team-held", second_token)
    assert_refused(pg, 409, "tunnel_taken", "held by another token")
    second = refused_agent(agent_factory, relay, "team-held", second_token, 409, "held by another token")

    # The first agent keeps serving; nothing took the tunnel over.
    for _ in range(5):
        r = t.get("/echo")
        assert r.status_code == 200, r.text
    assert first.proc.running() and second.proc.running()


def test_connection_limit_503(auth_relay, key):
    token, _ = mint("team-*", key=key)
    session = os.urandom(16).hex()
    conns = []
    try:
        for i in range(4):
            r, c = upgrade(auth_relay, "team-four", token, session=session, keep=True)
            conns.append(c)
            assert r.status == 101, (i, r)
        r = upgrade(auth_relay, "team-four", token, session=session)
        assert r.status == 503, r
        assert "4 connections" in r.text, r.text
    finally:
        for c in conns:
            c.close()


@pytest.mark.valgrind
def test_static_tokens(relay_factory, key, agent_factory):
    token, entry = static_token("CI-*")
    assert token.startswith("fys_")
    assert entry["tunnels"] == "ci-*"
    relay = relay_factory(auth={"tokens": [entry]})
    r = upgrade(relay, "ci-raw", token)
    assert r.status == 101, r
    a = agent_factory(relay, subdomain="ci-web", args=["--authtoken", token])
    assert Tunnel(relay, a).get("/echo").status_code == 200
    assert_refused_both(relay, "prod", token, 403, "tunnel_forbidden", 'does not cover tunnel "prod"')
    other, _ = static_token("ci-*")
    assert_refused_both(relay, "ci-x", other, 401, "token_unknown", "unknown token")
    refused_agent(agent_factory, relay, "ci-x", other, 401, "unknown token")


def test_static_and_signed_together(relay_factory, key, agent_factory):
    st, entry = static_token("ci-*")
    signed, _ = mint("team-*", key=key)
    relay = relay_factory(auth={"key": key, "tokens": [entry]})
    a = agent_factory(relay, subdomain="ci-1", args=["--authtoken", st])
    b = agent_factory(relay, subdomain="team-1", args=["--authtoken", signed])
    assert Tunnel(relay, a).get("/echo").status_code == 200
    assert Tunnel(relay, b).get("/echo").status_code == 200
    # The static token's holder is not the signed token's.
    assert_refused(upgrade(relay, "ci-1", signed), 403, "tunnel_forbidden", "does not cover")
    signed_star, _ = mint("*", key=key)
    assert_refused(upgrade(relay, "ci-1", signed_star), 409, "tunnel_taken", "held by another token")


# ---------------------------------------------------------------------------
# start-up rules


def test_ferryd_t_public_listener_needs_auth(relay_factory, workdir):
    port = free_port()
    r0 = relay_factory(start=False, listen=["0.0.0.0:%d" % port])
    r0.write_config()
    r = run_ferryd("-t", "-c", r0.config_path)
    assert r.returncode == 1, r
    assert "0.0.0.0:%d is not a loopback address and agent auth is off" % port in r.stderr, r.stderr
    assert "configuration test failed" in r.stderr
    # Starting for real is refused the same way, before binding anything.
    r = run_ferryd("-c", r0.config_path)
    assert r.returncode == 1, r
    assert "agent auth is off" in r.stderr

    key = keygen(workdir)
    r1 = relay_factory(start=False, listen=["0.0.0.0:%d" % port], auth={"key": key})
    r1.write_config()
    r = run_ferryd("-t", "-c", r1.config_path)
    assert r.returncode == 0, r.stderr
    assert "configuration ok" in r.stdout

    _, entry = static_token("*")
    r2 = relay_factory(start=False, listen=["[::]:%d" % port], auth={"tokens": [entry]})
    r2.write_config()
    r = run_ferryd("-t", "-c", r2.config_path)
    assert r.returncode == 0, r.stderr


def test_key_file_readable_by_others_is_refused(relay_factory, workdir):
    key = keygen(workdir)
    os.chmod(key, 0o644)
    r0 = relay_factory(start=False, auth={"key": key})
    r0.write_config()
    r = run_ferryd("-t", "-c", r0.config_path)
    assert r.returncode == 1, r
    assert "group or others can access it (mode 0644)" in r.stderr and "chmod 600" in r.stderr, r.stderr
    r = run_ferryd("-c", r0.config_path)
    assert r.returncode == 1 and "chmod 600" in r.stderr, r
    r = run_ferryd("token", "--tunnel", "a", "--key", key)
    assert r.returncode == 1 and r.stdout == "", r
    os.chmod(key, 0o600)
    r = run_ferryd("-t", "-c", r0.config_path)
    assert r.returncode == 0, r.stderr


def test_bad_auth_files_are_refused(relay_factory, workdir):
    key = keygen(workdir)
    revoked = os.path.join(workdir, "revoked")
    with open(revoked, "w") as f:
        f.write("0123456789abcdef\nnot-an-id\n")
    r0 = relay_factory(start=False, auth={"key": key, "revoked": revoked})
    r0.write_config()
    r = run_ferryd("-t", "-c", r0.config_path)
    assert r.returncode == 1, r
    assert ":2:" in r.stderr and "not a token id" in r.stderr, r.stderr
    r1 = relay_factory(start=False, auth={"key": os.path.join(workdir, "missing.key")})
    r1.write_config()
    r = run_ferryd("-t", "-c", r1.config_path)
    assert r.returncode == 1 and "missing.key" in r.stderr, r


def test_keygen_refuses_to_overwrite(workdir):
    key = keygen(workdir)
    with open(key) as f:
        before = f.read()
    r = run_ferryd("keygen", "-o", key)
    assert r.returncode == 1 and "refusing to overwrite" in r.stderr, r
    with open(key) as f:
        assert f.read() == before


def test_hash_password(workdir):
    r = run_ferryd("hash-password", stdin="s3cret\n")
    assert r.returncode == 0, r.stderr
    h = r.stdout.strip()
    assert h.startswith("$argon2id$v=19$"), h
    assert "s3cret" not in r.stdout + r.stderr
    r = run_ferryd("hash-password", stdin="")
    assert r.returncode == 1 and "empty password" in r.stderr
