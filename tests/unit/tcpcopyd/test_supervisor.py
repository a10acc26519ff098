"""The supervisor's whole loop with fake children (no root, no spawn): start, heartbeats, status,
restart after a crash, halt on children that never boot, stop order, and the offline run policy.

The fake children are threads behind the ProcessFactory seam: they publish real heartbeats on the
supervisor's stats socket and exit by closing their sentinel pipe, as a process would.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from appliance.config.loader import OnlineConfig
from appliance.core import wire
from appliance.core.errors import EXIT_BOOT_ERROR, EXIT_OK
from appliance.engine.params import EngineParams
from appliance.tcpcopyctl.cli import call
from appliance.tcpcopyd.policy import LivePolicy, OfflinePolicy
from appliance.tcpcopyd.status_schema import check
from appliance.tcpcopyd.supervisor import Supervisor

BEAT = 0.05                 # the fakes' heartbeat period: quicker than the real one, same frames
_pids = itertools.count(4_000_000)      # above pid_max: psutil finds no such process


class FakeChild:
    """A child process as the supervisor sees it; its body runs in a thread."""

    def __init__(self, name: str, body: Callable[[FakeChild], int], run_dir: str, log: list[str]) -> None:
        self.name = name
        self.role, _, index = name.rpartition("-")
        self.index = int(index)
        self.body, self.run_dir, self.log = body, run_dir, log
        self.pid: int | None = None
        self.exitcode: int | None = None
        self.counters: dict[str, Any] = {}
        self.stop = threading.Event()
        self._r, self._w = os.pipe()
        self._thread = threading.Thread(target=self._main, daemon=True)

    @property
    def sentinel(self) -> int:
        return self._r

    def start(self) -> None:
        self.pid = next(_pids)
        self.log.append(f"start {self.name}")
        self._thread.start()

    def is_alive(self) -> bool:
        return self.pid is not None and self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def terminate(self) -> None:
        self.log.append(f"terminate {self.name}")
        self.stop.set()

    def kill(self) -> None:
        self.stop.set()

    def beat(self, pub: zmq.Socket) -> None:
        pub.send(wire.encode_json(wire.KIND_STATS, {"role": self.role, "index": self.index, "pid": self.pid,
                                                   "counters": dict(self.counters)}))

    def _main(self) -> None:
        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUSH)
        pub.linger = 1000
        pub.connect(wire.stats_endpoint(self.run_dir))
        try:
            code = self.body(self, pub)
            self.beat(pub)                           # the last counters, as a worker says them at exit
        finally:
            pub.close()
            ctx.term()
        self.exitcode = code
        os.close(self._w)                            # the sentinel becomes readable: the process ended


def healthy(counters: dict[str, Any]) -> Callable[..., int]:
    def body(child: FakeChild, pub: zmq.Socket) -> int:
        child.counters = dict(counters)
        while not child.stop.wait(BEAT):
            child.beat(pub)
        return 0
    return body


class Factory:
    """The ProcessFactory: picks each child's body by its name and incarnation."""

    def __init__(self, run_dir: str, bodies: dict[str, Callable[[int], Callable[..., int]]]) -> None:
        self.run_dir, self.bodies = run_dir, bodies
        self.log: list[str] = []
        self.spawned: dict[str, int] = {}
        self.children: list[FakeChild] = []
        self.first_spawn = threading.Event()     # the supervisor binds its sockets before it spawns

    def __call__(self, entry: str, spec_json: str, name: str) -> FakeChild:
        n = self.spawned.get(name, 0)
        self.spawned[name] = n + 1
        role = name.rpartition("-")[0]
        child = FakeChild(name, self.bodies.get(name, self.bodies[role])(n), self.run_dir, self.log)
        self.children.append(child)
        self.first_spawn.set()
        return child


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> str:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    return str(tmp_path / "run")


def config(run_dir: str, **overrides: Any) -> OnlineConfig:
    fields: dict[str, Any] = dict(transfers="8080-198.18.0.3:8080", intercepts=("198.18.0.4",),
                                  interfaces=("eth0",), bpf="tcp", workers=2, run_dir=run_dir,
                                  engine=EngineParams(), pin_cpus=False, startsecs=0.2, startretries=2,
                                  graceful_timeout=2.0)
    fields.update(overrides)
    return OnlineConfig(**fields)


def operate(run_dir: str, ready: threading.Event, steps: Callable[[Callable[[], dict[str, Any]]], None],
            results: dict[str, Any]) -> None:
    """Runs in a thread (the supervisor stays single-threaded in the main thread); always stops it."""
    def status() -> dict[str, Any]:
        reply = call(run_dir, "status", timeout=3.0)
        assert reply is not None and reply["status"] == "ok", reply
        return reply["data"]
    try:
        assert ready.wait(10), "the supervisor never spawned a child"
        steps(status)
    except BaseException as exc:        # noqa: B036 - handed to the test's thread
        results["error"] = exc
    finally:
        call(run_dir, "stop", timeout=3.0)


def until(status: Callable[[], dict[str, Any]], condition: Callable[[dict[str, Any]], bool], what: str) -> dict:
    """Asks for status until `condition` holds: each request is a round trip the supervisor paces."""
    deadline = time.monotonic() + 10
    while True:
        doc = status()
        if condition(doc):
            return doc
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {doc['children']}"


def run_with_operator(sup: Supervisor, factory: Factory, run_dir: str, steps: Callable[..., None]) -> int:
    results: dict[str, Any] = {}
    operator = threading.Thread(target=operate, args=(run_dir, factory.first_spawn, steps, results), daemon=True)
    operator.start()
    code = sup.run()
    operator.join(10)
    if "error" in results:
        raise results["error"]
    return code


@pytest.mark.hang_limit(30)
def test_children_start_report_in_status_and_stop_captures_first(run_dir, restored_signals):
    factory = Factory(run_dir, {"rewrite": lambda n: healthy({"sessions_started": 3}),
                                "capture": lambda n: healthy({"captured": 10})})
    sup = Supervisor(config(run_dir), LivePolicy(), spawn=factory)

    def steps(status: Callable[[], dict[str, Any]]) -> None:
        doc = until(status, lambda d: all(c["state"] == "running" and c["counters"] for c in d["children"]),
                    "every child running and heard")
        assert check(doc) == []
        assert sorted((c["role"], c["index"]) for c in doc["children"]) == [("capture", 0), ("rewrite", 0),
                                                                           ("rewrite", 1)]
        assert doc["totals"]["rewrite"]["sessions_started"] == 6 and doc["funnel"]["captured"] == 10

    assert run_with_operator(sup, factory, run_dir, steps) == EXIT_OK
    stops = [line for line in factory.log if line.startswith("terminate")]
    assert stops == ["terminate capture-0", "terminate rewrite-0", "terminate rewrite-1"]
    assert all(not c.is_alive() for c in factory.children)
    assert not os.path.exists(os.path.join(run_dir, "ctl"))


@pytest.mark.hang_limit(30)
def test_a_child_that_crashes_is_started_again_and_its_counters_add_up(run_dir, restored_signals):
    seen_running = threading.Event()

    def capture(n: int) -> Callable[..., int]:
        if n > 0:
            return healthy({"captured": 7})

        def crash_after_running(child: FakeChild, pub: zmq.Socket) -> int:
            child.counters = {"captured": 5}
            while not seen_running.wait(BEAT):      # status showed it running: a crash, not a failed boot
                child.beat(pub)
            return 1
        return crash_after_running

    factory = Factory(run_dir, {"rewrite": lambda n: healthy({}), "capture": capture})
    sup = Supervisor(config(run_dir, workers=1), LivePolicy(), spawn=factory)

    def steps(status: Callable[[], dict[str, Any]]) -> None:
        until(status, lambda d: any(c["role"] == "capture" and c["state"] == "running"
                                    and c["counters"].get("captured") == 5 for c in d["children"]),
              "the first capture running and heard")
        seen_running.set()
        doc = until(status, lambda d: any(c["role"] == "capture" and c["restarts"] == 1 and c["state"] == "running"
                                          and c["counters"].get("captured") == 12 for c in d["children"]),
                    "the capture restarted, both incarnations counted")
        assert doc["totals"]["capture"]["captured"] == 12

    assert run_with_operator(sup, factory, run_dir, steps) == EXIT_OK
    assert factory.spawned["capture-0"] == 2 and factory.spawned["rewrite-0"] == 1


@pytest.mark.hang_limit(30)
def test_a_child_that_never_boots_halts_the_run(run_dir, restored_signals):
    factory = Factory(run_dir, {"rewrite": lambda n: healthy({}), "capture": lambda n: (lambda child, pub: 1)})
    sup = Supervisor(config(run_dir, workers=1), LivePolicy(), spawn=factory)
    assert sup.run() == EXIT_BOOT_ERROR
    assert factory.spawned["capture-0"] == 2          # startretries = 2 failed boots in a row
    assert all(not c.is_alive() for c in factory.children)


@pytest.mark.hang_limit(30)
def test_offline_the_reader_waits_for_the_answers_and_its_end_ends_the_run(run_dir, restored_signals):
    heard_at: list[float] = []

    def worker(n: int) -> Callable[..., int]:
        def body(child: FakeChild, pub: zmq.Socket) -> int:
            ready = time.monotonic() + 0.3
            while not child.stop.wait(BEAT):
                if time.monotonic() >= ready and not child.counters:
                    heard_at.append(time.monotonic())
                    child.counters = {"intercepts_heard": 1, "segments_received": 50, "sessions_active": 0}
                child.beat(pub)
            return 0
        return body

    reader_started: list[float] = []

    def reader(n: int) -> Callable[..., int]:
        def body(child: FakeChild, pub: zmq.Socket) -> int:
            reader_started.append(time.monotonic())
            child.counters = {"packets_kept": 100}
            child.beat(pub)
            return 0
        return body

    factory = Factory(run_dir, {"rewrite": worker, "reader": reader})
    policy = OfflinePolicy(100, tail=3.0, progress=False)
    sup = Supervisor(config(run_dir, interfaces=(), offline=("x.pcap",), speed=0.0), policy, spawn=factory)
    assert sup.run() == EXIT_OK              # by itself: 2 x 50 of the reader's 100 handed over, no session open
    assert len(heard_at) == 2 and reader_started and reader_started[0] >= max(heard_at)
    assert policy.done_at is not None and policy.drained_at is not None
    assert factory.spawned == {"rewrite-0": 1, "rewrite-1": 1, "reader-0": 1}


@pytest.mark.hang_limit(30)
def test_offline_sessions_still_open_when_the_tail_runs_out_end_the_run(run_dir, restored_signals):
    factory = Factory(run_dir, {"rewrite": lambda n: healthy({"intercepts_heard": 1, "segments_received": 5,
                                                              "sessions_active": 1}),
                                "reader": lambda n: (lambda child, pub: 0)})
    policy = OfflinePolicy(5, tail=0.5, progress=False)
    sup = Supervisor(config(run_dir, workers=1, interfaces=(), offline=("x.pcap",)), policy, spawn=factory)
    assert sup.run() == EXIT_OK
    assert policy.done_at is not None and policy.drained_at is None


@pytest.mark.hang_limit(30)
def test_offline_a_failing_reader_ends_the_run_with_its_exit_code(run_dir, restored_signals):
    def worker(n: int) -> Callable[..., int]:
        return healthy({"intercepts_heard": 1})
    factory = Factory(run_dir, {"rewrite": worker, "reader": lambda n: (lambda child, pub: 65)})
    sup = Supervisor(config(run_dir, interfaces=(), offline=("x.pcap",)), OfflinePolicy(1, 3.0, progress=False),
                     spawn=factory)
    assert sup.run() == 65
