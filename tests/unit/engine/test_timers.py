"""Session engine playbooks: the table's timer heap (next_deadline, poll) and clock edge cases."""

from __future__ import annotations

import pytest

from appliance.core.packet import ACK, PSH, RST, SYN
from appliance.engine.session import INF, State
from tests.unit.enginekit import C_ISN, CPORT, O_ISN, OUR_SYN, T_ISN, THIRD_ACK, Playbook, brief, client, target

S1 = C_ISN + 1
SENT_A = (ACK | PSH, S1, T_ISN + 1, 10)
MSS1460 = b"\x02\x04\x05\xb4"


def test_no_sessions_no_deadline():
    pb = Playbook()
    assert pb.table.next_deadline() == INF
    assert pb.advance(1000) == []


def test_timers_fire_in_deadline_order_not_creation_order():
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN, port=CPORT + 1))) == [OUR_SYN]   # X: SYN at 100.0 -> rto 100.5
    pb.now = 100.1
    assert brief(pb.cap(client(C_ISN, 0, SYN, port=CPORT + 2))) == [OUR_SYN]   # Y: SYN at 100.1 -> rto 100.6
    assert brief(pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK, options=MSS1460, port=CPORT + 2))) == [THIRD_ACK]
    pb.now = 100.3
    out = pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"y", port=CPORT + 2))        # Y: data -> RTO 100.4
    assert brief(out) == [(ACK | PSH, S1, T_ISN + 1, 1)]
    assert pb.table.next_deadline() == pytest.approx(100.4)
    out = pb.advance_to(100.7)
    assert [(e.src_port, e.flags) for e in out] == [(CPORT + 2, ACK | PSH), (CPORT + 1, SYN)]
    # each re-armed from the time it actually ran
    assert pb.table.next_deadline() == pytest.approx(100.9)      # Y: 100.7 + doubled rto 0.2


def test_next_deadline_skips_stale_entries():
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    assert pb.table.next_deadline() == pytest.approx(100.5)
    pb.now = 100.1
    assert brief(pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK, options=MSS1460))) == [THIRD_ACK]
    # the SYN retransmission entry is still in the heap but no longer the session's deadline
    assert pb.table.next_deadline() == pytest.approx(100.1 + 720.0)
    assert pb.advance_to(100.5) == []
    assert pb.advance_to(110) == []


def test_poll_before_deadline_does_nothing():
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    d = pb.table.next_deadline()
    assert pb.advance_to(d - 1e-6) == []
    assert pb.table.next_deadline() == d
    assert [e.flags for e in pb.advance_to(d)] == [SYN]


def test_many_sessions_each_fire_once_per_deadline():
    pb = Playbook()
    for i in range(50):
        pb.now = 100.0 + i * 0.001
        assert brief(pb.cap(client(C_ISN + i, 0, SYN, port=CPORT + i))) == [(SYN, C_ISN + i, 0, 0)]
    out = pb.advance_to(100.6)
    assert [e.src_port for e in out] == [CPORT + i for i in range(50)]
    assert all(e.flags == SYN for e in out)


# ---- landing exactly on a deadline ----------------------------------------------------------
# The worker sleeps until next_deadline() and polls with its clock; a clock reading equal to the
# deadline must fire it. With floats, (t + d) - t can come out a hair below d: a check written as
# `now - t >= d` then refuses a deadline computed as `t + d`, the session re-arms at a time already
# past, and poll() spins forever. These scenarios start at t = 100.3 with 0.1 s timeouts, which
# hits that rounding.
T0 = 100.3


def _at(pb: Playbook, t: float) -> Playbook:
    pb.now = t
    return pb


@pytest.mark.hang_limit(3)
def test_exact_deadline_response_quiet():
    pb = Playbook(response_quiet=0.1)
    pb.establish()
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"a" * 10))) == [SENT_A]
    assert pb.resp(target(T_ISN + 1, S1 + 10, ACK)) == []
    assert pb.cap(client(S1 + 10, O_ISN + 101, ACK | PSH, b"b")) == []
    assert brief(_at(pb, T0).resp(target(T_ISN + 1, S1 + 10, ACK | PSH, 50))) == [(ACK, S1 + 10, T_ISN + 51, 0)]
    out = pb.to_deadline()
    assert brief(out) == [(ACK | PSH, S1 + 10, T_ISN + 51, 1)] and pb.c.turns_quiet == 1


@pytest.mark.hang_limit(3)
def test_exact_deadline_max_lag():
    pb = Playbook(max_lag=0.1)
    pb.establish()
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"a" * 10))) == [SENT_A]
    assert pb.resp(target(T_ISN + 1, S1 + 10, ACK)) == []
    assert _at(pb, T0).cap(client(S1 + 10, O_ISN + 101, ACK | PSH, b"b")) == []
    out = pb.to_deadline()
    assert brief(out) == [(ACK | PSH, S1 + 10, T_ISN + 1, 1)] and pb.c.turns_lagged == 1


@pytest.mark.hang_limit(3)
def test_exact_deadline_gap_timeout():
    pb = Playbook(gap_timeout=0.1, rto_min=1.0)
    pb.establish()
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"a" * 10))) == [SENT_A]
    assert pb.resp(target(T_ISN + 1, S1 + 10, ACK)) == []
    assert _at(pb, T0).cap(client(S1 + 20, O_ISN + 1, ACK | PSH, b"c")) == []
    out = pb.to_deadline()
    assert brief(out) == [(RST | ACK, S1 + 10, T_ISN + 1, 0)] and pb.c.capture_gaps == 1


@pytest.mark.hang_limit(3)
def test_exact_deadline_handshake_timeout():
    pb = Playbook(handshake_timeout=0.1, syn_rto=1.0)
    assert brief(_at(pb, T0).cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    out = pb.to_deadline()
    assert brief(out) == [(RST, C_ISN + 1, 0, 0)] and pb.c.handshake_timeouts == 1


@pytest.mark.hang_limit(3)
def test_exact_deadline_keepalive_timeout():
    pb = Playbook(keepalive_timeout=0.1)
    _at(pb, T0 - 0.05).establish()
    pb.now = T0
    pb.cap(client(C_ISN + 1, O_ISN + 1, ACK))                      # last activity at T0
    out = pb.to_deadline()
    assert brief(out) == [(RST | ACK, C_ISN + 1, T_ISN + 1, 0)] and pb.c.sessions_timed_out == 1


@pytest.mark.hang_limit(3)
def test_exact_deadline_linger():
    pb = Playbook(linger=0.1)
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    _at(pb, T0).resp(target(0, C_ISN + 1, RST | ACK))
    assert pb.session.state is State.CLOSED
    assert pb.to_deadline() == []
    assert not pb.table.sessions


def test_a_full_table_evicts_the_oldest_session_and_counts_it():
    from appliance.engine.session import State

    pb = Playbook(max_sessions=100)
    for port in range(20000, 20100):
        assert brief(pb.cap(client(1000, 0, SYN, port=port))) == [(SYN, 1000, 0, 0)]
    for port in range(20100, 20150):                                # each evicts the oldest, with a RST
        out = pb.cap(client(1000, 0, SYN, port=port))
        assert brief(out) == [(RST, 1001, 0, 0), (SYN, 1000, 0, 0)]
        assert [e.src_port for e in out] == [port - 100, port]
    assert len(pb.table.sessions) == 100
    assert pb.c.sessions_evicted == 50 and pb.c.resets_sent == 50
    assert min(k[1] for k in pb.table.sessions) == 20050          # the oldest went first
    assert all(s.state is State.SYN_SENT for s in pb.table.sessions.values())
