"""The control protocol between tcpcopyctl and tcpcopyd's supervisor: frames and replies.

Transport: REQ (tcpcopyctl) -> ROUTER (supervisor) on ipc://RUN_DIR/ctl, mode 0600.
Frames are wire.encode_json(KIND_CONTROL, ...)::

    request  {"id": str, "command": str, "args": {...}}
    reply    {"id": str, "status": "ok", "data": {...}}
           | {"id": str, "status": "error", "error": str, "errno": str}

Commands: status, diff {"top": N}, stop, pause, resume, set {"name": "sample-rate"|"log-level", "value": ...}.
Frames are decoded by wire.decode_json (bounded: any bad input is an EPROTO reply, never an
exception), and a reply that cannot be encoded (too big) goes out as an EMSGSIZE error instead.
The handlers (appliance/tcpcopyd/handlers.py) run in tcpcopyd's supervisor; tcpcopyctl uses only
this module. The status document is described, field by field, in appliance/tcpcopyd/status_schema.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.core import wire

MAX_ID = 64                # characters of a request id kept (and echoed in the reply)


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    command: str
    args: dict[str, Any]


def ok_reply(request_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": request_id, "status": "ok", "data": data}


def error_reply(request_id: str, message: str, errno_name: str) -> dict[str, Any]:
    return {"id": request_id, "status": "error", "error": message, "errno": errno_name}


def encode_request(request: Request) -> bytes:
    return wire.encode_json(wire.KIND_CONTROL, {"id": request.id, "command": request.command,
                                                "args": request.args})


def decode_request(frame: bytes) -> tuple[Request | None, dict[str, Any]]:
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


def encode_reply(reply: dict[str, Any]) -> bytes:
    """Never raises: a reply too big for a frame (MAX_JSON_FRAME) becomes an error reply."""
    try:
        return wire.encode_json(wire.KIND_CONTROL, reply)
    except wire.WireError as exc:
        refusal = error_reply(str(reply.get("id", ""))[:MAX_ID], str(exc)[:200], "EMSGSIZE")
        return wire.encode_json(wire.KIND_CONTROL, refusal)


def decode_reply(frame: bytes) -> dict[str, Any]:
    return wire.decode_json(frame, wire.KIND_CONTROL)
