"""How a run of tcpcopyd goes: live capture, or an offline replay of capture files.

The supervisor knows children, not modes: it asks its policy which children to plan, when a
child that runs once (the offline reader) may start, and whether the run is over. Runs in
tcpcopyd's supervisor process.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, replace
from typing import Any, Protocol

from appliance.config.loader import OnlineConfig
from appliance.config.specs import CaptureSpec, ReaderSpec, RewriteSpec, cpu_plan
from appliance.engine.params import EngineParams

log = logging.getLogger(__name__)

READER_WAIT = 10.0       # offline: longest wait for an interceptd before replaying anyway
DRAIN_SETTLE = 1.0       # offline: drained, then this long for the workers' last counters


@dataclass(frozen=True, slots=True, kw_only=True)
class Planned:
    """One child to run: its role, the entry point its process imports, its spec and CPUs."""

    role: str
    index: int
    entry: str                 # "workers.capture:main"
    spec: Any
    cpus: tuple[int, ...]
    oneshot: bool = False      # runs once: started when the policy allows, its exit is not a crash


class RunPolicy(Protocol):
    def plan(self, config: OnlineConfig) -> list[Planned]: ...

    def may_start(self, rows: list[dict[str, Any]], waited: float) -> bool:
        """A oneshot child has not started yet: may it now? `waited`: seconds since the run began."""

    def started(self, mono: float, wall: float) -> None:
        """The oneshot child started (monotonic and epoch time)."""

    def finished(self, now: float) -> None:
        """The oneshot child exited cleanly."""

    def should_stop(self, rows: list[dict[str, Any]], now: float) -> bool:
        """Is the run over? Asked on every supervisor turn."""


def rewrite_children(config: OnlineConfig, engine: EngineParams, verify_midstream: bool) -> list[Planned]:
    """The rewrite workers, one per shard; they bind their queues, so they are planned first."""
    n = config.workers
    cpus = cpu_plan(n, len(config.interfaces), config.pin_cpus)
    return [Planned(role="rewrite", index=k, entry="workers.rewrite:main", cpus=cpus[k], spec=RewriteSpec(
        index=k, shards=n, run_dir=config.run_dir, transfers=config.transfers, engine=engine, cpus=cpus[k],
        sample_rate=config.sample_rate, client_pool=config.client_pool, copies=config.copies,
        intercepts=config.intercepts, secret_key=config.secret_key,
        intercept_public_key=config.intercept_public_key, verify_midstream=verify_midstream,
        compare=config.compare))
        for k in range(n)]


class LivePolicy:
    """Capture on the interfaces until told to stop; every child is restarted when it dies."""

    def plan(self, config: OnlineConfig) -> list[Planned]:
        caps = cpu_plan(len(config.interfaces), 0, config.pin_cpus)
        captures = [Planned(role="capture", index=i, entry="workers.capture:main", cpus=caps[i], spec=CaptureSpec(
            index=i, interface=iface, bpf=config.bpf, shards=config.workers, run_dir=config.run_dir, cpus=caps[i],
            buffer_bytes=config.buffer_bytes, answers_of=config.transfers if config.compare else ""))
            for i, iface in enumerate(config.interfaces)]
        return rewrite_children(config, config.engine, config.verify_midstream) + captures

    def may_start(self, rows: list[dict[str, Any]], waited: float) -> bool:
        return True

    def started(self, mono: float, wall: float) -> None:
        pass

    def finished(self, now: float) -> None:
        pass

    def should_stop(self, rows: list[dict[str, Any]], now: float) -> bool:
        return False


class OfflinePolicy:
    """Replay capture files once: the reader starts when the answers flow, and the run ends when
    every packet was handed over and no session is open (or after `offline_tail`)."""

    def __init__(self, total_packets: int, tail: float, progress: bool | None = None) -> None:
        self.total_packets = total_packets
        self.tail = tail
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.started_at: float | None = None      # monotonic: the reader's start
        self.started_wall = 0.0                   # epoch, to compare with the workers' last_send_at
        self.done_at: float | None = None         # the reader read its files to the end
        self.drained_at: float | None = None      # every packet handed over, no session open

    def plan(self, config: OnlineConfig) -> list[Planned]:
        # a capture file waits for the workers: an offline replay is never overloaded, it only takes
        # longer; and the sessions of a file are not on this host's socket table
        workers = rewrite_children(config, replace(config.engine, shed_lag=0.0), verify_midstream=False)
        caps = cpu_plan(1, 0, config.pin_cpus)
        reader = ReaderSpec(run_dir=config.run_dir, shards=config.workers, transfers=config.transfers,
                            files=config.offline, speed=config.speed, max_gap_ms=config.max_gap_ms,
                            total_packets=self.total_packets, progress=self.progress, cpus=caps[0],
                            answers=config.compare is not None)
        return [*workers, Planned(role="reader", index=0, entry="workers.reader:main", spec=reader, cpus=caps[0],
                                  oneshot=True)]

    def may_start(self, rows: list[dict[str, Any]], waited: float) -> bool:
        """Offline replay can wait, unlike a live capture: it starts once every worker has heard an
        interceptd (a report on the stats topic, subscribed after the shard's topic, came through),
        so the first handshakes' answers are not missed."""
        workers = [r for r in rows if r["role"] == "rewrite"]
        heard = bool(workers) and all(r["counters"].get("intercepts_heard") for r in workers)
        if not heard and waited > READER_WAIT:
            log.warning("offline: no interceptd heard after %.0f s; starting the replay anyway", waited)
        return heard or waited > READER_WAIT

    def started(self, mono: float, wall: float) -> None:
        self.started_at, self.started_wall = mono, wall

    def finished(self, now: float) -> None:
        self.done_at = now
        log.info("offline files read to the end; waiting for the sessions to finish")

    def should_stop(self, rows: list[dict[str, Any]], now: float) -> bool:
        if self.done_at is None:
            return False
        handed = sum(r["counters"].get("segments_received", 0) for r in rows if r["role"] == "rewrite")
        active = sum(r["counters"].get("sessions_active", 0) for r in rows if r["role"] == "rewrite")
        kept = sum(r["counters"].get("packets_kept", 0) for r in rows if r["role"] == "reader")
        if handed >= kept and active == 0:
            if self.drained_at is None:
                self.drained_at = now
            return now - self.done_at > DRAIN_SETTLE
        if now - self.done_at > self.tail:
            log.warning("offline: %d sessions still open after %.0f s; stopping", active, self.tail)
            return True
        return False

    def elapsed(self, last_send_wall: float) -> float | None:
        """From the reader's start to the workers' last send (their heartbeats come once a second,
        so not when the supervisor saw them done); None when the replay did not drain."""
        if self.drained_at is None or self.started_at is None:
            return None
        if last_send_wall > self.started_wall:
            return last_send_wall - self.started_wall
        return self.drained_at - self.started_at
