"""
conftest.py: fixtures of ferry's end-to-end tests.

Each test gets a temporary directory, and the relays and agents it asks for,
on free loopback ports; a session-wide origin (origin.py, its own process)
serves behind the agents. Every process started here is stopped by its pid at
teardown (SIGTERM, wait, SIGKILL after a timeout). On a failure the tails of
the logs of that test's processes are attached to the report.
FERRY_TEST_LEAVE=1 keeps the temp directories and prints where they are; a
failed test's directory is always kept (and named at the end of the run).
"""

import os
import re
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import Agent, Proc, Relay, Tunnel, poll, wait  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long runs (1 GiB flow control, dead-relay detection); make test-slow")
    config.addinivalue_line("markers", "valgrind: the subset run under valgrind memcheck; make test-valgrind")


_kept = []      # (what, dir) printed at the end
_workdirs = []  # (nodeid, dir) removed at the end unless kept
_failed = set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        _failed.add(item.nodeid)
        for name, path in getattr(item, "ferry_logs", []):
            rep.sections.append(("log " + name, harness.tail(path, 4000)))


def pytest_sessionfinish(session):
    # Temp dirs go at the very end, so that logs are still there when a
    # teardown check fails; a failed test's dir is kept and named.
    for nodeid, d in _workdirs:
        if harness.LEAVE or nodeid in _failed:
            _kept.append((nodeid, d))
        else:
            shutil.rmtree(d, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    for what, d in _kept:
        terminalreporter.write_line("ferry e2e: %s: logs kept in %s" % (what, d))


def _mkdtemp(name):
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
    return tempfile.mkdtemp(prefix="ferry-e2e-%s-" % name)


@pytest.fixture
def workdir(request):
    d = _mkdtemp(request.node.name)
    request.node.ferry_logs = []
    _workdirs.append((request.node.nodeid, d))
    return d


class Origin:
    def __init__(self, proc, http_port, ws_port):
        self.proc = proc
        self.http_port = http_port
        self.ws_port = ws_port


@pytest.fixture(scope="session")
def origin():
    d = _mkdtemp("origin")
    proc = Proc("origin", [harness.PYTHON, os.path.join(harness.HERE, "origin.py")], d)

    def ready():
        if not proc.running():
            raise AssertionError("origin exited: %s" % harness.tail(proc.err_path))
        with open(proc.out_path) as f:
            return re.search(r"ORIGIN http=(\d+) ws=(\d+)", f.read())
    try:
        m = poll(ready, wait(20), what="origin")
        yield Origin(proc, int(m.group(1)), int(m.group(2)))
    finally:
        proc.stop(timeout=wait(5))
        if harness.LEAVE:
            _kept.append(("origin", d))
        else:
            shutil.rmtree(d, ignore_errors=True)


def _check_sanitizers(paths):
    found = harness.sanitizer_reports(paths)
    if found:
        pytest.fail("sanitizer report(s) at teardown:\n" + "\n".join(
            "== %s\n%s" % (os.path.basename(p), text) for p, text in found), pytrace=False)


@pytest.fixture(autouse=True)
def _valgrind_check(request):
    """FERRY_VALGRIND=1: after everything else of the test is torn down (its
    processes stopped), fail it if a valgrind log in its directory reports
    an error or a definite leak."""
    yield
    if not harness.VALGRIND:
        return
    paths = []
    for nodeid, d in _workdirs:
        if nodeid == request.node.nodeid:
            paths += harness.valgrind_logs(d)
    found = harness.valgrind_reports(paths)
    if found:
        _failed.add(request.node.nodeid)
        pytest.fail("valgrind report(s):\n" + "\n".join(
            "== %s\n%s" % (os.path.basename(p), text) for p, text in found), pytrace=False)


@pytest.fixture
def relay_factory(workdir, request):
    """make(**config) -> a started Relay; keys are merged into the default
    config (limits: {...} merges key by key)."""
    made = []

    def make(start=True, **cfg):
        r = Relay(workdir, name="ferryd%d" % len(made) if made else "ferryd", **cfg)
        made.append(r)
        request.node.ferry_logs.append((r.name, r.log_path))
        if start:
            r.start()
        return r
    yield make
    for r in made:
        r.stop_all()
    _check_sanitizers([r.log_path for r in made])


@pytest.fixture
def relay(relay_factory):
    return relay_factory()


@pytest.fixture
def agent_factory(workdir, origin, request):
    """make(relay_or_server, target=None, subdomain=None, args=(), env=None,
    wait=True, ...) -> a started Agent. target defaults to the origin's HTTP
    port; relay_or_server is a Relay, a FakeRelay, a ws:// URL or None (no
    --server flag)."""
    made = []

    def make(relay_or_server, target=None, subdomain=None, wait=True, name=None, **kw):
        server = relay_or_server
        if server is not None and not isinstance(server, str):
            server = server.server
        if target is None:
            target = origin.http_port
        a = Agent(workdir, target, server=server, subdomain=subdomain,
                  name=name or "ferry%d" % len(made), **kw)
        made.append(a)
        request.node.ferry_logs.append((a.name, a.log_path))
        a.start(wait_forwarding=wait)
        return a
    yield make
    for a in made:
        a.stop()
    _check_sanitizers([a.log_path for a in made])


@pytest.fixture
def tunnel_factory(relay_factory, agent_factory):
    """make(tunnel_id, relay=None, target=None, **agent_kw) -> a Tunnel."""
    def make(tunnel_id="app", relay=None, target=None, **kw):
        relay = relay or relay_factory()
        a = agent_factory(relay, target=target, subdomain=tunnel_id, **kw)
        return Tunnel(relay, a)
    return make


@pytest.fixture
def tunnel(tunnel_factory):
    """Tunnel "app" on a default relay, to the origin's HTTP port."""
    return tunnel_factory("app")


@pytest.fixture(name="free_port")
def free_port_fixture():
    """free_port() -> a free loopback port (never the same twice in a run)."""
    return harness.free_port
