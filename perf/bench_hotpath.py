"""Micro-benchmark of the rewrite worker's per-packet work, without any I/O.

    .venv/bin/python perf/bench_hotpath.py [--sessions 200] [--requests 50]

Replays synthetic keep-alive sessions through parse -> SessionTable -> build, as one rewrite
worker would, and prints packets per second and microseconds per captured packet for each
stage measured side by side in one run. A figure, not a test: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import time

from appliance.core.packet import ACK, PSH, SYN, build_ipv4_tcp, headers_only, ip_to_int, parse_ipv4_tcp
from appliance.engine.table import SessionTable

CLIENT, ONLINE, TARGET = ip_to_int("198.18.0.1"), ip_to_int("198.18.0.2"), ip_to_int("198.18.0.3")
REQUEST = b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 200
RESPONSE_LEN = 153


T_ISN = 9_000_000


def captured_packets(sessions: int, requests: int) -> list[tuple[list[bytes], list[bytes]]]:
    """Per session: the client's packets (SYN, handshake ACK, requests each acking one response)
    and the target's headers as interceptd relays them (SYN-ACK, one answer per request)."""
    out = []
    for s in range(sessions):
        port, isn, o_isn = 20000 + s, 1000 * s + 1, 7_000_000
        pkts = [build_ipv4_tcp(CLIENT, ONLINE, port, 8080, isn, 0, SYN, 65535, b"\x02\x04\x05\xb4"),
                build_ipv4_tcp(CLIENT, ONLINE, port, 8080, isn + 1, o_isn + 1, ACK, 502)]
        answers = [build_ipv4_tcp(TARGET, CLIENT, 8080, port, T_ISN, isn + 1, SYN | ACK, 65535,
                                  b"\x02\x04\x05\xb4")]
        for r in range(requests):
            seq = isn + 1 + r * len(REQUEST)
            pkts.append(build_ipv4_tcp(CLIENT, ONLINE, port, 8080, seq, o_isn + 1 + r * RESPONSE_LEN,
                                       ACK | PSH, 502, b"", REQUEST))
            answers.append(headers_only(build_ipv4_tcp(TARGET, CLIENT, 8080, port, T_ISN + 1 + r * RESPONSE_LEN,
                                                       seq + len(REQUEST), ACK | PSH, 65535, b"",
                                                       b"r" * RESPONSE_LEN)))
        out.append((pkts, answers))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()
    flows = captured_packets(args.sessions, args.requests)
    total = sum(len(f) for f, _ in flows)

    t0 = time.perf_counter()
    for flow, _ in flows:
        for pkt in flow:
            parse_ipv4_tcp(pkt)
    t_parse = time.perf_counter() - t0

    table = SessionTable()
    now = 1000.0
    sent = 0
    t_build = 0.0
    t0 = time.perf_counter()
    for flow, answers in flows:
        table.client_segment(parse_ipv4_tcp(flow[0]), TARGET, 8080, now)
        table.flush(now)
        table.target_segment(parse_ipv4_tcp(answers[0], keep_payload=False), now)
        table.flush(now)
        table.client_segment(parse_ipv4_tcp(flow[1]), TARGET, 8080, now)
        for pkt, answer in zip(flow[2:], answers[1:], strict=False):
            table.client_segment(parse_ipv4_tcp(pkt), TARGET, 8080, now)
            table.flush(now)
            table.target_segment(parse_ipv4_tcp(answer, keep_payload=False), now)
            table.flush(now)
            out = table.take_output()
            b0 = time.perf_counter()
            for e in out:
                build_ipv4_tcp(e.src_ip, e.dst_ip, e.src_port, e.dst_port, e.seq, e.ack, e.flags, e.window,
                               e.options, e.payload, e.ip_id)
            t_build += time.perf_counter() - b0
            sent += len(out)
    t_all = time.perf_counter() - t0
    print(f"captured packets: {total}, packets emitted: {sent}, completed turns: "
          f"{table.counters.bytes_sent // len(REQUEST)}")
    print(f"parse only          {total / t_parse:>10,.0f} pkt/s  {1e6 * t_parse / total:6.2f} us/pkt")
    print(f"build only          {sent / t_build:>10,.0f} pkt/s  {1e6 * t_build / sent:6.2f} us/pkt")
    print(f"parse+engine+build  {total / t_all:>10,.0f} pkt/s  {1e6 * t_all / total:6.2f} us/captured pkt "
          f"(includes the relayed response headers' parse and handling)")


if __name__ == "__main__":
    main()
