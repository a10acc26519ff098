"""tcpcopyd and the original C tcpcopy behind one interface, for perf/saturate.py.

Runs in the benchmark's process. A replicator is the pair of daemons: the one on the online host
(tcpcopyd, or the original's tcpcopy) and the one on the assistant (interceptd, or intercept).
`start(pool)` brings both up, ready to copy live traffic of the lab's online:PORT with client
addresses rewritten into `pool` (a fresh /24 per run: the target still holds the previous run's
tuples in TIME_WAIT); `processes()` lists every process of each side for CPU accounting;
`finish()` stops both and returns the online daemon's final counters. `replay()` is the offline
counterpart: both daemons for one capture, to the end of the replay. Nothing here measures the
target: the caller counts its access log.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from original import Original

from appliance.lab.rig import ReplicationRig

CpuSnapshot = dict[int, float]
OFFLINE_TAIL = "20"             # tcpcopyd --offline-tail: seconds for the sessions after the file ends
OFFLINE_TIMEOUT = 300.0
ENGINE_COUNTERS = ("sessions_started", "sessions_completed", "sessions_shed", "handshake_timeouts",
                   "sessions_reset_by_target", "port_reuse_resets", "capture_gaps", "buffer_overflows",
                   "turns_lagged", "packets_sent")


def tree(pid: int | None) -> list[psutil.Process]:
    """A process and all its descendants (tcpcopyd: the supervisor, its capture and rewrite children)."""
    if pid is None:
        return []
    try:
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    except psutil.Error:
        return []


def snapshot(procs: list[psutil.Process]) -> CpuSnapshot:
    """CPU seconds (user + system) of each process still alive, by PID."""
    out: CpuSnapshot = {}
    for proc in procs:
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def used(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """CPU seconds between two snapshots; a process born in between counts from zero."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def children_cpu() -> float:
    """CPU of this process's reaped children (and of theirs that they reaped): an offline replay's
    whole process tree once it has exited."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class NoReplicator:
    """Nothing copies: the load's own figures (what the online host serves without a replicator)."""

    name = "none"

    def start(self, pool: int) -> None:
        pass

    def processes(self) -> dict[str, list[psutil.Process]]:
        return {}

    def finish(self) -> dict[str, Any]:
        return {}

    def replay(self, pcap: Path, pool: int, settle: Callable[[], Any]) -> dict[str, Any]:
        raise NotImplementedError("nothing to replay with")


class Tcpcopyd:
    """tcpcopyd on the online host and interceptd on the assistant, through the lab's rig."""

    def __init__(self, rig: ReplicationRig, base_args: tuple[str, ...], *, intercept_args: tuple[str, ...] = (),
                 name: str = "tcpcopyd") -> None:
        self.rig, self.base_args, self.intercept_args, self.name = rig, base_args, intercept_args, name

    def start(self, pool: int) -> None:
        self.rig.tcpcopyd_args = (*self.base_args, "-c", f"198.18.{pool}.0/24")
        self.rig.intercept_args = self.intercept_args
        self.rig.start_interceptd()
        self.rig.start_tcpcopyd()
        if not self.rig.wait_for_subscriptions(10.0):
            raise RuntimeError(f"the rewrite workers never heard interceptd; see {self.rig.dir}")

    def processes(self) -> dict[str, list[psutil.Process]]:
        procs = self.rig.procs
        return {"online": tree(procs["tcpcopyd"].pid if "tcpcopyd" in procs else None),
                "assistant": tree(procs["interceptd"].pid if "interceptd" in procs else None)}

    def finish(self) -> dict[str, Any]:
        """`tcpcopyctl status --json`'s document (the same call, in process) once every child has
        reported after the run: the funnel and the rewrite totals; then both daemons stopped."""
        status = self.rig.fresh_status()
        self.rig.stop("tcpcopyd")
        self.rig.stop("interceptd")
        rewrite = status.get("totals", {}).get("rewrite", {})
        return {"sessions_shed": rewrite.get("sessions_shed", 0), "funnel": status.get("funnel", {}),
                "compare": rewrite.get("compare", {}),
                "rewrite": {k: rewrite.get(k, 0) for k in ENGINE_COUNTERS},
                "workers": sum(ch["role"] == "rewrite" for ch in status.get("children", []))}

    def replay(self, pcap: Path, pool: int, settle: Callable[[], Any]) -> dict[str, Any]:
        """`tcpcopyd --offline --topspeed` of the file to its end (sessions done or the tail out),
        then `settle()` (the caller's wait for the target's log); CPU of both sides."""
        self.rig.tcpcopyd_args = (*self.base_args, "-c", f"198.18.{pool}.0/24")
        self.rig.intercept_args = self.intercept_args
        self.rig.start_interceptd()
        icpt = tree(self.rig.procs["interceptd"].pid)
        ic0, ru0, started = snapshot(icpt), children_cpu(), time.time()
        report = self.rig.dir / "report.json"
        report.unlink(missing_ok=True)
        done = self.rig.run_offline([str(pcap)], "--topspeed", "--offline-tail", OFFLINE_TAIL,
                                    "--report-json", str(report), timeout=OFFLINE_TIMEOUT)
        online_cpu = children_cpu() - ru0
        settle()
        assistant_cpu = used(ic0, snapshot(icpt))
        self.rig.stop("interceptd")
        rep = json.loads(report.read_text()) if report.exists() else {}
        return {"started": started, "exit": done.returncode, "online_cpu_s": online_cpu,
                "assistant_cpu_s": assistant_cpu, "end_to_end_s": rep.get("end_to_end_s"),
                "funnel": rep.get("funnel", {}), "not_completed": rep.get("not_completed", {}),
                "output": done.stdout.strip().splitlines()[-8:] + done.stderr.strip().splitlines()[-5:]}


class OriginalTcpcopy:
    """The original tcpcopy (pcap build, or the offline build) and intercept, from --original DIR."""

    name = "original"

    def __init__(self, original: Original) -> None:
        self.orig = original

    def start(self, pool: int) -> None:
        self.orig.start_intercept()
        self.orig.start_tcpcopy(f"198.18.{pool}.x")

    def processes(self) -> dict[str, list[psutil.Process]]:
        pids = self.orig.pids()
        return {"online": tree(pids.get("tcpcopy")), "assistant": tree(pids.get("intercept"))}

    def finish(self) -> dict[str, Any]:
        return {"counters": self.orig.stop_all()}

    def replay(self, pcap: Path, pool: int, settle: Callable[[], Any]) -> dict[str, Any]:
        """The offline build at -a 1000; it idles 120 s after the file's end, so it is stopped
        (SIGINT) once `settle()` says the target's log has gone quiet."""
        self.orig.start_intercept()
        icpt = tree(self.orig.pids().get("intercept"))
        ic0, ru0, started = snapshot(icpt), children_cpu(), time.time()
        proc = self.orig.start_offline(pcap, f"198.18.{pool}.x")
        settle()
        exited_early = proc.poll()
        assistant_cpu = used(ic0, snapshot(icpt))
        self.orig.stop("tcpcopy")
        online_cpu = children_cpu() - ru0
        counters = self.orig.stop_all()
        return {"started": started, "exit": exited_early, "online_cpu_s": online_cpu,
                "assistant_cpu_s": assistant_cpu, "counters": counters}
