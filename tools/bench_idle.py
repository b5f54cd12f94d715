#!/usr/bin/python3
"""tools/bench_idle.py: ferryd's memory per idle tunnel and per idle client
connection (issue 10: targets 8 KiB and 4 KiB), for `make bench-idle`.

Two runs, each against a fresh ferryd on free loopback ports (embedded
defaults plus generous header/idle timeouts, `workers` as FERRY_IDLE_WORKERS,
default auto):

  idle-tunnel   build/tools/swarm agents: N tunnel connections (one tunnel
                each), then a sample of the tunnels must answer a request
                with their own id
  idle-client   build/tools/swarm clients: N TCP connections that send nothing
  kept-client   the same, but each first makes one request through a tunnel
                (a swarm agent) and then stays idle, kept alive: what an idle
                keep-alive end user costs once it has been served

Memory: the sum over the master and all workers of PSS (Pss of
/proc/PID/smaps_rollup: private pages whole, shared pages split among the
processes that map them, so the shared tunnel table and the libraries count
once), after the connections are up minus before any connected; divided by
N. RSS (the same sum of Rss, which counts shared pages once per process) is
printed next to it. Kernel socket buffers are not process memory and are
not counted.

  tools/bench_idle.py [--json] [--only tunnel|client|kept-client]

Environment: FERRY_IDLE_N (default 10000), FERRY_IDLE_WORKERS (default: the
embedded auto), FERRY_BIN_DIR, FERRY_BUILD. Prints one table (or JSON on
stdout); exit status 1 if a run failed (connections failed or were lost, a
sampled tunnel answered wrongly).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN_DIR = os.environ.get("FERRY_BIN_DIR") or ROOT
BUILD = os.environ.get("FERRY_BUILD") or os.path.join(ROOT, "build")
FERRYD = os.path.join(BIN_DIR, "ferryd")
SWARM = os.path.join(BUILD, "tools", "swarm")
TARGET = {"tunnel": 8192, "client": 4096, "kept-client": 4096}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def descendants(pid):
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                for c in f.read().split():
                    out.append(int(c))
                    out.extend(descendants(int(c)))
    except OSError:
        pass
    return out


def rollup(pid):
    """(Pss, Rss) of one process in KiB."""
    pss = rss = 0
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def memory(master):
    pids = [master] + descendants(master)
    pss = rss = 0
    for p in pids:
        a, b = rollup(p)
        pss += a
        rss += b
    return pss, rss, len(pids)


def http_get(port, host, path="/", timeout=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode())
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, body


class Relay:
    def __init__(self, workdir, workers=None):
        self.port = free_port()
        self.admin = free_port()
        self.dir = workdir
        cfg = os.path.join(workdir, "ferryd.yml")
        with open(cfg, "w") as f:
            f.write('listen: ["127.0.0.1:%d"]\nadmin: "127.0.0.1:%d"\n' % (self.port, self.admin))
            if workers:
                f.write("workers: %s\n" % workers)
            f.write("limits:\n  header_timeout: 600s\n  idle_timeout: 600s\n  max_tunnels: 65536\n"
                    "  max_streams_per_tunnel: 65536\n")
            f.write("log: {file: %s}\n" % os.path.join(workdir, "ferryd.log"))
        self.proc = subprocess.Popen([FERRYD, "-c", cfg], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(workdir, "ferryd.stderr"), "w"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if http_get(self.admin, "127.0.0.1", "/health", 1)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("ferryd did not come up (see %s)" % workdir)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_swarm(kind, relay, n, check=None, extra_args=()):
    """Start the swarm, wait for its ready line, measure, check, stop it.
    Returns (ready line, done line, extra dict)."""
    argv = [SWARM, "agents" if kind == "tunnel" else "clients", "-n", str(n), "-d", "300"] + list(extra_args) + \
        ["127.0.0.1:%d" % relay.port]
    sw = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    extra = {}
    try:
        ready = sw.stdout.readline().strip()
        if not ready.startswith("ready "):
            raise RuntimeError("swarm: %s %s" % (ready, sw.stderr.read() if sw.poll() is not None else ""))
        time.sleep(1.0)  # let the relay finish what the last connections started
        extra["mem"] = memory(relay.proc.pid)
        if check is not None:
            extra.update(check())
    finally:
        if sw.poll() is None:
            sw.send_signal(signal.SIGTERM)
        try:
            out, err = sw.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            sw.kill()
            out, err = sw.communicate()
    done = out.strip().splitlines()[-1] if out.strip() else ""
    return ready, done, sw.returncode, err, extra


def kv(line):
    return dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)


def measure(kind, n, workers):
    with tempfile.TemporaryDirectory(prefix="ferry-idle-") as d:
        relay = Relay(d, workers)
        try:
            time.sleep(0.5)
            base = memory(relay.proc.pid)

            def check_tunnels():
                bad = []
                step = max(1, n // 50)
                sample = list(range(0, n, step)) + [n - 1]
                for i in sample:
                    tid = "sw-%d" % i
                    st, body = http_get(relay.port, "%s.localhost:%d" % (tid, relay.port))
                    if st != 200 or body != ("swarm %s\n" % tid).encode():
                        bad.append((tid, st, body[:80]))
                return {"sampled": len(sample), "bad": bad}

            if kind == "kept-client":
                # One tunnel to be served by, up (and used once) before the baseline.
                agent = subprocess.Popen([SWARM, "agents", "-n", "1", "-p", "ka", "-d", "300",
                                          "127.0.0.1:%d" % relay.port], stdout=subprocess.PIPE, text=True)
                try:
                    assert agent.stdout.readline().startswith("ready agents=1 "), "the swarm agent did not come up"
                    host = "ka-0.localhost:%d" % relay.port
                    assert http_get(relay.port, host)[0] == 200
                    time.sleep(0.5)
                    base = memory(relay.proc.pid)
                    ready, done, rc, err, extra = run_swarm("client", relay, n, None, ["-H", host])
                finally:
                    agent.send_signal(signal.SIGTERM)
                    agent.communicate(timeout=20)
            else:
                ready, done, rc, err, extra = run_swarm(kind, relay, n, check_tunnels if kind == "tunnel" else None)
        finally:
            relay.stop()
    r, dn = kv(ready), kv(done)
    up = int(r.get("agents" if kind == "tunnel" else "clients", 0))
    kind_row = kind
    pss, rss, nproc = extra["mem"]
    row = {
        "row": kind_row if kind == "kept-client" else "idle-" + kind, "n": n, "up": up, "failed": int(r.get("failed", 0)),
        "alive": int(dn.get("alive", 0)), "seconds": float(r.get("seconds", 0)), "processes": nproc,
        "pss_base_kib": base[0], "pss_kib": pss, "rss_base_kib": base[1], "rss_kib": rss,
        "bytes_per_conn_pss": round((pss - base[0]) * 1024.0 / max(up, 1)),
        "bytes_per_conn_rss": round((rss - base[1]) * 1024.0 / max(up, 1)),
        "target_bytes": TARGET[kind],
        "ok": rc == 0 and up == n,
    }
    if "bad" in extra:
        row["sampled"] = extra["sampled"]
        row["bad"] = extra["bad"]
        row["ok"] = row["ok"] and not extra["bad"]
    if not row["ok"]:
        row["swarm_stderr"] = err[-2000:]
    return row


def main():
    as_json = "--json" in sys.argv
    only = None
    if "--only" in sys.argv:
        only = sys.argv[sys.argv.index("--only") + 1]
    n = int(os.environ.get("FERRY_IDLE_N", "10000"))
    workers = os.environ.get("FERRY_IDLE_WORKERS")
    rows = []
    for kind in ("tunnel", "client", "kept-client"):
        if only and only != kind:
            continue
        print("bench-idle: %d idle %ss ..." % (n, kind), file=sys.stderr)
        rows.append(measure(kind, n, workers))
    out = sys.stderr if as_json else sys.stdout
    print("%-12s %6s %6s %10s %10s %12s %12s %8s" % ("row", "n", "up", "PSS KiB", "+PSS KiB", "B/conn PSS",
                                                     "B/conn RSS", "target"), file=out)
    for r in rows:
        print("%-12s %6d %6d %10d %10d %12d %12d %8d%s" % (
            r["row"], r["n"], r["up"], r["pss_kib"], r["pss_kib"] - r["pss_base_kib"], r["bytes_per_conn_pss"],
            r["bytes_per_conn_rss"], r["target_bytes"],
            "" if r["ok"] else "  FAILED: %s" % (r.get("bad") or r.get("swarm_stderr", "").strip()[-300:])),
            file=out)
    print("(sum over ferryd's master and workers: PSS = shared pages split among the processes mapping them; "
          "after minus before connecting, per connection)", file=out)
    if as_json:
        json.dump({"idle": rows}, sys.stdout, indent=1)
        print()
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
