"""SYN flood of 1,000,000 distinct client (ip, port) with the target never answering.

    sudo .venv/bin/python perf/flood_memory.py [--count 1000000] [--max-sessions 100000]

Builds a lab (prefix tclflood), runs the rig with interceptd filtering on a port nobody answers
from, floods SYNs from the client, samples the rewrite workers' RSS every 0.5 s, and prints the
peak, the evictions and whether anything restarted. Tears the lab down at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.lab.netns import ADDR, Lab
from appliance.lab.rig import ReplicationRig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--max-sessions", type=int, default=100_000)
    args = ap.parse_args()
    lab = Lab("tclflood")
    rig = ReplicationRig(lab, Path(tempfile.mkdtemp(prefix="tcpcopy-flood-")),
                         tcpcopyd_args=("--max-sessions", str(args.max_sessions)))
    try:
        lab.down()
        lab.up()
        rig.start()
        flood = lab.popen("client", [sys.executable, "-m", "appliance.lab.flood", "--dst", f"{ADDR['online']}:8080",
                                     "--count", str(args.count)], stdout=subprocess.PIPE, text=True)
        peak = 0
        while flood.poll() is None:
            status = rig.status() or {"children": []}
            rss = sum(ch["rss_bytes"] or 0 for ch in status["children"] if ch["role"] == "rewrite")
            peak = max(peak, rss)
            time.sleep(0.5)
        sent = json.loads(flood.stdout.read())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:           # the workers drain their queues
            status = rig.fresh_status()
            f = status["funnel"]
            rss = sum(ch["rss_bytes"] or 0 for ch in status["children"] if ch["role"] == "rewrite")
            peak = max(peak, rss)
            if f["handed_to_workers"] + f["queue_drops_capture"] >= f["captured"]:
                break
        status = rig.fresh_status()
        rew = status["totals"]["rewrite"]
        cap = status["totals"]["capture"]
        print(f"SYNs sent {sent['sent']:,} at {sent['rate']:,}/s; captured {cap.get('captured', 0):,} "
              f"(kernel drops {cap.get('kernel_drops', 0):,}); sessions started {rew.get('sessions_started', 0):,}, "
              f"evicted {rew.get('sessions_evicted', 0):,}, handshake timeouts {rew.get('handshake_timeouts', 0):,}")
        print(f"peak RSS of the rewrite workers together: {peak / 2**20:.0f} MiB "
              f"(max {args.max_sessions:,} sessions each); restarts "
              f"{sum(ch['restarts'] for ch in status['children'])}")
    finally:
        rig.close()
        lab.down()


if __name__ == "__main__":
    main()
