"""Counter names: one typed record per role, the one place status, metrics, the schema and the
reports take them from.

A record's field names are the counter names the role publishes, and each field's metadata
(appliance/core/counterfield.py) says its kind, its groups and what it counts. The workers build
their heartbeat's `counters` from their record once a second (the hot path counts in plain
attributes and never sees a record); tcpcopyd's supervisor (which are gauges, which have rates),
tcpcopyctl (drops, repairs), the metrics endpoint (kinds, help), the status schema and the
offline report list names from the functions below. Names only ever grow: a script reading the
status document keeps finding what it found before.

Roles (ROLE_RECORDS): `capture`, `reader` and `rewrite` are tcpcopyd's children; a rewrite
worker's counters are the engine's (`EngineCounters`, appliance/engine/params.py) merged with the
worker's own; `responses` is the channel from interceptd that every rewrite worker reports as its
`response_channel` (summed as `totals.responses` in the status document, `tcpcopy_responses_*` in
metrics); `interceptd` is the report interceptd publishes (shown under `intercepts`). Some names
are added on the way: `loop_turns` by every child's heartbeat (workers/base.py),
`sessions_lost_in_restarts` by the supervisor (observe.ChildView).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache
from types import MappingProxyType
from typing import Any

from appliance.core.counterfield import CounterMeta, Group, Kind, gauge, gauge_float, info, meta_of, total, total_by
from appliance.engine.params import EngineCounters


@dataclass(slots=True, kw_only=True)
class CaptureCounters:
    """A capture process (workers/capture.py)."""

    captured: int = total("IPv4/TCP frames captured (client segments)", "rate")
    bytes: int = total("IP bytes of the frames captured", "rate")
    not_ip: int = total("frames that are not IPv4/TCP", "drop")
    malformed: int = total("IPv4/TCP frames whose headers are cut short or invalid", "drop")
    queue_drops: int = total("segments dropped because a worker's queue was full", "drop", "rate")
    batches: int = total("batches pushed to the workers")
    kernel_received: int = total("frames the kernel delivered to the capture (libpcap stats)")
    kernel_drops: int = total("frames the kernel ring dropped (libpcap stats)", "drop", "rate")
    if_drops: int = total("frames the interface dropped (libpcap stats)")
    largest_packet: int = gauge("the largest IP packet captured so far, bytes")


@dataclass(slots=True, kw_only=True)
class ReaderCounters:
    """The offline reader (workers/reader.py); the `file` group is counted by pcapfile."""

    packets_read: int = total("packets read from the files")
    packets_kept: int = total("packets addressed to a transfer's online side: replayed")
    not_ip: int = total("frames that are not IPv4/TCP", "drop", "not_replayed")
    malformed: int = total("IPv4/TCP packets whose headers the capture cut short", "drop", "not_replayed")
    oversized: int = total("frames longer than the largest IPv4 packet with its link header",
                           "drop", "not_replayed", "file")
    unknown_interface: int = total("pcapng packets of an interface the section never described",
                                   "drop", "not_replayed", "file")
    link_unsupported: int = total("packets of a link type the reader cannot strip",
                                  "drop", "not_replayed", "file")
    queue_waits: int = total("one-second waits for a full worker queue (offline never drops: it waits)")
    client_connections: int = total("client connections in the files (SYNs, and connections open before "
                                    "the capture began)")
    # Decision: the three below are levels but stay totals, as they have been since the reader
    # exists: a gauge would rename their Prometheus metrics (no `_total` suffix).
    file_span_ms: int = total("time from the first packet of the files to the last one read, ms")
    replay_ms: int = total("time the reader has taken so far, ms")
    finished: int = total("1 once the reader has read every file")


@dataclass(slots=True, kw_only=True)
class RewriteCounters:
    """A rewrite worker's own counters (workers/rewrite.py), next to its engine's."""

    sessions_active: int = gauge("sessions open on the target now")
    sessions_tracked: int = gauge("sessions in the table now (open, closing, lingering)")
    client_tuples_in_use: int = gauge("client (address, port) tuples in use now")
    client_tuples_exhausted: int = total("copies that found no free client tuple: not sent")
    buffered_bytes: int = gauge("bytes buffered by the sessions now")
    packets_sent: int = total("packets sent to the target by the raw socket", "rate")
    send_errors: dict[str, int] = total_by("raw sends that failed, by errno name")
    bad_frames: int = total("batches from the segments queue or interceptd that did not decode", "drop")
    malformed: int = total("segments or response headers that did not parse as IPv4/TCP", "drop")
    no_transfer: int = total("captured segments addressed to no transfer", "drop")
    segment_batches: int = total("batches of captured segments received")
    segments_received: int = total("captured segments received")
    response_batches: int = total("batches of response headers received")
    capture_latency_max_ms: float = gauge_float("the longest time from capture to this worker so far, ms")
    capture_to_worker_p50_ms: float = gauge_float("median time from capture to this worker, recent segments, ms")
    capture_to_worker_p99_ms: float = gauge_float("99th percentile of that, ms")
    last_send_at: float = gauge_float("when the worker last sent, epoch seconds (an offline replay's end)")
    response_channel: dict[str, int] = total_by("the channel from interceptd: the `responses` role's counters")
    intercepts_heard: int = gauge("interceptd instances whose reports reached this worker")
    intercepts: dict[str, Any] = info("interceptd instance -> its last report {pid, filter, counters, age}")
    compare: dict[str, int] = total_by("answer comparison (compare mode): see CompareCounters")
    compare_report: dict[str, Any] = info("compare mode: the differences by request, both sides' latency histograms")


@dataclass(slots=True, kw_only=True)
class CompareCounters:
    """A rewrite worker's answer comparison (appliance/compare/tracker.py), its `compare` counters."""

    compared: int = total("pairs of answers judged (the n-th answer on both sides of a connection)")
    equal: int = total("pairs without any difference, both sides complete")
    different_status: int = total("pairs whose HTTP status differs")
    different_size: int = total("pairs whose size differs (Content-Length, else the length)")
    different_body: int = total("pairs whose body (HTTP) or bytes (other protocols) differ")
    different_headers: int = total("pairs whose HTTP headers differ, the ignored ones aside")
    different_latency: int = total("pairs whose target answered latency_factor times slower (and by the floor)")
    uncomparable: int = total("pairs with a side captured incompletely: body and length not judged")
    misaligned: int = total("pairs whose answers belong to different requests (a lost turn)")
    unpaired_online: int = total("online answers never paired with a target answer", "drop")
    unpaired_target: int = total("target answers never paired with an online answer", "drop")
    sessions_evicted: int = total("connections dropped from pairing (too many at once)", "drop")
    online_turns: int = total("answer turns of the online server captured")
    online_incomplete_turns: int = total("online turns with a hole (capture loss)")
    online_gaps: int = total("holes in the online answers' sequence space")
    online_flows_evicted: int = total("online answer flows dropped (too many at once)", "drop")
    target_turns: int = total("answer turns of the target received")
    target_turns_unmatched: int = total("target turns of no replayed connection of this worker", "drop")
    connections_evicted: int = total("connections dropped from request tracking (too many at once)", "drop")
    differences_written: int = total("lines written to the differences file")
    differences_not_written: int = total("differences not written (file bound, or an error)", "drop")


@dataclass(slots=True, kw_only=True)
class ChannelCounters:
    """A rewrite worker's subscription to every interceptd (appliance/tcpcopyd/answers.py)."""

    headers: int = total("response headers received from interceptd", "rate")
    bad_frames: int = total("frames from interceptd that did not decode", "drop")
    batches_lost: int = total("interceptd batches that never arrived (sequence gaps)", "drop", "rate")
    intercept_fields_dropped: int = total("fields of interceptd's reports refused (bad type or size)", "drop")
    intercept_restarts: int = total("interceptd instances heard after the first (a restart, or another one)",
                                    "shared")
    intercept_handshakes: int = total("CURVE handshakes with interceptd that succeeded")
    intercept_handshake_failures: int = total("CURVE handshakes with interceptd that failed (wrong key?)")
    turns: int = total("answer turns of the target received from interceptd (compare)")
    turns_dropped: int = total("answer turns dropped: the worker did not take them in time (compare)", "drop")


@dataclass(slots=True, kw_only=True)
class InterceptCounters:
    """interceptd's report (appliance/interceptd/daemon.py), as a rewrite worker passes it on."""

    captured: int = total("answers of the target captured")
    published: int = total("answer headers that went into at least one batch")
    not_ip: int = total("frames that are not IPv4/TCP", "drop")
    malformed: int = total("frames that are not one whole IPv4/TCP header", "drop")
    unexpected: int = total("frames whose handling raised (the first is logged)", "drop")
    batches: int = total("batches published")
    kernel_drops: int = total("frames the kernel ring dropped (libpcap stats)", "drop")
    no_subscriber: int = total("answers captured while no worker was subscribed", "drop")
    subscriptions_refused: int = total("subscription messages refused (bad topic, too many worker counts)")
    shard_counts: int = gauge("different worker counts subscribed now")
    subscribers: int = gauge("subscriber connections now")
    keys_accepted: int = total("CURVE clients accepted")
    keys_refused: int = total("CURVE clients refused (key not authorized)")
    # compare mode (issue 16): the answers' turns, assembled while a worker subscribes to turn topics
    turn_segments: int = total("answer segments given to the turn assembler (compare mode)")
    turns: int = total("answer turns the assembler ended (compare mode)")
    turns_published: int = total("turns that went into at least one batch")
    turn_batches: int = total("batches of turns published")
    turns_no_subscriber: int = total("turns ended while no worker was subscribed to turns", "drop")
    turns_unencodable: int = total("turns the wire encoder refused (not published)", "drop")
    turns_incomplete: int = total("turns published with bytes missing (a hole or a short capture)")
    turn_shard_counts: int = gauge("different worker counts subscribed to turns now")
    turn_flows: int = gauge("connections the turn assembler tracks now")
    turn_flows_created: int = total("connections the turn assembler started tracking")
    turn_flows_evicted: int = total("live connections forgotten because compare_max_flows was reached "
                                    "(their later turns are misnumbered)", "drop")
    turn_flows_expired: int = total("connections forgotten after compare_flow_idle")
    turn_gaps: int = total("holes in an answer's byte stream (lost or reordered segments)", "drop")
    turn_short_captures: int = total("answer segments captured shorter than their payload", "drop")
    turn_retransmitted_bytes: int = total("answer bytes seen again (retransmitted or overlapping)")
    turn_late_data: int = total("new answer bytes carrying an older ACK than their turn's (reordering)")
    turn_after_close: int = total("answer segments after the connection's FIN or RST")


@dataclass(slots=True, kw_only=True)
class HeartbeatCounters:
    """Added to every child's counters by its heartbeat (workers/base.py)."""

    loop_turns: int = total("turns of the child's main loop (each is a wake-up)")


@dataclass(slots=True, kw_only=True)
class SupervisorCounters:
    """Added to a child's counters by the supervisor (appliance/tcpcopyd/observe.py)."""

    sessions_lost_in_restarts: int = total("sessions open in worker incarnations that died",
                                           "drop", "not_completed")


ROLE_RECORDS: Mapping[str, tuple[type[Any], ...]] = MappingProxyType({
    "capture": (CaptureCounters, HeartbeatCounters),
    "reader": (ReaderCounters, HeartbeatCounters),
    "rewrite": (EngineCounters, RewriteCounters, HeartbeatCounters, SupervisorCounters),
    "responses": (ChannelCounters,),
    "interceptd": (InterceptCounters,),
})
# The roles of the status document's `totals`, in pipeline order (the order names are listed in).
STATUS_ROLES = ("capture", "reader", "rewrite", "responses")


_NAMES: dict[type[Any], tuple[str, ...]] = {}


def as_dict(record: Any) -> dict[str, Any]:
    """A record's counters by name, in declaration order (the heartbeat's `counters`)."""
    names = _NAMES.get(type(record))
    if names is None:
        names = _NAMES[type(record)] = tuple(f.name for f in fields(record))
    return {name: getattr(record, name) for name in names}


@cache
def declared(role: str) -> Mapping[str, CounterMeta]:
    """Every counter `role` publishes, name -> metadata, in declaration order. KeyError for an
    unknown role; TypeError when two of its records declare one name, or a field has no metadata."""
    out: dict[str, CounterMeta] = {}
    for record in ROLE_RECORDS[role]:
        for f in fields(record):
            if f.name in out:
                raise TypeError(f"{role}: counter {f.name!r} declared twice")
            out[f.name] = meta_of(f)
    return MappingProxyType(out)


def names_of(role: str) -> tuple[str, ...]:
    return tuple(declared(role))


def kind_of(role: str, name: str) -> Kind | None:
    """The kind of a counter; None for a role or name not declared."""
    meta = declared(role).get(name) if role in ROLE_RECORDS else None
    return None if meta is None else meta.kind


def description(role: str, name: str) -> str:
    """The one line that says what the counter counts; KeyError when it is not declared."""
    return declared(role)[name].description


def in_group(role: str, group: Group) -> tuple[str, ...]:
    return tuple(name for name, meta in declared(role).items() if group in meta.groups)


def gauges(role: str) -> frozenset[str]:
    return frozenset(name for name, meta in declared(role).items() if meta.kind == "gauge")


def _across(roles: tuple[str, ...], group: Group) -> tuple[str, ...]:
    """The names in `group` of any of `roles`, each once, in pipeline order."""
    return tuple(dict.fromkeys(name for role in roles for name in in_group(role, group)))


# Flat views over the status document's roles: one name means one thing in all of them (tested).
GAUGES = frozenset().union(*(gauges(role) for role in STATUS_ROLES))
RATE_COUNTERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {role: in_group(role, "rate") for role in STATUS_ROLES if in_group(role, "rate")})
DROP_COUNTERS = _across(STATUS_ROLES, "drop")
REPAIR_COUNTERS = _across(STATUS_ROLES, "repair")
NOT_COMPLETED = in_group("rewrite", "not_completed")
NOT_REPLAYED = in_group("reader", "not_replayed")
FILE_DROPS = in_group("reader", "file")
