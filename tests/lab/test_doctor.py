"""tcpcopyctl doctor in the lab: a healthy lab passes; each misconfiguration is named with its fix."""

from __future__ import annotations

import json
import time

import pytest

from appliance.lab.netns import ADDR, Lab
from appliance.lab.rig import ReplicationRig, _bin

pytestmark = pytest.mark.lab


def doctor(lab: Lab, role: str, *extra: str) -> tuple[int, list[dict]]:
    done = lab.run(role, [_bin("tcpcopyctl"), "doctor", "--role", role, "--json", *extra], check=False)
    return done.returncode, json.loads(done.stdout)


def problems(findings: list[dict]) -> dict[str, dict]:
    return {f["check"]: f for f in findings if not f["ok"]}


def test_healthy_lab_passes_every_role(lab, tmp_path):
    rig = ReplicationRig(lab, tmp_path / "rig")
    try:
        rig.start_interceptd()
        deadline = time.monotonic() + 10
        while doctor(lab, "online")[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.2)                      # interceptd binds its port
        for role in ("online", "target", "assistant"):
            code, findings = doctor(lab, role)
            assert code == 0 and not problems(findings), (role, problems(findings))
    finally:
        rig.close()


def test_misconfigurations_are_named_with_their_fix(lab):
    # no interceptd running: the online host cannot reach it
    code, findings = doctor(lab, "online")
    found = problems(findings)
    assert code == 1 and "cannot connect" in found["interceptd 198.18.0.4:36524"]["detail"]
    assert "start interceptd" in found["interceptd 198.18.0.4:36524"]["fix"]
    # the target's route for the clients removed: answers would go straight to the client
    lab.run("target", ["ip", "route", "del", f"{ADDR['client']}/32"])
    try:
        code, findings = doctor(lab, "target")
        f = problems(findings)["route to the clients"]
        assert code == 1 and "not via the assistant" in f["detail"]
        assert f["fix"] == f"ip route add {ADDR['client']} via {ADDR['assistant']}"
    finally:
        lab.run("target", ["ip", "route", "add", f"{ADDR['client']}/32", "via", ADDR["assistant"]])
    # strict rp_filter on the target
    lab.run("target", ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"])
    try:
        code, findings = doctor(lab, "target")
        assert "rp_filter=2" in problems(findings)["rp_filter"]["fix"]
    finally:
        lab.run("target", ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])
    # the assistant forwards: answers would leak to the real client
    lab.run("assistant", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    try:
        code, findings = doctor(lab, "assistant")
        assert problems(findings)["ip_forward"]["fix"] == "sysctl -w net.ipv4.ip_forward=0"
    finally:
        lab.run("assistant", ["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    # no privileges: capture and raw sends impossible
    done = lab.run("online", ["setpriv", "--bounding-set=-net_raw,-net_admin", "--", _bin("tcpcopyctl"), "doctor",
                              "--role", "online", "--json"], check=False)
    assert "setcap" in problems(json.loads(done.stdout))["capabilities"]["fix"]
    # and everything healthy again
    code, _ = doctor(lab, "target")
    assert code == 0
    code, _ = doctor(lab, "assistant")
    assert code == 0


def test_doctor_prints_a_readable_report(lab):
    done = lab.run("assistant", [_bin("tcpcopyctl"), "doctor", "--role", "assistant"], check=False)
    assert done.returncode == 0 and "ok       ip_forward: off" in done.stdout and "0 problem(s)" in done.stdout
