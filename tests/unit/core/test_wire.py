"""appliance.core.wire: batch frames, JSON frames, endpoints, and garbage handling."""

from __future__ import annotations

import json
import random
import struct

import pytest

from appliance.core import wire
from appliance.core.wire import (
    BATCH_HEADER,
    KIND_CONTROL,
    KIND_RESPONSES,
    KIND_SEGMENTS,
    KIND_STATS,
    MAX_JSON_FRAME,
    MAX_RECORD_BYTES,
    RECORD_HEADER,
    VERSION,
    BatchBuilder,
    WireError,
    decode_batch,
    decode_json,
    encode_json,
    iter_batch,
    parse_intercept_address,
)


def _frame(records: list[tuple[int, bytes]], kind: int = KIND_SEGMENTS, source: int = 3,
           seq: int = 0) -> bytes:
    b = BatchBuilder(kind, source)
    b.seq = seq
    for ts, pkt in records:
        b.add(ts, pkt)
    return b.take()


# ---- batches --------------------------------------------------------------------------------
def test_batch_round_trip():
    records = [(1_700_000_000_123_456_789, b"\x45" + bytes(59)), (2, b""), (2**64 - 1, bytes(range(256)) * 3)]
    b = BatchBuilder(KIND_RESPONSES, 0x1_2345_6789)          # source masked to 32 bits
    for ts, pkt in records:
        b.add(ts, memoryview(pkt))
    assert b.count == 3
    assert b.size == sum(RECORD_HEADER.size + len(p) for _, p in records)
    frame = b.take()
    assert len(frame) == BATCH_HEADER.size + sum(RECORD_HEADER.size + len(p) for _, p in records)
    header, got = decode_batch(frame)
    assert (header.kind, header.count, header.source, header.seq) == (KIND_RESPONSES, 3, 0x2345_6789, 0)
    assert [(ts, bytes(p)) for ts, p in got] == records
    assert [(ts, bytes(p)) for ts, p in iter_batch(frame)] == records


def test_batch_header_layout_is_big_endian():
    frame = _frame([(0x0102030405060708, b"ab")], kind=KIND_SEGMENTS, source=0xA0B0C0D0, seq=0x1122)
    assert frame[:16] == bytes([VERSION, KIND_SEGMENTS, 0, 1, 0xA0, 0xB0, 0xC0, 0xD0]) + \
        (0x1122).to_bytes(8, "big")
    assert frame[16:28] == bytes.fromhex("0102030405060708") + b"\x00\x00\x00\x02"
    assert frame[28:] == b"ab"


def test_builder_counts_batches_and_resets():
    b = BatchBuilder(KIND_SEGMENTS, 1)
    b.add(1, b"x")
    f0 = b.take()
    assert (b.count, b.size) == (0, 0)
    f1 = b.take()                                            # an empty batch is legal
    b.add(5, b"yy")
    f2 = b.take()
    seqs = [decode_batch(f)[0].seq for f in (f0, f1, f2)]
    assert seqs == [0, 1, 2]
    assert decode_batch(f1)[0].count == 0 and decode_batch(f1)[1] == []
    assert [bytes(p) for _, p in decode_batch(f2)[1]] == [b"yy"]


def test_records_are_views_into_the_frame():
    frame = _frame([(1, b"hello")])
    _, recs = decode_batch(frame)
    assert isinstance(recs[0][1], memoryview)


def test_record_of_max_size_accepted_and_one_more_rejected():
    ok = _frame([(1, bytes(MAX_RECORD_BYTES))])
    assert len(decode_batch(ok)[1][0][1]) == MAX_RECORD_BYTES
    too_big = _frame([(1, bytes(MAX_RECORD_BYTES + 1))])
    with pytest.raises(WireError, match="record length"):
        decode_batch(too_big)


def _good() -> bytes:
    return _frame([(10, b"abc"), (11, b"defgh")])


@pytest.mark.parametrize("frame, why", [
    (b"", "too short"),
    (_good()[:15], "too short"),
    (bytes([VERSION + 1]) + _good()[1:], "version"),
    (bytes([0]) + _good()[1:], "version"),
    (_good()[:1] + bytes([KIND_STATS]) + _good()[2:], "kind"),
    (_good()[:1] + bytes([0]) + _good()[2:], "kind"),
    (_good()[:1] + bytes([KIND_CONTROL]) + _good()[2:], "kind"),
    (_good()[:-1], "runs past"),                                  # truncated payload
    (_good()[:16 + 12 + 3 + 5], "record header"),                 # truncated second record header
    (_good() + b"\x00", "trailing"),
    (_good()[:2] + b"\x00\x03" + _good()[4:], "record header"),   # count says 3, frame has 2
    (_good()[:2] + b"\x00\x01" + _good()[4:], "trailing"),        # count says 1, frame has 2
    (BATCH_HEADER.pack(VERSION, KIND_SEGMENTS, 1, 0, 0) + RECORD_HEADER.pack(0, 0xFFFFFFFF), "record length"),
    (BATCH_HEADER.pack(VERSION, KIND_SEGMENTS, 1, 0, 0) + RECORD_HEADER.pack(0, 10) + b"short", "runs past"),
])
def test_bad_batches_raise_wire_error(frame, why):
    with pytest.raises(WireError, match=why):
        decode_batch(frame)


def test_wire_error_is_a_value_error():
    assert issubclass(WireError, ValueError)


def test_fuzz_batches_raise_only_wire_error():
    """Seeded garbage and mutations of good frames: decode or raise WireError, nothing else."""
    rng = random.Random(0x7C9C0BE)
    good = [_frame([(rng.getrandbits(64), rng.randbytes(rng.randrange(0, 80)))
                    for _ in range(rng.randrange(0, 5))],
                   kind=rng.choice((KIND_SEGMENTS, KIND_RESPONSES)), source=rng.getrandbits(32),
                   seq=rng.getrandbits(64))
            for _ in range(50)]
    outcomes = {"ok": 0, "error": 0}
    for i in range(2000):
        mode = i % 4
        if mode == 0:
            frame = rng.randbytes(rng.randrange(0, 200))
        elif mode == 1:
            frame = bytearray(rng.choice(good))
            frame = bytes(frame[:rng.randrange(0, len(frame) + 1)])
        elif mode == 2:
            frame = bytearray(rng.choice(good))
            for _ in range(rng.randrange(1, 4)):
                frame[rng.randrange(len(frame))] = rng.getrandbits(8)
            frame = bytes(frame)
        else:
            # a plausible header in front of random records
            kind = rng.choice((KIND_SEGMENTS, KIND_RESPONSES))
            frame = BATCH_HEADER.pack(VERSION, kind, rng.randrange(0, 8), 0, 0) + \
                rng.randbytes(rng.randrange(0, 120))
        try:
            header, recs = decode_batch(frame)
        except WireError:
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        assert header.count == len(recs)
        assert BATCH_HEADER.size + sum(RECORD_HEADER.size + len(p) for _, p in recs) == len(frame)
    # the fuzz exercised both outcomes (a loop that only ever raised would prove little)
    assert outcomes["ok"] > 50 and outcomes["error"] > 1000


# ---- JSON frames ----------------------------------------------------------------------------
def test_json_round_trip():
    obj = {"role": "rewrite", "index": 2, "counters": {"a": 1}, "text": "héllo"}
    frame = encode_json(KIND_STATS, obj)
    assert frame[:2] == bytes([VERSION, KIND_STATS])
    assert json.loads(frame[2:]) == obj
    assert decode_json(frame, KIND_STATS) == obj


@pytest.mark.parametrize("frame, why", [
    (b"", "JSON frame of 0 bytes"),
    (b"\x01", "JSON frame of 1 bytes"),
    (bytes([VERSION, KIND_CONTROL]) + b"{}", "version/kind"),           # asked for stats
    (bytes([VERSION + 1, KIND_STATS]) + b"{}", "version/kind"),
    (bytes([VERSION, KIND_STATS]) + b"{not json", "bad JSON"),
    (bytes([VERSION, KIND_STATS]) + b"\xff\xfe\x00", "bad JSON"),
    (bytes([VERSION, KIND_STATS]) + b"", "bad JSON"),
    (bytes([VERSION, KIND_STATS]) + b"[1, 2]", "not an object"),
    (bytes([VERSION, KIND_STATS]) + b"42", "not an object"),
    (bytes([VERSION, KIND_STATS]) + b" " * (MAX_JSON_FRAME + 1), "JSON frame of"),
])
def test_bad_json_frames(frame, why):
    with pytest.raises(WireError, match=why):
        decode_json(frame, KIND_STATS)


def test_deeply_nested_json_raises_wire_error():
    # a control client can send this; it must not escape as RecursionError and kill the supervisor
    frame = bytes([VERSION, KIND_CONTROL]) + b"[" * 200_000
    with pytest.raises(WireError):
        decode_json(frame, KIND_CONTROL)


def test_encode_json_refuses_oversized():
    with pytest.raises(WireError, match="exceeds"):
        encode_json(KIND_STATS, {"blob": "x" * MAX_JSON_FRAME})


def test_fuzz_json_raises_only_wire_error():
    rng = random.Random(1234)
    alphabet = b'{}[]",:0123456789truefalsn \\u\xff\x00'
    for _ in range(2000):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        frame = bytes([VERSION, KIND_STATS]) + body
        try:
            assert isinstance(decode_json(frame, KIND_STATS), dict)
        except WireError:
            pass


# ---- endpoints and addresses ----------------------------------------------------------------
def test_endpoints():
    assert wire.segments_endpoint("/run/t", 3) == "ipc:///run/t/seg-3"
    assert wire.stats_endpoint("/run/t") == "ipc:///run/t/stats"
    assert wire.control_endpoint("/run/t") == "ipc:///run/t/ctl"
    assert wire.intercept_endpoint("10.0.0.9") == "tcp://10.0.0.9:36524"
    assert wire.intercept_endpoint("h", 99) == "tcp://h:99"


@pytest.mark.parametrize("text, expected", [
    ("10.0.0.9", ("10.0.0.9", 36524)),
    ("10.0.0.9:4000", ("10.0.0.9", 4000)),
    ("  assistant.lab:1  ", ("assistant.lab", 1)),
    ("host:65535", ("host", 65535)),
])
def test_parse_intercept_address(text, expected):
    assert parse_intercept_address(text) == expected


@pytest.mark.parametrize("text, why", [
    (":4000", "no host"),
    ("", "no host"),
    ("host:", "port must be"),
    ("host:0", "port must be"),
    ("host:65536", "port must be"),
    ("host:http", "port must be"),
    ("host:-1", "port must be"),
])
def test_parse_intercept_address_errors_name_the_text(text, why):
    with pytest.raises(ValueError, match=why) as err:
        parse_intercept_address(text)
    assert repr(text) in str(err.value)


def test_struct_sizes_are_fixed():
    assert BATCH_HEADER.size == 16 and RECORD_HEADER.size == 12
    assert struct.calcsize(BATCH_HEADER.format) == 16


def test_shard_topics_round_trip_and_reject_anything_else():
    assert wire.parse_shard_topic(wire.shard_topic(4, 3)) == (4, 3)
    assert wire.shard_topic(2, 1) == b"R\x00\x02\x00\x01"
    # prefix matching must not mix workers: no topic is a prefix of another
    topics = [wire.shard_topic(n, k) for n in (1, 2, 3, 256) for k in range(n)] + [wire.STATS_TOPIC]
    assert not [(a, b) for a in topics for b in topics if a != b and b.startswith(a)]
    for bad in (b"", wire.STATS_TOPIC, b"R\x00\x02\x00", b"R\x00\x02\x00\x02", b"X\x00\x02\x00\x01",
                wire.shard_topic(2, 1) + b"x"):
        assert wire.parse_shard_topic(bad) is None
