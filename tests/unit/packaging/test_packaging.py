"""systemd integration: readiness notification, and units that systemd-analyze accepts."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance.host.sdnotify import notify

UNITS = Path(__file__).resolve().parents[3] / "packaging" / "systemd"


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
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


# ---- packages and containers: the files under packaging/ agree with each other and with the code ----

PACKAGING = UNITS.parent
PROJECT = PACKAGING.parent
PREFIX = re.search(r"^prefix=(\S+)$", (PACKAGING / "build-venv.sh").read_text(), re.MULTILINE).group(1)
ROLES = {"online": ("tcpcopyd", "tcpcopy.toml"), "intercept": ("interceptd", "intercept.toml")}
COMPOSE = PACKAGING / "containers" / "compose"
COMPOSE_ENV = {"SERVICE_PORT": "8080", "TARGET_IP": "192.0.2.5", "TARGET_PORT": "18080",
               "ASSISTANT_IP": "10.89.240.4", "TARGET_IMAGE": "localhost/some-service"}


@pytest.mark.parametrize("role", ROLES)
def test_units_packages_and_config_name_the_same_paths(role):
    daemon, conf = ROLES[role]
    unit = (UNITS / f"{daemon}.service").read_text()
    nfpm = (PACKAGING / "nfpm" / f"{role}.yaml").read_text()
    exec_start = re.search(r"^ExecStart=(\S+) --config (\S+)", unit, re.MULTILINE)
    assert exec_start.group(1) == f"{PREFIX}/bin/{daemon}"
    assert exec_start.group(2) == f"/etc/tcpcopy/{conf}"
    # the unit goes where each distribution's systemd looks; the sample config is the conffile
    assert f"dst: /lib/systemd/system/{daemon}.service\n    packager: deb" in nfpm
    assert f"dst: /usr/lib/systemd/system/{daemon}.service\n    packager: rpm" in nfpm
    assert f"src: conf/{conf}\n    dst: /etc/tcpcopy/{conf}\n    type: config|noreplace" in nfpm
    assert f"dst: {PREFIX}\n" in (PACKAGING / "nfpm" / "common.yaml").read_text()


@pytest.mark.parametrize("role", ROLES)
def test_maintainer_scripts_make_the_keys_the_config_reads(role):
    daemon, conf = ROLES[role]
    default = re.search(r'^# secret_key = "(\S+)"$', (PROJECT / "conf" / conf).read_text(), re.MULTILINE).group(1)
    directory, name = default.rsplit("/", 1)
    keygen = f"tcpcopyctl keygen --force --dir {directory} {name.removesuffix('.key_secret')}"
    for script in (f"deb/{role}.postinst", f"rpm/{role}.post"):
        assert keygen in (PACKAGING / "scripts" / script).read_text(), script
    assert f"rm -f {directory}/{daemon}.key {default}" in (PACKAGING / "scripts" / f"deb/{role}.postrm").read_text()


def test_maintainer_scripts_are_valid_sh():
    for script in sorted((PACKAGING / "scripts").glob("*/*")):
        done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{script}: {done.stderr}"


def test_maintainer_scripts_start_with_a_shebang_and_stop_at_the_first_error():
    scripts = sorted((PACKAGING / "scripts").glob("*/*"))
    assert {s.parent.name for s in scripts} == {"deb", "rpm"} and len(scripts) == 16
    for script in scripts:
        lines = script.read_text().splitlines()
        assert lines[0] == "#!/bin/sh", script
        commands = [line.strip() for line in lines[1:] if line.strip() and not line.lstrip().startswith("#")]
        assert commands[0] == "set -e", f"{script}: the first command is {commands[0]!r}, not set -e"


def test_the_packages_make_the_control_group_the_unit_grants():
    unit = _unit("tcpcopyd.service")
    assert unit["Service"]["SupplementaryGroups"] == ["tcpcopyctl"]
    assert "addgroup --system --quiet tcpcopyctl" in (PACKAGING / "scripts/deb/common.postinst").read_text()
    assert "getent group tcpcopyctl >/dev/null || groupadd -r tcpcopyctl" in \
        (PACKAGING / "scripts/rpm/common.pre").read_text()


# ---- the units' hardening ----------------------------------------------------------------------
HARDENING = {"SystemCallFilter": "@system-service", "UMask": "0077", "ProtectProc": "invisible",
             "ProcSubset": "pid", "RestrictSUIDSGID": "yes", "ProtectKernelTunables": "yes",
             "LockPersonality": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
             "CapabilityBoundingSet": "CAP_NET_RAW CAP_NET_ADMIN", "SystemCallArchitectures": "native",
             "Restart": "on-failure"}
# `systemd-analyze security` overall exposure measured with systemd 252 (Debian 12): 0 best, 10 worst
EXPOSURE_MEASURED = {"tcpcopyd.service": 2.1, "interceptd.service": 2.0}


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            current.setdefault(key, []).append(value)
    return sections


def _seconds(value: str) -> float:
    return float(value.removesuffix("s"))


@pytest.mark.parametrize("unit", ["tcpcopyd.service", "interceptd.service"])
def test_units_carry_the_hardening(unit):
    service = _unit(unit)["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == [value], (key, service.get(key))


@pytest.mark.parametrize("unit", ["tcpcopyd.service", "interceptd.service"])
def test_a_crash_loop_pauses_and_never_reaches_the_start_limit(unit):
    sections = _unit(unit)
    interval = _seconds(sections["Unit"]["StartLimitIntervalSec"][0])
    burst = int(sections["Unit"]["StartLimitBurst"][0])
    pause = _seconds(sections["Service"]["RestartSec"][0])
    assert pause >= 5                                   # a pause, not systemd's 100 ms default
    assert interval > 0 and interval / pause + 1 < burst, "automatic restarts alone would hit the start limit"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", ["tcpcopyd.service", "interceptd.service"])
def test_units_exposure_stays_at_the_measured_level(tmp_path, unit):
    text = (UNITS / unit).read_text().replace("/opt/tcpcopy-py/bin", str(Path(sys.executable).parent))
    (tmp_path / unit).write_text(text)
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(tmp_path / unit)],
                          capture_output=True, text=True, check=False)
    overall = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert overall, done.stdout[-2000:] + done.stderr
    assert float(overall.group(1)) <= EXPOSURE_MEASURED[unit], done.stdout


def test_podman_conf_merge_keeps_settings_and_is_idempotent(tmp_path):
    sys.path.insert(0, str(PACKAGING / "containers"))
    try:
        import podman_conf
    finally:
        sys.path.pop(0)
    conf = tmp_path / "containers.conf"
    conf.write_text('[engine]\nruntime = "crun"\nnum_locks = 4096\n\n[network]\ndns_bind_port = 53\n')
    assert podman_conf.main(str(conf)) == 0
    merged = tomllib.loads(conf.read_text())
    assert merged["engine"] == {"runtime": "crun", "num_locks": 4096, "cgroup_manager": "cgroupfs",
                                "events_logger": "file"}
    assert merged["network"] == {"dns_bind_port": 53}
    assert merged["containers"]["default_ulimits"] == ["nofile=20000:20000", "nproc=32768:32768"]
    before = conf.read_bytes()
    assert podman_conf.main(str(conf)) == 0
    assert conf.read_bytes() == before


COMPOSE_TOOL = Path(sys.executable).parent / "podman-compose"


def _compose_config(name: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(COMPOSE_TOOL), "-f", str(COMPOSE / name), "config"], capture_output=True,
                          text=True, check=False, env={"PATH": os.environ["PATH"], **env}, cwd=COMPOSE)


@pytest.mark.skipif(not COMPOSE_TOOL.exists(), reason="podman-compose not installed (make packaging-setup)")
@pytest.mark.parametrize(("name", "expected"), [
    ("online-host.yaml", ["8080-192.0.2.5:18080", "- 10.89.240.4", "network_mode: host"]),
    ("assistant-host.yaml", ["tcp and src host 192.0.2.5 and src port 18080", "network_mode: host"]),
    ("bridge.yaml", ["18080:8080", "ipv4_address: 10.89.240.4", "tcp and src host 192.0.2.5 and src port 18080",
                     "net.ipv4.ip_forward: 0", "36524:36524"]),
])
def test_compose_files_render_from_the_four_variables(name, expected):
    done = _compose_config(name, COMPOSE_ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    for text in [*expected, "cap_drop:\n    - ALL\n"]:
        assert text in done.stdout, (text, done.stdout)
    missing = _compose_config(name, {k: v for k, v in COMPOSE_ENV.items() if k != "TARGET_IP"})
    assert missing.returncode != 0 and "TARGET_IP" in missing.stderr
