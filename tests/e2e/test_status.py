"""The live status block, in a real pseudo-terminal (python's pty): drawn on
the alternate screen, redrawn in place without scrolling, with the session
state, the Forwarding line and the counters; the state follows ferryd
stopping and starting; the screen is restored on exit. With the log on
stdout there is no block."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import threading
import time

import pytest

from harness import FERRY, get_via, poll, wait

ROWS, COLS = 30, 110
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


class PtyFerry:
    """ferry with stdin/stdout on a pty of ROWS x COLS; stderr to a file."""

    def __init__(self, workdir, args):
        self.out = bytearray()
        self.lock = threading.Lock()
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        env = dict(os.environ, HOME=workdir, XDG_CONFIG_HOME=os.path.join(workdir, ".config"), TERM="xterm")
        env.pop("FERRY_SERVER", None)
        self.err_path = os.path.join(workdir, "ferry-pty.stderr")
        self.err = open(self.err_path, "wb")
        self.p = subprocess.Popen([FERRY] + [str(a) for a in args], stdin=slave, stdout=slave, stderr=self.err,
                                  cwd=workdir, env=env, start_new_session=True)
        os.close(slave)
        self.master = master
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        while True:
            try:
                b = os.read(self.master, 65536)
            except OSError:
                break
            if not b:
                break
            with self.lock:
                self.out += b

    def data(self):
        with self.lock:
            return bytes(self.out)

    def frames(self):
        """Each redraw starts at the top-left: the text after each ESC [H."""
        return self.data().split(b"\x1b[H")[1:]

    def screen(self):
        """The last complete frame, without escape sequences."""
        fr = [f for f in self.frames() if b"\x1b[J" in f]
        return ANSI.sub(b"", fr[-1]).decode("utf-8", "replace") if fr else ""

    def wait_screen(self, regex, timeout):
        return poll(lambda: re.search(regex, self.screen(), re.M), timeout, interval=0.1,
                    what="/%s/ on the status screen; got:\n%s" % (regex, self.screen()))

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(wait(10))
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(wait(10))
        self.t.join(wait(5))
        try:
            os.close(self.master)
        except OSError:
            pass
        self.err.close()
        return self.p.returncode


@pytest.fixture
def pty_ferry(workdir, request):
    made = []

    def make(args):
        f = PtyFerry(workdir, args)
        made.append(f)
        request.node.ferry_logs.append(("ferry-pty", f.err_path))
        return f
    yield make
    for f in made:
        f.stop()
    from harness import sanitizer_reports
    found = sanitizer_reports([f.err_path for f in made])
    assert not found, found


def test_status_block_in_pty(relay, pty_ferry, origin, free_port):
    web = free_port()
    f = pty_ferry(["http", origin.http_port, "--server", relay.server, "--subdomain", "statusblk",
                   "--web-addr", "127.0.0.1:%d" % web])
    url = "http://statusblk.localhost:%d" % relay.port
    scr = f.wait_screen(r"^Session Status\s+online", wait(15)).string
    assert re.search(r"^Forwarding\s+%s -> http://localhost:%d\s*$" % (re.escape(url), origin.http_port), scr,
                     re.M), scr
    assert re.search(r"^Relay\s+%s" % re.escape(relay.server), scr, re.M), scr
    assert re.search(r"^Web Interface\s+http://127\.0\.0\.1:%d" % web, scr, re.M), scr
    assert re.search(r"^Latency\s+(\d+ms|-)", scr, re.M), scr
    assert b"\x1b[?1049h" in f.data(), "the block lives on the alternate screen"

    for _ in range(5):
        assert get_via(url, relay, "/echo").status_code == 200

    def counters():
        s = f.screen()
        m = re.search(r"^Connections\s+ttl\s+opn.*\n\s+(\d+)\s+(\d+)", s, re.M)
        h = re.search(r"^HTTP Requests\s+ttl.*\n\s+(\d+)", s, re.M)
        return m and h and int(m.group(1)) >= 5 and int(h.group(1)) >= 5
    poll(counters, wait(10), interval=0.1, what="counters at 5; screen:\n%s" % f.screen())

    # the state follows ferryd
    relay.stop()
    f.wait_screen(r"^Session Status\s+reconnecting", wait(15))
    relay.start()
    f.wait_screen(r"^Session Status\s+online", wait(20))

    # drawn in place: no frame has more lines than the terminal
    for fr in f.frames():
        assert fr.count(b"\n") < ROWS, fr
    assert f.stop() == 0
    tail = f.data()[-200:]
    assert tail.rstrip(b"\r\n").endswith(b"\x1b[?1049l"), tail
    assert b"\x1b[?25h" in tail
    assert open(f.err_path, "rb").read() == b""


def test_no_block_when_stdout_is_the_log(relay, pty_ferry, origin, free_port):
    f = pty_ferry(["http", origin.http_port, "--server", relay.server, "--log", "stdout",
                   "--web-addr", "127.0.0.1:%d" % free_port()])
    poll(lambda: b"started tunnel" in f.data(), wait(15), what="log on the terminal")
    time.sleep(0.3)
    assert b"\x1b[?1049h" not in f.data()
    assert b"Session Status" not in f.data()
    # term format on a terminal: log15's human lines
    assert re.search(rb"INFO\x1b\[0m\[\d\d-\d\d\|\d\d:\d\d:\d\d\] started tunnel", f.data()), f.data()[:500]
