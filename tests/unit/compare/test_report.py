"""appliance.compare.report: grouping, top N, histograms, merging, bounded JSON lines."""

from __future__ import annotations

import base64
import json

import pytest

from appliance.compare.report import (
    LATENCY_BUCKETS,
    MIN_LINE,
    DiffReport,
    Histogram,
    group_key,
    merge_reports,
    to_json_line,
)
from appliance.compare.verdict import Comparison, VerdictSpec, compare_turns
from tests.unit.compare.kit import MS, http_answer, one_turn

SPEC = VerdictSpec()


def _http(path: str, online_status: int, target_status: int, *, method: str = "GET", online_ms: float = 5,
          target_ms: float = 6, body: bytes = b"body") -> Comparison:
    online, target = one_turn(http_answer(online_status, body)), one_turn(http_answer(target_status, body))
    return compare_turns(online, target, SPEC, online_latency_ns=int(online_ms * MS),
                         target_latency_ns=int(target_ms * MS),
                         request=f"{method} {path}?q=1 HTTP/1.1\r\n\r\n".encode())


def test_groups_by_method_and_path_and_orders_top() -> None:
    report = DiffReport()
    for _ in range(3):
        report.add(_http("/x", 200, 500))
    report.add(_http("/x", 404, 500))
    report.add(_http("/y", 200, 200, target_ms=50))                 # latency only
    report.add(_http("/y", 200, 200, method="POST"))                # equal: histograms only
    report.add(_http("/a", 200, 503))
    top = report.top(2)
    assert [(g.method, g.path, g.count) for g in top] == [("GET", "/x", 4), ("GET", "/a", 1)]
    x = top[0]
    assert x.kinds == {"status": 4} and x.statuses == {"200->500": 3, "404->500": 1}
    assert x.last_sizes == (4, 4)
    assert x.to_dict()["target_latency"] == {"n": 4, "mean_ms": 6.0, "max_ms": 6.0}
    assert ("POST", "/y") not in report.groups and report.groups[("GET", "/y")].kinds == {"latency": 1}
    assert report.online_latency.total == 7 and report.target_latency.total == 7
    assert [g.path for g in report.top(10)] == ["/x", "/a", "/y"]
    assert report.top(0) == []


def test_group_keys_of_other_protocols_and_unknown_requests() -> None:
    tcp = compare_turns(one_turn(b"abc"), one_turn(b"abd"), SPEC)
    assert group_key(tcp) == ("TCP", ":80")
    anonymous = compare_turns(one_turn(http_answer(200, b"a")), one_turn(http_answer(500, b"a")), SPEC)
    assert group_key(anonymous) == ("?", "?")


def test_examples_and_groups_are_bounded() -> None:
    report = DiffReport(max_groups=2, max_examples=2)
    for status in (500, 501, 502, 503):
        report.add(_http("/x", 200, status))
    for path in ("/b", "/c", "/d"):
        report.add(_http(path, 200, 500))
    assert report.groups[("GET", "/x")].statuses == {"200->500": 1, "200->501": 1, "other": 2}
    assert len(report.groups) == 2 and report.overflow == 2              # /c and /d


def test_histogram_buckets() -> None:
    h = Histogram()
    for seconds in (0.0001, 0.0005, 0.0006, 0.01, 99.0):
        h.observe(seconds)
    cumulative = h.cumulative()
    assert cumulative[0] == (0.0005, 2) and cumulative[1] == (0.001, 3)
    assert dict(cumulative)[0.01] == 4 and cumulative[-1] == (float("inf"), 5)
    assert len(cumulative) == len(LATENCY_BUCKETS) + 1 and h.sum == pytest.approx(99.0112)


def test_merge_of_worker_reports() -> None:
    a, b = DiffReport(), DiffReport()
    a.add(_http("/x", 200, 500, target_ms=10))
    b.add(_http("/x", 200, 500, target_ms=30))
    b.add(_http("/z", 200, 500))
    doc = merge_reports([json.loads(json.dumps(a.to_dict())), json.loads(json.dumps(b.to_dict()))], top=5)
    x = doc["groups"][0]
    assert (x["path"], x["count"], x["statuses"]) == ("/x", 2, {"200->500": 2})
    assert x["target_latency"] == {"n": 2, "mean_ms": 20.0, "max_ms": 30.0}
    assert doc["target_latency"]["total"] == 3 and doc["group_count"] == 2
    with pytest.raises(ValueError):
        DiffReport().merge({"groups": [{"method": "GET"}]})
    with pytest.raises(ValueError):
        DiffReport().merge({"online_latency": {"buckets": [1.0], "counts": [0, 0], "total": 0, "sum": 0}})


def test_json_line_shows_text_heads() -> None:
    c = _http("/x", 200, 500)
    obj = json.loads(to_json_line(c, extra={"session": "198.18.0.1:40000", "ts": 1.5}))
    assert obj["diff"] == ["status"] and obj["path"] == "/x" and obj["session"] == "198.18.0.1:40000"
    assert obj["online"]["head_encoding"] == "text"
    assert obj["online"]["head"].startswith("HTTP/1.1 200 OK\r\n")
    assert obj["target"]["status"] == 500 and obj["online"]["latency_ms"] == 5.0
    assert obj["online"]["head_shown"] == obj["online"]["head_len"]


def test_json_line_is_bounded_and_binary_heads_are_base64() -> None:
    online = one_turn(bytes(range(256)) * 16)                      # 4096 binary bytes, head 512
    target = one_turn(bytes(range(255, -1, -1)) * 16)
    c = compare_turns(online, target, SPEC)
    assert len(to_json_line(c, max_bytes=100_000)) > 1800           # both heads in base64: cuts are needed
    for limit in (MIN_LINE, 1500, 1800):
        line = to_json_line(c, max_bytes=limit)
        assert len(line.encode()) <= limit and line.isascii() and "\n" not in line
        obj = json.loads(line)
        shown = obj["online"]["head_shown"]
        assert obj["online"]["head_encoding"] == "base64" and 0 < shown < 512
        assert base64.b64decode(obj["online"]["head"]) == online.head[:shown]
        assert len(to_json_line(c, max_bytes=limit + 40)) > limit    # the longest cut that fits
    assert json.loads(to_json_line(c, max_bytes=100_000))["online"]["head_shown"] == 512


def test_json_line_falls_back_to_the_bare_verdict() -> None:
    c = _http("/x", 200, 500)
    line = to_json_line(c, max_bytes=MIN_LINE, extra={f"k{i}": "v" * 200 for i in range(20)})
    assert len(line) <= MIN_LINE and json.loads(line) == {
        "index": 0, "diff": ["status"], "method": "GET", "path": "/x", "cut": True}
