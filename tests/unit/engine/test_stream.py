"""Session engine playbooks: the captured client stream (order, duplicates, gaps, overflow, wrap)."""

from __future__ import annotations

from appliance.core.packet import ACK, FIN, PSH, RST, SYN, mss_option
from appliance.engine.session import INF, State
from tests.unit.enginekit import C_ISN, CPORT, O_ISN, T_ISN, Playbook, brief, client, target

S1 = C_ISN + 1
MSS1460 = b"\x02\x04\x05\xb4"


def est(**params: object) -> Playbook:
    pb = Playbook(**params)
    pb.establish()
    return pb


# ---- order and duplicates -------------------------------------------------------------------
def test_out_of_order_segments_are_reassembled():
    pb = est()
    assert pb.cap(client(S1 + 200, O_ISN + 1, ACK | PSH, b"C" * 100)) == []
    assert pb.cap(client(S1 + 100, O_ISN + 1, ACK | PSH, b"B" * 100)) == []
    assert pb.session.buffered == 200
    out = pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"A" * 100))
    # in order, in one segment: what is ready together leaves together (up to the MSS)
    assert [(e.seq, e.payload) for e in out] == [(S1, b"A" * 100 + b"B" * 100 + b"C" * 100)]
    assert pb.session.stream.ooo == {} and pb.session.stream.gap_since == INF
    assert pb.resp(target(T_ISN + 1, S1 + 300, ACK)) == []
    assert pb.advance(1.0) == []                             # past gap_timeout: nothing happens
    assert pb.c.capture_gaps == 0


def test_duplicate_capture_is_dropped_and_counted():
    pb = est()
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"A" * 100))) == [(ACK | PSH, S1, T_ISN + 1, 100)]
    assert pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"A" * 100)) == []
    assert pb.cap(client(S1 + 10, O_ISN + 1, ACK | PSH, b"A" * 20)) == []   # inside what we have
    assert pb.c.client_retransmits == 2
    assert pb.session.buffered == 100


def test_overlapping_capture_is_trimmed():
    pb = est()
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, bytes(range(100))))) == [(ACK | PSH, S1, T_ISN + 1, 100)]
    out = pb.cap(client(S1 + 50, O_ISN + 1, ACK | PSH, bytes(range(50, 150))))
    assert [(e.seq, e.payload) for e in out] == [(S1 + 100, bytes(range(100, 150)))]
    assert pb.c.bytes_sent == 150


def test_duplicate_out_of_order_segment_is_kept_once():
    pb = est()
    pb.cap(client(S1 + 100, O_ISN + 1, ACK | PSH, b"B" * 100))
    pb.cap(client(S1 + 100, O_ISN + 1, ACK | PSH, b"B" * 100))
    assert pb.session.buffered == 100
    out = pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"A" * 100))
    assert [(e.seq, e.payload) for e in out] == [(S1, b"A" * 100 + b"B" * 100)]


def test_overlapping_out_of_order_segments_do_not_stall_the_stream():
    # a retransmission re-segmented differently: [S1+50, S1+150) and [S1+100, S1+200) both arrive
    # before the hole [S1, S1+50) is filled; every byte is there, so nothing may be lost or reset
    pb = est()
    data = bytes(range(200))
    pb.cap(client(S1 + 100, O_ISN + 1, ACK | PSH, data[100:200]))
    pb.cap(client(S1 + 50, O_ISN + 1, ACK | PSH, data[50:150]))
    out = pb.cap(client(S1, O_ISN + 1, ACK | PSH, data[:50]))
    assert b"".join(e.payload for e in out) == data
    assert [e.seq for e in out][0] == S1
    assert pb.session.stream.ooo == {} and pb.session.stream.end == S1 + 200
    pb.resp(target(T_ISN + 1, S1 + 200, ACK))
    assert pb.advance(1.0) == []
    assert pb.c.capture_gaps == 0 and pb.c.resets_sent == 0


def test_longer_out_of_order_segment_at_same_seq_replaces_shorter():
    pb = est()
    data = bytes(range(200))
    pb.cap(client(S1 + 100, O_ISN + 1, ACK | PSH, data[100:150]))
    pb.cap(client(S1 + 100, O_ISN + 1, ACK | PSH, data[100:200]))   # same start, more bytes
    pb.cap(client(S1 + 100, O_ISN + 1, ACK | PSH, data[100:120]))   # same start, fewer: ignored
    assert pb.session.buffered == 100
    out = pb.cap(client(S1, O_ISN + 1, ACK | PSH, data[:100]))
    assert b"".join(e.payload for e in out) == data
    assert pb.session.stream.ooo == {} and pb.session.stream.gap_since == INF


def test_gap_filled_in_time_is_not_a_capture_gap():
    pb = est(gap_timeout=0.5)
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"A" * 100))) == [(ACK | PSH, S1, T_ISN + 1, 100)]
    assert pb.cap(client(S1 + 200, O_ISN + 1, ACK | PSH, b"C" * 100)) == []
    assert brief(pb.advance(0.4)) == [(ACK | PSH, S1, T_ISN + 1, 100)]              # an RTO retransmission of A
    out = pb.cap(client(S1 + 100, O_ISN + 1, ACK | PSH, b"B" * 100))
    assert [(e.seq, e.payload) for e in out] == [(S1 + 100, b"B" * 100 + b"C" * 100)]
    assert pb.resp(target(T_ISN + 1, S1 + 300, ACK)) == []
    assert pb.advance(1.0) == []
    assert pb.c.capture_gaps == 0 and pb.c.resets_sent == 0


# ---- capture gaps and resynchronisation -----------------------------------------------------
def test_capture_gap_resyncs_and_restarts_at_next_turn():
    pb = est(gap_timeout=0.5)
    # request 1, part 1
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"A" * 100))) == [(ACK | PSH, S1, T_ISN + 1, 100)]
    assert pb.resp(target(T_ISN + 1, S1 + 100, ACK)) == []
    # part 2 [S1+100, S1+200) was never captured; part 3 was
    assert pb.cap(client(S1 + 200, O_ISN + 1, ACK | PSH, b"C" * 100)) == []
    assert pb.table.next_deadline() == pb.now + 0.5
    out = pb.to_deadline()
    assert brief(out) == [(RST | ACK, S1 + 100, T_ISN + 1, 0)]
    assert (pb.c.capture_gaps, pb.c.gap_bytes_skipped) == (1, 100)
    assert pb.c.resync_bytes_dropped == 100                        # part 3 belongs to the broken turn
    assert pb.session.state is State.RESYNC
    # more of the broken request: dropped, no new connection yet
    assert pb.cap(client(S1 + 300, O_ISN + 1, ACK | PSH, b"D" * 50)) == []
    assert pb.c.resync_bytes_dropped == 150
    # the next request (the client had received a 500-byte response online) restarts the session
    s2 = S1 + 350
    out = pb.cap(client(s2, O_ISN + 501, ACK | PSH, b"GET /next\r\n\r\n"))
    assert brief(out) == [(SYN, s2 - 1, 0, 0)]
    assert out[0].options == mss_option(1460)
    assert (pb.c.restarts, pb.c.sessions_fake_syn, pb.c.sessions_started) == (1, 1, 1)
    port = out[0].src_port                    # a new connection from a spare port of the client's
    assert port != CPORT and pb.session.key[1] == port
    t2 = 77_000_000
    out = pb.resp(target(t2, s2, SYN | ACK, options=MSS1460, port=port))
    # not held for an answer the new connection can never get
    assert brief(out) == [(ACK, s2, t2 + 1, 0), (ACK | PSH, s2, t2 + 1, 13)]
    # and from here pacing works on the new connection, fed by what arrives on the client's port
    assert pb.cap(client(s2 + 13, O_ISN + 601, ACK | PSH, b"x")) == []
    out = pb.resp(target(t2 + 1, s2 + 13, ACK, 100, port=port))
    assert brief(out) == [(ACK | PSH, s2 + 13, t2 + 101, 1)]


def test_resync_restarts_immediately_when_a_later_turn_is_already_buffered():
    pb = est(gap_timeout=0.5)
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"A" * 100))) == [(ACK | PSH, S1, T_ISN + 1, 100)]
    assert pb.resp(target(T_ISN + 1, S1 + 100, ACK)) == []
    assert pb.cap(client(S1 + 200, O_ISN + 1, ACK | PSH, b"C" * 100)) == []     # gap before it
    assert pb.cap(client(S1 + 300, O_ISN + 401, ACK | PSH, b"N" * 10)) == []    # next turn, also buffered
    out = pb.to_deadline()
    assert brief(out) == [(RST | ACK, S1 + 100, T_ISN + 1, 0), (SYN, S1 + 299, 0, 0)]
    assert pb.session.state is State.SYN_SENT and pb.c.restarts == 1


def test_session_gives_up_after_max_restarts():
    pb = est(gap_timeout=0.5, max_restarts=1)
    s = S1
    assert brief(pb.cap(client(s, O_ISN + 1, ACK | PSH, b"A" * 10))) == [(ACK | PSH, s, T_ISN + 1, 10)]
    assert pb.resp(target(T_ISN + 1, s + 10, ACK)) == []
    assert pb.cap(client(s + 20, O_ISN + 1, ACK | PSH, b"C" * 10)) == []        # gap 1
    assert brief(pb.to_deadline()) == [(RST | ACK, s + 10, T_ISN + 1, 0)]
    out = pb.cap(client(s + 30, O_ISN + 101, ACK | PSH, b"D" * 10))              # restart 1
    assert brief(out) == [(SYN, s + 29, 0, 0)]
    port = pb.session.key[1]
    assert out[0].src_port == port != CPORT
    out = pb.resp(target(T_ISN, s + 30, SYN | ACK, port=port))
    assert brief(out) == [(ACK, s + 30, T_ISN + 1, 0), (ACK | PSH, s + 30, T_ISN + 1, 10)]
    assert pb.resp(target(T_ISN + 1, s + 40, ACK, port=port)) == []
    assert pb.cap(client(s + 50, O_ISN + 101, ACK | PSH, b"F" * 10)) == []      # gap 2
    out = pb.to_deadline()
    assert brief(out) == [(RST | ACK, s + 40, T_ISN + 1, 0)]
    assert pb.c.capture_gaps == 2
    assert pb.cap(client(s + 60, O_ISN + 201, ACK | PSH, b"G" * 10)) == []   # no restart 2
    assert pb.session.state is State.CLOSED and pb.c.restarts == 1


def test_resync_session_times_out_when_no_turn_comes():
    pb = est(gap_timeout=0.5, keepalive_timeout=30.0)
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"A" * 10))) == [(ACK | PSH, S1, T_ISN + 1, 10)]
    assert pb.resp(target(T_ISN + 1, S1 + 10, ACK)) == []
    assert pb.cap(client(S1 + 20, O_ISN + 1, ACK | PSH, b"C" * 10)) == []
    assert brief(pb.to_deadline()) == [(RST | ACK, S1 + 10, T_ISN + 1, 0)]
    assert pb.session.state is State.RESYNC
    assert pb.table.next_deadline() < INF                          # never stalls forever
    got = pb.run_until(pb.now + 40)
    assert got == []                                               # already reset: no second RST
    assert pb.c.sessions_timed_out == 1
    assert not pb.table.sessions                                   # and forgotten after linger


def test_buffer_overflow_resyncs():
    pb = est(buffer_limit=1000)
    out = pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"A" * 600))     # in flight, unacked
    assert brief(out) == [(ACK | PSH, S1, T_ISN + 1, 600)]
    out = pb.cap(client(S1 + 600, O_ISN + 101, ACK | PSH, b"B" * 600))   # held turn: 1200 buffered
    assert brief(out) == [(RST | ACK, S1 + 600, T_ISN + 1, 0), (RST | ACK, S1, T_ISN + 1, 0)]
    assert (pb.c.buffer_overflows, pb.c.resync_bytes_dropped) == (1, 600)
    assert pb.session.state is State.RESYNC and pb.session.buffered == 0
    assert pb.table.buffered_bytes() == 0
    out = pb.cap(client(S1 + 1200, O_ISN + 201, ACK | PSH, b"C" * 10))
    assert brief(out) == [(SYN, S1 + 1199, 0, 0)]


def test_buffer_overflow_by_out_of_order_data():
    pb = est(buffer_limit=1000)
    for i in range(1, 11):
        assert pb.cap(client(S1 + 100 * i, O_ISN + 1, ACK | PSH, b"o" * 100)) == []
    assert pb.c.buffer_overflows == 0
    out = pb.cap(client(S1 + 1100, O_ISN + 1, ACK | PSH, b"o" * 100))          # 1100 bytes held
    assert brief(out) == [(RST | ACK, S1, T_ISN + 1, 0)]                        # nothing was sent yet
    assert pb.c.buffer_overflows == 1
    assert pb.c.resets_sent == 1


# ---- sequence wraparound --------------------------------------------------------------------
def test_sequence_numbers_wrap_mid_session():
    c_isn, o_isn, t_isn = 0xFFFFFF00, 0xFFFFFFF0, 0xFFFFFFC0
    pb = Playbook()
    assert brief(pb.cap(client(c_isn, 0, SYN))) == [(SYN, c_isn, 0, 0)]
    assert brief(pb.resp(target(t_isn, c_isn + 1, SYN | ACK, options=MSS1460))) == [(ACK, c_isn + 1, t_isn + 1, 0)]
    assert pb.cap(client(c_isn + 1, o_isn + 1, ACK)) == []
    s1 = c_isn + 1                                     # 0xFFFFFF01
    data = bytes(range(256)) * 2
    (d1,) = pb.cap(client(s1, o_isn + 1, ACK | PSH, data))            # crosses 2**32
    assert d1.seq == 0xFFFFFF01 and d1.ack == 0xFFFFFFC1
    s2 = (s1 + 512) & 0xFFFFFFFF
    assert s2 == 0x101
    # the target's answer crosses 2**32 in its own sequence space
    (a,) = pb.resp(target(t_isn + 1, s2, ACK | PSH, 300))
    assert a.ack == (t_isn + 301) & 0xFFFFFFFF == 0xED
    assert pb.c.bytes_acked == 512 and pb.session.buffered == 0
    # the client acks across its own wrap too: 300 response bytes -> next turn released
    (d2,) = pb.cap(client(s2, o_isn + 301, ACK | PSH, b"next"))
    assert (d2.seq, d2.ack) == (0x101, 0xED)
    # split across the wrap
    pb2 = Playbook()
    assert brief(pb2.cap(client(0xFFFFF000, 0, SYN))) == [(SYN, 0xFFFFF000, 0, 0)]
    assert brief(pb2.resp(target(t_isn, 0xFFFFF001, SYN | ACK, options=MSS1460))) == [(ACK, 0xFFFFF001, t_isn + 1, 0)]
    out = pb2.cap(client(0xFFFFF001, o_isn + 1, ACK | PSH, b"w" * 5000))
    assert [e.seq for e in out] == [0xFFFFF001, 0xFFFFF5B5, 0xFFFFFB69, 0x11D]
    assert pb2.resp(target(t_isn + 1, (0xFFFFF001 + 2920) & 0xFFFFFFFF, ACK)) == []
    assert pb2.c.bytes_acked == 2920
    (rtx,) = pb2.to_deadline()
    assert rtx.seq == 0xFFFFFB69


def test_wrap_with_out_of_order_and_fin():
    pb = Playbook()
    isn = 0xFFFFFFF0
    assert brief(pb.cap(client(isn, 0, SYN))) == [(SYN, isn, 0, 0)]
    assert brief(pb.resp(target(T_ISN, isn + 1, SYN | ACK, options=MSS1460))) == [(ACK, isn + 1, T_ISN + 1, 0)]
    s = isn + 1
    assert pb.cap(client(s + 30, O_ISN + 1, ACK | PSH | FIN, b"C" * 10)) == []     # ooo, after the wrap
    out = pb.cap(client(s, O_ISN + 1, ACK | PSH, b"A" * 30))
    assert [(e.seq, len(e.payload), e.flags & FIN) for e in out] == [(s, 40, 0)]
    assert pb.resp(target(T_ISN + 1, 25, ACK)) == []
    assert brief(pb.advance(0.2)) == [(ACK | FIN, 25, T_ISN + 1, 0)]
    assert brief(pb.resp(target(T_ISN + 1, 26, ACK | FIN))) == [(ACK, 26, T_ISN + 2, 0)]
    assert pb.c.sessions_completed == 1


def test_reassembly_of_shuffled_overlapping_captures():
    """Seeded property test: any segmentation, duplication and order of a captured stream that
    covers every byte comes out as exactly that stream, in order, with no reset and no gap."""
    import random

    rng = random.Random(4242)
    for trial in range(200):
        size = rng.randrange(1, 4000)
        data = rng.randbytes(size)
        pieces = []
        at = 0
        while at < size:                                  # a chain of pieces overlapping by 0-99 bytes
            start = rng.randrange(max(0, at - 99), at + 1)
            end = min(size, max(start + rng.randrange(1, 700), at + 1))
            pieces.append((start, data[start:end]))
            at = end
        for _ in range(rng.randrange(0, 4)):              # plus stray retransmissions of any range
            start = rng.randrange(size)
            end = min(size, start + rng.randrange(1, 700))
            pieces.append((start, data[start:end]))
        rng.shuffle(pieces)
        pieces = pieces[:rng.randrange(0, len(pieces) + 1)] + pieces   # some arrive twice
        pb = est()
        out = []
        for at, chunk in pieces:
            out += pb.cap(client(S1 + at, O_ISN + 1, ACK | PSH, chunk))
        sent = [(e.seq, e.payload) for e in out if e.payload]
        assert b"".join(p for _, p in sent) == data, trial
        assert [s for s, _ in sent] == [S1 + sum(len(p) for _, p in sent[:i]) for i in range(len(sent))]
        assert pb.session.stream.ooo == {} and pb.session.stream.end == S1 + size
        assert pb.session.buffered == size                # all of it in flight, none left over
        pb.resp(target(T_ISN + 1, S1 + size, ACK))
        pb.advance(1.0)
        assert pb.c.capture_gaps == 0 and pb.c.resets_sent == 0, trial
