"""A SYN flood from many distinct clients, the target never answering: memory stays bounded,
the oldest sessions are evicted and counted, nothing crashes, and normal traffic still replays."""

from __future__ import annotations

import json
import sys
import time

import pytest

from appliance.lab.netns import ADDR
from appliance.lab.rig import ReplicationRig

pytestmark = pytest.mark.lab
MAX_SESSIONS = 5000


def test_syn_flood_keeps_memory_bounded(lab, tmp_path):
    rig = ReplicationRig(lab, tmp_path / "rig",
                         tcpcopyd_args=("--max-sessions", str(MAX_SESSIONS), "--handshake-timeout", "3"))
    try:
        rig.start()
        done = lab.run("client", [sys.executable, "-m", "appliance.lab.flood", "--dst", f"{ADDR['online']}:8080",
                                  "--count", "40000"], timeout=120)
        flood = json.loads(done.stdout)
        assert flood["sent"] == 40000

        def flood_handled(s: dict) -> bool:
            f = s["funnel"]
            return f["captured"] + f["kernel_drops"] >= 40000 and f["in_queues"] == 0

        rig.wait_until("every captured SYN of the flood handed to the workers", flood_handled)
        status = rig.fresh_status()
        rewrite = status["totals"]["rewrite"]
        workers = [ch for ch in status["children"] if ch["role"] == "rewrite"]
        print(f"flood {flood['rate']}/s: started {rewrite['sessions_started']}, evicted "
              f"{rewrite['sessions_evicted']}, rewrite RSS {[w['rss_bytes'] >> 20 for w in workers]} MiB")
        assert all(w["counters"]["sessions_tracked"] <= MAX_SESSIONS for w in workers)
        assert rewrite["sessions_evicted"] > 0
        assert all(w["rss_bytes"] < 200 << 20 for w in workers)
        assert all(ch["restarts"] == 0 for ch in status["children"])
        # the flood ends in handshake timeouts and evictions; real clients still replay
        rig.wait_until("the flood's sessions gone", lambda s: all(
            ch["counters"].get("sessions_active", 0) == 0 for ch in s["children"] if ch["role"] == "rewrite"))
        load = rig.load("mix", "--short", "100", "--keepalive", "5", "--per-conn", "10")
        v = rig.verdict(load, time.time())
        assert v.comparison.identical == v.comparison.sessions_online == 105, v.comparison.summary()
    finally:
        rig.close()
