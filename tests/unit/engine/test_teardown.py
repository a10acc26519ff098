"""Session engine playbooks: closing, resets from either side, timeouts, linger and shutdown."""

from __future__ import annotations

from appliance.core.packet import ACK, FIN, PSH, RST, SYN, mss_option
from appliance.engine.session import State
from tests.unit.enginekit import C_ISN, CPORT, O_ISN, OUR_SYN, T_ISN, Playbook, brief, client, target

REQ = b"GET / HTTP/1.1\r\n\r\n"      # 18 bytes
S1 = C_ISN + 1
S2 = S1 + len(REQ)
MSS1460 = b"\x02\x04\x05\xb4"


def answered(**params: object) -> Playbook:
    """Request sent and acked, 100-byte answer received and acked by us."""
    pb = Playbook(**params)
    pb.establish()
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, REQ))) == [(ACK | PSH, S1, T_ISN + 1, 18)]
    assert brief(pb.resp(target(T_ISN + 1, S2, ACK | PSH, 100))) == [(ACK, S2, T_ISN + 101, 0)]
    return pb


# ---- clean close ----------------------------------------------------------------------------
CLOSE_QUIET = 0.2      # EngineParams.close_quiet


def test_client_fin_after_target_answered_completes():
    pb = answered()
    assert pb.cap(client(S2, O_ISN + 101, ACK | FIN)) == []     # the target may still be answering
    assert pb.advance(CLOSE_QUIET - 0.01) == []
    out = pb.advance(0.01)                                       # ... it has been quiet long enough
    assert brief(out) == [(ACK | FIN, S2, T_ISN + 101, 0)]
    assert pb.session.state is State.ESTABLISHED
    out = pb.resp(target(T_ISN + 101, S2 + 1, ACK | FIN))
    assert brief(out) == [(ACK, S2 + 1, T_ISN + 102, 0)]
    assert pb.c.sessions_completed == 1 and pb.session.state is State.CLOSED
    assert pb.c.resets_sent == 0


def test_client_fin_waits_for_the_answer_it_followed():
    pb = Playbook()
    pb.establish()
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, REQ))) == [(ACK | PSH, S1, T_ISN + 1, 18)]
    assert pb.cap(client(S2, O_ISN + 101, ACK | FIN)) == []
    out = pb.resp(target(T_ISN + 1, S2, ACK | PSH, 100))
    assert brief(out) == [(ACK, S2, T_ISN + 101, 0)]
    assert brief(pb.advance(CLOSE_QUIET)) == [(ACK | FIN, S2, T_ISN + 101, 0)]


def test_fin_split_ack_then_fin_completes():
    pb = answered()
    assert pb.cap(client(S2, O_ISN + 101, ACK | FIN)) == []
    assert brief(pb.advance(CLOSE_QUIET)) == [(ACK | FIN, S2, T_ISN + 101, 0)]
    assert pb.resp(target(T_ISN + 101, S2 + 1, ACK)) == []       # FIN acked, target not closed yet
    assert pb.session.state is State.ESTABLISHED
    out = pb.resp(target(T_ISN + 101, S2 + 1, ACK | FIN))
    assert brief(out) == [(ACK, S2 + 1, T_ISN + 102, 0)]
    assert pb.c.sessions_completed == 1


def test_retransmitted_client_fin_is_not_sent_twice():
    pb = answered()
    assert pb.cap(client(S2, O_ISN + 101, ACK | FIN)) == []
    assert brief(pb.advance(CLOSE_QUIET)) == [(ACK | FIN, S2, T_ISN + 101, 0)]
    assert pb.cap(client(S2, O_ISN + 101, ACK | FIN)) == []         # the client's FIN retransmission
    assert pb.c.client_retransmits == 1
    assert pb.session.stream.end == S2 + 1
    out = pb.resp(target(T_ISN + 101, S2 + 1, ACK | FIN))
    assert brief(out) == [(ACK, S2 + 1, T_ISN + 102, 0)]
    assert pb.c.sessions_completed == 1


def test_retransmitted_data_with_fin_is_dropped_but_new_fin_on_old_data_is_kept():
    pb = Playbook()
    pb.establish()
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"x" * 10))) == [(ACK | PSH, S1, T_ISN + 1, 10)]
    # the client retransmits its last 10 bytes, now with the FIN piggybacked: the FIN is new
    assert pb.cap(client(S1, O_ISN + 1, ACK | PSH | FIN, b"x" * 10)) == []   # the FIN waits for the bytes
    # and that segment again: nothing new at all
    assert pb.cap(client(S1, O_ISN + 1, ACK | PSH | FIN, b"x" * 10)) == []
    assert pb.c.client_retransmits == 3     # the bytes twice, the FIN once: the stream had them
    assert pb.resp(target(T_ISN + 1, S1 + 10, ACK)) == []
    assert brief(pb.advance(CLOSE_QUIET)) == [(ACK | FIN, S1 + 10, T_ISN + 1, 0)]
    out = pb.resp(target(T_ISN + 1, S1 + 11, ACK | FIN))
    assert brief(out) == [(ACK, S1 + 11, T_ISN + 2, 0)]
    assert pb.c.sessions_completed == 1


def test_target_fin_first_then_client_fin_completes():
    # HTTP/1.0: the server sends the answer and closes; the client closes after reading it
    pb = Playbook()
    pb.establish()
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, REQ))) == [(ACK | PSH, S1, T_ISN + 1, 18)]
    out = pb.resp(target(T_ISN + 1, S2, ACK | PSH | FIN, 100))
    assert brief(out) == [(ACK, S2, T_ISN + 102, 0)]
    assert pb.session.state is State.ESTABLISHED and pb.session.target_fin
    out = pb.cap(client(S2, O_ISN + 102, ACK | FIN))             # acks the online server's FIN too
    assert brief(out) == [(ACK | FIN, S2, T_ISN + 102, 0)]
    assert pb.resp(target(T_ISN + 102, S2 + 1, ACK)) == []
    assert pb.c.sessions_completed == 1 and pb.session.state is State.CLOSED
    assert pb.c.resets_sent == 0


# ---- client reset ---------------------------------------------------------------------------
def test_client_rst_is_sent_only_after_all_data_is_acked():
    pb = Playbook()
    pb.establish()
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"x" * 100))) == [(ACK | PSH, S1, T_ISN + 1, 100)]
    assert pb.cap(client(S1 + 100, O_ISN + 1, RST | ACK)) == []
    assert pb.session.state is State.ESTABLISHED
    out = pb.resp(target(T_ISN + 1, S1 + 50, ACK))
    assert out == []
    assert pb.resp(target(T_ISN + 1, S1 + 100, ACK)) == []        # acked, maybe still unread
    out = pb.advance(CLOSE_QUIET)
    assert brief(out) == [(RST | ACK, S1 + 100, T_ISN + 1, 0)]
    assert (pb.c.sessions_reset_by_client, pb.c.resets_sent) == (1, 1)
    assert pb.session.state is State.CLOSED


def test_client_rst_goes_at_once_when_nothing_is_in_flight_and_the_target_is_quiet():
    pb = answered()
    assert pb.resp(target(T_ISN + 101, S2, ACK)) == []
    assert pb.advance(1.0) == []
    out = pb.cap(client(S2, O_ISN + 101, RST | ACK))
    assert brief(out) == [(RST | ACK, S2, T_ISN + 101, 0)]
    assert pb.c.sessions_reset_by_client == 1


# ---- target reset ---------------------------------------------------------------------------
def test_target_rst_with_pending_turn_restarts_the_session():
    pb = answered()
    # next request waits for 300 response bytes the target will not send: it resets instead
    assert pb.cap(client(S2, O_ISN + 401, ACK | PSH, b"GET /2\r\n\r\n")) == []
    out = pb.resp(target(T_ISN + 101, S2, RST | ACK))
    assert brief(out) == [(SYN, S2 - 1, 0, 0)]
    assert out[0].options == mss_option(1460)
    assert (pb.c.sessions_reset_by_target, pb.c.restarts, pb.c.sessions_fake_syn) == (1, 1, 1)
    assert pb.c.resets_sent == 0                                   # the target's socket is gone already
    port = out[0].src_port          # not the 4-tuple the target just reset: it may refuse it a while
    assert port != CPORT
    t2 = 31_000_000
    out = pb.resp(target(t2, S2, SYN | ACK, options=MSS1460, port=port))
    assert brief(out) == [(ACK, S2, t2 + 1, 0), (ACK | PSH, S2, t2 + 1, 10)]
    assert pb.session.state is State.ESTABLISHED


def test_target_rst_without_pending_data_closes():
    pb = answered()
    assert pb.resp(target(T_ISN + 101, S2, RST)) == []
    assert pb.session.state is State.CLOSED
    assert (pb.c.sessions_reset_by_target, pb.c.restarts, pb.c.resets_sent) == (1, 0, 0)
    assert pb.run_until(pb.now + 10) == []


def test_a_target_rst_off_rcv_nxt_is_challenged_or_ignored_rfc5961():
    """interceptd relays whatever it captures: a forged RST must not end a session (issue 14)."""
    pb = answered()
    out = pb.resp(target(T_ISN + 101 + 5000, S2, RST | ACK))      # in the window, not exact
    assert brief(out) == [(ACK, S2, T_ISN + 101, 0)]               # challenge ACK at our rcv_nxt
    assert pb.resp(target(T_ISN + 101 - 1, S2, RST)) == []         # behind rcv_nxt: ignored
    assert pb.resp(target(T_ISN + 101 + (1 << 31), S2, RST)) == []   # far away: ignored
    assert (pb.c.target_resets_challenged, pb.c.target_resets_ignored) == (1, 2)
    assert pb.session.state is State.ESTABLISHED and pb.c.sessions_reset_by_target == 0
    # the target answers a challenge from a socket it really closed with a RST at the exact number
    assert pb.resp(target(T_ISN + 101, S2, RST)) == []
    assert pb.session.state is State.CLOSED and pb.c.sessions_reset_by_target == 1


def test_a_rst_in_syn_sent_counts_only_when_it_acknowledges_our_syn():
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    assert pb.resp(target(0, C_ISN + 7, RST | ACK)) == []          # acks something else
    assert pb.resp(target(0, 0, RST)) == []                        # acks nothing
    assert pb.session.state is State.SYN_SENT and pb.c.target_resets_ignored == 2
    assert pb.resp(target(0, C_ISN + 1, RST | ACK)) == []          # refused: nothing listens
    assert pb.session.state is State.CLOSED and pb.c.handshake_refused == 1


def test_target_rst_after_max_restarts_closes():
    pb = answered(max_restarts=0)
    assert pb.cap(client(S2, O_ISN + 401, ACK | PSH, b"GET /2\r\n\r\n")) == []     # held for its turn
    assert pb.resp(target(T_ISN + 101, S2, RST | ACK)) == []
    assert pb.session.state is State.CLOSED and pb.c.restarts == 0


# ---- timeouts -------------------------------------------------------------------------------
def test_idle_session_times_out_with_rst():
    pb = answered(keepalive_timeout=720.0)
    last = pb.now
    assert pb.run_until(last + 719.9) == []
    out = pb.to_deadline()
    assert pb.now == last + 720.0
    assert brief(out) == [(RST | ACK, S2, T_ISN + 101, 0)]
    assert pb.c.sessions_timed_out == 1 and pb.session.state is State.CLOSED


def test_client_keepalives_do_not_keep_the_target_connection_forever():
    # pure ACKs are dropped, but they are client activity: the idle clock restarts
    pb = answered(keepalive_timeout=60.0)
    assert pb.advance(50) == []
    assert pb.cap(client(S2 - 1, O_ISN + 101, ACK)) == []         # keepalive probe
    assert pb.run_until(pb.now + 59) == []
    assert [e.flags for _, e in pb.run_until(pb.now + 2)] == [RST | ACK]


def test_pending_data_without_progress_times_out_at_session_timeout():
    pb = Playbook(session_timeout=5.0)
    pb.establish()
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"x" * 10))) == [(ACK | PSH, S1, T_ISN + 1, 10)]
    got = pb.run_until(pb.now + 6)
    assert [round(t - 100.0, 6) for t, e in got if e.payload] == [0.1, 0.3, 0.7, 1.5, 3.1]
    rsts = [(round(t - 100.0, 6), e.seq) for t, e in got if e.flags & RST]
    assert rsts == [(5.0, S1 + 10), (5.0, S1)]      # both ends of the unacknowledged range
    assert pb.c.sessions_timed_out == 1


# ---- linger and late packets ----------------------------------------------------------------
def test_closed_session_absorbs_late_packets_then_is_forgotten():
    pb = answered(linger=4.0)
    assert pb.cap(client(S2, O_ISN + 101, ACK | FIN)) == []
    assert brief(pb.advance(CLOSE_QUIET)) == [(ACK | FIN, S2, T_ISN + 101, 0)]
    assert brief(pb.resp(target(T_ISN + 101, S2 + 1, ACK | FIN))) == [(ACK, S2 + 1, T_ISN + 102, 0)]
    closed = pb.now
    assert pb.table.next_deadline() == closed + 4.0
    assert pb.advance(3.9) == []
    assert pb.cap(client(S2 - 5, O_ISN + 101, ACK | PSH, b"late!")) == []
    assert pb.resp(target(T_ISN + 101, S2 + 1, ACK | FIN)) == []
    assert (pb.c.client_late, pb.c.responses_late) == (1, 1)
    assert pb.table.active() == 0 and len(pb.table.sessions) == 1
    assert pb.to_deadline() == []
    assert not pb.table.sessions
    assert pb.resp(target(T_ISN + 101, S2 + 1, ACK)) == []
    assert pb.c.responses_unmatched == 1


def test_new_connection_reusing_port_of_a_closed_session():
    pb = answered()
    assert pb.resp(target(T_ISN + 101, S2, RST)) == []           # closed, lingering
    far = (S2 + (1 << 25)) & 0xFFFFFFFF
    out = pb.cap(client(far, 123, ACK | PSH, b"new conn"))       # mid-stream capture of another connection
    assert brief(out) == [(SYN, far - 1, 0, 0)]
    assert pb.c.sessions_started == 2 and pb.c.client_late == 0


# ---- shutdown -------------------------------------------------------------------------------
def test_shutdown_resets_open_sessions_only():
    pb = Playbook()
    pb.establish()                                                 # port CPORT: established
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"x" * 10))) == [(ACK | PSH, S1, T_ISN + 1, 10)]
    assert brief(pb.cap(client(5000, 0, SYN, port=CPORT + 1))) == [(SYN, 5000, 0, 0)]   # handshake in progress
    assert brief(pb.cap(client(7000, 0, SYN, port=CPORT + 2))) == [(SYN, 7000, 0, 0)]
    assert pb.resp(target(0, 7001, RST | ACK, port=CPORT + 2)) == []                   # refused: closed
    out = pb.shutdown()
    assert [(e.src_port, e.flags, e.seq) for e in out] == [(CPORT, RST | ACK, S1 + 10),
                                                           (CPORT, RST | ACK, S1),
                                                           (CPORT + 1, RST, 5001)]
    assert pb.c.sessions_shutdown == 2
    assert pb.table.active() == 0
    assert pb.shutdown() == [] and pb.c.sessions_shutdown == 2      # idempotent


# ---- the target closes first, the client goes on ----------------------------------------------
def test_request_after_target_closed_is_replayed_on_a_new_connection():
    pb = answered()                                   # request 1 answered with 100 bytes
    assert brief(pb.resp(target(T_ISN + 101, S2, ACK | FIN))) == [(ACK, S2, T_ISN + 102, 0)]
    out = pb.cap(client(S2, O_ISN + 101, ACK | PSH, b"GET /2"))   # the online server kept the connection
    assert brief(out) == [(ACK | PSH, S2, T_ISN + 102, 6)]
    out = pb.resp(target(T_ISN + 102, 0, RST))        # the target's socket is gone: it resets
    assert brief(out) == [(SYN, S2 - 1, 0, 0)] and out[0].src_port != CPORT
    assert pb.c.restarts == 1 and pb.c.sessions_reset_by_target == 1
    new_isn = 77_000
    out = pb.resp(target(new_isn, S2, SYN | ACK, options=b"\x02\x04\x05\xb4", port=out[0].src_port))
    assert brief(out) == [(ACK, S2, new_isn + 1, 0), (ACK | PSH, S2, new_isn + 1, 6)]


def test_client_close_while_resynchronising_closes_the_session():
    pb = Playbook(buffer_limit=1000)
    pb.establish()
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, b"A" * 600))) == [(ACK | PSH, S1, T_ISN + 1, 600)]
    out = pb.cap(client(S1 + 600, O_ISN + 101, ACK | PSH, b"B" * 600))         # overflow: resync
    assert brief(out) == [(RST | ACK, S1 + 600, T_ISN + 1, 0), (RST | ACK, S1, T_ISN + 1, 0)]
    assert pb.session.state is State.RESYNC
    assert pb.cap(client(S1 + 1200, O_ISN + 101, ACK | FIN)) == []
    assert pb.session.state is State.CLOSED
    assert pb.c.sessions_timed_out == 0


def test_reordered_old_ack_does_not_shrink_the_window():
    pb = Playbook()
    pb.establish()
    assert brief(pb.resp(target(T_ISN + 1, S1, ACK, window=4000, payload_len=10))) == [(ACK, S1, T_ISN + 11, 0)]
    assert pb.resp(target(T_ISN + 11, S1, ACK, window=4000)) == []
    assert pb.resp(target(T_ISN + 1, S1, ACK, window=0)) == []    # older, overtaken: ignored
    assert pb.session.snd_wnd == 4000
