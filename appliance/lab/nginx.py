"""nginx (Debian's nginx-light) as a lab service: the one place that writes its configuration.

Runs in the caller's process and starts nginx inside a lab namespace with a configuration of its
own in a private directory (pid file, temp paths, error log, access log): nothing of Debian's
/etc/nginx or /var/lib/nginx is used, and Debian's nginx service is never involved. `daemon off`,
so the process started is nginx's master, stopped by its PID.

The access log (format `tc`, one line per request) is what the real-tool tests count:

    198.18.0.1:40312 17 3 79 1716912345.123 "GET / HTTP/1.1" 200
    client:port      conn reqs-on-conn request-length msec  request  status
"""

from __future__ import annotations

import re
import resource
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from appliance.lab.netns import Lab, terminate

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
LOG_FORMAT = ('$remote_addr:$remote_port $connection $connection_requests $request_length $msec '
              '"$request" $status')
# buffered: one write per 256 KiB instead of one per request (at ~90k requests/s the online nginx
# would spend its core on write(2)); flush=1s bounds how late a line shows.
LOG_BUFFER = "buffer=256k flush=1s"

CONF = """\
user root;
worker_processes 1;
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    log_format tc '{log_format}';
    {access_log}
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    client_max_body_size 4m;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {addr}:{port} backlog=65535;
        location / {{ return 200 "{body}"; }}
    }}
}}
"""


def config(workdir: Path, addr: str, port: int, access_log: bool = True, body: str = "ok\\n") -> str:
    """nginx.conf text for a server on addr:port whose every path lives in `workdir`; `body` is
    the fixed answer to any request (nginx string syntax)."""
    log = f"access_log {workdir}/access.log tc {LOG_BUFFER};" if access_log else "access_log off;"
    # as many files as nginx may have: it inherits our hard limit and cannot raise it
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 200000 if hard == resource.RLIM_INFINITY else min(hard, 200000)
    return CONF.format(dir=workdir, addr=addr, port=port, log_format=LOG_FORMAT, access_log=log, body=body,
                       nofile=nofile, connections=min(65535, nofile))


class Nginx:
    """One nginx master (and its single worker) inside a lab host's namespace.

    `start()` returns once nginx listens (its pid file, written after the listening socket is
    bound, names the master); `stop()` ends it by PID and also kills a worker left behind.
    """

    def __init__(self, lab: Lab, host: str, addr: str, port: int, workdir: Path,
                 access_log: bool = True) -> None:
        self.lab, self.host, self.addr, self.port = lab, host, addr, port
        self.dir = Path(workdir)
        self.access_log = access_log
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = AccessLog(self.dir / "access.log")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> Nginx:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nginx.conf"
        conf.write_text(config(self.dir, self.addr, self.port, self.access_log))
        pidfile = self.dir / "nginx.pid"
        pidfile.unlink(missing_ok=True)
        with open(self.dir / "stderr.log", "wb") as err:
            # -e: nginx opens its error log before reading the configuration; not Debian's /var/log/nginx
            argv = ["nginx", "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(conf)]
            self.proc = self.lab.popen(self.host, argv, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if pidfile.exists() and pidfile.read_text().strip() == str(self.proc.pid):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx in {self.host} did not start: {self._errors()}")

    def _errors(self) -> str:
        paths = (self.dir / "stderr.log", self.dir / "error.log")
        texts = [p.read_text(errors="replace") for p in paths if p.exists()]
        return " | ".join(t.strip()[-1500:] for t in texts if t.strip()) or "no message"

    def stop(self) -> int | None:
        """SIGTERM to the master (it stops its worker and flushes the access log), SIGKILL after
        STOP_TIMEOUT; a worker that outlived its master is killed by PID. Idempotent."""
        proc = self.proc
        if proc is None:
            return None
        try:
            children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        except psutil.NoSuchProcess:
            children = []
        terminate(proc, STOP_TIMEOUT)
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        return proc.returncode


LINE = re.compile(r'^(?P<ip>[\d.]+):(?P<port>\d+) (?P<conn>\d+) (?P<creq>\d+) (?P<length>\d+) '
                  r'(?P<msec>[\d.]+) "(?P<request>.*)" (?P<status>\d{3})$')


@dataclass(frozen=True)
class Entry:
    client: tuple[str, int]
    connection: int
    connection_requests: int
    request_length: int
    msec: float
    request: str
    status: int


@dataclass
class LogSummary:
    """What an access log says: requests (lines), answered 2xx, per client (ip, port) and ip, the
    connections seen, the last request's time; lines that do not parse are counted, not dropped."""

    requests: int = 0
    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_client: Counter[tuple[str, int]] = field(default_factory=Counter)
    by_ip: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    first_msec: float = 0.0
    last_msec: float = 0.0
    unparsed: int = 0


class AccessLog:
    """An nginx access log in the `tc` format, read by the test process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._lines = 0

    def count(self) -> int:
        """Lines written so far; reads only what was appended since the last call (the log of a
        10 s wrk run is ~900k lines)."""
        if not self.path.exists():
            return self._lines
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            while chunk := f.read(1 << 20):
                self._offset += len(chunk)
                self._lines += chunk.count(b"\n")
        return self._lines

    def entries(self, skip: int = 0) -> Iterator[Entry | None]:
        """Each line after the first `skip`, parsed (None for a line not in the `tc` format)."""
        if not self.path.exists():
            return
        with open(self.path, errors="replace") as f:
            for n, line in enumerate(f):
                if n < skip:
                    continue
                m = LINE.match(line.rstrip("\n"))
                yield None if m is None else Entry(
                    (m["ip"], int(m["port"])), int(m["conn"]), int(m["creq"]), int(m["length"]),
                    float(m["msec"]), m["request"], int(m["status"]))

    def summary(self, skip: int = 0) -> LogSummary:
        """The log's figures, from line `skip` on (a count taken earlier marks where a run began)."""
        s = LogSummary()
        conns: set[int] = set()
        for e in self.entries(skip):
            if e is None:
                s.unparsed += 1
                continue
            s.requests += 1
            s.statuses[e.status] += 1
            s.ok += 200 <= e.status < 300
            s.by_client[e.client] += 1
            s.by_ip[e.client[0]] += 1
            conns.add(e.connection)
            s.first_msec = min(s.first_msec, e.msec) if s.first_msec else e.msec
            s.last_msec = max(s.last_msec, e.msec)
        s.connections = len(conns)
        return s
