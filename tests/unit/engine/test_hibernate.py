"""Idle sessions packed into bytes: nothing about them may change but their size."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.packet import ACK, FIN, PSH, SYN
from appliance.engine.session import (
    _BOOLS,
    _FLOATS,
    _INTS,
    _STREAM_BOOLS,
    _STREAM_FLOATS,
    _STREAM_INTS,
    NOT_PACKED,
    Session,
)
from appliance.engine.stream import ClientStream
from appliance.engine.transmit import Transmitter
from tests.unit.enginekit import C_ISN, O_ISN, OUR_SYN, T_ISN, THIRD_ACK, Playbook, brief, client, target, ts

SYN_OPTIONS = b"\x02\x04\x05\xb4\x04\x02\x08\x0a\x00\x00\x00\x10\x00\x00\x00\x00\x01\x03\x03\x07"


def _attributes(cls: type) -> set[str]:
    """The instance attributes of an engine class: its own __slots__ when interpreted; compiled by
    mypyc, which keeps no __slots__, every attribute the class has (inherited ones too)."""
    return set(getattr(cls, "__mypyc_attrs__", None) or cls.__slots__)


def test_every_slot_is_packed_or_restored():
    packed = set(_FLOATS + _INTS + _BOOLS + _STREAM_FLOATS + _STREAM_INTS + _STREAM_BOOLS)
    slots = _attributes(Session) | _attributes(Transmitter) | _attributes(ClientStream)
    assert slots == packed | NOT_PACKED, "a new slot must be added to the hibernation lists"
    assert not packed & NOT_PACKED


def _conversation(pb: Playbook, gaps: list[float]) -> list[tuple[float, object]]:
    """A keep-alive session with timestamps: one request and answer per gap, then a close."""
    got: list[tuple[float, object]] = []

    def note(emits):
        got.extend((round(pb.now, 6), e) for e in emits)

    note(pb.cap(client(C_ISN, 0, SYN, options=SYN_OPTIONS)))
    note(pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK, options=SYN_OPTIONS)))
    note(pb.cap(client(C_ISN + 1, O_ISN + 1, ACK, options=ts(17, 1))))
    seq, o_ack, t_seq = C_ISN + 1, O_ISN + 1, T_ISN + 1
    for i, gap in enumerate(gaps):
        note(pb.advance(gap))
        request = b"GET /%d HTTP/1.1\r\n\r\n" % i
        note(pb.cap(client(seq, o_ack, ACK | PSH, request, options=ts(18 + i, 2 + i))))
        seq += len(request)
        note(pb.resp(target(t_seq, seq, ACK | PSH, payload_len=100, options=ts(40 + i, 18 + i))))
        t_seq += 100
        o_ack += 100
    note(pb.advance(0.5))
    note(pb.cap(client(seq, o_ack, FIN | ACK, options=ts(99, 60))))
    note(pb.resp(target(t_seq, seq + 1, FIN | ACK, options=ts(70, 99))))
    return got


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0.01, 1.0, 6.0, 11.0, 30.0, 200.0]), min_size=1, max_size=8))
def test_a_hibernating_table_sends_exactly_what_a_plain_one_sends(gaps):
    plain, packing = Playbook(hibernate_after=0.0), Playbook(hibernate_after=5.0)
    assert _conversation(packing, gaps) == _conversation(plain, gaps)
    assert packing.c.sessions_completed == plain.c.sessions_completed == 1
    if max(gaps) > 11:
        assert packing.c.sessions_hibernated >= 1


def test_an_idle_session_is_packed_then_revived_as_it_was():
    pb = Playbook(hibernate_after=5.0)
    assert brief(pb.cap(client(C_ISN, 0, SYN, options=SYN_OPTIONS))) == [OUR_SYN]
    assert brief(pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK, options=SYN_OPTIONS))) == [THIRD_ACK]
    assert brief(pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"hello", options=ts(18, 2)))) == [
        (ACK | PSH, C_ISN + 1, T_ISN + 1, 5)]
    assert brief(pb.resp(target(T_ISN + 1, C_ISN + 6, ACK | PSH, payload_len=10, options=ts(40, 18)))) == [
        (ACK, C_ISN + 6, T_ISN + 11, 0)]
    before = pb.session
    values = {n: getattr(before, n) for n in _FLOATS + _INTS + _BOOLS}
    stream = {n: getattr(before.stream, n) for n in _STREAM_FLOATS + _STREAM_INTS + _STREAM_BOOLS + ("online_base",)}
    assert pb.advance(6.0) == []
    (key,) = pb.table.sessions
    assert isinstance(pb.table.sessions[key], bytes) and pb.table.hibernated() == 1 and pb.table.active() == 1
    after = pb.table.get(key)
    assert {n: getattr(after, n) for n in _FLOATS + _INTS + _BOOLS} == values
    assert {n: getattr(after.stream, n) for n in stream} == stream
    assert after.state is before.state and after.key == key and not after.inflight and not after.stream.unsent


def test_sessions_with_work_pending_stay_objects():
    pb = Playbook(hibernate_after=5.0)
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    assert brief(pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK))) == [THIRD_ACK]
    request = (ACK | PSH, C_ISN + 1, T_ISN + 1, 10)
    assert brief(pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"unanswered"))) == [request]   # never acknowledged
    assert brief(pb.advance(6.0)) == [request]                      # retransmitted
    assert pb.table.hibernated() == 0 and pb.c.retransmits > 0


def test_stale_timer_entries_do_not_pile_up():
    pb = Playbook(hibernate_after=0.0)
    pb.establish()
    seq = C_ISN + 1
    for _ in range(5000):                   # every request moves the idle deadline
        pb.now += 0.001
        assert brief(pb.cap(client(seq, O_ISN + 1, ACK | PSH, b"x"))) == [(ACK | PSH, seq, T_ISN + 1, 1)]
        seq += 1
        assert pb.resp(target(T_ISN + 1, seq, ACK)) == []
    assert len(pb.table._timers) <= 2 * len(pb.table.sessions) + 1024 + 1
