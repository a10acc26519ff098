"""The privilege drop (appliance.host.privileges.drop_to), run as root in a subprocess: the process and
what it executes afterwards keep CAP_NET_RAW and CAP_NET_ADMIN only, in every set including the
bounding set, with no_new_privs set (issue 14)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from appliance.host.privileges import KEPT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the drop needs root")

DROP_THEN_REPORT = """
import subprocess, sys
from appliance.host.privileges import drop_to
drop_to("nobody")
print(open("/proc/self/status").read())
print("=== exec")
sys.stdout.flush()
subprocess.run(["/bin/cat", "/proc/self/status"], check=True)
"""


def _fields(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def test_dropped_process_and_its_children_have_no_new_privs_and_two_capabilities():
    done = subprocess.run([sys.executable, "-c", DROP_THEN_REPORT], capture_output=True, text=True, timeout=30,
                          check=False, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    assert done.returncode == 0, done.stderr
    own, child = (_fields(part) for part in done.stdout.split("=== exec"))
    for status in (own, child):
        assert int(status["Uid"].split()[0]) == 65534
        assert status["NoNewPrivs"].strip() == "1"
        for field in ("CapBnd", "CapEff", "CapPrm", "CapAmb"):
            assert int(status[field], 16) == KEPT, (field, status[field])
