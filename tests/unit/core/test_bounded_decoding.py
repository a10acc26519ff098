"""Every frame read from a socket is decoded within bounds (issue 14): any bad JSON is a WireError
(counted or answered), numbers are range checked, interceptd's report is kept field by field within
limits, and every ZeroMQ socket refuses frames larger than the largest legitimate one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import zmq

from appliance.config.specs import CaptureSpec
from appliance.core import wire
from appliance.core.control import Request, decode_reply, decode_request, encode_reply, ok_reply
from appliance.tcpcopyd.answers import MAX_COUNTERS_KEPT, MAX_FILTER_CHARS, MAX_INTERCEPTS_SHOWN, AnswerChannel
from appliance.tcpcopyd.handlers import handle_set

STATS, CONTROL = wire.KIND_STATS, wire.KIND_CONTROL
DIGITS = b"1" * 4301                        # one digit over Python's int conversion limit


def frame(kind: int, body: bytes) -> bytes:
    return bytes([wire.VERSION, kind]) + body


# ---- the decoder -----------------------------------------------------------------------------
@pytest.mark.parametrize("body, why", [
    (b'{"a": ' + DIGITS + b"}", "digits"),
    (b'{"a": -' + DIGITS + b"}", "digits"),
    (b'{"a": 18446744073709551616}', "outside 64 bits"),
    (b'{"a": -9223372036854775809}', "outside 64 bits"),
    (b'{"a": 1e400}', "overflows"),
    (b'{"a": -1e400}', "overflows"),
    (b'{"a": NaN}', "NaN"),
    (b'{"a": Infinity}', "Infinity"),
    (b'{"a": -Infinity}', "Infinity"),
    (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "nested deeper"),
    (b'{"a": ' + b'{"b": ' * 40 + b"1" + b"}" * 41, "nested deeper"),
])
def test_numbers_out_of_range_and_deep_nesting_are_wire_errors(body, why):
    with pytest.raises(wire.WireError, match=why):
        wire.decode_json(frame(STATS, body), STATS)


def test_numbers_in_range_decode():
    body = b'{"a": 18446744073709551615, "b": -9223372036854775808, "c": 1.5e300, "d": [[[1]]]}'
    assert wire.decode_json(frame(STATS, body), STATS) == {"a": (1 << 64) - 1, "b": -(1 << 63), "c": 1.5e300,
                                                           "d": [[[1]]]}


def test_encoding_refuses_what_decoding_would():
    for bad in ({"a": float("nan")}, {"a": float("inf")}):
        with pytest.raises(wire.WireError):
            wire.encode_json(STATS, bad)


# ---- the control plane ------------------------------------------------------------------------
def test_a_control_request_with_a_huge_integer_is_answered_eproto():
    for body in (b'{"id": ' + DIGITS + b', "command": "status"}',
                 b'{"command": "set", "args": {"name": "sample-rate", "value": 1e400}}'):
        request, reply = decode_request(frame(CONTROL, body))
        assert request is None and reply["errno"] == "EPROTO"


def set_rate(value: object) -> Request:
    return Request("1", "set", {"name": "sample-rate", "value": value})


class _Sup:
    def __init__(self) -> None:
        self.changes: list[dict] = []

    def set_runtime(self, **changes: object) -> dict:
        self.changes.append(changes)
        return changes


@pytest.mark.parametrize("value", [10 ** 400, -(10 ** 400), "1e400", "nan", "inf", float("nan"), True, None,
                                   [0.5], {"v": 0.5}, "0.5" * 20, 1.5, -0.1])
def test_set_sample_rate_refuses_what_is_not_a_rate_without_raising(value):
    sup = _Sup()
    reply = handle_set(sup, set_rate(value))  # type: ignore[arg-type]
    assert reply["status"] == "error" and reply["errno"] == "EINVAL" and sup.changes == []
    assert len(reply["error"]) < 120


@pytest.mark.parametrize("value, rate", [("0.25", 0.25), (1, 1.0), (0, 0.0), (0.5, 0.5), ("1e-1", 0.1)])
def test_set_sample_rate_takes_numbers_and_numeric_strings(value, rate):
    sup = _Sup()
    reply = handle_set(sup, set_rate(value))  # type: ignore[arg-type]
    assert reply["status"] == "ok" and sup.changes == [{"sample_rate": rate}]


def test_a_reply_too_big_for_a_frame_goes_out_as_an_error():
    reply = decode_reply(encode_reply(ok_reply("7", {"blob": "x" * wire.MAX_JSON_FRAME})))
    assert reply["status"] == "error" and reply["errno"] == "EMSGSIZE" and reply["id"] == "7"


def test_request_ids_are_bounded():
    request, _ = decode_request(wire.encode_json(CONTROL, {"id": "i" * 10_000, "command": "status"}))
    assert request is not None and len(request.id) == 64
    request, _ = decode_request(wire.encode_json(CONTROL, {"id": {"x": 1}, "command": "status"}))
    assert request is not None and request.id == ""


# ---- interceptd's report, kept by every rewrite worker (worker 0 puts it in its heartbeat) ---------
@pytest.fixture
def channel():
    ctx = zmq.Context()
    ch = AnswerChannel(ctx, 2, 0, ())
    yield ch
    for sock in ch.sockets():
        sock.close(linger=0)
    ctx.term()


def report(instance: str = "0a0b0c0d", **fields: object) -> bytes:
    body = {"role": "interceptd", "instance": instance, "pid": 4242, "filter": "tcp and src port 8080",
            "counters": {"captured": 5, "malformed": 1}}
    body.update(fields)
    return wire.encode_json(STATS, body)


def test_a_report_with_a_huge_integer_is_a_bad_frame(channel):
    channel._on_intercept_stats(frame(STATS, b'{"instance": "0a", "pid": ' + DIGITS + b', "counters": {}}'))
    assert channel.bad_frames == 1 and channel.intercepts == {}


def test_oversized_and_mistyped_fields_are_dropped_and_counted(channel):
    big = "x" * (wire.MAX_JSON_FRAME - 4096)
    channel._on_intercept_stats(report(pid=big))
    channel._on_intercept_stats(report("0e", filter=big, pid=True))
    counters = {f"c{i}": i for i in range(MAX_COUNTERS_KEPT + 10)}
    counters.update({"neg": -1, "float": 1.5, "text": "1", "huge": 1 << 63, "Bad-Name": 1, "n" * 49: 1})
    channel._on_intercept_stats(report("0f", counters=counters, filter=[1]))
    assert channel.bad_frames == 0
    a, b, c = (channel.intercepts[i] for i in ("0a0b0c0d", "0e", "0f"))
    assert a["pid"] is None and a["filter"] == "tcp and src port 8080"
    assert b["pid"] is None and b["filter"] is None
    assert len(c["counters"]) == MAX_COUNTERS_KEPT and c["filter"] is None
    assert all(isinstance(v, int) and k.startswith("c") for k, v in c["counters"].items())
    # pid; filter and pid; filter, 10 counters over the bound and the 6 bad ones
    assert channel.fields_dropped == 1 + 2 + 1 + 10 + 6
    assert channel.counters()["intercept_fields_dropped"] == channel.fields_dropped


@pytest.mark.parametrize("body", [
    {"instance": "0a" * 20, "counters": {}},          # too long
    {"instance": "\x1b[2J", "counters": {}},
    {"instance": 7, "counters": {}},
    {"instance": "0a"},
    {"instance": "0a", "counters": [1, 2]},
])
def test_a_report_without_a_proper_instance_or_counters_is_a_bad_frame(channel, body):
    channel._on_intercept_stats(wire.encode_json(STATS, body))
    assert channel.bad_frames == 1 and channel.intercepts == {}


def test_worker_0s_heartbeat_stays_encodable_whatever_interceptds_report(channel):
    """The heartbeat carries every kept report; before the bounds a single 1 MiB `pid` made it
    unencodable (the worker died on every heartbeat), and `status` then failed in the supervisor."""
    longest = "f" * MAX_FILTER_CHARS
    counters = {f"k{i:02d}" * 12: (1 << 63) - 1 for i in range(MAX_COUNTERS_KEPT)}
    for i in range(MAX_INTERCEPTS_SHOWN + 5):
        channel._on_intercept_stats(report(f"{i:016x}", filter=longest, counters=counters,
                                           pid="p" * (wire.MAX_JSON_FRAME - 10_000)))
    assert len(channel.intercepts) == MAX_INTERCEPTS_SHOWN
    heartbeat = wire.encode_json(STATS, {"role": "rewrite", "index": 0, "counters": {
        "response_channel": channel.counters(), "intercepts": channel.intercepts_info()}})
    assert len(heartbeat) < wire.MAX_JSON_FRAME // 2
    assert wire.decode_json(heartbeat, STATS)["counters"]["intercepts"].keys() == channel.intercepts.keys()


# ---- ZMQ_MAXMSGSIZE on every socket ---------------------------------------------------------------
def test_frame_size_limits_fit_the_largest_legitimate_frames():
    from workers.reader import BATCH
    spec = CaptureSpec(index=0, interface="eth0", bpf="tcp", shards=1, run_dir="/run/x")
    largest_segments = wire.BATCH_HEADER.size + spec.batch_max * (wire.RECORD_HEADER.size + spec.snaplen)
    assert largest_segments <= wire.MAX_SEGMENT_MESSAGE and BATCH <= wire.MAX_SEGMENT_RECORDS
    assert spec.snaplen <= wire.MAX_RECORD_BYTES
    largest_answers = wire.BATCH_HEADER.size + wire.MAX_BATCH_RECORDS * (wire.RECORD_HEADER.size + 120)
    assert largest_answers <= wire.MAX_RESPONSE_MESSAGE and wire.MAX_JSON_MESSAGE <= wire.MAX_RESPONSE_MESSAGE


def test_every_socket_has_a_message_size_limit(channel, tmp_path):
    from appliance.config.loader import InterceptConfig
    from appliance.interceptd.daemon import Intercept
    from workers.base import Worker
    assert channel.sock.getsockopt(zmq.MAXMSGSIZE) == wire.MAX_RESPONSE_MESSAGE
    ctx = zmq.Context()
    sockets = []
    try:
        worker = Worker(0, str(tmp_path), (), "test")
        worker.ctx = ctx
        sockets += [worker.socket(kind) for kind in (zmq.PULL, zmq.SUB, zmq.PUB, zmq.PUSH)]
        limits = [s.getsockopt(zmq.MAXMSGSIZE) for s in sockets]
        assert limits == [wire.MAX_SEGMENT_MESSAGE] + [wire.MAX_JSON_MESSAGE] * 3
        pub = Intercept(InterceptConfig(interfaces=("lo",), bpf="tcp")).publisher(ctx)
        sockets.append(pub)
        assert pub.getsockopt(zmq.MAXMSGSIZE) == wire.MAX_SUBSCRIBER_MESSAGE
        from appliance.tcpcopyd.supervisor import Supervisor
        sup = SimpleNamespace(ctx=ctx)
        endpoint = wire.control_endpoint(str(tmp_path))
        bound = Supervisor._bind(sup, zmq.ROUTER, endpoint)  # type: ignore[arg-type]
        sockets.append(bound)
        assert bound.getsockopt(zmq.MAXMSGSIZE) == wire.MAX_JSON_MESSAGE
    finally:
        for sock in sockets:
            sock.close(linger=0)
        ctx.term()


def test_curve_subscribers_get_through_interceptds_message_size_limit():
    """The limit applies to ZMTP handshake commands too (a CURVE INITIATE is about 300 bytes)."""
    from appliance.config.loader import InterceptConfig
    from appliance.interceptd.daemon import Intercept
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    ctx = zmq.Context()
    pub = Intercept(InterceptConfig(interfaces=("lo",), bpf="tcp")).publisher(ctx)
    sub = ctx.socket(zmq.SUB)
    try:
        pub.curve_server = True
        pub.curve_secretkey, pub.curve_publickey = server_secret, server_public
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub.curve_serverkey = server_public
        sub.curve_secretkey, sub.curve_publickey = client_secret, client_public
        sub.setsockopt(zmq.SUBSCRIBE, wire.shard_topic(2, 1))
        sub.connect(f"tcp://127.0.0.1:{port}")
        assert pub.poll(5000) and pub.recv() == b"\x01" + wire.shard_topic(2, 1)
    finally:
        sub.close(linger=0)
        pub.close(linger=0)
        ctx.term()
