"""appliance.compare.verdict: each kind of difference, equality despite ignored headers, pairing."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.compare.turns import AssemblerSpec, Turn
from appliance.compare.verdict import (
    Comparison,
    Diff,
    VerdictCounters,
    Verdicts,
    VerdictSpec,
    compare_turns,
)
from appliance.core.wire import TURN_INCOMPLETE
from tests.unit.compare.kit import MS, http_answer, one_turn

SPEC = VerdictSpec()
GET_X = b"GET /x?id=3 HTTP/1.1\r\nHost: t\r\n\r\n"


def _pair(online: bytes, target: bytes, online_latency_ns: int | None = None,
          target_latency_ns: int | None = None) -> Comparison:
    return compare_turns(one_turn(online), one_turn(target), SPEC, request=GET_X,
                         online_latency_ns=online_latency_ns, target_latency_ns=target_latency_ns)


def test_equal_when_only_ignored_headers_differ() -> None:
    online = http_answer(200, b"same body", {"Date": "Mon, 01 Jan 2024 00:00:00 GMT", "X-Request-Id": "a1"})
    target = http_answer(200, b"same body", {"Date": "Tue, 02 Jan 2024 10:11:12 GMT", "Server": "nginx/9",
                                             "X-Request-Id": "b2", "Set-Cookie": "s=2"})
    c = _pair(online, target)
    assert c.equal and c.diff == Diff.NONE and c.http
    assert (c.method, c.path) == ("GET", "/x")
    assert (c.online.status, c.target.status, c.online.size) == (200, 200, 9)


def test_status_differs() -> None:
    c = _pair(http_answer(200, b"ok"), http_answer(500, b"ok", reason="Internal Server Error"))
    assert c.diff == Diff.STATUS and (c.online.status, c.target.status) == (200, 500)


def test_size_and_body_differ() -> None:
    c = _pair(http_answer(200, b"short"), http_answer(200, b"much longer body"))
    assert c.diff == Diff.SIZE | Diff.BODY and (c.online.size, c.target.size) == (5, 16)


def test_body_differs_at_equal_size() -> None:
    c = _pair(http_answer(200, b"abcde"), http_answer(200, b"abcdX"))
    assert c.diff == Diff.BODY


def test_size_from_content_length_even_when_a_side_is_incomplete() -> None:
    online = one_turn(http_answer(200, b"12345"))
    target = dataclasses.replace(one_turn(http_answer(200, b"1234567")), flags=TURN_INCOMPLETE)
    c = compare_turns(online, target, SPEC)
    assert c.diff == Diff.SIZE and c.uncomparable and not c.equal
    no_length = dataclasses.replace(one_turn(http_answer(200, b"1234567", {"Content-Length": ""})),
                                    flags=TURN_INCOMPLETE)
    c = compare_turns(online, no_length, SPEC)
    assert c.diff == Diff.NONE and c.uncomparable                  # size and body not judged


def test_headers_differ() -> None:
    c = _pair(http_answer(200, b"{}", {"Content-Type": "application/json; charset=utf-8"}),
              http_answer(200, b"{}", {"Content-Type": "text/html"}))
    assert c.diff == Diff.HEADERS and c.header_diffs == ("content-type",)
    c = _pair(http_answer(200, b"{}", {"Content-Type": "Application/JSON;  charset=UTF-8"}),
              http_answer(200, b"{}", {"Content-Type": "application/json; charset=utf-8"}))
    assert c.equal                                                 # media types compare case-free
    extra = {"Cache-Control": "no-store", "Vary": "Accept"}
    c = _pair(http_answer(200, b"{}"), http_answer(200, b"{}", extra))
    assert c.diff == Diff.HEADERS and c.header_diffs == ("cache-control", "vary")


def test_header_missing_from_a_cut_head_is_not_a_difference() -> None:
    spec = AssemblerSpec(head_bytes=100)
    online = one_turn(http_answer(200, b"x", {"X-Pad": "p" * 60, "Cache-Control": "no-store"}), spec=spec)
    target = one_turn(http_answer(200, b"x", {"X-Pad": "p" * 60}), spec=spec)
    assert len(online.head) == 100
    assert compare_turns(online, target, SPEC).equal


def test_configurable_ignore_list() -> None:
    online = one_turn(http_answer(200, b"a", {"X-Build": "1"}))
    target = one_turn(http_answer(200, b"a", {"X-Build": "2"}))
    assert compare_turns(online, target, SPEC).diff == Diff.HEADERS
    spec = VerdictSpec(ignore_headers=SPEC.ignore_headers | {"x-build"})
    assert compare_turns(online, target, spec).equal
    with pytest.raises(ValueError):
        VerdictSpec(ignore_headers=frozenset({"X-Build"}))


@pytest.mark.parametrize(("online_ms", "target_ms", "slow"), [
    (10, 30, True),          # 3x and 20 ms more
    (10, 20, False),         # 2x is not more than 2x
    (2, 11, False),          # 5.5x but only 9 ms more
    (2, 12.5, True),
    (50, 20, False),         # faster
])
def test_latency(online_ms: float, target_ms: float, slow: bool) -> None:
    c = _pair(http_answer(200, b"a"), http_answer(200, b"a"), online_latency_ns=int(online_ms * MS),
              target_latency_ns=int(target_ms * MS))
    assert c.diff == (Diff.LATENCY if slow else Diff.NONE)
    assert c.online.latency_ns == int(online_ms * MS)


def test_latency_unknown_is_not_judged() -> None:
    assert _pair(http_answer(200, b"a"), http_answer(200, b"a"), target_latency_ns=10**9).equal


def test_non_http_turns() -> None:
    same = compare_turns(one_turn(b"\x00\x01pgdata"), one_turn(b"\x00\x01pgdata"), SPEC)
    assert same.equal and not same.http and same.online.status is None
    assert compare_turns(one_turn(b"\x00\x01pgdata"), one_turn(b"\x00\x01pgDATA"), SPEC).diff == Diff.BODY
    assert compare_turns(one_turn(b"abc"), one_turn(b"abcd"), SPEC).diff == Diff.SIZE | Diff.BODY


def test_http_versus_garbage_is_a_status_difference() -> None:
    c = compare_turns(one_turn(http_answer(200, b"ok")), one_turn(b"\x15\x03\x03 alert"), SPEC)
    assert c.http and c.diff & Diff.STATUS and c.target.status is None


def test_misaligned_pairs_are_not_judged() -> None:
    online = one_turn(http_answer(200, b"a"), request=100)
    target = one_turn(http_answer(500, b"b"), request=90)
    c = compare_turns(online, target, SPEC)
    assert c.diff == Diff.MISALIGNED
    counters = VerdictCounters()
    counters.count(c)
    assert (counters.misaligned, counters.compared) == (1, 0)
    mid_stream = dataclasses.replace(target, request_offset=None)
    assert compare_turns(online, mid_stream, SPEC).diff == Diff.STATUS | Diff.BODY


def _indexed(turn: Turn, index: int) -> Turn:
    return dataclasses.replace(turn, index=index)


def test_verdicts_pair_by_index_in_any_order_and_count() -> None:
    v = Verdicts()
    ok, bad = one_turn(http_answer(200, b"fine")), one_turn(http_answer(500, b"fine"))
    assert v.target("s1", _indexed(ok, 1), latency_ns=2 * MS) is None
    assert v.online("s1", _indexed(ok, 0), latency_ns=MS, request=GET_X) is None
    c1 = v.online("s1", _indexed(ok, 1), latency_ns=MS, request=b"POST /y HTTP/1.1\r\n\r\n")
    assert c1 is not None and c1.equal and c1.path == "/y" and c1.target.latency_ns == 2 * MS
    c0 = v.target("s1", _indexed(bad, 0))
    assert c0 is not None and c0.diff == Diff.STATUS and c0.path == "/x"
    assert v.online("s2", ok) is None                              # another session: not paired with s1
    assert v.online("s2", ok) is None                              # index 0 again replaces the first
    v.target("s1", _indexed(ok, 7))
    v.end("s1")
    v.end("s2")
    c = v.counters
    assert (c.compared, c.equal, c.different_status, c.unpaired_online, c.unpaired_target) == (2, 1, 1, 2, 1)
    assert len(v) == 0


def test_verdicts_are_bounded() -> None:
    v = Verdicts(VerdictSpec(max_sessions=2, max_pending=3))
    turn = one_turn(b"x")
    for i in range(5):
        v.online("s", _indexed(turn, i))
    assert v.counters.unpaired_online == 2
    assert v.target("s", _indexed(turn, 0)) is None                # index 0 was dropped
    assert v.target("s", _indexed(turn, 4)) is not None
    v.online("a", turn)
    v.online("b", turn)                                            # "s" is the least recent: evicted
    assert v.counters.sessions_evicted == 1 and len(v) == 2
    assert (v.counters.unpaired_online, v.counters.unpaired_target) == (4, 1)


def test_counters_count_each_kind() -> None:
    counters = VerdictCounters()
    for online, target in ((b"a", b"a"), (b"a", b"bb"), (b"a", b"b")):
        counters.count(compare_turns(one_turn(online), one_turn(target), SPEC))
    incomplete = dataclasses.replace(one_turn(b"a"), flags=TURN_INCOMPLETE)
    counters.count(compare_turns(incomplete, one_turn(b"zz"), SPEC))
    assert (counters.compared, counters.equal, counters.different_size, counters.different_body,
            counters.uncomparable) == (4, 1, 1, 2, 1)
