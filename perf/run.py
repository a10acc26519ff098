"""`make perf`: stateful replay of generated captures against tcpreplay's stateless ceiling, side by side.

    sudo .venv/bin/python perf/run.py [--quick] [--profile]

Builds its own lab (prefix tclperf, torn down at the end, also on failure), starts fast real
targets in the target host (nginx from Debian for HTTP, PostgreSQL for the database workload),
asks them how long their answers are, and generates the captures with dpkt (perf/workloads.py).
For each workload, in one run:
1. `tcpreplay --topspeed` of the capture out of the online host's veth: the stateless ceiling
   of the path on this machine ("line rate");
2. `tcpcopyd --offline --topspeed` through the live target, then at rising fixed rates
   (1x, 2x, 4x the capture's own rate).
Reports packets/s, Mbit/s, session and byte completeness, the ratio to tcpreplay, CPU
microseconds per packet per role (psutil; the whole online side against the original tcpcopy's
22-27), peak RSS, capture-to-worker latency, the target's and the machine's CPU (so a run that
the target or the 2 cores bound says so); writes perf/results/<time>.json and .png and prints
the table. `--profile` adds one topspeed replay per workload under py-spy and prints where the
time goes, per process. Then live replication at fixed request rates (perf/live.py), with the
original's CPU figures for the same load beside ours. Then, in a lab of its own, saturating live
loads against nginx (wrk, ab, one connection at 5k req/s) and offline replays of tcpdump captures
of wrk and ab (perf/saturate.py); `--original DIR` runs the original C tcpcopy and intercept
through the same loads in the same run; `--saturate-only` runs that section alone.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from appliance.lab.netns import ADDR, MAC, Lab
from appliance.lab.nginx import Nginx
from appliance.lab.postgres import PgCluster
from appliance.lab.rig import ReplicationRig

sys.path.insert(0, str(Path(__file__).resolve().parent))
import live  # noqa: E402
import saturate  # noqa: E402
from workloads import CALIBRATE, Workload, pg_startup, standard, write_pcap  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SPEEDS = ("top", "1", "2", "4")
ORIGINAL_US_PER_PACKET = (22, 27)     # the C tcpcopy, all-in, measured on this machine


class Targets:
    """nginx (HTTP) and PostgreSQL (database) in the target host; their pids for CPU sampling."""

    def __init__(self, lab: Lab, work: Path) -> None:
        self.lab, self.work = lab, work
        self.nginx: Nginx | None = None
        self.pg = PgCluster(lab, "target", work / "pg")

    def start(self) -> None:
        self.lab.run("target", ["sysctl", "-q", "-w", "net.core.somaxconn=65535",
                                "net.ipv4.tcp_max_syn_backlog=65535"])
        # the lab's nginx configuration (appliance.lab.nginx), without an access log: a benchmark target
        self.nginx = Nginx(self.lab, "target", ADDR["target"], 8080, self.work / "nginx", access_log=False).start()
        self.pg.init()
        with open(self.pg.dir / "data" / "postgresql.conf", "a") as conf:
            conf.write("max_connections = 300\n")
        self.pg.start()

    def pids(self) -> list[int]:
        out = []
        for top in ([self.nginx.pid] if self.nginx and self.nginx.pid else []) + \
                ([self.pg.proc.pid] if self.pg.proc else []):
            try:
                proc = psutil.Process(top)
                out += [p.pid for p in [proc, *proc.children(recursive=True)]]
            except psutil.Error:
                pass
        return out

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        self.pg.stop()


def calibrate(lab: Lab, w: Workload) -> tuple[dict[bytes, int], int]:
    """The target's answer length for each kind of request of the workload (and to a startup)."""
    kind = "pg" if w.port == 5432 else "http"
    requests = ([pg_startup()] if kind == "pg" else []) + w.requests
    deadline = time.monotonic() + 20
    while True:
        done = lab.run("online", [sys.executable, "-c", CALIBRATE, ADDR["target"], str(w.port), kind],
                       input="\n".join(r.hex() for r in requests), check=False)
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)                       # the target is still starting
    if done.returncode != 0:
        raise RuntimeError(f"calibrating {w.name} against {ADDR['target']}:{w.port}: {done.stderr}")
    sizes = json.loads(done.stdout)
    return {r: sizes[r.hex()] for r in w.requests}, sizes.get("startup", 0)


def tcpreplay(lab: Lab, path: Path, port: int) -> dict:
    """The same packets, addressed to the target like tcpcopyd's copies, sent blindly."""
    to_target = path.with_suffix(".target.pcap")
    lab.run("online", ["tcprewrite", f"--infile={path}", f"--outfile={to_target}",
                       f"--enet-dmac={MAC['target']}", f"--dstipmap={ADDR['online']}/32:{ADDR['target']}/32",
                       # a closed port: the target answers RST and keeps no state for these tuples,
                       # which the stateful replays use afterwards
                       f"--portmap={port}:9", "--fixcsum"])
    out = lab.run("online", ["tcpreplay", "--topspeed", "-i", "eth0", str(to_target)], check=False).stdout
    pps = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", out)
    mbps = re.search(r"Rated: [\d.]+ Bps, ([\d.]+) Mbps", out)
    return {"pps": float(pps.group(1)) if pps else 0.0, "mbps": float(mbps.group(1)) if mbps else 0.0}


class Sampler(threading.Thread):
    """Samples CPU time and RSS of tcpcopyd's processes and interceptd while a replay runs."""

    def __init__(self, rig: ReplicationRig, profile_dir: Path | None = None,
                 target_pids: list[int] | None = None) -> None:
        super().__init__(daemon=True)
        self.target_pids = target_pids or []
        self.rig, self.done = rig, threading.Event()
        self.profile_dir = profile_dir
        self.profilers: dict[str, subprocess.Popen] = {}
        self.cpu: dict[str, float] = {}
        self.system: dict[str, float] = {}   # the kernel's share of `cpu` (syscalls, the target's stack)
        self.base_system: dict[str, float] = {}
        self.base: dict[str, float] = {}     # CPU at the first sample: start-up is not replay work
        self.rss: dict[str, int] = {}
        self.threads: dict[str, float] = {}   # the part of `cpu` spent outside the main thread
        self.base_threads: dict[str, float] = {}
        self.latency: dict[str, float] = {}
        # every 0.1 s: (time, machine CPU times, CPU of tcpcopyd's processes, CPU of the target's)
        self.timeline: list[tuple[float, Any, float, float]] = []

    def run(self) -> None:
        procs: dict[str, psutil.Process] = {}
        next_status = 0.0
        while not self.done.is_set():
            for top in self.target_pids:            # servers that fork per connection: look again
                try:
                    parent = psutil.Process(top)
                    for proc in [parent, *parent.children(recursive=True)]:
                        procs.setdefault(f"target-{proc.pid}", proc)
                except psutil.Error:
                    pass
            # the status request costs tcpcopyd's supervisor CPU too: often only until every child is known
            status = self.rig.status() if time.monotonic() >= next_status else None
            if status:
                if all(ch["pid"] for ch in status["children"]):
                    next_status = time.monotonic() + 1.0
                for ch in status["children"]:
                    name = f"{ch['role']}-{ch['index']}"
                    if ch["pid"] and name not in procs:
                        procs[name] = psutil.Process(ch["pid"])
                        self.profile(name, ch["pid"])
                    for k in ("capture_to_worker_p50_ms", "capture_to_worker_p99_ms"):
                        if k in ch["counters"]:
                            self.latency[k] = max(self.latency.get(k, 0.0), ch["counters"][k])
                procs.setdefault("supervisor", psutil.Process(status["supervisor"]["pid"]))
            for name, proc in list(procs.items()):
                try:
                    t = proc.cpu_times()
                    self.base.setdefault(name, t.user + t.system)
                    self.cpu[name] = t.user + t.system - self.base[name]
                    self.base_system.setdefault(name, t.system)
                    self.system[name] = t.system - self.base_system[name]
                    self.rss[name] = max(self.rss.get(name, 0), proc.memory_info().rss)
                    if not name.startswith("target-"):
                        # threads other than the main one: ZeroMQ's I/O thread (and the ZAP handler)
                        others = sum(th.user_time + th.system_time for th in proc.threads() if th.id != proc.pid)
                        self.base_threads.setdefault(name, others)
                        self.threads[name] = others - self.base_threads[name]
                except psutil.Error:
                    pass
            self.timeline.append((time.monotonic(), psutil.cpu_times(),
                                  sum(v for k, v in self.cpu.items() if not k.startswith("target-")),
                                  sum(v for k, v in self.cpu.items() if k.startswith("target-"))))
            time.sleep(0.1)
        for prof in self.profilers.values():
            prof.send_signal(signal.SIGINT)
        for prof in self.profilers.values():
            prof.wait(30)

    def busy_window(self) -> tuple[float, float, float]:
        """(seconds, machine busy share, target CPU share of one core) while tcpcopyd worked: the
        samples in which its processes used more than a fifth of a core."""
        t = self.timeline
        working = [i for i in range(1, len(t)) if t[i][2] - t[i - 1][2] > 0.2 * (t[i][0] - t[i - 1][0])]
        if not working:
            return 0.0, 0.0, 0.0
        (t0, m0, _, g0), (t1, m1, _, g1) = self.timeline[working[0] - 1], self.timeline[working[-1]]
        total = sum(m1) - sum(m0)
        idle = (m1.idle + m1.iowait) - (m0.idle + m0.iowait)
        return t1 - t0, (1 - idle / total) if total else 0.0, (g1 - g0) / (t1 - t0) if t1 > t0 else 0.0

    def profile(self, name: str, pid: int) -> None:
        """py-spy on one child for the rest of the replay (collapsed stacks, for `hotspots`)."""
        if self.profile_dir is None:
            return
        out = self.profile_dir / f"{name}.txt"
        self.profilers[name] = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--rate", "250",
             "--nonblocking", "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def hotspots(path: Path, top: int = 12) -> list[tuple[str, float, float]]:
    """(function, self %, inclusive %) from py-spy's collapsed stacks, most self time first."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
    ranked = sorted(own, key=own.__getitem__, reverse=True)[:top]
    return [(f, 100 * own[f] / total, 100 * inclusive[f] / total) for f in ranked] if total else []


def replay(rig: ReplicationRig, pcap: Path, w: Workload, stats: dict, speed: str, pool: str,
           targets: Targets, profile_dir: Path | None = None) -> dict:
    """One stateful replay. Every replay sends from its own client pool: the target keeps TIME_WAIT
    for the tuples of the previous one for a minute."""
    ic = psutil.Process(rig.procs["interceptd"].pid)
    ic0 = sum(ic.cpu_times()[:2])
    sampler = Sampler(rig, profile_dir, targets.pids())
    sampler.profile("interceptd", ic.pid)
    sampler.start()
    args = (["--topspeed"] if speed == "top" else ["--speed", speed]) + ["-c", pool]
    report_json = rig.dir / "report.json"
    if report_json.exists():
        report_json.unlink()
    done = rig.run_offline([str(pcap)], *args, "--offline-tail", "20", "--report-json", str(report_json),
                           timeout=600, port=w.port)
    sampler.done.set()
    sampler.join()
    window, machine_busy, target_share = sampler.busy_window()
    ic_cpu = sum(ic.cpu_times()[:2]) - ic0
    rep = json.loads(report_json.read_text()) if report_json.exists() else {}
    took = rep.get("end_to_end_s") or 0.0
    packets = stats["packets"]
    online = {k: v for k, v in sampler.cpu.items() if not k.startswith("target-")}
    span = stats["span_s"] / float(speed) if speed != "top" else 0.0
    return {
        "speed": speed, "offered_pps": round(packets / span) if span else None, "seconds": took,
        "pps": round(packets / took) if took else 0, "mbps": round(stats["bytes"] * 8 / took / 1e6, 1) if took else 0,
        "completeness_pct": round(100 * rep.get("sessions_completed", 0) / stats["connections"], 2),
        "bytes_acked_pct": round(100 * rep.get("bytes_acked", 0) / stats["payload_bytes"], 2),
        "cpu_us_per_packet_online": round(1e6 * sum(online.values()) / packets, 1),
        "cpu_us_per_packet_interceptd": round(1e6 * ic_cpu / packets, 1),
        "cpu_seconds_per_million_packets": {k: round(1e6 * v / packets, 2) for k, v in online.items()},
        "system_cpu_seconds_by_role": {k: round(v, 3) for k, v in sampler.system.items()
                                       if not k.startswith("target-")},
        "zmq_io_thread_cpu_share": {k: round(v / sampler.cpu[k], 3) for k, v in sampler.threads.items()
                                    if sampler.cpu.get(k)},
        "target_cpu_pct": round(100 * target_share, 1), "machine_busy_pct": round(100 * machine_busy, 1),
        "busy_window_s": round(window, 2),
        "peak_rss_mib": {k: round(v / 2**20, 1) for k, v in sampler.rss.items() if not k.startswith("target-")},
        "latency_ms": sampler.latency, "report": done.stdout.strip().splitlines(),
        "not_completed": rep.get("not_completed", {}), "funnel": rep.get("funnel", {}),
        "workers": sum(name.startswith("rewrite-") for name in online),
        "wakeups_per_packet": {role: round(c.get("loop_turns", 0) / packets, 3)
                               for role, c in rep.get("totals", {}).items() if c.get("loop_turns")},
    }


def bound_by(r: dict) -> str:
    """What limited a replay: the target process, the machine's 2 cores, or neither."""
    if r["target_cpu_pct"] >= 90:
        return "target"
    if r["machine_busy_pct"] >= 95:
        return "2 cores"
    return ""


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = range(len(names))
    left.bar([x - 0.2 for x in xs], [results[n]["tcpreplay"]["pps"] for n in names], 0.4,
             label="tcpreplay --topspeed (stateless)")
    left.bar([x + 0.2 for x in xs], [results[n]["replays"][0]["pps"] for n in names], 0.4,
             label="tcpcopyd --offline --topspeed (stateful)")
    left.set_xticks(list(xs), names)
    left.set_yscale("log")
    left.set_ylabel("packets/s (log)")
    left.set_title("the path's stateless ceiling vs stateful replay")
    left.legend(fontsize=8)
    for n in names:
        fixed = [r for r in results[n]["replays"] if r["offered_pps"]]
        right.plot([r["offered_pps"] for r in fixed], [r["pps"] for r in fixed], marker="o", label=n)
    top = max((r["offered_pps"] or 0) for n in names for r in results[n]["replays"]) if names else 1
    right.plot([0, top], [0, top], linestyle=":", color="grey", label="achieved = offered")
    right.set_xlabel("offered packets/s (capture rate x speed)")
    right.set_ylabel("achieved packets/s, end to end")
    right.set_title("fixed rates")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def measure_workloads(args: argparse.Namespace, work: Path) -> tuple[dict, list]:
    """The generated captures (tcpreplay against tcpcopyd --offline) and the paced live runs, in the
    tclperf lab; (per-workload results, live rows)."""
    lab = Lab("tclperf")
    rig = ReplicationRig(lab, work / "rig", tcpcopyd_args=("--workers", args.workers), port=live.PORT,
                         intercept_filter=f"tcp and src host {ADDR['target']} and "
                                          f"(src port 8080 or src port 5432 or src port {live.PORT})",
                         bindir=args.bindir)
    targets = Targets(lab, work)
    results: dict = {}
    pools: list[str] = []

    def fresh_pool() -> str:
        pools.append(f"198.18.{10 + len(pools)}.0/24")
        lab.run("target", ["ip", "route", "add", pools[-1], "via", ADDR["assistant"]])
        return pools[-1]

    workloads = standard()
    if args.quick:
        workloads = [workloads[0], workloads[3]]
    if args.only:
        workloads = [w for w in workloads if w.name in args.only]
    try:
        lab.down()
        lab.up(offloads=False)
        targets.start()
        rig.start_interceptd()
        for w in workloads:
            answers, first = calibrate(lab, w)
            pcap = work / f"{w.name}.pcap"
            stats = write_pcap(w, pcap, answers, ADDR["client"], ADDR["online"], MAC["client"], MAC["online"], first)
            entry = {"workload": w.name, **stats, "answer_bytes": list(answers.values()),
                     "tcpreplay": tcpreplay(lab, pcap, w.port), "replays": []}
            for speed in (["top"] if args.quick else args.speeds.split(",")):
                entry["replays"].append(replay(rig, pcap, w, stats, speed, fresh_pool(), targets))
                print(f"{w.name} {speed}: {entry['replays'][-1]['pps']:,} packets/s", file=sys.stderr)
            if args.profile:
                prof_dir = work / f"profile-{w.name}"
                prof_dir.mkdir()
                replay(rig, pcap, w, stats, args.profile_speed, fresh_pool(), targets, prof_dir)
                entry["profile"] = {p.stem: hotspots(p) for p in sorted(prof_dir.glob("*.txt"))}
            results[w.name] = entry
        live_rows = [] if args.no_live else live.paced(rig)
    finally:
        rig.close()
        targets.stop()
        lab.down()
    return results, live_rows


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C: every `finally` stops its processes and removes its lab."""
    raise SystemExit(128 + signum)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="two workloads, topspeed only")
    ap.add_argument("--workers", default="auto", help="tcpcopyd's rewrite workers (default: tcpcopyd's, auto)")
    ap.add_argument("--no-live", action="store_true", help="skip the live runs at fixed request rates")
    ap.add_argument("--keep", action="store_true", help="keep the work files (captures, profiles) in /tmp")
    ap.add_argument("--only", action="append", metavar="WORKLOAD", help="run only these workloads")
    ap.add_argument("--profile-speed", default="top", help="speed of the profiled replay (default top)")
    ap.add_argument("--speeds", default=",".join(SPEEDS), help=f"replays to measure (default {','.join(SPEEDS)})")
    ap.add_argument("--profile", action="store_true",
                    help="one more topspeed replay per workload under py-spy; print where the time goes")
    ap.add_argument("--bindir", metavar="DIR",
                    help="where tcpcopyd, interceptd come from (default: next to this interpreter)")
    saturate.add_arguments(ap)
    args = ap.parse_args()
    sat_options = saturate.options(ap, args)
    signal.signal(signal.SIGTERM, _terminated)
    work = Path(tempfile.mkdtemp(prefix="tcpcopy-perf-"))
    work.chmod(0o755)             # the postgres user reaches its data directory below
    results: dict = {}
    live_rows: list = []
    saturated: dict | None = None
    try:
        if not args.saturate_only:
            results, live_rows = measure_workloads(args, work)
        if not args.no_saturate:
            saturated = saturate.run(sat_options, work / "saturate")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(
        {"workloads": results, "live": live_rows, "saturate": saturated}, indent=2, default=str))
    if results:
        print_table(results)
    if live_rows:
        live.print_table(live_rows)
    if saturated:
        saturate.print_tables(saturated)
    if results:
        try:
            plot(results, RESULTS / f"{stamp}.png")
        except ImportError:
            print("no plot: matplotlib is not installed (make perf installs it)")
    print(f"results: {RESULTS / (stamp + '.json')}" + (" (and .png); " if results else "; ")
          + (f"work files in {work}" if args.keep else "work files removed (--keep keeps them)"))


def print_table(results: dict) -> None:
    print(f"{'workload':<15} {'packets':>8} {'speed':>5} {'offered':>8} {'pps':>8} {'Mbit/s':>7} "
          f"{'x tcpreplay':>11} {'sessions %':>10} {'bytes %':>7} {'us/pkt':>6} {'icpt':>5} "
          f"{'RSS MiB':>7} {'p50/p99 ms':>11} {'target%':>7} {'busy%':>5} {'bound':>7}")
    for name, e in results.items():
        print(f"{name:<15} {e['packets']:>8,} {'':>5} {'':>8} {e['tcpreplay']['pps']:>8,.0f} "
              f"{e['tcpreplay']['mbps']:>7.0f}   (tcpreplay --topspeed, stateless)")
        for r in e["replays"]:
            ratio = r["pps"] / e["tcpreplay"]["pps"] if e["tcpreplay"]["pps"] else 0
            lat = r["latency_ms"]
            print(f"{'':<15} {'':>8} {r['speed']:>5} {r['offered_pps'] or '-':>8} {r['pps']:>8,} {r['mbps']:>7} "
                  f"{ratio:>11.3f} {r['completeness_pct']:>10} {r['bytes_acked_pct']:>7} "
                  f"{r['cpu_us_per_packet_online']:>6} {r['cpu_us_per_packet_interceptd']:>5} "
                  f"{max(r['peak_rss_mib'].values(), default=0):>7} "
                  f"{lat.get('capture_to_worker_p50_ms', 0):>5.1f}/{lat.get('capture_to_worker_p99_ms', 0):<5.1f} "
                  f"{r['target_cpu_pct']:>7} {r['machine_busy_pct']:>5} {bound_by(r):>7}")
    workers = sorted({r["workers"] for e in results.values() for r in e["replays"]})
    print(f"us/pkt: CPU of every tcpcopyd process (supervisor, reader, {'/'.join(map(str, workers))} rewrite "
          f"worker(s)) per packet of the file (the original tcpcopy: "
          f"{ORIGINAL_US_PER_PACKET[0]}-{ORIGINAL_US_PER_PACKET[1]} us per captured packet); icpt: interceptd's")
    for name, e in results.items():
        for role, rows in e.get("profile", {}).items():
            print(f"\n{name}: {role}, self % / inclusive % of samples")
            for func, own, incl in rows:
                print(f"  {own:5.1f} {incl:5.1f}  {func}")


if __name__ == "__main__":
    main()
