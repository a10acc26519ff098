"""appliance.tcpcopyd.handlers: every control command against a fake supervisor (no sockets)."""

from __future__ import annotations

from typing import Any

from appliance.compare.tracker import Comparer
from appliance.core.control import Request
from appliance.tcpcopyd.handlers import dispatch
from appliance.tcpcopyd.status import Snapshot
from tests.unit.compare.kit import CLIENT, http_answer, replay


class FakeSupervisor:
    """The ControlTarget the handlers may use, and a record of what they did."""

    def __init__(self) -> None:
        self.runtime: dict[str, Any] = {"paused": False, "sample_rate": 1.0, "log_level": "info", "seq": 0}
        self.stops = 0

    def snapshot(self) -> Snapshot:
        return Snapshot(time=1.0, pid=42, uptime=3.0, stopping=self.stops > 0, rows=[], runtime=dict(self.runtime))

    def set_runtime(self, **changes: Any) -> dict[str, Any]:
        self.runtime.update(changes)
        self.runtime["seq"] += 1
        return dict(self.runtime)

    def request_stop(self) -> None:
        self.stops += 1


def call(sup: FakeSupervisor, command: str, **args: Any) -> dict[str, Any]:
    return dispatch(sup, Request("r1", command, args))


def test_status_answers_from_the_snapshot():
    reply = call(FakeSupervisor(), "status")
    assert reply["status"] == "ok" and reply["id"] == "r1"
    assert reply["data"]["supervisor"]["pid"] == 42 and reply["data"]["children"] == []


def test_stop_asks_the_supervisor_to_stop():
    sup = FakeSupervisor()
    assert call(sup, "stop") == {"id": "r1", "status": "ok", "data": {"stopping": True}}
    assert sup.stops == 1


def test_pause_and_resume_change_the_runtime_settings():
    sup = FakeSupervisor()
    assert call(sup, "pause")["data"]["paused"] is True and sup.runtime["seq"] == 1
    assert call(sup, "resume")["data"]["paused"] is False and sup.runtime["seq"] == 2


def test_set_takes_valid_values_only():
    sup = FakeSupervisor()
    assert call(sup, "set", name="sample-rate", value="0.25")["data"]["sample_rate"] == 0.25
    assert call(sup, "set", name="log-level", value="debug")["data"]["log_level"] == "debug"
    for name, value in (("sample-rate", 2), ("sample-rate", "nan"), ("sample-rate", True),
                        ("log-level", "loud"), ("log-level", 3), ("workers", 4), (None, None)):
        reply = call(sup, "set", name=name, value=value)
        assert reply["status"] == "error" and reply["errno"] == "EINVAL", (name, value)
    assert sup.runtime == {"paused": False, "sample_rate": 0.25, "log_level": "debug", "seq": 2}


def test_an_unknown_command_is_enoent_and_changes_nothing():
    sup = FakeSupervisor()
    reply = call(sup, "reboot")
    assert reply["status"] == "error" and reply["errno"] == "ENOENT" and "reboot" in reply["error"]
    assert sup.stops == 0 and sup.runtime["seq"] == 0


def _compare_rows() -> list[dict[str, Any]]:
    """Two rewrite workers' heartbeats in compare mode: /x answered 500 by the target on each."""
    rows = []
    for index in range(2):
        comparer = Comparer()
        ok, failed = http_answer(body=b"ok"), http_answer(status=500, body=b"ok")
        replay(comparer, ["/a", "/x"], [ok, ok], [ok, failed], client=(CLIENT[0], 40000 + index))
        rows.append({"role": "rewrite", "index": index, "pid": 100 + index, "restarts": 0,
                     "counters": {"compare": comparer.counters()},
                     "info": {"compare_report": comparer.info()}})
    return rows


class ComparingSupervisor(FakeSupervisor):
    def snapshot(self) -> Snapshot:
        return Snapshot(time=1.0, pid=42, uptime=3.0, stopping=False, rows=_compare_rows())


def test_diff_merges_every_workers_differences_by_request():
    reply = call(ComparingSupervisor(), "diff", top=5)
    assert reply["status"] == "ok"
    data = reply["data"]
    assert [(g["method"], g["path"], g["count"]) for g in data["groups"]] == [("GET", "/x", 2)]
    assert data["counters"]["compared"] == 4 and data["counters"]["different_status"] == 2
    assert data["online_latency"]["total"] == 4 and data["reports_refused"] == 0


def test_diff_refuses_a_bad_top_and_skips_reports_that_do_not_merge():
    for top in (0, -1, "5", True, 10**6):
        assert call(ComparingSupervisor(), "diff", top=top)["errno"] == "EINVAL"
    sup = ComparingSupervisor()
    rows = _compare_rows() + [{"role": "rewrite", "index": 2, "counters": {},
                               "info": {"compare_report": {"groups": "junk", "online_latency": 1}}}]
    sup.snapshot = lambda: Snapshot(time=1.0, pid=1, uptime=1.0, stopping=False, rows=rows)  # type: ignore[method-assign]
    data = call(sup, "diff")["data"]
    assert data["reports_refused"] == 1 and data["groups"][0]["count"] == 2
