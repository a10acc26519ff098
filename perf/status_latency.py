"""How fast `tcpcopyctl status` answers while the appliance is saturated.

    sudo .venv/bin/python perf/status_latency.py [--seconds 15]

Builds a lab (prefix tclperf), runs the replication rig under a flood of short connections plus
one fast pipelined keep-alive connection, and times status requests (the control round trip
only, as tcpcopyctl makes it) every 100 ms. Prints p50/p99/max and the workers' CPU meanwhile.
Tears the lab down at the end, also on failure.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.lab.netns import ADDR, Lab
from appliance.lab.rig import ReplicationRig
from appliance.tcpcopyctl.cli import call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()
    lab = Lab("tclperf")
    rig = ReplicationRig(lab, Path(tempfile.mkdtemp(prefix="tcpcopy-status-")))
    loads: list[subprocess.Popen] = []
    try:
        lab.down()
        lab.up()
        rig.start()
        base = [sys.executable, "-m", "appliance.lab.load", "--server", f"{ADDR['online']}:8080"]
        loads.append(lab.popen("client", base + ["paced", "--rate", "20000", "--duration", str(args.seconds)],
                               stdout=subprocess.DEVNULL))
        loads.append(lab.popen("client", base + ["--max-seconds", str(args.seconds), "burst", "--conns",
                                                 "1000000", "--concurrency", "50"], stdout=subprocess.DEVNULL))
        time.sleep(2.0)
        took = []
        end = time.monotonic() + args.seconds - 3
        busiest = 0.0
        while time.monotonic() < end:
            t0 = time.perf_counter()
            reply = call(rig.run_dir, "status", timeout=5.0)
            took.append((time.perf_counter() - t0) * 1000)
            if reply:
                busiest = max([busiest] + [ch["cpu_percent"] or 0 for ch in reply["data"]["children"]])
            time.sleep(0.1)
        took.sort()
        print(f"status requests: {len(took)}  p50 {statistics.median(took):.1f} ms  "
              f"p99 {took[int(len(took) * 0.99) - 1]:.1f} ms  max {took[-1]:.1f} ms  "
              f"(busiest child at {busiest:.0f}% of a core)")
    finally:
        for proc in loads:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        rig.close()
        lab.down()


if __name__ == "__main__":
    main()
