"""Control protocol between tcpcopyctl and the supervisor, and the command handlers.

Transport: REQ (tcpcopyctl) -> ROUTER (supervisor) on ipc://RUN_DIR/ctl, mode 0600.
Frames are wire.encode_json(KIND_CONTROL, ...)::

    request  {"id": str, "command": str, "args": {...}}
    reply    {"id": str, "status": "ok", "data": {...}}
           | {"id": str, "status": "error", "error": str, "errno": str}

Handlers answer from state the supervisor already holds (its child table and each child's
last stats frame); they never ask a worker, so `status` works while workers are saturated.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance import wire

if TYPE_CHECKING:
    from appliance.supervisor import Supervisor


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
    command, args = obj.get("command"), obj.get("args", {})
    if not isinstance(command, str) or not isinstance(args, dict):
        return None, error_reply(str(obj.get("id", "")), "request needs a command and args", "EINVAL")
    return Request(str(obj.get("id", "")), command, args), {}


def encode_reply(reply: dict) -> bytes:
    return wire.encode_json(wire.KIND_CONTROL, reply)


def decode_reply(frame: bytes) -> dict:
    return wire.decode_json(frame, wire.KIND_CONTROL)


# Counters summed over children of a role, and the loss funnel built from them.
def _sum(children: list[dict], role: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for ch in children:
        if ch["role"] != role:
            continue
        for name, value in ch.get("counters", {}).items():
            if isinstance(value, int):
                total[name] = total.get(name, 0) + value
    return total


def funnel(children: list[dict]) -> dict[str, Any]:
    cap = _sum(children, "capture")
    rew = _sum(children, "rewrite")
    resp = _sum(children, "responses")
    return {
        "captured": cap.get("captured", 0),
        "kernel_drops": cap.get("kernel_drops", 0),
        "queue_drops_capture": cap.get("queue_drops", 0),
        "handed_to_workers": rew.get("client_segments", 0),
        "sent_packets": rew.get("packets_sent", 0),
        "send_errors": sum(sum(ch.get("counters", {}).get("send_errors", {}).values())
                           for ch in children if ch["role"] == "rewrite"),
        "bytes_sent": rew.get("bytes_sent", 0),
        "bytes_acked_by_target": rew.get("bytes_acked", 0),
        "response_headers": resp.get("headers", 0),
        "response_batches_lost": resp.get("batches_lost", 0),
        "responses_unmatched": rew.get("responses_unmatched", 0),
        "sessions_started": rew.get("sessions_started", 0),
        "sessions_established": rew.get("sessions_established", 0),
        "sessions_completed": rew.get("sessions_completed", 0),
        "handshake_timeouts": rew.get("handshake_timeouts", 0),
        "capture_gaps": rew.get("capture_gaps", 0),
    }


def child_rows(sup: Supervisor, now: float) -> list[dict]:
    """One row per child: life-cycle state from the supervisor, counters from its last heartbeat."""
    children = []
    for c in sup.children:
        stats = c.last_stats
        children.append({
            "role": c.role, "index": c.index, "pid": c.pid, "state": c.state.value, "cpus": list(c.cpus),
            "restarts": c.restarts,
            "heartbeat_age": round(now - c.last_heartbeat, 3) if c.last_heartbeat else None,
            "counters": stats.get("counters", {}),
        })
    return children


def summary_line(children: list[dict]) -> tuple[str, bool]:
    """The periodic log line, and whether too few sessions got established (below 80 %)."""
    f = funnel(children)
    started = f["sessions_started"]
    weak = started >= 10 and f["sessions_established"] < 0.8 * started
    line = ("captured %(captured)d kernel_drops %(kernel_drops)d queue_drops %(queue_drops_capture)d "
            "sent %(sent_packets)d send_errors %(send_errors)d sessions %(sessions_started)d/"
            "%(sessions_established)d/%(sessions_completed)d (started/established/completed) "
            "handshake_timeouts %(handshake_timeouts)d capture_gaps %(capture_gaps)d "
            "responses %(response_headers)d lost_batches %(response_batches_lost)d") % f
    return line, weak


def handle_status(sup: Supervisor, request: Request) -> dict:
    now = time.time()
    children = child_rows(sup, now)
    totals = {role: _sum(children, role) for role in ("capture", "responses", "rewrite")}
    return ok_reply(request.id, {
        "supervisor": {"pid": os.getpid(), "uptime": round(now - sup.started, 3),
                       "state": "stopping" if sup.stopping else "running"},
        "config": {"transfers": sup.config.transfers, "intercepts": list(sup.config.intercepts),
                   "interfaces": list(sup.config.interfaces), "workers": sup.config.workers},
        "children": children, "totals": totals, "funnel": funnel(children),
    })


def handle_stop(sup: Supervisor, request: Request) -> dict:
    sup.request_stop()
    return ok_reply(request.id, {"stopping": True})


COMMANDS: dict[str, Callable[[Supervisor, Request], dict]] = {
    "status": handle_status,
    "stop": handle_stop,
}
