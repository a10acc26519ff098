"""CURVE key files: keygen refuses what an attacker could plant, daemons refuse loose secret keys,
interceptd skips a malformed authorized key instead of crashing (issue 14)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils import z85

from appliance.core.errors import EXIT_CONFIG, ConfigError
from appliance.host.curvekeys import KeyChecker, KeygenError, keygen, load_public, load_secret, parse_key_file
from appliance.interceptd import cli as intercept_cli
from appliance.tcpcopyctl import cli as ctl
from appliance.tcpcopyd import cli

ROOT = os.geteuid() == 0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_keygen_writes_a_pair_pyzmq_and_the_daemons_read(tmp_path):
    public, secret = keygen(str(tmp_path / "curve"), "tcpcopyd-host1")
    assert (_mode(public), _mode(secret), _mode(tmp_path / "curve")) == (0o644, 0o600, 0o750)
    pub, sec = load_secret(str(secret), "secret_key")
    assert load_public(str(public), "key") == pub
    assert zmq.auth.load_certificate(str(secret)) == (pub, sec)
    assert zmq.curve_public(sec) == pub
    assert sorted(p.name for p in (tmp_path / "curve").iterdir()) == ["tcpcopyd-host1.key",
                                                                       "tcpcopyd-host1.key_secret"]


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 65, "sp ace", "nul\0", "é"])
def test_keygen_refuses_names_that_are_not_plain_file_names(tmp_path, name, capsys):
    with pytest.raises(KeygenError, match="key name"):
        keygen(str(tmp_path / "curve"), name)
    assert ctl.main(["keygen", "--dir", str(tmp_path / "curve"), name]) == ctl.EXIT_REFUSED
    assert "key name" in capsys.readouterr().err
    assert not (tmp_path / "escape.key").exists()


def test_keygen_refuses_to_replace_a_pair_without_force(tmp_path, capsys):
    directory = str(tmp_path / "curve")
    public, secret = keygen(directory, "interceptd")
    before = secret.read_bytes()
    assert ctl.main(["keygen", "--dir", directory, "interceptd"]) == ctl.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err
    assert secret.read_bytes() == before
    assert ctl.main(["keygen", "--dir", directory, "--force", "interceptd"]) == 0
    assert secret.read_bytes() != before
    assert load_secret(str(secret), "k")[0] == load_public(str(public), "k")


@pytest.mark.parametrize("half", ["key", "key_secret"])
def test_keygen_never_writes_through_a_planted_symlink(tmp_path, half):
    directory = tmp_path / "curve"
    directory.mkdir(mode=0o750)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (directory / f"tcpcopyd.{half}").symlink_to(victim)
    with pytest.raises(KeygenError, match="exists"):
        keygen(str(directory), "tcpcopyd")
    _, secret = keygen(str(directory), "tcpcopyd", force=True)
    assert victim.read_text() == "precious\n"
    planted = directory / f"tcpcopyd.{half}"
    assert not planted.is_symlink() and stat.S_ISREG(planted.lstat().st_mode)
    assert _mode(secret) == 0o600


def test_keygen_does_not_keep_a_file_someone_made_first(tmp_path):
    directory = tmp_path / "curve"
    directory.mkdir(mode=0o750)
    planted = directory / "tcpcopyd.key_secret"
    planted.write_text("attacker's\n")
    planted.chmod(0o666)
    inode = planted.stat().st_ino
    with pytest.raises(KeygenError, match="exists"):
        keygen(str(directory), "tcpcopyd")
    keygen(str(directory), "tcpcopyd", force=True)
    assert planted.stat().st_ino != inode and _mode(planted) == 0o600
    load_secret(str(planted), "k")


def test_keygen_tightens_a_loose_directory_and_refuses_a_symlinked_one(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    keygen(str(loose), "a")
    assert _mode(loose) == 0o750
    (tmp_path / "link").symlink_to(loose)
    with pytest.raises(KeygenError, match="symlink"):
        keygen(str(tmp_path / "link"), "b")
    assert not (loose / "b.key").exists()


@pytest.mark.skipif(not ROOT, reason="chown to another user needs root")
def test_keygen_refuses_a_directory_someone_else_owns(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(KeygenError, match="belongs to uid 65534"):
        keygen(str(theirs), "interceptd")
    assert list(theirs.iterdir()) == []


@pytest.mark.parametrize(("mode", "reason"), [(0o644, "readable by others"), (0o620, "writable by group"),
                                              (0o602, "writable by group or others"), (0o604, "readable by others")])
def test_a_loose_secret_key_is_refused(tmp_path, mode, reason):
    _, secret = keygen(str(tmp_path), "tcpcopyd")
    secret.chmod(mode)
    with pytest.raises(ConfigError, match=reason):
        load_secret(str(secret), "[security] secret_key")


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_a_tight_secret_key_is_accepted(tmp_path, mode):
    _, secret = keygen(str(tmp_path), "tcpcopyd")
    secret.chmod(mode)
    assert load_secret(str(secret), "k")


def test_a_symlinked_secret_key_is_refused(tmp_path):
    _, secret = keygen(str(tmp_path), "tcpcopyd")
    (tmp_path / "link.key_secret").symlink_to(secret)
    with pytest.raises(ConfigError, match="is a symlink"):
        load_secret(str(tmp_path / "link.key_secret"), "k")


def test_both_daemons_exit_78_on_a_loose_secret_key(tmp_path, capsys):
    public, secret = keygen(str(tmp_path), "node")
    (tmp_path / "authorized").mkdir()
    secret.chmod(0o666)
    assert cli.main(["-x", "8080-198.18.0.3:8080", "-s", "198.18.0.4", "--secret-key", str(secret),
                     "--intercept-public-key", str(public)]) == EXIT_CONFIG
    assert "writable by group or others" in capsys.readouterr().err
    assert intercept_cli.main(["-F", "tcp", "--secret-key", str(secret),
                               "--authorized-keys", str(tmp_path / "authorized")]) == EXIT_CONFIG
    assert "writable by group or others" in capsys.readouterr().err


@pytest.mark.parametrize("text", [
    'curve\n    public-key = "short"\n',
    'curve\n    public-key = "' + "\u00e9" * 10 + '"\n',
    'curve\n    public-key = "' + '"' * 40 + '"\n',
    "no keys at all\n",
    'public-key\n',
    "x" * 5000,
])
def test_malformed_key_files_are_value_errors(text):
    with pytest.raises(ValueError):
        parse_key_file(text.encode())


def test_a_secret_key_not_matching_its_public_half_is_refused(tmp_path):
    _, secret = keygen(str(tmp_path), "a")
    other_public, _ = zmq.curve_keypair()
    text = secret.read_text()
    own_public = text.split('public-key = "')[1][:40]
    secret.write_text(text.replace(own_public, other_public.decode()))
    with pytest.raises(ConfigError, match="does not belong"):
        load_secret(str(secret), "k")


def _zap(key: bytes) -> list[bytes]:
    return [b"1.0", b"1", b"", b"198.18.0.2", b"", b"CURVE", key]


def test_a_malformed_authorized_key_is_skipped_with_one_warning(tmp_path, caplog):
    authorized = tmp_path / "authorized"
    good_public, _ = keygen(str(authorized), "tcpcopyd")
    (authorized / "broken.key").write_text('curve\n    public-key = "tooshort"\n')
    (authorized / "garbage.key").write_bytes(b"\xff\xfe public-key = \x00\x01\n")
    (authorized / "dir.key").mkdir()
    ctx = zmq.Context()
    try:
        with caplog.at_level(logging.WARNING, logger="appliance.host.curvekeys"):
            checker = KeyChecker(ctx, str(authorized))
            good = z85.decode(load_public(str(good_public), "k"))
            assert checker.keys == {good}
            assert checker._answer(_zap(good))[2] == b"200"
            stranger = z85.decode(zmq.curve_keypair()[0])
            for _ in range(3):                       # each unknown knock reloads the directory
                assert checker._answer(_zap(stranger))[2] == b"400"
            (authorized / "late.key").write_bytes((authorized / "tcpcopyd.key").read_bytes())
            assert checker._answer(_zap(good))[2] == b"200"
        checker.stop()
    finally:
        ctx.term()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(w.split()[2].rsplit("/", 1)[1] for w in warnings) == ["broken.key", "dir.key", "garbage.key"]
    assert (checker.accepted, checker.refused) == (2, 3)
