"""records.load_records and records.compare on recording files written to a temp directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance.lab.records import compare, compare_sessions, load_records, load_sessions


def record(peer: str, sha: str = "aa", size: int = 100, requests: int = 1, **extra: Any) -> dict[str, Any]:
    return {"peer": peer, "bytes": size, "sha256": sha, "requests": requests, "opened": 1.0, "closed": 2.0,
            "open": False, **extra}


def write(path: Path, *records: dict[str, Any], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_load_records_last_line_per_peer_wins_and_open_lines_are_opt_in(tmp_path: Path) -> None:
    path = write(
        tmp_path / "online.jsonl",
        record("198.18.0.1:1000", sha="old"),
        record("198.18.0.1:1000", sha="new", requests=3),
        record("198.18.0.1:2000", open=True, closed=None),
        tail='\n{"peer": "198.18.0.1:3000", "bytes": 1',
    )
    closed = load_records(path)
    assert list(closed) == ["198.18.0.1:1000"]
    assert closed["198.18.0.1:1000"]["sha256"] == "new"
    assert closed["198.18.0.1:1000"]["requests"] == 3
    with_open = load_records(path, include_open=True)
    assert set(with_open) == {"198.18.0.1:1000", "198.18.0.1:2000"}


def test_load_records_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "absent.jsonl")


def test_compare_sorts_sessions_into_identical_mismatched_missing_and_extra(tmp_path: Path) -> None:
    online = write(
        tmp_path / "online.jsonl",
        record("c:1", sha="s1", requests=2),
        record("c:2", sha="s2", requests=3),
        record("c:3", sha="s3", size=100),
        record("c:4", sha="s4"),
    )
    target = write(
        tmp_path / "target.jsonl",
        record("c:1", sha="s1", requests=2),
        record("c:2", sha="s2", requests=3),
        record("c:3", sha="s3", size=99),
        record("c:9", sha="s9"),
    )
    result = compare(online, target)
    assert (result.sessions_online, result.sessions_target, result.identical) == (4, 4, 2)
    assert result.mismatched == ["c:3"]
    assert result.missing == ["c:4"]
    assert result.extra == ["c:9"]
    assert (result.requests_online, result.requests_target) == (7, 7)
    assert result.completeness_pct == pytest.approx(50.0)
    text = result.summary()
    assert "2/4 sessions identical (50.0%)" in text
    assert "missing: c:4" in text and "mismatched: c:3" in text
    assert result.as_dict()["completeness_pct"] == 50.0


def test_compare_identical_recordings_is_complete(tmp_path: Path) -> None:
    sessions = [record(f"198.18.0.1:{port}", sha=f"h{port}", requests=5) for port in range(40000, 40010)]
    result = compare(write(tmp_path / "a.jsonl", *sessions), write(tmp_path / "b.jsonl", *reversed(sessions)))
    assert result.identical == result.sessions_online == 10
    assert result.completeness_pct == 100.0
    assert result.mismatched == result.missing == result.extra == []


def test_compare_ignores_open_snapshots_unless_asked(tmp_path: Path) -> None:
    online = write(tmp_path / "online.jsonl", record("c:1", sha="final"))
    target = write(
        tmp_path / "target.jsonl",
        record("c:1", sha="partial", open=True, closed=None),
    )
    assert compare(online, target).missing == ["c:1"]
    assert compare(online, target, include_open=True).mismatched == ["c:1"]


def test_empty_online_recording_is_not_complete(tmp_path: Path) -> None:
    result = compare(write(tmp_path / "a.jsonl"), write(tmp_path / "b.jsonl", record("c:1")))
    assert result.sessions_online == 0
    assert result.completeness_pct == 0.0
    assert result.extra == ["c:1"]


def test_load_sessions_keeps_every_connection_and_replaces_snapshots(tmp_path: Path) -> None:
    path = write(
        tmp_path / "online.jsonl",
        record("c:1", sha="first", opened=10.0),
        record("c:1", sha="snap", opened=20.0, open=True, closed=None),
        record("c:1", sha="second", opened=20.0),
        record("c:2", opened=15.0),
    )
    sessions = load_sessions(path, include_open=True)
    assert [r["sha256"] for r in sessions["c:1"]] == ["first", "second"]
    assert len(sessions["c:2"]) == 1


def test_compare_counts_every_session_when_client_ports_are_reused(tmp_path: Path) -> None:
    online = write(
        tmp_path / "online.jsonl",
        record("c:1", sha="a", opened=1.0), record("c:1", sha="b", opened=2.0),
        record("c:1", sha="c", opened=3.0), record("c:2", sha="d", opened=1.5),
    )
    target = write(
        tmp_path / "target.jsonl",
        record("c:1", sha="a", opened=5.0), record("c:1", sha="c", opened=7.0),
        record("c:2", sha="d", opened=6.0),
    )
    result = compare(online, target)
    assert (result.sessions_online, result.sessions_target, result.identical) == (4, 3, 3)
    assert result.missing == ["c:1#2"]
    assert result.mismatched == [] and result.extra == []
    assert result.requests_online == 4 and result.requests_target == 3
    assert result.completeness_pct == pytest.approx(75.0)


def test_a_session_replayed_from_another_port_of_the_same_client_counts_as_identical():
    """tcpcopyd moves a connection to a spare port when the client reused its port too soon."""
    online = {"198.18.0.1:40000": [{"sha256": "a", "bytes": 5, "opened": 1.0},
                                   {"sha256": "b", "bytes": 7, "opened": 2.0}]}
    target = {"198.18.0.1:40000": [{"sha256": "a", "bytes": 5}], "198.18.0.1:1025": [{"sha256": "b", "bytes": 7}],
              "198.18.0.9:1027": [{"sha256": "c", "bytes": 9}]}
    c = compare_sessions(online, target)
    assert (c.identical, c.moved, c.missing, c.mismatched) == (2, 1, [], [])
    assert c.extra == ["198.18.0.9:1027"]                        # another address's session is not borrowed
    other = compare_sessions(online, {"198.18.0.2:1025": [{"sha256": "b", "bytes": 7}]})
    assert (other.identical, other.moved) == (0, 0)
