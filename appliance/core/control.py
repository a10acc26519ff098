"""Control protocol between tcpcopyctl and the supervisor, and the command handlers.

Transport: REQ (tcpcopyctl) -> ROUTER (supervisor) on ipc://RUN_DIR/ctl, mode 0600.
Frames are wire.encode_json(KIND_CONTROL, ...)::

    request  {"id": str, "command": str, "args": {...}}
    reply    {"id": str, "status": "ok", "data": {...}}
           | {"id": str, "status": "error", "error": str, "errno": str}

Commands: status, stop, pause, resume, set {"name": "sample-rate"|"log-level", "value": ...}.
Frames are decoded by wire.decode_json (bounded: any bad input is an EPROTO reply, never an
exception), and a reply that cannot be encoded (too big) goes out as an EMSGSIZE error instead.
Handlers answer from state the supervisor already holds (its child table, each child's last
heartbeat, psutil samples); they never ask a worker, so `status` works while workers are saturated.
The status document is described, field by field, in appliance/tcpcopyd/status_schema.py.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.core import wire
from appliance.tcpcopyd.observe import add_counters
from appliance.config.keys import LOG_LEVELS

if TYPE_CHECKING:
    from appliance.tcpcopyd.supervisor import Supervisor

STATUS_SCHEMA_VERSION = 2
ROLES = ("capture", "rewrite", "reader")
MAX_ID = 64                # characters of a request id kept (and echoed in the reply)


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    command: str
    args: dict


def ok_reply(request_id: str, data: dict) -> dict:
    return {"id": request_id, "status": "ok", "data": data}


def error_reply(request_id: str, message: str, errno_name: str) -> dict:
    return {"id": request_id, "status": "error", "error": message, "errno": errno_name}


def encode_request(request: Request) -> bytes:
    return wire.encode_json(wire.KIND_CONTROL, {"id": request.id, "command": request.command,
                                                "args": request.args})


def decode_request(frame: bytes) -> tuple[Request | None, dict]:
    """(request, {}) or (None, error reply) for a frame that is not a request."""
    try:
        obj = wire.decode_json(frame, wire.KIND_CONTROL)
    except wire.WireError as exc:
        return None, error_reply("", str(exc), "EPROTO")
    raw_id = obj.get("id", "")
    valid_id = isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool)
    request_id = str(raw_id)[:MAX_ID] if valid_id else ""
    command, args = obj.get("command"), obj.get("args", {})
    if not isinstance(command, str) or not isinstance(args, dict):
        return None, error_reply(request_id, "request needs a command and args", "EINVAL")
    return Request(request_id, command, args), {}


def encode_reply(reply: dict) -> bytes:
    """Never raises: a reply too big for a frame (MAX_JSON_FRAME) becomes an error reply."""
    try:
        return wire.encode_json(wire.KIND_CONTROL, reply)
    except wire.WireError as exc:
        refusal = error_reply(str(reply.get("id", ""))[:MAX_ID], str(exc)[:200], "EMSGSIZE")
        return wire.encode_json(wire.KIND_CONTROL, refusal)


def decode_reply(frame: bytes) -> dict:
    return wire.decode_json(frame, wire.KIND_CONTROL)


# ---- the status document ----------------------------------------------------------------------
def child_rows(sup: Supervisor, now: float) -> list[dict]:
    """One row per child: life cycle from the supervisor, counters from its heartbeats."""
    rows = []
    for c in sup.children:
        beat_age = time.monotonic() - c.view.beat_at if c.alive and c.view.beat_at is not None else None
        rows.append({
            "role": c.role, "index": c.index, "pid": c.pid if c.alive else None, "state": c.life.state.value,
            "cpus": list(c.cpus), "restarts": c.life.restarts,
            "heartbeat_age": None if beat_age is None else round(beat_age, 3),
            "cpu_percent": c.view.cpu_percent, "rss_bytes": c.view.rss,
            "counters": c.view.counters(), "info": c.view.extra, "settings_seq": c.view.settings_seq,
        })
    return rows


def totals_of(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Counters summed per role; `responses` is the channel from interceptd, which every rewrite
    worker reports as its `response_channel`."""
    totals: dict[str, dict[str, Any]] = {role: {} for role in ROLES}
    for row in rows:
        add_counters(totals[row["role"]], row["counters"])
    totals["responses"] = totals["rewrite"].pop("response_channel", {})
    return totals


def funnel(rows: list[dict]) -> dict[str, Any]:
    """Where traffic goes, stage by stage; `lost_at` names the first stage that loses any."""
    t = totals_of(rows)
    cap, rew, resp = t["capture"], t["rewrite"], t["responses"]
    stages = {
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


def summary_line(rows: list[dict]) -> tuple[str, bool]:
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


def status_document(sup: Supervisor) -> dict:
    now = time.time()
    rows = child_rows(sup, now)
    first = next((r for r in rows if r["role"] == "rewrite" and r["index"] == 0), None)
    return {
        "schema": STATUS_SCHEMA_VERSION,
        "state": "running",
        "time": round(now, 3),
        "supervisor": {"pid": os.getpid(), "uptime": round(now - sup.started, 3),
                       "state": "stopping" if sup.stopping else "running",
                       "bad_frames": dict(sup.bad_frames)},
        "runtime": dict(sup.runtime),
        "config": {"transfers": sup.config.transfers, "intercepts": list(sup.config.intercepts),
                   "interfaces": list(sup.config.interfaces), "workers": sup.config.workers,
                   "filter": sup.config.bpf, "source": sup.config.source},
        "children": rows,
        "totals": totals_of(rows),
        "rates": {"window_seconds": round(sup.rates.window, 1), "per_second": sup.rates.per_second()},
        "funnel": funnel(rows),
        "intercepts": (first or {}).get("info", {}).get("intercepts", {}),
    }


# ---- handlers ---------------------------------------------------------------------------------
def handle_status(sup: Supervisor, request: Request) -> dict:
    return ok_reply(request.id, status_document(sup))


def handle_stop(sup: Supervisor, request: Request) -> dict:
    sup.request_stop()
    return ok_reply(request.id, {"stopping": True})


def handle_pause(sup: Supervisor, request: Request) -> dict:
    return ok_reply(request.id, sup.set_runtime(paused=True))


def handle_resume(sup: Supervisor, request: Request) -> dict:
    return ok_reply(request.id, sup.set_runtime(paused=False))


def handle_set(sup: Supervisor, request: Request) -> dict:
    name, value = request.args.get("name"), request.args.get("value")
    shown = _bounded_repr(value)
    if name == "sample-rate":
        rate = sample_rate_of(value)
        if rate is None:
            return error_reply(request.id, f"sample-rate {shown}: must be a number 0-1", "EINVAL")
        return ok_reply(request.id, sup.set_runtime(sample_rate=rate))
    if name == "log-level":
        if not isinstance(value, str) or value not in LOG_LEVELS:
            return error_reply(request.id, f"log-level {shown}: must be one of {', '.join(LOG_LEVELS)}",
                               "EINVAL")
        return ok_reply(request.id, sup.set_runtime(log_level=value))
    return error_reply(request.id, f"cannot set {_bounded_repr(name)} (settable: sample-rate, log-level)",
                       "EINVAL")


def _bounded_repr(value: object) -> str:
    """A client's value echoed in an error: a bounded part of it."""
    try:
        return repr(value)[:40]
    except ValueError:                          # an int beyond Python's 4,300-digit conversion limit
        return "<a number too long to show>"


def sample_rate_of(value: object) -> float | None:
    """A sample rate 0-1 from a number or a numeric string; None for anything else (including
    values that overflow a float, NaN and infinities)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, str) and len(value) > 32:
        return None
    try:
        rate = float(value)
    except (ValueError, OverflowError):
        return None
    return rate if math.isfinite(rate) and 0.0 <= rate <= 1.0 else None


COMMANDS: dict[str, Callable[[Supervisor, Request], dict]] = {
    "status": handle_status,
    "stop": handle_stop,
    "pause": handle_pause,
    "resume": handle_resume,
    "set": handle_set,
}
