#!/usr/bin/env python3
"""tools/bench_report.py: the reporting half of ferry's benchmark suite.

  bench_report.py report --results FILE --callgrind FILE --baseline FILE --format table|json
      The table (or JSON) of tools/bench.sh from its raw results: one line
      per run, tab-separated key=value; a line starting "meta" for the
      run's facts; the callgrind file holds key=value lines.
  bench_report.py check --baseline FILE [--tolerance PCT] cg_KEY=VALUE...
      `make bench-check`: compare ferryd's and ferry's instructions per
      request with the baseline; exit 1 when either grew by more than PCT
      percent (default 10), or when there is no baseline.
  bench_report.py update --baseline FILE cg_KEY=VALUE...
      `make bench-update-baseline`: write the figures as the new baseline.

Only the standard library; the same Python as the tests (/usr/bin/python3).
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

LOADS = ["1k-keepalive", "1k-close", "1k-close-4t", "1m-keepalive", "64k-upload", "1k-c1000", "ws-echo", "https-keepalive",
         "https-close"]
ROWS = ["direct", "nginx", "ferry", "ferryauto", "ferry4w"]
MULTI = ("ferryauto", "ferry4w")   # several workers: the handoff path
CG_WHAT = ("instructions per proxied request under valgrind --tool=callgrind (user space only: "
           "the kernel's work in syscalls is not counted): (total(2N) - total(N)) / N over N and 2N "
           "sequential GET /1k (1 KiB) from tools/bench_reqs, keep-alive on one connection, and "
           "with Connection: close (a connection per request); ferryd with workers: 1 (its worker), "
           "the ferry agent, nginx one-hop (its worker); tools/bench_callgrind.sh")
# (load, figure) -> key printed by bench_callgrind.sh
CG_KEYS = {
    ("keepalive", "ferryd_worker"): "cg_ferryd",
    ("keepalive", "ferry_agent"): "cg_ferry",
    ("keepalive", "nginx_worker"): "cg_nginx",
    ("close", "ferryd_worker"): "cg_close_ferryd",
    ("close", "ferry_agent"): "cg_close_ferry",
    ("close", "nginx_worker"): "cg_close_nginx",
}
CG_LOADS = ["keepalive", "close"]
CG_FIGS = ["nginx_worker", "ferryd_worker", "ferry_agent"]
CG_CHECKED = ["ferryd_worker", "ferry_agent"]   # nginx is the reference, not ours


def parse_kv_line(line, sep):
    out = {}
    for tok in line.rstrip("\n").split(sep):
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v
    return out


def num(v):
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return None


def load_results(path):
    runs, meta = [], {}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            if line.startswith("meta\t"):
                meta = parse_kv_line(line, "\t")
            else:
                runs.append(parse_kv_line(line, "\t"))
    return runs, meta


def load_cg(path):
    cg = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if "=" in line:
                    k, v = line.split("=", 1)
                    cg[k] = v
    return cg


def load_baseline(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def derive(runs, meta):
    """Per-run figures in the units of the table, and the ratios."""
    tck = num(meta.get("clk_tck")) or 100
    out = []
    for r in runs:
        d = {"load": r.get("load"), "row": r.get("row"), "status": r.get("status")}
        if r.get("status") != "ok":
            d["why"] = r.get("why", "")
            out.append(d)
            continue
        reqs = num(r.get("requests")) or 0
        dur = (num(r.get("duration_us")) or 0) / 1e6
        d["requests"] = reqs
        d["seconds"] = round(dur, 3)
        d["rps"] = round(reqs / dur, 1) if dur > 0 else None
        d["mib_per_s"] = round(num(r.get("bytes")) / dur / 1048576, 1) if dur > 0 and num(r.get("bytes")) is not None else None
        for k in ("p50", "p99", "p999"):
            v = num(r.get(k + "_us"))
            d[k + "_ms"] = round(v / 1000, 3) if v is not None else None
        d["errors"] = (num(r.get("errors")) or 0) + (num(r.get("status_errors")) or 0)
        for who in ("relay", "agent", "origin"):
            t = num(r.get(who + "_ticks"))
            d[who + "_cpu_s"] = round(t / tck, 2) if t is not None else None
            d[who + "_cpu_s_per_10k"] = round(t / tck / reqs * 10000, 3) if t is not None and reqs > 0 else None
        for who in ("relay", "agent"):
            h = num(r.get(who + "_hwm_kb"))
            d[who + "_peak_rss_kb"] = h
        h = num(r.get("handoffs"))
        if d["row"] in MULTI and h is not None and reqs > 0:
            d["handoffs"] = h
            d["handed_percent"] = round(h / reqs * 100, 1)
        out.append(d)
    by = {(d["load"], d["row"]): d for d in out}
    for d in out:
        if d.get("rps") is None:
            continue

        def ratio(other):
            o = by.get((d["load"], other))
            if o is None or not o.get("rps"):
                return None
            return round(d["rps"] / o["rps"], 2)
        if d["row"] != "direct":
            d["vs_direct"] = ratio("direct")
        if d["row"].startswith("ferry"):
            d["vs_nginx"] = ratio("nginx")
        if d["row"] in MULTI:
            d["vs_1w"] = ratio("ferry")
    return out


def cg_current(kv):
    """{load: {figure: value}} from bench_callgrind.sh's key=value output."""
    out = {}
    for (load, fig), key in CG_KEYS.items():
        v = num(kv.get(key))
        if v is not None:
            out.setdefault(load, {})[fig] = v
    return out


def cg_figures(cg, baseline):
    """The callgrind block as a dict."""
    res = {"status": cg.get("cg_status", "not run")}
    if res["status"] != "ok":
        return res
    cur = cg_current(cg)
    res.update({"what": CG_WHAT, "requests": num(cg.get("cg_requests")),
                "close_requests": num(cg.get("cg_close_requests")), "seconds": num(cg.get("cg_seconds")),
                "ferryd_master": num(cg.get("cg_ferryd_master")), "nginx_master": num(cg.get("cg_nginx_master"))})
    for load in CG_LOADS:
        f = cur.get(load)
        if not f:
            continue
        d = dict(f)
        if "ferryd_worker" in f and "ferry_agent" in f:
            d["ferryd_plus_ferry"] = f["ferryd_worker"] + f["ferry_agent"]
            if f.get("nginx_worker"):
                d["ferryd_plus_ferry_vs_nginx"] = round(d["ferryd_plus_ferry"] / f["nginx_worker"], 2)
        b = (baseline or {}).get(load) or {}
        if b:
            d["baseline"] = {k: b.get(k) for k in CG_FIGS}
            d["change_percent"] = {k: round((f[k] - b[k]) / b[k] * 100, 1)
                                   for k in CG_FIGS if f.get(k) is not None and b.get(k)}
        res[load] = d
    if baseline:
        res["tolerance_percent"] = baseline.get("tolerance_percent", 10)
    return res


def fmt(v, spec):
    return "" if v is None else format(v, spec)


def table(runs, meta, cgres, suite_seconds):
    lines = []
    hdr = ("%-15s %-9s %9s %8s %7s %7s %8s %6s %10s %10s %9s %9s %6s %6s %6s %6s" %
           ("load", "row", "req/s", "MB/s", "p50 ms", "p99 ms", "p99.9 ms", "errors",
            "relay cpu", "agent cpu", "relay MB", "agent MB", "vs dir", "vs ngx", "vs 1w", "handed"))
    lines.append(hdr)
    prev = None
    for d in runs:
        if prev is not None and d["load"] != prev:
            lines.append("")
        prev = d["load"]
        if d["status"] != "ok":
            lines.append("%-15s %-9s %s: %s" % (d["load"], d["row"], d["status"], d.get("why", "")))
            continue

        def mib(kb):
            return None if kb is None else kb / 1024

        def x(v):
            return "" if v is None else "%.2fx" % v
        lines.append("%-15s %-9s %9s %8s %7s %7s %8s %6s %10s %10s %9s %9s %6s %6s %6s %6s" % (
            d["load"], d["row"], fmt(d["rps"], ".0f"), fmt(d["mib_per_s"], ".1f"),
            fmt(d["p50_ms"], ".2f"), fmt(d["p99_ms"], ".2f"), fmt(d["p999_ms"], ".2f"),
            d["errors"], fmt(d["relay_cpu_s_per_10k"], ".3f"), fmt(d["agent_cpu_s_per_10k"], ".3f"),
            fmt(mib(d["relay_peak_rss_kb"]), ".1f"), fmt(mib(d["agent_peak_rss_kb"]), ".1f"),
            x(d.get("vs_direct")), x(d.get("vs_nginx")), x(d.get("vs_1w")),
            "" if d.get("handed_percent") is None else "%.0f%%" % d["handed_percent"]))
    lines.append("")
    lines.append("req/s: requests (ws-echo: echoed messages) per second; MB/s: MiB of response bodies and heads "
                 "(64k-upload: of request bodies; ws-echo: of echoed payload);")
    lines.append("relay = nginx (master+worker) or ferryd (master+workers); agent = ferry (cpu: the four agents); "
                 "cpu = CPU seconds per "
                 "10k requests; MB = peak RSS (VmHWM, MiB) during the run%s;" %
                 ("" if meta.get("hwm_reset", "yes") == "yes" else " (NOT reset per run: peak since start)"))
    lines.append("vs dir / vs ngx: req/s over direct's / nginx's in the same load; vs 1w: over ferry's "
                 "(1 worker); ferryauto = workers: auto (%s workers here): with one busy tunnel its owner takes "
                 "most connections and the others pause; 1k-close-4t spreads four tunnels over the workers, "
                 "the handoff path; ferry4w = 4 workers whatever the CPUs (1k-close-4t only: more workers than "
                 "CPUs); handed = requests (close: connections) handed to the tunnel's owner by another worker."
                 % (meta.get("auto_workers") or "?"))
    lines.append("")
    if cgres.get("status") == "ok":
        lines.append("instructions per request (callgrind, user space only; (total(2N) - total(N)) / N over N "
                     "sequential GET /1k, N = %s keep-alive%s):" % (
                         cgres["requests"],
                         ", %s close" % cgres["close_requests"] if cgres.get("close_requests") else ""))
        loads = [l for l in CG_LOADS if l in cgres]
        head = "  %-16s" % ""
        for l in loads:
            head += " %10s %10s %8s" % ({"keepalive": "keep-alive", "close": "close"}[l], "baseline", "change")
        lines.append(head)
        for fig, name in (("nginx_worker", "nginx worker"), ("ferryd_worker", "ferryd worker"),
                          ("ferry_agent", "ferry agent"), ("ferryd_plus_ferry", "ferryd + ferry")):
            row = "  %-16s" % name
            for l in loads:
                d = cgres[l]
                b = (d.get("baseline") or {}).get(fig)
                c = (d.get("change_percent") or {}).get(fig)
                row += " %10s %10s %8s" % ("" if d.get(fig) is None else "{:,}".format(d[fig]),
                                           "" if b is None else "{:,}".format(b),
                                           "" if c is None else "%+.1f%%" % c)
            lines.append(row)
        row = "  %-16s" % "  / nginx"
        for l in loads:
            r = cgres[l].get("ferryd_plus_ferry_vs_nginx")
            row += " %10s %10s %8s" % ("" if r is None else "%.2fx" % r, "", "")
        lines.append(row + "  (target <= 1.00x)")
        lines.append("  (masters per request: ferryd %s, nginx %s; callgrind took %s s; make bench-check fails "
                     "when ferryd's or ferry's grows over +%s%%)" % (
                         cgres.get("ferryd_master"), cgres.get("nginx_master"), cgres.get("seconds"),
                         cgres.get("tolerance_percent", 10)))
        if not any("baseline" in cgres[l] for l in loads):
            lines.append("  no baseline (make bench-update-baseline writes tools/bench-baseline.json)")
    else:
        lines.append("instructions per request (callgrind): %s" % cgres.get("status"))
    lines.append("")
    lines.append("(wrk -t2 / bench_ws -t2, %s s per run; %s CPUs shared by the load tools and the servers; "
                 "load average before: %s; %s; suite took %s s)" % (
                     meta.get("duration_s"), meta.get("cpus"), meta.get("loadavg_before"),
                     meta.get("commit", "?"), suite_seconds))
    return "\n".join(lines)


def cmd_report(a):
    runs, meta = load_results(a.results)
    cg = load_cg(a.callgrind)
    baseline = load_baseline(a.baseline)
    derived = derive(runs, meta)
    cgres = cg_figures(cg, baseline)
    suite = num(cg.get("suite_seconds"))
    if a.format == "json":
        m = dict(meta)
        for k in ("duration_s", "cpus", "clk_tck"):
            if k in m:
                m[k] = num(m[k])
        doc = {"meta": m, "loads": LOADS, "rows": ROWS, "runs": derived, "callgrind": cgres,
               "suite_seconds": suite}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(table(derived, meta, cgres, suite))
    return 0


def kv_args(items):
    d = {}
    for it in items:
        if "=" in it:
            k, v = it.split("=", 1)
            d[k] = v
    return d


def cmd_check(a):
    cur = cg_current(kv_args(a.figures))
    base = load_baseline(a.baseline)
    if base is None:
        print("bench-check: no baseline at %s (make bench-update-baseline writes it)" % a.baseline)
        return 1
    tol = a.tolerance if a.tolerance is not None else base.get("tolerance_percent", 10)
    fail = False
    print("bench-check: instructions per request vs %s (%s; fails above +%s%%)" %
          (a.baseline, (base.get("measured") or {}).get("source", "?"), tol))
    for load in CG_LOADS:
        b = base.get(load) or {}
        c = cur.get(load) or {}
        if not b and not c:
            continue
        for fig in CG_FIGS:
            cv, bv = c.get(fig), b.get(fig)
            if cv is None or not bv:
                if fig in CG_CHECKED and (cv is None) != (bv is None):
                    print("  %-10s %-14s current %s, baseline %s: not compared" % (load, fig, cv, bv))
                continue
            ch = (cv - bv) / bv * 100
            if fig not in CG_CHECKED:
                verdict = "(reference, not checked)"
            elif ch > tol:
                verdict = "REGRESSION"
                fail = True
            elif ch < -tol:
                verdict = "ok, better by over %s%%: make bench-update-baseline" % tol
            else:
                verdict = "ok"
            print("  %-10s %-14s %9s  baseline %9s  %+7.1f%%  %s" %
                  (load, fig, "{:,}".format(cv), "{:,}".format(bv), ch, verdict))
        if c.get("ferryd_worker") and c.get("ferry_agent") and c.get("nginx_worker"):
            t = c["ferryd_worker"] + c["ferry_agent"]
            print("  %-10s ferryd + ferry = %s = %.2fx nginx's %s (target <= 1.00x)" %
                  (load, "{:,}".format(t), t / c["nginx_worker"], "{:,}".format(c["nginx_worker"])))
    if not cur.get("keepalive"):
        print("  no keep-alive figures measured")
        fail = True
    print("bench-check: %s" % ("FAILED" if fail else "ok"))
    return 1 if fail else 0


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def source_label():
    """The commit the measured binaries were built from, "+dirty" when the
    relay's or the agent's sources differ from it (tools/ does not count)."""
    commit = sh(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    st = sh(["git", "status", "--porcelain", "--", "master", "worker", "shm", "agent", "common", "GNUmakefile"])
    return commit + ("+dirty" if st else "")


def cmd_update(a):
    cur = cg_current(kv_args(a.figures))
    old = load_baseline(a.baseline) or {}
    if any(f not in cur.get("keepalive", {}) for f in CG_FIGS):
        print("bench-update-baseline: incomplete figures: %s" % " ".join(a.figures), file=sys.stderr)
        return 1
    doc = {
        "what": CG_WHAT,
        "unit": "instructions (Ir) per request",
        "requests": num(kv_args(a.figures).get("cg_requests")),
        "close_requests": num(kv_args(a.figures).get("cg_close_requests")),
        "tolerance_percent": old.get("tolerance_percent", 10),
        "checked": CG_CHECKED,
    }
    for load in CG_LOADS:
        if load in cur:
            doc[load] = {f: cur[load].get(f) for f in CG_FIGS}
    doc["measured"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": os.environ.get("FERRY_BENCH_SOURCE") or source_label(),
        "valgrind": sh(["valgrind", "--version"]),
        "cc": sh(["cc", "--version"]).split("\n")[0],
        "nginx": sh(["sh", "-c", "/usr/sbin/nginx -v 2>&1"]).replace("nginx version: ", ""),
    }
    tmp = a.baseline + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, a.baseline)
    print("bench-update-baseline: wrote %s: %s" % (a.baseline, "; ".join(
        "%s: %s" % (load, ", ".join("%s %s" % (k, v) for k, v in doc[load].items()))
        for load in CG_LOADS if load in doc)))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("report")
    r.add_argument("--results", required=True)
    r.add_argument("--callgrind")
    r.add_argument("--baseline", default="tools/bench-baseline.json")
    r.add_argument("--format", choices=["table", "json"], default="table")
    c = sub.add_parser("check")
    c.add_argument("--baseline", default="tools/bench-baseline.json")
    c.add_argument("--tolerance", type=float)
    c.add_argument("figures", nargs="*")
    u = sub.add_parser("update")
    u.add_argument("--baseline", default="tools/bench-baseline.json")
    u.add_argument("figures", nargs="*")
    a = p.parse_args()
    return {"report": cmd_report, "check": cmd_check, "update": cmd_update}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
