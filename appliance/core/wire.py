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
    topic  b"T" | shards (u16) | shard (u16)     body: compare mode only, a batch of the target's answer
                                                  turns of that shard's clients (see the end of this module)

interceptd learns from the subscriptions which shard counts are in use (online hosts may run
different numbers of workers) and splits every batch for each of them; `batch seq` counts per topic.
Header topics and turn topics are counted apart: a worker comparing answers subscribes to both.
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
    return header, _records(view, header.count, MAX_RECORD_BYTES)


def _records(view: memoryview, count: int, max_record: int) -> list[tuple[int, memoryview]]:
    """The record walker of every batch kind: `count` records after the batch header, each at most
    `max_record` bytes, exactly filling the frame. [(ts_ns, record view)]; raises WireError."""
    records: list[tuple[int, memoryview]] = []
    at = BATCH_HEADER.size
    end = len(view)
    for _ in range(count):
        if at + RECORD_HEADER.size > end:
            raise WireError("batch truncated in a record header")
        ts_ns, length = RECORD_HEADER.unpack_from(view, at)
        at += RECORD_HEADER.size
        if length > max_record or at + length > end:
            raise WireError(f"record length {length} runs past the frame")
        records.append((ts_ns, view[at:at + length]))
        at += length
    if at != end:
        raise WireError(f"{end - at} trailing bytes after {count} records")
    return records


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
    # (another name than `exc` above: mypyc types an except variable by its first clause)
    except (ValueError, RecursionError) as err:
        raise WireError(f"bad JSON frame: {str(err)[:200]}") from None
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


# ==== compare mode: answer turns, interceptd -> tcpcopyd (issue 16) ============================
# A turn is what a server answered to one request (appliance/compare/turns.py assembles it on both
# hosts). interceptd publishes the target's turns as batches of kind KIND_TURNS under the topic
# b"T" | shards (u16) | shard (u16), so only workers running compare mode subscribe to them and a
# worker without it never sees the kind. A batch is the usual BATCH_HEADER and RECORD_HEADERs
# (record timestamp = the turn's last byte time); each record body is one turn, big-endian:
#
#     0               4       6               10      12              16              20
#     +---------------+-------+---------------+-------+---------------+---------------+
#     | server ip u32 |port16 | client ip u32 |port16 | request end   | request offset|
#     +---------------+-------+---------------+-------+---------------+---------------+
#     20              24                      32                      40
#     +---------------+-----------------------+-----------------------+
#     | index u32     | first byte ns (u64)   | last byte ns (u64)    |
#     +---------------+-----------------------+-----------------------+
#     40                      48              52              68              84      86      88
#     +-----------------------+---------------+---------------+---------------+-------+-------+
#     | length (u64)          | body offset   | digest (16)   | body digest   | flags |headlen|
#     +-----------------------+---------------+---------------+---------------+-------+-------+
#     then `headlen` bytes: the first bytes of the answer
#
# `request offset` is meaningful only with TURN_ISN_KNOWN (0 otherwise); `body offset` and `body
# digest` only with TURN_HTTP_BODY (NO_BODY_OFFSET and zeros otherwise). Digests are BLAKE2b of the
# captured in-order bytes: `digest` covers the whole turn, or with TURN_HTTP_BODY only the HTTP head
# (up to `body offset`), the rest being in `body digest`.
KIND_TURNS = 6

TURN_RECORD = struct.Struct("!IHIHIIIQQQI16s16sHH")
TURN_DIGEST_SIZE = 16
MAX_TURN_HEAD = 4096           # bytes of an answer's head a turn may carry (compare head_bytes <= this)
MAX_TURN_RECORDS = 1024        # turns in one batch
MAX_TURN_RECORD = TURN_RECORD.size + MAX_TURN_HEAD
MAX_TURN_MESSAGE = BATCH_HEADER.size + MAX_TURN_RECORDS * (RECORD_HEADER.size + MAX_TURN_RECORD)
NO_BODY_OFFSET = 0xFFFFFFFF

TURN_INCOMPLETE = 0x0001       # bytes missing (a gap, or a capture shorter than the segment): digests partial
TURN_ISN_KNOWN = 0x0002        # flow seen from its SYN-ACK: request offset known, index from the start
TURN_HTTP_BODY = 0x0004        # an HTTP/1.x answer whose head ended: body offset and body digest are valid
TURN_CONTINUED = 0x0008        # more of the answer to the previous turn's request, after an idle pause
TURN_END_FIN = 0x0010          # the turn ended with the server's FIN (no end bit: its ACK advanced)
TURN_END_RST = 0x0020          # ... with a RST
TURN_END_IDLE = 0x0040         # ... by the idle timeout
TURN_END_EVICTED = 0x0080      # ... its flow was evicted (table full) or its address pair reused (SYN-ACK)
TURN_FLAGS = 0x00FF            # every defined bit; a record with any other bit set is refused

TURN_TOPIC_PREFIX = b"T"


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One answer turn as it crosses the wire: also the record appliance.compare.turns emits."""

    server_ip: int
    server_port: int
    client_ip: int
    client_port: int
    request_end: int                 # the server's ACK number during the turn (absolute, 32 bits)
    request_offset: int | None       # request_end - client ISN - 1 (mod 2**32), None when the ISN is unknown
    index: int                       # 0, 1, 2, ... within the flow
    first_ns: int
    last_ns: int
    length: int                      # sequence space the turn covers (missing bytes included)
    digest: bytes                    # of the captured in-order bytes: the whole turn, or the HTTP head
    body_offset: int | None          # HTTP: where the body starts (after b"\r\n\r\n")
    body_digest: bytes | None        # HTTP: of the bytes from body_offset on
    flags: int
    head: bytes

    @property
    def flow(self) -> tuple[int, int, int, int]:
        return (self.server_ip, self.server_port, self.client_ip, self.client_port)

    @property
    def incomplete(self) -> bool:
        return bool(self.flags & TURN_INCOMPLETE)


def encode_turn(turn: TurnRecord) -> bytes:
    """One record body; WireError for a record `decode_turn` would refuse."""
    flags = turn.flags & ~(TURN_ISN_KNOWN | TURN_HTTP_BODY)
    if turn.request_offset is not None:
        flags |= TURN_ISN_KNOWN
    body_digest, body_offset = bytes(TURN_DIGEST_SIZE), NO_BODY_OFFSET
    if turn.body_offset is not None and turn.body_digest is not None:
        flags |= TURN_HTTP_BODY
        body_digest, body_offset = turn.body_digest, turn.body_offset
    if len(turn.digest) != TURN_DIGEST_SIZE or len(body_digest) != TURN_DIGEST_SIZE:
        raise WireError(f"turn digests must be {TURN_DIGEST_SIZE} bytes")
    try:
        header = TURN_RECORD.pack(
            turn.server_ip, turn.server_port, turn.client_ip, turn.client_port, turn.request_end,
            turn.request_offset or 0, turn.index, turn.first_ns, turn.last_ns, turn.length, body_offset,
            turn.digest, body_digest, flags, len(turn.head))
    except struct.error as exc:
        raise WireError(f"turn not encodable: {exc}") from None
    record = header + turn.head
    decode_turn(record)              # one definition of a valid record: the decoder's
    return record


def decode_turn(body: bytes | memoryview) -> TurnRecord:
    """One record body back into a TurnRecord. Raises WireError for any bad input: short, trailing
    or oversized head, undefined flag bits, fields that contradict each other or the flags."""
    if len(body) < TURN_RECORD.size:
        raise WireError(f"turn record of {len(body)} bytes, header is {TURN_RECORD.size}")
    (server_ip, server_port, client_ip, client_port, request_end, request_offset, index, first_ns,
     last_ns, length, body_offset, digest, body_digest, flags, head_len) = TURN_RECORD.unpack_from(body, 0)
    if head_len > MAX_TURN_HEAD or TURN_RECORD.size + head_len != len(body):
        raise WireError(f"turn head of {head_len} bytes in a record of {len(body)}")
    if flags & ~TURN_FLAGS:
        raise WireError(f"turn flags {flags:#06x} have undefined bits")
    if last_ns < first_ns or head_len > length:
        raise WireError("turn times or lengths contradict")
    if not flags & TURN_ISN_KNOWN and request_offset:
        raise WireError("turn request offset without a known ISN")
    if flags & TURN_HTTP_BODY:
        if body_offset > length:
            raise WireError(f"turn body offset {body_offset} past its length {length}")
    elif body_offset != NO_BODY_OFFSET or any(body_digest):
        raise WireError("turn body fields without TURN_HTTP_BODY")
    return TurnRecord(server_ip, server_port, client_ip, client_port, request_end,
                      request_offset if flags & TURN_ISN_KNOWN else None, index, first_ns, last_ns, length,
                      bytes(digest), body_offset if flags & TURN_HTTP_BODY else None,
                      bytes(body_digest) if flags & TURN_HTTP_BODY else None, flags,
                      bytes(body[TURN_RECORD.size:]))


def decode_turn_batch(frame: bytes | memoryview) -> tuple[BatchHeader, list[TurnRecord]]:
    """A KIND_TURNS batch into (header, turns). Raises WireError. (decode_batch accepts only the
    segment and response kinds: a worker without compare mode never mistakes turns for headers.)"""
    view = memoryview(frame)
    if len(view) < BATCH_HEADER.size:
        raise WireError(f"turn batch too short: {len(view)} bytes")
    version, kind, count, source, seq = BATCH_HEADER.unpack_from(view, 0)
    if version != VERSION or kind != KIND_TURNS:
        raise WireError(f"batch version/kind {version}/{kind}, expected {VERSION}/{KIND_TURNS}")
    if count > MAX_TURN_RECORDS:
        raise WireError(f"turn batch of {count} records, at most {MAX_TURN_RECORDS}")
    turns = [decode_turn(record) for _, record in _records(view, count, MAX_TURN_RECORD)]
    return BatchHeader(kind, count, source, seq), turns


def turn_topic(shards: int, shard: int) -> bytes:
    """The topic of the target's turns that belong to `shard` of `shards` workers (compare mode)."""
    return SHARD_TOPIC.pack(TURN_TOPIC_PREFIX, shards, shard)


def parse_turn_topic(topic: bytes) -> tuple[int, int] | None:
    """(shards, shard) of a turn topic; None for any other topic."""
    if len(topic) != SHARD_TOPIC.size or topic[:1] != TURN_TOPIC_PREFIX:
        return None
    _, shards, shard = SHARD_TOPIC.unpack(topic)
    return (shards, shard) if 0 <= shard < shards else None
