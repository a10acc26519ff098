"""Configuration: defaults <- TOML file <- flags; errors name the source, the key and the value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.config.keys import INTERCEPT, ONLINE, auto_workers, render_sample
from appliance.config.loader import intercept_config, load, online_config
from appliance.core.errors import EXIT_CONFIG, ConfigError
from appliance.interceptd import cli as intercept_cli
from appliance.tcpcopyd import cli

CONF = Path(__file__).resolve().parents[3] / "conf"
REQUIRED = ["-x", "198.18.0.2:8080-198.18.0.3:8080", "-s", "198.18.0.4"]


def parse(argv: list[str]):
    return cli.build_parser().parse_args(argv)


class ConfigurationAccepted(Exception):
    pass


@pytest.fixture(autouse=True)
def never_start_the_daemons(monkeypatch):
    """cli.main and intercept_cli.main are called with bad values: if one were accepted, the test must
    fail here instead of capturing and sending for real (these tests run as root)."""
    import appliance.interceptd.daemon
    import appliance.tcpcopyd.supervisor

    def refuse(*args, **kwargs):
        raise ConfigurationAccepted("the configuration was accepted: the daemon would start")
    monkeypatch.setattr(appliance.tcpcopyd.supervisor, "Supervisor", refuse)
    monkeypatch.setattr(appliance.interceptd.daemon, "Intercept", refuse)


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
    from appliance.host.curvekeys import keygen
    keygen(str(tmp_path), "interceptd")
    keygen(str(tmp_path), "tcpcopyd")
    assert oct((tmp_path / "tcpcopyd.key_secret").stat().st_mode & 0o777) == "0o600"
    values = load(ONLINE, None, parse(REQUIRED + ["--secret-key", str(tmp_path / "tcpcopyd.key_secret"),
                                                  "--intercept-public-key", str(tmp_path / "interceptd.key")]))
    config = online_config(values, "x")
    assert config.secret_key.endswith("tcpcopyd.key_secret")


# ---- issue 14: every bad value is exit 78 with a message, never a traceback -----------------------
BASE = ('[tcpcopyd]\ntransfer = "8080-198.18.0.3:8080"\nintercepts = ["198.18.0.4"]\n'
        '[security]\ninsecure = true\n')


@pytest.mark.parametrize("section, body, words", [
    ("session", "max_lag = inf", ["max_lag = inf", "finite"]),
    ("session", "max_lag = nan", ["max_lag = nan", "finite"]),
    ("tcpcopyd", "workers = inf", ["workers = inf", "whole number"]),
    ("tcpcopyd", "workers = -inf", ["workers = -inf", "whole number"]),
    ("tcpcopyd", "copies = nan", ["copies = nan", "whole number"]),
    ("session", "mtu = 1e999", ["mtu = inf", "whole number"]),
    ("session", "max_lag = " + "9" * 400, ["max_lag = 999", "number"]),         # float() overflows
    ("tcpcopyd", "workers = {a = 1}", ["workers = {'a': 1}", "whole number"]),  # a table for a number
    ("tcpcopyd", "sample_percent = 1979-05-27", ["sample_percent = datetime.date(1979, 5, 27)", "number"]),
    ("tcpcopyd", "interfaces = [1, 2]", ["interfaces = [1, 2]", "list of strings"]),
    ("tcpcopyd", "pin_cpus = []", ["pin_cpus = []", "true or false"]),
])
def test_bad_numbers_and_types_are_config_errors_naming_file_key_and_value(tmp_path, capsys, section, body,
                                                                           words):
    path = tmp_path / "t.toml"
    text = BASE.replace(f"[{section}]\n", f"[{section}]\n{body}\n") if f"[{section}]" in BASE else \
        BASE + f"[{section}]\n{body}\n"
    path.write_text(text)
    assert cli.main(["--config", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(path) in err, err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize("data, words", [
    (BASE.encode() + b"# caf\xe9\n", ["line 6", "not UTF-8", "0xe9"]),
    (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", ["not valid TOML"]),                # RecursionError
    (b"[session]\nmtu = " + b"9" * 5000 + b"\n", ["not valid TOML"]),                  # int() digit limit
])
def test_files_that_are_not_utf8_or_break_the_toml_parser_are_config_errors(tmp_path, capsys, data, words):
    path = tmp_path / "t.toml"
    path.write_bytes(data)
    assert cli.main(["--config", str(path)]) == EXIT_CONFIG
    assert intercept_cli.main(["--config", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(path) in err
    for word in words:
        assert word in err


def test_a_config_path_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)                     # open() without O_NONBLOCK would wait for a writer for ever
    with pytest.raises(ConfigError, match="not a regular file"):
        load(ONLINE, str(fifo), parse([]))
    with pytest.raises(ConfigError, match="not a regular file"):
        load(ONLINE, str(tmp_path), parse([]))
    with pytest.raises(ConfigError, match="cannot read"):
        load(ONLINE, str(tmp_path / "gone.toml"), parse([]))


@pytest.mark.parametrize("argv, words", [
    (["-F", "tcp and ("], ["filter = 'tcp and ('", "cannot compile", "'any'"]),
    (["-F", "tcp port 99999"], ["filter = 'tcp port 99999'", "cannot compile"]),
    (["-F", "src host 198.18.0.999"], ["cannot compile"]),
    (["-i", "any", "-F", "ether host 02:00:00:00:00:01"], ["LINUX_SLL"]),    # no Ethernet header on 'any'
    (["-F", "tcp\0 and ("], ["NUL"]),                                           # libpcap would see 'tcp'
])
def test_bpf_filters_libpcap_cannot_compile_stop_the_start(capsys, argv, words):
    assert cli.main([*REQUIRED, "--insecure", "true", *argv]) == EXIT_CONFIG
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err
    tcpcopyd_only = [a for a in argv if a not in ("-i", "any")]
    assert intercept_cli.main(["--insecure", "true", *tcpcopyd_only]) == EXIT_CONFIG


def test_bpf_filters_are_compiled_for_each_interfaces_link_type():
    from appliance.config.keys import link_types
    assert link_types("any") == ("LINUX_SLL",) and link_types("lo") == ("EN10MB",)
    assert len(link_types("no-such-if0")) == 3 and len(link_types("../../etc")) == 3
    ether = ["-F", "ether host 02:00:00:00:00:01 and tcp"]
    values = load(ONLINE, None, parse([*REQUIRED, "--insecure", "true", "-i", "lo", *ether]))
    config = online_config(values, "x")
    assert config.bpf == ether[1]
    # an interface not (yet) there: accepted when any usual link type compiles it
    load(ONLINE, None, parse([*REQUIRED, "--insecure", "true", "-i", "no-such-if0", *ether]))
    values = load(INTERCEPT, None, intercept_cli.build_parser().parse_args(
        ["--insecure", "true", "-F", "tcp and src host 198.18.0.3 and src port 8080"]))
    assert values["interceptd.filter"].startswith("tcp and src")


@pytest.mark.parametrize("bind, ok", [
    ("0.0.0.0", True), ("*", True), ("198.18.0.4", True), ("lo", True), ("eth0.100", True),
    ("198.18.0.999", False), ("::1", False), ("[::1]", False), ("eth 0", False), ("a/b", False), ("", False),
    ("０.0.0.0", False),
])
def test_interceptd_bind_address_is_checked_up_front(capsys, bind, ok):
    argv = ["--insecure", "true", "-F", "tcp", "-b", bind]
    if ok:
        values = load(INTERCEPT, None, intercept_cli.build_parser().parse_args(argv))
        assert values["interceptd.bind"] == bind
    else:
        assert intercept_cli.main(argv) == EXIT_CONFIG
        assert f"bind = {bind!r}" in capsys.readouterr().err


@pytest.mark.parametrize("intercept, words", [
    ("198.18.0.999", ["not an IPv4 address"]),
    ("[::1]:36524", ["IPv6"]),
    ("bad host:36524", ["not an IPv4 address or a host name"]),
    ("a..b", ["host name"]),
    ("198.18.0.4:36524,198.18.0.4", ["given twice"]),
    ("198.18.0.4:８０８０", ["not ASCII"]),
    ("198.18.0.4:٨٠٨٠", ["not ASCII"]),
    ("198.18.0.4:²", ["not ASCII"]),
])
def test_intercept_hosts_are_checked_up_front(capsys, intercept, words):
    assert cli.main(["-x", REQUIRED[1], "-s", intercept, "--insecure", "true"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"intercepts = {intercept!r}" in err
    for word in words:
        assert word in err


def test_intercept_host_names_are_accepted_without_resolving_them():
    values = load(ONLINE, None, parse(["-x", REQUIRED[1], "-s", "assistant.lab.example:36524,198.18.0.5"]))
    assert values["tcpcopyd.intercepts"] == ("assistant.lab.example:36524", "198.18.0.5")


@pytest.mark.parametrize("argv, words", [
    (["-x", "8080-198.18.0.3:８０８０"], ["not ASCII"]),
    (["-x", "٨٠٨٠-198.18.0.3:8080"], ["not ASCII"]),
    (["-x", "8080-198.18.0.3:8080,8080-198.18.0.3:8080"], ["given twice"]),
    (["-x", "198.18.0.2:8080-198.18.0.3:80, 198.18.0.2:8080-198.18.0.3:80"], ["given twice"]),
    (["--metrics-listen", "127.0.0.1:９４６６"], ["HOST:PORT"]),
    (["--metrics-listen", "127.0.0.1:²"], ["HOST:PORT"]),
    (["-w", "٣"], ["whole number"]),
    (["-M", "１５００"], ["whole number"]),
    (["--max-lag", "٢"], ["number"]),
    (["--max-lag", "nan"], ["number"]),
])
def test_unicode_digits_and_duplicate_transfers_are_refused(capsys, argv, words):
    base = REQUIRED if argv[0] != "-x" else REQUIRED[2:]
    assert cli.main([*base, "--insecure", "true", *argv]) == EXIT_CONFIG
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err


def test_the_same_port_to_two_targets_is_not_a_duplicate():
    values = load(ONLINE, None, parse(["-s", "198.18.0.4",
                                       "-x", "8080-198.18.0.3:8080,8080-198.18.0.5:8080"]))
    assert values["tcpcopyd.transfer"] == "8080-198.18.0.3:8080,8080-198.18.0.5:8080"


@pytest.mark.parametrize("argv, words", [
    (["--speed", "nan"], ["--speed nan", "finite"]),
    (["--speed", "inf"], ["--speed inf"]),
    (["--speed", "0"], ["--speed 0.0", "greater than 0"]),
    (["--max-gap", "nan"], ["--max-gap nan"]),
    (["--max-gap", "-5"], ["--max-gap -5.0"]),
    (["--offline-tail", "-1"], ["--offline-tail -1.0", "0 or more"]),
    (["--offline-tail", "nan"], ["--offline-tail nan"]),
    (["--offline-tail", "inf"], ["--offline-tail inf"]),
])
def test_offline_pacing_flags_must_be_finite_and_in_range(tmp_path, capsys, argv, words):
    offline = ["--offline", str(tmp_path / "none.pcap")]
    assert cli.main([*REQUIRED, "--insecure", "true", *offline, *argv]) == EXIT_CONFIG
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err


def test_offline_pacing_flags_within_range_are_taken():
    args = parse([*REQUIRED, "--offline", "a.pcap", "--speed", "2.5", "--max-gap", "0",
                  "--offline-tail", "0"])
    assert cli.offline_options(args) == {"offline": ("a.pcap",), "speed": 2.5, "max_gap_ms": 0.0,
                                         "offline_tail": 0.0}


@pytest.mark.parametrize("pool", ["10.0.0.0/8", "0.0.0.0/0", "198.18.0.0/15", "198.18.1.x,198.18.0.0/16"])
def test_huge_client_pools_are_refused_before_they_are_expanded(monkeypatch, pool):
    import ipaddress
    expanded = []
    real_hosts = ipaddress.IPv4Network.hosts

    def hosts(net):
        expanded.append(net.num_addresses)
        assert net.num_addresses <= 65536 + 2, f"{net} expanded before its size was checked"
        return real_hosts(net)
    monkeypatch.setattr(ipaddress.IPv4Network, "hosts", hosts)
    with pytest.raises(ConfigError, match=r"client_pool = .*at most 65536"):
        load(ONLINE, None, parse([*REQUIRED, "-c", pool]))
    assert all(n <= 65538 for n in expanded)


def test_a_pool_of_exactly_65536_addresses_is_taken():
    values = load(ONLINE, None, parse([*REQUIRED, "-c", "198.18.0.0/16,198.19.0.1,198.19.0.2"]))
    assert len(values["tcpcopyd.client_pool"]) == 65536


def test_key_paths_with_a_nul_are_config_errors():
    with pytest.raises(ConfigError, match="NUL"):
        load(ONLINE, None, parse([*REQUIRED, "--secret-key", "/etc/tcpcopy/a\0b"]))
    with pytest.raises(ConfigError, match="NUL"):
        load(INTERCEPT, None, intercept_cli.build_parser().parse_args(["-F", "tcp", "--authorized-keys",
                                                                       "a\0"]))



def _has_user(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


needs_root_and_nobody = pytest.mark.skipif(os.geteuid() != 0 or not _has_user("nobody"),
                                           reason="checks keys as another user: needs root and user nobody")


@pytest.fixture
def key_dir():
    """A key directory user nobody can reach (pytest's tmp_path is under a 0700 directory)."""
    import shutil
    import tempfile

    from appliance.host.curvekeys import keygen
    top = tempfile.mkdtemp(prefix="tcpcopy-keys-")
    os.chmod(top, 0o711)
    keygen(os.path.join(top, "curve"), "tcpcopyd")
    keygen(os.path.join(top, "curve"), "interceptd")
    try:
        yield Path(top, "curve")
    finally:
        shutil.rmtree(top)


@needs_root_and_nobody
def test_tcpcopyd_keys_must_be_readable_by_the_user_the_workers_run_as(key_dir):
    import pwd
    nogroup = pwd.getpwnam("nobody").pw_gid
    secret, public = key_dir / "tcpcopyd.key_secret", key_dir / "interceptd.key"
    argv = [*REQUIRED, "--user", "nobody", "--secret-key", str(secret), "--intercept-public-key", str(public)]
    os.chmod(key_dir, 0o755)
    with pytest.raises(ConfigError, match=r"secret_key = .*tcpcopyd.key_secret.*user 'nobody' cannot read"):
        online_config(load(ONLINE, None, parse(argv)), "x")        # root:root 0600: only root reads it
    os.chown(secret, 0, nogroup)
    os.chmod(secret, 0o640)                                         # as the packages make it
    assert online_config(load(ONLINE, None, parse(argv)), "x").secret_key == str(secret)
    os.chmod(key_dir, 0o700)                                        # the file is fine, the way to it is not
    with pytest.raises(ConfigError, match="user 'nobody' cannot read"):
        online_config(load(ONLINE, None, parse(argv)), "x")
    assert os.geteuid() == 0 and os.getegid() == 0                  # the check gave root back
    # without a user the daemon stays root and reads anything
    online_config(load(ONLINE, None, parse([a for a in argv if a not in ("--user", "nobody")])), "x")


@needs_root_and_nobody
def test_interceptd_authorized_keys_must_be_listable_by_its_user(key_dir):
    authorized = key_dir / "authorized"
    authorized.mkdir(mode=0o700)
    os.chmod(key_dir, 0o755)
    argv = ["-F", "tcp", "--user", "nobody", "--secret-key", str(key_dir / "interceptd.key_secret"),
            "--authorized-keys", str(authorized)]
    values = load(INTERCEPT, None, intercept_cli.build_parser().parse_args(argv))
    with pytest.raises(ConfigError, match=r"authorized_keys = .*user 'nobody' cannot read this directory"):
        intercept_config(values)
    os.chmod(authorized, 0o755)
    assert intercept_config(values).authorized_keys == str(authorized)
