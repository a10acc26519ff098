"""`make perf`: stateful offline replay against tcpreplay's stateless ceiling, side by side.

    sudo .venv/bin/python perf/run.py [--quick]

For each workload, captured live in the lab from the real client and service (tcpdump, offloads
off so every frame fits the MTU):
1. `tcpreplay --topspeed` of the pcap out of the online host's veth: the stateless ceiling of
   the path on this machine;
2. `tcpcopyd --offline --topspeed`, then at fixed speeds, through the live target (the lab's
   Python HTTP service, which is itself a ceiling: the report says so when it is busy).
Reports packets/s, Mbit/s, session completeness, the ratio to tcpreplay, CPU microseconds per
packet per role (psutil), peak RSS, capture-to-worker latency; writes perf/results/<time>.json and
.png and prints the table. The lab is torn down at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from appliance.lab.netns import ADDR, MAC, Lab
from appliance.lab.rig import ReplicationRig
from appliance.pcapfile import scan

RESULTS = Path(__file__).resolve().parent / "results"
WORKLOADS = {
    "short": ("burst", "--conns", "4000", "--concurrency", "20"),
    "keepalive": ("mix", "--short", "0", "--keepalive", "40", "--per-conn", "150", "--concurrency", "20"),
    "upload": ("mix", "--short", "0", "--keepalive", "20", "--per-conn", "8", "--post-every", "1",
               "--post-size", "262144", "--concurrency", "10"),
}


def capture(lab: Lab, path: Path, load: tuple[str, ...]) -> None:
    dump = lab.popen("online", ["tcpdump", "-i", "eth0", "-s", "0", "-B", "131072", "--immediate-mode", "-w",
                                str(path), "tcp and dst host 198.18.0.2 and dst port 8080"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    lab.run("client", [sys.executable, "-m", "appliance.lab.load", "--server", f"{ADDR['online']}:8080", *load],
            timeout=300)
    time.sleep(1.5)
    dump.send_signal(signal.SIGINT)
    dump.wait(10)


def tcpreplay(lab: Lab, path: Path) -> dict:
    """The same packets, addressed to the target like tcpcopyd's copies, sent blindly."""
    to_target = path.with_suffix(".target.pcap")
    lab.run("online", ["tcprewrite", f"--infile={path}", f"--outfile={to_target}",
                       f"--enet-dmac={MAC['target']}", f"--dstipmap={ADDR['online']}/32:{ADDR['target']}/32",
                       # a closed port: the target answers RST and keeps no state for these tuples,
                       # which the stateful replays use afterwards
                       "--portmap=8080:9", "--fixcsum"])
    out = lab.run("online", ["tcpreplay", "--topspeed", "-i", "eth0", str(to_target)], check=False).stdout
    pps = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", out)
    mbps = re.search(r"Rated: [\d.]+ Bps, ([\d.]+) Mbps", out)
    return {"pps": float(pps.group(1)) if pps else 0.0, "mbps": float(mbps.group(1)) if mbps else 0.0}


class Sampler(threading.Thread):
    """Samples CPU time and RSS of tcpcopyd's processes and interceptd while a replay runs."""

    def __init__(self, rig: ReplicationRig, profile_dir: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.rig, self.done = rig, threading.Event()
        self.profile_dir = profile_dir
        self.profilers: dict[str, subprocess.Popen] = {}
        self.cpu: dict[str, float] = {}
        self.system: dict[str, float] = {}   # the kernel's share of `cpu` (syscalls, the target's stack)
        self.base_system: dict[str, float] = {}
        self.base: dict[str, float] = {}     # CPU at the first sample: start-up is not replay work
        self.rss: dict[str, int] = {}
        self.latency: dict[str, float] = {}

    def run(self) -> None:
        procs: dict[str, psutil.Process] = {}
        while not self.done.is_set():
            status = self.rig.status()
            if status:
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
                except psutil.Error:
                    pass
            time.sleep(0.1)
        for prof in self.profilers.values():
            prof.send_signal(signal.SIGINT)
        for prof in self.profilers.values():
            prof.wait(30)

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


def replay(rig: ReplicationRig, lab: Lab, pcap: Path, packets: int, speed: str, pool: str,
           profile_dir: Path | None = None) -> dict:
    """One stateful replay. Every replay sends from its own client pool: the target keeps TIME_WAIT
    for the tuples of the previous one (it closed those connections first) for a minute."""
    for rec in (rig.target_rec,):
        if rec.exists():
            rec.unlink()
    rig.stop("target-http")
    rig.start_services(("target",))
    ic = psutil.Process(rig.procs["interceptd"].pid)
    ic0 = sum(ic.cpu_times()[:2])
    sampler = Sampler(rig, profile_dir)
    sampler.profile("interceptd", ic.pid)
    sampler.start()
    args = (["--topspeed"] if speed == "top" else ["--speed", speed]) + ["-c", pool]
    report_json = rig.dir / "report.json"
    done = rig.run_offline([str(pcap)], *args, "--offline-tail", "20", "--report-json", str(report_json),
                           timeout=600)
    sampler.done.set()
    sampler.join()
    ic_cpu = sum(ic.cpu_times()[:2]) - ic0
    rep = json.loads(report_json.read_text()) if report_json.exists() else {}
    took = rep.get("end_to_end_s") or 0.0
    n_conns = rep.get("client_connections", 0)
    completed = rep.get("sessions_completed", 0)
    online_cpu = sum(v for k, v in sampler.cpu.items())
    return {
        "speed": speed, "seconds": took, "pps": round(packets / took) if took else 0,
        "completeness_pct": round(100 * completed / n_conns, 2) if n_conns else 0.0,
        "cpu_us_per_packet_online": round(1e6 * online_cpu / packets, 1),
        "cpu_us_per_packet_interceptd": round(1e6 * ic_cpu / packets, 1),
        "cpu_seconds_by_role": {k: round(v, 3) for k, v in sampler.cpu.items()},
        "system_cpu_seconds_by_role": {k: round(v, 3) for k, v in sampler.system.items()},
        "peak_rss_mib": {k: round(v / 2**20, 1) for k, v in sampler.rss.items()},
        "latency_ms": sampler.latency, "report": done.stdout.strip().splitlines(),
        "not_completed": rep.get("not_completed", {}), "funnel": rep.get("funnel", {}),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [results[n]["tcpreplay"]["pps"] for n in names], 0.4, label="tcpreplay --topspeed")
    ax.bar([x + 0.2 for x in xs], [results[n]["replays"][0]["pps"] for n in names], 0.4,
           label="tcpcopyd --offline --topspeed")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("packets/s")
    ax.set_title("stateless ceiling vs stateful replay, same lab, same pcap")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one workload, topspeed only")
    ap.add_argument("--profile", action="store_true",
                    help="one more topspeed replay per workload under py-spy; print where the time goes")
    args = ap.parse_args()
    lab = Lab("tclperf")
    work = Path(tempfile.mkdtemp(prefix="tcpcopy-perf-"))
    rig = ReplicationRig(lab, work / "rig", tcpcopyd_args=("--workers", "2"))
    results: dict = {}
    pools: list[str] = []
    try:
        lab.down()
        lab.up(offloads=False)
        rig.start_services()
        rig.start_interceptd()
        for name, load in list(WORKLOADS.items())[:1 if args.quick else None]:
            pcap = work / f"{name}.pcap"
            capture(lab, pcap, load)
            packets = scan(str(pcap)).packets
            entry = {"packets": packets, "tcpreplay": tcpreplay(lab, pcap), "replays": []}
            for speed in (["top"] if args.quick else ["top", "1", "4"]):
                pools.append(f"198.18.{10 + len(pools)}.0/24")
                lab.run("target", ["ip", "route", "add", pools[-1], "via", ADDR["assistant"]])
                entry["replays"].append(replay(rig, lab, pcap, packets, speed, pools[-1]))
            if args.profile:
                pools.append(f"198.18.{10 + len(pools)}.0/24")
                lab.run("target", ["ip", "route", "add", pools[-1], "via", ADDR["assistant"]])
                prof_dir = work / f"profile-{name}"
                prof_dir.mkdir()
                replay(rig, lab, pcap, packets, "top", pools[-1], prof_dir)
                entry["profile"] = {p.stem: hotspots(p) for p in sorted(prof_dir.glob("*.txt"))}
            results[name] = entry
    finally:
        rig.close()
        lab.down()
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / f"{stamp}.png")
    print(f"{'workload':<10} {'packets':>8} {'tcpreplay pps':>14} {'speed':>6} {'tcpcopyd pps':>13} {'ratio':>6} "
          f"{'complete %':>10} {'us/pkt online':>13} {'us/pkt icpt':>11} {'p50/p99 ms':>12}")
    for name, e in results.items():
        for r in e["replays"]:
            ratio = r["pps"] / e["tcpreplay"]["pps"] if e["tcpreplay"]["pps"] else 0
            lat = r["latency_ms"]
            print(f"{name:<10} {e['packets']:>8} {e['tcpreplay']['pps']:>14,.0f} {r['speed']:>6} {r['pps']:>13,} "
                  f"{ratio:>6.2f} {r['completeness_pct']:>10} {r['cpu_us_per_packet_online']:>13} "
                  f"{r['cpu_us_per_packet_interceptd']:>11} "
                  f"{lat.get('capture_to_worker_p50_ms', 0):>5.1f}/{lat.get('capture_to_worker_p99_ms', 0):<5.1f}")
    for name, e in results.items():
        for role, rows in e.get("profile", {}).items():
            print(f"\n{name}: {role}, self % / inclusive % of samples")
            for func, own, incl in rows:
                print(f"  {own:5.1f} {incl:5.1f}  {func}")
    print(f"results: {RESULTS / (stamp + '.json')} and .png; work files in {work}")


if __name__ == "__main__":
    main()
