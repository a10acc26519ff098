"""appliance.core.control: request/reply framing (no sockets, no supervisor)."""

from __future__ import annotations

from appliance.core import wire
from appliance.core.control import (
    Request,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    error_reply,
    ok_reply,
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
