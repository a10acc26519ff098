"""Offline replay (`tcpcopyd --offline FILE...`): checking the files first, and the final report.

Runs in tcpcopyd's main process: before the supervisor starts (scan) and after it stopped (report).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.control import child_rows, totals_of
from appliance.pcapfile import FileSummary, scan

if TYPE_CHECKING:
    from appliance.supervisor import Supervisor


def check_files(paths: tuple[str, ...]) -> list[FileSummary]:
    """Scan every file completely; PcapError (file and byte offset) on the first bad one."""
    return [scan(p) for p in paths]


def report(sup: Supervisor, files: list[FileSummary]) -> str:
    rows = child_rows(sup, 0.0)
    t = totals_of(rows)
    reader, rew = t["reader"], t["rewrite"]
    span = max((f.last_ns for f in files), default=0) - min((f.first_ns for f in files), default=0)
    took = reader.get("replay_ms", 0) / 1000
    speed = sup.config.speed
    requested = "as fast as possible" if speed == 0 else f"{speed:g} x original ({span / 1e9 / speed:.2f} s)"
    packets = sum(f.packets for f in files)
    reset = rew.get("sessions_reset_by_target", 0) + rew.get("sessions_timed_out", 0) + \
        rew.get("handshake_timeouts", 0) + rew.get("sessions_lost_in_restarts", 0)
    whole = (sup.drained_at - sup.reader_started_at) if sup.drained_at and sup.reader_started_at else None
    lines = [
        f"offline replay of {len(files)} file(s): {packets:,} packets over {span / 1e9:.2f} s, "
        f"{reader.get('packets_kept', 0):,} for the transfers, {reader.get('client_connections', 0):,} "
        f"client connections",
        f"replayed: {rew.get('sessions_started', 0):,} sessions started, {rew.get('sessions_completed', 0):,} "
        f"completed, {reset:,} reset or timed out; {rew.get('bytes_sent', 0):,} bytes sent, "
        f"{rew.get('bytes_acked', 0):,} acknowledged by the target",
        f"timing: requested {requested}; took {took:.2f} s"
        + (f" ({packets / took:,.0f} packets/s)" if took else ""),
    ]
    if whole:
        lines.append(f"replayed in {whole:.2f} s from the reader's start to the last session done "
                     f"({packets / whole:,.0f} packets/s end to end)")
    return "\n".join(lines)
