"""Frames as interceptd captures them, written to pcap files that pypcap replays into the very
callback interceptd's live capture uses (`Intercept.feed_file`); the target's side of whole
connections for compare mode (`conversation`, `expected_turns`); a stand-in capture for
interceptd's loop (`FakeCapture`); one ZeroMQ context per test whose sockets are all closed (`ZmqKit`)."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable

import dpkt
import zmq

from appliance.compare.turns import AssemblerSpec
from appliance.config.loader import WHOLE_SNAPLEN, InterceptConfig
from appliance.core import wire
from appliance.core.packet import ACK, DLT_EN10MB, DLT_RAW, FIN, PSH, SYN, build_ipv4_tcp
from appliance.interceptd.daemon import Intercept

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
TARGET, CLIENT = 0xC6120003, 0xC6120001


def answer(i: int = 0, options: bytes = b"\x01\x01\x08\x0a" + b"\x00" * 8, payload: bytes = b"ok", *,
           seq: int | None = None, ack: int = 2000, flags: int = ACK) -> bytes:
    """An IPv4/TCP answer of the target to client port 40000 + i."""
    return build_ipv4_tcp(TARGET, CLIENT, 8080, 40000 + i, 1000 + i if seq is None else seq, ack, flags, 512,
                          options, payload)


REQUEST = 100                     # bytes of each request in a conversation
SERVER_ISN, CLIENT_ISN = 9000, 5000


def conversation(i: int, answers: list[bytes], mss: int = 1000, fin: bool = True) -> list[bytes]:
    """The target's packets on the connection of client port 40000 + i: its SYN-ACK, then each
    answer (to a request of REQUEST bytes, so the ACK moves before each) in `mss` segments, then
    its FIN. The assembler ends answer n when answer n+1 (or the FIN) arrives."""
    seq, ack = SERVER_ISN, CLIENT_ISN + 1
    out = [answer(i, b"", b"", seq=seq, ack=ack, flags=SYN | ACK)]
    seq += 1
    for data in answers:
        ack += REQUEST
        for at in range(0, len(data), mss):
            out.append(answer(i, b"", data[at:at + mss], seq=seq, ack=ack, flags=ACK | PSH))
            seq += len(data[at:at + mss])
    if fin:
        out.append(answer(i, b"", b"", seq=seq, ack=ack, flags=FIN | ACK))
    return out


def expected_turns(i: int, answers: list[bytes], head_bytes: int = 512) -> list[tuple[object, ...]]:
    """What the turns of `conversation(i, answers)` say of the answers' bytes, as `turn_facts` gives it."""
    return [((TARGET, 8080, CLIENT, 40000 + i), n, REQUEST * (n + 1), len(data), digest(data), data[:head_bytes])
            for n, data in enumerate(answers)]


def turn_facts(turn: wire.TurnRecord) -> tuple[object, ...]:
    """(flow, index, request offset, length, digest of the whole answer, head) of a non-HTTP turn."""
    return (turn.flow, turn.index, turn.request_offset, turn.length, turn.digest, turn.head)


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=wire.TURN_DIGEST_SIZE).digest()


def with_data_offset(ip: bytes, words: int) -> bytes:
    """`ip` (IHL 5) with its TCP data offset field set to `words`."""
    return ip[:32] + bytes([(words << 4) | (ip[32] & 0x0F)]) + ip[33:]


def pcap_bytes(frames: list[bytes], linktype: int = DLT_EN10MB) -> bytes:
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, snaplen=65535, linktype=linktype, nano=True)
    for n, frame in enumerate(frames):
        writer.writepkt(frame, 1000.0 + n * 0.001)
    return out.getvalue()


def compare_config(spec: AssemblerSpec | None = None) -> InterceptConfig:
    """interceptd's configuration in compare mode, as intercept_config makes it."""
    return InterceptConfig(interfaces=("lo",), bpf="tcp", snaplen=WHOLE_SNAPLEN, compare=spec or AssemblerSpec())


def interceptd(*shard_counts: int, compare: AssemblerSpec | None = None, turn_counts: tuple[int, ...] = ()
               ) -> Intercept:
    """An interceptd (nothing opened) whose splitter has every shard of each count subscribed, in
    compare mode with `compare` (then its turn feed has every shard of each of `turn_counts`)."""
    ic = Intercept(compare_config(compare) if compare else InterceptConfig(interfaces=("lo",), bpf="tcp"))
    for count in shard_counts:
        for shard in range(count):
            ic.subscription(b"\x01" + wire.shard_topic(count, shard))
    for count in turn_counts:
        for shard in range(count):
            ic.subscription(b"\x01" + wire.turn_topic(count, shard))
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

    def __init__(self, linktype: int = DLT_RAW, clock: Callable[[], int] = time.time_ns) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        self.linktype = linktype
        self.clock = clock
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
            callback(self.clock(), self.frames.popleft(), *args)
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


__all__ = ["CLIENT", "CLIENT_ISN", "DLT_EN10MB", "DLT_RAW", "ETH", "REQUEST", "SERVER_ISN", "TARGET", "FakeCapture",
           "ZmqKit", "answer", "compare_config", "conversation", "digest", "expected_turns", "feed", "interceptd",
           "pcap_bytes", "turn_facts", "wait_for", "with_data_offset"]
