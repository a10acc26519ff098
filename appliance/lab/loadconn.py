"""Client connections of the load generator: request bytes, connect (optionally from chosen ports), responses.

Everything here runs on the load generator's event loop; nothing blocks.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections import deque
from typing import cast

RETRYABLE_PORT_ERRNOS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
PORT_CYCLE_PAUSE_SECONDS = 0.001


class ConnectionFailed(Exception):
    """A connection could not be opened within the timeout."""


def get_request(host: str, path: str, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path.encode(), host.encode(), connection)


def post_request(host: str, path: str, body: bytes, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return (b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (path.encode(), host.encode(), len(body), connection)) + body


class ClientConnection(asyncio.Protocol):
    """One client connection that parses responses as they arrive and counts them.

    Responses are matched to requests by order (HTTP/1.1 pipelining), which also gives per-request latency.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.local_port = 0
        self.buffer = bytearray()
        self.body_remaining = 0
        self.pending_status = 0
        self.responses = 0
        self.ok = 0
        self.last_status = 0
        self.last_response_at: float | None = None
        self.sent_at: deque[float] = deque()
        self.latencies: list[float] = []
        self.waiter: tuple[int, asyncio.Future[None]] | None = None
        self.closed: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.local_port = transport.get_extra_info("sockname")[1]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake(force=True)

    def is_closed(self) -> bool:
        return self.closed.done()

    def data_received(self, data: bytes) -> None:
        if self.body_remaining:
            # The buffer is empty while a body is outstanding.
            if len(data) < self.body_remaining:
                self.body_remaining -= len(data)
                return
            data = data[self.body_remaining:]
            self.body_remaining = 0
            self._response_done(self.pending_status)
        buf = self.buffer
        buf += data
        pos = 0
        end_of_data = len(buf)
        while pos < end_of_data:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            head = bytes(buf[pos:end])
            status = int(head[9:12]) if head.startswith(b"HTTP/1.") and head[9:12].isdigit() else -1
            length = _content_length(head)
            pos = end + 4
            available = end_of_data - pos
            if available < length:
                self.body_remaining = length - available
                self.pending_status = status
                pos = end_of_data
                break
            pos += length
            self._response_done(status)
        del buf[:pos]

    def _response_done(self, status: int) -> None:
        now = self.loop.time()
        self.responses += 1
        self.last_status = status
        self.last_response_at = now
        if status == 200:
            self.ok += 1
        if self.sent_at:
            self.latencies.append(now - self.sent_at.popleft())
        self._wake()

    def _wake(self, force: bool = False) -> None:
        if self.waiter is not None and (force or self.responses >= self.waiter[0]):
            future = self.waiter[1]
            self.waiter = None
            if not future.done():
                future.set_result(None)

    def send_pipelined(self, request: bytes, count: int = 1) -> None:
        """Write `count` copies of request without waiting for any response."""
        if self.transport is None or self.transport.is_closing():
            return
        now = self.loop.time()
        self.sent_at.extend(now for _ in range(count))
        self.transport.write(request * count if count > 1 else request)

    async def wait_responses(self, count: int, timeout: float) -> bool:
        """True once `count` responses arrived in all; False on timeout or if the connection closed first."""
        if self.responses >= count:
            return True
        if self.is_closed():
            return False
        future: asyncio.Future[None] = self.loop.create_future()
        self.waiter = (count, future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.waiter = None
        return self.responses >= count

    async def request(self, request: bytes, timeout: float) -> int:
        """Send one request and wait for its response; returns its status, or 0 when none came."""
        target = self.responses + 1
        self.send_pipelined(request)
        if await self.wait_responses(target, timeout):
            return self.last_status
        return 0

    async def close(self, timeout: float, wait_for_peer: bool) -> None:
        """Close; with wait_for_peer, first give the server up to `timeout` to close its side."""
        if self.transport is None:
            return
        if wait_for_peer and not self.is_closed():
            try:
                await asyncio.wait_for(asyncio.shield(self.closed), timeout)
            except TimeoutError:
                pass
        self.transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            self.transport.abort()

    def latency_summary_ms(self) -> dict[str, float] | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)

        def at(fraction: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000.0, 3)

        return {"p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1] * 1000.0, 3)}


def _content_length(head: bytes) -> int:
    lowered = head.lower()
    index = lowered.find(b"\r\ncontent-length:")
    if index < 0:
        return 0
    start = index + len(b"\r\ncontent-length:")
    stop = lowered.find(b"\r\n", start)
    return int(head[start:stop if stop >= 0 else len(head)])


class Client:
    """Opens connections to one server; with a port range, binds each connection to the next port of it."""

    def __init__(self, host: str, port: int, timeout: float, port_range: range | None = None) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.port_range = port_range
        self.host_header = f"{host}:{port}"
        self.bind_retries = 0
        self._next_port_index = 0

    async def connect(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        if self.port_range is None:
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(ClientConnection, self.host, self.port), self.timeout
                )
            except (OSError, TimeoutError) as exc:
                raise ConnectionFailed(f"connect {self.host_header}: {exc!r}") from exc
            return protocol
        sock = await self._connect_from_range(loop, self.port_range)
        _, protocol = await loop.create_connection(ClientConnection, sock=sock)
        return protocol

    async def _connect_from_range(self, loop: asyncio.AbstractEventLoop, ports: range) -> socket.socket:
        deadline = time.monotonic() + self.timeout
        tries_in_cycle = 0
        while time.monotonic() < deadline:
            local_port = ports[self._next_port_index]
            self._next_port_index = (self._next_port_index + 1) % len(ports)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            try:
                sock.bind(("0.0.0.0", local_port))
                await asyncio.wait_for(loop.sock_connect(sock, (self.host, self.port)),
                                       max(0.001, deadline - time.monotonic()))
                return sock
            except TimeoutError as exc:
                sock.close()
                raise ConnectionFailed(f"connect {self.host_header} from :{local_port}: timed out") from exc
            except OSError as exc:
                sock.close()
                if exc.errno not in RETRYABLE_PORT_ERRNOS:
                    raise ConnectionFailed(f"connect {self.host_header} from :{local_port}: {exc!r}") from exc
            self.bind_retries += 1
            tries_in_cycle += 1
            if tries_in_cycle >= len(ports):
                tries_in_cycle = 0
                await asyncio.sleep(PORT_CYCLE_PAUSE_SECONDS)
        raise ConnectionFailed(f"connect {self.host_header}: no free port in {ports.start}-{ports.stop - 1}")
