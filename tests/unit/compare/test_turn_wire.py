"""appliance.core.wire, compare section: turn records and KIND_TURNS batches, round trip and rejection."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.core import wire
from appliance.core.wire import (
    BATCH_HEADER,
    KIND_RESPONSES,
    KIND_TURNS,
    MAX_TURN_HEAD,
    MAX_TURN_RECORDS,
    RECORD_HEADER,
    TURN_END_FIN,
    TURN_HTTP_BODY,
    TURN_ISN_KNOWN,
    TURN_RECORD,
    VERSION,
    BatchBuilder,
    TurnRecord,
    WireError,
    decode_turn,
    decode_turn_batch,
    encode_turn,
    parse_shard_topic,
    parse_turn_topic,
    turn_topic,
)
from tests.unit.compare.kit import http_answer, one_turn

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _turns() -> list[TurnRecord]:
    http = one_turn(http_answer(200, b"body" * 100))
    raw = one_turn(bytes(range(256)))
    mid_stream = dataclasses.replace(raw, request_offset=None, flags=raw.flags & ~TURN_ISN_KNOWN, index=9)
    empty_head = dataclasses.replace(raw, head=b"")
    return [http, raw, mid_stream, empty_head]


def _batch(turns: list[TurnRecord], source: int = 7, seq: int = 3) -> bytes:
    b = BatchBuilder(KIND_TURNS, source)
    b.seq = seq
    for t in turns:
        b.add(t.last_ns, encode_turn(t))
    return b.take()


def test_layout_is_fixed_and_big_endian() -> None:
    assert TURN_RECORD.size == 88 and KIND_TURNS not in (1, 2, 3, 4, 5)
    turn = _turns()[0]
    record = encode_turn(turn)
    assert len(record) == 88 + len(turn.head)
    assert record[:6] == struct.pack("!IH", turn.server_ip, turn.server_port)
    assert record[86:88] == struct.pack("!H", len(turn.head))
    assert struct.unpack_from("!H", record, 84)[0] == turn.flags | TURN_HTTP_BODY | TURN_ISN_KNOWN


def test_round_trip() -> None:
    for turn in _turns():
        back = decode_turn(encode_turn(turn))
        assert back == turn
    http = _turns()[0]
    assert http.body_digest is not None and http.flags & TURN_END_FIN
    header, turns = decode_turn_batch(_batch(_turns()))
    assert (header.kind, header.count, header.source, header.seq) == (KIND_TURNS, 4, 7, 3)
    assert turns == _turns()
    assert decode_turn_batch(_batch([]))[1] == []


def test_encode_refuses_what_decode_would() -> None:
    turn = _turns()[1]
    for bad in ({"digest": b"short"}, {"head": bytes(MAX_TURN_HEAD + 1)}, {"server_port": 70000},
                {"last_ns": turn.first_ns - 1}, {"flags": 0x8000}, {"index": -1}):
        with pytest.raises(WireError):
            encode_turn(dataclasses.replace(turn, **bad))


def _record_with(turn: TurnRecord, **fields: int) -> bytes:
    values = list(TURN_RECORD.unpack_from(encode_turn(turn)))
    names = ["server_ip", "server_port", "client_ip", "client_port", "request_end", "request_offset", "index",
             "first_ns", "last_ns", "length", "body_offset", "digest", "body_digest", "flags", "head_len"]
    for name, value in fields.items():
        values[names.index(name)] = value
    return TURN_RECORD.pack(*values) + turn.head


@pytest.mark.parametrize(("fields", "message"), [
    ({"flags": 0x0100 | TURN_ISN_KNOWN}, "undefined bits"),
    ({"head_len": 511}, "turn head"),
    ({"head_len": 513}, "turn head"),
    ({"length": 10}, "contradict"),
    ({"flags": 0, "request_offset": 100}, "without a known ISN"),
    ({"body_offset": 5}, "without TURN_HTTP_BODY"),
    ({"body_digest": b"x" * 16}, "without TURN_HTTP_BODY"),
    ({"flags": TURN_ISN_KNOWN | TURN_HTTP_BODY, "body_offset": 10**6}, "past its length"),
])
def test_decode_rejects_contradictions(fields: dict[str, int], message: str) -> None:
    raw = _turns()[1]                                              # no HTTP body, head of 256 bytes
    raw = dataclasses.replace(raw, head=bytes(512), length=4096)
    with pytest.raises(WireError, match=message):
        decode_turn(_record_with(raw, **fields))


def test_every_truncation_is_rejected() -> None:
    frame = _batch(_turns()[:2])
    for n in range(len(frame)):
        with pytest.raises(WireError):
            decode_turn_batch(frame[:n])
    with pytest.raises(WireError, match="trailing"):
        decode_turn_batch(frame + b"\x00")
    record = encode_turn(_turns()[0])
    for n in range(len(record)):
        with pytest.raises(WireError):
            decode_turn(record[:n])


def test_batch_header_is_checked() -> None:
    frame = _batch(_turns()[:1])
    with pytest.raises(WireError, match="version/kind"):
        decode_turn_batch(bytes([VERSION + 1]) + frame[1:])
    with pytest.raises(WireError, match="version/kind"):
        decode_turn_batch(frame[:1] + bytes([KIND_RESPONSES]) + frame[2:])
    with pytest.raises(WireError, match="at most"):
        decode_turn_batch(BATCH_HEADER.pack(VERSION, KIND_TURNS, MAX_TURN_RECORDS + 1, 0, 0))
    too_long = wire.MAX_TURN_RECORD + 1
    oversized = BATCH_HEADER.pack(VERSION, KIND_TURNS, 1, 0, 0) + RECORD_HEADER.pack(0, too_long)
    with pytest.raises(WireError, match="runs past"):
        decode_turn_batch(oversized + bytes(wire.MAX_TURN_RECORD + 1))
    with pytest.raises(WireError):                                # the other kinds' decoder refuses turns
        wire.decode_batch(frame)


@FAST
@given(st.binary(max_size=400))
def test_garbage_raises_only_wire_error(data: bytes) -> None:
    for decode in (decode_turn, decode_turn_batch):
        try:
            decode(data)
        except WireError:
            pass
    try:
        one = BATCH_HEADER.pack(VERSION, KIND_TURNS, 1, 0, 0) + RECORD_HEADER.pack(0, len(data))
        decode_turn_batch(one + data)
    except WireError:
        pass


@FAST
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_batches_decode_or_raise_wire_error(flips: list[tuple[int, int]]) -> None:
    frame = bytearray(_batch(_turns()))
    for at, value in flips:
        frame[at % len(frame)] = value
    try:
        header, turns = decode_turn_batch(bytes(frame))
    except WireError:
        return
    for turn in turns:                                             # what decodes is a valid record again
        assert decode_turn(encode_turn(turn)) == turn


def test_turn_topics() -> None:
    topic = turn_topic(4, 3)
    assert topic == b"T\x00\x04\x00\x03" and parse_turn_topic(topic) == (4, 3)
    assert parse_shard_topic(topic) is None and parse_turn_topic(wire.shard_topic(4, 3)) is None
    assert parse_turn_topic(b"T\x00\x02\x00\x02") is None and parse_turn_topic(b"T") is None
    assert wire.MAX_TURN_MESSAGE <= wire.MAX_RESPONSE_MESSAGE    # a worker's SUB limit covers turn batches


def test_a_workers_sub_socket_takes_the_largest_turn_batch() -> None:
    """A worker's SUB to interceptd refuses messages over MAX_RESPONSE_MESSAGE (ZMQ_MAXMSGSIZE): the
    largest valid turn batch fits, so subscribing to turns needs no other limit."""
    assert wire.MAX_TURN_MESSAGE <= wire.MAX_RESPONSE_MESSAGE
    turn = dataclasses.replace(_turns()[1], head=bytes(MAX_TURN_HEAD), length=10**6)
    frame = _batch([turn] * MAX_TURN_RECORDS)
    assert len(frame) == wire.MAX_TURN_MESSAGE
    assert len(decode_turn_batch(frame)[1]) == MAX_TURN_RECORDS
