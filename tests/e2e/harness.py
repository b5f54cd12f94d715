"""
harness.py: what the e2e tests share, apart from the fixtures (conftest.py).

- knobs: FERRY_BIN_DIR (where ferryd and ferry are; default the repository
  root), FERRY_SAN=1 (sanitizer build: every wait is multiplied by MULT = 3,
  memory-bound asserts are skipped), FERRY_VALGRIND=1 (ferryd and ferry run
  under valgrind memcheck, children and re-execs too, one log per process;
  every wait is multiplied by MULT = 10; see valgrind_argv()),
  FERRY_TEST_LEAVE=1 (keep the temp dir);
- free_port(): a free loopback port (nginx-tests' port());
- Proc: a child process with its stdout/stderr in files, stopped by its pid;
- Relay: writes a ferryd config (YAML) and starts, stops and restarts ferryd on
  the same ports;
- Agent: starts `ferry http ...` and waits for its Forwarding line;
- RawConn: a raw HTTP/1.1 client on one TCP connection (pipelining,
  malformed requests, interim responses, "was the connection closed");
- FakeRelay: a python relay speaking ferry's tunnel protocol (WebSocket +
  mux frames) to drive the agent through GOAWAY and a dead relay;
- MemSampler: peak RSS (VmHWM) of a set of processes and their children.

Everything talks to 127.0.0.1 only, and every wait is bounded.
"""

import asyncio
import http
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN_DIR = os.environ.get("FERRY_BIN_DIR") or (ROOT + "/")
if not BIN_DIR.endswith("/"):
    BIN_DIR += "/"
FERRYD = BIN_DIR + "ferryd"
FERRY = BIN_DIR + "ferry"
PYTHON = "/usr/bin/python3"
SAN = os.environ.get("FERRY_SAN", "0") == "1"
VALGRIND = os.environ.get("FERRY_VALGRIND", "0") == "1"
# Memory bounds are not asserted under either (DESIGN.md: those runs check
# integrity, not memory); SAN stands for both where tests skip them.
SAN = SAN or VALGRIND
MULT = 10 if VALGRIND else 3 if SAN else 1
LEAVE = os.environ.get("FERRY_TEST_LEAVE", "0") not in ("", "0")

FORWARDING_RE = re.compile(r"Forwarding\s+(\S+)\s+->\s+(\S+)")


def wait(seconds):
    """A wait bound scaled for sanitizer builds."""
    return seconds * MULT


def poll(cond, timeout, interval=0.05, what="condition"):
    """Call cond() until it returns a true value (returned) or timeout s pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = cond()
        except AssertionError:
            raise
        except Exception:
            v = None
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


_ports_given = set()
_ports_lock = threading.Lock()


def free_port():
    """A loopback TCP port nobody listens on now, never handed out twice."""
    with _ports_lock:
        for _ in range(200):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            finally:
                s.close()
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise RuntimeError("no free port")


def tcp_open(port, timeout=0.5):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def tail(path, n=6000):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return "(%s)" % e


SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: UndefinedBehaviorSanitizer")


def sanitizer_reports(paths):
    """Sanitizer reports found in log files: [(path, excerpt)]. Leak reports
    count too; ASAN_OPTIONS=detect_leaks=0 in the environment turns them off."""
    found = []
    for p in paths:
        text = tail(p, 1 << 22)
        m = SANITIZER_RE.search(text)
        if m:
            start = text.rfind("\n", 0, m.start()) + 1
            found.append((p, text[start:start + 3000]))
    return found


# Valgrind: memcheck with full leak checking; a definite leak counts as an
# error, and any error makes the process exit with VALGRIND_EXIT. Each
# process (forked workers, a re-exec'd master after an upgrade) writes its
# own log, NAME.vg.PID, next to its other logs; the fixtures read them when
# the test's processes are gone (valgrind_reports()).
VALGRIND_EXIT = 99
VALGRIND_SUPP = os.path.join(HERE, "..", "valgrind.supp")


def valgrind_argv(argv, workdir, name):
    """argv wrapped in valgrind when FERRY_VALGRIND=1 and it runs ferryd or
    ferry; else argv unchanged."""
    if not VALGRIND or os.path.basename(argv[0]) not in ("ferryd", "ferry"):
        return argv
    vg = ["valgrind", "--tool=memcheck", "--error-exitcode=%d" % VALGRIND_EXIT,
          "--leak-check=full", "--show-leak-kinds=definite", "--errors-for-leak-kinds=definite",
          "--track-fds=yes", "--trace-children=yes", "--child-silent-after-fork=no",
          "--num-callers=30", "--vgdb=no", "--log-file=%s.vg.%%p" % os.path.join(workdir, name)]
    if os.path.exists(VALGRIND_SUPP):
        vg.append("--suppressions=" + os.path.realpath(VALGRIND_SUPP))
    return vg + list(argv)


VG_SUMMARY_RE = re.compile(r"^==\d+== ERROR SUMMARY: (\d+) errors", re.M)
VG_ERROR_RE = re.compile(r"^==\d+== (Invalid (read|write|free)|Conditional jump|Use of uninitialised|"
                         r"Syscall param|Source and destination overlap|Mismatched free|"
                         r"Argument .* of function|.* definitely lost in|Process terminating)", re.M)
VG_SYSTEM_RE = re.compile(r"\(in /(?:usr/)?bin/")
VG_COMMAND_RE = re.compile(r"^==\d+== Command: (\S+)", re.M)
VG_FD_RE = re.compile(r"^==\d+== Open (?:file descriptor|AF_\w+ socket) (\d+):(.*)$", re.M)


def valgrind_logs(workdir):
    try:
        names = os.listdir(workdir)
    except OSError:
        return []
    return sorted(os.path.join(workdir, n) for n in names if re.search(r"\.vg\.\d+$", n))


def valgrind_reports(paths):
    """Valgrind logs that report errors (a non-zero ERROR SUMMARY, or error
    records in the log of a process that never wrote its summary because it
    was killed): [(path, excerpt)]."""
    found = []
    for p in paths:
        text = tail(p, 1 << 22)
        cmd = VG_COMMAND_RE.search(text)
        if (cmd and os.path.basename(cmd.group(1)) not in ("ferryd", "ferry")) or VG_SYSTEM_RE.search(text):
            continue   # a program ferryd ran (a test's broken "new binary", a shell script)
        m = VG_SUMMARY_RE.search(text)
        bad = int(m.group(1)) > 0 if m else VG_ERROR_RE.search(text) is not None
        if bad:
            e = VG_ERROR_RE.search(text)
            start = text.rfind("\n", 0, e.start()) + 1 if e else 0
            found.append((p, text[start:start + 6000]))
            continue
        # A process that exits by itself closes everything first (the
        # workers' and the master's teardown, the agent's): an fd it opened
        # (or its parent before the fork) that is still open at exit
        # leaked. Fds it was started with (stdio, valgrind's logs, what an
        # old master hands a new one) are valgrind's "<inherited from
        # parent>"; a new binary that gives up at start exits holding them.
        fds = [f for f in VG_FD_RE.finditer(text)
               if ".vg." not in f.group(2) and "<inherited from parent>" not in text[f.end():f.end() + 80]]
        if fds:
            start = text.rfind("\n", 0, fds[0].start()) + 1
            found.append((p, "fd(s) open at exit: %s\n%s" % (
                ", ".join(f.group(1) for f in fds), text[start:start + 6000])))
    return found


def session():
    """A requests session that ignores proxy settings from the environment."""
    s = requests.Session()
    s.trust_env = False
    return s


# ---------------------------------------------------------------------------
# processes


def children_of(pid):
    """Direct children of pid (from /proc/PID/task/*/children)."""
    out = []
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for t in tasks:
        try:
            with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def descendants(pid):
    seen = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in children_of(p):
            if c not in seen:
                seen.append(c)
                todo.append(c)
    return seen


def proc_status(pid, field):
    """A /proc/PID/status field in KiB (VmHWM, VmRSS), or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Proc:
    """A started child process; stdout and stderr go to files unless piped."""

    def __init__(self, name, argv, workdir, env=None, stdout_pipe=False):
        self.name = name
        self.argv = argv
        self.out_path = os.path.join(workdir, name + ".stdout")
        self.err_path = os.path.join(workdir, name + ".stderr")
        self._err = open(self.err_path, "ab")
        self._out = None if stdout_pipe else open(self.out_path, "ab")
        e = dict(os.environ)
        if env:
            for k, v in env.items():
                if v is None:
                    e.pop(k, None)
                else:
                    e[k] = v
        self.p = subprocess.Popen(
            valgrind_argv(argv, workdir, name), cwd=workdir, env=e, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self._out, stderr=self._err)
        self.pid = self.p.pid
        self.kids = []  # children seen while running, stopped too if left behind
        self.stopped = False

    def _ours(self, pid):
        """pid still runs our binary (a forked worker), not a reused pid."""
        try:
            if os.readlink("/proc/%d/exe" % pid) == os.path.realpath(self.argv[0]):
                return True
        except OSError:
            pass
        return os.path.basename(self.argv[0]) in proc_cmdline(pid)

    def running(self):
        return self.p.poll() is None

    def note_children(self):
        for c in descendants(self.pid):
            if c not in self.kids:
                self.kids.append(c)

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Signal the process, wait for it, SIGKILL after timeout; then stop
        any child it left behind (by pid, only if it is still ours)."""
        if self.stopped:
            return self.p.returncode
        self.stopped = True
        timeout = wait(10) if timeout is None else timeout
        if self.running():
            self.note_children()
            try:
                self.p.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(wait(10))
        for c in self.kids:
            if alive(c) and self._ours(c):
                try:
                    os.kill(c, signal.SIGKILL)
                except OSError:
                    pass
        for f in (self._out, self._err):
            if f:
                f.close()
        return self.p.returncode

    def stderr_text(self):
        try:
            with open(self.err_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


# ---------------------------------------------------------------------------
# ferryd


def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    s = str(v)
    if s and re.fullmatch(r"[A-Za-z0-9_./-]+", s) and s not in ("true", "false", "null", "yes", "no"):
        return s
    return json.dumps(s)


def to_yaml(obj, indent=0):
    """Block-style YAML for dicts of scalars, lists of scalars and dicts."""
    pad = "  " * indent
    lines = []
    for k, v in obj.items():
        if isinstance(v, dict):
            lines.append("%s%s:" % (pad, k))
            lines.append(to_yaml(v, indent + 1))
        elif isinstance(v, (list, tuple)):
            if all(not isinstance(x, (dict, list)) for x in v):
                lines.append("%s%s: [%s]" % (pad, k, ", ".join(_yaml_scalar(x) for x in v)))
            else:
                lines.append("%s%s:" % (pad, k))
                for x in v:
                    sub = to_yaml(x, indent + 2).lstrip()
                    lines.append("%s  - %s" % (pad, sub))
        else:
            lines.append("%s%s: %s" % (pad, k, _yaml_scalar(v)))
    return "\n".join(lines)


def merge(base, over):
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


class Relay:
    """ferryd on two fixed free ports (public + admin), restartable."""

    def __init__(self, workdir, name="ferryd", **cfg):
        self.workdir = workdir
        self.name = name
        self.port = free_port()
        self.admin_port = free_port()
        base = {
            "listen": ["127.0.0.1:%d" % self.port],
            "admin": "127.0.0.1:%d" % self.admin_port,
            "workers": 1,
            "domain": "localhost",
            "limits": {
                "header_timeout": "10s",
                "upstream_timeout": "%ds" % wait(30),
                "max_header_bytes": 8192,
                "max_headers": 50,
                "tunnel_wait": "0s",
            },
            "log": {"file": "stderr", "format": "text"},
        }
        self.cfg = merge(base, cfg)
        self.config_path = os.path.join(workdir, name + ".yml")
        self.proc = None
        self.procs = []
        self.starts = 0

    def write_config(self):
        with open(self.config_path, "w") as f:
            f.write(to_yaml(self.cfg) + "\n")

    @property
    def server(self):
        return "ws://127.0.0.1:%d" % self.port

    def host(self, tunnel_id, port=True):
        return "%s.localhost:%d" % (tunnel_id, self.port) if port else "%s.localhost" % tunnel_id

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def admin_url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.admin_port, path)

    @property
    def log_path(self):
        return os.path.join(self.workdir, self.name + ".stderr")

    def start(self, ready=True):
        if not os.access(FERRYD, os.X_OK):
            raise AssertionError("no ferryd binary at %s (set FERRY_BIN_DIR)" % FERRYD)
        self.write_config()
        self.starts += 1
        self.proc = Proc(self.name, [FERRYD, "-c", self.config_path], self.workdir)
        self.procs.append(self.proc)
        if ready:
            self.wait_ready()
        return self

    def is_ready(self):
        if not self.proc.running():
            raise AssertionError("ferryd exited with %s:\n%s" % (self.proc.p.returncode, tail(self.log_path)))
        if not tcp_open(self.port):
            return False
        try:
            r = session().get(self.admin_url("/health"), timeout=2)
        except requests.RequestException:
            return False
        return r.status_code == 200 and r.text.strip() == "ok"

    def wait_ready(self):
        deadline = time.monotonic() + wait(15)
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise AssertionError("ferryd not ready in %ds:\n%s" % (wait(15), tail(self.log_path)))
            time.sleep(0.05)
        self.proc.note_children()

    def pids(self):
        """The master and every descendant (workers) now."""
        if not self.proc or not self.proc.running():
            return []
        return [self.proc.pid] + descendants(self.proc.pid)

    def stop(self):
        if self.proc and self.proc.running():
            self.proc.stop()

    def stop_all(self):
        for p in self.procs:
            p.stop()

    def restart(self):
        """Stop ferryd and start it again with the same config and ports."""
        self.stop()
        return self.start()

    def log(self):
        return tail(self.log_path, 1 << 20)


# ---------------------------------------------------------------------------
# ferry


class Agent:
    """`ferry http TARGET ...`; start() waits for the Forwarding line."""

    def __init__(self, workdir, target, server=None, subdomain=None, args=(), env=None,
                 name=None, flag_style="space"):
        self.workdir = workdir
        self.target = str(target)
        self.server = server
        self.subdomain = subdomain
        self.args = list(args)
        self.env = dict(env or {})
        self.name = name or ("ferry-%s" % (subdomain or "random"))
        self.flag_style = flag_style
        self.proc = None
        self.lines = []          # stdout lines
        self._cond = threading.Condition()
        self.url = None
        self.local = None
        self.id = None

    def _flag(self, name, value):
        if self.flag_style == "equals":
            return ["--%s=%s" % (name, value)]
        return ["--" + name, value]

    def argv(self):
        a = [FERRY, "http", self.target]
        if self.server:
            a += self._flag("server", self.server)
        if self.subdomain:
            a += self._flag("subdomain", self.subdomain)
        a += self._flag("log", "stderr") + self._flag("log-format", "logfmt")
        return a + self.args

    @property
    def log_path(self):
        return os.path.join(self.workdir, self.name + ".stderr")

    def start(self, wait_forwarding=True):
        if not os.access(FERRY, os.X_OK):
            raise AssertionError("no ferry binary at %s (set FERRY_BIN_DIR)" % FERRY)
        env = dict(self.env)
        # isolate from a user's ~/.config/ferry/ferry.yml
        env.setdefault("HOME", self.workdir)
        env.setdefault("XDG_CONFIG_HOME", os.path.join(self.workdir, ".config"))
        env.setdefault("FERRY_SERVER", None)
        env.setdefault("FERRY_AUTHTOKEN", None)
        self.proc = Proc(self.name, self.argv(), self.workdir, env=env, stdout_pipe=True)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if wait_forwarding:
            self.wait_forwarding()
        return self

    def _read_stdout(self):
        out = self.proc.p.stdout
        with open(self.proc.out_path, "ab") as copy:
            for raw in iter(out.readline, b""):
                copy.write(raw)
                copy.flush()
                with self._cond:
                    self.lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                    self._cond.notify_all()
        with self._cond:
            self.lines.append(None)  # EOF
            self._cond.notify_all()

    def wait_stdout(self, regex, timeout):
        rx = re.compile(regex)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if line is not None:
                        m = rx.search(line)
                        if m:
                            return m
                if None in self.lines:
                    raise AssertionError("%s: stdout ended (exit %s) without /%s/; stderr:\n%s"
                                         % (self.name, self.proc.p.poll(), regex, tail(self.log_path)))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("%s: no /%s/ on stdout in %.0fs; stdout=%r; stderr:\n%s"
                                         % (self.name, regex, timeout, self.lines, tail(self.log_path)))
                self._cond.wait(min(left, 0.2))

    def wait_forwarding(self, timeout=None):
        m = self.wait_stdout(FORWARDING_RE.pattern, timeout or wait(15))
        self.url, self.local = m.group(1), m.group(2)
        host = re.match(r"https?://([^/:]+)", self.url).group(1)
        self.id = host.split(".", 1)[0]
        return self.url

    def log(self):
        return self.proc.stderr_text() if self.proc else ""

    def wait_log(self, regex, timeout=None):
        """Wait until a stderr log line matches regex; return the match."""
        rx = re.compile(regex)
        timeout = timeout or wait(15)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log().splitlines():
                m = rx.search(line)
                if m:
                    return m
            if time.monotonic() > deadline:
                raise AssertionError("%s: no log line /%s/ in %.0fs:\n%s"
                                     % (self.name, regex, timeout, tail(self.log_path)))
            time.sleep(0.05)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, timeout=None):
        if self.proc:
            return self.proc.stop(timeout=timeout)


# ---------------------------------------------------------------------------
# raw HTTP/1.1 client


class Response:
    def __init__(self, version, status, reason, headers, body):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # [(name, value)], in order
        self.body = body

    def header(self, name):
        vals = self.header_all(name)
        return vals[-1] if vals else None

    def header_all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %s %s %r %r>" % (self.status, self.reason, self.headers, self.body[:300])


class PeerClosed(Exception):
    pass


class RawConn:
    """One TCP connection to 127.0.0.1:port, speaking HTTP/1.1 by hand."""

    def __init__(self, port, timeout=None):
        self.timeout = timeout or wait(15)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, n=262144):
        data = self.sock.recv(n)
        if not data:
            raise PeerClosed("connection closed by peer")
        self.buf += data

    def read_until(self, delim, limit=1 << 20):
        while True:
            i = self.buf.find(delim)
            if i >= 0:
                out = bytes(self.buf[:i + len(delim)])
                del self.buf[:i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise AssertionError("no %r within %d bytes" % (delim, limit))
            self._fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self):
        try:
            while True:
                self._fill()
        except PeerClosed:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_head(self):
        head = self.read_until(b"\r\n\r\n", 1 << 20).decode("latin-1")
        lines = head.split("\r\n")
        m = re.match(r"(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError("bad status line %r" % lines[0])
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
        return m.group(1), int(m.group(2)), m.group(3) or "", headers

    def read_chunked(self):
        out = bytearray()
        while True:
            line = self.read_until(b"\r\n", 4096)
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.read_until(b"\r\n", 65536) != b"\r\n":
                    pass
                return bytes(out)
            out += self.read_exact(size)
            if self.read_exact(2) != b"\r\n":
                raise AssertionError("chunk not followed by CRLF")

    def read_response(self, head_request=False, interim=False):
        """Read one response. interim=True returns a 1xx response as such;
        otherwise 1xx responses are skipped."""
        while True:
            version, status, reason, headers = self.read_head()
            r = Response(version, status, reason, headers, b"")
            if 100 <= status < 200:
                if interim or status == 101:
                    return r
                continue
            break
        te = r.header("Transfer-Encoding")
        cl = r.header("Content-Length")
        if head_request or status in (204, 304):
            pass
        elif te and "chunked" in te.lower():
            r.body = self.read_chunked()
        elif cl is not None:
            r.body = self.read_exact(int(cl))
        else:
            r.body = self.read_to_eof()
        return r

    def request(self, method, path, host, headers=(), body=None):
        """Send one request and read its response."""
        self.send(build_request(method, path, host, headers, body))
        return self.read_response(head_request=(method == "HEAD"))

    def closed_by_peer(self, timeout=None):
        """True when the peer closes (EOF or reset) within timeout s with no
        more bytes; False when bytes arrive or it stays open."""
        if self.buf:
            return False
        self.sock.settimeout(timeout or wait(10))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(self.timeout)
        if data:
            self.buf += data
            return False
        return True


def build_request(method, path, host, headers=(), body=None):
    lines = ["%s %s HTTP/1.1" % (method, path)]
    if host is not None:
        lines.append("Host: %s" % host)
    names = {k.lower() for k, _ in headers}
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if body is not None:
        data += body
    return data


# ---------------------------------------------------------------------------
# a fake relay: ferry's tunnel protocol in python


HELLO, READY, OPEN, DATA, WINDOW, FIN, RST, PING, PONG, GOAWAY = range(1, 11)


def frame(ftype, stream, payload=b"", flags=0):
    return struct.pack(">BBII", ftype, flags, stream, len(payload)) + payload


def parse_frames(data):
    """Split one WebSocket message into (type, flags, stream, payload)."""
    out = []
    i = 0
    while i < len(data):
        if len(data) - i < 10:
            raise ValueError("truncated mux header")
        t, fl, st, n = struct.unpack_from(">BBII", data, i)
        i += 10
        if len(data) - i < n:
            raise ValueError("truncated mux payload")
        out.append((t, fl, st, bytes(data[i:i + n])))
        i += n
    return out


def parse_kv(payload):
    kv = {}
    for line in payload.decode("utf-8", "replace").split("\n"):
        if "=" in line:
            k, _, v = line.partition("=")
            kv[k] = v
    return kv


class FakeConn:
    def __init__(self, index, ws, path, headers):
        self.index = index
        self.ws = ws
        self.path = path
        self.headers = headers
        self.session = headers.get("Ferry-Session")
        self.protocol = headers.get("Sec-WebSocket-Protocol")
        self.hello = None
        self.frames = []
        self.opened = threading.Event()
        self.ready = threading.Event()
        self.closed = threading.Event()
        self.answer_pings = True
        self.others_open_at_open = []     # indexes of connections open when this one opened
        self.others_ready_at_close = []   # indexes of other connections READY when this one closed


class FakeRelay:
    """A WebSocket server on a free port that answers ferry agents: HELLO ->
    READY (after ready_delay s for every connection but the first), PING ->
    PONG; a plain GET (no Upgrade) answers 200 ok. Runs its own asyncio loop
    in a thread; the test drives it with send_goaway() / go_silent()."""

    def __init__(self, ready_delay=0.0):
        import websockets
        self._websockets = websockets
        self.port = free_port()
        self.ready_delay = ready_delay
        self.conns = []
        self.plain_gets = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._server = None
        self._thread = threading.Thread(target=self._run, name="fake-relay", daemon=True)
        self._thread.start()
        if not self._started.wait(wait(10)):
            raise RuntimeError("fake relay did not start")
        if isinstance(self._server, Exception):
            raise self._server

    @property
    def server(self):
        return "ws://127.0.0.1:%d" % self.port

    def _run(self):
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(self._websockets.serve(
                self._handler, "127.0.0.1", self.port, subprotocols=["ferry.1"],
                process_request=self._process_request, ping_interval=None,
                max_size=None, close_timeout=1, compression=None))
        except Exception as e:  # reported by __init__
            self._server = e
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    async def _process_request(self, path, headers):
        if "websocket" not in headers.get("Upgrade", "").lower():
            self.plain_gets.append(path)
            return (http.HTTPStatus.OK, [("Content-Type", "text/plain")], b"ok\n")
        return None

    async def _handler(self, ws, path=None):
        path = path if path is not None else ws.path
        with self.lock:
            c = FakeConn(len(self.conns), ws, path, ws.request_headers)
            c.others_open_at_open = [o.index for o in self.conns if not o.closed.is_set()]
            self.conns.append(c)
        c.opened.set()
        try:
            async for msg in ws:
                if isinstance(msg, str):
                    continue
                for t, fl, st, payload in parse_frames(msg):
                    c.frames.append((t, st, payload))
                    if t == HELLO and c.hello is None:
                        c.hello = parse_kv(payload)
                        if c.index > 0 and self.ready_delay:
                            await asyncio.sleep(self.ready_delay)
                        tunnel = c.hello.get("tunnel") or path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
                        url = "http://%s.localhost:%d" % (tunnel, self.port)
                        c.ready.set()  # before the send: the agent may act on READY at once
                        await ws.send(frame(READY, 0, ("url=%s\n" % url).encode()))
                    elif t == PING and c.answer_pings:
                        await ws.send(frame(PONG, 0, payload))
        except self._websockets.ConnectionClosed:
            pass
        finally:
            with self.lock:
                c.others_ready_at_close = [o.index for o in self.conns
                                           if o is not c and o.ready.is_set() and not o.closed.is_set()]
            c.closed.set()

    def _call(self, coro_fn):
        fut = asyncio.run_coroutine_threadsafe(coro_fn(), self.loop)
        return fut.result(wait(10))

    def send_goaway(self, conn, code=1, message=b"relay is moving"):
        async def go():
            await conn.ws.send(frame(GOAWAY, 0, struct.pack(">I", code) + message))
        self._call(go)

    def go_silent(self, conn):
        """Stop answering on conn: no PONG, no frames, stop reading the socket."""
        conn.answer_pings = False

        async def go():
            conn.ws.transport.pause_reading()
        self._call(go)

    def wait_conns(self, n, timeout):
        return poll(lambda: len(self.conns) >= n, timeout, what="%d agent connection(s)" % n)

    def close(self):
        async def stop():
            if self._server and not isinstance(self._server, Exception):
                self._server.close()
                try:
                    await asyncio.wait_for(self._server.wait_closed(), 5)
                except Exception:
                    pass
        try:
            if self._started.is_set() and self.loop.is_running():
                asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


# ---------------------------------------------------------------------------
# memory


class MemSampler:
    """Samples VmHWM (peak RSS) of processes and their descendants in a thread.
    pids_fn() returns the root pids to look at on each sample."""

    def __init__(self, pids_fn, interval=0.25):
        self.pids_fn = pids_fn
        self.interval = interval
        self.peak = {}    # pid -> (max VmHWM KiB, cmdline)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self):
        for root in self.pids_fn():
            for pid in [root] + descendants(root):
                hwm = proc_status(pid, "VmHWM")
                if hwm is None:
                    continue
                old = self.peak.get(pid)
                if old is None or hwm > old[0]:
                    self.peak[pid] = (hwm, old[1] if old else proc_cmdline(pid))

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join(10)
        self.sample()

    def report(self):
        return ", ".join("%d %s: %.1f MiB" % (pid, cmd.strip()[:60], kib / 1024.0)
                         for pid, (kib, cmd) in sorted(self.peak.items()))


# ---------------------------------------------------------------------------
# a relay + an agent


class Tunnel:
    """One tunnel: a Relay, an Agent connected to it, and request helpers
    that reach the agent's service through the relay by Host."""

    def __init__(self, relay, agent):
        self.relay = relay
        self.agent = agent
        self.id = agent.id
        self.http = session()

    @property
    def host(self):
        return self.relay.host(self.id)

    @property
    def port(self):
        return self.relay.port

    def request(self, method, path, headers=None, host=None, **kw):
        h = {"Host": host or self.host}
        h.update(headers or {})
        kw.setdefault("timeout", wait(30))
        kw.setdefault("allow_redirects", False)
        return self.http.request(method, self.relay.url(path), headers=h, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def raw(self, timeout=None):
        return RawConn(self.relay.port, timeout)

    def wait_up(self, timeout=None, path="/echo"):
        """Poll until a request through the tunnel answers 200."""
        def ok():
            return self.get(path, timeout=wait(5)).status_code == 200
        return poll(ok, timeout or wait(15), interval=0.1, what="tunnel %s answering" % self.id)


def echo_headers(resp_json, name):
    """Values of header name (any case) as the origin's /echo saw them."""
    n = name.lower()
    return [v for k, v in resp_json["headers"] if k.lower() == n]


# ---------------------------------------------------------------------------
# the agent's own commands, local API and test origins that say who they are


class FerryCmd(Agent):
    """`ferry ARGS...` for any command (start, http, ...), stdout captured
    line by line as Agent does; the log goes where ARGS say. api_port() reads
    the port of the local API from the `starting web service` log line when
    the log is on stdout."""

    def __init__(self, workdir, args, env=None, name="ferry"):
        super().__init__(workdir, "", env=env, name=name)
        self.cmd_args = [str(a) for a in args]

    def argv(self):
        return [FERRY] + self.cmd_args

    def api_port(self, timeout=None):
        m = self.wait_stdout(r'msg="starting web service".*\baddr=(\d+\.\d+\.\d+\.\d+):(\d+)', timeout or wait(15))
        return int(m.group(2))

    def stdout_text(self):
        with self._cond:
            return "\n".join(line for line in self.lines if line is not None)

    def proc_out_path(self):
        return os.path.join(self.workdir, self.name + ".stdout")


def run_ferry(args, workdir, env=None, timeout=None):
    """Run `ferry ARGS...` to completion: (exit code, stdout, stderr)."""
    e = dict(os.environ)
    e.setdefault("HOME", workdir)
    e["XDG_CONFIG_HOME"] = os.path.join(workdir, ".config")
    e.pop("FERRY_SERVER", None)
    e.pop("FERRY_AUTHTOKEN", None)
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    p = subprocess.run([FERRY] + [str(a) for a in args], cwd=workdir, env=e, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout or wait(20))
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


class LocalApi:
    """The agent's local API on 127.0.0.1:port (Host: localhost:port unless
    told otherwise)."""

    def __init__(self, port):
        self.port = port
        self.http = session()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def request(self, method, path, host=None, **kw):
        headers = dict(kw.pop("headers", {}) or {})
        headers.setdefault("Host", host or "localhost:%d" % self.port)
        kw.setdefault("timeout", wait(30))
        return self.http.request(method, self.url(path), headers=headers, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def tunnels(self):
        r = self.get("/api/tunnels")
        assert r.status_code == 200, r.text
        return r.json()["tunnels"]

    def wait_tunnels(self, n, timeout=None):
        return poll(lambda: len(self.tunnels()) >= n and self.tunnels(), timeout or wait(15),
                    what="%d tunnel(s) in /api/tunnels" % n)


def get_via(public_url, relay, path="/", **kw):
    """GET path through the relay on a fresh connection, by the Host of a
    public URL (http://ID.localhost:PORT)."""
    host = re.match(r"https?://([^/]+)", public_url).group(1)
    h = {"Host": host, "Connection": "close"}
    h.update(kw.pop("headers", {}) or {})
    kw.setdefault("timeout", wait(30))
    return session().get(relay.url(path), headers=h, **kw)


class NamedOrigin:
    """An HTTP server in this process on 127.0.0.1:port that answers every
    request with its name (and counts requests, health probes apart).
    stop() closes the listening socket, so connecting is refused, and the
    connections it has open, as a killed server would; start() again binds
    the same port."""

    def __init__(self, name, port=None):
        import http.server
        self.name = name
        self.port = port or free_port()
        self.hits = 0
        self.probes = 0
        self.lock = threading.Lock()
        self.srv = None
        self.conns = set()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with outer.lock:
                    outer.conns.add(self.connection)

            def finish(self):
                with outer.lock:
                    outer.conns.discard(self.connection)
                super().finish()

            def do_GET(self):
                with outer.lock:
                    if "health probe" in (self.headers.get("User-Agent") or ""):
                        outer.probes += 1
                    else:
                        outer.hits += 1
                body = outer.name.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Origin-Host", self.headers.get("Host") or "")
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_HEAD = do_GET
        self.handler = H

    def start(self):
        import http.server

        class S(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128
        self.srv = S(("127.0.0.1", self.port), self.handler)
        threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self):
        if self.srv is not None:
            self.srv.shutdown()
            self.srv.server_close()
            self.srv = None
        with self.lock:
            conns, self.conns = list(self.conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port


def ferry_cmd_factory(workdir, request):
    """Generator behind a `ferry` fixture: make(args, env=None, name=None) ->
    a started FerryCmd; at teardown every one is stopped by its pid and its
    stderr checked for sanitizer reports (the failure is raised)."""
    made = []

    def make(args, env=None, name=None):
        f = FerryCmd(workdir, args, env=env, name=name or "ferry%d" % len(made))
        made.append(f)
        request.node.ferry_logs.append((f.name, f.log_path))
        request.node.ferry_logs.append((f.name + " stdout", f.proc_out_path()))
        f.start(wait_forwarding=False)
        return f
    yield make
    for f in made:
        f.stop()
    found = sanitizer_reports([f.log_path for f in made])
    if found:
        raise AssertionError("sanitizer report(s) at teardown:\n" + "\n".join(
            "== %s\n%s" % (os.path.basename(p), text) for p, text in found))


# ---------------------------------------------------------------------------
# hostile-client helpers (test_smuggling.py, test_slow_clients.py)


class RecordingOrigin:
    """A raw-socket HTTP/1.1 origin in this process that keeps every byte it
    receives, per connection, so a test can assert what reached it (and that
    nothing else did). It frames requests the lenient way a naive server
    does (head up to a blank line, then Transfer-Encoding containing
    "chunked" or else the first Content-Length), so a smuggled request the
    relay let through would show up here as a request of its own.

    Answers: GET /big?size=N sends N bytes ("x" repeated) with
    Content-Length, noting how many were written before the peer went away
    (big_results); any other request gets 200 with a JSON body
    {"n": index, "method", "target", "body_length"}. A request it cannot
    frame gets 400 and the connection is closed (errors). Threads only;
    every socket has a timeout; stop() closes them all."""

    def __init__(self):
        self.port = free_port()
        self.lock = threading.Lock()
        self.conns = []          # bytearray of received bytes, per connection
        self.reqs = []           # dicts: conn, method, target, headers, body
        self.errors = []
        self.big_results = []    # (bytes written, finished whole, error)
        self._stop = threading.Event()
        self._socks = []
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(256)
        self.lsock.settimeout(0.2)
        self._t = threading.Thread(target=self._accept, name="rec-origin", daemon=True)
        self._t.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s.settimeout(60)
            with self.lock:
                idx = len(self.conns)
                self.conns.append(bytearray())
                self._socks.append(s)
            threading.Thread(target=self._serve, args=(s, idx), daemon=True).start()

    def _recv(self, s, idx, buf):
        data = s.recv(65536)
        if not data:
            return False
        with self.lock:
            self.conns[idx] += data
        buf += data
        return True

    def _serve(self, s, idx):
        buf = bytearray()
        try:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
                    if not self._recv(s, idx, buf):
                        return
                crlf = buf.find(b"\r\n\r\n")
                lf = buf.find(b"\n\n")
                end, sep = (crlf, 4) if crlf >= 0 and (lf < 0 or crlf < lf) else (lf, 2)
                head = bytes(buf[:end]).decode("latin-1")
                del buf[:end + sep]
                lines = head.replace("\r\n", "\n").split("\n")
                parts = lines[0].split(" ")
                method, target = parts[0], parts[1] if len(parts) > 1 else ""
                headers = []
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers.append((k.strip(), v.strip()))
                hmap = {}
                for k, v in headers:
                    hmap.setdefault(k.lower(), v)
                body = bytearray()
                if "chunked" in hmap.get("transfer-encoding", "").lower():
                    while True:
                        while b"\n" not in buf:
                            if not self._recv(s, idx, buf):
                                return
                        i = buf.find(b"\n")
                        line = bytes(buf[:i]).split(b";")[0].strip()
                        del buf[:i + 1]
                        size = int(line, 16)
                        if size == 0:
                            while True:
                                while b"\n" not in buf:
                                    if not self._recv(s, idx, buf):
                                        return
                                i = buf.find(b"\n")
                                t = bytes(buf[:i])
                                del buf[:i + 1]
                                if t in (b"", b"\r"):
                                    break
                            break
                        while len(buf) < size + 2:
                            if not self._recv(s, idx, buf):
                                return
                        body += buf[:size]
                        del buf[:size + 2]
                elif "content-length" in hmap:
                    n = int(hmap["content-length"])
                    while len(buf) < n:
                        if not self._recv(s, idx, buf):
                            return
                    body += buf[:n]
                    del buf[:n]
                with self.lock:
                    n_req = len(self.reqs)
                    self.reqs.append({"conn": idx, "method": method, "target": target,
                                      "headers": headers, "body": bytes(body)})
                if target.startswith("/big"):
                    self._big(s, target)
                    return
                out = json.dumps({"n": n_req, "method": method, "target": target,
                                  "body_length": len(body)}).encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(out), out))
        except (ValueError, IndexError) as e:
            with self.lock:
                self.errors.append("conn %d: %r" % (idx, e))
            try:
                s.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
        except OSError:
            pass
        finally:
            try:
                s.close()
            except OSError:
                pass

    def _big(self, s, target):
        m = re.search(r"size=(\d+)", target)
        size = int(m.group(1)) if m else 1 << 20
        sent = 0
        piece = b"x" * 65536
        try:
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                      b"Content-Length: %d\r\n\r\n" % size)
            while sent < size:
                n = min(len(piece), size - sent)
                s.sendall(piece[:n])
                sent += n
            result = (sent, True, None)
        except OSError as e:
            result = (sent, False, repr(e))
        with self.lock:
            self.big_results.append(result)

    # ---- what the tests look at

    def mark(self):
        """A point in the record: (connections, requests) so far."""
        with self.lock:
            return len(self.conns), len(self.reqs)

    def received(self, since=None):
        """All bytes received (on connections opened since mark `since`)."""
        with self.lock:
            conns = self.conns[since[0]:] if since else self.conns
            return b"".join(bytes(c) for c in conns)

    def requests(self, since=None):
        with self.lock:
            return list(self.reqs[since[1]:] if since else self.reqs)

    def stop(self):
        self._stop.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._t.join(5)


def worker_deaths(relay):
    """Lines of ferryd's log saying a worker died (crash or exit)."""
    return [line for line in relay.log().splitlines()
            if "killed by signal" in line or re.search(r"worker \d+ \(pid \d+\) exited", line)]


class FakeAgent:
    """A hand-made agent on a raw socket: the WebSocket upgrade under
    agent_path (ferry.1, Ferry-Session), HELLO, READY, then whatever the
    test does: typically nothing at all, i.e. it stops reading its socket.
    rcvbuf shrinks the socket's receive buffer before connecting, so that
    the relay meets a full socket sooner."""

    def __init__(self, port, tunnel_id, session_id=None, agent_path="/_ferry/tunnel", rcvbuf=None,
                 timeout=None):
        import base64
        self.port = port
        self.id = tunnel_id
        self.session = session_id or os.urandom(16).hex()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout or wait(10))
        self.sock.connect(("127.0.0.1", port))
        self.buf = bytearray()
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((
            "GET %s/%s?tunnelid=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: ferry.1\r\nFerry-Session: %s\r\n\r\n"
            % (agent_path, tunnel_id, tunnel_id, port, key, self.session)).encode())
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("relay closed the agent connection: %r" % bytes(self.buf))
            self.buf += data
        i = self.buf.find(b"\r\n\r\n")
        self.head = bytes(self.buf[:i]).decode("latin-1")
        del self.buf[:i + 4]
        if not self.head.startswith("HTTP/1.1 101"):
            raise AssertionError("upgrade refused: %r" % self.head)

    def send_frames(self, *frames, zero_key=False):
        """One masked binary WebSocket message carrying the mux frames
        (zero_key: the all-zero masking key, as ferry's agent sends, so
        the relay may splice the payload)."""
        payload = b"".join(frames)
        n = len(payload)
        if n < 126:
            hdr = struct.pack(">BB", 0x82, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack(">BBH", 0x82, 0x80 | 126, n)
        else:
            hdr = struct.pack(">BBQ", 0x82, 0x80 | 127, n)
        if zero_key:
            self.sock.sendall(hdr + bytes(4) + payload)
            return
        mask = os.urandom(4)
        m = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big") if n else b""
        self.sock.sendall(hdr + mask + masked)

    def _need(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(262144)
            if not data:
                raise PeerClosed("relay closed the agent connection")
            self.buf += data

    def read_message(self):
        """One WebSocket message from the relay: (opcode, payload)."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7f
        off = 2
        if n == 126:
            self._need(4)
            n = struct.unpack_from(">H", self.buf, 2)[0]
            off = 4
        elif n == 127:
            self._need(10)
            n = struct.unpack_from(">Q", self.buf, 2)[0]
            off = 10
        if b1 & 0x80:
            raise AssertionError("the relay masked a frame")
        self._need(off + n)
        payload = bytes(self.buf[off:off + n])
        del self.buf[:off + n]
        return b0 & 0x0f, payload

    def read_frames(self):
        """The mux frames of the next binary message."""
        while True:
            op, payload = self.read_message()
            if op == 0x2:
                return parse_frames(payload)
            if op == 0x8:
                raise PeerClosed("relay sent a WebSocket close")

    def hello(self, connections=1, extra=""):
        """HELLO (with `extra` key=value lines), then wait for READY: its
        key=value payload."""
        self.send_frames(frame(HELLO, 0, ("session=%s\ntunnel=%s\nversion=%s\nconnections=%d\n%s"
                                          % (self.session, self.id, "fake-1", connections, extra)).encode()))
        while True:
            for t, fl, st, payload in self.read_frames():
                if t == READY:
                    return parse_kv(payload)

    def drain(self, seconds):
        """Read for `seconds` (or until the relay closes): DATA payload bytes
        per stream, and the other frames as (type, stream, payload)."""
        data = {}
        others = []
        deadline = time.monotonic() + seconds
        self.sock.settimeout(0.2)
        try:
            while time.monotonic() < deadline:
                try:
                    frames = self.read_frames()
                except socket.timeout:
                    continue
                except PeerClosed:
                    break
                for t, fl, st, payload in frames:
                    if t == DATA:
                        data[st] = data.get(st, 0) + len(payload)
                    else:
                        others.append((t, st, payload))
        finally:
            self.sock.settimeout(wait(10))
        return data, others

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
