"""appliance.tcpcopyd.status: the status arithmetic on plain rows (no supervisor, no clock)."""

from __future__ import annotations

from appliance.tcpcopyd.status import Snapshot, document, funnel, intercepts_of, totals_of
from appliance.tcpcopyd.status_schema import check


def test_funnel_sums_by_role():
    children = [
        {"role": "capture", "counters": {"captured": 10, "kernel_drops": 1, "queue_drops": 2}},
        {"role": "capture", "counters": {"captured": 5, "kernel_drops": 0, "queue_drops": 1}},
        {"role": "rewrite", "counters": {"segments_received": 9, "packets_sent": 11, "bytes_sent": 900,
                                         "bytes_acked": 800, "responses_unmatched": 3,
                                         "sessions_started": 4, "sessions_established": 3,
                                         "sessions_completed": 2, "handshake_timeouts": 1,
                                         "capture_gaps": 1, "send_errors": {"EPERM": 2, "ENOBUFS": 1},
                                         "response_channel": {"headers": 15, "batches_lost": 2}}},
        {"role": "rewrite", "counters": {"segments_received": 3, "packets_sent": 1,
                                         "send_errors": {"EPERM": 4}, "response_channel": {"headers": 5}}},
        {"role": "rewrite", "counters": {}},
    ]
    f = funnel(children)
    assert f == {
        "captured": 15, "kernel_drops": 1, "queue_drops_capture": 3, "handed_to_workers": 12,
        "sent_packets": 12, "send_errors": 7, "bytes_sent": 900, "bytes_acked_by_target": 800,
        "response_headers": 20, "response_batches_lost": 2, "responses_unmatched": 3,
        "sessions_started": 4, "sessions_established": 3, "sessions_completed": 2,
        "handshake_timeouts": 1, "capture_gaps": 1, "sessions_lost_in_restarts": 0, "in_queues": 0,
        "sessions_shed": 0,
        "lost_at": ["capture (kernel ring)", "capture -> worker queue", "worker -> target (send errors)",
                    "target handshake", "captured stream (gaps)", "intercept -> tcpcopyd (response batches)"],
    }
    # the stages add up: what capture took is dropped at the queue, still queued, or handed over
    assert f["captured"] == f["queue_drops_capture"] + f["in_queues"] + f["handed_to_workers"]


def test_funnel_of_nothing_is_zeros():
    f = funnel([])
    assert f.pop("lost_at") == []
    assert set(f.values()) == {0}


def _rewrite(index: int, intercepts: dict, channel: dict) -> dict:
    return {"role": "rewrite", "index": index, "counters": {"response_channel": channel},
            "info": {"intercepts": intercepts}}


def test_every_worker_reports_interceptd_and_the_freshest_report_wins():
    old = {"pid": 10, "filter": "tcp", "counters": {"captured": 5}, "age": 3.0}
    new = {"pid": 10, "filter": "tcp", "counters": {"captured": 9}, "age": 0.4}
    other = {"pid": 20, "filter": "tcp", "counters": {"captured": 1}, "age": 1.0}
    rows = [_rewrite(0, {"a1": old}, {}), _rewrite(1, {"a1": new, "b2": other}, {}),
            {"role": "capture", "index": 0, "counters": {}, "info": {"intercepts": {"zz": old}}}]
    assert intercepts_of(rows) == {"a1": new, "b2": other}


def test_interceptds_stay_visible_while_worker_zero_restarts():
    report = {"pid": 10, "filter": "tcp", "counters": {}, "age": 0.2}
    rows = [{"role": "rewrite", "index": 0, "counters": {}, "info": {}}, _rewrite(1, {"a1": report}, {})]
    assert intercepts_of(rows) == {"a1": report}


def test_garbage_intercept_reports_are_skipped():
    rows = [_rewrite(0, {"a1": "junk", "b2": {"age": "soon"}}, {}), _rewrite(1, [], {})]   # type: ignore[arg-type]
    assert intercepts_of(rows) == {"b2": {"age": "soon"}}


def test_an_interceptd_restart_seen_by_every_worker_counts_once():
    rows = [_rewrite(k, {}, {"headers": 10, "intercept_restarts": 1}) for k in range(3)]
    totals = totals_of(rows)
    assert totals["responses"] == {"headers": 30, "intercept_restarts": 1}
    assert "response_channel" not in totals["rewrite"]


def test_the_document_of_a_snapshot_follows_the_schema():
    rows = [{"role": "rewrite", "index": 0, "pid": 7, "state": "running", "cpus": [], "restarts": 0,
             "heartbeat_age": 0.1, "cpu_percent": 1.0, "rss_bytes": 1, "settings_seq": 0, "info": {},
             "counters": {"sessions_started": 3, "response_channel": {"headers": 4}}}]
    config = {"transfers": "x", "intercepts": [], "interfaces": [], "workers": 1, "filter": "tcp", "source": "s"}
    doc = document(Snapshot(time=100.0, pid=1, uptime=2.0, stopping=True, rows=rows, config=config,
                            runtime={"paused": False, "sample_rate": 1.0, "log_level": "info", "seq": 0},
                            bad_frames={"control": 0, "stats": 0}))
    assert check(doc) == []
    assert doc["supervisor"]["state"] == "stopping" and doc["totals"]["responses"] == {"headers": 4}
    assert doc["funnel"]["sessions_started"] == 3
