"""Fixtures for lab tests: a namespace lab per module, and services started inside it.

Every test that uses `lab` or `netns_capable` gets the `lab` marker (deselect with ``-m "not lab"``), and is
skipped with the reason when not running as root or when `ip`/`sysctl`/`ethtool`/`ping` are missing.
Everything a fixture creates (namespaces, processes) is removed at teardown, also when the test fails.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.lab.netns import Lab
from appliance.lab.postgres import PgCluster
from appliance.lab.rig import ReplicationRig
from tests.lab.support import Services, lab_unavailable_reason, unique_prefix

LAB_FIXTURES = {"lab", "lab_offloads_off", "netns_capable"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if LAB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="module")
def netns_capable() -> None:
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def lab(netns_capable: None) -> Iterator[Lab]:
    """A lab that is up for the whole module; always taken down, even when up() or a test fails."""
    built = Lab(unique_prefix())
    try:
        built.down()
        built.up()
        yield built
    finally:
        built.down()


@pytest.fixture(scope="module")
def lab_offloads_off(netns_capable: None) -> Iterator[Lab]:
    """Like `lab`, with tx/rx checksum, TSO, GSO and GRO off on every veth (as a production NIC
    without offloads: every packet at most one MTU)."""
    built = Lab(unique_prefix(variant=7))
    try:
        built.down()
        built.up(offloads=False)
        yield built
    finally:
        built.down()


@pytest.fixture
def services(lab: Lab, tmp_path: Path) -> Iterator[Services]:
    started = Services(lab, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


LoadRunner = Callable[..., tuple[int, dict[str, Any]]]


@pytest.fixture
def run_load(lab: Lab) -> LoadRunner:
    """run_load(host, server, *mode_args, timeout=60) -> (exit code, summary) of appliance.lab.load."""

    def runner(host: str, server: str, *mode_args: str, timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
        argv = [sys.executable, "-m", "appliance.lab.load", "--server", server, *mode_args]
        done = lab.run(host, argv, check=False, timeout=timeout)
        lines = done.stdout.strip().splitlines()
        if not lines:
            raise AssertionError(f"load printed nothing (exit {done.returncode}): {done.stderr[-2000:]}")
        return done.returncode, json.loads(lines[-1])

    return runner


@pytest.fixture
def rig_factory(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., ReplicationRig]]:
    """make(**kw) -> a ReplicationRig in this test's directory; every rig made is closed at the end."""
    rigs: list[ReplicationRig] = []

    def make(**kw: Any) -> ReplicationRig:
        rig = ReplicationRig(lab, tmp_path / f"rig{len(rigs)}", **kw)
        rigs.append(rig)
        make.last = rig  # type: ignore[attr-defined]
        return rig

    try:
        yield make
    finally:
        for rig in rigs:
            rig.close()


@pytest.fixture
def clusters(lab: Lab, tmp_path: Path) -> Iterator[tuple[PgCluster, PgCluster]]:
    """PostgreSQL on the online and the target host, each with pgbench's tables (scale 1), history empty."""
    online = PgCluster(lab, "online", Path("/tmp") / f"tcl-pg-online-{tmp_path.name}")
    target = PgCluster(lab, "target", Path("/tmp") / f"tcl-pg-target-{tmp_path.name}")
    try:
        for pg in (online, target):
            pg.init()
            pg.start()
            pg.client("pgbench", "-i", "-s", "1", "-q", "postgres", from_host="online")
            pg.query("truncate pgbench_history", from_host="online")
        yield online, target
    finally:
        online.stop()
        target.stop()
