"""The offline report says why connections did not complete, and what never reached a worker."""

from __future__ import annotations

from appliance.core.pcapfile import FileSummary
from appliance.tcpcopyd import offline
from appliance.tcpcopyd.offline import report
from appliance.tcpcopyd.policy import OfflinePolicy


def _data(**over):
    data = {"files": ["a.pcap"], "packets": 1000, "file_span_s": 10.0, "packets_for_transfers": 1000,
            "client_connections": 100, "speed": 0.0, "read_s": 0.5, "end_to_end_s": 2.0,
            "sessions_started": 100, "sessions_completed": 100, "sessions_open_at_stop": 0, "not_completed": {},
            "bytes_sent": 5000, "bytes_acked": 5000, "funnel": {"in_queues": 0}, "not_replayed": {}}
    data.update(over)
    return data


def test_a_clean_replay_reads_plainly():
    text = report(_data())
    assert "100 sessions started, 100 completed, 0 reset or timed out" in text
    assert "as fast as possible" in text and "(500 packets/s end to end)" in text
    assert "not completed" not in text and "never taken" not in text and "not replayed" not in text


def test_every_reason_and_every_stranded_packet_is_named():
    text = report(_data(sessions_completed=90, not_completed={"sessions_reset_by_target": 6, "handshake_timeouts": 4},
                        funnel={"in_queues": 255}, end_to_end_s=None, sessions_open_at_stop=3, speed=2.0))
    assert "10 reset or timed out" in text
    assert "not completed: sessions_reset_by_target 6, handshake_timeouts 4" in text
    assert "never taken by a worker before the stop: 255 packets" in text
    assert "still open when the tail ran out (--offline-tail): 3 sessions" in text
    assert "2 x original (5.00 s)" in text and "end to end" not in text


def test_packets_the_reader_could_not_replay_are_named_with_their_counters(monkeypatch):
    rows = [{"role": "reader", "counters": {"packets_read": 9, "packets_kept": 6, "not_ip": 1, "malformed": 2,
                                            "oversized": 1, "unknown_interface": 1, "link_unsupported": 0}},
            {"role": "rewrite", "counters": {"segments_received": 6}}]
    files = [FileSummary("a.pcapng", 9, 0, 10**9, 1, {"oversized": 1, "unknown_interface": 1})]
    data = offline.report_data(rows, OfflinePolicy(9, 30.0, progress=False), files, 0.0)
    assert data["packets"] == 11                           # the file's packets, dropped ones too
    assert data["not_replayed"] == {"not_ip": 1, "malformed": 2, "oversized": 1, "unknown_interface": 1}
    assert "packets not replayed: not_ip 1, malformed 2, oversized 1, unknown_interface 1" in report(data)
