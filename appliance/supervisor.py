"""tcpcopyd's supervisor: spawns, watches, restarts and stops the children; answers control.

One loop, no threads. It waits on the control socket, the stats bus, a signal wake-up fd and
the children's sentinels; signal handlers only record. Children start with the spawn method
and get their spec as JSON. Stop order: captures, then the responses relay, then the rewrite
workers (which reset their sessions on the target), each bounded by a timeout.
"""

from __future__ import annotations

import enum
import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from appliance import wire
from appliance.config import (
    CaptureSpec, OnlineConfig, ResponsesSpec, RewriteSpec, cpu_plan, spec_to_json,
)
from appliance.control import (
    COMMANDS, Request, child_rows, decode_request, encode_reply, error_reply, summary_line,
)
from appliance.errors import EXIT_BOOT_ERROR, EXIT_OK, HaltAppliance

log = logging.getLogger(__name__)

STARTSECS = 1.0          # a child that dies sooner failed to boot
STARTRETRIES = 3         # failed boots in a row before the appliance halts
BACKOFF_MAX = 2.0
GRACEFUL_TIMEOUT = 5.0
SUMMARY_INTERVAL = 30.0
STOP_ORDER = ("capture", "responses", "rewrite")


class ChildState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPED = "stopped"
    FATAL = "fatal"


@dataclass
class Child:
    role: str
    index: int
    entry: str                 # "workers.capture:main"
    spec_json: str
    cpus: tuple[int, ...]
    process: Any = None
    state: ChildState = ChildState.STOPPED
    started_at: float = 0.0
    restarts: int = 0
    failed_boots: int = 0
    retry_at: float = 0.0
    last_stats: dict = field(default_factory=dict)
    last_heartbeat: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def _child_entry(entry: str, spec_json: str) -> None:
    """Runs in the spawned child: import the role's module and hand it the spec."""
    module, _, func = entry.partition(":")
    mod = __import__(module, fromlist=[func])
    getattr(mod, func)(spec_json)


class Supervisor:
    def __init__(self, config: OnlineConfig) -> None:
        self.config = config
        self.children: list[Child] = []
        self.started = time.time()
        self.stopping = False
        self.exit_code = EXIT_OK
        self._signals: list[int] = []
        self._mp = multiprocessing.get_context("spawn")
        self._plan()

    def _plan(self) -> None:
        c = self.config
        n = c.workers
        caps = cpu_plan(len(c.interfaces), 0, c.pin_cpus)
        rews = cpu_plan(n, len(c.interfaces), c.pin_cpus)
        resp = cpu_plan(1, len(c.interfaces) + n, c.pin_cpus)
        for k in range(n):
            spec = RewriteSpec(k, n, c.run_dir, c.transfers, c.engine, rews[k])
            self.children.append(Child("rewrite", k, "workers.rewrite:main", spec_to_json(spec), rews[k]))
        spec_r = ResponsesSpec(n, c.run_dir, c.intercepts, resp[0])
        self.children.append(Child("responses", 0, "workers.responses:main", spec_to_json(spec_r), resp[0]))
        for i, iface in enumerate(c.interfaces):
            spec_c = CaptureSpec(i, iface, c.bpf, n, c.run_dir, caps[i], buffer_bytes=c.buffer_bytes)
            self.children.append(Child("capture", i, "workers.capture:main", spec_to_json(spec_c), caps[i]))

    # ---- life cycle -------------------------------------------------------------------------
    def run(self) -> int:
        os.makedirs(self.config.run_dir, mode=0o700, exist_ok=True)
        self.ctx = zmq.Context()
        self.ctl = self.ctx.socket(zmq.ROUTER)
        self.ctl.linger = 0
        self.ctl.bind(wire.control_endpoint(self.config.run_dir))
        os.chmod(os.path.join(self.config.run_dir, "ctl"), 0o600)
        self.stats = self.ctx.socket(zmq.SUB)
        self.stats.linger = 0
        self.stats.setsockopt(zmq.SUBSCRIBE, b"")
        self.stats.bind(wire.stats_endpoint(self.config.run_dir))
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._record_signal)
        try:
            for child in self.children:   # rewrite workers bind their queues, so they go first
                self._spawn(child)
            log.info("tcpcopyd running: %d rewrite worker(s), %d capture(s), intercepts %s",
                     self.config.workers, len(self.config.interfaces), ", ".join(self.config.intercepts))
            self._loop()
        except HaltAppliance as halt:
            log.error("halting: %s", halt.reason)
            self.exit_code = halt.code
        finally:
            self._stop_all()
            self._read_stats()          # the children's last frames, sent as they stopped
            self._log_summary()
            signal.set_wakeup_fd(-1)
            self.ctl.close(linger=0)
            self.stats.close(linger=0)
            self.ctx.term()
            for path in ("ctl", "stats"):
                try:
                    os.unlink(os.path.join(self.config.run_dir, path))
                except FileNotFoundError:
                    pass
        return self.exit_code

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.ctl, zmq.POLLIN)
        poller.register(self.stats, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        next_summary = time.monotonic() + SUMMARY_INTERVAL
        while not self.stopping:
            if time.monotonic() >= next_summary:
                next_summary = time.monotonic() + SUMMARY_INTERVAL
                self._log_summary()
            sentinels = {c.process.sentinel: c for c in self.children
                         if c.process is not None and c.state in (ChildState.STARTING, ChildState.RUNNING)}
            for fd in sentinels:
                poller.register(fd, zmq.POLLIN)
            events = dict(poller.poll(200))
            for fd in sentinels:
                poller.unregister(fd)
            if self._wake_r.fileno() in events:
                self._drain_wakeups()
            while self._signals:
                self._handle_signal(self._signals.pop(0))
            if self.stats in events:
                self._read_stats()
            if self.ctl in events:
                self._serve_control()
            self._reap_and_manage(time.monotonic())

    def _log_summary(self) -> None:
        line, weak = summary_line(child_rows(self, time.time()))
        log.info("summary: %s", line)
        if weak:
            log.warning("many sessions can't be established with the target: see handshake_timeouts")

    def _spawn(self, child: Child) -> None:
        child.process = self._mp.Process(target=_child_entry, args=(child.entry, child.spec_json),
                                         name=f"{child.role}-{child.index}", daemon=False)
        child.process.start()
        child.state = ChildState.STARTING
        child.started_at = time.monotonic()
        log.info("started %s %d pid %d cpus %s", child.role, child.index, child.pid, child.cpus or "any")

    def _reap_and_manage(self, now: float) -> None:
        for child in self.children:
            proc = child.process
            if child.state is ChildState.STARTING and now - child.started_at >= STARTSECS:
                child.state = ChildState.RUNNING          # STARTING -> RUNNING
                child.failed_boots = 0
            if child.state in (ChildState.STARTING, ChildState.RUNNING) and proc is not None \
                    and not proc.is_alive():
                proc.join(0)
                code = proc.exitcode
                if child.state is ChildState.STARTING:
                    child.failed_boots += 1
                    if child.failed_boots >= STARTRETRIES:
                        child.state = ChildState.FATAL     # BACKOFF -> FATAL
                        raise HaltAppliance(f"{child.role} {child.index} failed to boot "
                                            f"{child.failed_boots} times (exit {code})", EXIT_BOOT_ERROR)
                log.warning("%s %d (pid %s) exited with %s; restarting", child.role, child.index,
                            proc.pid, code)
                child.state = ChildState.BACKOFF           # RUNNING -> BACKOFF
                child.retry_at = now + min(BACKOFF_MAX, 0.1 * 2 ** child.failed_boots)
            if child.state is ChildState.BACKOFF and now >= child.retry_at:
                child.restarts += 1
                self._spawn(child)                         # BACKOFF -> STARTING

    def _stop_all(self) -> None:
        for role in STOP_ORDER:
            group = [c for c in self.children if c.role == role and c.process is not None]
            for child in group:
                if child.process.is_alive():
                    child.process.terminate()
            deadline = time.monotonic() + GRACEFUL_TIMEOUT
            for child in group:
                child.process.join(max(0.0, deadline - time.monotonic()))
                if child.process.is_alive():
                    log.warning("%s %d did not stop in time; killing", child.role, child.index)
                    child.process.kill()
                    child.process.join(1.0)
                child.state = ChildState.STOPPED

    # ---- signals and control ----------------------------------------------------------------
    def _record_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    def _handle_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.dispatch(Request(id="signal", command="stop", args={}))
        elif signum == signal.SIGHUP:
            log.info("SIGHUP: nothing to reload yet")

    def dispatch(self, request: Request) -> dict:
        handler = COMMANDS.get(request.command)
        if handler is None:
            return error_reply(request.id, f"unknown command {request.command!r}", "ENOENT")
        return handler(self, request)

    def _serve_control(self) -> None:
        for _ in range(16):
            try:
                parts = self.ctl.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) < 3:
                continue
            identity, body = parts[0], parts[-1]
            request, reply = decode_request(body)
            if request is not None:
                reply = self.dispatch(request)
            self.ctl.send_multipart([identity, b"", encode_reply(reply)])

    def _read_stats(self) -> None:
        for _ in range(256):
            try:
                frame = self.stats.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                obj = wire.decode_json(frame, wire.KIND_STATS)
            except wire.WireError:
                continue
            for child in self.children:
                if child.role == obj.get("role") and child.index == obj.get("index") \
                        and child.pid == obj.get("pid"):
                    child.last_stats = obj
                    child.last_heartbeat = time.time()

    def request_stop(self) -> None:
        self.stopping = True
