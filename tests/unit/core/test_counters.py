"""The counters records: every name a process publishes is declared in its role's record, the lists
status, metrics and the reports use are the records' groups, and those lists are what they were
before the records existed (written out here), apart from the additions named below."""

from __future__ import annotations

import dataclasses
import time
import typing
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from appliance.config.loader import InterceptConfig
from appliance.config.specs import CaptureSpec, ReaderSpec, RewriteSpec
from appliance.core import counters, pcapfile, wire
from appliance.core.counterfield import GROUPS, KINDS, meta_of
from appliance.core.counters import (
    DROP_COUNTERS,
    FILE_DROPS,
    GAUGES,
    NOT_COMPLETED,
    NOT_REPLAYED,
    RATE_COUNTERS,
    REPAIR_COUNTERS,
    ROLE_RECORDS,
    STATUS_ROLES,
    names_of,
)
from appliance.engine.params import EngineCounters
from appliance.interceptd.daemon import Intercept
from appliance.tcpcopyd import answers, observe
from appliance.tcpcopyd.answers import AnswerChannel
from appliance.tcpcopyd.metrics import _RowsCollector
from appliance.tcpcopyd.status_schema import COUNTERS, unknown_counters
from tests.unit.pcapkit import ETH, epb, idb, ip_packet, shb
from workers.capture import CaptureWorker
from workers.reader import ReaderWorker
from workers.rewrite import RewriteWorker

# ---- the lists as they were written out before the records (issue 15) -------------------------
BEFORE_GAUGES = {"sessions_active", "sessions_tracked", "buffered_bytes", "largest_packet",
                 "capture_latency_max_ms", "intercepts_heard", "client_tuples_in_use",
                 "capture_to_worker_p50_ms", "capture_to_worker_p99_ms"}
BEFORE_RATE_COUNTERS = {
    "capture": ("captured", "bytes", "kernel_drops", "queue_drops"),
    "rewrite": ("client_segments", "packets_sent", "bytes_sent", "sessions_started", "sessions_completed",
                "retransmits", "responses"),
    "responses": ("headers", "batches_lost"),
}
BEFORE_DROP_COUNTERS = (
    "client_no_session", "client_late", "capture_gaps", "buffer_overflows", "resync_bytes_dropped",
    "handshake_timeouts", "handshake_refused", "port_reuse_resets", "responses_unmatched",
    "bad_frames", "malformed", "no_transfer", "sessions_timed_out", "sessions_skipped_paused",
    "sessions_skipped_sampled", "sessions_lost_in_restarts", "queue_drops", "kernel_drops",
    "batches_lost", "not_ip", "intercept_fields_dropped", "oversized", "unknown_interface",
    "link_unsupported", "midstream_refused", "target_resets_ignored", "closes_forced", "sessions_shed",
    "turns_dropped")     # added with compare mode (the channel's turns)
BEFORE_REPAIR_COUNTERS = ("port_reuse_moves", "restarts", "syn_retransmits", "target_stale_resets",
                          "target_isn_changes", "target_resets_challenged", "retransmits", "fast_retransmits",
                          "chunks_coalesced")
BEFORE_NOT_COMPLETED = ("sessions_reset_by_target", "sessions_reset_by_client", "sessions_timed_out",
                        "handshake_timeouts", "handshake_refused", "port_reuse_resets", "sessions_evicted",
                        "sessions_shutdown", "sessions_lost_in_restarts", "sessions_skipped_paused",
                        "sessions_skipped_sampled", "capture_gaps", "buffer_overflows")
BEFORE_FILE_DROPS = ("oversized", "unknown_interface", "link_unsupported")
BEFORE_NOT_REPLAYED = ("not_ip", "malformed", *BEFORE_FILE_DROPS)
# Additions: last_send_at (a time stamp, a float: floats were never summed nor exported anyway)
ADDED_GAUGES = {"last_send_at"}

TRANSFERS = "8080-198.18.0.3:8080"


def test_the_derived_lists_are_the_lists_of_before():
    # the order is now the records' (pipeline order: capture, reader, engine, worker, channel)
    assert GAUGES == BEFORE_GAUGES | ADDED_GAUGES
    assert {r: set(n) for r, n in RATE_COUNTERS.items()} == {r: set(n) for r, n in BEFORE_RATE_COUNTERS.items()}
    for derived, before in ((DROP_COUNTERS, BEFORE_DROP_COUNTERS), (REPAIR_COUNTERS, BEFORE_REPAIR_COUNTERS),
                            (NOT_COMPLETED, BEFORE_NOT_COMPLETED), (NOT_REPLAYED, BEFORE_NOT_REPLAYED),
                            (FILE_DROPS, BEFORE_FILE_DROPS)):
        assert len(derived) == len(set(derived)) and set(derived) == set(before)
    assert pcapfile.DROP_COUNTERS == FILE_DROPS
    assert observe.GAUGES is GAUGES and observe.RATE_COUNTERS is RATE_COUNTERS


def test_every_field_is_described_and_a_name_means_one_thing_in_every_status_role():
    for role, records in ROLE_RECORDS.items():
        for record in records:
            hints = typing.get_type_hints(record)
            for f in dataclasses.fields(record):
                meta = meta_of(f)
                assert meta.kind in KINDS and set(meta.groups) <= set(GROUPS), (role, f.name)
                assert meta.description and "\n" not in meta.description, (role, f.name)
                if hints[f.name] is float:
                    assert meta.kind == "gauge", f"{role}.{f.name}: a float is a level"
        assert len(names_of(role)) == len(set(names_of(role)))
    seen: dict[str, tuple[str, bool]] = {}
    for role in STATUS_ROLES:
        for name, meta in counters.declared(role).items():
            # the flat lists (GAUGES, DROP_COUNTERS) are sound only if a shared name agrees everywhere
            assert seen.setdefault(name, (meta.kind, "drop" in meta.groups)) == (meta.kind, "drop" in meta.groups), name


def test_engine_counters_keep_their_slots_and_as_dict():
    c = EngineCounters()
    assert not hasattr(c, "__dict__")
    c.handshake_timeouts += 2
    assert c.as_dict()["handshake_timeouts"] == 2 and tuple(c.as_dict()) == tuple(
        f.name for f in dataclasses.fields(EngineCounters))
    assert counters.description("rewrite", "handshake_timeouts").startswith("SYNs no SYN-ACK answered")
    assert counters.kind_of("rewrite", "nonesuch") is None and counters.kind_of("nonesuch", "x") is None
    with pytest.raises(KeyError):
        counters.description("rewrite", "nonesuch")


# ---- what each process publishes ---------------------------------------------------------------
class _StatsSocket:
    """Takes the heartbeat a worker publishes."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes, flags: int = 0) -> None:
        self.frames.append(frame)


def heartbeat_counters(worker: Any) -> dict[str, Any]:
    worker.stats_sock = _StatsSocket()
    worker.publish_stats()
    return wire.decode_json(worker.stats_sock.frames[-1], wire.KIND_STATS)["counters"]


def supervisor_added(role: str) -> set[str]:
    """The names the supervisor, not the worker, adds to a role's counters."""
    if counters.SupervisorCounters not in ROLE_RECORDS[role]:
        return set()
    return {f.name for f in dataclasses.fields(counters.SupervisorCounters)}


def test_the_capture_heartbeat_has_exactly_its_records_names(tmp_path):
    worker = CaptureWorker(CaptureSpec(index=0, interface="lo", bpf="tcp", shards=2, run_dir=str(tmp_path)))
    worker.captured, worker.largest = 3, 1500
    published = heartbeat_counters(worker)
    assert list(published) == list(names_of("capture"))
    assert published["captured"] == 3 and published["largest_packet"] == 1500


def test_the_reader_heartbeat_has_exactly_its_records_names(tmp_path):
    worker = ReaderWorker(ReaderSpec(run_dir=str(tmp_path), shards=2, transfers=TRANSFERS, files=()))
    worker.file_drops["oversized"] = 2
    published = heartbeat_counters(worker)
    assert list(published) == list(names_of("reader"))
    assert published["oversized"] == 2 and published["finished"] == 0


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.term()


@pytest.mark.parametrize("index", [0, 1])
def test_every_rewrite_worker_publishes_its_records_names_and_the_interceptds(tmp_path, ctx, index):
    worker = RewriteWorker(RewriteSpec(index=index, shards=2, run_dir=str(tmp_path), transfers=TRANSFERS))
    worker.sender = type("Sender", (), {"sent": 4, "errors": {"EPERM": 1}})()
    worker.channel = AnswerChannel(ctx, 2, index, ())
    try:
        worker.table.counters.responses = 7
        published = heartbeat_counters(worker)
    finally:
        for sock in worker.channel.sockets():
            sock.close(linger=0)
    assert list(published) == [n for n in names_of("rewrite") if n not in supervisor_added("rewrite")]
    assert published["responses"] == 7 and published["packets_sent"] == 4 and published["send_errors"] == {"EPERM": 1}
    assert list(published["response_channel"]) == list(names_of("responses"))
    assert published["intercepts"] == {}              # every worker, not only worker 0, passes them on


def test_the_channel_and_interceptd_report_exactly_their_records_names(ctx):
    channel = AnswerChannel(ctx, 1, 0, ())
    try:
        assert list(channel.counters()) == list(names_of("responses"))
    finally:
        for sock in channel.sockets():
            sock.close(linger=0)
    reported = Intercept(InterceptConfig(interfaces=("lo",), bpf="tcp")).counters()
    assert list(reported) == list(names_of("interceptd"))
    # what a rewrite worker keeps of interceptd's report: every name fits its bounds
    assert len(reported) <= answers.MAX_COUNTERS_KEPT
    assert all(answers.COUNTER_NAME.fullmatch(n) for n in reported)


def test_pcapfile_counts_its_drops_under_the_file_names(tmp_path):
    frames = (shb() + idb(1) + idb(105) + epb(0, 1, ETH + ip_packet(1)) + epb(0, 2, ETH + bytes(280 * 1024))
              + epb(1, 3, ETH + ip_packet(2)) + epb(7, 4, ETH + ip_packet(3)))
    path = tmp_path / "drops.pcapng"
    path.write_bytes(frames)
    drops: dict[str, int] = {}
    assert len(list(pcapfile.packets(str(path), drops=drops))) == 1
    assert set(drops) == set(FILE_DROPS)


# ---- where the names are used ------------------------------------------------------------------
def _row(role: str, index: int = 0) -> dict[str, Any]:
    declared = counters.declared(role)
    values: dict[str, Any] = {}
    for name, meta in declared.items():
        if meta.kind == "info":
            continue
        default = next(f for r in ROLE_RECORDS[role] for f in dataclasses.fields(r) if f.name == name)
        values[name] = {"EPERM": 1} if name == "send_errors" else (
            0.5 if isinstance(default.default, float) else 1)
    if role == "rewrite":
        values["response_channel"] = dict.fromkeys(names_of("responses"), 1)
    return {"role": role, "index": index, "pid": 10, "restarts": 0, "counters": values}


def test_every_declared_gauge_is_a_prometheus_gauge_with_its_description_as_help():
    rows = {r: _row(r) for r in ("capture", "reader", "rewrite")}
    families = {f.name: f for f in _RowsCollector(lambda: list(rows.values())).collect()}
    rows["responses"] = {"counters": rows["rewrite"]["counters"]["response_channel"]}
    for role in STATUS_ROLES:
        for name, meta in counters.declared(role).items():
            family = families.get(f"tcpcopy_{role}_{name}")
            value = rows[role]["counters"].get(name)
            if meta.kind == "info" or name == "response_channel" or isinstance(value, float):
                assert family is None, (role, name)      # exported under responses; levels not exported
                continue
            assert family is not None and family.type == ("gauge" if meta.kind == "gauge" else "counter")
            assert family.documentation == meta.description
    assert families["tcpcopy_rewrite_sessions_active"].type == "gauge"
    assert families["tcpcopy_responses_headers"].type == "counter"


def test_status_schema_lists_every_roles_counters_and_flags_unknown_names():
    assert set(COUNTERS) == set(ROLE_RECORDS)
    assert COUNTERS["rewrite"]["sessions_active"] == ("gauge", "sessions open on the target now")
    doc = {"children": [_row("rewrite"), _row("capture")],
           "totals": {"capture": {"captured": 1}, "rewrite": {"packets_sent": 1}, "reader": {},
                      "responses": {"headers": 1}},
           "rates": {"window_seconds": 1.0, "per_second": {r: dict.fromkeys(n, 0.0) for r, n in RATE_COUNTERS.items()}}}
    assert unknown_counters(doc) == []
    doc["children"][1]["counters"]["capturedd"] = 1
    doc["totals"]["responses"]["packets_sent"] = 1
    assert unknown_counters(doc) == ["children[1].counters.capturedd: not a declared counter of capture",
                                     "totals.responses.packets_sent: not a declared counter of responses"]


def test_a_dead_incarnations_gauges_are_not_carried_over():
    view = observe.ChildView()
    view.heartbeat({"counters": {"sessions_active": 5, "packets_sent": 10, "last_send_at": time.time()}}, 0.0)
    view.died()
    assert view.counters() == {"packets_sent": 10, "sessions_lost_in_restarts": 5}
