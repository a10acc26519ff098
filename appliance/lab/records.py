"""Read httpservice recordings and compare what the online server and the target server received.

A session is named by its client "ip:port" (the peer). TCPCopy keeps the client address when it
replays to the target, so the same peer names the same session on both servers. When client ports are
reused, one peer names several sessions; compare() then matches them by content, not by position.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def _read(path: str | Path, include_open: bool) -> Iterator[Record]:
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
            yield record


def load_records(path: str | Path, include_open: bool = False) -> dict[str, Record]:
    """Records of one recording file by peer; the last line of a peer wins.

    Lines marked "open": true (SIGUSR1 snapshots and connections still open at shutdown) are skipped
    unless include_open. Blank lines and lines that are not JSON objects (a torn final line) are skipped.
    Raises FileNotFoundError when the file does not exist.
    """
    return {record["peer"]: record for record in _read(path, include_open)}


def load_sessions(path: str | Path, include_open: bool = False) -> dict[str, list[Record]]:
    """Every connection of a recording, grouped by peer and ordered by when it opened.

    A connection is (peer, opened); its last line wins, so a closing line replaces earlier snapshots.
    Same skipping rules as load_records().
    """
    connections: dict[tuple[str, Any], Record] = {}
    for record in _read(path, include_open):
        connections[(record["peer"], record.get("opened"))] = record
    sessions: dict[str, list[Record]] = defaultdict(list)
    for record in connections.values():
        sessions[record["peer"]].append(record)
    for group in sessions.values():
        group.sort(key=lambda r: r.get("opened") or 0.0)
    return dict(sessions)


@dataclass
class Comparison:
    """How completely the target received what the online server received, session by session.

    A session is one connection. identical counts online sessions for which the target recorded a session
    of the same peer with the same byte count and sha256; mismatched lists online sessions whose peer has a
    target session left over that differs; missing lists online sessions with no target session left;
    extra lists target sessions left over beyond those. Sessions are named "ip:port", or "ip:port#n" (n-th
    to open) when a peer had several. completeness_pct is identical / sessions_online * 100, and 0.0 when
    the online server recorded nothing (nothing to compare is not success).
    """

    sessions_online: int
    sessions_target: int
    identical: int
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    requests_online: int = 0
    requests_target: int = 0
    moved: int = 0         # of the identical ones, replayed from another port of the same client

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


def _name(peer: str, index: int, count: int) -> str:
    return peer if count == 1 else f"{peer}#{index}"


def compare_sessions(online: dict[str, list[Record]], target: dict[str, list[Record]]) -> Comparison:
    """Compare two peer -> sessions maps (as returned by load_sessions).

    A session first matches one of its own peer on the target; one left over may match a session of
    another port of the same client address (tcpcopyd replays a connection from a spare port when the
    client reused its port while the previous session was still open on the target): `moved`."""
    identical = moved = 0
    mismatched: list[str] = []
    missing: list[str] = []
    extra: list[str] = []
    leftover_target = {peer: Counter((r.get("sha256"), r.get("bytes")) for r in sessions)
                       for peer, sessions in target.items()}
    unmatched_online: dict[str, list[tuple[str, tuple[Any, Any]]]] = {}
    for peer, sessions in online.items():
        theirs = leftover_target.setdefault(peer, Counter())
        for index, record in enumerate(sessions, start=1):
            key = (record.get("sha256"), record.get("bytes"))
            if theirs[key] > 0:
                theirs[key] -= 1
                identical += 1
            else:
                unmatched_online.setdefault(peer, []).append((_name(peer, index, len(sessions)), key))
    by_address: dict[tuple[str, Any], list[Counter]] = defaultdict(list)
    for peer, left in leftover_target.items():
        for key in left:
            by_address[(peer.rpartition(":")[0], key)].append(left)
    for peer, names in unmatched_online.items():
        still: list[tuple[str, tuple[Any, Any]]] = []
        for name, key in names:
            pool = next((c for c in by_address.get((peer.rpartition(":")[0], key), ()) if c[key] > 0), None)
            if pool is not None:
                pool[key] -= 1
                identical += 1
                moved += 1
            else:
                still.append((name, key))
        unmatched_online[peer] = still
    for peer in sorted(set(online) | set(target)):
        names = [name for name, _ in unmatched_online.get(peer, [])]
        leftover = sum(leftover_target.get(peer, Counter()).values())
        mismatched.extend(names[:leftover])
        missing.extend(names[leftover:])
        if peer in online:
            extra.extend(f"{peer}#extra{i}" for i in range(1, leftover - len(names) + 1))
        else:
            extra.extend(_name(peer, i, leftover) for i in range(1, leftover + 1))
    return Comparison(
        sessions_online=sum(len(group) for group in online.values()),
        sessions_target=sum(len(group) for group in target.values()),
        identical=identical,
        moved=moved,
        mismatched=sorted(mismatched),
        missing=sorted(missing),
        extra=sorted(extra),
        requests_online=sum(int(r.get("requests", 0)) for group in online.values() for r in group),
        requests_target=sum(int(r.get("requests", 0)) for group in target.values() for r in group),
    )


def compare_records(online: dict[str, Record], target: dict[str, Record]) -> Comparison:
    """Compare two peer -> record maps (as returned by load_records): one session per peer."""
    return compare_sessions({p: [r] for p, r in online.items()}, {p: [r] for p, r in target.items()})


def compare(online_path: str | Path, target_path: str | Path, include_open: bool = False) -> Comparison:
    """Compare the recording files of the online and the target httpservice, every connection counted."""
    return compare_sessions(
        load_sessions(online_path, include_open=include_open),
        load_sessions(target_path, include_open=include_open),
    )


def session_digests(path: str | Path, with_peer: bool = True) -> Counter:
    """Every closed session's (peer, sha256), or sha256 alone, with multiplicity (ports may repeat)."""
    return Counter((rec["peer"], rec["sha256"]) if with_peer else rec["sha256"]
                   for rec in _read(path, include_open=False) if "sha256" in rec)
