"""The documented shape of `tcpcopyctl status --json` (schema 2), and a checker for it.

Scripts may rely on every field below; new fields may be added, none removed or retyped
without raising `schema`. Types: "int", "float" (int accepted), "str", "bool", "list", "dict",
"int|null", "float|null", or a nested dict for an object. The counter names inside a child's
`counters`, `totals` and `rates.per_second` are those of COUNTERS (role -> name -> (kind,
description)), made from the counters records in appliance/core/counters.py; they only ever grow,
across restarts too. `check` also reports a name no record declares. The counters of `intercepts`
are interceptd's (role `interceptd` in COUNTERS) but are not checked: interceptd runs on another
host and may be of another version.

Schema 2 (from 1): there is no `responses` child any more: each rewrite worker subscribes to
interceptd itself. `totals.responses` stays, summed from the workers' `response_channel`
counters, without the relay's `queue_drops` and `intercepts_seen`; `intercepts` lists what the
rewrite workers heard from the interceptds.
"""

from __future__ import annotations

from typing import Any

from appliance.core.counters import ROLE_RECORDS, declared

# role -> counter name -> (kind: total | gauge | info, what it counts)
COUNTERS: dict[str, dict[str, tuple[str, str]]] = {
    role: {name: (meta.kind, meta.description) for name, meta in declared(role).items()}
    for role in ROLE_RECORDS
}

CHILD = {
    "role": ("str", "capture | rewrite | reader"),
    "index": ("int", "index within the role (the shard number for rewrite)"),
    "pid": ("int|null", "process id, null while not running"),
    "state": ("str", "starting | running | backoff | stopped | fatal"),
    "cpus": ("list", "CPUs the child is pinned to (empty: not pinned)"),
    "restarts": ("int", "times the supervisor started it again"),
    "heartbeat_age": ("float|null", "seconds since its last heartbeat; null before the first"),
    "cpu_percent": ("float|null", "CPU use over the last second, % of one core (psutil)"),
    "rss_bytes": ("int|null", "resident memory (psutil)"),
    "counters": ("dict", "its counters, summed over all its incarnations"),
    "info": ("dict", "non-counter details (a rewrite worker lists the interceptds it hears here)"),
    "settings_seq": ("int|null", "the runtime settings (runtime.seq) it has applied; null before its first"),
}

STATUS: dict[str, Any] = {
    "schema": ("int", "2"),
    "state": ("str", "running: tcpcopyd answered (see NO_ANSWER for what --json prints when it does not)"),
    "time": ("float", "when the document was made (epoch seconds)"),
    "supervisor": {
        "pid": ("int", "tcpcopyd's pid"),
        "uptime": ("float", "seconds since start"),
        "state": ("str", "running | stopping"),
        "bad_frames": ("dict", "frames the supervisor refused, by socket: control, stats"),
    },
    "runtime": {
        "paused": ("bool", "true: no new sessions are started"),
        "sample_rate": ("float", "share of new sessions replayed, 0-1"),
        "log_level": ("str", "current log level"),
        "seq": ("int", "counts the changes; a child has applied them once its settings_seq reaches it"),
    },
    "config": {
        "transfers": ("str", "the -x transfer specs"),
        "intercepts": ("list", "interceptd addresses"),
        "interfaces": ("list", "capture interfaces"),
        "workers": ("int", "rewrite-and-send workers"),
        "filter": ("str", "the capture filter in use"),
        "source": ("str", "the configuration file, or 'command line'"),
    },
    "children": ("list", "one object per child, see CHILD"),
    "totals": {
        "capture": ("dict", "counters of all captures, summed"),
        "responses": ("dict", "counters of the channel from interceptd, summed over the rewrite workers"),
        "rewrite": ("dict", "counters of all rewrite workers, summed (send_errors: by errno)"),
    },
    "rates": {
        "window_seconds": ("float", "the window the rates cover (up to 10 s)"),
        "per_second": ("dict", "role -> counter -> per-second rate over the window"),
    },
    "funnel": {
        "captured": ("int", "client segments libpcap delivered"),
        "kernel_drops": ("int", "segments the kernel ring dropped (libpcap stats)"),
        "queue_drops_capture": ("int", "segments dropped because a worker queue was full"),
        "in_queues": ("int", "segments between capture and the workers right now"),
        "handed_to_workers": ("int", "segments the workers received; captured = queue drops + in queues + this"),
        "sent_packets": ("int", "packets sent to the target"),
        "send_errors": ("int", "raw sends that failed (by errno in totals.rewrite.send_errors)"),
        "bytes_sent": ("int", "client payload bytes sent to the target"),
        "bytes_acked_by_target": ("int", "of those, acknowledged by the target"),
        "response_headers": ("int", "target headers received from interceptd"),
        "response_batches_lost": ("int", "interceptd batches that never arrived"),
        "responses_unmatched": ("int", "headers for no session of ours"),
        "sessions_started": ("int", "sessions started on the target"),
        "sessions_established": ("int", "of those, handshake completed"),
        "sessions_completed": ("int", "closed cleanly on both sides"),
        "sessions_lost_in_restarts": ("int", "open sessions of workers that died"),
        "handshake_timeouts": ("int", "SYNs never answered (route, assistant, filter?)"),
        "capture_gaps": ("int", "holes in captured streams that never filled"),
        "sessions_shed": ("int", "new sessions not started: the worker was too far behind (overload)"),
        "lost_at": ("list", "names of the stages that lost anything, in pipeline order"),
    },
    "intercepts": ("dict", "interceptd instance -> {pid, filter, counters, age}"),
}


# `tcpcopyctl status --json` when tcpcopyd gives no document (exit 3 or 4); no other field
NO_ANSWER = {
    "state": ("str", "not running (no control socket: exit 3) | unknown (no answer in time, or an "
                     "error: exit 4)"),
    "reason": ("str", "why, for a human"),
    "run_dir": ("str", "the run directory tcpcopyctl looked in"),
}


def _type_ok(kind: str, value: Any) -> bool:
    if kind.endswith("|null"):
        if value is None:
            return True
        kind = kind[:-5]
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "list": list, "dict": dict}[kind])


def check(doc: Any, schema: dict[str, Any] = STATUS, where: str = "") -> list[str]:
    """Every way `doc` departs from the schema; empty when it conforms."""
    if not isinstance(doc, dict):
        return [f"{where or 'document'}: not an object"]
    problems = []
    for key, spec in schema.items():
        path = f"{where}.{key}" if where else key
        if key not in doc:
            problems.append(f"{path}: missing")
        elif isinstance(spec, dict):
            problems += check(doc[key], spec, path)
        elif not _type_ok(spec[0], doc[key]):
            problems.append(f"{path}: {doc[key]!r} is not {spec[0]}")
    if schema is STATUS and isinstance(doc.get("children"), list):
        for i, child in enumerate(doc["children"]):
            problems += check(child, CHILD, f"children[{i}]")
    if schema is STATUS:
        problems += unknown_counters(doc)
    return problems


def unknown_counters(doc: dict[str, Any]) -> list[str]:
    """Every counter name of a status document that no record declares for its role (children's
    `counters`, `totals`, `rates.per_second`); empty when all are known."""
    def mapping(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}

    children = doc.get("children")
    places: list[tuple[str, str, Any]] = [
        (f"children[{i}].counters", str(child.get("role")), child.get("counters"))
        for i, child in enumerate(children if isinstance(children, list) else []) if isinstance(child, dict)]
    places += [(f"totals.{role}", role, c) for role, c in mapping(doc.get("totals")).items()]
    places += [(f"rates.per_second.{role}", role, c)
               for role, c in mapping(mapping(doc.get("rates")).get("per_second")).items()]
    problems = []
    for path, role, counters in places:
        known = COUNTERS.get(role)
        if known is None:
            problems.append(f"{path}: no counters are declared for role {role!r}")
        elif isinstance(counters, dict):
            problems += [f"{path}.{name}: not a declared counter of {role}" for name in counters
                         if name not in known]
    return problems
