"""The status arithmetic: totals, the loss funnel, the summary line and the status document.

Pure functions of a `Snapshot` (what the supervisor holds at one instant); no clock, no process,
no socket is read here, so every figure `tcpcopyctl status`, the metrics and the offline report
show can be computed in a test from plain rows. Runs in tcpcopyd's supervisor (and in the main
process after an offline replay, for its report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.compare.report import DiffReport
from appliance.core.counters import in_group
from appliance.tcpcopyd.observe import add_counters

STATUS_SCHEMA_VERSION = 2
ROLES = ("capture", "rewrite", "reader")
SEEN_BY_EVERY_WORKER = frozenset(in_group("responses", "shared"))   # over workers: the largest


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the supervisor knows at one instant; `rows` are the children (see child_row)."""

    time: float                                   # epoch seconds
    pid: int
    uptime: float
    stopping: bool
    rows: list[dict[str, Any]]
    runtime: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    bad_frames: dict[str, int] = field(default_factory=dict)
    rates_window: float = 0.0
    rates: dict[str, dict[str, float]] = field(default_factory=dict)


def totals_of(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Counters summed per role; `responses` is the channel from interceptd, which every rewrite
    worker reports as its `response_channel`."""
    totals: dict[str, dict[str, Any]] = {role: {} for role in ROLES}
    channel: dict[str, Any] = {}
    for row in rows:
        counters = dict(row["counters"])
        own = counters.pop("response_channel", None)
        add_counters(totals[row["role"]], counters)
        if isinstance(own, dict):
            for name in SEEN_BY_EVERY_WORKER & own.keys():
                channel[name] = max(channel.get(name, 0), own[name])
            add_counters(channel, {k: v for k, v in own.items() if k not in SEEN_BY_EVERY_WORKER})
    totals["responses"] = channel
    return totals


def intercepts_of(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The interceptds the rewrite workers hear, merged: every worker subscribes to every
    interceptd, so each instance's freshest report (smallest age) is kept, whichever worker had it;
    while one worker restarts, the others still show them."""
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["role"] != "rewrite":
            continue
        heard = row.get("info", {}).get("intercepts", {})
        if not isinstance(heard, dict):
            continue
        for instance, report in heard.items():
            if not isinstance(report, dict):
                continue
            age = report.get("age")
            known = merged.get(instance)
            if known is None or (_number(age) < _number(known.get("age"))):
                merged[instance] = report
    return merged


def differences_of(rows: list[dict[str, Any]], top: int = 50) -> dict[str, Any]:
    """The rewrite workers' comparison reports merged (compare mode): the differing answers grouped
    by request, the largest groups first, and both sides' latency histograms. A worker's report
    that does not merge (another version) is skipped and counted in `reports_refused`."""
    report, refused = DiffReport(), 0
    for row in rows:
        doc = row.get("info", {}).get("compare_report") if row["role"] == "rewrite" else None
        if isinstance(doc, dict) and doc:
            try:
                report.merge(doc)
            except ValueError:
                refused += 1
    merged = report.to_dict(top)
    merged["reports_refused"] = refused
    merged["counters"] = totals_of(rows)["rewrite"].get("compare", {})
    return merged


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("inf")


def funnel(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where traffic goes, stage by stage; `lost_at` names the first stage that loses any."""
    t = totals_of(rows)
    cap, rew, resp = t["capture"], t["rewrite"], t["responses"]
    stages: dict[str, Any] = {
        "captured": cap.get("captured", 0) + t["reader"].get("packets_kept", 0),
        "kernel_drops": cap.get("kernel_drops", 0),
        "queue_drops_capture": cap.get("queue_drops", 0),
        "handed_to_workers": rew.get("segments_received", 0),
        "sent_packets": rew.get("packets_sent", 0),
        "send_errors": sum(rew.get("send_errors", {}).values()),
        "bytes_sent": rew.get("bytes_sent", 0),
        "bytes_acked_by_target": rew.get("bytes_acked", 0),
        "response_headers": resp.get("headers", 0),
        "response_batches_lost": resp.get("batches_lost", 0),
        "responses_unmatched": rew.get("responses_unmatched", 0),
        "sessions_started": rew.get("sessions_started", 0),
        "sessions_established": rew.get("sessions_established", 0),
        "sessions_completed": rew.get("sessions_completed", 0),
        "sessions_lost_in_restarts": rew.get("sessions_lost_in_restarts", 0),
        "handshake_timeouts": rew.get("handshake_timeouts", 0),
        "capture_gaps": rew.get("capture_gaps", 0),
        "sessions_shed": rew.get("sessions_shed", 0),
    }
    in_flight = stages["captured"] - stages["queue_drops_capture"] - stages["handed_to_workers"]
    stages["in_queues"] = max(0, in_flight)
    checks = [("capture (kernel ring)", stages["kernel_drops"]),
              ("capture -> worker queue", stages["queue_drops_capture"]),
              ("worker -> target (send errors)", stages["send_errors"]),
              ("target handshake", stages["handshake_timeouts"]),
              ("captured stream (gaps)", stages["capture_gaps"]),
              ("intercept -> tcpcopyd (response batches)", stages["response_batches_lost"]),
              ("worker restarts", stages["sessions_lost_in_restarts"]),
              ("worker overload (new sessions shed)", stages["sessions_shed"])]
    stages["lost_at"] = [name for name, lost in checks if lost]
    return stages


def summary_line(rows: list[dict[str, Any]]) -> tuple[str, bool]:
    """The periodic log line, and whether too few sessions got established (below 80 %)."""
    f = funnel(rows)
    started = f["sessions_started"]
    weak = started >= 10 and f["sessions_established"] < 0.8 * started
    line = ("captured {captured} kernel_drops {kernel_drops} queue_drops {queue_drops_capture} "
            "sent {sent_packets} send_errors {send_errors} sessions {sessions_started}/"
            "{sessions_established}/{sessions_completed} (started/established/completed) "
            "handshake_timeouts {handshake_timeouts} capture_gaps {capture_gaps} "
            "responses {response_headers} lost_batches {response_batches_lost}").format_map(f)
    return line, weak


def document(snap: Snapshot) -> dict[str, Any]:
    """The status document (schema: appliance/tcpcopyd/status_schema.py)."""
    return {
        "schema": STATUS_SCHEMA_VERSION,
        "state": "running",
        "time": round(snap.time, 3),
        "supervisor": {"pid": snap.pid, "uptime": round(snap.uptime, 3),
                       "state": "stopping" if snap.stopping else "running",
                       "bad_frames": dict(snap.bad_frames)},
        "runtime": dict(snap.runtime),
        "config": dict(snap.config),
        "children": snap.rows,
        "totals": totals_of(snap.rows),
        "rates": {"window_seconds": round(snap.rates_window, 1), "per_second": snap.rates},
        "funnel": funnel(snap.rows),
        "intercepts": intercepts_of(snap.rows),
    }
