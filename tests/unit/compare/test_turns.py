"""appliance.compare.turns: answer turns from segments (in order, retransmitted, holes, pipelined,
closes, eviction, idle expiry), digests independent of segmentation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.compare.turns import AnswerSegment, AssemblerSpec, Turn, TurnAssembler
from appliance.core.packet import ACK, PSH
from appliance.core.wire import (
    TURN_CONTINUED,
    TURN_END_EVICTED,
    TURN_END_FIN,
    TURN_END_IDLE,
    TURN_END_RST,
    TURN_INCOMPLETE,
    TURN_ISN_KNOWN,
    decode_turn,
    encode_turn,
)
from tests.unit.compare.kit import CLIENT, FLOW, MS, SERVER, Server, digest, http_answer, one_turn

S = 1_000_000_000


def test_in_order_turns_carry_request_offsets_and_indexes() -> None:
    srv = Server(TurnAssembler(), now=10 * S).syn_ack()
    srv.request(120)
    first = bytes(range(256)) * 10                                 # 2560 bytes: two segments
    srv.answer(first)
    assert srv.turns == []                                         # still open: the ACK has not moved
    srv.request(80)
    srv.answer(b"second answer")
    assert len(srv.turns) == 1                                     # the new ACK ended turn 0
    srv.fin()
    t0, t1 = srv.turns
    assert (t0.index, t0.request_offset, t0.request_end) == (0, 120, 5001 + 120)
    assert (t1.index, t1.request_offset, t1.request_end) == (1, 200, 5001 + 200)
    assert t0.length == 2560 and t0.digest == digest(first) and t0.body_digest is None
    assert t0.head == first[:512]
    assert (t0.first_ns, t0.last_ns) == (10 * S + MS, 10 * S + 2 * MS)
    assert t0.flags == TURN_ISN_KNOWN                              # ended by the ACK: no end bit
    assert t1.flags == TURN_ISN_KNOWN | TURN_END_FIN and t1.digest == digest(b"second answer")
    assert t0.flow == FLOW == (*SERVER, *CLIENT)
    assert srv.asm.counters.turns_emitted == 2 and srv.asm.counters.gaps == 0


def test_pure_ack_of_the_next_request_ends_the_turn_at_once() -> None:
    srv = Server(TurnAssembler()).syn_ack()
    srv.request(10)
    srv.answer(b"a" * 100)
    srv.request(10, pure_ack=True)
    assert [t.index for t in srv.turns] == [0]
    srv.request(10, pure_ack=True)                                 # no answer to request 2: no turn, no index
    srv.answer(b"b" * 5)
    srv.fin()
    assert [(t.index, t.request_offset, t.length) for t in srv.turns] == [(0, 10, 100), (1, 30, 5)]


def test_pipelined_requests_of_many_segments() -> None:
    srv = Server(TurnAssembler(AssemblerSpec(head_bytes=64))).syn_ack()
    answers = [bytes([i]) * (1000 * i + 1) for i in range(1, 5)]
    for i, data in enumerate(answers):
        srv.request(50 + i)
        srv.answer(data, mss=700)
    srv.fin()
    assert [t.index for t in srv.turns] == [0, 1, 2, 3]
    assert [t.length for t in srv.turns] == [len(a) for a in answers]
    assert [t.digest for t in srv.turns] == [digest(a) for a in answers]
    assert [t.request_offset for t in srv.turns] == [50, 101, 153, 206]
    assert all(len(t.head) == 64 for t in srv.turns)


def test_retransmitted_and_overlapping_bytes_are_skipped() -> None:
    srv = Server(TurnAssembler()).syn_ack()
    srv.request(10)
    start = srv.seq
    srv.send(b"0123456789")
    srv.send(b"0123456789", seq=start)                             # whole duplicate
    srv.send(b"56789abcde", seq=start + 5)                         # overlaps 5 bytes
    srv.seq = start + 15
    srv.fin()
    (turn,) = srv.turns
    assert turn.digest == digest(b"0123456789abcde") and turn.length == 15
    assert not turn.incomplete
    assert srv.asm.counters.retransmitted_bytes == 15 and srv.asm.counters.gaps == 0


def test_out_of_order_segment_marks_a_gap_and_the_filler_is_not_counted_twice() -> None:
    srv = Server(TurnAssembler()).syn_ack()
    srv.request(10)
    start = srv.seq
    srv.send(b"BBBB", seq=start + 4)                               # hole of 4 bytes before it
    srv.send(b"AAAA", seq=start)                                   # the hole's bytes, late
    srv.seq = start + 8
    srv.send(b"CCCC")
    srv.fin()
    (turn,) = srv.turns
    assert turn.flags & TURN_INCOMPLETE
    assert turn.digest == digest(b"BBBBCCCC")                      # no reordering buffer: holes stay holes
    assert turn.length == 8                                        # from the first byte seen to the last
    c = srv.asm.counters
    assert (c.gaps, c.retransmitted_bytes, c.incomplete_turns) == (1, 4, 1)


def test_a_hole_at_a_turn_boundary_marks_both_turns() -> None:
    srv = Server(TurnAssembler()).syn_ack()
    srv.request(10)
    srv.send(b"first")
    srv.seq += 3                                                   # 3 bytes lost
    srv.request(10)
    srv.send(b"second")
    srv.fin()
    assert [bool(t.flags & TURN_INCOMPLETE) for t in srv.turns] == [True, True]
    assert srv.asm.counters.gaps == 1


def test_a_fin_past_the_bytes_seen_marks_the_tail_lost() -> None:
    srv = Server(TurnAssembler()).syn_ack()
    srv.request(10)
    srv.send(b"abc")
    srv.seq += 100
    srv.fin()
    (turn,) = srv.turns
    assert turn.flags & TURN_INCOMPLETE and turn.flags & TURN_END_FIN


def test_late_bytes_with_an_older_ack_are_kept_and_flagged() -> None:
    srv = Server(TurnAssembler()).syn_ack()
    srv.request(10)
    old_ack = srv.client_seq
    srv.request(10, pure_ack=True)                                 # ACK moved before any answer byte
    srv.asm.feed(FLOW, srv.seq, old_ack, ACK | PSH, b"late", srv.now + 1)
    srv.seq += 4
    srv.fin()
    (turn,) = srv.turns
    assert turn.incomplete and srv.asm.counters.late_data == 1


def test_fin_and_rst_end_the_turn_and_later_segments_start_nothing() -> None:
    srv = Server(TurnAssembler()).syn_ack()
    srv.request(10)
    fin_seq = srv.seq + 4
    srv.send(b"done", ACK | PSH | 0x01)                            # data with FIN
    assert srv.turns[0].flags & TURN_END_FIN and srv.turns[0].digest == digest(b"done")
    srv.send(b"done", seq=fin_seq - 4)                             # retransmitted after the FIN
    srv.send(b"", ACK | 0x01, seq=fin_seq)
    assert len(srv.turns) == 1 and srv.asm.counters.after_close == 2

    other = Server(TurnAssembler()).syn_ack()
    other.request(10)
    other.send(b"partial")
    other.rst()
    (turn,) = other.turns
    assert turn.flags & TURN_END_RST and turn.length == 7


def test_syn_ack_again_is_ignored_and_a_new_connection_restarts_the_flow() -> None:
    asm = TurnAssembler()
    srv = Server(asm).syn_ack()
    srv.syn_ack()                                                  # retransmitted SYN-ACK
    srv.request(10)
    srv.send(b"x")
    srv.syn_ack()                                                  # once more, mid-turn: still the same flow
    srv.fin()
    assert [t.index for t in srv.turns] == [0]
    again = Server(asm, server_isn=77, client_isn=9000).syn_ack()  # port reused after the FIN
    again.request(5)
    again.send(b"y")
    again.fin()
    assert [(t.index, t.request_offset) for t in again.turns] == [(0, 5)]
    assert asm.counters.flows_created == 2 and asm.counters.flows_evicted == 0 and asm.counters.gaps == 0


def test_a_flow_met_in_mid_stream_has_no_request_offset() -> None:
    asm = TurnAssembler()
    srv = Server(asm)                                              # no SYN-ACK
    srv.send(b"hello")
    srv.request(10)
    srv.send(b"world")
    srv.fin()
    assert [(t.index, t.request_offset) for t in srv.turns] == [(0, None), (1, None)]
    assert not any(t.flags & TURN_ISN_KNOWN for t in srv.turns)
    assert srv.turns[0].digest == digest(b"hello")


def test_sequence_numbers_wrap() -> None:
    srv = Server(TurnAssembler(), server_isn=0xFFFFFFF0, client_isn=0xFFFFFFFA).syn_ack()
    srv.request(20)
    data = bytes(range(100))
    srv.answer(data, mss=7)
    srv.fin()
    (turn,) = srv.turns
    assert turn.length == 100 and turn.digest == digest(data) and not turn.incomplete
    assert turn.request_offset == 20 and turn.request_end == (0xFFFFFFFB + 20) % (1 << 32)


def test_short_capture_is_incomplete() -> None:
    srv = Server(TurnAssembler()).syn_ack()
    srv.request(10)
    srv.send(b"only-part", length=1400)                            # snaplen cut the payload
    srv.fin()
    (turn,) = srv.turns
    assert turn.incomplete and turn.length == 1400 and srv.asm.counters.short_captures == 1


def test_http_answer_is_digested_as_head_and_body() -> None:
    body = b"<html>" + b"x" * 3000 + b"</html>"
    data = http_answer(200, body)
    turn = one_turn(data, mss=100)
    end = data.index(b"\r\n\r\n") + 4
    assert turn.body_offset == end
    assert turn.digest == digest(data[:end]) and turn.body_digest == digest(body)
    assert turn.length == len(data)


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=300), cuts=st.lists(st.integers(1, 400), max_size=12))
def test_digests_do_not_depend_on_segmentation(body: bytes, cuts: list[int]) -> None:
    data = http_answer(404, body, {"X-Thing": "a\r\n\r\nb" if body[:1] == b"!" else "plain"})
    srv = Server(TurnAssembler(AssemblerSpec(head_bytes=16))).syn_ack()
    srv.request(10)
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for a, b in zip(points, points[1:], strict=False):
        srv.send(data[a:b])
    srv.fin()
    (turn,) = srv.turns
    end = data.index(b"\r\n\r\n") + 4
    assert (turn.body_offset, turn.digest, turn.body_digest) == (end, digest(data[:end]), digest(data[end:]))
    assert turn.head == data[:16]


def test_head_without_end_in_max_http_head_is_one_digest() -> None:
    data = b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"y" * 500 + b"\r\n\r\nbody"
    turn = one_turn(data, spec=AssemblerSpec(max_http_head=100), mss=50)
    assert turn.body_digest is None and turn.body_offset is None and turn.digest == digest(data)


def test_tiny_answers_and_non_http() -> None:
    assert one_turn(b"HTT").digest == digest(b"HTT")               # shorter than the magic
    turn = one_turn(b"+OK\r\n")
    assert turn.body_digest is None and turn.digest == digest(b"+OK\r\n") and turn.head == b"+OK\r\n"


def test_idle_turn_is_emitted_and_more_bytes_are_a_continued_turn() -> None:
    asm = TurnAssembler(AssemblerSpec(turn_idle=1.0, flow_idle=10.0))
    srv = Server(asm).syn_ack()
    srv.request(10)
    srv.send(b"part one")
    assert asm.poll(srv.now + S - 1) == ()
    (turn,) = asm.poll(srv.now + S)
    assert turn.flags & TURN_END_IDLE and turn.index == 0
    srv.send(b"part two", dt=2 * S)
    srv.request(10)
    srv.send(b"next")
    srv.fin()
    assert [(t.index, bool(t.flags & TURN_CONTINUED)) for t in srv.turns] == [(1, True), (2, False)]


def test_idle_flows_are_forgotten_after_flow_idle() -> None:
    asm = TurnAssembler(AssemblerSpec(turn_idle=1.0, flow_idle=10.0))
    srv = Server(asm).syn_ack()
    srv.request(10)
    srv.send(b"kept open")
    assert len(asm.poll(srv.now + 2 * S)) == 1 and len(asm) == 1
    assert asm.poll(srv.now + 10 * S - 1) == () and len(asm) == 1
    assert asm.poll(srv.now + 10 * S) == () and len(asm) == 0
    assert asm.counters.flows_expired == 1


def test_eviction_keeps_max_flows_and_emits_the_open_turn() -> None:
    asm = TurnAssembler(AssemblerSpec(max_flows=2))
    servers = [Server(asm, flow=(*SERVER, 0xC6120001, 40000 + i)).syn_ack() for i in range(2)]
    for srv in servers:
        srv.request(10)
        srv.send(b"open turn")
    servers[0].send(b"+")                                          # flow 0 is now the most recent
    third = Server(asm, flow=(*SERVER, 0xC6120001, 40002)).syn_ack()
    assert len(asm) == 2 and asm.counters.flows_evicted == 1
    (evicted,) = third.turns                                       # the returned turn is flow 1's
    assert evicted.client_port == 40001 and evicted.flags & TURN_END_EVICTED and evicted.length == 9


def test_flush_emits_every_open_turn() -> None:
    asm = TurnAssembler()
    for i in range(3):
        srv = Server(asm, flow=(*SERVER, 0xC6120001, 41000 + i)).syn_ack()
        srv.request(1)
        srv.send(b"z" * (i + 1))
    assert sorted(t.length for t in asm.flush()) == [1, 2, 3]
    assert asm.flush() == ()


def test_handle_takes_events() -> None:
    asm = TurnAssembler()
    asm.handle(AnswerSegment(FLOW, 10, 100, 0x12, b"", 0))
    asm.handle(AnswerSegment(FLOW, 11, 150, ACK, b"abc", 1))
    (turn,) = asm.handle(AnswerSegment(FLOW, 14, 170, ACK, b"", 2))
    assert (turn.request_offset, turn.length, turn.first_ns) == (50, 3, 1)


@pytest.mark.parametrize("bad", [{"head_bytes": 8}, {"head_bytes": 10**6}, {"max_flows": 0},
                                 {"turn_idle": 5.0, "flow_idle": 1.0}])
def test_spec_bounds(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AssemblerSpec(**bad)


_SEGMENT = st.tuples(st.integers(0, 3), st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1]),
                     st.integers(0, 0x3F), st.binary(max_size=24) | st.just(b"HTTP/1.1 200 OK\r\n\r\nx"),
                     st.integers(0, 3))


@settings(max_examples=200, deadline=None)
@given(st.lists(_SEGMENT, max_size=60))
def test_any_segments_give_turns_the_wire_accepts(segments: list[tuple[int, int, int, int, bytes, int]]) -> None:
    asm = TurnAssembler(AssemblerSpec(max_flows=2, turn_idle=0.001, flow_idle=0.002))
    turns: list[Turn] = []
    for i, (client, seq, ack, flags, payload, extra) in enumerate(segments):
        turns += asm.feed((*SERVER, 1, client), seq, ack, flags, payload, i * 1000, len(payload) + extra)
        if i % 7 == 0:
            turns += asm.poll(i * 1000)
        assert len(asm) <= 2
    turns += asm.flush()
    for turn in turns:
        assert decode_turn(encode_turn(turn)) == turn
        assert len(turn.head) <= turn.length


def test_turn_length_counts_holes_past_the_sequence_space() -> None:
    srv = Server(TurnAssembler()).syn_ack()
    srv.request(10)
    srv.send(b"a")
    for _ in range(3):                                             # three holes of almost 2**31 each
        srv.seq = (srv.seq + 2**31 - 1) % (1 << 32)
        srv.send(b"b")
    srv.fin()
    (turn,) = srv.turns
    assert turn.length == 4 + 3 * (2**31 - 1) and turn.incomplete and srv.asm.counters.gaps == 3
    assert decode_turn(encode_turn(turn)) == turn
