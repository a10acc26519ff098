"""The interceptd -> tcpcopyd channel is CURVE-authenticated both ways; the control socket is private."""

from __future__ import annotations

import os
import stat
import sys
import time

import pytest

from appliance.core import wire
from appliance.host.curvekeys import keygen
from appliance.lab.netns import ADDR
from appliance.lab.records import load_records
from appliance.lab.rig import ReplicationRig

pytestmark = pytest.mark.lab


def test_tcpcopyd_with_an_unknown_key_is_refused_and_counted(lab, tmp_path):
    rig = ReplicationRig(lab, tmp_path / "rig")
    stranger = tmp_path / "stranger"
    keygen(str(stranger), "tcpcopyd")                  # a key interceptd was never given
    rig.tcpcopyd_args = ("--secret-key", str(stranger / "tcpcopyd.key_secret"), "--handshake-timeout", "3")
    try:
        rig.start(subscribed=False)
        rig.load("mix", "--short", "10", "--keepalive", "0")
        status = rig.wait_until("10 handshake timeouts",
                                lambda s: s["totals"]["rewrite"]["handshake_timeouts"] >= 10)
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


SPOOFER = (
    "import socket, struct, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
    "src, dst = socket.inet_aton(sys.argv[1]), socket.inet_aton('198.18.0.2')\n"
    "data = b'GET /injected HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'\n"
    "for n, sport in enumerate(range(61000, 61010)):\n"
    "    tcp = struct.pack('!HHIIBBHHH', sport, 8080, 5000, 7000, 5 << 4, 0x18, 512, 0, 0) + data\n"
    "    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), n, 0, 64, 6, 0, src, dst)\n"
    "    s.sendto(ip + tcp, ('198.18.0.2', 0))\n")


def test_spoofed_mid_stream_segments_are_not_replayed(lab, tmp_path):
    """Issue 14: one data segment without a SYN, from any address, used to make tcpcopyd forge a
    handshake with the target and deliver its payload. Now the online host's socket table decides.
    The spoofed ports 61000-61009 lie above the client's ephemeral range (32768-60999): an earlier
    test's connection still in TIME_WAIT on the online host (which the table rightly holds: a late
    capture of a just-closed connection) cannot share their 4-tuple."""
    rig = ReplicationRig(lab, tmp_path / "rig")
    try:
        rig.start()
        for source in (ADDR["client"], "198.18.0.77"):       # the real client's address, and a stranger's
            lab.run("client", [sys.executable, "-c", SPOOFER, source])
        status = rig.wait_until("20 spoofed segments refused",
                                lambda s: s["totals"]["rewrite"]["midstream_refused"] >= 20)
        rewrite = status["totals"]["rewrite"]
        assert rewrite["sessions_started"] == 0 and rewrite["sessions_fake_syn"] == 0
        load = rig.load("mix", "--short", "20", "--keepalive", "2", "--per-conn", "5")
        v = rig.verdict(load, time.time())
        assert v.comparison.identical == v.comparison.sessions_online == 22, v.comparison.summary()
        injected = [peer for peer in load_records(rig.target_rec) if peer.endswith(tuple(
            f":{p}" for p in range(61000, 61010)))]
        assert not injected, f"the target received the spoofed segments: {injected}"
        rig.wait_for_log("tcpcopyd", "were not replayed: this host's socket table does not hold")
    finally:
        rig.close()
