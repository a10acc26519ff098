"""Offline replay (`tcpcopyd --offline FILE...`): checking the files first, and the final report.

Runs in tcpcopyd's main process: before the supervisor starts (scan) and after it stopped (report).
"""

from __future__ import annotations

import json
from typing import Any

from appliance.core.counters import NOT_COMPLETED, NOT_REPLAYED
from appliance.core.pcapfile import FileSummary, scan
from appliance.tcpcopyd.policy import OfflinePolicy
from appliance.tcpcopyd.status import funnel, totals_of

__all__ = ["NOT_COMPLETED", "NOT_REPLAYED", "check_files", "report", "report_data", "write_json"]


def check_files(paths: tuple[str, ...]) -> list[FileSummary]:
    """Scan every file completely; PcapError (file and byte offset) on the first bad one, and on
    anything that is not a regular file (exit code 65 either way)."""
    return [scan(p) for p in paths]


def report_data(rows: list[dict[str, Any]], run: OfflinePolicy, files: list[FileSummary],
                speed: float) -> dict[str, Any]:
    """Everything the report says, as numbers (also written by --report-json), from the children's
    final rows and the run's timing."""
    t = totals_of(rows)
    reader, rew = t["reader"], t["rewrite"]
    span = max((f.last_ns for f in files), default=0) - min((f.first_ns for f in files), default=0)
    last_send = max((r["counters"].get("last_send_at", 0.0) for r in rows if r["role"] == "rewrite"), default=0.0)
    whole = run.elapsed(last_send)
    return {
        "files": [f.path for f in files],
        "packets": sum(f.packets + sum(f.drops.values()) for f in files),   # pcapfile's drops too
        "file_span_s": span / 1e9,
        "packets_for_transfers": reader.get("packets_kept", 0),
        "not_replayed": {k: reader.get(k, 0) for k in NOT_REPLAYED if reader.get(k, 0)},
        "client_connections": reader.get("client_connections", 0),
        "speed": speed,
        "read_s": reader.get("replay_ms", 0) / 1000,
        "end_to_end_s": whole,
        "sessions_started": rew.get("sessions_started", 0),
        "sessions_completed": rew.get("sessions_completed", 0),
        "sessions_open_at_stop": rew.get("sessions_active", 0) if whole is None else 0,
        "not_completed": {k: rew.get(k, 0) for k in NOT_COMPLETED if rew.get(k, 0)},
        "bytes_sent": rew.get("bytes_sent", 0),
        "bytes_acked": rew.get("bytes_acked", 0),
        "funnel": funnel(rows),
        "totals": t,
    }


def report(data: dict[str, Any]) -> str:
    speed, span, took, packets = data["speed"], data["file_span_s"], data["read_s"], data["packets"]
    requested = "as fast as possible" if speed == 0 else f"{speed:g} x original ({span / speed:.2f} s)"
    lost = data["not_completed"]
    lines = [
        f"offline replay of {len(data['files'])} file(s): {packets:,} packets over {span:.2f} s, "
        f"{data['packets_for_transfers']:,} for the transfers, {data['client_connections']:,} client connections",
        f"replayed: {data['sessions_started']:,} sessions started, {data['sessions_completed']:,} completed, "
        f"{sum(lost.values()):,} reset or timed out; {data['bytes_sent']:,} bytes sent, "
        f"{data['bytes_acked']:,} acknowledged by the target",
        f"timing: requested {requested}; took {took:.2f} s" + (f" ({packets / took:,.0f} packets/s)" if took else ""),
    ]
    if data["not_replayed"]:
        lines.append("packets not replayed: " + ", ".join(f"{k} {v:,}" for k, v in data["not_replayed"].items()))
    if lost:
        lines.append("not completed: " + ", ".join(f"{k} {v:,}" for k, v in lost.items()))
    if data["funnel"].get("in_queues"):
        lines.append(f"read but never taken by a worker before the stop: {data['funnel']['in_queues']:,} packets")
    if data["sessions_open_at_stop"]:
        lines.append(f"still open when the tail ran out (--offline-tail): {data['sessions_open_at_stop']:,} sessions")
    if data["end_to_end_s"]:
        whole = data["end_to_end_s"]
        lines.append(f"replayed in {whole:.2f} s from the reader's start to the last session done "
                     f"({packets / whole:,.0f} packets/s end to end)")
    return "\n".join(lines)


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
