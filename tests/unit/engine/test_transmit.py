"""Session engine playbooks: sending to the target (timestamps, windows, MSS, retransmission)."""

from __future__ import annotations

import pytest

from appliance.core.packet import ACK, FIN, PSH, SYN, parse_options, timestamp_option
from tests.unit.enginekit import C_ISN, O_ISN, OUR_SYN, T_ISN, THIRD_ACK, Playbook, brief, client, target, ts

S1 = C_ISN + 1
MSS1460 = b"\x02\x04\x05\xb4"
CLIENT_TS_WS = b"\x02\x04\x05\xb4\x04\x02" + b"\x08\x0a\x00\x00\x03\x09\x00\x00\x00\x00" + b"\x01\x03\x03\x07"


def handshake(pb: Playbook, syn_opts: bytes = b"", synack_opts: bytes = MSS1460, window: int = 65535) -> None:
    assert brief(pb.cap(client(C_ISN, 0, SYN, options=syn_opts))) == [OUR_SYN]
    assert brief(pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK, window=window, options=synack_opts))) == [THIRD_ACK]
    assert pb.cap(client(C_ISN + 1, O_ISN + 1, ACK)) == []


def ts_of(e) -> tuple[int | None, int | None]:
    o = parse_options(e.options)
    return o.ts_val, o.ts_ecr


# ---- timestamps -----------------------------------------------------------------------------
def test_timestamps_echo_target_and_never_go_backwards():
    pb = Playbook()
    handshake(pb, CLIENT_TS_WS, MSS1460 + ts(5555, 777) + b"\x01\x03\x03\x02")
    (d1,) = pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"a" * 10, options=ts(800, 4444)))
    assert d1.options == timestamp_option(800, 5555)          # TSecr = the target's last TSval
    (ack,) = pb.resp(target(T_ISN + 1, S1 + 10, ACK | PSH, 20, options=ts(5600, 800)))
    assert ts_of(ack) == (800, 5600)
    (d2,) = pb.cap(client(S1 + 10, O_ISN + 1, ACK | PSH, b"b", options=ts(790, 4444)))   # reordered capture
    assert ts_of(d2) == (800, 5600)                            # TSval never decreases
    (d3,) = pb.cap(client(S1 + 11, O_ISN + 1, ACK | PSH, b"c", options=ts(900, 4444)))
    assert ts_of(d3) == (900, 5600)
    (d4,) = pb.cap(client(S1 + 12, O_ISN + 1, ACK | PSH, b"d"))  # no TS captured: keep ours
    assert ts_of(d4) == (900, 5600)


def test_timestamp_wraparound_counts_as_newer():
    pb = Playbook()
    syn_opts = b"\x02\x04\x05\xb4" + ts(0xFFFFFFF0, 0)
    handshake(pb, syn_opts, MSS1460 + ts(1, 0xFFFFFFF0))
    (d,) = pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"a", options=ts(5, 0)))
    assert ts_of(d) == (5, 1)


def test_no_timestamps_when_target_did_not_negotiate():
    pb = Playbook()
    handshake(pb, CLIENT_TS_WS, MSS1460)
    (d,) = pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"a", options=ts(800, 1)))
    assert d.options == b""
    (a,) = pb.resp(target(T_ISN + 1, S1 + 1, ACK, 5, options=ts(6000, 800)))
    assert a.options == b""


def test_timestamps_reduce_segment_payload():
    pb = Playbook()
    handshake(pb, CLIENT_TS_WS, MSS1460 + ts(5555, 777))
    out = pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"z" * 3000, options=ts(800, 1)))
    assert [len(e.payload) for e in out] == [1448, 1448, 104]


# ---- window ---------------------------------------------------------------------------------
def test_zero_window_stops_sends_probes_and_update_resumes():
    pb = Playbook()
    handshake(pb)
    assert pb.resp(target(T_ISN + 1, S1, ACK, window=0)) == []
    assert pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"q" * 100)) == []
    assert pb.c.window_stalls == 1
    assert pb.table.next_deadline() == pytest.approx(pb.now + 0.1)
    probe = pb.to_deadline()
    assert brief(probe) == [(ACK, S1 - 1, T_ISN + 1, 0)]      # an old seq makes the target re-advertise
    assert brief(pb.to_deadline()) == [(ACK, S1 - 1, T_ISN + 1, 0)]
    assert pb.c.window_stalls == 1                             # one stall, several probes
    out = pb.resp(target(T_ISN + 1, S1, ACK, window=65535))
    assert brief(out) == [(ACK | PSH, S1, T_ISN + 1, 100)]
    assert pb.table.next_deadline() == pytest.approx(pb.now + 0.1)   # now the RTO, no more probes
    assert brief(pb.to_deadline()) == [(ACK | PSH, S1, T_ISN + 1, 100)]


def test_window_limits_bytes_in_flight():
    pb = Playbook()
    handshake(pb, window=300)
    out = pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"w" * 1000))
    assert brief(out) == [(ACK | PSH, S1, T_ISN + 1, 300)]
    out = pb.resp(target(T_ISN + 1, S1 + 300, ACK, window=300))
    assert brief(out) == [(ACK | PSH, S1 + 300, T_ISN + 1, 300)]
    out = pb.resp(target(T_ISN + 1, S1 + 400, ACK, window=300))    # 100 acked: 100 more may go
    assert brief(out) == [(ACK | PSH, S1 + 600, T_ISN + 1, 100)]


def test_window_scale_from_syn_ack_is_applied():
    pb = Playbook()
    handshake(pb, CLIENT_TS_WS, MSS1460 + b"\x01\x03\x03\x02", window=300)
    # a SYN-ACK's window is never scaled: 300 bytes
    out = pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"w" * 1000))
    assert brief(out) == [(ACK | PSH, S1, T_ISN + 1, 300)]
    # later windows are scaled by 2**2: 100 -> 400 bytes from the acked point
    out = pb.resp(target(T_ISN + 1, S1 + 300, ACK, window=100))
    assert brief(out) == [(ACK | PSH, S1 + 300, T_ISN + 1, 400)]


def test_window_scale_ignored_unless_both_sides_offered_it():
    pb = Playbook()
    handshake(pb, MSS1460, MSS1460 + b"\x01\x03\x03\x02")      # the client offered no WS
    assert pb.resp(target(T_ISN + 1, S1, ACK, window=100)) == []
    out = pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"w" * 1000))
    assert brief(out) == [(ACK | PSH, S1, T_ISN + 1, 100)]


# ---- segmentation ---------------------------------------------------------------------------
def test_oversized_capture_is_split_into_mss_segments():
    pb = Playbook()
    handshake(pb)
    data = bytes(range(256)) * 20
    out = pb.cap(client(S1, O_ISN + 1, ACK | PSH, data[:5000]))
    assert [(e.seq, len(e.payload)) for e in out] == [(S1, 1460), (S1 + 1460, 1460), (S1 + 2920, 1460),
                                                       (S1 + 4380, 620)]
    assert all(e.flags == ACK | PSH and e.ack == T_ISN + 1 for e in out)
    assert b"".join(e.payload for e in out) == data[:5000]
    assert pb.c.bytes_sent == 5000
    assert pb.resp(target(T_ISN + 1, S1 + 5000, ACK)) == []
    assert pb.c.bytes_acked == 5000 and pb.session.buffered == 0


def test_split_then_the_fin_alone_once_every_byte_is_acknowledged():
    pb = Playbook()
    handshake(pb)
    out = pb.cap(client(S1, O_ISN + 1, ACK | PSH | FIN, b"f" * 3000))
    assert [(e.flags, len(e.payload)) for e in out] == [(ACK | PSH, 1460), (ACK | PSH, 1460), (ACK | PSH, 80)]
    assert not pb.session.fin_sent
    assert pb.resp(target(T_ISN + 1, S1 + 2920, ACK)) == []
    assert [len(e.payload) for e in pb.advance(1.0)] == [80]     # retransmitted; the FIN still waits
    assert pb.resp(target(T_ISN + 1, S1 + 3000, ACK)) == []
    assert [(e.flags, e.seq) for e in pb.advance(0.2)] == [(ACK | FIN, S1 + 3000)]
    assert pb.session.fin_sent


def test_target_mss_and_mtu_bound_segment_size():
    pb = Playbook()
    handshake(pb, synack_opts=b"\x02\x04\x02\x18")            # target MSS 536
    assert [len(e.payload) for e in pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"m" * 1072))] == [536, 536]
    pb = Playbook(mtu=1000)
    handshake(pb)                                              # MSS 1460 but our MTU is 1000
    assert [len(e.payload) for e in pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"m" * 1500))] == [960, 540]
    pb = Playbook()
    handshake(pb, synack_opts=b"")                             # no MSS option: RFC 879 default 536
    assert [len(e.payload) for e in pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"m" * 600))] == [536, 64]


# ---- retransmission -------------------------------------------------------------------------
def test_rto_retransmits_with_exponential_backoff_capped():
    pb = Playbook(rto_min=0.1, rto_max=3.0)
    handshake(pb)
    (first,) = pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"r" * 100))
    got = pb.run_until(110.0)
    times = [round(t - 100.0, 6) for t, _ in got]
    assert times == [0.1, 0.3, 0.7, 1.5, 3.1, 6.1, 9.1]
    assert all(brief([e]) == brief([first]) and e.payload == first.payload for _, e in got)
    assert pb.c.retransmits == 7
    # an ack resets the timeout to rto_min
    assert pb.resp(target(T_ISN + 1, S1 + 100, ACK)) == []
    assert brief(pb.cap(client(S1 + 100, O_ISN + 1, ACK | PSH, b"s" * 10))) == [(ACK | PSH, S1 + 100, T_ISN + 1, 10)]
    t0 = pb.now
    (again,) = pb.to_deadline()
    assert pb.now - t0 == pytest.approx(0.1)
    assert (again.seq, len(again.payload)) == (S1 + 100, 10)


def test_the_retransmission_timeout_follows_the_measured_round_trip_rfc6298():
    """Acks that come 0.3 s after each send (a far target, or this worker's own backlog) raise the
    timeout above them: nothing is sent again that the target is about to acknowledge. A segment sent
    twice gives no sample (Karn)."""
    pb = Playbook(rto_min=0.1, rto_max=3.0)
    handshake(pb)
    seq = S1
    for _ in range(4):
        assert brief(pb.cap(client(seq, O_ISN + 1, ACK | PSH, b"r" * 10))) == [(ACK | PSH, seq, T_ISN + 1, 10)]
        seq += 10
        assert pb.advance(0.09) == []                            # before rto_min: nothing again anyway
        pb.now += 0.21
        assert pb.resp(target(T_ISN + 1, seq, ACK)) == []
    sess = pb.session
    assert sess.srtt == pytest.approx(0.3) and 0.3 < sess.rto < 1.0
    assert brief(pb.cap(client(seq, O_ISN + 1, ACK | PSH, b"s" * 10))) == [(ACK | PSH, seq, T_ISN + 1, 10)]
    assert pb.advance(0.3) == []                                 # no spurious retransmission
    (again,) = pb.to_deadline()
    assert again.seq == seq and pb.c.retransmits == 1
    pb.now += 1.0
    assert pb.resp(target(T_ISN + 1, seq + 10, ACK)) == []       # acks a segment sent twice: no sample
    assert sess.srtt == pytest.approx(0.3)


def test_retransmission_carries_the_current_ack():
    pb = Playbook()
    handshake(pb)
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"r" * 100))) == [(ACK | PSH, S1, T_ISN + 1, 100)]
    out = pb.resp(target(T_ISN + 1, S1, ACK, 50))              # data, but our segment not acked
    assert brief(out) == [(ACK, S1 + 100, T_ISN + 51, 0)]
    (rtx,) = pb.to_deadline()
    assert (rtx.seq, rtx.ack) == (S1, T_ISN + 51)


def test_fast_retransmit_after_three_duplicate_acks():
    pb = Playbook()
    handshake(pb)
    for i in range(3):
        out = pb.cap(client(S1 + 100 * i, O_ISN + 1, ACK | PSH, bytes([65 + i]) * 100))
        assert brief(out) == [(ACK | PSH, S1 + 100 * i, T_ISN + 1, 100)]
    assert pb.resp(target(T_ISN + 1, S1 + 100, ACK)) == []      # first segment acked
    assert pb.resp(target(T_ISN + 1, S1 + 100, ACK)) == []
    assert pb.resp(target(T_ISN + 1, S1 + 100, ACK)) == []
    (fr,) = pb.resp(target(T_ISN + 1, S1 + 100, ACK))
    assert (fr.flags, fr.seq, fr.payload) == (ACK | PSH, S1 + 100, b"B" * 100)
    assert (pb.c.fast_retransmits, pb.c.retransmits) == (1, 0)
    assert pb.resp(target(T_ISN + 1, S1 + 100, ACK)) == []      # a fourth dup: no second one
    assert pb.c.fast_retransmits == 1


def test_after_a_loss_each_partial_ack_fills_the_next_hole_at_once_newreno():
    """The target lost several segments (a pruned receive queue, say): after the first is sent again,
    each ack that stops short of what was in flight shows the next hole, filled at once, not one
    retransmission timeout apart."""
    pb = Playbook()
    handshake(pb)
    for i in range(4):
        out = pb.cap(client(S1 + 100 * i, O_ISN + 1, ACK | PSH, bytes([65 + i]) * 100))
        assert brief(out) == [(ACK | PSH, S1 + 100 * i, T_ISN + 1, 100)]
    (rto,) = pb.to_deadline()                                   # nothing acked: the first again
    assert (rto.seq, pb.c.retransmits) == (S1, 1)
    (hole2,) = pb.resp(target(T_ISN + 1, S1 + 100, ACK))      # partial: the second was lost too
    assert (hole2.seq, hole2.payload) == (S1 + 100, b"B" * 100)
    (hole4,) = pb.resp(target(T_ISN + 1, S1 + 300, ACK))      # the third had arrived, the fourth not
    assert (hole4.seq, hole4.payload) == (S1 + 300, b"D" * 100)
    assert pb.resp(target(T_ISN + 1, S1 + 400, ACK)) == []      # all of it: recovery ends
    assert pb.c.retransmits == 3 and not pb.session.recovering


def test_window_updates_and_data_are_not_duplicate_acks():
    pb = Playbook()
    handshake(pb)
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"A" * 100))) == [(ACK | PSH, S1, T_ISN + 1, 100)]
    assert brief(pb.cap(client(S1 + 100, O_ISN + 1, ACK | PSH, b"B" * 100))) == [(ACK | PSH, S1 + 100, T_ISN + 1, 100)]
    assert pb.resp(target(T_ISN + 1, S1, ACK, window=60000)) == []        # window changed
    # data from the target: only our ACKs of it
    assert brief(pb.resp(target(T_ISN + 1, S1, ACK | PSH, 10, window=60000))) == [(ACK, S1 + 200, T_ISN + 11, 0)]
    assert brief(pb.resp(target(T_ISN + 11, S1, ACK | PSH, 10, window=60000))) == [(ACK, S1 + 200, T_ISN + 21, 0)]
    assert pb.resp(target(T_ISN + 21, S1, ACK, window=60000)) == []       # the first real duplicate
    assert pb.c.fast_retransmits == 0


def test_partial_ack_trims_inflight():
    pb = Playbook()
    handshake(pb)
    data = bytes(range(200)) * 5
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, data))) == [(ACK | PSH, S1, T_ISN + 1, 1000)]
    assert pb.session.buffered == 1000
    assert pb.resp(target(T_ISN + 1, S1 + 600, ACK)) == []
    assert pb.c.bytes_acked == 600 and pb.session.buffered == 400
    (rtx,) = pb.to_deadline()
    assert (rtx.seq, rtx.payload) == (S1 + 600, data[600:])
    assert pb.resp(target(T_ISN + 1, S1 + 1000, ACK)) == []
    assert pb.c.bytes_acked == 1000 and pb.session.buffered == 0
    assert pb.table.next_deadline() > pb.now + 100               # no RTO left armed


def test_acks_outside_the_window_are_ignored():
    pb = Playbook()
    handshake(pb)
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"x" * 100))) == [(ACK | PSH, S1, T_ISN + 1, 100)]
    assert pb.resp(target(T_ISN + 1, S1 + 5000, ACK)) == []     # acks bytes never sent
    assert pb.resp(target(T_ISN + 1, S1 - 10, ACK)) == []       # old ack
    assert pb.c.bytes_acked == 0 and pb.session.snd_una == S1
