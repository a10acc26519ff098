"""tcpcopyd's supervisor: spawns, watches, restarts and stops the children; answers control.

One loop, no threads. It waits on the control socket, the stats bus, the metrics listener,
a signal wake-up fd and the children's sentinels; signal handlers only record. Children start
with the spawn method and get their spec as JSON. Runtime settings (pause, sample rate, log
level) go to the children on a PUB socket, on change and once a second. Stop order: captures
(or the offline reader), then the rewrite workers (which reset their sessions on the target).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import setproctitle
import zmq

from appliance.host import rundir
from appliance.core import wire
from appliance.config.loader import (
    CaptureSpec, OnlineConfig, ReaderSpec, RewriteSpec, cpu_plan, load, spec_to_json,
)
from appliance.core.control import (
    COMMANDS, Request, child_rows, decode_request, encode_reply, error_reply, summary_line, totals_of,
)
from appliance.core.errors import EXIT_BOOT_ERROR, EXIT_CONFIG, EXIT_OK, ConfigError, HaltAppliance
from appliance.tcpcopyd.lifecycle import Action, ChildState, Lifecycle
from appliance.tcpcopyd.metrics import MetricsServer
from appliance.tcpcopyd.observe import ChildView, Rates
from appliance.host.sdnotify import notify
from appliance.config.keys import ONLINE

log = logging.getLogger(__name__)

LOOP_TICK = 0.2                 # seconds: the supervisor wakes at least this often
SUMMARY_INTERVAL = 30.0
READER_WAIT = 10.0       # offline: longest wait for an interceptd before replaying anyway
SAMPLE_INTERVAL = 1.0
STOP_ORDER = ("capture", "reader", "rewrite")


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
    oneshot: bool = False      # the offline reader: started once the answers flow, its exit ends the run

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
    def __init__(self, config: OnlineConfig, config_path: str | None = None, cli_args: Any = None,
                 offline_packets: int = 0) -> None:
        self.config = config
        self.offline_packets = offline_packets
        self.reader_done_at: float | None = None
        self.reader_started_at: float | None = None
        self.reader_started_wall = 0.0               # epoch, to compare with the workers' last_send_at
        self.drained_at: float | None = None         # offline: every packet handed over, no session open
        self.config_path = config_path
        self.cli_args = cli_args
        self.children: list[Child] = []
        self.started = time.time()
        self.stopping = False
        self.exit_code = EXIT_OK
        self.runtime = {"paused": False, "sample_rate": config.sample_rate, "log_level": config.log_level,
                        "seq": 0}
        self.rates = Rates()
        self.bad_frames = {"control": 0, "stats": 0}    # refused frames, in the status document
        self._signals: list[int] = []
        self._mp = multiprocessing.get_context("spawn")
        self._plan()

    def _plan(self) -> None:
        c = self.config
        n = c.workers
        caps = cpu_plan(len(c.interfaces), 0, c.pin_cpus)
        rews = cpu_plan(n, len(c.interfaces), c.pin_cpus)

        def child(role: str, index: int, entry: str, spec: Any, cpus: tuple[int, ...], oneshot: bool = False) -> Child:
            return Child(role, index, entry, spec_to_json(spec), cpus, Lifecycle(c.startsecs, c.startretries),
                         oneshot=oneshot)

        # a capture file waits for the workers: an offline replay is never overloaded, it only takes longer
        engine = replace(c.engine, shed_lag=0.0) if c.offline else c.engine
        for k in range(n):   # rewrite workers bind their queues, so they go first
            spec = RewriteSpec(index=k, shards=n, run_dir=c.run_dir, transfers=c.transfers, engine=engine,
                               cpus=rews[k], sample_rate=c.sample_rate, client_pool=c.client_pool, copies=c.copies,
                               intercepts=c.intercepts, secret_key=c.secret_key,
                               intercept_public_key=c.intercept_public_key,
                               verify_midstream=c.verify_midstream and not c.offline)
            self.children.append(child("rewrite", k, "workers.rewrite:main", spec, rews[k]))
        if c.offline:
            spec_o = ReaderSpec(run_dir=c.run_dir, shards=n, transfers=c.transfers, files=c.offline, speed=c.speed,
                                max_gap_ms=c.max_gap_ms, total_packets=self.offline_packets,
                                progress=sys.stderr.isatty(), cpus=caps[0] if caps else ())
            self.children.append(child("reader", 0, "workers.reader:main", spec_o, caps[0] if caps else (), True))
            return
        for i, iface in enumerate(c.interfaces):
            spec_c = CaptureSpec(index=i, interface=iface, bpf=c.bpf, shards=n, run_dir=c.run_dir, cpus=caps[i],
                                 buffer_bytes=c.buffer_bytes)
            self.children.append(child("capture", i, "workers.capture:main", spec_c, caps[i]))

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
        self.stats = self._bind(zmq.SUB, wire.stats_endpoint(self.config.run_dir))
        self.stats.setsockopt(zmq.SUBSCRIBE, b"")
        self.settings = self._bind(zmq.PUB, wire.settings_endpoint(self.config.run_dir))
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
            for sock in (self.ctl, self.stats, self.settings):
                sock.close(linger=0)
            self.ctx.term()
            for path in ("ctl", "stats", "settings"):
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
        sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_JSON_MESSAGE)    # control, stats and settings: JSON frames
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
                self.metrics.serve(lambda: child_rows(self, time.time()), now)
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
        child.process = self._mp.Process(target=_child_entry, args=(child.entry, child.spec_json),
                                         name=f"{child.role}-{child.index}", daemon=False)
        child.process.start()
        child.life.spawned(now)
        if child.oneshot:
            self.reader_started_at = now
            self.reader_started_wall = time.time()
        log.info("started %s %d pid %d cpus %s", child.role, child.index, child.pid, child.cpus or "any")

    def _manage(self, now: float) -> None:
        for child in self.children:
            if child.oneshot and child.process is None:
                self._start_reader_when_answers_flow(child, now)
                continue
            if child.oneshot and self._reader_exited(child, now):
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

    def _start_reader_when_answers_flow(self, child: Child, now: float) -> None:
        """Offline replay can wait, unlike a live capture: it starts once every worker has heard an
        interceptd (a report on the stats topic, subscribed after the shard's topic, came through),
        so the first handshakes' answers are not missed."""
        workers = [c for c in self.children if c.role == "rewrite"]
        heard = bool(workers) and all(c.view.last.get("intercepts_heard") for c in workers)
        waited = now - self.run_started
        if heard or waited > READER_WAIT:
            if not heard:
                log.warning("offline: no interceptd heard after %.0f s; starting the replay anyway", waited)
            self._spawn(child, now)

    def _reader_exited(self, child: Child, now: float) -> bool:
        """The offline reader runs once: done at the end of its files, fatal on a bad file."""
        if child.life.state is ChildState.STOPPED:
            self._offline_drained(now)
            return True
        if child.process is None or child.alive:
            return False
        child.process.join(0)
        if child.process.exitcode != 0:
            raise HaltAppliance(f"offline reader failed (exit {child.process.exitcode}); see the log above",
                                child.process.exitcode if child.process.exitcode and child.process.exitcode > 0
                                else EXIT_BOOT_ERROR)
        child.life.state = ChildState.STOPPED
        self.reader_done_at = now
        log.info("offline files read to the end; waiting for the sessions to finish")
        return True

    def _offline_drained(self, now: float) -> None:
        rows = child_rows(self, time.time())
        totals = totals_of(rows)
        reader = next((r for r in rows if r["role"] == "reader"), {"counters": {}})
        handed = totals["rewrite"].get("segments_received", 0)
        active = totals["rewrite"].get("sessions_active", 0)
        assert self.reader_done_at is not None
        if handed >= reader["counters"].get("packets_kept", 0) and active == 0:
            if self.drained_at is None:
                self.drained_at = now
            if now - self.reader_done_at > 1.0:          # and the workers' last counters are in
                self.request_stop()
        elif now - self.reader_done_at > self.config.offline_tail:
            log.warning("offline: %d sessions still open after %.0f s; stopping", active, self.config.offline_tail)
            self.request_stop()

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

    def _sample(self, now: float) -> None:
        for child in self.children:
            child.view.sample(child.pid if child.alive else None)
        self.rates.record(now, totals_of(child_rows(self, time.time())))
        self._publish_settings()

    def _log_summary(self) -> None:
        line, weak = summary_line(child_rows(self, time.time()))
        log.info("summary: %s", line)
        if weak:
            log.warning("many sessions can't be established with the target: see handshake_timeouts")

    # ---- runtime settings, signals and control ------------------------------------------------
    def set_runtime(self, **changes: Any) -> dict:
        self.runtime.update(changes)
        self.runtime["seq"] += 1
        if "log_level" in changes:
            logging.getLogger().setLevel(changes["log_level"].upper())
        self._publish_settings()
        log.info("runtime settings now %s", {k: v for k, v in self.runtime.items() if k != "seq"})
        return dict(self.runtime)

    def _publish_settings(self) -> None:
        try:
            self.settings.send(wire.encode_json(wire.KIND_SETTINGS, self.runtime), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def reload(self) -> None:
        """SIGHUP: re-read the configuration file and apply what can change live.

        A bad file (any value, not UTF-8, not TOML, gone) changes nothing: the appliance goes on with
        the settings it has and says why. `load` raises ConfigError only, whatever the file holds."""
        if not self.config_path:
            log.info("SIGHUP: no configuration file to re-read")
            return
        try:
            values = load(ONLINE, self.config_path, self.cli_args)
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
            self.dispatch(Request(id="signal", command="stop", args={}))
        elif signum == signal.SIGHUP:
            self.reload()

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
                self.bad_frames["control"] += 1
                continue
            identity, body = parts[0], parts[-1]
            request, reply = decode_request(body)
            if request is None:
                self.bad_frames["control"] += 1
            else:
                reply = self.dispatch(request)
            self.ctl.send_multipart([identity, b"", encode_reply(reply)])

    def request_stop(self) -> None:
        self.stopping = True
