"""Session engine playbooks: turn pacing (a request waits for the target's answer to the previous one)."""

from __future__ import annotations

import pytest

from appliance.core.packet import ACK, PSH, RST, SYN
from tests.unit.enginekit import C_ISN, O_ISN, T_ISN, Playbook, brief, client, target

REQ1 = b"GET /1 HTTP/1.1\r\n\r\n"       # 19 bytes
REQ2 = b"GET /2 HTTP/1.1\r\n\r\n"
S1 = C_ISN + 1
S2 = S1 + len(REQ1)
S3 = S2 + len(REQ2)


def started(**params: object) -> Playbook:
    """Established, first request sent and acked by the target (nothing in flight)."""
    pb = Playbook(**params)
    pb.establish()
    assert brief(pb.cap(client(S1, O_ISN + 1, ACK | PSH, REQ1))) == [(ACK | PSH, S1, T_ISN + 1, 19)]
    assert pb.resp(target(T_ISN + 1, S2, ACK)) == []
    return pb


def test_request_after_response_is_held_until_target_sent_as_many_bytes():
    pb = started()
    # online, the client had received 100 response bytes before sending request 2
    assert pb.cap(client(S2, O_ISN + 101, ACK | PSH, REQ2)) == []
    assert pb.c.turns_waited == 1
    out = pb.resp(target(T_ISN + 1, S2, ACK | PSH, 60))
    assert brief(out) == [(ACK, S2, T_ISN + 61, 0)]          # we ack, the request still waits
    out = pb.resp(target(T_ISN + 61, S2, ACK | PSH, 40))
    assert brief(out) == [(ACK | PSH, S2, T_ISN + 101, 19)]  # released, ack piggybacked
    assert (pb.c.turns_waited, pb.c.turns_quiet, pb.c.turns_lagged) == (1, 0, 0)


def test_request_is_sent_at_once_when_target_already_answered():
    pb = started()
    assert brief(pb.resp(target(T_ISN + 1, S2, ACK | PSH, 100))) == [(ACK, S2, T_ISN + 101, 0)]
    out = pb.cap(client(S2, O_ISN + 101, ACK | PSH, REQ2))
    assert brief(out) == [(ACK | PSH, S2, T_ISN + 101, 19)]
    assert pb.c.turns_waited == 0


def test_shorter_answer_releases_after_response_quiet():
    pb = started(response_quiet=0.010)
    pb.cap(client(S2, O_ISN + 101, ACK | PSH, REQ2))
    out = pb.resp(target(T_ISN + 1, S2, ACK | PSH, 30))       # the target's answer is shorter
    assert brief(out) == [(ACK, S2, T_ISN + 31, 0)]
    t_data = pb.now
    assert pb.table.next_deadline() == pytest.approx(t_data + 0.010)
    assert pb.advance(0.009) == []
    out = pb.to_deadline()
    assert brief(out) == [(ACK | PSH, S2, T_ISN + 31, 19)]
    assert (pb.c.turns_quiet, pb.c.turns_lagged) == (1, 0)


def test_quiet_time_restarts_with_each_response_segment():
    pb = started(response_quiet=0.010)
    pb.cap(client(S2, O_ISN + 1001, ACK | PSH, REQ2))
    assert brief(pb.resp(target(T_ISN + 1, S2, ACK, 100))) == [(ACK, S2, T_ISN + 101, 0)]
    assert pb.advance(0.008) == []
    assert brief(pb.resp(target(T_ISN + 101, S2, ACK, 100))) == [(ACK, S2, T_ISN + 201, 0)]
    assert pb.advance(0.008) == []                            # 16 ms since the first, 8 since the last
    out = pb.advance(0.003)
    assert brief(out) == [(ACK | PSH, S2, T_ISN + 201, 19)]
    assert pb.c.turns_quiet == 1


def test_no_answer_at_all_releases_after_max_lag():
    pb = started(max_lag=1.0)
    pb.cap(client(S2, O_ISN + 101, ACK | PSH, REQ2))
    assert pb.table.next_deadline() == pytest.approx(pb.now + 1.0)
    assert pb.advance(0.999) == []
    out = pb.to_deadline()
    assert brief(out) == [(ACK | PSH, S2, T_ISN + 1, 19)]
    assert (pb.c.turns_waited, pb.c.turns_quiet, pb.c.turns_lagged) == (1, 0, 1)


def test_max_lag_counts_from_capture_time():
    pb = started(max_lag=1.0)
    # the worker got this segment 0.7 s after capture: only 0.3 s of waiting left
    assert pb.cap(client(S2, O_ISN + 101, ACK | PSH, REQ2), t=pb.now - 0.7) == []
    assert pb.table.next_deadline() == pytest.approx(pb.now + 0.3)
    # captured more than max_lag ago: no wait at all
    pb2 = started(max_lag=1.0)
    out = pb2.cap(client(S2, O_ISN + 101, ACK | PSH, REQ2), t=pb2.now - 2.0)
    assert brief(out) == [(ACK | PSH, S2, T_ISN + 1, 19)]
    assert pb2.c.turns_lagged == 1


def test_pipelined_segments_with_same_ack_go_out_immediately():
    pb = Playbook()
    pb.establish()
    out1 = pb.cap(client(S1, O_ISN + 1, ACK | PSH, REQ1))
    out2 = pb.cap(client(S2, O_ISN + 1, ACK | PSH, REQ2))      # no response in between
    out3 = pb.cap(client(S3, O_ISN + 1, ACK | PSH, b"x" * 10))
    assert brief(out1 + out2 + out3) == [(ACK | PSH, S1, T_ISN + 1, 19), (ACK | PSH, S2, T_ISN + 1, 19),
                                         (ACK | PSH, S3, T_ISN + 1, 10)]
    assert pb.c.turns_waited == 0


def test_segments_behind_a_held_turn_wait_with_it():
    pb = started()
    pb.cap(client(S2, O_ISN + 101, ACK | PSH, REQ2))
    assert pb.cap(client(S3, O_ISN + 101, ACK | PSH, b"body")) == []   # continuation, same turn
    out = pb.resp(target(T_ISN + 1, S2, ACK, 100))
    assert brief(out) == [(ACK | PSH, S2, T_ISN + 101, 23)]     # released together, in one segment
    assert out[0].payload == REQ2 + b"body" and pb.c.chunks_coalesced == 1


def test_successive_turns_each_wait_for_their_answer():
    pb = started()
    pb.cap(client(S2, O_ISN + 101, ACK | PSH, REQ2))
    pb.cap(client(S3, O_ISN + 301, ACK | PSH, b"GET /3\r\n\r\n"))     # client had 200 more bytes
    out = pb.resp(target(T_ISN + 1, S2, ACK, 100))
    assert brief(out) == [(ACK | PSH, S2, T_ISN + 101, 19)]
    out = pb.resp(target(T_ISN + 101, S3, ACK, 150))
    assert brief(out) == [(ACK, S3, T_ISN + 251, 0)]
    out = pb.resp(target(T_ISN + 251, S3, ACK, 50))
    assert brief(out) == [(ACK | PSH, S3, T_ISN + 301, 10)]
    assert pb.c.turns_waited == 2


def test_server_first_protocol_waits_for_the_greeting():
    pb = Playbook()
    pb.establish()
    # the client's first data acks a 50-byte greeting of the online server
    assert pb.cap(client(S1, O_ISN + 51, ACK | PSH, b"EHLO x\r\n")) == []
    out = pb.resp(target(T_ISN + 1, S1, ACK | PSH, 50))
    assert brief(out) == [(ACK | PSH, S1, T_ISN + 51, 8)]


def test_response_bytes_before_release_count_once():
    # the bytes that released one turn do not count again for the next one
    pb = started(response_quiet=0.010)
    pb.cap(client(S2, O_ISN + 101, ACK | PSH, REQ2))
    out = pb.resp(target(T_ISN + 1, S2, ACK, 100))            # released by bytes
    assert brief(out) == [(ACK | PSH, S2, T_ISN + 101, 19)]
    assert pb.cap(client(S3, O_ISN + 201, ACK | PSH, b"x")) == []
    assert pb.c.turns_waited == 2
    assert brief(pb.resp(target(T_ISN + 101, S3, ACK, 99))) == [(ACK, S3, T_ISN + 200, 0)]   # just our ACK
    out = pb.resp(target(T_ISN + 200, S3, ACK, 1))
    assert brief(out) == [(ACK | PSH, S3, T_ISN + 201, 1)]


def test_target_retransmissions_are_acked_but_not_counted_twice():
    pb = started()
    pb.cap(client(S2, O_ISN + 101, ACK | PSH, REQ2))
    assert brief(pb.resp(target(T_ISN + 1, S2, ACK, 60))) == [(ACK, S2, T_ISN + 61, 0)]
    out = pb.resp(target(T_ISN + 1, S2, ACK, 60))             # the target resends: our ACK was lost
    assert brief(out) == [(ACK, S2, T_ISN + 61, 0)]           # ack again, nothing released
    assert pb.session.resp_bytes == 60
    out = pb.resp(target(T_ISN + 61, S2, ACK, 40))
    assert brief(out) == [(ACK | PSH, S2, T_ISN + 101, 19)]


def test_missing_response_headers_are_counted_and_acked_past():
    pb = started()
    pb.cap(client(S2, O_ISN + 101, ACK | PSH, REQ2))
    # interceptd lost the header of [T+1, T+51): the next one shows the target sent it
    out = pb.resp(target(T_ISN + 51, S2, ACK, 50))
    assert brief(out) == [(ACK | PSH, S2, T_ISN + 101, 19)]
    assert pb.c.response_gaps == 1


def test_requests_that_fell_behind_leave_together_and_a_restart_still_finds_their_start():
    """A session that fell max_lag behind releases its held requests at once: they leave in one
    segment, as the client's kernel would send a pipelined burst, not as a train of tiny ones
    (which can overrun the target's receive memory). If the target then resets, the new connection
    replays every one of them from the first request's start."""
    pb = started(max_lag=1.0)
    reqs = [b"GET /%d HTTP/1.1\r\n\r\n" % n for n in range(2, 6)]       # 19 bytes each
    seq, need = S2, O_ISN + 1
    for req in reqs:
        need += 100
        assert pb.cap(client(seq, need, ACK | PSH, req)) == []           # each a turn, held
        seq += len(req)
    out = pb.advance(1.0)                                               # the target never answered
    assert [(e.seq, e.payload) for e in out] == [(S2, b"".join(reqs))]
    assert (pb.c.turns_lagged, pb.c.chunks_coalesced) == (4, 3)
    out = pb.resp(target(T_ISN + 1, S2, RST | ACK))
    (syn,) = out
    assert syn.seq == S2 - 1 and pb.c.resync_bytes_dropped == 0
    out = pb.resp(target(5000, S2, SYN | ACK, options=b"\x02\x04\x05\xb4", port=syn.src_port))
    assert brief(out) == [(ACK, S2, 5001, 0), (ACK | PSH, S2, 5001, 76)]
    assert out[1].payload == b"".join(reqs)
