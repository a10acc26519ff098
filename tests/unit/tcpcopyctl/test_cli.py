"""tcpcopyctl: what it prints from a status document, and what `status` says when tcpcopyd does not
answer (issue 14: terminal escapes from the wire; nothing on stdout without a daemon)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import zmq

from appliance.core import wire
from appliance.tcpcopyctl.cli import LSB_NOT_RUNNING, LSB_UNKNOWN, call, format_status, main, printable
from appliance.tcpcopyd.status import Snapshot, document
from appliance.tcpcopyd.status_schema import NO_ANSWER, check

ESC = "\x1b]0;owned\x07\x1b[2J"


def status_doc(**overrides: Any) -> dict:
    """The status document of a supervisor with no children, made by status.document."""
    config = {"transfers": "8080-198.18.0.3:8080", "intercepts": ["198.18.0.4"], "interfaces": ["eth0"],
              "workers": 1, "filter": "tcp port 8080", "source": "command line"}
    doc = document(Snapshot(time=time.time(), pid=1, uptime=5.0, stopping=False, rows=[], config=config,
                            runtime={"paused": False, "sample_rate": 1.0, "log_level": "info", "seq": 0},
                            bad_frames={"control": 0, "stats": 0}))
    doc.update(overrides)
    return doc


def test_the_status_document_follows_its_schema():
    doc = status_doc()
    assert check(doc) == [] and doc["state"] == "running"
    assert doc["supervisor"]["bad_frames"] == {"control": 0, "stats": 0}


def test_strings_from_the_wire_are_printed_with_non_printables_escaped():
    doc = status_doc(intercepts={"0badc0de" + ESC: {"pid": ESC, "filter": ESC, "age": ESC,
                                                   "counters": {"captured": ESC, ESC: 1}}})
    doc["config"]["transfers"] = "8080-T:8080\r\x9b31m"
    text = format_status(doc)
    for raw in ("\x1b", "\x07", "\r", "\x9b"):
        assert raw not in text
    line = next(x for x in text.splitlines() if x.startswith("interceptd"))
    assert "pid \\x1b]0;owned\\x07\\x1b[2J:" in line and "captured \\x1b]0;owned" in line
    assert "8080-T:8080\\r\\x9b31m" in text


def test_printable_keeps_plain_text_and_bounds_length():
    assert printable("tcp and src host 198.18.0.3 — é") == "tcp and src host 198.18.0.3 — é"
    assert printable(42) == "42" and printable(None) == "None"
    assert printable("\u202eevil") == "\\u202eevil"                  # a bidi override is a format char
    assert len(printable("x" * 10_000)) < 400


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict:
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert check(doc, NO_ANSWER) == [] and set(doc) == set(NO_ANSWER)
    return doc


def test_status_json_without_a_daemon_prints_not_running_and_exits_3(tmp_path, capsys):
    assert main(["--run-dir", str(tmp_path), "status", "--json"]) == LSB_NOT_RUNNING
    doc = _json_out(capsys)
    assert doc["state"] == "not running" and doc["run_dir"] == str(tmp_path)


def test_status_json_when_nobody_answers_prints_unknown_and_exits_4(tmp_path, capsys):
    ctx = zmq.Context()
    silent = ctx.socket(zmq.ROUTER)                   # takes the request, never answers
    silent.bind(wire.control_endpoint(str(tmp_path)))
    try:
        assert main(["--run-dir", str(tmp_path), "--timeout", "0.2", "status", "--json"]) == LSB_UNKNOWN
    finally:
        silent.close(linger=0)
        ctx.term()
    doc = _json_out(capsys)
    assert doc["state"] == "unknown" and "0.2" in doc["reason"]


def _answer_once(sock: zmq.Socket, body: bytes) -> None:
    identity, empty, _request = sock.recv_multipart()
    sock.send_multipart([identity, empty, body])


@pytest.mark.parametrize("body, state", [
    (b"\x01\x04{\"id\": 1" + b"1" * 5000 + b"}", "EPROTO"),        # a garbled reply: an error, not a crash
    (wire.encode_json(wire.KIND_CONTROL, {"id": "x", "status": "error", "error": ESC, "errno": "E"}), "E"),
])
def test_status_with_a_bad_or_error_reply_is_unknown(tmp_path, capsys, body, state):
    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    server.bind(wire.control_endpoint(str(tmp_path)))
    answering = threading.Thread(target=_answer_once, args=(server, body))
    answering.start()
    try:
        assert main(["--run-dir", str(tmp_path), "status", "--json"]) == LSB_UNKNOWN
    finally:
        answering.join(5)
        server.close(linger=0)
        ctx.term()
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["state"] == "unknown" and state in doc["reason"] and "\x1b" not in captured.err + captured.out


def test_the_control_client_refuses_a_reply_larger_than_any_json_frame(tmp_path):
    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    server.bind(wire.control_endpoint(str(tmp_path)))
    huge = bytes([wire.VERSION, wire.KIND_CONTROL]) + b" " * wire.MAX_JSON_MESSAGE
    answering = threading.Thread(target=_answer_once, args=(server, huge))
    answering.start()
    try:
        # ZMQ_MAXMSGSIZE: the frame is never taken in (the connection is dropped), so no reply
        assert call(str(tmp_path), "status", timeout=0.5) is None
    finally:
        answering.join(5)
        server.close(linger=0)
        ctx.term()


def test_a_runtime_change_is_applied_once_every_running_child_echoes_its_number():
    from appliance.tcpcopyctl.cli import settings_applied
    doc = {"children": [{"state": "running", "settings_seq": 3}, {"state": "running", "settings_seq": 2},
                        {"state": "backoff", "settings_seq": None}]}
    assert not settings_applied(doc, 3)                 # one running child has not applied it yet
    doc["children"][1]["settings_seq"] = 3
    assert settings_applied(doc, 3)                     # a child in backoff gets it when it starts
    doc["children"][0]["settings_seq"] = None           # a child that never said
    assert not settings_applied(doc, 3)


def test_status_names_the_replays_repairs_and_give_ups():
    doc = status_doc()
    doc["totals"]["rewrite"] = {"port_reuse_moves": 7, "target_stale_resets": 2, "closes_forced": 1,
                                "midstream_refused": 3, "chunks_coalesced": 0}
    text = format_status(doc)
    assert "repairs: target_stale_resets 2, port_reuse_moves 7" in text      # in EngineCounters' order
    assert "closes_forced 1" in text and "midstream_refused 3" in text and "chunks_coalesced" not in text


def test_diff_prints_the_groups_and_status_prints_one_compare_line():
    from appliance.tcpcopyctl.cli import format_diff
    from appliance.tcpcopyd.status import differences_of
    from tests.unit.tcpcopyd.test_handlers import _compare_rows
    rows = _compare_rows()
    text = format_diff(differences_of(rows, 10))
    first, _, header, group = text.splitlines()[:4]
    assert first.startswith("compare: 4 answers compared, 2 equal (50.0 %); different: status 2")
    assert "METHOD" in header and group.split()[:3] == ["2", "GET", "/x"] and "200x2" not in group
    assert "500" in group
    doc = status_doc()
    doc["totals"]["rewrite"]["compare"] = {"compared": 4, "equal": 2, "different_status": 2}
    assert any(line.startswith("compare: 4 answers compared") for line in format_status(doc).splitlines())
    assert format_diff({"groups": [], "counters": {}}).endswith("no differences")
