"""Offline replay: capture files played through the live target with the same session engine."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dpkt
import pytest

from appliance.lab.netns import ADDR, Lab
from appliance.lab.rig import ReplicationRig
from tests.unit.pcapkit import ETH, cut_ihl_packet, epb, idb, shb

pytestmark = pytest.mark.lab


def _capture(lab: Lab, path: Path, *load_args: str) -> dict:
    """Record client traffic to the online service with tcpdump while a load runs (no tcpcopyd)."""
    dump = lab.popen("online", ["tcpdump", "-i", "eth0", "-s", "0", "-B", "131072", "--immediate-mode", "-w", str(path),
                                "tcp and dst host 198.18.0.2 and dst port 8080"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        done = lab.run("client", [sys.executable, "-m", "appliance.lab.load", "--server",
                                  f"{ADDR['online']}:8080", *load_args], timeout=120)
        time.sleep(1.5)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _digests(path: Path) -> Counter:
    return Counter(json.loads(line)["sha256"] for line in path.read_text().splitlines()
                   if not json.loads(line).get("open"))


@pytest.fixture
def rig(lab, tmp_path):
    made = ReplicationRig(lab, tmp_path / "rig")
    try:
        made.start_services()
        made.start_interceptd()
        time.sleep(0.5)
        yield made
    finally:
        made.close()


def test_pcap_of_500_sessions_replays_byte_exact_at_topspeed(lab, rig, tmp_path):
    pcap = tmp_path / "mix.pcap"
    load = _capture(lab, pcap, "mix", "--short", "450", "--keepalive", "50", "--per-conn", "4", "--post-every", "2")
    assert load["connections"] == 500
    online = _digests(rig.online_rec)
    rig.online_rec.unlink()                            # the replay's truth is the capture
    report = tmp_path / "report.json"
    done = rig.run_offline([str(pcap)], "--topspeed", "--report-json", str(report))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "500 client connections" in done.stdout
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sum(_digests(rig.target_rec).values()) < 500:
        time.sleep(0.2)
    assert _digests(rig.target_rec) == online, done.stdout + done.stderr[-3000:]
    assert re.search(r"500 sessions started, 500 completed", done.stdout), done.stdout
    data = json.loads(report.read_text())
    assert data["sessions_completed"] == data["client_connections"] == 500 and not data["not_completed"]
    assert data["funnel"]["in_queues"] == 0 and data["funnel"]["lost_at"] == []


def test_speed_and_gap_cutting(lab, rig, tmp_path):
    pcap = tmp_path / "paced.pcap"
    _capture(lab, pcap, "paced", "--rate", "40", "--duration", "10")
    done = rig.run_offline([str(pcap)], "--speed", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    took = float(re.search(r"took ([\d.]+) s", done.stdout).group(1))
    assert 4.0 <= took <= 6.5, done.stdout
    # the same conversation with a 30 s idle gap in the middle: --max-gap 100 cuts it
    gapped = tmp_path / "gap.pcap"
    with open(pcap, "rb") as src, open(gapped, "wb") as dst:
        reader = dpkt.pcap.Reader(src)
        writer = dpkt.pcap.Writer(dst, snaplen=262144, linktype=reader.datalink())
        records = list(reader)
        half = len(records) // 2
        for i, (ts, frame) in enumerate(records):
            writer.writepkt(frame, ts + (30.0 if i >= half else 0.0))
    # at 2x the file's timing the gap alone would take 15 s; cut to 100 ms it leaves the ~5 s of traffic
    done = rig.run_offline([str(gapped)], "--speed", "2", "--max-gap", "100")
    assert done.returncode == 0, done.stderr[-2000:]
    took = float(re.search(r"took ([\d.]+) s", done.stdout).group(1))
    assert 4.0 <= took <= 6.5, done.stdout
    assert "over 40." in done.stdout or "over 39." in done.stdout    # the file still spans ~40 s


def test_a_pcapng_with_bad_frames_and_several_interfaces_replays_what_it_can(lab, rig, tmp_path):
    """Every frame that cannot be replayed is a counted drop named in the report, never the end of the
    replay; the good packets batched with them all arrive (every session completes)."""
    pcap = tmp_path / "small.pcap"
    load = _capture(lab, pcap, "mix", "--short", "40", "--per-conn", "2")
    with open(pcap, "rb") as src:
        records = list(dpkt.pcap.Reader(src))
    blocks = [shb(), idb(1, tsresol=9), idb(105)]              # nanoseconds; 802.11 is not replayable
    for i, (ts, frame) in enumerate(records):
        blocks.append(epb(0, int(round(ts * 1e9)), frame))
        if i == len(records) // 2:
            ns = int(round(ts * 1e9))
            blocks += [epb(0, ns, ETH + cut_ihl_packet()), epb(0, ns, ETH + bytes(280 * 1024)),
                       epb(1, ns, bytes(64)), epb(7, ns, frame)]
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(b"".join(blocks))
    report = tmp_path / "report.json"
    done = rig.run_offline([str(path)], "--topspeed", "--report-json", str(report))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "packets not replayed: malformed 1, oversized 1, unknown_interface 1, link_unsupported 1" in done.stdout
    data = json.loads(report.read_text())
    assert data["sessions_completed"] == data["client_connections"] == load["connections"], done.stdout
    assert data["totals"]["rewrite"].get("bad_frames", 0) == 0 and data["funnel"]["in_queues"] == 0
