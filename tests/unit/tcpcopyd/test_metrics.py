"""The metrics endpoint never blocks the supervisor's loop (issue 14: each idle connection stalled it
0.2 s). MetricsServer on its own with an injected clock, then a real supervisor loop (no children)
answering control requests while idle connections sit on the metrics port."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from appliance.config.loader import OnlineConfig
from appliance.core import wire
from appliance.engine.params import EngineParams
from appliance.tcpcopyctl.cli import call
from appliance.tcpcopyd.metrics import CLIENT_TIMEOUT, MAX_CLIENTS, MetricsServer

ROWS = [{"role": "rewrite", "index": 0, "pid": 12, "restarts": 0,
         "counters": {"packets_sent": 5, "sessions_active": 2, "send_errors": {"EPERM": 1}}}]


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer("127.0.0.1:0")
    yield srv
    srv.close()


def connect(srv: MetricsServer, n: int = 1, now: float = 0.0) -> list[socket.socket]:
    """n connections, each accepted (at `now`) before the next: the listen backlog is short."""
    out = []
    for _ in range(n):
        expected = len(srv._clients) + srv.refused + 1
        out.append(socket.create_connection(srv.address, timeout=5))
        serve_until(srv, lambda want=expected: len(srv._clients) + srv.refused == want, now)
    return out


def serve_until(srv: MetricsServer, done: Any, now: float = 0.0) -> None:
    """Serve (at clock `now`) as the supervisor's loop does, waking on the server's fd, until `done()`."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        srv.serve(lambda: ROWS, now)
        if done():
            return
        select.select([srv.fileno()], [], [], 0.05)
    raise AssertionError("never done")


def test_a_scrape_is_answered_while_idle_connections_wait(server):
    idle = connect(server, 20)
    scraper, = connect(server)
    scraper.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    serve_until(server, lambda: server.served == 1)
    assert time.monotonic() - started < 1.0           # was 0.2 s for each idle connection ahead of it
    answer = b"".join(iter(lambda: scraper.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.0 200 OK")
    assert b'tcpcopy_rewrite_packets_sent_total{index="0"} 5.0' in answer
    assert b'tcpcopy_rewrite_sessions_active{index="0"} 2.0' in answer
    for s in idle + [scraper]:
        s.close()


def test_a_request_in_pieces_and_a_wrong_method():
    srv = MetricsServer("127.0.0.1:0")
    try:
        slow, post = connect(srv, 2)
        slow.sendall(b"GET /metrics HTTP/1.0\r\n")
        post.sendall(b"POST /metrics HTTP/1.0\r\n\r\n")
        serve_until(srv, lambda: srv.served == 1)     # the POST; the GET is not complete yet
        assert post.recv(100).startswith(b"HTTP/1.0 405")
        slow.sendall(b"\r\n")
        serve_until(srv, lambda: srv.served == 2)
        assert slow.recv(100).startswith(b"HTTP/1.0 200")
    finally:
        srv.close()


def test_idle_connections_are_closed_at_their_deadline(server):
    idle = connect(server, 5, now=100.0)
    server.serve(lambda: ROWS, 100.0 + CLIENT_TIMEOUT - 0.01)
    assert server.timed_out == 0
    server.serve(lambda: ROWS, 100.0 + CLIENT_TIMEOUT)
    assert server.timed_out == 5 and not server._clients
    for s in idle:
        assert s.recv(10) == b""                      # closed by the server, unanswered
        s.close()


def test_connections_beyond_the_limit_are_refused(server):
    extra = 3
    clients = connect(server, MAX_CLIENTS + extra)
    serve_until(server, lambda: server.refused == extra)
    assert len(server._clients) == MAX_CLIENTS
    for s in clients:
        s.close()


# ---- the supervisor's loop ------------------------------------------------------------------------
def _wait(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _operator(sup: Any, run_dir: str, results: dict[str, Any]) -> None:
    """Runs in a thread of the test (the supervisor itself stays single-threaded in the main thread)."""
    try:
        _wait(lambda: os.path.exists(os.path.join(run_dir, "ctl")) and getattr(sup, "metrics", None),
              "the supervisor")
        idle = [socket.create_connection(sup.metrics.address, timeout=5) for _ in range(20)]
        started = time.monotonic()
        for _ in range(10):
            reply = call(run_dir, "status", timeout=3.0)
            assert reply is not None and reply["status"] == "ok"
        results["ten_requests"] = time.monotonic() - started
        host, port = sup.metrics.address
        results["scrape"] = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=3).status
        # bad frames on the stats socket are counted, and the supervisor goes on
        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUSH)
        pub.connect(wire.stats_endpoint(run_dir))
        bad = [b"junk", bytes([wire.VERSION, wire.KIND_STATS]) + b'{"pid": ' + b"9" * 5000 + b"}",
               wire.encode_json(wire.KIND_STATS, {"role": "rewrite", "counters": [1]})]
        try:
            def counted() -> bool:
                for frame in bad:
                    pub.send(frame)
                reply = call(run_dir, "status", timeout=3.0)
                assert reply is not None
                return reply["data"]["supervisor"]["bad_frames"]["stats"] >= len(bad)
            _wait(counted, "bad stats frames counted")
        finally:
            pub.close(linger=0)
            ctx.term()
        for s in idle:
            s.close()
    except BaseException as exc:                  # handed to the test's main thread
        results["error"] = exc
    finally:
        call(run_dir, "stop", timeout=3.0)


def test_idle_metrics_connections_do_not_delay_control_requests(tmp_path, monkeypatch, restored_signals):
    from appliance.tcpcopyd.policy import LivePolicy
    from appliance.tcpcopyd.supervisor import Supervisor
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    run_dir = str(tmp_path / "run")
    config = OnlineConfig(transfers="8080-198.18.0.3:8080", intercepts=("198.18.0.4",), interfaces=(),
                          bpf="tcp", workers=1, run_dir=run_dir, engine=EngineParams(), pin_cpus=False,
                          metrics_listen="127.0.0.1:0")
    sup = Supervisor(config, LivePolicy())
    sup.children = []                                # the loop alone: nothing to spawn
    results: dict[str, Any] = {}
    operator = threading.Thread(target=_operator, args=(sup, run_dir, results), daemon=True)
    operator.start()
    assert sup.run() == 0
    operator.join(10)
    if "error" in results:
        raise results["error"]
    # 20 idle connections used to cost 0.2 s each, in front of the requests
    assert results["ten_requests"] < 1.0 and results["scrape"] == 200


def test_compare_latency_histograms_of_both_sides_are_exported():
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from appliance.tcpcopyd.metrics import _RowsCollector
    from tests.unit.tcpcopyd.test_handlers import _compare_rows
    registry = CollectorRegistry()
    registry.register(_RowsCollector(_compare_rows))
    text = generate_latest(registry).decode()
    assert 'tcpcopy_compare_latency_seconds_count{side="online"} 4.0' in text
    assert 'tcpcopy_compare_latency_seconds_count{side="target"} 4.0' in text
    assert 'tcpcopy_rewrite_compare_total{index="0",kind="different_status"} 1.0' in text
