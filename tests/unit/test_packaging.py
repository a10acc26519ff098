"""systemd integration: readiness notification, and units that systemd-analyze accepts."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.sdnotify import notify

UNITS = Path(__file__).resolve().parents[2] / "packaging" / "systemd"


def test_ready_notification_reaches_the_notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1")
        assert sock.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify("READY=1")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", ["tcpcopyd.service", "interceptd.service"])
def test_units_pass_systemd_analyze_verify(tmp_path, unit):
    # point ExecStart at this checkout's entry point, as the package's /opt/tcpcopy-py/bin would be
    text = (UNITS / unit).read_text().replace("/opt/tcpcopy-py/bin", str(Path(sys.executable).parent))
    (tmp_path / unit).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
