"""1 % loss, 10 ms delay and 10 ms of jitter (so reordering) on the target's link: the kernel
here has no netem, so a relay in a namespace of its own plays the bad link."""

from __future__ import annotations

import time

import pytest

from appliance.lab.impair import BadLink
from appliance.lab.rig import ReplicationRig
from appliance.tcpcopyd.offline import NOT_COMPLETED

pytestmark = pytest.mark.lab


def test_loss_jitter_and_reordering_on_the_target_link(lab, tmp_path):
    link = BadLink(lab, loss=0.01, delay_ms=10, jitter_ms=10)
    rig = ReplicationRig(lab, tmp_path / "rig")
    try:
        link.splice()
        rig.start()
        load = rig.load("mix", "--short", "600", "--keepalive", "20", "--per-conn", "20", "--post-every", "4")
        assert load["errors"] == 0
        v = rig.verdict(load, time.time())
    finally:
        rig.close()
        counts = link.restore()
    c = v.comparison
    rewrite = v.status["totals"]["rewrite"]
    print(f"bad link {counts}: {c.identical}/{c.sessions_online} byte-exact, retransmits {rewrite['retransmits']}, "
          f"fast {rewrite['fast_retransmits']}, response gaps {rewrite['response_gaps']}")
    assert counts["dropped"] > 0 and counts["reordered"] > 0
    why = {k: v for k, v in rewrite.items() if k in NOT_COMPLETED and v}
    assert c.completeness_pct >= 99.9, f"{c.summary()}\nnot completed: {why}\nintercepts: {v.status['intercepts']}"
