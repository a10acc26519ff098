"""Saturating live loads against nginx, and offline replays of real captures: tcpcopyd beside the original.

Called by perf/run.py (`make perf`; `--saturate-only` runs this section alone). Builds its own lab
(prefix tclsat, offloads off, torn down at the end, also on failure or Ctrl-C) with nginx on
online:8080 and target:8080 (appliance.lab.nginx: one worker, an access log line per request).

Live (issue 13, deliver 1), each load for `seconds` against the online nginx, once per replicator
(tcpcopyd + interceptd; then, with `--original DIR`, the original tcpcopy's pcap build + intercept):
- `wrk -t1 -c100` keep-alive;
- `ab -c50` short connections, the client's ephemeral ports widened to 1024-65535;
- one keep-alive connection paced at 5,000 requests/s (appliance.lab.load paced).
Every run copies into its own client pool (`-c`, 198.18.N.0/24 routed via the assistant): the
target holds the previous run's tuples in TIME_WAIT. Measured per run: requests served online and
received by the target (the two access logs), completeness at the end and at the load's end, how
long the target lagged (its last request against online's, and when its log stopped growing: 2 s
unchanged, capped), CPU of every process of each side per request the target received, the
machine's busy share (/proc/stat), of it the interrupts' and the share neither they nor any lab
process account for (another user of the 2 cores), the target kernel's SYN-queue counters;
tcpcopyd's `sessions_shed` and funnel. `baseline` first runs each load with no replicator.

Offline (deliver 2): tcpdump on the online host records `wrk -t1 -c20` and `ab -c20 -n15000`
against nginx (no replicator running); each capture is replayed by `tcpcopyd --offline --topspeed`
and, with `--original DIR`, the original's offline build at `-a 1000`: requests/s at the target and
completeness against what the online nginx answered while it was recorded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import psutil
from original import Original, check_dir
from replicators import NoReplicator, OriginalTcpcopy, Tcpcopyd, children_cpu, snapshot, tree, used

from appliance.lab.netns import ADDR, Lab
from appliance.lab.nginx import AccessLog
from appliance.lab.rig import ReplicationRig
from appliance.lab.tools import ab, capturing, counters_delta, kernel_counters, port_range, wrk

LAB_PREFIX = "tclsat"
PORT = 8080
URL = f"http://{ADDR['online']}:{PORT}/"
LOADS = ("wrk", "ab", "paced")
LOAD_LABELS = {"wrk": "wrk -t1 -c100 keep-alive", "ab": "ab -c50 short connections",
               "paced": "1 connection paced at 5k req/s"}
WRK_CONNECTIONS = 100
AB_CONCURRENCY = 50
AB_CLIENT_PORTS = (1024, 65535)
PACED_RATE = 5000
QUIET = 2.0                     # the target's log unchanged this long: it is done (nginx flushes every 1 s)
ONLINE_QUIET = 1.5
# offline: the original replays a file and then idles; it is stopped once the target's log has been
# quiet this long (longer than its 3 s handshake deadline, so sessions it is still trying can land)
OFFLINE_QUIET = 5.0
FIRST_LINE_LIMIT = 15.0         # offline: the first copied request must show within this
POOL_FIRST = 20                 # client pools 198.18.20.0/24, 198.18.21.0/24, ...
KERNEL_KEYS = ("TcpExtTCPReqQFullDoCookies", "TcpExtTCPReqQFullDrop", "TcpExtEmbryonicRsts",
               "TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtSyncookiesSent")


@dataclass(frozen=True)
class Options:
    seconds: float = 15.0
    settle_limit: float = 60.0
    original: str | None = None
    workers: str = "auto"
    bindir: str | None = None
    loads: tuple[str, ...] = LOADS
    offline: bool = True
    baseline: bool = False
    compare: bool = False            # also tcpcopyd+compare (compare mode on both daemons)
    wrk_capture_seconds: float = 2.0
    ab_capture_requests: int = 15000


class Replicator(Protocol):
    name: str

    def start(self, pool: int) -> None: ...
    def processes(self) -> dict[str, list[psutil.Process]]: ...
    def finish(self) -> dict[str, Any]: ...
    def replay(self, pcap: Path, pool: int, settle: Callable[[], Any]) -> dict[str, Any]: ...


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """This section's flags, on perf/run.py's parser."""
    sat = ap.add_argument_group("saturating loads against nginx (perf/saturate.py)")
    sat.add_argument("--original", metavar="DIR",
                     help="the original C tools: DIR/tcpcopy (--pcap-capture), DIR/tcpcopy-offline (--offline), "
                          "DIR/intercept; run through the same loads, side by side")
    sat.add_argument("--saturate-only", action="store_true", help="only this section")
    sat.add_argument("--no-saturate", action="store_true", help="skip this section")
    sat.add_argument("--saturate-seconds", type=float, default=Options.seconds,
                     help=f"seconds of each live load (default {Options.seconds:g})")
    sat.add_argument("--saturate-loads", default=",".join(LOADS), help=f"live loads (default {','.join(LOADS)})")
    sat.add_argument("--settle-limit", type=float, default=Options.settle_limit,
                     help=f"wait at most this long for the target's log to go quiet (default {Options.settle_limit:g})")
    sat.add_argument("--baseline", action="store_true",
                     help="first run each live load with no replicator (what online serves alone)")
    sat.add_argument("--compare-cost", action="store_true",
                     help="also run tcpcopyd and interceptd with compare mode on through the same loads")
    sat.add_argument("--no-real-captures", action="store_true",
                     help="skip the offline replays of tcpdump captures of wrk and ab")


def options(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Options:
    """The section's options from perf/run.py's arguments (its --workers, --bindir too); a bad
    combination or an --original DIR without the three binaries ends the run before it starts."""
    if args.saturate_only and args.no_saturate:
        ap.error("--saturate-only and --no-saturate exclude each other")
    loads = tuple(x for x in args.saturate_loads.split(",") if x)
    if not set(loads) <= set(LOADS):
        ap.error(f"--saturate-loads: choose from {','.join(LOADS)}")
    if args.original:
        try:
            check_dir(args.original)
        except ValueError as exc:
            ap.error(str(exc))
    if not args.saturate_seconds > 0 or not args.settle_limit > 0:
        ap.error("--saturate-seconds and --settle-limit must be > 0")
    return Options(seconds=args.saturate_seconds, settle_limit=args.settle_limit, original=args.original,
                   workers=args.workers, bindir=args.bindir, loads=loads, offline=not args.no_real_captures,
                   baseline=args.baseline, compare=args.compare_cost)


# ---- the access logs ------------------------------------------------------------------------------
@dataclass
class Mark:
    """Where a log stood: its line count and byte size (nginx appends whole lines)."""

    lines: int
    size: int


def mark(log: AccessLog) -> Mark:
    lines = log.count()
    return Mark(lines, log.path.stat().st_size if log.path.exists() else 0)


def msecs(log: AccessLog, since: Mark) -> list[float]:
    """The request times (nginx $msec, the 5th field) of the lines written after `since`."""
    if not log.path.exists():
        return []
    with open(log.path, "rb") as f:
        f.seek(since.size)
        data = f.read()
    out = []
    for line in data.splitlines():
        fields = line.split(b" ", 5)
        if len(fields) > 4:
            try:
                out.append(float(fields[4]))
            except ValueError:
                pass
    return out


def settle(log: AccessLog, quiet: float, limit: float, first_limit: float | None = None) -> dict[str, Any]:
    """Until `log` has not grown for `quiet` seconds (with `first_limit`: it must first grow at all,
    within that many seconds); its count, whether it settled within `limit`, when it last grew."""
    start = time.monotonic()
    last, changed, grew = log.count(), start, False
    while time.monotonic() - start < limit:
        time.sleep(0.2)
        now = log.count()
        if now != last:
            last, changed, grew = now, time.monotonic(), True
        waited = time.monotonic() - changed
        if (grew or first_limit is None) and waited >= quiet:
            return {"lines": now, "settled": True, "last_growth": changed}
        if first_limit is not None and not grew and waited >= first_limit:
            return {"lines": now, "settled": True, "last_growth": changed}
    return {"lines": last, "settled": False, "last_growth": changed}


class Pools:
    """A fresh client /24 per run, routed from the target via the assistant (the lab goes down
    with its routes)."""

    def __init__(self, lab: Lab) -> None:
        self.lab, self.next = lab, POOL_FIRST

    def take(self) -> int:
        n, self.next = self.next, self.next + 1
        self.lab.run("target", ["ip", "route", "add", f"198.18.{n}.0/24", "via", ADDR["assistant"]])
        return n


# ---- CPU of everything -----------------------------------------------------------------------------
MachineTimes = dict[str, float]


def machine() -> MachineTimes:
    """CPU seconds so far over all cores (/proc/stat): total, busy (neither idle nor stolen by the
    hypervisor), of which interrupts (irq + softirq: veth delivery runs there, charged to no
    process), stolen, and the CPU pressure's `some` (a runnable task waited for a core)."""
    t = psutil.cpu_times()
    total = sum(t)
    stolen = getattr(t, "steal", 0.0)
    out = {"total": total, "busy": total - t.idle - getattr(t, "iowait", 0.0) - stolen,
           "interrupts": getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0), "stolen": stolen, "pressure": 0.0}
    try:
        with open("/proc/pressure/cpu") as f:
            out["pressure"] = int(f.readline().rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        pass
    return out


def lab_processes(lab: Lab) -> list[psutil.Process]:
    """Every process in the lab's namespaces (nginx, the replicators, the load) and this one."""
    pids = {os.getpid()}
    for ns in lab.present():
        pids.update(lab.pids(ns))
    return [p for pid in pids for p in tree(pid)]


# ---- the live loads ----------------------------------------------------------------------------------
def run_load(name: str, lab: Lab, rig: ReplicationRig, seconds: float) -> dict[str, Any]:
    """One load from the client against the online nginx, to its end; its own figures."""
    if name == "wrk":
        w = wrk(lab, "client", URL, connections=WRK_CONNECTIONS, seconds=seconds)
        return {"requests": w.requests, "seconds": w.duration_s, "errors": w.errors}
    if name == "ab":
        with port_range(lab, "client", *AB_CLIENT_PORTS):
            a = ab(lab, "client", URL, concurrency=AB_CONCURRENCY, seconds=seconds)
        return {"requests": a.complete, "seconds": a.duration_s, "errors": a.failed + a.non_2xx}
    if name == "paced":
        p = rig.load("paced", "--rate", str(PACED_RATE), "--duration", f"{seconds:g}",
                     "--max-seconds", f"{seconds + 60:g}", timeout=seconds + 90)
        return {"requests": p["requests"], "seconds": p["elapsed"], "errors": p["errors"],
                "rate_sent": p.get("rate_sent")}
    raise ValueError(f"unknown load {name!r}")


def live_run(load: str, repl: Replicator, lab: Lab, rig: ReplicationRig, pool: int,
             opts: Options) -> dict[str, Any]:
    """One replicator through one load: started fresh, measured, stopped."""
    online, target = rig.nginx["online"].log, rig.nginx["target"].log
    repl.start(pool)
    sides = repl.processes()
    cpu0 = {side: snapshot(procs) for side, procs in sides.items()}
    everyone = lab_processes(lab)
    all0 = snapshot(everyone)
    on0, tg0 = mark(online), mark(target)
    kernel0 = kernel_counters(lab, "target")
    m0, t0, tools0 = machine(), time.monotonic(), children_cpu()
    result = run_load(load, lab, rig, opts.seconds)
    m1, t1, ended = machine(), time.monotonic(), time.time()
    # the load generator has exited: its CPU is in our reaped children's
    accounted = children_cpu() - tools0 + used(all0, snapshot(lab_processes(lab) + everyone))
    in_load = {side: used(cpu0[side], snapshot(procs)) for side, procs in repl.processes().items()}
    tail = settle(target, QUIET, opts.settle_limit)
    settle(online, ONLINE_QUIET, 10.0)
    cpu = {side: used(cpu0[side], snapshot(procs)) for side, procs in repl.processes().items()}
    kernel = counters_delta(kernel0, kernel_counters(lab, "target"))
    final = repl.finish()
    served, got = msecs(online, on0), msecs(target, tg0)
    delivered = len(got)
    m = {k: m1[k] - m0[k] for k in m0}
    total = m["total"]
    window = t1 - t0
    return {
        "load": load, "replicator": repl.name, "pool": f"198.18.{pool}.0/24", "load_result": result,
        "seconds": round(window, 2),
        "online_requests": len(served), "online_rate": round(len(served) / window),
        "target_requests": delivered, "target_rate": round(delivered / window),
        "completeness_pct": round(100 * delivered / len(served), 2) if served else 0.0,
        "at_load_end_pct": round(100 * sum(m <= ended for m in got) / len(served), 2) if served else 0.0,
        "lag_s": round(max(got) - max(served), 2) if got and served else None,
        "settled_after_s": round(tail["last_growth"] - t1, 1) if tail["settled"] else None,
        "settle_limit_s": opts.settle_limit,
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "cpu_pct_during_load": {k: round(100 * v / window, 1) for k, v in in_load.items()},
        "cpu_s_after_load": {k: round(v - in_load.get(k, 0.0), 3) for k, v in cpu.items()},
        "us_per_request": {k: round(1e6 * v / delivered, 1) if delivered else None for k, v in cpu.items()},
        "us_per_request_total": round(1e6 * sum(cpu.values()) / delivered, 1) if delivered else None,
        "machine_busy_pct": round(100 * m["busy"] / total, 1) if total else 0.0,
        "interrupts_pct": round(100 * m["interrupts"] / total, 1) if total else 0.0,
        "stolen_pct": round(100 * m["stolen"] / total, 1) if total else 0.0,
        # busy CPU in the load window that neither interrupts nor a lab process (nor this one)
        # used: kernel threads and anything else on the machine, e.g. another test run
        "other_pct": round(100 * max(0.0, m["busy"] - m["interrupts"] - accounted) / total, 1) if total else 0.0,
        "cpu_pressure_pct": round(100 * m["pressure"] / window, 1),
        "target_kernel": {k: kernel[k] for k in KERNEL_KEYS if k in kernel},
        **final,
    }


# ---- offline, real captures --------------------------------------------------------------------------
def record(name: str, lab: Lab, rig: ReplicationRig, work: Path, opts: Options) -> dict[str, Any]:
    """tcpdump on the online host while wrk or ab loads the online nginx (no replicator)."""
    pcap, online = work / f"{name}.pcap", rig.nginx["online"].log
    settle(online, ONLINE_QUIET, 10.0)
    before = mark(online)
    with capturing(lab, "online", pcap, f"tcp port {PORT}") as dump:
        if name == "wrk":
            w = wrk(lab, "client", URL, connections=20, seconds=opts.wrk_capture_seconds)
            label = f"wrk -t1 -c20 -d{opts.wrk_capture_seconds:g}s ({w.requests:,} requests)"
        else:
            a = ab(lab, "client", URL, concurrency=20, requests=opts.ab_capture_requests)
            label = f"ab -c20 -n{opts.ab_capture_requests} ({a.complete:,} complete)"
        settle(online, ONLINE_QUIET, 10.0)
    if dump.stats is None:
        raise RuntimeError(f"tcpdump gave no figures for {pcap}")
    return {"name": name, "label": label, "pcap": pcap, "packets": dump.stats.captured,
            "capture_complete": dump.stats.complete, "online_requests": len(msecs(online, before))}


def offline_run(capture: dict[str, Any], repl: Replicator, rig: ReplicationRig, pool: int,
                opts: Options) -> dict[str, Any]:
    target = rig.nginx["target"].log
    settle(target, QUIET, opts.settle_limit)
    before = mark(target)
    res = repl.replay(capture["pcap"], pool,
                      lambda: settle(target, OFFLINE_QUIET, opts.settle_limit, FIRST_LINE_LIMIT))
    got = sorted(msecs(target, before))
    span = (got[-1] - got[0]) if len(got) > 1 else 0.0
    # stragglers (sessions waiting on a reused port, say) stretch the span: when had 99 % arrived
    t99 = got[int(0.99 * (len(got) - 1))] - got[0] if len(got) > 1 else 0.0
    wall = (max(got) - res["started"]) if got else 0.0
    online_cpu, assistant_cpu = res.pop("online_cpu_s"), res.pop("assistant_cpu_s")
    return {
        "capture": capture["name"], "replicator": repl.name, "pool": f"198.18.{pool}.0/24",
        "target_requests": len(got), "completeness_pct": round(100 * len(got) / capture["online_requests"], 2)
        if capture["online_requests"] else 0.0,
        "rate": round(len(got) / span) if span else None, "rate_from_start": round(len(got) / wall) if wall else None,
        "span_s": round(span, 2), "t99_s": round(t99, 2),
        "cpu_s": {"online": round(online_cpu, 3), "assistant": round(assistant_cpu, 3)},
        "us_per_request_total": round(1e6 * (online_cpu + assistant_cpu) / len(got), 1) if got else None,
        **res,
    }


# ---- the section ------------------------------------------------------------------------------------
def run(opts: Options, work: Path) -> dict[str, Any]:
    """The whole section in its own lab; every process and namespace gone when it returns or raises."""
    root = check_dir(opts.original) if opts.original else None
    lab = Lab(LAB_PREFIX)
    rig = ReplicationRig(lab, work / "rig", port=PORT, bindir=opts.bindir)
    original = Original(lab, root, work / "original", PORT) if root else None
    repls: list[Replicator] = [NoReplicator()] if opts.baseline else []
    repls.append(Tcpcopyd(rig, ("--workers", opts.workers)))
    if opts.compare:
        # the same daemons with compare mode on (issue 16: what it costs), side by side in one run
        on = ("--compare", "true")
        repls.append(Tcpcopyd(rig, ("--workers", opts.workers, *on), intercept_args=on, name="tcpcopyd+compare"))
    if original is not None:
        repls.append(OriginalTcpcopy(original))
    out: dict[str, Any] = {"seconds": opts.seconds, "original": str(root) if root else None,
                           "live": [], "captures": [], "offline": []}
    try:
        lab.down()
        lab.up(offloads=False)
        pools = Pools(lab)
        rig.start_nginx()
        for load in opts.loads:
            for repl in repls:
                out["live"].append(live_run(load, repl, lab, rig, pools.take(), opts))
                print_live_row(out["live"][-1], sys.stderr)
        if opts.offline:
            for name in ("wrk", "ab"):
                capture = record(name, lab, rig, work, opts)
                out["captures"].append({k: str(v) if k == "pcap" else v for k, v in capture.items()})
                for repl in repls[opts.baseline:]:
                    out["offline"].append(offline_run(capture, repl, rig, pools.take(), opts))
    finally:
        if original is not None:
            original.close()
        rig.close()
        lab.down()
    return out


def _fmt(value: Any, spec: str = ",") -> str:
    return "-" if value is None else format(value, spec)


LIVE_HEAD = (f"{'load':<31} {'replicator':<16} {'served/s':>8} {'online':>9} {'target':>9} {'final %':>7} "
             f"{'at end %':>8} {'lag s':>6} {'quiet s':>7} {'us/req':>7} {'online':>7} {'assist':>7} "
             f"{'busy %':>6} {'irq %':>5} {'other %':>7} {'shed':>7}")


def print_live_row(r: dict[str, Any], file: TextIO = sys.stdout) -> None:
    us = r["us_per_request"]
    quiet = _fmt(r["settled_after_s"]) if r["settled_after_s"] is not None else f">{r['settle_limit_s']:g}"
    print(f"{LOAD_LABELS[r['load']]:<31} {r['replicator']:<16} {r['online_rate']:>8,} {r['online_requests']:>9,} "
          f"{r['target_requests']:>9,} {r['completeness_pct']:>7} {r['at_load_end_pct']:>8} {_fmt(r['lag_s']):>6} "
          f"{quiet:>7} {_fmt(r['us_per_request_total']):>7} {_fmt(us.get('online')):>7} "
          f"{_fmt(us.get('assistant')):>7} {r['machine_busy_pct']:>6} {r['interrupts_pct']:>5} {r['other_pct']:>7} "
          f"{_fmt(r.get('sessions_shed')):>7}", file=file, flush=True)


def print_tables(out: dict[str, Any]) -> None:
    print(f"\nsaturating live loads, {out['seconds']:g} s each (nginx on online and target, offloads off); "
          "us/req: CPU per request the target received (online: tcpcopyd's processes or the original "
          "tcpcopy; assist: interceptd or intercept)")
    print(LIVE_HEAD)
    for r in out["live"]:
        print_live_row(r)
    if out["offline"]:
        print("\noffline, tcpdump captures of real tools against nginx (tcpcopyd --offline --topspeed; "
              "the original's offline build -a 1000); req/s: over the span from the target's first to its last "
              "request; 99 % s: when 99 % of them had come; from start: req/s counted from the replay's launch; "
              "us/req: CPU of both sides per request received")
        print(f"{'capture':<37} {'packets':>8} {'requests':>8}  {'replicator':<16} {'target':>8} {'%':>7} "
              f"{'req/s':>7} {'span s':>6} {'99 % s':>6} {'from start':>10} {'us/req':>7}")
        captures = {c["name"]: c for c in out["captures"]}
        for r in out["offline"]:
            c = captures[r["capture"]]
            print(f"{c['label']:<37} {c['packets']:>8,} {c['online_requests']:>8,}  {r['replicator']:<16} "
                  f"{r['target_requests']:>8,} {r['completeness_pct']:>7} {_fmt(r['rate']):>7} {r['span_s']:>6} "
                  f"{r['t99_s']:>6} {_fmt(r['rate_from_start']):>10} {_fmt(r['us_per_request_total']):>7}")
    print("final %: target/online requests once the target's log was quiet 2 s; at end %: the target's by "
          "the load's end; lag s: the target's last request after online's; quiet s: when its log last "
          "grew after the load; busy %: both cores during the load; irq %: of that, interrupts (the veths' "
          "softirq work, charged to no process); other %: busy, neither interrupts nor any lab process "
          "(kernel threads, or another user of the machine: a disturbed run)")
