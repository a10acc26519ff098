"""What every child process of tcpcopyd does the same way.

Runs in the child: process title, CPU pinning, signals (SIGTERM sets a flag, SIGINT is the
parent's business), its own ZeroMQ context made after pinning, the 1 Hz stats/heartbeat frame,
exit when the parent goes away, and closing sockets before the context.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import setproctitle
import zmq

from appliance.core import wire
from appliance.core.logs import setup_logging
from appliance.tcpcopyd.lifecycle import HEARTBEAT_INTERVAL

log = logging.getLogger(__name__)

STATS_INTERVAL = HEARTBEAT_INTERVAL   # the supervisor kills a child that misses three (lifecycle)
RUNTIME_POLL = 0.05   # runtime settings are looked for this often, not on every loop turn
LAST_WORDS = 1.0           # seconds the final stats frame may take to leave at exit


class Worker:
    """Base of a child's main loop; subclasses implement `setup`, `step` and `counters`."""

    role = "worker"

    def __init__(self, index: int, run_dir: str, cpus: tuple[int, ...], title: str) -> None:
        self.index = index
        self.run_dir = run_dir
        self.cpus = cpus
        self.title = title
        self.stopping = False
        self.parent_pid = os.getppid()
        self._sockets: list[zmq.Socket] = []
        self.ctx: zmq.Context | None = None
        self._next_stats = 0.0
        self._settings_seq: Any = None
        self.started = time.time()
        self.loop_turns = 0      # each is a wake-up: at moderate rates their cost, not the packets', dominates

    # -- subclass interface --
    def setup(self) -> None: ...

    def step(self, now: float) -> None: ...

    def counters(self) -> dict[str, Any]:
        return {}

    def shutdown(self) -> None: ...

    def apply_runtime(self, runtime: dict[str, Any]) -> None:
        """Runtime settings from the supervisor (pause, sample rate, log level); on change only."""
        level = runtime.get("log_level")
        if isinstance(level, str):
            logging.getLogger().setLevel(level.upper())

    # -- helpers --
    def socket(self, kind: int, *, bind: str | None = None, connect: str | None = None,
               hwm: int | None = None) -> zmq.Socket:
        """A socket of this child's context, closed at exit. Its ZMQ_MAXMSGSIZE fits what it can
        legitimately receive: segment batches on a PULL (a rewrite worker's queue), JSON frames
        (settings) on anything else; the push and publish sockets receive nothing."""
        assert self.ctx is not None
        sock = self.ctx.socket(kind)
        sock.linger = 0
        limit = wire.MAX_SEGMENT_MESSAGE if kind == zmq.PULL else wire.MAX_JSON_MESSAGE
        sock.setsockopt(zmq.MAXMSGSIZE, limit)
        if hwm is not None:
            sock.sndhwm = hwm
            sock.rcvhwm = hwm
        if bind:
            sock.bind(bind)
        if connect:
            sock.connect(connect)
        self._sockets.append(sock)
        return sock

    def run(self) -> int:
        """This is the child's whole life: set up, loop until told to stop, clean up."""
        setproctitle.setproctitle(self.title)
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_term)
        self.ctx = zmq.Context()
        try:
            # PUSH, not PUB: frames queue from connect() on, so a child that lives for a moment (a short
            # offline replay) is still heard; a full queue (the supervisor busy) drops, counted nowhere
            # because the next heartbeat carries the same totals
            self.stats_sock = self.socket(zmq.PUSH, connect=wire.stats_endpoint(self.run_dir), hwm=64)
            self.stats_sock.linger = int(LAST_WORDS * 1000)
            self.runtime_sock = self.socket(zmq.SUB, connect=wire.runtime_endpoint(self.run_dir))
            self.runtime_sock.setsockopt(zmq.SUBSCRIBE, b"")
            self.setup()
            next_runtime = 0.0
            while not self.stopping:
                self.loop_turns += 1
                now = time.monotonic()
                if now >= next_runtime:
                    next_runtime = now + RUNTIME_POLL
                    self._poll_runtime()
                self.step(now)
                if now >= self._next_stats:
                    self._next_stats = now + STATS_INTERVAL
                    self.publish_stats()
                    if os.getppid() != self.parent_pid:
                        log.warning("%s: parent went away; exiting", self.title)
                        break
            self.shutdown()
            self.publish_stats()
        finally:
            for sock in self._sockets:
                sock.close()             # each socket's own linger: 0 unless set otherwise
            self.ctx.term()
        return 0

    def _poll_runtime(self) -> None:
        latest = None
        while True:
            try:
                latest = self.runtime_sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        if latest is None:
            return
        try:
            runtime = wire.decode_json(latest, wire.KIND_RUNTIME)
        except wire.WireError:
            return
        if runtime.get("seq") != self._settings_seq:
            self._settings_seq = runtime.get("seq")
            self.apply_runtime(runtime)
            self._next_stats = 0.0       # the heartbeat echoes the new seq at once: tcpcopyctl waits for it

    def publish_stats(self) -> None:
        frame = wire.encode_json(wire.KIND_STATS, {
            "role": self.role, "index": self.index, "pid": os.getpid(), "time": time.time(),
            "started": self.started, "cpus": list(self.cpus), "settings_seq": self._settings_seq,
            "counters": {**self.counters(), "loop_turns": self.loop_turns},
        })
        try:
            self.stats_sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            pass                      # the supervisor is busy; the next heartbeat will do

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True


PROFILE_DIR_ENV = "TCPCOPY_CPROFILE_DIR"


def child_main(factory: Callable[[], Worker]) -> None:
    """Entry point of a spawned child: logging, run, exit code. With TCPCOPY_CPROFILE_DIR set
    (a diagnostic, see perf/README.md), the child's main thread is profiled by CPU time, not
    wall time, and the profile is written there as ROLE-PID.prof when it exits."""
    setup_logging()
    try:
        worker = factory()
        profile_dir = os.environ.get(PROFILE_DIR_ENV)
        if profile_dir:
            import cProfile
            profile = cProfile.Profile(time.thread_time)
            code = profile.runcall(worker.run)
            profile.dump_stats(os.path.join(profile_dir, f"{worker.role}-{os.getpid()}.prof"))
        else:
            code = worker.run()
    except Exception:
        log.exception("child crashed")
        code = 1
    raise SystemExit(code)
