"""Memory per tracked session in one rewrite worker's SessionTable (no I/O).

    .venv/bin/python perf/bench_memory.py [--sessions 100000]

Creates N established, idle sessions the way live traffic does (a SYN with its own options
and random ISN, the target's SYN-ACK, one request answered; every event at its own time,
1,000 new connections a second (--rate), the table polled every 10 ms as a worker does), waits until
the idle ones are hibernated, and prints the resident-memory growth per session, measured with
psutil around the whole run; `--no-hibernate` shows the figure for sessions kept as objects.
"""

from __future__ import annotations

import argparse
import gc
import random
import struct

import psutil

from appliance.core.packet import ACK, PSH, SYN, TcpSegment, ip_to_int
from appliance.engine.params import EngineParams
from appliance.engine.table import SessionTable

ONLINE, TARGET = ip_to_int("198.18.0.2"), ip_to_int("198.18.0.3")
CLIENTS = ip_to_int("198.18.128.0")


def syn_options(ts_val: int) -> bytes:
    """MSS, SACK permitted, timestamps, window scale: what Linux clients send."""
    return struct.pack("!BBHBBBBIIBBBB", 2, 4, 1460, 4, 2, 8, 10, ts_val, 0, 1, 3, 3, 7)


def ts(ts_val: int, ts_ecr: int) -> bytes:
    return struct.pack("!BBBBII", 1, 1, 8, 10, ts_val, ts_ecr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--no-hibernate", action="store_true")
    ap.add_argument("--rate", type=float, default=1000.0, help="new connections per second (simulated time)")
    args = ap.parse_args()
    rnd = random.Random(1)
    proc = psutil.Process()
    table = SessionTable(EngineParams(hibernate_after=0.0) if args.no_hibernate else EngineParams())
    gc.collect()
    before = proc.memory_info().rss
    now = 1000.0
    next_poll = now
    for i in range(args.sessions):
        if now >= next_poll:
            table.poll(now)
            next_poll = now + 0.01
        now += 1 / args.rate - 4e-5
        ip, port = CLIENTS + i // 40000, 20000 + i % 40000
        isn, t_isn, tsv = rnd.getrandbits(32), rnd.getrandbits(32), rnd.getrandbits(31)
        o_isn = rnd.getrandbits(32)           # the online server's, seen in the client's acks
        now += 1e-5
        table.client_segment(TcpSegment(ip, ONLINE, port, 8080, isn, 0, SYN, 64240, syn_options(tsv), b"", 0, 1),
                             TARGET, 8080, now)
        table.flush(now)
        now += 1e-5
        table.target_segment(TcpSegment(TARGET, ip, 8080, port, t_isn, (isn + 1) & 0xFFFFFFFF, SYN | ACK, 65160,
                                        syn_options(tsv + 7), b"", 0, 1), now)
        table.flush(now)
        now += 1e-5
        request = b"GET /item/%d HTTP/1.1\r\n\r\n" % i
        table.client_segment(TcpSegment(ip, ONLINE, port, 8080, (isn + 1) & 0xFFFFFFFF, (o_isn + 1) & 0xFFFFFFFF,
                                        ACK | PSH, 502, ts(tsv + 1, 99), request, len(request), 2), TARGET, 8080, now)
        table.flush(now)                     # the request goes out (as after each batch in a worker)
        now += 1e-5
        table.target_segment(TcpSegment(TARGET, ip, 8080, port, (t_isn + 1) & 0xFFFFFFFF,
                                        (isn + 1 + len(request)) & 0xFFFFFFFF, ACK | PSH, 509, ts(tsv + 9, tsv + 1),
                                        b"", 100, 2), now)
        table.flush(now)
        if i % 1000 == 999:
            table.take_output()
    table.take_output()
    end = now + table.params.hibernate_after + 1
    while now < end or (table.params.hibernate_after and table._sweep):
        now += 0.01
        table.poll(now)
    table.take_output()
    gc.collect()
    grown = proc.memory_info().rss - before
    idle = sum(1 for s in table.sessions.values() if isinstance(s, bytes) or not s.buffered)
    assert idle == len(table.sessions), f"only {idle} of {len(table.sessions)} sessions are idle"
    print(f"{len(table.sessions)} idle established sessions ({table.hibernated()} hibernated): "
          f"RSS +{grown / 2**20:.1f} MiB, {grown / len(table.sessions):.0f} bytes per session")


if __name__ == "__main__":
    main()
