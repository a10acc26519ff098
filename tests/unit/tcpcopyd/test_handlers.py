"""appliance.tcpcopyd.handlers: every control command against a fake supervisor (no sockets)."""

from __future__ import annotations

from typing import Any

from appliance.core.control import Request
from appliance.tcpcopyd.handlers import dispatch
from appliance.tcpcopyd.status import Snapshot


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
