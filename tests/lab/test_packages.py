"""The packages `make packages` builds.

The .debs are installed on this host (Debian 12) with dpkg -i, only if none of them is installed already,
and purged at the end even when a test fails (the tcpcopy user too, if the test created it). The installed
daemons replicate in the lab as systemd starts them: as the tcpcopy user with only the two capabilities.
The .rpms are inspected with rpm -qp (this host cannot install them).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.lab.rig import ReplicationRig
from tests.lab.packaging_support import PACKAGES, VERSION, deb, make, rpm
from tests.lab.support import replicate_as_user
from tests.lab.syscall_filter import calls_outside_filter, outside_filter_prefix

pytestmark = pytest.mark.packaging
VENV_BIN = "/opt/tcpcopy-py/bin"
USER = "tcpcopy"
CONTROL_GROUP = "tcpcopyctl"
CURVE = Path("/etc/tcpcopy/curve")
ENABLED = Path("/etc/systemd/system/multi-user.target.wants")
# as the units start them (User=tcpcopy, SupplementaryGroups=tcpcopyctl, AmbientCapabilities= and
# CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN, NoNewPrivileges=yes)
SYSTEMD_LIKE = ("setpriv", f"--reuid={USER}", f"--regid={USER}", f"--groups={CONTROL_GROUP}",
                "--inh-caps=+net_raw,+net_admin", "--ambient-caps=+net_raw,+net_admin",
                "--bounding-set=-all,+net_raw,+net_admin", "--no-new-privs")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def _installed(name: str) -> bool:
    done = _run("dpkg-query", "-W", "-f=${db:Status-Status}", name, check=False)
    return done.returncode == 0 and done.stdout.strip() not in ("", "not-installed")


def _user_exists() -> bool:
    try:
        pwd.getpwnam(USER)
        return True
    except KeyError:
        return False


def _group_exists() -> bool:
    try:
        grp.getgrnam(CONTROL_GROUP)
        return True
    except KeyError:
        return False


def _uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[2]) for line in f if line.startswith("Uid:"))


@pytest.fixture(scope="module")
def built() -> None:
    make("packages")


@pytest.fixture(scope="module")
def installed(built: None) -> Iterator[list[str]]:
    """The three .debs installed with dpkg -i; yields the files they own (dpkg -L). Purged at the end."""
    if shutil.which("dpkg") is None:
        pytest.skip("needs dpkg (Debian)")
    already = [name for name in PACKAGES if _installed(name)]
    if already:
        pytest.fail(f"{', '.join(already)} already installed on this host; this test installs and purges "
                    f"them itself: dpkg --purge {' '.join(PACKAGES)}")
    had_user, had_group = _user_exists(), _group_exists()
    try:
        _run("dpkg", "-i", *(str(deb(name)) for name in PACKAGES))
        yield _run("dpkg-query", "-L", *PACKAGES).stdout.split()
    finally:
        left = [name for name in PACKAGES if _installed(name)]
        if left:
            _run("dpkg", "--purge", *left, check=False)
        if not had_user and _user_exists():
            _run("deluser", "--system", "--quiet", USER, check=False)
        if not had_group and _group_exists():
            _run("delgroup", "--system", "--quiet", CONTROL_GROUP, check=False)


def test_deb_metadata(built):
    fields = _run("dpkg-deb", "-f", str(deb("tcpcopy-common")), "Package", "Version", "Depends").stdout
    assert f"Version: {VERSION}-1" in fields
    assert "Depends: python3.11, libpcap0.8, libc6 (>= 2.25), adduser" in fields
    online = _run("dpkg-deb", "-f", str(deb("tcpcopy-online")), "Depends").stdout
    assert f"tcpcopy-common (= {VERSION}-1)" in online
    info = _run("dpkg-deb", "-I", str(deb("tcpcopy-online")), "conffiles").stdout.split()
    assert info == ["/etc/tcpcopy/tcpcopy.toml"]


def test_installed_files_user_and_keys(installed):
    files = set(installed)
    for path in (f"{VENV_BIN}/tcpcopyd", f"{VENV_BIN}/interceptd", f"{VENV_BIN}/tcpcopyctl",
                 "/usr/bin/tcpcopyctl", "/usr/sbin/tcpcopyd", "/usr/sbin/interceptd",
                 "/lib/systemd/system/tcpcopyd.service", "/lib/systemd/system/interceptd.service",
                 "/etc/tcpcopy/tcpcopy.toml", "/etc/tcpcopy/intercept.toml", "/usr/share/doc/tcpcopy-py/README.md"):
        assert path in files and os.path.lexists(path), path
    # the venv names its final path only, and runs Debian's python3.11
    assert Path(f"{VENV_BIN}/tcpcopyd").read_text().startswith(f"#!{VENV_BIN}/python\n")
    assert os.path.realpath(f"{VENV_BIN}/python") == os.path.realpath("/usr/bin/python3.11")
    user = pwd.getpwnam(USER)
    assert user.pw_uid < 1000 and user.pw_shell.endswith("nologin")
    tcpcopy_gid = grp.getgrnam(USER).gr_gid
    for name in ("tcpcopyd", "interceptd"):
        secret = (CURVE / f"{name}.key_secret").stat()
        assert (secret.st_uid, secret.st_gid, stat.S_IMODE(secret.st_mode)) == (0, tcpcopy_gid, 0o640), name
        assert (CURVE / f"{name}.key").exists()
        # enabled, not started (there is no systemd here to start it anyway)
        assert os.readlink(ENABLED / f"{name}.service") == f"/lib/systemd/system/{name}.service"
    assert (CURVE / "authorized").is_dir()
    curve = CURVE.stat()
    assert (curve.st_uid, curve.st_gid, stat.S_IMODE(curve.st_mode)) == (0, tcpcopy_gid, 0o750)
    assert _group_exists()                       # for control_group; tcpcopyd.service grants it


def test_installed_commands(installed):
    # the packages ship the compiled hot path (mypyc), and say so
    assert _run("/usr/sbin/tcpcopyd", "--version").stdout.strip() == f"tcpcopyd {VERSION} (compiled (mypyc))"
    assert _run("/usr/sbin/interceptd", "--version").stdout.strip() == f"interceptd {VERSION} (compiled (mypyc))"
    empty = tempfile.mkdtemp(prefix="tcl-pkg-run-")
    try:
        status = _run("/usr/bin/tcpcopyctl", "--run-dir", empty, "status", check=False)
    finally:
        os.rmdir(empty)
    assert status.returncode == 3, status.stderr          # LSB: not running
    assert "not running" in status.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_installed_units_pass_systemd_analyze_verify(installed):
    done = _run("systemd-analyze", "verify", "/lib/systemd/system/tcpcopyd.service",
                "/lib/systemd/system/interceptd.service", check=False)
    assert done.returncode == 0, done.stderr


def test_installed_daemons_replicate_as_the_tcpcopy_user(installed, lab):
    base = Path(tempfile.mkdtemp(prefix="tcl-pkg-", dir="/tmp"))
    try:
        base.chmod(0o755)
        prefix = outside_filter_prefix(base)        # empty without strace: the filter is then not checked
        rig = ReplicationRig(lab, base / "rig", bindir=VENV_BIN, daemon_prefix=(*prefix, *SYSTEMD_LIKE),
                             tcpcopyd_args=("--config", "/etc/tcpcopy/tcpcopy.toml", "--control-group", CONTROL_GROUP),
                             intercept_args=("--config", "/etc/tcpcopy/intercept.toml"))
        user = pwd.getpwnam(USER)

        def uid_and_control_socket(pid: int) -> tuple[int, int, int]:
            ctl = os.stat(os.path.join(rig.run_dir, "ctl"))
            return _uid(pid), ctl.st_gid, stat.S_IMODE(ctl.st_mode)

        seen, v = replicate_as_user(rig, user.pw_uid, uid_and_control_socket)
        # control_group works under the unit: the daemon, not root, gave the group its socket
        assert set(seen.values()) == {(user.pw_uid, grp.getgrnam(CONTROL_GROUP).gr_gid, 0o660)}, seen
        assert v.comparison.identical == v.comparison.sessions_online == 105, v.comparison.summary()
        if prefix:
            assert calls_outside_filter(base) == {}   # nothing SystemCallFilter=@system-service would kill
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_reinstall_keeps_the_admins_config_keys_and_enablement(installed):
    conf = Path("/etc/tcpcopy/tcpcopy.toml")
    conf.write_text(conf.read_text() + "\n# edited by the admin\n")
    keys = {path: path.read_bytes() for path in CURVE.glob("*.key*")}
    _run("dpkg", "-i", *(str(deb(name)) for name in PACKAGES))      # postinst configure with $2 set
    assert conf.read_text().endswith("# edited by the admin\n")
    assert {path: path.read_bytes() for path in CURVE.glob("*.key*")} == keys
    assert (ENABLED / "tcpcopyd.service").is_symlink() and (ENABLED / "interceptd.service").is_symlink()


def test_purge_removes_everything_but_the_user(installed):
    _run("dpkg", "--purge", *PACKAGES)
    assert not any(_installed(name) for name in PACKAGES)
    shared = {"/etc", "/opt", "/usr", "/usr/bin", "/usr/sbin", "/usr/share", "/usr/share/doc", "/lib",
              "/lib/systemd", "/lib/systemd/system"}
    left = [path for path in installed if path not in shared and os.path.lexists(path)]
    assert left == []
    for path in ("/etc/tcpcopy", "/opt/tcpcopy-py", ENABLED / "tcpcopyd.service", ENABLED / "interceptd.service",
                 "/etc/systemd/system/tcpcopyd.service",
                 "/var/lib/systemd/deb-systemd-helper-enabled/tcpcopyd.service.dsh-also"):
        assert not os.path.lexists(path), path
    assert _user_exists()          # Debian keeps system users on purge; the fixture removes it


@pytest.mark.skipif(shutil.which("rpm") is None, reason="needs the rpm tool (make packaging-setup)")
def test_rpm_metadata_files_scripts_and_requirements(built):
    def q(name: str, *args: str) -> str:
        return _run("rpm", "-qp", *args, str(rpm(name))).stdout

    info = q("tcpcopy-online", "-i")
    for line in ("Name        : tcpcopy-online", f"Version     : {VERSION}", "Release     : 1",
                 "Architecture: x86_64", "License     : BSD-3-Clause"):
        assert line in info, info
    common = q("tcpcopy-common", "-l").split()
    assert {f"{VENV_BIN}/tcpcopyd", f"{VENV_BIN}/interceptd", f"{VENV_BIN}/python", "/usr/bin/tcpcopyctl",
            "/usr/share/doc/tcpcopy-py/README.md"} <= set(common)
    assert not any(path.startswith(("/lib/", "/usr/lib/systemd")) for path in common)
    # the three programs and their shared core, not the lab (a development and demo tool)
    assert any(path.endswith("/appliance/tcpcopyd/supervisor.py") for path in common)
    assert not any("/appliance/lab/" in path or path.endswith("/tcpcopy-lab") for path in common)
    for name, daemon, conf in (("tcpcopy-online", "tcpcopyd", "tcpcopy.toml"),
                               ("tcpcopy-intercept", "interceptd", "intercept.toml")):
        assert q(name, "-l").split() == sorted([f"/etc/tcpcopy/{conf}", f"/usr/lib/systemd/system/{daemon}.service",
                                                f"/usr/sbin/{daemon}", f"/usr/share/doc/{name}/copyright"])
        assert q(name, "-c").split() == [f"/etc/tcpcopy/{conf}"]          # %config(noreplace)
        scripts = q(name, "--scripts")
        assert f"keygen --force --dir /etc/tcpcopy/curve {daemon}" in scripts
        assert scripts.count("set -e") >= 3                              # post, preun, postun
        assert f"preset {daemon}.service" in scripts                      # enabled only by the presets
        assert f"disable --now {daemon}.service" in scripts
        assert f"try-restart {daemon}.service" in scripts
        assert f"tcpcopy-common = {VERSION}-1" in q(name, "-R").splitlines()
    scripts = q("tcpcopy-common", "--scripts")
    assert "useradd -r -g tcpcopy" in scripts and "groupadd -r tcpcopy" in scripts
    assert "groupadd -r tcpcopyctl" in scripts and scripts.count("set -e") >= 2
    requires = q("tcpcopy-common", "-R").splitlines()
    assert {"python3.11", "libpcap", "glibc >= 2.25", "shadow-utils"} <= set(requires)
