"""httpservice and the load generator, running inside the lab."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from appliance.lab.loadconn import get_request, post_request
from appliance.lab.netns import ADDR, Lab
from appliance.lab.records import load_records
from tests.lab.conftest import LoadRunner
from tests.lab.support import Services, read_line, send_line, wait_for

ONLINE = f"{ADDR['online']}:8080"

SEND_SCRIPT = """
import random, socket, sys
host, port, path, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
data = open(path, "rb").read()
rng = random.Random(seed)
sock = socket.create_connection((host, port), timeout=10)
pos = 0
while pos < len(data):
    size = rng.randint(1, 70000)
    sock.sendall(data[pos:pos + size])
    pos += size
answer = b""
while chunk := sock.recv(65536):
    answer += chunk
print(sock.getsockname()[1], answer.count(b"HTTP/1.1 200 OK"), answer.count(b"HTTP/1.1 "))
"""


def send_bytes(lab: Lab, host: str, server_host: str, payload_path: Path, seed: int) -> tuple[str, int, int]:
    """Send a file's bytes on one connection in random-sized pieces; returns (peer, 200s, all responses)."""
    done = lab.run(host, [sys.executable, "-c", SEND_SCRIPT, ADDR[server_host], "8080", str(payload_path),
                          str(seed)], timeout=30)
    port, ok, total = done.stdout.split()
    return f"{ADDR[host]}:{port}", int(ok), int(total)


def all_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_lines(path: Path, count: int) -> list[dict[str, Any]]:
    """All recorded lines once there are `count` of them (or what there is after the timeout)."""
    wait_for(lambda: len(all_lines(path)) >= count)
    return all_lines(path)


def wait_for_peer(path: Path, peer: str) -> dict[str, Any] | None:
    """The closed-connection record of peer, once it is written."""
    wait_for(lambda: peer in load_records(path))
    return load_records(path).get(peer)


def test_same_bytes_give_the_same_digest_on_two_servers(lab: Lab, services: Services, tmp_path: Path) -> None:
    body = random.Random(7).randbytes(3 * 1024 * 1024)
    payload = (get_request("lab", "/a") + post_request("lab", "/upload", body) + get_request("lab", "/b")
               + get_request("lab", "/c", close=True))
    payload_path = tmp_path / "payload.bin"
    payload_path.write_bytes(payload)
    online_rec, target_rec = tmp_path / "online.jsonl", tmp_path / "target.jsonl"
    services.start_http("online", online_rec)
    services.start_http("target", target_rec)

    online_peer, online_ok, _ = send_bytes(lab, "client", "online", payload_path, seed=1)
    target_peer, target_ok, _ = send_bytes(lab, "assistant", "target", payload_path, seed=2)

    assert (online_ok, target_ok) == (4, 4)
    online = wait_for_peer(online_rec, online_peer)
    target = wait_for_peer(target_rec, target_peer)
    expected = hashlib.sha256(payload).hexdigest()
    for record in (online, target):
        assert record is not None
        assert record["sha256"] == expected
        assert record["bytes"] == len(payload)
        assert record["requests"] == 4
        assert record["open"] is False and record["closed"] >= record["opened"]


def test_http10_closes_and_bad_requests_are_refused(lab: Lab, services: Services, tmp_path: Path) -> None:
    record = tmp_path / "online.jsonl"
    services.start_http("online", record)
    cases = {
        "http10": (b"GET /old HTTP/1.0\r\nHost: lab\r\n\r\n", (1, 1)),
        "chunked": (b"POST / HTTP/1.1\r\nHost: lab\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", (0, 1)),
        "garbage": (get_request("lab", "/ok") + b"NOT HTTP\r\n\r\n", (1, 2)),
    }
    for name, (payload, expected) in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(payload)
        peer, ok, total = send_bytes(lab, "client", "online", path, seed=0)
        assert (ok, total) == expected, name
        assert wait_for_peer(record, peer), name


def test_snapshots_while_open_and_records_at_close_and_at_stop(
    lab: Lab, services: Services, tmp_path: Path
) -> None:
    record = tmp_path / "online.jsonl"
    server = services.start_http("online", record)
    hold = ["--server", ONLINE, "hold", "--conns", "5", "--per-conn", "3"]
    argv = [sys.executable, "-m", "appliance.lab.load", *hold]

    first = services.start("client", argv, ready_prefix="READY", stdin=subprocess.PIPE)
    server.send_signal(signal.SIGUSR1)
    wait_for_lines(record, 5)
    snapshots = load_records(record, include_open=True)
    assert len(snapshots) == 5
    assert all(r["open"] and r["requests"] == 1 for r in snapshots.values())
    assert load_records(record) == {}
    send_line(first, "go")
    summary = json.loads(read_line(first, 30.0))
    assert first.wait(10) == 0
    assert (summary["requests"], summary["ok"], summary["connections"]) == (15, 15, 5)
    wait_for_lines(record, 10)
    closed = load_records(record)
    assert len(closed) == 5 and {r["requests"] for r in closed.values()} == {3}
    assert set(closed) == {f"{ADDR['client']}:{port}" for port in summary["local_ports"]}

    second = services.start("client", argv, ready_prefix="READY", stdin=subprocess.PIPE)
    assert services.stop(server) == 0
    at_stop = [r for r in all_lines(record) if r["open"] and r["peer"] not in closed]
    assert len(at_stop) == 5 and all(r["requests"] == 1 for r in at_stop)
    send_line(second, "go")
    assert second.wait(20) == 1


def test_mix_counts_match_the_server_and_repeat_with_the_same_seed(
    lab: Lab, services: Services, run_load: LoadRunner, tmp_path: Path
) -> None:
    mix = ["mix", "--short", "30", "--keepalive", "4", "--per-conn", "10", "--post-every", "3",
           "--post-size", "65536", "--concurrency", "5"]
    digests = []
    for run in (1, 2):
        record = tmp_path / f"online-{run}.jsonl"
        server = services.start_http("online", record)
        code, summary = run_load("client", ONLINE, *mix)
        assert code == 0, summary
        assert (summary["requests"], summary["ok"], summary["errors"]) == (70, 70, 0)
        assert summary["connections"] == summary["distinct_local_ports"] == 34
        lines = wait_for_lines(record, 34)
        assert len(lines) == 34
        assert sum(r["requests"] for r in lines) == 70
        assert {r["peer"] for r in lines} == {f"{ADDR['client']}:{p}" for p in summary["local_ports"]}
        keepalive = [r for r in lines if r["requests"] == 10]
        assert len(keepalive) == 4 and len({r["sha256"] for r in keepalive}) == 4
        assert all(r["bytes"] > 3 * 65536 for r in keepalive)
        digests.append(Counter(r["sha256"] for r in lines))
        services.stop(server)
    assert digests[0] == digests[1]


def test_paced_holds_the_rate_on_one_connection(
    lab: Lab, services: Services, run_load: LoadRunner, tmp_path: Path
) -> None:
    record = tmp_path / "online.jsonl"
    services.start_http("online", record)
    code, summary = run_load("client", ONLINE, "paced", "--rate", "3000", "--duration", "2")
    assert code == 0, summary
    assert summary["requests"] == summary["ok"] == 6000
    assert summary["connections"] == 1
    assert summary["rate_achieved"] >= 2400
    [line] = wait_for_lines(record, 1)
    assert line["requests"] == 6000
    assert line["peer"] == f"{ADDR['client']}:{summary['local_ports'][0]}"


def test_paced_against_a_slow_server_pipelines(
    lab: Lab, services: Services, run_load: LoadRunner, tmp_path: Path
) -> None:
    services.start_http("online", tmp_path / "online.jsonl", delay_ms=20)
    code, summary = run_load("client", ONLINE, "paced", "--rate", "1000", "--duration", "1")
    assert code == 0, summary
    assert summary["ok"] == 1000
    assert summary["latency_ms"]["p50"] >= 20
    assert summary["rate_achieved"] >= 800


def test_burst_reuses_client_ports(
    lab: Lab, services: Services, run_load: LoadRunner, tmp_path: Path
) -> None:
    record = tmp_path / "online.jsonl"
    services.start_http("online", record)
    code, summary = run_load("client", ONLINE, "burst", "--conns", "400", "--concurrency", "8",
                             "--port-range", "42000-42019")
    assert code == 0, summary
    assert summary["ok"] == summary["connections"] == 400
    assert set(summary["local_ports"]) <= set(range(42000, 42020))
    lines = wait_for_lines(record, 400)
    assert len(lines) == 400
    assert max(Counter(r["peer"] for r in lines).values()) > 1


def test_every_mode_stops_at_its_cap_and_reports_failures(lab: Lab, run_load: LoadRunner) -> None:
    code, summary = run_load("client", f"{ADDR['online']}:9", "burst", "--conns", "3", "--concurrency", "1")
    assert code == 1
    assert summary["connect_failures"] == summary["errors"] == 3
    code, summary = run_load("client", f"{ADDR['online']}:9", "--max-seconds", "1", "paced", "--rate", "10",
                             "--duration", "30")
    assert code == 1 and summary["connections"] == 0
    # The target's SYN-ACK goes to the assistant and dies there: this connect hangs until the cap.
    code, summary = run_load("client", f"{ADDR['target']}:8080", "--max-seconds", "1", "--timeout", "5",
                             "mix", "--short", "1", "--keepalive", "0")
    assert code == 1
    assert summary["timed_out"] is True and summary["elapsed"] < 3
