"""Least privilege: started as root, both daemons run as a plain user with only CAP_NET_RAW and
CAP_NET_ADMIN, and still replicate. Uses a venv on Debian's python3 that the user can execute."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from appliance.lab.rig import ReplicationRig
from tests.lab.support import replicate_as_user

pytestmark = pytest.mark.lab
USER = "nobody"
KEPT = (1 << 12) | (1 << 13)
PROJECT = Path(__file__).resolve().parents[2]


def _uid_and_caps(pid: int) -> tuple[int, int]:
    uid = caps = -1
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                uid = int(line.split()[2])           # effective uid
            elif line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
    return uid, caps


# as systemd starts them from the units: already the user, with the two capabilities ambient
SYSTEMD_LIKE = ("setpriv", f"--reuid={USER}", "--regid=nogroup", "--clear-groups",
                "--inh-caps=+net_raw,+net_admin", "--ambient-caps=+net_raw,+net_admin")


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs Debian's python3 for the user's venv")
@pytest.mark.parametrize("how", ["drop", "systemd-like"])
def test_daemons_run_as_a_user_with_two_capabilities(lab, how):
    base = Path(tempfile.mkdtemp(prefix="tcl-priv-", dir="/tmp"))
    try:
        base.chmod(0o755)
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(base / "venv")], check=True)
        subprocess.run([str(base / "venv/bin/pip"), "install", "-q", str(PROJECT)], check=True, capture_output=True)
        if how == "drop":      # started as root, they drop to the user after opening their sockets
            kw = {"tcpcopyd_args": ("--user", USER), "intercept_args": ("--user", USER)}
        else:
            kw = {"daemon_prefix": SYSTEMD_LIKE}
        rig = ReplicationRig(lab, base / "rig", bindir=str(base / "venv/bin"), **kw)
        nobody = pwd.getpwnam(USER)
        seen, v = replicate_as_user(rig, nobody.pw_uid, _uid_and_caps)
        assert all(uid == nobody.pw_uid and caps == KEPT for uid, caps in seen.values()), seen
        assert v.comparison.identical == v.comparison.sessions_online == 105, v.comparison.summary()
    finally:
        shutil.rmtree(base, ignore_errors=True)
