"""What the supervisor knows about its children, kept current so status is answered from memory.

Runs in tcpcopyd's main process. Holds each child's last heartbeat counters, the counters of its
earlier incarnations (so totals never go backwards after a restart), CPU and RSS sampled with
psutil once a second, and a 10-second window of totals for rates.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psutil

# GAUGES: levels, not totals (not summed across a child's incarnations); RATE_COUNTERS: role ->
# the totals given per-second rates. Both come from the counters records.
from appliance.core.counters import GAUGES, RATE_COUNTERS

RATE_WINDOW = 10.0


def add_counters(into: dict[str, Any], more: dict[str, Any]) -> None:
    """Sum integer counters and dicts of integer counters (send errors by errno)."""
    for name, value in more.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            into[name] = into.get(name, 0) + value
        elif isinstance(value, dict) and all(isinstance(v, int) for v in value.values()):
            sub = into.setdefault(name, {})
            if isinstance(sub, dict):
                for k, v in value.items():
                    sub[k] = sub.get(k, 0) + v


@dataclass
class ChildView:
    """The supervisor's picture of one child (all incarnations of it)."""

    last: dict[str, Any] = field(default_factory=dict)      # counters of the live incarnation
    retired: dict[str, Any] = field(default_factory=dict)   # summed counters of dead incarnations
    extra: dict[str, Any] = field(default_factory=dict)     # non-counter data from the heartbeat
    sessions_lost: int = 0
    beat_at: float | None = None                           # monotonic time of the last heartbeat
    settings_seq: int | None = None                        # the runtime settings it has applied
    cpu_percent: float | None = None
    rss: int | None = None
    _proc: psutil.Process | None = None

    def heartbeat(self, frame: dict[str, Any], now: float) -> None:
        self.beat_at = now
        seq = frame.get("settings_seq")
        self.settings_seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        counters = frame.get("counters", {})
        self.last = {k: v for k, v in counters.items() if not isinstance(v, (list, str))}
        self.extra = {k: v for k, v in counters.items() if isinstance(v, (list, str, dict))
                      and not (isinstance(v, dict) and all(isinstance(x, int) for x in v.values()))}

    def died(self) -> None:
        """The live incarnation is gone: keep its counters, count the sessions it held."""
        self.sessions_lost += int(self.last.get("sessions_active", 0))
        add_counters(self.retired, {k: v for k, v in self.last.items() if k not in GAUGES})
        self.last = {}
        self.beat_at = None
        self.settings_seq = None
        self._proc = None

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        add_counters(out, self.retired)
        add_counters(out, self.last)
        out.update({k: v for k, v in self.last.items() if isinstance(v, float)})   # gauges such as latency
        if self.sessions_lost:
            out["sessions_lost_in_restarts"] = self.sessions_lost
        return out

    def sample(self, pid: int | None) -> None:
        if pid is None:
            self.cpu_percent = self.rss = None
            return
        try:
            if self._proc is None or self._proc.pid != pid:
                self._proc = psutil.Process(pid)
                self._proc.cpu_percent(None)
            self.cpu_percent = self._proc.cpu_percent(None)
            self.rss = self._proc.memory_info().rss
        except psutil.Error:
            self._proc = None
            self.cpu_percent = self.rss = None


class Rates:
    """Per-second rates of chosen totals over the last RATE_WINDOW seconds."""

    def __init__(self) -> None:
        self._window: deque[tuple[float, dict[str, dict[str, int]]]] = deque()

    def record(self, now: float, totals: dict[str, dict[str, Any]]) -> None:
        snap = {role: {k: int(totals.get(role, {}).get(k, 0)) for k in keys} for role, keys in RATE_COUNTERS.items()}
        self._window.append((now, snap))
        while self._window and now - self._window[0][0] > RATE_WINDOW:
            self._window.popleft()

    def per_second(self) -> dict[str, dict[str, float]]:
        if len(self._window) < 2:
            return {}
        (t0, a), (t1, b) = self._window[0], self._window[-1]
        dt = max(t1 - t0, 1e-6)
        return {role: {k: round((b[role][k] - a[role][k]) / dt, 1) for k in keys}
                for role, keys in RATE_COUNTERS.items()}

    @property
    def window(self) -> float:
        return self._window[-1][0] - self._window[0][0] if len(self._window) > 1 else 0.0
