"""Read httpservice recordings and compare what the online server and the target server received.

A session is identified by its client "ip:port" (the peer). TCPCopy keeps the client address when it
replays to the target, so the same peer names the same session on both servers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def load_records(path: str | Path, include_open: bool = False) -> dict[str, Record]:
    """Records of one recording file by peer; the last line of a peer wins.

    Lines marked "open": true (SIGUSR1 snapshots and connections still open at shutdown) are skipped
    unless include_open. Blank lines and lines that are not JSON objects (a torn final line) are skipped.
    Raises FileNotFoundError when the file does not exist.
    """
    records: dict[str, Record] = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or "peer" not in record:
                continue
            if record.get("open") and not include_open:
                continue
            records[record["peer"]] = record
    return records


@dataclass
class Comparison:
    """How completely the target received what the online server received, session by session.

    identical counts sessions with the same byte count and sha256 on both sides; mismatched lists peers
    seen on both sides with different bytes; missing lists peers the target never recorded; extra lists
    peers only the target recorded. completeness_pct is identical / sessions_online * 100, and 0.0 when the
    online server recorded nothing (nothing to compare is not success).
    """

    sessions_online: int
    sessions_target: int
    identical: int
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    requests_online: int = 0
    requests_target: int = 0

    @property
    def completeness_pct(self) -> float:
        if not self.sessions_online:
            return 0.0
        return self.identical / self.sessions_online * 100.0

    def summary(self) -> str:
        parts = [
            f"{self.identical}/{self.sessions_online} sessions identical ({self.completeness_pct:.1f}%)",
            f"target sessions {self.sessions_target}",
            f"requests online {self.requests_online} target {self.requests_target}",
            f"mismatched {len(self.mismatched)}",
            f"missing {len(self.missing)}",
        ]
        if self.extra:
            parts.append(f"extra {len(self.extra)}")
        text = ", ".join(parts)
        for label, peers in (("mismatched", self.mismatched), ("missing", self.missing)):
            if peers:
                shown = ", ".join(peers[:5]) + (" ..." if len(peers) > 5 else "")
                text += f"\n  {label}: {shown}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "sessions_online": self.sessions_online, "sessions_target": self.sessions_target,
            "identical": self.identical, "completeness_pct": round(self.completeness_pct, 3),
            "requests_online": self.requests_online, "requests_target": self.requests_target,
            "mismatched": self.mismatched, "missing": self.missing, "extra": self.extra,
        }


def compare_records(online: dict[str, Record], target: dict[str, Record]) -> Comparison:
    """Compare two peer -> record maps (as returned by load_records)."""
    identical = 0
    mismatched: list[str] = []
    missing: list[str] = []
    for peer, record in online.items():
        other = target.get(peer)
        if other is None:
            missing.append(peer)
        elif other.get("sha256") == record.get("sha256") and other.get("bytes") == record.get("bytes"):
            identical += 1
        else:
            mismatched.append(peer)
    return Comparison(
        sessions_online=len(online),
        sessions_target=len(target),
        identical=identical,
        mismatched=sorted(mismatched),
        missing=sorted(missing),
        extra=sorted(peer for peer in target if peer not in online),
        requests_online=sum(int(r.get("requests", 0)) for r in online.values()),
        requests_target=sum(int(r.get("requests", 0)) for r in target.values()),
    )


def compare(online_path: str | Path, target_path: str | Path, include_open: bool = False) -> Comparison:
    """Compare the recording files of the online and the target httpservice."""
    return compare_records(
        load_records(online_path, include_open=include_open),
        load_records(target_path, include_open=include_open),
    )
