"""A Python HTTP/JSON service as the target: it stores exactly the orders the online one stored."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.lab.netns import ADDR
from appliance.lab.rig import ReplicationRig

pytestmark = pytest.mark.lab
PORT = 8090


def _orders(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_json_order_service_target_stores_what_online_stored(lab, tmp_path):
    stores = {host: tmp_path / f"{host}.orders" for host in ("online", "target")}
    services = {host: lab.popen(host, [sys.executable, "-m", "appliance.lab.jsonservice", "serve", "--bind",
                                       ADDR[host], "--port", str(PORT), "--store", str(path)],
                                stdout=subprocess.PIPE, text=True)
                for host, path in stores.items()}
    rig = ReplicationRig(lab, tmp_path / "rig", port=PORT)
    try:
        for proc in services.values():
            assert proc.stdout.readline().startswith("LISTENING")
        rig.start(services=False)
        done = lab.run("client", [sys.executable, "-m", "appliance.lab.jsonservice", "client", "--server",
                                  f"{ADDR['online']}:{PORT}", "--orders", "1000", "--conns", "20"], timeout=120)
        assert json.loads(done.stdout)["errors"] == 0
        online = _orders(stores["online"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_orders(stores["target"])) < len(online):
            time.sleep(0.2)
        assert len(online) == 1000
        target = _orders(stores["target"])
        key = lambda o: o["id"]  # noqa: E731
        assert sorted(target, key=key) == sorted(online, key=key)
        # connections replay side by side, so only each connection's own order is kept
        per_conn = 1000 // 20
        for conn in range(20):
            seq = [int(o["id"].split("-")[1]) for o in target if int(o["id"].split("-")[1]) // per_conn == conn]
            assert seq == sorted(seq)
        rewrite = rig.fresh_status()["totals"]["rewrite"]
        assert rewrite["sessions_completed"] == 20
    finally:
        rig.close()
        for proc in services.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
            proc.stdout.close()
