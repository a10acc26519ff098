"""Frames as interceptd captures them, written to pcap files that pypcap replays into the very
callback interceptd's live capture uses (`Intercept.feed_file`); a stand-in capture for interceptd's
loop (`FakeCapture`); one ZeroMQ context per test whose sockets are all closed (`ZmqKit`)."""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable

import dpkt
import zmq

from appliance.config.loader import InterceptConfig
from appliance.core import wire
from appliance.core.packet import ACK, DLT_EN10MB, DLT_RAW, build_ipv4_tcp
from appliance.interceptd.daemon import Intercept

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
TARGET, CLIENT = 0xC6120003, 0xC6120001


def answer(i: int = 0, options: bytes = b"\x01\x01\x08\x0a" + b"\x00" * 8, payload: bytes = b"ok") -> bytes:
    """An IPv4/TCP answer of the target to client port 40000 + i."""
    return build_ipv4_tcp(TARGET, CLIENT, 8080, 40000 + i, 1000 + i, 2000, ACK, 512, options, payload)


def with_data_offset(ip: bytes, words: int) -> bytes:
    """`ip` (IHL 5) with its TCP data offset field set to `words`."""
    return ip[:32] + bytes([(words << 4) | (ip[32] & 0x0F)]) + ip[33:]


def pcap_bytes(frames: list[bytes], linktype: int = DLT_EN10MB) -> bytes:
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, snaplen=65535, linktype=linktype, nano=True)
    for n, frame in enumerate(frames):
        writer.writepkt(frame, 1000.0 + n * 0.001)
    return out.getvalue()


def interceptd(*shard_counts: int) -> Intercept:
    """An interceptd (nothing opened) whose splitter has every shard of each count subscribed."""
    ic = Intercept(InterceptConfig(interfaces=("lo",), bpf="tcp"))
    for count in shard_counts:
        for shard in range(count):
            ic.split.subscription(b"\x01" + wire.shard_topic(count, shard))
    return ic


def feed(ic: Intercept, frames: list[bytes], linktype: int = DLT_EN10MB) -> int:
    """Write `frames` to a pcap file and replay it through `ic`'s capture callback with pypcap."""
    fd, path = tempfile.mkstemp(suffix=".pcap")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pcap_bytes(frames, linktype))
        return ic.feed_file(path)
    finally:
        os.unlink(path)


class FakeCapture:
    """Stands in for a pcap handle in interceptd's loop (`Intercept.attach`): the test queues frames,
    `dispatch` hands them to the callback as libpcap does, and `fileno` is readable exactly while
    frames wait, so the loop's poll and its COALESCE select see them."""

    def __init__(self, linktype: int = DLT_RAW) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        self.linktype = linktype
        self.frames: deque[bytes] = deque()
        self.delivered = 0

    def put(self, frames: list[bytes]) -> None:
        if frames and not self.frames:
            os.write(self._write, b"!")
        self.frames.extend(frames)

    def datalink(self) -> int:
        return self.linktype

    def fileno(self) -> int:
        return self._read

    def dispatch(self, cnt: int, callback: Callable[..., None], *args: object) -> int:
        n = 0
        while self.frames and (cnt <= 0 or n < cnt):
            callback(time.time_ns(), self.frames.popleft(), *args)
            n += 1
        if not self.frames:
            try:
                os.read(self._read, 64)
            except BlockingIOError:
                pass
        self.delivered += n
        return n

    def stats(self) -> tuple[int, int, int]:
        return self.delivered, 0, 0

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


class ZmqKit:
    """One real zmq.Context for a test; every socket made here (or `keep`) is closed at linger 0
    before the context terminates (the unit suite's hang guard bounds a term that would block)."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sockets: list[zmq.Socket] = []

    def socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        self.sockets.append(sock)
        return sock

    def keep(self, *sockets: zmq.Socket) -> None:
        self.sockets.extend(sockets)

    def close(self) -> None:
        for sock in reversed(self.sockets):
            sock.close(linger=0)
        self.ctx.term()


def wait_for(what: Callable[[], bool], turn: Callable[[float], object], timeout: float = 5.0) -> None:
    """Call `turn(seconds left)` until `what()` holds; fail after `timeout` seconds (a hang, not a wait)."""
    deadline = time.monotonic() + timeout
    while not what():
        left = deadline - time.monotonic()
        assert left > 0, "timed out"
        turn(left)


__all__ = ["CLIENT", "DLT_EN10MB", "DLT_RAW", "ETH", "TARGET", "FakeCapture", "ZmqKit", "answer", "feed", "interceptd",
           "pcap_bytes", "wait_for", "with_data_offset"]
