"""Traffic shaping in the lab: copies (-n), sampling (-r), a client pool (-c), fan-out to two targets."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from appliance.lab.netns import ADDR
from appliance.lab.records import session_digests

pytestmark = pytest.mark.lab


def _records(path: Path) -> list[dict]:
    return [r for r in (json.loads(line) for line in path.read_text().splitlines()) if not r.get("open")]


def _settle(path: Path, expected: int, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists() and len(_records(path)) >= expected:
            return
        time.sleep(0.2)


def test_five_copies_reach_the_target_each_from_its_own_client_tuple(rig_factory):
    rig = rig_factory(tcpcopyd_args=("-n", "5"))
    rig.start()
    load = rig.load("mix", "--short", "200", "--keepalive", "10", "--per-conn", "10", "--post-every", "3")
    assert load["errors"] == 0
    online = session_digests(rig.online_rec, with_peer=False)
    _settle(rig.target_rec, 5 * sum(online.values()))
    target = session_digests(rig.target_rec, with_peer=False)
    assert sum(online.values()) == 210
    assert target == Counter({sha: 5 * n for sha, n in online.items()})
    peers = [r["peer"] for r in _records(rig.target_rec)]
    assert len(peers) == len(set(peers)) == 1050, "two copies shared a client (ip, port)"


def test_sampling_a_quarter_of_the_sessions(rig_factory):
    rig = rig_factory(tcpcopyd_args=("-r", "25"))
    rig.start()
    rig.load("burst", "--conns", "2000", "--concurrency", "20")
    status = rig.fresh_status()
    started = status["totals"]["rewrite"]["sessions_started"]
    _settle(rig.target_rec, started)
    replayed = len(_records(rig.target_rec))
    assert replayed == started
    assert 400 <= replayed <= 600, f"{replayed} of 2000 sessions at -r 25"


def test_client_pool_rewrites_addresses_the_target_routes_back(rig_factory, lab):
    lab.run("target", ["ip", "route", "add", "198.18.1.0/24", "via", ADDR["assistant"]])
    try:
        rig = rig_factory(tcpcopyd_args=("-c", "198.18.1.0/28"))
        rig.start()
        rig.load("mix", "--short", "100", "--keepalive", "5", "--per-conn", "10")
        online = session_digests(rig.online_rec, with_peer=False)
        _settle(rig.target_rec, sum(online.values()))
        assert session_digests(rig.target_rec, with_peer=False) == online
        ips = {r["peer"].rsplit(":", 1)[0] for r in _records(rig.target_rec)}
        assert ips and all(ip.startswith("198.18.1.") for ip in ips)
        assert len(ips) > 1
    finally:
        lab.run("target", ["ip", "route", "del", "198.18.1.0/24"], check=False)


def test_one_online_port_fanned_out_to_two_targets(rig_factory, lab, tmp_path):
    second_rec = tmp_path / "target2.rec"
    second = lab.popen("target", [sys.executable, "-m", "appliance.lab.httpservice", "--bind", ADDR["target"],
                                  "--port", "8081", "--record", str(second_rec)], stdout=subprocess.PIPE, text=True)
    try:
        assert second.stdout.readline().startswith("LISTENING")
        both = f"{ADDR['online']}:8080-{ADDR['target']}:8080,{ADDR['online']}:8080-{ADDR['target']}:8081"
        rig = rig_factory(tcpcopyd_args=("-x", both),
                   intercept_filter=f"tcp and src host {ADDR['target']} and (src port 8080 or src port 8081)")
        rig.start()
        rig.load("mix", "--short", "100", "--keepalive", "5", "--per-conn", "10", "--post-every", "2")
        v = rig.verdict({}, time.time())
        assert v.comparison.identical == v.comparison.sessions_online == 105, v.comparison.summary()
        _settle(second_rec, 105)
        second.terminate()
        second.wait(10)
        assert session_digests(second_rec, with_peer=False) == session_digests(rig.online_rec, with_peer=False)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
        if second.stdout:
            second.stdout.close()
