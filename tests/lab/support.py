"""Helpers for lab tests: unique prefixes, services started inside lab namespaces, polling."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.lab.netns import ADDR, Lab, tools_missing

READY_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0


def lab_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (CAP_NET_ADMIN, CAP_NET_RAW) to build network namespaces"
    missing = tools_missing()
    if missing:
        return f"lab tests need {', '.join(missing)} on PATH (make setup installs them)"
    return None


def unique_prefix(variant: int = 0) -> str:
    """Prefix unique to this test process: tcl<pid> for the module lab, tcl<variant><pid> for extra labs."""
    pid = os.getpid() % 10000
    return f"tcl{pid}" if variant == 0 else f"tcl{variant}{pid:04d}"


class Services:
    """Processes started inside lab namespaces; stop() and stop_all() act on their PIDs only."""

    def __init__(self, lab: Lab, log_dir: Path) -> None:
        self.lab = lab
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self, host: str, argv: list[str], ready_prefix: str | None = None, **kw: Any
    ) -> subprocess.Popen[str]:
        """Start argv in a host namespace; with ready_prefix, wait for a stdout line starting with it."""
        stderr_path = self.log_dir / f"{host}-{len(self.procs)}.stderr"
        kw.setdefault("stdout", subprocess.PIPE)
        with open(stderr_path, "w") as stderr:
            proc = self.lab.popen(host, argv, stderr=stderr, text=True, **kw)
        self.procs.append(proc)
        if ready_prefix is not None:
            line = read_line(proc, READY_TIMEOUT_SECONDS)
            if not line.startswith(ready_prefix):
                self.stop(proc)
                raise RuntimeError(f"{argv[:4]} did not print {ready_prefix!r}; got {line!r}; "
                                   f"stderr: {stderr_path.read_text()[-2000:]}")
        return proc

    def start_http(
        self, host: str, record: Path, port: int = 8080, delay_ms: float = 0.0
    ) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "appliance.lab.httpservice", "--bind", ADDR[host], "--port", str(port),
                "--record", str(record)]
        if delay_ms:
            argv += ["--delay-ms", str(delay_ms)]
        return self.start(host, argv, ready_prefix="LISTENING")

    def stop(self, proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_SECONDS)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def send_line(proc: subprocess.Popen[str], text: str) -> None:
    """Write one line to proc's stdin and flush it."""
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of proc's stdout, or "" when none arrives within timeout."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Poll predicate until it returns something truthy; returns that value or the last falsy one."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class HeldConnections:
    """`load hold` in the client host: keep-alive connections with one request answered each,
    held open until `finish` sends the rest; `with` kills it if a test fails before that."""

    def __init__(self, lab: Lab, conns: int, per_conn: int, server: str = f"{ADDR['online']}:8080") -> None:
        self.proc = lab.popen("client", [sys.executable, "-m", "appliance.lab.load", "--server", server, "hold",
                                         "--conns", str(conns), "--per-conn", str(per_conn)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __enter__(self) -> HeldConnections:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line == "READY", f"load hold did not get its connections open: {line!r}"
        return self

    def finish(self, timeout: float = 60.0) -> dict[str, Any]:
        """Send the remaining requests on every connection and close them; the load's summary."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        out, _ = self.proc.communicate(timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def replicate_as_user(rig: Any, uid: int, probe: Callable[[int], Any]) -> tuple[dict[int, Any], Any]:
    """Start a rig whose daemons run as the user `uid` (its keys and run directory made readable
    for it), replicate the small standard load, and return `probe(pid)` of every daemon process
    (taken under load) with the verdict. The rig is closed, also on failure."""
    for d in (rig.keys, rig.keys / "authorized"):
        d.chmod(0o755)
    os.chown(rig.keys / "authorized" / "tcpcopyd.key_secret", uid, -1)
    os.chown(rig.keys / "interceptd.key_secret", uid, -1)
    rig.dir.chmod(0o777)                 # the supervisor, as the user, makes its run directory here
    try:
        rig.start()
        load = rig.load("mix", "--short", "100", "--keepalive", "5", "--per-conn", "10")
        status = rig.fresh_status()
        pids = [status["supervisor"]["pid"], rig.procs["interceptd"].pid] + [ch["pid"] for ch in status["children"]]
        seen = {pid: probe(pid) for pid in pids}
        return seen, rig.verdict(load, time.time())
    finally:
        rig.close()
