"""The namespace lab itself: build, contract checks, CLI, and clean removal (also of half-built labs)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from appliance.lab.netns import ADDR, HOSTS, MAC, Lab, LabError, list_namespaces
from tests.lab.support import read_line, unique_prefix

STUBBORN_SCRIPT = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ignoring SIGTERM', flush=True)\n"
    "time.sleep(300)\n"
)


def ours(prefix: str) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(prefix + "-")]


def test_up_lab_passes_every_check(lab: Lab) -> None:
    checks = lab.check()
    failed = [(name, detail) for name, ok, detail in checks if not ok]
    assert failed == []
    names = {name for name, _, _ in checks}
    assert {"ping client->online", "ping online->target", "ping target->assistant", "assistant ip_forward=0",
            "client->target ping fails (answer goes via assistant)", "no default route"} <= names


def test_status_reports_namespaces_and_addresses(lab: Lab) -> None:
    status = lab.status(with_checks=False)
    assert status["state"] == "up"
    assert all(status["namespaces"].values())
    for host in HOSTS:
        assert f"eth0 {ADDR[host]}/24" in status["hosts"][host]["addresses"]
    neighbours = lab.run("client", ["ip", "neigh", "show", "dev", "eth0"]).stdout
    for host in ("online", "target", "assistant"):
        assert f"{ADDR[host]} lladdr {MAC[host]} PERMANENT" in neighbours


def test_no_namespace_has_a_route_out(lab: Lab) -> None:
    for host in HOSTS:
        outside = lab.run(host, ["ip", "route", "get", "192.0.2.1"], check=False)
        assert outside.returncode != 0, f"{host} has a route out: {outside.stdout}"


def test_cli_status_json_and_check(lab: Lab) -> None:
    cli = [sys.executable, "-m", "appliance.lab.cli"]
    status = subprocess.run([*cli, "status", "--prefix", lab.prefix, "--json", "--no-checks"],
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "up"
    check = subprocess.run([*cli, "check", "--prefix", lab.prefix],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    absent = subprocess.run([*cli, "status", "--prefix", unique_prefix(9), "--no-checks"],
                            capture_output=True, text=True, timeout=30)
    assert absent.returncode == 3


def test_up_with_offloads_off_and_down_kills_everything_inside(netns_capable: None) -> None:
    extra = Lab(unique_prefix(1))
    try:
        extra.up(offloads=False)
        for host_side, iface in (("online", "eth0"), ("br", "online")):
            features = extra.run(host_side, ["ethtool", "-k", iface]).stdout
            assert "tx-checksumming: off" in features
            assert "generic-receive-offload: off" in features
            assert "tcp-segmentation-offload: off" in features
        assert [name for name, ok, _ in extra.check() if not ok] == []
        polite = extra.popen("target", ["sleep", "300"])
        stubborn = extra.popen("client", [sys.executable, "-c", STUBBORN_SCRIPT],
                               stdout=subprocess.PIPE, text=True)
        assert read_line(stubborn, 10.0) == "ignoring SIGTERM"

        removed = extra.down(grace_seconds=0.5)

        assert sorted(removed) == sorted(extra.all_namespaces)
        assert polite.wait(5) == -signal.SIGTERM
        assert stubborn.wait(5) == -signal.SIGKILL
        assert ours(extra.prefix) == []
        assert extra.down() == []
    finally:
        extra.down()


def test_down_cleans_up_a_half_built_lab(netns_capable: None) -> None:
    crashed = Lab(unique_prefix(2))
    client_ns, bridge_ns = crashed.namespace("client"), crashed.bridge_namespace
    try:
        for ns in (client_ns, bridge_ns):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", client_ns, "link", "add", "eth0", "type", "veth",
                        "peer", "name", "client", "netns", bridge_ns], check=True)
        sleeper = crashed.popen("client", ["sleep", "300"])
        assert not crashed.exists()
        assert sorted(crashed.present()) == sorted([client_ns, bridge_ns])
        with pytest.raises(LabError, match="already"):
            crashed.up()
        assert sorted(crashed.present()) == sorted([client_ns, bridge_ns])

        removed = crashed.down()

        assert sorted(removed) == sorted([client_ns, bridge_ns])
        assert sleeper.wait(5) == -signal.SIGTERM
        assert ours(crashed.prefix) == []
        crashed.up()
        assert crashed.exists()
        crashed.down()
        assert ours(crashed.prefix) == []
    finally:
        crashed.down()


def test_prefix_is_validated() -> None:
    for bad in ("", "Tcl", "tcl-x", "../etc", "t" * 17):
        with pytest.raises(ValueError):
            Lab(bad)
