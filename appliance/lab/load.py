"""HTTP/1.1 load generator for the lab: ``python -m appliance.lab.load --server IP:PORT MODE ...``.

Modes:
- ``mix``: ``--short`` one-request connections (``Connection: close``) and ``--keepalive`` connections
  carrying ``--per-conn`` sequential requests each, every ``--post-every``-th of them a POST of
  ``--post-size`` pseudo-random bytes (seeded per connection, so runs repeat and bodies differ per request);
  at most ``--concurrency`` connections at a time.
- ``paced``: ONE keep-alive connection, requests sent on a fixed schedule (``--rate`` per second for
  ``--duration`` seconds), pipelined: sending never waits for responses, which are read as they come.
- ``hold``: opens ``--conns`` connections, sends one request on each, prints ``READY`` on stdout, waits for
  one line on stdin, then sends the remaining ``--per-conn - 1`` requests on each and closes.
- ``burst``: ``--conns`` short connections as fast as possible, ``--concurrency`` at a time; with
  ``--port-range LO-HI`` the client ports cycle through that range, so ports are reused quickly.

Every mode stops within ``--max-seconds`` (then it reports ``"timed_out": true``). At the end one JSON
line goes to stdout: requests (sent), ok (answered 200), errors (requests not answered 200, plus
connections that failed to open), connections (opened), local_ports, elapsed, and mode-specific fields.
Exit status 0 when errors == 0 and it did not time out, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from appliance.lab.loadconn import Client, ClientConnection, ConnectionFailed, get_request, post_request

ALARM_MARGIN_SECONDS = 10
ERROR_SAMPLES = 5


@dataclass
class Tally:
    """Counters shared by all connections of one run; printed as the summary."""

    mode: str
    requests: int = 0
    ok: int = 0
    errors: int = 0
    connections: int = 0
    connect_failures: int = 0
    bytes_sent: int = 0
    local_ports: set[int] = field(default_factory=set)
    error_samples: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def error(self, message: str, count: int = 1) -> None:
        self.errors += count
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(message)

    def summary(self, elapsed: float, timed_out: bool) -> dict[str, Any]:
        return {
            "mode": self.mode, "requests": self.requests, "ok": self.ok, "errors": self.errors,
            "connections": self.connections, "connect_failures": self.connect_failures,
            "bytes_sent": self.bytes_sent, "elapsed": round(elapsed, 3), "timed_out": timed_out,
            **self.extra,
            "error_samples": self.error_samples,
            "distinct_local_ports": len(self.local_ports), "local_ports": sorted(self.local_ports),
        }


def parse_server(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected IP:PORT, got {text!r}")
    return host, int(port)


def parse_port_range(text: str) -> range:
    low, sep, high = text.partition("-")
    if not sep or not low.isdigit() or not high.isdigit() or not 0 < int(low) <= int(high) < 65536:
        raise argparse.ArgumentTypeError(f"expected LO-HI with 0 < LO <= HI < 65536, got {text!r}")
    return range(int(low), int(high) + 1)


async def open_counted(client: Client, tally: Tally) -> ClientConnection | None:
    """A new connection, counted in the tally (or the failure, counted and sampled)."""
    try:
        conn = await client.connect()
    except ConnectionFailed as exc:
        tally.connect_failures += 1
        tally.error(str(exc))
        return None
    tally.connections += 1
    tally.local_ports.add(conn.local_port)
    return conn


async def exchange(client: Client, tally: Tally, requests: Iterable[bytes], server_closes: bool) -> None:
    """One connection carrying `requests` one after another (each waits for its response), then closed."""
    conn = await open_counted(client, tally)
    if conn is None:
        return
    try:
        for request in requests:
            tally.requests += 1
            tally.bytes_sent += len(request)
            status = await conn.request(request, client.timeout)
            if status == 200:
                tally.ok += 1
            else:
                tally.error(f"port {conn.local_port}: " + (f"status {status}" if status else "no response"))
                break
    finally:
        await conn.close(client.timeout, wait_for_peer=server_closes)


def keepalive_requests(args: argparse.Namespace, host: str, conn_index: int) -> Iterator[bytes]:
    rng = random.Random(args.seed * 1_000_003 + conn_index)
    for i in range(1, args.per_conn + 1):
        path = f"/keepalive/{conn_index}/{i}"
        if args.post_every and i % args.post_every == 0:
            yield post_request(host, path, rng.randbytes(args.post_size))
        else:
            yield get_request(host, path)


async def run_mix(args: argparse.Namespace, client: Client, tally: Tally) -> None:
    gate = asyncio.Semaphore(args.concurrency)

    async def short(i: int) -> None:
        async with gate:
            await exchange(client, tally, [get_request(client.host_header, f"/short/{i}", close=True)], True)

    async def keepalive(c: int) -> None:
        async with gate:
            await exchange(client, tally, keepalive_requests(args, client.host_header, c), False)

    jobs = [keepalive(c) for c in range(args.keepalive)] + [short(i) for i in range(args.short)]
    await asyncio.gather(*jobs)


async def run_burst(args: argparse.Namespace, client: Client, tally: Tally) -> None:
    remaining = iter(range(args.conns))

    async def worker() -> None:
        for i in remaining:
            await exchange(client, tally, [get_request(client.host_header, f"/burst/{i}", close=True)], True)

    await asyncio.gather(*(worker() for _ in range(max(1, args.concurrency))))
    tally.extra["bind_retries"] = client.bind_retries


async def run_paced(args: argparse.Namespace, client: Client, tally: Tally) -> None:
    conn = await open_counted(client, tally)
    if conn is None:
        return
    loop = asyncio.get_running_loop()
    request = get_request(client.host_header, "/paced")
    total = max(1, round(args.rate * args.duration))
    start = loop.time()
    sent = 0
    try:
        while sent < total and not conn.is_closed():
            due = min(total, int((loop.time() - start) * args.rate) + 1)
            if due > sent:
                conn.send_pipelined(request, due - sent)
                sent = due
            await asyncio.sleep(max(0.0, start + sent / args.rate - loop.time()))
        send_seconds = loop.time() - start
        await conn.wait_responses(sent, client.timeout)
    finally:
        tally.requests = sent
        tally.bytes_sent = sent * len(request)
        tally.ok = conn.ok
        if conn.responses < sent:
            tally.error(f"{sent - conn.responses} requests unanswered", sent - conn.responses)
        if conn.responses > conn.ok:
            tally.error(f"{conn.responses - conn.ok} non-200 responses", conn.responses - conn.ok)
        await conn.close(client.timeout, wait_for_peer=False)
    answer_seconds = (conn.last_response_at or loop.time()) - start
    tally.extra.update({
        "rate_target": args.rate,
        "rate_sent": round(sent / send_seconds, 1) if send_seconds > 0 else None,
        "rate_achieved": round(conn.ok / answer_seconds, 1) if answer_seconds > 0 else None,
        "latency_ms": conn.latency_summary_ms(),
    })


async def read_stdin_line() -> str:
    """One line from stdin without a thread; a regular file or /dev/null is read directly."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    try:
        loop.add_reader(fd, readable)
    except PermissionError:
        return sys.stdin.readline()
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    return sys.stdin.readline()


async def run_hold(args: argparse.Namespace, client: Client, tally: Tally) -> None:
    opened = await asyncio.gather(*(open_counted(client, tally) for _ in range(args.conns)))
    conns = [c for c in opened if c is not None]

    async def send(conn: ClientConnection, n: int) -> bool:
        request = get_request(client.host_header, f"/hold/{conn.local_port}/{n}")
        tally.requests += 1
        tally.bytes_sent += len(request)
        status = await conn.request(request, client.timeout)
        if status == 200:
            tally.ok += 1
            return True
        tally.error(f"port {conn.local_port}: " + (f"status {status}" if status else "no response"))
        return False

    try:
        await asyncio.gather(*(send(conn, 1) for conn in conns))
        print("READY", flush=True)
        await read_stdin_line()

        async def rest(conn: ClientConnection) -> None:
            for n in range(2, args.per_conn + 1):
                if not await send(conn, n):
                    return

        await asyncio.gather(*(rest(conn) for conn in conns))
    finally:
        await asyncio.gather(*(conn.close(client.timeout, wait_for_peer=False) for conn in conns))


MODES = {"mix": run_mix, "paced": run_paced, "hold": run_hold, "burst": run_burst}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run one mode under the --max-seconds cap and return the summary."""
    host, port = args.server
    client = Client(host, port, timeout=args.timeout, port_range=getattr(args, "port_range", None))
    tally = Tally(args.mode)
    started = time.monotonic()
    timed_out = False
    try:
        await asyncio.wait_for(MODES[args.mode](args, client, tally), args.max_seconds)
    except TimeoutError:
        timed_out = True
    return tally.summary(time.monotonic() - started, timed_out)


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {text}")
    return value


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def add_run_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Run-wide options; accepted before the mode (with defaults) and after it (overriding)."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--server", type=parse_server, metavar="IP:PORT", default=default(None),
                        help="the HTTP server to load (required)")
    parser.add_argument("--max-seconds", type=positive, default=default(120.0),
                        help="hard cap on the whole run (120)")
    parser.add_argument("--timeout", type=positive, default=default(10.0),
                        help="connect and per-response timeout (10)")
    parser.add_argument("--seed", type=int, default=default(1), help="seed of the POST bodies (1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m appliance.lab.load",
                                     description="HTTP/1.1 load generator for the lab")
    add_run_options(parser, defaults=True)
    run_options = argparse.ArgumentParser(add_help=False)
    add_run_options(run_options, defaults=False)
    modes = parser.add_subparsers(dest="mode", required=True)
    mix = modes.add_parser("mix", parents=[run_options], help="short and keep-alive connections, some POSTs")
    mix.add_argument("--short", type=count, default=200, help="one-request connections (200)")
    mix.add_argument("--keepalive", type=count, default=20, help="keep-alive connections (20)")
    mix.add_argument("--per-conn", type=at_least_one, default=50,
                     help="requests per keep-alive connection (50)")
    mix.add_argument("--post-every", type=count, default=5,
                     help="every Nth keep-alive request is a POST (5; 0: none)")
    mix.add_argument("--post-size", type=count, default=65536, help="POST body bytes (65536)")
    mix.add_argument("--concurrency", type=at_least_one, default=10, help="connections at a time (10)")
    paced = modes.add_parser("paced", parents=[run_options],
                             help="one keep-alive connection at a fixed request rate")
    paced.add_argument("--rate", type=positive, default=5000.0, help="requests per second (5000)")
    paced.add_argument("--duration", type=positive, default=20.0, help="seconds of sending (20)")
    hold = modes.add_parser("hold", parents=[run_options],
                            help="open connections, wait for a line on stdin, finish them")
    hold.add_argument("--conns", type=count, default=20, help="connections (20)")
    hold.add_argument("--per-conn", type=at_least_one, default=10, help="requests per connection (10)")
    burst = modes.add_parser("burst", parents=[run_options], help="short connections as fast as possible")
    burst.add_argument("--conns", type=count, default=1000, help="connections (1000)")
    burst.add_argument("--concurrency", type=at_least_one, default=10, help="connections at a time (10)")
    burst.add_argument("--port-range", type=parse_port_range, metavar="LO-HI",
                       help="cycle client ports through this range (fast port reuse)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.server is None:
        parser.error("--server IP:PORT is required")
    # Backstop for a wedged loop: SIGALRM's default action ends the process.
    signal.alarm(int(args.max_seconds + args.timeout) + ALARM_MARGIN_SECONDS)
    summary = asyncio.run(run(args))
    signal.alarm(0)
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0 if summary["errors"] == 0 and not summary["timed_out"] else 1


if __name__ == "__main__":
    sys.exit(main())
