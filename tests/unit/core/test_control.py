"""appliance.core.control: request/reply framing and the loss funnel (no sockets, no supervisor)."""

from __future__ import annotations

from appliance.core import wire
from appliance.core.control import (
    Request, decode_reply, decode_request, encode_reply, encode_request, error_reply, funnel, ok_reply,
)


def test_request_round_trip():
    req = Request("42", "status", {"verbose": True})
    got, err = decode_request(encode_request(req))
    assert err == {} and got == req


def test_request_defaults():
    got, err = decode_request(wire.encode_json(wire.KIND_CONTROL, {"command": "stop"}))
    assert err == {} and got == Request("", "stop", {})


def test_request_id_is_stringified():
    got, _ = decode_request(wire.encode_json(wire.KIND_CONTROL, {"id": 7, "command": "status", "args": {}}))
    assert got is not None and got.id == "7"


def test_garbage_request_is_eproto():
    for frame in (b"", b"junk", wire.encode_json(wire.KIND_STATS, {"command": "status"}),
                  bytes([wire.VERSION, wire.KIND_CONTROL]) + b"[" * 100_000):
        req, err = decode_request(frame)
        assert req is None
        assert err["status"] == "error" and err["errno"] == "EPROTO" and err["id"] == ""


def test_request_without_command_or_with_bad_args_is_einval():
    for obj in ({"id": "a"}, {"id": "a", "command": 3}, {"id": "a", "command": "status", "args": [1]}):
        req, err = decode_request(wire.encode_json(wire.KIND_CONTROL, obj))
        assert req is None
        assert err == {"id": "a", "status": "error", "error": "request needs a command and args",
                       "errno": "EINVAL"}


def test_reply_round_trip():
    for reply in (ok_reply("1", {"x": [1, 2]}), error_reply("2", "nope", "ENOENT")):
        frame = encode_reply(reply)
        assert frame[:2] == bytes([wire.VERSION, wire.KIND_CONTROL])
        assert decode_reply(frame) == reply
    assert ok_reply("1", {}) == {"id": "1", "status": "ok", "data": {}}
    assert error_reply("2", "m", "E") == {"id": "2", "status": "error", "error": "m", "errno": "E"}


def test_funnel_sums_by_role():
    children = [
        {"role": "capture", "counters": {"captured": 10, "kernel_drops": 1, "queue_drops": 2}},
        {"role": "capture", "counters": {"captured": 5, "kernel_drops": 0, "queue_drops": 1}},
        {"role": "rewrite", "counters": {"segments_received": 9, "packets_sent": 11, "bytes_sent": 900,
                                         "bytes_acked": 800, "responses_unmatched": 3,
                                         "sessions_started": 4, "sessions_established": 3,
                                         "sessions_completed": 2, "handshake_timeouts": 1,
                                         "capture_gaps": 1, "send_errors": {"EPERM": 2, "ENOBUFS": 1},
                                         "response_channel": {"headers": 15, "batches_lost": 2}}},
        {"role": "rewrite", "counters": {"segments_received": 3, "packets_sent": 1,
                                         "send_errors": {"EPERM": 4}, "response_channel": {"headers": 5}}},
        {"role": "rewrite", "counters": {}},
    ]
    f = funnel(children)
    assert f == {
        "captured": 15, "kernel_drops": 1, "queue_drops_capture": 3, "handed_to_workers": 12,
        "sent_packets": 12, "send_errors": 7, "bytes_sent": 900, "bytes_acked_by_target": 800,
        "response_headers": 20, "response_batches_lost": 2, "responses_unmatched": 3,
        "sessions_started": 4, "sessions_established": 3, "sessions_completed": 2,
        "handshake_timeouts": 1, "capture_gaps": 1, "sessions_lost_in_restarts": 0, "in_queues": 0,
        "sessions_shed": 0,
        "lost_at": ["capture (kernel ring)", "capture -> worker queue", "worker -> target (send errors)",
                    "target handshake", "captured stream (gaps)", "intercept -> tcpcopyd (response batches)"],
    }
    # the stages add up: what capture took is dropped at the queue, still queued, or handed over
    assert f["captured"] == f["queue_drops_capture"] + f["in_queues"] + f["handed_to_workers"]


def test_funnel_of_nothing_is_zeros():
    f = funnel([])
    assert f.pop("lost_at") == []
    assert set(f.values()) == {0}
