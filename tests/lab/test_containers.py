"""The container images (`make images`, installed from the .debs) replicate through the lab.

tcpcopyd and interceptd run in podman containers joined to the lab's namespaces (`--net=ns:`), with only
the capabilities NET_RAW and NET_ADMIN; the HTTP services and the load run as in the other lab tests. No podman
network is made (a bridge network would turn on the host's ip_forward). Containers are removed at the
end, also on failure; the images stay cached.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.lab.dockerhost import DockerHost
from appliance.lab.netns import Lab
from appliance.lab.rig import ReplicationRig
from tests.lab.packaging_support import VERSION, make

pytestmark = pytest.mark.packaging
IMAGES = {"tcpcopyd": f"localhost/tcpcopy-online:{VERSION}", "interceptd": f"localhost/tcpcopy-intercept:{VERSION}"}
INTERCEPT_PORT = 36524
LISTEN_TIMEOUT = 20.0


class PodmanRig(ReplicationRig):
    """A ReplicationRig whose tcpcopyd and interceptd are the images, run in the lab's namespaces.

    The rig's directory is mounted at the same path, so the keys, the run directory (tcpcopyctl's
    socket) and the flags the rig passes mean the same inside; the key directory is also mounted at
    /etc/tcpcopy/curve, the image's volume.
    """

    def __init__(self, lab: Lab, workdir: Path, **kw: Any) -> None:
        super().__init__(lab, workdir, bindir="/opt/tcpcopy-py/bin", **kw)
        self.containers: list[str] = []

    def _start(self, name: str, host: str, argv: list[str], ready: str | None = None) -> subprocess.Popen:
        if name not in IMAGES:
            return super()._start(name, host, argv, ready)
        container = f"{self.lab.prefix}-{name}"
        self.containers.append(container)
        # nothing but the two capabilities the units grant
        podman = ["podman", "run", "--rm", "--pull=never", "--name", container,
                  f"--net=ns:/run/netns/{self.lab.prefix}-{host}",
                  "--cap-drop=ALL", "--cap-add=NET_RAW", "--cap-add=NET_ADMIN",
                  "-v", f"{self.dir}:{self.dir}", "-v", f"{self.keys}:/etc/tcpcopy/curve", IMAGES[name], *argv]
        with open(self.dir / f"{name}.log", "w") as log:
            proc = subprocess.Popen(podman, stdout=log, stderr=log)
        self.procs[name] = proc
        return proc

    def start_interceptd(self) -> None:
        super().start_interceptd()
        # tcpcopyd's subscription must find interceptd listening (a container takes a moment)
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while time.monotonic() < deadline:
            done = subprocess.run(["ip", "netns", "exec", f"{self.lab.prefix}-{self.place.assistant_host}",
                                   "ss", "-Hltn", f"sport = :{INTERCEPT_PORT}"],
                                  check=False, capture_output=True, text=True)
            if done.stdout.strip():
                return
            if self.procs["interceptd"].poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"interceptd's container did not listen; see {self.dir / 'interceptd.log'}")

    def close(self) -> None:
        try:
            super().close()
        finally:
            for container in self.containers:
                subprocess.run(["podman", "rm", "--force", "--ignore", "--time", "5", container],
                               check=False, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def images() -> None:
    make("images")


def _replicate(rig: PodmanRig) -> None:
    try:
        rig.start()
        running = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], check=True, capture_output=True,
                                 text=True).stdout.split()
        assert set(rig.containers) <= set(running)
        # the image's tcpcopyctl, as an operator would ask it (README: podman exec CONTAINER tcpcopyctl status)
        status = subprocess.run(["podman", "exec", f"{rig.lab.prefix}-tcpcopyd", "tcpcopyctl", "--run-dir",
                                 rig.run_dir, "status"], check=False, capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stdout + status.stderr
        load = rig.load("mix", "--short", "100", "--keepalive", "5", "--per-conn", "10")
        v = rig.verdict(load, time.time())
    finally:
        rig.close()
    assert v.comparison.identical == v.comparison.sessions_online == 105, v.comparison.summary()
    assert v.status["totals"]["rewrite"]["responses_unmatched"] == 0
    gone = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], check=True, capture_output=True,
                          text=True).stdout.split()
    assert not set(rig.containers) & set(gone)


def test_images_replicate_on_the_online_and_assistant_hosts(images, lab, tmp_path):
    _replicate(PodmanRig(lab, tmp_path / "hosts"))


def test_images_replicate_behind_a_docker_host(images, lab, tmp_path):
    """The bridge-network deployment (appliance/lab/dockerhost.py, fixed routing): the target and the
    intercept image as containers behind a host that publishes their ports with DNAT."""
    dock = DockerHost(lab)
    try:
        dock.up("fixed")
        _replicate(PodmanRig(lab, tmp_path / "bridge", placement=dock.placement(),
                             intercept_filter=dock.intercept_filter("fixed")))
    finally:
        dock.down()
