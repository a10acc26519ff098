"""Configuration: defaults <- TOML file <- flags; errors name the source, the key and the value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance import cli, intercept_cli
from appliance.config import load, online_config
from appliance.errors import EXIT_CONFIG, ConfigError
from appliance.settings import INTERCEPT, ONLINE, auto_workers, render_sample

CONF = Path(__file__).resolve().parents[2] / "conf"
REQUIRED = ["-x", "198.18.0.2:8080-198.18.0.3:8080", "-s", "198.18.0.4"]


def parse(argv: list[str]):
    return cli.build_parser().parse_args(argv)


def test_shipped_samples_list_every_key_and_match_the_table():
    online = (CONF / "tcpcopy.toml").read_text()
    intercept = (CONF / "intercept.toml").read_text()
    for s in ONLINE:
        assert f"{s.key} = " in online, s.name
    for s in INTERCEPT:
        assert f"{s.key} = " in intercept, s.name
    assert online == render_sample(ONLINE, "tcpcopyd configuration (online host).", {
        "tcpcopyd.transfer": "198.18.0.2:8080-198.18.0.3:8080", "tcpcopyd.intercepts": ["198.18.0.4"]})
    assert intercept == render_sample(INTERCEPT, "interceptd configuration (assistant host).", {
        "interceptd.filter": "tcp and src host 198.18.0.3 and src port 8080"})


def test_shipped_sample_loads_with_defaults():
    values = load(ONLINE, str(CONF / "tcpcopy.toml"), parse(["--insecure", "true"]))
    config = online_config(values, "x")
    assert config.workers == auto_workers() and config.engine.max_lag == 1.0 and config.sample_rate == 1.0
    assert "dst host 198.18.0.2" in config.bpf


def test_workers_auto_is_half_the_cpus_and_a_number_overrides_it(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)))
    assert auto_workers() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    assert auto_workers() == 6
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(256)))
    assert auto_workers() == 16
    values = load(ONLINE, None, parse([*REQUIRED, "--insecure", "true", "-w", "3"]))
    assert online_config(values, "x").workers == 3
    values = load(ONLINE, None, parse([*REQUIRED, "--insecure", "true", "-w", "auto"]))
    assert online_config(values, "x").workers == 16


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[tcpcopyd]\ntransfer = "8080-198.18.0.3:8080"\nintercepts = ["198.18.0.4"]\n'
                    'workers = 3\n[session]\nmax_lag = 2.5\n')
    values = load(ONLINE, str(path), parse(["-w", "5"]))
    assert values["tcpcopyd.workers"] == 5 and values["session.max_lag"] == 2.5


@pytest.mark.parametrize("body, words", [
    ('workers = 0', ["t.toml", "workers", "0", "1-64"]),
    ('workers = "two"', ["t.toml", "workers", "'two'", "whole number"]),
    ('sample_percent = 150', ["t.toml", "sample_percent", "150", "0-100"]),
    ('client_pool = ["198.18.1.x", "nonsense"]', ["client_pool", "'nonsense'", "a.b.c.x"]),
    ('pin_cpus = "maybe"', ["pin_cpus", "'maybe'", "true or false"]),
    ('metrics_listen = "localhost"', ["metrics_listen", "'localhost'", "HOST:PORT"]),
    ('transfr = "x"', ["t.toml", "unknown key", "transfr"]),
])
def test_bad_values_name_file_key_and_value(tmp_path, body, words):
    path = tmp_path / "t.toml"
    path.write_text(f'[tcpcopyd]\ntransfer = "8080-198.18.0.3:8080"\nintercepts = ["198.18.0.4"]\n{body}\n')
    with pytest.raises(ConfigError) as err:
        load(ONLINE, str(path), parse([]))
    for word in words:
        assert word in str(err.value)


def test_unknown_section_and_broken_toml(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("[tcpcopy]\nworkers = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[tcpcopy\]"):
        load(ONLINE, str(path), parse([]))
    path.write_text("[tcpcopyd\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(ONLINE, str(path), parse([]))


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"tcpcopyd.transfer \(-x\) is required"):
        load(ONLINE, None, parse(["-s", "198.18.0.4"]))


def test_mss_larger_than_mtu_allows_is_refused():
    with pytest.raises(ConfigError, match=r"\[session\] mss = 1500"):
        online_config(load(ONLINE, None, parse(REQUIRED + ["-D", "1500"])), "x")


def test_tcpcopyd_exits_with_the_config_code_and_message(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[tcpcopyd]\ntransfer = "8080-198.18.0.3:8080"\nintercepts = ["198.18.0.4"]\nworkers = 99\n')
    assert cli.main(["--config", str(path)]) == EXIT_CONFIG == 78
    err = capsys.readouterr().err
    assert str(path) in err and "workers = 99" in err and "must be 1-64" in err


def test_interceptd_config_errors_use_the_same_code(tmp_path, capsys):
    assert intercept_cli.main(["-F", "tcp", "-p", "70000"]) == EXIT_CONFIG
    assert "port = '70000'" in capsys.readouterr().err


def test_missing_curve_keys_stop_the_start_with_a_hint(tmp_path):
    values = load(ONLINE, None, parse(REQUIRED + ["--secret-key", str(tmp_path / "none.key_secret")]))
    with pytest.raises(ConfigError, match=r"secret_key .*none.key_secret.*tcpcopyctl keygen"):
        online_config(values, "x")


def test_curve_keys_made_by_keygen_are_accepted(tmp_path):
    from appliance.curve import keygen
    keygen(str(tmp_path), "interceptd")
    keygen(str(tmp_path), "tcpcopyd")
    assert oct((tmp_path / "tcpcopyd.key_secret").stat().st_mode & 0o777) == "0o600"
    values = load(ONLINE, None, parse(REQUIRED + ["--secret-key", str(tmp_path / "tcpcopyd.key_secret"),
                                                  "--intercept-public-key", str(tmp_path / "interceptd.key")]))
    config = online_config(values, "x")
    assert config.secret_key.endswith("tcpcopyd.key_secret")
