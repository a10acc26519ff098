"""Every frame that crosses a process or host boundary, and every endpoint name.

Batch frame (captured segments, and response headers), all fields big-endian::

    0       1       2               4                       8                              16
    +-------+-------+---------------+-----------------------+-------------------------------+
    |version| kind  |  count (u16)  |    source id (u32)    |        batch seq (u64)        |
    +-------+-------+---------------+-----------------------+-------------------------------+
    then `count` records:  timestamp ns (u64) | length (u32) | `length` bytes of IPv4 packet

`source id` names the sender (capture index, or an interceptd's random instance id) and
`batch seq` counts that sender's batches to one receiver, so receivers count lost batches.

Stats/heartbeat (children -> supervisor, PUSH -> PULL), runtime settings (supervisor -> children,
PUB -> SUB) and control frames are a version byte, a kind byte and a UTF-8 JSON object. No pickle
anywhere. Every JSON frame read from a socket goes through `decode_json`, which
turns any bad input into a WireError: oversized or deeply nested frames, integers outside 64 bits
(Python refuses over 4,300 digits with a bare ValueError), NaN and infinities.

Every ZeroMQ socket has ZMQ_MAXMSGSIZE set to the largest legitimate frame it can receive
(`MAX_*_MESSAGE` below): a peer that sends more is disconnected by ZeroMQ before the frame is
allocated.

interceptd -> tcpcopyd (XPUB -> SUB, TCP): every message has two frames, a topic and a body.
ZeroMQ matches subscriptions on the topic, so each rewrite worker receives only its own shard::

    topic  b"R" | shards (u16) | shard (u16)     body: a batch of response headers of the clients
                                                  that `flowkey.shard_of(ip, port, shards)` gives `shard`
    topic  b"I"                                   body: interceptd's stats frame (JSON), once a second

interceptd learns from the subscriptions which shard counts are in use (online hosts may run
different numbers of workers) and splits every batch for each of them; `batch seq` counts per topic.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

VERSION = 1

KIND_SEGMENTS = 1
KIND_RESPONSES = 2
KIND_STATS = 3
KIND_CONTROL = 4
KIND_RUNTIME = 5        # supervisor -> children: runtime settings (pause, sample rate, log level)

BATCH_HEADER = struct.Struct("!BBHIQ")
RECORD_HEADER = struct.Struct("!QI")
MAX_BATCH_RECORDS = 0xFFFF
MAX_RECORD_BYTES = 256 * 1024
MAX_JSON_FRAME = 1 << 20
MAX_JSON_DEPTH = 32            # nesting of arrays and objects; the status document needs 7
JSON_INT_RANGE = (-(1 << 63), (1 << 64) - 1)

# ZMQ_MAXMSGSIZE of each kind of socket: the largest frame it may legitimately receive.
MAX_JSON_MESSAGE = 2 + MAX_JSON_FRAME                   # control, stats and runtime sockets
MAX_SEGMENT_RECORDS = 512      # records in a batch of captured segments: capture's batch_max, reader's BATCH
MAX_SEGMENT_MESSAGE = BATCH_HEADER.size + MAX_SEGMENT_RECORDS * (RECORD_HEADER.size + MAX_RECORD_BYTES)
MAX_ANSWER_HEADER = 60 + 60    # an answer as interceptd publishes it: IP and TCP headers with options
MAX_RESPONSE_MESSAGE = max(BATCH_HEADER.size + MAX_BATCH_RECORDS * (RECORD_HEADER.size + MAX_ANSWER_HEADER),
                           MAX_JSON_MESSAGE)            # a worker's SUB to interceptd: batches and its stats
# interceptd's XPUB receives subscriptions (6 bytes), but ZMTP handshake commands pass the same limit:
# a CURVE INITIATE is about 300 bytes (256 refuses every CURVE subscriber), metadata can add more
MAX_SUBSCRIBER_MESSAGE = 4096

DEFAULT_INTERCEPT_PORT = 36524


class WireError(ValueError):
    """A frame that does not decode; the receiver counts it and drops it."""


@dataclass(slots=True)
class BatchHeader:
    kind: int
    count: int
    source: int
    seq: int


class BatchBuilder:
    """Accumulates records into one batch frame. Runs in whichever process sends batches."""

    __slots__ = ("kind", "source", "seq", "_parts", "count", "size")

    def __init__(self, kind: int, source: int) -> None:
        self.kind = kind
        self.source = source & 0xFFFFFFFF
        self.seq = 0
        self._parts: list[bytes] = []
        self.count = 0
        self.size = 0

    def add(self, ts_ns: int, packet: bytes | memoryview) -> None:
        self._parts.append(RECORD_HEADER.pack(ts_ns, len(packet)))
        self._parts.append(bytes(packet))
        self.count += 1
        self.size += RECORD_HEADER.size + len(packet)

    def take(self) -> bytes:
        """The frame for the records added so far; the builder starts a new batch."""
        frame = BATCH_HEADER.pack(VERSION, self.kind, self.count, self.source, self.seq) + b"".join(self._parts)
        self.seq += 1
        self._parts = []
        self.count = 0
        self.size = 0
        return frame


def decode_batch_header(frame: bytes | memoryview) -> BatchHeader:
    """Only the header of a batch frame (the records are not checked). Raises WireError."""
    if len(frame) < BATCH_HEADER.size:
        raise WireError(f"batch frame too short: {len(frame)} bytes")
    version, kind, count, source, seq = BATCH_HEADER.unpack_from(frame, 0)
    if version != VERSION:
        raise WireError(f"batch version {version}, expected {VERSION}")
    if kind not in (KIND_SEGMENTS, KIND_RESPONSES):
        raise WireError(f"unknown batch kind {kind}")
    return BatchHeader(kind, count, source, seq)


def decode_batch(frame: bytes | memoryview) -> tuple[BatchHeader, list[tuple[int, memoryview]]]:
    """Split a batch frame into (header, [(ts_ns, packet view)]). Raises WireError."""
    view = memoryview(frame)
    header = decode_batch_header(view)
    count = header.count
    records: list[tuple[int, memoryview]] = []
    at = BATCH_HEADER.size
    end = len(view)
    for _ in range(count):
        if at + RECORD_HEADER.size > end:
            raise WireError("batch truncated in a record header")
        ts_ns, length = RECORD_HEADER.unpack_from(view, at)
        at += RECORD_HEADER.size
        if length > MAX_RECORD_BYTES or at + length > end:
            raise WireError(f"record length {length} runs past the frame")
        records.append((ts_ns, view[at:at + length]))
        at += length
    if at != end:
        raise WireError(f"{end - at} trailing bytes after {count} records")
    return header, records


def iter_batch(frame: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    return iter(decode_batch(frame)[1])


def encode_json(kind: int, obj: dict[str, Any]) -> bytes:
    """A JSON frame; WireError for what `decode_json` would refuse (too big, NaN or infinity)."""
    try:
        body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, RecursionError) as exc:
        raise WireError(f"JSON frame not encodable: {exc}") from None
    if len(body) > MAX_JSON_FRAME:
        raise WireError(f"JSON frame of {len(body)} bytes exceeds {MAX_JSON_FRAME}")
    return bytes((VERSION, kind)) + body


def _json_int(text: str) -> int:
    if len(text) > 21:                                   # before int(): it is quadratic in the digits
        raise WireError(f"JSON integer of {len(text)} digits")
    value = int(text)
    if not JSON_INT_RANGE[0] <= value <= JSON_INT_RANGE[1]:
        raise WireError(f"JSON integer {value} outside 64 bits")
    return value


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise WireError(f"JSON number {text[:32]!r} overflows a float")
    return value


def _json_constant(text: str) -> float:
    raise WireError(f"JSON constant {text} is not allowed")


def _check_depth(obj: object) -> None:
    """Iterative, so a deep document cannot exhaust the stack of whoever re-encodes it."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise WireError(f"JSON nested deeper than {MAX_JSON_DEPTH}")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def decode_json(frame: bytes, kind: int) -> dict[str, Any]:
    """The one decoder of JSON frames read from a socket, in every process: a dict, or WireError for
    any bad input (size, version, kind, syntax, encoding, nesting, numbers out of range)."""
    if len(frame) < 2 or len(frame) > MAX_JSON_MESSAGE:
        raise WireError(f"JSON frame of {len(frame)} bytes")
    if frame[0] != VERSION or frame[1] != kind:
        raise WireError(f"JSON frame version/kind {frame[0]}/{frame[1]}, expected {VERSION}/{kind}")
    try:
        obj = json.loads(frame[2:], parse_int=_json_int, parse_float=_json_float,
                         parse_constant=_json_constant)
    except WireError as exc:
        raise WireError(f"bad JSON frame: {exc}") from None
    # ValueError covers JSONDecodeError, UnicodeDecodeError and int() refusing too many digits
    except (ValueError, RecursionError) as exc:
        raise WireError(f"bad JSON frame: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise WireError("JSON frame is not an object")
    _check_depth(obj)
    return obj


SHARD_TOPIC = struct.Struct("!cHH")
STATS_TOPIC = b"I"


def shard_topic(shards: int, shard: int) -> bytes:
    """The topic of the response headers that belong to `shard` of `shards` workers."""
    return SHARD_TOPIC.pack(b"R", shards, shard)


def parse_shard_topic(topic: bytes) -> tuple[int, int] | None:
    """(shards, shard) of a shard topic; None for any other topic (stats, garbage)."""
    if len(topic) != SHARD_TOPIC.size or topic[:1] != b"R":
        return None
    _, shards, shard = SHARD_TOPIC.unpack(topic)
    return (shards, shard) if 0 <= shard < shards else None


# Endpoints: the run directory holds every ipc socket of one tcpcopyd.
def segments_endpoint(run_dir: str, shard: int) -> str:
    return f"ipc://{os.path.join(run_dir, f'seg-{shard}')}"


def stats_endpoint(run_dir: str) -> str:
    return f"ipc://{os.path.join(run_dir, 'stats')}"


def runtime_endpoint(run_dir: str) -> str:
    return f"ipc://{os.path.join(run_dir, 'runtime')}"


def control_endpoint(run_dir: str) -> str:
    return f"ipc://{os.path.join(run_dir, 'ctl')}"


def intercept_endpoint(host: str, port: int = DEFAULT_INTERCEPT_PORT) -> str:
    return f"tcp://{host}:{port}"


def parse_intercept_address(text: str) -> tuple[str, int]:
    """`HOST[:PORT]` as given to `-s`; raises ValueError with the offending text."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = text.strip(), str(DEFAULT_INTERCEPT_PORT)
    if not host:
        raise ValueError(f"intercept address {text!r} has no host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"intercept address {text!r}: port must be 1-65535")
    return host, int(port)
