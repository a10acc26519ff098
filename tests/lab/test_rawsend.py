"""Batched raw sends (sendmmsg through ctypes) in a namespace of the test's own: every packet
arrives with good checksums, and an undeliverable or oversized one is counted by errno without
stopping the rest."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.lab.support import unique_prefix

PROBE = r"""
import json, socket, struct, sys
import dpkt
from appliance.host.rawsend import RawSender
from appliance.core.packet import ACK, SYN, ip_to_int, parse_ipv4_tcp
rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
rx.settimeout(0.5)
out = {}
for batched in (True, False):
    s = RawSender(1500, max_batch=64, batched=batched)
    lo, nowhere = ip_to_int("127.0.0.1"), ip_to_int("198.18.99.99")    # no route in this namespace
    for i in range(300):
        dst = nowhere if i in (0, 70, 299) else lo
        s.add(lo, dst, 41000 + batched, 9, i, 7, SYN if i % 2 else ACK, 1000, b"\x02\x04\x05\xb4"[: 4 * (i % 2)],
              bytes([i % 251]) * (i * 5 % 1460), i)
    s.add(lo, lo, 41000 + batched, 9, 0, 0, ACK, 1000, b"", b"x" * 5000, 0)    # larger than the MTU
    s.flush()
    got = bad = 0
    try:
        while True:
            d = rx.recv(65535)
            seg = parse_ipv4_tcp(d)
            if seg.src_port != 41000 + batched:
                continue
            got += 1
            pseudo = struct.pack("!IIBBH", lo, lo, 0, 6, len(d) - 20)
            bad += dpkt.in_cksum(pseudo + d[20:]) != 0 or dpkt.in_cksum(d[:20]) != 0
    except socket.timeout:
        pass
    out[str(batched)] = {"batched": s.batched, "sent": s.sent, "errors": s.errors, "received": got, "bad": bad}
print(json.dumps(out))
"""


def test_sendmmsg_batches_arrive_and_errors_are_counted(netns_capable):
    ns = unique_prefix() + "-raw"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    assert result["True"]["batched"], "sendmmsg should be available on this platform"
    for mode in ("True", "False"):
        r = result[mode]
        assert r["sent"] == 297 and r["errors"] == {"ENETUNREACH": 3, "EMSGSIZE": 1}, r
        assert r["received"] == 297 and r["bad"] == 0, r
