"""tcpcopyd's supervisor: spawns, watches, restarts and stops the children; answers control.

One loop, no threads. It waits on the control socket, the stats bus, the metrics listener,
a signal wake-up fd and the children's sentinels; signal handlers only record. Children start
with the spawn method (or the process factory a test passes) and get their spec as JSON; the
run policy (live or offline, appliance/tcpcopyd/policy.py) plans them and ends the run. Runtime
settings (pause, sample rate, log level) go to the children on a PUB socket, on change and once a
second. Stop order: captures
(or the offline reader), then the rewrite workers (which reset their sessions on the target).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import setproctitle
import zmq

from appliance.config.loader import OnlineConfig
from appliance.config.specs import spec_to_json
from appliance.core import wire
from appliance.core.control import Request, decode_request, encode_reply
from appliance.core.errors import EXIT_BOOT_ERROR, EXIT_CONFIG, EXIT_OK, ConfigError, HaltAppliance
from appliance.host import rundir
from appliance.host.sdnotify import notify
from appliance.tcpcopyd.handlers import dispatch
from appliance.tcpcopyd.lifecycle import Action, ChildState, Lifecycle
from appliance.tcpcopyd.metrics import MetricsServer
from appliance.tcpcopyd.observe import ChildView, Rates
from appliance.tcpcopyd.policy import RunPolicy
from appliance.tcpcopyd.status import Snapshot, summary_line, totals_of

log = logging.getLogger(__name__)

LOOP_TICK = 0.2                 # seconds: the supervisor wakes at least this often
SUMMARY_INTERVAL = 30.0
SAMPLE_INTERVAL = 1.0
STOP_ORDER = ("capture", "reader", "rewrite")


class ChildProcess(Protocol):
    """The part of multiprocessing.Process the supervisor uses (a test passes a fake)."""

    pid: int | None
    exitcode: int | None

    @property
    def sentinel(self) -> int: ...

    def start(self) -> None: ...

    def is_alive(self) -> bool: ...

    def join(self, timeout: float | None = None) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


ProcessFactory = Callable[[str, str, str], ChildProcess]     # (entry, spec JSON, name) -> not started


def spawn_process(entry: str, spec_json: str, name: str) -> ChildProcess:
    """A child process made with the spawn method: it imports `entry` and hands it the spec."""
    process: ChildProcess = multiprocessing.get_context("spawn").Process(
        target=_child_entry, args=(entry, spec_json), name=name, daemon=False)
    return process


@dataclass
class Child:
    role: str
    index: int
    entry: str                 # "workers.capture:main"
    spec_json: str
    cpus: tuple[int, ...]
    life: Lifecycle
    process: Any = None
    view: ChildView = field(default_factory=ChildView)
    oneshot: bool = False      # runs once (the offline reader): see Planned

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


def _child_entry(entry: str, spec_json: str) -> None:
    """Runs in the spawned child: import the role's module and hand it the spec."""
    module, _, func = entry.partition(":")
    mod = __import__(module, fromlist=[func])
    getattr(mod, func)(spec_json)


class Supervisor:
    """Runs in tcpcopyd's main process. `reread` gives the settings file's values again (SIGHUP)."""

    def __init__(self, config: OnlineConfig, policy: RunPolicy, *,
                 reread: Callable[[], dict[str, Any]] | None = None,
                 spawn: ProcessFactory = spawn_process) -> None:
        self.config = config
        self.policy = policy
        self.reread = reread
        self.spawn_process = spawn
        self.children: list[Child] = []
        self.started = time.time()
        self.run_started = time.monotonic()
        self.stopping = False
        self.exit_code = EXIT_OK
        self.runtime = {"paused": False, "sample_rate": config.sample_rate, "log_level": config.log_level,
                        "seq": 0}
        self.rates = Rates()
        self.bad_frames = {"control": 0, "stats": 0}    # refused frames, in the status document
        self._signals: list[int] = []
        for p in policy.plan(config):
            self.children.append(Child(p.role, p.index, p.entry, spec_to_json(p.spec), p.cpus,
                                       Lifecycle(config.startsecs, config.startretries), oneshot=p.oneshot))

    # ---- life cycle -------------------------------------------------------------------------
    def run(self) -> int:
        setproctitle.setproctitle(f"tcpcopyd: supervisor {self.config.run_dir}")
        try:
            rundir.prepare(self.config.run_dir, self.config.user)
        except ConfigError as exc:
            log.error("configuration error: %s", exc)
            return EXIT_CONFIG
        self.ctx = zmq.Context()
        self.ctl = self._bind(zmq.ROUTER, wire.control_endpoint(self.config.run_dir))
        self._protect_control_socket()
        self.stats = self._bind(zmq.PULL, wire.stats_endpoint(self.config.run_dir))
        self.runtime_pub = self._bind(zmq.PUB, wire.runtime_endpoint(self.config.run_dir))
        self.metrics = MetricsServer(self.config.metrics_listen) if self.config.metrics_listen else None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._record_signal)
        if self.config.user:
            self._become_user()
        try:
            now = self.run_started = time.monotonic()
            for child in self.children:
                if not child.oneshot:          # it waits for the answers' channel
                    self._spawn(child, now)
            log.info("tcpcopyd running: %d rewrite worker(s), %d capture(s), intercepts %s",
                     self.config.workers, len(self.config.interfaces), ", ".join(self.config.intercepts))
            notify("READY=1")
            self._loop()
        except HaltAppliance as halt:
            log.error("halting: %s", halt.reason)
            self.exit_code = halt.code
        finally:
            notify("STOPPING=1")
            self._stop_all()
            self._read_stats()          # the children's last frames, sent as they stopped
            self._log_summary()
            signal.set_wakeup_fd(-1)
            if self.metrics:
                self.metrics.close()
            for sock in (self.ctl, self.stats, self.runtime_pub):
                sock.close(linger=0)
            self.ctx.term()
            for path in ("ctl", "stats", "runtime"):
                try:
                    os.unlink(os.path.join(self.config.run_dir, path))
                except FileNotFoundError:
                    pass
        return self.exit_code

    def _become_user(self) -> None:
        """Sockets are bound: from here on, a plain user with CAP_NET_RAW and CAP_NET_ADMIN only
        (ambient, so the children spawned next can still capture and send raw)."""
        from appliance.host.privileges import drop_to
        rundir.hand_over(self.config.run_dir, self.config.user)
        drop_to(self.config.user)
        log.info("running as %s with CAP_NET_RAW and CAP_NET_ADMIN only", self.config.user)

    def _protect_control_socket(self) -> None:
        """Only root, or members of control_group, may talk to the control socket."""
        rundir.protect_control_socket(self.config.run_dir, self.config.control_group, self.config.user)

    def _bind(self, kind: int, endpoint: str) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_JSON_MESSAGE)    # control, stats and runtime: JSON frames
        sock.bind(endpoint)
        return sock

    def _loop(self) -> None:
        poller = zmq.Poller()
        for sock in (self.ctl, self.stats):
            poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        if self.metrics:
            poller.register(self.metrics.fileno(), zmq.POLLIN)
        next_summary = time.monotonic() + SUMMARY_INTERVAL
        next_sample = 0.0
        while not self.stopping:
            sentinels = [c.process.sentinel for c in self.children if c.alive]
            for fd in sentinels:
                poller.register(fd, zmq.POLLIN)
            events = dict(poller.poll(self._poll_timeout_ms(time.monotonic())))
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
            now = time.monotonic()
            if now >= next_sample:
                next_sample = now + SAMPLE_INTERVAL
                self._sample(now)
            if self.metrics:             # every turn: ready connections, and deadlines of idle ones
                self.metrics.serve(self.rows, now)
            self._manage(now)
            if now >= next_summary:
                next_summary = now + SUMMARY_INTERVAL
                self._log_summary()

    def _poll_timeout_ms(self, now: float) -> int:
        """At most LOOP_TICK, less when a child in backoff is due sooner: a crashed capture is
        started again after its backoff, not after the next tick (its downtime is traffic lost)."""
        due = [c.life.retry_at for c in self.children if c.life.state is ChildState.BACKOFF]
        wait = min([LOOP_TICK, *(max(0.0, at - now) for at in due)])
        return max(1, int(wait * 1000 + 0.999))

    def _spawn(self, child: Child, now: float) -> None:
        child.process = self.spawn_process(child.entry, child.spec_json, f"{child.role}-{child.index}")
        child.process.start()
        child.life.spawned(now)
        if child.oneshot:
            self.policy.started(now, time.time())
        log.info("started %s %d pid %d cpus %s", child.role, child.index, child.pid, child.cpus or "any")

    def _manage(self, now: float) -> None:
        for child in self.children:
            if child.oneshot:
                self._manage_oneshot(child, now)
                continue
            was = child.life.state
            action = child.life.transition(now, child.alive)
            if was in (ChildState.STARTING, ChildState.RUNNING) and child.life.state is not was \
                    and child.life.state is not ChildState.RUNNING:
                child.process.join(0)
                log.warning("%s %d (pid %s) exited with %s", child.role, child.index, child.pid,
                            child.process.exitcode)
                child.view.died()
            if action is Action.HALT:
                raise HaltAppliance(f"{child.role} {child.index} failed to boot {child.life.failed_boots} "
                                    f"times in a row (last exit {child.process.exitcode})", EXIT_BOOT_ERROR)
            if action is Action.KILL:
                log.warning("%s %d (pid %s) missed its heartbeats; killing it", child.role, child.index,
                            child.pid)
                child.process.kill()
            elif action is Action.SPAWN:
                self._spawn(child, now)
        if self.policy.should_stop(self.rows(), now):
            self.request_stop()

    def _manage_oneshot(self, child: Child, now: float) -> None:
        """A child that runs once: started when the policy allows; exit 0 is its end, anything
        else halts the run with its exit code."""
        if child.process is None:
            if self.policy.may_start(self.rows(), now - self.run_started):
                self._spawn(child, now)
            return
        if child.life.state is ChildState.STOPPED or child.alive:
            return
        child.process.join(0)
        code = child.process.exitcode
        if code != 0:
            raise HaltAppliance(f"{child.role} {child.index} failed (exit {code}); see the log above",
                                code if code and code > 0 else EXIT_BOOT_ERROR)
        child.life.state = ChildState.STOPPED
        self.policy.finished(now)

    def _stop_all(self) -> None:
        for role in STOP_ORDER:
            group = [c for c in self.children if c.role == role and c.process is not None]
            for child in group:
                if child.process.is_alive():
                    child.process.terminate()
            deadline = time.monotonic() + self.config.graceful_timeout
            for child in group:
                child.process.join(max(0.0, deadline - time.monotonic()))
                if child.process.is_alive():
                    log.warning("%s %d did not stop in time; killing it", child.role, child.index)
                    child.process.kill()
                    child.process.join(1.0)
                child.life.state = ChildState.STOPPED

    # ---- observation ------------------------------------------------------------------------
    def _read_stats(self) -> None:
        for _ in range(256):
            try:
                frame = self.stats.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                obj = wire.decode_json(frame, wire.KIND_STATS)
            except wire.WireError:
                self.bad_frames["stats"] += 1
                continue
            if not isinstance(obj.get("counters", {}), dict):
                self.bad_frames["stats"] += 1
                continue
            for child in self.children:
                if child.role == obj.get("role") and child.index == obj.get("index") \
                        and child.pid == obj.get("pid"):
                    now = time.monotonic()
                    child.view.heartbeat(obj, now)
                    child.life.beat(now)

    def rows(self) -> list[dict[str, Any]]:
        """One row per child: life cycle from the supervisor, counters from its heartbeats."""
        mono = time.monotonic()
        rows = []
        for c in self.children:
            beat_age = mono - c.view.beat_at if c.alive and c.view.beat_at is not None else None
            rows.append({
                "role": c.role, "index": c.index, "pid": c.pid if c.alive else None, "state": c.life.state.value,
                "cpus": list(c.cpus), "restarts": c.life.restarts,
                "heartbeat_age": None if beat_age is None else round(beat_age, 3),
                "cpu_percent": c.view.cpu_percent, "rss_bytes": c.view.rss,
                "counters": c.view.counters(), "info": c.view.extra, "settings_seq": c.view.settings_seq,
            })
        return rows

    def snapshot(self) -> Snapshot:
        now = time.time()
        c = self.config
        return Snapshot(time=now, pid=os.getpid(), uptime=now - self.started, stopping=self.stopping,
                        rows=self.rows(), runtime=dict(self.runtime), bad_frames=dict(self.bad_frames),
                        config={"transfers": c.transfers, "intercepts": list(c.intercepts),
                                "interfaces": list(c.interfaces), "workers": c.workers, "filter": c.bpf,
                                "source": c.source},
                        rates_window=self.rates.window, rates=self.rates.per_second())

    def _sample(self, now: float) -> None:
        for child in self.children:
            child.view.sample(child.pid if child.alive else None)
        self.rates.record(now, totals_of(self.rows()))
        self._publish_runtime()

    def _log_summary(self) -> None:
        line, weak = summary_line(self.rows())
        log.info("summary: %s", line)
        if weak:
            log.warning("many sessions can't be established with the target: see handshake_timeouts")

    # ---- runtime settings, signals and control ------------------------------------------------
    def set_runtime(self, **changes: Any) -> dict:
        self.runtime.update(changes)
        self.runtime["seq"] += 1
        if "log_level" in changes:
            logging.getLogger().setLevel(changes["log_level"].upper())
        self._publish_runtime()
        log.info("runtime settings now %s", {k: v for k, v in self.runtime.items() if k != "seq"})
        return dict(self.runtime)

    def _publish_runtime(self) -> None:
        try:
            self.runtime_pub.send(wire.encode_json(wire.KIND_RUNTIME, self.runtime), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def reload(self) -> None:
        """SIGHUP: re-read the configuration file and apply what can change live.

        A bad file (any value, not UTF-8, not TOML, gone) changes nothing: the appliance goes on with
        the settings it has and says why. `load` raises ConfigError only, whatever the file holds."""
        if self.reread is None:
            log.info("SIGHUP: no configuration file to re-read")
            return
        try:
            values = self.reread()
        except ConfigError as exc:
            log.warning("SIGHUP: configuration not reloaded, running settings kept: %s", exc)
            return
        self.set_runtime(sample_rate=values["tcpcopyd.sample_percent"] / 100, log_level=values["tcpcopyd.log_level"])

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
            dispatch(self, Request(id="signal", command="stop", args={}))
        elif signum == signal.SIGHUP:
            self.reload()

    def _serve_control(self) -> None:
        for _ in range(16):
            try:
                parts = self.ctl.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) < 3:
                self.bad_frames["control"] += 1
                continue
            identity, body = parts[0], parts[-1]
            request, reply = decode_request(body)
            if request is None:
                self.bad_frames["control"] += 1
            else:
                reply = dispatch(self, request)
            self.ctl.send_multipart([identity, b"", encode_reply(reply)])

    def request_stop(self) -> None:
        self.stopping = True
