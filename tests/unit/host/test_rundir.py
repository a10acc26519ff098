"""tcpcopyd's run directory and control socket (appliance.host.rundir) and control_group (issue 14):
a run_dir that is a symlink, someone else's or writable by others is refused with exit 78;
nothing follows a symlink planted in it; control_group is checked when the configuration is read."""

from __future__ import annotations

import grp
import os
import socket
import stat
from pathlib import Path

import pytest

from appliance.config.keys import ONLINE
from appliance.config.loader import load, online_config
from appliance.core.errors import EXIT_CONFIG, ConfigError
from appliance.host import rundir
from appliance.tcpcopyd import cli, supervisor
from appliance.tcpcopyd.policy import LivePolicy

ROOT = os.geteuid() == 0
REQUIRED = ["-x", "198.18.0.2:8080-198.18.0.3:8080", "-s", "198.18.0.4"]
NOGROUP = grp.getgrgid(65534).gr_name if 65534 in {g.gr_gid for g in grp.getgrall()} else None


def _config(*flags: str):
    args = cli.build_parser().parse_args([*REQUIRED, "--insecure", "true", *flags])
    return online_config(load(ONLINE, None, args), "test")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_missing_run_dir_is_made_private(tmp_path):
    rundir.prepare(str(tmp_path / "a" / "run"))
    assert _mode(tmp_path / "a" / "run") == 0o700


@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755])
def test_an_own_run_dir_nobody_else_can_write_is_used(tmp_path, mode):
    (tmp_path / "run").mkdir()
    (tmp_path / "run").chmod(mode)
    rundir.prepare(str(tmp_path / "run"))


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o1777, 0o702])
def test_a_run_dir_writable_by_others_is_refused(tmp_path, mode):
    (tmp_path / "run").mkdir()
    (tmp_path / "run").chmod(mode)
    with pytest.raises(ConfigError, match="writable by group or others"):
        rundir.prepare(str(tmp_path / "run"))


def test_a_symlinked_run_dir_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="is a symlink"):
        rundir.prepare(str(tmp_path / "run"))


@pytest.mark.skipif(not ROOT, reason="chown to another user needs root")
def test_a_run_dir_of_another_user_is_refused_unless_it_is_the_configured_users(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    os.chown(run, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to uid 65534"):
        rundir.prepare(str(run))
    rundir.prepare(str(run), user="nobody")          # root about to drop to nobody: its own, from a last run


def test_the_supervisor_stops_with_exit_78_before_binding(tmp_path, monkeypatch, caplog):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(tmp_path / "elsewhere")

    def no_zmq() -> None:
        raise AssertionError("bound sockets in a refused run_dir")

    monkeypatch.setattr(supervisor.zmq, "Context", no_zmq)
    sup = supervisor.Supervisor(_config("--run-dir", str(tmp_path / "run")), LivePolicy())
    assert sup.run() == EXIT_CONFIG
    assert "is a symlink" in caplog.text


def test_permission_changes_never_follow_a_planted_symlink(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("x")
    victim.chmod(0o644)
    (run / "ctl").symlink_to(victim)
    with pytest.raises(OSError, match="not the socket"):
        rundir.protect_control_socket(str(run), "")
    assert _mode(victim) == 0o644


@pytest.mark.skipif(not ROOT or NOGROUP is None, reason="chown needs root and a group 65534")
def test_control_socket_for_a_group_and_the_hand_over(tmp_path):
    run = tmp_path / "run"
    rundir.prepare(str(run))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(run / "ctl"))
        rundir.protect_control_socket(str(run), NOGROUP)
        assert (_mode(run), run.stat().st_gid) == (0o750, 65534)
        assert (_mode(run / "ctl"), (run / "ctl").lstat().st_gid) == (0o660, 65534)
        victim = tmp_path / "victim"
        victim.write_text("x")
        (run / "stats").symlink_to(victim)
        (run / "runtime").symlink_to(victim)
        rundir.hand_over(str(run), "nobody")
        assert run.stat().st_uid == (run / "ctl").lstat().st_uid == (run / "stats").lstat().st_uid == 65534
        assert victim.stat().st_uid == 0


# ---- control_group, checked with the rest of the configuration -----------------------------------
def test_an_unknown_control_group_is_a_config_error():
    with pytest.raises(ConfigError, match="control_group = 'no-such-group-14': no such group"):
        _config("--control-group", "no-such-group-14")


@pytest.mark.skipif(NOGROUP is None, reason="needs a group 65534")
def test_a_plain_user_needs_to_be_in_the_control_group(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    monkeypatch.setattr(os, "getegid", lambda: 65533)
    monkeypatch.setattr(os, "getgroups", lambda: [])
    with pytest.raises(ConfigError, match="not in that group.*SupplementaryGroups"):
        _config("--control-group", NOGROUP)
    monkeypatch.setattr(os, "getgroups", lambda: [65533, 65534])     # as the unit's SupplementaryGroups= does
    assert _config("--control-group", NOGROUP).control_group == NOGROUP


def test_tcpcopyd_exits_78_on_an_unknown_control_group(capsys):
    assert cli.main([*REQUIRED, "--insecure", "true", "--control-group", "no-such-group-14"]) == EXIT_CONFIG
    assert "no such group" in capsys.readouterr().err
