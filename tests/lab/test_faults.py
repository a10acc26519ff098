"""Faults survived, in the lab under load: each process role killed, interceptd restarted, the target
service restarted, the target's link down, packet loss on it, raw sends refused by the kernel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.lab.netns import ADDR, Lab
from appliance.lab.records import load_sessions
from appliance.lab.rig import ReplicationRig
from tests.lab.support import HeldConnections

pytestmark = pytest.mark.lab

MIX = ("mix", "--short", "1500", "--keepalive", "30", "--per-conn", "40", "--concurrency", "20")
# a process restart takes ~0.5 s: the load runs long enough to leave most sessions outside it
LONG_MIX = ("mix", "--short", "5000", "--keepalive", "30", "--per-conn", "80", "--concurrency", "8")


@pytest.fixture
def rig(lab: Lab, tmp_path: Path) -> Iterator[ReplicationRig]:
    made = ReplicationRig(lab, tmp_path / "rig")
    try:
        made.start()
        yield made
    finally:
        made.close()


def _load_in_background(lab: Lab, *args: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "appliance.lab.load", "--server", f"{ADDR['online']}:8080", *args]
    return lab.popen("client", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _load_under_way(rig: ReplicationRig, sessions: int = 200) -> None:
    """The fault lands on a running load: wait until the target has this many sessions."""
    rig.wait_until(f"{sessions} sessions established on the target",
                   lambda s: s["totals"]["rewrite"]["sessions_established"] >= sessions)


def _finish(load: subprocess.Popen) -> dict:
    out, _ = load.communicate(timeout=180)
    return json.loads(out.strip().splitlines()[-1])


def _child(status: dict, role: str) -> dict:
    return next(ch for ch in status["children"] if ch["role"] == role)


def _after_fault_all_complete(rig: ReplicationRig) -> None:
    """New sessions after a fault replay byte-exact, every one."""
    started = time.time()
    rig.load("--seed", "9", "mix", "--short", "100", "--keepalive", "5", "--per-conn", "10")
    v = rig.verdict({}, time.time(), settle_limit=FAULT_SETTLE)

    def fresh(path: Path) -> dict[str, str]:
        recs = (json.loads(line) for line in path.read_text().splitlines())
        return {r["peer"]: r["sha256"] for r in recs if not r.get("open") and r["opened"] >= started}

    online = fresh(rig.online_rec)
    assert len(online) == 105
    missing = _not_on_target(online, rig)
    assert not missing, f"{len(missing)} sessions after the fault did not replay: {missing[:3]}"
    assert v.status["supervisor"]["state"] == "running"


REPLAY_LAG = 2.0      # seconds: max_lag (1 s), close_quiet (0.2 s), the capture -> worker queue
FAULT_SETTLE = 15.0   # seconds for the target to finish after a fault's load


def _not_on_target(online: dict[str, str], rig: ReplicationRig) -> list[str]:
    """The online sessions (peer -> digest) of which the target recorded no copy: the same bytes from
    the same client address (a connection may come from a spare port when the client reused its own)."""
    received = (r for group in load_sessions(rig.target_rec).values() for r in group)
    have = Counter((r["peer"].rpartition(":")[0], r["sha256"]) for r in received)
    missing = []
    for peer, sha in online.items():
        key = (peer.rpartition(":")[0], sha)
        if have[key] > 0:
            have[key] -= 1
        else:
            missing.append(peer)
    return missing


def _sessions_outside(path: Path, start: float, end: float) -> dict[str, str]:
    """peer -> digest of the sessions that closed before `start` or opened after `end`."""
    recs = (json.loads(line) for line in path.read_text().splitlines())
    return {r["peer"]: r["sha256"] for r in recs
            if not r.get("open") and (r["closed"] < start or r["opened"] > end)}


@pytest.mark.parametrize("role", ["capture", "rewrite"])
def test_kill_each_role_under_load(rig, lab, role):
    """Only what the dead process held is lost: sessions that were open while it was down may be
    (a capture's ring and its restart time, a worker's sessions); every other session replays."""
    load = _load_in_background(lab, *LONG_MIX)
    _load_under_way(rig)
    victim = _child(rig.status(), role)
    killed = time.time()
    os.kill(victim["pid"], signal.SIGKILL)
    rig.wait_until(f"the {role} back and beating", lambda s: _child(s, role)["restarts"] == 1
                   and _child(s, role)["pid"] != victim["pid"] and _child(s, role)["heartbeat_age"] is not None)
    back = time.time()
    assert _finish(load)["errors"] == 0
    # a keep-alive session whose FIN the dead capture missed stays open on the target (keepalive_timeout)
    v = rig.verdict({}, time.time(), settle_limit=FAULT_SETTLE)
    c = v.comparison
    # the replay runs behind the online server (a held turn up to max_lag, a close until the target is
    # quiet): a session that closed online shortly before the kill may still have been in the dead process
    online = _sessions_outside(rig.online_rec, killed - REPLAY_LAG, back)
    missing = _not_on_target(online, rig)
    print(f"kill -9 {role}: down {back - killed:.2f} s; {c.identical}/{c.sessions_online} sessions byte-exact, "
          f"{len(online) - len(missing)}/{len(online)} of those not open while it was down; "
          f"lost in restarts {v.status['funnel']['sessions_lost_in_restarts']}")
    assert len(online) >= c.sessions_online // 4, "the fault should land inside the load, not swallow it"
    assert not missing, f"{len(missing)} sessions that were not open during the fault did not replay: {missing[:3]}"
    rig.start_services()                                # verdict stopped them; the appliance is still up
    _after_fault_all_complete(rig)


def test_interceptd_restarted_under_load(rig, lab):
    load = _load_in_background(lab, *MIX)
    _load_under_way(rig)
    rig.restart_interceptd(down_for=1.0)
    assert _finish(load)["errors"] == 0
    v = rig.verdict({}, time.time())
    c = v.comparison
    print(f"interceptd restart: {c.identical}/{c.sessions_online} sessions byte-exact")
    assert c.completeness_pct >= 95.0, c.summary()
    rig.start_services()
    _after_fault_all_complete(rig)


def test_target_service_restarted(rig, lab):
    """Keep-alive connections outlive a restart of the target service: the target resets them at
    their next request, and each restarts on a new connection from that turn."""
    with HeldConnections(lab, 20, 30) as held:           # one request answered on each
        rig.wait_for_target_connections(20)
        rig.stop("target-http")
        rig.target_rec.rename(rig.target_rec.with_suffix(".before"))
        rig.start_services(("target",))
        assert held.finish()["errors"] == 0
    status = rig.fresh_status()
    rewrite = status["totals"]["rewrite"]
    print(f"target restart: reset by target {rewrite['sessions_reset_by_target']}, restarts {rewrite['restarts']}")
    assert rewrite["sessions_reset_by_target"] >= 1 and rewrite["restarts"] >= 1
    _after_fault_all_complete(rig)


def test_target_link_down_for_two_seconds(rig, lab):
    load = _load_in_background(lab, *MIX)
    _load_under_way(rig)
    lab.run("br", ["ip", "link", "set", "target", "down"])
    time.sleep(2.0)                                      # the fault's length, not a wait
    lab.run("br", ["ip", "link", "set", "target", "up"])
    assert _finish(load)["errors"] == 0
    v = rig.verdict({}, time.time())
    c = v.comparison
    rewrite = v.status["totals"]["rewrite"]
    print(f"target link down 2 s: {c.identical}/{c.sessions_online} byte-exact, retransmits "
          f"{rewrite['retransmits']}, handshake timeouts {rewrite['handshake_timeouts']}")
    assert c.completeness_pct >= 99.0, c.summary()
    rig.start_services()
    _after_fault_all_complete(rig)


def test_one_percent_loss_on_the_target(rig, lab):
    rules = [["iptables", "-A", chain, "-p", "tcp", "-m", "statistic", "--mode", "random", "--probability",
              "0.01", "-j", "DROP"] for chain in ("INPUT", "OUTPUT")]
    for rule in rules:
        lab.run("target", rule)
    try:
        load = _load_in_background(lab, *MIX)
        assert _finish(load)["errors"] == 0
        v = rig.verdict({}, time.time())
    finally:
        for rule in rules:
            lab.run("target", ["iptables", "-D", *rule[2:]], check=False)
    c = v.comparison
    rewrite = v.status["totals"]["rewrite"]
    print(f"1 % loss: {c.identical}/{c.sessions_online} byte-exact, retransmits {rewrite['retransmits']}")
    assert rewrite["retransmits"] > 0
    assert c.completeness_pct >= 99.9, c.summary()


def test_raw_sends_refused_are_counted_and_the_daemon_stays_up(rig, lab):
    rule = ["OUTPUT", "-d", ADDR["target"], "-p", "tcp", "--dport", "8080", "-j", "DROP"]
    lab.run("online", ["iptables", "-A", *rule])
    try:
        rig.load("mix", "--short", "50", "--keepalive", "0")
        status = rig.wait_until("50 sends refused with EPERM",
                                lambda s: s["totals"]["rewrite"]["send_errors"].get("EPERM", 0) >= 50)
    finally:
        lab.run("online", ["iptables", "-D", *rule], check=False)
    errors = status["totals"]["rewrite"]["send_errors"]
    assert errors.get("EPERM", 0) >= 50, errors
    assert all(ch["restarts"] == 0 for ch in status["children"])
    _after_fault_all_complete(rig)
