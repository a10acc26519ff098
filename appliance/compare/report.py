"""What users see of compare mode: differences grouped by request, latency histograms, JSON lines.

Plain data, no I/O; runs where the verdicts are made (tcpcopyd's rewrite workers), and `merge`
folds the documents of several workers into one (the supervisor, for `tcpcopyctl diff`).

Grouping key: (method, path) of the request for HTTP (path without query string), ("?", "?") for
an HTTP answer whose request line is unknown, ("TCP", ":<online server port>") for other protocols.
At most `max_groups` groups are kept; differences of further keys count in `overflow`.

Histograms hold every compared pair's latencies (not only the differing ones), seconds, with the
fixed upper bounds LATENCY_BUCKETS (Prometheus style: `cumulative()` gives the `le` series).

JSON lines (`to_json_line`): one object per differing pair, ASCII-only, at most `max_bytes`
characters. Each side's head is shown as `head` with `head_encoding` "text" when every byte is
printable ASCII, TAB, CR or LF (the usual HTTP head), else "base64"; heads are cut, both to the
same number of bytes, until the line fits (`head_shown` vs `head_len` tells).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.compare.verdict import Comparison, Diff, SideResult

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
KIND_NAMES = (("status", Diff.STATUS), ("size", Diff.SIZE), ("body", Diff.BODY), ("headers", Diff.HEADERS),
              ("latency", Diff.LATENCY), ("misaligned", Diff.MISALIGNED))
OTHER = "other"
MIN_LINE = 1024
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


def kind_names(diff: Diff) -> list[str]:
    return [name for name, flag in KIND_NAMES if diff & flag]


@dataclass(slots=True)
class Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf), their total and sum in seconds."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: int = 0
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        i = 0
        while i < len(LATENCY_BUCKETS) and seconds > LATENCY_BUCKETS[i]:
            i += 1
        self.counts[i] += 1
        self.total += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[float, int]]:
        out: list[tuple[float, int]] = []
        running = 0
        for le, n in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            out.append((le, running))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": list(LATENCY_BUCKETS), "counts": list(self.counts), "total": self.total,
                "sum": self.sum}

    def merge(self, doc: Mapping[str, Any]) -> None:
        """Add another histogram's `to_dict`; one with other buckets is refused (ValueError)."""
        if list(doc.get("buckets", ())) != list(LATENCY_BUCKETS) or len(doc["counts"]) != len(self.counts):
            raise ValueError("histogram with other buckets")
        self.counts = [a + int(b) for a, b in zip(self.counts, doc["counts"], strict=True)]
        self.total += int(doc["total"])
        self.sum += float(doc["sum"])


@dataclass(slots=True)
class _Latency:
    n: int = 0
    sum_ns: int = 0
    max_ns: int = 0

    def add(self, ns: int | None) -> None:
        if ns is not None:
            self.n += 1
            self.sum_ns += ns
            self.max_ns = max(self.max_ns, ns)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean_ms": round(self.sum_ns / self.n / 1e6, 3) if self.n else None,
                "max_ms": round(self.max_ns / 1e6, 3) if self.n else None}


@dataclass(slots=True)
class Group:
    """The differing pairs of one (method, path): how many, of which kinds, example status pairs
    ("200->500": count, at most `max_examples` distinct, the rest under "other"), the last sizes."""

    method: str
    path: str
    count: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    last_sizes: tuple[int, int] = (0, 0)
    online_latency: _Latency = field(default_factory=_Latency)
    target_latency: _Latency = field(default_factory=_Latency)

    def add(self, c: Comparison, max_examples: int) -> None:
        self.count += 1
        for name in kind_names(c.diff):
            self.kinds[name] = self.kinds.get(name, 0) + 1
        self._status(f"{_status(c.online)}->{_status(c.target)}", 1, max_examples)
        self.last_sizes = (c.online.size, c.target.size)
        self.online_latency.add(c.online.latency_ns)
        self.target_latency.add(c.target.latency_ns)

    def _status(self, key: str, n: int, max_examples: int) -> None:
        if key not in self.statuses and len(self.statuses) >= max_examples:
            key = OTHER
        self.statuses[key] = self.statuses.get(key, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "count": self.count, "kinds": dict(self.kinds),
                "statuses": dict(self.statuses), "sizes": list(self.last_sizes),
                "online_latency": self.online_latency.to_dict(),
                "target_latency": self.target_latency.to_dict()}


def _status(side: SideResult) -> str:
    return "-" if side.status is None else str(side.status)


def group_key(c: Comparison) -> tuple[str, str]:
    if c.method is not None and c.path is not None:
        return c.method, c.path
    return ("?", "?") if c.http else ("TCP", f":{c.server_port}")


class DiffReport:
    """Accumulates every Comparison: all of them into the latency histograms, the differing ones
    (misaligned included) into their group."""

    def __init__(self, max_groups: int = 1000, max_examples: int = 4) -> None:
        self.max_groups = max_groups
        self.max_examples = max_examples
        self.groups: dict[tuple[str, str], Group] = {}
        self.overflow = 0
        self.online_latency = Histogram()
        self.target_latency = Histogram()

    def add(self, c: Comparison) -> None:
        if not c.diff & Diff.MISALIGNED:
            if c.online.latency_ns is not None:
                self.online_latency.observe(c.online.latency_ns / 1e9)
            if c.target.latency_ns is not None:
                self.target_latency.observe(c.target.latency_ns / 1e9)
        if c.diff == Diff.NONE:
            return
        group = self._group(group_key(c), 1)
        if group is not None:
            group.add(c, self.max_examples)

    def _group(self, key: tuple[str, str], count: int) -> Group | None:
        """The group of `key`, None when max_groups are taken (its `count` differences go to overflow)."""
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= self.max_groups:
                self.overflow += count
                return None
            group = self.groups[key] = Group(*key)
        return group

    def top(self, n: int) -> list[Group]:
        """The n groups with the most differences; ties by method, then path."""
        return sorted(self.groups.values(), key=lambda g: (-g.count, g.method, g.path))[:max(0, n)]

    def to_dict(self, top: int = 50) -> dict[str, Any]:
        return {"groups": [g.to_dict() for g in self.top(top)], "group_count": len(self.groups),
                "overflow": self.overflow, "online_latency": self.online_latency.to_dict(),
                "target_latency": self.target_latency.to_dict()}

    def merge(self, doc: Mapping[str, Any]) -> None:
        """Fold another report's `to_dict` into this one (the supervisor, one document per worker).
        Means and maxima merge to within rounding; a group's statuses keep the bound. A document of
        another shape raises ValueError (what was merged before the bad part stays)."""
        try:
            self._merge(doc)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a diff report document: {exc!r}") from None

    def _merge(self, doc: Mapping[str, Any]) -> None:
        for g in doc.get("groups", ()):
            group = self._group((str(g["method"]), str(g["path"])), int(g["count"]))
            if group is None:
                continue
            group.count += int(g["count"])
            for name, n in g["kinds"].items():
                group.kinds[name] = group.kinds.get(name, 0) + int(n)
            for key, n in g["statuses"].items():
                group._status(str(key), int(n), self.max_examples)
            group.last_sizes = (int(g["sizes"][0]), int(g["sizes"][1]))
            for mine, theirs in ((group.online_latency, g["online_latency"]),
                                 (group.target_latency, g["target_latency"])):
                if theirs["n"]:
                    mine.n += int(theirs["n"])
                    mine.sum_ns += round(float(theirs["mean_ms"]) * 1e6 * int(theirs["n"]))
                    mine.max_ns = max(mine.max_ns, round(float(theirs["max_ms"]) * 1e6))
        self.overflow += int(doc.get("overflow", 0))
        self.online_latency.merge(doc["online_latency"])
        self.target_latency.merge(doc["target_latency"])


def merge_reports(docs: Iterable[Mapping[str, Any]], top: int = 50) -> dict[str, Any]:
    report = DiffReport()
    for doc in docs:
        report.merge(doc)
    return report.to_dict(top)


def _head(head: bytes, keep: int) -> dict[str, Any]:
    shown = head[:keep]
    text = all(b in _PRINTABLE for b in shown)
    return {"head_encoding": "text" if text else "base64",
            "head": shown.decode("ascii") if text else base64.b64encode(shown).decode("ascii"),
            "head_shown": len(shown), "head_len": len(head)}


def _side_dict(side: SideResult, keep: int) -> dict[str, Any]:
    return {"status": side.status, "size": side.size, "length": side.length,
            "content_type": None if side.content_type is None else side.content_type[:128],
            "latency_ms": None if side.latency_ns is None else round(side.latency_ns / 1e6, 3),
            "incomplete": side.incomplete, **_head(side.head, keep)}


def to_json_line(c: Comparison, *, max_bytes: int = 4096,
                 extra: Mapping[str, str | int | float | None] | None = None) -> str:
    """One line (without its newline) for the differences file; ASCII, at most max_bytes (>= MIN_LINE)
    characters. `extra`: the caller's fields (session, time), strings cut to 256 characters."""
    max_bytes = max(max_bytes, MIN_LINE)
    base: dict[str, Any] = {k: v[:256] if isinstance(v, str) else v for k, v in (extra or {}).items()}
    base.update({"index": c.index, "request_offset": c.request_offset, "diff": kind_names(c.diff),
                 "http": c.http, "method": c.method, "path": c.path, "server_port": c.server_port,
                 "headers": [h[:64] for h in c.header_diffs[:16]], "uncomparable": c.uncomparable})

    def line(keep: int) -> str:
        sides = {"online": _side_dict(c.online, keep), "target": _side_dict(c.target, keep)}
        return json.dumps({**base, **sides}, separators=(",", ":"))

    keep = max(len(c.online.head), len(c.target.head))
    out = line(keep)
    if len(out) <= max_bytes:
        return out
    lo, hi = 0, keep                 # the longest head cut that fits: binary search, both heads alike
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(line(mid)) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    out = line(lo)
    if len(out) <= max_bytes:
        return out
    # even without heads too long (the caller's extra fields): the bare verdict
    return json.dumps({"index": c.index, "diff": kind_names(c.diff), "method": c.method, "path": c.path,
                       "cut": True}, separators=(",", ":"))
