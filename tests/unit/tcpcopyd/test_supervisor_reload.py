"""SIGHUP re-reads the configuration file: a bad file changes nothing and never stops the supervisor.

The Supervisor is built for real (its constructor only plans the children: no socket, no fork, no
root); its SIGHUP handler, `reload`, is called directly, as the loop would on the signal."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config.keys import ONLINE
from appliance.config.loader import load, online_config
from appliance.tcpcopyd import cli
from appliance.tcpcopyd.policy import LivePolicy
from appliance.tcpcopyd.supervisor import Supervisor

GOOD = ('[tcpcopyd]\ntransfer = "8080-198.18.0.3:8080"\nintercepts = ["198.18.0.4"]\nworkers = 1\n'
        'sample_percent = 100\nlog_level = "info"\n[security]\ninsecure = true\n')


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[tuple[Supervisor, Path, list[dict]]]:
    root_level = logging.getLogger().level            # set_runtime sets the root logger's level
    path = tmp_path / "tcpcopy.toml"
    path.write_text(GOOD)
    args = cli.build_parser().parse_args(["--config", str(path), "--run-dir", str(tmp_path / "run")])
    sup = Supervisor(online_config(load(ONLINE, str(path), args), str(path)), LivePolicy(),
                     reread=lambda: load(ONLINE, str(path), args))
    published: list[dict] = []
    sup._publish_runtime = lambda: published.append(dict(sup.runtime))   # no settings socket before run()
    yield sup, path, published
    logging.getLogger().setLevel(root_level)


def test_a_good_file_changes_the_live_settings(supervisor):
    sup, path, published = supervisor
    path.write_text(GOOD.replace("sample_percent = 100", "sample_percent = 25"))
    sup.reload()
    assert sup.runtime["sample_rate"] == 0.25 and published[-1]["sample_rate"] == 0.25


def _bad_inf(path: Path) -> None:
    path.write_text(GOOD.replace("workers = 1", "workers = inf")
                    .replace("sample_percent = 100", "sample_percent = 5"))


def _bad_nan(path: Path) -> None:
    path.write_text(GOOD.replace("sample_percent = 100", "sample_percent = nan"))


def _not_utf8(path: Path) -> None:
    path.write_bytes(GOOD.replace("sample_percent = 100", "sample_percent = 5").encode() + b"# \xff\xfe\n")


def _bad_value(path: Path) -> None:
    path.write_text(GOOD.replace("sample_percent = 100", "sample_percent = 5\ncopies = 0"))


def _wrong_type(path: Path) -> None:
    path.write_text(GOOD.replace("sample_percent = 100", "sample_percent = {a = 5}"))


def _not_toml(path: Path) -> None:
    path.write_text(GOOD + "[session\n")


def _vanished(path: Path) -> None:
    path.unlink()


def _a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _a_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _deeply_nested(path: Path) -> None:
    path.write_text(GOOD + "[session]\nmtu = " + "[" * 5000 + "]" * 5000 + "\n")


@pytest.mark.parametrize("spoil, reason", [
    (_bad_inf, "workers = inf"), (_bad_nan, "sample_percent = nan"), (_not_utf8, "not UTF-8"),
    (_bad_value, "copies = 0"), (_wrong_type, "sample_percent = {'a': 5}"), (_not_toml, "not valid TOML"),
    (_vanished, "cannot read"), (_a_directory, "not a regular file"), (_a_fifo, "not a regular file"),
    (_deeply_nested, "not valid TOML"),
])
def test_a_bad_file_keeps_the_running_settings_and_says_why(supervisor, caplog, spoil, reason):
    sup, path, published = supervisor
    before = dict(sup.runtime)
    spoil(path)
    with caplog.at_level(logging.WARNING, logger="appliance.tcpcopyd.supervisor"):
        sup.reload()                                   # the SIGHUP handler: must return, not raise
    assert sup.runtime == before and published == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    message = warnings[0].getMessage()
    assert "not reloaded" in message and "running settings kept" in message and reason in message, message
    assert str(path) in message
    # and the supervisor takes the next good file
    if path.is_dir():
        path.rmdir()
    elif path.exists():
        path.unlink()
    path.write_text(GOOD.replace("sample_percent = 100", "sample_percent = 50"))
    sup.reload()
    assert sup.runtime["sample_rate"] == 0.5


def test_a_child_in_backoff_is_started_when_due_not_at_the_next_tick(supervisor):
    """A crashed capture's downtime is traffic lost: the loop wakes for its retry, not 0.2 s later."""
    from appliance.tcpcopyd.lifecycle import ChildState
    from appliance.tcpcopyd.supervisor import LOOP_TICK
    sup, _, _ = supervisor
    assert sup._poll_timeout_ms(100.0) == int(LOOP_TICK * 1000)
    child = sup.children[0]
    child.life.state, child.life.retry_at = ChildState.BACKOFF, 100.03
    assert sup._poll_timeout_ms(100.0) == 30
    assert sup._poll_timeout_ms(100.5) == 1          # overdue: at once (never a 0 ms busy spin)
