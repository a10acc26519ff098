"""The control commands, answered in tcpcopyd's supervisor.

Each handler takes the request and a `ControlTarget`, the narrow part of the supervisor it may
use: a status snapshot, the runtime settings, a stop request. Handlers answer from state the
supervisor already holds (its child table, each child's last heartbeat, psutil samples); they
never ask a worker, so `status` works while workers are saturated. Frames: appliance/core/control.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

from appliance.config.keys import LOG_LEVELS
from appliance.core.control import Request, error_reply, ok_reply
from appliance.tcpcopyd.status import Snapshot, differences_of, document

Reply = dict[str, Any]
MAX_TOP = 1000             # groups of differences one `diff` answer lists at most


class ControlTarget(Protocol):
    """What the handlers may do to the supervisor."""

    def snapshot(self) -> Snapshot: ...

    def set_runtime(self, **changes: Any) -> dict[str, Any]: ...

    def request_stop(self) -> None: ...


def dispatch(target: ControlTarget, request: Request) -> Reply:
    handler = COMMANDS.get(request.command)
    if handler is None:
        return error_reply(request.id, f"unknown command {request.command!r}", "ENOENT")
    return handler(target, request)


def handle_status(target: ControlTarget, request: Request) -> Reply:
    return ok_reply(request.id, document(target.snapshot()))


def handle_diff(target: ControlTarget, request: Request) -> Reply:
    top = request.args.get("top", 20)
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
        return error_reply(request.id, f"top {_bounded_repr(top)}: must be a whole number 1-{MAX_TOP}", "EINVAL")
    return ok_reply(request.id, differences_of(target.snapshot().rows, top))


def handle_stop(target: ControlTarget, request: Request) -> Reply:
    target.request_stop()
    return ok_reply(request.id, {"stopping": True})


def handle_pause(target: ControlTarget, request: Request) -> Reply:
    return ok_reply(request.id, target.set_runtime(paused=True))


def handle_resume(target: ControlTarget, request: Request) -> Reply:
    return ok_reply(request.id, target.set_runtime(paused=False))


def handle_set(target: ControlTarget, request: Request) -> Reply:
    name, value = request.args.get("name"), request.args.get("value")
    shown = _bounded_repr(value)
    if name == "sample-rate":
        rate = sample_rate_of(value)
        if rate is None:
            return error_reply(request.id, f"sample-rate {shown}: must be a number 0-1", "EINVAL")
        return ok_reply(request.id, target.set_runtime(sample_rate=rate))
    if name == "log-level":
        if not isinstance(value, str) or value not in LOG_LEVELS:
            return error_reply(request.id, f"log-level {shown}: must be one of {', '.join(LOG_LEVELS)}",
                               "EINVAL")
        return ok_reply(request.id, target.set_runtime(log_level=value))
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


COMMANDS: dict[str, Callable[[ControlTarget, Request], Reply]] = {
    "status": handle_status,
    "diff": handle_diff,
    "stop": handle_stop,
    "pause": handle_pause,
    "resume": handle_resume,
    "set": handle_set,
}
