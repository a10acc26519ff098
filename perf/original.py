"""The original C tcpcopy and intercept, run in the perf lab beside tcpcopyd (`perf/run.py --original DIR`).

Runs in the benchmark's process and starts the original's binaries inside the lab's namespaces,
with the lab's addresses as ../shared/reference/tcpcopy-measured.md (sections 1 and 4) ran them:

    assistant: intercept -i eth0 -F 'tcp and src host TARGET and src port PORT' -l ic.log
    online:    tcpcopy -x ONLINE:PORT-TARGET:PORT -s ASSISTANT -i eth0
                       -F 'tcp and dst host ONLINE and dst port PORT' -c POOL -l tc.log
    online:    tcpcopy-offline -x ONLINE:PORT-TARGET:PORT -s ASSISTANT -i FILE -a 1000 -c POOL -l tc.log

`-F` is mandatory for the pcap build when the online port equals the target's (it exits with
"Set -F argument to capture packets"), and it names the online address: on the online host's
eth0 pcap also sees tcpcopy's own copies. DIR holds `tcpcopy` (built `--pcap-capture`),
`tcpcopy-offline` (built `--offline`) and `intercept` (default pcap mode); nothing of the original
is part of this repository. Every process is stopped by its PID with SIGINT (the original prints
its final counters only then), KILL after a grace; `close()` is idempotent and runs on failure.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from appliance.lab.netns import ADDR, Lab, terminate
from appliance.lab.tools import cpu_seconds

BINARIES = ("tcpcopy", "tcpcopy-offline", "intercept")
INTERCEPT_PORT = 36524
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# after "pcap_set_buffer_size" the pcap build still activates its ring; the reference runs waited 1.5 s
PCAP_SETTLE = 0.5
ACCELERATION = "1000"          # offline -a: the reference's side-by-side figures (section 7)
COUNTER = re.compile(r"([a-z][a-z -]*?):\s*(\d+)")


def check_dir(path: str) -> Path:
    """DIR for --original, with its three binaries executable; ValueError naming what is missing."""
    root = Path(path)
    missing = [name for name in BINARIES if not (root / name).is_file()]
    if missing:
        raise ValueError(f"--original {path}: no {', '.join(missing)} (expected {', '.join(BINARIES)})")
    return root


def final_counters(log: Path) -> dict[str, int]:
    """tcpcopy's last statistics block (`conns:`, `send:`, `syn cnt:`, `total captured packets:` ...),
    written on SIGINT; {} when it never captured a packet (it prints none then)."""
    if not log.exists():
        return {}
    lines = log.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if "[notice] active:" in line]
    if not starts:
        return {}
    out: dict[str, int] = {}
    for line in lines[starts[-1]:]:
        text = line.split("] ", 1)[-1]
        out.update({k.strip(): int(v) for k, v in COUNTER.findall(text)})
        if text.startswith("total captured packets"):
            break
    return out


class Original:
    """The original's intercept on the assistant and one tcpcopy (live or offline) on the online host."""

    def __init__(self, lab: Lab, root: Path, workdir: Path, port: int = 8080) -> None:
        self.lab, self.root, self.port = lab, root, port
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.runs = 0

    def _start(self, name: str, host: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.dir / f"{name}.out", "wb") as out:
            proc = self.lab.popen(host, argv, stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def _wait(self, what: str, ready: Any, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if ready():
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the original's {what} did not come up; see {self.dir}")

    def log(self, name: str) -> Path:
        return self.dir / f"{name}-{self.runs}.log"

    def start_intercept(self) -> None:
        """intercept on the assistant, listening for tcpcopy on its port."""
        self.runs += 1
        proc = self._start("intercept", "assistant", [
            str(self.root / "intercept"), "-i", "eth0",
            "-F", f"tcp and src host {ADDR['target']} and src port {self.port}", "-l", str(self.log("intercept"))])
        self._wait("intercept", lambda: self.lab.run(
            "assistant", ["ss", "-Hltn", f"sport = :{INTERCEPT_PORT}"]).stdout.strip(), proc)

    def _transfer(self) -> list[str]:
        return ["-x", f"{ADDR['online']}:{self.port}-{ADDR['target']}:{self.port}", "-s", ADDR["assistant"]]

    def _connected(self) -> bool:
        out = self.lab.run("online", ["ss", "-Htn", "state", "established", f"dport = :{INTERCEPT_PORT}"]).stdout
        return len(out.strip().splitlines()) >= 2            # -C: two channels to intercept by default

    def start_tcpcopy(self, pool: str) -> None:
        """The pcap build capturing the online host's eth0, client addresses into `pool` (a.b.c.x)."""
        log = self.log("tcpcopy")
        proc = self._start("tcpcopy", "online", [
            str(self.root / "tcpcopy"), *self._transfer(), "-i", "eth0",
            "-F", f"tcp and dst host {ADDR['online']} and dst port {self.port}", "-c", pool, "-l", str(log)])
        self._wait("tcpcopy", lambda: self._connected() and log.exists()
                   and "pcap_set_buffer_size" in log.read_text(errors="replace"), proc)
        time.sleep(PCAP_SETTLE)

    def start_offline(self, pcap: Path, pool: str) -> subprocess.Popen[bytes]:
        """The offline build replaying `pcap` at -a 1000; it starts at once (stop it with stop())."""
        return self._start("tcpcopy", "online", [
            str(self.root / "tcpcopy-offline"), *self._transfer(), "-i", str(pcap), "-a", ACCELERATION,
            "-c", pool, "-l", str(self.log("tcpcopy"))])

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items() if p.poll() is None}

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) of each running process, by name."""
        return cpu_seconds(self.pids())

    def stop(self, name: str) -> int | None:
        """SIGINT by PID (the original writes its final counters), KILL after STOP_TIMEOUT."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        return terminate(proc, STOP_TIMEOUT, signal.SIGINT)

    def stop_all(self) -> dict[str, int]:
        """tcpcopy first (its counters), then intercept; tcpcopy's final counters."""
        self.stop("tcpcopy")
        self.stop("intercept")
        return final_counters(self.log("tcpcopy"))

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
