"""SYN flood for the lab: N SYNs, each from a distinct client (ip, port), as fast as a raw socket goes.

    python -m appliance.lab.flood --dst 198.18.0.2:8080 --count 1000000 [--first-ip 198.18.0.100] [--ips 100]

Runs inside the lab's client namespace only (the addresses are lab addresses; nothing answers
them). Prints one JSON line: SYNs sent, seconds, rate.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

from appliance.core.packet import SYN, build_ipv4_tcp, ip_to_int, mss_option


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.lab.flood")
    ap.add_argument("--dst", required=True, help="IP:PORT")
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--first-ip", default="198.18.0.100")
    ap.add_argument("--ips", type=int, default=100, help="source addresses used, from --first-ip on")
    args = ap.parse_args(argv)
    host, _, port = args.dst.rpartition(":")
    if not host.startswith("198.18."):
        print("flood: only lab addresses (198.18.0.0/15)", file=sys.stderr)
        return 2
    dst, first = ip_to_int(host), ip_to_int(args.first_ip)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    options = mss_option(1460)
    sent = errors = 0
    started = time.monotonic()
    for i in range(args.count):
        src = first + i % args.ips
        sport = 1024 + (i // args.ips) % 64000
        pkt = build_ipv4_tcp(src, dst, sport, int(port), 1000 + i, 0, SYN, 64240, options)
        try:
            sock.sendto(pkt, (host, 0))
            sent += 1
        except OSError:
            errors += 1
    took = time.monotonic() - started
    print(json.dumps({"sent": sent, "errors": errors, "seconds": round(took, 2), "rate": round(sent / took)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
