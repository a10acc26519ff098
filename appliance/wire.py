"""Every frame that crosses a process or host boundary, and every endpoint name.

Batch frame (captured segments, and response headers), all fields big-endian::

    0       1       2               4                       8                              16
    +-------+-------+---------------+-----------------------+-------------------------------+
    |version| kind  |  count (u16)  |    source id (u32)    |        batch seq (u64)        |
    +-------+-------+---------------+-----------------------+-------------------------------+
    then `count` records:  timestamp ns (u64) | length (u32) | `length` bytes of IPv4 packet

`source id` names the sender (capture index, or an interceptd's random instance id) and
`batch seq` counts that sender's batches to one receiver, so receivers count lost batches.

Stats/heartbeat, settings and control frames are a version byte, a kind byte and a UTF-8 JSON
object. No pickle anywhere.

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
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

VERSION = 1

KIND_SEGMENTS = 1
KIND_RESPONSES = 2
KIND_STATS = 3
KIND_CONTROL = 4
KIND_SETTINGS = 5        # supervisor -> children: runtime settings (pause, sample rate, log level)

BATCH_HEADER = struct.Struct("!BBHIQ")
RECORD_HEADER = struct.Struct("!QI")
MAX_BATCH_RECORDS = 0xFFFF
MAX_RECORD_BYTES = 256 * 1024
MAX_JSON_FRAME = 1 << 20

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


def encode_json(kind: int, obj: dict) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    if len(body) > MAX_JSON_FRAME:
        raise WireError(f"JSON frame of {len(body)} bytes exceeds {MAX_JSON_FRAME}")
    return bytes((VERSION, kind)) + body


def decode_json(frame: bytes, kind: int) -> dict:
    if len(frame) < 2 or len(frame) > MAX_JSON_FRAME + 2:
        raise WireError(f"JSON frame of {len(frame)} bytes")
    if frame[0] != VERSION or frame[1] != kind:
        raise WireError(f"JSON frame version/kind {frame[0]}/{frame[1]}, expected {VERSION}/{kind}")
    try:
        obj = json.loads(frame[2:])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"bad JSON frame: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError("JSON frame is not an object")
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


def settings_endpoint(run_dir: str) -> str:
    return f"ipc://{os.path.join(run_dir, 'settings')}"


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
