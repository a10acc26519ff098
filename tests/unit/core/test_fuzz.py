"""Property-based fuzzing of everything that reads bytes from outside: the packet parser, the
wire decoder, the JSON frames, interceptd's capture path. Whatever the input, only the documented
error (or a counted drop) comes out. A long run (millions of inputs) is perf/fuzz.py.

Sections: packets and the engine; batch frames; JSON frames and control requests; interceptd's
capture path."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.core import wire
from appliance.core.control import decode_request
from appliance.core.packet import (
    ACK,
    DLT_EN10MB,
    DLT_LINUX_SLL,
    DLT_RAW,
    MalformedPacket,
    build_ipv4_tcp,
    client_key_of,
    link_header_len,
    parse_ipv4_tcp,
    parse_options,
)
from appliance.engine.table import SessionTable
from appliance.tcpcopyd.handlers import handle_set
from tests.unit.interceptkit import ETH, answer, feed, interceptd, with_data_offset

VALID = build_ipv4_tcp(0xC6120001, 0xC6120002, 40000, 8080, 1, 2, ACK, 512, b"\x01\x01\x08\x0a" + b"\x00" * 8, b"hi")
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- packets and the engine --------------------------------------------------------------------
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


# ---- batch frames --------------------------------------------------------------------------------
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


# ---- JSON frames and control requests ----------------------------------------------------------
@FAST
@given(st.binary(max_size=300))
def test_control_requests_never_raise(frame):
    request, reply = decode_request(frame)
    assert (request is None) == bool(reply)


def _json_texts() -> st.SearchStrategy[str]:
    """JSON documents with numbers of any size (digit strings past Python's 4,300-digit int limit,
    exponents past a float), NaN and infinities, deep nesting, and the same cut or spliced."""
    digits = st.one_of(st.text("0123456789", min_size=1, max_size=30),
                       st.integers(4000, 6000).map(lambda n: "7" * n))
    digits = digits.map(lambda d: d.lstrip("0") or "0")
    number = st.one_of(digits, digits.map(lambda d: "-" + d), digits.map(lambda d: d[:5] + "e" + d[:4]),
                       st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0", "0.5"]))
    leaf = st.one_of(number, st.sampled_from(['"x"', "true", "null"]))
    value = st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(st.sampled_from(["id", "command", "args", "value", "pid"]), inner), max_size=4)
        .map(lambda kv: "{" + ",".join(json.dumps(k) + ":" + v for k, v in kv) + "}")), max_leaves=60)
    doc = value.map(lambda v: '{"id": "1", "command": "set", "args": {"name": "sample-rate", "value": ' + v
                    + "}}")
    return st.one_of(doc, st.tuples(doc, st.integers(0, 200)).map(lambda t: t[0][:t[1]]),
                     st.integers(1, 2000).map(lambda n: '{"a":' + "[" * n + "]" * n + "}"))


@FAST
@given(_json_texts())
def test_json_frames_decode_or_raise_only_wire_errors(text):
    frame = bytes([wire.VERSION, wire.KIND_CONTROL]) + text.encode()
    try:
        obj = wire.decode_json(frame, wire.KIND_CONTROL)
    except wire.WireError:
        obj = None
    request, reply = decode_request(frame)
    assert (request is None) == bool(reply)
    if obj is None:
        assert request is None and reply["errno"] == "EPROTO"
    if request is not None and request.command == "set":
        assert handle_set(_NoSupervisor(), request)["status"] in ("ok", "error")


class _NoSupervisor:
    def set_runtime(self, **changes: object) -> dict:
        return dict(changes)


# ---- interceptd's capture path: frames through libpcap into the capture callback ------------------
def _captured_frames() -> st.SearchStrategy[list[bytes]]:
    base = ETH + answer(1)
    flips = st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), max_size=6)
    frame = st.one_of(st.binary(max_size=120),
                      flips.map(lambda fs: bytes(_flip(base, fs))),
                      st.integers(0, len(base)).map(lambda n: base[:n]),
                      st.integers(0, 15).map(lambda w: ETH + with_data_offset(answer(2), w)))
    return st.lists(frame, min_size=1, max_size=30)


@FAST
@given(_captured_frames(), st.sampled_from([DLT_EN10MB, DLT_RAW, DLT_LINUX_SLL]))
def test_interceptd_capture_callback_counts_every_frame_and_publishes_only_parsable_headers(frames, linktype):
    ic = interceptd(1, 2)
    assert feed(ic, frames, linktype) == len(frames)
    assert ic.unexpected == 0
    assert ic.captured + ic.malformed + ic.not_ip == len(frames)
    published = 0
    for _topic, frame in ic.split.take():
        for _ts, header in wire.decode_batch(frame)[1]:
            parse_ipv4_tcp(header, keep_payload=False)
            published += 1
    assert published == 2 * ic.captured                # one batch per shard count in use


# ---- spoofed segments: mid-stream data the online host never accepted, RSTs off the sequence ------
@FAST
@given(st.lists(st.tuples(st.booleans(), st.integers(1024, 65535), st.integers(0, 2**32 - 1),
                          st.integers(0, 2**32 - 1), st.booleans()), max_size=40))
def test_spoofed_segments_never_reach_the_target_nor_reset_a_session(inputs):
    """Issue 14: data without a SYN from anywhere makes no handshake while the socket table holds no
    such connection, and a RST at any number but the expected one resets nothing."""
    from appliance.core.packet import ACK, PSH, RST, SYN, TcpSegment
    client, online, target = 0xC6120001, 0xC6120002, 0xC6120003
    table = SessionTable()
    table.accepted_online = lambda seg: False
    table.client_segment(TcpSegment(client, online, 40000, 8080, 1000, 0, SYN, 512, b"", b"", 0, 1), target, 8080, 0.0)
    table.target_segment(TcpSegment(target, client, 8080, 40000, 5000, 1001, SYN | ACK, 512, b"", b"", 0, 1), 0.0)
    table.flush(0.0)
    table.take_output()
    for data_segment, port, seq, ack, with_ack in inputs:
        if data_segment:
            port += port == 40000                  # the established connection's own bytes are not spoofed
            seg = TcpSegment(client, online, port, 8080, seq, ack, ACK | PSH, 512, b"", b"x" * 9, 9, 1)
            table.client_segment(seg, target, 8080, 1.0)
        elif seq != 5001:
            seg = TcpSegment(target, client, 8080, 40000, seq, ack, RST | (ACK if with_ack else 0), 512, b"", b"", 0, 1)
            table.target_segment(seg, 1.0)
        table.flush(1.0)
        assert all(not e.payload and not e.flags & (SYN | RST) for e in table.take_output())
    assert table.counters.sessions_reset_by_target == 0 and table.counters.sessions_fake_syn == 0
