"""End to end in the four-host lab: real services, interceptd, tcpcopyd, real packets.

Acceptance of "Stateful replication core": every session reaches the target byte-identical,
counted by per-connection digests that the online and target HTTP services record.
The lab keeps the veth offloads at their defaults (on), so captures hold GSO super-packets.
"""

from __future__ import annotations

import struct
import sys
import time

import pytest
import zmq

from appliance.core import wire
from appliance.core.flowkey import shard_of
from appliance.lab.netns import ADDR
from appliance.lab.records import load_records, session_digests
from appliance.lab.rig import SERVICE_PORT, ReplicationRig
from tests.lab.support import HeldConnections

pytestmark = pytest.mark.lab


def _replay(rig: ReplicationRig, *load_args: str, timeout: float = 180.0):
    rig.start()
    load = rig.load(*load_args, timeout=timeout)
    ended = time.time()
    assert load["errors"] == 0, load
    return rig.verdict(load, ended)


def _funnel(verdict) -> dict:
    return verdict.status["funnel"]


def _rewrite_totals(verdict) -> dict:
    return verdict.status["totals"]["rewrite"]


def test_mixed_load_reaches_target_byte_identical_with_offloads_on(rig_factory):
    v = _replay(rig_factory(), "mix", "--short", "1000", "--keepalive", "20", "--per-conn", "50",
                "--post-every", "5", "--post-size", "65536", "--concurrency", "10")
    c = v.comparison
    assert c.requests_online == 2000
    assert c.sessions_online == 1020
    assert c.identical == c.sessions_online, c.summary()
    assert c.requests_target == 2000
    f = _funnel(v)
    assert f["kernel_drops"] == 0 and f["queue_drops_capture"] == 0 and f["capture_gaps"] == 0
    capture = v.status["totals"]["capture"]
    assert capture["largest_packet"] > 1500, "offloads on: the capture should hold GSO super-packets"
    assert _rewrite_totals(v)["handshake_timeouts"] == 0


def test_sessions_open_before_tcpcopyd_starts_still_replay(rig_factory, lab):
    rig = rig_factory()
    rig.start_services()
    rig.start_interceptd()
    with HeldConnections(lab, 20, 10, f"{ADDR['online']}:{SERVICE_PORT}") as held:
        rig.start_tcpcopyd()
        assert rig.wait_for_subscriptions()
        assert held.finish()["errors"] == 0
    v = rig.verdict({}, time.time())
    online = load_records(rig.online_rec)
    target = load_records(rig.target_rec)
    assert len(online) == 20
    for peer, rec in online.items():
        assert rec["requests"] == 10
        assert peer in target, f"{peer}: no replica on the target"
        assert target[peer]["requests"] == 9, f"{peer}: the 9 requests after tcpcopyd started"
    assert _rewrite_totals(v)["sessions_fake_syn"] >= 20


def test_target_ten_times_slower_loses_nothing(rig_factory):
    v = _replay(rig_factory(target_delay_ms=2.0), "mix", "--short", "200", "--keepalive", "20",
                "--per-conn", "50", "--post-every", "5", "--concurrency", "10")
    c = v.comparison
    assert c.identical == c.sessions_online == 220, c.summary()
    assert c.requests_target == c.requests_online == 1200


def test_one_keepalive_connection_at_5000_rps_keeps_up(rig_factory):
    v = _replay(rig_factory(), "paced", "--rate", "5000", "--duration", "20", timeout=120)
    c = v.comparison
    assert v.load["rate_achieved"] > 4500, v.load
    assert c.sessions_online == 1 and c.identical == 1, c.summary()
    assert c.requests_target == c.requests_online >= 90_000
    assert v.tail_seconds <= 5.0, f"the target finished {v.tail_seconds:.1f} s after the load"


def test_short_connections_with_fast_port_reuse(rig_factory):
    v = _replay(rig_factory(), "burst", "--conns", "4000", "--concurrency", "20",
                "--port-range", "40000-40999", timeout=180)
    assert v.load["connections"] == 4000
    # ports were reused, so a peer names several sessions: compare every session's digest
    online, target = session_digests(rig_factory.last.online_rec), session_digests(rig_factory.last.target_rec)
    assert sum(online.values()) == 4000
    assert target == online, f"{sum((online - target).values())} online sessions not on the target"
    assert _rewrite_totals(v)["handshake_timeouts"] == 0
    f = _funnel(v)                  # G5: a burst of new sessions never overflows the response channel
    assert f["response_batches_lost"] == 0 and f["queue_drops_capture"] == 0


GARBAGE = [b"", b"\x00", b"hello world", b"\x01\x02\x00\x05" + b"\xff" * 40,
           wire.BATCH_HEADER.pack(wire.VERSION, wire.KIND_SEGMENTS, 3, 0, 0) + b"\x00" * 7,
           wire.BATCH_HEADER.pack(99, wire.KIND_RESPONSES, 0, 0, 0)]


def _malformed_ip_batches(kind: int) -> list[bytes]:
    """Bad records, of a client of shard 0 (for worker 0's queue)."""
    b = wire.BatchBuilder(kind, 77)
    client, online = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
    port = next(p for p in range(40000, 41000) if shard_of(int.from_bytes(client, "big"), p, 2) == 0)
    if kind == wire.KIND_SEGMENTS:
        addresses, ports = client + online, struct.pack("!HH", port, 8080)
    else:
        addresses, ports = online + client, struct.pack("!HH", 8080, port)
    base = bytearray(b"\x45\x00\x00\x28\x00\x01\x40\x00\x40\x06\x00\x00" + addresses
                     + ports + b"\x00" * 8 + b"\xf0\x18\xff\xff\x00\x00\x00\x00")
    bad_doff = bytes(base)                                         # data offset 60 > packet
    not_tcp = bytes(base[:9] + b"\x11" + base[10:])               # UDP
    short = bytes(base[:30])
    for pkt in (bad_doff, not_tcp, short, b"\x60" + bytes(base[1:])):
        b.add(0, pkt)
    return [b.take()]


def test_malformed_frames_and_garbage_are_counted_not_fatal(rig_factory, lab):
    rig = rig_factory(extra_intercepts=(f"{ADDR['assistant']}:36600",))
    rig.start()
    # A publisher holding interceptd's key (so tcpcopyd accepts it): once both workers have
    # subscribed, it sends each of them garbage on its topic, messages of the wrong shape, batches
    # of malformed headers, and a stats report that is not JSON.
    topics = [wire.shard_topic(2, k) for k in range(2)]
    garbage = [[g] for g in GARBAGE + _malformed_ip_batches(wire.KIND_RESPONSES)] + [[], [b"x", b"y"]]
    fake = lab.popen("assistant", [sys.executable, "-c", (
        "import zmq, zmq.auth, time\n"
        f"pub, sec = zmq.auth.load_certificate('{rig.keys / 'interceptd.key_secret'}')\n"
        "ctx = zmq.Context(); s = ctx.socket(zmq.XPUB)\n"
        "s.curve_secretkey = sec; s.curve_publickey = pub; s.curve_server = True\n"
        "s.bind('tcp://0.0.0.0:36600')\n"
        f"wanted, seen, end = set({topics!r}), set(), time.time() + 10\n"
        "while not wanted <= seen and time.time() < end:\n"
        "    if s.poll(200):\n"
        "        m = s.recv()\n"
        "        if m[:1] == b'\\x01': seen.add(m[1:])\n"
        f"for topic in {topics!r}:\n"
        f"    for rest in {garbage!r}:\n"
        "        s.send_multipart([topic, *rest])\n"
        f"s.send_multipart([{wire.STATS_TOPIC!r}, b'not json'])\n"
        "time.sleep(1); s.close(0); ctx.term()\n")])
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        push.linger = 1000
        push.connect(wire.segments_endpoint(rig.run_dir, 0))
        for frame in GARBAGE + _malformed_ip_batches(wire.KIND_SEGMENTS):
            push.send(frame)
        push.close()
    finally:
        ctx.term()
    assert fake.wait(20) == 0
    # malformed TCP headers on the wire, through the real capture: data offsets 8 and 60 bytes
    lab.run("client", [sys.executable, "-c", (
        "import socket, struct\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
        "src, dst = socket.inet_aton('198.18.0.1'), socket.inet_aton('198.18.0.2')\n"
        "for doff in (2, 15, 2, 15):\n"
        "    tcp = struct.pack('!HHIIBBHHH', 40123, 8080, 1, 0, doff << 4, 0x18, 512, 0, 0) + b'x' * 8\n"
        "    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst)\n"
        "    s.sendto(ip + tcp, ('198.18.0.2', 0))\n")])
    load = rig.load("mix", "--short", "100", "--keepalive", "5", "--per-conn", "10")
    v = rig.verdict(load, time.time())
    assert v.comparison.identical == v.comparison.sessions_online == 105, v.comparison.summary()
    rewrite0 = next(ch for ch in v.status["children"] if ch["role"] == "rewrite" and ch["index"] == 0)
    # worker 0: every garbage frame on its segments queue, and the one response frame whose
    # header passes but whose records do not (the channel counts the rest)
    assert rewrite0["counters"]["bad_frames"] == len(GARBAGE) + 1
    # per worker: 5 garbage frames with a bad header, a lone topic, three frames, the bad stats report
    assert v.status["totals"]["responses"]["bad_frames"] == 2 * 8
    malformed = sum(ch["counters"].get("malformed", 0) for ch in v.status["children"] if ch["role"] == "rewrite")
    assert malformed >= 4 + 2 * 4 + 4, "malformed records on the queue and the channel, frames from the wire"
    assert all(ch["restarts"] == 0 and ch["state"] == "running" for ch in v.status["children"])


def test_handshake_that_never_completes_is_counted_with_a_hint(rig_factory):
    rig = rig_factory(intercept_filter="tcp and src port 9999",    # G8: answers never come back
                      tcpcopyd_args=("--handshake-timeout", "3"))
    rig.start()
    load = rig.load("mix", "--short", "5", "--keepalive", "0")
    assert load["errors"] == 0
    status = rig.wait_until("5 handshake timeouts", lambda s: s["totals"]["rewrite"]["handshake_timeouts"] >= 5)
    rewrite = status["totals"]["rewrite"]
    assert rewrite["handshake_timeouts"] == 5
    assert rewrite["sessions_established"] == 0
    assert rewrite["resets_sent"] >= 5                               # the target's half-open sockets are freed
    assert rewrite["syn_retransmits"] >= 5 * 2                       # at 0.5 and 1.5 s
    rig.wait_for_log("tcpcopyd", "handshake(s) timed out")


def test_tcpcopyd_reconnects_when_interceptd_restarts(rig_factory):
    rig = rig_factory()
    rig.start()
    first = rig.load("mix", "--short", "50", "--keepalive", "5", "--per-conn", "10")
    rig.restart_interceptd(down_for=1.0)
    second = rig.load("--seed", "2", "mix", "--short", "50", "--keepalive", "5", "--per-conn", "10")
    assert first["errors"] == second["errors"] == 0
    v = rig.verdict(second, time.time())
    assert v.comparison.identical == v.comparison.sessions_online == 110, v.comparison.summary()
    assert v.status["totals"]["responses"]["intercept_restarts"] >= 1
