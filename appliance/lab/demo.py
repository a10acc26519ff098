"""`tcpcopy-lab demo`: the built-in lab replaying ~20 s of client load, with a verdict.

Runs as root in the caller's process: builds the lab, starts the rig, drives two loads at once
from the client (a paced keep-alive connection and a mix of short and keep-alive connections
with POST bodies), prints tcpcopyctl status mid-run, CPU per process, then online vs target.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.lab.netns import ADDR, Lab
from appliance.lab.rig import SERVICE_PORT, ReplicationRig
from appliance.lab.tools import cpu_seconds
from appliance.tcpcopyctl.cli import compare_line, format_status


def _pids(rig: ReplicationRig) -> dict[str, int]:
    pids = {"interceptd": rig.procs["interceptd"].pid}
    status = rig.status() or {"children": [], "supervisor": {}}
    if status.get("supervisor"):
        pids["tcpcopyd supervisor"] = status["supervisor"]["pid"]
    for ch in status["children"]:
        if ch["pid"]:
            pids[f"tcpcopyd {ch['role']} {ch['index']}"] = ch["pid"]
    return pids


def run_demo(prefix: str = "tcl", duration: float = 20.0, offloads: bool = True) -> int:
    lab = Lab(prefix)
    work = Path(tempfile.mkdtemp(prefix="tcpcopy-demo-"))
    print(f"lab {prefix}: client {ADDR['client']}  online {ADDR['online']}  target {ADDR['target']}  "
          f"assistant {ADDR['assistant']}  (offloads {'on' if offloads else 'off'}; logs in {work})")
    # compare mode on: the demo ends with the comparison of the target's answers with production's
    rig = ReplicationRig(lab, work, tcpcopyd_args=("--compare", "true"), intercept_args=("--compare", "true"))
    try:
        lab.down()
        lab.up(offloads=offloads)
        rig.start()
        pids = _pids(rig)
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        server = f"{ADDR['online']}:{SERVICE_PORT}"
        load = [sys.executable, "-m", "appliance.lab.load", "--server", server]
        paced = lab.popen("client", load + ["paced", "--rate", "1000", "--duration", str(duration)],
                          stdout=subprocess.PIPE, text=True)
        mixes = []
        end = time.monotonic() + duration
        shown = False
        while time.monotonic() < end:
            mixes.append(lab.run("client", load + ["mix", "--short", "100", "--keepalive", "10", "--per-conn", "20"],
                                 check=False, capture_output=True, text=True, timeout=120))
            if not shown and time.monotonic() >= end - duration / 2:
                shown = True
                status = rig.status()
                if status:
                    print("\n--- tcpcopyctl status (mid-run) ---")
                    print(format_status(status))
                    print("---")
            time.sleep(1.0)
        out, _ = paced.communicate(timeout=60)
        load_ended = time.time()
        cpu1, t1 = cpu_seconds(pids), time.monotonic()
        verdict = rig.verdict({"paced": out.strip()}, load_ended)
        final = verdict.status
        c = verdict.comparison
        print(f"\nload: {duration:.0f} s, paced keep-alive at 1000 req/s + {len(mixes)} rounds of "
              f"100 short and 10 keep-alive connections (every 5th request a 64 KiB POST)")
        print(f"requests served online: {c.requests_online}   received by the target: {c.requests_target}")
        print(f"sessions online: {c.sessions_online}   identical on the target: {c.identical}   "
              f"mismatched: {len(c.mismatched)}   missing: {len(c.missing)}")
        print(f"completeness: {c.completeness_pct:.2f} %   target finished {verdict.tail_seconds:.1f} s after the load")
        if final:
            f = final["funnel"]
            wall = duration
            print(f"captured {f['captured']} packets ({f['captured'] / wall:.0f}/s), sent {f['sent_packets']} "
                  f"({f['sent_packets'] / wall:.0f}/s), response headers {f['response_headers']}, "
                  f"kernel drops {f['kernel_drops']}, capture gaps {f['capture_gaps']}")
        print("CPU during the load (% of one core):")
        for name in sorted(cpu1):
            if name in cpu0:
                print(f"  {name:<28} {100 * (cpu1[name] - cpu0[name]) / (t1 - t0):6.1f} %")
        compared = (rig.status() or final or {}).get("totals", {}).get("rewrite", {}).get("compare", {})
        print(compare_line(compared))
        return 0 if c.completeness_pct >= 100.0 else 1
    finally:
        rig.close()
        lab.down()
        print(f"lab {prefix} torn down")


def run_postgres_demo(prefix: str = "tcl", duration: float = 30.0, clients: int = 8) -> int:
    """pgbench against a real PostgreSQL on the online host, replicated to one on the target."""
    from appliance.lab.postgres import PG_PORT, PgCluster

    lab = Lab(prefix)
    work = Path(tempfile.mkdtemp(prefix="tcpcopy-demo-pg-"))
    work.chmod(0o755)             # the postgres user reaches its data directory below
    history = "select count(*), coalesce(sum(delta), 0) from pgbench_history"
    clusters = [PgCluster(lab, host, work / f"pg-{host}") for host in ("online", "target")]
    rig = ReplicationRig(lab, work / "rig", port=PG_PORT)
    print(f"lab {prefix}: PostgreSQL on online {ADDR['online']}:5432 and target {ADDR['target']}:5432; "
          f"logs in {work}")
    try:
        lab.down()
        lab.up()
        for pg in clusters:
            pg.init()
            pg.start()
            pg.client("pgbench", "-i", "-s", "1", "-q", "postgres", from_host="online")
            pg.query("truncate pgbench_history", from_host="online")
        rig.start(services=False)
        online, target = clusters
        run = online.client("pgbench", "-c", str(clients), "-T", str(int(duration)), "-n", "postgres",
                            from_host="client", timeout=duration + 60)
        tps = next((line for line in run.stdout.splitlines() if line.startswith("tps")), "")
        expected, got = online.wait_same(target, history, limit=120)
        status = rig.fresh_status()
        rows, total = expected.split("|")
        print(f"pgbench -c {clients} -T {duration:.0f} against online: {tps}")
        print(f"pgbench_history online: {rows} rows, sum(delta) {total}")
        trows, ttotal = (got.split("|") + ["?"])[:2]
        print(f"pgbench_history target: {trows} rows, sum(delta) {ttotal}   "
              f"{'EQUAL' if got == expected else 'DIFFERENT'}")
        if status:
            rew = status["totals"]["rewrite"]
            print(f"sessions {rew.get('sessions_started', 0)} started, {rew.get('sessions_completed', 0)} completed; "
                  f"turns held for the target's answer {rew.get('turns_waited', 0)}, released by max lag "
                  f"{rew.get('turns_lagged', 0)}")
        return 0 if got == expected else 1
    finally:
        rig.close()
        for pg in clusters:
            pg.stop()
        lab.down()
        print(f"lab {prefix} torn down")
