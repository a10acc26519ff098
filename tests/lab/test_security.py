"""The interceptd -> tcpcopyd channel is CURVE-authenticated both ways; the control socket is private."""

from __future__ import annotations

import os
import stat
import sys
import time

import pytest

from appliance import wire
from appliance.curve import keygen
from appliance.lab.netns import ADDR
from appliance.lab.rig import ReplicationRig

pytestmark = pytest.mark.lab


def test_tcpcopyd_with_an_unknown_key_is_refused_and_counted(lab, tmp_path):
    rig = ReplicationRig(lab, tmp_path / "rig")
    stranger = tmp_path / "stranger"
    keygen(str(stranger), "tcpcopyd")                  # a key interceptd was never given
    rig.tcpcopyd_args = ("--secret-key", str(stranger / "tcpcopyd.key_secret"))
    try:
        rig.start()
        rig.load("mix", "--short", "10", "--keepalive", "0")
        time.sleep(4.0)
        status = rig.fresh_status()
    finally:
        rig.close()
    # interceptd refused the handshake, so tcpcopyd heard nothing: not even interceptd's own stats
    assert status["intercepts"] == {}
    assert status["totals"]["responses"]["headers"] == 0
    assert status["totals"]["rewrite"]["handshake_timeouts"] == 10
    log = (rig.dir / "interceptd.log").read_text()
    assert "'keys_refused': 0" not in log and "'keys_accepted': 0" in log


def test_forged_headers_from_a_publisher_without_the_key_change_nothing(lab, tmp_path):
    rig = ReplicationRig(lab, tmp_path / "rig", extra_intercepts=(f"{ADDR['assistant']}:36601",))
    rogue_keys = tmp_path / "rogue"
    keygen(str(rogue_keys), "rogue")
    # a publisher with a key of its own, flooding RSTs for every client port tcpcopyd may use
    forger = (
        "import socket, struct, time, zmq, zmq.auth\n"
        f"pub, sec = zmq.auth.load_certificate('{rogue_keys / 'rogue.key_secret'}')\n"
        "ctx = zmq.Context(); s = ctx.socket(zmq.PUB)\n"
        "s.curve_secretkey = sec; s.curve_publickey = pub; s.curve_server = True\n"
        "s.bind('tcp://0.0.0.0:36601')\n"
        "src, dst = socket.inet_aton('198.18.0.3'), socket.inet_aton('198.18.0.1')\n"
        "end = time.time() + 8\n"
        "while time.time() < end:\n"
        "    recs = []\n"
        "    for port in range(32768, 61000, 7):\n"
        "        ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 40, 0, 0, 64, 6, 0, src, dst)\n"
        "        tcp = struct.pack('!HHIIBBHHH', 8080, port, 1, 1, 0x50, 0x14, 0, 0, 0)\n"
        "        recs.append(struct.pack('!QI', 0, 40) + ip + tcp)\n"
        f"    for topic in {[wire.shard_topic(2, k) for k in range(2)]!r}:   # every worker's topic\n"
        "        s.send_multipart([topic, struct.pack('!BBHIQ', 1, 2, len(recs), 7, 0) + b''.join(recs)])\n"
        "    time.sleep(0.05)\n"
        "s.close(0); ctx.term()\n")
    proc = lab.popen("assistant", [sys.executable, "-c", forger])
    try:
        rig.start()
        load = rig.load("mix", "--short", "200", "--keepalive", "10", "--per-conn", "20")
        v = rig.verdict(load, time.time())
        assert v.comparison.identical == v.comparison.sessions_online == 210, v.comparison.summary()
        responses = v.status["totals"]["responses"]
        assert responses["intercept_handshake_failures"] >= 1
        assert v.status["totals"]["rewrite"]["sessions_reset_by_target"] == 0
    finally:
        rig.close()
        proc.kill()
        proc.wait()


def test_control_socket_is_for_root_only(lab, tmp_path):
    rig = ReplicationRig(lab, tmp_path / "rig")
    try:
        rig.start()
        mode = os.stat(os.path.join(rig.run_dir, "ctl")).st_mode
        assert stat.S_IMODE(mode) == 0o600 and os.stat(os.path.join(rig.run_dir, "ctl")).st_uid == 0
    finally:
        rig.close()


def test_control_socket_for_a_configured_group(lab, tmp_path):
    import grp
    rig = ReplicationRig(lab, tmp_path / "rig", tcpcopyd_args=("--control-group", "nogroup"))
    try:
        rig.start()
        info = os.stat(os.path.join(rig.run_dir, "ctl"))
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == grp.getgrnam("nogroup").gr_gid
    finally:
        rig.close()
