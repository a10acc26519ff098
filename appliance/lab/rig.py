"""A whole replication set-up inside a lab: services, interceptd, tcpcopyd, load, verdict.

Used by `tcpcopy-lab demo` and by the end-to-end tests. Runs in the caller's process and
starts everything else inside the lab's namespaces; `close()` stops every process it started,
by PID, also after a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.lab.netns import ADDR, Lab, terminate
from appliance.lab.nginx import Nginx
from appliance.lab.records import Comparison, compare, load_records

SERVICE_PORT = 8080
READY_TIMEOUT = 15.0


def _bin(name: str) -> str:
    """A console script installed next to this interpreter (the venv's bin/)."""
    return os.path.join(os.path.dirname(sys.executable), name)


@dataclass
class Verdict:
    comparison: Comparison
    load: dict[str, Any]
    load_ended: float
    last_target_close: float
    status: dict[str, Any]

    @property
    def tail_seconds(self) -> float:
        return max(0.0, self.last_target_close - self.load_ended)


@dataclass(frozen=True)
class Placement:
    """Where the target service and interceptd run (a lab host, or an extension namespace such as
    the docker host's containers), and the addresses tcpcopyd is given for them."""

    target_host: str = "target"
    target_bind: str = ADDR["target"]
    assistant_host: str = "assistant"
    send_to: str | None = None          # IP:PORT tcpcopyd sends copies to; default target_bind:port
    intercept: str = ADDR["assistant"]


class ReplicationRig:
    """Online and target HTTP services, interceptd on the assistant, tcpcopyd on the online host."""

    def __init__(self, lab: Lab, workdir: Path, target_delay_ms: float = 0.0, port: int = SERVICE_PORT,
                 tcpcopyd_args: tuple[str, ...] = (), extra_intercepts: tuple[str, ...] = (),
                 intercept_filter: str | None = None, placement: Placement = Placement(),
                 intercept_args: tuple[str, ...] = (), bindir: str | None = None,
                 daemon_prefix: tuple[str, ...] = (), target_args: tuple[str, ...] = ()) -> None:
        self.lab = lab
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = str(self.dir / "run")
        self.online_rec = self.dir / "online.rec"
        self.target_rec = self.dir / "target.rec"
        self.target_delay_ms = target_delay_ms
        self.target_args = target_args          # more httpservice flags for the target (--status-for ...)
        self.port = port
        self.tcpcopyd_args = tcpcopyd_args
        self.place = placement
        self.intercept_args = intercept_args
        self.bindir = bindir          # where tcpcopyd and interceptd come from (default: this venv)
        self.daemon_prefix = daemon_prefix   # e.g. setpriv ...: start the daemons as systemd would
        self.intercept_filter = intercept_filter or f"tcp and src host {placement.target_bind} and src port {port}"
        self.intercepts = ",".join((placement.intercept, *extra_intercepts))
        self.procs: dict[str, subprocess.Popen] = {}
        self.nginx: dict[str, Nginx] = {}         # role ("online", "target") -> nginx, see start_nginx
        self.keys = self.dir / "keys"
        if not (self.keys / "interceptd.key").exists():
            from appliance.host.curvekeys import keygen
            keygen(str(self.keys), "interceptd")
            keygen(str(self.keys / "authorized"), "tcpcopyd")

    # ---- processes --------------------------------------------------------------------------
    def _start(self, name: str, host: str, argv: list[str], ready: str | None = None) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "w")
        argv = ["ip", "netns", "exec", f"{self.lab.prefix}-{host}", *argv]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE if ready else log, stderr=log, text=True)
        log.close()
        self.procs[name] = proc
        if ready:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith(ready):
                raise RuntimeError(f"{name} did not start: {line!r}; see {self.dir / (name + '.log')}")
        return proc

    def _daemon(self, name: str) -> str:
        return os.path.join(self.bindir, name) if self.bindir else _bin(name)

    def start_services(self, which: tuple[str, ...] = ("online", "target")) -> None:
        py = sys.executable
        for role, host, bind, rec in (("online", "online", ADDR["online"], self.online_rec),
                                      ("target", self.place.target_host, self.place.target_bind, self.target_rec)):
            if role not in which:
                continue
            argv = [py, "-m", "appliance.lab.httpservice", "--bind", bind, "--port", str(self.port),
                    "--record", str(rec)]
            if role == "target" and self.target_delay_ms:
                argv += ["--delay-ms", str(self.target_delay_ms)]
            if role == "target":
                argv += self.target_args
            self._start(f"{role}-http", host, argv, ready="LISTENING")

    def start_nginx(self, which: tuple[str, ...] = ("online", "target")) -> None:
        """Debian's nginx (appliance.lab.nginx: own configuration, one worker, an access log) on
        the online host and/or the target at the rig's port, in place of the lab's HTTP service;
        stopped by close()."""
        for role in which:
            host, bind = (("online", ADDR["online"]) if role == "online"
                          else (self.place.target_host, self.place.target_bind))
            self.nginx[role] = Nginx(self.lab, host, bind, self.port, self.dir / f"nginx-{role}").start()

    def settle_log(self, role: str = "target", quiet: float = 2.0, limit: float = 60.0,
                   sessions: bool = True) -> tuple[int, bool]:
        """Until `role`'s nginx access log has not grown for `quiet` seconds (longer than the log's
        1 s flush) and, with `sessions`, tcpcopyd (if it runs) has no session open; (the log's line
        count, whether that happened within `limit` seconds)."""
        log = self.nginx[role].log
        deadline = time.monotonic() + limit
        last, last_change = log.count(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            got = log.count()
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change >= quiet and not (sessions and self.sessions_active()):
                return got, True
        return log.count(), False

    def sessions_active(self) -> int:
        """Open sessions over every rewrite worker (their last heartbeats); 0 when tcpcopyd is not
        running."""
        status = self.status() if "tcpcopyd" in self.procs and self.procs["tcpcopyd"].poll() is None else None
        return sum(ch["counters"].get("sessions_active", 0) for ch in status["children"]
                   if ch["role"] == "rewrite") if status else 0

    def start_interceptd(self) -> None:
        self._start("interceptd", self.place.assistant_host,
                    [*self.daemon_prefix, self._daemon("interceptd"), "-i", "eth0", "-F", self.intercept_filter,
                     "--secret-key", str(self.keys / "interceptd.key_secret"),
                     "--authorized-keys", str(self.keys / "authorized"), *self.intercept_args])

    def restart_interceptd(self, down_for: float = 0.0) -> None:
        """Stop interceptd, leave it down `down_for` seconds (the fault), start it again, and return
        once every rewrite worker has completed a new CURVE handshake with it."""
        def handshakes(status: dict[str, Any] | None) -> dict[int, int]:
            return {ch["index"]: ch["counters"].get("response_channel", {}).get("intercept_handshakes", 0)
                    for ch in (status or {}).get("children", []) if ch["role"] == "rewrite"}

        before = handshakes(self.fresh_status())
        self.stop("interceptd")
        time.sleep(down_for)
        self.start_interceptd()
        self.wait_until("every worker's handshake with the new interceptd", lambda s: all(
            n > before.get(k, 0) for k, n in handshakes(s).items()))

    def _tcpcopyd_argv(self, port: int, *extra: str) -> list[str]:
        """tcpcopyd copying ONLINE:port to the target, with the rig's keys; two workers unless
        `tcpcopyd_args` says otherwise, so the tests always cover sharding."""
        return [self._daemon("tcpcopyd"), "-x",
                f"{ADDR['online']}:{port}-{self.place.send_to or f'{self.place.target_bind}:{port}'}",
                "-s", self.intercepts, "--run-dir", self.run_dir, "--workers", "2",
                "--secret-key", str(self.keys / "authorized" / "tcpcopyd.key_secret"),
                "--intercept-public-key", str(self.keys / "interceptd.key"), *extra, *self.tcpcopyd_args]

    def start_tcpcopyd(self) -> None:
        self._start("tcpcopyd", "online", [*self.daemon_prefix, *self._tcpcopyd_argv(self.port, "-i", "eth0")])
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            status = self.status()
            if status and all(ch["heartbeat_age"] is not None for ch in status["children"]):
                return
            if self.procs["tcpcopyd"].poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"tcpcopyd did not come up; see {self.dir / 'tcpcopyd.log'}")

    def run_offline(self, files: list[str], *args: str, timeout: float = 180.0,
                    port: int | None = None) -> subprocess.CompletedProcess:
        """tcpcopyd --offline on the online host, to the end of the files; its output and exit code.
        `port`: the service port of the files' connections (default: the rig's)."""
        argv = [*self._tcpcopyd_argv(port or self.port), "--offline", *files, *args]
        return self.lab.run("online", argv, check=False, timeout=timeout, capture_output=True, text=True)

    def start(self, services: bool = True, subscribed: bool = True) -> None:
        """Everything; without `services` the caller runs its own on both hosts at `port`. Returns
        once every worker hears interceptd; `subscribed=False` for a test that keeps it out on purpose."""
        if services:
            self.start_services()
        self.start_interceptd()
        self.start_tcpcopyd()
        if subscribed and not self.wait_for_subscriptions(READY_TIMEOUT):
            raise RuntimeError(f"the rewrite workers never heard interceptd; see {self.dir}/*.log")

    def wait_for_subscriptions(self, limit: float = 5.0) -> bool:
        """Until every rewrite worker has heard interceptd (its subscription is in place, so no
        answer to the first connections is missed); False after `limit` (a test that keeps
        interceptd out on purpose)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            status = self.status()
            workers = [ch for ch in status["children"] if ch["role"] == "rewrite"] if status else []
            if workers and all(ch["counters"].get("intercepts_heard") for ch in workers):
                return True
            time.sleep(0.1)
        return False

    def wait_until(self, what: str, ready: Callable[[dict[str, Any]], bool], limit: float = 30.0) -> dict[str, Any]:
        """The first status document for which `ready` holds (counters move once a heartbeat, ~1 s);
        AssertionError naming `what` and the rewrite totals after `limit` seconds."""
        deadline = time.monotonic() + limit
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status() or {}
            if status and ready(status):
                return status
            time.sleep(0.1)
        raise AssertionError(f"not within {limit} s: {what}; rewrite totals "
                             f"{status.get('totals', {}).get('rewrite')}")

    def wait_for_target_connections(self, conns: int, limit: float = 30.0) -> None:
        """Until the target service holds `conns` open connections with at least one request received
        on each (it writes a snapshot of them on SIGUSR1)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            asked = time.time()
            self.procs["target-http"].send_signal(signal.SIGUSR1)
            time.sleep(0.1)
            snapshot = [r for r in load_records(self.target_rec, include_open=True).values()
                        if r.get("open") and r.get("at", 0) >= asked and r["requests"] >= 1]
            if len(snapshot) >= conns:
                return
        raise AssertionError(f"the target did not get a request on {conns} connections within {limit} s")

    def wait_for_log(self, name: str, text: str, limit: float = 10.0) -> str:
        """The log of process `name` once it contains `text` (AssertionError after `limit` s)."""
        deadline = time.monotonic() + limit
        log = ""
        while time.monotonic() < deadline:
            log = (self.dir / f"{name}.log").read_text()
            if text in log:
                return log
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not in {name}.log within {limit} s")

    def status(self) -> dict[str, Any] | None:
        from appliance.tcpcopyctl.cli import call
        if not os.path.exists(os.path.join(self.run_dir, "ctl")):
            return None
        reply = call(self.run_dir, "status", timeout=2.0)
        return reply["data"] if reply and reply.get("status") == "ok" else None

    def fresh_status(self, limit: float = 5.0) -> dict[str, Any]:
        """Status once every child has sent a heartbeat after this call (counters are current)."""
        since = time.time()
        deadline = time.monotonic() + limit
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status() or {}
            asked = time.time()
            children = status.get("children", [])
            if children and all(ch["heartbeat_age"] is not None and asked - ch["heartbeat_age"] > since
                                for ch in children):
                break
            time.sleep(0.2)
        return status

    def stop(self, name: str, timeout: float = 10.0) -> int | None:
        proc = self.procs.get(name)
        if proc is None:
            return None
        terminate(proc, timeout)
        if proc.stdout:
            proc.stdout.close()
        return proc.returncode

    def close(self) -> None:
        for name in ("tcpcopyd", "interceptd", "online-http", "target-http"):
            self.stop(name)
        for name in list(self.procs):
            self.stop(name)
        for server in self.nginx.values():
            server.stop()

    # ---- load and verdict -------------------------------------------------------------------
    def load(self, *args: str, timeout: float = 180.0) -> dict[str, Any]:
        """Run appliance.lab.load from the client against the online service; its JSON summary."""
        argv = [sys.executable, "-m", "appliance.lab.load", "--server", f"{ADDR['online']}:{self.port}", *args]
        done = self.lab.run("client", argv, check=False, timeout=timeout, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        if not lines:
            raise RuntimeError(f"load printed nothing (exit {done.returncode}): {done.stderr[-2000:]}")
        return json.loads(lines[-1])

    def settle(self, expected_sessions: int, quiet: float = 2.0, limit: float = 60.0) -> None:
        """Wait until the target has closed as many sessions as online did, or goes quiet."""
        deadline = time.monotonic() + limit
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            got = len(load_records(self.target_rec)) if self.target_rec.exists() else 0
            if got >= expected_sessions:
                return
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change >= quiet and got:
                status = self.status()
                active = sum(ch["counters"].get("sessions_active", 0) for ch in status["children"]) \
                    if status else 0
                if not active:
                    return
            time.sleep(0.2)

    def verdict(self, load: dict[str, Any], load_ended: float, settle_limit: float = 60.0) -> Verdict:
        """Settle (at most `settle_limit` s: a fault may leave sessions open that never finish), stop
        both services and compare what they recorded."""
        online = load_records(self.online_rec)
        self.settle(len(online), limit=settle_limit)
        status = self.fresh_status()
        self.stop("online-http")
        self.stop("target-http")
        comparison = compare(self.online_rec, self.target_rec)
        closes = [r["closed"] for r in load_records(self.target_rec).values() if r.get("closed")]
        return Verdict(comparison, load, load_ended, max(closes, default=load_ended), status)
