"""A small, fast HTTP/1.1 server that records a digest of everything each connection sent it.

Run as ``python -m appliance.lab.httpservice --bind IP --port 8080 --record FILE [--delay-ms F]``.

Protocol contract:
- keep-alive by default; HTTP/1.0 requests and ``Connection: close`` close after their response;
- request bodies by Content-Length only (Transfer-Encoding is answered 501 and the connection closed);
- pipelined requests are answered in order; every answer is ``200 OK`` with the same 64-byte body;
- ``--delay-ms`` holds every response that long (responses keep their order);
- ``--status-for PATH=CODE`` (repeatable) answers requests for PATH (query string aside) with that
  status and the same body: a deliberate change, for answer comparison.

Recording contract (one JSON object per line, appended and flushed to FILE):
``{"peer": "ip:port", "bytes": n, "sha256": hex, "requests": n, "opened": epoch, "closed": epoch,
"open": false}``
where bytes and sha256 cover every byte received on the connection, and requests counts complete requests.
A line is written when a connection closes; SIGUSR1 writes a snapshot line for each open connection, and
SIGTERM/SIGINT write one for each connection still open before exiting. Those lines carry
``"open": true``, ``"closed": null`` and ``"at": epoch``.

On start the service prints ``LISTENING ip:port`` to stdout (port 0 picks a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import sys
import time
from collections import deque
from typing import IO, Any, cast

BODY = b"tcpcopy-lab httpservice: fixed response body".ljust(63, b".") + b"\n"
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(BODY)
KEEP_ALIVE_RESPONSE = _HEAD + b"\r\n" + BODY
CLOSING_RESPONSE = _HEAD + b"Connection: close\r\n\r\n" + BODY


def response(status: int, keep_alive: bool) -> bytes:
    """The fixed body under another status line (--status-for)."""
    head = _HEAD.replace(b"200 OK", b"%d %s" % (status, _REASONS.get(status, b"Changed")), 1)
    return head + (b"\r\n" if keep_alive else b"Connection: close\r\n\r\n") + BODY

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 256 * 1024 * 1024
LISTEN_BACKLOG = 4096
_REASONS = {400: b"Bad Request", 413: b"Content Too Large", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 501: b"Not Implemented"}


class BadRequest(Exception):
    """The request cannot be served; the connection is answered with `status` and closed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def error_response(status: int) -> bytes:
    return (b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            % (status, _REASONS.get(status, b"Error")))


def request_path(head: bytes) -> bytes:
    """The path of a request head's target, without its query string."""
    target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
    return target.partition(b"?")[0]


def parse_head(head: bytes) -> tuple[bool, int]:
    """Parse a request head (without the final blank line) into (keep_alive, content_length)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest(400)
    keep_alive = parts[2] != b"HTTP/1.0"
    length = 0
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadRequest(400)
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise BadRequest(400) from None
            if length < 0:
                raise BadRequest(400)
            if length > MAX_BODY_BYTES:
                raise BadRequest(413)
        elif name == b"connection":
            if b"close" in value.lower():
                keep_alive = False
        elif name == b"transfer-encoding":
            raise BadRequest(501)
    return keep_alive, length


class Recorder:
    """Appends one JSON line per record to a file and flushes it; a no-op without a path."""

    def __init__(self, path: str | None) -> None:
        self._file: IO[str] | None = open(path, "a", encoding="utf-8") if path else None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Service:
    """Shared state of one server: the recorder, the response delay and the open connections."""

    def __init__(self, recorder: Recorder, delay_seconds: float, status_for: dict[bytes, int] | None = None) -> None:
        self.recorder = recorder
        self.delay = delay_seconds
        self.status_for = status_for or {}
        self.connections: set[HttpConnection] = set()
        self.shut_down = False
        self.connections_total = 0
        self.requests_total = 0

    def snapshot(self) -> None:
        """Write an "open": true line for every open connection (SIGUSR1 and shutdown)."""
        for conn in list(self.connections):
            self.recorder.write(conn.record(still_open=True))

    def shutdown(self) -> None:
        """Record the connections still open, then drop them without recording them again."""
        self.snapshot()
        self.shut_down = True
        for conn in list(self.connections):
            conn.abort()


class HttpConnection(asyncio.Protocol):
    """One server-side connection. Runs on the event loop; never blocks."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.opened = time.time()
        self.digest = hashlib.sha256()
        self.received = 0
        self.requests = 0
        self.buffer = bytearray()
        self.body_remaining = 0
        self.keep_alive_after_body = True
        self.closing = False
        self.status: int | None = None      # --status-for: the status of the request being answered
        self.eof = False
        self.delayed: deque[tuple[float, bytes, bool]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def record(self, still_open: bool = False) -> dict[str, Any]:
        now = time.time()
        record: dict[str, Any] = {
            "peer": self.peer, "bytes": self.received, "sha256": self.digest.hexdigest(),
            "requests": self.requests, "opened": self.opened,
            "closed": None if still_open else now, "open": still_open,
        }
        if still_open:
            record["at"] = now
        return record

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.service.connections.add(self)
        self.service.connections_total += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.service.connections.discard(self)
        if not self.service.shut_down:
            self.service.recorder.write(self.record())

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.eof = True
        # True keeps the transport open so delayed responses can still be written.
        return bool(self.delayed)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.digest.update(data)
        if self.closing:
            return
        out: list[bytes] = []
        try:
            self._parse(data, out)
        except BadRequest as exc:
            self.closing = True
            self.buffer.clear()
            self._respond(error_response(exc.status), close=True, out=out)
        transport = cast(asyncio.Transport, self.transport)
        if out:
            transport.write(b"".join(out))
        if self.closing and not self.delayed:
            transport.close()

    def _parse(self, data: bytes, out: list[bytes]) -> None:
        if self.body_remaining:
            # While a body is outstanding the buffer is empty, so body bytes are skipped without copying.
            if len(data) < self.body_remaining:
                self.body_remaining -= len(data)
                return
            data = data[self.body_remaining:]
            self.body_remaining = 0
            self._request_done(self.keep_alive_after_body, out)
            if self.closing or not data:
                return
        buf = self.buffer
        buf += data
        pos = 0
        end_of_data = len(buf)
        while pos < end_of_data:
            while buf.startswith(b"\r\n", pos):
                pos += 2
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if end_of_data - pos > MAX_HEAD_BYTES:
                    raise BadRequest(431)
                break
            head = bytes(buf[pos:end])
            keep_alive, length = parse_head(head)
            self.status = self.service.status_for.get(request_path(head)) if self.service.status_for else None
            pos = end + 4
            if length:
                available = end_of_data - pos
                if available < length:
                    self.body_remaining = length - available
                    self.keep_alive_after_body = keep_alive
                    pos = end_of_data
                    break
                pos += length
            self._request_done(keep_alive, out)
            if self.closing:
                pos = end_of_data
                break
        del buf[:pos]

    def _request_done(self, keep_alive: bool, out: list[bytes]) -> None:
        self.requests += 1
        self.service.requests_total += 1
        if not keep_alive:
            self.closing = True
        if self.status is not None:
            self._respond(response(self.status, keep_alive), close=not keep_alive, out=out)
            return
        self._respond(KEEP_ALIVE_RESPONSE if keep_alive else CLOSING_RESPONSE, close=not keep_alive, out=out)

    def _respond(self, response: bytes, close: bool, out: list[bytes]) -> None:
        if not self.service.delay:
            out.append(response)
            return
        loop = asyncio.get_running_loop()
        self.delayed.append((loop.time() + self.service.delay, response, close))
        if self.timer is None:
            self.timer = loop.call_at(self.delayed[0][0], self._release_due)

    def _release_due(self) -> None:
        """Timer callback: write every delayed response that is due, in arrival order."""
        self.timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            self.delayed.clear()
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        out: list[bytes] = []
        close = False
        while self.delayed and self.delayed[0][0] <= now:
            _, response, close = self.delayed.popleft()
            out.append(response)
            if close:
                self.delayed.clear()
                break
        if out:
            transport.write(b"".join(out))
        if close or (self.eof and not self.delayed):
            transport.close()
        elif self.delayed:
            self.timer = loop.call_at(self.delayed[0][0], self._release_due)


async def serve(bind: str, port: int, record_path: str | None, delay_ms: float,
                status_for: dict[bytes, int] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; runs in the service process's only thread."""
    loop = asyncio.get_running_loop()
    recorder = Recorder(record_path)
    service = Service(recorder, delay_ms / 1000.0, status_for)
    server = await loop.create_server(
        lambda: HttpConnection(service), bind, port, backlog=LISTEN_BACKLOG, reuse_address=True
    )
    host, actual_port = server.sockets[0].getsockname()[:2]
    print(f"LISTENING {host}:{actual_port}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, service.snapshot)
    await stop.wait()
    server.close()
    service.shutdown()
    recorder.close()
    print(f"httpservice: {service.connections_total} connections, {service.requests_total} requests",
          file=sys.stderr, flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m appliance.lab.httpservice",
                                     description="HTTP/1.1 server recording a digest per connection")
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks one)")
    parser.add_argument("--record", metavar="FILE", help="append one JSON line per connection to FILE")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="hold every response this long")
    parser.add_argument("--status-for", action="append", default=[], metavar="PATH=CODE",
                        help="answer PATH with status CODE instead of 200 (repeatable)")
    return parser


def _status_for(items: list[str]) -> dict[bytes, int]:
    out = {}
    for item in items:
        path, _, code = item.rpartition("=")
        if not path.startswith("/") or not code.isdigit() or not 100 <= int(code) <= 599:
            raise ValueError(f"--status-for {item!r}: PATH=CODE, e.g. /x=500")
        out[path.encode()] = int(code)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.delay_ms < 0:
        build_parser().error("--delay-ms must be >= 0")
    try:
        status_for = _status_for(args.status_for)
    except ValueError as exc:
        build_parser().error(str(exc))
    return asyncio.run(serve(args.bind, args.port, args.record, args.delay_ms, status_for))


if __name__ == "__main__":
    sys.exit(main())
