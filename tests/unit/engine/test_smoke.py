from appliance.core.packet import ACK, FIN, PSH, SYN
from tests.unit.enginekit import C_ISN, O_ISN, T_ISN, Playbook, client, target


def test_full_session_request_response_close():
    pb = Playbook()
    out = pb.cap(client(C_ISN, 0, SYN))
    assert [(e.flags, e.seq) for e in out] == [(SYN, C_ISN)]
    out = pb.resp(target(T_ISN, C_ISN + 1, SYN | ACK, options=b"\x02\x04\x05\xb4"))
    assert [(e.flags, e.seq, e.ack) for e in out] == [(ACK, C_ISN + 1, T_ISN + 1)]
    assert pb.cap(client(C_ISN + 1, O_ISN + 1, ACK)) == []
    out = pb.cap(client(C_ISN + 1, O_ISN + 1, ACK | PSH, b"GET / HTTP/1.1\r\n\r\n"))
    assert [(e.flags, e.seq, e.payload) for e in out] == [(ACK | PSH, C_ISN + 1, b"GET / HTTP/1.1\r\n\r\n")]
    # second request: the client had received 100 response bytes: held until the target answered
    out = pb.cap(client(C_ISN + 19, O_ISN + 101, ACK | PSH, b"GET /2 HTTP/1.1\r\n\r\n"))
    assert out == []
    out = pb.resp(target(T_ISN + 1, C_ISN + 19, ACK | PSH, payload_len=100))
    assert [(e.flags, e.seq, e.ack) for e in out] == [(ACK | PSH, C_ISN + 19, T_ISN + 101)]
    out = pb.cap(client(C_ISN + 38, O_ISN + 201, ACK | FIN))
    assert out == []
    out = pb.resp(target(T_ISN + 101, C_ISN + 38, ACK | PSH, payload_len=100))
    assert [(e.flags, e.seq, e.ack) for e in out] == [(ACK, C_ISN + 38, T_ISN + 201)]
    out = pb.advance(0.2)            # the FIN once the target has been quiet for close_quiet
    assert [(e.flags, e.seq, e.ack) for e in out] == [(ACK | FIN, C_ISN + 38, T_ISN + 201)]
    out = pb.resp(target(T_ISN + 201, C_ISN + 39, ACK | FIN))
    assert [(e.flags, e.ack) for e in out] == [(ACK, T_ISN + 202)]
    assert pb.c.sessions_completed == 1
    assert pb.advance(10) == []
    assert not pb.table.sessions
