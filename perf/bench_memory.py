"""Memory per tracked session in one rewrite worker's SessionTable (no I/O).

    .venv/bin/python perf/bench_memory.py [--sessions 100000]

Creates N established, idle sessions (a SYN, the target's SYN-ACK, one request answered) and
prints the resident-memory growth per session, measured with psutil around the build.
"""

from __future__ import annotations

import argparse
import gc

import psutil

from appliance.engine.table import SessionTable
from appliance.packet import ACK, PSH, SYN, TcpSegment, ip_to_int

ONLINE, TARGET = ip_to_int("198.18.0.2"), ip_to_int("198.18.0.3")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=100_000)
    args = ap.parse_args()
    proc = psutil.Process()
    table = SessionTable()
    gc.collect()
    before = proc.memory_info().rss
    now = 1000.0
    for i in range(args.sessions):
        ip, port = ip_to_int("198.18.0.100") + i // 50000, 10000 + i % 50000
        table.client_segment(TcpSegment(ip, ONLINE, port, 8080, 1000, 0, SYN, 65535, b"\x02\x04\x05\xb4", b"", 0, 1),
                             TARGET, 8080, now)
        table.target_segment(TcpSegment(TARGET, ip, 8080, port, 5000, 1001, SYN | ACK, 65535, b"\x02\x04\x05\xb4",
                                        b"", 0, 1), now)
        table.client_segment(TcpSegment(ip, ONLINE, port, 8080, 1001, 7001, ACK | PSH, 502, b"", b"GET /", 5, 2),
                             TARGET, 8080, now)
        table.target_segment(TcpSegment(TARGET, ip, 8080, port, 5001, 1006, ACK | PSH, 65535, b"", b"", 100, 2), now)
        if i % 1000 == 999:
            table.flush(now)
            table.take_output()
    table.flush(now)
    table.take_output()
    gc.collect()
    grown = proc.memory_info().rss - before
    print(f"{len(table.sessions)} idle established sessions: RSS +{grown / 2**20:.1f} MiB, "
          f"{grown / len(table.sessions):.0f} bytes per session")


if __name__ == "__main__":
    main()
