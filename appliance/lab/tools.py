"""Off-the-shelf tools run inside the lab: wrk and ab as clients, tcpdump as the recorder.

Everything runs in the caller's process and starts the tool inside a lab host's namespace
(`ip netns exec` execs it, so the PID we hold is the tool's); each runner waits for its tool and
parses its summary. Debian packages: wrk, apache2-utils (ab), tcpdump.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from appliance.lab.netns import Lab

TOOL_GRACE = 30.0                      # beyond the load's own duration
TCPDUMP_READY_TIMEOUT = 10.0
TCPDUMP_DRAIN_TIMEOUT = 10.0
TCPDUMP_BUFFER_KIB = 131072            # -B: a 2 s wrk capture is ~200k packets; no kernel drops
PORT_RANGE_SYSCTL = "net.ipv4.ip_local_port_range"

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ToolError(RuntimeError):
    """A tool did not run, or printed no summary we can read (the message carries its output)."""


# ---- wrk --------------------------------------------------------------------------------------
@dataclass
class WrkResult:
    """wrk's summary: requests completed, over `duration_s`, and its error counts (a socket
    error is a connect/read/write failure or a timeout; non_2xx are answers with another status)."""

    requests: int
    duration_s: float
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0
    non_2xx: int = 0
    output: str = ""

    @property
    def errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts + self.non_2xx

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def parse_wrk(out: str) -> WrkResult:
    """wrk 4.x's text summary; ToolError when it has no "N requests in T" line."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)\b", out)
    if not m:
        raise ToolError(f"no wrk summary in: {out[-2000:]!r}")
    result = WrkResult(int(m[1]), float(m[2]) * _UNITS[m[3]], output=out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        (result.connect_errors, result.read_errors, result.write_errors,
         result.timeouts) = map(int, sock.groups())
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non:
        result.non_2xx = int(non[1])
    return result


def wrk(lab: Lab, host: str, url: str, connections: int, seconds: float, threads: int = 1) -> WrkResult:
    """`wrk -tT -cN -dS --latency URL` in `host` (HTTP/1.1 keep-alive: each connection sends
    its requests one after another); wrk closes its connections when the time is up."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    done = lab.run(host, argv, check=False, timeout=seconds + TOOL_GRACE)
    if done.returncode != 0:
        raise ToolError(f"wrk exited {done.returncode}: {done.stderr[-2000:]} {done.stdout[-2000:]}")
    return parse_wrk(done.stdout)


# ---- ab ---------------------------------------------------------------------------------------
@dataclass
class AbResult:
    """ab's summary: complete and failed requests (connect, receive, length and exception errors,
    as ab reports them), non_2xx answers, the time taken, ab's exit code."""

    complete: int
    failed: int
    duration_s: float
    non_2xx: int = 0
    returncode: int = 0
    output: str = ""

    @property
    def ok(self) -> int:
        return self.complete - self.failed - self.non_2xx

    @property
    def rate(self) -> float:
        return self.complete / self.duration_s if self.duration_s else 0.0


def parse_ab(out: str, returncode: int = 0) -> AbResult:
    """ab 2.3's text summary; ToolError when it has none (ab stopped on an error)."""
    complete = re.search(r"Complete requests:\s+(\d+)", out)
    taken = re.search(r"Time taken for tests:\s+([\d.]+) seconds", out)
    if not complete or not taken:
        raise ToolError(f"no ab summary (exit {returncode}) in: {out[-2000:]!r}")
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non = re.search(r"Non-2xx responses:\s+(\d+)", out)
    return AbResult(int(complete[1]), int(failed[1]) if failed else 0, float(taken[1]),
                    int(non[1]) if non else 0, returncode, out)


def ab(lab: Lab, host: str, url: str, concurrency: int, requests: int | None = None,
       seconds: float | None = None) -> AbResult:
    """`ab -q -r -c N (-n M | -t S) URL` in `host`: HTTP/1.0, one short connection per request
    (the server closes first). -r: a receive error is counted, ab goes on."""
    if (requests is None) == (seconds is None):
        raise ValueError("ab: give requests or seconds")
    argv = ["ab", "-q", "-r", "-c", str(concurrency)]
    # -t alone caps ab at 50,000 requests; with -n as well the time limit is the one that binds
    argv += ["-n", str(requests)] if requests is not None else ["-t", f"{seconds:g}", "-n", "10000000"]
    limit = (seconds or 0.0) + TOOL_GRACE + (requests or 0) / 1000
    done = lab.run(host, [*argv, url], check=False, timeout=limit)
    return parse_ab(done.stdout + done.stderr, done.returncode)


# ---- the client's port range ------------------------------------------------------------------
@contextmanager
def port_range(lab: Lab, host: str, low: int, high: int) -> Iterator[None]:
    """`host`'s ephemeral ports narrowed to low..high (its namespace's own sysctl) for the block,
    restored afterwards: a short-connection load then reuses each client port every few
    hundred connections."""
    before = lab.run(host, ["sysctl", "-n", PORT_RANGE_SYSCTL]).stdout.split()
    lab.run(host, ["sysctl", "-q", "-w", f"{PORT_RANGE_SYSCTL}={low} {high}"])
    try:
        yield
    finally:
        lab.run(host, ["sysctl", "-q", "-w", f"{PORT_RANGE_SYSCTL}={' '.join(before)}"], check=False)


# ---- the kernel's counters --------------------------------------------------------------------
def kernel_counters(lab: Lab, host: str) -> dict[str, int]:
    """`nstat -asz` of `host`'s namespace (TCP/IP MIB counters: TcpEstabResets, TcpExtPAWSEstab,
    TcpExtListenOverflows, ...); nstat's history file is left alone (-s)."""
    done = lab.run(host, ["nstat", "-a", "-s", "-z", "--json"], check=False)
    return json.loads(done.stdout).get("kernel", {}) if done.returncode == 0 else {}


def counters_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that moved between two snapshots, by how much."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


# ---- tcpdump ----------------------------------------------------------------------------------
STATS = re.compile(r"(\d+) packets? captured[,\s]+(\d+) packets? received by filter[,\s]+"
                   r"(\d+) packets? dropped by kernel")


@dataclass
class CaptureStats:
    """tcpdump's own figures: packets written to the file, accepted by the filter, dropped by the
    kernel (a full ring: the file misses them)."""

    captured: int
    received: int
    dropped: int
    path: Path = field(default_factory=Path)

    @property
    def complete(self) -> bool:
        return self.dropped == 0 and self.captured == self.received


class Tcpdump:
    """`tcpdump -i IFACE -s 0 -w FILE FILTER` in a lab host: `start()` returns once tcpdump says
    it is listening, `stop()` waits until it has written every packet its filter accepted (its
    SIGUSR1 report), then ends it with SIGINT by PID and returns its final figures."""

    def __init__(self, lab: Lab, host: str, path: Path, bpf: str = "tcp port 8080",
                 iface: str = "eth0") -> None:
        self.lab, self.host, self.path, self.bpf, self.iface = lab, host, Path(path), bpf, iface
        self.errlog = self.path.with_suffix(self.path.suffix + ".stderr")
        self.proc: subprocess.Popen[bytes] | None = None
        self.stats: CaptureStats | None = None       # set by stop()

    def start(self) -> Tcpdump:
        # -Z root: Debian's tcpdump would drop to user tcpdump and fail to write a root-only directory
        argv = ["tcpdump", "-i", self.iface, "-s", "0", "-B", str(TCPDUMP_BUFFER_KIB), "-Z", "root",
                "-w", str(self.path), self.bpf]
        with open(self.errlog, "wb") as err:
            self.proc = self.lab.popen(self.host, argv, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + TCPDUMP_READY_TIMEOUT
        while time.monotonic() < deadline:
            if "listening on" in self._stderr():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise ToolError(f"tcpdump did not start listening: {self._stderr()[-2000:]}")

    def _stderr(self) -> str:
        return self.errlog.read_text(errors="replace") if self.errlog.exists() else ""

    def _report(self) -> CaptureStats | None:
        found = STATS.findall(self._stderr())
        return CaptureStats(*map(int, found[-1]), path=self.path) if found else None

    def drain(self) -> CaptureStats | None:
        """Until tcpdump has handled every packet its filter accepted (captured + dropped ==
        received, twice in a row); its last report either way."""
        assert self.proc is not None
        deadline = time.monotonic() + TCPDUMP_DRAIN_TIMEOUT
        last: CaptureStats | None = None
        while time.monotonic() < deadline and self.proc.poll() is None:
            reports = len(STATS.findall(self._stderr()))
            self.proc.send_signal(signal.SIGUSR1)
            while time.monotonic() < deadline and len(STATS.findall(self._stderr())) == reports:
                time.sleep(0.05)
            now = self._report()
            if now and last and now.captured + now.dropped == now.received and now.received == last.received:
                return now
            last = now
            time.sleep(0.2)
        return last

    def stop(self) -> CaptureStats:
        """Drain, SIGINT, and tcpdump's final figures (ToolError when it printed none)."""
        if self.proc is None:
            raise ToolError("tcpdump was not started")
        self.drain()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(TCPDUMP_DRAIN_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        self.stats = self._report()
        if self.stats is None:
            raise ToolError(f"tcpdump printed no figures (exit {self.proc.returncode}): "
                            f"{self._stderr()[-2000:]}")
        return self.stats

    def kill(self) -> None:
        """SIGKILL by PID if still running (cleanup after a failure)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@contextmanager
def capturing(lab: Lab, host: str, path: Path, bpf: str = "tcp port 8080") -> Iterator[Tcpdump]:
    """tcpdump listening in `host` for the block, stopped after it (killed on an error); its
    figures are in `.stats` after the block."""
    dump = Tcpdump(lab, host, path, bpf).start()
    try:
        yield dump
        dump.stop()
    finally:
        dump.kill()


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) of each process still running, by the caller's name for it."""
    out = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            pass
    return out
