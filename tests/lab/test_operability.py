"""Operating tcpcopyd in the lab: restarts, halts, stops, status, runtime control, metrics.

Acceptance of "Operability": real tcpcopyd and interceptd processes in the four-host lab.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.core.flowkey import shard_of
from appliance.core.packet import ip_to_int
from appliance.lab.netns import ADDR, Lab
from appliance.lab.records import session_digests
from appliance.lab.rig import ReplicationRig, _bin
from appliance.tcpcopyd.status_schema import check

pytestmark = pytest.mark.lab


@pytest.fixture
def rig(lab: Lab, tmp_path: Path) -> Iterator[ReplicationRig]:
    made = ReplicationRig(lab, tmp_path / "rig")
    try:
        yield made
    finally:
        made.close()


def _child(status: dict, role: str, index: int) -> dict:
    return next(ch for ch in status["children"] if ch["role"] == role and ch["index"] == index)


def _background_load(lab: Lab, *args: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "appliance.lab.load", "--server", f"{ADDR['online']}:8080", *args]
    return lab.popen("client", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_killed_rewrite_worker_restarts_and_other_shards_complete(rig, lab):
    rig.start()
    load = _background_load(lab, "mix", "--short", "3000", "--keepalive", "40", "--per-conn", "60",
                            "--concurrency", "20")
    time.sleep(1.0)
    victim = _child(rig.status(), "rewrite", 0)
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    restarted_after = None
    while time.monotonic() - killed_at < 5.0:
        ch = _child(rig.status(), "rewrite", 0)
        if ch["pid"] and ch["pid"] != victim["pid"] and ch["state"] in ("starting", "running"):
            restarted_after = time.monotonic() - killed_at
            break
        time.sleep(0.05)
    out, _ = load.communicate(timeout=120)
    assert restarted_after is not None and restarted_after <= 2.0, f"restart took {restarted_after}"
    assert json.loads(out.strip().splitlines()[-1])["errors"] == 0
    v = rig.verdict({}, time.time())
    status = v.status
    assert _child(status, "rewrite", 0)["restarts"] == 1
    assert status["funnel"]["sessions_lost_in_restarts"] >= 1
    assert "worker restarts" in status["funnel"]["lost_at"]
    online, target = session_digests(rig.online_rec), session_digests(rig.target_rec)
    client = ip_to_int(ADDR["client"])
    survivors = Counter({k: n for k, n in online.items()
                         if shard_of(client, int(k[0].rsplit(":", 1)[1]), 2) == 1})
    assert sum(survivors.values()) > 500
    missing = survivors - target
    assert not missing, f"{sum(missing.values())} sessions of the surviving shard did not replay"


def test_worker_that_cannot_boot_halts_the_appliance(lab, tmp_path):
    log = tmp_path / "tcpcopyd.log"
    started = time.monotonic()
    with open(log, "w") as err:
        proc = lab.popen("online", [_bin("tcpcopyd"), "-x", "8080-198.18.0.3:8080", "-s", ADDR["assistant"],
                                    "-i", "nosuchif0", "--run-dir", str(tmp_path / "run"),
                                    "--insecure", "true"], stderr=err)
        try:
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 70, log.read_text()[-2000:]
    assert time.monotonic() - started < 20
    text = log.read_text()
    assert "failed to boot 3 times in a row" in text


def test_sigterm_under_load_exits_zero_and_leaves_nothing(rig, lab):
    rig.start()
    pids = [ch["pid"] for ch in rig.status()["children"]]
    load = _background_load(lab, "mix", "--short", "2000", "--keepalive", "20", "--per-conn", "50",
                            "--concurrency", "20")
    time.sleep(1.0)
    proc = rig.procs["tcpcopyd"]
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = proc.wait(30)
    took = time.monotonic() - started
    load.communicate(timeout=120)
    assert code == 0
    assert took < 3 * 5.0 + 2, f"stopped in {took:.1f}s"
    assert not [pid for pid in pids if _pid_exists(pid)], "children left behind"
    assert not os.path.exists(os.path.join(rig.run_dir, "ctl"))
    assert "summary:" in (rig.dir / "tcpcopyd.log").read_text()


def test_children_exit_when_the_supervisor_dies(rig):
    rig.start()
    status = rig.status()
    pids = [ch["pid"] for ch in status["children"]]
    os.kill(status["supervisor"]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_pid_exists(pid) for pid in pids):
        time.sleep(0.1)
    assert not [pid for pid in pids if _pid_exists(pid)], "orphaned children kept running"


def test_status_json_follows_its_schema_and_the_funnel_adds_up(rig):
    rig.start()
    rig.load("mix", "--short", "100", "--keepalive", "5", "--per-conn", "10")
    status = rig.fresh_status()
    assert check(status) == []
    f = status["funnel"]
    assert f["captured"] > 0
    assert f["captured"] == f["queue_drops_capture"] + f["in_queues"] + f["handed_to_workers"]
    assert f["bytes_acked_by_target"] <= f["bytes_sent"]
    assert f["lost_at"] == []
    deadline = time.monotonic() + 5       # interceptd reports once a second, passed on with a heartbeat
    while time.monotonic() < deadline and not any(
            i["counters"]["published"] for i in status["intercepts"].values()):
        time.sleep(0.3)
        status = rig.fresh_status()
    ic = status["intercepts"]
    assert len(ic) == 1
    (one,) = ic.values()
    assert one["counters"]["published"] > 0 and one["counters"]["no_subscriber"] == 0
    assert one["counters"]["subscribers"] == status["config"]["workers"]     # each worker subscribes
    assert all(ch["cpu_percent"] is not None and ch["rss_bytes"] > 0 for ch in status["children"])
    text = subprocess.run([_bin("tcpcopyctl"), "--run-dir", rig.run_dir, "status"], capture_output=True,
                          text=True, check=True).stdout
    assert "loss funnel" in text and "interceptd" in text and "rewrite" in text


def test_pause_resume_and_sample_rate_at_runtime(rig):
    rig.start()
    ctl = [_bin("tcpcopyctl"), "--run-dir", rig.run_dir]
    # each command returns once every child's heartbeat echoes the change (exit 1 otherwise)
    paused = subprocess.run(ctl + ["pause"], check=True, capture_output=True, text=True)
    assert json.loads(paused.stdout)["applied"] is True
    rig.load("mix", "--short", "50", "--keepalive", "0")
    subprocess.run(ctl + ["resume"], check=True, capture_output=True)
    subprocess.run(ctl + ["set", "sample-rate", "0.25"], check=True, capture_output=True)
    rig.load("burst", "--conns", "2000", "--concurrency", "20")
    bad = subprocess.run(ctl + ["set", "sample-rate", "2"], capture_output=True, text=True)
    assert bad.returncode == 1 and "must be a number 0-1" in bad.stderr
    status = rig.fresh_status()
    rewrite = status["totals"]["rewrite"]
    assert rewrite["sessions_skipped_paused"] == 50
    sampled = rewrite["sessions_started"]
    assert 2000 * 0.20 <= sampled <= 2000 * 0.30, f"{sampled} of 2000 sessions at sample rate 0.25"
    assert rewrite["sessions_skipped_sampled"] == 2000 - sampled
    assert status["runtime"] == {"paused": False, "sample_rate": 0.25, "log_level": "info", "seq": 3}
    assert all(ch["settings_seq"] == 3 for ch in status["children"])


def test_sighup_reloads_live_settings_and_metrics_endpoint_serves_counters(lab, tmp_path):
    conf = tmp_path / "tcpcopy.toml"
    conf.write_text('[tcpcopyd]\ntransfer = "198.18.0.2:8080-198.18.0.3:8080"\nintercepts = ["198.18.0.4"]\n'
                    'interfaces = ["eth0"]\nmetrics_listen = "127.0.0.1:9466"\n')
    rig = ReplicationRig(lab, tmp_path / "rig", tcpcopyd_args=("--config", str(conf)))
    try:
        rig.start()
        rig.load("mix", "--short", "20", "--keepalive", "0")
        rig.fresh_status()
        scrape = lab.run("online", [sys.executable, "-c",
                                    "import urllib.request;print(urllib.request.urlopen("
                                    "'http://127.0.0.1:9466/metrics', timeout=5).read().decode())"])
        assert 'tcpcopy_rewrite_sessions_started_total{index="0"}' in scrape.stdout
        assert 'tcpcopy_child_up{index="0",role="capture"} 1.0' in scrape.stdout
        conf.write_text(conf.read_text() + 'sample_percent = 50\nlog_level = "debug"\n')
        rig.procs["tcpcopyd"].send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and rig.status()["runtime"]["sample_rate"] != 0.5:
            time.sleep(0.1)
        assert rig.status()["runtime"] == {"paused": False, "sample_rate": 0.5, "log_level": "debug", "seq": 1}
    finally:
        rig.close()
