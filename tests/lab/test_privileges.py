"""Least privilege: started as root, both daemons run as a plain user with only CAP_NET_RAW and
CAP_NET_ADMIN (bounding set included, no_new_privs set), and still replicate. Uses a venv on Debian's
python3 that the user can execute.

Under strace (when installed) with a seccomp filter that stops only the system calls outside the
units' SystemCallFilter=@system-service, the same run shows that nothing the daemons do (raw
sockets, pcap, CPU pinning, setproctitle, prctl, capset, ZeroMQ) would be killed by the filter.
"""

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
from tests.lab.syscall_filter import calls_outside_filter, outside_filter_prefix

pytestmark = pytest.mark.lab
USER = "nobody"
KEPT = (1 << 12) | (1 << 13)
PROJECT = Path(__file__).resolve().parents[2]


def _uid_and_caps(pid: int) -> tuple[int, int, int, int]:
    """(effective uid, CapEff, CapBnd, NoNewPrivs) of a process."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value.split()
    return (int(fields["Uid"][1]), int(fields["CapEff"][0], 16), int(fields["CapBnd"][0], 16),
            int(fields["NoNewPrivs"][0]))


# as systemd starts them from the units: already the user, with the two capabilities ambient, the
# bounding set (CapabilityBoundingSet=) and no_new_privs (NoNewPrivileges=)
SYSTEMD_LIKE = ("setpriv", f"--reuid={USER}", "--regid=nogroup", "--clear-groups",
                "--inh-caps=+net_raw,+net_admin", "--ambient-caps=+net_raw,+net_admin",
                "--bounding-set=-all,+net_raw,+net_admin", "--no-new-privs")


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs Debian's python3 for the user's venv")
@pytest.mark.parametrize("how", ["drop", "systemd-like"])
def test_daemons_run_as_a_user_with_two_capabilities(lab, how):
    base = Path(tempfile.mkdtemp(prefix="tcl-priv-", dir="/tmp"))
    try:
        base.chmod(0o755)
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(base / "venv")], check=True)
        subprocess.run([str(base / "venv/bin/pip"), "install", "-q", str(PROJECT)], check=True, capture_output=True)
        prefix = outside_filter_prefix(base)
        traced = bool(prefix)
        if how == "drop":      # started as root, they drop to the user after opening their sockets
            kw = {"tcpcopyd_args": ("--user", USER), "intercept_args": ("--user", USER), "daemon_prefix": prefix}
        else:
            kw = {"daemon_prefix": (*prefix, *SYSTEMD_LIKE)}
        rig = ReplicationRig(lab, base / "rig", bindir=str(base / "venv/bin"), **kw)
        nobody = pwd.getpwnam(USER)
        seen, v = replicate_as_user(rig, nobody.pw_uid, _uid_and_caps)
        assert all(status == (nobody.pw_uid, KEPT, KEPT, 1) for status in seen.values()), seen
        assert v.comparison.identical == v.comparison.sessions_online == 105, v.comparison.summary()
        if traced:
            assert len(list(base.glob("outside-filter.*"))) >= 2 + 2 + 1      # daemons and children traced
            assert calls_outside_filter(base) == {}
    finally:
        shutil.rmtree(base, ignore_errors=True)
