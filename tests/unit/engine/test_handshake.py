"""Session engine playbooks: opening the target connection (captured SYN, forged SYN, G4, G8)."""

from __future__ import annotations

import pytest

from appliance.core.packet import ACK, FIN, PSH, RST, SYN, mss_option, parse_options
from appliance.engine.session import State
from tests.unit.enginekit import (
    C_ISN,
    CLIENT,
    CPORT,
    O_ISN,
    ONLINE,
    OUR_SYN,
    SPORT,
    T_ISN,
    TARGET,
    THIRD_ACK,
    Playbook,
    brief,
    client,
    target,
    ts,
    without_spare_ports,
)

# MSS 1460, SACK-perm, TS 777/0, NOP, WS 7: what a Linux client puts in its SYN
CLIENT_SYN_OPTS = (b"\x02\x04\x05\xb4\x04\x02" + b"\x08\x0a\x00\x00\x03\x09\x00\x00\x00\x00"
                   + b"\x01\x03\x03\x07")
MSS1460 = b"\x02\x04\x05\xb4"


def test_captured_syn_is_sent_with_the_clients_isn_options_and_window():
    pb = Playbook()
    (syn,) = pb.cap(client(C_ISN, 0, SYN, options=CLIENT_SYN_OPTS))
    assert (syn.src_ip, syn.dst_ip, syn.src_port, syn.dst_port) == (CLIENT, TARGET, CPORT, SPORT)
    assert (syn.flags, syn.seq, syn.ack) == (SYN, C_ISN, 0)
    assert syn.options == CLIENT_SYN_OPTS
    assert syn.window == 502                                 # the client's own window
    assert syn.payload == b""
    assert (pb.c.client_syns, pb.c.sessions_started, pb.c.sessions_fake_syn) == (1, 1, 0)
    assert pb.session.state is State.SYN_SENT


def test_syn_ack_completes_handshake_with_forged_third_ack():
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    out = pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK, options=MSS1460))
    assert brief(out) == [(ACK, C_ISN + 1, T_ISN + 1, 0)]
    assert out[0].window == 65535                            # our_window
    assert pb.session.state is State.ESTABLISHED
    assert (pb.c.sessions_established, pb.c.acks_sent) == (1, 1)
    # the client's own third segment is not forwarded: we already forged ours
    assert pb.cap(client(C_ISN + 1, O_ISN + 1, ACK)) == []
    assert pb.c.client_pure_acks == 1


def test_an_ack_that_does_not_acknowledge_our_syn_resets_the_stale_connection_rfc793():
    """The target still holds an older connection on the 4-tuple (a half-open one, a lost last ACK,
    TIME_WAIT) and answers our SYN with a challenge ACK: a RST at its ack ends it, as the client's kernel
    would, and the SYN goes again at once (the first time only)."""
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    assert brief(pb.resp(target(T_ISN, 777_000, ACK))) == [(RST, 777_000, 0, 0)]
    assert brief(pb.advance(0)) == [(SYN, C_ISN, 0, 0)]
    assert brief(pb.resp(target(T_ISN, 777_000, ACK))) == [(RST, 777_000, 0, 0)]
    assert pb.advance(0.4) == []                              # the second time: the retry timer decides
    assert (pb.c.target_stale_resets, pb.session.state) == (2, State.SYN_SENT)
    assert brief(pb.resp(target(T_ISN, C_ISN + 7, SYN | ACK))) == [(RST, C_ISN + 7, 0, 0)]   # wrong SYN-ACK too
    assert pb.resp(target(T_ISN, C_ISN + 1, ACK)) == []      # acceptable ack, not a SYN-ACK: ignored
    assert pb.session.state is State.SYN_SENT
    assert brief(pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK))) == [(ACK, C_ISN + 1, T_ISN + 1, 0)]


def test_data_captured_during_handshake_waits_for_syn_ack():
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    assert pb.cap(client(C_ISN + 1, O_ISN + 1, ACK)) == []
    assert pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"GET / HTTP/1.1\r\n\r\n")) == []
    out = pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK, options=MSS1460))
    assert brief(out) == [(ACK, C_ISN + 1, T_ISN + 1, 0), (ACK | PSH, C_ISN + 1, T_ISN + 1, 18)]
    assert out[1].payload == b"GET / HTTP/1.1\r\n\r\n"
    assert [e.ip_id for e in out] == [2, 3]                  # per-session IP ids count up from the SYN's 1


def test_syn_is_retransmitted_after_syn_rto():
    pb = Playbook()
    first = pb.cap(client(C_ISN, 0, SYN, options=CLIENT_SYN_OPTS))
    assert pb.table.next_deadline() == pytest.approx(100.5)
    assert pb.advance(0.49) == []
    again = pb.advance(0.01)
    assert brief(again) == brief(first)
    assert again[0].options == CLIENT_SYN_OPTS and again[0].window == 502


def test_syn_retransmissions_back_off_by_doubling_up_to_rto_max():
    pb = Playbook(handshake_timeout=20.0, syn_rto=0.5, rto_max=3.0)
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    sent = [round(t - 100.0, 6) for t, e in pb.run_until(119.9) if e.flags == SYN]
    # intervals 0.5, 1, 2, then rto_max: a target back from an outage hears a SYN within 3 s
    assert sent == [0.5, 1.5, 3.5, 6.5, 9.5, 12.5, 15.5, 18.5]
    assert pb.c.syn_retransmits == 8


def test_a_target_down_for_two_seconds_gets_the_session_with_its_held_data():
    """Every SYN before 2 s is lost (link down); the retry at 3.5 s is answered: the session goes on,
    the request captured meanwhile is sent, nothing is counted as a handshake timeout."""
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    pb.cap(client(C_ISN + 1, O_ISN + 1, ACK))
    pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"GET / HTTP/1.1\r\n\r\n"))
    syns = [t for t, e in pb.run_until(103.5) if e.flags == SYN]
    assert syns == [pytest.approx(100.5), pytest.approx(101.5), pytest.approx(103.5)]
    out = pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK, options=MSS1460))
    assert brief(out) == [THIRD_ACK, (ACK | PSH, C_ISN + 1, T_ISN + 1, 18)]
    assert pb.c.handshake_timeouts == 0 and pb.session.state is State.ESTABLISHED


def test_handshake_timeout_resets_and_counts():
    pb = Playbook(handshake_timeout=3.0)
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    got = pb.run_until(103.5)
    syns = [t for t, e in got if e.flags == SYN]
    rsts = [(t, e) for t, e in got if e.flags & RST]
    assert syns == [pytest.approx(100.5), pytest.approx(101.5)]
    ((t, rst),) = rsts
    assert t == pytest.approx(103.0)
    assert (rst.flags, rst.seq, rst.ack) == (RST, C_ISN + 1, 0)
    assert (pb.c.handshake_timeouts, pb.c.resets_sent, pb.c.sessions_established) == (1, 1, 0)
    assert pb.session.state is State.CLOSED
    # a SYN-ACK that finally arrives is late, and the session is then forgotten
    assert pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK)) == []
    assert pb.c.responses_late == 1
    pb.advance(5)
    assert not pb.table.sessions


def test_syn_answered_by_rst_is_refused():
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    assert pb.resp(target(0, C_ISN + 1, RST | ACK)) == []
    assert (pb.c.handshake_refused, pb.c.resets_sent, pb.c.handshake_timeouts) == (1, 0, 0)
    assert pb.session.state is State.CLOSED
    # the rest of that client connection is absorbed, not restarted
    assert pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"data")) == []
    assert pb.c.client_late == 1 and pb.c.sessions_started == 1
    assert pb.run_until(200) == []


def test_fake_syn_for_connection_without_captured_syn():
    pb = Playbook(fake_syn_mss=1400)
    data_seq = 77_000
    (syn,) = pb.cap(client(data_seq, O_ISN + 1, ACK | PSH, b"GET /mid HTTP/1.1\r\n\r\n"))
    assert (syn.flags, syn.seq, syn.ack, syn.window) == (SYN, data_seq - 1, 0, 65535)
    assert syn.options == mss_option(1400)
    assert parse_options(syn.options).mss == 1400
    assert (pb.c.sessions_fake_syn, pb.c.sessions_started, pb.c.client_syns) == (1, 1, 0)
    out = pb.resp(target(T_ISN, data_seq, SYN | ACK, options=MSS1460))
    assert brief(out) == [(ACK, data_seq, T_ISN + 1, 0), (ACK | PSH, data_seq, T_ISN + 1, 21)]
    assert out[1].payload == b"GET /mid HTTP/1.1\r\n\r\n"
    # the next request of the same turn (same ack) follows at once
    out = pb.cap(client(data_seq + 21, O_ISN + 1, ACK | PSH, b"more"))
    assert brief(out) == [(ACK | PSH, data_seq + 21, T_ISN + 1, 4)]


def test_mid_stream_data_the_online_host_never_accepted_is_not_replayed():
    """A spoofed data segment (no SYN, from any address) must not make us forge a handshake with the
    target: the table asks the online host's socket table first, with the segment as captured."""
    asked = []
    pb = Playbook()
    pb.table.accepted_online = lambda seg: asked.append((seg.src_ip, seg.src_port, seg.dst_ip, seg.dst_port)) or False
    assert pb.cap(client(77_000, O_ISN + 1, ACK | PSH, b"DROP TABLE x;")) == []
    assert pb.cap(client(77_013, O_ISN + 1, ACK | PSH, b"more")) == []
    assert asked == [(CLIENT, CPORT, ONLINE, SPORT)] * 2
    assert (pb.c.midstream_refused, pb.c.sessions_started, pb.c.sessions_fake_syn) == (2, 0, 0)
    assert not pb.table.sessions
    # a connection the online host holds is replayed behind a forged SYN
    pb.table.accepted_online = lambda seg: True
    (syn,) = pb.cap(client(77_017, O_ISN + 1, ACK | PSH, b"ok"))
    assert syn.flags == SYN and pb.c.sessions_fake_syn == 1
    # sessions that start with their own SYN are not looked up
    pb.table.accepted_online = lambda seg: pytest.fail("looked up a connection whose SYN was captured")
    assert brief(pb.cap(client(C_ISN, 0, SYN, port=CPORT + 1))) == [OUR_SYN]


def test_fake_syn_wraps_below_zero():
    pb = Playbook()
    (syn,) = pb.cap(client(0, O_ISN + 1, ACK | PSH, b"x"))
    assert syn.seq == 0xFFFFFFFF
    out = pb.resp(target(T_ISN, 0, SYN | ACK, options=MSS1460))
    assert brief(out) == [(ACK, 0, T_ISN + 1, 0), (ACK | PSH, 0, T_ISN + 1, 1)]


def test_segments_that_cannot_start_a_session_are_counted():
    pb = Playbook()
    for seg in (client(5, 6, ACK), client(5, 6, ACK | FIN), client(5, 6, RST), client(5, 6, RST | ACK, b"x"),
                client(5, 6, SYN | ACK)):
        assert pb.cap(seg) == []
    assert pb.c.client_no_session == 5
    assert not pb.table.sessions and pb.c.sessions_started == 0


def test_pure_client_acks_are_dropped_once_established():
    pb = Playbook()
    pb.establish()
    before = pb.c.client_pure_acks
    assert pb.cap(client(C_ISN + 1, O_ISN + 1, ACK)) == []         # window update
    assert pb.cap(client(C_ISN, O_ISN + 1, ACK)) == []             # keepalive probe (seq - 1)
    assert pb.cap(client(C_ISN + 1, O_ISN + 900, ACK)) == []       # acking a response
    assert pb.c.client_pure_acks == before + 3
    assert pb.c.segments_sent == 2                                 # SYN and the forged ACK only


def test_duplicate_syn_is_ignored():
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    assert pb.cap(client(C_ISN, 0, SYN)) == []
    assert brief(pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK))) == [THIRD_ACK]
    assert pb.cap(client(C_ISN, 0, SYN)) == []
    assert (pb.c.client_dup_syns, pb.c.port_reuse_resets, pb.c.sessions_started) == (2, 0, 1)
    assert pb.session.state is State.ESTABLISHED


def test_new_syn_on_an_open_port_comes_from_a_spare_port_and_the_old_session_finishes_g4():
    """The client reused its port while the replay of the old connection still holds bytes for the
    target: neither loses anything. The new connection is replayed from a spare port of the client's
    (the same for its whole life); the old one delivers its bytes, then closes in the client's place."""
    pb = Playbook()
    pb.establish()
    assert brief(pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"hello"))) == [(ACK | PSH, C_ISN + 1, T_ISN + 1, 5)]
    new_isn = 4_000_000
    (syn,) = pb.cap(client(new_isn, 0, SYN, options=MSS1460))
    assert (syn.flags, syn.seq) == (SYN, new_isn) and syn.src_port != CPORT
    spare = syn.src_port
    assert (pb.c.port_reuse_moves, pb.c.port_reuse_resets, pb.c.resets_sent, pb.c.sessions_started) == (1, 0, 0, 2)
    # the new connection: its handshake and its data, captured on the client's own port
    out = pb.resp(target(T_ISN + 5000, new_isn + 1, SYN | ACK, options=MSS1460, port=spare))
    assert brief(out) == [(ACK, new_isn + 1, T_ISN + 5001, 0)]
    out = pb.cap(client(new_isn + 1, O_ISN + 7, ACK | PSH, b"again"))
    assert [(e.src_port, len(e.payload)) for e in out] == [(spare, 5)]
    pb.resp(target(T_ISN + 5001, new_isn + 6, ACK, port=spare))
    # the old one: its bytes acknowledged, the target quiet, then a FIN in the client's place
    assert pb.resp(target(T_ISN + 1, C_ISN + 6, ACK)) == []
    out = pb.advance(0.2)
    assert [(e.src_port, e.flags, e.seq) for e in out] == [(CPORT, ACK | FIN, C_ISN + 6)]
    assert brief(pb.resp(target(T_ISN + 1, C_ISN + 7, ACK | FIN))) == [(ACK, C_ISN + 7, T_ISN + 2, 0)]
    assert pb.c.sessions_completed == 1 and pb.c.sessions_established == 2


def test_new_syn_during_the_old_handshake_leaves_the_old_session_its_data():
    """Replayed fast, a client port comes back before the target answered the first SYN: the old
    session still completes its handshake, delivers its request and closes."""
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"GET /"))
    pb.cap(client(C_ISN + 6, O_ISN + 101, ACK | FIN))
    out = pb.cap(client(C_ISN + 50_000, 0, SYN))
    assert [(e.src_port == CPORT, e.flags, e.seq) for e in out] == [(False, SYN, C_ISN + 50_000)]
    assert pb.c.port_reuse_moves == 1 and pb.c.resets_sent == 0
    out = pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK, options=MSS1460))
    assert [(e.src_port, e.flags, len(e.payload)) for e in out] == [(CPORT, ACK, 0), (CPORT, ACK | PSH, 5)]


def test_without_a_spare_port_a_new_syn_on_an_open_port_resets_the_old_session():
    pb = Playbook()
    pb.table.clients = without_spare_ports()                      # every spare tuple taken
    pb.establish()
    assert brief(pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"hello"))) == [(ACK | PSH, C_ISN + 1, T_ISN + 1, 5)]
    new_isn = 4_000_000
    out = pb.cap(client(new_isn, 0, SYN, options=MSS1460))
    # RFC 5961: one RST at what we sent and one at what the target acknowledged
    assert brief(out) == [(RST | ACK, C_ISN + 6, T_ISN + 1, 0), (RST | ACK, C_ISN + 1, T_ISN + 1, 0),
                          (SYN, new_isn, 0, 0)]
    assert (pb.c.port_reuse_resets, pb.c.sessions_started, pb.c.resets_sent) == (1, 2, 1)


def test_new_syn_after_close_starts_without_reset():
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    pb.resp(target(0, C_ISN + 1, RST | ACK))            # refused, lingering
    out = pb.cap(client(C_ISN + 9999, 0, SYN))
    assert brief(out) == [(SYN, C_ISN + 9999, 0, 0)]
    assert pb.c.port_reuse_resets == 0 and pb.c.sessions_started == 2


def test_repeated_syn_ack_is_answered_again():
    pb = Playbook()
    pb.establish()
    out = pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK, options=MSS1460))
    assert brief(out) == [(ACK, C_ISN + 1, T_ISN + 1, 0)]
    assert pb.c.sessions_established == 1


def test_responses_for_unknown_sessions_are_unmatched():
    pb = Playbook()
    assert pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK)) == []
    pb.establish()
    assert pb.resp(target(T_ISN + 1, C_ISN + 1, ACK, 10, port=CPORT + 1)) == []
    assert pb.c.responses_unmatched == 2
    assert pb.c.responses == 3                                     # the SYN-ACK of establish() matched


def test_third_ack_and_data_carry_timestamps_once_negotiated():
    """RFC 7323 3.2: once both SYNs carried TSopt, every non-RST segment MUST carry it."""
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN, options=CLIENT_SYN_OPTS))) == [OUR_SYN]
    out = pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK, options=MSS1460 + b"\x01\x01" + ts(5555, 777)[2:]))
    (third,) = out
    o = parse_options(third.options)
    assert (o.ts_val, o.ts_ecr) == (777, 5555)


def test_without_a_spare_port_a_new_syn_waits_for_a_closing_session_on_the_same_port():
    pb = Playbook()
    pb.table.clients = without_spare_ports()
    pb.establish()
    assert brief(pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"GET /"))) == [(ACK | PSH, C_ISN + 1, T_ISN + 1, 5)]
    # the client had the answer (100 bytes) and closed; the replay's FIN waits for the target's answer
    assert pb.cap(client(C_ISN + 6, O_ISN + 101, ACK | FIN)) == []
    new_isn = 7_000_000
    assert pb.cap(client(new_isn, 0, SYN, options=b"\x02\x04\x05\xb4")) == []    # queued, old not reset
    assert pb.c.port_reuse_waits == 1 and pb.c.port_reuse_resets == 0
    out = pb.resp(target(T_ISN + 1, C_ISN + 6, ACK | PSH, payload_len=100))
    assert brief(out) == [(ACK, C_ISN + 6, T_ISN + 101, 0)]
    assert brief(pb.advance(0.2)) == [(ACK | FIN, C_ISN + 6, T_ISN + 101, 0)]
    out = pb.resp(target(T_ISN + 101, C_ISN + 7, ACK | FIN))
    assert [e.flags for e in out] == [ACK, SYN] and out[1].seq == new_isn       # old done, new starts
    assert pb.c.sessions_completed == 1


def test_without_a_spare_port_a_closing_session_that_never_finishes_gives_way_after_reuse_wait():
    pb = Playbook(reuse_wait=2.0)
    pb.table.clients = without_spare_ports()
    pb.establish()
    assert brief(pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"GET /"))) == [(ACK | PSH, C_ISN + 1, T_ISN + 1, 5)]
    pb.cap(client(C_ISN + 6, O_ISN + 101, ACK | FIN))
    pb.cap(client(7_000_000, 0, SYN))
    out = pb.advance(2.1)
    # the request's retransmission falls due on the way; then the old session is reset (RFC 5961: at
    # what we sent and at what the target acknowledged) and the new one starts
    assert brief(out) == [(ACK | PSH, C_ISN + 1, T_ISN + 1, 5), (RST | ACK, C_ISN + 6, T_ISN + 1, 0),
                          (RST | ACK, C_ISN + 1, T_ISN + 1, 0), (SYN, 7_000_000, 0, 0)]
    assert pb.c.port_reuse_resets == 1


def test_a_second_syn_ack_with_another_isn_replaces_the_first_before_anything_was_exchanged():
    """Under a SYN flood of our own making (a topspeed replay), the target answers our first SYN with
    a SYN cookie and, the queue having room again, our retransmitted SYN from its SYN queue: the two
    SYN-ACKs differ, and only the second is kept there. Acking the first gets the session reset."""
    pb = Playbook()
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [OUR_SYN]
    pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"GET /"))
    assert brief(pb.advance(0.5)) == [OUR_SYN]                   # our SYN again: the answer is late here
    cookie, queued = 231_266_207, 1_579_536_321
    out = pb.resp(target(cookie, C_ISN + 1, SYN | ACK, options=MSS1460))
    assert brief(out) == [(ACK, C_ISN + 1, cookie + 1, 0), (ACK | PSH, C_ISN + 1, cookie + 1, 5)]
    out = pb.resp(target(queued, C_ISN + 1, SYN | ACK, options=MSS1460))
    assert brief(out) == [(ACK, C_ISN + 6, queued + 1, 0)] and pb.c.target_isn_changes == 1
    (rtx,) = pb.to_deadline()                                    # the request again, acking the right ISN
    assert (rtx.seq, rtx.ack, rtx.payload) == (C_ISN + 1, queued + 1, b"GET /")
    # once anything was exchanged, a late SYN-ACK is only answered, never adopted
    assert brief(pb.resp(target(queued + 1, C_ISN + 6, ACK, 10))) == [(ACK, C_ISN + 6, queued + 11, 0)]
    out = pb.resp(target(cookie, C_ISN + 1, SYN | ACK, options=MSS1460))
    assert brief(out) == [(ACK, C_ISN + 6, queued + 11, 0)] and pb.c.target_isn_changes == 1


def test_a_worker_far_behind_its_capture_sheds_new_sessions_and_keeps_the_ones_it_has():
    """Overload: past shed_lag behind, new connections are not started (counted), so the sessions
    already started still complete; below half of it, new ones start again."""
    pb = Playbook(shed_lag=0.5)
    pb.establish()                                                # a session started before the overload
    pb.table.backlog(0.8)
    assert pb.cap(client(C_ISN, 0, SYN, port=CPORT + 1)) == []
    assert pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"GET /", port=CPORT + 1)) == []   # its rest too
    assert (pb.c.sessions_shed, pb.c.sessions_started, pb.c.client_skipped) == (1, 1, 2)
    out = pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"GET /"))   # the old one goes on
    assert [len(e.payload) for e in out] == [5]
    pb.table.backlog(0.3)                                         # still above half: still shedding
    assert pb.cap(client(C_ISN, 0, SYN, port=CPORT + 2)) == [] and pb.c.sessions_shed == 2
    pb.table.backlog(0.2)
    assert brief(pb.cap(client(C_ISN, 0, SYN, port=CPORT + 3))) == [(SYN, C_ISN, 0, 0)]


def test_no_shedding_when_shed_lag_is_zero():
    pb = Playbook(shed_lag=0.0)
    pb.table.backlog(100.0)
    assert brief(pb.cap(client(C_ISN, 0, SYN))) == [(SYN, C_ISN, 0, 0)] and pb.c.sessions_shed == 0
