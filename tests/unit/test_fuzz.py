"""Property-based fuzzing of everything that reads bytes from outside: the packet parser, the
wire decoder, the JSON frames. Whatever the input, only the documented error comes out.
A long run (millions of inputs) is perf/fuzz.py."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import wire
from appliance.control import decode_request
from appliance.engine.table import SessionTable
from appliance.packet import (
    ACK, MalformedPacket, build_ipv4_tcp, client_key_of, link_header_len, parse_ipv4_tcp, parse_options,
)

VALID = build_ipv4_tcp(0xC6120001, 0xC6120002, 40000, 8080, 1, 2, ACK, 512, b"\x01\x01\x08\x0a" + b"\x00" * 8, b"hi")
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutations() -> st.SearchStrategy[bytes]:
    flips = st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8)
    return st.one_of(st.binary(max_size=200),
                     flips.map(lambda fs: bytes(_flip(VALID, fs))),
                     st.integers(0, len(VALID)).map(lambda n: VALID[:n]))


@FAST
@given(_mutations())
def test_packet_parser_raises_only_malformed(data):
    try:
        seg = parse_ipv4_tcp(data)
    except MalformedPacket:
        return
    assert seg.payload_len >= 0 and len(seg.payload) <= seg.payload_len
    parse_options(seg.options)
    client_key_of(data)
    link_header_len(1, data)


@FAST
@given(st.lists(_mutations(), max_size=20))
def test_engine_takes_any_parsed_segment(datas):
    table = SessionTable()
    for i, data in enumerate(datas):
        try:
            seg = parse_ipv4_tcp(data)
        except MalformedPacket:
            continue
        if i % 2:
            table.target_segment(seg, 100.0 + i)
        else:
            table.client_segment(seg, 0xC6120003, 8080, 100.0 + i)
        table.flush(100.0 + i)
        table.poll(100.0 + i * 3)
    table.take_output()


def _batches() -> st.SearchStrategy[bytes]:
    b = wire.BatchBuilder(wire.KIND_RESPONSES, 1)
    b.add(1, VALID)
    b.add(2, VALID[:40])
    frame = b.take()
    flips = st.lists(st.tuples(st.integers(0, len(frame) - 1), st.integers(0, 255)), max_size=6)
    return st.one_of(st.binary(max_size=300),
                     flips.map(lambda fs: bytes(_flip(frame, fs))),
                     st.integers(0, len(frame)).map(lambda n: frame[:n]))


def _flip(frame: bytes, flips: list[tuple[int, int]]) -> bytearray:
    out = bytearray(frame)
    for i, v in flips:
        out[i] = v
    return out


@FAST
@given(_batches())
def test_wire_decoder_raises_only_wire_errors(frame):
    try:
        header, records = wire.decode_batch(frame)
    except wire.WireError:
        return
    assert header.count == len(records)


@FAST
@given(st.binary(max_size=300))
def test_control_requests_never_raise(frame):
    request, reply = decode_request(frame)
    assert (request is None) == bool(reply)
